"""Baseline: naive numpy Gaussian KDE with chunked BLAS distances.

Measures ``log f(x_i) = log mean_j exp(-|x_i - x_j|^2 / (2 v))`` over all N
points of an N x d set of unit-sphere embeddings (the same quantity as
``jaxdd.weighting.log_density(x, x, variance=v)``), computed in float32 numpy with
rows in chunks of ``--chunk`` (default 2000): each chunk does one
``(chunk, d) @ (d, N)`` BLAS matmul for the distances, then a max-shifted
log-sum-exp over the row. Peak extra memory is O(chunk x N).

This file also holds the helpers shared by the three KDE benchmark scripts
(``kde.py``, ``kde_numpy.py``, ``kde_sklearn.py``): the seeded data set, a
float64 reference for the agreement check, timing, peak RSS and JSON output.
It is a measurement script, not part of the library.

Usage::

  python benchmarks/kde_numpy.py --n 6000 --n 60000 --repeats 3
  python benchmarks/kde_numpy.py --n 2000 --repeats 3   # quick check
  python benchmarks/kde_numpy.py --tiny                 # checks the script in seconds

Every measurement prints one JSON line: median/min/all times (seconds, after
one warm-up run), and the process peak RSS so far (``ru_maxrss``; it only
grows, so run one size per process for a clean per-size memory figure).
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import resource
import sys
import time

import numpy as np


# ---------------------------------------------------------------------------
# Shared helpers (imported by kde.py and kde_sklearn.py)
# ---------------------------------------------------------------------------

def unit_sphere(n: int, d: int, seed: int) -> np.ndarray:
  """The shared seeded data set: n points uniform on the unit sphere, float32."""
  x = np.random.default_rng(seed).standard_normal((n, d), dtype=np.float32)
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def reference_log_density(x: np.ndarray, variance: float,
                          chunk: int = 500) -> np.ndarray:
  """float64 ``log mean_j K(x_i, x_j)`` (no normalising constant), chunked."""
  x = np.asarray(x, np.float64)
  sq = np.einsum("ij,ij->i", x, x)
  out = np.empty(len(x))
  for s in range(0, len(x), chunk):
    xc = x[s:s + chunk]
    d2 = np.maximum(sq[s:s + chunk, None] + sq[None, :] - 2.0 * (xc @ x.T), 0)
    logk = -d2 / (2.0 * variance)
    m = logk.max(axis=1, keepdims=True)
    out[s:s + chunk] = m[:, 0] + np.log(np.exp(logk - m).sum(axis=1))
  return out - math.log(len(x))


def agreement(values, reference) -> dict:
  """Max |a - b| after removing the constant offset mean(a - b)."""
  diff = np.asarray(values, np.float64) - np.asarray(reference, np.float64)
  offset = float(diff.mean())
  return {"check_max_abs_diff": float(np.max(np.abs(diff - offset))),
          "check_offset": offset}


def peak_rss_mb() -> float:
  """Process peak resident set size so far, MB (Linux ru_maxrss is in KiB)."""
  kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  if sys.platform == "darwin":  # bytes there
    kib /= 1024
  return kib / 1024


def time_runs(fn, repeats: int, warmup: int = 1) -> dict:
  """``warmup`` untimed-in-the-median calls (the first is reported as
  ``first_call_s``: compile + run for jax), then ``repeats`` timed calls."""
  first = None
  for _ in range(warmup):
    t0 = time.perf_counter()
    fn()
    if first is None:
      first = time.perf_counter() - t0
  times = []
  for _ in range(max(repeats, 1)):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return {"median_s": float(np.median(times)), "min_s": float(min(times)),
          "times_s": [round(t, 6) for t in times], "first_call_s": first}


def emit(record: dict) -> None:
  record.setdefault("peak_rss_mb", round(peak_rss_mb(), 1))
  record.setdefault("host", platform.node())
  print(json.dumps(record), flush=True)


def common_args(description: str) -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=description)
  p.add_argument("--n", type=int, action="append",
                 help="number of points (repeatable); default per script")
  p.add_argument("--d", type=int, default=128, help="embedding dimension")
  p.add_argument("--variance", type=float, default=0.1, help="kernel variance")
  p.add_argument("--repeats", type=int, default=3,
                 help="timed runs after one warm-up (median reported)")
  p.add_argument("--warmup", type=int, default=1,
                 help="warm-up runs before timing (jax: includes compile)")
  p.add_argument("--seed", type=int, default=0, help="data seed")
  p.add_argument("--check-n", type=int, default=2000,
                 help="size of the shared agreement-check set (0 = skip)")
  p.add_argument("--tiny", action="store_true", help=(
      f"check the script in seconds: N = {TINY_N}, a {TINY_N // 2}-point check, one repeat "
      "without warm-up (flags given explicitly still apply)"))
  return p


#: The one size of ``--tiny``.
TINY_N = 200


def parse(p: argparse.ArgumentParser, argv, **tiny) -> argparse.Namespace:
  """``p``'s arguments; under ``--tiny`` the defaults shrink (plus the script's own ``tiny``)."""
  args = p.parse_args(argv)
  if args.tiny:
    p.set_defaults(repeats=1, warmup=0, check_n=TINY_N // 2, **tiny)
    args = p.parse_args(argv)
  return args


# ---------------------------------------------------------------------------
# The numpy baseline
# ---------------------------------------------------------------------------

def numpy_log_density(x: np.ndarray, variance: float,
                      chunk: int = 2000) -> np.ndarray:
  """float32 chunked BLAS-distance KDE (the baseline that is timed)."""
  x = np.asarray(x, np.float32)
  sq = np.einsum("ij,ij->i", x, x)
  scale = np.float32(-0.5 / variance)
  out = np.empty(len(x), np.float32)
  for s in range(0, len(x), chunk):
    d2 = x[s:s + chunk] @ x.T
    d2 *= -2
    d2 += sq[s:s + chunk, None]
    d2 += sq[None, :]
    np.maximum(d2, 0, out=d2)
    d2 *= scale  # now log k
    m = d2.max(axis=1, keepdims=True)
    d2 -= m
    np.exp(d2, out=d2)
    out[s:s + chunk] = m[:, 0] + np.log(d2.sum(axis=1))
  return out - np.float32(math.log(len(x)))


def main(argv=None) -> None:
  p = common_args(__doc__.splitlines()[0])
  p.add_argument("--chunk", type=int, default=2000, help="rows per chunk")
  args = parse(p, argv, chunk=64)
  sizes = args.n or ([TINY_N] if args.tiny else [6000, 60000])

  if args.check_n:
    xc = unit_sphere(args.check_n, args.d, args.seed)
    got = numpy_log_density(xc, args.variance, args.chunk)
    emit({"bench": "kde_numpy.check", "n": args.check_n, "d": args.d,
          "variance": args.variance, "chunk": args.chunk,
          **agreement(got, reference_log_density(xc, args.variance))})

  for n in sizes:
    x = unit_sphere(n, args.d, args.seed)
    res = time_runs(lambda: numpy_log_density(x, args.variance, args.chunk),
                    args.repeats, args.warmup)
    emit({"bench": "kde_numpy.log_density", "n": n, "d": args.d,
          "variance": args.variance, "chunk": args.chunk,
          "numpy": np.__version__, **res})


if __name__ == "__main__":
  main()
