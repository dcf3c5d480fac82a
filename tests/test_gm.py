"""Gradient matching (DC / DSA): the distance, the loss, and the outer-iteration distiller."""
import chex
import flax.linen as nn
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdd import augment, distill, matching, models, parallel
from jaxdd import train as train_lib
from jaxdd.protocols import Protocol


# ---------------------------------------------------------------------------- numpy references

def np_row_distance(g_real: np.ndarray, g_syn: np.ndarray, eps=1e-6) -> float:
  """The reference's distance_wb on torch-layout tensors: rows are dim 0."""
  if g_real.ndim == 1:
    return 0.0
  r = g_real.reshape(g_real.shape[0], -1)
  s = g_syn.reshape(g_syn.shape[0], -1)
  cos = (r * s).sum(1) / (np.linalg.norm(r, axis=1) * np.linalg.norm(s, axis=1) + eps)
  return float((1 - cos).sum())


def to_torch_layout(a: np.ndarray) -> np.ndarray:
  """Flax conv kernel (kh, kw, in, out) -> torch (out, in, kh, kw); dense (in, out) -> (out, in)."""
  if a.ndim == 4:
    return a.transpose(3, 2, 0, 1)
  if a.ndim == 2:
    return a.T
  return a


class TanhMLP(nn.Module):
  """x -> tanh(x W1 + b1) W2 + b2: smooth, so finite differences are reliable."""
  hidden: int = 5
  classes: int = 3

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = x.reshape(x.shape[0], -1)
    h = jnp.tanh(nn.Dense(self.hidden, name="Dense_0")(x))
    return nn.Dense(self.classes, name="Dense_1")(h)


def np_mlp_grads(p, x, label, w):
  """Hand-derived gradient of sum_i w_i CE(mlp(x_i), label) (float64 numpy)."""
  x = x.reshape(len(x), -1)
  pre = x @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"]
  h = np.tanh(pre)
  logits = h @ p["Dense_1"]["kernel"] + p["Dense_1"]["bias"]
  prob = np.exp(logits - logits.max(1, keepdims=True))
  prob /= prob.sum(1, keepdims=True)
  d_logits = prob.copy()
  d_logits[:, label] -= 1
  d_logits *= w[:, None]
  d_pre = (d_logits @ p["Dense_1"]["kernel"].T) * (1 - h ** 2)
  return {"Dense_0": {"kernel": x.T @ d_pre, "bias": d_pre.sum(0)},
          "Dense_1": {"kernel": h.T @ d_logits, "bias": d_logits.sum(0)}}


def np_gm_loss(p, syn, real, weights):
  total = 0.0
  for c in range(real.shape[0]):
    gr = np_mlp_grads(p, real[c], c, weights[c])
    gs = np_mlp_grads(p, syn[c], c, np.full(syn.shape[1], 1.0 / syn.shape[1]))
    for layer in ("Dense_0", "Dense_1"):
      for name in ("kernel", "bias"):
        total += np_row_distance(to_torch_layout(gr[layer][name]), to_torch_layout(gs[layer][name]))
  return total


def _mlp_setup(seed=0, classes=3, batch=6, ipc=2):
  rng = np.random.default_rng(seed)
  real = rng.normal(size=(classes, batch, 2, 2, 2))
  syn = rng.normal(size=(classes, ipc, 2, 2, 2))
  w = rng.uniform(0.1, 1.0, size=(classes, batch))
  w /= w.sum(1, keepdims=True)
  model = TanhMLP(classes=classes)
  params = jax.tree.map(np.asarray, model.init(jax.random.key(seed), jnp.zeros((1, 2, 2, 2)))["params"])
  return model, params, real, syn, w


# ---------------------------------------------------------------------------- the distance

def test_gradient_distance_matches_reference_rows_on_a_convnet():
  # Two real gradient pytrees of a ConvNet (4-D conv kernels, 1-D norm/bias
  # parameters, a 2-D classifier): the distance must equal the reference's
  # row-wise formula on torch-layout tensors.
  model = models.ConvNet(4, depth=2, width=6)
  x = jax.random.normal(jax.random.key(0), (5, 8, 8, 3))
  params = model.init(jax.random.key(1), x)["params"]
  ce = lambda p, xs, y: train_lib.cross_entropy(model.apply({"params": p}, xs), y).mean()
  grad = jax.jit(jax.grad(ce))  # one program for both gradients
  g1 = grad(params, x, jnp.array([0, 1, 2, 3, 0]))
  g2 = grad(params, x[::-1] * 0.5, jnp.array([1, 1, 2, 3, 3]))
  got = float(matching.gradient_distance(g1, g2))
  want = sum(np_row_distance(to_torch_layout(np.asarray(a, np.float64)),
                             to_torch_layout(np.asarray(b, np.float64)))
             for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)))
  np.testing.assert_allclose(got, want, rtol=1e-5)
  # Only conv kernels and the classifier count: 6 + 6 + 4 rows, each in [0, 2].
  assert 0 < got < 2 * 16
  assert float(matching.gradient_distance(g1, g1)) < 1e-3


def test_gradient_distance_zero_rows_have_finite_gradient():
  g = {"k": jnp.zeros((3, 2))}
  h = {"k": jnp.ones((3, 2))}
  grad = jax.grad(lambda a: matching.gradient_distance(h, a))(g)
  assert np.isfinite(np.asarray(grad["k"])).all()
  np.testing.assert_allclose(float(matching.gradient_distance(h, g)), 2.0)  # two rows, cos 0


# ---------------------------------------------------------------------------- the loss

def test_gm_loss_value_and_syn_gradient_against_numpy():
  model, params, real, syn, w = _mlp_setup()
  logits_fn = lambda p, x: model.apply({"params": p}, x)
  with jax.enable_x64(True):
    p64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
    loss = lambda s: matching.gm_loss(jax.random.key(0), s, jnp.asarray(real), params=p64,
                                      logits_fn=logits_fn, weights=jnp.asarray(w))
    value = float(loss(jnp.asarray(syn)))
    grad = np.asarray(jax.grad(loss)(jnp.asarray(syn)))
  p_np = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  np.testing.assert_allclose(value, np_gm_loss(p_np, syn, real, w), rtol=1e-9)
  # Central differences of the numpy loss, on a few coordinates.
  rng = np.random.default_rng(1)
  for _ in range(6):
    idx = tuple(rng.integers(0, n) for n in syn.shape)
    h = 1e-6
    up, down = syn.copy(), syn.copy()
    up[idx] += h
    down[idx] -= h
    fd = (np_gm_loss(p_np, up, real, w) - np_gm_loss(p_np, down, real, w)) / (2 * h)
    np.testing.assert_allclose(grad[idx], fd, rtol=1e-5, atol=1e-8)


def test_uniform_weights_equal_the_unweighted_loss_and_zero_weights_drop_samples():
  model, params, real, syn, _ = _mlp_setup()
  logits_fn = lambda p, x: model.apply({"params": p}, x)
  real, syn = jnp.asarray(real, jnp.float32), jnp.asarray(syn, jnp.float32)
  kw = dict(params=params, logits_fn=logits_fn)
  plain = matching.gm_loss(jax.random.key(0), syn, real, **kw)
  uniform = matching.gm_loss(jax.random.key(0), syn, real, weights=jnp.full((3, 6), 1 / 6), **kw)
  np.testing.assert_allclose(float(uniform), float(plain), rtol=1e-6)
  # Weight only on the first half of each batch == the unweighted loss of that half.
  half = jnp.concatenate([jnp.full((3, 3), 1 / 3), jnp.zeros((3, 3))], axis=1)
  np.testing.assert_allclose(
      float(matching.gm_loss(jax.random.key(0), syn, real, weights=half, **kw)),
      float(matching.gm_loss(jax.random.key(0), syn, real[:, :3], **kw)), rtol=1e-5)


def test_chunked_real_gradient_and_vmapped_classes_equal_the_plain_loss():
  model = models.ConvNet(3, depth=1, width=4)
  real = jax.random.normal(jax.random.key(0), (3, 8, 8, 8, 3))
  syn = jax.random.normal(jax.random.key(1), (3, 2, 8, 8, 3))
  params = model.init(jax.random.key(2), syn[0])["params"]
  w = jax.nn.softmax(jax.random.normal(jax.random.key(3), (3, 8)), axis=1)
  from jaxdd import augment
  kw = dict(params=params, logits_fn=lambda p, x: model.apply({"params": p}, x), weights=w,
            augment=augment.dsa("color_flip"))
  f = lambda s, **o: matching.gm_loss(jax.random.key(4), s, real, **kw, **o)
  ref, g_ref = jax.jit(jax.value_and_grad(f))(syn)
  for opts in (dict(real_chunk=3), dict(map_classes=False)):  # 3 -> chunks of 2 (divisor of 8)
    v, g = jax.jit(jax.value_and_grad(lambda s: f(s, **opts)))(syn)
    np.testing.assert_allclose(float(v), float(ref), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(g), np.asarray(g_ref), rtol=1e-4, atol=1e-6)


def test_siamese_augmentation_same_images_match():
  # Real == synthetic images under the same per-class DSA draw: zero distance.
  model = models.ConvNet(2, depth=1, width=4)
  x = jax.random.normal(jax.random.key(0), (2, 3, 8, 8, 3))
  params = model.init(jax.random.key(1), x[0])["params"]
  from jaxdd import augment
  loss = matching.gm_loss(jax.random.key(2), x, x, params=params, eps=0.0,
                          logits_fn=lambda p, im: model.apply({"params": p}, im),
                          augment=augment.dsa("color_crop_cutout_flip_scale_rotate"))
  assert float(loss) < 1e-4


def test_gm_loss_bad_shapes():
  model, params, real, syn, _ = _mlp_setup()
  kw = dict(params=params, logits_fn=lambda p, x: model.apply({"params": p}, x))
  with pytest.raises(ValueError, match="weights must have shape"):
    matching.gm_loss(jax.random.key(0), syn, real, weights=jnp.ones((3, 5)), **kw)
  with pytest.raises(ValueError, match="disagree"):
    matching.gm_loss(jax.random.key(0), syn[:2], real, **kw)


# ---------------------------------------------------------------------------- the distiller

def _toy(num_classes=3, per_class=12, size=8, seed=0):
  rng = np.random.default_rng(seed)
  colours = rng.uniform(-1, 1, size=(num_classes, 3))
  labels = np.repeat(np.arange(num_classes), per_class)
  images = colours[labels][:, None, None, :] + 0.3 * rng.normal(size=(len(labels), size, size, 3))
  return images.astype(np.float32), labels


TINY = models.ConvNet(3, depth=1, width=8)


def _gm(**kw):
  base = dict(num_classes=3, ipc=2, model=TINY, real_per_class=8, outer_loop=3, inner_loop=2)
  base.update(kw)
  return distill.gm(**base)


def test_outer_iteration_equals_a_hand_written_loop():
  """One step == the reference's outer iteration written out with the public pieces:
  fresh net; per round sample, weight, match, SGD-momentum update, then train
  inner_loop epochs with plain SGD (not after the last round)."""
  import optax
  x, y = _toy()
  emb = np.random.default_rng(1).normal(size=(len(y), 4)).astype(np.float32)
  emb /= np.linalg.norm(emb, axis=1, keepdims=True)
  cfg = distill.KDEConfig(variance=0.1, temperature=0.5)
  real = distill.real_data(x, y, num_classes=3, embeddings=emb)
  d = _gm(kde_config=cfg, lr=0.5, momentum=0.5, lr_net=0.05, syn_init="noise",
          execution=distill.Execution(real_chunk=None))
  state = d.init(jax.random.key(0), real)
  images = jnp.asarray(state.syn.images)
  new_state, metrics = d.step(jax.tree.map(jnp.copy, state), real)

  key = distill.step_key(state)  # fold_in(run key, step 0)
  k_net, k_rounds = jax.random.split(key)
  params = TINY.init(k_net, jnp.zeros((1, 8, 8, 3)), train=False)["params"]
  tx = optax.sgd(0.5, momentum=0.5)
  opt = tx.init(images)
  proto = Protocol("inner", epochs=1, lr=0.05, momentum=0.0, weight_decay=0.0,
                            decay_at=None, augment=None)
  labels = jnp.repeat(jnp.arange(3), 2)
  logits_fn = lambda p, im: TINY.apply({"params": p}, im)
  match = jax.jit(jax.value_and_grad(lambda s, p, k, x, w: matching.gm_loss(
      k, s.reshape(3, 2, 8, 8, 3), x, params=p, weights=w, logits_fn=logits_fn)))
  train = jax.jit(lambda p, im, k: train_lib.fit(k, p, {}, im, labels,
                                                 task=train_lib.standard_task(TINY),
                                                 protocol=proto))
  losses = []
  for r in range(3):
    k_match, k_train = jax.random.split(jax.random.fold_in(k_rounds, r))
    k_real, k_aug, _ = jax.random.split(k_match, 3)
    rows, mask = distill.sample_per_class(k_real, real.index, 8)
    w = distill.batch_weights(real, rows, mask, cfg)
    loss, g = match(images, params, k_aug, real.images[rows], w)
    losses.append(float(loss))
    upd, opt = tx.update(g, opt, images)
    images = optax.apply_updates(images, upd)
    if r < 2:  # no training after the last image update
      params = train(params, images, k_train)[0]
  np.testing.assert_allclose(np.asarray(new_state.syn.images), np.asarray(images),
                             rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(float(metrics["loss"]), np.mean(losses), rtol=1e-4)
  np.testing.assert_allclose(float(metrics["loss_last"]), losses[-1], rtol=1e-4)
  assert int(new_state.step) == 1
  assert float(metrics["max_weight"]) > 1 / 8  # KDE weights, not uniform


def test_inner_loop_trains_the_network_between_rounds():
  # With one round there is no training; the second round's loss is taken on a
  # network trained on the synthetic set, so lr_net must change it.
  x, y = _toy()
  real = distill.real_data(x, y, num_classes=3)
  a = _gm(outer_loop=2, inner_loop=3, lr_net=1e-6,
          execution=distill.Execution(real_chunk=None))
  b = _gm(outer_loop=2, inner_loop=3, lr_net=0.5,
          execution=distill.Execution(real_chunk=None))
  sa, sb = a.init(jax.random.key(0), real), b.init(jax.random.key(0), real)
  (_, ma), (_, mb) = a.step(sa, real), b.step(sb, real)
  np.testing.assert_allclose(float(ma["loss_first"]), float(mb["loss_first"]), rtol=1e-5)
  assert abs(float(ma["loss_last"]) - float(mb["loss_last"])) > 1e-3


@jax.jit
def _fixed_gm_loss(images, real_b, keys):
  """The unaugmented GM loss on the whole classes, averaged over fixed networks."""
  def one(k):
    params = TINY.init(k, images[:1])["params"]
    return matching.gm_loss(k, images.reshape(3, -1, 8, 8, 3), real_b, params=params,
                            logits_fn=lambda p, im: TINY.apply({"params": p}, im))
  return jax.lax.map(one, keys).mean()


def test_a_few_outer_iterations_lower_the_matching_loss():
  x, y = _toy()
  real = distill.real_data(x, y, num_classes=3)
  d = distill.dc(num_classes=3, ipc=2, model=TINY, real_per_class=12, outer_loop=2, inner_loop=2,
                 lr=1.0, syn_init="noise")
  state = d.init(jax.random.key(0), real)
  keys = jax.random.split(jax.random.key(100), 6)
  real_b = jnp.asarray(x).reshape(3, 12, 8, 8, 3)
  before = float(_fixed_gm_loss(state.syn.images, real_b, keys))
  for _ in range(8):
    state, m = d.step(state, real)
  after = float(_fixed_gm_loss(state.syn.images, real_b, keys))
  assert after < 0.8 * before, (before, after)
  assert np.isfinite(float(m["loss"]))


def test_step_traces_once_and_is_deterministic():
  x, y = _toy()
  real = distill.real_data(x, y, num_classes=3)
  raw = _gm(execution=distill.Execution(jit=False), augment=augment.dsa("crop_flip"))
  step = jax.jit(chex.assert_max_traces(raw.step, n=1))
  state = raw.init(jax.random.key(0), real)
  for _ in range(3):
    state, metrics = step(state, real)
  assert int(state.step) == 3 and np.isfinite(float(metrics["loss"]))
  # the same program again (still one trace) from two equal starts: equal results
  s1, s2 = raw.init(jax.random.key(5), real), raw.init(jax.random.key(5), real)
  for _ in range(2):
    s1, _ = step(s1, real)
    s2, _ = step(s2, real)
  np.testing.assert_array_equal(s1.syn.images, s2.syn.images)


def test_distillers_that_differ_in_hyperparameters_share_one_signature():
  # the image lr is a hyperparameter in the state: one signature, so the runs layer's cache
  # gives one program; another static setting (the inner loop's lr) is another signature
  a = _gm(augment=augment.dsa("crop_flip"), lr=0.3)
  b = _gm(augment=augment.dsa("crop_flip"), lr=0.2)
  c = _gm(augment=augment.dsa("crop_flip"), lr=0.2, lr_net=0.02)
  assert a.step.signature == b.step.signature != c.step.signature


def test_dsa_strategy_string_and_its_callable_give_the_same_step():
  # strategy strings go through augment.dsa: dsa()'s default is the reference's strategy,
  # whose inner loop uses the same families with per-image parameters
  x, y = _toy()
  real = distill.real_data(x, y, num_classes=3)
  kw = dict(num_classes=3, ipc=2, model=TINY, real_per_class=8, outer_loop=2, inner_loop=2)
  a = distill.dsa(**kw)
  b = distill.gm(augment=augment.dsa(augment.DEFAULT_STRATEGY),
                 net_augment=augment.dsa(augment.DEFAULT_STRATEGY, siamese=False), syn_init="real",
                 **kw)
  assert a.step.signature == b.step.signature
  sa, _ = a.step(a.init(jax.random.key(0), real), real)
  sb, _ = b.step(b.init(jax.random.key(0), real), real)
  np.testing.assert_array_equal(np.asarray(sa.syn.images), np.asarray(sb.syn.images))
  with pytest.raises(ValueError, match=r"pass jaxdd.augment.dsa\('crop'\)"):
    distill.gm(num_classes=3, ipc=2, outer_loop=1, inner_loop=1, augment="crop")
  # explicit keyword signatures (an IDE shows them): an unknown keyword is Python's TypeError
  with pytest.raises(TypeError, match="unexpected keyword argument 'strategy'"):
    distill.dsa(num_classes=3, ipc=2, outer_loop=1, inner_loop=1, strategy="crop")
  params = inspect.signature(distill.gm).parameters
  assert list(inspect.signature(distill.dsa).parameters) == list(params)
  assert list(inspect.signature(distill.dc).parameters) == [
      p for p in params if p not in ("augment", "net_augment")]
  for f in (distill.dsa, distill.dc):
    assert not [p for p in inspect.signature(f).parameters.values()
                if p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]


def test_batchnorm_network_runs_with_running_statistics():
  x, y = _toy()
  real = distill.real_data(x, y, num_classes=3)
  bn = models.ConvNet(3, depth=1, width=8, norm="batch")
  d = _gm(model=bn, execution=distill.Execution(real_chunk=None))
  state, m = d.step(d.init(jax.random.key(0), real), real)
  assert np.isfinite(float(m["loss"])) and np.isfinite(np.asarray(state.syn.images)).all()


def test_sharded_gm_equals_single_device():
  assert jax.device_count() == 8, "conftest must force 8 CPU devices"
  x, y = _toy(num_classes=4, per_class=16)
  emb = np.random.default_rng(1).normal(size=(len(y), 4)).astype(np.float32)
  emb /= np.linalg.norm(emb, axis=1, keepdims=True)

  def run(mesh, class_axis, batch_axis):
    real = distill.real_data(x, y, num_classes=4, embeddings=emb, mesh=mesh)
    d = distill.dsa(num_classes=4, ipc=2, model=models.ConvNet(4, depth=1, width=8),
                    real_per_class=8, outer_loop=2, inner_loop=2,
                    augment=augment.dsa("crop_flip"),
                    kde_config=distill.KDEConfig(variance=0.5),
                    execution=distill.Execution(mesh=mesh, class_axis=class_axis,
                                                batch_axis=batch_axis))
    state = d.init(jax.random.key(0), real)
    losses = []
    for _ in range(2):
      state, m = d.step(state, real)
      losses.append(float(m["loss"]))
    return np.asarray(state.syn.images), np.array(losses)

  ref_images, ref_losses = run(None, None, None)
  images, losses = run(parallel.make_mesh({"cls": 4, "real": 2}), "cls", "real")
  np.testing.assert_allclose(losses, ref_losses, rtol=1e-4)
  np.testing.assert_allclose(images, ref_images, rtol=1e-3, atol=1e-4)


def test_loop_counts_and_bad_arguments():
  assert distill.gm_loops(10) == (10, 50) and distill.gm_loops(50) == (50, 10)
  assert distill.gm_loops(1) == (1, 1)
  with pytest.raises(ValueError, match="ipc must be"):
    _gm(ipc=0)
  with pytest.raises(ValueError, match="pass outer_loop= and inner_loop="):
    distill.gm(num_classes=3, ipc=7)
  for name in ("outer_loop", "inner_loop"):
    for bad in (0, -1, 1.5):
      with pytest.raises(ValueError, match=name):
        _gm(**{name: bad})
  with pytest.raises(ValueError, match="lr_net"):
    _gm(lr_net=0.0)
  with pytest.raises(ValueError, match="net_batch_size"):
    _gm(net_batch_size=0)
  with pytest.raises(ValueError, match="real_chunk must be"):
    _gm(execution=distill.Execution(real_chunk=0))
  with pytest.raises(TypeError, match="unexpected keyword argument 'augment'"):
    distill.dc(num_classes=3, ipc=2, augment=augment.dsa("crop"))  # DC has none: use dsa()
