"""Two units folders of the paper's table, row by row: the same seeds and networks, paired.

The units of ``experiments/paper_table.py --next-unit`` draw a seed's networks, augmentation
and real batches from the seed alone, so a row distilled under two settings (float32 and
bfloat16, say: ``results/paper-table`` and ``results/paper-table-bf16``) is scored by the same
evaluation networks in both: network j of one record is network j of the other. This script
pairs them. For every row and seed that both folders hold, it takes each network's
difference (second folder minus first) of the test split's overall, bias-aligned,
bias-conflicting and worst-group accuracy and of the validation split's bias-conflicting
accuracy, and reports per row: both sides' test accuracy and the paired differences, in
points. With one seed the ± is over that seed's networks (population std, ddof 0, as the
PyTorch reference reports); with several, over the seeds' means (sample std, ddof 1).

  python experiments/unit_pairs.py results/paper-table results/paper-table-bf16
  python experiments/unit_pairs.py A B --cell cmnist5-ipc50 --data results/paper-scale/x.json

Each folder is a ``--results`` folder of the queue (its units are in ``units/``) or a units
folder itself. Records are read as the queue reads them (a damaged one is refused); two
folders whose settings differ in more than ``compute_dtype`` and ``rows_per_unit`` are
refused, as their rows are not the same distillation under another arithmetic.
"""
from __future__ import annotations

import argparse
import datetime
import os
import shlex
import sys

import numpy as np

from jaxdd import results, synset
from jaxdd._src import schema
from jaxdd.runs import paper

#: Settings two paired folders may differ in: the arithmetic and how rows are grouped.
MAY_DIFFER = ("compute_dtype", "rows_per_unit")
#: (split, metric, column) of each paired difference, in column order.
DIFFERENCES = (("test", "overall", "overall"), ("test", "aligned", "aligned"),
               ("test", "conflicting", "conflicting"), ("test", "worst_group", "worst group"),
               ("valid", "conflicting", "valid conflicting"))


def units_dir(folder: str) -> str:
  """The units folder of a ``--results`` folder (``folder/units``), or ``folder`` itself."""
  inner = os.path.join(folder, "units")
  if os.path.isdir(inner):
    return inner
  if os.path.isdir(folder):
    return folder
  raise FileNotFoundError(f"{folder}: no such folder; give a --results folder of "
                          "experiments/paper_table.py or its units/ folder")


def read_units(folder: str) -> list[dict]:
  """Every unit record under ``folder`` (sorted by unit), each checked against the queue's
  schema."""
  root = units_dir(folder)
  spec = paper.UNIT_RECORD
  out = []
  for base, dirs, names in os.walk(root):
    dirs.sort()
    for name in sorted(names):
      if name.endswith(".json"):
        path = os.path.join(base, name)
        rec = schema.read_json(path, spec, fix="take the unit again from its OUT folder")
        if rec["digest"] != paper.record_digest(rec):
          raise ValueError(f"{path} does not match the digest it carries: it was changed after "
                           "it was written; take the unit again from its OUT folder")
        out.append(rec)
  if not out:
    raise FileNotFoundError(f"{root}: no unit records; run experiments/paper_table.py "
                            "--next-unit (or next_unit.sh take) first")
  return sorted(out, key=lambda r: r["unit"])


def settings_of(records: list[dict], folder: str) -> dict:
  """The one settings dict of a folder's units (they must share it, as the queue ensures)."""
  first = records[0]["settings"]
  for rec in records[1:]:
    if rec["settings"] != first:
      raise ValueError(f"{folder}: the units {records[0]['unit']} and {rec['unit']} have "
                       f"other settings ({first} and {rec['settings']}); give one setting's "
                       "units folder")
  return first


def check_comparable(a: dict, b: dict) -> None:
  """Refuses two settings that differ beyond :data:`MAY_DIFFER`."""
  keys = sorted((set(a) | set(b)) - set(MAY_DIFFER))
  other = [k for k in keys if a.get(k) != b.get(k)]
  if other:
    shown = ", ".join(f"{k}: {a.get(k)!r} against {b.get(k)!r}" for k in other)
    raise ValueError(f"the two folders differ in {shown}; pairs need the same distillation "
                     f"but for {' or '.join(MAY_DIFFER)}")


def by_seed(records: list[dict], cell: str | None) -> dict[tuple[str, str, int], dict]:
  """(cell, row, seed) -> that seed's record, over the given unit records. A label-free
  candidate's seed is in two: its seed's unit (validation only) and, once chosen, the cell's
  ``chosen-<row>`` unit with its test split too, which is the one kept."""
  out = {}
  for rec in records:
    name = rec["unit"].split("/")[0]
    if cell is not None and name != cell:
      continue
    for row, seeds in rec["rows"].items():
      for s in seeds:
        key = (name, row, int(s["seed"]))
        if "test" in s or key not in out:
          out[key] = s
  return out


def _scores(rec: dict, split: str, metric: str, where: str) -> np.ndarray:
  part = rec.get(split)
  if not isinstance(part, dict) or metric not in part:
    raise ValueError(f"{where}: no {split} {metric} scores (a unit whose test split is not "
                     "read yet, such as a label-free candidate's); leave that row out")
  return np.asarray(part[metric], float)


def pairs(a: dict, b: dict) -> dict[tuple[str, str], dict]:
  """(cell, row) -> {"seeds", "networks", "a", "b", "diff"} for every (cell, row, seed) both
  hold: ``a`` and ``b`` the per-seed arrays of per-network test overall accuracies,
  ``diff[column]`` the per-seed arrays of per-network differences ``b - a``."""
  out: dict[tuple[str, str], dict] = {}
  for key in sorted(set(a) & set(b), key=lambda k: (k[0], _row_order(k[1]), k[2])):
    cell, row, seed = key
    where = f"{cell} {row} seed {seed}"
    ra, rb = a[key], b[key]
    if "test" not in ra or "test" not in rb:
      continue  # a candidate scored on validation only: nothing reported to pair
    na, nb = len(ra["test"]["overall"]), len(rb["test"]["overall"])
    if na != nb:
      raise ValueError(f"{where}: {na} networks in the first folder, {nb} in the second; "
                       "network j pairs with network j only when both scored the same ones")
    entry = out.setdefault((cell, row), {"seeds": [], "networks": na, "a": [], "b": [],
                                         "diff": {c: [] for _, _, c in DIFFERENCES},
                                         "same_synsets": []})
    entry["seeds"].append(seed)
    entry["a"].append(_scores(ra, "test", "overall", where))
    entry["b"].append(_scores(rb, "test", "overall", where))
    for split, metric, column in DIFFERENCES:
      entry["diff"][column].append(_scores(rb, split, metric, where)
                                   - _scores(ra, split, metric, where))
    entry["same_synsets"].append(ra["synset_sha256"] == rb["synset_sha256"])
  if not out:
    raise ValueError("the two folders share no (cell, row, seed) with test scores; run the "
                     "same unit under both settings first")
  return out


def _row_order(row: str) -> int:
  names = list(paper.ROWS)
  return names.index(row) if row in names else len(names)


def summarise(per_seed: list[np.ndarray], *, signed: bool = False) -> str:
  """One seed: mean ± population std over its networks; several: mean ± sample std of the
  seeds' means."""
  if len(per_seed) == 1:
    return results.format_pm(per_seed[0], ddof=0, signed=signed)
  return results.format_pm([float(np.mean(v)) for v in per_seed], ddof=1, signed=signed)


def table(found: dict[tuple[str, str], dict], labels: tuple[str, str]) -> tuple[list, list]:
  """(columns, rows) of the published table."""
  columns = (["cell", "row", "seeds", "networks", f"test overall: {labels[0]}",
              f"test overall: {labels[1]}"]
             + [f"{labels[1]} − {labels[0]}: {c}" for _, _, c in DIFFERENCES])
  rows = []
  for (cell, row), e in found.items():
    label = paper.ROWS[row].label if row in paper.ROWS else row
    rows.append([cell, label, ", ".join(str(s) for s in e["seeds"]), str(e["networks"]),
                 summarise(e["a"]), summarise(e["b"])]
                + [summarise(e["diff"][c], signed=True) for _, _, c in DIFFERENCES])
  return columns, rows


def markdown(columns: list, rows: list) -> str:
  lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
  lines += ["| " + " | ".join(r) + " |" for r in rows]
  return "\n".join(lines)


def _provenance(records: list[dict]) -> tuple[list[str], list[str], list[str]]:
  commits = sorted({r["commit"].split("+g")[-1][:7] for r in records})
  machines = sorted({r["machine"] for r in records})
  dates = sorted({r["date"] for r in records})
  return commits, machines, dates


def data_record(args, found, labels, ra: list[dict], rb: list[dict], sa: dict, sb: dict,
                argv: list[str]) -> dict:
  """The table as a results record (``experiments/results_tables.py`` renders it)."""
  columns, rows = table(found, labels)
  (ca, ma, da), (cb, mb, db) = _provenance(ra), _provenance(rb)
  identical = [f"{cell} {row}" for (cell, row), e in found.items() if all(e["same_synsets"])]
  notes = [
      f"{labels[0]}: the units of `{args.first}` (settings {sa}); {labels[1]}: those of "
      f"`{args.second}` (settings {sb}). The same seeds, evaluation networks, augmentation "
      "and real batches; each network's accuracy in the second minus the first, in points. "
      "± is over one seed's networks (population std, ddof 0) where a row has one seed, "
      "otherwise the sample std over seeds of each seed's mean.",
  ]
  if identical:
    notes.append("Identical SynSets (the same sha256) in both: " + ", ".join(identical) + ".")
  return {"columns": columns, "rows": rows, "notes": notes,
          "date": max(da + db) if args.date is None else args.date,
          "commit": f"{labels[0]}: {', '.join(ca)}; {labels[1]}: {', '.join(cb)}",
          "machine": f"{labels[0]}: {'; '.join(ma)}; {labels[1]}: {'; '.join(mb)}",
          "command": ["python experiments/unit_pairs.py " + " ".join(shlex.quote(a) for a in argv)]}


def main(argv=None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("first", help="the reference folder (e.g. results/paper-table)")
  p.add_argument("second", help="the compared folder (e.g. results/paper-table-bf16)")
  p.add_argument("--labels", default="float32,bfloat16",
                 help="the two folders' names in the table (default: float32,bfloat16)")
  p.add_argument("--cell", default=None, help="only this cell (default: every cell both hold)")
  p.add_argument("--data", default=None, metavar="PATH",
                 help="also write the table as a results record (JSON, atomically)")
  p.add_argument("--date", default=None, help="the record's date (default: its units' latest)")
  args = p.parse_args(argv)
  labels = tuple(s.strip() for s in args.labels.split(","))
  if len(labels) != 2 or not all(labels):
    p.error(f"--labels takes two names separated by a comma, got {args.labels!r}")
  if args.date is not None:
    try:
      datetime.date.fromisoformat(args.date)
    except ValueError:
      p.error(f"--date takes YYYY-MM-DD, got {args.date!r}")
  try:
    ra, rb = read_units(args.first), read_units(args.second)
    sa, sb = settings_of(ra, args.first), settings_of(rb, args.second)
    check_comparable(sa, sb)
    found = pairs(by_seed(ra, args.cell), by_seed(rb, args.cell))
  except (OSError, ValueError) as e:  # FileFormatError is a ValueError
    print(f"unit_pairs: {e}", file=sys.stderr)
    return 2
  print(markdown(*table(found, labels)))
  if args.data:
    os.makedirs(os.path.dirname(args.data) or ".", exist_ok=True)
    synset.atomic_write_json(args.data, data_record(args, found, labels, ra, rb, sa, sb, argv))
    print(f"unit_pairs: wrote {args.data}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
