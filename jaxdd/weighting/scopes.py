"""Per-sample weights of a whole dataset, at the two scopes of the KDE weighting.

The method weighs real samples by their inverse KDE density in one of two scopes
(docs/protocols.md):

  * :func:`class_scope_weights`: the KDE over the whole class, once.
  * :func:`batch_scope_weights`: the paper's default, the KDE inside each
    sampled real batch of one class (as DM samples its real batches), averaged
    over many batches per sample (:func:`batch_plan`, :func:`per_sample_mean`).

:func:`scope_weights` picks one from a :class:`jaxdd.weighting.KDEConfig`;
:func:`whole_class_weights` normalises precomputed whole-class log densities.

Data contract: ``embeddings`` (N, d) finite floats (the surrogate's projections),
``labels`` (N,) integers in ``[0, num_classes)``; weights come back as (N,) float32
numpy arrays, each non-empty class summing to 1.
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxdd._src import checks
from jaxdd._src import rng as rng_lib
from jaxdd.weighting.density import class_log_density
from jaxdd.weighting.kde import KDEConfig, _check_knobs, weights, weights_from_log_density

__all__ = [
    "batch_plan",
    "batch_scope_weights",
    "class_scope_weights",
    "mean_batch_ess",
    "per_sample_mean",
    "scope_weights",
    "whole_class_weights",
]


def _check_embeddings(embeddings: Any, labels: Any, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
  emb = np.asarray(embeddings)
  labels = np.asarray(labels)
  if emb.ndim != 2:
    raise ValueError(f"embeddings must be (N, d), got shape {emb.shape}")
  if labels.shape != (emb.shape[0],):
    raise ValueError(f"labels must have shape ({emb.shape[0]},) to match embeddings, got {labels.shape}")
  checks.check_labels(labels, num_classes)
  if not np.all(np.isfinite(emb)):
    raise ValueError("embeddings contain NaN or Inf; check the surrogate (a diverged run gives NaN)")
  return emb.astype(np.float32, copy=False), labels.astype(np.int32, copy=False)


def class_scope_weights(embeddings: Any, labels: Any, *, variance: float, temperature: float = 0.25,
                        normalize: str = "power", num_classes: int,
                        block_size: int = 1024) -> np.ndarray:
  """KDE weights with the density of each sample taken over its whole class.

  ``f_i = mean_{j in class(i)} K(z_i, z_j)`` (self included), then
  ``w = N_T(1/f)`` normalised to sum to 1 within each class
  (:func:`jaxdd.weighting.log_density` per class, blocked, then
  :func:`jaxdd.weighting.weights_from_log_density`). A host function (numpy
  out), not for ``jax.jit``: ``variance``, ``temperature`` and ``normalize``
  are always checked.

  Args:
    embeddings: (N, d) embeddings.
    labels: (N,) labels in ``[0, num_classes)``.
    variance: kernel variance, a finite number > 0.
    temperature: normalisation temperature, a finite number > 0.
    normalize: ``softmax`` or ``power`` (see :mod:`jaxdd.weighting.kde`).
    num_classes: number of classes.
    block_size: KDE tile size.

  Returns:
    (N,) float32 numpy weights; every non-empty class sums to 1.

  Example:
    >>> import numpy as np
    >>> z = np.eye(4, dtype=np.float32)[[0, 0, 0, 1]]
    >>> w = class_scope_weights(z, np.zeros(4, int), variance=0.1, normalize='power', num_classes=1)
    >>> bool(w[3] > w[0])
    True
  """
  emb, labels = _check_embeddings(embeddings, labels, num_classes)
  _check_knobs(variance, temperature, normalize)
  log_f = class_log_density(emb, labels, num_classes=num_classes, variance=variance,
                                block_size=block_size)
  w = weights_from_log_density(jnp.asarray(log_f), temperature=temperature, normalize=normalize,
                                   groups=jnp.asarray(labels), num_groups=int(num_classes))
  return np.asarray(w)


def scope_weights(key: jax.Array, embeddings: Any, labels: Any, config: KDEConfig, *,
                  num_classes: int, batch_size: int = 256, num_rounds: int = 20) -> np.ndarray:
  """Per-sample weights of a whole dataset at one :class:`jaxdd.weighting.KDEConfig`, in its scope.

  ``scope='batch'``: :func:`batch_scope_weights` (in-batch weights averaged
  over sampled batches); ``scope='class'``: :func:`class_scope_weights`. The
  package's ``jaxdd.kde_weights`` is :func:`jaxdd.weighting.weights`, the weights
  of the embeddings it is given in one pass, under explicit settings.

  Example:
    >>> z = np.random.default_rng(0).normal(size=(20, 4)).astype(np.float32)
    >>> w = scope_weights(jax.random.key(0), z, np.repeat([0, 1], 10),
    ...                   KDEConfig(scope='class'), num_classes=2)
    >>> np.allclose([w[:10].sum(), w[10:].sum()], 1.0)
    True
  """
  knobs = dict(variance=config.variance, temperature=config.temperature,
               normalize=config.normalize, num_classes=num_classes)
  if config.scope == "class":
    return class_scope_weights(embeddings, labels, **knobs)
  return batch_scope_weights(key, embeddings, labels, batch_size=batch_size,
                             num_rounds=num_rounds, **knobs)


def batch_plan(key: jax.Array, labels: Any, *, batch_size: int, num_classes: int,
               num_rounds: int) -> tuple[np.ndarray, np.ndarray]:
  """Per-class real batches, the way DM samples them, covering every sample each round.

  Per round and class: a random permutation of the class cut into
  ``ceil(N_c / batch_size)`` batches of ``batch_size``; the last one is the
  permutation's *last* ``batch_size`` entries (it overlaps the previous batch
  rather than being short). Every batch is thus a uniformly random
  ``batch_size``-subset of the class, as ``randperm(N_c)[:batch_size]`` in DM,
  and every sample is in at least one batch per round. A class with
  ``N_c < batch_size`` gives one batch holding the whole class, padded with
  masked rows (DM's ``randperm(N_c)[:n]`` returns the whole class, too).

  Args:
    key: typed PRNG key.
    labels: (N,) labels in ``[0, num_classes)``.
    batch_size: real samples per class batch (DM: 256).
    num_classes: number of classes.
    num_rounds: number of passes over every class.

  Returns:
    ``(index, mask)``: (num_batches, batch_size) int32 row indices into the
    data and the matching bool validity mask (padding rows index 0).

  Example:
    >>> import jax, numpy as np
    >>> idx, m = batch_plan(jax.random.key(0), np.array([0] * 5 + [1] * 2), batch_size=4,
    ...                     num_classes=2, num_rounds=1)
    >>> idx.shape, m.sum(1).tolist()
    ((3, 4), [4, 4, 2])
  """
  labels = np.asarray(labels)
  if not (isinstance(batch_size, (int, np.integer)) and batch_size >= 2):
    raise ValueError(f"batch_size must be an integer >= 2 (a density needs neighbours), got {batch_size!r}")
  if not (isinstance(num_rounds, (int, np.integer)) and num_rounds >= 1):
    raise ValueError(f"num_rounds must be an integer >= 1, got {num_rounds!r}")
  rng = rng_lib.numpy_rng(key)
  members = [np.flatnonzero(labels == c) for c in range(int(num_classes))]
  rows, masks = [], []
  for _ in range(int(num_rounds)):
    for idx in members:
      n_c = idx.size
      if n_c == 0:
        continue
      perm = idx[rng.permutation(n_c)]
      if n_c <= batch_size:
        row = np.zeros(batch_size, np.int64)
        row[:n_c] = perm
        mask = np.arange(batch_size) < n_c
        rows.append(row)
        masks.append(mask)
        continue
      num = -(-n_c // batch_size)
      for b in range(num):
        start = min(b * batch_size, n_c - batch_size)
        rows.append(perm[start:start + batch_size])
        masks.append(np.ones(batch_size, bool))
  if not rows:
    return np.zeros((0, batch_size), np.int32), np.zeros((0, batch_size), bool)
  return np.stack(rows).astype(np.int32), np.stack(masks)


# Batches per vmapped KDE call in batch_scope_weights.
_CHUNK_BATCHES = 256


@functools.partial(jax.jit, static_argnames=("normalize",))
def _batched_weights(emb, index, mask, variance, temperature, *, normalize: str):
  """In-batch weights of (B, n) batches of rows ``index`` of ``emb`` (one program per
  normalisation and shape, the rows gathered inside it)."""
  def one(emb, mask):
    return weights(emb, variance=variance, temperature=temperature, normalize=normalize,
                   mask=mask)

  return jax.vmap(one)(emb[index], mask)


def batch_scope_weights(key: jax.Array, embeddings: Any, labels: Any, *, batch_size: int = 256,
                        variance: float, temperature: float = 0.25, normalize: str = "power",
                        num_classes: int, num_rounds: int = 20,
                        return_ess: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
  """KDE weights computed inside sampled per-class batches (the paper's scope).

  DM draws, every iteration, ``batch_size`` real images per class and (with
  the reweighting) estimates the density only inside that batch (facts box
  (a) of docs/protocols.md). A sample's weight therefore depends on the batch
  it lands in. To summarise it with one number per sample we draw
  ``num_rounds`` rounds of batches with :func:`batch_plan`, compute the
  in-batch weights (summing to 1 over each batch) with :func:`jaxdd.weighting.weights`,
  average each sample's weight over the batches it appeared in, and
  renormalise so that each class sums to 1, as :func:`class_scope_weights`.
  A host function (numpy out), not for ``jax.jit``: ``variance``,
  ``temperature`` and ``normalize`` are always checked.

  Args:
    key: typed PRNG key (batch sampling).
    embeddings: (N, d) embeddings.
    labels: (N,) labels in ``[0, num_classes)``.
    batch_size: real samples per class batch (DM default 256).
    variance: kernel variance, a finite number > 0.
    temperature: normalisation temperature, a finite number > 0.
    normalize: ``softmax`` or ``power``.
    num_classes: number of classes.
    num_rounds: passes over every class; each sample is averaged over at
      least ``num_rounds`` batches.
    return_ess: also return each class's mean effective sample size of its
      in-batch weights, ``1 / sum_b w_b^2`` averaged over its batches.

  Returns:
    (N,) float32 numpy weights, each non-empty class summing to 1; with
    ``return_ess`` also a (num_classes,) array (NaN for an empty class).

  Example:
    >>> import jax, numpy as np
    >>> z = np.random.default_rng(0).normal(size=(20, 4)).astype(np.float32)
    >>> w = batch_scope_weights(jax.random.key(0), z, np.repeat([0, 1], 10), batch_size=4,
    ...                         variance=1.0, num_classes=2, num_rounds=2)
    >>> np.allclose([w[:10].sum(), w[10:].sum()], 1.0)
    True
  """
  emb, labels = _check_embeddings(embeddings, labels, num_classes)
  _check_knobs(variance, temperature, normalize)
  index, mask = batch_plan(key, labels, batch_size=batch_size, num_classes=num_classes,
                           num_rounds=num_rounds)
  n = labels.shape[0]
  if index.shape[0] == 0:
    empty = np.zeros((n,), np.float32)
    return (empty, np.full(int(num_classes), np.nan)) if return_ess else empty
  fn = functools.partial(_batched_weights, normalize=normalize)
  # Fixed-size chunks of batches: bounded memory (chunk x batch_size x d) and a
  # single compilation; the last chunk is padded with fully masked batches.
  num_batches = index.shape[0]
  chunk = min(_CHUNK_BATCHES, num_batches)
  pad = -num_batches % chunk
  index_p = np.concatenate([index, np.zeros((pad, batch_size), index.dtype)])
  mask_p = np.concatenate([mask, np.zeros((pad, batch_size), bool)])
  emb_dev = jnp.asarray(emb)
  parts = []
  for s in range(0, index_p.shape[0], chunk):
    parts.append(np.asarray(fn(emb_dev, jnp.asarray(index_p[s:s + chunk]),
                               jnp.asarray(mask_p[s:s + chunk]), jnp.float32(variance),
                               jnp.float32(temperature))))
  w_batches = np.concatenate(parts)[:num_batches].astype(np.float64)
  out = per_sample_mean(w_batches, index, mask, labels, int(num_classes))
  if not return_ess:
    return out
  return out, mean_batch_ess(w_batches, mask, labels[index[:, 0]], int(num_classes))


def per_sample_mean(w_batches: np.ndarray, index: np.ndarray, mask: np.ndarray,
                    labels: np.ndarray, num_classes: int) -> np.ndarray:
  """Each sample's in-batch weight averaged over the batches it was drawn in.

  ``w_batches``, ``index``, ``mask``: (B, n) in-batch weights, rows and validity
  of sampled batches (:func:`batch_plan`). The averages are renormalised so that
  each non-empty class sums to 1; a sample never drawn gets 0. Returns (N,) float32.
  """
  labels = np.asarray(labels)
  sums = np.zeros(labels.shape[0], np.float64)
  counts = np.zeros(labels.shape[0], np.float64)
  np.add.at(sums, index[mask], np.asarray(w_batches, np.float64)[mask])
  np.add.at(counts, index[mask], 1.0)
  avg = sums / np.maximum(counts, 1.0)
  class_total = np.bincount(labels, weights=avg, minlength=num_classes)
  return (avg / np.where(class_total > 0, class_total, 1.0)[labels]).astype(np.float32)


def mean_batch_ess(w_batches: np.ndarray, mask: np.ndarray, batch_class: np.ndarray,
                    num_classes: int) -> np.ndarray:
  """Per class, the mean over its batches of ``(sum w)^2 / sum w^2`` (NaN: no batch)."""
  w = np.where(mask, w_batches, 0.0)
  total = w.sum(axis=1)
  sq = (w ** 2).sum(axis=1)
  ess = np.where(sq > 0, total ** 2 / np.where(sq > 0, sq, 1.0), 0.0)
  out = np.full(num_classes, np.nan)
  for c in range(num_classes):
    sel = batch_class == c
    if sel.any():
      out[c] = float(ess[sel].mean())
  return out


def whole_class_weights(labels: Any, log_density: np.ndarray | None, num_classes: int,
                        config: KDEConfig | None = None) -> np.ndarray:
  """(N,) per-image weights over whole classes, each class summing to 1.

  From whole-class log densities (:func:`jaxdd.weighting.class_log_density`, or the
  oracle's :func:`jaxdd.weighting.oracle_log_density`) under ``config``'s temperature
  and normalisation; uniform within each class when ``log_density`` is None (the
  vanilla method, ``config`` unused).

  Example:
    >>> whole_class_weights([0, 0, 0, 1], None, 2)
    array([0.33333334, 0.33333334, 0.33333334, 1.        ], dtype=float32)
    >>> w = whole_class_weights([0, 0, 1], np.log([0.5, 0.25, 1.0]), 2,
    ...                         KDEConfig(temperature=1.0))
    >>> [round(float(v), 4) for v in w]
    [0.3333, 0.6667, 1.0]
  """
  labels = np.asarray(labels)
  if log_density is None:
    return (1.0 / np.bincount(labels, minlength=num_classes)[labels]).astype(np.float32)
  w = np.zeros(len(labels), np.float32)
  for c in range(num_classes):
    sel = labels == c
    w[sel] = np.asarray(weights_from_log_density(
        jnp.asarray(log_density[sel]), temperature=config.temperature,
        normalize=config.normalize))
  return w
