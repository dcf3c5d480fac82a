"""The paper-scale table as a queue: every cell, row and seed, resumable across GPU loans.

Cells run in a fixed order (``CELLS``: the paper's setting first). In a DM cell, every row
but the ceiling (which distils other data) and every seed are distilled in ONE compiled
program (:func:`jaxdd.runs.distill_cell`: the weightings are data; the seeds are
independent and the rows of a seed share its draws, common random numbers), and all their
SynSets are evaluated in one program per split (:func:`jaxdd.evaluate.evaluate_synsets`:
the reported rows on validation and test, the candidates on validation only). Other rows
and methods go row by row, each row's seeds in one program where the method allows
(:func:`jaxdd.runs.distill_seeds`), as every row does with ``--row-by-row``. The
best label-free row is chosen among ``LABEL_FREE`` on validation alone (the pre-registered
rule of ``jaxdd tune``: the paper's DM + KDE stays unless a candidate is better on every
seed and by more than twice the noise); a candidate that is not otherwise reported reads
the test split only if chosen. A finished cell is written at once to
``<results>/<cell>.json`` (the results-table data format: columns, rows, notes, date,
commit, machine, command). A rerun skips finished cells, loads finished runs and resumes
stopped ones from their checkpoints.

``--budget-minutes B`` stops the queue cleanly before B minutes: distillation stops at
``B - reserve`` minutes (``--reserve-minutes``, default 4, which must cover one row's
evaluation) after the chunk in flight, checkpointed, and no new row starts after that. The
command then exits 0 and says what is left; the same command goes on from there.

  jaxdd data fetch mnist
  python experiments/paper_table.py --preset paper --budget-minutes 40 \\
      --workdir runs/paper-table --results results/paper-table
  python experiments/paper_table.py --tiny --workdir runs/tiny --results runs/tiny-results  # seconds

``--next-unit`` cuts the same queue into units that each fit one command on a fresh machine:
one seed of a cell, every row. A finished unit leaves one small record under
``<results>/units/`` (written last, atomically); the cell's table is built from whatever
units exist; a rerun anywhere, with only the repository, runs the next unit
(``experiments/next_unit.sh`` does it on a lent GPU; docs/reproducing.md).

  python experiments/paper_table.py --next-unit --plan      # the next unit and its estimate
  python experiments/paper_table.py --next-unit --units 2   # the two next units
  python experiments/paper_table.py --next-unit --take OUT  # what a lent machine left in OUT

Rows: vanilla DM; the paper's DM + KDE; the best label-free setting (chosen on
validation); FairDD with pseudo-groups from clustering the surrogate's embeddings
(label-free) and from DBSCAN of each sampled batch inside the step (label-free, FairDD's
appendix M); FairDD and oracle group-balanced weights with the true bias labels
(reference rows, marked); vanilla DM on unbiased data (the ceiling). Columns: validation
conflicting accuracy (what the choice reads), test overall, aligned, conflicting and worst
group accuracy, DEO_M and DEO_A (FairDD's equalized-odds differences, empty groups
counted as 0 as its code does), the share of synthetic images in their class's aligned
bias at the start and end of distillation, and wall time per seed.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import hashlib
import json
import os
import platform
import shutil
import socket
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxdd import evaluate, models, runs, surrogate, synset
from jaxdd import policy as policy_lib
from jaxdd import progress as progress_lib
from jaxdd._src import io as io_lib
from jaxdd._src import schema
from jaxdd import config as config_lib
from jaxdd import presets
from jaxdd.cli import app, arguments
from jaxdd.cli import flags as cli_flags
from jaxdd.config import RunConfig, get_config
from jaxdd.runs import bundle, driver, profiling, rundir, selection, version
from jaxdd.structs import SynSet


@dataclasses.dataclass(frozen=True)
class Cell:
  """One setting of the table: dataset, conflicting fraction, IPC and method."""
  name: str
  dataset: str
  ratio: float
  ipc: int
  method: str = "dm"


#: The cells, in the order they run (the paper's own setting first).
CELLS = (
    Cell("cmnist5-ipc50", "cmnist", 0.05, 50),
    Cell("cmnist5-ipc10", "cmnist", 0.05, 10),
    Cell("fg10-ipc10", "cmnist_fg", 0.1, 10),
    # FairDD's appendix M: label-free FairDD (in-batch DBSCAN) against FairDD with labels
    Cell("bg10-ipc10", "cmnist_bg", 0.1, 10),
    Cell("bgfmnist5-ipc50", "bg_fmnist", 0.05, 50),
    Cell("cmnist1-ipc50", "cmnist", 0.01, 50),
    Cell("cmnist2-ipc50", "cmnist", 0.02, 50),
    Cell("fg10-ipc50", "cmnist_fg", 0.1, 50),
    Cell("fg5-ipc50", "cmnist_fg", 0.05, 50),
    Cell("bgfmnist5-ipc10", "bg_fmnist", 0.05, 10),
    Cell("cmnist5-ipc10-dsa", "cmnist", 0.05, 10, "dsa"),
)

#: The conflicting fraction at which each dataset is unbiased (every bias value equally likely).
UNBIASED = {"cmnist": 0.9, "bg_fmnist": 0.9, "cmnist_fg": 0.9, "cmnist_bg": 0.9}


@dataclasses.dataclass(frozen=True)
class Row:
  """A row: its RunConfig overrides, its label, whether it reads the true bias labels, the
  methods it exists for, and whether it is reported (else a label-free candidate only)."""
  overrides: dict
  label: str
  bias_labels: bool = False
  methods: tuple = ("dm", "dsa")
  reported: bool = True


ROWS: dict[str, Row] = {
    "vanilla": Row(dict(weighting="none"), "vanilla DM"),
    "kde": Row(dict(weighting="kde"), "DM + KDE (the paper's method)"),
    "kde_init": Row(dict(weighting="kde", init="weighted"), "DM + KDE, init ∝ weight",
                    reported=False),
    "kde_floor_init_is": Row(dict(weighting="kde", init="weighted", real_sampling="weighted",
                                  kde_floor=0.05),
                             "DM + KDE, density floor 0.05, init ∝ weight + importance-sampled "
                             "batches", reported=False),
    "fairdd_pseudo": Row(dict(weighting="fairdd_pseudo"),
                         "FairDD, pseudo-groups from clustering the surrogate's embeddings",
                         methods=("dm",)),
    "fairdd_batch": Row(dict(weighting="fairdd_batch"),
                        "FairDD, pseudo-groups from DBSCAN of each batch (its appendix M)",
                        methods=("dm",)),
    "fairdd": Row(dict(weighting="fairdd"), "FairDD synchronized matching (true bias labels)",
                  bias_labels=True, methods=("dm",)),
    "oracle": Row(dict(weighting="oracle"), "oracle group-balanced weights (true bias labels)",
                  bias_labels=True),
    "ceiling": Row(dict(weighting="none"), "vanilla DM on unbiased data (the ceiling)"),
}

#: The label-free rows the best label-free setting is chosen from; the first is the incumbent.
LABEL_FREE = ("kde", "kde_init", "kde_floor_init_is", "fairdd_pseudo", "fairdd_batch")
#: Rows distilled on other data than the cell's (not in the cell's one program).
OWN_DATA = ("ceiling",)

COLUMNS = ["row", "bias labels", "seeds", "valid conflicting", "test overall", "test aligned",
           "test conflicting", "test worst group", "DEO_M", "DEO_A",
           "in aligned bias, start → end", "distill + eval s / seed"]


class BudgetReached(Exception):
  """The time budget is spent: the queue stopped cleanly (checkpointed)."""


def cell_rows(cell: Cell, only: tuple = tuple(ROWS)) -> list[str]:
  """The rows (reported and candidates) that exist for a cell's method, in table order."""
  return [name for name, row in ROWS.items() if cell.method in row.methods and name in only]


def row_config(base: RunConfig, cell: Cell, name: str, seed: int) -> RunConfig:
  fields = dict(ROWS[name].overrides)
  if name == "ceiling":
    fields["conflict_ratio"] = UNBIASED[cell.dataset]
  return base.replace(seed=seed, **fields)


class Queue:
  """The state of one invocation: the base settings, the deadline, the loaded datasets."""

  def __init__(self, args: argparse.Namespace, overrides: dict):
    self.args, self.overrides = args, overrides
    self.seeds = [int(s) for s in args.seeds.split(",") if s != ""]
    self.rows = tuple(r for r in args.rows.split(",") if r)
    self.t0 = time.monotonic()
    self.deadline = (None if args.budget_minutes is None else
                     self.t0 + 60 * (args.budget_minutes - args.reserve_minutes))
    self._data: dict = {}
    self.legs: list[dict] = []  # the earlier commands of a unit handed over to this one
    self.leg_distill_s = 0.0  # this command's distillation wall time
    self.surrogates: str | None = None  # surrogates handed over, imported with their data
    self.on_distilled = None  # called when a DM cell's runs are distilled, before evaluating

  def base(self, cell: Cell) -> RunConfig:
    config = get_config(self.args.preset, dataset=cell.dataset, conflict_ratio=cell.ratio,
                        ipc=cell.ipc, method=cell.method, **self.overrides)
    if tiny_preset(self.args):  # each dataset's offline default data, not the preset's
      config = config.replace(source=None)
    return config

  def run_data(self, config: RunConfig) -> runs.RunData:
    key = (config.dataset, config.conflict_ratio, config.source, config.severity)
    if key not in self._data:
      self._data = {key: runs.RunData(config)}  # one dataset resident at a time
      if self.surrogates and os.path.isdir(self.surrogates):
        train = self._data[key].train
        for name in sorted(os.listdir(self.surrogates)):
          surrogate.cache.import_entry(os.path.join(self.surrogates, name), train.images,
                                       train.labels)
        shutil.rmtree(os.path.dirname(self.surrogates), ignore_errors=True)
        self.surrogates = None
    return self._data[key]

  def check_time(self) -> None:
    if self.deadline is not None and time.monotonic() >= self.deadline:
      raise BudgetReached()

  def distil(self, configs: list[RunConfig], workdirs: list[str]) -> list[SynSet]:
    """The row's SynSets: its seeds in one program where the method allows."""
    run_data = self.run_data(configs[0])
    done = [os.path.exists(os.path.join(w, "synset", "manifest.json")) for w in workdirs]
    if not all(done):
      self.check_time()
    progress = not self.args.quiet
    deadline = None if self.deadline is None else driver.Deadline(self.deadline)
    try:
      if len(configs) > 1 and runs.seed_groupable(configs[0]):
        return runs.distill_seeds(configs, workdirs, run_data=run_data, progress=progress,
                                  deadline=deadline)
      return [runs.distill_stage(c, w, run_data=run_data, progress=progress, deadline=deadline)
              for c, w in zip(configs, workdirs)]
    except driver.Interrupted:
      if deadline is not None and deadline.passed():
        raise BudgetReached() from None
      raise

  def distil_cell(self, cell: Cell, names: list[str]) -> None:
    """The DM rows x seeds of a cell in ONE program (:func:`jaxdd.runs.distill_cell`); each
    run's share of the wall time is recorded as its distillation time."""
    configs = [row_config(self.base(cell), cell, n, s) for s in self.seeds for n in names]
    workdirs = [os.path.join(self.args.workdir, cell.name, n, f"s{s}")
                for s in self.seeds for n in names]
    done = [os.path.exists(os.path.join(w, "synset", "manifest.json")) for w in workdirs]
    if all(done):
      return
    self.check_time()
    deadline = None if self.deadline is None else driver.Deadline(self.deadline)
    t0, c0 = time.perf_counter(), profiling.compiled()
    try:
      runs.distill_cell(configs, workdirs, num_rows=len(names),
                        run_data=self.run_data(configs[0]), progress=not self.args.quiet,
                        deadline=deadline)
    except driver.Interrupted:
      if deadline is not None and deadline.passed():
        raise BudgetReached() from None
      raise
    finally:
      self.leg_distill_s += time.perf_counter() - t0
    print(f"[paper_table] {cell.name}: {len(configs)} runs distilled in one program in "
          f"{time.perf_counter() - t0:.0f} s (data, surrogates, weights, compilation and "
          f"{configs[0].iterations} steps; {profiling.compiling(c0)})", flush=True)
    # the cell's distillation over every command it took (a handed-over unit: the earlier ones)
    spent = time.perf_counter() - t0 + sum(leg["distill_s"] for leg in self.legs)
    share = spent / len(configs)
    for w in workdirs:
      _timing(w, share)

  def evaluate_many(self, items: list[tuple[RunConfig, str, SynSet, bool]]) -> None:
    """Evaluates the runs not evaluated yet, every SynSet's networks in ONE program
    (:func:`jaxdd.evaluate.evaluate_synsets`): all are scored on validation, and only the
    runs that report a test score (``test``) on the test split (``test_for``); a candidate's
    networks never see it."""
    todo = [(c, w, syn, t) for c, w, syn, t in items if not _evaluated(w, t)]
    if not todo:
      return
    config = todo[0][0]
    run_data = self.run_data(config)
    t0, c0 = time.perf_counter(), profiling.compiled()
    model = models.get(config.eval_model, num_classes=run_data.num_classes)
    valid = run_data.batch(run_data.valid)
    tested = [t for _, _, _, t in todo]
    with policy_lib.use(config.policy):  # the runs' layout policy, as their distillation's
      res = evaluate.evaluate_synsets(
          [runs.run_keys(c)[2] for c, _, _, _ in todo],
          [SynSet(jnp.asarray(s.images), jnp.asarray(s.labels)) for _, _, s, _ in todo],
          run_data.batch(run_data.test) if any(tested) else valid, model=model,
          protocol=config.eval_protocol, num_models=config.num_eval_models, valid=valid,
          select_on="conflicting", test_for=tested)
    spent = time.perf_counter() - t0
    print(f"[paper_table] {len(todo)} SynSets evaluated in one program in {spent:.0f} s "
          f"({config.num_eval_models} networks each, protocol {config.eval_protocol}; "
          f"{profiling.compiling(c0)})", flush=True)
    share = spent / len(todo)
    for (_, w, _, t), r in zip(todo, res):
      synset.atomic_write_json(os.path.join(w, "paper-eval.json"),
                               _eval_record(r, valid, t, share))

  def evaluate(self, config: RunConfig, workdir: str, syn: SynSet, test: bool) -> dict:
    """One seed's evaluation (cached in ``<workdir>/paper-eval.json``): the run's evaluation
    networks scored on the validation split and, with ``test``, on the test split, in one
    program (the same networks for both). Without ``test`` the test split is not read."""
    path = os.path.join(workdir, "paper-eval.json")
    cached = _record(path, EVAL_RECORD)
    if cached is not None and ("test" in cached or not test):
      return cached
    run_data = self.run_data(config)
    t0 = time.perf_counter()
    model = models.get(config.eval_model, num_classes=run_data.num_classes)
    valid = run_data.batch(run_data.valid)
    with policy_lib.use(config.policy):  # the run's layout policy, as its distillation's
      res = evaluate.evaluate_synset(runs.run_keys(config)[2],
                                     SynSet(jnp.asarray(syn.images), jnp.asarray(syn.labels)),
                                     run_data.batch(run_data.test) if test else valid,
                                     model=model, protocol=config.eval_protocol,
                                     num_models=config.num_eval_models,
                                     valid=valid if test else None,
                                     select_on="conflicting", progress=not self.args.quiet)
    out = _eval_record(res, valid, test, time.perf_counter() - t0)
    synset.atomic_write_json(path, out)
    return out


#: What the queue reads back of its own files; a file that does not hold it is computed again.
_SCORES = schema.map_of(schema.list_of(schema.opt(schema.NUM)))
EVAL_RECORD = schema.obj({"valid": schema.obj({"conflicting": schema.list_of(schema.opt(schema.NUM)),
                                               "num_conflicting": schema.INT}),
                          "eval_s": schema.NUM}, optional={"test": _SCORES})
TIMING_RECORD = schema.obj({"distill_s": schema.NUM})
CELL_RECORD = schema.obj({"columns": schema.list_of(schema.STR),
                          "rows": schema.list_of(schema.list_of(schema.STR))})


def _record(path: str, spec) -> dict | None:
  """The queue's own JSON file at ``path`` if it holds ``spec``; None when it is missing, or
  damaged (truncated, edited): then one line says so and the caller computes it again."""
  if not os.path.exists(path):
    return None
  try:
    return schema.read_json(path, spec, fix="it is computed again", working=True)
  except schema.FileFormatError as e:
    if str(e) not in _SAID:  # a file read by several steps of one command is said once
      _SAID.add(str(e))
      print(f"[paper_table] {e}", file=sys.stderr, flush=True)
    return None


#: The damaged files this process has said so of.
_SAID: set = set()


def _evaluated(workdir: str, test: bool) -> bool:
  cached = _record(os.path.join(workdir, "paper-eval.json"), EVAL_RECORD)
  return cached is not None and ("test" in cached or not test)


def _eval_record(res, valid, test: bool, eval_s: float) -> dict:
  """A run's ``paper-eval.json``: what :meth:`Queue.evaluate` writes, from an EvalResult
  (scored on validation in ``valid_scores``, or, without them, validation given as its test
  split)."""
  scored = {m: np.asarray(getattr(res, m), float).tolist()
            for m in ("overall", "aligned", "conflicting", "worst_group")}
  if test:
    deo_m, deo_a = res.equalized_odds()
    scored.update(deo_m=np.asarray(deo_m, float).tolist(),
                  deo_a=np.asarray(deo_a, float).tolist())
  out = {"valid": {"conflicting": (np.asarray(res.valid_scores[0], float).tolist()
                                   if res.valid_scores is not None
                                   else scored["conflicting"]),
                   "num_conflicting": int(np.sum(~np.asarray(valid.aligned)))},
         "eval_s": eval_s}
  if test:
    out["test"] = scored
  return out


def run_row(q: Queue, cell: Cell, name: str, test: bool) -> list[dict]:
  """Distils a row's seeds and evaluates each (on the test split too with ``test``): one record
  per seed."""
  configs = [row_config(q.base(cell), cell, name, s) for s in q.seeds]
  workdirs = [os.path.join(q.args.workdir, cell.name, name, f"s{s}") for s in q.seeds]
  t0 = time.perf_counter()
  syns = q.distil(configs, workdirs)
  per_seed = (time.perf_counter() - t0) / len(configs)
  records = []
  for c, w, syn in zip(configs, workdirs, syns):
    rec = {"seed": c.seed, "workdir": w, **_timing(w, per_seed), **q.evaluate(c, w, syn, test),
           **_bias_share(w)}
    records.append(rec)
  return records


def _timing(workdir: str, distill_s: float) -> dict:
  """The row's distillation wall time per seed, kept from the invocation that distilled it."""
  path = os.path.join(workdir, "paper-timing.json")
  kept = _record(path, TIMING_RECORD)
  if kept is None:
    kept = {"distill_s": distill_s}
    synset.atomic_write_json(path, kept)
  return kept


def _bias_share(workdir: str) -> dict:
  """The share of synthetic images in their class's aligned bias, first and last logged."""
  with open(os.path.join(workdir, "weights.json")) as f:
    traj = json.load(f).get("bias_trajectory", [])
  return {"bias_start": traj[0]["bias_aligned_fraction"] if traj else None,
          "bias_end": traj[-1]["bias_aligned_fraction"] if traj else None}


def run_cell(q: Queue, cell: Cell) -> dict:
  """Every row of a cell, the validation choice, and the cell's table data. A DM cell's rows
  (but the ceiling, on its own data) are distilled in one program, and their SynSets
  evaluated in one program per split."""
  names = cell_rows(cell, q.rows)
  in_cell = [n for n in names if n not in OWN_DATA]
  if cell.method == "dm" and in_cell and not q.args.row_by_row:
    cell_program(q, cell, in_cell)
  records = {}
  for name in names:
    records[name] = run_row(q, cell, name, ROWS[name].reported)
  pool = choice_pool(cell, q.rows)
  scores = {n: np.asarray([r["valid"]["conflicting"] for r in records[n]]) for n in pool}
  n_valid = records[pool[0]][0]["valid"]["num_conflicting"]
  choice = selection.select(scores, pool[0], n_valid)
  chosen = choice["chosen"]
  if not ROWS[chosen].reported:  # the chosen candidate's test split, read now and only now
    q.check_time()
    records[chosen] = run_row(q, cell, chosen, True)
  return table_data(q, cell, records, choice)


def cell_program(q: Queue, cell: Cell, names: list[str]) -> None:
  """The rows ``names`` x the seeds of a DM cell distilled in one program, then evaluated in
  one program per split; :func:`run_row` then finds them finished and evaluated."""
  q.distil_cell(cell, names)
  if q.on_distilled is not None:
    q.on_distilled()
  items = []
  for n in names:
    for s in q.seeds:
      w = os.path.join(q.args.workdir, cell.name, n, f"s{s}")
      syn, _ = synset.load(os.path.join(w, "synset"))
      items.append((row_config(q.base(cell), cell, n, s), w, syn, ROWS[n].reported))
  q.evaluate_many(items)


# ---------------------------------------------------------------------- units of work
# A lent GPU runs one command of at most 10 minutes on a bare machine, so the queue is also
# cut into units that each fit one command and leave one small record: what the table needs.

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
  chunk: int | None = None  # with --rows-per-unit: which group of the seed's rows

  @property
  def name(self) -> str:
    if self.part == "chosen":
      return f"{self.cell.name}/chosen-{self.rows[0]}"
    if self.part == "ceiling":
      return f"{self.cell.name}/s{self.seeds[0]}-ceiling"
    return f"{self.cell.name}/s{self.seeds[0]}" + ("" if self.chunk is None
                                                   else f"-rows{self.chunk}")

  def path(self, units_dir: str) -> str:
    return os.path.join(units_dir, self.name + ".json")


_SEED_RECORD = schema.obj({"seed": schema.INT, "distill_s": schema.NUM, "eval_s": schema.NUM,
                           "bias_start": schema.opt(schema.NUM),
                           "bias_end": schema.opt(schema.NUM), "valid": schema.ANY,
                           "synset_sha256": schema.STR}, optional={"test": _SCORES})
UNIT_RECORD = schema.obj({"unit": schema.STR, "settings": schema.map_of(schema.ANY),
                          "rows": schema.map_of(schema.list_of(_SEED_RECORD)),
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


def check_record(rec: dict, unit: "Unit", path: str) -> None:
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
  out = {"preset": q.args.preset,
         **{k: q.overrides[k] for k in sorted(q.overrides) if k not in LAYOUT}}
  if q.args.rows_per_unit is not None:
    out["rows_per_unit"] = q.args.rows_per_unit
  if tiny_preset(q.args):
    out["tiny"] = True  # the preset's recipe at other sizes: never mixed with its units
  return out


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
        raise ValueError(f"{u.path(q.args.units_dir)} gives the row {name} a seed another "
                         "record of the cell gives it too; move the copy aside")
      out.setdefault(name, []).extend(recs)
  order = {s: i for i, s in enumerate(q.seeds)}
  return ({n: sorted(v, key=lambda r: order.get(r["seed"], len(order))) for n, v in out.items()},
          found)


def read_unit(q: Queue, unit: Unit) -> dict | None:
  """A finished unit's record, or None; a record of other settings is refused in one line."""
  rec = _record(unit.path(q.args.units_dir), UNIT_RECORD)
  if rec is not None:
    check_record(rec, unit, unit.path(q.args.units_dir))
  if rec is not None and rec["settings"] != unit_settings(q):
    raise ValueError(f"{unit.path(q.args.units_dir)} was made with {rec['settings']}, not "
                     f"{unit_settings(q)}; give these settings another --units-dir")
  return rec


def check_units_dir(q: Queue) -> None:
  """Refuses a units folder that holds a record of other settings (another preset, other
  flags, another grouping of rows): its units would be mixed with these."""
  for root, _, names in os.walk(q.args.units_dir):
    for fn in sorted(names):
      rec = _record(os.path.join(root, fn), UNIT_RECORD) if fn.endswith(".json") else None
      if rec is not None and rec["digest"] != record_digest(rec):
        raise ValueError(f"{os.path.join(root, fn)} does not match the digest it carries: it "
                         "was changed after it was written; move it aside (its unit then runs "
                         "again) or restore it")
      if rec is not None and rec["settings"] != unit_settings(q):
        raise ValueError(f"{os.path.join(root, fn)} was made with {rec['settings']}, not "
                         f"{unit_settings(q)}; give these settings another --units-dir")


def own_batch(name: str) -> bool:
  """Whether a row draws its own real batch (importance-sampled by its weights): it cannot
  share the uniform batch of the cell's other rows, nor that batch's forward pass."""
  return ROWS[name].overrides.get("real_sampling") == "weighted"


def unit_order(rows: tuple) -> tuple:
  """A seed's rows in the order ``--rows-per-unit`` groups them: the rows that share the
  uniform real batch first, the rows that draw their own last (each in table order). A row
  with its own batch costs its own real forward, about four shared rows' arithmetic at the
  paper's setting, so the first unit, which holds vanilla DM and DM + KDE, is the cheapest."""
  return tuple(sorted(rows, key=own_batch))


def cell_units(q: Queue, cell: Cell) -> list[Unit]:
  """A cell's seed units in queue order: each seed's rows (with ``--rows-per-unit``, the
  first group of rows of every seed, then the next group), then each seed's ceiling."""
  names = cell_rows(cell, q.rows)
  rows = tuple(n for n in names if n not in OWN_DATA)
  own = tuple(n for n in names if n in OWN_DATA)
  k = q.args.rows_per_unit
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
  if ROWS[choice["chosen"]].reported:
    return []
  return [Unit(cell, "chosen", tuple(q.seeds), (choice["chosen"],))]


def unit_choice(recs: dict, pool: list[str]) -> dict:
  scores = {n: np.asarray([r["valid"]["conflicting"] for r in recs[n]]) for n in pool}
  return selection.select(scores, pool[0], recs[pool[0]][0]["valid"]["num_conflicting"])


def claim_dir(q: Queue, unit: Unit) -> str:
  """Where a queue claims ``unit`` while it runs it: a lock (:func:`jaxdd.runs.rundir.
  workdir_lock`, its process and host) in the units folder, so that another queue on the
  same units folder takes the next unit instead of running this one too."""
  return os.path.join(q.args.units_dir, ".claims", unit.name)


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
                f"{q.args.units_dir}); the next unit", flush=True)
          continue
        todo.append(u)
        if len(todo) == count:
          return todo
  return todo


def estimate_minutes(q: Queue, unit: Unit) -> str:
  """The estimated minutes of a unit, from the finished units of this units folder that ran
  on this kind of machine (their wall time per row), or why there is none."""
  here, per_row = version.machine(), []
  for root, _, files in os.walk(q.args.units_dir):
    for fn in files:
      rec = _record(os.path.join(root, fn), UNIT_RECORD) if fn.endswith(".json") else None
      if rec is not None and rec["machine"] == here and rec["rows"]:
        per_row.append(rec["timings"]["total_s"] / len(rec["rows"]))
  if not per_row:
    return "no estimate yet (no unit of these settings has run on this machine)"
  return (f"about {float(np.median(per_row)) * len(unit.rows) / 60:.1f} min (from "
          f"{len(per_row)} finished units on this machine)")


def run_unit(q: Queue, unit: Unit) -> dict:
  """Runs a unit and writes its record (last, atomically: a unit stopped part-way leaves no
  record; its run folders resume on the same machine)."""
  t0 = time.perf_counter()
  cell, queue_seeds = unit.cell, q.seeds
  q.seeds = list(unit.seeds)  # the unit's seeds while it runs
  q.leg_distill_s = 0.0
  try:
    if unit.part == "rows" and cell.method == "dm" and not q.args.row_by_row:
      cell_program(q, cell, list(unit.rows))
    recs = {n: run_row(q, cell, n, ROWS[n].reported or unit.part == "chosen")
            for n in unit.rows}
  finally:
    q.seeds = queue_seeds
  for rows in recs.values():
    for r in rows:
      w = r.pop("workdir")
      r["synset_sha256"] = _synset_digest(w)
  total = time.perf_counter() - t0 + sum(leg["total_s"] for leg in q.legs)
  timings = {"total_s": total,
             "distill_s": float(sum(r["distill_s"] for v in recs.values() for r in v)),
             "eval_s": float(sum(r["eval_s"] for v in recs.values() for r in v))}
  record = {"unit": unit.name, "settings": unit_settings(q), "rows": recs, "timings": timings,
            "commit": runs.code_version(), "machine": version.machine(),
            "date": datetime.date.today().isoformat(),
            "command": recorded_command(q.args.argv)}
  if q.legs:  # the commands before this one, which the time budget stopped (a handover)
    record["legs"] = q.legs
  record["digest"] = record_digest(record)
  os.makedirs(os.path.dirname(unit.path(q.args.units_dir)), exist_ok=True)
  synset.atomic_write_json(unit.path(q.args.units_dir), record)
  q.legs = []
  return record


def recorded_command(argv: list[str]) -> str:
  """The command a record names: this script and its flags, the folder given to ``--out``
  written ``OUT`` (a lent machine's scratch folder, meaningless anywhere else)."""
  words, out_next = ["python", "experiments/paper_table.py"], False
  for a in argv:
    if out_next:
      a, out_next = "OUT", False
    elif a == "--out":
      out_next = True
    elif a.startswith("--out="):
      a = "--out=OUT"
    words.append(a)
  return " ".join(words)


def unit_dirs(q: Queue, unit: Unit) -> list[str]:
  """The run folders of a unit."""
  return [os.path.join(q.args.workdir, unit.cell.name, n, f"s{s}")
          for n in unit.rows for s in unit.seeds]


def take_over(q: Queue, unit: Unit) -> None:
  """``--resume-from``: the stopped unit's run folders and surrogates from the handover a
  budget left (:func:`hand_over`), for the next unit here, which must be that unit."""
  manifest, packed = bundle.read_handover(q.args.resume_from)
  if manifest["unit"] != unit.name:
    raise ValueError(f"{q.args.resume_from} hands over the unit {manifest['unit']}, but the "
                     f"next unit here is {unit.name}; give the handover of {unit.name} or drop "
                     "--resume-from")
  if manifest["settings"] != unit_settings(q):
    raise ValueError(f"{q.args.resume_from} was made with {manifest['settings']}, not "
                     f"{unit_settings(q)}; give the flags it was made with")
  others = sorted(set(manifest["runs"]) - {os.path.relpath(d, q.args.workdir)
                                           for d in unit_dirs(q, unit)})
  if others:
    raise ValueError(f"{q.args.resume_from} holds runs that are not rows of the unit "
                     f"{unit.name} here ({', '.join(others)}): it was made with another grouping "
                     "of the rows; finish it with the commit that made it, or drop --resume-from")
  staged = bundle.unpack_handover(packed, q.args.workdir, manifest["runs"])
  q.legs, q.surrogates = list(manifest["legs"]), staged
  step = q.legs[-1].get("step", "?") if q.legs else "?"
  print(f"[paper_table] unit {unit.name} goes on from the handover in {q.args.resume_from} "
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
         "command": recorded_command(q.args.argv)}
  manifest = {"unit": unit.name, "settings": unit_settings(q),
              "runs": [os.path.relpath(d, q.args.workdir) for d in dirs],
              "surrogates": [os.path.basename(e) for e in entries], "legs": q.legs + [leg]}
  return bundle.write_handover(out, manifest, bundle.pack_handover(q.args.workdir, dirs,
                                                                   entries))


def _synset_digest(workdir: str) -> str:
  """The sha256 of a run's SynSet arrays, as its manifest records them."""
  with open(os.path.join(workdir, "synset", "manifest.json")) as f:
    files = json.load(f)["files"]
  return files["arrays.npz"]


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
                             f"{q.args.units_dir} ({len(units)} units); each unit's commit "
                             "and machine are given."],
      units={"dir": q.args.units_dir, "settings": unit_settings(q)})
  return data


_BUILT_FROM = "Built from the unit records in "


def table_source(path: str) -> dict | None:
  """What the table at ``path`` was built from: ``{"dir", "settings"}`` of its units
  (``settings`` None in a table from before tables named them), ``{}`` for the whole queue's
  table, None when there is no readable table there (one is computed)."""
  try:
    with open(path) as f:
      data = json.load(f)
  except (OSError, ValueError):
    return None
  if not isinstance(data, dict) or not isinstance(data.get("rows"), list):
    return None
  if isinstance(data.get("units"), dict):
    return {"dir": data["units"].get("dir"), "settings": data["units"].get("settings")}
  for note in data.get("notes", []):
    if isinstance(note, str) and note.startswith(_BUILT_FROM):
      return {"dir": note[len(_BUILT_FROM):].rsplit(" (", 1)[0], "settings": None}
  return {}


def check_tables(q: Queue, cells: list[Cell]) -> None:
  """Refuses a results folder whose table of one of ``cells`` another source wrote (the whole
  queue, the units of another folder or of other settings): these units' table would
  replace it."""
  for cell in cells:
    path = os.path.join(q.args.results, f"{cell.name}.json")
    source = table_source(path)
    if source is None:
      continue
    if source == {}:
      raise ValueError(f"{path} is the whole queue's table of {cell.name}; these units' table "
                       "would replace it: give the units another --results")
    same_dir = os.path.abspath(source["dir"] or "") == os.path.abspath(q.args.units_dir)
    if not same_dir or source["settings"] not in (None, unit_settings(q)):
      raise ValueError(f"{path} is the table of the units in {source['dir']}"
                       + (f" ({source['settings']})" if source["settings"] else "")
                       + f", not of {q.args.units_dir} ({unit_settings(q)}); these units' "
                       "table would replace it: give them another --results")


def _pm(values) -> str:
  """``mean ± std`` over seeds; a row with one seed has no spread to give: its value alone."""
  kept = [v for v in values if v is not None and not np.isnan(v)]
  return f"{100 * kept[0]:.1f}" if len(kept) == 1 else runs.format_pm(values)


def table_row(label: str, row: Row, recs: list[dict]) -> list[str]:
  mean = lambda split, m: [float(np.mean(r[split][m])) for r in recs]  # noqa: E731
  bias = ("–" if any(r["bias_start"] is None for r in recs) else
          f"{_pm([r['bias_start'] for r in recs])} → {_pm([r['bias_end'] for r in recs])}")
  secs = np.median([r["distill_s"] + r["eval_s"] for r in recs])
  return [label, "yes" if row.bias_labels else "no", ",".join(str(r["seed"]) for r in recs),
          _pm(mean("valid", "conflicting")), _pm(mean("test", "overall")),
          _pm(mean("test", "aligned")), _pm(mean("test", "conflicting")),
          _pm(mean("test", "worst_group")), _pm(mean("test", "deo_m")),
          _pm(mean("test", "deo_a")), bias, f"{secs:.0f}"]


def table_data(q: Queue, cell: Cell, records: dict, choice: dict) -> dict:
  """The cell's table data from each row's per-seed records (a row missing from ``records``
  is left out; ``choice['pending']``: the chosen candidate's test split is not read yet)."""
  rows = []
  for name in cell_rows(cell, q.rows):
    if ROWS[name].reported and records.get(name):
      rows.append(table_row(ROWS[name].label, ROWS[name], records[name]))
    if name == "kde":
      chosen = choice["chosen"]
      label = f"best label-free, chosen on validation: {ROWS[chosen].label}"
      if choice.get("pending"):
        rows.append([label, "no", ",".join(str(r["seed"]) for r in records[chosen]),
                     _pm([float(np.mean(r["valid"]["conflicting"])) for r in records[chosen]])]
                    + ["its test split is read by the unit "
                       f"{cell.name}/chosen-{chosen}"] + ["–"] * 7)
      else:
        rows.append(table_row(label, ROWS[chosen], records[chosen]))
  n_models = len(records["vanilla"][0]["test"]["overall"])
  wanted = [n for n in cell_rows(cell, q.rows) if ROWS[n].reported]
  complete = (not choice.get("pending")
              and all(len(records.get(n, [])) == len(q.seeds) for n in wanted))
  notes = [
      f"{cell.dataset}, {100 * cell.ratio:g} % bias-conflicting, IPC {cell.ipc}, "
      f"{cell.method.upper()}, preset `{q.args.preset}`; ± is the sample standard deviation "
      "over each row's distillation seeds (the column seeds; one seed: its value alone) of "
      "each seed's mean over "
      f"{n_models} evaluation networks.",
      f"The best label-free row: {choice['reason']} (criterion: validation conflicting "
      f"accuracy; candidates {', '.join(choice_pool(cell, q.rows))}).",
      "DEO_M / DEO_A: FairDD's equalized-odds differences on the test split (per class, the "
      "largest minus the smallest accuracy over bias groups; their maximum / mean over "
      "classes), empty groups counted as 0.",
  ]
  return {"columns": COLUMNS, "rows": rows, "notes": notes, "cell": dataclasses.asdict(cell),
          "complete": complete,
          "choice": {k: (float(v) if isinstance(v, (float, np.floating)) else v)
                     for k, v in choice.items()},
          "date": datetime.date.today().isoformat(), "commit": runs.code_version(),
          "machine": machine(), "command": [recorded_command(q.args.argv)]}


def choice_pool(cell: Cell, only: tuple) -> list[str]:
  return [n for n in LABEL_FREE if n in cell_rows(cell, only)]


def machine() -> str:
  dev = jax.devices()[0]
  if dev.platform == "cpu":
    return f"{os.cpu_count()}-core {platform.machine()} CPU"
  return f"{jax.device_count()} x {dev.device_kind}"


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
  p.add_argument("--cells", default=",".join(c.name for c in CELLS),
                 help="the cells to run, in the queue's order")
  p.add_argument("--rows", default=",".join(ROWS),
                 help="the rows to run (vanilla and kde are always needed)")
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
  p.add_argument("--quiet", action="store_true")
  p.add_argument("--tiny", action="store_true", help=(
      "check the script in seconds: the smoke preset at 2 iterations, seeds 0,1, the cell "
      "cmnist5-ipc10, rows vanilla and kde (flags given explicitly still apply); with "
      "another --preset, that preset with the smoke preset's sizes (data, IPC, widths, "
      "evaluation) in place of its own"))
  return p


#: What --tiny puts in place of another preset's sizes: the smoke preset's (and each dataset's
#: offline default data, :meth:`Queue.base`).
TINY_SIZES = {k: v for k, v in presets.RUN["smoke"].items()
              if k not in ("ipc", "iterations", "log_every", "checkpoint_every")}

def tiny_preset(args: argparse.Namespace) -> bool:
  """Whether the run is --tiny with a preset other than smoke (its recipe, smoke's sizes)."""
  return bool(args.tiny) and args.preset != "smoke"


#: The fields a cell sets; --set does not take them.
CELL_FIELDS = ("dataset", "conflict_ratio", "ipc", "method", "seed")


def set_overrides(items: list[str], preset: str) -> dict:
  """The RunConfig fields of ``--set FIELD=VALUE`` items, each of its field's type, checked
  by building the preset's config with them (a bad name or value is one ValueError)."""
  out: dict = {}
  for item in items:
    name, sep, text = item.partition("=")
    name = name.strip().replace("-", "_")
    if not sep or not name or not text:
      raise ValueError(f"{item!r} is not FIELD=VALUE (e.g. lr_img=30)")
    if name not in config_lib.OWNER or name in CELL_FIELDS or name in out:
      raise ValueError(
          f"{name!r} is " + ("given twice" if name in out else "set by the cell" if name in
                             CELL_FIELDS else "not a run setting")
          + "; give each run setting once, other than "
          f"{', '.join(CELL_FIELDS)} (see jaxdd distill --help)")
    field = next(f for f in dataclasses.fields(config_lib.PARTS[config_lib.OWNER[name]])
                 if f.name == name)
    kind = cli_flags.flag_type(field)
    try:
      out[name] = kind(text)
    except ValueError:
      raise ValueError(f"{name}={text!r} is not a{'n' if kind is int else ''} "
                       f"{kind.__name__}") from None
  try:
    get_config(preset, **out)
  except (TypeError, ValueError) as e:
    raise ValueError(str(e)) from None
  return out


def main(argv=None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  p = _parser()
  args = p.parse_args(argv)
  if args.tiny:
    p.set_defaults(preset="smoke", seeds="0,1", cells="cmnist5-ipc10",
                   rows="vanilla,kde", iterations=2)
    args = p.parse_args(argv)
  args.argv = argv
  args.units_dir = args.units_dir or os.path.join(args.results, "units")
  by_name = {c.name: c for c in CELLS}
  cells = [c for c in args.cells.split(",") if c]
  unknown = [c for c in cells if c not in by_name]
  refusal = None
  if unknown:
    refusal = f"unknown cells {unknown}; choose from {list(by_name)}"
  rows = [r for r in args.rows.split(",") if r]
  if not {"vanilla", "kde"} <= set(rows) or set(rows) - set(ROWS):
    refusal = (f"--rows {args.rows!r}: give vanilla, kde and any of "
               f"{[r for r in ROWS if r not in ('vanilla', 'kde')]}")
  if args.budget_minutes is not None and args.budget_minutes <= args.reserve_minutes:
    refusal = (f"--budget-minutes {args.budget_minutes:g} leaves nothing after "
               f"--reserve-minutes {args.reserve_minutes:g}; give a larger budget")
  if not args.next_unit and (args.out or args.plan or args.units != 1 or args.resume_from
                             or args.rows_per_unit is not None or args.take):
    refusal = ("--out, --plan, --units, --resume-from, --rows-per-unit and --take go with "
               "--next-unit; add it")
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
  overrides = {k: v for k, v in (("source", args.source or ("full" if args.preset == "paper"
                                                                   else None)),
                                 ("surrogate_preset", args.surrogate_preset),
                                 ("iterations", args.iterations),
                                 ("compute_dtype", args.compute_dtype),
                                 ("policy", args.policy)) if v is not None}
  if tiny_preset(args):  # the preset's recipe at the smoke preset's sizes
    overrides.update({k: v for k, v in TINY_SIZES.items() if k not in settings})
  overrides.update(settings)
  progress_lib.setup_logging(quiet=args.quiet)
  q = Queue(args, overrides)
  order = [by_name[c] for c in cells]
  if args.next_unit:
    return units_main(q, order)
  return queue_main(q, order)


def queue_main(q: Queue, order: list[Cell]) -> int:
  """The whole queue in one long invocation (checkpoints on this machine)."""
  args, left = q.args, []
  for cell in order:  # every cell's table checked before any work
    path = os.path.join(args.results, f"{cell.name}.json")
    source = table_source(path)
    if source:
      print(f"paper_table: {path} is the table of the units in {source['dir']}; the whole "
            "queue's table would replace it: give the queue another --results", file=sys.stderr)
      return 1
  for i, cell in enumerate(order):
    path = os.path.join(args.results, f"{cell.name}.json")
    done = _record(path, CELL_RECORD)
    if done is not None and done.get("complete", True):
      print(f"[paper_table] {cell.name}: finished ({path})", flush=True)
      continue
    print(f"[paper_table] {cell.name}", flush=True)
    try:
      data = run_cell(q, cell)
    except BudgetReached:
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
    os.makedirs(args.results, exist_ok=True)
    synset.atomic_write_json(path, data)
    print(render(data), flush=True)
  minutes = (time.monotonic() - q.t0) / 60
  if left:
    print(f"paper_table: the time budget is spent after {minutes:.1f} min; {len(left)} cells "
          f"left ({', '.join(left)}); the runs in flight are checkpointed; run the same "
          "command again to go on", file=sys.stderr)
  else:
    print(f"[paper_table] all {len(order)} cells finished ({minutes:.1f} min)", flush=True)
  return 0


def units_main(q: Queue, order: list[Cell]) -> int:
  """``--next-unit``: the next units, each recorded when finished, and the cells' tables."""
  args = q.args
  try:
    check_units_dir(q)
    check_tables(q, order)
    if args.take:
      return take_back(q, order)
    todo = next_units(q, order, args.units)
    if not todo:
      print(f"[paper_table] every unit of {', '.join(c.name for c in order)} is finished "
            f"({args.units_dir})", flush=True)
      return 0
    for u in todo:
      extra = {k: v for k, v in unit_settings(q).items() if k != "preset"}
      print(f"[paper_table] plan: unit {u.name}: rows {', '.join(u.rows)}; seeds "
            f"{','.join(map(str, u.seeds))}; preset {args.preset}"
            + "".join(f", {k} {v}" for k, v in extra.items())
            + f"; {estimate_minutes(q, u)}", flush=True)
    if args.plan:
      return 0
    if args.out:
      bundle.check_out(args.out)
    if args.resume_from:
      take_over(q, todo[0])
    done, current = [], None
    for u in todo:
      q.check_time()
      current = u
      if args.out and args.budget_minutes is not None and len(todo) == 1:
        # the finished SynSets handed over before the evaluation: what comes back if the
        # command is killed in it (replaced by the record when the unit finishes)
        q.on_distilled = lambda: print(
            f"[paper_table] handed over before the evaluation in {args.out}: "
            f"{', '.join(hand_over(q, current, args.out))}", flush=True)
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
      if args.out:
        bundle.remove_handover(args.out)
      current = None
      done.append(u)
      print(f"[paper_table] unit {u.name} finished in {rec['timings']['total_s'] / 60:.1f} "
            f"min ({u.path(args.units_dir)})", flush=True)
      data = units_table(q, u.cell)
      if data is not None:
        os.makedirs(args.results, exist_ok=True)
        synset.atomic_write_json(os.path.join(args.results, f"{u.cell.name}.json"), data)
        print(render(data), flush=True)
    if args.out:
      names = bundle.write_out(
          args.out, [(f"unit-{u.name.replace('/', '-')}.json", u.path(args.units_dir))
                     for u in done], args.workdir,
          [os.path.join(args.workdir, u.cell.name, n, f"s{s}")
           for u in done for n in u.rows for s in u.seeds])
      packed = any(n.startswith("runs.tar.gz") for n in names)
      print(f"[paper_table] left in {args.out}: {', '.join(names)}"
            + ("" if packed else " (the runs did not fit in the file limits: records only)"),
            flush=True)
  except BudgetReached:
    if args.out and current is not None:
      try:
        names = hand_over(q, current, args.out)
      except (ValueError, OSError) as e:
        print(f"paper_table: error: the time budget is spent and the unit in flight could not "
              f"be handed over: {e}", file=sys.stderr)
        return 1
      print(f"paper_table: the time budget is spent; the unit {current.name} left no record; "
            f"what the next machine needs to finish it is in {args.out} ({', '.join(names)}): "
            f"carry that folder and add --resume-from <it> to the same command",
            file=sys.stderr)
      return 0
    print("paper_table: the time budget is spent; the unit in flight left no record; its runs "
          "are checkpointed on this machine; run the same command again to go on",
          file=sys.stderr)
    return 0
  except KeyboardInterrupt as e:
    rc, word = app.stopped_by(e)
    kept = (f"; its SynSets are handed over in {args.out}: add --resume-from <it> to evaluate "
            "them elsewhere" if args.out and os.path.isfile(os.path.join(args.out,
                                                                         bundle.HANDOVER))
            else "")
    print(f"paper_table: {word}; the unit in flight left no record{kept}; run the same "
          "command again to go on", file=sys.stderr)
    return rc
  except (ValueError, OSError, schema.FileFormatError) as e:
    print(f"paper_table: error: {e}", file=sys.stderr)
    return 1
  finally:  # surrogates handed over but not imported (a fault before the data were read)
    if q.surrogates:
      shutil.rmtree(os.path.dirname(q.surrogates), ignore_errors=True)
      q.surrogates = None
  return 0


def take_back(q: Queue, order: list[Cell]) -> int:
  """``--take OUT``: what ``next_unit.sh run OUT`` left, brought into this checkout. Unit
  records go into the units folder and their runs into the work folder, then the cells'
  tables are built again; a handover goes into ``--handover-dir`` for the next loan. Every
  file is checked (the records against these settings and this queue's units, the parts
  against their sha256) and nothing is replaced before anything is written; taking the same
  OUT twice changes nothing."""
  args = q.args
  src = args.take
  if not os.path.isdir(src):
    raise ValueError(f"--take {src} is not a folder; give the OUT folder the lent machine left")
  names = sorted(os.listdir(src))
  record_files = [n for n in names if n.startswith("unit-") and n.endswith(".json")]
  if not record_files and bundle.HANDOVER not in names:
    raise ValueError(f"{src} holds neither a unit record (unit-*.json) nor a handover "
                     f"({bundle.HANDOVER}); give the folder next_unit.sh run left")
  known = {u.name: u for c in order for u in cell_units(q, c) + chosen_units(q, c)}
  held_path = os.path.join(args.handover_dir, bundle.HANDOVER)
  held = (schema.read_json(held_path, bundle.HANDOVER_RECORD, fix="remove it by hand")
          if os.path.isfile(held_path) else None)  # the handover kept for the next loan
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
    dst = u.path(args.units_dir)
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
  # the runs come with new records only (taken already: they were unpacked then)
  plain, run_dirs = bundle.read_runs(src) if takes else (b"", [])
  manifest = None
  if bundle.HANDOVER in names:
    manifest, _ = bundle.read_handover(src)  # every part against its sha256
    if manifest["unit"] not in known or manifest["settings"] != unit_settings(q):
      raise ValueError(f"{src} hands over the unit {manifest['unit']} made with "
                       f"{manifest['settings']}, not a unit of these settings "
                       f"({unit_settings(q)}); give the flags it was run with")
    if (os.path.exists(known[manifest["unit"]].path(args.units_dir))
        or any(u.name == manifest["unit"] for u, _, _ in takes)):
      raise ValueError(f"{src} hands over the unit {manifest['unit']}, which is finished (its "
                       "record is taken); the handover is not needed")
    if held is not None:
      # the new one continues the kept one: the same unit, the kept legs as its first ones
      if (held["unit"] != manifest["unit"]
          or manifest["legs"][:len(held["legs"])] != held["legs"]):
        raise ValueError(f"{args.handover_dir} holds the handover of {held['unit']} after "
                         f"{len(held['legs'])} command(s), which the one in {src} "
                         f"({manifest['unit']}, {len(manifest['legs'])}) does not continue; "
                         "finish that unit first, or move the folder aside by hand")
    elif os.path.lexists(args.handover_dir) and (not os.path.isdir(args.handover_dir)
                                                  or os.listdir(args.handover_dir)):
      raise ValueError(f"{args.handover_dir} holds something other than a handover; give "
                       "another --handover-dir")
  # everything checked: the runs first, then the records (a record names finished runs)
  bundle.unpack_runs(plain, run_dirs, args.workdir)
  for u, dst, data in takes:
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    io_lib.atomic_write_bytes(dst, data)
    print(f"[paper_table] took the record of unit {u.name}: {dst}", flush=True)
  if run_dirs:
    print(f"[paper_table] took {len(run_dirs)} run(s) into {args.workdir}", flush=True)
  if held is not None and any(u.name == held["unit"] for u, _, _ in takes):
    shutil.rmtree(args.handover_dir)
    print(f"[paper_table] removed {args.handover_dir}: its unit {held['unit']} is finished",
          flush=True)
  if manifest is not None:
    bundle.copy_handover(src, args.handover_dir)
    step = manifest["legs"][-1].get("step", "?") if manifest["legs"] else "?"
    print(f"[paper_table] kept the handover of unit {manifest['unit']} ({len(manifest['legs'])} "
          f"command(s), stopped at step {step}) in {args.handover_dir}: carry it to the next "
          "loan", flush=True)
  for cell in cells:
    data = units_table(q, cell)
    if data is None:
      print(f"[paper_table] the table of {cell.name} waits for the first seed's vanilla and kde "
            "rows", flush=True)
      continue
    os.makedirs(args.results, exist_ok=True)
    synset.atomic_write_json(os.path.join(args.results, f"{cell.name}.json"), data)
    print(render(data), flush=True)
  return 0


def render(data: dict) -> str:
  lines = ["| " + " | ".join(data["columns"]) + " |", "|---" * len(data["columns"]) + "|"]
  lines += ["| " + " | ".join(r) + " |" for r in data["rows"]]
  return "\n".join(lines)


if __name__ == "__main__":
  app.run_script(main)  # SIGTERM as Ctrl-C; after either the process ends at once
