"""The host-side steps of a run compile a few whole programs, not one program per operation.

Called eagerly, every jax.numpy operation on a new shape is a program of its own, and on a
fresh GPU machine each one costs a compilation (tens of milliseconds). The distillers' starts,
the evaluation's bookkeeping and the group scores are therefore compiled as whole programs.
These tests list the programs such a call compiles (JAX's compile log) on shapes no other test
uses, so that each program is compiled here, and refuse any other: a new eager operation on
these paths shows up as a program the list does not have.
"""
from __future__ import annotations

import logging
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdd import distill, evaluate, metrics, models
from jaxdd.structs import Batch, SynSet

NC = 7  # an odd shape: the programs below are compiled in this module, not cached from others


class _Compiled(logging.Handler):
  """The names of the programs JAX compiles while it is attached."""

  def __init__(self):
    super().__init__()
    self.names: list[str] = []

  def emit(self, record):
    m = re.match(r"Compiling jit\((.*?)\) with global shapes", record.getMessage())
    if m:
      self.names.append(m.group(1))


@pytest.fixture
def compiled():
  handler = _Compiled()
  logger = logging.getLogger("jax")
  level = logger.level
  logger.addHandler(handler)
  logger.setLevel(logging.WARNING)
  try:
    with jax.log_compiles(True):
      yield handler.names
  finally:
    logger.removeHandler(handler)
    logger.setLevel(level)


def _data(n_per: int = 5, size: int = 6):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(NC * n_per, size, size, 3)).astype(np.float32)
  y = np.repeat(np.arange(NC), n_per).astype(np.int32)
  return x, y


# jax's own small programs that making or moving an input may compile (placing host data,
# converting a dtype); never one per operation of the paths tested here
_PLUMBING = {"stage", "convert_element_type"}


@pytest.mark.parametrize("syn_init", ["real", "noise"])
def test_a_distillers_start_is_one_program(compiled, syn_init):
  x, y = _data()
  real = distill.real_data(jnp.asarray(x), jnp.asarray(y), num_classes=NC)
  d = distill.dm(num_classes=NC, ipc=2, model=models.ConvNet(num_classes=NC, width=3, depth=1),
                 real_per_class=3, syn_init=syn_init)
  key = jax.random.key(0)
  compiled.clear()
  state = d.init(key, real)
  assert state.syn.images.shape == (NC * 2, 6, 6, 3)
  assert "pure" in compiled and set(compiled) <= {"pure"} | _PLUMBING, compiled


def test_a_cells_start_is_one_program(compiled):
  x, y = _data(size=5)
  emb = np.random.default_rng(1).normal(size=(len(y), 4)).astype(np.float32)
  real = distill.real_data(jnp.asarray(x), jnp.asarray(y), num_classes=NC,
                           embeddings=jnp.asarray(emb))
  cell = distill.dm_cell(num_classes=NC, ipc=2, real_per_class=3,
                         model=models.ConvNet(num_classes=NC, width=3, depth=1),
                         kde_config=distill.KDEConfig(variance=1.0, temperature=0.5))
  runs = distill.cell_runs(cell, num_seeds=1, num_rows=3)
  keys = jnp.stack([jax.random.key(4)] * 3)
  sample_weight = jnp.ones((3, len(y)), jnp.float32)
  compiled.clear()
  state = runs.init(keys, real._replace(sample_weight=sample_weight))
  assert state.syn.images.shape == (3, NC * 2, 5, 5, 3)
  assert "init_runs" in compiled and set(compiled) <= {"init_runs"} | _PLUMBING, compiled


def test_group_scores_are_one_program(compiled):
  _, y = _data(n_per=9)
  preds = np.random.default_rng(2).integers(0, NC, size=(3, len(y))).astype(np.int32)
  batch = Batch(np.zeros((len(y), 1, 1, 1), np.float32), y, bias=(y + 1) % NC)
  compiled.clear()
  got = metrics.metrics_for(preds, batch, NC, NC)
  assert compiled.count("_scored") == 1 and set(compiled) <= {"_scored"} | _PLUMBING, compiled
  # the one program scores as group_accuracies does, network by network
  for i in range(3):
    want = metrics.group_accuracies(jnp.asarray(preds[i]), jnp.asarray(y),
                                    jnp.asarray((y + 1) % NC), NC, NC)
    np.testing.assert_array_equal(np.asarray(got.table[i]), np.asarray(want.table))
    assert float(got.conflicting[i]) == float(want.conflicting)


# The training: one program of every network, or (networks side by side on the cores,
# jaxdd.train.cores) one of their keys and sets, the one-core trainer and one stacking them.
_TRAINING = {"program": {"_train_synset_grid"},
             "cores": {"_network_jobs", "_train_one_core", "_stacked"}}


@pytest.mark.parametrize("map_networks", ["program", "cores"])
def test_the_evaluations_bookkeeping_is_a_few_programs(compiled, monkeypatch, map_networks):
  from jaxdd import policy
  from jaxdd.train import cores
  monkeypatch.setattr(cores, "num_cores", lambda: 2)  # side by side on any machine
  x, y = _data(n_per=4, size=7)
  test = Batch(x, y, bias=(y + 2) % NC)
  model = models.ConvNet(num_classes=NC, width=3, depth=1)
  syns = [SynSet(jnp.asarray(x[i::4][:NC]), jnp.arange(NC, dtype=jnp.int32)) for i in range(2)]
  keys = [jax.random.key(5), jax.random.key(6)]
  compiled.clear()
  with policy.use(policy.variant("cpu", map_networks=map_networks)):
    out = evaluate.evaluate_synsets(keys, syns, test, model=model, protocol="smoke",
                                    num_models=2, valid=test, test_for=[False, True])
  assert [r.num_test for r in out] == [0, len(y)]
  # one program each: the checks, the networks' keys, the SynSets stacked, the training, the
  # networks' layout, the predictions, the networks of the tested SynSet, the scores
  allowed = {"_all_finite", "_min_max", "_network_keys", "stack", "_first_lr_networks",
             "_predict_blocks", "_take_rows", "_scored"} | _TRAINING[map_networks] | _PLUMBING
  assert _TRAINING[map_networks] <= set(compiled) <= allowed, compiled
