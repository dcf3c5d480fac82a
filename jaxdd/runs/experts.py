"""Trajectory matching's expert buffers: their spec, their weights, building or reusing them."""
from __future__ import annotations

import hashlib
import os

import jax
import numpy as np

from jaxdd import models
from jaxdd import progress as progress_lib
from jaxdd._src.io import cache_root
from jaxdd.config import MTTConfig, RunConfig, validate
from jaxdd.distill import experts as mtt_lib
from jaxdd.runs import biased_stage, checks, keys, outputs, rundata, rundir
from jaxdd.runs import weights as weights_lib

#: Batch size of expert training (MTT's buffer.py).
EXPERT_BATCH = 256


def expert_run_epochs(mtt: MTTConfig) -> int:
  """Epochs each expert records: ``max_start_epoch + expert_epochs`` of the run's trajectory
  matching part ``mtt`` (``config.mtt``; a whole RunConfig does too), the only ones MTT reads."""
  return mtt.max_start_epoch + mtt.expert_epochs


def expert_weights(config: RunConfig, run_data: rundata.RunData,
                   log_density: np.ndarray | None) -> np.ndarray | None:
  """The real images' weights in expert training, or None (vanilla: uniform experts).

  Image i of class c weighs ``n_c * w_i`` with ``w`` the whole-class weights
  (:func:`whole_class_weights`): every class keeps its share of an epoch and,
  inside a class, rare images count more.
  """
  if config.weighting == "none":
    return None
  labels = np.asarray(run_data.train.labels)
  counts = np.bincount(labels, minlength=run_data.num_classes)
  w = weights_lib.whole_class_weights(config.weights, labels, log_density, run_data.num_classes)
  return (w * counts[labels]).astype(np.float64)


def expert_spec(config: RunConfig, run_data: rundata.RunData,
                weights: np.ndarray | None) -> dict:
  """What determines a run's expert buffer (:func:`jaxdd.distill.experts.buffer_spec`).

  The data (the dataset card's meta and the normalisation), the network, the
  weighting (its settings and the sha256 of the per-image weights, which pins
  the surrogate and the KDE), the trainer and the seed. Two runs that differ only
  in distillation settings (lr_img, syn_steps, the gradient mode, ...) share a
  buffer.
  """
  train, nc = run_data.train, run_data.num_classes
  data_desc = {"dataset": dict(train.meta), "mean": np.asarray(run_data.mean).tolist(),
               "std": np.asarray(run_data.std).tolist()}
  if weights is None:
    weighting = {"kind": "none"}
  else:
    weighting = {"kind": config.weighting, "by": config.expert_weighting,
                 "kde_variance": config.kde_variance, "kde_temperature": config.kde_temperature,
                 "kde_normalize": config.kde_normalize, "kde_floor": config.kde_floor,
                 "surrogate_preset": config.surrogate_preset,
                 "weights_sha256": hashlib.sha256(
                     np.ascontiguousarray(weights, np.float64).tobytes()).hexdigest()}
  trainer = {"num_experts": config.num_experts, "epochs": expert_run_epochs(config.mtt),
             "lr": config.expert_lr, "batch_size": EXPERT_BATCH,
             "augment": config.dsa_strategy or None}
  model = models.spec_of(models.ConvNet(nc, depth=config.depth, width=config.width))
  return mtt_lib.buffer_spec(data=data_desc, model=model, weighting=weighting, trainer=trainer,
                             seed=config.seed)


def default_buffer_dir(spec: dict) -> str:
  """``$JAXDD_CACHE/buffers/<spec digest>``: runs with the same experts share them."""
  return str(cache_root("buffers", mtt_lib.spec_digest(spec)[:16]))


def expert_buffer(config: RunConfig, run_data: rundata.RunData,
                  log_density: np.ndarray | None, key: jax.Array, *, buffer_dir: str | None = None,
                  progress: bool = True) -> tuple[np.ndarray, dict, str]:
  """The run's expert trajectories: reused when a buffer with its spec exists, else built.

  ``buffer_dir`` (default :func:`default_buffer_dir`) holds the artifact; a
  build resumes expert by expert (:func:`jaxdd.distill.experts.build_buffer`), and a
  folder holding a buffer of other settings is refused, never overwritten.

  Returns:
    ``(trajectories, meta, path)``.
  """
  weights = expert_weights(config, run_data, log_density)
  spec = expert_spec(config, run_data, weights)
  path = buffer_dir or default_buffer_dir(spec)
  train, nc = run_data.train, run_data.num_classes
  if os.path.exists(os.path.join(path, "manifest.json")):
    progress_lib.logger.info("expert buffer: reusing %s", path)
  else:
    progress_lib.logger.info("expert buffer: training %d experts for %d epochs into %s",
                             config.num_experts, expert_run_epochs(config.mtt), path)
  traj, meta = mtt_lib.build_buffer(
      path, spec, key, run_data.normalized(train), train.labels,
      model=models.ConvNet(nc, depth=config.depth, width=config.width),
      num_experts=config.num_experts, epochs=expert_run_epochs(config.mtt), lr=config.expert_lr,
      batch_size=EXPERT_BATCH, augment=config.dsa_strategy or None, weights=weights,
      weighting=config.expert_weighting, progress=progress)
  return traj, meta, path


@rundir.under_policy
def build_expert_buffer(config: RunConfig, *, buffer_dir: str | None = None,
                        progress: bool = True) -> tuple[str, tuple[int, ...]]:
  """The expert buffer of a trajectory-matching run, alone (``jaxdd buffers``).

  Loads the data, trains (or loads) the surrogate when the run is KDE-weighted,
  and builds or reuses the buffer :func:`distill_stage` would use.

  Returns:
    ``(path, shape)`` of the buffer: (experts, epochs + 1, parameters).
  """
  validate(config)
  if config.method != "mtt":
    raise ValueError(f"expert buffers belong to trajectory matching; this run's method is "
                     f"{config.method!r}: use --method mtt")
  if buffer_dir is not None:
    outputs.check_outside_jaxdd_files(buffer_dir, flag="--buffer-dir")
    mtt_lib.check_buffer_dir(buffer_dir, flag="--buffer-dir")
  checks.check_writable(buffer_dir if buffer_dir is not None else cache_root("buffers"))
  run_data = rundata.RunData(config)
  rundata.check_models(config, run_data)
  embeddings = None
  if config.weighting == "kde":
    embeddings = biased_stage.weighting_embeddings(config, run_data, keys.run_keys(config)[0],
                                                   progress=progress)
  log_density = weights_lib.run_log_density(config, run_data, embeddings)
  traj, _, path = expert_buffer(config, run_data, log_density, keys.expert_key(config),
                                buffer_dir=buffer_dir, progress=progress)
  return path, tuple(traj.shape)
