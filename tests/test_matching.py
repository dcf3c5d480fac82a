"""DM loss against an independent numpy computation."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdd import matching


def _net(w):
  return lambda x: jax.nn.relu(x.reshape(x.shape[0], -1) @ w)


def _np_dm(w, real, syn, weights):
  loss = 0.0
  for c in range(real.shape[0]):
    fr = np.maximum(real[c].reshape(real.shape[1], -1) @ w, 0)
    fs = np.maximum(syn[c].reshape(syn.shape[1], -1) @ w, 0)
    loss += np.sum((weights[c] @ fr - fs.mean(0)) ** 2)
  return loss


def test_dm_loss_matches_numpy_weighted_and_uniform():
  rng = np.random.default_rng(0)
  w = rng.normal(size=(3 * 3 * 2, 5)).astype(np.float64)
  real = rng.normal(size=(3, 6, 3, 3, 2))
  syn = rng.normal(size=(3, 2, 3, 3, 2))
  weights = rng.uniform(size=(3, 6))
  weights /= weights.sum(1, keepdims=True)
  embed = _net(jnp.asarray(w, jnp.float32))
  key = jax.random.key(0)
  got = matching.dm_loss(key, jnp.asarray(syn, jnp.float32), jnp.asarray(real, jnp.float32),
                         embed_fn=embed, weights=jnp.asarray(weights, jnp.float32))
  np.testing.assert_allclose(got, _np_dm(w, real, syn, weights), rtol=1e-4)
  uniform = np.full((3, 6), 1 / 6)
  got_u = matching.dm_loss(key, jnp.asarray(syn, jnp.float32), jnp.asarray(real, jnp.float32),
                           embed_fn=embed)
  np.testing.assert_allclose(got_u, _np_dm(w, real, syn, uniform), rtol=1e-4)
  # Weighted DM with uniform weights is exactly unweighted DM.
  got_w = matching.dm_loss(key, jnp.asarray(syn, jnp.float32), jnp.asarray(real, jnp.float32),
                           embed_fn=embed, weights=jnp.full((3, 6), 1 / 6))
  np.testing.assert_allclose(got_w, got_u, rtol=1e-6)


def test_dm_loss_hand_constant_and_gradient_only_through_syn():
  embed = lambda x: x.reshape(x.shape[0], -1)
  real = jnp.ones((2, 4, 2, 2, 1))
  syn = jnp.zeros((2, 1, 2, 2, 1))
  # each class: ||1_4 - 0_4||^2 = 4, two classes -> 8
  assert float(matching.dm_loss(jax.random.key(0), syn, real, embed_fn=embed)) == 8.0
  g_syn, g_real = jax.grad(lambda s, r: matching.dm_loss(jax.random.key(0), s, r, embed_fn=embed),
                           argnums=(0, 1))(syn, real)
  np.testing.assert_allclose(g_syn, -2.0 * np.ones_like(syn))  # d/ds (1 - s)^2 = -2
  assert float(jnp.abs(g_real).sum()) == 0.0


def test_siamese_augment_per_class():
  """Real and synthetic images of a class see the same augmentation draw."""

  def aug(key, x):
    return x + jax.random.uniform(key, ())  # one shift per call

  embed = lambda x: x.reshape(x.shape[0], -1)
  real = jnp.zeros((3, 5, 2, 2, 1))
  syn = jnp.zeros((3, 1, 2, 2, 1))
  # identical images + identical shift -> zero loss only if the draw is shared
  loss = matching.dm_loss(jax.random.key(3), syn, real, embed_fn=embed, augment=aug)
  assert float(loss) == pytest.approx(0.0, abs=1e-10)


def test_bad_shapes():
  embed = lambda x: x.reshape(x.shape[0], -1)
  with pytest.raises(ValueError, match="disagree"):
    matching.dm_loss(jax.random.key(0), jnp.zeros((2, 1, 2, 2, 1)), jnp.zeros((3, 4, 2, 2, 1)),
                     embed_fn=embed)
  with pytest.raises(ValueError, match="weights must have shape"):
    matching.dm_loss(jax.random.key(0), jnp.zeros((2, 1, 2, 2, 1)), jnp.zeros((2, 4, 2, 2, 1)),
                     embed_fn=embed, weights=jnp.ones((2, 3)))


def test_chunked_embeddings_equal_one_call_values_and_gradients():
  rng = np.random.default_rng(2)
  w = jnp.asarray(rng.normal(size=(3 * 3 * 2, 5)), jnp.float32)
  real = jnp.asarray(rng.normal(size=(3, 6, 3, 3, 2)), jnp.float32)  # 18 real images
  syn = jnp.asarray(rng.normal(size=(3, 4, 3, 3, 2)), jnp.float32)   # 12 synthetic images
  key = jax.random.key(0)
  loss = lambda s, **kw: matching.dm_loss(key, s, real, embed_fn=_net(w), **kw)
  full, g_full = jax.value_and_grad(loss)(syn)
  # 4, 5 and 7 are rounded down to the largest divisors of 18 / 12 not above them.
  for chunks in [dict(real_chunk=c) for c in (1, 4, 6, 7, 100)] + [
      dict(syn_chunk=c) for c in (1, 3, 5, 100)] + [dict(real_chunk=4, syn_chunk=5)]:
    got, g = jax.value_and_grad(lambda s: loss(s, **chunks))(syn)
    # Chunks change the summation order: errors scale with the largest gradient entry.
    np.testing.assert_allclose(got, full, rtol=1e-5)
    np.testing.assert_allclose(g, g_full, rtol=1e-5, atol=1e-5 * float(np.abs(g_full).max()))


def test_per_class_map_equals_vmap_of_the_augmentation():
  # lax.map over classes (one DSA family per class actually computed) and vmap
  # (every family computed, then selected) give the same loss and gradient.
  from jaxdd import augment
  rng = np.random.default_rng(3)
  w = jnp.asarray(rng.normal(size=(8 * 8 * 3, 4)), jnp.float32)
  real = jnp.asarray(rng.normal(size=(4, 6, 8, 8, 3)), jnp.float32)
  syn = jnp.asarray(rng.normal(size=(4, 2, 8, 8, 3)), jnp.float32)
  aug = augment.dsa("color_crop_cutout_flip_scale_rotate")
  grad = jax.jit(jax.value_and_grad(
      lambda s, key, m: matching.dm_loss(key, s, real, embed_fn=_net(w), augment=aug,
                                         map_classes=m)), static_argnums=2)
  for seed in range(3):
    a, ga = grad(syn, jax.random.key(seed), True)
    b, gb = grad(syn, jax.random.key(seed), False)
    np.testing.assert_allclose(a, b, rtol=1e-5)
    np.testing.assert_allclose(ga, gb, rtol=1e-4, atol=1e-5 * float(np.abs(gb).max()))


def test_real_embed_fn_embeds_only_the_real_images():
  flat = lambda x: x.reshape(x.shape[0], -1)
  real = jnp.arange(2 * 3 * 2 * 2 * 1, dtype=jnp.float32).reshape(2, 3, 2, 2, 1)
  syn = jnp.ones((2, 1, 2, 2, 1))
  w = jnp.full((2, 3), 1 / 3)
  real_mean, syn_mean = matching.mean_embeddings(flat, real, syn, w,
                                                 real_embed_fn=lambda x: 2 * flat(x))
  # A weighted mean with the inexact weight 1/3: a few float32 ulps.
  np.testing.assert_allclose(real_mean, 2 * np.asarray(real).reshape(2, 3, 4).mean(1), rtol=1e-6)
  np.testing.assert_allclose(syn_mean, np.ones((2, 4)))
  # the loss uses it too: ||2 * mean(real) - 1||^2 summed over classes
  expect = ((2 * np.asarray(real).reshape(2, 3, 4).mean(1) - 1) ** 2).sum()
  got = matching.dm_loss(jax.random.key(0), syn, real, embed_fn=flat,
                         real_embed_fn=lambda x: 2 * flat(x))
  np.testing.assert_allclose(float(got), expect, rtol=1e-6)


def test_by_class_arranges_flat_rows_as_a_naive_loop_does():
  rng = np.random.default_rng(3)
  labels = rng.permutation(np.repeat(np.arange(4), [5, 3, 6, 4]))
  x = rng.normal(size=(18, 2, 2, 1)).astype(np.float32)
  got = np.asarray(matching.by_class(x, labels, 4))
  want = np.stack([np.stack([x[i] for i in range(18) if labels[i] == c][:3]) for c in range(4)])
  np.testing.assert_array_equal(got, want)  # B defaults to the smallest class (3)
  assert matching.by_class(x, labels, 4, per_class=2).shape == (4, 2, 2, 2, 1)
  with pytest.raises(ValueError, match="class 1 has 3 rows, fewer than the 4"):
    matching.by_class(x, labels, 4, per_class=4)
  with pytest.raises(ValueError, match="concrete labels"):
    jax.jit(lambda y: matching.by_class(x, y, 4))(jnp.asarray(labels))
