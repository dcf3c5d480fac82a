"""Taking back what a lent machine left: its unit records and runs, or a handover for the next
loan, brought into this checkout (:func:`take_back`).

Every file is checked (the records against these settings and this queue's units, the parts
against their sha256) and nothing is replaced before anything is written; taking the same
folder twice changes nothing.
"""
from __future__ import annotations

import os
import shutil

from jaxdd._src import io as io_lib
from jaxdd._src import schema
from jaxdd.runs import bundle
from jaxdd.runs.paper.cells import Cell
from jaxdd.runs.paper.queue import Queue
from jaxdd.runs.paper.records import UNIT_RECORD, Unit, check_record, unit_settings
from jaxdd.runs.paper.table import render, write_table
from jaxdd.runs.paper.units import cell_units, chosen_units, units_table


def take_back(q: Queue, order: list[Cell]) -> None:
  """``take``: what ``next_unit.sh run OUT`` left in the folder ``q.options.take``, brought
  into this checkout. Unit records go into the units folder and their runs into the work
  folder, then the cells' tables are built again; a handover goes into ``handover_dir`` for
  the next loan. Every file is checked before anything is written."""
  opts = q.options
  src = opts.take
  if not os.path.isdir(src):
    raise ValueError(f"--take {src} is not a folder; give the OUT folder the lent machine left")
  names = sorted(os.listdir(src))
  record_files = [n for n in names if n.startswith("unit-") and n.endswith(".json")]
  if not record_files and bundle.HANDOVER not in names:
    raise ValueError(f"{src} holds neither a unit record (unit-*.json) nor a handover "
                     f"({bundle.HANDOVER}); give the folder next_unit.sh run left")
  known = {u.name: u for c in order for u in cell_units(q, c) + chosen_units(q, c)}
  held_path = os.path.join(opts.handover_dir, bundle.HANDOVER)
  held = (schema.read_json(held_path, bundle.HANDOVER_RECORD, fix="remove it by hand")
          if os.path.isfile(held_path) else None)  # the handover kept for the next loan
  takes, cells = _records(q, src, record_files, known)
  # the runs come with new records only (taken already: they were unpacked then)
  plain, run_dirs = bundle.read_runs(src) if takes else (b"", [])
  manifest = (_handover(q, src, known, takes, held) if bundle.HANDOVER in names else None)
  # everything checked: the runs first, then the records (a record names finished runs)
  bundle.unpack_runs(plain, run_dirs, opts.workdir)
  for u, dst, data in takes:
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    io_lib.atomic_write_bytes(dst, data)
    print(f"[paper_table] took the record of unit {u.name}: {dst}", flush=True)
  if run_dirs:
    print(f"[paper_table] took {len(run_dirs)} run(s) into {opts.workdir}", flush=True)
  if held is not None and any(u.name == held["unit"] for u, _, _ in takes):
    shutil.rmtree(opts.handover_dir)
    print(f"[paper_table] removed {opts.handover_dir}: its unit {held['unit']} is finished",
          flush=True)
  if manifest is not None:
    bundle.copy_handover(src, opts.handover_dir)
    step = manifest["legs"][-1].get("step", "?") if manifest["legs"] else "?"
    print(f"[paper_table] kept the handover of unit {manifest['unit']} ({len(manifest['legs'])} "
          f"command(s), stopped at step {step}) in {opts.handover_dir}: carry it to the next "
          "loan", flush=True)
  for cell in cells:
    data = units_table(q, cell)
    if data is None:
      print(f"[paper_table] the table of {cell.name} waits for the first seed's vanilla and kde "
            "rows", flush=True)
      continue
    write_table(q, cell, data)
    print(render(data), flush=True)


def _records(q: Queue, src: str, record_files: list[str], known: dict[str, Unit]
             ) -> tuple[list[tuple[Unit, str, bytes]], list[Cell]]:
  """The unit records in ``src`` to take (their unit, where each goes, its bytes), each
  checked, and the cells they belong to; a record already here is said so and left."""
  takes, cells = [], []
  for n in record_files:
    path = os.path.join(src, n)
    rec = schema.read_json(path, UNIT_RECORD, fix="carry it again from the machine")
    u = known.get(rec["unit"])
    if u is None:
      raise ValueError(f"{path} records the unit {rec['unit']}, which is not one of these "
                       "--cells, --seeds and --rows; give the flags it was run with")
    if rec["settings"] != unit_settings(q):
      raise ValueError(f"{path} was made with {rec['settings']}, not {unit_settings(q)}; "
                       "give the flags it was run with")
    check_record(rec, u, path)
    with open(path, "rb") as f:
      data = f.read()
    dst = u.path(q.options.units_dir)
    if os.path.exists(dst):
      with open(dst, "rb") as f:
        if f.read() != data:
          raise ValueError(f"{dst} exists and differs from {path}; the record would replace "
                           "it: move one of them aside by hand")
      print(f"[paper_table] {dst} is this record already", flush=True)
    else:
      takes.append((u, dst, data))
      if u.cell not in cells:
        cells.append(u.cell)
  return takes, cells


def _handover(q: Queue, src: str, known: dict[str, Unit], takes: list, held: dict | None
              ) -> dict:
  """The manifest of the handover in ``src``, every part checked against its sha256, once it
  is known to be of an unfinished unit of these settings that continues the handover kept
  here (``held``), if any."""
  opts = q.options
  manifest, _ = bundle.read_handover(src)  # every part against its sha256
  if manifest["unit"] not in known or manifest["settings"] != unit_settings(q):
    raise ValueError(f"{src} hands over the unit {manifest['unit']} made with "
                     f"{manifest['settings']}, not a unit of these settings "
                     f"({unit_settings(q)}); give the flags it was run with")
  if (os.path.exists(known[manifest["unit"]].path(opts.units_dir))
      or any(u.name == manifest["unit"] for u, _, _ in takes)):
    raise ValueError(f"{src} hands over the unit {manifest['unit']}, which is finished (its "
                     "record is taken); the handover is not needed")
  if held is not None:
    # the new one continues the kept one: the same unit, the kept legs as its first ones
    if (held["unit"] != manifest["unit"]
        or manifest["legs"][:len(held["legs"])] != held["legs"]):
      raise ValueError(f"{opts.handover_dir} holds the handover of {held['unit']} after "
                       f"{len(held['legs'])} command(s), which the one in {src} "
                       f"({manifest['unit']}, {len(manifest['legs'])}) does not continue; "
                       "finish that unit first, or move the folder aside by hand")
  elif os.path.lexists(opts.handover_dir) and (not os.path.isdir(opts.handover_dir)
                                               or os.listdir(opts.handover_dir)):
    raise ValueError(f"{opts.handover_dir} holds something other than a handover; give "
                     "another --handover-dir")
  return manifest
