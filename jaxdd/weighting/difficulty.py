"""Weights from a bias-amplified classifier: its per-sample difficulty and its error set.

A network trained on the biased data to learn the bias first (:mod:`jaxdd.debias.biased`, LfF's
GCE-trained "biased" network) fits the bias-aligned images and fails on the bias-conflicting
ones. Two label-free weightings read its outputs, each normalised within every class (the
per-image weights of a non-empty class sum to 1, as :func:`jaxdd.weighting.whole_class_weights`):

* :func:`difficulty_weights` (``--weighting gce``): weight proportional to the biased
  network's cross-entropy ``-log p_b(y_i | x_i)``, the difficulty LfF's relative-difficulty
  score is built from (Nam et al. 2020, eq. 3: ``W = CE_b / (CE_b + CE_d)``), mixed with the
  uniform weight so that every image keeps at least ``floor / N_c`` (N_c: its class's size).
  The cross-entropy rather than ``1 - p_b``: it keeps separating images the network is very
  sure of (``p_b`` of 0.99 against 0.9999), where ``1 - p_b`` saturates at 0 for every
  aligned image and at 1 for every conflicting one.
* :func:`error_set_weights` (``--weighting jtt``): the error set ``E`` (prediction ≠ label)
  up-weighted, as JTT (Liu et al. 2021) does. By default each class's ``E`` and its complement
  carry half of the class's weight each, the two-group balance that FairDD and the oracle
  apply to true groups; with ``up`` a fixed factor, JTT's ``lambda_up``: an error weighs
  ``up`` times a correct image. A class whose ``E`` is empty (or all of it) keeps uniform
  weights.

Both are pure ``jax.numpy`` functions of arrays: they compose with ``jax.jit`` (``num_classes``
static) and ``jax.vmap``. A third weighting of the same network, the paper's KDE in its
penultimate features (``--kde-features biased``), is the KDE of :mod:`jaxdd.weighting.kde`
given those features (:func:`unit_rows`: on the unit sphere, as the surrogate's
embeddings are).

Data contract: ``labels`` (N,) integers in ``[0, num_classes)``; ``log_p_label`` (N,) finite
floats <= 0; ``pred`` (N,) integers; weights come back as (N,) float32, each non-empty class
summing to 1, every weight > 0.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["DIFFICULTY_FLOOR", "difficulty_weights", "error_set_weights", "unit_rows"]

#: The default floor of :func:`difficulty_weights`: every image keeps at least a tenth of the
#: uniform weight of its class.
DIFFICULTY_FLOOR = 0.1


def _class_sum(x: jax.Array, labels: jax.Array, num_classes: int) -> jax.Array:
  """Each sample's class total of ``x``."""
  return jax.ops.segment_sum(x, labels, num_segments=num_classes)[labels]


def difficulty_weights(log_p_label: jax.Array, labels: jax.Array, *, num_classes: int,
                       floor: float = DIFFICULTY_FLOOR) -> jax.Array:
  """Per-class weights proportional to the biased network's cross-entropy, with a floor.

  ``w_i = (1 - floor) * d_i / sum_{j in c} d_j + floor / N_c`` with ``d_i = -log p_b(y_i |
  x_i)`` and ``c`` the class of ``i``: the difficulty's share of the class, mixed with the
  uniform weight, so every image keeps at least ``floor / N_c`` and the order of the
  difficulties is kept. A class whose every difficulty is 0 keeps uniform weights.

  Args:
    log_p_label: (N,) ``log p_b(y_i | x_i)`` (:class:`jaxdd.debias.BiasedOutputs`).
    labels: (N,) class labels.
    num_classes: number of classes (static under ``jit``).
    floor: the uniform share, in (0, 1]; 1 gives uniform weights.

  Returns:
    (N,) float32 weights, each non-empty class summing to 1.

  Example:
    >>> import jax.numpy as jnp
    >>> w = difficulty_weights(jnp.log(jnp.array([0.5, 0.5, 0.5, 0.25])), jnp.array([0, 0, 0, 1]),
    ...                        num_classes=2, floor=0.5)
    >>> [round(float(v), 4) for v in w]
    [0.3333, 0.3333, 0.3333, 1.0]
  """
  d = jnp.maximum(-jnp.asarray(log_p_label, jnp.float32), 0.0)
  labels = jnp.asarray(labels)
  count = _class_sum(jnp.ones_like(d), labels, num_classes)
  total = _class_sum(d, labels, num_classes)
  share = jnp.where(total > 0, d / jnp.where(total > 0, total, 1.0), 1.0 / count)
  return (1.0 - floor) * share + floor / count


def error_set_weights(pred: jax.Array, labels: jax.Array, *, num_classes: int,
                      up: float | None = None) -> jax.Array:
  """Per-class weights that up-weight the biased network's error set ``E`` (JTT).

  ``up=None``: inside each class ``E`` and its complement carry half the weight each,
  uniformly within each (``w_i = 1 / (2 |E_c|)`` on an error, ``1 / (2 (N_c - |E_c|))``
  otherwise). ``up`` a number >= 1: JTT's ``lambda_up``, ``w_i ∝ up`` on an error and 1
  otherwise, normalised within the class. A class with no error, or nothing else, keeps
  uniform weights.

  Args:
    pred: (N,) the biased network's predicted classes.
    labels: (N,) class labels.
    num_classes: number of classes (static under ``jit``).
    up: None (the balance) or JTT's up-weighting factor.

  Returns:
    (N,) float32 weights, each non-empty class summing to 1.

  Example:
    >>> import jax.numpy as jnp
    >>> pred, y = jnp.array([0, 0, 0, 1, 1]), jnp.array([0, 0, 0, 0, 1])
    >>> [round(float(v), 4) for v in error_set_weights(pred, y, num_classes=2)]
    [0.1667, 0.1667, 0.1667, 0.5, 1.0]
    >>> [round(float(v), 4) for v in error_set_weights(pred, y, num_classes=2, up=6.0)]
    [0.1111, 0.1111, 0.1111, 0.6667, 1.0]
  """
  labels = jnp.asarray(labels)
  err = (jnp.asarray(pred) != labels).astype(jnp.float32)
  count = _class_sum(jnp.ones_like(err), labels, num_classes)
  if up is None:
    errors = _class_sum(err, labels, num_classes)
    own = jnp.where(err > 0, errors, count - errors)  # the size of the sample's part
    both = (errors > 0) & (errors < count)
    return jnp.where(both, 0.5 / jnp.maximum(own, 1.0), 1.0 / count)
  raw = jnp.where(err > 0, jnp.asarray(up, jnp.float32), 1.0)
  return raw / _class_sum(raw, labels, num_classes)


def unit_rows(features: jax.Array, eps: float = 1e-12) -> jax.Array:
  """Rows scaled to unit L2 norm (a zero row stays zero): the biased network's features put
  on the sphere the surrogate's embeddings live on, so the KDE's variance means the same.

  Example:
    >>> import jax.numpy as jnp
    >>> unit_rows(jnp.array([[3.0, 4.0], [0.0, 0.0]])).tolist()
    [[0.6000000238418579, 0.800000011920929], [0.0, 0.0]]
  """
  x = jnp.asarray(features, jnp.float32)
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)
