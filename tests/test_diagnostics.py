"""Tests for jaxdd.weighting's diagnostics and scopes: AUROC, weight report, histogram,
class/batch-scope KDE weights."""
from __future__ import annotations

import os

import jax
import numpy as np
import pytest

from jaxdd import plots
from jaxdd import weighting as D
from jaxdd.cli import build_parser
from jaxdd.runs import diagnose as diagnose_run


def auroc_pairs(scores, positive):
  """Naive O(n^2) pair counting: P(pos > neg) + 1/2 P(pos == neg)."""
  pos = [s for s, p in zip(scores, positive) if p]
  neg = [s for s, p in zip(scores, positive) if not p]
  total = 0.0
  for a in pos:
    for b in neg:
      total += 1.0 if a > b else 0.5 if a == b else 0.0
  return total / (len(pos) * len(neg))


def kde_weights_reference(z, labels, variance, temperature, normalize):
  """Naive float64 per-class KDE (self included) and normalised inverse density."""
  z = np.asarray(z, np.float64)
  w = np.zeros(len(labels))
  for c in np.unique(labels):
    idx = np.flatnonzero(labels == c)
    zc = z[idx]
    d2 = ((zc[:, None, :] - zc[None, :, :]) ** 2).sum(-1)
    f = np.exp(-d2 / (2 * variance)).mean(1)
    a = (1 / f) / temperature if normalize == "softmax" else -np.log(f) / temperature
    e = np.exp(a - a.max())
    w[idx] = e / e.sum()
  return w


# ---------------------------------------------------------------------------
# AUROC and report
# ---------------------------------------------------------------------------


def test_auroc_hand_constants():
  # Conflicting (positive) weights 3, 2 vs aligned 1, 2: pairs (3,1)=1, (3,2)=1,
  # (2,1)=1, (2,2)=1/2 -> 3.5 / 4 = 0.875.
  assert D.auroc([3.0, 2.0, 1.0, 2.0], [True, True, False, False]) == 0.875
  assert D.auroc([1.0, 2.0, 3.0], [False, False, True]) == 1.0
  assert D.auroc([1.0, 2.0, 3.0], [True, False, False]) == 0.0
  assert D.auroc([5.0, 5.0, 5.0], [True, False, False]) == 0.5  # all ties
  assert D.auroc([1.0, 2.0], [True, True]) is None  # no negatives: undefined


def test_auroc_matches_pair_counting():
  rng = np.random.default_rng(0)
  for n in (7, 30, 101):
    # Rounded scores create many ties.
    scores = np.round(rng.normal(size=n), 1)
    positive = rng.random(n) < 0.3
    positive[0], positive[1] = True, False
    assert D.auroc(scores, positive) == pytest.approx(auroc_pairs(scores, positive), abs=1e-12)


def test_weight_report_hand_constants():
  # Class 0: aligned weights 1, 1, conflicting 4 -> mean ratio 4, fraction
  # before 1/3, after 4/6; AUROC 1. Class 1: aligned 2, 2, no conflicting.
  w = [1.0, 1.0, 4.0, 2.0, 2.0]
  labels = [0, 0, 0, 1, 1]
  aligned = np.array([True, True, False, True, True])
  r = D.weight_report(w, labels, aligned, num_classes=3)
  c0, c1, c2 = r["per_class"]
  assert c0["class"] == 0 and c0["n"] == 3 and c0["n_conflicting"] == 1
  assert c0["mean_weight_conflicting"] == 4.0 and c0["mean_weight_aligned"] == 1.0
  assert c0["weight_ratio"] == 4.0 and c0["auroc"] == 1.0
  assert c0["conflicting_fraction_uniform"] == pytest.approx(1 / 3)
  assert c0["conflicting_fraction_weighted"] == pytest.approx(4 / 6)
  assert c1["mean_weight_conflicting"] is None and c1["auroc"] is None
  assert c1["conflicting_fraction_weighted"] == 0.0
  assert c2["n"] == 0 and c2["conflicting_fraction_uniform"] is None
  o = r["overall"]
  # Overall: conflicting 4 vs aligned mean (1+1+2+2)/4 = 1.5; fraction 4/10;
  # pairs: 4 beats all 4 aligned -> AUROC 1.
  assert o["mean_weight_aligned"] == 1.5 and o["weight_ratio"] == pytest.approx(4 / 1.5)
  assert o["conflicting_fraction_uniform"] == pytest.approx(0.2)
  assert o["conflicting_fraction_weighted"] == pytest.approx(0.4)
  assert o["auroc"] == 1.0


def test_weight_report_bad_input():
  with pytest.raises(ValueError, match="same length"):
    D.weight_report([1.0, 2.0], [0], np.array([True, False]), num_classes=1)
  with pytest.raises(ValueError, match="boolean"):
    D.weight_report([1.0, 2.0], [0, 0], np.array([1, 0]), num_classes=1)
  with pytest.raises(ValueError, match="NaN"):
    D.weight_report([np.nan, 2.0], [0, 0], np.array([True, False]), num_classes=1)
  with pytest.raises(ValueError, match=r"\[0, 1\)"):
    D.weight_report([1.0, 2.0], [0, 1], np.array([True, False]), num_classes=1)


def test_plot_weight_histogram_writes_png(tmp_path):
  rng = np.random.default_rng(0)
  w = np.concatenate([rng.uniform(1e-4, 1e-3, 90), rng.uniform(1e-2, 1e-1, 10), [0.0]])
  aligned = np.arange(101) < 90
  path = tmp_path / "sub" / "w.png"
  import matplotlib
  backend = matplotlib.get_backend()
  fig = plots.plot_weight_histogram(w, aligned, path, title="test")
  assert matplotlib.get_backend() == backend  # the global backend is left alone
  ax, = fig.axes
  assert ax.get_title() == "test" and ax.get_xscale() == "log"
  # the legend carries each group's size and mean (the zero weight is counted, not drawn)
  labels = [t.get_text() for t in ax.get_legend().get_texts()]
  assert labels[0].startswith(f"aligned (n=90, mean={w[:90].mean():.3g}")
  assert labels[1] == f"conflicting (n=11, mean={w[90:].mean():.3g}, 1 zeros)"
  assert plots.plot_weight_histogram(w, aligned).axes  # no path: nothing written
  with open(path, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  assert sorted(os.listdir(path.parent)) == ["w.png"]  # no temp file left behind
  with pytest.raises(ValueError, match="finite"):
    plots.plot_weight_histogram(-w, aligned, tmp_path / "x.png")


# ---------------------------------------------------------------------------
# Class and batch scope
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("normalize,temperature", [("power", 1.0), ("power", 0.5), ("softmax", 2.0)])
def test_class_scope_matches_numpy(normalize, temperature):
  rng = np.random.default_rng(1)
  z = rng.normal(size=(30, 5)).astype(np.float32)
  z /= np.linalg.norm(z, axis=1, keepdims=True)
  labels = np.repeat([0, 1, 2], [12, 10, 8])
  w = D.class_scope_weights(z, labels, variance=0.5, temperature=temperature, normalize=normalize,
                            num_classes=3)
  ref = kde_weights_reference(z, labels, 0.5, temperature, normalize)
  np.testing.assert_allclose(w, ref, rtol=2e-4, atol=1e-7)
  np.testing.assert_allclose(np.bincount(labels, weights=w), 1.0, rtol=1e-5)


def test_batch_plan_covers_every_sample_with_uniform_batches():
  labels = np.repeat([0, 1, 2], [10, 3, 8])
  idx, mask = D.batch_plan(jax.random.key(0), labels, batch_size=4, num_classes=3, num_rounds=2)
  # Per round: class 0 -> 3 batches, class 1 -> 1 (padded), class 2 -> 2.
  assert idx.shape == (12, 4) and mask.sum() == 2 * (3 * 4 + 3 + 2 * 4)
  for row, m in zip(idx, mask):
    members = row[m]
    assert len(set(labels[members])) == 1  # one class per batch
    assert len(set(members.tolist())) == len(members)  # no repeats inside a batch
  counts = np.bincount(idx[mask], minlength=len(labels))
  assert counts.min() >= 2  # every sample in at least one batch per round
  again, _ = D.batch_plan(jax.random.key(0), labels, batch_size=4, num_classes=3, num_rounds=2)
  np.testing.assert_array_equal(idx, again)


def test_batch_scope_equals_class_scope_when_batches_hold_the_class():
  rng = np.random.default_rng(2)
  z = rng.normal(size=(20, 4)).astype(np.float32)
  labels = np.repeat([0, 1], 10)
  for normalize in ("power", "softmax"):
    wc = D.class_scope_weights(z, labels, variance=1.0, normalize=normalize, num_classes=2)
    wb = D.batch_scope_weights(jax.random.key(0), z, labels, batch_size=16, variance=1.0,
                               normalize=normalize, num_classes=2, num_rounds=2)
    np.testing.assert_allclose(wb, wc, rtol=1e-4, atol=1e-7)


def test_batch_scope_matches_numpy_average_over_the_plan():
  rng = np.random.default_rng(3)
  z = rng.normal(size=(26, 3)).astype(np.float32)
  labels = np.repeat([0, 1], [15, 11])
  key = jax.random.key(5)
  w = D.batch_scope_weights(key, z, labels, batch_size=4, variance=0.3, temperature=0.7,
                            normalize="power", num_classes=2, num_rounds=3)
  idx, mask = D.batch_plan(key, labels, batch_size=4, num_classes=2, num_rounds=3)
  sums, counts = np.zeros(26), np.zeros(26)
  for row, m in zip(idx, mask):
    members = row[m]
    bw = kde_weights_reference(z[members], np.zeros(len(members), int), 0.3, 0.7, "power")
    sums[members] += bw
    counts[members] += 1
  avg = sums / counts
  ref = avg / np.bincount(labels, weights=avg)[labels]
  np.testing.assert_allclose(w, ref, rtol=2e-4, atol=1e-7)


def test_per_sample_mean_hand_constants():
  # Two batches of class 0 (rows 0-2), one of class 1 (rows 3-4); row 2 is never drawn.
  index = np.array([[0, 1], [0, 1], [3, 4]])
  mask = np.array([[True, True], [True, True], [True, False]])
  w_b = np.array([[0.25, 0.75], [0.75, 0.25], [1.0, 9.0]])  # the masked 9.0 must not count
  w = D.per_sample_mean(w_b, index, mask, np.array([0, 0, 0, 1, 1]), 2)
  # class 0: rows 0 and 1 average 0.5 each, row 2 gets 0; class 1: row 3 alone.
  np.testing.assert_allclose(w, [0.5, 0.5, 0.0, 1.0, 0.0])


def test_isolated_conflicting_points_get_more_weight():
  # Per class: a tight aligned cluster plus a few far-away "conflicting" points;
  # both scopes must rank the conflicting points on top (AUROC 1).
  rng = np.random.default_rng(4)
  z, labels, aligned = [], [], []
  for c in range(2):
    centre = np.eye(8)[c]
    z.append(centre + 0.05 * rng.normal(size=(40, 8)))
    z.append(rng.normal(size=(4, 8)))
    labels += [c] * 44
    aligned += [True] * 40 + [False] * 4
  z = np.concatenate(z).astype(np.float32)
  z /= np.linalg.norm(z, axis=1, keepdims=True)
  labels, aligned = np.array(labels), np.array(aligned)
  for w in (D.class_scope_weights(z, labels, variance=0.1, num_classes=2, normalize="power"),
            D.batch_scope_weights(jax.random.key(0), z, labels, batch_size=16, variance=0.1,
                                  normalize="power", num_classes=2)):
    r = D.weight_report(w, labels, aligned, num_classes=2)["overall"]
    assert r["auroc"] == 1.0
    assert r["conflicting_fraction_weighted"] > 2 * r["conflicting_fraction_uniform"]


def test_scope_bad_input():
  z = np.ones((4, 2), np.float32)
  with pytest.raises(ValueError, match="NaN"):
    D.class_scope_weights(np.full((4, 2), np.nan), [0, 0, 1, 1], variance=0.1, num_classes=2)
  with pytest.raises(ValueError, match="labels must have shape"):
    D.batch_scope_weights(jax.random.key(0), z, [0, 1], variance=0.1, num_classes=2)
  with pytest.raises(ValueError, match="variance"):
    D.batch_scope_weights(jax.random.key(0), z, [0, 0, 1, 1], variance=0.0, num_classes=2)
  with pytest.raises(ValueError, match="batch_size"):
    D.batch_scope_weights(jax.random.key(0), z, [0, 0, 1, 1], batch_size=1, variance=0.1,
                          num_classes=2)


# ---------------------------------------------------------------------------
# jaxdd diagnose (jaxdd.runs.diagnose) on the embedded (offline) CMNIST
# ---------------------------------------------------------------------------


@pytest.mark.slow
def test_diagnose_cli_on_embedded_cmnist(tmp_path):
  import json

  argv = ["diagnose", "--dataset", "cmnist", "--conflict-ratio", "0.05", "--preset", "smoke",
          "--epochs", "1", "--no-sweep", "--num-rounds", "2", "--quiet", "--workdir",
          str(tmp_path / "diag")]
  report = diagnose_run.diagnose_report(build_parser().parse_args(argv))
  with open(tmp_path / "diag" / "report.json") as f:
    on_disk = json.load(f)
  o = on_disk["default"]["report"]["overall"]
  assert on_disk["surrogate"]["from_cache"] is False
  assert o["n"] == 3600 and o["n_conflicting"] == 180  # 5 % of 360 digits x 10 classes
  assert o["conflicting_fraction_uniform"] == 0.05
  # The surrogate embedding separates colour-conflicting digits: conflicting
  # samples outweigh aligned ones (measured AUROC ~0.98; ~0.86 even untrained).
  assert o["auroc"] > 0.8 and o["weight_ratio"] > 1.0
  assert o == report["default"]["report"]["overall"]
  for name in ("weights_default.png", "weights_class_scope.png"):
    with open(tmp_path / "diag" / name, "rb") as f:
      assert f.read(4) == b"\x89PNG"
  # A second run reuses the cached surrogate and reproduces the numbers.
  again = diagnose_run.diagnose_report(build_parser().parse_args(argv))
  assert again["surrogate"]["from_cache"] is True
  assert again["default"]["report"]["overall"] == pytest.approx(o)


def test_scope_weights_dispatches_on_scope_and_the_sweep_covers_the_grid():
  rng = np.random.default_rng(1)
  z = rng.normal(size=(40, 3)).astype(np.float32)
  y = np.repeat([0, 1], 20)
  aligned = np.arange(40) % 10 != 0
  key = jax.random.key(3)
  cfg = D.KDEConfig(0.5, 1.0, "softmax", "batch")
  np.testing.assert_array_equal(
      D.scope_weights(key, z, y, cfg, num_classes=2, batch_size=8, num_rounds=2),
      D.batch_scope_weights(key, z, y, batch_size=8, variance=0.5, temperature=1.0,
                                      normalize="softmax", num_classes=2, num_rounds=2))
  np.testing.assert_array_equal(
      D.scope_weights(key, z, y, cfg.replace(scope="class"), num_classes=2),
      D.class_scope_weights(z, y, variance=0.5, temperature=1.0, normalize="softmax",
                                      num_classes=2))
  rows = D.weight_sweep(key, z, y, aligned, num_classes=2, variances=(0.1, 1.0),
                                  temperatures=(0.5,), batch_size=8, num_rounds=1)
  assert len(rows) == 2 * 2 * 2 * 1
  assert {(r["scope"], r["normalize"], r["variance"]) for r in rows} == {
      (s, n, v) for s in ("batch", "class") for n in ("power", "softmax") for v in (0.1, 1.0)}
  assert all(r["report"]["overall"]["n"] == 40 for r in rows)
