"""Building a biased split: bias assignment, injection and the dataset card.

:func:`from_arrays` applies a protocol to arrays passed in; :func:`~jaxdd.data.biased.load`
builds from a :class:`~jaxdd.data.sources.Source` through :func:`_build_from_source`.

Example:
  >>> import numpy as np
  >>> _split_pool(np.array([0, 0, 0, 1, 1, 1]), "valid", 1 / 3).tolist()
  [2, 5]
"""
from __future__ import annotations

from typing import Any, Mapping

import jax
import numpy as np

from jaxdd.data import sources as _sources
from jaxdd.data.card import BiasedDataset, DatasetCard, _counts
from jaxdd.data.injectors import (_classes_without_conflict, _to_float, colorize_background,
                                  colorize_binary_background, colorize_binary_foreground, colorize_foreground,
                                  corrupt_by_attribute, fairdd_attr_labels, make_attr_labels,
                                  smallest_conflict_ratio)
from jaxdd.data.registry import (_SPLIT_ID, BUILDER_VERSION, DatasetSpec, _check_seed,
                                 _check_split, _spec, check_ratio, check_severity)
from jaxdd.data.sources import Source, array_sha256, validate_images, validate_labels
from jaxdd.data.textures import texture_background


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
  if spec.injector in ("fairdd_foreground", "fairdd_background"):
    fn = (colorize_binary_foreground if spec.injector == "fairdd_foreground"
          else colorize_binary_background)
    return fn(images, attrs), {"padding": "4 rows top, 4 columns left", "threshold": 128}
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


def _inject_texture(spec: DatasetSpec, seed: int, images, attrs, *, split: str, index,
                    progress=None) -> tuple[np.ndarray, dict]:
  """Textured backgrounds: image ``index[i]`` of its source pool (train and valid share the
  training pool) on a texture of family ``attrs[i]`` keyed by ``fold_in(key(seed), pool)``."""
  pool = "test" if split == "test" else "train"
  key = jax.random.fold_in(jax.random.key(seed), _SPLIT_ID[pool])
  bar, owned = _sources.open_progress(progress, len(images), f"{spec.name} {split}: texturing",
                                      kind="colour")
  try:
    out = texture_background(key, images, attrs, index=index, progress=bar)
  finally:
    if owned:
      bar.close()
  return out, {"texture_pool": pool}


def _compose(spec: DatasetSpec, images, labels, *, split: str, ratio: float, severity,
             seed: int, meta: Mapping[str, Any], progress=None, index=None) -> BiasedDataset:
  """Assigns bias to ``(images, labels)`` as split ``split`` and injects it; ``index`` is each
  image's index in its source pool (None: ``0 .. N - 1``), read by the textured sets."""
  aligned_ratio = spec.aligned_ratio(split, ratio)
  key = jax.random.fold_in(jax.random.key(seed), _SPLIT_ID[split])
  if spec.injector in ("fairdd_foreground", "fairdd_background"):  # FairDD's shuffled
    # assignment (no minimum rule)
    attrs = fairdd_attr_labels(jax.random.fold_in(key, 1), labels, aligned_ratio=aligned_ratio,
                               num_bias=len(spec.bias_names))
  else:
    attrs = make_attr_labels(labels, aligned_ratio=aligned_ratio, num_bias=len(spec.bias_names))
    if split != "valid":
      _check_min_rule(spec, labels, aligned_ratio, split)
  if spec.injector == "texture":
    x, extra = _inject_texture(spec, seed, images, attrs, split=split, index=index,
                               progress=progress)
  else:
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
    name: a colour, texture or corruption dataset name (not ``bffhq``).
    images: MNIST-like (N, H, W)/(N, H, W, 1) for colour and textured datasets, CIFAR-like
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
  idx = None
  if split != "test":
    idx = _split_pool(y, split, valid_fraction)
    if len(idx) == 0:
      raise ValueError(f"the {split} split of {src.id} is empty; use a larger valid_fraction "
                       "or a bigger source.")
    x, y = x[idx], y[idx]
  return _compose(spec, x, y, split=split, ratio=ratio, severity=severity, seed=seed, meta=meta,
                  progress=progress, index=idx)

