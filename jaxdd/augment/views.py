"""Per-image random-resized crops: the two contrastive views of the SupCon surrogate
(:mod:`jaxdd.surrogate`). Unlike the DSA families, parameters are drawn per image.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jaxdd._src import checks
from jaxdd.augment.ops import one_image_too


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


@one_image_too
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
                      shape_fix="give an (N, H, W, C) batch or one (H, W, C) image")
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


@one_image_too(squeeze=False)
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
