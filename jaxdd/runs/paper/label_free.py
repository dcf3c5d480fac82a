"""The label-free table: every label-free candidate beside vanilla DM and FairDD with true
labels, per setting, from the unit records; and the goal's check, whether the candidate chosen
on validation by the rule of ``--weighting auto`` (on the queue's seeds; ``auto`` itself
distils its candidates at seeds 0 and 1) comes within :data:`GOAL_POINTS` of FairDD with true
labels in test overall accuracy.

The units must have read every row's test split (``--test-every-row``); a row without it shows
its validation score only. Each number is ``mean ± std`` over the row's seeds of each seed's
mean over its evaluation networks, in percent; the weights' AUROC and the share of the weight
on the bias-conflicting real images are each run's own (``weights.json``), averaged the same
way. The choice is :func:`jaxdd.runs.paper.unit_choice` on validation, paired over the seeds
every candidate has.

>>> _gap(0.912, 0.934)
'-2.2'
"""
from __future__ import annotations

import json
import os

import numpy as np

from jaxdd import synset
from jaxdd.runs.paper.cells import CELLS, ROWS, Cell, cell_rows, choice_pool
from jaxdd.runs.paper.queue import Queue, recorded_command
from jaxdd.runs.paper.records import unit_settings
from jaxdd.runs.paper.table import _pm
from jaxdd.runs.paper.units import unit_choice, unit_records

#: How close to FairDD with true labels the chosen candidate must come, in points.
GOAL_POINTS = 2.0
#: The reference rows, which read the true bias labels.
REFERENCES = ("fairdd", "oracle")

COLUMNS = ["row", "bias labels", "seeds", "valid conflicting", "test overall",
           "test conflicting", "test worst group", "weights AUROC",
           "weight on conflicting %", "overall − FairDD (labels)"]
SUMMARY_COLUMNS = ["setting", "seeds", "chosen on validation", "its test overall",
                   "FairDD (labels) test overall", "gap", f"within {GOAL_POINTS:g} points"]


def _mean(recs: list[dict], split: str, metric: str) -> list:
  """Each seed's mean over its networks (None where the split was not read)."""
  return [float(np.mean(r[split][metric])) if split in r else None for r in recs]


def _gap(a: float | None, b: float | None) -> str:
  """``a − b`` in points (fractions in, one decimal out); – when either is missing."""
  return "–" if a is None or b is None else f"{100 * (a - b):+.1f}".replace("+-", "-")


def _seed_mean(recs: list[dict], split: str, metric: str) -> float | None:
  values = _mean(recs, split, metric)
  return None if not values or any(v is None for v in values) else float(np.mean(values))


def _weights(q: Queue, cell: Cell, name: str, rec: dict) -> tuple:
  """``(AUROC, share on conflicting)`` of a seed's weights: from its record, else (a record
  written before records carried them) from its run folder's ``weights.json`` when that run's
  SynSet is the one the record names; (None, None) when neither has them."""
  if "weights_auroc" in rec:
    return rec["weights_auroc"], rec["weights_conflicting_share"]
  run = os.path.join(q.options.workdir, cell.name, name, f"s{rec['seed']}")
  try:
    with open(os.path.join(run, "synset", "manifest.json")) as f:
      same = json.load(f)["files"]["arrays.npz"] == rec["synset_sha256"]
    with open(os.path.join(run, "weights.json")) as f:
      overall = json.load(f)["overall"] if same else {}
    return overall["auroc"], overall["conflicting_fraction_weighted"]
  except (OSError, ValueError, KeyError, TypeError):
    return None, None


def _row(label: str, name: str, recs: list[dict], fairdd: float | None,
         weights: list[tuple]) -> list[str]:
  auroc = [w[0] for w in weights]
  share = [w[1] for w in weights]
  tested = all("test" in r for r in recs)
  test = (lambda m: _pm(_mean(recs, "test", m))) if tested else (lambda m: "–")  # noqa: E731
  return [label, "yes" if ROWS[name].bias_labels else "no",
          ",".join(str(r["seed"]) for r in recs), _pm(_mean(recs, "valid", "conflicting")),
          test("overall"), test("conflicting"), test("worst_group"),
          "–" if None in auroc else f"{np.mean(auroc):.3f}",
          "–" if None in share else f"{100 * np.mean(share):.1f}",
          _gap(_seed_mean(recs, "test", "overall"), fairdd)]


def cell_data(q: Queue, cell: Cell) -> dict | None:
  """The label-free table of ``cell`` from its unit records, or None before its first unit
  with vanilla DM and the paper's KDE."""
  records, found = unit_records(q, cell)
  if not records.get("vanilla") or not records.get("kde"):
    return None
  pool = [n for n in choice_pool(cell, q.rows) if records.get(n)]
  common = set.intersection(*({r["seed"] for r in records[n]} for n in pool))
  choice = unit_choice({n: [r for r in records[n] if r["seed"] in common] for n in pool}, pool)
  chosen = choice["chosen"]
  fairdd = _seed_mean(records.get("fairdd", []), "test", "overall")
  rows = []
  for name in cell_rows(cell, q.rows):
    if name in records and (name in pool or name == "vanilla" or name in REFERENCES):
      rows.append(_row(ROWS[name].label, name, records[name], fairdd,
                       [_weights(q, cell, name, r) for r in records[name]]))
  rows.append(_row(f"chosen on validation by auto's rule ({chosen})", chosen, records[chosen],
                   fairdd,
                   [_weights(q, cell, chosen, r) for r in records[chosen]]))
  auto = _seed_mean(records[chosen], "test", "overall")
  units = sorted(found, key=lambda r: r["unit"])
  n_models = len(records["vanilla"][0]["valid"]["conflicting"])
  return {
      "columns": COLUMNS, "rows": rows, "cell": cell.name,
      "goal": {"chosen": chosen, "auto_overall": auto, "fairdd_overall": fairdd,
               "seeds": sorted(common),
               "within": None if auto is None or fairdd is None
               else bool(round(100 * (fairdd - auto), 1) <= GOAL_POINTS)},  # as printed
      "notes": [
          f"{cell.dataset}, {100 * cell.ratio:g} % bias-conflicting, IPC {cell.ipc}, "
          f"{cell.method.upper()}, preset `{q.options.preset}`; ± is the sample standard "
          "deviation over each row's distillation seeds of each seed's mean over "
          f"{n_models} evaluation networks; the last column is the row's test overall minus "
          "FairDD's with true labels, in points.",
          f"The choice, by the rule of --weighting auto: {choice['reason']} (criterion: validation conflicting accuracy, the seeds "
          f"{','.join(map(str, sorted(common)))}; candidates {', '.join(pool)}).",
          "weights AUROC: how well each run's weights rank the bias-conflicting real images "
          "above the aligned ones; weight on conflicting: their share of the weight (uniform: "
          "the conflicting fraction).",
          f"Built from the unit records in {q.options.units_dir} ({len(units)} units)."],
      "date": max(r["date"] for r in units),
      "commit": "; ".join(f"{r['unit']}: {r['commit'].split('+g')[-1][:7]}" for r in units),
      "machine": "; ".join(sorted({r["machine"] for r in units})),
      "command": sorted({r["command"] for r in units}) + [recorded_command(q.options.argv)],
      "units": {"dir": q.options.units_dir, "settings": unit_settings(q)}}


def summary_data(datas: list[dict]) -> dict:
  """The goal's check across settings: per setting, the candidate chosen on validation, its
  test overall accuracy and FairDD's with true labels."""
  rows = []
  for d in datas:
    g = d["goal"]
    pct = lambda v: "–" if v is None else f"{100 * v:.1f}"  # noqa: E731
    rows.append([d["cell"], ",".join(map(str, g["seeds"])), g["chosen"], pct(g["auto_overall"]),
                 pct(g["fairdd_overall"]), _gap(g["auto_overall"], g["fairdd_overall"]),
                 "–" if g["within"] is None else ("yes" if g["within"] else "no")])
  return {"columns": SUMMARY_COLUMNS, "rows": rows,
          "notes": [f"The goal: the candidate chosen on validation within {GOAL_POINTS:g} points "
                    "of FairDD with true labels in test overall accuracy (means over the seeds; "
                    "the settings' own tables give the ± and every candidate)."],
          "date": max(d["date"] for d in datas),
          "commit": "; ".join(f"{d['cell']}: {d['commit']}" for d in datas),
          "machine": "; ".join(sorted({d["machine"] for d in datas})),
          "command": list(dict.fromkeys(c for d in datas for c in d["command"]))}


def write_tables(q: Queue, cells: list[Cell]) -> list[str]:
  """Writes ``<results>/label-free/<cell>.json`` for each of ``cells`` with units, then
  ``summary.json`` over every cell table in that folder (atomically; a cell whose units hold
  other rows gets its table from a command with those ``--rows``); returns the paths written."""
  out = os.path.join(q.options.results, "label-free")
  datas = [d for d in (cell_data(q, c) for c in cells) if d is not None]
  if not datas:
    return []
  os.makedirs(out, exist_ok=True)
  paths = []
  for d in datas:
    paths.append(os.path.join(out, f"{d['cell']}.json"))
    synset.atomic_write_json(paths[-1], d)
  every = []
  for cell in CELLS:  # in the table's order
    path = os.path.join(out, f"{cell.name}.json")
    if os.path.isfile(path):
      with open(path) as f:
        every.append(json.load(f))
  paths.append(os.path.join(out, "summary.json"))
  synset.atomic_write_json(paths[-1], summary_data(every))
  return paths
