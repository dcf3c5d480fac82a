"""The distillation loop: chunks of steps per host round trip, checkpoints, metrics, Ctrl-C."""
from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import threading
import time
from typing import Iterator

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from jaxdd import diagnostics, distill, parallel, synset
from jaxdd._src import interrupt
from jaxdd import policy as policy_lib
from jaxdd import progress as progress_lib
from jaxdd.config import RunConfig
from jaxdd.runs import (checkpoints, distiller, experts, keys, metrics_log, profiling, programs,
                        rundata, text, weights)
from jaxdd.structs import SynSet
from jaxdd.runs import stage_config


@dataclasses.dataclass(frozen=True)
class LoopPlan:
  """What the distillation loop reads of a run's configuration, resolved once
  (:func:`loop_plan`): the loop, its logging, checkpoints and bias scores
  (:func:`host_waits`, :func:`log_chunk`, :class:`FiniteWatch`, :func:`nonfinite_error`) take
  the plan, not the :class:`~jaxdd.config.RunConfig`.

  ``iterations``, ``checkpoint_every`` and ``log_every`` are the run's; ``track_every`` the
  steps between two bias scores (:func:`track_every`); ``steps_per_call`` the steps per host
  round trip (:func:`steps_per_call`, resolved under the active policy); ``method`` the
  distillation method; ``bar`` the progress bar's label; ``lr_img`` and ``lr_lr`` the learning
  rates a non-finite step's message names.
  """
  iterations: int
  checkpoint_every: int
  log_every: int
  track_every: int
  steps_per_call: int
  method: str
  bar: str
  lr_img: float
  lr_lr: float


def loop_plan(config: RunConfig) -> LoopPlan:
  """The :class:`LoopPlan` of a run, under the active policy (``steps_per_call='auto'`` takes
  the policy's: :class:`jaxdd.policy.Policy`).

  >>> from jaxdd.config import get_config
  >>> plan = loop_plan(get_config("smoke", iterations=25, weighting="kde", steps_per_call="4"))
  >>> plan.track_every, plan.steps_per_call, plan.bar
  (2, 4, 'DM+KDE ipc=2')
  """
  calls = config.steps_per_call
  return LoopPlan(iterations=config.iterations, checkpoint_every=config.checkpoint_every,
                  log_every=config.log_every, track_every=max(1, config.iterations // 10),
                  steps_per_call=(policy_lib.current().steps_per_call if calls == "auto"
                                  else int(calls)),
                  method=config.method,
                  bar=f"{text.method_label(config.method, config.weighting).upper()} "
                      f"ipc={config.ipc}",
                  lr_img=config.lr_img, lr_lr=config.lr_lr)


def track_every(config: RunConfig) -> int:
  """Steps between two bias scores of the synthetic set: 10 % of the iterations
  (:func:`loop_plan`)."""
  return loop_plan(config).track_every


def distill_run(config: RunConfig, workdir: str, run_data: rundata.RunData,
                embeddings: np.ndarray | None, key: jax.Array, *, progress: bool = True,
                stop_after: int | None = None, real_dtype: str | None = None,
                classifier: diagnostics.BiasClassifier | None = None,
                buffer_dir: str | None = None, deadline: Deadline | None = None) -> SynSet:
  """The distillation loop with checkpoints every ``checkpoint_every`` steps and resume.

  ``stop_after`` (for tests of resumption) stops early after that many steps,
  as a kill would, leaving the checkpoints behind. ``real_dtype`` is DM's
  (:func:`make_distiller`; ``experiments/bf16_accuracy.py`` compares it).
  With a bias ``classifier``, the synthetic set's bias score (the fraction of
  its images in their class's aligned bias, :func:`jaxdd.diagnostics.bias_score`)
  is logged to ``metrics.jsonl`` at step 0 and every :func:`track_every` steps.
  Trajectory matching first gets its expert buffer (:func:`expert_buffer`, in
  ``buffer_dir``) and steps over it instead of the real data.
  """
  nc = run_data.num_classes
  d, real, step_data, mesh = _distiller_and_data(config, workdir, run_data, embeddings,
                                                 progress=progress, real_dtype=real_dtype,
                                                 buffer_dir=buffer_dir)
  fresh = d.init(key, real)
  mngr = checkpoints.checkpointer(workdir)
  state, start = _resume(mngr, fresh, workdir, mesh)
  log = metrics_log.MetricsLog(workdir, start)
  plan = loop_plan(config)
  every = plan.track_every

  def track(step):
    if classifier is not None and (step % every == 0 or step == plan.iterations):
      score = diagnostics.bias_score(classifier, parallel.host(state.syn.images),
                                     parallel.host(state.syn.labels))
      log.append({"step": step, "bias_aligned_fraction": score["aligned_fraction"]})

  if start == 0:
    track(0)
  end = plan.iterations if stop_after is None else min(plan.iterations, start + stop_after)
  bar = progress_lib.bar(plan.iterations, plan.bar, unit="step", initial=start,
                         disable=not progress)
  t0 = time.perf_counter()
  if start > 0:
    progress_lib.logger.info("%s: resuming from step %d of %d", workdir, start, plan.iterations)

  watch = FiniteWatch(plan)

  def check():  # stops at a non-finite step before its state is logged, scored or saved
    watch.check(kept=mngr.latest_step(),
                log_before=lambda i, k, r: log_chunk(plan, nc, i, k, r, log, t0))

  def after(it, n, st, row):
    nonlocal state
    state = st
    watch.add(it, n, row)
    if host_waits(plan, it, n, end=end, tracking=classifier is not None):
      check()
    loss = log_chunk(plan, nc, it, n, row, log, t0)
    if loss is not None:
      bar.set_postfix(loss=f"{loss:.4f}")
    bar.update(n)
    step = it + n
    track(step)
    if step % plan.checkpoint_every == 0 or step == plan.iterations:
      checkpoints.save(mngr, step, state)

  def save(step):
    check()
    if mngr.latest_step() != step:
      checkpoints.save(mngr, step, state, force=True)

  try:
    drive(d, state, step_data, start, end, plan.steps_per_call,
          stops=(plan.checkpoint_every, every if classifier is not None else 0),
          after=after, save=save, deadline=deadline)
  finally:
    bar.close()
    log.close()
    mngr.close()
  return SynSet(parallel.host(state.syn.images), parallel.host(state.syn.labels))


def _distiller_and_data(config: RunConfig, workdir: str, run_data: rundata.RunData,
                        embeddings: np.ndarray | None, *, progress: bool,
                        real_dtype: str | None, buffer_dir: str | None):
  """The run's distiller, its real data, what it steps over (the real data, or trajectory
  matching's expert buffer, recorded in ``buffer.json``) and the device mesh."""
  nc = run_data.num_classes
  mesh = distiller.device_mesh(config.execution, nc, config.real_per_class)
  fields = real_fields(config, run_data, embeddings)
  real = distill.real_data(run_data.normalized(run_data.train), run_data.train.labels,
                           num_classes=nc, **fields, mesh=mesh)
  d = run_distiller(config, run_data, real_dtype=real_dtype)
  step_data = real
  if config.method == "mtt":
    traj, buffer_meta, path = experts.expert_buffer(config, run_data, fields["log_density"],
                                                    keys.expert_key(config),
                                                    buffer_dir=buffer_dir, progress=progress)
    synset.atomic_write_json(os.path.join(workdir, "buffer.json"),
                             {"path": os.path.abspath(path), "digest": buffer_meta["digest"],
                              "shape": buffer_meta["shape"]})
    step_data = jnp.asarray(traj)
  return d, real, step_data, mesh


def real_fields(config: RunConfig, run_data: rundata.RunData,
                embeddings: np.ndarray | None) -> dict:
  """The run's own fields of its :class:`jaxdd.distill.RealData` (its weighting's inputs):
  ``embeddings`` (in-batch KDE), ``log_density`` (whole-class weights) and ``groups``
  (FairDD's bias labels or pseudo-groups); None where the weighting does not use one."""
  return dict(embeddings=(embeddings if config.weighting == "kde"
                          and config.kde_scope == "batch" else None),
              log_density=weights.run_log_density(config, run_data, embeddings),
              groups=weights.run_groups(config, run_data, embeddings))


def run_distiller(config: RunConfig, run_data: rundata.RunData, *,
                  real_dtype: str | None = None) -> distill.Distiller:
  """The run's distiller (:func:`jaxdd.runs.distiller.make_distiller` with its KDE settings and,
  for FairDD, the number of group values)."""
  return distiller.make_distiller(config, run_data.num_classes,
                                  stage_config.kde_config(config.weights), real_dtype=real_dtype,
                                  num_bias=weights.run_num_groups(config.weights, run_data),
                                  real_per_class=rundata.real_batch(config, run_data))


def _resume(mngr, fresh: distill.DistillState, workdir: str,
            mesh) -> tuple[distill.DistillState, int]:
  """The state to go on from (the newest checkpoint, else ``fresh``) and its step; with
  several processes, the newest step that every process has."""
  state, start = checkpoints.restore_newest(mngr, fresh, workdir)
  if jax.process_count() > 1:
    # Every process keeps its own checkpoints; all resume from the newest step they share.
    common = int(np.min(multihost_utils.process_allgather(np.int32(start))))
    if common != start:
      state, start = checkpoints.restore_newest(mngr, fresh, workdir, upto=common)
    if start != common:
      raise ValueError(f"{workdir}: this process has no checkpoint of step {common}, where "
                       "the other processes resume; delete the checkpoints of every process "
                       "to start over")
  if start and mesh is not None:
    state = parallel.put(state, mesh)  # restored on the host: back onto the mesh
  return state, start


def steps_per_call(config: RunConfig) -> int:
  """Distillation steps per host round trip: ``config.steps_per_call``, or the active
  policy's (:class:`jaxdd.policy.Policy`) when it is ``"auto"`` (:func:`loop_plan`)."""
  return loop_plan(config).steps_per_call


def chunks(start: int, end: int, k: int, stops) -> Iterator[tuple[int, int]]:
  """``(first step, length)`` of at most ``k`` steps covering [start, end), every chunk ending
  at the next multiple of each nonzero ``stops`` entry (checkpoints, bias scores) or before.

  A generator: each chunk is made when the loop asks for it, so the first step comes as soon
  for 10^9 iterations as for 300 and the plan takes no memory.

  >>> list(chunks(0, 10, 4, (5, 0)))
  [(0, 4), (4, 1), (5, 4), (9, 1)]
  """
  it = start
  while it < end:
    nxt = min([end, it + k] + [(it // s + 1) * s for s in stops if s])
    yield it, nxt - it
    it = nxt


def drive(d: distill.Distiller, state, data, start: int, end: int, k: int, *, stops,
          after, save, deadline: Deadline | None = None) -> None:
  """Steps ``d`` from ``start`` to ``end``, ``k`` steps per host round trip.

  After each chunk of ``n`` steps from step ``it``, ``after(it, n, state, row)`` gets the
  new state and ``row(j)``, the metrics of the chunk's j-th step (host values fetched
  once per chunk, and only if asked for). The first Ctrl-C is deferred to the end of the
  chunk in flight, then ``save(step)`` runs and :class:`Interrupted` is raised; so does a
  passed ``deadline`` (:class:`Deadline`) before the end. With ``$JAXDD_PROFILE`` set, the
  second chunk is traced (:mod:`jaxdd.runs.profiling`).
  """
  step = programs.PROGRAMS.step(d)  # the state is donated: the loop owns it
  multi = programs.PROGRAMS.steps(d, k) if k > 1 else None
  with deferred_interrupt() as interrupted:
    def compiling():
      """The first chunk compiles the step (tens of seconds): a signal stops it at once,
      with nothing new to save."""
      signum = interrupted()
      if signum:
        raise Terminated if signum == signal.SIGTERM else KeyboardInterrupt

    for it, n in chunks(start, end, k, stops):
      # in a worker thread (on the command line): the signals reach their handler at once
      give_up = compiling if it == start else None
      trace = profiling.folder() if it != start else None  # the first chunk compiles
      with (profiling.traced(trace, first_step=it, steps=n,
                             wait=lambda: jax.block_until_ready(state),
                             program=lambda: (multi.lower(state, data, n) if multi is not None
                                              else step.lower(state, data)))
            if trace else contextlib.nullcontext()):
        if multi is None:
          state, m = interrupt.call(step, state, data, give_up=give_up)
          row = lambda j, m=m: m  # noqa: E731 (one step: its metrics, fetched when read)
        else:
          state, stacked = interrupt.call(multi, state, data, n, give_up=give_up)
          row = lazy_rows(stacked)
      after(it, n, state, row)
      # checked after the chunk's work: the signal may arrive during it
      if interrupted() or (deadline is not None and deadline.passed() and it + n < end):
        save(it + n)
        raise Interrupted(it + n, signum=interrupted())


def lazy_rows(stacked):
  """``row(j)``: the j-th step's metrics of a chunk's stacked metrics, fetched to the host
  once, on the first read."""
  host = []

  def row(j):
    if not host:
      host.append(parallel.host(stacked))
    return jax.tree.map(lambda a: a[j], host[0])
  return row


@dataclasses.dataclass(frozen=True)
class Deadline:
  """A time budget for distillations: one that passes ``at`` (a ``time.monotonic()`` value)
  stops as a first Ctrl-C stops it, after the chunk in flight, checkpointed, with
  :class:`Interrupted`; a rerun resumes from there. Passed to :func:`drive` and the runs'
  entry points (``deadline=``).

  Example:
    >>> import time
    >>> Deadline(time.monotonic() - 1).passed(), Deadline(float("inf")).passed()
    (True, False)
  """
  at: float

  def passed(self) -> bool:
    """Whether the budget is spent."""
    return time.monotonic() >= self.at


class Terminated(KeyboardInterrupt):
  """SIGTERM (a service manager, a batch scheduler, ``kill``): handled as Ctrl-C is, exit 143."""


class Interrupted(KeyboardInterrupt):
  """Ctrl-C or SIGTERM during distillation, after the step in flight finished and was
  checkpointed; ``signum`` says which (None: a passed deadline)."""

  def __init__(self, step: int, signum: int | None = None):
    super().__init__(f"interrupted at step {step}")
    self.step, self.signum = step, signum or None


@contextlib.contextmanager
def deferred_interrupt():
  """The first Ctrl-C (SIGINT) or SIGTERM only sets a flag the loop checks after each step
  (the check returns the signal's number, 0 before one); a second one interrupts at once.
  Outside the main thread nothing is changed."""
  if threading.current_thread() is not threading.main_thread():
    yield lambda: 0
    return
  hit = []

  def handler(signum, frame):
    if hit:
      raise Terminated if signum == signal.SIGTERM else KeyboardInterrupt
    hit.append(signum)
    progress_lib.logger.warning("%s: stopping after the steps in flight, with a checkpoint "
                                "(again to stop at once)",
                                "SIGTERM" if signum == signal.SIGTERM else "interrupt")

  previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
  try:
    yield lambda: hit[0] if hit else 0
  finally:
    for s, h in previous.items():
      signal.signal(s, h)


def host_waits(plan: LoopPlan, it: int, n: int, *, end: int, tracking: bool) -> bool:
  """Whether the driver reads from the device after steps ``it+1 .. it+n`` anyway: a
  logged step among them, or a bias score (``tracking``), a checkpoint or the last step
  (``end``) after them (``plan``: the run's :class:`LoopPlan`)."""
  step = it + n
  return (step == end or step % plan.checkpoint_every == 0
          or (tracking and (step % plan.track_every == 0 or step == plan.iterations))
          or any(s % plan.log_every == 0 or s == plan.iterations
                 for s in range(it + 1, step + 1)))


class FiniteWatch:
  """The distillation steps whose ``finite`` metric the host has not read yet.

  Every step computes that flag on the device with its other metrics
  (:func:`jaxdd.distill.core.all_finite`: the loss, the gradient norm, the updated
  synthetic set). The driver :meth:`add` s each chunk of steps and :meth:`check` s where it
  waits for the device anyway (:func:`host_waits`), so the flags ride with the metrics it
  reads: no extra round trip per step. ``plan`` is the run's :class:`LoopPlan`; ``pick``
  selects one run's metrics (a column of an N-run group, whose directory ``name`` the error
  gives).
  """

  def __init__(self, plan: LoopPlan, pick=lambda m: m, name: str | None = None):
    self.plan, self.pick, self.name, self.pending = plan, pick, name, []

  def add(self, it: int, n: int, row) -> None:
    """Steps ``it+1 .. it+n``, ``row(j)`` the metrics of the j-th (read when checked)."""
    self.pending.append((it, n, row))

  def check(self, *, kept: int | None, log_before=None) -> None:
    """Reads the pending flags; at the first non-finite step, ``log_before(it, j, row)``
    logs the j finite steps of its chunk before it, and :func:`nonfinite_error` is raised
    (``kept``: the newest checkpoint's step, None: none)."""
    pending, self.pending = self.pending, []
    for it, n, row in pending:
      for j in range(n):
        m = self.pick(row(j))
        if "finite" in m and not bool(parallel.host(m["finite"])):
          if log_before is not None:
            log_before(it, j, row)
          raise nonfinite_error(self.plan, it + j + 1, parallel.host(m), kept=kept,
                                name=self.name)


def nonfinite_error(plan: LoopPlan, step: int, m: dict, *, kept: int | None,
                    name: str | None = None) -> FloatingPointError:
  """The one-line fault of a run (its :class:`LoopPlan`) whose step ``step`` (host metrics
  ``m``) turned non-finite: what did, the likely cause and its fix, and the checkpoint kept
  (``kept``: the newest step saved, None: none).

  The same command would resume from that checkpoint and replay the same steps, so the fix
  goes with a new work directory. The first step's loss and gradient (gradient matching's:
  its first round's loss) come from the initial set and the data alone, no learning rate
  having acted yet, so there the data is named as the likely cause.
  """
  bad = lambda key: key in m and not np.isfinite(np.asarray(m[key], np.float64)).all()  # noqa: E731
  flag, value = "--lr-img", plan.lr_img
  if bad("loss"):
    what, computed = f"the {plan.method.upper()} loss", True
  elif bad("grad_norm"):
    what, computed = "the gradient of the synthetic images", True
  elif bad("syn_lr"):
    what, computed = "the learned student learning rate (syn_lr)", False
    flag, value = "--lr-lr", plan.lr_lr
  else:
    what, computed = "the synthetic images", False
  if computed and step == 1 and ("loss_first" not in m or bad("loss_first")):
    cause, fix = ("the data or its normalisation is likely at fault",
                  "check the dataset and its normalisation, then rerun")
  else:
    cause = f"{flag[2:].replace('-', '_')} {value:g} is likely too large"
    fix = f"rerun with a smaller {flag}"
  if kept:
    left = (f"the last finite checkpoint (step {kept}) is kept: this command would resume "
            "from it and stop here again")
  else:
    left = "no checkpoint was written before it: this command would start over and stop here again"
  where = f"{name}: " if name else ""
  return FloatingPointError(f"{where}step {step}: {what} became non-finite ({cause}); {left}; "
                            f"{fix} in a new --workdir")


def log_chunk(plan: LoopPlan, nc: int, it: int, n: int, row, log, t0: float,
              pick=lambda m: m, name: str | None = None) -> float | None:
  """Appends the metrics lines of steps ``it+1 .. it+n`` that fall on the run's (its
  :class:`LoopPlan`'s) ``log_every`` (or the last step) and returns the last logged loss
  (None if none).

  ``row(j)`` is the chunk's j-th step's metrics; ``pick`` selects one run's from them
  (a column of an N-run group, whose directory ``name`` the error message gives).
  """
  loss = None
  for step in range(it + 1, it + n + 1):
    if step % plan.log_every and step != plan.iterations:
      continue
    m = pick(row(step - it - 1))
    # "loss" is the matching loss averaged over classes (the reference's printed
    # loss_avg), the number the progress bar shows; trajectory matching's loss is one
    # normalised parameter distance for the whole set.
    loss = float(m["loss"]) / (1 if plan.method == "mtt" else nc)
    if not np.isfinite(loss):
      raise FloatingPointError(f"the {plan.method.upper()} loss"
                               f"{' of ' + name if name else ''} became {loss} at step {step}; "
                               f"lower lr_img (now {plan.lr_img}) or check the data "
                               "normalisation")
    out = {"step": step, "loss": loss, "grad_norm": float(m["grad_norm"])}
    for key in ("max_weight", "syn_lr", "start_epoch", "beta"):
      if key in m:
        out[key] = float(m[key])
    log.append({**out, "time_s": time.perf_counter() - t0})
  return loss
