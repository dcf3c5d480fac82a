"""Tests for jaxdd.models: parameter counts, PyTorch-default init, norms, shapes,
a naive numpy forward, and the spec strings.

Heavy fixed-width models (AlexNet, VGG11, ResNet18) are shape-checked with
``jax.eval_shape`` (which traces the full forward without computing it) and run
for real only once, on a single 16x16 image.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdd import models


def _shapes(model, shape, **kw):
  """(param count, features shape, logits shape) without running anything."""
  x = jax.ShapeDtypeStruct(shape, jnp.float32)
  v = jax.eval_shape(model.init, jax.random.key(0), x)
  f, l = jax.eval_shape(lambda v, x: model.apply(v, x, return_features=True, **kw), v, x)
  return models.param_count(v), f.shape, l.shape


def _np_variables(model, shape, seed=0, **kw):
  """Variables with the model's structure, filled from a numpy RNG.

  Tests that check the *forward* maths use these instead of ``model.init``:
  every ``jax.random`` call in an init costs a threefry compile (~0.4 s CPU
  each), and the forward does not care where the numbers came from.
  """
  x = jax.ShapeDtypeStruct(shape, jnp.float32)
  struct = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, **kw), x)
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = str(getattr(path[-1], "key", path[-1]))
    if name == "var":
      return jnp.ones(leaf.shape, leaf.dtype)
    if name == "mean":
      return jnp.zeros(leaf.shape, leaf.dtype)
    return jnp.asarray(rng.uniform(-0.3, 0.3, leaf.shape), leaf.dtype)

  return jax.tree_util.tree_map_with_path(fill, struct)


def _conv(cin, cout, k, bias=True):
  return cin * cout * k * k + (cout if bias else 0)


def _dense(fin, fout):
  return fin * fout + fout


# ---------------------------------------------------------------------------
# Parameter counts
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("shape,expected", [
    ((1, 28, 28, 3), 311_050),  # fix (a): 1152-d classifier (REFERENCE §2)
    ((1, 28, 28, 1), 317_706),
    ((1, 32, 32, 3), 320_010),
])
def test_convnet_param_count_pinned(shape, expected):
  assert _shapes(models.ConvNet(num_classes=10), shape)[0] == expected


@pytest.mark.parametrize("shape", [(1, 28, 28, 1), (1, 28, 28, 3), (1, 32, 32, 3)])
def test_zoo_param_counts_by_hand(shape):
  _, h, w, c = shape
  k = 10
  # MLP: flatten -> 128 -> 128 -> k.
  mlp = _dense(h * w * c, 128) + _dense(128, 128) + _dense(128, k)
  # LeNet: conv 5x5 (pad 2 iff 1 channel), pool, conv 5x5, pool.
  pad = 2 if c == 1 else 0
  s = ((h + 2 * pad - 4) // 2 - 4) // 2
  lenet = (_conv(c, 6, 5) + _conv(6, 16, 5) + _dense(16 * s * s, 120) + _dense(120, 84)
           + _dense(84, k))
  # AlexNet: spatial 32 (1x28 padded by 4, or 3x32) or 28 -> 14 -> 7 -> 3.
  s_alex = {28: 4 if c == 1 else 3, 32: 4}[h]
  alex = (_conv(c, 128, 5) + _conv(128, 192, 5) + _conv(192, 256, 3) + _conv(256, 192, 3)
          + _conv(192, 192, 3) + _dense(192 * s_alex * s_alex, k))
  alex_bn = alex + 2 * (128 + 192 + 256 + 192 + 192)
  # VGG11: conv + per-channel affine norm (2 * C) for each number in the cfg.
  vgg, cin = 0, c
  for v in (64, 128, 256, 256, 512, 512, 512, 512):
    vgg += _conv(cin, v, 3) + 2 * v
    cin = v
  vgg += _dense(512, k)
  # ResNet18: bias-free convs, each followed by a 2*C affine norm.
  res = _conv(c, 64, 3, bias=False) + 2 * 64
  cin = 64
  for planes, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
    for b in range(2):
      st = stride if b == 0 else 1
      res += _conv(cin, planes, 3, False) + _conv(planes, planes, 3, False) + 4 * planes
      if st != 1 or cin != planes:
        res += _conv(cin, planes, 1, False) + 2 * planes
      cin = planes
  res += _dense(512, k)

  expected = {"mlp": mlp, "lenet": lenet, "alexnet": alex, "alexnet-batchnorm": alex_bn,
              "vgg11": vgg, "vgg11-batchnorm": vgg, "resnet18": res, "resnet18-batchnorm": res}
  for spec, n in expected.items():
    assert _shapes(models.get(spec, num_classes=k), shape)[0] == n, spec
  if (h, c) == (32, 3):
    # Well-known CIFAR-10 sizes of these two networks.
    assert (vgg, res) == (9_231_114, 11_173_962)
  if (h, c) == (28, 1):
    assert (mlp, lenet) == (118_282, 61_706)


def test_param_count_ignores_batch_stats():
  net = models.ConvNet(num_classes=3, depth=1, width=4, norm="batch")
  v = _np_variables(net, (2, 8, 8, 3))
  assert "batch_stats" in v
  n = _conv(3, 4, 3) + 2 * 4 + _dense(4 * 4 * 4, 3)
  assert models.param_count(v) == models.param_count(v["params"]) == n


# ---------------------------------------------------------------------------
# Initialisation
# ---------------------------------------------------------------------------


def _check_torch_init(params, path=()):
  """Every kernel/bias of a Conv/Dense within +-1/sqrt(fan_in), std ~ bound/sqrt(3)."""
  checked = 0
  for name, sub in params.items():
    if not isinstance(sub, dict):
      continue
    if "kernel" in sub:
      kernel = np.asarray(sub["kernel"])
      fan_in = int(np.prod(kernel.shape[:-1]))  # (kh, kw, cin, cout) or (fin, fout)
      bound = 1.0 / math.sqrt(fan_in)
      leaves = [("kernel", kernel)] + ([("bias", np.asarray(sub["bias"]))] if "bias" in sub else [])
      for leaf_name, arr in leaves:
        assert np.all(np.abs(arr) <= bound), (path, name, leaf_name)
        if arr.size >= 2000:
          # Uniform(-b, b) has std b/sqrt(3); with n >= 2000 draws the sample std
          # is within ~3% (5 sigma) of it.
          np.testing.assert_allclose(arr.std(), bound / math.sqrt(3), rtol=0.05)
      checked += 1
    elif "scale" in sub:  # norm layers: scale 1, offset 0
      np.testing.assert_array_equal(np.asarray(sub["scale"]), 1.0)
      np.testing.assert_array_equal(np.asarray(sub["bias"]), 0.0)
    else:
      checked += _check_torch_init(sub, path + (name,))
  return checked


def test_init_is_pytorch_default(getkey):
  # ConvNet covers TorchConv + norm + TorchDense, MLP large dense fans; the zoo
  # uses the same two layer classes.
  cases = [
      (models.ConvNet(num_classes=10, depth=2, width=32), (1, 8, 8, 3), 3),
      (models.MLP(num_classes=10), (1, 28, 28, 1), 3),
  ]
  for net, shape, n_layers in cases:
    params = jax.jit(net.init)(getkey(), jnp.zeros(shape))["params"]
    assert _check_torch_init(params) == n_layers


def test_resnet_convs_have_no_bias():
  x = jax.ShapeDtypeStruct((1, 16, 16, 3), jnp.float32)
  params = jax.eval_shape(models.ResNet18(num_classes=10).init, jax.random.key(0), x)["params"]
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  names = ["/".join(str(getattr(p, "key", p)) for p in path) for path, _ in flat]
  conv_bias = [n for n in names if "TorchConv" in n and n.endswith("bias")]
  assert conv_bias == []
  assert any(n.endswith("TorchDense_0/Dense_0/bias") for n in names)


# ---------------------------------------------------------------------------
# Norms
# ---------------------------------------------------------------------------


def test_instance_norm_matches_numpy(getkey):
  x = np.asarray(jax.random.normal(getkey(), (3, 5, 6, 4))) * 3.0 + 1.0
  norm = models.make_norm("instance", 4, False)
  rng = np.random.default_rng(0)
  gamma, beta = rng.normal(size=4), rng.normal(size=4)
  v = {"params": {"scale": jnp.asarray(gamma, jnp.float32), "bias": jnp.asarray(beta, jnp.float32)}}
  got = np.asarray(norm.apply(v, jnp.asarray(x)))
  mean = x.mean(axis=(1, 2), keepdims=True)
  var = x.var(axis=(1, 2), keepdims=True)  # biased, as torch GroupNorm
  want = (x - mean) / np.sqrt(var + 1e-5) * gamma + beta
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_instance_norm_gradients_match_autodiff_of_the_formula(getkey):
  # The hand-written VJP against jax autodiff of the textbook formula.
  x = jax.random.normal(getkey(), (3, 5, 6, 4)) * 2.0 + 0.5
  scale = jax.random.normal(getkey(), (4,))
  bias = jax.random.normal(getkey(), (4,))
  probe = jax.random.normal(getkey(), x.shape)

  def naive(x, scale, bias):
    mean = x.mean(axis=(1, 2), keepdims=True)
    var = ((x - mean) ** 2).mean(axis=(1, 2), keepdims=True)
    return (x - mean) / jnp.sqrt(var + 1e-5) * scale + bias

  want = jax.grad(lambda *a: jnp.sum(jnp.sin(naive(*a)) * probe), (0, 1, 2))(x, scale, bias)
  got = jax.grad(lambda *a: jnp.sum(jnp.sin(models.instance_norm(*a, 1e-5)) * probe),
                 (0, 1, 2))(x, scale, bias)
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)
  # Gradient w.r.t. x of a per-map-invariant loss is orthogonal to constants:
  # shifting a map does not change the normalised output.
  dx = jax.grad(lambda x: jnp.sum(models.instance_norm(x, scale, bias, 1e-5) ** 2))(x)
  np.testing.assert_allclose(dx.sum(axis=(1, 2)), 0.0, atol=1e-4)


def test_batchnorm_train_mode_updates_stats(getkey):
  net = models.ConvNet(num_classes=3, depth=1, width=4, norm="batch")
  x = jax.random.normal(getkey(), (4, 8, 8, 3)) + 2.0
  v = _np_variables(net, x.shape)
  logits, updates = net.apply(v, x, train=True, mutable=["batch_stats"])
  assert logits.shape == (4, 3)
  mean1 = np.asarray(updates["batch_stats"]["BatchNorm_0"]["mean"])
  # PyTorch momentum 0.1 (flax 0.9): running mean = 0.9 * 0 + 0.1 * batch mean
  # of the conv output over (N, H, W).
  conv = jax.tree.map(np.asarray, v["params"]["TorchConv_0"]["Conv_0"])
  pre = _np_conv(np.asarray(x), conv["kernel"], conv["bias"], 1)
  np.testing.assert_allclose(mean1, 0.1 * pre.mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-5)
  # Eval mode uses the running averages and needs no mutable collection.
  assert net.apply({**v, **updates}, x).shape == (4, 3)


# ---------------------------------------------------------------------------
# Shapes
# ---------------------------------------------------------------------------

SIZES = [(28, 28, 1), (28, 28, 3), (32, 32, 3)]


@pytest.mark.parametrize("hwc", SIZES)
def test_convnet_shapes_real_forward(hwc, getkey):
  h, w, c = hwc
  net = models.ConvNet(num_classes=7, width=8)
  x = jax.random.normal(getkey(), (2, h, w, c))
  v = _np_variables(net, x.shape)
  feats, logits = jax.jit(lambda v, x: net.apply(v, x, return_features=True))(v, x)
  side = 4 if (c == 1 or h == 32) else 3
  assert feats.shape == (2, 8 * side * side) and logits.shape == (2, 7)
  assert np.all(np.isfinite(np.asarray(logits)))


ZOO_FEATURES = {  # (spec, H, C) -> feature dim
    "mlp": lambda h, c: 128,
    "lenet": lambda h, c: 84,
    "alexnet": lambda h, c: 192 * (3 * 3 if (h, c) == (28, 3) else 4 * 4),
    "alexnet-batchnorm": lambda h, c: 192 * (3 * 3 if (h, c) == (28, 3) else 4 * 4),
    "vgg11": lambda h, c: 512,
    "vgg11-batchnorm": lambda h, c: 512,
    "resnet18": lambda h, c: 512,
    "resnet18-batchnorm": lambda h, c: 512,
}


@pytest.mark.parametrize("hwc", SIZES + [(16, 16, 3), (12, 12, 1)])
def test_zoo_shapes(hwc):
  h, w, c = hwc
  for spec, feat in ZOO_FEATURES.items():
    net = models.get(spec, num_classes=10)
    for train in (False, True):
      if train and "batchnorm" in spec:
        continue  # needs mutable; covered by test_zoo_real_forward
      _, f, l = _shapes(net, (2, h, w, c), train=train)
      if h >= 28:
        assert f == (2, feat(h, c)), (spec, hwc)
      assert l == (2, 10), (spec, hwc)


def test_lenet_too_small_raises():
  with pytest.raises(ValueError, match="at least 16x16"):
    _shapes(models.LeNet(num_classes=10), (1, 12, 12, 3))
  with pytest.raises(ValueError, match="NHWC"):
    _shapes(models.MLP(num_classes=10), (28, 28, 3))


def test_zoo_real_forward(getkey):
  """One 16x16 image through every zoo model: finite logits, logits = classifier(features)."""
  x = jax.random.normal(getkey(), (1, 16, 16, 3))
  for spec in ZOO_FEATURES:
    net = models.get(spec, num_classes=5)
    v = _np_variables(net, x.shape)
    if "batchnorm" in spec:
      fwd = jax.jit(lambda v, x: net.apply(v, x, train=True, return_features=True,
                                           mutable=["batch_stats"]))
      (feats, logits), upd = fwd(v, jnp.concatenate([x, -x]))
      assert set(upd) == {"batch_stats"}
      feats, logits = feats[:1], logits[:1]
    else:
      feats, logits = jax.jit(lambda v, x: net.apply(v, x, return_features=True))(v, x)
    dense = [k for k in v["params"] if k.startswith("TorchDense")]
    last = v["params"][sorted(dense, key=lambda k: int(k.split("_")[-1]))[-1]]["Dense_0"]
    np.testing.assert_allclose(np.asarray(logits),
                               np.asarray(feats @ last["kernel"] + last["bias"]),
                               rtol=1e-4, atol=1e-4)
    assert np.all(np.isfinite(np.asarray(logits))), spec


# ---------------------------------------------------------------------------
# Numpy forward of a tiny ConvNet
# ---------------------------------------------------------------------------


def _np_conv(x, kernel, bias, pad):
  n, h, w, cin = x.shape
  kh, kw, _, cout = kernel.shape
  xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  ho, wo = h + 2 * pad - kh + 1, w + 2 * pad - kw + 1
  out = np.zeros((n, ho, wo, cout))
  for i in range(ho):
    for j in range(wo):
      patch = xp[:, i:i + kh, j:j + kw, :]  # (n, kh, kw, cin)
      out[:, i, j, :] = np.tensordot(patch, kernel, axes=([1, 2, 3], [0, 1, 2]))
  return out + bias


@pytest.mark.parametrize("channels,size", [(3, 7), (1, 6)])
def test_tiny_convnet_matches_numpy(channels, size, getkey):
  net = models.ConvNet(num_classes=3, depth=1, width=4, norm="none")
  x = np.asarray(jax.random.normal(getkey(), (2, size, size, channels)))
  v = _np_variables(net, x.shape, seed=channels)
  p = jax.tree.map(np.asarray, v["params"])
  conv = p["TorchConv_0"]["Conv_0"]
  pad = 3 if channels == 1 else 1
  h = np.maximum(_np_conv(x, conv["kernel"], conv["bias"], pad), 0.0)
  s = h.shape[1] // 2
  pooled = h[:, :2 * s, :2 * s].reshape(2, s, 2, s, 2, 4).mean(axis=(2, 4))  # floor
  feats = pooled.reshape(2, -1)  # (H, W, C) order
  dense = p["TorchDense_0"]["Dense_0"]
  logits = feats @ dense["kernel"] + dense["bias"]
  got_f, got_l = net.apply(v, jnp.asarray(x), return_features=True)
  np.testing.assert_allclose(np.asarray(got_f), feats, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(np.asarray(got_l), logits, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------
# Specs
# ---------------------------------------------------------------------------


CANONICAL = ["convnet-d3-w128-instancenorm-avgpool", "convnet-d1-w8-batchnorm-maxpool",
             "convnet-d4-w64-nonorm-nopool", "convnet-d2-w32-layernorm-avgpool",
             "convnet-d3-w128-groupnorm-avgpool", "mlp", "lenet", "alexnet",
             "alexnet-batchnorm", "vgg11", "vgg11-batchnorm", "resnet18", "resnet18-batchnorm"]


@pytest.mark.parametrize("spec", CANONICAL)
def test_spec_round_trip(spec):
  m = models.get(spec, num_classes=7)
  assert models.spec_of(m) == spec
  assert models.get(models.spec_of(m), num_classes=7) == m


def test_spec_short_forms_and_aliases():
  C = models.ConvNet
  assert models.get("convnet", num_classes=10) == C(num_classes=10)
  assert models.get("ConvNet-W64-d2", num_classes=10) == C(num_classes=10, depth=2, width=64)
  assert models.get("convnet-maxpool-batchnorm", num_classes=2) == C(
      num_classes=2, norm="batch", pooling="max")
  assert models.get("ConvNetBN", num_classes=10) == C(num_classes=10, norm="batch")
  assert models.get("ConvNetD4", num_classes=10) == C(num_classes=10, depth=4)
  assert models.get("ConvNetW32", num_classes=10) == C(num_classes=10, width=32)
  assert models.get("ConvNetNP", num_classes=10) == C(num_classes=10, pooling="none")
  assert models.get("VGG11BN", num_classes=10) == models.VGG11(num_classes=10, norm="batch")
  assert models.get("ResNet18BN", num_classes=10) == models.ResNet18(num_classes=10, norm="batch")
  assert models.get("resnet18-instancenorm", num_classes=10) == models.ResNet18(num_classes=10)
  assert models.spec_of(models.ResNet18(num_classes=10)) == "resnet18"
  assert models.spec_of(models.AlexNet(num_classes=10)) == "alexnet"


@pytest.mark.parametrize("bad", ["resnet50", "convnet-d0", "convnet-x3", "convnet-d2-d3",
                                 "mlp-batchnorm", "vgg11-batchnorm-nonorm", "", "conv net"])
def test_bad_spec_raises_listing_valid_forms(bad):
  with pytest.raises(ValueError, match="Valid forms: convnet"):
    models.get(bad, num_classes=10)


def test_spec_of_and_get_errors():
  with pytest.raises(ValueError, match="spec_of does not know"):
    models.spec_of(models.BasicBlock(planes=4))
  with pytest.raises(ValueError, match="norm"):
    models.spec_of(models.ConvNet(num_classes=10, norm="weird"))
  with pytest.raises(ValueError, match="num_classes"):
    models.get("mlp", num_classes=0)


def test_models_that_pool_the_image_away_are_refused(tmp_path):
  # 28 -> 14 -> 7 -> 3 -> 1 -> 0: depth 5 leaves no feature map on MNIST-sized images.
  models.check_fits(models.ConvNet(10, depth=4, width=8), (28, 28, 3))
  models.check_fits(models.ConvNet(10, depth=5, width=8), (32, 32, 3))
  for spec, size in (("convnet-d5-w8", 28), ("convnet-d6-w8", 28), ("convnet-d6-w8", 32)):
    with pytest.raises(ValueError, match=f"pools a {size}x{size} image down to nothing"):
      models.check_fits(models.get(spec, num_classes=10), (size, size, 3))
  # From the command line: refused with one line, before anything is written.
  from jaxdd import cli
  work = tmp_path / "deep"
  for argv in (["--depth", "5"], ["--eval-model", "convnet-d6-w8"]):
    assert cli.main(["distill", "--preset", "smoke", "--workdir", str(work), "--quiet"] + argv) == 2
    assert not work.exists()


def test_feature_fn_is_the_one_model_contract():
  # return_features=True where the module takes it, the output otherwise; a model with
  # running statistics embeds in training mode with the batch's statistics
  import flax.linen as nn
  from jaxdd import models
  x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 8, 8, 3)), jnp.float32)
  m = models.ConvNet(3, depth=1, width=8)
  v = m.init(jax.random.key(0), x[:1])
  np.testing.assert_array_equal(models.feature_fn(m, v)(x),
                                m.apply(v, x, return_features=True)[0])

  class Plain(nn.Module):
    @nn.compact
    def __call__(self, z):
      return nn.Dense(5)(z.reshape(z.shape[0], -1))
  p = Plain()
  vp = p.init(jax.random.key(1), x[:1])
  np.testing.assert_array_equal(models.feature_fn(p, vp)(x), p.apply(vp, x))
  bn = models.ConvNet(3, depth=1, width=8, norm="batch")
  vb = bn.init(jax.random.key(2), x[:1])
  want, _ = bn.apply(vb, x, train=True, mutable=["batch_stats"], return_features=True)
  np.testing.assert_array_equal(models.feature_fn(bn, vb)(x), want[0])
  # differentiable in the images and jittable
  g = jax.grad(lambda z: jnp.sum(models.feature_fn(m, v)(z) ** 2))(x)
  assert g.shape == x.shape and bool(jnp.isfinite(g).all())
  np.testing.assert_allclose(jax.jit(models.feature_fn(m, v))(x), models.feature_fn(m, v)(x),
                             rtol=1e-5, atol=1e-5)
