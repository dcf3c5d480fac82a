"""Pseudo-groups without bias labels: k-means within each class of the surrogate's embedding.

FairDD's synchronized matching (:func:`jaxdd.weighting.group_balanced_weights`) needs the
groups of a class. Its label-free variant takes them from clustering: :func:`pseudo_groups`
runs k-means on the L2-normalised embeddings of each class on its own (the SupCon
surrogate's projections, the space of the KDE weighting), and a sample's group is its
cluster within its class.

The k-means is pure JAX (:func:`kmeans`): k-means++ seeding (:func:`kmeans_plus_plus`) from
an explicit ``jax.random`` key, then Lloyd iterations (:func:`lloyd`) until the assignments
stop changing or ``max_iters`` is reached; every function is jittable and, for a key, gives
the same result at every call.

Conventions:
  * ``mask`` (N,) bool marks the valid rows (padding is ignored everywhere; rows that are
    padding get cluster id 0 from :func:`lloyd`, which callers discard).
  * Distances are squared Euclidean; a sample goes to the nearest centre, ties to the lowest
    cluster id.
  * Empty clusters are LEFT EMPTY: a cluster that loses all its members keeps its previous
    centre (it may win members back in a later iteration) and its id goes unused. No
    re-seeding, so the result stays a deterministic function of the seeding.
  * Fewer valid samples than clusters: the seeding picks every distinct sample once and then
    repeats samples; a repeated centre never wins a tie (lowest id first), so only as many
    ids as distinct samples are used.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxdd._src import checks

__all__ = [
    "KMeans",
    "kmeans",
    "kmeans_plus_plus",
    "lloyd",
    "pseudo_groups",
]

_HIGHEST = jax.lax.Precision.HIGHEST


class KMeans(NamedTuple):
  """The result of :func:`kmeans` / :func:`lloyd`: ``centres`` (k, d) float32, the cluster
  id of every row ``assignments`` (N,) int32 (0 for padding rows), and ``iterations``, the
  number of Lloyd iterations run (an int32 scalar)."""
  centres: jax.Array
  assignments: jax.Array
  iterations: jax.Array


def _sq_distances(x: jax.Array, centres: jax.Array) -> jax.Array:
  """(N, k) squared Euclidean distances, ``|x|^2 - 2 x.c + |c|^2`` clipped at 0."""
  xc = jnp.matmul(x, centres.T, precision=_HIGHEST)
  d2 = (x * x).sum(-1)[:, None] - 2.0 * xc + (centres * centres).sum(-1)[None, :]
  return jnp.maximum(d2, 0.0)


def _pick(key: jax.Array, logits: jax.Array) -> jax.Array:
  """One index drawn with probability ``softmax(logits)`` (Gumbel-max).

  Row i's noise comes from ``fold_in(key, i)``, so the draw does not depend on how many
  padding rows (logit ``-inf``) follow the valid ones.
  """
  u = jax.vmap(lambda i: jax.random.uniform(jax.random.fold_in(key, i), minval=1e-12,
                                            maxval=1.0))(jnp.arange(logits.shape[0]))
  return jnp.argmax(logits - jnp.log(-jnp.log(u)))


@functools.partial(jax.jit, static_argnames=("num_clusters",))
def kmeans_plus_plus(key: jax.Array, x: jax.Array, num_clusters: int,
                     mask: jax.Array | None = None) -> jax.Array:
  """k-means++ seeding (Arthur & Vassilvitskii 2007): (k, d) initial centres.

  The first centre is a valid row drawn uniformly; each next one a valid row drawn with
  probability proportional to its squared distance to the nearest centre chosen so far.
  When every valid row already coincides with a centre (fewer distinct rows than
  clusters) the next one is again drawn uniformly among the valid rows.

  Args:
    key: a ``jax.random`` key; the same key gives the same centres.
    x: (N, d) float rows.
    num_clusters: k (static).
    mask: (N,) bool valid rows (default: all); at least one must be valid.

  Example:
    >>> x = jnp.array([[0., 0.], [0., 1.], [10., 0.], [10., 1.]])
    >>> c = kmeans_plus_plus(jax.random.key(0), x, 2)
    >>> sorted(float(v) for v in c[:, 0])  # one centre in each blob
    [0.0, 10.0]
  """
  x = jnp.asarray(x, jnp.float32)
  mask = jnp.ones(x.shape[0], bool) if mask is None else jnp.asarray(mask, bool)
  uniform = jnp.where(mask, 0.0, -jnp.inf)
  keys = jax.random.split(key, num_clusters)
  first = x[_pick(keys[0], uniform)]
  centres = jnp.zeros((num_clusters, x.shape[1]), jnp.float32).at[0].set(first)
  d2 = _sq_distances(x, first[None])[:, 0]

  def body(j, carry):
    centres, d2 = carry
    d2v = jnp.where(mask, d2, 0.0)
    logits = jnp.where(mask & (d2v > 0), jnp.log(jnp.where(d2v > 0, d2v, 1.0)), -jnp.inf)
    logits = jnp.where(d2v.max() > 0, logits, uniform)
    c = x[_pick(keys[j], logits)]
    return centres.at[j].set(c), jnp.minimum(d2, _sq_distances(x, c[None])[:, 0])

  centres, _ = jax.lax.fori_loop(1, num_clusters, body, (centres, d2))
  return centres


def _assign(x: jax.Array, centres: jax.Array, mask: jax.Array) -> jax.Array:
  return jnp.where(mask, jnp.argmin(_sq_distances(x, centres), axis=1), 0).astype(jnp.int32)


def _update(x: jax.Array, centres: jax.Array, assignments: jax.Array,
            mask: jax.Array) -> jax.Array:
  """The mean of each cluster's members; an empty cluster keeps its centre."""
  onehot = jax.nn.one_hot(assignments, centres.shape[0], dtype=jnp.float32) * mask[:, None]
  sums = jnp.matmul(onehot.T, x, precision=_HIGHEST)
  counts = onehot.sum(0)
  return jnp.where(counts[:, None] > 0, sums / jnp.maximum(counts, 1.0)[:, None], centres)


@functools.partial(jax.jit, static_argnames=("max_iters",))
def lloyd(x: jax.Array, centres: jax.Array, mask: jax.Array | None = None, *,
          max_iters: int = 100) -> KMeans:
  """Lloyd's k-means iterations from given centres.

  One iteration assigns every valid row to its nearest centre (ties: lowest id) and moves
  each centre to the mean of its members (an empty cluster keeps its centre). It stops
  when an iteration leaves the assignments unchanged or after ``max_iters`` iterations;
  the result's centres are the means of its assignments (unless ``max_iters`` cut it).

  Args:
    x: (N, d) float rows.
    centres: (k, d) initial centres.
    mask: (N,) bool valid rows (default: all).
    max_iters: the largest number of iterations (static).

  Example:
    >>> x = jnp.array([[0.], [1.], [9.], [10.]])
    >>> r = lloyd(x, jnp.array([[0.], [1.]]))
    >>> r.assignments.tolist(), r.centres[:, 0].tolist()
    ([0, 0, 1, 1], [0.5, 9.5])
  """
  x = jnp.asarray(x, jnp.float32)
  centres = jnp.asarray(centres, jnp.float32)
  mask = jnp.ones(x.shape[0], bool) if mask is None else jnp.asarray(mask, bool)
  a0 = _assign(x, centres, mask)

  def cond(carry):
    _, _, it, changed = carry
    return changed & (it < max_iters)

  def body(carry):
    centres, a, it, _ = carry
    centres = _update(x, centres, a, mask)
    new = _assign(x, centres, mask)
    return centres, new, it + 1, jnp.any(new != a)

  centres, a, it, _ = jax.lax.while_loop(cond, body, (centres, a0, jnp.int32(0),
                                                      jnp.bool_(max_iters > 0)))
  return KMeans(centres, a, it)


@functools.partial(jax.jit, static_argnames=("num_clusters", "max_iters"))
def kmeans(key: jax.Array, x: jax.Array, num_clusters: int, mask: jax.Array | None = None, *,
           max_iters: int = 100) -> KMeans:
  """k-means: :func:`kmeans_plus_plus` seeding from ``key``, then :func:`lloyd`.

  Example:
    >>> x = jnp.array([[0., 0.], [0., 1.], [10., 0.], [10., 1.]])
    >>> r = kmeans(jax.random.key(0), x, 2)
    >>> bool(r.assignments[0] == r.assignments[1] != r.assignments[2] == r.assignments[3])
    True
  """
  return lloyd(x, kmeans_plus_plus(key, x, num_clusters, mask), mask, max_iters=max_iters)


def _bucket(n: int) -> int:
  """The padded length of a class of ``n`` rows: the next power of two (at least 8), so that
  classes of similar sizes share one compiled program and a class's padding depends on its
  own size only."""
  return max(8, 1 << (n - 1).bit_length())


def pseudo_groups(key: jax.Array, embeddings, labels, *, num_classes: int, num_clusters: int,
                  max_iters: int = 100) -> np.ndarray:
  """(N,) int32 pseudo-group of every sample: its k-means cluster within its class.

  Label-free FairDD: each class's embeddings, L2-normalised (the SupCon surrogate's
  projections already are; other embeddings are put on the unit sphere the same way), are
  clustered on their own into ``num_clusters`` groups by :func:`kmeans` with the key
  ``fold_in(key, c)`` for class ``c``. A class's ids therefore depend only on the key and
  that class's own embeddings, never on other classes or on any bias label. Ids lie in
  ``[0, num_clusters)``; an id may be unused (an empty cluster, or a class with fewer
  distinct samples than clusters).

  Args:
    key: a ``jax.random`` key.
    embeddings: (N, d) finite floats.
    labels: (N,) integer classes in ``[0, num_classes)``.
    num_classes: the number of classes.
    num_clusters: groups per class, >= 1.
    max_iters: the most Lloyd iterations per class.

  Example:
    >>> z = np.array([[1., 0.], [1., .1], [0., 1.], [.1, 1.], [1., 0.], [0., 1.]])
    >>> g = pseudo_groups(jax.random.key(0), z, [0, 0, 0, 0, 1, 1], num_classes=2,
    ...                   num_clusters=2)
    >>> bool(g[0] == g[1] != g[2] == g[3]), bool(g[4] != g[5])
    (True, True)
  """
  emb = np.asarray(embeddings, np.float32)
  labels = np.asarray(labels)
  if emb.ndim != 2 or labels.shape != (emb.shape[0],):
    raise ValueError(f"embeddings must be (N, d) and labels (N,), got {emb.shape} and "
                     f"{labels.shape}")
  checks.check_labels(labels, num_classes)
  checks.check_positive_int("num_clusters", num_clusters)
  if not np.all(np.isfinite(emb)):
    raise ValueError("embeddings contain NaN or Inf; check the surrogate (a diverged run gives "
                     "NaN)")
  emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
  out = np.zeros(labels.shape, np.int32)
  for c in range(num_classes):
    idx = np.flatnonzero(labels == c)
    if idx.size == 0:
      continue
    size = _bucket(idx.size)
    x = np.zeros((size, emb.shape[1]), np.float32)
    x[:idx.size] = emb[idx]
    mask = np.arange(size) < idx.size
    r = kmeans(jax.random.fold_in(key, c), jnp.asarray(x), num_clusters, jnp.asarray(mask),
               max_iters=max_iters)
    out[idx] = np.asarray(r.assignments)[:idx.size]
  return out
