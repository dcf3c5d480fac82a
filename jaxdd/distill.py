"""Distillation methods as optax-style pairs of pure functions.

``dm(...)`` returns a :class:`Distiller` ``(init, step)``:

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

from typing import Any, Callable, Literal, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, PartitionSpec as P

from jaxdd import kde, matching, parallel
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


class KDEConfig(NamedTuple):
  """How real samples are weighted (SPEC §3).

  ``scope='batch'`` (the paper's default) estimates the density inside each
  sampled real batch of a class, O(B^2 d) per step; ``scope='class'`` uses a
  density precomputed once over the whole class (see :func:`class_log_density`).
  """
  # Defaults: the setting that gave the largest DM -> DM+KDE gap on CMNIST
  # (ablation in RESULTS.md).
  variance: float = 0.01
  temperature: float = 0.25
  normalize: Literal["softmax", "power"] = "power"
  scope: Literal["batch", "class"] = "batch"


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
              mesh: Mesh | None = None) -> RealData:
  """Puts a labelled image set (and optional surrogate outputs) on device.

  Args:
    images: (N, H, W, ch) float32, normalised.
    labels: (N,) integer labels in [0, num_classes).
    num_classes: number of classes.
    embeddings: optional (N, d) surrogate embeddings (KDE scope 'batch').
    log_density: optional (N,) per-class log densities (KDE scope 'class').
    mesh: optional mesh; the arrays are replicated over it.

  Returns:
    A :class:`RealData`.
  """
  images = np.asarray(images, np.float32)
  if images.ndim != 4:
    raise ValueError(f"images must be (N, H, W, C), got shape {images.shape}")
  if not np.isfinite(images).all():
    raise ValueError("images contain NaN or Inf; check the dataset and its normalisation")
  labels = np.asarray(labels)
  if len(labels) != len(images):
    raise ValueError(f"{len(images)} images but {len(labels)} labels")
  for name, arr in (("embeddings", embeddings), ("log_density", log_density)):
    if arr is not None:
      arr = np.asarray(arr)
      if len(arr) != len(images):
        raise ValueError(f"{name} has {len(arr)} rows for {len(images)} images")
      if not np.isfinite(arr).all():
        raise ValueError(f"{name} contain NaN or Inf; recompute them (check the surrogate)")
  data = RealData(images, class_index(labels, num_classes),
                  None if embeddings is None else np.asarray(embeddings, np.float32),
                  None if log_density is None else np.asarray(log_density, np.float32))
  return parallel.put(data, mesh)


def class_log_density(embeddings, labels, *, num_classes: int, variance: float,
                      block_size: int = 1024) -> np.ndarray:
  """Log density of every sample within its own class (KDE scope 'class').

  Blocked, so memory stays O(block x class size).
  """
  embeddings = jnp.asarray(embeddings, jnp.float32)
  labels = np.asarray(labels)
  out = np.zeros(len(labels), np.float32)
  for c in range(num_classes):
    rows = np.flatnonzero(labels == c)
    z = embeddings[rows]
    out[rows] = np.asarray(kde.log_density(z, z, variance=variance, block_size=block_size))
  return out


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


def _check_kde(config: KDEConfig | None) -> None:
  if config is None:
    return
  if not config.variance > 0:
    raise ValueError(f"kernel variance must be > 0, got {config.variance}")
  if not config.temperature > 0:
    raise ValueError(f"temperature must be > 0, got {config.temperature}")
  if config.normalize not in ("softmax", "power"):
    raise ValueError(f"normalize must be 'softmax' or 'power', got {config.normalize!r}")
  if config.scope not in ("batch", "class"):
    raise ValueError(f"scope must be 'batch' or 'class', got {config.scope!r}")


def _chunk(value, auto: int | None, name: str) -> int | None:
  if value == "auto":
    return auto
  if value is None:
    return None
  if isinstance(value, bool) or not isinstance(value, int) or value < 1:
    raise ValueError(f"{name} must be a positive int, 'auto' or None (all at once), got {value!r}")
  return value


def dm(*, num_classes: int, ipc: int, model: nn.Module | None = None,
       augment: Callable[[jax.Array, jax.Array], jax.Array] | None = None,
       real_per_class: int = 256, lr: float = 1.0, momentum: float = 0.5,
       syn_tx: optax.GradientTransformation | None = None,
       init: Literal["real", "noise"] = "real", kde_config: KDEConfig | None = None,
       mesh: Mesh | None = None, class_axis: str | None = None, batch_axis: str | None = None,
       real_chunk: int | Literal["auto"] | None = "auto",
       syn_chunk: int | Literal["auto"] | None = "auto", jit: bool = True) -> Distiller:
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
    init: 'real' (copy ``ipc`` random real images of each class) or 'noise'
      (standard normal, i.e. noise in the normalised space).
    kde_config: None for vanilla DM, else the KDE weighting (:class:`KDEConfig`).
    mesh, class_axis, batch_axis: optional mesh; the sampled real batch
      (C, B, ...) is sharded with ``P(class_axis, batch_axis)`` and XLA
      partitions the step accordingly (results equal the single-device step up
      to float reassociation).
    real_chunk: embed the (gradient-free) real images this many at a time
      inside the step, which keeps activations in cache on CPU; ignored (all
      at once) for BatchNorm models, whose statistics mix the whole batch as
      in the reference, and when a mesh is given. ``"auto"``: 32 on CPU, all
      at once elsewhere. ``None``: all at once.
    syn_chunk: the same for the synthetic images, whose forward and backward
      then run chunk by chunk (plain ``nn.Conv`` layers are routed through
      :func:`jaxdd.models.loop_safe_convs` for that). ``"auto"``: 10 on CPU,
      all at once elsewhere. Chunking never changes the loss beyond float
      rounding. Measured on the 2-core CPU at the reference configuration
      (benchmarks/dm_step.py, RESULTS.md §4).
    jit: return jitted ``init``/``step`` (default) or the raw pure functions.

  Returns:
    A :class:`Distiller` ``(init, step)``.
  """
  if ipc < 1:
    raise ValueError(f"ipc must be >= 1, got {ipc}")
  if real_per_class < 1:
    raise ValueError(f"real_per_class must be >= 1, got {real_per_class}")
  if init not in ("real", "noise"):
    raise ValueError(f"init must be 'real' or 'noise', got {init!r}")
  _check_kde(kde_config)
  model = ConvNet(num_classes) if model is None else model
  cpu = jax.default_backend() == "cpu"
  real_chunk = _chunk(real_chunk, 32 if cpu else None, "real_chunk")
  syn_chunk = _chunk(syn_chunk, 10 if cpu else None, "syn_chunk")
  tx = optax.sgd(lr, momentum=momentum) if syn_tx is None else syn_tx
  real_spec = P(class_axis, batch_axis)
  syn_spec = P(class_axis)

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

  def loss_fn(syn_images, key, real: RealData):
    k_model, k_real, k_aug = jax.random.split(key, 3)
    rows, mask = sample_per_class(k_real, real.index, real_per_class)
    weights = batch_weights(real, rows, mask, kde_config)
    real_batch = parallel.constrain(real.images[rows], mesh, real_spec)
    syn_batch = parallel.constrain(
        syn_images.reshape((num_classes, ipc) + syn_images.shape[1:]), mesh, syn_spec)
    shape = (1,) + syn_images.shape[1:]
    variables = model.init(k_model, jnp.zeros(shape, syn_images.dtype))
    variables = jax.lax.stop_gradient(variables)  # the network is frozen

    def embed(x):
      # BatchNorm models use the statistics of the batch (train mode), as the reference.
      if "batch_stats" in variables:
        (feats, _), _ = model.apply(variables, x, train=True, return_features=True,
                                    mutable=["batch_stats"])
      else:
        feats, _ = model.apply(variables, x, return_features=True)
      return feats

    per_sample = "batch_stats" not in variables and mesh is None
    with loop_safe_convs():
      loss = matching.dm_loss(k_aug, syn_batch, real_batch, embed_fn=embed, augment=augment,
                              weights=weights, real_chunk=real_chunk if per_sample else None,
                              syn_chunk=syn_chunk if per_sample else None,
                              map_classes=mesh is None)
    return loss, weights

  def step_fn(state: DistillState, real: RealData):
    key = jax.random.fold_in(state.key, state.step)
    (loss, weights), grad = jax.value_and_grad(loss_fn, has_aux=True)(state.syn.images, key, real)
    updates, opt_state = tx.update(grad, state.opt_state, state.syn.images)
    images = optax.apply_updates(state.syn.images, updates)
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grad),
               "max_weight": jnp.max(weights)}
    return DistillState(state.syn._replace(images=images), opt_state, state.step + 1,
                        state.key), metrics

  if not jit:
    return Distiller(init_fn, step_fn)
  # init runs once and checks sizes on the host, so only the step is compiled.
  return Distiller(init_fn, jax.jit(step_fn, donate_argnums=0))
