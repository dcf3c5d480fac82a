"""Many networks in one compiled program: :func:`train_models`, :func:`train_fresh`, prediction.

Example:
  >>> resolve_parallel("map")
  'map'
"""
from __future__ import annotations

import functools
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxdd import policy
from jaxdd import progress as progress_lib
from jaxdd._src import checks, winograd
from jaxdd._src.bound import Bound, bound
from jaxdd.protocols import Protocol, get_protocol
from jaxdd.structs import SynSet
from jaxdd.tasks import TrainMetrics, TrainTask, standard_task
from jaxdd.train import cores
from jaxdd.train.host import _auto_by_policy
from jaxdd.train.single import _train


PARALLEL = ("auto", "vmap", "map")


def resolve_parallel(parallel: str) -> str:
  """``"auto"`` -> the active policy's (:mod:`jaxdd.policy`): ``"map"`` on CPU,
  ``"vmap"`` elsewhere (see :func:`train_models`).

  Args:
    parallel: ``"auto"``, ``"vmap"`` or ``"map"``.

  Returns:
    ``"vmap"`` or ``"map"``.

  Example:
    >>> resolve_parallel("vmap")
    'vmap'
  """
  return _auto_by_policy("parallel", parallel, PARALLEL, "parallel")


# The compiled programs: module-level ``jax.jit`` functions whose static arguments (task,
# protocol, parallel mode, block, policy) select the trace. JAX's own cache keeps one program
# per combination; the library holds none. Tasks and protocols compare by value
# (jaxdd.tasks, jaxdd.protocols), so equal arguments share a program.
_TRAIN_STATIC = ("task", "protocol", "report", "pol")


def _train_single(task: TrainTask, protocol: Protocol, report: bool = False) -> Bound:
  """Jitted trainer of one network: (key, lr, images, labels) -> (params, state, metrics).

  One program per (task, protocol, report, active policy), traced under that policy;
  equal arguments give equal (value-compared) callables.
  """
  return bound(_train_one, task=task, protocol=protocol, report=report, pol=policy.current())


@functools.partial(jax.jit, static_argnames=_TRAIN_STATIC)
def _train_one(key, lr, images, labels, *, task: TrainTask, protocol: Protocol, report: bool,
               pol: policy.Policy):
  with policy.use(pol):
    return _train(key, lr, images, labels, task=task, protocol=protocol, report=report)


def _train_many_program(task: TrainTask, protocol: Protocol, parallel: str,
                        report: bool = False) -> Bound:
  """Jitted trainer of a (lrs x models) grid in one program (one per active policy too).

  ``vmap``: all networks advance together (batched matmuls; convolutions
  become grouped convolutions). ``map``: a ``lax.map`` over the flattened grid
  inside the same program, one network at a time. XLA:CPU runs grouped
  convolutions slower than the same work as separate convolutions (docs/results/speed-evaluation.md,
  "Many networks in one program"), so on CPU ``map`` is the faster of the two; accelerators
  batch well.
  """
  return bound(_train_grid, task=task, protocol=protocol, parallel=parallel, report=report,
               pol=policy.current())


@functools.partial(jax.jit, static_argnames=_TRAIN_STATIC + ("parallel",))
def _train_grid(keys, lrs, images, labels, *, task: TrainTask, protocol: Protocol, parallel: str,
                report: bool, pol: policy.Policy):
  single = functools.partial(_train, task=task, protocol=protocol, report=report)
  with policy.use(pol):
    num_lrs, num_models = lrs.shape[0], keys.shape[0]
    if parallel == "vmap":
      return jax.vmap(jax.vmap(single, in_axes=(0, None, None, None)),
                      in_axes=(None, 0, None, None))(keys, lrs, images, labels)
    flat_keys = keys[jnp.tile(jnp.arange(num_models), num_lrs)]
    flat_lrs = jnp.repeat(lrs, num_models)
    out = jax.lax.map(lambda kl: single(kl[0], kl[1], images, labels), (flat_keys, flat_lrs))
    return jax.tree.map(lambda a: a.reshape((num_lrs, num_models) + a.shape[1:]), out)


def train_synsets(net_keys: jax.Array, images: jax.Array, labels: jax.Array, *,
                  task: TrainTask, protocol: Protocol, parallel: str) -> tuple:
  """``S x M`` networks in ONE program: SynSet ``s``'s ``M`` networks (keys
  ``net_keys[s]``, (S, M)) trained on ``images[s]`` ((S, n, ...), shared ``labels``) at the
  protocol's learning rate; ``parallel`` (``"map"`` or ``"vmap"``) says how the SynSets and
  the networks share the program. Returns ``(params, state, metrics)`` with leading axes
  ``(S, 1, M)``, network ``(s, 0, m)`` being :func:`train_models`'s ``(0, m)`` of SynSet ``s``."""
  num_synsets, num_models = net_keys.shape[:2]
  width = cores.cores_to_use(num_synsets * num_models) if parallel == "map" else 0
  if width:
    lr = jnp.float32(protocol.lr)
    keys, sets = _network_jobs(net_keys, images)
    jobs = [(keys[s * num_models + m], lr, sets[s]) for s in range(num_synsets)
            for m in range(num_models)]
    return _stacked(cores.train_networks(jobs, labels, task=task, protocol=protocol,
                                         report=False, ordinary=_train_single(task, protocol),
                                         width=width), (num_synsets, 1, num_models))
  return _train_synset_grid(net_keys, images, labels, task=task, protocol=protocol,
                            parallel=parallel, pol=policy.current())


@jax.jit
def _network_jobs(net_keys, images=None):
  """Each network's key (``(S, M)`` flattened) and each SynSet's images (none without
  ``images``), in one program."""
  flat = net_keys.reshape(-1)
  sets = [] if images is None else [images[s] for s in range(images.shape[0])]
  return [flat[i] for i in range(flat.shape[0])], sets


@functools.partial(jax.jit, static_argnames=("shape",))
def _stacked(outs: list, shape: tuple):
  """The networks' ``(params, state, metrics)``, stacked with leading axes ``shape`` (one
  program)."""
  return jax.tree.map(lambda *a: jnp.stack(a).reshape(shape + a[0].shape), *outs)


@functools.partial(jax.jit, static_argnames=("task", "protocol", "parallel", "pol"))
def _train_synset_grid(net_keys, images, labels, *, task: TrainTask, protocol: Protocol,
                       parallel: str, pol: policy.Policy):
  lrs = jnp.asarray([protocol.lr], jnp.float32)

  def one(k, im):
    return _train_grid(k, lrs, im, labels, task=task, protocol=protocol, parallel=parallel,
                       report=False, pol=pol)

  with policy.use(pol):
    if parallel == "vmap":
      return jax.vmap(one)(net_keys, images)
    return jax.lax.map(lambda a: one(*a), (net_keys, images))


def predict_block(protocol: Protocol, n: int, parallel: str) -> int:
  """Images per prediction block: the protocol's ``test_batch_size`` (at most ``n``),
  and for one-network-at-a-time prediction (``"map"``) at most the active policy's
  ``predict_block`` (32 on CPU, where small blocks keep
  activations in cache; predictions are per-sample in eval mode, so the block
  never changes them).

  Example:
    >>> predict_block(Protocol("p", epochs=1), 100, "vmap")
    100
  """
  block = min(protocol.test_batch_size, n)
  cap = policy.current().predict_block
  if parallel == "map" and cap is not None:
    block = min(block, cap)
  return block


def _predict_program(task: TrainTask, block: int, parallel: str) -> Bound:
  """Jitted blocked prediction for stacked networks: (M, ...) -> (M, n) classes.

  One program per (task, block, parallel, active policy), traced under that policy.
  """
  return bound(_predict_blocks, task=task, block=block, parallel=parallel, pol=policy.current())


@functools.partial(jax.jit, static_argnames=("task", "block", "parallel", "pol"))
def _predict_blocks(params, state, images, *, task: TrainTask, block: int, parallel: str,
                    pol: policy.Policy):
  def one_model(params, state, blocks):
    def one_block(xb):
      with winograd.convs(pol.forward_conv == "winograd"):  # a gradient-free forward
        return jnp.argmax(task.predict(params, state, xb), -1).astype(jnp.int32)
    return jax.lax.map(one_block, blocks).reshape(-1)  # (blocks * block,)

  with policy.use(pol):
    n = images.shape[0]
    num_blocks = -(-n // block)
    x = jnp.pad(images, ((0, num_blocks * block - n),) + ((0, 0),) * (images.ndim - 1))
    x = x.reshape((num_blocks, block) + images.shape[1:])
    if parallel == "vmap":
      preds = jax.vmap(one_model, in_axes=(0, 0, None))(params, state, x)
    else:
      preds = jax.lax.map(lambda ps: one_model(ps[0], ps[1], x), (params, state))
    return preds[:, :n]


def train_fresh(key: jax.Array, syn: SynSet, *, model: nn.Module, protocol: str | Protocol = "dm",
                lr: float | None = None, progress: bool = False) -> tuple[dict, TrainMetrics]:
  """Trains one freshly initialised ``model`` on ``syn`` under ``protocol``.

  The whole run is a single compiled ``lax.scan`` (see the module docstring
  for the exact schedule). Model ``i`` of :func:`jaxdd.evaluate.evaluate_synset` with key ``k`` is
  ``train_fresh(jax.random.split(k, num_models)[i], ...)``.

  Args:
    key: typed PRNG key (init, per-epoch shuffles, augmentation).
    syn: the training set (any size; also a whole dataset).
    model: a Flax module (e.g. from :func:`jaxdd.models.get`).
    protocol: protocol name or :class:`Protocol`.
    lr: override of ``protocol.lr``.
    progress: report every trained epoch (:mod:`jaxdd.progress`); the numbers are the same.

  Returns:
    ``(variables, metrics)``: flax variables (``{"params": ..., maybe
    "batch_stats": ...}``) usable with ``model.apply(variables, x)``, and
    per-epoch :class:`TrainMetrics` of shape (num_epochs,).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxdd import models
    >>> from jaxdd.structs import SynSet
    >>> syn = SynSet(jnp.zeros((4, 8, 8, 3)), jnp.array([0, 0, 1, 1]))
    >>> v, m = train_fresh(jax.random.key(0), syn,  # doctest: +SKIP
    ...                    model=models.ConvNet(num_classes=2, width=4), protocol="smoke")
    >>> m.loss.shape  # doctest: +SKIP
    (4,)
  """
  checks.check_key(key)
  protocol = get_protocol(protocol)
  images, labels = checks.check_syn(syn, getattr(model, "num_classes", None), "train_fresh")
  protocol = protocol.sized(len(labels))
  lr = protocol.lr if lr is None else lr
  progress = progress and not progress_lib.is_quiet()
  single = _train_single(standard_task(model), protocol, progress)
  if not progress:
    params, state, metrics = single(key, jnp.float32(lr), images, labels)
    return {"params": params, **state}, metrics
  bar = progress_lib.bar(protocol.num_epochs, f"train {model.__class__.__name__} "
                         f"({protocol.name}, {len(labels)} images)", unit="epoch")
  try:
    with progress_lib.reporting(bar):
      params, state, metrics = jax.block_until_ready(single(key, jnp.float32(lr), images,
                                                            labels))
      jax.effects_barrier()
  finally:
    bar.close()
  return {"params": params, **state}, metrics


def _train_many(key, images, labels, *, task, protocol, num_models, lrs, parallel,
                progress: bool = False):
  progress = progress and not progress_lib.is_quiet()
  protocol = protocol.sized(len(labels))
  parallel = resolve_parallel(parallel)
  keys = jax.random.split(key, num_models)
  width = cores.cores_to_use(len(lrs) * num_models) if parallel == "map" else 0
  if width:  # one after another, as many at once as there are cores (jaxdd.train.cores)
    def many(keys, lrs, images, labels):
      keys, _ = _network_jobs(keys)
      # the lrs as host scalars: slicing a device array would compile a program per slice
      jobs = [(keys[m], lr, images) for lr in np.asarray(lrs, np.float32)
              for m in range(num_models)]
      return _stacked(cores.train_networks(jobs, labels, task=task, protocol=protocol,
                                           report=progress,
                                           ordinary=_train_single(task, protocol, progress),
                                           width=width), (len(lrs), num_models))
  else:
    many = _train_many_program(task, protocol, parallel, progress)
  if not progress:
    return many(keys, jnp.asarray(lrs, jnp.float32), images, labels)
  # Every network reports each trained epoch (a host callback in the compiled
  # program); the bar counts network-epochs.
  bar = progress_lib.bar(len(lrs) * num_models * protocol.num_epochs,
                         f"evaluate {task.name} ({protocol.name}, {len(lrs) * num_models} "
                         f"networks x {protocol.num_epochs} epochs)", unit="epoch")
  try:
    with progress_lib.reporting(bar):
      out = many(keys, jnp.asarray(lrs, jnp.float32), images, labels)
      jax.block_until_ready(out)
      jax.effects_barrier()
  finally:
    bar.close()
  return out


def train_models(key: jax.Array, syn: SynSet, *, model: nn.Module,
                 protocol: str | Protocol = "dm", num_models: int = 5,
                 lrs: Sequence[float] | None = None,
                 parallel: str = "auto", progress: bool = False) -> tuple[dict, TrainMetrics]:
  """Trains ``len(lrs) x num_models`` networks in one compiled program.

  Args:
    key: typed PRNG key; model ``i`` uses ``jax.random.split(key,
      num_models)[i]`` (the same keys for every lr, so an lr grid is paired).
    syn: the training set.
    model: a Flax module.
    protocol: protocol name or :class:`Protocol`.
    num_models: networks per lr.
    lrs: learning-rate grid (default ``(protocol.lr,)``).
    parallel: how the networks share the program: ``"vmap"`` (batched, the
      fast choice on GPU/TPU), ``"map"`` (``lax.map``: one after another inside
      the program; faster on CPU, where XLA runs the grouped convolutions of
      a vmapped ConvNet slowly, and lighter on memory; on a CPU under the ``cpu``
      policy, as many at once as there are cores, :mod:`jaxdd.train.cores`) or
      ``"auto"`` (``map`` on CPU, else ``vmap``). Results agree up to float rounding.
    progress: report every trained epoch of every network (a tqdm bar or
      periodic log lines, see :mod:`jaxdd.progress`); the results are
      bit-identical with and without it.

  Returns:
    ``(variables, metrics)`` whose leaves have leading axes ``(len(lrs),
    num_models)``.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxdd import models
    >>> from jaxdd.structs import SynSet
    >>> syn = SynSet(jnp.zeros((4, 8, 8, 3)), jnp.array([0, 0, 1, 1]))
    >>> v, m = train_models(jax.random.key(0), syn, model=models.ConvNet(num_classes=2, width=4),
    ...                     protocol="smoke", num_models=3, lrs=[0.01, 0.1])  # doctest: +SKIP
    >>> m.acc.shape  # doctest: +SKIP
    (2, 3, 4)
  """
  checks.check_key(key)
  protocol = get_protocol(protocol)
  if not isinstance(num_models, int) or num_models < 1:
    raise ValueError(f"num_models must be a positive int, got {num_models!r}")
  images, labels = checks.check_syn(syn, getattr(model, "num_classes", None), "train_models")
  params, state, metrics = _train_many(key, images, labels, task=standard_task(model),
                                       protocol=protocol, num_models=num_models,
                                       lrs=checks.check_lrs(lrs, protocol), parallel=parallel,
                                       progress=progress)
  return {"params": params, **state}, metrics

