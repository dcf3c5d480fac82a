"""Ctrl-C and SIGTERM within a fraction of a second, even while XLA works.

Python runs a signal's handler in the main thread, between bytecodes: while the main thread is
inside one long call into XLA (a compilation, a large program such as a prediction over a whole
split) the handler waits for the call to return, tens of seconds on a CPU. :func:`call` runs
such a call in a worker thread while the main thread waits for it in short slices, so that the
handler runs at once; the abandoned worker is recorded (:func:`stranded`) and the command line
then ends the process at once (every file jaxdd writes is written atomically; a run's lock names
its process and is taken over once that has exited).

Only the command line turns this on (:func:`enable`): in library use the call runs where it is
called, under the caller's thread-local JAX settings. The worker runs in a copy of the caller's
:mod:`contextvars` context (jaxdd's policy and kernel choices).
"""
from __future__ import annotations

import contextvars
import threading
from typing import Any, Callable

import jax

_ENABLED: list[bool] = []
_STRANDED: list[threading.Event] = []

#: Seconds between two looks of the waiting main thread.
SLICE = 0.1


def _until_ready(fn: Callable[..., Any]) -> Callable[..., Any]:
  def wrapped(*args, **kwargs):
    return jax.block_until_ready(fn(*args, **kwargs))
  return wrapped


def enable(on: bool = True) -> None:
  """Turns :func:`call`'s worker thread on (the command line) or off (library use)."""
  _ENABLED[:] = [True] if on else []


def stranded() -> bool:
  """True once a call was abandoned while its worker still ran."""
  return any(not done.is_set() for done in _STRANDED)


def call(fn: Callable[..., Any], *args, give_up: Callable[[], None] | None = None,
         ready: bool = False, **kwargs) -> Any:
  """``fn(*args, **kwargs)``; when enabled and called from the main thread, in a worker thread
  while the main thread waits, so that a signal's handler (which may raise) runs within
  :data:`SLICE` seconds. ``give_up()``, called between the slices, may raise to abandon the
  call too (a flag a deferring handler set). ``ready``: the worker also waits for the
  result's arrays to be computed (JAX dispatches asynchronously: without it only the
  compilation and the dispatch are waited for here). The worker's exception is raised here."""
  if ready:
    fn = _until_ready(fn)
  if not _ENABLED or threading.current_thread() is not threading.main_thread():
    return fn(*args, **kwargs)
  out: list[Any] = []
  failed: list[BaseException] = []
  done = threading.Event()  # not Thread.is_alive: an interrupted join may mark it stopped
  context = contextvars.copy_context()

  def work():
    try:
      out.append(context.run(fn, *args, **kwargs))
    except BaseException as e:  # noqa: BLE001  (handed to the main thread)
      failed.append(e)
    finally:
      done.set()

  threading.Thread(target=work, name="jaxdd-xla", daemon=True).start()
  try:
    while not done.wait(SLICE):
      if give_up is not None:
        give_up()
  except BaseException:
    if not done.is_set():
      _STRANDED.append(done)
    raise
  if failed:
    raise failed[0]
  return out[0]
