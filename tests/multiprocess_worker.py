"""One process of the 2-process DM test (run by tests/test_multiprocess.py).

Usage: python multiprocess_worker.py PROCESS_ID PORT OUT.npy
Each process owns 2 CPU devices; the mesh spans all 4 (gloo collectives).
"""
import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402

jax.config.update("jax_cpu_collectives_implementation", "gloo")


def main():
  pid, port, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
  jax.distributed.initialize(f"localhost:{port}", num_processes=2, process_id=pid)
  import numpy as np
  from jax.experimental import multihost_utils

  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  from test_multiprocess import run_dm  # the same configuration as the single-process run

  from jaxdd import parallel
  mesh = parallel.make_mesh({"data": jax.device_count()})
  assert jax.device_count() == 4 and jax.local_device_count() == 2
  images, losses = run_dm(mesh)
  images = multihost_utils.process_allgather(images, tiled=True)
  if pid == 0:
    np.savez(out, images=np.asarray(images), losses=np.asarray(losses))
  jax.distributed.shutdown()


if __name__ == "__main__":
  main()
