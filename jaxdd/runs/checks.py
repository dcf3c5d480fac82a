"""The checks of a run config that need the library, made before anything is written.

:class:`jaxdd.config.RunConfig` checks every field itself without importing the library
(its choice lists are literals that ``tests/test_config.py`` compares with the library's
registries); what only the library can say, such as whether ``eval_model`` is a model spec
or a gradient-matching run's loop counts, is checked here, with the library's messages.
"""
from __future__ import annotations

from jaxdd import distill, models
from jaxdd.config import RunConfig


def check_config(config: RunConfig) -> None:
  """Raises the library's ValueError for a config it cannot run.

  Example:
    >>> from jaxdd.config import get_config
    >>> check_config(get_config("smoke", eval_model="convnet-d2-w8"))
    >>> check_config(get_config("smoke", eval_model="transformer"))
    Traceback (most recent call last):
      ...
    ValueError: bad architecture spec 'transformer': unknown architecture 'transformer'. ...
  """
  models.get(config.eval_model, num_classes=2)
  if config.method in ("dsa", "dc"):
    distill.gm_loops(config.ipc, config.outer_loop, config.inner_loop)
