"""Winograd F(2x2, 3x3) convolution on CPU, with gradients in the transform domain.

A 3x3, stride-1, 1-padded convolution computes each 2x2 block of outputs from a
4x4 tile of its (padded) input. Winograd's minimal filtering algorithm (Lavin &
Gray, "Fast Algorithms for Convolutional Neural Networks", CVPR 2016) writes
that block as ``A^T [(G g G^T) * (B^T d B)] A``: the tile ``d`` and the kernel
``g`` move into a 4x4 transform domain, where the channel contraction is 16
independent matmuls, and back. Per output that is 16/4 = 4 multiply-adds per
input and output channel instead of 9, so 2.25x fewer, for the price of the two
elementwise transforms. The matrices (in the correlation form CNNs use):

  B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]
  G   = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]]
  A^T = [[1, 1, 1, 0], [0, 1, -1, -1]]

The gradients are written by hand in the same domain: with ``V`` the
transformed tiles, ``U`` the transformed kernel and ``dM = A dY A^T`` the
transformed output gradient, the kernel's is ``G^T (V^T dM) G`` and the
input's is ``B (dM U^T) B^T`` summed over overlapping tiles, so each gradient
is 16 matmuls with the same 2.25x fewer multiplies (autodiff of the forward
computes the same products but measured slower than lax's path; docs/results/speed-distillation.md, "One DM step").

Where it pays (2-core CPU, docs/results/speed-evaluation.md, "Speed on CPU"): the second
128-channel convolution of ConvNet-3 on 14x14 maps, most of the arithmetic of
DM's real-image forward and of an evaluation training step. With fewer
channels the 16 matmuls are too thin to gain (a 14x14 forward alone: faster
than lax only from 96 channels), and odd map sizes waste a padded row and
column of tiles (the 7x7 layer measured slower, forward and training), so
:func:`applies` admits only >= 96 input and output channels and even heights
and widths. (The ``cpu`` run preset's width-32 networks therefore keep lax's
convolutions.) Values equal ``lax.conv_general_dilated``'s up to float
rounding (the transforms add and halve, so the error is a few ulps of the
largest term; tests/test_winograd.py).

Used by :func:`jaxdd._src.cpu_kernels.loop_safe_conv` for eligible
convolutions traced inside :func:`convs` (or a function wrapped by
:func:`traced_inside`), which jaxdd opens where the active :mod:`jaxdd.policy`
says so: ``forward_conv="winograd"`` for gradient-free forwards (DM's real
images, prediction) and ``train_conv="winograd"`` for the networks
:mod:`jaxdd.train` trains (both on in the ``cpu`` policy).
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
from typing import Iterator

import jax
import jax.numpy as jnp

_MIN_CHANNELS = 96  # input and output channels (see the module docstring)
# Images per transform block (a lax.map over blocks, plus one remainder block).
# In DM's real forward (chunks of 32) blocks of 16 beat one block of 32 and
# blocks of 8; our reading: the transformed tiles of 16 images with 128
# channels (6.4 MB) stay in cache (docs/results/speed-distillation.md, "One DM step").
_BLOCK = 16

# Inside convs(): a trace-time flag, per thread and per asyncio task.
_ACTIVE: contextvars.ContextVar = contextvars.ContextVar("jaxdd_winograd", default=False)


@contextlib.contextmanager
def convs(enabled: bool = True) -> Iterator[None]:
  """While tracing, run eligible convolutions of ``loop_safe_conv`` as Winograd.

  ``enabled=False`` opens nothing (so callers can write
  ``with convs(policy.current().train_conv == "winograd"):``).
  """
  if not enabled:
    yield
    return
  token = _ACTIVE.set(True)
  try:
    yield
  finally:
    _ACTIVE.reset(token)


def traced_inside(fn):
  """``fn`` whose calls are traced inside :func:`convs` (a gradient-free forward)."""
  def wrapped(*args, **kwargs):
    with convs():
      return fn(*args, **kwargs)
  return wrapped


def active() -> bool:
  """Whether :func:`convs` is open."""
  return _ACTIVE.get()


def applies(x_shape, w_shape, strides, padding, dtype) -> bool:
  """A float32 3x3 stride-1 convolution padded by 1, >= 96 channels in and out, even H and W."""
  return (tuple(w_shape[:2]) == (3, 3) and tuple(strides) == (1, 1)
          and tuple(map(tuple, padding)) == ((1, 1), (1, 1))
          and min(x_shape[3], w_shape[3]) >= _MIN_CHANNELS
          and x_shape[1] % 2 == 0 and x_shape[2] % 2 == 0 and dtype == jnp.float32)


def _input_1d(d):
  # B^T applied along one axis of four tiles' rows: [d0 - d2, d1 + d2, d2 - d1, d1 - d3].
  return [d[0] - d[2], d[1] + d[2], d[2] - d[1], d[1] - d[3]]


def _output_1d(m):
  # A^T along one axis: [m0 + m1 + m2, m1 - m2 - m3].
  return [m[0] + m[1] + m[2], m[1] - m[2] - m[3]]


def _kernel_1d(g):
  # G along one axis: [g0, (g0 + g1 + g2) / 2, (g0 - g1 + g2) / 2, g2].
  return [g[0], (g[0] + g[1] + g[2]) * 0.5, (g[0] - g[1] + g[2]) * 0.5, g[2]]


def kernel_transform(w: jax.Array) -> jax.Array:
  """``G w G^T`` of an HWIO 3x3 kernel: (16, I, O), tile positions row-major."""
  rows = _kernel_1d([w[i] for i in range(3)])  # each (3, I, O), along the kernel's columns
  return jnp.stack([t for r in rows for t in _kernel_1d([r[j] for j in range(3)])])


def conv3x3(x: jax.Array, w: jax.Array, precision=None) -> jax.Array:
  """``lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)))`` for NHWC x, HWIO w.

  Differentiable with hand-written gradients that stay in the transform
  domain (see the module docstring), so a training step gains the 2.25x fewer
  multiplies in its two gradient products too.

  Args:
    x: (N, H, W, I) with even H and W.
    w: (3, 3, I, O).
    precision: passed to the transform-domain matmuls.

  Returns:
    (N, H, W, O).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> x = jax.random.normal(jax.random.key(0), (1, 4, 4, 16))
    >>> w = jax.random.normal(jax.random.key(1), (3, 3, 16, 8))
    >>> ref = jax.lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)),
    ...                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))
    >>> bool(jnp.allclose(conv3x3(x, w), ref, atol=1e-4))
    True
  """
  n, h, wd, c = x.shape
  if h % 2 or wd % 2 or w.shape[:2] != (3, 3):
    raise ValueError(f"conv3x3 needs even H and W and a 3x3 kernel, got x {x.shape}, w {w.shape}")
  return _conv3x3(x, w, precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv3x3(x, w, precision):
  # Not differentiated (DM's real forward, prediction): blocks of _BLOCK images.
  n, h, wd, _ = x.shape
  if n <= _BLOCK:
    return _block(x, w, precision)
  full = n - n % _BLOCK
  blocks = x[:full].reshape((full // _BLOCK, _BLOCK) + x.shape[1:])
  out = jax.lax.map(lambda b: _block(b, w, precision), blocks).reshape((full, h, wd, -1))
  if full < n:
    out = jnp.concatenate([out, _block(x[full:], w, precision)])
  return out


def _block(x, w, precision):
  n, h, wd, _ = x.shape
  m = jnp.einsum("kpc,kco->kpo", _tiles(x), kernel_transform(w).astype(x.dtype),
                 precision=precision)
  return _untile(m, n, h // 2, wd // 2)


def _conv3x3_fwd(x, w, precision):
  # Differentiated (the networks jaxdd.train trains under train_conv): the
  # trainer's micro-batches are the blocks. The tiles are kept
  # channels-first, (16, I, tiles), for the weight gradient's contraction over
  # tiles; the barriers keep XLA from fusing the transforms into the matmuls
  # (docs/results/speed-evaluation.md, "Evaluation side by side with the PyTorch reference").
  n, h, wd, _ = x.shape
  v, u = jax.lax.optimization_barrier((_tiles(x), kernel_transform(w).astype(x.dtype)))
  m = jax.lax.optimization_barrier(jnp.einsum("kpc,kco->kpo", v, u, precision=precision))
  return _untile(m, n, h // 2, wd // 2), (jnp.swapaxes(v, 1, 2), u, x.shape)


def _conv3x3_bwd(precision, res, g):
  # y = untile(tiles(x) @ U) with U = G w G^T, so with dM = untile^T(g):
  # dU = tiles(x)^T @ dM, dw = G^T dU G, and dx = tiles^T(dM @ U^T).
  vt, u, (n, h, wd, _) = res
  dm = jax.lax.optimization_barrier(_untile_t(g))
  du = jnp.einsum("kcp,kpo->kco", vt, dm, precision=precision)
  dv = jnp.einsum("kpo,kco->kpc", dm, u, precision=precision)
  dv, du = jax.lax.optimization_barrier((dv, du))
  return _tiles_t(dv, n, h // 2, wd // 2), kernel_transform_t(du).astype(u.dtype)


_conv3x3.defvjp(_conv3x3_fwd, _conv3x3_bwd)


def _tiles(x):
  """B^T d B of every 4x4 input tile (tiles 2 apart, x padded by 1): (16, N*H/2*W/2, I)."""
  n, h, wd, c = x.shape
  th, tw = h // 2, wd // 2
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  # d[i][j]: element (i, j) of every 4x4 input tile: (N, th, tw, I).
  d = [[xp[:, i:i + 2 * th:2, j:j + 2 * tw:2, :] for j in range(4)] for i in range(4)]
  cols = [_input_1d([d[i][j] for i in range(4)]) for j in range(4)]  # cols[j][a]
  v = [_input_1d([cols[j][a] for j in range(4)]) for a in range(4)]  # v[a][b]
  return jnp.stack([v[a][b] for a in range(4) for b in range(4)]).reshape(16, n * th * tw, c)


def _untile(m, n, th, tw):
  """A^T m A of every tile, the 2x2 output blocks put in place: (N, 2 th, 2 tw, O)."""
  m = m.reshape(4, 4, n, th, tw, -1)
  cols = [_output_1d([m[a, b] for a in range(4)]) for b in range(4)]  # cols[b][u]
  y = [_output_1d([cols[b][u] for b in range(4)]) for u in range(2)]  # y[u][v]
  out = jnp.stack([jnp.stack(y_u, axis=3) for y_u in y], axis=2)  # (N, th, 2, tw, 2, O)
  return out.reshape(n, 2 * th, 2 * tw, -1)


def _output_1d_t(dy):
  # The transpose of A^T along one axis (2 -> 4): A [dy0, dy1].
  return [dy[0], dy[0] + dy[1], dy[0] - dy[1], -dy[1]]


def _input_1d_t(dv):
  # The transpose of B^T along one axis (4 -> 4): B [dv0, dv1, dv2, dv3].
  return [dv[0], dv[1] - dv[2] + dv[3], dv[1] + dv[2] - dv[0], -dv[3]]


def _kernel_1d_t(du):
  # The transpose of G along one axis (4 -> 3): G^T [du0, du1, du2, du3].
  return [du[0] + (du[1] + du[2]) * 0.5, (du[1] - du[2]) * 0.5, (du[1] + du[2]) * 0.5 + du[3]]


def _untile_t(g):
  """The transpose of :func:`_untile`: A g_t A^T of every 2x2 output block, (16, tiles, O)."""
  n, h, wd, o = g.shape
  th, tw = h // 2, wd // 2
  blocks = g.reshape(n, th, 2, tw, 2, o)
  dy = [[blocks[:, :, u, :, v, :] for v in range(2)] for u in range(2)]  # dy[u][v]
  rows = [_output_1d_t([dy[u][v] for u in range(2)]) for v in range(2)]  # rows[v][a]
  dm = [_output_1d_t([rows[v][a] for v in range(2)]) for a in range(4)]  # dm[a][b]
  return jnp.stack([dm[a][b] for a in range(4) for b in range(4)]).reshape(16, n * th * tw, o)


def _overlap_add(t, axis):
  """Four tile rows (each (.., tiles, ..) along ``axis``), tiles 2 apart: the padded axis.

  Row ``2s`` of the padded input is row 0 of tile s plus row 2 of tile s - 1;
  row ``2s + 1`` is row 1 of tile s plus row 3 of tile s - 1.
  """
  def pad(a, lo, hi):
    widths = [(0, 0)] * a.ndim
    widths[axis] = (lo, hi)
    return jnp.pad(a, widths)

  even = pad(t[0], 0, 1) + pad(t[2], 1, 0)
  odd = pad(t[1], 0, 1) + pad(t[3], 1, 0)
  shape = list(even.shape)
  shape[axis] *= 2
  return jnp.stack([even, odd], axis=axis + 1).reshape(shape)


def _tiles_t(dv, n, th, tw):
  """The transpose of :func:`_tiles`: B dv B^T of every tile, overlapping tiles summed."""
  dv = dv.reshape(4, 4, n, th, tw, -1)
  rows = [_overlap_add(_input_1d_t([dv[a, b] for b in range(4)]), axis=2) for a in range(4)]
  xp = _overlap_add(_input_1d_t(rows), axis=1)  # (N, H + 2, W + 2, I)
  return xp[:, 1:-1, 1:-1, :]


def kernel_transform_t(du: jax.Array) -> jax.Array:
  """The transpose of :func:`kernel_transform`: ``G^T du G``, (16, I, O) -> HWIO (3, 3, I, O)."""
  du = du.reshape((4, 4) + du.shape[1:])
  cols = [_kernel_1d_t([du[a, b] for a in range(4)]) for b in range(4)]  # cols[b][i]
  return jnp.stack([jnp.stack(_kernel_1d_t([cols[b][i] for b in range(4)])) for i in range(3)])
