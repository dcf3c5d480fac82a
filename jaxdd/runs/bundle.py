"""What a unit of work hands back from a lent machine: its records and its runs, packed small.

A lent accelerator returns at most a few files of bounded size from one command. A unit's
record is small JSON; its runs (each SynSet with the run's configuration, metrics and
evaluation) go into one gzipped tar, cut into parts of at most :data:`PART_BYTES`, so that
``cat runs.tar.gz.part* | tar xz -C <workdir>`` puts the run folders back as they were.
Nothing else is packed: no checkpoint, no plot.
"""
from __future__ import annotations

import io
import os
import tarfile

from jaxdd._src import io as io_lib

#: The largest file :func:`write_out` leaves.
PART_BYTES = 16 * 2**20
#: The most files :func:`write_out` leaves.
MAX_FILES = 8
#: The files of a run folder that are packed (those present).
RUN_FILES = ("config.json", "weights.json", "metrics.jsonl", "paper-eval.json",
             "paper-timing.json", "synset/arrays.npz", "synset/meta.json",
             "synset/manifest.json", "synset/signature.json")


def check_out(out: str) -> None:
  """Refuses an output folder that is not a new path or an empty folder (nothing is written
  into a folder that holds anything, so nothing is overwritten)."""
  if os.path.lexists(out) and (not os.path.isdir(out) or os.path.islink(out) or os.listdir(out)):
    raise ValueError(f"--out {out} must be a new path or an empty folder; give another")


def pack_runs(root: str, run_dirs: list[str]) -> bytes:
  """A gzipped tar of the run folders' :data:`RUN_FILES`, named relative to ``root``, in a
  fixed order with fixed times and owners (the same runs give the same bytes)."""
  buf = io.BytesIO()
  with tarfile.open(fileobj=buf, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
    for d in run_dirs:
      for name in RUN_FILES:
        path = os.path.join(d, name)
        if not os.path.isfile(path):
          continue
        info = tar.gettarinfo(path, arcname=os.path.relpath(path, root))
        info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
        with open(path, "rb") as f:
          tar.addfile(info, f)
  return buf.getvalue()


def write_out(out: str, records: list[tuple[str, str]], root: str,
              run_dirs: list[str]) -> list[str]:
  """Leaves the unit records (``(file name, path)``) and the runs' tar in parts in ``out``:
  at most :data:`MAX_FILES` files of at most :data:`PART_BYTES` each. Returns the names
  written: without ``runs.tar.gz.part*`` when the runs do not fit beside the records (the
  caller says so).

  Raises:
    ValueError: the records alone exceed the limits.
  """
  check_out(out)
  files: dict[str, bytes] = {}
  for name, path in records:
    with open(path, "rb") as f:
      files[name] = f.read()
  if len(files) > MAX_FILES or any(len(b) > PART_BYTES for b in files.values()):
    raise ValueError(f"{len(files)} unit records do not fit in {MAX_FILES} files of "
                     f"{PART_BYTES // 2**20} MiB; run fewer units with --out")
  packed = pack_runs(root, run_dirs)
  parts = [packed[i:i + PART_BYTES] for i in range(0, len(packed), PART_BYTES)]
  if len(files) + len(parts) <= MAX_FILES:
    files.update({f"runs.tar.gz.part{i}": b for i, b in enumerate(parts)})
  os.makedirs(out, exist_ok=True)
  for name, data in files.items():
    io_lib.atomic_write_bytes(os.path.join(out, name), data)
  return sorted(files)
