"""Where an evaluation training step spends its time: the parts of one step, timed alone.

One step of evaluation training (``jaxdd.train.fit``) on a batch of B images of
28x28x3 (B = 100 at IPC 10, 256 at IPC 50) is: DSA augmentation (per-image
parameters, one family per batch), the forward and backward pass of ConvNet-3
(width 128, instance norm, avg-pool) and the SGD update. This script times, each
inside a ``lax.scan`` of ``--iters`` iterations (the way the trainer runs them;
XLA:CPU compiles convolutions inside loops differently, see
``jaxdd._src.cpu_kernels``), under the active :mod:`jaxdd.policy`:

* ``step``: the whole trainer (``train.fit`` for ``--iters`` epochs of one batch);
* ``augment``, ``forward``, ``forward+backward`` (no augmentation, no update);
* per layer: the conv forward, its input gradient and its weight gradient, and
  norm + relu + pool forward and backward (``jax.vjp``), plus the classifier.

Parts timed alone miss what XLA does to the whole step (fusions across parts,
independent ops running at the same time on the two cores), so ``--trace``
also records the whole step with ``jax.profiler`` and prints the time of every
compiled op of the step, named by the model scope it comes from (e.g.
``TorchConv_1`` under ``transpose(...)`` is the second conv's backward); the
op times can add up to more than the step where ops overlap.

Each part's GFLOP is counted analytically (2 x MACs of the convolutions and the
classifier; norm/pool work is memory-bound and reported as time only), and its
GFLOP/s is set against the machine's fp32 matmul rate, measured here on a 2048^2
``jnp.dot``. One JSON line per part; ``--table`` also prints a markdown table.

Usage::

  python benchmarks/eval_profile.py --batch 100 --table     # IPC 10
  python benchmarks/eval_profile.py --tiny --table         # checks the script in seconds
  python benchmarks/eval_profile.py --batch 256 --table     # IPC 50's batch
  python benchmarks/eval_profile.py --batch 8 --width 16 --iters 2 --table   # a quick check
  python benchmarks/eval_profile.py --batch 100 --trace runs/trace --top 25  # ops of the step
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import time


def _timer(repeats: int):
  def timed(fn, *args):
    import jax
    jax.block_until_ready(fn(*args))  # compile
    times = []
    for _ in range(repeats):
      t0 = time.perf_counter()
      jax.block_until_ready(fn(*args))
      times.append(time.perf_counter() - t0)
    return statistics.median(times)
  return timed


def _looped(fn, iters: int, *, with_index: bool = False):
  """jit of a scan that calls ``fn(x, *rest)`` ``iters`` times, each call depending on the last.

  The carry feeds a negligible multiple of the previous output back into ``x``,
  so XLA cannot hoist the call out of the loop: ``fn``'s result must depend on
  its first argument. ``with_index`` passes the iteration number as the second
  argument (e.g. to fold a fresh key per iteration).
  """
  import jax
  import jax.numpy as jnp

  def run(x, *rest):
    def body(c, i):
      out = fn(c, i, *rest) if with_index else fn(c, *rest)
      leaves = jax.tree.leaves(out)
      s = sum(jnp.sum(l.astype(jnp.float32)) for l in leaves)
      return c + (1e-30 * s).astype(c.dtype), None
    return jax.lax.scan(body, x, jnp.arange(iters))[0]
  return jax.jit(run)


_FUSED_KINDS = ("convolution", "dot", "reduce", "reduce-window", "select", "pad", "transpose",
                "concatenate")


def _hlo_index(hlo_text: str) -> tuple[dict[str, str], dict[str, list[str]]]:
  """Instruction name -> its line, and computation name -> the opcodes of its body."""
  lines, bodies, current = {}, {}, None
  for line in hlo_text.splitlines():
    header = re.match(r"(?:ENTRY )?%([\w.\-]+) .*\{$", line)
    if header:
      current = header.group(1)
      bodies[current] = []
      continue
    if line.startswith("}"):
      current = None
      continue
    m = re.match(r"\s*(?:ROOT )?%([\w.\-]+) = .*?\s([a-z][\w\-]*)\(", line)
    if m:
      lines.setdefault(m.group(1), line)
      if current is not None:
        bodies[current].append(m.group(2))
  return lines, bodies


def op_table(events: list[dict], hlo_text: str, iters: int) -> list[dict]:
  """Milliseconds per step of each compiled op, from a profiler trace of ``iters`` steps.

  ``events`` are Chrome-trace events (``ph == "X"``, ``dur`` in microseconds);
  only events named after an instruction of ``hlo_text`` (the compiled
  program's HLO) count. Each row: the op, ms per step, ``scope`` (the op's
  source location in the model, after the last ``closed_call/``), ``backward``
  (whether it comes from a transpose, i.e. the backward pass), the main
  opcodes inside a fusion, and the output shape. Sorted by time, largest first.
  """
  lines, bodies = _hlo_index(hlo_text)
  total: dict[str, float] = {}
  for e in events:
    if e.get("ph") == "X" and e.get("name") in lines:
      total[e["name"]] = total.get(e["name"], 0.0) + float(e.get("dur", 0.0))
  rows = []
  for name, us in total.items():
    line = lines[name]
    meta = re.search(r'op_name="([^"]+)"', line)
    op_name = meta.group(1) if meta else ""
    called = re.search(r"calls=%([\w.\-]+)", line)
    body = bodies.get(called.group(1), []) if called else []
    shape = re.match(r"\s*(?:ROOT )?%[\w.\-]+ = (\S+)", line).group(1).split("{")[0]
    rows.append({"op": name, "ms_per_step": us / 1e3 / iters,
                 "scope": op_name.split("closed_call/")[-1], "backward": "transpose(" in op_name,
                 "contains": [k for k in _FUSED_KINDS if k in body], "shape": shape})
  return sorted(rows, key=lambda r: -r["ms_per_step"])


def scope_summary(rows: list[dict]) -> list[dict]:
  """Op time per (model module, forward/backward), e.g. ``TorchConv_1`` backward."""
  groups: dict[tuple[str, str], float] = {}
  for r in rows:
    m = re.findall(r"([A-Z][A-Za-z]*_\d+)", r["scope"])
    key = (m[0] if m else "(other)", "backward" if r["backward"] else "forward")
    groups[key] = groups.get(key, 0.0) + r["ms_per_step"]
  return [{"module": k[0], "pass": k[1], "ms_per_step": v}
          for k, v in sorted(groups.items(), key=lambda kv: -kv[1])]


def _trace_step(fit, args, iters: int, trace_dir: str) -> tuple[list[dict], float]:
  """Runs the compiled ``fit`` once under the profiler; returns ``op_table`` and the wall ms."""
  import glob
  import gzip
  import jax
  jax.block_until_ready(fit(*args))
  with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
    t0 = time.perf_counter()
    jax.block_until_ready(fit(*args))
    wall = time.perf_counter() - t0
  found = sorted(glob.glob(f"{trace_dir}/**/*.trace.json.gz", recursive=True), key=os.path.getmtime)
  if not found:
    raise FileNotFoundError(f"the profiler wrote no *.trace.json.gz under {trace_dir}")
  with gzip.open(found[-1]) as f:
    trace = json.load(f)
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  hlo = fit.lower(*args).compile().as_text()
  return op_table(events, hlo, iters), 1e3 * wall / iters


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--batch", type=int, default=100)
  p.add_argument("--width", type=int, default=128)
  p.add_argument("--iters", type=int, default=10, help="scan length per timing")
  p.add_argument("--repeats", type=int, default=3, help="timings per part (median)")
  p.add_argument("--table", action="store_true")
  p.add_argument("--trace", metavar="DIR", default=None,
                 help="also profile the whole step (jax.profiler trace written to DIR) and print "
                      "its ops, largest first")
  p.add_argument("--top", type=int, default=25, help="ops printed by --trace")
  p.add_argument("--tiny", action="store_true", help=(
      "check the script in seconds: batch 4, width 4, 2 iterations, one repeat (flags given "
      "explicitly still apply)"))
  args = p.parse_args(argv)
  if args.tiny:
    p.set_defaults(batch=4, width=4, iters=2, repeats=1)
    args = p.parse_args(argv)

  import jax
  import jax.numpy as jnp
  import numpy as np

  from jaxdd import augment, models, policy, protocols, train
  from jaxdd.models import loop_safe_conv

  timed = _timer(args.repeats)
  b, w, it = args.batch, args.width, args.iters
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(b, 28, 28, 3)), jnp.float32)
  y = jnp.asarray(np.arange(b) % 10, jnp.int32)
  model = models.ConvNet(10, width=w)
  task = train.standard_task(model)
  params, state = task.init(jax.random.key(0), x, y)

  a = jnp.asarray(rng.normal(size=(2048, 2048)), jnp.float32)
  t = timed(jax.jit(lambda m: m @ m), a)
  peak = 2 * 2048 ** 3 / t / 1e9
  rows = []

  def emit(part, seconds, gflop=None):
    row = {"bench": "eval_profile", "part": part, "batch": b, "width": w,
           "s_per_iter": round(seconds / it, 5), "policy": policy.current().name}
    if gflop:
      row.update(gflop=round(gflop, 3), gflops_per_s=round(gflop / (seconds / it), 1))
    rows.append(row)
    print(json.dumps(row), flush=True)

  # The parts are timed alone, so they add up to more than the step (no fusion across them;
  # "forward + backward" here is one full batch, the trainer's step uses micro-batches).
  # Layer shapes of ConvNet-3 on 28x28x3: 28 -> 14 -> 7 -> 3 after each pool.
  sizes, cins = (28, 14, 7), (3, w, w)
  conv_gflop = [2 * b * s * s * 9 * ci * w / 1e9 for s, ci in zip(sizes, cins)]
  dense_gflop = 2 * b * (3 * 3 * w) * 10 / 1e9
  fwd_gflop = sum(conv_gflop) + dense_gflop
  # backward: weight gradients of every layer, input gradients of all but the first conv
  bwd_gflop = sum(conv_gflop) + sum(conv_gflop[1:]) + 2 * dense_gflop

  proto = protocols.get_protocol("dm").replace(epochs=it - 1, batch_size=b)
  fit = jax.jit(lambda k, xx: train.fit(k, params, state, xx, y, task=task, protocol=proto)[0])
  emit("step (train.fit: augment + forward + backward + SGD)",
       timed(fit, jax.random.key(1), x), fwd_gflop + bwd_gflop)
  if args.trace:
    ops, wall_ms = _trace_step(fit, (jax.random.key(1), x), it, args.trace)
    print(f"\nthe step's ops under the profiler (one run of {it} steps, {wall_ms:.1f} ms per step "
          f"wall; op times sum to {sum(o['ms_per_step'] for o in ops):.1f} ms: ops overlap)\n")
    print("| op | ms / step | pass | scope | contains | shape |")
    print("|---|---|---|---|---|---|")
    for o in ops[:args.top]:
      print(f"| {o['op']} | {o['ms_per_step']:.2f} | {'bwd' if o['backward'] else 'fwd'} | "
            f"{o['scope']} | {', '.join(o['contains'])} | {o['shape']} |")
    print("\n| module | pass | ms / step |\n|---|---|---|")
    for g in scope_summary(ops):
      print(f"| {g['module']} | {g['pass']} | {g['ms_per_step']:.1f} |")
    print(flush=True)

  aug = augment.dsa(protocols.DSA_STRATEGY, siamese=False)
  emit("augment (DSA, per-image parameters, a fresh family draw per step)",
       timed(_looped(lambda xx, i: aug(jax.random.fold_in(jax.random.key(2), i), xx), it,
                     with_index=True), x))

  def loss(pp, xx):
    logits = model.apply({"params": pp, **state}, xx, train=True)
    return train.cross_entropy(logits, y).mean()
  emit("forward", timed(_looped(lambda xx, pp: loss(pp, xx), it), x, params), fwd_gflop)
  emit("forward + backward", timed(_looped(lambda xx, pp: jax.grad(loss)(pp, xx), it), x, params),
       fwd_gflop + bwd_gflop)

  pad = ((1, 1), (1, 1))
  conv = lambda xx, ww: loop_safe_conv(xx, ww, (1, 1), pad,
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"))
  for i, (s, ci) in enumerate(zip(sizes, cins)):
    xi = jnp.asarray(rng.normal(size=(b, s, s, ci)), jnp.float32)
    wi = jnp.asarray(rng.normal(size=(3, 3, ci, w)) * 0.05, jnp.float32)
    g = jnp.asarray(rng.normal(size=(b, s, s, w)), jnp.float32)
    emit(f"conv{i + 1} forward ({s}x{s}, {ci}->{w})",
         timed(_looped(conv, it), xi, wi), conv_gflop[i])
    if i:  # the input gradient is linear in the output gradient: loop over gg
      emit(f"conv{i + 1} input gradient",
           timed(_looped(lambda gg, xx, ww: jax.vjp(lambda q: conv(q, ww), xx)[1](gg)[0], it),
                 g, xi, wi), conv_gflop[i])
    emit(f"conv{i + 1} weight gradient",
         timed(_looped(lambda gg, xx, ww: jax.vjp(lambda q: conv(xx, q), ww)[1](gg)[0], it),
               g, xi, wi), conv_gflop[i])
    scale, bias = jnp.ones((w,)), jnp.zeros((w,))
    nrp = lambda h: models.pool(jax.nn.relu(models.instance_norm(h, scale, bias)), "avg")
    emit(f"norm + relu + pool {i + 1}, forward and backward ({s}x{s}x{w})",
         timed(_looped(lambda gg: jax.vjp(nrp, gg)[1](nrp(gg))[0], it), g))

  if args.table:
    total = rows[0]["s_per_iter"]
    print(f"\nbatch {b}, width {w}; fp32 matmul rate here: {peak:.0f} GFLOP/s\n")
    print("| part | ms / step | share of the step | GFLOP | GFLOP/s |")
    print("|---|---|---|---|---|")
    for r in rows:
      print(f"| {r['part']} | {1e3 * r['s_per_iter']:.1f} | {r['s_per_iter'] / total:.0%} | "
            f"{r.get('gflop', '')} | {r.get('gflops_per_s', '')} |")


if __name__ == "__main__":
  main()
