"""Tests for jaxdd.data.corruptions (Corrupted CIFAR-10, LfF protocol).

Every check compares against an independent reference or a property that must
hold: naive per-pixel loops, colorsys, direct scipy/PIL calls on single images,
closed-form statistics, and monotonicity in severity.
"""
from __future__ import annotations

import colorsys
import io
import math

import jax
import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from jaxdd.data import corruptions as C
from jaxdd.data.corruptions import api, cv2ops, filters, noise_blur

ALL = C.TYPE0 + C.TYPE1
RANDOM = {"snow", "frost", "fog", "spatter", "elastic", "gaussian_noise",
          "shot_noise", "impulse_noise", "speckle_noise", "glass_blur",
          "motion_blur"}
DETERMINISTIC = set(ALL) - RANDOM


def _images(n: int = 4, size: int = 16) -> np.ndarray:
  """Smooth colour gradients, a sinusoidal pattern and a disc: (n, size, size, 3) float32."""
  yy, xx = np.mgrid[0:size, 0:size] / (size - 1)
  out = []
  for k in range(n):
    r = 0.15 + 0.7 * xx
    g = 0.15 + 0.7 * yy
    b = 0.5 + 0.3 * np.sin(2 * np.pi * (xx * (k + 1) + yy))
    im = np.stack([r, g, b], -1)
    disc = (xx - 0.3 - 0.1 * k) ** 2 + (yy - 0.5) ** 2 < 0.05
    im[disc] = [0.9, 0.2, 0.1] if k % 2 else [0.1, 0.2, 0.9]
    out.append(im)
  return np.stack(out).astype(np.float32)


def _grey(value: float, n: int = 4, size: int = 32) -> np.ndarray:
  return np.full((n, size, size, 3), value, np.float32)


KEY = jax.random.key(7)


# --------------------------------------------------------------------------
# Contract
# --------------------------------------------------------------------------
def test_name_lists_match_lff_protocol():
  assert C.TYPE0 == ("snow", "frost", "fog", "brightness", "contrast",
                     "spatter", "elastic", "jpeg", "pixelate", "saturate")
  assert C.TYPE1 == ("gaussian_noise", "shot_noise", "impulse_noise",
                     "speckle_noise", "gaussian_blur", "defocus_blur",
                     "glass_blur", "motion_blur", "zoom_blur", "original")
  assert set(C.CORRUPTIONS) == set(ALL) and len(C.CORRUPTIONS) == 20


@pytest.mark.parametrize("severity", [1, 3, 5])
@pytest.mark.parametrize("name", ALL)
def test_shape_dtype_range_and_change(name, severity):
  x = _images()
  y = C.corrupt(KEY, x, name, severity=severity)
  assert y.shape == x.shape and y.dtype == np.float32
  assert np.all(np.isfinite(y)) and y.min() >= 0.0 and y.max() <= 1.0
  diff = np.abs(y - x).mean()
  if name == "original":
    np.testing.assert_array_equal(y, x)
  else:
    assert diff > 1e-3, (name, severity, diff)
  # The registry entry is the same function.
  np.testing.assert_array_equal(C.CORRUPTIONS[name](KEY, x, severity=severity), y)


@pytest.mark.parametrize("name", ALL)
def test_determinism_and_key_dependence(name):
  x = _images(3, 16)
  a = C.corrupt(KEY, x, name, severity=4)
  b = C.corrupt(KEY, x, name, severity=4)
  assert a.tobytes() == b.tobytes()
  c = C.corrupt(jax.random.key(8), x, name, severity=4)
  if name in RANDOM:
    assert np.abs(a - c).max() > 1e-3
  else:
    np.testing.assert_array_equal(a, c)


@pytest.mark.parametrize("name", sorted(RANDOM))
def test_per_image_randomness_independent_of_batch_and_chunking(name, monkeypatch):
  x = _images(5, 16)
  full = C.corrupt(KEY, x, name, severity=5)
  # Image i's result depends only on (key, i, image i).
  np.testing.assert_array_equal(C.corrupt(KEY, x[:2], name, severity=5), full[:2])
  # Internal chunking does not change the result.
  monkeypatch.setattr(api, "_CHUNK", 2)
  np.testing.assert_array_equal(C.corrupt(KEY, x, name, severity=5), full)
  # Different images of one call get different randomness.
  same = np.repeat(x[:1], 2, axis=0)
  y = C.corrupt(KEY, same, name, severity=5)
  assert np.abs(y[0] - y[1]).max() > 1e-3


def test_uint8_input_equals_float_input_and_input_untouched():
  x8 = np.round(_images() * 255).astype(np.uint8)
  xf = x8.astype(np.float32) / 255.0
  keep8, keepf = x8.copy(), xf.copy()
  for name in ("gaussian_noise", "jpeg", "snow", "saturate"):
    np.testing.assert_allclose(C.corrupt(KEY, x8, name, severity=3),
                               C.corrupt(KEY, xf, name, severity=3), atol=1e-6)
  np.testing.assert_array_equal(x8, keep8)
  np.testing.assert_array_equal(xf, keepf)


def test_works_at_non_square_and_minimum_sizes():
  x = np.random.default_rng(0).random((2, 8, 13, 3)).astype(np.float32)
  for name in ALL:
    y = C.corrupt(KEY, x, name, severity=5)
    assert y.shape == x.shape and 0.0 <= y.min() and y.max() <= 1.0, name
  empty = C.corrupt(KEY, np.zeros((0, 16, 16, 3), np.float32), "fog", severity=2)
  assert empty.shape == (0, 16, 16, 3) and empty.dtype == np.float32


# --------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------
def test_bad_input_raises():
  x = _images()
  with pytest.raises(ValueError, match="gaussian_noise"):  # lists valid names
    C.corrupt(KEY, x, "blur", severity=1)
  for bad in (0, 6, 2.0, True, "3", None):
    with pytest.raises(ValueError, match="severity"):
      C.corrupt(KEY, x, "fog", severity=bad)
  for shape in [(16, 16, 3), (4, 16, 16), (4, 16, 16, 1), (4, 16, 16, 4),
                (4, 4, 16, 3), (4, 16, 7, 3)]:
    with pytest.raises(ValueError):
      C.corrupt(KEY, np.zeros(shape, np.float32), "fog", severity=1)
  nan = x.copy()
  nan[0, 0, 0, 0] = np.nan
  with pytest.raises(ValueError, match="NaN"):
    C.corrupt(KEY, nan, "contrast", severity=1)
  with pytest.raises(ValueError, match=r"\[0, 1\]"):
    C.corrupt(KEY, x * 255.0, "contrast", severity=1)
  with pytest.raises(ValueError, match="dtype"):
    C.corrupt(KEY, np.zeros((2, 16, 16, 3), np.int32), "contrast", severity=1)
  with pytest.raises(ValueError, match="typed"):
    C.corrupt(jax.random.PRNGKey(0), x, "fog", severity=1)
  with pytest.raises(ValueError, match="single key"):
    C.corrupt(jax.random.split(KEY, 2), x, "fog", severity=1)


# --------------------------------------------------------------------------
# Colour space and HSV corruptions against colorsys (per pixel)
# --------------------------------------------------------------------------
def _colorsys_map(x: np.ndarray, fn) -> np.ndarray:
  out = np.empty(x.shape, np.float64)
  for idx in np.ndindex(x.shape[:-1]):
    h, s, v = colorsys.rgb_to_hsv(*map(float, x[idx]))
    h, s, v = fn(h, s, v)
    out[idx] = colorsys.hsv_to_rgb(h, s, v)
  return out


def test_hsv_roundtrip_and_colorsys():
  rng = np.random.default_rng(1)
  rgb = rng.random((50, 3))
  rgb[:5] = [[0, 0, 0], [1, 1, 1], [0.5, 0.5, 0.5], [1, 0, 0], [0.2, 0.7, 0.7]]
  hsv = C.rgb_to_hsv(rgb)
  ref = np.array([colorsys.rgb_to_hsv(*p) for p in rgb])
  np.testing.assert_allclose(hsv, ref, atol=1e-12)
  np.testing.assert_allclose(C.hsv_to_rgb(hsv), rgb, atol=1e-12)


@pytest.mark.parametrize("severity", [1, 3, 5])
def test_brightness_and_saturate_match_colorsys(severity):
  x = _images(2, 8)
  add = (0.05, 0.1, 0.15, 0.2, 0.3)[severity - 1]
  mul, off = ((0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2))[severity - 1]
  ref_b = _colorsys_map(x, lambda h, s, v: (h, s, min(v + add, 1.0)))
  ref_s = _colorsys_map(x, lambda h, s, v: (h, min(max(s * mul + off, 0.0), 1.0), v))
  np.testing.assert_allclose(C.corrupt(KEY, x, "brightness", severity=severity),
                             ref_b, atol=1e-6)
  np.testing.assert_allclose(C.corrupt(KEY, x, "saturate", severity=severity),
                             ref_s, atol=1e-6)


def test_brightness_raises_mean_value_with_severity():
  x = _images()
  means = [C.rgb_to_hsv(C.corrupt(KEY, x, "brightness", severity=s))[..., 2].mean()
           for s in range(1, 6)]
  assert np.all(np.diff([C.rgb_to_hsv(x)[..., 2].mean()] + means) > 0)


def test_saturate_direction_by_severity():
  x = _images()
  s0 = C.rgb_to_hsv(x)[..., 1].mean()
  sat = [C.rgb_to_hsv(C.corrupt(KEY, x, "saturate", severity=s))[..., 1].mean()
         for s in range(1, 6)]
  assert sat[1] < sat[0] < s0 < sat[2] < sat[3] < sat[4]  # factors .3 .1 1.5 2 2.5


# --------------------------------------------------------------------------
# Contrast, noise statistics
# --------------------------------------------------------------------------
def test_contrast_matches_naive_formula_and_std_shrinks():
  x = _images(2, 8)
  factor = (0.75, 0.5, 0.4, 0.3, 0.15)
  stds = []
  for s in range(1, 6):
    y = C.corrupt(KEY, x, "contrast", severity=s)
    ref = np.empty_like(y)
    for n in range(x.shape[0]):
      for ch in range(3):
        m = float(np.mean(x[n, :, :, ch], dtype=np.float64))
        for i in range(8):
          for j in range(8):
            ref[n, i, j, ch] = min(max((x[n, i, j, ch] - m) * factor[s - 1] + m, 0), 1)
    np.testing.assert_allclose(y, ref, atol=1e-6)
    stds.append(y.std(axis=(1, 2)).mean())
  assert np.all(np.diff([x.std(axis=(1, 2)).mean()] + stds) < 0)


def test_gaussian_and_speckle_noise_statistics():
  x = _grey(0.5)
  for s, c in enumerate((0.04, 0.06, 0.08, 0.09, 0.10), start=1):
    d = C.corrupt(KEY, x, "gaussian_noise", severity=s) - 0.5
    assert abs(d.mean()) < 4 * c / math.sqrt(d.size)
    assert abs(d.std() / c - 1) < 0.05
  for s, c in enumerate((0.06, 0.10, 0.12, 0.16, 0.20), start=1):
    d = C.corrupt(KEY, x, "speckle_noise", severity=s) - 0.5
    assert abs(d.std() / (0.5 * c) - 1) < 0.05  # x + x * N(0, c)


def test_shot_noise_statistics_and_growth():
  x = _grey(0.4)
  stds = []
  for s, c in enumerate((500, 250, 100, 75, 50), start=1):
    y = C.corrupt(KEY, x, "shot_noise", severity=s).astype(np.float64)
    # Poisson(0.4 c) / c: mean 0.4, variance 0.4 / c, values on the 1/c grid.
    assert abs(y.mean() - 0.4) < 4 * math.sqrt(0.4 / c / y.size)
    assert abs(y.var() / (0.4 / c) - 1) < 0.06
    np.testing.assert_allclose(y * c, np.round(y * c), atol=1e-3)
    stds.append(y.std())
  assert np.all(np.diff(stds) > 0)


def test_impulse_noise_flip_fraction():
  x = _grey(0.5, n=8)
  for s, c in enumerate((0.01, 0.02, 0.03, 0.05, 0.07), start=1):
    y = C.corrupt(KEY, x, "impulse_noise", severity=s)
    changed = y != 0.5
    assert set(np.unique(y[changed])) <= {0.0, 1.0}
    frac = changed.mean()
    assert abs(frac - c) < 4 * math.sqrt(c * (1 - c) / y.size)
    assert abs((y == 1.0).sum() / changed.sum() - 0.5) < 0.1


# --------------------------------------------------------------------------
# Blurs
# --------------------------------------------------------------------------
def _naive_gaussian(img: np.ndarray, sigma: float) -> np.ndarray:
  """Explicit 2-D Gaussian sum over an edge-padded image (skimage defaults)."""
  r = int(4.0 * sigma + 0.5)
  t = np.arange(-r, r + 1)
  k = np.exp(-(t[:, None] ** 2 + t[None] ** 2) / (2 * sigma ** 2))
  k /= k.sum()
  pad = np.pad(img, ((r, r), (r, r), (0, 0)), mode="edge")
  out = np.zeros(img.shape)
  for i in range(2 * r + 1):
    for j in range(2 * r + 1):
      out += k[i, j] * pad[i:i + img.shape[0], j:j + img.shape[1]]
  return out


def _hf_energy(y: np.ndarray) -> float:
  return float(np.mean(np.diff(y, axis=1) ** 2) + np.mean(np.diff(y, axis=2) ** 2))


def test_gaussian_blur_matches_naive_and_removes_high_frequencies():
  x = _images()
  energies = [_hf_energy(x)]
  for s, sigma in enumerate((0.4, 0.6, 0.7, 0.8, 1.0), start=1):
    y = C.corrupt(KEY, x, "gaussian_blur", severity=s)
    np.testing.assert_allclose(y[1], _naive_gaussian(x[1], sigma), atol=1e-5)
    energies.append(_hf_energy(y))
  assert np.all(np.diff(energies) < 0)


def test_defocus_blur_matches_naive_disk_filter():
  x = _images(2, 12)
  # Level 4: disk radius 1 (a plus of 5 pixels), 3x3 anti-alias std 0.2.
  yy, xx = np.mgrid[-8:9, -8:9]
  disk = (xx ** 2 + yy ** 2 <= 1).astype(np.float64)
  disk /= disk.sum()
  g = np.exp(-np.array([1.0, 0.0, 1.0]) / (2 * 0.2 ** 2))
  g /= g.sum()
  dp = np.pad(disk, 1, mode="reflect")
  kernel = sum(g[i] * g[j] * dp[i:i + 17, j:j + 17] for i in range(3) for j in range(3))
  pad = np.pad(x, ((0, 0), (8, 8), (8, 8), (0, 0)), mode="reflect")  # reflect-101
  ref = np.zeros(x.shape)
  for i in range(17):
    for j in range(17):
      ref += kernel[i, j] * pad[:, i:i + 12, j:j + 12]
  np.testing.assert_allclose(C.corrupt(KEY, x, "defocus_blur", severity=4),
                             np.clip(ref, 0, 1), atol=1e-6)
  energies = [_hf_energy(C.corrupt(KEY, x, "defocus_blur", severity=s))
              for s in range(1, 6)]
  assert np.all(np.diff(energies) < 0)


def test_glass_shuffle_matches_sequential_swaps():
  rng = np.random.default_rng(3)
  q = rng.integers(0, 256, (3, 10, 9, 3)).astype(np.float64)
  delta, iters = 1, 2
  rows, cols = len(range(10 - delta, delta, -1)), len(range(9 - delta, delta, -1))
  offsets = rng.integers(-delta, delta, (3, iters, rows, cols, 2))
  ref = q.copy()
  for n in range(3):
    for it in range(iters):
      for i, h in enumerate(range(10 - delta, delta, -1)):
        for j, w in enumerate(range(9 - delta, delta, -1)):
          dx, dy = offsets[n, it, i, j]
          a, b = ref[n, h, w].copy(), ref[n, h + dy, w + dx].copy()
          ref[n, h, w], ref[n, h + dy, w + dx] = b, a
  out = noise_blur._glass_shuffle(q.copy(), offsets, delta)
  np.testing.assert_array_equal(out, ref)
  # A shuffle only permutes pixels.
  np.testing.assert_array_equal(np.sort(out.reshape(3, -1, 3), axis=1),
                                np.sort(q.reshape(3, -1, 3), axis=1))


def test_motion_blur_kernel_impulse_response():
  img = np.zeros((2, 21, 21, 1))
  img[:, 10, 10] = 1.0
  radius, sigma = 6, 2.0
  out = filters._motion_blur(img, radius, sigma, np.array([0.0, 90.0]))
  taps = np.arange(13)
  k = np.exp(-taps ** 2 / (2 * sigma ** 2))
  k /= k.sum()
  # Angle 0: output(r, c) samples c + i, so the spot trails to the left.
  np.testing.assert_allclose(out[0, :, :, 0][10, 0:11][::-1], k[:11], atol=1e-12)
  assert np.abs(np.delete(out[0, :, :, 0], 10, axis=0)).max() == 0
  # Angle 90: the trail is vertical (upwards).
  np.testing.assert_allclose(out[1, 0:11, 10, 0][::-1], k[:11], atol=1e-12)
  assert np.abs(np.delete(out[1, :, :, 0], 10, axis=1)).max() == 0
  # Mass is preserved where no tap leaves the image (edge replication elsewhere).
  flat = np.full((1, 21, 21, 1), 0.3)
  np.testing.assert_allclose(filters._motion_blur(flat, 9, 2.5, np.array([30.0])), 0.3)


def test_zoom_blur_matches_direct_scipy_zoom():
  x = _images(2, 16).astype(np.float64)
  factors = np.arange(1, 1.26, 0.01)
  assert len(factors) == 26
  acc = x.copy()
  for z in factors:
    ch = int(np.ceil(16 / z))
    top = (16 - ch) // 2
    for n in range(2):
      zoomed = ndimage.zoom(x[n, top:top + ch, top:top + ch], (z, z, 1), order=1)
      trim = (zoomed.shape[0] - 16) // 2
      acc[n] += zoomed[trim:trim + 16, trim:trim + 16]
  ref = np.clip(acc / 27, 0, 1)
  np.testing.assert_allclose(C.corrupt(KEY, x, "zoom_blur", severity=5), ref, atol=1e-6)
  errs = [np.mean((C.corrupt(KEY, x, "zoom_blur", severity=s) - x) ** 2)
          for s in range(1, 6)]
  assert np.all(np.diff(errs) > 0)


# --------------------------------------------------------------------------
# Digital corruptions
# --------------------------------------------------------------------------
def test_pixelate_matches_pil_and_error_grows():
  x = _images(2, 32)
  for s, c in ((1, 0.95), (5, 0.65)):
    small = int(32 * c)
    ref = np.empty(x.shape)
    for n in range(2):
      for ch in range(3):
        im = Image.fromarray(x[n, :, :, ch].astype(np.float32))
        im = im.resize((small, small), Image.Resampling.BOX)
        ref[n, :, :, ch] = np.asarray(im.resize((32, 32), Image.Resampling.BOX))
    np.testing.assert_allclose(C.corrupt(KEY, x, "pixelate", severity=s),
                               np.clip(ref, 0, 1), atol=1e-5)
  errs = [np.mean((C.corrupt(KEY, x, "pixelate", severity=s) - x) ** 2)
          for s in range(1, 6)]
  assert errs[0] < errs[2] < errs[4] and errs[3] < errs[4]


def test_jpeg_matches_pil_and_error_grows():
  x = _images(2, 32)
  x8 = np.round(x * 255).astype(np.uint8)
  buf = io.BytesIO()
  Image.fromarray(x8[1]).save(buf, format="JPEG", quality=40)
  ref = np.asarray(Image.open(io.BytesIO(buf.getvalue()))) / 255.0
  # uint8 input makes the module's rounding to 8 bits exact (JPEG amplifies
  # any 1-level difference in the input).
  np.testing.assert_allclose(C.corrupt(KEY, x8, "jpeg", severity=5)[1], ref, atol=1e-6)
  errs = [np.mean((C.corrupt(KEY, x, "jpeg", severity=s) - x) ** 2)
          for s in range(1, 6)]
  assert errs[0] < errs[2] < errs[4]


def test_elastic_sampler_matches_map_coordinates():
  rng = np.random.default_rng(5)
  x = rng.random((2, 9, 11, 3))
  ys = rng.uniform(-3, 12, (2, 9, 11))
  xs = rng.uniform(-3, 14, (2, 9, 11))
  for mode in ("mirror", "reflect"):
    out = filters._sample(x, ys, xs, mode)
    for n in range(2):
      for ch in range(3):
        ref = ndimage.map_coordinates(x[n, :, :, ch], [ys[n], xs[n]], order=1, mode=mode)
        np.testing.assert_allclose(out[n, :, :, ch], ref, atol=1e-12)


def test_elastic_with_identity_affine_is_identity():
  # Level 1 has alpha = 0 (no displacement), so only the affine warp acts. A
  # constant image stays constant under any warp with reflecting borders.
  y = C.corrupt(KEY, _grey(0.3, n=2, size=16), "elastic", severity=1)
  np.testing.assert_allclose(y, 0.3, atol=1e-6)


# --------------------------------------------------------------------------
# Weather and spatter: structural properties of the reference formulas
# --------------------------------------------------------------------------
def test_fog_adds_one_normalised_fractal_per_image():
  x = _images()
  for s, c in enumerate((0.2, 0.5, 0.75, 1.0, 1.5), start=1):
    y = C.corrupt(KEY, x, "fog", severity=s).astype(np.float64)
    peak = x.reshape(4, -1).max(1)[:, None, None, None].astype(np.float64)
    # y = (x + c f) * peak / (peak + c) never clips, so f is recoverable.
    f = (y * (peak + c) / peak - x) / c
    np.testing.assert_allclose(f, f[..., :1].repeat(3, -1), atol=1e-5)  # same for R, G, B
    np.testing.assert_allclose(f.min(axis=(1, 2, 3)), 0.0, atol=1e-5)
    np.testing.assert_allclose(f.max(axis=(1, 2, 3)), 1.0, atol=1e-5)


def test_frost_is_bounded_blend_with_texture():
  black = _grey(0.0, n=3, size=16)
  for s, (_a, b) in enumerate(((1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)), 1):
    tex = C.corrupt(KEY, black, "frost", severity=s) / b  # a * 0 + b * texture
    assert tex.max() <= 1.0 + 1e-6 and 0.3 < tex.mean() < 0.8
    assert tex.std() > 0.05  # a texture, not a flat veil
    assert np.all(tex[..., 2] >= tex[..., 0])  # icy blue-white tint


def test_snow_only_brightens():
  x = _images()
  for s in range(1, 6):
    y = C.corrupt(KEY, x, "snow", severity=s)
    assert np.all(y >= x - 1e-6)


def test_spatter_liquid_adds_water_and_mud_blends_towards_brown():
  x = _images(6, 32)
  water = np.array([175, 238, 238]) / 255.0
  mud = np.array([63, 42, 20]) / 255.0
  y = C.corrupt(KEY, x, "spatter", severity=2).astype(np.float64)
  d = y - x
  assert np.all(d >= -1e-6) and d.max() > 0.05
  unclipped = (y < 1.0).all(-1) & (d.max(-1) > 1e-3)
  ratio = d[unclipped] / water  # the increment is m * water colour
  np.testing.assert_allclose(ratio, ratio[:, :1].repeat(3, 1), atol=1e-4)
  y = C.corrupt(KEY, x, "spatter", severity=5).astype(np.float64)
  changed = np.abs(y - x).max(-1) > 1e-6
  assert changed.any()
  # y = x (1 - m) + mud m: m is the same for all three channels.
  m = (y - x)[changed] / (mud - x[changed])
  np.testing.assert_allclose(m, m[:, :1].repeat(3, 1), atol=1e-4)
  assert np.all((m >= -1e-6) & (m <= 1 + 1e-6))


def test_canny_and_equalize_hist_helpers():
  img = np.zeros((1, 12, 12), np.uint8)
  img[:, :, 6:] = 200
  edges = cv2ops._canny(img, 50, 150)
  cols = np.unique(np.nonzero(edges[0])[1])
  assert set(cols) <= {5, 6} and edges[0].any(axis=1).all()  # one thin vertical edge
  assert not cv2ops._canny(np.full((1, 12, 12), 90, np.uint8), 50, 150).any()
  h = np.array([[0, 0, 10], [10, 10, 20], [20, 250, 250]], np.uint8)
  # cv2 definition: lut(v) = round(255 * (cdf(v) - cdf(min)) / (N - cdf(min))),
  # here cdf = 2, 5, 7, 9 -> 0, 109.29, 182.14, 255.
  ref = np.array([[0, 0, 109], [109, 109, 182], [182, 255, 255]], np.uint8)
  np.testing.assert_array_equal(cv2ops._equalize_hist(h), ref)


def test_canny_does_not_mix_images_of_a_batch():
  step = np.zeros((12, 12), np.uint8)
  step[:, 6:] = 200
  batch = np.stack([step, np.full((12, 12), 90, np.uint8), step.T])
  edges = cv2ops._canny(batch, 50, 150)
  assert not edges[1].any()
  np.testing.assert_array_equal(edges[0], cv2ops._canny(step[None], 50, 150)[0])
  np.testing.assert_array_equal(edges[2], cv2ops._canny(step.T[None], 50, 150)[0])


def test_chamfer_distance_transform_weights():
  zero = np.zeros((2, 9, 9), bool)
  zero[0, 4, 4] = True  # one seed in image 0, none in image 1
  d = cv2ops._distance_transform_5x5(zero)
  # cv2 DIST_L2 / mask 5: steps (0,1) -> 1, (1,1) -> 1.4, (1,2) -> 2.1969,
  # in 16.16 fixed point (cvRound(w * 65536) / 65536).
  diag, knight = round(1.4 * 65536) / 65536, round(2.1969 * 65536) / 65536
  assert d[0, 4, 4] == 0 and d[0, 4, 7] == 3.0 and d[0, 1, 4] == 3.0
  assert d[0, 5, 5] == np.float32(diag) and d[0, 2, 2] == np.float32(2 * diag)
  assert d[0, 5, 6] == np.float32(knight) and d[0, 3, 2] == np.float32(knight)
  assert d[0, 6, 8] == np.float32(2 * knight)  # (2, 4) = two knight moves
  assert d[1].min() > 20  # no seed: "infinite", truncated to 20 by spatter
