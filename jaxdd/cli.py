"""The ``jaxdd`` command line (also ``python -m jaxdd``).

Subcommands:

  data        build a biased dataset split and print its card (or prepare TFDS builders)
  distill     one run: surrogate -> KDE weights -> DM -> SynSet -> evaluation
  reproduce   vanilla DM and DM+KDE side by side (the main job)
  baselines   random / herding / k-center / LfF / DFA / full set under the same protocol
  evaluate    train fresh networks on a saved SynSet and report per-group accuracy
  report      print the tables of finished runs
  diagnose    train/load the SupCon surrogate and report how the KDE weights find the bias

Every long loop shows a progress bar; every output file is written atomically.
Examples:

  jaxdd data cmnist --conflict-ratio 0.05
  jaxdd reproduce --preset cpu --workdir runs/cmnist-5pct
  jaxdd distill --preset paper --ipc 50 --weighting kde --workdir runs/paper-kde
  jaxdd evaluate runs/cmnist-5pct/dm_kde/synset --protocol cpu --num-models 5
  jaxdd report runs/cmnist-5pct
  jaxdd diagnose --dataset cmnist --conflict-ratio 0.05 --preset cpu --out runs/diag
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import Sequence


def _add_run_flags(p: argparse.ArgumentParser) -> None:
  from jaxdd.pipeline import PRESETS, RunConfig
  p.add_argument("--preset", default="cpu", choices=sorted(PRESETS),
                 help="scale: paper (published settings, accelerator), cpu (minutes on 2 cores), "
                      "smoke (seconds). Default: cpu")
  p.add_argument("--workdir", required=True, help="run directory (created; resumed if it exists)")
  for f in dataclasses.fields(RunConfig):
    if f.name == "preset":
      continue
    flag = "--" + f.name.replace("_", "-")
    typ = {"int": int, "float": float, "str": str}.get(str(f.type).split(" ")[0], None)
    if typ is None:  # Optional fields
      typ = int if f.name == "severity" else str
    p.add_argument(flag, dest=f.name, type=typ, default=None,
                   help=f"override the preset's {f.name} (paper default: {f.default})")


def _config(args):
  from jaxdd.pipeline import RunConfig, get_config
  overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(RunConfig)
               if f.name != "preset" and getattr(args, f.name, None) is not None}
  return get_config(args.preset, **overrides)


def cmd_data(args) -> int:
  from jaxdd import data
  if args.tfds_dir:
    path = data.prepare_tfds(args.name, data_dir=args.tfds_dir, conflict_ratio=args.conflict_ratio,
                             severity=args.severity, seed=args.seed)
    print(f"prepared TFDS builder for {args.name} in {args.tfds_dir}: {path}")
    return 0
  ds = data.load(args.name, split=args.split, conflict_ratio=args.conflict_ratio,
                 severity=args.severity, seed=args.seed, source=args.source)
  print(ds.describe())
  if args.save_card:
    ds.card.save(args.save_card)
    print(f"card written to {args.save_card}")
  return 0


def cmd_distill(args) -> int:
  from jaxdd import pipeline
  cfg = _config(args)
  pipeline.run(cfg, args.workdir)
  print(f"run directory: {args.workdir}")
  return 0


def cmd_reproduce(args) -> int:
  from jaxdd import pipeline
  cfg = _config(args)
  which = tuple(args.with_baselines.split(",")) if args.with_baselines else ()
  pipeline.reproduce(cfg, args.workdir, with_baselines=which)
  print(f"run directory: {args.workdir} (comparison.md, plots/accuracy.png)")
  return 0


def cmd_baselines(args) -> int:
  from jaxdd import pipeline
  cfg = _config(args)
  which = tuple(args.which.split(",")) if args.which else pipeline.BASELINES
  results = pipeline.run_baselines(cfg, args.workdir, which=which,
                                   vanilla_synset=args.vanilla_synset)
  print(pipeline.format_comparison(results, cfg))
  return 0


def cmd_evaluate(args) -> int:
  import jax
  import jax.numpy as jnp

  from jaxdd import data, evaluate, models, synset
  from jaxdd.structs import Batch

  syn, meta = synset.load(args.synset)
  ds_meta = meta.get("dataset", {})
  name = args.dataset or ds_meta.get("name")
  if name is None:
    raise ValueError("the artifact does not name its dataset; pass --dataset and --conflict-ratio")
  ratio = args.conflict_ratio if args.conflict_ratio is not None else ds_meta.get("ratio")
  test = data.load(name, split="test", conflict_ratio=ratio, severity=ds_meta.get("severity"),
                   seed=ds_meta.get("seed", 0), source=args.source)
  images = data.normalize(test.images, meta["mean"], meta["std"])
  batch = Batch(jnp.asarray(images), jnp.asarray(test.labels), jnp.asarray(test.bias),
                jnp.asarray(test.aligned))
  model = models.get(args.model, num_classes=test.num_classes)
  result = evaluate.evaluate(jax.random.key(args.seed), syn._replace(
      images=jnp.asarray(syn.images), labels=jnp.asarray(syn.labels)), batch, model=model,
      protocol=args.protocol, num_models=args.num_models)
  print(result.format_table())
  if args.out:
    synset.atomic_write_json(args.out, result.to_dict())
    print(f"written to {args.out}")
  return 0


def cmd_report(args) -> int:
  found = False
  for root, _, files in sorted(os.walk(args.path)):
    if "comparison.md" in files:
      print(open(os.path.join(root, "comparison.md")).read())
      found = True
    elif "eval.json" in files and not os.path.exists(os.path.join(os.path.dirname(root),
                                                                  "comparison.md")):
      with open(os.path.join(root, "eval.json")) as f:
        ev = json.load(f)
      m, s = ev["mean"], ev["std"]
      print(f"{root}: {ev.get('method')}: overall {100 * m['overall']:.1f}±{100 * s['overall']:.1f}, "
            f"aligned {100 * m['aligned']:.1f}, conflicting {100 * m['conflicting']:.1f}, "
            f"worst group {100 * m['worst_group']:.1f}")
      found = True
  if not found:
    print(f"no finished runs under {args.path} (looked for comparison.md / eval.json)",
          file=sys.stderr)
    return 1
  return 0


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="jaxdd", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest="command", required=True)

  p = sub.add_parser("data", help="build a biased dataset split and print its card")
  p.add_argument("name", help="cmnist, bg_fmnist, cifar10c, cifar10c_type1, bffhq, cmnist_dd, ccifar10_dd")
  p.add_argument("--split", default="train", choices=["train", "valid", "test"])
  p.add_argument("--conflict-ratio", type=float, required=True,
                 help="fraction of bias-conflicting samples (the ALIGNED fraction for *_dd sets)")
  p.add_argument("--severity", type=int, default=None)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--source", default=None, help="IDX directory, .npz file, image folder or 'tfds'")
  p.add_argument("--save-card", default=None, help="write the dataset card as JSON here")
  p.add_argument("--tfds-dir", default=None, help="prepare the TFDS (array_record) builder here")
  p.set_defaults(fn=cmd_data)

  p = sub.add_parser("distill", help="one run: surrogate, KDE weights, DM, SynSet, evaluation")
  _add_run_flags(p)
  p.set_defaults(fn=cmd_distill)

  p = sub.add_parser("reproduce", help="vanilla DM vs DM+KDE, same settings (the main job)")
  _add_run_flags(p)
  p.add_argument("--with-baselines", default=None,
                 help="also run these baselines, e.g. random,herding,kcenter,lff,dfa,full")
  p.set_defaults(fn=cmd_reproduce)

  p = sub.add_parser("baselines", help="random / herding / k-center / LfF / DFA / full-set "
                                       "baselines under the same protocol")
  _add_run_flags(p)
  p.add_argument("--which", default=None,
                 help="comma-separated subset of random,herding,kcenter,lff,dfa,full (default all)")
  p.add_argument("--vanilla-synset", default=None,
                 help="SynSet of a vanilla DM run (needed by lff/dfa)")
  p.set_defaults(fn=cmd_baselines)

  p = sub.add_parser("evaluate", help="evaluate a saved SynSet on its dataset's test split")
  p.add_argument("synset", help="SynSet artifact directory")
  p.add_argument("--protocol", default="dm", help="dm, dsa, dc, cpu or smoke (default dm)")
  p.add_argument("--model", default="convnet", help="architecture spec, e.g. convnet, resnet18")
  p.add_argument("--num-models", type=int, default=5)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--dataset", default=None)
  p.add_argument("--conflict-ratio", type=float, default=None)
  p.add_argument("--source", default=None)
  p.add_argument("--out", default=None, help="write the result JSON here")
  p.set_defaults(fn=cmd_evaluate)

  sub.add_parser("diagnose", add_help=False,
                 help="KDE weight diagnostics (see `jaxdd diagnose --help`)")

  p = sub.add_parser("report", help="print the tables of finished runs under a directory")
  p.add_argument("path")
  p.set_defaults(fn=cmd_report)
  return parser


def main(argv: Sequence[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  if argv[:1] == ["diagnose"]:  # its own parser (jaxdd.diagnose)
    from jaxdd import diagnose
    try:
      diagnose.main(argv[1:])
    except (ValueError, FileNotFoundError) as e:
      print(f"jaxdd diagnose: error: {e}", file=sys.stderr)
      return 2
    return 0
  parser = build_parser()
  args = parser.parse_args(argv)
  try:
    return args.fn(args)
  except (ValueError, FileNotFoundError) as e:
    print(f"jaxdd {args.command}: error: {e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
