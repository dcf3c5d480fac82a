"""A run's directory: its lock, the check that it holds this run, its stored evaluation."""
from __future__ import annotations

import contextlib
import functools
import json
import os
import socket

from jaxdd import policy as policy_lib
from jaxdd import progress as progress_lib
from jaxdd.config import RunConfig

_HELD_LOCKS: dict[str, int] = {}


@contextlib.contextmanager
def workdir_lock(workdir: str):
  """Holds ``<workdir>/.lock`` (the holder's pid and host) for as long as a run writes there.

  A second process that wants the same workdir is refused with one line naming the
  holder; a lock left by a process that no longer exists on this host is taken over.
  Re-entrant within a process (a run locks its directory around distillation and
  evaluation alike).
  """
  path = os.path.abspath(os.path.join(workdir, ".lock"))
  if _HELD_LOCKS.get(path):
    _HELD_LOCKS[path] += 1
    try:
      yield
    finally:
      _HELD_LOCKS[path] -= 1
    return
  created = []  # the directories this lock creates, deepest first
  d = os.path.dirname(path)
  while not os.path.lexists(d) and os.path.dirname(d) != d:
    created.append(d)
    d = os.path.dirname(d)
  try:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    _acquire(workdir, path)
  except BaseException:
    _remove_empty(created)
    raise
  _HELD_LOCKS[path] = 1
  try:
    yield
  finally:
    _HELD_LOCKS.pop(path, None)
    try:
      os.remove(path)
    except OSError:
      pass
    _remove_empty(created)


def _remove_empty(created: list[str]) -> None:
  """Removes the directories a lock created, deepest first, while they are empty."""
  for d in created:
    try:
      os.rmdir(d)
    except OSError:
      return


def _acquire(workdir: str, path: str) -> None:
  """Creates the lock file ``path``, taking over one whose holder has exited on this host."""
  host = socket.gethostname()
  me = json.dumps({"pid": os.getpid(), "host": host})
  for _ in range(2):
    try:
      fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      try:
        with open(path) as f:
          holder = json.load(f)
      except (OSError, ValueError):
        holder = {}
      pid, where = holder.get("pid"), holder.get("host")
      alive = True
      if where == host and isinstance(pid, int):
        try:
          os.kill(pid, 0)
        except ProcessLookupError:
          alive = False
        except PermissionError:
          alive = True
      if alive:
        raise ValueError(f"{workdir} is in use by process {pid} on {where} (lock file {path}); "
                         "wait for that run to finish, use another --workdir, or delete the "
                         "lock file if that process is gone") from None
      progress_lib.logger.warning("%s: taking over the lock of process %s, which has exited",
                                  workdir, pid)
      os.remove(path)
      continue
    with os.fdopen(fd, "w") as f:
      f.write(me)
    break


def locked(fn):
  """Runs ``fn(config, workdir, ...)`` holding :func:`workdir_lock` on ``workdir``."""
  @functools.wraps(fn)
  def wrapped(config, workdir, *args, **kwargs):
    with workdir_lock(workdir):
      return fn(config, workdir, *args, **kwargs)
  return wrapped


def under_policy(fn):
  """Runs ``fn(config, ...)`` with ``config.policy`` pinned (:func:`jaxdd.policy.use`)."""
  @functools.wraps(fn)
  def wrapped(config, *args, **kwargs):
    with policy_lib.use(config.policy):
      return fn(config, *args, **kwargs)
  return wrapped


def check_workdir(config: RunConfig, workdir: str, *, distill_only: bool = False) -> None:
  """Refuses a workdir that holds a run with another config (reads only).

  With ``distill_only`` (a distillation stage, whose SynSet several evaluations share),
  only the distillation settings must match: the evaluation settings may differ.
  """
  config_path = os.path.join(workdir, "config.json")
  if not os.path.exists(config_path):
    return
  with open(config_path) as f:
    previous = json.load(f)
  if previous.get("digest") == config.digest():
    return  # the same run (also written before distill digests existed)
  if not distill_only:
    raise ValueError(f"{workdir} holds a run with a different config (digest "
                     f"{previous.get('digest')} vs {config.digest()}); use another --workdir "
                     "or delete it to start over")
  if previous.get("distill_digest") != config.distill_digest():
    raise ValueError(f"{workdir} holds a distillation with other settings (digest "
                     f"{previous.get('distill_digest')} vs {config.distill_digest()}); use "
                     "another --workdir or delete it to start over")


def stored_eval(config: RunConfig, workdir: str) -> dict | None:
  """The ``eval.json`` of a finished run with this exact config, else None."""
  path = os.path.join(workdir, "eval.json")
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      stored = json.load(f)
  except (OSError, ValueError):
    return None
  return stored if stored.get("digest") == config.digest() else None
