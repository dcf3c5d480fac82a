"""Faults and bad input end in one clear line, an exit status, and nothing lost.

Exit statuses: 2 refused input, 1 a fault while working, 130 Ctrl-C.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import time

import jax
import numpy as np
import pytest

from jaxdd import cli, distill, evaluate, runs, synset
from jaxdd.cli import app
from jaxdd.config import get_config
from jaxdd.runs import bias, checkpoints, distiller


def _one_line(err: str) -> str:
  lines = [l for l in err.strip().splitlines() if l.startswith("jaxdd ")]
  assert len(lines) == 1, err
  assert "Traceback" not in err
  return lines[0]


def test_workdir_that_is_a_file(tmp_path, capsys):
  f = tmp_path / "afile"
  f.write_text("keep me")
  assert cli.main(["distill", "--preset", "smoke", "--workdir", str(f), "--quiet"]) == 1
  line = _one_line(capsys.readouterr().err)
  assert str(f) in line and "use another path" in line
  assert f.read_text() == "keep me"


def test_cache_that_is_a_file_is_refused_before_work(tmp_path, capsys, monkeypatch):
  f = tmp_path / "cachefile"
  f.write_text("")
  monkeypatch.setenv("JAXDD_CACHE", str(f))
  work = tmp_path / "w"
  assert cli.main(["distill", "--preset", "smoke", "--workdir", str(work), "--quiet"]) == 1
  line = _one_line(capsys.readouterr().err)
  assert "JAXDD_CACHE" in line and str(f) in line
  assert not work.exists()


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux's /proc")
def test_a_cache_that_cannot_be_created_is_a_fault_naming_the_fix(tmp_path, capsys, monkeypatch):
  # $HOME under /proc: no folder can be made there, even by root, whatever access() says
  monkeypatch.delenv("JAXDD_CACHE", raising=False)
  monkeypatch.setenv("HOME", "/proc/nohome")
  work = tmp_path / "w"
  assert cli.main(["distill", "--preset", "smoke", "--workdir", str(work), "--quiet"]) == 1
  line = _one_line(capsys.readouterr().err)
  assert "/proc/nohome/.cache/jaxdd" in line and "set JAXDD_CACHE to a writable folder" in line
  assert "[Errno" not in line
  assert not work.exists() and os.listdir(tmp_path) == []


def test_unwritable_path_names_the_fix(tmp_path, capsys, monkeypatch):
  # Root ignores file permissions, so the fault is injected where the run first writes.
  def deny(*a, **k):
    raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "ro" / "config.json"))
  monkeypatch.setattr(synset, "atomic_write_json", deny)
  assert cli.main(["distill", "--preset", "smoke", "--workdir", str(tmp_path / "ro"),
                   "--quiet"]) == 1
  line = _one_line(capsys.readouterr().err)
  assert "Permission denied" in line and "not writable" in line


def test_an_unreadable_input_is_said_to_be_unreadable(tmp_path, monkeypatch):
  # Root reads any file, so access() is made to answer as for a user without read permission.
  from jaxdd.cli import app
  table = tmp_path / "metadata.csv"
  table.write_text("path,label\n")
  real_access = os.access
  monkeypatch.setattr(os, "access", lambda p, mode, **k: (
      False if os.fspath(p) == str(table) else real_access(p, mode, **k)))
  status, line = app.failure(PermissionError(errno.EACCES, "Permission denied", str(table)))
  assert status == 2
  assert line == (f"error: Permission denied: {table}; it cannot be read: fix its permissions "
                  "(e.g. chmod u+r, a folder u+rx) or give another path")
  # a path that can be read, or does not exist yet: the fault was a write's
  for path in (tmp_path / "ro" / "config.json", tmp_path):
    status, line = app.failure(PermissionError(errno.EACCES, "Permission denied", str(path)))
    assert status == 1 and "the path is not writable" in line


def test_debug_shows_the_traceback_and_keeps_the_status(tmp_path, capsys):
  f = tmp_path / "afile"
  f.write_text("")
  assert cli.main(["distill", "--preset", "smoke", "--workdir", str(f), "--quiet", "--debug"]) == 1
  err = capsys.readouterr().err
  assert "Traceback" in err and "FileExistsError" in err
  assert err.strip().splitlines()[-1].startswith("jaxdd distill: error: File exists")


def test_broken_pipe_and_interrupt_outside_distillation(capsys):
  def pipe(_):
    raise BrokenPipeError(errno.EPIPE, "Broken pipe")
  assert app.report("report", None, pipe) == 1
  assert "Traceback" not in capsys.readouterr().err

  def ctrl_c(_):
    raise KeyboardInterrupt
  assert app.report("evaluate", None, ctrl_c) == 130
  assert "rerun the same command" in _one_line(capsys.readouterr().err)


def test_sigterm_outside_distillation_is_one_line_and_143(tmp_path, capsys, monkeypatch):
  """A scheduler's SIGTERM while a command works: it unwinds as Ctrl-C does (no silent death)."""
  def killed(args):
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(5)  # the handler raises before this ends
    return 0

  monkeypatch.setattr(app, "_checked", killed)
  before = signal.getsignal(signal.SIGTERM)
  assert cli.main(["distill", "--preset", "smoke", "--workdir", str(tmp_path / "w"),
                   "--quiet"]) == 143
  line = _one_line(capsys.readouterr().err)
  assert "terminated (SIGTERM)" in line and "rerun the same command" in line
  assert signal.getsignal(signal.SIGTERM) is before  # the handler is put back


def test_synset_without_labels_is_one_line(tmp_path, capsys):
  syn = distill.SynSet(np.zeros((2, 4, 4, 3), np.float32), np.array([0, 1]))
  path = str(tmp_path / "syn")
  synset.save(path, syn, {"config": {}}, mean=np.zeros(3), std=np.ones(3))
  # An attacker (or a bug) rewrites the arrays without labels and fixes up the manifest.
  arrays = os.path.join(path, "arrays.npz")
  np.savez(arrays, images=np.zeros((2, 4, 4, 3), np.float32), mean=np.zeros(3), std=np.ones(3))
  with open(os.path.join(path, "manifest.json")) as f:
    manifest = json.load(f)
  manifest["files"]["arrays.npz"] = synset.sha256_file(arrays)
  with open(os.path.join(path, "manifest.json"), "w") as f:
    json.dump(manifest, f)
  with pytest.raises(ValueError, match="lacks the array.s. labels"):
    synset.load(path)
  assert cli.main(["evaluate", path, "--quiet"]) == 2
  assert "lacks the array(s) labels" in _one_line(capsys.readouterr().err)


class _InterruptingDistiller:
  """Wraps a Distiller: sends SIGINT to this process during step ``at``. The driver runs its
  step as it is (``_host_steps``): the signal is sent from Python at each call, around the
  inner distiller's own donating program."""

  def __init__(self, inner, at, fired=None, sig=signal.SIGINT):
    from jaxdd.runs import programs
    self.inner, self.at, self.calls, self.fired, self.sig = inner, at, 0, fired, sig
    self.program = programs.Programs().step(inner)

  def init(self, *a, **k):
    return self.inner.init(*a, **k)

  def step(self, state, real):
    self.calls += 1
    out = self.program(state, real)
    if self.calls == self.at:
      os.kill(os.getpid(), self.sig)
      if self.fired is not None:
        self.fired.append(1)
    return out


def _host_steps(monkeypatch):
  """The driver calls an _InterruptingDistiller's step itself (not compiled again), so the
  step's Python side runs at every step."""
  from jaxdd.runs import programs
  real_step = programs.PROGRAMS.step
  monkeypatch.setattr(programs.PROGRAMS, "step", lambda d: d.step if isinstance(
      d, _InterruptingDistiller) else real_step(d))


@pytest.mark.slow
def test_ctrl_c_saves_the_step_and_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch,
                                                                       capsys):
  _host_steps(monkeypatch)
  cfg = get_config("smoke", weighting="none", iterations=6, checkpoint_every=100)
  want = runs.distill_stage(cfg, str(tmp_path / "straight"), progress=False)
  real_make = distiller.make_distiller
  monkeypatch.setattr(distiller, "make_distiller",
                      lambda *a, **k: _InterruptingDistiller(real_make(*a, **k), at=3))
  work = str(tmp_path / "cut")
  with pytest.raises(runs.Interrupted) as e:
    runs.distill_stage(cfg, work, progress=False)
  assert e.value.step == 3
  assert os.listdir(os.path.join(work, "checkpoints")) == ["3"]
  assert not os.path.exists(os.path.join(work, "synset"))
  # From the command line: exit 130 and the line that says how to resume.
  monkeypatch.setattr(distiller, "make_distiller",
                      lambda *a, **k: _InterruptingDistiller(real_make(*a, **k), at=1))
  assert cli.main(["distill", "--preset", "smoke", "--weighting", "none", "--iterations", "6",
                   "--checkpoint-every", "100", "--workdir", work, "--quiet"]) == 130
  line = _one_line(capsys.readouterr().err)
  assert "interrupted at step 4" in line and "rerun the same command to resume" in line
  # A second Ctrl-C during the save that the first one asked for: it takes effect once the
  # checkpoint is on disk.
  fired = []
  monkeypatch.setattr(distiller, "make_distiller",
                      lambda *a, **k: _InterruptingDistiller(real_make(*a, **k), at=1,
                                                             fired=fired))
  real_tree = checkpoints.state_tree

  def tree_then_ctrl_c(state):
    if fired and len(fired) < 2:
      fired.append(1)
      os.kill(os.getpid(), signal.SIGINT)
    return real_tree(state)
  monkeypatch.setattr(checkpoints, "state_tree", tree_then_ctrl_c)
  assert cli.main(["distill", "--preset", "smoke", "--weighting", "none", "--iterations", "6",
                   "--checkpoint-every", "100", "--workdir", work, "--quiet"]) == 130
  assert len(fired) == 2
  assert "rerun the same command to resume" in _one_line(capsys.readouterr().err)
  assert sorted(os.listdir(os.path.join(work, "checkpoints"))) == ["4", "5"]  # whole
  monkeypatch.setattr(checkpoints, "state_tree", real_tree)
  monkeypatch.setattr(distiller, "make_distiller", real_make)
  got = runs.distill_stage(cfg, work, progress=False)
  np.testing.assert_array_equal(np.asarray(got.images), np.asarray(want.images))


@pytest.mark.slow
def test_sigterm_saves_the_step_releases_the_lock_and_resumes(tmp_path, monkeypatch, capsys):
  """SIGTERM during distillation is the first Ctrl-C: the step in flight finishes and is
  saved, one line, status 143, the lock released; the same command then finishes the run."""
  _host_steps(monkeypatch)
  real_make = distiller.make_distiller
  monkeypatch.setattr(distiller, "make_distiller",
                      lambda *a, **k: _InterruptingDistiller(real_make(*a, **k), at=3,
                                                             sig=signal.SIGTERM))
  work = str(tmp_path / "w")
  argv = ["distill", "--preset", "smoke", "--weighting", "none", "--iterations", "6",
          "--checkpoint-every", "100", "--workdir", work, "--quiet"]
  assert cli.main(argv) == 143
  line = _one_line(capsys.readouterr().err)
  assert "terminated (SIGTERM) at step 3" in line and "checkpoint saved" in line
  assert os.listdir(os.path.join(work, "checkpoints")) == ["3"]
  assert not os.path.exists(os.path.join(work, ".lock"))
  monkeypatch.setattr(distiller, "make_distiller", real_make)
  assert cli.main(argv) == 0
  assert os.path.exists(os.path.join(work, "synset", "manifest.json"))


def _garble(top):
  for root, _, files in os.walk(top):
    for name in files:
      with open(os.path.join(root, name), "wb") as f:
        f.write(b"\x00garbage")


@pytest.mark.slow
def test_a_corrupt_latest_checkpoint_falls_back_to_the_previous(tmp_path, caplog, capsys):
  cfg = get_config("smoke", weighting="none", iterations=6, checkpoint_every=2)
  want = runs.distill_stage(cfg, str(tmp_path / "straight"), progress=False)
  work = str(tmp_path / "cut")
  assert runs.distill_stage(cfg, work, progress=False, stop_after=4) is None
  steps = sorted(os.listdir(os.path.join(work, "checkpoints")), key=int)
  assert steps == ["2", "4"]
  # What processes that disagree on their newest checkpoint resume from: the newest <= upto.
  d = runs.make_distiller(cfg, 10, None)
  run_data = runs.RunData(cfg)
  fresh = d.init(jax.random.key(0), distill.real_data(
      run_data.normalized(run_data.train), run_data.train.labels, num_classes=10))
  mngr = checkpoints.checkpointer(work)
  try:
    assert checkpoints.restore_newest(mngr, fresh, work, upto=3)[1] == 2
    assert checkpoints.restore_newest(mngr, fresh, work, upto=1)[1] == 0
  finally:
    mngr.close()
  # Every checkpoint damaged: refused with one line (status 2), not started over.
  import shutil
  ruined = str(tmp_path / "ruined")
  shutil.copytree(work, ruined)
  _garble(os.path.join(ruined, "checkpoints"))
  argv = ["distill", "--preset", "smoke", "--weighting", "none", "--iterations", "6",
          "--checkpoint-every", "2", "--quiet"]
  assert cli.main(argv + ["--workdir", ruined]) == 2
  line = _one_line(capsys.readouterr().err)
  root = os.path.join(ruined, "checkpoints")
  assert f"no checkpoint in {root} can be restored (steps 4, 2;" in line
  assert f"delete {root} (or move it aside) to start the distillation over" in line
  assert sorted(os.listdir(root)) == ["2", "4"]
  # Damage every file of the newest checkpoint: one line names the step resumed from.
  _garble(os.path.join(work, "checkpoints", "4"))
  with caplog.at_level("WARNING", logger="jaxdd"):
    got = runs.distill_stage(cfg, work, progress=False)
  lines = [r.getMessage() for r in caplog.records if "checkpoint" in r.getMessage()]
  assert len(lines) == 1 and "checkpoint 4 cannot be restored" in lines[0], lines
  assert lines[0].endswith("resumed from the older checkpoint 2 (the damaged one removed)")
  assert "Traceback" not in capsys.readouterr().err
  np.testing.assert_array_equal(np.asarray(got.images), np.asarray(want.images))
  # The retention kept the checkpoints written after the fallback, every one restorable (not
  # the damaged 4 beside a deleted good one)
  assert sorted(os.listdir(os.path.join(work, "checkpoints")), key=int) == ["4", "6"]
  mngr = checkpoints.checkpointer(work)
  try:
    for step in (4, 6):
      assert int(checkpoints._restore(mngr, step, fresh).step) == step
  finally:
    mngr.close()


def test_a_second_run_in_the_same_workdir_is_refused(tmp_path, capsys):
  import socket
  work = tmp_path / "busy"
  work.mkdir()
  # A live holder: this test process itself, as another run would record it.
  (work / ".lock").write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname()}))
  assert cli.main(["distill", "--preset", "smoke", "--workdir", str(work), "--quiet"]) == 2
  line = _one_line(capsys.readouterr().err)
  assert f"is in use by process {os.getppid()}" in line and ".lock" in line
  assert sorted(os.listdir(work)) == [".lock"]
  # an empty or damaged lock (a run writing it this moment, or garbage): said so, kept
  for text in ("", "garbage", '{"host": "h"}'):
    (work / ".lock").write_text(text)
    assert cli.main(["distill", "--preset", "smoke", "--workdir", str(work), "--quiet"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "that names no process (empty or damaged)" in line and "None" not in line, line
    assert (work / ".lock").read_text() == text


def test_a_stale_lock_is_taken_over_and_released(tmp_path):
  import socket
  import subprocess
  import sys
  work = tmp_path / "stale"
  work.mkdir()
  gone = subprocess.Popen([sys.executable, "-c", "pass"])
  gone.wait()
  (work / ".lock").write_text(json.dumps({"pid": gone.pid, "host": socket.gethostname()}))
  with runs.workdir_lock(str(work)):
    with open(work / ".lock") as f:
      assert json.load(f)["pid"] == os.getpid()
    with runs.workdir_lock(str(work)):  # re-entrant in one process
      pass
    assert (work / ".lock").exists()
  assert not (work / ".lock").exists()
  # A refused run in a new directory leaves no directory behind.
  fresh = tmp_path / "fresh"
  with pytest.raises(RuntimeError):
    with runs.workdir_lock(str(fresh)):
      raise RuntimeError("refused")
  assert not fresh.exists()


@pytest.mark.slow
def test_finished_run_shows_its_results_and_quiet_keeps_them(tmp_path, capsys, monkeypatch):
  work = str(tmp_path / "done")
  argv = ["distill", "--preset", "smoke", "--weighting", "none", "--workdir", work, "--quiet"]
  assert cli.main(argv) == 0
  first = capsys.readouterr().out
  assert "overall" in first  # --quiet hides progress, not the results
  stored = json.load(open(os.path.join(work, "eval.json")))
  calls = []
  monkeypatch.setattr(evaluate, "evaluate_synset",
                      lambda *a, **k: calls.append(1) or (_ for _ in ()).throw(AssertionError))
  assert cli.main(argv) == 0
  out = capsys.readouterr().out
  assert "complete (stored in eval.json)" in out and calls == []
  assert f"{100 * stored['mean']['overall']:9.2f}" in out
  monkeypatch.undo()
  assert cli.main(argv + ["--reevaluate"]) == 0
  assert json.load(open(os.path.join(work, "eval.json")))["mean"] == stored["mean"]


def test_refused_values_write_nothing(tmp_path, capsys):
  for argv in (["--ipc", "400"], ["--weighting", "kde", "--real-per-class", "1"]):
    work = tmp_path / "refused"
    assert cli.main(["distill", "--preset", "smoke", "--workdir", str(work), "--quiet"]
                    + argv) == 2
    assert "error:" in _one_line(capsys.readouterr().err)
    assert not work.exists()


@pytest.mark.slow
def test_evaluate_on_a_runs_synset_reproduces_the_run(tmp_path, capsys):
  work = str(tmp_path / "run")
  assert cli.main(["distill", "--preset", "smoke", "--weighting", "kde", "--seed", "3",
                   "--workdir", work, "--quiet"]) == 0
  capsys.readouterr()
  out = str(tmp_path / "again.json")
  assert cli.main(["evaluate", os.path.join(work, "synset"), "--out", out, "--quiet"]) == 0
  assert "method dm+kde" in capsys.readouterr().out
  stored = json.load(open(os.path.join(work, "eval.json")))
  again = json.load(open(out))
  for m in ("overall", "aligned", "conflicting", "worst_group"):
    assert again["summary"][m]["mean"] == stored["mean"][m], m
  assert again["method"] == "dm+kde"


def test_results_of_other_settings_are_never_overwritten(tmp_path):
  from jaxdd import runs
  work = tmp_path / "b"
  work.mkdir()
  mean = {"overall": 0.5, "aligned": 0.9, "conflicting": 0.4, "worst_group": 0.1}
  other = {"random": {"mean": mean, "std": mean, "digest": "someoneelse"}}
  (work / "baselines.json").write_text(json.dumps(other))
  cfg = get_config("smoke")
  with pytest.raises(ValueError, match="holds baselines made with other settings"):
    runs.run_baselines(cfg, str(work), which=("random",), progress=False)
  assert json.loads((work / "baselines.json").read_text()) == other
  root = tmp_path / "study"
  root.mkdir()
  table = {"base": cfg.replace(ipc=3).to_dict(), "rows": {}}
  (root / "table.json").write_text(json.dumps(table))
  (root / "table.md").write_text("kept")
  with pytest.raises(ValueError, match=r"holds a table made with other settings \(base"):
    runs.final(cfg, str(root), settings={}, seeds=(0,), progress=False)
  assert (root / "table.md").read_text() == "kept"
  # the rows a table has are settings too: another --full-models or --no-random is refused,
  # and a table written before it recorded them is compared on the rest
  from jaxdd.runs import final_table
  same = {"base": cfg.to_dict(), "seeds": [0], "with_random": True, "full_models": 3}
  (root / "table.json").write_text(json.dumps({**same, "rows": {}}))
  final_table._refuse_other_table(str(root), same)
  for change in ({"full_models": 1}, {"with_random": False}):
    with pytest.raises(ValueError, match=rf"other settings \({next(iter(change))} differ\)"):
      final_table._refuse_other_table(str(root), {**same, **change})
  older = {k: v for k, v in same.items() if k not in ("with_random", "full_models")}
  (root / "table.json").write_text(json.dumps({**older, "rows": {}}))
  final_table._refuse_other_table(str(root), {**same, "full_models": 1})


@pytest.mark.slow
def test_baselines_accumulate_for_the_same_settings(tmp_path):
  cfg = get_config("smoke", weighting="none")
  work = str(tmp_path / "b")
  runs.run_baselines(cfg, work, which=("random",), progress=False)
  both = runs.run_baselines(cfg.replace(weighting="kde"), work, which=("full",),
                            progress=False)
  assert set(both) == {"random", "full"}
  assert set(json.load(open(os.path.join(work, "baselines.json")))) == {"random", "full"}


def test_report_and_baselines_refuse_what_they_cannot_use(tmp_path, capsys):
  assert cli.main(["report", str(tmp_path / "nowhere")]) == 2
  assert "does not exist" in _one_line(capsys.readouterr().err)
  with pytest.raises(SystemExit) as e:  # baselines neither distil nor weigh
    cli.main(["baselines", "--preset", "smoke", "--iterations", "5", "--workdir",
              str(tmp_path / "b")])
  assert e.value.code == 2 and "unrecognized arguments: --iterations" in capsys.readouterr().err
  assert not (tmp_path / "b").exists()
  # report shows stored baselines too
  d = tmp_path / "runs" / "b"
  d.mkdir(parents=True)
  mean = {"overall": 0.5, "aligned": 0.9, "conflicting": 0.4, "worst_group": 0.1}
  (d / "baselines.json").write_text(json.dumps({"random": {"mean": mean, "std": mean,
                                                           "digest": "x"}}))
  assert cli.main(["report", str(tmp_path / "runs")]) == 0
  assert "baseline random: overall 50.0, aligned 90.0, conflicting 40.0" in capsys.readouterr().out
  # one damaged file among good ones: the good ones are reported, the bad one named, status 2
  bad = tmp_path / "runs" / "c" / "dm"
  bad.mkdir(parents=True)
  (bad / "eval.json").write_text('{"mean": {"overall": 0.5}')
  assert cli.main(["report", str(tmp_path / "runs")]) == 2
  out, err = capsys.readouterr()
  assert "baseline random: overall 50.0" in out
  assert err.startswith("jaxdd report: error: ") and "eval.json" in _one_line(err)
  # one it may not read (as root every file reads, so the read is made to fail): the same
  (bad / "eval.json").unlink()
  from jaxdd.runs import artifacts
  real = artifacts._eval_record
  def deny(root):
    if root == str(bad):
      raise PermissionError(errno.EACCES, "Permission denied", str(bad / "eval.json"))
    return real(root)
  with pytest.MonkeyPatch.context() as m:
    m.setattr(artifacts, "_eval_record", deny)
    (bad / "eval.json").write_text("{}")
    assert cli.main(["report", str(tmp_path / "runs")]) == 2
  out, err = capsys.readouterr()
  assert "baseline random: overall 50.0" in out
  assert _one_line(err) == (f"jaxdd report: error: {bad / 'eval.json'}: Permission denied; it "
                            "cannot be read: fix its permissions, or move it away")
  # a comparison whose dm/eval.json is damaged: the comparison is still shown, the file named
  shutil.rmtree(tmp_path / "runs" / "c")
  rep = tmp_path / "runs" / "rep"
  (rep / "dm").mkdir(parents=True)
  (rep / "comparison.md").write_text("| method | overall |\n| dm | 25.0 |\n")
  (rep / "dm" / "eval.json").write_text("not json")
  assert cli.main(["report", str(tmp_path / "runs")]) == 2
  out, err = capsys.readouterr()
  assert "| dm | 25.0 |" in out and "baseline random: overall 50.0" in out
  assert str(rep / "dm" / "eval.json") in _one_line(err)
  # nothing finished: the documented prefix, status 1
  (tmp_path / "empty").mkdir()
  assert cli.main(["report", str(tmp_path / "empty")]) == 1
  assert _one_line(capsys.readouterr().err).startswith("jaxdd report: error: no finished runs")


@pytest.mark.parametrize("after", [0.3, 0.6, 1.0, 1.5])
def test_ctrl_c_while_jaxdd_starts_is_one_line(tmp_path, after):
  # Ctrl-C while the command line imports JAX and its commands, or parses: no traceback
  import subprocess
  import sys
  import time
  # `python -m jaxdd`, which says when the interpreter has started and reaches jaxdd: a
  # Ctrl-C before any of jaxdd's code runs (the interpreter still starting, which takes over
  # 0.3 s on a loaded machine) is Python's own, which no package can catch
  start = ("import os, runpy; os.write(2, b'@'); "
           "runpy.run_module('jaxdd', run_name='__main__', alter_sys=True)")
  p = subprocess.Popen([sys.executable, "-c", start, "distill", "--preset", "smoke",
                        "--quiet", "--workdir", str(tmp_path / "run")],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  assert p.stderr.read(1) == "@"
  time.sleep(after)
  p.send_signal(signal.SIGINT)
  out, err = p.communicate(timeout=120)
  assert p.returncode == 130, (p.returncode, err)
  assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
  assert "interrupted" in err


@pytest.mark.slow
def test_ctrl_c_from_the_shell_exits_130_with_one_line(tmp_path):
  import subprocess
  import sys
  import time
  work = tmp_path / "run"
  env = dict(os.environ, JAXDD_LOG_INTERVAL="1")
  p = subprocess.Popen([sys.executable, "-m", "jaxdd", "distill", "--preset", "smoke",
                        "--weighting", "none", "--iterations", "100000", "--checkpoint-every",
                        "1000000", "--workdir", str(work)], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True, env=env)
  metrics = work / "metrics.jsonl"
  deadline = time.time() + 240
  while time.time() < deadline and p.poll() is None:
    if metrics.exists() and '"loss"' in metrics.read_text():
      break
    time.sleep(0.5)
  p.send_signal(signal.SIGINT)
  out, err = p.communicate(timeout=120)
  assert p.returncode == 130, err[-2000:]
  assert "Traceback" not in err
  lines = [l for l in err.splitlines() if l.startswith("jaxdd distill:")]
  assert len(lines) == 1 and "rerun the same command to resume" in lines[0]
  assert len(os.listdir(work / "checkpoints")) == 1


def test_a_missing_test_split_is_found_before_any_work(tmp_path, capsys):
  rng = np.random.default_rng(0)
  src = tmp_path / "train_only.npz"
  np.savez(src, x_train=rng.integers(0, 256, (600, 28, 28), dtype=np.uint8),
           y_train=np.repeat(np.arange(10), 60))
  work = tmp_path / "run"
  assert cli.main(["distill", "--preset", "smoke", "--source", str(src), "--workdir", str(work),
                   "--quiet"]) == 2
  line = _one_line(capsys.readouterr().err)
  assert "test" in line
  assert not work.exists()


def _kept_checkpoints(work) -> tuple[list[int], bool]:
  """The checkpoint steps in ``work`` and whether every number in them is finite."""
  import orbax.checkpoint as ocp
  root = os.path.join(work, "checkpoints")
  if not os.path.isdir(root):
    return [], True
  mngr = ocp.CheckpointManager(os.path.abspath(root))
  try:
    steps = sorted(mngr.all_steps())
    leaves = [np.asarray(a) for s in steps
              for a in jax.tree.leaves(mngr.restore(s, args=ocp.args.StandardRestore()))]
  finally:
    mngr.close()
  return steps, all(np.isfinite(a).all() for a in leaves if np.issubdtype(a.dtype, np.floating))


def _loss_steps(work) -> list[int]:
  rows = [json.loads(line) for line in open(os.path.join(work, "metrics.jsonl"))]
  assert all(np.isfinite(v) for r in rows for v in r.values())
  return [r["step"] for r in rows if "loss" in r]


def test_a_diverging_dm_run_stops_at_its_first_non_finite_step(tmp_path, capsys, monkeypatch):
  work = str(tmp_path / "nan")
  argv = ["distill", "--preset", "smoke", "--weighting", "none", "--lr-img", "1e38",
          "--checkpoint-every", "1", "--workdir", work, "--quiet"]
  assert cli.main(argv) == 1
  line = _one_line(capsys.readouterr().err)
  logged = _loss_steps(work)  # every step is logged (smoke: --log-every 1) until the bad one
  bad = logged[-1] + 1 if logged else 1
  assert line.startswith(f"jaxdd distill: error: step {bad}: "), line
  assert "non-finite (lr_img 1e+38 is likely too large)" in line
  assert "rerun with a smaller --lr-img in a new --workdir" in line
  assert f"the last finite checkpoint (step {bad - 1}) is kept" in line
  assert _kept_checkpoints(work) == (list(range(max(1, bad - 2), bad)), True)
  assert not os.path.exists(os.path.join(work, "synset"))
  monkeypatch.setattr(bias, "bias_classifier", lambda *a: None)  # no bias scores from here on
  # The same command resumes from that checkpoint and stops at the same step again.
  assert cli.main(argv) == 1
  assert _one_line(capsys.readouterr().err) == line
  assert _kept_checkpoints(work) == (list(range(max(1, bad - 2), bad)), True)
  # Several steps per call: found at the chunk's end, the first bad step of the chunk named.
  chunked = str(tmp_path / "chunked")
  assert cli.main(argv[:-3] + ["--steps-per-call", "4", "--iterations", "40", "--checkpoint-every",
                               "4", "--workdir", chunked, "--quiet"]) == 1
  assert f"error: step {bad}: " in _one_line(capsys.readouterr().err)
  assert _loss_steps(chunked) == logged


@pytest.mark.parametrize("bad, chunk, every, kept", [(6, 3, 4, [4]), (3, 3, 4, [])])
def test_no_checkpoint_is_kept_at_or_after_the_first_non_finite_step(tmp_path, capsys,
                                                                     monkeypatch, bad, chunk,
                                                                     every, kept):
  """Step ``bad`` reports itself non-finite; the flags are read only where the host waits
  anyway (here a checkpoint or the end, never a log line: --log-every 100), so the run stops
  a few steps later, names step ``bad``, and keeps only the checkpoints before it."""
  from jaxdd.runs import driver
  monkeypatch.setattr(bias, "bias_classifier", lambda *a: None)  # no bias scores: faster
  add = driver.FiniteWatch.add

  def add_bad(self, it, n, row):
    def flagged(j):
      m = row(j)
      return {**m, "finite": np.array(False)} if it + j + 1 == bad else m
    add(self, it, n, flagged)
  monkeypatch.setattr(driver.FiniteWatch, "add", add_bad)
  work = str(tmp_path / "run")
  assert cli.main(["distill", "--preset", "smoke", "--weighting", "none", "--iterations", "8",
                   "--steps-per-call", str(chunk), "--checkpoint-every", str(every),
                   "--log-every", "100", "--workdir", work, "--quiet"]) == 1
  line = _one_line(capsys.readouterr().err)
  assert line.startswith(f"jaxdd distill: error: step {bad}: "), line
  assert (f"the last finite checkpoint (step {kept[-1]}) is kept" if kept
          else "no checkpoint was written") in line
  assert _kept_checkpoints(work) == (kept, True)
  assert not os.path.exists(os.path.join(work, "synset"))


def test_a_diverging_gradient_matching_run_exits_1_with_one_line(tmp_path, capsys, monkeypatch):
  monkeypatch.setattr(bias, "bias_classifier", lambda *a: None)  # no bias scores: faster
  work = str(tmp_path / "nan")
  assert cli.main(["distill", "--preset", "smoke", "--method", "dsa", "--weighting", "none",
                   "--lr-img", "1e38", "--workdir", work, "--quiet"]) == 1
  line = _one_line(capsys.readouterr().err)
  assert line.startswith("jaxdd distill: error: step 1: the DSA loss became non-finite"), line
  assert "(lr_img 1e+38 is likely too large)" in line and "no checkpoint was written" in line
  assert _kept_checkpoints(work) == ([], True) and _loss_steps(work) == []
  assert not os.path.exists(os.path.join(work, "synset"))


def test_the_fault_line_names_the_first_bad_step_what_turned_and_the_likely_cause():
  from jaxdd.runs import driver
  nan, ok = np.float32(np.nan), np.float32(1.0)
  dm, mtt = get_config("smoke", lr_img=2.0), get_config("smoke", method="mtt", lr_lr=1e-3)

  def line(config, step, kept=None, **m):
    return str(driver.nonfinite_error(driver.loop_plan(config), step,
                                      {"loss": ok, "grad_norm": ok, **m}, kept=kept))
  # The first step's loss and gradient come from the initial set and the data alone.
  assert "step 1: the DM loss became non-finite (the data or its" in line(dm, 1, loss=nan)
  assert "check the dataset" in line(dm, 1, grad_norm=nan)
  assert "gradient of the synthetic images became non-finite (lr_img 2 is" in line(
      dm, 3, 2, grad_norm=nan)
  assert "the synthetic images became non-finite (lr_img 2 " in line(dm, 1)
  # Gradient matching: a finite first round means the images' update diverged inside the step.
  assert "lr_img" in line(get_config("smoke", method="dsa"), 1, loss=nan, loss_first=ok)
  got = line(mtt, 4, 2, syn_lr=nan)
  assert "student learning rate (syn_lr) became non-finite (lr_lr 0.001 is likely too large)" in got
  assert "checkpoint (step 2) is kept" in got and "smaller --lr-lr in a new --workdir" in got
  # Chunks of steps: the first bad step of all pending chunks is named, its metrics read.
  watch = driver.FiniteWatch(driver.loop_plan(dm))
  rows = lambda flags: lambda j: {"finite": np.array(flags[j]), "loss": np.float32(j)}  # noqa: E731
  watch.add(0, 2, rows([True, True]))
  watch.check(kept=None)
  watch.add(2, 3, rows([True, True, True]))
  watch.add(5, 3, rows([True, False, False]))
  logged = []
  with pytest.raises(FloatingPointError, match=r"^step 7: the synthetic images"):
    watch.check(kept=4, log_before=lambda it, j, row: logged.append((it, j)))
  assert logged == [(5, 1)] and watch.pending == []


def test_a_deadline_stops_distillation_as_a_first_ctrl_c_does():
  # A passed deadline stops after the chunk in flight, saves that step and raises
  # Interrupted; a deadline that is not reached, or reached at the last chunk, changes nothing.
  import time

  from jaxdd import distill
  from jaxdd.runs import driver
  toy = distill.Distiller(lambda key, real: 0, lambda s, real: (s + 1, {"loss": s}))

  def go(at):
    seen, saved = [], []
    try:
      driver.drive(toy, 0, None, 0, 6, 1, stops=(2,),
                   after=lambda it, n, s, row: seen.append(int(s)),
                   save=saved.append, deadline=None if at is None else driver.Deadline(at))
    except driver.Interrupted as e:
      return seen, saved, e.step
    return seen, saved, None

  assert go(None) == ([1, 2, 3, 4, 5, 6], [], None)
  assert go(time.monotonic() + 3600) == ([1, 2, 3, 4, 5, 6], [], None)
  assert go(time.monotonic() - 1) == ([1], [1], 1)


def test_a_full_disk_while_checkpointing_is_one_line_status_1_and_leaves_nothing_half(
    tmp_path, monkeypatch, capsys):
  """A checkpoint write that fails for a full disk (injected: the checkpoint library's save
  writes its temporary folder, then fails as tensorstore does on ENOSPC)."""
  from jaxdd.runs import checkpoints as ck

  real = ck.checkpointer

  def full_disk_manager(workdir):
    mngr = real(workdir)

    def save(step, *a, **k):
      os.makedirs(os.path.join(str(mngr.directory), f"{step}{ck.TMP_MARK}", "d"))
      raise ValueError("RESOURCE_EXHAUSTED: Error writing \"images/0.0.0.0\": Failed to write "
                       "521511 bytes to file 15: No space left on device [os_error_code='28']")
    mngr.save = save
    return mngr

  monkeypatch.setattr(ck, "checkpointer", full_disk_manager)
  work = tmp_path / "run"
  assert cli.main(["distill", "--preset", "smoke", "--weighting", "none", "--iterations", "4",
                   "--checkpoint-every", "2", "--workdir", str(work), "--quiet"]) == 1
  line = _one_line(capsys.readouterr().err)
  assert "No space left on device while saving checkpoint 2" in line
  assert "free some disk space and rerun the same command to resume" in line
  assert os.listdir(work / "checkpoints") == []  # no half-written save left behind
  assert not (work / ".lock").exists()
