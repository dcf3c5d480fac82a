"""Distribution matching (DM; Zhao & Bilen, WACV 2023), optionally KDE-reweighted."""
from __future__ import annotations

import functools
from typing import Any, Callable, Literal, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, PartitionSpec as P

from jaxdd import matching, parallel, policy, weighting
from jaxdd._src import checks, winograd
from jaxdd.distill.core import (Distiller, DistillState, KDEConfig, RealData, _BoundStep,
                                _check_kde, _check_sampling, _chunk, _floating_dtype, _KDEKnobs,
                                _runtime_knobs, _shared_program, _state_init, real_batch)
from jaxdd.models import ConvNet, loop_safe_convs


def dm(*, num_classes: int, ipc: int, model: nn.Module | None = None,
       augment: Callable[[jax.Array, jax.Array], jax.Array] | None = None,
       real_per_class: int = 256, lr: float = 1.0, momentum: float = 0.5,
       syn_tx: optax.GradientTransformation | None = None,
       init: Literal["real", "weighted", "noise"] = "real", kde_config: KDEConfig | None = None,
       real_sampling: Literal["uniform", "weighted"] = "uniform",
       group_matching: int | None = None,
       mesh: Mesh | None = None, class_axis: str | None = None, batch_axis: str | None = None,
       real_chunk: int | Literal["auto"] | None = "auto",
       syn_chunk: int | Literal["auto"] | None = "auto", real_dtype: Any = None,
       num_runs: int | None = None, run_knobs: Sequence[dict] | None = None,
       common_random_numbers: bool = False,
       run_parallel: Literal["auto", "vmap", "map"] = "auto", jit: bool = True) -> Distiller:
  """Distribution matching (Zhao & Bilen 2023), optionally KDE-reweighted (Cui et al. 2024).

  Args:
    num_classes: number of classes.
    ipc: synthetic images per class.
    model: the embedding network, re-initialised randomly at every step
      (default ``ConvNet(num_classes)``: depth 3, width 128, instance norm).
    augment: siamese augmentation ``f(key, images)`` (e.g.
      ``jaxdd.augment.dsa("color_crop_cutout_flip_scale_rotate")``) or None.
    real_per_class: real images sampled per class and step (reference: 256).
    lr, momentum: SGD on the synthetic images (reference: 1.0, 0.5).
    syn_tx: optional optax transformation replacing SGD(lr, momentum).
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
    mesh, class_axis, batch_axis: optional mesh; the sampled real batch
      (C, B, ...) is sharded with ``P(class_axis, batch_axis)`` and XLA
      partitions the step accordingly (results equal the single-device step up
      to float reassociation).
    real_chunk: embed the (gradient-free) real images this many at a time
      inside the step, which keeps activations in cache on CPU; ignored (all
      at once) for BatchNorm models, whose statistics mix the whole batch as
      in the reference, and when a mesh is given. ``"auto"``: the active
      :mod:`jaxdd.policy`'s ``real_chunk`` (32 on CPU, all at once on
      accelerators). ``None``: all at once.
    syn_chunk: the same for the synthetic images, whose forward and backward
      then run chunk by chunk (plain ``nn.Conv`` layers are routed through
      :func:`jaxdd.models.loop_safe_convs` for that). ``"auto"``: the policy's
      ``syn_chunk`` (10 on CPU, all at once on accelerators). Chunking never
      changes the loss beyond float rounding. Timings at the reference
      configuration: RESULTS.md, "One DM step" (benchmarks/dm_step.py).
    real_dtype: run the gradient-free real-image forward in this floating dtype
      (e.g. ``"bfloat16"``): the network's parameters and the real images are
      cast to it, the features back to float32. None (default): the synthetic
      images' dtype, i.e. the reference's computation. Off by default:
      on the development CPU bfloat16 is slower (RESULTS.md, "bf16 real path for DM").
      Under a policy with ``forward_conv="winograd"`` (the ``cpu`` policy) and
      without a mesh, the real forward's eligible 3x3 convolutions run as
      Winograd F(2x2, 3x3): the same values up to float rounding, 2.25x fewer
      multiplies (:mod:`jaxdd.policy`; RESULTS.md, "One DM step").
    num_runs: None (one run) or N: N distillations in ONE compiled step
      (:func:`many_runs`): the state's arrays get a leading run axis and the
      metrics are per run.
    run_knobs: with ``num_runs``, one dict per run overriding the runtime knobs
      ``lr``, ``variance`` and ``temperature`` (e.g. the candidates of a sweep);
      None: every run uses this call's values.
    common_random_numbers: with ``num_runs``, False (default): each run draws
      its own network, batches and augmentation (keys split from the init key,
      as N seeds); True: all runs share them (the init key and every draw),
      so runs that differ only in their knobs are a paired comparison, and the
      shared work (the network, the real batch and its forward pass) is done
      once for all runs.
    run_parallel: with independent runs, ``"vmap"`` (batched: the runs'
      random networks become grouped convolutions) or ``"map"`` (one after
      another inside the program); ``"auto"``: the policy's ``parallel`` (map on
      CPU, where the grouped convolutions are slower: RESULTS.md, "N DM runs in one
      program"). Shared draws always use vmap, which computes them once.
    jit: return jitted ``init``/``step`` (default) or the raw pure functions.

  Returns:
    A :class:`Distiller` ``(init, step)``. The step is traced under the policy
    that was active when ``dm`` was called (:func:`jaxdd.policy.current`).
  """
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
  real_dtype = _floating_dtype(real_dtype, "real_dtype")
  model = ConvNet(num_classes) if model is None else model
  pol = policy.current()
  real_chunk = _chunk(real_chunk, pol.real_chunk, "real_chunk")
  syn_chunk = _chunk(syn_chunk, pol.syn_chunk, "syn_chunk")
  # SGD's learning rate is applied at run time (hp["lr"]), so candidates that differ only in
  # lr_img (or the KDE variance / temperature) share one compiled program. sgd(1.0) keeps the
  # optimiser state of sgd(lr) and its updates are exactly -trace; times lr gives sgd(lr)'s.
  tx = optax.sgd(1.0, momentum=momentum) if syn_tx is None else syn_tx
  real_spec = P(class_axis, batch_axis)
  syn_spec = P(class_axis)
  hp = _runtime_knobs(lr if syn_tx is None else 1.0, kde_config)

  init_fn = _state_init(num_classes, ipc, init, tx, mesh, kde_config)
  knobs_of = lambda h: None if kde_config is None else _KDEKnobs(
      h["variance"], h["temperature"], kde_config.normalize, kde_config.scope)

  def loss_fn(syn_images, key, real: RealData, h):
    k_model, k_real, k_aug = jax.random.split(key, 3)
    rows, mask, weights = real_batch(k_real, real, real_per_class, knobs_of(h), real_sampling)
    class_scale = None
    if group_matching is not None:
      if real.groups is None:
        raise ValueError("group_matching needs the bias labels: pass groups= to real_data")
      weights, class_scale = weighting.group_balanced_weights(real.groups[rows], mask,
                                                              group_matching)
    real_images = parallel.constrain(real.images[rows], mesh, real_spec)
    syn_batch = parallel.constrain(
        syn_images.reshape((num_classes, ipc) + syn_images.shape[1:]), mesh, syn_spec)
    shape = (1,) + syn_images.shape[1:]
    variables = model.init(k_model, jnp.zeros(shape, syn_images.dtype))
    variables = jax.lax.stop_gradient(variables)  # the network is frozen

    def embed_with(v, x):
      # BatchNorm models use the statistics of the batch (train mode), as the reference.
      if "batch_stats" in v:
        (feats, _), _ = model.apply(v, x, train=True, return_features=True,
                                    mutable=["batch_stats"])
      else:
        feats, _ = model.apply(v, x, return_features=True)
      return feats

    embed = functools.partial(embed_with, variables)
    embed_real = None
    if real_dtype is not None:
      cast = jax.tree.map(
          lambda a: a.astype(real_dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a,
          variables)
      embed_real = lambda x: embed_with(cast, x.astype(real_dtype)).astype(jnp.float32)
    if pol.forward_conv == "winograd" and mesh is None:  # no gradient flows through the real side
      embed_real = winograd.traced_inside(embed if embed_real is None else embed_real)

    per_sample = "batch_stats" not in variables and mesh is None
    with loop_safe_convs():
      loss = matching.dm_loss(k_aug, syn_batch, real_images, embed_fn=embed, augment=augment,
                              weights=weights, real_chunk=real_chunk if per_sample else None,
                              syn_chunk=syn_chunk if per_sample else None,
                              map_classes=mesh is None, real_embed_fn=embed_real,
                              class_scale=class_scale)
    return loss, weights

  def step_fn(state: DistillState, real: RealData, h):
    key = jax.random.fold_in(state.key, state.step)
    (loss, weights), grad = jax.value_and_grad(loss_fn, has_aux=True)(state.syn.images, key,
                                                                       real, h)
    updates, opt_state = tx.update(grad, state.opt_state, state.syn.images)
    if syn_tx is None:
      updates = jax.tree.map(lambda u: u * h["lr"].astype(u.dtype), updates)
    images = optax.apply_updates(state.syn.images, updates)
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grad),
               "max_weight": jnp.max(weights)}
    return DistillState(state.syn._replace(images=images), opt_state, state.step + 1,
                        state.key), metrics

  step_fn = policy.pinned(pol, step_fn)
  if num_runs is not None:
    if syn_tx is not None and any("lr" in k for k in (run_knobs or ())):
      raise ValueError("run_knobs' lr scales dm's own SGD; with syn_tx the step size is the "
                       "transformation's: drop lr from run_knobs")
    if mesh is not None:
      raise ValueError("num_runs runs on one device; drop mesh= (or num_runs=)")
    return many_runs(init_fn, step_fn, hp, num_runs=num_runs, run_knobs=run_knobs,
                     common_random_numbers=common_random_numbers,
                     parallel=pol.parallel if run_parallel == "auto" else run_parallel, jit=jit)
  if run_knobs is not None or common_random_numbers:
    raise ValueError("run_knobs and common_random_numbers need num_runs=N")
  if not jit:
    def raw_step(state: DistillState, real: RealData):
      return step_fn(state, real, hp)
    return Distiller(init_fn, raw_step)
  # init runs once and checks sizes on the host, so only the step is compiled; the program
  # is shared by every dm() with the same static settings (runtime knobs aside).
  static = ("dm", num_classes, ipc, model, augment, real_per_class, momentum, syn_tx,
            None if kde_config is None else (kde_config.normalize, kde_config.scope),
            real_sampling, group_matching, mesh, class_axis, batch_axis, real_chunk, syn_chunk,
            None if real_dtype is None else str(real_dtype), pol)
  return Distiller(init_fn, _BoundStep(_shared_program(static, step_fn), hp))


#: The runtime knobs a run of :func:`many_runs` may override.
RUN_KNOBS = ("lr", "variance", "temperature")


def many_runs(init_fn: Callable, step_fn: Callable, hp: dict, *, num_runs: int,
              run_knobs: Sequence[dict] | None = None, common_random_numbers: bool = False,
              parallel: str = "vmap", jit: bool = True) -> Distiller:
  """N distillations of one method in one program: ``step_fn`` vmapped over runs.

  ``init(key, real)`` builds the stacked state: with independent runs, run i
  starts from ``init_fn(jax.random.split(key, N)[i], real)``; with common random
  numbers every run starts from ``init_fn(key, real)`` and the key and step
  stay shared (unbatched), so every draw inside the step (the network, the real
  batch, the augmentation) is the same for all runs and is computed once; only
  what depends on a run's images or knobs is batched. ``step(state, real)``
  returns the stacked state and per-run metrics. Independent runs are batched
  (``parallel="vmap"``) or run one after another inside the program (``"map"``).
  Run i equals the single run with its key and knobs, up to float rounding
  (tests/test_distill.py).
  """
  if parallel not in ("vmap", "map"):
    raise ValueError(f"run_parallel must be 'auto', 'vmap' or 'map', got {parallel!r}")
  checks.check_positive_int("num_runs", num_runs)
  knobs = [dict() for _ in range(num_runs)] if run_knobs is None else [dict(k) for k in run_knobs]
  if len(knobs) != num_runs:
    raise ValueError(f"run_knobs has {len(knobs)} entries for num_runs={num_runs}")
  for k in knobs:
    unknown = set(k) - set(RUN_KNOBS)
    if unknown:
      raise ValueError(f"run_knobs may set {list(RUN_KNOBS)}, got {sorted(unknown)}")
  stacked_hp = {name: np.asarray([k.get(name, hp[name]) for k in knobs], np.float32)
                for name in RUN_KNOBS}
  shared = common_random_numbers
  # Which parts of the state carry a run axis: all of them, or (shared draws) the images
  # and the optimiser state only.
  axes = DistillState(0, 0, None if shared else 0, None if shared else 0, None)

  def init(key: jax.Array, real: RealData) -> DistillState:
    if shared:
      one = init_fn(key, real)
      tile = lambda a: jnp.broadcast_to(a, (num_runs,) + jnp.shape(a))
      return one._replace(syn=jax.tree.map(tile, one.syn),
                          opt_state=jax.tree.map(tile, one.opt_state))
    states = [init_fn(k, real) for k in jax.random.split(key, num_runs)]
    return jax.tree.map(lambda *xs: jnp.stack(xs), *states)

  def many_step(state: DistillState, real: RealData, h):
    if parallel == "map" and not shared:
      return jax.lax.map(lambda args: step_fn(args[0], real, args[1]), (state, h))
    return jax.vmap(step_fn, in_axes=(axes, None, 0), out_axes=(axes, 0))(state, real, h)

  if not jit:
    return Distiller(init, lambda state, real: many_step(state, real, stacked_hp))
  return Distiller(init, _BoundStep(jax.jit(many_step, donate_argnums=0), stacked_hp))
