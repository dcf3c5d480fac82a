"""The cross-architecture matrix of a grid cell's SynSets, plainly and with ELF, over its seeds.

For every seed of a grid cell (``experiments/grid.py``) and each chosen row (by default
the vanilla and the KDE row), the row's SynSet (distilled here if the cell has not produced it
yet, in the run directory the grid uses) is trained on each architecture under one
protocol, plainly and with ELF's feature model (a ConvNet trained on that seed's REAL training
split: a separate track, see docs/protocols.md §11). The per-group test accuracies are
averaged over seeds. Each (row, seed) result is stored in
``<root>/<cell>/cross-arch/<row>-s<seed>.json`` and each seed's trained feature model in
``<root>/<cell>/cross-arch/feature-<model>-<protocol>-s<seed>.msgpack`` (flax's msgpack, no
pickle), so an interrupted run resumes without training either again.

  python experiments/cross_arch.py --cell a --root runs/grid
  python experiments/cross_arch.py --cell a --root runs/grid --publish   # results/cross-arch/
  python experiments/cross_arch.py --cell a --root runs/tiny-grid --tiny  # after grid.py's
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys

import jax
import numpy as np
from flax import serialization

from jaxdd import elf, models, progress, protocols, runs, synset

def _grid():
  spec = importlib.util.spec_from_file_location(
      "grid", os.path.join(os.path.dirname(os.path.abspath(__file__)), "grid.py"))
  grid = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(grid)
  return grid


def _slug(row: str) -> str:
  return "".join(c if c.isalnum() else "-" for c in row).strip("-")


def feature_variables(path: str, train):
  """The feature model's variables stored at ``path``, else ``train()``'s, stored there
  (written atomically; a file that does not parse is trained again)."""
  if os.path.exists(path):
    try:
      with open(path, "rb") as f:
        return serialization.msgpack_restore(f.read())
    except (OSError, ValueError) as e:
      progress.logger.warning("%s: unreadable (%s); training the feature model again", path, e)
  variables = train()
  synset.atomic_write_bytes(path, serialization.msgpack_serialize(
      jax.tree.map(np.asarray, variables)))
  return variables


def measure(cell: str, root: str, *, rows, model_specs, protocol: str, num_models: int,
            feature_model: str, feature_protocol: str, with_elf: bool,
            show_progress: bool, seeds=None, tiny: bool = False) -> dict:
  """``{row: {seed: matrix}}`` for the cell's seeds (each matrix: :func:`jaxdd.elf.cross_architecture`)."""
  grid = _grid()
  if cell not in grid.CELLS:
    raise ValueError(f"unknown cell {cell!r}; choose from {sorted(grid.CELLS)}")
  base = grid.cell_base(cell, tiny)
  settings = grid.settings_of(cell, base, root)
  unknown = set(rows) - set(settings)
  if unknown:
    raise ValueError(f"rows {sorted(unknown)} are not rows of cell {cell} ({sorted(settings)})")
  cell_seeds = grid.cell_seeds(cell, tiny)
  if seeds is None:
    seeds = cell_seeds
  elif not set(seeds) <= set(cell_seeds):
    raise ValueError(f"seeds {sorted(set(seeds) - set(cell_seeds))} are not seeds of cell "
                     f"{cell} ({list(cell_seeds)})")
  for s in model_specs:
    models.get(s, num_classes=2)
  protocols.get_protocol(protocol)
  out_dir = os.path.join(root, cell, "cross-arch")
  os.makedirs(out_dir, exist_ok=True)
  results: dict = {}
  for seed in seeds:
    run_data = None
    features_of = {}
    for row in rows:
      path = os.path.join(out_dir, f"{_slug(row)}-s{seed}.json")
      if os.path.exists(path):
        with open(path) as f:
          results.setdefault(row, {})[seed] = json.load(f)["matrix"]
        continue
      config = settings[row].apply(base.replace(seed=seed))
      if run_data is None:
        run_data = runs.RunData(base.replace(seed=seed))
      # The cell's own SynSet (same run directory as the grid's), distilled here when the
      # cell has not been run yet; the grid reuses it later.
      workdir = runs.run_dir(os.path.join(root, cell), config)
      syn_dir = os.path.join(workdir, "synset")
      if os.path.exists(os.path.join(syn_dir, "manifest.json")):
        syn, _ = synset.load(syn_dir)
      else:
        progress.logger.info("seed %d: distilling the %s SynSet of cell %s", seed, row, cell)
        syn = runs.distill_stage(config, workdir, run_data=run_data, progress=show_progress)
      key = runs.run_keys(config)[2]
      features = None
      if with_elf:
        fm = models.get(feature_model, num_classes=run_data.num_classes)
        if "variables" not in features_of:  # one feature model per seed

          def train_it():
            progress.logger.info("seed %d: training the ELF feature model %s", seed,
                                 feature_model)
            return elf.train_feature_model(
                runs.run_keys(base.replace(seed=seed))[0],
                run_data.normalized(run_data.train), run_data.train.labels, model=fm,
                protocol=feature_protocol)

          features_of["variables"] = feature_variables(
              os.path.join(out_dir, f"feature-{_slug(feature_model)}-{_slug(feature_protocol)}"
                                    f"-s{seed}.msgpack"), train_it)
        features = elf.distillation_features(fm, features_of["variables"], syn.images)
      matrix = elf.cross_architecture(key, syn, run_data.batch(run_data.test),
                                      model_specs=model_specs, num_classes=run_data.num_classes,
                                      protocol=protocol, num_models=num_models,
                                      features=features, progress=show_progress)
      matrix = {m: {k: (None if v is None else {"mean": v["mean"], "std": v["std"]})
                    for k, v in r.items()} for m, r in matrix.items()}
      synset.atomic_write_json(path, {"cell": cell, "row": row, "seed": seed,
                                      "protocol": protocol, "num_models": num_models,
                                      "feature_model": feature_model if with_elf else None,
                                      "feature_protocol": feature_protocol if with_elf else None,
                                      "matrix": matrix})
      results.setdefault(row, {})[seed] = matrix
  return results


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--cell", required=True, help="a grid cell, e.g. a (its selection must exist)")
  p.add_argument("--root", default="runs/grid")
  p.add_argument("--rows", default="vanilla,kde (selected on valid)",
                 help="comma-separated rows of the cell's table")
  p.add_argument("--models", default="convnet,convnet-d4,resnet18,mlp")
  p.add_argument("--protocol", default="cpu")
  p.add_argument("--num-models", type=int, default=2)
  p.add_argument("--feature-model", default="convnet-d3-w128")
  p.add_argument("--feature-protocol", default="cpu")
  p.add_argument("--no-elf", action="store_true", help="the plain column only")
  p.add_argument("--seeds", default=None,
                 help="comma-separated subset of the cell's seeds (default: all of them)")
  p.add_argument("--publish", action="store_true",
                 help="write results/cross-arch/<cell>.json and .md from the stored results")
  p.add_argument("--quiet", action="store_true")
  p.add_argument("--tiny", action="store_true", help=(
      "check the script in seconds on a cell that `grid.py --tiny` ran: seed 0, a ConvNet and "
      "an MLP, one network of the smoke protocol, a small feature model (flags given "
      "explicitly still apply)"))
  args = p.parse_args(argv)
  if args.tiny:
    p.set_defaults(models="convnet-d2-w8,mlp", protocol="smoke", num_models=1,
                   feature_model="convnet-d2-w8", feature_protocol="smoke", seeds="0")
    args = p.parse_args(argv)
  try:
    seeds = None if args.seeds is None else [int(x) for x in args.seeds.split(",")]
  except ValueError:
    p.error(f"--seeds {args.seeds!r}: comma-separated integers, e.g. 0,1")
  progress.setup_logging(args.quiet)
  rows = [r.strip() for r in args.rows.split(",") if r.strip()]
  specs = [m.strip() for m in args.models.split(",") if m.strip()]
  results = measure(args.cell, args.root, rows=rows, model_specs=specs, protocol=args.protocol,
                    num_models=args.num_models, feature_model=args.feature_model,
                    feature_protocol=args.feature_protocol, with_elf=not args.no_elf,
                    show_progress=not args.quiet,
                    seeds=seeds, tiny=args.tiny)
  summary = elf.summarize_seeds(results)
  print(elf.format_seeds(summary))
  if args.publish:
    dest = os.path.join("results", "cross-arch")
    os.makedirs(dest, exist_ok=True)
    published = {"cell": args.cell, "models": specs, "protocol": args.protocol,
                 "num_models": args.num_models, "elf": not args.no_elf,
                 "feature_model": args.feature_model, "feature_protocol": args.feature_protocol,
                 **summary}
    synset.atomic_write_json(os.path.join(dest, f"{args.cell}.json"), published)
    synset.atomic_write_bytes(os.path.join(dest, f"{args.cell}.md"),
                              (elf.format_seeds(published) + "\n").encode())
  return 0


if __name__ == "__main__":
  sys.exit(main())
