"""Distillation methods as optax-style pairs of pure functions.

``dm(...)`` (distribution matching), ``dsa(...)`` and ``dc(...)`` (gradient
matching, see :func:`gm`) return a :class:`Distiller` ``(init, step)``. For DM:

* ``init(key, real)`` -> :class:`DistillState` with the synthetic set (initialised
  from real images of each class, or from noise) and the image optimiser state.
* ``step(state, real)`` -> ``(state, metrics)``: ONE compiled XLA program that
  samples a real batch per class from the device-resident dataset, draws a fresh
  random ConvNet, applies one siamese DSA draw per class, computes the KDE weights
  of the sampled batch from its surrogate embeddings, evaluates the weighted DM
  loss and updates the synthetic images with SGD-momentum (optax).

The step key is ``fold_in(state.key, state.step)`` (big_vision): the step returns
no keys, and a resumed run replays exactly the same randomness.

Example:
  >>> import jax, numpy as np
  >>> from jaxdd import distill, models
  >>> x = np.random.default_rng(0).normal(size=(40, 8, 8, 3)).astype(np.float32)
  >>> y = np.repeat(np.arange(2), 20)
  >>> real = distill.real_data(x, y, num_classes=2)
  >>> d = distill.dm(num_classes=2, ipc=2, model=models.ConvNet(2, depth=1, width=8),
  ...                real_per_class=8, augment=None)
  >>> state = d.init(jax.random.key(0), real)
  >>> state, metrics = d.step(state, real)
  >>> state.syn.images.shape
  (4, 8, 8, 3)
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Literal, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, PartitionSpec as P

from jaxdd import augment as augment_lib
from jaxdd._src import checks, winograd
from jaxdd import kde, matching, parallel, policy
from jaxdd import train as train_lib
from jaxdd.protocols import Protocol
from jaxdd.models import ConvNet, loop_safe_convs
from jaxdd.structs import SynSet


class ClassIndex(NamedTuple):
  """Rectangular per-class index: ``indices[c, :counts[c]]`` are class c's rows."""
  indices: jax.Array  # (C, M) int32, padded with 0
  counts: jax.Array  # (C,) int32


class RealData(NamedTuple):
  """The real training set, resident on device, as the step consumes it.

  ``embeddings`` are the surrogate's (N, d) projections (KDE scope 'batch');
  ``log_density`` the per-sample log density precomputed over each whole class
  (KDE scope 'class'). Either may be None when unused.
  """
  images: jax.Array
  index: ClassIndex
  embeddings: jax.Array | None = None
  log_density: jax.Array | None = None
  groups: jax.Array | None = None  # (N,) bias labels, for FairDD's group matching only


#: The KDE weighting's settings; owned and validated by :mod:`jaxdd.kde`.
KDEConfig = kde.KDEConfig


class DistillState(NamedTuple):
  syn: SynSet
  opt_state: Any
  step: jax.Array
  key: jax.Array


class Distiller(NamedTuple):
  init: Callable[..., DistillState]
  step: Callable[[DistillState, RealData], tuple[DistillState, dict]]


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
              groups=None, mesh: Mesh | None = None) -> RealData:
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
                    ("groups", groups)):
    if arr is not None:
      arr = np.asarray(arr)
      if len(arr) != len(images):
        raise ValueError(f"{name} has {len(arr)} rows for {len(images)} images")
      if not np.isfinite(arr).all():
        raise ValueError(f"{name} contain NaN or Inf; recompute them (check the surrogate)")
  if groups is not None and (np.asarray(groups).min() < 0
                             or not np.issubdtype(np.asarray(groups).dtype, np.integer)):
    raise ValueError("groups must be non-negative integer bias labels")
  data = RealData(images, class_index(labels, num_classes),
                  None if embeddings is None else np.asarray(embeddings, np.float32),
                  None if log_density is None else np.asarray(log_density, np.float32),
                  None if groups is None else np.asarray(groups, np.int32))
  return parallel.put(data, mesh)


#: Log density of every sample within its class (scope 'class'); see :mod:`jaxdd.kde`.
class_log_density = kde.class_log_density


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
  """(C, B) weights of a sampled batch: uniform over valid rows, or KDE-based."""
  if config is None:
    uniform = mask.astype(jnp.float32)
    return uniform / uniform.sum(axis=1, keepdims=True)
  if config.scope == "batch":
    if real.embeddings is None:
      raise ValueError("KDE scope 'batch' needs surrogate embeddings: pass embeddings= to real_data")
    emb = real.embeddings[rows]
    return jax.vmap(lambda e, m: kde.weights(e, variance=config.variance, temperature=config.temperature,
                                             normalize=config.normalize, mask=m))(emb, mask)
  if config.scope == "class":
    if real.log_density is None:
      raise ValueError("KDE scope 'class' needs per-class log densities: pass log_density= to "
                       "real_data (see class_log_density)")
    log_f = real.log_density[rows]
    return jax.vmap(lambda lf, m: kde.weights_from_log_density(
        lf, temperature=config.temperature, normalize=config.normalize, mask=m))(log_f, mask)
  raise ValueError(f"unknown KDE scope {config.scope!r}; use 'batch' or 'class'")


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

  From ``real.log_density`` (the per-class density of :func:`class_log_density`),
  normalised with ``config``'s temperature and normalisation, whatever its
  scope: this is the distribution that ``init='weighted'`` and
  ``real_sampling='weighted'`` draw from. Each row sums to 1.
  """
  if real.log_density is None:
    raise ValueError("weighted initialisation or sampling needs the whole-class log densities: "
                     "pass log_density= to real_data (see class_log_density)")
  valid = jnp.arange(real.index.indices.shape[1])[None, :] < real.index.counts[:, None]
  log_f = jnp.asarray(real.log_density)[real.index.indices]
  return jax.vmap(lambda lf, m: kde.weights_from_log_density(
      lf, temperature=config.temperature, normalize=config.normalize, mask=m))(log_f, valid)


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
  w = class_weights(real, config)
  logits = jnp.where(w > 0, jnp.log(jnp.maximum(w, 1e-38)), -jnp.inf)
  keys = jax.random.split(key, w.shape[0])
  cols = jax.vmap(lambda k, lg: jax.random.categorical(k, lg, shape=(n,)))(keys, logits)
  rows = jnp.take_along_axis(real.index.indices, cols, axis=1)
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


def _check_sampling(init: str, sampling: str, config: KDEConfig | None) -> None:
  if init not in INITS:
    raise ValueError(f"init must be one of {list(INITS)}, got {init!r}")
  if sampling not in REAL_SAMPLING:
    raise ValueError(f"real_sampling must be one of {list(REAL_SAMPLING)}, got {sampling!r}")
  if config is None and (init == "weighted" or sampling == "weighted"):
    raise ValueError("init='weighted' and real_sampling='weighted' draw real images in "
                     "proportion to their weights: pass kde_config= (a weighting)")


def _check_kde(config: KDEConfig | None) -> None:
  """A KDEConfig validated itself when it was built; only its type is checked here."""
  if config is not None and not isinstance(config, KDEConfig):
    raise ValueError(f"kde_config must be a jaxdd.kde.KDEConfig or None, got {config!r}")


def weighted_init_rows(key: jax.Array, real: RealData, ipc: int,
                       config: KDEConfig) -> np.ndarray:
  """(C, ipc) distinct rows per class, drawn without replacement in proportion to weight.

  Successive sampling ∝ :func:`class_weights` (Gumbel top-k: the ``ipc`` largest
  ``log w + Gumbel`` of each class), so an image with twice the weight is about
  twice as likely to be chosen, and no image is chosen twice. Rows of zero
  weight are chosen only when a class has fewer than ``ipc`` rows of positive
  weight. Host-side (runs once, in ``init``).
  """
  host = RealData(jnp.zeros((1,)), jax.tree.map(lambda a: jnp.asarray(_host(a)), real.index),
                  None, None if real.log_density is None else jnp.asarray(_host(real.log_density)))
  w = np.asarray(class_weights(host, config), np.float64)
  gumbel = np.asarray(jax.random.gumbel(key, w.shape), np.float64)
  counts = np.asarray(host.index.counts)
  valid = np.arange(w.shape[1])[None, :] < counts[:, None]
  with np.errstate(divide="ignore"):
    score = np.where(w > 0, np.log(w) + gumbel, -1e30 + gumbel)
  score = np.where(valid, score, -np.inf)
  order = np.argsort(-score, axis=1, kind="stable")[:, :ipc]
  return np.take_along_axis(np.asarray(host.index.indices), order, axis=1)


def _state_init(num_classes: int, ipc: int, init: str, tx: optax.GradientTransformation,
                mesh: Mesh | None, kde_config: KDEConfig | None = None
                ) -> Callable[..., DistillState]:
  """The ``init`` of every distiller: the synthetic set (from real images, real images
  drawn in proportion to their weights, or noise; or a warm start) and the image
  optimiser's state, placed on ``mesh``."""

  def init_fn(key: jax.Array, real: RealData, syn: SynSet | None = None) -> DistillState:
    # Runs once, eagerly, on host copies (replicated data is complete in every
    # process), then places the state on the mesh: works for multi-process meshes.
    k_init, k_run = jax.random.split(key)
    if syn is None:
      counts = _host(real.index.counts)
      if counts.min() < ipc:
        small = int(np.argmin(counts))
        raise ValueError(f"ipc={ipc} is larger than class {small}, which has {counts[small]} "
                         "real images; lower ipc or use a larger source")
      host_images = _host(real.images)
      labels = np.repeat(np.arange(num_classes, dtype=np.int32), ipc)
      if init == "real":
        index = ClassIndex(_host(real.index.indices), counts)
        rows, _ = sample_per_class(k_init, jax.tree.map(jnp.asarray, index), ipc)
        images = host_images[np.asarray(rows).reshape(-1)]
      elif init == "weighted":
        images = host_images[weighted_init_rows(k_init, real, ipc, kde_config).reshape(-1)]
      else:
        images = np.asarray(jax.random.normal(k_init, (num_classes * ipc,) + host_images.shape[1:]))
      syn = SynSet(np.asarray(images, np.float32), labels)
    else:
      syn = SynSet(np.asarray(_host(syn.images), np.float32), np.asarray(_host(syn.labels), np.int32))
      if syn.images.shape[0] != num_classes * ipc:
        raise ValueError(f"warm-start SynSet has {syn.images.shape[0]} images, expected "
                         f"num_classes * ipc = {num_classes * ipc}")
    opt_state = tx.init(jnp.asarray(syn.images))
    state = DistillState(syn, jax.tree.map(np.asarray, opt_state), np.zeros((), np.int32), k_run)
    return parallel.put(state, mesh)
  return init_fn


class _KDEKnobs(NamedTuple):
  """A :class:`KDEConfig` whose variance and temperature may be traced (runtime) values."""
  variance: Any
  temperature: Any
  normalize: str
  scope: str


def _runtime_knobs(lr: float, kde_config: KDEConfig | None) -> dict[str, np.ndarray]:
  """The values a compiled step takes as arguments instead of constants."""
  return {"lr": np.float32(lr),
          "variance": np.float32(1.0 if kde_config is None else kde_config.variance),
          "temperature": np.float32(1.0 if kde_config is None else kde_config.temperature)}


# Compiled steps by their static settings: distillers that differ only in runtime knobs
# (lr_img, KDE variance and temperature) reuse one program (jaxdd tune's candidates).
_PROGRAMS: dict[tuple, Callable] = {}


def _shared_program(static: tuple, step_fn: Callable) -> Callable:
  try:
    hash(static)
  except TypeError:  # an unhashable setting (e.g. a custom augment object): no sharing
    return jax.jit(step_fn, donate_argnums=0)
  if static not in _PROGRAMS:
    if len(_PROGRAMS) >= 32:
      _PROGRAMS.pop(next(iter(_PROGRAMS)))
    _PROGRAMS[static] = jax.jit(step_fn, donate_argnums=0)
  return _PROGRAMS[static]


class _BoundStep:
  """``step(state, real)``: a shared jitted program called with this distiller's knobs."""

  def __init__(self, program: Callable, hp: dict):
    self._program, self._hp = program, hp

  def __call__(self, state, real):
    return self._program(state, real, self._hp)

  def lower(self, state, real):
    return self._program.lower(state, real, self._hp)


def _chunk(value, auto: int | None, name: str) -> int | None:
  if value == "auto":
    return auto
  if value is None:
    return None
  if isinstance(value, bool) or not isinstance(value, int) or value < 1:
    raise ValueError(f"{name} must be a positive int, 'auto' or None (all at once), got {value!r}")
  return value


def _floating_dtype(value, name: str):
  """None, or ``value`` as a floating numpy dtype (``"bfloat16"``, ``jnp.float16``, ...)."""
  if value is None:
    return None
  try:
    dtype = jnp.dtype(value)
  except TypeError:
    dtype = None
  if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
    raise ValueError(f"{name} must be a floating dtype such as 'bfloat16' or 'float32' (or None "
                     f"for the synthetic images' dtype), got {value!r}")
  return dtype


def dm(*, num_classes: int, ipc: int, model: nn.Module | None = None,
       augment: Callable[[jax.Array, jax.Array], jax.Array] | None = None,
       real_per_class: int = 256, lr: float = 1.0, momentum: float = 0.5,
       syn_tx: optax.GradientTransformation | None = None,
       init: Literal["real", "weighted", "noise"] = "real", kde_config: KDEConfig | None = None,
       real_sampling: Literal["uniform", "weighted"] = "uniform",
       group_matching: int | None = None,
       mesh: Mesh | None = None, class_axis: str | None = None, batch_axis: str | None = None,
       real_chunk: int | Literal["auto"] | None = "auto",
       syn_chunk: int | Literal["auto"] | None = "auto", real_dtype: Any = None,
       jit: bool = True) -> Distiller:
  """Distribution matching (Zhao & Bilen 2023), optionally KDE-reweighted (Cui et al. 2024).

  Args:
    num_classes: number of classes.
    ipc: synthetic images per class.
    model: the embedding network, re-initialised randomly at every step
      (default ``ConvNet(num_classes)``: depth 3, width 128, instance norm).
    augment: siamese augmentation ``f(key, images)`` (e.g.
      ``jaxdd.augment.dsa("color_crop_cutout_flip_scale_rotate")``) or None.
    real_per_class: real images sampled per class and step (reference: 256).
    lr, momentum: SGD on the synthetic images (reference: 1.0, 0.5).
    syn_tx: optional optax transformation replacing SGD(lr, momentum).
    init: 'real' (copy ``ipc`` random real images of each class), 'weighted'
      (copy ``ipc`` real images of each class drawn without replacement in
      proportion to their whole-class weights, :func:`weighted_init_rows`;
      needs ``kde_config`` and ``real.log_density``) or 'noise' (standard
      normal, i.e. noise in the normalised space).
    kde_config: None for vanilla DM, else the KDE weighting (:class:`KDEConfig`).
    real_sampling: 'uniform' (the reference's batch, weighted by ``kde_config``
      inside the loss) or 'weighted' (importance sampling: rows drawn with
      replacement in proportion to the whole-class weights and matched with a
      plain mean, :func:`sample_weighted`; the same expected target with a far
      lower variance; needs ``kde_config`` and ``real.log_density``).
    group_matching: None, or the number of bias values: FairDD's synchronized
      matching (Zhou et al. 2025), the synthetic mean of a class matched to the
      mean of every bias group in the class's real batch
      (:func:`jaxdd.matching.group_balanced_weights`). Uses the TRUE bias labels
      (``real.groups``); a reference method, not a reweighting; excludes
      ``kde_config``.
    mesh, class_axis, batch_axis: optional mesh; the sampled real batch
      (C, B, ...) is sharded with ``P(class_axis, batch_axis)`` and XLA
      partitions the step accordingly (results equal the single-device step up
      to float reassociation).
    real_chunk: embed the (gradient-free) real images this many at a time
      inside the step, which keeps activations in cache on CPU; ignored (all
      at once) for BatchNorm models, whose statistics mix the whole batch as
      in the reference, and when a mesh is given. ``"auto"``: the active
      :mod:`jaxdd.policy`'s ``real_chunk`` (32 on CPU, all at once on
      accelerators). ``None``: all at once.
    syn_chunk: the same for the synthetic images, whose forward and backward
      then run chunk by chunk (plain ``nn.Conv`` layers are routed through
      :func:`jaxdd.models.loop_safe_convs` for that). ``"auto"``: the policy's
      ``syn_chunk`` (10 on CPU, all at once on accelerators). Chunking never
      changes the loss beyond float rounding. Timings at the reference
      configuration: RESULTS.md, "One DM step" (benchmarks/dm_step.py).
    real_dtype: run the gradient-free real-image forward in this floating dtype
      (e.g. ``"bfloat16"``): the network's parameters and the real images are
      cast to it, the features back to float32. None (default): the synthetic
      images' dtype, i.e. the reference's computation. Off by default:
      on the development CPU bfloat16 is slower (RESULTS.md, "bf16 real path for DM").
      Under a policy with ``forward_conv="winograd"`` (the ``cpu`` policy) and
      without a mesh, the real forward's eligible 3x3 convolutions run as
      Winograd F(2x2, 3x3): the same values up to float rounding, 2.25x fewer
      multiplies (:mod:`jaxdd.policy`; RESULTS.md, "One DM step").
    jit: return jitted ``init``/``step`` (default) or the raw pure functions.

  Returns:
    A :class:`Distiller` ``(init, step)``. The step is traced under the policy
    that was active when ``dm`` was called (:func:`jaxdd.policy.current`).
  """
  if ipc < 1:
    raise ValueError(f"ipc must be >= 1, got {ipc}")
  if real_per_class < 1:
    raise ValueError(f"real_per_class must be >= 1, got {real_per_class}")
  _check_kde(kde_config)
  _check_sampling(init, real_sampling, kde_config)
  if group_matching is not None:
    if isinstance(group_matching, bool) or not isinstance(group_matching, int) \
        or group_matching < 1:
      raise ValueError(f"group_matching must be None or the number of bias values (an int >= 1), "
                       f"got {group_matching!r}")
    if kde_config is not None:
      raise ValueError("group_matching (FairDD) replaces the weighting: pass kde_config=None")
  real_dtype = _floating_dtype(real_dtype, "real_dtype")
  model = ConvNet(num_classes) if model is None else model
  pol = policy.current()
  real_chunk = _chunk(real_chunk, pol.real_chunk, "real_chunk")
  syn_chunk = _chunk(syn_chunk, pol.syn_chunk, "syn_chunk")
  # SGD's learning rate is applied at run time (hp["lr"]), so candidates that differ only in
  # lr_img (or the KDE variance / temperature) share one compiled program. sgd(1.0) keeps the
  # optimiser state of sgd(lr) and its updates are exactly -trace; times lr gives sgd(lr)'s.
  tx = optax.sgd(1.0, momentum=momentum) if syn_tx is None else syn_tx
  real_spec = P(class_axis, batch_axis)
  syn_spec = P(class_axis)
  hp = _runtime_knobs(lr if syn_tx is None else 1.0, kde_config)

  init_fn = _state_init(num_classes, ipc, init, tx, mesh, kde_config)
  knobs_of = lambda h: None if kde_config is None else _KDEKnobs(
      h["variance"], h["temperature"], kde_config.normalize, kde_config.scope)

  def loss_fn(syn_images, key, real: RealData, h):
    k_model, k_real, k_aug = jax.random.split(key, 3)
    rows, mask, weights = real_batch(k_real, real, real_per_class, knobs_of(h), real_sampling)
    class_scale = None
    if group_matching is not None:
      if real.groups is None:
        raise ValueError("group_matching needs the bias labels: pass groups= to real_data")
      weights, class_scale = matching.group_balanced_weights(real.groups[rows], mask,
                                                             group_matching)
    real_images = parallel.constrain(real.images[rows], mesh, real_spec)
    syn_batch = parallel.constrain(
        syn_images.reshape((num_classes, ipc) + syn_images.shape[1:]), mesh, syn_spec)
    shape = (1,) + syn_images.shape[1:]
    variables = model.init(k_model, jnp.zeros(shape, syn_images.dtype))
    variables = jax.lax.stop_gradient(variables)  # the network is frozen

    def embed_with(v, x):
      # BatchNorm models use the statistics of the batch (train mode), as the reference.
      if "batch_stats" in v:
        (feats, _), _ = model.apply(v, x, train=True, return_features=True,
                                    mutable=["batch_stats"])
      else:
        feats, _ = model.apply(v, x, return_features=True)
      return feats

    embed = functools.partial(embed_with, variables)
    embed_real = None
    if real_dtype is not None:
      cast = jax.tree.map(
          lambda a: a.astype(real_dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a,
          variables)
      embed_real = lambda x: embed_with(cast, x.astype(real_dtype)).astype(jnp.float32)
    if pol.forward_conv == "winograd" and mesh is None:  # no gradient flows through the real side
      embed_real = winograd.traced_inside(embed if embed_real is None else embed_real)

    per_sample = "batch_stats" not in variables and mesh is None
    with loop_safe_convs():
      loss = matching.dm_loss(k_aug, syn_batch, real_images, embed_fn=embed, augment=augment,
                              weights=weights, real_chunk=real_chunk if per_sample else None,
                              syn_chunk=syn_chunk if per_sample else None,
                              map_classes=mesh is None, real_embed_fn=embed_real,
                              class_scale=class_scale)
    return loss, weights

  def step_fn(state: DistillState, real: RealData, h):
    key = jax.random.fold_in(state.key, state.step)
    (loss, weights), grad = jax.value_and_grad(loss_fn, has_aux=True)(state.syn.images, key,
                                                                       real, h)
    updates, opt_state = tx.update(grad, state.opt_state, state.syn.images)
    if syn_tx is None:
      updates = jax.tree.map(lambda u: u * h["lr"].astype(u.dtype), updates)
    images = optax.apply_updates(state.syn.images, updates)
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grad),
               "max_weight": jnp.max(weights)}
    return DistillState(state.syn._replace(images=images), opt_state, state.step + 1,
                        state.key), metrics

  step_fn = policy.pinned(pol, step_fn)
  if not jit:
    def raw_step(state: DistillState, real: RealData):
      return step_fn(state, real, hp)
    return Distiller(init_fn, raw_step)
  # init runs once and checks sizes on the host, so only the step is compiled; the program
  # is shared by every dm() with the same static settings (runtime knobs aside).
  static = ("dm", num_classes, ipc, model, augment, real_per_class, momentum, syn_tx,
            None if kde_config is None else (kde_config.normalize, kde_config.scope),
            real_sampling, group_matching, mesh, class_axis, batch_axis, real_chunk, syn_chunk,
            None if real_dtype is None else str(real_dtype), pol)
  return Distiller(init_fn, _BoundStep(_shared_program(static, step_fn), hp))


# ---------------------------------------------------------------------------
# Gradient matching: DC and DSA
# ---------------------------------------------------------------------------

# (outer_loop, inner_loop) per IPC, from the DC/DSA reference code's get_loops.
GM_LOOPS: dict[int, tuple[int, int]] = {1: (1, 1), 10: (10, 50), 20: (20, 25), 30: (30, 20),
                                        40: (40, 15), 50: (50, 10)}
# Real images per class fed through a BatchNorm network before each matching
# round to refresh its running statistics (the reference's BNSizePC).
BN_REAL_PER_CLASS = 16


def gm_loops(ipc: int, outer_loop: int | None = None,
             inner_loop: int | None = None) -> tuple[int, int]:
  """``(outer_loop, inner_loop)``: the given values, else the reference's for ``ipc``.

  Example:
    >>> gm_loops(10), gm_loops(7, outer_loop=5, inner_loop=20)
    ((10, 50), (5, 20))
  """
  default = GM_LOOPS.get(ipc)
  if default is None and (outer_loop is None or inner_loop is None):
    raise ValueError(f"ipc={ipc} has no reference loop counts (defined for IPC "
                     f"{sorted(GM_LOOPS)}); pass outer_loop= and inner_loop=")
  outer = default[0] if outer_loop is None else outer_loop
  inner = default[1] if inner_loop is None else inner_loop
  for name, v in (("outer_loop", outer), ("inner_loop", inner)):
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
      raise ValueError(f"{name} must be an int >= 1, got {v!r}")
  return outer, inner


def gm(*, num_classes: int, ipc: int, model: nn.Module | None = None,
       strategy: str | None = None, outer_loop: int | None = None,
       inner_loop: int | None = None, real_per_class: int = 256, lr: float = 0.1,
       momentum: float = 0.5, syn_tx: optax.GradientTransformation | None = None,
       lr_net: float = 0.01, net_batch_size: int = 256,
       init: Literal["real", "weighted", "noise"] = "real",
       kde_config: KDEConfig | None = None,
       real_sampling: Literal["uniform", "weighted"] = "uniform", mesh: Mesh | None = None,
       class_axis: str | None = None, batch_axis: str | None = None,
       real_chunk: int | Literal["auto"] | None = "auto", jit: bool = True) -> Distiller:
  """Gradient matching (DC / DSA), optionally KDE-reweighted (Cui et al. 2024).

  One ``step`` is one outer iteration of the reference's ``main.py``, compiled
  as ONE program: a freshly initialised network, then ``outer_loop`` rounds
  (a ``lax.scan``) of

  1. sample ``real_per_class`` real images per class and their weights
     (uniform, or KDE as in :func:`dm`);
  2. one image-optimiser update on :func:`jaxdd.matching.gm_loss` summed over
     classes (siamese DSA with one draw per class when ``strategy`` is set);
  3. except after the last round: train the network ``inner_loop`` epochs on
     the current synthetic set with plain SGD(``lr_net``), batches of
     ``net_batch_size``, non-siamese DSA with ``strategy`` (none for DC) —
     with :func:`jaxdd.train.fit`, the trainer of the evaluation.

  Networks with batch statistics (``norm="batch"``) get the reference's
  treatment: before each round, ``BN_REAL_PER_CLASS`` real images per class
  update the running statistics, and the matching uses them (eval mode).

  Args:
    num_classes, ipc: classes and synthetic images per class.
    model: the network (default ``ConvNet(num_classes)``), freshly initialised
      at every step.
    strategy: DSA strategy string (e.g. ``"color_crop_cutout_flip_scale_rotate"``)
      or None (DC: no augmentation).
    outer_loop, inner_loop: rounds per step and network epochs per round
      (default: the reference's per IPC, :data:`GM_LOOPS`).
    real_per_class: real images per class and round (reference: 256).
    lr, momentum: SGD on the synthetic images (reference: 0.1, 0.5); the
      optimiser state persists across steps.
    syn_tx: optional optax transformation replacing SGD(lr, momentum).
    lr_net: the network's SGD learning rate in the inner loop (0.01).
    net_batch_size: the inner loop's batch size (256).
    init: 'real', 'weighted' or 'noise' (see :func:`dm`).
    kde_config: None for vanilla DC/DSA, else the KDE weighting.
    real_sampling: 'uniform' or 'weighted' (see :func:`dm`).
    mesh, class_axis, batch_axis: as in :func:`dm`.
    real_chunk: compute the real gradient this many images at a time
      (``"auto"``: the active :mod:`jaxdd.policy`'s ``real_chunk``, 32 on CPU
      and all at once on accelerators; None: all at once); the same value up
      to float rounding. Under a policy with ``train_conv="winograd"`` (the
      ``cpu`` policy) and without a mesh, the real gradient's eligible 3x3
      convolutions run as Winograd F(2x2, 3x3) (:mod:`jaxdd.policy`; RESULTS.md,
      "One gradient-matching outer iteration"); the synthetic side keeps the loop-safe kernels.
    jit: return a jitted ``step`` (default) or the raw pure function. The step
      is traced under the policy that was active when ``gm`` was called.

  Returns:
    A :class:`Distiller`. The step's metrics: ``loss`` (the class-summed
    matching loss, mean over rounds), ``loss_first``/``loss_last`` (first and
    last round), ``grad_norm`` (last round), ``max_weight``.
  """
  if isinstance(ipc, bool) or not isinstance(ipc, int) or ipc < 1:
    raise ValueError(f"ipc must be an int >= 1, got {ipc!r}")
  if real_per_class < 1:
    raise ValueError(f"real_per_class must be >= 1, got {real_per_class}")
  if not lr_net > 0:
    raise ValueError(f"lr_net must be > 0, got {lr_net}")
  if isinstance(net_batch_size, bool) or not isinstance(net_batch_size, int) or net_batch_size < 1:
    raise ValueError(f"net_batch_size must be a positive int, got {net_batch_size!r}")
  _check_kde(kde_config)
  _check_sampling(init, real_sampling, kde_config)
  outer, inner = gm_loops(ipc, outer_loop, inner_loop)
  model = ConvNet(num_classes) if model is None else model
  pol = policy.current()
  real_chunk = _chunk(real_chunk, pol.real_chunk, "real_chunk")
  aug = augment_lib.dsa(strategy) if strategy else None
  inner_protocol = Protocol("gm-inner", epochs=inner - 1, lr=lr_net, momentum=0.0,
                            weight_decay=0.0, batch_size=net_batch_size, decay_at=None,
                            augment=strategy or None)
  task = train_lib.standard_task(model)
  tx = optax.sgd(lr, momentum=momentum) if syn_tx is None else syn_tx
  init_fn = _state_init(num_classes, ipc, init, tx, mesh, kde_config)
  real_spec = P(class_axis, batch_axis)
  syn_spec = P(class_axis)
  syn_labels = jnp.repeat(jnp.arange(num_classes, dtype=jnp.int32), ipc)

  def match(syn_images, params, net_state, key, real: RealData):
    k_real, k_aug, k_bn = jax.random.split(key, 3)
    if jax.tree.leaves(net_state):  # BatchNorm: refresh running stats, then match in eval mode
      bn_rows, _ = sample_per_class(k_bn, real.index, BN_REAL_PER_CLASS)
      _, net_state = train_lib.apply_train(model, params, net_state,
                                           real.images[bn_rows.reshape(-1)], k_bn)
    rows, mask, weights = real_batch(k_real, real, real_per_class, kde_config, real_sampling)
    real_images = parallel.constrain(real.images[rows], mesh, real_spec)

    # Chunking the real gradient needs per-sample networks (no batch statistics).
    per_sample = not jax.tree.leaves(net_state) and mesh is None

    def loss_fn(images):
      syn_batch = parallel.constrain(
          images.reshape((num_classes, ipc) + images.shape[1:]), mesh, syn_spec)
      logits_fn = lambda p, x: model.apply({"params": p, **net_state}, x, train=False)
      # The real images' weight gradient (first order) as Winograd where the
      # policy says so (train_conv); the synthetic side, differentiated twice,
      # keeps the loop-safe kernels (RESULTS.md, "One gradient-matching outer iteration").
      real_logits_fn = (winograd.traced_inside(logits_fn)
                        if pol.train_conv == "winograd" and mesh is None else None)
      return matching.gm_loss(k_aug, syn_batch, real_images, params=params, logits_fn=logits_fn,
                              augment=aug, weights=weights,
                              real_chunk=real_chunk if per_sample else None,
                              map_classes=mesh is None, real_logits_fn=real_logits_fn)

    loss, grad = jax.value_and_grad(loss_fn)(syn_images)
    return loss, grad, weights, net_state

  def step_fn(state: DistillState, real: RealData):
    key = jax.random.fold_in(state.key, state.step)
    k_net, k_rounds = jax.random.split(key)
    shape = (1,) + state.syn.images.shape[1:]
    params, net_state = train_lib.split_variables(
        model.init(k_net, jnp.zeros(shape, state.syn.images.dtype), train=False))

    def round_fn(carry, r):
      images, opt_state, params, net_state = carry
      k_match, k_train = jax.random.split(jax.random.fold_in(k_rounds, r))
      loss, grad, weights, net_state = match(images, params, net_state, k_match, real)
      updates, opt_state = tx.update(grad, opt_state, images)
      images = optax.apply_updates(images, updates)

      def train(args):
        p, s = args
        p, s, _ = train_lib.fit(k_train, p, s, jax.lax.stop_gradient(images), syn_labels,
                                task=task, protocol=inner_protocol)
        return p, s

      # The reference does not train the network after the last image update.
      params, net_state = jax.lax.cond(r < outer - 1, train, lambda a: a, (params, net_state))
      out = (loss, optax.tree.norm(grad), jnp.max(weights))
      return (images, opt_state, params, net_state), out

    with loop_safe_convs():
      (images, opt_state, _, _), (losses, grad_norms, max_w) = jax.lax.scan(
          round_fn, (state.syn.images, state.opt_state, params, net_state), jnp.arange(outer))
    metrics = {"loss": losses.mean(), "loss_first": losses[0], "loss_last": losses[-1],
               "grad_norm": grad_norms[-1], "max_weight": jnp.max(max_w)}
    return DistillState(state.syn._replace(images=images), opt_state, state.step + 1,
                        state.key), metrics

  step_fn = policy.pinned(pol, step_fn)
  if not jit:
    return Distiller(init_fn, step_fn)
  # Shared by every gm() with the same settings (a resumed run, tune's candidates that
  # differ only in what the step does not see), as dm()'s programs are.
  static = ("gm", num_classes, ipc, model, strategy, outer, inner, real_per_class, lr, momentum,
            syn_tx, lr_net, net_batch_size, kde_config, real_sampling, mesh, class_axis,
            batch_axis, real_chunk, pol)
  return Distiller(init_fn, _shared_program(static, step_fn))


def dsa(*, strategy: str = "color_crop_cutout_flip_scale_rotate",
        init: Literal["real", "weighted", "noise"] = "real",
        **kwargs) -> Distiller:
  """DSA (Zhao & Bilen 2021): gradient matching with siamese augmentation.

  :func:`gm` with a DSA ``strategy`` (default the reference's
  ``color_crop_cutout_flip_scale_rotate``) and real initialisation (the
  reference's DSA command). All other arguments are :func:`gm`'s.

  Example:
    >>> import jax, numpy as np
    >>> from jaxdd import distill, models
    >>> x = np.random.default_rng(0).normal(size=(40, 8, 8, 3)).astype(np.float32)
    >>> real = distill.real_data(x, np.repeat(np.arange(2), 20), num_classes=2)
    >>> d = distill.dsa(num_classes=2, ipc=2, model=models.ConvNet(2, depth=1, width=8),
    ...                 outer_loop=2, inner_loop=1, real_per_class=8, strategy="crop_flip")
    >>> state, metrics = d.step(d.init(jax.random.key(0), real), real)  # doctest: +SKIP
    >>> state.syn.images.shape, int(state.step)  # doctest: +SKIP
    ((4, 8, 8, 3), 1)
  """
  return gm(strategy=strategy, init=init, **kwargs)


def dc(*, init: Literal["real", "weighted", "noise"] = "noise", **kwargs) -> Distiller:
  """DC (Zhao et al. 2021): gradient matching without augmentation.

  :func:`gm` with ``strategy=None`` and, as the reference's default, noise
  initialisation. All other arguments are :func:`gm`'s.
  """
  if kwargs.get("strategy"):
    raise ValueError("dc() uses no augmentation; for a DSA strategy call dsa(strategy=...)")
  kwargs.pop("strategy", None)
  return gm(strategy=None, init=init, **kwargs)
