"""Diagnostics of the bias-aware weights: do bias-conflicting samples get more weight?

The method works only if the normalised inverse KDE density puts *more* weight
on bias-conflicting samples than on bias-aligned ones (docs/protocols.md:
"samples in low-density regions get higher weights"). This module measures
that with the ground-truth ``aligned`` flags and bias labels that the method
itself never reads: the aligned/conflicting split (:func:`weight_report`), the
share of each bias group and the effective sample sizes (:func:`group_report`,
:func:`batch_ess`), over a grid of settings (:func:`weight_sweep`), the
report a run writes to ``weights.json`` (:func:`run_report`), and how well
label-free pseudo-groups recover the bias groups (:func:`group_recovery`).

Data contract:
  * ``weights``: (N,) finite, non-negative floats (any scale; the KDE weights
    of :mod:`jaxdd.weighting` sum to 1 per class).
  * ``labels``: (N,) integers in ``[0, num_classes)``.
  * ``aligned``: (N,) bool, True for bias-aligned samples, False for
    bias-conflicting ones.
  * Reports are plain dicts of Python scalars; a quantity that is undefined
    (e.g. an AUROC for a class without conflicting samples) is ``None`` so the
    dict is valid JSON as is.
"""
from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np

from jaxdd import progress as progress_lib
from jaxdd._src import checks
from jaxdd.weighting.kde import SCOPES, KDEConfig, _check_positive_knob
from jaxdd.weighting.scopes import batch_plan, mean_batch_ess, scope_weights

__all__ = [
    "auroc",
    "batch_ess",
    "group_recovery",
    "group_report",
    "run_report",
    "weight_report",
    "weight_sweep",
]


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
  checks.check_labels(labels, num_classes)
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


def weight_sweep(key: jax.Array, embeddings: Any, labels: Any, aligned: Any, *, num_classes: int,
                 variances: Sequence[float], temperatures: Sequence[float],
                 batch_size: int = 256, num_rounds: int = 20,
                 progress: bool = False) -> list[dict]:
  """:func:`weight_report` over scope x normalisation x variance x temperature.

  ``progress``: report every setting weighed (:mod:`jaxdd.progress`).

  Returns:
    One dict per setting: ``scope``, ``normalize``, ``variance``,
    ``temperature`` and ``report``.

  Raises:
    ValueError: a variance or temperature that is not a finite number > 0
      (named by its place, e.g. ``variances[1]``), before any setting is weighed.
  """
  for name, what, example, values in (
      ("variances", "a kernel variance", 0.01, variances),
      ("temperatures", "a normalisation temperature", 0.25, temperatures)):
    for i, value in enumerate(values):
      _check_positive_knob(f"{name}[{i}]", value, what=what, example=example)
  rows = []
  grid = [(s, n, v, t) for s in SCOPES for n in ("power", "softmax") for v in variances
          for t in temperatures]
  for scope, normalize, variance, temperature in progress_lib.track(
      grid, "KDE sweep", unit="setting", disable=not progress):
    cfg = KDEConfig(variance, temperature, normalize, scope)
    w = scope_weights(key, embeddings, labels, cfg, num_classes=num_classes,
                      batch_size=batch_size, num_rounds=num_rounds)
    rows.append(dict(scope=scope, normalize=normalize, variance=variance,
                     temperature=temperature,
                     report=weight_report(w, labels, aligned, num_classes=num_classes)))
  return rows


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
  checks.check_labels(labels, num_classes)
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
  checks.check_labels(labels, num_classes)
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


def run_report(weights: Any, ess: Any, labels: Any, aligned: Any, bias: Any, *,
               num_classes: int) -> dict[str, Any]:
  """What a run's ``weights.json`` reports about its per-image weights (TRUE bias labels).

  :func:`weight_report` (aligned vs conflicting), with ``groups`` (per class:
  :func:`group_report`) and ``batch_ess`` (per class, the effective sample size of
  one sampled real batch, ``ess``; None where it is not finite).

  Example:
    >>> r = run_report([0.5, 0.5], [2.0], [0, 0], [True, False], [0, 1], num_classes=1)
    >>> r["batch_ess"], r["groups"][0]["shares"]
    ([2.0], {0: 0.5, 1: 0.5})
  """
  report = weight_report(weights, labels, aligned, num_classes=num_classes)
  report["groups"] = group_report(weights, labels, bias, num_classes=num_classes)
  report["batch_ess"] = [None if not np.isfinite(e) else float(e) for e in ess]
  return report


def _pairs(n: np.ndarray) -> float:
  return float((n * (n - 1) / 2.0).sum())


def _adjusted_rand(a: np.ndarray, b: np.ndarray) -> float | None:
  """The adjusted Rand index of two partitions (Hubert & Arabie 1985); None when undefined
  (both partitions trivial)."""
  _, ia = np.unique(a, return_inverse=True)
  _, ib = np.unique(b, return_inverse=True)
  table = np.zeros((ia.max() + 1, ib.max() + 1))
  np.add.at(table, (ia, ib), 1)
  index, rows, cols = _pairs(table), _pairs(table.sum(1)), _pairs(table.sum(0))
  expected = rows * cols / _pairs(np.array([a.size]))
  top = (rows + cols) / 2.0
  return None if top == expected else float((index - expected) / (top - expected))


def group_recovery(groups: Any, labels: Any, bias: Any, aligned: Any, *,
                   num_classes: int) -> dict[str, Any]:
  """How well pseudo-groups (cluster ids within each class) recover the TRUE bias groups.

  A diagnostic computed after the fact from the bias labels, which the pseudo-groups never
  read. Within each class, every (class, pseudo-group) cell is given its most common bias
  value:

  * ``purity``: the fraction of samples whose bias value is their cell's most common one;
  * ``majority_baseline``: the purity of one group per class (the share of each class's
    most common bias value), what purity gives for nothing on biased data;
  * ``adjusted_purity``: ``(purity - baseline) / (1 - baseline)``, 0 when the groups add
    nothing over one group per class, 1 when every cell is pure (None if the baseline is 1);
  * ``adjusted_rand_index``: the mean over classes with two or more bias values of the
    adjusted Rand index of pseudo-groups and bias values (0: chance, 1: equal partitions);
  * ``conflicting_in_conflicting_groups``: the fraction of bias-conflicting samples whose
    cell is mostly bias-conflicting (None without conflicting samples).

  Example:
    >>> r = group_recovery([0, 0, 1, 1], [0, 0, 0, 0], [0, 0, 1, 2], [True, True, False, False],
    ...                    num_classes=1)
    >>> r["purity"], r["majority_baseline"], r["adjusted_purity"]
    (0.75, 0.5, 0.5)
    >>> r["conflicting_in_conflicting_groups"]
    1.0
  """
  groups, labels = np.asarray(groups), np.asarray(labels)
  bias, aligned = np.asarray(bias), np.asarray(aligned, bool)
  checks.check_labels(labels, num_classes)
  if not groups.shape == labels.shape == bias.shape == aligned.shape:
    raise ValueError("groups, labels, bias and aligned must have the same length, got "
                     f"{groups.shape}, {labels.shape}, {bias.shape}, {aligned.shape}")
  pure = base = hit = 0
  aris = []
  for c in range(int(num_classes)):
    sel = labels == c
    g, b, al = groups[sel], bias[sel], aligned[sel]
    if g.size == 0:
      continue
    base += np.unique(b, return_counts=True)[1].max()
    for v in np.unique(g):
      cell = g == v
      pure += np.unique(b[cell], return_counts=True)[1].max()
      if al[cell].mean() < 0.5:
        hit += int((~al[cell]).sum())
    if np.unique(b).size > 1:
      aris.append(_adjusted_rand(g, b))
  n, n_conf = labels.size, int((~aligned).sum())
  purity, baseline = pure / n, base / n
  aris = [a for a in aris if a is not None]
  return {"purity": float(purity), "majority_baseline": float(baseline),
          "adjusted_purity": (float((purity - baseline) / (1 - baseline)) if baseline < 1
                              else None),
          "adjusted_rand_index": float(np.mean(aris)) if aris else None,
          "conflicting_in_conflicting_groups": hit / n_conf if n_conf else None}
