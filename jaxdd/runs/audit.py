"""``jaxdd audit`` on an artifact: the data, the networks and the surrogate its run names.

:mod:`jaxdd.security.audit` holds the probes and the verdict, on arrays; this
module rebuilds what they need from a SynSet artifact's metadata: the run's
config, its dataset's validation split (the clean images), its evaluation
architecture and its SupCon surrogate (trained, or read from the cache).
"""
from __future__ import annotations

import dataclasses
import os

import jax
import numpy as np

from jaxdd import data, models, surrogate
from jaxdd import progress as progress_lib
from jaxdd._src.schema import FileFormatError
from jaxdd.config import RunConfig
from jaxdd.runs.keys import seed_keys
from jaxdd.runs.rundata import RunData
from jaxdd.runs.surrogate_stage import surrogate_artifact
from jaxdd.security import audit as audit_lib
from jaxdd.security import signing
from jaxdd.structs import SynSet
from jaxdd.runs.stage_config import surrogate_config


def run_config_of(meta: dict, path: str | None = None):
  """The :class:`~jaxdd.config.RunConfig` recorded in a SynSet's metadata, or None.

  Raises:
    jaxdd._src.schema.FileFormatError: the recorded config is not one jaxdd can read
      (``path``: the artifact directory, named in the message).
  """
  recorded = meta.get("config")
  if not isinstance(recorded, dict):
    return None
  try:
    return RunConfig.from_dict(recorded, ignore_unknown=True)
  except (TypeError, ValueError, KeyError, AttributeError) as e:
    where = os.path.join(path, "meta.json") if path is not None else "the SynSet's meta.json"
    problem = " ".join(str(e).split()) or type(e).__name__
    raise FileFormatError(where, f"its run configuration ('config') is malformed ({problem})",
                          "the SynSet was not written by this jaxdd or was edited: re-create it "
                          "with `jaxdd distill`") from None


def kde_probe(syn: SynSet, meta: dict, config, *, progress: bool = False) -> audit_lib.KDEScores:
  """The KDE probe of a SynSet under its run's surrogate (trained, or read from the cache).

  :func:`jaxdd.security.audit.kde_scores` of the SynSet's embeddings against
  the embeddings of the run's real training images.
  """
  run_data = RunData(config)
  art = surrogate_artifact(config, run_data, seed_keys(config.seed)[0],
                                    progress=progress)
  pixels = data.denormalize(np.asarray(syn.images), meta["mean"], meta["std"])
  syn_z = surrogate.embed(art.params, np.asarray(pixels, np.float32), config=surrogate_config(config))
  return audit_lib.kde_scores(syn_z, syn.labels, art.embeddings, run_data.train.labels,
                              num_classes=run_data.num_classes, variance=config.kde_variance)


def audit_artifact(path: str, *, trust=None, seed: int = 0, model_spec: str | None = None,
                   protocol: str = "cpu300", num_models: int = 2, clean_images: int = 2000,
                   kde: bool = True, source: str | None = None, progress: bool = False,
                   **kwargs) -> tuple[audit_lib.AuditReport, dict]:
  """:func:`jaxdd.security.audit.audit` of the SynSet artifact at ``path``, with the data it names.

  The clean images are ``clean_images`` images drawn (seeded) from the
  dataset's validation split; the networks are ``model_spec`` (default: the
  run's evaluation architecture, the networks a user would train on the set);
  the KDE probe uses the run's own surrogate and kernel variance (trained, or
  read from the cache). Other
  keyword arguments go to :func:`jaxdd.security.audit.audit`.

  Returns:
    ``(report, meta)``; ``meta`` is the artifact's, with its signature status.
  """
  audit_lib.check_settings(num_models=num_models, **{k: kwargs.get(k, v) for k, v in (
      ("cleanse_images", 128), ("cleanse_steps", 200),
      ("asr_threshold", audit_lib.ASR_THRESHOLD),
      ("anomaly_threshold", audit_lib.ANOMALY_THRESHOLD), ("outlier_z", audit_lib.OUTLIER_Z),
      ("lift_threshold", audit_lib.LIFT_THRESHOLD),
      ("verdict_probes", audit_lib.VERDICT_PROBES))})
  if isinstance(clean_images, bool) or not isinstance(clean_images, int) or clean_images < 1:
    raise ValueError(f"clean_images must be a positive int, got {clean_images!r}")
  syn, meta = signing.load_synset(path, trust=trust)
  ds = meta.get("dataset") or {}
  config = run_config_of(meta, path)
  if not ds.get("name"):
    raise ValueError(f"{path}: the artifact does not name its dataset; audit needs its "
                     "validation split")
  source = source if source is not None else (config.source if config is not None else None)
  valid = data.load(ds["name"], split="valid", conflict_ratio=ds.get("ratio"),
                    severity=ds.get("severity"), seed=ds.get("seed", 0), source=source)
  n = min(int(clean_images), len(valid.labels))
  cleanse_n, need = kwargs.get("cleanse_images", 128), 10 * valid.num_classes
  if kwargs.get("cleanse", True) and n < cleanse_n + need:  # before the surrogate is trained
    raise ValueError(f"{n} clean images are too few: the trigger search takes cleanse_images "
                     f"({cleanse_n}) and measuring attack success at least {need} more; pass "
                     f"clean_images (--clean-images) of at least {cleanse_n + need}, a smaller "
                     "cleanse_images (--cleanse-images), or cleanse=False (--no-cleanse)")
  rows = np.sort(np.asarray(jax.random.permutation(jax.random.key(seed), len(valid.labels)))[:n])
  images = np.asarray(data.normalize(valid.images[rows], meta["mean"], meta["std"]))
  labels = np.asarray(valid.labels)[rows]
  # The networks a user would train on the set: the run's evaluation architecture. (Measured:
  # networks of the narrower distillation architecture learn a post-hoc backdoor far less than
  # the evaluation networks do, docs/results/security.md "Backdoors".)
  spec = model_spec or (config.eval_model if config else None) or meta.get("eval_model") \
      or "convnet"
  model = models.get(spec, num_classes=valid.num_classes)
  models.check_fits(model, tuple(np.asarray(syn.images).shape[1:]))
  if progress:
    progress_lib.logger.info("audit: %d clean images from %s's validation split; networks: %s",
                             n, ds["name"], spec)
  scores = None
  if kde:
    if config is None:
      raise ValueError(f"{path} records no run config, so its surrogate cannot be rebuilt; "
                       "pass kde=False (--no-kde)")
    if progress:
      progress_lib.logger.info("audit: the KDE probe (the run's surrogate, trained or cached)")
    scores = kde_probe(syn, meta, config, progress=progress)
  report = audit_lib.audit(jax.random.key(seed), syn, images, labels, mean=meta["mean"],
                           std=meta["std"], model=model, protocol=protocol,
                           num_models=num_models, kde=scores, progress=progress, **kwargs)
  return dataclasses.replace(report, model=spec), meta
