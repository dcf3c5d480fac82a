"""Training and evaluating a debiasing method on a SynSet: the hyper-parameter checks, one
compiled training scan, and the evaluation under a protocol."""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdd._src.checks import check_key as _check_key
from jaxdd._src.checks import check_syn as _check_syn
from jaxdd.debias.common import num_classes_of
from jaxdd.debias.dfa import dfa_task
from jaxdd.debias.lff import lff_task
from jaxdd.debias.selecmix import selecmix_task
from jaxdd.evaluate import evaluate_task
from jaxdd.protocols import Protocol, get_protocol
from jaxdd.results import EvalResult
from jaxdd.structs import Batch, SynSet
from jaxdd.train import TrainMetrics, TrainTask, _train_single

METHODS = ("lff", "dfa", "selecmix")

_DEFAULTS = {
    "lff": {"q": 0.7, "ema_alpha": 0.7},
    "dfa": {"q": 0.7, "ema_alpha": 0.7, "lambda_dis_align": 10.0, "lambda_swap_align": 10.0,
            "lambda_swap": 1.0, "swap_start": 0.2},
    "selecmix": {"tau": 0.2, "q": 0.7, "lam_max": 0.5, "mix_weight": 1.0, "clean_weight": 0.0},
}
_FACTORIES = {"lff": lff_task, "dfa": dfa_task, "selecmix": selecmix_task}


def _task(method: str, model: nn.Module, hparams: dict) -> tuple[TrainTask, dict]:
  if method not in METHODS:
    raise ValueError(f"unknown debiasing method {method!r}; use one of {METHODS}")
  unknown = set(hparams) - set(_DEFAULTS[method])
  if unknown:
    raise ValueError(f"{method} takes hyper-parameters {sorted(_DEFAULTS[method])}, got "
                     f"unknown {sorted(unknown)}")
  full = {**_DEFAULTS[method], **{k: float(v) for k, v in hparams.items()}}
  if method == "selecmix":
    _check_selecmix(full)
  elif not 0 < full["q"] <= 1 or not 0 <= full["ema_alpha"] < 1:
    raise ValueError(f"need 0 < q <= 1 and 0 <= ema_alpha < 1, got {full}")
  if method == "dfa" and not 0 <= full["swap_start"] <= 1:
    raise ValueError(f"swap_start is a fraction of training in [0, 1], got {full['swap_start']}")
  return _FACTORIES[method](model, **full), full


def _check_selecmix(full: dict) -> None:
  if not full["tau"] > 0 or not 0 <= full["q"] <= 1 or not 0 <= full["lam_max"] <= 1:
    raise ValueError(f"selecmix needs tau > 0, 0 <= q <= 1 and 0 <= lam_max <= 1, got {full}")
  if min(full["mix_weight"], full["clean_weight"]) < 0 or not (full["mix_weight"]
                                                               or full["clean_weight"]):
    raise ValueError("selecmix's mix_weight and clean_weight are >= 0 and not both 0, got "
                     f"{full['mix_weight']} and {full['clean_weight']}")


def _hard_labels_only(syn: SynSet, model, who: str) -> tuple[jax.Array, jax.Array]:
  images, labels = _check_syn(syn, num_classes_of(model), who)
  if labels.ndim != 1:
    raise ValueError("LfF, DFA and SelecMix need a class per sample (loss EMAs, pairs by label): "
                     "pass integer labels (the argmax of the soft ones)")
  return images, labels


def _train_method(method, key, syn, model, protocol, lr, hparams):
  _check_key(key)
  protocol = get_protocol(protocol)
  task, _ = _task(method, model, hparams)
  images, labels = _hard_labels_only(syn, model, f"train_{method}")
  lr = protocol.lr if lr is None else lr
  params, state, metrics = _train_single(task, protocol)(key, jnp.float32(lr), images, labels)
  # A network (params with a state entry of the same name) becomes its flax variables; a
  # head without state stays its params.
  return ({name: {"params": p, **state[name]} if name in state else p
           for name, p in params.items()}, metrics)


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
  return _train_method("lff", key, syn, model, protocol, lr, hparams)


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
  return _train_method("dfa", key, syn, model, protocol, lr, hparams)


def train_selecmix(key: jax.Array, syn: SynSet, *, model: nn.Module,
                   protocol: str | Protocol = "dm", lr: float | None = None,
                   **hparams) -> tuple[dict, TrainMetrics]:
  """Trains a SelecMix classifier (with its auxiliary GSC network) on ``syn``, one compiled scan.

  Args:
    key: typed PRNG key.
    syn: training set with integer labels.
    model: evaluation architecture (the classifier and the auxiliary encoder).
    protocol: protocol name or :class:`~jaxdd.protocols.Protocol`.
    lr: override of ``protocol.lr``.
    **hparams: ``tau`` (0.2), ``q`` (0.7), ``lam_max`` (0.5), ``mix_weight`` (1),
      ``clean_weight`` (0) (see :func:`~jaxdd.debias.selecmix.selecmix_task`).

  Returns:
    ``({"classifier": variables, "encoder": variables, "head": head params}, metrics)``;
    predict with ``model.apply(variables["classifier"], images)``. The metrics' accuracy
    is the classifier's on the mixed batches against their partners' labels.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxdd import models
    >>> syn = SynSet(jnp.zeros((4, 8, 8, 3)), jnp.array([0, 0, 1, 1]))
    >>> v, m = train_selecmix(jax.random.key(0), syn, model=models.ConvNet(num_classes=2, width=4),
    ...                       protocol="smoke")  # doctest: +SKIP
    >>> sorted(v)  # doctest: +SKIP
    ['classifier', 'encoder', 'head']
  """
  return _train_method("selecmix", key, syn, model, protocol, lr, hparams)


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
    method: ``"lff"``, ``"dfa"`` or ``"selecmix"``.
    model: evaluation architecture.
    protocol: protocol name or Protocol.
    num_models: networks (method instances) trained.
    lrs: optional lr grid (requires ``valid``).
    valid: validation Batch for lr selection.
    select_on: validation metric for selection.
    num_bias: number of bias values (default ``max(bias) + 1``).
    parallel: ``"auto"``, ``"vmap"`` or ``"map"``.
    progress: report training progress (see :func:`jaxdd.evaluate.evaluate_synset`).
    **hparams: the method's hyper-parameters (see :func:`~jaxdd.debias.lff_task`,
      :func:`~jaxdd.debias.dfa_task`, :func:`~jaxdd.debias.selecmix_task`).

  Returns:
    An :class:`~jaxdd.results.EvalResult` with ``method`` = ``"lff"``, ``"dfa"`` or
    ``"selecmix"``.

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
