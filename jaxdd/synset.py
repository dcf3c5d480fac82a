"""The SynSet artifact: arrays in a safe format, JSON metadata, sha256 manifest.

Layout of an artifact directory::

    synset/
      arrays.npz      images (n, H, W, C) float32 (normalised space), labels (n,) int32,
                      mean (C,), std (C,)  -- numpy .npz, never pickled
      meta.json       dataset + ratio + seed, preprocessing, IPC, method, weights
                      config, architecture spec, evaluation protocol, code version
      manifest.json   {"files": {"arrays.npz": "<sha256>", "meta.json": "<sha256>"}}

The directory is written under a temporary name and renamed into place, so a
reader never sees half an artifact. :func:`load` re-hashes every file and
detects a corrupted or truncated one (a checksum, not a signature).

Example:
  >>> import numpy as np, tempfile, os
  >>> from jaxdd import synset
  >>> from jaxdd.structs import SynSet
  >>> s = SynSet(np.zeros((2, 4, 4, 3), np.float32), np.array([0, 1], np.int32))
  >>> d = os.path.join(tempfile.mkdtemp(), "syn")
  >>> synset.save(d, s, {"ipc": 1}, mean=[0.5] * 3, std=[0.25] * 3) == d
  True
  >>> loaded, meta = synset.load(d)
  >>> meta["ipc"], loaded.images.shape
  (1, (2, 4, 4, 3))
"""
from __future__ import annotations

import json
import os
import zipfile
from typing import Any, Mapping, Sequence

import numpy as np

from jaxdd._src import checks
from jaxdd._src import io as _io
from jaxdd.structs import SynSet

FORMAT_VERSION = 1
_FILES = ("arrays.npz", "meta.json")

# The package's atomic writes and file digest (owned by jaxdd._src.io), public
# under these names because run drivers and tests use them.
sha256_file = _io.sha256_file
atomic_write_bytes = _io.atomic_write_bytes
atomic_write_json = _io.atomic_write_json


def save(path: str, syn: SynSet, meta: Mapping[str, Any], *, mean: Sequence[float],
         std: Sequence[float]) -> str:
  """Saves a SynSet artifact atomically (see the module docstring).

  Args:
    path: the artifact directory to create (replaced if it exists).
    syn: the synthetic set (images in the normalised space).
    meta: JSON-able metadata (dataset, ratio, seed, ipc, method, ...).
    mean, std: the per-channel normalisation, so that the set can be
      de-normalised and the test set normalised the same way.

  Returns:
    ``path``.
  """
  images = np.asarray(syn.images, np.float32)
  labels = np.asarray(syn.labels, np.int32)
  mean = np.asarray(mean, np.float32).reshape(-1)
  std = np.asarray(std, np.float32).reshape(-1)
  checks.check_images(images, "synset.save", what="syn.images",
                      finite_fix="refusing to save a broken artifact")
  if labels.shape != (images.shape[0],):
    raise ValueError(f"synset.save: syn.labels must have shape ({images.shape[0]},) to match "
                     f"syn.images {images.shape}, got {labels.shape}")
  if mean.shape != (images.shape[-1],) or std.shape != (images.shape[-1],):
    raise ValueError(f"mean/std need one value per channel ({images.shape[-1]}), "
                     f"got {mean.shape} and {std.shape}")
  with _io.atomic_directory(path, prefix=".tmp-synset-") as tmp:
    with open(os.path.join(tmp, "arrays.npz"), "wb") as f:
      np.savez(f, images=images, labels=labels, mean=mean, std=std)
    full_meta = dict(meta)
    full_meta.update(format_version=FORMAT_VERSION, num_images=int(images.shape[0]),
                     image_shape=list(images.shape[1:]), mean=mean.tolist(), std=std.tolist())
    with open(os.path.join(tmp, "meta.json"), "w") as f:
      json.dump(full_meta, f, indent=2, sort_keys=True, default=_io.json_default)
    manifest = {"files": {name: sha256_file(os.path.join(tmp, name)) for name in _FILES}}
    with open(os.path.join(tmp, "manifest.json"), "w") as f:
      json.dump(manifest, f, indent=2, sort_keys=True)
  return path


def load(path: str) -> tuple[SynSet, dict]:
  """Loads and verifies a SynSet artifact.

  Returns:
    ``(syn, meta)``; ``meta`` includes ``mean`` and ``std``.

  Raises:
    FileNotFoundError: the directory or one of its files is missing.
    ValueError: a file does not match the manifest (corrupted or truncated),
      or the arrays are malformed.
  """
  if not os.path.isdir(path):
    raise FileNotFoundError(f"no SynSet artifact at {path!r}; pass the directory written by "
                            "`jaxdd distill` (it holds arrays.npz, meta.json, manifest.json)")
  manifest_path = os.path.join(path, "manifest.json")
  if not os.path.exists(manifest_path):
    raise FileNotFoundError(f"{manifest_path} is missing; the artifact is incomplete, re-create it")
  try:
    with open(manifest_path) as f:
      manifest = json.load(f)
    expected = manifest["files"]
  except (json.JSONDecodeError, KeyError, TypeError) as e:
    raise ValueError(f"{manifest_path} is corrupted ({e}); re-create the artifact") from e
  for name in _FILES:
    file = os.path.join(path, name)
    if not os.path.exists(file):
      raise FileNotFoundError(f"{file} is missing; the artifact is incomplete, re-create it")
    digest = sha256_file(file)
    if digest != expected.get(name):
      raise ValueError(f"{file} does not match its sha256 in manifest.json (expected "
                       f"{expected.get(name)}, got {digest}): the artifact was modified or "
                       "truncated; refusing to load it")
  arrays_path = os.path.join(path, "arrays.npz")
  try:
    with np.load(arrays_path, allow_pickle=False) as data:
      missing = [k for k in ("images", "labels", "mean", "std") if k not in data.files]
      if missing:
        raise ValueError(f"{arrays_path} lacks the array(s) {', '.join(missing)} (it holds "
                         f"{', '.join(data.files) or 'nothing'}); it is not a SynSet, re-create it")
      images, labels = data["images"], data["labels"]
      mean, std = data["mean"], data["std"]
  except (OSError, EOFError, zipfile.BadZipFile) as e:
    raise ValueError(f"{arrays_path} is not a readable .npz ({e}); re-create the artifact") from e
  with open(os.path.join(path, "meta.json")) as f:
    meta = json.load(f)
  meta["mean"], meta["std"] = mean.tolist(), std.tolist()
  return SynSet(images, labels), meta
