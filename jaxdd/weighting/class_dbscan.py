"""Pseudo-groups of whole classes: DBSCAN over each class with the radius the class suggests.

FairDD (Zhou et al., 2025, appendix M) finds its groups without bias labels by DBSCAN.
:func:`jaxdd.weighting.batch_pseudo_groups` clusters each sampled batch, as the appendix
does, but a batch of 64 images per class holds less than one image of a 5 % minority
colour: it can never form a cluster of ``min_samples``. :func:`dbscan_pseudo_groups`
clusters each WHOLE class instead, once, in the SupCon surrogate's embedding (put on the
unit sphere, the space of :func:`jaxdd.weighting.pseudo_groups`' k-means and of the KDE
weights), with the class's own radius: by default the knee of its sorted k-distance
curve (:func:`jaxdd.weighting.knee_distance`). Its ids are the groups of FairDD's
synchronized matching (:func:`jaxdd.weighting.group_balanced_weights`), as the k-means
groups are.

Conventions: those of :mod:`jaxdd.weighting.batch_clusters` (k-distances and the eps
rules, core points, borders to their nearest core neighbour, components, ids by size
largest first, the cap of ``max_clusters`` ids with the smaller clusters merged into the
last, noise ``max_clusters``), applied to each class on its own; a class's ids depend on
its own embeddings only, never on other classes or on any bias label. There is no key:
DBSCAN draws nothing.

Scale. A class of n rows costs O(n^2 d) work, done in row blocks of ``block`` rows: a
block's distances to the class (``block x n``, from the exact differences as in
:mod:`jaxdd.weighting.batch_clusters`) exist one block at a time, three times (the
k-distances; the eps-graph; the borders' nearest core point), and the only n x n arrays
are booleans (the eps-graph and the core graph, n^2 bytes each). Every class is padded to
the largest class's size rounded up to a multiple of ``block``, so one program serves all
classes. Measured on a shared 2-core x86-64 CPU, a class of 6,000 rows of 64 dimensions
(block 256, padded to 6,144): 4 to 7 s a class after a compilation of about 8 s; XLA's
temporary buffers 80 MB (two n x n booleans and the blocks), the process's peak memory
0.23 GB above its resting size, compilation included. 128 dimensions: about 8 s a class;
full CMNIST's classes (5,400 rows, the 128-d surrogate embedding) took 10-15 s each on the
same CPU under a load of about 10 (docs/results/fairdd-label-free.md).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxdd._src import checks
from jaxdd.weighting.batch_clusters import (EPS_RULES, _components, _ids, _knee_of,
                                            _median_of)

__all__ = ["dbscan_pseudo_groups"]


@functools.partial(jax.jit, static_argnames=("min_samples", "max_clusters", "k", "eps_rule",
                                             "block"))
def _blocked_dbscan(x: jax.Array, mask: jax.Array, *, min_samples: int, max_clusters: int,
                    k: int, eps_rule: str, block: int) -> jax.Array:
  """(n,) ids of one padded class (n a multiple of ``block``): the module's conventions."""
  n = x.shape[0]
  idx = jnp.arange(n, dtype=jnp.int32)
  starts = jnp.arange(0, n, block)

  def dist_rows(i0):  # (block, n) distances of rows i0 .. i0 + block - 1
    rows = jax.lax.dynamic_slice_in_dim(x, i0, block)
    diff = rows[:, None, :] - x[None, :, :]
    return jnp.sqrt((diff * diff).sum(-1)), i0 + jnp.arange(block, dtype=jnp.int32)

  n_valid = mask.sum().astype(jnp.int32)
  k_static = min(k, n - 1)
  k_eff = jnp.clip(jnp.minimum(k, n_valid - 1), 1, k_static)

  def kth_block(i0):
    dist, r = dist_rows(i0)
    off = mask[None, :] & (idx[None, :] != r[:, None])  # valid neighbours, self excluded
    return -jax.lax.top_k(jnp.where(off, -dist, -jnp.inf), k_static)[0][:, k_eff - 1]

  kth = jnp.where(mask, jax.lax.map(kth_block, starts).reshape(n), jnp.inf)
  eps = (_knee_of if eps_rule == "knee" else _median_of)(kth, n_valid)

  def graph_block(i0):  # the block's rows of the eps-graph and their counts
    dist, _ = dist_rows(i0)
    w = (dist <= eps) & mask[None, :] & jax.lax.dynamic_slice_in_dim(mask, i0, block)[:, None]
    return w, w.sum(axis=1)

  within, counts = jax.lax.map(graph_block, starts)
  within = within.reshape(n, n)
  core = mask & (counts.reshape(n) >= min_samples)
  lab = _components(within & core[:, None] & core[None, :], block)

  def nearest_block(i0):  # a border's nearest core neighbour (ties: the lowest index)
    dist, _ = dist_rows(i0)
    cand = jax.lax.dynamic_slice_in_dim(within, i0, block) & core[None, :]
    return jnp.argmin(jnp.where(cand, dist, jnp.inf), axis=1), cand.any(axis=1)

  nearest, reached = jax.lax.map(nearest_block, starts)
  nearest, reached = nearest.reshape(n), reached.reshape(n)
  root = jnp.where(core, lab, jnp.where(reached, lab[nearest], n))  # n: noise
  return _ids(core, lab, root, max_clusters)


def dbscan_pseudo_groups(embeddings, labels, *, num_classes: int, max_clusters: int,
                         min_samples: int = 3, eps_rule: str = "knee",
                         eps_neighbors: int | None = None, block: int = 256) -> np.ndarray:
  """(N,) int32 pseudo-group of every sample: its DBSCAN cluster within its whole class.

  Label-free FairDD over whole classes: each class's embeddings, L2-normalised (the SupCon
  surrogate's projections already are), are clustered on their own by DBSCAN with the
  class's own ``eps`` (``eps_rule``: the knee of its k-distance curve by default, or the
  median k-NN distance) and the conventions of :mod:`jaxdd.weighting.batch_clusters`.
  Ids lie in ``[0, max_clusters]``: ``0`` the class's largest cluster, ``max_clusters - 1``
  its smaller clusters merged, ``max_clusters`` its noise; so feed them to
  :func:`jaxdd.weighting.group_balanced_weights` with ``num_groups = max_clusters + 1``.
  Deterministic (no key); runs on the host's default device, class by class (the module's
  note on scale).

  Args:
    embeddings: (N, d) finite floats.
    labels: (N,) integer classes in ``[0, num_classes)``.
    num_classes: the number of classes.
    max_clusters: cluster ids per class, >= 1.
    min_samples: the rows within ``eps`` (self included) that make a core point.
    eps_rule: ``"knee"`` (:func:`jaxdd.weighting.knee_distance`) or ``"median"``
      (:func:`jaxdd.weighting.median_knn_distance`).
    eps_neighbors: the rule's neighbour rank k; None: ``min_samples - 1`` (at least 1) for
      ``"knee"``, 5 for ``"median"``.
    block: the rows whose distances are computed at once.

  Example:
    >>> z = np.array([[1., 0.], [1., .01], [1., .02], [0., 1.], [.01, 1.], [.02, 1.],
    ...               [-1., 0.]])
    >>> dbscan_pseudo_groups(z, [0, 0, 0, 0, 0, 0, 0], num_classes=1, max_clusters=3,
    ...                      eps_rule="median", eps_neighbors=2).tolist()
    [0, 0, 0, 1, 1, 1, 3]
  """
  emb = np.asarray(embeddings, np.float32)
  labels = np.asarray(labels)
  if emb.ndim != 2 or labels.shape != (emb.shape[0],):
    raise ValueError(f"embeddings must be (N, d) and labels (N,), got {emb.shape} and "
                     f"{labels.shape}")
  checks.check_labels(labels, num_classes)
  max_clusters = checks.check_positive_int("max_clusters", max_clusters)
  min_samples = checks.check_positive_int("min_samples", min_samples)
  block = checks.check_positive_int("block", block)
  if eps_rule not in EPS_RULES:
    raise ValueError(f"eps_rule must be one of {EPS_RULES}, got {eps_rule!r}")
  if eps_neighbors is None:
    eps_neighbors = 5 if eps_rule == "median" else max(min_samples - 1, 1)
  eps_neighbors = checks.check_positive_int("eps_neighbors", eps_neighbors)
  if not np.all(np.isfinite(emb)):
    raise ValueError("embeddings contain NaN or Inf; check the surrogate (a diverged run gives "
                     "NaN)")
  emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
  out = np.full(labels.shape, max_clusters, np.int32)
  sizes = np.bincount(labels, minlength=num_classes)
  largest = max(int(sizes.max(initial=0)), 2)
  block = min(block, largest)  # a small data set: one block
  size = -(-largest // block) * block
  for c in np.flatnonzero(sizes):
    idx = np.flatnonzero(labels == c)
    x = np.zeros((size, emb.shape[1]), np.float32)
    x[:idx.size] = emb[idx]
    ids = _blocked_dbscan(jnp.asarray(x), jnp.asarray(np.arange(size) < idx.size),
                          min_samples=min_samples, max_clusters=max_clusters,
                          k=eps_neighbors, eps_rule=eps_rule, block=block)
    out[idx] = np.asarray(ids)[:idx.size]
  return out
