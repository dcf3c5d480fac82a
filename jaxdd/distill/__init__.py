"""Distillation methods as optax-style pairs of pure functions.

``dm(...)`` (distribution matching), ``cfm(...)`` (frequency matching),
``dsa(...)`` and ``dc(...)`` (gradient matching, see :func:`gm`) and ``mtt(...)``
(trajectory matching) return a
:class:`Distiller` ``(init, step)``. One module per method, the shared pieces
in one place:

* :mod:`jaxdd.distill.core`: :class:`RealData`, real-batch sampling and
  weights, the synthetic set's initialisation, :class:`Distiller`;
* :mod:`jaxdd.distill.execution`: how a step runs (:class:`Execution`: the
  layout policy, mesh, chunks, jit) and what wraps a step (:func:`many_runs`,
  :func:`multi_step`);
* :mod:`jaxdd.distill.distribution`: :func:`dm`;
* :mod:`jaxdd.distill.frequency`: :func:`cfm` (curriculum frequency matching);
* :mod:`jaxdd.distill.gradient`: :func:`gm`, :func:`dsa`, :func:`dc`;
* :mod:`jaxdd.distill.trajectory`: :func:`mtt` (over expert trajectories
  from :mod:`jaxdd.distill.experts`).

For DM:

* ``init(key, real)`` -> :class:`DistillState` with the synthetic set (initialised
  from real images of each class, or from noise), the image optimiser state and
  the step's hyperparameters (``state.hparams``: ``lr``, the KDE variance and
  temperature). Pure and traceable: ``jax.jit(d.init)`` and ``jax.vmap(d.init)``
  over keys work.
* ``step(state, real)`` -> ``(state, metrics)``: a pure function (nothing
  donated), ONE compiled XLA program that
  samples a real batch per class from the device-resident dataset, draws a fresh
  random ConvNet, applies one siamese DSA draw per class, computes the KDE weights
  of the sampled batch from its surrogate embeddings, evaluates the weighted DM
  loss and updates the synthetic images with SGD-momentum (optax).

The step key is ``fold_in(key, state.step)`` (big_vision, :func:`step_key`): the
step returns no keys, and a resumed run replays exactly the same randomness.
``state.key`` holds the run key's raw data, so ``chex`` and
``flax.serialization`` take the state as it is. ``jax.vmap(d.step, in_axes=(0,
None))`` over stacked states is N runs of any method, each with its own
hyperparameters; :func:`many_runs` arranges per-run hyperparameters, shared
draws and per-run surrogate outputs.

Example:
  >>> import jax, numpy as np
  >>> from jaxdd import distill, models
  >>> x = np.random.default_rng(0).normal(size=(40, 8, 8, 3)).astype(np.float32)
  >>> y = np.repeat(np.arange(2), 20)
  >>> real = distill.real_data(x, y, num_classes=2)
  >>> d = distill.dm(num_classes=2, ipc=2, model=models.ConvNet(2, depth=1, width=8),
  ...                real_per_class=8, augment=None)
  >>> state = d.init(jax.random.key(0), real)
  >>> state, metrics = d.step(state, real)
  >>> state.syn.images.shape
  (4, 8, 8, 3)
"""
from jaxdd.distill.core import (INITS, REAL_SAMPLING, ClassIndex, Distiller, DistillState,
                                KDEConfig, RealData, batch_weights, class_index,
                                class_log_density, class_weights, real_batch, real_data,
                                run_key_data, sample_from, sample_per_class, sample_weighted, step_key,
                                weighted_init_rows, with_hparams)
from jaxdd.distill.steps import multi_step, steps_loop
from jaxdd.distill.distribution import dm, dm_cell
from jaxdd.distill.execution import RUN_FIELDS, Execution, cell_row_groups, cell_runs, many_runs
from jaxdd.distill.frequency import cfm
from jaxdd.distill.gradient import BN_REAL_PER_CLASS, GM_LOOPS, dc, dsa, gm, gm_loops
from jaxdd.distill.trajectory import mtt
from jaxdd.structs import SynSet  # the artifact a distiller's state holds

__all__ = ["BN_REAL_PER_CLASS", "RUN_FIELDS", "cell_row_groups", "cell_runs", "dm_cell", "sample_from", "ClassIndex", "DistillState", "Distiller", "Execution", "GM_LOOPS",
           "INITS", "KDEConfig", "REAL_SAMPLING", "RealData", "SynSet", "batch_weights",
           "class_index",
           "cfm", "class_log_density", "class_weights", "dc", "dm", "dsa", "gm", "gm_loops", "mtt",
           "many_runs", "multi_step",
           "real_batch", "real_data", "run_key_data", "sample_per_class", "sample_weighted",
           "step_key", "steps_loop", "weighted_init_rows", "with_hparams"]
