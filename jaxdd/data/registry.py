"""The dataset registry: what each name means, and the checks of :func:`~jaxdd.data.biased.load`'s
arguments.

Example:
  >>> DATASETS["cmnist"].base, DATASETS["cmnist"].default_severity
  ('mnist', 4)
"""
from __future__ import annotations

import dataclasses
import numbers

from jaxdd.data.injectors import _real
from jaxdd.data.textures import FAMILIES as TEXTURE_NAMES

#: Builder version, part of every cache key and of ``meta``.
BUILDER_VERSION = "1"

#: Human names of the palette colours (approximate hues of the table above).
COLOUR_NAMES = ("red", "yellow", "mauve", "sage", "sky_blue", "green", "blue", "purple",
                "olive", "crimson")

#: Names of ReBias' / FairDD's 10 colours (``cmnist_fg``, ``cmnist_bg``), in palette order.
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
# LfF corruption lists (docs/datasets.md, "How the bias is injected"); must equal jaxdd.data.corruptions.TYPE0/1.
CORRUPTIONS_TYPE0 = ("snow", "frost", "fog", "brightness", "contrast", "spatter", "elastic",
                     "jpeg", "pixelate", "saturate")
CORRUPTIONS_TYPE1 = ("gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise",
                     "gaussian_blur", "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
                     "original")
BFFHQ_CLASSES = ("young", "old")
BFFHQ_BIAS = ("female", "male")

SPLITS = ("train", "valid", "test")
_SPLIT_ID = {"train": 0, "valid": 1, "test": 2}


# ----------------------------------------------------------------------------
# Dataset registry.
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """What a dataset name means: base data, bias injector and protocol.

  Attributes:
    name: registry name.
    base: base image family (``mnist``, ``fashion_mnist``, ``cifar10``, ``bffhq``).
    injector: ``foreground``, ``background``, ``corruption``, ``fairdd_foreground``,
      ``fairdd_background``, ``texture`` or ``folder``.
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
    "cmnist_bg": DatasetSpec("cmnist_bg", "mnist", "fairdd_background", "lff", (), None, 0.1,
                             None, MNIST_CLASSES, FAIRDD_COLOUR_NAMES, "mnist"),
    # Textured-FMNIST: garments on procedural textures, one family per class
    # (jaxdd.data.textures); LfF's assignment and test split.
    "textured_fmnist": DatasetSpec("textured_fmnist", "fashion_mnist", "texture", "lff", (), None,
                                   0.1, None, FASHION_MNIST_CLASSES, TEXTURE_NAMES,
                                   "fashion_mnist"),
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

