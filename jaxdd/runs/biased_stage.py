"""The bias-amplified classifier stage of a run, and the features a run's weighting reads.

``--weighting gce`` and ``jtt`` weigh the real images by the outputs of a network trained on the
class labels with the generalized cross-entropy (:mod:`jaxdd.debias.biased`), and
``--kde-features biased`` runs the KDE in its penultimate features. The network is trained once
per dataset, settings and key and cached under ``$JAXDD_CACHE/biased``
(:mod:`jaxdd.debias.biased_cache`), as the SupCon surrogate is
(:mod:`jaxdd.runs.surrogate_stage`); its key is :func:`jaxdd.runs.keys.biased_key`.
"""
from __future__ import annotations

import jax
import numpy as np

from jaxdd import weighting
from jaxdd.config import RunConfig
from jaxdd.debias import biased_cache
from jaxdd.debias.biased import BiasedConfig
from jaxdd.runs import keys, rundata, surrogate_stage


def biased_config(config: RunConfig, num_examples: int | None = None) -> BiasedConfig:
  """The run's :class:`~jaxdd.debias.BiasedConfig`: its ``biased_*`` fields and the depth of
  its ConvNet; on data smaller than a batch, one batch of all of it.

  Example:
    >>> from jaxdd.config import get_config
    >>> biased_config(get_config("smoke", weighting="gce")).q
    0.7
  """
  batch = config.biased_batch if num_examples is None else min(config.biased_batch,
                                                                 num_examples)
  return BiasedConfig(steps=config.biased_steps, batch_size=batch, width=config.biased_width,
                      depth=config.depth, norm=config.biased_norm, q=config.biased_q,
                      lr=config.biased_lr)


def biased_artifact(config: RunConfig, run_data: rundata.RunData,
                    progress: bool = True) -> biased_cache.BiasedArtifact:
  """Trains (or loads from the cache) the run's bias-amplified classifier on its training
  images and class labels; returns its outputs on every training image."""
  train = run_data.train
  cfg = biased_config(config, int(np.asarray(train.labels).shape[0]))
  return biased_cache.load_or_train_biased(keys.biased_key(config), dict(train.meta),
                                           train.images, train.labels,
                                           num_classes=run_data.num_classes, config=cfg,
                                           progress=progress)


def weighting_embeddings(config: RunConfig, run_data: rundata.RunData, key: jax.Array,
                         progress: bool = True) -> np.ndarray:
  """The embeddings a run's KDE (or k-means) reads: the SupCon surrogate's (trained with
  ``key``, the run's surrogate key), or with ``--kde-features biased`` the bias-amplified
  classifier's penultimate features on the unit sphere (:func:`jaxdd.weighting.unit_rows`)."""
  if config.kde_features == "biased":
    feats = biased_artifact(config, run_data, progress).outputs.features
    return np.asarray(jax.jit(weighting.unit_rows)(feats))
  return surrogate_stage.surrogate_embeddings(config, run_data, key, progress=progress)


def difficulty_weights(config: RunConfig, run_data: rundata.RunData,
                       progress: bool = False) -> np.ndarray:
  """(N,) whole-class weights of a ``'gce'`` or ``'jtt'`` run, each class summing to 1:
  :func:`jaxdd.weighting.difficulty_weights` of the biased network's log-probabilities of
  the own class (floor ``gce_floor``), or :func:`jaxdd.weighting.error_set_weights` of its
  predictions (``jtt_up``)."""
  out = biased_artifact(config, run_data, progress).outputs
  labels, nc = np.asarray(run_data.train.labels), run_data.num_classes
  if config.weighting == "gce":
    w = jax.jit(weighting.difficulty_weights, static_argnames="num_classes")(
        out.log_p_label, labels, num_classes=nc, floor=config.gce_floor)
  elif config.weighting == "jtt":
    w = jax.jit(weighting.error_set_weights, static_argnames=("num_classes", "up"))(
        out.pred, labels, num_classes=nc, up=config.jtt_up)
  else:
    raise ValueError(f"weighting {config.weighting!r} reads no difficulty; use gce or jtt")
  return np.asarray(w, np.float32)


def biased_report(config: RunConfig, run_data: rundata.RunData) -> dict:
  """``weights.json``'s ``biased_network``: its settings, training, cache entry, error set per
  class and, a diagnostic from the TRUE bias labels computed for the report only, how well
  its difficulty and its error set find the bias-conflicting images."""
  art = biased_artifact(config, run_data, progress=False)
  out, train = art.outputs, run_data.train
  labels = np.asarray(train.labels)
  err = out.pred != labels
  hist = art.history
  report = {"config": biased_config(config, labels.shape[0]).to_dict(),
            "key": "fold_in(surrogate key, 2)", "from_cache": art.from_cache,
            "cache_entry": art.path, "steps": hist.get("steps"), "seconds": hist.get("seconds"),
            "train_accuracy": (hist.get("accuracy") or [None])[-1],
            "errors_per_class": np.bincount(labels[err], minlength=run_data.num_classes).tolist()}
  if train.aligned is not None:
    conflicting = ~np.asarray(train.aligned, bool)
    report["recovery_diagnostic"] = {
        "note": "computed after the fact from the TRUE bias labels for this report only; the "
                "network and the weights never read them",
        "difficulty_auroc": weighting.auroc(-out.log_p_label, conflicting),
        "error_set_precision": float(conflicting[err].mean()) if err.any() else None,
        "error_set_recall": float(err[conflicting].mean()) if conflicting.any() else None}
  return report
