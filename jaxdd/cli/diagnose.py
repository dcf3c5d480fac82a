"""``jaxdd diagnose``: train/load the SupCon surrogate and report how the KDE weights find the
bias (:func:`jaxdd.runs.diagnose.diagnose_report`)."""
from __future__ import annotations

import argparse
import math

from jaxdd import data, presets, weighting
from jaxdd.cli import arguments, flags
from jaxdd.runs import checks, outputs
from jaxdd.runs import diagnose as diagnose_lib


def floats(text: str) -> tuple[float, ...]:
  """``--sweep-variances`` / ``--sweep-temperatures``: comma-separated positive numbers.

  >>> floats("0.1,1")
  (0.1, 1.0)
  """
  try:
    vals = tuple(float(v) for v in text.split(",") if v.strip())
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
  if not vals or any(not (math.isfinite(v) and v > 0) for v in vals):
    raise argparse.ArgumentTypeError(f"expected positive numbers, got {text!r}")
  return vals


def add_diagnose_flags(p: argparse.ArgumentParser) -> None:
  """The flags of ``jaxdd diagnose``; the KDE flags are named as in ``jaxdd distill``."""
  default = weighting.KDEConfig()  # the library's defaults, kept by the validation selection
  p.add_argument("--dataset", default="cmnist", choices=sorted(data.DATASETS), metavar="DATASET",
                 help="dataset name (jaxdd.data.load), default cmnist")
  p.add_argument("--conflict-ratio", type=float, default=0.05,
                 help="fraction of bias-conflicting training samples, e.g. 0.05")
  p.add_argument("--severity", type=int, default=None, help="bias severity (default: dataset's)")
  p.add_argument("--seed", type=arguments.non_negative_int, default=0, help="data and surrogate seed")
  p.add_argument("--preset", default="cpu", choices=tuple(presets.SURROGATE),
                 help="surrogate scale (SurrogateConfig.preset)")
  p.add_argument("--epochs", type=arguments.positive_int, default=None, help="override the preset's surrogate epochs")
  p.add_argument("--space", default="projection", choices=("projection", "encoder"),
                 help="embedding space for the KDE (the paper: projection)")
  p.add_argument("--kde-variance", dest="kde_variance", type=float, default=default.variance,
                 help=f"kernel variance (default {default.variance})")
  p.add_argument("--kde-temperature", dest="kde_temperature", type=float,
                 default=default.temperature,
                 help=f"normalisation temperature (default {default.temperature})")
  p.add_argument("--kde-normalize", dest="kde_normalize", default=default.normalize,
                 choices=("softmax", "power"),
                 help=f"normalisation of the inverse density (default {default.normalize})")
  p.add_argument("--kde-scope", dest="kde_scope", default=default.scope, choices=weighting.SCOPES,
                 help="density inside sampled per-class batches (paper; default) or over the "
                      "whole class")
  p.add_argument("--batch-size", type=arguments.positive_int, default=256, help="real samples per class batch (DM: 256)")
  p.add_argument("--num-rounds", type=arguments.positive_int, default=20, help="batch-scope rounds per sample")
  p.add_argument("--sweep-variances", type=floats, default=diagnose_lib.SWEEP_VARIANCES,
                 help="comma-separated kernel variances for the sweep")
  p.add_argument("--sweep-temperatures", type=floats, default=diagnose_lib.SWEEP_TEMPERATURES,
                 help="comma-separated temperatures for the sweep")
  p.add_argument("--no-sweep", action="store_true", help="only the default settings")
  p.add_argument("--no-cache", action="store_true", help="do not read or write the surrogate cache")
  p.add_argument("--workdir", dest="workdir", default="runs/diag",
                 help="output directory (default runs/diag)")
  flags.add_common_flags(p)


def cmd_diagnose(args) -> int:
  if outputs.is_run_dir(args.workdir):
    raise ValueError(f"--workdir {args.workdir} is a run's folder; give diagnose a folder of "
                     "its own, e.g. --workdir runs/diag")
  outputs.check_work_folder(args.workdir, record="report.json", writes=("weights_*.png",),
                            what="a diagnosis", owns=lambda path: outputs.json_object_with(
                                path, ("surrogate", "default", "sweep", "seconds")))
  checks.check_writable(args.workdir)  # before the surrogate is trained
  diagnose_lib.diagnose_report(args)
  return 0


def register(sub: argparse._SubParsersAction, preset: str) -> None:
  """Adds ``diagnose``."""
  p = sub.add_parser("diagnose", help="train/load the SupCon surrogate and report how the KDE "
                                       "weights find the bias (AUROC, weight fractions, histograms)")
  add_diagnose_flags(p)
  p.set_defaults(fn=cmd_diagnose)
