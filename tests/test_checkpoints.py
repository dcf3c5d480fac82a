"""Faults around checkpoints, injected many times: damaged files (the newest checkpoint, every
checkpoint), Ctrl-C and an abrupt stop at random points of a save. Each ends in at most one
line, never a traceback, and never leaves a half-written checkpoint behind."""
from __future__ import annotations

import logging
import os
import random
import shutil
import signal
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxdd import distill
from jaxdd.runs import checkpoints, driver
from jaxdd.structs import SynSet


def _state(step: int) -> distill.DistillState:
  """A distillation state of step ``step`` whose every array depends on the step."""
  rng = np.random.default_rng(step)
  images = jnp.asarray(rng.normal(size=(4, 6, 6, 3)), jnp.float32)
  opt = optax.adam(0.1).init(images)
  opt = jax.tree.map(lambda x: x + step if jnp.issubdtype(x.dtype, jnp.floating) else x, opt)
  return distill.DistillState(SynSet(images, jnp.arange(4) % 2), opt,
                              jnp.asarray(step, jnp.int32), jax.random.key(step))


def _assert_same(got: distill.DistillState, step: int) -> None:
  want = checkpoints.state_tree(_state(step))
  for a, b in zip(jax.tree.leaves(checkpoints.state_tree(got)), jax.tree.leaves(want)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _restore(work: str) -> tuple[distill.DistillState, int]:
  mngr = checkpoints.checkpointer(work)
  try:
    return checkpoints.restore_newest(mngr, _state(0), work)
  finally:
    mngr.close()


def _leftovers(work: str) -> list[str]:
  return [n for n in os.listdir(os.path.join(work, "checkpoints")) if not n.isdigit()]


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> str:
  """A work directory with the checkpoints of steps 1 and 2."""
  work = str(tmp_path_factory.mktemp("ckpt") / "run")
  mngr = checkpoints.checkpointer(work)
  for step in (1, 2):
    checkpoints.save(mngr, step, _state(step))
  mngr.close()
  return work


def _copy(saved: str, dest) -> str:
  shutil.copytree(saved, dest)
  return str(dest)


def _files(work: str, step: int) -> list[str]:
  top = os.path.join(work, "checkpoints", str(step))
  return sorted(os.path.join(r, n) for r, _, names in os.walk(top) for n in names)


def _damage(path: str, how: str) -> None:
  if how == "delete":
    os.remove(path)
    return
  with open(path, "rb") as f:
    data = f.read()
  with open(path, "wb") as f:
    f.write({"truncate": data[:len(data) // 2], "empty": b"",
             "garble": bytes(255 - b for b in data)}[how])


WAYS = ("truncate", "empty", "garble", "delete")


def _warnings(caplog) -> list[str]:
  return [r.getMessage() for r in caplog.records if r.name == "jaxdd"]


def test_a_damaged_newest_checkpoint_falls_back_with_one_line(saved, tmp_path, caplog, capfd):
  rng = random.Random(0)
  fell_back = 0
  for trial in range(16):
    work = _copy(saved, tmp_path / str(trial))
    files = _files(work, 2)
    hit = files if trial < len(WAYS) else rng.sample(files, rng.randint(1, 2))
    for path in hit:
      _damage(path, WAYS[trial % len(WAYS)])
    caplog.clear()
    with caplog.at_level("INFO", logger="jaxdd"):
      got, step = _restore(work)
    lines = _warnings(caplog)
    if step == 2:  # a file that this restore does not read: the checkpoint is still whole
      assert lines == [], lines
    else:
      fell_back += 1
      assert step == 1 and len(lines) == 1, lines
      assert "checkpoint 2 cannot be restored" in lines[0], lines
      assert lines[0].endswith("resumed from the older checkpoint 1 (the damaged one removed)"), lines
    _assert_same(got, step)
  assert fell_back >= len(WAYS)
  err = capfd.readouterr().err
  assert "Traceback" not in err and "absl" not in err, err


def test_every_checkpoint_damaged_is_refused_with_one_line(saved, tmp_path, caplog, capfd):
  for trial, how in enumerate(WAYS[:3]):
    work = _copy(saved, tmp_path / str(trial))
    for path in _files(work, 1) + _files(work, 2):
      _damage(path, how)
    caplog.clear()
    with caplog.at_level("INFO", logger="jaxdd"):
      with pytest.raises(checkpoints.CheckpointsDamaged) as e:
        _restore(work)
    assert _warnings(caplog) == []
    message = str(e.value)
    root = os.path.join(work, "checkpoints")
    assert f"no checkpoint in {root} can be restored (steps 2, 1;" in message
    assert message.endswith(f"delete {root} (or move it aside) to start the distillation over")
    assert "\n" not in message
  err = capfd.readouterr().err
  assert "Traceback" not in err and "absl" not in err, err


def test_an_abandoned_read_s_task_error_is_kept_off_stderr_and_no_other():
  # asyncio logs "Task exception was never retrieved" when a task orbax abandoned on a damaged
  # checkpoint is collected, possibly after restore_newest said its one line
  import logging
  def raised(filename):
    try:
      exec(compile("raise ValueError('OUT_OF_RANGE: read past the end')", filename, "exec"))
    except ValueError as e:
      return e
  checkpoints.quiet_abandoned_reads()
  checkpoints.quiet_abandoned_reads()  # installed once
  log = logging.getLogger("asyncio")
  mine = [f for f in log.filters if isinstance(f, checkpoints._AbandonedReadFilter)]
  assert len(mine) == 1
  def record(msg, exc):
    return logging.LogRecord("asyncio", logging.ERROR, "x", 1, msg, None,
                             (type(exc), exc, exc.__traceback__))
  task = "Task exception was never retrieved\nfuture: <Task finished ...>"
  assert not mine[0].filter(record(task, raised("/site-packages/tensorstore/x.py")))
  assert not mine[0].filter(record(task, raised("/site-packages/orbax/checkpoint/y.py")))
  # a read's future failed in C: only asyncio's frames, and tensorstore's message
  read = raised("/usr/lib/python3.11/asyncio/tasks.py")
  read.args = ("OUT_OF_RANGE: Error reading byte range [tensorstore_spec='{...}']",)
  assert not mine[0].filter(record(task, read))
  assert not mine[0].filter(record("Future exception was never retrieved\nfuture: <Future "
                                   "finished exception=ValueError(...)>", read))
  assert mine[0].filter(record(task, raised("/home/me/mine.py")))  # another program's task
  assert mine[0].filter(record("Unclosed transport <...>", raised("/site-packages/orbax/z.py")))


class _At:
  """A profile hook that calls ``act`` at the ``at``-th Python call in the main thread."""

  def __init__(self, at: int, act):
    self.at, self.act, self.calls = at, act, 0

  def __call__(self, frame, event, arg):
    if event == "call":
      self.calls += 1
      if self.calls == self.at:
        self.act()


def _save_with(hook, mngr, step):
  state = _state(step)
  sys.setprofile(hook)
  try:
    checkpoints.save(mngr, step, state)
  finally:
    sys.setprofile(None)


def _interrupt():
  os.kill(os.getpid(), signal.SIGINT)


def test_ctrl_c_at_random_points_of_a_save_takes_effect_after_it(saved, tmp_path, caplog, capfd):
  work = _copy(saved, tmp_path / "run")
  mngr = checkpoints.checkpointer(work)
  counter = _At(0, lambda: None)
  _save_with(counter, mngr, 3)  # how many calls a save makes
  rng = random.Random(1)
  try:
    for step in range(4, 19):
      # The first Ctrl-C asked the loop to stop after this step's save; the second one
      # comes at a random point of the save and must wait for it.
      with driver.deferred_interrupt() as interrupted:
        _interrupt()
        assert interrupted()
        # (the first few calls enter the save: a signal there stops before it begins)
        hook = _At(rng.randrange(20, counter.calls), _interrupt)
        with pytest.raises(KeyboardInterrupt):
          _save_with(hook, mngr, step)
      assert hook.calls >= hook.at
      assert mngr.latest_step() == step and _leftovers(work) == []
  finally:
    mngr.close()
  got, step = _restore(work)
  assert step == 18
  _assert_same(got, 18)
  assert "Traceback" not in capfd.readouterr().err


class _Killed(BaseException):
  """The process stopping at once (a kill), as far as the save can tell."""


# An exception at a random point of orbax's code leaves coroutines and event loops unfinished,
# which a real kill would never get to report.
@pytest.mark.filterwarnings("ignore::RuntimeWarning",
                            "ignore::pytest.PytestUnraisableExceptionWarning")
def test_the_remains_of_a_killed_save_are_removed_at_start(saved, tmp_path, caplog):
  work = _copy(saved, tmp_path / "run")
  partial = os.path.join(work, "checkpoints", "3" + checkpoints.TMP_MARK + "-1764000000")
  shutil.copytree(os.path.join(work, "checkpoints", "2"), partial)
  with caplog.at_level("INFO", logger="jaxdd"):
    got, step = _restore(work)
  assert step == 2 and _leftovers(work) == []
  assert any("removed 1 unfinished checkpoint folder" in m for m in _warnings(caplog))


def test_the_libraries_log_lines_become_one_line_or_none_under_quiet(caplog):
  from jaxdd import progress
  was = progress.is_quiet()
  try:
    for quiet, want in ((True, []), (False, ["checkpoint library (orbax): first (and 1 more)"])):
      progress.set_quiet(quiet)
      caplog.clear()
      with caplog.at_level("INFO"):
        with checkpoints.library_logs():
          logging.getLogger("absl").warning("first\nsecond line")
          logging.getLogger("absl").error("another")
      assert [r.getMessage() for r in caplog.records] == want
  finally:
    progress.set_quiet(was)


@pytest.mark.slow
def test_a_run_killed_during_its_saves_resumes_to_the_uninterrupted_synset(tmp_path, capsys):
  """SIGKILL of `jaxdd distill` at random moments while it checkpoints every step (each kill
  after a new checkpoint appeared, so it falls in a later save or the step around it), then
  the same command once more: it finishes with the SynSet of an uninterrupted run."""
  import subprocess
  import time

  from jaxdd import cli, synset
  argv = ["distill", "--preset", "smoke", "--weighting", "none", "--iterations", "16",
          "--checkpoint-every", "1", "--quiet", "--workdir"]
  ref = str(tmp_path / "ref")
  assert cli.main(argv + [ref]) == 0
  capsys.readouterr()
  work = tmp_path / "run"
  command = [sys.executable, "-m", "jaxdd", *argv, str(work)]
  rng = random.Random(0)

  def newest() -> int:
    root = work / "checkpoints"
    return max((int(n) for n in os.listdir(root) if n.isdigit()), default=0) if root.exists() \
        else 0
  kills = 0
  for _ in range(3):
    start = newest()
    p = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while p.poll() is None and newest() <= start and time.time() < deadline:
      time.sleep(0.02)
    time.sleep(rng.uniform(0.0, 0.25))
    if p.poll() is None:
      p.send_signal(signal.SIGKILL)
      kills += 1
    p.wait(timeout=60)
  assert kills >= 2 and not (work / "synset").exists()
  done = subprocess.run(command, capture_output=True, text=True, timeout=240)
  assert done.returncode == 0, done.stderr[-2000:]
  # at most one line on a damaged checkpoint; besides it only the killed run's lock taken over
  lines = done.stderr.strip().splitlines()
  assert "Traceback" not in done.stderr, done.stderr[-2000:]
  damaged = [line for line in lines if "checkpoint" in line]
  assert len(damaged) <= 1 and all("cannot be restored" in line and line.endswith(
      "resumed from the older checkpoint " + line.rsplit(" ", 1)[-1]) for line in damaged), lines
  assert all("taking over the lock of process" in line for line in lines
             if line not in damaged), lines
  got, want = synset.load(str(work / "synset"))[0], synset.load(os.path.join(ref, "synset"))[0]
  assert np.array_equal(got.images, want.images) and np.array_equal(got.labels, want.labels)
