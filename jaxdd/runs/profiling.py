"""One traced chunk of distillation steps: where an accelerator's time goes, at no cost to the run.

With ``$JAXDD_PROFILE`` naming a folder, the distillation loop (:func:`jaxdd.runs.driver.drive`)
records JAX's profiler trace of its second chunk of steps (the first one compiles) into that
folder, once per folder: XLA's trace, ``plugins/profile/<time>/<host>.trace.json.gz``, with
every kernel the device ran, ``profile.json`` beside it, which says which steps were traced
and how long they took (or why the profiler failed), and the traced program's compiled HLO
(``program.hlo.txt.gz``), which names the JAX op behind each kernel a GPU replays inside a
graph, where the trace names none. ``benchmarks/trace_summary.py`` turns the
trace into milliseconds per step by kind of work (convolutions, fusions, reductions, copies), by
part of the step (the named scopes of :func:`jaxdd.matching.dm_loss`: the augmentation and
each side's layers) and names the largest kernels.

The trace changes nothing the run computes. Should the profiler fail (a machine without its
libraries), the run goes on untraced and the failure is logged in one line.

Example:
  >>> import os
  >>> os.environ.pop(ENV, None) and None
  >>> folder() is None
  True
"""
from __future__ import annotations

import contextlib
import gzip
import os
import time

import jax

from jaxdd import progress as progress_lib
from jaxdd._src import io

__all__ = ["ENV", "PROGRAM", "compiled", "compiling", "folder", "traced"]

#: The environment variable that names the folder the trace goes to.
ENV = "JAXDD_PROFILE"
SIDECAR = "profile.json"
#: The traced program's compiled HLO, gzipped, beside the trace.
PROGRAM = "program.hlo.txt.gz"
_TRIED: set[str] = set()  # folders this process traced or failed to (even where nothing is written)


_COMPILED = [0, 0.0]  # programs compiled (or read from the compilation cache) and their seconds
_LISTENING = []


def _on_duration(event: str, seconds: float, **_) -> None:
  if event == "/jax/core/compile/backend_compile_duration":
    _COMPILED[0] += 1
    _COMPILED[1] += seconds


def compiled() -> tuple[int, float]:
  """``(programs, seconds)``: how many programs this process has compiled (or read from JAX's
  compilation cache) since its first call, and the seconds that took (JAX's own
  measurement). A phase's share is the difference of two calls (:func:`compiling`).

  Example:
    >>> import jax.numpy as jnp
    >>> before = compiled()
    >>> _ = jnp.arange(1237.0) * 17.0  # a shape and an operation not compiled before
    >>> after = compiled()
    >>> after[0] > before[0] and after[1] > before[1]
    True
  """
  if not _LISTENING:
    jax.monitoring.register_event_duration_secs_listener(_on_duration)
    _LISTENING.append(True)
  return _COMPILED[0], _COMPILED[1]


def compiling(since: tuple[int, float]) -> str:
  """What was compiled since ``since`` (a :func:`compiled` value), for a phase's log line:
  ``"compiling 12 programs: 3.4 s"``."""
  n, secs = compiled()
  return f"compiling {n - since[0]} programs: {secs - since[1]:.1f} s"


def folder() -> str | None:
  """The folder to trace the next chunk into: ``$JAXDD_PROFILE`` unless it already holds a trace
  (one per folder), else None."""
  path = os.environ.get(ENV, "").strip()
  if not path or path in _TRIED or os.path.exists(os.path.join(path, SIDECAR)):
    return None
  return path


@contextlib.contextmanager
def traced(path: str, *, first_step: int, steps: int, wait, program=None):
  """Traces what runs inside the block into ``path`` and writes its ``profile.json``.

  ``wait()`` blocks until the device has finished the work in flight; it is called before the
  trace starts, so that earlier steps stay out of it, and before it stops. ``program()``, when
  given, returns the traced program lowered (``jax.jit(f).lower(...)``); its compiled HLO
  (jit's cache holds it: nothing is compiled again) goes beside the trace as
  :data:`PROGRAM`, which names the JAX op behind each kernel that the trace leaves unnamed
  (kernels an accelerator replays as one graph). A profiler that cannot start or stop, or a
  program that cannot be written, is logged and otherwise ignored.
  """
  _TRIED.add(path)
  wait()
  failed = None
  try:
    os.makedirs(path, exist_ok=True)
    jax.profiler.start_trace(path)
  except Exception as e:  # noqa: BLE001 (a diagnostic never stops the run)
    failed = f"{type(e).__name__}: {e}"
  if failed is not None:
    progress_lib.logger.warning("profile: the trace could not start (%s); the run goes on "
                                "untraced", failed)
    _sidecar(path, first_step, steps, error=failed)  # the folder is not tried again
    yield
    return
  t0 = time.perf_counter()
  try:
    yield
  finally:
    try:
      wait()
    except Exception:  # noqa: BLE001 (the block's own error is the one to see)
      pass
    wall = time.perf_counter() - t0
    try:
      jax.profiler.stop_trace()
    except Exception as e:  # noqa: BLE001
      progress_lib.logger.warning("profile: the trace could not be written (%s: %s)",
                                  type(e).__name__, e)
      _sidecar(path, first_step, steps, error=f"{type(e).__name__}: {e}")
    else:
      _sidecar(path, first_step, steps, wall_s=round(wall, 6),
               **(_write_program(path, program) if program is not None else {}))
      progress_lib.logger.info("profile: steps %d-%d traced into %s (%.3f s, %.2f ms a step)",
                               first_step + 1, first_step + steps, path, wall,
                               1e3 * wall / max(steps, 1))


def _write_program(path: str, program) -> dict:
  """:data:`PROGRAM` from ``program()``; the sidecar's fields saying so (its name and the
  seconds it took) or why not (``program_error``)."""
  t0 = time.perf_counter()
  try:
    text = program().compile().as_text()
    io.atomic_write_bytes(os.path.join(path, PROGRAM), gzip.compress(text.encode(), 6))
  except Exception as e:  # noqa: BLE001 (a diagnostic never stops the run)
    progress_lib.logger.warning("profile: the program's HLO could not be written (%s: %s)",
                                type(e).__name__, e)
    return {"program_error": f"{type(e).__name__}: {e}"}
  return {"program": PROGRAM, "program_s": round(time.perf_counter() - t0, 3)}


def _sidecar(path: str, first_step: int, steps: int, **more) -> None:
  """``profile.json``: the steps traced, the device and ``more`` (``wall_s``, or ``error`` when
  the profiler failed; either way the folder is not traced again)."""
  device = jax.devices()[0]
  try:
    io.atomic_write_json(os.path.join(path, SIDECAR), {
        "first_step": int(first_step), "steps": int(steps), "platform": device.platform,
        "device_kind": device.device_kind, "jax": jax.__version__, **more})
  except OSError as e:
    progress_lib.logger.warning("profile: %s could not be written (%s)", SIDECAR, e)
