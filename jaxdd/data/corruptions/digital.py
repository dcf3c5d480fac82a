"""The digital corruptions: contrast, brightness, saturate, jpeg, pixelate, elastic.

Each maps ``(x: (N, H, W, 3) float64 in [0, 1], rngs, level)`` to a float
array; :func:`~jaxdd.data.corruptions.corrupt` clips it and casts it to float32.

Example:
  >>> x = np.full((1, 8, 8, 3), 0.5)
  >>> float(_contrast(x, None, 1).mean())
  0.5
"""
from __future__ import annotations

import io

import numpy as np
from PIL import Image

from jaxdd.data.corruptions.colour import hsv_to_rgb, rgb_to_hsv
from jaxdd.data.corruptions.filters import _sample, _separable, _spatial_gaussian, _to_uint8

# ----------------------------------------------------------------------------
# Per-severity constants (index = severity - 1). Source: alinlab/LfF
# data/corrupted_cifar10_protocol.py (= hendrycks/robustness make_cifar_c.py).
# ----------------------------------------------------------------------------
_CONTRAST = (0.75, 0.5, 0.4, 0.3, 0.15)  # factor on deviations from the mean
_BRIGHTNESS = (0.05, 0.1, 0.15, 0.2, 0.3)  # added to HSV value
_SATURATE = ((0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2))  # S*a + b
_JPEG = (80, 65, 58, 50, 40)  # PIL quality
_PIXELATE = (0.95, 0.9, 0.85, 0.75, 0.65)  # downscale factor
# (alpha, sigma, affine jitter), as fractions of the image size (reference: 32)
_ELASTIC = ((0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06),
            (0.1, 0.04, 0.05), (0.1, 0.03, 0.03))


def _contrast(x, rngs, s):
  del rngs
  c = _CONTRAST[s - 1]
  means = x.mean(axis=(1, 2), keepdims=True)  # per image and channel
  return (x - means) * c + means


def _brightness(x, rngs, s):
  del rngs
  hsv = rgb_to_hsv(x)
  hsv[..., 2] = np.clip(hsv[..., 2] + _BRIGHTNESS[s - 1], 0.0, 1.0)
  return hsv_to_rgb(hsv)


def _saturate(x, rngs, s):
  del rngs
  scale, shift = _SATURATE[s - 1]
  hsv = rgb_to_hsv(x)
  hsv[..., 1] = np.clip(hsv[..., 1] * scale + shift, 0.0, 1.0)
  return hsv_to_rgb(hsv)


def _jpeg(x, rngs, s):
  del rngs
  quality = _JPEG[s - 1]
  out = np.empty(x.shape, np.float64)
  for i, img in enumerate(_to_uint8(x)):
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    with Image.open(buf) as decoded:
      out[i] = np.asarray(decoded.convert("RGB"), np.float64) / 255.0
  return out


def _box_resize_matrix(n_in: int, n_out: int) -> np.ndarray:
  """(n_out, n_in) matrix of Pillow's 1-D BOX resampling in float mode.

  Pillow resamples separably: a horizontal pass, then a vertical one, each
  linear in the input. Resizing the n_in unit vectors gives the matrix
  columns exactly.
  """
  cols = []
  for j in range(n_in):
    e = np.zeros((1, n_in), np.float32)
    e[0, j] = 1.0
    cols.append(np.asarray(
        Image.fromarray(e).resize((n_out, 1), Image.Resampling.BOX),
        np.float64)[0])
  return np.stack(cols, axis=1)


def _pixelate(x, rngs, s):
  del rngs
  c = _PIXELATE[s - 1]
  h, w = x.shape[1:3]
  sh, sw = int(h * c), int(w * c)
  # Downsample to (int(H c), int(W c)), then upsample back, both BOX.
  ry = _box_resize_matrix(sh, h) @ _box_resize_matrix(h, sh)
  rx = _box_resize_matrix(sw, w) @ _box_resize_matrix(w, sw)
  return _separable(x, ry, rx)


def _elastic(x, rngs, s):
  n, h, w, ch = x.shape
  size = min(h, w)  # the reference's IMSIZE (32 for CIFAR)
  alpha, sigma, jitter = (size * v for v in _ELASTIC[s - 1])
  parts = [(r.uniform(-jitter, jitter, (3, 2)),
            r.uniform(-1.0, 1.0, (h, w)), r.uniform(-1.0, 1.0, (h, w)))
           for r in rngs]
  # 1) Random affine warp. It maps three points around the centre (in cv2
  # (x, y) coordinates) to jittered copies of themselves. Sampling uses the
  # inverse map (cv2.warpAffine), bilinear, with reflect-101 borders.
  cy, cx = h // 2, w // 2
  sq = size // 3
  src_pts = np.array([[cx + sq, cy + sq], [cx + sq, cy - sq],
                      [cx - sq, cy - sq]], np.float64)
  yy, xx = np.meshgrid(np.arange(h, dtype=np.float64),
                       np.arange(w, dtype=np.float64), indexing="ij")
  homog = np.stack([xx.ravel(), yy.ravel(), np.ones(h * w)])  # (3, H*W)
  sample_y = np.empty((n, h, w))
  sample_x = np.empty((n, h, w))
  design = np.hstack([src_pts, np.ones((3, 1))])
  for i, p in enumerate(parts):
    dst_pts = src_pts + p[0]
    fwd = np.linalg.solve(design, dst_pts).T  # 2x3: src -> dst
    inv = np.linalg.inv(np.vstack([fwd, [0.0, 0.0, 1.0]]))[:2]
    sx, sy = inv @ homog
    sample_x[i], sample_y[i] = sx.reshape(h, w), sy.reshape(h, w)
  x = _sample(x, sample_y, sample_x, mode="mirror")
  # 2) Smooth random displacement field, alpha * gaussian(U(-1, 1), sigma).
  dx = _spatial_gaussian(np.stack([p[1] for p in parts]), sigma,
                         mode="reflect", truncate=3.0) * alpha
  dy = _spatial_gaussian(np.stack([p[2] for p in parts]), sigma,
                         mode="reflect", truncate=3.0) * alpha
  return _sample(x, yy + dy, xx + dx, mode="reflect")



def _original(x, rngs, s):
  del rngs, s
  return x
