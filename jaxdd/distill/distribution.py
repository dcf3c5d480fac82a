"""Distribution matching (DM; Zhao & Bilen, WACV 2023), optionally KDE-reweighted."""
from __future__ import annotations

import functools
from typing import Callable, Literal, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jaxdd import matching, parallel, weighting
from jaxdd._src import winograd
from jaxdd.distill.core import REAL, syn_init_of
from jaxdd.distill.core import (Distiller, DistillState, KDEConfig, RealData, _check_kde,
                                _check_sampling, _state_init, all_finite, batch_weights,
                                kde_hparams, kde_knobs, real_batch, sample_from,
                                sample_per_class, step_key)
from jaxdd.distill.execution import Execution
from jaxdd.models import ConvNet, feature_fn


def dm(*, num_classes: int, ipc: int, model: nn.Module | None = None,
       augment: Callable[[jax.Array, jax.Array], jax.Array] | None = None,
       real_per_class: int = 256, lr: float = 1.0, momentum: float = 0.5,
       syn_tx: optax.GradientTransformation | None = None,
       syn_init: Literal["real", "weighted", "noise"] = REAL, kde_config: KDEConfig | None = None,
       real_sampling: Literal["uniform", "weighted"] = "uniform",
       group_matching: int | None = None, batch_clusters: int | None = None,
       batch_eps: Literal["median", "knee"] = "median", execution: Execution | None = None,
       init: Literal["real", "weighted", "noise"] | None = None) -> Distiller:
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
    syn_init: 'real' (copy ``ipc`` random real images of each class), 'weighted'
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
    batch_clusters: None, or FairDD's synchronized matching WITHOUT bias labels
      as its appendix M describes it: inside the step, each class's sampled
      real batch is clustered with DBSCAN (:func:`jaxdd.weighting.dbscan`:
      eps by ``batch_eps``, 3 samples per core point) in the features the
      step matches (the fresh random network's, of the unaugmented real
      images: one more forward pass of the real batch), at most
      ``batch_clusters`` clusters, noise a group of its own; the cluster ids
      are the groups. Excludes ``kde_config`` and ``group_matching``.
    batch_eps: the DBSCAN radius rule of ``batch_clusters``, per class and
      batch: ``"median"`` (the median 5-nearest-neighbour distance) or
      ``"knee"`` (the knee of the batch's 2-distance curve,
      :func:`jaxdd.weighting.knee_distance`); static, in the step's signature.
    execution: how the step runs (:class:`jaxdd.distill.Execution`): the
      layout policy, a mesh, ``real_chunk``/``syn_chunk`` (the real and
      synthetic images embedded this many at a time) and ``real_dtype`` (the
      gradient-free real forward's dtype); None: ``Execution()``, the backend's
      policy. Under a policy with ``forward_conv="winograd"`` (the ``cpu``
      policy) and without a mesh, the real forward's eligible 3x3
      convolutions run as Winograd F(2x2, 3x3): the same values up to float
      rounding, 2.25x fewer multiplies (:mod:`jaxdd.policy`; docs/results/speed-distillation.md, "One
      DM step"). N runs in one program: :func:`jaxdd.distill.many_runs`.
    init: the deprecated spelling of ``syn_init`` (a DeprecationWarning).

  Returns:
    A :class:`Distiller` ``(init, step)``, both pure. ``state.hparams``
    holds ``lr`` and, with a weighting, the KDE ``variance`` and
    ``temperature``. The step is traced under the execution's policy. Its metrics: ``loss``, ``grad_norm``, ``max_weight`` and
    ``finite`` (the loss, the gradient norm and the updated images are finite,
    :func:`jaxdd.distill.core.all_finite`).
  """
  init = syn_init_of(syn_init, init, "dm")
  _check_dm(ipc, real_per_class, init, real_sampling, kde_config, group_matching)
  _check_batch_clusters(batch_clusters, kde_config, group_matching, batch_eps)
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

  def batch_fn(key, real: RealData, h, features):
    rows, mask, weights = real_batch(key, real, real_per_class, kde_knobs(kde_config, h),
                                     real_sampling)
    if real.sample_weight is not None:  # the user's per-sample weights, times the weighting's
      weights = _normalized(weights * real.sample_weight[rows])
    class_scale = None
    if group_matching is not None:
      if real.groups is None:
        raise ValueError("group_matching needs the bias labels: pass groups= to real_data")
      weights, class_scale = weighting.group_balanced_weights(real.groups[rows], mask,
                                                              group_matching)
    if batch_clusters is not None:  # FairDD without labels: the batch's own clusters
      groups = weighting.batch_pseudo_groups(features(real.images[rows]), mask,
                                             max_clusters=batch_clusters, eps_rule=batch_eps)
      weights, class_scale = weighting.group_balanced_weights(groups, mask, batch_clusters + 1)
    return rows, mask, weights, class_scale

  settings = _DMSettings(num_classes, ipc, model, augment, real_per_class, tx, syn_tx is None,
                         ex)
  signature = ("dm", num_classes, ipc, model, augment, real_per_class, momentum, syn_tx,
               None if kde_config is None else (kde_config.normalize, kde_config.scope),
               real_sampling, group_matching, batch_clusters, batch_eps, mesh, ex.class_axis,
               ex.batch_axis, real_chunk, syn_chunk, None if real_dtype is None else str(real_dtype),
               None if ex.syn_dtype is None else str(ex.syn_dtype), ex.policy)
  return Distiller(init_fn, ex.compile_step(signature, _dm_step(settings, batch_fn)))


def dm_cell(*, num_classes: int, ipc: int, model: nn.Module | None = None,
            augment: Callable[[jax.Array, jax.Array], jax.Array] | None = None,
            real_per_class: int = 256, lr: float = 1.0, momentum: float = 0.5,
            kde_config: KDEConfig | None = None, num_groups: int | None = None,
            importance_sampling: bool = False, batch_clusters: int | None = None,
            batch_eps: Literal["median", "knee"] = "median",
            execution: Execution | None = None) -> Distiller:
  """DM whose weighting is data: every DM row of a results table in one program.

  :func:`dm`'s step, with how the real batch is drawn and weighed given by the
  real data and the state's hyperparameters instead of static settings, so runs
  that differ in their weighting are N runs of ONE step (``jax.vmap``,
  :func:`jaxdd.distill.many_runs`, or :func:`jaxdd.distill.cell_runs` for rows x
  seeds). Per run:

  * ``real.sample_weight`` (N,): fixed per-sample weights (whole-class weights of
    the oracle or of a class-scope KDE; ones for uniform);
  * ``state.hparams["kde"]`` (0 or 1): times the in-batch KDE weights of
    ``real.embeddings`` (the paper's scope 'batch'; ``variance``, ``temperature``
    are hyperparameters, ``kde_config.normalize`` is static);
  * ``state.hparams["groups"]`` (0 or 1): FairDD's group-balanced weights over
    ``real.groups`` instead (``num_groups`` group values at most);
  * ``state.hparams["batch_groups"]`` (0 or 1): FairDD's group-balanced weights
    over the batch's own DBSCAN clusters (:func:`dm`'s ``batch_clusters``);
  * ``state.hparams["weighted_sampling"]`` (0 or 1): each class's batch drawn
    with replacement in proportion to ``real.sample_prob`` (importance
    sampling, matched with a plain mean when ``sample_weight`` is uniform)
    instead of ``real_per_class`` rows without replacement;
  * the start of the synthetic set: a warm start, ``init(key, real, syn)``.

  The weights of a batch are ``mask * sample_weight[rows] * (KDE weights if kde)``,
  normalised per class, or the group-balanced ones with ``groups``. Each run
  equals the :func:`dm` run of the same weighting up to float rounding
  (tests/test_cell.py): vanilla (all flags 0, uniform ``sample_weight``), DM +
  KDE (``kde=1``), class-scope or oracle weights (``sample_weight`` the
  whole-class weights, :func:`jaxdd.distill.class_weights`), importance
  sampling (``weighted_sampling=1`` with ``sample_prob`` those weights), FairDD
  (``groups=1``). Every branch is computed and the run's flags select (under
  ``vmap`` a switch would compute them all anyway); what a run does not use may
  be any placeholder of the right shape (e.g. zeros).

  Args:
    num_classes, ipc, model, augment, real_per_class, lr, momentum: as :func:`dm`.
    kde_config: the in-batch KDE's static normalisation and its default
      ``variance`` and ``temperature`` (None: ``KDEConfig()``'s); its scope is
      the batch.
    num_groups: the largest number of group values of ``real.groups`` (None:
      no group matching).
    importance_sampling: whether any run samples by ``real.sample_prob``
      (``weighted_sampling=1``). Off, the rows of a seed share one uniform real
      batch, and its forward pass is computed once for all of them
      (:func:`jaxdd.distill.cell_runs`); on, every run's batch is its own.
    batch_clusters: None, or the most DBSCAN clusters per batch of the runs with
      ``batch_groups=1`` (:func:`dm`'s ``batch_clusters``).
    batch_eps: their radius rule (:func:`dm`'s ``batch_eps``).
    execution: as :func:`dm` (one device; ``real_dtype`` and ``syn_dtype`` apply).

  Returns:
    A :class:`Distiller`; ``init(key, real, syn=None, *, hparams=None)`` with the
    hyperparameters ``lr``, ``variance``, ``temperature``, ``kde``, ``groups``
    and ``weighted_sampling`` (flags default 0); the step's metrics are
    :func:`dm`'s.
  """
  _check_dm(ipc, real_per_class, "real", "uniform", kde_config, None)
  ex = Execution() if execution is None else execution
  ex.one_device("dm_cell", dtypes=True)
  model = ConvNet(num_classes) if model is None else model
  _check_model(model)
  if num_groups is not None and (isinstance(num_groups, bool) or not isinstance(num_groups, int)
                                 or num_groups < 1):
    raise ValueError(f"num_groups must be None or an int >= 1, got {num_groups!r}")
  cfg = weighting.KDEConfig() if kde_config is None else kde_config
  tx = optax.sgd(1.0, momentum=momentum)
  _check_batch_clusters(batch_clusters, None, None, batch_eps)
  hparams = {"lr": lr, **kde_hparams(cfg), "kde": 0.0, "groups": 0.0, "batch_groups": 0.0,
             "weighted_sampling": 0.0}
  init_fn = _state_init(num_classes, ipc, "real", tx, None, None, hparams)

  def batch_fn(key, real: RealData, h, features):
    rows, mask = sample_per_class(key, real.index, real_per_class)
    if importance_sampling:
      if real.sample_prob is None:
        raise ValueError("importance_sampling draws by sample_prob: pass sample_prob= to "
                         "real_data")
      p = real.sample_prob[real.index.indices]
      valid = jnp.arange(p.shape[1])[None, :] < real.index.counts[:, None]
      rows_w, mask_w = sample_from(key, real.index, jnp.where(valid, p, 0.0), real_per_class)
      use = h["weighted_sampling"] > 0.5
      rows, mask = jnp.where(use, rows_w, rows), jnp.where(use, mask_w, mask)
    base = mask.astype(jnp.float32)
    if real.sample_weight is not None:
      base = base * real.sample_weight[rows]
    if real.embeddings is not None:
      kde_w = batch_weights(real, rows, mask, kde_knobs(cfg.replace(scope="batch"), h))
      base = jnp.where(h["kde"] > 0.5, base * kde_w, base)
    weights, class_scale = _normalized(base), None
    if real.groups is not None and num_groups is not None:
      w_g, scale = weighting.group_balanced_weights(real.groups[rows], mask, num_groups)
      on = h["groups"] > 0.5
      weights, class_scale = jnp.where(on, w_g, weights), jnp.where(on, scale, 1.0)
    if batch_clusters is not None:
      groups = weighting.batch_pseudo_groups(features(real.images[rows]), mask,
                                             max_clusters=batch_clusters, eps_rule=batch_eps)
      w_b, scale = weighting.group_balanced_weights(groups, mask, batch_clusters + 1)
      on = h["batch_groups"] > 0.5
      class_scale = jnp.ones_like(scale) if class_scale is None else class_scale
      weights, class_scale = jnp.where(on, w_b, weights), jnp.where(on, scale, class_scale)
    return rows, mask, weights, class_scale

  settings = _DMSettings(num_classes, ipc, model, augment, real_per_class, tx, True, ex)
  signature = ("dm_cell", num_classes, ipc, model, augment, real_per_class, momentum,
               cfg.normalize, num_groups, bool(importance_sampling), batch_clusters, batch_eps,
               ex.real_chunk, ex.syn_chunk,
               None if ex.real_dtype is None else str(ex.real_dtype),
               None if ex.syn_dtype is None else str(ex.syn_dtype), ex.policy)
  return Distiller(init_fn, ex.compile_step(signature, _dm_step(settings, batch_fn)))


class _DMSettings(NamedTuple):
  """What a DM step needs besides how it draws and weighs its real batch."""
  num_classes: int
  ipc: int
  model: nn.Module
  augment: Callable | None
  real_per_class: int
  tx: optax.GradientTransformation
  scale_lr: bool  # the updates times hparams["lr"] (SGD whose lr is a hyperparameter)
  ex: Execution


def _normalized(w: jax.Array) -> jax.Array:
  """Each row of (C, B) weights divided by its sum (a row of zeros stays zeros)."""
  total = w.sum(axis=1, keepdims=True)
  return w / jnp.where(total > 0, total, 1.0)


def _dm_step(s: _DMSettings, batch_fn: Callable) -> Callable:
  """The pure DM step: ``batch_fn(key, real, hparams) -> (rows, mask, weights, class_scale)``
  draws and weighs the real batch; a fresh random network embeds both sides."""
  mesh, ex = s.ex.mesh, s.ex

  def loss_fn(syn_images, key, real: RealData, h):
    k_model, k_real, k_aug = jax.random.split(key, 3)
    shape = (1,) + syn_images.shape[1:]
    variables = s.model.init(k_model, jnp.zeros(shape, syn_images.dtype))
    variables = jax.lax.stop_gradient(variables)  # the network is frozen
    embed, embed_real = _embedders(s.model, variables, ex.real_dtype,
                                   ex.policy.forward_conv == "winograd" and mesh is None,
                                   syn_dtype=ex.syn_dtype)
    # the features the step matches, of a (C, B, ...) real batch (unaugmented, no gradient)
    features = lambda x: jax.lax.map(embed_real or embed, jax.lax.stop_gradient(x))  # noqa: E731
    rows, mask, weights, class_scale = batch_fn(k_real, real, h, features)
    real_images = parallel.constrain(real.images[rows], mesh, ex.real_spec)
    syn_batch = parallel.constrain(
        syn_images.reshape((s.num_classes, s.ipc) + syn_images.shape[1:]), mesh, ex.syn_spec)
    per_sample = "batch_stats" not in variables and mesh is None
    loss = matching.dm_loss(k_aug, syn_batch, real_images, embed_fn=embed, augment=s.augment,
                            weights=weights, real_chunk=ex.real_chunk if per_sample else None,
                            syn_chunk=ex.syn_chunk if per_sample else None,
                            map_classes=mesh is None and ex.policy.class_augment == "map",
                            real_embed_fn=embed_real,
                            class_scale=class_scale)
    return loss, weights

  def step_fn(state: DistillState, real: RealData):
    h = state.hparams
    (loss, weights), grad = jax.value_and_grad(loss_fn, has_aux=True)(
        state.syn.images, step_key(state), real, h)
    updates, opt_state = s.tx.update(grad, state.opt_state, state.syn.images)
    if s.scale_lr:
      updates = jax.tree.map(lambda u: u * h["lr"].astype(u.dtype), updates)
    images = optax.apply_updates(state.syn.images, updates)
    grad_norm = optax.tree.norm(grad)
    metrics = {"loss": loss, "grad_norm": grad_norm, "max_weight": jnp.max(weights),
               "finite": all_finite(loss, grad_norm, images)}
    return state._replace(syn=state.syn._replace(images=images), opt_state=opt_state,
                          step=state.step + 1), metrics

  return step_fn


def _check_batch_clusters(batch_clusters, kde_config, group_matching, batch_eps) -> None:
  if batch_eps not in weighting.EPS_RULES:
    raise ValueError(f"batch_eps must be one of {weighting.EPS_RULES}, got {batch_eps!r}")
  if batch_clusters is None:
    if batch_eps != "median":
      raise ValueError("batch_eps sets the radius of batch_clusters' DBSCAN; pass "
                       "batch_clusters= too (or leave batch_eps at 'median')")
    return
  if isinstance(batch_clusters, bool) or not isinstance(batch_clusters, int) \
      or batch_clusters < 1:
    raise ValueError(f"batch_clusters must be None or the most clusters per batch (an int >= 1), "
                     f"got {batch_clusters!r}")
  if kde_config is not None or group_matching is not None:
    raise ValueError("batch_clusters (FairDD with in-batch pseudo-groups) replaces the "
                     "weighting: pass kde_config=None and group_matching=None")


def _check_model(model) -> None:
  """The model contract (see :func:`dm`), checked when the distiller is built."""
  if not isinstance(model, nn.Module):
    raise ValueError(f"model must be a flax.linen Module (its features output is matched), got "
                     f"{type(model).__name__}; for a plain function use "
                     "jaxdd.matching.dm_loss(embed_fn=...) in your own step")


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


def _embedders(model: nn.Module, variables, real_dtype, winograd_real: bool, *,
               syn_dtype=None):
  """``(embed, embed_real)``: the frozen network's features of the synthetic images, and of
  the (gradient-free) real images when they run otherwise (None: as the synthetic ones).

  ``real_dtype``: the real forward in that dtype (parameters and images cast, features back
  to float32); ``winograd_real``: its eligible convolutions as Winograd F(2x2, 3x3);
  ``syn_dtype``: the synthetic forward (and so its backward) in that dtype, the same way.
  """

  def embed_with(v, x):  # the model contract's features (jaxdd.models.feature_fn)
    return feature_fn(model, v)(x)

  def in_dtype(dtype):
    cast = jax.tree.map(
        lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, variables)
    return lambda x: embed_with(cast, x.astype(dtype)).astype(jnp.float32)

  plain = functools.partial(embed_with, variables)
  embed = plain if syn_dtype is None else in_dtype(syn_dtype)
  embed_real = None if real_dtype is None else in_dtype(real_dtype)
  if embed_real is None and syn_dtype is not None:  # the real side keeps its own dtype
    embed_real = plain
  if winograd_real:  # no gradient flows through the real side
    embed_real = winograd.traced_inside(embed if embed_real is None else embed_real)
  return embed, embed_real
