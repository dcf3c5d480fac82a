"""One small DM step under a given layout policy, for the tests that check a policy choice
changes no value (tests/test_thin_conv.py, tests/test_fused_norm.py)."""
from __future__ import annotations

import jax
import numpy as np

from jaxdd import distill, models


def dm_step(pol) -> tuple[np.ndarray, str]:
  """The synthetic images after one DM step of lr 1 (2 classes of 8x8x3, IPC 2, ConvNet depth
  2 width 16) under layout policy ``pol``, and the step's lowered StableHLO text."""
  rng = np.random.default_rng(0)
  x = rng.normal(size=(40, 8, 8, 3)).astype(np.float32)
  real = distill.real_data(x, np.repeat(np.arange(2), 20), num_classes=2)
  d = distill.dm(num_classes=2, ipc=2, real_per_class=8, lr=1.0,
                 model=models.ConvNet(2, depth=2, width=16),
                 execution=distill.Execution(policy=pol))
  state = d.init(jax.random.key(0), real)
  step = jax.jit(d.step)
  hlo = step.lower(state, real).as_text()
  new, _ = step(state, real)
  return np.asarray(new.syn.images), hlo
