"""The random DSA families of :mod:`jaxdd.augment`.

``f(key, images, *, option=reference default)`` draws its parameters once per call (shape
``()``) and applies the deterministic op of :mod:`jaxdd.augment.ops`, so the same key gives
the same transform to a real batch and a synthetic batch (siamese DSA).
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple

import jax

from jaxdd.augment.ops import (_check_images, one_image_too, _check_number, _static_ratio, brightness_with,
                               contrast_with, cutout_with, flip_with, rotate_with,
                               saturation_with, scale_with, translate)


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
# Checks of the parameters
# ---------------------------------------------------------------------------


def _validate(params: DSAParams) -> None:
  _check_number(params.prob_flip, "prob_flip", 0.0, 1.0)
  _check_number(params.ratio_scale, "ratio_scale", 1.0, math.inf)
  _check_number(params.ratio_rotate, "ratio_rotate", 0.0, 180.0)
  _static_ratio(params.ratio_crop_pad, "ratio_crop_pad", 1.0)
  _static_ratio(params.ratio_cutout, "ratio_cutout", 1.0)
  for field in ("brightness", "saturation", "contrast"):
    _check_number(getattr(params, field), field, 0.0, math.inf)


# ---------------------------------------------------------------------------
# Random ops: parameters drawn once per call (shape ()), so same key == same
# transform for any batch (siamese).
# ---------------------------------------------------------------------------


@one_image_too
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


@one_image_too
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


@one_image_too
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


@one_image_too
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


@one_image_too
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


@one_image_too
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


@one_image_too
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


@one_image_too
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


@one_image_too
def rotate(key: jax.Array, images: jax.Array, *, degrees: float = 15.0) -> jax.Array:
  """Random rotation by ``(u - 0.5) * 2 * degrees`` degrees (reference ``rand_rotate``).

  Args:
    key: PRNG key; one angle for the whole batch.
    images: (N, H, W, C) float batch.
    degrees: the reference's ``ratio_rotate`` (15.0), the maximum absolute angle.

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
