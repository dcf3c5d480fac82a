"""Tests for jaxdd.weighting's densities and weights against naive float64 numpy references.

Tolerances (float32 computation, NT-style table): the squared-distance
expansion loses about ``eps_f32 * (|x|^2 + |y|^2)`` to cancellation, which the
kernel divides by ``2v``; the self term is exact (diagonal pinned to 0), so the
self-included densities meet 1e-4 at every variance tested. A query far from all
support points has ``|log f|`` in the hundreds at ``v = 1e-3``, where one
float32 ulp is already 3e-5, so the tolerance also has a relative part of a few
ulps: ``atol = 1e-4``, ``rtol = 4 * eps_f32``.
"""
from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from jaxdd import weighting
from jaxdd.weighting import kernel

F32_EPS = float(np.finfo(np.float32).eps)
ATOL = 1e-4
RTOL = 4 * F32_EPS


def _tol(variance: float, sq_norm: float = 2.0) -> dict:
  """Tolerance of a float32 log density against another computation of it.

  The expansion of ``|x - y|^2`` loses a few ulps of ``|x|^2 + |y|^2`` (``sq_norm``: 2 for
  unit vectors) to cancellation, divided by ``2 v``; how many ulps depends on the summation
  order, which differs between instruction sets (AVX2 / AVX-512) and block layouts. 8 ulps,
  never below ``ATOL``, plus the relative part ``RTOL`` for the large ``|log f|`` of far
  queries.
  """
  return dict(rtol=RTOL, atol=max(ATOL, 8 * F32_EPS * sq_norm / (2 * variance)))


@pytest.fixture(autouse=True)
def _strict_numpy():
  # Catches silent (n,) vs (n, 1) broadcasting and implicit dtype mixes.
  with jax.numpy_rank_promotion("raise"), jax.numpy_dtype_promotion("strict"):
    yield


# ---------------------------------------------------------------------------
# float64 references
# ---------------------------------------------------------------------------

def _unit(rng, n, d):
  x = rng.standard_normal((n, d))
  return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _ref_log_density(queries, support, variance, support_mask=None):
  """Naive O(q n d) float64: log mean_j exp(-|x - y_j|^2 / (2 v))."""
  q = np.asarray(queries, np.float64)
  s = np.asarray(support, np.float64)
  if support_mask is not None:
    s = s[np.asarray(support_mask)]
  d2 = ((q[:, None, :] - s[None, :, :]) ** 2).sum(-1)
  logk = -d2 / (2 * variance)
  m = logk.max(axis=1, keepdims=True)
  return m[:, 0] + np.log(np.exp(logk - m).sum(axis=1)) - np.log(s.shape[0])


def _ref_weights(x, variance, temperature, normalize, groups=None):
  """f_i = mean K over the group; softmax((1/f)/T) or f^(-1/T)/sum, float64."""
  x = np.asarray(x, np.float64)
  groups = np.zeros(len(x), int) if groups is None else np.asarray(groups)
  w = np.zeros(len(x))
  for g in np.unique(groups):
    idx = np.flatnonzero(groups == g)
    d2 = ((x[idx, None, :] - x[None, idx, :]) ** 2).sum(-1)
    f = np.exp(-d2 / (2 * variance)).mean(axis=1)
    if normalize == "softmax":
      a = (1.0 / f) / temperature
      e = np.exp(a - a.max())
    else:
      e = f ** (-1.0 / temperature)
    w[idx] = e / e.sum()
  return w


# ---------------------------------------------------------------------------
# log_density
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("variance", [1e-3, 1e-2, 0.1, 1.0])
def test_log_density_matches_numpy_ragged_blocks(variance):
  rng = np.random.default_rng(0)
  support = _unit(rng, 53, 8)
  queries = _unit(rng, 37, 8)
  # block 16 divides neither 37 nor 53; a different support block exercises
  # the streaming log-sum-exp over 8 support blocks.
  for bq, bn in [(16, None), (16, 7)]:
    got = weighting.log_density(queries, support, variance=variance, block_size=bq,
                          support_block_size=bn)
    assert got.shape == (37,) and got.dtype == jnp.float32
    np.testing.assert_allclose(
        got, _ref_log_density(queries, support, variance), **_tol(variance))
  # Self-included density (the weights' case): same object as both inputs.
  got = weighting.log_density(support, support, variance=variance, block_size=16)
  ref = _ref_log_density(support, support, variance)
  assert np.max(np.abs(np.asarray(got) - ref)) < 1e-4
  assert np.all(np.asarray(got) <= 0)  # K <= 1 thanks to the clamp


def test_log_density_single_block_and_duplicates():
  # Exact duplicates: the expansion would give tiny negative distances; the
  # clamp keeps log k <= 0, so log f of n duplicates is exactly 0.
  x = np.tile(_unit(np.random.default_rng(1), 1, 16), (20, 1))
  got = weighting.log_density(x, x.copy(), variance=1e-6)
  np.testing.assert_allclose(got, np.zeros(20), atol=1e-6)


def test_log_density_support_mask_equals_unpadded():
  rng = np.random.default_rng(2)
  support = _unit(rng, 29, 8)
  queries = _unit(rng, 11, 8)
  # Padding rows close to the queries would change the result if counted.
  padded = np.concatenate([support, queries[:5], np.zeros((6, 8), np.float32)])
  mask = np.arange(len(padded)) < 29
  for v in [0.01, 0.1]:
    want = weighting.log_density(queries, support, variance=v, block_size=8)
    got = weighting.log_density(queries, padded, variance=v, block_size=8,
                          support_mask=jnp.asarray(mask))
    np.testing.assert_allclose(got, want, **_tol(v))
    np.testing.assert_allclose(got, _ref_log_density(queries, padded, v, mask), **_tol(v))


def test_log_density_far_queries_finite():
  # A query 100 units away at a small variance: log f ~ -5e6, still finite.
  rng = np.random.default_rng(3)
  support = _unit(rng, 10, 4)
  far = np.full((1, 4), 100.0, np.float32)
  got = np.asarray(weighting.log_density(far, support, variance=1e-3))
  ref = _ref_log_density(far, support, 1e-3)
  assert np.isfinite(got).all()
  np.testing.assert_allclose(got, ref, rtol=1e-5)


@pytest.mark.parametrize("axis_type", [AxisType.Auto, AxisType.Explicit])
def test_sharded_equals_single_device(axis_type):
  assert jax.device_count() == 8
  mesh = jax.make_mesh((8,), ("data",), axis_types=(axis_type,))
  rng = np.random.default_rng(4)
  support = jnp.asarray(_unit(rng, 45, 8))
  for q in (48, 37):  # a multiple of 8 and a ragged count
    queries = jnp.asarray(_unit(rng, q, 8))
    want = weighting.log_density(queries, support, variance=0.05, block_size=4)
    got = weighting.log_density_sharded(queries, support, variance=0.05, mesh=mesh,
                                  block_size=4)
    np.testing.assert_allclose(got, want, **_tol(0.05))
    if q == 48:
      assert got.sharding.spec == P("data")
      assert len(got.addressable_shards) == 8
    # log_density itself follows queries that arrive sharded over the mesh.
    if q == 48:
      sharded = jax.device_put(queries, NamedSharding(mesh, P("data")))
      got2 = weighting.log_density(sharded, support, variance=0.05, block_size=4)
      np.testing.assert_allclose(got2, want, **_tol(0.05))
      if axis_type == AxisType.Explicit:
        # Under jit the sharding is part of the tracer's type.
        got3 = jax.jit(functools.partial(weighting.log_density, block_size=4))(
            sharded, support, variance=0.05)
        np.testing.assert_allclose(got3, want, **_tol(0.05))
        assert got3.sharding.spec == P("data")
  # Self-included, sharded: the exact-zero diagonal must use global indices.
  want = weighting.log_density(support, support, variance=1e-3, block_size=4)
  got = weighting.log_density_sharded(support, support, variance=1e-3, mesh=mesh,
                                block_size=4)
  np.testing.assert_allclose(got, want, atol=1e-5)


def test_sharded_under_jit_matches():
  mesh = Mesh(np.array(jax.devices()), ("data",))
  rng = np.random.default_rng(5)
  queries = jnp.asarray(_unit(rng, 24, 8))
  support = jnp.asarray(_unit(rng, 13, 8))
  f = jax.jit(functools.partial(weighting.log_density_sharded, mesh=mesh,
                                block_size=2))
  got = f(queries, support, variance=0.1)
  np.testing.assert_allclose(
      got, _ref_log_density(queries, support, 0.1), rtol=RTOL, atol=ATOL)


# ---------------------------------------------------------------------------
# weights
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("normalize", ["softmax", "power"])
@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_weights_match_numpy(normalize, temperature):
  rng = np.random.default_rng(6)
  x = _unit(rng, 30, 6)
  groups = np.array([0] * 12 + [2] * 11 + [1] * 7)
  rng.shuffle(groups)
  for v in [0.05, 0.5]:
    got = weighting.weights(x, variance=v, temperature=temperature,
                      normalize=normalize, groups=jnp.asarray(groups),
                      block_size=8)
    want = _ref_weights(x, v, temperature, normalize, groups)
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=1e-7)
    sums = np.bincount(groups, weights=np.asarray(got, np.float64))
    np.testing.assert_allclose(sums, np.ones(3), atol=1e-6)
  # No groups: one group over everything.
  got = weighting.weights(x, variance=0.1, temperature=temperature,
                    normalize=normalize)
  np.testing.assert_allclose(
      got, _ref_weights(x, 0.1, temperature, normalize), rtol=2e-4, atol=1e-7)


@pytest.mark.parametrize("normalize", ["softmax", "power"])
def test_weights_from_log_density_matches_numpy(normalize):
  rng = np.random.default_rng(7)
  log_f = np.log(rng.uniform(0.01, 1.0, size=20))
  groups = np.repeat(np.arange(4), 5)
  for t in [0.1, 1.0, 10.0]:
    got = weighting.weights_from_log_density(
        jnp.asarray(log_f, jnp.float32), temperature=t, normalize=normalize,
        groups=jnp.asarray(groups), num_groups=4)
    want = np.zeros(20)
    for g in range(4):
      lf = log_f[groups == g]
      if normalize == "softmax":
        a = np.exp(-lf) / t
        e = np.exp(a - a.max())
      else:
        e = np.exp(lf) ** (-1.0 / t)
      want[groups == g] = e / e.sum()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-7)


def test_softmax_overflowing_inverse_density_is_exact():
  # exp(-log f) = exp(89..90) overflows float32, but with T = 1e38 the softmax
  # logits a = exp(u)/T are 4.5..12.2, a perfectly ordinary softmax.
  u = np.array([89.0, 89.5, 90.0, 88.0])
  t = 1e38
  a = np.exp(u) / t
  want = np.exp(a - a.max()) / np.exp(a - a.max()).sum()
  got = weighting.weights_from_log_density(jnp.asarray(-u, jnp.float32),
                                     temperature=t, normalize="softmax")
  # exp(u) turns the float32 rounding of u (|u| * eps = 1e-5 relative) into a relative
  # error of a (up to 12), i.e. ~1.3e-4 absolute in each logit; the softmax carries
  # about twice that as relative error.
  np.testing.assert_allclose(got, want, rtol=1e-3)


def test_weights_extreme_log_densities_finite():
  # log f ~ -1e6 (isolated point at a tiny variance): 1/f is exp(1e6).
  log_f = jnp.asarray([-1e6, -1e4, -3.0, 0.0, -1e6 + 1], jnp.float32)
  for normalize in ["softmax", "power"]:
    for t in [1e-3, 1.0, 1e3]:
      w = np.asarray(weighting.weights_from_log_density(log_f, temperature=t,
                                                  normalize=normalize))
      assert np.isfinite(w).all() and (w >= 0).all()
      np.testing.assert_allclose(w.sum(), 1.0, atol=1e-6)
      assert w[0] == w.max()  # the rarest point dominates
  # -inf (zero density) and ties are handled without NaN as well.
  w = weighting.weights_from_log_density(
      jnp.asarray([-jnp.inf, -jnp.inf, -1.0], jnp.float32), normalize="power")
  np.testing.assert_allclose(w, [0.5, 0.5, 0.0])


@pytest.mark.parametrize("normalize", ["softmax", "power"])
def test_isolated_points_get_top_weights(normalize):
  rng = np.random.default_rng(8)
  centre = _unit(rng, 1, 16)
  dense = centre + 1e-3 * rng.standard_normal((50, 16)).astype(np.float32)
  far = _unit(rng, 3, 16) * 3.0
  x = np.concatenate([dense[:20], far, dense[20:]])  # far rows are 20, 21, 22
  w = np.asarray(weighting.weights(x, variance=0.1, temperature=1.0, normalize=normalize))
  assert set(np.argsort(w)[-3:]) == {20, 21, 22}
  assert w[20:23].min() > 10 * np.delete(w, [20, 21, 22]).max()


@pytest.mark.parametrize("normalize", ["softmax", "power"])
def test_weights_finite_in_degenerate_cases(normalize):
  rng = np.random.default_rng(9)
  base = _unit(rng, 20, 8)
  dupes = np.concatenate([base[:10], base[:10]])  # every row twice
  isolated = np.concatenate(
      [base, np.full((1, 8), 100.0, np.float32)])  # one point 100 units away
  for x in (base, dupes, isolated):
    for v in (1e-6, 0.1):
      for t in (1e-2, 1.0):
        w = np.asarray(weighting.weights(x, variance=v, temperature=t,
                                   normalize=normalize))
        assert np.isfinite(w).all()
        np.testing.assert_allclose(w.sum(), 1.0, atol=1e-5)
  # At v = 1e-6 every point is alone in its kernel: f = 1/n exactly, uniform.
  w = weighting.weights(base, variance=1e-6, temperature=1.0, normalize=normalize)
  np.testing.assert_allclose(w, np.full(20, 1 / 20), rtol=1e-5)
  # (Duplicated pairs at distinct indices are not exactly uniform at v = 1e-6:
  # their float32 distance is rounding noise ~1e-7, i.e. ~0.05 in log k. Only
  # finiteness and normalisation are promised there, checked above.)
  # The isolated point has f = 1/21 like the others at v=0.1 only if they are
  # also isolated; here it must get the (shared) top weight.
  w = np.asarray(weighting.weights(isolated, variance=0.1, temperature=1.0,
                                   normalize=normalize))
  assert w[-1] == w.max()


def test_weights_mask_excludes_rows():
  rng = np.random.default_rng(10)
  x = _unit(rng, 18, 6)
  groups = np.array([0, 1] * 9)
  mask = np.ones(18, bool)
  mask[[3, 4, 11]] = False
  for normalize in ["softmax", "power"]:
    got = np.asarray(weighting.weights(
        x, variance=0.2, temperature=1.0, normalize=normalize, groups=jnp.asarray(groups),
        num_groups=3, mask=jnp.asarray(mask)))
    want = np.asarray(weighting.weights(
        x[mask], variance=0.2, temperature=1.0, normalize=normalize,
        groups=jnp.asarray(groups[mask]), num_groups=3))
    assert (got[~mask] == 0).all()
    np.testing.assert_allclose(got[mask], want, rtol=1e-5, atol=1e-8)


def test_singleton_group_weight_one_and_validate():
  x = _unit(np.random.default_rng(11), 5, 4)
  groups = jnp.asarray([0, 0, 1, 0, 2])
  w = weighting.weights(x, variance=0.1, temperature=1.0, normalize="softmax", groups=groups)
  np.testing.assert_allclose(np.asarray(w)[[2, 4]], [1.0, 1.0])
  np.testing.assert_allclose(np.asarray(w)[[0, 1, 3]].sum(), 1.0, rtol=1e-6)
  with pytest.raises(ValueError, match=r"group\(s\) \[1, 2\].*single sample"):
    weighting.weights(x, variance=0.1, groups=groups, validate=True)
  # Masking one of a pair leaves a singleton too.
  with pytest.raises(ValueError, match="single sample"):
    weighting.weights(x[:2], variance=0.1, mask=jnp.asarray([True, False]),
                validate=True)


def test_weights_vmap_over_classes_matches_loop():
  rng = np.random.default_rng(12)
  x = rng.standard_normal((3, 10, 5)).astype(np.float32)
  f = jax.vmap(functools.partial(weighting.weights, variance=0.3, temperature=0.7,
                                 normalize="softmax"))
  got = f(jnp.asarray(x))
  for c in range(3):
    np.testing.assert_allclose(got[c], weighting.weights(x[c], variance=0.3,
                                                   temperature=0.7, normalize="softmax"),
                               rtol=1e-5, atol=1e-8)


def test_class_scope_on_padded_classes_matches_per_class_weights():
  # scope='class': classes stored as a rectangular (C, max_count, d) array
  # with counts; densities via vmapped log_density + support_mask, then
  # weights_from_log_density with the same mask.
  rng = np.random.default_rng(16)
  counts = [7, 4, 9]
  z = np.zeros((3, 9, 5), np.float32)
  for c, k in enumerate(counts):
    z[c, :k] = _unit(rng, k, 5)
  mask = np.arange(9)[None, :] < np.asarray(counts)[:, None]

  def per_class(zc, mc):
    log_f = weighting.log_density(zc, zc, variance=0.2, block_size=4,
                            support_mask=mc)
    return weighting.weights_from_log_density(log_f, temperature=0.5, normalize="softmax",
                                              mask=mc)

  got = jax.jit(jax.vmap(per_class))(jnp.asarray(z), jnp.asarray(mask))
  for c, k in enumerate(counts):
    np.testing.assert_allclose(
        got[c, :k], _ref_weights(z[c, :k], 0.2, 0.5, "softmax"), rtol=2e-4)
    assert (np.asarray(got[c, k:]) == 0).all()


def test_jit_traces_once():
  rng = np.random.default_rng(13)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(x, groups, v, t):
    w = weighting.weights(x, variance=v, temperature=t, groups=groups, num_groups=2,
                    normalize="power")
    return w, weighting.log_density(x, x, variance=v, block_size=4)

  g = jnp.asarray([0, 1] * 6)
  for v, t in [(0.1, 1.0), (0.3, 0.5), (1.0, 2.0)]:
    x = jnp.asarray(_unit(rng, 12, 4))
    w, lf = step(x, g, v, t)
    np.testing.assert_allclose(
        w, _ref_weights(x, v, t, "power", np.asarray(g)), rtol=2e-4)
    np.testing.assert_allclose(lf, _ref_log_density(x, x, v), atol=ATOL)
  # The eager path caches its compiled core too: a new variance (a traced
  # argument) reuses the executable.
  x = jnp.asarray(_unit(rng, 9, 4))
  weighting.log_density(x, x, variance=0.1, block_size=5)
  size = kernel.log_density_core._cache_size()
  weighting.log_density(x, x, variance=0.7, block_size=5)
  assert kernel.log_density_core._cache_size() == size


def test_bfloat16_inputs_are_upcast():
  x = _unit(np.random.default_rng(14), 12, 4)
  xb = jnp.asarray(x, jnp.bfloat16)
  got = weighting.log_density(xb, xb, variance=0.1)
  assert got.dtype == jnp.float32
  ref = _ref_log_density(np.asarray(xb, np.float32), np.asarray(xb, np.float32),
                         0.1)
  np.testing.assert_allclose(got, ref, atol=ATOL)


# ---------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------

def test_bad_inputs_raise():
  x = jnp.asarray(_unit(np.random.default_rng(15), 6, 3))
  nan = x.at[2, 1].set(jnp.nan)
  inf = x.at[0, 0].set(jnp.inf)
  cases = [
      (lambda: weighting.weights(nan, variance=0.1), "NaN; check the surrogate"),
      (lambda: weighting.weights(inf, variance=0.1), "Inf"),
      (lambda: weighting.log_density(nan, x, variance=0.1), "NaN"),
      (lambda: weighting.log_density(x, nan, variance=0.1), "NaN"),
      (lambda: weighting.log_density(x, x[:, :2], variance=0.1), "feature dim"),
      (lambda: weighting.log_density(x[0], x, variance=0.1), r"shape \(n, d\)"),
      (lambda: weighting.log_density(x, x[:0], variance=0.1), "empty"),
      (lambda: weighting.log_density(x, x, variance=0.0), "variance"),
      (lambda: weighting.log_density(x, x, variance=-1.0), "variance"),
      (lambda: weighting.log_density(x, x, variance=float("nan")), "variance"),
      (lambda: weighting.weights(x, variance=-0.1), "variance"),
      (lambda: weighting.log_density(x, x, variance=0.1, block_size=0),
       "block_size"),
      (lambda: weighting.log_density(x, x, variance=0.1, support_block_size=2.5),
       "support_block_size"),
      (lambda: weighting.log_density(x, x, variance=0.1,
                               support_mask=jnp.ones(5, bool)), r"\(6,\)"),
      (lambda: weighting.log_density(x, x, variance=0.1,
                               support_mask=jnp.ones(6, jnp.int32)),
       "boolean"),
      (lambda: weighting.log_density(x, x, variance=0.1,
                               support_mask=jnp.zeros(6, bool)),
       "excludes every support row"),
      (lambda: weighting.weights(x, variance=0.1, temperature=0.0), "temperature"),
      (lambda: weighting.weights(x, variance=0.1, normalize="inverse"),
       "unknown normalize"),
      (lambda: weighting.weights(x, variance=0.1, groups=jnp.zeros(5, jnp.int32)),
       r"groups must have shape \(6,\)"),
      (lambda: weighting.weights(x, variance=0.1, groups=jnp.zeros(6)),
       "integer"),
      (lambda: weighting.weights(x, variance=0.1, groups=jnp.arange(6),
                           num_groups=3), r"\[0, 3\)"),
      (lambda: weighting.weights(x, variance=0.1, groups=-jnp.arange(6)),
       "lie in"),
      (lambda: weighting.weights(x, variance=0.1, num_groups=2),
       "without groups"),
      (lambda: weighting.weights(x, variance=0.1, mask=jnp.ones(7, bool)),
       r"mask must have shape \(6,\)"),
      (lambda: weighting.weights_from_log_density(jnp.asarray([0.0, jnp.nan])),
       "NaN"),
      (lambda: weighting.weights_from_log_density(jnp.zeros((2, 2))), r"\(n,\)"),
      (lambda: weighting.weights_from_log_density(jnp.zeros(3), temperature=-1.0),
       "temperature"),
      (lambda: weighting.weights_from_log_density(jnp.zeros(3), normalize="max"),
       "unknown normalize"),
      (lambda: weighting.log_density_sharded(
          x, x, variance=0.1, mesh=jax.make_mesh((8,), ("data",)),
          axis_name="batch"), "not an axis"),
      (lambda: jax.jit(lambda e, g: weighting.weights(e, variance=0.1, groups=g))(
          x, jnp.zeros(6, jnp.int32)), "num_groups is required"),
  ]
  for fn, match in cases:
    with pytest.raises(ValueError, match=match):
      fn()


@pytest.mark.parametrize("matmul", ["default", "bfloat16"])
def test_lower_precision_cross_term_stays_within_its_bound(matmul):
  rng = np.random.default_rng(3)
  x = rng.normal(size=(300, 32))
  x /= np.linalg.norm(x, axis=1, keepdims=True)
  v = 0.1
  d2 = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
  ref = np.log(np.mean(np.exp(-d2 / (2 * v)), axis=1))  # float64
  xj = jnp.asarray(x, jnp.float32)
  got = np.asarray(weighting.log_density(xj, xj, variance=v, block_size=128, matmul=matmul))
  # bfloat16 rounds each input to 8 bits: |x.y| errs by at most about 2^-8 |x||y|, the squared
  # distance by twice that, the log-kernel by that over 2v; the rows are centred first, so
  # |x| <= max centred norm. 'default' on CPU is float32: the float32 tolerance applies.
  xc = x - x.mean(axis=0)
  r2 = float((np.linalg.norm(xc, axis=1) ** 2).max())
  bound = (2 * 2.0 ** -8 * r2 / (2 * v)) if matmul == "bfloat16" else 0.0
  f32 = 8 * np.finfo(np.float32).eps * (2 * r2) / (2 * v) + 1e-5 * np.abs(ref).max()
  assert np.abs(got - ref).max() <= bound + f32
  with pytest.raises(ValueError, match="matmul"):
    weighting.log_density(xj, xj, variance=v, matmul="fp8")


# ---------------------------------------------------------------------------
# weights' defaults and config=; the variance check's messages and its traced outcome
# ---------------------------------------------------------------------------

def _cluster_and_outliers():
  """(23, 2) float32: a dense cluster of 20 (spread 0.02) and 3 outliers 0.3-0.4 away.

  Every point lies within 0.4 of the mean, so after the kernel's centring
  ``|x|^2 + |y|^2 <= 0.32``: the float32 log-density tolerance is ``_tol(v, 0.32)``.
  """
  rng = np.random.default_rng(21)
  cluster = 0.02 * rng.standard_normal((20, 2))
  outliers = np.array([[0.3, 0.0], [0.0, 0.35], [-0.25, -0.25]])
  return np.concatenate([cluster, outliers]).astype(np.float32)


def _power_rtol(variance: float, temperature: float, sq_norm: float) -> float:
  """Relative tolerance of power weights ``f^(-1/T) / sum f^(-1/T)`` in float32.

  A log-density error ``a`` (``_tol``'s atol) moves ``w_i`` by ``a / T`` through its own
  ``f_i`` and by at most ``a / T`` through the normaliser: ``2 a / T`` relative.
  """
  return 2 * _tol(variance, sq_norm)["atol"] / temperature


def test_weights_defaults_are_kde_configs():
  # weights(z) with no knobs is weights(z, config=KDEConfig()): power, T = 0.25, v = 0.01.
  # The old defaults (softmax at T = 1) gave this cluster about 1e-8 of the mass.
  x = _cluster_and_outliers()
  cfg = weighting.KDEConfig()
  assert (cfg.variance, cfg.temperature, cfg.normalize) == (0.01, 0.25, "power")
  want = _ref_weights(x, 0.01, 0.25, "power")
  got = np.asarray(weighting.weights(x))
  np.testing.assert_array_equal(got, np.asarray(weighting.weights(x, config=cfg)))
  np.testing.assert_allclose(got, want, rtol=_power_rtol(0.01, 0.25, 0.32), atol=0)
  # The cluster's share: small (the outliers are rarer) but not vanishing (8e-5).
  np.testing.assert_allclose(got[:20].sum(), want[:20].sum(),
                             rtol=_power_rtol(0.01, 0.25, 0.32))
  assert want[:20].sum() > 1e-5


def test_weights_take_their_knobs_from_config():
  rng = np.random.default_rng(22)
  x = _unit(rng, 30, 6)
  groups = jnp.asarray(np.repeat([0, 1, 2], 10))
  cfg = weighting.KDEConfig(variance=0.05, temperature=0.5, normalize="softmax", scope="class")
  got = np.asarray(weighting.weights(x, config=cfg, groups=groups))
  # The same numbers as the explicit knobs (the scope is not used: the density is over the
  # rows given), and the float64 reference at test_weights_match_numpy's tolerance.
  np.testing.assert_array_equal(got, np.asarray(weighting.weights(
      x, variance=0.05, temperature=0.5, normalize="softmax", groups=groups)))
  np.testing.assert_allclose(got, _ref_weights(x, 0.05, 0.5, "softmax", np.asarray(groups)),
                             rtol=2e-4, atol=1e-7)
  # Under jit and vmap too (the config is a static Python object).
  f = jax.jit(jax.vmap(functools.partial(weighting.weights, config=cfg)))
  np.testing.assert_allclose(f(jnp.asarray(x).reshape(3, 10, 6)).reshape(-1),
                             np.asarray(weighting.weights(x, config=cfg, groups=groups)),
                             rtol=1e-6, atol=1e-9)


def test_a_kde_config_is_a_pytree_that_jits_and_vmaps_over_its_knobs():
  # variance and temperature are leaves (traced under jit, batched under vmap); normalize and
  # scope are static. Each result equals the config built in Python, the same arithmetic.
  rng = np.random.default_rng(25)
  x = jnp.asarray(_unit(rng, 20, 5))
  a = weighting.KDEConfig(variance=0.05, temperature=0.5, normalize="softmax")
  b = a.replace(variance=0.2, temperature=0.3)
  leaves, treedef = jax.tree.flatten(a)
  assert leaves == [0.05, 0.5] and jax.tree.unflatten(treedef, leaves) == a
  traces = []

  @jax.jit
  def f(z, cfg):
    traces.append(1)
    return weighting.weights(z, config=cfg)
  for cfg in (a, b):
    np.testing.assert_allclose(f(x, cfg), weighting.weights(x, config=cfg), rtol=1e-6,
                               atol=1e-9)
  assert len(traces) == 1  # a new value of a knob does not recompile
  f(x, a.replace(normalize="power"))
  assert len(traces) == 2  # a static field does
  many = jax.tree.map(lambda *v: jnp.stack([jnp.asarray(u, jnp.float32) for u in v]), a, b)
  assert many.normalize == "softmax" and many.variance.shape == (2,)
  got = jax.vmap(lambda c: weighting.weights(x, config=c))(many)
  for i, cfg in enumerate((a, b)):
    np.testing.assert_allclose(got[i], weighting.weights(x, config=cfg), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(got[i], _ref_weights(np.asarray(x), cfg.variance,
                                                    cfg.temperature, "softmax"),
                               rtol=2e-4, atol=1e-7)
  # built in Python, a config is still validated
  with pytest.raises(ValueError, match="variance"):
    weighting.KDEConfig(variance=-1.0)


@pytest.mark.parametrize("knob", [dict(variance=0.1), dict(temperature=1.0),
                                  dict(normalize="softmax"),
                                  dict(variance=0.1, normalize="power")])
def test_weights_refuse_config_with_explicit_knobs(knob):
  x = _unit(np.random.default_rng(23), 6, 3)
  with pytest.raises(ValueError, match=r"config.*and.*not both") as err:
    weighting.weights(x, config=weighting.KDEConfig(), **knob)
  for name in knob:
    assert name in str(err.value)
  with pytest.raises(ValueError, match="config must be a jaxdd.weighting.KDEConfig"):
    weighting.weights(x, config={"variance": 0.1})


def test_variance_messages_name_the_variance_argument():
  x = _unit(np.random.default_rng(24), 6, 3)
  labels = np.zeros(6, int)
  mesh = jax.make_mesh((jax.device_count(),), ("data",))
  calls = {
      "weights": lambda v: weighting.weights(x, variance=v),
      "log_density": lambda v: weighting.log_density(x, x, variance=v),
      "log_density_sharded": lambda v: weighting.log_density_sharded(x, x, variance=v,
                                                                     mesh=mesh),
      "class_log_density": lambda v: weighting.class_log_density(x, labels, num_classes=1,
                                                                 variance=v),
      "class_scope_weights": lambda v: weighting.class_scope_weights(x, labels, variance=v,
                                                                     num_classes=1),
      "batch_scope_weights": lambda v: weighting.batch_scope_weights(
          jax.random.key(0), x, labels, batch_size=4, variance=v, num_classes=1),
  }
  for who, call in calls.items():
    for v in (0.0, -0.1, float("nan"), float("inf")):
      with pytest.raises(ValueError, match=r"^variance\b.*finite number > 0") as err:
        call(v)
      msg = str(err.value)
      assert "variance=0.01" in msg or "e.g. 0.01" in msg, (who, msg)
      assert "kernel_variance" not in msg and "KDEConfig" not in msg, (who, msg)


def test_other_knob_messages_name_real_arguments():
  x = _unit(np.random.default_rng(25), 6, 3)
  labels = np.zeros(6, int)
  with pytest.raises(ValueError, match=r"^temperature\b"):
    weighting.class_scope_weights(x, labels, variance=0.1, temperature=0.0, num_classes=1)
  with pytest.raises(ValueError, match=r"^normalize must be one of"):
    weighting.batch_scope_weights(jax.random.key(0), x, labels, batch_size=4, variance=0.1,
                                  normalize="inverse", num_classes=1)
  aligned = np.ones(6, bool)
  with pytest.raises(ValueError, match=r"^variances\[1\] \(a kernel variance\)"):
    weighting.weight_sweep(jax.random.key(0), x, labels, aligned, num_classes=1,
                           variances=[0.1, 0.0], temperatures=[1.0])
  with pytest.raises(ValueError, match=r"^temperatures\[0\]"):
    weighting.weight_sweep(jax.random.key(0), x, labels, aligned, num_classes=1,
                           variances=[0.1], temperatures=[-1.0])
  # batch_weights / class_weights name their own arguments (and where distill takes them).
  rows, mask = jnp.zeros((1, 2), jnp.int32), jnp.ones((1, 2), bool)
  with pytest.raises(ValueError, match=r"pass embeddings="):
    weighting.batch_weights(rows, mask, weighting.KDEConfig())
  with pytest.raises(ValueError, match=r"pass log_density="):
    weighting.batch_weights(rows, mask, weighting.KDEConfig(scope="class"))
  with pytest.raises(ValueError, match=r"log_density is None"):
    weighting.class_weights(None, rows, jnp.asarray([2]), weighting.KDEConfig())


def test_traced_invalid_variance_or_temperature_gives_nan():
  # A traced variance (or temperature) cannot be checked; the documented outcome of a
  # value the eager check would refuse is NaN in every unmasked entry (masked rows stay 0),
  # never plausible numbers (a negative variance used to give uniform weights).
  x = jnp.asarray(_unit(np.random.default_rng(26), 8, 3))
  mask = jnp.asarray([True] * 6 + [False] * 2)
  mesh = jax.make_mesh((jax.device_count(),), ("data",))
  w_fn = jax.jit(lambda z, v, t: weighting.weights(z, variance=v, temperature=t, mask=mask,
                                                   normalize="softmax"))
  wp_fn = jax.jit(lambda z, v, t: weighting.weights(z, variance=v, temperature=t, mask=mask))
  ld_fn = jax.jit(lambda z, v: weighting.log_density(z, z, variance=v))
  sh_fn = jax.jit(lambda z, v: weighting.log_density_sharded(z, z, variance=v, mesh=mesh))
  wl_fn = jax.jit(lambda lf, t: weighting.weights_from_log_density(lf, temperature=t,
                                                                   mask=mask))
  bad = [0.0, -0.1, float("nan"), float("inf"), -float("inf")]
  for v in bad:
    for fn in (w_fn, wp_fn):
      w = np.asarray(fn(x, v, 0.5))
      assert np.isnan(w[:6]).all() and (w[6:] == 0).all(), (v, w)
    assert np.isnan(np.asarray(ld_fn(x, v))).all(), v
    assert np.isnan(np.asarray(sh_fn(x, v))).all(), v
  log_f = jnp.log(jnp.linspace(0.1, 1.0, 8))
  for t in bad:
    for fn in (w_fn, wp_fn):
      w = np.asarray(fn(x, 0.1, t))
      assert np.isnan(w[:6]).all() and (w[6:] == 0).all(), (t, w)
    w = np.asarray(wl_fn(log_f, t))
    assert np.isnan(w[:6]).all() and (w[6:] == 0).all(), (t, w)
  # Valid traced values are untouched: equal to the eager (checked) result.
  np.testing.assert_allclose(wp_fn(x, 0.1, 0.5), weighting.weights(
      x, variance=0.1, temperature=0.5, mask=mask), rtol=1e-6, atol=1e-9)
  np.testing.assert_allclose(ld_fn(x, 0.1), weighting.log_density(x, x, variance=0.1),
                             rtol=1e-6, atol=1e-6)
  # The same values passed concretely (closed over) are checked even under jit.
  with pytest.raises(ValueError, match=r"^variance must be a finite number > 0"):
    jax.jit(lambda z: weighting.weights(z, variance=0.0))(x)
