"""Debiasing after distillation: LfF, DFA and SelecMix trained on vanilla DM SynSets.

Cui et al. compare their reweighted distillation with "a state-of-the-art debiasing method
applied on the same synthetic set" (53.7 % on CMNIST, 5 % bias-conflicting, IPC 50). This script
makes that comparison: for each seed it distils vanilla DM (:func:`jaxdd.runs.run`, which also
evaluates the SynSet), then trains each debiasing method on that SynSet under the same protocol,
model and evaluation key (:func:`jaxdd.runs.run_baselines`), and writes one results table with a
row per method: test accuracy overall, aligned, conflicting and worst group, mean ± sample std
over the seeds of each seed's mean over the evaluation networks, and the paired change of the
conflicting accuracy against the vanilla SynSet itself. The methods use their authors' default
hyper-parameters: nothing is chosen, so the test split is read once per row and seed.

Resumable: a finished run is loaded, a method already in a seed's ``baselines.json`` is skipped
(its wall seconds are kept in the seed's ``seconds.json``).

  jaxdd data fetch mnist
  python experiments/post_distillation.py --preset proxy --seeds 0,1,2 \\
      --workdir runs/post-distillation --out results/proxy/post-distillation-cmnist5-ipc50.json
  python experiments/post_distillation.py --preset paper --seeds 0 --workdir runs/post-paper \\
      --out results/paper-scale/post-distillation-cmnist5-ipc50.json     # a GPU: one seed a command
  python experiments/post_distillation.py --tiny --workdir runs/tiny-post --out runs/tiny-post.json
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time

import numpy as np

from jaxdd import runs, synset
from jaxdd.cli import arguments
from jaxdd.config import get_config
from jaxdd.results import format_pm
from jaxdd.runs import baseline_runs, version

METRICS = ("overall", "aligned", "conflicting", "worst_group")
LABELS = {"lff": "vanilla DM SynSet + LfF", "dfa": "vanilla DM SynSet + DFA",
          "selecmix": "vanilla DM SynSet + SelecMix"}
COLUMNS = ["row", "seeds", "test overall", "test aligned", "test conflicting", "test worst group",
           "conflicting − vanilla (paired)", "eval s / seed"]


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--preset", default="proxy", help="run preset (default proxy)")
  p.add_argument("--dataset", default="cmnist")
  p.add_argument("--conflict-ratio", type=float, default=0.05)
  p.add_argument("--ipc", type=int, default=None, help="default: the preset's")
  p.add_argument("--source", default=None,
                 help="data source (default: the preset's; full MNIST at the paper preset)")
  p.add_argument("--seeds", type=arguments.index_list, default=[0, 1, 2])
  p.add_argument("--methods", default="lff,dfa,selecmix",
                 help="comma-separated debiasing methods (default lff,dfa,selecmix)")
  p.add_argument("--workdir", required=True, help="one folder per seed: vanilla/ and debiased/")
  p.add_argument("--out", required=True, help="the results table (JSON) to write")
  p.add_argument("--tiny", action="store_true",
                 help="the smoke preset at 2 seeds: the whole path in a minute (for tests)")
  args = p.parse_args(argv)
  args.methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
  unknown = set(args.methods) - set(LABELS)
  if not args.methods or unknown:
    p.error(f"--methods takes a subset of {','.join(LABELS)}, got {args.methods}")
  if args.tiny:
    args.preset, args.seeds = "smoke", [0, 1]
  return args


def seed_config(args, seed: int):
  overrides = dict(dataset=args.dataset, conflict_ratio=args.conflict_ratio, seed=seed,
                   weighting="none")
  if args.ipc is not None:
    overrides["ipc"] = args.ipc
  source = args.source or ("full" if args.preset == "paper" else None)
  if source is not None:
    overrides["source"] = source
  return get_config(args.preset, **overrides)


def run_seed(args, seed: int) -> dict:
  """The vanilla run and every method's baseline record of one seed, made or loaded."""
  config = seed_config(args, seed)
  root = os.path.join(args.workdir, f"s{seed}")
  vanilla_dir, debiased_dir = os.path.join(root, "vanilla"), os.path.join(root, "debiased")
  t0 = time.perf_counter()
  vanilla = runs.run(config, vanilla_dir, progress=False)
  done = baseline_runs.stored_baselines(debiased_dir, config)
  missing = tuple(m for m in args.methods if m not in done)
  times_path = os.path.join(root, "seconds.json")  # each method's wall seconds, kept for reruns
  times = {}
  if os.path.exists(times_path):
    with open(times_path) as f:
      times = json.load(f)
  for method in missing:
    t = time.perf_counter()
    done = runs.run_baselines(config, debiased_dir, which=(method,),
                              vanilla_synset=os.path.join(vanilla_dir, "synset"), progress=False)
    times[method] = time.perf_counter() - t
    synset.atomic_write_json(times_path, times)
  print(f"seed {seed}: vanilla {100 * vanilla['mean']['conflicting']:.1f} conflicting; "
        + ", ".join(f"{m} {100 * done[m]['mean']['conflicting']:.1f}" for m in args.methods)
        + f" ({time.perf_counter() - t0:.0f} s)", flush=True)
  return {"vanilla": vanilla, **{m: done[m] for m in args.methods}, "times": times}


def table(args, per_seed: dict[int, dict]) -> dict:
  """The results-table data of the finished seeds."""
  seeds = sorted(per_seed)
  rows = []
  vanilla_conf = [per_seed[s]["vanilla"]["mean"]["conflicting"] for s in seeds]
  for name in ("vanilla",) + args.methods:
    means = {m: [per_seed[s][name]["mean"][m] for s in seeds] for m in METRICS}
    paired = [c - v for c, v in zip(means["conflicting"], vanilla_conf)]
    times = [per_seed[s]["times"].get(name) for s in seeds]
    times = [t for t in times if t is not None]
    rows.append([LABELS.get(name, "vanilla DM SynSet, no debiasing"),
                 ",".join(map(str, seeds))]
                + [format_pm(means[m]) for m in METRICS]
                + ["–" if name == "vanilla" else format_pm(paired, signed=True),
                   f"{np.median(times):.0f}" if times else "–"])
  config = seed_config(args, seeds[0])
  num_models = per_seed[seeds[0]]["vanilla"]["result"]["num_models"]
  return {
      "columns": COLUMNS, "rows": rows,
      "notes": [
          f"{args.dataset}, {100 * args.conflict_ratio:g} % bias-conflicting, IPC {config.ipc}, "
          f"preset `{args.preset}`: each seed distils one vanilla DM SynSet; every row trains "
          f"{num_models} networks on it with the `{config.eval_protocol}` protocol and the same "
          "evaluation key. ± is the sample standard deviation over the seeds of each seed's "
          "mean over the networks.",
          "The methods run with their authors' default hyper-parameters (LfF and DFA: GCE "
          "q 0.7, EMA 0.7; DFA: swap after 20 % of training, lambdas 10, 10, 1; SelecMix: "
          "tau 0.2, q 0.7, lambda ~ U(0, 0.5), mixed batch only) and the protocol's SGD and "
          "augmentation; nothing is chosen, so the test split is read once per row and seed. "
          "Eval s: the method's wall seconds per seed (the vanilla row's evaluation is part "
          "of its run)."],
      "date": datetime.date.today().isoformat(), "commit": runs.code_version(),
      "machine": version.machine(),
      "command": ["python experiments/post_distillation.py " + " ".join(sys.argv[1:])],
  }


def main(argv=None) -> int:
  args = parse_args(argv)
  per_seed = {s: run_seed(args, s) for s in args.seeds}
  data = table(args, per_seed)
  synset.atomic_write_json(args.out, data)
  for row in data["rows"]:
    print(" | ".join(row))
  print(f"wrote {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
