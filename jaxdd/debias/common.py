"""What LfF and DFA share: the generalized cross-entropy, the per-sample loss EMAs and the
relative-difficulty weights, and the task built from a frozen dataclass of arguments."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdd._src.bound import bound
from jaxdd.train import TrainTask, cross_entropy


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


def gce_loss(logits: jax.Array, labels: jax.Array, q: float = 0.7) -> jax.Array:
  """Per-sample generalized cross-entropy as Zhang & Sabuncu (2018) write it:
  ``L_q = (1 - p_y^q) / q``; ``q = 0`` is its limit, the cross-entropy ``-log p_y``.

  Computed from ``log p_y`` as ``-expm1(q log p_y) / q``, exact for small ``q`` and for
  ``p_y`` near 1. Its gradient is ``p_y^q`` times the cross-entropy's;
  :func:`generalized_cross_entropy` (LfF's code) has ``q`` times this gradient.

  Args:
    logits: (n, classes).
    labels: (n,) integer labels.
    q: the exponent in [0, 1] (LfF: 0.7; 1 gives ``1 - p_y``).

  Returns:
    (n,) losses.

  Example:
    >>> import jax.numpy as jnp
    >>> round(float(gce_loss(jnp.zeros((1, 2)), jnp.array([0]), 1.0)[0]), 4)  # 1 - 1/2
    0.5
  """
  logp = jnp.take_along_axis(jax.nn.log_softmax(logits, -1), labels[:, None], axis=-1)[:, 0]
  q = jnp.asarray(q, logp.dtype)
  safe = jnp.where(q > 0, q, 1.0)
  return jnp.where(q > 0, -jnp.expm1(safe * logp) / safe, -logp)


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


def num_classes_of(model: nn.Module) -> int:
  n = getattr(model, "num_classes", None)
  if not isinstance(n, int):
    raise ValueError("debiasing needs a model with an int num_classes field (jaxdd.models)")
  return n


def ema_state(labels):
  n = labels.shape[0]
  return {"ema_b": jnp.zeros(n, jnp.float32), "ema_d": jnp.zeros(n, jnp.float32),
          "updated": jnp.zeros(n, jnp.float32), "labels": labels}


def update_emas(state, index, loss_b, loss_d, alpha):
  # Both EMAs are updated at the same rows, so one 'updated' flag serves both.
  ema_b, _ = update_ema(state["ema_b"], state["updated"], index, loss_b, alpha)
  ema_d, updated = update_ema(state["ema_d"], state["updated"], index, loss_d, alpha)
  return {**state, "ema_b": ema_b, "ema_d": ema_d, "updated": updated}



def value_task(name: str, cfg) -> TrainTask:
  """The task whose functions are ``cfg``'s methods, bound to ``cfg`` as values (equal
  arguments give equal tasks, which share compiled programs)."""
  kind = type(cfg)
  return TrainTask(name, bound(kind.init, cfg), bound(kind.loss, cfg), bound(kind.predict, cfg))

