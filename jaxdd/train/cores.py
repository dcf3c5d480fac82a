"""Networks side by side on the CPU's cores: each trained by a program that uses one core.

Why: XLA:CPU splits each matrix product and convolution of a program over all cores. The
networks jaxdd evaluates are small (ConvNet-3, batches of 256 in micro-batches of about 12),
so on a few cores that split gains little: on 2 cores a width-32 network trained 1.2 times
faster with both cores than with one. Two networks trained at once, each by a program that
keeps to one core, finish in about 0.6 of the time of the two one after another
(docs/results/speed-evaluation.md, "Networks side by side on the cores").

What: :func:`train_networks` trains a list of networks with the one-network trainer compiled
with XLA's multi-threaded Eigen off (``xla_cpu_multi_thread_eigen``), as many at once as there
are cores, from a thread pool (a compiled program releases the GIL while it runs); networks
left over when fewer remain than cores train one after another with the ordinary program. The
arithmetic is the same: every network's parameters are bit-identical to those of the ordinary
one-network program and of ``parallel="map"`` (tests/test_train_cores.py; a product with a side
thinner than 8, which Eigen's pool may split over its inner dimension, would agree to float
rounding only). Used by
:func:`jaxdd.train.train_models` and :func:`jaxdd.train.train_synsets` when their networks run
one after another (``parallel="map"``) on the CPU under a policy with
``map_networks="cores"`` (the ``cpu`` policy).

Example:
  >>> cores_to_use(1), cores_to_use(0)  # one network, none: nothing side by side
  (0, 0)
"""
from __future__ import annotations

import concurrent.futures
import functools
import os
from typing import Sequence

import jax

from jaxdd import policy
from jaxdd.protocols import Protocol
from jaxdd.tasks import TrainTask
from jaxdd.train.single import _train

# DebugOptions of the one-core program: XLA:CPU's matmuls and convolutions in the calling
# thread, not split over Eigen's pool of one thread per core.
ONE_CORE = {"xla_cpu_multi_thread_eigen": False}
_STATIC = ("task", "protocol", "report", "pol")


def num_cores() -> int:
  """The cores this process may run on (its CPU affinity; else the machine's count)."""
  try:
    return len(os.sched_getaffinity(0))
  except (AttributeError, OSError):  # pragma: no cover - platforms without affinity
    return os.cpu_count() or 1


def cores_to_use(num_networks: int) -> int:
  """How many of ``num_networks`` one-after-another networks to train side by side at a time:
  the cores, when the active policy says ``map_networks="cores"``, the backend is the CPU, there
  are at least 2 cores and at least as many networks; else 0 (one program after another). With
  fewer networks than cores, each ordinary program has every core (only 2 cores were timed)."""
  n = num_cores()
  if (n < 2 or num_networks < n or policy.current().map_networks != "cores"
      or jax.default_backend() != "cpu"):
    return 0
  return n


@functools.partial(jax.jit, static_argnames=_STATIC, compiler_options=ONE_CORE)
def _train_one_core(key, lr, images, labels, *, task: TrainTask, protocol: Protocol,
                    report: bool, pol: policy.Policy):
  with policy.use(pol):
    return _train(key, lr, images, labels, task=task, protocol=protocol, report=report)


def train_networks(jobs: Sequence[tuple], labels: jax.Array, *, task: TrainTask,
                   protocol: Protocol, report: bool, ordinary, width: int) -> list:
  """Trains network ``i`` on ``jobs[i] = (key, lr, images)`` and returns their
  ``(params, state, metrics)`` in order.

  Full rounds of ``width`` networks run at once, each with the one-core program; the networks
  of a last, smaller round run one after another with ``ordinary`` (the usual one-network
  program, which uses every core), so no core idles while one network trains alone.
  """
  jobs = list(jobs)
  together = (len(jobs) // width) * width if width >= 2 else 0
  out: list = [None] * len(jobs)
  if together:
    key, lr, images = jobs[0]
    pol = policy.current()
    # Compiled here, once: threads that met an empty cache at once would each compile it.
    one_core = _train_one_core.lower(key, lr, images, labels, task=task, protocol=protocol,
                                     report=report, pol=pol).compile()

    def run(i):
      k, r, im = jobs[i]
      return jax.block_until_ready(one_core(k, r, im, labels))

    pool = concurrent.futures.ThreadPoolExecutor(max_workers=width,
                                                 thread_name_prefix="jaxdd-core")
    try:
      futures = [pool.submit(run, i) for i in range(together)]
      done, _ = concurrent.futures.wait(futures,
                                        return_when=concurrent.futures.FIRST_EXCEPTION)
      for future in futures:  # a failure raises at once, not after the networks before it
        if future in done and future.exception() is not None:
          future.result()
      for i, future in enumerate(futures):
        out[i] = future.result()
    finally:
      # On an error or Ctrl-C the networks not started are dropped; those running (one per
      # core) finish, as a compiled program cannot be stopped halfway.
      pool.shutdown(wait=True, cancel_futures=True)
  for i in range(together, len(jobs)):
    k, r, im = jobs[i]
    out[i] = ordinary(k, r, im, labels)
  return out
