"""Seconds per gradient-matching outer iteration (DSA / DC), peak memory, achieved GFLOP/s.

The reference configuration: 10 classes of 3x28x28, IPC 10 (outer_loop 10,
inner_loop 50), 256 real images per class, DSA 'color_crop_cutout_flip_scale_rotate'
on, ConvNet-3 width 128 instance norm, lr_img 0.1, lr_net 0.01. One outer
iteration = 10 matching rounds (each: the real gradient of 10 x 256 images, the
second-order synthetic side, one image update) and 9 inner loops of 50 network
epochs on the 100 synthetic images. The PyTorch reference (VICO-UoE/
DatasetCondensation, torch 2.13, 2 threads) takes 170 s as shipped and 122 s
with a tuned allocator on the 2-core development CPU.

Besides the whole step (``distill.dsa(...).step``, one compiled program), the
two parts are timed on their own with the same library functions: one matching
round (``matching.gm_loss`` value and gradient) and one inner loop
(``jaxdd.train.fit`` for ``inner_loop`` epochs).

FLOPs are counted from the network's forward cost per image F (XLA's cost
analysis of a loop-free forward): a real image in a matching round costs ~3F
(forward, input and weight gradients), a synthetic image ~6F (first- and
second-order passes), an image of a training step ~3F.

Each configuration runs in its own subprocess and prints one JSON line:

  python benchmarks/gm_outer.py                       # DSA, IPC 10, 3 timed iterations
  python benchmarks/gm_outer.py --method dc --iters 2
  python benchmarks/gm_outer.py --kde                  # KDE-weighted (batch scope)
  python benchmarks/gm_outer.py --no-tune-malloc       # glibc's allocator as shipped
  python benchmarks/gm_outer.py --policy accelerator   # pin a jaxdd.policy layout
  python benchmarks/gm_outer.py --tiny                 # checks the script in seconds
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

STRATEGY = "color_crop_cutout_flip_scale_rotate"


def _median_time(fn, n: int, warmup: int = 1) -> tuple[float, list[float]]:
  import time

  import numpy as np
  times = []
  for i in range(warmup + n):
    t0 = time.perf_counter()
    fn()
    if i >= warmup:
      times.append(time.perf_counter() - t0)
  return float(np.median(times)), times


def _child(args) -> None:
  """The measured process: everything under the pinned jaxdd.policy (``--policy``)."""
  from jaxdd import policy
  changes = {} if args.train_conv == "policy" else {"train_conv": args.train_conv}
  with policy.use(policy.variant(args.policy, **changes)):
    _measure(args)


def _measure(args) -> None:
  import resource
  import time

  import jax
  import jax.numpy as jnp
  import numpy as np

  from jaxdd import augment, cli, distill, matching, models, policy, protocols
  from jaxdd import train as train_lib
  from jaxdd.runs import programs as runs_programs
  from jaxdd._src import winograd

  malloc_tuned = cli.tune_allocator() if args.tune_malloc else False
  nc, ipc, b = 10, args.ipc, args.real_per_class
  outer, inner = distill.gm_loops(ipc, args.outer_loop, args.inner_loop)
  strategy = STRATEGY if args.method == "dsa" else None
  rng = np.random.default_rng(0)
  per_class = b + 44
  labels = np.repeat(np.arange(nc), per_class)
  images = rng.normal(size=(len(labels), 28, 28, 3)).astype(np.float32)
  emb = rng.normal(size=(len(labels), 128)).astype(np.float32)
  emb /= np.linalg.norm(emb, axis=1, keepdims=True)
  real = distill.real_data(images, labels, num_classes=nc, embeddings=emb if args.kde else None)
  model = models.ConvNet(nc, width=args.width)
  d = distill.gm(num_classes=nc, ipc=ipc, model=model,
                 augment=augment.dsa(strategy) if strategy else None, outer_loop=outer,
                 inner_loop=inner, real_per_class=b, syn_init="real",
                 kde_config=distill.KDEConfig() if args.kde else None,
                 execution=distill.Execution(
                     policy=policy.current(),
                     real_chunk="auto" if args.real_chunk == "auto" else (int(args.real_chunk)
                                                                          or None)))
  state = d.init(jax.random.key(0), real)
  t0 = time.perf_counter()
  compiled = runs_programs.PROGRAMS.step(d).lower(  # donating, as a run's
      state, real).compile()
  compile_s = time.perf_counter() - t0

  net = models.ConvNet(nc, width=args.width)
  one = jnp.zeros((1, 28, 28, 3))
  variables = net.init(jax.random.key(0), one)
  cost = jax.jit(lambda x: net.apply(variables, x)).lower(one).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  f = float(cost["flops"])
  match_flop = f * nc * (3 * b + 6 * ipc)
  train_flop = f * 3 * nc * ipc * inner
  step_flop = outer * match_flop + (outer - 1) * train_flop

  holder = {"state": state}

  def one_step():
    holder["state"], m = compiled(holder["state"], real)
    jax.block_until_ready(holder["state"].syn.images)
    holder["metrics"] = m

  step_s, step_times = _median_time(one_step, args.iters, warmup=args.warmup)

  # The two parts on their own, with the functions the step uses.
  params = variables["params"]
  aug = augment.dsa(strategy) if strategy else None
  real_b = jnp.asarray(images.reshape(nc, per_class, 28, 28, 3)[:, :b])
  syn_b = real_b[:, :ipc]
  chunk = (policy.current().real_chunk if args.real_chunk == "auto"
           else (int(args.real_chunk) or None))
  logits_fn = lambda p, x: net.apply({"params": p}, x)
  # As distill.gm: the real gradient through the Winograd kernels under train_conv.
  real_logits_fn = (winograd.traced_inside(logits_fn)
                    if policy.current().train_conv == "winograd" else None)

  @jax.jit
  def match(s, key):
    return jax.value_and_grad(lambda s: matching.gm_loss(
        key, s, real_b, params=params, logits_fn=logits_fn, augment=aug,
        real_chunk=chunk, real_logits_fn=real_logits_fn))(s)

  protocol = protocols.Protocol("gm-inner", epochs=inner - 1, lr=0.01, momentum=0.0,
                                weight_decay=0.0, decay_at=None, augment=strategy)
  syn_flat = syn_b.reshape((-1, 28, 28, 3))
  syn_labels = jnp.repeat(jnp.arange(nc), ipc)

  @jax.jit
  def train(p, key):
    return train_lib.fit(key, p, {}, syn_flat, syn_labels, task=train_lib.standard_task(net),
                         protocol=protocol)[0]

  match_s, _ = _median_time(lambda: jax.block_until_ready(match(syn_b, jax.random.key(1))),
                            args.part_iters)
  train_s, _ = _median_time(lambda: jax.block_until_ready(train(params, jax.random.key(2))),
                            args.part_iters)
  print(json.dumps({
      "bench": "gm_outer", "method": args.method, "ipc": ipc, "outer_loop": outer,
      "inner_loop": inner, "real_per_class": b, "width": args.width, "kde": args.kde,
      "real_chunk": args.real_chunk, "policy": policy.current().name,
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
      "malloc_tuned": malloc_tuned,
      "compile_s": round(compile_s, 1),
      "outer_s_median": round(step_s, 2), "outer_s_all": [round(t, 2) for t in step_times],
      "match_round_s": round(match_s, 3), "inner_loop_s": round(train_s, 3),
      "parts_sum_s": round(outer * match_s + (outer - 1) * train_s, 2),
      "forward_mflop_per_image": round(f / 1e6, 1),
      "network_gflop_per_outer": round(step_flop / 1e9, 1),
      "gflops_per_s": round(step_flop / 1e9 / step_s, 1),
      "match_gflops_per_s": round(match_flop / 1e9 / match_s, 1),
      "inner_gflops_per_s": round(train_flop / 1e9 / train_s, 1),
      "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
      "loss": float(holder["metrics"]["loss"]), "devices": jax.device_count(),
      "backend": jax.default_backend()}), flush=True)


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--method", choices=["dsa", "dc"], default="dsa")
  p.add_argument("--ipc", type=int, default=10)
  p.add_argument("--outer-loop", type=int, default=None)
  p.add_argument("--inner-loop", type=int, default=None)
  p.add_argument("--iters", type=int, default=3, help="timed outer iterations (after warm-up)")
  p.add_argument("--warmup", type=int, default=1)
  p.add_argument("--part-iters", type=int, default=3, help="timed runs of each part")
  p.add_argument("--real-per-class", type=int, default=256)
  p.add_argument("--width", type=int, default=128)
  p.add_argument("--kde", action="store_true")
  p.add_argument("--real-chunk", default="auto",
                 help="real gradient this many images at a time (0: all at once)")
  p.add_argument("--no-tune-malloc", dest="tune_malloc", action="store_false",
                 help="leave glibc's allocator as shipped (default: cli.tune_allocator(), as the "
                      "jaxdd CLI does; compare with the allocator-tuned PyTorch reference)")
  p.add_argument("--policy", choices=["auto", "cpu", "accelerator"], default="auto",
                 help="pin this jaxdd.policy layout (default: by backend)")
  p.add_argument("--train-conv", choices=["policy", "winograd", "xla"], default="policy",
                 help="the networks' convolutions (jaxdd.policy train_conv; default: the policy's)")
  p.add_argument("--xla-flags", default=None, help="XLA_FLAGS for the measured process")
  p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
  p.add_argument("--tiny", action="store_true", help=(
      "check the script in seconds: IPC 1, outer loop 2, inner loop 2, one iteration and one of "
      "each part, 2 real images per class, width 8 (flags given explicitly still apply)"))
  args = p.parse_args(argv)
  if args.tiny:
    p.set_defaults(ipc=1, outer_loop=2, inner_loop=2, iters=1, warmup=0, part_iters=1,
                   real_per_class=2, width=8)
    args = p.parse_args(argv)
  if args.child:
    _child(args)
    return
  env = dict(os.environ)
  if args.xla_flags is not None:
    env["XLA_FLAGS"] = args.xla_flags
  cmd = [sys.executable, __file__, "--child", "--method", args.method, "--ipc", str(args.ipc),
         "--iters", str(args.iters), "--warmup", str(args.warmup),
         "--part-iters", str(args.part_iters), "--real-per-class", str(args.real_per_class),
         "--width", str(args.width), "--real-chunk", str(args.real_chunk)]
  cmd += ["--outer-loop", str(args.outer_loop)] if args.outer_loop else []
  cmd += ["--inner-loop", str(args.inner_loop)] if args.inner_loop else []
  cmd += ["--kde"] if args.kde else []
  cmd += [] if args.tune_malloc else ["--no-tune-malloc"]
  cmd += ["--policy", args.policy, "--train-conv", args.train_conv]
  subprocess.run(cmd, env=env, check=True)


if __name__ == "__main__":
  main()
