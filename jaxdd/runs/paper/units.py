"""The paper table's queue cut into units: which units a cell has, which is next, who holds
one, and a cell's table from whatever unit records exist.

A lent GPU runs one command of at most 10 minutes on a bare machine, so the queue is also
cut into units that each fit one command and leave one small record: what the table needs.
A cell's units run in queue order (:func:`cell_units`: each seed's rows, then each seed's
ceiling; then, once every seed's rows are in, :func:`chosen_units`); a queue claims the unit
it runs (:func:`claim_dir`), so that another queue on the same units folder takes the next
one (:func:`next_units`). The cell's table is built from the records there
(:func:`units_table`), each row with the seeds it has.
"""
from __future__ import annotations

import json
import os
import socket

import numpy as np

from jaxdd.runs import selection, version
from jaxdd.runs.paper.cells import OWN_DATA, ROWS, Cell, cell_rows, choice_pool
from jaxdd.runs.paper.queue import Queue
from jaxdd.runs.paper.records import Unit, folder_records, read_unit, unit_settings
from jaxdd.runs.paper.table import table_data, table_path, table_source


def own_batch(name: str) -> bool:
  """Whether a row draws its own real batch (importance-sampled by its weights): it cannot
  share the uniform batch of the cell's other rows, nor that batch's forward pass."""
  return ROWS[name].overrides.get("real_sampling") == "weighted"


def unit_order(rows: tuple) -> tuple:
  """A seed's rows in the order ``rows_per_unit`` groups them: the rows that share the
  uniform real batch first, the rows that draw their own last (each in table order). A row
  with its own batch costs its own real forward, about four shared rows' arithmetic at the
  paper's setting, so the first unit, which holds vanilla DM and DM + KDE, is the cheapest.

  >>> unit_order(("vanilla", "kde_floor_init_is", "kde"))
  ('vanilla', 'kde', 'kde_floor_init_is')
  """
  return tuple(sorted(rows, key=own_batch))


def cell_units(q: Queue, cell: Cell) -> list[Unit]:
  """A cell's seed units in queue order: each seed's rows (with ``rows_per_unit``, the
  first group of rows of every seed, then the next group), then each seed's ceiling."""
  names = cell_rows(cell, q.rows)
  rows = tuple(n for n in names if n not in OWN_DATA)
  own = tuple(n for n in names if n in OWN_DATA)
  k = q.options.rows_per_unit
  if k is None or k >= len(rows):
    units = [Unit(cell, "rows", (s,), rows) for s in q.seeds]
  else:  # each seed's rows in groups of k, one unit each (the seed's draws are the same);
    # the first group for every seed before the next, so the paper's rows have every seed first
    rows = unit_order(rows)
    units = [Unit(cell, "rows", (s,), rows[i:i + k], i // k) for i in range(0, len(rows), k)
             for s in q.seeds]
  units += [Unit(cell, "ceiling", (s,), own) for s in q.seeds if own]
  return units


def chosen_units(q: Queue, cell: Cell) -> list[Unit]:
  """The unit that reads a chosen candidate's test split, once every seed's rows are in and
  validation chose a candidate no reported row covers; else none."""
  pool = choice_pool(cell, q.rows)
  recs = {}
  for u in cell_units(q, cell):
    rec = read_unit(q, u) if u.part == "rows" else None
    if u.part == "rows" and rec is None:
      return []
    if rec is not None:
      for n in pool:
        recs.setdefault(n, []).extend(rec["rows"].get(n, []))
  if not pool or not recs:
    return []
  choice = unit_choice(recs, pool)
  if ROWS[choice["chosen"]].reported or all("test" in r for r in recs[choice["chosen"]]):
    return []  # its test split is in the seeds' records already (--test-every-row)
  return [Unit(cell, "chosen", tuple(q.seeds), (choice["chosen"],))]


def unit_choice(recs: dict, pool: list[str]) -> dict:
  """The best label-free row among ``pool`` (the incumbent first) on the validation scores
  of its per-seed records (:func:`jaxdd.runs.select`)."""
  scores = {n: np.asarray([r["valid"]["conflicting"] for r in recs[n]]) for n in pool}
  return selection.select(scores, pool[0], recs[pool[0]][0]["valid"]["num_conflicting"])


def unit_records(q: Queue, cell: Cell) -> tuple[dict[str, list[dict]], list[dict]]:
  """Row -> its per-seed records, from every finished unit of ``cell`` in the units folder
  (the seeds the queue asks for, in their order; a row a unit lacks simply has fewer seeds),
  and the units' records themselves (their provenance)."""
  out: dict[str, list[dict]] = {}
  found = []
  units = [u for u in cell_units(q, cell) if u.part != "chosen"] + chosen_units(q, cell)
  for u in units:
    rec = read_unit(q, u)
    if rec is None:
      continue
    found.append(rec)
    for name, recs in rec["rows"].items():
      if u.part == "chosen":
        out[name] = recs  # the chosen candidate with its test split, every seed
        continue
      have = {r["seed"] for r in out.get(name, [])}
      if any(r["seed"] in have for r in recs):
        raise ValueError(f"{u.path(q.options.units_dir)} gives the row {name} a seed another "
                         "record of the cell gives it too; move the copy aside")
      out.setdefault(name, []).extend(recs)
  order = {s: i for i, s in enumerate(q.seeds)}
  return ({n: sorted(v, key=lambda r: order.get(r["seed"], len(order))) for n, v in out.items()},
          found)


def units_table(q: Queue, cell: Cell) -> dict | None:
  """The cell's table from whatever units exist (each row with the seeds it has), or None
  when the first seed's rows are not in yet."""
  records, found = unit_records(q, cell)
  if not records.get("vanilla") or not records.get("kde"):
    return None
  pool = [n for n in choice_pool(cell, q.rows) if records.get(n)]
  # the choice compares the candidates on the seeds every one of them has (paired)
  common = set.intersection(*({r["seed"] for r in records[n]} for n in pool))
  if not common:  # no seed shared yet: the incumbent alone, until the others catch up
    pool, common = pool[:1], {r["seed"] for r in records[pool[0]]}
  choice = unit_choice({n: [r for r in records[n] if r["seed"] in common] for n in pool}, pool)
  if "test" not in records[choice["chosen"]][0]:
    choice = dict(choice, pending=True)
  data = table_data(q, cell, records, choice)
  units = sorted(found, key=lambda r: r["unit"])
  data.update(
      date=max(r["date"] for r in units),
      commit="; ".join(f"{r['unit']}: {r['commit'].split('+g')[-1][:7]}" for r in units),
      machine="; ".join(f"{r['unit']}: {r['machine']}" for r in units),
      command=sorted({r["command"] for r in units}),
      notes=data["notes"] + ["Built from the unit records in "
                             f"{q.options.units_dir} ({len(units)} units); each unit's commit "
                             "and machine are given."],
      units={"dir": q.options.units_dir, "settings": unit_settings(q)})
  return data


def check_tables(q: Queue, cells: list[Cell]) -> None:
  """Refuses a results folder whose table of one of ``cells`` another source wrote (the whole
  queue, the units of another folder or of other settings): these units' table would
  replace it."""
  for cell in cells:
    path = table_path(q, cell)
    source = table_source(path)
    if source is None:
      continue
    if source == {}:
      raise ValueError(f"{path} is the whole queue's table of {cell.name}; these units' table "
                       "would replace it: give the units another --results")
    same_dir = os.path.abspath(source["dir"] or "") == os.path.abspath(q.options.units_dir)
    if not same_dir or source["settings"] not in (None, unit_settings(q)):
      raise ValueError(f"{path} is the table of the units in {source['dir']}"
                       + (f" ({source['settings']})" if source["settings"] else "")
                       + f", not of {q.options.units_dir} ({unit_settings(q)}); these units' "
                       "table would replace it: give them another --results")


def claim_dir(q: Queue, unit: Unit) -> str:
  """Where a queue claims ``unit`` while it runs it: a lock (:func:`jaxdd.runs.rundir.
  workdir_lock`, its process and host) in the units folder, so that another queue on the
  same units folder takes the next unit instead of running this one too."""
  return os.path.join(q.options.units_dir, ".claims", unit.name)


def claimed_by(q: Queue, unit: Unit) -> str | None:
  """The process that holds the claim of ``unit`` (``process P on HOST``), or None when no
  living process on this host does (a claim of another host counts as held)."""
  path = os.path.join(claim_dir(q, unit), ".lock")
  try:
    with open(path) as f:
      holder = json.load(f)
    pid, host = int(holder["pid"]), str(holder["host"])
  except (OSError, ValueError, KeyError, TypeError):
    return None  # none, or being written this moment: the lock itself decides
  if pid == os.getpid() and host == socket.gethostname():
    return None
  if host == socket.gethostname():
    try:
      os.kill(pid, 0)
    except ProcessLookupError:
      return None
    except PermissionError:
      pass
  return f"process {pid} on {host}"


def next_units(q: Queue, cells: list[Cell], count: int) -> list[Unit]:
  """The first ``count`` unfinished units in queue order that no other queue has claimed."""
  todo = []
  for cell in cells:
    for u in cell_units(q, cell) + chosen_units(q, cell):
      if read_unit(q, u) is None:
        holder = claimed_by(q, u)
        if holder is not None:
          print(f"[paper_table] unit {u.name} is claimed by {holder} (another queue on "
                f"{q.options.units_dir}); the next unit", flush=True)
          continue
        todo.append(u)
        if len(todo) == count:
          return todo
  return todo


def estimate_minutes(q: Queue, unit: Unit) -> str:
  """The estimated minutes of a unit, from the finished units of this units folder that ran
  on this kind of machine (their wall time per row), or why there is none."""
  here = version.machine()
  per_row = [rec["timings"]["total_s"] / len(rec["rows"]) for _, rec in folder_records(q)
             if rec["machine"] == here and rec["rows"]]
  if not per_row:
    return "no estimate yet (no unit of these settings has run on this machine)"
  return (f"about {float(np.median(per_row)) * len(unit.rows) / 60:.1f} min (from "
          f"{len(per_row)} finished units on this machine)")


def plan_line(q: Queue, unit: Unit) -> str:
  """What the plan says of ``unit``: its rows, seeds and settings, and its estimate."""
  extra = {k: v for k, v in unit_settings(q).items() if k != "preset"}
  return (f"unit {unit.name}: rows {', '.join(unit.rows)}; seeds "
          f"{','.join(map(str, unit.seeds))}; preset {q.options.preset}"
          + "".join(f", {k} {v}" for k, v in extra.items())
          + f"; {estimate_minutes(q, unit)}")


def unit_dirs(q: Queue, unit: Unit) -> list[str]:
  """The run folders of a unit."""
  return [os.path.join(q.options.workdir, unit.cell.name, n, f"s{s}")
          for n in unit.rows for s in unit.seeds]
