"""Two checkouts of jaxdd timed side by side: the ``cpu`` preset's DM step and evaluation epoch.

Each measurement runs in a fresh process with ``PYTHONPATH`` set to one checkout, and the
checkouts alternate (A, B, A, B, ...), so a slow spell of a shared machine falls on both. A
measured process builds the ``cpu`` preset's DM + KDE distiller for the embedded CMNIST 5 % (as
``jaxdd distill --preset cpu`` does, with random surrogate embeddings in place of trained ones,
which changes no shape), compiles it, then times ``--steps`` calls of its step; and it trains
the ``cpu`` protocol's 5 evaluation networks on a random IPC-10 SynSet twice (the first call
compiles), timing the second (the ``cpu`` protocol shortened to ``--eval-epochs``: the same
compiled epoch). Printed: one JSON line per process, then per checkout the
median over repeats of the seconds per DM step and per evaluation epoch, and the ratios B / A.

  python benchmarks/side_by_side.py --a ../old-checkout --b . --repeats 5
  python benchmarks/side_by_side.py --tiny     # checks the script in seconds
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time


def _distiller(config, num_classes, kde_config):
  try:  # the runs layer
    from jaxdd.runs import distiller
    return distiller.make_distiller(config, num_classes, kde_config)
  except ImportError:  # a checkout from before the runs layer existed
    from jaxdd import pipeline
    return pipeline.make_distiller(config, num_classes, kde_config)


def _child(steps: int, eval_epochs: int, preset: str = "cpu") -> dict:
  import jax
  import jax.numpy as jnp
  import numpy as np

  import jaxdd
  from jaxdd import config as config_lib
  from jaxdd import data, distill, models

  cfg = config_lib.get_config(preset, weighting="kde")
  ds = data.load(cfg.dataset, split="train", conflict_ratio=cfg.conflict_ratio, seed=cfg.seed)
  nc = ds.num_classes
  mean, std = data.channel_stats(ds.images)
  x = np.asarray(data.normalize(ds.images, mean, std))
  emb = np.array(jax.random.normal(jax.random.key(1), (len(ds.labels), 128)), np.float32)
  emb /= np.linalg.norm(emb, axis=1, keepdims=True)
  real = distill.real_data(x, ds.labels, num_classes=nc, embeddings=emb)
  try:  # the runs layer builds the stages' configs
    from jaxdd.runs.stage_config import kde_config
    kde = kde_config(cfg)
  except ImportError:  # a checkout from before: a view of the RunConfig
    kde = cfg.kde
  d = _distiller(cfg, nc, kde)
  state = d.init(jax.random.key(0), real)
  state, _ = d.step(state, real)
  jax.block_until_ready(state)
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    state, _ = d.step(state, real)
    jax.block_until_ready(state)
    times.append(time.perf_counter() - t0)

  syn = jaxdd.SynSet(jax.random.normal(jax.random.key(2), (10 * cfg.ipc, 28, 28, 3)),
                     jnp.repeat(jnp.arange(nc), cfg.ipc))
  test = jaxdd.Batch(jnp.asarray(x[:500]), jnp.asarray(ds.labels[:500]), jnp.asarray(ds.bias[:500]))
  model = models.get(cfg.eval_model, num_classes=nc)
  # The cpu protocol with fewer epochs: the same compiled epoch, timed over eval_epochs + 1.
  protocol = dataclasses.replace(jaxdd.get_protocol(cfg.eval_protocol), epochs=eval_epochs)
  kwargs = dict(model=model, protocol=protocol, num_models=cfg.num_eval_models)
  jaxdd.evaluate_synset(jax.random.key(3), syn, test, **kwargs)
  t0 = time.perf_counter()
  jaxdd.evaluate_synset(jax.random.key(3), syn, test, **kwargs)
  eval_seconds = time.perf_counter() - t0
  return {"step_s": statistics.median(times), "epoch_s": eval_seconds / protocol.num_epochs}


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--a", help="checkout A (the baseline; required)")
  p.add_argument("--b", help="checkout B (the change; required)")
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--steps", type=int, default=30, help="timed DM steps per process")
  p.add_argument("--eval-epochs", type=int, default=2,
                 help="epochs of each timed evaluation (the cpu protocol's, shortened)")
  p.add_argument("--preset", default="cpu", help=argparse.SUPPRESS)
  p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
  p.add_argument("--tiny", action="store_true", help=(
      "check the script in seconds: this checkout against itself (unless --a / --b), the smoke "
      "preset's sizes, one repeat of one step and one epoch"))
  args = p.parse_args(argv)
  if args.tiny:
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    p.set_defaults(a=here, b=here, repeats=1, steps=1, eval_epochs=1, preset="smoke")
    args = p.parse_args(argv)
  if args.child:
    print(json.dumps(_child(args.steps, args.eval_epochs, args.preset)))
    return 0
  if not (args.a and args.b):
    p.error("--a and --b are required: the two checkouts to compare")
  rows = {"a": [], "b": []}
  for r in range(args.repeats):
    for name in ("a", "b"):
      root = os.path.abspath(getattr(args, name))
      env = dict(os.environ, PYTHONPATH=root, JAXDD_COMPILE_CACHE="0")
      out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", "--a", root,
                            "--b", root, "--steps", str(args.steps),
                            "--eval-epochs", str(args.eval_epochs), "--preset", args.preset],
                           env=env, cwd=root,
                           capture_output=True, text=True, check=True)
      row = json.loads(out.stdout.strip().splitlines()[-1])
      rows[name].append(row)
      print(json.dumps({"repeat": r, "checkout": name, **row}), flush=True)
  med = {n: {k: statistics.median(row[k] for row in rows[n]) for k in ("step_s", "epoch_s")}
         for n in rows}
  print(json.dumps({"median": med, "ratio_b_over_a": {k: med["b"][k] / med["a"][k]
                                                      for k in ("step_s", "epoch_s")}}))
  return 0


if __name__ == "__main__":
  sys.exit(main())
