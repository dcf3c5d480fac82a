"""The guards of what a command writes: what a user names as ``--out`` or ``--workdir``
destroys nothing.

Every command that writes a file a user names (``jaxdd evaluate --out``, ``cross-arch --out``,
``audit --out``) calls :func:`check_output_file` before any work. It refuses, in one line:

* a path that exists and is not a regular file: a folder, a device (``/dev/full``), a FIFO,
  a socket, or a symbolic link (whatever it points to);
* any path inside a SynSet folder (one holding ``manifest.json`` and ``arrays.npz``) or a
  run's ``checkpoints`` folder: jaxdd wrote every file there and checks them;
* in a run folder (one holding ``config.json`` or ``metrics.jsonl``, or a reproduce folder's
  ``comparison.md``) or up to two levels below it, an existing file unless it is the output of the
  same command (``owns``), which is then replaced as the command run again would; and in the
  run folder itself a new file under a name the run uses for its own files;
* anywhere else, an existing file that is not the output of the same command (``owns``): a
  user's notes, another command's output, a file of any other program;
* a path that cannot be written (:func:`jaxdd.runs.checks.check_writable`).

So a command only ever replaces what the same command wrote before, as it would run again.
The guard only reads, and reads at most :data:`MAX_OWN_BYTES` of an existing file to tell
whose it is.

Every command that begins work in a folder (a run, ``reproduce``, ``tune``, ``final``,
``baselines``, ``diagnose``) calls :func:`check_work_folder` first: a folder inside a SynSet
or a run's checkpoints is refused, and so is one that holds none of that work's record but
already holds an entry the work would replace (a ``synset/`` or ``metrics.jsonl`` jaxdd did
not write there). :data:`RUN_WRITES` lists a run's entries by hand: a run that writes a new
one adds it there (the tests of the runs that write each kind of file check that every file
they left is listed).
"""
from __future__ import annotations

import glob
import json
import os
import stat
from typing import Callable, Iterable

from jaxdd._src import io as _io
from jaxdd.runs import artifacts, checks

#: The names a run folder uses for its own files (never an ``--out``, new or not).
RUN_NAMES = artifacts.RUN_FILES + ("comparison.md", "metrics.jsonl", ".lock",
                                   "paper-eval.json", "paper-timing.json")
#: What a run writes or replaces in its folder after its ``config.json``
#: (:func:`check_run_folder`).
RUN_WRITES = ("synset", "checkpoints", "metrics.jsonl", "eval.json", "weights.json", "buffer.json",
              "auto.json",
              "bias_score.json", "eval-*.json", "paper-eval.json", "paper-timing.json",
              "plots/synset.png", "plots/weights.png", "tensorboard")
#: The most bytes read of an existing output to tell whether the command wrote it.
MAX_OWN_BYTES = 64 * 2**20


def is_synset_dir(folder: str) -> bool:
  return (os.path.isfile(os.path.join(folder, "manifest.json"))
          and os.path.isfile(os.path.join(folder, "arrays.npz")))


def is_run_dir(folder: str) -> bool:
  """A run folder (``config.json`` or ``metrics.jsonl``) or a reproduce folder
  (``comparison.md``). A ``.lock`` alone is not one: other tools leave such files."""
  return any(os.path.lexists(os.path.join(folder, name))
             for name in ("config.json", "metrics.jsonl", "comparison.md"))


def _inside_jaxdd_files(path: str, flag: str, given: str) -> None:
  """Refuses ``path`` (``flag given``) inside a SynSet folder or a run's checkpoints, as
  written and as its symbolic links resolve (a link into a run's ``checkpoints`` leads there)."""
  real = os.path.realpath(path)
  for resolved, start in ((False, path), (True, real)):
    if resolved and real == path:
      return
    for anc_abs in _ancestors(start):
      if resolved:
        where, how = anc_abs, " leads through a symbolic link into"
      else:  # as the user wrote it
        where = anc_abs if os.path.isabs(given) else os.path.relpath(anc_abs)
        how = " is inside"
      if is_synset_dir(anc_abs):
        raise ValueError(f"{flag} {given}{how} the SynSet {where}, whose files jaxdd wrote "
                         "and checks; give a path outside it")
      if os.path.basename(anc_abs) == "checkpoints" and is_run_dir(os.path.dirname(anc_abs)):
        raise ValueError(f"{flag} {given}{how} the checkpoints of the run in "
                         f"{os.path.dirname(where)}; give a path outside them")


def check_outside_jaxdd_files(path: str, *, flag: str) -> None:
  """Refuses ``path`` (a folder a command will write, given with ``flag``) inside a SynSet
  folder or a run's ``checkpoints``, as written or through a symbolic link (reads only)."""
  _inside_jaxdd_files(os.path.abspath(path), flag, path)


def _ancestors(folder: str) -> Iterable[str]:
  while True:
    yield folder
    parent = os.path.dirname(folder)
    if parent == folder:
      return
    folder = parent


def json_object_with(path: str, keys: tuple[str, ...]) -> bool:
  """Whether ``path`` is a regular file of at most :data:`MAX_OWN_BYTES` holding a JSON
  object with ``keys``: how a command recognises the output it wrote before."""
  try:
    if os.path.getsize(path) > MAX_OWN_BYTES:
      return False
    with open(path, "rb") as f:
      obj = json.loads(f.read(MAX_OWN_BYTES + 1))
  except (OSError, ValueError):
    return False
  return isinstance(obj, dict) and all(k in obj for k in keys)


def check_output_file(out: str, *, what: str, owns: Callable[[str], bool],
                      flag: str = "--out") -> None:
  """Refuses ``out`` as a command's output file unless writing it destroys nothing.

  Args:
    out: the path the user gave.
    what: the command's output in words ("an evaluation", "an audit report").
    owns: whether an existing regular file is that command's output (replaced then).
    flag: the option the user gave ``out`` with, as the refusal names it.

  Raises:
    ValueError: the one-line refusal, naming what to give instead.
    OSError: the path cannot be written (as the first write would raise).
  """
  path = os.path.abspath(out)
  if os.path.islink(out):
    raise ValueError(f"{flag} {out} is a symbolic link; give the path of a new file or of "
                     f"{what} jaxdd wrote")
  if os.path.lexists(path):
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
      raise ValueError(f"{flag} {out} is {_io.file_kind(mode)}, not a regular file; give the "
                       "path of a new file")
  folder = os.path.dirname(path)
  _inside_jaxdd_files(folder, flag, out)
  name = os.path.basename(path)
  # the run folder itself or one or two levels above (its plots/, a reproduce folder's runs),
  # as written or as its links resolve
  real = os.path.realpath(folder)
  near = list(_ancestors(folder))[:3] + list(_ancestors(real))[:3]
  run = next((a for a in near if is_run_dir(a)), None)
  if run is not None and ((run in (folder, real) and name in RUN_NAMES)
                          or (os.path.lexists(path) and not owns(path))):
    shown = run if os.path.isabs(out) else os.path.relpath(run)  # as the user wrote it
    raise ValueError(f"{flag} {out} would replace a file of the run in {shown} ({name}, not "
                     f"{what} jaxdd wrote); give another name, e.g. "
                     f"{os.path.join(os.path.dirname(out), 'out-' + name.lstrip('.'))}")
  if os.path.lexists(path) and not owns(path):
    raise ValueError(f"{flag} {out} exists and is not {what} jaxdd wrote; give the path of a "
                     "new file, or move that one away first")
  checks.check_writable(out, file=True)


def check_work_folder(folder: str, *, record: str, writes: Iterable[str], what: str,
                      flag: str = "--workdir",
                      owns: Callable[[str], bool] | None = None) -> None:
  """Refuses ``folder`` for new work unless the work destroys nothing there (reads only).

  Refused, in one line: a folder inside a SynSet or a run's ``checkpoints``; and a folder
  without the work's ``record`` (so the work begins there now) that already holds one of
  ``writes`` (names or glob patterns relative to ``folder``, e.g. ``"synset"``,
  ``"plots/synset.png"``, ``"eval-*.json"``): the work would replace what it did not write.
  Anything else in the folder is left alone by the work, and allowed.

  Args:
    folder: the ``--workdir`` the user gave, or a folder the command derived from it.
    record: the file the work writes first (or, for work that writes it last, only once
      it is complete) and so marks the folder as holding it.
    writes: what else the work writes or replaces in ``folder``.
    what: the work in words ("a run", "a comparison").
    flag: how the refusal names ``folder``: the option the user gave it with, or "" for a
      folder the command derived from it (a ``reproduce`` folder's ``dm/``).
    owns: given, whether an existing ``record`` is the work's own (a file of the same name
      that it is not is refused: the work would replace it).

  Raises:
    ValueError: the one-line refusal, naming what is in the way.
  """
  path = os.path.abspath(folder)
  _inside_jaxdd_files(path, flag or "the folder", folder)
  named = f"{flag} {folder}" if flag else folder
  if not os.path.isdir(path):
    return
  if os.path.lexists(os.path.join(path, record)):
    if owns is not None and not owns(os.path.join(path, record)):
      raise ValueError(f"{named} holds a {record} that is not {what} jaxdd wrote; give a new or "
                       "empty --workdir, or move it away")
    return
  found = sorted({hit for pattern in writes
                  for hit in glob.glob(os.path.join(glob.escape(path), pattern))})
  if found:
    names = [os.path.relpath(f, path) + ("/" if os.path.isdir(f) else "") for f in found]
    listed = _io.listed(names)
    raise ValueError(f"{named} holds {listed} but no {record}: {what} there would replace what "
                     "jaxdd did not write; give a new or empty --workdir, or move "
                     f"{'it' if len(names) == 1 else 'them'} away")


def check_run_folder(workdir: str, *, flag: str = "--workdir") -> None:
  """:func:`check_work_folder` for one run: its record is ``config.json``, written before
  anything else, so a folder without one that holds a ``synset/``, ``metrics.jsonl``, ...
  (:data:`RUN_WRITES`) holds files no run of jaxdd wrote there."""
  check_work_folder(workdir, record="config.json", writes=RUN_WRITES, what="a run", flag=flag)
  check_run_synset(workdir, flag=flag)


def check_run_synset(workdir: str, *, flag: str = "--workdir") -> None:
  """Refuses a run folder whose ``synset`` the run could not replace when it finishes: a
  symbolic link, a file, or a folder of files that are not a SynSet (reads only; the SynSet
  is written last, so this comes before any work, not after the distillation)."""
  syn = os.path.join(workdir, "synset")
  if not os.path.lexists(syn):
    return
  if os.path.islink(syn):
    kind = "a symbolic link"
  elif not os.path.isdir(syn):
    kind = "a file" if os.path.isfile(syn) else _io.file_kind(os.stat(syn).st_mode)
  elif os.listdir(syn) and not is_synset_dir(syn):
    kind = f"a folder of {_io.listed(sorted(os.listdir(syn)))}"
  else:
    return
  named = f"{flag} {workdir}" if flag else workdir
  raise ValueError(f"{named}: its synset is {kind}, not a SynSet jaxdd wrote, and the run would "
                   f"replace it; move {syn} away, then rerun the same command")
