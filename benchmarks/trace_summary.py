"""Where a traced chunk of distillation steps spent the device's time, per step.

Reads what a run traced with ``$JAXDD_PROFILE=DIR`` (:mod:`jaxdd.runs.profiling`): XLA's trace
(``DIR/plugins/profile/<time>/*.trace.json.gz``, Chrome-trace events) and ``DIR/profile.json``
(the steps traced, their wall time, the device). For each device in the trace (``/device:GPU:0``
and so on) it adds up the kernels on the device's streams, and prints, per step:

* the wall time (the host's view of the chunk), the time the device was busy (the union of
  its kernels' intervals: kernels on several streams may overlap) and what is left, the time
  it was idle; and where the idle time falls: the gaps between kernels, by the HLO op of the
  kernel after each gap (for a kernel inside a graph, the graph: many small gaps there are
  the launches of many small kernels, a long one before the loop's first kernel the host);
* the kernels' time and number by HLO op, or by graph for the kernels a GPU replays inside
  one (a command buffer);
* the kernels' time by kind, from their names: convolutions (cuDNN, implicit GEMM, XMMA),
  matrix products (GEMM), reductions, copies and transposes, memory copies and sets, other
  fusions, the rest; names are a heuristic, so the largest kernels are listed too;
* the kernels' time by part of the step, from the JAX op path behind each kernel: each layer
  of the network, forward or backward, the DSA augmentation, the rest. The path is the one the
  kernel's event carries (``tf_op``, or ``name`` as newer profilers write it); a kernel that a
  GPU replays inside a graph (a command buffer) carries none, and its path is looked up by
  name in the traced program's compiled HLO (``program.hlo.txt.gz``, written beside the trace
  by :mod:`jaxdd.runs.profiling`); what neither names is ``unnamed``;
* the ``--top`` largest kernels by total time, with how many ran per step.

A trace without device events (a CPU run, or a GPU machine whose profiler libraries are
missing) is said so in one line, with the wall time alone.

  python benchmarks/trace_summary.py DIR            # a markdown table
  python benchmarks/trace_summary.py DIR --json     # one JSON object
"""
from __future__ import annotations

import argparse
import glob
import gzip
import json
import os
import re
import sys

#: The traced program's compiled HLO beside the trace (jaxdd.runs.profiling.PROGRAM).
PROGRAM = "program.hlo.txt.gz"
#: Kinds of kernel, first match wins: (kind, pattern on the lower-cased kernel name and HLO op).
KINDS = (
    ("convolution", r"conv(?!ert)|cudnn|xmma|implicit|winograd|fprop|dgrad|wgrad"),
    ("matrix product", r"gemm|cublas|nvjet|matmul|\bdot"),
    ("memory copy / set", r"memcpy|memset"),
    ("reduction", r"reduc"),
    ("copy / transpose", r"transpose|copy"),
    ("other fusion", r"fusion|triton|loop_|input_"),
)
#: Lines of a device that XLA derives from the kernels (they would count them twice).
DERIVED = re.compile(r"^(XLA (Ops|Modules|TraceMe)|Framework|TensorFlow|Source|Steps|Launch)",
                     re.I)


def kind(name: str, hlo_op: str = "") -> str:
  """The kind of a kernel, from its name (and HLO op when the trace names one)."""
  text = f"{name} {hlo_op}".lower()
  for k, pattern in KINDS:
    if re.search(pattern, text):
      return k
  return "other"


#: The named scopes of DM's loss (:func:`jaxdd.matching.dm_loss`): the DSA augmentation and
#: the two sides' embeddings.
SCOPES = {"dsa": "augmentation", "real_embed": "real", "syn_embed": "synthetic"}


def part(op_path: str) -> str:
  """The part of the step a kernel comes from, from its JAX op path (the trace's ``tf_op``,
  the HLO op's ``op_name``): the side of DM's loss (``real``, ``synthetic``: the named scopes of
  :func:`jaxdd.matching.dm_loss`) and the outermost model module (``TorchConv_1``,
  ``InstanceNorm_0``...), ``augmentation``, each with ``backward`` when it is a transpose; or
  ``other`` (the loss, the weights, the update, the network's random start)."""
  if not op_path:
    return "unnamed"
  backward = " backward" if "transpose(" in op_path else ""
  # each step of the path bare of its transformations: transpose(jvp(syn_embed)) -> syn_embed
  steps = [re.sub(r"^(?:[a-z_]+\()+|\)+$", "", s) for s in op_path.split("/")]
  scope = next((SCOPES[s] for s in steps if s in SCOPES), None)
  if scope == "augmentation":
    return scope + backward
  modules = re.findall(r"\b([A-Z][A-Za-z]*_\d+)\b", op_path)
  if modules:
    return " ".join(x for x in (scope, modules[0]) if x) + backward
  return (scope or "other") + backward


#: An instruction of an HLO module's text and the op path of its metadata.
_HLO_OP = re.compile(r'^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=.*?\bop_name="([^"]*)"', re.M)


def _key(name: str) -> str:
  """An HLO instruction's name as a kernel is named after it (``loop_add_fusion.3`` and
  ``loop_add_fusion_3`` alike)."""
  return re.sub(r"[.\-]", "_", name)


def hlo_op_paths(text: str) -> dict[str, str]:
  """Each instruction of a compiled HLO module's text (``compiled.as_text()``) -> the JAX op
  path of its metadata (``op_name``), keyed as :func:`op_path` looks them up."""
  return {_key(name): path for name, path in _HLO_OP.findall(text)}


def op_path(event: dict, paths: dict[str, str] | None = None) -> str:
  """The JAX op path behind a kernel's event: its ``tf_op`` or ``name`` argument (what the
  profiler recorded), else the compiled program's metadata for the kernel's name or HLO op
  (``paths``, :func:`hlo_op_paths`), else ``""``."""
  args = event.get("args", {})
  for given in (args.get("tf_op"), args.get("name")):
    if given and "/" in str(given):  # a bare "XlaModule:" names no op
      return str(given)
  for name in (event.get("name", ""), args.get("hlo_op", "")):
    found = (paths or {}).get(_key(str(name)))
    if found:
      return found
  return ""


def busy_us(intervals: list[tuple[float, float]]) -> float:
  """The length of the union of ``(start, end)`` intervals."""
  total, end = 0.0, float("-inf")
  for a, b in sorted(intervals):
    if a > end:
      total += b - a
      end = b
    elif b > end:
      total += b - end
      end = b
  return total


def idle_gaps(kernels: list[tuple[float, float, str]]) -> dict[str, list[float]]:
  """The device's idle gaps between ``(start, end, op)`` kernels (the gaps of the union of
  their intervals), each attributed to the op of the kernel that ends it: op -> [total
  microseconds, count]."""
  out: dict[str, list[float]] = {}
  end = None
  for a, b, op in sorted(kernels):
    if end is not None and a > end:
      g = out.setdefault(op, [0.0, 0])
      g[0] += a - end
      g[1] += 1
    end = b if end is None else max(end, b)
  return out


def find_trace(path: str) -> tuple[str, dict]:
  """The newest ``*.trace.json.gz`` under ``path`` (or ``path`` itself) and the sidecar
  ``profile.json`` of its folder ({} when absent)."""
  if os.path.isdir(path) and os.path.exists(os.path.join(path, "profile.json")):
    with open(os.path.join(path, "profile.json")) as f:
      failed = json.load(f).get("error")
    if failed:
      raise ValueError(f"the run could not trace its steps: {failed}")
  if os.path.isfile(path):
    trace, root = path, os.path.dirname(path)
  else:
    found = sorted(glob.glob(os.path.join(path, "**", "*.trace.json.gz"), recursive=True),
                   key=os.path.getmtime)
    if not found:
      raise FileNotFoundError(f"no *.trace.json.gz under {path}; trace a run with "
                              f"JAXDD_PROFILE={path}")
    trace, root = found[-1], path
  side = os.path.join(root, "profile.json")
  meta = {}
  if os.path.exists(side):
    with open(side) as f:
      meta = json.load(f)
  return trace, meta


def read_program(root: str) -> dict[str, str]:
  """:func:`hlo_op_paths` of the traced program's HLO in ``root`` ({} when there is none)."""
  path = os.path.join(root, PROGRAM)
  if not os.path.isfile(path):
    return {}
  with gzip.open(path, "rt") as f:
    return hlo_op_paths(f.read())


def summarise(events: list[dict], steps: int, wall_s: float | None = None,
              top: int = 15, paths: dict[str, str] | None = None) -> dict:
  """Per-step milliseconds of the device kernels in ``events`` (Chrome-trace events,
  microseconds): per device, busy time, time by kind, by part (the op paths of the events,
  else of ``paths``: :func:`hlo_op_paths`) and the ``top`` kernels."""
  procs, threads = {}, {}
  for e in events:
    if e.get("ph") == "M" and e.get("name") == "process_name":
      procs[e["pid"]] = e.get("args", {}).get("name", "")
    elif e.get("ph") == "M" and e.get("name") == "thread_name":
      threads[(e["pid"], e.get("tid"))] = e.get("args", {}).get("name", "")
  devices = {pid: n for pid, n in procs.items() if n.startswith("/device:")}
  per = max(int(steps), 1)
  out = {"steps": per, "on_device": bool(devices), "devices": []}
  if wall_s is not None:
    out["wall_ms_per_step"] = 1e3 * wall_s / per
  for pid, pname in sorted(devices.items(), key=lambda kv: kv[1]):
    lines = {t: n for (p, t), n in threads.items() if p == pid}

    def counted(tid) -> bool:
      return not DERIVED.match(lines.get(tid, ""))

    kernels: dict[tuple[str, str], list[float]] = {}
    parts: dict[str, float] = {}
    spans = []  # (start, end, HLO op or else kernel name) of every kernel
    for e in events:
      if e.get("ph") != "X" or e.get("pid") != pid or not counted(e.get("tid")):
        continue
      dur = float(e.get("dur", 0.0))
      hlo = str(e.get("args", {}).get("hlo_op", ""))
      spans.append((float(e["ts"]), float(e["ts"]) + dur, hlo or e.get("name", "")))
      k = kernels.setdefault((e.get("name", ""), hlo), [0.0, 0])
      k[0] += dur
      k[1] += 1
      where = part(op_path(e, paths))
      parts[where] = parts.get(where, 0.0) + dur
    if not kernels:
      continue
    kinds: dict[str, float] = {}
    for (name, hlo), (us, _) in kernels.items():
      kinds[kind(name, hlo)] = kinds.get(kind(name, hlo), 0.0) + us
    total = sum(us for us, _ in kernels.values())
    dev = {"device": pname, "kernel_ms_per_step": total / 1e3 / per,
           "busy_ms_per_step": busy_us([(a, b) for a, b, _ in spans]) / 1e3 / per,
           "kinds": [{"kind": k, "ms_per_step": us / 1e3 / per, "share": us / total}
                     for k, us in sorted(kinds.items(), key=lambda kv: -kv[1])],
           "parts": [{"part": k, "ms_per_step": us / 1e3 / per, "share": us / total}
                     for k, us in sorted(parts.items(), key=lambda kv: -kv[1])],
           "top": [{"kernel": name, "hlo_op": hlo, "kind": kind(name, hlo),
                    "ms_per_step": us / 1e3 / per, "per_step": n / per}
                   for (name, hlo), (us, n) in sorted(kernels.items(),
                                                      key=lambda kv: -kv[1][0])[:top]]}
    ops: dict[str, list[float]] = {}  # kernels by HLO op or graph: [microseconds, count]
    for a, b, op in spans:
      o = ops.setdefault(op, [0.0, 0])
      o[0] += b - a
      o[1] += 1
    gaps = idle_gaps(spans)
    dev["ops"] = [{"op": op, "ms_per_step": us / 1e3 / per, "kernels_per_step": n / per}
                  for op, (us, n) in sorted(ops.items(), key=lambda kv: -kv[1][0])[:top]]
    dev["gaps"] = [{"before": op, "ms_per_step": us / 1e3 / per, "gaps_per_step": n / per}
                   for op, (us, n) in sorted(gaps.items(), key=lambda kv: -kv[1][0])[:top]]
    if wall_s is not None:
      dev["idle_ms_per_step"] = max(out["wall_ms_per_step"] - dev["busy_ms_per_step"], 0.0)
    out["devices"].append(dev)
  return out


def table(summary: dict, meta: dict) -> str:
  """The summary as markdown."""
  n = summary["steps"]
  head = (f"Profile of {n} distillation step{'s' if n != 1 else ''}"
          + (f" (steps {meta['first_step'] + 1}-{meta['first_step'] + summary['steps']})"
             if "first_step" in meta else "")
          + (f" on {meta.get('device_kind')} ({meta.get('platform')}, jax {meta.get('jax')})"
             if meta.get("device_kind") else ""))
  out = [head]
  if not summary["on_device"]:
    out.append("No device events in the trace: a CPU run (benchmarks/eval_profile.py --trace "
               "times a CPU step's ops), or a machine whose profiler cannot see its device.")
  if "wall_ms_per_step" in summary:
    out.append(f"Wall: {summary['wall_ms_per_step']:.3f} ms a step.")
  for dev in summary["devices"]:
    out.append("")
    line = (f"{dev['device']}: kernels {dev['kernel_ms_per_step']:.3f} ms a step, busy "
            f"{dev['busy_ms_per_step']:.3f} ms")
    if "idle_ms_per_step" in dev:
      line += f", idle {dev['idle_ms_per_step']:.3f} ms"
    out += [line + ".", "", "| kind | ms per step | share |", "|---|---|---|"]
    out += [f"| {k['kind']} | {k['ms_per_step']:.3f} | {100 * k['share']:.1f} % |"
            for k in dev["kinds"]]
    out += ["", "| HLO op or graph | kernels, ms per step | kernels per step |", "|---|---|---|"]
    out += [f"| {o['op'][:40]} | {o['ms_per_step']:.3f} | {o['kernels_per_step']:g} |"
            for o in dev["ops"][:8]]
    if dev.get("gaps"):
      out += ["", "| idle before (HLO op or graph) | ms per step | gaps per step |",
              "|---|---|---|"]
      out += [f"| {g['before'][:40]} | {g['ms_per_step']:.3f} | {g['gaps_per_step']:g} |"
              for g in dev["gaps"][:5]]
    out += ["", "| part of the step | ms per step | share |", "|---|---|---|"]
    out += [f"| {k['part']} | {k['ms_per_step']:.3f} | {100 * k['share']:.1f} % |"
            for k in dev["parts"]]
    out += ["", "| kernel | HLO op | kind | ms per step | runs per step |", "|---|---|---|---|---|"]
    out += [f"| `{t['kernel'][:90]}` | {t['hlo_op'][:40]} | {t['kind']} | "
            f"{t['ms_per_step']:.3f} | {t['per_step']:g} |" for t in dev["top"]]
  return "\n".join(out)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("path", help="the $JAXDD_PROFILE folder of a run, or a *.trace.json.gz")
  p.add_argument("--steps", type=int, default=None,
                 help="steps in the trace (default: from profile.json)")
  p.add_argument("--top", type=int, default=15, help="largest kernels listed (default 15)")
  p.add_argument("--json", action="store_true", help="one JSON object instead of a table")
  args = p.parse_args(argv)
  try:
    trace, meta = find_trace(args.path)
    with gzip.open(trace) as f:
      data = json.load(f)
  except (OSError, ValueError) as e:
    print(f"trace_summary: error: {e}", file=sys.stderr)
    return 2
  steps = args.steps or meta.get("steps")
  if not steps:
    print(f"trace_summary: error: {args.path} has no profile.json; say how many steps the "
          f"trace holds with --steps N", file=sys.stderr)
    return 2
  events = data["traceEvents"] if isinstance(data, dict) else data
  root = args.path if os.path.isdir(args.path) else os.path.dirname(args.path)
  try:
    paths = read_program(root)
  except (OSError, EOFError, UnicodeDecodeError) as e:
    print(f"trace_summary: {os.path.join(root, PROGRAM)} could not be read ({e}); the kernels "
          "it would name are counted as unnamed", file=sys.stderr)
    paths = {}
  summary = summarise(events, steps, meta.get("wall_s"), top=args.top, paths=paths)
  print(json.dumps({**summary, "meta": meta}) if args.json else table(summary, meta))
  return 0


if __name__ == "__main__":
  sys.exit(main())
