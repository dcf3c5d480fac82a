"""The data of a run: its splits, normalised, and the checks made on them before any work."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from jaxdd import data, models
from jaxdd import progress as progress_lib
from jaxdd.data import own
from jaxdd.distill import experts as mtt_lib
from jaxdd.config import RunConfig
from jaxdd.runs import checks, outputs
from jaxdd.structs import Batch


class RunData:
  """The three splits, normalised, plus the raw [0, 1] training images.

  The test split is loaded on first use only, so code that selects anything
  (``jaxdd tune``) provably never reads it.
  """

  def __init__(self, config: RunConfig):
    self.spec = own_spec(config)
    # a user's data is listed, split and decoded (or found in the cache) once for its splits
    self._own = None if self.spec is None else own.OwnData(
        self.spec, seed=config.seed, check=lambda index, codes: check_ipc(
            config.ipc, np.asarray(index.labels)[np.asarray(codes) == 0],
            index.class_names))
    self._kw = dict(conflict_ratio=config.conflict_ratio, severity=config.severity,
                    seed=config.seed, source=config.source)
    self._dataset = config.dataset
    self.train = self._load("train")
    self.valid = self._load("valid")
    self._test = None
    self.num_classes = self.train.num_classes
    self.mean, self.std = data.channel_stats(self.train.images)

  def _load(self, split: str):
    if self._own is not None:
      return self._own.split(split)
    return data.load(self._dataset, split=split, **self._kw)

  @property
  def test(self):
    if self._test is None:
      self._test = self._load("test")
    return self._test

  @property
  def identity(self) -> dict | None:
    """A user's data as the run's records name it (:meth:`jaxdd.data.own.OwnData.identity`:
    spec, images per split, classes, groups, content sha256); None for a built-in dataset,
    which its name and ratio name."""
    return None if self._own is None else self._own.identity()

  @property
  def name(self) -> str:
    """The dataset's name in titles: the built-in name, or the user's ``KIND:NAME``."""
    return self._dataset if self.spec is None else self.train.meta["name"]

  def normalized(self, ds) -> np.ndarray:
    return np.asarray(data.normalize(ds.images, self.mean, self.std))

  def batch(self, ds) -> Batch:
    return Batch(jnp.asarray(self.normalized(ds)), jnp.asarray(ds.labels),
                 None if ds.bias is None else jnp.asarray(ds.bias),
                 None if ds.aligned is None else jnp.asarray(ds.aligned))


def data_label(config: RunConfig) -> str:
  """The run's data in words, for its log: the user's ``--data KIND:PATH``, or the built-in
  dataset with its conflict ratio (a user's data has none).

  >>> from jaxdd.config import get_config
  >>> data_label(get_config("smoke", dataset="cmnist", conflict_ratio=0.05))
  'cmnist (conflict ratio 0.05)'
  >>> data_label(get_config("smoke", data_spec="folder:pets"))
  'your data folder:pets'
  """
  if config.data_spec is not None:
    return f"your data {config.data_spec}"
  return f"{config.dataset} (conflict ratio {config.conflict_ratio:g})"


def identity_line(identity: dict) -> str:
  """A user's data in one line of a run's log: spec, images per split, classes, groups and
  the first 12 hex digits of the content digest.

  >>> identity_line({"spec": "folder:pets", "images": {"train": 80, "valid": 10, "test": 30},
  ...                "classes": 2, "groups": 0, "sha256": "0123456789abcdef"})
  'your data folder:pets: 80 train / 10 valid / 30 test images, 2 classes, no group labels, sha256 0123456789ab'
  """
  n = identity["images"]
  groups = (f"{identity['groups']} groups" if identity["groups"] else "no group labels")
  return (f"your data {identity['spec']}: {n['train']} train / {n['valid']} valid / "
          f"{n['test']} test images, {identity['classes']} classes, {groups}, sha256 "
          f"{identity['sha256'][:12]}")


def load(config: RunConfig, workdir: str) -> RunData:
  """The run's data, logged: a built-in dataset is announced before it is read (a first
  build takes a while); a user's data once read (its images have a progress bar), with
  :func:`identity_line`, so that a refusal of the data is the only line of a failed run."""
  if config.data_spec is None:
    progress_lib.logger.info("%s: loading %s", workdir, data_label(config))
  run_data = RunData(config)
  if run_data.identity is not None:
    progress_lib.logger.info("%s: %s", workdir, identity_line(run_data.identity))
  return run_data


def data_identity(config: RunConfig) -> dict | None:
  """The identity of a config's own data (:attr:`RunData.identity`), read as a run reads it
  (from the cache once decoded); None for a built-in dataset."""
  spec = own_spec(config)
  return None if spec is None else own.OwnData(spec, seed=config.seed).identity()


def own_spec(config: RunConfig) -> own.DataSpec | None:
  """The :class:`jaxdd.data.own.DataSpec` of a run on the user's own data (``--data``), else
  None."""
  if config.data_spec is None:
    return None
  return own.parse(config.data_spec, label_col=config.label_col, group_col=config.group_col,
                   split_col=config.split_col, path_col=config.path_col,
                   fields=config.name_fields, group_file=config.group_file,
                   image_size=config.image_size, data_dir=config.data_dir,
                   aligned=config.aligned_rule, valid_fraction=config.valid_fraction,
                   test_fraction=config.test_fraction)


def check_models(config: RunConfig, run_data: RunData) -> None:
  """What a run needs of its data, checked before any work or file: networks that do not
  pool the images away (:func:`jaxdd.models.check_fits`) and ``ipc`` real images in
  every class (for the initialisation); the config's own library checks
  (:func:`jaxdd.runs.checks.check_config`) and the device mesh
  (:func:`jaxdd.runs.checks.mesh_shape`) first."""
  checks.check_config(config)
  # the devices are there and split the batch
  checks.mesh_shape(config.execution, run_data.num_classes, config.real_per_class)
  shape = tuple(run_data.train.images.shape[1:])
  nc = run_data.num_classes
  models.check_fits(models.ConvNet(nc, depth=config.depth, width=config.width), shape)
  models.check_fits(models.get(config.eval_model, num_classes=nc), shape)
  # distill's init refuses it too, but only after files exist
  check_ipc(config.ipc, run_data.train.labels, run_data.train.class_names)
  check_real_batch(config, run_data)
  if config.weighting in ("oracle", "fairdd") and run_data.train.bias is None:
    kind = str(config.data_spec or "").split(":", 1)[0]
    give = {"folder": "--group-file FILE, a csv of path,group for the training images",
            "npz": "g_train, g_valid and g_test arrays in the file"}.get(kind, "--group-col")
    raise ValueError(f"--weighting {config.weighting} reads the training split's group labels, "
                     "and this data has none; use a label-free weighting (kde, fairdd_pseudo, "
                     f"fairdd_batch, fairdd_dbscan) or give the groups ({give})")


def real_batch(config: RunConfig, run_data: RunData) -> int:
  """The real images per class a step of the run draws: ``real_per_class``, capped by the
  data when the batch is drawn uniformly without replacement (the reference). A class
  smaller than the batch gives every image and the rest is masked out, so a batch beyond
  the largest class (rounded up to the device mesh's real-batch shards) only adds masked
  rows: the cap changes no result, only the memory and time of a step (DM and gradient
  matching, whose losses weigh only the drawn rows). Importance sampling
  (``real_sampling='weighted'``) draws with replacement, and the other methods use the
  batch otherwise: not capped."""
  if config.real_sampling != "uniform" or config.method not in ("dm", "dsa", "dc"):
    return config.real_per_class
  largest = int(np.bincount(np.asarray(run_data.train.labels)).max())
  shape = checks.mesh_shape(config.execution, run_data.num_classes, config.real_per_class)
  shards = 1 if shape is None else shape[1]
  return min(config.real_per_class, -(-largest // shards) * shards)


def check_real_batch(config: RunConfig, run_data: RunData) -> None:
  """Refuses a real batch (:func:`real_batch`) whose images and first activation maps alone
  (:func:`jaxdd.runs.checks.real_batch_bytes`) exceed the machine's memory
  (:func:`jaxdd.runs.checks.machine_memory`), before any work: a step could never run."""
  if config.method == "mtt":
    return
  n = real_batch(config, run_data)
  shape = tuple(run_data.train.images.shape[1:])
  need = checks.real_batch_bytes(run_data.num_classes, n, shape, config.width)
  have = checks.machine_memory()
  if need > have:
    most = max(1, n * have // need)
    raise ValueError(f"--real-per-class {config.real_per_class}: a step's real batch of "
                     f"{run_data.num_classes} x {n} images needs at least {need / 2**30:.1f} GiB, "
                     f"more than this machine's {have / 2**30:.1f} GiB; lower --real-per-class "
                     f"(at most about {most})")


def check_ipc(ipc: int, train_labels, class_names) -> None:
  """Refuses an IPC larger than a class of the training split (the start draws ``ipc`` real
  images of every class)."""
  counts = np.bincount(np.asarray(train_labels), minlength=len(class_names))
  if counts.min() < ipc:
    c = int(np.argmin(counts))
    raise ValueError(f"ipc={ipc} is larger than class {c} ({class_names[c]!r}), which has "
                     f"{counts[c]} real training images; lower --ipc (at most {counts.min()}) "
                     "or add images")


def num_bias_values(ds) -> int:
  """Number of bias values of a dataset split (FairDD's groups): its group names' count for a
  user's dataset (a split may lack a group), else the largest value + 1."""
  if ds.meta.get("kind") == "own":
    return len(ds.bias_names)
  return int(np.asarray(ds.bias).max()) + 1


def check_paths(config: RunConfig, workdir: str, *, buffer_dir: str | None = None) -> None:
  """The devices (:func:`jaxdd.runs.checks.device_count`), a writable ``workdir`` and, for
  trajectory matching, a writable ``buffer_dir`` that holds nothing but a buffer
  (:func:`jaxdd.distill.experts.check_buffer_dir`): checked before the data are loaded (which
  may build them into the cache)."""
  checks.device_count(config.execution)
  checks.check_writable(workdir)
  if config.method == "mtt" and buffer_dir is not None:
    outputs.check_outside_jaxdd_files(buffer_dir, flag="--buffer-dir")
    mtt_lib.check_buffer_dir(buffer_dir, flag="--buffer-dir")
    checks.check_writable(buffer_dir)


def check_run(config: RunConfig, run_data: RunData, workdir: str, *,
              buffer_dir: str | None = None) -> None:
  """Everything a run needs of the machine and its data, before its first write:
  :func:`check_models` (the config, the device mesh, the networks, ``ipc``) and
  :func:`check_paths`."""
  check_models(config, run_data)
  check_paths(config, workdir, buffer_dir=buffer_dir)
