"""Wall time of a whole results-table cell in one program against the same cell row by row.

Each arm is one invocation of ``experiments/paper_table.py`` in its own process, from an
empty work folder, and is timed from outside (start, data, distillation, evaluation, the
validation choice and the table):

* ``cell``: the queue as it runs: the DM rows x seeds distilled in ONE program
  (:func:`jaxdd.runs.distill_cell`), their SynSets evaluated in one program per split;
* ``rows``: the same command with ``--row-by-row``: each row's seeds in one program
  (:func:`jaxdd.runs.distill_seeds`), each SynSet evaluated alone.

The arms alternate (``--repeats``; the first arm swaps each repeat). The JSON line gives
each arm's wall seconds, its distillation and evaluation seconds (the queue's own
records), the ratio rows / cell of the medians (above 1: the cell program is faster), and
how far the two arms' SynSets and test accuracies differ (every run of the cell equals the
run alone up to float rounding at each step; over hundreds of steps the rounding grows, and a
ReLU whose input is within rounding of zero can fall on either side in the two arms, which
changes the gradient of the pixels that unit sees by more than rounding). The surrogates are
cached on disk by the first arm to need them, so ``--warm`` trains them first, untimed: both
arms then load the same ones.

  jaxdd data fetch mnist
  python benchmarks/cell_whole.py --preset proxy --iterations 100 --repeats 1 --warm \\
      --workdir runs/cell-whole
  python benchmarks/cell_whole.py --tiny --workdir runs/cell-whole-tiny   # seconds
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
QUEUE = os.path.join(HERE, os.pardir, "experiments", "paper_table.py")
#: A pixel difference float rounding explains: about 20 float32 ulps of the largest pixels
#: (|x| up to about 5 after a few steps; an ulp of 4 is 4.8e-7).
ROUNDING = 1e-5


def _arm(args, name: str, folder: str, iterations: int | None) -> float:
  """Runs one arm from an empty folder; returns its wall seconds."""
  shutil.rmtree(folder, ignore_errors=True)
  cmd = [sys.executable, QUEUE, "--preset", args.preset, "--cells", args.cell, "--rows",
         args.rows, "--seeds", args.seeds, "--workdir", os.path.join(folder, "runs"),
         "--results", os.path.join(folder, "results"), "--quiet"]
  if iterations is not None:
    cmd += ["--iterations", str(iterations)]
  if name == "rows":
    cmd.append("--row-by-row")
  t0 = time.perf_counter()
  done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  wall = time.perf_counter() - t0
  if done.returncode != 0:
    last = (done.stderr.strip().splitlines() or ["no message"])[-1]
    raise SystemExit(f"cell_whole: the {name} arm failed (exit {done.returncode}): {last}")
  return wall


def _phases(args, folder: str) -> dict:
  """The queue's own records of one arm: distillation and evaluation seconds, summed over
  the runs (the cell arm records each run's share of its one program)."""
  distill_s = eval_s = 0.0
  for run in _runs(args):
    w = os.path.join(folder, "runs", args.cell, *run)
    distill_s += _json(os.path.join(w, "paper-timing.json"))["distill_s"]
    eval_s += _json(os.path.join(w, "paper-eval.json"))["eval_s"]
  return {"distill_s": round(distill_s, 1), "eval_s": round(eval_s, 1)}


def _runs(args) -> list[tuple[str, str]]:
  return [(r, f"s{s}") for r in args.rows.split(",") for s in args.seeds.split(",")]


def _json(path: str) -> dict:
  with open(path) as f:
    return json.load(f)


def _differences(args, a: str, b: str) -> dict:
  """How far the arms' SynSets and test accuracies differ: the largest pixel difference, the
  share of pixels that differ by more than float rounding (:data:`ROUNDING`), and the largest
  difference of a network's test accuracy."""
  import numpy as np

  from jaxdd import synset
  pixels = acc = 0.0
  beyond = total = 0
  for run in _runs(args):
    wa, wb = (os.path.join(f, "runs", args.cell, *run) for f in (a, b))
    sa, sb = (np.asarray(synset.load(os.path.join(w, "synset"))[0].images) for w in (wa, wb))
    d = np.abs(sa - sb)
    pixels = max(pixels, float(np.max(d)))
    beyond += int(np.sum(d > ROUNDING))
    total += d.size
    ea, eb = (_json(os.path.join(w, "paper-eval.json"))["test"]["overall"] for w in (wa, wb))
    acc = max(acc, float(np.max(np.abs(np.asarray(ea) - np.asarray(eb)))))
  return {"max_pixel_diff": pixels, "pixels_beyond_rounding": beyond,
          "pixels_beyond_rounding_share": beyond / total, "max_test_overall_diff": acc}


def _warm(args) -> None:
  """Trains (or finds cached) each seed's surrogate, as the queue's runs will ask for it."""
  from jaxdd import runs
  from jaxdd.runs import paper
  q = paper.Queue(paper.Options(preset=args.preset, workdir="-", results="-"),
                  {"source": "full"} if args.preset == "paper" else {})
  cell = {c.name: c for c in paper.CELLS}[args.cell]
  for seed in args.seeds.split(","):
    config = paper.row_config(q.base(cell), cell, "kde", int(seed))
    runs.surrogate_artifact(config, q.run_data(config), runs.run_keys(config)[0],
                            progress=False)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--preset", default="proxy")
  p.add_argument("--iterations", type=int, default=None, help="DM steps (default: the preset's)")
  p.add_argument("--cell", default="cmnist5-ipc50")
  p.add_argument("--rows", default="vanilla,kde,fairdd,fairdd_pseudo,fairdd_batch")
  p.add_argument("--seeds", default="0,1,2")
  p.add_argument("--repeats", type=int, default=1, help="alternations of the two arms")
  p.add_argument("--warm", action="store_true",
                 help="first train (or find cached) each seed's surrogate, untimed")
  p.add_argument("--workdir", required=True, help="a folder for the arms' runs (emptied)")
  p.add_argument("--tiny", action="store_true", help=(
      "check the script in seconds: the smoke preset, 2 steps, cell cmnist5-ipc10, rows "
      "vanilla and kde, seeds 0,1 (flags given explicitly still apply)"))
  args = p.parse_args(argv)
  if args.tiny:
    p.set_defaults(preset="smoke", iterations=2, cell="cmnist5-ipc10", rows="vanilla,kde",
                   seeds="0,1")
    args = p.parse_args(argv)
  if args.repeats < 1:
    p.error(f"--repeats must be at least 1, got {args.repeats}")
  if args.warm:
    _warm(args)
  walls: dict[str, list[float]] = {"cell": [], "rows": []}
  phases: dict[str, list[dict]] = {"cell": [], "rows": []}
  for r in range(args.repeats):
    for name in (("cell", "rows") if r % 2 == 0 else ("rows", "cell")):
      folder = os.path.join(args.workdir, name)
      walls[name].append(round(_arm(args, name, folder, args.iterations), 1))
      phases[name].append(_phases(args, folder))
  diff = _differences(args, *(os.path.join(args.workdir, n) for n in ("cell", "rows")))
  med = {n: statistics.median(w) for n, w in walls.items()}
  print(json.dumps({"preset": args.preset, "iterations": args.iterations, "cell": args.cell,
                    "rows": args.rows.split(","), "seeds": args.seeds.split(","),
                    "wall_s": walls, "phases": phases, "cell_wall_s": med["cell"],
                    "rows_wall_s": med["rows"], "rows_over_cell": round(med["rows"] / med["cell"], 3),
                    **diff}), flush=True)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
