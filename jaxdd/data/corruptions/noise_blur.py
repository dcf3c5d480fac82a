"""The noise and blur corruptions (LfF's Type1 list, but ``original``).

Each maps ``(x: (N, H, W, 3) float64 in [0, 1], rngs, level)`` to a float
array; :func:`~jaxdd.data.corruptions.corrupt` clips it and casts it to float32.

Example:
  >>> x = np.full((1, 8, 8, 3), 0.5)
  >>> float(_gaussian_blur(x, None, 3).mean())
  0.5
"""
from __future__ import annotations


import numpy as np
from scipy import ndimage

from jaxdd.data.corruptions.filters import (_clipped_zoom, _motion_blur, _spatial_filter,
                                            _spatial_gaussian, _stack_draws)

# ----------------------------------------------------------------------------
# Per-severity constants (index = severity - 1). Source: alinlab/LfF
# data/corrupted_cifar10_protocol.py (= hendrycks/robustness make_cifar_c.py).
# ----------------------------------------------------------------------------
_GAUSSIAN_NOISE = (0.04, 0.06, 0.08, 0.09, 0.10)  # std of additive noise
_SHOT_NOISE = (500, 250, 100, 75, 50)  # Poisson photon count scale
_IMPULSE_NOISE = (0.01, 0.02, 0.03, 0.05, 0.07)  # salt & pepper amount
_SPECKLE_NOISE = (0.06, 0.10, 0.12, 0.16, 0.20)  # std of multiplicative noise
_GAUSSIAN_BLUR = (0.4, 0.6, 0.7, 0.8, 1.0)  # sigma
# (sigma, max_delta, iterations)
_GLASS_BLUR = ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2),
               (0.4, 1, 2))
# (disk radius, anti-alias sigma)
_DEFOCUS_BLUR = ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1))
# (radius, sigma); angle ~ U(-45, 45) degrees
_MOTION_BLUR = ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5))
# The reference writes these aranges; their float lengths are 7/12/16/21/26.
_ZOOM_BLUR = (np.arange(1, 1.06, 0.01), np.arange(1, 1.11, 0.01),
              np.arange(1, 1.16, 0.01), np.arange(1, 1.21, 0.01),
              np.arange(1, 1.26, 0.01))


def _gaussian_noise(x, rngs, s):
  c = _GAUSSIAN_NOISE[s - 1]
  noise = _stack_draws(rngs, lambda r: r.normal(0.0, c, x.shape[1:]))
  return x + noise


def _shot_noise(x, rngs, s):
  c = _SHOT_NOISE[s - 1]
  return np.stack([r.poisson(xi * c) for r, xi in zip(rngs, x)]) / c


def _impulse_noise(x, rngs, s):
  # skimage random_noise(mode="s&p", amount=c, salt_vs_pepper=0.5). Every
  # element (per channel) flips with probability c, to 1 or 0 with equal odds.
  c = _IMPULSE_NOISE[s - 1]
  u = _stack_draws(rngs, lambda r: r.random((2,) + x.shape[1:]))
  flipped, salted = u[:, 0] < c, u[:, 1] < 0.5
  out = x.copy()
  out[flipped & salted] = 1.0
  out[flipped & ~salted] = 0.0
  return out


def _speckle_noise(x, rngs, s):
  c = _SPECKLE_NOISE[s - 1]
  noise = _stack_draws(rngs, lambda r: r.normal(0.0, c, x.shape[1:]))
  return x + x * noise


def _gaussian_blur(x, rngs, s):
  del rngs
  return _spatial_gaussian(x, _GAUSSIAN_BLUR[s - 1])


def _glass_shuffle(q: np.ndarray, offsets: np.ndarray, delta: int) -> np.ndarray:
  """The reference's local pixel shuffle, run on (N, H, W, C) images in place.

  For each iteration, it scans rows h = H - delta .. delta + 1 and, within a
  row, columns w = W - delta .. delta + 1, both descending. At each position
  it swaps pixel (h, w) with (h + dy, w + dx), where ``offsets[n, it, i, j] =
  (dx, dy)``. The swaps are sequential: a pixel moved up/left can be moved
  again later in the scan, so the order matters. The loop runs over
  positions, and each swap is vectorised across the images.
  """
  n, h, w, ch = q.shape
  flat = q.reshape(n, h * w, ch)  # a view: swaps write through to q
  rows = range(h - delta, delta, -1)
  cols = range(w - delta, delta, -1)
  step = offsets[..., 1] * w + offsets[..., 0]  # dy * W + dx
  idx = np.arange(n)
  for it in range(offsets.shape[1]):
    for i, hh in enumerate(rows):
      for j, ww in enumerate(cols):
        here = hh * w + ww
        there = here + step[:, it, i, j]
        a = flat[idx, here].copy()
        flat[idx, here] = flat[idx, there]
        flat[idx, there] = a
  return q


def _glass_blur(x, rngs, s):
  sigma, delta, iters = _GLASS_BLUR[s - 1]
  h, w = x.shape[1:3]
  # As the reference: blur, quantise to uint8 (truncation), shuffle, blur again.
  q = np.floor(_spatial_gaussian(x, sigma) * 255.0)
  n_rows, n_cols = len(range(h - delta, delta, -1)), len(range(w - delta, delta, -1))
  # randint(-d, d) has an exclusive upper end: offsets in {-d, ..., d - 1}.
  offsets = _stack_draws(rngs, lambda r: r.integers(
      -delta, delta, size=(iters, n_rows, n_cols, 2)))
  q = _glass_shuffle(q, offsets, delta)
  return _spatial_gaussian(q / 255.0, sigma)


def _defocus_kernel(radius: float, alias_blur: float) -> np.ndarray:
  # Reference disk(): an aliased disk on a 17x17 grid (radius <= 8), normalised,
  # then cv2.GaussianBlur with a 3x3 kernel of std alias_blur (reflect-101).
  span = 8 if radius <= 8 else int(radius)
  ksize = 3 if radius <= 8 else 5
  grid = np.arange(-span, span + 1)
  xx, yy = np.meshgrid(grid, grid)
  disk = ((xx ** 2 + yy ** 2) <= radius ** 2).astype(np.float64)
  disk /= disk.sum()
  t = np.arange(ksize) - ksize // 2
  g = np.exp(-(t ** 2) / (2.0 * alias_blur ** 2))
  g /= g.sum()
  kernel = ndimage.correlate(disk, np.outer(g, g), mode="mirror")
  # Crop the (numerically) zero border. It only costs time, and dropping
  # weights below 1e-12 * max changes the output by less than 1e-12.
  keep = kernel > 1e-12 * kernel.max()
  r_idx, c_idx = np.flatnonzero(keep.any(1)), np.flatnonzero(keep.any(0))
  rr = max(span - r_idx[0], r_idx[-1] - span)
  cc = max(span - c_idx[0], c_idx[-1] - span)
  return kernel[span - rr:span + rr + 1, span - cc:span + cc + 1]


def _defocus_blur(x, rngs, s):
  del rngs
  return _spatial_filter(x, _defocus_kernel(*_DEFOCUS_BLUR[s - 1]))


def _motion_blur_corruption(x, rngs, s):
  radius, sigma = _MOTION_BLUR[s - 1]
  angles = _stack_draws(rngs, lambda r: r.uniform(-45.0, 45.0))
  return _motion_blur(x, radius, sigma, angles)


def _zoom_blur(x, rngs, s):
  del rngs
  factors = _ZOOM_BLUR[s - 1]
  out = x.copy()
  for z in factors:
    out += _clipped_zoom(x, float(z))
  return out / (len(factors) + 1)

