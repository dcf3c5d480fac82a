"""Weights from the TRUE group (bias) labels: the oracle's and FairDD's.

The KDE weighting never reads the bias labels; these two references do:

* the oracle (group-balanced reweighting): :func:`oracle_log_density`, each
  sample's "density" is its (class, bias) group's share of its class, so that
  power-normalised weights at T = 1 give every bias group present in a class the
  same total weight;
* FairDD (Zhou et al. 2025): :func:`group_balanced_weights`, its synchronized
  matching of every group's mean written as in-batch weights and a class scale,
  and :func:`fairdd_batch_weights`, those in-batch weights averaged per sample
  over sampled batches (a run's weight diagnostics).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxdd.weighting.scopes import batch_plan, mean_batch_ess, per_sample_mean

__all__ = [
    "fairdd_batch_weights",
    "group_balanced_weights",
    "oracle_log_density",
]


def oracle_log_density(labels, bias, *, num_classes: int) -> np.ndarray:
  """log of each sample's (class, bias) group share of its class: the oracle's "density".

  With power normalisation at T = 1 the weights are ``1 / group size``,
  normalised: every bias group present in a class gets the same total weight
  (group-balanced reweighting, which needs the TRUE bias labels).

  Example:
    >>> np.exp(oracle_log_density([0, 0, 0, 1], [0, 0, 1, 1], num_classes=2)).round(4)
    array([0.6667, 0.6667, 0.3333, 1.    ], dtype=float32)
  """
  labels = np.asarray(labels)
  bias = np.asarray(bias)
  out = np.zeros(labels.shape, np.float64)
  for c in range(num_classes):
    sel = labels == c
    if not sel.any():
      continue
    values, inverse, counts = np.unique(bias[sel], return_inverse=True, return_counts=True)
    out[sel] = np.log(counts[inverse] / sel.sum())
  return out.astype(np.float32)


def group_balanced_weights(groups: jax.Array, mask: jax.Array,
                           num_groups: int) -> tuple[jax.Array, jax.Array]:
  """FairDD's synchronized matching (Zhou et al. 2025) as weights and a class scale.

  FairDD matches the synthetic mean of a class to the mean of *every* group
  (bias value) present in the class's real batch: ``sum_g ||m_g - s||^2``. With
  ``G`` groups present and ``m`` the unweighted average of their means, that
  equals ``G ||m - s||^2 + sum_g ||m_g - m||^2``, whose second term does not
  depend on the synthetic images. So the same gradient comes from the DM loss
  with group-balanced weights ``w_i = 1 / (G n_g(i))`` and the class's term
  scaled by ``G``; the loss value omits that constant spread of the group means.

  Args:
    groups: (C, B) integer group (bias) labels of a sampled batch.
    mask: (C, B) validity mask.
    num_groups: number of group values.

  Returns:
    ``(weights, class_scale)``: (C, B) rows summing to 1, and (C,) ``G`` per class.

  Example:
    >>> import jax.numpy as jnp
    >>> w, g = group_balanced_weights(jnp.array([[0, 0, 0, 1]]), jnp.ones((1, 4), bool), 2)
    >>> [round(float(v), 4) for v in w[0]], float(g[0])
    ([0.1667, 0.1667, 0.1667, 0.5], 2.0)
  """
  onehot = jax.nn.one_hot(groups, num_groups, dtype=jnp.float32) * mask[..., None]
  counts = onehot.sum(axis=1)  # (C, G)
  present = (counts > 0).sum(axis=1).astype(jnp.float32)  # (C,)
  n_own = jnp.take_along_axis(counts, groups, axis=1)  # (C, B)
  w = jnp.where(mask, 1.0 / (jnp.maximum(present, 1.0)[:, None] * jnp.maximum(n_own, 1.0)), 0.0)
  return w, present



def fairdd_batch_weights(key: jax.Array, labels, bias, batch_size: int, num_classes: int,
                         num_rounds: int = 20) -> tuple[np.ndarray, np.ndarray]:
  """FairDD's in-batch group-balanced weights, averaged per sample over sampled batches.

  The batches are those of :func:`jaxdd.weighting.batch_plan`.

  Returns:
    (N,) weights (each class summing to 1) and each class's mean in-batch ESS.
  """
  labels, bias = np.asarray(labels), np.asarray(bias)
  index, mask = batch_plan(key, labels, batch_size=batch_size,
                           num_classes=num_classes, num_rounds=num_rounds)
  w_b, _ = jax.jit(group_balanced_weights, static_argnums=2)(  # one program, not one an op
      jnp.asarray(bias[index]), jnp.asarray(mask), int(bias.max()) + 1)
  w_b = np.asarray(w_b, np.float64)
  w = per_sample_mean(w_b, index, mask, labels, num_classes)
  return w, mean_batch_ess(w_b, mask, labels[index[:, 0]], num_classes)
