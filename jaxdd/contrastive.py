"""Deprecated alias of :mod:`jaxdd.surrogate`; removed in the next release.

The SupCon surrogate (loss, model, presets, training, inference, disk cache)
lives in :mod:`jaxdd.surrogate`, its crop augmentation in
:mod:`jaxdd.augment`. This module only re-exports their public names, so
``from jaxdd import contrastive`` keeps working for one release: change it to
``from jaxdd import surrogate``.

Example:
  >>> from jaxdd import contrastive, surrogate
  >>> contrastive.train_surrogate is surrogate.train_surrogate
  True
"""
from __future__ import annotations

from jaxdd.surrogate import (CACHE_VERSION, LOOPS, Surrogate, SurrogateArtifact, SurrogateConfig,
                             TrainState, cache_root, embed, load_or_train, make_optimizer,
                             random_resized_crop, supcon_loss, supcon_task, train_surrogate,
                             two_views)

__all__ = [
    "CACHE_VERSION",
    "LOOPS",
    "Surrogate",
    "SurrogateArtifact",
    "SurrogateConfig",
    "TrainState",
    "cache_root",
    "embed",
    "load_or_train",
    "make_optimizer",
    "random_resized_crop",
    "supcon_loss",
    "supcon_task",
    "train_surrogate",
    "two_views",
]
