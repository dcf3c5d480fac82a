"""The trainer of one network: :func:`fit`, one ``lax.scan`` over the epochs of a protocol.

A training run is built from the pieces of :class:`_Run` (the optimiser state,
the lr schedule at an epoch's start, the epoch's batches, one SGD step); :func:`fit`
strings them into one scan over epochs, :func:`jaxdd.train.fit_epochs` calls them
from the host.

Example:
  >>> from jaxdd import models
  >>> from jaxdd.tasks import standard_task
  >>> task = standard_task(models.ConvNet(num_classes=2, width=4, depth=1))
  >>> run = _run(task, Protocol("p", epochs=1, batch_size=4), 6)
  >>> run.num_full, run.rest, run.seen
  (1, 2, 6)
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxdd import augment
from jaxdd import progress as progress_lib
from jaxdd.protocols import Protocol
from jaxdd.tasks import StepBatch, TrainMetrics, TrainTask, hard_labels
from jaxdd.train.grads import batch_grad
from jaxdd.train.optim import torch_sgd


def _augment_fn(strategy):
  if callable(strategy):  # an augmentation f(key, images) itself
    return strategy
  if strategy is None or strategy.lower() in ("none", ""):
    return None
  return augment.dsa(strategy, siamese=False)


def _train(key: jax.Array, lr: jax.Array, images: jax.Array, labels: jax.Array, *,
           task: TrainTask, protocol: Protocol, report: bool = False):
  """One network, the whole protocol, as nested ``lax.scan`` s (traceable).

  ``report`` adds a host callback at the end of every epoch (progress only;
  the numbers are unchanged, see :func:`train_models`).
  """
  k_init, k_shuffle, k_step = jax.random.split(key, 3)
  params, state = task.init(k_init, images, labels)
  return _fit(params, state, images, labels, lr, k_shuffle, k_step, task=task, protocol=protocol,
              on_epoch=progress_lib.report_epoch if report else None)


def fit(key: jax.Array, params, state: dict, images: jax.Array, labels: jax.Array, *,
        task: TrainTask, protocol: Protocol, lr: jax.Array | float | None = None):
  """Trains given ``params`` for the whole ``protocol`` (traceable; one scan over epochs).

  The trainer of :func:`train_fresh` without the initialisation: evaluation
  trains fresh networks with it, and gradient matching
  (:func:`jaxdd.distill.gm`) trains its network on the synthetic set between
  image updates with it (plain SGD: ``Protocol(momentum=0, weight_decay=0,
  decay_at=None)``). Call it under jit. On CPU the convolutions of jaxdd's
  models (and of a model that asks, with :func:`jaxdd.models.policy_conv`) run
  the policy's loop-safe kernels; the model itself is never modified.

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
  return _fit(params, state, images, labels, lr, k_shuffle, k_step, task=task,
              protocol=protocol)


class _Run(NamedTuple):
  """The pieces of one protocol's training run on ``n`` images (traceable functions).

  :func:`fit` strings them into one scan over epochs; :func:`fit_epochs` calls
  them from the host, one compiled program per epoch or per step. Both do the
  same arithmetic in the same order.
  """
  num_full: int  # full batches per epoch
  rest: int  # size of the last partial batch (0 with drop_last)
  seen: int  # samples trained per epoch (the metrics' denominator)
  init_opt: Callable  # (params, lr) -> opt_state
  epoch_start: Callable  # (params, opt_state, lr, ep) -> (lr_ep, opt_state)
  batches: Callable  # (k_shuffle, ep) -> (full batches (num_full, bs), last batch or None)
  step: Callable  # (params, state, opt_state, lr_ep, idx, ep, j, images, labels, k_step)
  #                 -> (params, state, opt_state, batch loss * batch size, correct)


def _run(task: TrainTask, protocol: Protocol, n: int) -> _Run:
  protocol = protocol.sized(n)
  bs = protocol.batch_size
  num_full, rest = divmod(n, bs)
  if protocol.drop_last:
    if not num_full:
      raise ValueError(f"protocol {protocol.name!r} drops the last partial batch, so it needs at "
                       f"least batch_size={bs} training samples; got {n}. Lower the batch size.")
    rest = 0
  steps_per_epoch = num_full + (rest > 0)
  total_steps = steps_per_epoch * protocol.num_epochs
  aug = _augment_fn(protocol.augment)
  decay = protocol.decay_epoch

  def optimizer(lr_ep):
    return torch_sgd(lr_ep, momentum=protocol.momentum, weight_decay=protocol.weight_decay)

  def init_opt(params, lr):
    # The optimiser state (momentum buffers) does not depend on the lr.
    return optimizer(lr).init(params)

  def epoch_start(params, opt_state, lr, ep):
    if decay is None:
      return lr, opt_state
    lr_ep = jnp.where(ep > decay, lr * protocol.lr_decay_factor, lr)
    if protocol.reset_momentum:
      # The reference re-creates its optimiser after epoch `decay`; so is
      # the optax state re-initialised (zero momentum buffers).
      fresh = ep == decay + 1
      opt_state = jax.tree.map(lambda new, old: jnp.where(fresh, new, old),
                               optimizer(lr_ep).init(params), opt_state)
    return lr_ep, opt_state

  def batches(k_shuffle, ep):
    perm = jax.random.permutation(jax.random.fold_in(k_shuffle, ep), n)
    return perm[:num_full * bs].reshape(num_full, bs), (perm[num_full * bs:] if rest else None)

  grad_fn = jax.value_and_grad(task.loss, has_aux=True)

  def step(params, state, opt_state, lr_ep, idx, ep, j, images, labels, k_step):
    k = jax.random.fold_in(jax.random.fold_in(k_step, ep), j)
    if aug is not None:
      k_a, k_s = jax.random.split(k)
    else:  # nothing else draws from it: the task gets the step key itself
      k_s = k
    x, y = images[idx], labels[idx]
    if aug is not None:
      x = aug(k_a, x)
    step_count = ep * steps_per_epoch + j
    batch = StepBatch(x, y, idx, k_s, step_count, step_count / total_steps)
    (loss, (state, logits)), grads = batch_grad(task, grad_fn, params, state, batch)
    if protocol.schedule == "cosine":
      lr_ep = optax.cosine_decay_schedule(lr_ep, decay_steps=total_steps)(step_count)
    updates, opt_state = optimizer(lr_ep).update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    if isinstance(logits, tuple):  # a task that trains on other targets (e.g. SelecMix)
      logits, y = logits
    if logits is None:  # a task without a classifier (e.g. the SupCon surrogate)
      correct = jnp.zeros((), jnp.float32)
    else:
      correct = (jnp.argmax(logits, -1) == hard_labels(y)).sum().astype(jnp.float32)
    # Sums weighted by the batch size, as the reference's epoch() averages.
    return params, state, opt_state, loss * idx.shape[0], correct

  return _Run(num_full, rest, num_full * bs + rest, init_opt, epoch_start, batches, step)


def _epoch(run: _Run, carry, ep, lr, images, labels, k_shuffle, k_step, on_epoch=None):
  """One epoch: a scan over its full batches, then the partial one (traceable)."""
  params, state, opt_state = carry
  lr_ep, opt_state = run.epoch_start(params, opt_state, lr, ep)
  full, last = run.batches(k_shuffle, ep)
  loss_sum = jnp.zeros((), jnp.float32)
  correct = jnp.zeros((), jnp.float32)
  if run.num_full:
    def body(c, xs):
      j, idx = xs
      p, s, b, ls, cs = c
      p, s, b, l, k = run.step(p, s, b, lr_ep, idx, ep, j, images, labels, k_step)
      return (p, s, b, ls + l, cs + k), None
    (params, state, opt_state, loss_sum, correct), _ = jax.lax.scan(
        body, (params, state, opt_state, loss_sum, correct), (jnp.arange(run.num_full), full))
  if last is not None:
    # The DataLoader's last partial batch, at its true static size.
    params, state, opt_state, l, k = run.step(params, state, opt_state, lr_ep, last, ep,
                                              run.num_full, images, labels, k_step)
    loss_sum, correct = loss_sum + l, correct + k
  if on_epoch is not None:  # progress only: reads the epoch's loss, changes nothing
    jax.debug.callback(on_epoch, loss_sum)
  return (params, state, opt_state), TrainMetrics(loss_sum / run.seen, correct / run.seen)


def _fit(params, state, images, labels, lr, k_shuffle, k_step, *, task: TrainTask,
         protocol: Protocol, on_epoch=None):
  protocol = protocol.sized(images.shape[0])
  run = _run(task, protocol, images.shape[0])
  opt_state = run.init_opt(params, lr)

  def epoch(carry, ep):
    return _epoch(run, carry, ep, lr, images, labels, k_shuffle, k_step, on_epoch)

  (params, state, _), metrics = jax.lax.scan(
      epoch, (params, state, opt_state), jnp.arange(protocol.num_epochs))
  return params, state, metrics
