"""What a unit of work hands back from a lent machine: its records and its runs, packed small.

A lent accelerator returns at most a few files of bounded size from one command. A unit's
record is small JSON; its runs (each SynSet with the run's configuration, metrics and
evaluation) go into one gzipped tar, cut into parts of at most :data:`PART_BYTES`, so that
``cat runs.tar.gz.part* | tar xz -C <workdir>`` puts the run folders back as they were.
No checkpoint and no plot is packed there.

A unit the time budget stopped part-way hands over instead what the next machine needs to go
on (:func:`write_handover`, :func:`read_handover`, :func:`unpack_handover`): its run folders
with their latest checkpoint and the surrogates they use (parameters only), in parts beside a
manifest (``handover.json``) that records each part's sha256.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile
import zlib


from jaxdd._src import io as io_lib
from jaxdd._src import schema
from jaxdd.surrogate import cache

#: The largest file :func:`write_out` and :func:`write_handover` leave.
PART_BYTES = 16 * 2**20
#: The most files :func:`write_out` and :func:`write_handover` leave: a lent machine returns
#: 8, and the command's log is one of them.
MAX_FILES = 7
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


def read_runs(src: str) -> tuple[bytes, list[str]]:
  """The runs :func:`write_out` left in the folder ``src`` (its ``runs.tar.gz.part*`` joined
  in order and decompressed: a plain tar) and the run folders they hold
  (``<cell>/<row>/s<seed>``, relative to the work folder they came from); ``(b"", [])`` when
  ``src`` holds no runs.

  Raises:
    ValueError: a part missing or damaged, or a member that is not one of a run's
      :data:`RUN_FILES`.
  """
  names = [n for n in os.listdir(src) if n.startswith("runs.tar.gz.part")]
  index = sorted(int(n[len("runs.tar.gz.part"):]) for n in names
                 if n[len("runs.tar.gz.part"):].isdigit())
  if len(index) != len(names) or index != list(range(len(index))):
    raise ValueError(f"{src} holds the runs' parts {sorted(names)}, not part0 to part"
                     f"{len(names) - 1}; carry every part the machine left")
  if not index:
    return b"", []
  chunks = []
  for i in index:
    with open(os.path.join(src, f"runs.tar.gz.part{i}"), "rb") as f:
      chunks.append(f.read())
  runs: set[str] = set()
  try:
    # the whole stream, so that a part cut short fails here (gzip's length and CRC) and not
    # half-way through unpacking
    plain = gzip.decompress(b"".join(chunks))
    with tarfile.open(fileobj=io.BytesIO(plain), mode="r:") as tar:
      for m in tar.getmembers():
        parts = m.name.split("/")
        if (not m.isfile() or len(parts) < 4 or ".." in parts or os.path.isabs(m.name)
            or "/".join(parts[3:]) not in RUN_FILES):
          raise ValueError(f"the runs in {src} hold {m.name!r}, which is not a file of a run; "
                           "carry what jaxdd wrote")
        runs.add("/".join(parts[:3]))
  except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
    raise ValueError(f"the runs' parts in {src} do not unpack ({e}); carry every part "
                     "again") from e
  return plain, sorted(runs)


def unpack_runs(plain: bytes, runs: list[str], workdir: str) -> None:
  """Puts the run folders :func:`read_runs` found (in its tar, ``plain``) into ``workdir``;
  nothing is replaced (a run
  folder that exists is refused before anything is written), and each folder appears whole
  (unpacked beside it, then renamed into place).

  Raises:
    ValueError: a run folder exists in ``workdir``.
  """
  for rel in runs:
    if os.path.lexists(os.path.join(workdir, rel)):
      raise ValueError(f"{os.path.join(workdir, rel)} exists; the returned runs would replace "
                       "it: give another --workdir")
  if not runs:
    return
  os.makedirs(workdir, exist_ok=True)
  staged = tempfile.mkdtemp(prefix=".tmp-runs-", dir=workdir)
  try:
    with tarfile.open(fileobj=io.BytesIO(plain), mode="r:") as tar:
      tar.extractall(staged, filter="data")
    for rel in runs:
      os.makedirs(os.path.dirname(os.path.join(workdir, rel)), exist_ok=True)
      os.rename(os.path.join(staged, rel), os.path.join(workdir, rel))
  finally:
    shutil.rmtree(staged, ignore_errors=True)


# ---------------------------------------------------------------------- handover
#: The manifest of a handover: what it continues, and the sha256 of each part in order.
HANDOVER = "handover.json"
HANDOVER_RECORD = schema.obj({"unit": schema.STR, "settings": schema.map_of(schema.ANY),
                              "runs": schema.list_of(schema.STR),
                              "surrogates": schema.list_of(schema.STR),
                              "parts": schema.list_of(schema.list_of(schema.STR)),
                              "legs": schema.list_of(schema.map_of(schema.ANY))})


def _latest_checkpoint(run_dir: str) -> str | None:
  root = os.path.join(run_dir, "checkpoints")
  steps = [int(n) for n in (os.listdir(root) if os.path.isdir(root) else []) if n.isdigit()]
  return os.path.join(root, str(max(steps))) if steps else None


def _add_tree(tar: tarfile.TarFile, path: str, arcname: str) -> None:
  """A file, or a folder's files in name order, with fixed times and owners."""
  paths = [path] if os.path.isfile(path) else sorted(
      os.path.join(r, f) for r, _, fs in os.walk(path) for f in fs)
  for p in paths:
    info = tar.gettarinfo(p, arcname=os.path.join(arcname, os.path.relpath(p, path))
                          if p != path else arcname)
    info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
    with open(p, "rb") as f:
      tar.addfile(info, f)


def pack_handover(root: str, run_dirs: list[str], surrogates: list[str]) -> bytes:
  """A gzipped tar of what a stopped unit needs to go on elsewhere: each run folder's
  :data:`RUN_FILES` and, unless it finished, its latest checkpoint under ``runs/`` (named
  relative to ``root``),
  and each surrogate cache entry's parameters and spec under ``surrogates/<entry>/`` (the
  embeddings are recomputed where it is unpacked)."""
  buf = io.BytesIO()
  with tarfile.open(fileobj=buf, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
    for d in run_dirs:
      rel = os.path.relpath(d, root)
      for name in RUN_FILES:
        if os.path.isfile(os.path.join(d, name)):
          _add_tree(tar, os.path.join(d, name), os.path.join("runs", rel, name))
      ckpt = _latest_checkpoint(d)
      finished = os.path.isfile(os.path.join(d, "synset", "manifest.json"))
      if ckpt is not None and not finished:  # a finished run needs only its SynSet
        _add_tree(tar, ckpt, os.path.join("runs", rel, "checkpoints", os.path.basename(ckpt)))
    for entry in surrogates:
      for name in cache.PORTABLE_FILES:
        _add_tree(tar, os.path.join(entry, name),
                  os.path.join("surrogates", os.path.basename(entry), name))
  return buf.getvalue()


def write_handover(out: str, manifest: dict, packed: bytes) -> list[str]:
  """Leaves ``packed`` (:func:`pack_handover`) in parts of at most :data:`PART_BYTES` and
  the manifest (``manifest`` with each part's name and sha256) in ``out``; returns the names.

  Raises:
    ValueError: the parts and the manifest need more than :data:`MAX_FILES` files (fewer
      rows per unit make a smaller handover).
  """
  check_out(out)
  parts = [packed[i:i + PART_BYTES] for i in range(0, len(packed), PART_BYTES)]
  if len(parts) + 1 > MAX_FILES:
    raise ValueError(f"the handover needs {len(parts)} parts of {PART_BYTES // 2**20} MiB, more "
                     f"than the {MAX_FILES - 1} a lent machine returns beside its manifest; use "
                     "fewer --rows-per-unit")
  files = {f"handover.tar.gz.part{i}": b for i, b in enumerate(parts)}
  manifest = dict(manifest, parts=[[n, hashlib.sha256(b).hexdigest()]
                                   for n, b in files.items()])
  files[HANDOVER] = (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode()
  os.makedirs(out, exist_ok=True)
  for name in sorted(files, key=lambda n: n == HANDOVER):  # the manifest last
    io_lib.atomic_write_bytes(os.path.join(out, name), files[name])
  return sorted(files)


def remove_handover(out: str) -> None:
  """Removes a handover :func:`write_handover` left in ``out`` (the manifest first, so that
  no part outlives it as a valid handover), for the results that replace it."""
  path = os.path.join(out, HANDOVER)
  if not os.path.isfile(path):
    return
  manifest = schema.read_json(path, HANDOVER_RECORD, fix="remove it by hand", working=True)
  os.remove(path)
  for name, _ in manifest["parts"]:
    part = os.path.join(out, os.path.basename(name))
    if os.path.isfile(part):
      os.remove(part)


def read_handover(src: str) -> tuple[dict, bytes]:
  """The manifest and the joined parts of the handover in the folder ``src``, every part
  checked against the sha256 the manifest records.

  Raises:
    ValueError: no manifest, a part missing or changed.
  """
  path = os.path.join(src, HANDOVER)
  if not os.path.isfile(path):
    raise ValueError(f"{src} holds no {HANDOVER}; give the folder a stopped unit left")
  manifest = schema.read_json(path, HANDOVER_RECORD, fix="carry the handover again")
  chunks = []
  for name, digest in manifest["parts"]:
    part = os.path.join(src, os.path.basename(name))
    if not os.path.isfile(part):
      raise ValueError(f"{part} is missing; carry every part the handover lists")
    with open(part, "rb") as f:
      data = f.read()
    if hashlib.sha256(data).hexdigest() != digest:
      raise ValueError(f"{part} is not the part the handover recorded (changed or cut "
                       "short); carry it again")
    chunks.append(data)
  return manifest, b"".join(chunks)


def copy_handover(src: str, dst: str) -> dict:
  """Copies the handover in ``src`` (checked by :func:`read_handover`) into the folder ``dst``,
  which then holds it alone: built beside it and renamed into place, so ``dst`` holds the old
  handover or the new one, never a mix. Returns the manifest."""
  manifest, _ = read_handover(src)
  with io_lib.atomic_directory(dst) as tmp:
    for name in [os.path.basename(n) for n, _ in manifest["parts"]] + [HANDOVER]:
      shutil.copyfile(os.path.join(src, name), os.path.join(tmp, name))
  return manifest


def _packed_progress(names) -> tuple[bool, int]:
  """(finished, newest checkpoint step) of a packed run from its members' paths in the run."""
  steps = [int(p[1]) for p in (n.split("/") for n in names)
           if len(p) > 2 and p[0] == "checkpoints" and p[1].isdigit()]
  return "synset/manifest.json" in names, max(steps, default=-1)


def _folder_progress(run_dir: str) -> tuple[bool, int]:
  """(finished, newest checkpoint step) of a run folder (:func:`_latest_checkpoint`)."""
  latest = _latest_checkpoint(run_dir)
  return (os.path.isfile(os.path.join(run_dir, "synset", "manifest.json")),
          -1 if latest is None else int(os.path.basename(latest)))


def unpack_handover(packed: bytes, workdir: str, runs: list[str]) -> str:
  """Puts a handover's run folders (``runs``, relative to ``workdir``, as its manifest lists
  them) into ``workdir`` and its surrogate entries into a new temporary folder, whose path it
  returns (one folder per entry, for :func:`jaxdd.surrogate.cache.import_entry`).

  Each run folder appears whole or not at all (unpacked beside it, then renamed into place).
  Nothing is replaced: a run folder that already exists is kept when it is the same run (the
  same ``config.json``) as far as the handover's or farther (what an earlier attempt of the
  same command unpacked and went on with), and refused otherwise, before anything is written.

  Raises:
    ValueError: a run folder exists that is another run or behind the handover's, or a member
      is not in one of ``runs`` or a surrogate's.
  """
  runs = [os.path.normpath(r) for r in runs]
  if any(r.startswith("..") or os.path.isabs(r) for r in runs):
    raise ValueError(f"the handover names run folders outside its work folder: {runs}")
  with tarfile.open(fileobj=io.BytesIO(packed), mode="r:gz") as tar:
    members = tar.getmembers()
    for m in members:
      inside = any(m.name.startswith(f"runs/{r}/") for r in runs) or (
          m.name.startswith("surrogates/") and m.name.count("/") == 2)
      if not m.isfile() or ".." in m.name.split("/") or not inside:
        raise ValueError(f"the handover holds {m.name!r}, which is not a file of its runs or "
                         "surrogates; carry one that jaxdd wrote")
    todo = []
    for rel in runs:
      target = os.path.join(workdir, rel)
      if not os.path.lexists(target) or (os.path.isdir(target) and not os.listdir(target)):
        todo.append(rel)
        continue
      own = {m.name[len(f"runs/{rel}/"):]: m for m in members
             if m.name.startswith(f"runs/{rel}/")}
      done, step = _packed_progress(own)
      have_done, have_step = _folder_progress(target)
      config = os.path.join(target, "config.json")
      same = "config.json" in own and os.path.isfile(config)
      if same:
        with open(config, "rb") as f:
          same = f.read() == tar.extractfile(own["config.json"]).read()
      if not (same and (have_done or (not done and have_step >= step))):
        raise ValueError(f"{target} exists and is not this run as far as the handover took it; "
                         "the handover would replace it: give another --workdir")

    def strip(member, path):  # runs/<run>/... -> <staging>/<run>/...
      return tarfile.data_filter(member.replace(name=member.name[len("runs/"):]), path)
    if todo:
      os.makedirs(workdir, exist_ok=True)
      staging = tempfile.mkdtemp(prefix=".handover-", dir=workdir)
      try:
        for m in members:
          if any(m.name.startswith(f"runs/{r}/") for r in todo):
            tar.extract(m, staging, filter=strip)
        for rel in todo:  # each run whole, by one rename
          target = os.path.join(workdir, rel)
          os.makedirs(os.path.dirname(target), exist_ok=True)
          if os.path.isdir(target):
            os.rmdir(target)  # an empty folder only (checked above)
          os.rename(os.path.join(staging, rel), target)
      finally:
        shutil.rmtree(staging, ignore_errors=True)
    staged = tempfile.mkdtemp(prefix="jaxdd-handover-")
    for m in members:
      if m.name.startswith("surrogates/"):
        tar.extract(m, staged, filter="data")
  return os.path.join(staged, "surrogates")
