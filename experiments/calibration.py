"""Calibrating a CPU preset against the paper-scale rows: the evaluation's share, the grid's
table, the order check and each row's distance.

A CPU preset predicts the paper's setting when the rows it gives for the headline cell (CMNIST
5 %, IPC 50, seed 0) stand in the order, and near the values, of the same rows at paper scale
(20,000 DM steps on one GPU, the ``dm`` protocol). Two sources of difference are measured
apart:

* ``eval``: the evaluation alone. The paper-scale SynSets of the rows (a folder
  ``DIR/<row>/s0/`` holding ``synset/`` and ``config.json``, as the paper table leaves them)
  are evaluated under shorter protocols (``--epochs``, the reference's ``Epoch``) and
  narrower evaluation networks (``--widths``), every SynSet's networks in one program, the
  same networks (the runs' own evaluation keys) at every point. One JSON line per point is
  appended to ``--out`` (a point already there is skipped: the command goes on where it
  stopped).
* ``table``: the distillation grid. Each point is one ``paper_table.py`` cell (its settings
  as ``--set`` flags, seed 0, its own ``--results`` folder); this writes the grid as a
  results-table data file: the points' rows beside the paper-scale ones, whether each point
  ranks the rows in the paper-scale order, and each row's distance from its paper-scale
  value.

  python experiments/calibration.py eval --runs RUNS --rows vanilla,kde,fairdd_pseudo,fairdd_batch,fairdd \\
      --epochs 40,300,500 --widths 128,64 --networks 3 --out results/calibration/eval-grid.jsonl
  python experiments/calibration.py table --reference results/paper-scale/h100-cell-s0 \\
      --point 'lr 10, 600 steps=runs/cal-a/results' ... --out results/calibration/grid.json
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time

#: The rows the calibration compares, in the paper-scale order (lowest test overall first).
ROWS = ("vanilla", "fairdd_batch", "fairdd_pseudo", "kde", "fairdd")
LABELS = {"vanilla": "vanilla DM", "fairdd_batch": "FairDD, in-batch DBSCAN",
          "fairdd_pseudo": "FairDD, k-means pseudo-groups", "kde": "DM + KDE (the paper)",
          "fairdd": "FairDD, true labels"}
#: Largest distance from the paper-scale value that a calibrated row may have (points).
TOLERANCE = 5.0


def _done(path: str) -> set:
  if not os.path.exists(path):
    return set()
  out = set()
  with open(path) as f:
    for line in f:
      line = line.strip()
      if line:
        rec = json.loads(line)
        out.add((rec["epochs"], rec["width"], rec["networks"]))
  return out


def _append(path: str, rec: dict) -> None:
  """One line appended and flushed to disk (a line is whole or absent: the reader skips a
  torn last line)."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "a") as f:
    f.write(json.dumps(rec, sort_keys=True) + "\n")
    f.flush()
    os.fsync(f.fileno())


def eval_main(args: argparse.Namespace) -> int:
  import jax.numpy as jnp
  import numpy as np

  from jaxdd import evaluate, models, protocols, runs, synset
  from jaxdd.config import RunConfig
  from jaxdd.structs import SynSet

  rows = [r for r in args.rows.split(",") if r]
  configs, syns = [], []
  for r in rows:
    folder = os.path.join(args.runs, r, f"s{args.seed}")
    try:
      with open(os.path.join(folder, "config.json")) as f:
        configs.append(RunConfig.from_dict(json.load(f)["config"]))
      syns.append(synset.load(os.path.join(folder, "synset"))[0])
    except (OSError, ValueError, KeyError) as e:
      print(f"calibration: {folder} is not a paper-table run ({e}); give --runs the folder "
            "that holds <row>/s<seed>/config.json and synset/", file=sys.stderr)
      return 2
  run_data = runs.RunData(configs[0])
  valid, test = run_data.batch(run_data.valid), run_data.batch(run_data.test)
  done = _done(args.out)
  keys = [runs.run_keys(c)[2] for c in configs]
  for epochs in [int(e) for e in args.epochs.split(",")]:
    for width in [int(w) for w in args.widths.split(",")]:
      if (epochs, width, args.networks) in done:
        continue
      base = protocols.get_protocol(args.protocol)
      protocol = base.replace(name=f"{base.name}-e{epochs}", epochs=epochs)
      model = models.get(f"convnet-d3-w{width}", num_classes=run_data.num_classes)
      t0 = time.perf_counter()
      res = evaluate.evaluate_synsets(
          keys, [SynSet(jnp.asarray(s.images), jnp.asarray(s.labels)) for s in syns], test,
          model=model, protocol=protocol, num_models=args.networks, valid=valid,
          select_on="conflicting")
      spent = time.perf_counter() - t0
      n = len(syns[0].labels)
      steps = (epochs + 1) * -(-n // protocol.batch_size)
      rec = {"epochs": epochs, "width": width, "networks": args.networks, "sgd_steps": steps,
             "eval_s": round(spent, 1), "protocol": protocol.to_dict() | {"augment":
                                                                          str(base.augment)},
             "rows": {r: {"valid_conflicting": float(np.mean(x.valid_scores[0])),
                          "test_overall": float(np.mean(x.overall)),
                          "test_conflicting": float(np.mean(x.conflicting)),
                          "test_worst_group": float(np.mean(x.worst_group))}
                      for r, x in zip(rows, res)},
             "date": datetime.date.today().isoformat()}
      _append(args.out, rec)
      print(f"[calibration] epochs {epochs} width {width}: "
            + ", ".join(f"{r} {100 * v['test_overall']:.1f}" for r, v in rec["rows"].items())
            + f" ({spent:.0f} s)", flush=True)
  return 0


def _mean(xs) -> float:
  xs = [x for x in xs if x is not None]
  return sum(xs) / len(xs)


def reference_rows(folder: str) -> dict:
  """Row -> (valid conflicting, test overall) in %, the mean over the networks of the
  paper-scale records ``<row>-net<i>.json``."""
  out = {}
  for r in ROWS:
    recs = []
    i = 0
    while os.path.exists(os.path.join(folder, f"{r}-net{i}.json")):
      with open(os.path.join(folder, f"{r}-net{i}.json")) as f:
        recs.append(json.load(f))
      i += 1
    if not recs:
      raise ValueError(f"{folder} has no {r}-net0.json")
    out[r] = (100 * _mean([x["valid_conflicting"] for x in recs]),
              100 * _mean([x["test"]["overall"] for x in recs]))
  return out


def point_rows(workdir: str, cell: str, seed: int) -> dict:
  """Row -> (valid conflicting, test overall) in %, the mean over a run's evaluation
  networks (``paper-eval.json`` of each run of a paper-table work folder)."""
  out = {}
  for r in ROWS:
    path = os.path.join(workdir, cell, r, f"s{seed}", "paper-eval.json")
    if not os.path.exists(path) and r not in ("vanilla", "kde"):
      continue  # a point of fewer rows (vanilla and kde are in every one)
    with open(path) as f:
      rec = json.load(f)
    out[r] = (100 * _mean(rec["valid"]["conflicting"]), 100 * _mean(rec["test"]["overall"]))
  return out


def ordered(values: dict) -> bool:
  """Whether the rows stand in the paper-scale order (each above the one before)."""
  xs = [values[r] for r in ROWS]
  return all(a < b for a, b in zip(xs, xs[1:]))


def grid_table(reference: dict, points: list[tuple[str, dict]]) -> dict:
  """The results-table data of the grid: one row per point (the paper-scale one first), the
  test overall of each calibration row with its distance from paper scale, whether the
  test and the validation numbers stand in the paper-scale order, and the largest
  distance."""
  columns = (["point"] + [LABELS[r] for r in ROWS]
             + ["order as paper scale: test · validation", "largest distance (row)"])
  ref_test = {r: reference[r][1] for r in ROWS}
  table = [["paper scale (reference)"] + [f"{ref_test[r]:.1f}" for r in ROWS]
           + ["yes · " + ("yes" if ordered({r: reference[r][0] for r in ROWS}) else "no"),
              "–"]]
  for label, vals in points:
    have = [r for r in ROWS if r in vals]
    test = {r: vals[r][1] for r in have}
    dist = {r: test[r] - ref_test[r] for r in have}
    worst = max(have, key=lambda r: abs(dist[r]))
    order = (("yes" if ordered(test) else "no") + " · "
             + ("yes" if ordered({r: vals[r][0] for r in ROWS}) else "no")
             if len(have) == len(ROWS) else "–")
    table.append([label] + [f"{test[r]:.1f} ({dist[r]:+.1f})" if r in test else "–"
                            for r in ROWS]
                 + [order, f"{abs(dist[worst]):.1f} ({LABELS[worst]})"])
  return {"columns": columns, "rows": table}


def eval_table(reference: dict, records: list[dict]) -> dict:
  """The results-table data of the evaluation grid: one row per (epochs, width, networks)
  point, the test overall of each calibration row (its distance from the paper-scale
  value), the order check and the largest distance, and the seconds it took."""
  columns = (["evaluation of the paper-scale SynSets", "SGD steps / network"]
             + [LABELS[r] for r in ROWS]
             + ["order as paper scale: test · validation", "largest distance (row)",
                "eval s (5 SynSets)"])
  rows = [["`dm` protocol, width 128, 5 networks (reference)", "2,002"]
          + [f"{reference[r][1]:.1f}" for r in ROWS] + ["yes · yes", "–", "–"]]
  for rec in sorted(records, key=lambda x: (x["width"], x["epochs"], x["networks"])):
    vals = {r: (100 * v["valid_conflicting"], 100 * v["test_overall"])
            for r, v in rec["rows"].items()}
    test = {r: vals[r][1] for r in ROWS}
    dist = {r: test[r] - reference[r][1] for r in ROWS}
    worst = max(ROWS, key=lambda r: abs(dist[r]))
    rows.append([f"{rec['epochs'] + 1} epochs, width {rec['width']}, {rec['networks']} networks",
                 f"{rec['sgd_steps']:,}"]
                + [f"{test[r]:.1f} ({dist[r]:+.1f})" for r in ROWS]
                + [("yes" if ordered(test) else "no") + " · "
                   + ("yes" if ordered({r: vals[r][0] for r in ROWS}) else "no"),
                   f"{abs(dist[worst]):.1f} ({LABELS[worst]})", f"{rec['eval_s']:.0f}"])
  return {"columns": columns, "rows": rows}


def _publish(args: argparse.Namespace, out: dict) -> int:
  """Prints a table's rows and, with ``--out``, writes it with its provenance (atomically)."""
  for row in out["rows"]:
    print(" | ".join(row))
  if args.out:
    from jaxdd import synset
    synset.atomic_write_json(args.out, dict(
        out, notes=list(args.note), date=args.date or datetime.date.today().isoformat(),
        commit=args.commit, machine=args.machine, command=list(args.command)))
  return 0


def eval_table_main(args: argparse.Namespace) -> int:
  try:
    reference = reference_rows(args.reference)
    with open(args.grid) as f:
      records = [json.loads(line) for line in f if line.strip()]
  except (OSError, ValueError, KeyError) as e:
    print(f"calibration: {e}", file=sys.stderr)
    return 2
  return _publish(args, eval_table(reference, records))


def compare_table(reference: dict, tables: list[tuple[str, dict]]) -> dict:
  """The results-table data that sets the paper-scale rows beside cell tables of the paper
  table's format (``tables``: a label and the cell JSON): each calibration row's test
  overall in each, with its distance from paper scale, and whether each ranks the rows as
  paper scale does."""
  from jaxdd.runs import paper  # the paper table's row labels
  labels = {r: paper.ROWS[r].label for r in ROWS}
  columns = ["row", "paper scale (reference)"] + [label for label, _ in tables]
  found = []
  for _, data in tables:
    i = data["columns"].index("test overall")
    by_label = {row[0]: row for row in data["rows"]}
    found.append({r: (by_label[labels[r]][i], by_label[labels[r]][2])
                  for r in ROWS if labels[r] in by_label})
  rows = []
  for r in ROWS:
    row = [LABELS[r], f"{reference[r][1]:.1f}"]
    for vals in found:
      if r not in vals:
        row.append("–")
        continue
      text, seeds = vals[r]
      mean = float(text.split("±")[0])
      row.append(f"{text} ({mean - reference[r][1]:+.1f}; seeds {seeds})")
    rows.append(row)
  order = ["order as paper scale", "yes"]
  for vals in found:
    if len(vals) < len(ROWS):
      order.append("–")
    else:
      order.append("yes" if ordered({r: float(vals[r][0].split("±")[0]) for r in ROWS})
                   else "no")
  rows.append(order)
  return {"columns": columns, "rows": rows}


def compare_main(args: argparse.Namespace) -> int:
  try:
    reference = reference_rows(args.reference)
    tables = []
    for item in args.table:
      label, sep, path = item.rpartition("=")
      if not sep:
        raise ValueError(f"--table {item!r} is not LABEL=PATH")
      with open(path) as f:
        tables.append((label, json.load(f)))
    out = compare_table(reference, tables)
  except (OSError, ValueError, KeyError) as e:
    print(f"calibration: {e}", file=sys.stderr)
    return 2
  return _publish(args, out)


def table_main(args: argparse.Namespace) -> int:
  try:
    reference = reference_rows(args.reference)
    points = []
    for item in args.point:
      label, sep, workdir = item.rpartition("=")
      if not sep:
        raise ValueError(f"--point {item!r} is not LABEL=WORKDIR")
      points.append((label, point_rows(workdir, args.cell, args.seed)))
  except (OSError, ValueError, KeyError) as e:
    print(f"calibration: {e}", file=sys.stderr)
    return 2
  return _publish(args, grid_table(reference, points))


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  sub = p.add_subparsers(dest="cmd", required=True)
  e = sub.add_parser("eval", help="the paper-scale SynSets under shorter evaluations")
  e.add_argument("--runs", required=True, help="folder of <row>/s<seed>/{config.json,synset}")
  e.add_argument("--rows", default=",".join(ROWS))
  e.add_argument("--seed", type=int, default=0)
  e.add_argument("--protocol", default="dm", help="the recipe whose epochs are changed")
  e.add_argument("--epochs", default="40,300")
  e.add_argument("--widths", default="128")
  e.add_argument("--networks", type=int, default=3)
  e.add_argument("--out", required=True, help="JSON lines, appended; done points skipped")
  e.add_argument("--tiny", action="store_true", help=(
      "check the script in seconds: 1 epoch, width 8, 1 network (flags given explicitly "
      "still apply)"))
  et = sub.add_parser("eval-table", help="the evaluation grid (eval's JSON lines) as a table")
  et.add_argument("--reference", required=True,
                  help="folder of the paper-scale records <row>-net<i>.json")
  et.add_argument("--grid", required=True, help="the JSON lines eval wrote")
  c = sub.add_parser("compare", help="paper scale beside cell tables of other presets")
  c.add_argument("--reference", required=True,
                 help="folder of the paper-scale records <row>-net<i>.json")
  c.add_argument("--table", action="append", default=[], metavar="LABEL=PATH",
                 help="a cell table of experiments/paper_table.py (repeatable)")
  t = sub.add_parser("table", help="the distillation grid against paper scale")
  t.add_argument("--reference", required=True,
                 help="folder of the paper-scale records <row>-net<i>.json")
  t.add_argument("--point", action="append", default=[], metavar="LABEL=WORKDIR",
                 help="a grid point: its label and its paper_table.py --workdir (repeatable)")
  t.add_argument("--cell", default="cmnist5-ipc50")
  t.add_argument("--seed", type=int, default=0)
  for q in (t, et, c):
    q.add_argument("--out", default=None, help="the results-table data file to write")
    q.add_argument("--note", action="append", default=[])
    q.add_argument("--date", default=None)
    q.add_argument("--commit", default="")
    q.add_argument("--machine", default="")
    q.add_argument("--command", action="append", default=[])
  args = p.parse_args(argv)
  if args.cmd == "eval" and args.tiny:
    e.set_defaults(epochs="1", widths="8", networks=1)
    args = p.parse_args(argv)
  if args.cmd == "eval":
    return eval_main(args)
  if args.cmd == "eval-table":
    return eval_table_main(args)
  if args.cmd == "compare":
    return compare_main(args)
  return table_main(args)


if __name__ == "__main__":
  sys.exit(main())
