"""Does DM's bf16 arithmetic change the distilled set's accuracy?

Three arms, everything else equal (the same seeds, keys and data): ``float32`` (the
reference); ``bfloat16``: ``jaxdd.distill.Execution(real_dtype="bfloat16")``, the
gradient-free forward of the real images in bfloat16; ``bfloat16-all``: the run's
``compute_dtype='bfloat16'``, the real forward and the synthetic forward and backward in
bfloat16 with float32 images (what an accelerator would run). Both stay off by default: on the
2-core CPU bfloat16 is slower (docs/results/speed-distillation.md, "bf16 real path for DM");
this script measures the other half of the decision, the accuracy of the distilled sets.

CMNIST 5 % bias-conflicting, vanilla DM and DM + KDE (the preset's weighting), seeds 0, 1,
2, each set evaluated once on the test split with 3 networks. ``--preset cpu`` (the default):
IPC 10, the ``cpu`` preset (width-32 networks, 64 real images per class, 300 DM steps), the
``cpu300`` protocol. ``--preset proxy``: the CPU proxy of the paper's setting, IPC 50, full
MNIST (``jaxdd data fetch mnist``), 600 DM steps, the ``cpu`` protocol. Resumable: every
finished distillation and evaluation is kept under ``--root`` and reused.

    python experiments/bf16_accuracy.py --root runs/bf16 --out results/bf16
    python experiments/bf16_accuracy.py --preset proxy --arms float32,bfloat16-all \
        --root runs/bf16-proxy --out results/bf16-proxy
    python experiments/bf16_accuracy.py --root runs/tiny-bf16 --out runs/tiny-bf16/out --tiny
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys

import jax

from jaxdd import cli, progress, protocols, runs, synset
from jaxdd.runs import version
from jaxdd.config import RunConfig, get_config
from jaxdd.structs import SynSet

DTYPES = ("float32", "bfloat16", "bfloat16-all")
#: --preset: the IPC and evaluation protocol of each.
PRESETS = {"cpu": (10, "cpu300"), "proxy": (50, "cpu")}
METRICS = ("overall", "aligned", "conflicting")
METHODS = {"none": "DM", "kde": "DM + KDE"}  # weighting -> the table's method


def distilled(config: RunConfig, run_data: runs.RunData, embeddings, dtype: str,
              workdir: str) -> SynSet:
  """The run's SynSet, distilled in the arm ``dtype`` (cached on disk).

  The pipeline's own loop (:func:`jaxdd.runs.distill_run`: checkpoints, resume,
  the NaN check) with only the real-image dtype, or the run's compute dtype, changed.
  """
  path = os.path.join(workdir, "synset")
  if os.path.isdir(path):
    return synset.load(path)[0]
  os.makedirs(workdir, exist_ok=True)
  if dtype == "bfloat16-all":
    config, dtype = config.replace(compute_dtype="bfloat16"), "float32"
  syn = runs.distill_run(config, workdir, run_data, embeddings, runs.run_keys(config)[1],
                         progress=False, real_dtype=None if dtype == "float32" else dtype)
  synset.save(path, syn, {"real_dtype": dtype, "config": config.to_dict()},
              mean=run_data.mean, std=run_data.std)
  return syn


NAMES = {"float32": "float32", "bfloat16": "bfloat16 real forward",
         "bfloat16-all": "bfloat16 real and synthetic (compute_dtype)"}
#: What each bfloat16 arm changes (a record's notes).
MEANINGS = {"bfloat16": "the real images' forward pass in bfloat16, everything else in float32",
            "bfloat16-all": "the real forward and the synthetic forward and backward in "
                            "bfloat16, the images, loss and gradient in float32"}


def table_rows(results: dict, arms=None) -> tuple[list[list[str]], list[list[str]]]:
  """The table's cells: (method, arm, mean ± std over seeds per metric) for each method and
  arm, then (method, arm, its ``arm − float32`` difference paired over seeds, in points) for
  each bfloat16 arm (``arms``: default those in ``results``, in :data:`DTYPES` order)."""
  arms = [a for a in DTYPES if a in results["none"]] if arms is None else arms
  means, paired = [], []
  for w in ("none", "kde"):
    for dt in arms:
      means.append([METHODS[w], NAMES[dt]] + [
          runs.format_pm([results[w][dt][s][m] for s in sorted(results[w][dt])])
          for m in METRICS])
  for w in ("none", "kde"):
    seeds = sorted(results[w]["float32"])
    for dt in arms:
      if dt != "float32":
        paired.append([METHODS[w], NAMES[dt]] + [
            runs.format_pm([results[w][dt][s][m] - results[w]["float32"][s][m]
                            for s in seeds], signed=True) for m in METRICS])
  return means, paired


def table(results: dict, arms=None) -> str:
  """Mean ± std over seeds per row, then each bf16 arm − float32 paired over seeds, in
  points (``arms``: default those in ``results``, in :data:`DTYPES` order)."""
  means, paired = table_rows(results, arms)
  seeds = ", ".join(map(str, sorted(results["none"]["float32"])))
  lines = ["| method | arithmetic | " + " | ".join(METRICS) + " |",
           "|---|---|" + "---|" * len(METRICS)]
  lines += ["| " + " | ".join(r) + " |" for r in means]
  lines += ["", "| method | arm − float32 (paired over seeds, points) | " + " | ".join(METRICS)
            + " |", "|---|---|" + "---|" * len(METRICS)]
  lines += [f"| {r[0]} | {r[1]}, seeds {seeds} | " + " | ".join(r[2:]) + " |" for r in paired]
  return "\n".join(lines)


def largest_difference(results: dict, arms) -> tuple[float, str, str, str, int]:
  """The largest single-seed ``arm − float32`` difference in points, with its method, arm,
  metric and seed (what the paired means could hide)."""
  best = (0.0, "", "", "", -1)
  for w in ("none", "kde"):
    for dt in arms:
      if dt == "float32":
        continue
      for s in sorted(results[w][dt]):
        for m in METRICS:
          d = 100 * (results[w][dt][s][m] - results[w]["float32"][s][m])
          if abs(d) > abs(best[0]):
            best = (d, METHODS[w], NAMES[dt], m, s)
  return best


def data_record(results: dict, arms, config, proto, num_models: int, command: str,
                raw: str | None = None) -> dict:
  """The results-table record of the comparison (columns, rows, notes, date, commit,
  machine, command): the rows of :func:`table`, each paired row named by its arm."""
  means, paired = table_rows(results, arms)
  rows = means + [[r[0], f"{r[1]} − float32, paired", *r[2:]] for r in paired]
  seeds = sorted(results["none"]["float32"])
  d, method, arm, metric, seed = largest_difference(results, arms)
  setting = (f"IPC {config.ipc}, `{config.preset}` preset (width-{config.width} networks, "
             f"{config.real_per_class} real images per class, {config.iterations} steps, lr_img "
             f"{config.lr_img:g}; DM + KDE with the preset's weighting)")
  return {
      "columns": ["method", "arithmetic", *METRICS],
      "rows": rows,
      "notes": [
          f"CMNIST 5 % bias-conflicting, {setting}, seeds {', '.join(map(str, seeds))}; "
          "float32 against "
          + "; against ".join(f"{NAMES[a]}, that is {MEANINGS[a]}" for a in arms
                              if a != "float32")
          + "; the same keys and data; each set evaluated once on the test split "
          f"(`{proto.name}`, {num_models} networks). Accuracy in %: mean ± sample std over "
          "seeds of each seed's mean over its networks; the paired rows are the per-seed "
          "differences in points, mean ± std over seeds. Largest single-seed difference: "
          + (f"{d:+.1f} points ({method}, {arm}, {metric}, seed {seed})." if method
             else "none (every arm equals float32 on every seed).")
          + (f" Raw: `{raw}`." if raw else ""),
          "The CPU emulates bfloat16 convolutions (slower than float32 here): this measures "
          "accuracy only."],
      "date": datetime.date.today().isoformat(), "commit": version.short_commit(),
      "machine": version.machine(), "command": [command],
  }


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--root", default="runs/bf16")
  p.add_argument("--out", default=None, help="write table.md and table.json here")
  p.add_argument("--data", default=None, metavar="PATH", help=(
      "also write the comparison as a results-table record (columns, rows, notes, date, "
      "commit, machine, command) to PATH"))
  p.add_argument("--preset", choices=sorted(PRESETS), default="cpu", help=(
      "cpu: IPC 10, 300 steps, the embedded digits; proxy: IPC 50, 600 steps, full MNIST "
      "(default cpu)"))
  p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  p.add_argument("--num-models", type=int, default=3)
  p.add_argument("--arms", default=",".join(DTYPES),
                 help=f"the arms, float32 first (default {','.join(DTYPES)})")
  p.add_argument("--tiny", action="store_true", help=(
      "check the script in seconds: the smoke preset (its IPC) and protocol, seeds 0 and 1, one "
      "network (flags given explicitly still apply)"))
  args = p.parse_args(argv)
  if args.tiny:
    p.set_defaults(seeds=[0, 1], num_models=1)
    args = p.parse_args(argv)
  if len(args.seeds) < 2:
    p.error("--seeds: give at least 2 seeds (the table reports a std over seeds)")
  arms = [a for a in args.arms.split(",") if a]
  if not arms or arms[0] != "float32" or set(arms) - set(DTYPES):
    p.error(f"--arms: float32 first, then any of {DTYPES[1:]}")
  cli.tune_allocator()
  progress.setup_logging(False)
  ipc, protocol = PRESETS[args.preset]
  proto = protocols.get_protocol("smoke" if args.tiny else protocol)
  results: dict = {w: {dt: {} for dt in arms} for w in ("none", "kde")}
  for seed in args.seeds:
    base = (get_config("smoke", dataset="cmnist", conflict_ratio=0.05, seed=seed) if args.tiny
            else get_config(args.preset, dataset="cmnist", conflict_ratio=0.05, ipc=ipc, seed=seed))
    run_data = runs.RunData(base)
    embeddings = runs.surrogate_embeddings(base, run_data, runs.run_keys(base)[0])
    for w in ("none", "kde"):
      config = base.replace(weighting=w)
      for dt in arms:
        workdir = os.path.join(args.root, f"{w}-{dt}-s{seed}")
        syn = distilled(config, run_data, embeddings, dt, workdir)
        summary = runs.evaluate_cached(config, workdir, run_data, syn, split="test",
                                       protocol=proto, num_models=args.num_models)
        results[w][dt][seed] = summary["mean"]
        print(json.dumps({"weighting": w, "real_dtype": dt, "seed": seed, **summary["mean"]}),
              flush=True)
  text = table(results, arms)
  print(text)
  if args.out:
    os.makedirs(args.out, exist_ok=True)
    head = (f"CMNIST 5 %, IPC {base.ipc}, `{base.preset}` preset, test split, protocol "
            f"{proto.name}, {args.num_models} networks per set; seeds {args.seeds}. Mean ± sample "
            f"std over seeds of each seed's mean over its networks (jax {jax.__version__}).\n\n")
    synset.atomic_write_bytes(os.path.join(args.out, "table.md"), (head + text + "\n").encode())
    synset.atomic_write_json(os.path.join(args.out, "table.json"),
                             {w: {dt: {str(s): v for s, v in r.items()} for dt, r in rr.items()}
                              for w, rr in results.items()})
  if args.data:
    os.makedirs(os.path.dirname(args.data) or ".", exist_ok=True)
    command = "python experiments/bf16_accuracy.py " + " ".join(
        sys.argv[1:] if argv is None else argv)
    raw = os.path.join(args.out, "table.json") if args.out else None
    synset.atomic_write_json(args.data, data_record(results, arms, base, proto,
                                                     args.num_models, command, raw))
  return 0


if __name__ == "__main__":
  sys.exit(main())
