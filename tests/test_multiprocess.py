"""DM across 2 processes on localhost (jax.distributed + gloo), from the CLI, == one process."""
import os
import socket
import subprocess
import sys

import numpy as np
import pytest


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_cli_run_matches_one_process(tmp_path):
  # The command a user runs on each of two hosts (here: two processes on localhost with
  # 2 CPU devices each): --devices all spans the 4 devices of both processes.
  from jaxdd import runs, synset
  from jaxdd.config import get_config
  port = str(_free_port())
  work = str(tmp_path / "two")
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  xla_flags = [f for f in os.environ.get("XLA_FLAGS", "").split()  # the suite's codegen
               if not f.startswith("--xla_force_host_platform_device_count")]
  env.update(XLA_FLAGS=" ".join(xla_flags + ["--xla_force_host_platform_device_count=2"]),
             JAX_PLATFORMS="cpu")
  flags = ["distill", "--preset", "smoke", "--weighting", "none", "--iterations", "4",
           "--devices", "all", "--workdir", work, "--quiet", "--coordinator",
           f"localhost:{port}", "--num-processes", "2"]
  procs = [subprocess.Popen([sys.executable, "-m", "jaxdd", *flags, "--process-id", str(i)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for i in range(2)]
  logs = [p.communicate(timeout=600)[0] for p in procs]
  for p, log in zip(procs, logs):
    assert p.returncode == 0, log[-3000:]
  assert f"run directory: {work}\n" in logs[0]
  assert f"run directory: {os.path.join(work, '.process-1')}" in logs[1]
  got, _ = synset.load(os.path.join(work, "synset"))
  copy, _ = synset.load(os.path.join(work, ".process-1", "synset"))
  np.testing.assert_array_equal(copy.images, got.images)  # one computation, two copies
  assert sorted(os.listdir(os.path.join(work, "checkpoints"))) == ["2", "4"]
  cfg = get_config("smoke", weighting="none", iterations=4)
  want = runs.distill_stage(cfg, str(tmp_path / "one"), progress=False)
  scale = float(np.abs(want.images).max())
  np.testing.assert_allclose(got.images, want.images, atol=1e-5 * scale)


def test_multi_process_flags_are_refused_when_incomplete(tmp_path, capsys):
  from jaxdd import cli
  base = ["distill", "--preset", "smoke", "--workdir", str(tmp_path / "w")]
  assert cli.main(base + ["--num-processes", "2", "--process-id", "0"]) == 2
  assert "add --coordinator HOST:PORT" in capsys.readouterr().err
  assert cli.main(base + ["--coordinator", "localhost:1", "--num-processes", "2"]) == 2
  assert "--coordinator needs --num-processes N and --process-id I" in capsys.readouterr().err
  assert cli.main(base + ["--coordinator", "localhost:1", "--num-processes", "2",
                          "--process-id", "2"]) == 2
  assert "must lie in [0, --num-processes 2)" in capsys.readouterr().err
  assert not os.path.exists(tmp_path / "w")


# ``python -m jaxdd`` with Python's own Ctrl-C handler, even where this test runs with SIGINT
# ignored (which a child would inherit).
_MAIN = ("import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
         "sys.argv[0] = 'jaxdd'; runpy.run_module('jaxdd', run_name='__main__')")


def _join(tmp_path, *extra, port=None):
  """``jaxdd distill`` as process 1 of 2 against a coordinator that never answers (nobody
  listens on ``port``, by default a free one)."""
  flags = ["distill", "--preset", "smoke", "--workdir", str(tmp_path / "w"), "--quiet",
           "--coordinator", f"127.0.0.1:{port or _free_port()}", "--num-processes", "2",
           "--process-id", "1", *extra]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.Popen([sys.executable, "-c", _MAIN, *flags], env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_an_unreachable_coordinator_fails_in_time_with_one_line(tmp_path):
  import time
  t0 = time.monotonic()
  p = _join(tmp_path, "--coordinator-timeout", "1")
  _, err = p.communicate(timeout=60)
  assert p.returncode == 1, err
  assert "Traceback" not in err and "stack trace" not in err
  lines = err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("jaxdd distill: error: process 1 of 2 could "
                                                 "not join the run at --coordinator 127.0.0.1:")
  assert "within 1 s" in lines[0] and "--coordinator-timeout" in lines[0]
  assert time.monotonic() - t0 < 30  # XLA's own wait would take 5 minutes, then abort
  assert not (tmp_path / "w").exists()


def test_ctrl_c_while_waiting_for_the_coordinator_exits_130(tmp_path):
  import signal
  import time
  # A "coordinator" that accepts the connection and never answers: once the process has
  # connected, it is certainly waiting in the join.
  with socket.socket() as server:
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(60)
    p = _join(tmp_path, "--coordinator-timeout", "120", port=server.getsockname()[1])
    conn, _ = server.accept()
    with conn:
      t0 = time.monotonic()
      p.send_signal(signal.SIGINT)
      _, err = p.communicate(timeout=60)
  assert p.returncode == 130, err
  assert time.monotonic() - t0 < 10
  lines = err.strip().splitlines()
  assert len(lines) == 1 and "interrupted while waiting for the coordinator 127.0.0.1:" in lines[0]
  assert not (tmp_path / "w").exists()
