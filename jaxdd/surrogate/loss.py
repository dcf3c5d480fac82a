"""The supervised-contrastive loss of the surrogate (:mod:`jaxdd.surrogate`)."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxdd._src.checks import is_traced


# ---------------------------------------------------------------------------
# Loss
# ---------------------------------------------------------------------------


def supcon_loss(embeddings: jax.Array, labels: jax.Array, *, temperature: float = 0.07) -> jax.Array:
  """Supervised-contrastive loss, the "L_out" form of Khosla et al. (2020).

  For anchors ``i`` over the whole batch of M views (two views of B images,
  stacked as ``[view1; view2]`` with ``labels`` repeated)::

    L_i = -1/|P(i)| * sum_{p in P(i)} log( exp(z_i.z_p / t) / sum_{a != i} exp(z_i.z_a / t) )

  where ``P(i)`` are the other views with the same label (docs/protocols.md
  §2.3 Step A, ``HobbitLong/SupContrast`` ``losses.py``). The loss is the mean
  of ``L_i`` over the anchors that have at least one positive.

  Anchors without positives (a label that occurs once in the batch) have an
  undefined ``L_i`` (0/0); they are *left out* of the mean rather than counted
  as 0, so a rare class does not dilute the loss. They still act as negatives
  for every other anchor. With two views per image every anchor has at least
  its own other view as a positive, so this only matters for single-view input.
  If no anchor has a positive the loss is 0 (under jit) or a ``ValueError``
  (eager call), since there is nothing to learn from.

  ``HobbitLong/SupContrast`` multiplies the loss by ``t / 0.07``; that factor
  is 1 at the default temperature and is not applied here.

  Args:
    embeddings: (M, d) float array of L2-normalised embeddings (not
      re-normalised here, so that the hand-checkable inner products are the
      ones the caller passes).
    labels: (M,) integer labels.
    temperature: softmax temperature ``t`` > 0.

  Returns:
    Scalar float32 loss.

  Example:
    >>> import jax.numpy as jnp
    >>> z = jnp.array([[1., 0.], [0., 1.], [1., 0.], [0., 1.]])
    >>> round(float(supcon_loss(z, jnp.array([0, 1, 0, 1]), temperature=1.0)), 4)  # log(1 + 2/e)
    0.5514
  """
  if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
    raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
  if embeddings.ndim != 2:
    raise ValueError(f"embeddings must be (M, d), got shape {embeddings.shape}")
  if labels.shape != (embeddings.shape[0],):
    raise ValueError(f"labels must have shape ({embeddings.shape[0]},) to match embeddings, "
                     f"got {labels.shape}")
  if embeddings.shape[0] < 2:
    raise ValueError("supcon_loss needs at least 2 embeddings (an anchor and a positive)")
  if not is_traced(embeddings) and not bool(jnp.all(jnp.isfinite(embeddings))):
    raise ValueError("embeddings contain NaN or Inf; check the inputs and the learning rate")
  if not is_traced(labels):
    _, label_counts = np.unique(np.asarray(labels), return_counts=True)
    if label_counts.max() < 2:
      raise ValueError("no label occurs twice in the batch, so no anchor has a positive; "
                       "pass two views per image or a batch with >= 2 samples per class")

  z = embeddings.astype(jnp.float32)
  m = z.shape[0]
  logits = (z @ z.T) / temperature
  self_mask = jnp.eye(m, dtype=bool)
  # log-softmax over a != i: exclude the anchor itself from the denominator.
  logits = jnp.where(self_mask, -jnp.inf, logits)
  # log-sum-exp as  max + log1p(sum of the *other* terms after the shift):
  # the plain form max + log(sum) loses the small tail (e.g. 2 e^{-1/t} ~ 1e-6
  # at t = 0.07) next to 1/t ~ 14 in float32, so a nearly converged loss
  # would come out with ~50 % relative error.
  # The shift is the logit *at* the argmax (take_along_axis), not jnp.max: then
  # L_top + log(1 + sum_{a != top} e^{L_a - L_top}) is exactly log sum_a e^{L_a}
  # as a function of every logit, so its gradient is the softmax even at ties
  # (jnp.max would spread the tie's gradient over the tied entries while the
  # constant "1" term carries none).
  top = jnp.argmax(logits, axis=1)[:, None]
  row_max = jnp.take_along_axis(logits, top, axis=1)
  shifted = logits - row_max
  is_top = jnp.arange(m)[None, :] == top
  rest = jnp.where(is_top | self_mask, 0.0, jnp.exp(shifted)).sum(axis=1, keepdims=True)
  log_prob = shifted - jnp.log1p(rest)
  pos = (labels[:, None] == labels[None, :]) & ~self_mask
  num_pos = pos.sum(axis=1)
  # where() before the sum keeps -inf * 0 (the diagonal) out of the arithmetic.
  sum_log_prob_pos = jnp.where(pos, log_prob, 0.0).sum(axis=1)
  has_pos = num_pos > 0
  per_anchor = -sum_log_prob_pos / jnp.maximum(num_pos, 1)
  per_anchor = jnp.where(has_pos, per_anchor, 0.0)
  return per_anchor.sum() / jnp.maximum(has_pos.sum(), 1)
