"""Curriculum frequency matching: statistics, filters and the loss against numpy; the distiller."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdd import distill, matching, models
from jaxdd.config import get_config
from jaxdd.runs.stage_config import kde_config

HIGHEST = jax.default_matmul_precision("highest")


def _np_stats(f, w=None):
  """Weighted statistics in float64: every position of image b carries w_b / (H W)."""
  f = np.asarray(f, np.float64)
  b = f.shape[0]
  x = f.reshape(b, -1, f.shape[-1])
  w = np.full(b, 1.0 / b) if w is None else np.asarray(w, np.float64)
  pw = np.repeat(w / x.shape[1], x.shape[1])  # per position
  cols = x.reshape(-1, f.shape[-1])
  mu = pw @ cols
  d = cols - mu
  return mu, (d * pw[:, None]).T @ d


def _np_filter(cov, beta, kind):
  return np.linalg.inv(cov + beta * np.eye(len(cov))) if kind == "high" else cov


def _np_layer(real, syn, beta, kind, normalize):
  f_r, f_s = _np_filter(real[1], beta, kind), _np_filter(syn[1], beta, kind)
  a = np.linalg.norm(f_r - f_s)
  b = np.linalg.norm(f_r @ real[0] - f_s @ syn[0])
  if normalize:
    a, b = a / np.linalg.norm(f_r), b / np.linalg.norm(f_r @ real[0])
  return a + b


def test_channel_stats_match_numpy_and_uniform_weights_are_the_plain_statistics():
  rng = np.random.default_rng(0)
  f = rng.normal(size=(5, 3, 4, 6)).astype(np.float32)
  w = rng.uniform(size=5)
  w /= w.sum()
  for weights in (None, w):
    mu, cov = matching.channel_stats(jnp.asarray(f), None if weights is None
                                     else jnp.asarray(weights, jnp.float32))
    mu_ref, cov_ref = _np_stats(f, weights)
    # float32 sums of O(1) values over 60 positions: errors of a few 1e-7 relative
    np.testing.assert_allclose(mu, mu_ref, atol=1e-5)
    np.testing.assert_allclose(cov, cov_ref, atol=1e-5)
  mu_u, cov_u = matching.channel_stats(jnp.asarray(f), jnp.full((5,), 0.2))
  mu_n, cov_n = matching.channel_stats(jnp.asarray(f))
  np.testing.assert_allclose(mu_u, mu_n, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(cov_u, cov_n, rtol=1e-6, atol=1e-7)
  # the plain covariance is numpy's biased covariance over all B*H*W positions
  np.testing.assert_allclose(cov_n, np.cov(f.reshape(-1, 6).T, bias=True), atol=1e-5)


@pytest.mark.parametrize("kind", ["high", "low"])
@pytest.mark.parametrize("normalize", [True, False])
def test_layer_loss_and_filter_match_numpy(kind, normalize):
  rng = np.random.default_rng(1)
  real = _np_stats(rng.normal(size=(8, 2, 2, 4)))
  syn = _np_stats(rng.normal(size=(3, 2, 2, 4)) * 1.5 + 0.3)
  beta = 0.05
  f = matching.frequency_filter(jnp.asarray(real[1], jnp.float32), beta, kind)
  np.testing.assert_allclose(f, _np_filter(real[1], beta, kind),
                             rtol=1e-4 * np.linalg.cond(real[1] + beta * np.eye(4)))
  with HIGHEST:
    got = matching.cfm_layer_loss(tuple(jnp.asarray(a, jnp.float32) for a in real),
                                  tuple(jnp.asarray(a, jnp.float32) for a in syn), beta,
                                  kind=kind, normalize=normalize)
  want = _np_layer(real, syn, beta, kind, normalize)
  # float32 inversion: relative error ~ cond * eps
  cond = np.linalg.cond(real[1] + beta * np.eye(4)) if kind == "high" else 1.0
  np.testing.assert_allclose(float(got), want, rtol=max(1e-5, 20 * cond * 1.2e-7))
  with pytest.raises(ValueError, match="filter"):
    matching.frequency_filter(jnp.eye(2), 0.1, "band")


def test_cfm_loss_sums_classes_and_layers_and_weights_the_real_side():
  rng = np.random.default_rng(2)
  real = rng.normal(size=(2, 6, 3, 3, 2)).astype(np.float32)
  syn = rng.normal(size=(2, 2, 3, 3, 2)).astype(np.float32)
  w = rng.uniform(size=(2, 6))
  w /= w.sum(axis=1, keepdims=True)
  feats = lambda x: [x, jnp.tanh(x)]  # two "layers"
  beta = 0.2
  with HIGHEST:
    got = matching.cfm_loss(jax.random.key(0), jnp.asarray(syn), jnp.asarray(real),
                            features_fn=feats, beta=beta, weights=jnp.asarray(w, jnp.float32))
    uniform = matching.cfm_loss(jax.random.key(0), jnp.asarray(syn), jnp.asarray(real),
                                features_fn=feats, beta=beta,
                                weights=jnp.full((2, 6), 1 / 6, jnp.float32))
    plain = matching.cfm_loss(jax.random.key(0), jnp.asarray(syn), jnp.asarray(real),
                              features_fn=feats, beta=beta)
  want = sum(_np_layer(_np_stats(g(real[c]), w[c]), _np_stats(g(syn[c])), beta, "high", True)
             for c in range(2) for g in (lambda a: a, np.tanh))
  np.testing.assert_allclose(float(got), want, rtol=2e-4)
  np.testing.assert_allclose(float(uniform), float(plain), rtol=1e-5)
  # identical statistics on both sides: zero loss, and a finite gradient there
  same = jnp.asarray(np.concatenate([syn, syn, syn], axis=1))
  zero, grad = jax.value_and_grad(lambda s: matching.cfm_loss(
      jax.random.key(0), s, same, features_fn=feats, beta=beta))(jnp.asarray(syn))
  assert abs(float(zero)) < 1e-4 and np.isfinite(np.asarray(grad)).all()


def test_cfm_loss_weights_the_synthetic_side_and_a_zero_weight_image_gets_no_gradient():
  rng = np.random.default_rng(5)
  real = rng.normal(size=(2, 6, 3, 3, 2)).astype(np.float32)
  syn = rng.normal(size=(2, 3, 3, 3, 2)).astype(np.float32)
  sw = np.array([[0.5, 0.5, 0.0], [0.2, 0.3, 0.5]])
  feats = lambda x: [x, jnp.tanh(x)]
  beta = 0.3

  def loss(s, weights):
    return matching.cfm_loss(jax.random.key(0), s, jnp.asarray(real), features_fn=feats,
                             beta=beta, syn_weights=weights)
  with HIGHEST:
    got, grad = jax.value_and_grad(loss)(jnp.asarray(syn), jnp.asarray(sw, jnp.float32))
    uniform = loss(jnp.asarray(syn), jnp.full((2, 3), 1 / 3, jnp.float32))
    plain = loss(jnp.asarray(syn), None)
  want = sum(_np_layer(_np_stats(g(real[c])), _np_stats(g(syn[c]), sw[c]), beta, "high", True)
             for c in range(2) for g in (lambda a: a, np.tanh))
  np.testing.assert_allclose(float(got), want, rtol=2e-4)
  np.testing.assert_allclose(float(uniform), float(plain), rtol=1e-5)
  # class 0's third image is left out of the statistics: exactly no gradient
  assert float(jnp.abs(grad[0, 2]).max()) == 0.0 and float(jnp.abs(grad[0, :2]).max()) > 0
  with pytest.raises(ValueError, match="syn_weights must be"):
    loss(jnp.asarray(syn), jnp.ones((2, 2), jnp.float32) / 2)


class _WithProjection(nn.Module):
  @nn.compact
  def __call__(self, x):
    h = nn.Conv(4, (3, 3))(x)
    return nn.Conv(2, (1, 1))(h) + nn.Conv(2, (3, 3))(h)


def test_conv_inputs_skip_one_by_one_projections_and_gradients_are_finite():
  x = jnp.asarray(np.random.default_rng(3).normal(size=(2, 5, 5, 3)), jnp.float32)
  m = _WithProjection()
  v = m.init(jax.random.key(0), x)
  shapes = [f.shape for f in matching.conv_inputs(lambda y: m.apply(v, y), x)]
  assert shapes == [(2, 5, 5, 3), (2, 5, 5, 4)]
  net = models.ConvNet(2, depth=2, width=4)
  nv = net.init(jax.random.key(1), x)
  real = jnp.asarray(np.random.default_rng(4).normal(size=(2, 8, 5, 5, 3)), jnp.float32)
  grad = jax.jit(jax.grad(lambda s, beta: matching.cfm_loss(
      jax.random.key(0), s, real,
      features_fn=lambda y: matching.conv_inputs(lambda z: net.apply(nv, z), y), beta=beta)))
  for beta in (1e-4, 0.1):
    g = grad(x.reshape(2, 1, 5, 5, 3), jnp.float32(beta))
    assert np.isfinite(np.asarray(g)).all() and float(jnp.abs(g).max()) > 0


def _toy(num_classes=2, per_class=12, size=8, seed=0):
  rng = np.random.default_rng(seed)
  y = np.repeat(np.arange(num_classes), per_class)
  x = rng.normal(size=(len(y), size, size, 3)).astype(np.float32) + y[:, None, None, None]
  return x, y


def test_cfm_distiller_one_trace_lower_loss_and_shared_program(run_one_trace):
  x, y = _toy()
  real = distill.real_data(x, y, num_classes=2)
  model = models.ConvNet(2, depth=2, width=8)
  variables = model.init(jax.random.key(7), jnp.zeros((1, 8, 8, 3)))
  kw = dict(num_classes=2, ipc=2, iterations=8, model=model, real_per_class=8, lr=0.3,
            schedule="constant", beta=0.1)
  d = distill.cfm(variables=variables, execution=distill.Execution(jit=False), **kw)
  state, losses = run_one_trace(d.step, d.init(jax.random.key(0), real), real, 8)
  assert np.mean(losses[-2:]) < 0.9 * np.mean(losses[:2]), losses
  # lr and beta are hyperparameters in the state (the curriculum's betas: a slow CLI test
  # and cfm_beta's example): one signature, and a trained network's variables too
  a = distill.cfm(**kw)
  b = distill.cfm(**{**kw, "lr": 1.0, "beta": 0.5})
  assert a.step.signature == b.step.signature
  assert float(b.init(jax.random.key(0), real).hparams["beta"]) == 0.5
  assert "variables" in d.init(jax.random.key(0), real).hparams
  # KDE weights: the weighted statistics run and stay finite
  emb = np.random.default_rng(1).normal(size=(len(y), 4)).astype(np.float32)
  kreal = distill.real_data(x, y, num_classes=2, embeddings=emb)
  k = distill.cfm(kde_config=distill.KDEConfig(variance=0.5), **kw)
  ks, km = k.step(k.init(jax.random.key(0), kreal), kreal)
  assert np.isfinite(float(km["loss"])) and float(km["max_weight"]) < 1


def test_cfm_slot_curriculum_moves_one_slot_at_a_time_at_its_beta(run_one_trace):
  # ipc 3 over 6 iterations: slot 0 at steps 0-1, slot 1 at 2-3, slot 2 at 4-5, with momentum;
  # a finished slot never moves again and a later one waits at its initialisation.
  x, y = _toy()
  real = distill.real_data(x, y, num_classes=2)
  model = models.ConvNet(2, depth=2, width=8)
  variables = model.init(jax.random.key(7), jnp.zeros((1, 8, 8, 3)))
  d = distill.cfm(num_classes=2, ipc=3, iterations=6, model=model, real_per_class=8, lr=0.3,
                  momentum=0.9, beta=0.1, curriculum="slots", variables=variables,
                  execution=distill.Execution(jit=False))
  state = d.init(jax.random.key(0), real)
  step = jax.jit(d.step)
  slot_of = np.arange(6) % 3  # images are class-major: image i is slot i % ipc
  history = [np.asarray(state.syn.images)]
  for t in range(6):
    state, m = step(state, real)
    history.append(np.asarray(state.syn.images))
    k = t // 2
    assert int(m["slot"]) == k
    # UniDD's beta_k = beta (1 + cos(pi k / ipc)) / 2, here with the 1e-3 floor
    want = 0.1 * (1e-3 + (1 - 1e-3) * 0.5 * (1 + np.cos(np.pi * k / 3)))
    np.testing.assert_allclose(float(m["beta"]), want, rtol=1e-6)
    moved = np.abs(history[-1] - history[-2]).reshape(6, -1).max(axis=1) > 0
    np.testing.assert_array_equal(moved, slot_of == k)
  # every slot moved in its phase only, so none ends where it started
  assert (np.abs(history[-1] - history[0]).reshape(6, -1).max(axis=1) > 0).all()
  # the jitted distiller traces once over the slots (the slot is a traced value)
  state2, losses = run_one_trace(d.step, d.init(jax.random.key(0), real), real, 6)
  np.testing.assert_allclose(np.asarray(state2.syn.images), history[-1], rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="one iteration per IPC slot"):
    distill.cfm(num_classes=2, ipc=3, iterations=2, curriculum="slots")
  with pytest.raises(ValueError, match="curriculum"):
    distill.cfm(num_classes=2, ipc=3, iterations=6, curriculum="epochs")


def test_cfm_refuses_bad_arguments():
  kw = dict(num_classes=2, ipc=2, iterations=4)
  for bad, match in ((dict(beta=0.0), "beta"), (dict(schedule="step"), "schedule"),
                     (dict(filter="band"), "filter"), (dict(real_per_class=1), "real_per_class"),
                     (dict(iterations=0), "iterations"),
                     (dict(beta_floor=0.0), "beta_floor"),
                     (dict(syn_init="weighted"), "kde_config")):
    with pytest.raises(ValueError, match=match):
      distill.cfm(**{**kw, **bad})


def test_cfm_fields_change_only_cfm_digests_and_bad_values_are_refused():
  from jaxdd import runs
  dm = get_config("smoke")
  assert dm.replace(cfm_beta=0.5, cfm_filter="low").digest() == dm.digest()
  cfm = get_config("smoke", method="cfm")
  assert cfm.replace(cfm_beta=0.5).digest() != cfm.digest()
  # the default curriculum leaves earlier runs' digests as they were; slots is another run
  assert "cfm_curriculum" not in cfm._hashed()
  assert cfm.replace(cfm_curriculum="slots").digest() != cfm.digest()
  slots = runs.make_distiller(cfm.replace(cfm_curriculum="slots"), 10, kde_config(cfm))
  assert isinstance(slots, distill.Distiller)
  d = runs.make_distiller(cfm, 10, kde_config(cfm))
  assert isinstance(d, distill.Distiller)
  for bad, match in ((dict(cfm_beta=0.0), "cfm_beta"), (dict(cfm_filter="band"), "cfm_filter"),
                     (dict(cfm_schedule="step"), "cfm_schedule"),
                     (dict(cfm_normalize="yes"), "cfm_normalize"),
                     (dict(cfm_curriculum="epochs"), "cfm_curriculum"),
                     (dict(cfm_curriculum="slots", ipc=5, iterations=3), "per slot"),
                     (dict(real_per_class=1, kde_scope="class"), "real_per_class")):
    with pytest.raises(ValueError, match=match):
      cfm.replace(**bad)


@pytest.mark.slow
def test_cfm_run_from_the_cli(tmp_path):
  import json
  import os

  from jaxdd import cli
  work = str(tmp_path / "cfm")
  assert cli.main(["distill", "--preset", "smoke", "--method", "cfm", "--weighting", "none",
                   "--workdir", work, "--quiet"]) == 0
  rows = [json.loads(line) for line in open(os.path.join(work, "metrics.jsonl"))]
  betas = [r["beta"] for r in rows if "beta" in r]
  assert len(betas) == 4 and betas == sorted(betas, reverse=True) and betas[-1] > 0
  assert json.load(open(os.path.join(work, "eval.json")))["method"] == "cfm"


def test_cfm_slot_curriculum_from_the_cli_and_its_refusal(tmp_path, capsys):
  import json

  from jaxdd import cli
  assert cli.main(["distill", "--preset", "smoke", "--method", "cfm", "--cfm-curriculum",
                   "slots", "--print-config"]) == 0
  assert json.loads(capsys.readouterr().out)["config"]["cfm"]["cfm_curriculum"] == "slots"
  work = tmp_path / "never"
  assert cli.main(["distill", "--preset", "smoke", "--method", "cfm", "--cfm-curriculum",
                   "slots", "--iterations", "1", "--workdir", str(work), "--quiet"]) != 0
  assert "at least one iteration per slot" in capsys.readouterr().err
  assert not work.exists()  # refused before anything is written
