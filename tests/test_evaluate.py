"""Tests for jaxdd.evaluate: metrics, protocols, the scan trainer, selection."""
from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxdd import models
from jaxdd.evaluate import evaluate_synset, split_validation
from jaxdd.metrics import group_accuracies
from jaxdd.models import loop_safe_conv
from jaxdd.protocols import DSA_STRATEGY, PROTOCOLS, Protocol, get_protocol
from jaxdd.results import EvalResult
from jaxdd.train import StepBatch, TrainTask, _train_single, train_fresh, train_models
from jaxdd.structs import Batch, SynSet

COLOURS = np.array([[1.0, -1.0, -1.0], [-1.0, 1.0, -1.0], [-1.0, -1.0, 1.0]], np.float32)
TINY = models.ConvNet(num_classes=3, depth=1, width=4)
# 12 steps of 5 images: enough for a colour-separable set.
FAST = Protocol("fast-test", epochs=11, batch_size=5, lr=0.05)


def separable(key, per_class=4, size=8):
  """Constant-colour images (plus a little noise), one colour per class."""
  labels = np.repeat(np.arange(3), per_class)
  noise = 0.05 * np.asarray(jax.random.normal(key, (len(labels), size, size, 3)))
  images = COLOURS[labels][:, None, None, :] + noise
  return jnp.asarray(images, jnp.float32), jnp.asarray(labels, jnp.int32)


# --------------------------------------------------------------------- metrics

def naive_groups(preds, labels, bias, nc, nb):
  table = np.full((nc, nb), np.nan)
  counts = np.zeros((nc, nb), int)
  for c in range(nc):
    for b in range(nb):
      m = (labels == c) & (bias == b)
      counts[c, b] = m.sum()
      if m.any():
        table[c, b] = (preds[m] == labels[m]).mean()
  return table, counts


def test_group_accuracies_hand_computed():
  # class x bias groups: (0,0): 2 samples, 1 right; (0,1): 1, right;
  # (1,1): 3, 3 right; (1,0): 2, 0 right. aligned <=> bias == label.
  labels = np.array([0, 0, 0, 1, 1, 1, 1, 1])
  bias = np.array([0, 0, 1, 1, 1, 1, 0, 0])
  preds = np.array([0, 1, 0, 1, 1, 1, 0, 0])
  r = group_accuracies(preds, labels, bias, 2, 2)
  assert float(r.overall) == pytest.approx(5 / 8)
  assert float(r.aligned) == pytest.approx(4 / 5)   # (0,0) 1/2 + (1,1) 3/3
  assert float(r.conflicting) == pytest.approx(1 / 3)  # (0,1) 1/1 + (1,0) 0/2
  assert float(r.worst_group) == pytest.approx(0.0)
  np.testing.assert_allclose(np.asarray(r.table), [[0.5, 1.0], [0.0, 1.0]])
  np.testing.assert_array_equal(np.asarray(r.counts), [[2, 1], [2, 3]])


def test_group_accuracies_random_vs_naive_and_empty_groups():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 4, 200)
  bias = rng.integers(0, 3, 200)
  bias[labels == 3] = 0  # groups (3, 1) and (3, 2) are empty
  preds = np.where(rng.random(200) < 0.6, labels, rng.integers(0, 4, 200))
  aligned = rng.random(200) < 0.3
  r = jax.jit(group_accuracies, static_argnums=(3, 4))(preds, labels, bias, 4, 3, aligned)
  table, counts = naive_groups(preds, labels, bias, 4, 3)
  np.testing.assert_allclose(np.asarray(r.table), table, rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(r.counts), counts)
  assert float(r.worst_group) == pytest.approx(np.nanmin(table))
  assert float(r.aligned) == pytest.approx((preds == labels)[aligned].mean())
  assert float(r.conflicting) == pytest.approx((preds == labels)[~aligned].mean())
  # An empty subset is NaN, not 0.
  r2 = group_accuracies(np.array([0, 1]), np.array([0, 1]), np.array([0, 1]), 2, 2)
  assert np.isnan(float(r2.conflicting)) and float(r2.aligned) == 1.0


# ------------------------------------------------------------------- protocols

def test_protocol_registry_and_stamp_fields():
  dm = get_protocol("dm")
  assert (dm.epochs, dm.num_epochs, dm.decay_epoch) == (1000, 1001, 501)
  assert (dm.lr, dm.momentum, dm.weight_decay, dm.batch_size) == (0.01, 0.9, 5e-4, 256)
  assert dm.augment == DSA_STRATEGY == "color_crop_cutout_flip_scale_rotate"
  assert get_protocol("dsa").augment == DSA_STRATEGY
  dc = get_protocol("dc")
  assert (dc.num_epochs, dc.decay_epoch, dc.augment) == (301, 151, None)
  assert set(PROTOCOLS) == {"dm", "dsa", "dc", "cpu", "cpu100", "cpu300", "cpu-paper", "smoke"}
  assert dm.standard and not dm.replace(epochs=5).standard
  with pytest.raises(dataclasses.FrozenInstanceError):
    dm.epochs = 3
  with pytest.raises(ValueError, match="unknown evaluation protocol"):
    get_protocol("dm21")
  with pytest.raises(ValueError, match="epochs"):
    Protocol("bad", epochs=-1)


def test_min_samples_raises_the_epochs_of_a_small_set_only():
  # 6 images an epoch in batches of 4 (2 steps): 3 epochs (epochs=2) show 18 images, under
  # 20; 4 epochs are the fewest that reach 20 (24); the decay stays at half of them.
  p = Protocol("p", epochs=2, batch_size=4, min_samples=20)
  assert (p.steps_per_epoch(6), p.sized(6).num_epochs, p.sized(6).decay_epoch) == (2, 4, 2)
  assert p.sized(7) is p  # 3 epochs of 7 show 21
  assert Protocol("q", epochs=2, batch_size=4).sized(6).num_epochs == 3  # no minimum
  # drop_last shows 4 of the 6 images an epoch: 5 epochs show 20
  d = Protocol("d", epochs=2, batch_size=4, drop_last=True, min_samples=20)
  assert (d.steps_per_epoch(6), d.sized(6).num_epochs) == (1, 5)
  # the registry entry sized for a set is still the standard protocol; an edit is not
  paper = PROTOCOLS["cpu-paper"]  # 50,000 images: IPC 10 (100) 500 epochs, IPC 50 its 301
  assert (paper.sized(100).num_epochs, paper.sized(500).num_epochs) == (500, 301)
  assert paper.sized(100).standard and paper.sized(500) is paper
  assert not paper.sized(100).replace(lr=0.02).standard
  assert not PROTOCOLS["smoke"].replace(min_samples=9).standard
  for bad in (-1, 2.5, True):
    with pytest.raises(ValueError, match="min_samples"):
      Protocol("bad", epochs=1, min_samples=bad)
  # a record of a protocol without a minimum reads as it did before the field existed
  assert "min_samples" not in get_protocol("dm").to_dict()
  assert p.to_dict()["min_samples"] == 20


def test_the_trainer_trains_min_samples_on_a_small_set(getkey):
  images, labels = separable(getkey())
  n = int(labels.shape[0])
  p = FAST.replace(min_samples=FAST.num_epochs * n + 1)  # one image more than 12 epochs show
  _, metrics = train_fresh(getkey(), SynSet(images, labels), model=TINY, protocol=p)
  assert metrics.acc.shape == (FAST.num_epochs + 1,)  # one more epoch of the same set
  res = evaluate_synset(getkey(), SynSet(images, labels), Batch(images, labels), model=TINY,
                        protocol=p, num_models=1)
  assert res.protocol.num_epochs == FAST.num_epochs + 1  # the stamp names what was trained


# ---------------------------------------------------------------- the trainer

def test_separable_set_reaches_full_train_accuracy(getkey):
  images, labels = separable(getkey())
  variables, metrics = train_fresh(getkey(), SynSet(images, labels), model=TINY, protocol=FAST)
  assert metrics.acc.shape == (FAST.num_epochs,)
  assert float(metrics.acc[-1]) == 1.0
  assert float(metrics.loss[-1]) < float(metrics.loss[0])
  logits = TINY.apply(variables, images)
  np.testing.assert_array_equal(np.asarray(logits.argmax(-1)), np.asarray(labels))


@pytest.mark.parametrize("parallel", ["vmap", "map"])
def test_many_models_equal_one_by_one(getkey, parallel):
  images, labels = separable(getkey())
  syn = SynSet(images, labels)
  key = getkey()
  stacked, metrics = train_models(key, syn, model=TINY, protocol=FAST, num_models=3,
                                  parallel=parallel)
  assert metrics.acc.shape == (1, 3, FAST.num_epochs)
  for i, k in enumerate(jax.random.split(key, 3)):
    single, m = train_fresh(k, syn, model=TINY, protocol=FAST)
    for a, b in zip(jax.tree.leaves(single), jax.tree.leaves(stacked)):
      np.testing.assert_allclose(np.asarray(b[0, i]), np.asarray(a), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(metrics.loss[0, i]), np.asarray(m.loss), rtol=1e-4)


def _toy_task():
  """y = w * x + b with squared error; logs every step's rows in the state."""
  def init(key, images, labels):
    del key, images
    del labels
    return {"w": jnp.float32(0.5), "b": jnp.float32(-0.2)}, {"log": -jnp.ones((64, 3), jnp.int32)}

  def loss(params, state, batch: StepBatch):
    x = batch.images[:, 0, 0, 0]
    err = params["w"] * x + params["b"] - batch.labels.astype(jnp.float32)
    row = jnp.full((3,), -1, jnp.int32).at[:batch.index.shape[0]].set(batch.index)
    state = {**state, "log": state["log"].at[batch.step].set(row)}
    return 0.5 * jnp.mean(err ** 2), (state, jnp.zeros((x.shape[0], 2)))

  def predict(params, state, images):
    return jnp.zeros((images.shape[0], 2))

  return TrainTask("toy", init, loss, predict)


TOY = _toy_task()


def test_sgd_schedule_momentum_reset_and_partial_batches_match_numpy(getkey):
  # 7 samples, batch 3: batches of 3, 3 and a true partial batch of 1 per epoch.
  # epochs=4 -> 5 epochs trained, lr x0.1 and momentum reset from epoch 4 on.
  proto = Protocol("toy", epochs=4, batch_size=3, lr=0.1, momentum=0.9, weight_decay=0.01)
  xs = np.array([0.3, -1.0, 2.0, 0.7, 1.5, -0.4, 0.1], np.float32)
  ts = np.array([1, 0, 3, 1, 2, 0, 1], np.int32)
  images = jnp.asarray(xs)[:, None, None, None]
  params, state, metrics = _train_single(TOY, proto)(getkey(), jnp.float32(proto.lr), images,
                                                     jnp.asarray(ts))
  log = np.asarray(state["log"])[:15]  # 5 epochs x 3 steps
  # Every epoch visits each sample exactly once; the last batch has 1 row.
  for ep in range(5):
    rows = log[3 * ep:3 * ep + 3]
    assert (rows[2, 1:] == -1).all() and (rows[:2] >= 0).all()
    assert sorted(rows[rows >= 0].tolist()) == list(range(7))
  # Hand-written torch-style SGD on exactly those batches.
  w, b, buf = 0.5, -0.2, np.zeros(2)
  losses = []
  for ep in range(5):
    if ep == proto.decay_epoch + 1:
      buf = np.zeros(2)  # the reference re-creates the optimiser
    lr = proto.lr * (0.1 if ep > proto.decay_epoch else 1.0)
    total = 0.0
    for rows in log[3 * ep:3 * ep + 3]:
      idx = rows[rows >= 0]
      err = w * xs[idx] + b - ts[idx]
      total += 0.5 * np.mean(err ** 2) * len(idx)
      g = np.array([np.mean(err * xs[idx]), np.mean(err)])
      d = g + proto.weight_decay * np.array([w, b])
      buf = proto.momentum * buf + d
      w, b = np.array([w, b]) - lr * buf
    losses.append(total / 7)
  np.testing.assert_allclose([float(params["w"]), float(params["b"])], [w, b], rtol=1e-5)
  np.testing.assert_allclose(np.asarray(metrics.loss), losses, rtol=1e-5)
  # Without the reset the trajectory differs (so the check above is not vacuous).
  p2, _, _ = _train_single(TOY, proto.replace(reset_momentum=False))(
      getkey(), jnp.float32(proto.lr), images, jnp.asarray(ts))
  assert abs(float(p2["w"]) - w) > 1e-4


@pytest.mark.parametrize("micro,per_class,batch", [
    (2, 6, 8),    # 18 images, batches of 8, 8, 2: equal micro-batches of 2
    (6, 9, 26),   # 27 images, batches of 26, 1: no divisor of 26 near 6 -> 4 x 6 + 2
])
def test_micro_batched_gradients_equal_whole_batch_training(getkey, micro, per_class, batch):
  # Per-sample tasks on CPU split each batch into micro-batches and average their
  # gradients; the trajectory must equal whole-batch training (float tolerance).
  # A cpu policy with a small micro-batch is pinned so that tiny batches split.
  from jaxdd import train as train_lib
  from jaxdd import policy
  small = dataclasses.replace(policy.POLICIES["cpu"], name=f"cpu-micro-{micro}", micro_batch=micro)
  images, labels = separable(getkey(), per_class=per_class)
  proto = Protocol(f"micro-test-{micro}", epochs=3, batch_size=batch, lr=0.05)
  base = train_lib.standard_task(TINY)
  whole = TrainTask("micro-whole", base.init, base.loss, base.predict, per_sample=False)
  split = TrainTask("micro-split", base.init, base.loss, base.predict, per_sample=True)
  key = getkey()
  with policy.use(small):
    p0, _, m0 = _train_single(whole, proto)(key, jnp.float32(proto.lr), images, labels)
    p1, _, m1 = _train_single(split, proto)(key, jnp.float32(proto.lr), images, labels)
    # One program per (task, protocol/block, mode, policy): equal arguments, equal programs.
    assert train_lib._predict_program(base, 4, "map") == train_lib._predict_program(base, 4, "map")
    assert _train_single(split, proto) == _train_single(split, proto)
    traced = train_lib._train_one._cache_size()
    _train_single(split, proto)(key, jnp.float32(proto.lr), images, labels)
    assert train_lib._train_one._cache_size() == traced  # the same call traces nothing new
    assert train_lib.predict_block(proto, 1000, "map") == small.predict_block
    pinned_program = _train_single(split, proto)
  # Another policy is another program (it may lay the work out differently).
  assert _train_single(split, proto) != pinned_program
  for a, b in zip(jax.tree.leaves(p0), jax.tree.leaves(p1)):
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(m1.loss, m0.loss, rtol=1e-5)
  np.testing.assert_array_equal(m1.acc, m0.acc)
  assert train_lib.micro_batch_size(8, 2) == 2 and train_lib.micro_batch_size(18, 4) == 3
  # CPU, one network at a time: the cpu policy's block
  assert train_lib.predict_block(proto, 1000, "map") == policy.POLICIES["cpu"].predict_block
  assert train_lib.predict_block(proto, 7, "vmap") == 7


def test_batchnorm_model_updates_running_stats(getkey):
  images, labels = separable(getkey())
  model = models.ConvNet(num_classes=3, depth=1, width=4, norm="batch")
  proto = FAST.replace(epochs=1)
  variables, _ = train_fresh(getkey(), SynSet(images, labels), model=model, protocol=proto)
  init = model.init(getkey(), images[:1])
  assert set(variables) == {"params", "batch_stats"}
  moved = [not np.allclose(a, b) for a, b in zip(jax.tree.leaves(variables["batch_stats"]),
                                                 jax.tree.leaves(init["batch_stats"]))]
  assert all(moved)


def test_dsa_protocol_trains_and_changes_the_trajectory(getkey):
  images, labels = separable(getkey())
  key = getkey()
  # Same key, same data: only the (non-siamese, per-sample) augmentation differs.
  # crop_flip keeps the compile small; the full strategy is the same code path.
  _, m0 = train_fresh(key, SynSet(images, labels), model=TINY, protocol=FAST)
  _, m1 = train_fresh(key, SynSet(images, labels), model=TINY,
                      protocol=FAST.replace(augment="crop_flip"))
  assert np.isfinite(np.asarray(m1.loss)).all()
  assert not np.allclose(np.asarray(m0.loss), np.asarray(m1.loss))
  assert float(m1.acc[-1]) > 0.9  # still learns the colours


# ------------------------------------------------------- evaluation and stamps

def test_evaluate_stamps_protocol_model_and_seed(getkey):
  images, labels = separable(getkey())
  timages, tlabels = separable(getkey(), per_class=5)
  bias = (np.arange(15) % 3).astype(np.int32)
  key = getkey()
  r = evaluate_synset(key, SynSet(images, labels), Batch(timages, tlabels, bias=bias), model=TINY,
                      protocol=FAST, num_models=3)
  assert isinstance(r, EvalResult)
  d = json.loads(json.dumps(r.to_dict()))
  assert d["protocol"] == json.loads(json.dumps(FAST.to_dict()))
  assert d["protocol"]["num_epochs"] == 12 and d["protocol"]["standard"] is False
  assert d["model"] == "convnet-d1-w4-instancenorm-avgpool"
  assert d["method"] == "train_fresh" and d["num_models"] == 3
  assert d["key_data"] == np.asarray(jax.random.key_data(key)).ravel().tolist()
  assert d["selection"] == "none" and d["lrs"] == [0.05]
  assert len(d["per_model"]["overall"]) == 3
  assert d["summary"]["overall"]["mean"] == pytest.approx(float(np.mean(r.overall)))
  # The colour-separable test set is solved; groups (class x bias) all non-empty.
  assert r.mean("overall") == 1.0 and r.mean("worst_group") == 1.0
  np.testing.assert_array_equal(r.group_counts,
                                naive_groups(np.zeros(15), np.asarray(tlabels), bias, 3, 3)[1])
  table = r.format_table()
  assert "fast-test (modified)" in table and "worst group" in table and "conflicting" in table
  # every group solved: no class's accuracy differs across bias groups, DEO_M = DEO_A = 0
  deo = {l.split()[0]: l.split()[1:] for l in table.splitlines() if l.startswith("DEO_")}
  assert deo == {"DEO_M": ["0.00", "0.00"], "DEO_A": ["0.00", "0.00"]}


def test_lr_selected_on_validation_never_on_test(getkey):
  images, labels = separable(getkey())
  vimages, vlabels = separable(getkey(), per_class=3)
  timages, tlabels = separable(getkey(), per_class=3)
  # A test set whose labels are shifted: the well-trained networks score 0 on
  # it, the untrained (lr ~ 0) ones do better, so test-based selection would
  # pick the wrong lr.
  shifted = (tlabels + 1) % 3
  good, bad = 0.05, 1e-7
  r = evaluate_synset(getkey(), SynSet(images, labels), Batch(timages, shifted), model=TINY,
                      protocol=FAST, num_models=2, lrs=[bad, good], valid=Batch(vimages, vlabels))
  assert r.selected_lr == good and r.selection == "valid"
  assert r.valid_scores.shape == (2, 2)
  assert r.valid_scores[1].mean() == 1.0 > r.valid_scores[0].mean()
  assert r.mean("overall") == 0.0  # test numbers reported for the chosen lr
  with pytest.raises(ValueError, match="never selects on the test set"):
    evaluate_synset(getkey(), SynSet(images, labels), Batch(timages, tlabels), model=TINY,
                    protocol=FAST, lrs=[bad, good])


def test_split_validation_is_stratified_disjoint_and_deterministic(getkey):
  images = np.arange(40, dtype=np.float32).reshape(40, 1, 1, 1)
  labels = np.repeat(np.arange(4), 10)
  bias = np.arange(40) % 2
  key = getkey()
  tr, va = split_validation(key, Batch(images, labels, bias=bias), fraction=0.2)
  assert np.bincount(va.labels).tolist() == [2, 2, 2, 2]
  rows_tr, rows_va = tr.images[:, 0, 0, 0].astype(int), va.images[:, 0, 0, 0].astype(int)
  assert not set(rows_tr) & set(rows_va) and len(rows_tr) + len(rows_va) == 40
  np.testing.assert_array_equal(va.bias, rows_va % 2)
  tr2, va2 = split_validation(key, Batch(images, labels, bias=bias), fraction=0.2)
  np.testing.assert_array_equal(va2.images, va.images)
  with pytest.raises(ValueError, match="fraction"):
    split_validation(key, Batch(images, labels), fraction=1.5)


def test_bad_inputs_raise_clear_errors(getkey):
  images, labels = separable(getkey())
  syn = SynSet(images, labels)
  with pytest.raises(ValueError, match="NaN"):
    train_fresh(getkey(), SynSet(images.at[0, 0, 0, 0].set(jnp.nan), labels), model=TINY,
                protocol=FAST)
  with pytest.raises(ValueError, match="typed key"):
    train_fresh(jax.random.PRNGKey(0), syn, model=TINY, protocol=FAST)
  with pytest.raises(ValueError, match="share H, W, C"):
    evaluate_synset(getkey(), syn, Batch(jnp.zeros((3, 6, 6, 3)), jnp.array([0, 1, 2])), model=TINY,
                    protocol=FAST)
  with pytest.raises(ValueError, match="parallel"):
    train_models(getkey(), syn, model=TINY, protocol=FAST, parallel="pmap")
  with pytest.raises(ValueError, match=r"\[0, 3\)"):
    train_fresh(getkey(), SynSet(images, labels + 1), model=TINY, protocol=FAST)


# ------------------------------------------------------- the CPU conv workaround

@pytest.mark.parametrize("channels", [3, 12])  # matmul + col2im input gradient / conv one
def test_loop_safe_conv_matches_lax_values_and_gradients(getkey, channels):
  x = jax.random.normal(getkey(), (2, 7, 8, channels))
  cases = [(3, 1, ((1, 1), (1, 1))), (3, 2, ((0, 0), (0, 0))), (5, 2, ((1, 2), (3, 1))),
           (1, 1, ((0, 0), (0, 0))), (3, 1, ((2, 0), (0, 3))), (3, 1, ((3, 3), (3, 3))),
           (3, 1, "SAME"), (3, 2, "SAME"), (5, 2, "VALID")]  # strings: their explicit pads
  for k, s, pad in cases:
    w = jax.random.normal(getkey(), (k, k, channels, 4))

    def f(conv, x, w, s=s, pad=pad):
      y = conv(x, w, (s, s), pad, dimension_numbers=("NHWC", "HWIO", "NHWC"))
      return jnp.sum(jnp.sin(y)), y

    g_lax = jax.jit(jax.value_and_grad(lambda x, w: f(lax.conv_general_dilated, x, w),
                                       (0, 1), has_aux=True))
    g_safe = jax.jit(jax.value_and_grad(lambda x, w: f(loop_safe_conv, x, w),
                                        (0, 1), has_aux=True))
    (_, y0), g0 = g_lax(x, w)
    (_, y1), g1 = g_safe(x, w)
    np.testing.assert_allclose(y1, y0, rtol=1e-5, atol=1e-5)
    for a, b in zip(g0, g1):
      np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("channels", [3, 12])
def test_loop_safe_conv_second_order_matches_lax(getkey, channels):
  # Gradient matching differentiates the weight gradient w.r.t. the input
  # (reverse over reverse through the custom VJP).
  x = jax.random.normal(getkey(), (2, 6, 6, channels))
  w = jax.random.normal(getkey(), (3, 3, channels, 4))
  v = jax.random.normal(getkey(), w.shape)

  def outer(conv):
    def inner(x, w):
      return jnp.sum(jnp.tanh(conv(x, w, (1, 1), ((1, 1), (1, 1)),
                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))))
    return jax.jit(jax.grad(lambda x: jnp.sum(jax.grad(inner, 1)(x, w) * v)))

  np.testing.assert_allclose(outer(loop_safe_conv)(x), outer(lax.conv_general_dilated)(x),
                             rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("parallel", ["map", "vmap"])
def test_many_synsets_in_one_program_equal_each_evaluated_alone(parallel):
  from jaxdd import models
  from jaxdd.evaluate import evaluate_synset, evaluate_synsets
  rng = np.random.default_rng(0)
  labels = jnp.repeat(jnp.arange(2), 3)
  syns = [SynSet(jnp.asarray(rng.normal(size=(6, 8, 8, 3)), jnp.float32), labels)
          for _ in range(3)]
  y = jnp.asarray(np.tile([0, 1], 10))
  test = Batch(jnp.asarray(rng.normal(size=(20, 8, 8, 3)), jnp.float32), y,
               bias=jnp.asarray(np.arange(20) % 3 == 0, jnp.int32))
  valid = Batch(jnp.asarray(rng.normal(size=(10, 8, 8, 3)), jnp.float32), y[:10],
                bias=jnp.asarray(np.arange(10) % 2, jnp.int32))
  model = models.ConvNet(num_classes=2, depth=1, width=4)
  keys = [jax.random.key(s) for s in (3, 4, 5)]
  together = evaluate_synsets(keys, syns, test, model=model, protocol="smoke", num_models=2,
                              valid=valid, parallel=parallel)
  for key, syn, got in zip(keys, syns, together):
    alone = evaluate_synset(key, syn, test, model=model, protocol="smoke", num_models=2,
                            parallel=parallel)
    # the same networks (same keys), trained in one program instead of one each: equal up to
    # float32 rounding of the training (a few ulps of the loss); a test image whose logits
    # tie within that rounding may flip: at most one of the 20 per network
    np.testing.assert_allclose(got.train_loss, alone.train_loss, rtol=1e-5, atol=1e-6)
    assert np.abs(got.overall - alone.overall).max() <= 1 / 20 + 1e-9
    assert got.valid_scores.shape == (1, 2) and got.key_data == alone.key_data
  with pytest.raises(ValueError, match="one key per SynSet"):
    evaluate_synsets(keys[:2], syns, test, model=model, protocol="smoke")
  with pytest.raises(ValueError, match="one shape and labels"):
    evaluate_synsets(keys[:2], [syns[0], SynSet(syns[1].images, labels[::-1])], test,
                     model=model, protocol="smoke")


def test_a_subset_of_networks_is_the_whole_evaluations_same_networks():
  # An evaluation done a network at a time (networks=[j]) trains the whole evaluation's
  # network j: the same key, so the same training up to float32 rounding.
  from jaxdd import models
  from jaxdd.evaluate import evaluate_synsets
  rng = np.random.default_rng(1)
  labels = jnp.repeat(jnp.arange(2), 3)
  syn = SynSet(jnp.asarray(rng.normal(size=(6, 8, 8, 3)), jnp.float32), labels)
  y = jnp.asarray(np.tile([0, 1], 10))
  test = Batch(jnp.asarray(rng.normal(size=(20, 8, 8, 3)), jnp.float32), y,
               bias=jnp.asarray(np.arange(20) % 3 == 0, jnp.int32))
  model = models.ConvNet(num_classes=2, depth=1, width=4)
  key = jax.random.key(7)
  (whole,) = evaluate_synsets([key], [syn], test, model=model, protocol="smoke", num_models=3)
  for j in (2, 0):
    (one,) = evaluate_synsets([key], [syn], test, model=model, protocol="smoke", num_models=3,
                              networks=[j])
    assert one.num_models == 1 and one.overall.shape == (1,)
    np.testing.assert_allclose(one.train_loss[0], whole.train_loss[j], rtol=1e-5, atol=1e-6)
    assert abs(one.overall[0] - whole.overall[j]) <= 1 / 20 + 1e-9
  (two,) = evaluate_synsets([key], [syn], test, model=model, protocol="smoke", num_models=3,
                            networks=[2, 1])
  np.testing.assert_allclose(two.train_loss, whole.train_loss[[2, 1]], rtol=1e-5, atol=1e-6)
  for bad in ([], [3], [1, 1], [-1]):
    with pytest.raises(ValueError, match="distinct indices in"):
      evaluate_synsets([key], [syn], test, model=model, protocol="smoke", num_models=3,
                       networks=bad)


def test_synsets_not_scored_on_test_never_see_it():
  # test_for: the candidates' networks train in the same program and are scored on
  # validation; only the reported SynSets' networks predict the test split.
  from jaxdd import models
  from jaxdd import evaluate as evaluate_lib
  rng = np.random.default_rng(2)
  labels = jnp.repeat(jnp.arange(2), 3)
  syns = [SynSet(jnp.asarray(rng.normal(size=(6, 8, 8, 3)), jnp.float32), labels)
          for _ in range(3)]
  y = jnp.asarray(np.tile([0, 1], 10))
  test = Batch(jnp.asarray(rng.normal(size=(20, 8, 8, 3)), jnp.float32), y,
               bias=jnp.asarray(np.arange(20) % 3 == 0, jnp.int32))
  valid = Batch(jnp.asarray(rng.normal(size=(10, 8, 8, 3)), jnp.float32), y[:10],
                bias=jnp.asarray(np.arange(10) % 2, jnp.int32))
  model = models.ConvNet(num_classes=2, depth=1, width=4)
  keys = [jax.random.key(s) for s in (3, 4, 5)]
  kw = dict(model=model, protocol="smoke", num_models=2, valid=valid)
  whole = evaluate_lib.evaluate_synsets(keys, syns, test, **kw)
  seen = []
  real_predict = evaluate_lib.predict

  def counting(task, params, state, images, **k):
    seen.append((images.shape[0], jax.tree.leaves(params)[0].shape[0]))
    return real_predict(task, params, state, images, **k)
  evaluate_lib.predict = counting
  try:
    part = evaluate_lib.evaluate_synsets(keys, syns, test, test_for=[True, False, True], **kw)
  finally:
    evaluate_lib.predict = real_predict
  # validation (10 images) by all 6 networks, test (20 images) by the 4 of SynSets 0 and 2
  assert seen == [(10, 6), (20, 4)]
  for i in (0, 2):
    np.testing.assert_array_equal(part[i].overall, whole[i].overall)
    assert part[i].num_test == 20
  assert np.isnan(part[1].overall).all() and part[1].num_test == 0
  np.testing.assert_array_equal(part[1].valid_scores, whole[1].valid_scores)
  with pytest.raises(ValueError, match="one flag per SynSet"):
    evaluate_lib.evaluate_synsets(keys, syns, test, test_for=[True], **kw)
  with pytest.raises(ValueError, match="needs valid="):
    evaluate_lib.evaluate_synsets(keys, syns, test, model=model, protocol="smoke",
                                  test_for=[True, False, True])
