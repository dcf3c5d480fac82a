"""Long phases that report progress: ``jaxdd audit``'s networks, candidate triggers and Neural
Cleanse's optimisation, and ELF's feature model; ``--quiet`` silences all of it, and the
numbers are the same with progress or without."""
from __future__ import annotations

import logging

import jax
import numpy as np
import pytest

from jaxdd import cli, data, progress, synset
from jaxdd.security import audit
from jaxdd.structs import SynSet


def _artifact(path) -> str:
  """A SynSet artifact of 2 real images per class of Colored MNIST (what audit reads)."""
  train = data.load("cmnist", split="train", conflict_ratio=0.05)
  mean, std = data.channel_stats(train.images)
  rows = np.concatenate([np.flatnonzero(np.asarray(train.labels) == c)[:2] for c in range(10)])
  images = np.asarray(data.normalize(train.images[rows], mean, std), np.float32)
  meta = {"dataset": dict(train.meta), "method": "real", "ipc": 2}
  return synset.save(str(path), SynSet(images, np.asarray(train.labels)[rows]), meta,
                     mean=mean, std=std)


@pytest.mark.slow  # two whole audits (networks, 25 triggers, Neural Cleanse): about 30 s
def test_audit_reports_its_phases_and_quiet_silences_them(tmp_path, capsys):
  syn = _artifact(tmp_path / "syn")
  argv = ["audit", syn, "--no-kde", "--model", "convnet-d1-w8", "--protocol", "smoke",
          "--num-models", "1", "--clean-images", "120", "--cleanse-images", "16",
          "--cleanse-steps", "4", "--no-compile-cache"]
  capsys.readouterr()
  assert cli.main(argv) in (0, 3)
  err = capsys.readouterr().err  # not a terminal: log lines, not bars
  for phase in ("audit: training 1 networks", "networks x", "audit: candidate triggers:",
                "audit: Neural Cleanse (10 classes): 4/4 step"):
    assert phase in err, err
  assert cli.main(argv + ["--quiet"]) in (0, 3)
  out = capsys.readouterr()
  assert out.err == "" and "verdict:" in out.out


def test_neural_cleanse_reports_its_steps_with_the_same_result(caplog, monkeypatch):
  # A fixed linear "network" on 4x4 images: the optimisation is what is measured.
  class Linear(audit.nn.Module):
    num_classes: int = 3

    @audit.nn.compact
    def __call__(self, x, *, train=False):
      return x.reshape(len(x), -1) @ jax.random.normal(jax.random.key(1), (48, 3))

  rng = np.random.default_rng(0)
  x = rng.normal(size=(30, 4, 4, 3)).astype(np.float32)
  y = np.repeat(np.arange(3), 10)
  kw = dict(num_classes=3, mean=(0.5,) * 3, std=(0.25,) * 3, steps=3)
  monkeypatch.setenv("JAXDD_LOG_INTERVAL", "0")
  monkeypatch.setattr(progress, "interactive", lambda: False)
  with caplog.at_level(logging.INFO, logger=progress.logger.name):
    quiet = audit.reverse_engineer(jax.random.key(0), Linear(), {}, x, y, **kw)
    assert not caplog.records
    shown = audit.reverse_engineer(jax.random.key(0), Linear(), {}, x, y, progress=True, **kw)
  lines = [r.getMessage() for r in caplog.records]
  assert any("Neural Cleanse (3 classes): 3/3 step" in line for line in lines), lines
  assert len(lines) >= 3  # one line per compiled call (3 steps in calls of 1)
  for a, b in ((quiet.masks, shown.masks), (quiet.patterns, shown.patterns),
               (quiet.asr, shown.asr)):
    np.testing.assert_array_equal(a, b)  # in chunks, the same steps


def test_a_single_network_reports_its_epochs_with_the_same_result(caplog, monkeypatch):
  from jaxdd import models, protocols, train
  rng = np.random.default_rng(0)
  syn = SynSet(rng.normal(size=(8, 8, 8, 3)).astype(np.float32), np.repeat(np.arange(2), 4))
  kw = dict(model=models.ConvNet(num_classes=2, width=4, depth=1), protocol="smoke")
  monkeypatch.setattr(progress, "interactive", lambda: False)
  with caplog.at_level(logging.INFO, logger=progress.logger.name):
    quiet, _ = train.train_fresh(jax.random.key(0), syn, **kw)
    assert not caplog.records
    shown, _ = train.train_fresh(jax.random.key(0), syn, progress=True, **kw)
  epochs = protocols.get_protocol("smoke").num_epochs
  lines = [r.getMessage() for r in caplog.records]
  assert any(line.startswith(f"train ConvNet (smoke, 8 images): {epochs}/{epochs} epoch")
             for line in lines), lines
  jax.tree.map(np.testing.assert_array_equal, quiet, shown)
