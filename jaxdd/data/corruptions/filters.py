"""Array building blocks of the corruptions, batched over the leading image axis.

Filters, resampling and gathers on (N, H, W[, C]) float arrays; a random draw
goes through one ``numpy.random.Generator`` per image (:data:`Generators`).

Example:
  >>> x = np.arange(2 * 8 * 8 * 3, dtype=np.float64).reshape(2, 8, 8, 3)
  >>> _clipped_zoom(x, 1.0).shape
  (2, 8, 8, 3)
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
from scipy import ndimage

Generators = list  # list[np.random.Generator], one per image


def _stack_draws(rngs: Generators, draw: Callable) -> np.ndarray:
  """np.stack([draw(rng_i) for each image]): per-image, index-ordered draws."""
  return np.stack([np.asarray(draw(r)) for r in rngs])


def _spatial_gaussian(x: np.ndarray, sigma: float, mode: str = "nearest",
                      truncate: float = 4.0) -> np.ndarray:
  """Gaussian blur over axes 1, 2 only (skimage ``gaussian`` defaults)."""
  sig = [0.0] * x.ndim
  sig[1] = sig[2] = sigma
  return ndimage.gaussian_filter(x, sig, mode=mode, truncate=truncate)


def _spatial_filter(x: np.ndarray, kernel: np.ndarray,
                    mode: str = "mirror") -> np.ndarray:
  """2-D correlation over axes 1, 2. Mode 'mirror' is cv2's BORDER_REFLECT_101."""
  shape = [1] * x.ndim
  shape[1], shape[2] = kernel.shape
  return ndimage.correlate(x, kernel.reshape(shape), mode=mode)


def _shift_gather(x: np.ndarray, dy: np.ndarray, dx: np.ndarray,
                  wrap: bool = False) -> np.ndarray:
  """out[n, r, c] = x[n, r + dy[n], c + dx[n]], with edge-replicated or wrapped borders."""
  n, h, w = x.shape[:3]
  rows = np.arange(h)[None, :] + dy[:, None]
  cols = np.arange(w)[None, :] + dx[:, None]
  if wrap:
    rows, cols = rows % h, cols % w
  else:
    rows, cols = np.clip(rows, 0, h - 1), np.clip(cols, 0, w - 1)
  return _gather(x, rows[:, :, None], cols[:, None, :])


def _gather(x: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
  """out[n, i, j, ...] = x[n, rows[n, i, j], cols[n, i, j], ...] for in-range indices.

  ``rows`` and ``cols`` broadcast to (N, H', W'). One ``np.take`` of whole
  pixels (all channels) from the flattened batch is several times faster
  than fancy indexing with three index arrays.
  """
  n, h, w = x.shape[:3]
  flat = np.arange(n)[:, None, None] * (h * w) + rows * w + cols
  out = np.take(x.reshape((n * h * w,) + x.shape[3:]), flat.ravel(), axis=0)
  return out.reshape(flat.shape + x.shape[3:])


def _separable(x: np.ndarray, ry: np.ndarray, rx: np.ndarray) -> np.ndarray:
  """out[n, i, l, c] = sum_jk ry[i, j] x[n, j, k, c] rx[l, k]: a linear resize of (N, H, W, C)."""
  t = np.moveaxis(x, 3, 1)  # (N, C, H, W): two stacked matmuls beat einsum here
  return np.moveaxis(ry @ (t @ rx.T), 1, 3)


def _motion_blur(x: np.ndarray, radius: float, sigma: float,
                 angles_deg: np.ndarray) -> np.ndarray:
  """ImageMagick-style motion blur with one angle per image.

  Follows MagickCore's MotionBlurImage. The kernel width is
  2 * ceil(radius) + 1 (GetOptimalKernelWidth1D). Tap i has weight
  exp(-i^2 / (2 sigma^2)), normalised to sum 1, and samples the pixel at
  offset (x, y) = (ceil(i cos t - 0.5), ceil(i sin t - 0.5)). The kernel is
  one-sided, so bright spots leave a trail. Borders are edge-replicated.
  """
  width = int(2 * math.ceil(radius) + 1)
  taps = np.arange(width, dtype=np.float64)
  weights = np.exp(-(taps ** 2) / (2.0 * sigma ** 2))
  weights /= weights.sum()
  theta = np.deg2rad(np.asarray(angles_deg, np.float64))
  px, py = width * np.sin(theta), width * np.cos(theta)
  hyp = np.hypot(px, py)
  out = np.zeros_like(x)
  for i in range(width):
    ox = np.ceil(i * py / hyp - 0.5).astype(np.int64)
    oy = np.ceil(i * px / hyp - 0.5).astype(np.int64)
    out += weights[i] * _shift_gather(x, oy, ox)
  return out


def _zoom_matrix(n_in: int, zoom: float) -> np.ndarray:
  """(round(n_in * zoom), n_in) matrix of 1-D ``scipy.ndimage.zoom(order=1)``.

  Linear (order-1) zoom is a tensor product of 1-D interpolations, so two
  such matrices reproduce the 2-D zoom exactly. It is far faster than
  ``ndimage.zoom`` on a 4-D batch, which interpolates over all four axes.
  """
  eye = np.eye(n_in)
  return np.stack([ndimage.zoom(eye[j], zoom, order=1) for j in range(n_in)],
                  axis=1)


def _clipped_zoom(x: np.ndarray, zoom: float) -> np.ndarray:
  """Zoom into the centre by ``zoom`` (>= 1) and crop back to (H, W); x is (N, H, W, C).

  This is the reference's ``clipped_zoom``: crop the central ceil(H / zoom)
  pixels, apply scipy's linear zoom, and trim the excess symmetrically. It is
  generalised to H != W.
  """
  h, w = x.shape[1:3]
  ch, cw = int(np.ceil(h / zoom)), int(np.ceil(w / zoom))
  top, left = (h - ch) // 2, (w - cw) // 2
  zy, zx = _zoom_matrix(ch, zoom), _zoom_matrix(cw, zoom)
  th, tw = (zy.shape[0] - h) // 2, (zx.shape[0] - w) // 2
  zy, zx = zy[th:th + h], zx[tw:tw + w]
  return _separable(x[:, top:top + ch, left:left + cw], zy, zx)


def _plasma_fractal(uniforms: np.ndarray, decay: float) -> np.ndarray:
  """Batched periodic diamond-square heightmap, normalised to [0, 1] per image.

  ``uniforms`` has shape (N, M, M), M a power of two, with U(-1, 1) entries.
  The algorithm fills every grid point exactly once, so ``uniforms[n, i, j]``
  is the perturbation of point (i, j). As in Hendrycks' ``plasma_fractal``, a
  new point is the mean of its four neighbours plus wibble * U(-wibble,
  wibble) = wibble^2 * U(-1, 1). The wibble starts at 100 and is divided by
  ``decay`` at every halving of the step.
  """
  n, m, _ = uniforms.shape
  grid = np.zeros((n, m, m))
  step, wibble = m, 100.0
  while step >= 2:
    half = step // 2
    # Square step: each square's centre = mean of its 4 corners (periodic).
    corners = grid[:, 0::step, 0::step]
    acc = corners + np.roll(corners, -1, axis=1)
    acc = acc + np.roll(acc, -1, axis=2)
    grid[:, half::step, half::step] = (
        acc / 4 + wibble ** 2 * uniforms[:, half::step, half::step])
    # Diamond step: edge midpoints = mean of 2 corners + 2 square centres.
    centres = grid[:, half::step, half::step]
    corners = grid[:, 0::step, 0::step]
    top_edge = (centres + np.roll(centres, 1, axis=1)
                + corners + np.roll(corners, -1, axis=2))
    grid[:, 0::step, half::step] = (
        top_edge / 4 + wibble ** 2 * uniforms[:, 0::step, half::step])
    left_edge = (centres + np.roll(centres, 1, axis=2)
                 + corners + np.roll(corners, -1, axis=1))
    grid[:, half::step, 0::step] = (
        left_edge / 4 + wibble ** 2 * uniforms[:, half::step, 0::step])
    step //= 2
    wibble /= decay
  grid -= grid.min(axis=(1, 2), keepdims=True)
  peak = grid.max(axis=(1, 2), keepdims=True)
  return grid / np.where(peak > 0, peak, 1.0)


def _normalise01(a: np.ndarray) -> np.ndarray:
  """Per-image min-max scaling of (N, H, W) to [0, 1] (a constant map -> 0)."""
  lo = a.min(axis=(1, 2), keepdims=True)
  span = a.max(axis=(1, 2), keepdims=True) - lo
  return (a - lo) / np.where(span > 0, span, 1.0)


def _to_uint8(x: np.ndarray) -> np.ndarray:
  return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


def _extend_index(i: np.ndarray, n: int, mode: str) -> np.ndarray:
  """Map integer indices outside [0, n) back inside, per scipy boundary ``mode``."""
  if mode == "mirror":  # d c b | a b c d | c b a   (cv2 BORDER_REFLECT_101)
    period = max(2 * (n - 1), 1)
    i = np.mod(i, period)
    return np.where(i >= n, period - i, i)
  # "reflect":            b a | a b c d | d c    (half-sample symmetric)
  period = 2 * n
  i = np.mod(i, period)
  return np.where(i >= n, period - 1 - i, i)


def _sample(x: np.ndarray, ys: np.ndarray, xs: np.ndarray,
            mode: str) -> np.ndarray:
  """Bilinear sampling of (N, H, W, C) images at per-image (N, H, W) coordinates.

  Equals ``ndimage.map_coordinates(order=1, mode=mode)`` on each image and
  channel. The 4 neighbours are read from the mode-extended image.
  """
  h, w = x.shape[1:3]
  y0, x0 = np.floor(ys), np.floor(xs)
  fy, fx = (ys - y0)[..., None], (xs - x0)[..., None]
  y0, x0 = y0.astype(np.int64), x0.astype(np.int64)
  ya, yb = _extend_index(y0, h, mode), _extend_index(y0 + 1, h, mode)
  xa, xb = _extend_index(x0, w, mode), _extend_index(x0 + 1, w, mode)
  return ((1 - fy) * ((1 - fx) * _gather(x, ya, xa) + fx * _gather(x, ya, xb))
          + fy * ((1 - fx) * _gather(x, yb, xa) + fx * _gather(x, yb, xb)))

