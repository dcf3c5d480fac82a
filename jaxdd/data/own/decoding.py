"""Decoding a user's images once, streaming, into a memory-mapped cache.

:func:`decode` turns an :class:`~jaxdd.data.own.readers.Index` into one ``uint8``
(N, S, S, C) array. Image files are read one at a time with Pillow (RGB, or grey when every
image is grey; resized to ``image_size`` with bilinear resampling) and written straight into
a ``.npy`` file opened as a memory map, so a folder of 200,000 images is never held twice in
memory. The entry is keyed by the file list with each file's size and modification time and by
the image size; its record keeps the sha256 of every byte read (the source checksum) and of the
decoded array, which is checked on every load (a mismatch rebuilds it). Writes are atomic: the
array and the record go to temporary names and are renamed, the record last.

Arrays that arrive decoded (npz, TFDS) are only resized when ``image_size`` asks for it.

Example:
  >>> _channels_of("L"), _channels_of("RGBA"), _channels_of("P")
  (1, 3, 3)
"""
from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

from jaxdd._src import io as _io
from jaxdd.data.own.readers import Index
from jaxdd.data.support import array_sha256, open_progress

#: Bump when the decoded output of the same files changes (2: 16-bit grey scaled, not clipped).
DECODE_VERSION = 2
_GREY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")


def _channels_of(mode: str) -> int:
  return 1 if mode in _GREY_MODES else 3


def cache_folder() -> Path:
  """Where decoded images are kept: ``$JAXDD_CACHE/images`` (``~/.cache/jaxdd/images``)."""
  return _io.cache_root("images")


def _key(index: Index, image_size: int | None) -> str:
  h = hashlib.sha256(json.dumps({"version": DECODE_VERSION, "source": index.source_id,
                                 "size": image_size}, sort_keys=True).encode())
  root = index.root
  for p in index.paths:
    st = (root / p).stat()
    h.update(f"{p}|{st.st_size}|{st.st_mtime_ns}\n".encode())
  return h.hexdigest()


def _open(path: Path, data: bytes):
  try:
    im = Image.open(io.BytesIO(data))
    im.load()
  except Exception as e:  # Pillow raises several types for a broken or foreign file
    raise ValueError(f"cannot read image {path} ({type(e).__name__}: {e}); replace or remove "
                     "the file") from e
  return im


#: 16-bit grey modes: scaled to 8 bits by their full range (65535 -> 255), never clipped.
_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N")


def _to_8bit(im, rel: str, channels: int):
  """``im`` as 8-bit grey ("L") or RGB, by its bit depth and mode: 16-bit grey scaled by its
  full range (value / 257), a palette or alpha converted, 8-bit as it is; a 32-bit integer or
  float image is refused in one line (its range is not known), never clipped silently."""
  if im.mode in _SIXTEEN_BIT:
    arr = np.asarray(im, dtype=np.uint32)
    grey = Image.fromarray(((arr * 255 + 32767) // 65535).astype(np.uint8), mode="L")
    return grey if channels == 1 else grey.convert("RGB")
  if im.mode in ("I", "F"):
    raise ValueError(f"{rel} is a {'32-bit integer' if im.mode == 'I' else 'floating-point'} "
                     "image, whose range jaxdd cannot know; convert it to 8-bit or 16-bit PNG")
  return im.convert("L" if channels == 1 else "RGB")


def _probe(index: Index, image_size: int | None) -> tuple[int, int]:
  """(side, channels) from the first image; the side must be square without image_size."""
  first = index.root / index.paths[0]
  im = _open(first, first.read_bytes())
  channels = _channels_of(im.mode)
  if image_size is not None:
    return image_size, channels
  w, h = im.size
  if w != h:
    raise ValueError(f"{index.paths[0]} is {w} x {h}; pass --image-size to resize every image "
                     "to a square")
  return w, channels


def _decode_into(out: np.ndarray, index: Index, side: int, channels: int, resize: bool,
                 bar) -> str:
  h = hashlib.sha256()
  first = index.paths[0]
  for i, rel in enumerate(index.paths):
    path = index.root / rel
    data = path.read_bytes()
    h.update(f"{rel}|{len(data)}|".encode())
    h.update(data)
    im = _open(path, data)
    if _channels_of(im.mode) != channels:
      kinds = {1: "grey", 3: "colour"}
      raise ValueError(f"mixed channel counts: {rel} is {kinds[_channels_of(im.mode)]} but {first} "
                       f"is {kinds[channels]}; convert every image to one kind (all RGB or all "
                       "grey)")
    im = _to_8bit(im, rel, channels)
    if im.size != (side, side):
      if not resize:
        raise ValueError(f"{rel} is {im.size[0]} x {im.size[1]} but {first} is {side} x {side}; "
                         "pass --image-size to resize every image to one size")
      im = im.resize((side, side), Image.Resampling.BILINEAR)
    a = np.asarray(im, np.uint8)
    out[i] = a[..., None] if channels == 1 else a
    bar.update(1)
  return h.hexdigest()


def _load_entry(npy: Path, rec_path: Path) -> tuple[np.ndarray | None, dict | None]:
  try:
    record = json.loads(rec_path.read_text())
    arr = np.load(npy, mmap_mode="r", allow_pickle=False)
    if list(arr.shape) != record["shape"] or array_sha256(arr) != record["array_sha256"]:
      return None, None
    return arr, record
  except Exception:  # a missing half, bad JSON, a torn file: rebuilt, never read as data
    return None, None


def decode(index: Index, *, image_size: int | None = None, cache: bool = True,
           progress=None) -> tuple[np.ndarray, dict]:
  """The images of ``index`` as one (N, S, S, C) array, decoded once into the cache.

  Args:
    index: from a reader.
    image_size: the side to resize to (None: the images' own, one square size for all).
    cache: keep the decoded array in :func:`cache_folder` (False: decode into memory).
    progress: as :func:`jaxdd.data.support.open_progress` (auto: a bar from 5,000 files).

  Returns:
    ``(images, record)``: ``uint8`` images (a read-only memory map when cached; float32 in
    [0, 1] arrays of npz/TFDS sources stay float), and ``record`` with ``source_sha256``,
    ``status`` (``built``, ``hit`` or ``off``) and the image shape.

  Raises:
    ValueError: an unreadable image, mixed channel counts or mixed sizes without
      ``image_size`` (the message names the file).
  """
  if index.arrays is not None:
    x = _resize_arrays(index.arrays, image_size)
    return x, {"source_sha256": array_sha256(index.arrays), "status": "off",
               "shape": list(x.shape)}
  key = _key(index, image_size)
  folder = cache_folder()
  npy, rec_path = folder / f"{key}.npy", folder / f"{key}.json"
  if cache and rec_path.is_file():
    arr, record = _load_entry(npy, rec_path)
    if arr is not None:
      return arr, {**record, "status": "hit"}
  side, channels = _probe(index, image_size)
  shape = (len(index), side, side, channels)
  bar, owned = open_progress(progress, len(index), f"{index.source_id}: decoding", kind="files")
  try:
    if not cache:
      out = np.empty(shape, np.uint8)
      digest = _decode_into(out, index, side, channels, image_size is not None, bar)
      return out, {"source_sha256": digest, "status": "off", "shape": list(shape)}
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".tmp-{os.getpid()}-{key}.npy"
    try:
      out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
      digest = _decode_into(out, index, side, channels, image_size is not None, bar)
      out.flush()
      record = {"shape": list(shape), "source_sha256": digest, "array_sha256": array_sha256(out),
                "source": index.source_id, "image_size": image_size, "version": DECODE_VERSION}
      del out
      os.replace(tmp, npy)
    finally:
      tmp.unlink(missing_ok=True)
    _io.atomic_write_bytes(rec_path, json.dumps(record, indent=1, sort_keys=True).encode(),
                           durable=False)
  finally:
    if owned:
      bar.close()
  arr = np.load(npy, mmap_mode="r", allow_pickle=False)
  return arr, {**record, "status": "built"}


def _resize_arrays(x: np.ndarray, image_size: int | None) -> np.ndarray:
  if x.ndim == 3:
    x = x[..., None]
  if image_size is None or x.shape[1:3] == (image_size, image_size):
    return x
  out = np.empty((len(x), image_size, image_size, x.shape[-1]), x.dtype)
  for i, img in enumerate(x):
    for c in range(x.shape[-1]):  # one channel at a time: Pillow's float mode "F" is grey only
      ch = Image.fromarray(np.ascontiguousarray(img[..., c]).astype(np.float32), mode="F")
      r = np.asarray(ch.resize((image_size, image_size), Image.Resampling.BILINEAR))
      out[i, ..., c] = np.clip(np.rint(r), 0, 255) if x.dtype == np.uint8 else np.clip(r, 0, 1)
  return out
