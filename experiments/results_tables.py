"""Every results table of README.md and the documentation site, generated from ``results/``.

    python experiments/results_tables.py           # rewrite the marked blocks
    python experiments/results_tables.py --check   # exit 1 if a block differs (a test runs this)
    python experiments/results_tables.py --pages docs/results/proxy.md   # only those pages

The pages (README.md and every Markdown page under ``docs/``) hold prose and marked blocks; this
script rewrites the blocks from the JSON files under ``results/`` and never touches the prose, so a
table's numbers cannot drift from the files. A block is delimited by ``<!-- KIND:NAME -->`` and
``<!-- /KIND:NAME -->``, each on its own line:

* ``table:CELL`` — the full table of a grid cell, ``results/CELL/table.json``
  (:func:`jaxdd.runs.format_table`); ``summary:CELL`` — its short form (the main rows and columns,
  :func:`jaxdd.runs.format_summary`); ``selection:CELL`` — the validation selection of
  ``results/CELL/selection.json`` (:func:`jaxdd.runs.format_selection`).
* ``crossarch:CELL`` — the cross-architecture matrix of ``results/cross-arch/CELL.json``
  (:func:`jaxdd.elf.format_seeds`).
* ``series:PREFIX`` — one line per published cell ``PREFIX-<ratio>``, in ratio order
  (:func:`jaxdd.runs.format_series`); ``methods:CELL,CELL,...`` — the vanilla and selected KDE
  rows of those cells, one line each (:func:`jaxdd.runs.format_methods`).
* ``data:PATH`` — a measurement table, ``results/PATH.json`` (``PATH`` may hold ``/``), in the
  format :func:`render_data` documents: columns, rows, optional number formats and notes, and
  where it came from.

Every block ends with one provenance line: the date, commit, machine and command of the
measurement. A ``data`` file carries these four fields itself; the cell kinds read them from
``provenance.json`` in the cell's directory (``results/cross-arch/provenance.json`` for the
matrices), either one record or a record per kind or per cross-architecture cell (a key
``table``, ``selection``, ... or the cell name, falling back to the record itself).

The headline table (``data:headline``) is itself derived: before the blocks, the script writes
``results/headline.json`` from the files it cites (:func:`headline`), and ``--check`` also fails
when that file differs from what they give.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import re
import sys

from jaxdd import elf, runs, synset
from jaxdd.results import format_pm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_KINDS = "table|summary|selection|crossarch|series|methods|data"
_NAME = r"[\w.,/-]+"
_BLOCK = re.compile(rf"(<!-- ({_KINDS}):({_NAME}) -->\n)(.*?)(<!-- /\2:\3 -->)", re.S)
_OPENER = re.compile(rf"^<!-- ({_KINDS}):(\S*) -->$", re.M)  # a marker on its own line
PROVENANCE = ("date", "commit", "machine", "command")


def pages(root: str) -> list[str]:
  """The files this script maintains, relative to ``root``: README.md and ``docs/**/*.md``."""
  docs = sorted(glob.glob(os.path.join(root, "docs", "**", "*.md"), recursive=True))
  docs = [d for d in docs if "/_build/" not in d and "/_autosummary/" not in d]
  return ["README.md"] + [os.path.relpath(d, root) for d in docs]


def _load(path: str, hint: str):
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found: {hint}")
  with open(path) as f:
    try:
      return json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path}: not valid JSON ({e})") from None


def _check_provenance(rec, where: str) -> dict:
  if not isinstance(rec, dict) or any(not rec.get(k) for k in PROVENANCE):
    raise ValueError(f"{where}: needs a provenance record with {', '.join(PROVENANCE)}")
  if not all(isinstance(rec[k], str) for k in PROVENANCE[:3]):
    raise ValueError(f"{where}: date, commit and machine must be strings")
  cmd = rec["command"]
  if not (isinstance(cmd, str) or (isinstance(cmd, list) and cmd
                                   and all(isinstance(c, str) for c in cmd))):
    raise ValueError(f"{where}: command must be a string or a list of strings")
  return rec


def provenance_line(rec: dict) -> str:
  """The line under a table: ``Measured <date> · commit `<sha>` · <machine> · `<command>```."""
  cmds = rec["command"] if isinstance(rec["command"], list) else [rec["command"]]
  cmd = "; ".join(f"`{c}`" for c in cmds)
  return f"Measured {rec['date']} · commit `{rec['commit']}` · {rec['machine']} · {cmd}"


def _cell_provenance(directory: str, key: str) -> dict:
  path = os.path.join(directory, "provenance.json")
  prov = _load(path, "write the measurement's date, commit, machine and command there")
  rec = prov.get(key, prov) if isinstance(prov, dict) else prov
  return _check_provenance(rec, path + (f" [{key}]" if key in prov else ""))


def _fmt(value, spec) -> str:
  if value is None:
    return "–"
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not spec:
    return str(value)
  return format(value, spec)


def render_data(table: dict, where: str = "table") -> str:
  """A measurement table in Markdown, from its JSON form.

  Fields: ``columns`` (header strings), ``rows`` (lists of strings, numbers or ``null``, shown as
  "–"; as long as ``columns``), optional ``formats`` (a Python format spec per column, such as
  ``".1f"``, applied to numbers; ``null`` or ``""`` leaves a cell as written), optional
  ``caption`` (a line above the table) and ``notes`` (lines below it), and the provenance fields
  ``date``, ``commit``, ``machine`` and ``command`` (a string or a list of strings).

  Example:
    >>> print(render_data({"columns": ["n", "ms"], "rows": [[1, 2.0], [8, 3.25]],
    ...                    "formats": [None, ".1f"], "date": "2026-01-01", "commit": "abc1234",
    ...                    "machine": "CPU", "command": "python bench.py"}))
    | n | ms |
    |---|---|
    | 1 | 2.0 |
    | 8 | 3.2 |
    <BLANKLINE>
    Measured 2026-01-01 · commit `abc1234` · CPU · `python bench.py`
  """
  if not isinstance(table, dict):
    raise ValueError(f"{where}: a data table is a JSON object")
  cols, rows = table.get("columns"), table.get("rows")
  if not (isinstance(cols, list) and cols and isinstance(rows, list) and rows):
    raise ValueError(f"{where}: needs non-empty lists 'columns' and 'rows'")
  formats = table.get("formats") or [None] * len(cols)
  if len(formats) != len(cols):
    raise ValueError(f"{where}: 'formats' has {len(formats)} entries for {len(cols)} columns")
  lines = []
  if table.get("caption"):
    lines += [str(table["caption"]), ""]
  lines += ["| " + " | ".join(map(str, cols)) + " |", "|" + "---|" * len(cols)]
  for i, row in enumerate(rows):
    if not isinstance(row, list) or len(row) != len(cols):
      raise ValueError(f"{where}: row {i} does not have {len(cols)} cells")
    lines.append("| " + " | ".join(_fmt(v, f) for v, f in zip(row, formats)) + " |")
  notes = table.get("notes") or []
  if notes:
    lines += [""] + [str(n) for n in notes]
  return "\n".join(lines + ["", provenance_line(_check_provenance(table, where))])


def _cells(names, results, hint):
  tables = []
  for name in names:
    path = os.path.join(results, name, "table.json")
    tables.append(_load(path, hint.format(name=name)))
  return tables


def _provenances(directories, key) -> str:
  lines = []
  for d in directories:
    line = provenance_line(_cell_provenance(d, key))
    if line not in lines:
      lines.append(line)
  return "\n\n".join(lines)


def render(kind: str, cell: str, results: str) -> str:
  """The Markdown of one block (ending in a newline)."""
  grid = "run `python experiments/grid.py --cells {name}` and `--publish` first"
  if kind == "data":
    path = os.path.join(results, cell + ".json")
    return render_data(_load(path, "write the measurement table there"), path) + "\n"
  if kind == "crossarch":
    path = os.path.join(results, "cross-arch", f"{cell}.json")
    body = elf.format_seeds(_load(path, f"run `python experiments/cross_arch.py --cell {cell} "
                                        "--publish` first"))
    dirs, key = [os.path.join(results, "cross-arch")], cell
  elif kind == "series":
    names = sorted(n for n in os.listdir(results)
                   if n.startswith(cell + "-") and os.path.exists(
                       os.path.join(results, n, "table.json")))
    if not names:
      raise FileNotFoundError(f"no results/{cell}-*/table.json: run and --publish a cell of "
                              f"the series `python experiments/grid.py --cells {cell}-<ratio>`")
    body = runs.format_series(_cells(names, results, grid))
    dirs, key = [os.path.join(results, n) for n in names], "table"
  elif kind == "methods":
    names = cell.split(",")
    body = runs.format_methods(_cells(names, results, grid))
    dirs, key = [os.path.join(results, n) for n in names], "table"
  elif kind == "selection":
    path = os.path.join(results, cell, "selection.json")
    body = runs.format_selection(_load(path, grid.format(name=cell)))
    dirs, key = [os.path.join(results, cell)], "selection"
  else:
    (table,) = _cells([cell], results, grid)
    body = runs.format_table(table) if kind == "table" else runs.format_summary(table)
    dirs, key = [os.path.join(results, cell)], "table"
  return body + "\n\n" + _provenances(dirs, key) + "\n"


HEADLINE = "headline.json"
# The files the headline's numbers are read from, relative to results/.
HEADLINE_SOURCES = {
    "vanilla": "fidelity-paper/paper-surrogate/table.json",  # arm vanilla, seed 0
    "kde": "fidelity-paper/cpu-surrogate/table.json",  # arm kde: the paper's uniform batches
    "main": "main-job/comparison.md",  # what `jaxdd reproduce --preset cpu` writes
}


def _comparison(text: str, where: str) -> tuple[int, int, dict[str, str]]:
  """The seed, the number of evaluation networks and each method's overall cell of a
  ``comparison.md`` (the first table of the file)."""
  head = re.search(r"\bseed (\d+)\b.*?\b(\d+) models\b", text.splitlines()[0] if text else "")
  if not head:
    raise ValueError(f"{where}: the first line names no 'seed N' and 'N models'")
  table = [line for line in text.split("\n\n")
           if line.startswith("| method | overall |")]
  if not table:
    raise ValueError(f"{where}: no table with the columns 'method' and 'overall'")
  cells = {}
  for line in table[0].splitlines()[2:]:
    row = [c.strip() for c in line.strip().strip("|").split("|")]
    cells[row[0]] = row[1]
  return int(head.group(1)), int(head.group(2)), cells


def headline(results: str) -> dict:
  """``results/headline.json`` as its sources give it (:data:`HEADLINE_SOURCES`).

  The paper-scale row reads the overall test accuracy of the vanilla arm's seed 0 in
  ``fidelity-paper/paper-surrogate/table.json`` and the mean ± sample std (ddof 1) over seeds
  of the ``kde`` arm (the paper's uniform batches with in-batch weights) in
  ``fidelity-paper/cpu-surrogate/table.json``; the main job's row reads the ``dm`` and
  ``dm+kde`` rows of ``main-job/comparison.md`` (± over the networks of its one seed, ddof 0,
  as the run wrote it). The descriptions, the paper's numbers and the provenance are fixed
  here.
  """
  def source(key):
    path = os.path.join(results, HEADLINE_SOURCES[key])
    hint = "the headline reads it; restore it or change HEADLINE_SOURCES in experiments/results_tables.py"
    if path.endswith(".json"):
      return _load(path, hint)
    if not os.path.exists(path):
      raise FileNotFoundError(f"{path} not found: {hint}")
    with open(path) as f:
      return f.read()

  def arm(table, name, where):
    recs = sorted(table.get(name) or [], key=lambda r: r["config"]["seed"])
    if not recs:
      raise ValueError(f"{where}: no finished run of the arm {name!r}")
    return [r["config"]["seed"] for r in recs], [r["test"]["overall"] for r in recs]

  vanilla_path, kde_path, main_path = (os.path.join("results", HEADLINE_SOURCES[k])
                                       for k in ("vanilla", "kde", "main"))
  seeds, overall = arm(source("vanilla"), "vanilla", vanilla_path)
  if 0 not in seeds:
    raise ValueError(f"{vanilla_path}: the vanilla arm has no seed 0")
  vanilla = f"{100 * overall[seeds.index(0)]:.1f}"
  kde_seeds, kde = arm(source("kde"), "kde", kde_path)
  seed, networks, main = _comparison(source("main"), main_path)
  missing = [m for m in ("dm", "dm+kde") if m not in main]
  if missing:
    raise ValueError(f"{main_path}: no row {', '.join(missing)}")
  per_seed = " and ".join(f"{100 * v:.1f}" for v in kde)
  seed_list = " and ".join(map(str, kde_seeds))
  return {
      "columns": ["setting", "hardware", "seeds", "vanilla DM", "DM + KDE",
                  "the paper: DM / DM + KDE"],
      "rows": [
          ["the paper's: full MNIST (60,000 digits), 5 % bias-conflicting, IPC 50, 20,000 "
           "iterations, `paper` preset", "one NVIDIA H100 80GB",
           f"0 (vanilla); {', '.join(map(str, kde_seeds))} (KDE)", vanilla,
           f"**{format_pm(kde, ddof=1)}**", "23.8 / 91.5"],
          ["the main job: embedded MNIST (5,000 digits), 5 % bias-conflicting, IPC 10, 300 "
           "iterations, `cpu` preset", "2-core AMD EPYC CPU, a few minutes",
           f"{seed} (± over {networks} networks)", main["dm"], f"**{main['dm+kde']}**", "–"],
      ],
      "notes": [
          "Overall accuracy in %; ± is the sample standard deviation (ddof 1) over seeds; the "
          f"main job's is the population standard deviation (ddof 0) over the {networks} "
          "evaluation networks of its one seed, as the PyTorch reference reports. Sources: "
          f"`{vanilla_path}` (vanilla, seed 0), `{kde_path}` (DM + KDE, the surrogate chosen on "
          f"validation; {per_seed} % on seeds {seed_list}), `{main_path}` (the main job's "
          "`comparison.md`). The paper's numbers are from its abstract."],
      "date": "2026-11-24 (H100), 2026-11-25 (CPU)",
      "commit": "97ac433 (H100), 8238925 (CPU)",
      "machine": "one NVIDIA H100 80GB; 2-core AMD EPYC (AVX-512), CPU",
      "command": ["python experiments/fidelity.py --preset paper --source full --ipc 50 "
                  "--seeds 0,1 --arms kde --workdir runs/fid-paper",
                  "jaxdd reproduce --preset cpu --workdir runs/cmnist-5pct"],
  }


def headline_text(head: dict) -> str:
  """The JSON text of ``results/headline.json``: one line per key, one per row."""
  items = []
  for key, value in head.items():
    if key == "rows":
      rows = ",\n".join("  " + json.dumps(r, ensure_ascii=False) for r in value)
      items.append(f' "rows": [\n{rows}\n ]')
    else:
      items.append(f" {json.dumps(key)}: {json.dumps(value, ensure_ascii=False)}")
  return "{\n" + ",\n".join(items) + "\n}\n"


def sync_headline(results: str, check: bool = False) -> bool:
  """Write ``results/headline.json`` from its sources (with ``check``, only compare); True when
  the file differed. A results folder that holds neither the headline nor any of its sources
  (a test's) is left alone."""
  path = os.path.join(results, HEADLINE)
  if not os.path.exists(path) and not any(
      os.path.exists(os.path.join(results, s)) for s in HEADLINE_SOURCES.values()):
    return False
  text = headline_text(headline(results))
  old = None
  if os.path.exists(path):
    with open(path) as f:
      old = f.read()
  if old == text:
    return False
  if not check:
    synset.atomic_write_bytes(path, text.encode())
  return True


def update(text: str, results: str) -> str:
  """``text`` with every marked block rendered again.

  Raises:
    ValueError: an opening marker on its own line that does not start a block (no matching closing
      marker on a later line, or a name outside ``[A-Za-z0-9_.,/-]``), which would otherwise be
      left silently stale.
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
  parser.add_argument("--pages", nargs="+", metavar="PAGE",
                      help="only these pages (paths relative to the root); default: all")
  args = parser.parse_args(argv)
  results = os.path.join(args.root, "results")
  stale = []
  if sync_headline(results, check=args.check):
    stale.append(os.path.join("results", HEADLINE))
  for doc in args.pages or pages(args.root):
    path = os.path.join(args.root, doc)
    if not os.path.exists(path):
      continue
    with open(path) as f:
      text = f.read()
    try:
      new = update(text, results)
    except (ValueError, FileNotFoundError) as e:
      raise type(e)(f"{doc}: {e}") from None
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
