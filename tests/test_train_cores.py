"""Networks side by side on the cores (jaxdd.train.cores): when, and the same values as one program.

The reference is the ordinary ``parallel="map"`` program (``map_networks="program"``): a network
trained by the one-core program does the same arithmetic, so its parameters and per-epoch
metrics must be equal bit for bit. The networks here are at least 8 channels wide, where
Eigen never splits a product over its inner dimension (it may for a side thinner than 8;
then the values would agree to float rounding only).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdd import models, policy, protocols
from jaxdd.structs import SynSet
from jaxdd.train import cores, standard_task, train_models, train_synsets

PROGRAM = policy.variant("cpu", map_networks="program")
CORES = policy.variant("cpu", map_networks="cores")


def _syn(seed, ipc=2):
  rng = np.random.default_rng(seed)
  return SynSet(jnp.asarray(rng.normal(size=(10 * ipc, 8, 8, 3)), jnp.float32),
                jnp.repeat(jnp.arange(10), ipc))


def _equal(a, b):
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(la) == len(lb)
  for x, y in zip(la, lb):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture
def two_cores(monkeypatch):
  """Side by side whatever this machine has (the rule itself is tested below)."""
  monkeypatch.setattr(cores, "num_cores", lambda: 2)


@pytest.mark.parametrize("num_models, lrs", [(3, None), (2, [0.01, 0.03])])
def test_train_models_side_by_side_equals_one_program(two_cores, num_models, lrs):
  # 3 networks on 2 cores: a round of 2 side by side and one with the ordinary program;
  # 2 x 2: two rounds, the lr grid in map's order (lr-major).
  model = models.ConvNet(num_classes=10, width=8, depth=1)
  kw = dict(model=model, protocol="smoke", num_models=num_models, lrs=lrs, parallel="map")
  with policy.use(CORES):
    assert cores.cores_to_use(num_models * len(lrs or [0])) == 2
    got = train_models(jax.random.key(3), _syn(0), **kw)
  with policy.use(PROGRAM):
    want = train_models(jax.random.key(3), _syn(0), **kw)
  assert jax.tree.map(jnp.shape, got) == jax.tree.map(jnp.shape, want)
  _equal(got, want)


def test_train_synsets_side_by_side_equals_one_program(two_cores):
  model = models.ConvNet(num_classes=10, width=8, depth=1)
  task = standard_task(model)
  protocol = protocols.get_protocol("smoke").sized(20)
  keys = jax.random.split(jax.random.key(5), 6).reshape(3, 2)
  images = jnp.stack([_syn(s).images for s in range(3)])
  labels = _syn(0).labels
  with policy.use(CORES):
    got = train_synsets(keys, images, labels, task=task, protocol=protocol, parallel="map")
  with policy.use(PROGRAM):
    want = train_synsets(keys, images, labels, task=task, protocol=protocol, parallel="map")
  assert jax.tree.leaves(got)[0].shape[:3] == (3, 1, 2)
  _equal(got, want)


def test_side_by_side_with_progress_counts_every_epoch(two_cores, monkeypatch):
  from jaxdd import progress as progress_lib
  monkeypatch.setattr(progress_lib, "is_quiet", lambda: False)
  seen = []
  real_bar = progress_lib.bar

  def bar(total, desc, **kw):
    b = real_bar(total, desc, disable=True)
    seen.append(b)
    return b

  monkeypatch.setattr(progress_lib, "bar", bar)
  model = models.ConvNet(num_classes=10, width=8, depth=1)
  with policy.use(CORES):
    got = train_models(jax.random.key(1), _syn(1), model=model, protocol="smoke", num_models=2,
                       parallel="map", progress=True)
  with policy.use(PROGRAM):
    want = train_models(jax.random.key(1), _syn(1), model=model, protocol="smoke", num_models=2,
                        parallel="map")
  _equal(got, want)
  epochs = protocols.get_protocol("smoke").sized(20).num_epochs
  assert [b.n for b in seen] == [2 * epochs]


def test_when_networks_go_side_by_side(monkeypatch):
  monkeypatch.setattr(cores, "num_cores", lambda: 4)
  with policy.use(CORES):
    # At least as many networks as cores, on the CPU backend.
    assert [cores.cores_to_use(n) for n in (0, 1, 3, 4, 9)] == [0, 0, 0, 4, 4]
  with policy.use(PROGRAM):
    assert cores.cores_to_use(8) == 0
  monkeypatch.setattr(cores, "num_cores", lambda: 1)
  with policy.use(CORES):
    assert cores.cores_to_use(8) == 0  # one core: nothing to put side by side
  assert policy.resolve("cpu").map_networks == "cores"
  assert policy.resolve("accelerator").map_networks == "program"


def test_vmap_never_goes_side_by_side(two_cores, monkeypatch):
  called = []
  monkeypatch.setattr(cores, "train_networks", lambda *a, **k: called.append(1))
  model = models.ConvNet(num_classes=10, width=8, depth=1)
  with policy.use(CORES):
    train_models(jax.random.key(0), _syn(2), model=model, protocol="smoke", num_models=2,
                 parallel="vmap")
  assert called == []


def test_map_networks_is_a_policy_choice():
  assert policy.variant("cpu", map_networks="program").map_networks == "program"
  with pytest.raises(ValueError, match="map_networks"):
    policy.variant("cpu", map_networks="threads")
  assert policy.resolve("cpu+map_networks=program").map_networks == "program"


def test_a_failing_network_stops_the_networks_not_yet_started(two_cores, monkeypatch):
  import threading
  import time
  started, gate = [], threading.Event()

  class Program:
    def __call__(self, key, lr, images, labels):
      i = int(lr)
      started.append(i)
      if i == 0:
        gate.wait(5)  # network 0 still runs when network 1 fails
        return i
      if i == 1:
        raise RuntimeError("network 1 failed")
      time.sleep(2)  # a network's time: the failure is seen before the next one starts
      return i

  class Lowered:
    def compile(self):
      return Program()

  monkeypatch.setattr(cores._train_one_core, "lower", lambda *a, **k: Lowered(), raising=False)
  jobs = [(None, float(i), None) for i in range(6)]
  with policy.use(CORES), pytest.raises(RuntimeError, match="network 1 failed"):
    try:
      cores.train_networks(jobs, None, task=None, protocol=None, report=False,
                           ordinary=None, width=2)
    finally:
      gate.set()
  # Networks 0 and 1 ran on the two workers; of the other four at most the one a worker took
  # before the failure was seen started, never all.
  assert {0, 1} <= set(started) and len(started) <= 3
