"""The CPU/accelerator policy: every backend-dependent layout choice, decided once.

jaxdd computes the same numbers on every backend but lays the work out
differently on XLA:CPU and on accelerators (GPU, TPU), because XLA:CPU is slow
at some programs accelerators run well: backward convolutions inside loops
(jax-ml/jax#12868), grouped convolutions of vmapped networks, large
activations that fall out of cache (timings in docs/results/speed-evaluation.md, "Speed on CPU"). A
:class:`Policy` holds all of those choices; :data:`POLICIES` has the two
built-in ones, ``"cpu"`` and ``"accelerator"``.

The library reads :func:`current` wherever it lays work out: the convolution
kernels of :class:`jaxdd.models.TorchConv` (every convolution of jaxdd's
models) and of :func:`jaxdd.models.policy_conv` (a model of your own that asks
for them: jaxdd never rewrites a model's layers), the norm, ReLU and pooling of
:class:`jaxdd.models.ConvNet`'s blocks (``norm_block``), the trainer's micro-batches and
``parallel="auto"`` (:mod:`jaxdd.train`), the prediction blocks, ``loop="auto"`` of
:func:`jaxdd.train.fit_epochs` (the surrogate's trainer), and where convolutions run as
Winograd (on CPU: gradient-free forwards, ``forward_conv``, and the networks the
trainer trains, ``train_conv``). A distiller takes its policy (and with it the
default ``real_chunk``/``syn_chunk``) from its :class:`jaxdd.distill.Execution`
instead, explicitly, and pins it around its step. Explicit arguments always win (``Execution(real_chunk=None)``, ``train_surrogate(loop="scan")``,
``evaluate_synset(parallel="vmap")``). By default the policy follows
``jax.default_backend()``; :func:`use` pins another one for a block, e.g. to
benchmark the accelerator layout on CPU. Both layouts give the same results up
to float rounding, which is what makes pinning safe.

Jitted programs keep the layout they were traced with. jaxdd's training,
prediction and surrogate programs take the policy as a static argument, and a
:class:`~jaxdd.distill.Distiller` is traced under its
:class:`~jaxdd.distill.Execution`'s policy (given explicitly, else the
backend's: never the pinned one); but a function you ``jax.jit`` yourself is traced
at its first call, so pin the policy before that call (or wrap the function with
:func:`pinned`). A pin is a context variable: it holds for the thread (or
asyncio task) that made it, and another thread sees its own.

Example:
  >>> from jaxdd import policy
  >>> policy.resolve("cpu").parallel, policy.resolve("accelerator").parallel
  ('map', 'map')
  >>> with policy.use("accelerator"):
  ...   policy.current().train_loop
  'scan'
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
from typing import Callable, Iterator, Literal, Union

import jax

_CHOICES = {"conv": ("loop_safe", "xla"), "parallel": ("map", "vmap"),
            "train_loop": ("step", "scan"), "forward_conv": ("winograd", "xla"),
            "train_conv": ("winograd", "xla"), "class_augment": ("map", "vmap"),
            "input_grad": ("conv", "matmul"), "norm_block": ("layers", "fused"),
            "map_networks": ("program", "cores")}
_SIZES = ("micro_batch", "predict_block", "real_chunk", "syn_chunk")


@dataclasses.dataclass(frozen=True)
class Policy:
  """The backend-dependent layout choices (hashable: usable as a cache key).

  Attributes:
    name: a label (``"cpu"``, ``"accelerator"``, or your own).
    conv: ``"loop_safe"`` routes jaxdd's convolutions (and those of a
      model that passes ``conv_general_dilated=jaxdd.models.policy_conv`` to
      its ``nn.Conv`` layers; plain ``nn.Conv`` layers are left alone) through
      :func:`jaxdd.models.loop_safe_conv`, whose hand-written gradients avoid
      XLA:CPU's slow backward convolutions inside loops; ``"xla"`` leaves them
      to ``lax.conv_general_dilated``.
    parallel: how ``parallel="auto"`` trains several networks in one program:
      ``"map"`` (one after another) or ``"vmap"`` (batched).
    train_loop: ``loop="auto"`` of :func:`jaxdd.train.fit_epochs` (the
      surrogate's trainer): ``"step"`` (one compiled step per batch, driven
      from the host) or ``"scan"`` (one program per epoch).
    micro_batch: the trainer splits the batches of per-sample tasks into
      micro-batches of about this size (None: whole batches).
    predict_block: the largest prediction block when networks predict one
      after another (``parallel="map"``); None: the protocol's test batch size.
    real_chunk, syn_chunk: the default ``real_chunk`` (DM and gradient
      matching) and ``syn_chunk`` (DM) of :mod:`jaxdd.distill`; None: all at once.
    forward_conv: the convolutions of gradient-free forwards (DM's real
      images, prediction): ``"winograd"`` runs the 3x3 ones with >= 96
      channels on even-sized maps as Winograd F(2x2, 3x3)
      (:mod:`jaxdd._src.winograd`; 2.25x fewer multiplies, the same values up
      to float rounding; needs ``conv="loop_safe"``, whose kernels it goes
      through); ``"xla"`` leaves them to the ``conv`` choice.
    train_conv: the same for the networks :mod:`jaxdd.train` trains
      (evaluation, the inner loop of gradient matching, the surrogate) and
      the real images' weight gradient of gradient matching:
      ``"winograd"`` with hand-written gradients that stay in the transform
      domain (the weight and input gradients also take 2.25x fewer
      multiplies). The ``cpu`` run preset's width-32 networks are too thin
      for either (lax's convolutions).
    class_augment: how a matching step on one device augments its classes, each
      with the DSA family it draws (:func:`jaxdd.matching.dm_loss`,
      :func:`jaxdd.matching.gm_loss`): ``"map"``, one class after another, only
      the drawn family computed (a loop with a branch per class); ``"vmap"``, all
      classes at once, every family computed for every class and the drawn one
      selected (no loop and no branch, several times the augmentation's small
      work). The same values; on a mesh the classes are always batched.
    input_grad: the gradient of a convolution with few input channels (a
      network's first layer) with respect to its input, under ``conv="xla"``:
      ``"conv"``, the transposed convolution XLA builds (on a GPU a kernel tiled
      for many more than its 3 output channels); ``"matmul"``, one matrix
      product into patch space and a sum of shifted slices
      (:func:`jaxdd._src.thin_conv.thin_input_conv`; the same values up to float
      rounding). ``conv="loop_safe"`` already takes it as a matrix product.
    norm_block: how :class:`jaxdd.models.ConvNet` (instance norm, average pooling) runs the
      norm, ReLU and pooling after each convolution: ``"layers"``, one layer after another,
      differentiated by JAX; ``"fused"``, one operation with one hand-written gradient that
      stores no normalised maps and takes the statistics in one pass
      (:func:`jaxdd._src.fused_norm.instance_norm_relu_avg_pool`; the same values up to float
      rounding).
    map_networks: how networks trained one after another (``parallel="map"`` of
      :func:`jaxdd.train.train_models` and :func:`jaxdd.train.train_synsets`) run on a CPU:
      ``"program"``, a ``lax.map`` in one program that spreads each product over every core;
      ``"cores"``, as many networks at once as there are cores, each by a program that keeps
      to one core (:mod:`jaxdd.train.cores`; bit-identical values). Only on the CPU backend,
      with at least 2 cores and at least as many networks as cores; otherwise ``"program"``.
  """
  name: str
  conv: Literal["loop_safe", "xla"]
  parallel: Literal["map", "vmap"]
  train_loop: Literal["step", "scan"]
  micro_batch: int | None
  predict_block: int | None
  real_chunk: int | None
  syn_chunk: int | None
  forward_conv: Literal["winograd", "xla"] = "xla"
  train_conv: Literal["winograd", "xla"] = "xla"
  steps_per_call: int = 1
  class_augment: Literal["map", "vmap"] = "map"
  input_grad: Literal["conv", "matmul"] = "conv"
  norm_block: Literal["layers", "fused"] = "layers"
  map_networks: Literal["program", "cores"] = "program"

  def __post_init__(self):
    if not isinstance(self.name, str) or not self.name:
      raise ValueError(f"Policy.name must be a non-empty string, got {self.name!r}")
    for field, allowed in _CHOICES.items():
      value = getattr(self, field)
      if value not in allowed:
        raise ValueError(f"Policy.{field} must be one of {allowed}, got {value!r}")
    for field in _SIZES:
      value = getattr(self, field)
      if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"Policy.{field} must be a positive int or None, got {value!r}")
    if (isinstance(self.steps_per_call, bool) or not isinstance(self.steps_per_call, int)
        or self.steps_per_call < 1):
      raise ValueError(f"Policy.steps_per_call must be a positive int, got {self.steps_per_call!r}")
    for field in ("forward_conv", "train_conv"):
      if getattr(self, field) == "winograd" and self.conv != "loop_safe":
        raise ValueError(f"Policy.{field}='winograd' goes through the loop_safe kernels; "
                         f"set conv='loop_safe' or {field}='xla'")


# Micro-batches of about 12 on CPU (10 of a batch of 100, 16 of 256, 12 and a
# remainder of 4 for 244) were chosen by timing ConvNet-3 (width 128) training
# steps with micro-batches of 5 to 32 and whole batches, all compiled in one
# process and timed alternately (docs/results/speed-evaluation.md, "Evaluation side by side with the PyTorch reference"; our reading:
# the maps of a few images stay in cache; with Winograd convolutions, 16 of 256
# beat 8). Prediction blocks of 32, and chunks of 32 real / 10 synthetic
# images, by timing the DM and gradient-matching steps (docs/results/speed-evaluation.md, "Where an
# evaluation step spends its time", "One DM step", "One gradient-matching outer
# iteration"). Winograd for gradient-free forwards and trained networks: docs/results/speed-distillation.md,
# "One DM step" and "Evaluation side by side with the PyTorch reference".
POLICIES: dict[str, Policy] = {
    "cpu": Policy("cpu", conv="loop_safe", parallel="map", train_loop="step", micro_batch=12,
                  predict_block=32, real_chunk=32, syn_chunk=10, forward_conv="winograd",
                  train_conv="winograd", map_networks="cores"),
    # parallel="map" on accelerators too: on one H100 (jax 0.11.2, CUDA 13), 5 evaluation
    # networks vmapped in one program ran at 0.91x (IPC 10) and 0.70x (IPC 50) the speed of
    # the same networks one after another (docs/results/speed-gpu.md, "Speed on GPU"): vmap over conv
    # weights lowers to grouped convolutions, a slow path there as on CPU.
    # steps_per_call: on the 2-core CPU the pipeline's host work is within the noise of
    # a 6 ms step at one step per call (docs/results/speed-distillation.md, "Host overhead per step"), so 1 there.
    # On one H100 the paper preset's 20,000 DM steps took about twice the benchmark's
    # 5 ms per step; 20 steps per call cut the host round trips 20-fold. This default has
    # not been timed on a GPU yet (docs/results/speed-gpu.md says so); override with --steps-per-call.
    "accelerator": Policy("accelerator", conv="xla", parallel="map", train_loop="scan",
                          micro_batch=None, predict_block=None, real_chunk=None, syn_chunk=None,
                          steps_per_call=20),
}

PolicyLike = Union[str, Policy]

# The policy pinned by use(), per thread and asyncio task (a context variable: a pin in one
# thread is not seen by another); None: none pinned.
_PINNED: contextvars.ContextVar = contextvars.ContextVar("jaxdd_policy", default=None)


def _auto() -> Policy:
  return POLICIES["cpu"] if jax.default_backend() == "cpu" else POLICIES["accelerator"]


def resolve(policy: PolicyLike = "auto") -> Policy:
  """The :class:`Policy` meant by ``policy``.

  Args:
    policy: ``"auto"`` (by ``jax.default_backend()``, decided once per
      process), a name in :data:`POLICIES`, a variant of either written as
      :func:`variant` names it (``"accelerator+class_augment=vmap+input_grad=matmul"``:
      the fields changed, ``None`` for no size), or a :class:`Policy`.

  Returns:
    A :class:`Policy`.

  Raises:
    ValueError: an unknown name, field or value, or another type.

  Example:
    >>> resolve("cpu").micro_batch
    12
    >>> p = resolve("cpu+micro_batch=16+syn_chunk=None")
    >>> p.micro_batch, p.syn_chunk, resolve(p.name) == p
    (16, None, True)
  """
  if isinstance(policy, Policy):
    return policy
  if policy == "auto":
    return _auto()
  if isinstance(policy, str) and policy in POLICIES:
    return POLICIES[policy]
  if isinstance(policy, str) and "+" in policy:
    base, *changes = policy.split("+")
    if base == "auto" or base in POLICIES:
      return variant(base, **dict(_change(c, policy) for c in changes))
  raise ValueError(f"unknown policy {policy!r}; use 'auto', one of {sorted(POLICIES)}, a "
                   "variant of one (e.g. 'accelerator+class_augment=vmap') or a "
                   "jaxdd.policy.Policy (e.g. dataclasses.replace(POLICIES['cpu'], ...))")


def check(policy: PolicyLike) -> None:
  """Raises the ValueError :func:`resolve` would raise for ``policy``, without asking JAX for
  its backend (a run's configuration is checked before ``jax.distributed.initialize``): a
  variant of ``"auto"`` is checked against every named policy.

  Example:
    >>> check("auto+class_augment=vmap")
    >>> check("cpu+speed=2")
    Traceback (most recent call last):
    ...
    ValueError: not a Policy field to change: ['speed']; the fields: ...
  """
  if isinstance(policy, str) and "+" in policy and policy.split("+", 1)[0] == "auto":
    for name in POLICIES:
      resolve(name + policy[len("auto"):])
  elif policy != "auto":
    resolve(policy)


def _change(text: str, whole: str) -> tuple[str, object]:
  """``"field=value"`` of a variant's name as the field's value (an int or None for the sizes
  and ``steps_per_call``, else the string)."""
  field, sep, value = text.partition("=")
  if not sep or not field:
    raise ValueError(f"policy {whole!r}: {text!r} is not FIELD=VALUE (e.g. "
                     "'accelerator+class_augment=vmap')")
  if field in _SIZES or field == "steps_per_call":
    if value == "None" and field != "steps_per_call":
      return field, None
    try:
      return field, int(value)
    except ValueError:
      raise ValueError(f"policy {whole!r}: {field} takes a whole number"
                       f"{'' if field == 'steps_per_call' else ' or None'}, got {value!r}") from None
  return field, value


def variant(policy: PolicyLike = "auto", **changes) -> Policy:
  """``policy`` with some fields changed, named after the changes (a cache key of its own).

  Args:
    policy: anything :func:`resolve` takes.
    **changes: :class:`Policy` fields and their new values.

  Returns:
    The resolved policy itself when ``changes`` is empty, else a new one named
    ``"<name>+<field>=<value>..."``.

  Raises:
    ValueError: an unknown field, or a value the fields' checks refuse.

  Example:
    >>> variant("cpu", train_conv="xla", micro_batch=16).name
    'cpu+train_conv=xla+micro_batch=16'
  """
  base = resolve(policy)
  if not changes:
    return base
  fields = [f.name for f in dataclasses.fields(Policy) if f.name != "name"]
  unknown = sorted(set(changes) - set(fields))
  if unknown:
    raise ValueError(f"not a Policy field to change: {unknown}; the fields: {fields}")
  label = "+".join(f"{k}={v}" for k, v in changes.items())
  return dataclasses.replace(base, name=f"{base.name}+{label}", **changes)


def current() -> Policy:
  """The active policy: the innermost :func:`use`, else ``resolve("auto")``.

  Example:
    >>> current() == resolve("auto")
    True
  """
  pinned_policy = _PINNED.get()
  return _auto() if pinned_policy is None else pinned_policy


@contextlib.contextmanager
def use(policy: PolicyLike) -> Iterator[Policy]:
  """Pins ``policy`` (anything :func:`resolve` takes) for the ``with`` block; nestable.

  The previous policy is restored on exit, also when the block raises. The pin
  holds in this thread (or asyncio task) only: a context variable.

  Example:
    >>> import dataclasses
    >>> with use(dataclasses.replace(POLICIES["cpu"], name="cpu-16", micro_batch=16)) as p:
    ...   current().micro_batch
    16
    >>> current() is p
    False
  """
  resolved = resolve(policy)
  token = _PINNED.set(resolved)
  try:
    yield resolved
  finally:
    _PINNED.reset(token)


def pinned(policy: PolicyLike, fn: Callable) -> Callable:
  """``fn`` running under ``policy`` at every call: wrap a function before ``jax.jit``
  so that its trace, whenever it happens, uses that policy's layout.

  Example:
    >>> f = pinned("accelerator", lambda: current().name)
    >>> f()
    'accelerator'
  """
  resolved = resolve(policy)

  @functools.wraps(fn)
  def run(*args, **kwargs):
    with use(resolved):
      return fn(*args, **kwargs)

  return run
