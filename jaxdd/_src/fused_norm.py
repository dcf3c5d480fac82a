"""Instance norm, ReLU and 2x2 average pooling as one operation with one hand-written gradient.

Why: on a GPU the ConvNet's blocks after each convolution are memory-bound, and the first one
is the largest work of a DM step that is not a convolution. Profiled on an H200 in the headline
cell's step (4 rows of 500 synthetic images, 28x28x128 maps; docs/results/speed-gpu.md, "Where
a step's time goes on a GPU"), the first block's norm, ReLU and pooling, forward and backward,
took seven memory-bound kernels over its 800 MB maps, 2.3 ms of a 10.8 ms step: differentiated
one layer after another, they wrote the normalised maps (ReLU's mask needs them) and ReLU's
masked gradient as full-size arrays and read each of them again, and the statistics took two
passes. This operation keeps only what exists anyway, the convolution's output,
plus a mean and an inverse standard deviation per map. Its backward recomputes the normalised
value and ReLU's mask from them and reads the pooled gradient, a quarter of the size. Compiled
for an H200 (``benchmarks/cell_cost.py --gpu-target``), the synthetic first block then moves
4.6 GB a step instead of 10.0, and the step's traffic of large arrays falls by 35 %
(docs/results/speed-gpu.md, "The remedies as an H200's compiler builds them").

The statistics take one pass instead of two: the sums of ``x - k`` and ``(x - k)**2`` with
``k`` a value of the map itself (its first pixel), ``var = E[(x-k)^2] - E[x-k]^2`` in float32.
Shifting by a value of the map keeps the cancellation small: the relative error of the variance
is a few float32 epsilons times ``E[(x-k)^2] / var``, which is ``1 + z**2`` for a first pixel
``z`` standard deviations from the mean. The statistics and the arithmetic are float32 whatever
the maps' dtype; the output has the maps' dtype.

The same values as ``instance_norm`` -> ``relu`` -> ``avg_pool`` (2x2, stride 2, an odd trailing
row or column dropped), gradients included, up to float rounding (tests/test_fused_norm.py).
Who uses it: :class:`jaxdd.layers.InstanceNorm` with ``relu_avg_pool=True``, which
:class:`jaxdd.models.ConvNet` builds when the layout policy's ``norm_block`` is ``"fused"``.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

_F32 = jnp.float32


def _stats(x: jax.Array, epsilon: float) -> tuple[jax.Array, jax.Array]:
  """Per-map mean and ``1/sqrt(var + epsilon)`` of NHWC maps, float32, in one pass."""
  xf = x.astype(_F32)
  d = xf - xf[:, :1, :1, :]
  m = x.shape[1] * x.shape[2]
  s1 = jnp.sum(d, axis=(1, 2), keepdims=True) / m
  s2 = jnp.sum(d * d, axis=(1, 2), keepdims=True) / m
  var = jnp.maximum(s2 - s1 * s1, 0.0)
  return xf[:, :1, :1, :] + s1, lax.rsqrt(var + epsilon)


def _avg_pool2(y: jax.Array) -> jax.Array:
  n, h, w, c = y.shape
  hp, wp = h // 2, w // 2
  y = y[:, :2 * hp, :2 * wp, :].reshape(n, hp, 2, wp, 2, c)
  return jnp.sum(y, axis=(2, 4)) * 0.25


def instance_norm_relu_avg_pool(x: jax.Array, scale: jax.Array, bias: jax.Array,
                                epsilon: float = 1e-5) -> jax.Array:
  """``avg_pool2(relu(instance_norm(x) * scale + bias))`` of NHWC maps, one operation.

  Args:
    x: maps ``(N, H, W, C)``, ``H, W >= 2``, float32 or bfloat16.
    scale, bias: the norm's affine parameters, ``(C,)``.
    epsilon: added to the variance.

  Returns:
    ``(N, H // 2, W // 2, C)`` in ``x``'s dtype.

  Example:
    >>> import jax.numpy as jnp
    >>> x = jnp.array([1.0, 3.0, 1.0, 3.0]).reshape(1, 2, 2, 1)
    >>> instance_norm_relu_avg_pool(x, jnp.ones(1), jnp.zeros(1), 0.0).ravel().tolist()
    [0.5]
  """
  if x.ndim != 4 or x.shape[1] < 2 or x.shape[2] < 2:
    raise ValueError(f"instance_norm_relu_avg_pool expects NHWC maps of at least 2x2, "
                     f"got shape {x.shape}")
  return _block(x, scale, bias, epsilon)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _block(x, scale, bias, epsilon):
  return _block_fwd(x, scale, bias, epsilon)[0]


def _block_fwd(x, scale, bias, epsilon):
  mean, rstd = _stats(x, epsilon)
  y = (x.astype(_F32) - mean) * (rstd * scale.astype(_F32)) + bias.astype(_F32)
  return _avg_pool2(jnp.maximum(y, 0.0)).astype(x.dtype), (x, mean, rstd, scale, bias)


def _relu_mask(x, xf, x_hat, mean, rstd, sc, b):
  """ReLU's mask in the backward, ``y = x_hat * scale + bias > 0``, in the form XLA recomputes
  in both kernels that need it (the statistics' sums and the input gradient) instead of storing
  it whole. Compiled for an H200 (``benchmarks/cell_cost.py --gpu-target``): float32 maps keep
  the expression; with bfloat16 maps XLA stored its mask as a full-size array, so there it is
  ``x`` against a per-map threshold, ``x > mean - bias / (scale * rstd)`` for a positive
  scale, ``x <`` it for a negative one, ``bias > 0`` for a zero one: one comparison an element
  (the 8 rows' bfloat16 step with the layout policy's three remedies then moves 17.7 GB of
  large arrays instead of 19.4). The two agree
  but where ``y`` rounds to either side of 0."""
  if x.dtype == _F32:
    return x_hat * sc + b > 0
  t = mean - b / (jnp.where(sc == 0, 1.0, sc) * rstd)
  return jnp.where(sc > 0, xf > t, jnp.where(sc < 0, xf < t, b > 0))


def _block_bwd(epsilon, res, gp):
  del epsilon
  # The barrier keeps XLA from sharing the forward's normalised maps with this recomputation
  # (common-subexpression elimination would store them whole, the pass this op saves).
  x, mean, rstd, scale, bias = lax.optimization_barrier(res)
  _, h, w, _ = x.shape
  hp, wp = gp.shape[1], gp.shape[2]
  xf = x.astype(_F32)
  x_hat = (xf - mean) * rstd
  mask = _relu_mask(x, xf, x_hat, mean, rstd, scale.astype(_F32), bias.astype(_F32))
  # The pooled gradient spread over its 2x2 windows (a quarter each), zero on a dropped
  # trailing row or column, then ReLU's mask: recomputed, never stored.
  g = jnp.repeat(jnp.repeat(gp.astype(_F32) * 0.25, 2, axis=1), 2, axis=2)
  g = jnp.pad(g, ((0, 0), (0, h - 2 * hp), (0, w - 2 * wp), (0, 0)))
  g = jnp.where(mask, g, 0.0)
  m = h * w
  s_g = jnp.sum(g, axis=(1, 2), keepdims=True)
  s_gx = jnp.sum(g * x_hat, axis=(1, 2), keepdims=True)
  dx = (rstd * scale.astype(_F32)) * (g - s_g / m - x_hat * (s_gx / m))
  return (dx.astype(x.dtype), jnp.sum(s_gx, axis=(0, 1, 2)).astype(scale.dtype),
          jnp.sum(s_g, axis=(0, 1, 2)).astype(bias.dtype))


_block.defvjp(_block_fwd, _block_bwd)
