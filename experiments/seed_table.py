"""Summarises `jaxdd reproduce` runs of several distillation seeds as one markdown table.

Each run directory holds `comparison.json` (per method: mean and std over its evaluation
networks). The table gives, per method and metric, the mean ± std **over seeds** of the per-seed
means, and the paired difference of each `<method>+kde` row against its vanilla row on the same
seeds (mean ± std of the per-seed differences).

  python experiments/seed_table.py runs/dsa-cmnist5-s0 runs/dsa-cmnist5-s1 runs/dsa-cmnist5-s2
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

from jaxdd import runs

METRICS = ("overall", "aligned", "conflicting", "worst_group")


def load(run_dirs: list[str]) -> dict[str, np.ndarray]:
  """method -> (seeds, metrics) array of per-seed mean accuracies in %."""
  per_method: dict[str, list[list[float]]] = {}
  for d in run_dirs:
    path = os.path.join(d, "comparison.json")
    if not os.path.exists(path):
      raise FileNotFoundError(f"{path} not found: is {d} a finished `jaxdd reproduce` run?")
    with open(path) as f:
      comparison = json.load(f)
    for method, res in comparison.items():
      per_method.setdefault(method, []).append([100 * res["mean"][m] for m in METRICS])
  counts = {m: len(v) for m, v in per_method.items()}
  if len(set(counts.values())) != 1:
    raise ValueError(f"methods differ in their number of seeds: {counts}")
  return {m: np.asarray(v) for m, v in per_method.items()}


def table(results: dict[str, np.ndarray]) -> str:
  n = len(next(iter(results.values())))
  lines = [f"| method ({n} seeds) | " + " | ".join(METRICS) + " |",
           "|---" * (len(METRICS) + 1) + "|"]
  for method, a in results.items():
    cells = [runs.format_pm(a[:, j], scale=1) for j in range(len(METRICS))]
    lines.append(f"| {method} | " + " | ".join(cells) + " |")
  for method, a in results.items():
    if method.endswith("+kde") and method[:-4] in results:
      diff = a - results[method[:-4]]
      cells = [runs.format_pm(diff[:, j], scale=1, signed=True) for j in range(len(METRICS))]
      lines.append(f"| paired difference {method} − {method[:-4]} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("runs", nargs="+", help="run directories of `jaxdd reproduce`, one per seed")
  args = p.parse_args(argv)
  print(table(load(args.runs)))
  return 0


if __name__ == "__main__":
  sys.exit(main())
