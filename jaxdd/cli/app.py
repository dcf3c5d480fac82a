"""The main loop: parse, set up, run one command, and map every failure to one line on stderr
and an exit status.

Exit statuses: 0 done; 2 a refused input (bad value, missing data, a file it may not read, a
file read back before any work that does not hold what jaxdd wrote; argparse's refusals too); 1
a fault while working (file system, a non-finite loss, an unreachable index, a file read back
while working that does not hold what jaxdd wrote); 130 Ctrl-C and 143 SIGTERM (a distillation
saves its step first); 3 ``jaxdd audit`` found a SynSet suspicious.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import traceback
import warnings
from typing import Callable, Sequence

from jaxdd._src import interrupt
from jaxdd._src.schema import FileFormatError
from jaxdd.cli import data, flags, runtime
from jaxdd.cli.parser import build_parser
from jaxdd.runs.driver import Interrupted, Terminated


def os_error_line(e: OSError) -> str:
  """One line for a file-system fault: what failed, on which path, and what to do.

  >>> os_error_line(PermissionError(13, "Permission denied", "/x"))
  'Permission denied: /x; the path is not writable: use another --workdir / JAXDD_CACHE, or fix its permissions'
  """
  if e.strerror is None and e.filename is None:  # jaxdd's own one-line message, fix included
    return str(e)
  what = e.strerror or str(e)
  path = e.filename if e.filename is not None else ""
  if isinstance(e, (FileExistsError, NotADirectoryError)):
    fix = "a file is in the way where a directory is needed: use another path or remove it"
  elif isinstance(e, PermissionError) and _unreadable(path):
    fix = ("it cannot be read: fix its permissions (e.g. chmod u+r, a folder u+rx) or give "
           "another path")
  elif isinstance(e, PermissionError):
    fix = "the path is not writable: use another --workdir / JAXDD_CACHE, or fix its permissions"
  elif getattr(e, "errno", None) == 28:  # ENOSPC
    fix = "free some disk space and rerun the same command to resume"
  else:
    fix = "check the path (--workdir, JAXDD_CACHE) and rerun the same command to resume"
  return f"{what}: {path}; {fix}" if path else f"{what}; {fix}"


def _unreadable(path) -> bool:
  """Whether ``path`` exists and this process may not read it (a folder: list it): a
  permission fault on it was a read's, not a write's."""
  if not path or not os.path.exists(path):
    return False
  return not os.access(path, os.R_OK | (os.X_OK if os.path.isdir(path) else 0))


#: The line of a Ctrl-C before any command began (imports, parsing, set-up).
INTERRUPTED_STARTING = "jaxdd: interrupted while starting; nothing was done"

#: What :func:`report` turns into one line and an exit status (anything else propagates).
FAILURES = (KeyboardInterrupt, ValueError, ImportError, OSError, FloatingPointError)


def failure(e: BaseException) -> tuple[int, str]:
  """The exit status and the message of one of :data:`FAILURES`.

  >>> failure(ValueError("--ipc must be positive"))
  (2, 'error: --ipc must be positive')
  >>> failure(FileFormatError("runs/x/eval.json", "'mean' is missing", "delete it", working=True))
  (1, "error: runs/x/eval.json: 'mean' is missing; delete it")
  """
  if isinstance(e, Interrupted) and e.signum == signal.SIGTERM:
    return 143, (f"terminated (SIGTERM) at step {e.step} (checkpoint saved); rerun the same "
                 "command to resume")
  if isinstance(e, Interrupted):
    return 130, (f"interrupted at step {e.step} (checkpoint saved); rerun the same command to "
                 "resume")
  if isinstance(e, Terminated):
    return 143, "terminated (SIGTERM); finished stages are kept, rerun the same command to resume"
  if isinstance(e, runtime.JoinInterrupted):
    return 130, str(e)
  if isinstance(e, KeyboardInterrupt):
    return 130, "interrupted; finished stages are kept, rerun the same command to resume"
  if isinstance(e, FileFormatError):  # a file read back: refused before work (2) or a fault (1)
    return e.status, f"error: {e}"
  if isinstance(e, (ValueError, FileNotFoundError, ImportError)):
    return 2, f"error: {e}"  # a refused input
  if isinstance(e, runtime.CoordinatorUnreachable):
    return 1, f"error: {e}"
  if isinstance(e, PermissionError) and _unreadable(e.filename):
    return 2, f"error: {os_error_line(e)}"  # an input the user must make readable
  if isinstance(e, OSError):
    return 1, f"error: {os_error_line(e)}"  # a fault while working
  return 1, f"error: {e}"  # a non-finite loss


def _warning_line(command: str) -> Callable:
  """``warnings.showwarning`` for a command: ``jaxdd COMMAND: warning: MESSAGE`` on stderr,
  one line, without Python's file name and source line."""
  def show(message, category, filename, lineno, file=None, line=None):
    text = " ".join(str(message).split())
    print(f"jaxdd {command}: warning: {text}", file=sys.stderr if file is None else file)
  return show


def report(command: str, args: argparse.Namespace | None,
           fn: Callable[[argparse.Namespace | None], int]) -> int:
  """Runs a subcommand; every failure becomes one line on stderr and an exit status.

  2: a refused input (bad value, missing data). 1: a fault while working (file system, a
  non-finite loss). 130: Ctrl-C (a distillation saves its step first). A closed output
  pipe ends quietly. ``--debug`` shows the traceback before that line; the status is the same.
  """
  try:
    with warnings.catch_warnings():  # a warning is one jaxdd line, not Python's two
      warnings.showwarning = _warning_line(command)
      return fn(args)
  except BrokenPipeError:
    # The reader went away (e.g. `| head`): stop writing, without a traceback.
    try:
      devnull = os.open(os.devnull, os.O_WRONLY)
      os.dup2(devnull, sys.stdout.fileno())
    except OSError:
      pass
    return 1
  except FAILURES as e:
    if getattr(args, "debug", False):
      traceback.print_exc()
    status, message = failure(e)
    print(f"jaxdd {command}: {message}", file=sys.stderr)
    return status


def _checked(args: argparse.Namespace) -> int:
  runtime.check_cache_root()
  return args.fn(args)


def _terminate(signum, frame):
  raise Terminated


def _on_sigterm():
  """SIGTERM raises :class:`Terminated` (a KeyboardInterrupt) in the main thread, so it unwinds
  as Ctrl-C does (locks released, temporary files removed, one line, exit 143) instead of
  killing the process silently; a distillation loop defers it to the end of its step."""
  if threading.current_thread() is not threading.main_thread():
    return None
  return signal.signal(signal.SIGTERM, _terminate)


def main(argv: Sequence[str] | None = None) -> int:
  """Runs ``jaxdd ARGV`` (default: the process's arguments) and returns its exit status."""
  argv = list(sys.argv[1:] if argv is None else argv)
  if argv[:2] == ["data", "fetch"]:
    return report("data fetch", data.build_fetch_parser().parse_args(argv[2:]), data.cmd_fetch)
  if argv[:2] == ["data", "inspect"]:
    args = data.build_inspect_parser().parse_args(argv[2:])
    was = runtime.setup(args.quiet, args.no_compile_cache)
    try:
      return report("data inspect", args, data.cmd_inspect)
    finally:
      runtime.restore(was)
  args = build_parser(flags.preset_in(argv)).parse_args(argv)
  was = runtime.setup(args.quiet, args.no_compile_cache)
  previous = _on_sigterm()
  try:
    with interrupt.enabled():  # long XLA calls in a worker thread: signals handled at once
      return report(args.command, args, _checked)
  finally:
    runtime.restore(was)
    if previous is not None:
      signal.signal(signal.SIGTERM, previous)


def stopped_by(e: KeyboardInterrupt) -> tuple[int, str]:
  """The exit status of a stop and the word for it: 143 and ``terminated (SIGTERM)`` when
  SIGTERM raised it (:class:`Terminated`, or a distillation's :class:`Interrupted` after
  SIGTERM), else 130 and ``interrupted``.

  >>> stopped_by(Terminated()), stopped_by(KeyboardInterrupt())
  ((143, 'terminated (SIGTERM)'), (130, 'interrupted'))
  """
  if isinstance(e, Terminated) or (isinstance(e, Interrupted) and e.signum == signal.SIGTERM):
    return 143, "terminated (SIGTERM)"
  return 130, "interrupted"


def run_script(main_fn: Callable[[], int]) -> None:
  """Runs an experiment script's ``main()`` as the jaxdd commands run, then ends the process
  with its status: SIGTERM unwinds as Ctrl-C does (the script's handlers print their line and
  release its runs' locks; :func:`stopped_by` tells the two apart), long XLA calls leave the
  main thread free for the signal, and after 130 or 143 the process ends at once, as
  :func:`entry` does, instead of tearing XLA's worker threads down half-way."""
  previous = _on_sigterm()
  try:
    with interrupt.enabled():
      rc = main_fn()
  except KeyboardInterrupt as e:  # outside the script's own handlers: before its work began
    rc, word = stopped_by(e)
    print(f"{os.path.basename(sys.argv[0])}: {word} while starting; nothing was done",
          file=sys.stderr)
  finally:
    if previous is not None:
      signal.signal(signal.SIGTERM, previous)
  _exit(rc, at_once=rc in (130, 143))


def _exit(rc: int, *, at_once: bool) -> None:
  """Ends the process with ``rc``; ``at_once``: with ``os._exit`` once the output is flushed
  (XLA's worker threads are not torn down half-way by the interpreter's shutdown)."""
  if at_once:
    for stream in (sys.stdout, sys.stderr):
      try:
        stream.flush()
      except (OSError, ValueError):
        pass
    os._exit(rc)
  sys.exit(rc)


def entry() -> None:
  """The ``jaxdd`` console script: :func:`main`, then the process exits with its status.

  After Ctrl-C (status 130) the process ends at once (``os._exit``) once the output is
  flushed: every file was written atomically and the checkpoint is on disk, and XLA's
  worker threads are not torn down by the interpreter's shutdown half-way through work. So
  does a multi-process run that gave up joining (:func:`runtime.stranded`): XLA's wait,
  still running, would abort the process later.
  """
  try:
    rc = main()
  except KeyboardInterrupt:  # before the command began (parsing, set-up): nothing was done
    print(INTERRUPTED_STARTING, file=sys.stderr)
    rc = 130
  _exit(rc, at_once=rc in (130, 143) or runtime.stranded())
