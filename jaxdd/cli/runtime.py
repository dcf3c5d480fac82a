"""What the command line sets up around a command: compile cache, allocator, logging, processes.

:func:`setup` runs before every command (except ``report`` and ``data fetch``): logging and
``--quiet``, JAX's persistent compilation cache (unless ``--no-compile-cache`` or
``JAXDD_COMPILE_CACHE=0``) and glibc's allocator (unless ``JAXDD_TUNE_MALLOC=0``);
:func:`restore` undoes the logging part, so :func:`jaxdd.cli.main` called from Python leaves no
global logging state behind.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import tempfile
import threading
import time

import jax

from jaxdd import progress
from jaxdd._src.io import cache_root

_OFF = ("0", "false", "no", "off")


def enable_compile_cache(path: str | None = None, *, min_compile_time_secs: float = 1.0) -> str:
  """Turns on JAX's persistent compilation cache (the CLI does this unless told not to).

  Args:
    path: cache folder (default ``$JAXDD_CACHE/xla``, i.e. ``~/.cache/jaxdd/xla``).
    min_compile_time_secs: only programs that took at least this long to
      compile are stored.

  Returns:
    The folder used.
  """
  if path is None:
    path = str(cache_root("xla"))
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_time_secs))
  return path


def tune_allocator() -> bool:
  """Keeps freed memory in the process instead of returning it to the kernel (glibc only).

  XLA:CPU allocates its large buffers with ``malloc``; glibc serves them with
  ``mmap`` and unmaps them on ``free``, so every compiled call faults its
  buffers in again (docs/results/speed-kde-scaling.md, "Keeping freed memory, and XLA flags"). The same setting as
  the environment variables ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=...`` (the "tuned"
  PyTorch reference), applied at run time with ``mallopt``. The CLI calls it unless
  ``JAXDD_TUNE_MALLOC=0``; the price is a resident size that stays at its peak.

  Returns:
    True if glibc accepted both settings, False elsewhere (no effect).
  """
  try:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    mallopt = libc.mallopt
  except (OSError, AttributeError):
    return False
  m_trim_threshold, m_mmap_max = -1, -4  # glibc's <malloc.h>
  return bool(mallopt(m_mmap_max, 0)) and bool(mallopt(m_trim_threshold, 2 ** 31 - 1))


def setup(quiet: bool, no_compile_cache: bool) -> tuple[bool, bool]:
  """Logging, --quiet and the compilation cache; returns the previous logging state."""
  was = (progress.is_quiet(), progress.logger.propagate)
  progress.setup_logging(quiet)
  if not no_compile_cache and os.environ.get("JAXDD_COMPILE_CACHE", "1").lower() not in _OFF:
    enable_compile_cache()
  if os.environ.get("JAXDD_TUNE_MALLOC", "1").lower() not in _OFF:
    tune_allocator()
  return was


def restore(was: tuple[bool, bool]) -> None:
  """Puts back the logging state :func:`setup` returned."""
  progress.set_quiet(was[0])
  progress.logger.propagate = was[1]


def check_cache_root() -> None:
  """$JAXDD_CACHE (default ``~/.cache/jaxdd``) must be a writable directory or one that can be
  created: checked before any work by creating and removing an empty folder in it or its
  nearest existing ancestor (permissions alone do not say that, e.g. under ``/proc`` or on a
  read-only file system). Raises an OSError of one line naming the fix (exit status 1)."""
  root = cache_root()
  fix = "set JAXDD_CACHE to a writable folder (e.g. JAXDD_CACHE=/tmp/jaxdd-cache)"
  probe = root
  while not os.path.lexists(probe) and probe.parent != probe:
    probe = probe.parent
  if not probe.is_dir():
    raise OSError(f"the jaxdd cache {root} cannot be a directory: {probe} is a file; {fix}")
  try:
    os.rmdir(tempfile.mkdtemp(prefix=".jaxdd-probe-", dir=probe))
  except OSError as e:
    why = e.strerror or str(e)
    where = "written" if probe == root else f"created: {probe} takes no new folder"
    raise OSError(f"the jaxdd cache {root} cannot be {where} ({why}); {fix}") from e


#: ``--coordinator-timeout``'s default: seconds a process waits for every process to join.
COORDINATOR_TIMEOUT = 30.0


class CoordinatorUnreachable(OSError):
  """The processes of a multi-process run did not all join within ``--coordinator-timeout``."""


class JoinInterrupted(KeyboardInterrupt):
  """Ctrl-C while waiting for the other processes of a multi-process run."""


_STRANDED: list[threading.Thread] = []


def stranded() -> bool:
  """True once a join was abandoned: its thread still waits inside XLA, which would abort the
  process when its own deadline passes, so the command line ends the process at once."""
  return bool(_STRANDED)


def join_processes(workdir: str, coordinator: str, num_processes: int | None,
                   process_id: int | None, timeout: float = COORDINATOR_TIMEOUT) -> str:
  """Joins a multi-process run (``--coordinator``) and returns this process's run directory.

  ``jax.distributed.initialize`` must run before JAX starts a backend; on CPU the
  collectives go through gloo. Process 0 writes ``--workdir``; process i > 0 keeps
  its own copy (checkpoints, metrics, SynSet, evaluation) in ``<workdir>/.process-<i>``,
  so every process resumes from its own files.

  The join waits at most ``timeout`` seconds (:class:`CoordinatorUnreachable`, exit status 1)
  and Ctrl-C ends the wait (:class:`JoinInterrupted`, 130). XLA's own wait blocks and aborts
  the process when its deadline passes, so it runs in a thread given a later deadline.
  """
  n, i = num_processes, process_id
  if n is None or i is None:
    raise ValueError("--coordinator needs --num-processes N and --process-id I (0 .. N-1)")
  if n < 1 or not 0 <= i < n:
    raise ValueError(f"--process-id {i} must lie in [0, --num-processes {n}); number the "
                     "processes 0 .. N-1")
  if not timeout > 0:
    raise ValueError(f"--coordinator-timeout must be a positive number of seconds; got {timeout}")
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  failed: list[BaseException] = []

  def connect():
    try:  # XLA's deadline comes after ours: the main thread gives up (and exits) first
      jax.distributed.initialize(coordinator, num_processes=n, process_id=i,
                                 initialization_timeout=int(timeout) + 60)
    except BaseException as e:  # noqa: BLE001  (handed to the main thread)
      failed.append(e)

  thread = threading.Thread(target=connect, name="jaxdd-join", daemon=True)
  deadline = time.monotonic() + timeout
  try:
    thread.start()
    # Short waits: Ctrl-C may reach one of XLA's threads, and then only wakes the main
    # thread's handler when its wait ends.
    while thread.is_alive() and time.monotonic() < deadline:
      thread.join(min(0.1, max(0.0, deadline - time.monotonic())))
  except KeyboardInterrupt:
    _STRANDED.append(thread)
    raise JoinInterrupted(f"interrupted while waiting for the coordinator {coordinator}; "
                          "nothing was written") from None
  if thread.is_alive():
    _STRANDED.append(thread)
    others = ("start the other processes (the same flags, --process-id 1 .. N-1)" if i == 0
              else "start process 0 there (the same flags, --process-id 0) and the others")
    raise CoordinatorUnreachable(
        f"process {i} of {n} could not join the run at --coordinator {coordinator} within "
        f"{timeout:g} s; {others} within that time, check the address and port, or raise "
        "--coordinator-timeout")
  if failed:
    first = str(failed[0]).strip().splitlines()
    raise CoordinatorUnreachable(
        f"process {i} of {n} could not join the run at --coordinator {coordinator} "
        f"({type(failed[0]).__name__}: {first[0][:200] if first else ''}); check the address "
        "and port (process 0 listens on it)")
  return workdir if i == 0 else os.path.join(workdir, f".process-{i}")
