"""TFDS builders for the jaxdd biased datasets (array_record, no TensorFlow).

Data contract: each builder ``jaxdd_<name>``, one per dataset of
:data:`jaxdd.data.registry.DATASETS` (``jaxdd_cmnist``, ``jaxdd_bg_fmnist``,
``jaxdd_cifar10c``, ``jaxdd_cifar10c_type1``, ``jaxdd_corrupted_fmnist``,
``jaxdd_corrupted_fmnist_type1``, ``jaxdd_bffhq``, ``jaxdd_cmnist_dd``,
``jaxdd_ccifar10_dd``, ``jaxdd_cmnist_fg``, ``jaxdd_cmnist_bg``,
``jaxdd_textured_fmnist``) writes the splits
``train``, ``valid`` and ``test`` of :func:`jaxdd.data.load` with the same
arguments, in the same order (``disable_shuffling=True``), as examples::

  {"image": uint8 (H, W, 3) tfds.features.Image (PNG),
   "image_float": float32 (H, W, 3) in [0, 1] (exactly load()'s image),
   "label": int64 ClassLabel, "bias": int64 ClassLabel, "aligned": bool}

``image`` is :func:`to_uint8` of ``load``'s image (``rint(x * 255)`` in
float64, clipped to 0..255), so ``tfds.show_examples``, ``tfds.as_dataframe``
and other TFDS tooling that looks for an ``Image`` feature work. ``load``'s
images are not multiples of 1/255 (colour noise, corruptions), so the exact
float32 image is kept beside it as ``image_float``: :func:`read` and
:class:`jaxdd.data.TfdsSource` return it, bit-identical to ``load``. Builders
generate from ``load`` and never download anything (no URLs,
``try_download_gcs`` forced off). PNG encoding uses Pillow (TFDS' own encoder
would need TensorFlow).

Configs are named ``ratio<r>_severity<s>_seed<k>`` (``severitynone`` for
bffhq), plus ``_valid<f>`` when ``valid_fraction`` is not 0.1, ``_size<n>``
for a non-default bffhq size and ``_src<sha256[:12]>`` when the source is not
the dataset's offline default. The published LfF / Biased-DD ratios at the
default severity and seed 0 are registered ``BUILDER_CONFIGS``; any other
combination is created by :func:`prepare`. Once prepared, every config loads
with ``tfds.data_source("jaxdd_cmnist/<config>", data_dir=..., split=...)``
(TFDS reads unregistered configs from the files).

Requirements (the `tfds` extra): ``tensorflow-datasets``, ``array-record`` and
``importlib_resources``; no TensorFlow.
"""
from __future__ import annotations

import dataclasses
import io
import os
import types
from typing import Any, Mapping

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from jaxdd._src import io as _io
from jaxdd.data import biased, ops
from jaxdd.data.biased import DATASETS, load, resolve_source

__all__ = ["BiasedConfig", "BUILDERS", "EXACT_IMAGE_KEY", "config_name", "prepare", "read",
           "to_uint8"]

_VERSION = "1.1.0"
_RELEASE_NOTES = {
    "1.0.0": "Initial release (image: float32 Tensor).",
    "1.1.0": "image is a uint8 tfds.features.Image (PNG, rint(x * 255)) so TFDS tooling works; "
             "the exact float32 image of jaxdd.data.load moves to image_float.",
}
#: The feature holding the exact float32 image (``image`` is its uint8 rendering).
EXACT_IMAGE_KEY = "image_float"
_DEFAULT_SHAPES = {"mnist": (28, 28, 3), "fashion_mnist": (28, 28, 3), "cifar10": (32, 32, 3)}


@dataclasses.dataclass(eq=False)
class BiasedConfig(tfds.core.BuilderConfig):
  """Builder config: the arguments of :func:`jaxdd.data.load` (minus split).

  Attributes:
    conflict_ratio: as in ``load`` (aligned fraction for the ``_dd`` sets).
    severity: resolved severity (None for bffhq).
    seed: noise seed.
    valid_fraction: valid hold-out fraction (ignored for bffhq).
    image_size: bffhq output size (None otherwise).
    image_shape: (H, W, 3) of the stored images.
    source: the ``source`` argument for ``load`` (not serialised; it only
      matters while generating).
  """
  conflict_ratio: float = 0.05
  severity: int | None = None
  seed: int = 0
  valid_fraction: float = 0.1
  image_size: int | None = None
  image_shape: tuple[int, int, int] = (28, 28, 3)
  source: Any = None


def config_name(name: str, *, conflict_ratio: float, severity: int | None = None, seed: int = 0,
                valid_fraction: float = 0.1, image_size: int | None = None,
                source_tag: str | None = None) -> str:
  """The TFDS config name of a set of ``load`` arguments.

  Args:
    name: dataset name.
    conflict_ratio: ratio as passed to ``load``.
    severity: severity (None = the dataset default).
    seed: noise seed.
    valid_fraction: valid hold-out fraction.
    image_size: bffhq size (None = 64).
    source_tag: short source checksum for non-default sources.

  Returns:
    e.g. ``"ratio0.05_severity4_seed0"``.

  Example:
    >>> config_name("cmnist", conflict_ratio=0.05)
    'ratio0.05_severity4_seed0'
  """
  spec = DATASETS[name]
  sev = biased.check_severity(spec, severity)
  ratio = biased.check_ratio(spec, conflict_ratio)
  parts = [f"ratio{ratio!r}", f"severity{'none' if sev is None else sev}", f"seed{int(seed)}"]
  if spec.injector != "folder" and float(valid_fraction) != 0.1:
    parts.append(f"valid{float(valid_fraction)!r}")
  if spec.injector == "folder" and image_size not in (None, 64):
    parts.append(f"size{int(image_size)}")
  if source_tag:
    parts.append(f"src{source_tag}")
  return "_".join(parts)


def _default_configs(name: str) -> list[BiasedConfig]:
  spec = DATASETS[name]
  if spec.semantics == "biased_dd":
    ratios = (0.0, 0.1, 0.5, 0.8, 0.95, 1.0)
  elif spec.injector == "folder":
    ratios = (0.005,)
  else:
    ratios = (0.005, 0.01, 0.02, 0.05)
  shape = _DEFAULT_SHAPES.get(spec.base, (64, 64, 3))
  return [BiasedConfig(name=config_name(name, conflict_ratio=r), conflict_ratio=r,
                       severity=spec.default_severity, seed=0,
                       image_size=64 if spec.injector == "folder" else None,
                       image_shape=shape, version=_VERSION,
                       description=f"{name}, ratio {r} ({spec.ratio_semantics}), default "
                       f"severity, seed 0, offline default source")
          for r in ratios]


#: The uint8 rendering stored as the ``image`` feature (:func:`jaxdd.data.ops.to_uint8`).
to_uint8 = ops.to_uint8


def _png(image_u8: np.ndarray) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(np.ascontiguousarray(image_u8)).save(buf, format="PNG")
  return buf.getvalue()


class _OfflineInfo(tfds.core.DatasetInfo):
  """The DatasetInfo of a dataset that is never on GCS. TFDS's builder, for a dataset not
  prepared yet, asks GCS for precomputed metadata through a fresh temporary folder, which it
  leaves behind, empty, when GCS has nothing (one stray folder per builder made)."""

  def initialize_from_bucket(self) -> None:
    """Nothing to fetch: jaxdd's datasets are generated here, never published on GCS."""


class _JaxddBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Shared implementation; subclasses set ``DATASET``."""

  DATASET = ""
  VERSION = tfds.core.Version(_VERSION)
  RELEASE_NOTES = _RELEASE_NOTES

  def _info(self) -> tfds.core.DatasetInfo:
    spec = DATASETS[self.DATASET]
    cfg = self.builder_config
    return _OfflineInfo(
        builder=self,
        description=(f"jaxdd biased dataset {self.DATASET!r} ({spec.ratio_semantics}); "
                     "generated offline by jaxdd.data.load."),
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=tuple(cfg.image_shape), dtype=np.uint8,
                                         encoding_format="png"),
            EXACT_IMAGE_KEY: tfds.features.Tensor(shape=tuple(cfg.image_shape),
                                                  dtype=np.float32),
            "label": tfds.features.ClassLabel(names=list(spec.class_names)),
            "bias": tfds.features.ClassLabel(names=list(spec.bias_names)),
            "aligned": tfds.features.Tensor(shape=(), dtype=np.bool_),
        }),
        supervised_keys=("image", "label"),
        # Keep load()'s order: TFDS would otherwise shuffle by key at write time.
        disable_shuffling=True,
        metadata=tfds.core.MetadataDict(),
    )

  def _splits(self) -> list[str]:
    spec = DATASETS[self.DATASET]
    if spec.injector == "folder" or self.builder_config.valid_fraction > 0:
      return ["train", "valid", "test"]
    return ["train", "test"]

  def _load(self, split: str):
    cfg = self.builder_config
    spec = DATASETS[self.DATASET]
    return load(self.DATASET, split=split, conflict_ratio=cfg.conflict_ratio,
                severity=cfg.severity, seed=cfg.seed, source=cfg.source,
                valid_fraction=cfg.valid_fraction if spec.injector != "folder" else 0.1,
                image_size=cfg.image_size if spec.injector == "folder" else None)

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing is ever downloaded
    return {split: self._generate_examples(split) for split in self._splits()}

  def _generate_examples(self, split: str):
    ds = self._load(split)
    if tuple(ds.images.shape[1:]) != tuple(self.builder_config.image_shape):
      raise ValueError(
          f"images are {ds.images.shape[1:]} but the config declares "
          f"{tuple(self.builder_config.image_shape)}; use jaxdd.data.tfds_builders.prepare(), "
          "which sets the shape from the data.")
    self.info.metadata[split] = _io.jsonable(dict(ds.meta))
    images_u8 = to_uint8(ds.images)
    for i in range(len(ds)):
      yield i, {"image": _png(images_u8[i]), EXACT_IMAGE_KEY: ds.images[i],
                "label": int(ds.labels[i]), "bias": int(ds.bias[i]),
                "aligned": bool(ds.aligned[i])}

  def download_and_prepare(self, *, download_dir=None, download_config=None, file_format=None,
                           **kwargs):
    """As TFDS', but never contacts GCS or the network."""
    config = download_config or tfds.download.DownloadConfig()
    config = dataclasses.replace(config, try_download_gcs=False)
    return super().download_and_prepare(download_dir=download_dir, download_config=config,
                                        file_format=file_format, **kwargs)


def _make_builder_class(dataset: str) -> type:
  cls_name = "Jaxdd" + "".join(p.capitalize() for p in dataset.split("_"))
  cls = type(cls_name, (_JaxddBuilder,), {
      "DATASET": dataset,
      "BUILDER_CONFIGS": _default_configs(dataset),
      "__module__": __name__,
      "__doc__": f"TFDS builder for jaxdd.data.load({dataset!r}, ...).",
      "name": f"jaxdd_{dataset}",
  })
  return cls


#: dataset name -> builder class (registered with TFDS as ``jaxdd_<name>``).
_CLASSES = {d: _make_builder_class(d) for d in DATASETS if d != "cifar10c_type0"}
BUILDERS: Mapping[str, type] = types.MappingProxyType(
    {**_CLASSES, "cifar10c_type0": _CLASSES["cifar10c"]})
globals().update({cls.__name__: cls for cls in BUILDERS.values()})


def prepare(name: str, *, conflict_ratio: float, severity: int | None = None, seed: int = 0,
            source=None, valid_fraction: float = 0.1, image_size: int | None = None,
            data_dir: str | os.PathLike | None = None) -> str:
  """Writes a biased dataset as a TFDS array_record dataset (offline).

  Args:
    name: dataset name (as in :func:`jaxdd.data.load`).
    conflict_ratio: as in ``load``.
    severity: as in ``load`` (None = default).
    seed: noise seed.
    source: as in ``load``; a non-default source adds ``_src<sha>`` to the
      config name.
    valid_fraction: as in ``load``.
    image_size: bffhq output size (default 64).
    data_dir: TFDS data directory (default: TFDS's).

  Returns:
    ``"jaxdd_<name>/<config>"``, ready for ``tfds.data_source(...,
    data_dir=data_dir, split=...)``.

  Raises:
    The same errors as ``load`` (bad arguments, missing source).

  Example:
    >>> ref = prepare("cmnist", conflict_ratio=0.05, data_dir="tfds_data")   # doctest: +SKIP
    >>> ds = tfds.data_source(ref, data_dir="tfds_data", split="train")       # doctest: +SKIP
  """
  if name not in BUILDERS:
    raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(BUILDERS)}.")
  spec = DATASETS[name]
  sev = biased.check_severity(spec, severity)
  src = resolve_source(name, source)
  tag = None
  if source is not None:
    try:
      default_sum = resolve_source(name, None).checksum()
    except FileNotFoundError:  # no offline default (CIFAR-10, BFFHQ) or not installed
      default_sum = None
    if default_sum != src.checksum():
      tag = src.checksum()[:12]
  # The train split fixes the image shape declared in the features.
  first = load(name, split="train", conflict_ratio=conflict_ratio, severity=sev, seed=seed,
               source=src, valid_fraction=valid_fraction if spec.injector != "folder" else 0.1,
               image_size=image_size)
  if spec.injector == "folder" and image_size is None:
    image_size = 64
  cfg = BiasedConfig(
      name=config_name(name, conflict_ratio=conflict_ratio, severity=sev, seed=seed,
                       valid_fraction=valid_fraction, image_size=image_size, source_tag=tag),
      version=_VERSION, conflict_ratio=float(conflict_ratio), severity=sev, seed=int(seed),
      valid_fraction=float(valid_fraction), image_size=image_size,
      image_shape=tuple(int(s) for s in first.images.shape[1:]), source=src,
      description=f"{name} from {src.id} (sha256 {src.checksum()[:16]}...)")
  kwargs = {} if data_dir is None else {"data_dir": os.fspath(data_dir)}
  registered = {c.name: c for c in BUILDERS[name].BUILDER_CONFIGS}
  if cfg.name in registered and tag is None:
    # A published config (default source): TFDS refuses a custom config that
    # reuses a registered name, so build the registered one by name. Its
    # declared image shape must match the data (it always does for the
    # offline defaults; the check in _generate_examples guards it anyway).
    if tuple(registered[cfg.name].image_shape) != cfg.image_shape:
      raise ValueError(f"the registered config {cfg.name} declares images "
                       f"{registered[cfg.name].image_shape}, the data are {cfg.image_shape}")
    builder = BUILDERS[name](config=cfg.name, file_format="array_record", **kwargs)
  else:
    builder = BUILDERS[name](config=cfg, file_format="array_record", **kwargs)
  builder.download_and_prepare()
  return f"{builder.name}/{cfg.name}"


def read(ref: str, *, split: str, data_dir: str | os.PathLike | None = None
         ) -> dict[str, np.ndarray]:
  """Reads a prepared split back into stacked numpy arrays.

  Args:
    ref: ``"jaxdd_<name>/<config>"`` (from :func:`prepare`).
    split: ``train``, ``valid`` or ``test``.
    data_dir: the TFDS data directory used by ``prepare``.

  Returns:
    ``{"image": (N, H, W, 3) float32, "image_uint8": (N, H, W, 3) uint8,
    "label": (N,) int64, "bias": (N,) int64, "aligned": (N,) bool}``;
    ``image`` is the exact ``image_float`` feature (byte-identical to
    :func:`jaxdd.data.load`), ``image_uint8`` the decoded ``image`` feature.
    A dataset written by version 1.0.0 (float32 ``image``, no
    ``image_float``) gives its ``image`` and ``image_uint8 = to_uint8(image)``.

  Example:
    >>> arrays = read("jaxdd_cmnist/ratio0.05_severity4_seed0", split="test",
    ...               data_dir="tfds_data")                                   # doctest: +SKIP
  """
  kwargs = {} if data_dir is None else {"data_dir": os.fspath(data_dir)}
  src = tfds.data_source(ref, split=split, download=False, try_gcs=False, **kwargs)
  n = len(src)
  rows = src.__getitems__(list(range(n))) if hasattr(src, "__getitems__") else [src[i] for i in range(n)]
  out = {k: np.stack([np.asarray(r[k]) for r in rows])
         for k in ("image", "label", "bias", "aligned")}
  if n and EXACT_IMAGE_KEY in rows[0]:
    out["image_uint8"] = out["image"]
    out["image"] = np.stack([np.asarray(r[EXACT_IMAGE_KEY]) for r in rows])
  elif out["image"].dtype == np.float32:  # version 1.0.0: the float image was "image"
    out["image_uint8"] = to_uint8(out["image"])
  else:
    raise ValueError(f"{ref} has a uint8 image but no {EXACT_IMAGE_KEY!r} feature, so the exact "
                     f"float images of jaxdd.data.load cannot be recovered; re-prepare it with "
                     f"jaxdd.data.prepare_tfds (jaxdd >= TFDS version {_VERSION}).")
  return {k: out[k] for k in ("image", "image_uint8", "label", "bias", "aligned")}
