"""Trajectory matching (MTT; Cazenavette et al., CVPR 2022) as a :class:`Distiller`.

The student unroll, its two gradient modes (exact, TESLA), the expert
trajectories and their buffer artifact live in :mod:`jaxdd.distill.experts`; this module
turns them into the ``(init, step)`` pair every jaxdd method has, so the
pipeline, the CLI and ``jaxdd tune`` drive MTT as they drive DM.
"""
from __future__ import annotations

from typing import Callable, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from jaxdd import augment as augment_lib
from jaxdd.distill import experts as experts_lib
from jaxdd._src import checks
from jaxdd.distill.core import REAL, syn_init_of
from jaxdd.distill.core import (Distiller, DistillState, KDEConfig, RealData, _check_kde,
                                _state_init, all_finite, step_key)
from jaxdd.distill.execution import Execution
from jaxdd.models import ConvNet


def mtt(*, num_classes: int, ipc: int, num_epochs: int, model: nn.Module | None = None,
        expert_epochs: int = 2, max_start_epoch: int = 20, syn_steps: int = 20,
        batch_syn: int | None = None, lr: float = 100.0, lr_lr: float = 1e-5,
        lr_teacher: float = 0.01, momentum: float = 0.5,
        augment: Callable[[jax.Array, jax.Array], jax.Array] | None | Literal["default"] = "default",
        mode: Literal["exact", "tesla"] = "exact",
        syn_init: Literal["real", "weighted", "noise"] = REAL,
        kde_config: KDEConfig | None = None, execution: Execution | None = None,
        init: Literal["real", "weighted", "noise"] | None = None) -> Distiller:
  """MTT over a buffer of expert trajectories, optionally with TESLA's gradients.

  ``init(key, real, syn=None)`` starts the synthetic set as :func:`dm` does
  (``init``: random real images of each class as MTT's ``pix_init=real``,
  real images drawn in proportion to their whole-class weights, or noise; or a
  warm-start SynSet) and the student learning rate ``syn_lr`` at
  ``lr_teacher`` (kept in ``state.extra["syn_lr"]``).

  ``step(state, trajectories)`` is one compiled program: pick an expert ``e``
  and a start epoch ``t ~ U{0..max_start_epoch-1}``, run
  :func:`jaxdd.distill.experts.trajectory_loss` from ``trajectories[e, t]`` towards
  ``trajectories[e, t + expert_epochs]`` and update the images
  (SGD(``lr``, ``momentum``)) and ``syn_lr`` (SGD(``lr_lr``, ``momentum``)).
  ``lr`` and ``lr_lr`` are hyperparameters in the state (``state.hparams``):
  runs that differ only in them share one compiled program. The bias-aware part of MTT lives in the
  experts (:func:`jaxdd.distill.experts.train_experts` with KDE weights), since the
  matching itself sees no real image.

  Args:
    num_classes, ipc: the synthetic set's shape.
    num_epochs: epochs the experts recorded (the buffer's second axis is
      ``num_epochs + 1``); ``max_start_epoch + expert_epochs`` must not exceed it.
    model: the student/expert network, without batch statistics (default
      ``ConvNet(num_classes)``: depth 3, width 128, instance norm).
    expert_epochs, max_start_epoch, syn_steps, batch_syn: MTT's M, T+, N and
      the student batch (default: the whole set).
    lr, lr_lr, lr_teacher, momentum: the image step size, the student
      learning rate's step size, its initial value, and both SGDs' momentum
      (MTT: 0.5).
    augment: the student steps' augmentation, a callable ``f(key, images)``
      with per-image parameters, or None; ``"default"``: MTT's,
      ``jaxdd.augment.dsa("color_crop_cutout_flip_scale_rotate", siamese=False)``.
    mode: ``"exact"`` or ``"tesla"`` (:func:`jaxdd.distill.experts.trajectory_loss`).
    syn_init: 'real', 'weighted' (needs ``kde_config`` and ``real.log_density``) or
      'noise'.
    kde_config: the weighting that ``init='weighted'`` draws with; the
      matching itself does not use it.
    execution: how the step runs (:class:`jaxdd.distill.Execution`; None:
      ``Execution()``): its policy (the step is traced under it) and ``jit``;
      one device only (a mesh or ``real_dtype`` is refused).
    init: the deprecated spelling of ``syn_init`` (a DeprecationWarning).

  Returns:
    A :class:`Distiller`. The step's metrics: ``loss`` (the normalised
    parameter distance), ``grad_norm`` (of the images' gradient), ``syn_lr``,
    ``start_epoch``, ``expert``, ``finite`` (the loss, the gradient norm, the
    updated images and ``syn_lr`` are finite, :func:`jaxdd.distill.core.all_finite`).
  """
  init = syn_init_of(syn_init, init, "mtt")
  _check_mtt(ipc=ipc, num_classes=num_classes, num_epochs=num_epochs,
             expert_epochs=expert_epochs, max_start_epoch=max_start_epoch, syn_steps=syn_steps,
             batch_syn=batch_syn, lr=lr, lr_lr=lr_lr, lr_teacher=lr_teacher, mode=mode,
             init=init, kde_config=kde_config)
  ex = Execution() if execution is None else execution
  ex.one_device("mtt")
  model = ConvNet(num_classes) if model is None else model
  if augment == "default":
    augment = augment_lib.dsa(augment_lib.DEFAULT_STRATEGY, siamese=False)
  if augment is not None and not callable(augment):
    raise ValueError(f"augment must be a callable f(key, images), None or 'default', got "
                     f"{augment!r}; for a DSA strategy string pass "
                     "jaxdd.augment.dsa(strategy, siamese=False)")
  aug = augment
  # Both learning rates are read from the state (hparams), as dm()'s lr.
  tx_img = optax.sgd(1.0, momentum=momentum)
  tx_lr = optax.sgd(1.0, momentum=momentum)
  images_init = _state_init(num_classes, ipc, init, tx_img, None, kde_config,
                            {"lr": lr, "lr_lr": lr_lr})

  def init_fn(key: jax.Array, real: RealData, syn=None, *, hparams=None) -> DistillState:
    state = images_init(key, real, syn, hparams=hparams)
    syn_lr = jnp.asarray(lr_teacher, jnp.float32)
    return state._replace(opt_state=(state.opt_state, tx_lr.init(syn_lr)),
                          extra={"syn_lr": syn_lr})

  def unravel_of(images: jax.Array):
    """The parameter layout of ``model`` on these images (shapes only: nothing is computed)."""
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), images[:1])["params"])
    flat, unravel = ravel_pytree(jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), shapes))
    return flat.shape[0], unravel

  def apply_fn(p, x):
    return model.apply({"params": p}, x, train=True)

  def step_fn(state: DistillState, trajectories: jax.Array):
    h = state.hparams
    size, unravel = unravel_of(state.syn.images)
    if trajectories.ndim != 3 or trajectories.shape[1] != num_epochs + 1 \
        or trajectories.shape[2] != size:
      raise ValueError(f"the expert buffer has shape {tuple(trajectories.shape)}; this distiller "
                       f"needs (experts, {num_epochs + 1}, {size}): {num_epochs} recorded epochs "
                       f"of a network with {size} parameters")
    k_e, k_t, k_loss = jax.random.split(step_key(state), 3)
    e = jax.random.randint(k_e, (), 0, trajectories.shape[0])
    t = jax.random.randint(k_t, (), 0, max_start_epoch)
    start = jax.lax.dynamic_index_in_dim(trajectories[e], t, keepdims=False)
    target = jax.lax.dynamic_index_in_dim(trajectories[e], t + expert_epochs, keepdims=False)
    syn_lr = state.extra["syn_lr"]

    def loss_fn(images, lr):
      return experts_lib.trajectory_loss(images, state.syn.labels, lr, start, target, k_loss,
                                     apply_fn=apply_fn, unravel=unravel, syn_steps=syn_steps,
                                     batch_syn=batch_syn, augment=aug, mode=mode)

    loss, (g_img, g_lr) = jax.value_and_grad(loss_fn, argnums=(0, 1))(state.syn.images, syn_lr)
    opt_img, opt_lr = state.opt_state
    u_img, opt_img = tx_img.update(g_img, opt_img, state.syn.images)
    u_lr, opt_lr = tx_lr.update(g_lr, opt_lr, syn_lr)
    images = state.syn.images + h["lr"] * u_img
    syn_lr = syn_lr + h["lr_lr"] * u_lr
    grad_norm = optax.tree.norm(g_img)
    metrics = {"loss": loss, "grad_norm": grad_norm, "syn_lr": syn_lr, "start_epoch": t,
               "expert": e, "finite": all_finite(loss, grad_norm, images, syn_lr)}
    return state._replace(syn=state.syn._replace(images=images), opt_state=(opt_img, opt_lr),
                          step=state.step + 1, extra={"syn_lr": syn_lr}), metrics

  signature = ("mtt", num_classes, ipc, num_epochs, model, expert_epochs, max_start_epoch,
               syn_steps, batch_syn, momentum, aug, mode, ex.policy)
  return Distiller(init_fn, ex.compile_step(signature, step_fn))


def _check_mtt(*, ipc, num_classes, num_epochs, expert_epochs, max_start_epoch, syn_steps,
               batch_syn, lr, lr_lr, lr_teacher, mode, init, kde_config) -> None:
  """:func:`mtt`'s checks of its method arguments."""
  if mode not in experts_lib.MODES:
    raise ValueError(f"mode must be one of {list(experts_lib.MODES)}, got {mode!r}")
  for name, v in (("ipc", ipc), ("num_epochs", num_epochs), ("expert_epochs", expert_epochs),
                  ("max_start_epoch", max_start_epoch), ("syn_steps", syn_steps)):
    checks.check_positive_int(name, v)
  if max_start_epoch + expert_epochs > num_epochs:
    raise ValueError(f"max_start_epoch + expert_epochs = {max_start_epoch + expert_epochs} "
                     f"exceeds the {num_epochs} epochs the experts recorded; lower them or "
                     "train longer experts")
  n_syn = num_classes * ipc
  if batch_syn is not None and (isinstance(batch_syn, bool) or not isinstance(batch_syn, int)
                                or not 1 <= batch_syn <= n_syn):
    raise ValueError(f"batch_syn must be an int in [1, {n_syn}] (the synthetic set's size) or "
                     f"None, got {batch_syn!r}")
  for name, v in (("lr", lr), ("lr_lr", lr_lr), ("lr_teacher", lr_teacher)):
    if not (np.isfinite(v) and v > 0):
      raise ValueError(f"{name} must be a positive number, got {v!r}")
  _check_kde(kde_config)
  if init not in ("real", "weighted", "noise"):
    raise ValueError(f"syn_init must be 'real', 'weighted' or 'noise', got {init!r}")
  if init == "weighted" and kde_config is None:
    raise ValueError("syn_init='weighted' draws real images in proportion to their weights: pass "
                     "kde_config= (a weighting)")
