"""``jaxdd tune``: every candidate on validation data, and the pre-registered choice."""
from __future__ import annotations

import math
import os
from typing import Any, Sequence

import numpy as np

from jaxdd import progress as progress_lib
from jaxdd import protocols, synset
from jaxdd.config import RunConfig
from jaxdd.runs import checks, outputs, rundata, rundir
from jaxdd.runs.knobs import Setting, default_setting, knob_grid
from jaxdd.runs.study_runs import (
  check_study,
  distil_groups,
  distilled,
  evaluate_cached,
  per_model,
)
from jaxdd.runs.tables import format_pm


def criterion_noise(p: float, n: int) -> float:
  """Binomial standard error of an accuracy ``p`` measured on ``n`` samples."""
  return math.sqrt(max(p * (1 - p), 1e-12) / max(n, 1))


def select(scores: dict[str, np.ndarray], incumbent: str, num_samples: int) -> dict[str, Any]:
  """The pre-registered selection rule of :func:`tune`.

  Args:
    scores: setting name -> (seeds, networks) validation criterion values of
      one method (e.g. all ``dm+kde`` candidates).
    incumbent: the library default among them.
    num_samples: validation samples behind each seed's criterion (e.g. the
      bias-conflicting validation images), summed over seeds by this function.

  The candidate with the best mean replaces the incumbent only if it is better
  on **every** seed and by more than twice the standard error of the
  difference (binomial noise of the criterion on ``num_samples`` images per
  seed); otherwise the incumbent stays. Returns ``{"chosen", "best", "margin",
  "noise", "wins_every_seed", "reason"}``.
  """
  if incumbent not in scores:
    raise ValueError(f"the incumbent {incumbent!r} is not among the candidates {sorted(scores)}")
  if not all(np.isfinite(np.asarray(v, float)).all() for v in scores.values()):
    raise ValueError("a validation criterion is NaN: the validation split has no "
                     "bias-conflicting samples; use a larger valid_fraction or another dataset")
  means = {k: float(np.mean(v)) for k, v in scores.items()}
  best = max(means, key=lambda k: (means[k], k == incumbent))
  n = num_samples * np.asarray(scores[incumbent]).shape[0]
  noise = math.hypot(criterion_noise(means[best], n), criterion_noise(means[incumbent], n))
  margin = means[best] - means[incumbent]
  per_seed_best = np.asarray(scores[best]).mean(-1)
  per_seed_inc = np.asarray(scores[incumbent]).mean(-1)
  every = bool(np.all(per_seed_best > per_seed_inc))
  if best == incumbent:
    chosen, reason = incumbent, "the incumbent has the best validation criterion"
  elif every and margin > 2 * noise:
    chosen, reason = best, (f"better on every seed and by {100 * margin:.1f} points > "
                            f"2 x noise ({100 * 2 * noise:.1f})")
  else:
    chosen, reason = incumbent, (f"{best} is ahead by {100 * margin:.1f} points, "
                                 + ("not on every seed" if not every else
                                    f"within 2 x noise ({100 * 2 * noise:.1f})")
                                 + "; the incumbent stays")
  return {"chosen": chosen, "best": best, "incumbent": incumbent, "margin": margin,
          "noise": noise, "wins_every_seed": every, "reason": reason}


@rundir.under_policy
def tune(base: RunConfig, root: str, *, seeds: Sequence[int] = (0, 1),
         candidates: Sequence[Setting] | None = None, protocol: str | protocols.Protocol = "cpu",
         num_models: int = 3, progress: bool = True, show: bool | None = None) -> dict:
  """Distils every candidate at every seed and selects on validation data only.

  Writes ``<root>/selection.json`` (every candidate's per-seed, per-network
  criterion, the noise and the decision per method) and ``selection.md``.
  Returns the selection dict; ``["chosen"]`` maps ``none``/``kde`` to the
  chosen :class:`Setting`'s overrides.
  """
  protocol = protocols.get_protocol(protocol)
  candidates = list(candidates if candidates is not None else knob_grid(base))
  if not candidates or not seeds:
    raise ValueError("tune needs at least one candidate and one seed")
  incumbents = {w: default_setting(base, w) for w in ("none", "kde")}
  for w, s in incumbents.items():
    if any(c.apply(base).weighting == w for c in candidates) and s not in candidates:
      candidates.append(s)
  checks.device_count(base.execution)  # the devices and a writable root before the data are built
  if os.path.lexists(os.path.join(root, "config.json")):  # its candidates would fill a run
    raise ValueError(f"--workdir {root} is a run's folder; give tune a folder of its own, e.g. "
                     "runs/tune")
  outputs.check_work_folder(root, record="selection.json", writes=("selection.md",),
                            what="a selection")
  checks.check_writable(root)
  first = rundata.load(base.replace(seed=seeds[0]), root)  # every check before the first write
  check_study([c.apply(base.replace(seed=seed)) for seed in seeds for c in candidates], root,
              first)
  rows: dict[str, dict[str, Any]] = {}
  num_conflicting = 0
  # Without group labels (a user's data) no conflicting accuracy exists: the criterion is the
  # overall validation accuracy, on a validation split as biased as the training data
  metric = "conflicting" if first.valid.aligned is not None else "overall"
  for seed in seeds:
    seed_base = base.replace(seed=seed)
    run_data = first if seed == seeds[0] else rundata.RunData(seed_base)
    num_conflicting += (int((~np.asarray(run_data.valid.aligned)).sum()) if metric == "conflicting"
                        else len(run_data.valid))
    distil_groups([cand.apply(seed_base) for cand in candidates], root, run_data,
                  progress=progress)
    for i, cand in enumerate(candidates):
      config = cand.apply(seed_base)
      name = cand.name(base)
      progress_lib.logger.info("tune seed %d candidate %d/%d: %s", seed, i + 1, len(candidates),
                               name)
      workdir, syn = distilled(config, root, run_data, progress)
      s = evaluate_cached(config, workdir, run_data, syn, split="valid", protocol=protocol,
                          num_models=num_models)
      row = rows.setdefault(name, {"setting": cand.to_dict(), "weighting": config.weighting,
                                   "seeds": [], "criterion": [], "overall": [],
                                   "worst_group": [], "runs": []})
      row["seeds"].append(seed)
      row["criterion"].append(per_model(s, metric).tolist())
      row["overall"].append(per_model(s, "overall").tolist())
      row["worst_group"].append(per_model(s, "worst_group").tolist())
      row["runs"].append(os.path.relpath(workdir, root))
  per_seed = num_conflicting // len(seeds)
  decisions = {}
  for w, inc in incumbents.items():
    scores = {k: np.asarray(r["criterion"]) for k, r in rows.items() if r["weighting"] == w}
    if scores:
      decisions[w] = select(scores, inc.name(base), per_seed)
  chosen = {w: rows[d["chosen"]]["setting"] for w, d in decisions.items()}
  out = {"base": base.to_dict(), "protocol": protocol.to_dict(), "num_models": num_models,
         "seeds": list(seeds),
         "criterion": ("accuracy on the validation split's bias-conflicting samples"
                       if metric == "conflicting" else
                       "overall accuracy on the validation split (no group labels: as biased as "
                       "the training data)"),
         "valid_conflicting_per_seed": per_seed, "candidates": rows, "decisions": decisions,
         "chosen": chosen}
  synset.atomic_write_json(os.path.join(root, "selection.json"), out)
  synset.atomic_write_bytes(os.path.join(root, "selection.md"),
                            (format_selection(out) + "\n").encode())
  if progress if show is None else show:
    print(format_selection(out))
  return out


def format_selection(sel: dict) -> str:
  """The selection table (validation numbers only) and the decisions, as markdown."""
  p = sel["protocol"]
  col = "valid conflicting" if "conflicting" in sel["criterion"] else "criterion"
  lines = [f"Validation criterion: {sel['criterion']} ({sel['valid_conflicting_per_seed']} per "
           f"seed); protocol {p['name']} ({p['num_epochs']} epochs), {sel['num_models']} networks "
           f"per SynSet, seeds {sel['seeds']}. Mean ± sample std over seeds of each seed's mean over "
           "its networks, in %.",
           "",
           f"| setting | {col} | per seed | valid overall | valid worst group |",
           "|---|---|---|---|---|"]
  for name, r in sorted(sel["candidates"].items(),
                        key=lambda kv: (kv[1]["weighting"], -np.mean(kv[1]["criterion"]))):
    crit = np.asarray(r["criterion"]).mean(-1)
    cells = [format_pm(np.asarray(r[m]).mean(-1))
             for m in ("criterion", "overall", "worst_group")]
    mark = " **(chosen)**" if any(d["chosen"] == name for d in sel["decisions"].values()) else ""
    lines.append(f"| {name}{mark} | {cells[0]} | {' / '.join(f'{100 * c:.1f}' for c in crit)} "
                 f"| {cells[1]} | {cells[2]} |")
  lines.append("")
  for w, d in sel["decisions"].items():
    lines.append(f"- {'vanilla' if w == 'none' else 'KDE'}: {d['chosen']} — {d['reason']}.")
  return "\n".join(lines)
