"""The paper-scale table as a queue: every cell, row and seed, resumable across GPU loans.

The command line of :mod:`jaxdd.runs.paper`, which does the work and says what the cells, rows
and columns are. A finished cell is written at once to ``<results>/<cell>.json``; a rerun skips
finished cells, loads finished runs and resumes stopped ones from their checkpoints.
``--budget-minutes B`` stops the queue cleanly before B minutes: distillation stops at
``B - reserve`` minutes (``--reserve-minutes``, default 4, which must cover one row's
evaluation) after the chunk in flight, checkpointed; the command exits 0 and says what is
left, and the same command goes on from there.

  jaxdd data fetch mnist
  python experiments/paper_table.py --preset paper --budget-minutes 40 \\
      --workdir runs/paper-table --results results/paper-table
  python experiments/paper_table.py --tiny --workdir runs/tiny --results runs/tiny-results  # seconds

``--next-unit`` cuts the same queue into units that each fit one command on a fresh machine:
one seed of a cell, every row. A finished unit leaves one small record under
``<results>/units/``; the cell's table is built from whatever units exist; a rerun anywhere,
with only the repository, runs the next unit (``experiments/next_unit.sh`` does it on a lent
GPU; docs/reproducing.md).

  python experiments/paper_table.py --next-unit --plan      # the next unit and its estimate
  python experiments/paper_table.py --next-unit --units 2   # the two next units
  python experiments/paper_table.py --next-unit --take OUT  # what a lent machine left in OUT
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

from jaxdd import policy as policy_lib
from jaxdd import progress as progress_lib
from jaxdd._src import schema
from jaxdd.cli import app, arguments
from jaxdd.cli import flags as cli_flags
from jaxdd.runs import bundle, paper


def _parser() -> argparse.ArgumentParser:
  # jaxdd's parser: a bad flag or value is one line naming it, as in the jaxdd commands
  p = arguments.Parser(prog="paper_table", description=__doc__.split("\n\n")[0],
                       formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--preset", default="paper", help="run preset (paper, proxy, smoke, ...)")
  p.add_argument("--source", default=None, help="data source (default: full at paper scale)")
  p.add_argument("--surrogate-preset", default=None)
  p.add_argument("--iterations", type=arguments.positive_int, default=None)
  p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help=(
      "any other run setting on top of the preset, as the jaxdd flag of that name sets it "
      "(repeatable: --set lr_img=30 --set real_per_class=128); a setting of the units, "
      "recorded in each unit record. The cell's own fields (dataset, conflict_ratio, ipc, "
      "method, seed) are refused"))
  p.add_argument("--policy", default=None, help=(
      "the layout policy of every run, its distillation and its evaluation (default auto): a "
      "name or a variant of one, such as "
      "accelerator+class_augment=vmap+input_grad=matmul (jaxdd.policy). The same values up "
      "to float rounding, so it is not a setting of the units: units run under any policy "
      "make one table"))
  p.add_argument("--compute-dtype", default=None, choices=("float32", "bfloat16"), help=(
      "DM's arithmetic (default float32; bfloat16: the real and synthetic forward and "
      "backward in bfloat16, the images in float32, for accelerators)"))
  p.add_argument("--seeds", default="0,1,2")
  p.add_argument("--cells", default=",".join(c.name for c in paper.CELLS),
                 help="the cells to run, in the queue's order")
  p.add_argument("--rows", default=",".join(paper.DEFAULT_ROWS), help=(
      "the rows to run (vanilla and kde are always needed; default: the table's rows and its "
      f"first label-free candidates; every row: {','.join(paper.ROWS)})"))
  p.add_argument("--workdir", default="runs/paper-table",
                 help="where the runs are kept (resumable on this machine; default "
                      "runs/paper-table)")
  p.add_argument("--results", default="results/paper-table",
                 help="where each cell's table JSON is written (default results/paper-table)")
  p.add_argument("--next-unit", action="store_true", help=(
      "run the first unfinished unit (one seed of a cell, every row, in one command) in "
      "queue order, write its record under --units-dir and the cell's table from every "
      "finished unit; a rerun anywhere, with only the repository, goes on with the next"))
  p.add_argument("--units", type=arguments.positive_int, default=1,
                 help="with --next-unit: how many units to run (default 1)")
  p.add_argument("--rows-per-unit", type=arguments.positive_int, default=None, help=(
      "with --next-unit: at most this many rows in one unit (default: all of a seed's rows), "
      "for a machine where a seed's rows do not fit one command; the rows that share the "
      "uniform real batch come first, those that draw their own last"))
  p.add_argument("--units-dir", default=None,
                 help="where the unit records are kept (default <results>/units)")
  p.add_argument("--out", default=None, help=(
      "with --next-unit: also leave in this folder the unit records and the runs' SynSets "
      "(tar.gz in parts of at most 16 MiB; at most 8 files): what a lent machine returns"))
  p.add_argument("--resume-from", default=None, metavar="DIR", help=(
      "with --next-unit: go on with the unit that another machine's time budget stopped, "
      "from the handover it left in its --out folder (handover.json and its parts): its "
      "checkpoints and surrogates, so nothing is done twice"))
  p.add_argument("--take", default=None, metavar="OUT", help=(
      "with --next-unit: back here, take what a lent machine left in OUT (the same flags as "
      "its run): each unit record into --units-dir and its runs into --workdir (nothing is "
      "replaced), then the cells' tables; or a handover into --handover-dir for the next "
      "loan. Everything is checked before anything is written"))
  p.add_argument("--handover-dir", default=".handover", metavar="DIR", help=(
      "with --take: where a returned handover is kept for the next loan, which carries it "
      "(default .handover, the folder next_unit.sh run goes on from); removed once its "
      "unit's record is taken"))
  p.add_argument("--plan", action="store_true",
                 help="with --next-unit: print the plan and the estimate, run nothing")
  p.add_argument("--budget-minutes", type=arguments.positive_float, default=None,
                 help="stop cleanly (checkpointed) before this many minutes; rerun to go on")
  p.add_argument("--reserve-minutes", type=arguments.positive_float, default=4.0,
                 help="the part of the budget kept for the evaluation in flight (default 4)")
  p.add_argument("--row-by-row", action="store_true", help=(
      "distil and evaluate a DM cell row by row (each row's seeds in one program, each "
      "SynSet evaluated alone) instead of the whole cell in one program: the same SynSets "
      "up to float rounding (which grows over the steps), for a device where the cell does "
      "not fit, or to time the two"))
  p.add_argument("--test-every-row", action="store_true", help=(
      "every row reads the test split, the label-free candidates too (for the table of "
      "every candidate; the best label-free row is still chosen on validation alone)"))
  p.add_argument("--label-free-table", action="store_true", help=(
      "with --next-unit: write the label-free tables of the cells from their unit records "
      "(<results>/label-free/: every candidate, vanilla DM and FairDD with labels, and the "
      "goal's check) and run nothing"))
  p.add_argument("--quiet", action="store_true")
  p.add_argument("--tiny", action="store_true", help=(
      "check the script in seconds: the smoke preset at 2 iterations, seeds 0,1, the cell "
      "cmnist5-ipc10, rows vanilla and kde (flags given explicitly still apply); with "
      "another --preset, that preset with the smoke preset's sizes (data, IPC, widths, "
      "evaluation) in place of its own"))
  return p


def set_overrides(items: list[str], preset: str) -> dict:
  """The RunConfig fields of ``--set FIELD=VALUE`` items, each read as the jaxdd flag of that
  name reads it (:func:`jaxdd.runs.paper.set_overrides`)."""
  return paper.set_overrides(items, preset, cli_flags.flag_type)


def main(argv=None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  p = _parser()
  args = p.parse_args(argv)
  if args.tiny:
    p.set_defaults(preset="smoke", seeds="0,1", cells="cmnist5-ipc10",
                   rows="vanilla,kde", iterations=2)
    args = p.parse_args(argv)
  args.argv = argv
  by_name = {c.name: c for c in paper.CELLS}
  cells = [c for c in args.cells.split(",") if c]
  unknown = [c for c in cells if c not in by_name]
  refusal = None
  if unknown:
    refusal = f"unknown cells {unknown}; choose from {list(by_name)}"
  rows = [r for r in args.rows.split(",") if r]
  if not {"vanilla", "kde"} <= set(rows) or set(rows) - set(paper.ROWS):
    refusal = (f"--rows {args.rows!r}: give vanilla, kde and any of "
               f"{[r for r in paper.ROWS if r not in ('vanilla', 'kde')]}")
  if args.budget_minutes is not None and args.budget_minutes <= args.reserve_minutes:
    refusal = (f"--budget-minutes {args.budget_minutes:g} leaves nothing after "
               f"--reserve-minutes {args.reserve_minutes:g}; give a larger budget")
  if not args.next_unit and (args.out or args.plan or args.units != 1 or args.resume_from
                             or args.rows_per_unit is not None or args.take
                             or args.label_free_table):
    refusal = ("--out, --plan, --units, --resume-from, --rows-per-unit, --take and "
               "--label-free-table go with --next-unit; add it")
  elif args.take and (args.out or args.plan or args.units != 1 or args.resume_from
                      or args.budget_minutes is not None):
    refusal = ("--take runs nothing: give it without --out, --plan, --units, --resume-from "
               "and --budget-minutes")
  if not refusal and args.policy is not None:
    try:
      policy_lib.check(args.policy)
    except ValueError as e:
      refusal = f"--policy: {e}"
  settings: dict = {}
  if not refusal:
    try:
      settings = set_overrides(args.set, args.preset)
    except ValueError as e:
      refusal = f"--set: {e}"
  if refusal:
    print(f"paper_table: error: {refusal}", file=sys.stderr)
    return 2
  given = {k: getattr(args, k) for k in ("source", "surrogate_preset", "iterations",
                                         "compute_dtype", "policy")}
  progress_lib.setup_logging(quiet=args.quiet)
  options = paper.Options.from_flags(args)
  q = paper.Queue(options, paper.queue_overrides(options, given, settings))
  order = [by_name[c] for c in cells]
  if args.next_unit:
    return units_main(q, order, args.units, args.plan, args.label_free_table)
  return queue_main(q, order)


def queue_main(q: paper.Queue, order: list[paper.Cell]) -> int:
  """The whole queue in one long invocation (checkpoints on this machine)."""
  try:  # every cell's table checked before any work
    paper.check_queue_tables(q, order)
  except ValueError as e:
    print(f"paper_table: {e}", file=sys.stderr)
    return 1
  left = []
  for i, cell in enumerate(order):
    if paper.cell_finished(q, cell):
      print(f"[paper_table] {cell.name}: finished ({paper.table_path(q, cell)})", flush=True)
      continue
    print(f"[paper_table] {cell.name}", flush=True)
    try:
      data = paper.run_cell(q, cell)
    except paper.BudgetReached:
      left = [c.name for c in order[i:]]
      break
    except KeyboardInterrupt as e:
      rc, word = app.stopped_by(e)
      print(f"paper_table: {word} in {cell.name}; the run in flight is checkpointed; run "
            "the same command again to go on", file=sys.stderr)
      return rc
    except (ValueError, OSError) as e:
      print(f"paper_table: error in {cell.name}: {e}", file=sys.stderr)
      return 1
    paper.write_table(q, cell, data)
    print(paper.render(data), flush=True)
  minutes = (time.monotonic() - q.t0) / 60
  if left:
    print(f"paper_table: the time budget is spent after {minutes:.1f} min; {len(left)} cells "
          f"left ({', '.join(left)}); the runs in flight are checkpointed; run the same "
          "command again to go on", file=sys.stderr)
  else:
    print(f"[paper_table] all {len(order)} cells finished ({minutes:.1f} min)", flush=True)
  return 0


def units_main(q: paper.Queue, order: list[paper.Cell], count: int, plan: bool,
               label_free: bool = False) -> int:
  """``--next-unit``: the next units, each recorded when finished, and the cells' tables."""
  opts = q.options
  try:
    paper.check_units_dir(q)
    paper.check_tables(q, order)
    if opts.take:
      paper.take_back(q, order)
      return 0
    if label_free:
      paths = paper.label_free.write_tables(q, order)
      for path in paths:
        with open(path) as f:
          print(f"{path}\n{paper.render(json.load(f))}\n", flush=True)
      if not paths:
        print(f"[paper_table] no unit of {', '.join(c.name for c in order)} has vanilla DM and "
              f"DM + KDE yet ({opts.units_dir}): no label-free table", flush=True)
      return 0
    todo = paper.next_units(q, order, count)
    if not todo:
      print(f"[paper_table] every unit of {', '.join(c.name for c in order)} is finished "
            f"({opts.units_dir})", flush=True)
      return 0
    for u in todo:
      print(f"[paper_table] plan: {paper.plan_line(q, u)}", flush=True)
    if plan:
      return 0
    if opts.out:
      bundle.check_out(opts.out)
    if opts.resume_from:
      paper.take_over(q, todo[0])
    paper.run_units(q, todo)
  except paper.BudgetReached as e:
    if e.unit is not None:
      print(f"paper_table: the time budget is spent; the unit {e.unit} left no record; what "
            f"the next machine needs to finish it is in {opts.out} ({', '.join(e.handed)}): "
            "carry that folder and add --resume-from <it> to the same command",
            file=sys.stderr)
      return 0
    print("paper_table: the time budget is spent; the unit in flight left no record; its runs "
          "are checkpointed on this machine; run the same command again to go on",
          file=sys.stderr)
    return 0
  except KeyboardInterrupt as e:
    rc, word = app.stopped_by(e)
    kept = (f"; its SynSets are handed over in {opts.out}: add --resume-from <it> to evaluate "
            "them elsewhere" if opts.out and os.path.isfile(os.path.join(opts.out,
                                                                         bundle.HANDOVER))
            else "")
    print(f"paper_table: {word}; the unit in flight left no record{kept}; run the same "
          "command again to go on", file=sys.stderr)
    return rc
  except (ValueError, OSError, schema.FileFormatError) as e:
    print(f"paper_table: error: {e}", file=sys.stderr)
    return 1
  finally:  # surrogates handed over but not imported (a fault before the data were read)
    q.discard_surrogates()
  return 0


if __name__ == "__main__":
  app.run_script(main)  # SIGTERM as Ctrl-C; after either the process ends at once
