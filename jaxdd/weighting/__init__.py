"""The weighting of real samples: densities, inverse-density weights, group weights, diagnostics.

Pure functions of arrays, one job per module:

* :mod:`jaxdd.weighting.kernel`: the blocked Gaussian kernel (traced numerics, no checks);
* :mod:`jaxdd.weighting.density`: log densities of queries over a support and of every
  sample within its class (the whole-class scope), and the density floor;
* :mod:`jaxdd.weighting.kde`: :class:`KDEConfig` and the normalised inverse-density
  weights, in one pass or as a distillation step applies them (over a sampled batch,
  over whole classes);
* :mod:`jaxdd.weighting.scopes`: the weights of a whole dataset at the batch or class
  scope, the sampled batch plans they average over, and whole-class weights;
* :mod:`jaxdd.weighting.groups`: weights from the TRUE group labels (the oracle's
  group-balanced densities, FairDD's synchronized per-group weights);
* :mod:`jaxdd.weighting.clusters`: label-free pseudo-groups, k-means within each class of
  the surrogate's embedding (FairDD without bias labels);
* :mod:`jaxdd.weighting.batch_clusters`: label-free pseudo-groups of one sampled batch, a
  pure-JAX DBSCAN with a fixed number of cluster ids (FairDD's appendix M), jittable and
  vmappable inside a distillation step, its radius the median k-NN distance or the knee of the
  batch's k-distance curve;
* :mod:`jaxdd.weighting.class_dbscan`: label-free pseudo-groups of whole classes, DBSCAN over
  each class with the knee radius (blocked, for classes of thousands);
* :mod:`jaxdd.weighting.difficulty`: label-free weights from a bias-amplified classifier
  (:mod:`jaxdd.debias.biased`): its per-sample difficulty (GCE) and its error set (JTT);
* :mod:`jaxdd.weighting.diagnostics`: how weights fall on the bias groups (aligned vs
  conflicting, group shares, effective sample sizes, the report of ``weights.json``) and
  how well pseudo-groups recover the bias groups.

Example:
  >>> import jax, jax.numpy as jnp
  >>> z = jax.random.normal(jax.random.key(0), (8, 4))
  >>> w = weights(z, variance=0.1, groups=jnp.array([0, 0, 0, 0, 1, 1, 1, 1]))
  >>> [round(float(s), 4) for s in (w[:4].sum(), w[4:].sum())]
  [1.0, 1.0]
"""
from jaxdd.weighting.batch_clusters import (EPS_RULES, batch_pseudo_groups, dbscan,
                                            knee_distance, median_knn_distance)
from jaxdd.weighting.class_dbscan import dbscan_pseudo_groups
from jaxdd.weighting.clusters import KMeans, kmeans, kmeans_plus_plus, lloyd, pseudo_groups
from jaxdd.weighting.density import (check_floor, class_log_density, floor_log_density,
                                     log_density, log_density_sharded)
from jaxdd.weighting.diagnostics import (auroc, batch_ess, group_recovery, group_report,
                                         run_report, weight_report, weight_sweep)
from jaxdd.weighting.difficulty import (DIFFICULTY_FLOOR, difficulty_weights,
                                        error_set_weights, unit_rows)
from jaxdd.weighting.groups import (fairdd_batch_weights, group_balanced_weights,
                                    oracle_log_density)
from jaxdd.weighting.kde import (SCOPES, KDEConfig, batch_weights, class_weights, weights,
                                 weights_from_log_density)
from jaxdd.weighting.scopes import (batch_plan, batch_scope_weights, class_scope_weights,
                                    mean_batch_ess, per_sample_mean, scope_weights,
                                    whole_class_weights)

__all__ = [
    "EPS_RULES",
    "DIFFICULTY_FLOOR",
    "KDEConfig",
    "KMeans",
    "SCOPES",
    "auroc",
    "batch_ess",
    "batch_plan",
    "batch_pseudo_groups",
    "batch_scope_weights",
    "batch_weights",
    "check_floor",
    "class_log_density",
    "class_scope_weights",
    "class_weights",
    "dbscan",
    "dbscan_pseudo_groups",
    "difficulty_weights",
    "error_set_weights",
    "fairdd_batch_weights",
    "floor_log_density",
    "group_balanced_weights",
    "group_recovery",
    "group_report",
    "kmeans",
    "knee_distance",
    "kmeans_plus_plus",
    "lloyd",
    "log_density",
    "log_density_sharded",
    "mean_batch_ess",
    "median_knn_distance",
    "oracle_log_density",
    "per_sample_mean",
    "pseudo_groups",
    "run_report",
    "scope_weights",
    "unit_rows",
    "weight_report",
    "weight_sweep",
    "weights",
    "weights_from_log_density",
    "whole_class_weights",
]
