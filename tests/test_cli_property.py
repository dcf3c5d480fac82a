"""A property of the whole command line, over generated argument vectors (hypothesis): every
command ends in status 0 or in ONE line on stderr with a documented status, and a refused command
writes nothing.

The vectors mix each command's own flags (with well-formed, malformed, out-of-range and
nonsense values), unknown flags and stray words. The run commands get ``--print-config``, so an
accepted vector prints its configuration instead of distilling for minutes; the commands that
read a SynSet get one that does not exist, or a tiny one. Nothing a command does may create a
file in the working folder when it is refused.
"""
from __future__ import annotations

import contextlib
import io
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jaxdd import cli, synset
from jaxdd.cli.parser import build_parser
from jaxdd.structs import SynSet

#: Python's own words for an error nobody caught (a message of jaxdd's names the flag and the fix).
_PYTHON_WORDS = ("math domain error", "has no attribute", "unsupported operand", "out of range",
                 "not subscriptable", "NoneType", "Traceback", "object is not", "KeyError",
                 "takes no arguments", "unexpected keyword")
#: The statuses docs/cli.md documents for a command that did not finish its work.
DOCUMENTED = {1, 2, 3, 130, 143}
RUN_COMMANDS = ("distill", "reproduce", "tune", "final", "baselines", "buffers")
ARTIFACT_COMMANDS = ("evaluate", "cross-arch", "audit", "verify")
VALUES = st.one_of(
    st.sampled_from(["0", "-1", "1", "3", "nan", "inf", "1e9", "0.5", "-0.5", "abc", "",
                     "kde", "none", "smoke", "folder:nowhere", "csv:x.csv", "bffhq",
                     "1,2", "convnet", "dm"]),
    st.integers(-5, 100).map(str))


def _flags(command: str) -> list[str]:
  parser = build_parser("smoke")
  sub = parser._subparsers._group_actions[0].choices[command]  # noqa: SLF001 (argparse's own)
  return sorted(o for a in sub._actions for o in a.option_strings  # noqa: SLF001
                if o.startswith("--") and o not in ("--help", "--debug", "--print-config"))


def _vector(command: str):
  flag_values = st.tuples(st.sampled_from(_flags(command) + ["--no-such-flag"]), VALUES)
  return st.lists(flag_values, max_size=4).map(lambda pairs: [x for p in pairs for x in p])


@pytest.fixture(scope="module")
def tiny_synset(tmp_path_factory):
  path = tmp_path_factory.mktemp("syn") / "synset"
  synset.save(str(path), SynSet(np.zeros((2, 8, 8, 3), np.float32), np.array([0, 1])),
              {"config": {}}, mean=[0, 0, 0], std=[1, 1, 1])
  return str(path)


def _run(argv: list[str]) -> tuple[int, str]:
  err = io.StringIO()
  with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
    try:
      code = cli.main(argv)
    except SystemExit as e:  # argparse's refusals and --help
      code = e.code
  return code, err.getvalue()


def _check(argv: list[str], cwd) -> None:
  before = sorted(os.listdir(cwd))
  code, err = _run(argv)
  lines = [ln for ln in err.splitlines() if ln.strip()]
  if code == 0:
    return
  assert code in DOCUMENTED, (argv, code, err)
  errors = [ln for ln in lines if ": error: " in ln]
  assert len(errors) == 1 and errors[0].startswith("jaxdd "), (argv, err)
  # a message of jaxdd's, not Python's own words for a bug
  assert not any(w in errors[0] for w in _PYTHON_WORDS), (argv, errors[0])
  if code == 2:  # refused: nothing written
    assert sorted(os.listdir(cwd)) == before, (argv, err)


@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_run_commands_refuse_in_one_line_or_print_their_config(data, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  monkeypatch.setenv("JAXDD_CACHE", str(tmp_path.parent / "cache"))
  command = data.draw(st.sampled_from(RUN_COMMANDS))
  argv = [command, "--preset", "smoke", "--print-config", "--workdir", "w",
          *data.draw(_vector(command))]
  _check(argv, tmp_path)


@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_other_commands_refuse_in_one_line(data, tmp_path, monkeypatch, tiny_synset):
  """Commands that read something: a path that does not exist, a folder that is no dataset,
  or a SynSet with bad flags. No vector may start minutes of work: the SynSet's dataset is
  unknown, so an accepted evaluation is refused when it reads its data."""
  monkeypatch.chdir(tmp_path)
  monkeypatch.setenv("JAXDD_CACHE", str(tmp_path.parent / "cache"))
  command = data.draw(st.sampled_from(ARTIFACT_COMMANDS + ("report", "data", "diagnose")))
  if command in ARTIFACT_COMMANDS:
    target = data.draw(st.sampled_from(["missing-synset", tiny_synset]))
    argv = [command, target, *data.draw(_vector(command))]
  elif command == "report":
    argv = [command, data.draw(st.sampled_from(["missing", "."]))]
  elif command == "data":
    argv = ["data", "inspect", data.draw(st.sampled_from(["folder:missing", "csv:none.csv",
                                                           "npz:x.npz", "zip:x", "folder"]))]
  else:
    argv = [command, "--workdir", "w", *data.draw(_vector(command))]
    if "--print-config" not in argv:
      argv += ["--conflict-ratio", "2"]  # refused before any work
  _check(argv, tmp_path)
