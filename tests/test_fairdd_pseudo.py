"""Label-free FairDD (``--weighting fairdd_pseudo``): its pseudo-groups and weights never read
the bias labels, and the command line runs it and reports the pseudo-groups in weights.json."""
from __future__ import annotations

import json
import os
import types

import jax
import numpy as np
import pytest

from jaxdd import cli, weighting
from jaxdd.config import get_config
from jaxdd.runs import keys, weights


class _NoBias:
  """A training split whose bias labels must not be read."""

  def __init__(self, labels, aligned):
    self.labels, self.aligned = labels, aligned

  @property
  def bias(self):
    raise AssertionError("the bias labels were read")


def _run_data(train, num_classes):
  return types.SimpleNamespace(train=train, num_classes=num_classes)


def test_pseudo_groups_and_weights_never_read_the_bias_labels():
  rng = np.random.default_rng(0)
  nc, n = 3, 120
  labels = np.repeat(np.arange(nc), n // nc)
  emb = rng.normal(size=(n, 8)).astype(np.float32)
  emb /= np.linalg.norm(emb, axis=1, keepdims=True)
  bias = rng.integers(0, 4, n)
  aligned = bias == labels
  cfg = get_config("smoke", weighting="fairdd_pseudo", fairdd_clusters=3, real_per_class=8)
  key = keys.run_keys(cfg)[3]

  def groups_and_weights(train):
    rd = _run_data(train, nc)
    g = weights.run_groups(cfg, rd, emb)
    return g, weights.run_num_groups(cfg, rd), weights.run_weights(cfg, rd, emb, key, g)

  g, k, (w, ess) = groups_and_weights(_NoBias(labels, aligned))  # no access at all
  assert k == 3 and g.shape == (n,) and g.min() >= 0 and g.max() < 3
  np.testing.assert_array_equal(
      g, weighting.pseudo_groups(keys.pseudo_group_key(cfg), emb, labels, num_classes=nc,
                                 num_clusters=3))
  for other in (np.zeros(n, int), rng.permutation(bias)):
    train = types.SimpleNamespace(labels=labels, aligned=aligned, bias=other)
    g2, _, (w2, ess2) = groups_and_weights(train)
    np.testing.assert_array_equal(g2, g)
    np.testing.assert_array_equal(w2, w)
    np.testing.assert_array_equal(ess2, ess)
    # the report's pseudo-groups too (only its recovery diagnostic reads the bias labels)
    rep = weights.weight_diagnostics(cfg, _run_data(train, nc), emb, key)["pseudo_groups"]
    assert rep["sizes"] == [np.bincount(g[labels == c], minlength=3).tolist() for c in range(nc)]
  # FairDD's weights are those of the pseudo-groups taken as groups
  ref, _ = weighting.fairdd_batch_weights(key, labels, g, cfg.real_per_class, nc)
  np.testing.assert_array_equal(w, ref)


def test_the_pseudo_group_key_moves_no_other_key():
  cfg = get_config("smoke", weighting="fairdd_pseudo")
  sur, init, ev, diag = (jax.random.key_data(k) for k in keys.run_keys(cfg))
  pk = jax.random.key_data(keys.pseudo_group_key(cfg))
  np.testing.assert_array_equal(sur, jax.random.key_data(jax.random.split(jax.random.key(0), 4)[0]))
  assert not any(np.array_equal(pk, k) for k in (sur, init, ev, diag))


def test_cli_flags_set_the_pseudo_group_weighting(tmp_path, capsys):
  # The flags reach the run's configuration (a run with it is distilled, and its weights.json
  # checked, by tests/test_pipeline.py's seeds test).
  work = tmp_path / "run"
  assert cli.main(["distill", "--preset", "smoke", "--weighting", "fairdd_pseudo",
                   "--fairdd-clusters", "4", "--print-config", "--workdir", str(work)]) == 0
  weights_part = json.loads(capsys.readouterr().out)["config"]["weights"]
  assert weights_part["weighting"] == "fairdd_pseudo" and weights_part["fairdd_clusters"] == 4
  assert not os.path.exists(work)


def check_pseudo_group_report(workdir: str, num_clusters: int) -> None:
  """What a fairdd_pseudo run's weights.json reports: its clusters and, labelled as such, how
  well they recover the true groups."""
  with open(os.path.join(workdir, "weights.json")) as f:
    rep = json.load(f)
  assert rep["weighting"]["weighting"] == "fairdd_pseudo"
  assert rep["weighting"]["fairdd_clusters"] == num_clusters
  pg = rep["pseudo_groups"]
  assert pg["num_clusters"] == num_clusters
  counts = [g["n"] for g in rep["groups"]]
  assert [len(s) for s in pg["sizes"]] == [num_clusters] * len(counts)
  assert [sum(s) for s in pg["sizes"]] == counts
  diag = pg["recovery_diagnostic"]
  assert "TRUE bias labels" in diag["note"]
  # a refinement of one group per class is at least as pure as it
  assert diag["majority_baseline"] <= diag["purity"] <= 1.0
  assert 0.0 <= diag["adjusted_purity"] <= 1.0
  assert -1.0 <= diag["adjusted_rand_index"] <= 1.0
  assert 0.0 <= diag["conflicting_in_conflicting_groups"] <= 1.0
  assert all(1.0 <= e <= 8 for e in rep["batch_ess"])  # real_per_class of the smoke preset


@pytest.mark.parametrize("argv,names", [
    (["--weighting", "kde", "--fairdd-clusters", "4"], ["--fairdd-clusters", "fairdd_pseudo"]),
    (["--weighting", "fairdd_pseudo", "--fairdd-clusters", "1"], ["fairdd_clusters", "[2, 64]"]),
    (["--weighting", "fairdd_pseudo", "--method", "dc"], ["distribution matching only"]),
])
def test_cli_refuses_bad_pseudo_group_settings(argv, names, tmp_path, monkeypatch, capsys):
  monkeypatch.chdir(tmp_path)
  try:
    status = cli.main(["distill", "--preset", "smoke", *argv, "--workdir", "w", "--quiet"])
  except SystemExit as e:
    status = e.code
  assert status == 2
  err = capsys.readouterr().err
  assert len(err.splitlines()) == 1 and "Traceback" not in err, err
  for name in names:
    assert name in err, err
  assert os.listdir(tmp_path) == []
