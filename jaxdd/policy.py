"""The CPU/accelerator policy: every backend-dependent layout choice, decided once.

jaxdd computes the same numbers on every backend but lays the work out
differently on XLA:CPU and on accelerators (GPU, TPU), because XLA:CPU is slow
at some programs accelerators run well: backward convolutions inside loops
(jax-ml/jax#12868), grouped convolutions of vmapped networks, large
activations that fall out of cache (timings in RESULTS.md §4). A
:class:`Policy` holds all of those choices; :data:`POLICIES` has the two
built-in ones, ``"cpu"`` and ``"accelerator"``.

The library reads :func:`current` wherever it lays work out: the convolution
kernels of :class:`jaxdd.models.TorchConv` and
:func:`jaxdd.models.loop_safe_convs`, the trainer's micro-batches and
``parallel="auto"`` (:mod:`jaxdd.train`), the prediction blocks, ``loop="auto"`` of
:func:`jaxdd.train.fit_epochs` (the surrogate's trainer), the default ``real_chunk``/``syn_chunk`` of
:func:`jaxdd.distill.dm` and :func:`jaxdd.distill.gm`, and the convolutions of
DM's gradient-free real-image forward (``forward_conv``: Winograd on CPU). Explicit arguments
always win (``dm(real_chunk=None)``, ``train_surrogate(loop="scan")``,
``evaluate_synset(parallel="vmap")``). By default the policy follows
``jax.default_backend()``; :func:`use` pins another one for a block, e.g. to
benchmark the accelerator layout on CPU. Both layouts give the same results up
to float rounding, which is what makes pinning safe.

Jitted programs keep the layout they were traced with. jaxdd's cached
training, prediction and surrogate programs are keyed by the policy, and a
:class:`~jaxdd.distill.Distiller` keeps the policy that was current when it
was built; but a function you ``jax.jit`` yourself is traced at its first
call, so pin the policy before that call (or wrap the function with
:func:`pinned`). The pinned policies are a module-global stack, not
thread-local: do not call :func:`use` from several threads at once.

Example:
  >>> from jaxdd import policy
  >>> policy.resolve("cpu").parallel, policy.resolve("accelerator").parallel
  ('map', 'vmap')
  >>> with policy.use("accelerator"):
  ...   policy.current().train_loop
  'scan'
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
from typing import Callable, Iterator, Literal, Union

import jax

_CHOICES = {"conv": ("loop_safe", "xla"), "parallel": ("map", "vmap"),
            "train_loop": ("step", "scan"), "forward_conv": ("winograd", "xla")}
_SIZES = ("micro_batch", "predict_block", "real_chunk", "syn_chunk")


@dataclasses.dataclass(frozen=True)
class Policy:
  """The backend-dependent layout choices (hashable: usable as a cache key).

  Attributes:
    name: a label (``"cpu"``, ``"accelerator"``, or your own).
    conv: ``"loop_safe"`` routes jaxdd's convolutions (and, under
      :func:`jaxdd.models.loop_safe_convs`, plain ``nn.Conv`` layers) through
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
      images): ``"winograd"`` runs the 3x3 ones with >= 96 channels on
      even-sized maps as Winograd F(2x2, 3x3) (:mod:`jaxdd._src.winograd`;
      2.25x fewer multiplies, the same values up to float rounding; needs
      ``conv="loop_safe"``, whose kernels it goes through); ``"xla"`` leaves
      them to the ``conv`` choice.
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
    if self.forward_conv == "winograd" and self.conv != "loop_safe":
      raise ValueError("Policy.forward_conv='winograd' goes through the loop_safe kernels; "
                       "set conv='loop_safe' or forward_conv='xla'")


# Micro-batches of 10 on CPU were chosen by timing ConvNet-3 (width 128)
# training steps on 100 and 256 images with micro-batches of 5 to 32 and whole
# batches, all compiled in one process and timed alternately (RESULTS.md §4,
# session 7's table; our reading: the maps of a few images stay in cache). Prediction blocks of 32, and chunks of 32 real / 10 synthetic
# images, by timing the DM and gradient-matching steps (RESULTS.md §4 "Where an
# evaluation step spends its time", "One DM step", "One gradient-matching outer
# iteration").
POLICIES: dict[str, Policy] = {
    "cpu": Policy("cpu", conv="loop_safe", parallel="map", train_loop="step", micro_batch=10,
                  predict_block=32, real_chunk=32, syn_chunk=10, forward_conv="winograd"),
    "accelerator": Policy("accelerator", conv="xla", parallel="vmap", train_loop="scan",
                          micro_batch=None, predict_block=None, real_chunk=None, syn_chunk=None),
}

PolicyLike = Union[str, Policy]

# The policies pinned by use(), innermost last (module-global: not thread-safe).
_PINNED: list[Policy] = []


@functools.lru_cache(maxsize=None)
def _auto() -> Policy:
  return POLICIES["cpu"] if jax.default_backend() == "cpu" else POLICIES["accelerator"]


def resolve(policy: PolicyLike = "auto") -> Policy:
  """The :class:`Policy` meant by ``policy``.

  Args:
    policy: ``"auto"`` (by ``jax.default_backend()``, decided once per
      process), a name in :data:`POLICIES`, or a :class:`Policy`.

  Returns:
    A :class:`Policy`.

  Raises:
    ValueError: an unknown name or another type.

  Example:
    >>> resolve("cpu").micro_batch
    10
  """
  if isinstance(policy, Policy):
    return policy
  if policy == "auto":
    return _auto()
  if isinstance(policy, str) and policy in POLICIES:
    return POLICIES[policy]
  raise ValueError(f"unknown policy {policy!r}; use 'auto', one of {sorted(POLICIES)} or a "
                   "jaxdd.policy.Policy (e.g. dataclasses.replace(POLICIES['cpu'], ...))")


def current() -> Policy:
  """The active policy: the innermost :func:`use`, else ``resolve("auto")``.

  Example:
    >>> current() == resolve("auto")
    True
  """
  return _PINNED[-1] if _PINNED else _auto()


@contextlib.contextmanager
def use(policy: PolicyLike) -> Iterator[Policy]:
  """Pins ``policy`` (anything :func:`resolve` takes) for the ``with`` block; nestable.

  The previous policy is restored on exit, also when the block raises. Not
  thread-safe (one module-global stack).

  Example:
    >>> import dataclasses
    >>> with use(dataclasses.replace(POLICIES["cpu"], name="cpu-16", micro_batch=16)) as p:
    ...   current().micro_batch
    16
    >>> current() is p
    False
  """
  resolved = resolve(policy)
  _PINNED.append(resolved)
  try:
    yield resolved
  finally:
    _PINNED.pop()


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
