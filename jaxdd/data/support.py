"""What the data builders share: the image and label checks of the data contract, the
checksums that key the dataset cache (memoised per file stamp), a small memo of decoded
pools, the progress bars of the building loops, and the :class:`Source` base class. :mod:`jaxdd.data.sources` re-exports the
public names.
"""
from __future__ import annotations

import collections
import hashlib
import threading
from pathlib import Path
from typing import Sequence

import numpy as np

from jaxdd import progress as progress_lib
from jaxdd._src import io as _io

# ----------------------------------------------------------------------------
# Validation and hashing helpers (shared with the dataset builders).
# ----------------------------------------------------------------------------


# array_sha256 (public here) is the package's one array digest, owned by
# jaxdd._src.io; it keys the dataset cache.
array_sha256 = _io.array_sha256


#: Auto progress (``progress=None``): a bar once a build step has at least this
#: many images, i.e. roughly once it takes a second or more on a 2-core CPU:
#: colouring shows a bar for full-size MNIST / Fashion-MNIST only; corrupting
#: (much slower per image) for CIFAR-10-sized splits.
PROGRESS_MIN_IMAGES = {"colour": 20_000, "corrupt": 5_000, "files": 5_000, "tfds": 20_000}


def open_progress(progress, total: int, desc: str, *, kind: str, unit: str = "img"):
  """A :func:`jaxdd.progress.bar` for a dataset-building loop, per the ``progress`` argument.

  Progress only counts work; it never changes a number that is built.

  Args:
    progress: None (auto: on when ``total >= PROGRESS_MIN_IMAGES[kind]``),
      True (always), False (never), or an open bar (anything with
      ``update(k)``) to report to, e.g. from an outer loop.
    total: number of images the loop will process.
    desc: what is being built, e.g. ``"bg_fmnist train: colouring"``.
    kind: key of :data:`PROGRESS_MIN_IMAGES`.
    unit: unit name.

  Returns:
    ``(bar, owned)``: call ``bar.update(k)`` after k images, and
    ``bar.close()`` at the end if ``owned`` (a bar passed in is not closed).
    :func:`jaxdd.progress.set_quiet` silences it.

  Raises:
    TypeError: ``progress`` is none of the above.

  Example:
    >>> bar, owned = open_progress(False, 10, "demo", kind="colour")
    >>> bar.update(10); owned
    True
  """
  if progress is not None and not isinstance(progress, (bool, np.bool_)):
    if callable(getattr(progress, "update", None)):
      return progress, False
    raise TypeError(f"progress must be None (auto), True, False or a progress bar with "
                    f"update(k), got {type(progress).__name__}.")
  show = total >= PROGRESS_MIN_IMAGES[kind] if progress is None else bool(progress)
  return progress_lib.bar(int(total), desc, unit=unit, disable=not show), True


def validate_images(images, *, what: str = "images",
                    channels: Sequence[int] = (1, 3)) -> np.ndarray:
  """Checks an image batch and returns it as a numpy array (dtype kept).

  Args:
    images: (N, H, W) or (N, H, W, C) array, ``uint8`` (0..255) or floating
      point in [0, 1].
    what: name used in error messages.
    channels: allowed channel counts for 4-D input.

  Returns:
    The images as ``np.ndarray`` (``uint8`` or ``float32``), same shape.

  Raises:
    ValueError: wrong rank/channels, empty batch, unsupported dtype, NaN/Inf or
      values outside [0, 1] for float input.

  Example:
    >>> validate_images(np.zeros((2, 28, 28), np.uint8)).shape
    (2, 28, 28)
  """
  x = np.asarray(images)
  if x.ndim not in (3, 4):
    raise ValueError(
        f"{what} must be (N, H, W) or (N, H, W, C) (NHWC), got shape {x.shape}; "
        "add a leading batch axis or move channels last.")
  if x.ndim == 4 and x.shape[-1] not in tuple(channels):
    raise ValueError(
        f"{what} must have {' or '.join(map(str, channels))} channels last (NHWC), "
        f"got shape {x.shape}; transpose NCHW input with x.transpose(0, 2, 3, 1).")
  if x.shape[0] == 0 or 0 in x.shape[1:3]:
    raise ValueError(f"{what} is empty (shape {x.shape}); pass at least one image.")
  if x.dtype == np.uint8:
    return x
  if np.issubdtype(x.dtype, np.floating):
    x = x.astype(np.float32, copy=False)
    if not np.all(np.isfinite(x)):
      raise ValueError(f"{what} contains NaN or Inf; clean the data first.")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0.0 or hi > 1.0:
      raise ValueError(
          f"float {what} must lie in [0, 1], got range [{lo:.4g}, {hi:.4g}]; pass uint8 "
          "0..255 or divide by 255.")
    return x
  if np.issubdtype(x.dtype, np.integer) or x.dtype == np.bool_:
    lo, hi = int(x.min()), int(x.max())
    if lo < 0 or hi > 255:
      raise ValueError(
          f"integer {what} must be in 0..255, got range [{lo}, {hi}]; rescale to uint8 or "
          "to float in [0, 1].")
    return x.astype(np.uint8)
  raise ValueError(f"{what} has unsupported dtype {x.dtype}; use uint8 or float32.")


def validate_labels(labels, *, n: int | None = None, what: str = "labels",
                    num_classes: int | None = None) -> np.ndarray:
  """Checks a label vector and returns it as ``int64``.

  Args:
    labels: (N,) integer labels.
    n: expected length (the number of images), or None.
    what: name used in error messages.
    num_classes: if given, labels must lie in [0, num_classes).

  Returns:
    The labels as an ``int64`` numpy array.

  Raises:
    ValueError: wrong shape/length, non-integer values, or out-of-range labels.

  Example:
    >>> validate_labels([0, 1, 2]).dtype
    dtype('int64')
  """
  y = np.asarray(labels)
  if y.ndim != 1:
    raise ValueError(f"{what} must be 1-D (N,), got shape {y.shape}; use labels.reshape(-1).")
  if n is not None and y.shape[0] != n:
    raise ValueError(f"{what} has {y.shape[0]} entries but there are {n} images; they must match.")
  if y.dtype == np.bool_ or not (np.issubdtype(y.dtype, np.integer)
                                 or np.issubdtype(y.dtype, np.floating)):
    raise ValueError(f"{what} must be integers, got dtype {y.dtype}.")
  if np.issubdtype(y.dtype, np.floating):
    if not np.all(np.isfinite(y)) or np.any(y != np.round(y)):
      raise ValueError(f"{what} must be whole numbers (got non-integer or NaN values).")
  y = y.astype(np.int64)
  if y.size and y.min() < 0:
    raise ValueError(f"{what} must be >= 0, got {int(y.min())}.")
  if num_classes is not None and y.size and y.max() >= num_classes:
    raise ValueError(
        f"{what} must lie in [0, {num_classes}), got {int(y.max())}; this dataset has "
        f"{num_classes} classes.")
  return y


def _files_checksum(paths: Sequence[Path], names: Sequence[str]) -> str:
  h = hashlib.sha256()
  for p, name in zip(paths, names):
    # The relative name is hashed too, so renaming files changes the checksum.
    h.update(f"{name}|{p.stat().st_size}|".encode())
    _io.sha256_file(p, into=h)
  return h.hexdigest()


# Small in-process cache of decoded pools: building train then test from the
# same source parses it once. Keyed by checksum, so a changed file is re-read.
_POOL_MEMO: "collections.OrderedDict[tuple, tuple]" = collections.OrderedDict()
_POOL_MEMO_SIZE = 4
_MEMO_LOCK = threading.Lock()


def _memo_pool(key: tuple, fn):
  with _MEMO_LOCK:
    if key in _POOL_MEMO:
      _POOL_MEMO.move_to_end(key)
      return _POOL_MEMO[key]
  value = fn()
  with _MEMO_LOCK:
    _POOL_MEMO[key] = value
    while len(_POOL_MEMO) > _POOL_MEMO_SIZE:
      _POOL_MEMO.popitem(last=False)
  return value


# ----------------------------------------------------------------------------
# Source base class.
# ----------------------------------------------------------------------------


class Source:
  """Base class: a named, checksummed provider of ``train``/``test`` pools.

  Subclasses implement :meth:`pool` and :meth:`checksum` and set ``kind``.
  """

  kind: str = "source"

  @property
  def id(self) -> str:
    """Short human-readable identifier (no absolute paths)."""
    return self.kind

  def checksum(self) -> str:
    """sha256 hex digest of the source's content."""
    raise NotImplementedError

  def pool(self, part: str) -> tuple[np.ndarray, np.ndarray]:
    """Returns ``(images, labels)`` of the ``"train"`` or ``"test"`` pool."""
    raise NotImplementedError

  def __repr__(self) -> str:
    return f"{type(self).__name__}({self.id!r})"


def _check_part(part: str) -> None:
  if part not in ("train", "test"):
    raise ValueError(f"pool must be 'train' or 'test', got {part!r}.")
