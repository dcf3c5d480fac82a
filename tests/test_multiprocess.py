"""DM across 2 processes on localhost (jax.distributed + gloo) == one process."""
import os
import socket
import subprocess
import sys

import numpy as np


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
