"""Seconds per step of a results-table cell in one program against its rows one by one.

The ``proxy`` preset's DM step (10 classes of 3x28x28, IPC 50, 64 real images per class,
DSA, ConvNet-3 width 32) on random data, for a cell of R rows x S seeds:

* ``cell``: every row and seed in ONE program (:func:`jaxdd.distill.cell_runs` over
  :func:`jaxdd.distill.dm_cell`: the seeds one after another, the rows of a seed sharing
  its network, augmentation and real batch);
* ``rows``: each row its own program, its S seeds in one program
  (:func:`jaxdd.distill.many_runs`, as the runs layer's ``distill_seeds``), the rows one
  after another: the sum of the rows' step times.

The rows: vanilla DM, DM + KDE (in-batch), FairDD with groups, FairDD with pseudo-groups
(given groups, like the true ones) and FairDD with in-batch DBSCAN clusters. Both modes are
timed alternately in one process, ``--repeats`` times, each the median of ``--steps``
steps; the JSON line gives the medians and the ratio rows / cell (above 1: the cell
program is faster).

  python benchmarks/cell.py --seeds 3 --steps 5 --repeats 3
  python benchmarks/cell.py --tiny     # checks the script in seconds
"""
from __future__ import annotations

import argparse
import json
import time

ROWS = ("vanilla", "kde", "fairdd", "fairdd_pseudo", "fairdd_batch")


def _median(step, state, data, steps: int) -> tuple[float, object]:
  import jax
  import numpy as np
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    state, m = step(state, data)
    jax.block_until_ready(m["loss"])
    times.append(time.perf_counter() - t0)
  return float(np.median(times)), state


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--seeds", type=int, default=3)
  p.add_argument("--steps", type=int, default=5, help="timed steps per point (median)")
  p.add_argument("--repeats", type=int, default=3, help="alternations of the two modes")
  p.add_argument("--ipc", type=int, default=50)
  p.add_argument("--width", type=int, default=32)
  p.add_argument("--real-per-class", type=int, default=64)
  p.add_argument("--per-class", type=int, default=600, help="real images per class")
  p.add_argument("--tiny", action="store_true", help=(
      "check the script in seconds: 2 seeds, one step, one repeat, IPC 2, width 8, 8 real "
      "images per class (flags given explicitly still apply)"))
  args = p.parse_args(argv)
  if args.tiny:
    p.set_defaults(seeds=2, steps=1, repeats=1, ipc=2, width=8, real_per_class=8, per_class=20)
    args = p.parse_args(argv)

  import jax
  import jax.numpy as jnp
  import numpy as np

  from jaxdd import augment, distill, models
  S, R, nc = args.seeds, len(ROWS), 10
  rng = np.random.default_rng(0)
  y = np.repeat(np.arange(nc), args.per_class)
  x = rng.normal(size=(len(y), 28, 28, 3)).astype(np.float32)
  emb = rng.normal(size=(S, len(y), 32)).astype(np.float32)
  groups = rng.integers(0, 10, size=(S, len(y))).astype(np.int32)
  kw = dict(num_classes=nc, ipc=args.ipc, model=models.ConvNet(nc, width=args.width),
            real_per_class=args.real_per_class, lr=10.0,
            augment=augment.dsa("color_crop_cutout_flip_scale_rotate"))
  kde = distill.KDEConfig()
  base = distill.real_data(x, y, num_classes=nc)
  seed_keys = [jax.random.key(s) for s in range(S)]

  # the rows one by one, each row's seeds in one program
  row_programs = []
  for name in ROWS:
    d = {"vanilla": lambda: distill.dm(**kw),
         "kde": lambda: distill.dm(kde_config=kde, **kw),
         "fairdd": lambda: distill.dm(group_matching=10, **kw),
         "fairdd_pseudo": lambda: distill.dm(group_matching=10, **kw),
         "fairdd_batch": lambda: distill.dm(batch_clusters=10, **kw)}[name]()
    fields = {"kde": ("embeddings",), "fairdd": ("groups",), "fairdd_pseudo": ("groups",)}
    own = fields.get(name, ())
    real = base._replace(**{"embeddings": jnp.asarray(emb), "groups": jnp.asarray(groups)}
                         ) if own else base
    real = real._replace(**{f: None for f in ("embeddings", "groups") if f not in own})
    runs = distill.many_runs(d, num_runs=S, run_fields=own)
    row_programs.append((runs.step, runs.init(jnp.stack(seed_keys), real), real))

  # the cell in one program
  cell = distill.dm_cell(kde_config=kde, num_groups=10, batch_clusters=10, **kw)
  runs = distill.cell_runs(cell, num_seeds=S, num_rows=R, seed_fields=("embeddings",),
                           run_fields=("groups",))
  flags = {"kde": "kde", "fairdd": "groups", "fairdd_pseudo": "groups",
           "fairdd_batch": "batch_groups"}
  hp = {k: jnp.asarray([float(flags.get(r) == k) for _ in range(S) for r in ROWS], jnp.float32)
        for k in ("kde", "groups", "batch_groups")}
  real = base._replace(embeddings=jnp.asarray(emb),
                       groups=jnp.asarray(np.repeat(groups, R, axis=0)))
  keys = jnp.stack([k for k in seed_keys for _ in range(R)])
  cell_state = runs.init(keys, real, hparams=hp)

  t0 = time.perf_counter()
  cell_state, m = runs.step(cell_state, real)
  jax.block_until_ready(m["loss"])
  compile_cell = time.perf_counter() - t0
  t0 = time.perf_counter()
  for i, (step, state, data) in enumerate(row_programs):
    state, m = step(state, data)
    jax.block_until_ready(m["loss"])
    row_programs[i] = (step, state, data)
  compile_rows = time.perf_counter() - t0
  cell_times, rows_times = [], []
  for _ in range(args.repeats):
    t, cell_state = _median(runs.step, cell_state, real, args.steps)
    cell_times.append(t)
    total = 0.0
    for i, (step, state, data) in enumerate(row_programs):
      t, state = _median(step, state, data, args.steps)
      row_programs[i] = (step, state, data)
      total += t
    rows_times.append(total)
  cell_s, rows_s = float(np.median(cell_times)), float(np.median(rows_times))
  print(json.dumps({"seeds": S, "rows": list(ROWS), "ipc": args.ipc, "width": args.width,
                    "real_per_class": args.real_per_class, "cell_step_s": round(cell_s, 4),
                    "rows_step_s": round(rows_s, 4), "rows_over_cell": round(rows_s / cell_s, 3),
                    "cell_step_s_all": [round(t, 4) for t in cell_times],
                    "rows_step_s_all": [round(t, 4) for t in rows_times],
                    "first_call_s": {"cell": round(compile_cell, 1), "rows": round(compile_rows, 1)},
                    "backend": jax.default_backend()}), flush=True)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
