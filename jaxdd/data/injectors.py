"""Bias assignment and bias injectors of :mod:`jaxdd.data.biased`; they work on any user arrays.

The protocols (LfF's ``make_attr_labels``, foreground / background colouring, corruption by
attribute) are described in :mod:`jaxdd.data.biased`.
"""
from __future__ import annotations

import math
import numbers
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jaxdd._src import rng as _rng
from jaxdd.data import sources as _sources
from jaxdd.data.sources import validate_images, validate_labels

# LfF's colors.th (alinlab/LfF data/resource/colors.th, shape (10, 3, 1, 1)),
# decoded to RGB in [0, 1]; values as tabulated in docs/datasets.md, "The palettes"
PALETTE = np.array([
    [0.9837, 0.3125, 0.1686],
    [0.9905, 0.9156, 0.3515],
    [0.6730, 0.4611, 0.5798],
    [0.7833, 0.8316, 0.6013],
    [0.0880, 0.7780, 0.9818],
    [0.3214, 0.9611, 0.4464],
    [0.0246, 0.2357, 0.7587],
    [0.5552, 0.1016, 0.7618],
    [0.2077, 0.3929, 0.0187],
    [0.8337, 0.2024, 0.2669],
], dtype=np.float32)
PALETTE.setflags(write=False)

# The 10-colour map of ReBias' Biased-MNIST as FairDD uses it for C-MNIST-FG
# (clovaai/rebias and zqhang/FairDD, data_handler/colour_mnist.py: COLOUR_MAP in 0..255).
FAIRDD_PALETTE = np.array([
    [255, 0, 0], [255, 128, 0], [255, 255, 0], [255, 255, 128], [0, 255, 0],
    [0, 255, 255], [0, 0, 255], [128, 0, 255], [255, 0, 255], [255, 255, 255],
], dtype=np.float32) / np.float32(255.0)
FAIRDD_PALETTE.setflags(write=False)



def _real(x, what: str) -> float:
  if isinstance(x, bool) or not isinstance(x, numbers.Real):
    raise ValueError(f"{what} must be a number, got {x!r}.")
  x = float(x)
  if not math.isfinite(x):
    raise ValueError(f"{what} must be finite, got {x}.")
  return x


def _to_float(x: np.ndarray) -> np.ndarray:
  if x.dtype == np.uint8:
    # Divide (not multiply by 1/255) to match torchvision's ToTensor bit for bit.
    return np.divide(x, np.float32(255.0), dtype=np.float32)
  return x.astype(np.float32, copy=False)


#: images per block in the colourisers (temporaries stay cache-sized)
_BLOCK = 4096


def _as_key(key) -> jax.Array:
  """Accepts a typed key (preferred) or a legacy uint32[2] key."""
  if isinstance(key, (jax.Array, np.ndarray)):
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
      if key.shape != ():
        raise ValueError(f"key must be a single key (shape ()), got shape {key.shape}.")
      return key
    if key.dtype == np.uint32 and key.shape == (2,):
      return jax.random.wrap_key_data(jnp.asarray(key))
  raise ValueError(
      f"key must be a typed PRNG key (jax.random.key(seed)), got {type(key).__name__}; "
      "pass key=jax.random.key(0).")


def _numpy_rng(key) -> np.random.Generator:
  """numpy Generator derived from a jax key (same key -> same stream)."""
  return _rng.numpy_rng(_as_key(key))


# ----------------------------------------------------------------------------
# Bias assignment.
# ----------------------------------------------------------------------------


def _class_bias_counts(n: int, c: int, aligned_ratio: float, num_bias: int) -> np.ndarray:
  """Per-bias counts of one class under LfF's milestone rounding."""
  # Same float64 expression as LfF: a * eye + (1 - a) / (K - 1) * (1 - eye).
  row = np.full(num_bias, (1.0 - aligned_ratio) / (num_bias - 1), np.float64)
  row[c] = aligned_ratio
  milestones = np.round(n * np.cumsum(row)).astype(np.int64)
  # LfF assigns sample j the first bias whose milestone exceeds j; the final
  # milestone is N_c up to float error, pinned here so every sample is covered.
  milestones = np.minimum(milestones, n)
  milestones[-1] = n
  return np.diff(np.concatenate([[0], milestones]))


def _check_assignment_args(labels, aligned_ratio, num_bias) -> tuple[np.ndarray, float]:
  """Validated (labels, aligned_ratio) of a bias assignment."""
  if isinstance(num_bias, bool) or not isinstance(num_bias, numbers.Integral) or num_bias < 2:
    raise ValueError(f"num_bias must be an integer >= 2, got {num_bias!r}.")
  y = validate_labels(labels, num_classes=num_bias)
  a = _real(aligned_ratio, "aligned_ratio")
  if not 0.0 <= a <= 1.0:
    raise ValueError(f"aligned_ratio must lie in [0, 1], got {a}.")
  return y, a


def make_attr_labels(labels, *, aligned_ratio: float, num_bias: int = 10) -> np.ndarray:
  """LfF's deterministic bias assignment (``make_attr_labels``).

  For every class ``c`` (``N_c`` samples), the ratios are ``aligned_ratio``
  for bias ``c`` and ``(1 - aligned_ratio) / (num_bias - 1)`` for every other
  bias; milestones ``round(N_c * cumsum(ratios))`` cut the class's samples,
  in dataset index order, into consecutive blocks with bias 0, 1, 2, ...

  Args:
    labels: (N,) integer class labels in [0, num_bias).
    aligned_ratio: fraction of each class that gets its own bias, in [0, 1]
      (LfF passes ``1 - conflict_ratio`` for training sets, 0.1 for the
      unbiased test set).
    num_bias: number of bias values (10 for the colour/corruption palettes).

  Returns:
    (N,) ``int32`` bias labels.

  Raises:
    ValueError: bad labels or a ratio outside [0, 1].

  Example:
    >>> y = np.repeat(np.arange(10), 6000)
    >>> b = make_attr_labels(y, aligned_ratio=1 - 0.05)
    >>> int((b != y).sum())
    3000
  """
  y, a = _check_assignment_args(labels, aligned_ratio, num_bias)
  attrs = np.zeros(y.shape, np.int32)
  for c in np.unique(y):
    idx = np.flatnonzero(y == c)  # dataset index order, as LfF
    counts = _class_bias_counts(len(idx), int(c), a, num_bias)
    attrs[idx] = np.repeat(np.arange(num_bias, dtype=np.int32), counts)
  return attrs


def _classes_without_conflict(class_counts: Mapping[int, int], aligned_ratio: float,
                              num_bias: int) -> list[int]:
  bad = []
  for c, n in class_counts.items():
    if n > 0 and n - _class_bias_counts(n, c, aligned_ratio, num_bias)[c] < 1:
      bad.append(c)
  return bad


def smallest_conflict_ratio(labels, *, num_bias: int = 10) -> float:
  """Smallest conflict ratio giving every class >= 1 bias-conflicting sample.

  Uses LfF's rounding on the class sizes of ``labels`` (bisection, then
  rounded *up* to 3 significant digits and re-checked).

  Args:
    labels: (N,) class labels of the split to be biased.
    num_bias: number of bias values.

  Returns:
    The ratio as a float in (0, 1].

  Example:
    >>> smallest_conflict_ratio(np.repeat(np.arange(10), 360))
    0.00251
  """
  y = validate_labels(labels, num_classes=num_bias)
  counts = {int(c): int((y == c).sum()) for c in np.unique(y)}

  def ok(rho: float) -> bool:
    return not _classes_without_conflict(counts, 1.0 - rho, num_bias)

  lo, hi = 0.0, 1.0
  for _ in range(60):
    mid = 0.5 * (lo + hi)
    lo, hi = (lo, mid) if ok(mid) else (mid, hi)
  exp = math.floor(math.log10(hi))
  step = 10.0 ** (exp - 2)
  r = math.ceil(hi / step - 1e-9) * step
  while not ok(r) and r < 1.0:  # rounding can be non-monotone near the edge
    r += step
  return float(f"{min(r, 1.0):.3g}")


# ----------------------------------------------------------------------------
# Bias injectors (work on any user arrays).
# ----------------------------------------------------------------------------


def fairdd_attr_labels(key, labels, *, aligned_ratio: float, num_bias: int = 10) -> np.ndarray:
  """FairDD's (ReBias') bias assignment for C-MNIST-FG, with a jax key for the shuffles.

  For every class ``c`` of ``N_c`` samples: the class's samples are shuffled;
  the first ``int(N_c * aligned_ratio)`` get bias ``c``; the rest are cut into
  consecutive chunks of ``ceil(rest / (num_bias - 1))`` that go to the other
  biases ``c+1, ..., c+num_bias-1`` (mod ``num_bias``) in a shuffled order, so
  the last of them may get fewer samples (or none). FairDD's ``rho`` is
  ``aligned_ratio`` (0.9 for training, 0.1 for its unbiased test set).

  Args:
    key: typed PRNG key (the shuffles).
    labels: (N,) integer class labels in [0, num_bias).
    aligned_ratio: in [0, 1].
    num_bias: number of bias values.

  Returns:
    (N,) ``int32`` bias labels.

  Example:
    >>> b = fairdd_attr_labels(jax.random.key(0), np.repeat(np.arange(10), 100),
    ...                        aligned_ratio=0.9)
    >>> int((b[:100] == 0).sum()), int((b != np.repeat(np.arange(10), 100)).sum())
    (90, 100)
  """
  y, a = _check_assignment_args(labels, aligned_ratio, num_bias)
  rng = _numpy_rng(key)
  attrs = np.zeros(y.shape, np.int32)
  for c in range(num_bias):
    idx = np.flatnonzero(y == c)
    if not idx.size:
      continue
    idx = idx[rng.permutation(idx.size)]
    n_aligned = int(idx.size * a)
    attrs[idx[:n_aligned]] = c
    rest = idx[n_aligned:]
    if rest.size:
      chunk = math.ceil(rest.size / (num_bias - 1))
      others = (c + 1 + np.arange(num_bias - 1)) % num_bias
      others = others[rng.permutation(num_bias - 1)]
      for j, start in enumerate(range(0, rest.size, chunk)):
        attrs[rest[start:start + chunk]] = others[j]
  return attrs


def colorize_binary_foreground(images, colors, *, palette=None, pad: int = 4) -> np.ndarray:
  """FairDD's C-MNIST-FG images: binarised strokes in the bias colour on black, padded.

  Each grey image is first padded with ``pad`` rows of zeros at the top and
  ``pad`` columns at the left (28x28 -> 32x32, as FairDD pads); pixels >= 128
  (of 255) take the colour, the others are black. No colour noise.

  Args:
    images: (N, H, W) or (N, H, W, 1), uint8 0..255 or float [0, 1].
    colors: (N,) palette indices, or (N, 3) RGB in [0, 1].
    palette: (K, 3) RGB table for index colours; default :data:`FAIRDD_PALETTE`.
    pad: zero rows/columns added at the top and left.

  Returns:
    (N, H + pad, W + pad, 3) ``float32`` in [0, 1].

  Example:
    >>> x = colorize_binary_foreground(np.array([[[0, 127], [128, 255]]], np.uint8), [1], pad=1)
    >>> x.shape, float(x[0, 0].max()), x[0, 1, 1].tolist(), x[0, 2, 1].tolist()
    ((1, 3, 3, 3), 0.0, [0.0, 0.0, 0.0], [1.0, 0.501960813999176, 0.0])
  """
  stroke, colour = _binary_stroke(images, colors, palette, pad)
  return (stroke[..., None] * colour[:, None, None, :]).astype(np.float32)


def colorize_binary_background(images, colors, *, palette=None, pad: int = 4) -> np.ndarray:
  """FairDD's C-MNIST-BG images: the binarised digit in black on a background of the bias
  colour, padded (FairDD's ``Colored_MNIST_background``, ``is_foreground=False``).

  Each grey image is first padded with ``pad`` rows of zeros at the top and ``pad`` columns
  at the left (28x28 -> 32x32); pixels >= 128 (of 255), the stroke, are black; every other
  pixel, the padding included, takes the colour. No colour noise.

  Args:
    images: (N, H, W) or (N, H, W, 1), uint8 0..255 or float [0, 1].
    colors: (N,) palette indices, or (N, 3) RGB in [0, 1].
    palette: (K, 3) RGB table for index colours; default :data:`FAIRDD_PALETTE`.
    pad: zero rows/columns added at the top and left.

  Returns:
    (N, H + pad, W + pad, 3) ``float32`` in [0, 1].

  Example:
    >>> x = colorize_binary_background(np.array([[[0, 127], [128, 255]]], np.uint8), [1], pad=1)
    >>> x.shape, x[0, 0, 0].tolist(), x[0, 1, 1].tolist(), x[0, 2, 1].tolist()
    ((1, 3, 3, 3), [1.0, 0.501960813999176, 0.0], [1.0, 0.501960813999176, 0.0], [0.0, 0.0, 0.0])
  """
  stroke, colour = _binary_stroke(images, colors, palette, pad)
  return ((~stroke)[..., None] * colour[:, None, None, :]).astype(np.float32)


def _binary_stroke(images, colors, palette, pad) -> tuple[np.ndarray, np.ndarray]:
  """FairDD's binarised digits: the (N, H + pad, W + pad) stroke mask (pixels >= 128 of 255,
  after ``pad`` zero rows at the top and columns at the left) and each image's (N, 3) colour."""
  x = validate_images(images, channels=(1,))
  if isinstance(pad, bool) or not isinstance(pad, numbers.Integral) or pad < 0:
    raise ValueError(f"pad must be an integer >= 0, got {pad!r}.")
  colour = _colour_table(colors, len(x), FAIRDD_PALETTE if palette is None else palette)
  n, h, w = x.shape[:3]
  grey = x.reshape(n, h, w)
  # >= 128 on the 0..255 scale; float input is read back to that scale first.
  on = grey >= 128 if grey.dtype == np.uint8 else np.rint(_to_float(grey) * 255.0) >= 128
  stroke = np.zeros((n, h + pad, w + pad), bool)
  stroke[:, pad:, pad:] = on
  return stroke, colour


def _colour_table(colors, n: int, palette) -> np.ndarray:
  c = np.asarray(colors)
  if c.ndim == 1:
    pal = PALETTE if palette is None else np.asarray(palette, np.float32)
    if pal.ndim != 2 or pal.shape[1] != 3:
      raise ValueError(f"palette must be (num_colours, 3) RGB in [0, 1], got shape {pal.shape}.")
    idx = validate_labels(c, n=n, what="colors", num_classes=len(pal))
    return pal[idx]
  if c.ndim == 2 and c.shape == (n, 3):
    c = c.astype(np.float32)
    if not np.all(np.isfinite(c)) or c.min() < 0 or c.max() > 1:
      raise ValueError("RGB colors must be finite and lie in [0, 1].")
    return c
  raise ValueError(
      f"colors must be (N,) palette indices or (N, 3) RGB values for N={n} images, got shape "
      f"{c.shape}.")


def _noisy_colours(key, base: np.ndarray, std) -> np.ndarray:
  std = _real(std, "std")
  if std < 0:
    raise ValueError(f"std must be >= 0, got {std}.")
  # A numpy Generator seeded from the key's bits (the data layer's RNG bridge): jax.random.normal
  # would compile once per distinct N, numpy draws 60k x 3 without compiling;
  # same key -> same noise either way.
  eps = _numpy_rng(key).standard_normal(base.shape, dtype=np.float32)
  return np.clip(base + np.float32(std) * eps, 0.0, 1.0).astype(np.float32)


def colorize_foreground(key: jax.Array, images, colors, *, std: float,
                        palette=None, progress=None) -> np.ndarray:
  """Colours the stroke of grey images (LfF Colored MNIST).

  ``out = clip(colour + eps, 0, 1) * intensity`` per channel, one
  ``eps ~ N(0, std^2 I_3)`` per image; black stays black.

  Args:
    key: typed PRNG key for the colour noise.
    images: (N, H, W) or (N, H, W, 1), uint8 0..255 or float [0, 1].
    colors: (N,) palette indices, or (N, 3) RGB in [0, 1].
    std: colour-noise standard deviation (LfF severity 4: 0.005).
    palette: (K, 3) RGB table for index colours; default LfF's :data:`PALETTE`.
    progress: report images done (per block of 4,096): None = only for 20,000
      images or more, True/False, or an open :func:`jaxdd.progress.bar` to add
      to (see :func:`jaxdd.data.sources.open_progress`). The result is the same
      either way; :func:`jaxdd.progress.set_quiet` silences it.

  Returns:
    (N, H, W, 3) ``float32`` in [0, 1].

  Raises:
    ValueError: RGB input (pass one channel), bad shapes, ranges or std.

  Example:
    >>> x = colorize_foreground(jax.random.key(0), np.full((2, 4, 4), 255, np.uint8),
    ...                         np.array([0, 1]), std=0.0)
    >>> np.allclose(x[0, 0, 0], PALETTE[0])
    True
  """
  x = validate_images(images, channels=(1,))
  colour = _noisy_colours(key, _colour_table(colors, len(x), palette), std)
  n, h, w = x.shape[:3]
  flat = x.reshape(n, h * w)
  out = np.empty((n, h * w, 3), np.float32)
  # Blocks of images keep the temporaries cache-sized, and one 2-D pass per
  # channel is several times faster than broadcasting over a size-3 last axis;
  # the products are bit-identical either way.
  bar, owned = _sources.open_progress(progress, n, "colorize_foreground", kind="colour")
  try:
    for s in range(0, n, _BLOCK):
      g = _to_float(flat[s:s + _BLOCK])
      for ch in range(3):
        np.multiply(g, colour[s:s + _BLOCK, ch:ch + 1], out=out[s:s + _BLOCK, :, ch])
      bar.update(len(g))
  finally:
    if owned:
      bar.close()
  return out.reshape(n, h, w, 3)


def colorize_background(key: jax.Array, images, colors, *, std: float,
                        palette=None, progress=None) -> np.ndarray:
  """Fills the background (pixels exactly 0) with a noisy palette colour.

  Foreground pixels keep their grey intensity on all three channels (RGB input
  keeps its colours; its background is where all channels are 0), following
  ReBias' background colouring with LfF's palette (docs/protocols.md).

  Args:
    key: typed PRNG key for the colour noise.
    images: (N, H, W), (N, H, W, 1) or (N, H, W, 3); uint8 or float [0, 1].
    colors: (N,) palette indices, or (N, 3) RGB in [0, 1].
    std: colour-noise standard deviation.
    palette: (K, 3) RGB table; default :data:`PALETTE`.
    progress: report images done (per block of 4,096): None = only for 20,000
      images or more, True/False, or an open :func:`jaxdd.progress.bar` to add
      to (see :func:`jaxdd.data.sources.open_progress`). The result is the same
      either way; :func:`jaxdd.progress.set_quiet` silences it.

  Returns:
    (N, H, W, 3) ``float32`` in [0, 1].

  Example:
    >>> x = np.zeros((1, 4, 4), np.uint8); x[0, 1, 1] = 255
    >>> y = colorize_background(jax.random.key(0), x, np.array([4]), std=0.0)
    >>> bool(np.allclose(y[0, 0, 0], PALETTE[4])), y[0, 1, 1].tolist()
    (True, [1.0, 1.0, 1.0])
  """
  x = validate_images(images, channels=(1, 3))
  colour = _noisy_colours(key, _colour_table(colors, len(x), palette), std)
  n, h, w = x.shape[:3]
  c = x.shape[3] if x.ndim == 4 else 1
  flat = x.reshape(n, h * w, c)
  out = np.empty((n, h * w, 3), np.float32)
  # out = fg + mask * colour is exact: fg is 0 wherever mask is 1, and mask
  # adds 0 elsewhere. Image blocks + one 2-D pass per channel (see
  # colorize_foreground for why).
  bar, owned = _sources.open_progress(progress, n, "colorize_background", kind="colour")
  try:
    for s in range(0, n, _BLOCK):
      f = _to_float(flat[s:s + _BLOCK])
      mask = np.all(f == 0, axis=-1).astype(np.float32)  # background pixels
      for ch in range(3):
        o = out[s:s + _BLOCK, :, ch]
        np.multiply(mask, colour[s:s + _BLOCK, ch:ch + 1], out=o)
        o += f[:, :, ch if c == 3 else 0]
      bar.update(len(f))
  finally:
    if owned:
      bar.close()
  return out.reshape(n, h, w, 3)


def _corruption_names(corruption_type) -> tuple[str, ...]:
  # corruptions imports scipy and Pillow: loaded when corrupted images are made, not on import
  from jaxdd.data import corruptions

  if isinstance(corruption_type, str):
    table = {"type0": corruptions.TYPE0, "type1": corruptions.TYPE1}
    if corruption_type not in table:
      raise ValueError(f"corruption_type must be 'type0', 'type1' or a list of names, got "
                       f"{corruption_type!r}.")
    return tuple(table[corruption_type])
  names = tuple(corruption_type)
  if not names or not all(isinstance(n, str) for n in names):
    raise ValueError("corruption_type must be 'type0', 'type1' or a non-empty list of names.")
  return names


def corrupt_by_attribute(key: jax.Array, images, attrs, *, corruption_type="type0",
                         severity: int, progress=None) -> np.ndarray:
  """Applies corruption ``names[attrs[i]]`` to image ``i`` (LfF Corrupted CIFAR-10).

  Images of bias ``k`` are corrupted together with key ``fold_in(key, k)``
  by :func:`jaxdd.data.corruptions.corrupt`; ``original`` (Type1's last entry)
  is the identity.

  Args:
    key: typed PRNG key.
    images: (N, H, W, 3) (or one-channel, replicated to 3), uint8 0..255 or
      float [0, 1].
    attrs: (N,) bias indices into the corruption list.
    corruption_type: ``"type0"``, ``"type1"`` or an explicit list of names.
    severity: Hendrycks corruption level 1..5, passed straight to
      ``corrupt`` (the dataset builders use LfF's level = severity + 1).
    progress: report images done (per chunk of 512): None = only for 5,000
      images or more, True/False, or an open :func:`jaxdd.progress.bar` to add
      to (see :func:`jaxdd.data.sources.open_progress`). The result is the same
      either way; :func:`jaxdd.progress.set_quiet` silences it.

  Returns:
    (N, H, W, 3) ``float32`` in [0, 1].

  Example:
    >>> x = np.random.default_rng(0).random((20, 32, 32, 3), dtype=np.float32)
    >>> y = corrupt_by_attribute(jax.random.key(0), x, np.arange(20) % 10,
    ...                          severity=5)                   # doctest: +SKIP
  """
  # corruptions imports scipy and Pillow: loaded when corrupted images are made, not on import
  from jaxdd.data import corruptions

  names = _corruption_names(corruption_type)
  x = validate_images(images, channels=(1, 3))
  f = _to_float(x)
  if f.ndim == 3:
    f = f[..., None]
  if f.shape[-1] == 1:
    f = np.repeat(f, 3, axis=-1)
  a = validate_labels(attrs, n=len(f), what="attrs", num_classes=len(names))
  if isinstance(severity, bool) or not isinstance(severity, numbers.Integral) or not 1 <= severity <= 5:
    raise ValueError(f"severity (corruption level) must be an integer in 1..5, got {severity!r}.")
  key = _as_key(key)
  out = np.empty_like(f)
  bar, owned = _sources.open_progress(progress, len(f), "corrupt_by_attribute", kind="corrupt")
  try:
    for k in np.unique(a):
      idx = np.flatnonzero(a == k)
      if names[k] == "original":
        out[idx] = f[idx]
        bar.update(len(idx))
        continue
      y = np.asarray(corruptions.corrupt(jax.random.fold_in(key, int(k)), f[idx], names[k],
                                         severity=int(severity), progress=bar), np.float32)
      if y.shape != f[idx].shape:
        raise ValueError(f"corruption {names[k]!r} returned shape {y.shape}, expected "
                         f"{f[idx].shape}.")
      out[idx] = np.clip(y, 0.0, 1.0)
  finally:
    if owned:
      bar.close()
  return out
