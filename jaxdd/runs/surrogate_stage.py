"""The surrogate stage of a run: the SupCon surrogate and its embeddings."""
from __future__ import annotations

import dataclasses

import jax
import numpy as np

from jaxdd import surrogate
from jaxdd.config import RunConfig
from jaxdd.runs import rundata
from jaxdd.runs.stage_config import surrogate_config


def surrogate_artifact(config: RunConfig, run_data: rundata.RunData, key: jax.Array,
                       progress: bool = True) -> surrogate.SurrogateArtifact:
  """Trains (or loads from the cache) the run's SupCon surrogate (params and embeddings)."""
  cfg = surrogate_config(config)  # a step budget (the cpu preset) is resolved for the data size
  train = run_data.train
  n = int(np.asarray(train.labels).shape[0])
  if cfg.batch_size > n:  # a small dataset: the batch follows the data (one batch an epoch)
    cfg = dataclasses.replace(cfg, batch_size=n)
  return surrogate.load_or_train(key, dict(train.meta), train.images, train.labels, config=cfg,
                                 progress=progress)


def surrogate_embeddings(config: RunConfig, run_data: rundata.RunData, key: jax.Array,
                         progress: bool = True) -> np.ndarray:
  """Trains (or loads from the cache) the SupCon surrogate; returns (N, 128) embeddings."""
  return np.asarray(surrogate_artifact(config, run_data, key, progress).embeddings)
