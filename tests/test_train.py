"""Tests for jaxdd.train: the optax trainer equals PyTorch's SGD step by step."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxdd import models, train
from jaxdd.protocols import Protocol
from jaxdd.train import StepBatch, TrainTask, cross_entropy, fit, standard_task, torch_sgd

MODEL = models.ConvNet(num_classes=3, depth=1, width=4)  # instance norm: no batch statistics


def _logged_task(model, num_steps: int, batch_size: int) -> TrainTask:
  """``standard_task(model)`` that also records every step's rows in its state."""
  base = standard_task(model)

  def init(key, images, labels):
    params, state = base.init(key, images, labels)
    return params, {**state, "log": -jnp.ones((num_steps, batch_size), jnp.int32)}

  def loss(params, state, batch: StepBatch):
    log = state["log"]
    rest = {k: v for k, v in state.items() if k != "log"}
    value, (rest, logits) = base.loss(params, rest, batch)
    row = jnp.full((batch_size,), -1, jnp.int32).at[:batch.index.shape[0]].set(batch.index)
    return value, ({**rest, "log": log.at[batch.step].set(row)}, logits)

  return TrainTask("logged", init, loss, base.predict)


def _torch_sgd_reference(params, images, labels, log, proto: Protocol, steps_per_epoch: int):
  """PyTorch SGD written out: d = g + wd p; buf = m buf + d; p -= lr buf; a new
  optimiser (zero buf) after the decay epoch when ``reset_momentum``."""
  def batch_loss(p, x, y):
    return cross_entropy(MODEL.apply({"params": p}, x, train=True), y).mean()

  grad = jax.jit(jax.grad(batch_loss))
  p = jax.tree.map(np.asarray, params)
  buf = jax.tree.map(np.zeros_like, p)
  decay = proto.decay_epoch
  for ep in range(proto.num_epochs):
    if decay is not None and ep == decay + 1 and proto.reset_momentum:
      buf = jax.tree.map(np.zeros_like, p)
    lr = proto.lr * (proto.lr_decay_factor if decay is not None and ep > decay else 1.0)
    for rows in log[ep * steps_per_epoch:(ep + 1) * steps_per_epoch]:
      idx = rows[rows >= 0]
      g = jax.tree.map(np.asarray, grad(p, images[idx], labels[idx]))
      d = jax.tree.map(lambda gi, pi: gi + np.float32(proto.weight_decay) * pi, g, p)
      buf = jax.tree.map(lambda b, di: np.float32(proto.momentum) * b + di, buf, d)
      p = jax.tree.map(lambda pi, b: pi - np.float32(lr) * b, p, buf)
  return p


def test_optax_trainer_matches_pytorch_sgd_with_decay_and_momentum_reset(getkey):
  # 12 images, batch 5: steps of 5, 5 and a partial 2 per epoch; 5 epochs, the lr
  # decays x0.1 after epoch 2 (and the momentum is reset there, or not).
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.normal(size=(12, 8, 8, 3)), jnp.float32)
  labels = jnp.asarray(np.arange(12) % 3, jnp.int32)
  steps_per_epoch = 3
  task = _logged_task(MODEL, 5 * steps_per_epoch, 5)
  params0, state0 = task.init(getkey(), images, labels)
  key = getkey()
  finals = {}
  for reset in (True, False):
    proto = Protocol(f"sgd-ref-{reset}", epochs=4, batch_size=5, lr=0.05, momentum=0.9,
                     weight_decay=0.01, decay_at=2, reset_momentum=reset)
    params, state, metrics = jax.jit(
        lambda k, p, s: fit(k, p, s, images, labels, task=task, protocol=proto))(
            key, params0, state0)
    log = np.asarray(state["log"])
    assert (log[:, 0] >= 0).all() and metrics.loss.shape == (5,)
    want = _torch_sgd_reference(params0, images, labels, log, proto, steps_per_epoch)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(want)):
      np.testing.assert_allclose(np.asarray(a), b, rtol=1e-5, atol=1e-6)
    finals[reset] = params
  # The reset changes the trajectory, so the comparison above covers it.
  diff = max(float(jnp.abs(a - b).max())
             for a, b in zip(jax.tree.leaves(finals[True]), jax.tree.leaves(finals[False])))
  assert diff > 1e-5


def test_torch_sgd_is_the_surrogate_optimizer_and_takes_a_traced_lr():
  from jaxdd import surrogate
  p = {"w": jnp.array([1.0, -2.0])}
  g = {"w": jnp.array([0.5, 0.25])}
  config = surrogate.SurrogateConfig.preset("smoke", schedule="constant")
  tx = surrogate.make_optimizer(config, steps_per_epoch=1)
  ref = torch_sgd(config.learning_rate, momentum=config.momentum,
                  weight_decay=config.weight_decay)
  u1, _ = tx.update(g, tx.init(p), p)
  u2, _ = ref.update(g, ref.init(p), p)
  np.testing.assert_array_equal(u1["w"], u2["w"])

  @jax.jit
  def step(lr):
    tx = torch_sgd(lr, momentum=0.9, weight_decay=0.1)
    state = tx.init(p)
    u, state = tx.update(g, state, p)
    p1 = optax.apply_updates(p, u)
    u, _ = tx.update(g, state, p1)
    return optax.apply_updates(p1, u)

  buf = np.asarray(g["w"]) + 0.1 * np.asarray(p["w"])
  p1 = np.asarray(p["w"]) - 0.5 * buf
  buf = 0.9 * buf + np.asarray(g["w"]) + 0.1 * p1
  np.testing.assert_allclose(np.asarray(step(jnp.float32(0.5))["w"]), p1 - 0.5 * buf, rtol=1e-6)


# ---------------------------------------------------------------------------
# The cosine schedule, drop_last, step keys and the host-driven fit_epochs
# ---------------------------------------------------------------------------


def _linear_task(name: str = "linear") -> TrainTask:
  """loss = sum(w) * mean(x): a constant gradient, so SGD's trajectory is closed-form.

  The state counts the rows trained and keeps the last step's key data; there
  are no logits (like the surrogate's SupCon task).
  """
  def init(key, images, labels):
    del key, images, labels
    return ({"w": jnp.ones((3,), jnp.float32)},
            {"seen": jnp.zeros((), jnp.int32), "key": jnp.zeros((2,), jnp.uint32)})

  def loss(params, state, batch: StepBatch):
    value = jnp.sum(params["w"]) * jnp.mean(batch.images)
    new = {"seen": state["seen"] + batch.images.shape[0], "key": jax.random.key_data(batch.key)}
    return value, (new, None)

  return TrainTask(name, init, loss, lambda p, s, x: x)


def test_cosine_schedule_and_drop_last_match_hand_computed_sgd(getkey):
  # 10 samples of value 2 (gradient 2 per weight), batch 4, drop_last: 2 steps an
  # epoch, 3 epochs = 6 steps; plain SGD with lr_t = lr * (1 + cos(pi t / 6)) / 2.
  images = jnp.full((10, 1), 2.0, jnp.float32)
  labels = jnp.zeros((10,), jnp.int32)
  task = _linear_task()
  proto = Protocol("cos", epochs=2, lr=0.1, momentum=0.0, weight_decay=0.0, batch_size=4,
                   decay_at=None, schedule="cosine", drop_last=True)
  params, state = task.init(None, images, labels)
  key = getkey()
  lrs = [0.1 * (1 + np.cos(np.pi * t / 6)) / 2 for t in range(6)]
  want_w = 1.0 - 2.0 * sum(lrs)
  p_fit, s_fit, m_fit = jax.jit(lambda k: fit(k, params, state, images, labels, task=task,
                                              protocol=proto))(key)
  # As below: 6 float32 updates against the float64 sum (see the surrogate optimiser test).
  np.testing.assert_allclose(np.asarray(p_fit["w"]), want_w, rtol=1e-5)
  assert int(s_fit["seen"]) == 3 * 8  # the last 2 samples of every epoch are dropped
  # The per-epoch loss is over the 8 trained samples, and no accuracy without logits.
  np.testing.assert_array_equal(np.asarray(m_fit.acc), 0.0)
  for loop in ("step", "scan"):
    out = list(train.fit_epochs(key, params, state, images, labels, task=task, protocol=proto,
                                loop=loop))
    assert len(out) == 3
    p_host, s_host, _ = out[-1]
    np.testing.assert_allclose(np.asarray(p_host["w"]), want_w, rtol=1e-5)
    assert int(s_host["seen"]) == 24
    np.testing.assert_array_equal(np.asarray(s_host["key"]), np.asarray(s_fit["key"]))
  # Without drop_last the partial batch of 2 is a third step of every epoch.
  keep = proto.replace(drop_last=False)
  _, s_keep, _ = fit(key, params, state, images, labels, task=task, protocol=keep)
  assert int(s_keep["seen"]) == 30


def test_without_augmentation_the_task_gets_the_step_key_itself(getkey):
  # Step j of epoch e: fold_in(fold_in(k_step, e), j) with (k_shuffle, k_step) =
  # split(key); with augmentation the task gets the second half of its split.
  images = jnp.ones((4, 8, 8, 3), jnp.float32)
  labels = jnp.zeros((4,), jnp.int32)
  task = _linear_task()
  params, state = task.init(None, images, labels)
  key = getkey()
  step_key = jax.random.fold_in(jax.random.fold_in(jax.random.split(key)[1], 1), 0)
  plain = Protocol("plain", epochs=1, batch_size=4, momentum=0.0, decay_at=None)
  _, s, _ = fit(key, params, state, images, labels, task=task, protocol=plain)
  np.testing.assert_array_equal(np.asarray(s["key"]), np.asarray(jax.random.key_data(step_key)))
  augmented = plain.replace(augment="flip")
  _, s, _ = fit(key, params, state, images, labels, task=task, protocol=augmented)
  np.testing.assert_array_equal(np.asarray(s["key"]),
                                np.asarray(jax.random.key_data(jax.random.split(step_key)[1])))


def test_fit_epochs_follows_fit_for_a_convnet(getkey):
  # The host-driven drivers run the same steps as fit's single scan: same
  # per-epoch metrics and params up to float rounding (a partial last batch too).
  rng = np.random.default_rng(1)
  images = jnp.asarray(rng.normal(size=(11, 8, 8, 3)), jnp.float32)
  labels = jnp.asarray(np.arange(11) % 3, jnp.int32)
  task = standard_task(MODEL)
  params, state = task.init(getkey(), images, labels)
  proto = Protocol("host", epochs=2, batch_size=4, lr=0.05, decay_at=1)
  key = getkey()
  p_fit, _, m_fit = jax.jit(lambda k: fit(k, params, state, images, labels, task=task,
                                          protocol=proto))(key)
  for loop in ("step", "scan"):
    out = list(train.fit_epochs(key, params, state, images, labels, task=task, protocol=proto,
                                loop=loop))
    np.testing.assert_allclose([float(m.loss) for _, _, m in out], np.asarray(m_fit.loss),
                               rtol=1e-5)
    np.testing.assert_allclose([float(m.acc) for _, _, m in out], np.asarray(m_fit.acc))
    for a, b in zip(jax.tree.leaves(out[-1][0]), jax.tree.leaves(p_fit)):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


def test_surrogate_recipe_is_make_optimizer_step_by_step(getkey):
  # SurrogateConfig.protocol() through the trainer = the config's optax optimiser
  # (cosine over epochs x steps, momentum, coupled weight decay) applied by hand.
  from jaxdd import surrogate
  config = surrogate.SurrogateConfig.preset("smoke", batch_size=4, epochs=3, learning_rate=0.2)
  proto = config.protocol()
  assert (proto.num_epochs, proto.schedule, proto.drop_last) == (3, "cosine", True)
  images = jnp.full((9, 1), 0.5, jnp.float32)  # 2 steps an epoch, 1 sample dropped
  labels = jnp.zeros((9,), jnp.int32)
  task = _linear_task("linear-surrogate")
  params, state = task.init(None, images, labels)
  *_, (p_host, _, _) = train.fit_epochs(getkey(), params, state, images, labels, task=task,
                                        protocol=proto, loop="step")
  tx = surrogate.make_optimizer(config, steps_per_epoch=2)
  p, opt = params, tx.init(params)
  for _ in range(6):
    u, opt = tx.update({"w": jnp.full((3,), 0.5, jnp.float32)}, opt, p)
    p = optax.apply_updates(p, u)
  # 6 float32 updates with float32 cosine learning rates: ~12 ulps of 1 accumulate on a
  # weight of ~0.4, i.e. a few 1e-6 relative; 1e-5 leaves room for another summation order.
  np.testing.assert_allclose(np.asarray(p_host["w"]), np.asarray(p["w"]), rtol=1e-5)
  with pytest.raises(ValueError, match="for_size"):
    surrogate.SurrogateConfig.preset("cpu").protocol()


def test_protocol_schedule_and_drop_last_are_validated():
  with pytest.raises(ValueError, match="decay_at=None"):
    Protocol("p", epochs=1, schedule="cosine")
  with pytest.raises(ValueError, match="schedule"):
    Protocol("p", epochs=1, schedule="linear")
  with pytest.raises(ValueError, match="drop_last"):
    Protocol("p", epochs=1, drop_last=1)
  images = jnp.zeros((3, 1), jnp.float32)
  task = _linear_task()
  params, state = task.init(None, images, None)
  with pytest.raises(ValueError, match="at least batch_size=4"):
    fit(jax.random.key(0), params, state, images, jnp.zeros((3,), jnp.int32), task=task,
        protocol=Protocol("p", epochs=1, batch_size=4, drop_last=True))
  with pytest.raises(ValueError, match="loop"):
    train.resolve_loop("while")


def test_micro_batched_task_without_logits(getkey):
  # A stateless per-sample task without logits, trained in micro-batches on CPU
  # (45 images: 5 chunks of 9, and 46: 4 chunks of 10 plus 6): the gradient is
  # still the batch mean (constant here, so SGD is closed-form).
  def init(key, images, labels):
    return {"w": jnp.ones((2,), jnp.float32)}, {}

  def loss(params, state, batch: StepBatch):
    return jnp.sum(params["w"]) * jnp.mean(batch.images), (state, None)

  task = TrainTask("linear-per-sample", init, loss, lambda p, s, x: x, per_sample=True)
  for n in (45, 46):
    images = jnp.full((n, 1), 3.0, jnp.float32)
    params, state = task.init(None, images, None)
    proto = Protocol("p", epochs=1, lr=0.1, momentum=0.0, weight_decay=0.0, batch_size=n,
                     decay_at=None)
    p, _, m = fit(getkey(), params, state, images, jnp.zeros((n,), jnp.int32), task=task,
                  protocol=proto)
    np.testing.assert_allclose(np.asarray(p["w"]), 1.0 - 2 * 0.1 * 3.0, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(m.loss), [2 * 3.0, 2 * 0.7 * 3.0], rtol=1e-5)
