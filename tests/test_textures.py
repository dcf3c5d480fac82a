"""Textured-FMNIST (``textured_fmnist``): textures, compositing and composition against
written-out rules, on a few hundred Fashion-MNIST images."""
import json

import jax
import numpy as np
import pytest

from jaxdd import cli, data
from jaxdd.config import parts
from jaxdd.data import textures
from jaxdd.data.sources import IdxSource

NAME = "textured_fmnist"


@pytest.fixture(scope="module")
def fmnist():
  """The first 50 training and 20 test images of each class of Debian's Fashion-MNIST."""
  src = IdxSource()
  pools = []
  for part, per_class in (("train", 50), ("test", 20)):
    x, y = src.pool(part)
    keep = np.sort(np.concatenate([np.flatnonzero(y == c)[:per_class] for c in range(10)]))
    pools += [x[keep], y[keep]]
  return pools


def _source(fmnist):
  return data.ArraySource(*fmnist)


def _naive_composite(grey_uint8, background):
  """The rule in float64: alpha = min(1, 4 g), pixel = alpha g + (1 - alpha) background, 8 bits."""
  g = grey_uint8.astype(np.float64)[..., None] / 255.0
  alpha = np.minimum(1.0, 4.0 * g)
  return alpha * g + (1.0 - alpha) * background.astype(np.float64)


def _assert_is_rounded(out, exact):
  """``out == rint(255 exact) / 255`` up to float32: a mismatch (of one step) is allowed only
  where ``255 exact`` lies within 1e-3 of a rounding boundary."""
  want = np.rint(255.0 * exact) / 255.0
  off = np.abs(out - want) > 1e-6
  assert np.abs(out - want).max() <= 1.0 / 255.0 + 1e-6
  frac = 255.0 * exact[off] - np.floor(255.0 * exact[off])
  assert np.all(np.abs(frac - 0.5) < 1e-3)
  assert off.mean() < 1e-3


def test_composite_matches_the_written_rule():
  rng = np.random.default_rng(0)
  grey = rng.integers(0, 256, (6, 28, 28), dtype=np.uint8)
  grey[:, :4] = 0                                  # some pure background
  grey[:, -4:] = 255                               # some full object
  bg = rng.random((6, 28, 28, 3), dtype=np.float32)
  out = textures.composite(grey, bg)
  assert out.shape == (6, 28, 28, 3) and out.dtype == np.float32
  _assert_is_rounded(out, _naive_composite(grey, bg))
  np.testing.assert_array_equal(np.rint(out * 255) / 255, out)   # multiples of 1/255
  # float input in [0, 1] means the same as uint8 / 255
  np.testing.assert_array_equal(textures.composite(grey.astype(np.float32) / 255, bg), out)
  with pytest.raises(ValueError, match="backgrounds must be"):
    textures.composite(grey, bg[:, :27])


def test_the_object_does_not_reveal_the_family(fmnist):
  # one garment on a texture of every family: wherever alpha = 1 (g >= 0.25) the pixel is the
  # garment's own grey g on all channels, the same for every family
  x = fmnist[0][:3]
  key = jax.random.key(4)
  outs = [textures.texture_background(key, x, np.full(3, f)) for f in range(10)]
  opaque = x >= 64                                 # 64 / 255 >= 0.25
  assert opaque.mean() > 0.2
  for out in outs:
    np.testing.assert_array_equal(out[opaque], np.repeat(x[opaque, None] / np.float32(255), 3, -1))
  # and the backgrounds differ between families
  assert all(np.abs(outs[0][~opaque] - o[~opaque]).mean() > 0.05 for o in outs[1:])


def test_textures_are_valid_and_batch_independent():
  keys = textures.image_keys(jax.random.key(0), np.arange(8))
  for f in range(10):
    t = textures.textures(keys, f)
    assert t.shape == (8, 28, 28, 3) and t.dtype == np.float32
    assert t.min() >= 0.0 and t.max() <= 1.0 and t.std() > 0.05
    # a texture depends on its key only, not on the batch it is made in
    np.testing.assert_array_equal(textures.texture(keys[5], f), t[5])
    np.testing.assert_array_equal(textures.textures(keys[2:4], f), t[2:4])
  for bad in (10, -1, 1.5, True):
    with pytest.raises(ValueError, match="family must be"):
      textures.texture(jax.random.key(0), bad)
  with pytest.raises(ValueError, match="typed PRNG key"):
    textures.texture(np.zeros(2, np.uint32), 0)


def _radial_spectrum(t):
  """The luminance's 2-D FFT power, averaged over rings of integer radius 1..14."""
  lum = t.mean(-1)
  power = np.abs(np.fft.fft2(lum - lum.mean((1, 2), keepdims=True))) ** 2
  f = np.fft.fftfreq(t.shape[1]) * t.shape[1]
  ring = np.minimum(np.rint(np.hypot(f[:, None], f[None, :])).astype(int), 14).ravel()
  size = np.bincount(ring, minlength=15)
  rad = np.stack([np.bincount(ring, weights=p.ravel(), minlength=15) / size for p in power])
  return np.log(rad[:, 1:] + 1e-6)


def _features(t):
  return np.concatenate([_radial_spectrum(t), t.mean((1, 2)), t.std((1, 2))], 1)


def test_a_nearest_centroid_classifier_tells_the_families_apart():
  # independent of the generator: features = ring-averaged log power spectrum of the
  # luminance + colour mean and spread; centroids from 100 textures per family (seed 0),
  # judged on 100 others (seed 1)
  def draw(seed):
    keys = textures.image_keys(jax.random.key(seed), np.arange(100))
    return np.concatenate([_features(textures.textures(keys, f)) for f in range(10)])
  train, held_out, y = draw(0), draw(1), np.repeat(np.arange(10), 100)
  mu, sd = train.mean(0), train.std(0)
  centroids = np.stack([((train - mu) / sd)[y == f].mean(0) for f in range(10)])
  dist = ((((held_out - mu) / sd)[:, None] - centroids[None]) ** 2).sum(-1)
  accuracy = float((dist.argmin(1) == y).mean())
  assert accuracy >= 0.9, accuracy
  # the texture alone (no colour features) is far above chance (0.1) too
  spec_train, spec_test = train[:, :14], held_out[:, :14]
  mu, sd = spec_train.mean(0), spec_train.std(0)
  centroids = np.stack([((spec_train - mu) / sd)[y == f].mean(0) for f in range(10)])
  dist = ((((spec_test - mu) / sd)[:, None] - centroids[None]) ** 2).sum(-1)
  assert float((dist.argmin(1) == y).mean()) >= 0.5


def _lff_counts(n, c, aligned_ratio):
  """LfF's per-bias counts of one class, written out: milestones round(n * cumsum(ratios))."""
  ratios = np.full(10, (1.0 - aligned_ratio) / 9)
  ratios[c] = aligned_ratio
  milestones = np.minimum(np.round(n * np.cumsum(ratios)), n)
  milestones[-1] = n
  return np.diff(np.concatenate([[0], milestones])).astype(int)


def _train_index(labels, valid_fraction):
  """The training pool's indices that form ``train``: per class all but the last
  round(N_c * valid_fraction) in index order."""
  keep = [np.flatnonzero(labels == c)[:-int(round((labels == c).sum() * valid_fraction)) or None]
          for c in range(10)]
  return np.sort(np.concatenate(keep))


def test_train_composition_and_images_follow_the_rules(fmnist):
  ds = data.load(NAME, split="train", conflict_ratio=0.1, source=_source(fmnist), cache=False)
  y, b = np.asarray(ds.labels), np.asarray(ds.bias)
  assert ds.images.shape == (450, 28, 28, 3) and ds.images.dtype == np.float32
  for c in range(10):
    np.testing.assert_array_equal(np.bincount(b[y == c], minlength=10), _lff_counts(45, c, 0.9))
  np.testing.assert_array_equal(ds.aligned, b == y)
  assert ds.card.bias_names == textures.FAMILIES and ds.card.meta["name"] == NAME
  # every image is its garment on the texture of key fold_in(fold_in(key(seed), 0), pool index)
  index = _train_index(fmnist[1], 0.1)
  pool_key = jax.random.fold_in(jax.random.key(0), 0)
  for f in range(10):
    rows = np.flatnonzero(b == f)
    bg = textures.textures(textures.image_keys(pool_key, index[rows]), f)
    _assert_is_rounded(ds.images[rows], _naive_composite(fmnist[0][index[rows]], bg))


def test_the_test_split_is_unbiased(fmnist):
  # families independent of the class: each (class, family) count near N_c / 10; the
  # binomial bound |count - N_c p| <= 4 sqrt(N_c p (1 - p)), p = 0.1 (LfF's deterministic
  # rule in fact gives N_c / 10 exactly when 10 divides N_c)
  ds = data.load(NAME, split="test", conflict_ratio=0.02, source=_source(fmnist), cache=False)
  counts = ds.card.counts
  n_c = counts.sum(1, keepdims=True)
  assert np.all(np.abs(counts - 0.1 * n_c) <= 4 * np.sqrt(n_c * 0.1 * 0.9))
  np.testing.assert_array_equal(counts, np.full((10, 10), 2))
  assert ds.meta["split_aligned_ratio"] == 0.1 and ds.meta["texture_pool"] == "test"
  # the ratio does not change the test split
  other = data.load(NAME, split="test", conflict_ratio=0.2, source=_source(fmnist), cache=False)
  np.testing.assert_array_equal(other.images, ds.images)


def test_determinism_and_the_key_rule(fmnist):
  def build(**kw):
    args = dict(split="train", conflict_ratio=0.1, source=_source(fmnist), cache=False)
    return data.load(NAME, **{**args, **kw})
  a, b = build(), build()
  assert a.images.tobytes() == b.images.tobytes() and a.bias.tobytes() == b.bias.tobytes()
  c = build(seed=1)
  np.testing.assert_array_equal(c.bias, a.bias)  # the assignment uses no random numbers
  background = np.asarray(fmnist[0][_train_index(fmnist[1], 0.1)]) == 0
  assert np.abs(c.images - a.images)[background].mean() > 0.05
  # another valid_fraction moves images between train and valid and re-assigns families, but
  # an image with the same pool index and family is the same image
  d = build(valid_fraction=0.3)
  ia, id_ = _train_index(fmnist[1], 0.1), _train_index(fmnist[1], 0.3)
  common, pa, pd = np.intersect1d(ia, id_, return_indices=True)
  same = a.bias[pa] == d.bias[pd]
  assert same.sum() > 100
  np.testing.assert_array_equal(a.images[pa[same]], d.images[pd[same]])
  # from_arrays on the test pool is the load of the test split
  arr = data.from_arrays(NAME, fmnist[2], fmnist[3], conflict_ratio=0.1, split="test")
  test = data.load(NAME, split="test", conflict_ratio=0.1, source=_source(fmnist), cache=False)
  np.testing.assert_array_equal(arr.images, test.images)


def test_registry_cli_and_cache(fmnist, tmp_path, capsys):
  assert NAME in data.available() and parts.DATASETS[NAME] == ("lff", (), None)
  spec = data.DATASETS[NAME]
  assert (spec.base, spec.injector, spec.test_aligned_ratio) == ("fashion_mnist", "texture", 0.1)
  with pytest.raises(ValueError, match="no severity"):
    data.load(NAME, split="train", conflict_ratio=0.1, severity=4, source=_source(fmnist))
  with pytest.raises(ValueError, match=r"\(0, 1\)"):
    data.load(NAME, split="train", conflict_ratio=1.5, source=_source(fmnist))
  built = data.load(NAME, split="valid", conflict_ratio=0.1, source=_source(fmnist))
  hit = data.load(NAME, split="valid", conflict_ratio=0.1, source=_source(fmnist))
  assert (built.cache_info["status"], hit.cache_info["status"]) == ("built", "hit")
  np.testing.assert_array_equal(hit.images, built.images)
  assert built.meta["texture_pool"] == "train"     # valid is carved from the training pool
  npz = tmp_path / "fm.npz"
  np.savez(npz, x_train=fmnist[0], y_train=fmnist[1], x_test=fmnist[2], y_test=fmnist[3])
  card = tmp_path / "card.json"
  assert cli.main(["data", NAME, "--conflict-ratio", "0.1", "--source", str(npz),
                   "--save-card", str(card)]) == 0
  out = capsys.readouterr().out
  assert "Dataset card: textured_fmnist [train]" in out and "b3=foliage" in out
  saved = json.loads(card.read_text())
  conflicting = sum(45 - _lff_counts(45, c, 0.9)[c] for c in range(10))
  assert saved["bias_names"] == list(textures.FAMILIES) and saved["conflicting"] == conflicting
