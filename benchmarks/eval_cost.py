"""The evaluation's training program: the kernels and large-array traffic of one epoch.

A unit's evaluation trains every SynSet's networks with the ``dm`` protocol (1,001 epochs of
the 500 synthetic images in batches of 256 with DSA; ConvNet-3 width 128 with instance norm),
one network after another under the ``accelerator`` layout policy (``parallel="map"``), each
network one ``lax.scan`` over its epochs. So one epoch of one network, repeated, is the
evaluation's time. For each ``--policies`` entry this script compiles the training of one
network on one SynSet (:func:`jaxdd.train.train_synsets`, the program
:func:`jaxdd.evaluate.evaluate_synsets` runs, at S = M = 1), finds its epoch loop and prints one
JSON line: the loop's iterations (``epochs``: the protocol's, plus one as in the reference),
the kernels one epoch launches (``epoch_kernels``: fusions, library calls, copies; of each
conditional, its largest branch) and, of those, the ones that read or write arrays of
``--min-mb`` MB or more, with the GB they move per epoch (``big_kernels``, ``big_read_gb``,
``big_written_gb``: :mod:`hlo_traffic`). Counts, not seconds.

``--gpu-target FILE`` compiles for a GPU that is not there (an XLA GPU target config,
``benchmarks/gpu_targets/``; JAX's CUDA plugin needed, as for ``cell_cost.py``), so the kernels
are the ones that GPU would run; without it, this backend's. ``--hlo-dir DIR`` keeps each
point's compiled HLO (``POLICY.hlo.txt.gz``).

  JAX_PLATFORMS=cpu python benchmarks/eval_cost.py --gpu-target benchmarks/gpu_targets/h200.txtpb \\
      --policies accelerator,accelerator+norm_block=fused       # an H200's programs, on a CPU
  python benchmarks/cached_hlo.py .xla-cache/xla-cache.tar.gz --name jit__train_synset_grid \\
      --out EVAL.hlo.txt.gz && python benchmarks/eval_cost.py --count EVAL.hlo.txt.gz
                                                                  # the program a GPU ran
  python benchmarks/eval_cost.py --tiny                           # checks the script in seconds
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # its sibling scripts
from cell_cost import _script, _write_hlo, gpu_target_sharding  # noqa: E402


def epoch_counts(text: str, min_bytes: float, epochs: int) -> dict:
  """The epoch loop of a compiled training program (HLO ``text``: its one loop of ``epochs``
  iterations, however deep) and what one of its iterations launches."""
  module = _script("hlo_traffic").Module(text)
  loops = [body for body, n, _ in module.loops() if n == epochs]
  if len(loops) != 1:
    raise ValueError(f"the program has {len(loops)} loops of {epochs} iterations, not one: "
                     "not a training program of that many epochs")
  (body,) = loops
  every = module.run_once(0, body)
  big = module.run_once(min_bytes, body)
  return {"epochs": epochs, "epoch_kernels": len(every), "big_kernels": len(big),
          "big_read_gb": round(sum(k["read"] for k in big) / 1e9, 3),
          "big_written_gb": round(sum(k["written"] for k in big) / 1e9, 3)}


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--policies", default="accelerator,accelerator+norm_block=fused",
                 help="layout policies, comma-separated (jaxdd.policy names or variants)")
  p.add_argument("--protocol", default="dm", help="the evaluation protocol (default dm)")
  p.add_argument("--ipc", type=int, default=50)
  p.add_argument("--width", type=int, default=128)
  p.add_argument("--min-mb", type=float, default=1.0,
                 help="the arrays counted as large: at least this many MB (default 1)")
  p.add_argument("--hlo-dir", default=None, help=(
      "write each point's compiled HLO here as POLICY.hlo.txt.gz (a new or empty folder)"))
  p.add_argument("--gpu-target", default=None, help=(
      "compile for the GPU this XLA GPU target config describes, without one "
      "(benchmarks/gpu_targets/h200.txtpb; needs JAX's CUDA plugin)"))
  p.add_argument("--count", nargs="+", default=None, metavar="HLO", help=(
      "count these compiled programs instead (HLO text, .gz too: a GPU's evaluation program, "
      "benchmarks/cached_hlo.py --name jit__train_synset_grid), each with --protocol's epochs"))
  p.add_argument("--tiny", action="store_true",
                 help="check the script in seconds: protocol smoke, IPC 2, width 8")
  args = p.parse_args(argv)
  if args.tiny:
    p.set_defaults(protocol="smoke", ipc=2, width=8, min_mb=0.01)
    args = p.parse_args(argv)

  if args.hlo_dir and os.path.exists(args.hlo_dir) and (
      not os.path.isdir(args.hlo_dir) or os.listdir(args.hlo_dir)):
    p.error(f"--hlo-dir: {args.hlo_dir} holds something; give a new path or an empty folder")
  import jax
  import jax.numpy as jnp

  from jaxdd import models, policy, protocols
  from jaxdd import train as train_lib
  points = [x for x in args.policies.split(",") if x]
  for x in points:
    try:
      policy.check(x)
    except ValueError as e:
      p.error(f"--policies: {e}")
  try:
    protocol = protocols.get_protocol(args.protocol)
  except (KeyError, ValueError) as e:
    p.error(f"--protocol: {e}")
  if args.count:
    import gzip
    for path in args.count:
      try:
        with (gzip.open if path.endswith(".gz") else open)(path, "rt") as f:
          text = f.read()
        counts = epoch_counts(text, args.min_mb * 1e6, protocol.num_epochs)
      except (OSError, UnicodeDecodeError, EOFError, ValueError) as e:
        print(f"eval_cost: --count {path}: {e}", file=sys.stderr)
        return 1
      print(json.dumps({"program": path, "protocol": protocol.name, "min_mb": args.min_mb,
                        **counts}), flush=True)
    return 0
  sharding = None
  if args.gpu_target:
    try:
      sharding = gpu_target_sharding(args.gpu_target)
    except RuntimeError as e:
      print(f"eval_cost: --gpu-target {args.gpu_target}: {e}", file=sys.stderr)
      return 1

  def abstract(shape, dtype):
    return jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)
  keys = jax.eval_shape(lambda: jax.random.split(jax.random.key(0), 1).reshape(1, 1))
  keys = abstract(keys.shape, keys.dtype)
  n = 10 * args.ipc
  images = abstract((1, n, 28, 28, 3), jnp.float32)
  labels = abstract((n,), jnp.int32)
  task = train_lib.standard_task(models.ConvNet(num_classes=10, width=args.width))
  for point in points:
    with policy.use(point):
      compiled = train_lib.many._train_synset_grid.lower(
          keys, images, labels, task=task, protocol=protocol, parallel="map",
          pol=policy.current()).compile()
    text = compiled.as_text()
    if args.hlo_dir:
      _write_hlo(args.hlo_dir, point, text)
    print(json.dumps({
        "point": point, "protocol": protocol.name, "ipc": args.ipc, "width": args.width,
        "batch_size": protocol.batch_size, "min_mb": args.min_mb,
        "backend": "cuda (compiled without the GPU)" if sharding is not None
        else jax.default_backend(),
        "device": args.gpu_target if sharding is not None else jax.devices()[0].device_kind,
        **epoch_counts(text, args.min_mb * 1e6, protocol.num_epochs)}), flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
