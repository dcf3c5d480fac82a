"""jaxdd.weighting timings: class-scope log-density and the per-batch weights path.

Measures, on N x d unit-sphere embeddings (the data set shared with
``kde_numpy.py`` and ``kde_sklearn.py``, same seed -> same points):

* ``kde.log_density``: ``jaxdd.weighting.log_density(x, x, variance=v)`` over a
  whole class (default N = 6,000 and 60,000, d = 128, v = 0.1): the
  ``scope='class'`` precomputation. Blocked with a streaming log-sum-exp, so
  memory is O(block x support_block) (numpy
  0.20 s / 31 s and a 2000-row ``lax.map`` 30 s at N = 60,000 for reference).
* ``kde.weights_batch``: ``jaxdd.weighting.weights`` on one sampled batch
  (default 256 x 128, ``scope='batch'``), jitted, and ``kde.weights_classes``:
  the same vmapped over ``--classes`` batches at once, as the DM step does.

Before timing, ``kde.check`` compares ``log_density`` with a float64 numpy
reference on a shared ``--check-n`` set (max |diff| after removing the mean
offset, which is ~0 here since both omit the normalising constant).

Usage::

  python benchmarks/kde.py                              # N = 6000 and 60000
  python benchmarks/kde.py --n 2000 --repeats 3         # quick check
  python benchmarks/kde.py --tiny                       # checks the script in seconds
  python benchmarks/kde.py --n 60000 --block 2048 --support-block 2048
  python benchmarks/kde.py --xla-flags=--xla_cpu_use_onednn=true
  python benchmarks/kde.py --n 600000 --queries 12000 --batch 0 --check-n 0
                                                        # N = 600k's memory,
                                                        # 2 % of its time
  python benchmarks/kde.py --sharded                    # split queries over
                                                        # all local devices

Each measurement prints one JSON line with median/min/all times (seconds,
after ``--warmup`` runs; ``first_call_s`` includes compilation), the achieved
distance-matmul GFLOP/s, and the process peak RSS so far (``ru_maxrss``: it
only grows, so run one size per process for clean per-size memory).
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# pylint: disable=wrong-import-position
from kde_numpy import (TINY_N, agreement, common_args, emit, parse,  # noqa: E402
                       reference_log_density, time_runs, unit_sphere)


def main(argv=None) -> None:
  p = common_args(__doc__.splitlines()[0])
  p.add_argument("--block", type=int, default=1024,
                 help="query rows per tile (block_size)")
  p.add_argument("--support-block", type=int, default=None,
                 help="support rows per tile (default: --block; N gives the "
                      "O(block x N) variant)")
  p.add_argument("--batch", type=int, default=256,
                 help="rows of the per-batch weights path (0 = skip)")
  p.add_argument("--classes", type=int, default=10,
                 help="batches vmapped together in weights_classes (0 = skip)")
  p.add_argument("--temperature", type=float, default=1.0)
  p.add_argument("--normalize", default="softmax", choices=["softmax", "power"])
  p.add_argument("--batch-calls", type=int, default=20,
                 help="calls per timed run of the (ms-scale) batch path")
  p.add_argument("--matmul", default="highest", choices=["highest", "default", "bfloat16"],
                 help="precision of the cross term (kde.log_density's matmul)")
  p.add_argument("--queries", type=int, default=None,
                 help="evaluate only the first Q points against all N (time ~ Q N; the "
                      "memory of the full N x N run, which the blocked kernel keeps "
                      "O(block^2) + the inputs; default: all N)")
  p.add_argument("--sharded", action="store_true",
                 help="use log_density_sharded over all local devices")
  p.add_argument("--xla-flags", default=None,
                 help="value for XLA_FLAGS, set before jax is imported")
  args = parse(p, argv, block=64, batch=16, classes=2, batch_calls=2)
  sizes = args.n or ([TINY_N] if args.tiny else [6000, 60000])
  if args.xla_flags is not None:
    os.environ["XLA_FLAGS"] = args.xla_flags

  # pylint: disable=import-outside-toplevel
  import functools

  import jax
  import jax.numpy as jnp
  import numpy as np

  from jaxdd import weighting

  meta = {"d": args.d, "variance": args.variance, "block": args.block,
          "support_block": args.support_block or args.block,
          "sharded": args.sharded, "matmul": args.matmul, "jax": jax.__version__,
          "backend": jax.default_backend(), "devices": jax.device_count(),
          "xla_flags": os.environ.get("XLA_FLAGS", "")}

  if args.sharded:
    mesh = jax.make_mesh((jax.device_count(),), ("data",))
    density = functools.partial(weighting.log_density_sharded, mesh=mesh)
  else:
    density = weighting.log_density

  def run_density(x, queries=None):
    return density(x if queries is None else queries, x, variance=args.variance,
                   block_size=args.block,
                   support_block_size=args.support_block,
                   matmul=args.matmul).block_until_ready()

  if args.check_n:
    xc = unit_sphere(args.check_n, args.d, args.seed)
    got = np.asarray(run_density(jnp.asarray(xc)))
    emit({"bench": "kde.check", "n": args.check_n, **meta,
          **agreement(got, reference_log_density(xc, args.variance))})

  for n in sizes:
    x = jnp.asarray(unit_sphere(n, args.d, args.seed))
    q = None if args.queries is None else x[:min(args.queries, n)]
    res = time_runs(lambda: run_density(x, q), args.repeats, args.warmup)
    nq = n if q is None else q.shape[0]
    gflops = 2.0 * nq * n * args.d / res["median_s"] / 1e9
    emit({"bench": "kde.log_density", "n": n, "queries": nq, **meta, **res,
          "matmul_gflops": round(gflops, 1),
          "full_n_estimate_s": round(res["median_s"] * n / nq, 1)})
    x = q = None  # free before the next size

  if args.batch:
    weights = jax.jit(functools.partial(
        weighting.weights, variance=args.variance, temperature=args.temperature,
        normalize=args.normalize))
    cases = [("kde.weights_batch",
              unit_sphere(args.batch, args.d, args.seed + 1), weights)]
    if args.classes:
      xs = unit_sphere(args.classes * args.batch, args.d, args.seed + 2)
      cases.append(("kde.weights_classes",
                    xs.reshape(args.classes, args.batch, args.d),
                    jax.jit(jax.vmap(weights))))
    for name, data, fn in cases:
      data = jnp.asarray(data)

      def many(fn=fn, data=data):
        for _ in range(args.batch_calls):
          out = fn(data)
        out.block_until_ready()

      res = time_runs(many, args.repeats, args.warmup)
      # Per-call figures; first_run_s is the whole first run (compile + all
      # calls of that run).
      emit({"bench": name, "batch": args.batch,
            "classes": args.classes if name.endswith("classes") else 1,
            "normalize": args.normalize, "temperature": args.temperature,
            **meta, "median_s": res["median_s"] / args.batch_calls,
            "min_s": res["min_s"] / args.batch_calls,
            "first_run_s": res["first_call_s"],
            "calls_per_run": args.batch_calls,
            "times_per_run_s": res["times_s"]})


if __name__ == "__main__":
  main()
