"""Array helpers around :class:`~jaxdd.data.biased.BiasedDataset`.

Data contract: images are NHWC; statistics are per channel (last axis).
:func:`normalize` is a pure ``jnp`` function (jit-compatible) mapping [0, 1]
images to the normalised space ``(x - mean) / std`` that distillation and
evaluation work in (structs.py); :func:`channel_stats` computes the mean/std on
the host in float64 so that a 500 MB training set gives exact-to-float32
statistics.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxdd._src import checks
from jaxdd.structs import Batch

__all__ = ["as_batch", "channel_stats", "denormalize", "normalize", "to_uint8"]


def _stats_arrays(mean, std):
  mean = jnp.asarray(mean, jnp.float32)
  std = jnp.asarray(std, jnp.float32)
  if mean.ndim > 1 or std.ndim > 1:
    raise ValueError(f"mean/std must be scalars or (C,) vectors, got shapes {mean.shape}, "
                     f"{std.shape}.")
  try:
    bad = bool(jnp.any(std <= 0))
  except jax.errors.ConcretizationTypeError:  # under jit: values unknown, skip the check
    bad = False
  if bad:
    raise ValueError("std must be > 0 in every channel; use channel_stats() on the training set.")
  return mean, std


def normalize(images: jax.Array, mean, std) -> jax.Array:
  """Per-channel standardisation ``(images - mean) / std``.

  Args:
    images: (..., C) images (numpy or jax), typically float32 in [0, 1].
    mean: scalar or (C,) channel means.
    std: scalar or (C,) channel stds, all > 0.

  Returns:
    ``float32`` jax array of the same shape.

  Raises:
    ValueError: mean/std of the wrong rank or channel count, or std <= 0.

  Example:
    >>> normalize(np.ones((1, 2, 2, 3)), [0.5] * 3, [0.5] * 3).max()
    Array(1., dtype=float32)
  """
  x = jnp.asarray(images, jnp.float32)
  mean, std = _stats_arrays(mean, std)
  for v in (mean, std):
    if v.ndim == 1 and v.shape[0] != x.shape[-1]:
      raise ValueError(f"mean/std have {v.shape[0]} channels but images have {x.shape[-1]} "
                       "(channels last).")
  return (x - mean) / std


def denormalize(images: jax.Array, mean, std) -> jax.Array:
  """Inverse of :func:`normalize`: ``images * std + mean``.

  Args:
    images: (..., C) normalised images.
    mean: scalar or (C,) channel means.
    std: scalar or (C,) channel stds.

  Returns:
    ``float32`` jax array of the same shape.

  Example:
    >>> denormalize(normalize(np.ones((1, 3)), 0.5, 0.25), 0.5, 0.25).tolist()
    [[1.0, 1.0, 1.0]]
  """
  x = jnp.asarray(images, jnp.float32)
  mean, std = _stats_arrays(mean, std)
  return x * std + mean


def channel_stats(images, *, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
  """Per-channel mean and (population) std of an image set.

  Args:
    images: (N, H, W, C) array, or anything with an ``images`` attribute
      (a :class:`~jaxdd.data.biased.BiasedDataset`).
    chunk: images per float64 accumulation block (bounds the memory).

  Returns:
    ``(mean, std)``, each (C,) ``float32``.

  Raises:
    ValueError: not 4-D, empty, or non-finite values.

  Example:
    >>> m, s = channel_stats(np.stack([np.zeros((2, 2, 1)), np.ones((2, 2, 1))]))
    >>> m.tolist(), s.tolist()
    ([0.5], [0.5])
  """
  x = getattr(images, "images", images)
  x = np.asarray(x)
  # Finiteness is checked below, chunk by chunk, on the float64 copies the sums use.
  checks.check_images(x, "channel_stats", floating=False, finite=False, min_count=1)
  c = x.shape[-1]
  s1 = np.zeros(c, np.float64)
  s2 = np.zeros(c, np.float64)
  for i in range(0, x.shape[0], chunk):
    blk = x[i:i + chunk].reshape(-1, c).astype(np.float64)
    if not np.all(np.isfinite(blk)):
      raise ValueError("images contain NaN or Inf.")
    s1 += blk.sum(0)
    s2 += np.square(blk).sum(0)
  n = x.size // c
  mean = s1 / n
  var = np.maximum(s2 / n - np.square(mean), 0.0)
  return mean.astype(np.float32), np.sqrt(var).astype(np.float32)


def as_batch(ds) -> Batch:
  """Wraps a :class:`~jaxdd.data.biased.BiasedDataset` as a device-side ``Batch``.

  Args:
    ds: the dataset (its images stay in [0, 1]; normalise separately).

  Returns:
    ``Batch(images float32, labels int32, bias int32, aligned bool)`` of jax arrays.

  Example:
    >>> b = as_batch(load("cmnist", split="test", conflict_ratio=0.05))  # doctest: +SKIP
  """
  return Batch(images=jnp.asarray(ds.images, jnp.float32),
               labels=jnp.asarray(ds.labels, jnp.int32),
               bias=jnp.asarray(ds.bias, jnp.int32),
               aligned=jnp.asarray(ds.aligned, jnp.bool_))


def to_uint8(images) -> np.ndarray:
  """Float images in [0, 1] as the 8 bits an image file holds; uint8 images as they are.

  Args:
    images: float images in [0, 1] (any shape), or uint8.

  Returns:
    ``clip(rint(images * 255), 0, 255)`` as uint8, computed in float64 (round half to even).

  Example:
    >>> to_uint8(np.array([0.0, 0.5, 1.0], np.float32)).tolist()
    [0, 128, 255]
  """
  x = np.asarray(images)
  if x.dtype == np.uint8:
    return x
  return np.clip(np.rint(x.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
