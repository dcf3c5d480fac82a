"""The registry of corruptions and the public entry point :func:`corrupt`.

Example:
  >>> len(TYPE0 + TYPE1), sorted(CORRUPTIONS)[:2]
  (20, ['brightness', 'contrast'])
"""
from __future__ import annotations

from typing import Callable

import jax
import numpy as np

from jaxdd._src import checks
from jaxdd._src import rng as _rng
from jaxdd.data.corruptions.digital import (_brightness, _contrast, _elastic, _jpeg, _original,
                                            _pixelate, _saturate)
from jaxdd.data.corruptions.noise_blur import (_defocus_blur, _gaussian_blur, _gaussian_noise,
                                               _glass_blur, _impulse_noise,
                                               _motion_blur_corruption, _shot_noise,
                                               _speckle_noise, _zoom_blur)
from jaxdd.data.corruptions.weather import _fog, _frost, _snow, _spatter
from jaxdd.data.support import open_progress

TYPE0: tuple[str, ...] = ("snow", "frost", "fog", "brightness", "contrast",
                          "spatter", "elastic", "jpeg", "pixelate", "saturate")
TYPE1: tuple[str, ...] = ("gaussian_noise", "shot_noise", "impulse_noise",
                          "speckle_noise", "gaussian_blur", "defocus_blur",
                          "glass_blur", "motion_blur", "zoom_blur", "original")

# Images per internal chunk. It bounds the float64 temporaries (512 x 32 x 32 x
# 3 x 8 B = 12.6 MB each) and does not change results, because randomness is
# drawn per image.
_CHUNK = 512
_MIN_SIDE = 8

_IMPLS: dict[str, Callable] = {
    "snow": _snow, "frost": _frost, "fog": _fog, "brightness": _brightness,
    "contrast": _contrast, "spatter": _spatter, "elastic": _elastic,
    "jpeg": _jpeg, "pixelate": _pixelate, "saturate": _saturate,
    "gaussian_noise": _gaussian_noise, "shot_noise": _shot_noise,
    "impulse_noise": _impulse_noise, "speckle_noise": _speckle_noise,
    "gaussian_blur": _gaussian_blur, "defocus_blur": _defocus_blur,
    "glass_blur": _glass_blur, "motion_blur": _motion_blur_corruption,
    "zoom_blur": _zoom_blur, "original": _original,
}


# ----------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------
def _check_images(images) -> np.ndarray:
  """Validate and convert to float64 in [0, 1] (a fresh copy)."""
  arr = np.asarray(images)
  # Shape from the shared check; the value contract (uint8, or float in [0, 1]
  # up to rounding, returned as float64) is this module's own.
  checks.check_images(arr, "corrupt", channels=(3,), floating=False, finite=False,
                      shape_fix="add a batch axis with images[None] or convert grey images "
                                "to RGB")
  if arr.shape[1] < _MIN_SIDE or arr.shape[2] < _MIN_SIDE:
    raise ValueError(f"corrupt: images must be at least {_MIN_SIDE}x{_MIN_SIDE}, got "
                     f"{arr.shape[1]}x{arr.shape[2]}")
  if arr.dtype == np.uint8:
    return arr.astype(np.float64) / 255.0
  if not np.issubdtype(arr.dtype, np.floating):
    raise ValueError(f"corrupt: images must be float in [0, 1] or uint8, got dtype "
                     f"{arr.dtype}; convert with images.astype(np.float32)")
  x = arr.astype(np.float64)
  if not np.all(np.isfinite(x)):
    raise ValueError("corrupt: images contain NaN or inf; clean the input first")
  if x.size and (x.min() < -1e-6 or x.max() > 1.0 + 1e-6):
    raise ValueError(
        f"corrupt: float images must lie in [0, 1], got range [{x.min()}, {x.max()}]; "
        "pass uint8 images or divide by 255")
  return np.clip(x, 0.0, 1.0)


def _check_key(key) -> list[int]:
  if not (isinstance(key, jax.Array)
          and jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)):
    raise ValueError("key must be a typed JAX key, e.g. jax.random.key(0); "
                     f"got {type(key).__name__} "
                     f"{getattr(key, 'dtype', '')}".rstrip())
  if key.shape != ():
    raise ValueError(f"key must be a single key (shape ()), got shape "
                     f"{key.shape}; pass keys[i] instead of a batch of keys")
  return _rng.key_words(key)


def corrupt(key: jax.Array, images, name: str, *, severity: int,
            progress=None) -> np.ndarray:
  """Apply one Corrupted CIFAR-10 corruption to a batch of images.

  Args:
    key: a typed ``jax.random.key``. Each image gets its own numpy Generator,
      spawned from the key in index order, so the same key gives a
      byte-identical result.
    images: (N, H, W, 3) float in [0, 1] or uint8 in 0..255, with H, W >= 8.
      The input is not modified.
    name: one of ``TYPE0 + TYPE1`` (see ``CORRUPTIONS``).
    severity: Hendrycks & Dietterich level, an int in 1..5. The LfF builder
      passes its folder severity + 1.
    progress: report images done per internal chunk: None = only for 5,000
      images or more, True/False, or an open :func:`jaxdd.progress.bar` to
      add to (see :func:`jaxdd.data.sources.open_progress`). It never changes
      the result; :func:`jaxdd.progress.set_quiet` silences it.

  Returns:
    (N, H, W, 3) float32 array in [0, 1]. "original" returns the input
    unchanged, as float32.

  Raises:
    ValueError: unknown name, severity outside 1..5, wrong shape or dtype,
      NaN/inf, float values outside [0, 1], or a key that is not a single
      typed key.

  Example:
    >>> y = corrupt(jax.random.key(1), np.zeros((2, 32, 32, 3), np.uint8),
    ...             "gaussian_noise", severity=3)
    >>> y.dtype, y.shape
    (dtype('float32'), (2, 32, 32, 3))
  """
  if name not in _IMPLS:
    raise ValueError(f"unknown corruption {name!r}; valid names: "
                     f"{', '.join(TYPE0 + TYPE1)}")
  if (isinstance(severity, bool) or not isinstance(severity, (int, np.integer))
      or not 1 <= int(severity) <= 5):
    raise ValueError(f"severity must be an int in 1..5 (Hendrycks levels; LfF "
                     f"uses its folder severity + 1), got {severity!r}")
  severity = int(severity)
  x = _check_images(images)
  seed = _check_key(key)
  n = x.shape[0]
  out = np.empty(x.shape, np.float32)
  if n == 0:
    return out
  rngs = np.random.default_rng(seed).spawn(n)
  impl = _IMPLS[name]
  bar, owned = open_progress(progress, n, f"corrupt {name}", kind="corrupt")
  try:
    for start in range(0, n, _CHUNK):
      stop = min(start + _CHUNK, n)
      y = impl(x[start:stop], rngs[start:stop], severity)
      out[start:stop] = np.clip(y, 0.0, 1.0)
      bar.update(stop - start)
  finally:
    if owned:
      bar.close()
  return out


def _make_public(name: str) -> Callable:
  def fn(key: jax.Array, images, *, severity: int) -> np.ndarray:
    return corrupt(key, images, name, severity=severity)
  fn.__name__ = fn.__qualname__ = name
  fn.__doc__ = (f"``corrupt(key, images, {name!r}, severity=severity)``: see "
                ":func:`corrupt`.")
  return fn


# name -> fn(key, images, *, severity) -> (N, H, W, 3) float32 in [0, 1].
CORRUPTIONS: dict[str, Callable] = {n: _make_public(n) for n in TYPE0 + TYPE1}

