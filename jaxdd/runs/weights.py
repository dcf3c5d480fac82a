"""How a run weighs its real samples: the glue from a RunConfig to :mod:`jaxdd.weighting`.

Which densities a run needs (:func:`run_log_density`), its whole-class weights
(:func:`whole_class_weights`), what it writes to ``weights.json``
(:func:`weight_diagnostics`) and the weights table of ``comparison.md``
(:func:`format_weight_summary`).
"""
from __future__ import annotations

import os

import jax
import numpy as np

from jaxdd import plots, weighting
from jaxdd.config import RunConfig
from jaxdd.runs import files, rundata
from jaxdd.runs.stage_config import kde_config


def run_log_density(config: RunConfig, run_data: rundata.RunData,
                    embeddings: np.ndarray | None) -> np.ndarray | None:
  """The whole-class log densities a run needs, or None.

  KDE runs need them for scope 'class' and for weighted initialisation or
  sampling (which draw in proportion to whole-class weights); oracle runs
  always (the group shares of :func:`jaxdd.weighting.oracle_log_density`).
  """
  train, nc = run_data.train, run_data.num_classes
  if config.weighting == "oracle":
    return weighting.oracle_log_density(train.labels, train.bias, num_classes=nc)
  if config.weighting == "kde" and (config.kde_scope == "class" or config.init == "weighted"
                                    or config.real_sampling == "weighted"):
    return np.asarray(weighting.class_log_density(embeddings, train.labels, num_classes=nc,
                                                  variance=config.kde_variance,
                                                  floor=config.kde_floor))
  return None


def whole_class_weights(config: RunConfig, labels, log_density: np.ndarray | None,
                        num_classes: int) -> np.ndarray:
  """(N,) per-image weights over whole classes, each class summing to 1.

  :func:`jaxdd.weighting.whole_class_weights` of the whole-class log densities
  (:func:`run_log_density`) under the run's temperature and normalisation;
  uniform within each class when ``log_density`` is None (the vanilla method).
  """
  return weighting.whole_class_weights(labels, log_density, num_classes,
                                       None if log_density is None else kde_config(config))


def weight_diagnostics(config: RunConfig, run_data: rundata.RunData, embeddings: np.ndarray | None,
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
    w, ess = weighting.batch_scope_weights(
        key, embeddings, train.labels, batch_size=n_per, variance=config.kde_variance,
        temperature=config.kde_temperature, normalize=config.kde_normalize, num_classes=nc,
        return_ess=True)
  elif config.weighting == "fairdd":  # group-balanced inside each sampled batch
    w, ess = weighting.fairdd_batch_weights(key, train.labels, train.bias, n_per, nc)
  else:
    # vanilla: every image of a class weighs the same
    w = whole_class_weights(config, train.labels, log_density, nc)
    if config.method == "mtt":  # no real batch: the weights act on the experts' epochs
      ess = np.full(nc, np.nan)
    elif config.real_sampling == "weighted":  # i.i.d. draws with a plain mean
      ess = np.full(nc, float(n_per))
    else:
      ess = weighting.batch_ess(key, w, train.labels, batch_size=n_per, num_classes=nc)
  report = weighting.run_report(w, ess, train.labels, train.aligned, train.bias, num_classes=nc)
  report["weighting"] = {"weighting": config.weighting, "scope": config.kde_scope,
                         "floor": config.kde_floor,
                         "init": config.init, "real_sampling": config.real_sampling,
                         "real_per_class": n_per}
  if workdir is not None and config.weighting != "none":
    plots.plot_weight_histogram(
        w, train.aligned, os.path.join(workdir, "plots", "weights.png"),
        title=f"{config.weighting} weights, {config.dataset} {config.conflict_ratio}")
  return report


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
    w = files.read_weights(path)
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
