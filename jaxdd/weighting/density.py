"""Gaussian kernel density over embeddings: per query, within a support, within each class.

Data contract:

* Embeddings are float arrays ``(n, d)`` (the method feeds L2-normalised SupCon
  projections, docs/protocols.md §1, but nothing here assumes unit norm). Computation runs in
  float32 (float64 when the input is float64 and x64 is enabled).
* The kernel is ``K(z, z') = exp(-||z - z'||^2 / (2 v))`` with ``v`` the kernel
  variance, exactly the definition of docs/protocols.md §1: it carries **no normalising constant**
  ``c = (2 pi v)^(-d/2)``. With ``power`` normalisation the constant cancels
  (``w ∝ (c f)^(-1/T) ∝ f^(-1/T)``). With ``softmax`` it would not cancel: it
  would rescale ``1/f`` and so act like a different temperature
  (``softmax((1/(c f))/T) = softmax((1/f)/(c T))``), which is why the density
  is pinned to the unnormalised mean kernel value; ``T`` is calibrated against
  that. To compare with a normalised KDE such as
  ``sklearn.neighbors.KernelDensity(bandwidth=sqrt(v))``, subtract
  ``(d / 2) log(2 pi v)`` from ours (i.e. theirs = ours + log c).
* :func:`log_density` returns ``log f(z_q) = log mean_j K(z_q, s_j)``: the log of
  the *mean* kernel value over the (unmasked) support, so for a query that is
  also in the support (self included) ``log f <= 0`` and ``f >= 1/n``.
* :func:`class_log_density` evaluates it for every sample within its own class
  (the whole-class scope), optionally raised to a class quantile
  (:func:`floor_log_density`).

Numerics (the blocked streaming log-sum-exp, the centring and the exact self
pair that keep the pairwise kernel accurate and its memory O(block x block)) live in
:mod:`jaxdd.weighting.kernel`; this module is the public surface and its input checks.

Sharding. :func:`log_density_sharded` splits the query axis over a mesh axis
with ``jax.shard_map``; each device runs the same blocked kernel on its query
rows against a replicated support, so no cross-device communication is needed
and the result is sharded like the queries. :func:`log_density` takes that
path by itself when the queries arrive split over a mesh axis (a concrete
array with such a ``NamedSharding``, or a tracer whose type carries an
Explicit-axis sharding).
"""
from __future__ import annotations

import math
import numbers

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding

from jaxdd._src import checks
from jaxdd._src.checks import is_traced
from jaxdd.weighting import kernel

__all__ = [
    "check_floor",
    "class_log_density",
    "floor_log_density",
    "log_density",
    "log_density_sharded",
]


def check_floor(floor, name: str = "floor") -> None:
  """A density floor must be a quantile in [0, 1)."""
  if (isinstance(floor, bool) or not isinstance(floor, numbers.Real) or not math.isfinite(floor)
      or not 0.0 <= floor < 1.0):
    raise ValueError(f"{name} (the density floor, a quantile) must be a number in [0, 1), "
                     f"e.g. 0.05, or 0 for none; got {floor!r}")


# --------------------------------------------------------------------------
# The blocked kernel
# --------------------------------------------------------------------------

def _prepare_log_density(queries, support, variance, block_size,
                         support_block_size, support_mask, matmul):
  """The checked, same-dtype inputs of both log-density paths, and their tile sizes."""
  queries = checks.as_rows("queries", queries)
  support = checks.as_rows("support", support)
  if queries.shape[1] != support.shape[1]:
    raise ValueError(
        f"queries and support must have the same feature dimension, got "
        f"{queries.shape[1]} and {support.shape[1]}")
  if support.shape[0] == 0:
    raise ValueError("support is empty; the density needs at least one point")
  # The wider of the two (float32, or float64 under x64).
  dtype = max(queries.dtype, support.dtype, key=lambda t: t.itemsize)
  queries, support = queries.astype(dtype), support.astype(dtype)
  checks.check_finite("queries", queries, "check the surrogate embeddings")
  checks.check_finite("support", support, "check the surrogate embeddings")
  checks.check_positive_scalar("variance", variance, "pass e.g. variance=0.01")
  block_q = checks.check_positive_int("block_size", block_size)
  block_n = checks.check_positive_int(
      "support_block_size",
      block_q if support_block_size is None else support_block_size)
  if support_mask is None:
    support_valid = jnp.ones((support.shape[0],), jnp.bool_)
  else:
    support_valid = checks.as_mask("support_mask", support_mask, support.shape[0])
    if not is_traced(support_valid) and not bool(
        checks.host_eval(jnp.any, support_valid)):
      raise ValueError("support_mask excludes every support row; the density "
                       "of an empty set is undefined")
  variance = jnp.asarray(variance, dtype)
  if matmul not in kernel.MATMULS:
    raise ValueError(f"matmul must be one of {list(kernel.MATMULS)}, got {matmul!r}")
  return queries, support, support_valid, variance, block_q, block_n


def _row_sharding_axis(x):
  """(mesh, axis name) if ``x``'s rows are split over one mesh axis, else None.

  Reads the concrete sharding of an array, or the sharding-in-types of a
  tracer under an Explicit mesh.
  """
  sharding = getattr(x, "sharding", None) if not is_traced(x) else None
  if sharding is None:
    try:
      sharding = jax.typeof(x).sharding
    except Exception:  # pylint: disable=broad-except
      return None
  if not isinstance(sharding, NamedSharding) or not len(sharding.spec):
    return None
  axis = sharding.spec[0]
  if isinstance(axis, tuple):
    axis = axis[0] if len(axis) == 1 else None
  if not isinstance(axis, str) or sharding.mesh.shape[axis] == 1:
    return None
  return sharding.mesh, axis


def log_density(
    queries: jax.Array,
    support: jax.Array,
    *,
    variance: float | jax.Array,
    block_size: int = 1024,
    support_block_size: int | None = None,
    support_mask: jax.Array | None = None,
    matmul: str = "highest",
) -> jax.Array:
  """Log of the mean Gaussian kernel value of each query over the support.

  ``log f(x_i) = log( (1/n') sum_j K(x_i, y_j) )`` with
  ``K(x, y) = exp(-||x - y||^2 / (2 variance))`` (no normalising constant) and
  ``n'`` the number of unmasked support rows. Evaluated blockwise with a
  streaming log-sum-exp, so memory is O(block_size x support_block_size), never
  O(q x n); any ``q``, ``n`` work (ragged blocks are padded internally).

  Works eagerly (the core is jitted and cached per shape and block size;
  ``variance`` is a traced argument, so sweeping it does not recompile) and
  inside ``jax.jit``/``jax.vmap``. Checks under ``jax.jit``: every check runs
  on concrete values, including those a jitted function closes over; a
  traced ``variance`` (an argument of the jitted function) cannot be checked,
  and if it is not a finite number > 0 every log-density is NaN instead of
  plausible-looking numbers. Check such a value on the host first, e.g. with
  ``KDEConfig(variance=v)``. Traced inputs' values (NaN rows, an all-False
  ``support_mask``) are not checked either.
  Passing the same array object as ``queries`` and ``support`` marks the
  self-included density: the self-distance is then exactly 0. Queries that
  arrive split over a mesh axis go through :func:`log_density_sharded`.

  Args:
    queries: (q, d) float points to evaluate.
    support: (n, d) float points that define the density.
    variance: kernel variance ``v > 0`` (the method's kernel variance); the
      bandwidth is ``sqrt(v)``.
    block_size: rows of queries per tile.
    support_block_size: rows of support per tile; defaults to ``block_size``.
      ``n`` gives the O(block x n) variant.
    support_mask: optional (n,) bool; False rows are ignored (neither in the
      sum nor in the count ``n'``). Lets callers pass per-class groups stored
      in rectangular padded arrays.
    matmul: precision of the cross term ``x . y``, the kernel's matmul:
      ``"highest"`` (float32, the default), ``"default"`` (the backend's: TF32
      on recent NVIDIA GPUs) or ``"bfloat16"`` (inputs rounded to bfloat16,
      float32 accumulation). With points of norm at most ``r`` after
      centring, the log-density error of ``"bfloat16"`` is at most about
      ``2^-7 r^2 / (2 v)`` (tests/test_kde.py); docs/results/speed-kde-scaling.md, "KDE", gives the
      accuracy/time trade-off.

  Returns:
    (q,) log-densities (float32 for float32 input). Finite whenever at least
    one support row is unmasked and ``variance`` is not absurdly small.

  Raises:
    ValueError: wrong ranks or feature sizes, NaN/Inf inputs, a ``variance``
      that is not a finite number > 0, bad block sizes, a malformed or
      all-False ``support_mask``.

  Example:
    >>> z = jax.random.normal(jax.random.key(0), (100, 16))
    >>> z = z / jnp.linalg.norm(z, axis=1, keepdims=True)
    >>> log_density(z, z, variance=0.1).shape
    (100,)
    >>> log_density(z, z, variance=-1.0)
    Traceback (most recent call last):
    ...
    ValueError: variance must be a finite number > 0, got -1.0; pass e.g. variance=0.01
    >>> jax.jit(lambda z, v: log_density(z, z, variance=v))(z, -1.0)[:2]  # traced: NaN
    Array([nan, nan], dtype=float32)
  """
  axis = _row_sharding_axis(queries)
  if axis is not None:
    # Queries split over a mesh axis: run the shard_map path over that axis
    # (no gather; and Explicit axes would reject the blocking reshape).
    return log_density_sharded(
        queries, support, variance=variance, mesh=axis[0], axis_name=axis[1],
        block_size=block_size, support_block_size=support_block_size,
        support_mask=support_mask, matmul=matmul)
  # Passing the very same array as queries and support (the self-included
  # density) lets the kernel use the exact 0 self-distance.
  self_pairs = queries is support
  (queries, support, support_valid, variance, block_q,
   block_n) = _prepare_log_density(queries, support, variance, block_size,
                                   support_block_size, support_mask, matmul)
  if queries.shape[0] == 0:
    return jnp.zeros((0,), queries.dtype)
  return kernel.log_density_core(queries, support, support_valid, variance,
                           block_q=block_q, block_n=block_n,
                           self_pairs=self_pairs, matmul=matmul)


def log_density_sharded(
    queries: jax.Array,
    support: jax.Array,
    *,
    variance: float | jax.Array,
    mesh: Mesh,
    axis_name: str = "data",
    block_size: int = 1024,
    support_block_size: int | None = None,
    support_mask: jax.Array | None = None,
    matmul: str = "highest",
) -> jax.Array:
  """:func:`log_density` with the query axis split over a mesh axis.

  Each device evaluates its share of query rows against the full (replicated)
  support with the same blocked kernel; there is no communication. ``q`` need
  not divide the axis size (queries are padded, the padding is dropped).

  Args:
    queries: (q, d) float queries (any sharding; resharded over ``axis_name``).
    support: (n, d) float support (replicated on every device).
    variance: kernel variance ``v > 0``.
    mesh: a ``jax.sharding.Mesh`` containing ``axis_name``.
    axis_name: mesh axis that splits the queries.
    block_size: query rows per tile (per device).
    support_block_size: support rows per tile; defaults to ``block_size``.
    support_mask: optional (n,) bool, False rows ignored.
    matmul: the cross term's precision, as :func:`log_density`.

  Returns:
    (q,) log-densities, equal to :func:`log_density` up to float rounding;
    sharded over ``axis_name`` when ``q`` is a multiple of its size,
    replicated otherwise (an uneven shard cannot be expressed on Explicit
    mesh axes). Under ``jax.jit`` as :func:`log_density`: a traced
    ``variance`` is not checked, and one that is not a finite number > 0
    gives NaN everywhere.

  Raises:
    ValueError: as :func:`log_density`, or if ``axis_name`` is not in ``mesh``.

  Example:
    >>> mesh = jax.make_mesh((jax.device_count(),), ("data",))
    >>> z = jax.random.normal(jax.random.key(0), (100, 16))
    >>> log_density_sharded(z, z, variance=0.1, mesh=mesh).shape
    (100,)
  """
  if axis_name not in mesh.shape:
    raise ValueError(f"axis_name={axis_name!r} is not an axis of the mesh "
                     f"(axes: {tuple(mesh.shape)})")
  self_pairs = queries is support
  (queries, support, support_valid, variance, block_q,
   block_n) = _prepare_log_density(queries, support, variance, block_size,
                                   support_block_size, support_mask, matmul)
  if queries.shape[0] == 0:
    return jnp.zeros((0,), queries.dtype)
  return kernel.sharded_log_density_fn(mesh, axis_name, block_q, block_n, self_pairs,
                                           matmul)(queries, support, support_valid, variance)


def class_log_density(embeddings, labels, *, num_classes: int, variance: float,
                      floor: float = 0.0, block_size: int = 1024) -> np.ndarray:
  """Log density of every sample within its own class (KDE scope ``'class'``).

  One blocked :func:`log_density` per class (host loop), so memory stays
  O(block x class size) and classes may have any sizes. Empty classes are
  skipped. A host function (numpy out), not for ``jax.jit``: ``variance``
  is always checked.

  Args:
    embeddings: (N, d) embeddings.
    labels: (N,) ints in ``[0, num_classes)``.
    num_classes: number of classes.
    variance: kernel variance, a finite number > 0.
    floor: a quantile in [0, 1); each class's densities are raised to at
      least that quantile (:func:`floor_log_density`; 0: none, the paper's).
      The density floor is part of the whole-class estimate, so everything
      that draws on these densities (``init='weighted'``,
      ``real_sampling='weighted'``, scope ``'class'``) sees it.
    block_size: tile size of the blocked kernel.

  Returns:
    (N,) float32 numpy ``log f`` (self included, so ``<= 0``).

  Example:
    >>> z = np.eye(3, dtype=np.float32)[[0, 0, 1, 2]]
    >>> class_log_density(z, np.array([0, 0, 0, 1]), num_classes=2, variance=0.1).round(3)
    array([-0.405, -0.405, -1.099,  0.   ], dtype=float32)
  """
  labels = np.asarray(labels)
  embeddings = np.asarray(embeddings)
  if labels.ndim != 1 or embeddings.ndim != 2 or len(labels) != len(embeddings):
    raise ValueError(f"embeddings must be (N, d) and labels (N,), got {embeddings.shape} and "
                     f"{labels.shape}")
  if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
    raise ValueError(f"labels must lie in [0, {num_classes}), got [{labels.min()}, {labels.max()}]")
  check_floor(floor)
  checks.check_positive_scalar("variance", variance, "pass e.g. variance=0.01")
  out = np.zeros(labels.shape, np.float32)
  for c in range(int(num_classes)):
    rows = np.flatnonzero(labels == c)
    if rows.size:
      z = jnp.asarray(embeddings[rows], jnp.float32)
      out[rows] = np.asarray(log_density(z, z, variance=variance, block_size=block_size))
  return floor_log_density(out, labels, floor, num_classes=num_classes) if floor else out


def floor_log_density(log_f, labels, floor: float, *, num_classes: int) -> np.ndarray:
  """Raise each class's log densities to at least their ``floor`` quantile.

  Inverse-density weights are steep (``f^(-1/T)``, ``f^-4`` at the default
  T = 0.25): within a rare group, and within the common one, most of the
  weight goes to its few most isolated samples, so the weighted target is
  made of outliers. Flooring the density at a class quantile gives the
  rarest ``floor`` share of the class (about ``floor * n`` samples) equal
  weight and leaves the order of everything above it unchanged. A label-free
  setting chosen on validation data (docs/results/proxy.md,
  "The density floor, chosen on validation").

  Args:
    log_f: (N,) log densities (e.g. from :func:`class_log_density`).
    labels: (N,) ints in ``[0, num_classes)``; quantiles are per class.
    floor: quantile in [0, 1) (numpy's default linear interpolation); 0
      returns ``log_f`` unchanged.
    num_classes: number of classes.

  Returns:
    (N,) float32 numpy log densities.

  Example:
    >>> floor_log_density(np.log([0.1, 0.2, 0.3, 0.4, 0.5]), np.zeros(5, int), 0.25,
    ...                   num_classes=1).round(3)
    array([-1.609, -1.609, -1.204, -0.916, -0.693], dtype=float32)
  """
  check_floor(floor)
  log_f = np.asarray(log_f, np.float64)
  labels = np.asarray(labels)
  if log_f.shape != labels.shape or log_f.ndim != 1:
    raise ValueError(f"log_f and labels must both be (N,), got {log_f.shape} and {labels.shape}")
  out = log_f.copy()
  if floor:
    for c in range(int(num_classes)):
      rows = labels == c
      if rows.any():
        out[rows] = np.maximum(log_f[rows], np.quantile(log_f[rows], floor))
  return out.astype(np.float32)
