"""The programs a unit of the paper's table compiles, and their compile time, code against code.

A unit on a fresh machine compiles every program it runs: the big ones (the surrogate's epoch,
the distillation step, the evaluation's training) and, before this was measured, hundreds of
one-operation programs, each ``jax.numpy`` operation that host-side code ran eagerly on a new
shape (on a GPU, tens of milliseconds of compiling each). This script runs
``experiments/paper_table.py`` with the given flags (say ``--next-unit --tiny``) under each
``--code NAME=DIR`` in turn, ``--repeats`` times, alternating, each run in a fresh process with
an empty compilation cache and its own folders, and reads JAX's compile log (``JAX_LOG_COMPILES``):
the programs compiled, the seconds spent compiling them, and the command's wall time. It prints
one JSON line per run and, with ``--json FILE``, writes the medians as a results table.

``--gpu-target FILE`` adds what one such small program costs to compile for a GPU that is not
there (an XLA GPU target config, ``benchmarks/gpu_targets/``; JAX's CUDA plugin needed, as for
``cell_cost.py``): a sample of the one-operation programs units used to compile, on
paper-scale shapes, each compiled afresh three times, the median of their seconds.

  git worktree add ../before <commit>
  python benchmarks/unit_programs.py --code before=../before --code after=. --repeats 3 \\
      --json results/paper-scale/unit-programs.json -- --next-unit --tiny \\
      --rows vanilla,kde,kde_init,kde_floor_init_is,fairdd_pseudo,fairdd_batch,fairdd,oracle
  JAX_PLATFORMS=cpu python benchmarks/unit_programs.py --gpu-target \\
      benchmarks/gpu_targets/h200.txtpb                      # the GPU's cost of one, on a CPU
  python benchmarks/unit_programs.py --tiny --code here=.   # checks the script in seconds
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)  # its sibling scripts

from jaxdd.runs import version  # noqa: E402

_DONE = re.compile(r"Finished XLA compilation of jit\((.*?)\) in ([0-9.eE+-]+) sec")


def compile_log(text: str) -> dict:
  """``programs`` (how many were compiled), ``compile_s`` (their seconds) and ``by_name``
  (name -> [count, seconds]) from a log JAX wrote with ``JAX_LOG_COMPILES=1``.

  Example:
    >>> compile_log("Finished XLA compilation of jit(add) in 0.5 sec\\n"
    ...             "Finished XLA compilation of jit(add) in 0.25 sec")["by_name"]
    {'add': [2, 0.75]}
  """
  by_name: dict[str, list] = {}
  for name, secs in _DONE.findall(text):
    entry = by_name.setdefault(name, [0, 0.0])
    entry[0] += 1
    entry[1] += float(secs)
  return {"programs": sum(c for c, _ in by_name.values()),
          "compile_s": round(sum(s for _, s in by_name.values()), 3), "by_name": by_name}


def run_once(root: str, flags: list[str], scratch: str) -> dict:
  """One ``paper_table.py`` run of the code in ``root``: wall time and its compile log."""
  root = os.path.abspath(root)
  out = {k: os.path.join(scratch, k) for k in ("cache", "out", "work", "results")}
  env = {k: v for k, v in os.environ.items()
         if k not in ("PYTHONPATH", "JAX_COMPILATION_CACHE_DIR")}
  env.update(PYTHONPATH=root, JAXDD_CACHE=out["cache"], JAX_LOG_COMPILES="1")
  cmd = [sys.executable, os.path.join(root, "experiments", "paper_table.py"), *flags,
         "--out", out["out"], "--workdir", out["work"], "--results", out["results"]]
  t0 = time.perf_counter()
  proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
  wall = time.perf_counter() - t0
  if proc.returncode != 0:
    raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
  log = compile_log(proc.stdout + proc.stderr)
  return {"wall_s": round(wall, 2), "programs": log["programs"], "compile_s": log["compile_s"],
          "top": sorted(log["by_name"].items(), key=lambda kv: -kv[1][1])[:5]}


def gpu_small_program_seconds(target: str, rounds: int = 3, only=None) -> dict:
  """Compile seconds, for the GPU of ``target``, of one-operation programs on paper-scale
  shapes: those host-side code compiled eagerly (elementwise, broadcast, slice, gather,
  reductions, checks); each program's median over ``rounds`` fresh compilations, and the
  median over the programs."""
  import jax
  import jax.numpy as jnp

  from cell_cost import gpu_target_sharding
  sharding = gpu_target_sharding(target)
  n, d = 54000, 128
  sample = {
      "add": (jnp.add, [(n, d), (n, d)]), "multiply": (jnp.multiply, [(500, 28, 28, 3)] * 2),
      "broadcast_in_dim": (lambda a: jnp.broadcast_to(a, (8, n)), [(n,)]),
      "squeeze": (lambda a: a[0], [(8, 500, 28, 28, 3)]),
      "dynamic_slice": (lambda a: jax.lax.dynamic_slice_in_dim(a, 3, 256), [(n, d)]),
      "gather": (lambda a: a[jnp.arange(0, n, 7)], [(n, d)]),
      "reduce_sum": (lambda a: a.sum(0), [(n, d)]),
      "isfinite_all": (lambda a: jnp.isfinite(a).all(), [(500, 28, 28, 3)]),
      "equal_mean": (lambda a, b: (a == b).mean(), [(10000,), (10000,)]),
      "true_divide": (jnp.true_divide, [(n, 28), (n, 28)]),
      "uniform": (lambda a: jax.random.uniform(jax.random.key(0), (3, 3, 128, 128)) + a, [(1,)]),
      "stack": (lambda a, b: jnp.stack([a, b]), [(500, 28, 28, 3)] * 2),
  }
  sample = {k: v for k, v in sample.items() if only is None or k in only}
  spec = jax.ShapeDtypeStruct((4,), jnp.float32, sharding=sharding)
  jax.jit(jnp.subtract).lower(spec, spec).compile()  # the compiler's own start-up, not counted
  times: dict[str, list[float]] = {name: [] for name in sample}
  for _ in range(rounds):
    for name, (fn, shapes) in sample.items():
      args = [jax.ShapeDtypeStruct(s, jnp.float32, sharding=sharding) for s in shapes]
      jax.clear_caches()  # compiled afresh each round
      t0 = time.perf_counter()
      jax.jit(fn).lower(*args).compile()
      times[name].append(time.perf_counter() - t0)
  seconds = {name: round(statistics.median(t), 4) for name, t in times.items()}
  return {"target": target, "rounds": rounds, "seconds": seconds,
          "median_s": round(statistics.median(seconds.values()), 4)}


def _commit(root: str) -> str:
  try:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, check=True,
                          capture_output=True, text=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return "unknown"


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else list(argv)
  flags = []
  if "--" in argv:
    at = argv.index("--")
    argv, flags = argv[:at], argv[at + 1:]
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--code", action="append", default=[], metavar="NAME=DIR",
                 help="a checkout to run (repeatable; runs alternate between them)")
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--json", help="write the medians as a results table (JSON) here")
  p.add_argument("--gpu-target", help="time small programs' compilation for this GPU target")
  p.add_argument("--tiny", action="store_true",
                 help="check the script in seconds: one run of each code, of `--next-unit "
                      "--tiny --plan` unless flags are given; two GPU programs, one round")
  args = p.parse_args(argv)
  if args.tiny:
    args.repeats = 1
    flags = flags or ["--next-unit", "--tiny", "--plan"]
  codes = []
  for spec in args.code:
    name, sep, root = spec.partition("=")
    if not sep or not os.path.isfile(os.path.join(root, "experiments", "paper_table.py")):
      p.error(f"--code {spec}: give NAME=DIR, DIR a checkout of this project")
    codes.append((name, root))
  if not codes and not args.gpu_target:
    p.error("nothing to do: give --code NAME=DIR (and paper_table.py flags after --), "
            "or --gpu-target FILE")
  if codes and not flags:
    p.error("give the paper_table.py flags after --, such as -- --next-unit --tiny")
  if args.repeats < 1:
    p.error("--repeats must be at least 1")
  gpu = None
  if args.gpu_target:
    try:
      gpu = gpu_small_program_seconds(args.gpu_target, rounds=1 if args.tiny else 3,
                                      only=("add", "reduce_sum") if args.tiny else None)
    except RuntimeError as e:
      print(f"unit_programs: --gpu-target {args.gpu_target}: {e}", file=sys.stderr)
      return 1
    print(json.dumps({"gpu_small_programs": gpu}), flush=True)
  runs: dict[str, list[dict]] = {name: [] for name, _ in codes}
  for i in range(args.repeats if codes else 0):
    for name, root in codes:
      with tempfile.TemporaryDirectory(prefix="unit-programs-") as scratch:
        try:
          rec = run_once(root, flags, scratch)
        except RuntimeError as e:
          print(f"unit_programs: {name}: {e}", file=sys.stderr)
          return 1
      runs[name].append(rec)
      print(json.dumps({"code": name, "run": i, **rec}), flush=True)
  if args.json and codes:
    med = {n: {k: statistics.median(r[k] for r in rs) for k in ("programs", "compile_s", "wall_s")}
           for n, rs in runs.items()}
    first = codes[0][0]
    rows = [[f"{n} ({_commit(root)})", med[n]["programs"], med[n]["compile_s"], med[n]["wall_s"],
             med[n]["wall_s"] / med[first]["wall_s"]] for n, root in codes]
    table = {
        "caption": ("What `experiments/paper_table.py " + " ".join(flags) + "` compiles on a "
                    "fresh cache, each code in turn, alternating: the programs JAX compiled, "
                    "the seconds it spent compiling them and the command's wall time "
                    f"(medians of {args.repeats} runs each; benchmarks/unit_programs.py)."),
        "columns": ["code", "programs compiled", "compile s", "wall s", f"wall / {first}"],
        "formats": [None, ".0f", ".1f", ".1f", ".2f"], "rows": rows,
        "notes": ([f"One program of one operation, compiled for a GPU that is not there "
                   f"({gpu['target']}), took a median {gpu['median_s'] * 1e3:.0f} ms on this CPU "
                   f"(a sample of {len(gpu['seconds'])} on paper-scale shapes)."]
                  if gpu else []),
        "date": time.strftime("%Y-%m-%d"), "commit": _commit(codes[-1][1]),
        "machine": version.machine(),
        "command": "python benchmarks/unit_programs.py " + " ".join(
            [f"--code {s}" for s in args.code]
            + (["--tiny"] if args.tiny else [f"--repeats {args.repeats}"])
            + ([f"--gpu-target {args.gpu_target}"] if args.gpu_target else [])
            + ["--json " + args.json, "--"] + flags),
        "runs": runs, **({"gpu_small_programs": gpu} if gpu else {})}
    tmp = args.json + ".tmp"
    with open(tmp, "w") as f:
      json.dump(table, f, indent=1)
      f.write("\n")
    os.replace(tmp, args.json)
  return 0


if __name__ == "__main__":
  sys.exit(main())
