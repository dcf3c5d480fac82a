"""Argument checks shared by jaxdd: the NHWC image-batch check, the tracer test,
the input checks of training and evaluation (:mod:`jaxdd.train`,
:mod:`jaxdd.evaluate`, :mod:`jaxdd.debias`), and the array checks of the KDE
boundary (:mod:`jaxdd.weighting`: rows, masks, positive scalars and block sizes, finite values).

:func:`check_images` is the one check of an NHWC image batch (rank, batch
size, channels, float dtype, finite values). Callers pass the name of the
public function that received the array (so the error names it) and the fix
that fits their data contract. It works on numpy arrays, jax arrays and
tracers: under ``jit``/``grad``/``vmap`` the shape and dtype are still
checked, the values are not (:func:`is_traced`).

Data-layer inputs with a different contract (uint8 or [0, 1] floats, rank 3
allowed) are checked by :func:`jaxdd.data.support.validate_images`.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxdd.structs import Batch, SynSet


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
      ok = bool(_all_finite(images))
    else:
      ok = bool(np.isfinite(images).all())
    if not ok:
      raise ValueError(f"{who}: {what} contain NaN or Inf; {finite_fix}")


@jax.jit
def _all_finite(a: jax.Array) -> jax.Array:
  """Whether every element is finite, one program (eagerly, two per shape)."""
  return jnp.isfinite(a).all()


@jax.jit
def _min_max(a: jax.Array) -> tuple[jax.Array, jax.Array]:
  """The smallest and the largest element, one program (eagerly, two per shape)."""
  return a.min(), a.max()


# Training and evaluation inputs (keys, training sets, test batches, lr grids).

def check_key(key) -> None:
  """Raises ``ValueError`` unless ``key`` is one typed key (``jax.random.key(seed)``)."""
  if not (isinstance(key, jax.Array) and jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
          and key.shape == ()):
    raise ValueError("key must be a single typed key from jax.random.key(seed); "
                     f"got {getattr(key, 'dtype', type(key))} {getattr(key, 'shape', '')}")


def check_train_images(who: str, name: str, images, finite: bool = True) -> jax.Array:
  """Checked training/test images (NHWC, float, finite) as a float32 array."""
  images = jnp.asarray(images)
  check_images(images, who, what=name, finite=finite, min_count=1,
               float_fix="pass normalised float images (jaxdd.data.normalize)",
               finite_fix="fix the data (or the distillation run) before evaluating")
  return images.astype(jnp.float32)


def check_syn(syn: SynSet, num_classes: int | None, who: str) -> tuple[jax.Array, jax.Array]:
  """Checked ``(images float32, labels)`` of a training set: integer (n,) labels
  (int32) or soft (n, classes) labels (float32)."""
  if getattr(syn.images, "ndim", None) == 5:  # a stack of SynSets, as vmapped runs give
    raise ValueError(f"{who}: syn.images has shape {syn.images.shape}, a stack of "
                     f"{syn.images.shape[0]} SynSets; evaluate them with "
                     "jaxdd.evaluate.evaluate_synsets(keys, [jax.tree.map(lambda a: a[i], syn) "
                     "for i in range(n)], ...), one program for all, or take one the same way")
  images = check_train_images(who, "syn.images", syn.images)
  labels = jnp.asarray(syn.labels)
  if labels.shape[:1] != images.shape[:1] or labels.ndim not in (1, 2):
    raise ValueError(f"syn.labels must have shape (n,) or (n, classes) with n = "
                     f"{images.shape[0]}, got {labels.shape}")
  if labels.ndim == 1:
    if not jnp.issubdtype(labels.dtype, jnp.integer):
      raise ValueError(f"integer syn.labels expected, got dtype {labels.dtype}")
    low, high = (int(v) for v in _min_max(labels)) if labels.size else (0, 0)
    if num_classes is not None and (low < 0 or high >= num_classes):
      raise ValueError(f"syn.labels must lie in [0, {num_classes}); got range "
                       f"[{low}, {high}]")
    labels = labels.astype(jnp.int32)
  else:
    if num_classes is not None and labels.shape[1] != num_classes:
      raise ValueError(f"soft syn.labels must have {num_classes} columns, got {labels.shape[1]}")
    labels = labels.astype(jnp.float32)
  return images, labels


def check_batch(name: str, batch: Batch, like: jax.Array, num_classes: int, who: str) -> Batch:
  """A checked test/validation Batch shaped like the training images ``like``."""
  images = check_train_images(who, f"{name}.images", batch.images)
  if images.shape[1:] != like.shape[1:]:
    raise ValueError(f"{name} images are {images.shape[1:]} but the training images are "
                     f"{like.shape[1:]}; both must share H, W, C")
  labels = np.asarray(batch.labels)
  if labels.shape != (images.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"{name}.labels must be integer of shape ({images.shape[0]},), got "
                     f"{labels.dtype} {labels.shape}")
  if labels.min() < 0 or labels.max() >= num_classes:
    raise ValueError(f"{name}.labels must lie in [0, {num_classes})")
  bias = None if batch.bias is None else np.asarray(batch.bias)
  if bias is not None and (bias.shape != labels.shape or not np.issubdtype(bias.dtype, np.integer)
                           or bias.min() < 0):
    raise ValueError(f"{name}.bias must be non-negative integers of shape {labels.shape}")
  aligned = None if batch.aligned is None else np.asarray(batch.aligned)
  if aligned is not None and aligned.shape != labels.shape:
    raise ValueError(f"{name}.aligned must have shape {labels.shape}, got {aligned.shape}")
  return Batch(images, labels, bias, aligned)


def infer_num_classes(model, syn_labels) -> int:
  """``model.num_classes``, else the soft-label width, else ``max(labels) + 1``."""
  n = getattr(model, "num_classes", None)
  if isinstance(n, int):
    return n
  if syn_labels.ndim == 2:
    return int(syn_labels.shape[1])
  return int(np.asarray(syn_labels).max()) + 1


def check_lrs(lrs, protocol) -> tuple[float, ...]:
  """A learning-rate grid as a tuple of positive finite floats (default ``(protocol.lr,)``)."""
  if lrs is None:
    return (float(protocol.lr),)
  lrs = tuple(float(v) for v in np.atleast_1d(np.asarray(lrs, np.float64)))
  if not lrs or not all(v > 0 and math.isfinite(v) for v in lrs):
    raise ValueError(f"lrs must be a non-empty sequence of positive finite floats, got {lrs}")
  return lrs


# ---------------------------------------------------------------------------
# Array checks of the KDE boundary (concrete values only; inside jit they are skipped)
# ---------------------------------------------------------------------------

def host_eval(fn, *args):
  """Evaluates ``fn(*args)`` on concrete arrays now and fetches the result.

  ``ensure_compile_time_eval`` keeps the reduction eager even when called
  while a ``jax.jit`` is tracing (on closed-over constants), where it would
  otherwise be staged into the program and turn into a tracer.
  """
  with jax.ensure_compile_time_eval():
    return jax.device_get(fn(*args))


def check_positive_scalar(name: str, value, fix: str) -> None:
  """Raises ValueError unless a concrete ``value`` is a finite number > 0."""
  if is_traced(value):
    return
  arr = np.asarray(jax.device_get(value))
  if arr.ndim != 0:
    raise ValueError(f"{name} must be a scalar, got shape {arr.shape}")
  v = float(arr)
  if not np.isfinite(v) or v <= 0:
    raise ValueError(f"{name} must be a finite number > 0, got {v}; {fix}")


def check_finite(name: str, x: jax.Array, fix: str) -> None:
  """Raises ValueError if a concrete array contains NaN or Inf."""
  if is_traced(x):
    return
  # Reduce on device and fetch one flag per kind: no full host copy.
  has_nan, has_inf = host_eval(
      lambda a: (jnp.any(jnp.isnan(a)), jnp.any(jnp.isinf(a))), x)
  if has_nan:
    raise ValueError(f"{name} contain NaN; {fix}")
  if has_inf:
    raise ValueError(f"{name} contain Inf; {fix}")


def check_positive_int(name: str, value) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) \
      or value < 1:
    raise ValueError(f"{name} must be a positive int, got {value!r}")
  return int(value)


def compute_dtype(x: jax.Array):
  """Computation dtype: at least float32 (bf16/f16 inputs are upcast).

  Chosen by width rather than ``jnp.promote_types``, which refuses
  bf16 -> f32 under ``jax_numpy_dtype_promotion='strict'``.
  """
  return x.dtype if jnp.dtype(x.dtype).itemsize >= 4 else jnp.dtype(
      jnp.float32)


def as_rows(name: str, x) -> jax.Array:
  x = jnp.asarray(x)
  if x.ndim != 2:
    raise ValueError(
        f"{name} must have shape (n, d), got {x.shape}; reshape to 2-D")
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise ValueError(f"{name} must be floating point, got {x.dtype}")
  return x.astype(compute_dtype(x))


def as_mask(name: str, mask, n: int) -> jax.Array:
  mask = jnp.asarray(mask)
  if mask.shape != (n,):
    raise ValueError(
        f"{name} must have shape ({n},) to match the rows, got {mask.shape}")
  if mask.dtype != jnp.bool_:
    raise ValueError(f"{name} must be boolean, got {mask.dtype}; "
                     "pass e.g. `mask.astype(bool)`")
  return mask


def check_labels(labels: np.ndarray, num_classes) -> None:
  """Integer labels in [0, num_classes) with a positive int ``num_classes``."""
  if not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"labels must be integers, got {labels.dtype}")
  if not (isinstance(num_classes, (int, np.integer)) and num_classes >= 1):
    raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
  if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
    raise ValueError(f"labels must lie in [0, {num_classes}); got [{labels.min()}, {labels.max()}]")
