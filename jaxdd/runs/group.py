"""Run groups, distilled in one program: runs that differ only in hyperparameters (common random
numbers, :func:`distill_group`) and runs that are separate seeds of one setting
(:func:`distill_seeds`)."""
from __future__ import annotations

import contextlib
import functools
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxdd import diagnostics, distill, synset
from jaxdd import policy as policy_lib
from jaxdd import progress as progress_lib
from jaxdd.config import RunConfig, validate
from jaxdd.runs import (checkpoints, driver, keys, metrics_log, outputs, profiling, rundata,
                        rundir, single)
from jaxdd.structs import SynSet

#: RunConfig fields in which the runs of one group may differ: the distiller's hyperparameters
#: (``state.hparams``, :func:`jaxdd.distill.many_runs`).
GROUP_KNOBS = ("lr_img", "kde_variance", "kde_temperature")


def groupable(config: RunConfig) -> bool:
  """Whether a run can join a group: DM, vanilla or KDE weights computed inside the batch
  (whole-class densities depend on the kernel variance, which would make the real data differ)."""
  return (config.method == "dm" and config.weighting in ("none", "kde") and config.devices == "1"
          and not (config.weighting == "kde" and (config.kde_scope == "class"
                                                  or config.init == "weighted"
                                                  or config.real_sampling == "weighted")))


def group_key(config: RunConfig) -> str:
  """Runs with the same key differ only in :data:`GROUP_KNOBS` (and cadence)."""
  d = config._hashed()
  for name in GROUP_KNOBS:
    d.pop(name)
  return json.dumps(d, sort_keys=True)


def fresh(workdir: str) -> bool:
  """No SynSet and no checkpoint yet: a group may start this run from step 0."""
  return (not os.path.exists(os.path.join(workdir, "synset", "manifest.json"))
          and not os.path.isdir(os.path.join(workdir, "checkpoints")))


def distill_group(configs, workdirs, *, run_data: rundata.RunData | None = None,
                  progress: bool = True) -> list[SynSet]:
  """Distils runs that differ only in hyperparameters in ONE program (``jaxdd tune``'s candidates).

  The runs share their seed, so each separate run would draw the same networks, real
  batches and augmentations: the N-run step with common random numbers
  (:func:`jaxdd.distill.many_runs` over :func:`jaxdd.distill.dm`) computes those once and
  gives each run what its own :func:`distill_stage` would, up to float rounding. Each run's directory
  is written as :func:`distill_stage` writes it (config, weights, metrics, checkpoints,
  SynSet, plot), so a killed group resumes run by run through :func:`distill_stage`.

  Raises:
    ValueError: the runs are not one group (:func:`groupable`, :func:`group_key`) or a
      directory already holds a SynSet or checkpoints.
  """
  configs, workdirs = list(configs), list(workdirs)
  if len(configs) != len(workdirs) or not configs:
    raise ValueError("distill_group needs one workdir per config")
  if not all(groupable(c) for c in configs) or len({group_key(c) for c in configs}) != 1:
    raise ValueError("these runs differ in more than lr_img and the KDE variance and "
                     "temperature (or use whole-class densities); distil them one by one")
  for c, w in zip(configs, workdirs):
    validate(c)
    rundir.check_workdir(c, w, distill_only=True)
    if not fresh(w):
      raise ValueError(f"{w} already holds a SynSet or checkpoints; distill_stage resumes it")
  with policy_lib.use(configs[0].policy):
    run_data = _checked_data(configs, workdirs, run_data)
    return drive_group(configs, workdirs, run_data, progress, shared=True)


def _checked_data(configs, workdirs, run_data: rundata.RunData | None) -> rundata.RunData:
  """The group's data (loaded unless given), after every check that comes before the first
  write: each run's paths, data and models."""
  for c, w in zip(configs, workdirs):
    outputs.check_run_folder(w, flag="")  # the caller's run folders
    rundata.check_paths(c, w)
  if run_data is None:
    run_data = rundata.RunData(configs[0])
  for c, w in zip(configs, workdirs):
    rundata.check_run(c, run_data, w)
  return run_data


def seed_key(config: RunConfig) -> str:
  """Runs with the same key are seeds of one setting (they may differ in :data:`GROUP_KNOBS`
  too)."""
  d = config._hashed()
  for name in GROUP_KNOBS + ("seed",):
    d.pop(name)
  return json.dumps(d, sort_keys=True)


def seed_groupable(config: RunConfig) -> bool:
  """Whether a run can join a group of seeds: DM on one device (any of its weightings: each
  run's surrogate outputs ride along with it)."""
  return config.method == "dm" and config.devices == "1"


def distill_seeds(configs, workdirs, *, run_data: rundata.RunData | None = None,
                  progress: bool = True, deadline: driver.Deadline | None = None
                  ) -> list[SynSet]:
  """Distils separate seeds of one setting in ONE program (independent runs).

  Each run keeps its own keys (:func:`jaxdd.runs.keys.run_keys` of its seed), surrogate and
  weights, so run i is the run :func:`jaxdd.runs.distill_stage` would make of config i, up to
  float rounding: the N-run step (:func:`jaxdd.distill.many_runs` with ``run_fields``) batches
  the runs over the same real images, each with its own embeddings, densities or groups.
  Each directory is written as :func:`distill_stage` writes it. A group stopped part-way
  (Ctrl-C, a time budget) resumes as a group when every run has a checkpoint of one step;
  finished runs' SynSets are loaded; runs in other states (some finished, checkpoints of
  different steps) go on one by one through :func:`distill_stage`. ``deadline``: a time
  budget (:class:`jaxdd.runs.driver.Deadline`) the group stops at, checkpointed.

  Raises:
    ValueError: the runs are not seeds of one setting (:func:`seed_groupable`,
      :func:`seed_key`), two share a seed, or their checkpoints are of different steps.
  """
  configs, workdirs = list(configs), list(workdirs)
  if len(configs) != len(workdirs) or not configs:
    raise ValueError("distill_seeds needs one workdir per config")
  if not all(seed_groupable(c) for c in configs) or len({seed_key(c) for c in configs}) != 1:
    raise ValueError("these runs differ in more than their seed, lr_img and the KDE variance "
                     "and temperature (or are not DM on one device); distil them one by one")
  if len({c.seed for c in configs}) != len(configs):
    raise ValueError("two runs of a group of seeds share a seed; give each its own")
  for c, w in zip(configs, workdirs):
    validate(c)
    rundir.check_workdir(c, w, distill_only=True)
  with policy_lib.use(configs[0].policy):
    run_data = _checked_data(configs, workdirs, run_data)
    states = {_progress_of(w) for w in workdirs}
    if len(states) > 1:
      progress_lib.logger.info("the runs of this group of seeds stopped at different points "
                               "(%s); they go on one by one", sorted(states, key=str))
      return [single.distill_stage(c, w, run_data=run_data, progress=progress,
                                   deadline=deadline)
              for c, w in zip(configs, workdirs)]
    return drive_group(configs, workdirs, run_data, progress, shared=False, deadline=deadline)


def _progress_of(workdir: str):
  """``"finished"``, or the newest checkpoint step of a run directory (0: none)."""
  if os.path.exists(os.path.join(workdir, "synset", "manifest.json")):
    return "finished"
  root = os.path.join(workdir, "checkpoints")
  steps = [int(n) for n in os.listdir(root) if n.isdigit()] if os.path.isdir(root) else []
  return max(steps, default=0)


def _group_real(configs, run_data, heads, shared: bool):
  """The group's real data: the images once; each run's own weighting inputs stacked on a
  leading run axis where they differ between runs (separate seeds), else once."""
  fields = [driver.real_fields(c, run_data, h[0]) for c, h in zip(configs, heads)]
  real = distill.real_data(run_data.normalized(run_data.train), run_data.train.labels,
                           num_classes=run_data.num_classes, **fields[0])
  own = []
  for name, first in fields[0].items():
    if first is None or shared:
      continue
    if any(not np.array_equal(f[name], first) for f in fields[1:]):
      own.append(name)
      real = real._replace(**{name: jnp.stack([jnp.asarray(f[name], getattr(real, name).dtype)
                                               for f in fields])})
  return real, tuple(own)


def drive_group(configs, workdirs, run_data, progress, *, shared: bool,
                deadline: driver.Deadline | None = None, build=None) -> list[SynSet]:
  """The group's loop once its arguments are checked, under the group's policy: common random
  numbers (``shared``) or separate runs. ``build(heads) -> (distiller, real, fresh state)``
  makes the group's program from the runs' heads (:func:`jaxdd.runs.single.start_run`);
  None: :func:`jaxdd.distill.many_runs` of the base config's distiller. The distiller's
  state has one leading run axis; each run's directory is written as
  :func:`jaxdd.runs.distill_stage` writes it."""
  base = configs[0]
  with contextlib.ExitStack() as stack:
    for w in workdirs:
      stack.enter_context(rundir.workdir_lock(w))
    if not shared and all(_progress_of(w) == "finished" for w in workdirs):
      return [_finished(w) for w in workdirs]
    t0, c0 = time.perf_counter(), profiling.compiled()
    heads = [single.start_run(c, w, run_data, progress) for c, w in zip(configs, workdirs)]
    if build is None:
      real, own = _group_real(configs, run_data, heads, shared)
      d = driver.run_distiller(base, run_data)
      d = distill.many_runs(d, num_runs=len(configs),
                            run_hparams=[_hparams(c) for c in configs],
                            common_random_numbers=shared, run_fields=own)
      init_key = (keys.run_keys(base)[1] if shared
                  else jnp.stack([keys.run_keys(c)[1] for c in configs]))
      fresh = d.init(init_key, real)
    else:
      d, real, fresh = build(heads)
    mngrs = [checkpoints.checkpointer(w) for w in workdirs]
    state, start = _resume_group(fresh, mngrs, workdirs, shared)
    # where a short loan's minutes go: the set-up here, the first call (compilation) in _loop
    progress_lib.logger.info("%d runs in one program: ready to step from step %d in %.1f s "
                             "(surrogates, weights, starts; %s)", len(configs), start,
                             time.perf_counter() - t0, profiling.compiling(c0))
    logs = [metrics_log.MetricsLog(w, start) for w in workdirs]
    try:
      state = _loop(configs, workdirs, run_data, heads, d, real, state, start, logs, mngrs,
                    deadline,
                    progress, shared)
    finally:
      for log in logs:
        log.close()
      for mngr in mngrs:
        mngr.close()
    out = []
    for i, (c, w) in enumerate(zip(configs, workdirs)):
      syn = SynSet(np.asarray(state.syn.images[i]), np.asarray(state.syn.labels[i]))
      out.append(single.finish_run(c, w, run_data, syn, heads[i][1]))
  return out


def _hparams(config) -> dict:
  """A member's own hyperparameters: the image learning rate and, with a KDE weighting, the
  kernel variance and temperature."""
  out = {"lr": config.lr_img}
  if config.weighting == "kde":
    out.update(variance=config.kde_variance, temperature=config.kde_temperature)
  return out


def _finished(workdir: str) -> SynSet | None:
  """A finished run's SynSet, else None."""
  path = os.path.join(workdir, "synset")
  if not os.path.exists(os.path.join(path, "manifest.json")):
    return None
  syn, _ = synset.load(path)
  return SynSet(np.asarray(syn.images), np.asarray(syn.labels))


@functools.partial(jax.jit, static_argnames="shared")
def _one(state, i: int, shared: bool) -> distill.DistillState:
  """Run i's state out of the group's stacked state (one program for every run: called
  eagerly, each field's shape would be a program of its own)."""
  pick = lambda a: a[i]  # noqa: E731
  return state._replace(syn=SynSet(state.syn.images[i], state.syn.labels[i]),
                        opt_state=jax.tree.map(pick, state.opt_state),
                        step=state.step if shared else state.step[i],
                        key=state.key if shared else state.key[i],
                        extra=jax.tree.map(pick, state.extra),
                        hparams=jax.tree.map(pick, state.hparams))


def _resume_group(fresh, mngrs, workdirs, shared: bool):
  """The group's state to go on from: every run's newest checkpoint, which must be of one step
  (else the group is refused), restacked; ``fresh`` at step 0 when there is none."""
  n = len(workdirs)
  restored = [checkpoints.restore_newest(m, _one(fresh, i, shared), w)
              for i, (m, w) in enumerate(zip(mngrs, workdirs))]
  steps = {s for _, s in restored}
  if steps == {0}:
    return fresh, 0
  if len(steps) != 1:
    raise ValueError(f"the runs of this group have checkpoints of different steps "
                     f"({sorted(steps)}); resume them one by one (jaxdd.runs.distill_stage)")
  states = [s for s, _ in restored]
  stack = lambda *xs: jnp.stack(xs)  # noqa: E731
  state = fresh._replace(
      syn=SynSet(jnp.stack([s.syn.images for s in states]),
                 jnp.stack([s.syn.labels for s in states])),
      opt_state=jax.tree.map(stack, *[s.opt_state for s in states]),
      step=states[0].step if shared else jnp.stack([s.step for s in states]),
      key=states[0].key if shared else jnp.stack([s.key for s in states]),
      extra=jax.tree.map(stack, *[s.extra for s in states]))
  assert n == len(states)
  return state, steps.pop()


def _loop(configs, workdirs, run_data, heads, d, real, state, start, logs, mngrs, deadline,
          progress, shared):
  """Steps the group from ``start`` to the end with the driver, logging, tracking the bias
  score and checkpointing every run as :func:`jaxdd.runs.driver.distill_run` does one."""
  base, nc = configs[0], run_data.num_classes
  plans = [driver.loop_plan(c) for c in configs]  # each run logs and fails as its own
  plan = plans[0]
  classifiers = [h[2] for h in heads]
  tracking = classifiers[0] is not None
  every = plan.track_every

  def track(step):
    if tracking and (step % every == 0 or step == plan.iterations):
      for i, log in enumerate(logs):
        score = diagnostics.bias_score(classifiers[i], np.asarray(state.syn.images[i]),
                                       np.asarray(state.syn.labels[i]))
        log.append({"step": step, "bias_aligned_fraction": score["aligned_fraction"]})

  if start == 0:
    track(0)
  bar = progress_lib.bar(plan.iterations, f"DM x{len(configs)} ipc={base.ipc}", unit="step",
                         initial=start, disable=not progress)
  t0, c0 = time.perf_counter(), profiling.compiled()
  watches, check = _finite_watches(plans, workdirs, mngrs)

  def after(it, n, st, row):
    nonlocal state
    state = st
    if it == start:
      progress_lib.logger.info("%d runs in one program: the first %d step(s) in %.1f s, "
                               "compilation included (%s)", len(configs), n,
                               time.perf_counter() - t0, profiling.compiling(c0))
    for watch in watches:
      watch.add(it, n, row)
    if driver.host_waits(plan, it, n, end=plan.iterations, tracking=tracking):
      check()
    for i, (p, log) in enumerate(zip(plans, logs)):
      driver.log_chunk(p, nc, it, n, row, log, t0, pick=lambda m, i=i: jax.tree.map(
          lambda a: a[i], m), name=workdirs[i])
    bar.update(n)
    step = it + n
    track(step)
    if step % plan.checkpoint_every == 0 or step == plan.iterations:
      for i, mngr in enumerate(mngrs):
        checkpoints.save(mngr, step, _one(state, i, shared))

  def save(step):
    check()
    for i, mngr in enumerate(mngrs):
      if mngr.latest_step() != step:
        checkpoints.save(mngr, step, _one(state, i, shared), force=True)

  try:
    driver.drive(d, state, real, start, plan.iterations, plan.steps_per_call,
                 stops=(plan.checkpoint_every, every if tracking else 0), after=after, save=save,
                 deadline=deadline)
  finally:
    bar.close()
  return state




def _finite_watches(plans, workdirs, mngrs):
  """One :class:`jaxdd.runs.driver.FiniteWatch` per run of a group (its column of the
  metrics; ``plans``: the runs' :class:`jaxdd.runs.driver.LoopPlan`) and ``check()``, which
  reads them all: any run's first non-finite step stops the group."""
  watches = [driver.FiniteWatch(p, pick=lambda m, i=i: jax.tree.map(lambda a: a[i], m), name=w)
             for i, (p, w) in enumerate(zip(plans, workdirs))]

  def check():
    for watch, mngr in zip(watches, mngrs):
      watch.check(kept=mngr.latest_step())
  return watches, check
