"""What a user's own dataset is: :class:`DataSpec`, parsed from ``KIND:PATH`` and a few options.

Kinds (one reader each, :mod:`jaxdd.data.own.readers`):

* ``folder:ROOT`` -- a class-folder tree ``ROOT/[split/]class/*.{png,jpg,...}``;
* ``csv:FILE`` -- a metadata table with a path column and a label column, optional group and
  split columns (Waterbirds' ``metadata.csv``);
* ``celeba:ROOT`` -- CelebA's ``list_attr_celeba.txt`` (+ ``list_eval_partition.txt``), the
  label and the group being attribute columns (``Blond_Hair``, ``Male``);
* ``pattern:ROOT`` -- fields in the file name, ``a_b_c_....jpg`` (UTKFace's
  ``age_gender_race_date.jpg``), named by ``fields``;
* ``npz:FILE`` -- arrays ``x_train, y_train[, g_train], x_test, ...`` (``valid`` likewise);
* ``tfds:NAME`` -- a TFDS dataset prepared offline in ``data_dir``, read with
  ``tfds.data_source``.

The same option names serve every kind: ``label_col`` is the column (csv), attribute
(celeba), file-name field (pattern) or feature key (tfds) that holds the class label;
``group_col`` likewise for the group (the bias attribute), ``split_col`` for a split.

Example:
  >>> s = parse("csv:meta.csv", label_col="y", group_col="place", split_col="split")
  >>> s.kind, s.path, s.label_col
  ('csv', 'meta.csv', 'y')
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any

#: The kinds of :func:`parse` and their readers.
KINDS = ("folder", "csv", "celeba", "pattern", "npz", "tfds")

#: What a label or group value means relative to the class: ``majority`` (a sample is
#: aligned when its group is its class's most frequent group in the training split) or
#: ``equal`` (aligned when group index == class index, as in the colour benchmarks).
ALIGNED_RULES = ("majority", "equal")

_DEFAULT_LABEL = {"csv": None, "celeba": None, "pattern": None, "tfds": "label",
                  "folder": None, "npz": None}


@dataclasses.dataclass(frozen=True)
class DataSpec:
  """A user's dataset: where it is and how to read its labels, groups and splits.

  Attributes:
    kind: one of :data:`KINDS`.
    path: the folder, file or TFDS name after ``KIND:``.
    label_col: the column / attribute / field / feature key of the class label.
    group_col: the same for the group (bias) label; None: no group labels.
    split_col: the same for a per-image split (``train``/``valid``/``test`` or 0/1/2).
    path_col: the csv column of image paths (relative to the csv's folder).
    fields: ``pattern`` only, the names of the file name's underscore-separated fields.
    group_file: a csv ``path,group`` giving group labels to some images (e.g. only the test
      split's) of a layout that has none.
    image_size: resize every image to ``image_size`` x ``image_size`` (None: keep the size,
      which must then be one size for all).
    data_dir: ``tfds`` only, the TFDS data directory.
    aligned: how a group relates to a class (:data:`ALIGNED_RULES`).
    valid_fraction: the stratified hold-out for validation when the data has no valid split.
    test_fraction: the stratified hold-out for test when the data has no test split.
  """
  kind: str
  path: str
  label_col: str | None = None
  group_col: str | None = None
  split_col: str | None = None
  path_col: str = "path"
  fields: tuple[str, ...] | None = None
  group_file: str | None = None
  image_size: int | None = None
  data_dir: str | None = None
  aligned: str = "majority"
  valid_fraction: float = 0.1
  test_fraction: float = 0.2

  def to_dict(self) -> dict[str, Any]:
    """A JSON-ready dict (run directories record it)."""
    d = dataclasses.asdict(self)
    d["fields"] = None if self.fields is None else list(self.fields)
    return d

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "DataSpec":
    """The checked spec of :meth:`to_dict`'s output (a run's record)."""
    d = dict(d)
    if d.get("fields") is not None:
      d["fields"] = tuple(d["fields"])
    spec = cls(**d)
    check(spec)
    return spec

  @property
  def text(self) -> str:
    """``KIND:PATH`` as the user wrote it."""
    return f"{self.kind}:{self.path}"


def parse(text: str, **options: Any) -> DataSpec:
  """A :class:`DataSpec` from ``KIND:PATH`` and options; every mistake is one line naming the fix.

  Args:
    text: ``folder:ROOT``, ``csv:FILE``, ``celeba:ROOT``, ``pattern:ROOT``, ``npz:FILE`` or
      ``tfds:NAME``.
    **options: :class:`DataSpec` fields (None values take the defaults); ``fields`` may be a
      comma-separated string.

  Returns:
    The checked spec (nothing is read yet).

  Raises:
    ValueError: an unknown kind, a missing option the kind needs, or a bad value.

  Example:
    >>> parse("pattern:faces", fields="age,gender,race,date", label_col="gender").fields
    ('age', 'gender', 'race', 'date')
  """
  if not isinstance(text, str) or ":" not in text:
    raise ValueError(f"--data must be KIND:PATH with KIND one of {', '.join(KINDS)}, got "
                     f"{text!r}; e.g. folder:images/ or csv:metadata.csv")
  kind, path = text.split(":", 1)
  if kind not in KINDS:
    raise ValueError(f"unknown data kind {kind!r} in {text!r}; use one of {', '.join(KINDS)}")
  if not path:
    raise ValueError(f"{text!r} names no path; write {kind}:PATH")
  opts = {k: v for k, v in options.items() if v is not None}
  unknown = set(opts) - {f.name for f in dataclasses.fields(DataSpec)}
  if unknown:
    raise ValueError(f"unknown data options {sorted(unknown)}")
  if isinstance(opts.get("fields"), str):
    opts["fields"] = tuple(f.strip() for f in opts["fields"].split(",") if f.strip())
  elif opts.get("fields") is not None:
    opts["fields"] = tuple(opts["fields"])
  if "label_col" not in opts and _DEFAULT_LABEL[kind] is not None:
    opts["label_col"] = _DEFAULT_LABEL[kind]
  spec = DataSpec(kind=kind, path=os.fspath(path), **opts)
  check(spec)
  return spec


def check(spec: DataSpec) -> None:
  """The checks of :func:`parse` that need no file (a spec rebuilt from a run's record too)."""
  need_label = {"csv": "the label column (--label-col y)",
                "celeba": "the target attribute (--label-col Blond_Hair)",
                "pattern": "the file-name field of the label (--label-col gender)"}
  if spec.kind in need_label and not spec.label_col:
    raise ValueError(f"{spec.text} needs {need_label[spec.kind]}")
  if spec.kind == "pattern":
    if not spec.fields:
      raise ValueError(f"{spec.text} needs the names of the file name's fields, e.g. "
                       "--fields age,gender,race,date")
    for name, col in (("--label-col", spec.label_col), ("--group-col", spec.group_col),
                      ("--split-col", spec.split_col)):
      if col is not None and col not in spec.fields:
        raise ValueError(f"{name} {col!r} is not one of the fields {list(spec.fields)}")
  elif spec.fields is not None:
    raise ValueError(f"--fields names file-name fields and applies to pattern: only, not "
                     f"{spec.kind}:")
  if spec.kind in ("folder", "npz") and (spec.label_col or spec.group_col or spec.split_col):
    raise ValueError(f"{spec.kind}: takes its labels from its layout; drop --label-col/"
                     "--group-col/--split-col (give groups with --group-file)")
  if spec.data_dir is not None and spec.kind != "tfds":
    raise ValueError("--data-dir is the TFDS data directory and applies to tfds: only")
  if spec.image_size is not None and (isinstance(spec.image_size, bool)
                                      or not isinstance(spec.image_size, int)
                                      or not 8 <= spec.image_size <= 1024):
    raise ValueError(f"--image-size must be an integer in [8, 1024], got {spec.image_size!r}")
  if spec.aligned not in ALIGNED_RULES:
    raise ValueError(f"--aligned must be one of {ALIGNED_RULES}, got {spec.aligned!r}")
  for name in ("valid_fraction", "test_fraction"):
    v = getattr(spec, name)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 < v < 0.5:
      raise ValueError(f"--{name.replace('_', '-')} must lie in (0, 0.5), got {v!r}")
