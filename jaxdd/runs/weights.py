"""How a run weighs its real samples: densities, per-image weights and their diagnostics."""
from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from jaxdd import diagnostics, distill, matching
from jaxdd import kde as kde_lib
from jaxdd.config import RunConfig
from jaxdd.runs import rundata


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


def run_log_density(config: RunConfig, run_data: rundata.RunData,
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
