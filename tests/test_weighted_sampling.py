"""Weighted initialisation, importance-sampled real batches and the oracle weighting.

References: naive numpy weights from the log densities, exact counts of a
multinomial draw (a 5-sigma band), and properties that must hold (distinct rows,
zero-weight rows never drawn, group-balanced oracle shares).
"""
from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdd import distill, matching, models, runs, weighting
from jaxdd.config import get_config
from jaxdd.runs.stage_config import kde_config
from jaxdd.weighting import KDEConfig


def _real(log_density, labels, d=4):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(len(labels), d, d, 1)).astype(np.float32)
  return distill.real_data(x, np.asarray(labels), num_classes=int(max(labels)) + 1,
                           log_density=np.asarray(log_density, np.float32))


def _np_weights(log_f, temperature):
  """power normalisation: f^(-1/T) / sum."""
  a = -np.asarray(log_f, np.float64) / temperature
  a = np.exp(a - a.max())
  return a / a.sum()


def test_class_weights_are_the_whole_class_power_weights():
  labels = [0, 0, 0, 1, 1, 0, 1]
  log_f = [-1.0, -2.0, -0.5, -3.0, -1.0, -1.5, -2.0]
  real = _real(log_f, labels)
  cfg = KDEConfig(temperature=0.5)
  w = np.asarray(distill.class_weights(real, cfg))
  idx = np.asarray(real.index.indices)
  lf = np.asarray(log_f)
  for c, rows in enumerate([[0, 1, 2, 5], [3, 4, 6]]):
    np.testing.assert_allclose(w[c, :len(rows)], _np_weights(lf[rows], 0.5), rtol=1e-5)
    assert idx[c, :len(rows)].tolist() == rows
  assert w[1, 3] == 0.0  # padding
  np.testing.assert_allclose(w.sum(1), 1.0, rtol=1e-6)
  with pytest.raises(ValueError, match="log_density="):
    distill.class_weights(real._replace(log_density=None), cfg)


def test_importance_sampling_draws_in_proportion_to_weight():
  # One class of 5 rows; T = 1, f = (0.1, 0.2, 0.3, 0.4, 1.0)^-1 -> w ∝ f^-1 ∝ those.
  p = np.array([0.1, 0.2, 0.3, 0.4, 1.0])
  real = _real(-np.log(p), [0] * 5)
  n = 20000
  rows, mask = distill.sample_weighted(jax.random.key(3), real, n, KDEConfig(temperature=1.0))
  assert rows.shape == (1, n) and bool(mask.all())
  freq = np.bincount(np.asarray(rows).ravel(), minlength=5)
  want = p / p.sum()
  sigma = np.sqrt(n * want * (1 - want))
  assert np.all(np.abs(freq - n * want) < 5 * sigma), (freq, n * want)


def test_weighted_batch_has_uniform_weights_and_unbiased_mean():
  p = np.array([0.5, 0.25, 0.25, 1e-30])
  real = _real(-np.log(p), [0] * 4)
  rows, mask, w = distill.real_batch(jax.random.key(0), real, 4000, KDEConfig(temperature=1.0),
                                     "weighted")
  np.testing.assert_allclose(np.asarray(w), 1 / 4000, rtol=1e-6)
  assert 3 not in np.asarray(rows)  # weight ~1e-30 of the class: never drawn
  with pytest.raises(ValueError, match="real_sampling must be one of"):
    distill.dm(num_classes=1, ipc=1, kde_config=KDEConfig(), real_sampling="bogus")


def test_weighted_init_picks_distinct_rows_by_weight():
  # Class 0: rows 0..5, only rows 1, 3, 4 carry weight; class 1: rows 6..9.
  log_f = [200.0, -1.0, 200.0, -2.0, -1.5, 200.0, -1.0, -1.0, -1.0, -1.0]
  labels = [0] * 6 + [1] * 4
  real = _real(log_f, labels)
  cfg = KDEConfig(temperature=1.0)  # w ∝ 1/f: e^-200 of the others is 0 in float32
  for seed in range(5):
    rows = distill.weighted_init_rows(jax.random.key(seed), real, 3, cfg)
    assert sorted(rows[0].tolist()) == [1, 3, 4]
    assert len(set(rows[1].tolist())) == 3 and set(rows[1].tolist()) <= {6, 7, 8, 9}
  # More rows than carry weight: the zero-weight rows fill up, still distinct.
  rows = distill.weighted_init_rows(jax.random.key(0), real, 4, cfg)
  assert {1, 3, 4} <= set(rows[0].tolist()) and len(set(rows[0].tolist())) == 4


def test_weighted_init_frequencies_follow_the_weights():
  # ipc 1: Gumbel-max draws row i with probability w_i exactly.
  p = np.array([0.6, 0.3, 0.1])
  real = _real(-np.log(p), [0] * 3)
  cfg = KDEConfig(temperature=1.0)
  picks = [int(distill.weighted_init_rows(jax.random.key(s), real, 1, cfg)[0, 0])
           for s in range(600)]
  freq = np.bincount(picks, minlength=3)
  sigma = np.sqrt(600 * p * (1 - p))
  assert np.all(np.abs(freq - 600 * p) < 5 * sigma), freq


def test_dm_with_all_weight_on_one_row_matches_that_row():
  # Per class, one row holds (numerically) all the weight: the importance-sampled batch
  # is that row repeated, so the loss equals plain DM against that single image.
  rng = np.random.default_rng(1)
  x = rng.normal(size=(8, 6, 6, 1)).astype(np.float32)
  labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
  log_f = np.full(8, 50.0, np.float32)
  log_f[[2, 5]] = 0.0
  real = distill.real_data(x, labels, num_classes=2, log_density=log_f)
  model = models.ConvNet(2, depth=1, width=4)
  cfg = KDEConfig(temperature=0.1, scope="class")
  d = distill.dm(num_classes=2, ipc=1, model=model, real_per_class=6, augment=None, lr=0.1,
                 kde_config=cfg, real_sampling="weighted", syn_init="weighted",
                 execution=distill.Execution(jit=False))
  state = d.init(jax.random.key(0), real)
  np.testing.assert_array_equal(np.asarray(state.syn.images), x[[2, 5]])  # init ∝ weight
  only = distill.real_data(x[[2, 5]], np.array([0, 1]), num_classes=2)
  d_ref = distill.dm(num_classes=2, ipc=1, model=model, real_per_class=1, augment=None,
                     lr=0.1, execution=distill.Execution(jit=False))
  # The same step key: the random network is the same draw in both.
  _, m = d.step(state, real)
  _, m_ref = d_ref.step(state, only)
  np.testing.assert_allclose(float(m["loss"]), float(m_ref["loss"]), rtol=1e-5, atol=1e-7)


def test_weighted_options_need_a_weighting():
  with pytest.raises(ValueError, match="pass kde_config="):
    distill.dm(num_classes=2, ipc=1, syn_init="weighted")
  with pytest.raises(ValueError, match="pass kde_config="):
    distill.dsa(num_classes=2, ipc=1, real_sampling="weighted")
  with pytest.raises(ValueError, match="syn_init must be one of"):
    distill.dm(num_classes=2, ipc=1, syn_init="bogus")
  with pytest.raises(ValueError, match="--weighting kde or oracle"):
    get_config("smoke", weighting="none", init="weighted")
  with pytest.raises(ValueError, match="iterations must be >= 0"):
    get_config("smoke", iterations=-1)


def test_defaults_keep_their_digests():
  cfg = get_config("smoke")
  assert "real_sampling" not in cfg._hashed() and "kde_floor" not in cfg._hashed()
  assert "real_sampling" in cfg.replace(real_sampling="weighted", weighting="kde")._hashed()
  floored = cfg.replace(weighting="kde", init="weighted", kde_floor=0.05)
  assert floored._hashed()["kde_floor"] == 0.05
  assert floored.digest() != floored.replace(kde_floor=0.0).digest()


def _np_quantile(values, q):
  """The linear-interpolation quantile written out: position q (n - 1) in the sorted values."""
  v = np.sort(np.asarray(values, np.float64))
  pos = q * (len(v) - 1)
  lo = int(np.floor(pos))
  hi = min(lo + 1, len(v) - 1)
  return v[lo] + (pos - lo) * (v[hi] - v[lo])


def test_density_floor_raises_each_class_to_its_quantile():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 3, size=200)
  log_f = rng.normal(size=200) * 3 - 5
  out = weighting.floor_log_density(log_f, labels, 0.1, num_classes=3)
  for c in range(3):
    rows = labels == c
    floor = _np_quantile(log_f[rows], 0.1)
    np.testing.assert_allclose(out[rows], np.maximum(log_f[rows], floor), rtol=1e-6)
  np.testing.assert_array_equal(weighting.floor_log_density(log_f, labels, 0.0, num_classes=3),
                                log_f.astype(np.float32))
  # The weights: the rarest tenth of each class weigh the same (the largest weight), the
  # rest keep their f^(-1/T) ratios.
  w = _np_weights(out[labels == 0], 0.25)
  lf0 = log_f[labels == 0]
  rare = lf0 <= _np_quantile(lf0, 0.1)
  assert rare.sum() >= 1 and np.allclose(w[rare], w.max(), rtol=1e-5)
  common = ~rare
  i, j = np.flatnonzero(common)[:2]
  np.testing.assert_allclose(w[i] / w[j], np.exp(-(lf0[i] - lf0[j]) / 0.25), rtol=1e-4)
  for bad in (-0.1, 1.0, float("nan"), True):
    with pytest.raises(ValueError, match="density floor"):
      weighting.floor_log_density(log_f, labels, bad, num_classes=3)


def test_class_log_density_takes_the_floor():
  rng = np.random.default_rng(1)
  z = rng.normal(size=(40, 3)).astype(np.float32)
  labels = np.repeat([0, 1], 20)
  plain = weighting.class_log_density(z, labels, num_classes=2, variance=0.5)
  floored = weighting.class_log_density(z, labels, num_classes=2, variance=0.5, floor=0.2)
  np.testing.assert_array_equal(floored, weighting.floor_log_density(plain, labels, 0.2, num_classes=2))
  assert (floored >= plain).all() and (floored > plain).sum() >= 2


def test_density_floor_options_are_checked():
  with pytest.raises(ValueError, match="use it with --weighting kde"):
    get_config("smoke", weighting="oracle", init="weighted", kde_floor=0.05)
  with pytest.raises(ValueError, match="does not use"):
    get_config("smoke", weighting="kde", kde_floor=0.05)
  with pytest.raises(ValueError, match="density floor"):
    get_config("smoke", weighting="kde", init="weighted", kde_floor=1.0)
  assert get_config("smoke", weighting="kde", init="weighted", kde_floor=0.05).kde_floor \
      == 0.05


def test_oracle_log_density_balances_the_groups():
  labels = np.array([0] * 10 + [1] * 4)
  bias = np.array([0] * 7 + [1] * 2 + [2] + [1, 1, 1, 0])
  log_f = weighting.oracle_log_density(labels, bias, num_classes=2)
  np.testing.assert_allclose(np.exp(log_f[:10]), [0.7] * 7 + [0.2] * 2 + [0.1], rtol=1e-6)
  cfg = kde_config(get_config("smoke", weighting="oracle"))
  assert (cfg.temperature, cfg.normalize, cfg.scope) == (1.0, "power", "class")
  real = _real(log_f, labels)
  w = np.asarray(distill.class_weights(real, cfg))
  report = weighting.group_report(np.concatenate([w[0, :10], w[1, :4]]), labels, bias,
                                    num_classes=2)
  for r in report:
    for share in r["shares"].values():
      assert share == pytest.approx(r["balanced_share"], rel=1e-5)


def test_group_report_and_batch_ess_by_hand():
  w = np.array([0.5, 0.25, 0.25, 0.0])
  r = weighting.group_report(w, np.zeros(4, int), np.array([0, 0, 1, 1]), num_classes=1)[0]
  assert r["shares"] == {0: 0.75, 1: 0.25}
  assert r["ess"] == pytest.approx(1 / (0.25 + 0.0625 + 0.0625))
  assert r["counts"] == {0: 2, 1: 2} and r["balanced_share"] == 0.5
  # inside group 0: (0.75)^2 / (0.25 + 0.0625) = 1.8 of 2 images; group 1: one image of 2
  assert r["group_ess"] == {0: pytest.approx(0.9), 1: pytest.approx(0.5)}
  # Batches of the whole class: ESS is the whole class's.
  ess = weighting.batch_ess(jax.random.key(0), w, np.zeros(4, int), batch_size=4,
                              num_classes=1)
  assert ess[0] == pytest.approx(r["ess"])


@pytest.mark.slow
def test_smoke_run_selection_alone_and_diagnostics(tmp_path):
  cfg = get_config("smoke", weighting="oracle", init="weighted",
                   real_sampling="weighted", iterations=0)
  wd = str(tmp_path / "sel")
  syn = runs.distill_stage(cfg, wd, progress=False)
  run_data = runs.RunData(cfg)
  # Not distilled: the SynSet is the weighted draw of real images itself.
  x = run_data.normalized(run_data.train)
  for img in np.asarray(syn.images):
    assert np.any(np.all(np.isclose(x, img[None], atol=1e-6), axis=(1, 2, 3)))
  with open(os.path.join(wd, "weights.json")) as f:
    report = json.load(f)
  assert report["weighting"]["real_sampling"] == "weighted"
  assert report["batch_ess"] == [float(cfg.real_per_class)] * run_data.num_classes
  for g in report["groups"]:
    for share in g["shares"].values():
      assert share == pytest.approx(g["balanced_share"], rel=1e-4)
  assert [r["step"] for r in report["bias_trajectory"]] == [0]
  # FairDD (bias labels) runs end to end and reports its in-batch group balance.
  cfg_f = get_config("smoke", weighting="fairdd")
  runs.distill_stage(cfg_f, str(tmp_path / "f"), progress=False)
  with open(tmp_path / "f" / "weights.json") as f:
    rep_f = json.load(f)
  assert rep_f["weighting"]["weighting"] == "fairdd"
  assert all(1.0 <= e <= cfg_f.real_per_class for e in rep_f["batch_ess"])
  # A distilled run logs the bias score at 0 and every 10 % of the iterations.
  cfg2 = get_config("smoke", weighting="none")
  runs.distill_stage(cfg2, str(tmp_path / "v"), progress=False)
  with open(tmp_path / "v" / "weights.json") as f:
    traj = json.load(f)["bias_trajectory"]
  assert [r["step"] for r in traj] == list(range(cfg2.iterations + 1))
  assert all(0.0 <= r["bias_aligned_fraction"] <= 1.0 for r in traj)
  # The density floor reaches the run's whole-class densities and its weights.json.
  cfg_k = get_config("smoke", weighting="kde", init="weighted", kde_floor=0.5,
                     iterations=0)
  runs.distill_stage(cfg_k, str(tmp_path / "k"), progress=False)
  with open(tmp_path / "k" / "weights.json") as f:
    assert json.load(f)["weighting"]["floor"] == 0.5
  emb = runs.surrogate_embeddings(cfg_k, run_data, runs.run_keys(cfg_k)[0], progress=False)
  plain = runs.run_log_density(cfg_k.replace(kde_floor=0.0), run_data, emb)
  np.testing.assert_array_equal(
      runs.run_log_density(cfg_k, run_data, emb),
      weighting.floor_log_density(plain, run_data.train.labels, 0.5, num_classes=run_data.num_classes))


def test_fairdd_gradient_equals_matching_every_group_mean():
  # FairDD: sum_g ||m_g - s||^2 over the groups present in each class's batch, with an
  # identity embedding so the reference is plain numpy-style jax without any weights.
  rng = np.random.default_rng(5)
  real = jnp.asarray(rng.normal(size=(2, 6, 2, 2, 1)), jnp.float32)
  syn = jnp.asarray(rng.normal(size=(2, 2, 2, 2, 1)), jnp.float32)
  groups = jnp.array([[0, 0, 0, 1, 1, 2], [1, 1, 1, 1, 1, 0]])
  mask = jnp.array([[True] * 6, [True] * 5 + [False]])  # class 1's group 0 is masked out
  flat = lambda x: x.reshape(x.shape[0], -1)

  def fairdd_ref(s):
    total = 0.0
    for c in range(2):
      s_mean = flat(s[c]).mean(0)
      for g in range(3):
        sel = np.asarray((groups[c] == g) & mask[c])
        if sel.any():
          total = total + jnp.sum((flat(real[c])[sel].mean(0) - s_mean) ** 2)
    return total

  w, scale = weighting.group_balanced_weights(groups, mask, 3)
  np.testing.assert_array_equal(np.asarray(scale), [3.0, 1.0])
  ours = lambda s: matching.dm_loss(jax.random.key(0), s, real, embed_fn=flat, weights=w,
                                    class_scale=scale)
  g_ref = jax.grad(fairdd_ref)(syn)
  g = jax.grad(ours)(syn)
  np.testing.assert_allclose(g, g_ref, rtol=1e-5, atol=1e-6 * float(np.abs(g_ref).max()))
  # The value differs only by the spread of the group means, which no synthetic image changes.
  shift = jnp.ones_like(syn)
  np.testing.assert_allclose(float(ours(syn + shift) - ours(syn)),
                             float(fairdd_ref(syn + shift) - fairdd_ref(syn)), rtol=1e-5)


def test_fairdd_options_are_checked():
  with pytest.raises(ValueError, match="replaces the weighting"):
    distill.dm(num_classes=2, ipc=1, kde_config=KDEConfig(), group_matching=3)
  with pytest.raises(ValueError, match="number of bias values"):
    distill.dm(num_classes=2, ipc=1, group_matching=True)
  with pytest.raises(ValueError, match="distribution matching only"):
    get_config("smoke", weighting="fairdd", method="dsa")
  x = np.zeros((4, 4, 4, 1), np.float32)
  real = distill.real_data(x, np.array([0, 0, 1, 1]), num_classes=2)
  d = distill.dm(num_classes=2, ipc=1, model=models.ConvNet(2, depth=1, width=4),
                 real_per_class=2, augment=None, group_matching=2,
                 execution=distill.Execution(jit=False))
  with pytest.raises(ValueError, match="pass groups= to real_data"):
    d.step(d.init(jax.random.key(0), real), real)
