"""DFA (Lee et al., NeurIPS 2021) as a training task: intrinsic and bias encoders, their
heads, and the swap of bias features across the batch."""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdd.debias.common import (ema_state, generalized_cross_entropy, num_classes_of,
                                 relative_difficulty, update_emas, value_task)
from jaxdd.models import TorchDense
from jaxdd.train import StepBatch, TrainTask, apply_train, cross_entropy, split_variables


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
  return value_task("dfa", _DFA(model, q, ema_alpha, lambda_dis_align, lambda_swap_align,
                                lambda_swap, swap_start, num_classes_of(model)))


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
    return params, {"intrinsic": si, "bias": sb, **ema_state(labels)}

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
    state = update_emas(state, batch.index, sg(ce_align), sg(ce_conflict), self.ema_alpha)
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
    >>> from jaxdd.debias import train_dfa
    >>> from jaxdd.structs import SynSet
    >>> m = models.ConvNet(num_classes=2, width=4)
    >>> syn = SynSet(jnp.zeros((4, 8, 8, 3)), jnp.array([0, 0, 1, 1]))
    >>> v, _ = train_dfa(jax.random.key(0), syn, model=m, protocol="smoke")  # doctest: +SKIP
    >>> dfa_predict(m, v, syn.images).shape  # doctest: +SKIP
    (4, 2)
  """
  z_i, _ = model.apply(variables["intrinsic"], images, return_features=True)
  z_b, _ = model.apply(variables["bias"], images, return_features=True)
  return TorchDense(num_classes_of(model)).apply({"params": variables["head_i"]},
                                               jnp.concatenate([z_i, z_b], -1))

