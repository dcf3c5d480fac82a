"""A verified on-disk cache of a trained surrogate's params and embeddings."""
from __future__ import annotations

import hashlib
import io
import json
import os
import time
import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jaxdd._src import io as _io
from jaxdd._src import schema
from jaxdd._src.io import sha256_file
from jaxdd.surrogate.model import SurrogateConfig
from jaxdd.surrogate.training import _validate_data, embed, train_surrogate


# Bump when the cache layout or the training semantics change, so that stale
# entries are never reused.
# 2: ConvNet's instance norm is models.InstanceNorm.
# 3: the CPU convolution and instance-norm gradients rewritten since version 2
#    round differently, so version-2 surrogates are not what this code trains
#    (cpu preset on CMNIST 5 %: embeddings within 0.024, KDE weights' rank
#    correlation 0.99; docs/reproducing.md, "Surrogates").
# 4: on CPU the trainer runs 3x3 convolutions with >= 96 channels as Winograd
#    (policy train_conv), which rounds differently: surrogates of width >= 96
#    (the default config, the paper preset) are not what version 3 trained.
CACHE_VERSION = 4


# ---------------------------------------------------------------------------
# Cache
# ---------------------------------------------------------------------------


class SurrogateArtifact(NamedTuple):
  """What :func:`load_or_train` returns.

  Attributes:
    params: flax variables dict.
    embeddings: (N, proj_dim) projection-space embeddings of the training images.
    history: training history (see :func:`train_surrogate`).
    path: the cache entry directory (None when caching is disabled).
    from_cache: True if the entry was loaded rather than trained.
  """
  params: dict
  embeddings: np.ndarray
  history: dict
  path: str | None
  from_cache: bool


def cache_root(cache_dir: str | os.PathLike | None = None) -> str:
  """Directory of cached surrogates: ``cache_dir`` or ``$JAXDD_CACHE/surrogates``
  (``$JAXDD_CACHE`` defaults to ``~/.cache/jaxdd``).

  Example:
    >>> cache_root('some/dir')
    'some/dir'
  """
  if cache_dir is not None:
    return os.fspath(cache_dir)
  return os.fspath(_io.cache_root("surrogates"))


def _data_fingerprint(images: np.ndarray, labels: np.ndarray) -> str:
  # Hash the arrays themselves too, so a changed preprocessing (e.g. normalised
  # vs [0, 1] images) under the same dataset meta never reuses a stale entry.
  # No separator in the per-array header: the digest format of existing cache
  # entries (changing it would orphan them without a CACHE_VERSION bump).
  return _io.array_sha256(images, labels, sep="")


def _cache_spec(key: jax.Array, dataset_meta: dict, config: SurrogateConfig, images: np.ndarray,
                labels: np.ndarray) -> dict:
  try:
    meta = json.loads(json.dumps(dataset_meta, sort_keys=True))
  except TypeError as e:
    raise ValueError(f"dataset_meta must be JSON-serialisable (str/int/float/bool/None/list/dict): {e}") from e
  return {
      "version": CACHE_VERSION,
      "dataset": meta,
      "config": config.to_dict(),
      "key": np.asarray(jax.random.key_data(key)).ravel().tolist(),
      "data_sha256": _data_fingerprint(images, labels),
  }


def _spec_hash(spec: dict) -> str:
  return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:32]


def _save_npz(path: str, arrays: dict[str, np.ndarray]) -> None:
  buf = io.BytesIO()
  np.savez(buf, **arrays)
  with open(path, "wb") as f:
    f.write(buf.getvalue())


def _load_entry(entry: str, spec: dict, config: SurrogateConfig, image_shape: tuple[int, ...],
                num_examples: int) -> SurrogateArtifact:
  """Load and verify one cache entry; ValueError on any mismatch."""
  meta_path = os.path.join(entry, "meta.json")
  try:
    meta = schema.read_json(meta_path, schema.obj({"spec": schema.ANY,
                                                   "sha256": schema.map_of(schema.STR)}),
                            fix="the cache entry is retrained")
  except OSError as e:
    raise ValueError(f"unreadable cache metadata {meta_path}: {e}") from e
  if meta.get("spec") != spec:
    raise ValueError(f"cache entry {entry} was written for a different spec")
  files = meta.get("sha256", {})
  for name in ("params.npz", "embeddings.npz"):
    path = os.path.join(entry, name)
    if name not in files or not os.path.exists(path):
      raise ValueError(f"cache entry {entry} lacks {name}")
    if sha256_file(path) != files[name]:
      raise ValueError(f"sha256 mismatch for {path}: the file was modified or corrupted")
  with np.load(os.path.join(entry, "params.npz"), allow_pickle=False) as z:
    flat = {tuple(k.split("/")): np.asarray(z[k]) for k in z.files}
  with np.load(os.path.join(entry, "embeddings.npz"), allow_pickle=False) as z:
    embeddings = np.asarray(z["projection"])
  # Check the tree against a fresh init's structure and shapes.
  expected = jax.eval_shape(config.model().init, jax.random.key(0),
                            jax.ShapeDtypeStruct((1,) + tuple(image_shape), jnp.float32))
  expected_flat = traverse_util.flatten_dict(dict(expected))
  if set(expected_flat) != set(flat) or any(expected_flat[k].shape != flat[k].shape for k in flat):
    raise ValueError(f"cache entry {entry}: parameter tree does not match the config's model")
  if embeddings.shape != (num_examples, config.proj_dim):
    raise ValueError(f"cache entry {entry}: embeddings have shape {embeddings.shape}, "
                     f"expected {(num_examples, config.proj_dim)}")
  params = traverse_util.unflatten_dict({k: jnp.asarray(v) for k, v in flat.items()})
  return SurrogateArtifact(params, embeddings, meta.get("history", {}), entry, True)


def load_or_train(key: jax.Array, dataset_meta: dict, images: Any, labels: Any, *,
                  config: SurrogateConfig, cache_dir: str | os.PathLike | None = None,
                  use_cache: bool = True, progress: bool = True,
                  loop: str = "auto") -> SurrogateArtifact:
  """Return a trained surrogate and its training-set embeddings, cached on disk.

  The entry is keyed by a hash of (``dataset_meta``, ``config``, ``key``, a
  sha256 of the ``images``/``labels`` arrays, the cache version) and lives in
  ``cache_root(cache_dir)/<hash>/``: ``params.npz`` (the flattened variables
  tree, ``/``-joined keys), ``embeddings.npz`` (``projection``) and
  ``meta.json`` (the spec, the files' sha256, the training history). The
  entry is written into a temporary directory and renamed into place, so a
  killed run never leaves a partial entry.

  On load every file's sha256 and the tree's shapes are verified. A mismatch
  (tampered/corrupted entry) is *not* fatal: the cache is a derived artifact,
  so we warn (``RuntimeWarning``) and retrain, replacing the bad entry.

  Args:
    key: typed PRNG key for :func:`train_surrogate`.
    dataset_meta: JSON-serialisable description of the data, e.g.
      ``{'name': 'cmnist', 'split': 'train', 'conflict_ratio': 0.05,
      'severity': 4, 'seed': 0, 'source_sha256': ...}``.
    images: (N, H, W, C) float training images.
    labels: (N,) integer labels.
    config: a :class:`SurrogateConfig`.
    cache_dir: override of the cache root.
    use_cache: False trains without reading or writing the cache.
    progress: tqdm bar while training.
    loop: training driver, see :func:`train_surrogate` (not part of the cache
      key: both drivers compute the same steps).

  Returns:
    A :class:`SurrogateArtifact`.

  Example:
    >>> import jax, numpy as np
    >>> x = np.random.rand(64, 8, 8, 3).astype(np.float32); y = np.repeat(np.arange(4), 16)
    >>> cfg = SurrogateConfig.preset('smoke', batch_size=32, epochs=1)
    >>> art = load_or_train(jax.random.key(0), {'name': 'toy'}, x, y, config=cfg,
    ...                     progress=False)  # doctest: +SKIP
    >>> art.embeddings.shape  # doctest: +SKIP
    (64, 32)
  """
  images, labels = _validate_data(images, labels, "load_or_train")
  config = config.for_size(images.shape[0])  # the cache key holds the epochs trained
  spec = _cache_spec(key, dataset_meta, config, images, labels)
  if not use_cache:
    params, history = train_surrogate(key, images, labels, config=config, progress=progress,
                                      loop=loop)
    emb = np.asarray(embed(params, images, config=config))
    return SurrogateArtifact(params, emb, history, None, False)

  root = cache_root(cache_dir)
  entry = os.path.join(root, _spec_hash(spec))
  if os.path.isdir(entry):
    try:
      return _load_entry(entry, spec, config, images.shape[1:], images.shape[0])
    except ValueError as e:
      warnings.warn(f"discarding invalid surrogate cache entry ({e}); retraining", RuntimeWarning,
                    stacklevel=2)

  params, history = train_surrogate(key, images, labels, config=config, progress=progress,
                                      loop=loop)
  emb = np.asarray(embed(params, images, config=config))
  _write_entry(entry, spec, params, emb, history)
  return SurrogateArtifact(params, emb, history, entry, False)


def _write_entry(entry: str, spec: dict, params, emb: np.ndarray, history: dict,
                 **extra: Any) -> None:
  """Writes a cache entry under a temporary name and renames it into place; an existing
  entry (invalid, or one a concurrent run just wrote) is moved aside first."""
  with _io.atomic_directory(entry, prefix=".tmp-") as tmp:
    flat = traverse_util.flatten_dict(jax.device_get(params), sep="/")
    _save_npz(os.path.join(tmp, "params.npz"), {k: np.asarray(v) for k, v in flat.items()})
    _save_npz(os.path.join(tmp, "embeddings.npz"), {"projection": emb})
    meta = {
        "spec": spec,
        "sha256": {name: sha256_file(os.path.join(tmp, name))
                   for name in ("params.npz", "embeddings.npz")},
        "history": history,
        "jax_version": jax.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **extra,
    }
    with open(os.path.join(tmp, "meta.json"), "w") as f:
      json.dump(meta, f, indent=2, sort_keys=True)


#: The files of a cache entry that carry it to another machine (:func:`portable_entries`,
#: :func:`import_entry`): the trained parameters and the spec. The embeddings (N x 128
#: floats, 30 MB for full MNIST) are recomputed from them where the entry is imported.
PORTABLE_FILES = ("params.npz", "meta.json")

_META = schema.obj({"spec": schema.obj({"version": schema.INT, "dataset": schema.ANY,
                                        "config": schema.map_of(schema.ANY),
                                        "key": schema.list_of(schema.INT),
                                        "data_sha256": schema.STR}),
                    "sha256": schema.map_of(schema.STR)}, optional={"history": schema.ANY})


def portable_entries(images: Any, labels: Any, *,
                     cache_dir: str | os.PathLike | None = None) -> list[str]:
  """The cache entries trained on exactly these images and labels (any config, any key), in
  name order: what a run on this data may have used, to carry to another machine with
  their :data:`PORTABLE_FILES`.

  Example:
    >>> import numpy as np, tempfile
    >>> portable_entries(np.zeros((2, 4, 4, 3), np.float32), np.zeros(2, np.int32),
    ...                  cache_dir=tempfile.mkdtemp())
    []
  """
  images, labels = _validate_data(images, labels, "portable_entries")
  root, digest, out = cache_root(cache_dir), _data_fingerprint(images, labels), []
  if not os.path.isdir(root):
    return out
  for name in sorted(os.listdir(root)):
    path = os.path.join(root, name, "meta.json")
    if name.startswith(".") or not os.path.isfile(path):
      continue
    try:
      with open(path) as f:
        spec = json.load(f).get("spec", {})
    except (OSError, ValueError):
      continue
    if isinstance(spec, dict) and spec.get("data_sha256") == digest \
        and spec.get("version") == CACHE_VERSION:
      out.append(os.path.join(root, name))
  return out


def import_entry(src: str | os.PathLike, images: Any, labels: Any, *,
                 cache_dir: str | os.PathLike | None = None) -> str:
  """Puts a cache entry carried from another machine (its :data:`PORTABLE_FILES` in the
  folder ``src``, named by the entry's hash) into this machine's cache, its embeddings
  recomputed from the carried parameters on ``images``, the data it was trained on. A run
  then loads the surrogate it would have trained instead of training another (on an
  accelerator, training twice need not give the same floats). An entry already here and
  valid is kept as it is. Returns the entry's path.

  Raises:
    ValueError: ``src`` is not such an entry (a file missing or changed, another cache
      version), or ``images``/``labels`` are not the data it was trained on.
  """
  src = os.fspath(src)
  name = os.path.basename(os.path.normpath(src))
  meta = schema.read_json(os.path.join(src, "meta.json"), _META,
                          fix="carry the surrogate's entry again")
  spec = meta["spec"]
  if _spec_hash(spec) != name:
    raise ValueError(f"{src}: the folder's name is not its spec's hash; carry the entry as "
                     "it was written")
  if spec["version"] != CACHE_VERSION:
    raise ValueError(f"{src}: a surrogate of cache version {spec['version']}, not "
                     f"{CACHE_VERSION}; it is trained again here instead")
  params_path = os.path.join(src, "params.npz")
  if not os.path.isfile(params_path) or sha256_file(params_path) != meta["sha256"].get(
      "params.npz"):
    raise ValueError(f"{params_path} is missing or not the file its entry recorded; carry "
                     "the entry again")
  images, labels = _validate_data(images, labels, "import_entry")
  if _data_fingerprint(images, labels) != spec["data_sha256"]:
    raise ValueError(f"{src}: the surrogate was trained on other data than these images")
  config = SurrogateConfig(**{k: tuple(v) if isinstance(v, list) else v
                              for k, v in spec["config"].items()})
  entry = os.path.join(cache_root(cache_dir), name)
  if os.path.isdir(entry):
    try:
      _load_entry(entry, spec, config, images.shape[1:], images.shape[0])
      return entry
    except ValueError:
      pass  # an invalid entry here is replaced by the carried one
  with np.load(params_path, allow_pickle=False) as z:
    flat = {tuple(k.split("/")): np.asarray(z[k]) for k in z.files}
  params = traverse_util.unflatten_dict({k: jnp.asarray(v) for k, v in flat.items()})
  emb = np.asarray(embed(params, images, config=config))
  _write_entry(entry, spec, params, emb, meta.get("history", {}),
               imported_from=meta.get("jax_version", "unknown jax"))
  _load_entry(entry, spec, config, images.shape[1:], images.shape[0])  # the shapes checked
  return entry
