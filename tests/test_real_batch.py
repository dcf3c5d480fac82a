"""A run's real batch is bounded by its data and by the machine: a batch beyond the largest class
is capped (the extra rows would all be masked, so no result changes) and a batch the machine
cannot hold is refused in one line before any work."""
from __future__ import annotations

import jax
import numpy as np
import pytest

from jaxdd import distill, models
from jaxdd.config import get_config
from jaxdd.runs import checks, rundata
from jaxdd.weighting import KDEConfig


def _real(seed: int = 0):
  rng = np.random.default_rng(seed)
  labels = np.array([0] * 5 + [1] * 3 + [2] * 4)  # largest class: 5 images
  x = rng.normal(size=(len(labels), 8, 8, 3)).astype(np.float32)
  emb = rng.normal(size=(len(labels), 4)).astype(np.float32)
  return distill.real_data(x, labels, num_classes=3, embeddings=emb)


@pytest.mark.parametrize("method,kde", [("dm", False), ("dm", True), ("dsa", False)])
def test_a_batch_beyond_the_largest_class_steps_as_the_largest_class(method, kde):
  """The cap's premise: ``real_per_class`` 64 and 5 (the largest class) give the same steps:
  a class smaller than the batch gives every image, the rest masked (float32 reductions over
  more zero rows may round differently: rtol 1e-5)."""
  real = _real()
  model = models.ConvNet(3, depth=1, width=4)
  kde_config = KDEConfig(scope="batch") if kde else None
  make = {"dm": distill.dm, "dsa": distill.dsa}[method]

  def run(per_class):
    d = make(num_classes=3, ipc=1, model=model, real_per_class=per_class, augment=None,
             lr=0.1, kde_config=kde_config, execution=distill.Execution(jit=False))
    state = d.init(jax.random.key(0), real)
    losses = []
    for _ in range(2):
      state, m = d.step(state, real)
      losses.append(float(m["loss"]))
    return np.asarray(state.syn.images), losses

  images, losses = run(64)
  images_cap, losses_cap = run(5)
  np.testing.assert_allclose(losses, losses_cap, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(images, images_cap, rtol=1e-5, atol=1e-6)


class _Data:
  """What real_batch and check_real_batch read of a RunData."""

  def __init__(self, labels, shape=(28, 28, 1)):
    self.train = type("Split", (), {"labels": np.asarray(labels),
                                    "images": np.zeros((1, *shape), np.float32)})()
    self.num_classes = int(np.max(labels)) + 1


def test_the_run_caps_a_uniform_batch_by_its_largest_class_only():
  data = _Data([0] * 20 + [1] * 7)
  assert rundata.real_batch(get_config("smoke", real_per_class=64), data) == 20
  assert rundata.real_batch(get_config("smoke", real_per_class=8), data) == 8
  weighted = get_config("smoke", real_per_class=64, weighting="kde", real_sampling="weighted",
                        kde_scope="class")
  assert rundata.real_batch(weighted, data) == 64  # with replacement: not capped
  assert rundata.real_batch(get_config("smoke", method="cfm", real_per_class=64), data) == 64


def test_a_batch_the_machine_cannot_hold_is_refused_in_one_line():
  data = _Data(np.arange(10).repeat(6000))
  # with replacement the data do not cap it; 10 x 10^9 28-px images cannot fit anywhere
  cfg = get_config("smoke", real_per_class=10**9, weighting="kde", real_sampling="weighted",
                   kde_scope="class")
  with pytest.raises(ValueError) as e:
    rundata.check_real_batch(cfg, data)
  message = str(e.value)
  assert "\n" not in message and message.startswith("--real-per-class 1000000000: a step's")
  assert "lower --real-per-class (at most about" in message
  most = int(message.rsplit("about ", 1)[1].rstrip(")"))
  assert checks.real_batch_bytes(10, most, (28, 28, 1), cfg.width) <= checks.machine_memory()
  # uniform draws: the data cap it to the largest class, which fits
  rundata.check_real_batch(get_config("smoke", real_per_class=10**9), data)


def test_real_batch_bytes_by_hand():
  # 2 classes x 3 images of 4 x 4 x 3: (3 channels + 3 maps x 8 channels) x 16 px x 4 bytes
  assert checks.real_batch_bytes(2, 3, (4, 4, 3), 8) == 2 * 3 * 16 * 4 * (3 + 24)


def test_machine_memory_asks_only_this_process_s_devices(monkeypatch):
  # In a run of several processes jax.devices()[0] can be another process's device, whose
  # memory_stats() raises; the limit comes from this process's own first device.
  import jax

  class Other:
    def memory_stats(self):
      raise RuntimeError("MemoryStats is only supported for addressable PjRt devices.")

  class Own:
    def memory_stats(self):
      return {"bytes_limit": 12345}

  monkeypatch.setattr(jax, "devices", lambda *a, **k: [Other(), Own()])
  monkeypatch.setattr(jax, "local_devices", lambda *a, **k: [Own()])
  assert checks.machine_memory() == 12345
