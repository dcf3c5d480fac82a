"""Weights from a bias-amplified classifier (``--weighting gce``, ``jtt``, ``--kde-features
biased``): the weight functions against naive numpy references, the GCE loss against its
formula, the biased network's determinism and its ranking of a synthetic bias, the cache, the
run glue (never reading the bias labels) and the config's refusals."""
from __future__ import annotations

import json
import os
import types
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdd import debias, runs, weighting
from jaxdd.config import RunConfig, get_config, parts
from jaxdd.config.run import BIASED_FIELDS
from jaxdd.debias import biased, biased_cache
from jaxdd.runs import biased_stage, keys, weights


def _np_difficulty(log_p, labels, num_classes, floor):
  """w_i = (1 - floor) d_i / sum_class d + floor / N_c, uniform for an all-zero class."""
  d = np.maximum(-np.asarray(log_p, np.float64), 0.0)
  w = np.zeros(len(d))
  for c in range(num_classes):
    sel = labels == c
    if not sel.any():
      continue
    total = d[sel].sum()
    share = d[sel] / total if total > 0 else np.full(sel.sum(), 1.0 / sel.sum())
    w[sel] = (1 - floor) * share + floor / sel.sum()
  return w


def _np_jtt(pred, labels, num_classes, up):
  w = np.zeros(len(labels))
  for c in range(num_classes):
    sel = np.flatnonzero(labels == c)
    if not sel.size:
      continue
    err = pred[sel] != c
    if up is not None:
      raw = np.where(err, up, 1.0)
      w[sel] = raw / raw.sum()
    elif err.all() or not err.any():
      w[sel] = 1.0 / sel.size
    else:
      w[sel] = np.where(err, 0.5 / err.sum(), 0.5 / (~err).sum())
  return w


def _np_auroc(score, positive):
  """P(random positive scores above random negative), ties 1/2, by all pairs."""
  pos, neg = score[positive], score[~positive]
  return float(((pos[:, None] > neg[None]) + 0.5 * (pos[:, None] == neg[None])).mean())


def _sample(seed=0, n=60, num_classes=4):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, num_classes - 1, n)  # the last class is empty
  log_p = np.log(rng.uniform(1e-4, 1.0, n)).astype(np.float32)
  log_p[labels == 0] = 0.0  # class 0: every difficulty 0 (uniform weights)
  pred = np.where(rng.random(n) < 0.3, (labels + 1) % num_classes, labels)
  pred[labels == 1] = 1  # class 1: no error (uniform weights)
  return labels, log_p, pred


# Float32 weights against float64 references: relative errors near 1e-6.
_TOL = dict(rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("floor", [0.1, 0.5, 1.0])
def test_difficulty_weights_equal_the_naive_reference(floor):
  labels, log_p, _ = _sample()
  w = np.asarray(weighting.difficulty_weights(log_p, labels, num_classes=4, floor=floor))
  ref = _np_difficulty(log_p, labels, 4, floor)
  np.testing.assert_allclose(w, ref, **_TOL)
  for c in range(3):  # each class sums to 1, no image below the floor
    sel = labels == c
    assert abs(w[sel].sum() - 1.0) < 1e-5
    assert w[sel].min() >= floor / sel.sum() * (1 - 1e-6)
  np.testing.assert_allclose(w[labels == 0], 1.0 / (labels == 0).sum(), rtol=1e-6)
  # the order of the difficulties is kept inside a class
  sel = labels == 2
  assert np.all(np.diff(w[sel][np.argsort(-log_p[sel])]) >= -1e-9)


@pytest.mark.parametrize("up", [None, 1.0, 6.0])
def test_error_set_weights_equal_the_naive_reference(up):
  labels, _, pred = _sample(1)
  w = np.asarray(weighting.error_set_weights(pred, labels, num_classes=4, up=up))
  np.testing.assert_allclose(w, _np_jtt(pred, labels, 4, up), **_TOL)
  np.testing.assert_allclose(w[labels == 1], 1.0 / (labels == 1).sum(), rtol=1e-6)  # no error
  for c in range(3):
    assert abs(w[labels == c].sum() - 1.0) < 1e-5
  err = (pred != labels) & (labels == 2)
  if up is None:  # the balance: errors and the rest of the class weigh half each
    assert abs(w[err].sum() - 0.5) < 1e-6
  else:
    assert np.allclose(w[err] / w[(labels == 2) & ~err][0], up)


def test_jtt_all_errors_keeps_uniform_weights():
  labels = np.array([0, 0, 0, 1, 1])
  pred = np.array([1, 1, 1, 0, 1])
  w = np.asarray(weighting.error_set_weights(pred, labels, num_classes=2))
  np.testing.assert_allclose(w, [1 / 3, 1 / 3, 1 / 3, 0.5, 0.5], rtol=1e-6)


def test_jit_and_vmap_give_the_eager_weights():
  labels, log_p, pred = _sample(2)
  many_p = np.stack([log_p, log_p * 2.0, log_p[::-1]])
  many_pred = np.stack([pred, labels, np.roll(pred, 3)])
  dw = jax.jit(weighting.difficulty_weights, static_argnames="num_classes")
  ew = jax.jit(weighting.error_set_weights, static_argnames=("num_classes", "up"))
  eager = [weighting.difficulty_weights(p, labels, num_classes=4, floor=0.2) for p in many_p]
  np.testing.assert_allclose(dw(log_p, labels, num_classes=4, floor=0.2), eager[0], rtol=1e-6)
  batched = jax.vmap(lambda p: weighting.difficulty_weights(p, labels, num_classes=4,
                                                            floor=0.2))(many_p)
  np.testing.assert_allclose(batched, np.stack(eager), rtol=1e-6)
  floors = jnp.array([0.1, 0.3, 1.0])  # the floor traced and batched too
  by_floor = jax.vmap(lambda f: weighting.difficulty_weights(log_p, labels, num_classes=4,
                                                             floor=f))(floors)
  np.testing.assert_allclose(by_floor, np.stack([_np_difficulty(log_p, labels, 4, float(f))
                                                 for f in floors]), **_TOL)
  for up in (None, 3.0):
    eager = np.stack([weighting.error_set_weights(p, labels, num_classes=4, up=up)
                      for p in many_pred])
    np.testing.assert_allclose(ew(pred, labels, num_classes=4, up=up), eager[0], rtol=1e-6)
    np.testing.assert_allclose(jax.vmap(lambda p, up=up: weighting.error_set_weights(
        p, labels, num_classes=4, up=up))(many_pred), eager, rtol=1e-6)
  ups = jnp.array([1.0, 2.0, 8.0])
  by_up = jax.vmap(lambda u: weighting.error_set_weights(pred, labels, num_classes=4, up=u))(ups)
  np.testing.assert_allclose(by_up, np.stack([_np_jtt(pred, labels, 4, float(u)) for u in ups]),
                             **_TOL)


def test_gce_loss_is_its_formula_and_tends_to_the_cross_entropy():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(7, 5)).astype(np.float32) * 3
  labels = rng.integers(0, 5, 7)
  p = np.exp(logits - logits.max(1, keepdims=True))
  p = (p / p.sum(1, keepdims=True))[np.arange(7), labels].astype(np.float64)
  ce = -np.log(p)
  for q in (0.3, 0.7, 1.0):
    np.testing.assert_allclose(debias.gce_loss(logits, labels, q), (1 - p ** q) / q, rtol=1e-5)
  np.testing.assert_allclose(debias.gce_loss(logits, labels, 0.0), ce, rtol=1e-6)
  np.testing.assert_allclose(debias.gce_loss(logits, labels, 1e-6), ce, rtol=1e-4)
  # LfF's implementation has q times its gradient (Zhang & Sabuncu's, p^q times CE's)
  for q in (0.3, 0.7):
    g_lff = jax.grad(lambda z: debias.generalized_cross_entropy(z, labels, q).sum())(logits)
    g_gce = jax.grad(lambda z: debias.gce_loss(z, labels, q).sum())(logits)
    np.testing.assert_allclose(g_lff, q * g_gce, rtol=1e-4, atol=1e-6)


def _biased_set(seed=0, n=320, conflict=0.05):
  """2 classes of 8x8x3 images: a strong colour (channel 0 or 1 raised) that equals the class
  for 95 %, and a weak shape (left or right half slightly brighter) that always does."""
  rng = np.random.default_rng(seed)
  labels = np.repeat([0, 1], n // 2)
  conflicting = np.zeros(n, bool)
  for c in (0, 1):
    idx = np.flatnonzero(labels == c)
    conflicting[rng.choice(idx, int(round(conflict * idx.size)), replace=False)] = True
  colour = np.where(conflicting, 1 - labels, labels)
  x = rng.normal(0.3, 0.15, (n, 8, 8, 3)).astype(np.float32)
  x[np.arange(n), :, :, colour] += 0.6
  half = np.where(labels[:, None] == 0, np.arange(8)[None] < 4, np.arange(8)[None] >= 4)
  x += 0.1 * half[:, None, :, None]
  return x, labels, conflicting


_SMALL = biased.BiasedConfig(steps=20, batch_size=32, width=8, depth=2, lr=0.05)


def test_the_biased_network_is_deterministic_and_ranks_the_conflicting_samples_first():
  x, y, conflicting = _biased_set()
  v1, h1 = debias.train_biased(jax.random.key(3), x, y, num_classes=2, config=_SMALL)
  v2, _ = debias.train_biased(jax.random.key(3), x, y, num_classes=2, config=_SMALL)
  v3, _ = debias.train_biased(jax.random.key(4), x, y, num_classes=2, config=_SMALL)
  outs = [debias.biased_outputs(v, x, y, num_classes=2, config=_SMALL) for v in (v1, v2, v3)]
  for a, b in zip(outs[0], outs[1]):
    np.testing.assert_array_equal(a, b)
  assert not np.array_equal(outs[0].log_p_label, outs[2].log_p_label)
  assert h1["steps"] == 20 and h1["images_trained"] == 320  # two epochs of 10 steps
  o = outs[0]
  assert o.log_p_label.shape == (320,) and o.features.shape[0] == 320
  assert np.all(o.log_p_label <= 0)
  for out in outs:  # every key learns the colour: the conflicting images are the hard ones
    assert _np_auroc(-out.log_p_label, conflicting) > 0.9
  err = o.pred != y  # what errors there are after 20 steps are conflicting images
  assert err.any() and conflicting[err].mean() > 0.5


def test_plan_trains_exactly_the_step_budget_or_whole_epochs():
  cfg = biased.BiasedConfig(steps=10, batch_size=32)
  assert cfg.plan(1000) == (320, 1) and cfg.plan(320) == (320, 1)
  assert cfg.plan(100) == (100, 3)  # round(320 / 100) epochs of 3 steps
  assert biased.BiasedConfig(steps=1, batch_size=64).plan(50) == (50, 1)  # at least one


def test_the_cache_returns_the_trained_outputs_and_retrains_a_damaged_entry(tmp_path):
  x, y, _ = _biased_set(n=64)
  cfg = biased.BiasedConfig(steps=2, batch_size=16, width=4, depth=1)
  kw = dict(num_classes=2, config=cfg, cache_dir=str(tmp_path), progress=False)
  a = biased_cache.load_or_train_biased(jax.random.key(0), {"name": "toy"}, x, y, **kw)
  b = biased_cache.load_or_train_biased(jax.random.key(0), {"name": "toy"}, x, y, **kw)
  assert (a.from_cache, b.from_cache) == (False, True) and a.path == b.path
  for u, v in zip(a.outputs, b.outputs):
    np.testing.assert_array_equal(u, v)
  assert sorted(os.listdir(a.path)) == ["meta.json", "outputs.npz", "params.npz"]
  other = biased_cache.load_or_train_biased(jax.random.key(1), {"name": "toy"}, x, y, **kw)
  assert other.path != a.path and not other.from_cache
  with open(os.path.join(a.path, "outputs.npz"), "r+b") as f:  # damage it
    f.seek(100)
    f.write(b"\0\1\2\3")
  with pytest.warns(RuntimeWarning, match="discarding invalid"):
    c = biased_cache.load_or_train_biased(jax.random.key(0), {"name": "toy"}, x, y, **kw)
  assert not c.from_cache
  np.testing.assert_array_equal(c.outputs.pred, a.outputs.pred)


class _NoBias:
  """A training split whose bias labels must not be read."""

  def __init__(self, images, labels):
    self.images, self.labels, self.meta = images, labels, {"name": "toy"}

  @property
  def bias(self):
    raise AssertionError("the bias labels were read")


def test_run_weights_never_read_the_bias_labels_and_are_the_functions_of_the_cached_outputs():
  x, y, _ = _biased_set(n=96)
  rd = types.SimpleNamespace(train=_NoBias(x, y), num_classes=2)
  small = dict(biased_steps=3, biased_batch=16, biased_width=4)
  for kw, fn in ((dict(weighting="gce", gce_floor=0.2), "gce"),
                 (dict(weighting="jtt"), "jtt"), (dict(weighting="jtt", jtt_up=4.0), "jtt")):
    cfg = get_config("smoke", **small, **kw)
    w = biased_stage.difficulty_weights(cfg, rd)
    out = biased_stage.biased_artifact(cfg, rd, progress=False).outputs
    ref = (_np_difficulty(out.log_p_label, y, 2, 0.2) if fn == "gce"
           else _np_jtt(out.pred, y, 2, cfg.jtt_up))
    np.testing.assert_allclose(w, ref, **_TOL)
    # the run's whole-class weights (what the step applies) give the same weights back
    log_f = weights.run_log_density(cfg, rd, None)
    np.testing.assert_allclose(weights.whole_class_weights(cfg, y, log_f, 2), ref, rtol=1e-5)
  cfg = get_config("smoke", weighting="kde", kde_features="biased", **small)
  emb = biased_stage.weighting_embeddings(cfg, rd, keys.run_keys(cfg)[0], progress=False)
  assert emb.shape[0] == 96
  np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)


def test_the_biased_key_moves_no_other_key():
  cfg = get_config("smoke", weighting="gce")
  bk = jax.random.key_data(keys.biased_key(cfg))
  others = [jax.random.key_data(k) for k in (*keys.run_keys(cfg), keys.pseudo_group_key(cfg),
                                             keys.expert_key(cfg))]
  assert not any(np.array_equal(bk, k) for k in others)
  np.testing.assert_array_equal(bk, jax.random.key_data(
      jax.random.fold_in(jax.random.split(jax.random.key(0), 4)[0], 2)))


@pytest.mark.parametrize("kw, match", [
    (dict(weighting="kde", gce_floor=0.2), "--gce-floor shapes --weighting gce"),
    (dict(weighting="gce", gce_floor=0.0), "gce_floor must be a number in"),
    (dict(weighting="gce", gce_floor=1.5), "gce_floor must be a number in"),
    (dict(weighting="jtt", jtt_up=0.5), "jtt_up"),
    (dict(weighting="gce", jtt_up=2.0), "--jtt-up up-weights"),
    (dict(weighting="gce", kde_features="biased"), "--kde-features chooses"),
    (dict(weighting="kde", kde_features="other"), "kde_features must be one of"),
    (dict(weighting="kde", biased_steps=10), "--biased-steps sets the bias-amplified"),
    (dict(weighting="none", biased_q=0.5), "--biased-q sets the bias-amplified"),
    (dict(weighting="gce", biased_steps=0), "biased_steps must be a positive int"),
    (dict(weighting="gce", biased_batch=1), "biased_batch must be >= 2"),
    (dict(weighting="gce", biased_q=1.5), "biased_q must be a number in"),
    (dict(weighting="gce", biased_lr=0.0), "biased_lr must be a positive number"),
    (dict(weighting="gce", biased_norm="x"), "biased_norm must be one of"),
    (dict(weighting="gce", biased_width=2.5), "biased_width must be"),
])
def test_config_refusals(kw, match):
  with pytest.raises(ValueError, match=match):
    get_config("smoke", **kw)


def test_defaults_leave_every_existing_digest_and_read_nothing_new():
  for preset in ("smoke", "cpu", "paper"):
    for w in ("none", "kde", "oracle"):
      cfg = get_config(preset, weighting=w)
      hashed = cfg._hashed()
      assert not {"kde_features", "gce_floor", "jtt_up", *BIASED_FIELDS} & set(hashed)
      assert cfg.digest() == cfg.replace(kde_features="surrogate").digest()
      assert not weights.needs_biased(cfg)
  gce = get_config("smoke", weighting="gce")
  assert set(BIASED_FIELDS) | {"gce_floor"} <= set(gce._hashed())
  assert gce.digest() != gce.replace(biased_steps=100).digest()
  assert RunConfig.from_dict(gce.to_dict()) == gce


def test_the_literal_settings_equal_the_librarys():
  assert parts.GCE_FLOOR == weighting.DIFFICULTY_FLOOR
  assert parts.BIASED_NORMS == biased.NORMS
  stage, lib = parts.BiasedStage(), biased.BiasedConfig()
  assert (stage.biased_steps, stage.biased_batch, stage.biased_width, stage.biased_norm,
          stage.biased_q, stage.biased_lr) == (lib.steps, lib.batch_size, lib.width, lib.norm,
                                               lib.q, lib.lr)


@pytest.mark.slow
@pytest.mark.parametrize("kw", [dict(weighting="gce"), dict(weighting="jtt", jtt_up=6.0),
                                dict(weighting="kde", kde_features="biased", kde_scope="class")])
def test_a_smoke_run_distils_with_the_biased_weightings(tmp_path, kw):
  cfg = get_config("smoke", iterations=2, biased_steps=10, **kw)
  summary = runs.run(cfg, str(tmp_path / "run"), progress=False, show=False)
  assert 0.0 <= summary["mean"]["overall"] <= 1.0
  with open(tmp_path / "run" / "weights.json") as f:
    report = json.load(f)
  net = report["biased_network"]
  assert net["config"]["steps"] == 10 and net["from_cache"]  # trained once, then read
  assert 0.5 < net["recovery_diagnostic"]["difficulty_auroc"] <= 1.0
  assert report["weighting"]["kde_features"] == cfg.kde_features
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # the stored entry is valid: no retraining
    again = biased_stage.biased_artifact(cfg, runs.RunData(cfg), progress=False)
  assert again.from_cache and again.path == net["cache_entry"]
