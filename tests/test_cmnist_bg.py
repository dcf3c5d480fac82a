"""FairDD's C-MNIST-BG (``cmnist_bg``): images and composition against written-out rules."""
import numpy as np
import pytest

from jaxdd import data
from jaxdd.data import injectors

#: FairDD's COLOUR_MAP (data_handler/colour_mnist.py), written out here, in 0..255.
FAIRDD_COLOURS = np.array([[255, 0, 0], [255, 128, 0], [255, 255, 0], [255, 255, 128],
                           [0, 255, 0], [0, 255, 255], [0, 0, 255], [128, 0, 255],
                           [255, 0, 255], [255, 255, 255]]) / 255.0


def test_images_are_black_binarised_digits_on_the_bias_colour():
  # padded 28 -> 32 (4 zero rows at the top, 4 zero columns at the left, which are
  # background too); the stroke (>= 128 of 255) black, every other pixel the colour
  rng = np.random.default_rng(1)
  grey = rng.integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
  colours = np.array([0, 2, 3, 8, 9])
  out = injectors.colorize_binary_background(grey, colours)
  assert out.shape == (5, 32, 32, 3) and out.dtype == np.float32
  stroke = np.zeros((5, 32, 32), bool)
  stroke[:, 4:, 4:] = grey >= 128
  expect = (~stroke)[..., None] * FAIRDD_COLOURS[colours][:, None, None, :]
  np.testing.assert_allclose(out, expect, rtol=1e-6)
  np.testing.assert_allclose(out[:, :4], np.broadcast_to(  # the padding: the colour
      FAIRDD_COLOURS[colours][:, None, None, :], (5, 4, 32, 3)), rtol=1e-6)
  np.testing.assert_array_equal(
      injectors.colorize_binary_background(grey.astype(np.float32) / 255.0, colours), out)
  # the foreground variant's complement on the image area, for the same digits and colours
  fg = injectors.colorize_binary_foreground(grey, colours)
  np.testing.assert_allclose((fg + out)[:, 4:, 4:],
                             np.broadcast_to(FAIRDD_COLOURS[colours][:, None, None, :],
                                             (5, 28, 28, 3)), rtol=1e-6)


def test_cmnist_bg_loads_with_fairdds_composition():
  # FairDD's rho = 1 - conflict_ratio of each class keeps its colour in train (0.9 for
  # conflict_ratio 0.1) and 0.1 in test; the same assignment as cmnist_fg, other rendering
  train = data.load("cmnist_bg", split="train", conflict_ratio=0.1, seed=0)
  test = data.load("cmnist_bg", split="test", conflict_ratio=0.1, seed=0)
  fg = data.load("cmnist_fg", split="train", conflict_ratio=0.1, seed=0)
  np.testing.assert_array_equal(train.bias, fg.bias)
  np.testing.assert_array_equal(train.labels, fg.labels)
  for ds, rho in ((train, 0.9), (test, 0.1)):
    y, b = np.asarray(ds.labels), np.asarray(ds.bias)
    assert ds.images.shape[1:] == (32, 32, 3)
    for c in range(10):
      assert int(((y == c) & (b == c)).sum()) == int((y == c).sum() * rho)
    # the top-left corner is padding: the bias colour itself
    np.testing.assert_allclose(np.asarray(ds.images)[:, 0, 0], FAIRDD_COLOURS[b], rtol=1e-6)
  assert train.meta["name"] == "cmnist_bg" and data.DATASETS["cmnist_bg"].bias_names[9] == "white"
  with pytest.raises(ValueError, match="no severity"):
    data.load("cmnist_bg", split="train", conflict_ratio=0.1, severity=4)
