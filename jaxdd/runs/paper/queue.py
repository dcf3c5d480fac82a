"""The paper table's queue: one invocation's settings, deadline and data, and its run files.

A :class:`Queue` holds what one command of the paper table runs (:class:`Options`: the preset,
the seeds and rows, the folders, the time budget) and the settings on top of the preset. It
distils a row's seeds (in one program where the method allows), a DM cell's rows x seeds in
ONE program (:func:`jaxdd.runs.distill_cell`), and evaluates SynSets (every SynSet's networks
in one program, :func:`jaxdd.evaluate.evaluate_synsets`). Each run keeps its evaluation in
``paper-eval.json`` and its distillation wall time in ``paper-timing.json``: a rerun reads them
back instead of computing them again (a damaged one is said in one line and computed again).
When the time budget is spent, :class:`BudgetReached` stops the queue cleanly: distillation
stops after the chunk in flight, checkpointed.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import time

import jax.numpy as jnp
import numpy as np

from jaxdd import config as config_lib
from jaxdd import evaluate, models, presets, runs, surrogate, synset
from jaxdd import policy as policy_lib
from jaxdd._src import schema
from jaxdd.config import RunConfig, get_config
from jaxdd.runs import driver, profiling
from jaxdd.runs.paper.cells import CELL_FIELDS, DEFAULT_ROWS, Cell, row_config
from jaxdd.structs import SynSet


class BudgetReached(Exception):
  """The time budget is spent: the queue stopped cleanly (checkpointed). ``unit`` and
  ``handed``: the unit in flight and the files it was handed over in, when it was."""

  def __init__(self, unit: str | None = None, handed: tuple = ()):
    super().__init__(unit)
    self.unit, self.handed = unit, tuple(handed)


@dataclasses.dataclass(frozen=True)
class Options:
  """What one invocation of the queue runs and where it keeps it (the paper table's flags).

  ``seeds`` and ``rows``: what each cell runs; ``workdir``: the run folders; ``results``: the
  cells' tables; ``units_dir``: the unit records (empty: ``<results>/units``);
  ``rows_per_unit``: at most this many rows in a unit; ``budget_minutes`` less
  ``reserve_minutes``: when distillation stops; ``row_by_row``: a DM cell row by row, not in
  one program; ``test_every_row``: every row's SynSets read the test split (the label-free
  candidates too, for a table of them; the choice is still made on validation alone); ``tiny``: another preset at the smoke preset's sizes; ``out``,
  ``resume_from``, ``take`` and ``handover_dir``: the folders a lent machine leaves and takes
  back; ``argv``: the command's flags, as a record names them."""
  preset: str = "paper"
  seeds: tuple = (0, 1, 2)
  rows: tuple = DEFAULT_ROWS
  workdir: str = "runs/paper-table"
  results: str = "results/paper-table"
  units_dir: str = ""
  rows_per_unit: int | None = None
  budget_minutes: float | None = None
  reserve_minutes: float = 4.0
  row_by_row: bool = False
  test_every_row: bool = False
  quiet: bool = False
  tiny: bool = False
  out: str | None = None
  resume_from: str | None = None
  take: str | None = None
  handover_dir: str = ".handover"
  argv: tuple = ()

  def __post_init__(self):
    if not self.units_dir:
      object.__setattr__(self, "units_dir", os.path.join(self.results, "units"))

  @classmethod
  def from_flags(cls, flags) -> Options:
    """The options of an object holding them as attributes (the command's parsed flags):
    ``seeds`` and ``rows`` as comma-separated text; a missing one keeps its default."""
    given = {f.name: getattr(flags, f.name) for f in dataclasses.fields(cls)
             if getattr(flags, f.name, None) is not None}
    if isinstance(given.get("seeds"), str):
      given["seeds"] = tuple(int(s) for s in given["seeds"].split(",") if s != "")
    if isinstance(given.get("rows"), str):
      given["rows"] = tuple(r for r in given["rows"].split(",") if r)
    return cls(**{k: tuple(v) if k == "argv" else v for k, v in given.items()})


#: What --tiny puts in place of another preset's sizes: the smoke preset's (and each dataset's
#: offline default data, :meth:`Queue.base`).
TINY_SIZES = {k: v for k, v in presets.RUN["smoke"].items()
              if k not in ("ipc", "iterations", "log_every", "checkpoint_every")}


def tiny_preset(options) -> bool:
  """Whether the run is tiny with a preset other than smoke (its recipe, smoke's sizes)."""
  return bool(options.tiny) and options.preset != "smoke"


def queue_overrides(options, given: dict, settings: dict) -> dict:
  """The RunConfig fields every run of a queue sets on top of its preset: the fields
  ``given`` that are not None (the paper preset's full data unless a ``source`` is given);
  with a tiny other preset, the smoke preset's sizes (:data:`TINY_SIZES`); then
  ``settings`` (:func:`set_overrides`), which win.

  >>> queue_overrides(Options(), {"source": None, "iterations": 5}, {"lr_img": 3.0})
  {'source': 'full', 'iterations': 5, 'lr_img': 3.0}
  """
  given = dict(given, source=given.get("source") or ("full" if options.preset == "paper"
                                                     else None))
  overrides = {k: v for k, v in given.items() if v is not None}
  if tiny_preset(options):  # the preset's recipe at the smoke preset's sizes
    overrides.update({k: v for k, v in TINY_SIZES.items() if k not in settings})
  overrides.update(settings)
  return overrides


def set_overrides(items: list[str], preset: str, flag_type) -> dict:
  """The RunConfig fields of ``FIELD=VALUE`` items, each of its field's type (``flag_type``:
  a dataclass field -> the function that reads its value from text, as its command-line flag
  does), checked by building the preset's config with them (a bad name or value is one
  ValueError)."""
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
    kind = flag_type(field)
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


def recorded_command(argv) -> str:
  """The command a record names: the paper table's script and its flags, the folder given to
  ``--out`` written ``OUT`` (a lent machine's scratch folder, meaningless anywhere else).

  >>> recorded_command(["--next-unit", "--out", "scratch/x", "--tiny"])
  'python experiments/paper_table.py --next-unit --out OUT --tiny'
  """
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


#: What the queue reads back of its own files; a file that does not hold it is computed again.
SCORES = schema.map_of(schema.list_of(schema.opt(schema.NUM)))
EVAL_RECORD = schema.obj({"valid": schema.obj({"conflicting": schema.list_of(schema.opt(schema.NUM)),
                                               "num_conflicting": schema.INT}),
                          "eval_s": schema.NUM}, optional={"test": SCORES})
TIMING_RECORD = schema.obj({"distill_s": schema.NUM})
CELL_RECORD = schema.obj({"columns": schema.list_of(schema.STR),
                          "rows": schema.list_of(schema.list_of(schema.STR))})


class Queue:
  """The state of one invocation: the base settings, the deadline, the loaded datasets.

  ``options``: an :class:`Options`, or an object holding them as attributes (the command's
  parsed flags, :meth:`Options.from_flags`); ``overrides``: the RunConfig fields set on top
  of the preset in every run."""

  def __init__(self, options, overrides: dict):
    self.options = options if isinstance(options, Options) else Options.from_flags(options)
    self.overrides = overrides
    self.seeds = list(self.options.seeds)
    self.rows = tuple(self.options.rows)
    self.t0 = time.monotonic()
    budget = self.options.budget_minutes
    self.deadline = (None if budget is None else
                     self.t0 + 60 * (budget - self.options.reserve_minutes))
    self._data: dict = {}
    self._said: set = set()  # the damaged files said so of (a file read by many steps: once)
    self.legs: list[dict] = []  # the earlier commands of a unit handed over to this one
    self.leg_distill_s = 0.0  # this command's distillation wall time
    self.surrogates: str | None = None  # surrogates handed over, imported with their data
    self.on_distilled = None  # called when a DM cell's runs are distilled, before evaluating

  def base(self, cell: Cell) -> RunConfig:
    """The configuration of ``cell`` under this queue's preset and settings."""
    config = get_config(self.options.preset, dataset=cell.dataset, conflict_ratio=cell.ratio,
                        ipc=cell.ipc, method=cell.method, **self.overrides)
    if tiny_preset(self.options):  # each dataset's offline default data, not the preset's
      config = config.replace(source=None)
    return config

  def run_data(self, config: RunConfig) -> runs.RunData:
    """The data of a run, one dataset resident at a time; surrogates handed over are imported
    with the first data read."""
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

  def discard_surrogates(self) -> None:
    """Removes surrogates handed over but not imported (a fault before the data were read)."""
    if self.surrogates:
      shutil.rmtree(os.path.dirname(self.surrogates), ignore_errors=True)
      self.surrogates = None

  def check_time(self) -> None:
    """Raises :class:`BudgetReached` once the distillation's share of the budget is spent."""
    if self.deadline is not None and time.monotonic() >= self.deadline:
      raise BudgetReached()

  def record(self, path: str, spec) -> dict | None:
    """The queue's own JSON file at ``path`` if it holds ``spec``; None when it is missing, or
    damaged (truncated, edited): then one line says so and the caller computes it again."""
    if not os.path.exists(path):
      return None
    try:
      return schema.read_json(path, spec, fix="it is computed again", working=True)
    except schema.FileFormatError as e:
      if str(e) not in self._said:  # a file read by several steps of one command is said once
        self._said.add(str(e))
        print(f"[paper_table] {e}", file=sys.stderr, flush=True)
      return None

  def distil(self, configs: list[RunConfig], workdirs: list[str]) -> list[SynSet]:
    """The row's SynSets: its seeds in one program where the method allows."""
    run_data = self.run_data(configs[0])
    done = [os.path.exists(os.path.join(w, "synset", "manifest.json")) for w in workdirs]
    if not all(done):
      self.check_time()
    progress = not self.options.quiet
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
    workdirs = [os.path.join(self.options.workdir, cell.name, n, f"s{s}")
                for s in self.seeds for n in names]
    done = [os.path.exists(os.path.join(w, "synset", "manifest.json")) for w in workdirs]
    if all(done):
      return
    self.check_time()
    deadline = None if self.deadline is None else driver.Deadline(self.deadline)
    t0, c0 = time.perf_counter(), profiling.compiled()
    try:
      runs.distill_cell(configs, workdirs, num_rows=len(names),
                        run_data=self.run_data(configs[0]), progress=not self.options.quiet,
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
      self.timing(w, share)

  def evaluate_many(self, items: list[tuple[RunConfig, str, SynSet, bool]]) -> None:
    """Evaluates the runs not evaluated yet, every SynSet's networks in ONE program
    (:func:`jaxdd.evaluate.evaluate_synsets`): all are scored on validation, and only the
    runs that report a test score (``test``) on the test split (``test_for``); a candidate's
    networks never see it."""
    todo = [(c, w, syn, t) for c, w, syn, t in items if not self._evaluated(w, t)]
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
                               eval_record(r, valid, t, share))

  def evaluate(self, config: RunConfig, workdir: str, syn: SynSet, test: bool) -> dict:
    """One seed's evaluation (cached in ``<workdir>/paper-eval.json``): the run's evaluation
    networks scored on the validation split and, with ``test``, on the test split, in one
    program (the same networks for both). Without ``test`` the test split is not read."""
    path = os.path.join(workdir, "paper-eval.json")
    cached = self.record(path, EVAL_RECORD)
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
                                     select_on="conflicting", progress=not self.options.quiet)
    out = eval_record(res, valid, test, time.perf_counter() - t0)
    synset.atomic_write_json(path, out)
    return out

  def timing(self, workdir: str, distill_s: float) -> dict:
    """The run's distillation wall time, kept from the invocation that distilled it (in
    ``<workdir>/paper-timing.json``; ``distill_s`` when none is kept yet)."""
    path = os.path.join(workdir, "paper-timing.json")
    kept = self.record(path, TIMING_RECORD)
    if kept is None:
      kept = {"distill_s": distill_s}
      synset.atomic_write_json(path, kept)
    return kept

  def _evaluated(self, workdir: str, test: bool) -> bool:
    cached = self.record(os.path.join(workdir, "paper-eval.json"), EVAL_RECORD)
    return cached is not None and ("test" in cached or not test)


def eval_record(res, valid, test: bool, eval_s: float) -> dict:
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


def bias_share(workdir: str) -> dict:
  """The share of synthetic images in their class's aligned bias, first and last logged, and
  how the run's weights find the bias-conflicting real images (``weights.json``'s overall
  AUROC and the share of the weight on them; absent where the run has no bias labels)."""
  with open(os.path.join(workdir, "weights.json")) as f:
    report = json.load(f)
  traj = report.get("bias_trajectory", [])
  out = {"bias_start": traj[0]["bias_aligned_fraction"] if traj else None,
         "bias_end": traj[-1]["bias_aligned_fraction"] if traj else None}
  overall = report.get("overall") or {}
  if "auroc" in overall:
    out["weights_auroc"] = overall["auroc"]
    out["weights_conflicting_share"] = overall["conflicting_fraction_weighted"]
  return out
