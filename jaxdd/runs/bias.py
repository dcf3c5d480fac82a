"""The bias-attribute classifier of a run's training set (for the bias score)."""
from __future__ import annotations

import jax
import numpy as np

from jaxdd import diagnostics
from jaxdd.config import RunConfig
from jaxdd.runs import keys, rundata

#: The bias-attribute classifier of the bias score per preset (default:
#: ConvNet-3 width 32 for :data:`jaxdd.diagnostics.BIAS_CLASSIFIER_STEPS` steps).
BIAS_CLASSIFIER: dict[str, dict[str, int]] = {"smoke": dict(width=8, epochs=2)}


def bias_classifier(config: RunConfig,
                    run_data: rundata.RunData) -> diagnostics.BiasClassifier | None:
  """The bias-attribute classifier of a run's training set (for the bias score); None when the
  training or validation split has no group labels (a user's data: no bias score).

  It depends on the data, the seed and the preset only, so the runs that share a
  :class:`RunData` (a sweep's candidates, the rows of a table) train it once: it is
  kept on the ``run_data`` object per (seed, preset).
  """
  if run_data.train.bias is None or run_data.valid.bias is None:
    return None
  cache = run_data.__dict__.setdefault("_bias_classifiers", {})
  key = (config.seed, config.preset)
  if key not in cache:
    train, valid = run_data.train, run_data.valid
    cache[key] = diagnostics.train_bias_classifier(
        jax.random.fold_in(keys.run_keys(config)[3], 1), run_data.normalized(train), train.labels,
        train.bias, train.aligned, num_classes=run_data.num_classes,
        valid=(run_data.normalized(valid), valid.labels, valid.bias),
        # jaxdd's data contract, aligned == (bias == labels), says class c's
        # aligned bias value is c, even where the training set has no aligned
        # sample (Biased-DD's aligned fraction 0); other data: read it off
        aligned_values=(np.arange(run_data.num_classes)
                        if np.array_equal(train.aligned, train.bias == train.labels) else None),
        **BIAS_CLASSIFIER.get(config.preset, {}))
  return cache[key]
