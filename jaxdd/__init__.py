"""jaxdd: bias-aware dataset distillation in JAX/Flax.

The curated public API. Submodules are imported on first use, so
``import jaxdd`` stays cheap; every name below is also reachable through its
module (``jaxdd.distill.dm`` is ``jaxdd.dm``).

Example:
  >>> import jaxdd
  >>> sorted(jaxdd.PRESETS)
  ['cpu', 'cpu-paper', 'paper', 'proxy', 'smoke']
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> (module, attribute)
_API = {
    # data
    "load": ("jaxdd.data", "load"),
    "from_arrays": ("jaxdd.data", "from_arrays"),
    "BiasedDataset": ("jaxdd.data", "BiasedDataset"),
    "normalize": ("jaxdd.data", "normalize"),
    "channel_stats": ("jaxdd.data", "channel_stats"),
    # containers
    "SynSet": ("jaxdd.structs", "SynSet"),
    "Batch": ("jaxdd.structs", "Batch"),
    # models and augmentation
    "ConvNet": ("jaxdd.models", "ConvNet"),
    "get_model": ("jaxdd.models", "get"),
    "dsa_augment": ("jaxdd.augment", "dsa"),
    # KDE and surrogate
    "log_density": ("jaxdd.weighting", "log_density"),
    "kde_weights": ("jaxdd.weighting", "weights"),
    "supcon_loss": ("jaxdd.surrogate", "supcon_loss"),
    "SurrogateConfig": ("jaxdd.surrogate", "SurrogateConfig"),
    "train_surrogate": ("jaxdd.surrogate", "train_surrogate"),
    "embed": ("jaxdd.surrogate", "embed"),
    # distillation
    "dm_loss": ("jaxdd.matching", "dm_loss"),
    "gm_loss": ("jaxdd.matching", "gm_loss"),
    "gradient_distance": ("jaxdd.matching", "gradient_distance"),
    # every distillation method (jaxdd.dsa is the DSA distiller; jaxdd.dsa_augment is the
    # augmentation, jaxdd.augment.dsa)
    "dm": ("jaxdd.distill", "dm"),
    "gm": ("jaxdd.distill", "gm"),
    "dc": ("jaxdd.distill", "dc"),
    "dsa": ("jaxdd.distill", "dsa"),
    "mtt": ("jaxdd.distill", "mtt"),
    "cfm": ("jaxdd.distill", "cfm"),
    "Distiller": ("jaxdd.distill", "Distiller"),
    # how a distiller's step is executed (layout policy, mesh, chunks, dtype, jit), and N runs
    # of one method in one program
    "Execution": ("jaxdd.distill", "Execution"),
    "many_runs": ("jaxdd.distill", "many_runs"),
    "KDEConfig": ("jaxdd.weighting", "KDEConfig"),
    "real_data": ("jaxdd.distill", "real_data"),
    # evaluation: protocols, the trainer, the entry point
    "get_protocol": ("jaxdd.protocols", "get_protocol"),
    "train_fresh": ("jaxdd.train", "train_fresh"),
    "evaluate_synset": ("jaxdd.evaluate", "evaluate_synset"),
    # artifacts and runs
    "save_synset": ("jaxdd.synset", "save"),
    "load_synset": ("jaxdd.security.signing", "load_synset"),
    "RunConfig": ("jaxdd.config", "RunConfig"),
    "PRESETS": ("jaxdd.config", "PRESETS"),
    "run": ("jaxdd.runs", "run"),
    "reproduce": ("jaxdd.runs", "reproduce"),
}

__all__ = sorted(_API)

# Submodules are attributes too; a submodule name always means the module
# (``jaxdd.evaluate`` is the module, its main function is
# ``jaxdd.evaluate_synset``), whatever has been imported before. Evaluation is
# split by concern: ``protocols`` (the recipes), ``tasks`` (what is trained),
# ``train`` (the one trainer), ``metrics`` (group accuracies), ``results``
# (EvalResult) and ``evaluate`` (the entry points).
# ``policy`` holds the CPU/accelerator layout choices (jaxdd.policy.use pins one).
_SUBMODULES = ("augment", "baselines", "cli", "data", "debias", "diagnostics",
               "distill", "evaluate", "layers", "matching", "metrics", "models", "parallel",
               "policy", "protocols", "results", "runs", "structs", "surrogate", "synset",
               "tasks", "train", "weighting")


def __getattr__(name: str) -> Any:
  if name in _SUBMODULES:
    return importlib.import_module(f"jaxdd.{name}")
  if name in _API:
    module, attr = _API[name]
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value
  raise AttributeError(f"module 'jaxdd' has no attribute {name!r}")


def __dir__() -> list[str]:
  return sorted(set(globals()) | set(_API) | set(_SUBMODULES))
