"""The pieces of a study: one directory per (setting, seed), evaluated and scored once."""
from __future__ import annotations

import os

import jax.numpy as jnp
import numpy as np

from jaxdd import diagnostics, evaluate, models, protocols, synset
from jaxdd import progress as progress_lib
from jaxdd.config import RunConfig, validate
from jaxdd.runs import (bias, checks, files, group, keys, outputs, rundata, rundir,
                        single, text)
from jaxdd.structs import SynSet


def run_dir(root: str, config: RunConfig) -> str:
  """``<root>/runs/<method>-s<seed>-<distill digest>``: one distillation of a study."""
  slug = text.method_name(config).replace("+", "_")
  return os.path.join(root, "runs", f"{slug}-s{config.seed}-{config.distill_digest()[:10]}")


def _conflicting_select(batch) -> str:
  """``conflicting`` when the batch has bias-conflicting samples, else ``overall``."""
  return "conflicting" if batch.aligned is not None and not np.asarray(batch.aligned).all() \
      else "overall"


def evaluate_cached(config: RunConfig, workdir: str, run_data: rundata.RunData,
                    syn: SynSet, *, split: str, protocol: protocols.Protocol, num_models: int,
                    progress: bool = False) -> dict:
  """Evaluates ``syn`` once on ``split`` (``valid`` or ``test``); reuses the file after.

  ``test`` also scores the same networks on the validation split
  (``valid_scores``: bias-conflicting accuracy per network).
  """
  path = os.path.join(workdir, f"eval-{split}-{protocol.name}.json")
  cached = files.read_eval_cache(path)
  if cached is not None and cached["result"]["num_models"] == num_models:
    return cached
  model = models.get(config.eval_model, num_classes=run_data.num_classes)
  syn = SynSet(jnp.asarray(syn.images), jnp.asarray(syn.labels))
  k_eval = keys.run_keys(config)[2]
  valid = run_data.batch(run_data.valid)
  if split == "valid":
    result = evaluate.evaluate_synset(k_eval, syn, valid, model=model, protocol=protocol,
                               num_models=num_models, progress=progress)
  elif split == "test":
    result = evaluate.evaluate_synset(k_eval, syn, run_data.batch(run_data.test), model=model,
                               protocol=protocol, num_models=num_models, valid=valid,
                               select_on=_conflicting_select(valid), progress=progress)
  else:
    raise ValueError(f"split must be 'valid' or 'test', got {split!r}")
  summary = result.summary()
  summary.update(split=split, method=text.method_name(config), config=config.to_dict())
  synset.atomic_write_json(path, summary)
  return summary


def bias_score_cached(config: RunConfig, workdir: str, run_data: rundata.RunData,
                      syn: SynSet, classifiers: dict) -> dict | None:
  """:func:`jaxdd.diagnostics.bias_score` of ``syn``, written to ``bias_score.json``; None
  when the data has no group labels to train the classifier on.

  The bias-attribute classifier is trained once per training set (the seed)
  and kept in ``classifiers``.
  """
  if run_data.train.bias is None or run_data.valid.bias is None:
    return None
  path = os.path.join(workdir, "bias_score.json")
  cached = files.read_bias_score(path)
  if cached is not None:
    return cached
  if config.seed not in classifiers:
    classifiers[config.seed] = bias.bias_classifier(config, run_data)
  report = diagnostics.bias_score(classifiers[config.seed], syn.images, syn.labels)
  synset.atomic_write_json(path, report)
  return report


def per_model(summary: dict, metric: str) -> np.ndarray:
  """Per-network values of ``metric`` in a stored evaluation summary."""
  return np.asarray(summary["result"]["per_model"][metric], float)


def distilled(config, root, run_data, progress) -> tuple[str, SynSet]:
  """``(workdir, SynSet)`` of a study's run: distilled, or loaded when already there (the
  study has written already: a damaged SynSet is a fault, exit status 1)."""
  workdir = run_dir(root, config)
  syn = single.distill_stage(config, workdir, run_data=run_data, progress=progress,
                             working=True)
  return workdir, syn


def check_study(configs, root: str, run_data: rundata.RunData) -> None:
  """Every check of a study's runs before its first write: each run's directory holds
  that distillation or nothing, the data, the device mesh and the networks fit every run
  (:func:`jaxdd.runs.rundata.check_models`), and ``root`` is writable."""
  for config in configs:
    validate(config)
    rundir.check_workdir(config, run_dir(root, config), distill_only=True)
    outputs.check_run_folder(run_dir(root, config), flag="")
    rundata.check_models(config, run_data)
  checks.check_writable(root)


def distil_groups(configs, root: str, run_data: rundata.RunData, *,
                  progress: bool = True) -> int:
  """Distils, in one program per group, the runs that differ only in hyperparameters.

  Candidates of a seed that have not started yet and share everything but ``lr_img``
  and the KDE variance and temperature (:func:`jaxdd.runs.group.group_key`) run as one
  group (:func:`jaxdd.runs.group.distill_group`); the others are left to
  :func:`jaxdd.runs.single.distill_stage`, which then finds each group's SynSets.
  Returns the number of runs distilled in groups.
  """
  groups: dict[str, dict[str, RunConfig]] = {}
  for config in configs:
    workdir = run_dir(root, config)
    if group.groupable(config) and group.fresh(workdir):
      groups.setdefault(group.group_key(config), {})[workdir] = config
  done = 0
  for members in groups.values():
    if len(members) < 2:
      continue
    progress_lib.logger.info("distilling %d runs that differ only in lr_img and the KDE knobs "
                             "in one program", len(members))
    group.distill_group(list(members.values()), list(members), run_data=run_data,
                        progress=progress)
    done += len(members)
  return done
