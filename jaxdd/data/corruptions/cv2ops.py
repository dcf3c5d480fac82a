"""cv2's Canny, distance transform and histogram equalisation, re-implemented in numpy/scipy.

The ``spatter`` corruption of the reference runs them through OpenCV; these
functions follow cv2's integer, fixed-point and rounding details.

Example:
  >>> _equalize_hist(np.array([[0, 0], [1, 2]], np.uint8)).tolist()
  [[0, 0], [128, 255]]
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

# cv2 building blocks for spatter, re-implemented
# ----------------------------------------------------------------------------
# cv2 tests |gy| / |gx| against tan(22.5 deg) in 17.15 fixed point:
# |gy| << 15 < |gx| * TG22, and tan(67.5) = tan(22.5) + 2.
_CANNY_TG22 = float(int(0.4142135623730950488 * (1 << 15) + 0.5))


def _canny(img: np.ndarray, low: float, high: float) -> np.ndarray:
  """Batched Canny edges of (N, H, W) uint8 images, as cv2.Canny(img, low, high).

  It uses the 3x3 Sobel operator with no pre-smoothing, the L1 magnitude
  |gx| + |gy|, non-maximum suppression along the gradient direction quantised
  to 0/45/90/135 degrees, and hysteresis. A strong pixel has magnitude > high.
  A weak pixel (> low) is kept if its 8-connected component contains a strong
  one.
  """
  f = img.astype(np.float64)
  # 3x3 Sobel within each image, with replicated borders (cv2's choice).
  # ndimage.sobel is not used: it would also smooth across the batch axis.
  deriv, smooth = np.array([-1.0, 0.0, 1.0]), np.array([1.0, 2.0, 1.0])
  gx = ndimage.correlate1d(ndimage.correlate1d(f, deriv, axis=2, mode="nearest"),
                           smooth, axis=1, mode="nearest")
  gy = ndimage.correlate1d(ndimage.correlate1d(f, deriv, axis=1, mode="nearest"),
                           smooth, axis=2, mode="nearest")
  mag = np.abs(gx) + np.abs(gy)
  pad = np.pad(mag, ((0, 0), (1, 1), (1, 1)))  # outside the image counts as 0

  def nb(dr: int, dc: int) -> np.ndarray:
    h, w = mag.shape[1:]
    return pad[:, 1 + dr:1 + dr + h, 1 + dc:1 + dc + w]

  ax, ay = np.abs(gx), np.abs(gy) * (1 << 15)  # exact integers in float64
  horizontal = ay < ax * _CANNY_TG22
  vertical = ay > ax * (_CANNY_TG22 + (1 << 16))
  same_sign = (gx * gy) > 0
  # As in cv2: along rows and columns the pixel must beat the 'previous'
  # neighbour strictly and the 'next' one weakly, so plateaus keep one pixel.
  # Along diagonals both comparisons are strict.
  is_max = np.where(
      horizontal, (mag > nb(0, -1)) & (mag >= nb(0, 1)),
      np.where(vertical, (mag > nb(-1, 0)) & (mag >= nb(1, 0)),
               np.where(same_sign, (mag > nb(-1, -1)) & (mag > nb(1, 1)),
                        (mag > nb(-1, 1)) & (mag > nb(1, -1)))))
  weak = is_max & (mag > low)
  strong = weak & (mag > high)
  # Connected components within each image only (no links across axis 0).
  structure = np.zeros((3, 3, 3), bool)
  structure[1] = True
  labels, count = ndimage.label(weak, structure=structure)
  keep = np.zeros(count + 1, bool)
  keep[np.unique(labels[strong])] = True
  keep[0] = False
  return keep[labels]


# cv2 DIST_L2 with a 5x5 mask uses chamfer weights 1, 1.4 and 2.1969 (for
# steps (0,1), (1,1) and (1,2)). They are held in 16.16 fixed point
# (cvRound(w * 2^16)), with 2 border pixels at "infinity" = UINT_MAX - LONG.
_DT_HV = 65536
_DT_DIAG = int(np.rint(np.float32(1.4) * np.float32(65536)))
_DT_LONG = int(np.rint(np.float32(2.1969) * np.float32(65536)))
_DT_MAX = 2 ** 32 - 1 - _DT_LONG


def _distance_transform_5x5(zero: np.ndarray) -> np.ndarray:
  """cv2.distanceTransform(src, DIST_L2, 5) of a batch; ``zero`` (N, H, W) marks src == 0.

  The classic two-pass chamfer (forward raster scan, then backward). Each
  pass's left/right recurrence tmp[j] = min(c[j], tmp[j -/+ 1] + HV) is a
  running min: tmp[j] = j HV + cummin_k (c[k] - k HV). So each row is
  vectorised over images and columns, and only rows loop in Python.
  """
  n, h, w = zero.shape
  t = np.full((n, h + 4, w + 4), _DT_MAX, np.int64)
  cols = np.arange(w, dtype=np.int64) * _DT_HV
  L, D, V = _DT_LONG, _DT_DIAG, _DT_HV
  for i in range(2, h + 2):  # forward: neighbours above and to the left
    up2, up1 = t[:, i - 2], t[:, i - 1]
    c = np.minimum.reduce([
        up2[:, 1:w + 1] + L, up2[:, 3:w + 3] + L, up1[:, 0:w] + L,
        up1[:, 1:w + 1] + D, up1[:, 2:w + 2] + V, up1[:, 3:w + 3] + D,
        up1[:, 4:w + 4] + L])
    c = np.where(zero[:, i - 2], 0, c)
    run = np.minimum.accumulate(c - cols, axis=1) + cols
    t[:, i, 2:w + 2] = np.minimum(run, _DT_MAX)
  for i in range(h + 1, 1, -1):  # backward: neighbours below and to the right
    dn1, dn2 = t[:, i + 1], t[:, i + 2]
    c = np.minimum.reduce([
        t[:, i, 2:w + 2], dn2[:, 3:w + 3] + L, dn2[:, 1:w + 1] + L,
        dn1[:, 4:w + 4] + L, dn1[:, 3:w + 3] + D, dn1[:, 2:w + 2] + V,
        dn1[:, 1:w + 1] + D, dn1[:, 0:w] + L])
    run = np.minimum.accumulate((c + cols)[:, ::-1], axis=1)[:, ::-1] - cols
    t[:, i, 2:w + 2] = run
  return (t[:, 2:h + 2, 2:w + 2] / 65536.0).astype(np.float32)


def _equalize_hist(img: np.ndarray) -> np.ndarray:
  """cv2.equalizeHist of one uint8 image: LUT = round(255 * (cdf - cdf_min) / (N - cdf_min))."""
  hist = np.bincount(img.ravel(), minlength=256)
  first = int(np.flatnonzero(hist)[0])
  total = img.size
  if hist[first] == total:  # a constant image maps to itself
    return img.copy()
  scale = 255.0 / (total - hist[first])
  lut = np.clip(np.rint((np.cumsum(hist) - hist[first]) * scale), 0, 255)
  lut[:first] = 0
  return lut.astype(np.uint8)[img]

