""":func:`fit_epochs`: the trainer of :mod:`jaxdd.train.single`, driven from the host.

Example:
  >>> resolve_loop("step")
  'step'
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Iterator, NamedTuple

import jax
import jax.numpy as jnp

from jaxdd import policy
from jaxdd._src import checks
from jaxdd._src.bound import bound
from jaxdd.protocols import Protocol
from jaxdd.tasks import TrainMetrics, TrainTask
from jaxdd.train.single import _epoch, _run, _Run


LOOPS = ("auto", "scan", "step")

# The host-driven programs: module-level ``jax.jit`` functions; their static arguments
# (task, protocol, number of samples, policy) select the trace, and JAX's cache keeps
# one program per combination.
_HOST_STATIC = ("task", "protocol", "n", "pol")


@functools.partial(jax.jit, static_argnames=_HOST_STATIC)
def _host_start(params, opt_state, lr, ep, k_shuffle, *, task: TrainTask, protocol: Protocol,
                n: int, pol: policy.Policy):
  """(params, opt_state, lr, ep, k_shuffle) -> (lr_ep, opt_state, full, last)."""
  with policy.use(pol):
    run = _run(task, protocol, n)
    lr_ep, opt_state = run.epoch_start(params, opt_state, lr, ep)
    return (lr_ep, opt_state) + run.batches(k_shuffle, ep)


@functools.partial(jax.jit, static_argnames=_HOST_STATIC)
def _host_step(*args, task: TrainTask, protocol: Protocol, n: int, pol: policy.Policy):
  """One SGD step of the run (``_Run.step``'s arguments)."""
  with policy.use(pol):
    return _run(task, protocol, n).step(*args)


@functools.partial(jax.jit, static_argnames=_HOST_STATIC)
def _host_epoch(carry, ep, lr, images, labels, k_shuffle, k_step, *, task: TrainTask,
                protocol: Protocol, n: int, pol: policy.Policy):
  """(carry, ep, lr, images, labels, k_shuffle, k_step) -> (carry, metrics): one epoch's scan."""
  with policy.use(pol):
    return _epoch(_run(task, protocol, n), carry, ep, lr, images, labels, k_shuffle, k_step)


class _HostPrograms(NamedTuple):
  start: Callable
  step: Callable
  epoch: Callable


def _host_programs(task: TrainTask, protocol: Protocol, n: int, pol: policy.Policy
                   ) -> tuple[_Run, _HostPrograms]:
  """The run's pieces and its three programs, bound to (task, protocol, n, pol)."""
  static = dict(task=task, protocol=protocol, n=n, pol=pol)
  return _run(task, protocol, n), _HostPrograms(bound(_host_start, **static),
                                                bound(_host_step, **static),
                                                bound(_host_epoch, **static))


def resolve_loop(loop: str) -> str:
  """``"auto"`` -> the active policy's ``train_loop`` (:mod:`jaxdd.policy`):
  ``"step"`` on CPU, ``"scan"`` elsewhere (see :func:`fit_epochs`).

  Example:
    >>> resolve_loop("scan")
    'scan'
  """
  # XLA:CPU runs the *backward* convolutions far slower inside a while loop
  # (lax.scan) than as top-level ops (jax-ml/jax#12868; docs/results/speed-evaluation.md,
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
  compiled programs are one per (task, protocol, number of samples,
  policy), kept by JAX's cache. The surrogate (:func:`jaxdd.surrogate.train_surrogate`) trains
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
    >>> from jaxdd.tasks import standard_task
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
  protocol = protocol.sized(int(images.shape[0]))
  run, programs = _host_programs(task, protocol, int(images.shape[0]), policy.current())
  k_shuffle, k_step = jax.random.split(key)
  lr = jnp.asarray(protocol.lr if lr is None else lr, jnp.float32)
  opt_state = jax.jit(run.init_opt)(params, lr)  # one program, not one per parameter's shape
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
