"""Tests for the jaxdd TFDS builders (array_record, no TensorFlow, no download)."""
from __future__ import annotations

import logging

import numpy as np
import pytest
tfds = pytest.importorskip("tensorflow_datasets")

from jaxdd import data  # noqa: E402  (after the importorskip)
from jaxdd.data import tfds_builders as tb  # noqa: E402


def tiny_source(seed=0, n_train=100, n_test=40, shape=(8, 8)):
  rng = np.random.default_rng(seed)
  return data.ArraySource(rng.integers(0, 256, (n_train,) + shape, dtype=np.uint8),
                          np.arange(n_train) % 10,
                          rng.integers(0, 256, (n_test,) + shape, dtype=np.uint8),
                          np.arange(n_test) % 10)


def test_round_trip_equals_load(tmp_path):
  src = tiny_source()
  ref = data.prepare_tfds("cmnist", conflict_ratio=0.3, severity=2, seed=5, source=src,
                          data_dir=tmp_path / "tfds")
  assert ref.startswith("jaxdd_cmnist/ratio0.3_severity2_seed5_src")
  for split in ("train", "valid", "test"):
    arrays = tb.read(ref, split=split, data_dir=tmp_path / "tfds")
    ds = data.load("cmnist", split=split, conflict_ratio=0.3, severity=2, seed=5, source=src)
    assert arrays["image"].dtype == np.float32
    assert arrays["image"].tobytes() == ds.images.tobytes()  # exact, same order
    np.testing.assert_array_equal(arrays["label"], ds.labels)
    np.testing.assert_array_equal(arrays["bias"], ds.bias)
    np.testing.assert_array_equal(arrays["aligned"], ds.aligned)
  # Plain tfds.data_source works too (the config is read from the files).
  source = tfds.data_source(ref, data_dir=tmp_path / "tfds", split="test", download=False)
  first = source[0]
  assert set(first) == {"image", "image_float", "label", "bias", "aligned"}
  assert first["image"].dtype == np.uint8 and first["image"].shape == (8, 8, 3)
  assert len(source) == 40
  builder = tfds.builder(ref, data_dir=tmp_path / "tfds")
  assert builder.info.features["bias"].names == list(data.COLOUR_NAMES)
  assert builder.info.metadata["train"]["source_sha256"] == src.checksum()


def test_prepare_leaves_no_temporary_folder(tmp_path, monkeypatch):
  # TFDS's own DatasetInfo makes tempfile.mkdtemp("tfds") for GCS metadata and leaves it
  # behind, empty, whenever the dataset is not prepared yet; jaxdd's never asks GCS.
  import tempfile
  scratch = tmp_path / "tmp"
  scratch.mkdir()
  monkeypatch.setattr(tempfile, "tempdir", str(scratch))
  data.prepare_tfds("cmnist", conflict_ratio=0.3, severity=2, seed=6, source=tiny_source(),
                    data_dir=tmp_path / "tfds")
  assert sorted(p.name for p in scratch.iterdir()) == []


def test_round_trip_bffhq_folder(tmp_path, bffhq_folder):
  root = bffhq_folder
  ref = tb.prepare("bffhq", conflict_ratio=0.005, source=root, image_size=8,
                   data_dir=tmp_path / "tfds")
  assert "severitynone" in ref and "size8" in ref
  for split, n in (("train", 3), ("valid", 1), ("test", 1)):
    arrays = tb.read(ref, split=split, data_dir=tmp_path / "tfds")
    ds = data.load("bffhq", split=split, conflict_ratio=0.005, source=root, image_size=8)
    assert len(ds) == n and arrays["image"].tobytes() == ds.images.tobytes()
    np.testing.assert_array_equal(arrays["bias"], ds.bias)
    # Folder images are uint8 to begin with: the stored uint8 image is the
    # source's own pixels (read independently of load), not just a rendering.
    raw, _, _ = data.ImageFolderSource(root).read_split(split, 0.005, 8)
    np.testing.assert_array_equal(arrays["image_uint8"], raw)


def _reference_uint8(images):
  # Independent of tb.to_uint8: Python's round() (half to even) per value, in float64.
  flat = [min(255, max(0, round(float(v) * 255))) for v in np.asarray(images).ravel()]
  return np.asarray(flat, np.uint8).reshape(np.shape(images))


def test_uint8_image_feature_and_exact_float(tmp_path):
  src = tiny_source(seed=1, n_train=60, n_test=20, shape=(6, 6))
  kw = dict(conflict_ratio=0.2, severity=3, seed=2, source=src)
  ref = tb.prepare("cmnist", data_dir=tmp_path / "tfds", **kw)
  builder = tfds.builder(ref, data_dir=tmp_path / "tfds")
  features = builder.info.features
  assert isinstance(features["image"], tfds.features.Image)
  assert features["image"].np_dtype == np.uint8 and features["image"].shape == (6, 6, 3)
  assert isinstance(features["image_float"], tfds.features.Tensor)
  assert features["image_float"].np_dtype == np.float32
  assert str(builder.info.version) == "1.1.0" and "1.1.0" in builder.RELEASE_NOTES
  # TFDS' image tooling (show_examples, as_dataframe) finds exactly one Image feature.
  from tensorflow_datasets.core.visualization import image_visualizer
  assert image_visualizer.ImageGridVisualizer().match(builder.info)
  for split in ("train", "test"):
    ds = data.load("cmnist", split=split, **kw)
    # plain TFDS, no jaxdd reader: uint8 image, exact float, labels/bias/aligned
    rows = tfds.data_source(ref, data_dir=tmp_path / "tfds", split=split, download=False)
    rows = [rows[i] for i in range(len(rows))]
    u8 = np.stack([r["image"] for r in rows])
    exact = np.stack([r["image_float"] for r in rows])
    assert u8.dtype == np.uint8 and exact.dtype == np.float32
    np.testing.assert_array_equal(u8, _reference_uint8(ds.images))
    assert exact.tobytes() == ds.images.tobytes()
    # the float data are not k/255, so the exact feature is needed
    assert not np.array_equal(u8.astype(np.float32) / 255, ds.images)
    np.testing.assert_array_equal([int(r["label"]) for r in rows], ds.labels)
    np.testing.assert_array_equal([int(r["bias"]) for r in rows], ds.bias)
    np.testing.assert_array_equal([bool(r["aligned"]) for r in rows], ds.aligned)
    # jaxdd's reader returns the exact floats and the same uint8
    arrays = tb.read(ref, split=split, data_dir=tmp_path / "tfds")
    assert arrays["image"].dtype == np.float32 and arrays["image"].tobytes() == ds.images.tobytes()
    np.testing.assert_array_equal(arrays["image_uint8"], u8)
    # and so does TfdsSource (it reads image_float, not the uint8 rendering)
    x, _ = data.TfdsSource(ref, data_dir=tmp_path / "tfds").pool(split)
    assert x.dtype == np.float32 and x.tobytes() == ds.images.tobytes()


def test_to_uint8_rounds_half_to_even_and_clips():
  x = np.array([0.0, 0.5 / 255, 1.5 / 255, 0.5, 1.0, -0.1, 1.2], np.float64)
  np.testing.assert_array_equal(tb.to_uint8(x), _reference_uint8(x))
  assert tb.to_uint8(x).tolist() == [0, 0, 2, 128, 255, 0, 255]


def test_tfds_prepared_data_as_a_source(tmp_path, caplog, monkeypatch):
  # A prepared jaxdd dataset has "image"/"label" features, so TfdsSource can read it:
  # this exercises the offline TFDS reading path end to end.
  src = tiny_source(shape=(8, 8))
  ref = tb.prepare("cmnist_dd", conflict_ratio=1.0, source=src, data_dir=tmp_path / "tfds")
  tsrc = data.TfdsSource(ref, data_dir=tmp_path / "tfds")
  # Reading reports progress for big splits (threshold lowered to 50 here: the
  # prepared train split has 90 images, its test split 40, which stays silent).
  from jaxdd import progress
  from jaxdd.data import sources
  monkeypatch.setitem(sources.PROGRESS_MIN_IMAGES, "tfds", 50)
  monkeypatch.setattr(progress, "interactive", lambda: False)
  with caplog.at_level(logging.INFO, logger="jaxdd"):
    x, y = tsrc.pool("train")
  lines = [r.getMessage() for r in caplog.records if r.name == "jaxdd"]
  assert len(lines) == 1 and lines[0].startswith(f"tfds:{ref} train: reading: 90/90 img (100%)")
  ds = data.load("cmnist_dd", split="train", conflict_ratio=1.0, source=src)
  np.testing.assert_array_equal(x, ds.images)
  np.testing.assert_array_equal(y, ds.labels)
  out = data.load("cifar10c_type1", split="test", conflict_ratio=0.5, source=tsrc, severity=1)
  assert out.images.shape == (40, 8, 8, 3) and out.meta["source"] == f"tfds:{ref}"


def test_config_names_and_registration():
  assert tb.config_name("cmnist", conflict_ratio=0.05) == "ratio0.05_severity4_seed0"
  assert tb.config_name("cmnist_dd", conflict_ratio=0.95, severity=2, seed=3) == \
      "ratio0.95_severity2_seed3"
  assert tb.config_name("cmnist", conflict_ratio=0.05, valid_fraction=0.2).endswith("_valid0.2")
  with pytest.raises(ValueError, match="severity"):
    tb.config_name("cmnist", conflict_ratio=0.05, severity=9)
  cls = tfds.builder_cls("jaxdd_cmnist")
  assert [c.name for c in cls.BUILDER_CONFIGS] == [
      "ratio0.005_severity4_seed0", "ratio0.01_severity4_seed0", "ratio0.02_severity4_seed0",
      "ratio0.05_severity4_seed0"]
  assert len(tfds.builder_cls("jaxdd_ccifar10_dd").BUILDER_CONFIGS) == 6
  for name in ("jaxdd_bg_fmnist", "jaxdd_cifar10c", "jaxdd_cifar10c_type1", "jaxdd_bffhq"):
    assert tfds.builder_cls(name).name == name


def test_prepare_bad_input_writes_nothing(tmp_path):
  with pytest.raises(ValueError, match="unknown dataset"):
    tb.prepare("mnist", conflict_ratio=0.05, data_dir=tmp_path / "tfds")
  with pytest.raises(FileNotFoundError, match="ArraySource"):
    tb.prepare("cifar10c", conflict_ratio=0.05, data_dir=tmp_path / "tfds")
  with pytest.raises(ValueError, match=r"\(0, 1\)"):
    tb.prepare("cmnist", conflict_ratio=2.0, source=tiny_source(), data_dir=tmp_path / "tfds")
  assert not (tmp_path / "tfds").exists() or not list((tmp_path / "tfds").rglob("*.array_record*"))


@pytest.mark.parametrize("ratio", [0.05])
def test_prepare_registered_config_default_source(tmp_path, ratio):
  # The README's command: a published ratio with the offline default source
  # (the embedded MNIST digits, nothing is downloaded). TFDS refuses a custom
  # config named like a registered one, so this path must use the registered config.
  ref = data.prepare_tfds("cmnist", conflict_ratio=ratio, data_dir=tmp_path / "tfds")
  assert ref == f"jaxdd_cmnist/ratio{ratio}_severity4_seed0"
  assert ref.split("/")[1] in [c.name for c in tfds.builder_cls("jaxdd_cmnist").BUILDER_CONFIGS]
  arrays = tb.read(ref, split="test", data_dir=tmp_path / "tfds")
  ds = data.load("cmnist", split="test", conflict_ratio=ratio)
  assert arrays["image"].tobytes() == ds.images.tobytes()
  np.testing.assert_array_equal(arrays["bias"], ds.bias)
  # The same registered config through TFDS' own entry point, and again through
  # prepare (already prepared: nothing to do, same reference).
  builder = tfds.builder(ref, data_dir=tmp_path / "tfds")
  assert builder.info.splits["test"].num_examples == len(ds)
  assert data.prepare_tfds("cmnist", conflict_ratio=ratio, data_dir=tmp_path / "tfds") == ref


@pytest.mark.slow  # the same registered-config path as the README's command above, via the CLI
def test_cli_data_tfds_registered_config(tmp_path, capsys):
  from jaxdd import cli
  rc = cli.main(["data", "cmnist", "--conflict-ratio", "0.01", "--tfds-dir", str(tmp_path / "d")])
  assert rc == 0, capsys.readouterr().err
  assert "jaxdd_cmnist/ratio0.01_severity4_seed0" in capsys.readouterr().out
  src = tfds.data_source("jaxdd_cmnist/ratio0.01_severity4_seed0", data_dir=tmp_path / "d",
                         split="train", download=False)
  ds = data.load("cmnist", split="train", conflict_ratio=0.01)
  assert len(src) == len(ds) and int(src[3]["label"]) == int(ds.labels[3])
