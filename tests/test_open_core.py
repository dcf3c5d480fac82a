"""Every distiller is a pure, traceable ``(init, step)`` pair that composes with JAX.

``jax.vmap(d.step)`` over stacked states is N runs of any method, each equal to that run made
alone up to float rounding; ``jax.jit(d.init)`` and ``jax.vmap(d.init)`` work; the step
donates nothing; the state goes through ``chex`` and ``flax.serialization`` as it is.
"""
from __future__ import annotations

import chex
import flax.linen as nn
import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdd import augment, distill, models
from jaxdd.distill import experts

NC = 3
TINY = models.ConvNet(NC, depth=1, width=8)


def _toy(per_class=12, size=8, seed=0):
  rng = np.random.default_rng(seed)
  y = np.repeat(np.arange(NC), per_class)
  x = (rng.normal(size=(len(y), size, size, 3)) + y[:, None, None, None]).astype(np.float32)
  emb = rng.normal(size=(len(y), 4)).astype(np.float32)
  groups = (np.arange(len(y)) % 2).astype(np.int32)
  return x, y, emb, groups


def _real():
  x, y, emb, groups = _toy()
  return distill.real_data(x, y, num_classes=NC, embeddings=emb, groups=groups)


@pytest.fixture(scope="module")
def buffer():
  x, y, _, _ = _toy()
  model = models.get("convnet-d1-w4", num_classes=NC)
  return jnp.asarray(experts.train_experts(jax.random.key(0), x, y, model=model, num_experts=2,
                                           epochs=3, lr=0.05, batch_size=12, augment=None))


def _make(method: str):
  """``(distiller, the step's data or 'buffer', two per-run hparams)`` of a tiny run."""
  common = dict(num_classes=NC, ipc=2, real_per_class=6)
  if method == "dm":
    return distill.dm(model=TINY, augment=augment.dsa("crop_flip"), **common), None, (
        {"lr": 1.0}, {"lr": 3.0})
  if method == "dm_kde":
    return distill.dm(model=TINY, kde_config=distill.KDEConfig(variance=0.5), **common), None, (
        {"lr": 1.0, "temperature": 0.25}, {"lr": 2.0, "temperature": 1.0})
  if method == "fairdd":
    return distill.dm(model=TINY, group_matching=2, **common), None, ({"lr": 1.0}, {"lr": 2.0})
  if method == "dc":
    return distill.dc(model=TINY, outer_loop=2, inner_loop=2, **common), None, (
        {"lr": 0.1}, {"lr": 0.5})
  if method == "dsa":
    return distill.dsa(model=TINY, outer_loop=2, inner_loop=2,
                       augment=augment.dsa("crop_flip"), **common), None, (
        {"lr": 0.1}, {"lr": 0.5})
  if method == "cfm":
    return distill.cfm(model=models.ConvNet(NC, depth=2, width=8), iterations=4,
                       schedule="constant", **common), None, (
        {"lr": 0.3, "beta": 0.1}, {"lr": 1.0, "beta": 0.5})
  if method == "mtt":
    return distill.mtt(num_classes=NC, ipc=2, model=models.get("convnet-d1-w4", num_classes=NC),
                       num_epochs=3, expert_epochs=2, max_start_epoch=1, syn_steps=3,
                       lr=30.0, lr_lr=1e-3, lr_teacher=0.05, augment=None), "buffer", (
        {"lr": 30.0}, {"lr": 100.0, "lr_lr": 1e-4})
  raise AssertionError(method)


METHODS = ["dm", "dm_kde", "fairdd", "dc", "dsa", "cfm", "mtt"]


@pytest.mark.parametrize("method", METHODS)
def test_vmap_of_the_step_is_n_runs_each_equal_to_its_run_alone(method, request):
  d, data, hps = _make(method)
  real = _real()
  data = request.getfixturevalue("buffer") if data == "buffer" else real
  keys = jax.random.split(jax.random.key(3), 2)
  states = jax.vmap(d.init, in_axes=(0, None))(keys, real)
  # each run its own hyperparameters: plain data of the stacked state
  states = states._replace(hparams={
      k: (jnp.stack([jnp.asarray(h.get(k, v[i]), v.dtype) for i, h in enumerate(hps)])
          if k in set().union(*hps) else v) for k, v in states.hparams.items()})
  step = jax.jit(jax.vmap(d.step, in_axes=(0, None)))
  for _ in range(2):
    states, metrics = step(states, data)
  assert metrics["loss"].shape == (2,)
  for i in range(2):
    alone = distill.with_hparams(d.init(keys[i], real), **hps[i])
    for _ in range(2):
      alone, m = d.step(alone, data)
    # The batched program reassociates float sums (grouped convolutions, batched matmuls):
    # equal up to float32 rounding relative to the images' scale.
    scale = float(jnp.abs(alone.syn.images).max())
    np.testing.assert_allclose(np.asarray(states.syn.images[i]), np.asarray(alone.syn.images),
                               atol=2e-5 * scale)
    np.testing.assert_allclose(float(metrics["loss"][i]), float(m["loss"]), rtol=1e-4)
  assert not np.allclose(states.syn.images[0], states.syn.images[1])


@pytest.mark.parametrize("method", METHODS)
def test_many_runs_wraps_every_method(method, request):
  d, data, hps = _make(method)
  real = _real()
  data = request.getfixturevalue("buffer") if data == "buffer" else real
  runs = distill.many_runs(d, num_runs=2, run_hparams=list(hps), parallel="map")
  keys = jax.random.split(jax.random.key(5), 2)
  state, metrics = runs.step(runs.init(keys, real), data)
  for i in range(2):
    alone, m = d.step(distill.with_hparams(d.init(keys[i], real), **hps[i]), data)
    scale = float(jnp.abs(alone.syn.images).max())
    np.testing.assert_allclose(np.asarray(state.syn.images[i]), np.asarray(alone.syn.images),
                               atol=2e-5 * scale)
    np.testing.assert_allclose(float(metrics["loss"][i]), float(m["loss"]), rtol=1e-4)


@pytest.mark.parametrize("init", ["real", "noise", "weighted"])
def test_init_is_traceable_jit_and_vmap_give_the_eager_state(init):
  x, y, emb, _ = _toy()
  log_f = distill.class_log_density(emb, y, num_classes=NC, variance=0.5)
  real = distill.real_data(x, y, num_classes=NC, log_density=log_f)
  cfg = distill.KDEConfig(variance=0.5, scope="class") if init == "weighted" else None
  d = distill.dm(num_classes=NC, ipc=2, model=TINY, real_per_class=6, syn_init=init,
                 kde_config=cfg)
  eager = d.init(jax.random.key(1), real)
  jitted = jax.jit(d.init)(jax.random.key(1), real)
  chex.assert_trees_all_equal(jitted, eager)
  keys = jax.random.split(jax.random.key(2), 3)
  batched = jax.vmap(d.init, in_axes=(0, None))(keys, real)
  for i in range(3):
    chex.assert_trees_all_equal(jax.tree.map(lambda a: a[i], batched), d.init(keys[i], real))
  if init != "noise":  # copies of real images of the right class
    labels = np.asarray(eager.syn.labels)
    for img, c in zip(np.asarray(eager.syn.images), labels):
      assert any(np.array_equal(img, r) for r in x[y == c])
  # The warm start too, traced.
  warm = jax.jit(d.init)(jax.random.key(1), real, eager.syn)
  np.testing.assert_array_equal(np.asarray(warm.syn.images), np.asarray(eager.syn.images))


def test_weighted_init_draws_in_proportion_to_the_class_weights():
  # Gumbel top-1 with ipc 1: row i of a class is chosen with probability w_i (successive
  # sampling). Two rows of weight 3:1 in a class of 4 (the others weight ~0): over 4000
  # keys the heavy row's share is 0.75 +- 3 sigma (sigma = sqrt(.75 * .25 / 4000) = 0.007).
  y = np.tile(np.arange(NC), 4)  # row i: class i % 3, the (i // 3)-th of its class
  log_f = np.array([np.log(3.0), 0.0, 40.0, 40.0], np.float32)[np.arange(len(y)) // NC]
  index = distill.class_index(y, NC)
  cfg = distill.KDEConfig(temperature=1.0, scope="class")
  real = distill.RealData(jnp.zeros((len(y), 1)), jax.tree.map(jnp.asarray, index),
                          log_density=jnp.asarray(log_f))
  w = np.asarray(distill.class_weights(real, cfg))
  rows = jax.vmap(lambda k: distill.weighted_init_rows(k, real, 1, cfg))(
      jax.random.split(jax.random.key(0), 4000))
  rows = np.asarray(rows)[:, 0, 0]  # class 0's chosen row
  first = np.asarray(index.indices)[0]
  heavy = first[np.argmax(w[0])]
  share = (rows == heavy).mean()
  assert abs(share - w[0].max()) < 3 * np.sqrt(w[0].max() * (1 - w[0].max()) / 4000) + 1e-3


def test_the_step_donates_nothing_and_is_deterministic():
  real = _real()
  d, _, _ = _make("dm")
  state = d.init(jax.random.key(0), real)
  a, _ = d.step(state, real)
  b, _ = d.step(state, real)  # the input state is still valid
  chex.assert_trees_all_equal(a, b)
  assert int(state.step) == 0 and int(a.step) == 1


def test_the_state_goes_through_chex_and_flax_serialization():
  real = _real()
  for method in ("dm_kde", "cfm"):
    d, _, _ = _make(method)
    state = d.init(jax.random.key(0), real)
    state, _ = d.step(state, real)
    chex.assert_tree_all_finite(state)
    assert state.key.dtype == jnp.uint32
    back = flax.serialization.from_bytes(state, flax.serialization.to_bytes(state))
    chex.assert_trees_all_equal(back, state)
    again, _ = d.step(back, real)
    chex.assert_trees_all_equal(again, d.step(state, real)[0])


def test_with_hparams_changes_the_step_and_refuses_unknown_names():
  real = _real()
  d, _, _ = _make("dm")
  state = d.init(jax.random.key(0), real)
  slow, _ = d.step(distill.with_hparams(state, lr=0.5), real)
  fast, _ = d.step(distill.with_hparams(state, lr=1.0), real)
  start = np.asarray(state.syn.images)
  # SGD from a zero momentum buffer: the first update is -lr * grad, linear in lr
  np.testing.assert_allclose(np.asarray(fast.syn.images) - start,
                             2 * (np.asarray(slow.syn.images) - start), rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match=r"\['variance'\] are not tunable values"):
    distill.with_hparams(state, variance=0.1)  # vanilla DM has no weighting
  with pytest.raises(ValueError, match="are not tunable values"):
    d.init(jax.random.key(0), real, hparams={"momentum": 0.9})
  assert float(d.init(jax.random.key(0), real, hparams={"lr": 2.0}).hparams["lr"]) == 2.0


class _Embedder(nn.Module):
  """A user's own module: its output is the embedding (no ``return_features``)."""

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(4, (3, 3))(x))
    return x.reshape((x.shape[0], -1))


def test_dm_takes_a_users_module_whose_output_is_the_features():
  real = _real()
  d = distill.dm(num_classes=NC, ipc=2, model=_Embedder(), real_per_class=6)
  state = d.init(jax.random.key(0), real)
  new, m = d.step(state, real)
  # the same loss as dm_loss with the module's output as embed_fn
  key = distill.step_key(state)
  k_model, k_real, k_aug = jax.random.split(key, 3)
  rows, mask, w = distill.real_batch(k_real, real, 6, None)
  v = _Embedder().init(k_model, jnp.zeros((1, 8, 8, 3)))
  from jaxdd import matching
  want = matching.dm_loss(k_aug, state.syn.images.reshape(NC, 2, 8, 8, 3), real.images[rows],
                          embed_fn=lambda x: _Embedder().apply(v, x), weights=w)
  np.testing.assert_allclose(float(m["loss"]), float(want), rtol=1e-5)
  with pytest.raises(ValueError, match="flax.linen Module"):
    distill.dm(num_classes=NC, ipc=2, model=lambda x: x)


def test_init_checks_sizes_on_concrete_values_and_skips_them_when_traced():
  real = _real()  # 12 images per class
  d = distill.dm(num_classes=NC, ipc=13, model=TINY, real_per_class=6)
  with pytest.raises(ValueError, match="ipc=13 is larger than class 0"):
    d.init(jax.random.key(0), real)
  # Under jit the counts are traced: the check is skipped (documented), nothing raises.
  assert jax.jit(d.init)(jax.random.key(0), real).syn.images.shape[0] == NC * 13
