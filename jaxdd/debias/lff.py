"""LfF (Nam et al., NeurIPS 2020) as a training task: a GCE-trained biased network beside a
debiased one whose cross-entropy is weighted by relative difficulty."""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax

from jaxdd.debias.common import (ema_state, generalized_cross_entropy, num_classes_of,
                                 relative_difficulty, update_emas, value_task)
from jaxdd.train import StepBatch, TrainTask, apply_train, cross_entropy, split_variables


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
  return value_task("lff", _LfF(model, q, ema_alpha, num_classes_of(model)))



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
    return {"biased": pb, "debiased": pd}, {"biased": sb, "debiased": sd, **ema_state(labels)}

  def loss(self, params, state, batch: StepBatch):
    kb, kd = jax.random.split(batch.key)
    logits_b, sb = apply_train(self.model, params["biased"], state["biased"], batch.images, kb)
    logits_d, sd = apply_train(self.model, params["debiased"], state["debiased"], batch.images,
                               kd)
    ce_b = cross_entropy(logits_b, batch.labels)
    ce_d = cross_entropy(logits_d, batch.labels)
    state = update_emas(state, batch.index, jax.lax.stop_gradient(ce_b),
                         jax.lax.stop_gradient(ce_d), self.ema_alpha)
    w = relative_difficulty(state["ema_b"], state["ema_d"], state["labels"], batch.index,
                            self.num_classes)
    total = (generalized_cross_entropy(logits_b, batch.labels, self.q).mean()
             + (ce_d * jax.lax.stop_gradient(w)).mean())
    return total, ({**state, "biased": sb, "debiased": sd}, logits_d)

  def predict(self, params, state, images):
    return self.model.apply({"params": params["debiased"], **state["debiased"]}, images,
                            train=False)

