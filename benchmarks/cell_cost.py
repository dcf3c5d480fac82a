"""The paper's 8-row cell step: XLA's cost analysis (FLOPs, bytes) and, with --time, seconds.

One seed of the headline cell as the unit runs it (:func:`jaxdd.distill.dm_cell` under
:func:`jaxdd.distill.cell_runs`): 10 classes of 3x28x28, IPC 50, 256 real images per class,
DSA, ConvNet-3 width 128, the ``paper`` preset's step, with its eight rows (vanilla, DM + KDE,
KDE with a weighted start, KDE with a floor and importance sampling, FairDD with k-means
pseudo-groups, with in-batch DBSCAN, with the true groups, and the oracle's class-scope
weights), on random data. For each ``--points`` entry ``PROGRAM:DTYPE`` (program
``single``: one program in which the importance-sampled row makes every row draw its own real
batch, as before the split; ``split``: the uniform rows share one batch, the sampled row has
its own program beside them; ``cores``: the rows in two programs that run at once from two
threads, each compiled for one core as :mod:`jaxdd.train.cores` compiles the evaluation's
networks, the rows parted by :func:`halves`; dtype ``float32``: the reference; ``bfloat16``:
``compute_dtype='bfloat16'``, the real forward and the synthetic forward and backward in
bfloat16 with float32 images; an optional third part holds options joined by ``+``:
``noaug`` drops the DSA augmentation, to see what share of a step's time it takes,
``vmapaug`` augments the classes all at once instead of one after another, the policy's
``class_augment="vmap"``, ``thingrad`` takes the first layer's input gradient as a matrix
product, the policy's ``input_grad="matmul"``, ``fusednorm`` runs each block's norm, ReLU
and pooling as one operation, the policy's ``norm_block="fused"``, and ``onecore`` compiles
the program with XLA's multi-threaded Eigen off, so that it keeps to one core) it prints one
JSON line:
XLA's cost analysis of the step as traced (``hlo_flops``, ``hlo_bytes_accessed``: in the
program's own dtypes) and as compiled for this backend (``flops``, ``bytes_accessed``), the
loops and branches of the step lowered for a CUDA GPU (``cuda_loops``, ``cuda_branches``;
without ``--time``), and, with ``--time N``, the median of N steps of the compiled step after
one warm-up, alternating the points ``--repeats`` times; with ``--budget-seconds S`` too, only
the points (in the order given) that fit in S seconds.

The step is built under the ``accelerator`` layout policy by default (``--policy``), so on a
CPU the cost analysis is of the program an accelerator runs, laid out as there. Each line also
counts the compiled program's traffic of large arrays (``big_kernels``, ``big_read_gb``,
``big_written_gb``: :mod:`hlo_traffic`, arrays of 10 MB or more), and ``--hlo-dir DIR`` keeps
each point's compiled HLO (``POINT.hlo.txt.gz``). ``--gpu-target FILE`` compiles for a GPU that
is not there instead, described by an XLA GPU target config (``benchmarks/gpu_targets/``):
XLA's GPU compiler decides the fusions, so the traffic counts are those of that GPU's program
(no cost analysis, no timing). It needs JAX's CUDA plugin of the installed jax's version
(``jax-cuda13-plugin`` and ``jax-cuda13-pjrt``; not in the requirements) and
``JAX_PLATFORMS=cpu`` on a machine without a GPU.

  python benchmarks/cell_cost.py                       # cost analysis of the three points
  python benchmarks/cell_cost.py --time 50 --repeats 3 # on a GPU: seconds per step too
  python benchmarks/cell_cost.py --tiny                # checks the script in seconds
  JAX_PLATFORMS=cpu python benchmarks/cell_cost.py --gpu-target benchmarks/gpu_targets/h200.txtpb \
      --rows vanilla,kde,kde_init,fairdd_pseudo --points single:float32,single:float32:fusednorm \
      --hlo-dir HLO                                    # an H200's program, compiled on a CPU
  python benchmarks/cell_cost.py --policy cpu --width 32 --time 3 --repeats 3 \
      --points split:float32,split:float32:onecore,cores:float32
                                                       # a CPU's cores: cpu-paper's step
  python benchmarks/cell_cost.py --rows vanilla,kde,kde_init,fairdd_pseudo \
      --points single:float32,single:float32:vmapaug,single:bfloat16,single:float32:noaug \
      --time 30 --repeats 3
                                                       # the first unit's step, on a GPU
"""
from __future__ import annotations

import argparse
import functools
import json
import sys
import time

ROWS = ("vanilla", "kde", "kde_init", "kde_floor_init_is", "fairdd_pseudo", "fairdd_batch",
        "fairdd", "oracle")
#: Each row's step flags (dm_cell's hyperparameters); the rest are 0.
FLAGS = {"kde": ("kde",), "kde_init": ("kde",), "kde_floor_init_is": ("weighted_sampling",),
         "fairdd_pseudo": ("groups",), "fairdd_batch": ("batch_groups",), "fairdd": ("groups",)}


#: The arrays whose traffic each point counts (big_*): at least this many MB. The paper step's
#: activations, augmented batches and images are above it; its parameters and statistics below.
BIG_MB = 10

#: The options a point may add after its dtype, joined by "+".
OPTIONS = ("noaug", "vmapaug", "thingrad", "fusednorm", "onecore")
#: The programs a point may have.
PROGRAMS = ("single", "split", "cores")
#: XLA's options of a one-core program (as jaxdd.train.cores compiles the evaluation's).
ONE_CORE = {"xla_cpu_multi_thread_eigen": False}
#: The layout policy's fields each option sets.
POLICY_OPTIONS = {"vmapaug": {"class_augment": "vmap"}, "thingrad": {"input_grad": "matmul"},
                  "fusednorm": {"norm_block": "fused"}}


def options(point: str) -> list[str]:
  """The options of a ``PROGRAM:DTYPE[:OPTION+...]`` point."""
  parts = point.split(":")
  return parts[2].split("+") if len(parts) > 2 and parts[2] else []


def halves(rows: list[str]) -> tuple[list[str], list[str]]:
  """The ``cores`` program's two parts of ``rows``: ``(U + 3) // 2`` of the U uniform rows in
  the first, the other uniform rows and the sampled ones in the second (without a sampled
  row, half each). Each part draws its own uniform real batch and the sampled row one more,
  so the second part's extra batch is weighed as about a row and a half of work.

  >>> halves(["vanilla", "kde", "kde_init", "kde_floor_init_is", "fairdd_pseudo",
  ...         "fairdd_batch", "fairdd", "oracle"])[1]
  ['fairdd', 'oracle', 'kde_floor_init_is']
  """
  sampled = [r for r in rows if "weighted_sampling" in FLAGS.get(r, ())]
  uniform = [r for r in rows if r not in sampled]
  first = (len(uniform) + 3) // 2 if sampled else (len(uniform) + 1) // 2
  return uniform[:first], uniform[first:] + sampled


def build(args, dtype: str, program: str, opts=(), rows=None):
  """The 8-row cell's step, state and real data for one seed: ``program`` ``single`` (one
  :func:`jaxdd.distill.cell_runs` whose importance-sampled row makes every row draw its own
  real batch) or ``split`` (the uniform rows share one batch in one program, the sampled row
  has its own beside it: :func:`jaxdd.distill.cell_row_groups`, as the runs layer builds it);
  ``opts``, the point's options (:data:`OPTIONS`): ``noaug``, the same step without the DSA
  augmentation; the others, the policy fields of :data:`POLICY_OPTIONS`; ``rows``: the row
  names (default ``--rows``)."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  from jaxdd import augment, distill, models, policy
  rows_ = args.rows.split(",") if rows is None else list(rows)
  nc, R = 10, len(rows_)
  rng = np.random.default_rng(0)
  y = np.repeat(np.arange(nc), args.per_class)
  x = rng.normal(size=(len(y), 28, 28, 3)).astype(np.float32)
  low = None if dtype == "float32" else dtype
  pol = policy.variant(args.policy, **{k: v for o in opts for k, v in POLICY_OPTIONS.get(o, {}).items()})
  dsa = "noaug" not in opts
  ex = distill.Execution(policy=pol, real_dtype=low, syn_dtype=low)
  sampled = [i for i, r in enumerate(rows_) if "weighted_sampling" in FLAGS.get(r, ())]
  # what the runs layer builds for these rows (jaxdd.runs.cell): group matching only with a
  # row that matches groups, the in-batch DBSCAN only with the row that uses it
  num_groups = 10 if any("groups" in FLAGS.get(r, ()) for r in rows_) else None
  clusters = 10 if "fairdd_batch" in rows_ else None
  fields = (("sample_weight",) + (("sample_prob",) if sampled else ())
            + (("groups",) if num_groups else ()))

  def cell(rows, sampling):
    d = distill.dm_cell(num_classes=nc, ipc=args.ipc, model=models.ConvNet(nc, width=args.width),
                        real_per_class=args.real_per_class, lr=1.0,
                        augment=(augment.dsa("color_crop_cutout_flip_scale_rotate") if dsa
                                 else None),
                        kde_config=distill.KDEConfig(), num_groups=num_groups,
                        batch_clusters=clusters, importance_sampling=sampling, execution=ex)
    return distill.cell_runs(d, num_seeds=1, num_rows=len(rows), seed_fields=("embeddings",),
                             run_fields=fields)
  if program == "single" or not sampled:
    runs = cell(range(R), bool(sampled))
  else:
    uniform = [i for i in range(R) if i not in sampled]
    runs = distill.cell_row_groups([(cell(uniform, False), uniform), (cell(sampled, True),
                                                                      sampled)],
                                   num_seeds=1, num_rows=R, run_fields=fields)
  n = len(y)
  class_w = rng.uniform(0.1, 1.0, size=n).astype(np.float32)  # the oracle's / floor's weights
  real = distill.real_data(x, y, num_classes=nc)._replace(
      embeddings=jnp.asarray(rng.normal(size=(1, n, 32)).astype(np.float32)),
      sample_weight=jnp.asarray(np.stack([class_w if r == "oracle" else np.ones(n, np.float32)
                                          for r in rows_])),
      sample_prob=(jnp.asarray(np.stack([class_w if r == "kde_floor_init_is"
                                         else np.ones(n, np.float32) for r in rows_]))
                   if sampled else None),
      groups=(jnp.asarray(rng.integers(0, 10, size=(R, n)).astype(np.int32)) if num_groups
              else None))
  hp = {k: jnp.asarray([float(k in FLAGS.get(r, ())) for r in rows_], jnp.float32)
        for k in ("kde", "groups", "batch_groups", "weighted_sampling")}
  hp.update(lr=jnp.ones((R,), jnp.float32), variance=jnp.full((R,), 0.01, jnp.float32),
            temperature=jnp.full((R,), 0.25, jnp.float32))
  state = runs.init(jnp.stack([jax.random.key(0)] * R), real, hparams=hp)
  return runs.step, state, real


@functools.lru_cache(maxsize=None)
def _script(name: str):
  """A sibling script of this one, as a module (loaded once)."""
  import importlib.util
  import os
  spec = importlib.util.spec_from_file_location(
      name, os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def gpu_target_sharding(path: str):
  """A replicated sharding on one GPU described by the XLA GPU target config file ``path``,
  without the GPU (jax.experimental.topologies). Raises RuntimeError with the fix when the
  file cannot be read, or JAX's CUDA plugin is missing or refuses the config."""
  import jax
  from jax.experimental import topologies
  from jax.sharding import NamedSharding, PartitionSpec
  try:
    with open(path) as f:
      config = f.read()
  except OSError as e:
    raise RuntimeError(f"cannot read it ({e}); give a GPU target config "
                       "(benchmarks/gpu_targets/)") from None
  try:
    topology = topologies.get_topology_desc(platform="cuda", target_config=config,
                                            topology="1x1x1")
    mesh = topologies.make_mesh(topology, (1,), ("d",))
  except Exception as e:  # noqa: BLE001 (the plugin's errors have no common type)
    raise RuntimeError(
        f"no GPU target from it ({str(e).splitlines()[0][:160] if str(e) else type(e).__name__}); "
        f"--gpu-target needs JAX's CUDA plugin of this jax's version: pip install "
        f"jax-cuda13-plugin=={jax.__version__} jax-cuda13-pjrt=={jax.__version__}, and a "
        f"GPU target config (benchmarks/gpu_targets/)") from None
  return NamedSharding(mesh, PartitionSpec())


def cost(step, state, real, *, count: bool = True, sharding=None, compiler_options=None):
  """XLA's cost analysis of the step as traced (``hlo_*``: before the backend's passes, so
  in the dtypes the program asks for) and as compiled for this backend; with ``count``, the
  loops and branches of the step lowered for a CUDA GPU (``cuda_loops``, ``cuda_branches``:
  its while and case operations, decided on the device at run time; -1 if it cannot be
  lowered). Returns them and the compiled step (timed as it is: one compilation a point),
  compiled with XLA's ``compiler_options``."""
  if sharding is not None:  # compiled for that (absent) device: abstract arguments
    import jax
    state, real = jax.tree.map(lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype,
                                                              sharding=sharding), (state, real))
  lowered = step.lower(state, real)
  out = {}
  if count:
    try:  # the step as a CUDA GPU gets it (lowered only: no GPU needed)
      text = step.trace(state, real).lower(lowering_platforms=("cuda",)).as_text()
      out.update(cuda_loops=text.count("stablehlo.while"),
                 cuda_branches=text.count("stablehlo.case"))
    except Exception:  # noqa: BLE001 (a jax that cannot lower for another platform)
      out.update(cuda_loops=-1, cuda_branches=-1)
  compiled = lowered.compile(compiler_options)
  for prefix, analysis in (("hlo_", lowered.cost_analysis()), ("", compiled.cost_analysis())):
    if isinstance(analysis, (list, tuple)):  # older jax: one dict per program
      analysis = analysis[0]
    analysis = analysis or {}
    out[prefix + "flops"] = float(analysis.get("flops", -1))
    out[prefix + "bytes_accessed"] = float(analysis.get("bytes accessed", -1))
  kernels = _script("hlo_traffic").traffic(compiled.as_text(), BIG_MB * 1e6)
  out.update(big_kernels=len(kernels),
             big_read_gb=round(sum(k["read"] for k in kernels) / 1e9, 3),
             big_written_gb=round(sum(k["written"] for k in kernels) / 1e9, 3))
  return out, compiled


class SideBySide:
  """The ``cores`` program: two compiled one-core parts stepped at once from two threads (a
  compiled program releases the GIL while it runs); state and data are pairs, one per part.
  The step's metrics are the first part's; ``as_text`` is both parts' HLO."""

  def __init__(self, parts):
    import concurrent.futures
    self.parts = parts
    self.pool = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="cell-core")

  def __call__(self, state, real):
    import jax
    futures = [self.pool.submit(lambda p, s, r: jax.block_until_ready(p(s, r)), p, s, r)
               for p, s, r in zip(self.parts, state, real)]
    (s0, m0), (s1, _) = [f.result() for f in futures]
    return (s0, s1), m0

  def as_text(self) -> str:
    return "\n".join(p.as_text() for p in self.parts)


def build_cores(args, dtype: str, opts=(), *, count: bool):
  """The ``cores`` point: each part of :func:`halves` built as a ``split`` point of its rows
  and compiled for one core. Returns the cost counts (each summed over the parts; the
  CUDA counts are the first part's, as the program of one part), the stepper, its state
  and data."""
  parts, states, reals, counts = [], [], [], []
  for rows in halves(args.rows.split(",")):
    step, state, real = build(args, dtype, "split", opts, rows)
    c, compiled = cost(step, state, real, count=count, compiler_options=ONE_CORE)
    parts.append(compiled)
    states.append(state)
    reals.append(real)
    counts.append(c)
  total = {k: (counts[0][k] if k.startswith("cuda_") else
               (round(counts[0][k] + counts[1][k], 3)
                if isinstance(counts[0][k], float) else counts[0][k] + counts[1][k]))
           for k in counts[0]}
  return total, SideBySide(parts), tuple(states), tuple(reals)


def _write_hlo(folder: str, point: str, text: str) -> None:
  """``folder/POINT.hlo.txt.gz`` (``:`` as ``_``), written atomically."""
  import gzip
  import os
  import tempfile
  os.makedirs(folder, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=folder, prefix=".hlo-")
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(gzip.compress(text.encode(), mtime=0))
    os.replace(tmp, os.path.join(folder, point.replace(":", "_") + ".hlo.txt.gz"))
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--points", default="single:float32,split:float32,split:bfloat16",
                 help="PROGRAM:DTYPE[:OPTION+...] points (program single, split or cores, "
                      "two one-core parts at once; dtype "
                      "float32 or bfloat16; options: noaug, without the DSA augmentation; "
                      "vmapaug, the classes augmented all at once; thingrad, the first layer's "
                      "input gradient as a matrix product; fusednorm, each block's norm, ReLU "
                      "and pooling as one operation; onecore, compiled for one core); the "
                      "first is the baseline")
  p.add_argument("--rows", default=",".join(ROWS), help="the cell's rows (default all 8)")
  p.add_argument("--policy", default="accelerator", help="the layout policy (default accelerator)")
  p.add_argument("--time", type=int, default=0, help="timed steps per point (0: cost only)")
  p.add_argument("--repeats", type=int, default=3, help="alternations of the dtypes (--time)")
  p.add_argument("--budget-seconds", type=float, default=None, help=(
      "with --time: measure only the points that fit in this many seconds, in the order "
      "given (each point's compilation is estimated by the slowest one so far, its timing by "
      "its warm-up step), with fewer steps a round and fewer rounds if need be; the points "
      "left out are named on stderr"))
  p.add_argument("--hlo-dir", default=None, help=(
      "write each point's compiled HLO here as POINT.hlo.txt.gz (a new or empty folder)"))
  p.add_argument("--gpu-target", default=None, help=(
      "compile for the GPU this XLA GPU target config describes, without one "
      "(benchmarks/gpu_targets/h200.txtpb; needs JAX's CUDA plugin): no cost analysis or timing"))
  p.add_argument("--ipc", type=int, default=50)
  p.add_argument("--width", type=int, default=128)
  p.add_argument("--real-per-class", type=int, default=256)
  p.add_argument("--per-class", type=int, default=600, help="real images per class")
  p.add_argument("--tiny", action="store_true", help=(
      "check the script in seconds: IPC 2, width 8, 8 real images per class, 2 timed steps, "
      "one repeat (flags given explicitly still apply)"))
  args = p.parse_args(argv)
  if args.tiny:
    p.set_defaults(ipc=2, width=8, real_per_class=8, per_class=20, time=2, repeats=1)
    args = p.parse_args(argv)

  import jax
  import numpy as np
  dtypes = [d for d in args.points.split(",") if d]
  for d in dtypes:
    parts = d.split(":")
    if (len(parts) not in (2, 3) or parts[0] not in PROGRAMS
        or parts[1] not in ("float32", "bfloat16")
        or not set(options(d)) <= set(OPTIONS) or len(set(options(d))) != len(options(d))):
      p.error(f"--points: {d!r} is not PROGRAM:DTYPE[:OPTION+...] with programs from "
              f"{', '.join(PROGRAMS)} and options from {', '.join(OPTIONS)} (e.g. "
              "split:float32 or single:bfloat16:vmapaug+thingrad)")
    if parts[0] == "cores" and (args.gpu_target or "onecore" in options(d)):
      p.error(f"--points: {d!r}: the cores program runs on this CPU's cores, already one "
              "core a part; drop onecore, or --gpu-target")
  if args.budget_seconds is not None and not args.time:
    p.error("--budget-seconds goes with --time")
  import os
  if args.hlo_dir and os.path.exists(args.hlo_dir) and (
      not os.path.isdir(args.hlo_dir) or os.listdir(args.hlo_dir)):
    p.error(f"--hlo-dir: {args.hlo_dir} holds something; give a new path or an empty folder")
  sharding = None
  if args.gpu_target:
    if args.time and not args.tiny:
      p.error("--gpu-target compiles for a GPU that is not there: no --time")
    args.time = 0
    try:
      sharding = gpu_target_sharding(args.gpu_target)
    except RuntimeError as e:
      print(f"cell_cost: --gpu-target {args.gpu_target}: {e}", file=sys.stderr)
      return 1
  t0, slowest, timing = time.perf_counter(), 0.0, 0.0
  built, out, warm = {}, {}, {}
  for i, d in enumerate(dtypes):  # timed runs skip the CUDA counts: machine-independent
    if args.budget_seconds is not None and i and (
        time.perf_counter() - t0 + slowest + timing * (len(built) + 1) / len(built)
        > args.budget_seconds):
      print(f"cell_cost: not measured within --budget-seconds {args.budget_seconds:g}: "
            f"{', '.join(dtypes[i:])}", file=sys.stderr, flush=True)
      dtypes = dtypes[:i]
      break
    t1 = time.perf_counter()
    if d.split(":")[0] == "cores":
      counts, compiled, state, real = build_cores(args, d.split(":")[1], options(d),
                                                  count=not args.time)
    else:
      step, state, real = build(args, d.split(":")[1], d.split(":")[0], options(d))
      counts, compiled = cost(step, state, real, count=not args.time, sharding=sharding,
                              compiler_options=ONE_CORE if "onecore" in options(d) else None)
    if args.hlo_dir:
      _write_hlo(args.hlo_dir, d, compiled.as_text())
    out[d] = {"point": d, "rows": args.rows.split(","), "ipc": args.ipc, "width": args.width,
              "real_per_class": args.real_per_class, "policy": args.policy,
              "backend": "cuda (compiled without the GPU)" if sharding is not None
              else jax.default_backend(),
              "device": (args.gpu_target if sharding is not None
                         else jax.devices()[0].device_kind), **counts}
    if args.time:  # warm-up: one step, which also says how long the timing will take
      t2 = time.perf_counter()
      state, m = compiled(state, real)
      jax.block_until_ready(m["loss"])
      warm[d] = time.perf_counter() - t2
      timing += warm[d] * args.time * args.repeats
    slowest = max(slowest, time.perf_counter() - t1)
    built[d] = (compiled, state, real)
  if args.time:
    steps, rounds = args.time, args.repeats
    if args.budget_seconds is not None:  # fewer steps a round where the budget asks for it
      left = args.budget_seconds - (time.perf_counter() - t0)
      steps = max(1, min(steps, int(left / max(sum(warm.values()) * rounds, 1e-9))))
    times = {d: [] for d in dtypes}
    for r in range(rounds):
      if r and args.budget_seconds is not None and time.perf_counter() - t0 > args.budget_seconds:
        print(f"cell_cost: --budget-seconds {args.budget_seconds:g} spent after {r} of "
              f"{rounds} rounds", file=sys.stderr, flush=True)
        break
      for d in dtypes:
        step, state, real = built[d]
        per = []
        for _ in range(steps):
          s0 = time.perf_counter()
          state, m = step(state, real)
          jax.block_until_ready(m["loss"])
          per.append(time.perf_counter() - s0)
        built[d] = (step, state, real)
        times[d].append(float(np.median(per)))
    for d in dtypes:
      out[d].update(step_s_median=round(float(np.median(times[d])), 5),
                    step_s_all=[round(t, 5) for t in times[d]], timed_steps=steps)
  for d in dtypes:
    print(json.dumps(out[d]), flush=True)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
