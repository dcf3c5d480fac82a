"""The DM distiller: sampling, one compiled step, loss decrease, weights wiring."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdd import augment, distill, models


def _toy(num_classes=3, per_class=12, size=8, seed=0):
  rng = np.random.default_rng(seed)
  colours = rng.uniform(-1, 1, size=(num_classes, 3))
  labels = np.repeat(np.arange(num_classes), per_class)
  images = colours[labels][:, None, None, :] + 0.3 * rng.normal(size=(len(labels), size, size, 3))
  return images.astype(np.float32), labels


def test_class_index_and_sampling_without_replacement():
  labels = np.array([0, 1, 0, 2, 0, 1])
  index = distill.class_index(labels, 3)
  np.testing.assert_array_equal(index.counts, [3, 2, 1])
  np.testing.assert_array_equal(index.indices[0], [0, 2, 4])
  rows, mask = distill.sample_per_class(jax.random.key(1), jax.tree.map(jnp.asarray, index), 2)
  rows, mask = np.asarray(rows), np.asarray(mask)
  np.testing.assert_array_equal(mask, [[1, 1], [1, 1], [1, 0]])
  for c in range(3):
    picked = rows[c][mask[c]]
    assert (labels[picked] == c).all()
    assert len(set(picked.tolist())) == len(picked)  # no replacement
  with pytest.raises(ValueError, match="no samples"):
    distill.class_index(np.array([0, 0, 2]), 3)


def test_sampling_is_uniform_over_the_class():
  index = jax.tree.map(jnp.asarray, distill.class_index(np.zeros(10, int), 1))
  keys = jax.random.split(jax.random.key(0), 4000)
  rows = jax.vmap(lambda k: distill.sample_per_class(k, index, 3)[0])(keys)
  freq = np.bincount(np.asarray(rows).ravel(), minlength=10) / rows.size
  np.testing.assert_allclose(freq, 0.1, atol=0.01)


def _distiller(**kw):
  base = dict(num_classes=3, ipc=2, model=models.ConvNet(3, depth=1, width=8), real_per_class=8)
  base.update(kw)
  return distill.dm(**base)


def test_init_real_copies_class_images_and_checks_ipc():
  x, y = _toy()
  real = distill.real_data(x, y, num_classes=3)
  state = _distiller().init(jax.random.key(0), real)
  syn = np.asarray(state.syn.images)
  np.testing.assert_array_equal(state.syn.labels, [0, 0, 1, 1, 2, 2])
  for i, lab in enumerate(np.asarray(state.syn.labels)):
    match = np.flatnonzero((x == syn[i]).all(axis=(1, 2, 3)))
    assert len(match) == 1 and y[match[0]] == lab
  with pytest.raises(ValueError, match="larger than class"):
    _distiller(ipc=13).init(jax.random.key(0), real)


def test_step_compiles_once_and_is_deterministic():
  x, y = _toy()
  real = distill.real_data(x, y, num_classes=3)
  raw = _distiller(execution=distill.Execution(jit=False))
  step = jax.jit(chex.assert_max_traces(raw.step, n=1))
  state = raw.init(jax.random.key(0), real)
  for _ in range(3):
    state, metrics = step(state, real)
  assert int(state.step) == 3 and np.isfinite(float(metrics["loss"]))
  # same seed, same result
  d = _distiller()
  s1, s2 = d.init(jax.random.key(5), real), d.init(jax.random.key(5), real)
  for _ in range(2):
    s1, _ = d.step(s1, real)
    s2, _ = d.step(s2, real)
  np.testing.assert_array_equal(s1.syn.images, s2.syn.images)


def _fixed_loss(syn_images, real, model, keys, per_class=12):
  """Unweighted DM loss averaged over fixed networks, on the whole class."""
  from jaxdd import matching
  c = 3
  real_b = jnp.asarray(real[0]).reshape(c, per_class, *real[0].shape[1:])
  syn_b = syn_images.reshape(c, -1, *syn_images.shape[1:])
  total = 0.0
  for k in keys:
    params = model.init(k, syn_images[:1])
    embed = lambda im: model.apply(params, im, return_features=True)[0]
    total += float(matching.dm_loss(k, syn_b, real_b, embed_fn=embed))
  return total / len(keys)


def test_a_few_steps_lower_the_loss():
  x, y = _toy()
  real = distill.real_data(x, y, num_classes=3)
  model = models.ConvNet(3, depth=1, width=8)
  d = distill.dm(num_classes=3, ipc=2, model=model, real_per_class=12, syn_init="noise", lr=1.0)
  state = d.init(jax.random.key(0), real)
  keys = [jax.random.key(100 + i) for i in range(6)]
  before = _fixed_loss(state.syn.images, (x, y), model, keys)
  for _ in range(40):
    state, _ = d.step(state, real)
  after = _fixed_loss(state.syn.images, (x, y), model, keys)
  assert after < 0.5 * before, (before, after)


def test_updates_are_sgd_momentum_half():
  """Two steps of SGD(lr, momentum 0.5) equal the hand-written recursion
  v1 = g1, v2 = 0.5 v1 + g2, x_t = x_{t-1} - lr v_t (reference optimiser)."""
  x, y = _toy()
  real = distill.real_data(x, y, num_classes=3)
  momentum_d = _distiller(lr=0.5, momentum=0.5)
  plain_d = _distiller(lr=1.0, momentum=0.0)  # its update is exactly -grad

  def grad_at(state):
    nxt, _ = plain_d.step(distill.with_hparams(state, lr=1.0), real)
    return np.asarray(state.syn.images) - np.asarray(nxt.syn.images)

  s0 = momentum_d.init(jax.random.key(0), real)
  g1 = grad_at(s0)
  s1, _ = momentum_d.step(jax.tree.map(jnp.copy, s0), real)
  np.testing.assert_allclose(np.asarray(s1.syn.images), np.asarray(s0.syn.images) - 0.5 * g1,
                             rtol=1e-5, atol=1e-6)
  g2 = grad_at(s1._replace(opt_state=plain_d.init(jax.random.key(0), real).opt_state))
  s2, _ = momentum_d.step(jax.tree.map(jnp.copy, s1), real)
  np.testing.assert_allclose(np.asarray(s2.syn.images),
                             np.asarray(s1.syn.images) - 0.5 * (0.5 * g1 + g2), rtol=1e-4, atol=1e-5)
  assert np.abs(g1).max() > 0


@pytest.mark.parametrize("scope", ["batch", "class"])
def test_kde_weights_wiring(scope):
  """With KDE weights, the step's weights equal weighting.weights of the sampled batch."""
  x, y = _toy()
  emb = np.random.default_rng(1).normal(size=(len(y), 4)).astype(np.float32)
  emb /= np.linalg.norm(emb, axis=1, keepdims=True)
  cfg = distill.KDEConfig(variance=0.1, temperature=0.5, normalize="power", scope=scope)
  log_f = distill.class_log_density(emb, y, num_classes=3, variance=0.1) if scope == "class" else None
  real = distill.real_data(x, y, num_classes=3, embeddings=emb, log_density=log_f)
  rows, mask = distill.sample_per_class(jax.random.key(2), real.index, 8)
  w = np.asarray(distill.batch_weights(real, rows, mask, cfg))
  np.testing.assert_allclose(w.sum(1), 1.0, rtol=1e-5)
  rows = np.asarray(rows)
  for c in range(3):
    z = emb[rows[c]]
    if scope == "batch":
      d2 = ((z[:, None] - z[None]) ** 2).sum(-1)
      log_dens = np.log(np.exp(-d2 / 0.2).mean(1))
    else:
      zc = emb[y == c]
      d2 = ((z[:, None] - zc[None]) ** 2).sum(-1)
      log_dens = np.log(np.exp(-d2 / 0.2).mean(1))
    ref = np.exp(-log_dens / 0.5)
    np.testing.assert_allclose(w[c], ref / ref.sum(), rtol=2e-4, atol=1e-6)
  d = _distiller(kde_config=cfg)
  state = d.init(jax.random.key(0), real)
  state, metrics = d.step(state, real)
  assert np.isfinite(float(metrics["loss"]))


def test_bad_inputs():
  x, y = _toy()
  with pytest.raises(ValueError, match="NaN"):
    bad = x.copy()
    bad[0, 0, 0, 0] = np.nan
    distill.real_data(bad, y, num_classes=3)
  with pytest.raises(ValueError, match="labels"):
    distill.real_data(x, y[:-1], num_classes=3)
  with pytest.raises(ValueError, match="variance"):
    _distiller(kde_config=distill.KDEConfig(variance=0.0))
  with pytest.raises(ValueError, match="temperature"):
    _distiller(kde_config=distill.KDEConfig(temperature=-1.0))
  for bad in (0, -3, 2.5, "all", True):
    with pytest.raises(ValueError, match="real_chunk must be"):
      _distiller(execution=distill.Execution(real_chunk=bad))
    with pytest.raises(ValueError, match="syn_chunk must be"):
      _distiller(execution=distill.Execution(syn_chunk=bad))
  with pytest.raises(ValueError, match="embeddings"):
    real = distill.real_data(x, y, num_classes=3)
    d = _distiller(kde_config=distill.KDEConfig())
    d.step(d.init(jax.random.key(0), real), real)


def test_real_dtype_float32_is_the_default_step_and_bfloat16_stays_close():
  x, y = _toy()
  real = distill.real_data(x, y, num_classes=3)
  steps = {}
  for name, dtype in (("default", None), ("f32", "float32"), ("bf16", "bfloat16")):
    d = _distiller(execution=distill.Execution(real_dtype=dtype),
                   model=models.ConvNet(3, depth=2, width=16))
    state, metrics = d.step(d.init(jax.random.key(3), real), real)
    steps[name] = (np.asarray(state.syn.images), float(metrics["loss"]), float(metrics["grad_norm"]))
  # float32 is the default computation, bit for bit.
  np.testing.assert_array_equal(steps["f32"][0], steps["default"][0])
  assert steps["f32"][1] == steps["default"][1]
  # bfloat16 keeps 8 mantissa bits: the loss and the update move by a few parts in a hundred.
  assert steps["bf16"][1] == pytest.approx(steps["default"][1], rel=0.05)
  assert steps["bf16"][0].dtype == np.float32
  start = np.asarray(_distiller().init(jax.random.key(3), real).syn.images)
  delta_ref, delta_bf16 = steps["default"][0] - start, steps["bf16"][0] - start
  cos = (delta_ref * delta_bf16).sum() / np.linalg.norm(delta_ref) / np.linalg.norm(delta_bf16)
  assert cos > 0.99
  for bad in ("int32", "nope", np.bool_):
    with pytest.raises(ValueError, match="real_dtype must be a floating dtype"):
      _distiller(execution=distill.Execution(real_dtype=bad))


def test_syn_dtype_bfloat16_keeps_float32_master_images_and_stays_close():
  # The synthetic forward and backward in bfloat16 (with the real forward: compute_dtype
  # 'bfloat16'); the gradient that reaches the images, the images and the loss stay float32.
  x, y = _toy()
  real = distill.real_data(x, y, num_classes=3)
  model = models.ConvNet(3, depth=2, width=16)
  steps = {}
  for name, ex in (("f32", distill.Execution(syn_chunk=None, real_chunk=None)),
                   ("bf16", distill.Execution(syn_chunk=None, real_chunk=None,
                                              real_dtype="bfloat16", syn_dtype="bfloat16")),
                   ("syn_only", distill.Execution(syn_chunk=None, real_chunk=None,
                                                  syn_dtype="bfloat16"))):
    d = _distiller(execution=ex, model=model)
    state, metrics = d.step(d.init(jax.random.key(3), real), real)
    steps[name] = (np.asarray(state.syn.images), metrics)
  start = np.asarray(_distiller(model=model).init(jax.random.key(3), real).syn.images)
  ref = steps["f32"][0] - start
  for name in ("bf16", "syn_only"):
    images, metrics = steps[name]
    assert images.dtype == np.float32 and metrics["loss"].dtype == jnp.float32
    assert bool(metrics["finite"])
    # bfloat16 keeps 8 mantissa bits: a few parts in a hundred on the loss, the same
    # direction of the update
    assert float(metrics["loss"]) == pytest.approx(float(steps["f32"][1]["loss"]), rel=0.05)
    delta = images - start
    cos = (ref * delta).sum() / np.linalg.norm(ref) / np.linalg.norm(delta)
    assert cos > 0.99
  with pytest.raises(ValueError, match="syn_dtype must be a floating dtype"):
    distill.Execution(syn_dtype="int8")
  with pytest.raises(ValueError, match="syn_dtype is a DM option"):
    distill.gm(num_classes=3, ipc=1, execution=distill.Execution(syn_dtype="bfloat16"))


def test_hyperparameters_in_the_state_share_one_compiled_program():
  # lr and the KDE variance / temperature live in state.hparams, so distillers that differ
  # only in them have one signature and the runs layer's cache gives them one program.
  from jaxdd.runs.programs import Programs
  x, y = _toy()
  z = np.random.default_rng(1).normal(size=(len(x), 4)).astype(np.float32)
  real = distill.real_data(x, y, num_classes=3, embeddings=z)
  model = models.ConvNet(3, depth=1, width=4)
  make = lambda lr, v, t, **kw: distill.dm(  # noqa: E731
      num_classes=3, ipc=2, model=model, real_per_class=6, augment=augment.dsa("crop_flip"),
      lr=lr, kde_config=distill.KDEConfig(variance=v, temperature=t), **kw)
  a, b = make(1.0, 0.01, 0.25), make(3.0, 0.1, 1.0)
  assert a.step.signature == b.step.signature
  programs = Programs()
  step = programs.step(a)
  assert programs.step(b) is step
  sa, sb = a.init(jax.random.key(0), real), b.init(jax.random.key(0), real)
  assert float(sb.hparams["lr"]) == 3.0 and float(sb.hparams["variance"]) == pytest.approx(0.1)
  for _ in range(2):
    sa, ma = step(sa, real)
    sb, mb = step(sb, real)
  assert step._cache_size() == 1
  assert not np.allclose(np.asarray(sa.syn.images), np.asarray(sb.syn.images))
  # Each equals its own distiller run uncompiled.
  ref = make(3.0, 0.1, 1.0, execution=distill.Execution(jit=False))
  sr = ref.init(jax.random.key(0), real)
  for _ in range(2):
    sr, mr = ref.step(sr, real)
  np.testing.assert_allclose(np.asarray(sb.syn.images), np.asarray(sr.syn.images), rtol=1e-5,
                             atol=1e-5)
  np.testing.assert_allclose(float(mb["max_weight"]), float(mr["max_weight"]), rtol=1e-5)


@pytest.mark.parametrize("common,parallel", [(False, "vmap"), (False, "map"), (True, "vmap")])
def test_n_runs_in_one_program_equal_separate_runs(common, parallel):
  rng = np.random.default_rng(0)
  y = np.repeat(np.arange(3), 12)
  x = (rng.normal(size=(36, 8, 8, 3)) + y[:, None, None, None]).astype(np.float32)
  emb = rng.normal(size=(36, 4)).astype(np.float32)
  real = distill.real_data(x, y, num_classes=3, embeddings=emb)
  kw = dict(num_classes=3, ipc=2, model=models.ConvNet(3, depth=1, width=8), real_per_class=8,
            augment=None)
  base = distill.KDEConfig(variance=0.5)
  knobs = [dict(lr=1.0), dict(lr=3.0, temperature=0.5)]
  d = distill.many_runs(distill.dm(kde_config=base, **kw), num_runs=2, run_hparams=knobs,
                        common_random_numbers=common, parallel=parallel)
  state = d.init(jax.random.key(0), real)
  assert state.syn.images.shape == (2, 6, 8, 8, 3)
  assert state.key.shape == ((2,) if common else (2, 2))  # raw key data: shared or per run
  for _ in range(3):
    state, m = d.step(state, real)
  assert m["loss"].shape == (2,)
  keys = [jax.random.key(0)] * 2 if common else list(jax.random.split(jax.random.key(0), 2))
  for i, k in enumerate(knobs):
    cfg = distill.KDEConfig(variance=0.5, temperature=k.get("temperature", base.temperature))
    one = distill.dm(lr=k["lr"], kde_config=cfg, **kw)
    s = one.init(keys[i], real)
    for _ in range(3):
      s, m1 = one.step(s, real)
    # the same computation batched over runs: equal up to float reassociation
    scale = float(jnp.abs(s.syn.images).max())
    np.testing.assert_allclose(state.syn.images[i], s.syn.images, atol=1e-5 * scale)
    np.testing.assert_allclose(float(m["loss"][i]), float(m1["loss"]), rtol=1e-5)
  if common:  # shared draws: the two runs started from the same images
    d0 = distill.many_runs(distill.dm(kde_config=base, **kw), num_runs=2,
                           common_random_numbers=True)
    s0 = d0.init(jax.random.key(0), real)
    np.testing.assert_array_equal(s0.syn.images[0], s0.syn.images[1])
  with pytest.raises(ValueError, match="run_hparams has"):
    distill.many_runs(distill.dm(**kw), num_runs=3, run_hparams=knobs)
  with pytest.raises(ValueError, match=r"\['momentum'\] are not tunable values"):
    distill.many_runs(distill.dm(**kw), num_runs=1,
                      run_hparams=[dict(momentum=0.9)]).init(jax.random.key(0), real)
  with pytest.raises(TypeError, match="num_runs"):
    distill.many_runs(distill.dm(**kw), run_hparams=knobs)


@pytest.mark.parametrize("parallel", ["vmap", "map"])
def test_separate_seeds_in_one_program_equal_their_single_runs(parallel):
  # Runs given their own keys and their own embeddings (one surrogate per seed) over the
  # same real images: run i is the single run of key i and embeddings i, up to float
  # reassociation of the batched computation.
  rng = np.random.default_rng(1)
  y = np.repeat(np.arange(3), 12)
  x = (rng.normal(size=(36, 8, 8, 3)) + y[:, None, None, None]).astype(np.float32)
  embs = rng.normal(size=(3, 36, 4)).astype(np.float32)
  kw = dict(num_classes=3, ipc=2, model=models.ConvNet(3, depth=1, width=8), real_per_class=8,
            augment=None, kde_config=distill.KDEConfig(variance=0.5))
  real = distill.real_data(x, y, num_classes=3, embeddings=embs[0])._replace(
      embeddings=jnp.asarray(embs))
  keys = jnp.stack([jax.random.key(s) for s in (4, 7, 9)])
  d = distill.many_runs(distill.dm(**kw), num_runs=3, parallel=parallel,
                        run_fields=("embeddings",))
  state = d.init(keys, real)
  for _ in range(3):
    state, m = d.step(state, real)
  one = distill.dm(**kw)
  for i in range(3):
    r = distill.real_data(x, y, num_classes=3, embeddings=embs[i])
    s = one.init(keys[i], r)
    for _ in range(3):
      s, m1 = one.step(s, r)
    scale = float(jnp.abs(s.syn.images).max())
    np.testing.assert_allclose(state.syn.images[i], s.syn.images, atol=1e-5 * scale)
    np.testing.assert_allclose(float(m["loss"][i]), float(m1["loss"]), rtol=1e-5)
  # The runs are distinct (their own keys and embeddings), not one run repeated.
  assert not np.allclose(state.syn.images[0], state.syn.images[1])
  with pytest.raises(ValueError, match="need independent runs"):
    distill.many_runs(one, num_runs=3, common_random_numbers=True, run_fields=("embeddings",))
  with pytest.raises(ValueError, match="run_fields may name"):
    distill.many_runs(one, num_runs=3, run_fields=("images",))
  with pytest.raises(ValueError, match="3 keys for num_runs=2"):
    distill.many_runs(one, num_runs=2).init(keys, real)


def test_multi_step_runs_n_steps_in_one_program():
  # n steps in one while loop equal n calls of the step (float rounding: the loop body
  # is compiled on its own), the metrics stacked with zeros past n, one program for every n.
  x, y = _toy()
  z = np.random.default_rng(1).normal(size=(len(x), 4)).astype(np.float32)
  real = distill.real_data(x, y, num_classes=3, embeddings=z)
  d = distill.dm(num_classes=3, ipc=2, model=models.ConvNet(3, depth=1, width=4),
                 real_per_class=6, augment=augment.dsa("crop_flip"), lr=3.0,
                 kde_config=distill.KDEConfig())
  state = d.init(jax.random.key(0), real)
  losses = []
  for _ in range(5):
    state, m = d.step(state, real)
    losses.append(float(m["loss"]))
  run = distill.multi_step(d, 4)
  s, m3 = run(d.init(jax.random.key(0), real), real, 3)
  s, m2 = run(s, real, 2)
  assert int(s.step) == 5 and m3["loss"].shape == (4,)
  scale = float(np.abs(np.asarray(state.syn.images)).max())
  np.testing.assert_allclose(np.asarray(s.syn.images), np.asarray(state.syn.images),
                             atol=1e-5 * scale)
  np.testing.assert_allclose(np.concatenate([m3["loss"][:3], m2["loss"][:2]]), losses, rtol=1e-5)
  np.testing.assert_array_equal(np.asarray(m3["loss"][3:]), 0.0)
  assert np.asarray(m2["loss"][2:]).tolist() == [0.0, 0.0]
  from jaxdd.runs.programs import Programs
  programs = Programs()
  donated = programs.steps(d, 4)
  s2, m4 = donated(d.init(jax.random.key(0), real), real, 3)
  np.testing.assert_array_equal(np.asarray(m4["loss"]), np.asarray(m3["loss"]))
  program = programs._cache[("steps", d.step.signature, 4)]
  donated(s2, real, 2)
  assert program._cache_size() == 1  # n is a runtime value
  for bad in (0, 5, 2.0, True):
    with pytest.raises(ValueError, match=r"n must be an int in \[1, 4\]"):
      run(s, real, bad)
  with pytest.raises(ValueError, match="k must be a positive int"):
    distill.multi_step(d, 0)


def test_execution_is_explicit_and_its_wrappers_check_the_step():
  import optax

  from jaxdd import policy
  with policy.use("accelerator"):  # the pinned stack is not read: the backend's policy
    ex = distill.Execution()
  auto = policy.resolve("auto")
  assert ex.policy is auto and (ex.real_chunk, ex.syn_chunk) == (auto.real_chunk, auto.syn_chunk)
  acc = distill.Execution(policy="accelerator", real_dtype="bfloat16")
  assert (acc.real_chunk, acc.syn_chunk, acc.real_dtype) == (None, None, jnp.bfloat16)
  assert distill.Execution(policy="cpu", real_chunk=5).real_chunk == 5
  with pytest.raises(ValueError, match="real_dtype is a DM option"):
    distill.cfm(num_classes=3, ipc=2, iterations=4, execution=acc)
  with pytest.raises(ValueError, match="real_dtype is a DM option"):
    distill.gm(num_classes=3, ipc=1, execution=acc)
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("c",))
  with pytest.raises(ValueError, match="one device"):
    distill.mtt(num_classes=3, ipc=2, num_epochs=4, max_start_epoch=2,
                execution=distill.Execution(mesh=mesh))
  with pytest.raises(ValueError, match="num_runs runs on one device"):
    distill.many_runs(_distiller(execution=distill.Execution(mesh=mesh)), num_runs=2)
  x, y = _toy()
  real = distill.real_data(x, y, num_classes=3)
  with pytest.raises(ValueError, match=r"\['lr'\] are not tunable values"):  # adam's own lr
    distill.many_runs(_distiller(syn_tx=optax.adam(0.1)), num_runs=1,
                      run_hparams=[dict(lr=2.0)]).init(jax.random.key(0), real)
  with pytest.raises(ValueError, match="run_parallel must be"):
    distill.many_runs(_distiller(), num_runs=2, parallel="pmap")
  raw = distill.many_runs(_distiller(execution=distill.Execution(jit=False)), num_runs=2)
  assert not hasattr(raw.step, "lower")  # uncompiled, as the distiller it wraps


@pytest.mark.parametrize("method", ["dm", "dc"])
def test_the_finite_metric_is_false_exactly_when_a_nan_or_inf_enters_the_step(method):
  x, y = _toy(per_class=8)
  real = distill.real_data(x, y, num_classes=3)
  kw = dict(num_classes=3, ipc=2, model=models.ConvNet(3, depth=1, width=8), real_per_class=8)
  make = lambda lr=1.0: distill.dm(augment=None, lr=lr, **kw)  # noqa: E731
  d = make() if method == "dm" else distill.dc(outer_loop=2, inner_loop=1, **kw)
  fresh = lambda: d.init(jax.random.key(0), real)  # noqa: E731
  _, m = d.step(fresh(), real)
  assert m["finite"].dtype == jnp.bool_ and bool(m["finite"])
  for bad in (np.nan, np.inf):
    state = fresh()  # one synthetic pixel
    state = state._replace(syn=state.syn._replace(images=state.syn.images.at[0, 0, 0, 0].set(bad)))
    assert not bool(d.step(state, real)[1]["finite"]), bad
    if method == "dm":  # a learning rate that overflows the update (a runtime input of DM's step)
      assert not bool(d.step(distill.with_hparams(fresh(), lr=bad), real)[1]["finite"]), bad
    else:  # one real image (every one is in the batch: 8 per class)
      # DM's ReLU network on CPU maps a non-finite real image's features to zeros (XLA's
      # vectorised max drops NaN), so only the gradient-matching step sees this one.
      poisoned = real._replace(images=real.images.at[3].set(bad))
      assert not bool(d.step(fresh(), poisoned)[1]["finite"]), bad
  assert bool(d.step(fresh(), real)[1]["finite"])


def test_fairdd_with_in_batch_clusters_weighs_by_the_dbscan_groups_of_the_matched_features():
  # FairDD without labels (its appendix M): the step clusters each class's real batch in the
  # random network's features and matches every cluster's mean; the loss equals dm_loss with
  # group_balanced_weights of those clusters, computed here by hand with the public pieces.
  from jaxdd import matching, weighting
  rng = np.random.default_rng(0)
  y = np.repeat(np.arange(3), 20)
  minority = (np.arange(60) % 20) < 3
  # the minority differs in its spatial pattern (instance norm removes constant offsets)
  pattern = np.zeros((8, 8, 3), np.float32)
  pattern[:, :4] = 3.0
  x = (rng.normal(size=(60, 8, 8, 3)) * 0.1 + minority[:, None, None, None] * pattern
       + y[:, None, None, None]).astype(np.float32)
  real = distill.real_data(x, y, num_classes=3)
  model = models.ConvNet(3, depth=1, width=8)
  d = distill.dm(num_classes=3, ipc=2, model=model, real_per_class=20, augment=None,
                 batch_clusters=4)
  state = d.init(jax.random.key(0), real)
  _, m = d.step(state, real)
  k_model, k_real, k_aug = jax.random.split(distill.step_key(state), 3)
  rows, mask = distill.sample_per_class(k_real, real.index, 20)
  v = model.init(k_model, jnp.zeros((1, 8, 8, 3)))
  embed = lambda im: model.apply(v, im, return_features=True)[0]  # noqa: E731
  feats = jax.vmap(embed)(real.images[rows])
  groups = weighting.batch_pseudo_groups(feats, mask, max_clusters=4)
  w, scale = weighting.group_balanced_weights(groups, mask, 5)
  want = matching.dm_loss(k_aug, state.syn.images.reshape(3, 2, 8, 8, 3), real.images[rows],
                          embed_fn=embed, weights=w, class_scale=scale)
  np.testing.assert_allclose(float(m["loss"]), float(want), rtol=1e-5)
  np.testing.assert_allclose(float(m["max_weight"]), float(w.max()), rtol=1e-6)
  # the far minority of every class is a cluster of its own: it carries a group's share
  g = np.asarray(groups)
  mino = np.asarray(minority[np.asarray(rows)])
  for c in range(3):
    assert len(set(g[c][mino[c]])) == 1 and not set(g[c][mino[c]]) & set(g[c][~mino[c]])
  with pytest.raises(ValueError, match="replaces the weighting"):
    distill.dm(num_classes=3, ipc=2, batch_clusters=4, kde_config=distill.KDEConfig())
  with pytest.raises(ValueError, match="batch_clusters must be"):
    distill.dm(num_classes=3, ipc=2, batch_clusters=0)


def test_the_state_gives_its_typed_keys():
  # state.key stays raw key data (chex and flax.serialization refuse typed keys); the state
  # gives the typed run key and its step's key as properties
  x = np.random.default_rng(0).normal(size=(16, 8, 8, 3)).astype(np.float32)
  real = distill.real_data(x, np.repeat(np.arange(2), 8), num_classes=2)
  d = distill.dm(num_classes=2, ipc=1, model=models.ConvNet(2, depth=1, width=4),
                 real_per_class=4, augment=None)
  state, _ = d.step(d.init(jax.random.key(0), real), real)
  assert state.key.dtype == jnp.uint32
  chex.assert_tree_all_finite(state)
  assert jax.dtypes.issubdtype(state.run_key.dtype, jax.dtypes.prng_key)
  np.testing.assert_array_equal(jax.random.key_data(state.run_key), state.key)
  np.testing.assert_array_equal(jax.random.key_data(state.step_key),
                                jax.random.key_data(distill.step_key(state)))
  np.testing.assert_array_equal(jax.random.key_data(state.step_key), jax.random.key_data(
      jax.random.fold_in(jax.random.wrap_key_data(state.key), 1)))


def test_the_start_of_the_synthetic_set_is_syn_init_and_init_is_its_deprecated_spelling():
  # a Distiller's .init is its init function; the factories' option is syn_init=, and init=
  # still works for one release, with a DeprecationWarning, for every factory
  import inspect
  import warnings
  x = np.random.default_rng(0).normal(size=(16, 8, 8, 3)).astype(np.float32)
  real = distill.real_data(x, np.repeat(np.arange(2), 8), num_classes=2)
  kw = dict(num_classes=2, ipc=1, model=models.ConvNet(2, depth=1, width=4), real_per_class=4)
  new = distill.dm(syn_init="noise", augment=None, **kw)
  with pytest.warns(DeprecationWarning, match=r"dm\(init=...\) is deprecated.*syn_init"):
    old = distill.dm(init="noise", augment=None, **kw)
  a, b = new.init(jax.random.key(0), real), old.init(jax.random.key(0), real)
  np.testing.assert_array_equal(a.syn.images, b.syn.images)
  with pytest.raises(ValueError, match="give syn_init= only"):
    distill.dm(syn_init="noise", init="weighted", augment=None, **kw)
  for f in (distill.dm, distill.gm, distill.dsa, distill.dc, distill.mtt, distill.cfm):
    params = inspect.signature(f).parameters
    assert params["init"].default is None and params["syn_init"].default in ("real", "noise")
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # the new spelling warns nowhere, through dsa/dc into gm
    distill.dsa(syn_init="noise", outer_loop=1, inner_loop=1, **kw)
    distill.dc(syn_init="real", outer_loop=1, inner_loop=1, **kw)
  with pytest.warns(DeprecationWarning, match=r"dc\(init"):
    distill.dc(init="real", outer_loop=1, inner_loop=1, **kw)


@pytest.mark.parametrize("factory,extra", [
    ("dm", {}), ("gm", {}), ("dsa", {}), ("dc", {}), ("mtt", {"num_epochs": 30}),
    ("cfm", {"iterations": 2})])
def test_syn_init_and_its_deprecated_spelling_together_are_refused(factory, extra):
  # whatever the values, the default's included: init= had silently won over syn_init="real"
  import warnings
  f = getattr(distill, factory)
  kw = dict(num_classes=2, ipc=1, **extra)
  for syn_init, init in (("real", "noise"), ("noise", "noise"), ("weighted", "real")):
    with warnings.catch_warnings():
      warnings.simplefilter("error")  # refused before the deprecation is even told
      with pytest.raises(ValueError, match=rf"{factory}\(\) got syn_init={syn_init!r} and "
                                           rf"init={init!r}; give syn_init= only") as e:
        f(syn_init=syn_init, init=init, **kw)
    assert "\n" not in str(e.value)
  with pytest.warns(DeprecationWarning):  # init= alone still works, for one release
    f(init="noise", **kw)


def test_hparams_set_by_hand_as_python_numbers_do_not_retrace_the_step():
  # state._replace(hparams={..., "lr": 5.0}) puts a weakly typed Python float where init put
  # a float32 array; the distiller's compiled step takes it as that array: one trace
  x, y = _toy()
  real = distill.real_data(x, y, num_classes=3)
  raw = _distiller(execution=distill.Execution(jit=False))
  chex.clear_trace_counter()
  step = distill.Execution().compile_step(("by-hand",), chex.assert_max_traces(raw.step, n=1))
  state = raw.init(jax.random.key(0), real)
  state, _ = step(state, real)
  by_hand = state._replace(hparams={**state.hparams, "lr": 5.0})
  ref = distill.with_hparams(state, lr=5.0)  # the documented way, for comparison
  assert isinstance(by_hand.hparams["lr"], float)
  a, _ = step(by_hand, real)
  b, _ = step(ref, real)
  np.testing.assert_array_equal(a.syn.images, b.syn.images)
  assert float(a.hparams["lr"]) == 5.0 and a.hparams["lr"].dtype == jnp.float32
  # the learning rate took effect: not the step of the old one
  c, _ = step(state, real)
  assert not np.array_equal(np.asarray(a.syn.images), np.asarray(c.syn.images))
  # the default distiller's own step (compiled) takes it the same way
  d = _distiller()
  s0 = d.init(jax.random.key(0), real)
  np.testing.assert_array_equal(
      d.step(s0._replace(hparams={**s0.hparams, "lr": 5.0}), real)[0].syn.images,
      d.step(distill.with_hparams(s0, lr=5.0), real)[0].syn.images)
  # its lower and trace are jit's, of those float32 arrays: the same program as the state
  # made by init (benchmarks trace a step to lower it for another platform)
  by_hand = s0._replace(hparams={**s0.hparams, "lr": 5.0})
  assert d.step.trace(by_hand, real).lower().as_text() == d.step.lower(s0, real).as_text()


@pytest.mark.parametrize("impl", [None, "threefry2x32", "rbg", "unsafe_rbg"])
def test_init_takes_typed_keys_of_every_implementation(impl):
  x, y = _toy()
  real = distill.real_data(x, y, num_classes=3)
  d = _distiller()
  key = (lambda seed: jax.random.key(seed)) if impl is None else (
      lambda seed: jax.random.key(seed, impl=impl))
  a, b, c = d.init(key(0), real), d.init(key(0), real), d.init(key(1), real)
  # the state keeps raw key data of JAX's default implementation, whatever it was given
  assert a.key.shape == jax.random.key_data(jax.random.key(0)).shape
  np.testing.assert_array_equal(a.syn.images, b.syn.images)  # the same key, the same start
  assert not np.array_equal(np.asarray(a.key), np.asarray(c.key))
  for _ in range(2):
    a, m = d.step(a, real)
  assert np.isfinite(float(m["loss"])) and int(a.step) == 2
  if impl in (None, "threefry2x32"):  # the default's own keys: as given
    np.testing.assert_array_equal(a.run_key == d.init(key(0), real).run_key, True)


def test_raw_key_data_of_another_implementation_is_refused_in_one_line():
  x, y = _toy()
  real = distill.real_data(x, y, num_classes=3)
  rbg_data = jax.random.key_data(jax.random.key(0, impl="rbg"))
  with pytest.raises(ValueError, match=r"raw key data of shape \(4,\).*jax.random.key\(seed\)"):
    _distiller().init(rbg_data, real)
