"""Refusals of the command line: one line on stderr naming the flag and the fix, status 2,
nothing written; ``--debug`` adds the traceback and keeps the status."""
from __future__ import annotations

import os

import numpy as np
import pytest

from jaxdd import cli, synset
from jaxdd.structs import SynSet


def _status(argv):
  try:
    return cli.main(argv)
  except SystemExit as e:  # argparse's refusals
    return e.code


def _one_line(err: str) -> str:
  lines = err.splitlines()
  assert len(lines) == 1, err
  assert "Traceback" not in err and "usage:" not in err
  return lines[0]


@pytest.fixture()
def cwd(tmp_path, monkeypatch):
  """An empty working directory that a refused command must leave empty."""
  d = tmp_path / "cwd"
  d.mkdir()
  monkeypatch.chdir(d)
  yield d
  assert os.listdir(d) == []


# (argv, the start of the line, what it must name)
PARSER_REFUSALS = [
    (["distill", "--weighting", "kd", "--workdir", "w"], "jaxdd distill: error: --weighting: ",
     ["invalid choice: 'kd'", "none, kde, oracle, fairdd, fairdd_pseudo", "did you mean 'kde'?"]),
    (["distill", "--iteratons", "5", "--workdir", "w"], "jaxdd distill: error: ",
     ["unrecognized arguments: --iteratons 5", "did you mean --iterations?"]),
    (["distill", "--iteratons=5", "--workdir", "w"], "jaxdd distill: error: ",
     ["unrecognized argument: --iteratons=5", "did you mean --iterations?"]),
    (["distill", "--frobnicate", "--workdir", "w"], "jaxdd distill: error: ",
     ["unrecognized argument: --frobnicate", "jaxdd distill --help"]),
    (["distill", "--ipc", "many", "--workdir", "w"], "jaxdd distill: error: --ipc: ",
     ["'many'", "an integer"]),
    (["distill", "--lr-img", "big", "--workdir", "w"], "jaxdd distill: error: --lr-img: ",
     ["'big'", "a number"]),
    (["distill", "--workdir", "w", "--ipc"], "jaxdd distill: error: --ipc: ",
     ["expected one argument", "an integer"]),
    (["distill", "--preset", "smok", "--workdir", "w"], "jaxdd distill: error: --preset: ",
     ["did you mean 'smoke'?"]),
    (["distil", "--workdir", "w"], "jaxdd: error: command: ", ["did you mean 'distill'?"]),
    ([], "jaxdd: error: ", ["a command is required", "jaxdd --help"]),
    (["baselines", "--preset", "smoke", "--iterations", "5", "--workdir", "w"],
     "jaxdd baselines: error: ", ["unrecognized arguments: --iterations 5"]),
    (["evaluate", "s", "--protocol", "dmm", "--out", "o.json"], "jaxdd evaluate: error: --protocol: ",
     ["invalid choice: 'dmm'", "did you mean 'dm'?"]),
    (["audit", "s", "--verdict-probes", "trigers", "--out", "o.json"],
     "jaxdd audit: error: --verdict-probes: ", ["'trigers'", "triggers,cleanse,kde"]),
    (["diagnose", "--sweep-variances", "a,b", "--workdir", "w"],
     "jaxdd diagnose: error: --sweep-variances: ", ["comma-separated numbers"]),
    (["sign", "s"], "jaxdd sign: error: ", ["required", "--key"]),
    (["report", "a", "b"], "jaxdd report: error: ", ["unrecognized argument: b"]),
    (["data", "cmnst", "--conflict-ratio", "0.05"], "jaxdd data: error: name: ",
     ["did you mean 'cmnist'?"]),
    (["data", "fetch", "mnst"], "jaxdd data fetch: error: what: ", ["did you mean 'mnist'?"]),
]


@pytest.mark.parametrize("argv,start,names", PARSER_REFUSALS,
                         ids=[" ".join(a[:3]) or "no command" for a, _, _ in PARSER_REFUSALS])
def test_argument_errors_are_one_line(argv, start, names, cwd, capsys):
  assert _status(argv) == 2
  captured = capsys.readouterr()
  line = _one_line(captured.err)
  assert line.startswith(start), line
  for name in names:
    assert name in line, line
  assert captured.out == ""


def test_help_is_argparses_own(capsys):
  assert _status(["distill", "--help"]) == 0
  out = capsys.readouterr().out
  assert out.startswith("usage: jaxdd distill")
  # every weighting among the flag's choices, as argparse prints them
  assert "--weighting {none,kde,oracle,fairdd,fairdd_pseudo,fairdd_batch," in out
  assert ",auto" in out.split("--weighting {", 1)[1].split("}", 1)[0]


def test_debug_keeps_the_status_of_a_refusal(cwd, capsys):
  argv = ["distill", "--preset", "smoke", "--ipc", "0", "--workdir", "w", "--quiet"]
  assert _status(argv) == 2
  line = _one_line(capsys.readouterr().err)
  assert line.startswith("jaxdd distill: error: ") and "ipc" in line
  assert _status(argv + ["--debug"]) == 2
  err = capsys.readouterr().err
  assert "Traceback" in err and err.splitlines()[-1] == line


def _save(path, seed=0):
  rng = np.random.default_rng(seed)
  syn = SynSet(rng.normal(size=(4, 6, 6, 3)).astype(np.float32), np.array([0, 0, 1, 1], np.int32))
  return synset.save(str(path), syn, {"ipc": 2, "dataset": {"name": "cmnist"}},
                     mean=[0.1] * 3, std=[0.3] * 3)


def _tree(path):
  return sorted(os.path.relpath(os.path.join(r, f), path) for r, _, fs in os.walk(path) for f in fs)


@pytest.mark.parametrize("command", ["evaluate", "audit", "cross-arch"])
def test_a_run_directory_is_refused_naming_its_synset(command, tmp_path, capsys):
  work = tmp_path / "runs"
  run = work / "dm_kde"
  syn = _save(run / "synset")
  out = tmp_path / "out.json"
  assert _status([command, str(run), "--out", str(out), "--quiet"]) == 2
  line = _one_line(capsys.readouterr().err)
  assert line == f"jaxdd {command}: error: {run} is a run directory; its SynSet is {syn}: pass that path"
  # a work directory of several runs: every SynSet is named, none is chosen
  other = _save(work / "dm" / "synset", seed=1)
  before = _tree(work)
  assert _status([command, str(work), "--out", str(out), "--quiet"]) == 2
  line = _one_line(capsys.readouterr().err)
  assert f"{work} is not a SynSet artifact but holds 2 ({other}, {syn})" in line
  assert not out.exists() and _tree(work) == before


@pytest.fixture()
def keys(tmp_path):
  pytest.importorskip("cryptography")
  from jaxdd.security import signing
  return (signing.new_keys(str(tmp_path / "keys" / "me")),
          signing.new_keys(str(tmp_path / "keys" / "other")))


def test_sign_refuses_to_replace_another_keys_signature(tmp_path, keys, capsys):
  from jaxdd.security import signing
  (mine, _, my_id), (theirs, _, their_id) = keys
  work = tmp_path / "runs"
  signed, unsigned = _save(work / "a" / "synset"), _save(work / "b" / "synset", seed=1)
  sig = os.path.join(signed, signing.SIGNATURE_FILE)
  assert cli.main(["sign", signed, "--key", mine, "--quiet"]) == 0
  first = open(sig, "rb").read()
  # the same key again: accepted, the same signature
  assert cli.main(["sign", signed, "--key", mine, "--quiet"]) == 0
  assert open(sig, "rb").read() == first
  capsys.readouterr()
  # another key: refused before anything is signed, naming the key there and the flag
  assert cli.main(["sign", str(work), "--key", theirs, "--quiet"]) == 2
  line = _one_line(capsys.readouterr().err)
  assert line.startswith(f"jaxdd sign: error: {signed} already holds a signature by key {my_id}")
  assert their_id in line and "--replace" in line
  assert open(sig, "rb").read() == first
  assert not os.path.exists(os.path.join(unsigned, signing.SIGNATURE_FILE))
  # --replace replaces it
  assert cli.main(["sign", str(work), "--key", theirs, "--replace", "--quiet"]) == 0
  assert signing.load_synset(signed)[1]["signature"]["key_id"] == their_id
  assert signing.load_synset(unsigned)[1]["signature"]["key_id"] == their_id


@pytest.mark.parametrize("argv,flag,rule", [
    (["evaluate", "x", "--num-models", "0"], "--num-models", "an integer >= 1"),
    (["cross-arch", "x", "--num-models", "-2"], "--num-models", "an integer >= 1"),
    (["audit", "x", "--seed", "-1"], "--seed", "an integer >= 0"),
    (["audit", "x", "--clean-images", "0"], "--clean-images", "an integer >= 1"),
    (["final", "--workdir", "x", "--full-models", "-1"], "--full-models", "an integer >= 0"),
    (["tune", "--workdir", "x", "--sweep-models", "0"], "--sweep-models", "an integer >= 1"),
    (["distill", "--workdir", "x", "--coordinator-timeout", "nan"], "--coordinator-timeout",
     "a finite number > 0"),
    (["diagnose", "--batch-size", "0"], "--batch-size", "an integer >= 1"),
    (["data", "inspect", "folder:x", "--seed", "-5"], "--seed", "an integer >= 0"),
])
def test_counts_and_durations_refuse_zero_negative_and_nan(argv, flag, rule, tmp_path, capsys,
                                                            monkeypatch):
  """A count or a duration that cannot be meant is refused in one line, before any work."""
  monkeypatch.chdir(tmp_path)
  with pytest.raises(SystemExit) as e:
    cli.main(argv)
  assert e.value.code == 2
  err = capsys.readouterr().err.strip()
  assert err.count("\n") == 0 and err.startswith("jaxdd ") and f"{flag}: " in err and rule in err
  assert not os.listdir(tmp_path)


def test_a_warning_is_one_jaxdd_line(capsys):
  # a warning raised while a command works (a held-out test split, say) prints as one line
  # naming the command, not as Python's file name and source line
  import warnings
  from jaxdd.cli import app

  def work(args):
    warnings.warn("data has no test split: 12 images were held out\n of the training data",
                  UserWarning, stacklevel=2)
    return 0
  assert app.report("distill", None, work) == 0
  err = capsys.readouterr().err.strip().splitlines()
  assert err == ["jaxdd distill: warning: data has no test split: 12 images were held out of "
                 "the training data"]
