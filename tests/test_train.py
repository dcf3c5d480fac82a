"""Tests for jaxdd.train: the optax trainer equals PyTorch's SGD step by step."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxdd import models
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
