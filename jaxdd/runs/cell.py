"""A results-table cell in one program: the DM rows x seeds of one setting.

The rows of a cell differ only in how they weigh and draw the real data (vanilla, DM + KDE,
class-scope and oracle weights, weighted starts, importance sampling, FairDD's group
matching with true or pseudo groups) and in their image learning rate and KDE knobs. With
:func:`jaxdd.distill.dm_cell` those are data, so :func:`distill_cell` distils every row of
every seed in ONE compiled program (:func:`jaxdd.distill.cell_runs`): the seeds are
independent, and the rows of a seed share its key, so they draw the same networks,
augmentation and uniform real batches (common random numbers) and those are computed once.
Each run equals the run :func:`jaxdd.runs.distill_stage` makes of its config, up to float
rounding (the draws of a run depend on its seed alone, so a row run alone draws the same),
and each run directory is written as :func:`jaxdd.runs.distill_stage` writes it.
"""
from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np

from jaxdd import distill, models, weighting
from jaxdd import augment as augment_lib
from jaxdd import policy as policy_lib
from jaxdd import progress as progress_lib
from jaxdd.config import RunConfig, validate
from jaxdd.config.run import BIASED_FIELDS
from jaxdd.runs import (distiller, driver, group, keys, rundata, rundir, stage_config,
                        weights)
from jaxdd.structs import SynSet

#: The RunConfig fields in which the rows of a cell may differ (with the seed across seeds).
ROW_FIELDS = group.GROUP_KNOBS + ("weighting", "init", "real_sampling", "kde_scope",
                                  "kde_floor", "fairdd_clusters", "fairdd_eps", "gce_floor", "jtt_up"
                                  ) + BIASED_FIELDS
#: The weightings a cell's rows may have.
CELL_WEIGHTINGS = ("none", "kde", "oracle", "fairdd", "fairdd_pseudo", "fairdd_batch",
                   "fairdd_dbscan",
                   "gce", "jtt")


def cell_key(config: RunConfig) -> str:
  """Runs with the same key are rows and seeds of one cell."""
  d = config._hashed()
  for name in ROW_FIELDS + ("seed",):
    d.pop(name, None)
  return json.dumps(d, sort_keys=True)


def cell_groupable(config: RunConfig) -> bool:
  """Whether a run can be a row of a cell program: DM on one device, a weighting of
  :data:`CELL_WEIGHTINGS`."""
  return (config.method == "dm" and config.devices == "1"
          and config.weighting in CELL_WEIGHTINGS)


def program_rows(configs) -> list[bool]:
  """Which of one seed's row ``configs`` :func:`distill_cell` can take into one program: each
  :func:`cell_groupable`, of the first such row's :func:`cell_key`, and of the first
  in-batch-DBSCAN row's ``fairdd_clusters`` and ``fairdd_eps`` (a program has one). The rows
  left out (the KDE in the biased classifier's features, a second DBSCAN radius, another
  method) are distilled row by row.

  >>> from jaxdd.config import get_config
  >>> base = get_config("smoke")
  >>> program_rows([base, base.replace(weighting="fairdd_batch"),
  ...               base.replace(weighting="fairdd_batch", fairdd_eps="knee"),
  ...               base.replace(weighting="kde", kde_features="biased")])
  [True, True, False, False]
  """
  key, clusters, out = None, None, []
  for c in configs:
    ok = cell_groupable(c)
    if ok:
      key = cell_key(c) if key is None else key
      ok = cell_key(c) == key
    if ok and c.weighting == "fairdd_batch":
      clusters = (c.fairdd_clusters, c.fairdd_eps) if clusters is None else clusters
      ok = (c.fairdd_clusters, c.fairdd_eps) == clusters
    out.append(ok)
  return out


def _check_cell(configs, num_rows: int) -> int:
  """The number of seeds of a seed-major list of ``configs`` (``configs[s * R + r]``); refuses
  what is not a cell."""
  if num_rows < 1 or not configs or len(configs) % num_rows:
    raise ValueError(f"a cell needs num_rows ({num_rows}) runs per seed; got {len(configs)} "
                     "runs")
  if not all(cell_groupable(c) for c in configs) or len({cell_key(c) for c in configs}) != 1:
    raise ValueError("these runs differ in more than their seed and weighting (or are not DM "
                     "on one device with a weighting of "
                     f"{', '.join(CELL_WEIGHTINGS)}); distil them row by row")
  num_seeds = len(configs) // num_rows
  seeds = [[configs[s * num_rows + r].seed for r in range(num_rows)] for s in range(num_seeds)]
  if any(len(set(row)) != 1 for row in seeds) or len({row[0] for row in seeds}) != num_seeds:
    raise ValueError("a cell's runs must be seed-major: the rows of each seed in the same "
                     "order, every seed its own")
  return num_seeds


def distill_cell(configs, workdirs, *, num_rows: int, run_data: rundata.RunData | None = None,
                 progress: bool = True, deadline: driver.Deadline | None = None
                 ) -> list[SynSet]:
  """Distils the rows x seeds of a cell in ONE program; returns their SynSets.

  Args:
    configs, workdirs: the runs, seed-major (``configs[s * num_rows + r]`` is row ``r`` of
      seed ``s``), one directory each.
    num_rows: the rows per seed.
    run_data: the cell's data (loaded from the first config when None).
    progress: progress bars.
    deadline: a time budget (:class:`jaxdd.runs.driver.Deadline`): the cell stops at it,
      checkpointed, with :class:`jaxdd.runs.driver.Interrupted`; a rerun resumes.

  A cell stopped part-way resumes as a cell when every run has a checkpoint of one step;
  finished runs' SynSets are loaded; runs in other states (some finished, checkpoints of
  different steps) go on row by row through :func:`jaxdd.runs.distill_seeds`.

  Raises:
    ValueError: the runs are not a cell (:func:`cell_key`, :func:`cell_groupable`, seeds).
  """
  configs, workdirs = list(configs), list(workdirs)
  if len(configs) != len(workdirs):
    raise ValueError("distill_cell needs one workdir per config")
  num_seeds = _check_cell(configs, num_rows)
  for c, w in zip(configs, workdirs):
    validate(c)
    rundir.check_workdir(c, w, distill_only=True)
  with policy_lib.use(configs[0].policy):
    run_data = group._checked_data(configs, workdirs, run_data)
    states = {group._progress_of(w) for w in workdirs}
    if len(states) > 1:
      return _row_by_row(configs, workdirs, num_rows, run_data, progress, deadline, states)
    return group.drive_group(
        configs, workdirs, run_data, progress, shared=False, deadline=deadline,
        build=lambda heads: _program(configs, num_seeds, num_rows, run_data, heads))


def _row_by_row(configs, workdirs, num_rows, run_data, progress, deadline, states):
  progress_lib.logger.info("the runs of this cell stopped at different points (%s); they go "
                           "on row by row", sorted(states, key=str))
  out: list = [None] * len(configs)
  for r in range(num_rows):
    idx = list(range(r, len(configs), num_rows))
    syns = group.distill_seeds([configs[i] for i in idx], [workdirs[i] for i in idx],
                               run_data=run_data, progress=progress, deadline=deadline)
    for i, syn in zip(idx, syns):
      out[i] = syn
  return out


def _row_spec(config: RunConfig) -> dict:
  """How a row weighs and draws its real batch, as :func:`jaxdd.distill.dm_cell` flags."""
  sampling = config.real_sampling == "weighted"
  kde_batch = config.weighting == "kde" and config.kde_scope == "batch" and not sampling
  class_scope = (config.weighting in ("oracle", "gce", "jtt")
                 or (config.weighting == "kde" and config.kde_scope == "class" and not sampling))
  return {"kde": kde_batch, "class": class_scope, "sampling": sampling,
          "groups": config.weighting in ("fairdd", "fairdd_pseudo", "fairdd_dbscan"),
          "batch_groups": config.weighting == "fairdd_batch"}


def _flat_class_weights(config: RunConfig, real: distill.RealData) -> np.ndarray:
  """(N,) a run's whole-class weights (what ``init='weighted'``, ``real_sampling='weighted'``
  and the class scope use), each on its own row, the same floats as the (C, M) ones."""
  # one program (eagerly, each of its operations would be compiled on its own)
  w = np.asarray(jax.jit(distill.class_weights)(real, stage_config.kde_config(config.weights)))
  idx, counts = np.asarray(real.index.indices), np.asarray(real.index.counts)
  out = np.zeros(real.images.shape[0], np.float32)
  for c in range(len(counts)):
    out[idx[c, :counts[c]]] = w[c, :counts[c]]
  return out


def _distiller(base: RunConfig, nc: int, sampling: list[bool], num_seeds: int, num_groups,
               clusters, seed_fields, run_fields) -> distill.Distiller:
  """The cell's program: its rows x seeds in one :func:`jaxdd.distill.cell_runs`; when some
  rows sample their real batch by weight (``sampling[r]``) and others draw it uniformly, the
  uniform rows share one batch and its forward pass in one such program and the sampling
  rows have their own beside it (:func:`jaxdd.distill.cell_row_groups`), instead of every
  row drawing its own."""
  def program(rows: list[int], by_weight: bool) -> distill.Distiller:
    cell = distill.dm_cell(
        num_classes=nc, ipc=base.ipc,
        model=models.ConvNet(nc, depth=base.depth, width=base.width),
        augment=augment_lib.dsa(base.dsa_strategy) if base.dsa_strategy else None,
        real_per_class=base.real_per_class, lr=base.lr_img, momentum=base.momentum,
        kde_config=weighting.KDEConfig(normalize=base.kde_normalize), num_groups=num_groups,
        importance_sampling=by_weight,
        batch_clusters=None if clusters is None else clusters[0],
        batch_eps="median" if clusters is None else clusters[1],
        execution=distiller.execution(base.execution, nc, base.real_per_class,
                                      compute_dtype=base.compute_dtype, sharded=False))
    return distill.cell_runs(cell, num_seeds=num_seeds, num_rows=len(rows),
                             seed_fields=tuple(seed_fields), run_fields=tuple(run_fields))

  num_rows = len(sampling)
  drawn = [[r for r in range(num_rows) if sampling[r] == s] for s in (False, True)]
  if not all(drawn):
    return program(list(range(num_rows)), any(sampling))
  return distill.cell_row_groups([(program(drawn[0], False), drawn[0]),
                                  (program(drawn[1], True), drawn[1])],
                                 num_seeds=num_seeds, num_rows=num_rows,
                                 run_fields=tuple(run_fields))


def _program(configs, num_seeds: int, num_rows: int, run_data: rundata.RunData, heads):
  """``(distiller, real, fresh state)`` of the cell: the shared real data with each seed's
  embeddings and each run's weights, sampling probabilities and groups; each run's start
  made by its own distiller (its own ``init``)."""
  base, nc = configs[0], run_data.num_classes
  shared = distill.real_data(run_data.normalized(run_data.train), run_data.train.labels,
                             num_classes=nc)
  n = shared.images.shape[0]
  specs = [_row_spec(c) for c in configs]
  seed_emb: list = [None] * num_seeds
  per_run = {"sample_weight": [], "sample_prob": [], "groups": []}
  starts, hparams = [], []
  for i, (c, h) in enumerate(zip(configs, heads)):
    fields = driver.real_fields(c, run_data, h[0])
    real_i = shared._replace(**{k: None if v is None else jnp.asarray(v)
                                for k, v in fields.items()})
    spec = specs[i]
    cw = (_flat_class_weights(c, real_i) if spec["class"] or spec["sampling"]
          else np.ones(n, np.float32))
    per_run["sample_weight"].append(cw if spec["class"] else np.ones(n, np.float32))
    per_run["sample_prob"].append(cw if spec["sampling"] else np.ones(n, np.float32))
    groups = fields["groups"]
    per_run["groups"].append(np.zeros(n, np.int32) if groups is None else np.asarray(groups))
    if fields["embeddings"] is not None:
      s = i // num_rows
      if seed_emb[s] is not None and not np.array_equal(seed_emb[s], fields["embeddings"]):
        raise ValueError("two rows of one seed have different surrogate embeddings; distil "
                         "them row by row")
      seed_emb[s] = np.asarray(fields["embeddings"])
    own = driver.run_distiller(c, run_data)
    starts.append(own.init(keys.run_keys(c)[1], real_i).syn)
    hparams.append({"lr": c.lr_img, "variance": c.kde_variance,
                    "temperature": c.kde_temperature, "kde": float(spec["kde"]),
                    "groups": float(spec["groups"]), "batch_groups": float(spec["batch_groups"]),
                    "weighted_sampling": float(spec["sampling"])})
  num_groups = [weights.run_num_groups(c.weights, run_data) for c in configs]
  num_groups = max((g for g in num_groups if g is not None), default=None)
  clusters = {(c.fairdd_clusters, c.fairdd_eps) for c in configs
              if c.weighting == "fairdd_batch"}
  if len(clusters) > 1:
    raise ValueError("the fairdd_batch rows of a cell must share --fairdd-clusters and "
                     "--fairdd-eps; distil them row by row")
  seed_fields, run_fields = [], ["sample_weight"]
  real = shared._replace(sample_weight=jnp.asarray(np.stack(per_run["sample_weight"])))
  if any(e is not None for e in seed_emb):
    dim = next(e for e in seed_emb if e is not None).shape[1]
    real = real._replace(embeddings=jnp.asarray(np.stack([
        np.zeros((n, dim), np.float32) if e is None else e for e in seed_emb])))
    seed_fields.append("embeddings")
  sampling = any(s["sampling"] for s in specs)
  if sampling:
    real = real._replace(sample_prob=jnp.asarray(np.stack(per_run["sample_prob"])))
    run_fields.append("sample_prob")
  if num_groups is not None:
    real = real._replace(groups=jnp.asarray(np.stack(per_run["groups"])))
    run_fields.append("groups")
  d = _distiller(base, nc, [specs[r]["sampling"] for r in range(num_rows)], num_seeds,
                 num_groups, clusters.pop() if clusters else None, seed_fields, run_fields)
  run_keys = jnp.stack([keys.run_keys(c)[1] for c in configs])
  syn = jax.tree.map(lambda *a: jnp.stack(a), *starts)
  hp = {k: jnp.asarray([h[k] for h in hparams], jnp.float32) for k in hparams[0]}
  return d, real, d.init(run_keys, real, syn, hparams=hp)
