"""Networks for distillation and evaluation (Flax linen, pure ``init``/``apply``).

Every model maps NHWC float32 images to logits. ``model.apply(params, x,
return_features=True)`` returns ``(features, logits)``, where ``features`` is the
flattened input of the final linear classifier (the reference's ``embed``).

Initialisation copies PyTorch's defaults, because the DM embedding of a *random*
network depends on it (REFERENCE-DM-DSA.md §2, §8): every conv/linear weight and
bias is drawn from U(-1/sqrt(fan_in), +1/sqrt(fan_in)); norm scales start at 1,
offsets at 0.

The 3x28x28 decision (REFERENCE-DM-DSA.md §2). The reference ConvNet pads the
first conv by 3 for 1-channel input (so MNIST maps are 32x32 -> 2048 features)
and by 1 otherwise, but sizes its classifier as if every 28-pixel image were
32x32, which breaks on Colored MNIST (1152 features vs 2048 expected). We keep
the reference's padding rule and size the classifier from the real feature map
(fix (a)): the DM embedding is then exactly the reference's (1152-d for
3x28x28), DC/DSA/evaluation work, and no FLOPs are added. Flax infers the
classifier width from its input, so nothing is hard-coded.

Features are flattened in (H, W, C) order rather than PyTorch's (C, H, W); the
two differ by a fixed permutation, which changes neither the DM loss (a sum of
squares) nor the distribution of a randomly initialised classifier.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

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
    return nn.Conv(self.features, self.kernel_size, strides=self.strides, padding=pad,
                   use_bias=self.use_bias, kernel_init=torch_uniform(fan_in),
                   bias_init=torch_uniform(fan_in))(x)


class TorchDense(nn.Module):
  """``nn.Dense`` with PyTorch's default initialisation."""
  features: int
  use_bias: bool = True

  @nn.compact
  def __call__(self, x):
    fan_in = x.shape[-1]
    return nn.Dense(self.features, use_bias=self.use_bias, kernel_init=torch_uniform(fan_in),
                    bias_init=torch_uniform(fan_in))(x)


def make_norm(norm: str, channels: int, train: bool) -> Callable[[jax.Array], jax.Array]:
  """The reference's norm layers on NHWC maps (eps 1e-5, affine)."""
  if norm == "instance":  # GroupNorm(C, C): per sample and channel, over H, W
    return nn.GroupNorm(num_groups=channels, epsilon=1e-5)
  if norm == "group":  # GroupNorm(4, C)
    return nn.GroupNorm(num_groups=4, epsilon=1e-5)
  if norm == "layer":  # LayerNorm over (C, H, W) with an elementwise affine
    return nn.LayerNorm(epsilon=1e-5, reduction_axes=(-3, -2, -1), feature_axes=(-3, -2, -1))
  if norm == "batch":
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)
  if norm == "none":
    return lambda x: x
  raise ValueError(f"unknown norm {norm!r}; use one of instance, batch, layer, group, none")


def pool(x: jax.Array, pooling: str) -> jax.Array:
  """2x2 stride-2 pooling without padding (odd sizes floor, 7 -> 3)."""
  if pooling == "avg":
    return nn.avg_pool(x, (2, 2), strides=(2, 2), padding="VALID")
  if pooling == "max":
    return nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")
  if pooling == "none":
    return x
  raise ValueError(f"unknown pooling {pooling!r}; use one of avg, max, none")


class ConvNet(nn.Module):
  """The DC/DSA/DM ConvNet: ``depth`` x [conv3x3(width) - norm - relu - pool] - linear.

  Defaults are the reference's (depth 3, width 128, instance norm, avg-pool).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> net = ConvNet(num_classes=10)
    >>> params = net.init(jax.random.key(0), jnp.zeros((1, 28, 28, 3)))
    >>> feats, logits = net.apply(params, jnp.zeros((2, 28, 28, 3)), return_features=True)
    >>> feats.shape, logits.shape
    ((2, 1152), (2, 10))
  """
  num_classes: int
  depth: int = 3
  width: int = 128
  norm: str = "instance"
  pooling: str = "avg"

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False, return_features: bool = False):
    if x.ndim != 4:
      raise ValueError(f"ConvNet expects NHWC images, got shape {x.shape}")
    for d in range(self.depth):
      # The reference pads the first conv by 3 for 1-channel input (28 -> 32).
      padding = 3 if (d == 0 and x.shape[-1] == 1) else 1
      x = TorchConv(self.width, padding=padding)(x)
      x = make_norm(self.norm, self.width, train)(x)
      x = nn.relu(x)
      x = pool(x, self.pooling)
    features = x.reshape(x.shape[0], -1)
    logits = TorchDense(self.num_classes)(features)
    return (features, logits) if return_features else logits
