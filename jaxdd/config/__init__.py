"""The run configuration: :class:`RunConfig`, composed of one part per stage.

:mod:`jaxdd.config.parts` holds the parts (each checks its own fields and imports nothing
above the base layer); :mod:`jaxdd.config.run` composes them into :class:`RunConfig`, with
its flat serialisation, digests and presets.
"""
from __future__ import annotations

from jaxdd.config.parts import (BiasedStage, CFMConfig, DataConfig, DistillConfig, EvaluationConfig,
                                ExecutionConfig, GradientMatchingConfig, MTTConfig, OwnDataConfig,
                                Part, SurrogateStage, WeightingConfig, depth_for_size)
from jaxdd.config.run import (CFM_FIELDS, CHOICES, EVAL_FIELDS, FIELDS, METHOD_PRESETS, METHODS,
                              MTT_FIELDS, OWN_FIELDS, OWNER, PARTS, PRESETS, RunConfig, get_config, reads_biased,
                              validate)

__all__ = ["BiasedStage", "OwnDataConfig", "OWN_FIELDS", "depth_for_size", "CFMConfig", "CFM_FIELDS", "CHOICES", "DataConfig", "DistillConfig", "EVAL_FIELDS",
           "EvaluationConfig", "ExecutionConfig", "FIELDS", "GradientMatchingConfig",
           "METHODS", "METHOD_PRESETS", "MTTConfig", "MTT_FIELDS", "OWNER", "PARTS", "PRESETS",
           "Part", "RunConfig", "SurrogateStage", "WeightingConfig", "get_config", "reads_biased",
           "validate"]
