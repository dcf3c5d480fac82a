"""How a distiller's step is executed, apart from the method it computes.

A method's factory (:func:`jaxdd.distill.dm`, ``gm``, ``dsa``, ``dc``, ``cfm``,
``mtt``) takes the method's own arguments and one :class:`Execution`: the layout
policy (an explicit :class:`jaxdd.policy.Policy`, never the pinned stack), the
device mesh and its axes, the real/synthetic chunk sizes, the dtype of the real
forward and whether the step is compiled. The execution is applied where the
step is built (:meth:`Execution.compile_step`); what wraps a finished step lives
here too: N runs of one method in one program (:func:`many_runs`) and several
steps per call (:func:`multi_step`).

Example:
  >>> import jax, numpy as np
  >>> from jaxdd import distill, models
  >>> x = np.random.default_rng(0).normal(size=(40, 8, 8, 3)).astype(np.float32)
  >>> real = distill.real_data(x, np.repeat(np.arange(2), 20), num_classes=2)
  >>> ex = distill.Execution(policy="accelerator")
  >>> (ex.policy.name, ex.real_chunk, ex.syn_chunk)
  ('accelerator', None, None)
  >>> d = distill.dm(num_classes=2, ipc=2, model=models.ConvNet(2, depth=1, width=8),
  ...                real_per_class=8, augment=None, execution=ex)
  >>> runs = distill.many_runs(d, num_runs=3, run_knobs=[{"lr": v} for v in (0.5, 1.0, 2.0)])
  >>> state, metrics = runs.step(runs.init(jax.random.key(0), real), real)
  >>> metrics["loss"].shape
  (3,)
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Literal, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec as P

from jaxdd import policy as policy_lib
from jaxdd._src import checks
from jaxdd.distill.core import (Distiller, DistillState, RealData, _BoundStep, _shared_program,
                                multi_step)

__all__ = ["Execution", "RUN_KNOBS", "many_runs", "multi_step"]


def _chunk(value, auto: int | None, name: str) -> int | None:
  if value == "auto":
    return auto
  if value is None:
    return None
  if isinstance(value, bool) or not isinstance(value, int) or value < 1:
    raise ValueError(f"{name} must be a positive int, 'auto' or None (all at once), got {value!r}")
  return value


def _floating_dtype(value, name: str):
  """None, or ``value`` as a floating numpy dtype (``"bfloat16"``, ``jnp.float16``, ...)."""
  if value is None:
    return None
  try:
    dtype = jnp.dtype(value)
  except TypeError:
    dtype = None
  if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
    raise ValueError(f"{name} must be a floating dtype such as 'bfloat16' or 'float32' (or None "
                     f"for the synthetic images' dtype), got {value!r}")
  return dtype


@dataclasses.dataclass(frozen=True)
class Execution:
  """How a distiller's step runs: the same numbers (up to float rounding) whatever it says.

  Every field is resolved and checked when the execution is built, so the
  attributes hold what the step will use.

  Attributes:
    policy: the layout (anything :func:`jaxdd.policy.resolve` takes; stored
      resolved). ``"auto"`` (default): by ``jax.default_backend()``, whatever
      :func:`jaxdd.policy.use` has pinned. The step is traced under it
      (:func:`jaxdd.policy.pinned`).
    mesh, class_axis, batch_axis: optional mesh (DM and gradient matching); the
      sampled real batch (C, B, ...) is sharded with ``P(class_axis, batch_axis)``
      and XLA partitions the step accordingly (results equal the single-device
      step up to float reassociation).
    real_chunk: embed (DM) or differentiate (gradient matching) the real images
      this many at a time inside the step, which keeps activations in cache on
      CPU; ignored (all at once) for BatchNorm models, whose statistics mix the
      whole batch as in the reference, and when a mesh is given. ``"auto"``:
      the policy's ``real_chunk`` (32 on CPU, all at once on accelerators).
      ``None``: all at once.
    syn_chunk: the same for DM's synthetic images, whose forward and backward
      then run chunk by chunk (plain ``nn.Conv`` layers are routed through
      :func:`jaxdd.models.loop_safe_convs` for that). ``"auto"``: the policy's
      ``syn_chunk`` (10 on CPU, all at once on accelerators). Chunking never
      changes the loss beyond float rounding. Timings at the reference
      configuration: docs/results/speed-distillation.md, "One DM step" (benchmarks/dm_step.py).
    real_dtype: run DM's gradient-free real-image forward in this floating
      dtype (e.g. ``"bfloat16"``): the network's parameters and the real images
      are cast to it, the features back to float32. None (default): the
      synthetic images' dtype, i.e. the reference's computation. Off by
      default: on the development CPU bfloat16 is slower (docs/results/speed-distillation.md, "bf16
      real path for DM"). Other methods refuse it.
    jit: compile the step (default; distillers with the same static settings
      share one program) or return the raw pure function.
  """
  policy: Any = "auto"
  mesh: Mesh | None = None
  class_axis: str | None = None
  batch_axis: str | None = None
  real_chunk: int | Literal["auto"] | None = "auto"
  syn_chunk: int | Literal["auto"] | None = "auto"
  real_dtype: Any = None
  jit: bool = True

  def __post_init__(self):
    pol = policy_lib.resolve(self.policy)
    object.__setattr__(self, "policy", pol)
    object.__setattr__(self, "real_chunk", _chunk(self.real_chunk, pol.real_chunk, "real_chunk"))
    object.__setattr__(self, "syn_chunk", _chunk(self.syn_chunk, pol.syn_chunk, "syn_chunk"))
    object.__setattr__(self, "real_dtype", _floating_dtype(self.real_dtype, "real_dtype"))

  @property
  def real_spec(self) -> P:
    """The sharding of a sampled real batch (C, B, ...)."""
    return P(self.class_axis, self.batch_axis)

  @property
  def syn_spec(self) -> P:
    """The sharding of the synthetic set as (C, ipc, ...)."""
    return P(self.class_axis)

  def one_device(self, method: str) -> None:
    """Refuses what ``method`` (one device, no real forward of its own) cannot use."""
    if self.mesh is not None:
      raise ValueError(f"{method} runs on one device; drop the Execution's mesh")
    if self.real_dtype is not None:
      raise ValueError(f"real_dtype is a DM option; method {method!r} has none")

  def compile_step(self, static: tuple, step_fn: Callable, hp: dict | None = None, *,
                   knobs: Sequence[str] | None = None) -> Callable:
    """The step of a distiller: ``step_fn`` traced under :attr:`policy`, compiled or raw.

    Args:
      static: the step's static settings, the key of the program that distillers
        with equal settings share.
      step_fn: ``step_fn(state, data, hp)`` or, without ``hp``, ``step_fn(state, data)``.
      hp: the runtime knobs the step takes as arguments (None: none).
      knobs: the names in ``hp`` that :func:`many_runs` may vary per run (None:
        the step cannot be run N times in one program).

    Returns:
      ``step(state, data) -> (state, metrics)``.
    """
    step_fn = policy_lib.pinned(self.policy, step_fn)
    if hp is None:
      return _shared_program(static, step_fn) if self.jit else step_fn
    if not self.jit:
      def raw_step(state, data):
        return step_fn(state, data, hp)
      # A plain function (jax and chex tools inspect raw steps), carrying what many_runs reads
      # of a step as the compiled one, _BoundStep, does.
      raw_step.fn, raw_step._hp, raw_step.execution, raw_step.knobs = step_fn, hp, self, knobs
      return raw_step
    return _BoundStep(_shared_program(static, step_fn), hp, fn=step_fn, execution=self,
                      knobs=knobs)


# ---------------------------------------------------------------------------- N runs in one program

#: The runtime knobs a run of :func:`many_runs` may override.
RUN_KNOBS = ("lr", "variance", "temperature")


def many_runs(d: Distiller, *, num_runs: int | None = None,
              run_knobs: Sequence[dict] | None = None, common_random_numbers: bool = False,
              parallel: Literal["auto", "vmap", "map"] = "auto",
              run_fields: Sequence[str] = ()) -> Distiller:
  """N distillations of one method in one program: ``d``'s pure step vmapped over runs.

  ``d`` is a distiller whose step takes the runtime knobs :data:`RUN_KNOBS`
  (:func:`jaxdd.distill.dm`) and runs on one device; the result is compiled as
  ``d``'s :class:`Execution` says, and traced under its policy.

  ``init(key, real)`` builds the stacked state: with independent runs, run i
  starts from ``d.init(jax.random.split(key, N)[i], real)``, or from
  ``d.init(key[i], real)`` when ``key`` is N stacked keys (runs that are separate
  seeds: run i then equals the single run of key i); with common random
  numbers every run starts from ``d.init(key, real)`` and the key and step
  stay shared (unbatched), so every draw inside the step (the network, the real
  batch, the augmentation) is the same for all runs and is computed once; only
  what depends on a run's images or knobs is batched. ``step(state, real)``
  returns the stacked state and per-run metrics. Run i equals the single run
  with its key and knobs, up to float rounding (tests/test_distill.py).

  Args:
    d: the distiller of one run.
    num_runs: N; the state's arrays get a leading run axis and the metrics are per run.
    run_knobs: one dict per run overriding the runtime knobs ``lr``,
      ``variance`` and ``temperature`` (e.g. the candidates of a sweep); None:
      every run uses ``d``'s values.
    common_random_numbers: False (default): each run draws its own network,
      batches and augmentation (keys split from the init key, as N seeds);
      True: all runs share them (the init key and every draw), so runs that
      differ only in their knobs are a paired comparison, and the shared work
      (the network, the real batch and its forward pass) is done once.
    parallel: with independent runs, ``"vmap"`` (batched: the runs' random
      networks become grouped convolutions) or ``"map"`` (one after another
      inside the program); ``"auto"``: the policy's ``parallel`` (map on CPU,
      where the grouped convolutions are slower: docs/results/speed-distillation.md, "N DM runs in one
      program"). Shared draws always use vmap, which computes them once.
    run_fields: the :class:`RealData` fields (``"embeddings"``, ``"log_density"``,
      ``"groups"``) that carry a leading run axis of size N: each run's own surrogate
      outputs over the same real images (separate seeds train separate surrogates). The
      images and the class index are always shared. Needs independent runs.

  Returns:
    A :class:`Distiller` of the N runs.
  """
  if num_runs is None:
    raise ValueError("run_knobs and common_random_numbers need num_runs=N")
  step = d.step
  if getattr(step, "knobs", None) is None:
    raise ValueError(f"many_runs wraps a step that takes the runtime knobs {list(RUN_KNOBS)} "
                     "(distill.dm); this distiller's step has none")
  execution: Execution = step.execution
  if execution.mesh is not None:
    raise ValueError("num_runs runs on one device; drop the Execution's mesh (or many_runs)")
  if parallel == "auto":
    parallel = execution.policy.parallel
  if parallel not in ("vmap", "map"):
    raise ValueError(f"run_parallel must be 'auto', 'vmap' or 'map', got {parallel!r}")
  stacked_hp = _stacked_knobs(step._hp, step.knobs, num_runs, run_knobs)
  init_fn, step_fn, shared = d.init, step.fn, common_random_numbers
  real_axes = _real_axes(run_fields, shared)
  # Which parts of the state carry a run axis: all of them, or (shared draws) the images
  # and the optimiser state only.
  axes = DistillState(0, 0, None if shared else 0, None if shared else 0, None)

  def init(key: jax.Array, real: RealData) -> DistillState:
    if shared:
      one = init_fn(key, real)
      tile = lambda a: jnp.broadcast_to(a, (num_runs,) + jnp.shape(a))
      return one._replace(syn=jax.tree.map(tile, one.syn),
                          opt_state=jax.tree.map(tile, one.opt_state))
    typed = jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
    run_keys = key if jnp.ndim(key) == (1 if typed else 2) else jax.random.split(key, num_runs)
    if len(run_keys) != num_runs:
      raise ValueError(f"init got {len(run_keys)} keys for num_runs={num_runs}")
    states = [init_fn(k, _run_real(real, run_fields, i)) for i, k in enumerate(run_keys)]
    return jax.tree.map(lambda *xs: jnp.stack(xs), *states)

  def many_step(state: DistillState, real: RealData, h):
    if parallel == "map" and not shared:
      if not run_fields:
        return jax.lax.map(lambda args: step_fn(args[0], real, args[1]), (state, h))
      own = tuple(getattr(real, f) for f in run_fields)
      return jax.lax.map(lambda args: step_fn(args[0], real._replace(**dict(
          zip(run_fields, args[2]))), args[1]), (state, h, own))
    return jax.vmap(step_fn, in_axes=(axes, real_axes, 0), out_axes=(axes, 0))(state, real, h)

  if not execution.jit:
    return Distiller(init, lambda state, real: many_step(state, real, stacked_hp))
  return Distiller(init, _BoundStep(jax.jit(many_step, donate_argnums=0), stacked_hp))


def _real_axes(run_fields: Sequence[str], shared: bool):
  """The vmap axes of the real data: 0 for the fields that are each run's own, else None."""
  unknown = set(run_fields) - {"embeddings", "log_density", "groups"}
  if unknown:
    raise ValueError(f"run_fields may name embeddings, log_density and groups, got "
                     f"{sorted(unknown)}")
  if run_fields and shared:
    raise ValueError("run_fields (each run's own surrogate outputs) need independent runs; "
                     "drop common_random_numbers")
  if not run_fields:
    return None
  return RealData(*(0 if f in run_fields else None for f in RealData._fields))


def _run_real(real: RealData, run_fields: Sequence[str], i: int) -> RealData:
  """Run i's view of the real data: its own row of each of ``run_fields``."""
  return real._replace(**{f: getattr(real, f)[i] for f in run_fields})


def _stacked_knobs(hp: dict, allowed: Sequence[str], num_runs: int,
                   run_knobs: Sequence[dict] | None) -> dict[str, np.ndarray]:
  """The knobs of :data:`RUN_KNOBS` stacked over runs: a run's own value, else ``hp``'s."""
  checks.check_positive_int("num_runs", num_runs)
  knobs = [dict() for _ in range(num_runs)] if run_knobs is None else [dict(k) for k in run_knobs]
  if len(knobs) != num_runs:
    raise ValueError(f"run_knobs has {len(knobs)} entries for num_runs={num_runs}")
  for k in knobs:
    unknown = set(k) - set(RUN_KNOBS)
    if unknown:
      raise ValueError(f"run_knobs may set {list(RUN_KNOBS)}, got {sorted(unknown)}")
    fixed = set(k) - set(allowed)
    if fixed:
      raise ValueError(f"run_knobs' {sorted(fixed)} are not runtime values of this step (dm's "
                       "lr scales its own SGD; with syn_tx the step size is the "
                       "transformation's): drop them from run_knobs")
  return {name: np.asarray([k.get(name, hp[name]) for k in knobs], np.float32)
          for name in RUN_KNOBS}
