"""The big-array traffic of a compiled program: which kernels read and write the large arrays.

A DM step on a GPU is memory-bound outside its convolutions, and what decides its time there is
how many times the largest activations (800 MB and more at the paper's scale) are read and
written. XLA's fusion decides that, and the compiled HLO shows it: each kernel (a fusion, a
library call such as a cuDNN convolution, a copy) reads its operands and writes its outputs.
This script adds up, per kernel of the executed computations (the entry, loop bodies and
branches; not the computations inside fusions), the bytes of the operands and outputs at
least ``--min-mb`` MB large. A fusion that only slices an array counts what it writes as read.
It is a count of full-array passes, not a timing: a kernel may read part of an operand.

  python benchmarks/hlo_traffic.py PROFILE/program.hlo.txt.gz          # a GPU run's program
  python benchmarks/hlo_traffic.py A.hlo.txt.gz B.hlo.txt.gz --kernels # two layouts, per kernel

The HLO comes from a profile (``program.hlo.txt.gz``), from a GPU's compiled programs
(``benchmarks/cached_hlo.py``) or from ``benchmarks/cell_cost.py --hlo-dir`` (also compiled for a
GPU without one, ``--gpu-target``). One JSON line per file: ``kernels`` (those touching a large
array), ``read_gb``, ``written_gb``; with ``--kernels``, a line per such kernel first.
"""
from __future__ import annotations

import argparse
import gzip
import json
import re
import sys

_BYTES = {"pred": 1, "s8": 1, "u8": 1, "f16": 2, "bf16": 2, "s16": 2, "u16": 2, "f32": 4,
          "s32": 4, "u32": 4, "f64": 8, "s64": 8, "u64": 8}
_ARRAY = re.compile(r"\b(" + "|".join(_BYTES) + r")\[([0-9,]*)\]")
_COMPUTATION = re.compile(r"^(?:ENTRY )?%(\S+) .*\{$")
_INSTRUCTION = re.compile(r"^\s+(?:ROOT )?%(\S+) = (.*?) ([a-z][a-z0-9-]*)\((.*?)\)")
#: The instructions that run as kernels of their own outside fusions.
KERNELS = ("fusion", "custom-call", "copy", "transpose", "reduce", "scatter", "sort",
           "select-and-scatter", "dynamic-update-slice", "convolution", "dot")


def array_bytes(shape: str) -> list[int]:
  """The size in bytes of each array of an HLO shape string (a tuple gives several)."""
  out = []
  for dtype, dims in _ARRAY.findall(shape):
    n = 1
    for d in dims.split(","):
      if d:
        n *= int(d)
    out.append(n * _BYTES[dtype])
  return out


class Module:
  """The computations of an HLO module text: each one's instruction lines, every
  instruction's shape, and which computations run inside kernels (fusions, reductions'
  and scatters' functions) rather than as kernels of their own."""

  def __init__(self, text: str):
    self.computations: dict[str, list[str]] = {}
    self.entry, current = None, None
    for line in text.splitlines():
      m = _COMPUTATION.match(line)
      if m and not line.startswith(" "):
        current = m.group(1)
        self.computations[current] = []
        if line.startswith("ENTRY "):
          self.entry = current
      elif line.startswith("}"):
        current = None
      elif current is not None:
        self.computations[current].append(line)
    self.shapes, self.inner = {}, set()
    for lines in self.computations.values():
      for line in lines:
        m = _INSTRUCTION.match(line)
        if not m:
          continue
        self.shapes[m.group(1)] = m.group(2)
        if m.group(3) == "fusion":
          self.inner.update(re.findall(r"calls=%([\w.\-]+)", line))
        if m.group(3) != "call":  # a called computation runs its own kernels
          self.inner.update(re.findall(r"to_apply=%([\w.\-]+)", line))

  def loops(self) -> list[tuple[str, int, int]]:
    """The while loops the entry runs, however deep: each one's body computation, trip count
    (-1 where XLA does not know it) and depth (0: not inside another loop)."""
    out, todo, seen = [], [(self.entry, 0)] if self.entry else [], set()
    while todo:
      name, depth = todo.pop()
      if name in seen:
        continue
      seen.add(name)
      for op, line, callees in self._calls(name):
        if op == "while":
          n = re.search(r'"known_trip_count":\{"n":"(\d+)"', line)
          out.append((callees[0], int(n.group(1)) if n else -1, depth))
        todo += [(c, depth + (op == "while")) for c in callees]
    return out

  def _calls(self, computation: str):
    """``(op, line, callees)`` per while (callees: its body), call and conditional (its
    branches) of ``computation``."""
    for line in self.computations[computation]:
      m = _INSTRUCTION.match(line)
      if not m:
        continue
      op = m.group(3)
      if op == "while":
        yield op, line, re.findall(r"body=%([\w.\-]+)", line)
      elif op == "call":
        yield op, line, re.findall(r"to_apply=%([\w.\-]+)", line)
      elif op == "conditional":
        yield op, line, re.findall(
            r"%([\w.\-]+)", re.search(r"branch_computations=\{([^}]*)\}", line).group(1))

  def kernels(self, min_bytes: float, computation: str) -> list[dict]:
    """:func:`traffic` of the kernels of ``computation`` alone (loops and branches inside it
    not included)."""
    out = []
    for line in self.computations[computation]:
      m = _INSTRUCTION.match(line)
      if not m or m.group(3) not in KERNELS:
        continue
      kernel, shape, op, args = m.groups()
      written = sum(b for b in array_bytes(shape) if b >= min_bytes)
      read = sum(b for o in re.findall(r"%([\w.\-]+)", args)
                 for b in array_bytes(self.shapes.get(o, "")) if b >= min_bytes)
      if op == "fusion" and "slice" in kernel:
        read = written
      if read or written:
        path = re.search(r'op_name="([^"]*)"', line)
        out.append({"kernel": kernel, "op": path.group(1) if path else "", "read": read,
                    "written": written})
    return out

  def run_once(self, min_bytes: float, computation: str) -> list[dict]:
    """The kernels one run of ``computation`` launches, with :func:`traffic`'s fields: its
    own, those of the loops it holds (one iteration each), of the computations it calls and,
    of each conditional, those of its branch with the most kernels."""
    out = self.kernels(min_bytes, computation)
    for op, _, callees in self._calls(computation):
      runs = [self.run_once(min_bytes, c) for c in callees]
      out += max(runs, key=len) if op == "conditional" else runs[0]
    return out


def traffic(text: str, min_bytes: float = 100e6) -> list[dict]:
  """Per kernel of the executed computations of HLO module ``text`` that reads or writes an
  array of at least ``min_bytes``: its name, the op path its metadata names, and the bytes of
  such arrays it reads and writes."""
  module = Module(text)
  return [k for name in module.computations if name not in module.inner
          for k in module.kernels(min_bytes, name)]


def _read(path: str) -> str:
  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "rt") as f:
    return f.read()


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("hlo", nargs="+", help="HLO text files (.gz too)")
  p.add_argument("--min-mb", type=float, default=100.0,
                 help="the arrays counted: at least this many MB (default 100)")
  p.add_argument("--kernels", action="store_true", help="a line per kernel before each total")
  args = p.parse_args(argv)
  for path in args.hlo:
    try:
      text = _read(path)
    except (OSError, UnicodeDecodeError, EOFError) as e:
      print(f"hlo_traffic: cannot read {path} ({e}); give an HLO text file", file=sys.stderr)
      return 1
    if "HloModule" not in text:
      print(f"hlo_traffic: {path} holds no HloModule; give a compiled program's HLO text",
            file=sys.stderr)
      return 1
    kernels = traffic(text, args.min_mb * 1e6)
    if args.kernels:
      for k in kernels:
        print(json.dumps({"file": path, **k}))
    print(json.dumps({"file": path, "min_mb": args.min_mb, "kernels": len(kernels),
                      "read_gb": round(sum(k["read"] for k in kernels) / 1e9, 3),
                      "written_gb": round(sum(k["written"] for k in kernels) / 1e9, 3)}))
  return 0


if __name__ == "__main__":
  sys.exit(main())
