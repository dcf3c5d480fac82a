"""Training tasks: what the trainer (:mod:`jaxdd.train`) trains.

A :class:`TrainTask` bundles ``init``, ``loss`` and ``predict`` of one training
method; the trainer calls its ``loss`` with a :class:`StepBatch` at every step
and reports :class:`TrainMetrics` per epoch. :func:`standard_task` is plain
cross-entropy training (the reference's evaluation); :mod:`jaxdd.debias` builds
LfF and DFA as tasks, and :mod:`jaxdd.diagnostics` trains its bias-attribute
classifier with :func:`standard_task`. The names are re-exported by
:mod:`jaxdd.train` (and :mod:`jaxdd.evaluate`).
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jaxdd._src.bound import bound


class StepBatch(NamedTuple):
  """What a training task's loss sees at one step.

  ``images`` are already augmented; ``index`` are the rows of the training set
  (per-sample state such as LfF's loss EMA); ``key`` is this step's key;
  ``step`` the global step counter (0-based, traced); ``progress`` =
  ``step / total_steps`` in [0, 1) (for warm-ups defined as a fraction of
  training, e.g. DFA's feature swap).
  """
  images: jax.Array
  labels: jax.Array
  index: jax.Array
  key: jax.Array
  step: jax.Array
  progress: jax.Array


class TrainTask(NamedTuple):
  """A training method pluggable into the evaluation trainer.

  ``init(key, images, labels) -> (params, state)``: ``params`` get SGD,
  ``state`` (batch-norm statistics, per-sample EMAs, ...) is carried along.
  ``loss(params, state, batch: StepBatch) -> (mean_loss, (new_state,
  logits))``: differentiated w.r.t. ``params``; ``logits`` measure train
  accuracy against the batch's labels, or against ``targets`` when the loss returns
  ``(logits, targets)`` in their place (a method that trains on other labels, such as
  SelecMix's mixed pairs), and ``None`` measures none. ``predict(params, state,
  images) -> logits`` in eval mode. ``name`` stamps results. The trainer's compiled programs are keyed on the task:
  :func:`standard_task` builds its functions as values (module-level functions with
  the model bound), so equal models give equal tasks, which share programs. A task
  made of closures works too, with one program per task object.

  ``per_sample=True`` declares that ``loss`` is the mean of independent
  per-sample terms and leaves ``state`` unchanged whenever ``state`` is empty
  (no batch statistics, no stochastic layers): the trainer may then compute a
  step's gradient micro-batch by micro-batch and average (faster on CPU,
  where small activations stay in cache; see docs/results/speed-evaluation.md, "Evaluation side by side with the PyTorch reference").
  The result is the same up to float reassociation.
  """
  name: str
  init: Callable[..., Any]
  loss: Callable[..., Any]
  predict: Callable[..., Any]
  per_sample: bool = False


class TrainMetrics(NamedTuple):
  """Per-epoch training loss and accuracy, shape (..., protocol.num_epochs)."""
  loss: jax.Array
  acc: jax.Array


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Per-sample cross-entropy; ``labels`` integer (n,) or soft (n, classes).

  Example:
    >>> import jax.numpy as jnp
    >>> round(float(cross_entropy(jnp.zeros((1, 2)), jnp.array([1]))[0]), 4)
    0.6931
  """
  if labels.ndim == logits.ndim:
    return optax.softmax_cross_entropy(logits, labels)
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def hard_labels(labels: jax.Array) -> jax.Array:
  """Integer labels of integer (n,) or soft (n, classes) labels.

  Args:
    labels: (n,) integers or (n, classes) soft labels.

  Returns:
    (n,) integer labels (the argmax of soft labels).

  Example:
    >>> import jax.numpy as jnp
    >>> hard_labels(jnp.array([[0.2, 0.8]])).tolist()
    [1]
  """
  return jnp.argmax(labels, axis=-1) if labels.ndim == 2 else labels


def split_variables(variables) -> tuple[Any, dict]:
  """Splits flax ``variables`` into ``(params, other collections)``.

  Args:
    variables: a flax variables dict with a ``"params"`` entry.

  Returns:
    ``(variables["params"], {every other collection})``.

  Example:
    >>> split_variables({"params": 1, "batch_stats": 2})
    (1, {'batch_stats': 2})
  """
  variables = dict(variables)
  params = variables.pop("params")
  return params, variables


def apply_train(model: nn.Module, params, state: dict, x: jax.Array, key: jax.Array,
                **kwargs) -> tuple[Any, dict]:
  """Applies ``model`` in training mode; returns ``(output, new_state)``.

  Collections in ``state`` (e.g. ``batch_stats``) are made mutable, so
  batch-norm models update their running statistics; a dropout rng is passed
  (models without dropout ignore it).

  Args:
    model: a Flax module with a ``train`` keyword.
    params: its ``params`` collection.
    state: its other collections (may be empty).
    x: input batch.
    key: rng for stochastic layers.
    **kwargs: forwarded to ``model.apply`` (e.g. ``return_features=True``).

  Returns:
    ``(output, new_state)``.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxdd import models
    >>> m = models.ConvNet(num_classes=2, width=4, norm="batch")
    >>> p, s = split_variables(m.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3))))
    >>> out, s2 = apply_train(m, p, s, jnp.ones((2, 8, 8, 3)), jax.random.key(1))
    >>> sorted(s2)
    ['batch_stats']
  """
  variables = {"params": params, **state}
  mutable = sorted(state)
  if mutable:
    out, updates = model.apply(variables, x, train=True, mutable=mutable,
                               rngs={"dropout": key}, **kwargs)
    return out, {**state, **dict(updates)}
  return model.apply(variables, x, train=True, rngs={"dropout": key}, **kwargs), state


def standard_task(model: nn.Module) -> TrainTask:
  """Plain cross-entropy training of ``model`` (the reference's evaluation).

  Args:
    model: any Flax module mapping NHWC images to logits with a ``train``
      keyword (every model in :mod:`jaxdd.models`).

  Returns:
    A :class:`TrainTask` equal to every other one of an equal model (its functions are
    value-compared, so the two share compiled programs).

  Example:
    >>> from jaxdd import models
    >>> standard_task(models.ConvNet(num_classes=2)) == standard_task(models.ConvNet(num_classes=2))
    True
  """
  return TrainTask("train_fresh", bound(_standard_init, model), bound(_standard_loss, model),
                   bound(_standard_predict, model), per_sample=True)


def _standard_init(model, key, images, labels):
  del labels
  return split_variables(model.init(key, images[:1], train=False))


def _standard_loss(model, params, state, batch: StepBatch):
  logits, state = apply_train(model, params, state, batch.images, batch.key)
  return cross_entropy(logits, batch.labels).mean(), (state, logits)


def _standard_predict(model, params, state, images):
  return model.apply({"params": params, **state}, images, train=False)
