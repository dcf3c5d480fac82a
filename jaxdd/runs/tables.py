"""The study's tables as markdown (``mean ± std`` cells by :func:`jaxdd.results.format_pm`)."""
from __future__ import annotations

import numpy as np

from jaxdd.metrics import METRICS
from jaxdd.results import format_pm


def _pm(values, ddof: int = 1) -> str:
  return format_pm(values, ddof=ddof)


#: The order of the table's rows (JSON files keep their keys sorted).
ROW_ORDER = ("vanilla", "kde (selected on valid)", "kde (library default)",
             "kde literal (power, T = 1)", "random real subset", "full biased training set")


def row_order(rows) -> list[str]:
  """Row names in :data:`ROW_ORDER`, others after them in their given order."""
  known = [n for n in ROW_ORDER if n in rows]
  return known + [n for n in rows if n not in ROW_ORDER]


def _metric_cell(row: dict, metric: str) -> str:
  """A test accuracy of a table row: over seeds, or over networks for one seed."""
  if len(row["seeds"]) > 1:
    return _pm(row["per_seed"][metric])
  return _pm(row["per_model"][0][metric], ddof=0)


def _accuracy_cells(row: dict) -> list[str]:
  """The four test accuracies of a table row (:func:`_metric_cell`)."""
  return [_metric_cell(row, m) for m in METRICS]


def _worst(table: dict) -> str:
  """The lowest accuracy's name: over groups, or over classes when the test split has no
  group labels (no row has an aligned or conflicting score)."""
  def scored(row, metric):
    values = row.get("per_seed", {}).get(metric, [])
    return bool(np.isfinite(np.asarray([np.nan if v is None else v for v in values],
                                       float)).any())
  grouped = any(scored(r, m) for r in table["rows"].values() for m in ("aligned", "conflicting"))
  return "worst group" if grouped or not table["rows"] else "worst class"


def format_summary(table: dict) -> str:
  """The README form of :func:`format_table`: accuracies and the bias score, no validation."""
  lines = [f"| row | overall | bias-aligned | bias-conflicting | "
           f"{_worst(table)} | bias score (aligned %) |",
           "|---|---|---|---|---|---|"]
  for name in row_order(table["rows"]):
    r = table["rows"][name]
    cells = _accuracy_cells(r) + [_pm(r["bias_aligned_fraction"])]
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  lines += _reference_rows(table, 6)
  return "\n".join(lines)


def _reference_rows(table: dict, columns: int) -> list[str]:
  """The bias score's yardsticks: the training set's true aligned share and, when
  measured, what the classifier reads on held-out real images of known share."""
  pad = " |" * (columns - 2)
  if table.get("train_aligned_fraction") is None:  # no group labels: no bias score
    return []
  rows = [f"| *the training set itself (true share)* |{pad} {100 * table['train_aligned_fraction']:.1f} |"]
  ref = table.get("reference")
  if ref:
    true = 100 * float(np.mean(ref["true_aligned_fraction"]))
    rows.append(f"| *held-out real images ({true:.1f} % aligned), as the classifier reads them* |"
                f"{pad} {_pm(ref['bias_aligned_fraction'])} |")
  return rows


def _valid_metric(table: dict) -> str:
  """What the validation column measured: ``conflicting``, or ``overall`` when no row could."""
  metrics = {r.get("valid_metric", "conflicting") for r in table["rows"].values()}
  return "conflicting" if metrics == {"conflicting"} else "overall"


def data_name(base: dict) -> str:
  """The data of a run's flat config in words: ``--data KIND:PATH`` for a user's own data,
  else the built-in dataset with its conflict ratio (Biased-DD's sets: its aligned fraction).

  >>> data_name({"dataset": "cmnist", "conflict_ratio": 0.05})
  'cmnist, conflict ratio 0.05'
  >>> data_name({"data_spec": "folder:pets"})
  '--data folder:pets'
  """
  if base.get("data_spec") is not None:
    return f"--data {base['data_spec']}"
  # Biased-DD's sets read the ratio argument as the bias-aligned fraction (jaxdd.data).
  ratio = "aligned fraction" if base["dataset"].endswith("_dd") else "conflict ratio"
  return f"{base['dataset']}, {ratio} {base['conflict_ratio']}"


def format_table(table: dict) -> str:
  """The final table as markdown (accuracies and the bias score, in %)."""
  b, p = table["base"], table["protocol"]
  data = data_name(b)
  share = table.get("train_aligned_fraction")
  lines = [f"{data}, IPC {b['ipc']}, preset "
           f"{b['preset']}, method {b['method']}; test split, protocol {p['name']} "
           f"({p['num_epochs']} epochs), {table['num_models']} networks per SynSet, seeds "
           f"{table['seeds']}. Mean ± sample std over seeds of each seed's mean over its networks "
           "(rows with one seed: mean ± std over its networks). "
           + ("The training set has no group labels." if share is None else
              f"Bias-aligned fraction of the training set: {100 * share:.1f} %."),
           "",
           f"| row | overall | bias-aligned | bias-conflicting | {_worst(table)} | "
           f"bias score (aligned %) | valid {_valid_metric(table)} |",
           "|---|---|---|---|---|---|---|"]
  for name in row_order(table["rows"]):
    r = table["rows"][name]
    cells = _accuracy_cells(r) + [_pm(r["bias_aligned_fraction"]), _pm(r["valid_conflicting"])]
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  lines += [row + " |" for row in _reference_rows(table, 6)]
  if share is not None and table["rows"] and all(np.isnan(np.asarray(r["per_seed"]["aligned"], float)).all()
                           for r in table["rows"].values()):
    lines += ["", "The test split holds no bias-aligned image, so bias-aligned accuracy is "
              "undefined (–)."]
  if _valid_metric(table) != "conflicting" and share is None:
    lines += ["", "The data has no group labels, so the last column is overall validation "
              "accuracy, on a validation split as biased as the training data."]
  elif _valid_metric(table) != "conflicting":
    lines += ["", "The validation split holds no bias-conflicting image at this ratio, so the last "
              "column is overall validation accuracy (all of it bias-aligned)."]
  if table["paired"]:
    lines += ["", "Paired differences against `vanilla` (same seeds), mean ± std over seeds, "
              "in points:", "",
              f"| row | overall | bias-aligned | bias-conflicting | {_worst(table)} |",
              "|---|---|---|---|---|"]
    for name in row_order(table["paired"]):
      d = table["paired"][name]
      lines.append(f"| {name} − vanilla | "
                   + " | ".join(format_pm(d[m], signed=True) for m in METRICS) + " |")
  return "\n".join(lines)


def format_series(tables, *, metric: str = "conflicting") -> str:
  """Final tables of one setting at several ratios (e.g. Biased-DD's CMNIST-DD at each aligned
  fraction), one line per table in ratio order: each row's test ``metric`` (as
  :func:`format_table` gives it), the paired difference of every other row from ``vanilla``
  and the bias score, in %.

  Example:
    >>> row = lambda acc, score: {"seeds": [0, 1], "per_seed": {"conflicting": acc},
    ...                           "bias_aligned_fraction": score}
    >>> t = {"base": {"dataset": "cmnist_dd", "conflict_ratio": 0.5}, "seeds": [0, 1],
    ...      "rows": {"vanilla": row([0.2, 0.4], [0.9, 0.9]),
    ...               "kde": row([0.6, 0.6], [0.3, 0.5])},
    ...      "paired": {"kde": {"conflicting": [0.4, 0.2]}}}
    >>> print(format_series([t]))
    | aligned fraction | seeds | vanilla | kde | kde − vanilla | bias score: vanilla | bias score: kde |
    |---|---|---|---|---|---|---|
    | 0.5 | 2 | 30.0 ± 14.1 | 60.0 ± 0.0 | +30.0 ± 14.1 | 90.0 ± 0.0 | 40.0 ± 14.1 |
  """
  tables = sorted(tables, key=lambda t: t["base"]["conflict_ratio"])
  if not tables:
    return ""
  names = row_order({n: None for t in tables for n in t["rows"]})
  others = [n for n in names if n != "vanilla" and any(n in t["paired"] for t in tables)]
  scored = [n for n in names if any(n in t["rows"] and any(
      v is not None for v in t["rows"][n].get("bias_aligned_fraction", [None])) for t in tables)]
  ratio = ("aligned fraction" if tables[0]["base"]["dataset"].endswith("_dd")
           else "conflict ratio")
  head = ([ratio, "seeds"] + names + [f"{n} − vanilla" for n in others]
          + [f"bias score: {n}" for n in scored])
  lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
  for t in tables:
    rows, paired = t["rows"], t["paired"]
    cells = [f"{t['base']['conflict_ratio']:g}", str(len(t["seeds"]))]
    cells += [_metric_cell(rows[n], metric) if n in rows else "" for n in names]
    cells += [format_pm(paired[n][metric], signed=True) if n in paired else "" for n in others]
    cells += [format_pm(rows[n].get("bias_aligned_fraction", [])) if n in rows else ""
              for n in scored]
    lines.append("| " + " | ".join(cells) + " |")
  single = [n for n in names if any(n in t["rows"] and len(t["rows"][n]["seeds"]) == 1
                                     and len(t["seeds"]) > 1 for t in tables)]
  if single:
    lines += ["", f"Mean ± sample std over seeds; {', '.join(single)}: one seed, mean ± std over "
              "its networks."]
  return "\n".join(lines)


def format_methods(tables, *, rows=("vanilla", "kde (selected on valid)")) -> str:
  """Final tables of several objectives (DM, CFM, ...) and datasets, side by side: one line
  per (table, row) with the test accuracies, the bias score and each row's paired
  bias-conflicting difference from its own table's ``vanilla``, in %.

  Example:
    >>> row = lambda acc: {"seeds": [0, 1], "per_seed": {
    ...     "overall": acc, "aligned": [0.9, 0.9], "conflicting": acc},
    ...     "bias_aligned_fraction": [0.5, 0.5]}
    >>> t = {"base": {"dataset": "cmnist", "conflict_ratio": 0.05, "method": "cfm"},
    ...      "seeds": [0, 1], "num_models": 3,
    ...      "rows": {"vanilla": row([0.2, 0.4]), "kde": row([0.6, 0.6])},
    ...      "paired": {"kde": {"conflicting": [0.4, 0.2]}}}
    >>> print(format_methods([t], rows=("vanilla", "kde")))
    | dataset | objective | row | seeds × networks | overall | bias-aligned | bias-conflicting | bias score (aligned %) | − vanilla, conflicting (paired) |
    |---|---|---|---|---|---|---|---|---|
    | cmnist 0.05 | CFM | vanilla | 2 × 3 | 30.0 ± 14.1 | 90.0 ± 0.0 | 30.0 ± 14.1 | 50.0 ± 0.0 |  |
    | cmnist 0.05 | CFM | kde | 2 × 3 | 60.0 ± 0.0 | 90.0 ± 0.0 | 60.0 ± 0.0 | 50.0 ± 0.0 | +30.0 ± 14.1 |
  """
  head = ["dataset", "objective", "row", "seeds × networks", "overall", "bias-aligned",
          "bias-conflicting", "bias score (aligned %)", "− vanilla, conflicting (paired)"]
  lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
  for t in tables:
    base = t["base"]
    name_of_data = (f"--data {base['data_spec']}" if base.get("data_spec") is not None
                    else f"{base['dataset']} {base['conflict_ratio']:g}")
    for name in rows:
      if name not in t["rows"]:
        continue
      r = t["rows"][name]
      diff = (format_pm(t["paired"][name]["conflicting"], signed=True)
              if name in t.get("paired", {}) else "")
      cells = [name_of_data, base["method"].upper(), name,
               f"{len(r['seeds'])} × {t['num_models']}",
               _metric_cell(r, "overall"), _metric_cell(r, "aligned"),
               _metric_cell(r, "conflicting"), _pm(r["bias_aligned_fraction"]), diff]
      lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)
