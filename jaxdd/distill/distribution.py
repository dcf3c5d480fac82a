"""Distribution matching (DM; Zhao & Bilen, WACV 2023), optionally KDE-reweighted."""
from __future__ import annotations

import functools
import inspect
from typing import Callable, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jaxdd import matching, parallel, weighting
from jaxdd._src import winograd
from jaxdd.distill.core import (Distiller, DistillState, KDEConfig, RealData, _check_kde,
                                _check_sampling, _state_init, all_finite, kde_hparams, kde_knobs,
                                real_batch, step_key)
from jaxdd.distill.execution import Execution
from jaxdd.models import ConvNet


def dm(*, num_classes: int, ipc: int, model: nn.Module | None = None,
       augment: Callable[[jax.Array, jax.Array], jax.Array] | None = None,
       real_per_class: int = 256, lr: float = 1.0, momentum: float = 0.5,
       syn_tx: optax.GradientTransformation | None = None,
       init: Literal["real", "weighted", "noise"] = "real", kde_config: KDEConfig | None = None,
       real_sampling: Literal["uniform", "weighted"] = "uniform",
       group_matching: int | None = None, execution: Execution | None = None) -> Distiller:
  """Distribution matching (Zhao & Bilen 2023), optionally KDE-reweighted (Cui et al. 2024).

  Args:
    num_classes: number of classes.
    ipc: synthetic images per class.
    model: the embedding network, a ``flax.linen`` Module re-initialised
      randomly at every step (default ``ConvNet(num_classes)``: depth 3, width
      128, instance norm). Its features are what is matched: a module whose
      ``__call__`` takes ``return_features=True`` returns ``(features,
      logits)`` (jaxdd's models); any other module's output is taken as the
      features. A module with batch statistics is applied with ``train=True``
      (the batch's statistics, as the reference). For a plain function, use
      :func:`jaxdd.matching.dm_loss` with ``embed_fn=`` in your own step.
    augment: siamese augmentation, a callable ``f(key, images)`` (e.g.
      ``jaxdd.augment.dsa("color_crop_cutout_flip_scale_rotate")``) or None.
    real_per_class: real images sampled per class and step (reference: 256).
    lr, momentum: SGD on the synthetic images (reference: 1.0, 0.5); ``lr``
      is a hyperparameter in the state (``state.hparams["lr"]``).
    syn_tx: optional optax transformation replacing SGD(lr, momentum) (then
      the state has no ``lr``: the step size is the transformation's).
    init: 'real' (copy ``ipc`` random real images of each class), 'weighted'
      (copy ``ipc`` real images of each class drawn without replacement in
      proportion to their whole-class weights, :func:`weighted_init_rows`;
      needs ``kde_config`` and ``real.log_density``) or 'noise' (standard
      normal, i.e. noise in the normalised space).
    kde_config: None for vanilla DM, else the KDE weighting (:class:`KDEConfig`).
    real_sampling: 'uniform' (the reference's batch, weighted by ``kde_config``
      inside the loss) or 'weighted' (importance sampling: rows drawn with
      replacement in proportion to the whole-class weights and matched with a
      plain mean, :func:`sample_weighted`; the same expected target with a far
      lower variance; needs ``kde_config`` and ``real.log_density``).
    group_matching: None, or the number of bias values: FairDD's synchronized
      matching (Zhou et al. 2025), the synthetic mean of a class matched to the
      mean of every bias group in the class's real batch
      (:func:`jaxdd.weighting.group_balanced_weights`). Uses the TRUE bias labels
      (``real.groups``); a reference method, not a reweighting; excludes
      ``kde_config``.
    execution: how the step runs (:class:`jaxdd.distill.Execution`): the
      layout policy, a mesh, ``real_chunk``/``syn_chunk`` (the real and
      synthetic images embedded this many at a time) and ``real_dtype`` (the
      gradient-free real forward's dtype); None: ``Execution()``, the backend's
      policy. Under a policy with ``forward_conv="winograd"`` (the ``cpu``
      policy) and without a mesh, the real forward's eligible 3x3
      convolutions run as Winograd F(2x2, 3x3): the same values up to float
      rounding, 2.25x fewer multiplies (:mod:`jaxdd.policy`; docs/results/speed-distillation.md, "One
      DM step"). N runs in one program: :func:`jaxdd.distill.many_runs`.

  Returns:
    A :class:`Distiller` ``(init, step)``, both pure. ``state.hparams``
    holds ``lr`` and, with a weighting, the KDE ``variance`` and
    ``temperature``. The step is traced under the execution's policy. Its metrics: ``loss``, ``grad_norm``, ``max_weight`` and
    ``finite`` (the loss, the gradient norm and the updated images are finite,
    :func:`jaxdd.distill.core.all_finite`).
  """
  _check_dm(ipc, real_per_class, init, real_sampling, kde_config, group_matching)
  ex = Execution() if execution is None else execution
  model = ConvNet(num_classes) if model is None else model
  _check_model(model)
  mesh, real_chunk, syn_chunk, real_dtype = ex.mesh, ex.real_chunk, ex.syn_chunk, ex.real_dtype
  # SGD's learning rate is read from the state (hparams["lr"]), so runs that differ only in
  # it (or the KDE variance / temperature) share one compiled program. sgd(1.0) keeps the
  # optimiser state of sgd(lr) and its updates are exactly -trace; times lr gives sgd(lr)'s.
  tx = optax.sgd(1.0, momentum=momentum) if syn_tx is None else syn_tx
  hparams = {**({"lr": lr} if syn_tx is None else {}), **kde_hparams(kde_config)}
  init_fn = _state_init(num_classes, ipc, init, tx, mesh, kde_config, hparams)

  def loss_fn(syn_images, key, real: RealData, h):
    k_model, k_real, k_aug = jax.random.split(key, 3)
    rows, mask, weights = real_batch(k_real, real, real_per_class, kde_knobs(kde_config, h),
                                     real_sampling)
    class_scale = None
    if group_matching is not None:
      if real.groups is None:
        raise ValueError("group_matching needs the bias labels: pass groups= to real_data")
      weights, class_scale = weighting.group_balanced_weights(real.groups[rows], mask,
                                                              group_matching)
    real_images = parallel.constrain(real.images[rows], mesh, ex.real_spec)
    syn_batch = parallel.constrain(
        syn_images.reshape((num_classes, ipc) + syn_images.shape[1:]), mesh, ex.syn_spec)
    shape = (1,) + syn_images.shape[1:]
    variables = model.init(k_model, jnp.zeros(shape, syn_images.dtype))
    variables = jax.lax.stop_gradient(variables)  # the network is frozen
    embed, embed_real = _embedders(model, variables, real_dtype,
                                   ex.policy.forward_conv == "winograd" and mesh is None)
    per_sample = "batch_stats" not in variables and mesh is None
    loss = matching.dm_loss(k_aug, syn_batch, real_images, embed_fn=embed, augment=augment,
                            weights=weights, real_chunk=real_chunk if per_sample else None,
                            syn_chunk=syn_chunk if per_sample else None,
                            map_classes=mesh is None, real_embed_fn=embed_real,
                            class_scale=class_scale)
    return loss, weights

  def step_fn(state: DistillState, real: RealData):
    h = state.hparams
    (loss, weights), grad = jax.value_and_grad(loss_fn, has_aux=True)(
        state.syn.images, step_key(state), real, h)
    updates, opt_state = tx.update(grad, state.opt_state, state.syn.images)
    if syn_tx is None:
      updates = jax.tree.map(lambda u: u * h["lr"].astype(u.dtype), updates)
    images = optax.apply_updates(state.syn.images, updates)
    grad_norm = optax.tree.norm(grad)
    metrics = {"loss": loss, "grad_norm": grad_norm, "max_weight": jnp.max(weights),
               "finite": all_finite(loss, grad_norm, images)}
    return state._replace(syn=state.syn._replace(images=images), opt_state=opt_state,
                          step=state.step + 1), metrics

  signature = ("dm", num_classes, ipc, model, augment, real_per_class, momentum, syn_tx,
               None if kde_config is None else (kde_config.normalize, kde_config.scope),
               real_sampling, group_matching, mesh, ex.class_axis, ex.batch_axis, real_chunk,
               syn_chunk, None if real_dtype is None else str(real_dtype), ex.policy)
  return Distiller(init_fn, ex.compile_step(signature, step_fn))


def _check_model(model) -> None:
  """The model contract (see :func:`dm`), checked when the distiller is built."""
  if not isinstance(model, nn.Module):
    raise ValueError(f"model must be a flax.linen Module (its features output is matched), got "
                     f"{type(model).__name__}; for a plain function use "
                     "jaxdd.matching.dm_loss(embed_fn=...) in your own step")


def _call_args(model: nn.Module) -> set[str]:
  """The keyword arguments ``model.__call__`` takes."""
  try:
    return set(inspect.signature(model.__call__).parameters)
  except (TypeError, ValueError):
    return set()


def _check_dm(ipc, real_per_class, init, real_sampling, kde_config, group_matching) -> None:
  """:func:`dm`'s checks of its method arguments."""
  if ipc < 1:
    raise ValueError(f"ipc must be >= 1, got {ipc}")
  if real_per_class < 1:
    raise ValueError(f"real_per_class must be >= 1, got {real_per_class}")
  _check_kde(kde_config)
  _check_sampling(init, real_sampling, kde_config)
  if group_matching is not None:
    if isinstance(group_matching, bool) or not isinstance(group_matching, int) \
        or group_matching < 1:
      raise ValueError(f"group_matching must be None or the number of bias values (an int >= 1), "
                       f"got {group_matching!r}")
    if kde_config is not None:
      raise ValueError("group_matching (FairDD) replaces the weighting: pass kde_config=None")


def _embedders(model: nn.Module, variables, real_dtype, winograd_real: bool):
  """``(embed, embed_real)``: the frozen network's features of the synthetic images, and of
  the (gradient-free) real images when they run otherwise (None: as the synthetic ones).

  ``real_dtype``: the real forward in that dtype (parameters and images cast, features back
  to float32); ``winograd_real``: its eligible convolutions as Winograd F(2x2, 3x3).
  """

  accepts = _call_args(model)
  # jaxdd's models return (features, logits) with return_features=True; any other module's
  # output is its features.
  kw = {"return_features": True} if "return_features" in accepts else {}
  pick = (lambda out: out[0]) if kw else (lambda out: out)  # noqa: E731

  def embed_with(v, x):
    # BatchNorm models use the statistics of the batch (train mode), as the reference.
    if "batch_stats" in v:
      out, _ = model.apply(v, x, mutable=["batch_stats"], **kw,
                           **({"train": True} if "train" in accepts else {}))
    else:
      out = model.apply(v, x, **kw)
    return pick(out)

  embed = functools.partial(embed_with, variables)
  embed_real = None
  if real_dtype is not None:
    cast = jax.tree.map(
        lambda a: a.astype(real_dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a,
        variables)
    embed_real = lambda x: embed_with(cast, x.astype(real_dtype)).astype(jnp.float32)
  if winograd_real:  # no gradient flows through the real side
    embed_real = winograd.traced_inside(embed if embed_real is None else embed_real)
  return embed, embed_real
