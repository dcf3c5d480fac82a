"""Do the weights of a bias-amplified classifier find the bias? Four weightings on four datasets.

For each dataset the weights a run would use are computed by the library's run stages
(:func:`jaxdd.runs.weight_diagnostics`, what a run writes to ``weights.json``) under
``--weighting gce``, ``--weighting jtt``, the paper's ``--weighting kde`` (the SupCon surrogate's
embedding) and ``--weighting kde --kde-features biased`` (the KDE in the bias-amplified
classifier's penultimate features), and judged against the TRUE bias labels, for this
measurement only: the AUROC of the weights (conflicting against aligned images), the share of
the total weight on the conflicting images and its smallest and largest share in one class
(each class's weights sum to 1). The classifier's key follows the run's seed
(:func:`jaxdd.runs.biased_key`), so ``--seeds 0,1,2`` gives three classifiers and the ± is their
standard deviation; the surrogate is the run's at the first seed (one surrogate, no ±). The
AUROC of the classifier's own difficulty and the precision and recall of its error set are in
the notes.

With ``--select`` it measures instead how the classifier's settings were chosen: each setting of
:data:`GRID` trains a classifier on the training split (key 0) and is judged on the held-out
**validation** split (its own bias labels, for this choice only): the AUROC of the difficulty
``-log p_b(y|x)`` (conflicting against aligned images), the precision and recall of the error
set, the training accuracy and the seconds (training; then reading all training images).

  python experiments/biased_weights.py --out results/weights/biased-classifier.json
  python experiments/biased_weights.py --select --out results/weights/biased-selection.json
  python experiments/biased_weights.py --tiny --out runs/biased-tiny.json   # seconds
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import jax
import numpy as np

from jaxdd import debias, runs, synset, weighting
from jaxdd.config import get_config
from jaxdd.runs import version

#: row -> (label, RunConfig overrides).
ROWS = {"gce": ("`gce`: the classifier's cross-entropy, floor 0.1", dict(weighting="gce")),
        "jtt": ("`jtt`: its error set, balanced", dict(weighting="jtt")),
        "kde": ("`kde`: KDE in the surrogate's embedding (the paper's)", dict(weighting="kde")),
        "kde_biased": ("`kde --kde-features biased`: KDE in the classifier's features",
                       dict(weighting="kde", kde_features="biased"))}
#: dataset:ratio pairs measured by default.
DATASETS = "cmnist:0.05,cmnist_bg:0.1,cmnist_fg:0.1,bg_fmnist:0.05"
NAMES = {"cmnist": "CMNIST", "cmnist_bg": "CMNIST-BG", "cmnist_fg": "C-MNIST-FG",
         "bg_fmnist": "BG-FMNIST"}


#: The settings --select tries: the defaults, then one change at a time.
GRID = ({}, {"lr": 0.005}, {"lr": 0.05}, {"steps": 100}, {"steps": 400}, {"width": 16},
        {"width": 32}, {"batch_size": 256}, {"q": 0.0})
SELECT_DATASETS = "cmnist:0.05,cmnist_bg:0.1"


def select(args) -> dict:
  """The --select table: each setting of :data:`GRID` judged on the validation split."""
  rows = []
  grid = GRID[:2] if args.tiny else GRID
  for item in args.datasets.split(","):
    name, ratio = item.split(":")
    run_data = runs.RunData(get_config(args.preset, dataset=name, conflict_ratio=float(ratio),
                                       **({} if args.source is None else
                                          {"source": args.source})))
    train, valid, nc = run_data.train, run_data.valid, run_data.num_classes
    for change in grid:
      cfg = debias.BiasedConfig(**{**({"steps": 10} if args.tiny else {}), **change})
      t0 = time.perf_counter()
      variables, history = debias.train_biased(jax.random.key(0), train.images, train.labels,
                                               num_classes=nc, config=cfg)
      t1 = time.perf_counter()
      debias.biased_outputs(variables, train.images, train.labels, num_classes=nc, config=cfg)
      t2 = time.perf_counter()
      out = debias.biased_outputs(variables, valid.images, valid.labels, num_classes=nc,
                                  config=cfg)
      conflicting = ~np.asarray(valid.aligned, bool)
      err = out.pred != np.asarray(valid.labels)
      res = {"dataset": name, "change": change,
             "auroc": weighting.auroc(-out.log_p_label, conflicting),
             "precision": float(conflicting[err].mean()) if err.any() else float("nan"),
             "recall": float(err[conflicting].mean()), "accuracy": history["accuracy"][-1],
             "train_seconds": t1 - t0, "read_seconds": t2 - t1}
      print(json.dumps(res), flush=True)
      rows.append([f"{NAMES.get(name, name)} {100 * float(ratio):g} %",
                   ", ".join(f"{k} {v:g}" for k, v in change.items()) or "the defaults",
                   f"{res['auroc']:.4f}", f"{res['precision']:.2f}", f"{res['recall']:.2f}",
                   f"{res['accuracy']:.2f}", f"{res['train_seconds']:.0f} + {res['read_seconds']:.0f}"])
  base = debias.BiasedConfig()
  return {"caption": (f"Choosing the bias-amplified classifier's settings on the validation "
                      f"split: a classifier trained on the training split (key 0) from the "
                      f"defaults (steps {base.steps}, batch {base.batch_size}, width "
                      f"{base.width}, lr {base.lr:g}, q {base.q:g}, instance norm) and one "
                      f"change at a time, judged on the held-out validation images."),
          "columns": ["dataset", "setting", "AUROC (validation)", "error-set precision",
                      "error-set recall", "training accuracy", "seconds (train + read)"],
          "rows": rows}


def measure(cfg, run_data) -> dict:
  """The numbers of one run's weights (its weights.json), and the seconds they took."""
  t0 = time.perf_counter()
  emb = None
  if cfg.weighting in ("kde", "fairdd_pseudo"):
    emb = runs.weighting_embeddings(cfg, run_data, runs.run_keys(cfg)[0], progress=False)
  report = runs.weight_diagnostics(cfg, run_data, emb, runs.run_keys(cfg)[3])
  shares = [c["conflicting_fraction_weighted"] for c in report["per_class"]]
  out = {"auroc": report["overall"]["auroc"],
         "share": report["overall"]["conflicting_fraction_weighted"],
         "uniform": report["overall"]["conflicting_fraction_uniform"],
         "class_min": min(shares), "class_max": max(shares),
         "seconds": time.perf_counter() - t0}
  if "biased_network" in report:
    out["network"] = report["biased_network"]
  return out


def _pm(values, fmt: str) -> str:
  v = np.asarray(values, np.float64)
  return format(v.mean(), fmt) + ("" if v.size < 2 else " ± " + format(v.std(ddof=1), fmt))


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--datasets", default=DATASETS, help="dataset:conflict_ratio, comma-separated")
  p.add_argument("--preset", default="cpu-paper")
  p.add_argument("--source", default="full")
  p.add_argument("--seeds", default="0,1,2")
  p.add_argument("--rows", default=",".join(ROWS))
  p.add_argument("--select", action="store_true",
                 help=f"the validation table of the classifier's settings (default datasets "
                      f"{SELECT_DATASETS})")
  p.add_argument("--out", required=True)
  p.add_argument("--tiny", action="store_true", help=(
      "check the script in seconds: the smoke preset on the embedded CMNIST, seeds 0 and 1, "
      "a 10-step classifier"))
  args = p.parse_args(argv)
  extra = {}
  if args.select and args.datasets == DATASETS:
    args.datasets = SELECT_DATASETS
  if args.tiny:
    args.preset, args.source, args.datasets, args.seeds = "smoke", None, "cmnist:0.05", "0,1"
    extra = dict(biased_steps=10)
  command = (f"python experiments/biased_weights.py {'--select ' if args.select else ''}"
             f"--out {args.out}{' --tiny' if args.tiny else ''}")
  provenance = {"date": time.strftime("%Y-%m-%d"), "commit": version.short_commit(),
                "machine": version.machine(), "command": command}
  if args.select:
    synset.atomic_write_json(args.out, {**select(args), "notes": [
        "Seconds on the shared 2-core machine (other work ran beside it): training, including "
        "its compilation, then the outputs of every training image."], **provenance})
    return 0
  seeds = [int(s) for s in args.seeds.split(",")]
  rows, notes = [], []
  for item in args.datasets.split(","):
    name, ratio = item.split(":")
    base = get_config(args.preset, dataset=name, conflict_ratio=float(ratio),
                      **({} if args.source is None else {"source": args.source}))
    run_data = runs.RunData(base)
    n = int(np.asarray(run_data.train.labels).shape[0])
    for row in args.rows.split(","):
      label, overrides = ROWS[row]
      reads = runs.needs_biased(base.replace(**overrides))
      res = [measure(base.replace(seed=s, **overrides, **(extra if reads else {})), run_data)
             for s in (seeds if reads else seeds[:1])]
      print(json.dumps({"dataset": name, "row": row, **{k: v for k, v in res[0].items()
                                                          if k != "network"}}), flush=True)
      rows.append([f"{NAMES.get(name, name)} {100 * float(ratio):g} % ({n:,} images)", label,
                   _pm([r["auroc"] for r in res], ".3f"),
                   f"{res[0]['uniform']:.2f} → " + _pm([r["share"] for r in res], ".2f"),
                   f"{np.mean([r['class_min'] for r in res]):.2f} / "
                   f"{np.mean([r['class_max'] for r in res]):.2f}",
                   str(len(res))])
      if row == "gce":  # the classifier itself: its difficulty's AUROC, its error set, its time
        nets = [r["network"] for r in res]
        diag = [net["recovery_diagnostic"] for net in nets]
        notes.append(
            f"{NAMES.get(name, name)}: the classifier's difficulty AUROC "
            f"{_pm([d['difficulty_auroc'] for d in diag], '.3f')}; its error set holds "
            f"{_pm([sum(net['errors_per_class']) for net in nets], '.0f')} images, precision "
            f"{_pm([d['error_set_precision'] for d in diag], '.2f')}, recall "
            f"{_pm([d['error_set_recall'] for d in diag], '.2f')} (conflicting images); its "
            f"training loop took {_pm([net['seconds'] for net in nets], '.0f')} s.")
  record = {
      "caption": (f"How the weights of a bias-amplified classifier find the bias-conflicting "
                  f"training images, beside the paper's KDE: preset `{args.preset}` (source "
                  f"{args.source or 'the preset default'}), the weights each run uses "
                  f"(`weights.json`), judged against the true bias labels."),
      "columns": ["dataset", "weighting", "AUROC", "weight on conflicting: uniform → weighted",
                  "per class, min / max", "classifiers"],
      "rows": rows,
      "notes": [f"± : standard deviation over the bias-amplified classifiers of seeds "
                f"{args.seeds} (their keys, jaxdd.runs.biased_key); the surrogate KDE row is the "
                f"seed-{seeds[0]} run's single surrogate. Per class: the mean over classifiers of "
                f"the smallest and largest share of one class's weight on its conflicting images.",
                *notes],
      **provenance}
  synset.atomic_write_json(args.out, record)
  return 0


if __name__ == "__main__":
  sys.exit(main())
