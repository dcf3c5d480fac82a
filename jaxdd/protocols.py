"""Evaluation protocols: the frozen recipes every reported number is stamped with.

A :class:`Protocol` fixes the optimiser, schedule, batch size and augmentation
of the networks trained on a synthetic set; :data:`PROTOCOLS` names the
standard ones and :func:`get_protocol` looks them up. The trainer that runs a
protocol is :mod:`jaxdd.train`. The recipe is the reference's
``evaluate_synset`` (docs/protocols.md §2):

* SGD, momentum 0.9, weight decay 5e-4, lr 0.01, batch 256, cross-entropy.
  Weight decay is PyTorch's *coupled* form (``grad + wd * param``) on every
  parameter, biases and norm affines included, as ``torch.optim.SGD`` does;
  the update is optax's (:func:`jaxdd.train.torch_sgd`).
* The reference loops ``for ep in range(Epoch + 1)``, i.e. it trains
  **Epoch + 1 epochs**; we copy that (:attr:`Protocol.num_epochs`).
* After epoch ``Epoch // 2 + 1`` the lr is multiplied by 0.1 and the reference
  builds a *new* ``torch.optim.SGD``, which throws the momentum buffers away.
  We do exactly that: the optimiser state is re-initialised at the start of
  epoch ``Epoch // 2 + 2`` (the first step after a reset is ``buf = d_p``,
  which is torch's first-step rule).
* Each epoch visits a fresh random permutation (``fold_in(key, epoch)``) in
  batches of 256 and, like ``DataLoader(shuffle=True, drop_last=False)``,
  keeps the last partial batch. Shapes are static, so the partial batch gets
  its own compiled step of its true (static) size ``n % 256`` instead of being
  padded and masked: the math is a real partial batch (batch-norm statistics
  included), and an IPC-10 set (100 images) costs one 100-image step per epoch
  rather than a padded 256-image one.
* Other recipes set two more fields: ``schedule="cosine"`` (the lr decays to 0
  along a per-step cosine, ``optax.cosine_decay_schedule``) and
  ``drop_last=True`` (every epoch drops the permutation's last
  ``n % batch_size`` samples: one batch shape, no small last batch). The
  surrogate's SupCon recipe (:meth:`jaxdd.surrogate.SurrogateConfig.protocol`)
  uses both; the evaluation protocols use neither.
* DSA augmentation in every training batch when the protocol names a strategy,
  in the reference's evaluation mode (non-siamese: one family per batch,
  per-sample parameters; :func:`jaxdd.augment.dsa` with ``siamese=False``).
* Prediction in eval mode (batch-norm running averages), no augmentation, in
  blocks of ``test_batch_size`` inside a compiled ``lax.map``. Predictions do
  not depend on the block size (every supported norm is per-sample in eval
  mode).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax

from jaxdd import presets
from jaxdd.presets import DSA_STRATEGY


#: The lr schedules of a :class:`Protocol`.
SCHEDULES = ("step", "cosine")


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class Protocol:
  """A frozen training recipe: the evaluation protocols (every number jaxdd reports is
  stamped with one) and the surrogate's (:meth:`jaxdd.surrogate.SurrogateConfig.protocol`).

  A static pytree (no leaves): it passes through ``jax.jit`` as an argument, and each
  distinct protocol compiles its own program (its epochs and batch size fix the shapes).

  Attributes:
    name: registry name (``"dm"``, ``"dsa"``, ``"dc"``, ``"cpu"``, ``"smoke"``).
    epochs: the reference's ``Epoch``; training runs ``epochs + 1`` epochs.
    lr: initial learning rate.
    momentum: SGD momentum.
    weight_decay: coupled (PyTorch-style) weight decay on every parameter.
    batch_size: training batch size; the last partial batch is kept unless
      ``drop_last``.
    decay_at: ``"half"`` (after epoch ``epochs // 2 + 1``, the reference), an
      int epoch index after which to decay, or ``None`` (no decay).
    lr_decay_factor: the lr multiplier at the decay (0.1).
    reset_momentum: zero the momentum buffers at the decay, as the reference's
      optimizer re-creation does.
    augment: DSA strategy string (non-siamese, per-sample parameters), a
      callable ``f(key, images)`` applied to every training batch, or
      ``None`` for no augmentation.
    test_batch_size: block size for testing (no effect on the numbers).
    schedule: ``"step"`` (the lr is constant apart from the ``decay_at``
      step) or ``"cosine"`` (per step from ``lr`` down to 0 over all
      ``num_epochs`` epochs; needs ``decay_at=None``).
    drop_last: drop each epoch's last partial batch (``DataLoader(drop_last=True)``);
      needs at least ``batch_size`` training samples.
    min_samples: the fewest training images a network is shown, counted over its epochs
      (0: no minimum). On a training set too small for ``epochs + 1`` epochs to reach it,
      the trainer raises ``epochs`` to the fewest that do (:meth:`sized`; the decay stays
      at half of them). It gives sets of every size the same training: 50,000 trains an
      IPC-10 set of 100 images 500 epochs of one step each, an IPC-50 set 100 epochs of
      two.
  """
  name: str
  epochs: int
  lr: float = 0.01
  momentum: float = 0.9
  weight_decay: float = 5e-4
  batch_size: int = 256
  decay_at: str | int | None = "half"
  lr_decay_factor: float = 0.1
  reset_momentum: bool = True
  augment: Any = None
  test_batch_size: int = 256
  schedule: str = "step"
  drop_last: bool = False
  min_samples: int = 0

  def __post_init__(self):
    if not isinstance(self.epochs, int) or self.epochs < 0:
      raise ValueError(f"Protocol.epochs must be an int >= 0, got {self.epochs!r}")
    for field in ("batch_size", "test_batch_size"):
      v = getattr(self, field)
      if not isinstance(v, int) or v < 1:
        raise ValueError(f"Protocol.{field} must be a positive int, got {v!r}")
    if not (self.lr > 0 and math.isfinite(self.lr)):
      raise ValueError(f"Protocol.lr must be positive and finite, got {self.lr!r}")
    if not 0 <= self.momentum < 1:
      raise ValueError(f"Protocol.momentum must be in [0, 1), got {self.momentum!r}")
    if not (self.weight_decay >= 0 and math.isfinite(self.weight_decay)):
      raise ValueError(f"Protocol.weight_decay must be >= 0, got {self.weight_decay!r}")
    if not (self.decay_at is None or self.decay_at == "half"
            or (isinstance(self.decay_at, int) and self.decay_at >= 0)):
      raise ValueError(f"Protocol.decay_at must be 'half', an epoch index >= 0 or None, "
                       f"got {self.decay_at!r}")
    if self.augment is not None and not callable(self.augment) and (
        not isinstance(self.augment, str) or not self.augment):
      raise ValueError(f"Protocol.augment must be a DSA strategy string such as "
                       f"{DSA_STRATEGY!r}, an augmentation f(key, images) or None, got "
                       f"{self.augment!r}")
    if self.schedule not in SCHEDULES:
      raise ValueError(f"Protocol.schedule must be one of {SCHEDULES}, got {self.schedule!r}")
    if self.schedule == "cosine" and self.decay_at is not None:
      raise ValueError("Protocol.schedule='cosine' decays the lr by itself; set decay_at=None "
                       f"(got decay_at={self.decay_at!r})")
    if not isinstance(self.min_samples, int) or isinstance(self.min_samples, bool) \
        or self.min_samples < 0:
      raise ValueError(f"Protocol.min_samples must be an int >= 0, got {self.min_samples!r}")
    if not isinstance(self.drop_last, bool):
      raise ValueError(f"Protocol.drop_last must be True or False, got {self.drop_last!r}")

  @property
  def num_epochs(self) -> int:
    """Epochs actually trained: ``epochs + 1`` (the reference's ``range(Epoch+1)``)."""
    return self.epochs + 1

  @property
  def decay_epoch(self) -> int | None:
    """Index of the epoch *after* which the lr decays (``None``: never)."""
    if self.decay_at == "half":
      return self.epochs // 2 + 1
    return self.decay_at

  def steps_per_epoch(self, n: int) -> int:
    """SGD steps in one epoch over ``n`` training samples."""
    full, rest = divmod(n, self.batch_size)
    return full + (rest > 0 and not self.drop_last)

  def sized(self, n: int) -> Protocol:
    """This protocol for a training set of ``n`` samples: with ``min_samples``, ``epochs``
    raised to the fewest that show at least ``min_samples`` images; otherwise itself.

    >>> p = Protocol("p", epochs=100, min_samples=50_000)
    >>> p.sized(100).num_epochs, p.sized(100).steps_per_epoch(100)  # IPC 10: 500 steps
    (500, 1)
    >>> p.sized(500) is p  # IPC 50: 101 epochs of 2 steps already show 50,500 images
    True
    """
    seen = n - (n % self.batch_size if self.drop_last else 0)  # images shown an epoch
    if not self.min_samples or not seen:
      return self
    epochs = max(self.epochs, -(-self.min_samples // seen) - 1)
    return self if epochs == self.epochs else dataclasses.replace(self, epochs=epochs)

  @property
  def standard(self) -> bool:
    """True when this equals the registry entry of the same name (not modified), or is that
    entry sized for a training set (:meth:`sized`)."""
    entry = PROTOCOLS.get(self.name)
    return entry == self or (entry is not None and entry.min_samples > 0
                             and self.epochs > entry.epochs
                             and dataclasses.replace(self, epochs=entry.epochs) == entry)

  def replace(self, **changes) -> Protocol:
    """A copy with some fields changed (the stamp then shows ``standard: False``)."""
    return dataclasses.replace(self, **changes)

  def to_dict(self) -> dict[str, Any]:
    """All fields plus the derived ``num_epochs``, ``decay_epoch`` and ``standard``."""
    d = dataclasses.asdict(self)
    if not self.min_samples:  # as before the field existed: other protocols' records unchanged
      del d["min_samples"]
    d.update(num_epochs=self.num_epochs, decay_epoch=self.decay_epoch, standard=self.standard)
    return d


#: The named protocols, built from :data:`jaxdd.presets.PROTOCOL` (the one
#: registry of presets): the reference's 'dm', 'dsa', 'dc'; 'cpu' (41 epochs)
#: and 'cpu300' (301 epochs) for a 2-core CPU, stamped as such and not
#: comparable with 'dm' numbers; 'smoke' for tests.
PROTOCOLS: dict[str, Protocol] = {name: Protocol(name, **fields)
                                  for name, fields in presets.PROTOCOL.items()}


def get_protocol(name: str | Protocol) -> Protocol:
  """Looks a protocol up by name (a :class:`Protocol` is returned unchanged).

  Args:
    name: one of ``PROTOCOLS`` (``"dm"``, ``"dsa"``, ``"dc"``, ``"cpu"``,
      ``"smoke"``), or a Protocol.

  Returns:
    The frozen :class:`Protocol`.

  Raises:
    ValueError: unknown name (the message lists the known ones).

  Example:
    >>> get_protocol("dm").num_epochs
    1001
  """
  if isinstance(name, Protocol):
    return name
  if name not in PROTOCOLS:
    raise ValueError(f"unknown evaluation protocol {name!r}; use one of {sorted(PROTOCOLS)} "
                     "or build a Protocol(...)")
  return PROTOCOLS[name]
