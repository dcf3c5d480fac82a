"""The readers of a user's own dataset: each turns a :class:`~jaxdd.data.own.spec.DataSpec` into
an :class:`Index` (which images, their labels, groups and splits), without decoding an image.

Labels and groups are integers in the data (a class folder is its own label); their sorted
distinct values become the class and group indices. A split is ``train``/``valid``/``test``
(``val``/``validation`` accepted) or 0/1/2 (Waterbirds' and CelebA's convention). Every
mistake raises ``ValueError`` or ``FileNotFoundError`` naming the file, row or column and the fix.

Example:
  >>> _split_code("val", "row 3"), _split_code(2, "row 4")
  (1, 2)
"""
from __future__ import annotations

import csv
import dataclasses
import io
from pathlib import Path

import numpy as np

from jaxdd._src import io as _io
from jaxdd.data.own.spec import DataSpec

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")
SPLIT_NAMES = ("train", "valid", "test")
_SPLIT_WORDS = {"train": 0, "training": 0, "valid": 1, "val": 1, "validation": 1, "dev": 1,
                "test": 2, "testing": 2}
#: Group value of an image whose group is not known.
UNKNOWN = -1


@dataclasses.dataclass(frozen=True, eq=False)
class Index:
  """What a dataset holds, before decoding: one entry per image.

  Attributes:
    source_id: a short name of the source (no absolute path).
    root: the folder image paths are relative to (None for arrays).
    paths: relative posix paths of the images, or None when ``arrays`` holds them.
    arrays: (N, H, W[, C]) images already decoded (npz, tfds), or None.
    labels: (N,) class indices.
    groups: (N,) group indices, :data:`UNKNOWN` where not known; None: no group labels at all.
    splits: (N,) 0 train / 1 valid / 2 test, or None when the data has no split.
    class_names: the name of each class index.
    group_names: the name of each group index (None without groups).
  """
  source_id: str
  root: Path | None
  paths: list[str] | None
  arrays: np.ndarray | None
  labels: np.ndarray
  groups: np.ndarray | None
  splits: np.ndarray | None
  class_names: tuple[str, ...]
  group_names: tuple[str, ...] | None

  def __len__(self) -> int:
    return int(self.labels.shape[0])


def _split_code(value, where: str) -> int:
  v = value.strip().lower() if isinstance(value, str) else value
  if isinstance(v, str) and v in _SPLIT_WORDS:
    return _SPLIT_WORDS[v]
  try:
    code = int(v)
  except (TypeError, ValueError):
    code = None
  if code not in (0, 1, 2):
    raise ValueError(f"{where}: split {value!r} is not train/valid/test or 0/1/2; fix the value")
  return code


def _integers(values, what: str, where) -> np.ndarray:
  """Whole-number values (``'1'``, ``'-1'``, ``'2.0'``) as int64; anything else names its row."""
  out = np.empty(len(values), np.int64)
  for i, v in enumerate(values):
    try:
      f = float(v)
    except (TypeError, ValueError):
      f = float("nan")
    if not np.isfinite(f) or f != round(f):
      raise ValueError(f"{where(i)}: {what} {v!r} is not an integer; {what}s must be whole "
                       "numbers (map class names to integers first)")
    out[i] = int(round(f))
  return out


def _codes(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  values = np.unique(raw)
  return values, np.searchsorted(values, raw).astype(np.int64)


def _names(col: str | None, values: np.ndarray) -> tuple[str, ...]:
  if col is None:
    return tuple(str(int(v)) for v in values)
  if len(values) == 2 and set(values.tolist()) in ({-1, 1}, {0, 1}):
    return (f"not_{col}", col)  # a binary attribute (CelebA's -1/1, 0/1)
  return tuple(f"{col}={int(v)}" for v in values)


def _inside(root: Path, rel: str, where: str) -> str:
  p = Path(rel)
  if p.is_absolute() or ".." in p.parts:
    resolved = (root / p).resolve()
    if root.resolve() not in resolved.parents:
      raise ValueError(f"{where}: path {rel!r} lies outside the data root {root}/; keep "
                       "every image under the root and give paths relative to it")
    return resolved.relative_to(root.resolve()).as_posix()
  return p.as_posix()


def _check_unique(paths: list[str], where) -> None:
  seen: dict[str, int] = {}
  for i, p in enumerate(paths):
    if p in seen:
      raise ValueError(f"{where(i)}: path {p!r} is listed twice (first at {where(seen[p])}); "
                       "remove the duplicate")
    seen[p] = i


def _check_files(root: Path, paths: list[str], where) -> None:
  for i, p in enumerate(paths):
    if not (root / p).is_file():
      raise FileNotFoundError(f"{where(i)}: image {p!r} does not exist under {root}/; fix "
                              "the path or remove the row")


def _image_files(folder: Path) -> list[Path]:
  return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTS)


def _root(path: str, what: str) -> Path:
  root = Path(path).expanduser()
  if not root.is_dir():
    raise FileNotFoundError(f"{what} {root} is not a folder; pass the dataset's root folder")
  return root


def read_folder(spec: DataSpec) -> Index:
  """``ROOT/[split/]class/*.png``: the class is the folder, the split the top folder if the
  top folders are split names (``train``, ``valid``/``val``, ``test``)."""
  root = _root(spec.path, "folder:")
  tops = sorted(p.name for p in root.iterdir() if p.is_dir())
  if not tops:
    raise FileNotFoundError(f"{root} has no class folders; lay it out as ROOT/[split/]class/"
                            "image.png")
  split_tops = [t for t in tops if t.lower() in _SPLIT_WORDS]
  has_split = bool(split_tops)
  if has_split and len(split_tops) != len(tops):
    other = sorted(set(tops) - set(split_tops))
    raise ValueError(f"{root} mixes split folders {split_tops} with other folders {other}; "
                     "put every class folder under a split folder, or none")
  bases = [(root / t, _split_code(t, f"{root}/{t}")) for t in split_tops] if has_split \
      else [(root, None)]
  names = sorted({c.name for base, _ in bases for c in base.iterdir() if c.is_dir()})
  if not names:
    raise FileNotFoundError(f"{root} has no class folders under its split folders; lay it out "
                            "as ROOT/split/class/image.png")
  paths, labels, splits = [], [], []
  for base, code in bases:
    for c, cname in enumerate(names):
      files = _image_files(base / cname) if (base / cname).is_dir() else []
      paths.extend(f.relative_to(root).as_posix() for f in files)
      labels.extend([c] * len(files))
      splits.extend([code] * len(files))
  if not paths:
    raise FileNotFoundError(f"{root} holds no images ({', '.join(IMAGE_EXTS)})")
  for top, (_, code) in zip(split_tops, bases):
    if code not in splits:
      raise ValueError(f"split folder {root}/{top}/ holds no images; add images to its "
                       "class folders or remove it")
  return Index(f"folder:{root.name}", root, paths, None, np.asarray(labels, np.int64), None,
               np.asarray(splits, np.int64) if has_split else None, tuple(names), None)


#: The largest metadata table or list read (CelebA's attribute list is about 26 MB).
MAX_TABLE_BYTES = 2**30


def _text(path: Path) -> str:
  """A metadata file's text: UTF-8 (a byte-order mark allowed), a regular file of at most
  :data:`MAX_TABLE_BYTES`; anything else is one line naming the file and the fix."""
  data = _io.read_bounded(path, MAX_TABLE_BYTES, fix="give the metadata file itself")
  try:
    return data.decode("utf-8-sig")
  except UnicodeDecodeError as e:
    raise ValueError(f"{path} is not UTF-8 text (byte {e.start} is 0x{data[e.start]:02x}); "
                     "save it as UTF-8, e.g. iconv -f latin1 -t utf-8") from None


def _read_table(path: Path) -> tuple[list[str], list[list[str]]]:
  if not path.is_file():
    raise FileNotFoundError(f"metadata table {path} does not exist; pass an existing csv file")
  rows = list(csv.reader(io.StringIO(_text(path), newline="")))
  if not rows:
    raise ValueError(f"{path} is empty; it needs a header row and one row per image")
  header = [h.strip() for h in rows[0]]
  body = [r for r in rows[1:] if any(c.strip() for c in r)]
  for i, r in enumerate(body):
    if len(r) != len(header):
      raise ValueError(f"{path} row {i + 2}: {len(r)} fields, the header has {len(header)}; "
                       "fix the row")
  return header, body


def _column(header: list[str], name: str, flag: str, table: str) -> int:
  if name not in header:
    raise ValueError(f"{table} has no column {name!r} ({flag}); its columns are {header}")
  return header.index(name)


def _from_columns(spec: DataSpec, table: str, root: Path, paths: list[str], cols: dict,
                  where) -> Index:
  """An Index from per-row path strings and the raw label / group / split columns."""
  paths = [_inside(root, p, where(i)) for i, p in enumerate(paths)]
  _check_unique(paths, where)
  _check_files(root, paths, where)
  label_values, labels = _codes(_integers(cols["label"], "label", where))
  groups = group_names = None
  if cols.get("group") is not None:
    group_values, groups = _codes(_integers(cols["group"], "group", where))
    group_names = _names(spec.group_col, group_values)
  splits = None
  if cols.get("split") is not None:
    splits = np.asarray([_split_code(v, where(i)) for i, v in enumerate(cols["split"])], np.int64)
  return Index(f"{spec.kind}:{table}", root, paths, None, labels, groups, splits,
               _names(spec.label_col, label_values), group_names)


def read_csv(spec: DataSpec) -> Index:
  """A metadata table: ``path_col`` (relative to the table's folder), ``label_col``, and the
  optional ``group_col`` and ``split_col`` (Waterbirds: ``img_filename, y, place, split``)."""
  path = Path(spec.path).expanduser()
  header, body = _read_table(path)
  pc = _column(header, spec.path_col, "--path-col", str(path))
  cols = {"label": [r[_column(header, spec.label_col, "--label-col", str(path))] for r in body]}
  if spec.group_col:
    cols["group"] = [r[_column(header, spec.group_col, "--group-col", str(path))] for r in body]
  if spec.split_col:
    cols["split"] = [r[_column(header, spec.split_col, "--split-col", str(path))] for r in body]
  if not body:
    raise ValueError(f"{path} has a header but no rows; list one image per row")
  return _from_columns(spec, path.name, path.parent, [r[pc].strip() for r in body], cols,
                       lambda i: f"{path} row {i + 2}")


def _celeba_rows(path: Path) -> tuple[list[str], list[list[str]]]:
  if not path.is_file():
    raise FileNotFoundError(f"{path} does not exist; celeba: needs ROOT/list_attr_celeba.txt "
                            "and ROOT/img_align_celeba/")
  lines = [ln.split() for ln in _text(path).splitlines() if ln.strip()]
  if len(lines) < 3:
    raise ValueError(f"{path} has no rows; it must be CelebA's attribute list (a count, "
                     "the attribute names, one row per image)")
  names = lines[1]
  body = lines[2:]
  for i, r in enumerate(body):
    if len(r) != len(names) + 1:
      raise ValueError(f"{path} line {i + 3}: {len(r) - 1} values for {len(names)} "
                       "attributes; fix the line")
  return names, body


def read_celeba(spec: DataSpec) -> Index:
  """CelebA: ``list_attr_celeba.txt`` (attributes -1/1), ``list_eval_partition.txt`` (0/1/2,
  optional) and the images in ``img_align_celeba/``; label and group are attributes."""
  root = _root(spec.path, "celeba:")
  names, body = _celeba_rows(root / "list_attr_celeba.txt")
  header = ["image"] + names
  table = "list_attr_celeba.txt"
  cols = {"label": [r[_column(header, spec.label_col, "--label-col", table)] for r in body]}
  if spec.group_col:
    cols["group"] = [r[_column(header, spec.group_col, "--group-col", table)] for r in body]
  part = root / "list_eval_partition.txt"
  if part.is_file():
    split_of = dict(ln.split()[:2] for ln in _text(part).splitlines() if ln.strip())
    missing = [r[0] for r in body if r[0] not in split_of]
    if missing:
      raise ValueError(f"list_eval_partition.txt has no split for {missing[0]}; use the "
                       "partition file that comes with the attribute list")
    cols["split"] = [split_of[r[0]] for r in body]
  img = root / "img_align_celeba"
  if not img.is_dir():
    raise FileNotFoundError(f"{root}/ has no img_align_celeba/ folder of images")
  return _from_columns(spec, table, root, [f"img_align_celeba/{r[0]}" for r in body], cols,
                       lambda i: f"{table} line {i + 3}")


def read_pattern(spec: DataSpec) -> Index:
  """Fields in the file name: ``ROOT/[split/]a_b_c.jpg`` with ``fields`` naming a, b, c
  (UTKFace: ``age_gender_race_date``); a top folder named like a split is the split."""
  root = _root(spec.path, "pattern:")
  files = _image_files(root)
  if not files:
    raise FileNotFoundError(f"{root} holds no images ({', '.join(IMAGE_EXTS)})")
  fields = list(spec.fields)
  rows, splits = [], []
  for f in files:
    parts = f.stem.split("_")
    if len(parts) != len(fields):
      raise ValueError(f"{f.relative_to(root).as_posix()}: {len(parts)} fields in the name, "
                       f"--fields names {len(fields)} ({','.join(fields)}); rename or remove the "
                       "file")
    rows.append(parts)
    top = f.relative_to(root).parts[0]
    splits.append(top if len(f.relative_to(root).parts) > 1 else None)
  cols = {"label": [r[fields.index(spec.label_col)] for r in rows]}
  if spec.group_col:
    cols["group"] = [r[fields.index(spec.group_col)] for r in rows]
  if spec.split_col:
    cols["split"] = [r[fields.index(spec.split_col)] for r in rows]
  elif all(s is not None and s.lower() in _SPLIT_WORDS for s in splits):
    cols["split"] = splits
  paths = [f.relative_to(root).as_posix() for f in files]
  return _from_columns(spec, root.name, root, paths, cols, lambda i: paths[i])
