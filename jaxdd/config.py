"""The run configuration: one frozen, self-validating :class:`RunConfig` per run.

Its fields are flat because they are the CLI's flags and the keys of every saved
``config.json`` (whose digests name run directories); each stage reads its own config as a
view (:attr:`RunConfig.kde`, :attr:`RunConfig.surrogate`, :attr:`RunConfig.protocol`). The
presets it is built from live in :mod:`jaxdd.presets`; :func:`get_config` applies one.
:mod:`jaxdd.runs` runs the stages a RunConfig describes.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

import numpy as np

from jaxdd import data, distill, models, protocols, surrogate
from jaxdd import weighting
from jaxdd import policy as policy_lib
from jaxdd import presets as presets_lib
from jaxdd._src import checks
from jaxdd.data import biased

__all__ = ["CHOICES", "EVAL_FIELDS", "METHODS", "METHOD_PRESETS", "PRESETS", "RunConfig",
           "get_config", "validate"]


@dataclasses.dataclass(frozen=True)
class RunConfig:
  """Everything that determines a run. Field names are the CLI's flag names.

  A RunConfig validates itself when it is built (:func:`validate`), so a bad
  value fails at the boundary (the CLI, :func:`get_config`, ``replace``) with a
  message that names the fix, before anything is computed or written.

  The fields are flat, because they are the CLI's flags and the keys of every
  saved ``config.json`` (whose digests name run directories). Each stage's own
  config is a view built from them: :attr:`kde` (:class:`jaxdd.weighting.KDEConfig`),
  :attr:`surrogate` (:class:`jaxdd.surrogate.SurrogateConfig`) and
  :attr:`protocol` (:class:`jaxdd.protocols.Protocol`). Presets live in
  :mod:`jaxdd.presets`.
  """
  preset: str = "paper"
  dataset: str = "cmnist"
  conflict_ratio: float = 0.05
  severity: int | None = None
  source: str | None = None
  seed: int = 0
  ipc: int = 50
  # 'dm' (distribution matching), 'dsa' or 'dc' (gradient matching), 'mtt' (trajectory
  # matching) or 'cfm' (curriculum frequency matching)
  method: str = "dm"
  # 'none' (vanilla method), 'kde' (Cui et al. reweighting), or reference rows that use the
  # TRUE bias labels: 'oracle' (group-balanced weights, a ceiling for any reweighting) and
  # 'fairdd' (FairDD's synchronized matching, DM only).
  weighting: str = "kde"
  # Kept by the validation-only selection (jaxdd tune; RESULTS.md, "Headline").
  kde_variance: float = 0.01
  kde_temperature: float = 0.25
  kde_normalize: str = "power"
  kde_scope: str = "batch"
  # Raise each class's whole-class densities to at least this quantile (0: none, the
  # paper's); acts on init='weighted', real_sampling='weighted' and scope 'class'.
  kde_floor: float = 0.0
  iterations: int = 20000
  real_per_class: int = 256
  lr_img: float = 1.0
  momentum: float = 0.5
  # Gradient matching only (dsa, dc): the network's SGD lr in the inner loop and
  # the loop counts (None: the reference's per IPC, distill.GM_LOOPS).
  lr_net: float = 0.01
  outer_loop: int | None = None
  inner_loop: int | None = None
  # Trajectory matching only (mtt; jaxdd.distill.mtt, jaxdd.distill.experts): gradients 'exact' or
  # 'tesla', the student unroll (syn_steps student steps on batch_syn images, None: all), the
  # expert window (start epoch below max_start_epoch, target expert_epochs later), the student
  # lr's initial value and step size, and the experts: num_experts trained for
  # max_start_epoch + expert_epochs epochs with SGD(expert_lr); with --weighting kde or
  # oracle their real images are weighted by 'sample' (weighted sampler) or 'loss'.
  mtt_mode: str = "exact"
  syn_steps: int = 20
  batch_syn: int | None = None
  expert_epochs: int = 2
  max_start_epoch: int = 20
  lr_teacher: float = 0.01
  lr_lr: float = 1e-5
  num_experts: int = 10
  expert_lr: float = 0.01
  expert_weighting: str = "sample"
  # Curriculum frequency matching only (cfm; jaxdd.distill.cfm): the filter of the channel
  # covariance ('high': (cov + beta I)^-1, 'low': cov), beta and its schedule (down to
  # 1e-3 beta) over the iterations ('iterations') or over the IPC slots synthesised one
  # after another as UniDD does ('slots'), and whether each norm is divided by the real
  # side's ('real', a departure from UniDD that keeps the scale as beta falls) or not ('none').
  cfm_filter: str = "high"
  cfm_beta: float = 0.1
  cfm_schedule: str = "cos"
  cfm_curriculum: str = "iterations"
  cfm_normalize: str = "real"
  # Where the synthetic images start: 'real' (random real images), 'weighted' (real images
  # drawn in proportion to their whole-class weights) or 'noise'.
  init: str = "real"
  # How each step draws its real batch: 'uniform' (the reference, weights inside the loss)
  # or 'weighted' (importance sampling in proportion to the whole-class weights, plain mean).
  real_sampling: str = "uniform"
  dsa_strategy: str = "color_crop_cutout_flip_scale_rotate"
  width: int = 128
  depth: int = 3
  surrogate_preset: str = "paper"
  eval_protocol: str = "dm"
  eval_model: str = "convnet"
  num_eval_models: int = 5
  log_every: int = 10
  checkpoint_every: int = 500
  # How the work is laid out (jaxdd.policy): 'auto' follows the backend; 'cpu' or
  # 'accelerator' pins a layout (same results up to float rounding).
  policy: str = "auto"
  # Devices the distillation step is sharded over ('1', 'all' or a count): a mesh of a class
  # axis and a real-batch axis (jaxdd.runs.distiller.device_mesh); the same numbers as one device
  # up to float rounding, so it is not part of the digests.
  devices: str = "1"
  # Distillation steps per host round trip ('auto': the policy's, 1 on CPU; or a count):
  # jaxdd.distill.multi_step runs them in one program, checkpoints and the bias score at
  # chunk ends. The same numbers up to float rounding, so it is not part of the digests.
  steps_per_call: str = "auto"

  def __post_init__(self):
    validate(self)

  @property
  def kde(self) -> "weighting.KDEConfig | None":
    """The KDE weighting of this run (None for the vanilla method)."""
    if self.weighting == "oracle":
      # w = 1 / (size of the sample's (class, bias) group), normalised: f^(-1/T) with T = 1
      # and f the group's share of its class (jaxdd.weighting.oracle_log_density).
      return weighting.KDEConfig(self.kde_variance, 1.0, "power", "class")
    if self.weighting != "kde":
      return None
    return weighting.KDEConfig(self.kde_variance, self.kde_temperature, self.kde_normalize,
                             self.kde_scope)

  @property
  def surrogate(self) -> surrogate.SurrogateConfig:
    """The SupCon surrogate's config (its preset; a step budget is resolved per dataset)."""
    return surrogate.SurrogateConfig.preset(self.surrogate_preset)

  @property
  def protocol(self) -> protocols.Protocol:
    """The evaluation protocol of this run."""
    return protocols.get_protocol(self.eval_protocol)

  def replace(self, **changes) -> "RunConfig":
    unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
    if unknown:
      raise ValueError(f"unknown RunConfig fields {sorted(unknown)}; valid: "
                       f"{sorted(f.name for f in dataclasses.fields(self))}")
    return dataclasses.replace(self, **changes)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  def _hashed(self) -> dict[str, Any]:
    d = self.to_dict()
    d.pop("log_every"), d.pop("checkpoint_every")
    if d["policy"] == "auto":  # the default layout; digests from before the field stay valid
      d.pop("policy")
    d.pop("devices"), d.pop("steps_per_call")  # layout only
    for name, default in (("real_sampling", "uniform"), ("kde_floor", 0.0),
                          ("cfm_curriculum", "iterations")):
      if d[name] == default:  # the same: runs from before the field keep their digests
        d.pop(name)
    if d["method"] != "mtt":  # fields other methods ignore (and older runs never had)
      for name in MTT_FIELDS:
        d.pop(name)
    if d["method"] != "cfm":
      for name in CFM_FIELDS:
        d.pop(name, None)
    return d

  def digest(self) -> str:
    """Hash of every field that changes the result (not logging/checkpoint cadence)."""
    return hashlib.sha256(json.dumps(self._hashed(), sort_keys=True).encode()).hexdigest()[:16]

  def distill_digest(self) -> str:
    """Hash of the fields that change the SynSet (not how it is evaluated)."""
    d = self._hashed()
    for name in ("preset",) + EVAL_FIELDS:
      d.pop(name)
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


#: RunConfig fields that only trajectory matching reads.
MTT_FIELDS = ("mtt_mode", "syn_steps", "batch_syn", "expert_epochs", "max_start_epoch",
              "lr_teacher", "lr_lr", "num_experts", "expert_lr", "expert_weighting")

#: RunConfig fields that only curriculum frequency matching reads.
CFM_FIELDS = ("cfm_filter", "cfm_beta", "cfm_schedule", "cfm_curriculum", "cfm_normalize")

#: RunConfig fields that only change how a SynSet is evaluated.
EVAL_FIELDS = ("eval_protocol", "eval_model", "num_eval_models")


#: RunConfig field -> its allowed values (the CLI's ``choices``; checked by :func:`validate`).
CHOICES: dict[str, tuple[str, ...]] = {
    "method": ("dm", "dsa", "dc", "mtt", "cfm"),
    "cfm_filter": ("high", "low"),
    "cfm_schedule": ("constant", "cos", "linear"),
    "cfm_curriculum": ("iterations", "slots"),
    "cfm_normalize": ("real", "none"),
    "mtt_mode": ("exact", "tesla"),
    "expert_weighting": ("sample", "loss"),
    "weighting": ("none", "kde", "oracle", "fairdd"),
    "kde_normalize": ("softmax", "power"),
    "kde_scope": ("batch", "class"),
    "init": distill.INITS,
    "real_sampling": distill.REAL_SAMPLING,
    "surrogate_preset": tuple(presets_lib.SURROGATE),
    "eval_protocol": tuple(protocols.PROTOCOLS),
    "dataset": tuple(sorted(data.DATASETS)) if hasattr(data, "DATASETS") else (),
    "policy": ("auto",) + tuple(policy_lib.POLICIES),
}

METHODS = CHOICES["method"]

#: What a preset changes for the gradient-matching methods (:data:`jaxdd.presets.METHOD`).
METHOD_PRESETS: dict[str, dict[str, dict[str, Any]]] = presets_lib.METHOD


def get_config(preset: str = "cpu", **overrides) -> RunConfig:
  """A preset for a method, with some fields overridden (None values are ignored).

  ``method`` (default ``"dm"``) selects the preset's settings for that method
  (:data:`METHOD_PRESETS`); every other override wins over both.
  """
  if preset not in PRESETS:
    raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
  overrides = {k: v for k, v in overrides.items() if v is not None}
  method = overrides.get("method", PRESETS[preset].method)
  if method not in METHODS:
    raise ValueError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")
  base = PRESETS[preset].replace(method=method, **METHOD_PRESETS[preset].get(method, {}))
  return base.replace(**overrides)


def validate(config: RunConfig) -> None:
  """Cheap checks with messages that name the fix; every RunConfig runs them when built."""
  for name, allowed in CHOICES.items():
    value = getattr(config, name, None)
    if allowed and value is not None and value not in allowed:
      raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")
  if config.method in ("dsa", "dc"):
    distill.gm_loops(config.ipc, config.outer_loop, config.inner_loop)
    if not config.lr_net > 0:
      raise ValueError(f"lr_net must be > 0, got {config.lr_net}")
  if config.iterations < 0:
    raise ValueError(f"iterations must be >= 0 (0: the initial images, not distilled), got "
                     f"{config.iterations}")
  if config.weighting in ("none", "fairdd") and "weighted" in (config.init,
                                                                config.real_sampling):
    raise ValueError("init='weighted' and real_sampling='weighted' draw real images in proportion "
                     "to their weights; use them with --weighting kde or oracle")
  if (config.weighting == "kde" and config.kde_scope == "batch"
      and config.real_sampling == "uniform" and config.real_per_class < 2):
    raise ValueError(f"KDE scope 'batch' estimates densities inside each real batch, which needs "
                     f"real_per_class >= 2 (got {config.real_per_class}); raise it or use "
                     "--kde-scope class")
  if config.devices != "all" and not (config.devices.isdigit() and int(config.devices) >= 1):
    raise ValueError(f"devices must be 'all' or a positive count, got {config.devices!r}")
  if config.steps_per_call != "auto" and not (config.steps_per_call.isdigit()
                                              and int(config.steps_per_call) >= 1):
    raise ValueError("steps_per_call must be 'auto' or a positive count, got "
                     f"{config.steps_per_call!r}")
  if config.devices != "1" and config.method in ("mtt", "cfm"):
    raise ValueError(f"--devices shards DM and gradient matching; method {config.method!r} "
                     "runs on one device (use --devices 1)")
  if config.method == "mtt":
    _validate_mtt(config)
  if config.method == "cfm" and not (np.isfinite(config.cfm_beta) and config.cfm_beta > 0):
    raise ValueError(f"cfm_beta must be a positive number, got {config.cfm_beta}")
  if config.method == "cfm" and config.real_per_class < 2:
    raise ValueError("frequency matching estimates a covariance per real batch: "
                     f"real_per_class must be >= 2, got {config.real_per_class}")
  if (config.method == "cfm" and config.cfm_curriculum == "slots"
      and 0 < config.iterations < config.ipc):
    raise ValueError(f"--cfm-curriculum slots synthesises one IPC slot after another and needs "
                     f"at least one iteration per slot: iterations {config.iterations} < ipc "
                     f"{config.ipc}; raise --iterations or use --cfm-curriculum iterations")
  if config.weighting == "fairdd" and config.method != "dm":
    raise ValueError("--weighting fairdd (FairDD's synchronized matching) is implemented for "
                     "distribution matching only; use --method dm")
  if config.ipc < 1:
    raise ValueError(f"ipc must be >= 1, got {config.ipc}")
  if config.checkpoint_every < 1 or config.log_every < 1:
    raise ValueError("checkpoint_every and log_every must be >= 1")
  weighting.KDEConfig(config.kde_variance, config.kde_temperature, config.kde_normalize,
                    config.kde_scope)
  weighting.check_floor(config.kde_floor, "kde_floor")
  if config.kde_floor and config.weighting != "kde":
    raise ValueError("--kde-floor shapes the KDE weights; use it with --weighting kde (or leave "
                     "it at 0)")
  if (config.kde_floor and config.kde_scope == "batch" and config.init != "weighted"
      and config.real_sampling != "weighted"):
    raise ValueError("--kde-floor acts on whole-class densities, which this run does not use; add "
                     "--init weighted, --real-sampling weighted or --kde-scope class")
  protocols.get_protocol(config.eval_protocol)
  models.get(config.eval_model, num_classes=2)
  if config.dataset not in biased.DATASETS:
    raise ValueError(f"unknown dataset {config.dataset!r}; choose one of {sorted(biased.DATASETS)}")
  spec = biased.DATASETS[config.dataset]
  biased.check_ratio(spec, config.conflict_ratio)
  biased.check_severity(spec, config.severity)
  for name in ("real_per_class", "width", "depth", "num_eval_models"):
    if getattr(config, name) < 1:
      raise ValueError(f"{name} must be >= 1, got {getattr(config, name)}")
  if config.lr_img <= 0 or not np.isfinite(config.lr_img):
    raise ValueError(f"lr_img must be a positive number, got {config.lr_img}")


def _validate_mtt(config: RunConfig) -> None:
  for name in ("syn_steps", "expert_epochs", "max_start_epoch", "num_experts"):
    checks.check_positive_int(name, getattr(config, name))
  if config.batch_syn is not None and config.batch_syn < 1:
    raise ValueError(f"batch_syn must be >= 1 or None (the whole set), got {config.batch_syn}")
  for name in ("lr_teacher", "lr_lr", "expert_lr"):
    v = getattr(config, name)
    if not (np.isfinite(v) and v > 0):
      raise ValueError(f"{name} must be a positive number, got {v!r}")
  if config.real_sampling != "uniform":
    raise ValueError("--real-sampling is a matching option; trajectory matching sees no real "
                     "batch (its weighting acts on the experts): leave it at 'uniform'")
  if config.weighting == "kde" and config.kde_scope == "batch":
    raise ValueError("trajectory matching weights its experts' images over whole classes: use "
                     "--kde-scope class with --method mtt --weighting kde")


#: RunConfig presets (:data:`jaxdd.presets.RUN`): ``paper``, ``cpu``, ``smoke``.
PRESETS: dict[str, RunConfig] = {name: RunConfig(preset=name, **fields)
                                 for name, fields in presets_lib.RUN.items()}
