"""Training the surrogate (SupCon on jaxdd's one trainer) and blocked inference."""
from __future__ import annotations

import functools
import math
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxdd import progress as progress_lib
from jaxdd import train
from jaxdd._src.bound import bound
from jaxdd._src import checks
from jaxdd._src.checks import is_traced
from jaxdd.augment import two_views
from jaxdd.train import torch_sgd
from jaxdd.surrogate.loss import supcon_loss
from jaxdd.surrogate.model import SurrogateConfig, _l2_normalize


# ---------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------


class TrainState(NamedTuple):
  """The carry of the surrogate's former own training loop (params, collections,
  optimiser state, step). Kept for one release; training now goes through
  :func:`jaxdd.train.fit_epochs` and no longer uses it."""
  params: Any
  model_state: Any  # non-trainable collections (``batch_stats``) or {}
  opt_state: Any
  step: jax.Array


def make_optimizer(config: SurrogateConfig, steps_per_epoch: int) -> optax.GradientTransformation:
  """The surrogate's optimiser as one optax transformation: SGD with momentum,
  L2 weight decay and the configured learning-rate schedule.

  Weight decay is added to the gradient *before* momentum, as
  ``torch.optim.SGD(weight_decay=...)`` (used by ``HobbitLong/SupContrast``)
  does; it applies to every parameter, biases and norm scales included. The
  update is the trainer's :func:`jaxdd.train.torch_sgd`. Training itself runs
  the same update through :func:`jaxdd.train.fit_epochs` with
  :meth:`SurrogateConfig.protocol`, which evaluates the cosine per step.

  Args:
    config: the surrogate config (learning_rate, momentum, weight_decay,
      schedule, epochs).
    steps_per_epoch: optimiser steps per epoch (sets the cosine horizon).

  Returns:
    An ``optax.GradientTransformation``.

  Example:
    >>> tx = make_optimizer(SurrogateConfig.preset('smoke'), steps_per_epoch=10)
  """
  total = max(config.epochs * steps_per_epoch, 1)
  if config.schedule == "cosine":
    lr = optax.cosine_decay_schedule(config.learning_rate, decay_steps=total)
  else:
    lr = config.learning_rate
  return torch_sgd(lr, momentum=config.momentum, weight_decay=config.weight_decay)


def _validate_data(images: Any, labels: Any, who: str) -> tuple[np.ndarray, np.ndarray]:
  images = np.asarray(images)
  labels = np.asarray(labels)
  checks.check_images(images, who, float_fix="convert with images.astype(np.float32) / 255",
                      finite_fix="clean the dataset before training the surrogate")
  if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
    raise ValueError(f"labels must have shape ({images.shape[0]},) to match images, got {labels.shape}")
  if not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
  if labels.size and labels.min() < 0:
    raise ValueError("labels must be >= 0")
  return images.astype(np.float32, copy=False), labels.astype(np.int32, copy=False)


LOOPS = train.LOOPS


def supcon_task(config: SurrogateConfig) -> train.TrainTask:
  """The surrogate's SupCon training as a :class:`~jaxdd.tasks.TrainTask` (equal for equal
  configs, so they share compiled programs).

  ``loss`` draws two random-resized-crop views of every image of the batch
  from the step key (:func:`~jaxdd.augment.two_views`), embeds both in train
  mode (batch-norm statistics update when ``norm='batch'``) and returns the
  SupCon loss of the ``2B`` views with their repeated labels; it has no
  logits (``None``). ``predict`` returns the L2-normalised projections.

  Example:
    >>> task = supcon_task(SurrogateConfig.preset('smoke'))
    >>> task.name, task.per_sample, task == supcon_task(SurrogateConfig.preset('smoke'))
    ('supcon', False, True)
  """
  return train.TrainTask("supcon", bound(_supcon_init, config), bound(_supcon_loss, config),
                         bound(_supcon_predict, config), per_sample=False)


def _supcon_init(config: SurrogateConfig, key, images, labels):
  del labels
  variables = dict(config.model().init(key, jnp.zeros((1,) + images.shape[1:], jnp.float32)))
  params = variables.pop("params")
  return params, variables


def _supcon_loss(config: SurrogateConfig, params, state, batch):
  model = config.model()
  views = two_views(batch.key, batch.images, scale=config.crop_scale, ratio=config.crop_ratio,
                    flip=config.flip)
  view_labels = jnp.concatenate([batch.labels, batch.labels])
  variables = {"params": params, **state}
  if state:  # batch norm: update running statistics (static structure).
    z, new_state = model.apply(variables, views, train=True, mutable=list(state))
  else:
    z, new_state = model.apply(variables, views, train=True), state
  return supcon_loss(z, view_labels, temperature=config.temperature), (new_state, None)


def _supcon_predict(config: SurrogateConfig, params, state, images):
  return config.model().apply({"params": params, **state}, images, train=False)


def train_surrogate(key: jax.Array, images: Any, labels: Any, *, config: SurrogateConfig,
                    progress: bool = True, loop: str = "auto") -> tuple[dict, dict]:
  """Train the SupCon surrogate on a (biased) training set.

  The training run is jaxdd's one trainer (:func:`jaxdd.train.fit_epochs`)
  with :func:`supcon_task` and the config's recipe
  (:meth:`SurrogateConfig.protocol`: SGD + momentum with coupled weight decay,
  the cosine or constant lr, and every epoch's last partial batch dropped, so
  that one batch shape compiles once and no small batch enters the
  contrastive denominator). The dataset is put on device once. Each epoch
  shuffles with ``fold_in(key_shuffle, epoch)`` and step ``i`` draws its two
  views from ``fold_in(fold_in(key_step, epoch), i)``, so the same key gives
  the same params. ``loop='scan'`` compiles each epoch into one program
  (``lax.scan`` over its steps); ``loop='step'`` calls one compiled step per
  batch from the host (same arithmetic; results agree to float rounding).
  ``auto`` takes the active :mod:`jaxdd.policy`'s ``train_loop``: ``step`` on
  CPU, where XLA runs backward convolutions inside a ``lax.scan`` far slower,
  and ``scan`` on accelerators. A tqdm bar runs over epochs. Training stops
  with ``FloatingPointError`` on a non-finite loss.

  Speed: docs/results/weights.md and docs/reproducing.md give the training time of the
  ``cpu`` preset on the embedded CMNIST (3,600 x 28x28x3, 14 steps of 256 images an epoch).

  Args:
    key: typed PRNG key (split into init / shuffle / step keys).
    images: (N, H, W, C) float images (numpy or jax), finite.
    labels: (N,) integer labels; every present class needs >= 2 samples.
    config: a :class:`SurrogateConfig`.
    progress: show a tqdm bar over epochs.
    loop: ``auto``, ``scan`` or ``step`` (see above).

  Returns:
    ``(params, history)``: the flax variables dict, and a dict with
    ``loss`` (per-epoch mean loss, list), ``epoch_seconds`` (list),
    ``steps_per_epoch``, ``dropped_per_epoch`` and ``loop``.

  Raises:
    ValueError: bad shapes, NaN images, batch larger than the dataset, a class
      with a single sample, an unknown ``loop``.

  Example:
    >>> import jax, numpy as np
    >>> x = np.random.rand(64, 8, 8, 3).astype(np.float32)
    >>> y = np.repeat(np.arange(4), 16)
    >>> cfg = SurrogateConfig.preset('smoke', batch_size=32, epochs=1)
    >>> params, hist = train_surrogate(jax.random.key(0), x, y, config=cfg,
    ...                                progress=False)  # doctest: +SKIP
    >>> len(hist['loss'])  # doctest: +SKIP
    1
  """
  loop = train.resolve_loop(loop)
  images, labels = _validate_data(images, labels, "train_surrogate")
  n = images.shape[0]
  config = config.for_size(n)
  if config.batch_size > n:
    raise ValueError(f"batch_size {config.batch_size} is larger than the dataset ({n} images); "
                     f"lower SurrogateConfig.batch_size to at most {n}")
  counts = np.bincount(labels)
  singletons = np.flatnonzero(counts == 1)
  if singletons.size:
    raise ValueError(f"class(es) {singletons.tolist()} have a single sample; SupCon needs >= 2 samples "
                     "per class to form same-class positives. Drop those classes or add samples.")
  if np.count_nonzero(counts) < 2:
    raise ValueError("the training set has a single class; SupCon needs >= 2 classes to have negatives")

  task = supcon_task(config)
  k_init, k_train = jax.random.split(key)
  # one program (called eagerly, the model's initialisation compiles every layer's operations
  # on their own); the images give the shapes only
  params, model_state = jax.jit(task.init)(k_init, images[:1], labels[:1])
  steps = n // config.batch_size
  history: dict[str, Any] = {"loss": [], "epoch_seconds": [], "steps_per_epoch": steps,
                             "dropped_per_epoch": n - steps * config.batch_size, "loop": loop}
  bar = progress_lib.bar(config.epochs, "surrogate (SupCon)", unit="epoch", disable=not progress)
  epochs = train.fit_epochs(k_train, params, model_state, jnp.asarray(images), jnp.asarray(labels),
                            task=task, protocol=config.protocol(), loop=loop)
  t0 = time.perf_counter()
  # params and model_state are read after the loop: the last epoch's are the trained ones.
  for epoch, (params, model_state, metrics) in enumerate(epochs):  # noqa: B007
    mean_loss = float(metrics.loss)  # blocks until the epoch is done
    history["epoch_seconds"].append(time.perf_counter() - t0)
    if not math.isfinite(mean_loss):
      raise FloatingPointError(f"non-finite SupCon loss at epoch {epoch}; lower the learning rate "
                               f"(now {config.learning_rate}) or raise the temperature")
    history["loss"].append(mean_loss)
    bar.set_postfix(loss=f"{mean_loss:.4f}")
    bar.update(1)
    t0 = time.perf_counter()
  bar.close()
  return {"params": params, **model_state}, history


# ---------------------------------------------------------------------------
# Inference
# ---------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("config", "space", "n"))
def _embed_blocks(variables, blocks, *, config: SurrogateConfig, space: str, n: int):
  """Embeddings of the first ``n`` of (num_blocks, block, H, W, C) images, one block at a
  time (one program per config, space and shape)."""
  model = config.model()

  def one_block(x):
    feats, z = model.apply(variables, x, train=False, return_features=True)
    return z if space == "projection" else _l2_normalize(feats)

  out = jax.lax.map(one_block, blocks)
  return out.reshape((-1, out.shape[-1]))[:n]


def embed(params: dict, images: Any, *, config: SurrogateConfig, block_size: int = 1024,
          space: str = "projection") -> jax.Array:
  """Embeddings of ``images`` under a trained surrogate, computed block by block.

  Images are padded to a multiple of ``block_size`` and mapped with
  ``lax.map`` inside one jitted program, so peak memory is one block's
  activations.

  Args:
    params: flax variables dict from :func:`train_surrogate`.
    images: (N, H, W, C) float images, preprocessed as for training.
    config: the config the params were trained with.
    block_size: images per block.
    space: ``projection`` (the L2-normalised SupCon projection, the KDE space of
      the paper) or ``encoder`` (the L2-normalised pre-head ConvNet feature; an
      ablation).

  Returns:
    (N, proj_dim) for ``projection`` or (N, d) for ``encoder``; unit-norm rows.

  Example:
    >>> import jax, numpy as np
    >>> cfg = SurrogateConfig.preset('smoke')
    >>> v = cfg.model().init(jax.random.key(0), np.zeros((1, 8, 8, 3), np.float32))
    >>> embed(v, np.zeros((5, 8, 8, 3), np.float32), config=cfg).shape
    (5, 32)
  """
  if space not in ("projection", "encoder"):
    raise ValueError(f"space must be 'projection' or 'encoder', got {space!r}")
  if not (isinstance(block_size, int) and block_size >= 1):
    raise ValueError(f"block_size must be an integer >= 1, got {block_size!r}")
  if is_traced(images):
    raise ValueError("embed is a host-level function; call it outside jit")
  images = np.asarray(images)
  checks.check_images(images, "embed", floating=False,
                      finite_fix="clean them before embedding (as before training)")
  n = images.shape[0]
  bs = min(block_size, max(n, 1))
  num_blocks = -(-n // bs)
  pad = num_blocks * bs - n
  x = images.astype(np.float32, copy=False)
  if pad:  # on the host: each eager operation would be a program of its own
    x = np.concatenate([x, np.zeros((pad,) + x.shape[1:], x.dtype)], axis=0)
  blocks = x.reshape((num_blocks, bs) + x.shape[1:])
  return _embed_blocks(params, jnp.asarray(blocks), config=config, space=space, n=n)
