"""How far TESLA's constant-memory gradient is from the exact MTT gradient, against syn_steps.

:func:`jaxdd.distill.experts.trajectory_loss` in mode ``tesla`` drops the dependence of later
student parameters on earlier images (see its module docstring): it equals ``exact`` at one
student step. This measures the gap at the ``cpu`` preset's setting: the embedded CMNIST 5 %
training split, ConvNet-3 width 32 (instance norm), one expert trained for 3 epochs by
:func:`jaxdd.distill.experts.train_experts` (start epoch 1, target epoch 3: ``expert_epochs``
2), IPC 10 synthetic images taken from real ones, DSA on the student steps, student lr 0.01.
For each ``syn_steps`` and seed (the student batches and augmentations), both gradients with
respect to the images and the student lr, under ``jax.default_matmul_precision("highest")``:

* relative error ``|g_tesla - g_exact| / |g_exact|`` of the image gradient, and its cosine;
* the student lr's gradient in both modes.

Usage:
  python benchmarks/tesla_error.py --steps 1,5,10,30 --seeds 0,1,2 --out results/trajectory-matching/tesla-error.json
  python benchmarks/tesla_error.py --tiny --out tesla-tiny.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxdd import augment, data, models
from jaxdd._src import io as _io
from jaxdd.runs import version
from jaxdd.distill import experts



def _setup(width: int, ipc: int, epochs: int, limit: int | None = None):
  train = data.load("cmnist", split="train", conflict_ratio=0.05)
  mean, std = data.channel_stats(train.images)
  x = np.asarray(data.normalize(train.images, mean, std), np.float32)
  y = np.asarray(train.labels)
  if limit is not None:  # --tiny: every limit-th image (all classes kept)
    x, y = x[::len(y) // limit], y[::len(y) // limit]
  model = models.get(f"convnet-d3-w{width}", num_classes=10)
  traj = experts.train_experts(jax.random.key(0), x, y, model=model, epochs=epochs)[0]
  rows = np.concatenate([np.flatnonzero(y == c)[:ipc] for c in range(10)])
  params = model.init(jax.random.key(1), jnp.asarray(x[:1]))["params"]
  _, unravel = experts.flatten(params)

  def apply_fn(p, xb):
    return model.apply({"params": p}, xb, train=True)
  return (jnp.asarray(x[rows]), jnp.asarray(y[rows], jnp.int32), jnp.asarray(traj[1]),
          jnp.asarray(traj[epochs]), apply_fn, unravel)


def _grads(images, labels, start, target, apply_fn, unravel, steps: int, seed: int, mode: str):
  aug = augment.dsa(augment.DEFAULT_STRATEGY, siamese=False)

  def loss(img, lr):
    return experts.trajectory_loss(img, labels, lr, start, target, jax.random.key(seed),
                                   apply_fn=apply_fn, unravel=unravel, syn_steps=steps,
                                   augment=aug, mode=mode)
  with jax.default_matmul_precision("highest"):
    value, (g_img, g_lr) = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(
        images, jnp.float32(0.01))
  return float(value), np.asarray(g_img, np.float64), float(g_lr)



def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--steps", default="1,5,10,30")
  p.add_argument("--seeds", default="0,1,2")
  p.add_argument("--out", required=True)
  p.add_argument("--tiny", action="store_true", help="check the script: 1 and 2 steps, 1 seed")
  args = p.parse_args(argv)
  width, ipc, epochs, limit = 32, 10, 3, None
  if args.tiny:
    args.steps, args.seeds, width, ipc, epochs, limit = "1,2", "0", 8, 2, 2, 300
  images, labels, start, target, apply_fn, unravel = _setup(width, ipc, epochs, limit)
  rows = []
  for steps in [int(s) for s in args.steps.split(",")]:
    errs, coss, lrs = [], [], []
    for seed in [int(s) for s in args.seeds.split(",")]:
      _, ge, le = _grads(images, labels, start, target, apply_fn, unravel, steps, seed, "exact")
      _, gt, lt = _grads(images, labels, start, target, apply_fn, unravel, steps, seed, "tesla")
      errs.append(np.linalg.norm(gt - ge) / np.linalg.norm(ge))
      coss.append(float(np.vdot(gt, ge) / (np.linalg.norm(gt) * np.linalg.norm(ge))))
      lrs.append((le, lt))
      print(json.dumps({"syn_steps": steps, "seed": seed, "rel_error": errs[-1],
                        "cosine": coss[-1], "lr_grad_exact": le, "lr_grad_tesla": lt}),
            flush=True)
    rows.append([str(steps), f"{100 * statistics.median(errs):.1f}",
                 ", ".join(f"{100 * e:.1f}" for e in errs), f"{statistics.median(coss):.3f}",
                 f"{statistics.median(le for le, _ in lrs):.4g} / "
                 f"{statistics.median(lt for _, lt in lrs):.4g}"])
  commit = version.short_commit()  # the code this process loaded
  _io.atomic_write_json(args.out, {
      "columns": ["syn_steps", "image gradient: relative error, median %", "each seed (%)",
                  "cosine, median", "student lr gradient, exact / TESLA (median)"],
      "rows": rows,
      "notes": [f"The cpu preset's MTT setting: embedded CMNIST 5 %, ConvNet-3 width {width}, "
                f"IPC {ipc} synthetic images taken from real ones, one expert of {epochs} "
                f"epochs (start epoch 1, target epoch {epochs}), DSA on the student steps, "
                "student lr 0.01, float32 at the highest matmul precision; one seed = one draw "
                "of the student batches and augmentations, the same for both modes.",
                "Relative error |g_tesla - g_exact| / |g_exact| of the gradient with respect to "
                "the synthetic images. TESLA keeps the memory of one student step whatever "
                "syn_steps (benchmarks/mtt_step.py measures it)."],
      "date": time.strftime("%Y-%m-%d"), "commit": commit,
      "machine": version.machine(),
      "command": ["python benchmarks/tesla_error.py " + " ".join(sys.argv[1:])]})
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
