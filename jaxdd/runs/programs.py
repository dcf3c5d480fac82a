"""The compiled programs a run drives its distiller with: donating, and shared.

A distiller's ``step`` is pure and donates nothing (:mod:`jaxdd.distill`). The runs
layer owns its states, so it compiles the step again with ``donate_argnums=0``: a
step's input buffers are reused for its output, which halves the state's memory
on an accelerator. Distillers with equal ``step.signature`` (the same static
settings; their hyperparameters are in the state) share one program, so ``jaxdd
tune``'s candidates, a resumed run and the seeds of a setting compile once.

The cache is an explicit object, :class:`Programs`; :data:`PROGRAMS` is the one
the runs layer uses.
"""
from __future__ import annotations

import collections
from typing import Callable

import jax

from jaxdd import distill


class Programs:
  """Donating programs of distillers' steps, one per (signature, kind), least recently used
  dropped past ``size``.

  Example:
    >>> import jax, numpy as np
    >>> from jaxdd import distill, models
    >>> x = np.random.default_rng(0).normal(size=(40, 8, 8, 3)).astype(np.float32)
    >>> real = distill.real_data(x, np.repeat(np.arange(2), 20), num_classes=2)
    >>> make = lambda lr: distill.dm(num_classes=2, ipc=2, real_per_class=8, lr=lr,
    ...                              model=models.ConvNet(2, depth=1, width=8))
    >>> programs = Programs()
    >>> programs.step(make(1.0)) is programs.step(make(2.0))
    True
  """

  def __init__(self, size: int = 32):
    self._size = size
    self._cache: collections.OrderedDict = collections.OrderedDict()

  def _get(self, key, build: Callable) -> Callable:
    if key[1] is None:  # an unhashable setting: a program of its own
      return build()
    if key in self._cache:
      self._cache.move_to_end(key)
      return self._cache[key]
    program = self._cache[key] = build()
    while len(self._cache) > self._size:
      self._cache.popitem(last=False)
    return program

  def step(self, d: distill.Distiller) -> Callable:
    """``step(state, data) -> (state, metrics)``: ``d.step`` compiled with its state donated
    (the input state is invalid after the call)."""
    return self._get(("step", _signature(d)), lambda: jax.jit(d.step, donate_argnums=0))

  def steps(self, d: distill.Distiller, k: int) -> Callable:
    """``run(state, data, n)``: up to ``k`` steps of ``d`` per call
    (:func:`jaxdd.distill.steps_loop`), the state donated."""
    program = self._get(("steps", _signature(d), k),
                        lambda: jax.jit(distill.steps_loop(d.step, k), donate_argnums=0))

    def run(state, data, n: int):
      return program(state, data, distill.steps.check_steps(n, k))

    def lower(state, data, n: int):
      """The program of ``run(state, data, n)``, lowered (its compiled form is the one the
      call compiled: jit's cache holds it)."""
      return program.lower(state, data, distill.steps.check_steps(n, k))

    run.lower = lower
    return run

  def clear(self) -> None:
    """Drops every program."""
    self._cache.clear()


def _signature(d: distill.Distiller):
  return getattr(d.step, "signature", None)


#: The programs of the runs layer (:func:`jaxdd.runs.driver.drive`).
PROGRAMS = Programs()
