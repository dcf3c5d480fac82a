"""A convolution with few input channels whose input gradient is one matrix product.

Why: the gradient of a network's first layer with respect to its input images (3 channels)
is a convolution with 3 output channels. On a GPU, cuDNN runs it with a kernel tiled for many
more output channels than 3: profiled on an H200 in the headline cell's DM step, it took 1.0 ms
a step, as long as the real batch's whole forward convolutions (docs/results/speed-gpu.md,
"Where a step's time goes on a GPU"). Taken instead as one matrix product into patch space,
``g @ W^T`` (``N*Ho*Wo x kh*kw*C``), and the ``kh*kw`` shifted patch slices summed (col2im),
it reads the output gradient once and writes a few channels: memory-bound work with no idle
tile. The same values up to float rounding (tests/test_thin_conv.py).

Who uses it: the layout policy's ``input_grad="matmul"`` routes jaxdd's convolutions
(:class:`jaxdd.layers.TorchConv`, :func:`jaxdd.models.policy_conv`) through
:func:`thin_input_conv`, which takes this path for the convolutions it suits and leaves every
other one to ``lax.conv_general_dilated``. The forward pass and the weight gradient are lax's
own. XLA:CPU's kernels (:mod:`jaxdd._src.cpu_kernels`) take the same input gradient for their
own reason and share :func:`col2im_input_grad`.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

#: The input gradient is a matrix product up to this many input channels.
FEW_CHANNELS = 8
_NHWC_SPECS = ((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))
_NHWC = ("NHWC", "HWIO", "NHWC")


def _all_ones(d) -> bool:
  return d is None or all(int(v) == 1 for v in d)


def nhwc_args(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
              dimension_numbers=None, feature_group_count=1, **kwargs):
  """``(strides, padding)`` as int tuples when ``lax.conv_general_dilated``'s arguments
  describe a plain 2-D NHWC/HWIO convolution (no dilation, one feature group, padding
  explicit or a ``"SAME"``/``"VALID"`` string, made explicit); else None.

  Example:
    >>> import jax.numpy as jnp
    >>> nhwc_args(jnp.ones((1, 4, 4, 2)), jnp.ones((3, 3, 2, 1)), (1, 1), "SAME",
    ...           dimension_numbers=("NHWC", "HWIO", "NHWC"))
    ((1, 1), ((1, 1), (1, 1)))
  """
  dn = dimension_numbers
  if dn is not None and not hasattr(dn, "lhs_spec"):
    dn = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dn)
  simple = (lhs.ndim == 4 and not kwargs
            and _all_ones(lhs_dilation) and _all_ones(rhs_dilation) and feature_group_count == 1
            and dn is not None and (tuple(dn.lhs_spec), tuple(dn.rhs_spec), tuple(dn.out_spec))
            == _NHWC_SPECS)
  if simple and isinstance(padding, str) and padding.upper() in ("SAME", "SAME_LOWER", "VALID"):
    # flax's nn.Conv passes its default padding="SAME" as the string: the same pads, explicit.
    padding = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], window_strides, padding)
  if not simple or isinstance(padding, str):
    return None
  return (tuple(int(s) for s in window_strides),
          tuple((int(a), int(b)) for a, b in padding))


def few_channels(x_shape, strides, padding) -> bool:
  """Stride 1, non-negative padding and at most :data:`FEW_CHANNELS` input channels."""
  return (tuple(strides) == (1, 1) and x_shape[3] <= FEW_CHANNELS
          and min(min(p) for p in padding) >= 0)


def col2im_input_grad(g, w, x_shape, padding, precision):
  """The gradient of a stride-1 NHWC/HWIO convolution with respect to its input ``x`` (of
  shape ``x_shape``), from the output's gradient ``g``: one matrix product into patch space,
  ``g @ W^T``, then the ``kh*kw`` shifted patch slices summed and the padding cropped."""
  kh, kw, c = w.shape[:3]
  n, h, wd, _ = x_shape
  ho, wo = g.shape[1], g.shape[2]
  cols = jnp.dot(g.reshape(-1, g.shape[3]), w.reshape(kh * kw * c, -1).T, precision=precision)
  cols = cols.reshape(n, ho, wo, kh, kw, c)
  hp, wp = h + padding[0][0] + padding[0][1], wd + padding[1][0] + padding[1][1]
  dxp = sum(jnp.pad(cols[:, :, :, i, j, :], ((0, 0), (i, hp - ho - i), (j, wp - wo - j), (0, 0)))
            for i in range(kh) for j in range(kw))
  return dxp[:, padding[0][0]:padding[0][0] + h, padding[1][0]:padding[1][0] + wd, :]


def _lax_conv(x, w, strides, padding, precision):
  return lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=_NHWC,
                                  precision=precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _thin(x, w, strides, padding, precision):
  return _lax_conv(x, w, strides, padding, precision)


def _thin_fwd(x, w, strides, padding, precision):
  return _lax_conv(x, w, strides, padding, precision), (x, w)


def _thin_bwd(strides, padding, precision, res, g):
  x, w = res
  dx = col2im_input_grad(g, w, x.shape, padding, precision)
  # the weight gradient is lax's own (and dropped by XLA where nothing asks for it, as in
  # DM's step, whose networks are not trained)
  _, pullback = jax.vjp(lambda w_: _lax_conv(x, w_, strides, padding, precision), w)
  (dw,) = pullback(g)
  return dx.astype(x.dtype), dw.astype(w.dtype)


_thin.defvjp(_thin_fwd, _thin_bwd)


def thin_input_conv(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                    dimension_numbers=None, feature_group_count=1, precision=None, **kwargs):
  """Drop-in ``lax.conv_general_dilated`` whose input gradient, for a stride-1 NHWC/HWIO
  convolution with at most :data:`FEW_CHANNELS` input channels, is a matrix product and a
  col2im (:func:`col2im_input_grad`); the same values and gradients up to float rounding.
  Any other convolution is ``lax.conv_general_dilated`` unchanged.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> x, w = jnp.ones((1, 4, 4, 3)), jnp.ones((3, 3, 3, 8))
    >>> f = lambda x: thin_input_conv(x, w, (1, 1), ((1, 1), (1, 1)),
    ...                               dimension_numbers=("NHWC", "HWIO", "NHWC")).sum()
    >>> g = jax.grad(f)(x)
    >>> float(g[0, 0, 0, 0]), float(g[0, 1, 1, 0])  # 4 and 9 taps, times 8 output channels
    (32.0, 72.0)
  """
  args = nhwc_args(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                   dimension_numbers, feature_group_count, **kwargs)
  if args is None or not few_channels(lhs.shape, *args):
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
                                    rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
                                    feature_group_count=feature_group_count, precision=precision,
                                    **kwargs)
  return _thin(lhs, rhs, *args, precision)
