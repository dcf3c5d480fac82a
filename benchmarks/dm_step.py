"""Seconds per DM step (median after compile), peak memory and achieved GFLOP/s.

The reference configuration of docs/protocols.md: 10 classes of 3x28x28, 256
real images per class, DSA 'color_crop_cutout_flip_scale_rotate' on, ConvNet-3
width 128 instance norm, IPC 10 and 50. The PyTorch reference takes 2.89 / 2.66 s
per step as shipped and 1.54 / 2.15 s with a tuned allocator on the 2-core
development CPU (docs/results/speed-distillation.md).

Each configuration runs in its own subprocess (so peak RSS is its own), and
prints one JSON line. Usage:

  python benchmarks/dm_step.py                      # IPC 10 and 50, default flags
  python benchmarks/dm_step.py --ipc 10 --steps 10 --xla-flags=--xla_cpu_use_onednn=true
  python benchmarks/dm_step.py --kde                # KDE-weighted DM (batch scope)
  python benchmarks/dm_step.py --policy accelerator # the accelerator layout (jaxdd.policy)
  python benchmarks/dm_step.py --real-dtype bfloat16 # the real-image forward in bfloat16
  python benchmarks/dm_step.py --forward-conv xla   # the real forward without Winograd
  python benchmarks/dm_step.py --no-tune-malloc     # glibc's allocator as shipped
  python benchmarks/dm_step.py --tiny               # checks the script in seconds

Like the ``jaxdd`` CLI, the measured process keeps freed memory
(:func:`jaxdd.cli.tune_allocator`, the setting of the allocator-tuned PyTorch
reference) unless ``--no-tune-malloc``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys


def _chunk_arg(value: str):
  """'auto' (the library's default), 0 (all at once: None) or a chunk size."""
  return "auto" if value == "auto" else (int(value) or None)


def _child(args) -> None:
  """The measured process: everything under the pinned jaxdd.policy (``--policy``)."""
  from jaxdd import policy
  changes = {} if args.forward_conv == "policy" else {"forward_conv": args.forward_conv}
  pol = policy.variant(args.policy, **changes)
  with policy.use(pol):
    _measure(args)


def _measure(args) -> None:
  import resource
  import time

  import jax
  import numpy as np

  from jaxdd import augment, cli, distill, models, policy
  from jaxdd.runs import programs as runs_programs

  malloc_tuned = cli.tune_allocator() if args.tune_malloc else False
  rng = np.random.default_rng(0)
  per_class = args.real_per_class + 44
  labels = np.repeat(np.arange(10), per_class)
  images = rng.normal(size=(len(labels), 28, 28, 3)).astype(np.float32)
  emb = rng.normal(size=(len(labels), 128)).astype(np.float32)
  emb /= np.linalg.norm(emb, axis=1, keepdims=True)
  real = distill.real_data(images, labels, num_classes=10, embeddings=emb if args.kde else None)
  aug = augment.dsa("color_crop_cutout_flip_scale_rotate") if not args.no_dsa else None
  d = distill.dm(num_classes=10, ipc=args.ipc, model=models.ConvNet(10, width=args.width),
                 augment=aug, real_per_class=args.real_per_class,
                 kde_config=distill.KDEConfig() if args.kde else None,
                 execution=distill.Execution(
                     policy=policy.current(), real_chunk=_chunk_arg(args.real_chunk),
                     syn_chunk=_chunk_arg(args.syn_chunk),
                     real_dtype=None if args.real_dtype == "float32" else args.real_dtype))
  state = d.init(jax.random.key(0), real)
  t0 = time.perf_counter()
  compiled = runs_programs.PROGRAMS.step(d).lower(  # donating, as a run's
      state, real).compile()
  compile_s = time.perf_counter() - t0
  # FLOPs of the step's network work: the real images go forward once, the
  # synthetic ones forward and back (input gradient only, ~ the forward's
  # cost). XLA's own count of the compiled step counts each loop body once
  # (the chunked embeddings are loops), so the per-image forward is counted
  # on a loop-free program and scaled.
  net = models.ConvNet(10, width=args.width)
  one = jax.numpy.zeros((1, 28, 28, 3))
  variables = net.init(jax.random.key(0), one)
  cost = jax.jit(lambda x: net.apply(variables, x, return_features=True)[0]).lower(
      one).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  per_image = float(cost["flops"])
  flops = per_image * 10 * (args.real_per_class + 2 * args.ipc)
  times = []
  for i in range(args.warmup + args.steps):
    t0 = time.perf_counter()
    state, metrics = compiled(state, real)
    jax.block_until_ready(state.syn.images)
    if i >= args.warmup:
      times.append(time.perf_counter() - t0)
  med = float(np.median(times))
  print(json.dumps({
      "bench": "dm_step", "ipc": args.ipc, "real_per_class": args.real_per_class,
      "width": args.width, "dsa": not args.no_dsa, "kde": args.kde, "real_chunk": args.real_chunk,
      "syn_chunk": args.syn_chunk, "real_dtype": args.real_dtype, "policy": policy.current().name,
      "forward_conv": policy.current().forward_conv, "malloc_tuned": malloc_tuned,
      "xla_flags": os.environ.get("XLA_FLAGS", ""), "compile_s": round(compile_s, 2),
      "step_s_median": round(med, 3), "step_s_min": round(min(times), 3),
      "step_s_max": round(max(times), 3), "n": len(times),
      "forward_mflop_per_image": round(per_image / 1e6, 1),
      "network_gflop_per_step": round(flops / 1e9, 1), "gflops_per_s": round(flops / 1e9 / med, 1),
      "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
      "loss": float(metrics["loss"]), "devices": jax.device_count(),
      "backend": jax.default_backend()}), flush=True)


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--ipc", type=int, nargs="*", default=[10, 50])
  p.add_argument("--steps", type=int, default=8)
  p.add_argument("--warmup", type=int, default=2)
  p.add_argument("--real-per-class", type=int, default=256)
  p.add_argument("--width", type=int, default=128)
  p.add_argument("--no-dsa", action="store_true")
  p.add_argument("--kde", action="store_true")
  p.add_argument("--real-chunk", default="auto",
                 help="embed the real images this many at a time (distill.Execution real_chunk; "
                      "0 = all at once). Default 'auto', the policy's (32 on CPU)")
  p.add_argument("--syn-chunk", default="auto",
                 help="the same for the synthetic images (distill.Execution syn_chunk). Default "
                      "'auto', the policy's (10 on CPU)")
  p.add_argument("--policy", choices=["auto", "cpu", "accelerator"], default="auto",
                 help="pin this jaxdd.policy layout (default: by backend)")
  p.add_argument("--real-dtype", choices=["float32", "bfloat16"], default="float32",
                 help="dtype of the real-image forward (distill.Execution real_dtype)")
  p.add_argument("--forward-conv", choices=["policy", "winograd", "xla"], default="policy",
                 help="the real-image forward's convolutions (jaxdd.policy forward_conv; "
                      "default: the policy's, winograd on CPU)")
  p.add_argument("--no-tune-malloc", dest="tune_malloc", action="store_false",
                 help="leave glibc's allocator as shipped (default: cli.tune_allocator(), as the "
                      "jaxdd CLI does; compare with the allocator-tuned PyTorch reference)")
  p.add_argument("--xla-flags", default=None, help="XLA_FLAGS for the measured process")
  p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
  p.add_argument("--tiny", action="store_true", help=(
      "check the script in seconds: IPC 1, one step without warm-up, 4 real images per class, "
      "width 8 (flags given explicitly still apply)"))
  args = p.parse_args(argv)
  if args.tiny:
    p.set_defaults(ipc=[1], steps=1, warmup=0, real_per_class=4, width=8)
    args = p.parse_args(argv)
  if args.child:
    args.ipc = args.ipc[0]
    _child(args)
    return
  for ipc in args.ipc:
    env = dict(os.environ)
    if args.xla_flags is not None:
      env["XLA_FLAGS"] = args.xla_flags
    cmd = [sys.executable, __file__, "--child", "--ipc", str(ipc), "--steps", str(args.steps),
           "--warmup", str(args.warmup), "--real-per-class", str(args.real_per_class),
           "--width", str(args.width)] + (["--no-dsa"] if args.no_dsa else []) + (
               ["--real-chunk", str(args.real_chunk), "--syn-chunk", str(args.syn_chunk)]) + (
               ["--kde"] if args.kde else []) + ["--policy", args.policy,
                                                 "--real-dtype", args.real_dtype,
                                                 "--forward-conv", args.forward_conv] + (
               [] if args.tune_malloc else ["--no-tune-malloc"])
    subprocess.run(cmd, env=env, check=True)


if __name__ == "__main__":
  main()
