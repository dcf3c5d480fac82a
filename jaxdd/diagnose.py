"""Do the KDE weights favour bias-conflicting samples? Surrogate + weights + report.

Loads a biased training set, trains (or loads from the cache) the SupCon
surrogate, computes the KDE weights at the default settings and over a sweep
(kernel variance x temperature x normalisation x scope), prints a table and
writes ``report.json`` and histogram PNGs into ``--workdir``. The flags are
named as in ``jaxdd distill`` (``--kde-variance``, ``--kde-temperature``,
``--kde-normalize``, ``--kde-scope``, ``--workdir``); the old names
(``--variance``, ``--temperature``, ``--normalize``, ``--scope``, ``--out``) are
accepted as deprecated aliases.

COMMAND (embedded CMNIST 5 %, CPU preset; a few minutes on 2 CPU cores):

  jaxdd diagnose --dataset cmnist --conflict-ratio 0.05 --preset cpu --workdir runs/diag

Outputs (all written atomically):
  report.json            settings, surrogate history, default report, sweep rows
  weights_default.png    histogram of the default weights, aligned vs conflicting
  weights_class_scope.png  the same settings with the whole-class KDE

The ground-truth ``aligned`` flags are used only for measuring.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from typing import Any, Sequence

import jax
import numpy as np

from jaxdd import data, diagnostics, distill, surrogate
from jaxdd._src.io import atomic_write_bytes

DEFAULT_VARIANCES = (0.01, 0.1, 1.0)
_KDE = distill.KDEConfig()
DEFAULT_TEMPERATURES = (0.1, 0.25, 1.0, 10.0)


def _floats(text: str) -> tuple[float, ...]:
  try:
    vals = tuple(float(v) for v in text.split(",") if v.strip())
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}")
  if not vals or any(not (math.isfinite(v) and v > 0) for v in vals):
    raise argparse.ArgumentTypeError(f"expected positive numbers, got {text!r}")
  return vals


def build_parser() -> argparse.ArgumentParser:
  """The argument parser (also used by the ``jaxdd`` CLI)."""
  p = argparse.ArgumentParser(
      prog="jaxdd diagnose",
      description="Train/load the SupCon surrogate and check whether the KDE weights put more "
                  "weight on bias-conflicting samples (AUROC, weight fractions, histograms).")
  p.add_argument("--dataset", default="cmnist", help="dataset name (jaxdd.data.load), default cmnist")
  p.add_argument("--conflict-ratio", type=float, default=0.05,
                 help="fraction of bias-conflicting training samples, e.g. 0.05")
  p.add_argument("--severity", type=int, default=None, help="bias severity (default: dataset's)")
  p.add_argument("--seed", type=int, default=0, help="data and surrogate seed")
  p.add_argument("--preset", default="cpu", choices=("paper", "cpu", "smoke"),
                 help="surrogate scale (SurrogateConfig.preset)")
  p.add_argument("--epochs", type=int, default=None, help="override the preset's surrogate epochs")
  p.add_argument("--space", default="projection", choices=("projection", "encoder"),
                 help="embedding space for the KDE (the paper: projection)")
  # The defaults are the library's (distill.KDEConfig), kept by the validation selection
  # (RESULTS.md §1).
  p.add_argument("--kde-variance", dest="kde_variance", type=float,
                 default=_KDE.variance, help=f"kernel variance (default {_KDE.variance})")
  p.add_argument("--kde-temperature", dest="kde_temperature", type=float,
                 default=_KDE.temperature,
                 help=f"normalisation temperature (default {_KDE.temperature})")
  p.add_argument("--kde-normalize", dest="kde_normalize", default=_KDE.normalize,
                 choices=("softmax", "power"),
                 help=f"normalisation of the inverse density (default {_KDE.normalize})")
  p.add_argument("--kde-scope", dest="kde_scope", default="batch",
                 choices=("batch", "class"),
                 help="density inside sampled per-class batches (paper; default) or over the "
                      "whole class")
  p.add_argument("--batch-size", type=int, default=256, help="real samples per class batch (DM: 256)")
  p.add_argument("--num-rounds", type=int, default=20, help="batch-scope rounds per sample")
  p.add_argument("--sweep-variances", type=_floats, default=DEFAULT_VARIANCES,
                 help="comma-separated kernel variances for the sweep")
  p.add_argument("--sweep-temperatures", type=_floats, default=DEFAULT_TEMPERATURES,
                 help="comma-separated temperatures for the sweep")
  p.add_argument("--no-sweep", action="store_true", help="only the default settings")
  p.add_argument("--no-cache", action="store_true", help="do not read or write the surrogate cache")
  p.add_argument("--workdir", dest="workdir", default="runs/diag",
                 help="output directory (default runs/diag)")
  p.add_argument("--quiet", action="store_true", help="no progress bars or progress log lines")
  p.add_argument("--no-compile-cache", action="store_true",
                 help="(jaxdd CLI) do not use JAX's persistent compilation cache")
  # Deprecated spellings (before the flags were named as in `jaxdd distill`): they still
  # parse, hidden from --help.
  for old, dest, typ in (("--variance", "kde_variance", float), ("--temperature", "kde_temperature", float),
                         ("--normalize", "kde_normalize", str), ("--scope", "kde_scope", str),
                         ("--out", "workdir", str)):
    p.add_argument(old, dest=dest, type=typ, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
  return p


def _json_safe(obj: Any) -> Any:
  if isinstance(obj, dict):
    return {str(k): _json_safe(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [_json_safe(v) for v in obj]
  if isinstance(obj, np.generic):
    obj = obj.item()
  if isinstance(obj, float) and not math.isfinite(obj):
    return None
  return obj


def _write_json(path: str, obj: Any) -> None:
  text = json.dumps(_json_safe(obj), indent=2, sort_keys=True, allow_nan=False) + "\n"
  atomic_write_bytes(path, text.encode())


def compute_weights(key: jax.Array, embeddings: np.ndarray, labels: np.ndarray, *, scope: str,
                    variance: float, temperature: float, normalize: str, num_classes: int,
                    batch_size: int, num_rounds: int) -> np.ndarray:
  """Weights at one setting, batch or class scope (see jaxdd.diagnostics)."""
  if scope == "class":
    return diagnostics.class_scope_weights(embeddings, labels, variance=variance,
                                           temperature=temperature, normalize=normalize,
                                           num_classes=num_classes)
  return diagnostics.batch_scope_weights(key, embeddings, labels, batch_size=batch_size,
                                         variance=variance, temperature=temperature,
                                         normalize=normalize, num_classes=num_classes,
                                         num_rounds=num_rounds)


def _fmt(v: Any, spec: str = ".3f") -> str:
  return "-" if v is None else format(v, spec)


def format_table(rows: Sequence[dict]) -> str:
  """Plain-text table of sweep rows."""
  head = (f"{'scope':>5} {'norm':>7} {'var':>6} {'T':>6} | {'AUROC':>6} {'w_conf/w_al':>11} "
          f"{'frac before':>11} {'frac after':>10}")
  lines = [head, "-" * len(head)]
  for r in rows:
    o = r["report"]["overall"]
    lines.append(f"{r['scope']:>5} {r['normalize']:>7} {r['variance']:>6g} {r['temperature']:>6g} | "
                 f"{_fmt(o['auroc']):>6} {_fmt(o['weight_ratio'], '.3g'):>11} "
                 f"{_fmt(o['conflicting_fraction_uniform']):>11} "
                 f"{_fmt(o['conflicting_fraction_weighted']):>10}")
  return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict:
  """Run the diagnosis; returns the report dict (also written to ``--out``/report.json)."""
  args = build_parser().parse_args(argv)
  t_start = time.perf_counter()
  ds = data.load(args.dataset, split="train", conflict_ratio=args.conflict_ratio,
                 severity=args.severity, seed=args.seed)
  num_classes = ds.num_classes
  overrides = {} if args.epochs is None else {"epochs": args.epochs}
  cfg = surrogate.SurrogateConfig.preset(args.preset, **overrides)
  key = jax.random.key(args.seed)
  k_sur, k_diag = jax.random.split(key)

  print(f"{args.dataset} train: {len(ds)} images, {int((~ds.aligned).sum())} conflicting "
        f"({args.conflict_ratio:g}); surrogate preset {args.preset!r}: {cfg}", flush=True)
  t0 = time.perf_counter()
  art = surrogate.load_or_train(k_sur, dict(ds.meta), ds.images, ds.labels, config=cfg,
                                  use_cache=not args.no_cache, progress=not args.quiet)
  surrogate_seconds = time.perf_counter() - t0
  print(f"surrogate: {'loaded from cache' if art.from_cache else 'trained'} in "
        f"{surrogate_seconds:.1f} s ({art.path})", flush=True)
  if args.space == "projection":
    emb = np.asarray(art.embeddings)
  else:
    emb = np.asarray(surrogate.embed(art.params, ds.images, config=cfg, space="encoder"))

  common = dict(num_classes=num_classes, batch_size=args.batch_size, num_rounds=args.num_rounds)
  default = dict(scope=args.kde_scope, variance=args.kde_variance,
                 temperature=args.kde_temperature, normalize=args.kde_normalize)
  t0 = time.perf_counter()
  w = compute_weights(k_diag, emb, ds.labels, **default, **common)
  default_report = diagnostics.weight_report(w, ds.labels, ds.aligned, num_classes=num_classes)
  os.makedirs(args.workdir, exist_ok=True)
  title = (f"{args.dataset} {args.conflict_ratio:g}: {args.kde_scope} scope, {args.kde_normalize}, "
           f"v={args.kde_variance:g}, T={args.kde_temperature:g}")
  diagnostics.plot_weight_histogram(w, ds.aligned, os.path.join(args.workdir, "weights_default.png"),
                                    title=title)
  other_scope = "class" if args.kde_scope == "batch" else "batch"
  w_other = compute_weights(k_diag, emb, ds.labels, **{**default, "scope": other_scope}, **common)
  diagnostics.plot_weight_histogram(w_other, ds.aligned,
                                    os.path.join(args.workdir, f"weights_{other_scope}_scope.png"),
                                    title=title.replace(f"{args.kde_scope} scope", f"{other_scope} scope"))

  rows = []
  if not args.no_sweep:
    for scope in ("batch", "class"):
      for normalize in ("power", "softmax"):
        for variance in args.sweep_variances:
          for temperature in args.sweep_temperatures:
            ws = compute_weights(k_diag, emb, ds.labels, scope=scope, variance=variance,
                                 temperature=temperature, normalize=normalize, **common)
            rows.append(dict(scope=scope, normalize=normalize, variance=variance,
                             temperature=temperature,
                             report=diagnostics.weight_report(ws, ds.labels, ds.aligned,
                                                              num_classes=num_classes)))
  weights_seconds = time.perf_counter() - t0

  print("\ndefault settings:")
  print(format_table([dict(**default, report=default_report)]))
  if rows:
    print("\nsweep (overall numbers):")
    print(format_table(rows))
  o = default_report["overall"]
  print(f"\nmean weight conflicting {_fmt(o['mean_weight_conflicting'], '.3g')} vs aligned "
        f"{_fmt(o['mean_weight_aligned'], '.3g')}; weight on conflicting "
        f"{_fmt(o['conflicting_fraction_uniform'])} -> {_fmt(o['conflicting_fraction_weighted'])}; "
        f"AUROC {_fmt(o['auroc'])}")

  report = {
      "args": vars(args),
      "dataset": dict(ds.meta),
      "space": args.space,
      "surrogate": {"config": cfg.to_dict(), "history": art.history, "from_cache": art.from_cache,
                    "cache_path": art.path, "seconds": surrogate_seconds},
      "default": {**default, "batch_size": args.batch_size, "num_rounds": args.num_rounds,
                  "report": default_report},
      "sweep": rows,
      "seconds": {"surrogate": surrogate_seconds, "weights": weights_seconds,
                  "total": time.perf_counter() - t_start},
  }
  _write_json(os.path.join(args.workdir, "report.json"), report)
  print(f"wrote {os.path.join(args.workdir, 'report.json')} ({report['seconds']['total']:.1f} s)")
  return report


if __name__ == "__main__":
  main(sys.argv[1:])
