"""Image-folder sources (the BFFHQ / DFA layout): :class:`ImageFolderSource`.

Re-exported by :mod:`jaxdd.data.sources`, which documents the source contract.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from jaxdd.data.support import Source, _files_checksum, open_progress

_IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


# ----------------------------------------------------------------------------
# Image folders (BFFHQ, DFA layout).
# ----------------------------------------------------------------------------

_NAME_RE = re.compile(r"_(\d+)_(\d+)$")


def ratio_dir_name(conflict_ratio: float) -> str:
  """DFA's folder name for a conflict ratio: 0.005 -> ``"0.5pct"``.

  Args:
    conflict_ratio: fraction in (0, 1).

  Returns:
    The folder name (percent, shortest form, then ``pct``).

  Example:
    >>> ratio_dir_name(0.005), ratio_dir_name(0.05)
    ('0.5pct', '5pct')
  """
  return f"{round(conflict_ratio * 100, 10):g}pct"


class ImageFolderSource(Source):
  """A BFFHQ-style image folder (the DFA / SelecMix release layout).

  Accepted layout (``<pct>`` is the conflict ratio in percent, e.g. ``0.5pct``)::

    <root>/<pct>/align/[<class>/]<idx>_<target>_<bias>.png      train, aligned
    <root>/<pct>/conflict/[<class>/]<idx>_<target>_<bias>.png   train, conflicting
    <root>/valid/[<sub>/]<idx>_<target>_<bias>.png              validation (as released)
    <root>/test/[<sub>/]<idx>_<target>_<bias>.png               test (conflicting kept)

  ``<root>/train/<pct>/...`` is accepted as well. Target and bias are the
  last two underscore-separated integers of the file stem (BFFHQ: target =
  age 0 young / 1 old, bias = gender 0 female / 1 male). Files are read in
  sorted relative-path order, converted to RGB and resized to
  ``image_size`` x ``image_size`` with PIL bilinear resampling. Extensions:
  png, jpg, jpeg, bmp, webp.

  Args:
    root: the dataset root folder.

  Example:
    >>> src = ImageFolderSource("data/bffhq")                   # doctest: +SKIP
    >>> ds = jaxdd.data.load("bffhq", split="train", conflict_ratio=0.005,
    ...                      source=src)                        # doctest: +SKIP
  """

  kind = "folder"

  def __init__(self, root: str | os.PathLike):
    self.root = Path(root).expanduser()

  @property
  def id(self) -> str:
    return f"{self.kind}:{self.root.name}"

  def _all_files(self) -> list[Path]:
    if not self.root.is_dir():
      raise FileNotFoundError(
          f"image folder {self.root} does not exist; pass the BFFHQ root holding "
          "<pct>/{align,conflict}/, valid/ and test/ (DFA release layout).")
    return sorted(p for p in self.root.rglob("*")
                  if p.is_file() and p.suffix.lower() in _IMAGE_EXTS)

  def checksum(self) -> str:
    files = self._all_files()
    if not files:
      raise FileNotFoundError(f"image folder {self.root} contains no images ({', '.join(_IMAGE_EXTS)}).")
    return _files_checksum(files, [p.relative_to(self.root).as_posix() for p in files])

  def split_dirs(self, split: str, conflict_ratio: float) -> list[tuple[Path, str | None]]:
    """Folders (and the group they must belong to) that make up a split."""
    if split == "train":
      pct = ratio_dir_name(conflict_ratio)
      for base in (self.root / pct, self.root / "train" / pct):
        if base.is_dir():
          dirs = [(base / "align", "align"), (base / "conflict", "conflict")]
          missing = [str(d) for d, _ in dirs if not d.is_dir()]
          if missing:
            raise FileNotFoundError(f"{base} lacks {missing}; expected align/ and conflict/ subfolders.")
          return dirs
      have = sorted(p.name for p in list(self.root.glob("*pct")) + list(self.root.glob("train/*pct")))
      raise FileNotFoundError(
          f"{self.root} has no {pct}/ folder for conflict_ratio={conflict_ratio} (found: "
          f"{have or 'none'}); pass the conflict ratio of a folder that exists.")
    d = self.root / split
    if not d.is_dir():
      raise FileNotFoundError(f"{self.root} has no {split}/ folder; the DFA layout needs one.")
    return [(d, None)]

  def read_split(self, split: str, conflict_ratio: float, image_size: int, *,
                 progress=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reads a split: ``(images uint8 (N, S, S, 3), targets, biases)``.

    Args:
      split: ``train``, ``valid`` or ``test`` (test keeps conflicting only).
      conflict_ratio: selects the ``<pct>`` train folder.
      image_size: output side length in pixels.
      progress: report files read (see :func:`open_progress`; None = only for
        5,000 files or more).

    Returns:
      ``(images, labels, bias)`` numpy arrays, in sorted relative-path order.

    Raises:
      FileNotFoundError: missing folders or no images.
      ValueError: unparsable names, unreadable images, or an aligned/conflict
        folder holding a sample of the other group.
    """
    files, groups = [], []
    for d, group in self.split_dirs(split, conflict_ratio):
      fs = sorted(p for p in d.rglob("*") if p.is_file() and p.suffix.lower() in _IMAGE_EXTS)
      files.extend(fs)
      groups.extend([group] * len(fs))
    if not files:
      raise FileNotFoundError(f"no images found for split {split!r} under {self.root}.")
    bar, owned = open_progress(progress, len(files), f"{self.id} {split}: reading", kind="files")
    try:
      xs, ys, bs = self._read_files(files, groups, split, image_size, bar)
    finally:
      if owned:
        bar.close()
    if not xs:
      raise ValueError(f"split {split!r} under {self.root} has no bias-conflicting images.")
    return np.stack(xs), np.asarray(ys, np.int64), np.asarray(bs, np.int64)

  @staticmethod
  def _read_files(files, groups, split, image_size, bar):
    # Pillow is a core dependency, loaded when image files are first decoded (start-up time)
    from PIL import Image

    xs, ys, bs = [], [], []
    for p, group in zip(files, groups):
      bar.update(1)  # counts files opened (the test split skips aligned ones)
      m = _NAME_RE.search(p.stem)
      if m is None:
        raise ValueError(
            f"cannot parse target/bias from {p.name}; names must end in _<target>_<bias> "
            "(e.g. 00042_0_1.png).")
      t, b = int(m.group(1)), int(m.group(2))
      if group == "align" and t != b:
        raise ValueError(f"{p} is in align/ but target {t} != bias {b}; move it to conflict/.")
      if group == "conflict" and t == b:
        raise ValueError(f"{p} is in conflict/ but target == bias == {t}; move it to align/.")
      if split == "test" and t == b:
        continue  # the DFA/SelecMix protocol evaluates on bias-conflicting test images only
      try:
        with Image.open(p) as im:
          im = im.convert("RGB")
          if im.size != (image_size, image_size):
            im = im.resize((image_size, image_size), Image.Resampling.BILINEAR)
          xs.append(np.asarray(im, dtype=np.uint8))
      except Exception as e:  # PIL raises several types for broken files
        raise ValueError(f"cannot read image {p} ({type(e).__name__}: {e}); replace the file.") from e
      ys.append(t)
      bs.append(b)
    return xs, ys, bs
