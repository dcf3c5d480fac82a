"""README.md and RESULTS.md tables generated from the published result files.

    python experiments/results_tables.py           # rewrite the marked blocks
    python experiments/results_tables.py --check   # exit 1 if a block differs (a test runs this)

A block is delimited by ``<!-- table:CELL -->`` and ``<!-- /table:CELL -->`` (the full
table of ``results/CELL/table.json``), ``<!-- summary:CELL -->`` /
``<!-- /summary:CELL -->`` (the short README form: the main rows and columns) or
``<!-- selection:CELL -->`` (the validation selection of ``results/CELL/selection.json``) or
``<!-- crossarch:CELL -->`` (the cross-architecture matrix of ``results/cross-arch/CELL.json``,
rendered by :func:`jaxdd.elf.format_seeds`) or ``<!-- series:PREFIX -->`` (one line per published
cell ``PREFIX-<ratio>``, in ratio order: :func:`jaxdd.runs.format_series`) or
``<!-- methods:CELL,CELL,... -->`` (the vanilla and selected KDE rows of those cells, one line
each, in the order given: :func:`jaxdd.runs.format_methods`).
The tables are rendered by :mod:`jaxdd.runs.tables`, so the text and the files cannot drift.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys

from jaxdd import elf, runs, synset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = ("README.md", "RESULTS.md")
_KINDS = "table|summary|selection|crossarch|series|methods"
_BLOCK = re.compile(
    rf"(<!-- ({_KINDS}):([\w.,-]+) -->\n)(.*?)(<!-- /\2:\3 -->)", re.S)
_OPENER = re.compile(rf"^<!-- ({_KINDS}):(\S*) -->$", re.M)  # a marker on its own line


def render(kind: str, cell: str, results: str) -> str:
  if kind == "crossarch":
    path = os.path.join(results, "cross-arch", f"{cell}.json")
    if not os.path.exists(path):
      raise FileNotFoundError(f"{path} not found: run `python experiments/cross_arch.py --cell "
                              f"{cell} --publish` first")
    with open(path) as f:
      return elf.format_seeds(json.load(f)) + "\n"
  if kind == "series":
    tables = []
    for name in sorted(os.listdir(results)):
      path = os.path.join(results, name, "table.json")
      if name.startswith(cell + "-") and os.path.exists(path):
        with open(path) as f:
          tables.append(json.load(f))
    if not tables:
      raise FileNotFoundError(f"no results/{cell}-*/table.json: run and --publish a cell of "
                              f"the series `python experiments/grid.py --cells {cell}-<ratio>`")
    return runs.format_series(tables) + "\n"
  if kind == "methods":
    tables = []
    for name in cell.split(","):
      path = os.path.join(results, name, "table.json")
      if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: run `python experiments/grid.py --cells "
                                f"{name}` and `--publish` first")
      with open(path) as f:
        tables.append(json.load(f))
    return runs.format_methods(tables) + "\n"
  path = os.path.join(results, cell, "selection.json" if kind == "selection" else "table.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found: run `python experiments/grid.py --cells {cell}` "
                            "and `--publish` first")
  with open(path) as f:
    table = json.load(f)
  if kind == "selection":
    return runs.format_selection(table) + "\n"
  return (runs.format_table(table) if kind == "table" else runs.format_summary(table)) + "\n"


def update(text: str, results: str) -> str:
  """``text`` with every marked block rendered again.

  Raises:
    ValueError: an opening marker on its own line that does not start a block (no matching closing marker
      on a later line, or a name outside ``[A-Za-z0-9_.,-]``), which would otherwise be left
      silently stale.
  """
  blocks = {m.start(1) for m in _BLOCK.finditer(text)}
  for m in _OPENER.finditer(text):
    if m.start() not in blocks:
      line = text.count("\n", 0, m.start()) + 1
      raise ValueError(f"line {line}: {m.group(0)} opens no block; close it with "
                       f"<!-- /{m.group(1)}:{m.group(2)} --> on a later line")
  return _BLOCK.sub(lambda m: m.group(1) + render(m.group(2), m.group(3), results) + m.group(5),
                    text)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--check", action="store_true", help="only compare; exit 1 on a difference")
  parser.add_argument("--root", default=ROOT, help="repository root")
  args = parser.parse_args(argv)
  results = os.path.join(args.root, "results")
  stale = []
  for doc in DOCS:
    path = os.path.join(args.root, doc)
    with open(path) as f:
      text = f.read()
    try:
      new = update(text, results)
    except ValueError as e:
      raise ValueError(f"{doc}: {e}") from None
    if new != text:
      stale.append(doc)
      if not args.check:
        synset.atomic_write_bytes(path, new.encode())
  if args.check and stale:
    print(f"out of date with results/: {', '.join(stale)}; run python experiments/results_tables.py",
          file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
