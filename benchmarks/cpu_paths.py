"""What jaxdd's special CPU paths buy, side by side in one process: Winograd and loop-safe.

The ``cpu`` policy (:mod:`jaxdd.policy`) routes convolutions through hand-written kernels:
``conv="loop_safe"`` (``jaxdd/_src/cpu_kernels.py``: custom gradients that avoid XLA:CPU's
slow backward convolutions inside loops) and, on top of it, Winograd F(2x2, 3x3) for wide 3x3
convolutions (``forward_conv`` / ``train_conv="winograd"``, ``jaxdd/_src/winograd.py``).
This script times the jobs a user runs under policy variants that switch each path off, in
one process, the variants alternating within every repeat:

* ``cpu-dm-step``: one step of the ``cpu`` preset's DM + KDE distiller (the README main job's
  distillation: ConvNet-3 width 32, 64 real images per class, IPC 10, DSA);
* ``paper-dm-step``: one step of the ``paper`` preset's DM + KDE distiller (width 128, 256 real
  images per class, IPC 50), as ``jaxdd distill --preset paper`` runs it on a CPU;
* ``cpu-eval-epoch``: an epoch of the ``cpu`` evaluation protocol (5 ConvNet-3 width-128
  networks, one after another in one program, on an IPC-10 SynSet with DSA), the time of a
  ``--eval-epochs``-epoch evaluation divided by its epochs.

Variants: ``default`` (the cpu policy), ``no-winograd`` (``forward_conv`` and ``train_conv``
``"xla"``) and ``xla-conv`` (no hand-written kernels at all: ``conv="xla"`` as well). (A
third layout, ``conv="im2col"``, patches @ kernel, was measured with this script before it was
removed: no built-in policy used it and it was slower on every job.) Prints one JSON line per (job, variant, repeat), then the
median seconds of each and its ratio to ``default`` (above 1: the variant is slower).

  python benchmarks/cpu_paths.py --repeats 5
  python benchmarks/cpu_paths.py --tiny        # checks the script in seconds (smoke sizes)
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import jaxdd
from jaxdd import config as config_lib
from jaxdd import data, distill, evaluate, models, policy, protocols
from jaxdd.runs import stage_config

VARIANTS = {
    "default": {},
    "no-winograd": dict(forward_conv="xla", train_conv="xla"),
    "xla-conv": dict(conv="xla", forward_conv="xla", train_conv="xla"),
}


def _real(cfg):
  ds = data.load(cfg.dataset, split="train", conflict_ratio=cfg.conflict_ratio, seed=cfg.seed)
  mean, std = data.channel_stats(ds.images)
  x = np.asarray(data.normalize(ds.images, mean, std))
  emb = np.array(jax.random.normal(jax.random.key(1), (len(ds.labels), 128)), np.float32)
  emb /= np.linalg.norm(emb, axis=1, keepdims=True)
  return ds, x, distill.real_data(x, ds.labels, num_classes=ds.num_classes, embeddings=emb)


def _dm_job(preset: str, steps: int):
  cfg = config_lib.get_config(preset, weighting="kde")
  ds, _, real = _real(cfg)
  nc = ds.num_classes
  built = {}

  def build(name):
    d = distill.dm(num_classes=nc, ipc=cfg.ipc,
                   model=models.ConvNet(nc, depth=cfg.depth, width=cfg.width),
                   augment=jaxdd.augment.dsa(cfg.dsa_strategy),
                   real_per_class=cfg.real_per_class, lr=cfg.lr_img, momentum=cfg.momentum,
                   kde_config=stage_config.kde_config(cfg), execution=distill.Execution(
                       policy=policy.variant("cpu", **VARIANTS[name])))
    state = d.init(jax.random.key(0), real)
    state, _ = d.step(state, real)  # compiles
    jax.block_until_ready(state)
    return d, state

  def run(name):
    if name not in built:
      built[name] = build(name)
    d, state = built[name]
    t0 = time.perf_counter()
    for _ in range(steps):
      state, _ = d.step(state, real)
    jax.block_until_ready(state)
    built[name] = (d, state)
    return (time.perf_counter() - t0) / steps
  return run


def _eval_job(epochs: int, preset: str = "cpu"):
  cfg = config_lib.get_config(preset, weighting="kde")
  ds, x, _ = _real(cfg)
  nc = ds.num_classes
  syn = jaxdd.SynSet(jax.random.normal(jax.random.key(2), (nc * cfg.ipc, 28, 28, 3)),
                     jnp.repeat(jnp.arange(nc), cfg.ipc))
  test = jaxdd.Batch(jnp.asarray(x[:500]), jnp.asarray(ds.labels[:500]),
                     jnp.asarray(ds.bias[:500]))
  proto = dataclasses.replace(protocols.get_protocol(cfg.eval_protocol), epochs=epochs)
  model = models.get(cfg.eval_model, num_classes=nc)
  compiled = set()

  def run(name):
    with policy.use(policy.variant("cpu", **VARIANTS[name])):
      call = lambda: evaluate.evaluate_synset(jax.random.key(3), syn, test, model=model,
                                              protocol=proto, num_models=cfg.num_eval_models)
      if name not in compiled:
        call()
        compiled.add(name)
      t0 = time.perf_counter()
      call()
      return (time.perf_counter() - t0) / proto.num_epochs
  return run


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--jobs", default="cpu-dm-step,paper-dm-step,cpu-eval-epoch")
  p.add_argument("--variants", default=",".join(VARIANTS))
  p.add_argument("--cpu-steps", type=int, default=20, help="cpu-preset DM steps per timing")
  p.add_argument("--paper-steps", type=int, default=2, help="paper-preset DM steps per timing")
  p.add_argument("--eval-epochs", type=int, default=4, help="epochs of each timed evaluation")
  p.add_argument("--tiny", action="store_true",
                 help="check the script in seconds: the cpu jobs on the smoke preset's sizes, "
                      "one repeat of one step or epoch (flags given explicitly still apply)")
  args = p.parse_args(argv)
  if args.tiny:  # the paper-dm-step job at smoke sizes would repeat cpu-dm-step
    p.set_defaults(repeats=1, cpu_steps=1, paper_steps=1, eval_epochs=1,
                   jobs="cpu-dm-step,cpu-eval-epoch")
    args = p.parse_args(argv)
  cpu, paper = ("smoke", "smoke") if args.tiny else ("cpu", "paper")
  makers = {"cpu-dm-step": lambda: _dm_job(cpu, args.cpu_steps),
            "paper-dm-step": lambda: _dm_job(paper, args.paper_steps),
            "cpu-eval-epoch": lambda: _eval_job(args.eval_epochs, cpu)}
  variants = args.variants.split(",")
  summary = {}
  for job in args.jobs.split(","):
    run = makers[job]()
    times = {v: [] for v in variants}
    for r in range(args.repeats):
      for v in variants:
        s = run(v)
        times[v].append(s)
        print(json.dumps({"job": job, "variant": v, "repeat": r, "seconds": s}), flush=True)
    med = {v: statistics.median(t) for v, t in times.items()}
    summary[job] = {v: {"median_s": med[v], "vs_default": med[v] / med["default"]}
                    for v in variants}
    print(json.dumps({"job": job, "summary": summary[job]}), flush=True)
  print(json.dumps({"jax": jax.__version__, "summary": summary}))
  return 0


if __name__ == "__main__":
  sys.exit(main())
