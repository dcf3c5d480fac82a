"""How a run weighs its real samples: the glue from a RunConfig to :mod:`jaxdd.weighting`.

Which densities a run needs (:func:`run_log_density`), whether it reads the bias-amplified
classifier (:func:`needs_biased`), FairDD's groups and their number
(:func:`run_groups`, :func:`run_num_groups`: the TRUE bias labels, or label-free
pseudo-groups of whole classes, :func:`run_pseudo_groups`), its whole-class weights (:func:`whole_class_weights`),
its per-image weights (:func:`run_weights`), what it writes to ``weights.json``
(:func:`weight_diagnostics`) and the weights table of ``comparison.md``
(:func:`format_weight_summary`).
"""
from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

from jaxdd import models, plots, weighting
from jaxdd.config import RunConfig, WeightingConfig, reads_biased
from jaxdd.runs import biased_stage, files, keys, rundata
from jaxdd.runs.stage_config import kde_config


def run_log_density(config: RunConfig, run_data: rundata.RunData,
                    embeddings: np.ndarray | None) -> np.ndarray | None:
  """The whole-class log densities a run needs, or None.

  KDE runs need them for scope 'class' and for weighted initialisation or
  sampling (which draw in proportion to whole-class weights); oracle runs
  always (the group shares of :func:`jaxdd.weighting.oracle_log_density`); 'gce' and 'jtt'
  runs always: ``-log w`` of their weights (:func:`jaxdd.runs.biased_stage.difficulty_weights`),
  which the oracle's normalisation (power, T = 1) turns back into ``w``.
  """
  train, nc = run_data.train, run_data.num_classes
  if config.weighting == "oracle":
    return weighting.oracle_log_density(train.labels, train.bias, num_classes=nc)
  if config.weighting in ("gce", "jtt"):  # every weight > 0 (a floor; JTT's errors and rest)
    return -np.log(biased_stage.difficulty_weights(config, run_data))
  if config.weighting == "kde" and (config.kde_scope == "class" or config.init == "weighted"
                                    or config.real_sampling == "weighted"):
    return np.asarray(weighting.class_log_density(embeddings, train.labels, num_classes=nc,
                                                  variance=config.kde_variance,
                                                  floor=config.kde_floor))
  return None


def whole_class_weights(weights: WeightingConfig, labels, log_density: np.ndarray | None,
                        num_classes: int) -> np.ndarray:
  """(N,) per-image weights over whole classes, each class summing to 1.

  :func:`jaxdd.weighting.whole_class_weights` of the whole-class log densities
  (:func:`run_log_density`) under the temperature and normalisation of the run's weighting
  part ``weights`` (``config.weights``; a whole RunConfig does too);
  uniform within each class when ``log_density`` is None (the vanilla method).
  """
  return weighting.whole_class_weights(labels, log_density, num_classes,
                                       None if log_density is None else kde_config(weights))


def needs_embeddings(config: RunConfig) -> bool:
  """Whether a run reads embeddings (KDE and label-free FairDD): the SupCon surrogate's, or
  with ``--kde-features biased`` the bias-amplified classifier's
  (:func:`jaxdd.runs.biased_stage.weighting_embeddings`)."""
  return config.weighting in ("kde", "fairdd_pseudo", "fairdd_dbscan")


def needs_biased(config: RunConfig) -> bool:
  """Whether a run reads the bias-amplified classifier (:mod:`jaxdd.runs.biased_stage`):
  ``--weighting gce`` or ``jtt``, or ``--kde-features biased``."""
  return reads_biased(config)


def run_pseudo_groups(config: RunConfig, labels, embeddings: np.ndarray | None,
                      num_classes: int) -> np.ndarray:
  """(N,) label-free FairDD groups of each whole class of the surrogate's embeddings:
  'fairdd_pseudo', ``config.fairdd_clusters`` k-means clusters
  (:func:`jaxdd.weighting.pseudo_groups`) with the run's
  :func:`jaxdd.runs.keys.pseudo_group_key`; 'fairdd_dbscan', the DBSCAN clusters with each
  class's knee radius and 3 samples per core point, at most ``config.fairdd_clusters`` and the
  noise the group ``config.fairdd_clusters`` (:func:`jaxdd.weighting.dbscan_pseudo_groups`).
  Reads the class labels and the embeddings only, never the bias labels."""
  if embeddings is None:
    raise ValueError(f"--weighting {config.weighting} clusters the surrogate's embeddings; none "
                     "were computed for this run")
  if config.weighting == "fairdd_dbscan":
    return weighting.dbscan_pseudo_groups(embeddings, labels, num_classes=num_classes,
                                          max_clusters=config.fairdd_clusters)
  return weighting.pseudo_groups(keys.pseudo_group_key(config), embeddings, labels,
                                 num_classes=num_classes, num_clusters=config.fairdd_clusters)


def run_groups(config: RunConfig, run_data: rundata.RunData,
               embeddings: np.ndarray | None) -> np.ndarray | None:
  """(N,) groups of FairDD's synchronized matching, else None: the TRUE bias labels for
  'fairdd', the pseudo-groups of :func:`run_pseudo_groups` for 'fairdd_pseudo' and
  'fairdd_dbscan'."""
  if config.weighting == "fairdd":
    return np.asarray(run_data.train.bias)
  if config.weighting in ("fairdd_pseudo", "fairdd_dbscan"):
    return run_pseudo_groups(config, run_data.train.labels, embeddings, run_data.num_classes)
  return None


def run_num_groups(weights: WeightingConfig, run_data: rundata.RunData) -> int | None:
  """The number of group values of :func:`run_groups` (DM's ``group_matching``), else None:
  the bias values for 'fairdd', ``fairdd_clusters`` for 'fairdd_pseudo', one more (the
  noise) for 'fairdd_dbscan' (``weights``: the run's weighting part, ``config.weights``; a
  whole RunConfig does too)."""
  if weights.weighting == "fairdd":
    return rundata.num_bias_values(run_data.train)
  if weights.weighting == "fairdd_pseudo":
    return weights.fairdd_clusters
  if weights.weighting == "fairdd_dbscan":
    return weights.fairdd_clusters + 1
  return None


def run_weights(config: RunConfig, run_data: rundata.RunData, embeddings: np.ndarray | None,
                key: jax.Array, groups: np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
  """``(w, ess)``: the (N,) per-image weights a run uses and each class's mean effective
  sample size of one sampled real batch.

  In-batch KDE weights averaged over sampled batches (scope 'batch' with uniform sampling,
  the paper's); FairDD's in-batch group-balanced weights, so averaged, over ``groups`` (the
  run's :func:`run_groups`); else the whole-class weights (scope 'class', weighted
  initialisation or sampling, the oracle); uniform weights for a vanilla run.
  """
  train, nc = run_data.train, run_data.num_classes
  n_per = rundata.real_batch(config, run_data)  # the batch a step draws
  if (config.weighting == "kde" and config.kde_scope == "batch"
      and config.real_sampling == "uniform"):  # the loss weighs inside each sampled batch
    return weighting.batch_scope_weights(
        key, embeddings, train.labels, batch_size=n_per, variance=config.kde_variance,
        temperature=config.kde_temperature, normalize=config.kde_normalize, num_classes=nc,
        return_ess=True)
  if config.weighting in ("fairdd", "fairdd_pseudo", "fairdd_dbscan"):  # balanced per batch
    return weighting.fairdd_batch_weights(key, train.labels, groups, n_per, nc)
  if config.weighting == "fairdd_batch":  # groups found inside each batch, as the step does
    w, ess, _ = batch_cluster_weights(config, run_data, key)
    return w, ess
  log_density = run_log_density(config, run_data, embeddings)
  w = whole_class_weights(config.weights, train.labels, log_density, nc)
  if config.method == "mtt":  # no real batch: the weights act on the experts' epochs
    ess = np.full(nc, np.nan)
  elif config.real_sampling == "weighted":  # i.i.d. draws with a plain mean
    ess = np.full(nc, float(n_per))
  else:
    ess = weighting.batch_ess(key, w, train.labels, batch_size=n_per, num_classes=nc)
  return w, ess


def weight_diagnostics(config: RunConfig, run_data: rundata.RunData, embeddings: np.ndarray | None,
                       key: jax.Array, *, workdir: str | None = None) -> dict:
  """What ``weights.json`` holds: how a run's real-image weights fall on the bias groups.

  The per-sample weights are the ones the run actually uses (:func:`run_weights`).
  ``weight_report`` (aligned vs conflicting), ``groups`` (per class: the share
  of each bias group against the balanced share, and the whole-class effective
  sample size) and ``batch_ess`` (per class, the effective sample size of one
  sampled real batch of ``real_per_class``) use the TRUE bias labels: they are
  diagnostics, never inputs. A 'fairdd_pseudo' or 'fairdd_dbscan' run adds
  ``pseudo_groups``: the size of
  every pseudo-group and how well they recover the bias groups
  (:func:`jaxdd.weighting.group_recovery`, also a diagnostic from the TRUE bias labels,
  computed after the pseudo-groups); a 'fairdd_batch' run ``batch_clusters``: the clusters
  DBSCAN finds per batch and their recovery of the bias groups (:func:`batch_cluster_weights`);
  a run that reads the bias-amplified classifier (:func:`needs_biased`) ``biased_network``
  (:func:`jaxdd.runs.biased_stage.biased_report`).
  Writes ``plots/weights.png`` when ``workdir`` is given.
  """
  train, nc = run_data.train, run_data.num_classes
  groups = run_groups(config, run_data, embeddings)
  clusters = None
  if config.weighting == "fairdd_batch":
    w, ess, clusters = batch_cluster_weights(config, run_data, key)
  else:
    w, ess = run_weights(config, run_data, embeddings, key, groups)
  if train.bias is None:  # a user's data without group labels: no group shares to report
    report = {"batch_ess": [None if not np.isfinite(e) else float(e) for e in ess],
              "groups": [], "note": "the training split has no group labels"}
  else:
    report = weighting.run_report(w, ess, train.labels, train.aligned, train.bias,
                                  num_classes=nc)
  report["weighting"] = {"weighting": config.weighting, "scope": config.kde_scope,
                         "floor": config.kde_floor,
                         "init": config.init, "real_sampling": config.real_sampling,
                         "real_per_class": config.real_per_class}
  if config.weighting in ("fairdd_pseudo", "fairdd_batch", "fairdd_dbscan"):
    report["weighting"]["fairdd_clusters"] = config.fairdd_clusters
  if config.weighting == "fairdd_batch":
    report["weighting"]["fairdd_eps"] = config.fairdd_eps
  if needs_biased(config):
    report["weighting"].update(kde_features=config.kde_features, gce_floor=config.gce_floor,
                               jtt_up=config.jtt_up)
    report["biased_network"] = biased_stage.biased_report(config, run_data)
  if config.weighting in ("fairdd_pseudo", "fairdd_dbscan") and train.bias is not None:
    report["pseudo_groups"] = pseudo_group_report(config, run_data, groups)
  if clusters is not None:
    report["batch_clusters"] = clusters
  if workdir is not None and config.weighting != "none" and train.aligned is not None:
    plots.plot_weight_histogram(
        w, train.aligned, os.path.join(workdir, "plots", "weights.png"),
        title=f"{config.weighting} weights, {run_data.name}"
              + ("" if run_data.spec is not None else f" {config.conflict_ratio}"))
  return report


def batch_cluster_weights(config: RunConfig, run_data: rundata.RunData, key: jax.Array,
                          chunk: int = 64) -> tuple[np.ndarray, np.ndarray, dict]:
  """``(w, ess, recovery)`` of a ``'fairdd_batch'`` run, as the step forms them: one round of
  DM's batches (:func:`jaxdd.weighting.batch_plan`), each clustered with DBSCAN
  (:func:`jaxdd.weighting.batch_pseudo_groups`) in the features of a fresh random network of
  the run's architecture, FairDD's group-balanced weights averaged per sample; and, a
  diagnostic from the TRUE bias labels, how well the clusters of a batch recover its bias
  groups (:func:`jaxdd.weighting.group_recovery`, each batch counted as a class)."""
  train, nc = run_data.train, run_data.num_classes
  labels = np.asarray(train.labels)
  k_plan, k_net = jax.random.split(key)
  index, mask = weighting.batch_plan(k_plan, labels,
                                     batch_size=rundata.real_batch(config, run_data),
                                     num_classes=nc, num_rounds=1)
  images = run_data.normalized(train)
  k = config.fairdd_clusters
  groups_of = _batch_groups_program(nc, config.depth, config.width, k, config.fairdd_eps)
  keys = jax.random.split(k_net, len(index))
  groups = np.concatenate([np.asarray(groups_of(keys[i:i + chunk], images[index[i:i + chunk]],
                                                mask[i:i + chunk]))
                           for i in range(0, len(index), chunk)])
  w_b, _ = jax.jit(weighting.group_balanced_weights, static_argnums=2)(  # one program
      jnp.asarray(groups), jnp.asarray(mask), k + 1)
  w_b = np.asarray(w_b, np.float64)
  w = weighting.per_sample_mean(w_b, index, mask, labels, nc)
  ess = weighting.mean_batch_ess(w_b, mask, labels[index[:, 0]], nc)
  valid = np.asarray(mask)
  batch_id = np.broadcast_to(np.arange(len(index))[:, None], index.shape)[valid]
  rows = index[valid]
  present = np.array([len(np.unique(g[m])) for g, m in zip(groups, valid)])
  out = {"groups_per_batch_mean": float(present.mean()),
         "groups_per_batch_max": int(present.max())}
  if train.bias is None:  # no group labels to measure the clusters against
    return w, ess, out
  recovery = weighting.group_recovery(groups[valid], batch_id, np.asarray(train.bias)[rows],
                                      np.asarray(train.aligned)[rows], num_classes=len(index))
  return w, ess, {**out, "recovery_diagnostic": {
                      "note": "computed after the fact from the TRUE bias labels for this "
                              "report only; the clusters and the weights never read them",
                      **recovery}}


@functools.lru_cache(maxsize=8)
def _batch_groups_program(num_classes: int, depth: int, width: int, max_clusters: int,
                          eps_rule: str = "median"):
  """``groups_of(keys, images, mask)``: each batch's DBSCAN groups in the features of a fresh
  random ConvNet (one per key), compiled once per architecture (the runs of a cell share it)."""
  model = models.ConvNet(num_classes, depth=depth, width=width)

  def feats(key, xb):
    v = model.init(key, xb[:1])
    return model.apply(v, xb, return_features=True)[0]

  return jax.jit(lambda keys, x, m: weighting.batch_pseudo_groups(
      jax.vmap(feats)(keys, x), m, max_clusters=max_clusters, eps_rule=eps_rule))


def pseudo_group_report(config: RunConfig, run_data: rundata.RunData,
                        groups: np.ndarray) -> dict:
  """``weights.json``'s ``pseudo_groups``: the clusters per class, each class's group sizes
  (for 'fairdd_dbscan' the last one is the noise), and the recovery of the TRUE bias groups,
  labelled as a diagnostic."""
  train, nc = run_data.train, run_data.num_classes
  labels = np.asarray(train.labels)
  sizes = [np.bincount(groups[labels == c], minlength=run_num_groups(config.weights, run_data)).tolist()
           for c in range(nc)]
  recovery = weighting.group_recovery(groups, labels, train.bias, train.aligned, num_classes=nc)
  noise = {"noise_group": config.fairdd_clusters} if config.weighting == "fairdd_dbscan" else {}
  return {"num_clusters": config.fairdd_clusters, **noise, "sizes": sizes,
          "recovery_diagnostic": {
              "note": "computed after the fact from the TRUE bias labels for this report only; "
                      "the pseudo-groups and the weights never read them",
              **recovery}}


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
