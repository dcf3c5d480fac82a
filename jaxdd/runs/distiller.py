"""The distiller of a run's method with the run's settings, and its device mesh."""
from __future__ import annotations

import jax

from jaxdd import augment as augment_lib
from jaxdd import distill, models, parallel
from jaxdd import policy as policy_lib
from jaxdd.config import ExecutionConfig, RunConfig
from jaxdd.runs import checks, experts


def device_mesh(execution: ExecutionConfig | RunConfig, num_classes: int,
                real_per_class: int | None = None):
  """The mesh of ``execution.devices`` (``execution``: a run's ``config.execution``; None for
  one device): classes x real batch. A whole ``RunConfig`` also works (its execution part and
  its ``real_per_class``).

  The class axis takes the largest divisor of the device count that divides the
  class count, the real-batch axis the rest, which must divide ``real_per_class``
  (:func:`jaxdd.runs.checks.mesh_shape`, which every run checks before its first write).
  """
  if isinstance(execution, RunConfig):
    execution, real_per_class = execution.execution, execution.real_per_class
  if real_per_class is None:
    raise TypeError("device_mesh needs real_per_class with an execution part")
  shape = checks.mesh_shape(execution, num_classes, real_per_class)
  if shape is None:
    return None
  cls, real = shape
  return parallel.make_mesh({"cls": cls, "real": real}, devices=jax.devices()[:cls * real])


def execution(layout: ExecutionConfig, num_classes: int, real_per_class: int, *,
              compute_dtype: str, real_dtype: str | None = None,
              sharded: bool = True) -> distill.Execution:
  """How the run's step runs: the ``policy`` of its execution part ``layout``
  (``config.execution``), the mesh of its ``devices`` over ``real_per_class``
  (:func:`device_mesh`; ``sharded=False``: none), DM's ``real_dtype`` and the run's
  ``compute_dtype`` (DM's real and synthetic arithmetic)."""
  mesh = device_mesh(layout, num_classes, real_per_class)
  axes = {} if mesh is None or not sharded else dict(mesh=mesh, class_axis="cls",
                                                      batch_axis="real")
  low = None if compute_dtype == "float32" else compute_dtype
  return distill.Execution(policy=policy_lib.resolve(layout.policy),
                           real_dtype=real_dtype or low, syn_dtype=low, **axes)


def make_distiller(config: RunConfig, num_classes: int,
                   kde_config: distill.KDEConfig | None, *,
                   real_dtype: str | None = None, num_bias: int | None = None,
                   real_per_class: int | None = None) -> distill.Distiller:
  """The :class:`~jaxdd.distill.Distiller` of ``config.method`` with the run's settings.

  ``real_dtype`` is DM's (:func:`jaxdd.distill.dm`); other methods refuse it.
  ``num_bias``: the number of group values, for ``weighting='fairdd'`` (the bias values)
  and ``'fairdd_pseudo'`` / ``'fairdd_dbscan'`` (the pseudo-groups per class), DM's
  ``group_matching``; ``'fairdd_batch'`` clusters each batch in the step
  (``config.fairdd_clusters`` at most, the radius by ``config.fairdd_eps``). The step
  runs as :func:`execution` says. ``real_per_class``: the real batch per class a step
  draws, when not ``config.real_per_class`` (a run's, capped by its data:
  :func:`jaxdd.runs.rundata.real_batch`).
  """
  common = dict(num_classes=num_classes, ipc=config.ipc,
                model=models.ConvNet(num_classes, depth=config.depth, width=config.width),
                real_per_class=real_per_class or config.real_per_class, lr=config.lr_img,
                momentum=config.momentum, syn_init=config.init, kde_config=kde_config,
                real_sampling=config.real_sampling)
  if config.method != "dm" and real_dtype is not None:
    raise ValueError(f"real_dtype is a DM option; method {config.method!r} has none")
  ex = execution(config.execution, num_classes, config.real_per_class,
                 compute_dtype=config.compute_dtype, real_dtype=real_dtype,
                 sharded=config.method not in ("mtt", "cfm"))
  if config.method == "mtt":
    return distill.mtt(num_classes=num_classes, ipc=config.ipc,
                       num_epochs=experts.expert_run_epochs(config.mtt),
                       model=common["model"], expert_epochs=config.expert_epochs,
                       max_start_epoch=config.max_start_epoch, syn_steps=config.syn_steps,
                       batch_syn=config.batch_syn, lr=config.lr_img, lr_lr=config.lr_lr,
                       lr_teacher=config.lr_teacher, momentum=config.momentum,
                       augment=(augment_lib.dsa(config.dsa_strategy, siamese=False)
                                if config.dsa_strategy else None), mode=config.mtt_mode,
                       syn_init=config.init, kde_config=kde_config, execution=ex)
  if config.method == "cfm":
    aug = augment_lib.dsa(config.dsa_strategy) if config.dsa_strategy else None
    return distill.cfm(iterations=max(config.iterations, 1), augment=aug, beta=config.cfm_beta,
                       schedule=config.cfm_schedule, curriculum=config.cfm_curriculum,
                       filter=config.cfm_filter, normalize=config.cfm_normalize == "real",
                       execution=ex, **common)
  if config.method == "dm":
    aug = augment_lib.dsa(config.dsa_strategy) if config.dsa_strategy else None
    return distill.dm(augment=aug,
                      group_matching=(num_bias if config.weighting in (
                          "fairdd", "fairdd_pseudo", "fairdd_dbscan") else None),
                      batch_clusters=(config.fairdd_clusters
                                      if config.weighting == "fairdd_batch" else None),
                      batch_eps=config.fairdd_eps,
                      execution=ex, **common)
  strategy = config.dsa_strategy if config.method == "dsa" else None
  return distill.gm(augment=augment_lib.dsa(strategy) if strategy else None,
                    outer_loop=config.outer_loop,
                    inner_loop=config.inner_loop, lr_net=config.lr_net, execution=ex, **common)
