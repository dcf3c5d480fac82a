"""The bias score of a synthetic set: how much of it carries its class's aligned bias.

A bias-attribute classifier (:func:`train_bias_classifier`), trained on real images
balanced over the (class, bias) cells, predicts the bias value of every synthetic
image; :func:`bias_score` is the fraction predicted as the bias value aligned with
the image's class (:func:`aligned_bias_values`). It uses the TRUE bias labels: a
diagnostic, never an input of the method. The diagnostics of the real images'
weights live in :mod:`jaxdd.weighting.diagnostics`.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxdd import evaluate as eval_lib
from jaxdd import models
from jaxdd import train as train_lib
from jaxdd._src import checks
from jaxdd._src import rng as rng_lib
from jaxdd._src.checks import check_images
from jaxdd.protocols import Protocol
from jaxdd.structs import SynSet

__all__ = [
    "BIAS_CLASSIFIER_PROTOCOL",
    "BIAS_CLASSIFIER_STEPS",
    "BiasClassifier",
    "aligned_bias_values",
    "bias_score",
    "train_bias_classifier",
]


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
  checks.check_labels(labels, num_classes)
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


@jax.jit
def _first(tree):
  """The first network of every leaf's leading axis, one program (eagerly, one a shape)."""
  return jax.tree.map(lambda a: a[0], tree)


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
  params, state = train_lib.split_variables(_first(variables))

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
  checks.check_labels(syn_labels, classifier.num_classes)
  pred = classifier.predict(syn_images)
  is_aligned = pred == classifier.aligned_values[syn_labels]
  per_class = [float(is_aligned[syn_labels == c].mean()) if (syn_labels == c).any() else None
               for c in range(classifier.num_classes)]
  return {"aligned_fraction": float(is_aligned.mean()), "per_class": per_class,
          "train_aligned_fraction": classifier.train_aligned_fraction,
          "classifier_valid_accuracy": classifier.valid_accuracy,
          "num_synthetic": int(len(syn_images)), "classifier": classifier.recipe}
