"""Every recipe of the "Recipes" section of docs/own-data.md runs as written, on small generated
data in each dataset's layout (tests/own_layouts.py) at the path the recipe names: its flags
parse, its data read and its config validate (``--print-config``, fast), and each distils,
evaluates and reports at the ``smoke`` preset (slow)."""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

import own_layouts

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "own-data.md"


def recipes() -> list[list[str]]:
  """The ``jaxdd ...`` commands of the doc's Recipes section, as argument lists."""
  text = DOC.read_text()
  section = text.split("\n## Recipes\n", 1)[1].split("\n## ", 1)[0]
  blocks = re.findall(r"```text\n(.*?)```", section, flags=re.S)
  commands = [shlex.split(block.replace("\\\n", " ")) for block in blocks]
  return [c[1:] for c in commands if c and c[0] == "jaxdd"]


def _flag(argv: list[str], name: str) -> str | None:
  return argv[argv.index(name) + 1] if name in argv else None


def make_data(cwd: Path, argv: list[str]) -> str:
  """Writes a recipe's data where it reads them; returns the layout's name."""
  spec = _flag(argv, "--data")
  if spec is None:  # a built-in dataset from a folder you supply
    assert _flag(argv, "--dataset") == "bffhq"
    own_layouts.bffhq(cwd / _flag(argv, "--source"))
    return "bffhq"
  kind, path = spec.split(":", 1)
  writers = {"csv": lambda: own_layouts.waterbirds(cwd / Path(path).parent),
             "celeba": lambda: own_layouts.celeba(cwd / path),
             "pattern": lambda: own_layouts.utkface(cwd / path),
             "npz": lambda: own_layouts.cifar10s(cwd / path)}
  writers[kind]()
  return kind


def _jaxdd(cwd: Path, argv: list[str], timeout: int = 900):
  env = dict(os.environ, JAXDD_CACHE=str(cwd / "cache"), JAX_PLATFORMS="cpu",
             PYTHONPATH=str(REPO))
  return subprocess.run([sys.executable, "-m", "jaxdd", *argv], capture_output=True, text=True,
                        cwd=cwd, env=env, timeout=timeout)


def test_the_doc_has_the_five_recipes():
  layouts = sorted((_flag(a, "--data") or "bffhq").split(":")[0] for a in recipes())
  assert layouts == ["bffhq", "celeba", "csv", "npz", "pattern"]
  assert all(_flag(a, "--workdir") for a in recipes())  # each runs as written


@pytest.mark.parametrize("argv", recipes(), ids=lambda a: (_flag(a, "--data") or "bffhq"))
def test_each_recipe_reads_its_data_and_validates(tmp_path, argv):
  make_data(tmp_path, argv)
  r = _jaxdd(tmp_path, [*argv, "--print-config"], timeout=300)
  assert r.returncode == 0, r.stderr
  shown = json.loads(r.stdout)
  if _flag(argv, "--data") is not None:  # a user's data: named by spec and content digest
    assert shown["data"]["spec"] == _flag(argv, "--data")
    assert len(shown["data"]["sha256"]) == 64 and shown["config"]["data"] == {"seed": 0}
    assert shown["data"]["groups"] >= 2  # every recipe's data carry their groups
  else:
    assert shown["config"]["data"]["dataset"] == "bffhq"
  assert not (tmp_path / _flag(argv, "--workdir")).exists()  # --print-config writes nothing


@pytest.mark.slow
@pytest.mark.parametrize("argv", recipes(), ids=lambda a: (_flag(a, "--data") or "bffhq"))
def test_each_recipe_distils_evaluates_and_reports(tmp_path, argv):
  make_data(tmp_path, argv)
  r = _jaxdd(tmp_path, [*argv, "--preset", "smoke", "--ipc", "2"])
  assert r.returncode == 0, r.stderr
  assert "worst group" in r.stdout and "DEO_M" in r.stdout  # the groups reached evaluation
  workdir = tmp_path / _flag(argv, "--workdir")
  record = json.loads((workdir / "config.json").read_text())
  report = _jaxdd(tmp_path, ["report", str(workdir)], timeout=120)
  assert report.returncode == 0, report.stderr
  if _flag(argv, "--data") is not None:
    assert record["data"]["spec"] == _flag(argv, "--data")
    assert "dataset" not in record["config"] and "conflict_ratio" not in record["config"]
    sha = record["data"]["sha256"][:12]
    assert f"your data {_flag(argv, '--data')}: " in r.stderr and f"sha256 {sha}" in r.stderr
    meta = json.loads((workdir / "synset" / "meta.json").read_text())
    assert meta["dataset"]["data_sha256"] == record["data"]["sha256"]
    assert report.stdout.startswith(f"== your data {_flag(argv, '--data')}")
    assert f"sha256 {sha}" in report.stdout.splitlines()[0]
  assert "cmnist" not in report.stdout and "cmnist" not in r.stderr
