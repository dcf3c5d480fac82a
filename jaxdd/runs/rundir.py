"""A run's directory: its lock, the check that it holds this run, its stored evaluation."""
from __future__ import annotations

import contextlib
import functools
import json
import os
import socket

from jaxdd import policy as policy_lib
from jaxdd._src import schema
from jaxdd import progress as progress_lib
from jaxdd.config import METHODS, RunConfig
from jaxdd.runs import files

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
      try:  # an unreadable lock names no holder (and is not taken over)
        holder = schema.read_json(path, schema.map_of(schema.ANY), fix="")
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
      if not isinstance(pid, int):  # being written this moment, or damaged: not taken over
        raise ValueError(f"{workdir} has a lock file {path} that names no process (empty or "
                         "damaged): a run may be starting there; if none is, delete the lock "
                         "file") from None
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
  previous = files.read_run_config(workdir)
  if previous is None:
    return
  if previous.get("digest") in (config.digest(), config.digest(legacy=True)):
    return  # the same run (also written before distill digests existed)
  if not distill_only:
    raise ValueError(f"{workdir} holds a run with a different config (digest "
                     f"{previous.get('digest')} vs {config.digest()}); use another --workdir "
                     "or delete it to start over")
  if previous.get("distill_digest") not in (config.distill_digest(),
                                            config.distill_digest(legacy=True)):
    raise ValueError(f"{workdir} holds a distillation with other settings (digest "
                     f"{previous.get('distill_digest')} vs {config.distill_digest()}); use "
                     "another --workdir or delete it to start over")


def check_data(workdir: str, identity: dict | None) -> None:
  """Refuses to go on with a run on a user's data whose content changed since the run began
  (its ``config.json`` records the data's digest, :meth:`jaxdd.data.own.OwnData.identity`):
  a SynSet half distilled from other images would be neither run's. Reads only."""
  if identity is None:
    return
  stored = (files.read_run_config(workdir) or {}).get("data")
  if stored is not None and stored["sha256"] != identity["sha256"]:
    raise ValueError(f"{workdir} was begun on other data: {identity['spec']} has changed since "
                     f"(content sha256 {stored['sha256'][:12]} then, "
                     f"{identity['sha256'][:12]} now); restore the data, or use another "
                     "--workdir to start over on the data as they are")


def check_setting(setting: dict, workdir: str, *, adding: str,
                  elsewhere: str = "use another --workdir") -> None:
  """Refuses to add ``adding`` (results of ``setting``, :func:`jaxdd.runs.files.run_setting`)
  to a workdir that holds a run of another setting (reads only).

  The runs looked at: ``<workdir>/config.json`` and the ``config.json`` of the run directories
  of ``jaxdd reproduce`` directly inside it (named after their method: ``dm``, ``dm_kde``, ...).
  Results written side by side must share the data, the IPC and the evaluation, as
  :func:`check_workdir` requires of a run. ``elsewhere`` is the refusal's first fix (the
  option that puts the results somewhere else).
  """
  if not os.path.isdir(workdir):
    return
  methods = [m + kde for m in METHODS for kde in ("", "_kde")]
  for d in [workdir] + [os.path.join(workdir, m) for m in methods]:
    stored = files.read_run_config(d) if os.path.isdir(d) else None
    if stored is None or not isinstance(stored.get("config"), dict):
      continue
    have = files.run_setting(stored["config"])
    differ = [f"{k} {have.get(k)} there, {setting.get(k)} now"
              for k in dict.fromkeys([*have, *setting]) if have.get(k) != setting.get(k)]
    if differ:
      raise ValueError(f"{d} holds a run of another setting ({'; '.join(differ)}); {adding} "
                       f"would sit beside it unmarked: {elsewhere}, or the run's settings")


def stored_eval(config: RunConfig, workdir: str) -> dict | None:
  """The ``eval.json`` of a finished run with this exact config, else None (None too in a
  folder without the run's ``config.json``: no run of jaxdd is there).

  Raises:
    jaxdd._src.schema.FileFormatError: the file is there but is not an evaluation that jaxdd
      wrote (``--reevaluate`` does not read it, and replaces it).
  """
  path = os.path.join(workdir, "eval.json")
  if not os.path.exists(path) or not os.path.lexists(os.path.join(workdir, "config.json")):
    return None  # no run: an eval.json there is not a run's (check_run_folder refuses it)
  stored = files.read_eval(path)
  return stored if stored.get("digest") in (config.digest(), config.digest(legacy=True)) \
      else None
