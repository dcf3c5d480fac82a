"""The deterministic image ops of :mod:`jaxdd.augment`: each takes its parameter explicitly
(the dm-pix pattern). Also the argument checks the augmentation modules share.

Conventions are :mod:`jaxdd.augment`'s: NHWC floats; bilinear sampling with zero padding and
``align_corners=False``, as PyTorch's ``F.grid_sample`` with its defaults.
"""
from __future__ import annotations

import functools
import inspect
import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxdd._src import checks


# ---------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------


def _check_images(images: jax.Array, name: str) -> None:
  # Shape and dtype only: the ops run under jit, and never look at the values.
  checks.check_images(images, name, finite=False,
                      shape_fix="give an (N, H, W, C) batch or one (H, W, C) image (a "
                                "grayscale (H, W) image takes a channel axis: x[..., None])",
                      float_fix="convert with images.astype(jnp.float32)")


def one_image_too(fn=None, *, squeeze: bool = True):
  """Lets an augmentation take one ``(H, W, C)`` image as well as an ``(N, H, W, C)`` batch
  (dm-pix's convention): the image goes through as a batch of one, and the result is that
  batch's image (``squeeze=False``: the batch the function returns, e.g. two views)."""
  if fn is None:
    return functools.partial(one_image_too, squeeze=squeeze)
  names = list(inspect.signature(fn).parameters)
  pos = names.index("images")

  @functools.wraps(fn)
  def wrapped(*args, **kwargs):
    if len(args) > pos:
      x = args[pos]
      single = np.ndim(x) == 3
      if single:
        args = args[:pos] + (x[None],) + args[pos + 1:]
    else:
      x = kwargs.get("images")
      single = x is not None and np.ndim(x) == 3
      if single:
        kwargs["images"] = x[None]
    out = fn(*args, **kwargs)
    return out[0] if single and squeeze else out
  return wrapped


def _check_number(value, name: str, lo: float, hi: float, *, lo_open: bool = False,
                  hi_open: bool = False) -> None:
  """Range-checks a Python number; traced values pass (they cannot be checked)."""
  if not isinstance(value, (int, float)):
    return
  bad = (not math.isfinite(value) or value < lo or value > hi or (lo_open and value == lo)
         or (hi_open and value == hi))
  if bad:
    lb, rb = ("(" if lo_open else "["), (")" if hi_open else "]")
    raise ValueError(f"{name} must be in {lb}{lo}, {hi}{rb}, got {value!r}")


def _static_ratio(value, name: str, hi: float) -> float:
  """Ratios that set a pixel count must be Python numbers (shapes are static)."""
  if not isinstance(value, (int, float)):
    raise ValueError(f"{name} sets a pixel count, so it must be a Python float, got {type(value)}")
  _check_number(value, name, 0.0, hi)
  return float(value)


# ---------------------------------------------------------------------------
# Deterministic ops
# ---------------------------------------------------------------------------


@one_image_too
def brightness_with(images: jax.Array, delta) -> jax.Array:
  """Adds ``delta`` to every pixel and channel.

  Args:
    images: (N, H, W, C) float batch.
    delta: scalar shift.

  Returns:
    ``images + delta``.

  Example:
    >>> import jax.numpy as jnp
    >>> float(brightness_with(jnp.zeros((1, 2, 2, 3)), 0.25)[0, 0, 0, 0])
    0.25
  """
  _check_images(images, "brightness_with")
  return images + jnp.asarray(delta, images.dtype)


@one_image_too
def saturation_with(images: jax.Array, factor) -> jax.Array:
  """Scales each pixel's deviation from its channel mean: ``(x - m) * factor + m``.

  Args:
    images: (N, H, W, C) float batch.
    factor: scalar; 0 gives grey (every channel = the pixel's channel mean).

  Returns:
    The re-saturated batch; ``m`` is the mean over channels of each pixel.

  Example:
    >>> import jax.numpy as jnp
    >>> x = jnp.array([0.0, 1.0]).reshape(1, 1, 1, 2)
    >>> saturation_with(x, 0.0).ravel().tolist()
    [0.5, 0.5]
  """
  _check_images(images, "saturation_with")
  m = jnp.mean(images, axis=-1, keepdims=True)
  return (images - m) * jnp.asarray(factor, images.dtype) + m


@one_image_too
def contrast_with(images: jax.Array, factor) -> jax.Array:
  """Scales each image's deviation from its mean: ``(x - m) * factor + m``.

  Args:
    images: (N, H, W, C) float batch.
    factor: scalar contrast factor.

  Returns:
    The batch; ``m`` is the mean over (H, W, C) of each image.

  Example:
    >>> import jax.numpy as jnp
    >>> x = jnp.array([0.0, 1.0]).reshape(1, 1, 2, 1)
    >>> contrast_with(x, 2.0).ravel().tolist()
    [-0.5, 1.5]
  """
  _check_images(images, "contrast_with")
  m = jnp.mean(images, axis=(1, 2, 3), keepdims=True)
  return (images - m) * jnp.asarray(factor, images.dtype) + m


@one_image_too
def translate(images: jax.Array, tx, ty) -> jax.Array:
  """Integer translation with zero fill: ``out[i, j] = x[i + tx, j + ty]``.

  This is the reference's ``rand_crop`` (pad by 1, clamped gather): ``tx``
  moves rows (H) and ``ty`` columns (W); pixels whose source lies outside the
  image become 0. It is a gather, so gradients reach the source pixels.

  Args:
    images: (N, H, W, C) float batch.
    tx: integer row offset (may be traced).
    ty: integer column offset (may be traced).

  Returns:
    The translated batch.

  Example:
    >>> import jax.numpy as jnp
    >>> x = jnp.arange(1.0, 4.0).reshape(1, 1, 3, 1)
    >>> translate(x, 0, 1).ravel().tolist()
    [2.0, 3.0, 0.0]
  """
  _check_images(images, "translate")
  _, h, w, _ = images.shape
  rows = jnp.arange(h) + jnp.asarray(tx, jnp.int32)
  cols = jnp.arange(w) + jnp.asarray(ty, jnp.int32)
  out = jnp.take(images, jnp.clip(rows, 0, h - 1), axis=1)
  out = jnp.take(out, jnp.clip(cols, 0, w - 1), axis=2)
  valid = ((rows >= 0) & (rows < h))[:, None] & ((cols >= 0) & (cols < w))[None, :]
  return out * valid.astype(images.dtype)[None, :, :, None]


def _cutout_size(size) -> tuple[int, int]:
  sh, sw = (size, size) if isinstance(size, int) else tuple(size)
  if not (isinstance(sh, int) and isinstance(sw, int)) or sh < 0 or sw < 0:
    raise ValueError(f"cutout size must be a non-negative int or (int, int), got {size!r}")
  return sh, sw


@one_image_too
def cutout_with(images: jax.Array, cx, cy, size) -> jax.Array:
  """Zeroes a ``size`` square centred at row ``cx``, column ``cy``.

  As in the reference's ``rand_cutout``: the hole covers rows
  ``cx - sh // 2 ... cx - sh // 2 + sh - 1`` (likewise columns), intersected
  with the image, and is applied as a multiplicative mask, so the gradient is
  0 inside the hole and 1 elsewhere.

  Args:
    images: (N, H, W, C) float batch.
    cx: integer centre row (may be traced).
    cy: integer centre column (may be traced).
    size: static side length, an int or (rows, cols).

  Returns:
    The masked batch.

  Example:
    >>> import jax.numpy as jnp
    >>> cutout_with(jnp.ones((1, 1, 4, 1)), 0, 2, 2).ravel().tolist()
    [1.0, 0.0, 0.0, 1.0]
  """
  _check_images(images, "cutout_with")
  _, h, w, _ = images.shape
  sh, sw = _cutout_size(size)
  top = jnp.asarray(cx, jnp.int32) - sh // 2
  left = jnp.asarray(cy, jnp.int32) - sw // 2
  r, c = jnp.arange(h), jnp.arange(w)
  in_rows = (r >= top) & (r < top + sh)
  in_cols = (c >= left) & (c < left + sw)
  mask = 1 - (in_rows[:, None] & in_cols[None, :]).astype(images.dtype)
  return images * mask[None, :, :, None]


@one_image_too
def flip_with(images: jax.Array, do_flip) -> jax.Array:
  """Flips along W (horizontal) where ``do_flip`` is true.

  Args:
    images: (N, H, W, C) float batch.
    do_flip: scalar bool (may be traced); selected with ``jnp.where``, never
      a Python branch.

  Returns:
    The flipped or unchanged batch.

  Example:
    >>> import jax.numpy as jnp
    >>> flip_with(jnp.arange(3.0).reshape(1, 1, 3, 1), True).ravel().tolist()
    [2.0, 1.0, 0.0]
  """
  _check_images(images, "flip_with")
  return jnp.where(do_flip, images[:, :, ::-1, :], images)


def affine_grid(theta: jax.Array, height: int, width: int) -> jax.Array:
  """PyTorch's ``F.affine_grid`` with ``align_corners=False``, for one theta.

  Output pixel (i, j) has normalised coordinates ``x_j = (2j + 1) / W - 1``,
  ``y_i = (2i + 1) / H - 1`` (pixel centres); its sampling location is
  ``theta @ [x_j, y_i, 1]``.

  Args:
    theta: (2, 3) affine matrix (output coords -> input coords).
    height: output height H.
    width: output width W.

  Returns:
    (H, W, 2) grid; ``[..., 0]`` is x (along W), ``[..., 1]`` is y (along H).

  Example:
    >>> import jax.numpy as jnp
    >>> g = affine_grid(jnp.array([[1.0, 0, 0], [0, 1.0, 0]]), 2, 2)
    >>> g[0, 1].tolist()
    [0.5, -0.5]
  """
  theta = jnp.asarray(theta)
  if theta.shape != (2, 3):
    raise ValueError(f"theta must have shape (2, 3), got {theta.shape}; vmap for a batch")
  xs = (2.0 * jnp.arange(width) + 1.0) / width - 1.0
  ys = (2.0 * jnp.arange(height) + 1.0) / height - 1.0
  gx, gy = jnp.meshgrid(xs, ys)  # 'xy' indexing: (H, W) arrays
  base = jnp.stack([gx, gy, jnp.ones_like(gx)], axis=-1).astype(theta.dtype)
  return base @ theta.T


def _grid_sample_shared(images: jax.Array, grid: jax.Array) -> jax.Array:
  """Bilinear, zeros padding, align_corners=False; one (Ho, Wo, 2) grid for all."""
  _, h, w, _ = images.shape
  # Normalised -> pixel coordinates (align_corners=False: -1 and 1 are the
  # outer edges of the border pixels, not their centres).
  ix = ((grid[..., 0] + 1.0) * w - 1.0) / 2.0
  iy = ((grid[..., 1] + 1.0) * h - 1.0) / 2.0
  # The corner indices are constants for autodiff; the gradient w.r.t. images
  # flows through the gathers (whose transpose is a scatter-add).
  x0 = jnp.floor(ix)
  y0 = jnp.floor(iy)
  wx1, wy1 = ix - x0, iy - y0
  wx0, wy0 = 1.0 - wx1, 1.0 - wy1
  x0 = x0.astype(jnp.int32)
  y0 = y0.astype(jnp.int32)
  out = 0.0
  for yy, wy in ((y0, wy0), (y0 + 1, wy1)):
    for xx, wx in ((x0, wx0), (x0 + 1, wx1)):
      # Zero padding: taps outside the image get weight 0 (the clipped index
      # only keeps the gather in bounds).
      inside = (xx >= 0) & (xx < w) & (yy >= 0) & (yy < h)
      weight = jnp.where(inside, wx * wy, 0.0).astype(images.dtype)
      tap = images[:, jnp.clip(yy, 0, h - 1), jnp.clip(xx, 0, w - 1), :]
      out = out + tap * weight[None, :, :, None]
  return out


def grid_sample(images: jax.Array, grid: jax.Array) -> jax.Array:
  """PyTorch's ``F.grid_sample`` (bilinear, ``padding_mode='zeros'``,
  ``align_corners=False``) on NHWC images, differentiable in ``images``.

  Args:
    images: (N, H, W, C) float batch.
    grid: (Ho, Wo, 2) grid shared by the whole batch, or (N, Ho, Wo, 2) per
      image; ``[..., 0]`` is x (along W), ``[..., 1]`` is y (along H), both
      normalised to [-1, 1].

  Returns:
    (N, Ho, Wo, C) sampled batch.

  Example:
    >>> import jax.numpy as jnp
    >>> x = jnp.arange(4.0).reshape(1, 2, 2, 1)
    >>> g = affine_grid(jnp.array([[1.0, 0, 0], [0, 1.0, 0]]), 2, 2)
    >>> grid_sample(x, g).ravel().tolist()
    [0.0, 1.0, 2.0, 3.0]
  """
  _check_images(images, "grid_sample")
  grid = jnp.asarray(grid)
  if grid.ndim == 3 and grid.shape[-1] == 2:
    return _grid_sample_shared(images, grid)
  if grid.ndim == 4 and grid.shape[-1] == 2 and grid.shape[0] == images.shape[0]:
    return jax.vmap(lambda im, g: _grid_sample_shared(im[None], g)[0])(images, grid)
  raise ValueError(f"grid must have shape (Ho, Wo, 2) or (N={images.shape[0]}, Ho, Wo, 2), "
                   f"got {grid.shape}")


def affine(images: jax.Array, theta: jax.Array) -> jax.Array:
  """``grid_sample(images, affine_grid(theta, H, W))``: one 2x3 theta for the batch.

  Args:
    images: (N, H, W, C) float batch.
    theta: (2, 3) matrix mapping normalised output to input coordinates.

  Returns:
    The warped batch (same shape).

  Example:
    >>> import jax.numpy as jnp
    >>> x = jnp.ones((1, 4, 4, 1))
    >>> affine(x, jnp.array([[1.0, 0, 0], [0, 1.0, 0]])).shape
    (1, 4, 4, 1)
  """
  _check_images(images, "affine")
  theta = jnp.asarray(theta, images.dtype)
  return grid_sample(images, affine_grid(theta, images.shape[1], images.shape[2]))


@one_image_too
def scale_with(images: jax.Array, sx, sy) -> jax.Array:
  """Affine scaling with ``theta = [[sx, 0, 0], [0, sy, 0]]`` (reference ``rand_scale``).

  Args:
    images: (N, H, W, C) float batch.
    sx: factor on the x (W) sampling coordinate; > 1 shrinks the content.
    sy: factor on the y (H) sampling coordinate.

  Returns:
    The scaled batch (zero padded).

  Example:
    >>> import jax.numpy as jnp
    >>> x = jnp.arange(4.0).reshape(1, 2, 2, 1)
    >>> scale_with(x, 1.0, 1.0).ravel().tolist()
    [0.0, 1.0, 2.0, 3.0]
  """
  _check_images(images, "scale_with")
  dt = images.dtype
  sx, sy, zero = jnp.asarray(sx, dt), jnp.asarray(sy, dt), jnp.zeros((), dt)
  theta = jnp.stack([jnp.stack([sx, zero, zero]), jnp.stack([zero, sy, zero])])
  return affine(images, theta)


@one_image_too
def rotate_with(images: jax.Array, angle) -> jax.Array:
  """Affine rotation with ``theta = [[cos, -sin, 0], [sin, cos, 0]]`` (reference ``rand_rotate``).

  Args:
    images: (N, H, W, C) float batch.
    angle: angle in radians; ``pi / 2`` on a square image is ``np.rot90``
      (counter-clockwise) over the (H, W) axes.

  Returns:
    The rotated batch (zero padded).

  Example:
    >>> import jax.numpy as jnp
    >>> x = jnp.arange(4.0).reshape(1, 2, 2, 1)
    >>> rotate_with(x, 0.0).ravel().tolist()
    [0.0, 1.0, 2.0, 3.0]
  """
  _check_images(images, "rotate_with")
  dt = images.dtype
  a = jnp.asarray(angle, dt)
  c, s, zero = jnp.cos(a), jnp.sin(a), jnp.zeros((), dt)
  theta = jnp.stack([jnp.stack([c, -s, zero]), jnp.stack([s, c, zero])])
  return affine(images, theta)
