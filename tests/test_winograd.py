"""Winograd F(2x2, 3x3) convolution (jaxdd._src.winograd), the real forward of DM.

The reference is a naive numpy correlation written out loop by loop; the
transform matrices are checked against Lavin & Gray's (CVPR 2016) as printed.
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdd import distill, models, policy
from jaxdd._src import winograd
from jaxdd._src.cpu_kernels import loop_safe_conv

NHWC = ("NHWC", "HWIO", "NHWC")


def _numpy_conv(x, w):
  """Stride-1, 1-padded 3x3 cross-correlation, NHWC x HWIO, in float64."""
  x = np.asarray(x, np.float64)
  w = np.asarray(w, np.float64)
  n, h, wd, _ = x.shape
  xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  out = np.zeros((n, h, wd, w.shape[3]))
  for i in range(3):
    for j in range(3):
      out += np.einsum("nhwc,co->nhwo", xp[:, i:i + h, j:j + wd, :], w[i, j])
  return out


def _data(n, h, w, c, o, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, h, w, c)).astype(np.float32)
  k = (rng.normal(size=(3, 3, c, o)) / np.sqrt(9 * c)).astype(np.float32)
  return x, k


@pytest.mark.parametrize("shape", [(1, 2, 2, 16, 3), (2, 6, 4, 16, 5), (19, 4, 6, 17, 8)])
def test_conv3x3_equals_a_naive_correlation(shape):
  # (19, ...) spans two blocks of 16 images and a remainder of 3.
  x, k = _data(*shape)
  got = np.asarray(winograd.conv3x3(jnp.asarray(x), jnp.asarray(k)))
  ref = _numpy_conv(x, k)
  assert got.shape == ref.shape
  # The transforms add and halve: a few float32 ulps of the largest term.
  np.testing.assert_allclose(got, ref, rtol=0, atol=2e-5 * np.abs(ref).max())


def test_kernel_transform_is_g_w_gt():
  g = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]])
  _, k = _data(1, 2, 2, 2, 3)
  ref = np.einsum("ai,bj,ijco->abco", g, g, k.astype(np.float64)).reshape(16, 2, 3)
  np.testing.assert_allclose(np.asarray(winograd.kernel_transform(jnp.asarray(k))), ref,
                             rtol=1e-6, atol=1e-7)


def test_the_tile_formula_on_one_tile_by_hand():
  # One 1-channel 2x2 output from a 4x4 tile: A^T [(G g G^T) * (B^T d B)] A equals the
  # direct sums, e.g. y[0, 0] = sum_ij d[i, j] g[i, j] over the top-left 3x3 window.
  bt = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.float64)
  gm = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]])
  at = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float64)
  d = np.arange(16.0).reshape(4, 4)
  g = np.array([[1.0, 2, 0], [0, -1, 3], [2, 0, 1]])
  y = at @ ((gm @ g @ gm.T) * (bt @ d @ bt.T)) @ at.T
  direct = np.array([[np.sum(d[u:u + 3, v:v + 3] * g) for v in range(2)] for u in range(2)])
  np.testing.assert_allclose(y, direct)


def test_gradients_match_lax():
  x, k = _data(2, 4, 4, 16, 3)
  x, k = jnp.asarray(x), jnp.asarray(k)

  def lax_conv(x, k):
    return jax.lax.conv_general_dilated(x, k, (1, 1), ((1, 1), (1, 1)), dimension_numbers=NHWC)

  def loss(conv):
    return lambda x, k: jnp.sum(jnp.sin(conv(x, k)))

  gx, gk = jax.grad(loss(winograd.conv3x3), argnums=(0, 1))(x, k)
  rx, rk = jax.grad(loss(lax_conv), argnums=(0, 1))(x, k)
  np.testing.assert_allclose(gx, rx, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(gk, rk, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("x_shape,w_shape,strides,padding,dtype,ok", [
    ((2, 14, 14, 128), (3, 3, 128, 128), (1, 1), ((1, 1), (1, 1)), jnp.float32, True),
    ((2, 7, 7, 128), (3, 3, 128, 128), (1, 1), ((1, 1), (1, 1)), jnp.float32, False),  # odd
    ((2, 28, 28, 3), (3, 3, 3, 128), (1, 1), ((1, 1), (1, 1)), jnp.float32, False),  # thin
    ((2, 14, 14, 64), (3, 3, 64, 64), (1, 1), ((1, 1), (1, 1)), jnp.float32, False),  # thin
    ((2, 14, 14, 128), (3, 3, 128, 32), (1, 1), ((1, 1), (1, 1)), jnp.float32, False),
    ((2, 14, 14, 96), (3, 3, 96, 96), (1, 1), ((1, 1), (1, 1)), jnp.float32, True),
    ((2, 14, 14, 128), (3, 3, 128, 128), (2, 2), ((1, 1), (1, 1)), jnp.float32, False),
    ((2, 14, 14, 128), (3, 3, 128, 128), (1, 1), ((0, 0), (0, 0)), jnp.float32, False),
    ((2, 14, 14, 128), (5, 5, 128, 128), (1, 1), ((1, 1), (1, 1)), jnp.float32, False),
    ((2, 14, 14, 128), (3, 3, 128, 128), (1, 1), ((1, 1), (1, 1)), jnp.bfloat16, False),
])
def test_applies_only_where_it_pays(x_shape, w_shape, strides, padding, dtype, ok):
  assert winograd.applies(x_shape, w_shape, strides, padding, dtype) is ok


def test_conv3x3_rejects_odd_maps():
  with pytest.raises(ValueError, match="even H and W"):
    winograd.conv3x3(jnp.ones((1, 3, 4, 16)), jnp.ones((3, 3, 16, 2)))


def _calls(monkeypatch):
  calls = []
  real = winograd.conv3x3

  def spy(x, w, precision=None):
    calls.append(x.shape)
    return real(x, w, precision)

  monkeypatch.setattr(winograd, "conv3x3", spy)
  return calls


def test_loop_safe_conv_uses_it_only_inside_the_context(monkeypatch):
  calls = _calls(monkeypatch)
  x, k = _data(2, 4, 4, 96, 96)
  args = ((1, 1), ((1, 1), (1, 1)))
  plain = loop_safe_conv(jnp.asarray(x), jnp.asarray(k), *args, dimension_numbers=NHWC)
  assert calls == [] and not winograd.active()
  with winograd.convs():
    assert winograd.active()
    fast = loop_safe_conv(jnp.asarray(x), jnp.asarray(k), *args, dimension_numbers=NHWC)
  assert calls == [(2, 4, 4, 96)] and not winograd.active()
  np.testing.assert_allclose(fast, plain, rtol=1e-5, atol=1e-5)


def _toy(per_class=6, size=8):
  rng = np.random.default_rng(0)
  labels = np.repeat(np.arange(2), per_class)
  images = rng.normal(size=(len(labels), size, size, 3)).astype(np.float32)
  return distill.real_data(images, labels, num_classes=2)


def _dm(pol):
  return _dm_width(pol, 96)


def _dm_width(pol, width, **kwargs):
  real = _toy()
  with policy.use(pol):
    d = distill.dm(num_classes=2, ipc=1, model=models.ConvNet(2, depth=2, width=width),
                   real_per_class=6, augment=None, **kwargs)
  state, metrics = d.step(d.init(jax.random.key(0), real), real)
  return np.asarray(state.syn.images), float(metrics["loss"])


def test_dm_runs_only_its_real_forward_as_winograd(monkeypatch):
  calls = _calls(monkeypatch)
  cpu = policy.POLICIES["cpu"]
  assert cpu.forward_conv == "winograd"
  images_w, loss_w = _dm(cpu)
  # Layer 2 (96 channels on 4x4 maps) of the real images only: the synthetic
  # images, which are differentiated, keep the loop_safe kernels.
  assert calls and all(s[1:] == (4, 4, 96) for s in calls)
  assert sum(s[0] for s in calls) == 12  # the 2 x 6 real images, chunked or not
  calls.clear()
  images_x, loss_x = _dm(dataclasses.replace(cpu, name="cpu-xla-forward", forward_conv="xla"))
  assert calls == []
  _dm_width(cpu, 32)  # the cpu run preset's width: too thin, lax's convolutions
  assert calls == []
  # Sharded steps keep lax's convolutions (no blocks cut across a sharded batch).
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("c",))
  _dm_width(cpu, 96, mesh=mesh, class_axis="c")
  assert calls == []
  np.testing.assert_allclose(loss_w, loss_x, rtol=1e-5)
  np.testing.assert_allclose(images_w, images_x, rtol=1e-5, atol=1e-6)
