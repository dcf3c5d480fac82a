"""Writing splits of a dataset in the layouts :mod:`jaxdd.data.own` reads: a class-folder tree,
a metadata csv beside its images, or npz arrays.

Image files are 8-bit PNG (``rint(x * 255)``, Pillow's lossless encoder), so a float image that
is not a multiple of 1/255 (the built-in colour noise) comes back rounded to it; npz keeps the
float32 images exactly. Every layout is written into a temporary folder or file first and
renamed into place, so an interrupted export leaves nothing.

Example:
  >>> export_layout({"train": ds_train, "test": ds_test}, "npz", "cmnist.npz")  # doctest: +SKIP
"""
from __future__ import annotations

import csv
import io
import os
import re
from pathlib import Path
from typing import Mapping

import numpy as np
from PIL import Image

from jaxdd._src import io as _io
from jaxdd.data.card import BiasedDataset
from jaxdd.data.ops import to_uint8

#: The layouts of :func:`export_layout`.
LAYOUTS = ("folder", "csv", "npz")


def folder_names(class_names) -> list[str]:
  """Class folder names whose sorted order is the class order: the index, zero-padded, then the
  name with path separators and spaces replaced (``t-shirt/top`` -> ``0-t-shirt_top``).

  >>> folder_names(["t-shirt/top", "trouser"])
  ['0-t-shirt_top', '1-trouser']
  >>> folder_names([str(i) for i in range(11)])[10]
  '10-10'
  """
  width = len(str(len(class_names) - 1))
  safe = [re.sub(r"[\\/:\s]+", "_", str(c)) for c in class_names]
  return [f"{i:0{width}d}-{name}" for i, name in enumerate(safe)]


def _png(image: np.ndarray) -> bytes:
  a = to_uint8(image)
  buf = io.BytesIO()
  Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a).save(buf, format="PNG")
  return buf.getvalue()


def _write_images(root: Path, rel_paths: list[str], images: np.ndarray) -> None:
  for rel, img in zip(rel_paths, images):
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(_png(img))


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
  with open(path, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(header)
    w.writerows(rows)


def export_layout(splits: Mapping[str, BiasedDataset], layout: str, dest: str | os.PathLike, *,
                  groups: str = "all") -> Path:
  """Writes ``splits`` (split name -> dataset) in ``layout`` at ``dest``.

  Args:
    splits: e.g. ``{"train": ..., "valid": ..., "test": ...}``.
    layout: ``folder`` (``dest/split/class/NNNNNN.png``, the class folders named by
      :func:`folder_names`; groups in ``dest/groups.csv``),
      ``csv`` (``dest/images/split/NNNNNN.png`` and ``dest/metadata.csv`` with columns
      ``path, y, group, split``) or ``npz`` (``x_split, y_split, g_split`` in the file ``dest``).
    dest: the folder (folder, csv) or file (npz) to create; it must not exist.
    groups: ``all`` (every split's group labels), ``test`` (the test split's only: a label-free
      training set with an evaluable test set) or ``none``.

  Returns:
    The path written.

  Raises:
    ValueError: an unknown layout or groups, or ``dest`` exists.
  """
  if layout not in LAYOUTS:
    raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
  if groups not in ("all", "test", "none"):
    raise ValueError(f"groups must be 'all', 'test' or 'none', got {groups!r}")
  dest = Path(dest)
  if dest.exists():
    raise ValueError(f"{dest} exists; export into a new path")
  keep = {s: groups == "all" or (groups == "test" and s == "test") for s in splits}
  if layout == "npz":
    arrays = {}
    for s, ds in splits.items():
      arrays[f"x_{s}"], arrays[f"y_{s}"] = ds.images, np.asarray(ds.labels, np.int64)
      if keep[s] and ds.bias is not None:
        arrays[f"g_{s}"] = np.asarray(ds.bias, np.int64)
    _io.atomic_write_bytes(dest, lambda f: np.savez(f, **arrays), durable=False)
    return dest
  with _io.atomic_directory(dest) as tmp:
    root = Path(tmp)
    rows, group_rows = [], []
    for s, ds in splits.items():
      names = folder_names(ds.class_names)
      if layout == "folder":
        rel = [f"{s}/{names[int(y)]}/{i:06d}.png" for i, y in enumerate(ds.labels)]
      else:
        rel = [f"images/{s}/{i:06d}.png" for i in range(len(ds))]
      _write_images(root, rel, ds.images)
      g = ds.bias if keep[s] and ds.bias is not None else None
      for i, (p, y) in enumerate(zip(rel, ds.labels)):
        rows.append([p, int(y), "" if g is None else int(g[i]), s])
        if g is not None:
          group_rows.append([p, int(g[i])])
    every = bool(rows) and all(r[2] != "" for r in rows)
    if layout == "csv" and every:  # one table: read with --group-col group
      _write_csv(root / "metadata.csv", ["path", "y", "group", "split"], rows)
    else:
      if layout == "csv":
        _write_csv(root / "metadata.csv", ["path", "y", "split"], [r[:2] + [r[3]] for r in rows])
      if group_rows:  # the groups some images have: read with --group-file groups.csv
        _write_csv(root / "groups.csv", ["path", "group"], group_rows)
  return dest
