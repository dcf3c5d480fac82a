"""The walk-through of docs/own-data.md runs as written: its ``bash`` blocks, in order, in a fresh
folder, with the ``jaxdd`` command of this environment."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGE = os.path.join(REPO, "docs", "own-data.md")

pytestmark = pytest.mark.slow


def test_the_walk_through_runs_as_written(tmp_path):
  text = open(PAGE).read()
  blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
  assert len(blocks) == 4
  env = dict(os.environ, JAXDD_CACHE=str(tmp_path / "cache"), JAX_PLATFORMS="cpu",
             PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
  outputs = []
  for block in blocks:
    r = subprocess.run(["bash", "-e", "-c", block], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0, r.stderr
    outputs.append(r.stdout)
  assert outputs[1].count("Dataset card:") == 3 and "held out of train" in outputs[1]
  assert "worst class" in outputs[2] and "group measures need them" in outputs[2]
  assert "DEO_M" in outputs[3] and "worst group" in outputs[3]
  for run in ("shapes", "shapes-groups"):
    assert (tmp_path / "runs" / run / "synset" / "arrays.npz").is_file()
