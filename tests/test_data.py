"""Tests for jaxdd.data: bias protocols, splits, determinism, card, helpers.

References used: hand-computed constants (the conflicting counts of LfF's rule on
the full MNIST, Fashion-MNIST- and CIFAR-sized label arrays, Biased-DD's aligned
counts), a naive per-sample loop of LfF's make_attr_labels, and pixel-level
properties that must hold.
"""
from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from jaxdd import data
from jaxdd.data import biased, corruptions, sources
from jaxdd.structs import Batch

# Real MNIST train-set class sizes (torchvision/TFDS mnist), a published fact.
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]

# LfF's palette (colors.th), as listed in docs/datasets.md, "The palettes".
PALETTE_TABLE = np.array([
    [0.9837, 0.3125, 0.1686], [0.9905, 0.9156, 0.3515], [0.6730, 0.4611, 0.5798],
    [0.7833, 0.8316, 0.6013], [0.0880, 0.7780, 0.9818], [0.3214, 0.9611, 0.4464],
    [0.0246, 0.2357, 0.7587], [0.5552, 0.1016, 0.7618], [0.2077, 0.3929, 0.0187],
    [0.8337, 0.2024, 0.2669]])


def lff_reference(labels, aligned_ratio, k=10):
  """Naive per-sample transcription of LfF's make_attr_labels."""
  labels = np.asarray(labels)
  counts = np.array([np.sum(labels == c) for c in range(k)])
  ratios = aligned_ratio * np.eye(k) + (1 - aligned_ratio) / (k - 1) * (1 - np.eye(k))
  milestones = (counts[:, None] * np.cumsum(ratios, axis=1)).round()
  attr = np.zeros_like(labels)
  for c in range(k):
    for j, idx in enumerate(np.flatnonzero(labels == c)):
      attr[idx] = np.min(np.nonzero(milestones[c] > j)[0])
  return attr


def table(labels, attrs, k=10):
  return np.bincount(np.asarray(labels) * k + np.asarray(attrs), minlength=k * k).reshape(k, k)


@pytest.fixture(scope="module")
def mnist_pool():
  return sources.MnistCsvSource().pool("train")


# ----------------------------------------------------------------------------
# make_attr_labels
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("rho,expected", [(0.005, 300), (0.01, 598), (0.02, 1199), (0.05, 3000)])
def test_attr_labels_reproduce_lff_mnist_table(rho, expected):
  # Conflicting counts of the full MNIST training set.
  y = np.repeat(np.arange(10), MNIST_TRAIN_COUNTS)
  b = data.make_attr_labels(y, aligned_ratio=1.0 - rho)
  assert int((b != y).sum()) == expected
  assert int((b == y).sum()) == 60000 - expected


def test_attr_labels_class0_at_5pct_matches_table():
  y = np.repeat(np.arange(10), MNIST_TRAIN_COUNTS)
  b = data.make_attr_labels(y, aligned_ratio=1.0 - 0.05)
  # "class 0 at 5 % = 5,627 aligned + about 33 per other color".
  assert table(y, b)[0].tolist() == [5627, 33, 33, 33, 32, 33, 33, 33, 33, 33]


@pytest.mark.parametrize("rho,expected", [(0.005, 300), (0.01, 600), (0.02, 1200), (0.05, 3000)])
def test_attr_labels_6000_per_class(rho, expected):
  # Fashion-MNIST-sized label arrays: 6000 per class.
  y = np.repeat(np.arange(10), 6000)
  b = data.make_attr_labels(y, aligned_ratio=1.0 - rho)
  assert int((b != y).sum()) == expected


@pytest.mark.parametrize("rho,expected", [(0.005, 250), (0.01, 500), (0.02, 1000), (0.05, 2500)])
def test_attr_labels_cifar_table(rho, expected):
  y = np.repeat(np.arange(10), 5000)  # CIFAR-10-sized: 5000 per class
  b = data.make_attr_labels(y, aligned_ratio=1.0 - rho)
  assert int((b != y).sum()) == expected
  if rho == 0.05:
    t = table(y, b)
    off = t[~np.eye(10, dtype=bool)]
    assert off.min() == 27 and off.max() == 28


@pytest.mark.parametrize("aligned,expected", [(0.0, 0), (0.1, 5999), (0.5, 30000), (0.8, 47999),
                                              (0.95, 57000), (1.0, 60000)])
def test_attr_labels_biased_dd_aligned_counts(aligned, expected):
  y = np.repeat(np.arange(10), MNIST_TRAIN_COUNTS)
  b = data.make_attr_labels(y, aligned_ratio=aligned)
  assert int((b == y).sum()) == expected


@pytest.mark.parametrize("aligned", [0.0, 0.1, 0.37, 0.95, 0.995, 1.0])
def test_attr_labels_equal_naive_lff_loop_in_index_order(aligned):
  rng = np.random.default_rng(0)
  y = rng.integers(0, 10, 700)  # interleaved classes, uneven sizes
  b = data.make_attr_labels(y, aligned_ratio=aligned)
  assert b.dtype == np.int32
  np.testing.assert_array_equal(b, lff_reference(y, aligned))
  # Blocks are consecutive in index order: bias is non-decreasing within a class.
  for c in range(10):
    assert np.all(np.diff(b[y == c]) >= 0)


def test_attr_labels_bad_input():
  with pytest.raises(ValueError, match="aligned_ratio"):
    data.make_attr_labels([0, 1], aligned_ratio=1.5)
  with pytest.raises(ValueError, match=r"\[0, 10\)"):
    data.make_attr_labels([0, 11], aligned_ratio=0.5)
  with pytest.raises(ValueError, match="1-D"):
    data.make_attr_labels(np.zeros((2, 2), int), aligned_ratio=0.5)


# ----------------------------------------------------------------------------
# Exact per-class counts of built datasets.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("rho", [0.005, 0.01, 0.02, 0.05])
def test_cmnist_train_counts_per_class(rho):
  ds = data.load("cmnist", split="train", conflict_ratio=rho)
  assert ds.images.shape == (3600, 28, 28, 3) and ds.images.dtype == np.float32
  assert ds.labels.dtype == np.int32 and ds.bias.dtype == np.int32 and ds.aligned.dtype == bool
  np.testing.assert_array_equal(ds.aligned, ds.bias == ds.labels)
  np.testing.assert_array_equal(ds.bias, lff_reference(ds.labels, 1.0 - rho))
  np.testing.assert_array_equal(ds.card.counts, table(ds.labels, ds.bias))
  assert ds.card.counts.sum(1).tolist() == [360] * 10
  # Hand-computed: 3600 * rho conflicting in total; at 5 % exactly 360 * 0.05 / 9 = 2
  # per colour, i.e. 18 per class.
  assert int(ds.card.conflicting_per_class.sum()) == round(3600 * rho)
  assert ds.card.conflicting_per_class.tolist() == lff_conflicts_per_class(ds.labels, 1.0 - rho)
  assert ds.card.conflicting_per_class.min() >= 1
  if rho == 0.05:
    assert ds.card.counts[~np.eye(10, dtype=bool)].tolist() == [2] * 90
  assert ds.meta["ratio"] == rho and ds.meta["severity"] == 4 and ds.meta["noise_std"] == 0.005


def test_cmnist_test_split_is_lff_unbiased():
  ds = data.load("cmnist", split="test", conflict_ratio=0.02)
  # 100 test digits per class, aligned ratio 0.1 -> exactly 10 per colour.
  assert ds.card.counts.tolist() == [[10] * 10] * 10
  ds2 = data.load("cmnist", split="test", conflict_ratio=0.05)
  np.testing.assert_array_equal(ds.images, ds2.images)  # independent of the ratio


@pytest.mark.parametrize("ratio", [0.0, 0.1, 0.5, 0.8, 0.95, 1.0])
def test_cmnist_dd_ratio_is_aligned_fraction(ratio):
  ds = data.load("cmnist_dd", split="train", conflict_ratio=ratio)
  np.testing.assert_array_equal(ds.bias, lff_reference(ds.labels, ratio))
  aligned = {0.0: 0, 0.1: 36, 0.5: 180, 0.8: 288, 0.95: 342, 1.0: 360}[ratio]
  assert ds.card.aligned_per_class.tolist() == [aligned] * 10
  if ratio == 0.1:  # the uniform (truly unbiased) training set
    assert ds.card.counts.tolist() == [[36] * 10] * 10
  assert ds.meta["ratio_semantics"].startswith("aligned fraction")


def test_cmnist_dd_test_split_all_conflicting():
  ds = data.load("cmnist_dd", split="test", conflict_ratio=0.95)
  assert not ds.aligned.any()
  counts = ds.card.counts
  assert np.all(np.diagonal(counts) == 0)
  off = counts[~np.eye(10, dtype=bool)]
  assert off.min() >= 11 and off.max() <= 12  # 100 per class over 9 colours


def test_valid_split_is_disjoint_and_complements_train(mnist_pool):
  tr = data.load("cmnist", split="train", conflict_ratio=0.05)
  va = data.load("cmnist", split="valid", conflict_ratio=0.05)
  te = data.load("cmnist", split="test", conflict_ratio=0.05)
  assert va.card.counts.sum(1).tolist() == [40] * 10
  assert va.card.conflicting_per_class.tolist() == lff_conflicts_per_class(va.labels, 0.95)

  def masks(x):
    return {m.tobytes() for m in (x.sum(-1) > 0)}

  mt, mv, ms = masks(tr.images), masks(va.images), masks(te.images)
  assert len(mt) == 3600 and len(mv) == 400 and len(ms) == 1000
  assert not (mt & mv) and not (mt & ms) and not (mv & ms)
  pool_x, _ = mnist_pool
  assert mt | mv == {m.tobytes() for m in (pool_x > 0)}


def lff_conflicts_per_class(labels, aligned):
  b = lff_reference(labels, aligned)
  return [int(((b != labels) & (labels == c)).sum()) for c in range(10)]


def test_valid_fraction_zero_keeps_whole_pool():
  ds = data.load("cmnist", split="train", conflict_ratio=0.05, valid_fraction=0.0)
  assert len(ds) == 4000
  with pytest.raises(ValueError, match="valid_fraction"):
    data.load("cmnist", split="valid", conflict_ratio=0.05, valid_fraction=0.0)


# ----------------------------------------------------------------------------
# Colour protocol.
# ----------------------------------------------------------------------------


def test_palette_is_the_lff_table():
  np.testing.assert_allclose(data.PALETTE, PALETTE_TABLE, atol=1e-7)
  assert data.LFF_COLOUR_STD == (0.05, 0.02, 0.01, 0.005, 0.002)


def _stroke_colours(images, gray):
  """Per-image colour: images = gray * colour exactly, so sum ratios recover it."""
  return images.sum((1, 2)) / gray.sum((1, 2))[:, None]


def test_cmnist_stroke_colour_and_black_background(mnist_pool):
  x, y = mnist_pool
  ds = data.from_arrays("cmnist", x, y, conflict_ratio=0.05)
  gray = x.astype(np.float32) / 255
  np.testing.assert_array_equal(ds.images[gray == 0], 0.0)  # background stays black
  col = _stroke_colours(ds.images, gray)
  dev = np.abs(col - PALETTE_TABLE[ds.bias])
  assert dev.max() < 5 * 0.005 + 1e-4  # within the noise of severity 4
  nearest = np.argmin(((col[:, None, :] - PALETTE_TABLE[None]) ** 2).sum(-1), axis=1)
  np.testing.assert_array_equal(nearest, ds.bias)
  assert np.all(nearest[ds.aligned] == ds.labels[ds.aligned])
  assert np.all(nearest[~ds.aligned] != ds.labels[~ds.aligned])
  # Pixel-level: every stroke pixel is gray * (the image's colour). The colour is read back
  # from the image by a division, so both sides carry a few float32 ulps of values <= 1;
  # 1e-5 (~80 ulps) is far below the colour noise (5e-3) the test is about.
  np.testing.assert_allclose(ds.images, gray[..., None] * col[:, None, None, :], atol=1e-5)


@pytest.mark.parametrize("severity", [1, 2, 3, 4, 5])
def test_colour_noise_std_by_severity(mnist_pool, severity):
  x, y = mnist_pool
  ds = data.from_arrays("cmnist", x, y, conflict_ratio=0.05, severity=severity, seed=3)
  std = [0.05, 0.02, 0.01, 0.005, 0.002][severity - 1]
  eps = _stroke_colours(ds.images, x.astype(np.float32) / 255) - PALETTE_TABLE[ds.bias]
  # Only channels whose palette value is >= 4 std from 0 and 1 (no clamping).
  base = PALETTE_TABLE[ds.bias]
  keep = (base > 4 * std) & (base < 1 - 4 * std)
  e = eps[keep]
  assert abs(e.std() / std - 1) < 0.1, e.std()
  assert abs(e.mean()) < 5 * std / np.sqrt(e.size)


def test_biased_dd_severity_table():
  assert data.BIASED_DD_COLOUR_STD == (0.05, 0.02, 0.01, 0.005)
  x = np.full((10, 8, 8), 255, np.uint8)
  for sev in (1, 4):
    ds = data.from_arrays("cmnist_dd", x, np.arange(10), conflict_ratio=1.0, severity=sev)
    assert ds.meta["noise_std"] == [0.05, 0.02, 0.01, 0.005][sev - 1]
  with pytest.raises(ValueError, match="severity"):
    data.from_arrays("cmnist_dd", x, np.arange(10), conflict_ratio=1.0, severity=5)


def test_colorize_foreground_accepts_user_formats(getkey):
  rng = np.random.default_rng(1)
  x8 = rng.integers(0, 256, (6, 5, 7), dtype=np.uint8)
  key = getkey()
  a = data.colorize_foreground(key, x8, np.arange(6), std=0.01)
  b = data.colorize_foreground(key, x8[..., None], np.arange(6), std=0.01)
  c = data.colorize_foreground(key, x8.astype(np.float32) / 255, np.arange(6), std=0.01)
  np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(a, c)
  assert a.shape == (6, 5, 7, 3) and a.dtype == np.float32
  # std=0 and explicit RGB colours: exactly gray * rgb.
  rgb = rng.random((6, 3)).astype(np.float32)
  d = data.colorize_foreground(key, x8, rgb, std=0.0)
  np.testing.assert_array_equal(d, (x8.astype(np.float32) / 255)[..., None] * rgb[:, None, None])
  with pytest.raises(ValueError, match="1 channels"):
    data.colorize_foreground(key, rng.random((2, 4, 4, 3)), [0, 1], std=0.0)
  with pytest.raises(ValueError, match=r"\[0, 1\]"):
    data.colorize_foreground(key, np.full((2, 4, 4), 2.0), [0, 1], std=0.0)
  with pytest.raises(ValueError, match="typed PRNG key"):
    data.colorize_foreground(0, x8, np.arange(6), std=0.0)


def test_colorize_background_constructed(getkey):
  x = np.zeros((3, 6, 6), np.uint8)
  x[:, 2:4, 2:4] = [[10, 200], [255, 1]]
  out = data.colorize_background(getkey(), x, np.array([0, 4, 9]), std=0.0)
  fg = x > 0
  np.testing.assert_array_equal(out[fg], np.repeat((x[fg].astype(np.float32) / 255)[:, None], 3, 1))
  for i, c in enumerate([0, 4, 9]):
    np.testing.assert_array_equal(out[i][~fg[i]], np.broadcast_to(data.PALETTE[c], (32, 3)))
  # RGB input keeps its colours; background = all channels 0.
  rgb = np.zeros((1, 4, 4, 3), np.float32)
  rgb[0, 0, 0] = [0.5, 0.0, 0.0]
  o = data.colorize_background(getkey(), rgb, np.array([2]), std=0.0)
  np.testing.assert_array_equal(o[0, 0, 0], [0.5, 0.0, 0.0])
  np.testing.assert_array_equal(o[0, 1, 1], data.PALETTE[2])


def test_bg_fmnist_real_debian_test_split():
  ds = data.load("bg_fmnist", split="test", conflict_ratio=0.05, cache=False)
  x, y = sources.IdxSource().pool("test")  # the test split is the whole t10k file, in order
  np.testing.assert_array_equal(ds.labels, y)
  assert ds.card.counts.tolist() == [[100] * 10] * 10  # 1000 per class, aligned ratio 0.1
  gray = x.astype(np.float32) / 255
  fg = gray > 0
  # Foreground: the grey intensity on all three channels, untouched.
  np.testing.assert_array_equal(ds.images[fg], np.repeat(gray[fg][:, None], 3, axis=1))
  # Background: one colour per image, within the severity-4 noise of palette[bias].
  idx = np.arange(0, 10000, 97)
  for i in idx:
    bg = ds.images[i][~fg[i]]
    assert np.all(bg == bg[0])
    assert np.abs(bg[0] - PALETTE_TABLE[ds.bias[i]]).max() < 5 * 0.005 + 1e-4
  assert ds.meta["source"] == "idx:fashion-mnist"


# ----------------------------------------------------------------------------
# Determinism.
# ----------------------------------------------------------------------------


def test_same_args_byte_identical_and_seed_changes_noise():
  a = data.load("cmnist", split="train", conflict_ratio=0.01, cache=False)
  b = data.load("cmnist", split="train", conflict_ratio=0.01, cache=False)
  for k in ("images", "labels", "bias", "aligned"):
    assert getattr(a, k).tobytes() == getattr(b, k).tobytes()
  assert a.meta == b.meta
  c = data.load("cmnist", split="train", conflict_ratio=0.01, seed=1, cache=False)
  np.testing.assert_array_equal(a.bias, c.bias)  # assignment is deterministic, seed-free
  assert not np.array_equal(a.images, c.images)
  # Every image's noise differs (not a shared offset).
  diff = np.abs(a.images - c.images).reshape(len(a), -1).max(1)
  assert np.all(diff > 0)


def test_splits_use_different_noise_streams(mnist_pool):
  x, y = mnist_pool
  tr = data.from_arrays("cmnist", x[:100], y[:100] * 0, conflict_ratio=0.5, split="train")
  va = data.from_arrays("cmnist", x[:100], y[:100] * 0, conflict_ratio=0.5, split="valid")
  np.testing.assert_array_equal(tr.bias, va.bias)
  assert not np.array_equal(tr.images, va.images)


# ----------------------------------------------------------------------------
# Corrupted CIFAR-10 through user arrays.
# ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_cifar():
  rng = np.random.default_rng(7)
  xtr = rng.integers(0, 256, (200, 32, 32, 3), dtype=np.uint8)
  ytr = np.repeat(np.arange(10), 20)
  xte = rng.integers(0, 256, (50, 32, 32, 3), dtype=np.uint8)
  yte = np.repeat(np.arange(10), 5)
  return data.ArraySource(xtr, ytr, xte, yte)


def test_corrupt_lists_match_corruptions_module():
  assert biased.CORRUPTIONS_TYPE0 == tuple(corruptions.TYPE0)
  assert biased.CORRUPTIONS_TYPE1 == tuple(corruptions.TYPE1)


def test_cifar10c_aligned_samples_carry_their_corruption(tiny_cifar):
  ds = data.load("cifar10c", split="train", conflict_ratio=0.05, source=tiny_cifar,
                 valid_fraction=0.0)
  xtr, ytr = tiny_cifar.pool("train")
  x = xtr.astype(np.float32) / 255
  assert ds.meta["corruption_level"] == 5 and ds.meta["corruption_type"] == "type0"
  assert ds.card.conflicting_per_class.tolist() == lff_conflicts_per_class(ytr, 0.95)
  key = jax.random.fold_in(jax.random.key(0), 0)
  for k, name in enumerate(corruptions.TYPE0):
    sel = ds.bias == k
    want = corruptions.corrupt(jax.random.fold_in(key, k), x[sel], name, severity=5)
    np.testing.assert_array_equal(ds.images[sel], want)
  # Key-free checks of the severity offset (severity 4 -> Hendrycks level 5) on
  # deterministic corruptions: class 4 = contrast, class 3 = brightness.
  for k, name in ((4, "contrast"), (3, "brightness")):
    sel = ds.aligned & (ds.labels == k)
    lvl5 = corruptions.corrupt(jax.random.key(99), x[sel], name, severity=5)
    lvl4 = corruptions.corrupt(jax.random.key(99), x[sel], name, severity=4)
    np.testing.assert_array_equal(ds.images[sel], lvl5)
    assert not np.array_equal(ds.images[sel], lvl4)


def test_cifar10c_type1_original_is_clean(tiny_cifar):
  ds = data.load("cifar10c_type1", split="test", conflict_ratio=0.05, source=tiny_cifar,
                 severity=1)
  xte, yte = tiny_cifar.pool("test")
  sel = ds.bias == 9  # "original"
  np.testing.assert_array_equal(ds.images[sel], xte[sel].astype(np.float32) / 255)
  assert ds.meta["corruption_level"] == 2
  assert ds.card.counts.tolist() == table(yte, lff_reference(yte, 0.1)).tolist()


def test_ccifar10_dd_test_is_all_conflicting(tiny_cifar):
  ds = data.load("ccifar10_dd", split="test", conflict_ratio=0.8, source=tiny_cifar)
  assert not ds.aligned.any() and len(ds) == 50


def test_corrupted_fmnist_is_the_corruption_protocol_on_grey_fashion_mnist():
  spec = data.DATASETS["corrupted_fmnist"]
  assert spec.class_names[0] == "t-shirt/top" and spec.bias_names == biased.CORRUPTIONS_TYPE0
  assert data.DATASETS["corrupted_fmnist_type1"].bias_names == biased.CORRUPTIONS_TYPE1
  assert biased.resolve_source("corrupted_fmnist").id == "idx:fashion-mnist"
  rng = np.random.default_rng(3)
  xtr = rng.integers(0, 256, (200, 28, 28), dtype=np.uint8)  # grey, no channel axis
  ytr = np.repeat(np.arange(10), 20)
  src = data.ArraySource(xtr, ytr, xtr[:50], ytr[::4])
  ds = data.load("corrupted_fmnist", split="train", conflict_ratio=0.1, source=src,
                 valid_fraction=0.0, cache=False)
  assert ds.images.shape == (200, 28, 28, 3)
  assert ds.card.conflicting_per_class.tolist() == lff_conflicts_per_class(ytr, 0.9)
  assert ds.meta["corruption_level"] == 5 and ds.meta["corruption_type"] == "type0"
  grey = np.repeat(xtr[..., None].astype(np.float32) / 255, 3, axis=-1)
  key = jax.random.fold_in(jax.random.key(0), 0)  # seed 0, split train
  for k, name in enumerate(corruptions.TYPE0):
    sel = ds.bias == k
    want = np.clip(corruptions.corrupt(jax.random.fold_in(key, k), grey[sel], name, severity=5),
                   0, 1)
    np.testing.assert_array_equal(ds.images[sel], want)
  # Type1's last corruption is "original": those images stay the grey digits.
  t1 = data.load("corrupted_fmnist_type1", split="test", conflict_ratio=0.05, source=src,
                 cache=False)
  sel = t1.bias == 9
  np.testing.assert_array_equal(t1.images[sel], grey[:50][sel])


def test_corrupt_by_attribute_on_mnist_like_arrays(getkey):
  x = np.random.default_rng(0).integers(0, 256, (10, 12, 12), dtype=np.uint8)
  out = data.corrupt_by_attribute(getkey(), x, np.arange(10), corruption_type="type1", severity=3)
  assert out.shape == (10, 12, 12, 3) and out.dtype == np.float32
  np.testing.assert_array_equal(out[9], np.repeat(x[9, ..., None] / np.float32(255), 3, -1))
  assert 0.0 <= out.min() and out.max() <= 1.0
  with pytest.raises(ValueError, match="1..5"):
    data.corrupt_by_attribute(getkey(), x, np.arange(10), severity=6)


# ----------------------------------------------------------------------------
# BFFHQ image folder.
# ----------------------------------------------------------------------------


def _write_png(path, rgb, size=20):
  from PIL import Image
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(np.full((size, size, 3), rgb, np.uint8)).save(path)


@pytest.fixture
def bffhq_root(tmp_path):
  root = tmp_path / "bffhq"
  colours = {(0, 0): (200, 10, 10), (1, 1): (10, 200, 10), (0, 1): (10, 10, 200), (1, 0): (90, 90, 9)}
  i = 0
  for t in (0, 1):
    for _ in range(6):
      _write_png(root / "0.5pct" / "align" / str(t) / f"{i:05d}_{t}_{t}.png", colours[(t, t)])
      i += 1
  _write_png(root / "0.5pct" / "conflict" / "0" / f"{i:05d}_0_1.png", colours[(0, 1)])
  _write_png(root / "0.5pct" / "conflict" / "1" / f"{i + 1:05d}_1_0.png", colours[(1, 0)])
  for j, (t, b) in enumerate([(0, 0), (1, 1), (0, 1), (1, 0)]):
    _write_png(root / "valid" / f"{100 + j:05d}_{t}_{b}.png", colours[(t, b)])
    _write_png(root / "test" / f"{200 + j:05d}_{t}_{b}.png", colours[(t, b)])
  return root, colours


def test_bffhq_folder(bffhq_root):
  root, colours = bffhq_root
  tr = data.load("bffhq", split="train", conflict_ratio=0.005, source=root, image_size=16)
  assert tr.images.shape == (14, 16, 16, 3)
  assert tr.card.counts.tolist() == [[6, 1], [1, 6]]
  assert tr.class_names == ("young", "old") and tr.bias_names == ("female", "male")
  for img, t, b in zip(tr.images, tr.labels, tr.bias):
    # A solid image stays solid through the bilinear resize.
    np.testing.assert_allclose(img, np.broadcast_to(np.array(colours[(t, b)]) / 255, img.shape),
                               atol=1e-6)
  te = data.load("bffhq", split="test", conflict_ratio=0.005, source=root)
  assert te.images.shape == (2, 64, 64, 3)  # default size 64
  assert not te.aligned.any()  # conflicting only
  va = data.load("bffhq", split="valid", conflict_ratio=0.005, source=root)
  assert len(va) == 4 and va.aligned.sum() == 2


def test_bffhq_folder_errors(bffhq_root, tmp_path):
  root, _ = bffhq_root
  with pytest.raises(FileNotFoundError, match="0.5pct"):
    data.load("bffhq", split="train", conflict_ratio=0.01, source=root)
  with pytest.raises(ValueError, match="no severity"):
    data.load("bffhq", split="train", conflict_ratio=0.005, source=root, severity=4)
  with pytest.raises(FileNotFoundError, match="BFFHQ"):
    data.load("bffhq", split="train", conflict_ratio=0.005)
  _write_png(root / "0.5pct" / "align" / "0" / "99999_0_1.png", (1, 2, 3))
  with pytest.raises(ValueError, match="align"):
    data.load("bffhq", split="train", conflict_ratio=0.005, source=root)
  # Every call failed, so nothing may have been cached.
  cache = tmp_path / "cache"
  assert not cache.exists() or not [p for p in cache.rglob("*") if p.is_file()]


# ----------------------------------------------------------------------------
# Card and helpers.
# ----------------------------------------------------------------------------


def test_card_describe_and_json_roundtrip(tmp_path):
  ds = data.load("cmnist", split="train", conflict_ratio=0.05)
  text = str(ds)
  assert "cmnist [train]" in text and "3420 aligned" in text and "180 conflicting" in text
  assert ds.describe() == ds.card.describe() == text
  path = ds.card.save(tmp_path / "card.json")
  d = json.loads(path.read_text())
  assert d["aligned"] == 3420 and d["conflicting"] == 180
  assert d["meta"]["source_sha256"] == sources.MnistCsvSource().checksum()
  back = data.DatasetCard.from_dict(d)
  np.testing.assert_array_equal(back.counts, ds.card.counts)
  assert back.describe() == ds.card.describe()
  for k in ("name", "split", "ratio", "ratio_semantics", "severity", "seed", "source",
            "source_sha256"):
    assert k in ds.meta


def test_channel_stats_normalize_as_batch():
  rng = np.random.default_rng(0)
  x = rng.random((50, 4, 4, 3), dtype=np.float32)
  mean, std = data.channel_stats(x, chunk=7)
  # Chunked float32 sums of 800 values against numpy's pairwise sum: the summation
  # orders differ, each losing up to ~log2(n) ulps; 1e-5 is ~80 ulps.
  np.testing.assert_allclose(mean, x.reshape(-1, 3).mean(0), rtol=1e-5)
  np.testing.assert_allclose(std, x.reshape(-1, 3).std(0), rtol=1e-5)
  z = np.asarray(data.normalize(x, mean, std))
  np.testing.assert_allclose(z.reshape(-1, 3).mean(0), 0, atol=1e-5)
  np.testing.assert_allclose(z.reshape(-1, 3).std(0), 1, atol=1e-4)
  np.testing.assert_allclose(np.asarray(data.denormalize(z, mean, std)), x, atol=1e-6)
  jitted = jax.jit(data.normalize)(x, mean, std)
  np.testing.assert_allclose(np.asarray(jitted), z, atol=1e-6)
  with pytest.raises(ValueError, match="std must be > 0"):
    data.normalize(x, mean, np.zeros(3))
  with pytest.raises(ValueError, match="channels"):
    data.normalize(x, mean[:2], std[:2])
  ds = data.from_arrays("cmnist", rng.integers(0, 256, (20, 6, 6), dtype=np.uint8),
                        np.repeat(np.arange(10), 2), conflict_ratio=0.5)
  b = data.as_batch(ds)
  assert isinstance(b, Batch) and b.images.dtype == np.float32 and b.labels.dtype == np.int32
  np.testing.assert_array_equal(np.asarray(b.aligned), ds.aligned)
  m2, _ = data.channel_stats(ds)
  np.testing.assert_allclose(m2, ds.images.reshape(-1, 3).mean(0), rtol=1e-5)
