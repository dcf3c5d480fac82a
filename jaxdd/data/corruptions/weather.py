"""The weather corruptions: fog, frost, snow and spatter (LfF's Type0 list).

Each maps ``(x: (N, H, W, 3) float64 in [0, 1], rngs, level)`` to a float
array; :func:`~jaxdd.data.corruptions.corrupt` clips it and casts it to float32.

Example:
  >>> rngs = np.random.default_rng(0).spawn(2)
  >>> _frost_texture(rngs, 8, 8).shape
  (2, 8, 8, 3)
"""
from __future__ import annotations

import numpy as np

from jaxdd.data.corruptions.cv2ops import _canny, _distance_transform_5x5, _equalize_hist
from jaxdd.data.corruptions.filters import (Generators, _clipped_zoom, _motion_blur,
                                            _normalise01, _plasma_fractal, _shift_gather,
                                            _spatial_filter, _spatial_gaussian, _stack_draws)

# ----------------------------------------------------------------------------
# Per-severity constants (index = severity - 1). Source: alinlab/LfF
# data/corrupted_cifar10_protocol.py (= hendrycks/robustness make_cifar_c.py).
# ----------------------------------------------------------------------------
# (fog strength, plasma wibble decay)
_FOG = ((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75))
# (image weight, frost weight)
_FROST = ((1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45))
# (mean, std, zoom, threshold, blur radius, blur sigma, image mix)
_SNOW = ((0.1, 0.2, 1, 0.6, 8, 3, 0.95),
         (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
         (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
         (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
         (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8))
# (mean, std, sigma, threshold, intensity / mud sigma, 0 = liquid / 1 = mud)
_SPATTER = ((0.62, 0.1, 0.7, 0.7, 0.5, 0),
            (0.65, 0.1, 0.8, 0.7, 0.5, 0),
            (0.65, 0.3, 1, 0.69, 0.5, 0),
            (0.65, 0.1, 0.7, 0.69, 0.6, 1),
            (0.65, 0.1, 0.5, 0.68, 0.6, 1))

_WATER_RGB = np.array([175, 238, 238], np.float64) / 255.0  # pale turquoise
_MUD_RGB = np.array([63, 42, 20], np.float64) / 255.0  # mud brown
_LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R 601 grey, as cv2 RGB2GRAY


def _fog(x, rngs, s):
  strength, decay = _FOG[s - 1]
  h, w = x.shape[1:3]
  size = max(2, 1 << (max(h, w) - 1).bit_length())
  u = _stack_draws(rngs, lambda r: r.uniform(-1.0, 1.0, (size, size)))
  fractal = _plasma_fractal(u, decay)[:, :h, :w, None]
  peak = x.max(axis=(1, 2, 3), keepdims=True)
  return (x + strength * fractal) * peak / (peak + strength)


def _frost_texture(rngs: Generators, h: int, w: int) -> np.ndarray:
  """Procedural stand-in for LfF's frost photographs: (N, H, W, 3) in [0, 1].

  The texture is a soft blue-white haze, fine grain, and bright crystal
  needles. The needles are sparse seeds, each streaked into a short line
  along one of three random directions per image. Borders wrap, so there is
  no edge artefact. Mean brightness is about 0.55, and the crystals are near 1.
  """
  n, side = len(rngs), min(h, w)
  length = max(2, side // 6)  # needle half-length in pixels

  def draw(r: np.random.Generator):
    return (r.random((h, w)), r.random((h, w)), r.random((3, h, w)),
            r.uniform(0.0, 180.0, 3))

  parts = [draw(r) for r in rngs]
  haze = _normalise01(_spatial_gaussian(
      np.stack([p[0] for p in parts]), side / 6.0, mode="wrap"))
  grain = _normalise01(_spatial_gaussian(
      np.stack([p[1] for p in parts]), 0.6, mode="wrap"))
  seeds_all = np.stack([p[2] for p in parts])  # (N, 3, H, W)
  angles = np.deg2rad(np.stack([p[3] for p in parts]))  # (N, 3)
  needles = np.zeros((n, h, w))
  offsets = np.arange(-length, length + 1)
  taper = 1.0 - np.abs(offsets) / (length + 1.0)  # brighter at the centre
  for k in range(3):
    # About one seed per 60 pixels.
    seeds = np.where(seeds_all[:, k] > 1.0 - 1.0 / 60.0, 1.0, 0.0)
    for t, wt in zip(offsets, taper):
      dy = np.rint(t * np.sin(angles[:, k])).astype(np.int64)
      dx = np.rint(t * np.cos(angles[:, k])).astype(np.int64)
      needles = np.maximum(needles, wt * _shift_gather(seeds, dy, dx, wrap=True))
  # Soften the 1-pixel needles a little: the reference's photographs are
  # downscaled 5x, so their crystals are anti-aliased.
  needles = np.clip(1.4 * _spatial_gaussian(needles, 0.5, mode="wrap"), 0.0, 1.0)
  tex = np.clip(0.2 + 0.3 * haze + 0.15 * grain + 0.55 * needles, 0.0, 1.0)
  tint = np.array([0.88, 0.94, 1.0])  # icy blue-white
  return tex[..., None] * tint


def _frost(x, rngs, s):
  a, b = _FROST[s - 1]
  return a * x + b * _frost_texture(rngs, x.shape[1], x.shape[2])


def _snow(x, rngs, s):
  mean, std, zoom, thresh, radius, sigma, mix = _SNOW[s - 1]
  h, w = x.shape[1:3]
  parts = [(r.normal(mean, std, (h, w)), r.uniform(-135.0, -45.0))
           for r in rngs]
  layer = np.stack([p[0] for p in parts])[..., None]
  angles = np.array([p[1] for p in parts])
  layer = _clipped_zoom(layer, zoom)
  layer[layer < thresh] = 0.0
  # The reference stores the layer as an 8-bit PNG (truncating cast), blurs
  # it in ImageMagick, and decodes 8 bits again. We keep both quantisations.
  layer = np.floor(np.clip(layer, 0.0, 1.0) * 255.0) / 255.0
  layer = _motion_blur(layer, radius, sigma, angles)
  layer = np.rint(layer * 255.0) / 255.0
  grey = (x @ _LUMA)[..., None]
  x = mix * x + (1.0 - mix) * np.maximum(x, grey * 1.5 + 0.5)
  return x + layer + layer[:, ::-1, ::-1]


def _spatter(x, rngs, s):
  mean, std, sigma, thresh, intensity, mud = _SPATTER[s - 1]
  h, w = x.shape[1:3]
  liquid = _stack_draws(rngs, lambda r: r.normal(mean, std, (h, w)))
  liquid = _spatial_gaussian(liquid, sigma)
  liquid[liquid < thresh] = 0.0
  if mud:
    m = _spatial_gaussian((liquid > thresh).astype(np.float64), intensity)
    m[m < 0.8] = 0.0
    m = m[..., None]
    return x * (1.0 - m) + _MUD_RGB * m
  # Liquid: shade the drops by their distance to the drop outlines (cv2
  # pipeline of the reference, re-implemented).
  liquid_u8 = (liquid * 255.0).astype(np.uint8)  # truncating, as the reference
  edges = _canny(liquid_u8, 50, 150)
  # Distance to the nearest edge pixel, truncated at 20. With no edge at all,
  # cv2 returns ~65536 everywhere, which the truncation turns into 20.
  dist = np.minimum(_distance_transform_5x5(edges), np.float32(20.0))
  # cv2.blur of float32: a double-precision 3x3 sum times 1/9, cast to
  # float32, then .astype(uint8) truncates.
  ones = np.ones((3, 3))
  dist = np.floor((_spatial_filter(dist.astype(np.float64), ones) * (1.0 / 9.0))
                  .astype(np.float32))
  dist = np.stack([_equalize_hist(d.astype(np.uint8)) for d in dist])
  emboss = np.array([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]], np.float64)
  dist = np.clip(_spatial_filter(dist.astype(np.float64), emboss), 0, 255)
  dist = np.rint(_spatial_filter(dist, ones) / 9.0)  # uint8 blur rounds
  # The reference multiplies the *uint8* liquid layer by the shading.
  m = liquid_u8 * dist
  peak = m.max(axis=(1, 2), keepdims=True)
  m = m / np.where(peak > 0, peak, 1.0) * intensity
  return x + m[..., None] * _WATER_RGB

