"""The parts of a run configuration, one frozen dataclass per stage of a run.

Each part holds the fields one stage reads and checks them itself (:meth:`Part.validate`)
with messages that name the fix. The parts import nothing from the library above the base
layer: the choices the library owns (datasets, initialisations, protocols, ...) are literal
tuples here, and ``tests/test_config.py`` checks that each equals the library's registry.
Checks that span parts (a method's needs of the weighting, say) are
:class:`jaxdd.config.RunConfig`'s.

Example:
  >>> DataConfig(dataset="cmnist", conflict_ratio=0.05).severity is None
  True
  >>> WeightingConfig(kde_temperature=0.0)
  Traceback (most recent call last):
    ...
  ValueError: KDEConfig.temperature (the normalisation temperature) must be a finite number > 0, e.g. 0.25; got 0.0
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any, ClassVar

from jaxdd import policy as policy_lib
from jaxdd import presets as presets_lib
from jaxdd._src import checks

__all__ = ["CFMConfig", "DataConfig", "OwnDataConfig", "OWN_DATA_KINDS", "ALIGNED_RULES", "DistillConfig", "EvaluationConfig", "ExecutionConfig",
           "GradientMatchingConfig", "MTTConfig", "Part", "SurrogateStage", "WeightingConfig",
           "DATASETS", "FAIRDD_CLUSTERS", "FAIRDD_EPS", "GM_LOOP_IPCS", "INITS", "KDE_NORMALIZE", "KDE_SCOPES", "REAL_SAMPLING",
           "BiasedStage", "BIASED_NORMS", "GCE_FLOOR", "KDE_FEATURES"]

#: Dataset -> (ratio semantics, severities, default severity) of :data:`jaxdd.data.DATASETS`.
DATASETS: dict[str, tuple[str, tuple[int, ...], int | None]] = {
    "bffhq": ("folder", (), None),
    "bg_fmnist": ("lff", (1, 2, 3, 4, 5), 4),
    "ccifar10_dd": ("biased_dd", (1, 2, 3, 4), 4),
    "cifar10c": ("lff", (1, 2, 3, 4), 4),
    "cifar10c_type0": ("lff", (1, 2, 3, 4), 4),
    "cifar10c_type1": ("lff", (1, 2, 3, 4), 4),
    "cmnist": ("lff", (1, 2, 3, 4, 5), 4),
    "cmnist_dd": ("biased_dd", (1, 2, 3, 4), 4),
    "cmnist_bg": ("lff", (), None),
    "cmnist_fg": ("lff", (), None),
    "corrupted_fmnist": ("lff", (1, 2, 3, 4), 4),
    "corrupted_fmnist_type1": ("lff", (1, 2, 3, 4), 4),
    "textured_fmnist": ("lff", (), None),
}
#: :data:`jaxdd.distill.INITS` and :data:`jaxdd.distill.REAL_SAMPLING`.
INITS = ("real", "weighted", "noise")
REAL_SAMPLING = ("uniform", "weighted")
#: The IPCs with reference loop counts (the keys of :data:`jaxdd.distill.GM_LOOPS`).
GM_LOOP_IPCS = (1, 10, 20, 30, 40, 50)
#: :class:`jaxdd.weighting.KDEConfig`'s normalisations and scopes.
KDE_NORMALIZE = ("softmax", "power")
KDE_SCOPES = ("batch", "class")
#: The default number of pseudo-groups per class of ``weighting='fairdd_pseudo'``: the
#: number of bias values of the benchmark datasets (CMNIST's colours, the corruptions).
FAIRDD_CLUSTERS = 10
#: The most pseudo-groups per class: a sampled batch holds a few hundred images of a class, and
#: groups of one or two images carry no group statistics.
MAX_FAIRDD_CLUSTERS = 64
#: :data:`jaxdd.weighting.EPS_RULES`: how ``weighting='fairdd_batch'`` sets DBSCAN's radius
#: in each batch (``fairdd_eps``).
FAIRDD_EPS = ("median", "knee")
#: Where the KDE reads its features: the SupCon surrogate's embedding or the bias-amplified
#: classifier's penultimate features.
KDE_FEATURES = ("surrogate", "biased")
#: :data:`jaxdd.weighting.DIFFICULTY_FLOOR`: each image's least share of its class's uniform
#: weight under ``weighting='gce'``.
GCE_FLOOR = 0.1
#: :data:`jaxdd.debias.biased.NORMS`.
BIASED_NORMS = ("instance", "none", "batch", "layer", "group")


#: A field's declared type -> (the values it takes, in words).
_KINDS = {"int": (numbers.Integral, "a whole number"), "float": (numbers.Real, "a number"),
          "str": (str, "a string")}


class Part:
  """What every part shares: a title (its stage), choices, a flat dict and a check."""
  #: The stage the part configures (the CLI's group title).
  TITLE: ClassVar[str] = ""
  #: Field -> its allowed values (the CLI's ``choices``).
  CHOICES: ClassVar[dict[str, tuple[Any, ...]]] = {}
  #: Field -> its CLI flag name when that is not the field's own (``data_spec`` -> ``--data``).
  FLAGS: ClassVar[dict[str, str]] = {}
  #: What a field means, for its flag's help text (the default is added).
  HELP: ClassVar[dict[str, str]] = {}

  def __post_init__(self):
    try:  # the part's own checks first (their messages say more: a range, the choices)
      self.validate()
    except TypeError:  # a comparison of a string with a number, say: the kind is wrong
      self.check_types()
      raise
    self.check_types()  # what they let through: 2.5 for a count, True for a number

  def check_types(self) -> None:
    """Every field holds its declared kind: a whole number for ``int`` (not a bool, not 2.5),
    a number for ``float``, a string for ``str``, or None where allowed."""
    for f in dataclasses.fields(self):
      kind = str(f.type)
      expected = _KINDS.get(kind.removesuffix(" | None"))
      value = getattr(self, f.name)
      if expected is None or (value is None and kind.endswith(" | None")):
        continue
      if isinstance(value, bool) or not isinstance(value, expected[0]):
        raise ValueError(f"{f.name} must be {expected[1]}, got {value!r}")

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  def check_choices(self) -> None:
    for name, allowed in self.CHOICES.items():
      value = getattr(self, name)
      if allowed and value is not None and value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")

  def validate(self) -> None:
    """Checks the part's own fields (a ValueError names the fix)."""
    self.check_choices()


def _check_min(part: Part, names: tuple[str, ...], low: int = 1) -> None:
  for name in names:
    if getattr(part, name) < low:
      raise ValueError(f"{name} must be >= {low}, got {getattr(part, name)}")


def _check_positive(name: str, v) -> None:
  if not (math.isfinite(v) and v > 0):
    raise ValueError(f"{name} must be a positive number, got {v!r}")


@dataclasses.dataclass(frozen=True)
class DataConfig(Part):
  """The biased dataset: its name, bias ratio and severity, source and seed."""
  TITLE: ClassVar[str] = "data"
  CHOICES: ClassVar[dict[str, tuple[Any, ...]]] = {"dataset": tuple(sorted(DATASETS))}
  dataset: str = "cmnist"
  conflict_ratio: float = 0.05
  severity: int | None = None
  source: str | None = None
  seed: int = 0

  def validate(self) -> None:
    self.check_choices()
    semantics, severities, default = DATASETS[self.dataset]
    r = self.conflict_ratio
    if isinstance(r, bool) or not isinstance(r, numbers.Real):
      raise ValueError(f"conflict_ratio must be a number, got {r!r}.")
    if not math.isfinite(r):
      raise ValueError(f"conflict_ratio must be finite, got {float(r)}.")
    if semantics == "biased_dd" and not 0.0 <= r <= 1.0:
      raise ValueError(
          f"{self.dataset}: the ratio is the bias-ALIGNED fraction (Biased-DD) and must lie in "
          f"[0, 1], got {float(r)}; e.g. 0.1 (uniform), 0.5, 0.8, 0.95, 1.0.")
    if semantics != "biased_dd" and not 0.0 < r < 1.0:
      raise ValueError(
          f"{self.dataset}: conflict_ratio is the fraction of bias-conflicting samples and must "
          f"lie in (0, 1), got {float(r)}; e.g. 0.005, 0.01, 0.02, 0.05.")
    self._check_severity(severities, default)

  def _check_severity(self, severities: tuple[int, ...], default: int | None) -> None:
    s = self.severity
    if not severities:
      if s is not None:
        raise ValueError(f"{self.dataset} has no severity; pass severity=None.")
      return
    if s is None:
      return
    if isinstance(s, bool) or not isinstance(s, numbers.Integral):
      raise ValueError(f"severity must be an integer in {list(severities)}, got {s!r}.")
    if int(s) not in severities:
      raise ValueError(f"{self.dataset}: severity must be one of {list(severities)} (default "
                       f"{default}), got {int(s)}.")


#: :data:`jaxdd.data.own.KINDS` and :data:`jaxdd.data.own.ALIGNED_RULES`.
OWN_DATA_KINDS = ("folder", "csv", "celeba", "pattern", "npz", "tfds")
ALIGNED_RULES = ("majority", "equal")


@dataclasses.dataclass(frozen=True)
class OwnDataConfig(Part):
  """Your own dataset instead of a built-in one (``--data KIND:PATH``, :mod:`jaxdd.data.own`).

  ``data_spec``: ``folder:ROOT``, ``csv:FILE``, ``celeba:ROOT``, ``pattern:ROOT``, ``npz:FILE``
  or ``tfds:NAME``; ``label_col`` / ``group_col`` / ``split_col``: the column, attribute,
  file-name field or feature key of the class, the group (bias) and the split; ``path_col``:
  the csv's path column; ``name_fields``: a file-name pattern's fields, comma-separated;
  ``group_file``: a csv ``path,group`` of group labels; ``image_size``: resize to it (the
  ConvNet's depth follows it); ``data_dir``: the TFDS data directory; ``aligned_rule``:
  ``majority`` or ``equal``; ``valid_fraction`` / ``test_fraction``: the hold-outs of missing
  splits. With ``data_spec`` the built-in dataset's fields (dataset, conflict_ratio,
  severity) are not read.
  """
  TITLE: ClassVar[str] = "your own data (--data)"
  CHOICES: ClassVar[dict[str, tuple[Any, ...]]] = {"aligned_rule": ALIGNED_RULES}
  FLAGS: ClassVar[dict[str, str]] = {"data_spec": "data"}
  HELP: ClassVar[dict[str, str]] = {
      "data_spec": "your dataset as KIND:PATH, KIND one of folder, csv, celeba, pattern, npz, "
                   "tfds (e.g. folder:images/, csv:metadata.csv)",
      "label_col": "the class: a column, attribute, file-name field or feature key",
      "group_col": "the group (bias) label, named like --label-col; optional",
      "split_col": "the split (train/valid/test or 0/1/2), named like --label-col; optional",
      "path_col": "csv: the column of image paths (relative to the csv's folder)",
      "name_fields": "pattern: the file-name fields, comma-separated (e.g. age,gender,race)",
      "group_file": "a csv path,group of group labels for images the data does not label",
      "image_size": "resize every image to this square side (the ConvNet's depth follows it)",
      "data_dir": "tfds: the TFDS data directory",
      "aligned_rule": "which group of a class is its aligned one (majority or equal)",
      "valid_fraction": "the validation hold-out when the data has no validation split",
      "test_fraction": "the test hold-out when the data has no test split"}
  data_spec: str | None = None
  label_col: str | None = None
  group_col: str | None = None
  split_col: str | None = None
  path_col: str | None = None
  name_fields: str | None = None
  group_file: str | None = None
  image_size: int | None = None
  data_dir: str | None = None
  aligned_rule: str | None = None
  valid_fraction: float | None = None
  test_fraction: float | None = None

  def validate(self) -> None:
    self.check_choices()
    options = [f.name for f in dataclasses.fields(self)
               if f.name != "data_spec" and getattr(self, f.name) is not None]
    if self.data_spec is None:
      if options:
        flag = "--" + options[0].replace("_", "-")
        raise ValueError(f"{flag} describes your own data; pass it with --data KIND:PATH")
      return
    kind = str(self.data_spec).split(":", 1)[0]
    if ":" not in str(self.data_spec) or kind not in OWN_DATA_KINDS:
      raise ValueError(f"--data must be KIND:PATH with KIND one of {', '.join(OWN_DATA_KINDS)}, "
                       f"got {self.data_spec!r}; e.g. folder:images/ or csv:metadata.csv")
    if self.image_size is not None and not 8 <= self.image_size <= 1024:
      raise ValueError(f"--image-size must be an integer in [8, 1024], got {self.image_size}")


def depth_for_size(image_size: int) -> int:
  """The ConvNet depth of the dataset-distillation literature for a resolution: 3 up to 32 px,
  4 at 64, 5 at 128 (one block per halving down to a 4 x 4 map).

  >>> depth_for_size(28), depth_for_size(32), depth_for_size(64), depth_for_size(128)
  (3, 3, 4, 5)
  """
  return max(3, int(math.ceil(math.log2(image_size))) - 2)


#: The most distillation steps a run may ask for: the state's step counter is int32.
MAX_ITERATIONS = 2**31 - 1


@dataclasses.dataclass(frozen=True)
class DistillConfig(Part):
  """The distillation every method shares: the method, the synthetic set and its updates.

  ``method``: 'dm' (distribution matching), 'dsa' or 'dc' (gradient matching), 'mtt'
  (trajectory matching) or 'cfm' (curriculum frequency matching). ``init``: where the
  synthetic images start ('real' random real images, 'weighted' real images drawn in
  proportion to their whole-class weights, or 'noise'). ``real_sampling``: how each step
  draws its real batch ('uniform', the reference, weights inside the loss; or 'weighted',
  importance sampling in proportion to the whole-class weights, plain mean).
  ``compute_dtype``: the dtype of DM's network arithmetic: 'float32' (the reference) or
  'bfloat16' (the real forward and the synthetic forward and backward in bfloat16, the
  loss, the gradient and the images in float32; for accelerators: a CPU emulates it slowly).
  """
  TITLE: ClassVar[str] = "distillation"
  CHOICES: ClassVar[dict[str, tuple[Any, ...]]] = {
      "method": ("dm", "dsa", "dc", "mtt", "cfm"), "init": INITS, "real_sampling": REAL_SAMPLING,
      "compute_dtype": ("float32", "bfloat16")}
  HELP: ClassVar[dict[str, str]] = {
      "compute_dtype": "DM's arithmetic: float32, or bfloat16 for the real and synthetic "
                       "forward and backward (images in float32; for accelerators)"}
  method: str = "dm"
  ipc: int = 50
  iterations: int = 20000
  real_per_class: int = 256
  lr_img: float = 1.0
  momentum: float = 0.5
  init: str = "real"
  real_sampling: str = "uniform"
  dsa_strategy: str = presets_lib.DSA_STRATEGY
  width: int = 128
  depth: int = 3
  compute_dtype: str = "float32"

  def validate(self) -> None:
    self.check_choices()
    if self.compute_dtype != "float32" and self.method != "dm":
      raise ValueError(f"compute_dtype {self.compute_dtype!r} is a DM option; method "
                       f"{self.method!r} computes in float32")
    if self.iterations < 0:
      raise ValueError(f"iterations must be >= 0 (0: the initial images, not distilled), got "
                       f"{self.iterations}")
    if self.iterations > MAX_ITERATIONS:
      raise ValueError(f"iterations {self.iterations} is more than {MAX_ITERATIONS:,} (the "
                       "step counter is a 32-bit integer, and that many steps take days on "
                       "any machine); give fewer")
    _check_min(self, ("ipc", "real_per_class", "width", "depth"))
    if self.lr_img <= 0 or not math.isfinite(self.lr_img):
      raise ValueError(f"lr_img must be a positive number, got {self.lr_img}")


@dataclasses.dataclass(frozen=True)
class GradientMatchingConfig(Part):
  """Gradient matching only (dsa, dc): the network's SGD lr in the inner loop and the loop
  counts (None: the reference's per IPC, :data:`jaxdd.distill.GM_LOOPS`)."""
  TITLE: ClassVar[str] = "gradient matching (--method dsa, dc)"
  lr_net: float = 0.01
  outer_loop: int | None = None
  inner_loop: int | None = None

  def validate(self, ipc: int | None = None) -> None:
    """Also checks the loop counts for ``ipc`` when one is given."""
    if ipc is not None:
      if ipc not in GM_LOOP_IPCS and (self.outer_loop is None or self.inner_loop is None):
        raise ValueError(f"ipc={ipc} has no reference loop counts (defined for IPC "
                         f"{list(GM_LOOP_IPCS)}); pass outer_loop= and inner_loop=")
      for name in ("outer_loop", "inner_loop"):
        v = getattr(self, name)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
          raise ValueError(f"{name} must be an int >= 1, got {v!r}")
      if not self.lr_net > 0:
        raise ValueError(f"lr_net must be > 0, got {self.lr_net}")


@dataclasses.dataclass(frozen=True)
class MTTConfig(Part):
  """Trajectory matching only (mtt): gradients 'exact' or 'tesla', the student unroll
  (syn_steps student steps on batch_syn images, None: all), the expert window (start epoch
  below max_start_epoch, target expert_epochs later), the student lr's initial value and step
  size, and the experts: num_experts trained for max_start_epoch + expert_epochs epochs with
  SGD(expert_lr); with --weighting kde or oracle their real images are weighted by 'sample'
  (weighted sampler) or 'loss'."""
  TITLE: ClassVar[str] = "trajectory matching (--method mtt)"
  CHOICES: ClassVar[dict[str, tuple[Any, ...]]] = {
      "mtt_mode": ("exact", "tesla"), "expert_weighting": ("sample", "loss")}
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

  def validate(self, method: str | None = None) -> None:
    """The choices; with ``method='mtt'`` (the run's) also the values."""
    self.check_choices()
    if method != "mtt":
      return
    for name in ("syn_steps", "expert_epochs", "max_start_epoch", "num_experts"):
      checks.check_positive_int(name, getattr(self, name))
    if self.batch_syn is not None and self.batch_syn < 1:
      raise ValueError(f"batch_syn must be >= 1 or None (the whole set), got {self.batch_syn}")
    for name in ("lr_teacher", "lr_lr", "expert_lr"):
      _check_positive(name, getattr(self, name))


@dataclasses.dataclass(frozen=True)
class CFMConfig(Part):
  """Curriculum frequency matching only (cfm): the filter of the channel covariance ('high':
  (cov + beta I)^-1, 'low': cov), beta and its schedule (down to 1e-3 beta) over the
  iterations ('iterations') or over the IPC slots synthesised one after another as UniDD does
  ('slots'), and whether each norm is divided by the real side's ('real') or not ('none')."""
  TITLE: ClassVar[str] = "curriculum frequency matching (--method cfm)"
  CHOICES: ClassVar[dict[str, tuple[Any, ...]]] = {
      "cfm_filter": ("high", "low"), "cfm_schedule": ("constant", "cos", "linear"),
      "cfm_curriculum": ("iterations", "slots"), "cfm_normalize": ("real", "none")}
  cfm_filter: str = "high"
  cfm_beta: float = 0.1
  cfm_schedule: str = "cos"
  cfm_curriculum: str = "iterations"
  cfm_normalize: str = "real"

  def validate(self, method: str | None = None) -> None:
    """The choices; with ``method='cfm'`` (the run's) also beta."""
    self.check_choices()
    if method == "cfm" and not (math.isfinite(self.cfm_beta) and self.cfm_beta > 0):
      raise ValueError(f"cfm_beta must be a positive number, got {self.cfm_beta}")


@dataclasses.dataclass(frozen=True)
class WeightingConfig(Part):
  """The weighting of the real images: 'none' (the vanilla method), 'kde' (Cui et al.'s
  reweighting, the kde_* fields), or reference rows that use the TRUE bias labels: 'oracle'
  (group-balanced weights) and 'fairdd' (FairDD's synchronized matching, DM only);
  'fairdd_pseudo' is FairDD without bias labels: its groups are ``fairdd_clusters`` k-means
  clusters of each class in the surrogate's embedding (DM only); 'fairdd_batch' is FairDD
  without bias labels as its appendix M describes it: each sampled real batch is clustered
  with DBSCAN in the features the step matches, at most ``fairdd_clusters`` clusters, its radius
  by ``fairdd_eps`` ('median': the median 5-NN distance; 'knee': the knee of the batch's
  k-distance curve) (DM only); 'fairdd_dbscan' is FairDD with the DBSCAN clusters of each WHOLE
  class in the surrogate's embedding, each class's radius the knee of its k-distance curve, at
  most ``fairdd_clusters`` clusters and the noise as one more group (DM only);
  'auto' is the label-free weighting chosen on validation data before the run distils
  (:mod:`jaxdd.runs.auto`). ``kde_floor`` raises each class's whole-class densities to at
  least this quantile (0: none). Label-free too, from a bias-amplified classifier
  (:class:`BiasedStage`): 'gce' weighs each image by that network's cross-entropy, each
  keeping at least ``gce_floor`` of its class's uniform weight; 'jtt' up-weights its error set
  (``jtt_up`` times, or by default half of each class's weight on it); ``kde_features='biased'``
  runs the KDE in its penultimate features instead of the surrogate's embedding."""
  TITLE: ClassVar[str] = "weighting"
  CHOICES: ClassVar[dict[str, tuple[Any, ...]]] = {
      "weighting": ("none", "kde", "oracle", "fairdd", "fairdd_pseudo", "fairdd_batch",
                    "fairdd_dbscan", "auto",
                    "gce", "jtt"),
      "kde_normalize": KDE_NORMALIZE, "kde_scope": KDE_SCOPES, "fairdd_eps": FAIRDD_EPS, "kde_features": KDE_FEATURES}
  HELP: ClassVar[dict[str, str]] = {
      "kde_features": "the KDE's features: the SupCon surrogate's embedding, or the "
                      "bias-amplified classifier's penultimate features (--weighting kde)",
      "gce_floor": "--weighting gce: each image keeps at least this share of its class's "
                   "uniform weight, in (0, 1]",
      "jtt_up": "--weighting jtt: an error of the biased network weighs this many times a "
                "correct image (JTT's lambda_up, >= 1); none: errors and the rest of a class "
                "weigh half each",
      "fairdd_eps": "--weighting fairdd_batch: DBSCAN's radius in each batch, the median 5-NN "
                    "distance or the knee of the batch's sorted 2-distance curve"}
  weighting: str = "kde"
  kde_variance: float = 0.01
  kde_temperature: float = 0.25
  kde_normalize: str = "power"
  kde_scope: str = "batch"
  kde_floor: float = 0.0
  fairdd_clusters: int = FAIRDD_CLUSTERS
  fairdd_eps: str = "median"
  kde_features: str = "surrogate"
  gce_floor: float = GCE_FLOOR
  jtt_up: float | None = None

  def validate(self) -> None:
    self.check_choices()
    for name, what, example in (("variance", "the kernel variance", 0.01),
                                ("temperature", "the normalisation temperature", 0.25)):
      v = getattr(self, "kde_" + name)
      if (isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v)
          or v <= 0):
        raise ValueError(f"KDEConfig.{name} ({what}) must be a finite number > 0, e.g. "
                         f"{example}; got {v!r}")
    f = self.kde_floor
    if (isinstance(f, bool) or not isinstance(f, numbers.Real) or not math.isfinite(f)
        or not 0.0 <= f < 1.0):
      raise ValueError("kde_floor (the density floor, a quantile) must be a number in [0, 1), "
                       f"e.g. 0.05, or 0 for none; got {f!r}")
    if f and self.weighting != "kde":
      raise ValueError("--kde-floor shapes the KDE weights; use it with --weighting kde (or "
                       "leave it at 0)")
    k = self.fairdd_clusters
    if (isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 2
        or k > MAX_FAIRDD_CLUSTERS):
      raise ValueError("fairdd_clusters (the pseudo-groups per class of --weighting "
                       f"fairdd_pseudo, fairdd_batch and fairdd_dbscan) must be an integer in "
                       f"[2, "
                       f"{MAX_FAIRDD_CLUSTERS}], e.g. {FAIRDD_CLUSTERS}; got {k!r}")
    if k != FAIRDD_CLUSTERS and self.weighting not in ("fairdd_pseudo", "fairdd_batch",
                                                       "fairdd_dbscan"):
      raise ValueError("--fairdd-clusters sets the pseudo-groups of --weighting fairdd_pseudo, "
                       "fairdd_batch and fairdd_dbscan; "
                       f"use it with that weighting (or leave it at {FAIRDD_CLUSTERS})")
    if self.fairdd_eps != "median" and self.weighting != "fairdd_batch":
      raise ValueError("--fairdd-eps sets the DBSCAN radius in the batches of --weighting "
                       "fairdd_batch; use it with that weighting (or leave it at median)")
    self._check_biased_weightings()

  def _check_biased_weightings(self) -> None:
    """The knobs of the weightings that read the bias-amplified classifier."""
    f, up = self.gce_floor, self.jtt_up
    if isinstance(f, bool) or not isinstance(f, numbers.Real) or not 0.0 < f <= 1.0:
      raise ValueError(f"gce_floor must be a number in (0, 1], e.g. {GCE_FLOOR}; got {f!r}")
    if f != GCE_FLOOR and self.weighting != "gce":
      raise ValueError(f"--gce-floor shapes --weighting gce's weights; use it with that "
                       f"weighting (or leave it at {GCE_FLOOR})")
    if up is not None and (isinstance(up, bool) or not isinstance(up, numbers.Real)
                           or not math.isfinite(up) or up < 1.0):
      raise ValueError(f"jtt_up (JTT's lambda_up) must be a number >= 1, e.g. 6, or none for "
                       f"the balance of errors and the rest; got {up!r}")
    if up is not None and self.weighting != "jtt":
      raise ValueError("--jtt-up up-weights the error set of --weighting jtt; use it with "
                       "that weighting (or leave it unset)")
    if self.kde_features != "surrogate" and self.weighting != "kde":
      raise ValueError("--kde-features chooses the features of the KDE weights; use it with "
                       "--weighting kde (or leave it at surrogate)")


@dataclasses.dataclass(frozen=True)
class SurrogateStage(Part):
  """The SupCon surrogate whose embedding the KDE weighting reads (a preset)."""
  TITLE: ClassVar[str] = "surrogate"
  CHOICES: ClassVar[dict[str, tuple[Any, ...]]] = {
      "surrogate_preset": tuple(presets_lib.SURROGATE)}
  surrogate_preset: str = "paper"


@dataclasses.dataclass(frozen=True)
class BiasedStage(Part):
  """The bias-amplified classifier that ``--weighting gce``, ``jtt`` and ``--kde-features
  biased`` read (:class:`jaxdd.debias.BiasedConfig`): a ConvNet of the run's depth, this width
  and normalisation, trained on the class labels alone with the generalized cross-entropy
  (exponent ``biased_q``; 0: cross-entropy) for ``biased_steps`` SGD steps of ``biased_batch``
  images at the constant learning rate ``biased_lr`` (momentum 0.9)."""
  TITLE: ClassVar[str] = "bias-amplified classifier (--weighting gce, jtt; --kde-features biased)"
  CHOICES: ClassVar[dict[str, tuple[Any, ...]]] = {"biased_norm": BIASED_NORMS}
  HELP: ClassVar[dict[str, str]] = {
      "biased_steps": "its SGD steps", "biased_batch": "its images per step",
      "biased_width": "its ConvNet's width", "biased_norm": "its ConvNet's normalisation",
      "biased_q": "its GCE exponent in [0, 1] (0: cross-entropy)",
      "biased_lr": "its SGD learning rate"}
  biased_steps: int = 200
  biased_batch: int = 128
  biased_width: int = 8
  biased_norm: str = "instance"
  biased_q: float = 0.7
  biased_lr: float = 0.01

  def validate(self) -> None:
    self.check_choices()
    checks.check_positive_int("biased_steps", self.biased_steps)
    checks.check_positive_int("biased_width", self.biased_width)
    _check_min(self, ("biased_batch",), 2)
    _check_unit("biased_q", self.biased_q)
    _check_positive("biased_lr", self.biased_lr)


def _check_unit(name: str, v) -> None:
  if isinstance(v, bool) or not isinstance(v, numbers.Real) or not 0.0 <= v <= 1.0:
    raise ValueError(f"{name} must be a number in [0, 1], got {v!r}")


@dataclasses.dataclass(frozen=True)
class EvaluationConfig(Part):
  """How a SynSet is evaluated: the protocol, the network spec and how many networks."""
  TITLE: ClassVar[str] = "evaluation"
  CHOICES: ClassVar[dict[str, tuple[Any, ...]]] = {"eval_protocol": tuple(presets_lib.PROTOCOL)}
  eval_protocol: str = "dm"
  eval_model: str = "convnet"
  num_eval_models: int = 5

  def validate(self) -> None:
    self.check_choices()
    _check_min(self, ("num_eval_models",))


@dataclasses.dataclass(frozen=True)
class ExecutionConfig(Part):
  """How the work is laid out and logged; none of it changes the results' digests.

  ``policy``: 'auto' follows the backend, 'cpu' or 'accelerator' pins a layout
  (:mod:`jaxdd.policy`), and a variant of one changes some of its fields
  ('accelerator+class_augment=vmap+input_grad=matmul'). ``devices``: the devices the
  distillation step is sharded over ('1', 'all' or a count). ``steps_per_call``: distillation steps per host round trip
  ('auto': the policy's, 1 on CPU; or a count). All give the same numbers up to float rounding.
  """
  TITLE: ClassVar[str] = "execution"
  log_every: int = 10
  checkpoint_every: int = 500
  policy: str = "auto"
  devices: str = "1"
  steps_per_call: str = "auto"

  def validate(self) -> None:
    self.check_choices()
    try:
      policy_lib.check(self.policy)  # JAX's backend stays untouched: see check()
    except ValueError as e:
      raise ValueError(f"policy: {e}") from None
    if self.devices != "all" and not (self.devices.isdigit() and int(self.devices) >= 1):
      raise ValueError(f"devices must be 'all' or a positive count, got {self.devices!r}")
    if self.steps_per_call != "auto" and not (self.steps_per_call.isdigit()
                                              and int(self.steps_per_call) >= 1):
      raise ValueError("steps_per_call must be 'auto' or a positive count, got "
                       f"{self.steps_per_call!r}")
    if self.checkpoint_every < 1 or self.log_every < 1:
      raise ValueError("checkpoint_every and log_every must be >= 1")
