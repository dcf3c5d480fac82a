"""Plain pytree containers shared by every module of jaxdd.

They are ``NamedTuple``s so that they are pytrees, can cross ``jax.jit`` and
``jax.vmap`` boundaries, and carry no behaviour of their own.

Data contract: images are NHWC float32. Real images leave the dataset builders in
[0, 1]; distillation and evaluation work in the *normalised* space
(``(x - mean) / std`` per channel, see :func:`jaxdd.data.normalize`), exactly as
the PyTorch reference does (docs/protocols.md).
"""
from __future__ import annotations

from typing import NamedTuple

import jax


class SynSet(NamedTuple):
  """A synthetic set: ``images`` (num_classes * ipc, H, W, C) and ``labels``.

  Rows are laid out class by class, as in the reference: class ``c`` owns rows
  ``c * ipc ... (c + 1) * ipc - 1``.
  """
  images: jax.Array
  labels: jax.Array


class Batch(NamedTuple):
  """A labelled batch with optional bias annotations.

  ``bias`` and ``aligned`` are only used for *measuring* (per-group accuracy,
  diagnostics); the method itself never reads them.
  """
  images: jax.Array
  labels: jax.Array
  bias: jax.Array | None = None
  aligned: jax.Array | None = None
