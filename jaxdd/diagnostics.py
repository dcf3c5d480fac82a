"""Diagnostics of the bias-aware weights: do bias-conflicting samples get more weight?

The method works only if the normalised inverse KDE density puts *more* weight
on bias-conflicting samples than on bias-aligned ones (docs/protocols.md:
"samples in low-density regions get higher weights"). This module measures
that with the ground-truth ``aligned`` flags that the method itself never reads.

Data contract:
  * ``weights``: (N,) finite, non-negative floats (any scale; the KDE weights
    of ``jaxdd.kde`` sum to 1 per class).
  * ``labels``: (N,) integers in ``[0, num_classes)``.
  * ``aligned``: (N,) bool, True for bias-aligned samples, False for
    bias-conflicting ones.
  * ``embeddings``: (N, d) finite floats (the surrogate's projections).
  * Reports are plain dicts of Python scalars; a quantity that is undefined
    (e.g. an AUROC for a class without conflicting samples) is ``None`` so the
    dict is valid JSON as is.

Two scopes of weights (docs/protocols.md):
  * :func:`class_scope_weights`: the KDE over the whole class, once.
  * :func:`batch_scope_weights`: the paper's default, the KDE inside each
    sampled real batch of one class (as DM samples its real batches), averaged
    over many batches per sample.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxdd import evaluate as eval_lib
from jaxdd import kde, models
from jaxdd import train as train_lib
from jaxdd.plots import plot_weight_histogram  # the plot lives with the other plots
from jaxdd._src import rng as rng_lib
from jaxdd._src.checks import check_images
from jaxdd.protocols import Protocol
from jaxdd.structs import SynSet

__all__ = [
    "auroc",
    "weight_report",
    "plot_weight_histogram",
    "class_scope_weights",
    "batch_scope_weights",
    "batch_plan",
    "per_sample_mean",
    "mean_batch_ess",
    "aligned_bias_values",
    "BiasClassifier",
    "train_bias_classifier",
    "bias_score",
]


# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------


def auroc(scores: Any, positive: Any) -> float | None:
  """Area under the ROC curve of ``scores`` ranking positives above negatives.

  The Mann-Whitney U statistic divided by ``n_pos * n_neg``: the probability
  that a random positive scores higher than a random negative, ties counted
  1/2. Computed from average ranks in O(n log n).

  Args:
    scores: (N,) finite floats.
    positive: (N,) bool.

  Returns:
    AUROC in [0, 1], or None when either class is empty (undefined).

  Example:
    >>> auroc([3., 2., 1., 2.], [True, True, False, False])  # (1 + 1 + 1 + 0.5) / 4
    0.875
  """
  scores = np.asarray(scores, np.float64)
  positive = np.asarray(positive, bool)
  if scores.shape != positive.shape or scores.ndim != 1:
    raise ValueError(f"scores and positive must be 1-D of equal length, got {scores.shape} and "
                     f"{positive.shape}")
  n_pos = int(positive.sum())
  n_neg = positive.size - n_pos
  if n_pos == 0 or n_neg == 0:
    return None
  # Average 1-based ranks: tied values share the mean of the ranks they span.
  _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
  avg_rank = np.cumsum(counts) - (counts - 1) / 2.0
  ranks = avg_rank[inverse]
  u = ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0
  return float(u / (n_pos * n_neg))


def _group_stats(w: np.ndarray, conflicting: np.ndarray) -> dict[str, Any]:
  n = int(w.size)
  n_conf = int(conflicting.sum())
  n_al = n - n_conf
  mean_c = float(w[conflicting].mean()) if n_conf else None
  mean_a = float(w[~conflicting].mean()) if n_al else None
  total = float(w.sum())
  return {
      "n": n,
      "n_conflicting": n_conf,
      "n_aligned": n_al,
      "mean_weight_conflicting": mean_c,
      "mean_weight_aligned": mean_a,
      # Scale-free summary: how many times more weight a conflicting sample
      # gets than an aligned one, on average (1.0 = no reweighting effect).
      "weight_ratio": (mean_c / mean_a) if (mean_c is not None and mean_a) else None,
      # Fraction of the total weight on conflicting samples: before (every
      # sample weight 1, i.e. the conflict ratio) and after reweighting.
      "conflicting_fraction_uniform": (n_conf / n) if n else None,
      "conflicting_fraction_weighted": (float(w[conflicting].sum()) / total) if total > 0 else None,
      "auroc": auroc(w, conflicting),
  }


def _check_labels(labels: np.ndarray, num_classes) -> None:
  """Integer labels in [0, num_classes) with a positive int ``num_classes``."""
  if not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"labels must be integers, got {labels.dtype}")
  if not (isinstance(num_classes, (int, np.integer)) and num_classes >= 1):
    raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
  if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
    raise ValueError(f"labels must lie in [0, {num_classes}); got [{labels.min()}, {labels.max()}]")


def weight_report(weights: Any, labels: Any, aligned: Any, *, num_classes: int) -> dict[str, Any]:
  """Summary of how sample weights split between bias-aligned and -conflicting samples.

  For all samples (``overall``) and for every class (``per_class``):
  ``n``, ``n_conflicting``, ``n_aligned``, ``mean_weight_conflicting``,
  ``mean_weight_aligned``, ``weight_ratio`` (their quotient),
  ``conflicting_fraction_uniform`` (share of total weight on conflicting
  samples with uniform weights, i.e. the conflict ratio),
  ``conflicting_fraction_weighted`` (the same share under ``weights``), and
  ``auroc`` (probability that a random conflicting sample outweighs a random
  aligned one, ties 1/2; see :func:`auroc`). The overall numbers use the
  weights as given: with the KDE's per-class normalisation (each class sums to
  1) every class counts equally, as it does in the DM loss.

  Undefined entries (an empty group) are None.

  Args:
    weights: (N,) non-negative finite weights.
    labels: (N,) integer labels in ``[0, num_classes)``.
    aligned: (N,) bool, True = bias-aligned.
    num_classes: number of classes (classes without samples get ``n = 0``).

  Returns:
    ``{'overall': stats, 'per_class': [stats + {'class': c}, ...]}``.

  Example:
    >>> r = weight_report([1., 1., 3., 3.], [0, 0, 0, 0], [True, True, False, False], num_classes=1)
    >>> r['overall']['conflicting_fraction_weighted'], r['overall']['auroc']
    (0.75, 1.0)
  """
  w = np.asarray(weights, np.float64)
  labels = np.asarray(labels)
  aligned = np.asarray(aligned)
  if w.ndim != 1:
    raise ValueError(f"weights must have shape (N,), got {w.shape}")
  if labels.shape != w.shape or aligned.shape != w.shape:
    raise ValueError(f"weights, labels and aligned must have the same length, got {w.shape}, "
                     f"{labels.shape}, {aligned.shape}")
  if aligned.dtype != bool:
    raise ValueError(f"aligned must be boolean, got {aligned.dtype}; pass aligned.astype(bool)")
  _check_labels(labels, num_classes)
  if not np.all(np.isfinite(w)):
    raise ValueError("weights contain NaN or Inf; check the embeddings and the KDE settings")
  if np.any(w < 0):
    raise ValueError("weights must be non-negative")
  conflicting = ~aligned
  per_class = []
  for c in range(int(num_classes)):
    sel = labels == c
    per_class.append({"class": c, **_group_stats(w[sel], conflicting[sel])})
  return {"overall": _group_stats(w, conflicting), "per_class": per_class}


# ---------------------------------------------------------------------------
# Weights at the two scopes
# ---------------------------------------------------------------------------


def _check_embeddings(embeddings: Any, labels: Any, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
  emb = np.asarray(embeddings)
  labels = np.asarray(labels)
  if emb.ndim != 2:
    raise ValueError(f"embeddings must be (N, d), got shape {emb.shape}")
  if labels.shape != (emb.shape[0],):
    raise ValueError(f"labels must have shape ({emb.shape[0]},) to match embeddings, got {labels.shape}")
  _check_labels(labels, num_classes)
  if not np.all(np.isfinite(emb)):
    raise ValueError("embeddings contain NaN or Inf; check the surrogate (a diverged run gives NaN)")
  return emb.astype(np.float32, copy=False), labels.astype(np.int32, copy=False)


def class_scope_weights(embeddings: Any, labels: Any, *, variance: float, temperature: float = 1.0,
                        normalize: str = "softmax", num_classes: int,
                        block_size: int = 1024) -> np.ndarray:
  """KDE weights with the density of each sample taken over its whole class.

  ``f_i = mean_{j in class(i)} K(z_i, z_j)`` (self included), then
  ``w = N_T(1/f)`` normalised to sum to 1 within each class
  (``jaxdd.kde.log_density`` per class, blocked, then
  ``jaxdd.kde.weights_from_log_density``).

  Args:
    embeddings: (N, d) embeddings.
    labels: (N,) labels in ``[0, num_classes)``.
    variance: kernel variance > 0.
    temperature: normalisation temperature > 0.
    normalize: ``softmax`` or ``power`` (see ``jaxdd.kde``).
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
  kde.KDEConfig(variance, temperature, normalize, "class")  # validates the knobs
  log_f = kde.class_log_density(emb, labels, num_classes=num_classes, variance=variance,
                                block_size=block_size)
  w = kde.weights_from_log_density(jnp.asarray(log_f), temperature=temperature, normalize=normalize,
                                   groups=jnp.asarray(labels), num_groups=int(num_classes))
  return np.asarray(w)


def scope_weights(key: jax.Array, embeddings: Any, labels: Any, config: kde.KDEConfig, *,
                  num_classes: int, batch_size: int = 256, num_rounds: int = 20) -> np.ndarray:
  """Per-sample weights of a whole dataset at one :class:`jaxdd.kde.KDEConfig`, in its scope.

  ``scope='batch'``: :func:`batch_scope_weights` (in-batch weights averaged
  over sampled batches); ``scope='class'``: :func:`class_scope_weights`. The
  package's ``jaxdd.kde_weights`` is :func:`jaxdd.kde.weights`, the weights
  of the embeddings it is given in one pass, under explicit settings.

  Example:
    >>> z = np.random.default_rng(0).normal(size=(20, 4)).astype(np.float32)
    >>> w = scope_weights(jax.random.key(0), z, np.repeat([0, 1], 10),
    ...                   kde.KDEConfig(scope='class'), num_classes=2)
    >>> np.allclose([w[:10].sum(), w[10:].sum()], 1.0)
    True
  """
  knobs = dict(variance=config.variance, temperature=config.temperature,
               normalize=config.normalize, num_classes=num_classes)
  if config.scope == "class":
    return class_scope_weights(embeddings, labels, **knobs)
  return batch_scope_weights(key, embeddings, labels, batch_size=batch_size,
                             num_rounds=num_rounds, **knobs)


def weight_sweep(key: jax.Array, embeddings: Any, labels: Any, aligned: Any, *, num_classes: int,
                 variances: Sequence[float], temperatures: Sequence[float],
                 batch_size: int = 256, num_rounds: int = 20) -> list[dict]:
  """:func:`weight_report` over scope x normalisation x variance x temperature.

  Returns:
    One dict per setting: ``scope``, ``normalize``, ``variance``,
    ``temperature`` and ``report``.
  """
  rows = []
  for scope in kde.SCOPES:
    for normalize in ("power", "softmax"):
      for variance in variances:
        for temperature in temperatures:
          cfg = kde.KDEConfig(variance, temperature, normalize, scope)
          w = scope_weights(key, embeddings, labels, cfg, num_classes=num_classes,
                            batch_size=batch_size, num_rounds=num_rounds)
          rows.append(dict(scope=scope, normalize=normalize, variance=variance,
                           temperature=temperature,
                           report=weight_report(w, labels, aligned, num_classes=num_classes)))
  return rows


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


@functools.lru_cache(maxsize=16)
def _batched_weights_fn(normalize: str):
  def one(emb, mask, variance, temperature):
    return kde.weights(emb, variance=variance, temperature=temperature, normalize=normalize,
                       mask=mask)

  return jax.jit(jax.vmap(one, in_axes=(0, 0, None, None)))


def batch_scope_weights(key: jax.Array, embeddings: Any, labels: Any, *, batch_size: int = 256,
                        variance: float, temperature: float = 1.0, normalize: str = "softmax",
                        num_classes: int, num_rounds: int = 20,
                        return_ess: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
  """KDE weights computed inside sampled per-class batches (the paper's scope).

  DM draws, every iteration, ``batch_size`` real images per class and (with
  the reweighting) estimates the density only inside that batch (facts box
  (a) of docs/protocols.md). A sample's weight therefore depends on the batch
  it lands in. To summarise it with one number per sample we draw
  ``num_rounds`` rounds of batches with :func:`batch_plan`, compute the
  in-batch weights (summing to 1 over each batch) with ``jaxdd.kde.weights``,
  average each sample's weight over the batches it appeared in, and
  renormalise so that each class sums to 1, as :func:`class_scope_weights`.

  Args:
    key: typed PRNG key (batch sampling).
    embeddings: (N, d) embeddings.
    labels: (N,) labels in ``[0, num_classes)``.
    batch_size: real samples per class batch (DM default 256).
    variance: kernel variance > 0.
    temperature: normalisation temperature > 0.
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
  kde.KDEConfig(variance, temperature, normalize)  # validates the knobs
  index, mask = batch_plan(key, labels, batch_size=batch_size, num_classes=num_classes,
                           num_rounds=num_rounds)
  n = labels.shape[0]
  if index.shape[0] == 0:
    empty = np.zeros((n,), np.float32)
    return (empty, np.full(int(num_classes), np.nan)) if return_ess else empty
  fn = _batched_weights_fn(normalize)
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
    parts.append(np.asarray(fn(emb_dev[jnp.asarray(index_p[s:s + chunk])], jnp.asarray(mask_p[s:s + chunk]),
                               jnp.float32(variance), jnp.float32(temperature))))
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


def batch_ess(key: jax.Array, weights: Any, labels: Any, *, batch_size: int, num_classes: int,
              num_rounds: int = 20) -> np.ndarray:
  """Mean effective sample size of uniformly drawn batches under fixed per-sample weights.

  For whole-class weights (KDE scope 'class', the oracle) used inside a uniform
  batch of ``batch_size`` per class (renormalised within the batch, as the DM
  loss does): per class, the mean over :func:`batch_plan` batches of
  ``(sum_b w)^2 / sum_b w^2``. ``batch_size`` means every image counts equally;
  1 means one image carries all the weight.

  Example:
    >>> import jax, numpy as np
    >>> ess = batch_ess(jax.random.key(0), np.ones(8) / 4, np.repeat([0, 1], 4), batch_size=4,
    ...                 num_classes=2)
    >>> ess.tolist()
    [4.0, 4.0]
  """
  w = np.asarray(weights, np.float64)
  labels = np.asarray(labels)
  _check_labels(labels, num_classes)
  index, mask = batch_plan(key, labels, batch_size=batch_size, num_classes=num_classes,
                           num_rounds=num_rounds)
  if index.shape[0] == 0:
    return np.full(int(num_classes), np.nan)
  return mean_batch_ess(w[index], mask, labels[index[:, 0]], int(num_classes))


def group_report(weights: Any, labels: Any, bias: Any, *, num_classes: int) -> list[dict[str, Any]]:
  """Per class: how the weight splits over the bias groups, and its effective sample size.

  Uses the TRUE bias labels (a diagnostic, never an input of the method).

  Returns:
    One dict per class: ``class``, ``n``, ``ess`` (``(sum w)^2 / sum w^2`` over
    the whole class: the number of equally weighted images the weights are
    worth), ``shares`` (bias value -> that group's share of the class's
    weight), ``counts`` (bias value -> group size), ``balanced_share`` (1 /
    number of groups present: every group equal), ``min_share`` / ``max_share``,
    and ``group_ess`` (bias value -> the effective sample size of the weights
    inside that group as a fraction of its size: 1 when the group's images
    weigh the same, near 0 when a few of them carry the group's weight).

  Example:
    >>> r = group_report([0.25, 0.25, 0.5], [0, 0, 0], [0, 0, 1], num_classes=1)
    >>> r[0]["shares"], r[0]["balanced_share"], round(r[0]["ess"], 3), r[0]["group_ess"]
    ({0: 0.5, 1: 0.5}, 0.5, 2.667, {0: 1.0, 1: 1.0})
  """
  w = np.asarray(weights, np.float64)
  labels = np.asarray(labels)
  bias = np.asarray(bias)
  _check_labels(labels, num_classes)
  if not (w.shape == labels.shape == bias.shape):
    raise ValueError(f"weights, labels and bias must have the same length, got {w.shape}, "
                     f"{labels.shape}, {bias.shape}")
  out = []
  for c in range(int(num_classes)):
    sel = labels == c
    wc, bc = w[sel], bias[sel]
    total = wc.sum()
    sq = (wc ** 2).sum()
    values, inverse, counts = np.unique(bc, return_inverse=True, return_counts=True)
    sum_g = np.bincount(inverse, weights=wc, minlength=len(values))
    sq_g = np.bincount(inverse, weights=wc ** 2, minlength=len(values))
    shares = {int(v): (float(sum_g[i] / total) if total > 0 else None)
              for i, v in enumerate(values)}
    present = [x for x in shares.values() if x is not None]
    group_ess = {int(v): (float(sum_g[i] ** 2 / sq_g[i] / counts[i]) if sq_g[i] > 0 else None)
                 for i, v in enumerate(values)}
    out.append({"class": c, "n": int(sel.sum()),
                "ess": float(total ** 2 / sq) if sq > 0 else None,
                "shares": shares, "counts": {int(v): int(n) for v, n in zip(values, counts)},
                "balanced_share": (1.0 / len(values)) if len(values) else None,
                "min_share": min(present) if present else None,
                "max_share": max(present) if present else None,
                "group_ess": group_ess})
  return out


# ---------------------------------------------------------------------------
# Bias score of a synthetic set
# ---------------------------------------------------------------------------

#: How the bias-attribute classifier of :func:`bias_score` is trained: the
#: reference's SGD recipe without augmentation (DSA's colour jitter would
#: erase a colour bias); the epochs are set by :func:`train_bias_classifier`.
BIAS_CLASSIFIER_PROTOCOL = dict(name="bias-attribute", epochs=9, augment=None)
#: Default training budget of the bias classifier, in SGD steps of 256 images
#: (10 epochs of the embedded CMNIST's 3,600 images).
BIAS_CLASSIFIER_STEPS = 150


def aligned_bias_values(labels: Any, bias: Any, aligned: Any, *, num_classes: int) -> np.ndarray:
  """The bias value that is aligned with each class: (num_classes,) ints.

  It is the most frequent bias value among the class's bias-aligned training
  samples (for CMNIST, colour ``c`` for digit ``c``).

  Example:
    >>> aligned_bias_values([0, 0, 1, 1], [3, 3, 5, 2], [True, True, True, False], num_classes=2)
    array([3, 5])
  """
  labels, bias, aligned = np.asarray(labels), np.asarray(bias), np.asarray(aligned, bool)
  if not (labels.shape == bias.shape == aligned.shape and labels.ndim == 1):
    raise ValueError(f"labels, bias and aligned must be (N,) arrays of one length, got "
                     f"{labels.shape}, {bias.shape}, {aligned.shape}")
  _check_labels(labels, num_classes)
  out = np.zeros(num_classes, np.int64)
  for c in range(num_classes):
    values = bias[(labels == c) & aligned]
    if values.size == 0:
      raise ValueError(f"class {c} has no bias-aligned training sample, so its aligned bias "
                       "value is unknown; pass a training set with bias-aligned samples per class")
    out[c] = np.bincount(values).argmax()
  return out


def _balanced_rows(key: jax.Array, labels: np.ndarray, bias: np.ndarray) -> np.ndarray:
  """Row indices that visit every non-empty (class, bias) cell equally often.

  ``len(labels)`` rows in total (with replacement inside small cells).
  """
  rng = rng_lib.numpy_rng(key)
  cells = [np.flatnonzero((labels == c) & (bias == b))
           for c in np.unique(labels) for b in np.unique(bias)]
  cells = [c for c in cells if c.size]
  per_cell = -(-len(labels) // len(cells))
  rows = np.concatenate([rng.choice(c, per_cell, replace=c.size < per_cell) for c in cells])
  return rng.permutation(rows)[:len(labels)]


class BiasClassifier(NamedTuple):
  """A trained bias-attribute classifier (see :func:`train_bias_classifier`).

  Attributes:
    predict: (n, H, W, C) images -> (n,) predicted bias values (numpy).
    aligned_values: (num_classes,) the bias value aligned with each class.
    num_classes: number of classes.
    train_aligned_fraction: bias-aligned fraction of its training set.
    valid_accuracy: accuracy on held-out data (``all``, ``conflicting``), or None.
    recipe: how it was trained (JSON-ready).
  """
  predict: Callable[[np.ndarray], np.ndarray]
  aligned_values: np.ndarray
  num_classes: int
  train_aligned_fraction: float
  valid_accuracy: dict | None
  recipe: dict


def train_bias_classifier(key: jax.Array, train_images: Any, train_labels: Any, train_bias: Any,
                          train_aligned: Any, *, num_classes: int,
                          valid: tuple[Any, Any, Any] | None = None, width: int = 32,
                          epochs: int | None = None, num_models: int = 1,
                          aligned_values: Any | None = None) -> BiasClassifier:
  """Trains the classifier of the bias attribute that :func:`bias_score` uses.

  A ConvNet-3 of ``width`` learns the training images' *bias* labels (the
  digit colour for CMNIST, the background colour for BG-FMNIST, the
  corruption for corruption-biased data) on a group-balanced resample: every
  non-empty (class, bias value) cell is drawn equally often, so the class,
  which gives the bias value away 95 % of the time in the raw data, is no
  shortcut. SGD as the evaluation protocols, no augmentation (DSA's colour
  jitter would erase a colour bias).

  Args:
    key: typed PRNG key (resampling, init, batch order).
    train_images, train_labels, train_bias, train_aligned: the biased training
      set, images normalised as the synthetic images will be.
    num_classes: number of classes.
    valid: optional ``(images, labels, bias)`` of held-out data; the accuracy
      on it, overall and on its bias-conflicting samples (where the class does
      not give the answer away), is kept as ``valid_accuracy``.
    width: the classifier's width.
    epochs: training epochs; default: enough for
      :data:`BIAS_CLASSIFIER_STEPS` SGD steps of 256 images, at least 1.
    num_models: classifiers trained; predictions are a majority vote.
    aligned_values: (num_classes,) the bias value aligned with each class,
      when the dataset declares it (jaxdd's biased datasets: ``arange``, since
      ``aligned == (bias == labels)``); default: read off the training set's
      bias-aligned samples (:func:`aligned_bias_values`), which needs at least
      one per class -- an anti-biased training set (Biased-DD's aligned
      fraction 0) has none, so pass the declared values there.

  Returns:
    A :class:`BiasClassifier`; train it once per training set and score any
    number of synthetic sets with it.
  """
  check_images(train_images, "train_bias_classifier", what="train_images", floating=False,
               min_count=1)
  train_images = np.asarray(train_images, np.float32)
  if epochs is None:
    epochs = max(1, -(-BIAS_CLASSIFIER_STEPS * 256 // len(train_images)))
  if not isinstance(epochs, int) or epochs < 1:
    raise ValueError(f"epochs must be a positive int, got {epochs!r}")
  bias = np.asarray(train_bias)
  labels = np.asarray(train_labels)
  num_bias = int(bias.max()) + 1
  if aligned_values is None:
    aligned_values = aligned_bias_values(labels, bias, train_aligned, num_classes=num_classes)
  else:
    given = np.asarray(aligned_values)
    if (given.shape != (num_classes,) or not np.issubdtype(given.dtype, np.integer)
        or given.min() < 0):
      raise ValueError(f"aligned_values must be ({num_classes},) non-negative ints (the bias "
                       f"value aligned with each class), got {given.dtype} {given.shape}")
    aligned_values = given.astype(np.int64)
  protocol = Protocol(**{**BIAS_CLASSIFIER_PROTOCOL, "epochs": epochs - 1})
  model = models.ConvNet(num_bias, width=width)
  k_rows, k_train = jax.random.split(key)
  rows = _balanced_rows(k_rows, labels, bias)
  variables, _ = train_lib.train_models(
      k_train, SynSet(jnp.asarray(train_images[rows]), jnp.asarray(bias[rows])),
      model=model, protocol=protocol, num_models=num_models)
  task = train_lib.standard_task(model)
  params, state = train_lib.split_variables(jax.tree.map(lambda a: a[0], variables))

  def predict(images) -> np.ndarray:
    check_images(images, "bias_score", floating=False, finite_fix="the SynSet is corrupted")
    images = np.asarray(images, np.float32)
    if images.shape[1:] != train_images.shape[1:]:
      raise ValueError(f"bias_score: images must be (n,) + {train_images.shape[1:]} like the "
                       f"classifier's training images, got {images.shape}")
    votes = np.asarray(eval_lib.predict(task, params, state, images, protocol=protocol,
                                        parallel="map"))
    counts = np.stack([(votes == b).sum(0) for b in range(num_bias)], -1)
    return counts.argmax(-1)

  valid_acc = None
  if valid is not None:
    v_labels, v_bias = np.asarray(valid[1]), np.asarray(valid[2])
    hit = predict(valid[0]) == v_bias
    conflicting = v_bias != aligned_values[v_labels]
    valid_acc = {"all": float(hit.mean()),
                 "conflicting": float(hit[conflicting].mean()) if conflicting.any() else None,
                 "num_conflicting": int(conflicting.sum())}
  return BiasClassifier(predict, aligned_values, num_classes,
                        float(np.asarray(train_aligned, bool).mean()), valid_acc,
                        {"model": f"convnet-d3-w{width}", "num_models": num_models,
                         "training": "group-balanced resample of the training set",
                         "protocol": protocol.to_dict()})


def bias_score(classifier: BiasClassifier, syn_images: Any, syn_labels: Any) -> dict[str, Any]:
  """Fraction of a synthetic set's images that carry their class's aligned bias.

  The bias-attribute ``classifier`` (:func:`train_bias_classifier`) predicts
  the bias attribute of every synthetic image; an image counts as
  bias-aligned when the prediction is the bias value aligned with its class
  (:func:`aligned_bias_values`). Compare ``aligned_fraction`` with
  ``train_aligned_fraction`` (0.95 for a 5 % bias-conflicting set): a larger
  value means distillation amplified the bias, a smaller one that it was
  mitigated.

  Args:
    classifier: a trained :class:`BiasClassifier`.
    syn_images: (M, H, W, C) synthetic images, normalised like the classifier's
      training images.
    syn_labels: (M,) their classes (hard labels).

  Returns:
    A JSON-ready dict: ``aligned_fraction``, ``per_class`` (aligned fraction
    per class, None for a class without images), ``train_aligned_fraction``,
    ``classifier_valid_accuracy``, ``num_synthetic`` and the classifier recipe.
  """
  syn_images = np.asarray(syn_images, np.float32)
  syn_labels = np.asarray(syn_labels)
  if syn_labels.shape != (len(syn_images),):
    raise ValueError(f"syn_labels must be (M,) hard labels with M = {len(syn_images)}, "
                     f"got {syn_labels.shape}")
  _check_labels(syn_labels, classifier.num_classes)
  pred = classifier.predict(syn_images)
  is_aligned = pred == classifier.aligned_values[syn_labels]
  per_class = [float(is_aligned[syn_labels == c].mean()) if (syn_labels == c).any() else None
               for c in range(classifier.num_classes)]
  return {"aligned_fraction": float(is_aligned.mean()), "per_class": per_class,
          "train_aligned_fraction": classifier.train_aligned_fraction,
          "classifier_valid_accuracy": classifier.valid_accuracy,
          "num_synthetic": int(len(syn_images)), "classifier": classifier.recipe}
