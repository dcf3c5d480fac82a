"""Tests for the jaxdd TFDS builders (array_record, no TensorFlow, no download)."""
from __future__ import annotations

import numpy as np
import pytest
tfds = pytest.importorskip("tensorflow_datasets")

from jaxdd import data
from jaxdd.data import tfds_builders as tb


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
  assert set(first) == {"image", "label", "bias", "aligned"}
  assert len(source) == 40
  builder = tfds.builder(ref, data_dir=tmp_path / "tfds")
  assert builder.info.features["bias"].names == list(data.COLOUR_NAMES)
  assert builder.info.metadata["train"]["source_sha256"] == src.checksum()


def test_round_trip_bffhq_folder(tmp_path):
  from PIL import Image
  root = tmp_path / "bffhq"
  rng = np.random.default_rng(0)
  specs = [("0.5pct/align", 0, 0), ("0.5pct/align", 1, 1), ("0.5pct/conflict", 0, 1),
           ("valid", 1, 0), ("test", 0, 1), ("test", 1, 1)]
  for i, (d, t, b) in enumerate(specs):
    (root / d).mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(
        root / d / f"{i:03d}_{t}_{b}.png")
  ref = tb.prepare("bffhq", conflict_ratio=0.005, source=root, image_size=8,
                   data_dir=tmp_path / "tfds")
  assert "severitynone" in ref and "size8" in ref
  for split, n in (("train", 3), ("valid", 1), ("test", 1)):
    arrays = tb.read(ref, split=split, data_dir=tmp_path / "tfds")
    ds = data.load("bffhq", split=split, conflict_ratio=0.005, source=root, image_size=8)
    assert len(ds) == n and arrays["image"].tobytes() == ds.images.tobytes()
    np.testing.assert_array_equal(arrays["bias"], ds.bias)


def test_tfds_prepared_data_as_a_source(tmp_path):
  # A prepared jaxdd dataset has "image"/"label" features, so TfdsSource can read it:
  # this exercises the offline TFDS reading path end to end.
  src = tiny_source(shape=(8, 8))
  ref = tb.prepare("cmnist_dd", conflict_ratio=1.0, source=src, data_dir=tmp_path / "tfds")
  tsrc = data.TfdsSource(ref, data_dir=tmp_path / "tfds")
  x, y = tsrc.pool("train")
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


def test_cli_data_tfds_registered_config(tmp_path, capsys):
  from jaxdd import cli
  rc = cli.main(["data", "cmnist", "--conflict-ratio", "0.01", "--tfds-dir", str(tmp_path / "d")])
  assert rc == 0, capsys.readouterr().err
  assert "jaxdd_cmnist/ratio0.01_severity4_seed0" in capsys.readouterr().out
  src = tfds.data_source("jaxdd_cmnist/ratio0.01_severity4_seed0", data_dir=tmp_path / "d",
                         split="train", download=False)
  ds = data.load("cmnist", split="train", conflict_ratio=0.01)
  assert len(src) == len(ds) and int(src[3]["label"]) == int(ds.labels[3])
