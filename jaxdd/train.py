"""Training: the one trainer of jaxdd and its compiled programs.

Evaluation (:mod:`jaxdd.evaluate`, :mod:`jaxdd.debias`) trains fresh networks
with it, gradient matching (:func:`jaxdd.distill.gm`) trains its inner network
with :func:`fit`, and the SupCon surrogate (:func:`jaxdd.surrogate.train_surrogate`)
trains with :func:`fit_epochs`. A :class:`~jaxdd.tasks.TrainTask`
(:mod:`jaxdd.tasks`, re-exported here) says what is trained
(:func:`~jaxdd.tasks.standard_task`: cross-entropy; the surrogate's SupCon
task), a :class:`~jaxdd.protocols.Protocol` how (the reference's
``evaluate_synset`` recipe, spelled out in :mod:`jaxdd.protocols`; the
surrogate's cosine recipe). The SGD update is optax's (:func:`torch_sgd`); a
partial last batch gets its own compiled step of its true static size (or is
dropped: ``Protocol.drop_last``); the optimiser state is re-initialised at the
lr decay. Step ``j`` of epoch ``e`` draws from ``fold_in(fold_in(k_step, e),
j)``: split into augmentation and task keys when the protocol augments, the
task's key as is otherwise.

:func:`fit` runs the whole training of one network as one ``lax.scan`` over
epochs (and a nested scan over the batches of an epoch); :func:`fit_epochs`
runs the same steps from the host, one compiled program per epoch or per step.
:func:`train_models` runs ``fit`` for
``num_models`` keys and an optional learning-rate grid in **one** XLA
program, either ``vmap`` ped (all networks batched) or under a ``lax.map``
(one after another inside the program: the default on CPU and on GPUs, where
XLA runs the grouped convolutions of vmapped ConvNets slower than separate
ones; see RESULTS.md, "Evaluation: many networks in one program" and "Speed on
GPU"); ``parallel="auto"`` takes the active :mod:`jaxdd.policy`'s choice. Compiled programs are cached per (training task,
protocol, parallel mode, policy) with ``functools.lru_cache`` (big_vision's
``get_eval_fn`` pattern) and traced under that policy; ``jax.jit`` adds the
per-shape cache.

On CPU, convolution gradients inside a loop hit a slow XLA:CPU path
(jax-ml/jax#12868; timings in RESULTS.md, "Convolution gradients inside loops"); while the
trainer is traced under the ``cpu`` policy, ``flax.linen.Conv`` layers are
routed through :func:`~jaxdd.models.loop_safe_conv`, which computes the same
values and gradients with fast kernels, and per-sample tasks train on
micro-batches (:data:`CPU_MICRO_BATCH`).
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Iterator, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jaxdd import augment, policy
from jaxdd import progress as progress_lib
from jaxdd._src import checks, winograd
from jaxdd.models import loop_safe_convs
from jaxdd.protocols import Protocol, get_protocol
from jaxdd.structs import SynSet
# The training tasks (jaxdd.tasks), re-exported: jaxdd.train.TrainTask, ... keep working.
from jaxdd.tasks import (StepBatch, TrainMetrics, TrainTask, apply_train,  # noqa: F401
                         cross_entropy, hard_labels, split_variables, standard_task)


# Micro-batch size on CPU of per-sample tasks (see TrainTask.per_sample) and of
# prediction: the cpu policy's (jaxdd.policy.POLICIES["cpu"].micro_batch, chosen
# by timing; RESULTS.md, "Evaluation side by side with the PyTorch reference"). The trainer reads the active policy;
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


@functools.lru_cache(maxsize=16)
def _augment_fn(strategy: str | None):
  if strategy is None or strategy.lower() in ("none", ""):
    return None
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

  def batch_grad(params, state, batch: StepBatch):
    # The trained network's eligible convolutions as Winograd where the policy
    # says so (train_conv; jaxdd._src.winograd).
    with winograd.convs(policy.current().train_conv == "winograd"):
      return _batch_grad(params, state, batch)

  def _batch_grad(params, state, batch: StepBatch):
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
    (loss, (state, logits)), grads = batch_grad(params, state, batch)
    if protocol.schedule == "cosine":
      lr_ep = optax.cosine_decay_schedule(lr_ep, decay_steps=total_steps)(step_count)
    updates, opt_state = optimizer(lr_ep).update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
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
  run = _run(task, protocol, images.shape[0])
  opt_state = run.init_opt(params, lr)

  def epoch(carry, ep):
    return _epoch(run, carry, ep, lr, images, labels, k_shuffle, k_step, on_epoch)

  (params, state, _), metrics = jax.lax.scan(
      epoch, (params, state, opt_state), jnp.arange(protocol.num_epochs))
  return params, state, metrics


LOOPS = ("auto", "scan", "step")

# Number of times each host-driven program was traced, keyed by (kind, task,
# number of samples); a test checks that a training run traces each once.
_HOST_TRACES: dict[tuple[str, TrainTask, int], int] = {}


class _HostPrograms(NamedTuple):
  start: Callable  # (params, opt_state, lr, ep, k_shuffle) -> (lr_ep, opt_state, full, last)
  step: Callable  # run.step, jitted
  epoch: Callable  # (carry, ep, lr, images, labels, k_shuffle, k_step) -> (carry, metrics)


@functools.lru_cache(maxsize=16)
def _host_programs(task: TrainTask, protocol: Protocol, n: int, pol: policy.Policy
                   ) -> tuple[_Run, _HostPrograms]:
  run = _run(task, protocol, n)

  def counted(kind, fn):
    def traced(*args):
      key = (kind, task, n)  # Python side effect: runs only while tracing
      _HOST_TRACES[key] = _HOST_TRACES.get(key, 0) + 1
      with loop_safe_convs():
        return fn(*args)
    return jax.jit(policy.pinned(pol, traced))

  def start(params, opt_state, lr, ep, k_shuffle):
    lr_ep, opt_state = run.epoch_start(params, opt_state, lr, ep)
    return (lr_ep, opt_state) + run.batches(k_shuffle, ep)

  def epoch(carry, ep, lr, images, labels, k_shuffle, k_step):
    return _epoch(run, carry, ep, lr, images, labels, k_shuffle, k_step)

  return run, _HostPrograms(counted("start", start), counted("step", run.step),
                            counted("epoch", epoch))


def resolve_loop(loop: str) -> str:
  """``"auto"`` -> the active policy's ``train_loop`` (:mod:`jaxdd.policy`):
  ``"step"`` on CPU, ``"scan"`` elsewhere (see :func:`fit_epochs`).

  Example:
    >>> resolve_loop("scan")
    'scan'
  """
  # XLA:CPU runs the *backward* convolutions far slower inside a while loop
  # (lax.scan) than as top-level ops (jax-ml/jax#12868; RESULTS.md,
  # "Convolution gradients inside loops"). The cpu policy therefore drives the steps from the host;
  # the accelerator policy runs the single-program epoch.
  return _auto_by_policy("loop", loop, LOOPS, "train_loop")


def _auto_by_policy(name: str, value: str, choices: tuple[str, ...], field: str) -> str:
  """``value`` checked against ``choices``; ``"auto"`` -> the active policy's ``field``."""
  if value not in choices:
    raise ValueError(f"{name} must be one of {choices}, got {value!r}")
  return getattr(policy.current(), field) if value == "auto" else value


def fit_epochs(key: jax.Array, params, state: dict, images: jax.Array, labels: jax.Array, *,
               task: TrainTask, protocol: Protocol, lr: float | None = None,
               loop: str = "auto") -> Iterator[tuple[Any, dict, TrainMetrics]]:
  """:func:`fit` driven from the host, one epoch at a time (a generator).

  The same training run as ``fit`` with the same ``key`` (the same shuffles,
  step keys, schedule and updates), but each epoch returns to Python, so a
  caller can show progress, check the loss or stop early. ``loop="scan"``
  runs each epoch as one compiled program (``lax.scan`` over its steps);
  ``loop="step"`` calls one compiled step per batch (XLA:CPU runs the backward
  convolutions of a scan far slower than top-level ones, jax-ml/jax#12868);
  ``"auto"`` takes the active :mod:`jaxdd.policy`'s ``train_loop``. The
  compiled programs are cached per (task, protocol, number of samples,
  policy). The surrogate (:func:`jaxdd.surrogate.train_surrogate`) trains
  with it.

  Args:
    key: typed key for the per-epoch shuffles and the per-step keys.
    params, state: the network's ``params`` and other collections.
    images, labels: the training set (put on device once).
    task: the :class:`TrainTask`; its ``loss`` may return ``None`` logits
      (no accuracy is measured then).
    protocol: the schedule (``protocol.num_epochs`` epochs).
    lr: initial learning rate (default ``protocol.lr``).
    loop: ``"auto"``, ``"scan"`` or ``"step"``.

  Yields:
    ``(params, state, metrics)`` after every epoch; ``metrics`` is that
    epoch's :class:`TrainMetrics` (scalars).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxdd import models
    >>> net = models.ConvNet(num_classes=2, width=4, depth=1)
    >>> task = standard_task(net)
    >>> x, y = jnp.zeros((6, 8, 8, 3)), jnp.array([0, 1] * 3)
    >>> params, state = task.init(jax.random.key(0), x, y)
    >>> prot = Protocol("p", epochs=1, batch_size=4, drop_last=True)
    >>> history = [m for _, _, m in fit_epochs(jax.random.key(1), params, state, x, y,
    ...                                        task=task, protocol=prot, loop="step")]
    >>> len(history), history[0].loss.shape  # num_epochs = epochs + 1
    (2, ())
  """
  checks.check_key(key)
  loop = resolve_loop(loop)
  run, programs = _host_programs(task, protocol, int(images.shape[0]), policy.current())
  k_shuffle, k_step = jax.random.split(key)
  lr = jnp.asarray(protocol.lr if lr is None else lr, jnp.float32)
  opt_state = run.init_opt(params, lr)
  for ep in range(protocol.num_epochs):
    ep = jnp.asarray(ep, jnp.int32)
    if loop == "scan":
      (params, state, opt_state), metrics = programs.epoch(
          (params, state, opt_state), ep, lr, images, labels, k_shuffle, k_step)
    else:
      lr_ep, opt_state, full, last = programs.start(params, opt_state, lr, ep, k_shuffle)
      loss_sum = jnp.zeros((), jnp.float32)
      correct = jnp.zeros((), jnp.float32)
      batches = [(j, full[j]) for j in range(run.num_full)]
      if last is not None:
        batches.append((run.num_full, last))
      for j, idx in batches:
        params, state, opt_state, l, k = programs.step(
            params, state, opt_state, lr_ep, idx, ep, jnp.asarray(j, jnp.int32), images, labels,
            k_step)
        loss_sum, correct = loss_sum + l, correct + k
      metrics = TrainMetrics(loss_sum / run.seen, correct / run.seen)
    yield params, state, metrics


PARALLEL = ("auto", "vmap", "map")


def resolve_parallel(parallel: str) -> str:
  """``"auto"`` -> the active policy's (:mod:`jaxdd.policy`): ``"map"`` on CPU,
  ``"vmap"`` elsewhere (see :func:`train_models`).

  Args:
    parallel: ``"auto"``, ``"vmap"`` or ``"map"``.

  Returns:
    ``"vmap"`` or ``"map"``.

  Example:
    >>> resolve_parallel("vmap")
    'vmap'
  """
  return _auto_by_policy("parallel", parallel, PARALLEL, "parallel")


def _train_single(task: TrainTask, protocol: Protocol):
  """Jitted trainer of one network: (key, lr, images, labels) -> (params, state, metrics).

  Cached per (task, protocol, active policy) and traced under that policy.
  """
  return _train_single_program(task, protocol, policy.current())


@functools.lru_cache(maxsize=32)
def _train_single_program(task: TrainTask, protocol: Protocol, pol: policy.Policy):
  return jax.jit(policy.pinned(pol, functools.partial(_train, task=task, protocol=protocol)))


def _train_many_program(task: TrainTask, protocol: Protocol, parallel: str, report: bool = False):
  """Jitted trainer of a (lrs x models) grid in one program (cached per active policy too).

  ``vmap``: all networks advance together (batched matmuls; convolutions
  become grouped convolutions). ``map``: a ``lax.map`` over the flattened grid
  inside the same program, one network at a time. XLA:CPU runs grouped
  convolutions slower than the same work as separate convolutions (RESULTS.md,
  "Evaluation: many networks in one program"), so on CPU ``map`` is the faster of the two; accelerators
  batch well.
  """
  return _train_many_cached(task, protocol, parallel, report, policy.current())


@functools.lru_cache(maxsize=32)
def _train_many_cached(task: TrainTask, protocol: Protocol, parallel: str, report: bool,
                       pol: policy.Policy):
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

  return jax.jit(policy.pinned(pol, many))


def predict_block(protocol: Protocol, n: int, parallel: str) -> int:
  """Images per prediction block: the protocol's ``test_batch_size`` (at most ``n``),
  and for one-network-at-a-time prediction (``"map"``) at most the active policy's
  ``predict_block`` (32 on CPU, where small blocks keep
  activations in cache; predictions are per-sample in eval mode, so the block
  never changes them).

  Example:
    >>> predict_block(Protocol("p", epochs=1), 100, "vmap")
    100
  """
  block = min(protocol.test_batch_size, n)
  cap = policy.current().predict_block
  if parallel == "map" and cap is not None:
    block = min(block, cap)
  return block


def _predict_program(task: TrainTask, block: int, parallel: str):
  """Jitted blocked prediction for stacked networks: (M, ...) -> (M, n) classes.

  Cached per (task, block, parallel, active policy) and traced under that policy.
  """
  return _predict_cached(task, block, parallel, policy.current())


@functools.lru_cache(maxsize=32)
def _predict_cached(task: TrainTask, block: int, parallel: str, pol: policy.Policy):
  def one_model(params, state, blocks):
    def one_block(xb):
      with winograd.convs(pol.forward_conv == "winograd"):  # a gradient-free forward
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
  return jax.jit(policy.pinned(pol, run))


def train_fresh(key: jax.Array, syn: SynSet, *, model: nn.Module, protocol: str | Protocol = "dm",
                lr: float | None = None) -> tuple[dict, TrainMetrics]:
  """Trains one freshly initialised ``model`` on ``syn`` under ``protocol``.

  The whole run is a single compiled ``lax.scan`` (see the module docstring
  for the exact schedule). Model ``i`` of :func:`jaxdd.evaluate.evaluate_synset` with key ``k`` is
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
  checks.check_key(key)
  protocol = get_protocol(protocol)
  images, labels = checks.check_syn(syn, getattr(model, "num_classes", None), "train_fresh")
  lr = protocol.lr if lr is None else lr
  single = _train_single(standard_task(model), protocol)
  params, state, metrics = single(key, jnp.float32(lr), images, labels)
  return {"params": params, **state}, metrics


def _train_many(key, images, labels, *, task, protocol, num_models, lrs, parallel,
                progress: bool = False):
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
  checks.check_key(key)
  protocol = get_protocol(protocol)
  if not isinstance(num_models, int) or num_models < 1:
    raise ValueError(f"num_models must be a positive int, got {num_models!r}")
  images, labels = checks.check_syn(syn, getattr(model, "num_classes", None), "train_models")
  params, state, metrics = _train_many(key, images, labels, task=standard_task(model),
                                       protocol=protocol, num_models=num_models,
                                       lrs=checks.check_lrs(lrs, protocol), parallel=parallel,
                                       progress=progress)
  return {"params": params, **state}, metrics
