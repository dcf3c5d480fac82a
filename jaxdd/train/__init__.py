"""Training: the one trainer of jaxdd and its compiled programs.

Evaluation (:mod:`jaxdd.evaluate`, :mod:`jaxdd.debias`) trains fresh networks
with it, gradient matching (:func:`jaxdd.distill.gm`) trains its inner network
with :func:`fit`, and the SupCon surrogate (:func:`jaxdd.surrogate.train_surrogate`)
trains with :func:`fit_epochs`. A :class:`~jaxdd.tasks.TrainTask`
(:mod:`jaxdd.tasks`, re-exported here) says what is trained
(:func:`~jaxdd.tasks.standard_task`: cross-entropy; the surrogate's SupCon
task), a :class:`~jaxdd.protocols.Protocol` how (the reference's
``evaluate_synset`` recipe, spelled out in :mod:`jaxdd.protocols`; the
surrogate's cosine recipe). The SGD update is optax's (:func:`torch_sgd`); a
partial last batch gets its own compiled step of its true static size (or is
dropped: ``Protocol.drop_last``); the optimiser state is re-initialised at the
lr decay. Step ``j`` of epoch ``e`` draws from ``fold_in(fold_in(k_step, e),
j)``: split into augmentation and task keys when the protocol augments, the
task's key as is otherwise.

:func:`fit` runs the whole training of one network as one ``lax.scan`` over
epochs (and a nested scan over the batches of an epoch); :func:`fit_epochs`
runs the same steps from the host, one compiled program per epoch or per step.
:func:`train_models` runs ``fit`` for
``num_models`` keys and an optional learning-rate grid in **one** XLA
program, either ``vmap`` ped (all networks batched) or under a ``lax.map``
(one after another inside the program: the default on CPU and on GPUs, where
XLA runs the grouped convolutions of vmapped ConvNets slower than separate
ones; see docs/results/speed-evaluation.md, "Many networks in one program" and "Speed on
GPU"); ``parallel="auto"`` takes the active :mod:`jaxdd.policy`'s choice. The compiled
programs are module-level ``jax.jit`` functions whose static arguments (training task,
protocol, parallel mode, policy) select the trace, which runs under that policy; JAX's
own cache keeps one program per combination and shape, and the library holds none.
Tasks, protocols and augmentations compare by value, so equal arguments share a program.

On CPU, convolution gradients inside a loop hit a slow XLA:CPU path
(jax-ml/jax#12868; timings in docs/results/speed-evaluation.md, "Convolution gradients inside loops"). Under the
``cpu`` policy the convolutions of jaxdd's models (:class:`~jaxdd.models.TorchConv`)
run :func:`~jaxdd.models.loop_safe_conv`, which computes the same values and
gradients with fast kernels, and per-sample tasks train on micro-batches
(:data:`CPU_MICRO_BATCH`). The trainer never modifies the model it is given: a
plain ``flax.linen.Conv`` keeps lax's convolution; a model of your own gets the
loop-safe kernels by asking, ``nn.Conv(..., conv_general_dilated=jaxdd.models.policy_conv)``.

Modules: :mod:`~jaxdd.train.optim` (the SGD update), :mod:`~jaxdd.train.grads`
(one step's gradient, micro-batched), :mod:`~jaxdd.train.single` (:func:`fit`),
:mod:`~jaxdd.train.host` (:func:`fit_epochs`) and :mod:`~jaxdd.train.many`
(:func:`train_models`, :func:`train_fresh`, prediction); their public names are
re-exported here.
"""
from __future__ import annotations

# Protocol and get_protocol, as before the split: jaxdd.train.Protocol keeps working.
from jaxdd.protocols import Protocol, get_protocol
# The training tasks (jaxdd.tasks), re-exported: jaxdd.train.TrainTask, ... keep working.
from jaxdd.tasks import (StepBatch, TrainMetrics, TrainTask, apply_train, cross_entropy,
                         hard_labels, split_variables, standard_task)
from jaxdd.train.grads import CPU_MICRO_BATCH, micro_batch_size
from jaxdd.train.host import LOOPS, fit_epochs, resolve_loop
from jaxdd.train.many import (PARALLEL, predict_block, resolve_parallel, train_fresh, train_models,
                              train_synsets)
from jaxdd.train.optim import torch_sgd
from jaxdd.train.single import fit

# Not public, but used from here by jaxdd.evaluate, jaxdd.debias and the tests.
from jaxdd.train.host import _host_epoch as _host_epoch
from jaxdd.train.host import _host_step as _host_step
from jaxdd.train.many import _predict_program as _predict_program
from jaxdd.train.many import _train_many as _train_many
from jaxdd.train.many import _train_one as _train_one
from jaxdd.train.many import _train_single as _train_single

__all__ = [
    "CPU_MICRO_BATCH",
    "LOOPS",
    "PARALLEL",
    "Protocol",
    "StepBatch",
    "TrainMetrics",
    "TrainTask",
    "apply_train",
    "cross_entropy",
    "fit",
    "fit_epochs",
    "get_protocol",
    "hard_labels",
    "micro_batch_size",
    "predict_block",
    "resolve_loop",
    "resolve_parallel",
    "split_variables",
    "standard_task",
    "torch_sgd",
    "train_fresh",
    "train_models",
    "train_synsets",
]
