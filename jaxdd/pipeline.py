"""End-to-end runs: biased data -> SupCon surrogate -> KDE weights -> DM / CFM / DSA / DC / MTT -> SynSet -> evaluation.

A run lives in a directory::

    <workdir>/
      config.json          the resolved RunConfig + code version + config hash
      checkpoints/<step>/  orbax checkpoints of the distillation state
      metrics.jsonl        one JSON object per logged step (loss, grad norm, ...)
      synset/              the SynSet artifact (see jaxdd.synset)
      eval.json            per-group accuracies, stamped with protocol/model/seeds
      weights.json         diagnostics of the KDE weights (KDE runs)
      buffer.json          trajectory matching: the expert buffer used (path, digest)
      plots/synset.png, plots/weights.png

Every file is written atomically. A killed run started again with the same
config resumes from its last checkpoint; because the step key is
``fold_in(key, step)``, it ends with exactly the result of an uninterrupted run.

Presets (docs/protocols.md): ``paper`` (published hyperparameters, for an accelerator),
``cpu`` (one DM vs DM+KDE comparison in minutes on 2 CPU cores) and ``smoke``
(seconds, for tests).
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import signal
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxdd import augment as augment_lib
from jaxdd import config as config_lib
from jaxdd import (baselines, data, debias, diagnostics, distill, evaluate, matching, models,
                   surrogate, synset)
from jaxdd import kde as kde_lib
from jaxdd.distill import experts as mtt_lib
from jaxdd import plots as plots_lib
from jaxdd import policy as policy_lib
from jaxdd import protocols
from jaxdd import progress as progress_lib
from jaxdd.security import signing
from jaxdd.structs import Batch, SynSet

# The run configuration lives in jaxdd.config; its names stay reachable from here.
RunConfig = config_lib.RunConfig
get_config = config_lib.get_config
validate = config_lib.validate
PRESETS = config_lib.PRESETS
METHOD_PRESETS = config_lib.METHOD_PRESETS
METHODS = config_lib.METHODS
CHOICES = config_lib.CHOICES
EVAL_FIELDS = config_lib.EVAL_FIELDS


def check_models(config: RunConfig, run_data: "RunData") -> None:
  """What a run needs of its data, checked before any work or file: networks that do not
  pool the images away (:func:`jaxdd.models.check_fits`) and ``ipc`` real images in
  every class (for the initialisation)."""
  shape = tuple(run_data.train.images.shape[1:])
  nc = run_data.num_classes
  models.check_fits(models.ConvNet(nc, depth=config.depth, width=config.width), shape)
  models.check_fits(models.get(config.eval_model, num_classes=nc), shape)
  counts = np.bincount(np.asarray(run_data.train.labels), minlength=nc)
  if counts.min() < config.ipc:  # distill's init refuses it too, but only after files exist
    c = int(np.argmin(counts))
    raise ValueError(f"ipc={config.ipc} is larger than class {c}, which has {counts[c]} real "
                     f"training images; lower --ipc (at most {counts.min()}) or use a larger "
                     "source")


_HELD_LOCKS: dict[str, int] = {}


@contextlib.contextmanager
def workdir_lock(workdir: str):
  """Holds ``<workdir>/.lock`` (the holder's pid and host) for as long as a run writes there.

  A second process that wants the same workdir is refused with one line naming the
  holder; a lock left by a process that no longer exists on this host is taken over.
  Re-entrant within a process (a run locks its directory around distillation and
  evaluation alike).
  """
  import socket
  path = os.path.abspath(os.path.join(workdir, ".lock"))
  if _HELD_LOCKS.get(path):
    _HELD_LOCKS[path] += 1
    try:
      yield
    finally:
      _HELD_LOCKS[path] -= 1
    return
  created = not os.path.exists(workdir)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  host = socket.gethostname()
  me = json.dumps({"pid": os.getpid(), "host": host})
  for _ in range(2):
    try:
      fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      try:
        with open(path) as f:
          holder = json.load(f)
      except (OSError, ValueError):
        holder = {}
      pid, where = holder.get("pid"), holder.get("host")
      alive = True
      if where == host and isinstance(pid, int):
        try:
          os.kill(pid, 0)
        except ProcessLookupError:
          alive = False
        except PermissionError:
          alive = True
      if alive:
        raise ValueError(f"{workdir} is in use by process {pid} on {where} (lock file {path}); "
                         "wait for that run to finish, use another --workdir, or delete the "
                         "lock file if that process is gone") from None
      progress_lib.logger.warning("%s: taking over the lock of process %s, which has exited",
                                  workdir, pid)
      os.remove(path)
      continue
    with os.fdopen(fd, "w") as f:
      f.write(me)
    break
  _HELD_LOCKS[path] = 1
  try:
    yield
  finally:
    _HELD_LOCKS.pop(path, None)
    try:
      os.remove(path)
      if created and not os.listdir(workdir):  # a refused run leaves no empty directory
        os.rmdir(workdir)
    except OSError:
      pass


def locked(fn):
  """Runs ``fn(config, workdir, ...)`` holding :func:`workdir_lock` on ``workdir``."""
  @functools.wraps(fn)
  def wrapped(config, workdir, *args, **kwargs):
    with workdir_lock(workdir):
      return fn(config, workdir, *args, **kwargs)
  return wrapped


def under_policy(fn):
  """Runs ``fn(config, ...)`` with ``config.policy`` pinned (:func:`jaxdd.policy.use`)."""
  @functools.wraps(fn)
  def wrapped(config, *args, **kwargs):
    with policy_lib.use(config.policy):
      return fn(config, *args, **kwargs)
  return wrapped



def _check_workdir(config: RunConfig, workdir: str) -> None:
  """Refuses a workdir that holds a run with another config (reads only)."""
  config_path = os.path.join(workdir, "config.json")
  if os.path.exists(config_path):
    with open(config_path) as f:
      previous = json.load(f)
    if previous.get("digest") != config.digest():
      raise ValueError(f"{workdir} holds a run with a different config (digest "
                       f"{previous.get('digest')} vs {config.digest()}); use another --workdir "
                       "or delete it to start over")


@functools.cache
def code_version() -> str:
  """The package version plus the git commit when run from a checkout, read once per process
  (and :mod:`jaxdd.pipeline` reads it on import), so that a long run records the commit of the
  code it loaded, not one committed while it ran."""
  from importlib import metadata
  try:
    version = metadata.version("jaxdd")
  except metadata.PackageNotFoundError:
    version = "unknown"
  head = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".git", "HEAD")
  try:
    with open(head) as f:
      ref = f.read().strip()
    if ref.startswith("ref: "):
      with open(os.path.join(os.path.dirname(head), ref[5:])) as f:
        ref = f.read().strip()
    return f"{version}+g{ref[:10]}"
  except OSError:
    return version


code_version()  # the commit of the code this process loads


def baseline_keys(config: RunConfig) -> tuple[jax.Array, jax.Array]:
  """(subset selection, evaluation) keys of the baselines of a run's seed."""
  return tuple(jax.random.split(jax.random.key(config.seed), 3)[1:])


def run_keys(config: RunConfig) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """(surrogate, distillation init, evaluation, diagnostics) keys of a run's seed."""
  return seed_keys(config.seed)


def seed_keys(seed: int) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """:func:`run_keys` of a run whose seed is ``seed``."""
  return tuple(jax.random.split(jax.random.key(seed), 4))


# ---------------------------------------------------------------------------- data


class RunData:
  """The three splits, normalised, plus the raw [0, 1] training images.

  The test split is loaded on first use only, so code that selects anything
  (``jaxdd tune``) provably never reads it.
  """

  def __init__(self, config: RunConfig):
    self._kw = dict(conflict_ratio=config.conflict_ratio, severity=config.severity,
                    seed=config.seed, source=config.source)
    self._dataset = config.dataset
    self.train = data.load(config.dataset, split="train", **self._kw)
    self.valid = data.load(config.dataset, split="valid", **self._kw)
    self._test = None
    self.num_classes = self.train.num_classes
    self.mean, self.std = data.channel_stats(self.train.images)

  @property
  def test(self):
    if self._test is None:
      self._test = data.load(self._dataset, split="test", **self._kw)
    return self._test

  def normalized(self, ds) -> np.ndarray:
    return np.asarray(data.normalize(ds.images, self.mean, self.std))

  def batch(self, ds) -> Batch:
    return Batch(jnp.asarray(self.normalized(ds)), jnp.asarray(ds.labels), jnp.asarray(ds.bias),
                 jnp.asarray(ds.aligned))


def surrogate_artifact(config: RunConfig, run_data: RunData, key: jax.Array,
                       progress: bool = True) -> surrogate.SurrogateArtifact:
  """Trains (or loads from the cache) the run's SupCon surrogate (params and embeddings)."""
  cfg = config.surrogate  # a step budget (the cpu preset) is resolved for the data size
  train = run_data.train
  return surrogate.load_or_train(key, dict(train.meta), train.images, train.labels, config=cfg,
                                 progress=progress)


def surrogate_embeddings(config: RunConfig, run_data: RunData, key: jax.Array,
                         progress: bool = True) -> np.ndarray:
  """Trains (or loads from the cache) the SupCon surrogate; returns (N, 128) embeddings."""
  return np.asarray(surrogate_artifact(config, run_data, key, progress).embeddings)


# ---------------------------------------------------------------------------- distillation


def _checkpointer(workdir: str):
  import orbax.checkpoint as ocp
  extra = {}
  root = os.path.abspath(os.path.join(workdir, "checkpoints"))
  if jax.process_count() > 1:  # each process checkpoints its own host copy, in its own workdir
    i = jax.process_index()
    os.makedirs(root, exist_ok=True)  # orbax creates it only when every process takes part
    extra["multiprocessing_options"] = ocp.options.MultiprocessingOptions(
        primary_host=i, active_processes={i}, barrier_sync_key_prefix=f"jaxdd-process-{i}")
    extra["create"] = False
  return ocp.CheckpointManager(
      root,
      options=ocp.CheckpointManagerOptions(max_to_keep=2, enable_async_checkpointing=False,
                                           **extra))


def _state_tree(state: distill.DistillState) -> dict:
  from jaxdd import parallel  # noqa: PLC0415
  h = parallel.host  # gathers arrays sharded over several processes
  tree = {"images": h(state.syn.images), "labels": h(state.syn.labels),
          "opt": [h(x) for x in jax.tree.leaves(state.opt_state)],
          "step": h(state.step), "key": h(jax.random.key_data(state.key))}
  if jax.tree.leaves(state.extra):  # what a method learns besides the images (MTT's syn_lr)
    tree["extra"] = [h(x) for x in jax.tree.leaves(state.extra)]
  return tree


def _restore_state(tree: dict, template: distill.DistillState) -> distill.DistillState:
  opt = jax.tree.unflatten(jax.tree.structure(template.opt_state),
                           [jnp.asarray(x) for x in tree["opt"]])
  extra = template.extra
  if "extra" in tree:
    extra = jax.tree.unflatten(jax.tree.structure(template.extra),
                               [jnp.asarray(x) for x in tree["extra"]])
  return distill.DistillState(SynSet(jnp.asarray(tree["images"]), jnp.asarray(tree["labels"])), opt,
                              jnp.asarray(tree["step"]),
                              jax.random.wrap_key_data(jnp.asarray(tree["key"])), extra)


def _read_metrics(path: str, upto: int) -> list[dict]:
  """Rows of ``metrics.jsonl`` up to step ``upto``; a line torn by a kill is skipped."""
  if not os.path.exists(path):
    return []
  rows = []
  with open(path) as f:
    for line in f:
      line = line.strip()
      if not line:
        continue
      try:
        row = json.loads(line)
      except json.JSONDecodeError:
        continue  # the last line of a killed run may be incomplete
      if row.get("step", 0) <= upto:
        rows.append(row)
  return rows


def _write_metrics(path: str, rows: list[dict]) -> None:
  synset.atomic_write_bytes(path, "".join(json.dumps(r) + "\n" for r in rows).encode())


def method_name(config: RunConfig) -> str:
  """``dm``, ``dsa`` or ``dc``, with ``+kde`` (or ``+oracle``) for the reweighted variant."""
  return config.method + ("" if config.weighting == "none" else f"+{config.weighting}")


def oracle_log_density(labels, bias, *, num_classes: int) -> np.ndarray:
  """log of each sample's (class, bias) group share of its class: the oracle's "density".

  With power normalisation at T = 1 the weights are ``1 / group size``,
  normalised: every bias group present in a class gets the same total weight
  (group-balanced reweighting, which needs the TRUE bias labels).
  """
  labels = np.asarray(labels)
  bias = np.asarray(bias)
  out = np.zeros(labels.shape, np.float64)
  for c in range(num_classes):
    sel = labels == c
    if not sel.any():
      continue
    values, inverse, counts = np.unique(bias[sel], return_inverse=True, return_counts=True)
    out[sel] = np.log(counts[inverse] / sel.sum())
  return out.astype(np.float32)


def run_log_density(config: RunConfig, run_data: RunData,
                    embeddings: np.ndarray | None) -> np.ndarray | None:
  """The whole-class log densities a run needs, or None.

  KDE runs need them for scope 'class' and for weighted initialisation or
  sampling (which draw in proportion to whole-class weights); oracle runs
  always (the group shares of :func:`oracle_log_density`).
  """
  train, nc = run_data.train, run_data.num_classes
  if config.weighting == "oracle":
    return oracle_log_density(train.labels, train.bias, num_classes=nc)
  if config.weighting == "kde" and (config.kde_scope == "class" or config.init == "weighted"
                                    or config.real_sampling == "weighted"):
    return np.asarray(distill.class_log_density(embeddings, train.labels, num_classes=nc,
                                                variance=config.kde_variance,
                                                floor=config.kde_floor))
  return None


def num_bias_values(ds) -> int:
  """Number of bias values of a dataset split (FairDD's groups)."""
  return int(np.asarray(ds.bias).max()) + 1


def device_mesh(config: RunConfig, num_classes: int):
  """The mesh of ``config.devices`` (None for one device): classes x real batch.

  The class axis takes the largest divisor of the device count that divides the
  class count, the real-batch axis the rest, which must divide ``real_per_class``.
  """
  from jaxdd import parallel  # noqa: PLC0415
  available = len(jax.devices())
  n = available if config.devices == "all" else int(config.devices)
  if n == 1:
    return None
  if n > available:
    raise ValueError(f"--devices {n}: only {available} devices are visible; lower it or use "
                     "--devices all")
  if jax.process_count() > 1 and n != available:
    raise ValueError(f"--devices {n}: across {jax.process_count()} processes the mesh takes "
                     f"every process's devices; use --devices all ({available})")
  cls = max(d for d in range(1, n + 1) if n % d == 0 and num_classes % d == 0)
  real = n // cls
  if config.real_per_class % real:
    raise ValueError(f"--devices {n} splits into {cls} class x {real} real-batch shards, and "
                     f"real_per_class={config.real_per_class} is not a multiple of {real}; "
                     "change one of them")
  return parallel.make_mesh({"cls": cls, "real": real}, devices=jax.devices()[:n])


def make_distiller(config: RunConfig, num_classes: int,
                   kde_config: distill.KDEConfig | None, *,
                   real_dtype: str | None = None, num_bias: int | None = None,
                   **runs) -> distill.Distiller:
  """The :class:`~jaxdd.distill.Distiller` of ``config.method`` with the run's settings.

  ``real_dtype`` is DM's (:func:`jaxdd.distill.dm`); other methods refuse it.
  ``num_bias``: the number of bias values, for ``weighting='fairdd'`` (DM's
  ``group_matching``). ``runs``: DM's ``num_runs``, ``run_knobs`` and
  ``common_random_numbers`` (:func:`distill_group`).
  """
  if runs and config.method != "dm":
    raise ValueError(f"several runs in one program are a DM option; method {config.method!r} "
                     "has none")
  common = dict(num_classes=num_classes, ipc=config.ipc,
                model=models.ConvNet(num_classes, depth=config.depth, width=config.width),
                real_per_class=config.real_per_class, lr=config.lr_img, momentum=config.momentum,
                init=config.init, kde_config=kde_config, real_sampling=config.real_sampling)
  mesh = device_mesh(config, num_classes)
  sharded = {} if mesh is None else dict(mesh=mesh, class_axis="cls", batch_axis="real")
  if config.method == "mtt":
    if real_dtype is not None:
      raise ValueError(f"real_dtype is a DM option; method {config.method!r} has none")
    return distill.mtt(num_classes=num_classes, ipc=config.ipc,
                       num_epochs=expert_run_epochs(config),
                       model=common["model"], expert_epochs=config.expert_epochs,
                       max_start_epoch=config.max_start_epoch, syn_steps=config.syn_steps,
                       batch_syn=config.batch_syn, lr_img=config.lr_img, lr_lr=config.lr_lr,
                       lr_teacher=config.lr_teacher, momentum=config.momentum,
                       strategy=config.dsa_strategy or None, mode=config.mtt_mode,
                       init=config.init, kde_config=kde_config)
  if config.method == "cfm":
    if real_dtype is not None:
      raise ValueError(f"real_dtype is a DM option; method {config.method!r} has none")
    aug = augment_lib.dsa(config.dsa_strategy) if config.dsa_strategy else None
    return distill.cfm(iterations=max(config.iterations, 1), augment=aug, beta=config.cfm_beta,
                       schedule=config.cfm_schedule, curriculum=config.cfm_curriculum,
                       filter=config.cfm_filter, normalize=config.cfm_normalize == "real",
                       **common)
  if config.method == "dm":
    aug = augment_lib.dsa(config.dsa_strategy) if config.dsa_strategy else None
    return distill.dm(augment=aug, real_dtype=real_dtype,
                      group_matching=num_bias if config.weighting == "fairdd" else None,
                      **common, **runs, **sharded)
  if real_dtype is not None:
    raise ValueError(f"real_dtype is a DM option; method {config.method!r} has none")
  strategy = config.dsa_strategy if config.method == "dsa" else None
  return distill.gm(strategy=strategy or None, outer_loop=config.outer_loop,
                    inner_loop=config.inner_loop, lr_net=config.lr_net, **common, **sharded)


# ---------------------------------------------------------------------------- expert buffers


def expert_run_epochs(config: RunConfig) -> int:
  """Epochs each expert records: ``max_start_epoch + expert_epochs``, the only ones MTT reads."""
  return config.max_start_epoch + config.expert_epochs


def whole_class_weights(config: RunConfig, labels, log_density: np.ndarray | None,
                        num_classes: int) -> np.ndarray:
  """(N,) per-image weights over whole classes, each class summing to 1.

  From the whole-class log densities (:func:`run_log_density`) under the
  run's temperature and normalisation; uniform within each class when
  ``log_density`` is None (the vanilla method).
  """
  labels = np.asarray(labels)
  if log_density is None:
    return (1.0 / np.bincount(labels, minlength=num_classes)[labels]).astype(np.float32)
  kcfg = config.kde
  w = np.zeros(len(labels), np.float32)
  for c in range(num_classes):
    sel = labels == c
    w[sel] = np.asarray(kde_lib.weights_from_log_density(
        jnp.asarray(log_density[sel]), temperature=kcfg.temperature, normalize=kcfg.normalize))
  return w


def expert_weights(config: RunConfig, run_data: RunData,
                   log_density: np.ndarray | None) -> np.ndarray | None:
  """The real images' weights in expert training, or None (vanilla: uniform experts).

  Image i of class c weighs ``n_c * w_i`` with ``w`` the whole-class weights
  (:func:`whole_class_weights`): every class keeps its share of an epoch and,
  inside a class, rare images count more.
  """
  if config.weighting == "none":
    return None
  labels = np.asarray(run_data.train.labels)
  counts = np.bincount(labels, minlength=run_data.num_classes)
  w = whole_class_weights(config, labels, log_density, run_data.num_classes)
  return (w * counts[labels]).astype(np.float64)


def expert_spec(config: RunConfig, run_data: RunData, weights: np.ndarray | None) -> dict:
  """What determines a run's expert buffer (:func:`jaxdd.mtt.buffer_spec`).

  The data (the dataset card's meta and the normalisation), the network, the
  weighting (its settings and the sha256 of the per-image weights, which pins
  the surrogate and the KDE), the trainer and the seed. Two runs that differ only
  in distillation settings (lr_img, syn_steps, the gradient mode, ...) share a
  buffer.
  """
  import hashlib  # noqa: PLC0415
  train, nc = run_data.train, run_data.num_classes
  data_desc = {"dataset": dict(train.meta), "mean": np.asarray(run_data.mean).tolist(),
               "std": np.asarray(run_data.std).tolist()}
  if weights is None:
    weighting = {"kind": "none"}
  else:
    weighting = {"kind": config.weighting, "by": config.expert_weighting,
                 "kde_variance": config.kde_variance, "kde_temperature": config.kde_temperature,
                 "kde_normalize": config.kde_normalize, "kde_floor": config.kde_floor,
                 "surrogate_preset": config.surrogate_preset,
                 "weights_sha256": hashlib.sha256(
                     np.ascontiguousarray(weights, np.float64).tobytes()).hexdigest()}
  trainer = {"num_experts": config.num_experts, "epochs": expert_run_epochs(config),
             "lr": config.expert_lr, "batch_size": EXPERT_BATCH,
             "augment": config.dsa_strategy or None}
  model = models.spec_of(models.ConvNet(nc, depth=config.depth, width=config.width))
  return mtt_lib.buffer_spec(data=data_desc, model=model, weighting=weighting, trainer=trainer,
                         seed=config.seed)


#: Batch size of expert training (MTT's buffer.py).
EXPERT_BATCH = 256


def default_buffer_dir(spec: dict) -> str:
  """``$JAXDD_CACHE/buffers/<spec digest>``: runs with the same experts share them."""
  from jaxdd._src.io import cache_root  # noqa: PLC0415
  return str(cache_root("buffers", mtt_lib.spec_digest(spec)[:16]))


def expert_buffer(config: RunConfig, run_data: RunData, log_density: np.ndarray | None,
                  key: jax.Array, *, buffer_dir: str | None = None,
                  progress: bool = True) -> tuple[np.ndarray, dict, str]:
  """The run's expert trajectories: reused when a buffer with its spec exists, else built.

  ``buffer_dir`` (default :func:`default_buffer_dir`) holds the artifact; a
  build resumes expert by expert (:func:`jaxdd.mtt.build_buffer`), and a
  folder holding a buffer of other settings is refused, never overwritten.

  Returns:
    ``(trajectories, meta, path)``.
  """
  weights = expert_weights(config, run_data, log_density)
  spec = expert_spec(config, run_data, weights)
  path = buffer_dir or default_buffer_dir(spec)
  train, nc = run_data.train, run_data.num_classes
  if os.path.exists(os.path.join(path, "manifest.json")):
    progress_lib.logger.info("expert buffer: reusing %s", path)
  else:
    progress_lib.logger.info("expert buffer: training %d experts for %d epochs into %s",
                             config.num_experts, expert_run_epochs(config), path)
  traj, meta = mtt_lib.build_buffer(
      path, spec, key, run_data.normalized(train), train.labels,
      model=models.ConvNet(nc, depth=config.depth, width=config.width),
      num_experts=config.num_experts, epochs=expert_run_epochs(config), lr=config.expert_lr,
      batch_size=EXPERT_BATCH, augment=config.dsa_strategy or None, weights=weights,
      weighting=config.expert_weighting, progress=progress)
  return traj, meta, path


@under_policy
def build_expert_buffer(config: RunConfig, *, buffer_dir: str | None = None,
                        progress: bool = True) -> tuple[str, tuple[int, ...]]:
  """The expert buffer of a trajectory-matching run, alone (``jaxdd buffers``).

  Loads the data, trains (or loads) the surrogate when the run is KDE-weighted,
  and builds or reuses the buffer :func:`distill_stage` would use.

  Returns:
    ``(path, shape)`` of the buffer: (experts, epochs + 1, parameters).
  """
  validate(config)
  if config.method != "mtt":
    raise ValueError(f"expert buffers belong to trajectory matching; this run's method is "
                     f"{config.method!r}: use --method mtt")
  run_data = RunData(config)
  check_models(config, run_data)
  embeddings = None
  if config.weighting == "kde":
    embeddings = surrogate_embeddings(config, run_data, run_keys(config)[0], progress=progress)
  log_density = run_log_density(config, run_data, embeddings)
  traj, _, path = expert_buffer(config, run_data, log_density, expert_key(config),
                                buffer_dir=buffer_dir, progress=progress)
  return path, tuple(traj.shape)


def expert_key(config: RunConfig) -> jax.Array:
  """The key of a run's expert trajectories (independent of its distillation's)."""
  return jax.random.fold_in(run_keys(config)[1], 1)


class MetricsLog:
  """``metrics.jsonl``, appended one complete line per logged step.

  Each row is written with a single ``write`` on an ``O_APPEND`` descriptor
  and flushed, so a killed run leaves every finished line on disk (at most the
  line being written can be torn; :func:`_read_metrics` skips it). Opening a
  log for a run resumed at step ``start`` first rewrites the file atomically
  without the rows after ``start`` (they belong to steps that will be redone).
  Optionally mirrors the scalars to TensorBoard (``<workdir>/tensorboard``)
  when ``tensorboardX`` is installed; silently skipped otherwise.
  """

  def __init__(self, workdir: str, start: int, *, tensorboard: bool = True):
    self.path = os.path.join(workdir, "metrics.jsonl")
    self.rows = _read_metrics(self.path, start)
    _write_metrics(self.path, self.rows)
    self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
    self._tb = None
    if tensorboard:
      try:
        import tensorboardX  # noqa: PLC0415  (optional)
      except ImportError:
        tensorboardX = None
      if tensorboardX is not None:
        self._tb = tensorboardX.SummaryWriter(os.path.join(workdir, "tensorboard"),
                                              purge_step=start + 1)

  def append(self, row: dict) -> None:
    self.rows.append(row)
    os.write(self._fd, (json.dumps(row) + "\n").encode())
    if self._tb is not None:
      for k, v in row.items():
        if k != "step" and isinstance(v, (int, float)):
          self._tb.add_scalar(k, v, row["step"])

  def close(self) -> None:
    if self._fd is not None:
      os.close(self._fd)
      self._fd = None
    if self._tb is not None:
      self._tb.close()
      self._tb = None


def _restore_newest(mngr, state: distill.DistillState, workdir: str,
                    upto: int | None = None) -> tuple[distill.DistillState, int]:
  """The newest checkpoint (of step <= ``upto``) that restores (an unreadable one is
  skipped, and said so); ``(state, 0)`` when there is none."""
  import orbax.checkpoint as ocp
  steps = sorted((s for s in mngr.all_steps() if upto is None or s <= upto), reverse=True)
  for i, step in enumerate(steps):
    try:
      tree = mngr.restore(step, args=ocp.args.StandardRestore(_state_tree(state)))
      restored = _restore_state(tree, state)
      if int(restored.step) != step:
        raise ValueError(f"it holds step {int(restored.step)}")
    except Exception as e:  # noqa: BLE001  (any damage: fall back to an older checkpoint)
      older = f"falling back to step {steps[i + 1]}" if i + 1 < len(steps) else "starting over"
      progress_lib.logger.warning("%s: checkpoint %d cannot be restored (%s: %s); %s", workdir,
                                  step, type(e).__name__, str(e).splitlines()[0][:200] if str(e)
                                  else "", older)
      continue
    if i:
      progress_lib.logger.warning("%s: resumed from the older checkpoint %d", workdir, step)
    return restored, step
  return state, 0


def track_every(config: RunConfig) -> int:
  """Steps between two bias scores of the synthetic set: 10 % of the iterations."""
  return max(1, config.iterations // 10)


def distill_run(config: RunConfig, workdir: str, run_data: RunData,
                embeddings: np.ndarray | None, key: jax.Array, *, progress: bool = True,
                stop_after: int | None = None, real_dtype: str | None = None,
                classifier: diagnostics.BiasClassifier | None = None,
                buffer_dir: str | None = None) -> SynSet:
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
  from jaxdd import parallel
  from jaxdd import progress as progress_lib

  nc = run_data.num_classes
  kde_config = config.kde
  log_density = run_log_density(config, run_data, embeddings)
  mesh = device_mesh(config, nc)
  fairdd = config.weighting == "fairdd"
  real = distill.real_data(run_data.normalized(run_data.train), run_data.train.labels,
                           num_classes=nc,
                           embeddings=(embeddings if config.weighting == "kde"
                                       and config.kde_scope == "batch" else None),
                           log_density=log_density,
                           groups=run_data.train.bias if fairdd else None,
                           mesh=mesh)
  d = make_distiller(config, nc, kde_config, real_dtype=real_dtype,
                     num_bias=num_bias_values(run_data.train) if fairdd else None)
  step_data = real
  if config.method == "mtt":
    traj, buffer_meta, path = expert_buffer(config, run_data, log_density, expert_key(config),
                                            buffer_dir=buffer_dir, progress=progress)
    synset.atomic_write_json(os.path.join(workdir, "buffer.json"),
                             {"path": os.path.abspath(path), "digest": buffer_meta["digest"],
                              "shape": buffer_meta["shape"]})
    step_data = jnp.asarray(traj)
  fresh = d.init(key, real)
  mngr = _checkpointer(workdir)
  state, start = _restore_newest(mngr, fresh, workdir)
  if jax.process_count() > 1:
    # Every process keeps its own checkpoints; all resume from the newest step they share.
    from jax.experimental import multihost_utils  # noqa: PLC0415
    common = int(np.min(multihost_utils.process_allgather(np.int32(start))))
    if common != start:
      state, start = _restore_newest(mngr, fresh, workdir, upto=common)
    if start != common:
      raise ValueError(f"{workdir}: this process has no checkpoint of step {common}, where "
                       "the other processes resume; delete the checkpoints of every process "
                       "to start over")
  if start and mesh is not None:
    state = parallel.put(state, mesh)  # restored on the host: back onto the mesh
  log = MetricsLog(workdir, start)
  every = track_every(config)

  def track(step):
    if classifier is not None and (step % every == 0 or step == config.iterations):
      score = diagnostics.bias_score(classifier, parallel.host(state.syn.images),
                                     parallel.host(state.syn.labels))
      log.append({"step": step, "bias_aligned_fraction": score["aligned_fraction"]})

  if start == 0:
    track(0)
  end = config.iterations if stop_after is None else min(config.iterations, start + stop_after)
  bar = progress_lib.bar(config.iterations, f"{method_name(config).upper()} ipc={config.ipc}",
                         unit="step", initial=start, disable=not progress)
  t0 = time.perf_counter()
  if start > 0:
    progress_lib.logger.info("%s: resuming from step %d of %d", workdir, start, config.iterations)

  def after(it, n, st, row):
    nonlocal state
    state = st
    loss = _log_chunk(config, nc, it, n, row, log, t0)
    if loss is not None:
      bar.set_postfix(loss=f"{loss:.4f}")
    bar.update(n)
    step = it + n
    track(step)
    if step % config.checkpoint_every == 0 or step == config.iterations:
      _save(mngr, step, state)

  def save(step):
    if mngr.latest_step() != step:
      _save(mngr, step, state, force=True)

  try:
    _drive(d, state, step_data, start, end, steps_per_call(config),
           stops=(config.checkpoint_every, every if classifier is not None else 0),
           after=after, save=save)
  finally:
    bar.close()
    log.close()
    mngr.close()
  return SynSet(parallel.host(state.syn.images), parallel.host(state.syn.labels))


def steps_per_call(config: RunConfig) -> int:
  """Distillation steps per host round trip: ``config.steps_per_call``, or the active
  policy's (:class:`jaxdd.policy.Policy`) when it is ``"auto"``."""
  if config.steps_per_call == "auto":
    return policy_lib.current().steps_per_call
  return int(config.steps_per_call)


def _chunks(start: int, end: int, k: int, stops) -> list[tuple[int, int]]:
  """``(first step, length)`` of at most ``k`` steps covering [start, end), every chunk ending
  at the next multiple of each nonzero ``stops`` entry (checkpoints, bias scores) or before."""
  out, it = [], start
  while it < end:
    nxt = min([end, it + k] + [(it // s + 1) * s for s in stops if s])
    out.append((it, nxt - it))
    it = nxt
  return out


def _drive(d: distill.Distiller, state, data, start: int, end: int, k: int, *, stops,
           after, save) -> None:
  """Steps ``d`` from ``start`` to ``end``, ``k`` steps per host round trip.

  After each chunk of ``n`` steps from step ``it``, ``after(it, n, state, row)`` gets the
  new state and ``row(j)``, the metrics of the chunk's j-th step (host values fetched
  once per chunk, and only if asked for). The first Ctrl-C is deferred to the end of the
  chunk in flight, then ``save(step)`` runs and :class:`Interrupted` is raised.
  """
  multi = distill.multi_step(d, k) if k > 1 else None
  with _deferred_interrupt() as interrupted:
    for it, n in _chunks(start, end, k, stops):
      if multi is None:
        state, m = d.step(state, data)
        row = lambda j, m=m: m  # noqa: E731 (one step: its metrics, fetched when read)
      else:
        state, stacked = multi(state, data, n)
        row = _lazy_rows(stacked)
      after(it, n, state, row)
      if interrupted():  # checked after the chunk's work: the signal may arrive during it
        save(it + n)
        raise Interrupted(it + n)


def _lazy_rows(stacked):
  host = []

  def row(j):
    if not host:
      from jaxdd import parallel  # noqa: PLC0415
      host.append(parallel.host(stacked))
    return jax.tree.map(lambda a: a[j], host[0])
  return row


def _save(mngr, step: int, state, *, force: bool = False) -> None:
  import orbax.checkpoint as ocp
  mngr.save(step, args=ocp.args.StandardSave(_state_tree(state)), force=force)
  mngr.wait_until_finished()


class Interrupted(KeyboardInterrupt):
  """Ctrl-C during distillation, after the step in flight finished and was checkpointed."""

  def __init__(self, step: int):
    super().__init__(f"interrupted at step {step}")
    self.step = step


@contextlib.contextmanager
def _deferred_interrupt():
  """The first Ctrl-C (SIGINT) only sets a flag the loop checks after each step; a
  second one interrupts at once. Outside the main thread nothing is changed."""
  if threading.current_thread() is not threading.main_thread():
    yield lambda: False
    return
  hit = []

  def handler(signum, frame):
    if hit:
      raise KeyboardInterrupt
    hit.append(signum)
    progress_lib.logger.warning("interrupt: finishing the current step and saving a checkpoint "
                                "(Ctrl-C again to stop at once)")

  previous = signal.signal(signal.SIGINT, handler)
  try:
    yield lambda: bool(hit)
  finally:
    signal.signal(signal.SIGINT, previous)


def _log_chunk(config, nc: int, it: int, n: int, row, log, t0: float,
               pick=lambda m: m, name: str | None = None) -> float | None:
  """Appends the metrics lines of steps ``it+1 .. it+n`` that fall on ``log_every`` (or
  the last step) and returns the last logged loss (None if none).

  ``row(j)`` is the chunk's j-th step's metrics; ``pick`` selects one run's from them
  (a column of an N-run group, whose directory ``name`` the error message gives).
  """
  loss = None
  for step in range(it + 1, it + n + 1):
    if step % config.log_every and step != config.iterations:
      continue
    m = pick(row(step - it - 1))
    # "loss" is the matching loss averaged over classes (the reference's printed
    # loss_avg), the number the progress bar shows; trajectory matching's loss is one
    # normalised parameter distance for the whole set.
    loss = float(m["loss"]) / (1 if config.method == "mtt" else nc)
    if not np.isfinite(loss):
      raise FloatingPointError(f"the {config.method.upper()} loss"
                               f"{' of ' + name if name else ''} became {loss} at step {step}; "
                               f"lower lr_img (now {config.lr_img}) or check the data "
                               "normalisation")
    out = {"step": step, "loss": loss, "grad_norm": float(m["grad_norm"])}
    for key in ("max_weight", "syn_lr", "start_epoch", "beta"):
      if key in m:
        out[key] = float(m[key])
    log.append({**out, "time_s": time.perf_counter() - t0})
  return loss


# ---------------------------------------------------------------------------- plots


#: Plots of a run (they live in :mod:`jaxdd.plots`; these names are kept).
plot_synset = plots_lib.plot_synset
plot_accuracy_bars = plots_lib.plot_accuracy_bars


# ---------------------------------------------------------------------------- runs


def _fairdd_batch_weights(key, labels, bias, batch_size: int, num_classes: int,
                          num_rounds: int = 20) -> tuple[np.ndarray, np.ndarray]:
  """FairDD's in-batch group-balanced weights, averaged per sample over sampled batches.

  Returns (N,) weights (each class summing to 1) and each class's mean in-batch ESS.
  """
  labels, bias = np.asarray(labels), np.asarray(bias)
  index, mask = diagnostics.batch_plan(key, labels, batch_size=batch_size,
                                       num_classes=num_classes, num_rounds=num_rounds)
  w_b, _ = matching.group_balanced_weights(jnp.asarray(bias[index]), jnp.asarray(mask),
                                           int(bias.max()) + 1)
  w_b = np.asarray(w_b, np.float64)
  w = diagnostics.per_sample_mean(w_b, index, mask, labels, num_classes)
  return w, diagnostics.mean_batch_ess(w_b, mask, labels[index[:, 0]], num_classes)


def weight_diagnostics(config: RunConfig, run_data: RunData, embeddings: np.ndarray | None,
                       key: jax.Array, *, workdir: str | None = None) -> dict:
  """What ``weights.json`` holds: how a run's real-image weights fall on the bias groups.

  The per-sample weights are the ones the run actually uses: in-batch KDE
  weights averaged over sampled batches (scope 'batch' with uniform sampling,
  the paper's), else the whole-class weights (scope 'class', weighted
  initialisation or sampling, the oracle); uniform weights for a vanilla run.
  ``weight_report`` (aligned vs conflicting), ``groups`` (per class: the share
  of each bias group against the balanced share, and the whole-class effective
  sample size) and ``batch_ess`` (per class, the effective sample size of one
  sampled real batch of ``real_per_class``) use the TRUE bias labels: they are
  diagnostics, never inputs. Writes ``plots/weights.png`` when ``workdir`` is given.
  """
  train, nc = run_data.train, run_data.num_classes
  n_per = config.real_per_class
  log_density = run_log_density(config, run_data, embeddings)
  if (config.weighting == "kde" and config.kde_scope == "batch"
      and config.real_sampling == "uniform"):  # the loss weighs inside each sampled batch
    w, ess = diagnostics.batch_scope_weights(
        key, embeddings, train.labels, batch_size=n_per, variance=config.kde_variance,
        temperature=config.kde_temperature, normalize=config.kde_normalize, num_classes=nc,
        return_ess=True)
  elif config.weighting == "fairdd":  # group-balanced inside each sampled batch
    w, ess = _fairdd_batch_weights(key, train.labels, train.bias, n_per, nc)
  else:
    # vanilla: every image of a class weighs the same
    w = whole_class_weights(config, train.labels, log_density, nc)
    if config.method == "mtt":  # no real batch: the weights act on the experts' epochs
      ess = np.full(nc, np.nan)
    elif config.real_sampling == "weighted":  # i.i.d. draws with a plain mean
      ess = np.full(nc, float(n_per))
    else:
      ess = diagnostics.batch_ess(key, w, train.labels, batch_size=n_per, num_classes=nc)
  report = diagnostics.weight_report(w, train.labels, train.aligned, num_classes=nc)
  report["groups"] = diagnostics.group_report(w, train.labels, train.bias, num_classes=nc)
  report["batch_ess"] = [None if not np.isfinite(e) else float(e) for e in ess]
  report["weighting"] = {"weighting": config.weighting, "scope": config.kde_scope,
                         "floor": config.kde_floor,
                         "init": config.init, "real_sampling": config.real_sampling,
                         "real_per_class": n_per}
  if workdir is not None and config.weighting != "none":
    diagnostics.plot_weight_histogram(
        w, train.aligned, os.path.join(workdir, "plots", "weights.png"),
        title=f"{config.weighting} weights, {config.dataset} {config.conflict_ratio}")
  return report


def _check_distill_workdir(config: RunConfig, workdir: str) -> None:
  """Refuses a workdir whose distillation settings differ (evaluation settings may)."""
  config_path = os.path.join(workdir, "config.json")
  if os.path.exists(config_path):
    with open(config_path) as f:
      previous = json.load(f)
    if previous.get("digest") == config.digest():
      return  # the same run (also written before distill digests existed)
    if previous.get("distill_digest") != config.distill_digest():
      raise ValueError(f"{workdir} holds a distillation with other settings (digest "
                       f"{previous.get('distill_digest')} vs {config.distill_digest()}); use "
                       "another --workdir or delete it to start over")


@under_policy
@locked
def distill_stage(config: RunConfig, workdir: str, *, run_data: RunData | None = None,
                  progress: bool = True, stop_after: int | None = None,
                  buffer_dir: str | None = None) -> SynSet | None:
  """Surrogate, KDE weights and distillation of one run: writes ``synset/``.

  A finished ``synset/`` in ``workdir`` is loaded instead of recomputed, so
  several evaluations (validation sweeps, the final test) share one
  distillation. Returns None when ``stop_after`` stopped the run early.
  ``buffer_dir``: trajectory matching's expert buffer (default: the cache,
  :func:`default_buffer_dir`).
  """
  validate(config)
  _check_distill_workdir(config, workdir)
  syn_dir = os.path.join(workdir, "synset")
  if os.path.exists(os.path.join(syn_dir, "manifest.json")):
    syn, _ = synset.load(syn_dir)  # the run's own artifact
    return SynSet(np.asarray(syn.images), np.asarray(syn.labels))
  if run_data is None:
    progress_lib.logger.info("%s: loading %s (conflict ratio %g)", workdir, config.dataset,
                             config.conflict_ratio)
    run_data = RunData(config)
  embeddings, report, classifier = _start_run(config, workdir, run_data, progress)
  syn = distill_run(config, workdir, run_data, embeddings, run_keys(config)[1],
                    progress=progress, stop_after=stop_after, classifier=classifier,
                    buffer_dir=buffer_dir)
  if stop_after is not None and not os.path.exists(os.path.join(workdir, "checkpoints",
                                                                str(config.iterations))):
    _record_bias_trajectory(config, workdir, report)
    return None
  return _finish_run(config, workdir, run_data, syn, report)


def _start_run(config: RunConfig, workdir: str, run_data: RunData, progress: bool):
  """A run's directory before distilling: config.json, the surrogate's embeddings (KDE runs),
  weights.json. Returns ``(embeddings, report, bias classifier)``."""
  check_models(config, run_data)
  os.makedirs(workdir, exist_ok=True)
  synset.atomic_write_json(os.path.join(workdir, "config.json"),
                           {"config": config.to_dict(), "digest": config.digest(),
                            "distill_digest": config.distill_digest(),
                            "code_version": code_version()})
  k_sur, _, _, k_diag = run_keys(config)
  embeddings = None
  if config.weighting == "kde":
    embeddings = surrogate_embeddings(config, run_data, k_sur, progress=progress)
  report = weight_diagnostics(config, run_data, embeddings, k_diag, workdir=workdir)
  synset.atomic_write_json(os.path.join(workdir, "weights.json"), report)
  return embeddings, report, bias_classifier(config, run_data)


def _record_bias_trajectory(config: RunConfig, workdir: str, report: dict) -> None:
  report["bias_trajectory"] = [
      {"step": r["step"], "bias_aligned_fraction": r["bias_aligned_fraction"]}
      for r in _read_metrics(os.path.join(workdir, "metrics.jsonl"), config.iterations)
      if "bias_aligned_fraction" in r]
  synset.atomic_write_json(os.path.join(workdir, "weights.json"), report)


def _finish_run(config: RunConfig, workdir: str, run_data: RunData, syn: SynSet,
                report: dict) -> SynSet:
  """A distilled run's artifacts: the bias trajectory in weights.json, the SynSet, its plot."""
  _record_bias_trajectory(config, workdir, report)
  meta = {"dataset": dict(run_data.train.meta), "config": config.to_dict(),
          "method": method_name(config), "ipc": config.ipc,
          "preprocessing": "per-channel normalisation with the training set's mean/std",
          "distill_model": models.spec_of(models.ConvNet(run_data.num_classes, depth=config.depth,
                                                         width=config.width)),
          "eval_protocol": config.eval_protocol, "code_version": code_version(),
          "class_names": list(run_data.train.class_names)}
  if config.method == "mtt":  # the learned student lr and the experts the set was matched to
    rows = _read_metrics(os.path.join(workdir, "metrics.jsonl"), config.iterations)
    lrs = [r["syn_lr"] for r in rows if "syn_lr" in r]
    meta["syn_lr"] = lrs[-1] if lrs else config.lr_teacher
    with open(os.path.join(workdir, "buffer.json")) as f:
      meta["expert_buffer"] = json.load(f)["digest"]
  synset.save(os.path.join(workdir, "synset"), syn, meta, mean=run_data.mean, std=run_data.std)
  plot_synset(syn, run_data.mean, run_data.std, os.path.join(workdir, "plots", "synset.png"),
              class_names=run_data.train.class_names,
              title=f"{meta['method']} {config.dataset} ratio={config.conflict_ratio} ipc={config.ipc}")
  return syn


# ---------------------------------------------------------------------------- run groups

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


def _fresh(workdir: str) -> bool:
  """No SynSet and no checkpoint yet: a group may start this run from step 0."""
  return (not os.path.exists(os.path.join(workdir, "synset", "manifest.json"))
          and not os.path.isdir(os.path.join(workdir, "checkpoints")))


def distill_group(configs, workdirs, *, run_data: RunData | None = None,
                  progress: bool = True) -> list[SynSet]:
  """Distils runs that differ only in runtime knobs in ONE program (``jaxdd tune``'s candidates).

  The runs share their seed, so each separate run would draw the same networks, real
  batches and augmentations: the N-run step with common random numbers
  (:func:`jaxdd.distill.dm` with ``num_runs``) computes those once and gives each run
  what its own :func:`distill_stage` would, up to float rounding. Each run's directory
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
    _check_distill_workdir(c, w)
    if not _fresh(w):
      raise ValueError(f"{w} already holds a SynSet or checkpoints; distill_stage resumes it")
  with policy_lib.use(configs[0].policy):
    return _distill_group(configs, workdirs, run_data, progress)


def _distill_group(configs, workdirs, run_data, progress) -> list[SynSet]:
  base = configs[0]
  if run_data is None:
    run_data = RunData(base)
  with contextlib.ExitStack() as stack:
    for w in workdirs:
      os.makedirs(w, exist_ok=True)
      stack.enter_context(workdir_lock(w))
    heads = [_start_run(c, w, run_data, progress) for c, w in zip(configs, workdirs)]
    embeddings, _, classifier = heads[0]
    nc = run_data.num_classes
    real = distill.real_data(run_data.normalized(run_data.train), run_data.train.labels,
                             num_classes=nc,
                             embeddings=embeddings if base.weighting == "kde" else None)
    knobs = [{"lr": c.lr_img, "variance": c.kde_variance, "temperature": c.kde_temperature}
             for c in configs]
    d = make_distiller(base, nc, base.kde, num_runs=len(configs), run_knobs=knobs,
                       common_random_numbers=True)
    state = d.init(run_keys(base)[1], real)
    logs = [MetricsLog(w, 0) for w in workdirs]
    mngrs = [_checkpointer(w) for w in workdirs]
    every = track_every(base)

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

    def after(it, n, st, row):
      nonlocal state
      state = st
      for i, (c, log) in enumerate(zip(configs, logs)):
        _log_chunk(c, nc, it, n, row, log, t0, pick=lambda m, i=i: jax.tree.map(
            lambda a: a[i], m), name=workdirs[i])
      bar.update(n)
      step = it + n
      track(step)
      if step % base.checkpoint_every == 0 or step == base.iterations:
        for i, mngr in enumerate(mngrs):
          _save(mngr, step, one(i))

    def save(step):
      for i, mngr in enumerate(mngrs):
        if mngr.latest_step() != step:
          _save(mngr, step, one(i), force=True)

    try:
      _drive(d, state, real, 0, base.iterations, steps_per_call(base),
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
      out.append(_finish_run(c, w, run_data, syn, heads[i][1]))
  return out


@under_policy
@locked
def run(config: RunConfig, workdir: str, *, progress: bool = True,
        stop_after: int | None = None, reevaluate: bool = False,
        show: bool | None = None, buffer_dir: str | None = None) -> dict:
  """One full run (see the module docstring). Returns the evaluation summary.

  Example:
    >>> from jaxdd import pipeline
    >>> cfg = pipeline.get_config("smoke", weighting="kde")      # doctest: +SKIP
    >>> summary = pipeline.run(cfg, "runs/smoke-kde")            # doctest: +SKIP
    >>> summary["mean"]["conflicting"]                           # doctest: +SKIP
  """
  show = progress if show is None else show
  validate(config)
  _check_workdir(config, workdir)
  stored = _stored_eval(config, workdir)
  if stored is not None and not reevaluate and stop_after is None:
    progress_lib.logger.info("%s: this run is complete; showing its stored results "
                             "(--reevaluate evaluates it again)", workdir)
    if show:
      print(f"{workdir}: complete (stored in eval.json)\n" + format_stored(stored))
    return stored
  # Data errors (bad ratio, missing source) surface before anything is written.
  progress_lib.logger.info("%s: loading %s (conflict ratio %g)", workdir, config.dataset,
                           config.conflict_ratio)
  run_data = RunData(config)
  check_models(config, run_data)
  run_data.test  # a bad test split is found now, not after the distillation  # noqa: B018
  syn = distill_stage(config, workdir, run_data=run_data, progress=progress,
                      stop_after=stop_after, buffer_dir=buffer_dir)
  if syn is None:
    return {"stopped_at": stop_after}
  k_eval = run_keys(config)[2]
  model = models.get(config.eval_model, num_classes=run_data.num_classes)
  result = evaluate.evaluate_synset(
      k_eval, SynSet(jnp.asarray(syn.images), jnp.asarray(syn.labels)),
      run_data.batch(run_data.test), model=model, protocol=config.eval_protocol,
      num_models=config.num_eval_models, progress=progress)
  result = dataclasses.replace(result, method=method_name(config))
  summary = result.summary()
  summary.update(method=method_name(config), config=config.to_dict(), digest=config.digest())
  synset.atomic_write_json(os.path.join(workdir, "eval.json"), summary)
  if show:
    print(result.format_table())
  return summary


def _stored_eval(config: RunConfig, workdir: str) -> dict | None:
  """The ``eval.json`` of a finished run with this exact config, else None."""
  path = os.path.join(workdir, "eval.json")
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      stored = json.load(f)
  except (OSError, ValueError):
    return None
  return stored if stored.get("digest") == config.digest() else None


def format_stored(summary: dict) -> str:
  """Mean ± std over networks of a stored ``eval.json``, one metric per line."""
  lines = [f"method {summary.get('method', '?')}"]
  for m, v in summary["mean"].items():
    lines.append(f"{m.replace('_', ' '):<14}{100 * v:9.2f}{100 * summary['std'][m]:8.2f}")
  return "\n".join(lines)


#: The bias-attribute classifier of the bias score per preset (default:
#: ConvNet-3 width 32 for :data:`jaxdd.diagnostics.BIAS_CLASSIFIER_STEPS` steps).
BIAS_CLASSIFIER: dict[str, dict[str, int]] = {"smoke": dict(width=8, epochs=2)}


def bias_classifier(config: RunConfig, run_data: RunData) -> diagnostics.BiasClassifier:
  """The bias-attribute classifier of a run's training set (for the bias score).

  It depends on the data, the seed and the preset only, so the runs that share a
  :class:`RunData` (a sweep's candidates, the rows of a table) train it once: it is
  kept on the ``run_data`` object per (seed, preset).
  """
  cache = run_data.__dict__.setdefault("_bias_classifiers", {})
  key = (config.seed, config.preset)
  if key not in cache:
    train, valid = run_data.train, run_data.valid
    cache[key] = diagnostics.train_bias_classifier(
        jax.random.fold_in(run_keys(config)[3], 1), run_data.normalized(train), train.labels,
        train.bias, train.aligned, num_classes=run_data.num_classes,
        valid=(run_data.normalized(valid), valid.labels, valid.bias),
        # jaxdd's data contract, aligned == (bias == labels), says class c's
        # aligned bias value is c, even where the training set has no aligned
        # sample (Biased-DD's aligned fraction 0); other data: read it off
        aligned_values=(np.arange(run_data.num_classes)
                        if np.array_equal(train.aligned, train.bias == train.labels) else None),
        **BIAS_CLASSIFIER.get(config.preset, {}))
  return cache[key]


@under_policy
@locked
def reproduce(config: RunConfig, workdir: str, *, progress: bool = True,
              with_baselines: tuple[str, ...] = (), show: bool | None = None,
              reevaluate: bool = False) -> dict:
  """The vanilla method and its KDE-reweighted variant (``config.method``: DM, DSA
  or DC) with otherwise identical settings, side by side.

  ``with_baselines`` (names from :data:`BASELINES`) adds those rows, under the
  same evaluation protocol; LfF/DFA train on the vanilla method's SynSet.
  """
  results = {}
  for weighting in ("none", "kde"):
    cfg = config.replace(weighting=weighting)
    name = method_name(cfg)
    results[name] = run(cfg, os.path.join(workdir, name.replace("+", "_")), progress=progress,
                        show=show, reevaluate=reevaluate)
  if with_baselines:
    results.update(run_baselines(config.replace(weighting="none"), os.path.join(workdir, "baselines"),
                                 which=tuple(with_baselines), progress=progress,
                                 vanilla_synset=os.path.join(workdir, config.method, "synset"),
                                 trust=False))  # this command's own vanilla SynSet
  # The bias score of each SynSet: what fraction of its images carry their
  # class's aligned bias (the training set's fraction is in the table header).
  run_data = RunData(config)
  classifier = bias_classifier(config, run_data)
  for weighting in ("none", "kde"):
    name = method_name(config.replace(weighting=weighting))
    syn, _ = synset.load(os.path.join(workdir, name.replace("+", "_"), "synset"))
    results[name]["bias_score"] = diagnostics.bias_score(classifier, syn.images, syn.labels)
  # The score's yardstick: the classifier on held-out real images of known composition.
  valid = run_data.valid
  reference = {"true_aligned_fraction": float(np.asarray(valid.aligned).mean()),
               "bias_aligned_fraction": diagnostics.bias_score(
                   classifier, run_data.normalized(valid), valid.labels)["aligned_fraction"]}
  table = format_comparison(results, config,
                            train_aligned_fraction=classifier.train_aligned_fraction,
                            reference=reference)
  drift = format_weight_summary({
      method_name(config.replace(weighting=w)): os.path.join(
          workdir, method_name(config.replace(weighting=w)).replace("+", "_"), "weights.json")
      for w in ("none", "kde")})
  if drift:
    table += "\n\n" + drift
  for name in results:
    if results[name].get("bias_score") is not None:
      results[name]["bias_score"]["reference"] = reference
  synset.atomic_write_json(os.path.join(workdir, "comparison.json"),
                           {k: {"mean": v["mean"], "std": v["std"],
                                "bias_score": v.get("bias_score")} for k, v in results.items()})
  synset.atomic_write_bytes(os.path.join(workdir, "comparison.md"), (table + "\n").encode())
  plot_accuracy_bars(results, os.path.join(workdir, "plots", "accuracy.png"),
                     title=f"{config.dataset} conflict={config.conflict_ratio} ipc={config.ipc} "
                           f"preset={config.preset}")
  if progress if show is None else show:
    print(table)
  return results


BASELINES = ("random", "herding", "kcenter", "lff", "dfa", "full")


@under_policy
@locked
def run_baselines(config: RunConfig, workdir: str, *, which: tuple[str, ...] = BASELINES,
                  vanilla_synset: str | None = None, full_epochs: int = 10,
                  progress: bool = True, trust=None) -> dict:
  """The obvious alternatives under the same evaluation protocol and model.

  * ``random``: ``ipc`` random real images per class;
  * ``herding`` / ``kcenter``: selection on the SupCon surrogate's embeddings;
  * ``lff`` / ``dfa``: post-distillation debiasing (LfF, DFA) trained on the
    *vanilla* DM SynSet at ``vanilla_synset`` (docs/protocols.md);
  * ``full``: the whole biased training set (upper reference), with the
    protocol's epochs capped at ``full_epochs`` because every epoch is a pass
    over all training images.

  ``trust`` is the signature policy of ``vanilla_synset`` (see
  :func:`jaxdd.security.signing.load_synset`: None reads ``$JAXDD_TRUSTED_KEYS``).

  Results are written to ``<workdir>/baselines.json`` and returned. A
  ``baselines.json`` already there is added to when it was made with the same
  settings (config digest, weighting aside) and refused otherwise, before any work.
  """
  unknown = set(which) - set(BASELINES)
  if unknown:
    raise ValueError(f"unknown baselines {sorted(unknown)}; choose from {BASELINES}")
  if {"lff", "dfa"} & set(which) and vanilla_synset is None:
    raise ValueError("lff/dfa train on a vanilla DM SynSet: pass vanilla_synset (the synset/ "
                     "directory of a --weighting none run)")
  if {"lff", "dfa"} & set(which):
    # a missing, incomplete or (under a trust anchor) unsigned artifact fails here, before any work
    signing.load_synset(vanilla_synset, trust=trust)
  validate(config)
  digest = config.replace(weighting="none", init="real", real_sampling="uniform").digest()
  path = os.path.join(workdir, "baselines.json")
  results = {}
  if os.path.exists(path):  # kept and added to, but only for the same settings
    with open(path) as f:
      results = json.load(f)
    other = sorted(n for n, r in results.items() if r.get("digest") != digest)
    if other:
      raise ValueError(f"{path} holds baselines made with other settings ({', '.join(other)}; "
                       f"config digest {digest} now); use another --workdir, or delete "
                       "baselines.json to replace them")
  run_data = RunData(config)
  check_models(config, run_data)
  os.makedirs(workdir, exist_ok=True)
  train, nc = run_data.train, run_data.num_classes
  x = run_data.normalized(train)
  test = run_data.batch(run_data.test)
  model = models.get(config.eval_model, num_classes=nc)
  protocol = protocols.get_protocol(config.eval_protocol)
  k_sur = run_keys(config)[0]  # the same (cached) surrogate as run()
  k_sel, k_eval = baseline_keys(config)
  embeddings = None
  if {"herding", "kcenter"} & set(which):
    embeddings = surrogate_embeddings(config, run_data, k_sur, progress)
  for i, name in enumerate(which):
    progress_lib.logger.info("baseline %d/%d: %s", i + 1, len(which), name)
    if name in ("random", "herding", "kcenter"):
      if name == "random":
        rows = baselines.random_subset_indices(k_sel, train.labels, ipc=config.ipc)
      elif name == "herding":
        rows = baselines.herding(embeddings, train.labels, ipc=config.ipc)
      else:
        rows = baselines.k_center(embeddings, train.labels, ipc=config.ipc)
      syn = baselines.take(x, train.labels, rows)
      conflicting = float((~train.aligned[np.asarray(rows)]).mean())
      res = evaluate.evaluate_synset(k_eval, syn, test, model=model, protocol=protocol,
                                     num_models=config.num_eval_models, progress=progress)
      extra = {"selected_conflicting_fraction": conflicting}
    elif name in ("lff", "dfa"):
      syn, meta = signing.load_synset(vanilla_synset, trust=trust)
      # re-express the SynSet in this run's normalisation (a no-op for the same dataset)
      images = data.normalize(data.denormalize(syn.images, meta["mean"], meta["std"]),
                              run_data.mean, run_data.std)
      syn = SynSet(jnp.asarray(images), jnp.asarray(syn.labels))
      res = debias.evaluate_debiased(k_eval, syn, test, method=name, model=model,
                                     protocol=protocol, num_models=config.num_eval_models,
                                     progress=progress)
      extra = {"trained_on": os.path.relpath(vanilla_synset, workdir)}
    else:  # full
      syn = baselines.full_dataset(x, train.labels)
      prot = protocol.replace(epochs=min(protocol.epochs, full_epochs))
      res = evaluate.evaluate_synset(k_eval, syn, test, model=model, protocol=prot,
                                     num_models=min(config.num_eval_models, 2), progress=progress)
      extra = {"epochs": prot.epochs}
    summary = res.summary()
    summary.update(extra)
    summary["digest"] = digest
    results[name] = summary
    if progress:
      print(f"{name}: " + ", ".join(f"{m} {100 * v:.1f}" for m, v in summary["mean"].items()))
    synset.atomic_write_json(os.path.join(workdir, "baselines.json"), results)
  return results


def format_weight_summary(weight_files: dict[str, str]) -> str:
  """The second table of ``comparison.md``: how each run weighted the real images and how
  its synthetic set's bias score moved (from each run's ``weights.json``; "" if none).

  Columns: the mean over classes of one sampled real batch's effective sample size, the
  smallest and largest share of a class's weight on one bias group (balanced: 1 / groups),
  and the synthetic set's bias score at the start, the middle and the end of distillation.
  """
  lines = []
  for name, path in weight_files.items():
    if not os.path.exists(path):
      continue
    with open(path) as f:
      w = json.load(f)
    ess = [e for e in w.get("batch_ess", []) if e is not None]
    groups = w.get("groups", [])
    traj = w.get("bias_trajectory", [])
    fmt = lambda r: f"{100 * r['bias_aligned_fraction']:.1f} (step {r['step']})"
    moved = " → ".join(fmt(r) for r in ([traj[0], traj[len(traj) // 2], traj[-1]]
                                         if len(traj) > 2 else traj)) or "–"
    share = ("–" if not groups else
             f"{np.mean([g['min_share'] for g in groups]):.3f} / "
             f"{np.mean([g['max_share'] for g in groups]):.3f} "
             f"(balanced {np.mean([g['balanced_share'] for g in groups]):.3f})")
    lines.append(f"| {name} | {np.mean(ess):.1f} | {share} | {moved} |" if ess else
                 f"| {name} | – | {share} | {moved} |")
  if not lines:
    return ""
  return "\n".join(["| method | real batch ESS | bias-group share of a class, min / max | "
                    "bias score (aligned %) over distillation |", "|---|---|---|---|"] + lines)


def format_comparison(results: dict[str, dict], config: RunConfig, *,
                      train_aligned_fraction: float | None = None,
                      reference: dict | None = None) -> str:
  """The markdown table of ``comparison.md``; accuracies are mean ± std over networks.

  The bias score column is the % of a SynSet's images that a bias-attribute
  classifier finds carrying their class's aligned bias
  (:func:`jaxdd.diagnostics.bias_score`); "–" where none was computed.
  ``reference`` (``true_aligned_fraction``, ``bias_aligned_fraction``): what the
  classifier reads on held-out real images of known composition, the score's yardstick.
  """
  head = (f"{config.dataset}, conflict ratio {config.conflict_ratio}, IPC {config.ipc}, "
          f"preset {config.preset}, seed {config.seed}, eval protocol {config.eval_protocol}, "
          f"{config.num_eval_models} models")
  if train_aligned_fraction is not None:
    head += f"; {100 * train_aligned_fraction:.1f} % of the training images are bias-aligned"
  if reference is not None:
    head += (f"; the bias classifier reads held-out real images "
             f"({100 * reference['true_aligned_fraction']:.1f} % aligned) as "
             f"{100 * reference['bias_aligned_fraction']:.1f} % aligned")
  lines = [head, "",
           "| method | overall | bias-aligned | bias-conflicting | worst group | "
           "bias score (aligned %) |",
           "|---|---|---|---|---|---|"]
  for name, r in results.items():
    cells = [f"{100 * r['mean'][m]:.1f} ± {100 * r['std'][m]:.1f}"
             for m in ("overall", "aligned", "conflicting", "worst_group")]
    score = r.get("bias_score")
    cells.append("–" if score is None else f"{100 * score['aligned_fraction']:.1f}")
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  return "\n".join(lines)
