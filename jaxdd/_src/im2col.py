"""Convolution as one matmul over image patches (im2col), with autodiff gradients.

Why: training several networks in one program with ``jax.vmap`` batches the
convolution weights, and XLA lowers a convolution with a batched kernel to a
grouped convolution, a slow path on XLA:CPU and on GPUs (jax-ml/jax#13800,
#26568; RESULTS.md, "Evaluation: many networks in one program"). Written as
patches @ kernel, a vmapped convolution becomes a batched matmul instead, and
its gradients (the transposes of pad, strided slices, concatenation and a
matmul) contain no convolution at all, so it is also free of XLA:CPU's slow
in-loop convolution gradients. The price is the patch matrix, ``kh * kw`` times
the input. The ``im2col`` layout of :mod:`jaxdd.policy` routes jaxdd's
convolutions here; RESULTS.md, "Evaluation: many networks in one program",
measures it against the other layouts.
"""
from __future__ import annotations

import jax.numpy as jnp
from jax import lax

_NHWC_SPECS = ((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))


def patches(x, kh: int, kw: int, strides, padding):
  """(N, Ho, Wo, kh*kw*C) patches of NHWC ``x``, ordered (i, j, c) like an HWIO kernel."""
  sh, sw = strides
  xp = jnp.pad(x, ((0, 0), tuple(padding[0]), tuple(padding[1]), (0, 0)))
  ho = (xp.shape[1] - kh) // sh + 1
  wo = (xp.shape[2] - kw) // sw + 1
  taps = [lax.slice(xp, (0, i, j, 0), (xp.shape[0], i + sh * (ho - 1) + 1,
                                       j + sw * (wo - 1) + 1, xp.shape[3]), (1, sh, sw, 1))
          for i in range(kh) for j in range(kw)]
  return jnp.concatenate(taps, axis=-1)


def im2col_conv(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                dimension_numbers=None, feature_group_count=1, precision=None, **kwargs):
  """Drop-in ``lax.conv_general_dilated`` computed as patches @ kernel.

  For 2-D NHWC/HWIO convolutions with explicit padding, no dilation and one
  feature group (everything jaxdd's models use); anything else is passed to
  ``lax.conv_general_dilated`` unchanged. The same values as lax's convolution up
  to float rounding. Suitable as ``flax.linen.Conv(conv_general_dilated=...)``.

  Example:
    >>> import jax.numpy as jnp
    >>> im2col_conv(jnp.ones((1, 4, 4, 2)), jnp.ones((3, 3, 2, 1)), (1, 1),
    ...             ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))[0, 1, 1, 0]
    Array(18., dtype=float32)
  """
  dn = dimension_numbers
  if dn is not None and not hasattr(dn, "lhs_spec"):
    dn = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dn)
  simple = (lhs.ndim == 4 and not kwargs and not isinstance(padding, str)
            and all(int(v) == 1 for v in (lhs_dilation or (1, 1)))
            and all(int(v) == 1 for v in (rhs_dilation or (1, 1)))
            and feature_group_count == 1 and dn is not None
            and (tuple(dn.lhs_spec), tuple(dn.rhs_spec), tuple(dn.out_spec)) == _NHWC_SPECS)
  if not simple:
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
                                    rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
                                    feature_group_count=feature_group_count, precision=precision,
                                    **kwargs)
  kh, kw, c, o = rhs.shape
  cols = patches(lhs, kh, kw, tuple(int(s) for s in window_strides),
                 tuple((int(a), int(b)) for a, b in padding))
  return jnp.dot(cols, rhs.reshape(kh * kw * c, o), precision=precision)
