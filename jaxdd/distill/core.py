"""Shared pieces of every distiller: the device-resident real data, sampling, weights, init.

:class:`RealData` (the real training set as a step consumes it), the real-batch
samplers (:func:`sample_per_class`, :func:`sample_weighted`, :func:`real_batch`)
and their weights (:func:`batch_weights`, :func:`class_weights`), the synthetic
set's initialisation (:func:`weighted_init_rows` and the pure ``init`` every
method shares), the :class:`Distiller` pair and the state's key and hyperparameters
(:func:`step_key`, :func:`with_hparams`); the loop of several steps per call is
:mod:`jaxdd.distill.steps`. Nothing here keeps state between
calls: a driver that shares compiled programs keeps its own cache
(:mod:`jaxdd.runs`). The methods live in
:mod:`jaxdd.distill.distribution` (DM), :mod:`jaxdd.distill.gradient` (DC/DSA)
and :mod:`jaxdd.distill.trajectory` (MTT); :mod:`jaxdd.distill` re-exports them.
"""
from __future__ import annotations

import numbers
import warnings
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from jaxdd import parallel, weighting
from jaxdd._src import checks, rng
from jaxdd.structs import SynSet

class ClassIndex(NamedTuple):
  """Rectangular per-class index: ``indices[c, :counts[c]]`` are class c's rows."""
  indices: jax.Array  # (C, M) int32, padded with 0
  counts: jax.Array  # (C,) int32


class RealData(NamedTuple):
  """The real training set, resident on device, as the step consumes it.

  ``embeddings`` are the surrogate's (N, d) projections (KDE scope 'batch');
  ``log_density`` the per-sample log density precomputed over each whole class
  (KDE scope 'class'). ``sample_weight`` and ``sample_prob`` are per-sample
  weights and sampling probabilities given as data (:func:`jaxdd.distill.dm_cell`).
  Any may be None when unused.
  """
  images: jax.Array
  index: ClassIndex
  embeddings: jax.Array | None = None
  log_density: jax.Array | None = None
  groups: jax.Array | None = None  # (N,) bias labels, for FairDD's group matching only
  sample_weight: jax.Array | None = None  # (N,) per-sample weights, >= 0
  sample_prob: jax.Array | None = None  # (N,) sampling probabilities within each class


#: The KDE weighting's settings; owned and validated by :mod:`jaxdd.weighting`.
KDEConfig = weighting.KDEConfig


class DistillState(NamedTuple):
  """A distiller's state: the synthetic set, the optimiser state, the step, the run key and
  the step's hyperparameters.

  A plain pytree of arrays: ``jax.jit``, ``jax.vmap``, ``chex`` and
  ``flax.serialization`` all take it as it is. ``key`` holds the run key's raw
  data (``jax.random.key_data``, uint32), not a typed key, for that reason: both
  refuse a typed key (``chex.assert_tree_all_finite`` and
  ``flax.serialization.to_bytes`` raise ``TypeError: JAX array with PRNGKey dtype
  cannot be converted to a NumPy array``). :attr:`run_key` is the typed key and
  :attr:`step_key` the typed key of the state's step (also :func:`step_key`).

  ``extra`` holds what a method learns besides the images (MTT's student
  learning rate ``{"syn_lr": ...}``); None for DM and gradient matching.

  ``hparams`` is a dict of the step's tunable values (optax's
  ``inject_hyperparams``): the image learning rate ``lr``, the KDE ``variance``
  and ``temperature`` when the distiller weights, CFM's ``beta``, MTT's
  ``lr_lr``. The step reads them from here, so runs that differ only in them
  share one compiled program, and ``jax.vmap(d.step)`` over stacked states is
  N runs with N settings. Change them with :func:`with_hparams` or
  ``init(..., hparams={...})``.
  """
  syn: SynSet
  opt_state: Any
  step: jax.Array
  key: jax.Array
  extra: Any = None
  hparams: Any = None

  @property
  def run_key(self) -> jax.Array:
    """The run's typed key (``key`` holds its raw data).

    >>> import jax
    >>> from jaxdd import distill
    >>> s = distill.DistillState(None, None, 0, jax.random.key_data(jax.random.key(7)))
    >>> bool(s.run_key == jax.random.key(7))
    True
    """
    return _typed_key(self.key)

  @property
  def step_key(self) -> jax.Array:
    """The typed key of this state's step, ``fold_in(run_key, step)``: what :func:`step_key`
    gives."""
    return jax.random.fold_in(_typed_key(self.key), self.step)


class Distiller(NamedTuple):
  """``init(key, real, syn=None, *, hparams=None) -> state`` and ``step(state, data) -> (state, metrics)``.

  Both are pure functions of their arguments: ``jax.jit``, ``jax.vmap`` and a
  user's own JAX code compose with them. ``step`` leaves its input alone (a
  state stays valid after the step that read it); reusing the input's buffers
  is the business of the caller that owns them (:mod:`jaxdd.runs.programs`).

  ``data`` is the :class:`RealData` for distribution and gradient matching,
  the expert trajectories (:mod:`jaxdd.distill.experts`) for trajectory matching.

  ``step.signature`` is a hashable value of the step's static settings (None
  when one of them is unhashable): two distillers with equal signatures have
  interchangeable steps, whatever their hyperparameters, which live in the
  state (:class:`DistillState`). ``step.execution`` is the
  :class:`~jaxdd.distill.Execution` it was built with.
  """
  init: Callable[..., DistillState]
  step: Callable[[DistillState, Any], tuple[DistillState, dict]]


def all_finite(*values) -> jax.Array:
  """One boolean, computed where the values are: every float in ``values`` (arrays or
  pytrees) is finite.

  Every method's step returns it as its ``finite`` metric (the loss, the images'
  gradient norm and the updated synthetic set), so a driver learns of the first
  non-finite step from the metrics it fetches anyway. It only reads the values:
  nothing it checks changes.

  >>> import jax.numpy as jnp
  >>> bool(all_finite(jnp.ones(3), {"lr": jnp.float32(0.1)})), bool(all_finite(jnp.array([1., jnp.nan])))
  (True, False)
  """
  flags = [jnp.isfinite(x).all() for x in jax.tree.leaves(values)
           if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]
  return jnp.stack(flags).all() if flags else jnp.bool_(True)


def _host(x) -> np.ndarray:
  """Host copy of a (possibly multi-process, replicated) array."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    return np.asarray(x.addressable_shards[0].data)
  return np.asarray(x)


def class_index(labels: np.ndarray, num_classes: int) -> ClassIndex:
  """Builds the padded per-class index of ``labels`` (host side, numpy)."""
  labels = np.asarray(labels)
  if labels.ndim != 1:
    raise ValueError(f"labels must be 1-D, got shape {labels.shape}")
  if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
    raise ValueError(f"labels must lie in [0, {num_classes}), got [{labels.min()}, {labels.max()}]")
  rows = [np.flatnonzero(labels == c) for c in range(num_classes)]
  counts = np.array([len(r) for r in rows], np.int32)
  if (counts == 0).any():
    raise ValueError(f"classes {np.flatnonzero(counts == 0).tolist()} have no samples; "
                     "every class needs at least one real image")
  width = int(counts.max())
  indices = np.zeros((num_classes, width), np.int32)
  for c, r in enumerate(rows):
    indices[c, :len(r)] = r
  return ClassIndex(indices, counts)


def real_data(images, labels, *, num_classes: int, embeddings=None, log_density=None,
              groups=None, sample_weight=None, sample_prob=None,
              mesh: Mesh | None = None) -> RealData:
  """Puts a labelled image set (and optional surrogate outputs) on device.

  Args:
    images: (N, H, W, ch) float32, normalised.
    labels: (N,) integer labels in [0, num_classes).
    num_classes: number of classes.
    embeddings: optional (N, d) surrogate embeddings (KDE scope 'batch').
    log_density: optional (N,) per-class log densities (KDE scope 'class').
    groups: optional (N,) integer bias labels, used only by FairDD's group
      matching (``dm(group_matching=<number of bias values>)``), which needs the
      true bias labels.
    sample_weight: optional (N,) non-negative per-sample weights: every real
      batch's weights are proportional to them (times the method's own
      weighting), e.g. weights you computed yourself.
    sample_prob: optional (N,) non-negative sampling probabilities: a step
      that samples by them (:func:`dm_cell`) draws each class's batch with
      replacement in proportion to them.
    mesh: optional mesh; the arrays are replicated over it.

  Returns:
    A :class:`RealData`.
  """
  images = np.asarray(images, np.float32)
  checks.check_images(images, "real_data",
                      finite_fix="check the dataset and its normalisation")
  labels = np.asarray(labels)
  if len(labels) != len(images):
    raise ValueError(f"{len(images)} images but {len(labels)} labels")
  for name, arr in (("embeddings", embeddings), ("log_density", log_density),
                    ("groups", groups), ("sample_weight", sample_weight),
                    ("sample_prob", sample_prob)):
    if arr is not None:
      arr = np.asarray(arr)
      if len(arr) != len(images):
        raise ValueError(f"{name} has {len(arr)} rows for {len(images)} images")
      if not np.isfinite(arr).all():
        raise ValueError(f"{name} contain NaN or Inf; recompute them (check the surrogate)")
  if groups is not None and (np.asarray(groups).min() < 0
                             or not np.issubdtype(np.asarray(groups).dtype, np.integer)):
    raise ValueError("groups must be non-negative integer bias labels")
  for name, arr in (("sample_weight", sample_weight), ("sample_prob", sample_prob)):
    if arr is not None and (np.asarray(arr).ndim != 1 or (np.asarray(arr) < 0).any()):
      raise ValueError(f"{name} must be (N,) non-negative numbers")
  index = class_index(labels, num_classes)
  if sample_prob is not None:
    sp = np.asarray(sample_prob, np.float64)
    empty = [c for c in range(num_classes) if not (sp[np.asarray(labels) == c] > 0).any()]
    if empty:
      raise ValueError(f"sample_prob is 0 on every image of classes {empty}; give each class "
                       "some probability")
  f32 = lambda a: None if a is None else np.asarray(a, np.float32)  # noqa: E731
  data = RealData(images, index, f32(embeddings), f32(log_density),
                  None if groups is None else np.asarray(groups, np.int32),
                  f32(sample_weight), f32(sample_prob))
  return parallel.put(data, mesh)


#: Log density of every sample within its class (scope 'class'); see :mod:`jaxdd.weighting`.
class_log_density = weighting.class_log_density


def sample_per_class(key: jax.Array, index: ClassIndex, n: int) -> tuple[jax.Array, jax.Array]:
  """Draws ``n`` rows per class without replacement (jittable).

  Like the reference (a fresh permutation per call, first ``n`` kept); a class
  with fewer than ``n`` rows gives all of them and the rest is masked out.

  Returns:
    ``(rows, mask)``: (C, n) dataset row numbers and (C, n) validity mask.
  """
  num_classes, width = index.indices.shape
  valid = jnp.arange(width)[None, :] < index.counts[:, None]
  scores = jax.random.uniform(key, (num_classes, width))
  scores = jnp.where(valid, scores, 2.0)  # padding sorts last
  order = jnp.argsort(scores, axis=1)[:, :n]
  if n > width:  # every class is smaller than n: pad with masked duplicates
    order = jnp.pad(order, ((0, 0), (0, n - width)))
  rows = jnp.take_along_axis(index.indices, order, axis=1)
  mask = jnp.arange(n)[None, :] < jnp.minimum(index.counts, n)[:, None]
  return rows, mask


def batch_weights(real: RealData, rows: jax.Array, mask: jax.Array,
                  config: KDEConfig | None) -> jax.Array:
  """(C, B) weights of a sampled batch: uniform over valid rows, or KDE-based.

  :func:`jaxdd.weighting.batch_weights` on ``real``'s embeddings (scope 'batch')
  or whole-class log densities (scope 'class').
  """
  return weighting.batch_weights(rows, mask, config, embeddings=real.embeddings,
                                 log_density=real.log_density)


#: How a step draws its real batch: 'uniform' (the reference: ``real_per_class``
#: rows per class without replacement, weighted by ``kde_config`` inside the loss)
#: or 'weighted' (importance sampling: rows drawn with replacement in proportion to
#: the whole-class weights, then a plain mean).
REAL_SAMPLING = ("uniform", "weighted")
#: Where the synthetic images start: copies of random real images ('real'),
#: copies of real images drawn in proportion to their whole-class weights
#: ('weighted'), or standard normal noise ('noise').
INITS = ("real", "weighted", "noise")


def class_weights(real: RealData, config: KDEConfig) -> jax.Array:
  """(C, M) weights of every row of each class over the WHOLE class (padding gets 0).

  :func:`jaxdd.weighting.class_weights` of ``real.log_density`` (the per-class
  density of :func:`class_log_density`) over ``real``'s class index: the
  distribution that ``init='weighted'`` and ``real_sampling='weighted'`` draw
  from. Each row sums to 1.
  """
  return weighting.class_weights(real.log_density, real.index.indices, real.index.counts, config)


def sample_weighted(key: jax.Array, real: RealData, n: int,
                    config: KDEConfig) -> tuple[jax.Array, jax.Array]:
  """Draws ``n`` rows per class WITH replacement, row i of class c with probability w_ci.

  ``w`` is :func:`class_weights`. The plain mean of such a batch is an unbiased
  estimate of the whole-class weighted mean (which a uniform batch re-weighted by
  the same ``w`` only approximates, as a ratio estimate), with far lower variance
  when the weights are concentrated on a few rows (the effective sample size of a
  uniform batch is ``(sum w_b)^2 / sum w_b^2``).

  Returns:
    ``(rows, mask)`` like :func:`sample_per_class` (the mask is all True).
  """
  return sample_from(key, real.index, class_weights(real, config), n)


def sample_from(key: jax.Array, index: ClassIndex, w: jax.Array,
                n: int) -> tuple[jax.Array, jax.Array]:
  """Draws ``n`` rows per class WITH replacement, column j of class c with probability
  proportional to ``w[c, j]`` ((C, M), over ``index``'s padded columns; padding must be 0).

  Returns:
    ``(rows, mask)`` like :func:`sample_per_class` (the mask is all True).
  """
  logits = jnp.where(w > 0, jnp.log(jnp.maximum(w, 1e-38)), -jnp.inf)
  keys = jax.random.split(key, w.shape[0])
  cols = jax.vmap(lambda k, lg: jax.random.categorical(k, lg, shape=(n,)))(keys, logits)
  rows = jnp.take_along_axis(index.indices, cols, axis=1)
  return rows, jnp.ones(rows.shape, bool)


def real_batch(key: jax.Array, real: RealData, n: int, config: KDEConfig | None,
               sampling: str = "uniform") -> tuple[jax.Array, jax.Array, jax.Array]:
  """The real batch of one matching: ``(rows, mask, weights)``, each (C, n).

  ``sampling='uniform'``: :func:`sample_per_class` and :func:`batch_weights`
  (the reference's sampling, KDE-weighted when ``config`` is given).
  ``sampling='weighted'``: :func:`sample_weighted` and uniform weights.
  """
  if sampling == "weighted":
    rows, mask = sample_weighted(key, real, n, config)
    return rows, mask, batch_weights(real, rows, mask, None)
  rows, mask = sample_per_class(key, real.index, n)
  return rows, mask, batch_weights(real, rows, mask, config)


class DefaultStart(str):
  """A factory's default ``syn_init``: equal to its string, yet told apart from the same string
  passed by a caller, so that ``init=`` (its deprecated spelling) given beside an explicit
  ``syn_init=`` is refused even when that equals the default."""


#: The defaults of the factories' ``syn_init``.
REAL, NOISE = DefaultStart("real"), DefaultStart("noise")


def syn_init_of(syn_init: str, init: str | None, factory: str) -> str:
  """The start of the synthetic set a factory was given: ``syn_init``, or ``init``, its
  deprecated spelling (a :class:`Distiller`'s ``.init`` is its init function), with a
  ``DeprecationWarning``; both given (whatever their values) is a ``ValueError``."""
  if init is None:
    return str(syn_init)
  if not isinstance(syn_init, DefaultStart):
    raise ValueError(f"{factory}() got syn_init={str(syn_init)!r} and init={init!r}; give "
                     "syn_init= only (init= is its deprecated spelling)")
  warnings.warn(f"{factory}(init=...) is deprecated and will be removed in the next release; "
                "use syn_init=... (a Distiller's .init is its init function)",
                DeprecationWarning, stacklevel=3)
  return init


def _check_sampling(init: str, sampling: str, config: KDEConfig | None) -> None:
  if init not in INITS:
    raise ValueError(f"syn_init must be one of {list(INITS)}, got {init!r}")
  if sampling not in REAL_SAMPLING:
    raise ValueError(f"real_sampling must be one of {list(REAL_SAMPLING)}, got {sampling!r}")
  if config is None and (init == "weighted" or sampling == "weighted"):
    raise ValueError("syn_init='weighted' and real_sampling='weighted' draw real images in "
                     "proportion to their weights: pass kde_config= (a weighting)")


def _check_kde(config: KDEConfig | None) -> None:
  """A KDEConfig validated itself when it was built; only its type is checked here."""
  if config is not None and not isinstance(config, KDEConfig):
    raise ValueError(f"kde_config must be a jaxdd.weighting.KDEConfig or None, got {config!r}")


def weighted_init_rows(key: jax.Array, real: RealData, ipc: int,
                       config: KDEConfig) -> jax.Array:
  """(C, ipc) distinct rows per class, drawn without replacement in proportion to weight.

  Successive sampling ∝ :func:`class_weights` (Gumbel top-k: the ``ipc`` largest
  ``log w + Gumbel`` of each class), so an image with twice the weight is about
  twice as likely to be chosen, and no image is chosen twice. Rows of zero
  weight are chosen only when a class has fewer than ``ipc`` rows of positive
  weight (the first of them). Pure and traceable.
  """
  w = class_weights(real, config)
  gumbel = jax.random.gumbel(key, w.shape, jnp.float32)
  valid = jnp.arange(w.shape[1])[None, :] < real.index.counts[:, None]
  score = jnp.where(w > 0, jnp.log(jnp.maximum(w, 1e-38)) + gumbel, -1e30)
  score = jnp.where(valid, score, -jnp.inf)
  _, order = jax.lax.top_k(score, ipc)
  return jnp.take_along_axis(real.index.indices, order, axis=1)


# ---------------------------------------------------------------------------- keys and hparams

def run_key_data(key: jax.Array) -> jax.Array:
  """The raw data of a run key: ``key`` (a typed key, or a legacy uint32 key) as uint32.

  >>> import jax
  >>> run_key_data(jax.random.key(0)).dtype
  dtype('uint32')
  """
  if jax.dtypes.issubdtype(jnp.result_type(key), jax.dtypes.prng_key):
    return jax.random.key_data(key)
  return jnp.asarray(key, jnp.uint32)


def _typed_key(key: jax.Array) -> jax.Array:
  if jax.dtypes.issubdtype(jnp.result_type(key), jax.dtypes.prng_key):
    return key
  return jax.random.wrap_key_data(jnp.asarray(key, jnp.uint32))


def step_key(state: DistillState) -> jax.Array:
  """The typed key of ``state``'s step: ``fold_in(key, step)`` (big_vision), so a resumed
  run replays exactly the same randomness.

  >>> import jax, jax.numpy as jnp
  >>> s = DistillState(None, None, jnp.int32(3), jax.random.key_data(jax.random.key(0)))
  >>> bool((jax.random.key_data(step_key(s))
  ...       == jax.random.key_data(jax.random.fold_in(jax.random.key(0), 3))).all())
  True
  """
  return jax.random.fold_in(_typed_key(state.key), state.step)


def _hparam_value(value):
  """An hparam as the step reads it: a float32 scalar for a number, a pytree as it is."""
  if isinstance(value, (numbers.Real, np.number)) or (
      isinstance(value, (np.ndarray, jax.Array)) and value.ndim == 0):
    return jnp.asarray(value, jnp.float32)
  return value


def hparams_as_arrays(state):
  """``state`` (a :class:`DistillState`) with every number of its ``hparams`` a float32 array,
  as ``init`` makes them: a Python float put there (``state._replace(hparams={..., "lr":
  5.0})``) is weakly typed, and a compiled step given it would be traced and compiled again.
  Arrays and tracers are left as they are; anything else passes through unchanged.

  >>> import jax.numpy as jnp
  >>> s = hparams_as_arrays(DistillState(None, None, 0, None, None, {"lr": 5.0}))
  >>> s.hparams["lr"].dtype, s.hparams["lr"].weak_type
  (dtype('float32'), False)
  """
  if not isinstance(state, DistillState) or not isinstance(state.hparams, dict):
    return state
  hp = {k: _hparam_value(v) if isinstance(v, (numbers.Real, np.number, np.ndarray))
        and not isinstance(v, jax.core.Tracer) else v for k, v in state.hparams.items()}
  return state._replace(hparams=hp)


def merge_hparams(defaults: dict, changes: dict | None) -> dict:
  """``defaults`` with ``changes`` applied; a name ``defaults`` lacks is refused."""
  changes = {} if changes is None else dict(changes)
  unknown = sorted(set(changes) - set(defaults))
  if unknown:
    raise ValueError(f"hparams {unknown} are not tunable values of this distiller; its "
                     f"hparams are {sorted(defaults)}")
  return {k: changes.get(k, v) for k, v in defaults.items()}


def with_hparams(state: DistillState, **values) -> DistillState:
  """``state`` with some hyperparameters changed (names of ``state.hparams`` only).

  A value keeps the dtype and shape of the one it replaces, so the step's
  compiled program is reused.

  Example:
    >>> import jax, numpy as np
    >>> from jaxdd import distill, models
    >>> x = np.random.default_rng(0).normal(size=(40, 8, 8, 3)).astype(np.float32)
    >>> real = distill.real_data(x, np.repeat(np.arange(2), 20), num_classes=2)
    >>> d = distill.dm(num_classes=2, ipc=2, model=models.ConvNet(2, depth=1, width=8),
    ...                real_per_class=8)
    >>> state = distill.with_hparams(d.init(jax.random.key(0), real), lr=0.5)
    >>> float(state.hparams["lr"])
    0.5
  """
  merged = merge_hparams(state.hparams or {}, values)
  out = {}
  for k, v in merged.items():
    old = (state.hparams or {})[k]
    if k in values and hasattr(old, "dtype"):
      v = jnp.broadcast_to(jnp.asarray(v, old.dtype), jnp.shape(old))
    out[k] = v
  return state._replace(hparams=out)


def _concrete(*trees) -> bool:
  return not any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(trees))


def _check_counts(counts, ipc: int) -> None:
  """A class smaller than ``ipc`` is refused, on concrete counts. Under tracing the check
  is skipped: the init then repeats such a class's rows (``sample_per_class`` pads)."""
  if not _concrete(counts):
    return
  counts = _host(counts)
  if counts.min() < ipc:
    small = int(np.argmin(counts))
    raise ValueError(f"ipc={ipc} is larger than class {small}, which has {counts[small]} "
                     "real images; lower ipc or use a larger source")


def _state_init(num_classes: int, ipc: int, init: str, tx: optax.GradientTransformation,
                mesh: Mesh | None, kde_config: KDEConfig | None = None,
                hparams: dict | None = None) -> Callable[..., DistillState]:
  """The ``init`` of every distiller: the synthetic set (from real images, real images
  drawn in proportion to their weights, or noise; or a warm start), the image optimiser's
  state and the hyperparameters (``hparams``: the distiller's defaults), as a pure,
  traceable function; placed on ``mesh`` when called on concrete values."""
  defaults = dict(hparams or {})

  def pure(key, real: RealData, syn: SynSet | None, hp: dict) -> DistillState:
    k_init, k_run = jax.random.split(_typed_key(key))
    if syn is None:
      labels = jnp.repeat(jnp.arange(num_classes, dtype=jnp.int32), ipc)
      if init == "real":
        rows, _ = sample_per_class(k_init, real.index, ipc)
        images = real.images[rows.reshape(-1)]
      elif init == "weighted":
        images = real.images[weighted_init_rows(k_init, real, ipc, kde_config).reshape(-1)]
      else:
        images = jax.random.normal(k_init, (num_classes * ipc,) + real.images.shape[1:])
      syn = SynSet(jnp.asarray(images, jnp.float32), labels)
    else:  # copies: the state never shares a buffer with the caller's SynSet
      syn = SynSet(jnp.array(syn.images, jnp.float32, copy=True),
                   jnp.array(syn.labels, jnp.int32, copy=True))
    hp = jax.tree.map(lambda v: jnp.array(v, copy=True), {k: _hparam_value(v)
                                                           for k, v in hp.items()})
    return DistillState(syn, tx.init(syn.images), jnp.zeros((), jnp.int32),
                        jax.random.key_data(k_run), None, hp)

  # one program: called eagerly, each of the init's operations would be compiled on its own
  compiled = jax.jit(pure)

  def init_fn(key: jax.Array, real: RealData, syn: SynSet | None = None, *,
              hparams: dict | None = None) -> DistillState:
    hp = merge_hparams(defaults, hparams)
    key = rng.default_key(key)  # typed keys of any implementation; the state keeps the default's
    _check_counts(real.index.counts, ipc)
    if syn is not None and jnp.shape(syn.images)[0] != num_classes * ipc:
      raise ValueError(f"warm-start SynSet has {jnp.shape(syn.images)[0]} images, expected "
                       f"num_classes * ipc = {num_classes * ipc}")
    if mesh is None or not _concrete(key, real, syn, hp):
      # the numbers made float32 arrays before tracing (traced, a Python float is weakly typed)
      return compiled(key, real, syn, {k: _hparam_value(v) for k, v in hp.items()})
    # On a mesh (several processes included): computed from this process's complete host
    # copy of the replicated data, then placed on the mesh.
    host = lambda t: jax.tree.map(lambda a: jnp.asarray(_host(a)), t)  # noqa: E731
    state = pure(key, host(real), None if syn is None else host(syn), hp)
    return parallel.put(jax.tree.map(np.asarray, state), mesh)
  return init_fn


class _KDEKnobs(NamedTuple):
  """A :class:`KDEConfig` whose variance and temperature may be traced (runtime) values."""
  variance: Any
  temperature: Any
  normalize: str
  scope: str


def kde_hparams(kde_config: KDEConfig | None) -> dict:
  """The KDE weighting's tunable values (none without a weighting)."""
  if kde_config is None:
    return {}
  return {"variance": np.float32(kde_config.variance),
          "temperature": np.float32(kde_config.temperature)}


def kde_knobs(kde_config: KDEConfig | None, hparams: dict) -> _KDEKnobs | None:
  """The weighting a step applies: ``kde_config``'s static choices, the state's values."""
  if kde_config is None:
    return None
  return _KDEKnobs(hparams["variance"], hparams["temperature"], kde_config.normalize,
                   kde_config.scope)
