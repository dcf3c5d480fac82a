"""The run configuration: one frozen, self-validating :class:`RunConfig` per run.

A RunConfig is composed of one part per stage (:mod:`jaxdd.config.parts`): ``data``,
``distill``, ``gm``, ``mtt``, ``cfm``, ``weights``, ``embedding``, ``evaluation`` and
``execution``. Its serialisation is flat: the field names are the CLI's flags and the keys of
every saved ``config.json`` (whose digests name run directories). It imports nothing of the
library but the base layer; the objects a stage takes (the KDE weighting, the surrogate's
config, the evaluation protocol) are built from it by :mod:`jaxdd.runs.stage_config`. The
presets it is built from live in :mod:`jaxdd.presets`;
:func:`get_config` applies one. :mod:`jaxdd.runs` runs the stages a RunConfig describes.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from typing import Any

from jaxdd import presets as presets_lib
from jaxdd.config import parts as parts_lib

__all__ = ["BIASED_FIELDS", "BUILTIN_DATA_FIELDS", "CFM_FIELDS", "CHOICES", "EVAL_FIELDS", "FIELDS", "METHODS",
           "METHOD_PRESETS", "MTT_FIELDS", "OWN_FIELDS", "PARTS", "PRESETS", "RunConfig", "get_config", "reads_biased", "validate"]

#: Part name (a RunConfig attribute) -> its class, in the order of the flat dict.
PARTS: dict[str, type[parts_lib.Part]] = {
    "data": parts_lib.DataConfig,
    "own": parts_lib.OwnDataConfig,
    "distill": parts_lib.DistillConfig,
    "weights": parts_lib.WeightingConfig,
    "gm": parts_lib.GradientMatchingConfig,
    "mtt": parts_lib.MTTConfig,
    "cfm": parts_lib.CFMConfig,
    "embedding": parts_lib.SurrogateStage,
    "biased": parts_lib.BiasedStage,
    "evaluation": parts_lib.EvaluationConfig,
    "execution": parts_lib.ExecutionConfig,
}

#: Flat field name -> the part that owns it (``preset`` is RunConfig's own).
OWNER: dict[str, str] = {f.name: key for key, cls in PARTS.items()
                         for f in dataclasses.fields(cls)}

#: Every flat field name: the keys of ``config.json`` (``preset`` first).
FIELDS: tuple[str, ...] = ("preset",) + tuple(OWNER)


@dataclasses.dataclass(frozen=True, init=False)
class RunConfig:
  """Everything that determines a run, one part per stage; validated when built.

  ``RunConfig(**flat)`` takes the flat field names (the CLI's flags, the keys of
  ``config.json``), a part by its name (``data=DataConfig(...)``), or both. A bad value
  fails at the boundary (the CLI, :func:`get_config`, :meth:`replace`) with a message that
  names the fix, before anything is computed or written.

  Every flat field name is also a read-only attribute that reads the part owning it
  (``cfg.kde_variance`` is ``cfg.weights.kde_variance``); these are generated from the parts'
  fields. The flat names are the stable keys of ``config.json`` and the CLI's flags:
  :meth:`to_dict` is flat, so :meth:`digest` and :meth:`distill_digest` (which name run
  directories) do not depend on how the parts are arranged.

  Example:
    >>> cfg = RunConfig(preset="smoke", ipc=2, kde_variance=0.02)
    >>> cfg.weights.kde_variance, cfg.kde_variance, cfg.distill.ipc
    (0.02, 0.02, 2)
    >>> RunConfig.from_dict(cfg.to_dict()) == cfg
    True
  """
  preset: str
  data: parts_lib.DataConfig
  own: parts_lib.OwnDataConfig
  distill: parts_lib.DistillConfig
  weights: parts_lib.WeightingConfig
  gm: parts_lib.GradientMatchingConfig
  mtt: parts_lib.MTTConfig
  cfm: parts_lib.CFMConfig
  embedding: parts_lib.SurrogateStage
  biased: parts_lib.BiasedStage
  evaluation: parts_lib.EvaluationConfig
  execution: parts_lib.ExecutionConfig

  def __init__(self, preset: str = "paper", **fields: Any):
    unknown = set(fields) - set(OWNER) - set(PARTS)
    if unknown:
      raise TypeError(f"RunConfig got unexpected fields {sorted(unknown)}")
    object.__setattr__(self, "preset", preset)
    for key, cls in PARTS.items():
      part = fields.get(key)
      own = {n: fields[n] for n in fields if OWNER.get(n) == key}
      if part is None:
        part = cls(**own)
      elif own:
        part = dataclasses.replace(part, **own)
      object.__setattr__(self, key, part)
    if self.own.data_spec is not None:
      # A user's data (--data) has no built-in name, ratio, severity or source: those fields
      # take their defaults, and no record or digest of the run names them.
      object.__setattr__(self, "data", parts_lib.DataConfig(seed=self.data.seed))
    validate(self)

  @classmethod
  def from_dict(cls, flat: dict[str, Any], *, ignore_unknown: bool = False) -> "RunConfig":
    """The config of a flat dict (:meth:`to_dict`, a ``config.json``); missing keys take
    their defaults, unknown keys are refused unless ``ignore_unknown``."""
    if ignore_unknown:
      flat = {k: v for k, v in flat.items() if k in FIELDS}
    return cls(**flat)

  def parts(self) -> dict[str, parts_lib.Part]:
    """Part name -> part, in order."""
    return {key: getattr(self, key) for key in PARTS}

  def to_tree(self) -> dict[str, Any]:
    """The config nested by part: ``{"preset": ..., "data": {...}, ...}`` (for a user's own
    data the ``data`` part holds its ``seed`` only, as :meth:`to_dict`)."""
    tree = {"preset": self.preset, **{k: p.to_dict() for k, p in self.parts().items()}}
    if self.own.data_spec is not None:
      tree["data"] = {k: v for k, v in tree["data"].items() if k not in BUILTIN_DATA_FIELDS}
    return tree

  def replace(self, **changes) -> "RunConfig":
    """A validated copy with some flat fields changed."""
    unknown = set(changes) - set(FIELDS)
    if unknown:
      raise ValueError(f"unknown RunConfig fields {sorted(unknown)}; valid: {sorted(FIELDS)}")
    return RunConfig(**{**self.to_dict(), **changes})

  def to_dict(self) -> dict[str, Any]:
    """The flat dict: every field by its flat name (the keys of ``config.json``). A run on a
    user's own data (``data_spec``) has no :data:`BUILTIN_DATA_FIELDS`: it is named by its
    spec, never as a built-in dataset."""
    flat = {"preset": self.preset}
    for part in self.parts().values():
      flat.update(part.to_dict())
    if self.own.data_spec is not None:
      for name in BUILTIN_DATA_FIELDS:
        flat.pop(name)
    return flat

  def _hashed(self, legacy: bool = False) -> dict[str, Any]:
    d = self.to_dict()
    if legacy and self.own.data_spec is not None:
      # before own-data runs dropped them, their digests hashed the preset's built-in fields
      preset = PRESETS.get(self.preset)
      d.update({name: getattr(preset.data if preset else parts_lib.DataConfig(), name)
                for name in BUILTIN_DATA_FIELDS})
    d.pop("log_every"), d.pop("checkpoint_every")
    if d["policy"] == "auto":  # the default layout; digests from before the field stay valid
      d.pop("policy")
    d.pop("devices"), d.pop("steps_per_call")  # layout only
    for name, default in (("real_sampling", "uniform"), ("kde_floor", 0.0),
                          ("cfm_curriculum", "iterations"), ("compute_dtype", "float32"),
                          ("fairdd_eps", "median")):
      if d[name] == default:  # the same: runs from before the field keep their digests
        d.pop(name)
    for name in OWN_FIELDS:  # None unless --data: built-in runs keep their digests
      if d[name] is None:
        d.pop(name)
    if d["weighting"] not in ("fairdd_pseudo", "fairdd_batch", "fairdd_dbscan"):  # their field
      d.pop("fairdd_clusters")
    _pop_biased(d)
    if d["method"] != "mtt":  # fields other methods ignore (and older runs never had)
      for name in MTT_FIELDS:
        d.pop(name)
    if d["method"] != "cfm":
      for name in CFM_FIELDS:
        d.pop(name, None)
    return d

  def digest(self, *, legacy: bool = False) -> str:
    """Hash of every field that changes the result (not logging/checkpoint cadence).
    ``legacy``: the digest an older jaxdd gave a run on a user's own data (it hashed the
    unused built-in dataset fields too), so that such a run still resumes."""
    return hashlib.sha256(json.dumps(self._hashed(legacy), sort_keys=True).encode()
                          ).hexdigest()[:16]

  def distill_digest(self, *, legacy: bool = False) -> str:
    """Hash of the fields that change the SynSet (not how it is evaluated); ``legacy`` as
    :meth:`digest`."""
    d = self._hashed(legacy)
    for name in ("preset",) + EVAL_FIELDS:
      d.pop(name)
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def _pop_biased(d: dict[str, Any]) -> None:
  """Drops from a hashed dict the bias-amplified classifier's fields where no weighting reads
  them, and the KDE's features at their default: runs from before the fields keep their
  digests."""
  if d["kde_features"] == "surrogate":
    d.pop("kde_features")
  if d["weighting"] != "gce":
    d.pop("gce_floor")
  if d["weighting"] != "jtt":
    d.pop("jtt_up")
  if not reads_biased(d):
    for name in BIASED_FIELDS:
      d.pop(name)


def reads_biased(config: "RunConfig | dict[str, Any]") -> bool:
  """Whether a run reads the bias-amplified classifier: ``--weighting gce`` or ``jtt``, or the
  KDE in its features (``--kde-features biased``).

  Example:
    >>> reads_biased({"weighting": "jtt", "kde_features": "surrogate"})
    True
  """
  get = config.get if isinstance(config, dict) else lambda name: getattr(config, name)
  return get("weighting") in ("gce", "jtt") or (get("weighting") == "kde"
                                                and get("kde_features") == "biased")


def _flat_property(key: str, name: str) -> property:
  return property(lambda self: getattr(getattr(self, key), name),
                  doc=f"``{key}.{name}`` (read-only; the flat name of config.json and the CLI)")


for _name, _key in OWNER.items():
  setattr(RunConfig, _name, _flat_property(_key, _name))

#: RunConfig fields that only trajectory matching reads.
MTT_FIELDS = tuple(f.name for f in dataclasses.fields(parts_lib.MTTConfig))

#: RunConfig fields that only curriculum frequency matching reads.
CFM_FIELDS = tuple(f.name for f in dataclasses.fields(parts_lib.CFMConfig))

#: RunConfig fields of a built-in dataset that a run on a user's own data (``--data``) has not.
BUILTIN_DATA_FIELDS = ("dataset", "conflict_ratio", "severity", "source")

#: RunConfig fields that describe a user's own dataset (``--data``).
OWN_FIELDS = tuple(f.name for f in dataclasses.fields(parts_lib.OwnDataConfig))

#: RunConfig fields of the bias-amplified classifier (``--weighting gce``, ``jtt``, ``--kde-features
#: biased``).
BIASED_FIELDS = tuple(f.name for f in dataclasses.fields(parts_lib.BiasedStage))

#: RunConfig fields that only change how a SynSet is evaluated.
EVAL_FIELDS = tuple(f.name for f in dataclasses.fields(parts_lib.EvaluationConfig))

#: RunConfig field -> its allowed values (the CLI's ``choices``; checked by :func:`validate`).
CHOICES: dict[str, tuple[Any, ...]] = {name: allowed for cls in PARTS.values()
                                       for name, allowed in cls.CHOICES.items()}

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
  builtin = [k for k in BUILTIN_DATA_FIELDS if k in overrides]
  if overrides.get("data_spec") is not None and builtin:
    raise ValueError(f"--{builtin[0].replace('_', '-')} describes a built-in dataset and --data "
                     "reads your own; pass one of them")
  method = overrides.get("method", PRESETS[preset].method)
  if method not in METHODS:
    raise ValueError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")
  base = PRESETS[preset].replace(method=method, **METHOD_PRESETS[preset].get(method, {}))
  size = overrides.get("image_size")
  if (overrides.get("data_spec") and isinstance(size, int) and 8 <= size <= 1024
      and "depth" not in overrides):  # a bad size is refused by the part's own check below
    # Models by resolution for a user's data: the ConvNet gets one block per halving
    depth = parts_lib.depth_for_size(int(overrides["image_size"]))
    overrides["depth"] = depth
    if "eval_model" not in overrides and base.eval_model.split("-")[0] == "convnet":
      # the evaluation ConvNet too, its other options kept (smoke's convnet-d2-w8 -> -d4-w8)
      parts = [p for p in base.eval_model.split("-")[1:] if not re.fullmatch(r"d\d+", p)]
      if depth != 3 or parts:
        overrides["eval_model"] = "-".join(["convnet", f"d{depth}", *parts])
  return base.replace(**overrides)


def validate(config: RunConfig) -> None:
  """The checks that span parts (each part checked its own fields when it was built), with
  messages that name the fix; every RunConfig runs them when built."""
  c = config
  if c.method in ("dsa", "dc"):
    c.gm.validate(c.ipc)
  c.mtt.validate(c.method)
  c.cfm.validate(c.method)
  if c.weighting in ("none", "fairdd", "fairdd_pseudo", "fairdd_batch", "fairdd_dbscan") and (
      "weighted" in (c.init, c.real_sampling)):
    raise ValueError("init='weighted' and real_sampling='weighted' draw real images in proportion "
                     "to their weights; use them with --weighting kde or oracle")
  if c.weighting == "auto" and ("weighted" in (c.init, c.real_sampling) or c.kde_floor):
    raise ValueError("--weighting auto chooses where the synthetic images start, how real batches "
                     "are drawn and the density floor among its candidates; leave --init, "
                     "--real-sampling and --kde-floor at their defaults")
  if (c.weighting == "kde" and c.kde_scope == "batch" and c.real_sampling == "uniform"
      and c.real_per_class < 2):
    raise ValueError(f"KDE scope 'batch' estimates densities inside each real batch, which needs "
                     f"real_per_class >= 2 (got {c.real_per_class}); raise it or use "
                     "--kde-scope class")
  if c.devices != "1" and c.method in ("mtt", "cfm"):
    raise ValueError(f"--devices shards DM and gradient matching; method {c.method!r} "
                     "runs on one device (use --devices 1)")
  changed = [f for f in BIASED_FIELDS if getattr(c, f) != getattr(_BIASED_DEFAULT, f)]
  if changed and not reads_biased(c):
    raise ValueError(f"--{changed[0].replace('_', '-')} sets the bias-amplified classifier of "
                     "--weighting gce, jtt and --kde-features biased; use it with one of them")
  if c.method == "mtt":
    _validate_mtt(c)
  if c.method == "cfm":
    _validate_cfm(c)
  if c.weighting in ("fairdd", "fairdd_pseudo", "fairdd_batch", "fairdd_dbscan") and (
      c.method != "dm"):
    raise ValueError(f"--weighting {c.weighting} (FairDD's synchronized matching) is implemented "
                     "for distribution matching only; use --method dm")
  if (c.kde_floor and c.kde_scope == "batch" and c.init != "weighted"
      and c.real_sampling != "weighted"):
    raise ValueError("--kde-floor acts on whole-class densities, which this run does not use; add "
                     "--init weighted, --real-sampling weighted or --kde-scope class")


def _validate_mtt(config: RunConfig) -> None:
  if config.real_sampling != "uniform":
    raise ValueError("--real-sampling is a matching option; trajectory matching sees no real "
                     "batch (its weighting acts on the experts): leave it at 'uniform'")
  if config.weighting == "kde" and config.kde_scope == "batch":
    raise ValueError("trajectory matching weights its experts' images over whole classes: use "
                     "--kde-scope class with --method mtt --weighting kde")


def _validate_cfm(config: RunConfig) -> None:
  if config.real_per_class < 2:
    raise ValueError("frequency matching estimates a covariance per real batch: "
                     f"real_per_class must be >= 2, got {config.real_per_class}")
  if config.cfm_curriculum == "slots" and 0 < config.iterations < config.ipc:
    raise ValueError(f"--cfm-curriculum slots synthesises one IPC slot after another and needs "
                     f"at least one iteration per slot: iterations {config.iterations} < ipc "
                     f"{config.ipc}; raise --iterations or use --cfm-curriculum iterations")


_BIASED_DEFAULT = parts_lib.BiasedStage()

#: RunConfig presets (:data:`jaxdd.presets.RUN`): ``paper``, ``cpu``, ``smoke``.
PRESETS: dict[str, RunConfig] = {name: RunConfig(preset=name, **fields)
                                 for name, fields in presets_lib.RUN.items()}
