"""Instance norm, ReLU and 2x2 average pooling as one operation (jaxdd._src.fused_norm, the
layout policy's norm_block="fused"): against a float64 numpy reference, forward and gradients,
and a DM step that gives the same images with either layout."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from policy_steps import dm_step

from jaxdd import layers, models, policy
from jaxdd._src.fused_norm import instance_norm_relu_avg_pool


def naive_block(x, scale, bias, eps=1e-5):
  """float64: per-map mean and biased variance over H, W; affine; ReLU; 2x2 mean, odd edge
  dropped."""
  x = x.astype(np.float64)
  mean = x.mean(axis=(1, 2), keepdims=True)
  var = ((x - mean) ** 2).mean(axis=(1, 2), keepdims=True)
  y = np.maximum((x - mean) / np.sqrt(var + eps) * scale + bias, 0.0)
  n, h, w, c = x.shape
  hp, wp = h // 2, w // 2
  return y[:, :2 * hp, :2 * wp].reshape(n, hp, 2, wp, 2, c).mean(axis=(2, 4))


def _inputs(shape, seed, offset=0.0):
  rng = np.random.default_rng(seed)
  x = (rng.normal(size=shape) * 2.0 + offset).astype(np.float32)
  scale = rng.normal(size=shape[-1]).astype(np.float32)
  bias = (0.3 * rng.normal(size=shape[-1])).astype(np.float32)
  return x, scale, bias


@pytest.mark.parametrize("shape", [(3, 8, 8, 5), (2, 7, 7, 4), (2, 6, 9, 3)])
def test_the_forward_is_the_naive_block(shape):
  x, scale, bias = _inputs(shape, 0)
  got = np.asarray(instance_norm_relu_avg_pool(jnp.asarray(x), scale, bias))
  # normalised values are O(1); float32 statistics of <= 81 values: ~10 ulps
  np.testing.assert_allclose(got, naive_block(x, scale, bias), rtol=1e-5, atol=1e-5)


def test_one_pass_statistics_hold_for_maps_far_from_zero():
  # maps with mean 1000 and std 2: sum-of-squares statistics without the shift would lose
  # every digit of the variance (1e6 / 4 = 2.5e5 times cancellation in float32)
  x, scale, bias = _inputs((2, 8, 8, 3), 1, offset=1000.0)
  got = np.asarray(instance_norm_relu_avg_pool(jnp.asarray(x), scale, bias))
  # the normalised maps are (x - mean) / std with x's own rounding of 1000 + O(2): 6e-5
  # absolute per value, 3e-5 relative of the std: 1e-4 absolute on O(1) outputs
  np.testing.assert_allclose(got, naive_block(x, scale, bias), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shape", [(3, 8, 8, 5), (2, 7, 7, 4)])
def test_the_gradients_are_the_layers_gradients(shape):
  x, scale, bias = _inputs(shape, 2)
  w = np.random.default_rng(3).normal(size=naive_block(x, scale, bias).shape).astype(np.float32)

  def layered(x, s, b):
    return layers.pool(jax.nn.relu(layers.instance_norm(x, s, b, 1e-5)), "avg")

  def loss(f):
    return jax.grad(lambda *a: jnp.sum(f(*a) * w), argnums=(0, 1, 2))(x, scale, bias)

  got, want = loss(instance_norm_relu_avg_pool), loss(layered)
  for g, r in zip(got, want):
    # sums over <= 3 * 64 values of O(1) products: 1e-5 of the largest is ~100 ulps
    np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=1e-4,
                               atol=1e-5 * float(np.max(np.abs(r))))
  # the dropped row and column of a 7x7 map still get their gradient through the statistics
  if shape[1] % 2:
    assert np.all(np.asarray(got[0])[:, -1] != 0)


def test_a_finite_difference_agrees_with_the_gradient():
  x, scale, bias = _inputs((1, 4, 4, 2), 4)
  x64 = x.astype(np.float64)
  w = np.random.default_rng(5).normal(size=(1, 2, 2, 2))
  g = np.asarray(jax.grad(lambda a: jnp.sum(instance_norm_relu_avg_pool(a, scale, bias)
                                            * w))(jnp.asarray(x)))
  # central differences of the float64 reference, step 1e-4: truncation O(1e-8), far below
  # the float32 gradient's rounding (1e-6 of O(1) values)
  for idx in [(0, 0, 0, 0), (0, 1, 2, 1), (0, 3, 3, 0)]:
    e = np.zeros_like(x64)
    e[idx] = 1e-4
    fd = (np.sum(naive_block(x64 + e, scale, bias) * w)
          - np.sum(naive_block(x64 - e, scale, bias) * w)) / 2e-4
    assert abs(g[idx] - fd) < 1e-4 * max(1.0, abs(fd))


def test_bfloat16_maps_keep_their_dtype_and_float32_statistics():
  x, scale, bias = _inputs((2, 8, 8, 3), 6)
  xb = jnp.asarray(x, jnp.bfloat16)
  got = instance_norm_relu_avg_pool(xb, scale, bias)
  assert got.dtype == jnp.bfloat16
  # the input's bfloat16 rounding (2**-8 relative) and the output's: 2e-2 absolute of O(1)
  np.testing.assert_allclose(np.asarray(got, np.float32),
                             naive_block(np.asarray(xb, np.float32), scale, bias), atol=2e-2)
  dx = jax.grad(lambda a: jnp.sum(instance_norm_relu_avg_pool(a, scale, bias)
                                  .astype(jnp.float32)))(xb)
  assert dx.dtype == jnp.bfloat16


def test_the_bfloat16_mask_is_relus_mask_for_every_sign_of_scale():
  # bfloat16 maps take ReLU's mask as x against a per-map threshold; it must be y > 0 for a
  # positive, a negative and a zero scale (then bias > 0), wherever y is not within float32
  # rounding of 0 (reference: float64 numpy on the same bfloat16-rounded maps)
  from jaxdd._src import fused_norm
  x, _, _ = _inputs((3, 8, 8, 4), 7)
  xb = jnp.asarray(x, jnp.bfloat16)
  x64 = np.asarray(xb, np.float64)
  scale = np.array([1.3, -0.7, 0.0, 0.0], np.float32)
  bias = np.array([0.2, 0.4, 0.5, -0.5], np.float32)
  mean, rstd = fused_norm._stats(xb, 1e-5)
  xf = xb.astype(jnp.float32)
  x_hat = (xf - mean) * rstd
  got = np.asarray(fused_norm._relu_mask(xb, xf, x_hat, mean, rstd, jnp.asarray(scale),
                                         jnp.asarray(bias)))
  m64 = x64.mean(axis=(1, 2), keepdims=True)
  y = (x64 - m64) / np.sqrt(x64.var(axis=(1, 2), keepdims=True) + 1e-5) * scale + bias
  clear = np.abs(y) > 1e-4
  assert clear.mean() > 0.99
  np.testing.assert_array_equal(got[clear], (y > 0)[clear])
  # and the gradients follow the float32 operation's on the same maps, to bfloat16's rounding
  w = np.random.default_rng(8).normal(size=(3, 4, 4, 4)).astype(np.float32)

  def grads(a):
    return jax.grad(lambda a, s, b: jnp.sum(instance_norm_relu_avg_pool(a, s, b)
                                            .astype(jnp.float32) * w), argnums=(0, 1, 2))(
                                                a, jnp.asarray(scale), jnp.asarray(bias))
  low, ref = grads(xb), grads(xb.astype(jnp.float32))
  for g, r in zip(low, ref):  # dx is rounded to bfloat16 (2**-8 relative)
    np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(r),
                               rtol=1e-2, atol=1e-2 * float(np.abs(np.asarray(r)).max()))


def test_bad_maps_get_one_line():
  with pytest.raises(ValueError, match="at least 2x2"):
    instance_norm_relu_avg_pool(jnp.ones((1, 1, 4, 3)), jnp.ones(3), jnp.zeros(3))


def test_convnet_has_the_same_parameters_and_values_under_either_layout():
  x = np.random.default_rng(7).normal(size=(4, 28, 28, 3)).astype(np.float32)
  net = models.ConvNet(10, width=16)
  with policy.use(policy.variant("accelerator", norm_block="fused")):
    params = net.init(jax.random.key(0), x)
    jaxpr_fused = str(jax.make_jaxpr(lambda p: net.apply(p, x))(params))
    fused = net.apply(params, x, return_features=True)[0]
  with policy.use("accelerator"):
    plain_params = net.init(jax.random.key(0), x)
    plain = net.apply(params, x, return_features=True)[0]
  assert jax.tree.structure(params) == jax.tree.structure(plain_params)
  assert "custom_vjp" in jaxpr_fused
  # three blocks of float32 rounding on O(1) features
  np.testing.assert_allclose(np.asarray(fused), np.asarray(plain), rtol=1e-4, atol=1e-5)


def test_a_dm_step_gives_the_same_images_with_the_fused_block():
  base = policy.variant("accelerator", steps_per_call=1)
  want, _ = dm_step(base)
  got, _ = dm_step(policy.variant(base, norm_block="fused"))
  # the synthetic images after one step of lr 1: the same up to float32 rounding of the
  # gradient (as the matmul input gradient's test)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_the_policy_names_the_choice():
  assert policy.resolve("accelerator").norm_block == "layers"
  assert policy.resolve("cpu").norm_block == "layers"
  assert policy.resolve("accelerator+norm_block=fused").norm_block == "fused"
  with pytest.raises(ValueError, match="norm_block"):
    policy.variant("accelerator", norm_block="pallas")
