"""The pipeline's time per distillation step against the bare compiled step.

``jaxdd.runs.distill_run`` adds host work around each step: the Python
dispatch, the metrics line every ``log_every`` steps (a device-to-host copy),
the progress bar, checkpoints every ``checkpoint_every`` steps. Where a step is
short (small networks, or any step on an accelerator: about 5 ms for the
``paper`` preset on one H100) that work is a large share of the time; running
``K`` steps per host round trip (``--steps-per-call K``,
``jaxdd.distill.multi_step``) amortises it. This script times, alternately in one
process, a bare loop of ``d.step`` calls (synchronised once at the end) and the
pipeline's loop at each K, on the same distiller, and prints one JSON line per
point: the median seconds per step of each and the pipeline's overhead over the
bare step, ``pipeline / bare - 1``. The pipeline's time per step is the
difference of two whole ``distill_run`` calls, of ``iterations`` and
``iterations / 2`` steps, over ``iterations / 2``: set-up and compilation (done by a
warm-up run) cancel; checkpoints, metrics lines and the bar are in.

  python benchmarks/pipeline_overhead.py --preset smoke --iterations 1000 --k 1,10,50 --repeats 3
  python benchmarks/pipeline_overhead.py --tiny   # checks the script in seconds
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--preset", default="smoke", help="run preset (default smoke: a ~ms step)")
  p.add_argument("--method", default="dm")
  p.add_argument("--iterations", type=int, default=1000)
  p.add_argument("--log-every", type=int, default=10, help="the paper preset's cadence")
  p.add_argument("--checkpoint-every", type=int, default=500, help="the paper preset's cadence")
  p.add_argument("--k", default="1,10,50", help="comma-separated steps per call")
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--tiny", action="store_true", help=(
      "check the script in seconds: 4 iterations of the smoke preset, K = 1 and 2, one repeat "
      "(flags given explicitly still apply)"))
  args = p.parse_args(argv)
  if args.tiny:
    p.set_defaults(iterations=4, k="1,2", repeats=1, log_every=1, checkpoint_every=2)
    args = p.parse_args(argv)

  import jax
  import numpy as np

  from jaxdd import distill, runs
  from jaxdd.config import get_config

  ks = [int(v) for v in args.k.split(",")]
  base = get_config(args.preset, method=args.method, weighting="none",
                    iterations=args.iterations, log_every=args.log_every,
                    checkpoint_every=args.checkpoint_every)
  run_data = runs.RunData(base)
  nc = run_data.num_classes
  real = distill.real_data(run_data.normalized(run_data.train), run_data.train.labels,
                           num_classes=nc)
  d = runs.make_distiller(base, nc, None)
  key = runs.run_keys(base)[1]

  def bare() -> float:
    state = d.init(key, real)
    state, m = d.step(state, real)
    jax.block_until_ready(m["loss"])
    t0 = time.perf_counter()
    for _ in range(args.iterations):
      state, m = d.step(state, real)
    jax.block_until_ready(state.syn.images)
    return (time.perf_counter() - t0) / args.iterations

  def piped(k: int) -> float:
    config = base.replace(steps_per_call=str(k))
    half = args.iterations // 2
    with tempfile.TemporaryDirectory() as tmp:
      # A short run compiles the programs (shared by the timed runs).
      runs.distill_run(config.replace(iterations=min(2 * k, half)),
                       os.path.join(tmp, "warm"), run_data, None, key, progress=False)
      wall = {}
      for n in (half, args.iterations):
        t0 = time.perf_counter()
        runs.distill_run(config.replace(iterations=n), os.path.join(tmp, f"run{n}"),
                         run_data, None, key, progress=False)
        wall[n] = time.perf_counter() - t0
      return (wall[args.iterations] - wall[half]) / (args.iterations - half)

  times: dict[str, list[float]] = {"bare": []}
  times.update({f"k{k}": [] for k in ks})
  for _ in range(args.repeats):
    times["bare"].append(bare())
    for k in ks:
      times[f"k{k}"].append(piped(k))
  b = float(np.median(times["bare"]))
  for k in ks:
    t = float(np.median(times[f"k{k}"]))
    print(json.dumps({"preset": args.preset, "method": args.method,
                      "backend": jax.default_backend(), "steps_per_call": k,
                      "bare_ms": round(1e3 * b, 3), "pipeline_ms": round(1e3 * t, 3),
                      "overhead": round(t / b - 1, 3),
                      "pipeline_ms_all": [round(1e3 * v, 3) for v in times[f"k{k}"]],
                      "bare_ms_all": [round(1e3 * v, 3) for v in times["bare"]]}))
  return 0


if __name__ == "__main__":
  sys.exit(main())
