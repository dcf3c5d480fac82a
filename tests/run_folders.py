"""What a finished run leaves in its folder, against what the work-folder guard protects.

``jaxdd.runs.outputs.RUN_WRITES`` lists by hand the entries a run writes after its
``config.json``; a folder without that record but holding one of them is refused, so that a run
never replaces files jaxdd did not write. Tests of the runs that write each kind of file call
:func:`unlisted` on the folders they made: an entry a run writes that the list lacks shows there.
"""
from __future__ import annotations

import fnmatch
import os

from jaxdd.runs import outputs

#: A run's record and its lock: the guard's own evidence, not in the list.
RECORD = ("config.json", ".lock")


def _listed(rel: str) -> bool:
  return any(fnmatch.fnmatchcase(rel, pattern) for pattern in outputs.RUN_WRITES + RECORD)


def unlisted(run_dir: str) -> list[str]:
  """The paths in ``run_dir`` (relative, ``/``-separated) that no pattern of
  ``RUN_WRITES`` covers: an entry is covered when it, or the folder it is in, matches."""
  out = []
  for root, dirs, files in os.walk(run_dir):
    rel_root = os.path.relpath(root, run_dir).replace(os.sep, "/")
    rel_root = "" if rel_root == "." else rel_root + "/"
    for name in list(dirs):
      if _listed(rel_root + name):
        dirs.remove(name)  # a listed folder is the run's whole
    out += [rel_root + name for name in files if not _listed(rel_root + name)]
  return sorted(out)
