"""The result grid at CPU scale, one command: selection on validation, then the test table.

    python experiments/grid.py --cells a,b --root runs/grid            # run (resumable)
    python experiments/grid.py --cells a,b --root runs/grid --publish  # copy tables to results/
    python experiments/grid.py --cells a --root runs/tiny-grid --tiny  # in seconds

Cells (the `cpu` preset, offline data; docs/protocols.md §7):

  a  CMNIST 5 %, IPC 10, DM vs DM+KDE: `jaxdd tune` on validation (seeds 0, 1), then the
     final table over seeds 0, 1, 2 with 5 networks, `cpu300` protocol.
  b  BG-FMNIST 5 % (full Fashion-MNIST), IPC 10, DM vs DM+KDE with the settings cell a chose
     (no test split was read to choose them), 3 seeds x 3 networks.
  c  Corruption bias: corrupted_fmnist 5 % (full Fashion-MNIST with LfF's Type0 corruptions
     as the bias attribute; not CIFAR-10-C), IPC 10, DM vs DM+KDE, cell a's settings,
     3 seeds x 3 networks.
  c-cifar10c  The same on CIFAR-10-C (`cifar10c`, Type0), for users who have CIFAR-10:
     `--cifar10 PATH` (an .npz with x_train, y_train, x_test, y_test).
  d50, d1, d2  CMNIST 5 % at IPC 50; CMNIST 1 % and 2 % at IPC 10 (cell a's settings).
  e-cmnist, e-bgfmnist  DSA vs DSA+KDE on CMNIST 5 % / BG-FMNIST 5 % (cell a's weighting
     knobs; DSA's own lr_img).
  f-cmnist  Trajectory matching (MTT, the `cpu` preset's TESLA settings) with uniform vs
     KDE-weighted experts on CMNIST 5 %, IPC 10: its own selection on validation (seed 0)
     of lr_img in {1000, 10000} for each, at cell a's weighting knobs over whole classes;
     then 3 seeds x 3 networks.
  f-bgfmnist  The same on BG-FMNIST 5 % with the settings f-cmnist chose.
  f-cmnist-t  MTT's own KDE temperature: f-cmnist's KDE experts at T in {0.25, 0.5, 1, 2}
     (power weights f^(-1/T), v = 0.01, lr_img 1000) selected on validation (seed 0), then
     3 seeds x 3 networks (f-cmnist took DM's T = 0.25 from cell a).
  g-cmnist, g-bgfmnist  Curriculum frequency matching (CFM) with uniform vs KDE-weighted real
     statistics, like f-cmnist / f-bgfmnist (lr_img in {3, 10, 30}).
  g-cmnist-slots  g-cmnist's rows with UniDD's slot curriculum (--cfm-curriculum slots).
  h-cmnistdd-<aligned>  Biased-DD's CMNIST-DD at each of its aligned ratios (0, 0.1, 0.5, 0.8,
     0.95, 1) with its 0 %-aligned test split: DM vs DM+KDE, cell a's settings.
  a-unbiased, f-unbiased  DM and MTT (vanilla rows, the settings cells a and f-cmnist chose)
     on unbiased CMNIST (10 % aligned), IPC 10: MTT's claim that it beats DM, at this budget.

Every cell writes `<root>/<cell>/table.json` and `table.md`; `--publish` copies those (and
the selection) to `results/<cell>/`, which README.md and the results pages under docs/results/ are generated from
(`experiments/results_tables.py`).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys

from jaxdd import cli, progress, runs, synset
from jaxdd.config import RunConfig, get_config

#: The rows of the trajectory-matching tables: uniform and KDE-weighted experts. (The
#: literal reading's row would train another buffer per seed; left out at this budget.)
MTT_ROWS = ("vanilla", "kde (selected on valid)", "kde (library default)")

CELLS = {
    "a": dict(overrides=dict(dataset="cmnist", conflict_ratio=0.05, ipc=10), tune=True,
              seeds=(0, 1, 2), num_models=5),
    "b": dict(overrides=dict(dataset="bg_fmnist", conflict_ratio=0.05, ipc=10), from_cell="a",
              seeds=(0, 1, 2), num_models=3),
    "c": dict(overrides=dict(dataset="corrupted_fmnist", conflict_ratio=0.05, ipc=10),
              from_cell="a", seeds=(0, 1, 2), num_models=3),
    "c-cifar10c": dict(overrides=dict(dataset="cifar10c", conflict_ratio=0.05, ipc=10),
                       from_cell="a", needs_cifar10=True, seeds=(0, 1, 2), num_models=3),
    "d50": dict(overrides=dict(dataset="cmnist", conflict_ratio=0.05, ipc=50), from_cell="a",
                seeds=(0, 1, 2), num_models=3),
    "d1": dict(overrides=dict(dataset="cmnist", conflict_ratio=0.01, ipc=10), from_cell="a",
               seeds=(0, 1, 2), num_models=3),
    "d2": dict(overrides=dict(dataset="cmnist", conflict_ratio=0.02, ipc=10), from_cell="a",
               seeds=(0, 1, 2), num_models=3),
    "e-cmnist": dict(overrides=dict(dataset="cmnist", conflict_ratio=0.05, ipc=10, method="dsa"),
                     from_cell="a", knobs_only=True, seeds=(0, 1, 2), num_models=3),
    "e-bgfmnist": dict(overrides=dict(dataset="bg_fmnist", conflict_ratio=0.05, ipc=10,
                                      method="dsa"),
                       from_cell="a", knobs_only=True, seeds=(0, 1, 2), num_models=3),
    "f-cmnist": dict(overrides=dict(dataset="cmnist", conflict_ratio=0.05, ipc=10, method="mtt"),
                     tune=True, tune_seeds=(0,), lr_grid=(1000.0, 10000.0), seeds=(0, 1, 2),
                     num_models=3, rows=MTT_ROWS),
    "f-bgfmnist": dict(overrides=dict(dataset="bg_fmnist", conflict_ratio=0.05, ipc=10,
                                      method="mtt"),
                       from_cell="f-cmnist", seeds=(0, 1, 2), num_models=3, rows=MTT_ROWS),
    "f-cmnist-t": dict(overrides=dict(dataset="cmnist", conflict_ratio=0.05, ipc=10,
                                      method="mtt"),
                       tune=True, tune_seeds=(0,), temperature_grid=(0.25, 0.5, 1.0, 2.0),
                       seeds=(0, 1, 2), num_models=3, rows=MTT_ROWS),
    # Unbiased data (10 % aligned: colours independent of the digit): does MTT beat DM at
    # the same IPC, as MTT claims, at this budget? Vanilla rows only.
    "a-unbiased": dict(overrides=dict(dataset="cmnist", conflict_ratio=0.9, ipc=10),
                       from_cell="a", seeds=(0, 1, 2), num_models=3, rows=("vanilla",)),
    "f-unbiased": dict(overrides=dict(dataset="cmnist", conflict_ratio=0.9, ipc=10,
                                      method="mtt"),
                       from_cell="f-cmnist", seeds=(0, 1, 2), num_models=3, rows=("vanilla",)),
}
# Curriculum frequency matching (CFM) vs CFM with KDE-weighted real statistics: its own
# selection of lr_img on validation (seed 0) at cell a's weighting knobs.
CELLS["g-cmnist"] = dict(overrides=dict(dataset="cmnist", conflict_ratio=0.05, ipc=10,
                                        method="cfm"),
                         tune=True, tune_seeds=(0,), lr_grid=(3.0, 10.0, 30.0), seeds=(0, 1, 2),
                         num_models=3, rows=MTT_ROWS)
CELLS["g-bgfmnist"] = dict(overrides=dict(dataset="bg_fmnist", conflict_ratio=0.05, ipc=10,
                                          method="cfm"),
                           from_cell="g-cmnist", seeds=(0, 1, 2), num_models=3, rows=MTT_ROWS)
# UniDD's order: one IPC slot after another, beta falling over the slots (g-cmnist's rows).
CELLS["g-cmnist-slots"] = dict(overrides=dict(dataset="cmnist", conflict_ratio=0.05, ipc=10,
                                              method="cfm", cfm_curriculum="slots"),
                               from_cell="g-cmnist", seeds=(0, 1, 2), num_models=3,
                               rows=MTT_ROWS)
# Biased-DD's CMNIST-DD (Lu et al.): its aligned ratios (0 = anti-biased, 0.1 = uniform,
# 1 = fully biased) and its 0 %-aligned test split; DM vs DM+KDE with cell a's settings.
for _aligned in (0.0, 0.1, 0.5, 0.8, 0.95, 1.0):
  CELLS[f"h-cmnistdd-{_aligned:g}"] = dict(
      overrides=dict(dataset="cmnist_dd", conflict_ratio=_aligned, ipc=10), from_cell="a",
      seeds=(0, 1, 2), num_models=3, rows=("vanilla", "kde (selected on valid)"))


def lr_candidates(base: RunConfig, lrs) -> list[runs.Setting]:
  """Uniform and KDE-weighted runs at each ``lr_img`` (the weighting knobs: the preset's)."""
  kde = dict(weighting="kde", kde_normalize=base.kde_normalize, kde_variance=base.kde_variance,
             kde_temperature=base.kde_temperature)
  return [runs.Setting.of(weighting="none", lr_img=lr) for lr in lrs] + \
         [runs.Setting.of(**kde, lr_img=lr) for lr in lrs]


def temperature_candidates(base: RunConfig, temperatures) -> list[runs.Setting]:
  """The uniform run and KDE-weighted runs at each temperature (lr_img and the other
  weighting knobs: the preset's)."""
  kde = dict(weighting="kde", kde_normalize=base.kde_normalize, kde_variance=base.kde_variance)
  return [runs.Setting.of(weighting="none", lr_img=base.lr_img)] + \
         [runs.Setting.of(**kde, kde_temperature=t, lr_img=base.lr_img) for t in temperatures]


def cell_settings(cell: dict, base: RunConfig, root: str) -> dict[str, runs.Setting]:
  """The table rows of a cell: its own tune's choice, or the choice of ``from_cell``."""
  source = cell.get("from_cell")
  path = os.path.join(root, source if source else "", "selection.json")
  with open(path) as f:
    selection = json.load(f)
  if cell.get("knobs_only"):  # another method: its own lr_img, the weighting knobs of the source
    selection = dict(selection, chosen={w: {k: v for k, v in s.items() if k != "lr_img"}
                                        | {"lr_img": base.lr_img}
                                        for w, s in selection["chosen"].items()})
  settings = runs.settings_from_selection(selection, base)
  if "rows" in cell:
    settings = {k: v for k, v in settings.items() if k in cell["rows"]}
  return settings


def settings_of(name: str, base: RunConfig, root: str) -> dict[str, runs.Setting]:
  """The rows of cell ``name``: from its own selection if it tunes, else from its source's."""
  cell = CELLS[name]
  return cell_settings(cell if cell.get("from_cell") else dict(cell, from_cell=name), base, root)


def cell_base(name: str, tiny: bool = False, **extra) -> RunConfig:
  """The preset config of cell ``name`` (``tiny``: the smoke preset's sizes, its IPC too)."""
  overrides = dict(CELLS[name]["overrides"], **extra)
  if tiny:
    overrides.pop("ipc", None)
  return get_config("smoke" if tiny else "cpu", **overrides)


def cell_seeds(name: str, tiny: bool = False) -> tuple[int, ...]:
  """The seeds of the final table of cell ``name`` (``tiny``: seed 0)."""
  return (0,) if tiny else tuple(CELLS[name]["seeds"])


def run_cell(name: str, root: str, *, progress: bool, cifar10: str | None = None,
             tiny: bool = False) -> dict:
  """Runs cell ``name`` under ``root``; ``tiny`` checks the code path in seconds (smoke preset,
  seed 0, the two default settings as the only candidates, one network of the smoke
  protocol)."""
  cell = CELLS[name]
  if cell.get("needs_cifar10"):
    if cifar10 is None:
      raise ValueError(f"cell {name} needs CIFAR-10, which has no offline source here: pass "
                       "--cifar10 PATH (an .npz with x_train, y_train, x_test, y_test)")
  base = cell_base(name, tiny, **({"source": os.path.abspath(cifar10)}
                                  if cell.get("needs_cifar10") else {}))
  workdir = os.path.join(root, name)
  if cell.get("tune") and not os.path.exists(os.path.join(workdir, "selection.json")):
    candidates = (lr_candidates(base, cell["lr_grid"]) if "lr_grid" in cell else
                  temperature_candidates(base, cell["temperature_grid"])
                  if "temperature_grid" in cell else None)
    small = {}
    if tiny:
      candidates = [runs.default_setting(base, w) for w in ("none", "kde")]
      small = dict(protocol="smoke", num_models=1)
    runs.tune(base, workdir, seeds=(0,) if tiny else cell.get("tune_seeds", (0, 1)),
              candidates=candidates, progress=progress, **small)
  settings = settings_of(name, base, root)
  return runs.final(base, workdir, settings=settings, seeds=cell_seeds(name, tiny),
                    protocol="smoke" if tiny else "cpu300",
                    num_models=1 if tiny else cell["num_models"], progress=progress,
                    full_models=1 if tiny else cell.get("full_models", 3))


def publish(name: str, root: str, dest: str = "results") -> None:
  """Copies a cell's JSON results to ``dest/<cell>/`` and renders their .md beside them."""
  os.makedirs(os.path.join(dest, name), exist_ok=True)
  for f, fmt in (("table", runs.format_table), ("selection", runs.format_selection)):
    src = os.path.join(root, name, f + ".json")
    if os.path.exists(src):
      shutil.copyfile(src, os.path.join(dest, name, f + ".json"))
      with open(src) as fh:
        text = fmt(json.load(fh)) + "\n"
      synset.atomic_write_bytes(os.path.join(dest, name, f + ".md"), text.encode())


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--cells", default="a", help=f"comma-separated, from {sorted(CELLS)}")
  parser.add_argument("--root", default="runs/grid")
  parser.add_argument("--publish", action="store_true",
                      help="copy finished tables to results/<cell>/ instead of running")
  parser.add_argument("--cifar10", default=None, metavar="PATH",
                      help="CIFAR-10 .npz (x_train, y_train, x_test, y_test) for cell c-cifar10c")
  parser.add_argument("--quiet", action="store_true")
  parser.add_argument("--tiny", action="store_true", help=(
      "check the script in seconds: the smoke preset, seed 0, the two default settings as the "
      "only candidates, one network of the smoke protocol"))
  args = parser.parse_args(argv)
  names = [c.strip() for c in args.cells.split(",") if c.strip()]
  unknown = set(names) - set(CELLS)
  if unknown:
    parser.error(f"unknown cells {sorted(unknown)}; choose from {sorted(CELLS)}")
  if args.cifar10 is not None and not os.path.isfile(args.cifar10):
    parser.error(f"--cifar10 {args.cifar10}: no such file")
  if not args.publish and args.cifar10 is None and any(CELLS[n].get("needs_cifar10") for n in names):
    parser.error("cell c-cifar10c needs --cifar10 PATH (CIFAR-10 has no offline source here)")
  cli.tune_allocator()
  progress.setup_logging(args.quiet)
  for name in names:
    if args.publish:
      publish(name, args.root)
    else:
      run_cell(name, args.root, progress=not args.quiet, cifar10=args.cifar10, tiny=args.tiny)
  return 0


if __name__ == "__main__":
  sys.exit(main())
