"""Results stay bit for bit: the ``smoke`` preset's SynSets and evaluations match recorded digests.

``tests/result_digests.py`` distils the ``smoke`` preset with DM, DM + KDE, DSA, MTT and CFM and
hashes each SynSet's arrays, each evaluation's per-network accuracies and each configuration's
digest. ``tests/data/result_digests.json`` holds those digests as the recorded commit's code
computed them, per CPU (XLA's code generation depends on the CPU, so bit-for-bit equality is
a property of one kind of machine). On a CPU with no recorded digests, the recorded commit's
code (its ``jaxdd/`` from git) distils the same runs on this machine, so the comparison is always
between two codes on one machine.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
RECORD = os.path.join(HERE, "data", "result_digests.json")

sys.path.insert(0, HERE)
import result_digests  # noqa: E402


def _start(code_root: str, script: str) -> subprocess.Popen:
  """Starts the digests of ``code_root``'s code in a fresh process (read with :func:`_digests`)."""
  env = {k: v for k, v in os.environ.items()
         if k not in ("XLA_FLAGS", "JAX_COMPILATION_CACHE_DIR", "PYTHONPATH")}
  env.update(XLA_FLAGS=result_digests.XLA_FLAGS, JAX_PLATFORMS="cpu", PYTHONPATH=code_root,
             JAXDD_COMPILE_CACHE="0")
  return subprocess.Popen([sys.executable, script], cwd=code_root, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _digests(proc: subprocess.Popen) -> dict:
  try:
    out, err = proc.communicate(timeout=1800)
  except subprocess.TimeoutExpired:
    proc.kill()
    raise
  assert proc.returncode == 0, err[-3000:]
  return json.loads(out.strip().splitlines()[-1])


def _start_recorded_code(commit: str, tmp_path) -> subprocess.Popen:
  """Starts distilling with the recorded commit's code (from git) on this machine."""
  root = tmp_path / "recorded"
  root.mkdir()
  archive = subprocess.run(["git", "archive", commit, "jaxdd"],
                           cwd=REPO, capture_output=True)
  if archive.returncode != 0:
    pytest.fail(f"no digests are recorded for this CPU and git cannot give commit {commit} "
                f"({archive.stderr.decode().strip()}); clone with history, or record this CPU's "
                f"digests with the recorded commit checked out: "
                f"XLA_FLAGS='{result_digests.XLA_FLAGS}' python tests/result_digests.py "
                f"--record tests/data/result_digests.json")
  subprocess.run(["tar", "-x", "-C", str(root)], input=archive.stdout, check=True)
  return _start(str(root), os.path.join(HERE, "result_digests.py"))


@pytest.mark.slow
@pytest.mark.gate  # results stay pinned in the 15-minute gate too
def test_smoke_results_match_recorded_digests(tmp_path):
  with open(RECORD) as f:
    recorded = json.load(f)
  want = recorded["machines"].get(result_digests.cpu_fingerprint())
  # with no digests for this CPU, the two codes distil side by side (two processes)
  theirs = None if want is not None else _start_recorded_code(recorded["commit"], tmp_path)
  if theirs is not None:  # said in the run's summary: this test then takes about twice as long
    warnings.warn(f"no result digests are recorded for this CPU "
                  f"({result_digests.cpu_fingerprint()}): the recorded commit's code distils "
                  f"beside this code; to record them, check out {recorded['commit'][:10]} and run "
                  f"XLA_FLAGS='{result_digests.XLA_FLAGS}' python tests/result_digests.py "
                  f"--record tests/data/result_digests.json", stacklevel=1)
  ours = _start(REPO, os.path.join(HERE, "result_digests.py"))
  try:
    got = _digests(ours)
    if theirs is not None:
      want = _digests(theirs)
  finally:
    for proc in (ours, theirs):
      if proc is not None and proc.poll() is None:
        proc.kill()
  assert set(got) == set(result_digests.RUNS)
  for name in result_digests.RUNS:
    assert got[name] == want[name], f"{name}: results changed ({got[name]} != {want[name]})"


def test_fingerprint_is_stable_and_short():
  a, b = result_digests.cpu_fingerprint(), result_digests.cpu_fingerprint()
  assert a == b and len(a) == 16 and int(a, 16) >= 0
