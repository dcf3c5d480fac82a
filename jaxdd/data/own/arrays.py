"""The readers of a user's dataset that arrives decoded: ``.npz`` arrays and a TFDS dataset
prepared offline. Each returns an :class:`~jaxdd.data.own.readers.Index` holding the arrays.

npz keys: per split ``x_train, y_train[, g_train]`` (``valid``/``val`` and ``test`` likewise),
or one set ``x, y[, g][, split]``. Images are (N, H, W[, C]) ``uint8`` or float in [0, 1].

Example:
  >>> sorted(_NPZ_SPLITS)
  ['test', 'train', 'val', 'valid']
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np

from jaxdd.data.own import readers
from jaxdd.data.own.spec import DataSpec
from jaxdd.data.support import validate_images

_NPZ_SPLITS = {"train": 0, "valid": 1, "val": 1, "test": 2}
#: The float image a jaxdd TFDS builder keeps beside its uint8 one (read first when present).
EXACT_IMAGE_KEY = "image_float"


def _labels(values, what: str, source: str) -> np.ndarray:
  return readers._integers(np.asarray(values).reshape(-1).tolist(), what,
                           lambda i: f"{source} entry {i}")


def _assemble(spec: DataSpec, source_id: str, parts: list[tuple], *, group_names=None,
              class_names=None) -> readers.Index:
  """parts: (images, labels, groups | None, split code | None) per split; one Index."""
  shapes = {p[0].shape[1:] for p in parts}
  if len(shapes) > 1:
    raise ValueError(f"{source_id}: the splits' images differ in shape {sorted(shapes)}; store "
                     "one image shape (resize before saving)")
  x = np.concatenate([p[0] for p in parts])
  label_values, labels = readers._codes(np.concatenate([p[1] for p in parts]))
  groups = None
  if any(p[2] is not None for p in parts):  # a split without groups: unknown there
    raw = np.concatenate([p[2] if p[2] is not None else np.full(len(p[1]), readers.UNKNOWN)
                          for p in parts])
    known = raw != readers.UNKNOWN
    group_values, codes = readers._codes(raw[known])
    groups = np.full(len(raw), readers.UNKNOWN, np.int64)
    groups[known] = codes
    if group_names is None:
      group_names = readers._names(spec.group_col, group_values)
  codes = [p[3] for p in parts]
  splits = None if codes == [None] else np.concatenate(
      [np.full(len(p[1]), c, np.int64) for p, c in zip(parts, codes)])
  if class_names is None:
    class_names = readers._names(spec.label_col, label_values)
  return readers.Index(source_id, None, None, x, labels, groups, splits, tuple(class_names),
                       None if groups is None else tuple(group_names))


def columns_index(spec: DataSpec, source_id: str, images, labels, groups=None, splits=None, *,
                  class_names=None) -> readers.Index:
  """The Index of one set of arrays: images, labels, optional groups (-1: unknown) and splits
  (0/1/2 or their names), each checked, one entry per image."""
  x = validate_images(images, what=f"{source_id} images")
  y = _labels(labels, "label", f"{source_id} labels")
  g = None if groups is None else _labels(groups, "group", f"{source_id} groups")
  split = None
  if splits is not None:
    split = np.asarray([readers._split_code(int(v) if isinstance(v, bool) else v,
                                            f"{source_id} split entry {i}")
                        for i, v in enumerate(np.asarray(splits).reshape(-1).tolist())],
                       np.int64)
  if any(a is not None and len(a) != len(x) for a in (y, g, split)):
    raise ValueError(f"{source_id}: images, labels, groups and splits must have one entry per "
                     "image")
  if split is None:
    parts = [(x, y, g, None)]
  else:
    parts = [(x[split == c], y[split == c], None if g is None else g[split == c], c)
             for c in (0, 1, 2) if (split == c).any()]
  index = _assemble(spec, source_id, parts)
  if class_names is not None:
    if len(class_names) != len(index.class_names):
      raise ValueError(f"class_names has {len(class_names)} names for "
                       f"{len(index.class_names)} classes")
    index = dataclasses.replace(index, class_names=tuple(class_names))
  return index


def read_npz(spec: DataSpec) -> readers.Index:
  """An ``.npz`` of arrays (see the module docstring)."""
  path = Path(spec.path).expanduser()
  if not path.is_file():
    raise FileNotFoundError(f"npz file {path} does not exist; pass an existing .npz")
  try:
    z = dict(np.load(path, allow_pickle=False))
  except Exception as e:  # a bad zip, pickled objects, a truncated file
    raise ValueError(f"cannot read {path} as plain npz arrays ({type(e).__name__}: {e}); "
                     "save it with numpy.savez and no object arrays") from e
  name = path.name
  parts = []
  split_keys = [s for s in _NPZ_SPLITS if f"x_{s}" in z]
  if split_keys:
    for s in split_keys:
      if f"y_{s}" not in z:
        raise ValueError(f"{path} has x_{s} but no y_{s}; store the labels beside the images")
      x = validate_images(z[f"x_{s}"], what=f"{path} x_{s}")
      y = _labels(z[f"y_{s}"], "label", f"{path} y_{s}")
      g = _labels(z[f"g_{s}"], "group", f"{path} g_{s}") if f"g_{s}" in z else None
      for arr, key in ((y, "y"), (g, "g")):
        if arr is not None and len(arr) != len(x):
          raise ValueError(f"{path}: {key}_{s} has {len(arr)} entries for {len(x)} images")
      parts.append((x, y, g, _NPZ_SPLITS[s]))
  elif "x" in z and "y" in z:
    return columns_index(spec, f"npz:{name}", z["x"], z["y"], z.get("g"), z.get("split"))
  else:
    raise ValueError(f"{path} has keys {sorted(z)}; store x_train, y_train[, g_train] (and "
                     "x_valid, x_test ...) or x, y[, g][, split]")
  return _assemble(spec, f"npz:{name}", parts)


def _tfds_rows(src, keys: list[str], name: str) -> dict[str, np.ndarray]:
  n = len(src)
  out: dict[str, list] = {k: [] for k in keys}
  for start in range(0, n, 1024):
    idx = list(range(start, min(n, start + 1024)))
    rows = src.__getitems__(idx) if hasattr(src, "__getitems__") else [src[i] for i in idx]
    for r in rows:
      for k in keys:
        out[k].append(np.asarray(r[k]))
  if not n:
    raise ValueError(f"TFDS dataset {name!r} has an empty split; drop it or add examples")
  return {k: np.stack(v) for k, v in out.items()}


def read_tfds(spec: DataSpec) -> readers.Index:
  """A TFDS dataset prepared in ``data_dir`` (no download), read with ``tfds.data_source``:
  the image feature (``image_float`` when a jaxdd builder kept it, else ``image``), the label
  key ``label_col`` and the optional group key ``group_col``."""
  # tensorflow-datasets is heavy to import: loaded only when a TFDS dataset is read
  import tensorflow_datasets as tfds

  kwargs = {} if spec.data_dir is None else {"data_dir": os.fspath(spec.data_dir)}
  try:
    builder = tfds.builder(spec.path, try_gcs=False, **kwargs)
  except Exception as e:  # an unknown name or a missing folder: TFDS raises several types
    raise FileNotFoundError(f"TFDS dataset {spec.path!r} is not available ({e}); prepare it "
                            "on a machine with internet and pass --data-dir") from e
  if not builder.is_prepared():
    raise FileNotFoundError(f"TFDS dataset {spec.path!r} is not prepared in {builder.data_dir}; "
                            "jaxdd never downloads: prepare it elsewhere and pass --data-dir")
  features = builder.info.features
  image_key = EXACT_IMAGE_KEY if EXACT_IMAGE_KEY in features else "image"
  for flag, key in (("image", image_key), ("--label-col", spec.label_col),
                    ("--group-col", spec.group_col)):
    if key is not None and key not in features:
      raise ValueError(f"TFDS dataset {spec.path!r} has no feature {key!r} ({flag}); its "
                       f"features are {sorted(features)}")
  keys = [image_key, spec.label_col] + ([spec.group_col] if spec.group_col else [])
  names = {"train": 0, "validation": 1, "valid": 1, "val": 1, "test": 2}
  parts = []
  for split in builder.info.splits:
    if split not in names:
      continue
    # the PNG twin of an exact float image is not decoded (it is not read)
    skip = {"image": tfds.decode.SkipDecoding()} if image_key != "image" and "image" in \
        features else None
    rows = _tfds_rows(builder.as_data_source(split=split, decoders=skip), keys, spec.path)
    x = validate_images(rows[image_key], what=f"tfds {spec.path} {split} images")
    parts.append((x, rows[spec.label_col].astype(np.int64),
                  rows[spec.group_col].astype(np.int64) if spec.group_col else None,
                  names[split]))
  if not parts:
    raise ValueError(f"TFDS dataset {spec.path!r} has none of the splits train/validation/test")
  label_names = getattr(features[spec.label_col], "names", None)
  group_names = getattr(features[spec.group_col], "names", None) if spec.group_col else None
  index = _assemble(spec, f"tfds:{spec.path}", parts)
  # ClassLabel names, when every value 0..K-1 is present (the codes are then the values)
  if label_names and len(index.class_names) == len(label_names):
    index = dataclasses.replace(index, class_names=tuple(label_names))
  if group_names and index.group_names and len(index.group_names) == len(group_names):
    index = dataclasses.replace(index, group_names=tuple(group_names))
  return index
