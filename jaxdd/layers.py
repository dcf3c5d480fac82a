"""Layers shared by jaxdd's networks, initialised as PyTorch's defaults.

Initialisation copies PyTorch's defaults, because the DM embedding of a *random*
network depends on it (reference ``networks.py``): every conv/linear weight and
bias is drawn from U(-1/sqrt(fan_in), +1/sqrt(fan_in)); norm scales start at 1,
offsets at 0. :class:`TorchConv` and :class:`TorchDense` are ``nn.Conv`` /
``nn.Dense`` with that initialisation; :func:`instance_norm` is PyTorch's
``GroupNorm(C, C)`` with a hand-written VJP; :func:`make_norm` and :func:`pool`
build the reference's norm and pooling layers by name. The networks themselves
are in :mod:`jaxdd.models`, which re-exports these names.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Callable, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from jaxdd import policy
from jaxdd._src import checks, fused_norm
from jaxdd._src.cpu_kernels import policy_kernel

Norm = Literal["instance", "batch", "layer", "group", "none"]
Pooling = Literal["avg", "max", "none"]


def torch_uniform(fan_in: int) -> Callable[..., jax.Array]:
  """Initializer U(-1/sqrt(fan_in), 1/sqrt(fan_in)): PyTorch's default for
  conv/linear weights (kaiming_uniform with a=sqrt(5)) and biases."""
  bound = 1.0 / math.sqrt(max(fan_in, 1))

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


class TorchConv(nn.Module):
  """``nn.Conv`` with PyTorch's default initialisation."""
  features: int
  kernel_size: tuple[int, int] = (3, 3)
  strides: tuple[int, int] = (1, 1)
  padding: Any = 1
  use_bias: bool = True

  @nn.compact
  def __call__(self, x):
    fan_in = x.shape[-1] * self.kernel_size[0] * self.kernel_size[1]
    pad = self.padding
    if isinstance(pad, int):
      pad = ((pad, pad), (pad, pad))
    # On CPU (policy conv="loop_safe"), route through loop_safe_conv so that
    # training inside lax.scan (evaluation, surrogate) does not hit XLA:CPU's
    # slow in-loop gradient path.
    conv = policy_kernel()
    return nn.Conv(self.features, self.kernel_size, strides=self.strides, padding=pad,
                   use_bias=self.use_bias, kernel_init=torch_uniform(fan_in),
                   bias_init=torch_uniform(fan_in), conv_general_dilated=conv)(x)


class TorchDense(nn.Module):
  """``nn.Dense`` with PyTorch's default initialisation."""
  features: int
  use_bias: bool = True

  @nn.compact
  def __call__(self, x):
    fan_in = x.shape[-1]
    return nn.Dense(self.features, use_bias=self.use_bias, kernel_init=torch_uniform(fan_in),
                    bias_init=torch_uniform(fan_in))(x)


# ---------------------------------------------------------------------------
# Instance norm with a hand-written VJP: two passes forward (mean, centred
# variance), a fused pair of per-map reductions and one elementwise pass
# backward; faster than flax's GroupNorm(C, C) in ConvNet-3 on CPU (docs/results/speed-distillation.md,
# "One DM step"). Same values up to float rounding
# (tests/test_models.py).


def _instance_stats(x: jax.Array, epsilon: float) -> tuple[jax.Array, jax.Array]:
  mean = jnp.mean(x, axis=(1, 2), keepdims=True)
  var = jnp.mean(jnp.square(x - mean), axis=(1, 2), keepdims=True)
  return mean, lax.rsqrt(var + epsilon)


def instance_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float = 1e-5):
  """``(x - mean) / sqrt(var + epsilon) * scale + bias`` per sample and channel.

  Mean and (biased) variance are over H and W of an NHWC batch, as PyTorch's
  ``GroupNorm(C, C)`` / ``InstanceNorm2d(affine=True)``.

  Example:
    >>> import jax.numpy as jnp
    >>> x = jnp.array([1.0, 3.0]).reshape(1, 1, 2, 1)
    >>> instance_norm(x, jnp.ones(1), jnp.zeros(1), 0.0).ravel().tolist()
    [-1.0, 1.0]
  """
  return _instance_norm(x, scale, bias, epsilon)


# The hand-written gradient: one read of the maps for all three cotangents. A plain function
# above keeps the public name a function (documentation tools skip transformation objects).
@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _instance_norm(x, scale, bias, epsilon):
  return _instance_norm_fwd(x, scale, bias, epsilon)[0]


def _instance_norm_fwd(x, scale, bias, epsilon):
  mean, rstd = _instance_stats(x, epsilon)
  return (x - mean) * (rstd * scale) + bias, (x, mean, rstd, scale)


def _instance_norm_bwd(epsilon, res, g):
  x, mean, rstd, scale = res
  x_hat = (x - mean) * rstd
  # Per-map sums of g and g * x_hat, read once: the scale and bias gradients
  # are their sums over the batch, so no extra pass over the maps.
  m = x.shape[1] * x.shape[2]
  s_g = jnp.sum(g, axis=(1, 2), keepdims=True)
  s_gx = jnp.sum(g * x_hat, axis=(1, 2), keepdims=True)
  dx = (rstd * scale) * (g - s_g / m - x_hat * (s_gx / m))
  return dx, jnp.sum(s_gx, axis=(0, 1, 2)), jnp.sum(s_g, axis=(0, 1, 2))


_instance_norm.defvjp(_instance_norm_fwd, _instance_norm_bwd)


class InstanceNorm(nn.Module):
  """Affine instance norm of NHWC maps (PyTorch ``GroupNorm(C, C)``, eps 1e-5).

  With ``relu_avg_pool=True`` it is followed by ReLU and a 2x2 average pool, all one operation
  (:func:`jaxdd._src.fused_norm.instance_norm_relu_avg_pool`): the same values up to float
  rounding and the same parameters.
  """
  epsilon: float = 1e-5
  relu_avg_pool: bool = False

  @nn.compact
  def __call__(self, x):
    if x.ndim != 4:
      raise ValueError(f"InstanceNorm expects NHWC maps, got shape {x.shape}")
    scale = self.param("scale", nn.initializers.ones, (x.shape[-1],), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (x.shape[-1],), jnp.float32)
    if self.relu_avg_pool:
      return fused_norm.instance_norm_relu_avg_pool(x, scale, bias, self.epsilon)
    return instance_norm(x, scale.astype(x.dtype), bias.astype(x.dtype), self.epsilon)


def make_norm(norm: str, channels: int, train: bool) -> Callable[[jax.Array], jax.Array]:
  """The reference's norm layers on NHWC maps (eps 1e-5, affine)."""
  if norm == "instance":  # GroupNorm(C, C): per sample and channel, over H, W
    return InstanceNorm(epsilon=1e-5)
  if norm == "group":  # GroupNorm(4, C)
    return nn.GroupNorm(num_groups=4, epsilon=1e-5)
  if norm == "layer":  # LayerNorm over (C, H, W) with an elementwise affine
    return nn.LayerNorm(epsilon=1e-5, reduction_axes=(-3, -2, -1), feature_axes=(-3, -2, -1))
  if norm == "batch":
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)
  if norm == "none":
    return lambda x: x
  raise ValueError(f"unknown norm {norm!r}; use one of instance, batch, layer, group, none")


def norm_relu_pool(x: jax.Array, norm: str, pooling: str, train: bool) -> jax.Array:
  """A ConvNet block's norm, ReLU and pooling after its convolution (:func:`make_norm`,
  ``nn.relu``, :func:`pool`). Instance norm with average pooling runs as one operation when the
  layout policy's ``norm_block`` is ``"fused"`` (:func:`jaxdd._src.fused_norm.
  instance_norm_relu_avg_pool`): the same parameters and, up to float rounding, values."""
  if (norm == "instance" and pooling == "avg" and policy.current().norm_block == "fused"
      and x.shape[1] >= 2 and x.shape[2] >= 2):
    return InstanceNorm(epsilon=1e-5, relu_avg_pool=True)(x)
  return pool(nn.relu(make_norm(norm, x.shape[-1], train)(x)), pooling)


def pool(x: jax.Array, pooling: str) -> jax.Array:
  """2x2 stride-2 pooling without padding (odd sizes floor, 7 -> 3)."""
  if pooling == "avg":
    return nn.avg_pool(x, (2, 2), strides=(2, 2), padding="VALID")
  if pooling == "max":
    return nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")
  if pooling == "none":
    return x
  raise ValueError(f"unknown pooling {pooling!r}; use one of avg, max, none")


# Helpers of the zoo networks (jaxdd.models).


def _check_images(x: jax.Array, name: str) -> None:
  # Shape only (inside init/apply the input is usually traced).
  checks.check_images(x, name, floating=False, finite=False,
                      shape_fix="add a batch axis with x[None] or move the channels last")


def _max_pool2(x: jax.Array, name: str, *, ceil: bool = False) -> jax.Array:
  """2x2 stride-2 max-pool. ``ceil=True`` is PyTorch's ``ceil_mode``: an odd
  trailing row/column forms its own (partial) window instead of being dropped."""
  h, w = x.shape[1], x.shape[2]
  if ceil:
    # max_pool pads with -inf, so the padded half-window returns the real pixel.
    return nn.max_pool(x, (2, 2), strides=(2, 2), padding=((0, h % 2), (0, w % 2)))
  if h < 2 or w < 2:
    raise ValueError(
        f"{name}: a 2x2 max-pool met a {h}x{w} feature map; the input images are too "
        "small for this architecture, use larger images (see the jaxdd.models docstring)")
  return nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")


def _conv_out(size: int, kernel: int, pad: int) -> int:
  return size + 2 * pad - kernel + 1
