"""File I/O shared by jaxdd: atomic writes, sha256 digests, the cache root, JSON conversion.

Every file jaxdd writes goes through :func:`atomic_write_bytes` (or
:func:`atomic_write_json`), every directory artifact through
:func:`atomic_directory`: the content is written under a temporary name in the
destination folder and renamed into place with ``os.replace``, so a reader
sees the old version or the new one, never half a file, and a failed write
leaves no temporary file behind.

Private: the public names are :func:`jaxdd.synset.atomic_write_bytes`,
:func:`jaxdd.synset.atomic_write_json`, :func:`jaxdd.synset.sha256_file` and
:func:`jaxdd.data.sources.array_sha256`, which are these functions.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator, Union

import numpy as np

PathLike = Union[str, "os.PathLike[str]"]

#: Chunk size of :func:`sha256_file` reads (the digest does not depend on it).
_CHUNK = 1 << 22

#: The largest JSON file jaxdd reads back (its records are kilobytes to megabytes).
MAX_JSON_BYTES = 256 * 2**20


# ---------------------------------------------------------------------------
# Bounded reads
# ---------------------------------------------------------------------------

class NotAFileError(ValueError):
  """A path jaxdd would read is not a regular file, or is larger than its kind may be."""


def listed(names, most: int = 4) -> str:
  """A folder's entries in a one-line message: the first ``most``, then "...".

  >>> listed(["a", "b", "c", "d", "e"])
  'a, b, c, d, ...'
  """
  names = list(names)
  return ", ".join(names[:most]) + (", ..." if len(names) > most else "")


def file_kind(mode: int) -> str:
  """What a path that is not a regular file is, in words, from its ``st_mode``.

  >>> file_kind(os.stat("/").st_mode)
  'a folder'
  """
  if stat.S_ISDIR(mode):
    return "a folder"
  if stat.S_ISFIFO(mode):
    return "a FIFO"
  if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
    return "a device"
  return "not a file"


def read_bounded(path: PathLike, limit: int, *, fix: str) -> bytes:
  """The bytes of the regular file ``path``, at most ``limit`` of them.

  A FIFO, a device, a socket or a folder is refused without reading (the file is opened
  non-blocking, so a FIFO with no writer does not hang), and so is a file over ``limit``
  bytes, or one that grows past it while read, so that no read of jaxdd's hangs or fills the
  memory. ``fix`` ends the one-line message.

  Raises:
    NotAFileError: not a regular file, or too large.
    OSError: the file cannot be opened (missing, permission).

  Example:
    >>> import tempfile
    >>> with tempfile.NamedTemporaryFile() as f:
    ...     _ = f.write(b"{}"); f.flush()
    ...     read_bounded(f.name, 10, fix="x")
    b'{}'
    >>> read_bounded("/", 10, fix="give a file")
    Traceback (most recent call last):
      ...
    jaxdd._src.io.NotAFileError: / is not a regular file (a folder); give a file
  """
  path = os.fspath(path)
  fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
  try:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
      raise NotAFileError(f"{path} is not a regular file ({file_kind(st.st_mode)}); {fix}")
    if st.st_size > limit:
      raise NotAFileError(f"{path} is {st.st_size} bytes, more than the {limit} such a file "
                          f"may hold; {fix}")
    with os.fdopen(os.dup(fd), "rb") as f:  # in pieces: f.read(n) reserves n bytes at once
      parts, left = [], limit + 1
      while left > 0:
        part = f.read(min(left, 2**24))
        if not part:
          break
        parts.append(part)
        left -= len(part)
      data = b"".join(parts)
  finally:
    os.close(fd)
  if len(data) > limit:
    raise NotAFileError(f"{path} grew past {limit} bytes while it was read; {fix}")
  return data


# ---------------------------------------------------------------------------
# Cache root
# ---------------------------------------------------------------------------


def cache_root(*parts: str) -> Path:
  """``$JAXDD_CACHE`` (default ``~/.cache/jaxdd``, ``~`` expanded), joined with ``parts``.

  The one place that reads ``$JAXDD_CACHE``: built datasets live in
  ``cache_root("datasets")``, trained surrogates in ``cache_root("surrogates")``.
  Nothing is created here.

  Args:
    *parts: sub-folders to append.

  Returns:
    The path.

  Example:
    >>> cache_root("datasets").name
    'datasets'
  """
  root = os.environ.get("JAXDD_CACHE") or os.path.join("~", ".cache", "jaxdd")
  return Path(os.path.expanduser(root)).joinpath(*parts)


# ---------------------------------------------------------------------------
# Atomic writes
# ---------------------------------------------------------------------------


def atomic_write_bytes(path: PathLike, data: bytes | Callable[[BinaryIO], Any], *,
                       durable: bool = True) -> None:
  """Writes a file atomically: a temporary file in the same folder, then ``os.replace``.

  The parent folder is created if needed; the file gets mode 0644 (not the
  0600 of ``mkstemp``).

  Args:
    path: destination.
    data: the bytes to write, or a callable that writes them to the binary
      file object it receives (e.g. ``lambda f: np.savez(f, **arrays)``).
    durable: ``fsync`` the file before the rename, so that it survives a power
      loss. Callers whose files are verified on read (the dataset cache)
      pass False: a torn file fails its checksum and is rebuilt.

  Example:
    >>> import os, tempfile
    >>> d = tempfile.TemporaryDirectory()
    >>> p = os.path.join(d.name, "sub", "x.bin")
    >>> atomic_write_bytes(p, b"hi")
    >>> atomic_write_bytes(p, lambda f: f.write(b"hello"))
    >>> open(p, "rb").read(), os.listdir(os.path.dirname(p))
    (b'hello', ['x.bin'])
    >>> d.cleanup()
  """
  path = os.fspath(path)
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
  try:
    with os.fdopen(fd, "wb") as f:
      os.chmod(tmp, 0o644)
      if callable(data):
        data(f)
      else:
        f.write(data)
      if durable:
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    # Never leave a partial temp file behind (disk full, KeyboardInterrupt, ...).
    with contextlib.suppress(FileNotFoundError):
      os.unlink(tmp)
    raise


def atomic_write_json(path: PathLike, obj: Any) -> None:
  """Writes ``obj`` as indented, key-sorted JSON (plus a newline), atomically.

  numpy scalars and arrays are written as numbers and lists.

  Example:
    >>> import os, tempfile, numpy as np
    >>> d = tempfile.TemporaryDirectory()
    >>> p = os.path.join(d.name, "r.json")
    >>> atomic_write_json(p, {"b": np.float32(0.5), "a": np.arange(2)})
    >>> print(open(p).read(), end="")
    {
      "a": [
        0,
        1
      ],
      "b": 0.5
    }
    >>> d.cleanup()
  """
  atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=json_default)
                            + "\n").encode())


@contextlib.contextmanager
def atomic_directory(path: PathLike, *, prefix: str = ".tmp-") -> Iterator[str]:
  """Builds a directory under a temporary name and renames it into place on success.

  Yields the temporary directory (in the same parent folder) to fill. When the
  block ends normally, an existing ``path`` (file or directory) is moved aside
  and removed, and the new directory is renamed to ``path``; if the block
  raises, the temporary directory is removed and ``path`` is left as it was.

  Args:
    path: the directory to create or replace.
    prefix: name prefix of the temporary directory.

  Example:
    >>> import os, tempfile
    >>> d = tempfile.TemporaryDirectory()
    >>> target = os.path.join(d.name, "artifact")
    >>> with atomic_directory(target) as tmp:
    ...   open(os.path.join(tmp, "a.txt"), "w").write("x")
    1
    >>> os.listdir(d.name), os.listdir(target)
    (['artifact'], ['a.txt'])
    >>> d.cleanup()
  """
  path = os.fspath(path)
  parent = os.path.dirname(os.path.abspath(path))
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(dir=parent, prefix=prefix)
  umask = os.umask(0)
  os.umask(umask)
  os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's 0700 would outlive the rename: the umask's mode
  try:
    yield tmp
    if os.path.lexists(path):
      # Move the old version aside first: os.replace cannot overwrite a
      # non-empty directory. A move that fails leaves everything as it was.
      trash = tempfile.mkdtemp(dir=parent, prefix=".old-")
      old = os.path.join(trash, "old")
      try:
        os.replace(path, old)
      except BaseException:
        os.rmdir(trash)
        raise
      try:
        os.replace(tmp, path)
      except BaseException:
        os.replace(old, path)  # should this fail too, the old version stays in trash
        os.rmdir(trash)
        raise
      shutil.rmtree(trash, ignore_errors=True)
    else:
      os.replace(tmp, path)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


# ---------------------------------------------------------------------------
# sha256
# ---------------------------------------------------------------------------


def sha256_file(path: PathLike, into: "hashlib._Hash | None" = None) -> str:
  """Hex sha256 of a file's bytes, read in chunks.

  Args:
    path: the file.
    into: optional running ``hashlib.sha256()`` object to feed the bytes to
      instead (to hash several files into one digest); its digest so far is
      returned.

  Example:
    >>> import os, tempfile
    >>> d = tempfile.TemporaryDirectory()
    >>> p = os.path.join(d.name, "e")
    >>> atomic_write_bytes(p, b"")
    >>> sha256_file(p)[:16]
    'e3b0c44298fc1c14'
    >>> d.cleanup()
  """
  h = hashlib.sha256() if into is None else into
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(_CHUNK), b""):
      h.update(chunk)
  return h.hexdigest()


def array_sha256(*arrays: Any, sep: str = "|") -> str:
  """sha256 over dtype, shape and C-order bytes of each array.

  Args:
    *arrays: numpy arrays (anything ``np.asarray`` accepts).
    sep: separator around the shape in the per-array header
      (``"<dtype>{sep}<shape>{sep}"``). Digests are cache keys, so a caller
      keeps the separator its cache was written with.

  Returns:
    The hex digest. Two arrays hash equal iff they have the same dtype, shape
    and bytes, so a reinterpretation (e.g. uint8 vs int8) is a different hash.

  Example:
    >>> array_sha256(np.zeros(3, np.uint8)) == array_sha256(np.zeros(3, np.uint8))
    True
    >>> array_sha256(np.zeros(3, np.uint8)) == array_sha256(np.zeros(3, np.int8))
    False
  """
  h = hashlib.sha256()
  for a in arrays:
    a = np.ascontiguousarray(np.asarray(a))
    h.update(f"{a.dtype.str}{sep}{a.shape}{sep}".encode())
    h.update(memoryview(a).cast("B"))
  return h.hexdigest()


# ---------------------------------------------------------------------------
# JSON conversion
# ---------------------------------------------------------------------------


def json_default(o: Any) -> Any:
  """``json.dumps(default=...)`` hook: numpy scalars and arrays become numbers and lists.

  Example:
    >>> json.dumps({"x": np.int64(3)}, default=json_default)
    '{"x": 3}'
  """
  if isinstance(o, np.generic):
    return o.item()
  if isinstance(o, np.ndarray):
    return o.tolist()
  raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def jsonable(x: Any, *, nan_to_none: bool = False) -> Any:
  """A copy of ``x`` with plain-JSON types: dict keys become str, tuples lists,
  numpy scalars and arrays numbers and lists; anything else is kept as is.
  ``nan_to_none`` also turns NaN and infinities into None (strict JSON).

  Example:
    >>> jsonable({1: (np.float32(0.5), np.arange(2))})
    {'1': [0.5, [0, 1]]}
    >>> jsonable([float("nan"), 1.0], nan_to_none=True)
    [None, 1.0]
  """
  if isinstance(x, dict):
    return {str(k): jsonable(v, nan_to_none=nan_to_none) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [jsonable(v, nan_to_none=nan_to_none) for v in x]
  if isinstance(x, np.ndarray):
    return jsonable(x.tolist(), nan_to_none=nan_to_none) if nan_to_none else x.tolist()
  if isinstance(x, np.generic):
    x = x.item()
  if nan_to_none and isinstance(x, float) and not np.isfinite(x):
    return None
  return x
