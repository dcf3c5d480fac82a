"""Networks for distillation and evaluation (Flax linen, pure ``init``/``apply``).

Every model maps NHWC float32 images to logits. ``model.apply(params, x,
return_features=True)`` returns ``(features, logits)``, where ``features`` is the
flattened input of the final linear classifier (the reference's ``embed``).

Initialisation copies PyTorch's defaults, because the DM embedding of a *random*
network depends on it (reference ``networks.py``): every conv/linear weight and
bias is drawn from U(-1/sqrt(fan_in), +1/sqrt(fan_in)); norm scales start at 1,
offsets at 0. The layers that do so (:class:`~jaxdd.layers.TorchConv`,
:class:`~jaxdd.layers.TorchDense`, the norms and pools) are in
:mod:`jaxdd.layers` and re-exported here.

Every convolution of these models is a :class:`~jaxdd.layers.TorchConv`, which
follows the active :mod:`jaxdd.policy`: under the ``cpu`` policy it runs
:func:`loop_safe_conv` (fast gradients inside loops on XLA:CPU). jaxdd never
rewrites a model it is given; a model of your own asks for the same kernels
with ``nn.Conv(..., conv_general_dilated=policy_conv)`` (:func:`policy_conv`).

The 3x28x28 decision. The reference ConvNet pads the
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

Cross-architecture zoo (the reference's evaluation pool 'M'): :class:`MLP`,
:class:`LeNet`, :class:`AlexNet`, :class:`VGG11` and :class:`ResNet18` follow
the layer lists of the reference ``networks.py`` (VICO-UoE/DatasetCondensation).
Where the reference hard-codes a classifier size that only fits 1x28x28 and
3x32x32 input (MLP, LeNet, AlexNet, the ResNet ``avg_pool2d(out, 4)``), we size
the classifier from whatever map is left (the same rule as ConvNet's fix (a)),
so every model also runs on 3x28x28 and on small test images. On 1x28x28 and
3x32x32 the resulting layer sizes equal the reference's. VGG11 pools in
PyTorch's ``ceil_mode`` so its five 2x2 pools never reach a 0-pixel map (28 ->
14 -> 7 -> 4 -> 2 -> 1); on even sizes (32, and 1x28x28 padded to 32) that is
the reference's floor pooling. ResNet18 ends in a global average pool, which is
the reference's ``avg_pool2d(out, 4)`` on its 4x4 map at 28 and 32 pixels.
LeNet has no padding for 3-channel input, so it needs at least 16x16 images
(12x12 for 1 channel); smaller inputs raise ``ValueError``.

Batch-norm models (``norm="batch"``: ``ConvNet``, ``AlexNet``, ``VGG11``,
``ResNet18``) keep running statistics in the ``batch_stats`` collection. In
training mode they must be applied with that collection mutable::

  logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
  variables = {"params": new_params, **updates}

In eval mode (``train=False``, the default) they use the running averages and
need no ``mutable``. Running statistics follow PyTorch's momentum 0.1 (flax
``momentum=0.9``).

Architectures are also named by spec strings (:func:`get`, :func:`spec_of`):
``"convnet-d3-w128-instancenorm-avgpool"`` (or just ``"convnet"``), ``"mlp"``,
``"lenet"``, ``"alexnet"``, ``"vgg11"``, ``"vgg11-batchnorm"``, ``"resnet18"``,
``"resnet18-batchnorm"``; the reference's names (``ConvNetBN``, ``ConvNetD4``,
``VGG11BN``, ``ResNet18BN`` ...) are accepted too.
"""
from __future__ import annotations

import inspect
import math
import re
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

# The layers (jaxdd.layers) and the XLA:CPU convolution kernels
# (jaxdd._src.cpu_kernels) are re-exported here: jaxdd.models.TorchConv,
# jaxdd.models.instance_norm, jaxdd.models.loop_safe_conv, ... keep working.
from jaxdd._src.cpu_kernels import loop_safe_conv, policy_conv  # noqa: F401
from jaxdd.layers import (InstanceNorm, Norm, Pooling, TorchConv, TorchDense,  # noqa: F401
                          _check_images, _conv_out, _max_pool2, instance_norm, make_norm,
                          norm_relu_pool, pool, torch_uniform)


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
    _check_images(x, "ConvNet")
    for d in range(self.depth):
      # The reference pads the first conv by 3 for 1-channel input (28 -> 32).
      padding = 3 if (d == 0 and x.shape[-1] == 1) else 1
      x = TorchConv(self.width, padding=padding)(x)
      x = norm_relu_pool(x, self.norm, self.pooling, train)
    features = x.reshape(x.shape[0], -1)
    logits = TorchDense(self.num_classes)(features)
    return (features, logits) if return_features else logits


# ---------------------------------------------------------------------------
# Cross-architecture zoo (reference networks.py: MLP, LeNet, AlexNet, VGG11,
# ResNet18). Layer lists are the reference's; only the classifier sizing and
# the pooling edge cases differ, as the module docstring explains.
# ---------------------------------------------------------------------------


class MLP(nn.Module):
  """The reference MLP: flatten - fc 128 - relu - fc 128 - relu - fc classes.

  The first layer's width is taken from the flattened input (the reference
  hard-codes 28*28*1 or 32*32*3). ``features`` are the 128-d input of the last
  layer.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> net = MLP(num_classes=10)
    >>> params = net.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
    >>> net.apply(params, jnp.zeros((2, 28, 28, 1))).shape
    (2, 10)
  """
  num_classes: int

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False, return_features: bool = False):
    _check_images(x, "MLP")
    h = x.reshape(x.shape[0], -1)
    h = nn.relu(TorchDense(128)(h))
    features = nn.relu(TorchDense(128)(h))
    logits = TorchDense(self.num_classes)(features)
    return (features, logits) if return_features else logits


class LeNet(nn.Module):
  """The reference LeNet: conv 6@5x5 - relu - maxpool - conv 16@5x5 - relu -
  maxpool - fc 120 - relu - fc 84 - relu - fc classes.

  The first conv is padded by 2 for 1-channel input and not at all otherwise
  (as in the reference), so 1x28x28 and 3x32x32 both leave a 5x5x16 map (400
  features into fc 120). 3x28x28 leaves 4x4x16 = 256 (the reference breaks
  there). Needs H, W >= 16 for 3-channel and >= 12 for 1-channel input.
  ``features`` are the 84-d input of the last layer.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> net = LeNet(num_classes=10)
    >>> x = jnp.zeros((2, 32, 32, 3))
    >>> params = jax.eval_shape(net.init, jax.random.key(0), x)  # shapes only: nothing runs
    >>> jax.eval_shape(net.apply, params, x).shape
    (2, 10)
  """
  num_classes: int

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False, return_features: bool = False):
    _check_images(x, "LeNet")
    pad = 2 if x.shape[-1] == 1 else 0
    # Check the whole size chain up front so that the error names the input size.
    size = min(x.shape[1], x.shape[2])
    last = _conv_out(_conv_out(size, 5, pad) // 2, 5, 0) // 2
    if last < 1:
      need = 12 if pad else 16
      raise ValueError(f"LeNet needs images of at least {need}x{need} for {x.shape[-1]}-channel "
                       f"input, got {x.shape[1]}x{x.shape[2]}; use a larger image or another model")
    x = nn.relu(TorchConv(6, kernel_size=(5, 5), padding=pad)(x))
    x = _max_pool2(x, "LeNet")
    x = nn.relu(TorchConv(16, kernel_size=(5, 5), padding=0)(x))
    x = _max_pool2(x, "LeNet")
    h = x.reshape(x.shape[0], -1)
    h = nn.relu(TorchDense(120)(h))
    features = nn.relu(TorchDense(84)(h))
    logits = TorchDense(self.num_classes)(features)
    return (features, logits) if return_features else logits


class AlexNet(nn.Module):
  """The reference small-image AlexNet (``norm="batch"`` is its AlexNetBN).

  conv 128@5x5 (pad 4 for 1 channel, else 2) - relu - maxpool, conv 192@5x5
  pad 2 - relu - maxpool, conv 256@3x3 - relu, conv 192@3x3 - relu, conv
  192@3x3 - relu - maxpool, fc classes; with ``norm`` after every conv. 1x28x28
  and 3x32x32 leave 4x4x192 = 3072 features, 3x28x28 leaves 3x3x192 = 1728.
  Needs H, W >= 8.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> net = AlexNet(num_classes=10)
    >>> x = jnp.zeros((2, 28, 28, 1))
    >>> params = jax.eval_shape(net.init, jax.random.key(0), x)  # shapes only: nothing runs
    >>> feats, logits = jax.eval_shape(lambda p: net.apply(p, x, return_features=True), params)
    >>> feats.shape
    (2, 3072)
  """
  num_classes: int
  norm: str = "none"

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False, return_features: bool = False):
    _check_images(x, "AlexNet")
    first_pad = 4 if x.shape[-1] == 1 else 2
    layers = [(128, 5, first_pad, True), (192, 5, 2, True), (256, 3, 1, False),
              (192, 3, 1, False), (192, 3, 1, True)]
    for width, k, pad, pool_after in layers:
      x = TorchConv(width, kernel_size=(k, k), padding=pad)(x)
      x = nn.relu(make_norm(self.norm, width, train)(x))
      if pool_after:
        x = _max_pool2(x, "AlexNet")
    features = x.reshape(x.shape[0], -1)
    logits = TorchDense(self.num_classes)(features)
    return (features, logits) if return_features else logits


VGG11_CFG = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


class VGG11(nn.Module):
  """The reference VGG11 (instance norm) and VGG11BN (``norm="batch"``).

  cfg ``[64, M, 128, M, 256, 256, M, 512, 512, M, 512, 512, M]``: each number is
  conv 3x3 pad 1 (pad 3 for the first conv on 1-channel input) - norm - relu,
  each M a 2x2 max-pool; then fc classes. Pools use ``ceil_mode`` (see the
  module docstring), so any input up to 32x32 ends in a 1x1x512 map (512
  features, the reference's classifier size) and no input size breaks it.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> net = VGG11(num_classes=10)
    >>> x = jnp.zeros((1, 28, 28, 3))
    >>> params = jax.eval_shape(net.init, jax.random.key(0), x)  # shapes only: nothing runs
    >>> jax.eval_shape(net.apply, params, x).shape
    (1, 10)
  """
  num_classes: int
  norm: str = "instance"

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False, return_features: bool = False):
    _check_images(x, "VGG11")
    one_channel = x.shape[-1] == 1
    for i, item in enumerate(VGG11_CFG):
      if item == "M":
        x = _max_pool2(x, "VGG11", ceil=True)
        continue
      pad = 3 if (one_channel and i == 0) else 1
      x = TorchConv(item, padding=pad)(x)
      x = nn.relu(make_norm(self.norm, item, train)(x))
    # The reference ends with AvgPool2d(kernel_size=1, stride=1), an identity.
    features = x.reshape(x.shape[0], -1)
    logits = TorchDense(self.num_classes)(features)
    return (features, logits) if return_features else logits


class BasicBlock(nn.Module):
  """ResNet basic block: conv3x3(stride) - norm - relu - conv3x3 - norm, plus a
  shortcut (1x1 conv(stride) - norm when the shape changes), then relu. Convs
  have no bias, as in the reference."""
  planes: int
  stride: int = 1
  norm: str = "instance"

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    s = (self.stride, self.stride)
    out = TorchConv(self.planes, strides=s, padding=1, use_bias=False)(x)
    out = nn.relu(make_norm(self.norm, self.planes, train)(out))
    out = TorchConv(self.planes, padding=1, use_bias=False)(out)
    out = make_norm(self.norm, self.planes, train)(out)
    shortcut = x
    if self.stride != 1 or x.shape[-1] != self.planes:
      shortcut = TorchConv(self.planes, kernel_size=(1, 1), strides=s, padding=0, use_bias=False)(x)
      shortcut = make_norm(self.norm, self.planes, train)(shortcut)
    return nn.relu(out + shortcut)


class ResNet18(nn.Module):
  """The reference ResNet18 (instance norm) and ResNet18BN (``norm="batch"``).

  Stem conv 3x3@64 stride 1 (no bias) - norm - relu, then BasicBlock stages
  [2, 2, 2, 2] of widths 64/128/256/512 with strides 1/2/2/2, a global average
  pool and fc classes. The global pool equals the reference's
  ``avg_pool2d(out, 4)`` on its 4x4 map at 28 and 32 pixels and also works on
  small images (features are always 512-d).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> net = ResNet18(num_classes=10)
    >>> x = jnp.zeros((1, 16, 16, 3))
    >>> params = jax.eval_shape(net.init, jax.random.key(0), x)  # shapes only: nothing runs
    >>> jax.eval_shape(net.apply, params, x).shape
    (1, 10)
  """
  num_classes: int
  norm: str = "instance"

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False, return_features: bool = False):
    _check_images(x, "ResNet18")
    x = TorchConv(64, padding=1, use_bias=False)(x)
    x = nn.relu(make_norm(self.norm, 64, train)(x))
    for planes, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
      x = BasicBlock(planes, stride, self.norm)(x, train=train)
      x = BasicBlock(planes, 1, self.norm)(x, train=train)
    features = jnp.mean(x, axis=(1, 2))
    logits = TorchDense(self.num_classes)(features)
    return (features, logits) if return_features else logits


# ---------------------------------------------------------------------------
# Spec strings
# ---------------------------------------------------------------------------

_NORM_TOKENS = {"instance": "instancenorm", "batch": "batchnorm", "layer": "layernorm",
                "group": "groupnorm", "none": "nonorm"}
_POOL_TOKENS = {"avg": "avgpool", "max": "maxpool", "none": "nopool"}
_TOKEN_NORMS = {v: k for k, v in _NORM_TOKENS.items()}
_TOKEN_POOLS = {v: k for k, v in _POOL_TOKENS.items()}
# Zoo models with a norm field, and their reference default norm.
_ZOO_NORM_DEFAULT = {"alexnet": "none", "vgg11": "instance", "resnet18": "instance"}
_ZOO_CLASSES = {"mlp": MLP, "lenet": LeNet, "alexnet": AlexNet, "vgg11": VGG11,
                "resnet18": ResNet18}
# Reference (networks.py / get_network) names, lower-cased, as spec strings.
_REFERENCE_ALIASES = {
    "convnetbn": "convnet-batchnorm", "convnetin": "convnet-instancenorm",
    "convnetln": "convnet-layernorm", "convnetgn": "convnet-groupnorm",
    "convnetnn": "convnet-nonorm", "convnetap": "convnet-avgpool",
    "convnetmp": "convnet-maxpool", "convnetnp": "convnet-nopool",
    "alexnetbn": "alexnet-batchnorm", "vgg11bn": "vgg11-batchnorm",
    "resnet18bn": "resnet18-batchnorm",
}

VALID_SPECS = (
    "convnet[-d<depth>][-w<width>][-<instancenorm|batchnorm|layernorm|groupnorm|nonorm>]"
    "[-<avgpool|maxpool|nopool>] (any order; defaults d3, w128, instancenorm, avgpool), "
    "mlp, lenet, alexnet[-<norm>], vgg11[-<norm>], resnet18[-<norm>], or a reference "
    "name such as ConvNetBN, ConvNetD4, ConvNetW64, AlexNetBN, VGG11BN, ResNet18BN")


def _spec_error(spec: str, why: str) -> ValueError:
  return ValueError(f"bad architecture spec {spec!r}: {why}. Valid forms: {VALID_SPECS}")


def get(spec: str, *, num_classes: int) -> nn.Module:
  """Builds a model from an architecture spec string.

  Args:
    spec: e.g. ``"convnet"``, ``"convnet-d3-w128-instancenorm-avgpool"``,
      ``"convnet-w64-batchnorm"``, ``"mlp"``, ``"lenet"``, ``"alexnet"``,
      ``"vgg11"``, ``"vgg11-batchnorm"``, ``"resnet18"``,
      ``"resnet18-batchnorm"``, or a reference name (``"ConvNetBN"``,
      ``"ConvNetD4"``, ``"ResNet18BN"`` ...). Case-insensitive.
    num_classes: number of output logits.

  Returns:
    The (unbound) Flax module; ``get(spec_of(m), num_classes=m.num_classes) == m``.

  Raises:
    ValueError: unknown or malformed spec (the message lists the valid forms),
      or ``num_classes < 1``.

  Example:
    >>> get("convnet-d2-w64", num_classes=10)
    ConvNet(
        # attributes
        num_classes = 10
        depth = 2
        width = 64
        norm = 'instance'
        pooling = 'avg'
    )
  """
  if not isinstance(num_classes, int) or num_classes < 1:
    raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
  if not isinstance(spec, str):
    raise _spec_error(str(spec), "a spec is a string")
  s = spec.strip().lower()
  s = _REFERENCE_ALIASES.get(s, s)
  m = re.fullmatch(r"convnet([dw])(\d+)", s)  # reference ConvNetD4 / ConvNetW64
  if m:
    s = f"convnet-{m.group(1)}{m.group(2)}"
  name, *tokens = s.split("-")
  if name == "convnet":
    kw: dict[str, Any] = {}
    for tok in tokens:
      if re.fullmatch(r"d\d+", tok):
        key, val = "depth", int(tok[1:])
      elif re.fullmatch(r"w\d+", tok):
        key, val = "width", int(tok[1:])
      elif tok in _TOKEN_NORMS:
        key, val = "norm", _TOKEN_NORMS[tok]
      elif tok in _TOKEN_POOLS:
        key, val = "pooling", _TOKEN_POOLS[tok]
      else:
        raise _spec_error(spec, f"unknown convnet option {tok!r}")
      if key in kw:
        raise _spec_error(spec, f"{key} given twice")
      if key in ("depth", "width") and val < 1:
        raise _spec_error(spec, f"{key} must be >= 1")
      kw[key] = val
    return ConvNet(num_classes=num_classes, **kw)
  if name in ("mlp", "lenet"):
    if tokens:
      raise _spec_error(spec, f"{name} takes no options")
    return _ZOO_CLASSES[name](num_classes=num_classes)
  if name in _ZOO_NORM_DEFAULT:
    if len(tokens) > 1 or (tokens and tokens[0] not in _TOKEN_NORMS):
      raise _spec_error(spec, f"{name} takes at most one norm option")
    norm = _TOKEN_NORMS[tokens[0]] if tokens else _ZOO_NORM_DEFAULT[name]
    return _ZOO_CLASSES[name](num_classes=num_classes, norm=norm)
  raise _spec_error(spec, f"unknown architecture {name!r}")


def spec_of(model: nn.Module) -> str:
  """The canonical spec string of a model built by this module.

  ConvNets always spell out all four options
  (``"convnet-d3-w128-instancenorm-avgpool"``) so logs and result tables never
  depend on defaults; zoo models add a norm option only when it differs from
  the reference's (``"vgg11"``, ``"vgg11-batchnorm"``).

  Args:
    model: a ``ConvNet``, ``MLP``, ``LeNet``, ``AlexNet``, ``VGG11`` or
      ``ResNet18``.

  Returns:
    A string ``s`` with ``get(s, num_classes=model.num_classes) == model``.

  Raises:
    ValueError: any other module, or a norm/pooling value with no spec.

  Example:
    >>> spec_of(ConvNet(num_classes=10))
    'convnet-d3-w128-instancenorm-avgpool'
  """
  if isinstance(model, ConvNet):
    if model.norm not in _NORM_TOKENS or model.pooling not in _POOL_TOKENS:
      raise ValueError(f"ConvNet norm {model.norm!r} / pooling {model.pooling!r} has no spec; "
                       f"use norm in {sorted(_NORM_TOKENS)} and pooling in {sorted(_POOL_TOKENS)}")
    return (f"convnet-d{model.depth}-w{model.width}-{_NORM_TOKENS[model.norm]}-"
            f"{_POOL_TOKENS[model.pooling]}")
  for name, cls in _ZOO_CLASSES.items():
    if type(model) is cls:
      if name not in _ZOO_NORM_DEFAULT or model.norm == _ZOO_NORM_DEFAULT[name]:
        return name
      if model.norm not in _NORM_TOKENS:
        raise ValueError(f"{cls.__name__} norm {model.norm!r} has no spec; use one of "
                         f"{sorted(_NORM_TOKENS)}")
      return f"{name}-{_NORM_TOKENS[model.norm]}"
  raise ValueError(f"spec_of does not know {type(model).__name__}; it covers ConvNet, MLP, "
                   "LeNet, AlexNet, VGG11 and ResNet18")


def feature_fn(model: nn.Module, variables: Any) -> Callable[[jax.Array], jax.Array]:
  """``embed(images) -> features``: a model's features under jaxdd's one model contract.

  The contract: a model is a ``flax.linen`` Module whose ``__call__(x, ...)`` maps NHWC
  images to logits; when it takes ``return_features=True`` it returns ``(features,
  logits)`` (every model here), and any other module's output is taken as its features.
  A model with running statistics (``batch_stats``) embeds in training mode with the
  batch's statistics, as the reference's DM does. Distribution matching (:func:`jaxdd.dm`)
  matches these features; :func:`jaxdd.matching.dm_loss` takes such a function as its
  ``embed_fn``, so your loop and the distiller read a model the same way.

  Args:
    model: the Module.
    variables: its variables (``{"params": ...}``, and ``batch_stats`` if it has them).

  Returns:
    A pure function of the images (jittable, differentiable in the images).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> m = ConvNet(10, depth=1, width=8)
    >>> v = m.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
    >>> feature_fn(m, v)(jnp.ones((2, 8, 8, 3))).shape
    (2, 128)
  """
  try:
    accepts = set(inspect.signature(model.__call__).parameters)
  except (TypeError, ValueError):
    accepts = set()
  kw = {"return_features": True} if "return_features" in accepts else {}
  train = {"train": True} if "train" in accepts else {}

  def embed(images):
    if "batch_stats" in variables:
      out, _ = model.apply(variables, images, mutable=["batch_stats"], **kw, **train)
    else:
      out = model.apply(variables, images, **kw)
    return out[0] if kw else out
  return embed


def param_count(params: Any) -> int:
  """Number of scalars in a parameter pytree.

  Args:
    params: the ``params`` collection, or a whole ``variables`` dict from
      ``model.init`` (then only its ``"params"`` entry is counted, so batch-norm
      running statistics are excluded).

  Returns:
    The total element count.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> v = ConvNet(num_classes=10).init(jax.random.key(0), jnp.zeros((1, 28, 28, 3)))
    >>> param_count(v)
    311050
  """
  if isinstance(params, Mapping) and "params" in params:
    params = params["params"]
  return int(sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(params)))


def check_fits(model: nn.Module, image_shape: tuple[int, ...]) -> None:
  """Refuses a model whose layers reduce ``image_shape`` to nothing.

  A ConvNet of depth 5 halves a 28x28 image five times (28, 14, 7, 3, 1, 0): its
  features are empty and it would train to a constant (10 % accuracy) without a
  word. Checked by shape inference only (``jax.eval_shape``: no compute): any
  parameter with a zero-sized dimension means the input was pooled away.

  Args:
    model: any Flax module of this package.
    image_shape: (H, W, C) of one image.

  Raises:
    ValueError: the message names the model, the image size and the fix.

  Example:
    >>> check_fits(ConvNet(10, depth=4), (28, 28, 3))
    >>> check_fits(ConvNet(10, depth=5), (28, 28, 3))
    Traceback (most recent call last):
    ...
    ValueError: model convnet-d5-w128-instancenorm-avgpool pools a 28x28 image down to nothing (an empty feature map); use a shallower network (e.g. depth <= 4 for 28x28 images)
  """
  h, w = int(image_shape[0]), int(image_shape[1])
  x = jax.ShapeDtypeStruct((1,) + tuple(int(s) for s in image_shape), jnp.float32)
  try:
    shapes = jax.eval_shape(lambda v: model.init(jax.random.key(0), v), x)
  except (ValueError, TypeError) as e:
    raise ValueError(f"model {spec_of(model)} does not accept {h}x{w} images: {e}") from e
  if any(0 in leaf.shape for leaf in jax.tree.leaves(shapes)):
    fix = "use a shallower network"
    if isinstance(model, ConvNet):
      max_depth = max(0, int(math.floor(math.log2(min(h, w)))))
      fix += f" (e.g. depth <= {max_depth} for {h}x{w} images)"
    raise ValueError(f"model {spec_of(model)} pools a {h}x{w} image down to nothing (an empty "
                     f"feature map); {fix}")
