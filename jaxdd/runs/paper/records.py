"""The paper table's units and their records: what a unit is, what its record holds, and the
checks that keep records of other units or other settings out of a table.

A unit is one command's work on a fresh machine: one seed of a cell, its rows (``"rows"``),
its ceiling (``"ceiling"``), or the test split of the candidate chosen on validation
(``"chosen"``). A finished unit leaves one record, ``<units_dir>/<cell>/<unit>.json``: per
row, each seed's scores, bias shares, wall times and SynSet sha256, with the settings it was
made with, its commit, machine, date and command, and ``digest``, the sha256 of everything
else as canonical JSON (:func:`record_digest`), so that a record edited or copied under
another unit's name is refused (:func:`check_record`).

>>> unit = Unit(Cell("c", "cmnist", 0.05, 10), "rows", (0,), ("vanilla", "kde"))
>>> unit.name, unit.path("units")
('c/s0', 'units/c/s0.json')
>>> record_digest({"unit": "c/s0", "rows": {}, "digest": "?"}) == hashlib.sha256(
...     b'{"rows":{},"unit":"c/s0"}').hexdigest()
True
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Iterator

from jaxdd._src import schema
from jaxdd.runs.paper.cells import Cell
from jaxdd.runs.paper.queue import SCORES, Queue, tiny_preset


@dataclasses.dataclass(frozen=True)
class Unit:
  """A unit of work that fits one command on a fresh machine.

  ``part="rows"``: every row of one seed of a cell that shares the cell's data (a DM cell's
  rows distilled in one program, then evaluated in one program; a DSA cell's row by row).
  ``part="ceiling"``: the ceiling row of one seed (other data). ``part="chosen"``: once
  every seed's rows are in, the test split of the label-free candidate chosen on validation,
  when no reported row covers it (all seeds; the test split is read now and only now).
  """
  cell: Cell
  part: str
  seeds: tuple
  rows: tuple
  chunk: int | None = None  # with rows_per_unit: which group of the seed's rows

  @property
  def name(self) -> str:
    """The unit's name: ``<cell>/s<seed>`` (``-rows<chunk>``, ``-ceiling``) or
    ``<cell>/chosen-<row>``."""
    if self.part == "chosen":
      return f"{self.cell.name}/chosen-{self.rows[0]}"
    if self.part == "ceiling":
      return f"{self.cell.name}/s{self.seeds[0]}-ceiling"
    return f"{self.cell.name}/s{self.seeds[0]}" + ("" if self.chunk is None
                                                   else f"-rows{self.chunk}")

  def path(self, units_dir: str) -> str:
    """Where the unit's record is in ``units_dir``."""
    return os.path.join(units_dir, self.name + ".json")


SEED_RECORD = schema.obj({"seed": schema.INT, "distill_s": schema.NUM, "eval_s": schema.NUM,
                          "bias_start": schema.opt(schema.NUM),
                          "bias_end": schema.opt(schema.NUM), "valid": schema.ANY,
                          "synset_sha256": schema.STR},
                         optional={"test": SCORES, "weights_auroc": schema.NUM,
                                   "weights_conflicting_share": schema.NUM})
UNIT_RECORD = schema.obj({"unit": schema.STR, "settings": schema.map_of(schema.ANY),
                          "rows": schema.map_of(schema.list_of(SEED_RECORD)),
                          "timings": schema.map_of(schema.NUM), "commit": schema.STR,
                          "machine": schema.STR, "date": schema.STR,
                          "command": schema.STR, "digest": schema.STR},
                         optional={"legs": schema.list_of(schema.map_of(schema.ANY))})


def record_digest(rec: dict) -> str:
  """The sha256 of a unit record's content (every field but ``digest``, as canonical JSON):
  what the record carries in ``digest``, so that an edit after it was written is seen."""
  body = {k: v for k, v in rec.items() if k != "digest"}
  return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"),
                                   ensure_ascii=False).encode()).hexdigest()


def check_record(rec: dict, unit: Unit, path: str) -> None:
  """Refuses a record that is not ``unit``'s own, as it was written: one whose content does
  not match its digest (edited), or that names another unit, other rows or other seeds (a
  copy under another unit's name)."""
  if rec["digest"] != record_digest(rec):
    raise ValueError(f"{path} does not match the digest it carries: it was changed after it "
                     "was written; move it aside (its unit then runs again) or restore it")
  if rec["unit"] != unit.name:
    raise ValueError(f"{path} is the record of the unit {rec['unit']}, not of {unit.name} "
                     "(a copy under another name?); move it aside and the unit runs again")
  if sorted(rec["rows"]) != sorted(unit.rows):
    raise ValueError(f"{path} holds the rows {', '.join(sorted(rec['rows']))}, but this unit "
                     f"groups {', '.join(sorted(unit.rows))}: it was made with another "
                     "grouping of the rows; give another --units-dir")
  for name, recs in rec["rows"].items():
    if sorted(r["seed"] for r in recs) != sorted(unit.seeds):
      raise ValueError(f"{path} gives the row {name} the seeds "
                       f"{','.join(str(r['seed']) for r in recs)}, but the unit {unit.name} is "
                       f"seed(s) {','.join(map(str, unit.seeds))}; move it aside and the unit "
                       "runs again")


#: Overrides that change how the work is laid out, not what it computes (beyond float
#: rounding): not settings of a units folder.
LAYOUT = ("policy",)


def unit_settings(q: Queue) -> dict:
  """What every unit of one units folder shares: the preset, the flags that change a run and
  how a seed's rows are grouped into units."""
  out = {"preset": q.options.preset,
         **{k: q.overrides[k] for k in sorted(q.overrides) if k not in LAYOUT}}
  if q.options.rows_per_unit is not None:
    out["rows_per_unit"] = q.options.rows_per_unit
  if tiny_preset(q.options):
    out["tiny"] = True  # the preset's recipe at other sizes: never mixed with its units
  return out


def read_unit(q: Queue, unit: Unit) -> dict | None:
  """A finished unit's record, or None; a record of other settings is refused in one line.

  A chosen candidate's record of these settings and fewer seeds than the unit's (a queue that
  asked for fewer seeds, now extended) is no record: the chosen unit runs again for every
  seed, and its record replaces that one."""
  path = unit.path(q.options.units_dir)
  rec = q.record(path, UNIT_RECORD)
  if (rec is not None and unit.part == "chosen" and rec["digest"] == record_digest(rec)
      and rec["unit"] == unit.name and rec["settings"] == unit_settings(q)):
    have = {r["seed"] for recs in rec["rows"].values() for r in recs}
    if have < set(unit.seeds):
      return None
  if rec is not None:
    check_record(rec, unit, path)
  if rec is not None and rec["settings"] != unit_settings(q):
    raise ValueError(f"{path} was made with {rec['settings']}, not "
                     f"{unit_settings(q)}; give these settings another --units-dir")
  return rec


def folder_records(q: Queue) -> Iterator[tuple[str, dict]]:
  """Every readable unit record in the units folder, with its path, read as it is reached (a
  damaged one is said in one line and left out)."""
  for root, _, names in os.walk(q.options.units_dir):
    for fn in sorted(names):
      rec = q.record(os.path.join(root, fn), UNIT_RECORD) if fn.endswith(".json") else None
      if rec is not None:
        yield os.path.join(root, fn), rec


def check_units_dir(q: Queue) -> None:
  """Refuses a units folder that holds a record of other settings (another preset, other
  flags, another grouping of rows): its units would be mixed with these."""
  for path, rec in folder_records(q):
    if rec["digest"] != record_digest(rec):
      raise ValueError(f"{path} does not match the digest it carries: it "
                       "was changed after it was written; move it aside (its unit then runs "
                       "again) or restore it")
    if rec["settings"] != unit_settings(q):
      raise ValueError(f"{path} was made with {rec['settings']}, not "
                       f"{unit_settings(q)}; give these settings another --units-dir")
