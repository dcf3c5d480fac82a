"""The surrogate network (ConvNet encoder + projection head) and its frozen config."""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdd import models, presets
from jaxdd.protocols import Protocol


# ---------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------


class Surrogate(nn.Module):
  """ConvNet encoder + 2-layer projection head, L2-normalised output.

  The encoder is :class:`jaxdd.models.ConvNet` (``depth`` x [conv3x3 - norm -
  relu - pool]); its ``return_features=True`` feature (dimension ``d``) feeds
  Linear(d, d) - ReLU - Linear(d, proj_dim), as in ``SupConResNet`` of
  ``HobbitLong/SupContrast``. The ConvNet's own 1-way classifier is created
  but never used (its output is discarded; it only adds ``d + 1`` parameters).

  Attributes:
    encoder_width: channels of every conv layer.
    depth: number of conv blocks.
    norm: ``instance`` (default), ``batch``, ``layer``, ``group`` or ``none``.
    pooling: ``avg`` (default), ``max`` or ``none``.
    proj_dim: output dimension of the projection head.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> net = Surrogate(encoder_width=8, depth=2, proj_dim=16)
    >>> variables = net.init(jax.random.key(0), jnp.zeros((1, 12, 12, 3)))
    >>> feats, z = net.apply(variables, jnp.ones((2, 12, 12, 3)), return_features=True)
    >>> feats.shape, z.shape
    ((2, 72), (2, 16))
  """
  encoder_width: int = 128
  depth: int = 3
  norm: str = "instance"
  pooling: str = "avg"
  proj_dim: int = 128

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False, return_features: bool = False):
    feats, _ = models.ConvNet(num_classes=1, depth=self.depth, width=self.encoder_width,
                              norm=self.norm, pooling=self.pooling, name="encoder")(
                                  x, train=train, return_features=True)
    d = feats.shape[-1]
    h = models.TorchDense(d, name="head_hidden")(feats)
    h = nn.relu(h)
    z = models.TorchDense(self.proj_dim, name="head_out")(h)
    z = _l2_normalize(z)
    return (feats, z) if return_features else z


def _l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  # eps keeps an all-zero row finite (it stays 0) instead of producing NaN.
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


# ---------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class SurrogateConfig:
  """Everything that defines a surrogate run (hashable, so it can key caches; a static pytree,
  so it passes through ``jax.jit`` as an argument, one program per distinct config).

  Defaults are the ``long`` preset: docs/protocols.md
  (ConvNet-3 width 128, instance norm, projection 128, t = 0.07, 20 epochs,
  batch 256, SGD lr 0.05 momentum 0.9 weight decay 1e-4, cosine schedule,
  random-resized-crop scale 0.5-1, no flip for digits).

  Use :meth:`preset` for the ``cpu`` and ``smoke`` scales and
  ``dataclasses.replace(cfg, field=value)`` to override single fields.

  Attributes:
    width, depth, norm, pooling, proj_dim: the :class:`Surrogate` architecture.
    temperature: SupCon temperature.
    epochs: passes over the training set.
    steps: a budget of SGD steps instead of epochs (None: use ``epochs``).
      :meth:`for_size` turns it into ``max(1, round(steps / steps_per_epoch))``
      epochs for a training set, so one preset fits datasets of any size.
    batch_size: images per step (each gives two views, so 2x embeddings).
    learning_rate, momentum, weight_decay: SGD with decoupled-as-in-PyTorch
      L2 weight decay (added to the gradient before momentum).
    schedule: ``cosine`` (decay to 0 over all steps) or ``constant``.
    crop_scale: (min, max) area fraction of the random-resized crop.
    crop_ratio: (min, max) aspect ratio w/h of the crop (log-uniform).
    flip: random horizontal flips (off by default: digits are not symmetric).
  """
  width: int = 128
  depth: int = 3
  norm: str = "instance"
  pooling: str = "avg"
  proj_dim: int = 128
  temperature: float = 0.07
  epochs: int = 20
  batch_size: int = 256
  learning_rate: float = 0.05
  momentum: float = 0.9
  weight_decay: float = 1e-4
  schedule: str = "cosine"
  crop_scale: tuple[float, float] = (0.5, 1.0)
  crop_ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
  flip: bool = False
  steps: int | None = None

  def __post_init__(self):
    for name in ("width", "depth", "proj_dim", "epochs", "batch_size"):
      v = getattr(self, name)
      if not (isinstance(v, int) and v >= 1):
        raise ValueError(f"SurrogateConfig.{name} must be an integer >= 1, got {v!r}")
    if self.steps is not None and not (isinstance(self.steps, int) and self.steps >= 1):
      raise ValueError(f"SurrogateConfig.steps must be an integer >= 1 or None, got {self.steps!r}")
    if not (math.isfinite(self.temperature) and self.temperature > 0):
      raise ValueError(f"SurrogateConfig.temperature must be > 0, got {self.temperature!r}")
    if not self.learning_rate > 0:
      raise ValueError(f"SurrogateConfig.learning_rate must be > 0, got {self.learning_rate!r}")
    if self.schedule not in ("cosine", "constant"):
      raise ValueError(f"SurrogateConfig.schedule must be 'cosine' or 'constant', got {self.schedule!r}")
    lo, hi = self.crop_scale
    if not 0 < lo <= hi <= 1:
      raise ValueError(f"SurrogateConfig.crop_scale must satisfy 0 < min <= max <= 1, got {self.crop_scale}")
    rlo, rhi = self.crop_ratio
    if not 0 < rlo <= rhi:
      raise ValueError(f"SurrogateConfig.crop_ratio must satisfy 0 < min <= max, got {self.crop_ratio}")
    # Tuples (not lists) keep the dataclass hashable.
    object.__setattr__(self, "crop_scale", (float(lo), float(hi)))
    object.__setattr__(self, "crop_ratio", (float(rlo), float(rhi)))

  @classmethod
  def preset(cls, name: str, **overrides: Any) -> "SurrogateConfig":
    """A named scale from :data:`jaxdd.presets.SURROGATE`.

    * ``cpu``: ConvNet-3 width 32, batch 256, a budget of 210 SGD steps:
      15 epochs of the embedded CMNIST (3,600 images of 28x28x3, 14 steps an
      epoch), 1 epoch of Fashion-MNIST; minutes on a 2-core CPU.
    * ``paper``: the same short surrogate, the one validation chose at the
      paper's scale (:data:`jaxdd.presets.SURROGATE`).
    * ``long``: the defaults above (width 128, 20 epochs), whose long SupCon
      training erases the density contrast the KDE weights need.
    * ``smoke``: width 8, depth 2, projection 32, 2 epochs, batch 64; seconds.

    Args:
      name: preset name.
      **overrides: fields to change after applying the preset; an explicit
        ``epochs`` replaces the preset's step budget.

    Returns:
      A ``SurrogateConfig``.

    Example:
      >>> SurrogateConfig.preset('cpu', epochs=5).width
      32
    """
    if name not in presets.SURROGATE:
      raise ValueError(f"unknown surrogate preset {name!r}; use one of {sorted(presets.SURROGATE)}")
    fields = dict(presets.SURROGATE[name])
    if "epochs" in overrides and "steps" not in overrides:
      fields.pop("steps", None)
    return cls(**{**fields, **overrides})

  def for_size(self, num_examples: int) -> "SurrogateConfig":
    """This config for a training set of ``num_examples`` images: a step budget
    becomes epochs (at least one); a config without one is returned unchanged.

    Example:
      >>> cfg = SurrogateConfig.preset('cpu')
      >>> cfg.for_size(3600).epochs, cfg.for_size(54000).epochs, cfg.for_size(54000).steps
      (15, 1, None)
    """
    if self.steps is None:
      return self
    per_epoch = max(1, int(num_examples) // self.batch_size)
    return dataclasses.replace(self, epochs=max(1, round(self.steps / per_epoch)), steps=None)

  def protocol(self) -> Protocol:
    """The training recipe as a :class:`~jaxdd.protocols.Protocol` for jaxdd's trainer:
    ``epochs`` epochs of SGD (momentum, coupled weight decay) with the cosine
    (to 0 over all steps) or constant lr, every epoch's last partial batch
    dropped. Call :meth:`for_size` first when the config has a step budget.

    Example:
      >>> p = SurrogateConfig.preset('smoke').protocol()
      >>> p.num_epochs, p.schedule, p.drop_last, p.augment
      (2, 'cosine', True, None)
    """
    if self.steps is not None:
      raise ValueError("this config has a step budget (steps=...); turn it into epochs for a "
                       "training set with config.for_size(num_examples) first")
    # Protocol.epochs is the reference's `Epoch`: it trains epochs + 1 epochs.
    return Protocol("surrogate", epochs=self.epochs - 1, lr=self.learning_rate,
                    momentum=self.momentum, weight_decay=self.weight_decay,
                    batch_size=self.batch_size, decay_at=None,
                    schedule="cosine" if self.schedule == "cosine" else "step", drop_last=True)

  def model(self) -> Surrogate:
    """The :class:`Surrogate` module this config describes."""
    return Surrogate(encoder_width=self.width, depth=self.depth, norm=self.norm,
                     pooling=self.pooling, proj_dim=self.proj_dim)

  def to_dict(self) -> dict[str, Any]:
    """JSON-ready dict of every field (tuples become lists; ``steps`` only when set)."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()
            if not (k == "steps" and v is None)}
