"""Progress reporting: evaluation reports every network-epoch without changing a number;
non-terminal output is plain log lines with rate and ETA; --quiet silences it."""
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdd import evaluate, models, progress
from jaxdd import train as train_lib
from jaxdd.metrics import METRICS
from jaxdd.protocols import get_protocol
from jaxdd.structs import Batch, SynSet


class Counter:
  def __init__(self):
    self.n = 0
    self.closed = False

  def update(self, k=1):
    self.n += k

  def set_postfix(self, **kw):
    pass

  def close(self):
    self.closed = True


@pytest.mark.parametrize("parallel", ["map", "vmap"])
def test_evaluation_progress_counts_epochs_and_changes_nothing(monkeypatch, parallel):
  rng = np.random.default_rng(0)
  syn = SynSet(jnp.asarray(rng.normal(size=(6, 8, 8, 3)), jnp.float32), jnp.array([0, 1] * 3))
  test = Batch(jnp.asarray(rng.normal(size=(10, 8, 8, 3)), jnp.float32), jnp.array([0, 1] * 5),
               bias=jnp.array([0, 1, 1, 0, 0] * 2))
  model = models.ConvNet(num_classes=2, width=4, depth=1)
  kw = dict(model=model, protocol="smoke", num_models=3, parallel=parallel)
  plain = evaluate.evaluate_synset(jax.random.key(3), syn, test, **kw)
  bars = []
  monkeypatch.setattr(progress, "bar", lambda total, desc, **k: bars.append((total, Counter()))
                      or bars[-1][1])
  shown = evaluate.evaluate_synset(jax.random.key(3), syn, test, progress=True, **kw)
  epochs = get_protocol("smoke").num_epochs
  (total, counter), = bars
  assert total == 3 * epochs and counter.n == 3 * epochs and counter.closed
  for m in METRICS:
    np.testing.assert_array_equal(getattr(plain, m), getattr(shown, m))
  np.testing.assert_array_equal(plain.train_loss, shown.train_loss)  # bit-identical training
  # the same with an lr grid (lrs x models networks)
  progress.set_quiet(True)
  try:
    quiet = train_lib.train_models(jax.random.key(3), syn, model=model, protocol="smoke",
                                   num_models=2, lrs=[0.01, 0.1], parallel=parallel, progress=True)
  finally:
    progress.set_quiet(False)
  assert len(bars) == 1  # --quiet: no bar at all
  loud = train_lib.train_models(jax.random.key(3), syn, model=model, protocol="smoke",
                                num_models=2, lrs=[0.01, 0.1], parallel=parallel, progress=True)
  assert bars[-1][0] == bars[-1][1].n == 4 * epochs
  np.testing.assert_array_equal(quiet[1].loss, loud[1].loss)


def test_log_bar_lines_have_rate_and_eta(caplog, monkeypatch):
  clock = [100.0]
  monkeypatch.setattr(progress.time, "perf_counter", lambda: clock[0])
  monkeypatch.setattr(progress, "interactive", lambda: False)
  with caplog.at_level(logging.INFO, logger="jaxdd"):
    b = progress.bar(10, "distill", unit="step", initial=2, interval=5)
    assert isinstance(b, progress.LogBar)
    for dt in (20.0, 2.0, 2.0, 2.0):  # the first step compiles (20 s), then 2 s a step
      clock[0] += dt
      b.update(1)
    b.set_postfix(loss="0.5")
    b.close()
  lines = [r.getMessage() for r in caplog.records]
  # The rate counts from the first finished step, so compilation does not enter the ETA:
  # 3 steps in 6 s after it, 0.5 step/s, 4 of 10 left -> ETA 8 s (not 4 steps in 26 s).
  assert lines == ["distill: 3/10 step (30%), elapsed 20s",
                   "distill: 6/10 step (60%), 0.5 step/s, ETA 8s",
                   "distill: 6/10 step (60%), 0.5 step/s, ETA 8s, loss=0.5"]
  assert all("\r" not in line for line in lines)
  # a bar that ends on the line it has just written does not write it twice
  caplog.clear()
  with caplog.at_level(logging.INFO, logger="jaxdd"):
    b = progress.bar(1, "surrogate", unit="epoch", interval=5)
    clock[0] += 30.0
    b.update(1)
    b.close()
  assert [r.getMessage() for r in caplog.records] == ["surrogate: 1/1 epoch (100%), elapsed 30s"]
  # quiet: nothing
  progress.set_quiet(True)
  try:
    assert not isinstance(progress.bar(5, "x"), progress.LogBar)
  finally:
    progress.set_quiet(False)
