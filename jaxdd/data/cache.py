"""On-disk cache of built datasets: ``.npz`` arrays plus a JSON record.

Data contract: an entry is two files in :func:`cache_dir`, ``<key>.npz``
(plain arrays, no pickle) and ``<key>.json`` (the dataset card, the arguments
that made it and the sha256 of every array). ``key`` is the sha256 of the
canonical JSON of all build arguments *and* the source's checksum, so a changed
source or argument never hits a stale entry.

Both files are written atomically (temp file in the same folder, then
``os.replace``), the JSON last: a reader sees either a complete entry or none.
On load every array is re-hashed and compared with the record; any mismatch or
read error counts as a miss (the caller rebuilds and overwrites), never as data.

The folder is ``$JAXDD_CACHE/datasets`` (default ``~/.cache/jaxdd/datasets``).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, BinaryIO, Callable, Mapping

import numpy as np

from jaxdd._src import io as _io
from jaxdd._src import schema as _schema
from jaxdd.data.sources import array_sha256

__all__ = ["cache_dir", "cache_key", "load_entry", "save_entry", "atomic_write_bytes"]

#: Bump when the on-disk format or any builder's output changes.
FORMAT_VERSION = 1

#: What :func:`load_entry` requires of an entry's JSON record.
RECORD = _schema.obj({"arrays_sha256": _schema.map_of(_schema.STR)})


def cache_dir() -> Path:
  """The dataset cache folder: ``$JAXDD_CACHE/datasets`` or ``~/.cache/jaxdd/datasets``.

  Returns:
    The path (not created here).

  Example:
    >>> cache_dir().name
    'datasets'
  """
  return _io.cache_root("datasets")


def cache_key(args: Mapping[str, Any]) -> str:
  """sha256 of the canonical (sorted-key) JSON of ``args``.

  Args:
    args: JSON-serialisable build arguments, including the source checksum.

  Returns:
    A 64-character hex key.

  Example:
    >>> cache_key({"a": 1, "b": 2}) == cache_key({"b": 2, "a": 1})
    True
  """
  blob = json.dumps({"format": FORMAT_VERSION, **args}, sort_keys=True, separators=(",", ":"))
  return hashlib.sha256(blob.encode()).hexdigest()


def atomic_write_bytes(path: Path, write_fn: Callable[[BinaryIO], Any]) -> None:
  """Writes a file atomically: ``write_fn(fileobj)`` into a temp file, then rename.

  :func:`jaxdd._src.io.atomic_write_bytes` without ``fsync``: a file torn by a
  power loss fails the sha256 check on load and is rebuilt, so durability is
  not needed for correctness (and fsync of a 500 MB entry costs seconds).

  Args:
    path: destination.
    write_fn: callable receiving a binary file object.

  Example:
    >>> atomic_write_bytes(Path("x.bin"), lambda f: f.write(b"hi"))   # doctest: +SKIP
  """
  _io.atomic_write_bytes(path, write_fn, durable=False)


def _paths(key: str) -> tuple[Path, Path]:
  d = cache_dir()
  return d / f"{key}.npz", d / f"{key}.json"


def save_entry(key: str, arrays: Mapping[str, np.ndarray], record: Mapping[str, Any]) -> Path:
  """Stores ``arrays`` and ``record`` under ``key`` (atomically, JSON last).

  Args:
    key: from :func:`cache_key`.
    arrays: name -> numpy array (plain dtypes only).
    record: JSON-serialisable metadata; the array checksums are added to it.

  Returns:
    The path of the ``.npz`` file.

  Example:
    >>> save_entry(cache_key({"x": 1}), {"a": np.zeros(2)}, {})   # doctest: +SKIP
  """
  npz_path, json_path = _paths(key)
  arrays = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
  full = dict(record)
  full["format"] = FORMAT_VERSION
  full["arrays_sha256"] = {k: array_sha256(v) for k, v in arrays.items()}
  atomic_write_bytes(npz_path, lambda f: np.savez(f, **arrays))
  text = json.dumps(full, indent=1, sort_keys=True).encode()
  atomic_write_bytes(json_path, lambda f: f.write(text))
  return npz_path


def load_entry(key: str) -> tuple[dict[str, np.ndarray] | None, dict | None, str]:
  """Loads and verifies an entry.

  Args:
    key: from :func:`cache_key`.

  Returns:
    ``(arrays, record, status)`` with status ``"hit"``; or ``(None, None,
    "miss")`` when there is no entry; or ``(None, None, "corrupt")`` when an
    entry exists but fails to read or verify (the caller rebuilds).

  Example:
    >>> arrays, record, status = load_entry("0" * 64)             # doctest: +SKIP
  """
  npz_path, json_path = _paths(key)
  if not json_path.is_file() and not npz_path.is_file():
    return None, None, "miss"
  try:
    record = _schema.read_json(json_path, RECORD, fix="the entry is rebuilt")
    expected = record["arrays_sha256"]
    if record.get("format") != FORMAT_VERSION:
      return None, None, "corrupt"
    with np.load(npz_path, allow_pickle=False) as z:
      if sorted(z.files) != sorted(expected):
        return None, None, "corrupt"
      arrays = {k: z[k] for k in z.files}
  except Exception:  # missing half, bad JSON, bad zip, bad CRC, pickled data...
    return None, None, "corrupt"
  for k, v in arrays.items():
    if array_sha256(v) != expected[k]:
      return None, None, "corrupt"
  return arrays, record, "hit"
