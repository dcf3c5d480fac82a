"""The random keys of a run, all derived from its seed in one fixed order."""
from __future__ import annotations

import jax

from jaxdd.config import RunConfig


def baseline_keys(config: RunConfig) -> tuple[jax.Array, jax.Array]:
  """(subset selection, evaluation) keys of the baselines of a run's seed."""
  return tuple(jax.random.split(jax.random.key(config.seed), 3)[1:])


def run_keys(config: RunConfig) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """(surrogate, distillation init, evaluation, diagnostics) keys of a run's seed."""
  return seed_keys(config.seed)


def seed_keys(seed: int) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """:func:`run_keys` of a run whose seed is ``seed``."""
  return tuple(jax.random.split(jax.random.key(seed), 4))


def expert_key(config: RunConfig) -> jax.Array:
  """The key of a run's expert trajectories (independent of its distillation's)."""
  return jax.random.fold_in(seed_keys(config.seed)[1], 1)


def pseudo_group_key(config: RunConfig) -> jax.Array:
  """The key of a run's k-means pseudo-groups (``--weighting fairdd_pseudo``), folded from
  its surrogate key so that no other key of the run moves."""
  return jax.random.fold_in(seed_keys(config.seed)[0], 1)


def biased_key(config: RunConfig) -> jax.Array:
  """The key of a run's bias-amplified classifier (``--weighting gce``, ``jtt``,
  ``--kde-features biased``), folded from its surrogate key as :func:`pseudo_group_key` is, so
  that no other key of the run moves."""
  return jax.random.fold_in(seed_keys(config.seed)[0], 2)
