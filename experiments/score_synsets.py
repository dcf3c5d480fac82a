"""Scores finished runs' SynSets one network at a time, resumable, then puts them in a table.

An evaluation at the ``dm`` protocol trains 1,000 epochs per network: on a 2-core CPU about
12 minutes per network at IPC 50. This script does it a network at a time, for SynSets
distilled elsewhere (a lent GPU that stopped before its evaluation, say). Network ``j`` of
a run is the run's own evaluation network ``j`` (its key is ``jax.random.split(evaluation
key, num_eval_models)[j]``, as :func:`jaxdd.evaluate.evaluate_synsets` draws it), so the
scores put together equal the whole evaluation's up to float rounding. Each network's
scores are written at once to ``<out>/<row>-net<j>.json``; a rerun skips what is there, so
the work survives an interrupted run. ``--table`` then writes ``<out>/table.json`` (the
results-table format) from whatever records exist, with the number of networks per row.

  python experiments/score_synsets.py --runs runs/h100/{vanilla,kde}/s0 --networks 0,1,2 \\
      --out results/paper-scale/h100-seed0
  python experiments/score_synsets.py --runs runs/h100/{vanilla,kde}/s0 \\
      --out results/paper-scale/h100-seed0 --table --title "..." --command "..."

The runs are folders as :func:`jaxdd.runs.distill_stage` writes them: ``config.json``,
``weights.json`` (the share of synthetic images in their class's aligned bias) and
``synset/``. The data are rebuilt from each run's configuration (full MNIST from
``jaxdd data fetch mnist`` for the ``paper`` preset). The test split is scored once per
network, with the validation split, by the same networks; nothing is chosen on it.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time

import jax.numpy as jnp
import numpy as np

from jaxdd import evaluate, models, runs, synset
from jaxdd._src import schema
from jaxdd.cli import arguments
from jaxdd.config import RunConfig, get_config
from jaxdd.runs import version
from jaxdd.structs import SynSet

METRICS = ("overall", "aligned", "conflicting", "worst_group")
NET_RECORD = schema.obj({"network": schema.INT, "valid_conflicting": schema.NUM,
                         "test": schema.map_of(schema.NUM), "eval_s": schema.NUM})
COLUMNS = ["row", "networks", "valid conflicting", "test overall", "test aligned",
           "test conflicting", "test worst group", "DEO_M", "DEO_A",
           "in aligned bias, start → end"]


def row_name(run: str) -> str:
  """``runs/x/<row>/s0`` -> ``<row>``: the row a run folder holds."""
  parts = os.path.normpath(run).split(os.sep)
  return parts[-2] if len(parts) > 1 and parts[-1].startswith("s") else parts[-1]


def load_run(run: str) -> tuple[RunConfig, SynSet, dict]:
  with open(os.path.join(run, "config.json")) as f:
    config = RunConfig.from_dict(json.load(f)["config"])
  syn, meta = synset.load(os.path.join(run, "synset"))
  return config, syn, meta


def score_network(config: RunConfig, syn: SynSet, run_data: runs.RunData, j: int) -> dict:
  """Network ``j`` of a run's evaluation, scored on validation and test (the same network)."""
  t0 = time.perf_counter()
  model = models.get(config.eval_model, num_classes=run_data.num_classes)
  valid = run_data.batch(run_data.valid)
  (res,) = evaluate.evaluate_synsets(
      [runs.run_keys(config)[2]], [SynSet(jnp.asarray(syn.images), jnp.asarray(syn.labels))],
      run_data.batch(run_data.test), model=model, protocol=config.eval_protocol,
      num_models=config.num_eval_models, valid=valid, select_on="conflicting", networks=[j])
  deo_m, deo_a = res.equalized_odds()
  test = {m: float(np.asarray(getattr(res, m))[0]) for m in METRICS}
  test.update(deo_m=float(np.asarray(deo_m)[0]), deo_a=float(np.asarray(deo_a)[0]))
  return {"network": j, "valid_conflicting": float(np.asarray(res.valid_scores)[0, 0]),
          "test": test, "eval_s": time.perf_counter() - t0}


def score(run_dirs: list[str], networks: list[int], out: str) -> None:
  """Every (network, run) not scored yet, networks in the outer loop (so that every row has
  its first network before any has its second)."""
  os.makedirs(out, exist_ok=True)
  loaded = {r: load_run(r) for r in run_dirs}
  data_key = {json.dumps([c.dataset, c.conflict_ratio, c.source, c.seed])
              for c, _, _ in loaded.values()}
  if len(data_key) != 1:
    raise ValueError("these runs are on different data; score them one dataset at a time")
  run_data = runs.RunData(next(iter(loaded.values()))[0])
  for j in networks:
    for r in run_dirs:
      path = os.path.join(out, f"{row_name(r)}-net{j}.json")
      if os.path.exists(path):
        continue
      config, syn, _ = loaded[r]
      if j >= config.num_eval_models:
        raise ValueError(f"{r} has {config.num_eval_models} evaluation networks; network {j} "
                         "is not one of them")
      rec = score_network(config, syn, run_data, j)
      synset.atomic_write_json(path, rec)
      print(f"[score_synsets] {row_name(r)} network {j}: test overall "
            f"{100 * rec['test']['overall']:.1f} %, conflicting "
            f"{100 * rec['test']['conflicting']:.1f} % ({rec['eval_s']:.0f} s)", flush=True)


def _pm(values) -> str:
  v = 100 * np.asarray(values, float)
  if len(v) == 1:
    return f"{v[0]:.1f}"
  return f"{v.mean():.1f} ± {v.std(ddof=0):.1f}"


def table(run_dirs: list[str], out: str, *, title: str, command: list[str], machine: str,
          commit: str, labels: dict | None = None) -> dict:
  """The results table of the records in ``out``: per row, the mean ± population std over
  its scored networks, and how many."""
  rows = []
  for r in run_dirs:
    name = row_name(r)
    recs = []
    for fn in sorted(os.listdir(out)):
      if fn.startswith(f"{name}-net") and fn.endswith(".json"):
        recs.append(schema.read_json(os.path.join(out, fn), NET_RECORD,
                                     fix="score that network again"))
    if not recs:
      continue
    with open(os.path.join(r, "weights.json")) as f:
      traj = json.load(f).get("bias_trajectory", [])
    bias = (f"{traj[0]['bias_aligned_fraction']:.3f} → {traj[-1]['bias_aligned_fraction']:.3f}"
            if traj else "–")
    test = lambda m: [x["test"][m] for x in recs]  # noqa: E731
    rows.append([(labels or {}).get(name, name), str(len(recs)), _pm([x["valid_conflicting"] for x in recs]),
                 *[_pm(test(m)) for m in METRICS + ("deo_m", "deo_a")], bias])
  return {"caption": title, "columns": COLUMNS, "rows": rows,
          "notes": ["Accuracies in %; ± is the population standard deviation (ddof 0) over the "
                    "scored evaluation networks of the one SynSet, as the reference reports it.",
                    "DEO_M / DEO_A: FairDD's equalized-odds differences on the test split."],
          "date": datetime.date.today().isoformat(), "commit": commit, "machine": machine,
          "command": command}


def tiny_runs(root: str) -> list[str]:
  """Two smoke runs (vanilla and DM + KDE, 2 steps) distilled under ``root``."""
  out = []
  for w in ("none", "kde"):
    workdir = os.path.join(root, "vanilla" if w == "none" else w, "s0")
    runs.distill_stage(get_config("smoke", weighting=w, iterations=2), workdir, progress=False)
    out.append(workdir)
  return out


def main(argv=None) -> int:
  p = arguments.Parser(prog="score_synsets", description=__doc__.split("\n\n")[0],
                       formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--runs", nargs="+", default=None, help="run folders (config.json, synset/)")
  p.add_argument("--networks", default="0,1,2", type=arguments.index_list,
                 help="the evaluation networks to score (default 0,1,2)")
  p.add_argument("--out", required=True, help="where each network's record is written")
  p.add_argument("--table", action="store_true",
                 help="write <out>/table.json from the records instead of scoring")
  p.add_argument("--title", default="")
  p.add_argument("--command", action="append", default=[],
                 help="the command(s) the table names (repeatable)")
  p.add_argument("--label", action="append", default=[], metavar="ROW=TEXT",
                 help="the table's name for a row (repeatable; default the run folder's row)")
  p.add_argument("--machine", default=None, help="the machine the table names")
  p.add_argument("--commit", default=None, help="the commit the table names")
  p.add_argument("--tiny", action="store_true", help=(
      "check the script in seconds: distil two smoke runs (vanilla, DM + KDE; 2 steps) under "
      "<out>/tiny-runs, score their networks 0 and 1, then write the table"))
  args = p.parse_args(argv)
  if args.tiny:
    args.runs = tiny_runs(os.path.join(args.out, "tiny-runs"))
    args.networks = [0, 1]
    score(args.runs, args.networks, args.out)
    args.table = True
  if not args.runs:
    print("score_synsets: error: give --runs (run folders)", file=sys.stderr)
    return 2
  missing = [r for r in args.runs if not os.path.isfile(os.path.join(r, "config.json"))]
  if missing:
    print(f"score_synsets: error: {missing[0]} has no config.json; give run folders",
          file=sys.stderr)
    return 2
  try:
    if args.table:
      bad = [x for x in args.label if "=" not in x]
      if bad:
        raise ValueError(f"--label {bad[0]!r}: give ROW=TEXT")
      data = table(args.runs, args.out, title=args.title, command=args.command,
                   machine=args.machine or version.machine(),
                   commit=args.commit or runs.code_version(),
                   labels=dict(x.split("=", 1) for x in args.label))
      synset.atomic_write_json(os.path.join(args.out, "table.json"), data)
      print(json.dumps(data["rows"], ensure_ascii=False))
    else:
      score(args.runs, args.networks, args.out)
  except (ValueError, OSError, schema.FileFormatError) as e:
    print(f"score_synsets: error: {e}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
