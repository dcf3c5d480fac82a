"""Supervised-contrastive (SupCon) surrogate whose embeddings feed the KDE weights.

The bias-aware reweighting of Cui et al. (ICML 2024) estimates a kernel density
over the embeddings of a SupCon model trained on the *biased* training set
(docs/protocols.md). Bias-aligned samples of a
class share the easy bias feature (digit colour, background colour), so they
form a dense cluster; the few bias-conflicting samples sit apart and get a low
density, hence a large normalised inverse-density weight.

Data contract:
  * ``images``: (N, H, W, C) float32, NHWC, finite. The surrogate uses them as
    given (no internal normalisation); :func:`embed` must receive the same
    preprocessing as :func:`train_surrogate` did. The dataset builders give
    [0, 1] images; we train and embed on those.
  * ``labels``: (N,) integers in ``[0, num_classes)``.
  * Embeddings: (N, proj_dim) float32, L2-normalised rows (projection space),
    or L2-normalised pre-head encoder features (``space='encoder'``).
  * "params" everywhere means the full flax variables dict returned by
    ``Surrogate.init`` (``{'params': ...}``, plus ``'batch_stats'`` when
    ``norm='batch'``).

The pieces:
  * :func:`supcon_loss`: the SupCon "L_out" loss (Khosla et al., 2020).
  * :class:`Surrogate`: ConvNet encoder (``jaxdd.models.ConvNet`` features)
    + 2-layer projection head Linear(d, d)-ReLU-Linear(d, proj_dim), with an
    L2-normalised output, as in ``HobbitLong/SupContrast`` ``SupConResNet``.
  * :func:`~jaxdd.augment.random_resized_crop` and
    :func:`~jaxdd.augment.two_views`: the augmentation (they live in
    :mod:`jaxdd.augment` and are re-exported here).
  * :func:`train_surrogate`: SGD + momentum, cosine schedule; one compiled
    program per epoch (``lax.scan`` over its steps) on accelerators, one
    compiled step per batch driven from the host on CPU, where XLA runs
    backward convolutions inside a scan far slower (jax-ml/jax#12868).
  * :func:`embed`: blocked inference.
  * :func:`load_or_train`: a verified on-disk cache of params + embeddings.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import json
import math
import os
import time
import warnings
from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from jaxdd import models, policy, presets
from jaxdd._src import checks
from jaxdd._src import io as _io
from jaxdd._src.checks import is_traced
from jaxdd._src.io import sha256_file
from jaxdd.augment import random_resized_crop, two_views  # re-exported: part of this API
from jaxdd.train import torch_sgd

__all__ = [
    "supcon_loss",
    "Surrogate",
    "SurrogateConfig",
    "SurrogateArtifact",
    "random_resized_crop",
    "two_views",
    "make_optimizer",
    "train_surrogate",
    "embed",
    "cache_root",
    "load_or_train",
]

# Bump when the cache layout or the training semantics change, so that stale
# entries are never reused.
CACHE_VERSION = 2  # 2: ConvNet's instance norm is models.InstanceNorm


# ---------------------------------------------------------------------------
# Loss
# ---------------------------------------------------------------------------


def supcon_loss(embeddings: jax.Array, labels: jax.Array, *, temperature: float = 0.07) -> jax.Array:
  """Supervised-contrastive loss, the "L_out" form of Khosla et al. (2020).

  For anchors ``i`` over the whole batch of M views (two views of B images,
  stacked as ``[view1; view2]`` with ``labels`` repeated)::

    L_i = -1/|P(i)| * sum_{p in P(i)} log( exp(z_i.z_p / t) / sum_{a != i} exp(z_i.z_a / t) )

  where ``P(i)`` are the other views with the same label (docs/protocols.md
  §2.3 Step A, ``HobbitLong/SupContrast`` ``losses.py``). The loss is the mean
  of ``L_i`` over the anchors that have at least one positive.

  Anchors without positives (a label that occurs once in the batch) have an
  undefined ``L_i`` (0/0); they are *left out* of the mean rather than counted
  as 0, so a rare class does not dilute the loss. They still act as negatives
  for every other anchor. With two views per image every anchor has at least
  its own other view as a positive, so this only matters for single-view input.
  If no anchor has a positive the loss is 0 (under jit) or a ``ValueError``
  (eager call), since there is nothing to learn from.

  ``HobbitLong/SupContrast`` multiplies the loss by ``t / 0.07``; that factor
  is 1 at the default temperature and is not applied here.

  Args:
    embeddings: (M, d) float array of L2-normalised embeddings (not
      re-normalised here, so that the hand-checkable inner products are the
      ones the caller passes).
    labels: (M,) integer labels.
    temperature: softmax temperature ``t`` > 0.

  Returns:
    Scalar float32 loss.

  Example:
    >>> import jax.numpy as jnp
    >>> z = jnp.array([[1., 0.], [0., 1.], [1., 0.], [0., 1.]])
    >>> round(float(supcon_loss(z, jnp.array([0, 1, 0, 1]), temperature=1.0)), 4)  # log(1 + 2/e)
    0.5514
  """
  if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
    raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
  if embeddings.ndim != 2:
    raise ValueError(f"embeddings must be (M, d), got shape {embeddings.shape}")
  if labels.shape != (embeddings.shape[0],):
    raise ValueError(f"labels must have shape ({embeddings.shape[0]},) to match embeddings, "
                     f"got {labels.shape}")
  if embeddings.shape[0] < 2:
    raise ValueError("supcon_loss needs at least 2 embeddings (an anchor and a positive)")
  if not is_traced(embeddings) and not bool(jnp.all(jnp.isfinite(embeddings))):
    raise ValueError("embeddings contain NaN or Inf; check the inputs and the learning rate")
  if not is_traced(labels):
    _, label_counts = np.unique(np.asarray(labels), return_counts=True)
    if label_counts.max() < 2:
      raise ValueError("no label occurs twice in the batch, so no anchor has a positive; "
                       "pass two views per image or a batch with >= 2 samples per class")

  z = embeddings.astype(jnp.float32)
  m = z.shape[0]
  logits = (z @ z.T) / temperature
  self_mask = jnp.eye(m, dtype=bool)
  # log-softmax over a != i: exclude the anchor itself from the denominator.
  logits = jnp.where(self_mask, -jnp.inf, logits)
  # log-sum-exp as  max + log1p(sum of the *other* terms after the shift):
  # the plain form max + log(sum) loses the small tail (e.g. 2 e^{-1/t} ~ 1e-6
  # at t = 0.07) next to 1/t ~ 14 in float32, so a nearly converged loss
  # would come out with ~50 % relative error.
  # The shift is the logit *at* the argmax (take_along_axis), not jnp.max: then
  # L_top + log(1 + sum_{a != top} e^{L_a - L_top}) is exactly log sum_a e^{L_a}
  # as a function of every logit, so its gradient is the softmax even at ties
  # (jnp.max would spread the tie's gradient over the tied entries while the
  # constant "1" term carries none).
  top = jnp.argmax(logits, axis=1)[:, None]
  row_max = jnp.take_along_axis(logits, top, axis=1)
  shifted = logits - row_max
  is_top = jnp.arange(m)[None, :] == top
  rest = jnp.where(is_top | self_mask, 0.0, jnp.exp(shifted)).sum(axis=1, keepdims=True)
  log_prob = shifted - jnp.log1p(rest)
  pos = (labels[:, None] == labels[None, :]) & ~self_mask
  num_pos = pos.sum(axis=1)
  # where() before the sum keeps -inf * 0 (the diagonal) out of the arithmetic.
  sum_log_prob_pos = jnp.where(pos, log_prob, 0.0).sum(axis=1)
  has_pos = num_pos > 0
  per_anchor = -sum_log_prob_pos / jnp.maximum(num_pos, 1)
  per_anchor = jnp.where(has_pos, per_anchor, 0.0)
  return per_anchor.sum() / jnp.maximum(has_pos.sum(), 1)


# ---------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------


class Surrogate(nn.Module):
  """ConvNet encoder + 2-layer projection head, L2-normalised output.

  The encoder is :class:`jaxdd.models.ConvNet` (``depth`` x [conv3x3 - norm -
  relu - pool]); its ``return_features=True`` feature (dimension ``d``) feeds
  Linear(d, d) - ReLU - Linear(d, proj_dim), as in ``SupConResNet`` of
  ``HobbitLong/SupContrast``. The ConvNet's own 1-way classifier is created
  but never used (its output is discarded; it only adds ``d + 1`` parameters).

  Attributes:
    encoder_width: channels of every conv layer.
    depth: number of conv blocks.
    norm: ``instance`` (default), ``batch``, ``layer``, ``group`` or ``none``.
    pooling: ``avg`` (default), ``max`` or ``none``.
    proj_dim: output dimension of the projection head.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> net = Surrogate(encoder_width=8, depth=2, proj_dim=16)
    >>> variables = net.init(jax.random.key(0), jnp.zeros((1, 12, 12, 3)))
    >>> feats, z = net.apply(variables, jnp.ones((2, 12, 12, 3)), return_features=True)
    >>> feats.shape, z.shape
    ((2, 72), (2, 16))
  """
  encoder_width: int = 128
  depth: int = 3
  norm: str = "instance"
  pooling: str = "avg"
  proj_dim: int = 128

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False, return_features: bool = False):
    feats, _ = models.ConvNet(num_classes=1, depth=self.depth, width=self.encoder_width,
                              norm=self.norm, pooling=self.pooling, name="encoder")(
                                  x, train=train, return_features=True)
    d = feats.shape[-1]
    h = models.TorchDense(d, name="head_hidden")(feats)
    h = nn.relu(h)
    z = models.TorchDense(self.proj_dim, name="head_out")(h)
    z = _l2_normalize(z)
    return (feats, z) if return_features else z


def _l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  # eps keeps an all-zero row finite (it stays 0) instead of producing NaN.
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


# ---------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SurrogateConfig:
  """Everything that defines a surrogate run (hashable, so it can key caches).

  Defaults are the ``paper`` preset: docs/protocols.md
  (ConvNet-3 width 128, instance norm, projection 128, t = 0.07, 20 epochs,
  batch 256, SGD lr 0.05 momentum 0.9 weight decay 1e-4, cosine schedule,
  random-resized-crop scale 0.5-1, no flip for digits).

  Use :meth:`preset` for the ``cpu`` and ``smoke`` scales and
  ``dataclasses.replace(cfg, field=value)`` to override single fields.

  Attributes:
    width, depth, norm, pooling, proj_dim: the :class:`Surrogate` architecture.
    temperature: SupCon temperature.
    epochs: passes over the training set.
    steps: a budget of SGD steps instead of epochs (None: use ``epochs``).
      :meth:`for_size` turns it into ``max(1, round(steps / steps_per_epoch))``
      epochs for a training set, so one preset fits datasets of any size.
    batch_size: images per step (each gives two views, so 2x embeddings).
    learning_rate, momentum, weight_decay: SGD with decoupled-as-in-PyTorch
      L2 weight decay (added to the gradient before momentum).
    schedule: ``cosine`` (decay to 0 over all steps) or ``constant``.
    crop_scale: (min, max) area fraction of the random-resized crop.
    crop_ratio: (min, max) aspect ratio w/h of the crop (log-uniform).
    flip: random horizontal flips (off by default: digits are not symmetric).
  """
  width: int = 128
  depth: int = 3
  norm: str = "instance"
  pooling: str = "avg"
  proj_dim: int = 128
  temperature: float = 0.07
  epochs: int = 20
  batch_size: int = 256
  learning_rate: float = 0.05
  momentum: float = 0.9
  weight_decay: float = 1e-4
  schedule: str = "cosine"
  crop_scale: tuple[float, float] = (0.5, 1.0)
  crop_ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
  flip: bool = False
  steps: int | None = None

  def __post_init__(self):
    for name in ("width", "depth", "proj_dim", "epochs", "batch_size"):
      v = getattr(self, name)
      if not (isinstance(v, int) and v >= 1):
        raise ValueError(f"SurrogateConfig.{name} must be an integer >= 1, got {v!r}")
    if self.steps is not None and not (isinstance(self.steps, int) and self.steps >= 1):
      raise ValueError(f"SurrogateConfig.steps must be an integer >= 1 or None, got {self.steps!r}")
    if not (math.isfinite(self.temperature) and self.temperature > 0):
      raise ValueError(f"SurrogateConfig.temperature must be > 0, got {self.temperature!r}")
    if not self.learning_rate > 0:
      raise ValueError(f"SurrogateConfig.learning_rate must be > 0, got {self.learning_rate!r}")
    if self.schedule not in ("cosine", "constant"):
      raise ValueError(f"SurrogateConfig.schedule must be 'cosine' or 'constant', got {self.schedule!r}")
    lo, hi = self.crop_scale
    if not 0 < lo <= hi <= 1:
      raise ValueError(f"SurrogateConfig.crop_scale must satisfy 0 < min <= max <= 1, got {self.crop_scale}")
    rlo, rhi = self.crop_ratio
    if not 0 < rlo <= rhi:
      raise ValueError(f"SurrogateConfig.crop_ratio must satisfy 0 < min <= max, got {self.crop_ratio}")
    # Tuples (not lists) keep the dataclass hashable.
    object.__setattr__(self, "crop_scale", (float(lo), float(hi)))
    object.__setattr__(self, "crop_ratio", (float(rlo), float(rhi)))

  @classmethod
  def preset(cls, name: str, **overrides: Any) -> "SurrogateConfig":
    """A named scale from :data:`jaxdd.presets.SURROGATE`.

    * ``paper``: the published-scale settings above; for an accelerator.
    * ``cpu``: ConvNet-3 width 32, batch 256, a budget of 210 SGD steps:
      15 epochs of the embedded CMNIST (3,600 images of 28x28x3, 14 steps an
      epoch), 1 epoch of Fashion-MNIST; minutes on a 2-core CPU.
    * ``smoke``: width 8, depth 2, projection 32, 2 epochs, batch 64; seconds.

    Args:
      name: preset name.
      **overrides: fields to change after applying the preset; an explicit
        ``epochs`` replaces the preset's step budget.

    Returns:
      A ``SurrogateConfig``.

    Example:
      >>> SurrogateConfig.preset('cpu', epochs=5).width
      32
    """
    if name not in presets.SURROGATE:
      raise ValueError(f"unknown surrogate preset {name!r}; use one of {sorted(presets.SURROGATE)}")
    fields = dict(presets.SURROGATE[name])
    if "epochs" in overrides and "steps" not in overrides:
      fields.pop("steps", None)
    return cls(**{**fields, **overrides})

  def for_size(self, num_examples: int) -> "SurrogateConfig":
    """This config for a training set of ``num_examples`` images: a step budget
    becomes epochs (at least one); a config without one is returned unchanged.

    Example:
      >>> cfg = SurrogateConfig.preset('cpu')
      >>> cfg.for_size(3600).epochs, cfg.for_size(54000).epochs, cfg.for_size(54000).steps
      (15, 1, None)
    """
    if self.steps is None:
      return self
    per_epoch = max(1, int(num_examples) // self.batch_size)
    return dataclasses.replace(self, epochs=max(1, round(self.steps / per_epoch)), steps=None)

  def model(self) -> Surrogate:
    """The :class:`Surrogate` module this config describes."""
    return Surrogate(encoder_width=self.width, depth=self.depth, norm=self.norm,
                     pooling=self.pooling, proj_dim=self.proj_dim)

  def to_dict(self) -> dict[str, Any]:
    """JSON-ready dict of every field (tuples become lists; ``steps`` only when set)."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()
            if not (k == "steps" and v is None)}


# ---------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------


class TrainState(NamedTuple):
  """Carry of the compiled epoch: variables, optimiser state, global step."""
  params: Any
  model_state: Any  # non-trainable collections (``batch_stats``) or {}
  opt_state: Any
  step: jax.Array


def make_optimizer(config: SurrogateConfig, steps_per_epoch: int) -> optax.GradientTransformation:
  """SGD with momentum, L2 weight decay and the configured learning-rate schedule.

  Weight decay is added to the gradient *before* momentum, as
  ``torch.optim.SGD(weight_decay=...)`` (used by ``HobbitLong/SupContrast``)
  does; it applies to every parameter, biases and norm scales included. The
  update is the trainer's :func:`jaxdd.train.torch_sgd`.

  Args:
    config: the surrogate config (learning_rate, momentum, weight_decay,
      schedule, epochs).
    steps_per_epoch: optimiser steps per epoch (sets the cosine horizon).

  Returns:
    An ``optax.GradientTransformation``.

  Example:
    >>> tx = make_optimizer(SurrogateConfig.preset('smoke'), steps_per_epoch=10)
  """
  total = max(config.epochs * steps_per_epoch, 1)
  if config.schedule == "cosine":
    lr = optax.cosine_decay_schedule(config.learning_rate, decay_steps=total)
  else:
    lr = config.learning_rate
  return torch_sgd(lr, momentum=config.momentum, weight_decay=config.weight_decay)


def _validate_data(images: Any, labels: Any, who: str) -> tuple[np.ndarray, np.ndarray]:
  images = np.asarray(images)
  labels = np.asarray(labels)
  checks.check_images(images, who, float_fix="convert with images.astype(np.float32) / 255",
                      finite_fix="clean the dataset before training the surrogate")
  if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
    raise ValueError(f"labels must have shape ({images.shape[0]},) to match images, got {labels.shape}")
  if not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
  if labels.size and labels.min() < 0:
    raise ValueError("labels must be >= 0")
  return images.astype(np.float32, copy=False), labels.astype(np.int32, copy=False)


# Number of times each cached program was traced, keyed by (kind, config,
# num_examples); a test checks that a whole training run traces each once.
_TRACES: dict[tuple[str, SurrogateConfig, int], int] = {}

LOOPS = ("auto", "scan", "step")


class _TrainFns(NamedTuple):
  tx: optax.GradientTransformation
  epoch: Callable  # (state, key, epoch, images, labels) -> (state, losses[steps])
  batches: Callable  # (key, epoch) -> (k_aug_epoch, batches[steps, batch_size])
  step: Callable  # (state, k_aug_epoch, i, idx, images, labels) -> (state, loss)


def _make_train_fns(config: SurrogateConfig, num_examples: int) -> _TrainFns:
  """The jitted training programs for one (config, dataset size) under the active policy.

  Every epoch draws a permutation from ``fold_in(key_shuffle, epoch)`` and cuts
  it into ``num_examples // batch_size`` full batches; the last
  ``num_examples % batch_size`` samples of the permutation are dropped (a fresh
  permutation every epoch means every sample is still seen in expectation, and
  a fixed batch shape means one compilation and no padded rows inside the
  contrastive denominator).

  Two drivers share the same step body, hence the same arithmetic:
  ``epoch`` is a whole epoch as one program (``lax.scan`` over its steps);
  ``batches`` + ``step`` run the steps from the host, one program call each.

  Cached per (config, num_examples, :func:`jaxdd.policy.current`), so repeated
  runs reuse the compilation; the programs are traced under that policy.
  """
  return _train_fns(config, num_examples, policy.current())


@functools.lru_cache(maxsize=8)
def _train_fns(config: SurrogateConfig, num_examples: int, pol: policy.Policy) -> _TrainFns:
  model = config.model()
  batch_size = config.batch_size
  steps = num_examples // batch_size
  tx = make_optimizer(config, steps)

  def count_trace(kind: str) -> None:
    # Python side effect: runs only while tracing.
    k = (kind, config, num_examples)
    _TRACES[k] = _TRACES.get(k, 0) + 1

  def loss_fn(params, model_state, views, view_labels):
    variables = {"params": params, **model_state}
    if model_state:  # batch norm: update running statistics (static structure).
      z, new_state = model.apply(variables, views, train=True, mutable=list(model_state))
    else:
      z, new_state = model.apply(variables, views, train=True), model_state
    return supcon_loss(z, view_labels, temperature=config.temperature), new_state

  def batches_fn(key: jax.Array, epoch: jax.Array):
    k_shuffle, k_aug = jax.random.split(key)
    perm = jax.random.permutation(jax.random.fold_in(k_shuffle, epoch), num_examples)
    return jax.random.fold_in(k_aug, epoch), perm[: steps * batch_size].reshape(steps, batch_size)

  def step_fn(state: TrainState, k_aug: jax.Array, i: jax.Array, idx: jax.Array,
              images: jax.Array, labels: jax.Array):
    x = images[idx]
    y = labels[idx]
    views = two_views(jax.random.fold_in(k_aug, i), x, scale=config.crop_scale,
                      ratio=config.crop_ratio, flip=config.flip)
    view_labels = jnp.concatenate([y, y])
    (loss, new_model_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params, state.model_state, views, view_labels)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    return TrainState(params, new_model_state, opt_state, state.step + 1), loss

  def epoch_fn(state: TrainState, key: jax.Array, epoch: jax.Array, images: jax.Array,
               labels: jax.Array):
    count_trace("epoch")
    k_aug, batches = batches_fn(key, epoch)

    def body(state, xs):
      i, idx = xs
      return step_fn(state, k_aug, i, idx, images, labels)

    return jax.lax.scan(body, state, (jnp.arange(steps), batches))

  def host_step(state, k_aug, i, idx, images, labels):
    count_trace("step")
    return step_fn(state, k_aug, i, idx, images, labels)

  return _TrainFns(tx, jax.jit(policy.pinned(pol, epoch_fn)), jax.jit(batches_fn),
                   jax.jit(policy.pinned(pol, host_step)))


def _resolve_loop(loop: str) -> str:
  if loop not in LOOPS:
    raise ValueError(f"loop must be one of {LOOPS}, got {loop!r}")
  if loop == "auto":
    # XLA:CPU runs the *backward* convolutions far slower inside a while loop
    # (lax.scan) than as top-level ops (jax-ml/jax#12868; RESULTS.md §4
    # "Evaluation"). The cpu policy therefore drives the steps from the host;
    # the accelerator policy runs the single-program epoch.
    return policy.current().train_loop
  return loop


def train_surrogate(key: jax.Array, images: Any, labels: Any, *, config: SurrogateConfig,
                    progress: bool = True, loop: str = "auto") -> tuple[dict, dict]:
  """Train the SupCon surrogate on a (biased) training set.

  The dataset is put on device once. Each epoch shuffles with
  ``fold_in(key_shuffle, epoch)``, drops the last partial batch and augments
  step ``i`` with ``fold_in(fold_in(key_aug, epoch), i)``, so the same key
  gives the same params. ``loop='scan'`` compiles each epoch into one program
  (``lax.scan`` over its steps); ``loop='step'`` calls one compiled step per
  batch from the host (same arithmetic; results agree to float rounding).
  ``auto`` takes the active :mod:`jaxdd.policy`'s ``train_loop``: ``step`` on
  CPU, where XLA runs backward convolutions inside a ``lax.scan`` far slower,
  and ``scan`` on accelerators. A tqdm bar runs over
  epochs. Training stops with ``FloatingPointError`` on a non-finite loss.

  Speed: RESULTS.md §1 and §3 give the training time of the ``cpu`` preset
  on the embedded CMNIST (3,600 x 28x28x3, 14 steps of 256 images an epoch).

  Args:
    key: typed PRNG key (split into init / shuffle / augmentation keys).
    images: (N, H, W, C) float images (numpy or jax), finite.
    labels: (N,) integer labels; every present class needs >= 2 samples.
    config: a :class:`SurrogateConfig`.
    progress: show a tqdm bar over epochs.
    loop: ``auto``, ``scan`` or ``step`` (see above).

  Returns:
    ``(params, history)``: the flax variables dict, and a dict with
    ``loss`` (per-epoch mean loss, list), ``epoch_seconds`` (list),
    ``steps_per_epoch``, ``dropped_per_epoch`` and ``loop``.

  Raises:
    ValueError: bad shapes, NaN images, batch larger than the dataset, a class
      with a single sample, an unknown ``loop``.

  Example:
    >>> import jax, numpy as np
    >>> x = np.random.rand(64, 8, 8, 3).astype(np.float32)
    >>> y = np.repeat(np.arange(4), 16)
    >>> cfg = SurrogateConfig.preset('smoke', batch_size=32, epochs=1)
    >>> params, hist = train_surrogate(jax.random.key(0), x, y, config=cfg,
    ...                                progress=False)  # doctest: +SKIP
    >>> len(hist['loss'])  # doctest: +SKIP
    1
  """
  loop = _resolve_loop(loop)
  images, labels = _validate_data(images, labels, "train_surrogate")
  n = images.shape[0]
  config = config.for_size(n)
  if config.batch_size > n:
    raise ValueError(f"batch_size {config.batch_size} is larger than the dataset ({n} images); "
                     f"lower SurrogateConfig.batch_size to at most {n}")
  counts = np.bincount(labels)
  singletons = np.flatnonzero(counts == 1)
  if singletons.size:
    raise ValueError(f"class(es) {singletons.tolist()} have a single sample; SupCon needs >= 2 samples "
                     "per class to form same-class positives. Drop those classes or add samples.")
  if np.count_nonzero(counts) < 2:
    raise ValueError("the training set has a single class; SupCon needs >= 2 classes to have negatives")

  model = config.model()
  k_init, k_train = jax.random.split(key)
  variables = model.init(k_init, jnp.zeros((1,) + images.shape[1:], jnp.float32))
  variables = dict(variables)
  params = variables.pop("params")
  model_state = variables
  steps = n // config.batch_size
  fns = _make_train_fns(config, n)
  state = TrainState(params, model_state, fns.tx.init(params), jnp.zeros((), jnp.int32))

  x_dev = jnp.asarray(images)
  y_dev = jnp.asarray(labels)
  history: dict[str, Any] = {"loss": [], "epoch_seconds": [], "steps_per_epoch": steps,
                             "dropped_per_epoch": n - steps * config.batch_size, "loop": loop}
  from jaxdd import progress as progress_lib  # noqa: PLC0415
  bar = progress_lib.bar(config.epochs, "surrogate (SupCon)", unit="epoch", disable=not progress)
  for epoch in range(config.epochs):
    t0 = time.perf_counter()
    epoch_arr = jnp.asarray(epoch, jnp.int32)
    if loop == "scan":
      state, losses = fns.epoch(state, k_train, epoch_arr, x_dev, y_dev)
    else:
      k_aug, batches = fns.batches(k_train, epoch_arr)
      losses = []
      for i in range(steps):
        state, loss = fns.step(state, k_aug, jnp.asarray(i, jnp.int32), batches[i], x_dev, y_dev)
        losses.append(loss)
      losses = jnp.stack(losses)
    mean_loss = float(jnp.mean(losses))  # blocks until the epoch is done
    history["epoch_seconds"].append(time.perf_counter() - t0)
    if not math.isfinite(mean_loss):
      raise FloatingPointError(f"non-finite SupCon loss at epoch {epoch}; lower the learning rate "
                               f"(now {config.learning_rate}) or raise the temperature")
    history["loss"].append(mean_loss)
    bar.set_postfix(loss=f"{mean_loss:.4f}")
    bar.update(1)
  bar.close()
  return {"params": state.params, **state.model_state}, history


# ---------------------------------------------------------------------------
# Inference
# ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=32)
def _embed_fn(config: SurrogateConfig, space: str, block_size: int):
  model = config.model()

  def one_block(variables, x):
    feats, z = model.apply(variables, x, train=False, return_features=True)
    return z if space == "projection" else _l2_normalize(feats)

  def run(variables, blocks):
    return jax.lax.map(lambda xb: one_block(variables, xb), blocks)

  return jax.jit(run)


def embed(params: dict, images: Any, *, config: SurrogateConfig, block_size: int = 1024,
          space: str = "projection") -> jax.Array:
  """Embeddings of ``images`` under a trained surrogate, computed block by block.

  Images are padded to a multiple of ``block_size`` and mapped with
  ``lax.map`` inside one jitted program, so peak memory is one block's
  activations.

  Args:
    params: flax variables dict from :func:`train_surrogate`.
    images: (N, H, W, C) float images, preprocessed as for training.
    config: the config the params were trained with.
    block_size: images per block.
    space: ``projection`` (the L2-normalised SupCon projection, the KDE space of
      the paper) or ``encoder`` (the L2-normalised pre-head ConvNet feature; an
      ablation).

  Returns:
    (N, proj_dim) for ``projection`` or (N, d) for ``encoder``; unit-norm rows.

  Example:
    >>> import jax, numpy as np
    >>> cfg = SurrogateConfig.preset('smoke')
    >>> v = cfg.model().init(jax.random.key(0), np.zeros((1, 8, 8, 3), np.float32))
    >>> embed(v, np.zeros((5, 8, 8, 3), np.float32), config=cfg).shape
    (5, 32)
  """
  if space not in ("projection", "encoder"):
    raise ValueError(f"space must be 'projection' or 'encoder', got {space!r}")
  if not (isinstance(block_size, int) and block_size >= 1):
    raise ValueError(f"block_size must be an integer >= 1, got {block_size!r}")
  if is_traced(images):
    raise ValueError("embed is a host-level function; call it outside jit")
  images = np.asarray(images)
  checks.check_images(images, "embed", floating=False,
                      finite_fix="clean them before embedding (as before training)")
  n = images.shape[0]
  bs = min(block_size, max(n, 1))
  num_blocks = -(-n // bs)
  pad = num_blocks * bs - n
  x = jnp.asarray(images, jnp.float32)
  if pad:
    x = jnp.concatenate([x, jnp.zeros((pad,) + x.shape[1:], x.dtype)], axis=0)
  blocks = x.reshape((num_blocks, bs) + x.shape[1:])
  out = _embed_fn(config, space, bs)(params, blocks)
  return out.reshape((num_blocks * bs, out.shape[-1]))[:n]


# ---------------------------------------------------------------------------
# Cache
# ---------------------------------------------------------------------------


class SurrogateArtifact(NamedTuple):
  """What :func:`load_or_train` returns.

  Attributes:
    params: flax variables dict.
    embeddings: (N, proj_dim) projection-space embeddings of the training images.
    history: training history (see :func:`train_surrogate`).
    path: the cache entry directory (None when caching is disabled).
    from_cache: True if the entry was loaded rather than trained.
  """
  params: dict
  embeddings: np.ndarray
  history: dict
  path: str | None
  from_cache: bool


def cache_root(cache_dir: str | os.PathLike | None = None) -> str:
  """Directory of cached surrogates: ``cache_dir`` or ``$JAXDD_CACHE/surrogates``
  (``$JAXDD_CACHE`` defaults to ``~/.cache/jaxdd``).

  Example:
    >>> cache_root('some/dir')
    'some/dir'
  """
  if cache_dir is not None:
    return os.fspath(cache_dir)
  return os.fspath(_io.cache_root("surrogates"))


def _data_fingerprint(images: np.ndarray, labels: np.ndarray) -> str:
  # Hash the arrays themselves too, so a changed preprocessing (e.g. normalised
  # vs [0, 1] images) under the same dataset meta never reuses a stale entry.
  # No separator in the per-array header: the digest format of existing cache
  # entries (changing it would orphan them without a CACHE_VERSION bump).
  return _io.array_sha256(images, labels, sep="")


def _cache_spec(key: jax.Array, dataset_meta: dict, config: SurrogateConfig, images: np.ndarray,
                labels: np.ndarray) -> dict:
  try:
    meta = json.loads(json.dumps(dataset_meta, sort_keys=True))
  except TypeError as e:
    raise ValueError(f"dataset_meta must be JSON-serialisable (str/int/float/bool/None/list/dict): {e}")
  return {
      "version": CACHE_VERSION,
      "dataset": meta,
      "config": config.to_dict(),
      "key": np.asarray(jax.random.key_data(key)).ravel().tolist(),
      "data_sha256": _data_fingerprint(images, labels),
  }


def _spec_hash(spec: dict) -> str:
  return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:32]


def _save_npz(path: str, arrays: dict[str, np.ndarray]) -> None:
  buf = io.BytesIO()
  np.savez(buf, **arrays)
  with open(path, "wb") as f:
    f.write(buf.getvalue())


def _load_entry(entry: str, spec: dict, config: SurrogateConfig, image_shape: tuple[int, ...],
                num_examples: int) -> SurrogateArtifact:
  """Load and verify one cache entry; ValueError on any mismatch."""
  meta_path = os.path.join(entry, "meta.json")
  try:
    with open(meta_path) as f:
      meta = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise ValueError(f"unreadable cache metadata {meta_path}: {e}")
  if meta.get("spec") != spec:
    raise ValueError(f"cache entry {entry} was written for a different spec")
  files = meta.get("sha256", {})
  for name in ("params.npz", "embeddings.npz"):
    path = os.path.join(entry, name)
    if name not in files or not os.path.exists(path):
      raise ValueError(f"cache entry {entry} lacks {name}")
    if sha256_file(path) != files[name]:
      raise ValueError(f"sha256 mismatch for {path}: the file was modified or corrupted")
  with np.load(os.path.join(entry, "params.npz"), allow_pickle=False) as z:
    flat = {tuple(k.split("/")): np.asarray(z[k]) for k in z.files}
  with np.load(os.path.join(entry, "embeddings.npz"), allow_pickle=False) as z:
    embeddings = np.asarray(z["projection"])
  # Check the tree against a fresh init's structure and shapes.
  expected = jax.eval_shape(config.model().init, jax.random.key(0),
                            jax.ShapeDtypeStruct((1,) + tuple(image_shape), jnp.float32))
  expected_flat = traverse_util.flatten_dict(dict(expected))
  if set(expected_flat) != set(flat) or any(expected_flat[k].shape != flat[k].shape for k in flat):
    raise ValueError(f"cache entry {entry}: parameter tree does not match the config's model")
  if embeddings.shape != (num_examples, config.proj_dim):
    raise ValueError(f"cache entry {entry}: embeddings have shape {embeddings.shape}, "
                     f"expected {(num_examples, config.proj_dim)}")
  params = traverse_util.unflatten_dict({k: jnp.asarray(v) for k, v in flat.items()})
  return SurrogateArtifact(params, embeddings, meta.get("history", {}), entry, True)


def load_or_train(key: jax.Array, dataset_meta: dict, images: Any, labels: Any, *,
                  config: SurrogateConfig, cache_dir: str | os.PathLike | None = None,
                  use_cache: bool = True, progress: bool = True,
                  loop: str = "auto") -> SurrogateArtifact:
  """Return a trained surrogate and its training-set embeddings, cached on disk.

  The entry is keyed by a hash of (``dataset_meta``, ``config``, ``key``, a
  sha256 of the ``images``/``labels`` arrays, the cache version) and lives in
  ``cache_root(cache_dir)/<hash>/``: ``params.npz`` (the flattened variables
  tree, ``/``-joined keys), ``embeddings.npz`` (``projection``) and
  ``meta.json`` (the spec, the files' sha256, the training history). The
  entry is written into a temporary directory and renamed into place, so a
  killed run never leaves a partial entry.

  On load every file's sha256 and the tree's shapes are verified. A mismatch
  (tampered/corrupted entry) is *not* fatal: the cache is a derived artifact,
  so we warn (``RuntimeWarning``) and retrain, replacing the bad entry.

  Args:
    key: typed PRNG key for :func:`train_surrogate`.
    dataset_meta: JSON-serialisable description of the data, e.g.
      ``{'name': 'cmnist', 'split': 'train', 'conflict_ratio': 0.05,
      'severity': 4, 'seed': 0, 'source_sha256': ...}``.
    images: (N, H, W, C) float training images.
    labels: (N,) integer labels.
    config: a :class:`SurrogateConfig`.
    cache_dir: override of the cache root.
    use_cache: False trains without reading or writing the cache.
    progress: tqdm bar while training.
    loop: training driver, see :func:`train_surrogate` (not part of the cache
      key: both drivers compute the same steps).

  Returns:
    A :class:`SurrogateArtifact`.

  Example:
    >>> import jax, numpy as np
    >>> x = np.random.rand(64, 8, 8, 3).astype(np.float32); y = np.repeat(np.arange(4), 16)
    >>> cfg = SurrogateConfig.preset('smoke', batch_size=32, epochs=1)
    >>> art = load_or_train(jax.random.key(0), {'name': 'toy'}, x, y, config=cfg,
    ...                     progress=False)  # doctest: +SKIP
    >>> art.embeddings.shape  # doctest: +SKIP
    (64, 32)
  """
  images, labels = _validate_data(images, labels, "load_or_train")
  config = config.for_size(images.shape[0])  # the cache key holds the epochs trained
  spec = _cache_spec(key, dataset_meta, config, images, labels)
  if not use_cache:
    params, history = train_surrogate(key, images, labels, config=config, progress=progress,
                                      loop=loop)
    emb = np.asarray(embed(params, images, config=config))
    return SurrogateArtifact(params, emb, history, None, False)

  root = cache_root(cache_dir)
  entry = os.path.join(root, _spec_hash(spec))
  if os.path.isdir(entry):
    try:
      return _load_entry(entry, spec, config, images.shape[1:], images.shape[0])
    except ValueError as e:
      warnings.warn(f"discarding invalid surrogate cache entry ({e}); retraining", RuntimeWarning,
                    stacklevel=2)

  params, history = train_surrogate(key, images, labels, config=config, progress=progress,
                                      loop=loop)
  emb = np.asarray(embed(params, images, config=config))

  # Written under a temporary name and renamed into place; an existing entry
  # (invalid, or one a concurrent run just wrote) is moved aside first.
  with _io.atomic_directory(entry, prefix=".tmp-") as tmp:
    flat = traverse_util.flatten_dict(jax.device_get(params), sep="/")
    _save_npz(os.path.join(tmp, "params.npz"), {k: np.asarray(v) for k, v in flat.items()})
    _save_npz(os.path.join(tmp, "embeddings.npz"), {"projection": emb})
    meta = {
        "spec": spec,
        "sha256": {name: sha256_file(os.path.join(tmp, name))
                   for name in ("params.npz", "embeddings.npz")},
        "history": history,
        "jax_version": jax.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    with open(os.path.join(tmp, "meta.json"), "w") as f:
      json.dump(meta, f, indent=2, sort_keys=True)
  return SurrogateArtifact(params, emb, history, entry, False)
