"""k-means and the label-free pseudo-groups (jaxdd.weighting.clusters) against a naive numpy
Lloyd's k-means from the same initial centres, and their properties."""
from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdd.weighting import kmeans, kmeans_plus_plus, lloyd, pseudo_groups

EPS32 = 2.0 ** -24  # float32 unit roundoff


def naive_lloyd(x, centres, max_iters=100):
  """Textbook Lloyd in float64 with loops: nearest centre (first on ties), members' mean,
  an empty cluster keeps its centre; stops when the assignments stop changing."""
  x = np.asarray(x, np.float64)
  c = np.asarray(centres, np.float64).copy()
  a = np.array([np.argmin([np.sum((xi - cj) ** 2) for cj in c]) for xi in x])
  for _ in range(max_iters):
    for j in range(len(c)):
      if np.any(a == j):
        c[j] = x[a == j].mean(0)
    new = np.array([np.argmin([np.sum((xi - cj) ** 2) for cj in c]) for xi in x])
    if np.array_equal(new, a):
      break
    a = new
  return a, c


def unit(x):
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def blobs(rng, n_per, k, d=8, spread=0.05):
  means = unit(rng.normal(size=(k, d))) * 3.0
  x = np.concatenate([m + spread * rng.normal(size=(n_per, d)) for m in means])
  return x.astype(np.float32), np.repeat(np.arange(k), n_per)


def same_partition(a, b):
  """Equal up to a permutation of the ids."""
  pairs = set(zip(np.asarray(a).tolist(), np.asarray(b).tolist()))
  return len(pairs) == len(set(np.asarray(a).tolist())) == len(set(np.asarray(b).tolist()))


@pytest.mark.parametrize("seed,n,k", [(0, 60, 3), (1, 200, 5), (2, 17, 4)])
def test_lloyd_equals_a_naive_numpy_kmeans_from_the_same_centres(seed, n, k):
  rng = np.random.default_rng(seed)
  x = unit(rng.normal(size=(n, 6))).astype(np.float32)  # unit rows, as the embeddings are
  init = kmeans_plus_plus(jax.random.key(seed), jnp.asarray(x), k)
  got = lloyd(jnp.asarray(x), init)
  ref_a, ref_c = naive_lloyd(x, np.asarray(init))
  np.testing.assert_array_equal(np.asarray(got.assignments), ref_a)
  # Same assignments, so each centre is the float32 mean of the same <= n rows of norm 1:
  # a sum of m terms is within (m - 1) u sum|x_i| of the exact one (u = 2^-24), and the
  # division adds one rounding: |error| <= (m + 1) u <= (n + 1) u per coordinate.
  np.testing.assert_allclose(np.asarray(got.centres), ref_c, rtol=0, atol=(n + 1) * EPS32)


def test_seeding_picks_distinct_rows_and_a_key_fixes_everything():
  rng = np.random.default_rng(3)
  x = jnp.asarray(unit(rng.normal(size=(50, 4))).astype(np.float32))
  c = np.asarray(kmeans_plus_plus(jax.random.key(7), x, 6))
  rows = {tuple(r) for r in np.asarray(x).tolist()}
  assert all(tuple(r) in rows for r in c.tolist()) and len({tuple(r) for r in c.tolist()}) == 6
  a, b = kmeans(jax.random.key(7), x, 6), kmeans(jax.random.key(7), x, 6)
  np.testing.assert_array_equal(np.asarray(a.assignments), np.asarray(b.assignments))
  np.testing.assert_array_equal(np.asarray(a.centres), np.asarray(b.centres))


def test_padding_rows_change_nothing():
  rng = np.random.default_rng(4)
  x = unit(rng.normal(size=(30, 5))).astype(np.float32)
  pad = np.concatenate([x, 100 * np.ones((34, 5), np.float32)])
  mask = np.arange(64) < 30
  a = kmeans(jax.random.key(1), jnp.asarray(x), 4)
  b = kmeans(jax.random.key(1), jnp.asarray(pad), 4, jnp.asarray(mask))
  np.testing.assert_array_equal(np.asarray(a.assignments), np.asarray(b.assignments)[:30])


def test_separated_blobs_are_recovered_exactly():
  rng = np.random.default_rng(5)
  x, truth = blobs(rng, 40, 5)
  for seed in range(5):
    got = kmeans(jax.random.key(seed), jnp.asarray(x), 5)
    assert same_partition(got.assignments, truth), seed


def test_pseudo_groups_recover_blobs_in_every_class_with_ids_in_range():
  rng = np.random.default_rng(6)
  xs, labels, truth = [], [], []
  for c in range(3):
    x, t = blobs(rng, 30, 4)
    xs.append(x), labels.append(np.full(len(x), c)), truth.append(t)
  x, labels, truth = np.concatenate(xs), np.concatenate(labels), np.concatenate(truth)
  g = pseudo_groups(jax.random.key(0), x, labels, num_classes=3, num_clusters=4)
  assert g.dtype == np.int32 and g.shape == labels.shape
  assert g.min() >= 0 and g.max() < 4
  for c in range(3):
    assert same_partition(g[labels == c], truth[labels == c]), c
  np.testing.assert_array_equal(
      g, pseudo_groups(jax.random.key(0), x, labels, num_classes=3, num_clusters=4))


def test_a_class_is_clustered_independently_of_the_others():
  rng = np.random.default_rng(7)
  x = unit(rng.normal(size=(90, 6))).astype(np.float32)
  labels = np.repeat(np.arange(3), 30)
  g = pseudo_groups(jax.random.key(2), x, labels, num_classes=3, num_clusters=5)
  # other classes' samples changed, reordered and resized: class 1 keeps its ids
  others = unit(rng.normal(size=(70, 6))).astype(np.float32)
  x2 = np.concatenate([others[:50], x[labels == 1], others[50:]])
  labels2 = np.concatenate([np.zeros(50, int), np.ones(30, int), np.full(20, 2)])
  g2 = pseudo_groups(jax.random.key(2), x2, labels2, num_classes=3, num_clusters=5)
  np.testing.assert_array_equal(g[labels == 1], g2[labels2 == 1])


def test_a_class_smaller_than_the_cluster_count_and_duplicates_work():
  x = np.array([[1., 0.], [0., 1.], [0., 1.], [1., 1.], [-1., 0.]], np.float32)
  labels = np.array([0, 0, 0, 1, 2])
  g = pseudo_groups(jax.random.key(0), x, labels, num_classes=4, num_clusters=6)
  assert g.min() >= 0 and g.max() < 6
  assert g[0] != g[1] and g[1] == g[2]  # two distinct rows in class 0: two clusters
  r = kmeans(jax.random.key(0), jnp.asarray(x[:3]), 6)
  assert len(set(np.asarray(r.assignments).tolist())) == 2  # the other ids stay empty


def test_an_empty_cluster_keeps_its_centre():
  x = jnp.array([[0.], [1.], [2.]])
  r = lloyd(x, jnp.array([[1.], [50.]]))
  assert r.assignments.tolist() == [0, 0, 0] and r.centres[:, 0].tolist() == [1.0, 50.0]


def test_embeddings_are_normalised_first():
  rng = np.random.default_rng(8)
  x = unit(rng.normal(size=(40, 4))).astype(np.float32)
  labels = np.repeat([0, 1], 20)
  scale = rng.uniform(0.5, 3.0, size=(40, 1)).astype(np.float32)
  np.testing.assert_array_equal(
      pseudo_groups(jax.random.key(3), x, labels, num_classes=2, num_clusters=3),
      pseudo_groups(jax.random.key(3), x * scale, labels, num_classes=2, num_clusters=3))


@pytest.mark.parametrize("bad,match", [
    (dict(num_clusters=0), "num_clusters"),
    (dict(embeddings=np.full((4, 2), np.nan)), "NaN"),
    (dict(labels=np.array([0, 0, 5, 1])), "label"),
])
def test_bad_inputs_are_refused(bad, match):
  args = dict(embeddings=np.ones((4, 2)), labels=np.array([0, 0, 1, 1]), num_classes=2,
              num_clusters=2)
  args.update(bad)
  with pytest.raises(ValueError, match=match):
    pseudo_groups(jax.random.key(0), args.pop("embeddings"), args.pop("labels"), **args)


def test_same_partition_helper():
  assert same_partition([0, 0, 1], [1, 1, 0]) and not same_partition([0, 0, 1], [0, 1, 1])
  assert all(same_partition(p, p) for p in itertools.permutations([0, 1, 2]))
