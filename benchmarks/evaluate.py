"""Wall time and peak memory of evaluation: N models in one program vs one by one.

Trains and tests ``--num-models`` ConvNet-3 (width 128, instance norm) networks
on a random CMNIST-shaped synthetic set (10 classes x IPC images of 28x28x3)
under an evaluation protocol (``dm``: 1000 epochs + DSA; ``cpu``: the reduced
one), then predicts a ``--test-size`` test set. Modes:

* ``vmap``: :func:`jaxdd.train.train_models` with ``parallel="vmap"``, all
  networks batched in one program.
* ``map``: the same program with ``parallel="map"`` (``lax.map`` over the
  networks inside one program; the default on CPU, where XLA runs the grouped
  convolutions of a vmapped ConvNet slowly).
* ``sequential``: one compiled single-network trainer called once per model
  (the same keys), as the PyTorch reference loops.
* ``cores``: :func:`jaxdd.train.train_models` with ``parallel="map"`` under the
  policy's ``map_networks="cores"``: as many networks at once as there are
  cores, each by a one-core program (:mod:`jaxdd.train.cores`); ``map`` pins
  ``map_networks="program"``. The per-model cost of ``cores`` is a throughput:
  the networks of a round train at the same time.

A mode may name the convolution layout after a ``+`` (``vmap+xla``,
``map+loop_safe``): the :mod:`jaxdd.policy` ``conv`` field for that mode only
(with ``xla`` the Winograd kernels, which go through ``loop_safe``, are off).

Each (ipc, protocol, mode) runs in its own subprocess, so ``ru_maxrss`` is that
configuration's peak; it prints one JSON line with compile and run seconds,
the per-model cost, and the peak RSS. A final line per (ipc, protocol) gives
the speed-ups relative to ``sequential``. A configuration that fails prints an ``error`` line
and the script exits 1 after the others. The reference PyTorch evaluation
(docs/protocols.md) trains its networks one after another.

Usage:

  python benchmarks/evaluate.py                               # ipc 10 and 50, dm and cpu
  python benchmarks/evaluate.py --ipc 10 --protocol cpu --modes map sequential
  python benchmarks/evaluate.py --epochs 2 --width 8 --test-size 256   # a quick check
  python benchmarks/evaluate.py --tiny                                 # checks the script
  python benchmarks/evaluate.py --policy accelerator          # pin a jaxdd.policy layout
  python benchmarks/evaluate.py --ipc 50 --protocol dm --modes map --policy \
      accelerator+norm_block=fused                            # or a variant of one
  python benchmarks/evaluate.py --no-tune-malloc              # glibc's allocator as shipped
  python benchmarks/evaluate.py --train-conv xla --micro-batch 10   # override policy fields
  python benchmarks/evaluate.py --modes sequential cores --num-models 2   # side by side on cores

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


def _child(args) -> None:
  """The measured process: everything under the pinned jaxdd.policy (``--policy``)."""
  from jaxdd import policy
  changes = {} if args.train_conv == "policy" else {"train_conv": args.train_conv}
  if args.conv != "policy":
    changes["conv"] = args.conv
    if args.conv != "loop_safe":
      changes.update(forward_conv="xla", train_conv="xla")
  if args.micro_batch is not None:
    changes["micro_batch"] = args.micro_batch or None
  if args.mode in ("map", "cores"):  # map: one program; cores: side by side (jaxdd.train.cores)
    changes["map_networks"] = "cores" if args.mode == "cores" else "program"
  pol = policy.variant(args.policy, **changes)
  with policy.use(pol):
    _measure(args)


def _measure(args) -> None:
  import importlib
  import resource
  import time

  import jax
  import jax.numpy as jnp
  import numpy as np

  from jaxdd import cli, models, policy, protocols

  malloc_tuned = cli.tune_allocator() if args.tune_malloc else False
  ev = importlib.import_module("jaxdd.train")  # the trainer and its compiled programs
  many = importlib.import_module("jaxdd.train.many")  # the N-network program

  protocol = protocols.get_protocol(args.protocol)
  if args.epochs is not None:
    protocol = protocol.replace(epochs=args.epochs)
  rng = np.random.default_rng(0)
  n = 10 * args.ipc
  # The epochs the trainer runs: a protocol with min_samples raises them for a small set.
  protocol = protocol.sized(n)
  images = jnp.asarray(rng.normal(size=(n, 28, 28, 3)), jnp.float32)
  labels = jnp.asarray(np.repeat(np.arange(10), args.ipc), jnp.int32)
  test_images = jnp.asarray(rng.normal(size=(args.test_size, 28, 28, 3)), jnp.float32)
  model = models.ConvNet(num_classes=10, width=args.width)
  task = ev.standard_task(model)
  key = jax.random.key(0)
  keys = jax.random.split(key, args.num_models)
  lr = jnp.asarray([protocol.lr], jnp.float32)

  t0 = time.perf_counter()
  if args.mode == "cores":
    from jaxdd.train import cores
    width = cores.cores_to_use(args.num_models)
    if width:  # what train_models compiles: the one-core program (and the ordinary one)
      cores._train_one_core.lower(keys[0], lr[0], images, labels, task=task, protocol=protocol,
                                  report=False, pol=policy.current()).compile()
    if args.num_models % max(width, 1) or not width:
      ev._train_single(task, protocol).lower(keys[0], lr[0], images, labels).compile()
    predict = ev._predict_program(task, ev.predict_block(protocol, args.test_size, "map"), "map")
  elif args.mode == "sequential":
    train = ev._train_single(task, protocol).lower(keys[0], lr[0], images, labels).compile()
    predict = ev._predict_program(task, ev.predict_block(protocol, args.test_size, "map"), "map")
  else:
    train = many._train_many_program(task, protocol, args.mode).lower(
        keys, lr, images, labels).compile()
    predict = ev._predict_program(task, ev.predict_block(protocol, args.test_size, args.mode),
                                  args.mode)
  compile_train_s = time.perf_counter() - t0

  t0 = time.perf_counter()
  if args.mode == "cores":
    params, state, metrics = ev._train_many(key, images, labels, task=task, protocol=protocol,
                                            num_models=args.num_models, lrs=lr, parallel="map")
    params, state = jax.tree.map(lambda a: a[0], (params, state))
    jax.block_until_ready(params)
  elif args.mode == "sequential":
    outs = []
    for k in keys:
      params, state, metrics = train(k, lr[0], images, labels)
      jax.block_until_ready(params)
      outs.append((params, state))
    params, state = jax.tree.map(lambda *a: jnp.stack(a), *outs)
  else:
    params, state, metrics = train(keys, lr, images, labels)
    params, state = jax.tree.map(lambda a: a[0], (params, state))
    jax.block_until_ready(params)
  train_s = time.perf_counter() - t0

  # Prediction: first call includes its compile; time a second call too.
  t0 = time.perf_counter()
  preds = predict(params, state, test_images)
  jax.block_until_ready(preds)
  test_first_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  jax.block_until_ready(predict(params, state, test_images))
  test_s = time.perf_counter() - t0

  print(json.dumps({
      "bench": "evaluate", "mode": args.mode, "ipc": args.ipc, "num_train": n,
      "protocol": protocol.name, "epochs_trained": protocol.num_epochs,
      "augment": protocol.augment, "num_models": args.num_models, "width": args.width,
      "test_size": args.test_size, "policy": policy.current().name,
      "conv": policy.current().conv, "train_conv": policy.current().train_conv,
      "micro_batch": policy.current().micro_batch,
      "map_networks": policy.current().map_networks, "cores": _cores(args),
      "malloc_tuned": malloc_tuned,
      "compile_train_s": round(compile_train_s, 3),
      "train_s": round(train_s, 3), "train_s_per_model": round(train_s / args.num_models, 3),
      "test_first_call_s": round(test_first_s, 3), "test_s": round(test_s, 3),
      "total_s": round(compile_train_s + train_s + test_first_s, 3),
      "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
      "backend": jax.default_backend(), "devices": jax.device_count(),
      "device": jax.devices()[0].device_kind,
      "jax": jax.__version__,
  }), flush=True)


def _cores(args) -> int:
  """Networks trained at once (``cores`` mode: the cores used side by side; else 1)."""
  from jaxdd.train import cores
  return max(cores.cores_to_use(args.num_models), 1) if args.mode == "cores" else 1


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--ipc", type=int, nargs="+", default=[10, 50])
  p.add_argument("--protocol", nargs="+", default=["dm", "cpu"])
  p.add_argument("--modes", nargs="+", default=["vmap", "map", "sequential"],
                 choices=[m + c for m in ("vmap", "map", "sequential", "cores")
                          for c in ("", "+loop_safe", "+xla")])
  p.add_argument("--num-models", type=int, default=5)
  p.add_argument("--epochs", type=int, default=None,
                 help="override the protocol's epochs (the stamp shows the change)")
  p.add_argument("--width", type=int, default=128)
  p.add_argument("--test-size", type=int, default=10000)
  p.add_argument("--policy", default="auto", help=(
      "pin this jaxdd.policy layout: a name or a variant of one, such as "
      "accelerator+norm_block=fused (default: by backend)"))
  p.add_argument("--train-conv", choices=["policy", "winograd", "xla"], default="policy",
                 help="the trained networks' convolutions (jaxdd.policy train_conv; default: "
                      "the policy's)")
  p.add_argument("--micro-batch", type=int, default=None,
                 help="the trainer's micro-batch target (jaxdd.policy micro_batch; 0: whole "
                      "batches; default: the policy's)")
  p.add_argument("--no-tune-malloc", dest="tune_malloc", action="store_false",
                 help="leave glibc's allocator as shipped (default: cli.tune_allocator(), as the "
                      "jaxdd CLI does; compare with the allocator-tuned PyTorch reference)")
  p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
  p.add_argument("--mode", default="map", help=argparse.SUPPRESS)
  p.add_argument("--conv", default="policy", help=argparse.SUPPRESS)
  p.add_argument("--tiny", action="store_true", help=(
      "check the script in seconds: IPC 1, the smoke protocol cut to one epoch, 2 width-4 "
      "networks, 16 test images, modes map and sequential (flags given explicitly still apply)"))
  args = p.parse_args(argv)
  if args.tiny:
    p.set_defaults(ipc=[1], protocol=["smoke"], modes=["map", "sequential"], num_models=2,
                   epochs=1, width=4, test_size=16)
    args = p.parse_args(argv)
  from jaxdd import policy
  try:
    policy.check(args.policy)
  except ValueError as e:
    p.error(f"--policy: {e}")
  if args.child:
    args.ipc, args.protocol = args.ipc[0], args.protocol[0]
    _child(args)
    return 0

  here = os.path.dirname(os.path.abspath(__file__))
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [os.path.dirname(here),
                                                     env.get("PYTHONPATH")]))
  failed = 0
  for ipc in args.ipc:
    for proto in args.protocol:
      results = {}
      for mode in args.modes:
        base_mode, _, conv = mode.partition("+")
        cmd = [sys.executable, os.path.abspath(__file__), "--child", "--mode", base_mode,
               "--conv", conv or "policy",
               "--ipc", str(ipc), "--protocol", proto, "--num-models", str(args.num_models),
               "--width", str(args.width), "--test-size", str(args.test_size),
               "--policy", args.policy, "--train-conv", args.train_conv]
        if args.micro_batch is not None:
          cmd += ["--micro-batch", str(args.micro_batch)]
        if args.epochs is not None:
          cmd += ["--epochs", str(args.epochs)]
        cmd += [] if args.tune_malloc else ["--no-tune-malloc"]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if out.returncode != 0:
          print(json.dumps({"bench": "evaluate", "mode": mode, "ipc": ipc, "protocol": proto,
                            "error": out.stderr.strip().splitlines()[-1:]}), flush=True)
          failed += 1
          continue
        line = out.stdout.strip().splitlines()[-1]
        print(line, flush=True)
        results[mode] = json.loads(line)
      if "sequential" in results:
        seq = results["sequential"]
        summary = {"bench": "evaluate.speedup", "ipc": ipc, "protocol": proto,
                   "num_models": args.num_models, "policy": seq.get("policy")}
        for mode, r in results.items():
          if mode != "sequential":
            summary[f"{mode}_train_speedup"] = round(seq["train_s"] / r["train_s"], 3)
            summary[f"{mode}_total_speedup"] = round(seq["total_s"] / r["total_s"], 3)
            summary[f"{mode}_peak_rss_ratio"] = round(r["peak_rss_mib"] / seq["peak_rss_mib"], 3)
        print(json.dumps(summary), flush=True)
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
