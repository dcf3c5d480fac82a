"""Evaluation: train fresh networks on a synthetic set, test them on real data.

Data contract. ``syn`` is a :class:`~jaxdd.structs.SynSet` of NHWC float32
images in the *normalised* space and integer labels (soft labels of shape
``(n, num_classes)`` are accepted by :func:`jaxdd.train.train_fresh` /
:func:`evaluate_synset`); ``test`` and ``valid`` are
:class:`~jaxdd.structs.Batch` es in the same space, whose optional ``bias``
(int, the bias attribute) and ``aligned`` (bool) fields are used only to
*measure* per-group accuracy. Accuracies are fractions in [0, 1];
:meth:`EvalResult.format_table` prints percentages.

The networks are trained under a named, frozen :class:`Protocol` (the
reference's ``evaluate_synset``; :mod:`jaxdd.protocols`) by the one
scan-compiled trainer of jaxdd (:mod:`jaxdd.train`); :func:`evaluate_synset`
runs ``num_models`` networks, and an optional learning-rate grid, in **one**
XLA program, then tests them in compiled blocks and scores them with
:mod:`jaxdd.metrics`; the result is an :class:`EvalResult`
(:mod:`jaxdd.results`).

Model selection never uses the test set: a learning-rate grid requires a
validation batch (carve one from the training data with
:func:`split_validation`), the lr is chosen on it, and only then are the chosen
networks run on the test set.

This module holds the entry points of evaluation: :func:`evaluate_synset`
(the package exports it as ``jaxdd.evaluate_synset``, since ``jaxdd.evaluate``
is this module), :func:`evaluate_task`, :func:`predict` and
:func:`split_validation`. The pieces they are built from live in their own
modules: the protocols in :mod:`jaxdd.protocols`, the trainer in
:mod:`jaxdd.train`, the group accuracies in :mod:`jaxdd.metrics` and the
result in :mod:`jaxdd.results`.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxdd import metrics as metrics_lib
from jaxdd import protocols
from jaxdd import train as train_lib
from jaxdd._src import checks, interrupt
from jaxdd._src import rng as rng_lib
from jaxdd.protocols import Protocol
from jaxdd.results import EvalResult, model_spec
from jaxdd.structs import Batch, SynSet
from jaxdd.train import TrainTask

__all__ = ["evaluate_synset", "evaluate_synsets", "evaluate_task", "predict", "split_validation"]


def predict(task: TrainTask, params, state, images, *, protocol: Protocol,
            parallel: str = "auto") -> jax.Array:
  """Predicted classes of ``M`` stacked networks: (M, n) int32.

  The networks are the leading axis of ``params``/``state`` (as
  :func:`jaxdd.train.train_models` returns them); prediction runs in eval mode,
  in compiled blocks sized by ``protocol`` (:func:`jaxdd.train.predict_block`),
  which never change the result.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxdd import models
    >>> from jaxdd.protocols import get_protocol
    >>> from jaxdd.train import split_variables, standard_task, train_models
    >>> task = standard_task(models.get("convnet-d2-w8", num_classes=3))
    >>> syn = SynSet(jnp.zeros((6, 8, 8, 3)), jnp.arange(6) % 3)
    >>> v, _ = train_models(jax.random.key(0), syn,
    ...                     model=models.get("convnet-d2-w8", num_classes=3),
    ...                     protocol=get_protocol("smoke"), num_models=2)
    >>> params, state = split_variables(jax.tree.map(lambda a: a[0], v))  # the first lr
    >>> predict(task, params, state, jnp.zeros((5, 8, 8, 3)), protocol=get_protocol("smoke")).shape
    (2, 5)
  """
  parallel = train_lib.resolve_parallel(parallel)
  images = jax.numpy.asarray(images)
  block = train_lib.predict_block(protocol, images.shape[0], parallel)
  # one long program on a large split: in a worker thread on the command line, so that
  # Ctrl-C and SIGTERM are not held until it ends (jaxdd._src.interrupt)
  return interrupt.call(train_lib._predict_program(task, block, parallel), params, state,
                        images, ready=True)


def split_validation(key: jax.Array, batch: Batch, *, fraction: float) -> tuple[Batch, Batch]:
  """Carves a class-stratified validation split out of training data.

  Use it for *any* model selection (an lr grid, checkpoints, hyper-parameters)
  so that the unbiased test set is never used to choose anything. Per class,
  ``round(fraction * n_c)`` samples (at least 1, at most ``n_c - 1``) go to the
  validation split; classes with a single sample stay in train. Host-side.

  Args:
    key: typed PRNG key.
    batch: training data (``bias``/``aligned`` are split along).
    fraction: validation fraction in (0, 1).

  Returns:
    ``(train, valid)`` Batches (numpy arrays), rows in random order.

  Example:
    >>> import jax, numpy as np
    >>> b = Batch(np.zeros((10, 4, 4, 3), np.float32), np.arange(10) % 2)
    >>> tr, va = split_validation(jax.random.key(0), b, fraction=0.2)
    >>> len(tr.labels), len(va.labels)
    (8, 2)
  """
  checks.check_key(key)
  if not (isinstance(fraction, (int, float)) and 0 < fraction < 1):
    raise ValueError(f"fraction must be in (0, 1), e.g. 0.1; got {fraction!r}")
  labels = np.asarray(batch.labels)
  if labels.ndim != 1 or len(labels) != len(batch.images):
    raise ValueError(f"batch.labels must be (n,) with n = {len(batch.images)}, got {labels.shape}")
  rng = rng_lib.numpy_rng(key)
  valid_rows = []
  for c in np.unique(labels):
    rows = rng.permutation(np.flatnonzero(labels == c))
    if len(rows) < 2:
      continue
    k = min(max(int(round(fraction * len(rows))), 1), len(rows) - 1)
    valid_rows.append(rows[:k])
  valid_rows = np.concatenate(valid_rows) if valid_rows else np.zeros(0, np.int64)
  if len(valid_rows) == 0:
    raise ValueError("no class has 2 or more samples; nothing can be held out for validation")
  train_mask = np.ones(len(labels), bool)
  train_mask[valid_rows] = False
  train_rows = rng.permutation(np.flatnonzero(train_mask))
  valid_rows = rng.permutation(valid_rows)

  def take(rows):
    return Batch(*(None if f is None else np.asarray(f)[rows] for f in batch))

  return take(train_rows), take(valid_rows)


# The bookkeeping between the compiled trainings, each one program: called eagerly, every
# operation on every parameter's shape would be compiled on its own.

@functools.partial(jax.jit, static_argnames="i")
def _slice_tree(tree, i: int):
  """Entry ``i`` of every leaf's leading axis."""
  return jax.tree.map(lambda a: a[i], tree)


@jax.jit
def _first_lr_networks(tree):
  """(SynSets, lrs, networks, ...) leaves -> (SynSets * networks, ...) of the first lr."""
  return jax.tree.map(lambda a: a[:, 0].reshape((-1,) + a.shape[3:]), tree)


@jax.jit
def _take_rows(tree, rows: jax.Array):
  """Rows ``rows`` of every leaf's leading axis."""
  return jax.tree.map(lambda a: a[rows], tree)


@functools.partial(jax.jit, static_argnames=("num_models", "chosen"))
def _network_keys(keys: list, *, num_models: int, chosen: tuple[int, ...]) -> jax.Array:
  """(SynSets, networks) keys: networks ``chosen`` of each SynSet key's ``num_models``."""
  pick = jnp.asarray(chosen)
  return jnp.stack([jax.random.split(k, num_models)[pick] for k in keys])


def evaluate_task(key: jax.Array, syn: SynSet, test: Batch, *, task: TrainTask, model: nn.Module,
                  protocol: str | Protocol, num_models: int = 5,
                  lrs: Sequence[float] | None = None, valid: Batch | None = None,
                  select_on: str = "overall", num_bias: int | None = None,
                  parallel: str = "auto", hparams: dict | None = None,
                  progress: bool = False) -> EvalResult:
  """:func:`evaluate_synset` for any :class:`TrainTask` (used by :mod:`jaxdd.debias`).

  ``key``, ``syn``, ``test``, ``model``, ``protocol``, ``num_models``, ``lrs``, ``valid``,
  ``select_on``, ``num_bias`` and ``parallel`` are as in :func:`evaluate_synset`.

  Args:
    task: the training method (e.g. :func:`jaxdd.train.standard_task`,
      :func:`jaxdd.debias.lff_task`).
    hparams: the method's hyper-parameters, stamped on the result.
    progress: as :func:`evaluate_synset`.

  Returns:
    An :class:`EvalResult` with ``method = task.name``.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxdd import models
    >>> from jaxdd.train import standard_task
    >>> m = models.ConvNet(num_classes=2, width=4)
    >>> syn = SynSet(jnp.zeros((4, 8, 8, 3)), jnp.array([0, 0, 1, 1]))
    >>> test = Batch(jnp.zeros((2, 8, 8, 3)), jnp.array([0, 1]))
    >>> evaluate_task(jax.random.key(0), syn, test, task=standard_task(m), model=m,
    ...               protocol="smoke", num_models=1).method  # doctest: +SKIP
    'train_fresh'
  """
  checks.check_key(key)
  protocol = _checked_protocol(protocol, num_models, select_on)
  lrs = checks.check_lrs(lrs, protocol)
  if len(lrs) > 1 and valid is None:
    raise ValueError("an lr grid needs valid= (a validation Batch, e.g. from split_validation): "
                     "jaxdd never selects on the test set")
  images, labels = checks.check_syn(syn, getattr(model, "num_classes", None), "evaluate")
  protocol = protocol.sized(len(labels))  # its stamp: the epochs the networks train
  num_classes = checks.infer_num_classes(model, labels)
  test = checks.check_batch("test", test, images, num_classes, "evaluate")
  if valid is not None:
    valid = checks.check_batch("valid", valid, images, num_classes, "evaluate")
    if select_on != "overall" and valid.bias is None and valid.aligned is None:
      raise ValueError(f"select_on={select_on!r} needs valid.bias or valid.aligned")

  parallel = train_lib.resolve_parallel(parallel)
  params, state, metrics = train_lib._train_many(key, images, labels, task=task,
                                                 protocol=protocol, num_models=num_models,
                                                 lrs=lrs, parallel=parallel, progress=progress)
  num_lrs = len(lrs)
  valid_scores = None
  sel = 0
  if valid is not None:
    flat = jax.tree.map(lambda a: a.reshape((num_lrs * num_models,) + a.shape[2:]),
                        (params, state))
    preds = predict(task, *flat, valid.images, protocol=protocol, parallel=parallel)
    scores = getattr(metrics_lib.metrics_for(preds, valid, num_classes, num_bias), select_on)
    valid_scores = np.asarray(scores).reshape(num_lrs, num_models)
    if not np.isfinite(valid_scores).all():
      raise ValueError(f"the validation batch has no samples for select_on={select_on!r}; "
                       "use a validation set that contains them or select_on='overall'")
    # Ties go to the first lr in the given order.
    sel = int(np.argmax(valid_scores.mean(axis=1)))
  # Only the selected networks ever see the test set.
  chosen = _slice_tree((params, state), sel)
  preds = predict(task, *chosen, test.images, protocol=protocol, parallel=parallel)
  acc = jax.device_get(metrics_lib.metrics_for(preds, test, num_classes, num_bias))
  return _result(key, task, model, protocol, num_models, lrs, sel, valid, select_on,
                 valid_scores, acc, jax.device_get(_slice_tree(metrics, sel)), images, test,
                 parallel, hparams)


def _checked_protocol(protocol, num_models, select_on: str) -> Protocol:
  """The protocol, after the checks of the evaluation's counts and criterion."""
  protocol = protocols.get_protocol(protocol)
  if not isinstance(num_models, int) or num_models < 1:
    raise ValueError(f"num_models must be a positive int, got {num_models!r}")
  if select_on not in metrics_lib.METRICS:
    raise ValueError(f"select_on must be one of {metrics_lib.METRICS}, got {select_on!r}")
  return protocol


def _result(key, task, model, protocol, num_models, lrs, sel, valid, select_on, valid_scores,
            acc, metrics, images, test, parallel, hparams) -> EvalResult:
  """The :class:`EvalResult` of one evaluation's chosen networks."""
  return EvalResult(
      protocol=protocol, model_spec=model_spec(model), method=task.name, num_models=num_models,
      key_data=tuple(int(v) for v in np.asarray(jax.random.key_data(key)).ravel()),
      lrs=lrs, selected_lr=lrs[sel], selection="valid" if valid is not None else "none",
      select_on=select_on if valid is not None else None, valid_scores=valid_scores,
      overall=np.asarray(acc.overall), aligned=np.asarray(acc.aligned),
      conflicting=np.asarray(acc.conflicting), worst_group=np.asarray(acc.worst_group),
      group_table=np.asarray(acc.table), group_counts=np.asarray(acc.counts[0]),
      train_loss=np.asarray(metrics.loss), train_acc=np.asarray(metrics.acc),
      num_train=int(images.shape[0]), num_test=int(test.images.shape[0]),
      num_valid=0 if valid is None else int(valid.images.shape[0]), parallel=parallel,
      hparams=dict(hparams or {}))


def evaluate_synsets(keys: Sequence[jax.Array], syns: Sequence[SynSet], test: Batch, *,
                     model: nn.Module, protocol: str | Protocol = "dm", num_models: int = 5,
                     valid: Batch | None = None, select_on: str = "overall",
                     num_bias: int | None = None, parallel: str = "auto",
                     networks: Sequence[int] | None = None,
                     test_for: Sequence[bool] | None = None) -> list[EvalResult]:
  """Evaluates several SynSets of one shape at once: every SynSet's ``num_models`` networks
  train in ONE compiled program, and all of them predict the validation and the test
  split in one program each.

  Result i equals ``evaluate_synset(keys[i], syns[i], test, ...)`` up to float rounding
  (the same networks: model j of SynSet i starts from ``jax.random.split(keys[i],
  num_models)[j]``). The SynSets must share their shape and labels (e.g. the seeds and
  rows of a results-table cell). ``valid`` is scored by every network; nothing is chosen
  on it here (one learning rate: the protocol's), and the test split is scored once.

  Args:
    keys: one typed PRNG key per SynSet.
    syns: the SynSets.
    test, model, protocol, num_models, valid, select_on, num_bias, parallel: as
      :func:`evaluate_synset` (``parallel`` also says how the SynSets share the program:
      ``"map"`` one after another, ``"vmap"`` batched).
    networks: which of the ``num_models`` networks to train (indices; default all): the
      same networks as the whole evaluation's, so an evaluation too long for one sitting
      can be done a network at a time and the scores put together. The results then hold
      ``len(networks)`` networks.
    test_for: which SynSets' networks are scored on ``test`` (default all). The others
      are scored on ``valid`` alone, in the same program, and never see the test split:
      their results' test accuracies are NaN, with ``num_test`` 0 (a candidate that is
      chosen on validation reads the test split later, only if chosen).

  Returns:
    One :class:`EvalResult` per SynSet, with ``valid_scores`` (the ``select_on``
    accuracy of every network on ``valid``) when ``valid`` is given.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxdd import models
    >>> syns = [SynSet(jnp.full((4, 8, 8, 3), v), jnp.array([0, 0, 1, 1])) for v in (0., 1.)]
    >>> test = Batch(jnp.zeros((6, 8, 8, 3)), jnp.array([0, 1, 0, 1, 0, 1]))
    >>> rs = evaluate_synsets([jax.random.key(0), jax.random.key(1)], syns, test,
    ...                       model=models.ConvNet(num_classes=2, width=4), protocol="smoke",
    ...                       num_models=2)  # doctest: +SKIP
    >>> [r.overall.shape for r in rs]  # doctest: +SKIP
    [(2,), (2,)]
  """
  keys, syns = list(keys), list(syns)
  if not syns or len(keys) != len(syns):
    raise ValueError(f"evaluate_synsets needs one key per SynSet, got {len(keys)} keys for "
                     f"{len(syns)} SynSets")
  for key in keys:
    checks.check_key(key)
  protocol = _checked_protocol(protocol, num_models, select_on)
  checked = [checks.check_syn(s, getattr(model, "num_classes", None), "evaluate") for s in syns]
  images, labels = checked[0]
  protocol = protocol.sized(len(labels))  # its stamp: the epochs the networks train
  if any(im.shape != images.shape or not np.array_equal(np.asarray(lb), np.asarray(labels))
         for im, lb in checked[1:]):
    raise ValueError("evaluate_synsets evaluates SynSets of one shape and labels; evaluate "
                     "the others with evaluate_synset")
  num_classes = checks.infer_num_classes(model, labels)
  test = checks.check_batch("test", test, images, num_classes, "evaluate")
  if valid is not None:
    valid = checks.check_batch("valid", valid, images, num_classes, "evaluate")
  parallel = train_lib.resolve_parallel(parallel)
  task = train_lib.standard_task(model)
  lrs = checks.check_lrs(None, protocol)
  chosen = _checked_networks(networks, num_models)
  net_keys = _network_keys(keys, num_models=num_models, chosen=tuple(int(c) for c in chosen))
  num_models = len(chosen)
  params, state, metrics = train_lib.train_synsets(
      net_keys, jnp.stack([im for im, _ in checked]), labels, task=task, protocol=protocol,
      parallel=parallel)
  n = len(syns)
  flat = _first_lr_networks((params, state))

  def scored(batch, which=None):
    """(len(which), M, n) predictions of the networks of SynSets ``which`` (all: None)."""
    which = list(range(n)) if which is None else which
    rows = np.asarray([i * num_models + j for i in which for j in range(num_models)])
    nets = flat if len(which) == n else _take_rows(flat, jnp.asarray(rows))
    preds = np.asarray(predict(task, *nets, batch.images, protocol=protocol, parallel=parallel))
    return preds.reshape((len(which), num_models) + preds.shape[1:])

  tested = _checked_test_for(test_for, n, valid)
  valid_preds = None if valid is None else scored(valid)
  test_preds = dict(zip(tested, scored(test, tested))) if tested else {}
  out, host_metrics = [], jax.device_get(metrics)
  for i, key in enumerate(keys):
    valid_scores = None
    if valid is not None:
      m = metrics_lib.metrics_for(valid_preds[i], valid, num_classes, num_bias)
      valid_scores = np.asarray(getattr(m, select_on)).reshape(1, num_models)
    if i in test_preds:
      acc = jax.device_get(metrics_lib.metrics_for(test_preds[i], test, num_classes, num_bias))
    else:  # never scored on test: NaN accuracies of the test metrics' shapes
      acc = jax.tree.map(lambda a: np.full(np.shape(a), np.nan),
                         jax.device_get(m))._replace(counts=np.zeros_like(np.asarray(m.counts)))
    res = _result(key, task, model, protocol, num_models, lrs, 0, valid, select_on,
                  valid_scores, acc, jax.tree.map(lambda a, i=i: a[i, 0], host_metrics), images,
                  test, parallel, None)
    out.append(res if i in test_preds else dataclasses.replace(res, num_test=0))
  return out


def _checked_test_for(test_for, n: int, valid) -> list[int]:
  """The indices of the SynSets scored on test."""
  if test_for is None:
    return list(range(n))
  flags = [bool(t) for t in test_for]
  if len(flags) != n:
    raise ValueError(f"test_for needs one flag per SynSet ({n}), got {len(flags)}")
  if valid is None and not all(flags):
    raise ValueError("a SynSet not scored on test (test_for False) needs valid=: it would "
                     "be scored on nothing")
  return [i for i, f in enumerate(flags) if f]


def _checked_networks(networks, num_models: int) -> list[int]:
  """The network indices an evaluation trains: all of ``num_models``, or the given ones."""
  if networks is None:
    return list(range(num_models))
  nets = [int(i) for i in networks]
  if (not nets or len(set(nets)) != len(nets)
          or any(not 0 <= i < num_models for i in nets)):
    raise ValueError(f"networks must be distinct indices in [0, {num_models}); got "
                     f"{list(networks)!r}")
  return nets


def evaluate_synset(key: jax.Array, syn: SynSet, test: Batch, *, model: nn.Module,
                    protocol: str | Protocol = "dm", num_models: int = 5,
                    lrs: Sequence[float] | None = None, valid: Batch | None = None,
                    select_on: str = "overall", num_bias: int | None = None,
                    parallel: str = "auto", progress: bool = False) -> EvalResult:
  """Trains ``num_models`` fresh networks on ``syn`` (one program) and tests them.

  Also exported as ``jaxdd.evaluate_synset`` (the same function).

  With an lr grid, every (lr, model) pair trains in the same program; the lr
  with the best mean ``select_on`` accuracy on ``valid`` is chosen and only its
  networks are run on ``test``. The test set is never used to choose anything.

  Args:
    key: typed PRNG key; stamped on the result.
    syn: the synthetic (or any training) set.
    test: real test Batch; ``bias`` / ``aligned`` enable per-group metrics
      (without ``bias`` the groups are the classes; without both, aligned and
      conflicting accuracy are NaN).
    model: any Flax module in :mod:`jaxdd.models` (any classes / channels).
    protocol: protocol name or :class:`Protocol`.
    num_models: networks trained (and reported) per lr.
    lrs: optional learning-rate grid; more than one value requires ``valid``.
    valid: validation Batch (from the training distribution, e.g.
      :func:`split_validation`) for selection.
    select_on: validation metric for selection: ``overall`` (default),
      ``aligned``, ``conflicting`` or ``worst_group``.
    num_bias: number of bias values (default ``max(bias) + 1``).
    parallel: ``"auto"``, ``"vmap"`` or ``"map"``; see :func:`jaxdd.train.train_models`.
    progress: report training progress per network and epoch (tqdm bar or log
      lines; see :func:`jaxdd.train.train_models`). Results are identical either way.

  Returns:
    An :class:`EvalResult` (``.mean()``, ``.std()``, ``.to_dict()``,
    ``.format_table()``).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxdd import models
    >>> syn = SynSet(jnp.zeros((4, 8, 8, 3)), jnp.array([0, 0, 1, 1]))
    >>> test = Batch(jnp.zeros((6, 8, 8, 3)), jnp.array([0, 1, 0, 1, 0, 1]),
    ...              bias=jnp.array([0, 1, 1, 0, 0, 1]))
    >>> r = evaluate_synset(jax.random.key(0), syn, test,
    ...                     model=models.ConvNet(num_classes=2, width=4),
    ...                     protocol="smoke", num_models=2)  # doctest: +SKIP
    >>> r.overall.shape  # doctest: +SKIP
    (2,)
  """
  return evaluate_task(key, syn, test, task=train_lib.standard_task(model), model=model,
                       protocol=protocol, num_models=num_models, lrs=lrs, valid=valid,
                       select_on=select_on, num_bias=num_bias, parallel=parallel,
                       progress=progress)


