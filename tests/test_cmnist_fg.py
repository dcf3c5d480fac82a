"""FairDD's C-MNIST-FG (``cmnist_fg``): bias assignment and images against written-out rules."""
import math

import jax
import numpy as np
import pytest

from jaxdd import data
from jaxdd.data import injectors


def test_assignment_follows_fairdds_counts():
  # 103 samples in class 0, 57 in class 3, rho = 0.9: int(n rho) keep the class colour and the
  # rest go in chunks of ceil(rest / 9) to the other colours, each at most once.
  labels = np.concatenate([np.zeros(103, int), np.full(57, 3)])
  labels = labels[np.random.default_rng(0).permutation(len(labels))]
  b = injectors.fairdd_attr_labels(jax.random.key(1), labels, aligned_ratio=0.9)
  for c, n in ((0, 103), (3, 57)):
    bc = b[labels == c]
    n_aligned = int(n * 0.9)
    assert (bc == c).sum() == n_aligned
    rest = n - n_aligned
    chunk = math.ceil(rest / 9)
    counts = sorted(np.bincount(bc[bc != c], minlength=10)[np.arange(10) != c], reverse=True)
    expected = [min(chunk, rest - k * chunk) for k in range(9)]
    assert counts == sorted([max(e, 0) for e in expected], reverse=True)
  # the same key gives the same assignment; another key shuffles differently
  np.testing.assert_array_equal(
      b, injectors.fairdd_attr_labels(jax.random.key(1), labels, aligned_ratio=0.9))
  assert not np.array_equal(
      b, injectors.fairdd_attr_labels(jax.random.key(2), labels, aligned_ratio=0.9))
  with pytest.raises(ValueError, match="aligned_ratio"):
    injectors.fairdd_attr_labels(jax.random.key(0), labels, aligned_ratio=1.5)


def test_images_are_padded_binarised_strokes_in_the_bias_colour():
  rng = np.random.default_rng(0)
  grey = rng.integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
  colours = np.array([0, 1, 3, 7, 9])
  out = injectors.colorize_binary_foreground(grey, colours)
  assert out.shape == (5, 32, 32, 3) and out.dtype == np.float32
  palette = np.array([[255, 0, 0], [255, 128, 0], [255, 255, 0], [255, 255, 128], [0, 255, 0],
                      [0, 255, 255], [0, 0, 255], [128, 0, 255], [255, 0, 255],
                      [255, 255, 255]]) / 255.0
  expect = np.zeros((5, 32, 32, 3))
  expect[:, 4:, 4:, :] = (grey >= 128)[..., None] * palette[colours][:, None, None, :]
  np.testing.assert_allclose(out, expect, rtol=1e-6)
  # float input in [0, 1] reads the same
  np.testing.assert_array_equal(
      injectors.colorize_binary_foreground(grey.astype(np.float32) / 255.0, colours), out)


def test_cmnist_fg_loads_with_fairdds_composition():
  train = data.load("cmnist_fg", split="train", conflict_ratio=0.1, seed=0)
  test = data.load("cmnist_fg", split="test", conflict_ratio=0.1, seed=0)
  assert train.images.shape[1:] == (32, 32, 3) and test.images.shape[1:] == (32, 32, 3)
  for ds, rho in ((train, 0.9), (test, 0.1)):
    y, b = np.asarray(ds.labels), np.asarray(ds.bias)
    for c in range(10):
      n = int((y == c).sum())
      assert int(((y == c) & (b == c)).sum()) == int(n * rho)
  # a valid split is held out and biased like train
  valid = data.load("cmnist_fg", split="valid", conflict_ratio=0.1, seed=0)
  assert len(valid.labels) > 0
  with pytest.raises(ValueError, match="no severity"):
    data.load("cmnist_fg", split="train", conflict_ratio=0.1, severity=4)
