"""``jaxdd final``: the chosen settings at more seeds, evaluated once on test."""
from __future__ import annotations

import json
import os
from typing import Any, Sequence

import numpy as np

from jaxdd import baselines, protocols, synset
from jaxdd import progress as progress_lib
from jaxdd.config import RunConfig
from jaxdd.metrics import METRICS
from jaxdd.runs import checks, files, keys, outputs, rundata, rundir
from jaxdd.runs.knobs import Setting
from jaxdd.runs.study_runs import (
  bias_score_cached,
  check_study,
  distilled,
  evaluate_cached,
  per_model,
)
from jaxdd.runs.tables import format_table
from jaxdd.structs import SynSet


#: Settings a table records since it has the rows they choose (older tables lack them).
_ADDED = ("with_random", "full_models")


def _refuse_other_table(root: str, identity: dict) -> None:
  """A ``table.json`` made with other settings is never overwritten (checked before work)."""
  path = os.path.join(root, "table.json")
  stored = files.read_table(path)
  if stored is None:
    return
  differ = [k for k, v in identity.items()
            if (k in stored or k not in _ADDED)  # a table written before a field: not compared
            and json.loads(json.dumps(stored.get(k))) != json.loads(json.dumps(v))]
  if differ:
    raise ValueError(f"{path} holds a table made with other settings ({', '.join(differ)} "
                     "differ); use another --workdir, or delete table.json and table.md to "
                     "replace it")


@rundir.under_policy
def final(base: RunConfig, root: str, *, settings: dict[str, Setting],
          seeds: Sequence[int] = (0, 1, 2), protocol: str | protocols.Protocol = "cpu300",
          num_models: int = 5, with_random: bool = True, full_models: int = 3,
          progress: bool = True, show: bool | None = None) -> dict:
  """Distils (or reuses) each named setting at each seed and evaluates it once on test.

  Args:
    base: the preset config (dataset, ratio, IPC, method, ...).
    root: the study directory (shared with :func:`tune`, so its SynSets are reused).
    settings: row name -> :class:`Setting`; the row named ``vanilla`` is the
      reference of the paired differences.
    seeds: distillation seeds (each also draws the dataset's colour noise).
    protocol: the evaluation protocol of the table.
    num_models: evaluation networks per SynSet.
    with_random: add the random-real-subset row (same IPC, per seed).
    full_models: networks for the full-training-set row (first seed only,
      trained for as many SGD steps as the protocol gives a SynSet); 0 skips it.

  Writes ``table.json`` and ``table.md`` under ``root``; returns the table dict.
  """
  protocol = protocols.get_protocol(protocol)
  if not seeds:
    raise ValueError("final needs at least one seed")
  identity = {"base": base.to_dict(), "protocol": protocol.to_dict(), "num_models": num_models,
              "seeds": list(seeds),
              "settings": {k: [list(kv) for kv in v.overrides] for k, v in settings.items()},
              "with_random": bool(with_random), "full_models": int(full_models)}
  _refuse_other_table(root, identity)
  checks.device_count(base.execution)  # the devices and a writable root before the data are built
  outputs.check_work_folder(root, record="table.json", writes=("table.md",), what="a table")
  checks.check_writable(root)
  first = rundata.load(base.replace(seed=seeds[0]), root)  # every check before the first write
  first.test  # a bad test split is found now  # noqa: B018
  check_study([s.apply(base.replace(seed=seed)) for seed in seeds for s in settings.values()],
              root, first)
  rows: dict[str, dict[str, Any]] = {}

  train_fraction = None
  classifiers: dict = {}
  reference: dict[str, list] = {"bias_aligned_fraction": [], "true_aligned_fraction": []}
  for seed in seeds:
    seed_base = base.replace(seed=seed)
    run_data = first if seed == seeds[0] else rundata.RunData(seed_base)
    train_fraction = (None if run_data.train.aligned is None
                      else float(np.asarray(run_data.train.aligned).mean()))
    # The bias score's yardstick: the same classifier on held-out real images (the
    # validation split, composed like the training set), whose true share is known.
    valid = run_data.valid
    workdir = os.path.join(root, "runs", f"valid-reference-s{seed}")
    os.makedirs(workdir, exist_ok=True)
    score = bias_score_cached(seed_base, workdir, run_data,
                              SynSet(run_data.normalized(valid), valid.labels), classifiers)
    if score is not None:  # None: no group labels, no bias score
      reference["bias_aligned_fraction"].append(score["aligned_fraction"])
      reference["true_aligned_fraction"].append(float(np.asarray(valid.aligned).mean()))
    for name, setting in settings.items():
      config = setting.apply(seed_base)
      progress_lib.logger.info("final seed %d: %s", seed, name)
      workdir, syn = distilled(config, root, run_data, progress)
      summary = evaluate_cached(config, workdir, run_data, syn, split="test", protocol=protocol,
                                num_models=num_models, progress=progress)
      score = bias_score_cached(config, workdir, run_data, syn, classifiers)
      _add_row(rows, name, seed, summary, score, {"setting": setting.to_dict()})
    if with_random:
      workdir = os.path.join(root, "runs", f"random-s{seed}-ipc{base.ipc}")
      os.makedirs(workdir, exist_ok=True)
      k_sel = keys.baseline_keys(seed_base)[0]  # the subset `jaxdd baselines` draws
      train = run_data.train
      idx = baselines.random_subset_indices(k_sel, train.labels, ipc=base.ipc)
      syn = baselines.take(run_data.normalized(train), train.labels, idx)
      config = seed_base.replace(weighting="none")
      summary = evaluate_cached(config, workdir, run_data, syn, split="test", protocol=protocol,
                                num_models=num_models, progress=progress)
      score = bias_score_cached(config, workdir, run_data, syn, classifiers)
      _add_row(rows, "random real subset", seed, summary, score)
    if full_models and seed == seeds[0]:
      train = run_data.train
      steps = protocol.num_epochs * -(-base.ipc * run_data.num_classes // protocol.batch_size)
      epochs = max(1, round(steps / -(-len(train.labels) // protocol.batch_size)))
      full_protocol = protocol.replace(name=f"{protocol.name}-full", epochs=epochs - 1)
      workdir = os.path.join(root, "runs", f"full-s{seed}")
      os.makedirs(workdir, exist_ok=True)
      syn = baselines.full_dataset(run_data.normalized(train), train.labels)
      summary = evaluate_cached(seed_base.replace(weighting="none"), workdir, run_data, syn,
                                split="test", protocol=full_protocol, num_models=full_models,
                                progress=progress)
      _add_row(rows, "full biased training set", seed, summary, None,
               {"epochs": full_protocol.num_epochs, "train_aligned_fraction": train_fraction})
  out = {**identity, "train_aligned_fraction": train_fraction,
         "reference": reference, "rows": rows,
         "paired": _paired(rows)}
  synset.atomic_write_json(os.path.join(root, "table.json"), out)
  synset.atomic_write_bytes(os.path.join(root, "table.md"), (format_table(out) + "\n").encode())
  if progress if show is None else show:
    print(format_table(out))
  return out


def _add_row(rows: dict, name: str, seed: int, summary: dict, score: dict | None,
             extra: dict | None = None) -> None:
  """Adds one seed's evaluation (and bias score) to the table row ``name`` of ``rows``."""
  row = rows.setdefault(name, {"seeds": [], "per_seed": {m: [] for m in METRICS},
                               "valid_conflicting": [], "bias_aligned_fraction": [],
                               "per_model": []})
  row["seeds"].append(seed)
  for m in METRICS:
    row["per_seed"][m].append(float(np.mean(per_model(summary, m))))
  row["per_model"].append({m: per_model(summary, m).tolist() for m in METRICS})
  vs = summary["result"].get("valid_scores")
  row["valid_conflicting"].append(None if vs is None else float(np.mean(vs)))
  # 'overall' when the validation split has no bias-conflicting image (e.g. CMNIST 1 %).
  row["valid_metric"] = summary["result"].get("select_on") or "conflicting"
  row["bias_aligned_fraction"].append(None if score is None else score["aligned_fraction"])
  if extra:
    row.update(extra)


def _paired(rows: dict) -> dict:
  """Per-seed differences of every row against the ``vanilla`` row (same seeds)."""
  if "vanilla" not in rows:
    return {}
  ref = rows["vanilla"]
  out = {}
  for name, row in rows.items():
    if name == "vanilla" or row["seeds"] != ref["seeds"]:
      continue
    out[name] = {m: (np.asarray(row["per_seed"][m]) - np.asarray(ref["per_seed"][m])).tolist()
                 for m in METRICS}
  return out
