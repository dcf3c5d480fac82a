"""Orbax checkpoints of the distillation state: save, restore, fall back to an older one."""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp

from jaxdd import distill, parallel
from jaxdd import progress as progress_lib
from jaxdd.structs import SynSet


def _orbax():
  """orbax.checkpoint, imported when a run first checkpoints (it is slow to import)."""
  import orbax.checkpoint as ocp  # noqa: PLC0415  (orbax: heavy, loaded when a run starts)
  return ocp


def checkpointer(workdir: str):
  """The orbax CheckpointManager of ``<workdir>/checkpoints`` (the last two steps kept)."""
  ocp = _orbax()
  extra = {}
  root = os.path.abspath(os.path.join(workdir, "checkpoints"))
  if jax.process_count() > 1:  # each process checkpoints its own host copy, in its own workdir
    i = jax.process_index()
    os.makedirs(root, exist_ok=True)  # orbax creates it only when every process takes part
    extra["multiprocessing_options"] = ocp.options.MultiprocessingOptions(
        primary_host=i, active_processes={i}, barrier_sync_key_prefix=f"jaxdd-process-{i}")
    extra["create"] = False
  return ocp.CheckpointManager(
      root,
      options=ocp.CheckpointManagerOptions(max_to_keep=2, enable_async_checkpointing=False,
                                           **extra))


def state_tree(state: distill.DistillState) -> dict:
  """The checkpointed tree of a distillation state: host arrays, the key as its data."""
  h = parallel.host  # gathers arrays sharded over several processes
  tree = {"images": h(state.syn.images), "labels": h(state.syn.labels),
          "opt": [h(x) for x in jax.tree.leaves(state.opt_state)],
          "step": h(state.step), "key": h(jax.random.key_data(state.key))}
  if jax.tree.leaves(state.extra):  # what a method learns besides the images (MTT's syn_lr)
    tree["extra"] = [h(x) for x in jax.tree.leaves(state.extra)]
  return tree


def restore_state(tree: dict, template: distill.DistillState) -> distill.DistillState:
  """The distillation state of a restored :func:`state_tree`, shaped like ``template``."""
  opt = jax.tree.unflatten(jax.tree.structure(template.opt_state),
                           [jnp.asarray(x) for x in tree["opt"]])
  extra = template.extra
  if "extra" in tree:
    extra = jax.tree.unflatten(jax.tree.structure(template.extra),
                               [jnp.asarray(x) for x in tree["extra"]])
  return distill.DistillState(SynSet(jnp.asarray(tree["images"]), jnp.asarray(tree["labels"])), opt,
                              jnp.asarray(tree["step"]),
                              jax.random.wrap_key_data(jnp.asarray(tree["key"])), extra)


def restore_newest(mngr, state: distill.DistillState, workdir: str,
                   upto: int | None = None) -> tuple[distill.DistillState, int]:
  """The newest checkpoint (of step <= ``upto``) that restores (an unreadable one is
  skipped, and said so); ``(state, 0)`` when there is none."""
  ocp = _orbax()
  steps = sorted((s for s in mngr.all_steps() if upto is None or s <= upto), reverse=True)
  for i, step in enumerate(steps):
    try:
      tree = mngr.restore(step, args=ocp.args.StandardRestore(state_tree(state)))
      restored = restore_state(tree, state)
      if int(restored.step) != step:
        raise ValueError(f"it holds step {int(restored.step)}")
    except Exception as e:  # noqa: BLE001  (any damage: fall back to an older checkpoint)
      older = f"falling back to step {steps[i + 1]}" if i + 1 < len(steps) else "starting over"
      progress_lib.logger.warning("%s: checkpoint %d cannot be restored (%s: %s); %s", workdir,
                                  step, type(e).__name__, str(e).splitlines()[0][:200] if str(e)
                                  else "", older)
      continue
    if i:
      progress_lib.logger.warning("%s: resumed from the older checkpoint %d", workdir, step)
    return restored, step
  return state, 0


def save(mngr, step: int, state, *, force: bool = False) -> None:
  """Checkpoints ``state`` as step ``step`` and waits until it is on disk."""
  ocp = _orbax()
  mngr.save(step, args=ocp.args.StandardSave(state_tree(state)), force=force)
  mngr.wait_until_finished()
