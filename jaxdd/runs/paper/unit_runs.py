"""Running the paper table's units: each under its claim, its record written last, and a unit
the time budget stopped handed over to the next machine and taken over there.

A unit stopped part-way leaves no record; its run folders resume on the same machine. With an
``out`` folder (a lent machine's), the stopped unit's run folders with their latest
checkpoints, the surrogates trained on its data and this command as one more leg are left
there (:func:`hand_over`, :func:`jaxdd.runs.bundle.write_handover`); the next machine goes on
from them (:func:`take_over`), so nothing is done twice.
"""
from __future__ import annotations

import datetime
import json
import os
import time

from jaxdd import runs, surrogate, synset
from jaxdd.runs import bundle, rundir, version
from jaxdd.runs.paper import cell_runs
from jaxdd.runs.paper.cells import row_config
from jaxdd.runs.paper.queue import BudgetReached, Queue, recorded_command
from jaxdd.runs.paper.records import Unit, read_unit, record_digest, unit_settings
from jaxdd.runs.paper.table import render, write_table
from jaxdd.runs.paper.units import claim_dir, claimed_by, unit_dirs, units_table


def run_unit(q: Queue, unit: Unit) -> dict:
  """Runs a unit and writes its record (last, atomically: a unit stopped part-way leaves no
  record; its run folders resume on the same machine)."""
  t0 = time.perf_counter()
  cell, queue_seeds = unit.cell, q.seeds
  q.seeds = list(unit.seeds)  # the unit's seeds while it runs
  q.leg_distill_s = 0.0
  try:
    if unit.part == "rows" and cell.method == "dm" and not q.options.row_by_row:
      cell_runs.cell_program(q, cell, list(unit.rows))
    recs = {n: cell_runs.run_row(q, cell, n, cell_runs.tested(q, n) or unit.part == "chosen")
            for n in unit.rows}
  finally:
    q.seeds = queue_seeds
  for rows in recs.values():
    for r in rows:
      w = r.pop("workdir")
      r["synset_sha256"] = synset_digest(w)
  total = time.perf_counter() - t0 + sum(leg["total_s"] for leg in q.legs)
  timings = {"total_s": total,
             "distill_s": float(sum(r["distill_s"] for v in recs.values() for r in v)),
             "eval_s": float(sum(r["eval_s"] for v in recs.values() for r in v))}
  record = {"unit": unit.name, "settings": unit_settings(q), "rows": recs, "timings": timings,
            "commit": runs.code_version(), "machine": version.machine(),
            "date": datetime.date.today().isoformat(),
            "command": recorded_command(q.options.argv)}
  if q.legs:  # the commands before this one, which the time budget stopped (a handover)
    record["legs"] = q.legs
  record["digest"] = record_digest(record)
  os.makedirs(os.path.dirname(unit.path(q.options.units_dir)), exist_ok=True)
  synset.atomic_write_json(unit.path(q.options.units_dir), record)
  q.legs = []
  return record


def synset_digest(workdir: str) -> str:
  """The sha256 of a run's SynSet arrays, as its manifest records them."""
  with open(os.path.join(workdir, "synset", "manifest.json")) as f:
    files = json.load(f)["files"]
  return files["arrays.npz"]


def run_units(q: Queue, todo: list[Unit]) -> list[Unit]:
  """Runs the planned units in order, each under its claim (one another queue claimed or
  finished since the plan is passed over), writes each cell's table from its unit records,
  and, with ``out``, leaves the finished units' records and runs there. The finished units.

  When the budget is spent, a unit in flight with ``out`` is handed over there and
  :class:`BudgetReached` names it and the files it left."""
  out = q.options.out
  done, current = [], None
  try:
    for u in todo:
      q.check_time()
      current = u
      if out and q.options.budget_minutes is not None and len(todo) == 1:
        # the finished SynSets handed over before the evaluation: what comes back if the
        # command is killed in it (replaced by the record when the unit finishes)
        q.on_distilled = lambda: print(
            f"[paper_table] handed over before the evaluation in {out}: "
            f"{', '.join(hand_over(q, current, out))}", flush=True)
      try:
        with rundir.workdir_lock(claim_dir(q, u)):
          if read_unit(q, u) is not None:  # another queue finished it since the plan
            print(f"[paper_table] unit {u.name} was finished by another queue", flush=True)
            current = None
            continue
          rec = run_unit(q, u)
      except ValueError:
        if claimed_by(q, u) is None:
          raise
        print(f"[paper_table] unit {u.name} was claimed by another queue since the plan "
              f"({claimed_by(q, u)}); not run", flush=True)
        current = None
        continue
      if out:
        bundle.remove_handover(out)
      current = None
      done.append(u)
      print(f"[paper_table] unit {u.name} finished in {rec['timings']['total_s'] / 60:.1f} "
            f"min ({u.path(q.options.units_dir)})", flush=True)
      data = units_table(q, u.cell)
      if data is not None:
        write_table(q, u.cell, data)
        print(render(data), flush=True)
  except BudgetReached:
    if not out or current is None:
      raise
    try:
      names = hand_over(q, current, out)
    except (ValueError, OSError) as e:
      raise ValueError("the time budget is spent and the unit in flight could not be handed "
                       f"over: {e}") from None
    raise BudgetReached(current.name, names) from None
  if out:
    leave_out(q, done)
  return done


def leave_out(q: Queue, done: list[Unit]) -> None:
  """Leaves the records and runs of the finished units ``done`` in the ``out`` folder
  (:func:`jaxdd.runs.bundle.write_out`: what a lent machine returns)."""
  names = bundle.write_out(
      q.options.out, [(f"unit-{u.name.replace('/', '-')}.json", u.path(q.options.units_dir))
                      for u in done], q.options.workdir,
      [os.path.join(q.options.workdir, u.cell.name, n, f"s{s}")
       for u in done for n in u.rows for s in u.seeds])
  packed = any(n.startswith("runs.tar.gz") for n in names)
  print(f"[paper_table] left in {q.options.out}: {', '.join(names)}"
        + ("" if packed else " (the runs did not fit in the file limits: records only)"),
        flush=True)


def take_over(q: Queue, unit: Unit) -> None:
  """``resume_from``: the stopped unit's run folders and surrogates from the handover a
  budget left (:func:`hand_over`), for the next unit here, which must be that unit."""
  src = q.options.resume_from
  manifest, packed = bundle.read_handover(src)
  if manifest["unit"] != unit.name:
    raise ValueError(f"{src} hands over the unit {manifest['unit']}, but the "
                     f"next unit here is {unit.name}; give the handover of {unit.name} or drop "
                     "--resume-from")
  if manifest["settings"] != unit_settings(q):
    raise ValueError(f"{src} was made with {manifest['settings']}, not "
                     f"{unit_settings(q)}; give the flags it was made with")
  others = sorted(set(manifest["runs"]) - {os.path.relpath(d, q.options.workdir)
                                           for d in unit_dirs(q, unit)})
  if others:
    raise ValueError(f"{src} holds runs that are not rows of the unit "
                     f"{unit.name} here ({', '.join(others)}): it was made with another grouping "
                     "of the rows; finish it with the commit that made it, or drop --resume-from")
  staged = bundle.unpack_handover(packed, q.options.workdir, manifest["runs"])
  q.legs, q.surrogates = list(manifest["legs"]), staged
  step = q.legs[-1].get("step", "?") if q.legs else "?"
  print(f"[paper_table] unit {unit.name} goes on from the handover in {src} "
        f"({len(q.legs)} earlier command(s), stopped at step {step})", flush=True)


def hand_over(q: Queue, unit: Unit, out: str) -> list[str]:
  """What the next machine needs to finish the unit the budget stopped, left in ``out``
  (:func:`jaxdd.runs.bundle.write_handover`): its run folders with their latest
  checkpoints, the surrogates trained on its data, and this command as one more leg."""
  dirs = [d for d in unit_dirs(q, unit) if os.path.isdir(os.path.join(d, "checkpoints"))
          or os.path.isdir(os.path.join(d, "synset"))]
  if not dirs:
    raise ValueError("no run of it had started; run the same command again")
  config = row_config(q.base(unit.cell), unit.cell, unit.rows[0], unit.seeds[0])
  train = q.run_data(config).train
  entries = surrogate.cache.portable_entries(train.images, train.labels)
  steps = [int(n) for d in dirs if os.path.isdir(os.path.join(d, "checkpoints"))
           for n in os.listdir(os.path.join(d, "checkpoints")) if n.isdigit()]
  leg = {"machine": version.machine(), "commit": runs.code_version(),
         "date": datetime.date.today().isoformat(), "total_s": time.monotonic() - q.t0,
         "distill_s": q.leg_distill_s, "step": max(steps) if steps else 0,
         "command": recorded_command(q.options.argv)}
  manifest = {"unit": unit.name, "settings": unit_settings(q),
              "runs": [os.path.relpath(d, q.options.workdir) for d in dirs],
              "surrogates": [os.path.basename(e) for e in entries], "legs": q.legs + [leg]}
  return bundle.write_handover(out, manifest, bundle.pack_handover(q.options.workdir, dirs,
                                                                   entries))
