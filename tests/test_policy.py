"""jaxdd.policy: the CPU/accelerator layout choices, decided once and pinnable.

Every site that used to test ``jax.default_backend()`` reads the active
policy; pinning the accelerator policy on CPU must change the layout and not
the results (float tolerance), which is what makes pinning safe.
"""
import dataclasses
import importlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdd import augment, distill, matching, models, policy, train
from jaxdd.structs import Batch, SynSet

evaluate_lib = importlib.import_module("jaxdd.evaluate")

CPU, ACC = policy.POLICIES["cpu"], policy.POLICIES["accelerator"]
# The cpu layout at sizes that bite on tiny shapes (micro-batches, blocks and chunks all split).
CPU_TINY = dataclasses.replace(CPU, name="cpu-tiny", micro_batch=2, predict_block=4,
                               real_chunk=4, syn_chunk=1)
TINY = models.ConvNet(num_classes=3, depth=1, width=4)


def test_auto_is_the_cpu_policy_here_and_names_resolve():
  assert jax.default_backend() == "cpu"
  assert policy.resolve("auto") == policy.resolve() == CPU
  assert policy.current() is policy.resolve("auto")
  assert policy.resolve("accelerator") is ACC and policy.resolve(CPU_TINY) is CPU_TINY
  assert (CPU.conv, CPU.parallel, CPU.train_loop) == ("loop_safe", "map", "step")
  assert (CPU.micro_batch, CPU.predict_block, CPU.real_chunk, CPU.syn_chunk) == (12, 32, 32, 10)
  assert (CPU.forward_conv, ACC.forward_conv) == ("winograd", "xla")
  assert (CPU.train_conv, ACC.train_conv) == ("winograd", "xla")
  # one after another on accelerators too (measured on an H100: docs/results/speed-gpu.md, "Speed on GPU")
  assert (ACC.conv, ACC.parallel, ACC.train_loop) == ("xla", "map", "scan")
  assert (ACC.micro_batch, ACC.predict_block, ACC.real_chunk, ACC.syn_chunk) == (None,) * 4
  assert train.CPU_MICRO_BATCH == CPU.micro_batch
  assert (CPU.steps_per_call, ACC.steps_per_call) == (1, 20)
  with pytest.raises(ValueError, match="steps_per_call must be a positive int"):
    policy.variant("cpu", steps_per_call=0)
  assert hash(CPU) != hash(ACC)  # usable as a cache key


def test_use_pins_nests_and_restores_also_on_errors():
  with policy.use("accelerator") as p:
    assert p is ACC and policy.current() is ACC
    with policy.use(CPU_TINY):
      assert policy.current() is CPU_TINY
    assert policy.current() is ACC
  assert policy.current() is CPU
  with pytest.raises(RuntimeError, match="boom"):
    with policy.use("accelerator"):
      raise RuntimeError("boom")
  assert policy.current() is CPU
  with pytest.raises(ValueError):
    with policy.use("gpu"):  # a bad name pins nothing
      pass
  assert policy.current() is CPU
  f = policy.pinned("accelerator", lambda: policy.current().name)
  assert f() == "accelerator" and policy.current() is CPU


@pytest.mark.parametrize("bad", ["gpu", "", None, 3])
def test_unknown_policies_name_the_choices(bad):
  with pytest.raises(ValueError, match=r"use 'auto', one of \['accelerator', 'cpu'\]"):
    policy.resolve(bad)


@pytest.mark.parametrize("field,value,match", [
    ("conv", "fast", r"Policy.conv must be one of \('loop_safe', 'xla'\), got 'fast'"),
    ("parallel", "pmap", r"Policy.parallel must be one of \('map', 'vmap'\)"),
    ("train_loop", "while", r"Policy.train_loop must be one of \('step', 'scan'\)"),
    ("micro_batch", 0, "Policy.micro_batch must be a positive int or None, got 0"),
    ("predict_block", 2.5, "Policy.predict_block must be a positive int or None"),
    ("real_chunk", True, "Policy.real_chunk must be a positive int or None, got True"),
    ("syn_chunk", -1, "Policy.syn_chunk must be a positive int or None"),
    ("name", "", "Policy.name must be a non-empty string"),
    ("forward_conv", "fft", r"Policy.forward_conv must be one of \('winograd', 'xla'\)"),
    ("train_conv", "fft", r"Policy.train_conv must be one of \('winograd', 'xla'\)"),
    ("class_augment", "loop", r"Policy.class_augment must be one of \('map', 'vmap'\)"),
    ("input_grad", "fft", r"Policy.input_grad must be one of \('conv', 'matmul'\)"),
])
def test_bad_fields_are_rejected_with_the_allowed_values(field, value, match):
  with pytest.raises(ValueError, match=match):
    dataclasses.replace(CPU, **{field: value})


def test_a_variants_name_resolves_to_the_variant():
  # what variant() names, resolve() reads back: a command line or a run config can carry it
  for v in (policy.variant("cpu", train_conv="xla", micro_batch=16, syn_chunk=None),
            policy.variant("accelerator", class_augment="vmap", input_grad="matmul",
                           steps_per_call=5)):
    assert policy.resolve(v.name) == v
  assert policy.resolve("auto+micro_batch=4") == policy.variant(CPU, micro_batch=4)  # here
  for bad, match in (("cpu+micro_batch=lots", "micro_batch takes a whole number or None"),
                     ("accelerator+steps_per_call=None", "steps_per_call takes a whole number,"),
                     ("cpu+train_conv", "'train_conv' is not FIELD=VALUE"),
                     ("cpu+=xla", "'=xla' is not FIELD=VALUE"),
                     ("accelerator+class_augment=loop", "Policy.class_augment must be one of"),
                     ("tpu+class_augment=vmap", "unknown policy 'tpu\\+class_augment=vmap'")):
    with pytest.raises(ValueError, match=match):
      policy.resolve(bad)


def test_checking_a_policy_leaves_jaxs_backend_alone(monkeypatch):
  # a run's configuration is checked before jax.distributed.initialize, which must come
  # before anything asks JAX for its backend
  def asked():
    raise AssertionError("check() asked JAX for its backend")
  monkeypatch.setattr(jax, "default_backend", asked)
  for ok in ("auto", "cpu", "auto+class_augment=vmap", "accelerator+input_grad=matmul"):
    policy.check(ok)
  for bad, match in (("auto+class_augment=loop", "Policy.class_augment must be one of"),
                     ("gpu", "unknown policy 'gpu'")):
    with pytest.raises(ValueError, match=match):
      policy.check(bad)


def test_winograd_forwards_need_the_loop_safe_kernels():
  with pytest.raises(ValueError, match="forward_conv='winograd' goes through the loop_safe"):
    dataclasses.replace(CPU, conv="xla")
  with pytest.raises(ValueError, match="train_conv='winograd' goes through the loop_safe"):
    dataclasses.replace(CPU, conv="xla", forward_conv="xla")
  assert dataclasses.replace(ACC, forward_conv="xla").forward_conv == "xla"


def test_variant_renames_and_checks_the_changes():
  v = policy.variant("cpu", train_conv="xla", micro_batch=16)
  assert (v.name, v.train_conv, v.micro_batch, v.conv) == (
      "cpu+train_conv=xla+micro_batch=16", "xla", 16, CPU.conv)
  assert policy.variant("accelerator") is ACC
  with pytest.raises(ValueError, match=r"not a Policy field to change: \['speed'\]"):
    policy.variant("cpu", speed=2)
  with pytest.raises(ValueError, match="Policy.micro_batch must be a positive int"):
    policy.variant("cpu", micro_batch=0)


def test_parallel_loop_and_blocks_follow_the_policy_and_explicit_arguments_win():
  assert train.resolve_parallel("auto") == "map"
  assert train.resolve_loop("auto") == "step"
  proto = train.Protocol("p", epochs=1)
  assert train.predict_block(proto, 1000, "map") == 32
  with policy.use(policy.variant("accelerator", parallel="vmap")):
    assert train.resolve_parallel("auto") == "vmap"
    assert train.resolve_parallel("map") == "map"
  with policy.use("accelerator"):
    assert train.resolve_parallel("auto") == "map"
    assert train.resolve_loop("auto") == "scan"
    assert train.resolve_loop("step") == "step"
    assert train.predict_block(proto, 1000, "map") == min(proto.test_batch_size, 1000)


def _custom_vjps(fn, *args) -> int:
  # A fresh function each call: jax caches traces per function, whatever the policy.
  return str(jax.make_jaxpr(lambda *a: fn(*a))(*args)).count("custom_vjp_call")


def test_conv_kernels_follow_the_policy():
  x = jnp.ones((2, 6, 6, 3))
  conv = models.TorchConv(4)
  v = conv.init(jax.random.key(0), x)
  # A model of one's own asks for the loop-safe kernels; a plain nn.Conv keeps lax's.
  asks = nn.Conv(4, (3, 3), padding=((1, 1), (1, 1)), conv_general_dilated=models.policy_conv)
  plain = nn.Conv(4, (3, 3), padding=((1, 1), (1, 1)))
  pv = plain.init(jax.random.key(0), x)

  def loss(v, x):
    return conv.apply(v, x).sum()

  assert _custom_vjps(loss, v, x) == 1
  assert _custom_vjps(lambda v, x: asks.apply(v, x).sum(), pv, x) == 1
  assert _custom_vjps(lambda v, x: plain.apply(v, x).sum(), pv, x) == 0
  with policy.use("accelerator"):
    assert _custom_vjps(loss, v, x) == 0
    assert _custom_vjps(lambda v, x: asks.apply(v, x).sum(), pv, x) == 0
    y_xla = conv.apply(v, x)
  np.testing.assert_allclose(conv.apply(v, x), y_xla, rtol=1e-5, atol=1e-6)


class _UserNet(nn.Module):
  """A user's model: plain flax layers, nothing of jaxdd's."""
  conv_general_dilated: object = None

  @nn.compact
  def __call__(self, x, *, train=False):
    x = nn.relu(nn.Conv(4, (3, 3), padding=((1, 1), (1, 1)),
                        conv_general_dilated=self.conv_general_dilated)(x))
    # flax's default padding, "SAME"
    x = nn.Conv(4, (3, 3), strides=(2, 2), conv_general_dilated=self.conv_general_dilated)(x)
    return nn.Dense(3)(x.reshape(x.shape[0], -1))


class _Holds(nn.Module):
  """A user's model around a user's conv module object."""
  conv: nn.Module

  @nn.compact
  def __call__(self, x, *, train=False):
    return self.conv(x).mean((1, 2))[:, :3]


def _toy_jnp(per_class=4):
  x, y = _toy(per_class=per_class)
  return jnp.asarray(x), jnp.asarray(y, jnp.int32)


def test_training_leaves_a_users_conv_modules_as_they_are():
  x, y = _toy_jnp()
  conv = nn.Conv(4, (3, 3))
  net = _UserNet()
  before = (hash(conv), hash(net), conv.conv_general_dilated)
  task = train.standard_task(net)
  prot = train.Protocol("p", epochs=1, batch_size=4, augment=None)
  params, state = task.init(jax.random.key(0), x, y)
  fit = lambda p: train.fit(jax.random.key(1), p, state, x, y, task=task, protocol=prot)[0]
  # Traced by jaxdd's trainer under the cpu policy, the user's nn.Conv layers keep lax's
  # convolution: no loop-safe kernel (a custom VJP) appears in the program.
  assert str(jax.make_jaxpr(fit)(params)).count("custom_vjp_call") == 0
  jax.jit(fit)(params)
  list(train.fit_epochs(jax.random.key(1), params, state, x, y, task=task, protocol=prot,
                        loop="step"))
  ct = train.standard_task(_Holds(conv))
  cv, cs = ct.init(jax.random.key(2), x, y)
  train.fit(jax.random.key(3), cv, cs, x, y, task=ct, protocol=prot)
  assert conv.conv_general_dilated is None and net.conv_general_dilated is None
  assert (hash(conv), hash(net), conv.conv_general_dilated) == before
  assert conv == nn.Conv(4, (3, 3)) and net == _UserNet()


def test_the_opt_in_computes_what_plain_nn_conv_computes():
  x, y = _toy_jnp()
  plain, asks = _UserNet(), _UserNet(conv_general_dilated=models.policy_conv)
  v = plain.init(jax.random.key(0), x)
  assert jax.tree.map(jnp.shape, asks.init(jax.random.key(0), x)) == \
      jax.tree.map(jnp.shape, v)

  def scanned(net):  # value and gradient inside a loop, where the kernels matter on CPU
    def body(c, xx):
      loss, g = jax.value_and_grad(
          lambda p: jnp.sum(jnp.sin(net.apply(p, xx))) + jnp.sum(net.apply(p, xx) ** 2))(v)
      return c + loss, g
    return jax.jit(lambda xs: jax.lax.scan(body, 0.0, xs))(x.reshape(3, 4, 8, 8, 3))

  (l0, g0), (l1, g1) = scanned(plain), scanned(asks)
  np.testing.assert_allclose(l1, l0, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), g1, g0)
  # explicit pads and the default "SAME" with stride 2 both take the loop-safe kernels
  n = str(jax.make_jaxpr(lambda p: jax.grad(lambda q: asks.apply(q, x).sum())(p))(v))
  assert n.count("custom_vjp_call") == 2
  # and the prediction agrees with plain nn.Conv's under training, too
  task_p, task_a = train.standard_task(plain), train.standard_task(asks)
  prot = train.Protocol("p", epochs=1, batch_size=4, augment=None)
  pp, st = task_p.init(jax.random.key(0), x, y)
  out_p = train.fit(jax.random.key(1), pp, st, x, y, task=task_p, protocol=prot)[0]
  out_a = train.fit(jax.random.key(1), pp, st, x, y, task=task_a, protocol=prot)[0]
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), out_a, out_p)


def _toy(per_class=8, size=8):
  rng = np.random.default_rng(0)
  labels = np.repeat(np.arange(3), per_class)
  colours = rng.uniform(-1, 1, size=(3, 3))
  images = colours[labels][:, None, None, :] + 0.3 * rng.normal(size=(len(labels), size, size, 3))
  return images.astype(np.float32), labels


def _dm_step(pol, spy):
  x, y = _toy()
  real = distill.real_data(x, y, num_classes=3)
  d = distill.dm(num_classes=3, ipc=2, model=models.ConvNet(3, depth=1, width=8),
                 real_per_class=8, augment=None, execution=distill.Execution(policy=pol))
  # The step is traced under the Execution's policy, whatever policy.use has pinned.
  state, metrics = d.step(d.init(jax.random.key(0), real), real)
  return spy.pop(), np.asarray(state.syn.images), float(metrics["loss"])


def test_dm_chunks_follow_the_policy_and_results_agree(monkeypatch):
  seen = []

  def spy(*args, **kwargs):
    seen.append((kwargs["real_chunk"], kwargs["syn_chunk"], policy.current().name))
    return dm_loss(*args, **kwargs)

  dm_loss = matching.dm_loss
  monkeypatch.setattr(matching, "dm_loss", spy)
  chunks_acc, images_acc, loss_acc = _dm_step("accelerator", seen)
  chunks_cpu, images_cpu, loss_cpu = _dm_step(CPU_TINY, seen)
  assert chunks_acc == (None, None, "accelerator") and chunks_cpu == (4, 1, "cpu-tiny")
  np.testing.assert_allclose(loss_cpu, loss_acc, rtol=1e-5)
  np.testing.assert_allclose(images_cpu, images_acc, rtol=1e-5, atol=1e-6)
  real = distill.real_data(*_toy(), num_classes=3)
  # explicit chunks win over the policy's
  d = distill.dm(num_classes=3, ipc=2, model=TINY, real_per_class=8, augment=None,
                 execution=distill.Execution(policy="accelerator", real_chunk=3, syn_chunk=2))
  d.step.lower(d.init(jax.random.key(0), real), real)  # tracing is enough
  assert seen.pop() == (3, 2, "accelerator")


@pytest.mark.parametrize("method", ["dm", "gm"])
def test_classes_augmented_all_at_once_give_the_values_of_one_after_another(method, monkeypatch):
  # class_augment="vmap": every DSA family for every class, the drawn one selected, no loop and
  # no branch on the device; the drawn families, the loss and the updated images are those of
  # "map" (float rounding: the same operations, fused differently)
  seen = []
  loss_fn = getattr(matching, f"{method}_loss")

  def spy(*args, **kwargs):
    seen.append(kwargs["map_classes"])
    return loss_fn(*args, **kwargs)
  monkeypatch.setattr(matching, f"{method}_loss", spy)
  x, y = _toy()
  real = distill.real_data(x, y, num_classes=3)
  out = {}
  for how in ("map", "vmap"):
    ex = distill.Execution(policy=policy.variant("accelerator", class_augment=how))
    make = distill.dm if method == "dm" else distill.gm
    kw = (dict(real_per_class=8) if method == "dm"
          else dict(real_per_class=4, outer_loop=1, inner_loop=1, net_batch_size=4))
    d = make(num_classes=3, ipc=2, model=models.ConvNet(3, depth=1, width=8),
             augment=augment.dsa("color_crop_cutout_flip_scale_rotate"), execution=ex, **kw)
    state = d.init(jax.random.key(0), real)
    for _ in range(3 if method == "dm" else 1):  # gradient matching: compiling is the cost
      state, metrics = d.step(state, real)
    out[how] = (np.asarray(state.syn.images), float(metrics["loss"]))
  assert seen == [True, False]  # traced once each: the loop for "map", the batch for "vmap"
  np.testing.assert_allclose(out["vmap"][1], out["map"][1], rtol=1e-4)
  np.testing.assert_allclose(out["vmap"][0], out["map"][0], rtol=1e-4, atol=1e-5)


def test_evaluation_agrees_under_both_policies():
  x, y = _toy(per_class=4)
  syn = SynSet(jnp.asarray(x), jnp.asarray(y))
  tx, ty = _toy(per_class=6, size=8)
  test = Batch(jnp.asarray(tx[::-1]), jnp.asarray(ty[::-1]))
  proto = train.Protocol("policy-test", epochs=3, batch_size=8, lr=0.05, test_batch_size=16)
  results = {}
  # the accelerator layout with its networks batched (vmap), against the CPU layout's map
  for pol in (policy.variant("accelerator", parallel="vmap"), CPU_TINY):
    with policy.use(pol):
      results[policy.resolve(pol).name] = evaluate_lib.evaluate_synset(
          jax.random.key(1), syn, test, model=TINY, protocol=proto, num_models=2)
  acc, cpu = results["accelerator+parallel=vmap"], results["cpu-tiny"]
  assert (acc.parallel, cpu.parallel) == ("vmap", "map")
  np.testing.assert_allclose(cpu.train_loss, acc.train_loss, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(cpu.overall, acc.overall)


def test_a_pinned_policy_holds_in_its_own_thread_only():
  import threading

  from jaxdd import policy as policy_lib
  seen = {}
  ready, done = threading.Event(), threading.Event()

  def other():
    ready.wait(5)
    seen["other"] = policy_lib.current().name
    done.set()

  t = threading.Thread(target=other)
  t.start()
  with policy_lib.use("accelerator"):
    ready.set()
    done.wait(5)
    seen["here"] = policy_lib.current().name
  t.join(5)
  assert seen == {"here": "accelerator", "other": policy_lib.resolve("auto").name}
