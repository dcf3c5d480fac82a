"""Baseline: scikit-learn ``KernelDensity`` on the same unit-sphere embeddings.

``KernelDensity(bandwidth=sqrt(v), kernel='gaussian').fit(x).score_samples(x)``
in float64 (sklearn's tree-based evaluation, exact with the default
``rtol=0``). sklearn returns a *normalised* log-density, which differs from
``jaxdd.weighting.log_density``'s log mean kernel value by the constant
``-(d / 2) log(2 pi v)``; the agreement check removes the offset and prints
both the observed and the expected one.

Default is N = 6,000 only: at N = 60,000 one run takes ~26 minutes on the
development CPU (docs/results/speed-kde-scaling.md), so ask for it explicitly with
``--n 60000 --warmup 0 --repeats 1`` (sklearn compiles nothing, so the
warm-up only matters for caches). A measurement script, not a library dependency
(scikit-learn is present through mlxtend).

Usage::

  python benchmarks/kde_sklearn.py                      # N = 6000
  python benchmarks/kde_sklearn.py --n 2000 --repeats 3 # quick check
  python benchmarks/kde_sklearn.py --tiny               # checks the script in seconds
"""
from __future__ import annotations

import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# pylint: disable=wrong-import-position
from kde_numpy import (TINY_N, agreement, common_args, emit, parse,  # noqa: E402
                       reference_log_density, time_runs, unit_sphere)


def sklearn_log_density(x, variance: float, algorithm: str = "auto"):
  from sklearn.neighbors import KernelDensity  # pylint: disable=import-outside-toplevel
  kde = KernelDensity(bandwidth=math.sqrt(variance), kernel="gaussian",
                      algorithm=algorithm)
  return kde.fit(x).score_samples(x)


def main(argv=None) -> None:
  p = common_args(__doc__.splitlines()[0])
  p.add_argument("--algorithm", default="auto",
                 help="KernelDensity tree: auto, kd_tree or ball_tree")
  args = parse(p, argv)
  sizes = args.n or ([TINY_N] if args.tiny else [6000])
  import sklearn  # pylint: disable=import-outside-toplevel
  expected_offset = -0.5 * args.d * math.log(2 * math.pi * args.variance)

  if args.check_n:
    xc = unit_sphere(args.check_n, args.d, args.seed)
    got = sklearn_log_density(xc, args.variance, args.algorithm)
    emit({"bench": "kde_sklearn.check", "n": args.check_n, "d": args.d,
          "variance": args.variance, "expected_offset": expected_offset,
          **agreement(got, reference_log_density(xc, args.variance))})

  for n in sizes:
    x = unit_sphere(n, args.d, args.seed)
    res = time_runs(
        lambda: sklearn_log_density(x, args.variance, args.algorithm),
        args.repeats, args.warmup)
    emit({"bench": "kde_sklearn.score_samples", "n": n, "d": args.d,
          "variance": args.variance, "algorithm": args.algorithm,
          "sklearn": sklearn.__version__, **res})


if __name__ == "__main__":
  main()
