"""The CI gate and the full run are what the docs say, and together they run every test.

``bash .ci/run`` (the gate) runs the fast suite and the slow runs marked ``gate`` in one pytest
run; ``bash .ci/run --full`` runs the fast suite and every slow and heavy run. This test reads the
marker expressions from ``.ci/run`` and ``setup.cfg``, collects every test with its markers (one
collection, no test runs), and checks that each test is run by the fast suite or by the full
run, that the gate is the fast suite plus the slow tests marked ``gate`` (the numeric test
files in the AVX2 phase, the rest in the first phase, each test once), and that
``docs/install.md`` and ``README.md`` give the same commands.
"""
from __future__ import annotations

import configparser
import json
import os
import re
import shlex
import subprocess
import sys

import pytest
from _pytest.mark.expression import Expression

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _read(rel: str) -> str:
  with open(os.path.join(ROOT, rel)) as f:
    return f.read()


def _expressions() -> dict[str, str]:
  """The -m expressions of the fast suite (setup.cfg's addopts), the gate and the full run."""
  addopts = configparser.ConfigParser()
  addopts.read(os.path.join(ROOT, "setup.cfg"))
  fast = shlex.split(addopts["tool:pytest"]["addopts"])
  ci = _read(".ci/run")
  gate = re.search(r'phase "fast suite and the gate\'s slow runs".*?-m "([^"]+)"', ci, re.S)
  full = re.search(r'phase "every slow and heavy run".*?-m "([^"]+)"', ci, re.S)
  assert gate and full, "the gate's and the full run's test phases of .ci/run were not found"
  return {"fast": fast[fast.index("-m") + 1], "gate": gate.group(1), "full": full.group(1)}


def _numeric_files() -> set[str]:
  """The test files the gate runs in its AVX2 phase only (``NUMERIC`` in ``.ci/run``)."""
  ci = _read(".ci/run")
  numeric = re.search(r'^NUMERIC="([^"]+)"$', ci, re.M)
  assert numeric, "NUMERIC=... was not found in .ci/run"
  # the gate's first phase leaves them out; the AVX2 phase runs exactly them
  assert re.search(r'-m "not slow and not heavy or gate" \$IGNORE_NUMERIC tests', ci)
  assert re.search(r'for f in \$NUMERIC; do IGNORE_NUMERIC="\$IGNORE_NUMERIC --ignore=\$f"; done',
                   ci)
  assert re.search(r'phase "numeric tests under AVX2" env XLA_FLAGS=--xla_cpu_max_isa=AVX2 '
                   r'JAXDD_TEST_XLA_OPT=default \\\n\s*python -m pytest -q -n 2 \$NUMERIC\n', ci)
  files = set(numeric.group(1).split())
  assert all(os.path.isfile(os.path.join(ROOT, f)) for f in files), files
  return files


@pytest.fixture(scope="module")
def items(tmp_path_factory) -> dict[str, list[str]]:
  """Every test's node id -> its marker names (one collection in a subprocess)."""
  out = tmp_path_factory.mktemp("collect") / "markers.json"
  env = dict(os.environ, JAXDD_TEST_MARKERS=str(out))
  proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "",
                         "-p", "no:xdist", "-p", "no:cacheprovider", "tests"],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
  return json.loads(out.read_text())


def test_every_test_runs_in_the_fast_suite_or_the_full_run_and_the_gate_is_the_gate_marker(
    items):
  expr = _expressions()
  assert expr == {"fast": "not slow and not heavy", "gate": "not slow and not heavy or gate",
                  "full": "slow or heavy"}, expr
  compiled = {k: Expression.compile(v) for k, v in expr.items()}
  assert len(items) > 1000
  picked = {k: {n for n, m in items.items() if e.evaluate(lambda name, m=m: name in m)}
            for k, e in compiled.items()}
  assert picked["fast"] | picked["full"] == set(items)  # nothing is left out of the full run
  assert not picked["fast"] & picked["full"]
  marked = {n for n, m in items.items() if "gate" in m}
  assert not marked & picked["fast"], "a test marked gate must also be marked slow"
  assert picked["gate"] == picked["fast"] | marked  # the gate: the fast suite and the gate's runs
  # ... in two phases: the numeric files under AVX2, the rest in the first phase, each test once
  numeric = _numeric_files()
  in_numeric = {n for n in items if n.split("::")[0] in numeric}
  first = picked["gate"] - in_numeric
  avx2 = picked["fast"] & in_numeric
  assert not marked & in_numeric, "a gate run in a numeric file would run in neither phase"
  assert first | avx2 == picked["gate"] and not first & avx2
  assert len(avx2) > 100
  assert marked < picked["full"]
  assert any("test_result_digests" in n for n in marked)  # results stay pinned
  heavy = {n for n, m in items.items() if "heavy" in m}
  assert heavy and heavy <= picked["full"] and not heavy & picked["gate"]


def test_the_full_run_only_list_names_collected_tests(items):
  from conftest import full_run_only
  listed = full_run_only()
  assert listed and not set(listed) - set(items), sorted(set(listed) - set(items))
  assert all("slow" in items[n] and "gate" not in items[n] for n in listed)


def test_the_docs_give_the_two_commands():
  for page in ("README.md", "docs/install.md"):
    text = _read(page)
    assert "bash .ci/run\n" in text and "bash .ci/run --full" in text, page
  install = _read("docs/install.md")
  assert '-m "not slow and not heavy or gate"' in install and '-m "slow or heavy"' in install
