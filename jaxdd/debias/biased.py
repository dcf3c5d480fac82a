"""The bias-amplified classifier: a network trained with the generalized cross-entropy on the
class labels alone, whose per-sample difficulty points at the bias-conflicting samples.

LfF (Nam et al., NeurIPS 2020) trains a "biased" network with the generalized cross-entropy
(GCE, Zhang & Sabuncu 2018, ``L_q = (1 - p_y^q) / q``, q = 0.7): its gradient is the
cross-entropy's scaled by ``p_y^q``, so the network leans on the samples it already fits and
learns the attribute that is easiest to learn, the bias, first. The samples it then finds hard
are the bias-conflicting ones. JTT (Liu et al., ICML 2021) takes the error set of a briefly
trained ERM network instead (``q = 0`` here is plain cross-entropy).

:func:`train_biased` trains one such network with jaxdd's one trainer
(:func:`jaxdd.train.fit_epochs`, the task :func:`gce_task`) for a fixed budget of SGD steps, and
:func:`biased_outputs` reads, for every training image, what the weightings of
:mod:`jaxdd.weighting.difficulty` need: the log-probability of its own class
``log p_b(y_i | x_i)``, the predicted class, and the penultimate features. Both are pure in
their key: the same key, data and :class:`BiasedConfig` give the same arrays. Nothing here reads
the bias labels.

Why this module is in :mod:`jaxdd.debias`: it trains a network, LfF's biased one, with the GCE
this package already has; the weights computed from its outputs are pure array functions in
:mod:`jaxdd.weighting`, which trains nothing. :mod:`jaxdd.debias.biased_cache` keeps trained
outputs on disk.

Example:
  >>> import jax, numpy as np
  >>> x = np.random.default_rng(0).random((64, 8, 8, 3), np.float32)
  >>> y = np.repeat(np.arange(2), 32)
  >>> cfg = BiasedConfig(steps=2, batch_size=16, width=4, depth=1)
  >>> variables, history = train_biased(jax.random.key(0), x, y, num_classes=2, config=cfg)
  >>> out = biased_outputs(variables, x, y, num_classes=2, config=cfg)
  >>> out.log_p_label.shape, out.pred.shape, out.features.shape
  ((64,), (64,), (64, 64))
"""
from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import time
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxdd import models
from jaxdd import progress as progress_lib
from jaxdd._src import checks
from jaxdd._src.bound import bound
from jaxdd.debias.common import gce_loss
from jaxdd.protocols import Protocol
from jaxdd.tasks import StepBatch, TrainTask, apply_train, split_variables
from jaxdd.train import fit_epochs

__all__ = ["BiasedConfig", "BiasedOutputs", "NORMS", "biased_outputs", "gce_task",
           "train_biased"]

#: The normalisations the biased network may use (:func:`jaxdd.layers.make_norm`'s names).
NORMS = ("instance", "none", "batch", "layer", "group")


@dataclasses.dataclass(frozen=True)
class BiasedConfig:
  """How the bias-amplified classifier is trained.

  Attributes:
    steps: SGD steps of ``batch_size`` images. When the data holds ``steps * batch_size``
      images, the network sees a random subset of that many, once (exactly ``steps`` steps);
      on smaller data it trains ``round(steps * batch_size / n)`` epochs (at least one) of
      the whole set, every epoch's last partial batch dropped.
    batch_size: images per step.
    width: channels of the ConvNet (:class:`jaxdd.models.ConvNet`).
    depth: its blocks.
    norm: its normalisation.
    q: the GCE exponent (Zhang & Sabuncu; LfF: 0.7); 0 is plain cross-entropy (JTT's ERM).
    lr: the SGD learning rate (constant).
    momentum: SGD momentum.

  The defaults were chosen on the validation splits of CMNIST 5 % and CMNIST-BG 10 %
  (docs/results/weights.md, "A bias-amplified classifier").

  Example:
    >>> BiasedConfig(q=0.0).q
    0.0
    >>> BiasedConfig(q=1.5)
    Traceback (most recent call last):
    ...
    ValueError: BiasedConfig.q (the GCE exponent) must be a number in [0, 1], e.g. 0.7; got 1.5
  """
  steps: int = 200
  batch_size: int = 128
  width: int = 8
  depth: int = 3
  norm: str = "instance"
  q: float = 0.7
  lr: float = 0.01
  momentum: float = 0.9

  def __post_init__(self):
    for name, low in (("steps", 1), ("batch_size", 2), ("width", 1), ("depth", 1)):
      v = getattr(self, name)
      if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < low:
        raise ValueError(f"BiasedConfig.{name} must be an integer >= {low}, got {v!r}")
    if self.norm not in NORMS:
      raise ValueError(f"BiasedConfig.norm must be one of {list(NORMS)}, got {self.norm!r}")
    q, lr, m = self.q, self.lr, self.momentum
    if isinstance(q, bool) or not isinstance(q, numbers.Real) or not 0.0 <= q <= 1.0:
      raise ValueError(f"BiasedConfig.q (the GCE exponent) must be a number in [0, 1], e.g. "
                       f"0.7; got {q!r}")
    if isinstance(lr, bool) or not isinstance(lr, numbers.Real) or not (math.isfinite(lr)
                                                                        and lr > 0):
      raise ValueError(f"BiasedConfig.lr must be a finite number > 0, e.g. 0.01; got {lr!r}")
    if isinstance(m, bool) or not isinstance(m, numbers.Real) or not 0.0 <= m < 1.0:
      raise ValueError(f"BiasedConfig.momentum must be a number in [0, 1), got {m!r}")
    object.__setattr__(self, "q", float(q))
    object.__setattr__(self, "lr", float(lr))
    object.__setattr__(self, "momentum", float(m))

  def model(self, num_classes: int) -> models.ConvNet:
    """The network: a ConvNet of this width, depth and normalisation."""
    return models.ConvNet(num_classes, depth=self.depth, width=self.width, norm=self.norm)

  def plan(self, n: int) -> tuple[int, int]:
    """``(m, epochs)``: train ``epochs`` epochs on a random subset of ``m`` of the ``n``
    images (see ``steps``).

    Example:
      >>> BiasedConfig(steps=10, batch_size=100).plan(5000), BiasedConfig(steps=10, batch_size=100).plan(300)
      ((1000, 1), (300, 3))
    """
    budget = self.steps * self.batch_size
    if n >= budget:
      return budget, 1
    return n, max(1, round(budget / n))

  def protocol(self, epochs: int) -> Protocol:
    """The trainer's recipe: constant-lr SGD with momentum, no weight decay, no augmentation,
    every epoch's last partial batch dropped."""
    return Protocol("biased-gce", epochs=epochs - 1, lr=self.lr, momentum=self.momentum,
                    weight_decay=0.0, batch_size=self.batch_size, decay_at=None,
                    drop_last=True)

  def to_dict(self) -> dict[str, Any]:
    """Every field (the cache key of :mod:`jaxdd.debias.biased_cache`)."""
    return dataclasses.asdict(self)


class BiasedOutputs(NamedTuple):
  """What the biased network says of every training image.

  Attributes:
    log_p_label: (N,) float32 ``log p_b(y_i | x_i)``, the log-probability of its own class
      (``-log_p_label`` is its cross-entropy, the difficulty).
    pred: (N,) int32 predicted class.
    features: (N, d) float32 penultimate features (the ConvNet's flattened last block).
  """
  log_p_label: np.ndarray
  pred: np.ndarray
  features: np.ndarray


def gce_task(model: nn.Module, q: float = 0.7) -> TrainTask:
  """Training ``model`` with the generalized cross-entropy :func:`jaxdd.debias.gce_loss`
  (``q = 0``: cross-entropy) as a :class:`~jaxdd.tasks.TrainTask`, equal for equal arguments.

  Example:
    >>> from jaxdd import models
    >>> m = models.ConvNet(num_classes=2, width=4)
    >>> gce_task(m).name, gce_task(m) == gce_task(m, 0.7)
    ('gce', True)
  """
  return TrainTask("gce", bound(_gce_init, model), bound(_gce_loss, model, float(q)),
                   bound(_gce_predict, model), per_sample=True)


def _gce_init(model, key, images, labels):
  del labels
  return split_variables(model.init(key, images[:1], train=False))


def _gce_loss(model, q, params, state, batch: StepBatch):
  logits, state = apply_train(model, params, state, batch.images, batch.key)
  return gce_loss(logits, batch.labels, q).mean(), (state, logits)


def _gce_predict(model, params, state, images):
  return model.apply({"params": params, **state}, images, train=False)


def _check_data(images: Any, labels: Any, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
  images, labels = np.asarray(images), np.asarray(labels)
  checks.check_images(images, "train_biased", float_fix="convert with images.astype(np.float32)"
                      " / 255", finite_fix="clean the dataset before training")
  if labels.shape != (images.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"labels must be ({images.shape[0]},) integers to match the images, got "
                     f"{labels.dtype} {labels.shape}")
  checks.check_labels(labels, num_classes)
  return images.astype(np.float32, copy=False), labels.astype(np.int32, copy=False)


def train_biased(key: jax.Array, images: Any, labels: Any, *, num_classes: int,
                 config: BiasedConfig | None = None, progress: bool = False
                 ) -> tuple[dict, dict]:
  """Trains the bias-amplified classifier on ``(images, labels)``.

  The key is split into the subset's, the initialisation's and the trainer's; the trainer is
  :func:`jaxdd.train.fit_epochs` with :func:`gce_task` and :meth:`BiasedConfig.protocol` on
  the subset of :meth:`BiasedConfig.plan`. Only the class labels are read.

  Args:
    key: typed PRNG key.
    images: (N, H, W, C) float images, finite.
    labels: (N,) class labels in ``[0, num_classes)``.
    num_classes: number of classes.
    config: a :class:`BiasedConfig` (None: the defaults).
    progress: a progress bar over the epochs.

  Returns:
    ``(variables, history)``: the trained network's flax variables (read them with
    :func:`biased_outputs`) and ``{"loss", "accuracy"}`` (per epoch, on the images
    trained), ``"steps"``, ``"images_trained"`` and ``"seconds"``.

  Raises:
    ValueError: bad images or labels, a typed key missing, fewer images than a batch.
  """
  checks.check_key(key)
  images, labels = _check_data(images, labels, num_classes)
  config = BiasedConfig() if config is None else config
  n = images.shape[0]
  if n < config.batch_size:
    raise ValueError(f"the biased network trains on batches of {config.batch_size} images and "
                     f"the data has {n}; lower BiasedConfig.batch_size")
  m, epochs = config.plan(n)
  k_subset, k_init, k_train = jax.random.split(key, 3)
  rows = np.sort(np.asarray(jax.random.permutation(k_subset, n))[:m]) if m < n else None
  x = jnp.asarray(images if rows is None else images[rows])
  y = jnp.asarray(labels if rows is None else labels[rows])
  model = config.model(num_classes)
  task = gce_task(model, config.q)
  params0, state0 = jax.jit(task.init)(k_init, x[:1], y[:1])  # one program
  protocol = config.protocol(epochs)
  t0 = time.perf_counter()
  history: dict[str, Any] = {"loss": [], "accuracy": [],
                             "steps": epochs * (m // config.batch_size), "images_trained": m}
  bar = progress_lib.bar(epochs, "biased network (GCE)", unit="epoch", disable=not progress)
  # params and state are read after the loop: the last epoch's are the trained ones
  for params, state, metrics in fit_epochs(k_train, params0, state0, x, y, task=task,  # noqa: B007
                                           protocol=protocol):
    loss = float(metrics.loss)
    if not math.isfinite(loss):
      raise FloatingPointError(f"non-finite GCE loss; lower BiasedConfig.lr (now {config.lr})")
    history["loss"].append(loss)
    history["accuracy"].append(float(metrics.acc))
    bar.update(1)
  bar.close()
  history["seconds"] = time.perf_counter() - t0
  return {"params": params, **state}, history


@functools.partial(jax.jit, static_argnames=("model", "n"))
def _output_blocks(variables, blocks, label_blocks, *, model: nn.Module, n: int):
  """log p(own class), prediction and features of (num_blocks, block, ...) images, one block
  at a time (one program per model and shape)."""
  def one(xs):
    x, y = xs
    feats, logits = model.apply(variables, x, train=False, return_features=True)
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), -1)
    own = jnp.take_along_axis(logp, y[:, None], axis=-1)[:, 0]
    return own, jnp.argmax(logits, -1).astype(jnp.int32), feats.astype(jnp.float32)

  own, pred, feats = jax.lax.map(one, (blocks, label_blocks))
  flat = lambda a: a.reshape((-1,) + a.shape[2:])[:n]
  return flat(own), flat(pred), flat(feats)


def biased_outputs(variables: dict, images: Any, labels: Any, *, num_classes: int,
                   config: BiasedConfig, block_size: int = 1024) -> BiasedOutputs:
  """:class:`BiasedOutputs` of a trained network (eval mode) on every image, block by block.

  Example:
    >>> import jax, numpy as np
    >>> cfg = BiasedConfig(width=4, depth=1)
    >>> v = cfg.model(2).init(jax.random.key(0), np.zeros((1, 8, 8, 3), np.float32))
    >>> o = biased_outputs(v, np.zeros((5, 8, 8, 3), np.float32), np.zeros(5, int),
    ...                    num_classes=2, config=cfg)
    >>> o.log_p_label.shape, o.features.shape
    ((5,), (5, 64))
  """
  images, labels = _check_data(images, labels, num_classes)
  n = images.shape[0]
  bs = min(block_size, max(n, 1))
  num_blocks = -(-n // bs)
  pad = num_blocks * bs - n
  if pad:  # on the host: each eager operation would be a program of its own
    images = np.concatenate([images, np.zeros((pad,) + images.shape[1:], images.dtype)])
    labels = np.concatenate([labels, np.zeros(pad, labels.dtype)])
  own, pred, feats = _output_blocks(variables, jnp.asarray(images.reshape((num_blocks, bs)
                                                                          + images.shape[1:])),
                                    jnp.asarray(labels.reshape(num_blocks, bs)),
                                    model=config.model(num_classes), n=n)
  return BiasedOutputs(np.asarray(own), np.asarray(pred), np.asarray(feats))
