"""DM across 2 processes on localhost (jax.distributed + gloo) == one process."""
import os
import socket
import subprocess
import sys

import numpy as np
import pytest


def run_dm(mesh):
  """Two DM steps on toy data; the batch axis is sharded over ``mesh`` if given."""
  import jax
  from jaxdd import distill, models
  rng = np.random.default_rng(0)
  labels = np.repeat(np.arange(2), 12)
  images = rng.normal(size=(len(labels), 8, 8, 3)).astype(np.float32)
  real = distill.real_data(images, labels, num_classes=2, mesh=mesh)
  d = distill.dm(num_classes=2, ipc=2, model=models.ConvNet(2, depth=1, width=8), real_per_class=8,
                 mesh=mesh, batch_axis=None if mesh is None else "data")
  state = d.init(jax.random.key(0), real)
  losses = []
  for _ in range(2):
    state, m = d.step(state, real)
    losses.append(m["loss"])
  return state.syn.images, jax.numpy.stack(losses)


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_match_single_process(tmp_path):
  port = str(_free_port())
  out = str(tmp_path / "two_proc.npz")
  worker = os.path.join(os.path.dirname(__file__), "multiprocess_worker.py")
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  procs = [subprocess.Popen([sys.executable, worker, str(i), port, out], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for i in range(2)]
  logs = [p.communicate(timeout=300)[0] for p in procs]
  for p, log in zip(procs, logs):
    assert p.returncode == 0, log[-3000:]
  got = np.load(out)
  ref_images, ref_losses = run_dm(None)
  np.testing.assert_allclose(got["losses"], np.asarray(ref_losses), rtol=1e-4)
  np.testing.assert_allclose(got["images"], np.asarray(ref_images), rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_two_process_cli_run_matches_one_process(tmp_path):
  # The command a user runs on each of two hosts (here: two processes on localhost with
  # 2 CPU devices each): --devices all spans the 4 devices of both processes.
  from jaxdd import pipeline, synset
  port = str(_free_port())
  work = str(tmp_path / "two")
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env.update(XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
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
  cfg = pipeline.get_config("smoke", weighting="none", iterations=4)
  want = pipeline.distill_stage(cfg, str(tmp_path / "one"), progress=False)
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
