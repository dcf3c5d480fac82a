"""Group metrics: overall, bias-aligned, bias-conflicting and worst-group accuracy, and the
equalized-odds differences (DEO) that FairDD reports.

:func:`group_accuracies` scores one prediction vector (pure, jit/vmap-able);
:func:`metrics_for` scores a stack of networks' predictions on a
:class:`~jaxdd.structs.Batch`, using its optional ``bias`` / ``aligned``
annotations. Accuracies are fractions in [0, 1]; empty subsets give NaN.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxdd.structs import Batch

METRICS = ("overall", "aligned", "conflicting", "worst_group")


class GroupAccuracies(NamedTuple):
  """Accuracies of one prediction vector; empty subsets give NaN.

  ``table[c, b]`` is the accuracy on test samples of class ``c`` with bias
  attribute ``b`` (NaN where ``counts[c, b] == 0``); ``worst_group`` is the
  minimum over non-empty groups.
  """
  overall: jax.Array
  aligned: jax.Array
  conflicting: jax.Array
  worst_group: jax.Array
  table: jax.Array
  counts: jax.Array


def group_accuracies(preds: jax.Array, labels: jax.Array, bias: jax.Array, num_classes: int,
                     num_bias: int, aligned: jax.Array | None = None) -> GroupAccuracies:
  """Overall, bias-aligned, bias-conflicting and worst-(class x bias)-group accuracy.

  Pure and jit/vmap-compatible (``num_classes`` and ``num_bias`` are static).

  Args:
    preds: (n,) predicted classes.
    labels: (n,) true classes in ``[0, num_classes)``.
    bias: (n,) bias attribute in ``[0, num_bias)``.
    num_classes: number of classes.
    num_bias: number of bias values.
    aligned: (n,) bool, True for bias-aligned samples; default
      ``bias == labels`` (Colored-MNIST-style attributes, where bias value ``c``
      is the colour of class ``c``).

  Returns:
    :class:`GroupAccuracies`; groups with no samples are ignored by
    ``worst_group`` and are NaN in ``table``; ``aligned``/``conflicting`` are
    NaN when that subset is empty.

  Example:
    >>> import jax.numpy as jnp
    >>> r = group_accuracies(jnp.array([0, 1, 1]), jnp.array([0, 1, 0]),
    ...                      jnp.array([0, 1, 1]), 2, 2)
    >>> round(float(r.overall), 4), float(r.conflicting), float(r.worst_group)
    (0.6667, 0.0, 0.0)
  """
  preds = jnp.asarray(preds).astype(jnp.int32)
  labels = jnp.asarray(labels).astype(jnp.int32)
  bias = jnp.asarray(bias).astype(jnp.int32)
  if not (preds.shape == labels.shape == bias.shape and preds.ndim == 1):
    raise ValueError(f"preds, labels and bias must be equal-length vectors, got shapes "
                     f"{preds.shape}, {labels.shape}, {bias.shape}")
  aligned = (bias == labels) if aligned is None else jnp.asarray(aligned).astype(bool)
  correct = (preds == labels).astype(jnp.float32)
  group = labels * num_bias + bias
  size = num_classes * num_bias
  counts = jnp.zeros(size, jnp.float32).at[group].add(1.0, mode="drop")
  hits = jnp.zeros(size, jnp.float32).at[group].add(correct, mode="drop")
  table = jnp.where(counts > 0, hits / jnp.maximum(counts, 1.0), jnp.nan)

  def subset_acc(mask):
    m = mask.astype(jnp.float32)
    total = m.sum()
    return jnp.where(total > 0, (correct * m).sum() / jnp.maximum(total, 1.0), jnp.nan)

  worst = jnp.min(jnp.where(counts > 0, table, jnp.inf))
  worst = jnp.where(jnp.isfinite(worst), worst, jnp.nan)
  return GroupAccuracies(
      overall=subset_acc(jnp.ones_like(aligned)), aligned=subset_acc(aligned),
      conflicting=subset_acc(~aligned), worst_group=worst,
      table=table.reshape(num_classes, num_bias),
      counts=counts.reshape(num_classes, num_bias).astype(jnp.int32))


def metrics_for(preds: jax.Array, batch: Batch, num_classes: int,
                num_bias: int | None) -> GroupAccuracies:
  """Vectorised :func:`group_accuracies` for (M, n) predictions on ``batch``.

  Without ``batch.bias`` the groups are the classes; without both ``bias``
  and ``aligned``, ``aligned`` and ``conflicting`` are NaN.

  Args:
    preds: (M, n) predicted classes of M networks.
    batch: the scored Batch (``labels``, optional ``bias`` / ``aligned``).
    num_classes: number of classes.
    num_bias: number of bias values (default ``max(bias) + 1``).

  Returns:
    :class:`GroupAccuracies` whose fields have a leading axis of size M.

  Example:
    >>> import jax.numpy as jnp
    >>> b = Batch(jnp.zeros((3, 1, 1, 1)), jnp.array([0, 1, 1]), bias=jnp.array([0, 1, 0]))
    >>> metrics_for(jnp.array([[0, 1, 0]]), b, 2, 2).conflicting.tolist()
    [0.0]
  """
  labels = jnp.asarray(batch.labels)
  if batch.bias is None:
    bias, nb = jnp.asarray(np.zeros(labels.shape, labels.dtype)), 1
  else:
    bias = jnp.asarray(batch.bias)
    nb = num_bias if num_bias is not None else int(np.max(batch.bias)) + 1
    if int(np.max(batch.bias)) >= nb:
      raise ValueError(f"bias values reach {int(np.max(batch.bias))} but num_bias={nb}")
  aligned = None if batch.aligned is None else jnp.asarray(batch.aligned)
  if batch.bias is None and aligned is None:
    # Without bias annotations only overall (and per-class) accuracy is defined.
    aligned_arg = jnp.asarray(np.zeros(labels.shape, bool))
  else:
    aligned_arg = aligned
  out = _scored(jnp.asarray(preds), labels, bias, aligned_arg, num_classes=int(num_classes),
                num_bias=int(nb))
  if batch.bias is None and aligned is None:
    nan = jnp.asarray(np.full(out.aligned.shape, np.nan, out.aligned.dtype))
    out = out._replace(aligned=nan, conflicting=nan)
  return out


@functools.partial(jax.jit, static_argnames=("num_classes", "num_bias"))
def _scored(preds, labels, bias, aligned, *, num_classes: int, num_bias: int) -> GroupAccuracies:
  """:func:`group_accuracies` of every row of ``preds``, one compiled program (called
  eagerly, its dozens of operations would each be compiled on their own)."""
  fn = functools.partial(group_accuracies, num_classes=num_classes, num_bias=num_bias)
  return jax.vmap(lambda p: fn(p, labels, bias, aligned=aligned))(preds)


def equalized_odds(table, counts, *, empty: str = "zero") -> tuple[np.ndarray, np.ndarray]:
  """DEO_M and DEO_A: the largest and the mean over classes of the spread of a class's accuracy
  across bias groups (FairDD, NeurIPS 2025, its evaluation code's ``max_Equalized_Odds`` and
  ``mean_Equalized_Odds``).

  For each class ``c``, the accuracy on test samples of class ``c`` in bias group ``b`` (the true
  positive rate of ``c`` within ``b``) is ``table[c, b]``; the class's spread is its maximum minus
  its minimum over ``b``. DEO_M is the maximum of the spreads over classes, DEO_A their mean.

  Args:
    table: (..., classes, bias values) accuracies in [0, 1], as
      :attr:`GroupAccuracies.table` (NaN where a group is empty).
    counts: (classes, bias values) or (..., classes, bias values) test counts per group.
    empty: how an empty (class, group) cell counts: ``"zero"`` as accuracy 0, as FairDD's code
      does (it divides by ``count + 1e-8``), so its numbers compare with FairDD's; ``"skip"``
      leaves it out of the class's spread.

  Returns:
    ``(deo_max, deo_mean)``, fractions with the leading shape of ``table`` (one per network).

  Example:
    >>> import numpy as np
    >>> t = np.array([[1.0, 0.5], [0.8, 0.6]])    # class 0: 1.0 / 0.5, class 1: 0.8 / 0.6
    >>> m, a = equalized_odds(t, np.ones((2, 2)))
    >>> round(float(m), 4), round(float(a), 4)    # spreads 0.5 and 0.2
    (0.5, 0.35)
  """
  if empty not in ("zero", "skip"):
    raise ValueError(f"empty must be 'zero' or 'skip', got {empty!r}")
  table = np.asarray(table, np.float64)
  present = np.broadcast_to(np.asarray(counts) > 0, table.shape)
  if table.ndim < 2:
    raise ValueError(f"table must be (..., classes, bias values), got shape {table.shape}")
  if empty == "zero":
    acc = np.where(present, np.nan_to_num(table, nan=0.0), 0.0)
    spread = acc.max(axis=-1) - acc.min(axis=-1)
  else:
    hi = np.where(present, table, -np.inf).max(axis=-1)
    lo = np.where(present, table, np.inf).min(axis=-1)
    spread = np.where(np.isfinite(hi) & np.isfinite(lo), hi - lo, np.nan)
  return np.nanmax(spread, axis=-1), np.nanmean(spread, axis=-1)

