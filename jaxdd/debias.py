"""Post-distillation debiasing baselines: LfF and DFA trained on a SynSet.

Cui et al. (docs/protocols.md) compare their reweighted distillation
with "a state-of-the-art debiasing method applied on the same synthetic set":
the evaluation networks are trained on a *vanilla* distilled set with a
debiasing method that needs no bias labels. This module provides two such
methods, trained under the same :class:`~jaxdd.protocols.Protocol` as every
other number (SGD, schedule, DSA augmentation, epochs), compiled as one
``lax.scan`` like :func:`jaxdd.train.train_fresh`, and evaluated with the
same per-group metrics:

* **LfF** (Nam et al., "Learning from Failure", NeurIPS 2020; alinlab/LfF). A
  biased network is trained with the generalized cross-entropy (GCE, q = 0.7),
  which emphasises easy (bias-aligned) samples, alongside the debiased
  network. Each sample's CE under both networks is tracked as an exponential
  moving average (alpha = 0.7; the first update stores the loss itself),
  normalised per class by the class maximum of the EMA over the whole training
  set, and the debiased network's CE is weighted by the relative difficulty
  ``W(x) = L_b / (L_b + L_d + 1e-8)``. The debiased network is evaluated.
* **DFA** (Lee et al., "Learning Debiased Representation via Disentangled
  Feature Augmentation", NeurIPS 2021; kakaoenterprise/
  Learning-Debiased-Disentangled). Two encoders give intrinsic and bias
  features ``z_i``, ``z_b``; two linear heads read ``[z_i, z_b]`` (each head
  only back-propagates into its own encoder). The intrinsic head gets
  ``W(x)``-weighted CE, the bias head GCE, with W from the same per-class
  normalised EMAs. After a warm-up the bias features are swapped across the
  batch (``z_b[perm]``) to synthesise bias-conflicting features: the
  intrinsic head must still predict ``y``, the bias head ``y[perm]``.
  Loss: ``L_dis + lambda_swap * L_swap`` with ``L_dis = mean(W CE_i) +
  lambda_dis_align * mean(GCE_b)`` and ``L_swap = mean(W CE_i^swap) +
  lambda_swap_align * mean(GCE_b^swap)``. Prediction: the intrinsic head on
  ``[z_i, z_b]``. Defaults are the authors' Colored-MNIST values
  (lambda_dis_align = lambda_swap_align = 10, lambda_swap = 1, swap after
  10k of 50k steps, i.e. ``swap_start = 0.2`` of training).

GCE as in the LfF/DFA code: ``GCE = CE * q * stop_gradient(p_y) ** q``, whose
gradient is ``q`` times the gradient of the GCE formula ``(1 - p_y^q) / q``.

Simplifications (documented deviations from the original code): both methods
use the protocol's SGD (momentum 0.9, coupled weight decay, step decay, shared
by all their parameters) instead of Adam, the protocol's epochs instead of a
step budget, and the DSA augmentation of the protocol on the shared batch;
DFA's encoders are the evaluation architecture's feature extractor (its own
classifier is left unused) instead of the authors' MLP / ResNet18, and its
lr schedule is the protocol's. No validation-based checkpoint selection: the
final networks are evaluated, as for every other jaxdd number.

Data contract: as :mod:`jaxdd.evaluate` (NHWC float32 normalised images,
integer labels; soft labels are refused because the per-sample EMAs need a
class per row).
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdd._src.bound import bound
from jaxdd._src.checks import check_key as _check_key
from jaxdd._src.checks import check_syn as _check_syn
from jaxdd.evaluate import evaluate_task
from jaxdd.protocols import Protocol, get_protocol
from jaxdd.results import EvalResult
from jaxdd.train import (StepBatch, TrainMetrics, TrainTask, _train_single, apply_train,
                         cross_entropy, split_variables)
from jaxdd.models import TorchDense
from jaxdd.structs import Batch, SynSet

METHODS = ("lff", "dfa")


def generalized_cross_entropy(logits: jax.Array, labels: jax.Array, q: float = 0.7) -> jax.Array:
  """Per-sample GCE as implemented by LfF/DFA: ``CE * q * stop_grad(p_y)^q``.

  Args:
    logits: (n, classes).
    labels: (n,) integer labels.
    q: GCE exponent (0.7).

  Returns:
    (n,) losses; the gradient is ``q * p_y^q * dCE``, i.e. ``q`` times the
    gradient of ``(1 - p_y^q) / q`` (Zhang & Sabuncu 2018).

  Example:
    >>> import jax.numpy as jnp
    >>> float(generalized_cross_entropy(jnp.zeros((1, 2)), jnp.array([0]))[0])  # doctest: +ELLIPSIS
    0.298...
  """
  p_y = jnp.take_along_axis(jax.nn.softmax(logits, -1), labels[:, None], axis=-1)[:, 0]
  return cross_entropy(logits, labels) * q * jax.lax.stop_gradient(p_y) ** q


def update_ema(ema: jax.Array, updated: jax.Array, index: jax.Array, losses: jax.Array,
               alpha: float) -> tuple[jax.Array, jax.Array]:
  """LfF's per-sample loss EMA: ``e <- alpha * e + (1 - alpha * seen) * loss``.

  The first update of a sample (``seen == 0``) stores the loss itself.

  Args:
    ema: (n,) current EMA over the whole training set.
    updated: (n,) 0/1 flags, 1 once a sample has been updated.
    index: (b,) rows of this batch (distinct).
    losses: (b,) this batch's per-sample losses (no gradient).
    alpha: EMA coefficient (0.7).

  Returns:
    The new ``(ema, updated)``.

  Example:
    >>> import jax.numpy as jnp
    >>> e, u = update_ema(jnp.zeros(2), jnp.zeros(2), jnp.array([1]), jnp.array([3.0]), 0.7)
    >>> e.tolist(), u.tolist()
    ([0.0, 3.0], [0.0, 1.0])
  """
  new = alpha * ema[index] + (1.0 - alpha * updated[index]) * losses
  return ema.at[index].set(new), updated.at[index].set(1.0)


def relative_difficulty(ema_b: jax.Array, ema_d: jax.Array, labels_all: jax.Array,
                        index: jax.Array, num_classes: int) -> jax.Array:
  """LfF's weights ``W = L_b / (L_b + L_d + 1e-8)`` for the rows ``index``.

  ``L_b``, ``L_d`` are the EMAs of the biased / debiased losses, each divided by
  the maximum EMA of the sample's class over the whole training set.

  Args:
    ema_b: (n,) EMA of the biased model's losses.
    ema_d: (n,) EMA of the debiased model's losses.
    labels_all: (n,) labels of the whole training set.
    index: (b,) rows of the batch.
    num_classes: number of classes.

  Returns:
    (b,) weights in [0, 1].

  Example:
    >>> import jax.numpy as jnp
    >>> w = relative_difficulty(jnp.array([1.0, 2.0]), jnp.array([2.0, 2.0]),
    ...                         jnp.array([0, 0]), jnp.array([0]), 1)
    >>> round(float(w[0]), 4)  # (1/2) / (1/2 + 2/2)
    0.3333
  """
  max_b = jax.ops.segment_max(ema_b, labels_all, num_segments=num_classes)
  max_d = jax.ops.segment_max(ema_d, labels_all, num_segments=num_classes)
  y = labels_all[index]
  # Guard the division only against an all-zero class (a loss of exactly 0).
  lb = ema_b[index] / jnp.maximum(max_b[y], 1e-12)
  ld = ema_d[index] / jnp.maximum(max_d[y], 1e-12)
  return lb / (lb + ld + 1e-8)


def _num_classes(model: nn.Module) -> int:
  n = getattr(model, "num_classes", None)
  if not isinstance(n, int):
    raise ValueError("debiasing needs a model with an int num_classes field (jaxdd.models)")
  return n


def _ema_state(labels):
  n = labels.shape[0]
  return {"ema_b": jnp.zeros(n, jnp.float32), "ema_d": jnp.zeros(n, jnp.float32),
          "updated": jnp.zeros(n, jnp.float32), "labels": labels}


def _update_emas(state, index, loss_b, loss_d, alpha):
  # Both EMAs are updated at the same rows, so one 'updated' flag serves both.
  ema_b, _ = update_ema(state["ema_b"], state["updated"], index, loss_b, alpha)
  ema_d, updated = update_ema(state["ema_d"], state["updated"], index, loss_d, alpha)
  return {**state, "ema_b": ema_b, "ema_d": ema_d, "updated": updated}


def lff_task(model: nn.Module, q: float = 0.7, ema_alpha: float = 0.7) -> TrainTask:
  """The LfF training method as a :class:`~jaxdd.train.TrainTask` (equal for equal arguments).

  Args:
    model: evaluation architecture (both networks use it).
    q: GCE exponent.
    ema_alpha: per-sample loss EMA coefficient.

  Returns:
    A task whose params are ``{"biased", "debiased"}``; it predicts with the
    debiased network.

  Example:
    >>> from jaxdd import models
    >>> lff_task(models.ConvNet(num_classes=2, width=4)).name
    'lff'
  """
  return _value_task("lff", _LfF(model, q, ema_alpha, _num_classes(model)))


def _value_task(name: str, cfg) -> TrainTask:
  """The task whose functions are ``cfg``'s methods, bound to ``cfg`` as values (equal
  arguments give equal tasks, which share compiled programs)."""
  kind = type(cfg)
  return TrainTask(name, bound(kind.init, cfg), bound(kind.loss, cfg), bound(kind.predict, cfg))


@dataclasses.dataclass(frozen=True)
class _LfF:
  """LfF's arguments; its methods are the task's functions (value-compared through them)."""
  model: nn.Module
  q: float
  ema_alpha: float
  num_classes: int

  def init(self, key, images, labels):
    kb, kd = jax.random.split(key)
    pb, sb = split_variables(self.model.init(kb, images[:1], train=False))
    pd, sd = split_variables(self.model.init(kd, images[:1], train=False))
    return {"biased": pb, "debiased": pd}, {"biased": sb, "debiased": sd, **_ema_state(labels)}

  def loss(self, params, state, batch: StepBatch):
    kb, kd = jax.random.split(batch.key)
    logits_b, sb = apply_train(self.model, params["biased"], state["biased"], batch.images, kb)
    logits_d, sd = apply_train(self.model, params["debiased"], state["debiased"], batch.images,
                               kd)
    ce_b = cross_entropy(logits_b, batch.labels)
    ce_d = cross_entropy(logits_d, batch.labels)
    state = _update_emas(state, batch.index, jax.lax.stop_gradient(ce_b),
                         jax.lax.stop_gradient(ce_d), self.ema_alpha)
    w = relative_difficulty(state["ema_b"], state["ema_d"], state["labels"], batch.index,
                            self.num_classes)
    total = (generalized_cross_entropy(logits_b, batch.labels, self.q).mean()
             + (ce_d * jax.lax.stop_gradient(w)).mean())
    return total, ({**state, "biased": sb, "debiased": sd}, logits_d)

  def predict(self, params, state, images):
    return self.model.apply({"params": params["debiased"], **state["debiased"]}, images,
                            train=False)


def dfa_task(model: nn.Module, q: float = 0.7, ema_alpha: float = 0.7,
             lambda_dis_align: float = 10.0, lambda_swap_align: float = 10.0,
             lambda_swap: float = 1.0, swap_start: float = 0.2) -> TrainTask:
  """The DFA training method as a :class:`~jaxdd.train.TrainTask` (equal for equal arguments).

  Args:
    model: evaluation architecture; its ``return_features`` output is the
      encoder (two copies: intrinsic and bias).
    q: GCE exponent.
    ema_alpha: per-sample loss EMA coefficient.
    lambda_dis_align: weight of the bias head's GCE in ``L_dis``.
    lambda_swap_align: weight of the bias head's swapped GCE in ``L_swap``.
    lambda_swap: weight of ``L_swap``.
    swap_start: fraction of training steps before the feature swap starts.

  Returns:
    A task with params ``{"intrinsic", "bias", "head_i", "head_b"}``.

  Example:
    >>> from jaxdd import models
    >>> dfa_task(models.ConvNet(num_classes=2, width=4)).name
    'dfa'
  """
  return _value_task("dfa", _DFA(model, q, ema_alpha, lambda_dis_align, lambda_swap_align,
                                lambda_swap, swap_start, _num_classes(model)))


@dataclasses.dataclass(frozen=True)
class _DFA:
  """DFA's arguments; its methods are the task's functions (value-compared through them)."""
  model: nn.Module
  q: float
  ema_alpha: float
  lambda_dis_align: float
  lambda_swap_align: float
  lambda_swap: float
  swap_start: float
  num_classes: int

  @property
  def head(self) -> nn.Module:
    return TorchDense(self.num_classes)

  def features(self, params, state, x, key):
    (z, _), state = apply_train(self.model, params, state, x, key, return_features=True)
    return z, state

  def init(self, key, images, labels):
    model, head = self.model, self.head
    ki, kb, khi, khb = jax.random.split(key, 4)
    pi, si = split_variables(model.init(ki, images[:1], train=False))
    pb, sb = split_variables(model.init(kb, images[:1], train=False))
    z, _ = model.apply({"params": pi, **si}, images[:1], return_features=True)
    zz = jnp.zeros((1, 2 * z.shape[-1]), jnp.float32)
    params = {"intrinsic": pi, "bias": pb, "head_i": head.init(khi, zz)["params"],
              "head_b": head.init(khb, zz)["params"]}
    return params, {"intrinsic": si, "bias": sb, **_ema_state(labels)}

  def loss(self, params, state, batch: StepBatch):
    head, q = self.head, self.q
    ki, kb, kp = jax.random.split(batch.key, 3)
    y = batch.labels
    z_i, si = self.features(params["intrinsic"], state["intrinsic"], batch.images, ki)
    z_b, sb = self.features(params["bias"], state["bias"], batch.images, kb)
    sg = jax.lax.stop_gradient
    # Each head back-propagates only into its own encoder (disentanglement).
    pred_conflict = head.apply({"params": params["head_i"]}, jnp.concatenate([z_i, sg(z_b)], -1))
    pred_align = head.apply({"params": params["head_b"]}, jnp.concatenate([sg(z_i), z_b], -1))
    ce_conflict = cross_entropy(pred_conflict, y)
    ce_align = cross_entropy(pred_align, y)
    state = _update_emas(state, batch.index, sg(ce_align), sg(ce_conflict), self.ema_alpha)
    w = sg(relative_difficulty(state["ema_b"], state["ema_d"], state["labels"], batch.index,
                               self.num_classes))
    loss_dis = (ce_conflict * w).mean() + self.lambda_dis_align * generalized_cross_entropy(
        pred_align, y, q).mean()
    perm = jax.random.permutation(kp, y.shape[0])
    z_b_swap, y_swap = z_b[perm], y[perm]
    pred_mix_conflict = head.apply({"params": params["head_i"]},
                                   jnp.concatenate([z_i, sg(z_b_swap)], -1))
    pred_mix_align = head.apply({"params": params["head_b"]},
                                jnp.concatenate([sg(z_i), z_b_swap], -1))
    loss_swap = (cross_entropy(pred_mix_conflict, y) * w).mean() + self.lambda_swap_align * (
        generalized_cross_entropy(pred_mix_align, y_swap, q).mean())
    swap_on = (batch.progress >= self.swap_start).astype(jnp.float32)
    total = loss_dis + swap_on * self.lambda_swap * loss_swap
    return total, ({**state, "intrinsic": si, "bias": sb}, pred_conflict)

  def predict(self, params, state, images):
    model = self.model
    z_i, _ = model.apply({"params": params["intrinsic"], **state["intrinsic"]}, images,
                         train=False, return_features=True)
    z_b, _ = model.apply({"params": params["bias"], **state["bias"]}, images, train=False,
                         return_features=True)
    return self.head.apply({"params": params["head_i"]}, jnp.concatenate([z_i, z_b], -1))


_DEFAULTS = {
    "lff": {"q": 0.7, "ema_alpha": 0.7},
    "dfa": {"q": 0.7, "ema_alpha": 0.7, "lambda_dis_align": 10.0, "lambda_swap_align": 10.0,
            "lambda_swap": 1.0, "swap_start": 0.2},
}


def _task(method: str, model: nn.Module, hparams: dict) -> tuple[TrainTask, dict]:
  if method not in METHODS:
    raise ValueError(f"unknown debiasing method {method!r}; use one of {METHODS}")
  unknown = set(hparams) - set(_DEFAULTS[method])
  if unknown:
    raise ValueError(f"{method} takes hyper-parameters {sorted(_DEFAULTS[method])}, got "
                     f"unknown {sorted(unknown)}")
  full = {**_DEFAULTS[method], **{k: float(v) for k, v in hparams.items()}}
  if not 0 < full["q"] <= 1 or not 0 <= full["ema_alpha"] < 1:
    raise ValueError(f"need 0 < q <= 1 and 0 <= ema_alpha < 1, got {full}")
  if method == "dfa" and not 0 <= full["swap_start"] <= 1:
    raise ValueError(f"swap_start is a fraction of training in [0, 1], got {full['swap_start']}")
  factory = lff_task if method == "lff" else dfa_task
  return factory(model, **full), full


def _hard_labels_only(syn: SynSet, model, who: str) -> tuple[jax.Array, jax.Array]:
  images, labels = _check_syn(syn, _num_classes(model), who)
  if labels.ndim != 1:
    raise ValueError("LfF/DFA track a loss per (sample, class) and need integer labels; "
                     "pass hard labels (argmax of the soft ones)")
  return images, labels


def _train_method(method, key, syn, model, protocol, lr, hparams):
  _check_key(key)
  protocol = get_protocol(protocol)
  task, _ = _task(method, model, hparams)
  images, labels = _hard_labels_only(syn, model, f"train_{method}")
  lr = protocol.lr if lr is None else lr
  params, state, metrics = _train_single(task, protocol)(key, jnp.float32(lr), images, labels)
  return params, state, metrics


def train_lff(key: jax.Array, syn: SynSet, *, model: nn.Module,
              protocol: str | Protocol = "dm", lr: float | None = None,
              **hparams) -> tuple[dict, TrainMetrics]:
  """Trains an LfF pair (biased + debiased network) on ``syn``, one compiled scan.

  Args:
    key: typed PRNG key.
    syn: training set with integer labels (e.g. a vanilla distilled set).
    model: evaluation architecture.
    protocol: protocol name or :class:`~jaxdd.protocols.Protocol`.
    lr: override of ``protocol.lr``.
    **hparams: ``q`` (0.7), ``ema_alpha`` (0.7).

  Returns:
    ``({"debiased": variables, "biased": variables}, metrics)``; metrics are
    the debiased network's per-epoch training loss (the total LfF loss) and
    accuracy.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxdd import models
    >>> syn = SynSet(jnp.zeros((4, 8, 8, 3)), jnp.array([0, 0, 1, 1]))
    >>> v, m = train_lff(jax.random.key(0), syn, model=models.ConvNet(num_classes=2, width=4),
    ...                  protocol="smoke")  # doctest: +SKIP
    >>> sorted(v)  # doctest: +SKIP
    ['biased', 'debiased']
  """
  params, state, metrics = _train_method("lff", key, syn, model, protocol, lr, hparams)
  return ({"debiased": {"params": params["debiased"], **state["debiased"]},
           "biased": {"params": params["biased"], **state["biased"]}}, metrics)


def train_dfa(key: jax.Array, syn: SynSet, *, model: nn.Module,
              protocol: str | Protocol = "dm", lr: float | None = None,
              **hparams) -> tuple[dict, TrainMetrics]:
  """Trains DFA (intrinsic + bias encoders and heads) on ``syn``, one compiled scan.

  Args:
    key: typed PRNG key.
    syn: training set with integer labels.
    model: evaluation architecture (the encoders).
    protocol: protocol name or :class:`~jaxdd.protocols.Protocol`.
    lr: override of ``protocol.lr``.
    **hparams: ``q``, ``ema_alpha``, ``lambda_dis_align``,
      ``lambda_swap_align``, ``lambda_swap``, ``swap_start`` (see
      :func:`dfa_task`).

  Returns:
    ``({"intrinsic", "bias": flax variables, "head_i", "head_b": head
    params}, metrics)``; predict with :func:`dfa_predict`.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxdd import models
    >>> syn = SynSet(jnp.zeros((4, 8, 8, 3)), jnp.array([0, 0, 1, 1]))
    >>> v, m = train_dfa(jax.random.key(0), syn, model=models.ConvNet(num_classes=2, width=4),
    ...                  protocol="smoke")  # doctest: +SKIP
    >>> sorted(v)  # doctest: +SKIP
    ['bias', 'head_b', 'head_i', 'intrinsic']
  """
  params, state, metrics = _train_method("dfa", key, syn, model, protocol, lr, hparams)
  return ({"intrinsic": {"params": params["intrinsic"], **state["intrinsic"]},
           "bias": {"params": params["bias"], **state["bias"]},
           "head_i": params["head_i"], "head_b": params["head_b"]}, metrics)


def dfa_predict(model: nn.Module, variables: dict, images: jax.Array) -> jax.Array:
  """Logits of a trained DFA model (intrinsic head on ``[z_i, z_b]``).

  Args:
    model: the architecture passed to :func:`train_dfa`.
    variables: its first output.
    images: (n, H, W, C).

  Returns:
    (n, num_classes) logits.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxdd import models
    >>> m = models.ConvNet(num_classes=2, width=4)
    >>> syn = SynSet(jnp.zeros((4, 8, 8, 3)), jnp.array([0, 0, 1, 1]))
    >>> v, _ = train_dfa(jax.random.key(0), syn, model=m, protocol="smoke")  # doctest: +SKIP
    >>> dfa_predict(m, v, syn.images).shape  # doctest: +SKIP
    (4, 2)
  """
  z_i, _ = model.apply(variables["intrinsic"], images, return_features=True)
  z_b, _ = model.apply(variables["bias"], images, return_features=True)
  return TorchDense(_num_classes(model)).apply({"params": variables["head_i"]},
                                               jnp.concatenate([z_i, z_b], -1))


def evaluate_debiased(key: jax.Array, syn: SynSet, test: Batch, *, method: str = "lff",
                      model: nn.Module, protocol: str | Protocol = "dm", num_models: int = 5,
                      lrs: Sequence[float] | None = None, valid: Batch | None = None,
                      select_on: str = "overall", num_bias: int | None = None,
                      parallel: str = "auto", progress: bool = False,
                      **hparams) -> EvalResult:
  """Trains ``num_models`` debiased networks on ``syn`` with LfF or DFA and tests them.

  Same protocol, programs and metrics as :func:`jaxdd.evaluate.evaluate_synset`; the
  result is stamped with ``method`` and the method's full hyper-parameters.

  Args:
    key: typed PRNG key.
    syn: the (vanilla distilled) training set, integer labels.
    test: real test Batch (``bias`` / ``aligned`` for group metrics).
    method: ``"lff"`` or ``"dfa"``.
    model: evaluation architecture.
    protocol: protocol name or Protocol.
    num_models: networks (method instances) trained.
    lrs: optional lr grid (requires ``valid``).
    valid: validation Batch for lr selection.
    select_on: validation metric for selection.
    num_bias: number of bias values (default ``max(bias) + 1``).
    parallel: ``"auto"``, ``"vmap"`` or ``"map"``.
    progress: report training progress (see :func:`jaxdd.evaluate.evaluate_synset`).
    **hparams: the method's hyper-parameters (see :func:`lff_task`,
      :func:`dfa_task`).

  Returns:
    An :class:`~jaxdd.results.EvalResult` with ``method`` = ``"lff"`` /
    ``"dfa"``.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxdd import models
    >>> syn = SynSet(jnp.zeros((4, 8, 8, 3)), jnp.array([0, 0, 1, 1]))
    >>> test = Batch(jnp.zeros((4, 8, 8, 3)), jnp.array([0, 1, 0, 1]), bias=jnp.array([0, 1, 1, 0]))
    >>> r = evaluate_debiased(jax.random.key(0), syn, test, method="lff",
    ...                       model=models.ConvNet(num_classes=2, width=4), protocol="smoke",
    ...                       num_models=2)  # doctest: +SKIP
    >>> r.method  # doctest: +SKIP
    'lff'
  """
  task, full = _task(method, model, hparams)
  _hard_labels_only(syn, model, "evaluate_debiased")
  return evaluate_task(key, syn, test, task=task, model=model, protocol=protocol,
                       num_models=num_models, lrs=lrs, valid=valid, select_on=select_on,
                       num_bias=num_bias, parallel=parallel, hparams=full, progress=progress)
