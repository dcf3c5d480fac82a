"""Argument checks shared by jaxdd: the NHWC image-batch check and the tracer test.

:func:`check_images` is the one check of an NHWC image batch (rank, batch
size, channels, float dtype, finite values). Callers pass the name of the
public function that received the array (so the error names it) and the fix
that fits their data contract. It works on numpy arrays, jax arrays and
tracers: under ``jit``/``grad``/``vmap`` the shape and dtype are still
checked, the values are not (:func:`is_traced`).

Data-layer inputs with a different contract (uint8 or [0, 1] floats, rank 3
allowed) are checked by :func:`jaxdd.data.sources.validate_images`.
"""
from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np


def is_traced(x: Any) -> bool:
  """True when ``x`` is a tracer (inside ``jit``/``grad``/``vmap``), i.e. has no values.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> seen = []
    >>> _ = jax.jit(lambda x: seen.append(is_traced(x)) or x)(jnp.ones(2))
    >>> is_traced(jnp.ones(2)), seen
    (False, [True])
  """
  return isinstance(x, jax.core.Tracer)


def check_images(images: Any, who: str, *, what: str = "images", floating: bool = True,
                 finite: bool = True, min_count: int = 0, channels: Sequence[int] | None = None,
                 shape_fix: str = "add a batch axis with images[None] or move the channels last",
                 float_fix: str = "convert with images.astype(np.float32)",
                 finite_fix: str = "clean the data first") -> None:
  """Raises ``ValueError`` unless ``images`` is an NHWC batch as ``who`` requires.

  Checks, in this order: rank 4 and at least ``min_count`` images; the
  channel count (when ``channels`` is given); a floating dtype (when
  ``floating``); no NaN/Inf (when ``finite`` and the values are concrete).
  Nothing is converted: the caller keeps its own dtype policy.

  Args:
    images: the array (numpy, jax or a tracer).
    who: the public function that received it; every message starts with it.
    what: the argument's name in messages (e.g. ``"syn.images"``).
    floating: require a floating dtype.
    finite: require finite values (skipped for tracers).
    min_count: smallest allowed batch size N.
    channels: allowed channel counts C, or None for any.
    shape_fix, float_fix, finite_fix: the fix each message suggests.

  Raises:
    ValueError: the first check that fails, naming ``who`` and the fix.

  Example:
    >>> import numpy as np
    >>> check_images(np.zeros((2, 4, 4, 3), np.float32), "demo")
    >>> check_images(np.zeros((4, 4, 3), np.float32), "demo")
    Traceback (most recent call last):
    ...
    ValueError: demo: images must be an NHWC batch (N, H, W, C), got shape (4, 4, 3); add a batch axis with images[None] or move the channels last
  """
  shape = getattr(images, "shape", None)
  if getattr(images, "ndim", None) != 4 or shape[0] < min_count:
    layout = "(N, H, W, C)" if min_count <= 0 else f"(N >= {min_count}, H, W, C)"
    raise ValueError(f"{who}: {what} must be an NHWC batch {layout}, got shape {shape}; "
                     f"{shape_fix}")
  if channels is not None and shape[-1] not in tuple(channels):
    allowed = " or ".join(map(str, channels))
    raise ValueError(f"{who}: {what} must have {allowed} channels last (NHWC), got shape "
                     f"{shape}; {shape_fix}")
  if floating and not jnp.issubdtype(images.dtype, jnp.floating):
    raise ValueError(f"{who}: {what} must be float, got dtype {images.dtype}; {float_fix}")
  if finite and not is_traced(images):
    if isinstance(images, jax.Array):
      ok = bool(jnp.isfinite(images).all())
    else:
      ok = bool(np.isfinite(images).all())
    if not ok:
      raise ValueError(f"{who}: {what} contain NaN or Inf; {finite_fix}")
