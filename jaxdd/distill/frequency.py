"""Curriculum frequency matching (CFM; UniDD, Bo, Liu & Wang, ICLR 2026), optionally KDE-weighted.

A member of the DM family: every step draws a real batch per class and, by
default, a freshly initialised network, and matches per-layer channel
statistics of the real and synthetic images through a frequency filter of the
channel covariance (:func:`jaxdd.matching.cfm_loss`). With KDE weights the real
mean and covariance are weighted, the bias-aware covariance matching of this
library. UniDD itself matches against a pretrained teacher with a cross-entropy
term and soft-label evaluation; here the objective runs under DM's protocol
(random networks, or a fixed trained network through ``variables``), so it is
compared with DM on equal terms.
"""
from __future__ import annotations

from typing import Any, Callable, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxdd import matching
from jaxdd.distill.core import REAL, syn_init_of
from jaxdd.distill.core import (Distiller, DistillState, KDEConfig, RealData, _check_kde,
                                _check_sampling, _state_init, all_finite, kde_hparams, kde_knobs,
                                real_batch, step_key)
from jaxdd.distill.execution import Execution
from jaxdd.models import ConvNet


def cfm(*, num_classes: int, ipc: int, iterations: int, model: nn.Module | None = None,
        augment: Callable[[jax.Array, jax.Array], jax.Array] | None = None,
        real_per_class: int = 256, lr: float = 1.0, momentum: float = 0.5,
        beta: float = 0.1, schedule: Literal["constant", "cos", "linear"] = "cos",
        curriculum: Literal["iterations", "slots"] = "iterations", beta_floor: float = 1e-3,
        filter: Literal["high", "low"] = "high",  # noqa: A002
        normalize: bool = True, syn_init: Literal["real", "weighted", "noise"] = REAL,
        kde_config: KDEConfig | None = None,
        real_sampling: Literal["uniform", "weighted"] = "uniform",
        variables: Any = None, execution: Execution | None = None,
        init: Literal["real", "weighted", "noise"] | None = None) -> Distiller:
  """CFM as a :class:`Distiller`: frequency-filtered covariance matching of conv inputs.

  Each step: a real batch per class (uniform or KDE-weighted, as :func:`dm`),
  one siamese augmentation draw per class, the inputs of every convolution of
  ``model`` (:func:`jaxdd.matching.conv_inputs`) for both sides, and for each
  class and layer ``||F(S_r) - F(S_s)|| + ||F(S_r) mu_r - F(S_s) mu_s||`` with
  ``F(S) = (S + beta_t I)^-1`` (``filter='high'``) or ``S`` (``'low'``); SGD
  with momentum on the images.

  Args:
    num_classes, ipc: the synthetic set's shape.
    iterations: the run's length, over which ``schedule`` moves beta.
    model: the network whose conv inputs are matched (default ConvNet-3 w128).
    augment: siamese augmentation ``f(key, images)`` or None.
    real_per_class: real images per class and step.
    lr, momentum: SGD on the images (``lr`` is a hyperparameter in the state).
    beta, schedule, beta_floor: the filter's ridge and its curriculum
      (:func:`jaxdd.matching.cfm_beta`; ``beta`` is a hyperparameter in the state).
    curriculum: what the schedule runs over. ``'iterations'``: every image
      moves at every step while beta falls over the run. ``'slots'`` (UniDD's
      order): the run is cut into ``ipc`` phases (:func:`jaxdd.matching.cfm_slot`);
      phase ``k`` moves only slot ``k`` (one image per class) at
      ``beta_k = cfm_beta(beta, k, ipc)``, matching the statistics of slots
      ``0..k`` together (:func:`jaxdd.matching.cfm_slot_weights`); finished
      slots stay fixed and later ones wait at their initialisation.
    filter: ``'high'`` or ``'low'``.
    normalize: divide each norm by the real side's
      (:func:`jaxdd.matching.cfm_layer_loss`; a departure from UniDD that keeps
      the loss's scale as beta falls).
    syn_init, kde_config, real_sampling: as :func:`dm`.
    variables: None (a fresh random network every step, as DM) or the fixed
      variables of a trained ``model`` (kept in ``state.hparams["variables"]``,
      so runs with other trained networks share the compiled step).
    execution: how the step runs (:class:`jaxdd.distill.Execution`; None:
      ``Execution()``): its policy (the step is traced under it) and ``jit``;
      one device only (a mesh or ``real_dtype`` is refused).
    init: the deprecated spelling of ``syn_init`` (a DeprecationWarning).

  Returns:
    A :class:`Distiller`; the step's metrics: ``loss``, ``grad_norm``,
    ``max_weight``, ``beta`` (and ``slot`` in the slot curriculum), ``finite``
    (the loss, the gradient norm and the updated images are finite,
    :func:`jaxdd.distill.core.all_finite`).
  """
  init = syn_init_of(syn_init, init, "cfm")
  _check_cfm(ipc=ipc, iterations=iterations, real_per_class=real_per_class, beta=beta,
             beta_floor=beta_floor, curriculum=curriculum, schedule=schedule, filter=filter,
             init=init, kde_config=kde_config, real_sampling=real_sampling)
  ex = Execution() if execution is None else execution
  ex.one_device("cfm")
  model = ConvNet(num_classes) if model is None else model
  tx = optax.sgd(1.0, momentum=momentum)  # lr read from the state, as dm()'s
  hparams = {"lr": lr, "beta": beta, **kde_hparams(kde_config)}
  if variables is not None:
    hparams["variables"] = variables
  init_fn = _state_init(num_classes, ipc, init, tx, None, kde_config, hparams)

  def loss_fn(syn_images, key, step, real: RealData, h):
    k_model, k_real, k_aug = jax.random.split(key, 3)
    rows, _, weights = real_batch(k_real, real, real_per_class, kde_knobs(kde_config, h),
                                  real_sampling)
    real_images = real.images[rows]
    syn_batch = syn_images.reshape((num_classes, ipc) + syn_images.shape[1:])
    if "variables" not in h:
      v = model.init(k_model, jnp.zeros((1,) + syn_images.shape[1:], syn_images.dtype))
    else:
      v = h["variables"]
    v = jax.lax.stop_gradient(v)  # the network is frozen

    def features_fn(x):
      return matching.conv_inputs(lambda y: model.apply(v, y), x)

    if curriculum == "slots":
      slot = matching.cfm_slot(step, iterations, ipc)
      beta_t = matching.cfm_beta(h["beta"], slot, ipc, schedule, beta_floor)
      syn_weights = jnp.broadcast_to(matching.cfm_slot_weights(slot, ipc), (num_classes, ipc))
    else:
      beta_t = matching.cfm_beta(h["beta"], step, iterations, schedule, beta_floor)
      syn_weights = None
    loss = matching.cfm_loss(k_aug, syn_batch, real_images, features_fn=features_fn,
                             beta=beta_t, augment=augment, weights=weights,
                             syn_weights=syn_weights, kind=filter, normalize=normalize)
    return loss, (weights, beta_t)

  def step_fn(state: DistillState, real: RealData):
    h = state.hparams
    (loss, (weights, beta_t)), grad = jax.value_and_grad(loss_fn, has_aux=True)(
        state.syn.images, step_key(state), state.step, real, h)
    metrics = {}
    if curriculum == "slots":
      # only the current slot moves: its gradient alone enters the momentum (so each
      # slot starts from rest) and only its update is applied (so a finished slot's
      # leftover momentum does not carry it on)
      slot = matching.cfm_slot(state.step, iterations, ipc)
      moving = (jnp.arange(num_classes * ipc) % ipc == slot).astype(grad.dtype)
      moving = moving.reshape((-1,) + (1,) * (grad.ndim - 1))
      grad = grad * moving
      metrics["slot"] = slot
    updates, opt_state = tx.update(grad, state.opt_state, state.syn.images)
    if curriculum == "slots":
      updates = updates * moving
    images = state.syn.images + h["lr"].astype(state.syn.images.dtype) * updates
    grad_norm = optax.tree.norm(grad)
    metrics.update(loss=loss, grad_norm=grad_norm, max_weight=jnp.max(weights), beta=beta_t,
                   finite=all_finite(loss, grad_norm, images))
    return state._replace(syn=state.syn._replace(images=images), opt_state=opt_state,
                          step=state.step + 1), metrics

  signature = ("cfm", num_classes, ipc, iterations, model, augment, real_per_class, momentum,
            None if kde_config is None else (kde_config.normalize, kde_config.scope),
            real_sampling, init, schedule, curriculum, beta_floor, filter, normalize,
            variables is None, ex.policy)
  return Distiller(init_fn, ex.compile_step(signature, step_fn))


def _check_cfm(*, ipc, iterations, real_per_class, beta, beta_floor, curriculum, schedule,
               filter, init, kde_config, real_sampling) -> None:  # noqa: A002
  """:func:`cfm`'s checks of its method arguments."""
  if isinstance(ipc, bool) or not isinstance(ipc, int) or ipc < 1:
    raise ValueError(f"ipc must be an int >= 1, got {ipc!r}")
  if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
    raise ValueError(f"iterations must be an int >= 1, got {iterations!r}")
  if real_per_class < 2:
    raise ValueError(f"real_per_class must be >= 2 (a covariance needs samples), got "
                     f"{real_per_class}")
  if not (np.isfinite(beta) and beta > 0):
    raise ValueError(f"beta must be a positive number, got {beta!r}")
  if not 0 <= beta_floor <= 1:
    raise ValueError(f"beta_floor must lie in [0, 1], got {beta_floor!r}")
  if curriculum not in matching.CFM_CURRICULA:
    raise ValueError(f"curriculum must be one of {list(matching.CFM_CURRICULA)}, got "
                     f"{curriculum!r}")
  if curriculum == "slots" and iterations < ipc:
    raise ValueError(f"the slot curriculum needs at least one iteration per IPC slot: "
                     f"iterations {iterations} < ipc {ipc}; raise iterations or use "
                     "curriculum='iterations'")
  if schedule not in matching.CFM_SCHEDULES:
    raise ValueError(f"schedule must be one of {list(matching.CFM_SCHEDULES)}, got {schedule!r}")
  if filter not in matching.CFM_FILTERS:
    raise ValueError(f"filter must be one of {list(matching.CFM_FILTERS)}, got {filter!r}")
  if filter == "high" and schedule != "constant" and beta_floor == 0:
    raise ValueError("a schedule down to beta = 0 makes (cov + beta I) singular for any dead "
                     "channel; keep beta_floor > 0")
  _check_kde(kde_config)
  _check_sampling(init, real_sampling, kde_config)
