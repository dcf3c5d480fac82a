"""XLA:CPU convolution kernels with hand-written gradients, fast inside loops.

Why: on XLA:CPU, a convolution's gradients inside a while loop (``lax.scan``,
``lax.map``: evaluation training, gradient matching, chunked DM) are not
rewritten into the Eigen-friendly form and run through a naive emitter, far
slower than the same convolution outside a loop (jax-ml/jax#12868, seen with
jax 0.10.2; timings in docs/results/speed-evaluation.md, "Convolution gradients inside loops"). :func:`loop_safe_conv` is a
drop-in ``lax.conv_general_dilated`` with a custom VJP that computes the same
values and gradients with plain matmuls and forward convolutions; it is a
workaround for one backend, not a faster convolution in general.

Who uses it: :class:`jaxdd.models.TorchConv` (every convolution of jaxdd's
models) and :func:`policy_conv` (the opt-in for a model of your own:
``nn.Conv(..., conv_general_dilated=policy_conv)``), both only when the active
:mod:`jaxdd.policy` says ``conv="loop_safe"`` (the ``cpu`` policy). A plain
``nn.Conv`` of a model handed to jaxdd is left as it is. Public names are
re-exported by :mod:`jaxdd.models` (``jaxdd.models.loop_safe_conv``,
``jaxdd.models.policy_conv``).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from jaxdd import policy
from jaxdd._src import thin_conv, winograd

# On XLA:CPU a convolution's weight gradient inside a while loop (our
# lax.scan over steps) is not rewritten into the Eigen-friendly form and runs
# through a naive emitter, far slower than outside a loop (jax-ml/jax#12868;
# jax 0.10.2; timings in docs/results/speed-evaluation.md, "Convolution gradients inside loops"). We therefore give
# NHWC/HWIO convolutions a custom VJP: the weight gradient is kh matmuls of
# strided slices of the channels-first padded input with the output gradient
# (one im2col matmul for few input channels), the input gradient a forward
# convolution of the dilated output gradient with the flipped kernel (a matmul
# and col2im for few input channels); the forward pass is lax's own. Used only
# under a policy with conv="loop_safe" (the cpu policy); accelerators keep
# lax's convolutions.
# (With jax 0.10.2 the naive in-loop path is still there: docs/results/speed-evaluation.md,
# "Convolution gradients inside loops".)



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


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _nhwc_conv(x, w, strides, padding, precision):
  # The forward pass is lax's own at every channel count; XLA:CPU runs it fast
  # inside loops. (The first layer's 3-channel forward used to be one im2col
  # matmul; XLA fuses the bias add that follows into that matmul, and the pair
  # ran several times slower than lax's convolution with the same bias add:
  # docs/results/speed-evaluation.md, "Where an evaluation step spends its time".)
  return lax.conv_general_dilated(x, w, strides, padding,
                                  dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=precision)


def _nhwc_conv_fwd(x, w, strides, padding, precision):
  return _nhwc_conv(x, w, strides, padding, precision), (x, w)


def _nhwc_conv_bwd(strides, padding, precision, res, g):
  x, w = res
  if thin_conv.few_channels(x.shape, strides, padding):
    # XLA:CPU runs a convolution with 3 output channels slowly: the input gradient as one
    # matmul into patch space and col2im (timings in docs/results/speed-distillation.md,
    # "One DM step")
    dx = thin_conv.col2im_input_grad(g, w, x.shape, padding, precision)
    # The weight gradient as one (kh*kw*C, N*Ho*Wo) @ (N*Ho*Wo, O) matmul.
    cols = patches(x, w.shape[0], w.shape[1], (1, 1), padding)
    dw = jnp.dot(cols.reshape(-1, cols.shape[-1]).T, g.reshape(-1, g.shape[-1]),
                 precision=precision).reshape(w.shape)
  else:
    dx = _conv_input_grad(g, w, x.shape, strides, padding, precision)
    dw = _conv_weight_grad(x, g, w.shape, strides, padding, precision)
  return dx.astype(x.dtype), dw.astype(w.dtype)


def _conv_input_grad(g, w, x_shape, strides, padding, precision):
  kh, kw = w.shape[:2]
  sh, sw = strides
  _, h, wd, _ = x_shape
  ho, wo = g.shape[1], g.shape[2]
  # Input gradient as a *forward* convolution (also slow in loops when left to
  # lax's transpose rule): dilate g by the stride and pad it so
  # that a stride-1 VALID convolution with the flipped, io-swapped kernel
  # returns exactly x's shape. Negative padding crops.
  rest_h = (h + padding[0][0] + padding[0][1] - kh) - (ho - 1) * sh
  rest_w = (wd + padding[1][0] + padding[1][1] - kw) - (wo - 1) * sw
  g_dil = lax.pad(g, jnp.zeros((), g.dtype),
                  ((0, 0, 0), (kh - 1 - padding[0][0], kh - 1 - padding[0][1] + rest_h, sh - 1),
                   (kw - 1 - padding[1][0], kw - 1 - padding[1][1] + rest_w, sw - 1), (0, 0, 0)))
  w_t = jnp.flip(w, (0, 1)).swapaxes(2, 3)
  return lax.conv_general_dilated(g_dil, w_t, (1, 1), ((0, 0), (0, 0)),
                                  dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=precision)


def _conv_weight_grad(x, g, w_shape, strides, padding, precision):
  kh, kw, c, o = w_shape
  sh, sw = strides
  ho, wo = g.shape[1], g.shape[2]
  # Weight gradient: dW[i, j] = sum_{n,h,w} xp[n, i + sh*h, j + sw*w, :]^T g[n, h, w, :].
  # x goes channels-first (C, N, H, W) once, so that each kernel row i is one
  # (kw*C, K) @ (K, O) matmul whose long contraction K = N*Ho*Wo runs along
  # contiguous memory on both sides: XLA:CPU's matmul runs it 1.4-1.7x as fast
  # as kh*kw per-tap products over NHWC slices, whose left operand is read
  # transposed (docs/results/speed-evaluation.md, "Where an evaluation step spends its time").
  xt = jnp.pad(jnp.transpose(x, (3, 0, 1, 2)), ((0, 0), (0, 0), padding[0], padding[1]))
  g2 = g.reshape(-1, o)

  def row(i):
    taps = [lax.slice(xt, (0, 0, i, j), (c, xt.shape[1], i + sh * (ho - 1) + 1,
                                           j + sw * (wo - 1) + 1), (1, 1, sh, sw))
            for j in range(kw)]
    cols = jnp.concatenate(taps, axis=0).reshape(kw * c, -1)
    return jnp.dot(cols, g2, precision=precision).reshape(kw, c, o)

  return jnp.stack([row(i) for i in range(kh)])


_nhwc_conv.defvjp(_nhwc_conv_fwd, _nhwc_conv_bwd)


def loop_safe_conv(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                   dimension_numbers=None, feature_group_count=1, precision=None, **kwargs):
  """Drop-in ``lax.conv_general_dilated`` whose gradient is fast inside loops on CPU.

  Same values and gradients as ``lax.conv_general_dilated``; for 2-D NHWC/HWIO
  convolutions with explicit padding, no dilation and one feature group, the
  weight gradient is computed with matmuls (see the comment above; a
  ``"SAME"``/``"VALID"`` padding string counts as its explicit pads). Anything
  else is passed to ``lax.conv_general_dilated`` unchanged. While tracing
  inside :func:`jaxdd._src.winograd.convs`, eligible 3x3 convolutions
  (:func:`jaxdd._src.winograd.applies`) run as Winograd F(2x2, 3x3) instead,
  with its own gradients: the same values up to float rounding. jaxdd opens
  that context where the policy says so: ``forward_conv="winograd"`` for
  gradient-free forwards (DM's real images, prediction), ``train_conv="winograd"``
  for the networks the trainer trains. Suitable
  as ``flax.linen.Conv(conv_general_dilated=loop_safe_conv)`` (whatever the
  policy; :func:`policy_conv` follows it).

  Example:
    >>> import jax.numpy as jnp
    >>> loop_safe_conv(jnp.ones((1, 4, 4, 2)), jnp.ones((3, 3, 2, 1)), (1, 1),
    ...                ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC")).shape
    (1, 4, 4, 1)
  """
  args = thin_conv.nhwc_args(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                             dimension_numbers, feature_group_count, **kwargs)
  if args is None:
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
                                    rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
                                    feature_group_count=feature_group_count, precision=precision,
                                    **kwargs)
  strides, padding = args
  if winograd.active() and winograd.applies(lhs.shape, rhs.shape, strides, padding, lhs.dtype):
    return winograd.conv3x3(lhs, rhs, precision)
  return _nhwc_conv(lhs, rhs, strides, padding, precision)


def policy_kernel():
  """The convolution the current policy names (None: lax's own), read now: its ``conv``
  (``"loop_safe"``: :func:`loop_safe_conv`), else its ``input_grad`` (``"matmul"``:
  :func:`jaxdd._src.thin_conv.thin_input_conv`).

  For a layer built while tracing (:class:`jaxdd.layers.TorchConv` builds its
  ``nn.Conv`` inside ``__call__``); a model's field takes :func:`policy_conv`.
  """
  current = policy.current()
  if current.conv == "loop_safe":
    return loop_safe_conv
  return thin_conv.thin_input_conv if current.input_grad == "matmul" else None


def policy_conv(lhs, rhs, window_strides, padding, **kwargs):
  """Drop-in ``lax.conv_general_dilated`` that follows the policy at trace time.

  The opt-in for a model of your own that jaxdd trains or differentiates
  inside loops: pass it as ``flax.linen.Conv(..., conv_general_dilated=policy_conv)``.
  Under a policy with ``conv="loop_safe"`` (the ``cpu`` policy) it is
  :func:`loop_safe_conv` (fast gradients inside ``lax.scan``/``lax.map`` on
  XLA:CPU, and the policy's Winograd kernels where jaxdd opens them);
  otherwise ``lax.conv_general_dilated``. Both compute the same convolution up
  to float rounding. The policy is read when the convolution is traced, so a
  policy pinned with :func:`jaxdd.policy.use` (or a distiller's
  :class:`~jaxdd.distill.Execution`) applies. jaxdd's own models need nothing:
  their convolutions (:class:`jaxdd.models.TorchConv`) follow the policy by
  themselves, and jaxdd never rewrites a model it is given: a plain
  ``nn.Conv`` keeps ``lax.conv_general_dilated``.

  Example:
    >>> import flax.linen as nn, jax, jax.numpy as jnp
    >>> x = jnp.arange(32.0).reshape(1, 4, 4, 2)
    >>> conv = nn.Conv(3, (3, 3), conv_general_dilated=policy_conv)
    >>> v = conv.init(jax.random.key(0), x)  # the same parameters as nn.Conv(3, (3, 3))
    >>> y = conv.apply(v, x)
    >>> bool(jnp.allclose(y, nn.Conv(3, (3, 3)).apply(v, x), rtol=1e-5, atol=1e-4))
    True
    >>> "custom_vjp_call" in str(jax.make_jaxpr(lambda v: conv.apply(v, x))(v))  # cpu policy
    True
  """
  conv = policy_kernel() or lax.conv_general_dilated
  return conv(lhs, rhs, window_strides, padding, **kwargs)
