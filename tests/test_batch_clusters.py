"""The batch DBSCAN (jaxdd.weighting.batch_clusters) against a naive float64 numpy DBSCAN
written here (breadth-first search over the eps-graph), against scikit-learn's DBSCAN where
it is installed, and its properties: the eps rule, jit/vmap, the cap, the weights it feeds.

Tolerances. The points are float32 and the references compute in float64 from the same
values. jaxdd computes distances in float32 from the exact differences: each difference and
square rounded once (3 u, u = 2**-24), a sum of d squares (d - 1 roundings), a square root
(halves the argument's error, adds u), so a distance's relative error is below about
(d / 2 + 3) u < 7e-7 for the d <= 16 used here. A point's fate depends on comparisons
``dist <= eps`` and, for borders, on which core neighbour is nearest; so every data set is
checked (``fragile``) to have no distance within a relative ``MARGIN`` = 1e-5 (over 10x that
error) of eps, unless it equals eps exactly (the median rule's eps IS a distance when the
number of valid rows is odd, and the same pair gives it in both precisions), and no border
whose nearest core neighbours of two different clusters lie within ``MARGIN`` of each other.
Under those conditions float32 and float64 give the same partition exactly, so partitions
are compared for equality, not with a score.
"""
from __future__ import annotations

import collections

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdd.weighting import (batch_pseudo_groups, dbscan, group_balanced_weights,
                             median_knn_distance)

MARGIN = 1e-5


# ---------------------------------------------------------------------------------------------
# The reference: textbook DBSCAN in float64.

def pairwise(x):
  x = np.asarray(x, np.float64)
  return np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))


def ref_median_knn(x, mask, k):
  """The eps rule in numpy: the median over valid rows of the k-th nearest valid neighbour."""
  x = np.asarray(x, np.float64)[mask]
  if len(x) < 2:
    return 0.0
  d = pairwise(x)
  np.fill_diagonal(d, np.inf)
  kk = min(k, len(x) - 1)
  return float(np.median(np.sort(d, axis=1)[:, kk - 1]))


def ref_dbscan(x, eps, min_samples, mask=None):
  """Naive DBSCAN: core points, clusters grown by BFS from each unvisited core point in row
  order, each border to its nearest core neighbour (the first one on exact ties).

  Returns (cluster of every row, -1 for noise and padding; core flags; distances)."""
  n = len(x)
  valid = np.ones(n, bool) if mask is None else np.asarray(mask, bool)
  d = pairwise(x)
  nb = (d <= eps) & valid[:, None] & valid[None, :]
  core = valid & (nb.sum(1) >= min_samples)
  comp = np.full(n, -1)
  k = 0
  for i in range(n):
    if core[i] and comp[i] < 0:
      comp[i] = k
      queue = collections.deque([i])
      while queue:
        p = queue.popleft()
        for q in np.flatnonzero(nb[p] & core):
          if comp[q] < 0:
            comp[q] = k
            queue.append(q)
      k += 1
  label = comp.copy()
  for i in np.flatnonzero(valid & ~core):
    cands = np.flatnonzero(nb[i] & core)
    if cands.size:
      label[i] = comp[cands[np.argmin(d[i, cands])]]
  return label, core, d


def expected_ids(label, core, max_clusters):
  """The documented ids from a reference partition: clusters by size (largest first), equal
  sizes by lowest core index; ranks >= max_clusters - 1 share id max_clusters - 1; noise and
  padding max_clusters."""
  keys = []
  for c in range(label.max() + 1):
    members = np.flatnonzero(label == c)
    keys.append((-members.size, np.flatnonzero(core & (label == c)).min(), c))
  rank = {c: r for r, (_, _, c) in enumerate(sorted(keys))}
  return np.array([max_clusters if l < 0 else min(rank[l], max_clusters - 1) for l in label])


def fragile(d, eps, label, core, mask=None):
  """Why float32 might legitimately disagree with float64 on this data, or None."""
  n = len(d)
  valid = np.ones(n, bool) if mask is None else np.asarray(mask, bool)
  pair = valid[:, None] & valid[None, :] & ~np.eye(n, dtype=bool)
  near = pair & (np.abs(d - eps) <= MARGIN * max(eps, 1e-12)) & (d != eps)
  if near.any():
    return f"{near.sum() // 2} distances within {MARGIN} of eps"
  for i in np.flatnonzero(valid & ~core):
    cands = np.flatnonzero((d[i] <= eps) & core & valid)
    if len(set(label[cands])) > 1:
      order = cands[np.argsort(d[i, cands], kind="stable")]
      first = d[i, order[0]]
      other = [d[i, j] for j in order if label[j] != label[order[0]]][0]
      if other - first <= MARGIN * first:
        return f"border {i}: core neighbours of two clusters at {first} and {other}"
  return None


def partition(label, keep=None):
  """The clusters as a set of frozensets of row indices (noise left out)."""
  keep = np.ones(len(label), bool) if keep is None else keep
  return {frozenset(np.flatnonzero((label == c) & keep).tolist())
          for c in set(label[keep].tolist()) if c >= 0}


# ---------------------------------------------------------------------------------------------
# Data.

def blobs(seed, sizes, d, spread, sep, outliers=0):
  """Gaussian blobs (centres ``sep`` apart on average) plus uniform outliers, shuffled."""
  rng = np.random.default_rng(seed)
  centres = rng.normal(size=(len(sizes), d)) * sep / np.sqrt(2 * d)
  x = [c + spread * rng.normal(size=(m, d)) for c, m in zip(centres, sizes)]
  lo, hi = centres.min() - 3 * spread, centres.max() + 3 * spread
  x.append(rng.uniform(lo, hi, size=(outliers, d)))
  x = np.concatenate(x)
  return x[rng.permutation(len(x))].astype(np.float32)


def safe_eps(x, target, mask=None):
  """An eps near ``target`` in the middle of the widest gap between valid pair distances in
  [0.8, 1.25] * target, so that no distance lies near it."""
  valid = np.ones(len(x), bool) if mask is None else mask
  d = pairwise(x[valid])
  v = np.sort(d[np.triu_indices(len(d), 1)])
  v = np.concatenate([[0.8 * target], v[(v > 0.8 * target) & (v < 1.25 * target)],
                      [1.25 * target]])
  i = np.argmax(np.diff(v))
  return float((v[i] + v[i + 1]) / 2)


def padded(seed, x, n_pad):
  """``x`` with ``n_pad`` padding rows at random places; each is a copy of a real row plus a
  tiny shift, so that padding counted as a neighbour would change the result."""
  rng = np.random.default_rng(seed + 1000)
  n = len(x) + n_pad
  mask = np.ones(n, bool)
  mask[rng.choice(n, n_pad, replace=False)] = False
  out = np.empty((n, x.shape[1]), np.float32)
  out[mask] = x
  out[~mask] = x[rng.integers(0, len(x), n_pad)] + 1e-3 * rng.normal(size=(n_pad, x.shape[1]))
  return out, mask


# (name, seed, blob sizes, d, spread, centre separation, outliers, padding)
CASES = [
    ("separated-small", 0, (15, 12, 9), 2, 0.3, 12.0, 4, 0),
    ("separated", 1, (60, 40, 25), 3, 0.3, 15.0, 6, 0),
    ("separated-masked", 2, (50, 30, 20), 4, 0.5, 20.0, 5, 23),
    ("overlapping", 3, (70, 50, 40), 2, 1.0, 2.5, 8, 0),
    ("overlapping-masked", 4, (90, 60, 40), 5, 1.0, 3.0, 10, 56),
    ("overlapping-16d", 6, (100, 80, 50), 16, 1.0, 4.0, 12, 0),
    ("overlapping-large", 6, (120, 80, 40), 2, 1.0, 2.0, 16, 0),
]


def case_data(case):
  _, seed, sizes, d, spread, sep, outliers, n_pad = case
  x = blobs(seed, sizes, d, spread, sep, outliers)
  if n_pad:
    return padded(seed, x, n_pad)
  return x, None


def given_eps(x, mask, min_samples):
  """A fixed eps for a case: near its median 5-NN distance (x 1.2 for min_samples > 3)."""
  valid = np.ones(len(x), bool) if mask is None else mask
  return safe_eps(x, ref_median_knn(x, valid, 5) * (1.0 if min_samples <= 3 else 1.2), mask)


def odd_valid(x, mask):
  """The rows with an odd number of valid ones (drops the last row if needed), so that the
  median rule's eps is one distance exactly rather than the mean of two close ones."""
  valid = np.ones(len(x), bool) if mask is None else mask
  if valid.sum() % 2 == 0:
    return x[:-1], None if mask is None else mask[:-1]
  return x, mask


def check_against_reference(x, mask, eps, min_samples, max_clusters, eps_ref=None):
  got = np.asarray(dbscan(jnp.asarray(x), eps=eps, min_samples=min_samples,
                          max_clusters=max_clusters,
                          mask=None if mask is None else jnp.asarray(mask)))
  eps_ref = eps if eps_ref is None else eps_ref
  label, core, d = ref_dbscan(x, eps_ref, min_samples, mask)
  why = fragile(d, eps_ref, label, core, mask)
  assert why is None, f"the test data is fragile ({why}); pick another seed"
  assert got.dtype == np.int32 and got.shape == (len(x),)
  want = expected_ids(label, core, max_clusters)
  # the partition up to relabelling (when no cap merges clusters), then the documented ids
  if label.max() < max_clusters:
    assert partition(np.where(got == max_clusters, -1, got)) == partition(label)
  np.testing.assert_array_equal(got, want)
  return got, label, core


# ---------------------------------------------------------------------------------------------
# 1. The naive numpy DBSCAN.

@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("min_samples", [3, 6])
def test_matches_naive_dbscan_given_eps(case, min_samples):
  x, mask = case_data(case)
  eps = given_eps(x, mask, min_samples)
  got, label, core = check_against_reference(x, mask, eps, min_samples, max_clusters=64)
  if mask is not None:
    assert np.all(got[~mask] == 64)  # padding: the noise id
  assert label.max() >= 0  # the case clusters something


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_matches_naive_dbscan_median_eps(case):
  x, mask = odd_valid(*case_data(case))
  valid = np.ones(len(x), bool) if mask is None else mask
  eps_ref = ref_median_knn(x, valid, 5)
  check_against_reference(x, mask, None, 3, max_clusters=64, eps_ref=eps_ref)


def test_overlapping_cases_are_not_trivial():
  """The harder cases do exercise borders, noise and several clusters."""
  for case in CASES[3:]:
    x, mask = case_data(case)
    label, core, _ = ref_dbscan(x, given_eps(x, mask, 3), 3, mask)
    valid = np.ones(len(x), bool) if mask is None else mask
    assert (label[valid] < 0).any() and (valid & ~core & (label >= 0)).any(), case[0]
    assert label.max() >= 1, case[0]


def test_long_chain_is_one_cluster():
  """A chain needs many propagation steps: a shuffled line of 300 points 1 apart."""
  rng = np.random.default_rng(7)
  t = np.arange(300, dtype=np.float64) + rng.uniform(-0.1, 0.1, 300)
  x = np.stack([t, np.sin(t / 7)], 1)[rng.permutation(300)].astype(np.float32)
  x = np.concatenate([x, [[1000.0, 0.0]]]).astype(np.float32)
  got, label, _ = check_against_reference(x, None, safe_eps(x, 1.35), 2, max_clusters=4)
  assert label.max() == 0
  np.testing.assert_array_equal(got, [0] * 300 + [4])


def test_border_joins_nearest_core():
  """Two clusters of cores, a border point within eps of both joins the nearer one's."""
  a = [[0.0], [0.05], [0.1], [0.15], [0.2]]
  b = [[1.0], [1.05], [1.1], [1.15], [1.2]]
  for pos, want in [(0.58, 0), (0.62, 1)]:  # nearer a's core 0.2 / b's core 1.0
    x = np.array(a + b + [[pos]], np.float32)
    ids = np.asarray(dbscan(x, eps=0.45, min_samples=5, max_clusters=3))
    # a and b have equal sizes without the border; the border makes its cluster the larger
    assert ids[10] == 0 and ids[want * 5] == 0 and ids[(1 - want) * 5] == 1
    label, core, _ = ref_dbscan(x, 0.45, 5)
    assert not core[10] and core[:10].all()


# ---------------------------------------------------------------------------------------------
# 2. scikit-learn's DBSCAN.

@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_matches_sklearn(case):
  cluster = pytest.importorskip("sklearn.cluster")
  x, mask = case_data(case)
  valid = np.ones(len(x), bool) if mask is None else mask
  eps = given_eps(x, mask, 4)
  got = np.asarray(dbscan(x, eps=eps, min_samples=4, max_clusters=64,
                          mask=None if mask is None else jnp.asarray(mask)))[valid]
  sk = cluster.DBSCAN(eps=eps, min_samples=4).fit(x[valid].astype(np.float64))
  label, core, d = ref_dbscan(x[valid], eps, 4)
  assert fragile(d, eps, label, core) is None
  sk_core = np.zeros(valid.sum(), bool)
  sk_core[sk.core_sample_indices_] = True
  np.testing.assert_array_equal(sk_core, core)
  np.testing.assert_array_equal(got == 64, sk.labels_ == -1)  # noise
  # scikit-learn gives a border to the first cluster reaching it, jaxdd to the nearest core:
  # compare every point but the borders within eps of cores of two clusters
  ambiguous = np.array([len(set(sk.labels_[(d[i] <= eps) & core])) > 1 and not core[i]
                        for i in range(len(d))])
  keep = ~ambiguous
  assert partition(np.where(got == 64, -1, got), keep) == partition(sk.labels_, keep)
  assert keep.mean() > 0.9


# ---------------------------------------------------------------------------------------------
# 3. The eps rule.

@pytest.mark.parametrize("n,n_valid,k", [(40, 40, 5), (40, 31, 5), (41, 41, 1), (64, 6, 5),
                                         (16, 4, 5), (8, 2, 5), (8, 3, 2), (9, 9, 8)])
def test_median_knn_distance(n, n_valid, k):
  rng = np.random.default_rng(n * 100 + n_valid + k)
  x = rng.normal(size=(n, 3)).astype(np.float32)
  mask = np.zeros(n, bool)
  mask[rng.choice(n, n_valid, replace=False)] = True
  got = float(median_knn_distance(x, mask=jnp.asarray(mask), k=k))
  # float32 distances: relative error < 2e-6 (module docstring); 1e-5 leaves a margin
  np.testing.assert_allclose(got, ref_median_knn(x, mask, k), rtol=1e-5)


def test_median_knn_distance_degenerate():
  x = jnp.arange(6.0)[:, None]
  for n_valid in (0, 1):
    mask = jnp.arange(6) < n_valid
    assert float(median_knn_distance(x, mask=mask)) == 0.0
    ids = dbscan(x, mask=mask, min_samples=1, max_clusters=2)
    assert ids.tolist() == [0] * n_valid + [2] * (6 - n_valid)  # a lone point: min_samples 1
  assert float(median_knn_distance(x[:1])) == 0.0


def test_median_eps_is_the_default():
  x, mask = odd_valid(*case_data(CASES[4]))
  eps = ref_median_knn(x, mask, 5)
  a = dbscan(x, mask=jnp.asarray(mask))
  b = dbscan(x, mask=jnp.asarray(mask), eps=float(median_knn_distance(x, mask=jnp.asarray(mask))))
  np.testing.assert_array_equal(a, b)
  label, core, d = ref_dbscan(x, eps, 3, mask)
  assert fragile(d, eps, label, core, mask) is None
  np.testing.assert_array_equal(a, expected_ids(label, core, 8))
  # eps_neighbors is the rank used
  e3 = ref_median_knn(x, mask, 3)
  label, core, d = ref_dbscan(x, e3, 3, mask)
  assert fragile(d, e3, label, core, mask) is None
  np.testing.assert_array_equal(dbscan(x, mask=jnp.asarray(mask), eps_neighbors=3),
                                expected_ids(label, core, 8))


# ---------------------------------------------------------------------------------------------
# 4. jit and vmap.

def test_jit_and_vmap_equal_eager():
  rng = np.random.default_rng(0)
  xs, masks = [], []
  for seed, sizes in enumerate([(40, 30, 20), (50, 30, 30), (60, 20, 12), (30, 30, 30)]):
    x = blobs(seed, sizes, 3, 0.7, 3.0 + seed, outliers=5)
    n_real = len(x)
    xs.append(np.concatenate([x, rng.normal(size=(128 - n_real, 3))]).astype(np.float32))
    masks.append(np.arange(128) < n_real)
  xs, masks = jnp.asarray(np.stack(xs)), jnp.asarray(np.stack(masks))
  eager = np.stack([dbscan(x, mask=m, max_clusters=4) for x, m in zip(xs, masks)])
  f = lambda x, m: dbscan(x, mask=m, max_clusters=4)
  np.testing.assert_array_equal(jax.jit(f)(xs[0], masks[0]), eager[0])
  np.testing.assert_array_equal(jax.vmap(f)(xs, masks), eager)
  np.testing.assert_array_equal(jax.jit(jax.vmap(f))(xs, masks), eager)
  # batch_pseudo_groups is the same map over classes, and vmaps over runs
  np.testing.assert_array_equal(batch_pseudo_groups(xs, masks, max_clusters=4), eager)
  runs = jax.vmap(lambda x, m: batch_pseudo_groups(x, m, max_clusters=4))
  np.testing.assert_array_equal(jax.jit(runs)(jnp.stack([xs, xs[::-1]]),
                                              jnp.stack([masks, masks[::-1]])),
                                np.stack([eager, eager[::-1]]))
  assert len(set(eager.ravel().tolist())) == 5  # the data make several clusters, and noise


def test_traced_eps():
  x, _ = case_data(CASES[3])
  epss = [safe_eps(x, t) for t in (0.2, 0.35, 0.6, 1.0)]
  for e in epss:
    label, core, d = ref_dbscan(x, e, 3)
    assert fragile(d, e, label, core) is None
  eager = np.stack([dbscan(x, eps=e, max_clusters=6) for e in epss])
  vm = jax.vmap(lambda e: dbscan(x, eps=e, max_clusters=6))(jnp.asarray(epss, jnp.float32))
  np.testing.assert_array_equal(vm, eager)
  assert len({tuple(r) for r in eager.tolist()}) == 4  # the eps values do matter
  jitted = jax.jit(lambda e: dbscan(x, eps=e, max_clusters=6))
  np.testing.assert_array_equal(jitted(jnp.float32(epss[1])), eager[1])
  # per-class eps in batch_pseudo_groups
  xs = jnp.stack([x] * 4)
  np.testing.assert_array_equal(
      batch_pseudo_groups(xs, None, eps=jnp.asarray(epss), max_clusters=6), eager)
  np.testing.assert_array_equal(batch_pseudo_groups(xs, None, eps=epss[2], max_clusters=6),
                                np.stack([eager[2]] * 4))


def test_traced_invalid_eps_gives_noise():
  x = jnp.arange(5.0)[:, None]
  f = jax.jit(lambda e: dbscan(x, eps=e, min_samples=1, max_clusters=2))
  assert f(jnp.float32(-1.0)).tolist() == [2] * 5
  assert f(jnp.float32(jnp.nan)).tolist() == [2] * 5


def test_refusals():
  x = jnp.zeros((4, 2))
  with pytest.raises(ValueError, match="eps"):
    dbscan(x, eps=-1.0)
  with pytest.raises(ValueError, match="eps"):
    dbscan(x, eps=float("nan"))
  with pytest.raises(ValueError, match="max_clusters"):
    dbscan(x, max_clusters=0)
  with pytest.raises(ValueError, match="shape"):
    dbscan(jnp.zeros(4))
  with pytest.raises(ValueError, match="mask"):
    dbscan(x, mask=jnp.ones(4, jnp.int32))
  with pytest.raises(ValueError, match="NaN"):
    dbscan(x.at[0, 0].set(jnp.nan))
  with pytest.raises(ValueError, match="eps"):
    batch_pseudo_groups(jnp.zeros((3, 4, 2)), None, eps=jnp.ones(2))
  with pytest.raises(ValueError, match="mask"):
    batch_pseudo_groups(jnp.zeros((3, 4, 2)), jnp.ones((3, 5), bool))


# ---------------------------------------------------------------------------------------------
# 5. The cap and the order of the ids.

SIZES = (40, 30, 22, 15, 10, 6)


@pytest.mark.parametrize("max_clusters", [1, 2, 3, 5, 6, 7])
def test_cap_merges_the_smallest(max_clusters):
  x = blobs(11, SIZES, 2, 0.2, 40.0, outliers=3)
  eps = safe_eps(x, 0.3)
  got, label, core = check_against_reference(x, None, eps, 3, max_clusters)
  assert label.max() == len(SIZES) - 1  # six true clusters
  assert got.min() >= 0 and got.max() <= max_clusters
  sizes = collections.Counter(got[got < max_clusters].tolist())
  # the kept ids are the largest clusters, by size; the last id holds all the rest
  kept = min(max_clusters - 1, len(SIZES))
  for r in range(kept):
    assert sizes[r] == sorted(np.bincount(label[label >= 0]))[::-1][r]
  if max_clusters <= len(SIZES):
    assert sizes[max_clusters - 1] == sum(sorted(np.bincount(label[label >= 0]))[::-1][kept:])


def test_equal_sizes_ordered_by_first_core_point():
  rng = np.random.default_rng(3)
  a = rng.normal(size=(10, 2)) * 0.1
  b = rng.normal(size=(10, 2)) * 0.1 + 5
  for first, second in [(a, b), (b, a)]:
    x = np.concatenate([first, second]).astype(np.float32)
    order = rng.permutation(20)
    x = x[order]
    ids = np.asarray(dbscan(x, eps=0.5, min_samples=3))
    # the blob holding row 0 (all points are core here) is cluster 0
    assert set(ids.tolist()) == {0, 1}
    assert np.all(ids[(order < 10) == (order[0] < 10)] == 0)


# ---------------------------------------------------------------------------------------------
# 6. The ids as FairDD's groups.

def test_feeds_group_balanced_weights():
  xs, masks = [], []
  for c in range(5):
    x = blobs(20 + c, (60, 25, 10), 4, 0.3, 10.0, outliers=3)[:96]
    m = np.random.default_rng(c).random(96) > 0.15 * (c % 2)
    xs.append(x)
    masks.append(m)
  xs, masks = jnp.asarray(np.stack(xs)), jnp.asarray(np.stack(masks))
  g = batch_pseudo_groups(xs, masks, max_clusters=3)
  assert g.shape == (5, 96) and g.dtype == jnp.int32
  assert int(g.min()) >= 0 and int(g.max()) <= 3
  w, present = group_balanced_weights(g, masks, 3 + 1)
  w, g, m = np.asarray(w, np.float64), np.asarray(g), np.asarray(masks)
  # float32 sums of <= 96 terms: 1e-5 is ~10x their rounding
  np.testing.assert_allclose(w.sum(1), 1.0, rtol=1e-5)
  assert np.all(w[~m] == 0) and np.all(w[m] > 0)
  for c in range(5):
    groups = sorted(set(g[c][m[c]].tolist()))
    assert present[c] == len(groups) >= 3
    for k in groups:  # every group present gets the same total
      np.testing.assert_allclose(w[c][m[c] & (g[c] == k)].sum(), 1 / len(groups), rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# 7. A colour-bias toy.

def test_colour_bias_toy():
  """256 samples of a class: 95 % aligned in one Gaussian blob, the 5 % conflicting in two
  small tight blobs far from it (7 and 6 points). With the median 5-NN eps and
  min_samples 3, the majority's core is one cluster, id 0, holding no minority point; each
  minority blob is a cluster of its own. The majority's sparse tail (points with fewer than
  2 neighbours within the median 5-NN distance: 13-18 % here, in 8-d) is noise, and a few
  tail points may form tiny clusters of their own: that is DBSCAN's rule, checked against
  the reference."""
  batches = []
  for seed in range(4):
    rng = np.random.default_rng(seed)
    d = 8
    major = rng.normal(size=(243, d)) * 0.1
    c1, c2 = rng.normal(size=(2, d))
    c1, c2 = 4 * c1 / np.linalg.norm(c1), 4 * c2 / np.linalg.norm(c2)
    minor = np.concatenate([c1 + 0.02 * rng.normal(size=(7, d)),
                            c2 + 0.02 * rng.normal(size=(6, d))])
    x = np.concatenate([major, minor]).astype(np.float32)
    order = rng.permutation(256)
    batches.append((x[order], order))
  ids = np.asarray(batch_pseudo_groups(jnp.asarray(np.stack([b for b, _ in batches])), None))
  w, present = group_balanced_weights(jnp.asarray(ids), jnp.ones(ids.shape, bool), 9)
  for (x, order), g, wi, p in zip(batches, ids, np.asarray(w), np.asarray(present)):
    major, blob1, blob2 = order < 243, (order >= 243) & (order < 250), order >= 250
    assert np.mean(g[major] == 0) > 0.8  # the majority: one cluster, the largest
    assert not np.any(g[~major] == 0)  # the minority: apart from it
    for blob in (blob1, blob2):  # each minority blob: one cluster of its own
      assert len(set(g[blob].tolist())) == 1 and g[blob][0] < 8
      assert not np.any(g[~blob] == g[blob][0])
    e = ref_median_knn(x, np.ones(256, bool), 5)
    label, core, dist = ref_dbscan(x, e, 3)
    assert fragile(dist, e, label, core) is None
    np.testing.assert_array_equal(g, expected_ids(label, core, 8))
    # as FairDD's groups: the majority cluster and each minority blob weigh 1 / G each
    for sel in (g == 0, blob1, blob2):
      np.testing.assert_allclose(wi[sel].sum(), 1 / p, rtol=1e-5)  # float32 sums, see above
