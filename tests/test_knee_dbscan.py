"""DBSCAN's radius from the data (the knee of the sorted k-distance curve) in a batch and over
whole classes (``--weighting fairdd_dbscan``, ``--fairdd-eps knee``), against a naive float64
numpy Kneedle written here and the naive numpy DBSCAN of tests/test_batch_clusters.py.

Tolerances. The knee is one of the valid rows' k-distances, chosen by comparing the points'
distances below the chord. The hand-made curves use integer distances and 2**j - 1 + 1 points,
so every scaled value is exact in float32 and the rule is checked for equality, ties
included. On random data the float32 distances carry a relative error below ~1e-6 (see
tests/test_batch_clusters.py), so the data is first checked to have no second point within
``MARGIN`` of the knee's distance below the chord (``fragile_knee``): then float32 picks the
same point as float64 and its eps equals the reference's up to that error (rtol 1e-5).
"""
from __future__ import annotations

import hashlib
import os
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_batch_clusters import MARGIN, expected_ids, fragile, pairwise, ref_dbscan

from jaxdd import cli, distill, matching, models, weighting
from jaxdd.config import get_config
from jaxdd.runs import keys, weights
from jaxdd.weighting import batch_pseudo_groups, dbscan, dbscan_pseudo_groups, knee_distance


# ---------------------------------------------------------------------------------------------
# The reference: Kneedle on the sorted k-distance curve, in float64.

def ref_kdist(x, mask, k):
  """The valid rows' k-distances (self excluded; fewer than k neighbours: the farthest)."""
  x = np.asarray(x, np.float64)[np.ones(len(x), bool) if mask is None else np.asarray(mask)]
  if len(x) < 2:
    return np.zeros(len(x))
  d = pairwise(x)
  np.fill_diagonal(d, np.inf)
  return np.sort(d, axis=1)[:, min(k, len(x) - 1) - 1]


def ref_knee(curve):
  """Kneedle (Satopaa et al. 2011) on a curve of values: ``(eps, gaps)``; the sorted curve
  scaled to the unit square, the point farthest below the chord, the first of equals."""
  s = np.sort(np.asarray(curve, np.float64))
  m = len(s)
  if m < 2:
    return 0.0, np.zeros(m)
  x = np.arange(m) / (m - 1)
  span = s[-1] - s[0]
  y = (s - s[0]) / span if span > 0 else np.zeros(m)
  gaps = x - y
  return float(s[int(np.argmax(gaps))]), gaps


def fragile_knee(gaps):
  """Why float32 might pick another point than float64, or None."""
  if len(gaps) < 3:
    return None
  top = np.sort(gaps)[-2:]
  return None if top[1] - top[0] > MARGIN else f"two points within {MARGIN} of the knee"


def chain(gaps):
  """1-D points whose successive gaps are ``gaps``; with increasing gaps their 1-NN distances
  (the k = 1 curve) are ``gaps[0], gaps[0], gaps[1], ..., gaps[-1]``."""
  return np.concatenate([[0.0], np.cumsum(gaps)])[:, None].astype(np.float32)


def knee(x, mask=None, k=1):
  return float(knee_distance(jnp.asarray(x), None if mask is None else jnp.asarray(mask), k))


# ---------------------------------------------------------------------------------------------
# 1. knee_distance.

def test_an_obvious_knee_is_where_the_dense_rows_end():
  # 50 rows one apart, then 4 far away (1-NN distances 1 x 50, then 51, 100, 200, 400): by
  # construction the knee is the last of the dense rows, eps 1
  x = np.concatenate([np.arange(50.0), [100.0, 200.0, 400.0, 800.0]])[:, None]
  assert knee(x) == 1.0 == ref_knee(ref_kdist(x, None, 1))[0]
  # padding rows among the dense rows and beside the far ones take no part
  pad = np.array([[10.25], [100.5], [200.5], [400.5], [800.5]])
  xp = np.concatenate([x, pad]).astype(np.float32)
  mask = np.arange(len(xp)) < len(x)
  assert knee(xp, mask) == 1.0
  # (counted, they would make the far rows dense and split the dense ones: another knee)
  assert knee(xp) == ref_knee(ref_kdist(xp, None, 1))[0] == 0.25


@pytest.mark.parametrize("gaps,want", [
    ((1, 2, 4, 9), 2.0),  # curve 1 1 2 4 9: x - y = 0, .25, .375, .375, 0: a tie, the first
    ((1, 2, 3, 4), 1.0),  # 1 1 2 3 4: 0, .25, .167, .083, 0
    ((1, 1, 1, 1, 1, 1, 1, 50), 1.0),  # flat then one far row: the last flat point
    ((1, 3, 5, 7, 9, 11, 13, 15), 1.0),  # a straight line after the first: the second point
])
def test_hand_made_curves_equal_the_reference_exactly(gaps, want):
  x = chain(gaps)
  curve = ref_kdist(x, None, 1)
  assert ref_knee(curve)[0] == want
  assert knee(x) == want


def test_flat_concave_and_short_curves():
  assert knee(np.arange(6.0)[:, None]) == 1.0  # flat: every 1-NN distance is 1
  # concave after its repeated first value (8 8 12 14 15): the knee is that first value
  x = chain((8, 12, 14, 15))
  assert ref_knee(ref_kdist(x, None, 1))[0] == 8.0 == knee(x)
  assert knee(np.array([[1.0], [4.0]])) == 3.0  # two rows: their one distance
  assert knee(np.array([[1.0], [4.0]]), np.array([True, False])) == 0.0  # one valid row
  assert knee(np.array([[1.0], [4.0], [9.0]]), k=5) == 5.0  # k above the neighbours: farthest


@pytest.mark.parametrize("seed,n,d,k,n_pad", [(0, 60, 2, 2, 0), (1, 90, 5, 2, 17),
                                              (2, 40, 3, 4, 9), (3, 128, 8, 1, 0)])
def test_random_points_equal_the_reference(seed, n, d, k, n_pad):
  rng = np.random.default_rng(seed)
  x = np.concatenate([rng.normal(size=(n - n // 5, d)) * 0.3,
                      rng.uniform(-4, 4, size=(n // 5, d))]).astype(np.float32)
  mask = np.ones(n + n_pad, bool)
  mask[rng.choice(n + n_pad, n_pad, replace=False)] = False
  xp = np.empty((n + n_pad, d), np.float32)
  xp[mask] = x
  xp[~mask] = x[rng.integers(0, n, n_pad)] + 1e-3  # padding beside real rows
  want, gaps = ref_knee(ref_kdist(xp, mask, k))
  assert fragile_knee(gaps) is None, "the test data is fragile; pick another seed"
  np.testing.assert_allclose(knee(xp, mask, k), want, rtol=1e-5)


def test_knee_under_jit_and_vmap_equals_eager():
  rng = np.random.default_rng(4)
  x = rng.normal(size=(3, 40, 4)).astype(np.float32)
  x[:, 30:] *= 6.0  # a sparse tail in every set
  mask = np.ones((3, 40), bool)
  mask[1, 35:] = False
  eager = [knee(x[i], mask[i], 2) for i in range(3)]
  f = jax.jit(jax.vmap(lambda xi, mi: knee_distance(xi, mi, 2)))
  np.testing.assert_allclose(np.asarray(f(x, mask)), np.array(eager, np.float32), rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# 2. DBSCAN with the knee rule, in a batch.

def unequal_blobs(seed):
  """One class: 95 rows around the origin and 5 in a tight far blob (a minority colour)."""
  rng = np.random.default_rng(seed)
  major = 0.1 * rng.normal(size=(95, 4))
  minor = np.array([3.0, 3.0, 0.0, 0.0]) + 0.01 * rng.normal(size=(5, 4))
  order = rng.permutation(100)
  return np.concatenate([major, minor])[order].astype(np.float32), order >= 95


def test_knee_rule_gives_the_minority_blob_its_own_group_under_jit_and_vmap():
  data = [unequal_blobs(s) for s in range(3)]
  x = np.stack([d[0] for d in data])
  minority = np.stack([d[1] for d in data])
  run = jax.jit(jax.vmap(lambda xi: dbscan(xi, eps_rule="knee", max_clusters=4)))
  g = np.asarray(run(x))
  np.testing.assert_array_equal(g, np.asarray(batch_pseudo_groups(x, None, max_clusters=4,
                                                                  eps_rule="knee")))
  for c in range(3):
    mine = set(g[c][minority[c]].tolist())
    assert len(mine) == 1 and not mine & set(g[c][~minority[c]].tolist()), (c, g[c])
    assert mine != {4}  # a cluster of its own, not noise
    # and each is the reference partition with the reference's knee radius
    eps = ref_knee(ref_kdist(x[c], None, 2))[0]
    label, core, d = ref_dbscan(x[c], eps, 3)
    assert fragile(d, eps, label, core) is None
    np.testing.assert_array_equal(g[c], expected_ids(label, core, 4))


def test_eps_rule_settings():
  x = jnp.asarray(unequal_blobs(0)[0])
  # knee's default neighbour rank is min_samples - 1 (the median's stays 5: the batch tests)
  np.testing.assert_array_equal(dbscan(x, eps_rule="knee", min_samples=5),
                                dbscan(x, eps=knee_distance(x, k=4), min_samples=5))
  with pytest.raises(ValueError, match="eps_rule must be one of"):
    dbscan(x, eps_rule="mean")
  with pytest.raises(ValueError, match="pass eps=None"):
    dbscan(x, eps=0.5, eps_rule="knee")
  with pytest.raises(ValueError, match="eps_rule must be one of"):
    batch_pseudo_groups(x[None], None, eps_rule="Knee")


def test_the_default_batch_groups_are_unchanged():
  # batch_pseudo_groups' defaults (the median rule) give the groups they gave before the knee
  # rule existed: the sha256 of their int32 bytes, recorded then
  rng = np.random.default_rng(20261128)
  c = rng.normal(size=(3, 4, 8))
  f = np.concatenate([c[:, :1] + 0.3 * rng.normal(size=(3, 50, 8)),
                      c[:, 1:2] + 0.3 * rng.normal(size=(3, 10, 8)),
                      rng.normal(scale=2.0, size=(3, 4, 8))], axis=1).astype(np.float32)
  mask = np.ones((3, 64), bool)
  mask[2, 60:] = False
  g = np.asarray(batch_pseudo_groups(jnp.asarray(f), jnp.asarray(mask), max_clusters=10))
  assert hashlib.sha256(g.astype(np.int32).tobytes()).hexdigest()[:16] == "8c3c080305c31b70"


@pytest.mark.slow  # ~30 s: a DM step's compilation; the rule itself is checked above
def test_dm_step_clusters_its_batches_with_the_knee_rule():
  # batch_eps reaches the step: its weights are FairDD's over batch_pseudo_groups(knee) of the
  # features the step matches, computed here with the public pieces
  rng = np.random.default_rng(0)
  y = np.repeat(np.arange(2), 16)
  x = (rng.normal(size=(32, 8, 8, 3)) * 0.1 + y[:, None, None, None]).astype(np.float32)
  x[(np.arange(32) % 16) < 4, :, :4] += 3.0  # a minority pattern in each class
  real = distill.real_data(x, y, num_classes=2)
  model = models.ConvNet(2, depth=1, width=8)
  kw = dict(num_classes=2, ipc=1, model=model, real_per_class=16, augment=None,
            batch_clusters=3)
  d = distill.dm(batch_eps="knee", **kw)
  assert d.step.signature != distill.dm(**kw).step.signature
  state = d.init(jax.random.key(0), real)
  _, m = d.step(state, real)
  k_model, k_real, k_aug = jax.random.split(distill.step_key(state), 3)
  rows, mask = distill.sample_per_class(k_real, real.index, 16)
  v = model.init(k_model, jnp.zeros((1, 8, 8, 3)))
  embed = lambda im: model.apply(v, im, return_features=True)[0]  # noqa: E731
  groups = batch_pseudo_groups(jax.vmap(embed)(real.images[rows]), mask, max_clusters=3,
                               eps_rule="knee")
  w, scale = weighting.group_balanced_weights(groups, mask, 4)
  want = matching.dm_loss(k_aug, state.syn.images.reshape(2, 1, 8, 8, 3), real.images[rows],
                          embed_fn=embed, weights=w, class_scale=scale)
  np.testing.assert_allclose(float(m["loss"]), float(want), rtol=1e-5)
  np.testing.assert_allclose(float(m["max_weight"]), float(w.max()), rtol=1e-6)
  with pytest.raises(ValueError, match="pass batch_clusters= too"):
    distill.dm(num_classes=2, ipc=1, batch_eps="knee")
  with pytest.raises(ValueError, match="batch_eps must be one of"):
    distill.dm(num_classes=2, ipc=1, batch_clusters=3, batch_eps="mean")


# ---------------------------------------------------------------------------------------------
# 3. Whole classes: dbscan_pseudo_groups.

def sphere_class(seed, sizes, d=5, spread=0.05, outliers=2):
  """Rows on the unit sphere: blobs of ``sizes`` around random directions, plus outliers."""
  rng = np.random.default_rng(seed)
  centres = rng.normal(size=(len(sizes), d))
  x = [c / np.linalg.norm(c) + spread * rng.normal(size=(m, d)) for c, m in zip(centres, sizes)]
  x.append(rng.normal(size=(outliers, d)))
  x = np.concatenate(x)
  x = x[rng.permutation(len(x))].astype(np.float32)
  return x * 3.0  # not yet unit rows: the function normalises them


def unit(x):
  return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)  # as the library


@pytest.mark.parametrize("eps_rule,max_clusters", [("knee", 64), ("knee", 2), ("median", 64)])
def test_whole_class_groups_equal_the_naive_dbscan(eps_rule, max_clusters):
  # three classes of odd sizes (the median is then one distance), in blocks of 16 rows: every
  # class padded to 112 rows, several blocks each
  classes = [sphere_class(0, (60, 30, 5)), sphere_class(1, (40, 20, 9)), sphere_class(2, (20, 9))]
  labels = np.concatenate([np.full(len(x), c) for c, x in enumerate(classes)])
  emb = np.concatenate(classes)
  order = np.random.default_rng(5).permutation(len(emb))  # classes interleaved
  got = dbscan_pseudo_groups(emb[order], labels[order], num_classes=4, block=16,
                             max_clusters=max_clusters, eps_rule=eps_rule)
  assert got.dtype == np.int32 and got.shape == (len(emb),)
  got = got[np.argsort(order)]
  for c, x in enumerate(classes):
    u = unit(x)
    kdist = ref_kdist(u, None, 2 if eps_rule == "knee" else 5)
    if eps_rule == "knee":
      eps, gaps = ref_knee(kdist)
      assert fragile_knee(gaps) is None
    else:
      eps = float(np.median(kdist))
    label, core, d = ref_dbscan(u, eps, 3)
    assert fragile(d, eps, label, core) is None, c
    assert label.max() >= 1  # more than one cluster
    np.testing.assert_array_equal(got[labels == c], expected_ids(label, core, max_clusters))


def test_whole_class_groups_are_per_class_and_checked():
  x = sphere_class(3, (50, 8))
  one = dbscan_pseudo_groups(x, np.zeros(len(x), int), num_classes=1, max_clusters=4)
  # another class beside it changes nothing (the padding to the largest class included)
  big = sphere_class(4, (150, 20))
  both = dbscan_pseudo_groups(np.concatenate([x, big]),
                              np.repeat([0, 1], [len(x), len(big)]), num_classes=3,
                              max_clusters=4, block=32)
  np.testing.assert_array_equal(both[:len(x)], one)
  with pytest.raises(ValueError, match="NaN or Inf"):
    dbscan_pseudo_groups(np.full((4, 2), np.nan), np.zeros(4, int), num_classes=1,
                         max_clusters=2)
  with pytest.raises(ValueError, match="eps_rule must be one of"):
    dbscan_pseudo_groups(x, np.zeros(len(x), int), num_classes=1, max_clusters=2,
                         eps_rule="mean")


# ---------------------------------------------------------------------------------------------
# 4. The runs: --weighting fairdd_dbscan and --fairdd-eps.

class _NoBias:
  """A training split whose bias labels must not be read."""

  def __init__(self, labels, aligned):
    self.labels, self.aligned = labels, aligned

  @property
  def bias(self):
    raise AssertionError("the bias labels were read")


def test_fairdd_dbscan_groups_and_weights_never_read_the_bias_labels():
  classes = [sphere_class(10 + c, (40, 6)) for c in range(3)]
  emb = np.concatenate(classes)
  labels = np.repeat(np.arange(3), [len(x) for x in classes])
  cfg = get_config("smoke", weighting="fairdd_dbscan", fairdd_clusters=3, real_per_class=8)
  assert weights.needs_embeddings(cfg)
  rd = types.SimpleNamespace(train=_NoBias(labels, labels == 0), num_classes=3)
  g = weights.run_groups(cfg, rd, emb)
  assert weights.run_num_groups(cfg, rd) == 4  # three clusters and the noise
  np.testing.assert_array_equal(g, dbscan_pseudo_groups(emb, labels, num_classes=3,
                                                        max_clusters=3))
  key = keys.run_keys(cfg)[3]
  w, _ = weights.run_weights(cfg, rd, emb, key, g)
  ref, _ = weighting.fairdd_batch_weights(key, labels, g, cfg.real_per_class, 3)
  np.testing.assert_array_equal(w, ref)


@pytest.mark.parametrize("fields,words", [
    (dict(weighting="fairdd_pseudo", fairdd_eps="knee"), ["--fairdd-eps", "fairdd_batch"]),
    (dict(weighting="fairdd_dbscan", fairdd_eps="knee"), ["--fairdd-eps", "fairdd_batch"]),
    (dict(weighting="kde", fairdd_clusters=4), ["--fairdd-clusters", "fairdd_dbscan"]),
    (dict(weighting="fairdd_dbscan", method="dc"), ["distribution matching only"]),
    (dict(weighting="fairdd_dbscan", init="weighted"), ["kde or oracle"]),
])
def test_config_refusals_are_one_line(fields, words):
  with pytest.raises(ValueError) as e:
    get_config("smoke", **fields)
  assert "\n" not in str(e.value) and all(w in str(e.value) for w in words), str(e.value)


def _status(argv):
  try:
    return cli.main(argv)
  except SystemExit as e:
    return e.code


def test_cli_sets_and_refuses_the_eps_rule(tmp_path, monkeypatch, capsys):
  monkeypatch.chdir(tmp_path)
  assert _status(["distill", "--preset", "smoke", "--weighting", "fairdd_batch",
                  "--fairdd-eps", "knee", "--print-config", "--workdir", "w"]) == 0
  assert '"fairdd_eps": "knee"' in capsys.readouterr().out
  cfg = get_config("smoke", weighting="fairdd_batch", fairdd_eps="knee")
  assert cfg.digest() != get_config("smoke", weighting="fairdd_batch").digest()
  for argv, word in ((["--fairdd-eps", "mean"], "--fairdd-eps"),
                     (["--fairdd-eps", "knee"], "fairdd_batch")):
    assert _status(["distill", "--preset", "smoke", *argv, "--workdir", "w", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and word in err and "Traceback" not in err, err
  assert os.listdir(tmp_path) == []
