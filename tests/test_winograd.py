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
  # Sums of 864 products, reassociated by the transforms: rounding ~ sqrt(864) ulps of the
  # outputs' magnitude, so the tolerance scales with max |plain|.
  np.testing.assert_allclose(fast, plain, rtol=1e-5, atol=1e-5 * float(np.abs(plain).max()))


def _toy(per_class=6, size=8):
  rng = np.random.default_rng(0)
  labels = np.repeat(np.arange(2), per_class)
  images = rng.normal(size=(len(labels), size, size, 3)).astype(np.float32)
  return distill.real_data(images, labels, num_classes=2)


def _dm(pol):
  return _dm_width(pol, 96)


def _dm_width(pol, width, **kwargs):
  real = _toy()
  d = distill.dm(num_classes=2, ipc=1, model=models.ConvNet(2, depth=2, width=width),
                 real_per_class=6, augment=None,
                 execution=distill.Execution(policy=pol, **kwargs))
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
  # Winograd reassociates the convolution sums (and its transforms amplify rounding a few
  # times): values agree to float32 rounding of the step's update, not bit for bit.
  np.testing.assert_allclose(loss_w, loss_x, rtol=1e-5)
  np.testing.assert_allclose(images_w, images_x, rtol=1e-5, atol=1e-5)


# --- The hand-written gradients (policy train_conv="winograd") ---


def _numpy_conv_grads(x, w, g):
  """dL/dx and dL/dw of sum(conv(x, w) * g) for the 1-padded 3x3 correlation, float64 loops."""
  x, w, g = (np.asarray(a, np.float64) for a in (x, w, g))
  n, h, wd, _ = x.shape
  xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  dxp = np.zeros_like(xp)
  dw = np.zeros_like(w)
  for i in range(3):
    for j in range(3):
      dw[i, j] = np.einsum("nhwc,nhwo->co", xp[:, i:i + h, j:j + wd, :], g)
      dxp[:, i:i + h, j:j + wd, :] += np.einsum("nhwo,co->nhwc", g, w[i, j])
  return dxp[:, 1:-1, 1:-1, :], dw


@pytest.mark.parametrize("shape", [(1, 2, 2, 3, 2), (2, 6, 4, 5, 7), (3, 8, 8, 16, 4)])
def test_hand_written_gradients_equal_naive_ones(shape):
  x, k = _data(*shape)
  g = np.random.default_rng(1).normal(size=shape[:3] + (shape[4],)).astype(np.float32)
  conv = lambda a, b: winograd.conv3x3(a, b, "highest")
  y, dx, dw = jax.jit(lambda a, b, c: (conv(a, b),) + jax.vjp(conv, a, b)[1](c))(
      jnp.asarray(x), jnp.asarray(k), jnp.asarray(g))
  rx, rw = _numpy_conv_grads(x, k, g)
  np.testing.assert_allclose(y, _numpy_conv(x, k), atol=2e-5 * np.abs(_numpy_conv(x, k)).max())
  np.testing.assert_allclose(dx, rx, rtol=0, atol=2e-5 * np.abs(rx).max())
  np.testing.assert_allclose(dw, rw, rtol=0, atol=2e-5 * np.abs(rw).max())


def test_the_transposed_transforms_are_adjoints():
  # <T(a), b> == <a, T^T(b)> for the kernel, input and output transforms.
  rng = np.random.default_rng(2)
  r = lambda *s: jnp.asarray(rng.normal(size=s))
  n, th, tw, c = 2, 3, 2, 4

  def check(fwd, bwd, a, b):
    # Both sides are float32 sums whose rounding scales with sum |terms| <= |T a| |b|
    # (Cauchy-Schwarz), not with the (possibly cancelling) result.
    scale = float(jnp.linalg.norm(fwd(a)) * jnp.linalg.norm(b))
    np.testing.assert_allclose(jnp.vdot(fwd(a), b), jnp.vdot(a, bwd(b)), rtol=1e-5,
                               atol=1e-5 * scale)

  check(winograd.kernel_transform, winograd.kernel_transform_t, r(3, 3, c, 5), r(16, c, 5))
  check(winograd._tiles, lambda v: winograd._tiles_t(v, n, th, tw),
        r(n, 2 * th, 2 * tw, c), r(16, n * th * tw, c))
  check(lambda m: winograd._untile(m, n, th, tw), winograd._untile_t,
        r(16, n * th * tw, c), r(n, 2 * th, 2 * tw, c))


def test_second_order_gradients_match_lax():
  # Gradient matching differentiates a gradient: d/dx of |dL/dw|^2.
  x, k = _data(2, 4, 6, 8, 3)
  x, k = jnp.asarray(x), jnp.asarray(k)

  def lax_conv(x, k):
    return jax.lax.conv_general_dilated(x, k, (1, 1), ((1, 1), (1, 1)), dimension_numbers=NHWC,
                                        precision="highest")

  def matching(conv):
    inner = jax.grad(lambda k, x: jnp.sum(jnp.tanh(conv(x, k))))
    return jax.grad(lambda x: jnp.sum(inner(k, x) ** 2))

  got = jax.jit(matching(lambda a, b: winograd.conv3x3(a, b, "highest")))(x)
  ref = jax.jit(matching(lax_conv))(x)
  np.testing.assert_allclose(got, ref, rtol=0, atol=1e-4 * np.abs(ref).max())


def _fit_and_predict(pol, x, y, task, params, state):
  from jaxdd import evaluate, protocols, train
  proto = protocols.Protocol("t", epochs=3, batch_size=4, lr=0.01, augment=None)
  stack = lambda tree: jax.tree.map(lambda a: a[None], tree)
  with policy.use(pol):
    trained, trained_state, _ = train.fit(jax.random.key(1), params, state, x, y, task=task,
                                          protocol=proto)
    preds = evaluate.predict(task, stack(trained), stack(trained_state), x, protocol=proto)
  return trained, preds


def test_the_trainer_and_prediction_follow_the_policy(monkeypatch):
  calls = _calls(monkeypatch)
  from jaxdd import train
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.normal(size=(8, 8, 8, 3)), jnp.float32)
  y = jnp.asarray(np.arange(8) % 2, jnp.int32)
  task = train.standard_task(models.ConvNet(2, depth=2, width=96))
  params, state = task.init(jax.random.key(0), x, y)
  cpu = policy.POLICIES["cpu"]
  assert cpu.train_conv == "winograd"
  out = {}
  for conv in ("xla", "winograd"):
    calls.clear()
    out[conv] = _fit_and_predict(policy.variant(cpu, train_conv=conv, forward_conv=conv),
                                 x, y, task, params, state)
    # Layer 2 (96 channels on 4x4 maps) of the batches of 4 and of the prediction block of 8.
    assert sorted(set(calls)) == ([] if conv == "xla" else [(4, 4, 4, 96), (8, 4, 4, 96)])
  trained_x, preds_x = out["xla"]
  trained_w, preds_w = out["winograd"]
  moved = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), trained_x, params)
  assert max(jax.tree.leaves(moved)) > 1e-3  # the networks trained
  for a, b in zip(jax.tree.leaves(trained_w), jax.tree.leaves(trained_x)):
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 + 1e-4 * float(jnp.abs(b).max()))
  np.testing.assert_array_equal(preds_w, preds_x)


def _gm_step(pol, width=96):
  real = _toy(per_class=8)
  d = distill.dc(num_classes=2, ipc=1, model=models.ConvNet(2, depth=2, width=width),
                 real_per_class=8, outer_loop=1, inner_loop=1,
                 execution=distill.Execution(policy=pol, real_chunk=4))
  state, metrics = d.step(d.init(jax.random.key(0), real), real)
  return np.asarray(state.syn.images), float(metrics["loss"])


def test_gradient_matching_runs_its_real_gradient_as_winograd(monkeypatch):
  calls = _calls(monkeypatch)
  cpu = policy.POLICIES["cpu"]
  images_w, loss_w = _gm_step(cpu)
  # Layer 2 of the real chunks of 4 (the synthetic side, differentiated twice,
  # keeps the loop-safe kernels; the inner loop's network trains on 2 images, too
  # few for micro-batches, but still through the trainer: one batch of 2).
  assert sorted(set(calls)) == [(2, 4, 4, 96), (4, 4, 4, 96)]
  calls.clear()
  images_x, loss_x = _gm_step(policy.variant(cpu, train_conv="xla"))
  assert calls == []
  np.testing.assert_allclose(loss_w, loss_x, rtol=1e-4)
  np.testing.assert_allclose(images_w, images_x, rtol=1e-4, atol=1e-5)


def test_gm_loss_takes_the_real_gradient_from_real_logits_fn():
  from jaxdd import matching
  logits_fn = lambda p, x: x.reshape(x.shape[0], -1) @ p["w"]
  params = {"w": jnp.asarray(np.random.default_rng(4).normal(size=(4, 2)), jnp.float32)}
  real = jax.random.normal(jax.random.key(0), (2, 6, 2, 2, 1))
  syn = real[:, :2] * 0.5
  loss = lambda **kw: float(matching.gm_loss(jax.random.key(1), syn, real, params=params,
                                             logits_fn=logits_fn, **kw))
  assert loss(real_logits_fn=logits_fn) == loss()
  # Doubling the real side's logits changes its gradient, and the loss; the
  # same doubling on both sides is another loss again.
  doubled = lambda p, x: 2.0 * logits_fn(p, x)
  assert abs(loss(real_logits_fn=doubled) - loss()) > 1e-3
  both = float(matching.gm_loss(jax.random.key(1), syn, real, params=params, logits_fn=doubled))
  assert abs(loss(real_logits_fn=doubled) - both) > 1e-3
