"""MTT's student unroll: exact gradients (remat) and TESLA's constant-memory approximation."""
import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxdd import distill, models
from jaxdd.distill import experts

HIGHEST = jax.default_matmul_precision("highest")


def _setup(n=8, size=6, num_classes=3, seed=0, model=None):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.normal(size=(n, size, size, 3)), jnp.float32)
  y = jnp.asarray(np.arange(n) % num_classes, jnp.int32)
  model = model or models.get("convnet-d1-w4", num_classes=num_classes)
  params = model.init(jax.random.key(seed), x[:1])["params"]
  start, unravel = experts.flatten(params)
  target = start + 0.05 * jnp.asarray(rng.normal(size=start.shape), jnp.float32)

  def apply_fn(p, im):
    return model.apply({"params": p}, im, train=True)
  return x, y, start, target, apply_fn, unravel


def _reference_cut(images, labels, syn_lr, start, target, key, *, apply_fn, unravel, syn_steps,
                   batch_syn):
  """TESLA's gradient by construction: the exact unroll with theta_i cut from earlier steps."""
  k_idx, k_aug = jax.random.split(key)
  idx = experts.student_batches(k_idx, images.shape[0], syn_steps, batch_syn)
  theta, total = start, jnp.zeros_like(start)
  for i in range(syn_steps):
    th = jax.lax.stop_gradient(theta)  # theta_i's value, without its dependence on X_<i

    def ce(p, i=i):
      logits = apply_fn(unravel(p), images[idx[i]])
      return optax.softmax_cross_entropy_with_integer_labels(logits, labels[idx[i]]).mean()
    g = jax.grad(ce)(th)
    total = total + g
    theta = th - syn_lr * g
  theta = start - syn_lr * total  # theta_N = theta_0 - lr * sum_i g_i(theta_i, X_i)
  del k_aug
  return jnp.sum((theta - target) ** 2) / jnp.sum((start - target) ** 2)


def _grads(fn, x, lr):
  return jax.jit(jax.grad(fn, argnums=(0, 1)))(x, lr)


def test_student_batches_cover_the_set_before_repeating():
  idx = np.asarray(experts.student_batches(jax.random.key(1), 10, syn_steps=7, batch_syn=5))
  assert idx.shape == (7, 5)
  for p in range(3):  # each pair of chunks is one permutation of the 10 rows
    assert sorted(idx[2 * p:2 * p + 2].ravel()) == list(range(10))
  with pytest.raises(ValueError, match="batch_syn"):
    experts.student_batches(jax.random.key(1), 10, syn_steps=2, batch_syn=11)


def test_exact_gradient_matches_the_unrolled_reference_and_finite_differences():
  x, y, start, target, apply_fn, unravel = _setup()
  kw = dict(apply_fn=apply_fn, unravel=unravel, syn_steps=4, batch_syn=4)
  key = jax.random.key(3)
  with HIGHEST:
    f = lambda im, lr, remat: experts.trajectory_loss(im, y, lr, start, target, key, remat=remat, **kw)
    gx, glr = _grads(functools.partial(f, remat=True), x, 0.1)
    rx, rlr = _grads(functools.partial(f, remat=False), x, 0.1)
    # remat recomputes the same float32 operations: agreement to rounding
    np.testing.assert_allclose(gx, rx, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(glr, rlr, rtol=1e-4)
    # directional finite differences (central, float32: eps 1e-2 keeps the rounding error
    # ~1e-5 of a loss of order 1, far below the 2 % tolerance)
    v = jax.random.normal(jax.random.key(9), x.shape)
    v = v / jnp.linalg.norm(v)
    loss = jax.jit(functools.partial(f, remat=True))
    eps = 1e-2
    fd = (loss(x + eps * v, 0.1) - loss(x - eps * v, 0.1)) / (2 * eps)
    np.testing.assert_allclose(float(jnp.vdot(gx, v)), float(fd), rtol=2e-2, atol=1e-5)
    fd_lr = (loss(x, 0.1 + 1e-3) - loss(x, 0.1 - 1e-3)) / 2e-3
    np.testing.assert_allclose(float(glr), float(fd_lr), rtol=2e-2, atol=1e-5)


def test_tesla_equals_exact_for_one_step():
  x, y, start, target, apply_fn, unravel = _setup()
  kw = dict(apply_fn=apply_fn, unravel=unravel, syn_steps=1)
  key = jax.random.key(4)
  with HIGHEST:
    ex = _grads(lambda im, lr: experts.trajectory_loss(im, y, lr, start, target, key, **kw), x, 0.2)
    te = _grads(lambda im, lr: experts.trajectory_loss(im, y, lr, start, target, key, mode="tesla",
                                                   **kw), x, 0.2)
    lx = experts.trajectory_loss(x, y, 0.2, start, target, key, **kw)
    lt = experts.trajectory_loss(x, y, 0.2, start, target, key, mode="tesla", **kw)
  np.testing.assert_allclose(lt, lx, rtol=1e-6)
  np.testing.assert_allclose(te[0], ex[0], rtol=1e-4, atol=1e-7)
  np.testing.assert_allclose(te[1], ex[1], rtol=1e-4)


def test_tesla_is_the_exact_gradient_with_later_dependence_cut():
  x, y, start, target, apply_fn, unravel = _setup(n=9)
  kw = dict(apply_fn=apply_fn, unravel=unravel, syn_steps=5, batch_syn=3)
  key = jax.random.key(5)
  with HIGHEST:
    te = _grads(lambda im, lr: experts.trajectory_loss(im, y, lr, start, target, key, mode="tesla",
                                                   **kw), x, 0.1)
    ref = _grads(lambda im, lr: _reference_cut(im, y, lr, start, target, key, **kw), x, 0.1)
    ex = _grads(lambda im, lr: experts.trajectory_loss(im, y, lr, start, target, key, **kw), x, 0.1)
  np.testing.assert_allclose(te[0], ref[0], rtol=1e-4, atol=1e-7)
  np.testing.assert_allclose(te[1], ref[1], rtol=1e-4)
  # ... which is an approximation: the exact gradient differs for several steps
  assert float(jnp.abs(te[0] - ex[0]).max()) > 1e-3 * float(jnp.abs(ex[0]).max())


def test_augmentation_keys_are_shared_by_both_passes():
  from jaxdd import augment
  x, y, start, target, apply_fn, unravel = _setup()
  aug = augment.dsa("flip_scale", siamese=False)
  kw = dict(apply_fn=apply_fn, unravel=unravel, syn_steps=1, augment=aug)
  key = jax.random.key(6)
  with HIGHEST:
    ex = _grads(lambda im, lr: experts.trajectory_loss(im, y, lr, start, target, key, **kw), x, 0.2)
    te = _grads(lambda im, lr: experts.trajectory_loss(im, y, lr, start, target, key, mode="tesla",
                                                   **kw), x, 0.2)
  np.testing.assert_allclose(te[0], ex[0], rtol=1e-4, atol=1e-7)


def test_tesla_memory_does_not_grow_with_the_unroll():
  """Compiled temporary memory: TESLA's stays flat in syn_steps; exact (remat) keeps one
  parameter vector per step, so it grows."""
  x, y, start, target, apply_fn, unravel = _setup(n=4, size=8)

  def temp(mode, steps):
    f = jax.jit(jax.grad(lambda im: experts.trajectory_loss(
        im, y, 0.1, start, target, jax.random.key(0), apply_fn=apply_fn, unravel=unravel,
        syn_steps=steps, mode=mode)))
    return f.lower(x).compile().memory_analysis().temp_size_in_bytes
  tesla = [temp("tesla", s) for s in (8, 64)]
  exact = [temp("exact", s) for s in (8, 64)]
  assert tesla[1] <= 1.1 * tesla[0] + 4096, tesla
  assert exact[1] - exact[0] >= 0.5 * 56 * start.size * 4, (exact, start.size)


def test_bad_arguments():
  x, y, start, target, apply_fn, unravel = _setup()
  with pytest.raises(ValueError, match="mode"):
    experts.trajectory_loss(x, y, 0.1, start, target, jax.random.key(0), apply_fn=apply_fn,
                        unravel=unravel, syn_steps=2, mode="fast")
  with pytest.raises(ValueError, match="syn_steps"):
    experts.trajectory_loss(x, y, 0.1, start, target, jax.random.key(0), apply_fn=apply_fn,
                        unravel=unravel, syn_steps=0)


def _toy(n_per_class=12, num_classes=3, size=8, seed=0):
  rng = np.random.default_rng(seed)
  x = 0.3 * rng.normal(size=(n_per_class * num_classes, size, size, 3))
  y = np.repeat(np.arange(num_classes), n_per_class)
  for c in range(num_classes):
    x[y == c, :, :, c] += 1.0
  return x.astype(np.float32), y.astype(np.int32)


def test_weighted_epoch_rows_follow_the_weights():
  w = np.array([0.0, 1.0, 3.0, 0.0, 4.0])
  rows = np.asarray(experts.weighted_epoch_rows(jax.random.key(0), w, 40000))
  assert rows.shape == (40000,) and not np.isin(rows, [0, 3]).any()
  freq = np.bincount(rows, minlength=5) / 40000
  # binomial sd at p = 0.5, n = 40000 is 0.0025: 0.015 is 6 sd
  np.testing.assert_allclose(freq, w / w.sum(), atol=0.015)


def test_experts_record_init_and_every_epoch():
  x, y = _toy()
  model = models.get("convnet-d1-w4", num_classes=3)
  buf = experts.train_experts(jax.random.key(0), x, y, model=model, num_experts=2, epochs=3,
                          lr=0.05, batch_size=12, augment=None)
  p0 = model.init(jax.random.split(jax.random.fold_in(jax.random.key(0), 0))[0],
                  jnp.asarray(x[:1]))["params"]
  assert buf.shape == (2, 4, experts.flatten(p0)[0].size)
  np.testing.assert_array_equal(buf[0, 0], np.asarray(experts.flatten(p0)[0]))
  assert (np.linalg.norm(np.diff(buf, axis=1), axis=-1) > 0).all()  # every epoch moved
  again = experts.train_experts(jax.random.key(0), x, y, model=model, num_experts=2, epochs=3,
                            lr=0.05, batch_size=12, augment=None)
  np.testing.assert_array_equal(again, buf)  # same key, same trajectories
  w = np.where(y == 0, 1.0, 0.0)  # only class 0 is ever drawn: a different trajectory
  only0 = experts.train_experts(jax.random.key(0), x, y, model=model, num_experts=1, epochs=1,
                            lr=0.05, batch_size=12, augment=None, weights=w)
  assert not np.allclose(only0[0, 1], buf[0, 1])
  with pytest.raises(ValueError, match="weights"):
    experts.train_experts(jax.random.key(0), x, y, model=model, weights=np.zeros(len(y)))
  with pytest.raises(ValueError, match="batch statistics"):
    experts.train_experts(jax.random.key(0), x, y, model=models.get("convnet-d1-w4-batchnorm",
                                                                 num_classes=3), epochs=1)


@pytest.mark.parametrize("mode", ["exact", "tesla"])
def test_distiller_lowers_the_loss_with_one_trace(mode, run_one_trace):
  x, y = _toy()
  model = models.get("convnet-d1-w4", num_classes=3)
  buf = jnp.asarray(experts.train_experts(jax.random.key(0), x, y, model=model, num_experts=1,
                                      epochs=3, lr=0.05, batch_size=12, augment=None))
  d = distill.mtt(num_classes=3, ipc=2, model=model, num_epochs=3, expert_epochs=2,
                  max_start_epoch=1, syn_steps=4, lr=30.0, lr_lr=1e-5, lr_teacher=0.05,
                  augment=None, mode=mode, execution=distill.Execution(jit=False))
  state, losses = run_one_trace(d.step, d.init(jax.random.key(1), distill.real_data(
      x, y, num_classes=3)), buf, 12)
  assert np.mean(losses[-3:]) < 0.9 * np.mean(losses[:3]), losses
  assert state.syn.images.shape == (6, 8, 8, 3)


def test_distiller_refuses_a_too_short_buffer():
  model = models.get("convnet-d1-w4", num_classes=3)
  with pytest.raises(ValueError, match="exceeds"):
    distill.mtt(num_classes=3, ipc=2, model=model, num_epochs=3, expert_epochs=2,
                max_start_epoch=2)
  with pytest.raises(ValueError, match="batch_syn"):
    distill.mtt(num_classes=3, ipc=2, model=model, num_epochs=30, batch_syn=7)


def test_buffer_round_trip_and_refusals(tmp_path):
  traj = np.random.default_rng(0).normal(size=(2, 4, 7)).astype(np.float32)
  spec = experts.buffer_spec(data={"name": "cmnist", "source_sha256": "ab"}, model="convnet-d1-w4",
                         weighting={"kind": "none"}, trainer={"epochs": 3, "lr": 0.01}, seed=0)
  path = experts.save_buffer(str(tmp_path / "buf"), traj, spec)
  got, meta = experts.load_buffer(path, spec)
  np.testing.assert_array_equal(got, traj)
  assert meta["digest"] == experts.spec_digest(spec) and meta["shape"] == [2, 4, 7]
  kde = dict(spec, weighting={"kind": "kde", "variance": 0.01, "surrogate": "cd"})
  with pytest.raises(ValueError, match="weighting differ"):
    experts.load_buffer(path, kde)
  with open(tmp_path / "buf" / "trajectories.npz", "ab") as f:
    f.write(b"x")
  with pytest.raises(ValueError, match="damaged"):
    experts.load_buffer(path)
  with pytest.raises(FileNotFoundError, match="no expert buffer"):
    experts.load_buffer(str(tmp_path / "none"))


def test_weighted_cross_entropy_experts():
  x, y = _toy()
  model = models.get("convnet-d1-w4", num_classes=3)
  kw = dict(model=model, num_experts=1, epochs=2, lr=0.05, batch_size=12, augment=None)
  plain = experts.train_experts(jax.random.key(0), x, y, **kw)
  # Equal weights: every batch's weighted mean is its plain mean (float rounding apart).
  equal = experts.train_experts(jax.random.key(0), x, y, weights=np.full(len(y), 2.0),
                            weighting="loss", **kw)
  np.testing.assert_allclose(equal, plain, rtol=1e-5, atol=1e-6)
  # Zero weight on classes 1 and 2: only class 0's loss moves the network (the sampler
  # would draw only class 0; the loss weighting passes over every image).
  w = np.where(y == 0, 1.0, 0.0)
  by_loss = experts.train_experts(jax.random.key(0), x, y, weights=w, weighting="loss", **kw)
  assert not np.allclose(by_loss[0, 1], plain[0, 1])
  task = experts.weighted_ce_task(model)
  params, _ = task.init(jax.random.key(0), jnp.asarray(x[:1]), None)
  from jaxdd.tasks import StepBatch
  batch = StepBatch(jnp.asarray(x[:6]), jnp.asarray(y[:6]), jnp.arange(6), jax.random.key(1),
                    jnp.int32(0), jnp.float32(0))
  logits = model.apply({"params": params}, jnp.asarray(x[:6]), train=True)
  ce = np.asarray(optax.softmax_cross_entropy_with_integer_labels(logits, jnp.asarray(y[:6])))
  wb = np.arange(1.0, 7.0)
  loss, _ = task.loss(params, {"sample_weight": jnp.asarray(wb, jnp.float32)}, batch)
  np.testing.assert_allclose(float(loss), (wb * ce).sum() / wb.sum(), rtol=1e-5)
  with pytest.raises(ValueError, match="weighting"):
    experts.train_experts(jax.random.key(0), x, y, weighting="ce", **kw)


def test_mtt_step_is_one_sgd_step_on_the_trajectory_loss():
  x, y = _toy()
  model = models.get("convnet-d1-w4", num_classes=3)
  buf = jnp.asarray(experts.train_experts(jax.random.key(0), x, y, model=model, num_experts=2,
                                      epochs=3, lr=0.05, batch_size=12, augment=None))
  kw = dict(num_classes=3, ipc=2, model=model, num_epochs=3, expert_epochs=2, max_start_epoch=1,
            syn_steps=3, lr_lr=1e-3, lr_teacher=0.05, augment=None, mode="exact")
  d = distill.mtt(lr=30.0, execution=distill.Execution(jit=False), **kw)
  real = distill.real_data(x, y, num_classes=3)
  state = d.init(jax.random.key(1), real)
  assert float(state.extra["syn_lr"]) == np.float32(0.05)
  with HIGHEST:
    new, m = jax.jit(d.step)(state, buf)
    k_e, _, k_loss = jax.random.split(distill.step_key(state), 3)
    e = int(jax.random.randint(k_e, (), 0, 2))
    assert int(m["expert"]) == e and int(m["start_epoch"]) == 0
    unravel = experts.flatten(model.init(jax.random.key(0), jnp.asarray(x[:1]))["params"])[1]
    apply_fn = lambda p, im: model.apply({"params": p}, im, train=True)
    loss_fn = functools.partial(experts.trajectory_loss, apply_fn=apply_fn, unravel=unravel,
                                syn_steps=3, augment=None, mode="exact")
    loss, (g_x, g_lr) = jax.jit(jax.value_and_grad(
        lambda im, lr: loss_fn(im, state.syn.labels, lr, buf[e, 0], buf[e, 2], k_loss),
        argnums=(0, 1)))(state.syn.images, state.extra["syn_lr"])
  # SGD with momentum from a zero buffer: the first update is -lr * grad.
  scale = float(jnp.max(jnp.abs(state.syn.images)))
  np.testing.assert_allclose(np.asarray(new.syn.images),
                             np.asarray(state.syn.images - 30.0 * g_x),
                             atol=1e-5 * max(scale, 30.0 * float(jnp.max(jnp.abs(g_x)))))
  np.testing.assert_allclose(float(new.extra["syn_lr"]), 0.05 - 1e-3 * float(g_lr), rtol=1e-5)
  np.testing.assert_allclose(float(m["loss"]), float(loss), rtol=1e-5)
  # lr and lr_lr are hyperparameters in the state: another lr has the same signature.
  d1, d2 = distill.mtt(lr=30.0, **kw), distill.mtt(lr=300.0, **kw)
  assert d1.step.signature == d2.step.signature
  assert float(d2.init(jax.random.key(1), real).hparams["lr"]) == 300.0
  with pytest.raises(ValueError, match="expert buffer has shape"):
    d1.step(state, buf[:, :3])


def test_a_resumed_buffer_build_equals_one_build(tmp_path):
  x, y = _toy()
  model = models.get("convnet-d1-w4", num_classes=3)
  kw = dict(model=model, epochs=2, lr=0.05, batch_size=12, augment=None)
  spec = experts.buffer_spec(data={"name": "toy"}, model="convnet-d1-w4", weighting={"kind": "none"},
                         trainer={"experts": 3}, seed=0)
  whole = experts.train_experts(jax.random.key(0), x, y, num_experts=3, **kw)
  # A build killed after its first expert left expert-0000.npy in the partial folder.
  path = str(tmp_path / "buf")
  first = experts.train_experts(jax.random.key(0), x, y, num_experts=1, first=0, **kw)[0]
  os.makedirs(path + ".partial")
  with open(os.path.join(path + ".partial", "spec.json"), "w") as f:
    json.dump({"digest": experts.spec_digest(spec)}, f)
  np.save(os.path.join(path + ".partial", "expert-0000.npy"), first + 1.0)  # marks reuse
  traj, meta = experts.build_buffer(path, spec, jax.random.key(0), x, y, num_experts=3, **kw)
  np.testing.assert_array_equal(traj[0], first + 1.0)  # the finished expert was not retrained
  np.testing.assert_array_equal(traj[1:], whole[1:])
  assert not os.path.exists(path + ".partial") and meta["shape"] == list(whole.shape)
  # Built: loaded as is; other settings: refused, the buffer left alone.
  again, _ = experts.build_buffer(path, spec, jax.random.key(5), x, y, num_experts=3, **kw)
  np.testing.assert_array_equal(again, traj)
  with pytest.raises(ValueError, match="other settings"):
    experts.build_buffer(path, dict(spec, seed=1), jax.random.key(0), x, y, num_experts=3, **kw)
  # A partial folder of other settings is discarded, not mixed in.
  other = str(tmp_path / "other")
  os.makedirs(other + ".partial")
  np.save(os.path.join(other + ".partial", "expert-0000.npy"), first + 1.0)
  traj2, _ = experts.build_buffer(other, spec, jax.random.key(0), x, y, num_experts=3, **kw)
  np.testing.assert_array_equal(traj2, whole)


def test_a_buffer_folder_holding_anything_else_is_refused_and_left_alone(tmp_path):
  traj = np.zeros((1, 2, 3), np.float32)
  spec = experts.buffer_spec(data={"name": "toy"}, model="convnet-d1-w4", weighting={"kind": "none"},
                             trainer={"experts": 1}, seed=0)
  # absent, empty, a buffer: accepted
  experts.check_buffer_dir(str(tmp_path / "new"))
  (tmp_path / "empty").mkdir()
  experts.check_buffer_dir(str(tmp_path / "empty"))
  experts.check_buffer_dir(experts.save_buffer(str(tmp_path / "buf"), traj, spec))
  # a user's folder, a SynSet, a file, a partial folder holding a user's file: refused
  user = tmp_path / "user"
  (user / "sub").mkdir(parents=True)
  (user / "thesis.txt").write_text("mine")
  with pytest.raises(ValueError, match=r"holds sub, thesis.txt, which is not an expert buffer"):
    experts.check_buffer_dir(str(user))
  syn = tmp_path / "synset"
  syn.mkdir()
  (syn / "manifest.json").write_text('{"files": {"arrays.npz": "ab", "meta.json": "cd"}}')
  with pytest.raises(ValueError, match="holds a SynSet, not an expert buffer"):
    experts.check_buffer_dir(str(syn))
  (tmp_path / "file").write_text("x")
  with pytest.raises(ValueError, match="is not a folder"):
    experts.check_buffer_dir(str(tmp_path / "file"))
  (tmp_path / "b2.partial").mkdir()
  for name in ("spec.json", "expert-0000.npy", ".expert-0001.npy.x1y2.tmp", "notes.txt"):
    (tmp_path / "b2.partial" / name).write_text("x")
  with pytest.raises(ValueError, match=r"b2.partial, where a build .* holds notes.txt"):
    experts.check_buffer_dir(str(tmp_path / "b2"))
  # build_buffer checks first: nothing is trained and nothing is removed
  with pytest.raises(ValueError, match="not an expert buffer"):
    experts.build_buffer(str(user), spec, jax.random.key(0), np.zeros((3, 8, 8, 1), np.float32),
                         np.arange(3), model=models.get("convnet-d1-w4", num_classes=3),
                         num_experts=1, epochs=1, augment=None)
  assert sorted(os.listdir(user)) == ["sub", "thesis.txt"] and (user / "thesis.txt").read_text() == "mine"
  assert len(os.listdir(tmp_path / "b2.partial")) == 4
