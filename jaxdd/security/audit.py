"""``jaxdd audit``: does a SynSet teach a backdoor to the networks trained on it?

Three probes, each with a threshold, and a verdict that is the union of those
named in ``verdict_probes`` (default :data:`VERDICT_PROBES`: the candidate
triggers and the KDE outliers):

1. **Candidate triggers** (:func:`candidate_triggers`): networks trained on
   the SynSet (as a user would train them) are shown clean held-out real images
   with a trigger stamped in; the attack success rate (ASR) of a (trigger,
   target class) pair is the fraction of images of other classes that land in
   the target. A pair is flagged when its ASR reaches ``asr_threshold`` (0.5),
   or when its *lift*, the ASR minus the median ASR of all candidates to the
   same target (:func:`trigger_lift`: what any small patch does, confusion
   into that class included), reaches ``lift_threshold`` (0.1). It finds
   triggers of the families tried (opaque patches of 2-4 pixels at the four
   corners, a blended random pattern), not arbitrary ones; a backdoor that
   every candidate sets off raises the median as well and shows only in the
   ASR threshold.
2. **Trigger reverse-engineering**
   (:func:`~jaxdd.security.cleanse.reverse_engineer`; Neural Cleanse,
   Wang et al., S&P 2019): for every class t, the smallest mask and pattern that
   send clean images to t, found by Adam on ``CE + lambda * |mask|_1`` with
   Neural Cleanse's adaptive ``lambda``. A class
   that needs a much smaller mask than the others has a shortcut, i.e. a
   backdoor: the anomaly index of class t is ``(median - L1_t) / (1.4826 MAD)``
   over classes, flagged above 2 (Neural Cleanse's threshold). **Advisory by
   default**: it is reported but not part of the verdict
   (:data:`VERDICT_PROBES`), because on the measured SynSets it never flagged
   the attacked class, and every alarm fell on another class of a BG-FMNIST
   set, attacked or clean (docs/results/security.md, "Backdoors").
3. **KDE outliers** (:func:`kde_scores`): every synthetic image is embedded
   by the run's SupCon surrogate (trained on the real data) and scored under
   the kernel density of each class's real embeddings. Its *margin* is the
   log density under its own label minus the largest under another class: an
   archetype of another class relabelled to the target sits in that other
   class's cluster, with a large negative margin. Distilled images of a
   debiased set are atypical too, so the margin is judged against the
   SynSet's own images: an image is flagged when its margin is negative and
   at least ``outlier_z`` (default 3.5, Iglewicz and Hoaglin's cut) robust
   standard deviations (1.4826 MAD) below the SynSet's median margin, and the
   SynSet is flagged when one class holds at least
   :data:`OUTLIER_CLASS_COUNT` (2) such images: a single atypical distilled
   image is common, an injection needs several in its target class. The
   quantile of the image's own-class density among the class's real images
   (leave-one-out) is reported as well.

The clean images are the dataset's validation split (a trusted clean set);
the test split is never read.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxdd import evaluate as eval_lib
from jaxdd import progress as progress_lib
from jaxdd import train as train_lib
from jaxdd import weighting
from jaxdd._src import checks
from jaxdd.protocols import get_protocol
from jaxdd.security import attacks
from jaxdd.security.cleanse import Reversed, anomaly_index, reverse_engineer
from jaxdd.structs import SynSet

#: Defaults of the verdict's thresholds (docs/results/security.md, "Backdoors", measured them).
ASR_THRESHOLD = 0.5
#: A candidate flagged by its lift over the median candidate (:func:`trigger_lift`).
LIFT_THRESHOLD = 0.1
#: The lift needs a median over enough candidates; with fewer only the ASR threshold applies.
LIFT_MIN_TRIGGERS = 3
ANOMALY_THRESHOLD = 2.0
#: The least clean accuracy at which the probes are judged, as the share of the way from chance
#: (1 / classes) to 100 %: a quarter, 32.5 % with 10 classes. Below it the audit's networks have
#: not learned the set as a victim's would, and a flag is likely a false alarm (a 4-epoch audit
#: network at 17.4 % flagged nine classes of a clean SynSet: docs/trust.md).
MIN_CLEAN_SHARE = 0.25

#: The probes whose flags make the verdict; ``"cleanse"`` (Neural Cleanse) is reported only.
PROBES = ("triggers", "cleanse", "kde")
VERDICT_PROBES = ("triggers", "kde")
OUTLIER_Z = 3.5
#: The KDE probe flags a SynSet when one class holds at least this many outlier images.
OUTLIER_CLASS_COUNT = 2


def candidate_triggers(image_shape: Sequence[int]) -> list[attacks.Trigger]:
  """Patches of 2, 3 and 4 pixels (checker and white) at the 4 corners, and a blend."""
  out = []
  for size in (2, 3, 4):
    for corner in attacks.CORNERS:
      for pattern in ("checker", "white"):
        out.append(attacks.patch_trigger(image_shape, size=size, corner=corner, pattern=pattern))
  out.append(attacks.blend_trigger(image_shape, alpha=0.15, key=jax.random.key(20250206)))
  return out


def trigger_asr(predict, images, labels, triggers, *, num_classes: int, mean, std,
                progress: bool = False) -> np.ndarray:
  """ASR of every (network, trigger, target): (M, len(triggers), num_classes).

  ``predict`` maps normalised images (n, ...) to the classes the M networks
  predict, (M, n) (e.g. :func:`jaxdd.evaluate.predict` on stacked networks).
  ``progress``: report every trigger measured (:mod:`jaxdd.progress`).
  """
  labels = np.asarray(labels)
  out = None
  for j, trig in enumerate(progress_lib.track(triggers, "audit: candidate triggers",
                                              unit="trigger", disable=not progress)):
    pred = np.asarray(predict(trig.stamp(images, mean, std)))
    if out is None:
      out = np.zeros((pred.shape[0], len(triggers), num_classes))
    for t in range(num_classes):
      other = labels != t
      out[:, j, t] = np.mean(pred[:, other] == t, axis=1) if other.any() else 0.0
  return out


def trigger_lift(asr) -> np.ndarray:
  """ASR of every (trigger, target) minus the median over the triggers of the ASR to that target.

  ``asr`` is (triggers, classes) (or (networks, triggers, classes), reduced
  over the networks first). The median is what a small patch does to a clean
  network, confusion into the class included; a backdoor trigger stands out
  above it.

  Example:
    >>> trigger_lift([[0.30, 0.01], [0.02, 0.01], [0.04, 0.02]]).round(2)
    array([[ 0.26,  0.  ],
           [-0.02,  0.  ],
           [ 0.  ,  0.01]])
  """
  a = np.asarray(asr, np.float64)
  if a.ndim == 3:
    a = a.mean(axis=0)
  return a - np.median(a, axis=0, keepdims=True)


def top_lift(asr, names: Sequence[str]) -> tuple[str, int, float] | None:
  """The (trigger name, target, lift) of the largest :func:`trigger_lift`, or None with fewer
  than :data:`LIFT_MIN_TRIGGERS` candidates (no median to speak of)."""
  if len(names) < LIFT_MIN_TRIGGERS:
    return None
  lift = trigger_lift(asr)
  j, t = np.unravel_index(np.argmax(lift), lift.shape)
  return names[j], int(t), float(lift[j, t])


def trigger_flagged_classes(asr, names: Sequence[str], *, asr_threshold: float = ASR_THRESHOLD,
                            lift_threshold: float = LIFT_THRESHOLD) -> list[int]:
  """The target classes of the (trigger, target) pairs the candidate-trigger probe flags: ASR
  (averaged over the networks) >= ``asr_threshold``, or a lift (:func:`trigger_lift`) >=
  ``lift_threshold`` when there are at least :data:`LIFT_MIN_TRIGGERS` candidates.

  Example:
    >>> trigger_flagged_classes([[0.30, 0.01], [0.02, 0.01], [0.04, 0.60]], ["a", "b", "c"])
    [0, 1]
  """
  a = np.asarray(asr, np.float64)
  if a.ndim == 3:
    a = a.mean(axis=0)
  hit = a >= asr_threshold
  if len(names) >= LIFT_MIN_TRIGGERS:
    hit |= trigger_lift(a) >= lift_threshold
  return [int(t) for t in np.flatnonzero(hit.any(axis=0))]


def trigger_flagged(asr, names: Sequence[str], *, asr_threshold: float = ASR_THRESHOLD,
                    lift_threshold: float = LIFT_THRESHOLD) -> bool:
  """The candidate-trigger probe's rule: a pair at ASR >= ``asr_threshold`` (ASR averaged over
  the networks), or a lift (:func:`top_lift`) >= ``lift_threshold``."""
  return bool(trigger_flagged_classes(asr, names, asr_threshold=asr_threshold,
                                      lift_threshold=lift_threshold))


def verdict(flags: dict, probes: Sequence[str] = VERDICT_PROBES) -> bool:
  """Suspicious when a probe named in ``probes`` fired; ``flags`` maps every name in
  :data:`PROBES` to whether that probe fired."""
  return any(flags[p] for p in _probes(probes))


@dataclasses.dataclass(frozen=True)
class KDEScores:
  """The KDE probe's numbers per synthetic image (see the module docstring)."""
  log_density: np.ndarray  # (n, num_classes): under each class's real embeddings
  quantile: np.ndarray     # (n,) own-class density among the class's real images (leave-one-out)
  margin: np.ndarray       # (n,) own-class log density minus the largest other-class one
  robust_z: np.ndarray     # (n,) (median margin - margin) / (1.4826 MAD) over the SynSet

  def outliers(self, outlier_z: float) -> np.ndarray:
    return np.flatnonzero((self.margin < 0) & (self.robust_z >= outlier_z))

  def crowded_classes(self, labels, outlier_z: float, count: int) -> np.ndarray:
    """Classes holding at least ``count`` outlier images (an injection needs several)."""
    per_class = np.bincount(np.asarray(labels)[self.outliers(outlier_z)],
                            minlength=int(np.max(labels)) + 1)
    return np.flatnonzero(per_class >= count)


def kde_scores(syn_embeddings, syn_labels, real_embeddings, real_labels, *, num_classes: int,
               variance: float) -> KDEScores:
  """Each synthetic image's density under every class's real embeddings, margin and quantile.

  ``log_density[i, c]`` is the log of the mean Gaussian kernel between image i's
  embedding and class c's real embeddings (:func:`jaxdd.weighting.log_density`).
  ``quantile[i]`` is the fraction of the real images of i's label whose
  leave-one-out density is lower than i's (0: less dense than all of them).
  """
  syn_embeddings = np.asarray(syn_embeddings, np.float32)
  real_embeddings = np.asarray(real_embeddings, np.float32)
  syn_labels, real_labels = np.asarray(syn_labels), np.asarray(real_labels)
  n = len(syn_labels)
  log_f = np.zeros((n, num_classes), np.float32)
  quantile = np.zeros(n, np.float64)
  queries = jnp.asarray(syn_embeddings)
  for cls in range(num_classes):
    support = real_embeddings[real_labels == cls]
    if len(support) < 2:
      raise ValueError(f"class {cls} has {len(support)} real images; the KDE probe needs >= 2")
    z = jnp.asarray(support)
    log_f[:, cls] = np.asarray(weighting.log_density(queries, z, variance=variance))
    rows = np.flatnonzero(syn_labels == cls)
    if rows.size:
      m = len(support)
      # leave-one-out densities of the real images: remove the self term K(x, x) = 1
      self_f = np.exp(np.asarray(weighting.log_density(z, z, variance=variance), np.float64))
      loo = np.maximum(m * self_f - 1.0, 0.0) / (m - 1)
      with np.errstate(divide="ignore"):
        loo_log = np.sort(np.log(loo))
      quantile[rows] = np.searchsorted(loo_log, log_f[rows, cls].astype(np.float64),
                                       side="left") / m
  own = log_f[np.arange(n), syn_labels]
  others = np.where(np.eye(num_classes, dtype=bool)[syn_labels], -np.inf, log_f).max(axis=1)
  margin = (own - others).astype(np.float64)
  return KDEScores(log_f, quantile, margin, anomaly_index(margin))


@dataclasses.dataclass(frozen=True)
class AuditReport:
  """What :func:`audit` found; :meth:`format` prints it, :meth:`to_dict` saves it."""
  clean_accuracy: np.ndarray       # (M,) on the clean held-out images
  triggers: list[str]
  asr: np.ndarray                  # (M, triggers, classes)
  reversed: Reversed | None
  kde: KDEScores | None
  syn_labels: np.ndarray
  asr_threshold: float
  anomaly_threshold: float
  outlier_z: float
  model: str | None = None         # the architecture trained on the SynSet (its spec string)
  lift_threshold: float = LIFT_THRESHOLD
  verdict_probes: tuple = VERDICT_PROBES

  @property
  def too_weak(self) -> str | None:
    """A warning when the networks' clean accuracy is too low to judge (:data:`MIN_CLEAN_SHARE`
    of the way from chance to 100 %), else None."""
    chance = 1.0 / max(int(self.asr.shape[-1]), 1)
    floor = chance + MIN_CLEAN_SHARE * (1.0 - chance)
    acc = float(np.mean(self.clean_accuracy))
    if acc >= floor:
      return None
    return (f"the audit's networks reach {100 * acc:.1f} % clean accuracy, below "
            f"{100 * floor:.1f} % (chance {100 * chance:.0f} %): they have not learned the set as "
            "a victim's would, so the verdict is unreliable (flags are likely false alarms); "
            "audit with a longer --protocol, more --num-models or more --clean-images")

  @property
  def top_trigger(self) -> tuple[str, int, float]:
    mean = self.asr.mean(axis=0)
    j, t = np.unravel_index(np.argmax(mean), mean.shape)
    return self.triggers[j], int(t), float(mean[j, t])

  @property
  def top_lift(self) -> tuple[str, int, float] | None:
    return top_lift(self.asr, self.triggers)

  @property
  def trigger_flag(self) -> bool:
    return trigger_flagged(self.asr, self.triggers, asr_threshold=self.asr_threshold,
                           lift_threshold=self.lift_threshold)

  @property
  def cleanse_flag(self) -> bool:
    return self.reversed is not None and float(self.reversed.anomaly_index.max()) >= \
        self.anomaly_threshold

  @property
  def outliers(self) -> np.ndarray:
    if self.kde is None:
      return np.zeros((0,), np.int64)
    return self.kde.outliers(self.outlier_z)

  @property
  def kde_flag(self) -> bool:
    return self.kde is not None and self.kde.crowded_classes(
        self.syn_labels, self.outlier_z, OUTLIER_CLASS_COUNT).size > 0

  @property
  def suspicious(self) -> bool:
    return verdict({"triggers": self.trigger_flag, "cleanse": self.cleanse_flag,
                    "kde": self.kde_flag}, self.verdict_probes)

  @property
  def flagged_classes(self) -> dict[str, list[int]]:
    """The classes each probe fired on (empty where it did not): the targets of the flagged
    candidate-trigger pairs, the classes over Neural Cleanse's threshold, the classes holding
    :data:`OUTLIER_CLASS_COUNT` or more KDE outliers."""
    rev, kde = self.reversed, self.kde
    return {"triggers": trigger_flagged_classes(self.asr, self.triggers,
                                                asr_threshold=self.asr_threshold,
                                                lift_threshold=self.lift_threshold),
            "cleanse": [] if rev is None else
            [int(t) for t in np.flatnonzero(rev.anomaly_index >= self.anomaly_threshold)],
            "kde": [] if kde is None else
            [int(c) for c in kde.crowded_classes(self.syn_labels, self.outlier_z,
                                                  OUTLIER_CLASS_COUNT)]}

  @property
  def suspected_targets(self) -> list[int]:
    """The classes a probe of the verdict fired on: where a backdoor would send its inputs."""
    fired = self.flagged_classes
    return sorted({c for p in _probes(self.verdict_probes) for c in fired[p]})

  def _role(self, probe: str) -> str:
    return "" if probe in self.verdict_probes else " (advisory: not in the verdict)"

  def format(self) -> str:
    name, target, rate = self.top_trigger
    lines = [f"clean accuracy (held-out real images): {100 * self.clean_accuracy.mean():.1f} % "
             f"(mean of {len(self.clean_accuracy)} networks"
             + (f" {self.model}" if self.model else "") + " trained on the SynSet)",
             f"candidate triggers: highest ASR {100 * rate:.1f} % ({name} -> class {target})"
             + ("" if self.top_lift is None else
                "; highest lift over the target's median candidate "
                f"{100 * self.top_lift[2]:.1f} points ({self.top_lift[0]} -> class "
                f"{self.top_lift[1]})")
             + f"; flag at ASR >= {100 * self.asr_threshold:.0f} %"
             + ("" if self.top_lift is None else
                f" or lift >= {100 * self.lift_threshold:.0f} points")
             + f": {'FLAGGED' if self.trigger_flag else 'no'}{self._role('triggers')}"]
    if self.reversed is not None:
      r = self.reversed
      t = int(np.argmax(r.anomaly_index))
      lines.append(f"reverse-engineered triggers: mask l1 per class "
                   f"{' '.join(f'{v:.0f}' for v in r.mask_l1)} px; smallest: class {t} "
                   f"({r.mask_l1[t]:.1f} px, ASR {100 * r.asr[t]:.0f} %), anomaly index "
                   f"{r.anomaly_index[t]:.2f}; flag at >= {self.anomaly_threshold:g}: "
                   f"{'FLAGGED' if self.cleanse_flag else 'no'}{self._role('cleanse')}")
    if self.kde is not None:
      out = self.outliers
      shown = ", ".join(f"{i} (class {self.syn_labels[i]}, margin {self.kde.margin[i]:.1f})"
                        for i in out[:20])
      lines.append(f"KDE outliers (closer to another class's real images, >= {self.outlier_z:g} "
                   f"robust sds below the set's median margin {np.median(self.kde.margin):.1f}): "
                   f"{out.size} of {len(self.kde.margin)}"
                   + (f": images {shown}{' ...' if out.size > 20 else ''}" if out.size else "")
                   + f"; flag when one class holds >= {OUTLIER_CLASS_COUNT}: "
                   + f"{'FLAGGED' if self.kde_flag else 'no'}{self._role('kde')}")
    targets = self.suspected_targets
    if self.too_weak is not None:
      lines.append(f"WARNING: {self.too_weak}")
    lines.append(f"verdict: {'SUSPICIOUS' if self.suspicious else 'no backdoor found'} "
                 + (f"(suspected target class{'es' if len(targets) > 1 else ''} "
                    f"{', '.join(map(str, targets))}; " if targets else "(")
                 + f"by {' + '.join(self.verdict_probes)}; a clean verdict is no proof)")
    return "\n".join(lines)

  def to_dict(self) -> dict:
    name, target, rate = self.top_trigger
    out = {"model": self.model, "clean_accuracy": self.clean_accuracy.tolist(),
           "candidate_triggers": {"names": self.triggers,
                                  "asr_mean_over_networks": self.asr.mean(axis=0).tolist(),
                                  "top": {"trigger": name, "target": target, "asr": rate},
                                  "threshold": self.asr_threshold, "flag": self.trigger_flag},
           "verdict": "suspicious" if self.suspicious else "no backdoor found",
           "verdict_probes": list(self.verdict_probes),
           "warning": self.too_weak,
           "flagged_classes": self.flagged_classes,
           "suspected_targets": self.suspected_targets}
    top = self.top_lift
    if top is not None:
      out["candidate_triggers"]["top_lift"] = {"trigger": top[0], "target": top[1],
                                               "lift": top[2]}
      out["candidate_triggers"]["lift_threshold"] = self.lift_threshold
    if self.reversed is not None:
      r = self.reversed
      out["reverse_engineering"] = {"mask_l1": r.mask_l1.tolist(), "asr": r.asr.tolist(),
                                    "anomaly_index": r.anomaly_index.tolist(),
                                    "threshold": self.anomaly_threshold,
                                    "flag": self.cleanse_flag}
    if self.kde is not None:
      out["kde_outliers"] = {"quantile": self.kde.quantile.tolist(),
                             "margin": self.kde.margin.tolist(),
                             "robust_z": self.kde.robust_z.tolist(),
                             "threshold": self.outlier_z,
                             "images": self.outliers.tolist(),
                             "classes": self.syn_labels[self.outliers].tolist(),
                             "class_count": OUTLIER_CLASS_COUNT, "flag": self.kde_flag}
    return out


def _probes(names) -> tuple:
  """``"kde"`` or ``["triggers", "kde"]`` -> a tuple of probe names."""
  return (names,) if isinstance(names, str) else tuple(names)


def check_settings(*, num_models, cleanse_images, cleanse_steps, asr_threshold,
                   anomaly_threshold, outlier_z, lift_threshold=LIFT_THRESHOLD,
                   verdict_probes=VERDICT_PROBES) -> None:
  """Refuses audit settings out of range, before any work (the arguments of :func:`audit`)."""
  for name, v in (("num_models", num_models), ("cleanse_images", cleanse_images),
                  ("cleanse_steps", cleanse_steps)):
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
      raise ValueError(f"{name} must be a positive int, got {v!r}")
  if not 0 < asr_threshold <= 1:
    raise ValueError(f"asr_threshold must be in (0, 1], got {asr_threshold!r}")
  if not anomaly_threshold > 0:
    raise ValueError(f"anomaly_threshold must be > 0, got {anomaly_threshold!r}")
  if not outlier_z > 0:
    raise ValueError(f"outlier_z must be > 0, got {outlier_z!r}")
  if not 0 < lift_threshold <= 1:
    raise ValueError(f"lift_threshold must be in (0, 1], got {lift_threshold!r}")
  probes = _probes(verdict_probes)
  unknown = [p for p in probes if p not in PROBES]
  if unknown or not probes or len(set(probes)) != len(probes):
    raise ValueError(f"verdict_probes must name distinct probes among {PROBES}, got "
                     f"{verdict_probes!r}")


def audit(key: jax.Array, syn: SynSet, clean_images, clean_labels, *, mean, std,
          model: nn.Module, protocol="cpu300", num_models: int = 2,
          triggers: Sequence[attacks.Trigger] | None = None, cleanse: bool = True,
          cleanse_images: int = 128, cleanse_steps: int = 200, l1_weight: float = 1e-3,
          kde: KDEScores | None = None, asr_threshold: float = ASR_THRESHOLD,
          anomaly_threshold: float = ANOMALY_THRESHOLD,
          outlier_z: float = OUTLIER_Z, lift_threshold: float = LIFT_THRESHOLD,
          verdict_probes: Sequence[str] = VERDICT_PROBES, progress: bool = False) -> AuditReport:
  """Runs the probes on ``syn`` (see the module docstring).

  Args:
    key: typed PRNG key (network training, the reverse-engineering start).
    syn: the SynSet (normalised images, integer labels).
    clean_images, clean_labels: trusted clean real images (normalised like
      ``syn``): the first ``cleanse_images`` are the reverse-engineering batch,
      the rest measure every ASR and the clean accuracy (all of them when
      ``cleanse`` is off).
    model, protocol, num_models: the networks trained on ``syn``
      (:func:`jaxdd.train.train_models`).
    triggers: candidate triggers (default :func:`candidate_triggers`).
    kde: the KDE probe's :class:`KDEScores` (:func:`kde_scores`), or None to
      skip that probe.
    asr_threshold, lift_threshold, anomaly_threshold, outlier_z: the probes'
      thresholds (module docstring).
    verdict_probes: the probes whose flags make the verdict, among
      :data:`PROBES` (default :data:`VERDICT_PROBES`); the others are reported.
    progress: report every phase (the networks' epochs, the triggers measured, Neural
      Cleanse's steps; :mod:`jaxdd.progress`).
  """
  checks.check_key(key)
  check_settings(num_models=num_models, cleanse_images=cleanse_images,
                  cleanse_steps=cleanse_steps, asr_threshold=asr_threshold,
                  anomaly_threshold=anomaly_threshold, outlier_z=outlier_z,
                  lift_threshold=lift_threshold, verdict_probes=verdict_probes)
  clean_images = np.asarray(clean_images, np.float32)
  clean_labels = np.asarray(clean_labels)
  num_classes = int(model.num_classes)
  if cleanse and len(clean_labels) < cleanse_images + 10 * num_classes:
    raise ValueError(f"{len(clean_labels)} clean images are too few: the reverse engineering "
                     f"takes {cleanse_images} and at least {10 * num_classes} more are needed to "
                     "measure attack success; pass more, or a smaller cleanse_images")
  if progress:
    progress_lib.logger.info("audit: training %d networks on the SynSet (%s protocol)",
                             num_models, getattr(protocol, "name", protocol))
  k_train, k_nc = jax.random.split(key)
  images = jnp.asarray(np.asarray(syn.images, np.float32))
  labels = jnp.asarray(np.asarray(syn.labels, np.int32))
  variables, _ = train_lib.train_models(k_train, SynSet(images, labels), model=model,
                                        protocol=protocol, num_models=num_models,
                                        progress=progress)
  # every network's predictions in compiled blocks, one program for all of them
  stacked = jax.tree.map(lambda a: a[0], variables)  # the one learning rate
  params, state = train_lib.split_variables(stacked)
  task, prot = train_lib.standard_task(model), get_protocol(protocol)

  def predict(x):
    return np.asarray(eval_lib.predict(task, params, state, jnp.asarray(x), protocol=prot))
  split = cleanse_images if cleanse else 0
  held_x, held_y = clean_images[split:], clean_labels[split:]
  acc = np.mean(predict(held_x) == held_y[None], axis=1)
  triggers = list(candidate_triggers(clean_images.shape[1:]) if triggers is None else triggers)
  asr = trigger_asr(predict, held_x, held_y, triggers, num_classes=num_classes, mean=mean, std=std,
                    progress=progress)
  rev = None
  if cleanse:
    first = jax.tree.map(lambda a: a[0], stacked)  # Neural Cleanse inspects one network
    rev = reverse_engineer(k_nc, model, first, clean_images[:split], clean_labels[:split],
                           num_classes=num_classes, mean=mean, std=std, steps=cleanse_steps,
                           l1_weight=l1_weight, held_out=(held_x, held_y), progress=progress)
  return AuditReport(acc, [t.name for t in triggers], asr, rev,
                     kde, np.asarray(syn.labels), asr_threshold, anomaly_threshold, outlier_z,
                     lift_threshold=lift_threshold, verdict_probes=_probes(verdict_probes))

