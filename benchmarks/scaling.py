"""Scaling of the three costly parts: the DM step, the KDE, and evaluation.

Three sweeps, each point in its own process (so its peak RSS is its own), each
point one JSON line appended to ``--out``:

* ``dm``: seconds per DM step (median after warm-up) and peak RSS against the
  IPC (1, 10, 50, 100; 256 real images per class) and against the real batch
  per class (64, 256, 1024; IPC 10), at the reference configuration of
  ``dm_step.py`` (10 classes of 3x28x28, DSA on, ConvNet-3 width 128). Runs
  ``dm_step.py --child``.
* ``kde``: the class-scope density of N embeddings (``jaxdd.weighting.class_log_density``,
  10 equal classes of N/10 unit vectors in d = 128, variance 0.1: what a run
  with ``kde_scope='class'`` computes once) for N = 6,000, 60,000 and a
  synthetic 600,000: seconds (median of ``--kde-repeats`` after one warm-up
  call) and peak RSS, which should grow linearly in N (the blocked kernel
  keeps an O(block^2) tile; the inputs are O(N d)).
* ``eval``: training M networks in one program (``evaluate.py --child``, IPC 10,
  the ``dm`` protocol cut to ``--eval-epochs`` epochs, a 1,000-image test set)
  for M = 1, 2, 5, 10, with ``lax.map`` over the networks (the CPU layout) and
  ``vmap`` (the accelerator layout).

``--report DIR`` then reads ``--out`` and writes ``DIR/scaling.md`` (one table
per sweep) and one PNG per sweep (``dm.png``, ``kde.png``, ``eval.png``).

Usage::

  python benchmarks/scaling.py --out scaling.jsonl                  # all sweeps
  python benchmarks/scaling.py --out scaling.jsonl --sweeps kde
  python benchmarks/scaling.py --out scaling.jsonl --report results/scaling
  python benchmarks/scaling.py --out quick.jsonl --quick --report quick        # minutes
  python benchmarks/scaling.py --out tiny.jsonl --tiny --report tiny          # checks the script
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))

DM_IPC = (1, 10, 50, 100)
DM_REAL = (64, 256, 1024)
KDE_N = (6_000, 60_000, 600_000)
EVAL_MODELS = (1, 2, 5, 10)
EVAL_MODES = ("map", "vmap")


def _env() -> dict[str, str]:
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [os.path.dirname(HERE),
                                                     env.get("PYTHONPATH")]))
  return env


def _run(cmd: list[str], tag: dict) -> dict:
  """Runs one measuring process; returns its last JSON line with ``tag`` merged in."""
  out = subprocess.run(cmd, env=_env(), capture_output=True, text=True)
  lines = [l for l in out.stdout.splitlines() if l.startswith("{")]
  if out.returncode != 0 or not lines:
    return {**tag, "error": (out.stderr.strip().splitlines() or ["no output"])[-1]}
  return {**tag, **json.loads(lines[-1])}


def _kde_child(n: int, repeats: int, d: int = 128, variance: float = 0.1) -> None:
  """The measured KDE process: class-scope log-density of n points in 10 classes."""
  import numpy as np

  from jaxdd import weighting
  rng = np.random.default_rng(0)
  z = rng.standard_normal((n, d), dtype=np.float32)  # float32 at once: no float64 transient
  z /= np.linalg.norm(z, axis=1, keepdims=True)
  labels = np.arange(n) % 10
  rss_inputs = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  times = []
  for _ in range(repeats + 1):  # the first call compiles
    t0 = time.perf_counter()
    out = weighting.class_log_density(z, labels, num_classes=10, variance=variance)
    times.append(time.perf_counter() - t0)
  assert np.isfinite(out).all() and (out <= 1e-6).all()
  med = statistics.median(times[1:])
  print(json.dumps({
      "bench": "kde.class_log_density", "n": n, "d": d, "classes": 10, "variance": variance,
      "first_call_s": round(times[0], 3), "median_s": round(med, 3),
      "times_s": [round(t, 3) for t in times[1:]],
      "pair_gflops": round(2.0 * n * (n / 10) * d / med / 1e9, 1),
      "input_mib": round(z.nbytes / 2**20, 1),
      "peak_rss_after_inputs_mib": round(rss_inputs, 1),
      "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
  }), flush=True)


def sweep_dm(args, emit) -> None:
  ipcs, reals = ((1, 10), (64, 256)) if args.quick else (DM_IPC, DM_REAL)
  points = [(ipc, 256) for ipc in ipcs] + [(10, r) for r in reals if r != 256]
  if args.tiny:
    points = [(1, 4)]
  for ipc, real in points:
    cmd = [sys.executable, os.path.join(HERE, "dm_step.py"), "--child", "--ipc", str(ipc),
           "--real-per-class", str(real), "--steps", str(args.dm_steps),
           "--warmup", "0" if args.tiny else "2",
           "--real-chunk", "auto", "--syn-chunk", "auto", "--policy", "auto"]
    if args.quick or args.tiny:
      cmd += ["--width", "8" if args.tiny else "16"]
    emit(_run(cmd, {"sweep": "dm"}))


def sweep_kde(args, emit) -> None:
  for n in ((200,) if args.tiny else (600, 6_000) if args.quick else KDE_N):
    emit(_run([sys.executable, os.path.abspath(__file__), "--kde-child", str(n),
               "--kde-repeats", str(args.kde_repeats)], {"sweep": "kde"}))


def sweep_eval(args, emit) -> None:
  models = (1,) if args.tiny else (1, 2) if args.quick else EVAL_MODELS
  for mode in EVAL_MODES[:1] if args.tiny else EVAL_MODES:
    for m in models:
      cmd = [sys.executable, os.path.join(HERE, "evaluate.py"), "--child", "--mode", mode,
             "--ipc", "1" if args.tiny else "10", "--protocol", "dm", "--num-models", str(m),
             "--epochs", str(args.eval_epochs), "--test-size", "16" if args.tiny else "1000",
             "--policy", "auto"]
      if args.quick or args.tiny:
        cmd += ["--width", "4" if args.tiny else "8"]
      emit(_run(cmd, {"sweep": "eval"}))


# ---------------------------------------------------------------------------
# Report: tables and plots from the JSON lines
# ---------------------------------------------------------------------------


def _table(header: list[str], rows: list[list]) -> str:
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
  return "\n".join(lines)


def _plot(path: str, title: str, xlabel: str, series: dict[str, list[tuple[float, float]]],
          ylabel: str, series2: dict[str, list[tuple[float, float]]] | None = None,
          ylabel2: str = "", logx: bool = True, logy: bool = False) -> None:
  from jaxdd import plots
  fig = plots.new_figure(figsize=(6.4, 4.0))
  ax = fig.subplots()
  for i, (name, pts) in enumerate(series.items()):
    ax.plot(*zip(*sorted(pts)), marker="o", color=f"C{i}", label=name)
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  if logx:
    ax.set_xscale("log")
  if logy:
    ax.set_yscale("log")
  if series2:
    ax2 = ax.twinx()
    if logy:
      ax2.set_yscale("log")
    for i, (name, pts) in enumerate(series2.items()):  # dashed, in its time series' colour
      ax2.plot(*zip(*sorted(pts)), marker="s", linestyle="--", color=f"C{i}", label=name)
    ax2.set_ylabel(ylabel2)
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=8)
  else:
    ax.legend(fontsize=8)
  ax.set_title(title)
  fig.tight_layout()
  plots.save_figure(fig, path)


def report(rows: list[dict], out_dir: str, source: str) -> str:
  os.makedirs(out_dir, exist_ok=True)
  parts = [f"<!-- written by benchmarks/scaling.py --report from {os.path.basename(source)} -->"]
  ok = [r for r in rows if "error" not in r]
  for r in rows:
    if "error" in r:
      parts.append(f"Failed point ({r.get('sweep')}): {r['error']}")

  dm = [r for r in ok if r["sweep"] == "dm"]
  if dm:
    by_ipc = sorted((r for r in dm if r["real_per_class"] == 256), key=lambda r: r["ipc"])
    by_real = sorted((r for r in dm if r["ipc"] == 10), key=lambda r: r["real_per_class"])
    parts.append("DM step against IPC (256 real images per class) and against the real batch "
                 "(IPC 10):\n\n" + _table(
                     ["IPC", "real / class", "s / step (median)", "min–max", "peak RSS MiB",
                      "GFLOP / step", "GFLOP/s"],
                     [[r["ipc"], r["real_per_class"], r["step_s_median"],
                       f"{r['step_s_min']}–{r['step_s_max']}", r["peak_rss_mib"],
                       round(r["network_gflop_per_step"], 1), r["gflops_per_s"]]
                      for r in by_ipc + [r for r in by_real if r["real_per_class"] != 256]]))
    _plot(os.path.join(out_dir, "dm.png"), "DM step", "IPC / real images per class",
          {"s/step vs IPC": [(r["ipc"], r["step_s_median"]) for r in by_ipc],
           "s/step vs real batch": [(r["real_per_class"], r["step_s_median"]) for r in by_real]},
          "seconds per step",
          {"peak RSS vs IPC (MiB)": [(r["ipc"], r["peak_rss_mib"]) for r in by_ipc],
           "peak RSS vs real batch (MiB)": [(r["real_per_class"], r["peak_rss_mib"])
                                            for r in by_real]}, "peak RSS (MiB)")

  kd = sorted((r for r in ok if r["sweep"] == "kde"), key=lambda r: r["n"])
  if kd:
    parts.append("KDE, class scope (10 classes of N/10, d = 128):\n\n" + _table(
        ["N", "s (median)", "first call s", "pair GFLOP/s", "inputs MiB", "peak RSS MiB",
         "peak RSS − inputs-only RSS MiB"],
        [[f"{r['n']:,}", r["median_s"], r["first_call_s"], r["pair_gflops"], r["input_mib"],
          r["peak_rss_mib"], round(r["peak_rss_mib"] - r["peak_rss_after_inputs_mib"], 1)]
         for r in kd]))
    # log-log: time grows as N^2 (classes of N/10 points), memory linearly
    _plot(os.path.join(out_dir, "kde.png"), "KDE (class scope), log-log", "N",
          {"seconds": [(r["n"], r["median_s"]) for r in kd]}, "seconds",
          {"peak RSS (MiB)": [(r["n"], r["peak_rss_mib"]) for r in kd]}, "peak RSS (MiB)",
          logy=True)

  ev = [r for r in ok if r["sweep"] == "eval"]
  if ev:
    ev = sorted(ev, key=lambda r: (r["mode"], r["num_models"]))
    parts.append(f"Evaluation, M networks in one program (IPC 10, {ev[0]['epochs_trained']} "
                 "epochs, 1,000 test images):\n\n" + _table(
                     ["layout", "networks", "compile s", "train s", "train s / network",
                      "test s", "peak RSS MiB"],
                     [[r["mode"], r["num_models"], r["compile_train_s"], r["train_s"],
                       r["train_s_per_model"], r["test_s"], r["peak_rss_mib"]] for r in ev]))
    _plot(os.path.join(out_dir, "eval.png"), "Evaluation: networks in one program",
          "networks", {f"train s ({m})": [(r["num_models"], r["train_s"]) for r in ev
                                          if r["mode"] == m] for m in EVAL_MODES},
          "train seconds",
          {f"peak RSS MiB ({m})": [(r["num_models"], r["peak_rss_mib"]) for r in ev
                                   if r["mode"] == m] for m in EVAL_MODES}, "peak RSS (MiB)",
          logx=False)
  text = "\n\n".join(parts) + "\n"
  from jaxdd._src.io import atomic_write_bytes
  atomic_write_bytes(os.path.join(out_dir, "scaling.md"), text.encode())
  return text


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--out", help="JSON-lines file the points are appended to (required)")
  p.add_argument("--sweeps", nargs="+", default=["dm", "kde", "eval"],
                 choices=["dm", "kde", "eval"])
  p.add_argument("--dm-steps", type=int, default=6)
  p.add_argument("--kde-repeats", type=int, default=2)
  p.add_argument("--eval-epochs", type=int, default=10)
  p.add_argument("--quick", action="store_true", help="small sizes (a first look in minutes)")
  p.add_argument("--tiny", action="store_true", help=(
      "check the script in seconds: one point per sweep at the smallest sizes, one repeat "
      "(flags given explicitly still apply)"))
  p.add_argument("--report", default=None, help="write tables and PNGs for --out into this dir")
  p.add_argument("--no-measure", action="store_true", help="only --report")
  p.add_argument("--kde-child", type=int, default=None, help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args.tiny:
    p.set_defaults(dm_steps=1, kde_repeats=1, eval_epochs=1)
    args = p.parse_args(argv)
  if args.kde_child is not None:
    _kde_child(args.kde_child, args.kde_repeats)
    return
  if not args.out:
    p.error("--out is required: the JSON-lines file the points go to (and --report reads)")
  if not args.no_measure:
    def emit(row: dict) -> None:
      print(json.dumps(row), flush=True)
      with open(args.out, "a") as f:
        f.write(json.dumps(row) + "\n")
    for name in args.sweeps:
      {"dm": sweep_dm, "kde": sweep_kde, "eval": sweep_eval}[name](args, emit)
  if args.report:
    with open(args.out) as f:
      rows = [json.loads(l) for l in f if l.strip()]
    print(report(rows, args.report, args.out))


if __name__ == "__main__":
  main()
