"""The command line: flags, defaults shown in --help, --print-config, --version, refusals.

Every refused command must exit with status 2 and write nothing."""
import argparse
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from jaxdd import __version__, cli, runs, synset
from jaxdd import config as config_lib
from jaxdd.cli import diagnose as cli_diagnose
from jaxdd.structs import SynSet


def _exit_code(argv):
  try:
    return cli.main(argv)
  except SystemExit as e:  # argparse refusals
    return e.code


def test_version_and_print_config(tmp_path, capsys):
  assert _exit_code(["--version"]) == 0
  assert capsys.readouterr().out.strip() == f"jaxdd {__version__}"
  work = tmp_path / "run"
  assert cli.main(["distill", "--preset", "smoke", "--ipc", "3", "--kde-scope", "class",
                   "--workdir", str(work), "--print-config"]) == 0
  printed = json.loads(capsys.readouterr().out)
  expected = config_lib.get_config("smoke", ipc=3, kde_scope="class")
  assert printed["config"] == expected.to_tree() and printed["digest"] == expected.digest()
  # one object per part of the config, each holding its flat fields
  assert printed["config"]["weights"]["kde_scope"] == "class"
  assert printed["config"]["distill"]["ipc"] == 3 and printed["config"]["preset"] == "smoke"
  assert not work.exists()
  # reproduce and baselines print theirs too, without a workdir
  assert cli.main(["reproduce", "--print-config"]) == 0
  rep = json.loads(capsys.readouterr().out)
  assert rep["command"] == "reproduce"
  assert rep["runs"]["dm"]["config"] == config_lib.get_config("cpu", weighting="none").to_tree()
  assert rep["runs"]["dm+kde"]["config"] == config_lib.get_config("cpu").to_tree()
  # each subcommand prints its own resolved settings
  assert cli.main(["tune", "--preset", "smoke", "--seeds", "0,1", "--print-config"]) == 0
  tune = json.loads(capsys.readouterr().out)
  assert tune["command"] == "tune" and tune["seeds"] == [0, 1] and tune["candidates"]
  assert cli.main(["final", "--preset", "smoke", "--print-config"]) == 0
  assert json.loads(capsys.readouterr().out)["command"] == "final"
  assert cli.main(["baselines", "--preset", "smoke", "--print-config"]) == 0
  base = json.loads(capsys.readouterr().out)
  assert base["command"] == "baselines" and base["config"] == config_lib.get_config("smoke").to_tree()


def test_help_shows_the_selected_presets_defaults_and_choices(capsys):
  for preset in ("cpu", "smoke", "paper"):
    with pytest.raises(SystemExit):
      cli.main(["distill", "--preset", preset, "--help"])
    out = " ".join(capsys.readouterr().out.split())
    cfg = config_lib.PRESETS[preset]
    assert f"--iterations ITERATIONS default ({preset} preset): {cfg.iterations}" in out
    assert f"--eval-protocol {{dm,dsa,dc,cpu,cpu300,cpu100,cpu-paper,smoke}} default ({preset} preset): " \
           f"{cfg.eval_protocol}" in out
    assert "paper default" not in out
  for flag, choices in (("--weighting", "{none,kde,oracle,fairdd,fairdd_pseudo,fairdd_batch,fairdd_dbscan,auto,"
                                         "gce,jtt}"),
                        ("--kde-normalize", "{softmax,power}"),
                        ("--kde-scope", "{batch,class}")):
    with pytest.raises(SystemExit):
      cli.main(["distill", "--help"])
    assert f"{flag} {choices}" in capsys.readouterr().out
  # every enumerated RunConfig field has choices on the command line
  parser = cli.build_parser()
  sub = next(a for a in parser._actions if a.dest == "command").choices["distill"]
  for field, allowed in config_lib.CHOICES.items():
    action = next(a for a in sub._actions if a.dest == field)
    assert tuple(action.choices) == tuple(allowed)


BAD = [
    ["distill", "--preset", "smoke", "--conflict-ratio", "1.5"],
    ["distill", "--preset", "smoke", "--kde-normalize", "magic"],
    ["distill", "--preset", "smoke", "--eval-protocol", "huge"],
    ["distill", "--preset", "smoke", "--dataset", "mnist"],
    ["distill", "--preset", "smoke", "--ipc", "0"],
    ["distill", "--preset", "smoke", "--lr-img", "-1"],
    ["distill", "--preset", "smoke", "--source", "/nonexistent/idx"],
    ["reproduce", "--preset", "smoke", "--weighting", "kde"],
    ["reproduce", "--preset", "smoke", "--with-baselines", "magic"],
    ["baselines", "--preset", "smoke", "--which", "lff"],
    ["baselines", "--preset", "smoke", "--which", "dfa", "--vanilla-synset", "/nonexistent"],
    ["baselines", "--preset", "smoke", "--which", "random,bogus"],
]


@pytest.mark.parametrize("argv", BAD, ids=[" ".join(a[:1] + a[3:]) for a in BAD])
def test_refused_commands_write_nothing(tmp_path, argv, capsys):
  work = tmp_path / "run"
  assert _exit_code(argv + ["--workdir", str(work), "--no-compile-cache"]) == 2
  assert not work.exists()
  assert "error" in capsys.readouterr().err


def test_refused_diagnose_evaluate_and_data_write_nothing(tmp_path, capsys):
  assert _exit_code(["diagnose", "--conflict-ratio", "1.5", "--workdir",
                     str(tmp_path / "d")]) == 2
  assert _exit_code(["diagnose", "--kde-scope", "everything", "--workdir",
                     str(tmp_path / "d")]) == 2
  assert _exit_code(["evaluate", str(tmp_path / "missing"), "--out", str(tmp_path / "o.json")]) == 2
  assert _exit_code(["data", "cmnist", "--conflict-ratio", "2", "--tfds-dir",
                     str(tmp_path / "t")]) == 2
  assert os.listdir(tmp_path) == ["cache"] or os.listdir(tmp_path) == []


def test_diagnose_uses_the_distill_flag_names(capsys):
  top = cli.build_parser()
  new = top.parse_args(["diagnose", "--kde-variance", "0.1", "--kde-temperature", "2",
                        "--kde-normalize", "softmax", "--kde-scope", "class", "--workdir", "w"])
  assert new.fn is cli_diagnose.cmd_diagnose
  p = argparse.ArgumentParser()
  cli_diagnose.add_diagnose_flags(p)
  assert (new.kde_variance, new.kde_temperature, new.kde_normalize, new.kde_scope,
          new.workdir) == (0.1, 2.0, "softmax", "class", "w")
  assert "--variance" not in p.format_help() and "--kde-variance" in p.format_help()
  # The spellings from before the flags were named as in `jaxdd distill` are refused.
  for old in (["--variance", "0.1"], ["--temperature", "2"], ["--normalize", "softmax"],
              ["--scope", "class"], ["--out", "w"]):
    assert _exit_code(["diagnose", *old]) == 2
    assert "unrecognized arguments" in capsys.readouterr().err


def test_baselines_default_needs_no_vanilla_synset(tmp_path, monkeypatch):
  seen = {}

  def fake(cfg, workdir, *, which, vanilla_synset, progress, trust=None):
    seen.update(which=which, vanilla=vanilla_synset)
    return {}
  monkeypatch.setattr(runs, "run_baselines", fake)
  monkeypatch.setattr(runs, "format_comparison", lambda r, c, **k: "")
  assert cli.main(["baselines", "--preset", "smoke", "--workdir", str(tmp_path / "b")]) == 0
  assert seen == {"which": ("random", "herding", "kcenter", "full"), "vanilla": None}
  assert cli.main(["baselines", "--preset", "smoke", "--workdir", str(tmp_path / "b"),
                   "--vanilla-synset", "v"]) == 0
  assert seen["which"] == runs.BASELINES


def test_evaluate_defaults_to_the_artifacts_protocol_and_model(tmp_path, capsys):
  rng = np.random.default_rng(0)
  syn = SynSet(rng.normal(size=(20, 28, 28, 3)).astype(np.float32), np.repeat(np.arange(10), 2))
  meta = {"dataset": {"name": "cmnist", "ratio": 0.05, "severity": 4, "seed": 0},
          "eval_protocol": "smoke",
          "config": {"eval_model": "convnet-d1-w4", "num_eval_models": 1}}
  synset.save(str(tmp_path / "syn"), syn, meta, mean=[0.1] * 3, std=[0.3] * 3)
  out = tmp_path / "ev.json"
  assert cli.main(["evaluate", str(tmp_path / "syn"), "--out", str(out), "--quiet"]) == 0
  ev = json.load(open(out))
  assert ev["protocol"]["name"] == "smoke" and ev["num_models"] == 1
  assert ev["model"].startswith("convnet-d1-w4")
  assert cli.main(["evaluate", str(tmp_path / "syn"), "--out", str(out), "--quiet",
                   "--num-models", "2"]) == 0
  assert json.load(open(out))["num_models"] == 2


def test_compile_cache_is_on_by_default_under_jaxdd_cache(tmp_path):
  code = ("import jax, jax.numpy as jnp; from jaxdd import cli; "
          "p = cli.enable_compile_cache(min_compile_time_secs=0); print(p); "
          "jax.jit(lambda x: jnp.sin(x) * 2)(jnp.ones(3)).block_until_ready()")
  env = dict(os.environ, JAXDD_CACHE=str(tmp_path / "c"), JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       check=True).stdout.strip()
  assert out == str(tmp_path / "c" / "xla")
  assert os.listdir(out)  # the compiled program was stored


def test_tune_allocator_keeps_freed_memory_in_the_process():
  # A 50 MB buffer allocated, freed and allocated again: glibc's default mmap
  # path faults its pages in again; after tune_allocator the freed heap is reused.
  code = ("import numpy as np, resource, sys\n"
          "from jaxdd import cli\n"
          "if sys.argv[1] == '1': assert cli.tune_allocator()\n"
          "faults = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
          "a = np.ones(50_000_000 // 8); del a\n"
          "f0 = faults(); a = np.ones(50_000_000 // 8); del a; print(faults() - f0)\n")
  run = lambda flag: int(subprocess.run([sys.executable, "-c", code, flag], capture_output=True,
                                        text=True, check=True).stdout)
  assert run("0") > 100   # at least 100 page faults (4 KiB pages: ~12,000; huge pages: fewer)
  assert run("1") < 10


def test_cli_log_lines_are_printed_once_even_with_a_root_handler():
  # Libraries (orbax/absl) may configure the root logger; the CLI's own handler
  # must not be doubled by propagation (seen: every progress line twice).
  code = ("import logging; logging.basicConfig(level=logging.INFO)\n"
          "from jaxdd import progress\n"
          "from jaxdd.cli import runtime\n"
          "was = runtime.setup(False, True); progress.logger.info('hello-line'); "
          "runtime.restore(was)\n"
          "assert progress.logger.propagate\n")
  err = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       check=True, env=dict(os.environ, JAX_PLATFORMS="cpu")).stderr
  assert err.count("hello-line") == 1, err


@pytest.mark.slow
def test_diagnose_runs_as_a_subcommand_and_writes_its_report(tmp_path):
  work = tmp_path / "diag"
  assert cli.main(["diagnose", "--preset", "smoke", "--epochs", "1", "--no-sweep", "--num-rounds",
                   "1", "--quiet", "--workdir", str(work)]) == 0
  report = json.load(open(work / "report.json"))
  assert report["args"]["kde_variance"] == 0.01 and "fn" not in report["args"]
  assert report["default"]["report"]["overall"]["n"] == 3600
