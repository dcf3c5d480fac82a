"""Ctrl-C and SIGTERM within a fraction of a second, even while XLA works.

Python runs a signal's handler in the main thread, between bytecodes: while the main thread is
inside one long call into XLA (a compilation, a large program such as a prediction over a whole
split) the handler waits for the call to return, tens of seconds on a CPU. :func:`call` runs
such a call in a worker thread while the main thread waits for it in short slices, so that the
handler runs at once; the signal's exception (Ctrl-C, SIGTERM) leaves the worker behind, and the
command line then ends the process at once (every file jaxdd writes is written atomically; a
run's lock names its process and is taken over once that has exited).

Only the command line turns this on (:func:`enabled`): in library use the call runs where it is
called, under the caller's thread-local JAX settings. The worker runs in a copy of the caller's
:mod:`contextvars` context (jaxdd's policy and kernel choices).
"""
from __future__ import annotations

import contextlib
import contextvars
import threading
from typing import Any, Callable, Iterator

import jax

#: Whether :func:`call` uses a worker thread (a context variable: no module state).
_ENABLED: contextvars.ContextVar = contextvars.ContextVar("jaxdd_interrupt", default=False)

#: Seconds between two looks of the waiting main thread.
SLICE = 0.1


def _until_ready(fn: Callable[..., Any]) -> Callable[..., Any]:
  def wrapped(*args, **kwargs):
    return jax.block_until_ready(fn(*args, **kwargs))
  return wrapped


@contextlib.contextmanager
def enabled(on: bool = True) -> Iterator[None]:
  """Within it, :func:`call` runs its calls in a worker thread (the command line's commands);
  outside, where they are called (library use)."""
  token = _ENABLED.set(on)
  try:
    yield
  finally:
    _ENABLED.reset(token)


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
  if not _ENABLED.get() or threading.current_thread() is not threading.main_thread():
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
  while not done.wait(SLICE):  # a signal's handler raises here, the worker left behind
    if give_up is not None:
      give_up()
  if failed:
    raise failed[0]
  return out[0]
