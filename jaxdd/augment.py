"""Differentiable Siamese Augmentation (DSA) as pure functions on NHWC batches.

Data contract: ``images`` is a float (N, H, W, C) batch, usually in the
*normalised* space of the dataset (docs/protocols.md), so "fill with 0"
means "fill with the mean colour". Outputs have the input's shape and dtype and
are never clipped, so ops can be chained. Every op is differentiable with
respect to ``images``; the augmentation parameters are not differentiated.

Two kinds of function (the dm-pix pattern):

- deterministic ops take the parameter explicitly:
  :func:`brightness_with`, :func:`saturation_with`, :func:`contrast_with`,
  :func:`translate`, :func:`cutout_with`, :func:`flip_with`,
  :func:`scale_with`, :func:`rotate_with`, :func:`affine`
  (:func:`affine_grid` + :func:`grid_sample`);
- random ops ``f(key, images, *, <option>=reference default)`` draw their
  parameters ONCE per call, with shape ``()``, and then call the deterministic
  op: :func:`brightness`, :func:`saturation`, :func:`contrast`, :func:`color`,
  :func:`crop`, :func:`cutout`, :func:`flip`, :func:`scale`, :func:`rotate`.

Because the parameters do not depend on the batch size, **the same key gives
the same transform** to a real batch of 256 and a synthetic batch of 10: this is
DSA's siamese mode (docs/protocols.md), without the reference's
wall-clock seeds and ``latestseed`` counter. For per-image parameters (the
reference's non-siamese mode, used when training networks) vmap over per-image
keys: ``jax.vmap(lambda k, x: op(k, x[None])[0])(jax.random.split(key, n),
images)``; :func:`dsa` does this for you with ``siamese=False``.

:func:`dsa` parses the reference's strategy strings
(``"color_crop_cutout_flip_scale_rotate"``) and, like the reference's mode
'S', picks ONE family per call with ``jax.random.randint`` + ``lax.switch``, so
the whole thing stays inside one jitted program.

Per-image crops for contrastive learning: :func:`random_resized_crop` and
:func:`two_views` (the views of the SupCon surrogate, :mod:`jaxdd.surrogate`)
draw their parameters per image, not once per call.

Siamese use in distillation (one transform per class and step, shared by the
real and synthetic images of that class)::

  aug = dsa()                                   # siamese=True
  k_c = jax.random.fold_in(k_aug, c)            # one key per class
  real_c, syn_c = aug(k_c, real_c), aug(k_c, syn_c)

or, for all classes at once, ``jax.vmap(aug)(class_keys, real_by_class)`` and
the same ``class_keys`` for the synthetic images. Under ``vmap`` the family
index is batched, so ``lax.switch`` evaluates every family and selects
(correct, but it costs all six families' compute); a Python loop over classes
inside the jitted step avoids that at the price of a larger program.
Evaluation / network training uses ``dsa(strategy, siamese=False)``: one family
per batch, per-image parameters.

Conventions shared with PyTorch (the reference runs ``F.affine_grid`` and
``F.grid_sample`` with their defaults): bilinear interpolation, zero padding,
``align_corners=False``; the 2x3 matrix ``theta`` maps normalised OUTPUT
coordinates (x along W, y along H, both in [-1, 1]) to normalised INPUT
sampling coordinates, so a scale factor > 1 shrinks the content.
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jaxdd._src import checks

AugmentFn = Callable[[jax.Array, jax.Array], jax.Array]
"""``fn(key, images) -> images``: a random augmentation with parameters drawn
from ``key``."""

FAMILIES = ("color", "crop", "cutout", "flip", "scale", "rotate")
"""The reference's DSA families (utils.py ``AUGMENT_FNS``)."""

DEFAULT_STRATEGY = "color_crop_cutout_flip_scale_rotate"


class DSAParams(NamedTuple):
  """The reference's ``ParamDiffAug`` defaults (docs/protocols.md).

  Attributes:
    prob_flip: probability of a horizontal flip.
    ratio_scale: sx, sy ~ U[1/ratio_scale, ratio_scale).
    ratio_rotate: maximum rotation angle in degrees.
    ratio_crop_pad: maximum translation = int(H * ratio + 0.5) pixels.
    ratio_cutout: cutout side = int(H * ratio + 0.5) pixels.
    brightness: additive shift (u - 0.5) * brightness.
    saturation: saturation factor u * saturation.
    contrast: contrast factor u + contrast.
  """
  prob_flip: float = 0.5
  ratio_scale: float = 1.2
  ratio_rotate: float = 15.0
  ratio_crop_pad: float = 0.125
  ratio_cutout: float = 0.5
  brightness: float = 1.0
  saturation: float = 2.0
  contrast: float = 0.5


# ---------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------


def _check_images(images: jax.Array, name: str) -> None:
  # Shape and dtype only: the ops run under jit, and never look at the values.
  checks.check_images(images, name, finite=False, shape_fix="add a batch axis with images[None]",
                      float_fix="convert with images.astype(jnp.float32)")


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


def _validate(params: DSAParams) -> None:
  _check_number(params.prob_flip, "prob_flip", 0.0, 1.0)
  _check_number(params.ratio_scale, "ratio_scale", 1.0, math.inf)
  _check_number(params.ratio_rotate, "ratio_rotate", 0.0, 180.0)
  _static_ratio(params.ratio_crop_pad, "ratio_crop_pad", 1.0)
  _static_ratio(params.ratio_cutout, "ratio_cutout", 1.0)
  for field in ("brightness", "saturation", "contrast"):
    _check_number(getattr(params, field), field, 0.0, math.inf)


# ---------------------------------------------------------------------------
# Deterministic ops
# ---------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------
# Random ops: parameters drawn once per call (shape ()), so same key == same
# transform for any batch (siamese).
# ---------------------------------------------------------------------------


def brightness(key: jax.Array, images: jax.Array, *, strength: float = 1.0) -> jax.Array:
  """Random brightness: ``x + (u - 0.5) * strength``, u ~ U[0, 1) (reference ``rand_brightness``).

  Args:
    key: PRNG key; one u for the whole batch.
    images: (N, H, W, C) float batch.
    strength: the reference's ``brightness`` (1.0).

  Returns:
    The shifted batch.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> brightness(jax.random.key(0), jnp.zeros((2, 4, 4, 3))).shape
    (2, 4, 4, 3)
  """
  _check_images(images, "brightness")
  _check_number(strength, "strength", 0.0, math.inf)
  u = jax.random.uniform(key, (), images.dtype)
  return brightness_with(images, (u - 0.5) * strength)


def saturation(key: jax.Array, images: jax.Array, *, strength: float = 2.0) -> jax.Array:
  """Random saturation: factor ``u * strength``, u ~ U[0, 1) (reference ``rand_saturation``).

  Args:
    key: PRNG key; one u for the whole batch.
    images: (N, H, W, C) float batch.
    strength: the reference's ``saturation`` (2.0).

  Returns:
    ``saturation_with(images, u * strength)``.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> saturation(jax.random.key(0), jnp.zeros((2, 4, 4, 3))).shape
    (2, 4, 4, 3)
  """
  _check_images(images, "saturation")
  _check_number(strength, "strength", 0.0, math.inf)
  u = jax.random.uniform(key, (), images.dtype)
  return saturation_with(images, u * strength)


def contrast(key: jax.Array, images: jax.Array, *, strength: float = 0.5) -> jax.Array:
  """Random contrast: factor ``u + strength``, u ~ U[0, 1) (reference ``rand_contrast``).

  Args:
    key: PRNG key; one u for the whole batch.
    images: (N, H, W, C) float batch.
    strength: the reference's ``contrast`` (0.5), so factors lie in [0.5, 1.5).

  Returns:
    ``contrast_with(images, u + strength)``.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> contrast(jax.random.key(0), jnp.zeros((2, 4, 4, 3))).shape
    (2, 4, 4, 3)
  """
  _check_images(images, "contrast")
  _check_number(strength, "strength", 0.0, math.inf)
  u = jax.random.uniform(key, (), images.dtype)
  return contrast_with(images, u + strength)


_brightness, _saturation, _contrast = brightness, saturation, contrast


def color(key: jax.Array, images: jax.Array, *, brightness: float = 1.0,
          saturation: float = 2.0, contrast: float = 0.5) -> jax.Array:
  """The reference's 'color' family: brightness, then saturation, then contrast.

  Each step takes its own subkey: ``kb, ks, kc = jax.random.split(key, 3)``.

  Args:
    key: PRNG key.
    images: (N, H, W, C) float batch.
    brightness: strength of :func:`brightness` (1.0).
    saturation: strength of :func:`saturation` (2.0).
    contrast: strength of :func:`contrast` (0.5).

  Returns:
    The colour-jittered batch.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> color(jax.random.key(0), jnp.zeros((2, 4, 4, 3))).shape
    (2, 4, 4, 3)
  """
  kb, ks, kc = jax.random.split(key, 3)
  # The keyword names shadow the module-level ops, hence the aliases.
  images = _brightness(kb, images, strength=brightness)
  images = _saturation(ks, images, strength=saturation)
  return _contrast(kc, images, strength=contrast)


def crop(key: jax.Array, images: jax.Array, *, ratio: float = 0.125) -> jax.Array:
  """Random integer translation (reference ``rand_crop``), zero fill.

  ``tx ~ randint[-s, s]`` moves rows and ``ty ~ randint[-s', s']`` columns,
  with ``s = int(H * ratio + 0.5)`` (4 for 28 and 32 pixels) and
  ``s' = int(W * ratio + 0.5)``; ``kx, ky = jax.random.split(key)``.

  Args:
    key: PRNG key.
    images: (N, H, W, C) float batch.
    ratio: the reference's ``ratio_crop_pad`` (0.125); a Python float.

  Returns:
    ``translate(images, tx, ty)``.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> crop(jax.random.key(0), jnp.ones((2, 8, 8, 1))).shape
    (2, 8, 8, 1)
  """
  _check_images(images, "crop")
  ratio = _static_ratio(ratio, "ratio", 1.0)
  _, h, w, _ = images.shape
  sh, sw = int(h * ratio + 0.5), int(w * ratio + 0.5)
  kx, ky = jax.random.split(key)
  tx = jax.random.randint(kx, (), -sh, sh + 1)
  ty = jax.random.randint(ky, (), -sw, sw + 1)
  return translate(images, tx, ty)


def cutout(key: jax.Array, images: jax.Array, *, ratio: float = 0.5) -> jax.Array:
  """Random cutout (reference ``rand_cutout``).

  Side ``L = int(H * ratio + 0.5)`` (14 for 28, 16 for 32 pixels), centre row
  ``cx ~ randint[0, H + (1 - L % 2))`` (so [0, H] for even L), centre column
  likewise from W; ``kx, ky = jax.random.split(key)``.

  Args:
    key: PRNG key.
    images: (N, H, W, C) float batch.
    ratio: the reference's ``ratio_cutout`` (0.5); a Python float.

  Returns:
    ``cutout_with(images, cx, cy, (L_h, L_w))``.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> cutout(jax.random.key(0), jnp.ones((2, 8, 8, 1))).shape
    (2, 8, 8, 1)
  """
  _check_images(images, "cutout")
  ratio = _static_ratio(ratio, "ratio", 1.0)
  _, h, w, _ = images.shape
  lh, lw = int(h * ratio + 0.5), int(w * ratio + 0.5)
  kx, ky = jax.random.split(key)
  cx = jax.random.randint(kx, (), 0, h + (1 - lh % 2))
  cy = jax.random.randint(ky, (), 0, w + (1 - lw % 2))
  return cutout_with(images, cx, cy, (lh, lw))


def flip(key: jax.Array, images: jax.Array, *, prob: float = 0.5) -> jax.Array:
  """Random horizontal flip (along W) with probability ``prob`` (reference ``rand_flip``).

  Args:
    key: PRNG key; one draw for the whole batch.
    images: (N, H, W, C) float batch.
    prob: flip probability (0.5).

  Returns:
    The flipped or unchanged batch.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> flip(jax.random.key(0), jnp.ones((2, 4, 4, 3))).shape
    (2, 4, 4, 3)
  """
  _check_images(images, "flip")
  _check_number(prob, "prob", 0.0, 1.0)
  return flip_with(images, jax.random.uniform(key, ()) < prob)


def scale(key: jax.Array, images: jax.Array, *, ratio: float = 1.2) -> jax.Array:
  """Random anisotropic scaling (reference ``rand_scale``).

  ``sx, sy ~ U[1/ratio, ratio)``, independent (``kx, ky = split(key)``), then
  :func:`scale_with`.

  Args:
    key: PRNG key.
    images: (N, H, W, C) float batch.
    ratio: the reference's ``ratio_scale`` (1.2), >= 1.

  Returns:
    The scaled batch.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> scale(jax.random.key(0), jnp.ones((2, 8, 8, 3))).shape
    (2, 8, 8, 3)
  """
  _check_images(images, "scale")
  _check_number(ratio, "ratio", 1.0, math.inf)
  kx, ky = jax.random.split(key)
  lo = 1.0 / ratio
  sx = jax.random.uniform(kx, (), images.dtype) * (ratio - lo) + lo
  sy = jax.random.uniform(ky, (), images.dtype) * (ratio - lo) + lo
  return scale_with(images, sx, sy)


def rotate(key: jax.Array, images: jax.Array, *, degrees: float = 15.0) -> jax.Array:
  """Random rotation by ``(u - 0.5) * 2 * degrees`` degrees (reference ``rand_rotate``).

  Args:
    key: PRNG key; one angle for the whole batch.
    images: (N, H, W, C) float batch.
    degrees: the reference's ``ratio_rotate`` (15.0), the maximum |angle|.

  Returns:
    ``rotate_with(images, angle_in_radians)``.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> rotate(jax.random.key(0), jnp.ones((2, 8, 8, 3))).shape
    (2, 8, 8, 3)
  """
  _check_images(images, "rotate")
  _check_number(degrees, "degrees", 0.0, 180.0)
  u = jax.random.uniform(key, (), images.dtype)
  return rotate_with(images, (u - 0.5) * 2.0 * degrees / 180.0 * math.pi)


# ---------------------------------------------------------------------------
# Combinators
# ---------------------------------------------------------------------------


def identity(key: jax.Array, images: jax.Array) -> jax.Array:
  """The no-op augmentation (strategy ``''`` / ``'none'``).

  Args:
    key: PRNG key (unused).
    images: any batch.

  Returns:
    ``images`` unchanged.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> identity(jax.random.key(0), jnp.ones((1, 2, 2, 1))).shape
    (1, 2, 2, 1)
  """
  del key
  return images


def chain(*augs: AugmentFn) -> AugmentFn:
  """Applies ``augs`` in order, the i-th with ``jax.random.split(key, len(augs))[i]``.

  Args:
    *augs: augmentations ``fn(key, images)``; none gives :func:`identity`.

  Returns:
    The composed augmentation (siamese if every part is).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> aug = chain(crop, flip)
    >>> aug(jax.random.key(0), jnp.ones((2, 8, 8, 3))).shape
    (2, 8, 8, 3)
  """
  augs = tuple(augs)
  if not augs:
    return identity

  def fn(key: jax.Array, images: jax.Array) -> jax.Array:
    for aug, k in zip(augs, jax.random.split(key, len(augs))):
      images = aug(k, images)
    return images

  return fn


def choose(*augs: AugmentFn) -> AugmentFn:
  """Applies ONE of ``augs``, picked uniformly per call (the reference's mode 'S').

  ``k_choice, k_apply = jax.random.split(key)``; the index is
  ``randint(k_choice, (), 0, len(augs))`` and the branch runs through
  ``lax.switch``, so the choice is jittable (no Python branch on a traced value).
  Under ``vmap`` with batched keys, ``lax.switch`` evaluates every branch and
  selects, which is correct but costs all branches.

  Args:
    *augs: at least one augmentation ``fn(key, images)``.

  Returns:
    The choosing augmentation.

  Raises:
    ValueError: no augmentation given.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> aug = choose(crop, cutout)
    >>> aug(jax.random.key(0), jnp.ones((2, 8, 8, 3))).shape
    (2, 8, 8, 3)
  """
  augs = tuple(augs)
  if not augs:
    raise ValueError("choose() needs at least one augmentation; use identity for none")
  if len(augs) == 1:
    only = augs[0]
    return lambda key, images: only(jax.random.split(key)[1], images)

  def fn(key: jax.Array, images: jax.Array) -> jax.Array:
    k_choice, k_apply = jax.random.split(key)
    index = jax.random.randint(k_choice, (), 0, len(augs))
    return lax.switch(index, augs, k_apply, images)

  return fn


def per_sample(aug: AugmentFn) -> AugmentFn:
  """Turns a batch-wide augmentation into one with per-image parameters.

  ``fn(key, images)`` applies ``aug`` to image i with
  ``jax.random.split(key, N)[i]`` (vmap), i.e. the reference's non-siamese
  mode.

  Args:
    aug: an augmentation ``fn(key, images)`` on NHWC batches.

  Returns:
    The per-image augmentation.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> per_sample(crop)(jax.random.key(0), jnp.ones((3, 8, 8, 1))).shape
    (3, 8, 8, 1)
  """

  def fn(key: jax.Array, images: jax.Array) -> jax.Array:
    _check_images(images, "per_sample augmentation")
    keys = jax.random.split(key, images.shape[0])
    return jax.vmap(lambda k, x: aug(k, x[None])[0])(keys, images)

  return fn


# ---------------------------------------------------------------------------
# DSA strategies
# ---------------------------------------------------------------------------


def parse_strategy(strategy: str) -> tuple[str, ...]:
  """Splits a reference strategy string into its families.

  Args:
    strategy: e.g. ``"color_crop_cutout_flip_scale_rotate"``; ``""``,
      ``"none"`` and ``"None"`` mean no augmentation.

  Returns:
    The families in order, e.g. ``("color", "crop")``; ``()`` for none.

  Raises:
    ValueError: an unknown or empty family name.

  Example:
    >>> parse_strategy("color_crop")
    ('color', 'crop')
  """
  if not isinstance(strategy, str):
    raise ValueError(f"strategy must be a string such as {DEFAULT_STRATEGY!r}, got {strategy!r}")
  if strategy.strip().lower() in ("", "none"):
    return ()
  families = tuple(strategy.strip().split("_"))
  for fam in families:
    if fam not in FAMILIES:
      raise ValueError(f"unknown DSA family {fam!r} in strategy {strategy!r}; families are "
                       f"{', '.join(FAMILIES)} joined by '_' (e.g. {DEFAULT_STRATEGY!r}), "
                       "or 'none'")
  return families


def family(name: str, *, params: DSAParams = DSAParams()) -> AugmentFn:
  """The siamese augmentation of one DSA family with the given parameters.

  Args:
    name: one of ``FAMILIES``.
    params: the DSA parameters.

  Returns:
    ``fn(key, images)``.

  Raises:
    ValueError: unknown family or out-of-range parameters.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> family("crop")(jax.random.key(0), jnp.ones((2, 8, 8, 3))).shape
    (2, 8, 8, 3)
  """
  _validate(params)
  p = params
  fns = {
      "color": lambda k, x: color(k, x, brightness=p.brightness, saturation=p.saturation,
                                  contrast=p.contrast),
      "crop": lambda k, x: crop(k, x, ratio=p.ratio_crop_pad),
      "cutout": lambda k, x: cutout(k, x, ratio=p.ratio_cutout),
      "flip": lambda k, x: flip(k, x, prob=p.prob_flip),
      "scale": lambda k, x: scale(k, x, ratio=p.ratio_scale),
      "rotate": lambda k, x: rotate(k, x, degrees=p.ratio_rotate),
  }
  if name not in fns:
    raise ValueError(f"unknown DSA family {name!r}; use one of {', '.join(FAMILIES)}")
  return fns[name]


def dsa(strategy: str = DEFAULT_STRATEGY, *, siamese: bool = True,
        params: DSAParams = DSAParams(), mode: str = "one") -> AugmentFn:
  """The DSA augmentation of a reference strategy string.

  ``fn(key, images)`` first splits ``k_choice, k_apply = jax.random.split(key)``.
  In ``mode="one"`` (the reference's 'S', its default) it draws ONE family with
  ``randint(k_choice, (), 0, n_families)`` and runs it through ``lax.switch``
  with ``k_apply``; with a single family it runs that family with ``k_apply``.
  In ``mode="all"`` (the reference's 'M') it applies every family in order,
  ``chain``-style, with subkeys of ``k_apply``.

  - ``siamese=True`` (DSA distillation): one parameter set for the whole batch,
    so calling ``fn`` with the same key on the real and the synthetic images of
    a class applies the identical transform to both. Use one key per (class,
    step), e.g. ``jax.random.fold_in(k_aug, c)``.
  - ``siamese=False`` (network training: the DSA inner loop and evaluation):
    still one family per batch, but per-image parameters, drawn with
    ``jax.random.split(k_apply, N)`` under ``vmap``.

  Args:
    strategy: families joined by '_' (see :func:`parse_strategy`); 'color'
      means brightness -> saturation -> contrast. ``''``/``'none'`` gives
      :func:`identity`.
    siamese: batch-wide (True) or per-image (False) parameters.
    params: :class:`DSAParams` (reference defaults).
    mode: ``"one"`` (pick one family per call) or ``"all"``.

  Returns:
    A jittable ``fn(key, images) -> images``.

  Raises:
    ValueError: unknown family, bad mode or out-of-range parameters.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> aug = jax.jit(dsa("color_crop_cutout_flip_scale_rotate"))
    >>> k = jax.random.key(0)
    >>> real, syn = jnp.ones((256, 8, 8, 3)), jnp.ones((10, 8, 8, 3))
    >>> bool(jnp.allclose(aug(k, real)[:10], aug(k, syn)))
    True
  """
  families = parse_strategy(strategy)
  _validate(params)
  if mode not in ("one", "all"):
    raise ValueError(f"mode must be 'one' (reference 'S') or 'all' (reference 'M'), got {mode!r}")
  if not families:
    return identity
  branches = [family(name, params=params) for name in families]
  if not siamese:
    branches = [per_sample(b) for b in branches]

  if mode == "all":
    composed = chain(*branches)
    return lambda key, images: composed(jax.random.split(key)[1], images)
  return choose(*branches)


# ---------------------------------------------------------------------------
# Per-image random-resized crops: the two contrastive views of the SupCon
# surrogate (jaxdd.surrogate). Unlike the DSA ops above, parameters are drawn
# per image.
# ---------------------------------------------------------------------------


def _interp_matrix(start: jax.Array, length: jax.Array, out_size: int, in_size: int,
                   flip: jax.Array) -> jax.Array:
  """(out_size, in_size) bilinear interpolation matrix for one image axis.

  Output pixel ``i`` (centre ``i + 0.5``) samples the input coordinate
  ``start + (i + 0.5) * length / out_size - 0.5`` (pixel-centre convention, the
  one of ``torch.nn.functional.interpolate(align_corners=False)``), clamped to
  the valid range; the hat function ``max(0, 1 - |src - k|)`` is bilinear
  interpolation along this axis. Writing resizing as two small matrix products
  (rows, then columns) is cheaper on CPU than a gather and is differentiable.
  """
  i = jnp.arange(out_size, dtype=jnp.float32)
  src = start + (i + 0.5) * (length / out_size) - 0.5
  src = jnp.where(flip, src[::-1], src)
  src = jnp.clip(src, 0.0, in_size - 1.0)
  k = jnp.arange(in_size, dtype=jnp.float32)
  return jnp.maximum(0.0, 1.0 - jnp.abs(src[:, None] - k[None, :]))


def _crop_resize(image: jax.Array, y0: jax.Array, x0: jax.Array, h: jax.Array, w: jax.Array,
                 flip: jax.Array) -> jax.Array:
  """Crop the (sub-pixel) box [y0, y0+h) x [x0, x0+w) of one HWC image and resize it
  bilinearly back to HxW, optionally mirrored left-right."""
  height, width = image.shape[0], image.shape[1]
  my = _interp_matrix(y0, h, height, height, jnp.asarray(False))
  mx = _interp_matrix(x0, w, width, width, flip)
  return jnp.einsum("ih,hwc,jw->ijc", my, image, mx)


def random_resized_crop(key: jax.Array, images: jax.Array, *, scale: tuple[float, float] = (0.5, 1.0),
                        ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
                        flip: bool = False) -> jax.Array:
  """Random-resized crop (+ optional horizontal flip), parameters drawn *per image*.

  For each image: area fraction ``s ~ U(scale)``, aspect ``r = w/h`` log-uniform
  in ``ratio``, box ``w = sqrt(s r) W``, ``h = sqrt(s / r) H`` (clipped to the
  image), top-left corner uniform over the positions that keep the box inside;
  the box is resized back to HxW bilinearly. Unlike torchvision's integer boxes
  and 10 rejection retries, boxes are continuous and clipped, which keeps the
  op a fixed-shape, jit-friendly program. With ``flip`` each image is mirrored
  with probability 1/2.

  There is deliberately no colour jitter or grayscale: they would erase the
  colour/background bias that the density estimate must see
  (docs/protocols.md).

  Per-image parameters (not one draw per call as in the siamese DSA ops of
  this module): contrastive views should differ image by image.

  Args:
    key: typed PRNG key.
    images: (N, H, W, C) float images.
    scale: (min, max) area fraction, 0 < min <= max <= 1.
    ratio: (min, max) aspect ratio, > 0.
    flip: whether to apply random horizontal flips.

  Returns:
    (N, H, W, C) augmented images (same dtype as the computation, float32).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> x = jnp.ones((4, 8, 8, 3))
    >>> random_resized_crop(jax.random.key(0), x).shape
    (4, 8, 8, 3)
  """
  # Any dtype: the crop computes in float32.
  checks.check_images(images, "random_resized_crop", floating=False, finite=False,
                      shape_fix="add a batch axis with images[None]")
  n, height, width = images.shape[:3]
  k_area, k_ratio, k_y, k_x, k_flip = jax.random.split(key, 5)
  area = jax.random.uniform(k_area, (n,), minval=scale[0], maxval=scale[1])
  log_r = jax.random.uniform(k_ratio, (n,), minval=math.log(ratio[0]), maxval=math.log(ratio[1]))
  r = jnp.exp(log_r)
  w = jnp.minimum(jnp.sqrt(area * r) * width, float(width))
  h = jnp.minimum(jnp.sqrt(area / r) * height, float(height))
  y0 = jax.random.uniform(k_y, (n,)) * (height - h)
  x0 = jax.random.uniform(k_x, (n,)) * (width - w)
  if flip:
    flips = jax.random.bernoulli(k_flip, 0.5, (n,))
  else:
    flips = jnp.zeros((n,), dtype=bool)
  return jax.vmap(_crop_resize)(images.astype(jnp.float32), y0, x0, h, w, flips)


def two_views(key: jax.Array, images: jax.Array, *, scale: tuple[float, float] = (0.5, 1.0),
              ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0), flip: bool = False) -> jax.Array:
  """Two augmented views of every image, stacked as ``[view1; view2]`` (2N, H, W, C).

  The two views are drawn from two *independent* keys, so every image gets two
  different crops. This is the opposite of DSA's siamese rule (one shared key
  for the real and synthetic batch, i.e. the *same* transform): contrastive
  learning needs two different views of one image, while DSA needs one
  transform applied to two batches.

  Args:
    key: typed PRNG key (split into one key per view).
    images: (N, H, W, C) images.
    scale, ratio, flip: see :func:`random_resized_crop`.

  Returns:
    (2N, H, W, C) views; rows ``i`` and ``N + i`` are views of image ``i``.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> two_views(jax.random.key(0), jnp.ones((3, 8, 8, 3))).shape
    (6, 8, 8, 3)
  """
  k1, k2 = jax.random.split(key)
  v1 = random_resized_crop(k1, images, scale=scale, ratio=ratio, flip=flip)
  v2 = random_resized_crop(k2, images, scale=scale, ratio=ratio, flip=flip)
  return jnp.concatenate([v1, v2], axis=0)
