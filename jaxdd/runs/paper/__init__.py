"""The paper table: every cell, row and seed, as a queue resumable across machines.

``experiments/paper_table.py`` is its command line; this package does the work:

* :mod:`~jaxdd.runs.paper.cells`: the cells (``CELLS``: dataset, conflicting fraction, IPC,
  method; the paper's setting first) and rows (``ROWS``), and a row's configuration;
* :mod:`~jaxdd.runs.paper.queue`: one invocation (:class:`Queue`, its :class:`Options`):
  distilling a row's seeds or a DM cell's rows x seeds in one program, evaluating SynSets in
  one program, the time budget (:class:`BudgetReached`), and each run's stored evaluation;
* :mod:`~jaxdd.runs.paper.cell_runs`: a cell run whole (:func:`run_cell`), with the best
  label-free row chosen on validation;
* :mod:`~jaxdd.runs.paper.table`: a cell's table data and its markdown;
* :mod:`~jaxdd.runs.paper.records`: the units (:class:`Unit`: one seed of a cell, every row)
  and their records, with the sha256 digest that :func:`check_record` checks;
* :mod:`~jaxdd.runs.paper.units`: a cell's units in queue order, claims, the next units, and
  a cell's table from whatever unit records exist;
* :mod:`~jaxdd.runs.paper.unit_runs`: running units, and handing a unit the budget stopped
  over to another machine; :mod:`~jaxdd.runs.paper.take`: what a lent machine left, taken back;
* :mod:`~jaxdd.runs.paper.label_free`: every label-free candidate beside vanilla DM and FairDD
  with true labels, per setting, and whether the one chosen on validation comes within 2
  points of FairDD.

Rows: vanilla DM; the paper's DM + KDE; the best label-free setting (chosen on validation);
FairDD with pseudo-groups from clustering the surrogate's embeddings (label-free) and from
DBSCAN of each sampled batch inside the step (label-free, FairDD's appendix M); FairDD and
oracle group-balanced weights with the true bias labels (reference rows, marked); vanilla DM
on unbiased data (the ceiling). Columns: validation conflicting accuracy (what the choice
reads), test overall, aligned, conflicting and worst group accuracy, DEO_M and DEO_A
(FairDD's equalized-odds differences, empty groups counted as 0 as its code does), the share
of synthetic images in their class's aligned bias at the start and end of distillation, and
wall time per seed.
"""
from jaxdd.runs.paper.cells import (CELL_FIELDS, CELLS, DEFAULT_ROWS, LABEL_FREE, OWN_DATA, ROWS,
                                    UNBIASED,
                                    Cell, Row, cell_rows, choice_pool, row_config)
from jaxdd.runs.paper.queue import (CELL_RECORD, EVAL_RECORD, TIMING_RECORD, TINY_SIZES,
                                    BudgetReached, Options, Queue, queue_overrides,
                                    recorded_command, set_overrides, tiny_preset)
from jaxdd.runs.paper.table import (COLUMNS, machine, render, table_data, table_path,
                                    table_row, table_source, write_table)
from jaxdd.runs.paper.cell_runs import (cell_finished, cell_program, check_queue_tables,
                                        run_cell, run_row)
from jaxdd.runs.paper.records import (LAYOUT, UNIT_RECORD, Unit, check_record, check_units_dir,
                                      read_unit, record_digest, unit_settings)
from jaxdd.runs.paper.units import (cell_units, check_tables, chosen_units, claim_dir,
                                    claimed_by, estimate_minutes, next_units, own_batch,
                                    plan_line, unit_choice, unit_dirs, unit_order, unit_records,
                                    units_table)
from jaxdd.runs.paper.unit_runs import hand_over, run_unit, run_units, take_over
from jaxdd.runs.paper.take import take_back
from jaxdd.runs.paper import label_free

__all__ = [
    "CELLS", "ROWS", "DEFAULT_ROWS", "UNBIASED", "LABEL_FREE", "OWN_DATA", "CELL_FIELDS", "Cell", "Row",
    "cell_rows", "choice_pool", "row_config",
    "Queue", "Options", "BudgetReached", "TINY_SIZES", "tiny_preset", "set_overrides",
    "queue_overrides", "recorded_command", "EVAL_RECORD", "TIMING_RECORD", "CELL_RECORD",
    "COLUMNS", "table_data", "table_row", "render", "machine", "table_path", "table_source",
    "write_table",
    "run_row", "run_cell", "cell_program", "cell_finished", "check_queue_tables",
    "Unit", "UNIT_RECORD", "LAYOUT", "record_digest", "check_record", "unit_settings",
    "read_unit", "check_units_dir",
    "own_batch", "unit_order", "cell_units", "chosen_units", "unit_choice", "unit_records",
    "units_table", "check_tables", "claim_dir", "claimed_by", "next_units", "estimate_minutes",
    "plan_line", "unit_dirs",
    "run_unit", "run_units", "take_over", "hand_over", "take_back", "label_free",
]
