"""The paper table's cell tables: a cell's rows from each row's per-seed records.

A cell's table is results-table data (``columns``, ``rows``, ``notes``, the date, commit,
machine and command; the format of ``experiments/results_tables.py``), with the cell, the
validation choice of the best label-free row and whether every reported row has every seed
(``complete``). Each cell is ``mean ± std`` over the row's seeds of each seed's mean over its
evaluation networks, in percent.

>>> _pm([0.5, 0.7]), _pm([0.5, None])
('60.0 ± 14.1', '50.0')
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import os
import platform

import jax
import numpy as np

from jaxdd import runs, synset
from jaxdd.runs.paper.cells import ROWS, Cell, Row, cell_rows, choice_pool
from jaxdd.runs.paper.queue import Queue, recorded_command

COLUMNS = ["row", "bias labels", "seeds", "valid conflicting", "test overall", "test aligned",
           "test conflicting", "test worst group", "DEO_M", "DEO_A",
           "in aligned bias, start → end", "distill + eval s / seed"]


def _pm(values) -> str:
  """``mean ± std`` over seeds; a row with one seed has no spread to give: its value alone."""
  kept = [v for v in values if v is not None and not np.isnan(v)]
  return f"{100 * kept[0]:.1f}" if len(kept) == 1 else runs.format_pm(values)


def table_row(label: str, row: Row, recs: list[dict]) -> list[str]:
  """One row of a cell's table from its per-seed records (each with its validation and test
  scores per network, its bias shares and its wall times)."""
  mean = lambda split, m: [float(np.mean(r[split][m])) for r in recs]  # noqa: E731
  bias = ("–" if any(r["bias_start"] is None for r in recs) else
          f"{_pm([r['bias_start'] for r in recs])} → {_pm([r['bias_end'] for r in recs])}")
  secs = np.median([r["distill_s"] + r["eval_s"] for r in recs])
  return [label, "yes" if row.bias_labels else "no", ",".join(str(r["seed"]) for r in recs),
          _pm(mean("valid", "conflicting")), _pm(mean("test", "overall")),
          _pm(mean("test", "aligned")), _pm(mean("test", "conflicting")),
          _pm(mean("test", "worst_group")), _pm(mean("test", "deo_m")),
          _pm(mean("test", "deo_a")), bias, f"{secs:.0f}"]


def table_data(q: Queue, cell: Cell, records: dict, choice: dict) -> dict:
  """The cell's table data from each row's per-seed records (a row missing from ``records``
  is left out; ``choice['pending']``: the chosen candidate's test split is not read yet)."""
  rows = []
  for name in cell_rows(cell, q.rows):
    if ROWS[name].reported and records.get(name):
      rows.append(table_row(ROWS[name].label, ROWS[name], records[name]))
    if name == "kde":
      chosen = choice["chosen"]
      label = f"best label-free, chosen on validation: {ROWS[chosen].label}"
      if choice.get("pending"):
        rows.append([label, "no", ",".join(str(r["seed"]) for r in records[chosen]),
                     _pm([float(np.mean(r["valid"]["conflicting"])) for r in records[chosen]])]
                    + ["its test split is read by the unit "
                       f"{cell.name}/chosen-{chosen}"] + ["–"] * 7)
      else:
        rows.append(table_row(label, ROWS[chosen], records[chosen]))
  n_models = len(records["vanilla"][0]["test"]["overall"])
  wanted = [n for n in cell_rows(cell, q.rows) if ROWS[n].reported]
  complete = (not choice.get("pending")
              and all(len(records.get(n, [])) == len(q.seeds) for n in wanted))
  notes = [
      f"{cell.dataset}, {100 * cell.ratio:g} % bias-conflicting, IPC {cell.ipc}, "
      f"{cell.method.upper()}, preset `{q.options.preset}`; ± is the sample standard deviation "
      "over each row's distillation seeds (the column seeds; one seed: its value alone) of "
      "each seed's mean over "
      f"{n_models} evaluation networks.",
      f"The best label-free row: {choice['reason']} (criterion: validation conflicting "
      f"accuracy; candidates {', '.join(choice_pool(cell, q.rows))}).",
      "DEO_M / DEO_A: FairDD's equalized-odds differences on the test split (per class, the "
      "largest minus the smallest accuracy over bias groups; their maximum / mean over "
      "classes), empty groups counted as 0.",
  ]
  return {"columns": COLUMNS, "rows": rows, "notes": notes, "cell": dataclasses.asdict(cell),
          "complete": complete,
          "choice": {k: (float(v) if isinstance(v, (float, np.floating)) else v)
                     for k, v in choice.items()},
          "date": datetime.date.today().isoformat(), "commit": runs.code_version(),
          "machine": machine(), "command": [recorded_command(q.options.argv)]}


def render(data: dict) -> str:
  """A cell's table data as a markdown table.

  >>> print(render({"columns": ["row", "seeds"], "rows": [["vanilla DM", "0,1"]]}))
  | row | seeds |
  |---|---|
  | vanilla DM | 0,1 |
  """
  lines = ["| " + " | ".join(data["columns"]) + " |", "|---" * len(data["columns"]) + "|"]
  lines += ["| " + " | ".join(r) + " |" for r in data["rows"]]
  return "\n".join(lines)


def machine() -> str:
  """The machine a table was made on, in words: its cores and CPU, or its accelerators."""
  dev = jax.devices()[0]
  if dev.platform == "cpu":
    return f"{os.cpu_count()}-core {platform.machine()} CPU"
  return f"{jax.device_count()} x {dev.device_kind}"


def table_path(q: Queue, cell: Cell) -> str:
  """Where the table of ``cell`` is written: ``<results>/<cell>.json``."""
  return os.path.join(q.options.results, f"{cell.name}.json")


_BUILT_FROM = "Built from the unit records in "


def table_source(path: str) -> dict | None:
  """What the table at ``path`` was built from: ``{"dir", "settings"}`` of its units
  (``settings`` None in a table from before tables named them), ``{}`` for the whole queue's
  table, None when there is no readable table there (one is computed)."""
  try:
    with open(path) as f:
      data = json.load(f)
  except (OSError, ValueError):
    return None
  if not isinstance(data, dict) or not isinstance(data.get("rows"), list):
    return None
  if isinstance(data.get("units"), dict):
    return {"dir": data["units"].get("dir"), "settings": data["units"].get("settings")}
  for note in data.get("notes", []):
    if isinstance(note, str) and note.startswith(_BUILT_FROM):
      return {"dir": note[len(_BUILT_FROM):].rsplit(" (", 1)[0], "settings": None}
  return {}


def write_table(q: Queue, cell: Cell, data: dict) -> str:
  """Writes the table data of ``cell`` (atomically) and returns its path."""
  os.makedirs(q.options.results, exist_ok=True)
  path = table_path(q, cell)
  synset.atomic_write_json(path, data)
  return path
