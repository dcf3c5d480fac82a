"""Seconds per MTT step and compiled peak memory against syn_steps, exact vs TESLA gradients.

One step of :func:`jaxdd.distill.mtt` (pick an expert and a start epoch, ``syn_steps``
student SGD steps on the whole synthetic set, the parameter-distance loss, its gradient with
respect to the images and the student learning rate, the two SGD-momentum updates), compiled
as one program. Setting: 10 classes of 28x28x3, IPC 10 (100 synthetic images, every student
step on all of them), DSA ``color_crop_cutout_flip_scale_rotate`` on the student steps,
ConvNet-3 instance norm of ``--width`` (32: the ``cpu`` preset's; 128: MTT's), a random
buffer of 2 experts x 5 epochs (the step's cost does not depend on the buffer's values).

Memory is XLA's own accounting of the compiled step (``memory_analysis()``: temporary
buffers, and arguments + outputs), so it is exact and machine-independent; times are the
median of ``--iters`` steps after one warm-up. Each configuration runs in its own
subprocess and prints one JSON line (an ``error`` line if it fails; the script then exits 1):

  python benchmarks/mtt_step.py                             # both modes, syn_steps 10,20,40,80
  python benchmarks/mtt_step.py --width 128 --memory-only     # MTT's width: memory only
  python benchmarks/mtt_step.py --tiny                       # checks the script in seconds
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys


def one(mode: str, syn_steps: int, width: int, iters: int, memory_only: bool = False) -> dict:
  import time

  import jax
  import jax.numpy as jnp
  import numpy as np

  from jaxdd import distill, models
  from jaxdd.runs import programs as runs_programs
  from jaxdd.distill import experts
  model = models.get(f"convnet-d3-w{width}", num_classes=10)
  rng = np.random.default_rng(0)
  x = rng.normal(size=(200, 28, 28, 3)).astype(np.float32)
  y = np.repeat(np.arange(10), 20)
  d = distill.mtt(num_classes=10, ipc=10, model=model, num_epochs=5, expert_epochs=2,
                  max_start_epoch=3, syn_steps=syn_steps, mode=mode)
  state = d.init(jax.random.key(0), distill.real_data(x, y, num_classes=10))
  p = experts.flatten(model.init(jax.random.key(1), jnp.asarray(x[:1]))["params"])[0]
  buf = jnp.asarray(p[None, None] + 0.01 * rng.normal(size=(2, 6, p.size)), jnp.float32)
  t0 = time.perf_counter()
  compiled = runs_programs.PROGRAMS.step(d).lower(  # donating, as a run's
      state, buf).compile()
  compile_s = time.perf_counter() - t0
  mem = compiled.memory_analysis()
  memory = {"temp_mb": round(mem.temp_size_in_bytes / 2**20, 2),
            "args_out_mb": round((mem.argument_size_in_bytes + mem.output_size_in_bytes) / 2**20,
                                 2)}
  if memory_only:
    return {"mode": mode, "syn_steps": syn_steps, "width": width, "params": int(p.size),
            "compile_s": round(compile_s, 2), **memory, "backend": jax.default_backend()}
  times = []
  for i in range(iters + 1):
    t0 = time.perf_counter()
    state, m = compiled(state, buf)
    jax.block_until_ready(state.syn.images)
    if i:
      times.append(time.perf_counter() - t0)
  return {"mode": mode, "syn_steps": syn_steps, "width": width, "params": int(p.size),
          "compile_s": round(compile_s, 2), "step_s_median": round(float(np.median(times)), 4),
          "step_s": [round(t, 4) for t in times],
          **memory, "loss_finite": bool(np.isfinite(float(m["loss"]))),
          "backend": jax.default_backend()}


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--modes", default="exact,tesla")
  p.add_argument("--steps", default="10,20,40,80")
  p.add_argument("--width", type=int, default=32)
  p.add_argument("--iters", type=int, default=3)
  p.add_argument("--memory-only", action="store_true",
                 help="compile and report memory, run nothing")
  p.add_argument("--one", nargs=2, default=None, help=argparse.SUPPRESS)
  p.add_argument("--tiny", action="store_true", help=(
      "check the script in seconds: syn_steps 2, width 8, one timed step of each mode (flags "
      "given explicitly still apply)"))
  args = p.parse_args(argv)
  if args.tiny:
    p.set_defaults(steps="2", width=8, iters=1)
    args = p.parse_args(argv)
  if args.one:
    print(json.dumps(one(args.one[0], int(args.one[1]), args.width, args.iters,
                         args.memory_only)), flush=True)
    return 0
  failed = 0
  for mode in args.modes.split(","):
    for s in args.steps.split(","):
      out = subprocess.run([sys.executable, __file__, "--one", mode, s, "--width",
                            str(args.width), "--iters", str(args.iters)]
                           + (["--memory-only"] if args.memory_only else []),
                           capture_output=True, text=True)
      line = out.stdout.strip().splitlines()[-1] if out.returncode == 0 else json.dumps(
          {"mode": mode, "syn_steps": int(s), "error": out.stderr.strip().splitlines()[-1]})
      failed += out.returncode != 0
      print(line, flush=True)
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
