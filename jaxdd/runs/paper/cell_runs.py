"""A cell of the paper table run whole: its rows distilled and evaluated, the label-free
choice made on validation, and the cell's table.

In a DM cell, every row but the ceiling (which distils other data) and every seed are
distilled in ONE compiled program (:func:`jaxdd.runs.distill_cell`: the weightings are data;
the seeds are independent and the rows of a seed share its draws, common random numbers),
and all their SynSets are evaluated in one program per split (the reported rows on
validation and test, the candidates on validation only). Other rows and methods go row by
row, each row's seeds in one program where the method allows, as every row does with
``row_by_row``. The best label-free row is chosen among ``LABEL_FREE`` on validation alone
(the pre-registered rule of ``jaxdd tune``, :func:`jaxdd.runs.select`); a candidate that is
not otherwise reported reads the test split only if chosen.
"""
from __future__ import annotations

import os
import time

import numpy as np

from jaxdd import runs, synset
from jaxdd.runs import selection
from jaxdd.runs.paper.cells import OWN_DATA, ROWS, Cell, cell_rows, choice_pool, row_config
from jaxdd.runs.paper.queue import CELL_RECORD, Queue, bias_share
from jaxdd.runs.paper.table import table_data, table_path, table_source


def tested(q: Queue, name: str) -> bool:
  """Whether the row ``name`` reads the test split when it runs: a reported row, or every row
  with ``test_every_row``."""
  return ROWS[name].reported or q.options.test_every_row


def run_row(q: Queue, cell: Cell, name: str, test: bool) -> list[dict]:
  """Distils a row's seeds and evaluates each (on the test split too with ``test``): one record
  per seed."""
  configs = [row_config(q.base(cell), cell, name, s) for s in q.seeds]
  workdirs = [os.path.join(q.options.workdir, cell.name, name, f"s{s}") for s in q.seeds]
  t0 = time.perf_counter()
  syns = q.distil(configs, workdirs)
  per_seed = (time.perf_counter() - t0) / len(configs)
  records = []
  for c, w, syn in zip(configs, workdirs, syns):
    rec = {"seed": c.seed, "workdir": w, **q.timing(w, per_seed), **q.evaluate(c, w, syn, test),
           **bias_share(w)}
    records.append(rec)
  return records


def run_cell(q: Queue, cell: Cell) -> dict:
  """Every row of a cell, the validation choice, and the cell's table data. A DM cell's rows
  (but the ceiling, on its own data) are distilled in one program, and their SynSets
  evaluated in one program per split."""
  names = cell_rows(cell, q.rows)
  in_cell = [n for n in names if n not in OWN_DATA]
  if cell.method == "dm" and in_cell and not q.options.row_by_row:
    cell_program(q, cell, in_cell)
  records = {}
  for name in names:
    records[name] = run_row(q, cell, name, tested(q, name))
  pool = choice_pool(cell, q.rows)
  scores = {n: np.asarray([r["valid"]["conflicting"] for r in records[n]]) for n in pool}
  n_valid = records[pool[0]][0]["valid"]["num_conflicting"]
  choice = selection.select(scores, pool[0], n_valid)
  chosen = choice["chosen"]
  if not tested(q, chosen):  # the chosen candidate's test split, read now and only now
    q.check_time()
    records[chosen] = run_row(q, cell, chosen, True)
  return table_data(q, cell, records, choice)


def cell_program(q: Queue, cell: Cell, names: list[str]) -> None:
  """The rows ``names`` x the seeds of a DM cell distilled in one program, then evaluated in
  one program per split; :func:`run_row` then finds them finished and evaluated. Rows that
  cannot share the program (:func:`jaxdd.runs.program_rows`) are left to :func:`run_row`,
  which distils them row by row."""
  first = [row_config(q.base(cell), cell, n, q.seeds[0]) for n in names]
  names = [n for n, ok in zip(names, runs.program_rows(first)) if ok]
  if not names:
    return
  q.distil_cell(cell, names)
  if q.on_distilled is not None:
    q.on_distilled()
  items = []
  for n in names:
    for s in q.seeds:
      w = os.path.join(q.options.workdir, cell.name, n, f"s{s}")
      syn, _ = synset.load(os.path.join(w, "synset"))
      items.append((row_config(q.base(cell), cell, n, s), w, syn, tested(q, n)))
  q.evaluate_many(items)


def cell_finished(q: Queue, cell: Cell) -> bool:
  """Whether the whole queue's table of ``cell`` is written and complete (a damaged one is
  said in one line and the cell computed again)."""
  done = q.record(table_path(q, cell), CELL_RECORD)
  return done is not None and done.get("complete", True)


def check_queue_tables(q: Queue, cells: list[Cell]) -> None:
  """Refuses, before any work, a results folder where a table of ``cells`` was built from
  unit records: the whole queue's table would replace it."""
  for cell in cells:
    path = table_path(q, cell)
    source = table_source(path)
    if source:
      raise ValueError(f"{path} is the table of the units in {source['dir']}; the whole "
                       "queue's table would replace it: give the queue another --results")
