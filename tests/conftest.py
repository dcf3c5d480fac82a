"""Test configuration: 8 simulated CPU devices, no network, small caches.

XLA_FLAGS must be set before jax is imported anywhere, which is why this sits at
the top of conftest (XLA reads it once, when the CPU backend starts).
"""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Never let TFDS reach the network in tests.
os.environ.setdefault("TFDS_DISABLE_DOWNLOAD", "1")
# CLI tests must not point this process's XLA compilation cache at a test folder.
os.environ.setdefault("JAXDD_COMPILE_CACHE", "0")

import jax  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _jaxdd_cache(tmp_path, monkeypatch):
  """Every test gets its own empty dataset/surrogate cache directory."""
  monkeypatch.setenv("JAXDD_CACHE", str(tmp_path / "cache"))
  yield


@pytest.fixture
def getkey():
  """Hands out fresh typed keys: fold_in(key(seed), counter)."""
  seed = 0
  base = jax.random.key(seed)
  counter = [0]

  def next_key():
    counter[0] += 1
    return jax.random.fold_in(base, counter[0])

  return next_key
