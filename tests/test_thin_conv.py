"""The input gradient of a few-channel convolution as a matrix product (jaxdd._src.thin_conv,
the layout policy's input_grad="matmul"): against a naive numpy transposed convolution, lax's
own gradients, and a DM step that gives the same images with either."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from policy_steps import dm_step

from jaxdd import policy
from jaxdd._src import thin_conv

NHWC = ("NHWC", "HWIO", "NHWC")


def naive_input_grad(g: np.ndarray, w: np.ndarray, x_shape, padding) -> np.ndarray:
  """dL/dx of y[n, i, j, o] = sum_{a, b, c} xpad[n, i + a, j + b, c] w[a, b, c, o] (stride 1),
  by loops: every output pixel sends g[n, i, j, :] @ w[a, b].T back to the input pixel it read."""
  n, h, wd, c = x_shape
  kh, kw = w.shape[:2]
  (pt, pb), (pl, pr) = padding
  dxp = np.zeros((n, h + pt + pb, wd + pl + pr, c), np.float64)
  for i in range(g.shape[1]):
    for j in range(g.shape[2]):
      for a in range(kh):
        for b in range(kw):
          dxp[:, i + a, j + b, :] += g[:, i, j, :].astype(np.float64) @ w[a, b].T.astype(np.float64)
  return dxp[:, pt:pt + h, pl:pl + wd, :]


@pytest.mark.parametrize("c,padding", [(3, ((1, 1), (1, 1))), (1, ((0, 2), (1, 0))),
                                       (8, ((0, 0), (0, 0)))])
def test_the_input_gradient_is_the_naive_transposed_convolution(c, padding):
  rng = np.random.default_rng(c)
  x = rng.normal(size=(2, 7, 6, c)).astype(np.float32)
  w = rng.normal(size=(3, 3, c, 5)).astype(np.float32)

  def conv(x, w):
    return thin_conv.thin_input_conv(x, w, (1, 1), padding, dimension_numbers=NHWC)
  y, pullback = jax.vjp(conv, jnp.asarray(x), jnp.asarray(w))
  g = rng.normal(size=y.shape).astype(np.float32)
  dx, dw = pullback(jnp.asarray(g))
  # float32 sums of at most 9 * 5 products of O(1) numbers: 1e-4 absolute is ~100 ulps of them
  np.testing.assert_allclose(np.asarray(dx), naive_input_grad(g, w, x.shape, padding),
                             rtol=1e-5, atol=1e-4)
  # the forward pass and the weight gradient are lax's own
  y_ref, pull_ref = jax.vjp(lambda x, w: lax.conv_general_dilated(x, w, (1, 1), padding,
                                                                  dimension_numbers=NHWC),
                            jnp.asarray(x), jnp.asarray(w))
  np.testing.assert_array_equal(np.asarray(y), np.asarray(y_ref))
  np.testing.assert_array_equal(np.asarray(dw), np.asarray(pull_ref(jnp.asarray(g))[1]))


def test_other_convolutions_are_lax_unchanged():
  # strided, or more input channels than FEW_CHANNELS: lax's convolution and its gradients
  x = jnp.ones((1, 8, 8, 3))
  w = jnp.ones((3, 3, 3, 4))
  wide = jnp.ones((1, 8, 8, thin_conv.FEW_CHANNELS + 1))
  w_wide = jnp.ones((3, 3, thin_conv.FEW_CHANNELS + 1, 4))
  for lhs, rhs, strides in ((x, w, (2, 2)), (wide, w_wide, (1, 1))):
    jaxpr = str(jax.make_jaxpr(lambda a, b, s=strides: thin_conv.thin_input_conv(
        a, b, s, ((1, 1), (1, 1)), dimension_numbers=NHWC))(lhs, rhs))
    assert "custom_vjp" not in jaxpr and "conv_general_dilated" in jaxpr
  jaxpr = str(jax.make_jaxpr(lambda a, b: thin_conv.thin_input_conv(
      a, b, (1, 1), "SAME", dimension_numbers=NHWC))(x, w))
  assert "custom_vjp" in jaxpr  # flax's padding string, made explicit


def test_a_dm_step_gives_the_same_images_with_the_input_gradient_as_a_matmul():
  base = policy.variant("accelerator", steps_per_call=1)
  want, hlo_conv = dm_step(base)
  got, hlo_matmul = dm_step(policy.variant(base, input_grad="matmul"))
  # the synthetic images after one step of lr 1: the same up to float32 rounding of the
  # gradient (sums of a few hundred products)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  # the first layer's input gradient is a dot now, not a convolution
  assert hlo_matmul.count("stablehlo.convolution") == hlo_conv.count("stablehlo.convolution") - 1
  assert hlo_matmul.count("stablehlo.dot_general") > hlo_conv.count("stablehlo.dot_general")


def test_the_policy_names_the_choice():
  assert policy.resolve("accelerator").input_grad == "conv"
  with pytest.raises(ValueError, match="input_grad"):
    policy.variant("accelerator", input_grad="fft")
