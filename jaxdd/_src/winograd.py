"""Winograd F(2x2, 3x3) convolution for gradient-free forwards on CPU.

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

Where it pays (2-core CPU, measured in RESULTS.md §4, session 8): the DM
step's real-image forward, whose second 128-channel convolution on 14x14 maps
is most of the step's arithmetic. With fewer channels the 16 matmuls are too
thin to gain (a 14x14 convolution alone, timed at 16 to 128 channels: faster
than lax only from 96 channels), and odd map sizes waste a padded row and
column of tiles (the 7x7 layer measured slower), so :func:`applies` admits only
>= 96 input and output channels and even heights and widths. (The ``cpu`` run
preset's width-32 networks therefore keep lax's convolutions.) Values equal ``lax.conv_general_dilated``'s up to
float rounding (the transforms add and halve, so the error is a few ulps of the
largest term; tests/test_winograd.py). It is differentiable (all of it is
slicing, adds and matmuls), but jaxdd uses it only where no gradient is taken.

Used while tracing inside :func:`convs` (or a function wrapped by
:func:`traced_inside`), by
:func:`jaxdd._src.cpu_kernels.loop_safe_conv`, when the active
:mod:`jaxdd.policy` says ``forward_conv="winograd"`` (the ``cpu`` policy).
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import jax
import jax.numpy as jnp

_MIN_CHANNELS = 96  # input and output channels (see the module docstring)
# Images per transform block (a lax.map over blocks, plus one remainder block).
# In DM's real forward (chunks of 32) blocks of 16 beat one block of 32 and
# blocks of 8; our reading: the transformed tiles of 16 images with 128
# channels (6.4 MB) stay in cache (RESULTS.md §4, session 8).
_BLOCK = 16

# Inside convs() (a trace-time flag: tracing is single-threaded).
_ACTIVE: list[bool] = []


@contextlib.contextmanager
def convs() -> Iterator[None]:
  """While tracing, run eligible convolutions of ``loop_safe_conv`` as Winograd."""
  _ACTIVE.append(True)
  try:
    yield
  finally:
    _ACTIVE.pop()


def traced_inside(fn):
  """``fn`` whose calls are traced inside :func:`convs` (a gradient-free forward)."""
  def wrapped(*args, **kwargs):
    with convs():
      return fn(*args, **kwargs)
  return wrapped


def active() -> bool:
  """Whether :func:`convs` is open."""
  return bool(_ACTIVE)


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
  if n <= _BLOCK:
    return _conv3x3(x, w, precision)
  full = n - n % _BLOCK
  blocks = x[:full].reshape((full // _BLOCK, _BLOCK) + x.shape[1:])
  out = jax.lax.map(lambda b: _conv3x3(b, w, precision), blocks).reshape((full, h, wd, -1))
  if full < n:
    out = jnp.concatenate([out, _conv3x3(x[full:], w, precision)])
  return out


def _conv3x3(x, w, precision):
  n, h, wd, c = x.shape
  th, tw = h // 2, wd // 2
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  # d[i][j]: element (i, j) of every 4x4 input tile, tiles 2 apart: (N, th, tw, I).
  d = [[xp[:, i:i + 2 * th:2, j:j + 2 * tw:2, :] for j in range(4)] for i in range(4)]
  cols = [_input_1d([d[i][j] for i in range(4)]) for j in range(4)]  # cols[j][a]
  v = [_input_1d([cols[j][a] for j in range(4)]) for a in range(4)]  # v[a][b]
  tiles = jnp.stack([v[a][b] for a in range(4) for b in range(4)]).reshape(16, n * th * tw, c)
  m = jnp.einsum("kpc,kco->kpo", tiles, kernel_transform(w).astype(x.dtype),
                 precision=precision).reshape(4, 4, n, th, tw, -1)
  cols = [_output_1d([m[a, b] for a in range(4)]) for b in range(4)]  # cols[b][u]
  y = [_output_1d([cols[b][u] for b in range(4)]) for u in range(2)]  # y[u][v]
  out = jnp.stack([jnp.stack(y_u, axis=3) for y_u in y], axis=2)  # (N, th, 2, tw, 2, O)
  return out.reshape(n, h, wd, -1)
