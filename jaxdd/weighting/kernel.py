"""The blocked Gaussian kernel behind :mod:`jaxdd.weighting` (no input checks: callers validate).

Blocked evaluation. The pairwise log
kernel is written for one query block against one support block. Query blocks
are tiled with ``lax.map``; support blocks are folded in with a ``lax.scan``
carrying a streaming log-sum-exp (running max ``m`` and the sum of
``exp(log k - m)``, rescaled whenever ``m`` grows). Live memory is therefore
O(block_size x support_block_size) per device for the kernel tile, plus the
O((q + n) d) inputs; never O(q x n). Passing ``support_block_size=n`` gives the
O(block x n) variant (one tile row per query block), which can be faster on CPU
for moderate ``n`` at the price of memory.

Squared distances use ``|x|^2 + |y|^2 - 2 x.y^T`` so the O(q n d) work is one
matrix multiply (BLAS / MXU speed), instead of materialising the ``(q, n, d)``
differences. The expansion suffers from cancellation for nearby points: the
result can come out slightly *negative* for (near-)duplicates, which would give
a kernel value above 1 (``log k > 0``) and break ``log f <= 0``. It is therefore
clamped at 0. To shrink the cancellation error itself, queries and support are
first centred on the (unmasked) support mean (distances are translation
invariant), and the matmul is asked for ``Precision.HIGHEST`` (on GPU/TPU the
default would use TF32/bf16 passes, whose error is amplified by ``1/(2v)``).
The remaining error is about ``eps_f32 * |z - mean|^2 / (2 v)`` in ``log k``,
e.g. ~1e-4 for unit vectors at ``v = 1e-3`` and ~0.05 at ``v = 1e-6``. The self
pair is exact: when the queries *are* the support (the same array object passed
twice to :func:`jaxdd.weighting.log_density`, and always in
:func:`jaxdd.weighting.weights`) the diagonal
distance is set to exactly 0, so ``K(z_i, z_i) = 1`` at any variance. Exact
duplicates stored at different rows still see the rounding noise; at tiny
variances their relative weights are therefore noisy (but finite and
normalised).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from jaxdd._src.bound import bound


def positive_or_nan(x: jax.Array) -> jax.Array:
  """``x`` where it is a finite number > 0, else NaN.

  The traced stand-in for the callers' check of ``variance`` and ``temperature``
  (which runs on concrete values only): a value that check would refuse makes
  every result it touches NaN, never plausible numbers (a negative variance
  would otherwise give a kernel above 1, an infinite one a flat density).
  Valid values pass through unchanged.
  """
  return jnp.where(jnp.isfinite(x) & (x > 0), x, jnp.nan)


def pad_rows(x: jax.Array, rows: int, value=0) -> jax.Array:
  pad = rows - x.shape[0]
  if pad == 0:
    return x
  widths = [(0, pad)] + [(0, 0)] * (x.ndim - 1)
  return jnp.pad(x, widths, constant_values=value)


def blocked_log_sum(
    queries: jax.Array,
    support: jax.Array,
    support_valid: jax.Array,
    inv_two_var: jax.Array,
    query_groups: jax.Array | None,
    support_groups: jax.Array | None,
    *,
    block_q: int,
    block_n: int,
    self_pairs: bool = False,
    row_offset: jax.Array | int = 0,
    matmul: str = "highest",
) -> jax.Array:
  """``log sum_j K(x_i, y_j)`` over valid (and same-group) ``j``, blocked.

  Shapes: queries (q, d), support (n, d), support_valid (n,) bool, groups (q,)
  and (n,) int32 or None. Returns (q,); -inf where no support entry counts.
  Inputs are assumed already centred. Memory per step: one (bq, bn) tile.
  ``self_pairs=True`` declares queries and support to be the same rows, so the
  diagonal distance is set to exactly 0 instead of the expansion's rounding
  noise (which is ~eps/(2v) in log k: 0.05 at v = 1e-6); ``row_offset`` is
  the global index of the first query row (non-zero on a shard). ``matmul``
  is the cross term's precision (:data:`MATMULS`); the squared norms and the
  log-sum-exp stay in the input dtype.
  """
  q, d = queries.shape
  n = support.shape[0]
  dtype = queries.dtype
  bq = min(block_q, q)
  bn = min(block_n, n)
  nq = -(-q // bq)
  nn = -(-n // bn)

  # Ragged sizes: pad queries with zeros (rows are dropped at the end) and the
  # support with invalid rows (masked to -inf inside the tile).
  xq = pad_rows(queries, nq * bq).reshape(nq, bq, d)
  ys = pad_rows(support, nn * bn).reshape(nn, bn, d)
  vs = pad_rows(support_valid, nn * bn, False).reshape(nn, bn)
  grouped = query_groups is not None
  if grouped:
    gq = pad_rows(query_groups, nq * bq, -1).reshape(nq, bq)
    gs = pad_rows(support_groups, nn * bn, -1).reshape(nn, bn)
  else:
    # Dummy per-block scalars keep one code path for the scan/map carries.
    gq = jnp.zeros((nq, bq), jnp.int32)
    gs = jnp.zeros((nn, bn), jnp.int32)
  yy = jnp.sum(ys * ys, axis=-1)  # (nn, bn), computed once for all queries
  cross = cross_term(matmul, dtype)

  def query_block(args):
    xb, gqb, qi = args
    xxb = jnp.sum(xb * xb, axis=-1)  # (bq,)
    rows = row_offset + qi * bq + jnp.arange(bq)

    def support_step(carry, sblock):
      m, s = carry
      yb, yyb, vb, gsb, sj = sblock
      xy = cross(xb, yb)
      # Clamp: cancellation can make the expansion slightly negative for
      # near-duplicates; a negative distance would mean K > 1.
      d2 = jnp.maximum(xxb[:, None] + yyb[None, :] - 2 * xy, 0)
      if self_pairs:
        cols = sj * bn + jnp.arange(bn)
        d2 = jnp.where(rows[:, None] == cols[None, :], 0, d2)
      logk = -d2 * inv_two_var
      keep = vb[None, :]
      if grouped:
        keep = keep & (gqb[:, None] == gsb[None, :])
      logk = jnp.where(keep, logk, -jnp.inf)
      # Streaming log-sum-exp. While nothing counted yet, m = -inf; use a
      # finite shift then so that exp(-inf - (-inf)) = NaN never happens.
      m_new = jnp.maximum(m, jnp.max(logk, axis=1))
      shift = jnp.where(jnp.isfinite(m_new), m_new, 0)
      s = s * jnp.exp(m - shift) + jnp.sum(jnp.exp(logk - shift[:, None]),
                                           axis=1)
      return (m_new, s), None

    init = (jnp.full((bq,), -jnp.inf, dtype), jnp.zeros((bq,), dtype))
    (m, s), _ = lax.scan(support_step, init,
                         (ys, yy, vs, gs, jnp.arange(nn)))
    # s = 0 and m = -inf when no support entry counted: log(0) + -inf = -inf.
    return jnp.log(s) + jnp.where(jnp.isfinite(m), m, -jnp.inf)

  out = lax.map(query_block, (xq, gq, jnp.arange(nq)))
  return out.reshape(nq * bq)[:q]


#: Precisions of the cross term x . y: 'highest' (full float32), 'default' (the backend's
#: default: TF32 on recent NVIDIA GPUs, float32 on CPU), 'bfloat16' (inputs rounded to
#: bfloat16, products accumulated in float32).
MATMULS = ("highest", "default", "bfloat16")


def cross_term(matmul: str, dtype):
  """``f(xb, yb) -> xb @ yb.T`` at the precision ``matmul`` names, in ``dtype``."""
  dims = (((1,), (1,)), ((), ()))
  if matmul == "highest":
    return lambda a, b: lax.dot_general(a, b, dims, precision=lax.Precision.HIGHEST)
  if matmul == "default":
    return lambda a, b: lax.dot_general(a, b, dims, precision=lax.Precision.DEFAULT)
  if matmul == "bfloat16":
    return lambda a, b: lax.dot_general(a.astype(jnp.bfloat16), b.astype(jnp.bfloat16), dims,
                                        preferred_element_type=dtype)
  raise ValueError(f"matmul must be one of {list(MATMULS)}, got {matmul!r}")


def centre(queries, support, support_valid):
  """Shifts both sets by the mean of the valid support rows.

  Distances are translation invariant; centring shrinks ``|x|^2`` and with it the
  float cancellation error of ``|x|^2 + |y|^2 - 2 x.y``.
  """
  w = support_valid.astype(support.dtype)
  count = jnp.maximum(jnp.sum(w), 1)
  centre = jnp.sum(support * w[:, None], axis=0) / count
  return queries - centre[None, :], support - centre[None, :]


@functools.partial(jax.jit,
                   static_argnames=("block_q", "block_n", "self_pairs", "matmul"))
def log_density_core(queries, support, support_valid, variance, *, block_q,
                      block_n, self_pairs, matmul="highest"):
  queries, support = centre(queries, support, support_valid)
  inv_two_var = (0.5 / positive_or_nan(variance)).astype(queries.dtype)
  lse = blocked_log_sum(queries, support, support_valid, inv_two_var,
                                None, None, block_q=block_q, block_n=block_n,
                                self_pairs=self_pairs, matmul=matmul)
  count = jnp.sum(support_valid.astype(queries.dtype))
  return lse - jnp.log(count)


def sharded_log_density_fn(mesh: Mesh, axis_name: str, block_q: int, block_n: int,
                           self_pairs: bool, matmul: str = "highest"):
  """The jitted shard_map'ed kernel ``(queries, support, support_valid, variance) -> (q,)``
  for a mesh, axis and blocks (one program per combination, kept by JAX's cache)."""
  return bound(_sharded_log_density, mesh=mesh, axis_name=axis_name, block_q=block_q,
               block_n=block_n, self_pairs=self_pairs, matmul=matmul)


@functools.partial(jax.jit, static_argnames=("mesh", "axis_name", "block_q", "block_n",
                                             "self_pairs", "matmul"))
def _sharded_log_density(queries, support, support_valid, variance, *, mesh: Mesh,
                         axis_name: str, block_q: int, block_n: int, self_pairs: bool,
                         matmul: str):
  def local(queries, support, support_valid, variance):
    # Runs per device on its query rows; the support is replicated, so the
    # centring mean and the count are identical on every device.
    queries, support = centre(queries, support, support_valid)
    inv_two_var = (0.5 / positive_or_nan(variance)).astype(queries.dtype)
    offset = lax.axis_index(axis_name) * queries.shape[0]
    lse = blocked_log_sum(queries, support, support_valid,
                                  inv_two_var, None, None, block_q=block_q,
                                  block_n=block_n, self_pairs=self_pairs,
                                  row_offset=offset, matmul=matmul)
    return lse - jnp.log(jnp.sum(support_valid.astype(queries.dtype)))

  # check_vma=False: the scan carry starts replicated (constants) and becomes
  # device-varying after the first support block; the per-device computation
  # needs no collectives, so the varying-axes check buys nothing here.
  mapped = jax.shard_map(local, mesh=mesh,
                         in_specs=(P(axis_name), P(), P(), P()),
                         out_specs=P(axis_name), check_vma=False)

  # Explicit axes (the jax.make_mesh default) are moved with jax.reshard;
  # Auto axes reject reshard and take a sharding constraint instead.
  explicit = any(t == AxisType.Explicit for t in mesh.axis_types)
  split = NamedSharding(mesh, P(axis_name))
  rep = NamedSharding(mesh, P())

  def lay_out(x, sharding):
    if explicit:
      return jax.reshard(x, sharding)
    return lax.with_sharding_constraint(x, sharding)

  # Lay the inputs out as the shard_map expects (a no-op when they already are).
  q = queries.shape[0]
  ndev = mesh.shape[axis_name]
  q_pad = max(-(-q // ndev), 1) * ndev
  if q_pad != q:
    # Ragged q: pad to a multiple of the axis size (padding rows are
    # dropped below). Explicit axes cannot hold an uneven shard, so the
    # padding happens on a replicated copy.
    queries = pad_rows(lay_out(queries, rep), q_pad)
  queries = lay_out(queries, split)
  support, support_valid, variance = (
      lay_out(a, rep) for a in (support, support_valid, variance))
  out = mapped(queries, support, support_valid, variance)
  if q_pad != q:
    # An uneven slice cannot stay sharded on an Explicit axis: return the
    # (small, (q,)) result replicated instead.
    out = lay_out(out, rep)[:q]
  return out


def log1mexp(x: jax.Array) -> jax.Array:
  """``log(1 - exp(x))`` for ``x <= 0``, accurate at both ends (Maechler 2012).

  Returns -inf at x = 0.
  """
  return jnp.where(x > -np.log(2.0), jnp.log(-jnp.expm1(x)),
                   jnp.log1p(-jnp.exp(x)))


@functools.partial(jax.jit, static_argnames=("normalize", "num_groups"))
def weights_core(log_f, temperature, groups, mask, *, normalize, num_groups):
  dtype = log_f.dtype
  neg_inf = jnp.array(-jnp.inf, dtype)
  temperature = positive_or_nan(temperature)
  log_t = jnp.log(temperature.astype(dtype))

  def group_max(x):
    # Masked rows hold -inf, so they never win a group max.
    if groups is None:
      return jnp.broadcast_to(jnp.max(x), x.shape)
    return jax.ops.segment_max(x, groups, num_segments=num_groups)[groups]

  if normalize == "power":
    # w ∝ f^(-1/T) = exp(-log f / T): a plain softmax of logits -log f / T.
    logits = jnp.where(mask, -log_f / temperature.astype(dtype), neg_inf)
    top = group_max(logits)
    # Entries equal to the group max get exactly 0 (this also covers a +inf
    # max, where logits - top would be inf - inf = NaN).
    shifted = jnp.where(logits == top, 0, logits - top)
  else:
    # w = softmax(a), a_i = exp(u_i) / T with u_i = -log f_i. a_i can overflow
    # float32 (u ~ 1e6 for an isolated point at a tiny variance), but softmax
    # only needs a_i - max_g a = -exp(M - log T) * (1 - exp(u_i - M)), with
    # M = max_g u. In log space:
    #   a_i - a_max = -exp( (M - log T) + log(1 - exp(u_i - M)) ),
    # which is <= 0, exactly 0 for the group maximum, and at worst -inf (weight
    # 0, the correct limit) when the exponent overflows. No inf - inf, no NaN,
    # for any finite log f and T > 0.
    u = jnp.where(mask, -log_f, neg_inf)
    top = group_max(u)
    delta = jnp.where(u == top, 0, u - top)  # <= 0; -inf for masked rows
    log_gap = (top - log_t) + log1mexp(jnp.minimum(delta, 0))
    shifted = jnp.where(delta == 0, 0, -jnp.exp(log_gap))
  shifted = jnp.where(mask, shifted, neg_inf)
  e = jnp.exp(shifted)  # each group's top element contributes exactly 1
  if groups is None:
    denom = jnp.sum(e)
  else:
    denom = jax.ops.segment_sum(e, groups, num_segments=num_groups)[groups]
  return jnp.where(mask, e / jnp.maximum(denom, 1), 0)


@functools.partial(jax.jit,
                   static_argnames=("num_groups", "block_q", "block_n"))
def group_log_density_core(embeddings, variance, groups, mask, *, num_groups,
                            block_q, block_n):
  w = mask.astype(embeddings.dtype)
  if groups is None:
    emb, _ = centre(embeddings, embeddings, mask)
  else:
    # Only same-group pairs are ever compared, so each group may be shifted by
    # its own mean: tighter than one global centre for the cancellation error.
    sums = jax.ops.segment_sum(embeddings * w[:, None], groups,
                               num_segments=num_groups)
    counts = jax.ops.segment_sum(w, groups, num_segments=num_groups)
    means = sums / jnp.maximum(counts, 1)[:, None]
    emb = embeddings - means[groups]
  inv_two_var = (0.5 / positive_or_nan(variance)).astype(emb.dtype)
  lse = blocked_log_sum(emb, emb, mask, inv_two_var, groups, groups,
                                block_q=block_q, block_n=block_n,
                                self_pairs=True)
  if groups is None:
    count = jnp.sum(w)
  else:
    count = jax.ops.segment_sum(w, groups, num_segments=num_groups)[groups]
  # Masked rows (or rows of an empty group) get a harmless 0; they are dropped
  # by the mask in the normalisation anyway.
  return jnp.where(mask, lse - jnp.log(jnp.maximum(count, 1)), 0)
