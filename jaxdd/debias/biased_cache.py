"""A verified on-disk cache of the bias-amplified classifier (:mod:`jaxdd.debias.biased`).

An entry is keyed by a hash of the data (its description and a sha256 of the image and label
arrays), the :class:`~jaxdd.debias.biased.BiasedConfig`, the number of classes, the key and
:data:`CACHE_VERSION`, and lives in ``$JAXDD_CACHE/biased/<hash>/``: ``params.npz`` (the
flattened variables, ``/``-joined keys), ``outputs.npz`` (the
:class:`~jaxdd.debias.biased.BiasedOutputs` of every training image) and ``meta.json`` (the
spec, the files' sha256, the training history). It is written under a temporary name and
renamed into place, so a killed run leaves no partial entry; no pickle is read or written.
On load the spec, every file's sha256 and the arrays' shapes are checked; an entry that fails
is retrained with a ``RuntimeWarning`` (the cache is a derived artifact).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import time
import warnings
from typing import Any, NamedTuple

import jax
import numpy as np
from flax import traverse_util

from jaxdd._src import io as _io
from jaxdd._src import schema
from jaxdd._src.io import sha256_file
from jaxdd.debias.biased import BiasedConfig, BiasedOutputs, _check_data, biased_outputs, train_biased

__all__ = ["BiasedArtifact", "CACHE_VERSION", "cache_root", "load_or_train_biased"]

#: Bump when the layout or the training changes, so that stale entries are never reused.
CACHE_VERSION = 1

_FILES = ("params.npz", "outputs.npz")


class BiasedArtifact(NamedTuple):
  """What :func:`load_or_train_biased` returns.

  Attributes:
    outputs: the :class:`~jaxdd.debias.biased.BiasedOutputs` of every training image.
    history: the training history (:func:`~jaxdd.debias.biased.train_biased`).
    path: the cache entry (None when caching is off).
    from_cache: True if the entry was loaded rather than trained.
  """
  outputs: BiasedOutputs
  history: dict
  path: str | None
  from_cache: bool


def cache_root(cache_dir: str | os.PathLike | None = None) -> str:
  """Directory of cached biased networks: ``cache_dir`` or ``$JAXDD_CACHE/biased``.

  Example:
    >>> cache_root('some/dir')
    'some/dir'
  """
  return os.fspath(cache_dir) if cache_dir is not None else os.fspath(_io.cache_root("biased"))


def cache_spec(key: jax.Array, dataset_meta: dict, config: BiasedConfig, num_classes: int,
               images: np.ndarray, labels: np.ndarray) -> dict:
  """What an entry is keyed by (its hash names the entry's folder)."""
  try:
    meta = json.loads(json.dumps(dataset_meta, sort_keys=True))
  except TypeError as e:
    raise ValueError(f"dataset_meta must be JSON-serialisable: {e}") from e
  return {"version": CACHE_VERSION, "dataset": meta, "config": config.to_dict(),
          "num_classes": int(num_classes),
          "key": np.asarray(jax.random.key_data(key)).ravel().tolist(),
          "data_sha256": _io.array_sha256(images, labels)}


def _spec_hash(spec: dict) -> str:
  return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:32]


def _save_npz(path: str, arrays: dict[str, np.ndarray]) -> None:
  buf = io.BytesIO()
  np.savez(buf, **arrays)
  with open(path, "wb") as f:
    f.write(buf.getvalue())


def _load_entry(entry: str, spec: dict, n: int) -> BiasedArtifact:
  """One verified entry; ValueError on any mismatch."""
  meta = schema.read_json(os.path.join(entry, "meta.json"),
                          schema.obj({"spec": schema.ANY, "sha256": schema.map_of(schema.STR)},
                                     optional={"history": schema.ANY}),
                          fix="the cache entry is retrained")
  if meta["spec"] != spec:
    raise ValueError(f"cache entry {entry} was written for another spec")
  for name in _FILES:
    path = os.path.join(entry, name)
    if not os.path.isfile(path) or sha256_file(path) != meta["sha256"].get(name):
      raise ValueError(f"{path} is missing or was modified")
  with np.load(os.path.join(entry, "outputs.npz"), allow_pickle=False) as z:
    out = BiasedOutputs(np.asarray(z["log_p_label"]), np.asarray(z["pred"]),
                        np.asarray(z["features"]))
  if (out.log_p_label.shape != (n,) or out.pred.shape != (n,) or out.features.ndim != 2
      or out.features.shape[0] != n):
    raise ValueError(f"cache entry {entry}: outputs of the wrong shape for {n} images")
  return BiasedArtifact(out, meta.get("history", {}), entry, True)


def _write_entry(entry: str, spec: dict, variables, out: BiasedOutputs, history: dict) -> None:
  with _io.atomic_directory(entry, prefix=".tmp-") as tmp:
    flat = traverse_util.flatten_dict(jax.device_get(variables), sep="/")
    _save_npz(os.path.join(tmp, "params.npz"), {k: np.asarray(v) for k, v in flat.items()})
    _save_npz(os.path.join(tmp, "outputs.npz"), dict(out._asdict()))
    meta = {"spec": spec, "history": history, "jax_version": jax.__version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "sha256": {name: sha256_file(os.path.join(tmp, name)) for name in _FILES}}
    with open(os.path.join(tmp, "meta.json"), "w") as f:
      json.dump(meta, f, indent=2, sort_keys=True)


def load_or_train_biased(key: jax.Array, dataset_meta: dict, images: Any, labels: Any, *,
                         num_classes: int, config: BiasedConfig | None = None,
                         cache_dir: str | os.PathLike | None = None, use_cache: bool = True,
                         progress: bool = True) -> BiasedArtifact:
  """The bias-amplified classifier's outputs on ``images``, trained once and cached.

  Args:
    key: typed PRNG key of :func:`~jaxdd.debias.biased.train_biased`.
    dataset_meta: a JSON-serialisable description of the data (a dataset card's meta).
    images: (N, H, W, C) float training images.
    labels: (N,) class labels (never the bias labels).
    num_classes: number of classes.
    config: a :class:`~jaxdd.debias.biased.BiasedConfig` (None: the defaults).
    cache_dir: override of :func:`cache_root`.
    use_cache: False trains without reading or writing the cache.
    progress: a progress bar while training.

  Returns:
    A :class:`BiasedArtifact`.

  Example:
    >>> import jax, numpy as np, tempfile
    >>> x = np.random.default_rng(0).random((32, 8, 8, 3), np.float32)
    >>> y = np.repeat(np.arange(2), 16)
    >>> cfg = BiasedConfig(steps=2, batch_size=8, width=4, depth=1)
    >>> root = tempfile.mkdtemp()
    >>> a = load_or_train_biased(jax.random.key(0), {"name": "toy"}, x, y, num_classes=2,
    ...                          config=cfg, cache_dir=root, progress=False)
    >>> b = load_or_train_biased(jax.random.key(0), {"name": "toy"}, x, y, num_classes=2,
    ...                          config=cfg, cache_dir=root, progress=False)
    >>> a.from_cache, b.from_cache, bool(np.array_equal(a.outputs.pred, b.outputs.pred))
    (False, True, True)
  """
  images, labels = _check_data(images, labels, num_classes)
  config = BiasedConfig() if config is None else config

  def train() -> tuple[dict, BiasedOutputs, dict]:
    variables, history = train_biased(key, images, labels, num_classes=num_classes,
                                      config=config, progress=progress)
    return variables, biased_outputs(variables, images, labels, num_classes=num_classes,
                                     config=config), history

  if not use_cache:
    _, out, history = train()
    return BiasedArtifact(out, history, None, False)
  spec = cache_spec(key, dataset_meta, config, num_classes, images, labels)
  entry = os.path.join(cache_root(cache_dir), _spec_hash(spec))
  if os.path.isdir(entry):
    try:
      return _load_entry(entry, spec, images.shape[0])
    except ValueError as e:
      warnings.warn(f"discarding invalid biased-network cache entry ({e}); retraining",
                    RuntimeWarning, stacklevel=2)
  variables, out, history = train()
  _write_entry(entry, spec, variables, out, history)
  return BiasedArtifact(out, history, entry, False)
