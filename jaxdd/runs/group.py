"""Run groups: runs that differ only in runtime knobs, distilled in one program."""
from __future__ import annotations

import contextlib
import json
import os
import time

import jax
import numpy as np

from jaxdd import diagnostics, distill
from jaxdd import policy as policy_lib
from jaxdd import progress as progress_lib
from jaxdd.config import RunConfig, validate
from jaxdd.runs import checkpoints, distiller, driver, keys, metrics_log, rundata, rundir, single
from jaxdd.structs import SynSet
from jaxdd.runs.stage_config import kde_config

#: RunConfig fields in which the runs of one group may differ: the N-run DM step's runtime
#: knobs (:func:`jaxdd.distill.many_runs`).
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
  """Distils runs that differ only in runtime knobs in ONE program (``jaxdd tune``'s candidates).

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
    for c, w in zip(configs, workdirs):
      rundata.check_paths(c, w)
    if run_data is None:
      run_data = rundata.RunData(configs[0])
    for c, w in zip(configs, workdirs):  # every check before the first write
      rundata.check_run(c, run_data, w)
    return _distill_group(configs, workdirs, run_data, progress)


def _distill_group(configs, workdirs, run_data, progress) -> list[SynSet]:
  """:func:`distill_group` once its arguments are checked, under the group's policy."""
  base = configs[0]
  with contextlib.ExitStack() as stack:
    for w in workdirs:
      stack.enter_context(rundir.workdir_lock(w))
    heads = [single.start_run(c, w, run_data, progress) for c, w in zip(configs, workdirs)]
    embeddings, _, classifier = heads[0]
    nc = run_data.num_classes
    real = distill.real_data(run_data.normalized(run_data.train), run_data.train.labels,
                             num_classes=nc,
                             embeddings=embeddings if base.weighting == "kde" else None)
    knobs = [{"lr": c.lr_img, "variance": c.kde_variance, "temperature": c.kde_temperature}
             for c in configs]
    d = distill.many_runs(distiller.make_distiller(base, nc, kde_config(base)), num_runs=len(configs),
                          run_knobs=knobs, common_random_numbers=True)
    state = d.init(keys.run_keys(base)[1], real)
    logs = [metrics_log.MetricsLog(w, 0) for w in workdirs]
    mngrs = [checkpoints.checkpointer(w) for w in workdirs]
    every = driver.track_every(base)

    def one(i):
      return distill.DistillState(
          SynSet(state.syn.images[i], state.syn.labels[i]),
          jax.tree.map(lambda a: a[i], state.opt_state), state.step, state.key)

    def track(step):
      if classifier is not None and (step % every == 0 or step == base.iterations):
        for i, log in enumerate(logs):
          score = diagnostics.bias_score(classifier, np.asarray(state.syn.images[i]),
                                         np.asarray(state.syn.labels[i]))
          log.append({"step": step, "bias_aligned_fraction": score["aligned_fraction"]})

    track(0)
    bar = progress_lib.bar(base.iterations, f"DM x{len(configs)} ipc={base.ipc}", unit="step",
                           disable=not progress)
    t0 = time.perf_counter()

    watches, check = _finite_watches(configs, workdirs, mngrs)
    def after(it, n, st, row):
      nonlocal state
      state = st
      for watch in watches:
        watch.add(it, n, row)
      if driver.host_waits(base, it, n, end=base.iterations, tracking=classifier is not None):
        check()
      for i, (c, log) in enumerate(zip(configs, logs)):
        driver.log_chunk(c, nc, it, n, row, log, t0, pick=lambda m, i=i: jax.tree.map(
            lambda a: a[i], m), name=workdirs[i])
      bar.update(n)
      step = it + n
      track(step)
      if step % base.checkpoint_every == 0 or step == base.iterations:
        for i, mngr in enumerate(mngrs):
          checkpoints.save(mngr, step, one(i))

    def save(step):
      check()
      for i, mngr in enumerate(mngrs):
        if mngr.latest_step() != step:
          checkpoints.save(mngr, step, one(i), force=True)

    try:
      driver.drive(d, state, real, 0, base.iterations, driver.steps_per_call(base),
                   stops=(base.checkpoint_every, every if classifier is not None else 0),
                   after=after, save=save)
    finally:
      bar.close()
      for log in logs:
        log.close()
      for mngr in mngrs:
        mngr.close()
    out = []
    for i, (c, w) in enumerate(zip(configs, workdirs)):
      syn = SynSet(np.asarray(state.syn.images[i]), np.asarray(state.syn.labels[i]))
      out.append(single.finish_run(c, w, run_data, syn, heads[i][1]))
  return out


def _finite_watches(configs, workdirs, mngrs):
  """One :class:`jaxdd.runs.driver.FiniteWatch` per run of a group (its column of the
  metrics) and ``check()``, which reads them all: any run's first non-finite step stops
  the group."""
  watches = [driver.FiniteWatch(c, pick=lambda m, i=i: jax.tree.map(lambda a: a[i], m), name=w)
             for i, (c, w) in enumerate(zip(configs, workdirs))]

  def check():
    for watch, mngr in zip(watches, mngrs):
      watch.check(kept=mngr.latest_step())
  return watches, check
