"""Several steps of a distiller per call: one host round trip for ``k`` steps.

:func:`steps_loop` is the pure loop (``n <= k`` steps in one ``lax.fori_loop``, ``n`` a
runtime value, so every chunk length shares one program); :func:`multi_step` compiles it for
a :class:`~jaxdd.distill.core.Distiller`. The runs layer drives the loop for the states it
owns (:mod:`jaxdd.runs.programs`).
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxdd._src import checks
from jaxdd.distill.core import Distiller

__all__ = ["check_steps", "multi_step", "steps_loop"]


def steps_loop(step: Callable, k: int) -> Callable:
  """``loop(state, data, n) -> (state, metrics)``: ``n <= k`` calls of ``step`` in one
  ``lax.fori_loop`` (pure; ``n`` a runtime value), the metrics stacked over a leading axis
  of length ``k`` (rows past ``n`` are zeros). What :func:`multi_step` compiles, and what
  the runs layer compiles for the states it owns (:mod:`jaxdd.runs.programs`)."""
  k = checks.check_positive_int("k", k)

  def loop(state, data, n):
    shapes = jax.eval_shape(lambda s: step(s, data)[1], state)
    rows = jax.tree.map(lambda a: jnp.zeros((k,) + a.shape, a.dtype), shapes)

    def body(i, carry):
      s, r = carry
      s, m = step(s, data)
      return s, jax.tree.map(lambda buf, v: jax.lax.dynamic_update_index_in_dim(buf, v, i, 0),
                             r, m)

    return jax.lax.fori_loop(0, n, body, (state, rows))

  return loop


def check_steps(n, k: int) -> np.int32:
  """``n`` as the step count of a :func:`steps_loop` of ``k``: an int in [1, k]."""
  if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= k:
    raise ValueError(f"n must be an int in [1, {k}], got {n!r}")
  return np.int32(n)


def multi_step(d: Distiller, k: int) -> Callable:
  """Up to ``k`` steps of ``d`` in one compiled program: one host round trip per call.

  Returns ``run(state, data, n) -> (state, metrics)`` for ``1 <= n <= k``: ``n``
  steps of ``d.step`` in a ``lax.fori_loop`` (``n`` is a runtime value, so every
  ``n`` shares one program), the metrics stacked over a leading axis of length
  ``k`` whose first ``n`` rows are the steps' metrics (the rest zeros). The
  states equal ``n`` calls of ``d.step`` up to float rounding (XLA compiles the
  loop body on its own). Worth it where a step is short against the host's
  per-call work (small steps on an accelerator); the runs layer's
  ``steps_per_call`` drives it, with checkpoints and progress at chunk
  boundaries. Its input state stays valid; compiled unless ``d``'s execution says
  ``jit=False``.

  Example:
    >>> import jax, numpy as np
    >>> from jaxdd import distill, models
    >>> x = np.random.default_rng(0).normal(size=(40, 8, 8, 3)).astype(np.float32)
    >>> real = distill.real_data(x, np.repeat(np.arange(2), 20), num_classes=2)
    >>> d = distill.dm(num_classes=2, ipc=2, model=models.ConvNet(2, depth=1, width=8),
    ...                real_per_class=8, augment=None)
    >>> run = distill.multi_step(d, 4)
    >>> state, metrics = run(d.init(jax.random.key(0), real), real, 3)
    >>> int(state.step), metrics["loss"].shape
    (3, (4,))
  """
  loop = steps_loop(d.step, k)
  execution = getattr(d.step, "execution", None)
  program = loop if execution is not None and not execution.jit else jax.jit(loop)

  def run(state, data, n: int):
    return program(state, data, check_steps(n, k))

  return run
