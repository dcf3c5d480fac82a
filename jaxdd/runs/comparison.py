"""``jaxdd reproduce``: the vanilla method and its KDE variant side by side."""
from __future__ import annotations

import os

import numpy as np

from jaxdd import diagnostics, synset
from jaxdd import plots as plots_lib
from jaxdd.config import RunConfig, validate
from jaxdd import progress as progress_lib
from jaxdd.runs import (baseline_runs, bias, files, outputs, rundata, rundir, single,
                        text, weights)


@rundir.under_policy
def reproduce(config: RunConfig, workdir: str, *, progress: bool = True,
              with_baselines: tuple[str, ...] = (), show: bool | None = None,
              reevaluate: bool = False) -> dict:
  """The vanilla method and its KDE-reweighted variant (``config.method``: DM, DSA
  or DC) with otherwise identical settings, side by side.

  ``with_baselines`` (names from :data:`jaxdd.runs.baseline_runs.BASELINES`) adds those
  rows, under the same evaluation protocol; LfF, DFA and SelecMix train on the vanilla method's
  SynSet.
  A finished comparison (:func:`stored_comparison`) is shown again without taking the lock
  (it writes nothing, so a read-only directory will do) unless ``reevaluate``.
  """
  stored = None if reevaluate else stored_comparison(config, workdir, with_baselines)
  if stored is not None:
    progress_lib.logger.info("%s: this comparison is complete; showing its stored results "
                             "(--reevaluate evaluates its runs again)", workdir)
    if progress if show is None else show:
      with open(os.path.join(workdir, "comparison.md"), encoding="utf-8") as f:
        print(f"{workdir}: complete (stored in comparison.md)\n" + f.read().rstrip("\n"))
    return stored
  run_data = _check(config, workdir, with_baselines)
  with rundir.workdir_lock(workdir):
    return _reproduce(config, workdir, run_data, progress=progress,
                      with_baselines=with_baselines, show=show, reevaluate=reevaluate)


def stored_comparison(config: RunConfig, workdir: str,
                      with_baselines: tuple[str, ...] = ()) -> dict | None:
  """The results of a finished :func:`reproduce` of ``config`` in ``workdir``, else None
  (reads only).

  Finished: both runs hold their stored evaluation of this exact config, and
  ``comparison.json`` and ``comparison.md`` were written from those evaluations (the same
  numbers) and from the stored baselines of ``with_baselines``.
  """
  validate(config)
  path = os.path.join(workdir, "comparison.json")
  if not (os.path.exists(path) and os.path.exists(os.path.join(workdir, "comparison.md"))):
    return None
  results = {}
  for weighting in ("none", "kde"):
    cfg = config.replace(weighting=weighting)
    validate(cfg)
    name = text.method_name(cfg)
    run_dir = os.path.join(workdir, name.replace("+", "_"))
    rundir.check_workdir(cfg, run_dir)
    results[name] = rundir.stored_eval(cfg, run_dir)
  if with_baselines:
    stored = baseline_runs.stored_baselines(os.path.join(workdir, "baselines"),
                                            config.replace(weighting="none"))
    results.update({b: stored.get(b) for b in with_baselines})
  comparison = files.read_comparison(path)
  if any(r is None or name not in comparison or comparison[name]["mean"] != r["mean"]
         for name, r in results.items()):
    return None
  return {name: {**r, "bias_score": comparison[name].get("bias_score")}
          for name, r in results.items()}


def _check(config: RunConfig, workdir: str, with_baselines: tuple[str, ...]) -> rundata.RunData:
  """Every check of :func:`reproduce` before its first write: both runs' directories hold
  these runs (or nothing), the baselines' names and stored settings, the data, the device
  mesh and a writable ``workdir``. Returns the run data."""
  validate(config)
  unknown = set(with_baselines) - set(baseline_runs.BASELINES)
  if unknown:
    raise ValueError(f"unknown baselines {sorted(unknown)}; choose from "
                     f"{baseline_runs.BASELINES}")
  outputs.check_work_folder(workdir, record="comparison.json",
                            writes=("comparison.md", "plots/accuracy.png"), what="a comparison")
  for weighting in ("none", "kde"):
    cfg = config.replace(weighting=weighting)
    validate(cfg)
    run_dir = os.path.join(workdir, text.method_name(cfg).replace("+", "_"))
    rundir.check_workdir(cfg, run_dir)
    outputs.check_run_folder(run_dir, flag="")
  if with_baselines:
    baseline_runs.stored_baselines(os.path.join(workdir, "baselines"),
                                   config.replace(weighting="none"))
  rundata.check_paths(config, workdir)
  run_data = rundata.load(config, workdir)
  for weighting in ("none", "kde"):
    rundata.check_run(config.replace(weighting=weighting), run_data, workdir)
  return run_data


def _reproduce(config: RunConfig, workdir: str, run_data: rundata.RunData, *, progress: bool,
               with_baselines: tuple[str, ...], show: bool | None, reevaluate: bool) -> dict:
  """:func:`reproduce` once checked, under the lock of ``workdir``."""
  results = {}
  for weighting in ("none", "kde"):
    cfg = config.replace(weighting=weighting)
    name = text.method_name(cfg)
    results[name] = single.run(cfg, os.path.join(workdir, name.replace("+", "_")),
                               progress=progress, show=show, reevaluate=reevaluate)
  if with_baselines:
    results.update(baseline_runs.run_baselines(
        config.replace(weighting="none"), os.path.join(workdir, "baselines"),
        which=tuple(with_baselines), progress=progress,
        vanilla_synset=os.path.join(workdir, config.method, "synset"),
        trust=False))  # this command's own vanilla SynSet
  # The bias score of each SynSet: what fraction of its images carry their
  # class's aligned bias (the training set's fraction is in the table header).
  classifier = bias.bias_classifier(config, run_data)  # None: the data has no groups
  reference = None
  if classifier is not None:
    for weighting in ("none", "kde"):
      name = text.method_name(config.replace(weighting=weighting))
      syn, _ = synset.load(os.path.join(workdir, name.replace("+", "_"), "synset"),
                           working=True)
      results[name]["bias_score"] = diagnostics.bias_score(classifier, syn.images, syn.labels)
    # The score's yardstick: the classifier on held-out real images of known composition.
    valid = run_data.valid
    reference = {"true_aligned_fraction": float(np.asarray(valid.aligned).mean()),
                 "bias_aligned_fraction": diagnostics.bias_score(
                     classifier, run_data.normalized(valid), valid.labels)["aligned_fraction"]}
  table = text.format_comparison(
      results, config, reference=reference,
      train_aligned_fraction=None if classifier is None else classifier.train_aligned_fraction)
  drift = weights.format_weight_summary({
      text.method_name(config.replace(weighting=w)): os.path.join(
          workdir, text.method_name(config.replace(weighting=w)).replace("+", "_"),
          "weights.json")
      for w in ("none", "kde")})
  if drift:
    table += "\n\n" + drift
  for name in results:
    if results[name].get("bias_score") is not None:
      results[name]["bias_score"]["reference"] = reference
  named = {} if run_data.identity is None else {"data": run_data.identity}  # a user's data
  synset.atomic_write_json(os.path.join(workdir, "comparison.json"),
                           {k: {"mean": v["mean"], "std": v["std"],
                                "bias_score": v.get("bias_score"), **named}
                            for k, v in results.items()})
  synset.atomic_write_bytes(os.path.join(workdir, "comparison.md"), (table + "\n").encode())
  plots_lib.plot_accuracy_bars(
      results, os.path.join(workdir, "plots", "accuracy.png"),
      title=f"{config.dataset} conflict={config.conflict_ratio} ipc={config.ipc} "
            f"preset={config.preset}")
  if progress if show is None else show:
    print(table)
  return results
