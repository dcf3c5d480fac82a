"""HSV colour space, vectorised (the skimage / colorsys convention).

Example:
  >>> hsv_to_rgb(rgb_to_hsv(np.array([0.2, 0.4, 0.6]))).round(6).tolist()
  [0.2, 0.4, 0.6]
"""
from __future__ import annotations

import numpy as np


def rgb_to_hsv(rgb: np.ndarray) -> np.ndarray:
  """Vectorised RGB -> HSV, all channels in [0, 1] (skimage/colorsys convention).

  Args:
    rgb: (..., 3) array in [0, 1].

  Returns:
    (..., 3) float64 array (h, s, v). Hue is in [0, 1). Grey pixels get h = 0,
    and black pixels get s = 0.

  Example:
    >>> rgb_to_hsv(np.array([1.0, 0.0, 0.0]))
    array([0., 1., 1.])
  """
  rgb = np.asarray(rgb, np.float64)
  r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
  v = rgb.max(axis=-1)
  delta = v - rgb.min(axis=-1)
  s = np.where(v > 0, delta / np.where(v > 0, v, 1.0), 0.0)
  safe = np.where(delta > 0, delta, 1.0)
  # The max channel picks the hue sector. Ties give the same hue either way.
  h = np.where(r == v, (g - b) / safe,
               np.where(g == v, 2.0 + (b - r) / safe, 4.0 + (r - g) / safe))
  h = np.where(delta > 0, (h / 6.0) % 1.0, 0.0)
  return np.stack([h, s, v], axis=-1)


def hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
  """Vectorised HSV -> RGB, the inverse of :func:`rgb_to_hsv`.

  Args:
    hsv: (..., 3) array with h in [0, 1) (taken modulo 1), s and v in [0, 1].

  Returns:
    (..., 3) float64 RGB array.

  Example:
    >>> hsv_to_rgb(np.array([0.0, 1.0, 1.0]))
    array([1., 0., 0.])
  """
  hsv = np.asarray(hsv, np.float64)
  h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
  h6 = (h % 1.0) * 6.0
  sector = np.floor(h6)
  f = h6 - sector
  p = v * (1.0 - s)
  q = v * (1.0 - s * f)
  t = v * (1.0 - s * (1.0 - f))
  sector = sector.astype(np.int64) % 6
  r = np.choose(sector, [v, q, p, p, t, v])
  g = np.choose(sector, [t, v, v, q, p, p])
  b = np.choose(sector, [p, p, t, v, v, q])
  return np.stack([r, g, b], axis=-1)
