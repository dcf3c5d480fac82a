"""Supervised-contrastive (SupCon) surrogate whose embeddings feed the KDE weights.

The bias-aware reweighting of Cui et al. (ICML 2024) estimates a kernel density
over the embeddings of a SupCon model trained on the *biased* training set
(docs/protocols.md). Bias-aligned samples of a
class share the easy bias feature (digit colour, background colour), so they
form a dense cluster; the few bias-conflicting samples sit apart and get a low
density, hence a large normalised inverse-density weight.

Data contract:
  * ``images``: (N, H, W, C) float32, NHWC, finite. The surrogate uses them as
    given (no internal normalisation); :func:`embed` must receive the same
    preprocessing as :func:`train_surrogate` did. The dataset builders give
    [0, 1] images; we train and embed on those.
  * ``labels``: (N,) integers in ``[0, num_classes)``.
  * Embeddings: (N, proj_dim) float32, L2-normalised rows (projection space),
    or L2-normalised pre-head encoder features (``space='encoder'``).
  * "params" everywhere means the full flax variables dict returned by
    ``Surrogate.init`` (``{'params': ...}``, plus ``'batch_stats'`` when
    ``norm='batch'``).

The pieces (one submodule each: ``loss``, ``model``, ``training``, ``cache``):
  * :func:`supcon_loss`: the SupCon "L_out" loss (Khosla et al., 2020).
  * :class:`Surrogate`: ConvNet encoder (``jaxdd.models.ConvNet`` features)
    + 2-layer projection head Linear(d, d)-ReLU-Linear(d, proj_dim), with an
    L2-normalised output, as in ``HobbitLong/SupContrast`` ``SupConResNet``.
  * :func:`~jaxdd.augment.random_resized_crop` and
    :func:`~jaxdd.augment.two_views`: the augmentation (they live in
    :mod:`jaxdd.augment` and are re-exported here).
  * :func:`train_surrogate`: :func:`supcon_task` trained by jaxdd's one
    trainer (:func:`jaxdd.train.fit_epochs`) under
    :meth:`SurrogateConfig.protocol` (SGD + momentum, cosine schedule, last
    partial batch dropped); one compiled program per epoch on accelerators,
    one compiled step per batch driven from the host on CPU, where XLA runs
    backward convolutions inside a scan far slower (jax-ml/jax#12868).
  * :func:`embed`: blocked inference.
  * :func:`load_or_train`: a verified on-disk cache of params + embeddings.
"""
from __future__ import annotations

from jaxdd.augment import random_resized_crop, two_views  # re-exported: part of this API
from jaxdd.surrogate.cache import CACHE_VERSION, SurrogateArtifact, cache_root, load_or_train
from jaxdd.surrogate.loss import supcon_loss
from jaxdd.surrogate.model import Surrogate, SurrogateConfig
from jaxdd.surrogate.training import (LOOPS, TrainState, embed, make_optimizer, supcon_task,
                                     train_surrogate)

__all__ = [
    "supcon_loss",
    "Surrogate",
    "SurrogateConfig",
    "SurrogateArtifact",
    "random_resized_crop",
    "two_views",
    "make_optimizer",
    "supcon_task",
    "train_surrogate",
    "embed",
    "cache_root",
    "load_or_train",
    "CACHE_VERSION",
    "LOOPS",
    "TrainState",
]
