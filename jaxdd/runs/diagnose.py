"""How the KDE weights find the bias: the work of ``jaxdd diagnose``.

:func:`diagnose_report` trains (or loads) the SupCon surrogate of a biased training set,
weighs it with the KDE at the given settings and over a sweep, prints the tables and writes
``report.json`` and the weight histograms. The ground-truth ``aligned`` flags are used only
for measuring.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any, Sequence

import jax
import numpy as np

from jaxdd import data, plots, surrogate, weighting
from jaxdd._src import io as io_lib

#: The sweep's kernel variances and temperatures (``--sweep-variances``, ``--sweep-temperatures``).
SWEEP_VARIANCES = (0.01, 0.1, 1.0)
SWEEP_TEMPERATURES = (0.1, 0.25, 1.0, 10.0)


def format_weight_rows(rows: Sequence[dict]) -> str:
  """The table of weight reports: one row per KDE setting, its overall numbers.

  >>> o = dict(auroc=0.9, weight_ratio=2.0, conflicting_fraction_uniform=0.05,
  ...          conflicting_fraction_weighted=None)
  >>> row = dict(scope="batch", normalize="softmax", variance=0.01, temperature=1.0,
  ...            report={"overall": o})
  >>> print(format_weight_rows([row]).splitlines()[-1])
  batch softmax   0.01      1 |  0.900           2       0.050          -
  """
  def fmt(v, spec=".3f"):
    return "-" if v is None else format(v, spec)
  head = (f"{'scope':>5} {'norm':>7} {'var':>6} {'T':>6} | {'AUROC':>6} {'w_conf/w_al':>11} "
          f"{'frac before':>11} {'frac after':>10}")
  lines = [head, "-" * len(head)]
  for r in rows:
    o = r["report"]["overall"]
    lines.append(f"{r['scope']:>5} {r['normalize']:>7} {r['variance']:>6g} "
                 f"{r['temperature']:>6g} | "
                 f"{fmt(o['auroc']):>6} {fmt(o['weight_ratio'], '.3g'):>11} "
                 f"{fmt(o['conflicting_fraction_uniform']):>11} "
                 f"{fmt(o['conflicting_fraction_weighted']):>10}")
  return "\n".join(lines)


def _surrogate(args, ds, key: jax.Array):
  """The surrogate's config, artifact, training (or loading) time and KDE embeddings."""
  overrides = {} if args.epochs is None else {"epochs": args.epochs}
  cfg = surrogate.SurrogateConfig.preset(args.preset, **overrides).for_size(len(ds))
  print(f"{args.dataset} train: {len(ds)} images, {int((~ds.aligned).sum())} conflicting "
        f"({args.conflict_ratio:g}); surrogate preset {args.preset!r}: {cfg}", flush=True)
  t0 = time.perf_counter()
  art = surrogate.load_or_train(key, dict(ds.meta), ds.images, ds.labels, config=cfg,
                                use_cache=not args.no_cache, progress=not args.quiet)
  seconds = time.perf_counter() - t0
  print(f"surrogate: {'loaded from cache' if art.from_cache else 'trained'} in "
        f"{seconds:.1f} s ({art.path})", flush=True)
  emb = (np.asarray(art.embeddings) if args.space == "projection" else
         np.asarray(surrogate.embed(art.params, ds.images, config=cfg, space="encoder")))
  return cfg, art, seconds, emb


def _weights(args, ds, emb: np.ndarray, default: weighting.KDEConfig, key: jax.Array):
  """The weight report at ``default``, the sweep's rows and both scopes' histograms to draw
  (``(weights, file name, title)``; drawn once ``report.json``, the folder's record, is
  written: :func:`jaxdd.runs.outputs.check_work_folder`)."""
  common = dict(num_classes=ds.num_classes, batch_size=args.batch_size,
                num_rounds=args.num_rounds)
  w = weighting.scope_weights(key, emb, ds.labels, default, **common)
  report = weighting.weight_report(w, ds.labels, ds.aligned, num_classes=ds.num_classes)
  title = (f"{args.dataset} {args.conflict_ratio:g}: {default.scope} scope, {default.normalize}, "
           f"v={default.variance:g}, T={default.temperature:g}")
  other = default.replace(scope="class" if default.scope == "batch" else "batch")
  w_other = weighting.scope_weights(key, emb, ds.labels, other, **common)
  histograms = [(w, "weights_default.png", title),
                (w_other, f"weights_{other.scope}_scope.png",
                 title.replace(f"{default.scope} scope", f"{other.scope} scope"))]
  rows = [] if args.no_sweep else weighting.weight_sweep(
      key, emb, ds.labels, ds.aligned, variances=args.sweep_variances,
      temperatures=args.sweep_temperatures, progress=not args.quiet, **common)
  return report, rows, histograms


def diagnose_report(args: argparse.Namespace) -> dict[str, Any]:
  """Surrogate, KDE weights at the given settings and a sweep.

  Prints the tables and writes ``report.json``, ``weights_default.png`` and
  the other scope's histogram into ``args.workdir`` (atomically); returns the
  report.

  Args:
    args: the settings, named as the flags of ``jaxdd diagnose``
      (:func:`jaxdd.cli.diagnose.add_diagnose_flags`); all of them but callables are recorded
      in the report.
  """
  t_start = time.perf_counter()
  default = weighting.KDEConfig(args.kde_variance, args.kde_temperature, args.kde_normalize,
                          args.kde_scope)
  ds = data.load(args.dataset, split="train", conflict_ratio=args.conflict_ratio,
                 severity=args.severity, seed=args.seed)
  k_sur, k_diag = jax.random.split(jax.random.key(args.seed))
  cfg, art, surrogate_seconds, emb = _surrogate(args, ds, k_sur)
  t0 = time.perf_counter()
  default_report, rows, histograms = _weights(args, ds, emb, default, k_diag)
  weights_seconds = time.perf_counter() - t0
  settings = dict(scope=default.scope, variance=default.variance,
                  temperature=default.temperature, normalize=default.normalize)
  print("\ndefault settings:")
  print(format_weight_rows([dict(**settings, report=default_report)]))
  if rows:
    print("\nsweep (overall numbers):")
    print(format_weight_rows(rows))
  report = {
      "args": {k: v for k, v in vars(args).items() if not callable(v)},  # not the handler
      "dataset": dict(ds.meta),
      "space": args.space,
      "surrogate": {"config": cfg.to_dict(), "history": art.history, "from_cache": art.from_cache,
                    "cache_path": art.path, "seconds": surrogate_seconds},
      "default": {**settings, "batch_size": args.batch_size, "num_rounds": args.num_rounds,
                  "report": default_report},
      "sweep": rows,
      "seconds": {"surrogate": surrogate_seconds, "weights": weights_seconds,
                  "total": time.perf_counter() - t_start},
  }
  path = os.path.join(args.workdir, "report.json")
  text = json.dumps(io_lib.jsonable(report, nan_to_none=True), indent=2, sort_keys=True,
                    allow_nan=False) + "\n"
  os.makedirs(args.workdir, exist_ok=True)
  io_lib.atomic_write_bytes(path, text.encode())  # first: it marks the folder as a diagnosis's
  for w, name, title in histograms:
    plots.plot_weight_histogram(w, ds.aligned, os.path.join(args.workdir, name), title=title)
  print(f"wrote {path} ({report['seconds']['total']:.1f} s)")
  return report
