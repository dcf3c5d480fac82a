"""Your own data distils as the built-in path does: export the built-in CMNIST 5 % and BG-FMNIST
5 % splits to every layout ``--data`` reads, distil each with ``jaxdd distill`` (a process per
run, as a user would) and compare the SynSets' digests and the printed tables.

Layouts: ``npz`` (the float32 images exactly), ``tfds`` (a jaxdd TFDS builder, which keeps the
exact float image beside its PNG), ``folder`` (PNG class folders with no group labels, plus a
group csv for the test split only), ``csv`` (PNG files and one metadata table with groups) and
``npz-uint8`` (the images rounded to 8 bits, as the PNG layouts hold them). The 8-bit layouts
cannot equal the built-in float images (the colour noise is not a multiple of 1/255); they are
compared with each other, every split exported in class order (the order in which a
class-folder tree lists its images; the data order changes the sampled batches).

Usage:
  python experiments/own_data_equivalence.py --out results/own-data/equivalence-smoke.json
  python experiments/own_data_equivalence.py --preset cpu --datasets cmnist --layouts npz \
      --out results/own-data/equivalence-cpu.json
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from jaxdd import data
from jaxdd._src import io as _io
from jaxdd.runs import version
from jaxdd.data.own import export

LAYOUTS = ("npz", "tfds", "folder", "csv", "npz-uint8")
#: The layouts that hold 8-bit images, compared with each other in class order.
EIGHT_BIT = ("folder", "csv", "npz-uint8")
HERE = Path(__file__).resolve().parent.parent


def _by_class(ds):
  """The split with its images in class order (stable): the order a class-folder tree has."""
  order = np.argsort(ds.labels, kind="stable")
  return dataclasses.replace(ds, images=ds.images[order], labels=ds.labels[order],
                             bias=ds.bias[order], aligned=ds.aligned[order])


def _export(name: str, layout: str, root: Path) -> list[str]:
  """Writes the built-in splits in ``layout``; returns the ``--data`` flags that read it."""
  splits = {s: data.load(name, split=s, conflict_ratio=0.05) for s in ("train", "valid", "test")}
  if layout in EIGHT_BIT:  # a folder tree lists its images class by class: all 8-bit layouts do
    splits = {s: _by_class(ds) for s, ds in splits.items()}
  base = ["--aligned-rule", "equal"]  # the colour benchmarks: group k is class k's colour
  if layout == "npz":
    export.export_layout(splits, "npz", root / f"{name}.npz")
    return ["--data", f"npz:{root / f'{name}.npz'}", *base]
  if layout == "npz-uint8":
    arrays = {}
    for s, ds in splits.items():
      arrays.update({f"x_{s}": data.to_uint8(ds.images), f"y_{s}": ds.labels,
                     f"g_{s}": ds.bias})
    np.savez(root / f"{name}-u8.npz", **arrays)
    return ["--data", f"npz:{root / f'{name}-u8.npz'}", *base]
  if layout == "tfds":
    ref = data.prepare_tfds(name, conflict_ratio=0.05, data_dir=str(root / "tfds"))
    return ["--data", f"tfds:{ref}", "--data-dir", str(root / "tfds"), "--group-col", "bias",
            *base]
  if layout == "folder":
    out = export.export_layout(splits, "folder", root / f"{name}-folder", groups="test")
    return ["--data", f"folder:{out}", "--group-file", str(out / "groups.csv"), *base]
  out = export.export_layout(splits, "csv", root / f"{name}-csv")
  return ["--data", f"csv:{out / 'metadata.csv'}", "--label-col", "y", "--group-col", "group",
          "--split-col", "split", *base]


def _distill(flags: list[str], workdir: Path, preset: str, env: dict,
             extra: list[str]) -> dict:
  t0 = time.perf_counter()
  r = subprocess.run([sys.executable, "-m", "jaxdd", "distill", "--preset", preset,
                      "--workdir", str(workdir), "--quiet", *extra, *flags],
                     capture_output=True,
                     text=True, env=env, cwd=HERE)
  if r.returncode:
    raise SystemExit(f"jaxdd distill {' '.join(flags)} failed: {r.stderr.strip()}")
  table = "\n".join(ln for ln in r.stdout.splitlines()
                    if not ln.startswith(("run directory", "WARNING")))
  digest = hashlib.sha256((workdir / "synset" / "arrays.npz").read_bytes()).hexdigest()[:16]
  overall = next(float(ln.split()[1]) for ln in table.splitlines() if ln.startswith("overall"))
  return {"table": table, "synset": digest, "overall": overall,
          "seconds": round(time.perf_counter() - t0, 1)}



def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--preset", default="smoke")
  p.add_argument("--datasets", default="cmnist,bg_fmnist")
  p.add_argument("--layouts", default=",".join(LAYOUTS))
  p.add_argument("--out", required=True)
  p.add_argument("--tiny", action="store_true", help=(
      "check the script: CMNIST, the npz and csv layouts, 2 iterations of vanilla DM"))
  args = p.parse_args(argv)
  extra = []
  if args.tiny:
    args.datasets, args.layouts = "cmnist", "npz,csv"
    extra = ["--iterations", "2", "--weighting", "none"]
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    root = Path(tmp)
    env = dict(os.environ, JAXDD_CACHE=str(root / "cache"))
    for name in args.datasets.split(","):
      ref = _distill(["--dataset", name, "--conflict-ratio", "0.05"], root / f"run-{name}",
                     args.preset, env, extra)
      rows.append([name, "built-in", ref["synset"], "–", "–", ref["overall"], ref["seconds"]])
      u8 = None
      for layout in args.layouts.split(","):
        got = _distill(_export(name, layout, root), root / f"run-{name}-{layout}", args.preset,
                       env, extra)
        eight_bit = layout in EIGHT_BIT
        if eight_bit and u8 is None:
          u8 = got
        same = got["synset"] == ref["synset"] and got["table"] == ref["table"]
        same_u8 = eight_bit and got["synset"] == u8["synset"] and got["table"] == u8["table"]
        rows.append([name, layout, got["synset"], "yes" if same else "no",
                     ("yes" if same_u8 else "no") if eight_bit else "–", got["overall"],
                     got["seconds"]])
        print(rows[-1], flush=True)
  commit = version.short_commit()  # the code this process loaded
  _io.atomic_write_json(args.out, {
      "caption": f"`jaxdd distill --preset {args.preset}` on the built-in splits and on their "
                 "exports (DM + KDE unless the command says otherwise)",
      "notes": ["SynSet sha256[:16]: of the run's synset/arrays.npz. 'same as built-in': the same "
                "SynSet file and the same printed table. 'same as the first 8-bit layout': "
                "compared with the first of folder, csv, npz-uint8 (exported in class order). "
                "Seconds: the whole run, one process each (other work shared the machine)."],
      "columns": ["dataset", "layout", "SynSet sha256[:16]", "same SynSet and table as built-in",
                  "same as the first 8-bit layout", "overall %", "seconds"],
      "rows": rows, "date": time.strftime("%Y-%m-%d"), "commit": commit,
      "machine": version.machine(),
      "command": ["python experiments/own_data_equivalence.py " + " ".join(sys.argv[1:])]})
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
