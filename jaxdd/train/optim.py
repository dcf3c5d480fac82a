"""The SGD update of the trainer: ``torch.optim.SGD`` in optax.

Example:
  >>> tx = torch_sgd(0.1, momentum=0.9, weight_decay=5e-4)
  >>> callable(tx.init) and callable(tx.update)
  True
"""
from __future__ import annotations

import optax


def torch_sgd(learning_rate, *, momentum: float, weight_decay: float
              ) -> optax.GradientTransformation:
  """``torch.optim.SGD`` (dampening 0, no Nesterov) with coupled weight decay, in optax.

  ``d = g + weight_decay * p; buf = momentum * buf + d; p = p - lr * buf``:
  ``optax.add_decayed_weights`` before ``optax.sgd``. A fresh state (zero
  ``buf``) is torch's fresh optimiser, whose first step sets ``buf = d``. The
  state does not depend on ``learning_rate``, which may be a traced value or
  an optax schedule. The trainer (:func:`fit`) and the surrogate
  (:func:`jaxdd.surrogate.make_optimizer`) build their updates with it.

  Args:
    learning_rate: the lr (a float, a traced scalar or an optax schedule).
    momentum: momentum factor (0 allowed: ``buf = d``).
    weight_decay: coupled weight decay on every parameter.

  Returns:
    An ``optax.GradientTransformation``.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> tx = torch_sgd(0.25, momentum=0.9, weight_decay=0.5)
    >>> p = jnp.array([2.0])
    >>> u, s = tx.update(jnp.array([1.0]), tx.init(p), p)  # d = 1 + 0.5 * 2 = 2 = buf
    >>> optax.apply_updates(p, u).tolist()  # 2 - 0.25 * 2
    [1.5]
  """
  return optax.chain(optax.add_decayed_weights(weight_decay),
                     optax.sgd(learning_rate, momentum=momentum))
