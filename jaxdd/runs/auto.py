"""``--weighting auto``: the label-free weighting of a run, chosen on validation data.

A run with ``weighting='auto'`` does not weigh its real images by a fixed rule: before it
distils, :func:`resolve` chooses one of :data:`CANDIDATES` -- the weightings and variants that
need no bias labels -- and the run goes on as that candidate. The choice is that of
:func:`jaxdd.runs.selection.select`, the pre-registered rule of ``jaxdd tune``:

* every candidate is distilled at each seed of :data:`SEEDS` with the run's own settings
  (method, IPC, iterations, ...) and evaluated on the **validation** split, under the run's
  evaluation protocol with its ``num_eval_models`` networks; the test split is never read;
* the criterion is the accuracy on the validation split's bias-conflicting images, per
  network;
* the paper's KDE (:data:`INCUMBENT`) stays unless another candidate is better on every seed
  and by more than twice the binomial noise of the difference.

**Once per dataset.** The candidates' runs and the decision live in the cache
(``$JAXDD_CACHE/auto/<key>/``, ``choice.json`` and ``choice.md``), keyed by the data and
every setting of the run but its seed and its weighting knobs: a later run on the same data
and settings (another seed, another work directory) reads the decision instead of distilling
the candidates again. The run records it in its own folder (``auto.json``) and logs it.

**Without group labels.** On a user's own data whose validation split has no group labels
(``--group-file`` gives them), the accuracy on bias-conflicting images cannot be measured, and
the validation split's overall accuracy, as biased as the training data, rewards the weighting
that corrects least. Then no candidate is distilled: the incumbent is kept, and the decision
says what could not be judged and how to make it judgeable.

Candidates a run's method cannot take (FairDD's synchronized matching is implemented for DM
only) are left out, and the decision names them.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import numpy as np

from jaxdd import progress as progress_lib
from jaxdd import protocols, synset
from jaxdd.config import RunConfig, validate
from jaxdd.data import cache as data_cache
from jaxdd.runs import files, rundata, selection, single, study_runs

#: The label-free candidates: RunConfig overrides by name. The first is the incumbent.
CANDIDATES: dict[str, dict[str, Any]] = {
    "kde": {"weighting": "kde"},
    "kde_init": {"weighting": "kde", "init": "weighted"},
    "kde_floor_init_is": {"weighting": "kde", "init": "weighted", "real_sampling": "weighted",
                          "kde_floor": 0.05},
    "fairdd_pseudo": {"weighting": "fairdd_pseudo"},
    "fairdd_batch": {"weighting": "fairdd_batch"},
    "fairdd_batch_knee": {"weighting": "fairdd_batch", "fairdd_eps": "knee"},
    "fairdd_dbscan": {"weighting": "fairdd_dbscan"},
    "gce": {"weighting": "gce"},
    "jtt": {"weighting": "jtt"},
    "kde_biased": {"weighting": "kde", "kde_features": "biased"},
}
#: The candidate that stays unless another is better by the rule: the paper's KDE.
INCUMBENT = "kde"
#: The seeds every candidate is distilled at (fixed, so that every seed of a run shares one
#: choice).
SEEDS = (0, 1)
#: Fields a candidate may set, and the run's fields that do not name the choice's data or
#: settings (its seed, logging and layout).
_FREE = tuple(sorted({k for o in CANDIDATES.values() for k in o})) + (
    "seed", "log_every", "checkpoint_every", "devices", "steps_per_call", "policy")
_VERSION = 1


def candidate_config(base: RunConfig, name: str, seed: int | None = None) -> RunConfig:
  """``base`` as candidate ``name`` (at ``seed``, default the base's)."""
  if name not in CANDIDATES:
    raise ValueError(f"unknown auto candidate {name!r}; choose one of {sorted(CANDIDATES)}")
  fields = dict(CANDIDATES[name])
  if seed is not None:
    fields["seed"] = seed
  return base.replace(**fields)


def _usable(base: RunConfig) -> tuple[list[str], dict[str, str]]:
  """The candidates ``base``'s method can take, and why the others cannot."""
  usable, left_out = [], {}
  for name in CANDIDATES:
    try:
      validate(candidate_config(base, name))
    except ValueError as e:
      left_out[name] = str(e)
    else:
      usable.append(name)
  return usable, left_out


def choice_key(base: RunConfig, run_data: rundata.RunData, protocol: protocols.Protocol) -> str:
  """The cache key of a choice: the data, the run's settings but its seed and weighting
  knobs, the protocol, the networks, the seeds and the candidates."""
  settings = {k: v for k, v in base.to_dict().items() if k not in _FREE}
  spec = {"version": _VERSION, "settings": settings, "data": run_data.identity,
          "protocol": protocol.to_dict(), "seeds": list(SEEDS), "candidates": CANDIDATES,
          "incumbent": INCUMBENT}
  return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:24]


def study_root(key: str) -> str:
  """Where the candidates' runs and the decision of choice ``key`` live."""
  return os.path.join(str(data_cache.cache_dir()), "auto", key)


def _unjudgeable(base: RunConfig, usable: list[str], left_out: dict) -> dict:
  return {
      "version": _VERSION, "chosen": INCUMBENT, "overrides": CANDIDATES[INCUMBENT],
      "judged": False, "candidates": {}, "left_out": left_out, "usable": usable,
      "seeds": [], "criterion": None,
      "reason": ("the validation split has no group labels, so the accuracy on bias-conflicting "
                 "images cannot be measured, and its overall accuracy (as biased as the "
                 "training data) would favour the weighting that corrects least; no candidate "
                 f"was distilled and the paper's KDE ({INCUMBENT}) is kept"),
      "can_judge": "nothing that tells a debiased SynSet from a biased one",
      "cannot_judge": "accuracy on bias-conflicting images, worst-group accuracy",
      "fix": ("give the validation images group labels (--group-file, or a group column) and "
              "run again: auto then distils every candidate and chooses on them")}


def _choose(base: RunConfig, root: str, run_data: rundata.RunData, usable: list[str],
            left_out: dict, protocol: protocols.Protocol, progress: bool) -> dict:
  """Distils and evaluates every usable candidate at every seed, then applies the rule."""
  configs = [candidate_config(base, n, s) for s in SEEDS for n in usable]
  study_runs.check_study(configs, root, run_data)
  rows: dict[str, dict[str, list]] = {n: {"criterion": [], "overall": [], "worst_group": [],
                                          "runs": []} for n in usable}
  per_seed = int((~np.asarray(run_data.valid.aligned)).sum())
  for seed in SEEDS:
    seed_data = run_data if seed == base.seed else rundata.RunData(base.replace(seed=seed))
    study_runs.distil_groups([candidate_config(base, n, seed) for n in usable], root, seed_data,
                             progress=progress)
    for i, name in enumerate(usable):
      config = candidate_config(base, name, seed)
      progress_lib.logger.info("auto seed %d candidate %d/%d: %s", seed, i + 1, len(usable),
                               name)
      workdir, syn = study_runs.distilled(config, root, seed_data, progress)
      s = study_runs.evaluate_cached(config, workdir, seed_data, syn, split="valid",
                                     protocol=protocol, num_models=base.num_eval_models)
      for metric in ("overall", "worst_group"):
        rows[name][metric].append(study_runs.per_model(s, metric).tolist())
      rows[name]["criterion"].append(study_runs.per_model(s, "conflicting").tolist())
      rows[name]["runs"].append(os.path.relpath(workdir, root))
  decision = selection.select({n: np.asarray(r["criterion"]) for n, r in rows.items()},
                              INCUMBENT, per_seed)
  return {"version": _VERSION, "chosen": decision["chosen"],
          "overrides": CANDIDATES[decision["chosen"]], "judged": True, "decision": decision,
          "candidates": rows, "left_out": left_out, "usable": usable, "seeds": list(SEEDS),
          "criterion": ("accuracy on the validation split's bias-conflicting images, per "
                        "network"), "valid_conflicting_per_seed": per_seed,
          "reason": decision["reason"]}


def format_choice(choice: dict) -> str:
  """The decision as markdown: every candidate's validation numbers and the reason."""
  lines = [f"auto chose **{choice['chosen']}**: {choice['reason']}."]
  if not choice["judged"]:
    lines += [f"Cannot judge: {choice['cannot_judge']}.", f"To let it judge: {choice['fix']}."]
  else:
    lines += ["", f"Criterion: {choice['criterion']} ({choice['valid_conflicting_per_seed']} "
              f"images per seed); seeds {choice['seeds']}. Mean over seeds of each seed's mean "
              "over its networks, in %.", "",
              "| candidate | valid conflicting | valid overall | valid worst group |",
              "|---|---|---|---|"]
    for name, r in choice["candidates"].items():
      cells = [f"{100 * np.mean(r[m]):.1f}" for m in ("criterion", "overall", "worst_group")]
      lines.append(f"| {name} | " + " | ".join(cells) + " |")
  for name, why in choice["left_out"].items():
    lines.append(f"- left out: {name} ({why})")
  return "\n".join(lines)


def _read_choice(path: str) -> dict | None:
  rec = files.read_auto_choice(path)
  if rec is not None and (rec["version"] != _VERSION or rec["chosen"] not in CANDIDATES
                          or rec["overrides"] != CANDIDATES[rec["chosen"]]):
    raise files.FileFormatError(path, "a choice of another jaxdd version",
                                f"delete {os.path.dirname(path)} and rerun the same command to "
                                "choose again", working=True)
  return rec


def choose(base: RunConfig, run_data: rundata.RunData | None = None, *,
           progress: bool = True) -> dict:
  """The label-free candidate ``base`` should use, chosen on validation data (see the
  module docstring); read from the cache when this data and these settings were chosen for
  before. Returns the decision (``chosen``, ``overrides``, ``reason``, ``judged``, every
  candidate's validation numbers, ``key``, ``root``)."""
  if run_data is None:
    run_data = rundata.RunData(base.replace(**CANDIDATES[INCUMBENT]))
  protocol = protocols.get_protocol(base.eval_protocol)
  key = choice_key(base, run_data, protocol)
  root = study_root(key)
  path = os.path.join(root, "choice.json")
  stored = _read_choice(path)
  if stored is not None:
    progress_lib.logger.info("auto: the choice made before for this data and these settings "
                             "(%s)", path)
    return {**stored, "key": key, "root": root, "reused": True}
  usable, left_out = _usable(base)
  if run_data.valid.aligned is None:
    choice = _unjudgeable(base, usable, left_out)
  else:
    choice = _choose(base, root, run_data, usable, left_out, protocol, progress)
  os.makedirs(root, exist_ok=True)
  synset.atomic_write_json(path, choice)
  synset.atomic_write_bytes(os.path.join(root, "choice.md"),
                            (format_choice(choice) + "\n").encode())
  return {**choice, "key": key, "root": root, "reused": False}


def resolve(config: RunConfig, run_data: rundata.RunData | None = None, *,
            progress: bool = True) -> tuple[RunConfig, dict | None]:
  """``(the config the run distils with, the decision)``: ``config`` itself and None unless
  its weighting is ``'auto'``, else the chosen candidate's config and :func:`choose`'s
  decision."""
  if config.weighting != "auto":
    return config, None
  choice = choose(config, run_data, progress=progress)
  line = f"auto: {choice['chosen']} ({choice['reason']})"
  progress_lib.logger.info("%s", line)
  return config.replace(**choice["overrides"]), choice


def record(workdir: str, choice: dict) -> None:
  """Writes a run's ``auto.json``: the decision its weighting came from."""
  os.makedirs(workdir, exist_ok=True)
  synset.atomic_write_json(os.path.join(workdir, "auto.json"), choice)


def run(config: RunConfig, workdir: str, **kwargs) -> dict:
  """:func:`jaxdd.runs.single.run`, with ``weighting='auto'`` resolved first: the decision is
  printed, and written to ``<workdir>/auto.json`` once the run is done. Same arguments and
  result.

  Example:
    >>> from jaxdd import config, runs
    >>> cfg = config.get_config("smoke", weighting="auto")       # doctest: +SKIP
    >>> summary = runs.run(cfg, "runs/smoke-auto")               # doctest: +SKIP
  """
  resolved, choice = resolve(config, progress=kwargs.get("progress", True))
  if choice is None:
    return single.run(config, workdir, **kwargs)
  show = kwargs.get("show")
  if kwargs.get("progress", True) if show is None else show:
    print(format_choice(choice))
  result = single.run(resolved, workdir, **kwargs)
  record(workdir, choice)  # after the run: a new run's folder holds its config.json first
  return result
