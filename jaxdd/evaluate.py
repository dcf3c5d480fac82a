"""Evaluation: train fresh networks on a synthetic set, test them on real data.

Data contract. ``syn`` is a :class:`~jaxdd.structs.SynSet` of NHWC float32
images in the *normalised* space and integer labels (soft labels of shape
``(n, num_classes)`` are accepted by :func:`train_fresh` / :func:`evaluate`);
``test`` and ``valid`` are :class:`~jaxdd.structs.Batch` es in the same space,
whose optional ``bias`` (int, the bias attribute) and ``aligned`` (bool) fields
are used only to *measure* per-group accuracy. Accuracies are fractions in
[0, 1]; :meth:`EvalResult.format_table` prints percentages.

The protocol is the reference's ``evaluate_synset`` (docs/protocols.md §2),
frozen in a named :class:`Protocol`:

* SGD, momentum 0.9, weight decay 5e-4, lr 0.01, batch 256, cross-entropy.
  Weight decay is PyTorch's *coupled* form (``grad + wd * param``) on every
  parameter, biases and norm affines included, as ``torch.optim.SGD`` does.
* The reference loops ``for ep in range(Epoch + 1)``, i.e. it trains
  **Epoch + 1 epochs**; we copy that (:attr:`Protocol.num_epochs`).
* After epoch ``Epoch // 2 + 1`` the lr is multiplied by 0.1 and the reference
  builds a *new* ``torch.optim.SGD``, which throws the momentum buffers away.
  We do exactly that: the buffers are zeroed at the start of epoch
  ``Epoch // 2 + 2`` (the first step after a reset is ``buf = d_p``, which is
  torch's first-step rule).
* Each epoch visits a fresh random permutation (``fold_in(key, epoch)``) in
  batches of 256 and, like ``DataLoader(shuffle=True, drop_last=False)``,
  keeps the last partial batch. Shapes are static, so the partial batch gets
  its own compiled step of its true (static) size ``n % 256`` instead of being
  padded and masked: the math is a real partial batch (batch-norm statistics
  included), and an IPC-10 set (100 images) costs one 100-image step per epoch
  rather than a padded 256-image one.
* DSA augmentation in every training batch when the protocol names a strategy,
  in the reference's evaluation mode (non-siamese: one family per batch,
  per-sample parameters; :func:`jaxdd.augment.dsa` with ``siamese=False``).
* Testing in eval mode (batch-norm running averages), no augmentation, in
  blocks of ``test_batch_size`` inside a compiled ``lax.map``. Predictions do
  not depend on the block size (every supported norm is per-sample in eval
  mode).

The whole training run of one network is one ``lax.scan`` over epochs (and a
nested scan over the batches of an epoch); :func:`evaluate` runs it for
``num_models`` keys and an optional learning-rate grid in **one** XLA
program, either ``vmap`` ped (all networks batched: accelerators) or under a
``lax.map`` (one after another inside the program: CPU, where XLA runs the
grouped convolutions of vmapped ConvNets slower than separate ones; see
RESULTS.md §4 "Evaluation");
``parallel="auto"`` picks by backend. Compiled programs are cached per
(training task, protocol, parallel mode) with ``functools.lru_cache``
(big_vision's ``get_eval_fn`` pattern); ``jax.jit`` adds the per-shape cache.

On CPU, convolution gradients inside a loop hit a slow XLA:CPU path
(jax-ml/jax#12868; timings in RESULTS.md §4 "Evaluation"); while the
trainer is traced, ``flax.linen.Conv`` layers are routed through
:func:`loop_safe_conv`, which computes the same values and gradients with
fast kernels.

Model selection never uses the test set: a learning-rate grid requires a
validation batch (carve one from the training data with
:func:`split_validation`), the lr is chosen on it, and only then are the chosen
networks run on the test set.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxdd._src import checks
from jaxdd.models import loop_safe_conv, loop_safe_convs  # noqa: F401  (loop_safe_conv re-exported)
from jaxdd.structs import Batch, SynSet

DSA_STRATEGY = "color_crop_cutout_flip_scale_rotate"
METRICS = ("overall", "aligned", "conflicting", "worst_group")


# ---------------------------------------------------------------------------
# Protocols
# ---------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Protocol:
  """A frozen evaluation recipe. Every number jaxdd reports is stamped with one.

  Attributes:
    name: registry name (``"dm"``, ``"dsa"``, ``"dc"``, ``"cpu"``, ``"smoke"``).
    epochs: the reference's ``Epoch``; training runs ``epochs + 1`` epochs.
    lr: initial learning rate.
    momentum: SGD momentum.
    weight_decay: coupled (PyTorch-style) weight decay on every parameter.
    batch_size: training batch size; the last partial batch is kept.
    decay_at: ``"half"`` (after epoch ``epochs // 2 + 1``, the reference), an
      int epoch index after which to decay, or ``None`` (no decay).
    lr_decay_factor: the lr multiplier at the decay (0.1).
    reset_momentum: zero the momentum buffers at the decay, as the reference's
      optimizer re-creation does.
    augment: DSA strategy string (non-siamese, per-sample parameters), or
      ``None`` for no augmentation.
    test_batch_size: block size for testing (no effect on the numbers).
  """
  name: str
  epochs: int
  lr: float = 0.01
  momentum: float = 0.9
  weight_decay: float = 5e-4
  batch_size: int = 256
  decay_at: str | int | None = "half"
  lr_decay_factor: float = 0.1
  reset_momentum: bool = True
  augment: str | None = None
  test_batch_size: int = 256

  def __post_init__(self):
    if not isinstance(self.epochs, int) or self.epochs < 0:
      raise ValueError(f"Protocol.epochs must be an int >= 0, got {self.epochs!r}")
    for field in ("batch_size", "test_batch_size"):
      v = getattr(self, field)
      if not isinstance(v, int) or v < 1:
        raise ValueError(f"Protocol.{field} must be a positive int, got {v!r}")
    if not (self.lr > 0 and math.isfinite(self.lr)):
      raise ValueError(f"Protocol.lr must be positive and finite, got {self.lr!r}")
    if not 0 <= self.momentum < 1:
      raise ValueError(f"Protocol.momentum must be in [0, 1), got {self.momentum!r}")
    if not (self.weight_decay >= 0 and math.isfinite(self.weight_decay)):
      raise ValueError(f"Protocol.weight_decay must be >= 0, got {self.weight_decay!r}")
    if not (self.decay_at is None or self.decay_at == "half"
            or (isinstance(self.decay_at, int) and self.decay_at >= 0)):
      raise ValueError(f"Protocol.decay_at must be 'half', an epoch index >= 0 or None, "
                       f"got {self.decay_at!r}")
    if self.augment is not None and (not isinstance(self.augment, str) or not self.augment):
      raise ValueError(f"Protocol.augment must be a DSA strategy string such as "
                       f"{DSA_STRATEGY!r} or None, got {self.augment!r}")

  @property
  def num_epochs(self) -> int:
    """Epochs actually trained: ``epochs + 1`` (the reference's ``range(Epoch+1)``)."""
    return self.epochs + 1

  @property
  def decay_epoch(self) -> int | None:
    """Index of the epoch *after* which the lr decays (``None``: never)."""
    if self.decay_at == "half":
      return self.epochs // 2 + 1
    return self.decay_at

  @property
  def standard(self) -> bool:
    """True when this equals the registry entry of the same name (not modified)."""
    return PROTOCOLS.get(self.name) == self

  def replace(self, **changes) -> Protocol:
    """A copy with some fields changed (the stamp then shows ``standard: False``)."""
    return dataclasses.replace(self, **changes)

  def to_dict(self) -> dict[str, Any]:
    """All fields plus the derived ``num_epochs``, ``decay_epoch`` and ``standard``."""
    d = dataclasses.asdict(self)
    d.update(num_epochs=self.num_epochs, decay_epoch=self.decay_epoch, standard=self.standard)
    return d


# 'cpu': 1000 -> 40 epochs (41 trained), with the reference's optimiser,
# schedule and DSA, sized for a 2-core CPU: 5 ConvNet-3 (width 128) networks on
# a 10-class IPC-10 set (one 100-image step per epoch) train and are tested on
# a 10,000-image test set in minutes (timings: RESULTS.md §4 "Evaluation").
# It is a different, shorter recipe: its numbers are stamped 'cpu' and are not
# comparable with 'dm' numbers. 'cpu300' (301 epochs, otherwise the
# reference's recipe) is the long CPU protocol of the result tables
# (jaxdd.study.final). 'smoke' is for tests and CI.
PROTOCOLS: dict[str, Protocol] = {
    "dm": Protocol("dm", epochs=1000, augment=DSA_STRATEGY),
    "dsa": Protocol("dsa", epochs=1000, augment=DSA_STRATEGY),
    "dc": Protocol("dc", epochs=300, augment=None),
    "cpu": Protocol("cpu", epochs=40, augment=DSA_STRATEGY),
    "cpu300": Protocol("cpu300", epochs=300, augment=DSA_STRATEGY),
    "smoke": Protocol("smoke", epochs=3, augment=None),
}


def get_protocol(name: str | Protocol) -> Protocol:
  """Looks a protocol up by name (a :class:`Protocol` is returned unchanged).

  Args:
    name: one of ``PROTOCOLS`` (``"dm"``, ``"dsa"``, ``"dc"``, ``"cpu"``,
      ``"smoke"``), or a Protocol.

  Returns:
    The frozen :class:`Protocol`.

  Raises:
    ValueError: unknown name (the message lists the known ones).

  Example:
    >>> get_protocol("dm").num_epochs
    1001
  """
  if isinstance(name, Protocol):
    return name
  if name not in PROTOCOLS:
    raise ValueError(f"unknown evaluation protocol {name!r}; use one of {sorted(PROTOCOLS)} "
                     "or build a Protocol(...)")
  return PROTOCOLS[name]


# ---------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------

class GroupAccuracies(NamedTuple):
  """Accuracies of one prediction vector; empty subsets give NaN.

  ``table[c, b]`` is the accuracy on test samples of class ``c`` with bias
  attribute ``b`` (NaN where ``counts[c, b] == 0``); ``worst_group`` is the
  minimum over non-empty groups.
  """
  overall: jax.Array
  aligned: jax.Array
  conflicting: jax.Array
  worst_group: jax.Array
  table: jax.Array
  counts: jax.Array


def group_accuracies(preds: jax.Array, labels: jax.Array, bias: jax.Array, num_classes: int,
                     num_bias: int, aligned: jax.Array | None = None) -> GroupAccuracies:
  """Overall, bias-aligned, bias-conflicting and worst-(class x bias)-group accuracy.

  Pure and jit/vmap-compatible (``num_classes`` and ``num_bias`` are static).

  Args:
    preds: (n,) predicted classes.
    labels: (n,) true classes in ``[0, num_classes)``.
    bias: (n,) bias attribute in ``[0, num_bias)``.
    num_classes: number of classes.
    num_bias: number of bias values.
    aligned: (n,) bool, True for bias-aligned samples; default
      ``bias == labels`` (Colored-MNIST-style attributes, where bias value ``c``
      is the colour of class ``c``).

  Returns:
    :class:`GroupAccuracies`; groups with no samples are ignored by
    ``worst_group`` and are NaN in ``table``; ``aligned``/``conflicting`` are
    NaN when that subset is empty.

  Example:
    >>> import jax.numpy as jnp
    >>> r = group_accuracies(jnp.array([0, 1, 1]), jnp.array([0, 1, 0]),
    ...                      jnp.array([0, 1, 1]), 2, 2)
    >>> round(float(r.overall), 4), float(r.conflicting), float(r.worst_group)
    (0.6667, 0.0, 0.0)
  """
  preds = jnp.asarray(preds).astype(jnp.int32)
  labels = jnp.asarray(labels).astype(jnp.int32)
  bias = jnp.asarray(bias).astype(jnp.int32)
  if not (preds.shape == labels.shape == bias.shape and preds.ndim == 1):
    raise ValueError(f"preds, labels and bias must be equal-length vectors, got shapes "
                     f"{preds.shape}, {labels.shape}, {bias.shape}")
  aligned = (bias == labels) if aligned is None else jnp.asarray(aligned).astype(bool)
  correct = (preds == labels).astype(jnp.float32)
  group = labels * num_bias + bias
  size = num_classes * num_bias
  counts = jnp.zeros(size, jnp.float32).at[group].add(1.0, mode="drop")
  hits = jnp.zeros(size, jnp.float32).at[group].add(correct, mode="drop")
  table = jnp.where(counts > 0, hits / jnp.maximum(counts, 1.0), jnp.nan)

  def subset_acc(mask):
    m = mask.astype(jnp.float32)
    total = m.sum()
    return jnp.where(total > 0, (correct * m).sum() / jnp.maximum(total, 1.0), jnp.nan)

  worst = jnp.min(jnp.where(counts > 0, table, jnp.inf))
  worst = jnp.where(jnp.isfinite(worst), worst, jnp.nan)
  return GroupAccuracies(
      overall=subset_acc(jnp.ones_like(aligned)), aligned=subset_acc(aligned),
      conflicting=subset_acc(~aligned), worst_group=worst,
      table=table.reshape(num_classes, num_bias),
      counts=counts.reshape(num_classes, num_bias).astype(jnp.int32))


# ---------------------------------------------------------------------------
# Training tasks and the scan-compiled trainer
# ---------------------------------------------------------------------------

class StepBatch(NamedTuple):
  """What a training task's loss sees at one step.

  ``images`` are already augmented; ``index`` are the rows of the training set
  (per-sample state such as LfF's loss EMA); ``key`` is this step's key;
  ``step`` the global step counter (0-based, traced); ``progress`` =
  ``step / total_steps`` in [0, 1) (for warm-ups defined as a fraction of
  training, e.g. DFA's feature swap).
  """
  images: jax.Array
  labels: jax.Array
  index: jax.Array
  key: jax.Array
  step: jax.Array
  progress: jax.Array


class TrainTask(NamedTuple):
  """A training method pluggable into the evaluation trainer.

  ``init(key, images, labels) -> (params, state)``: ``params`` get SGD,
  ``state`` (batch-norm statistics, per-sample EMAs, ...) is carried along.
  ``loss(params, state, batch: StepBatch) -> (mean_loss, (new_state,
  logits))``: differentiated w.r.t. ``params``; ``logits`` measure train
  accuracy. ``predict(params, state, images) -> logits`` in eval mode.
  ``name`` stamps results. Build tasks with cached factories so that equal
  arguments give the same object (the compile cache is keyed on it).

  ``per_sample=True`` declares that ``loss`` is the mean of independent
  per-sample terms and leaves ``state`` unchanged whenever ``state`` is empty
  (no batch statistics, no stochastic layers): the trainer may then compute a
  step's gradient micro-batch by micro-batch and average (faster on CPU,
  where small activations stay in cache; see RESULTS.md §4 "Evaluation").
  The result is the same up to float reassociation.
  """
  name: str
  init: Callable[..., Any]
  loss: Callable[..., Any]
  predict: Callable[..., Any]
  per_sample: bool = False


class TrainMetrics(NamedTuple):
  """Per-epoch training loss and accuracy, shape (..., protocol.num_epochs)."""
  loss: jax.Array
  acc: jax.Array


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Per-sample cross-entropy; ``labels`` integer (n,) or soft (n, classes).

  Example:
    >>> import jax.numpy as jnp
    >>> round(float(cross_entropy(jnp.zeros((1, 2)), jnp.array([1]))[0]), 4)
    0.6931
  """
  if labels.ndim == logits.ndim:
    return optax.softmax_cross_entropy(logits, labels)
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def hard_labels(labels: jax.Array) -> jax.Array:
  """Integer labels of integer (n,) or soft (n, classes) labels.

  Args:
    labels: (n,) integers or (n, classes) soft labels.

  Returns:
    (n,) integer labels (the argmax of soft labels).

  Example:
    >>> import jax.numpy as jnp
    >>> hard_labels(jnp.array([[0.2, 0.8]])).tolist()
    [1]
  """
  return jnp.argmax(labels, axis=-1) if labels.ndim == 2 else labels


def split_variables(variables) -> tuple[Any, dict]:
  """Splits flax ``variables`` into ``(params, other collections)``.

  Args:
    variables: a flax variables dict with a ``"params"`` entry.

  Returns:
    ``(variables["params"], {every other collection})``.

  Example:
    >>> split_variables({"params": 1, "batch_stats": 2})
    (1, {'batch_stats': 2})
  """
  variables = dict(variables)
  params = variables.pop("params")
  return params, variables


def apply_train(model: nn.Module, params, state: dict, x: jax.Array, key: jax.Array,
                **kwargs) -> tuple[Any, dict]:
  """Applies ``model`` in training mode; returns ``(output, new_state)``.

  Collections in ``state`` (e.g. ``batch_stats``) are made mutable, so
  batch-norm models update their running statistics; a dropout rng is passed
  (models without dropout ignore it).

  Args:
    model: a Flax module with a ``train`` keyword.
    params: its ``params`` collection.
    state: its other collections (may be empty).
    x: input batch.
    key: rng for stochastic layers.
    **kwargs: forwarded to ``model.apply`` (e.g. ``return_features=True``).

  Returns:
    ``(output, new_state)``.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxdd import models
    >>> m = models.ConvNet(num_classes=2, width=4, norm="batch")
    >>> p, s = split_variables(m.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3))))
    >>> out, s2 = apply_train(m, p, s, jnp.ones((2, 8, 8, 3)), jax.random.key(1))
    >>> sorted(s2)
    ['batch_stats']
  """
  variables = {"params": params, **state}
  mutable = sorted(state)
  if mutable:
    out, updates = model.apply(variables, x, train=True, mutable=mutable,
                               rngs={"dropout": key}, **kwargs)
    return out, {**state, **dict(updates)}
  return model.apply(variables, x, train=True, rngs={"dropout": key}, **kwargs), state


@functools.lru_cache(maxsize=64)
def standard_task(model: nn.Module) -> TrainTask:
  """Plain cross-entropy training of ``model`` (the reference's evaluation).

  Args:
    model: any Flax module mapping NHWC images to logits with a ``train``
      keyword (every model in :mod:`jaxdd.models`).

  Returns:
    The cached :class:`TrainTask` (the same object for equal models).

  Example:
    >>> from jaxdd import models
    >>> standard_task(models.ConvNet(num_classes=2)) is standard_task(models.ConvNet(num_classes=2))
    True
  """

  def init(key, images, labels):
    del labels
    return split_variables(model.init(key, images[:1], train=False))

  def loss(params, state, batch: StepBatch):
    logits, state = apply_train(model, params, state, batch.images, batch.key)
    return cross_entropy(logits, batch.labels).mean(), (state, logits)

  def predict(params, state, images):
    return model.apply({"params": params, **state}, images, train=False)

  return TrainTask("train_fresh", init, loss, predict, per_sample=True)


# Micro-batch size on CPU of per-sample tasks (see TrainTask.per_sample) and of
# prediction, chosen by timing one ConvNet-3 (width 128) training step on 256
# images with micro-batches of 16, 32, 64 and 128 (whole batch vs 32:
# RESULTS.md §4 "Evaluation").
CPU_MICRO_BATCH = 32


def micro_batch_size(batch: int, target: int) -> int:
  """The divisor of ``batch`` closest to ``target`` (ties: the larger).

  Example:
    >>> micro_batch_size(256, 32), micro_batch_size(100, 32), micro_batch_size(7, 32)
    (32, 25, 7)
  """
  divisors = [d for d in range(1, batch + 1) if batch % d == 0]
  return min(divisors, key=lambda d: (abs(d - target), -d))


def _sgd_update(params, grads, buf, lr, momentum: float, weight_decay: float):
  """``torch.optim.SGD`` (dampening 0, no Nesterov) with coupled weight decay.

  d = g + wd * p; buf = momentum * buf + d; p = p - lr * buf. A zero ``buf`` is
  torch's fresh optimiser (its first step sets buf = d).
  """
  d = jax.tree.map(lambda g, p: g + weight_decay * p, grads, params)
  buf = jax.tree.map(lambda b, di: momentum * b + di, buf, d)
  params = jax.tree.map(lambda p, b: p - lr * b, params, buf)
  return params, buf


@functools.lru_cache(maxsize=16)
def _augment_fn(strategy: str | None):
  if strategy is None or strategy.lower() in ("none", ""):
    return None
  from jaxdd import augment  # noqa: PLC0415  (optional until a protocol asks for DSA)
  return augment.dsa(strategy, siamese=False)


def _train(key: jax.Array, lr: jax.Array, images: jax.Array, labels: jax.Array, *,
           task: TrainTask, protocol: Protocol, report: bool = False):
  """One network, the whole protocol, as nested ``lax.scan`` s (traceable).

  ``report`` adds a host callback at the end of every epoch (progress only;
  the numbers are unchanged, see :func:`train_models`).
  """
  with loop_safe_convs():
    return _train_traced(key, lr, images, labels, task=task, protocol=protocol, report=report)


def _train_traced(key, lr, images, labels, *, task: TrainTask, protocol: Protocol,
                  report: bool = False):
  k_init, k_shuffle, k_step = jax.random.split(key, 3)
  params, state = task.init(k_init, images, labels)
  return _fit(params, state, images, labels, lr, k_shuffle, k_step, task=task, protocol=protocol,
              on_epoch=_epoch_done if report else None)


# The progress counter the running evaluation reports to (set by _train_many).
_EPOCH_SINK: list = []


def _epoch_done(loss) -> None:
  """Host side of the per-epoch callback: one trained epoch of one network."""
  del loss
  for sink in _EPOCH_SINK[-1:]:
    sink.update(1)


def fit(key: jax.Array, params, state: dict, images: jax.Array, labels: jax.Array, *,
        task: TrainTask, protocol: Protocol, lr: jax.Array | float | None = None):
  """Trains given ``params`` for the whole ``protocol`` (traceable; one scan over epochs).

  The trainer of :func:`train_fresh` without the initialisation: evaluation
  trains fresh networks with it, and gradient matching
  (:func:`jaxdd.distill.gm`) trains its network on the synthetic set between
  image updates with it (plain SGD: ``Protocol(momentum=0, weight_decay=0,
  decay_at=None)``). Call it under jit; on CPU its convolutions are routed
  through :func:`loop_safe_conv`.

  Args:
    key: typed key for the per-epoch shuffles and the per-step augmentation.
    params, state: the network's ``params`` and other collections (see
      :func:`split_variables`).
    images, labels: the training set.
    task: the :class:`TrainTask` (e.g. :func:`standard_task`).
    protocol: the schedule (``protocol.num_epochs`` epochs of SGD).
    lr: initial learning rate (default ``protocol.lr``); may be traced.

  Returns:
    ``(params, state, metrics)`` with per-epoch :class:`TrainMetrics`.
  """
  k_shuffle, k_step = jax.random.split(key)
  lr = protocol.lr if lr is None else lr
  with loop_safe_convs():
    return _fit(params, state, images, labels, lr, k_shuffle, k_step, task=task,
                protocol=protocol)


def _fit(params, state, images, labels, lr, k_shuffle, k_step, *, task: TrainTask,
         protocol: Protocol, on_epoch=None):
  n = images.shape[0]
  bs = protocol.batch_size
  num_full, rest = divmod(n, bs)
  steps_per_epoch = num_full + (rest > 0)
  total_steps = steps_per_epoch * protocol.num_epochs
  aug = _augment_fn(protocol.augment)
  decay = protocol.decay_epoch
  buf = jax.tree.map(jnp.zeros_like, params)
  grad_fn = jax.value_and_grad(task.loss, has_aux=True)
  micro = (CPU_MICRO_BATCH if task.per_sample and not jax.tree.leaves(state)
           and jax.default_backend() == "cpu" else None)

  def batch_grad(params, state, batch: StepBatch):
    b = batch.images.shape[0]
    # Batches under 4 micro-batches gain nothing measurable (IPC 10: 100 images).
    m = micro_batch_size(b, micro) if micro and b >= 4 * micro else b
    if m == b:
      return grad_fn(params, state, batch)
    if 2 * m < micro:
      # No divisor near the target (e.g. 244 = 4 x 61): chunks of `micro` plus
      # one remainder chunk, rather than dozens of tiny ones.
      m = micro
    k, r = divmod(b, m)

    def part(lo, size, c):
      sl = lambda a: jax.lax.dynamic_slice_in_dim(a, lo, size)
      return StepBatch(sl(batch.images), sl(batch.labels), sl(batch.index),
                       jax.random.fold_in(batch.key, c), batch.step, batch.progress)

    def body(acc, c):
      (l, (_, logits)), g = grad_fn(params, state, part(c * m, m, c))
      return jax.tree.map(jnp.add, acc, g), (l, logits)

    zeros = jax.tree.map(jnp.zeros_like, params)
    grads, (losses, logits) = jax.lax.scan(body, zeros, jnp.arange(k))
    logits = logits.reshape((k * m,) + logits.shape[2:])
    # The batch mean is the size-weighted mean of the chunk means.
    grads = jax.tree.map(lambda g: g * (m / b), grads)
    loss = losses.sum() * (m / b)
    if r:
      (l, (_, lr_logits)), g = grad_fn(params, state, part(k * m, r, k))
      grads = jax.tree.map(lambda a, gi: a + gi * (r / b), grads, g)
      loss, logits = loss + l * (r / b), jnp.concatenate([logits, lr_logits])
    return (loss, (state, logits)), grads

  def one_step(params, state, buf, lr_ep, idx, ep, j):
    k_a, k_s = jax.random.split(jax.random.fold_in(jax.random.fold_in(k_step, ep), j))
    x, y = images[idx], labels[idx]
    if aug is not None:
      x = aug(k_a, x)
    step = ep * steps_per_epoch + j
    batch = StepBatch(x, y, idx, k_s, step, step / total_steps)
    (loss, (state, logits)), grads = batch_grad(params, state, batch)
    params, buf = _sgd_update(params, grads, buf, lr_ep, protocol.momentum,
                              protocol.weight_decay)
    correct = (jnp.argmax(logits, -1) == hard_labels(y)).sum()
    # Sums weighted by the batch size, as the reference's epoch() averages.
    return params, state, buf, loss * idx.shape[0], correct.astype(jnp.float32)

  def epoch(carry, ep):
    params, state, buf = carry
    if decay is not None:
      lr_ep = jnp.where(ep > decay, lr * protocol.lr_decay_factor, lr)
      if protocol.reset_momentum:
        # The reference re-creates the optimiser after epoch `decay`.
        fresh = ep == decay + 1
        buf = jax.tree.map(lambda b: jnp.where(fresh, jnp.zeros_like(b), b), buf)
    else:
      lr_ep = lr
    perm = jax.random.permutation(jax.random.fold_in(k_shuffle, ep), n)
    loss_sum = jnp.zeros((), jnp.float32)
    correct = jnp.zeros((), jnp.float32)
    if num_full:
      def body(c, xs):
        j, idx = xs
        p, s, b, ls, cs = c
        p, s, b, l, k = one_step(p, s, b, lr_ep, idx, ep, j)
        return (p, s, b, ls + l, cs + k), None
      (params, state, buf, loss_sum, correct), _ = jax.lax.scan(
          body, (params, state, buf, loss_sum, correct),
          (jnp.arange(num_full), perm[:num_full * bs].reshape(num_full, bs)))
    if rest:
      # The DataLoader's last partial batch, at its true static size.
      params, state, buf, l, k = one_step(params, state, buf, lr_ep, perm[num_full * bs:], ep,
                                          num_full)
      loss_sum, correct = loss_sum + l, correct + k
    if on_epoch is not None:  # progress only: reads the epoch's loss, changes nothing
      jax.debug.callback(on_epoch, loss_sum)
    return (params, state, buf), TrainMetrics(loss_sum / n, correct / n)

  (params, state, _), metrics = jax.lax.scan(
      epoch, (params, state, buf), jnp.arange(protocol.num_epochs))
  return params, state, metrics


PARALLEL = ("auto", "vmap", "map")


def resolve_parallel(parallel: str) -> str:
  """``"auto"`` -> ``"map"`` on CPU, ``"vmap"`` elsewhere (see :func:`train_models`).

  Args:
    parallel: ``"auto"``, ``"vmap"`` or ``"map"``.

  Returns:
    ``"vmap"`` or ``"map"``.

  Example:
    >>> resolve_parallel("vmap")
    'vmap'
  """
  if parallel not in PARALLEL:
    raise ValueError(f"parallel must be one of {PARALLEL}, got {parallel!r}")
  if parallel == "auto":
    return "map" if jax.default_backend() == "cpu" else "vmap"
  return parallel


@functools.lru_cache(maxsize=32)
def _train_single(task: TrainTask, protocol: Protocol):
  """Jitted trainer of one network: (key, lr, images, labels) -> (params, state, metrics)."""
  return jax.jit(functools.partial(_train, task=task, protocol=protocol))


@functools.lru_cache(maxsize=32)
def _train_many_program(task: TrainTask, protocol: Protocol, parallel: str, report: bool = False):
  """Jitted trainer of a (lrs x models) grid in one program.

  ``vmap``: all networks advance together (batched matmuls; convolutions
  become grouped convolutions). ``map``: a ``lax.map`` over the flattened grid
  inside the same program, one network at a time. XLA:CPU runs grouped
  convolutions slower than the same work as separate convolutions (RESULTS.md
  §4 "Evaluation"), so on CPU ``map`` is the faster of the two; accelerators
  batch well.
  """
  single = functools.partial(_train, task=task, protocol=protocol, report=report)

  def many(keys, lrs, images, labels):
    num_lrs, num_models = lrs.shape[0], keys.shape[0]
    if parallel == "vmap":
      return jax.vmap(jax.vmap(single, in_axes=(0, None, None, None)),
                      in_axes=(None, 0, None, None))(keys, lrs, images, labels)
    flat_keys = keys[jnp.tile(jnp.arange(num_models), num_lrs)]
    flat_lrs = jnp.repeat(lrs, num_models)
    out = jax.lax.map(lambda kl: single(kl[0], kl[1], images, labels), (flat_keys, flat_lrs))
    return jax.tree.map(lambda a: a.reshape((num_lrs, num_models) + a.shape[1:]), out)

  return jax.jit(many)


def predict_block(protocol: Protocol, n: int, parallel: str) -> int:
  """Images per prediction block: the protocol's ``test_batch_size`` (at most ``n``),
  and at most :data:`CPU_MICRO_BATCH` for one-network-at-a-time prediction on CPU,
  where small blocks keep activations in cache (predictions are per-sample in eval
  mode, so the block never changes them).

  Example:
    >>> predict_block(Protocol("p", epochs=1), 100, "vmap")
    100
  """
  block = min(protocol.test_batch_size, n)
  if parallel == "map" and jax.default_backend() == "cpu":
    block = min(block, CPU_MICRO_BATCH)
  return block


@functools.lru_cache(maxsize=32)
def _predict_program(task: TrainTask, block: int, parallel: str):
  """Jitted blocked prediction for stacked networks: (M, ...) -> (M, n) classes."""
  def one_model(params, state, blocks):
    def one_block(xb):
      return jnp.argmax(task.predict(params, state, xb), -1).astype(jnp.int32)
    return jax.lax.map(one_block, blocks).reshape(-1)  # (blocks * block,)

  def run(params, state, images):
    n = images.shape[0]
    num_blocks = -(-n // block)
    x = jnp.pad(images, ((0, num_blocks * block - n),) + ((0, 0),) * (images.ndim - 1))
    x = x.reshape((num_blocks, block) + images.shape[1:])
    if parallel == "vmap":
      preds = jax.vmap(one_model, in_axes=(0, 0, None))(params, state, x)
    else:
      preds = jax.lax.map(lambda ps: one_model(ps[0], ps[1], x), (params, state))
    return preds[:, :n]
  return jax.jit(run)


# ---------------------------------------------------------------------------
# Input checks
# ---------------------------------------------------------------------------

def _check_key(key) -> None:
  if not (isinstance(key, jax.Array) and jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
          and key.shape == ()):
    raise ValueError("key must be a single typed key from jax.random.key(seed); "
                     f"got {getattr(key, 'dtype', type(key))} {getattr(key, 'shape', '')}")


def _check_images(who: str, name: str, images, finite: bool = True) -> jax.Array:
  images = jnp.asarray(images)
  checks.check_images(images, who, what=name, finite=finite, min_count=1,
                      float_fix="pass normalised float images (jaxdd.data.normalize)",
                      finite_fix="fix the data (or the distillation run) before evaluating")
  return images.astype(jnp.float32)


def _check_syn(syn: SynSet, num_classes: int | None, who: str) -> tuple[jax.Array, jax.Array]:
  images = _check_images(who, "syn.images", syn.images)
  labels = jnp.asarray(syn.labels)
  if labels.shape[:1] != images.shape[:1] or labels.ndim not in (1, 2):
    raise ValueError(f"syn.labels must have shape (n,) or (n, classes) with n = "
                     f"{images.shape[0]}, got {labels.shape}")
  if labels.ndim == 1:
    if not jnp.issubdtype(labels.dtype, jnp.integer):
      raise ValueError(f"integer syn.labels expected, got dtype {labels.dtype}")
    if num_classes is not None and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
      raise ValueError(f"syn.labels must lie in [0, {num_classes}); got range "
                       f"[{int(labels.min())}, {int(labels.max())}]")
    labels = labels.astype(jnp.int32)
  else:
    if num_classes is not None and labels.shape[1] != num_classes:
      raise ValueError(f"soft syn.labels must have {num_classes} columns, got {labels.shape[1]}")
    labels = labels.astype(jnp.float32)
  return images, labels


def _check_batch(name: str, batch: Batch, like: jax.Array, num_classes: int, who: str) -> Batch:
  images = _check_images(who, f"{name}.images", batch.images)
  if images.shape[1:] != like.shape[1:]:
    raise ValueError(f"{name} images are {images.shape[1:]} but the training images are "
                     f"{like.shape[1:]}; both must share H, W, C")
  labels = np.asarray(batch.labels)
  if labels.shape != (images.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"{name}.labels must be integer of shape ({images.shape[0]},), got "
                     f"{labels.dtype} {labels.shape}")
  if labels.min() < 0 or labels.max() >= num_classes:
    raise ValueError(f"{name}.labels must lie in [0, {num_classes})")
  bias = None if batch.bias is None else np.asarray(batch.bias)
  if bias is not None and (bias.shape != labels.shape or not np.issubdtype(bias.dtype, np.integer)
                           or bias.min() < 0):
    raise ValueError(f"{name}.bias must be non-negative integers of shape {labels.shape}")
  aligned = None if batch.aligned is None else np.asarray(batch.aligned)
  if aligned is not None and aligned.shape != labels.shape:
    raise ValueError(f"{name}.aligned must have shape {labels.shape}, got {aligned.shape}")
  return Batch(images, labels, bias, aligned)


def _num_classes(model, syn_labels) -> int:
  n = getattr(model, "num_classes", None)
  if isinstance(n, int):
    return n
  if syn_labels.ndim == 2:
    return int(syn_labels.shape[1])
  return int(np.asarray(syn_labels).max()) + 1


def model_spec(model) -> str:
  """The architecture spec string stamped on results.

  Args:
    model: a Flax module.

  Returns:
    :func:`jaxdd.models.spec_of` of it, or its class name for modules that
    function does not know.

  Example:
    >>> from jaxdd import models
    >>> model_spec(models.ConvNet(num_classes=10, width=64))
    'convnet-d3-w64-instancenorm-avgpool'
  """
  from jaxdd import models  # noqa: PLC0415
  try:
    return models.spec_of(model)
  except (ValueError, AttributeError):
    return type(model).__name__


# ---------------------------------------------------------------------------
# Public training entry points
# ---------------------------------------------------------------------------

def train_fresh(key: jax.Array, syn: SynSet, *, model: nn.Module, protocol: str | Protocol = "dm",
                lr: float | None = None) -> tuple[dict, TrainMetrics]:
  """Trains one freshly initialised ``model`` on ``syn`` under ``protocol``.

  The whole run is a single compiled ``lax.scan`` (see the module docstring
  for the exact schedule). Model ``i`` of :func:`evaluate` with key ``k`` is
  ``train_fresh(jax.random.split(k, num_models)[i], ...)``.

  Args:
    key: typed PRNG key (init, per-epoch shuffles, augmentation).
    syn: the training set (any size; also a whole dataset).
    model: a Flax module (e.g. from :func:`jaxdd.models.get`).
    protocol: protocol name or :class:`Protocol`.
    lr: override of ``protocol.lr``.

  Returns:
    ``(variables, metrics)``: flax variables (``{"params": ..., maybe
    "batch_stats": ...}``) usable with ``model.apply(variables, x)``, and
    per-epoch :class:`TrainMetrics` of shape (num_epochs,).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxdd import models
    >>> from jaxdd.structs import SynSet
    >>> syn = SynSet(jnp.zeros((4, 8, 8, 3)), jnp.array([0, 0, 1, 1]))
    >>> v, m = train_fresh(jax.random.key(0), syn,  # doctest: +SKIP
    ...                    model=models.ConvNet(num_classes=2, width=4), protocol="smoke")
    >>> m.loss.shape  # doctest: +SKIP
    (4,)
  """
  _check_key(key)
  protocol = get_protocol(protocol)
  images, labels = _check_syn(syn, getattr(model, "num_classes", None), "train_fresh")
  lr = protocol.lr if lr is None else lr
  single = _train_single(standard_task(model), protocol)
  params, state, metrics = single(key, jnp.float32(lr), images, labels)
  return {"params": params, **state}, metrics


def _train_many(key, images, labels, *, task, protocol, num_models, lrs, parallel,
                progress: bool = False):
  from jaxdd import progress as progress_lib  # noqa: PLC0415
  progress = progress and not progress_lib.is_quiet()
  many = _train_many_program(task, protocol, resolve_parallel(parallel), progress)
  keys = jax.random.split(key, num_models)
  if not progress:
    return many(keys, jnp.asarray(lrs, jnp.float32), images, labels)
  # Every network reports each trained epoch (a host callback in the compiled
  # program); the bar counts network-epochs.
  bar = progress_lib.bar(len(lrs) * num_models * protocol.num_epochs,
                         f"evaluate {task.name} ({protocol.name}, {len(lrs) * num_models} "
                         f"networks x {protocol.num_epochs} epochs)", unit="epoch")
  _EPOCH_SINK.append(bar)
  try:
    out = many(keys, jnp.asarray(lrs, jnp.float32), images, labels)
    jax.block_until_ready(out)
    jax.effects_barrier()
  finally:
    _EPOCH_SINK.remove(bar)
    bar.close()
  return out


def _check_lrs(lrs, protocol) -> tuple[float, ...]:
  if lrs is None:
    return (float(protocol.lr),)
  lrs = tuple(float(v) for v in np.atleast_1d(np.asarray(lrs, np.float64)))
  if not lrs or not all(v > 0 and math.isfinite(v) for v in lrs):
    raise ValueError(f"lrs must be a non-empty sequence of positive finite floats, got {lrs}")
  return lrs


def train_models(key: jax.Array, syn: SynSet, *, model: nn.Module,
                 protocol: str | Protocol = "dm", num_models: int = 5,
                 lrs: Sequence[float] | None = None,
                 parallel: str = "auto", progress: bool = False) -> tuple[dict, TrainMetrics]:
  """Trains ``len(lrs) x num_models`` networks in one compiled program.

  Args:
    key: typed PRNG key; model ``i`` uses ``jax.random.split(key,
      num_models)[i]`` (the same keys for every lr, so an lr grid is paired).
    syn: the training set.
    model: a Flax module.
    protocol: protocol name or :class:`Protocol`.
    num_models: networks per lr.
    lrs: learning-rate grid (default ``(protocol.lr,)``).
    parallel: how the networks share the program: ``"vmap"`` (batched, the
      fast choice on GPU/TPU), ``"map"`` (``lax.map``: one after another inside
      the program; faster on CPU, where XLA runs the grouped convolutions of
      a vmapped ConvNet slowly, and lighter on memory) or ``"auto"`` (``map``
      on CPU, else ``vmap``). Results agree up to float rounding.
    progress: report every trained epoch of every network (a tqdm bar or
      periodic log lines, see :mod:`jaxdd.progress`); the results are
      bit-identical with and without it.

  Returns:
    ``(variables, metrics)`` whose leaves have leading axes ``(len(lrs),
    num_models)``.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxdd import models
    >>> from jaxdd.structs import SynSet
    >>> syn = SynSet(jnp.zeros((4, 8, 8, 3)), jnp.array([0, 0, 1, 1]))
    >>> v, m = train_models(jax.random.key(0), syn, model=models.ConvNet(num_classes=2, width=4),
    ...                     protocol="smoke", num_models=3, lrs=[0.01, 0.1])  # doctest: +SKIP
    >>> m.acc.shape  # doctest: +SKIP
    (2, 3, 4)
  """
  _check_key(key)
  protocol = get_protocol(protocol)
  if not isinstance(num_models, int) or num_models < 1:
    raise ValueError(f"num_models must be a positive int, got {num_models!r}")
  images, labels = _check_syn(syn, getattr(model, "num_classes", None), "train_models")
  params, state, metrics = _train_many(key, images, labels, task=standard_task(model),
                                       protocol=protocol, num_models=num_models,
                                       lrs=_check_lrs(lrs, protocol), parallel=parallel,
                                       progress=progress)
  return {"params": params, **state}, metrics


# ---------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------

def _json_float(x) -> float | None:
  x = float(x)
  return x if math.isfinite(x) else None


def _json_array(a) -> Any:
  a = np.asarray(a)
  if a.dtype.kind == "f":
    return [_json_array(v) for v in a] if a.ndim else _json_float(a)
  return a.tolist()


@dataclasses.dataclass(frozen=True, eq=False)
class EvalResult:
  """Test accuracies of freshly trained networks, stamped with how they were made.

  Per-model arrays have shape (num_models,); ``group_table`` is (num_models,
  classes, bias values) and ``group_counts`` (classes, bias values). Means and
  standard deviations (numpy's ``std``, ddof 0, as the reference) are over the
  models. Accuracies are fractions.
  """
  protocol: Protocol
  model_spec: str
  method: str
  num_models: int
  key_data: tuple[int, ...]
  lrs: tuple[float, ...]
  selected_lr: float
  selection: str
  select_on: str | None
  valid_scores: np.ndarray | None  # (len(lrs), num_models) on the validation batch
  overall: np.ndarray
  aligned: np.ndarray
  conflicting: np.ndarray
  worst_group: np.ndarray
  group_table: np.ndarray
  group_counts: np.ndarray
  train_loss: np.ndarray  # (num_models, num_epochs) at the selected lr
  train_acc: np.ndarray
  num_train: int
  num_test: int
  num_valid: int
  parallel: str = "vmap"
  hparams: dict = dataclasses.field(default_factory=dict)

  def mean(self, metric: str = "overall") -> float:
    """Mean over models of ``metric`` (one of ``overall``, ``aligned``,
    ``conflicting``, ``worst_group``)."""
    return float(np.mean(getattr(self, metric)))

  def std(self, metric: str = "overall") -> float:
    """Standard deviation (ddof 0) over models of ``metric``."""
    return float(np.std(getattr(self, metric)))

  def stamp(self) -> dict[str, Any]:
    """How the numbers were produced (protocol fields, model, seeds, method)."""
    return {
        "protocol": self.protocol.to_dict(), "model": self.model_spec, "method": self.method,
        "num_models": self.num_models, "key_data": list(self.key_data), "lrs": list(self.lrs),
        "selected_lr": self.selected_lr, "selection": self.selection,
        "select_on": self.select_on, "num_train": self.num_train, "num_test": self.num_test,
        "num_valid": self.num_valid, "parallel": self.parallel, "hparams": dict(self.hparams),
        "jax_version": jax.__version__,
    }

  def to_dict(self) -> dict[str, Any]:
    """A JSON-serialisable dict: the stamp, mean/std per metric and per-model
    arrays (non-finite values, e.g. an empty subset, become ``None``), so
    ``json.dumps(result.to_dict())`` always works.
    """
    d = self.stamp()
    d["summary"] = {m: {"mean": _json_float(self.mean(m)), "std": _json_float(self.std(m))}
                    for m in METRICS}
    d["per_model"] = {m: _json_array(getattr(self, m)) for m in METRICS}
    d["group_table"] = _json_array(self.group_table)
    d["group_counts"] = _json_array(self.group_counts)
    d["valid_scores"] = None if self.valid_scores is None else _json_array(self.valid_scores)
    d["train_loss_final"] = _json_array(self.train_loss[:, -1])
    d["train_acc_final"] = _json_array(self.train_acc[:, -1])
    return d

  def format_table(self) -> str:
    """A human-readable summary plus the per-(class x bias) accuracy table
    (mean over models, in %, with test counts)."""
    p = self.protocol
    lines = [
        f"protocol {p.name}{'' if p.standard else ' (modified)'}: {p.num_epochs} epochs, "
        f"lr {self.selected_lr:g} (x{p.lr_decay_factor:g} after epoch {p.decay_epoch}), "
        f"batch {p.batch_size}, augment {p.augment or 'none'}",
        f"model {self.model_spec} | method {self.method} | {self.num_models} models | "
        f"train {self.num_train} / test {self.num_test}"
        + (f" | lr chosen on valid ({self.select_on}) from {list(self.lrs)}"
           if self.selection == "valid" else ""),
    ]
    if self.hparams:
      lines.append("hyper-parameters: " + ", ".join(f"{k}={v:g}" if isinstance(v, float)
                                                    else f"{k}={v}"
                                                    for k, v in self.hparams.items()))
    lines.append(f"{'metric':<14}{'mean %':>9}{'std %':>8}")
    for m in METRICS:
      mean, std = self.mean(m), self.std(m)
      val = "     n/a" if not math.isfinite(mean) else f"{100 * mean:9.2f}{100 * std:8.2f}"
      lines.append(f"{m.replace('_', ' '):<14}{val}")
    table = np.nanmean(np.where(self.group_counts[None] > 0, self.group_table, np.nan), axis=0) \
        if self.group_table.size else self.group_table
    nb = self.group_counts.shape[1]
    lines.append("per-group accuracy % (rows: class, columns: bias value) [test count]")
    lines.append("class " + "".join(f"{b:>13}" for b in range(nb)))
    for c in range(self.group_counts.shape[0]):
      cells = []
      for b in range(nb):
        n = int(self.group_counts[c, b])
        cells.append(f"{'-':>13}" if n == 0 else f"{100 * table[c, b]:6.1f} [{n:>4}]".rjust(13))
      lines.append(f"{c:<6}" + "".join(cells))
    return "\n".join(lines)

  def group_means(self) -> np.ndarray:
    """(classes, bias values) accuracy averaged over models; NaN where the test set has no sample."""
    if not self.group_table.size:
      return np.zeros(self.group_counts.shape)
    return np.nanmean(np.where(self.group_counts[None] > 0, self.group_table, np.nan), axis=0)

  def to_dataframe(self):
    """Per-metric mean/std (in %) as a ``pandas.DataFrame`` (needs pandas).

    Rows are ``overall``, ``aligned``, ``conflicting``, ``worst_group``; the
    ``method`` and ``protocol`` columns make frames of several results
    concatenable.
    """
    try:
      import pandas as pd  # noqa: PLC0415  (optional)
    except ImportError as e:
      raise ImportError("EvalResult.to_dataframe needs pandas (pip install pandas); "
                        "to_dict() and format_table() work without it") from e
    return pd.DataFrame(
        {"mean %": [100 * self.mean(m) for m in METRICS],
         "std %": [100 * self.std(m) for m in METRICS],
         "method": self.method, "protocol": self.protocol.name, "model": self.model_spec},
        index=list(METRICS))

  def _repr_html_(self) -> str:
    """Notebook view: the summary metrics and the per-(class x bias) table."""
    import html  # noqa: PLC0415

    p = self.protocol
    head = html.escape(f"{self.method} | {self.model_spec} | protocol {p.name} "
                       f"({p.num_epochs} epochs) | {self.num_models} models | "
                       f"train {self.num_train} / test {self.num_test}")
    rows = "".join(
        f"<tr><td>{m.replace('_', ' ')}</td><td>{100 * self.mean(m):.2f}</td>"
        f"<td>{100 * self.std(m):.2f}</td></tr>" if math.isfinite(self.mean(m)) else
        f"<tr><td>{m.replace('_', ' ')}</td><td>n/a</td><td>n/a</td></tr>" for m in METRICS)
    table = self.group_means()
    nb = self.group_counts.shape[1]
    cells = []
    for c in range(self.group_counts.shape[0]):
      tds = "".join("<td>-</td>" if self.group_counts[c, b] == 0 else
                    f"<td>{100 * table[c, b]:.1f} [{int(self.group_counts[c, b])}]</td>"
                    for b in range(nb))
      cells.append(f"<tr><th>{c}</th>{tds}</tr>")
    return (f"<div><p>{head}</p><table><tr><th>metric</th><th>mean %</th><th>std %</th></tr>"
            f"{rows}</table><p>per-group accuracy % (rows: class, columns: bias value) "
            f"[test count]</p><table><tr><th>class</th>"
            + "".join(f"<th>{b}</th>" for b in range(nb)) + "</tr>" + "".join(cells)
            + "</table></div>")


# ---------------------------------------------------------------------------
# Validation split and evaluation
# ---------------------------------------------------------------------------

def split_validation(key: jax.Array, batch: Batch, *, fraction: float) -> tuple[Batch, Batch]:
  """Carves a class-stratified validation split out of training data.

  Use it for *any* model selection (an lr grid, checkpoints, hyper-parameters)
  so that the unbiased test set is never used to choose anything. Per class,
  ``round(fraction * n_c)`` samples (at least 1, at most ``n_c - 1``) go to the
  validation split; classes with a single sample stay in train. Host-side.

  Args:
    key: typed PRNG key.
    batch: training data (``bias``/``aligned`` are split along).
    fraction: validation fraction in (0, 1).

  Returns:
    ``(train, valid)`` Batches (numpy arrays), rows in random order.

  Example:
    >>> import jax, numpy as np
    >>> b = Batch(np.zeros((10, 4, 4, 3), np.float32), np.arange(10) % 2)
    >>> tr, va = split_validation(jax.random.key(0), b, fraction=0.2)
    >>> len(tr.labels), len(va.labels)
    (8, 2)
  """
  _check_key(key)
  if not (isinstance(fraction, (int, float)) and 0 < fraction < 1):
    raise ValueError(f"fraction must be in (0, 1), e.g. 0.1; got {fraction!r}")
  labels = np.asarray(batch.labels)
  if labels.ndim != 1 or len(labels) != len(batch.images):
    raise ValueError(f"batch.labels must be (n,) with n = {len(batch.images)}, got {labels.shape}")
  rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).tolist())
  valid_rows = []
  for c in np.unique(labels):
    rows = rng.permutation(np.flatnonzero(labels == c))
    if len(rows) < 2:
      continue
    k = min(max(int(round(fraction * len(rows))), 1), len(rows) - 1)
    valid_rows.append(rows[:k])
  valid_rows = np.concatenate(valid_rows) if valid_rows else np.zeros(0, np.int64)
  if len(valid_rows) == 0:
    raise ValueError("no class has 2 or more samples; nothing can be held out for validation")
  train_mask = np.ones(len(labels), bool)
  train_mask[valid_rows] = False
  train_rows = rng.permutation(np.flatnonzero(train_mask))
  valid_rows = rng.permutation(valid_rows)

  def take(rows):
    return Batch(*(None if f is None else np.asarray(f)[rows] for f in batch))

  return take(train_rows), take(valid_rows)


def _slice_tree(tree, i):
  return jax.tree.map(lambda a: a[i], tree)


def _metrics_for(preds, batch: Batch, num_classes: int, num_bias: int | None) -> GroupAccuracies:
  """Vectorised group accuracies for (M, n) predictions on ``batch``."""
  labels = jnp.asarray(batch.labels)
  if batch.bias is None:
    bias, nb = jnp.zeros_like(labels), 1
  else:
    bias = jnp.asarray(batch.bias)
    nb = num_bias if num_bias is not None else int(np.max(batch.bias)) + 1
    if int(np.max(batch.bias)) >= nb:
      raise ValueError(f"bias values reach {int(np.max(batch.bias))} but num_bias={nb}")
  aligned = None if batch.aligned is None else jnp.asarray(batch.aligned)
  if batch.bias is None and aligned is None:
    # Without bias annotations only overall (and per-class) accuracy is defined.
    aligned_arg = jnp.zeros_like(labels, dtype=bool)
  else:
    aligned_arg = aligned
  fn = functools.partial(group_accuracies, num_classes=num_classes, num_bias=nb)
  out = jax.vmap(lambda p: fn(p, labels, bias, aligned=aligned_arg))(preds)
  if batch.bias is None and aligned is None:
    nan = jnp.full_like(out.aligned, jnp.nan)
    out = out._replace(aligned=nan, conflicting=nan)
  return out


def evaluate_task(key: jax.Array, syn: SynSet, test: Batch, *, task: TrainTask, model: nn.Module,
                  protocol: str | Protocol, num_models: int = 5,
                  lrs: Sequence[float] | None = None, valid: Batch | None = None,
                  select_on: str = "overall", num_bias: int | None = None,
                  parallel: str = "auto", hparams: dict | None = None,
                  progress: bool = False) -> EvalResult:
  """:func:`evaluate` for any :class:`TrainTask` (used by :mod:`jaxdd.debias`).

  Args:
    key, syn, test, model, protocol, num_models, lrs, valid, select_on,
    num_bias, parallel: as :func:`evaluate`.
    task: the training method (e.g. :func:`standard_task`,
      :func:`jaxdd.debias.lff_task`).
    hparams: the method's hyper-parameters, stamped on the result.
    progress: as :func:`evaluate`.

  Returns:
    An :class:`EvalResult` with ``method = task.name``.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxdd import models
    >>> m = models.ConvNet(num_classes=2, width=4)
    >>> syn = SynSet(jnp.zeros((4, 8, 8, 3)), jnp.array([0, 0, 1, 1]))
    >>> test = Batch(jnp.zeros((2, 8, 8, 3)), jnp.array([0, 1]))
    >>> evaluate_task(jax.random.key(0), syn, test, task=standard_task(m), model=m,
    ...               protocol="smoke", num_models=1).method  # doctest: +SKIP
    'train_fresh'
  """
  _check_key(key)
  protocol = get_protocol(protocol)
  if not isinstance(num_models, int) or num_models < 1:
    raise ValueError(f"num_models must be a positive int, got {num_models!r}")
  if select_on not in METRICS:
    raise ValueError(f"select_on must be one of {METRICS}, got {select_on!r}")
  lrs = _check_lrs(lrs, protocol)
  if len(lrs) > 1 and valid is None:
    raise ValueError("an lr grid needs valid= (a validation Batch, e.g. from split_validation): "
                     "jaxdd never selects on the test set")
  images, labels = _check_syn(syn, getattr(model, "num_classes", None), "evaluate")
  num_classes = _num_classes(model, labels)
  test = _check_batch("test", test, images, num_classes, "evaluate")
  if valid is not None:
    valid = _check_batch("valid", valid, images, num_classes, "evaluate")
    if select_on != "overall" and valid.bias is None and valid.aligned is None:
      raise ValueError(f"select_on={select_on!r} needs valid.bias or valid.aligned")

  parallel = resolve_parallel(parallel)
  params, state, metrics = _train_many(key, images, labels, task=task, protocol=protocol,
                                       num_models=num_models, lrs=lrs, parallel=parallel,
                                       progress=progress)
  num_lrs = len(lrs)
  valid_scores = None
  sel = 0
  if valid is not None:
    flat = jax.tree.map(lambda a: a.reshape((num_lrs * num_models,) + a.shape[2:]),
                        (params, state))
    block = predict_block(protocol, valid.images.shape[0], parallel)
    preds = _predict_program(task, block, parallel)(*flat, valid.images)
    scores = getattr(_metrics_for(preds, valid, num_classes, num_bias), select_on)
    valid_scores = np.asarray(scores).reshape(num_lrs, num_models)
    if not np.isfinite(valid_scores).all():
      raise ValueError(f"the validation batch has no samples for select_on={select_on!r}; "
                       "use a validation set that contains them or select_on='overall'")
    # Ties go to the first lr in the given order.
    sel = int(np.argmax(valid_scores.mean(axis=1)))
  # Only the selected networks ever see the test set.
  chosen = _slice_tree((params, state), sel)
  block = predict_block(protocol, test.images.shape[0], parallel)
  preds = _predict_program(task, block, parallel)(*chosen, test.images)
  acc = jax.device_get(_metrics_for(preds, test, num_classes, num_bias))
  metrics = jax.device_get(_slice_tree(metrics, sel))
  return EvalResult(
      protocol=protocol, model_spec=model_spec(model), method=task.name, num_models=num_models,
      key_data=tuple(int(v) for v in np.asarray(jax.random.key_data(key)).ravel()),
      lrs=lrs, selected_lr=lrs[sel], selection="valid" if valid is not None else "none",
      select_on=select_on if valid is not None else None, valid_scores=valid_scores,
      overall=np.asarray(acc.overall), aligned=np.asarray(acc.aligned),
      conflicting=np.asarray(acc.conflicting), worst_group=np.asarray(acc.worst_group),
      group_table=np.asarray(acc.table), group_counts=np.asarray(acc.counts[0]),
      train_loss=np.asarray(metrics.loss), train_acc=np.asarray(metrics.acc),
      num_train=int(images.shape[0]), num_test=int(test.images.shape[0]),
      num_valid=0 if valid is None else int(valid.images.shape[0]), parallel=parallel,
      hparams=dict(hparams or {}))


def evaluate(key: jax.Array, syn: SynSet, test: Batch, *, model: nn.Module,
             protocol: str | Protocol = "dm", num_models: int = 5,
             lrs: Sequence[float] | None = None, valid: Batch | None = None,
             select_on: str = "overall", num_bias: int | None = None,
             parallel: str = "auto", progress: bool = False) -> EvalResult:
  """Trains ``num_models`` fresh networks on ``syn`` (one program) and tests them.

  With an lr grid, every (lr, model) pair trains in the same program; the lr
  with the best mean ``select_on`` accuracy on ``valid`` is chosen and only its
  networks are run on ``test``. The test set is never used to choose anything.

  Args:
    key: typed PRNG key; stamped on the result.
    syn: the synthetic (or any training) set.
    test: real test Batch; ``bias`` / ``aligned`` enable per-group metrics
      (without ``bias`` the groups are the classes; without both, aligned and
      conflicting accuracy are NaN).
    model: any Flax module in :mod:`jaxdd.models` (any classes / channels).
    protocol: protocol name or :class:`Protocol`.
    num_models: networks trained (and reported) per lr.
    lrs: optional learning-rate grid; more than one value requires ``valid``.
    valid: validation Batch (from the training distribution, e.g.
      :func:`split_validation`) for selection.
    select_on: validation metric for selection: ``overall`` (default),
      ``aligned``, ``conflicting`` or ``worst_group``.
    num_bias: number of bias values (default ``max(bias) + 1``).
    parallel: ``"auto"``, ``"vmap"`` or ``"map"``; see :func:`train_models`.
    progress: report training progress per network and epoch (tqdm bar or log
      lines; see :func:`train_models`). Results are identical either way.

  Returns:
    An :class:`EvalResult` (``.mean()``, ``.std()``, ``.to_dict()``,
    ``.format_table()``).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxdd import models
    >>> syn = SynSet(jnp.zeros((4, 8, 8, 3)), jnp.array([0, 0, 1, 1]))
    >>> test = Batch(jnp.zeros((6, 8, 8, 3)), jnp.array([0, 1, 0, 1, 0, 1]),
    ...              bias=jnp.array([0, 1, 1, 0, 0, 1]))
    >>> r = evaluate(jax.random.key(0), syn, test, model=models.ConvNet(num_classes=2, width=4),
    ...              protocol="smoke", num_models=2)  # doctest: +SKIP
    >>> r.overall.shape  # doctest: +SKIP
    (2,)
  """
  return evaluate_task(key, syn, test, task=standard_task(model), model=model,
                       protocol=protocol, num_models=num_models, lrs=lrs, valid=valid,
                       select_on=select_on, num_bias=num_bias, parallel=parallel,
                       progress=progress)
