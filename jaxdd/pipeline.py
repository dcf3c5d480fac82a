# Temporary: removed once every caller imports jaxdd.runs.
"""The names of :mod:`jaxdd.runs` and :mod:`jaxdd.config` that the command line still reads here."""
from jaxdd.config import CHOICES, PRESETS, get_config, validate
from jaxdd.runs.baseline_runs import BASELINES, run_baselines
from jaxdd.runs.comparison import reproduce
from jaxdd.runs.driver import Interrupted
from jaxdd.runs.experts import build_expert_buffer
from jaxdd.runs.keys import seed_keys
from jaxdd.runs.rundata import RunData
from jaxdd.runs.single import run
from jaxdd.runs.surrogate_stage import surrogate_artifact
from jaxdd.runs.text import format_comparison, method_name

__all__ = ["CHOICES", "PRESETS", "get_config", "validate", "BASELINES", "run_baselines",
           "reproduce", "Interrupted", "build_expert_buffer", "seed_keys", "RunData", "run",
           "surrogate_artifact", "format_comparison", "method_name"]
