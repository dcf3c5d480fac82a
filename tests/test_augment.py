"""Tests for jaxdd.augment (DSA): exact maths of every deterministic op against
numpy, parameter ranges of the random ops, the siamese property, per-sample
mode, gradients, jit consistency, strategy parsing and single tracing; and the
per-image random-resized crops of the SupCon surrogate against a numpy loop.
"""
from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdd import augment as A

RANDOM_OPS = {
    "brightness": A.brightness, "saturation": A.saturation, "contrast": A.contrast,
    "color": A.color, "crop": A.crop, "cutout": A.cutout, "flip": A.flip, "scale": A.scale,
    "rotate": A.rotate,
}


# Jitted deterministic ops: one compile per shape instead of one per primitive
# (eager dispatch compiles every primitive separately, which dominates runtime).
_jit_translate = jax.jit(A.translate)
_jit_cutout = jax.jit(A.cutout_with, static_argnums=3)
_jit_scale = jax.jit(A.scale_with)
_jit_rotate = jax.jit(A.rotate_with)


def _images(seed, shape):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


# ---------------------------------------------------------------------------
# Deterministic ops against numpy
# ---------------------------------------------------------------------------


def test_color_ops_match_formulas():
  x = _images(0, (2, 3, 4, 3))
  np.testing.assert_allclose(A.brightness_with(jnp.asarray(x), -0.3), x - 0.3, atol=1e-6)
  m = x.mean(axis=3, keepdims=True)  # per pixel, over channels
  np.testing.assert_allclose(A.saturation_with(jnp.asarray(x), 1.7), (x - m) * 1.7 + m,
                             atol=1e-5)
  m = x.mean(axis=(1, 2, 3), keepdims=True)  # per image, over H, W, C
  np.testing.assert_allclose(A.contrast_with(jnp.asarray(x), 0.6), (x - m) * 0.6 + m,
                             atol=1e-5)


def _np_translate(x, tx, ty):
  n, h, w, c = x.shape
  out = np.zeros_like(x)
  for i in range(h):
    for j in range(w):
      if 0 <= i + tx < h and 0 <= j + ty < w:
        out[:, i, j] = x[:, i + tx, j + ty]
  return out


@pytest.mark.parametrize("tx,ty", [(0, 0), (-2, 1), (3, -3), (9, 0), (-1, -6)])
def test_translate_matches_numpy(tx, ty):
  x = _images(1, (2, 5, 6, 2))
  np.testing.assert_array_equal(np.asarray(_jit_translate(jnp.asarray(x), tx, ty)),
                                _np_translate(x, tx, ty))


def _np_cutout(x, cx, cy, sh, sw):
  out = x.copy()
  for i in range(cx - sh // 2, cx - sh // 2 + sh):
    for j in range(cy - sw // 2, cy - sw // 2 + sw):
      if 0 <= i < x.shape[1] and 0 <= j < x.shape[2]:
        out[:, i, j] = 0
  return out


@pytest.mark.parametrize("cx,cy,size", [(0, 0, 4), (3, 5, 3), (8, 2, 4), (4, 4, (2, 3)),
                                        (1, 7, 5)])
def test_cutout_with_matches_numpy(cx, cy, size):
  x = _images(2, (2, 8, 8, 1)) + 5.0  # no accidental zeros
  sh, sw = (size, size) if isinstance(size, int) else size
  np.testing.assert_array_equal(np.asarray(_jit_cutout(jnp.asarray(x), cx, cy, size)),
                                _np_cutout(x, cx, cy, sh, sw))


def test_flip_with():
  x = _images(3, (2, 3, 4, 2))
  np.testing.assert_array_equal(A.flip_with(jnp.asarray(x), True), x[:, :, ::-1])
  np.testing.assert_array_equal(A.flip_with(jnp.asarray(x), False), x)


def _np_grid_sample(img, theta):
  """Naive PyTorch affine_grid + grid_sample (bilinear, zeros, align_corners=False)."""
  h, w, _ = img.shape
  out = np.zeros_like(img, dtype=np.float64)
  for i in range(h):
    for j in range(w):
      xn, yn = (2 * j + 1) / w - 1, (2 * i + 1) / h - 1
      gx = theta[0, 0] * xn + theta[0, 1] * yn + theta[0, 2]
      gy = theta[1, 0] * xn + theta[1, 1] * yn + theta[1, 2]
      ix, iy = ((gx + 1) * w - 1) / 2, ((gy + 1) * h - 1) / 2
      x0, y0 = math.floor(ix), math.floor(iy)
      for yy in (y0, y0 + 1):
        for xx in (x0, x0 + 1):
          wgt = (1 - abs(ix - xx)) * (1 - abs(iy - yy))
          if 0 <= xx < w and 0 <= yy < h:
            out[i, j] += wgt * img[yy, xx]
  return out


def _theta(angle, sx, sy, tx, ty):
  c, s = math.cos(angle), math.sin(angle)
  return np.array([[c * sx, -s * sy, tx], [s * sx, c * sy, ty]], np.float32)


def test_grid_sample_matches_naive_numpy():
  x = _images(4, (2, 5, 7, 2))  # non-square, so x/y mix-ups show
  theta = _theta(0.4, 1.3, 0.8, 0.15, -0.2)
  got = np.asarray(jax.jit(A.affine)(jnp.asarray(x), jnp.asarray(theta)))
  for n in range(2):
    np.testing.assert_allclose(got[n], _np_grid_sample(x[n], theta), atol=1e-5)
  # Per-image grids (N, Ho, Wo, 2).
  thetas = [theta, _theta(-1.1, 0.9, 1.2, -0.3, 0.1)]
  grids = jnp.stack([A.affine_grid(jnp.asarray(t), 5, 7) for t in thetas])
  got = np.asarray(jax.jit(A.grid_sample)(jnp.asarray(x), grids))
  for n in range(2):
    np.testing.assert_allclose(got[n], _np_grid_sample(x[n], thetas[n]), atol=1e-5)


def test_scale_hand_computed():
  # 2x2 image, theta = 2I: output pixel (0, 0) samples pixel coordinate
  # (-0.5, -0.5), i.e. a quarter of pixel (0, 0) and three zero-padding taps.
  x = jnp.array([[1.0, 2.0], [3.0, 4.0]]).reshape(1, 2, 2, 1)
  np.testing.assert_allclose(np.asarray(_jit_scale(x, 2.0, 2.0)).ravel(),
                             [0.25, 0.5, 0.75, 1.0], atol=1e-6)


def test_identity_transforms():
  x = jnp.asarray(_images(5, (2, 6, 5, 3)))
  # The sampling grid is computed in float32: coordinates off by a few ulps of the image
  # size (~1e-6 px) move the bilinear weights by as much, times pixel steps of up to 1.
  np.testing.assert_allclose(_jit_scale(x, 1.0, 1.0), x, atol=1e-5)
  np.testing.assert_allclose(_jit_rotate(x, 0.0), x, atol=1e-5)


@pytest.mark.parametrize("size", [5, 6])
def test_rotate_90_is_rot90(size):
  x = _images(6, (2, size, size, 2))
  got = np.asarray(_jit_rotate(jnp.asarray(x), math.pi / 2))
  np.testing.assert_allclose(got, np.rot90(x, k=1, axes=(1, 2)), atol=1e-5)


# ---------------------------------------------------------------------------
# Parameter ranges (recovered from outputs over many keys)
# ---------------------------------------------------------------------------


def _over_keys(fn, n=300):
  keys = jax.random.split(jax.random.key(123), n)
  return np.asarray(jax.jit(jax.vmap(fn))(keys))


def test_color_parameter_ranges():
  zeros = jnp.zeros((1, 2, 2, 1))
  delta = _over_keys(lambda k: A.brightness(k, zeros)[0, 0, 0, 0])
  assert delta.min() >= -0.5 and delta.max() < 0.5
  assert delta.min() < -0.45 and delta.max() > 0.45
  two = jnp.array([0.0, 1.0]).reshape(1, 1, 1, 2)  # channel mean 0.5
  sat = _over_keys(lambda k: 2 * (A.saturation(k, two)[0, 0, 0, 1] - 0.5))
  assert sat.min() >= -1e-6 and sat.max() < 2.0 and sat.max() > 1.9 and sat.min() < 0.1
  con = _over_keys(lambda k: 2 * (A.contrast(k, two)[0, 0, 0, 1] - 0.5))
  assert con.min() >= 0.5 - 1e-6 and con.max() < 1.5 and con.max() > 1.4 and con.min() < 0.6


def test_crop_and_cutout_parameter_ranges():
  h = 16  # shift s = int(16 * 0.125 + 0.5) = 2; cutout L = 8, centre in [0, 16]
  ramp = (jnp.arange(h)[:, None] * 100 + jnp.arange(h)[None, :] + 1.0)[None, :, :, None]
  centre = _over_keys(lambda k: A.crop(k, ramp)[0, 8, 8, 0])
  tx, ty = centre // 100 - 8, centre % 100 - 1 - 8
  assert set(tx.astype(int)) == set(range(-2, 3)) and set(ty.astype(int)) == set(range(-2, 3))

  holes = _over_keys(lambda k: A.cutout(k, jnp.ones((1, h, h, 1)))[0, :, :, 0] == 0)
  # holes: (draws, H, W). Rows that contain a hole give cx, columns give cy.
  for hit in (holes.any(axis=2), holes.any(axis=1)):  # (draws, h)
    assert np.all(hit.any(axis=1))  # every draw cuts something
    first = hit.argmax(axis=1)
    last = h - 1 - hit[:, ::-1].argmax(axis=1)
    # The hole spans [c - 4, c + 3] clipped to the image; undo the clipping.
    centre = np.where(first > 0, first + 4, last - 3)
    assert set(centre.tolist()) == set(range(0, h + 1))
    np.testing.assert_array_equal(last - first + 1,
                                  np.minimum(centre + 4, h) - np.maximum(centre - 4, 0))


def test_flip_scale_rotate_parameter_ranges():
  x = jnp.arange(4.0).reshape(1, 1, 4, 1)
  flipped = _over_keys(lambda k: A.flip(k, x)[0, 0, 0, 0] == 3.0)
  assert 0.4 < flipped.mean() < 0.6

  w = 16  # image = column index: bilinear sampling of a linear ramp is exact inside
  cols = jnp.broadcast_to(jnp.arange(w, dtype=jnp.float32), (w, w))[None, :, :, None]
  rows = jnp.transpose(cols, (0, 2, 1, 3))
  xn = (2 * 10 + 1) / w - 1  # normalised coordinate of pixel 10

  def recover(v):  # pixel coordinate -> normalised coordinate
    return (2 * v + 1) / w - 1

  sx = _over_keys(lambda k: recover(A.scale(k, cols)[0, 10, 10, 0])) / xn
  sy = _over_keys(lambda k: recover(A.scale(k, rows)[0, 10, 10, 0])) / xn
  for s in (sx, sy):
    assert s.min() >= 1 / 1.2 - 1e-5 and s.max() < 1.2 + 1e-5
    assert s.min() < 0.86 and s.max() > 1.17
  assert not np.allclose(sx, sy)  # independent draws

  n = 15  # odd size: the centre column has x = 0, so x_in = -sin(phi) * y
  cols = jnp.broadcast_to(jnp.arange(n, dtype=jnp.float32), (n, n))[None, :, :, None]
  yn = (2 * 10 + 1) / n - 1
  xin = _over_keys(lambda k: (2 * A.rotate(k, cols)[0, 10, 7, 0] + 1) / n - 1)
  phi = np.degrees(np.arcsin(-xin / yn))
  assert phi.min() >= -15.0 - 1e-3 and phi.max() <= 15.0 + 1e-3
  assert phi.min() < -13 and phi.max() > 13


# ---------------------------------------------------------------------------
# Siamese and per-sample modes
# ---------------------------------------------------------------------------

X256 = _images(7, (256, 8, 8, 3))
XS = jnp.asarray(_images(8, (3, 8, 8, 3)))
WS = jnp.asarray(_images(9, (3, 8, 8, 3)))


def _keys_choosing_each_family(n_families, seed=0):
  """Keys k_i for which dsa() picks family i (dsa's documented key contract)."""
  keys = jax.random.split(jax.random.key(seed), 200)
  idx = np.asarray(jax.jit(jax.vmap(
      lambda k: jax.random.randint(jax.random.split(k)[0], (), 0, n_families)))(keys))
  assert set(idx.tolist()) == set(range(n_families))
  return keys[np.array([np.flatnonzero(idx == i)[0] for i in range(n_families)])]


def test_siamese_dsa_every_family():
  """Same key: the first 10 of a 256 batch == the batch of those 10, for every family."""
  aug = A.dsa()
  keys = _keys_choosing_each_family(len(A.FAMILIES))
  both = jax.jit(jax.vmap(lambda k, x: (aug(k, x)[:10], aug(k, x[:10])), in_axes=(0, None)))
  a, b = both(keys, jnp.asarray(X256))
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6, rtol=0)
  # And the families really differ from each other.
  assert len({tuple(np.round(np.asarray(o).ravel()[:50], 4)) for o in a}) == len(A.FAMILIES)


def test_per_class_siamese_via_vmap(getkey):
  """One key per class, vmapped: real and synthetic of a class get the same transform."""
  aug = A.dsa("crop_flip_cutout")
  real = jnp.asarray(X256[:48].reshape(3, 16, 8, 8, 3))  # (classes, n_real, H, W, C)
  syn = real[:, :2]  # stands in for the synthetic images of each class
  base = getkey()
  keys = jax.vmap(lambda c: jax.random.fold_in(base, c))(jnp.arange(3))
  f = jax.jit(lambda k, r, s: (jax.vmap(aug)(k, r), jax.vmap(aug)(k, s)))
  r_out, s_out = f(keys, real, syn)
  np.testing.assert_allclose(np.asarray(r_out[:, :2]), np.asarray(s_out), atol=1e-6)
  for c in range(3):  # the vmap equals one call per class
    np.testing.assert_allclose(np.asarray(r_out[c]), np.asarray(jax.jit(aug)(keys[c], real[c])),
                               atol=1e-5)


def test_non_siamese_per_sample_params(getkey):
  same = jnp.broadcast_to(jnp.asarray(X256[:1]), (16, 8, 8, 3))
  for strategy in ("crop", "color"):
    out = np.asarray(jax.jit(A.dsa(strategy, siamese=False))(getkey(), same))
    distinct = {tuple(np.round(o.ravel(), 4)) for o in out}
    # crop on 8x8 has only 9 possible shifts; continuous families are all distinct.
    assert len(distinct) >= (4 if strategy == "crop" else 16), strategy
  # Key contract: per-image keys are split(k_apply, N) of k_apply = split(key)[1].
  key = getkey()
  got = jax.jit(A.dsa("crop", siamese=False))(key, same)
  keys = jax.random.split(jax.random.split(key)[1], 16)
  one = jax.jit(A.crop)
  want = jnp.concatenate([one(k, same[i:i + 1]) for i, k in enumerate(keys)])
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_non_siamese_one_family_per_batch():
  # On all-ones images 'cutout' always makes zeros and 'flip' never does, so each
  # call must cut every image or none of them.
  aug = jax.jit(jax.vmap(A.dsa("cutout_flip", siamese=False), in_axes=(0, None)))
  out = np.asarray(aug(jax.random.split(jax.random.key(5), 24), jnp.ones((6, 8, 8, 1))))
  has_hole = (out == 0).any(axis=(2, 3, 4))  # (calls, images)
  assert np.all(has_hole.all(axis=1) | ~has_hole.any(axis=1))
  assert 0 < has_hole.all(axis=1).sum() < 24


# ---------------------------------------------------------------------------
# Gradients, jit
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(RANDOM_OPS))
def test_op_siamese_and_gradients(name, getkey):
  """Per op: same key -> same transform for 256 and 10 images; finite nonzero grads."""
  op, key = RANDOM_OPS[name], getkey()

  def run(k, x256, x):
    grad = jax.grad(lambda x: jnp.sum(op(k, x) * WS))(x)
    return op(k, x256)[:10], op(k, x256[:10]), grad

  a, b, grad = jax.jit(run)(key, jnp.asarray(X256), XS)
  # The same transform vectorised over 256 or 10 images: XLA may order the float32 sums
  # of an interpolation differently; 1e-5 is ~80 ulps of the images' values (<= 1).
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-5)
  grad = np.asarray(grad)
  assert np.all(np.isfinite(grad)) and np.abs(grad).sum() > 0


def test_jit_matches_eager(getkey):
  # mode="all" runs every family in one call, so this covers every op.
  aug = A.dsa(mode="all")
  key = getkey()
  np.testing.assert_allclose(np.asarray(jax.jit(aug)(key, XS)), np.asarray(aug(key, XS)),
                             atol=1e-5)


def test_cutout_gradient_is_the_mask(getkey):
  key = getkey()
  grad = np.asarray(jax.grad(lambda x: jnp.sum(A.cutout(key, x)))(XS))
  hole = np.asarray(A.cutout(key, jnp.ones_like(XS))) == 0
  assert hole.any() and (~hole).any()
  np.testing.assert_array_equal(grad[hole], 0.0)
  np.testing.assert_array_equal(grad[~hole], 1.0)


@pytest.mark.parametrize("siamese", [True, False])
def test_dsa_gradients_every_family(siamese, getkey):
  augs = [A.dsa(strategy, siamese=siamese) for strategy in A.FAMILIES]
  # One program for all six families keeps the compile count down.
  grads = jax.jit(lambda k, x: [jax.grad(lambda x: jnp.sum(aug(k, x) * WS))(x) for aug in augs]
                  )(getkey(), XS)
  for strategy, grad in zip(A.FAMILIES, grads):
    grad = np.asarray(grad)
    assert np.all(np.isfinite(grad)) and np.abs(grad).sum() > 0, strategy


def test_dsa_jit_matches_eager_and_traces_once(getkey):
  aug = A.dsa()

  @jax.jit
  @chex.assert_max_traces(n=1)
  def run(key, x):
    return aug(key, x)

  for i in range(6):
    key = getkey()
    out = run(key, XS + i)
    if i < 2:
      np.testing.assert_allclose(np.asarray(out), np.asarray(aug(key, XS + i)), atol=1e-5)
  chex.clear_trace_counter()


# ---------------------------------------------------------------------------
# Composition, strategies, errors
# ---------------------------------------------------------------------------


def test_color_is_brightness_saturation_contrast(getkey):
  key = getkey()
  kb, ks, kc = jax.random.split(key, 3)
  want = A.contrast(kc, A.saturation(ks, A.brightness(kb, XS)))
  np.testing.assert_allclose(np.asarray(A.color(key, XS)), np.asarray(want), atol=1e-6)


def test_dsa_key_contract(getkey):
  dsa_color, color = jax.jit(A.dsa("color")), jax.jit(A.color)
  dsa_cr, crop, rotate = jax.jit(A.dsa("crop_rotate")), jax.jit(A.crop), jax.jit(A.rotate)
  for _ in range(4):
    key = getkey()
    k_choice, k_apply = jax.random.split(key)
    np.testing.assert_allclose(np.asarray(dsa_color(key, XS)), np.asarray(color(k_apply, XS)),
                               atol=1e-5)
    idx = int(jax.random.randint(k_choice, (), 0, 2))
    want = (crop, rotate)[idx](k_apply, XS)
    np.testing.assert_allclose(np.asarray(dsa_cr(key, XS)), np.asarray(want), atol=1e-5)
  key = getkey()
  k1, k2 = jax.random.split(jax.random.split(key)[1], 2)
  np.testing.assert_allclose(np.asarray(A.dsa("crop_flip", mode="all")(key, XS)),
                             np.asarray(A.flip(k2, A.crop(k1, XS))), atol=1e-5)


def test_chain_and_choose(getkey):
  key = getkey()
  k1, k2 = jax.random.split(key)
  np.testing.assert_allclose(np.asarray(A.chain(A.crop, A.brightness)(key, XS)),
                             np.asarray(A.brightness(k2, A.crop(k1, XS))), atol=1e-6)
  assert A.chain()(key, XS) is XS
  assert A.identity(key, XS) is XS
  pick = jax.jit(jax.vmap(A.choose(lambda k, x: x + 1, lambda k, x: x + 2), in_axes=(0, None)))
  out = np.asarray(pick(jax.random.split(key, 32), jnp.zeros(())))
  assert set(out.tolist()) == {1.0, 2.0}
  with pytest.raises(ValueError, match="at least one"):
    A.choose()


def test_strategy_parsing_and_errors(getkey):
  assert A.parse_strategy(A.DEFAULT_STRATEGY) == A.FAMILIES
  assert A.parse_strategy("color_crop") == ("color", "crop")
  for none in ("", "none", "None"):
    assert A.parse_strategy(none) == ()
    assert A.dsa(none)(getkey(), XS) is XS
  for bad in ("foo", "crop_foo", "crop__flip", "Color", "crop-flip"):
    with pytest.raises(ValueError, match="unknown DSA family"):
      A.dsa(bad)
  with pytest.raises(ValueError, match="mode"):
    A.dsa("crop", mode="M")
  for params in (A.DSAParams(ratio_scale=0.5), A.DSAParams(prob_flip=1.5),
                 A.DSAParams(ratio_cutout=1.5), A.DSAParams(brightness=float("nan"))):
    with pytest.raises(ValueError, match="must be in"):
      A.dsa(params=params)
  with pytest.raises(ValueError, match="NHWC"):
    A.crop(getkey(), XS[0, ..., 0])  # (H, W): neither an image nor a batch
  with pytest.raises(ValueError, match="float"):
    A.flip_with(jnp.ones((1, 2, 2, 1), jnp.int32), True)
  with pytest.raises(ValueError, match=r"\(2, 3\)"):
    A.affine(XS, jnp.eye(3))


def test_dsa_params_reach_the_ops(getkey):
  key = getkey()
  always = A.dsa("flip", params=A.DSAParams(prob_flip=1.0))
  np.testing.assert_array_equal(np.asarray(always(key, XS)), np.asarray(XS)[:, :, ::-1])
  still = A.dsa("crop_scale_rotate", params=A.DSAParams(ratio_crop_pad=0.0, ratio_scale=1.0,
                                                        ratio_rotate=0.0))
  np.testing.assert_allclose(np.asarray(jax.jit(still)(key, XS)), np.asarray(XS), atol=1e-6)
  with pytest.raises(ValueError, match="unknown DSA family"):
    A.family("blur")


def test_dsa_params_defaults_are_the_reference():
  assert A.DSAParams() == (0.5, 1.2, 15.0, 0.125, 0.5, 1.0, 2.0, 0.5)
  assert A.DSAParams()._fields == ("prob_flip", "ratio_scale", "ratio_rotate", "ratio_crop_pad",
                                   "ratio_cutout", "brightness", "saturation", "contrast")


# ---------------------------------------------------------------------------
# Per-image random-resized crops (the SupCon surrogate's views)
# ---------------------------------------------------------------------------


def test_crop_resize_matches_numpy_loop(getkey):
  img = np.asarray(jax.random.uniform(getkey(), (7, 9, 3)))
  rng = np.random.default_rng(0)
  for _ in range(4):
    h, w = rng.uniform(2.0, 7.0), rng.uniform(2.0, 9.0)
    y0, x0 = rng.uniform(0, 7 - h), rng.uniform(0, 9 - w)
    for flip in (False, True):
      got = A.views._crop_resize(jnp.asarray(img), jnp.float32(y0), jnp.float32(x0), jnp.float32(h),
                                 jnp.float32(w), jnp.asarray(flip))
      np.testing.assert_allclose(got, bilinear_reference(img, y0, x0, h, w, flip), atol=2e-5)


def test_full_crop_is_identity_and_flip_mirrors(getkey):
  x = jax.random.uniform(getkey(), (32, 6, 6, 3))
  same = A.random_resized_crop(getkey(), x, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip=False)
  np.testing.assert_allclose(same, x, atol=1e-6)
  flipped = np.asarray(A.random_resized_crop(getkey(), x, scale=(1.0, 1.0), ratio=(1.0, 1.0),
                                             flip=True))
  mirror = np.asarray(x)[:, :, ::-1]
  is_same = np.all(np.isclose(flipped, np.asarray(x), atol=1e-6), axis=(1, 2, 3))
  is_mirror = np.all(np.isclose(flipped, mirror, atol=1e-6), axis=(1, 2, 3))
  assert np.all(is_same | is_mirror)
  assert is_same.any() and is_mirror.any()  # P(all 32 equal) = 2^-31


def test_crop_params_are_per_image_and_outputs_convex(getkey):
  img = jax.random.uniform(getkey(), (1, 8, 8, 3))
  x = jnp.repeat(img, 16, axis=0)
  out = np.asarray(A.random_resized_crop(getkey(), x))
  flat = out.reshape(16, -1)
  assert len({tuple(np.round(r, 5)) for r in flat}) == 16  # 16 different crops
  # Bilinear resampling is a convex combination of input pixels, per channel.
  for ch in range(3):
    assert out[..., ch].min() >= float(img[..., ch].min()) - 1e-6
    assert out[..., ch].max() <= float(img[..., ch].max()) + 1e-6


def test_two_views_independent_and_deterministic(getkey):
  x = jax.random.uniform(getkey(), (5, 8, 8, 3))
  key = getkey()
  v = np.asarray(A.two_views(key, x))
  assert v.shape == (10, 8, 8, 3)
  # Independent keys: view 1 and view 2 of every image differ.
  assert all(not np.allclose(v[i], v[5 + i]) for i in range(5))
  np.testing.assert_array_equal(v, np.asarray(A.two_views(key, x)))


def bilinear_reference(img, y0, x0, h, w, flip):
  """Pixel-by-pixel crop + bilinear resize with clamped, pixel-centre coordinates."""
  height, width, _ = img.shape
  out = np.zeros_like(img, dtype=np.float64)
  for i in range(height):
    for j in range(width):
      jj = width - 1 - j if flip else j
      sy = min(max(y0 + (i + 0.5) * h / height - 0.5, 0.0), height - 1.0)
      sx = min(max(x0 + (jj + 0.5) * w / width - 0.5, 0.0), width - 1.0)
      ylo, xlo = int(math.floor(sy)), int(math.floor(sx))
      yhi, xhi = min(ylo + 1, height - 1), min(xlo + 1, width - 1)
      fy, fx = sy - ylo, sx - xlo
      out[i, j] = ((1 - fy) * (1 - fx) * img[ylo, xlo] + (1 - fy) * fx * img[ylo, xhi]
                   + fy * (1 - fx) * img[yhi, xlo] + fy * fx * img[yhi, xhi])
  return out


def test_every_augmentation_takes_one_image():
  # dm-pix's convention: one (H, W, C) image goes through as a batch of one. A siamese op
  # draws its parameters once per call, so the same key gives image i the transform it gets
  # inside the batch (the same arithmetic: equal up to float rounding).
  x = jnp.asarray(np.random.default_rng(7).normal(size=(5, 9, 9, 3)), jnp.float32)
  key = jax.random.key(3)
  siamese = [A.brightness, A.saturation, A.contrast, A.color, A.crop, A.cutout, A.flip,
             A.scale, A.rotate, A.identity, A.dsa("color_crop_cutout_flip_scale_rotate"),
             A.dsa("crop_scale", mode="all")]
  for op in siamese:
    for k in (key, jax.random.key(11)):
      one = op(k, x[2])
      assert one.shape == x[2].shape and one.dtype == x.dtype, op
      np.testing.assert_allclose(one, op(k, x)[2], rtol=1e-6, atol=1e-6)
      # under jit XLA fuses the sampling grid's trigonometry differently from op by op: the
      # coordinates move by ~1e-6 px, times the image's slope (|x| <= 5 a pixel here)
      np.testing.assert_allclose(jax.jit(op)(k, x[2]), one, rtol=0, atol=1e-5)
  # per-image parameters: one image is the batch of one
  for op in (A.dsa("crop_flip", siamese=False), A.random_resized_crop):
    np.testing.assert_array_equal(op(key, x[2]), op(key, x[2:3])[0])
  assert A.two_views(key, x[2]).shape == (2, 9, 9, 3)  # the views of the one image
  # the deterministic ops with scalar parameters
  for op, args in ((A.brightness_with, (0.3,)), (A.saturation_with, (1.5,)),
                   (A.contrast_with, (0.7,)), (A.translate, (1, -2)),
                   (A.cutout_with, (4, 4, 3)), (A.flip_with, (True,)),
                   (A.scale_with, (1.1, 0.9)), (A.rotate_with, (12.0,))):
    np.testing.assert_allclose(op(x[2], *args), op(x, *args)[2], rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(op(x[2], *args), op(x[2:3], *args)[0])
  np.testing.assert_array_equal(A.crop(key, images=x[2]), A.crop(key, x[2]))  # by keyword
  # a grayscale (H, W) image is not an image here: one line that says what to give
  with pytest.raises(ValueError, match=r"one \(H, W, C\) image.*x\[\.\.\., None\]"):
    A.crop(key, x[2, ..., 0])
