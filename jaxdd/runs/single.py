"""One run: distillation stage (surrogate, weights, distillation, SynSet) and evaluation."""
from __future__ import annotations

import dataclasses
import os

import jax.numpy as jnp
import numpy as np

from jaxdd import evaluate, models, synset
from jaxdd import plots as plots_lib
from jaxdd import progress as progress_lib
from jaxdd.config import RunConfig, validate
from jaxdd.runs import (
  bias,
  biased_stage,
  driver,
  files,
  keys,
  metrics_log,
  outputs,
  rundata,
  rundir,
  text,
  version,
  weights,
)
from jaxdd.structs import SynSet


def _check_resolved(config: RunConfig) -> None:
  if config.weighting == "auto":
    raise ValueError("weighting 'auto' is chosen on validation data before a run distils: call "
                     "jaxdd.runs.run (as the jaxdd command does), or jaxdd.runs.auto.resolve and "
                     "pass the config it returns")


@rundir.under_policy
def distill_stage(config: RunConfig, workdir: str, *, run_data: rundata.RunData | None = None,
                  progress: bool = True, stop_after: int | None = None,
                  buffer_dir: str | None = None, working: bool = False,
                  deadline: driver.Deadline | None = None) -> SynSet | None:
  """Surrogate, KDE weights and distillation of one run: writes ``synset/``.

  A finished ``synset/`` in ``workdir`` is loaded instead of recomputed (without taking
  the lock: nothing is written), so several evaluations (validation sweeps, the final
  test) share one distillation. Returns None when ``stop_after`` stopped the run early.
  ``buffer_dir``: trajectory matching's expert buffer (default: the cache,
  :func:`default_buffer_dir`). Every check (:func:`jaxdd.runs.rundata.check_run`) comes
  before the first write. ``working``: the caller has written already (a study's later runs),
  so a damaged finished SynSet is a fault (exit status 1), not a refusal (2). ``deadline``
  (:class:`jaxdd.runs.driver.Deadline`): a time budget the distillation stops at,
  checkpointed (:class:`jaxdd.runs.driver.Interrupted`).
  """
  validate(config)
  _check_resolved(config)
  rundir.check_workdir(config, workdir, distill_only=True)
  syn_dir = os.path.join(workdir, "synset")
  if not os.path.islink(syn_dir) and os.path.exists(os.path.join(syn_dir, "manifest.json")):
    syn, _ = synset.load(syn_dir, working=working)  # the run's own artifact
    return SynSet(np.asarray(syn.images), np.asarray(syn.labels))
  outputs.check_run_folder(workdir)
  rundata.check_paths(config, workdir, buffer_dir=buffer_dir)
  if run_data is None:
    run_data = rundata.load(config, workdir)
  rundata.check_run(config, run_data, workdir, buffer_dir=buffer_dir)
  with rundir.workdir_lock(workdir):
    rundir.check_workdir(config, workdir, distill_only=True)  # what the lock now guards
    rundir.check_data(workdir, run_data.identity)
    embeddings, report, classifier = start_run(config, workdir, run_data, progress)
    syn = driver.distill_run(config, workdir, run_data, embeddings, keys.run_keys(config)[1],
                             progress=progress, stop_after=stop_after, classifier=classifier,
                             buffer_dir=buffer_dir, deadline=deadline)
    if stop_after is not None and not os.path.exists(os.path.join(workdir, "checkpoints",
                                                                  str(config.iterations))):
      record_bias_trajectory(config, workdir, report)
      return None
    return finish_run(config, workdir, run_data, syn, report)


def start_run(config: RunConfig, workdir: str, run_data: rundata.RunData, progress: bool):
  """A run's directory before distilling: config.json, the surrogate's embeddings (KDE and
  label-free FairDD runs) or the bias-amplified classifier (gce, jtt, KDE in its features),
  weights.json. Returns ``(embeddings, report, bias classifier)``."""
  rundata.check_models(config, run_data)
  os.makedirs(workdir, exist_ok=True)
  record = {"config": config.to_dict(), "digest": config.digest(),
            "distill_digest": config.distill_digest(), "code_version": version.code_version()}
  if run_data.identity is not None:  # a user's data: its spec and the digest of its content
    record["data"] = run_data.identity
  synset.atomic_write_json(os.path.join(workdir, "config.json"), record)
  k_sur, _, _, k_diag = keys.run_keys(config)
  embeddings = None
  if weights.needs_embeddings(config):  # KDE densities, label-free FairDD's pseudo-groups
    embeddings = biased_stage.weighting_embeddings(config, run_data, k_sur, progress=progress)
  elif weights.needs_biased(config):  # gce, jtt: trained once (cached), before their weights
    biased_stage.biased_artifact(config, run_data, progress=progress)
  report = weights.weight_diagnostics(config, run_data, embeddings, k_diag, workdir=workdir)
  synset.atomic_write_json(os.path.join(workdir, "weights.json"), report)
  return embeddings, report, bias.bias_classifier(config, run_data)


def record_bias_trajectory(config: RunConfig, workdir: str, report: dict) -> None:
  """Adds the bias scores logged during distillation to ``report`` and rewrites weights.json."""
  report["bias_trajectory"] = [
      {"step": r["step"], "bias_aligned_fraction": r["bias_aligned_fraction"]}
      for r in metrics_log.read_metrics(os.path.join(workdir, "metrics.jsonl"),
                                        config.iterations)
      if "bias_aligned_fraction" in r]
  synset.atomic_write_json(os.path.join(workdir, "weights.json"), report)


def finish_run(config: RunConfig, workdir: str, run_data: rundata.RunData, syn: SynSet,
               report: dict) -> SynSet:
  """A distilled run's artifacts: the bias trajectory in weights.json, the SynSet, its plot."""
  record_bias_trajectory(config, workdir, report)
  meta = {"dataset": dict(run_data.train.meta), "config": config.to_dict(),
          "method": text.method_name(config), "ipc": config.ipc,
          "preprocessing": "per-channel normalisation with the training set's mean/std",
          "distill_model": models.spec_of(models.ConvNet(run_data.num_classes, depth=config.depth,
                                                         width=config.width)),
          "eval_protocol": config.eval_protocol, "code_version": version.code_version(),
          "class_names": list(run_data.train.class_names)}
  if config.method == "mtt":  # the learned student lr and the experts the set was matched to
    rows = metrics_log.read_metrics(os.path.join(workdir, "metrics.jsonl"), config.iterations)
    lrs = [r["syn_lr"] for r in rows if "syn_lr" in r]
    meta["syn_lr"] = lrs[-1] if lrs else config.lr_teacher
    meta["expert_buffer"] = files.read_buffer_record(os.path.join(workdir,
                                                                  "buffer.json"))["digest"]
  synset.save(os.path.join(workdir, "synset"), syn, meta, mean=run_data.mean, std=run_data.std)
  plots_lib.plot_synset(syn, run_data.mean, run_data.std,
                        os.path.join(workdir, "plots", "synset.png"),
                        class_names=run_data.train.class_names,
                        title=f"{meta['method']} {run_data.name}"
                              + ("" if run_data.spec is not None
                                 else f" ratio={config.conflict_ratio}") + f" ipc={config.ipc}")
  return syn


@rundir.under_policy
def run(config: RunConfig, workdir: str, *, progress: bool = True,
        stop_after: int | None = None, reevaluate: bool = False,
        show: bool | None = None, buffer_dir: str | None = None) -> dict:
  """One full run (see :mod:`jaxdd.runs`). Returns the evaluation summary.

  A finished run shows its stored results without taking the lock (it writes nothing,
  so a read-only directory will do). Otherwise every check (the data, the device mesh,
  the networks, writable paths: :func:`jaxdd.runs.rundata.check_run`) comes before the
  first write, so a refused run leaves nothing behind.

  Example:
    >>> from jaxdd import config, runs
    >>> cfg = config.get_config("smoke", weighting="kde")        # doctest: +SKIP
    >>> summary = runs.run(cfg, "runs/smoke-kde")                # doctest: +SKIP
    >>> summary["mean"]["conflicting"]                           # doctest: +SKIP
  """
  show = progress if show is None else show
  validate(config)
  _check_resolved(config)
  rundir.check_workdir(config, workdir)
  stored = None if reevaluate else rundir.stored_eval(config, workdir)
  if stored is not None and not reevaluate and stop_after is None:
    progress_lib.logger.info("%s: this run is complete; showing its stored results "
                             "(--reevaluate evaluates it again)", workdir)
    if show:
      print(f"{workdir}: complete (stored in eval.json)\n" + text.format_stored(stored))
    return stored
  # Data errors (bad ratio, missing source) surface before anything is written.
  if not os.path.exists(os.path.join(workdir, "synset", "manifest.json")):
    outputs.check_run_folder(workdir)  # a new run replaces nothing (distill_stage's check)
  rundata.check_paths(config, workdir, buffer_dir=buffer_dir)
  run_data = rundata.load(config, workdir)
  rundata.check_run(config, run_data, workdir, buffer_dir=buffer_dir)
  # a finished SynSet (--reevaluate) too: its test split is the data it was distilled from
  rundir.check_data(workdir, run_data.identity)
  run_data.test  # a bad test split is found now, not after the distillation  # noqa: B018
  with rundir.workdir_lock(workdir):
    rundir.check_workdir(config, workdir)  # what the lock now guards
    rundir.check_data(workdir, run_data.identity)
    syn = distill_stage(config, workdir, run_data=run_data, progress=progress,
                        stop_after=stop_after, buffer_dir=buffer_dir)
    if syn is None:
      return {"stopped_at": stop_after}
    return _evaluate(config, workdir, run_data, syn, progress=progress, show=show)


def _evaluate(config: RunConfig, workdir: str, run_data: rundata.RunData, syn: SynSet, *,
              progress: bool, show: bool) -> dict:
  """The run's evaluation on the test split: written to ``eval.json`` and returned."""
  k_eval = keys.run_keys(config)[2]
  model = models.get(config.eval_model, num_classes=run_data.num_classes)
  result = evaluate.evaluate_synset(k_eval, SynSet(jnp.asarray(syn.images), jnp.asarray(syn.labels)),
                             run_data.batch(run_data.test), model=model,
                             protocol=config.eval_protocol, num_models=config.num_eval_models,
                             progress=progress)
  result = dataclasses.replace(result, method=text.method_name(config))
  summary = result.summary()
  summary.update(method=text.method_name(config), config=config.to_dict(),
                 digest=config.digest())
  if run_data.identity is not None:
    summary["data"] = run_data.identity
  synset.atomic_write_json(os.path.join(workdir, "eval.json"), summary)
  if show:
    print(result.format_table())
  return summary
