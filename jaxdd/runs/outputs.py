"""The one guard of a command's output file: what a user names as ``--out`` destroys nothing.

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
* a path that cannot be written (:func:`jaxdd.runs.checks.check_writable`).

A file outside jaxdd's folders may be replaced, as any command's output. The guard only
reads, and reads at most :data:`MAX_OWN_BYTES` of an existing file to tell whose it is.
"""
from __future__ import annotations

import json
import os
import stat
from typing import Callable, Iterable

from jaxdd._src import io as _io
from jaxdd.runs import artifacts, checks

#: The names a run folder uses for its own files (never an ``--out``, new or not).
RUN_NAMES = artifacts.RUN_FILES + ("comparison.md", "metrics.jsonl", ".lock",
                                   "paper-eval.json", "paper-timing.json")
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


def check_output_file(out: str, *, what: str, owns: Callable[[str], bool]) -> None:
  """Refuses ``out`` as a command's output file unless writing it destroys nothing.

  Args:
    out: the path the user gave.
    what: the command's output in words ("an evaluation", "an audit report").
    owns: whether an existing regular file is that command's output (replaced then).

  Raises:
    ValueError: the one-line refusal, naming what to give instead.
    OSError: the path cannot be written (as the first write would raise).
  """
  path = os.path.abspath(out)
  if os.path.islink(out):
    raise ValueError(f"--out {out} is a symbolic link; give the path of a new file or of "
                     f"{what} jaxdd wrote")
  if os.path.lexists(path):
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
      raise ValueError(f"--out {out} is {_io.file_kind(mode)}, not a regular file; give the "
                       "path of a new file")
  folder = os.path.dirname(path)
  for anc in _ancestors(folder):
    if is_synset_dir(anc):
      raise ValueError(f"--out {out} is inside the SynSet {anc}, whose files jaxdd wrote and "
                       "checks; give a path outside it")
    if os.path.basename(anc) == "checkpoints" and is_run_dir(os.path.dirname(anc)):
      raise ValueError(f"--out {out} is inside the checkpoints of the run in "
                       f"{os.path.dirname(anc)}; give a path outside them")
  name = os.path.basename(path)
  # the run folder itself or one or two levels above (its plots/, a reproduce folder's runs)
  run = next((a for a in list(_ancestors(folder))[:3] if is_run_dir(a)), None)
  if run is not None and ((run == folder and name in RUN_NAMES)
                          or (os.path.lexists(path) and not owns(path))):
    raise ValueError(f"--out {out} would replace a file of the run in {run} ({name}, not "
                     f"{what} jaxdd wrote); give another name, e.g. "
                     f"{os.path.join(os.path.dirname(out), 'out-' + name.lstrip('.'))}")
  checks.check_writable(out, file=True)
