"""Tests for jaxdd.baselines (coresets) and jaxdd.debias (LfF, DFA; SelecMix's own parts in
test_selecmix.py)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdd import models
from jaxdd.baselines import full_dataset, herding, k_center, random_subset, take
from jaxdd.debias import (evaluate_debiased, generalized_cross_entropy, relative_difficulty,
                          train_lff, update_ema)
from jaxdd.evaluate import evaluate_synset
from jaxdd.protocols import Protocol
from jaxdd.results import EvalResult
from jaxdd.structs import Batch, SynSet

TINY = models.ConvNet(num_classes=3, depth=1, width=4)
PROTO = Protocol("tiny-debias", epochs=3, batch_size=6, lr=0.05)
COLOURS = np.array([[1.0, -1.0, -1.0], [-1.0, 1.0, -1.0], [-1.0, -1.0, 1.0]], np.float32)


def coloured(labels, colour_of, key, size=8):
  noise = 0.05 * np.asarray(jax.random.normal(key, (len(labels), size, size, 3)))
  return jnp.asarray(COLOURS[colour_of][:, None, None, :] + noise, jnp.float32)


# ----------------------------------------------------------------- coresets

def test_random_subset_takes_ipc_rows_from_the_right_class(getkey):
  labels = np.array([2, 0, 1, 0, 2, 1, 0, 2, 1, 0, 2, 1])
  images = np.arange(12, dtype=np.float32).reshape(12, 1, 1, 1)  # image value = row
  key = getkey()
  syn = random_subset(key, images, labels, ipc=3)
  rows = np.asarray(syn.images)[:, 0, 0, 0].astype(int)
  np.testing.assert_array_equal(np.asarray(syn.labels), np.repeat([0, 1, 2], 3))
  np.testing.assert_array_equal(labels[rows], np.repeat([0, 1, 2], 3))
  assert len(set(rows)) == 9
  again = random_subset(key, images, labels, ipc=3)
  np.testing.assert_array_equal(np.asarray(again.images), np.asarray(syn.images))
  other = random_subset(getkey(), images, labels, ipc=3)
  assert not np.array_equal(np.asarray(other.images), np.asarray(syn.images))


def naive_herding(e, ipc):
  mu = e.mean(0)
  chosen = []
  for k in range(1, ipc + 1):
    best, best_d = None, np.inf
    for i in range(len(e)):
      if i in chosen:
        continue
      d = np.linalg.norm(mu - (e[chosen].sum(0) + e[i]) / k)
      if d < best_d:
        best, best_d = i, d
    chosen.append(best)
  return chosen


def test_herding_first_pick_nearest_mean_and_greedy_order():
  rng = np.random.default_rng(0)
  emb = rng.normal(size=(30, 4))
  labels = np.repeat([0, 1], 15)
  idx = herding(emb, labels, ipc=5)
  assert idx.shape == (10,)
  for c in range(2):
    rows = np.flatnonzero(labels == c)
    e = emb[rows]
    assert idx[5 * c] == rows[np.argmin(np.linalg.norm(e - e.mean(0), axis=1))]
    np.testing.assert_array_equal(idx[5 * c:5 * c + 5], rows[naive_herding(e, 5)])
  # Hand example, mean 2.2: first 2 (row 3); then 3 (mean 2.5, off by 0.3);
  # then 1 (mean of {2, 3, 1} = 2.0, off by 0.2).
  np.testing.assert_array_equal(herding(np.array([[0.], [1.], [5.], [2.], [3.]]),
                                        np.zeros(5, int), ipc=3), [3, 4, 1])


def test_k_center_picks_farthest_points():
  # 1-D class: mean 4.2 -> nearest is 4 (row 2); farthest from it: 15 (row 4);
  # then the point farthest from {4, 15}: -6 (row 0).
  emb = np.array([[-6.0], [3.0], [4.0], [5.0], [15.0]])
  np.testing.assert_array_equal(k_center(emb, np.zeros(5, int), ipc=3), [2, 4, 0])
  # 2-D: centre (0, 0) first; then the farthest corner (1.2, 1.1) (1.63 away);
  # then the point whose nearest selected point is farthest: (-1, -1.2) (1.56
  # from the centre, vs sqrt(2) for the other two corners).
  emb2 = np.array([[0, 0], [1.2, 1.1], [-1, 1], [1, -1], [-1, -1.2], [0.1, 0]])
  np.testing.assert_array_equal(k_center(emb2, np.zeros(6, int), ipc=3), [0, 1, 4])


def test_ipc_larger_than_a_class_names_the_class(getkey):
  labels = np.array([0, 0, 0, 1, 2, 2, 2])
  emb = np.zeros((7, 2))
  images = np.zeros((7, 2, 2, 3), np.float32)
  for fn in (lambda: herding(emb, labels, ipc=2), lambda: k_center(emb, labels, ipc=2),
             lambda: random_subset(getkey(), images, labels, ipc=2)):
    with pytest.raises(ValueError, match="class 1 has only 1 samples but ipc=2"):
      fn()


def test_full_dataset_trains_with_many_steps_per_epoch(getkey):
  # 40 images with batch 6: six full batches and a partial one of 4 per epoch.
  labels = np.arange(40) % 3
  images = coloured(labels, labels, getkey())
  syn = full_dataset(images, labels)
  assert np.all(np.diff(np.asarray(syn.labels)) >= 0) and syn.images.shape[0] == 40
  np.testing.assert_array_equal(np.bincount(np.asarray(syn.labels)), np.bincount(labels))
  r = evaluate_synset(getkey(), syn, Batch(images, jnp.asarray(labels)), model=TINY, protocol=PROTO,
                      num_models=1)
  assert r.mean("overall") == 1.0 and r.num_train == 40
  sub = take(images, labels, herding(np.asarray(images).reshape(40, -1), labels, ipc=2))
  assert sub.images.shape == (6, 8, 8, 3)


# ------------------------------------------------------------------- debias

def test_gce_value_and_gradient_match_the_formula():
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(5, 4)).astype(np.float32)
  labels = np.array([0, 3, 1, 1, 2])
  q = 0.7
  p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
  p_y = p[np.arange(5), labels]
  np.testing.assert_allclose(generalized_cross_entropy(logits, labels, q),
                             -np.log(p_y) * q * p_y ** q, rtol=1e-5)
  # LfF's implementation has q times the gradient of (1 - p_y^q) / q, i.e.
  # d/dz (1 - p_y^q) = q p_y^q (softmax - onehot).
  grad = jax.grad(lambda z: generalized_cross_entropy(z, labels, q).sum())(logits)
  onehot = np.eye(4)[labels]
  np.testing.assert_allclose(grad, q * p_y[:, None] ** q * (p - onehot), rtol=1e-4, atol=1e-6)


def test_lff_ema_and_relative_difficulty_by_hand():
  labels = jnp.array([0, 0, 1, 1])
  ema, seen = jnp.zeros(4), jnp.zeros(4)
  # First update stores the losses; the second mixes with alpha = 0.7.
  ema, seen = update_ema(ema, seen, jnp.array([0, 2]), jnp.array([2.0, 1.0]), 0.7)
  np.testing.assert_allclose(ema, [2.0, 0.0, 1.0, 0.0])
  ema, seen = update_ema(ema, seen, jnp.array([0, 1]), jnp.array([1.0, 4.0]), 0.7)
  np.testing.assert_allclose(ema, [0.7 * 2 + 0.3 * 1, 4.0, 1.0, 0.0], rtol=1e-6)
  np.testing.assert_array_equal(seen, [1, 1, 1, 0])
  ema_b = jnp.array([1.0, 2.0, 3.0, 6.0])
  ema_d = jnp.array([4.0, 1.0, 1.0, 2.0])
  w = relative_difficulty(ema_b, ema_d, labels, jnp.array([0, 3]), 2)
  # row 0: Lb = 1/2, Ld = 4/4; row 3: Lb = 6/6, Ld = 2/2.
  np.testing.assert_allclose(w, [0.5 / 1.5, 0.5], rtol=1e-6)


@pytest.mark.parametrize("method", ["lff", "dfa", "selecmix"])
def test_debiasing_methods_run_and_return_stamped_results(getkey, method):
  # A biased set: colour predicts the class for 10 of 12 images.
  labels = np.repeat(np.arange(3), 4)
  colour = labels.copy()
  colour[[3, 7]] = [1, 2]
  syn = SynSet(coloured(labels, colour, getkey()), jnp.asarray(labels))
  tlabels = np.arange(9) % 3
  tbias = np.arange(9) // 3
  test = Batch(coloured(tlabels, tbias, getkey()), jnp.asarray(tlabels), bias=jnp.asarray(tbias))
  r = evaluate_debiased(getkey(), syn, test, method=method, model=TINY, protocol=PROTO,
                        num_models=2)
  assert isinstance(r, EvalResult) and r.method == method
  assert r.to_dict()["hparams"]["q"] == 0.7 and r.num_models == 2
  for m in ("overall", "aligned", "conflicting", "worst_group"):
    assert np.isfinite(getattr(r, m)).all() and 0 <= r.mean(m) <= 1
  assert np.isfinite(r.train_loss).all()
  with pytest.raises(ValueError, match="unknown"):
    evaluate_debiased(getkey(), syn, test, method=method, model=TINY, protocol=PROTO,
                      lambda_foo=1.0)


def test_lff_returns_both_networks(getkey):
  labels = np.repeat(np.arange(3), 2)
  syn = SynSet(coloured(labels, labels, getkey()), jnp.asarray(labels))
  variables, metrics = train_lff(getkey(), syn, model=TINY, protocol=PROTO.replace(epochs=0))
  assert set(variables) == {"biased", "debiased"} and metrics.loss.shape == (1,)
  assert TINY.apply(variables["debiased"], syn.images).shape == (6, 3)
  with pytest.raises(ValueError, match="integer labels"):
    train_lff(getkey(), SynSet(syn.images, jax.nn.one_hot(syn.labels, 3)), model=TINY,
              protocol=PROTO)
