"""Gradient matching: DC (Zhao et al., ICLR 2021) and DSA (Zhao & Bilen, ICML 2021)."""
from __future__ import annotations

import functools
from typing import Any, Callable, Literal, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, PartitionSpec as P

from jaxdd import augment as augment_lib
from jaxdd import matching, parallel
from jaxdd import train as train_lib
from jaxdd._src import winograd
from jaxdd.distill.core import NOISE, REAL, syn_init_of
from jaxdd.distill.core import (Distiller, DistillState, KDEConfig, RealData, _check_kde,
                                _check_sampling, _state_init, all_finite, kde_hparams, kde_knobs,
                                real_batch, sample_per_class, step_key)
from jaxdd.distill.execution import Execution
from jaxdd.models import ConvNet
from jaxdd.protocols import Protocol

# (outer_loop, inner_loop) per IPC, from the DC/DSA reference code's get_loops.
GM_LOOPS: dict[int, tuple[int, int]] = {1: (1, 1), 10: (10, 50), 20: (20, 25), 30: (30, 20),
                                        40: (40, 15), 50: (50, 10)}
# Real images per class fed through a BatchNorm network before each matching
# round to refresh its running statistics (the reference's BNSizePC).
BN_REAL_PER_CLASS = 16


def gm_loops(ipc: int, outer_loop: int | None = None,
             inner_loop: int | None = None) -> tuple[int, int]:
  """``(outer_loop, inner_loop)``: the given values, else the reference's for ``ipc``.

  Example:
    >>> gm_loops(10), gm_loops(7, outer_loop=5, inner_loop=20)
    ((10, 50), (5, 20))
  """
  default = GM_LOOPS.get(ipc)
  if default is None and (outer_loop is None or inner_loop is None):
    raise ValueError(f"ipc={ipc} has no reference loop counts (defined for IPC "
                     f"{sorted(GM_LOOPS)}); pass outer_loop= and inner_loop=")
  outer = default[0] if outer_loop is None else outer_loop
  inner = default[1] if inner_loop is None else inner_loop
  for name, v in (("outer_loop", outer), ("inner_loop", inner)):
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
      raise ValueError(f"{name} must be an int >= 1, got {v!r}")
  return outer, inner


def gm(*, num_classes: int, ipc: int, model: nn.Module | None = None,
       augment: Callable[[jax.Array, jax.Array], jax.Array] | None = None,
       net_augment: Callable[[jax.Array, jax.Array], jax.Array] | Literal["auto"] | None = "auto",
       outer_loop: int | None = None,
       inner_loop: int | None = None, real_per_class: int = 256, lr: float = 0.1,
       momentum: float = 0.5, syn_tx: optax.GradientTransformation | None = None,
       lr_net: float = 0.01, net_batch_size: int = 256,
       syn_init: Literal["real", "weighted", "noise"] = REAL,
       kde_config: KDEConfig | None = None,
       real_sampling: Literal["uniform", "weighted"] = "uniform",
       execution: Execution | None = None,
       init: Literal["real", "weighted", "noise"] | None = None) -> Distiller:
  """Gradient matching (DC / DSA), optionally KDE-reweighted (Cui et al. 2024).

  One ``step`` is one outer iteration of the reference's ``main.py``, compiled
  as ONE program: a freshly initialised network, then ``outer_loop`` rounds
  (a ``lax.scan``) of

  1. sample ``real_per_class`` real images per class and their weights
     (uniform, or KDE as in :func:`dm`);
  2. one image-optimiser update on :func:`jaxdd.matching.gm_loss` summed over
     classes (the siamese ``augment`` with one draw per class, if any);
  3. except after the last round: train the network ``inner_loop`` epochs on
     the current synthetic set with plain SGD(``lr_net``), batches of
     ``net_batch_size``, augmented by ``net_augment`` (none for DC) — with
     :func:`jaxdd.train.fit`, the trainer of the evaluation.

  Networks with batch statistics (``norm="batch"``) get the reference's
  treatment: before each round, ``BN_REAL_PER_CLASS`` real images per class
  update the running statistics, and the matching uses them (eval mode).

  Args:
    num_classes, ipc: classes and synthetic images per class.
    model: the network (default ``ConvNet(num_classes)``), freshly initialised
      at every step.
    augment: the matching's siamese augmentation, a callable ``f(key, images)``
      (DSA: ``jaxdd.augment.dsa("color_crop_cutout_flip_scale_rotate")``), or
      None (DC: no augmentation).
    net_augment: the inner loop's augmentation ``f(key, images)``; ``"auto"``
      (default): ``jaxdd.augment.per_image(augment)``, the per-image
      counterpart (for a DSA augmentation, the same strategy with per-image
      parameters, as the reference); None: none.
    outer_loop, inner_loop: rounds per step and network epochs per round
      (default: the reference's per IPC, :data:`GM_LOOPS`).
    real_per_class: real images per class and round (reference: 256).
    lr, momentum: SGD on the synthetic images (reference: 0.1, 0.5); the
      optimiser state persists across steps; ``lr`` is a hyperparameter in the
      state (``state.hparams["lr"]``).
    syn_tx: optional optax transformation replacing SGD(lr, momentum) (then
      the state has no ``lr``).
    lr_net: the network's SGD learning rate in the inner loop (0.01).
    net_batch_size: the inner loop's batch size (256).
    syn_init: 'real', 'weighted' or 'noise' (see :func:`dm`).
    kde_config: None for vanilla DC/DSA, else the KDE weighting.
    real_sampling: 'uniform' or 'weighted' (see :func:`dm`).
    execution: how the step runs (:class:`jaxdd.distill.Execution`; None:
      ``Execution()``): its policy (the step is traced under it), mesh and
      ``real_chunk`` (the real gradient computed this many images at a time,
      the same value up to float rounding; ``real_dtype`` is refused). Under a
      policy with ``train_conv="winograd"`` (the ``cpu`` policy) and without a
      mesh, the real gradient's eligible 3x3 convolutions run as Winograd
      F(2x2, 3x3) (:mod:`jaxdd.policy`; docs/results/speed-distillation.md, "One gradient-matching
      outer iteration"); the synthetic side keeps the loop-safe kernels.
    init: the deprecated spelling of ``syn_init`` (a DeprecationWarning).

  Returns:
    A :class:`Distiller` of pure functions; ``state.hparams`` holds ``lr`` and,
    with a weighting, the KDE ``variance`` and ``temperature``. The step's
    metrics: ``loss`` (the class-summed
    matching loss, mean over rounds), ``loss_first``/``loss_last`` (first and
    last round), ``grad_norm`` (last round), ``max_weight``, ``finite`` (every
    round's loss and gradient norm and the updated images are finite,
    :func:`jaxdd.distill.core.all_finite`).
  """
  init = syn_init_of(syn_init, init, "gm")
  if isinstance(ipc, bool) or not isinstance(ipc, int) or ipc < 1:
    raise ValueError(f"ipc must be an int >= 1, got {ipc!r}")
  if real_per_class < 1:
    raise ValueError(f"real_per_class must be >= 1, got {real_per_class}")
  if not lr_net > 0:
    raise ValueError(f"lr_net must be > 0, got {lr_net}")
  if isinstance(net_batch_size, bool) or not isinstance(net_batch_size, int) or net_batch_size < 1:
    raise ValueError(f"net_batch_size must be a positive int, got {net_batch_size!r}")
  _check_kde(kde_config)
  _check_sampling(init, real_sampling, kde_config)
  _check_augment("augment", augment)
  if net_augment == "auto":
    net_augment = augment_lib.per_image(augment)
  _check_augment("net_augment", net_augment)
  outer, inner = gm_loops(ipc, outer_loop, inner_loop)
  ex = Execution() if execution is None else execution
  for name in ("real_dtype", "syn_dtype"):
    if getattr(ex, name) is not None:
      raise ValueError(f"{name} is a DM option; method 'gm' has none")
  mesh = ex.mesh
  model = ConvNet(num_classes) if model is None else model
  # lr is read from the state, as dm()'s: sgd(1.0)'s updates times lr are sgd(lr)'s.
  tx = optax.sgd(1.0, momentum=momentum) if syn_tx is None else syn_tx
  s = _GMSettings(
      model=model, num_classes=num_classes, ipc=ipc, outer=outer,
      real_per_class=real_per_class, kde_config=kde_config, real_sampling=real_sampling,
      augment=augment, mesh=mesh,
      real_spec=ex.real_spec, syn_spec=ex.syn_spec, real_chunk=ex.real_chunk,
      winograd_real=ex.policy.train_conv == "winograd" and mesh is None,
      map_classes=mesh is None and ex.policy.class_augment == "map",
      task=train_lib.standard_task(model),
      inner_protocol=Protocol("gm-inner", epochs=inner - 1, lr=lr_net, momentum=0.0,
                              weight_decay=0.0, batch_size=net_batch_size, decay_at=None,
                              augment=net_augment),
      tx=tx, scale_lr=syn_tx is None)
  hparams = {**({"lr": lr} if syn_tx is None else {}), **kde_hparams(kde_config)}
  init_fn = _state_init(num_classes, ipc, init, tx, mesh, kde_config, hparams)
  signature = ("gm", num_classes, ipc, model, augment, net_augment, outer, inner,
               real_per_class, momentum, syn_tx, lr_net, net_batch_size,
               None if kde_config is None else (kde_config.normalize, kde_config.scope),
               real_sampling, mesh, ex.class_axis, ex.batch_axis, s.real_chunk, ex.policy)
  return Distiller(init_fn, ex.compile_step(signature,
                                            lambda state, real: _gm_step(s, state, real)))


def _check_augment(name: str, fn) -> None:
  if fn is not None and not callable(fn):
    hint = (f"; for a DSA strategy string pass jaxdd.augment.dsa({fn!r})"
            if isinstance(fn, str) else "")
    raise ValueError(f"{name} must be a callable f(key, images) or None, got {fn!r}{hint}")


class _GMSettings(NamedTuple):
  """What one gradient-matching step needs besides its state and the real data."""
  model: nn.Module
  num_classes: int
  ipc: int
  outer: int
  real_per_class: int
  kde_config: KDEConfig | None
  real_sampling: str
  augment: Any
  mesh: Mesh | None
  real_spec: P
  syn_spec: P
  real_chunk: int | None
  winograd_real: bool
  map_classes: bool  # classes augmented one after another (jaxdd.policy's class_augment)
  task: Any
  inner_protocol: Protocol
  tx: optax.GradientTransformation
  scale_lr: bool


def _fresh_network(s: _GMSettings, key: jax.Array, images: jax.Array):
  """A newly initialised network: ``(params, net_state)`` (the state holds batch statistics)."""
  shape = (1,) + images.shape[1:]
  return train_lib.split_variables(s.model.init(key, jnp.zeros(shape, images.dtype), train=False))


def _refresh_batch_stats(s: _GMSettings, params, net_state, key: jax.Array, real: RealData):
  """BatchNorm networks: ``BN_REAL_PER_CLASS`` real images per class update the running
  statistics before a matching (the reference); other networks are returned unchanged."""
  if not jax.tree.leaves(net_state):
    return net_state
  bn_rows, _ = sample_per_class(key, real.index, BN_REAL_PER_CLASS)
  _, net_state = train_lib.apply_train(s.model, params, net_state,
                                       real.images[bn_rows.reshape(-1)], key)
  return net_state


def _match(s: _GMSettings, syn_images, params, net_state, key: jax.Array, real: RealData, h):
  """One matching: a real batch and its weights, and the gradient of the class-summed
  :func:`jaxdd.matching.gm_loss` with respect to the synthetic images.

  Returns ``(loss, grad, weights, net_state)``.
  """
  k_real, k_aug, k_bn = jax.random.split(key, 3)
  net_state = _refresh_batch_stats(s, params, net_state, k_bn, real)
  rows, mask, weights = real_batch(k_real, real, s.real_per_class, kde_knobs(s.kde_config, h),
                                   s.real_sampling)
  real_images = parallel.constrain(real.images[rows], s.mesh, s.real_spec)
  # Chunking the real gradient needs per-sample networks (no batch statistics).
  per_sample = not jax.tree.leaves(net_state) and s.mesh is None

  def logits_fn(p, x):  # matching uses the running statistics (eval mode)
    return s.model.apply({"params": p, **net_state}, x, train=False)

  # The real images' weight gradient (first order) as Winograd where the policy says so
  # (train_conv); the synthetic side, differentiated twice, keeps the loop-safe kernels
  # (docs/results/speed-distillation.md, "One gradient-matching outer iteration").
  real_logits_fn = winograd.traced_inside(logits_fn) if s.winograd_real else None

  def loss_fn(images):
    syn_batch = parallel.constrain(
        images.reshape((s.num_classes, s.ipc) + images.shape[1:]), s.mesh, s.syn_spec)
    return matching.gm_loss(k_aug, syn_batch, real_images, params=params, logits_fn=logits_fn,
                            augment=s.augment, weights=weights,
                            real_chunk=s.real_chunk if per_sample else None,
                            map_classes=s.map_classes, real_logits_fn=real_logits_fn)

  loss, grad = jax.value_and_grad(loss_fn)(syn_images)
  return loss, grad, weights, net_state


def _train_network(s: _GMSettings, key: jax.Array, params, net_state, images):
  """The inner loop: the network trained on the (fixed) synthetic set with
  :func:`jaxdd.train.fit`, the evaluation's trainer."""
  labels = jnp.repeat(jnp.arange(s.num_classes, dtype=jnp.int32), s.ipc)
  params, net_state, _ = train_lib.fit(key, params, net_state, jax.lax.stop_gradient(images),
                                       labels, task=s.task, protocol=s.inner_protocol)
  return params, net_state


def _round(s: _GMSettings, real: RealData, h: dict, k_rounds: jax.Array, carry, r):
  """Round ``r`` of an outer iteration: match, update the images, then (except after the
  last round, as the reference) train the network on the updated set."""
  images, opt_state, params, net_state = carry
  k_match, k_train = jax.random.split(jax.random.fold_in(k_rounds, r))
  loss, grad, weights, net_state = _match(s, images, params, net_state, k_match, real, h)
  updates, opt_state = s.tx.update(grad, opt_state, images)
  if s.scale_lr:
    updates = jax.tree.map(lambda u: u * h["lr"].astype(u.dtype), updates)
  images = optax.apply_updates(images, updates)
  params, net_state = jax.lax.cond(
      r < s.outer - 1, lambda a: _train_network(s, k_train, *a, images), lambda a: a,
      (params, net_state))
  return (images, opt_state, params, net_state), (loss, optax.tree.norm(grad), jnp.max(weights))


def _gm_step(s: _GMSettings, state: DistillState, real: RealData):
  """One outer iteration: a fresh network, then ``s.outer`` rounds under a ``lax.scan``."""
  k_net, k_rounds = jax.random.split(step_key(state))
  params, net_state = _fresh_network(s, k_net, state.syn.images)
  (images, opt_state, _, _), (losses, grad_norms, max_w) = jax.lax.scan(
      functools.partial(_round, s, real, state.hparams, k_rounds),
      (state.syn.images, state.opt_state, params, net_state), jnp.arange(s.outer))
  metrics = {"loss": losses.mean(), "loss_first": losses[0], "loss_last": losses[-1],
             "grad_norm": grad_norms[-1], "max_weight": jnp.max(max_w),
             "finite": all_finite(losses, grad_norms, images)}
  return state._replace(syn=state.syn._replace(images=images), opt_state=opt_state,
                        step=state.step + 1), metrics


def dsa(*, num_classes: int, ipc: int, model: nn.Module | None = None,
        augment: Callable[[jax.Array, jax.Array], jax.Array] | None = None,
        net_augment: Callable[[jax.Array, jax.Array], jax.Array] | Literal["auto"] | None = "auto",
        outer_loop: int | None = None, inner_loop: int | None = None,
        real_per_class: int = 256, lr: float = 0.1, momentum: float = 0.5,
        syn_tx: optax.GradientTransformation | None = None, lr_net: float = 0.01,
        net_batch_size: int = 256, syn_init: Literal["real", "weighted", "noise"] = REAL,
        kde_config: KDEConfig | None = None,
        real_sampling: Literal["uniform", "weighted"] = "uniform",
        execution: Execution | None = None,
        init: Literal["real", "weighted", "noise"] | None = None) -> Distiller:
  """DSA (Zhao & Bilen 2021): gradient matching with siamese augmentation.

  :func:`gm` with a siamese ``augment`` (default the reference's strategy,
  ``jaxdd.augment.dsa("color_crop_cutout_flip_scale_rotate")``) and real
  initialisation (the reference's DSA command). Every argument is :func:`gm`'s,
  with these defaults.

  Example:
    >>> import jax, numpy as np
    >>> from jaxdd import augment, distill, models
    >>> x = np.random.default_rng(0).normal(size=(40, 8, 8, 3)).astype(np.float32)
    >>> real = distill.real_data(x, np.repeat(np.arange(2), 20), num_classes=2)
    >>> d = distill.dsa(num_classes=2, ipc=2, model=models.ConvNet(2, depth=1, width=8),
    ...                 outer_loop=2, inner_loop=1, real_per_class=8,
    ...                 augment=augment.dsa("crop_flip"))
    >>> state, metrics = d.step(d.init(jax.random.key(0), real), real)  # doctest: +SKIP
    >>> state.syn.images.shape, int(state.step)  # doctest: +SKIP
    ((4, 8, 8, 3), 1)
  """
  init = syn_init_of(syn_init, init, "dsa")
  if augment is None:
    augment = augment_lib.dsa(augment_lib.DEFAULT_STRATEGY)
  return gm(num_classes=num_classes, ipc=ipc, model=model, augment=augment,
            net_augment=net_augment, outer_loop=outer_loop, inner_loop=inner_loop,
            real_per_class=real_per_class, lr=lr, momentum=momentum, syn_tx=syn_tx,
            lr_net=lr_net, net_batch_size=net_batch_size, syn_init=init,
            kde_config=kde_config, real_sampling=real_sampling, execution=execution)


def dc(*, num_classes: int, ipc: int, model: nn.Module | None = None,
       outer_loop: int | None = None, inner_loop: int | None = None,
       real_per_class: int = 256, lr: float = 0.1, momentum: float = 0.5,
       syn_tx: optax.GradientTransformation | None = None, lr_net: float = 0.01,
       net_batch_size: int = 256, syn_init: Literal["real", "weighted", "noise"] = NOISE,
       kde_config: KDEConfig | None = None,
       real_sampling: Literal["uniform", "weighted"] = "uniform",
       execution: Execution | None = None,
       init: Literal["real", "weighted", "noise"] | None = None) -> Distiller:
  """DC (Zhao et al. 2021): gradient matching without augmentation.

  :func:`gm` with no augmentation (neither in the matching nor in the inner loop) and, as
  the reference's default, noise initialisation. Every argument is :func:`gm`'s, with these
  defaults; for an augmentation use :func:`dsa`.
  """
  init = syn_init_of(syn_init, init, "dc")
  return gm(num_classes=num_classes, ipc=ipc, model=model, augment=None, net_augment=None,
            outer_loop=outer_loop, inner_loop=inner_loop, real_per_class=real_per_class,
            lr=lr, momentum=momentum, syn_tx=syn_tx, lr_net=lr_net,
            net_batch_size=net_batch_size, syn_init=init, kde_config=kde_config,
            real_sampling=real_sampling, execution=execution)
