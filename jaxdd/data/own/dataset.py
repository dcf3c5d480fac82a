"""A user's own dataset as it is: :func:`load_own` reads, splits and decodes it into a
:class:`~jaxdd.data.card.BiasedDataset` whose group labels are the data's own (or absent).

Splits: the data's own where it has them. A missing validation split is a seeded, stratified
hold-out of ``valid_fraction`` of each class's training images; a missing test split likewise
(``test_fraction``), with a warning that such a test set is as biased as the training data.
The hold-outs are drawn with ``jax.random.key(seed)`` (folded with 1 for valid, 2 for test,
then with the class), so the same seed gives the same split.

Groups: a split either has a group for every image or none (``bias`` and ``aligned`` are then
None). A sample is *aligned* when its group is its class's aligned group: under the
``majority`` rule, the class's most frequent group in the training split (in the splits that
have groups, when training has none; ties to the lower group); under ``equal``, the group
whose index is the class's. Nothing in training, selection or weighting reads them; evaluation
reports group measures when the test split has them.

Example:
  >>> import numpy as np
  >>> _aligned_groups(np.array([0, 0, 1, 1, 1]), np.array([1, 1, 0, 0, 1]), 2, 2, "majority")
  (1, 0)
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import warnings
from pathlib import Path

import jax
import numpy as np

from jaxdd.data.card import BiasedDataset, DatasetCard
from jaxdd.data.injectors import _to_float
from jaxdd.data.ops import channel_stats
from jaxdd.data.own import arrays as arrays_lib
from jaxdd.data.own import readers
from jaxdd.data.own.decoding import decode
from jaxdd.data.own import spec as spec_lib
from jaxdd.data.own.spec import DataSpec

_READERS = {"folder": readers.read_folder, "csv": readers.read_csv,
            "celeba": readers.read_celeba, "pattern": readers.read_pattern,
            "npz": arrays_lib.read_npz, "tfds": arrays_lib.read_tfds}
_SPLIT_CODE = {"train": 0, "valid": 1, "test": 2}


def _check_split(split: str) -> None:
  """Refuses a split name before any file is read."""
  if split not in _SPLIT_CODE:
    raise ValueError(f"split must be one of {tuple(_SPLIT_CODE)}, got {split!r}")


class HeldOutTestWarning(UserWarning):
  """The data has no test split: one was held out of the training data, as biased as it."""


class DataChangedWarning(UserWarning):
  """The data a SynSet was distilled from have changed since (another content digest): its
  evaluation on them is not its run's."""


def read_index(spec: DataSpec) -> readers.Index:
  """The spec's :class:`~jaxdd.data.own.readers.Index`, with ``group_file``'s groups applied."""
  index = _READERS[spec.kind](spec)
  if spec.group_file is None:
    return index
  if index.groups is not None:
    raise ValueError(f"{spec.text} has group labels already; drop --group-file")
  if index.paths is None:
    raise ValueError(f"--group-file labels image files; {spec.kind}: holds arrays (store their "
                     "groups as g_train / g_test or a group key)")
  return _with_group_file(index, spec.group_file)


def _with_group_file(index: readers.Index, path) -> readers.Index:
  table = Path(path).expanduser()
  header, body = readers._read_table(table)
  pc = readers._column(header, "path", "--group-file", table.name)
  gc = readers._column(header, "group", "--group-file", table.name)
  where = lambda i: f"{table.name} row {i + 2}"  # noqa: E731
  rel = [readers._inside(index.root, r[pc].strip(), where(i)) for i, r in enumerate(body)]
  readers._check_unique(rel, where)
  position = {p: i for i, p in enumerate(index.paths)}
  unknown = [p for p in rel if p not in position]
  if unknown:
    raise ValueError(f"{table.name}: {unknown[0]!r} is not an image of the dataset; give paths "
                     "as the layout lists them (relative to its root)")
  values, codes = readers._codes(readers._integers([r[gc] for r in body], "group", where))
  groups = np.full(len(index), readers.UNKNOWN, np.int64)
  groups[[position[p] for p in rel]] = codes
  return dataclasses.replace(index, groups=groups, group_names=readers._names(None, values))


def _holdout(labels: np.ndarray, pool: np.ndarray, fraction: float, key) -> np.ndarray:
  """Indices (sorted) of a stratified hold-out of ``fraction`` of each class within ``pool``."""
  held = []
  for c in np.unique(labels[pool]):
    idx = pool[labels[pool] == c]
    perm = np.asarray(jax.random.permutation(jax.random.fold_in(key, int(c)), len(idx)))
    held.append(idx[perm[: int(round(len(idx) * fraction))]])
  return np.sort(np.concatenate(held)) if held else np.zeros(0, np.int64)


def split_codes(index: readers.Index, spec: DataSpec, seed: int) -> tuple[np.ndarray, dict]:
  """0/1/2 per image (train/valid/test) and where each split came from."""
  codes = np.zeros(len(index), np.int64) if index.splits is None else index.splits.copy()
  if not (codes == 0).any():
    raise ValueError(f"{spec.text} has no training images (every image is in valid or test); "
                     "mark some as train")
  key = jax.random.key(seed)
  origin = {}
  for name, code, fraction in (("test", 2, spec.test_fraction), ("valid", 1, spec.valid_fraction)):
    if (codes == code).any():
      origin[name] = "the data"
      continue
    held = _holdout(index.labels, np.flatnonzero(codes == 0), fraction,
                    jax.random.fold_in(key, code))
    codes[held] = code
    origin[name] = f"held out of train ({fraction:g} per class, seed {seed})"
  origin["train"] = "the data"
  for c, cname in enumerate(index.class_names):
    if not ((codes == 0) & (index.labels == c)).any():
      raise ValueError(f"class {cname!r} has no training images; add some or remove the class")
  return codes, origin


def _aligned_groups(labels, groups, num_classes: int, num_groups: int, rule: str):
  if rule == "equal":
    if num_groups < num_classes:
      raise ValueError(f"--aligned equal pairs class k with group k, but there are "
                       f"{num_classes} classes and {num_groups} groups; use --aligned majority")
    return tuple(range(num_classes))
  known = groups >= 0
  counts = np.zeros((num_classes, num_groups), np.int64)
  np.add.at(counts, (labels[known], groups[known]), 1)
  return tuple(int(g) for g in counts.argmax(1))


def _split_groups(index, rows, split: str, spec: DataSpec):
  if index.groups is None:
    return None
  g = index.groups[rows]
  known = g >= 0
  if not known.any():
    return None
  if not known.all():
    raise ValueError(f"{spec.text}: {int(known.sum())} of {len(g)} {split} images have a group; "
                     "give every image of a split a group, or none")
  return g


def _as_float(images: np.ndarray, rows: np.ndarray, chunk: int = 4096) -> np.ndarray:
  """Rows of a (memory-mapped) uint8 or float array as float32 in [0, 1], chunk by chunk."""
  out = np.empty((len(rows),) + images.shape[1:], np.float32)
  for a in range(0, len(rows), chunk):
    out[a:a + chunk] = _to_float(np.asarray(images[rows[a:a + chunk]]))
  return out


class OwnData:
  """A user's dataset opened once: its index read, its splits drawn and its images decoded
  (one listing of the files and one check of the decoded cache for every split).

  Args:
    spec: from :func:`jaxdd.data.own.parse`.
    seed: the seed of the hold-outs of a missing valid or test split.
    cache: keep the decoded images in the cache (:func:`jaxdd.data.own.decoding.decode`).
    progress: as :func:`jaxdd.data.load`.
    index: the data's index when already read (:func:`from_arrays` gives its arrays');
      None reads the spec's (:func:`read_index`).
    check: ``check(index, split_codes)``, called before any image is decoded, to refuse what
      the index alone decides (a run's IPC against the training split's class counts, say).

  Raises:
    ValueError, FileNotFoundError: bad input, one line naming the file or row and the fix.

  Example:
    >>> data = OwnData(parse("folder:images"))            # doctest: +SKIP
    >>> train, valid = data.split("train"), data.split("valid")   # doctest: +SKIP
  """

  def __init__(self, spec: DataSpec, *, seed: int = 0, cache: bool = True, progress=None,
               index: readers.Index | None = None, check=None):
    self.spec, self.seed = spec, seed
    self.index = read_index(spec) if index is None else index
    self.codes, self.origin = split_codes(self.index, spec, seed)
    if check is not None:  # what the caller can refuse from the index alone, before decoding
      check(self.index, self.codes)
    self.images, self.record = decode(self.index, image_size=spec.image_size, cache=cache,
                                      progress=progress)
    self.data_sha256 = content_sha256(self.index, self.record["source_sha256"])
    # the splits read the decoded images: an array source's originals need not stay in memory
    self.index = dataclasses.replace(self.index, arrays=None)

  def identity(self) -> dict:
    """What names this dataset in a run's log, ``config.json``, SynSet and report: the spec
    (``KIND:PATH``), its source, the images of each split, the classes, the groups (0
    without group labels) and ``sha256``, the digest of its content
    (:func:`content_sha256`)."""
    counts = np.bincount(self.codes, minlength=3)
    return {"spec": self.spec.text, "source": self.index.source_id,
            "images": {name: int(counts[code]) for name, code in _SPLIT_CODE.items()},
            "classes": len(self.index.class_names),
            "groups": 0 if self.index.group_names is None else len(self.index.group_names),
            "sha256": self.data_sha256}

  def split(self, split: str) -> BiasedDataset:
    """One split (``train``, ``valid`` or ``test``) as :func:`load_own` returns it."""
    return self._split(split, stacklevel=3)

  def _split(self, split: str, stacklevel: int) -> BiasedDataset:
    """:meth:`split`; a held-out test split's warning points ``stacklevel`` frames up."""
    _check_split(split)
    if split == "test" and self.origin["test"] != "the data":
      warnings.warn(f"{self.spec.text} has no test split: "
                    f"{int((self.codes == 2).sum())} images were held out of the training data, "
                    "so the test set is as biased as the training data; give a test split for "
                    "unbiased numbers", HeldOutTestWarning, stacklevel=stacklevel)
    return _dataset(self, split)


def content_sha256(index: readers.Index, source_sha256: str) -> str:
  """The digest of a dataset's content: every image byte read (``source_sha256``, from
  :func:`jaxdd.data.own.decoding.decode`), the labels, the groups, the data's own split
  column and the class and group names (image files by their path relative to the data's
  root). Where the data sit, file times and the options a run reads them with are not in it:
  the same data copied elsewhere have the same digest; a changed image or label, another."""
  h = hashlib.sha256(json.dumps({"source_sha256": source_sha256,
                                 "classes": list(index.class_names),
                                 "groups": None if index.group_names is None
                                 else list(index.group_names)}, sort_keys=True).encode())
  for name, column in (("labels", index.labels), ("groups", index.groups),
                       ("splits", index.splits)):
    h.update(name.encode())
    if column is not None:
      h.update(np.ascontiguousarray(column, dtype=np.int64).tobytes())
  return h.hexdigest()


def load_own(spec: DataSpec, *, split: str, seed: int = 0, cache: bool = True,
             progress=None) -> BiasedDataset:
  """One split of a user's dataset, as it is (:class:`OwnData` opens it for several).

  Args:
    spec: from :func:`jaxdd.data.own.parse`.
    split: ``train``, ``valid`` or ``test``.
    seed: the seed of the hold-outs of a missing valid or test split.
    cache: keep the decoded images in the cache (:func:`jaxdd.data.own.decoding.decode`).
    progress: as :func:`jaxdd.data.load`.

  Returns:
    A :class:`~jaxdd.data.card.BiasedDataset`: float32 images in [0, 1]; ``bias`` and
    ``aligned`` None when the split has no group labels. ``meta["kind"] == "own"``; the
    training split's meta records the normalisation (per-channel mean and std).

  Raises:
    ValueError, FileNotFoundError: bad input, one line naming the file or row and the fix.

  Example:
    >>> from jaxdd.data import own
    >>> ds = own.load_own(own.parse("folder:images"), split="train")   # doctest: +SKIP
  """
  _check_split(split)
  return OwnData(spec, seed=seed, cache=cache, progress=progress)._split(split, stacklevel=3)


def from_arrays(images, labels, *, split: str, groups=None, splits=None, seed: int = 0,
                class_names=None, aligned: str = "majority", valid_fraction: float = 0.1,
                test_fraction: float = 0.2, image_size: int | None = None) -> BiasedDataset:
  """One split of arrays you hold, as they are (the in-memory twin of ``npz:``).

  Args:
    images: (N, H, W[, C]) ``uint8`` or float in [0, 1].
    labels: (N,) integer class labels.
    split: ``train``, ``valid`` or ``test``.
    groups: optional (N,) integer group (bias) labels, -1 where unknown.
    splits: optional (N,) 0 train / 1 valid / 2 test (or the names); missing splits are held
      out as :func:`load_own` does.
    seed, aligned, valid_fraction, test_fraction, image_size: as the :class:`DataSpec` fields.
    class_names: names of the sorted distinct labels (default: the values).

  Returns:
    A :class:`~jaxdd.data.card.BiasedDataset` (``meta["kind"] == "own"``).

  Example:
    >>> x = np.random.default_rng(0).random((40, 8, 8, 3)).astype(np.float32)
    >>> ds = from_arrays(x, np.arange(40) % 4, split="train", splits=np.arange(40) % 5 == 4)
    >>> len(ds), ds.bias is None
    (24, True)
  """
  spec = DataSpec(kind="npz", path="<arrays>", aligned=aligned, valid_fraction=valid_fraction,
                  test_fraction=test_fraction, image_size=image_size)
  spec_lib.check(spec)
  index = arrays_lib.columns_index(spec, "arrays", images, labels, groups, splits,
                                   class_names=class_names)
  _check_split(split)
  return OwnData(spec, seed=seed, cache=False, index=index)._split(split, stacklevel=3)


def _dataset(opened: OwnData, split: str) -> BiasedDataset:
  """A split of an opened dataset: its rows, the decoded images, the groups and the card."""
  index, spec, codes, origin = opened.index, opened.spec, opened.codes, opened.origin
  images, record, seed = opened.images, opened.record, opened.seed
  rows = np.flatnonzero(codes == _SPLIT_CODE[split])
  labels = index.labels[rows].astype(np.int32)
  nc = len(index.class_names)
  groups = _split_groups(index, rows, split, spec)
  x = _as_float(images, rows)
  meta = {"kind": "own", "name": index.source_id, "split": split, "spec": spec.to_dict(),
          "source": index.source_id, "source_sha256": record["source_sha256"],
          "data_sha256": opened.data_sha256, "seed": seed,
          "num_samples": int(len(rows)), "image_shape": list(x.shape[1:]),
          "split_origin": origin[split], "aligned_rule": spec.aligned}
  if split == "train":
    mean, std = channel_stats(x)
    meta.update(mean=mean.tolist(), std=std.tolist())
  if groups is None:
    counts = np.bincount(labels, minlength=nc).reshape(nc, 1)
    card = DatasetCard(counts, index.class_names, (), meta)
    return BiasedDataset(x, labels, None, None, index.class_names, (), card, meta,
                         {"status": record["status"]})
  ng = len(index.group_names)
  train_rows = codes == 0
  pool = train_rows if _split_groups(index, np.flatnonzero(train_rows), "train", spec) \
      is not None else np.ones(len(index), bool)
  aligned_groups = _aligned_groups(index.labels[pool], index.groups[pool], nc, ng, spec.aligned)
  counts = np.zeros((nc, ng), np.int64)
  np.add.at(counts, (labels, groups), 1)
  card = DatasetCard(counts, index.class_names, index.group_names, meta, aligned_groups)
  aligned = groups == np.asarray(aligned_groups)[labels]
  return BiasedDataset(x, labels, groups.astype(np.int32), aligned, index.class_names,
                       index.group_names, card, meta, {"status": record["status"]})
