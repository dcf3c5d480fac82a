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
  >>> runs = distill.many_runs(d, num_runs=3, run_hparams=[{"lr": v} for v in (0.5, 1.0, 2.0)])
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
from jaxdd.distill.core import Distiller, DistillState, RealData, hparams_as_arrays
from jaxdd.distill.steps import multi_step

__all__ = ["Execution", "cell_row_groups", "cell_runs", "many_runs", "multi_step"]


def _check_seed_keys(raw, num_seeds: int, num_rows: int) -> None:
  """Concrete raw keys of a cell's runs (seed-major) are refused unless the rows of each seed
  share its key (checked on the host; traced keys are not checked)."""
  if isinstance(raw, jax.core.Tracer) or np.shape(raw)[:1] != (num_seeds * num_rows,):
    return  # the callers refuse a wrong number of keys with their own message
  seeds = np.asarray(raw).reshape((num_seeds, num_rows) + np.shape(raw)[1:])
  if not (seeds == seeds[:, :1]).all():
    raise ValueError("the rows of a seed must share its key (common random numbers); give "
                     "every row of seed s the key of seed s")


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
      then run chunk by chunk (a model of your own built from ``nn.Conv``
      keeps XLA's convolution there unless its layers ask for
      :func:`jaxdd.models.policy_conv`, the CPU's loop-safe kernels; jaxdd's
      models do). ``"auto"``: the policy's
      ``syn_chunk`` (10 on CPU, all at once on accelerators). Chunking never
      changes the loss beyond float rounding. Timings at the reference
      configuration: docs/results/speed-distillation.md, "One DM step" (benchmarks/dm_step.py).
    real_dtype: run DM's gradient-free real-image forward in this floating
      dtype (e.g. ``"bfloat16"``): the network's parameters and the real images
      are cast to it, the features back to float32. None (default): the
      synthetic images' dtype, i.e. the reference's computation. Off by
      default: on the development CPU bfloat16 is slower (docs/results/speed-distillation.md, "bf16
      real path for DM"). Other methods refuse it.
    syn_dtype: run DM's synthetic-image forward and backward in this floating
      dtype (e.g. ``"bfloat16"``): the network's parameters and the synthetic
      images are cast to it inside the step, the features back to float32, so
      the loss, the gradient that reaches the images and the images themselves
      (the master copy the optimiser updates) stay float32. None (default): the
      synthetic images' dtype. For accelerators, with ``real_dtype`` the same:
      their bf16 arithmetic and half the activation bytes. Other methods refuse
      it.
    jit: compile the step with ``jax.jit`` (default; nothing is donated) or
      return the raw pure function.
  """
  policy: Any = "auto"
  mesh: Mesh | None = None
  class_axis: str | None = None
  batch_axis: str | None = None
  real_chunk: int | Literal["auto"] | None = "auto"
  syn_chunk: int | Literal["auto"] | None = "auto"
  real_dtype: Any = None
  syn_dtype: Any = None
  jit: bool = True

  def __post_init__(self):
    pol = policy_lib.resolve(self.policy)
    object.__setattr__(self, "policy", pol)
    object.__setattr__(self, "real_chunk", _chunk(self.real_chunk, pol.real_chunk, "real_chunk"))
    object.__setattr__(self, "syn_chunk", _chunk(self.syn_chunk, pol.syn_chunk, "syn_chunk"))
    object.__setattr__(self, "real_dtype", _floating_dtype(self.real_dtype, "real_dtype"))
    object.__setattr__(self, "syn_dtype", _floating_dtype(self.syn_dtype, "syn_dtype"))

  @property
  def real_spec(self) -> P:
    """The sharding of a sampled real batch (C, B, ...)."""
    return P(self.class_axis, self.batch_axis)

  @property
  def syn_spec(self) -> P:
    """The sharding of the synthetic set as (C, ipc, ...)."""
    return P(self.class_axis)

  def one_device(self, method: str, *, dtypes: bool = False) -> None:
    """Refuses what ``method`` (one device; without ``dtypes``, no DM forward of its own)
    cannot use."""
    if self.mesh is not None:
      raise ValueError(f"{method} runs on one device; drop the Execution's mesh")
    for name in () if dtypes else ("real_dtype", "syn_dtype"):
      if getattr(self, name) is not None:
        raise ValueError(f"{name} is a DM option; method {method!r} has none")

  def compile_step(self, signature: tuple, step_fn: Callable) -> Callable:
    """The step of a distiller: ``step_fn`` traced under :attr:`policy`, compiled or raw.

    Args:
      signature: the step's static settings (its hyperparameters are in the state);
        stored as ``step.signature`` when hashable, else None.
      step_fn: the pure ``step_fn(state, data) -> (state, metrics)``.

    Returns:
      ``step(state, data) -> (state, metrics)``: ``jax.jit(step_fn)`` (nothing
      donated; ``step.lower`` and ``step.trace`` as jit's) or, with ``jit=False``, the raw
      function; with the attributes
      ``signature`` and ``execution``.
    """
    pinned = policy_lib.pinned(self.policy, step_fn)
    if self.jit:
      compiled = jax.jit(pinned)

      def step(state, data):
        # numbers put in the state's hparams by hand become the float32 arrays init makes,
        # before the call: a weakly typed Python float would compile the step again
        return compiled(hparams_as_arrays(state), data)

      step.lower = lambda state, data: compiled.lower(hparams_as_arrays(state), data)
      step.trace = lambda state, data: compiled.trace(hparams_as_arrays(state), data)
    else:
      step = pinned
    try:
      hash(signature)
    except TypeError:  # an unhashable setting (e.g. a custom augment object)
      signature = None
    step.signature, step.execution = signature, self
    return step


# ---------------------------------------------------------------------------- N runs in one program

def many_runs(d: Distiller, *, num_runs: int, run_hparams: Sequence[dict] | None = None,
              common_random_numbers: bool = False,
              parallel: Literal["auto", "vmap", "map"] = "auto",
              run_fields: Sequence[str] = ()) -> Distiller:
  """N distillations of one method in one program: ``d``'s pure step vmapped over runs.

  Any method: DM, DC, DSA, MTT, CFM, group matching. The result is compiled as
  ``d``'s :class:`Execution` says (nothing donated) and traced under its policy.
  It is what ``jax.vmap(d.init)`` and ``jax.vmap(d.step)`` give, with per-run
  hyperparameters, shared draws and per-run real-data fields arranged for you.

  ``init(key, real, syn=None)`` builds the stacked state: with independent runs,
  run i starts from ``d.init(jax.random.split(key, N)[i], real)``, or from
  ``d.init(key[i], real)`` when ``key`` is N stacked keys (runs that are separate
  seeds: run i then equals the single run of key i); with common random
  numbers every run starts from ``d.init(key, real)`` and the key and step
  stay shared (unbatched), so every draw inside the step (the network, the real
  batch, the augmentation) is the same for all runs and is computed once; only
  what depends on a run's images or hyperparameters is batched. ``step(state,
  data)`` returns the stacked state and per-run metrics. Run i equals the single
  run with its key and hyperparameters, up to float rounding (tests/test_distill.py).

  Args:
    d: the distiller of one run.
    num_runs: N; the state's arrays get a leading run axis and the metrics are per run.
    run_hparams: one dict per run overriding some of ``d``'s hyperparameters
      (``state.hparams``: ``lr``, the KDE ``variance`` and ``temperature``, CFM's
      ``beta``, MTT's ``lr_lr``, ...; e.g. the candidates of a sweep); None:
      every run uses ``d``'s values.
    common_random_numbers: False (default): each run draws its own network,
      batches and augmentation (keys split from the init key, as N seeds);
      True: all runs share them (the init key and every draw), so runs that
      differ only in their hyperparameters are a paired comparison, and the
      shared work (the network, the real batch and its forward pass) is done once.
    parallel: with independent runs, ``"vmap"`` (batched: the runs' random
      networks become grouped convolutions) or ``"map"`` (one after another
      inside the program); ``"auto"``: the policy's ``parallel`` (map on CPU,
      where the grouped convolutions are slower: docs/results/speed-distillation.md, "N DM runs in one
      program"). Shared draws always use vmap, which computes them once.
    run_fields: the :class:`RealData` fields (``"embeddings"``, ``"log_density"``,
      ``"groups"``, ``"sample_weight"``, ``"sample_prob"``) that carry a leading run axis of size N: each run's own surrogate
      outputs over the same real images (separate seeds train separate surrogates). The
      images and the class index are always shared. Needs independent runs.

  Returns:
    A :class:`Distiller` of the N runs.
  """
  checks.check_positive_int("num_runs", num_runs)
  step_one, execution, parallel = _one_device(d, parallel, "num_runs runs on one device; drop "
                                              "the Execution's mesh (or many_runs)")
  overrides = _run_overrides(num_runs, run_hparams)
  shared = common_random_numbers
  real_axes = _real_axes(run_fields, shared)
  # Which parts of the state carry a run axis: all of them, or (shared draws) all but the
  # step and the key.
  axes = DistillState(0, 0, None if shared else 0, None if shared else 0, 0, 0)

  def init(key: jax.Array, real: RealData, syn=None) -> DistillState:
    if shared:
      one = d.init(key, real, syn)
      tile = lambda a: jnp.broadcast_to(a, (num_runs,) + jnp.shape(a))  # noqa: E731
      states = one._replace(syn=jax.tree.map(tile, one.syn),
                            opt_state=jax.tree.map(tile, one.opt_state),
                            extra=jax.tree.map(tile, one.extra),
                            hparams=jax.tree.map(tile, one.hparams))
    else:
      typed = jax.dtypes.issubdtype(jnp.result_type(key), jax.dtypes.prng_key)
      run_keys = key if jnp.ndim(key) == (1 if typed else 2) else jax.random.split(key, num_runs)
      if len(run_keys) != num_runs:
        raise ValueError(f"init got {len(run_keys)} keys for num_runs={num_runs}")
      states = jax.vmap(lambda k, r: d.init(k, r, syn), in_axes=(0, real_axes))(run_keys, real)
    return _apply_overrides(states, overrides)

  def many_step(state: DistillState, data):
    if parallel == "map" and not shared:
      if real_axes is None:
        return jax.lax.map(lambda s: step_one(s, data), state)
      own = tuple(getattr(data, f) for f in run_fields)
      return jax.lax.map(lambda args: step_one(args[0], data._replace(**dict(
          zip(run_fields, args[1])))), (state, own))
    return jax.vmap(step_one, in_axes=(axes, real_axes), out_axes=(axes, 0))(state, data)

  signature = ("many_runs", getattr(step_one, "signature", None), num_runs, shared, parallel,
               tuple(run_fields))
  step = execution.compile_step(signature if signature[1] is not None else None, many_step)
  return Distiller(init, step)


def _one_device(d: Distiller, parallel: str, mesh_refusal: str):
  """``(step, execution, parallel)`` of a distiller that N runs wrap: one device, and
  ``parallel`` resolved by its policy."""
  step = d.step
  execution = getattr(step, "execution", None) or Execution()
  if execution.mesh is not None:
    raise ValueError(mesh_refusal)
  if parallel == "auto":
    parallel = execution.policy.parallel
  if parallel not in ("vmap", "map"):
    raise ValueError(f"run_parallel must be 'auto', 'vmap' or 'map', got {parallel!r}")
  return step, execution, parallel


def _run_overrides(num_runs: int, run_hparams: Sequence[dict] | None) -> list[dict]:
  if run_hparams is None:
    return [{} for _ in range(num_runs)]
  overrides = [dict(h) for h in run_hparams]
  if len(overrides) != num_runs:
    raise ValueError(f"run_hparams has {len(overrides)} entries for num_runs={num_runs}")
  return overrides


def _apply_overrides(states: DistillState, overrides: list[dict]) -> DistillState:
  """The stacked states with each run's own hyperparameters."""
  names = sorted({k for o in overrides for k in o})
  if not names:
    return states
  hparams = dict(states.hparams or {})
  unknown = sorted(set(names) - set(hparams))
  if unknown:
    raise ValueError(f"run_hparams {unknown} are not tunable values of this distiller; its "
                     f"hparams are {sorted(hparams)}")
  for name in names:
    old = hparams[name]
    given = jnp.asarray([o.get(name, 0.0) for o in overrides], old.dtype)
    has = jnp.asarray([name in o for o in overrides])
    hparams[name] = jnp.where(has, given, old)
  return states._replace(hparams=hparams)


#: The :class:`RealData` fields that may be each run's own (``many_runs(run_fields=...)``).
RUN_FIELDS = ("embeddings", "log_density", "groups", "sample_weight", "sample_prob")


def _real_axes(run_fields: Sequence[str], shared: bool):
  """The vmap axes of the real data: 0 for the fields that are each run's own, else None."""
  unknown = set(run_fields) - set(RUN_FIELDS)
  if unknown:
    raise ValueError(f"run_fields may name {', '.join(RUN_FIELDS)}, got {sorted(unknown)}")
  if run_fields and shared:
    raise ValueError("run_fields (each run's own surrogate outputs) need independent runs; "
                     "drop common_random_numbers")
  if not run_fields:
    return None
  return RealData(*(0 if f in run_fields else None for f in RealData._fields))


# ---------------------------------------------------------------------------- rows x seeds

def cell_runs(d: Distiller, *, num_seeds: int, num_rows: int, seed_fields: Sequence[str] = (),
              run_fields: Sequence[str] = (),
              parallel: Literal["auto", "vmap", "map"] = "auto") -> Distiller:
  """The rows x seeds of a results-table cell in one program: seeds independent, the rows of
  a seed sharing its draws (common random numbers).

  The state has ONE leading run axis of ``num_seeds * num_rows`` runs, seed-major (run
  ``i`` is seed ``i // num_rows``, row ``i % num_rows``), so a driver handles it as N
  runs. Inside the step, the seeds are mapped (``parallel``: ``"map"``, one after another,
  or ``"vmap"``; ``"auto"``: the policy's) and the rows of a seed are vmapped with the
  seed's key and step unbatched: every row of a seed draws the same network, augmentation
  and uniform real batch, computed once, and only what depends on a row's weights, images
  or hyperparameters is batched. Rows of one seed are therefore a paired comparison.

  Run i equals ``d``'s single run of its key, data and hyperparameters, up to float
  rounding, when the rows of a seed are given the same key (as separate single runs of
  one seed are: the draws depend on the key alone).

  ``init(keys, real, syn=None, *, hparams=None)``: ``keys`` one per run (N; the rows of
  a seed must have equal keys, checked on concrete keys); ``syn`` an optional warm start
  of N stacked SynSets (each run's own start); ``hparams`` a dict of N-vectors (each run's
  own values). ``step(state, real)``: ``real``'s ``seed_fields`` carry a leading axis of
  ``num_seeds`` (each seed's surrogate outputs), its ``run_fields`` one of N.

  Args:
    d: the distiller of one run (e.g. :func:`jaxdd.distill.dm_cell`, whose weighting is data).
    num_seeds, num_rows: the cell's shape.
    seed_fields, run_fields: :class:`RealData` fields per seed and per run
      (:data:`RUN_FIELDS`); the rest is shared.
    parallel: how the seeds run inside the program.

  Returns:
    A :class:`Distiller` of the ``num_seeds * num_rows`` runs.
  """
  checks.check_positive_int("num_seeds", num_seeds)
  checks.check_positive_int("num_rows", num_rows)
  both = set(seed_fields) & set(run_fields)
  if both:
    raise ValueError(f"{sorted(both)} are given both per seed and per run; choose one")
  step_one, execution, parallel = _one_device(
      d, parallel, "cell_runs runs on one device; drop the Execution's mesh")
  S, R, N = num_seeds, num_rows, num_seeds * num_rows
  seed_axes = _real_axes(tuple(seed_fields) + tuple(run_fields), False)
  row_axes = _real_axes(tuple(run_fields), False)
  by_seed = lambda a: a.reshape((S, R) + a.shape[1:])  # noqa: E731
  flat = lambda a: a.reshape((N,) + a.shape[2:])  # noqa: E731
  per_run = lambda real: real._replace(**{f: by_seed(getattr(real, f))  # noqa: E731
                                          for f in run_fields})
  row_state = DistillState(0, 0, None, None, 0, 0)

  def init(keys: jax.Array, real: RealData, syn=None, *, hparams: dict | None = None
           ) -> DistillState:
    typed = jax.dtypes.issubdtype(jnp.result_type(keys), jax.dtypes.prng_key)
    if jnp.shape(keys)[:1] != (N,) or jnp.ndim(keys) != (1 if typed else 2):
      raise ValueError(f"init takes one key per run: {N} stacked keys, got shape "
                       f"{jnp.shape(keys)}")
    _check_seed_keys(jax.random.key_data(keys) if typed else keys, S, R)
    hp = {} if hparams is None else {k: jnp.asarray(v) for k, v in hparams.items()}
    for name, v in hp.items():
      if jnp.shape(v)[:1] != (N,):
        raise ValueError(f"hparams[{name!r}] needs one value per run ({N}), got shape "
                         f"{jnp.shape(v)}")
    return init_runs(keys, real, syn, hp)

  @jax.jit
  def init_runs(keys, real: RealData, syn, hp: dict) -> DistillState:
    """Every run's start, one program (called eagerly, each operation would be one)."""
    run_real = real._replace(**{f: jnp.repeat(getattr(real, f), R, axis=0)
                                for f in seed_fields})
    run_axes = _real_axes(tuple(seed_fields) + tuple(run_fields), False)
    syn_axis = None if syn is None else 0
    return jax.vmap(lambda k, r, s, h: d.init(k, r, s, hparams=h),
                    in_axes=(0, run_axes, syn_axis, 0))(keys, run_real, syn, hp)

  def seed_step(state: DistillState, real: RealData):
    """The rows of one seed: (R, ...) state, its key and step taken from row 0."""
    shared = state._replace(key=state.key[0], step=state.step[0])
    new, metrics = jax.vmap(step_one, in_axes=(row_state, row_axes),
                            out_axes=(row_state, 0))(shared, real)
    tile = lambda a: jnp.broadcast_to(a, (R,) + jnp.shape(a))  # noqa: E731
    return new._replace(key=tile(new.key), step=tile(new.step)), metrics

  def cell_step(state: DistillState, real: RealData):
    state = jax.tree.map(by_seed, state)
    real = per_run(real)
    if parallel == "map":
      own = {f: getattr(real, f) for f in tuple(seed_fields) + tuple(run_fields)}
      state, metrics = jax.lax.map(lambda a: seed_step(a[0], real._replace(**a[1])),
                                   (state, own))
    else:
      state, metrics = jax.vmap(seed_step, in_axes=(0, seed_axes))(state, real)
    return jax.tree.map(flat, state), jax.tree.map(flat, metrics)

  signature = ("cell_runs", getattr(step_one, "signature", None), S, R, tuple(seed_fields),
               tuple(run_fields), parallel)
  step = execution.compile_step(signature if signature[1] is not None else None, cell_step)
  return Distiller(init, step)


def cell_row_groups(groups: Sequence[tuple[Distiller, Sequence[int]]], *, num_seeds: int,
                    num_rows: int, run_fields: Sequence[str] = ()) -> Distiller:
  """One cell of ``num_seeds`` x ``num_rows`` runs whose rows are split among several cell
  programs, stepped together in ONE program.

  Rows that draw their real batch alike share its forward pass inside one
  :func:`cell_runs` program; a row that draws otherwise (importance sampling, say) would
  make every row of its program draw its own. Giving each kind of row its own
  :func:`cell_runs` program and stepping them side by side keeps the shared forward for the
  rows that can share it. ``groups`` pairs each program (a :func:`cell_runs` distiller of
  ``num_seeds`` x ``len(rows)`` runs, built with the same ``run_fields``) with the rows of the
  cell it runs (indices into ``range(num_rows)``, together every row once). The state and the
  metrics are the whole cell's, seed-major (run ``i`` is seed ``i // num_rows``, row
  ``i % num_rows``), as :func:`cell_runs` lays them out; every run equals its group's run.

  Args:
    groups: ``(distiller, rows)`` pairs.
    num_seeds, num_rows: the whole cell's shape.
    run_fields: the :class:`RealData` fields given per run (N = ``num_seeds * num_rows``).

  Returns:
    A :class:`Distiller` of the cell's runs; ``init(keys, real, syn=None, *, hparams=None)``
    and ``step(state, real)`` take the whole cell's arguments, as :func:`cell_runs`'.
  """
  checks.check_positive_int("num_seeds", num_seeds)
  checks.check_positive_int("num_rows", num_rows)
  rows = [list(r) for _, r in groups]
  if sorted(i for r in rows for i in r) != list(range(num_rows)) or not all(rows):
    raise ValueError(f"the groups' rows must cover range({num_rows}) once each, got {rows}")
  S, R = num_seeds, num_rows
  order = [i for r in rows for i in r]
  inverse = [order.index(i) for i in range(R)]

  def take(a, idx):
    """The runs of rows ``idx`` of a leaf with a leading N axis."""
    a = jnp.asarray(a)
    b = a.reshape((S, R) + a.shape[1:])[:, jnp.asarray(idx)]
    return b.reshape((S * len(idx),) + a.shape[1:])

  def merge(parts):
    """The whole cell's leaf from the groups' leaves (each with a leading S * len(rows))."""
    by_seed = [p.reshape((S, len(r)) + p.shape[1:]) for p, r in zip(parts, rows)]
    whole = jnp.concatenate(by_seed, axis=1)[:, jnp.asarray(inverse)]
    return whole.reshape((S * R,) + whole.shape[2:])

  def real_of(real: RealData, idx) -> RealData:
    return real._replace(**{f: take(getattr(real, f), idx) for f in run_fields
                            if getattr(real, f) is not None})

  def init(keys, real: RealData, syn=None, *, hparams: dict | None = None) -> DistillState:
    typed = jax.dtypes.issubdtype(jnp.result_type(keys), jax.dtypes.prng_key)
    _check_seed_keys(jax.random.key_data(keys) if typed else keys, S, R)
    return init_groups(keys, real, syn, hparams)

  @jax.jit
  def init_groups(keys, real: RealData, syn, hparams: dict | None) -> DistillState:
    """Every group's start, one program (called eagerly, each operation would be one)."""
    typed = jax.dtypes.issubdtype(jnp.result_type(keys), jax.dtypes.prng_key)
    raw = jax.random.key_data(keys) if typed else keys
    states = []
    for (d, _), idx in zip(groups, rows):
      sub_keys = take(raw, idx)
      states.append(d.init(jax.random.wrap_key_data(sub_keys, impl=jax.random.key_impl(keys))
                           if typed else sub_keys, real_of(real, idx),
                           None if syn is None else jax.tree.map(lambda a: take(a, idx), syn),
                           hparams=None if hparams is None else
                           {k: take(v, idx) for k, v in hparams.items()}))
    return jax.tree.map(lambda *p: merge(p), *states)

  def step_fn(state: DistillState, real: RealData):
    outs = [d.step(jax.tree.map(lambda a: take(a, idx), state), real_of(real, idx))
            for (d, _), idx in zip(groups, rows)]
    return (jax.tree.map(lambda *p: merge(p), *[o[0] for o in outs]),
            jax.tree.map(lambda *p: merge(p), *[o[1] for o in outs]))

  execution = getattr(groups[0][0].step, "execution", None) or Execution()
  signature = ("cell_row_groups", tuple((getattr(d.step, "signature", None), tuple(r))
                                        for (d, _), r in zip(groups, rows)), S, R,
               tuple(run_fields))
  if any(sig is None for sig, _ in signature[1]):
    signature = None
  return Distiller(init, execution.compile_step(signature, step_fn))
