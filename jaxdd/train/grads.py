"""The gradient of one training step, on micro-batches where the active policy says so.

Example:
  >>> micro_batch_size(96, 32)
  32
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from jaxdd import policy
from jaxdd._src import winograd
from jaxdd.tasks import StepBatch, TrainTask


# Micro-batch size on CPU of per-sample tasks (see TrainTask.per_sample) and of
# prediction: the cpu policy's (jaxdd.policy.POLICIES["cpu"].micro_batch, chosen
# by timing; docs/results/speed-evaluation.md, "Evaluation side by side with the PyTorch reference"). The trainer reads the active policy;
# to try another size, pin one with
# policy.use(dataclasses.replace(policy.POLICIES["cpu"], name=..., micro_batch=...)).
CPU_MICRO_BATCH = policy.POLICIES["cpu"].micro_batch


def micro_batch_size(batch: int, target: int) -> int:
  """The divisor of ``batch`` closest to ``target`` (ties: the larger).

  Example:
    >>> micro_batch_size(256, 32), micro_batch_size(100, 32), micro_batch_size(7, 32)
    (32, 25, 7)
  """
  divisors = [d for d in range(1, batch + 1) if batch % d == 0]
  return min(divisors, key=lambda d: (abs(d - target), -d))


def batch_grad(task: TrainTask, grad_fn: Callable, params, state, batch: StepBatch):
  """``grad_fn(params, state, batch)``, on micro-batches where the policy says so (traceable).

  Args:
    task: the :class:`~jaxdd.tasks.TrainTask` trained (``per_sample`` tasks
      without state train on micro-batches of the active policy's size).
    grad_fn: ``jax.value_and_grad(task.loss, has_aux=True)``.
    params, state: the network's ``params`` and other collections.
    batch: the step's :class:`~jaxdd.tasks.StepBatch`.

  Returns:
    ``((loss, (state, logits)), grads)``, as ``grad_fn`` returns them.
  """
  # The trained network's eligible convolutions as Winograd where the policy
  # says so (train_conv; jaxdd._src.winograd).
  with winograd.convs(policy.current().train_conv == "winograd"):
    return _batch_grad(task, grad_fn, params, state, batch)


def _batch_grad(task: TrainTask, grad_fn: Callable, params, state, batch: StepBatch):
  """The body of :func:`batch_grad`: the whole batch, or a scan over its micro-batches."""
  micro = policy.current().micro_batch if task.per_sample and not jax.tree.leaves(state) else None
  b = batch.images.shape[0]
  # Batches under 4 micro-batches are trained whole.
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
  if logits is not None:  # None: a task without a classifier
    logits = logits.reshape((k * m,) + logits.shape[2:])
  # The batch mean is the size-weighted mean of the chunk means.
  grads = jax.tree.map(lambda g: g * (m / b), grads)
  loss = losses.sum() * (m / b)
  if r:
    (l, (_, lr_logits)), g = grad_fn(params, state, part(k * m, r, k))
    grads = jax.tree.map(lambda a, gi: a + gi * (r / b), grads, g)
    loss = loss + l * (r / b)
    if logits is not None:
      logits = jnp.concatenate([logits, lr_logits])
  return (loss, (state, logits)), grads
