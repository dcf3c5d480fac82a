"""Seconds per step of N DM runs in one program (``distill.many_runs``) vs one run.

The ``cpu`` preset's DM step (10 classes of 3x28x28, IPC 10, 64 real images per class,
DSA, ConvNet-3 width 32, KDE weights in the batch) on random data, for N = 1, 3, 10,
with independent draws per run (N seeds; batched with vmap, or one after another inside
the program with lax.map) and with common random numbers (one network, real batch and
augmentation shared by the runs, e.g. the candidates of a sweep). Prints
one JSON line per point: the median step time, and its ratio to N single-run steps
measured in the same process (below 1: the N-run program is faster than running the
runs one after another).

  python benchmarks/dm_runs.py --runs 1,3,10 --steps 5
  python benchmarks/dm_runs.py --tiny     # checks the script in seconds
"""
from __future__ import annotations

import argparse
import json
import sys
import time


def _median_step(d, state, real, steps: int) -> tuple[float, float]:
  import jax
  import numpy as np
  t0 = time.perf_counter()
  state, m = d.step(state, real)
  jax.block_until_ready(m["loss"])
  first = time.perf_counter() - t0
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    state, m = d.step(state, real)
    jax.block_until_ready(m["loss"])
    times.append(time.perf_counter() - t0)
  return float(np.median(times)), first


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--runs", default="1,3,10", help="comma-separated N (default 1,3,10)")
  p.add_argument("--steps", type=int, default=5, help="timed steps per point (median)")
  p.add_argument("--width", type=int, default=32)
  p.add_argument("--real-per-class", type=int, default=64)
  p.add_argument("--tiny", action="store_true", help=(
      "check the script in seconds: N = 2, one step, width 8, 4 real images per class (flags "
      "given explicitly still apply)"))
  args = p.parse_args(argv)
  if args.tiny:
    p.set_defaults(runs="2", steps=1, width=8, real_per_class=4)
    args = p.parse_args(argv)

  import jax
  import numpy as np

  from jaxdd import augment, distill, models
  rng = np.random.default_rng(0)
  y = np.repeat(np.arange(10), 300)
  x = rng.normal(size=(len(y), 28, 28, 3)).astype(np.float32)
  emb = rng.normal(size=(len(y), 32)).astype(np.float32)
  real = distill.real_data(x, y, num_classes=10, embeddings=emb)
  kw = dict(num_classes=10, ipc=10, model=models.ConvNet(10, width=args.width),
            real_per_class=args.real_per_class, lr=10.0,
            augment=augment.dsa("color_crop_cutout_flip_scale_rotate"),
            kde_config=distill.KDEConfig())
  single = distill.dm(**kw)
  t1, _ = _median_step(single, single.init(jax.random.key(0), real), real, args.steps)
  print(json.dumps({"num_runs": 1, "mode": "single", "step_s_median": round(t1, 4),
                    "backend": jax.default_backend()}), flush=True)
  for n in (int(v) for v in args.runs.split(",")):
    for mode in ("independent-vmap", "independent-map", "common"):
      knobs = [dict(lr=10.0 * (1 + i)) for i in range(n)]
      d = distill.many_runs(distill.dm(**kw), num_runs=n, run_hparams=knobs,
                            common_random_numbers=mode == "common",
                            parallel="map" if mode == "independent-map" else "vmap")
      tn, first = _median_step(d, d.init(jax.random.key(0), real), real, args.steps)
      print(json.dumps({"num_runs": n, "mode": mode,
                        "step_s_median": round(tn, 4), "first_step_s": round(first, 2),
                        "vs_n_single_runs": round(tn / (n * t1), 3),
                        "backend": jax.default_backend()}), flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
