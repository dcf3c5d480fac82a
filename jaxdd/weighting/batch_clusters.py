"""Pseudo-groups of one sampled batch: a pure-JAX DBSCAN with static shapes.

FairDD (Zhou et al., 2025, appendix M) runs its synchronized, group-balanced matching
without group labels by clustering the real samples *of each sampled batch* with DBSCAN
(Ester, Kriegel, Sander & Xu, "A density-based algorithm for discovering clusters in
large spatial databases with noise", KDD 1996) and using the cluster ids as groups.
:func:`dbscan` is that clustering written for a compiled distillation step: one (n, d)
batch, pure JAX, no data-dependent shapes and no host callbacks, so it runs under
``jax.jit`` and ``jax.vmap`` (over classes, over runs). :func:`batch_pseudo_groups` maps it
over the per-class batches of a step, and its (C, B) ids are the ``groups`` of
:func:`jaxdd.weighting.group_balanced_weights` with ``num_groups = max_clusters + 1``.

Conventions (every function of this module):

* ``mask`` (n,) bool marks the VALID rows (True: a real sample, False: padding), as
  everywhere in :mod:`jaxdd.weighting`. Padding rows are neither core points nor anyone's
  neighbours, take no part in ``eps``, and get the noise id ``max_clusters``.
* Distances are Euclidean, from the exact differences ``sqrt(sum_k (x_ik - x_jk)^2)`` in
  the points' dtype (at least float32): O(n^2 d) work, no n^2 d buffer (the difference is
  fused into the reduction), fine for n <= 512. The distance of a row to itself is 0 and
  the matrix is exactly symmetric.
* A row's k-distance: its distance to its k-th nearest valid neighbour, self excluded (a row
  with fewer than k valid neighbours: the farthest one).
* ``eps=None``: ``eps`` follows ``eps_rule``. ``"median"`` (the default):
  :func:`median_knn_distance`, the median over the valid rows of their ``eps_neighbors``-
  distances (k = 5 unless stated). ``"knee"``: :func:`knee_distance`, the knee of the valid
  rows' sorted k-distance curve (k = ``min_samples - 1``, at least 1, unless stated), the
  radius the data set itself suggests: the core points are the rows whose k-distance is at most
  the knee's (``k + 1 = min_samples`` rows within ``eps``, self included).
* The knee (Kneedle; Satopaa, Albrecht, Irwin & Raghavan, "Finding a 'kneedle' in a
  haystack", ICDCS workshops 2011): the m valid k-distances sorted ascending,
  ``d_0 <= ... <= d_{m-1}``, are put on the unit square, ``x_i = i / (m - 1)``,
  ``y_i = (d_i - d_0) / (d_{m-1} - d_0)`` (0 for a flat curve); the knee is the point
  farthest below the chord from the first to the last point, ``argmax_i (x_i - y_i)``, the
  lowest ``i`` on ties, and ``eps`` is the k-distance there, ``d_i``. A curve with no point
  below its chord (a flat or concave one) gives ``d_0``; fewer than two valid rows give 0.
  Computed in the points' dtype (at least float32).
* Core point: a valid row with at least ``min_samples`` valid rows, itself included (as in
  scikit-learn), at distance ``<= eps``.
* Clusters: the connected components of the core points under the eps-graph (two core
  points are linked when their distance is ``<= eps``). A border point (valid, not core,
  within ``eps`` of a core point) joins the cluster of its NEAREST core neighbour; equal
  distances go to the core neighbour of the lowest row index. (DBSCAN leaves this choice
  open; scikit-learn gives a border to the first cluster that reaches it.) Every other
  valid row is noise.
* Ids: the clusters are numbered 0, 1, 2, ... by size (core and border members together),
  LARGEST FIRST; equal sizes in the order of their lowest core row index. So id 0 is the
  batch's majority cluster.
* The cap: only ``max_clusters`` cluster ids exist. The ``max_clusters - 1`` largest
  clusters keep their own ids; all further clusters are merged into the last id,
  ``max_clusters - 1`` (the small clusters as one group, kept apart from the large ones
  and from noise). Noise and padding get ``max_clusters``, a group of its own. Ids thus
  lie in ``[0, max_clusters]``.
* Connected components with static shapes: label propagation in a ``lax.while_loop``.
  Every core point starts with its own index as label; one iteration gives each the
  minimum label over itself and its core neighbours, then jumps pointers (``l <- l[l]``).
  A label is always the index of a core point of the same component, never above the
  point's own index, so the fixed point labels each component with its lowest index. It is
  reached after at most ``diameter + 1 <= n`` iterations (the loop's cap, which therefore
  never binds); pointer jumping usually makes it far fewer.
* Points must be finite (checked when concrete; a traced NaN/Inf is not caught).
* ``eps`` may be traced (e.g. ``jax.vmap`` over eps values). A concrete ``eps`` must be a
  finite number >= 0; a traced one that is negative or NaN makes every row noise, as no
  distance (not even a row's own 0) is then ``<= eps``. ``min_samples``, ``max_clusters``
  and ``eps_neighbors`` are static Python ints, ``eps_rule`` a static string; a given
  ``eps`` takes no rule (``eps_rule="knee"`` with an ``eps`` is refused).

Example:
  >>> import jax.numpy as jnp
  >>> x = jnp.array([[0.], [.1], [.2], [5.], [5.1], [5.2], [5.3], [20.]])
  >>> dbscan(x, eps=0.5, min_samples=2, max_clusters=4).tolist()
  [1, 1, 1, 0, 0, 0, 0, 4]
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxdd._src import checks

__all__ = [
    "EPS_RULES",
    "batch_pseudo_groups",
    "dbscan",
    "knee_distance",
    "median_knn_distance",
]

#: The rules that set ``eps`` from the data when it is not given (the module's conventions).
EPS_RULES = ("median", "knee")


def _distances(x: jax.Array) -> jax.Array:
  """(n, n) Euclidean distances from the exact differences (0 on the diagonal, symmetric)."""
  diff = x[:, None, :] - x[None, :, :]
  return jnp.sqrt((diff * diff).sum(-1))


def _kth(dist: jax.Array, mask: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
  """(n,) each row's k-distance (inf for padding) and the valid count, from (n, n) distances
  (n >= 2)."""
  n = dist.shape[0]
  n_valid = mask.sum().astype(jnp.int32)
  k_static = min(k, n - 1)
  off = mask[None, :] & ~jnp.eye(n, dtype=bool)  # valid neighbours, self excluded
  nearest = -jax.lax.top_k(jnp.where(off, -dist, -jnp.inf), k_static)[0]  # (n, k) ascending
  k_eff = jnp.clip(jnp.minimum(k, n_valid - 1), 1, k_static)
  return jnp.where(mask, nearest[:, k_eff - 1], jnp.inf), n_valid


def _median_of(kth: jax.Array, n_valid: jax.Array) -> jax.Array:
  """The median rule on (n,) k-distances whose padding is inf."""
  s = jnp.sort(kth)  # the valid rows' values first
  m = jnp.maximum(n_valid, 1)
  med = 0.5 * (s[(m - 1) // 2] + s[m // 2])
  return jnp.where(n_valid >= 2, med, jnp.zeros((), kth.dtype))


def _knee_of(kth: jax.Array, n_valid: jax.Array) -> jax.Array:
  """The knee rule (Kneedle, the module's conventions) on (n,) k-distances, padding inf."""
  s = jnp.sort(kth)  # the valid rows' values first, ascending
  m = jnp.maximum(n_valid, 2)
  lo, span = s[0], s[m - 1] - s[0]
  i = jnp.arange(s.shape[0])
  x = i.astype(s.dtype) / (m - 1).astype(s.dtype)
  y = jnp.where(span > 0, (s - lo) / jnp.where(span > 0, span, 1), 0)
  gap = jnp.where(i < n_valid, x - y, -jnp.inf)  # argmax: the lowest index on ties
  return jnp.where(n_valid >= 2, s[jnp.argmax(gap)], jnp.zeros((), s.dtype))


def _median_knn(dist: jax.Array, mask: jax.Array, k: int) -> jax.Array:
  """The eps rule on a distance matrix: see :func:`median_knn_distance`."""
  if dist.shape[0] < 2:
    return jnp.zeros((), dist.dtype)
  return _median_of(*_kth(dist, mask, k))


def _knee(dist: jax.Array, mask: jax.Array, k: int) -> jax.Array:
  """The knee rule on a distance matrix: see :func:`knee_distance`."""
  if dist.shape[0] < 2:
    return jnp.zeros((), dist.dtype)
  return _knee_of(*_kth(dist, mask, k))


def _eps_of(dist: jax.Array, mask: jax.Array, rule: str, k: int) -> jax.Array:
  return (_knee if rule == "knee" else _median_knn)(dist, mask, k)


@functools.partial(jax.jit, static_argnames=("rule", "k"))
def _eps_of_rows(x: jax.Array, mask: jax.Array, rule: str, k: int) -> jax.Array:
  return _eps_of(_distances(x), mask, rule, k)


def _components(adj: jax.Array, block: int | None = None) -> jax.Array:
  """(n,) lowest row index of each row's connected component under the symmetric ``adj``;
  ``block``: the neighbours' minimum taken that many rows at a time (n a multiple of it),
  so that no n x n integers exist."""
  n = adj.shape[0]
  idx = jnp.arange(n, dtype=jnp.int32)

  def neighbour_min(lab):
    if block is None:
      return jnp.min(jnp.where(adj, lab[None, :], n), axis=1)
    one = lambda i0: jnp.min(jnp.where(jax.lax.dynamic_slice_in_dim(adj, i0, block),  # noqa: E731
                                       lab[None, :], n), axis=1)
    return jax.lax.map(one, jnp.arange(0, n, block)).reshape(n)

  def cond(state):
    _, changed, it = state
    return changed & (it < n)

  def body(state):
    lab, _, it = state
    new = jnp.minimum(lab, neighbour_min(lab))
    new = new[new]  # pointer jumping: still a member of the component, still <= own index
    return new, jnp.any(new != lab), it + 1

  lab, _, _ = jax.lax.while_loop(cond, body, (idx, jnp.bool_(True), jnp.int32(0)))
  return lab


@functools.partial(jax.jit, static_argnames=("min_samples", "max_clusters", "eps_neighbors",
                                             "eps_rule"))
def _dbscan(x: jax.Array, mask: jax.Array, eps: jax.Array | None, *, min_samples: int,
            max_clusters: int, eps_neighbors: int, eps_rule: str = "median") -> jax.Array:
  n = x.shape[0]
  dist = _distances(x)
  eps = (_eps_of(dist, mask, eps_rule, eps_neighbors) if eps is None
         else eps.astype(dist.dtype))
  within = (dist <= eps) & mask[:, None] & mask[None, :]
  core = mask & (within.sum(axis=1) >= min_samples)
  lab = _components(within & core[:, None] & core[None, :])
  # Borders: the nearest core neighbour's component (argmin: ties to the lowest index).
  cand = within & core[None, :] & ~core[:, None]
  nearest = jnp.argmin(jnp.where(cand, dist, jnp.inf), axis=1)
  root = jnp.where(core, lab, jnp.where(cand.any(axis=1), lab[nearest], n))  # n: noise
  return _ids(core, lab, root, max_clusters)


def _ids(core: jax.Array, lab: jax.Array, root: jax.Array, max_clusters: int) -> jax.Array:
  """(n,) ids from the core flags, the component labels and each row's component (``n``:
  noise): components ranked by size, largest first, then by root; the cap; noise last."""
  n = core.shape[0]
  idx = jnp.arange(n, dtype=jnp.int32)
  # Rank the components (roots: core rows that are their own label) by size, then root:
  # sorted by (-size, index) with the other rows last, a root's rank is its position.
  size = jnp.zeros(n + 1, jnp.int32).at[root].add(1)[:n]
  is_root = core & (lab == idx)
  order = jnp.lexsort((idx, jnp.where(is_root, -size, 1)))
  rank = jnp.zeros(n, jnp.int32).at[order].set(idx)
  ids = jnp.minimum(rank[jnp.minimum(root, n - 1)], max_clusters - 1)
  return jnp.where(root < n, ids, max_clusters).astype(jnp.int32)


def _check_eps(eps) -> jax.Array:
  eps = jnp.asarray(eps)
  if eps.ndim != 0:
    raise ValueError(f"eps must be a scalar, got shape {eps.shape}")
  if not checks.is_traced(eps):
    v = float(eps)
    if not np.isfinite(v) or v < 0:
      raise ValueError(f"eps must be a finite number >= 0, got {v}; or pass eps=None for the "
                       "median nearest-neighbour distance")
  return eps


def _rows_and_mask(points, mask) -> tuple[jax.Array, jax.Array]:
  x = checks.as_rows("points", points)
  n = x.shape[0]
  mask = jnp.ones(n, bool) if mask is None else checks.as_mask("mask", mask, n)
  checks.check_finite("points", x, "cluster finite features (a diverged model gives NaN)")
  return x, mask


def median_knn_distance(points: jax.Array, *, mask: jax.Array | None = None,
                        k: int = 5) -> jax.Array:
  """The default ``eps`` of :func:`dbscan`: the median k-nearest-neighbour distance.

  For every valid row, its distance to its ``k``-th nearest valid neighbour (itself
  excluded; when a row has fewer than ``k`` valid neighbours, the farthest one); then the
  median of these over the valid rows (for an even count, the mean of the two middle
  values, as ``numpy.median``). Fewer than two valid rows give 0. Jittable; padding rows
  take no part.

  Args:
    points: (n, d) floating rows.
    mask: (n,) bool valid rows (default: all).
    k: the neighbour rank (static), >= 1.

  Returns:
    A scalar in the points' dtype (at least float32).

  Example:
    >>> import jax.numpy as jnp
    >>> x = jnp.array([[0.], [1.], [3.], [7.]])
    >>> float(median_knn_distance(x, k=1))  # 1-NN distances 1, 1, 2, 4
    1.5
  """
  k = checks.check_positive_int("k", k)
  x, mask = _rows_and_mask(points, mask)
  return _eps_of_rows(x, mask, "median", k)


def knee_distance(points: jax.Array, mask: jax.Array | None = None,
                  k: int = 2) -> jax.Array:
  """The ``eps`` the data suggests: the knee of the sorted k-distance curve (Kneedle).

  Every valid row's distance to its ``k``-th nearest valid neighbour (itself excluded;
  with fewer than ``k`` valid neighbours, the farthest one), sorted ascending, is the
  k-distance curve of DBSCAN's authors (Ester et al., 1996); its knee, the point farthest
  below the chord from its first to its last point once both axes are scaled to [0, 1]
  (Satopaa et al., 2011), separates the rows of dense regions (left) from the sparse ones,
  and ``eps`` is the k-distance there. The exact rule (scaling, ties, flat and short
  curves) is in the module's conventions. With ``k = min_samples - 1`` (the default 2
  fits :func:`dbscan`'s ``min_samples=3``) the rows up to the knee are DBSCAN's core
  points. Pure JAX: jittable and vmappable; padding rows take no part.

  Args:
    points: (n, d) floating rows.
    mask: (n,) bool valid rows (default: all).
    k: the neighbour rank (static), >= 1.

  Returns:
    A scalar in the points' dtype (at least float32): one of the valid rows' k-distances,
    or 0 with fewer than two valid rows.

  Example:
    >>> import jax.numpy as jnp
    >>> x = jnp.array([[0.], [1.], [2.], [3.], [4.], [5.], [20.], [40.]])
    >>> float(knee_distance(x, k=1))  # 1-NN distances 1, 1, 1, 1, 1, 1, 15, 20
    1.0
  """
  k = checks.check_positive_int("k", k)
  x, mask = _rows_and_mask(points, mask)
  return _eps_of_rows(x, mask, "knee", k)


def _eps_settings(eps, eps_rule, eps_neighbors, min_samples) -> tuple[str, int]:
  """``(eps_rule, eps_neighbors)`` checked, the neighbour rank's default resolved."""
  if eps_rule not in EPS_RULES:
    raise ValueError(f"eps_rule must be one of {EPS_RULES}, got {eps_rule!r}")
  if eps is not None and eps_rule != "median":
    raise ValueError(f"eps_rule={eps_rule!r} sets eps from the data; pass eps=None to use it "
                     "or leave eps_rule at 'median' with a given eps")
  if eps_neighbors is None:
    eps_neighbors = 5 if eps_rule == "median" else max(min_samples - 1, 1)
  return eps_rule, checks.check_positive_int("eps_neighbors", eps_neighbors)


def dbscan(points: jax.Array, *, eps: float | jax.Array | None = None, min_samples: int = 3,
           max_clusters: int = 8, mask: jax.Array | None = None,
           eps_neighbors: int | None = None, eps_rule: str = "median") -> jax.Array:
  """DBSCAN (Ester et al., KDD 1996) of one batch: (n,) int32 ids in ``[0, max_clusters]``.

  The rules (core points, borders and their tie rule, ids by size, the cap, noise and
  padding) are the module's conventions (:mod:`jaxdd.weighting.batch_clusters`). Ids
  ``0 .. max_clusters - 2`` are the largest clusters, largest first; ``max_clusters - 1``
  is the next cluster and every smaller one merged; ``max_clusters`` is noise and padding.
  Pure JAX with static shapes: jittable, vmappable (a traced ``eps`` included).

  Args:
    points: (n, d) floating rows (one sampled batch; n <= ~512: the work is O(n^2 d)).
    eps: the neighbourhood radius, >= 0 (may be traced); None: set by ``eps_rule`` from
      the valid rows.
    min_samples: the valid rows within ``eps`` (self included) that make a core point.
    max_clusters: the number of cluster ids (static), >= 1; ``max_clusters + 1`` groups
      with noise.
    mask: (n,) bool valid rows (default: all); padding rows get the noise id.
    eps_neighbors: the neighbour rank k of the ``eps=None`` rule (static); None: 5 for
      ``"median"``, ``min_samples - 1`` (at least 1) for ``"knee"``.
    eps_rule: ``"median"`` (:func:`median_knn_distance`) or ``"knee"``
      (:func:`knee_distance`), static; only with ``eps=None``.

  Returns:
    (n,) int32 ids, ready as ``groups`` of :func:`jaxdd.weighting.group_balanced_weights`
    with ``num_groups = max_clusters + 1``.

  Example:
    >>> import jax.numpy as jnp
    >>> x = jnp.array([[0.], [.1], [.2], [.3], [.4], [.5], [9.], [9.05], [9.1], [30.]])
    >>> dbscan(x).tolist()  # eps: the median 5-NN distance, 0.5 here
    [0, 0, 0, 0, 0, 0, 1, 1, 1, 8]
    >>> dbscan(x, eps=0.25, min_samples=4, max_clusters=2).tolist()  # 0., .5: borders
    [0, 0, 0, 0, 0, 0, 2, 2, 2, 2]
    >>> dbscan(x, eps_rule="knee").tolist()  # eps: the knee of the 2-distances, 0.1 here
    [0, 0, 0, 0, 0, 0, 1, 1, 1, 8]
  """
  min_samples = checks.check_positive_int("min_samples", min_samples)
  max_clusters = checks.check_positive_int("max_clusters", max_clusters)
  eps_rule, eps_neighbors = _eps_settings(eps, eps_rule, eps_neighbors, min_samples)
  x, mask = _rows_and_mask(points, mask)
  eps = None if eps is None else _check_eps(eps)
  return _dbscan(x, mask, eps, min_samples=min_samples, max_clusters=max_clusters,
                 eps_neighbors=eps_neighbors, eps_rule=eps_rule)


def batch_pseudo_groups(features: jax.Array, mask: jax.Array | None, *,
                        max_clusters: int = 8, min_samples: int = 3,
                        eps: float | jax.Array | None = None,
                        eps_neighbors: int | None = None,
                        eps_rule: str = "median") -> jax.Array:
  """(C, B) int32 pseudo-groups of a step's per-class real batches: :func:`dbscan` per class.

  FairDD without bias labels (Zhou et al., 2025, appendix M): each class's batch is
  clustered on its own (``jax.vmap`` over classes), so its ids depend on that batch only;
  with ``eps=None`` each class gets its own radius by ``eps_rule`` (the median
  ``eps_neighbors``-NN distance, or the knee of its k-distance curve). Feed the
  result to :func:`jaxdd.weighting.group_balanced_weights` with
  ``num_groups = max_clusters + 1``. Jittable and vmappable (e.g. over runs).

  Args:
    features: (C, B, ...) floating features of the sampled batch, one row of B per class;
      trailing axes are flattened.
    mask: (C, B) bool valid entries (None: all); padding gets the noise id.
    max_clusters: cluster ids per class (static); noise is ``max_clusters``.
    min_samples: see :func:`dbscan`.
    eps: None (per class, by ``eps_rule``), a scalar for every class, or (C,) per class.
    eps_neighbors, eps_rule: see :func:`dbscan`.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxdd.weighting import group_balanced_weights
    >>> one = [0., .1, .2, .3, .4, .5, 9., 9.05, 9.1]
    >>> f = jnp.array([one, one[::-1]])[..., None]  # (2 classes, 9 samples, 1 feature)
    >>> g = batch_pseudo_groups(f, None, max_clusters=2)
    >>> g.tolist()
    [[0, 0, 0, 0, 0, 0, 1, 1, 1], [1, 1, 1, 0, 0, 0, 0, 0, 0]]
    >>> w, present = group_balanced_weights(g, jnp.ones(g.shape, bool), 3)
    >>> [round(float(v), 4) for v in w[0, 5:7]], present.tolist()
    ([0.0833, 0.1667], [2.0, 2.0])
  """
  min_samples = checks.check_positive_int("min_samples", min_samples)
  max_clusters = checks.check_positive_int("max_clusters", max_clusters)
  eps_rule, eps_neighbors = _eps_settings(eps, eps_rule, eps_neighbors, min_samples)
  f = jnp.asarray(features)
  if f.ndim < 3:
    raise ValueError(f"features must have shape (C, B, ...), got {f.shape}")
  c, b = f.shape[:2]
  x = f.reshape(c, b, -1)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise ValueError(f"features must be floating point, got {x.dtype}")
  x = x.astype(checks.compute_dtype(x))
  if mask is None:
    mask = jnp.ones((c, b), bool)
  mask = jnp.asarray(mask)
  if mask.shape != (c, b) or mask.dtype != jnp.bool_:
    raise ValueError(f"mask must be a ({c}, {b}) bool array, got {mask.shape} {mask.dtype}")
  checks.check_finite("features", x, "cluster finite features (a diverged model gives NaN)")
  run = functools.partial(_dbscan, min_samples=min_samples, max_clusters=max_clusters,
                          eps_neighbors=eps_neighbors, eps_rule=eps_rule)
  if eps is None:
    return jax.vmap(lambda xc, mc: run(xc, mc, None))(x, mask)
  eps = jnp.asarray(eps)
  if eps.ndim == 0:
    eps = _check_eps(eps)
  elif eps.shape != (c,):
    raise ValueError(f"eps must be None, a scalar or ({c},) per class, got shape {eps.shape}")
  elif not checks.is_traced(eps) and not bool(jnp.all(jnp.isfinite(eps) & (eps >= 0))):
    raise ValueError(f"eps must be finite numbers >= 0, got {eps}")
  return jax.vmap(run)(x, mask, jnp.broadcast_to(eps, (c,)))
