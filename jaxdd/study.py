"""Results the way a paper's must be obtained: choices on validation data, several
distillation seeds, one test evaluation per reported setting.

Two stages, each resumable (every finished piece is a file that is reused):

* :func:`tune` distils every candidate setting (weighting knobs, ``lr_img``;
  the vanilla method's ``lr_img`` too) at a few seeds, evaluates each SynSet on
  the **validation** split of the same biased data with a short protocol, and
  applies a pre-registered rule (:func:`select`) to pick one setting per
  method. The test split is never loaded.
* :func:`final` distils the chosen settings (plus the pre-registered literal
  reading of the paper, plus baselines) at more seeds and evaluates each once
  on the **test** split with a long protocol; the same networks are scored on
  the validation split too, which confirms the choice under the long protocol.
  It adds the bias score of every SynSet (:func:`jaxdd.diagnostics.bias_score`)
  and writes ``table.json`` / ``table.md``.

The selection criterion is the accuracy on the validation split's
**bias-conflicting** samples, which reads the validation split's bias labels
as the debiasing literature does (LfF, DFA select on a bias-annotated
validation set). Overall validation accuracy would reward the bias: the
validation split has the training split's 95 % aligned samples.

A study directory::

    <root>/runs/<setting>-s<seed>-<digest>/   one distillation (config.json, synset/, ...)
        eval-valid-<protocol>.json          validation metrics (tune)
        eval-test-<protocol>.json           test metrics + validation scores (final)
        bias_score.json
    <root>/selection.json, selection.md     (tune)
    <root>/table.json, table.md             (final)
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Sequence

import jax.numpy as jnp
import numpy as np

from jaxdd import baselines, diagnostics, evaluate, models, pipeline, synset
from jaxdd import progress as progress_lib
from jaxdd import protocols
from jaxdd.metrics import METRICS
from jaxdd.structs import SynSet

__all__ = ["Setting", "knob_grid", "literal_setting", "tune", "select", "final", "format_table",
           "format_summary", "format_series", "format_selection"]

#: Knobs a weighting setting may change (RunConfig fields).
KNOBS = ("weighting", "kde_normalize", "kde_variance", "kde_temperature", "kde_scope", "kde_floor",
         "init", "real_sampling", "lr_img", "expert_weighting")


@dataclasses.dataclass(frozen=True)
class Setting:
  """A named set of RunConfig overrides (the weighting knobs and ``lr_img``)."""
  overrides: tuple[tuple[str, Any], ...]

  @classmethod
  def of(cls, **overrides) -> "Setting":
    unknown = set(overrides) - set(KNOBS)
    if unknown:
      raise ValueError(f"a Setting changes only {KNOBS}; got {sorted(unknown)}")
    return cls(tuple(sorted(overrides.items())))

  def apply(self, base: pipeline.RunConfig) -> pipeline.RunConfig:
    return base.replace(**dict(self.overrides))

  def name(self, base: pipeline.RunConfig) -> str:
    """E.g. ``dm lr=10`` or ``dm+kde power v=0.01 T=0.25 lr=10``."""
    c = self.apply(base)
    name = f"{pipeline.method_name(c)}"
    if c.weighting == "kde":
      name += f" {c.kde_normalize} v={c.kde_variance:g} T={c.kde_temperature:g}"
      if c.kde_scope != "batch":
        name += f" {c.kde_scope}"
      if c.kde_floor:
        name += f" floor={c.kde_floor:g}"
    if c.init != base.init:
      name += f" init={c.init}"
    if c.real_sampling != base.real_sampling:
      name += f" sampling={c.real_sampling}"
    if c.expert_weighting != base.expert_weighting and c.weighting != "none":
      name += f" experts={c.expert_weighting}"
    return name + f" lr={c.lr_img:g}"

  def to_dict(self) -> dict[str, Any]:
    return dict(self.overrides)


def knob_grid(base: pipeline.RunConfig) -> list[Setting]:
  """The pre-registered candidates of :func:`tune` around ``base``.

  Vanilla: ``lr_img`` in {0.3, 1, 3} x base. KDE: ``power`` weights with
  v in {0.01, 0.1, 1} x T in {0.1, 0.25, 1} at the base lr_img; ``softmax``
  with v = 0.01, T = 1; and the base weighting at lr_img 0.3x and 3x. Where the
  synthetic images start and how real batches are drawn: the base weighting with
  ``init='weighted'``, and with ``init='weighted'``, ``real_sampling='weighted'``
  and a density floor in {0, 0.01, 0.02, 0.05, 0.1} (RESULTS.md, "Paper-scale fidelity"; the
  best floor tracks the share of bias-conflicting images, which a user does not know).
  """
  if base.method == "mtt":
    return _mtt_grid(base)
  lr = base.lr_img
  grid = [Setting.of(weighting="none", lr_img=round(f * lr, 6)) for f in (0.3, 1.0, 3.0)]
  grid += [Setting.of(weighting="kde", kde_normalize="power", kde_variance=v, kde_temperature=t,
                      lr_img=lr) for v in (0.01, 0.1, 1.0) for t in (0.1, 0.25, 1.0)]
  grid.append(Setting.of(weighting="kde", kde_normalize="softmax", kde_variance=0.01,
                         kde_temperature=1.0, lr_img=lr))
  for f in (0.3, 3.0):
    grid.append(Setting.of(weighting="kde", kde_normalize=base.kde_normalize,
                           kde_variance=base.kde_variance, kde_temperature=base.kde_temperature,
                           lr_img=round(f * lr, 6)))
  incumbent = dict(weighting="kde", kde_normalize=base.kde_normalize,
                   kde_variance=base.kde_variance, kde_temperature=base.kde_temperature,
                   lr_img=lr)
  grid.append(Setting.of(**incumbent, init="weighted"))
  grid += [Setting.of(**incumbent, init="weighted", real_sampling="weighted", kde_floor=q)
           for q in (0.0, 0.01, 0.02, 0.05, 0.1)]
  return list(dict.fromkeys(grid))


def _mtt_grid(base: pipeline.RunConfig) -> list[Setting]:
  """Trajectory matching's candidates: its weighting acts on the experts (each KDE candidate
  trains its own buffer), so the grid is smaller than DM's.

  Vanilla: ``lr_img`` in {0.1, 1, 10} x base (MTT's coarse 10^n grid). KDE over whole
  classes: ``power`` weights with v in {0.01, 0.1} x T in {0.25, 1}; the base weighting at
  lr_img 0.1x and 10x, with weighted cross-entropy instead of the weighted sampler, with
  ``init='weighted'``, and with a density floor in {0.02, 0.05}.
  """
  lr = base.lr_img
  grid = [Setting.of(weighting="none", lr_img=round(f * lr, 6)) for f in (0.1, 1.0, 10.0)]
  grid += [Setting.of(weighting="kde", kde_normalize="power", kde_variance=v,
                      kde_temperature=t, lr_img=lr) for v in (0.01, 0.1) for t in (0.25, 1.0)]
  incumbent = dict(weighting="kde", kde_normalize=base.kde_normalize,
                   kde_variance=base.kde_variance, kde_temperature=base.kde_temperature)
  grid += [Setting.of(**incumbent, lr_img=round(f * lr, 6)) for f in (0.1, 1.0, 10.0)]
  grid.append(Setting.of(**incumbent, lr_img=lr, expert_weighting="loss"))
  grid.append(Setting.of(**incumbent, lr_img=lr, init="weighted"))
  grid += [Setting.of(**incumbent, lr_img=lr, kde_floor=q) for q in (0.02, 0.05)]
  return list(dict.fromkeys(grid))


def literal_setting(base: pipeline.RunConfig) -> Setting:
  """The paper read literally: w = normalised 1/f (``power`` with T = 1), v = 0.01."""
  return Setting.of(weighting="kde", kde_normalize="power", kde_variance=0.01,
                    kde_temperature=1.0, lr_img=base.lr_img)


def default_setting(base: pipeline.RunConfig, weighting: str) -> Setting:
  """The library default for ``weighting`` (the incumbent :func:`select` keeps on a tie)."""
  if weighting == "none":
    return Setting.of(weighting="none", lr_img=base.lr_img)
  return Setting.of(weighting="kde", kde_normalize=base.kde_normalize,
                    kde_variance=base.kde_variance, kde_temperature=base.kde_temperature,
                    lr_img=base.lr_img)


# ---------------------------------------------------------------------------- pieces



def run_dir(root: str, config: pipeline.RunConfig) -> str:
  slug = pipeline.method_name(config).replace("+", "_")
  return os.path.join(root, "runs", f"{slug}-s{config.seed}-{config.distill_digest()[:10]}")


def _load_json(path: str) -> dict | None:
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def _conflicting_select(batch) -> str:
  """``conflicting`` when the batch has bias-conflicting samples, else ``overall``."""
  return "conflicting" if batch.aligned is not None and not np.asarray(batch.aligned).all() \
      else "overall"


def evaluate_cached(config: pipeline.RunConfig, workdir: str, run_data: pipeline.RunData,
                    syn: SynSet, *, split: str, protocol: protocols.Protocol, num_models: int,
                    progress: bool = False) -> dict:
  """Evaluates ``syn`` once on ``split`` (``valid`` or ``test``); reuses the file after.

  ``test`` also scores the same networks on the validation split
  (``valid_scores``: bias-conflicting accuracy per network).
  """
  path = os.path.join(workdir, f"eval-{split}-{protocol.name}.json")
  cached = _load_json(path)
  if cached is not None and cached["result"]["num_models"] == num_models:
    return cached
  model = models.get(config.eval_model, num_classes=run_data.num_classes)
  syn = SynSet(jnp.asarray(syn.images), jnp.asarray(syn.labels))
  k_eval = pipeline.run_keys(config)[2]
  valid = run_data.batch(run_data.valid)
  if split == "valid":
    result = evaluate.evaluate_synset(k_eval, syn, valid, model=model, protocol=protocol,
                                      num_models=num_models, progress=progress)
  elif split == "test":
    result = evaluate.evaluate_synset(k_eval, syn, run_data.batch(run_data.test), model=model,
                                      protocol=protocol, num_models=num_models, valid=valid,
                                      select_on=_conflicting_select(valid), progress=progress)
  else:
    raise ValueError(f"split must be 'valid' or 'test', got {split!r}")
  summary = result.summary()
  summary.update(split=split, method=pipeline.method_name(config), config=config.to_dict())
  synset.atomic_write_json(path, summary)
  return summary


def bias_score_cached(config: pipeline.RunConfig, workdir: str, run_data: pipeline.RunData,
                      syn: SynSet, classifiers: dict) -> dict:
  """:func:`jaxdd.diagnostics.bias_score` of ``syn``, written to ``bias_score.json``.

  The bias-attribute classifier is trained once per training set (the seed)
  and kept in ``classifiers``.
  """
  path = os.path.join(workdir, "bias_score.json")
  cached = _load_json(path)
  if cached is not None:
    return cached
  if config.seed not in classifiers:
    classifiers[config.seed] = pipeline.bias_classifier(config, run_data)
  report = diagnostics.bias_score(classifiers[config.seed], syn.images, syn.labels)
  synset.atomic_write_json(path, report)
  return report


def _per_model(summary: dict, metric: str) -> np.ndarray:
  return np.asarray(summary["result"]["per_model"][metric], float)


# ---------------------------------------------------------------------------- selection


def criterion_noise(p: float, n: int) -> float:
  """Binomial standard error of an accuracy ``p`` measured on ``n`` samples."""
  return math.sqrt(max(p * (1 - p), 1e-12) / max(n, 1))


def select(scores: dict[str, np.ndarray], incumbent: str, num_samples: int) -> dict[str, Any]:
  """The pre-registered selection rule of :func:`tune`.

  Args:
    scores: setting name -> (seeds, networks) validation criterion values of
      one method (e.g. all ``dm+kde`` candidates).
    incumbent: the library default among them.
    num_samples: validation samples behind each seed's criterion (e.g. the
      bias-conflicting validation images), summed over seeds by this function.

  The candidate with the best mean replaces the incumbent only if it is better
  on **every** seed and by more than twice the standard error of the
  difference (binomial noise of the criterion on ``num_samples`` images per
  seed); otherwise the incumbent stays. Returns ``{"chosen", "best", "margin",
  "noise", "wins_every_seed", "reason"}``.
  """
  if incumbent not in scores:
    raise ValueError(f"the incumbent {incumbent!r} is not among the candidates {sorted(scores)}")
  if not all(np.isfinite(np.asarray(v, float)).all() for v in scores.values()):
    raise ValueError("a validation criterion is NaN: the validation split has no "
                     "bias-conflicting samples; use a larger valid_fraction or another dataset")
  means = {k: float(np.mean(v)) for k, v in scores.items()}
  best = max(means, key=lambda k: (means[k], k == incumbent))
  n = num_samples * np.asarray(scores[incumbent]).shape[0]
  noise = math.hypot(criterion_noise(means[best], n), criterion_noise(means[incumbent], n))
  margin = means[best] - means[incumbent]
  per_seed_best = np.asarray(scores[best]).mean(-1)
  per_seed_inc = np.asarray(scores[incumbent]).mean(-1)
  every = bool(np.all(per_seed_best > per_seed_inc))
  if best == incumbent:
    chosen, reason = incumbent, "the incumbent has the best validation criterion"
  elif every and margin > 2 * noise:
    chosen, reason = best, (f"better on every seed and by {100 * margin:.1f} points > "
                            f"2 x noise ({100 * 2 * noise:.1f})")
  else:
    chosen, reason = incumbent, (f"{best} is ahead by {100 * margin:.1f} points, "
                                 + ("not on every seed" if not every else
                                    f"within 2 x noise ({100 * 2 * noise:.1f})")
                                 + "; the incumbent stays")
  return {"chosen": chosen, "best": best, "incumbent": incumbent, "margin": margin,
          "noise": noise, "wins_every_seed": every, "reason": reason}


def _distilled(config, root, run_data, progress) -> tuple[str, SynSet]:
  workdir = run_dir(root, config)
  syn = pipeline.distill_stage(config, workdir, run_data=run_data, progress=progress)
  return workdir, syn


def distil_groups(configs, root: str, run_data: pipeline.RunData, *,
                  progress: bool = True) -> int:
  """Distils, in one program per group, the runs that differ only in runtime knobs.

  Candidates of a seed that have not started yet and share everything but ``lr_img``
  and the KDE variance and temperature (:func:`jaxdd.pipeline.group_key`) run as one
  group (:func:`jaxdd.pipeline.distill_group`); the others are left to
  :func:`jaxdd.pipeline.distill_stage`, which then finds each group's SynSets.
  Returns the number of runs distilled in groups.
  """
  groups: dict[str, dict[str, pipeline.RunConfig]] = {}
  for config in configs:
    workdir = run_dir(root, config)
    if pipeline.groupable(config) and pipeline._fresh(workdir):
      groups.setdefault(pipeline.group_key(config), {})[workdir] = config
  done = 0
  for members in groups.values():
    if len(members) < 2:
      continue
    progress_lib.logger.info("distilling %d runs that differ only in lr_img and the KDE knobs "
                             "in one program", len(members))
    pipeline.distill_group(list(members.values()), list(members), run_data=run_data,
                           progress=progress)
    done += len(members)
  return done


@pipeline.under_policy
def tune(base: pipeline.RunConfig, root: str, *, seeds: Sequence[int] = (0, 1),
         candidates: Sequence[Setting] | None = None, protocol: str | protocols.Protocol = "cpu",
         num_models: int = 3, progress: bool = True, show: bool | None = None) -> dict:
  """Distils every candidate at every seed and selects on validation data only.

  Writes ``<root>/selection.json`` (every candidate's per-seed, per-network
  criterion, the noise and the decision per method) and ``selection.md``.
  Returns the selection dict; ``["chosen"]`` maps ``none``/``kde`` to the
  chosen :class:`Setting`'s overrides.
  """
  protocol = protocols.get_protocol(protocol)
  candidates = list(candidates if candidates is not None else knob_grid(base))
  if not candidates or not seeds:
    raise ValueError("tune needs at least one candidate and one seed")
  incumbents = {w: default_setting(base, w) for w in ("none", "kde")}
  for w, s in incumbents.items():
    if any(c.apply(base).weighting == w for c in candidates) and s not in candidates:
      candidates.append(s)
  rows: dict[str, dict[str, Any]] = {}
  num_conflicting = 0
  for seed in seeds:
    seed_base = base.replace(seed=seed)
    run_data = pipeline.RunData(seed_base)
    num_conflicting += int((~np.asarray(run_data.valid.aligned)).sum())
    distil_groups([cand.apply(seed_base) for cand in candidates], root, run_data,
                  progress=progress)
    for i, cand in enumerate(candidates):
      config = cand.apply(seed_base)
      name = cand.name(base)
      progress_lib.logger.info("tune seed %d candidate %d/%d: %s", seed, i + 1, len(candidates),
                               name)
      workdir, syn = _distilled(config, root, run_data, progress)
      s = evaluate_cached(config, workdir, run_data, syn, split="valid", protocol=protocol,
                          num_models=num_models)
      row = rows.setdefault(name, {"setting": cand.to_dict(), "weighting": config.weighting,
                                   "seeds": [], "criterion": [], "overall": [],
                                   "worst_group": [], "runs": []})
      row["seeds"].append(seed)
      row["criterion"].append(_per_model(s, "conflicting").tolist())
      row["overall"].append(_per_model(s, "overall").tolist())
      row["worst_group"].append(_per_model(s, "worst_group").tolist())
      row["runs"].append(os.path.relpath(workdir, root))
  per_seed = num_conflicting // len(seeds)
  decisions = {}
  for w, inc in incumbents.items():
    scores = {k: np.asarray(r["criterion"]) for k, r in rows.items() if r["weighting"] == w}
    if scores:
      decisions[w] = select(scores, inc.name(base), per_seed)
  chosen = {w: rows[d["chosen"]]["setting"] for w, d in decisions.items()}
  out = {"base": base.to_dict(), "protocol": protocol.to_dict(), "num_models": num_models,
         "seeds": list(seeds), "criterion": "accuracy on the validation split's bias-conflicting "
                                            "samples",
         "valid_conflicting_per_seed": per_seed, "candidates": rows, "decisions": decisions,
         "chosen": chosen}
  synset.atomic_write_json(os.path.join(root, "selection.json"), out)
  synset.atomic_write_bytes(os.path.join(root, "selection.md"),
                            (format_selection(out) + "\n").encode())
  if progress if show is None else show:
    print(format_selection(out))
  return out


def format_selection(sel: dict) -> str:
  """The selection table (validation numbers only) and the decisions, as markdown."""
  p = sel["protocol"]
  lines = [f"Validation criterion: {sel['criterion']} ({sel['valid_conflicting_per_seed']} per "
           f"seed); protocol {p['name']} ({p['num_epochs']} epochs), {sel['num_models']} networks "
           f"per SynSet, seeds {sel['seeds']}. Mean ± sample std over seeds of each seed's mean over "
           "its networks, in %.",
           "",
           "| setting | valid conflicting | per seed | valid overall | valid worst group |",
           "|---|---|---|---|---|"]
  for name, r in sorted(sel["candidates"].items(),
                        key=lambda kv: (kv[1]["weighting"], -np.mean(kv[1]["criterion"]))):
    crit = np.asarray(r["criterion"]).mean(-1)
    cells = [_pm(np.asarray(r[m]).mean(-1)) for m in ("criterion", "overall", "worst_group")]
    mark = " **(chosen)**" if any(d["chosen"] == name for d in sel["decisions"].values()) else ""
    lines.append(f"| {name}{mark} | {cells[0]} | {' / '.join(f'{100 * c:.1f}' for c in crit)} "
                 f"| {cells[1]} | {cells[2]} |")
  lines.append("")
  for w, d in sel["decisions"].items():
    lines.append(f"- {'vanilla' if w == 'none' else 'KDE'}: {d['chosen']} — {d['reason']}.")
  return "\n".join(lines)


def format_pm(values, *, ddof: int = 1, scale: float = 100.0, signed: bool = False) -> str:
  """``"mean ± std"`` of the values that are not None or NaN, times ``scale``, one decimal.

  The one formatter of every results table (study tables, experiments/). ``ddof`` 1
  is the sample std over seeds, 0 the reference's convention over networks; a
  single value gets ± 0.0; no values give "–". NaN is an accuracy over an empty
  group (bias-aligned accuracy on a test split without aligned images), so it
  counts as no value. ``signed`` prints the mean's sign (paired differences).

  Example:
    >>> format_pm([0.5, 0.7]), format_pm([0.02, -0.04], signed=True), format_pm([None])
    ('60.0 ± 14.1', '-1.0 ± 4.2', '–')
    >>> format_pm([float("nan"), float("nan")])
    '–'
  """
  values = np.asarray([v for v in values if v is not None and not np.isnan(v)], float)
  if not values.size:
    return "–"
  std = values.std(ddof=ddof) if values.size > ddof else 0.0
  mean = f"{scale * values.mean():+.1f}" if signed else f"{scale * values.mean():.1f}"
  return f"{mean} ± {scale * std:.1f}"


def _pm(values, ddof: int = 1) -> str:
  return format_pm(values, ddof=ddof)


# ---------------------------------------------------------------------------- final table


def _refuse_other_table(root: str, identity: dict) -> None:
  """A ``table.json`` made with other settings is never overwritten (checked before work)."""
  path = os.path.join(root, "table.json")
  if not os.path.exists(path):
    return
  try:
    with open(path) as f:
      stored = json.load(f)
  except (OSError, ValueError):
    stored = {}
  differ = [k for k, v in identity.items()
            if json.loads(json.dumps(stored.get(k))) != json.loads(json.dumps(v))]
  if differ:
    raise ValueError(f"{path} holds a table made with other settings ({', '.join(differ)} "
                     "differ); use another --workdir, or delete table.json and table.md to "
                     "replace it")


@pipeline.under_policy
def final(base: pipeline.RunConfig, root: str, *, settings: dict[str, Setting],
          seeds: Sequence[int] = (0, 1, 2), protocol: str | protocols.Protocol = "cpu300",
          num_models: int = 5, with_random: bool = True, full_models: int = 3,
          progress: bool = True, show: bool | None = None) -> dict:
  """Distils (or reuses) each named setting at each seed and evaluates it once on test.

  Args:
    base: the preset config (dataset, ratio, IPC, method, ...).
    root: the study directory (shared with :func:`tune`, so its SynSets are reused).
    settings: row name -> :class:`Setting`; the row named ``vanilla`` is the
      reference of the paired differences.
    seeds: distillation seeds (each also draws the dataset's colour noise).
    protocol: the evaluation protocol of the table.
    num_models: evaluation networks per SynSet.
    with_random: add the random-real-subset row (same IPC, per seed).
    full_models: networks for the full-training-set row (first seed only,
      trained for as many SGD steps as the protocol gives a SynSet); 0 skips it.

  Writes ``table.json`` and ``table.md`` under ``root``; returns the table dict.
  """
  protocol = protocols.get_protocol(protocol)
  identity = {"base": base.to_dict(), "protocol": protocol.to_dict(), "num_models": num_models,
              "seeds": list(seeds),
              "settings": {k: [list(kv) for kv in v.overrides] for k, v in settings.items()}}
  _refuse_other_table(root, identity)
  rows: dict[str, dict[str, Any]] = {}

  def add(name, seed, summary, score, extra=None):
    row = rows.setdefault(name, {"seeds": [], "per_seed": {m: [] for m in METRICS},
                                 "valid_conflicting": [], "bias_aligned_fraction": [],
                                 "per_model": []})
    row["seeds"].append(seed)
    for m in METRICS:
      row["per_seed"][m].append(float(np.mean(_per_model(summary, m))))
    row["per_model"].append({m: _per_model(summary, m).tolist() for m in METRICS})
    vs = summary["result"].get("valid_scores")
    row["valid_conflicting"].append(None if vs is None else float(np.mean(vs)))
    # 'overall' when the validation split has no bias-conflicting image (e.g. CMNIST 1 %).
    row["valid_metric"] = summary["result"].get("select_on") or "conflicting"
    row["bias_aligned_fraction"].append(None if score is None else score["aligned_fraction"])
    if extra:
      row.update(extra)

  train_fraction = None
  classifiers: dict = {}
  reference: dict[str, list] = {"bias_aligned_fraction": [], "true_aligned_fraction": []}
  for seed in seeds:
    seed_base = base.replace(seed=seed)
    run_data = pipeline.RunData(seed_base)
    train_fraction = float(np.asarray(run_data.train.aligned).mean())
    # The bias score's yardstick: the same classifier on held-out real images (the
    # validation split, composed like the training set), whose true share is known.
    valid = run_data.valid
    workdir = os.path.join(root, "runs", f"valid-reference-s{seed}")
    os.makedirs(workdir, exist_ok=True)
    score = bias_score_cached(seed_base, workdir, run_data,
                              SynSet(run_data.normalized(valid), valid.labels), classifiers)
    reference["bias_aligned_fraction"].append(score["aligned_fraction"])
    reference["true_aligned_fraction"].append(float(np.asarray(valid.aligned).mean()))
    for name, setting in settings.items():
      config = setting.apply(seed_base)
      progress_lib.logger.info("final seed %d: %s", seed, name)
      workdir, syn = _distilled(config, root, run_data, progress)
      summary = evaluate_cached(config, workdir, run_data, syn, split="test", protocol=protocol,
                                num_models=num_models, progress=progress)
      score = bias_score_cached(config, workdir, run_data, syn, classifiers)
      add(name, seed, summary, score, {"setting": setting.to_dict()})
    if with_random:
      workdir = os.path.join(root, "runs", f"random-s{seed}-ipc{base.ipc}")
      os.makedirs(workdir, exist_ok=True)
      k_sel = pipeline.baseline_keys(seed_base)[0]  # the subset `jaxdd baselines` draws
      train = run_data.train
      idx = baselines.random_subset_indices(k_sel, train.labels, ipc=base.ipc)
      syn = baselines.take(run_data.normalized(train), train.labels, idx)
      config = seed_base.replace(weighting="none")
      summary = evaluate_cached(config, workdir, run_data, syn, split="test", protocol=protocol,
                                num_models=num_models, progress=progress)
      score = bias_score_cached(config, workdir, run_data, syn, classifiers)
      add("random real subset", seed, summary, score)
    if full_models and seed == seeds[0]:
      train = run_data.train
      steps = protocol.num_epochs * -(-base.ipc * run_data.num_classes // protocol.batch_size)
      epochs = max(1, round(steps / -(-len(train.labels) // protocol.batch_size)))
      full_protocol = protocol.replace(name=f"{protocol.name}-full", epochs=epochs - 1)
      workdir = os.path.join(root, "runs", f"full-s{seed}")
      os.makedirs(workdir, exist_ok=True)
      syn = baselines.full_dataset(run_data.normalized(train), train.labels)
      summary = evaluate_cached(seed_base.replace(weighting="none"), workdir, run_data, syn,
                                split="test", protocol=full_protocol, num_models=full_models,
                                progress=progress)
      add("full biased training set", seed, summary, None,
          {"epochs": full_protocol.num_epochs, "train_aligned_fraction": train_fraction})
  out = {**identity, "train_aligned_fraction": train_fraction,
         "reference": reference, "rows": rows,
         "paired": _paired(rows)}
  synset.atomic_write_json(os.path.join(root, "table.json"), out)
  synset.atomic_write_bytes(os.path.join(root, "table.md"), (format_table(out) + "\n").encode())
  if progress if show is None else show:
    print(format_table(out))
  return out


def _paired(rows: dict) -> dict:
  """Per-seed differences of every row against the ``vanilla`` row (same seeds)."""
  if "vanilla" not in rows:
    return {}
  ref = rows["vanilla"]
  out = {}
  for name, row in rows.items():
    if name == "vanilla" or row["seeds"] != ref["seeds"]:
      continue
    out[name] = {m: (np.asarray(row["per_seed"][m]) - np.asarray(ref["per_seed"][m])).tolist()
                 for m in METRICS}
  return out


#: The order of the table's rows (JSON files keep their keys sorted).
ROW_ORDER = ("vanilla", "kde (selected on valid)", "kde (library default)",
             "kde literal (power, T = 1)", "random real subset", "full biased training set")


def row_order(rows) -> list[str]:
  """Row names in :data:`ROW_ORDER`, others after them in their given order."""
  known = [n for n in ROW_ORDER if n in rows]
  return known + [n for n in rows if n not in ROW_ORDER]


def _metric_cell(row: dict, metric: str) -> str:
  """A test accuracy of a table row: over seeds, or over networks for one seed."""
  if len(row["seeds"]) > 1:
    return _pm(row["per_seed"][metric])
  return _pm(row["per_model"][0][metric], ddof=0)


def _accuracy_cells(row: dict) -> list[str]:
  """The four test accuracies of a table row (:func:`_metric_cell`)."""
  return [_metric_cell(row, m) for m in METRICS]


def format_summary(table: dict) -> str:
  """The README form of :func:`format_table`: accuracies and the bias score, no validation."""
  lines = ["| row | overall | bias-aligned | bias-conflicting | worst group | "
           "bias score (aligned %) |",
           "|---|---|---|---|---|---|"]
  for name in row_order(table["rows"]):
    r = table["rows"][name]
    cells = _accuracy_cells(r) + [_pm(r["bias_aligned_fraction"])]
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  lines += _reference_rows(table, 6)
  return "\n".join(lines)


def _reference_rows(table: dict, columns: int) -> list[str]:
  """The bias score's yardsticks: the training set's true aligned share and, when
  measured, what the classifier reads on held-out real images of known share."""
  pad = " |" * (columns - 2)
  rows = [f"| *the training set itself (true share)* |{pad} {100 * table['train_aligned_fraction']:.1f} |"]
  ref = table.get("reference")
  if ref:
    true = 100 * float(np.mean(ref["true_aligned_fraction"]))
    rows.append(f"| *held-out real images ({true:.1f} % aligned), as the classifier reads them* |"
                f"{pad} {_pm(ref['bias_aligned_fraction'])} |")
  return rows


def _valid_metric(table: dict) -> str:
  """What the validation column measured: ``conflicting``, or ``overall`` when no row could."""
  metrics = {r.get("valid_metric", "conflicting") for r in table["rows"].values()}
  return "conflicting" if metrics == {"conflicting"} else "overall"


def format_table(table: dict) -> str:
  """The final table as markdown (accuracies and the bias score, in %)."""
  b, p = table["base"], table["protocol"]
  # Biased-DD's sets read the ratio argument as the bias-aligned fraction (jaxdd.data).
  ratio = "aligned fraction" if b["dataset"].endswith("_dd") else "conflict ratio"
  lines = [f"{b['dataset']}, {ratio} {b['conflict_ratio']}, IPC {b['ipc']}, preset "
           f"{b['preset']}, method {b['method']}; test split, protocol {p['name']} "
           f"({p['num_epochs']} epochs), {table['num_models']} networks per SynSet, seeds "
           f"{table['seeds']}. Mean ± sample std over seeds of each seed's mean over its networks "
           "(rows with one seed: mean ± std over its networks). Bias-aligned fraction of the training set: "
           f"{100 * table['train_aligned_fraction']:.1f} %.",
           "",
           "| row | overall | bias-aligned | bias-conflicting | worst group | "
           f"bias score (aligned %) | valid {_valid_metric(table)} |",
           "|---|---|---|---|---|---|---|"]
  for name in row_order(table["rows"]):
    r = table["rows"][name]
    cells = _accuracy_cells(r) + [_pm(r["bias_aligned_fraction"]), _pm(r["valid_conflicting"])]
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  lines += [row + " |" for row in _reference_rows(table, 6)]
  if table["rows"] and all(np.isnan(np.asarray(r["per_seed"]["aligned"], float)).all()
                           for r in table["rows"].values()):
    lines += ["", "The test split holds no bias-aligned image, so bias-aligned accuracy is "
              "undefined (–)."]
  if _valid_metric(table) != "conflicting":
    lines += ["", "The validation split holds no bias-conflicting image at this ratio, so the last "
              "column is overall validation accuracy (all of it bias-aligned)."]
  if table["paired"]:
    lines += ["", "Paired differences against `vanilla` (same seeds), mean ± std over seeds, "
              "in points:", "", "| row | overall | bias-aligned | bias-conflicting | worst group |",
              "|---|---|---|---|---|"]
    for name in row_order(table["paired"]):
      d = table["paired"][name]
      lines.append(f"| {name} − vanilla | "
                   + " | ".join(format_pm(d[m], signed=True) for m in METRICS) + " |")
  return "\n".join(lines)


def format_series(tables, *, metric: str = "conflicting") -> str:
  """Final tables of one setting at several ratios (e.g. Biased-DD's CMNIST-DD at each aligned
  fraction), one line per table in ratio order: each row's test ``metric`` (as
  :func:`format_table` gives it), the paired difference of every other row from ``vanilla``
  and the bias score, in %.

  Example:
    >>> row = lambda acc, score: {"seeds": [0, 1], "per_seed": {"conflicting": acc},
    ...                           "bias_aligned_fraction": score}
    >>> t = {"base": {"dataset": "cmnist_dd", "conflict_ratio": 0.5}, "seeds": [0, 1],
    ...      "rows": {"vanilla": row([0.2, 0.4], [0.9, 0.9]),
    ...               "kde": row([0.6, 0.6], [0.3, 0.5])},
    ...      "paired": {"kde": {"conflicting": [0.4, 0.2]}}}
    >>> print(format_series([t]))
    | aligned fraction | seeds | vanilla | kde | kde − vanilla | bias score: vanilla | bias score: kde |
    |---|---|---|---|---|---|---|
    | 0.5 | 2 | 30.0 ± 14.1 | 60.0 ± 0.0 | +30.0 ± 14.1 | 90.0 ± 0.0 | 40.0 ± 14.1 |
  """
  tables = sorted(tables, key=lambda t: t["base"]["conflict_ratio"])
  if not tables:
    return ""
  names = row_order({n: None for t in tables for n in t["rows"]})
  others = [n for n in names if n != "vanilla" and any(n in t["paired"] for t in tables)]
  scored = [n for n in names if any(n in t["rows"] and any(
      v is not None for v in t["rows"][n].get("bias_aligned_fraction", [None])) for t in tables)]
  ratio = ("aligned fraction" if tables[0]["base"]["dataset"].endswith("_dd")
           else "conflict ratio")
  head = ([ratio, "seeds"] + names + [f"{n} − vanilla" for n in others]
          + [f"bias score: {n}" for n in scored])
  lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
  for t in tables:
    rows, paired = t["rows"], t["paired"]
    cells = [f"{t['base']['conflict_ratio']:g}", str(len(t["seeds"]))]
    cells += [_metric_cell(rows[n], metric) if n in rows else "" for n in names]
    cells += [format_pm(paired[n][metric], signed=True) if n in paired else "" for n in others]
    cells += [format_pm(rows[n].get("bias_aligned_fraction", [])) if n in rows else ""
              for n in scored]
    lines.append("| " + " | ".join(cells) + " |")
  single = [n for n in names if any(n in t["rows"] and len(t["rows"][n]["seeds"]) == 1
                                     and len(t["seeds"]) > 1 for t in tables)]
  if single:
    lines += ["", f"Mean ± sample std over seeds; {', '.join(single)}: one seed, mean ± std over "
              "its networks."]
  return "\n".join(lines)


def format_methods(tables, *, rows=("vanilla", "kde (selected on valid)")) -> str:
  """Final tables of several objectives (DM, CFM, ...) and datasets, side by side: one line
  per (table, row) with the test accuracies, the bias score and each row's paired
  bias-conflicting difference from its own table's ``vanilla``, in %.

  Example:
    >>> row = lambda acc: {"seeds": [0, 1], "per_seed": {
    ...     "overall": acc, "aligned": [0.9, 0.9], "conflicting": acc},
    ...     "bias_aligned_fraction": [0.5, 0.5]}
    >>> t = {"base": {"dataset": "cmnist", "conflict_ratio": 0.05, "method": "cfm"},
    ...      "seeds": [0, 1], "num_models": 3,
    ...      "rows": {"vanilla": row([0.2, 0.4]), "kde": row([0.6, 0.6])},
    ...      "paired": {"kde": {"conflicting": [0.4, 0.2]}}}
    >>> print(format_methods([t], rows=("vanilla", "kde")))
    | dataset | objective | row | seeds × networks | overall | bias-aligned | bias-conflicting | bias score (aligned %) | − vanilla, conflicting (paired) |
    |---|---|---|---|---|---|---|---|---|
    | cmnist 0.05 | CFM | vanilla | 2 × 3 | 30.0 ± 14.1 | 90.0 ± 0.0 | 30.0 ± 14.1 | 50.0 ± 0.0 |  |
    | cmnist 0.05 | CFM | kde | 2 × 3 | 60.0 ± 0.0 | 90.0 ± 0.0 | 60.0 ± 0.0 | 50.0 ± 0.0 | +30.0 ± 14.1 |
  """
  head = ["dataset", "objective", "row", "seeds × networks", "overall", "bias-aligned",
          "bias-conflicting", "bias score (aligned %)", "− vanilla, conflicting (paired)"]
  lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
  for t in tables:
    base = t["base"]
    data_name = f"{base['dataset']} {base['conflict_ratio']:g}"
    for name in rows:
      if name not in t["rows"]:
        continue
      r = t["rows"][name]
      diff = (format_pm(t["paired"][name]["conflicting"], signed=True)
              if name in t.get("paired", {}) else "")
      cells = [data_name, base["method"].upper(), name,
               f"{len(r['seeds'])} × {t['num_models']}",
               _metric_cell(r, "overall"), _metric_cell(r, "aligned"),
               _metric_cell(r, "conflicting"), _pm(r["bias_aligned_fraction"]), diff]
      lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def settings_from_selection(selection: dict, base: pipeline.RunConfig) -> dict[str, Setting]:
  """The rows of :func:`final` from a :func:`tune` result: the chosen vanilla and
  KDE settings, plus the library default and the literal reading when they differ."""
  chosen = {w: Setting.of(**s) for w, s in selection["chosen"].items()}
  out = {}
  if "none" in chosen:
    out["vanilla"] = chosen["none"]
  if "kde" in chosen:
    out["kde (selected on valid)"] = chosen["kde"]
  default = default_setting(base, "kde")
  if default not in out.values():
    out["kde (library default)"] = default
  literal = literal_setting(base)
  if literal not in out.values():
    out["kde literal (power, T = 1)"] = literal
  return out
