"""What each stage of a run is configured with, read from its :class:`~jaxdd.config.RunConfig`.

The run configuration itself knows nothing of the library (it sits on the base layer); the
objects the library's stages take are built from it here: the KDE weighting, the SupCon
surrogate's config and the evaluation protocol.
"""
from __future__ import annotations

import dataclasses

from jaxdd import protocols, surrogate, weighting
from jaxdd.config import RunConfig, WeightingConfig


def kde_config(weights: WeightingConfig) -> weighting.KDEConfig | None:
  """The KDE weighting of a run's weighting part ``weights`` (``config.weights``; a whole
  :class:`~jaxdd.config.RunConfig`, whose flat fields read that part, does too): None for the
  vanilla method and FairDD.

  Example:
    >>> from jaxdd.config import get_config
    >>> kde_config(get_config("cpu", weighting="none").weights) is None
    True
  """
  if weights.weighting in ("oracle", "gce", "jtt"):
    # w = 1 / (size of the sample's (class, bias) group), normalised: f^(-1/T) with T = 1
    # and f the group's share of its class (jaxdd.weighting.oracle_log_density); for gce and
    # jtt f = 1 / w of their own weights (jaxdd.runs.weights.run_log_density).
    return weighting.KDEConfig(weights.kde_variance, 1.0, "power", "class")
  if weights.weighting != "kde":
    return None
  return weighting.KDEConfig(weights.kde_variance, weights.kde_temperature,
                             weights.kde_normalize, weights.kde_scope)


def surrogate_config(config: RunConfig) -> surrogate.SurrogateConfig:
  """The SupCon surrogate's config (its preset; a step budget is resolved per dataset). On a
  user's data (``--data``) whose ConvNet is deeper than 3 (models by resolution), the
  surrogate gets as many blocks more than its preset's."""
  cfg = surrogate.SurrogateConfig.preset(config.surrogate_preset)
  if config.data_spec is not None and config.depth > 3:
    cfg = dataclasses.replace(cfg, depth=cfg.depth + config.depth - 3)
  return cfg


def eval_protocol(config: RunConfig) -> protocols.Protocol:
  """The evaluation protocol of a run."""
  return protocols.get_protocol(config.eval_protocol)
