"""SelecMix (jaxdd.debias.selecmix): pairs, mixing, the GSC loss and one training step, each
against a hand computation or a naive numpy loop."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdd import models
from jaxdd.debias import (contradicting_partners, evaluate_debiased, generalized_supcon_loss,
                          mix_pairs, selecmix_task, train_selecmix)
from jaxdd.debias.selecmix import ProjectionHead
from jaxdd.protocols import Protocol
from jaxdd.structs import Batch, SynSet
from jaxdd.surrogate import supcon_loss
from jaxdd.train import StepBatch, TrainTask, apply_train, cross_entropy, fit

TINY = models.ConvNet(num_classes=3, depth=1, width=4)


def _unit_rows(key, n, d):
  z = np.asarray(jax.random.normal(key, (n, d)), np.float64)
  return z / np.linalg.norm(z, axis=1, keepdims=True)


def _naive_partners(sim, labels, intra):
  out = []
  for i in range(len(labels)):
    if intra:  # least similar sample of the same label (other labels count as 1)
      values = [sim[i, j] if labels[j] == labels[i] else 1.0 for j in range(len(labels))]
      out.append(int(np.argmin(values)))
    else:  # most similar sample of another label (same labels count as 0)
      values = [sim[i, j] if labels[j] != labels[i] else 0.0 for j in range(len(labels))]
      out.append(int(np.argmax(values)))
  return out


@pytest.mark.parametrize("intra", [True, False])
def test_partners_match_a_naive_loop_and_contradict_the_bias(getkey, intra):
  z = _unit_rows(getkey(), 12, 5)
  sim = (z @ z.T).astype(np.float32)
  labels = np.array([0, 1, 2] * 4)
  got = np.asarray(contradicting_partners(jnp.asarray(sim), jnp.asarray(labels),
                                          jnp.asarray(intra)))
  assert got.tolist() == _naive_partners(sim, labels, intra)
  for i, j in enumerate(got):
    if intra:  # same class, and no sample of the class is less similar
      assert labels[j] == labels[i] and j != i
      assert sim[i, j] <= sim[i, labels == labels[i]].min()
    elif (sim[i, labels != labels[i]] > 0).any():  # another class, the most similar one
      assert labels[j] != labels[i] and sim[i, j] == sim[i, labels != labels[i]].max()


def test_mix_pairs_by_hand():
  x = jnp.arange(3 * 2 * 2 * 1, dtype=jnp.float32).reshape(3, 2, 2, 1)
  y = jnp.array([4, 5, 6])
  mixed, ym = mix_pairs(x, y, jnp.array([2, 2, 0]), jnp.array([0.0, 0.5, 0.25]))
  want = np.stack([np.asarray(x[2]), 0.5 * np.asarray(x[1]) + 0.5 * np.asarray(x[2]),
                   0.25 * np.asarray(x[2]) + 0.75 * np.asarray(x[0])])
  np.testing.assert_allclose(mixed, want, rtol=1e-6)
  assert ym.tolist() == [6, 6, 4]


def _naive_gsc(z, labels, tau, q):
  n, total = len(labels), 0.0
  for i in range(n):
    others = [a for a in range(n) if a != i]
    denominator = sum(np.exp(z[i] @ z[a] / tau) for a in others)
    positives = [p for p in others if labels[p] == labels[i]]
    terms = []
    for p in positives:
      prob = np.exp(z[i] @ z[p] / tau) / denominator
      terms.append(-(q * prob ** q if q else 1.0) * np.log(prob))
    total += np.mean(terms) if terms else 0.0
  return total / n


@pytest.mark.parametrize("q", [0.0, 0.7])
def test_gsc_matches_a_naive_double_loop(getkey, q):
  z = _unit_rows(getkey(), 9, 4)
  labels = np.array([0, 0, 0, 1, 1, 1, 1, 2, 3])  # classes 2 and 3: anchors without a positive
  got = float(generalized_supcon_loss(jnp.asarray(z, jnp.float32), jnp.asarray(labels),
                                      tau=0.2, q=q))
  # float32 logits up to 1/tau = 5 in exp: relative error ~1e-6 per term, 1e-5 is ample
  np.testing.assert_allclose(got, _naive_gsc(z, labels, 0.2, q), rtol=1e-5)


def test_gsc_without_weights_is_supcon_when_every_anchor_has_a_positive(getkey):
  z = jnp.asarray(_unit_rows(getkey(), 8, 3), jnp.float32)
  labels = jnp.array([0, 1, 2, 3] * 2)
  np.testing.assert_allclose(generalized_supcon_loss(z, labels, tau=0.5, q=0.0),
                             supcon_loss(z, labels, temperature=0.5), rtol=1e-5)


def test_gsc_weights_carry_no_gradient(getkey):
  z0 = jnp.asarray(_unit_rows(getkey(), 6, 3), jnp.float32)
  labels = jnp.array([0, 0, 1, 1, 2, 2])
  tau, q, n = 0.2, 0.7, 6
  off = ~np.eye(n, dtype=bool)
  pos = (np.asarray(labels)[:, None] == np.asarray(labels)[None, :]) & off

  def log_p(z):
    s = z @ z.T / tau
    return s - jnp.log(jnp.where(off, jnp.exp(s), 0.0).sum(1, keepdims=True))

  w = q * np.exp(np.asarray(log_p(z0))) ** q  # the weights as constants

  def fixed(z):
    return (-(jnp.where(pos, w * log_p(z), 0.0)).sum(1) / pos.sum(1)).mean()

  got = jax.grad(lambda z: generalized_supcon_loss(z, labels, tau=tau, q=q))(z0)
  np.testing.assert_allclose(got, jax.grad(fixed)(z0), rtol=1e-4, atol=1e-6)


def test_one_step_mixes_the_chosen_pairs_and_trains_two_separate_losses(getkey):
  x = jax.random.normal(getkey(), (6, 8, 8, 3))
  y = jnp.array([0, 0, 1, 1, 2, 2])
  task = selecmix_task(TINY, tau=0.2, q=0.7, lam_max=0.5)
  params, state = task.init(getkey(), x, y)
  key = getkey()
  batch = StepBatch(x, y, jnp.arange(6), key, jnp.int32(0), jnp.float32(0.0))
  total, (_, (_, targets)) = task.loss(params, state, batch)

  # The same step by hand, with the task's documented key layout.
  k_aux, k_mix, k_coin, k_lam, _ = jax.random.split(key, 5)
  (h, _), _ = apply_train(TINY, params["encoder"], state["encoder"], x, k_aux,
                          return_features=True)
  z = ProjectionHead(128).apply({"params": params["head"]}, h)
  sim = np.asarray(z @ z.T)
  intra = bool(jax.random.uniform(k_coin) > 0.5)
  partners = _naive_partners(sim, np.asarray(y), intra)
  lam = 0.5 * np.asarray(jax.random.uniform(k_lam, (6,)))
  xn = np.asarray(x)
  mixed = np.stack([lam[i] * xn[i] + (1 - lam[i]) * xn[j] for i, j in enumerate(partners)])
  y_mixed = np.asarray(y)[partners]
  assert np.asarray(targets).tolist() == y_mixed.tolist()
  logits, _ = apply_train(TINY, params["classifier"], state["classifier"],
                          jnp.asarray(mixed), k_mix)
  ce = cross_entropy(logits, jnp.asarray(y_mixed)).mean()
  gsc = generalized_supcon_loss(z, y, tau=0.2, q=0.7)
  np.testing.assert_allclose(total, ce + gsc, rtol=1e-5)

  # The pairs are chosen without a gradient: the encoder learns from GSC alone, the classifier
  # from the mixed cross-entropy alone.
  grads = jax.grad(lambda p: task.loss(p, state, batch)[0])(params)

  def gsc_of(p):
    (hh, _), _ = apply_train(TINY, p["encoder"], state["encoder"], x, k_aux,
                             return_features=True)
    return generalized_supcon_loss(ProjectionHead(128).apply({"params": p["head"]}, hh), y,
                                   tau=0.2, q=0.7)

  want = jax.grad(gsc_of)(params)
  for part in ("encoder", "head"):
    for g, w in zip(jax.tree.leaves(grads[part]), jax.tree.leaves(want[part])):
      np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-6)


def test_train_selecmix_returns_the_classifier_and_refuses_bad_settings(getkey):
  y = jnp.array([0, 0, 1, 1, 2, 2])
  syn = SynSet(jax.random.normal(getkey(), (6, 8, 8, 3)), y)
  proto = Protocol("tiny-selecmix", epochs=1, batch_size=6, lr=0.05)
  variables, metrics = train_selecmix(getkey(), syn, model=TINY, protocol=proto)
  assert set(variables) == {"classifier", "encoder", "head"}
  assert TINY.apply(variables["classifier"], syn.images).shape == (6, 3)
  assert np.isfinite(metrics.loss).all() and ((0 <= metrics.acc) & (metrics.acc <= 1)).all()
  test = Batch(syn.images, y, bias=jnp.array([0, 1, 2, 0, 1, 2]))
  for bad, match in (({"lam_max": 2.0}, "lam_max"), ({"tau": 0.0}, "tau"),
                     ({"mix_weight": 0.0}, "not both 0"), ({"ema_alpha": 0.5}, "unknown")):
    with pytest.raises(ValueError, match=match):
      evaluate_debiased(getkey(), syn, test, method="selecmix", model=TINY, protocol=proto,
                        **bad)
  with pytest.raises(ValueError, match="integer labels"):
    train_selecmix(getkey(), SynSet(syn.images, jax.nn.one_hot(y, 3)), model=TINY,
                   protocol=proto)


def _shifted_init(key, images, labels):
  return {"w": jnp.zeros(())}, {}


def _shifted_loss(params, state, batch):
  # logits that always predict (label + 1) mod 3, returned with those targets
  targets = (batch.labels + 1) % 3
  return params["w"] ** 2, (state, (10.0 * jax.nn.one_hot(targets, 3), targets))


def _shifted_predict(params, state, images):
  return jnp.zeros((images.shape[0], 3))


def test_train_accuracy_is_measured_against_the_targets_a_task_returns(getkey):
  task = TrainTask("shifted", _shifted_init, _shifted_loss, _shifted_predict)
  x, y = jnp.zeros((6, 4, 4, 1)), jnp.array([0, 1, 2] * 2)
  params, state = task.init(getkey(), x, y)
  *_, metrics = fit(getkey(), params, state, x, y, task=task,
                    protocol=Protocol("p", epochs=1, batch_size=3))
  np.testing.assert_array_equal(metrics.acc, [1.0, 1.0])  # 0 against the batch's own labels
