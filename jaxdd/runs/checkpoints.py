"""Orbax checkpoints of the distillation state: save, restore, fall back to an older one.

Faults around checkpoints end in one line each: Ctrl-C during a save takes effect once the save
is on disk (:func:`save`), the temporary folders of a save that a kill cut short are removed
when the next run starts (:func:`checkpointer`), an unreadable checkpoint is skipped with one
warning naming the step the run resumes from, and a run whose every checkpoint is unreadable is
refused (:class:`CheckpointsDamaged`, exit status 2) rather than started over. Orbax's own log
lines (absl) are dropped under ``--quiet`` and otherwise summed up in one ``jaxdd`` line.
"""
from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import signal
import sys
import threading

import jax
import jax.numpy as jnp

from jaxdd import distill, parallel
from jaxdd import progress as progress_lib
from jaxdd.structs import SynSet


def _orbax():
  """orbax.checkpoint, imported when a run first checkpoints (it is slow to import)."""
  import orbax.checkpoint as ocp  # noqa: PLC0415  (orbax: heavy, loaded when a run starts)
  return ocp


#: What orbax appends to the name of a folder it is still writing (renamed when complete).
TMP_MARK = ".orbax-checkpoint-tmp"

#: Loggers of the checkpoint library (orbax logs through absl), captured during its calls.
LIBRARY_LOGGERS = ("absl", "orbax", "tensorstore")


class CheckpointsDamaged(ValueError):
  """Every checkpoint of a run is unreadable: the run is refused rather than started over."""


class _Capture(logging.Handler):
  def __init__(self):
    super().__init__(logging.WARNING)
    self.records: list[logging.LogRecord] = []

  def emit(self, record):
    self.records.append(record)


@contextlib.contextmanager
def library_logs(say: bool = True):
  """Captures the checkpoint library's log records during the block; with ``say``, one
  ``jaxdd`` warning line sums them up afterwards (dropped under ``--quiet``)."""
  capture = _Capture()
  saved = []
  for name in LIBRARY_LOGGERS:
    lg = logging.getLogger(name)
    saved.append((lg, lg.handlers, lg.propagate))
    lg.handlers, lg.propagate = [capture], False
  try:
    yield capture.records
  finally:
    for lg, handlers, propagate in saved:
      lg.handlers, lg.propagate = handlers, propagate
  if say and capture.records and not progress_lib.is_quiet():
    first = capture.records[0].getMessage().strip().splitlines()
    more = len(capture.records) - 1
    progress_lib.logger.warning("checkpoint library (orbax): %s%s",
                                _short(first[0], 200) if first else "",
                                f" (and {more} more)" if more else "")


def _short(text: str, limit: int = 160) -> str:
  """``text`` cut to at most ``limit`` characters at a word boundary, with "..." when cut (a
  cut in the middle of a word or before a closing bracket read as a broken message).

  >>> _short("a checkpoint file is not readable", 20)
  'a checkpoint file...'
  """
  if len(text) <= limit:
    return text
  head = text[:limit - 3]
  if text[limit - 3] != " ":  # the cut is inside a word: drop that word
    head = head.rsplit(" ", 1)[0]
  return head.rstrip(" ,;:(") + "..."


def _from_checkpoint_library(exc: BaseException | None) -> bool:
  """Whether ``exc`` was raised inside orbax or tensorstore: a frame of its traceback, or
  tensorstore's message (a read's future fails in C, so asyncio's frames are the only ones)."""
  if exc is not None and "tensorstore_spec" in str(exc):
    return True
  tb = getattr(exc, "__traceback__", None)
  while tb is not None:
    name = tb.tb_frame.f_code.co_filename
    if "orbax" in name or "tensorstore" in name:
      return True
    tb = tb.tb_next
  return False


class _AbandonedReadFilter(logging.Filter):
  """Drops asyncio's "Task (or Future) exception was never retrieved" for a read orbax
  abandoned: the failure it reports is the damage restore_newest already says in one line."""

  UNRETRIEVED = ("Task exception was never retrieved", "Future exception was never retrieved")

  def filter(self, record: logging.LogRecord) -> bool:
    message = record.getMessage()
    exc = record.exc_info[1] if record.exc_info else None
    return not (message.startswith(self.UNRETRIEVED)
                and (_from_checkpoint_library(exc) or "tensorstore_spec" in message))


def quiet_abandoned_reads() -> None:
  """Keeps the errors of the reads orbax abandons when a checkpoint is damaged off stderr:
  "Event loop is closed" (they finish after orbax closed its event loop, possibly after the
  restore returned, and tensorstore reports them as unraisable) and asyncio's "Task (or Future)
  exception was never retrieved" for a failed read of orbax's or tensorstore's. Installed
  once, for the rest of the process; every other error is reported as before."""
  asyncio_log = logging.getLogger("asyncio")
  if not any(isinstance(f, _AbandonedReadFilter) for f in asyncio_log.filters):
    asyncio_log.addFilter(_AbandonedReadFilter())
  hook = sys.unraisablehook
  if getattr(hook, "_jaxdd", False):
    return

  def unraisablehook(unraisable):
    if (unraisable.exc_type is RuntimeError
        and "Event loop is closed" in str(unraisable.exc_value)):
      return
    hook(unraisable)
  unraisablehook._jaxdd = True  # type: ignore[attr-defined]
  sys.unraisablehook = unraisablehook


@contextlib.contextmanager
def sigint_deferred():
  """Ctrl-C (SIGINT) during the block takes effect after it: the handler in place before
  gets each deferred signal then. Outside the main thread nothing is changed."""
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  hits = []
  previous = signal.signal(signal.SIGINT, lambda signum, frame: hits.append(signum))
  try:
    yield
  finally:
    signal.signal(signal.SIGINT, previous)
    for _ in hits:
      if callable(previous):
        previous(signal.SIGINT, None)
      elif previous == signal.SIG_DFL:
        os.kill(os.getpid(), signal.SIGINT)


def _no_space(e: BaseException) -> bool:
  """Whether a save failed for a full disk (an OSError, or tensorstore's RESOURCE_EXHAUSTED
  message with the OS error code 28)."""
  if isinstance(e, OSError) and e.errno == errno.ENOSPC:
    return True
  text = str(e)
  return "No space left on device" in text or "os_error_code='28'" in text


def remove_partial(root: str) -> list[str]:
  """Removes the folders of saves that a kill cut short (orbax's temporary names) from
  ``root`` and returns their names."""
  if not os.path.isdir(root):
    return []
  gone = sorted(n for n in os.listdir(root) if TMP_MARK in n)
  for name in gone:
    path = os.path.join(root, name)
    if os.path.isdir(path) and not os.path.islink(path):
      shutil.rmtree(path, ignore_errors=True)
    else:
      os.remove(path)
  return gone


def checkpointer(workdir: str):
  """The orbax CheckpointManager of ``<workdir>/checkpoints`` (the last two steps kept); the
  remains of a save cut short are removed first."""
  ocp = _orbax()
  extra = {}
  root = os.path.abspath(os.path.join(workdir, "checkpoints"))
  gone = remove_partial(root)
  if gone:
    progress_lib.logger.info("%s: removed %d unfinished checkpoint folder(s) of an interrupted "
                             "save", workdir, len(gone))
  if jax.process_count() > 1:  # each process checkpoints its own host copy, in its own workdir
    i = jax.process_index()
    os.makedirs(root, exist_ok=True)  # orbax creates it only when every process takes part
    extra["multiprocessing_options"] = ocp.options.MultiprocessingOptions(
        primary_host=i, active_processes={i}, barrier_sync_key_prefix=f"jaxdd-process-{i}")
    extra["create"] = False
  with library_logs(say=False):  # what it says of damaged checkpoints, restore_newest says
    return ocp.CheckpointManager(
        root,
        options=ocp.CheckpointManagerOptions(max_to_keep=2, enable_async_checkpointing=False,
                                             **extra))


def state_tree(state: distill.DistillState) -> dict:
  """The checkpointed tree of a distillation state: host arrays, the key as its data."""
  h = parallel.host  # gathers arrays sharded over several processes
  tree = {"images": h(state.syn.images), "labels": h(state.syn.labels),
          "opt": [h(x) for x in jax.tree.leaves(state.opt_state)],
          "step": h(state.step), "key": h(distill.run_key_data(state.key))}
  if jax.tree.leaves(state.extra):  # what a method learns besides the images (MTT's syn_lr)
    tree["extra"] = [h(x) for x in jax.tree.leaves(state.extra)]
  return tree


def restore_state(tree: dict, template: distill.DistillState) -> distill.DistillState:
  """The distillation state of a restored :func:`state_tree`, shaped like ``template``,
  whose hyperparameters it keeps (they come from the run's settings, not the checkpoint)."""
  opt = jax.tree.unflatten(jax.tree.structure(template.opt_state),
                           [jnp.asarray(x) for x in tree["opt"]])
  extra = template.extra
  if "extra" in tree:
    extra = jax.tree.unflatten(jax.tree.structure(template.extra),
                               [jnp.asarray(x) for x in tree["extra"]])
  return template._replace(syn=SynSet(jnp.asarray(tree["images"]), jnp.asarray(tree["labels"])),
                           opt_state=opt, step=jnp.asarray(tree["step"]),
                           key=jnp.asarray(tree["key"], jnp.uint32), extra=extra)


def restore_newest(mngr, state: distill.DistillState, workdir: str,
                   upto: int | None = None) -> tuple[distill.DistillState, int]:
  """The newest checkpoint (of step <= ``upto``) that restores; ``(state, 0)`` when there is
  none. Unreadable ones are skipped with one warning that names the step resumed from; when
  none restores, :class:`CheckpointsDamaged`."""
  steps = sorted((s for s in mngr.all_steps() if upto is None or s <= upto), reverse=True)
  damaged, restored = [], None
  if steps:
    quiet_abandoned_reads()
  with library_logs(say=False):  # a damaged checkpoint's own messages: summed up below
    for step in steps:
      try:
        restored = _restore(mngr, step, state)
        break
      except Exception as e:  # noqa: BLE001  (any damage: fall back to an older checkpoint)
        lines = str(e).strip().splitlines()
        damaged.append((step, f"{type(e).__name__}: {_short(lines[0]) if lines else ''}"))
  if restored is not None:
    if damaged:
      progress_lib.logger.warning(
          "%s: checkpoint%s %s cannot be restored (%s); resumed from the older checkpoint %d "
          "(the damaged one%s removed)",
          workdir, "s" if len(damaged) > 1 else "", ", ".join(str(s) for s, _ in damaged),
          damaged[0][1], step, "s" if len(damaged) > 1 else "")
      # A damaged step newer than the one resumed from would count as the newest for the
      # retention of the saves to come (and be kept while the good one is deleted): remove it.
      for s, _ in damaged:
        _delete(mngr, workdir, s)
    return restored, step
  if damaged:
    root = os.path.join(workdir, "checkpoints")
    raise CheckpointsDamaged(
        f"no checkpoint in {root} can be restored (step{'s' if len(damaged) > 1 else ''} "
        f"{', '.join(str(s) for s, _ in damaged)}; {damaged[0][1]}); delete {root} (or move "
        "it aside) to start the distillation over")
  return state, 0


def _delete(mngr, workdir: str, step: int) -> None:
  """Removes checkpoint ``step`` (the manager's own delete, else its folder)."""
  try:
    with library_logs(say=False):
      mngr.delete(step)
  except Exception:  # noqa: BLE001  (a damaged step orbax cannot read: remove its folder)
    shutil.rmtree(os.path.join(workdir, "checkpoints", str(step)), ignore_errors=True)
    mngr.reload()


def _restore(mngr, step: int, state: distill.DistillState) -> distill.DistillState:
  ocp = _orbax()
  tree = mngr.restore(step, args=ocp.args.StandardRestore(state_tree(state)))
  restored = restore_state(tree, state)
  if int(restored.step) != step:
    raise ValueError(f"it holds step {int(restored.step)}")
  return restored


def save(mngr, step: int, state, *, force: bool = False) -> None:
  """Checkpoints ``state`` as step ``step`` and waits until it is on disk; Ctrl-C during the
  save takes effect when it is done (:func:`sigint_deferred`), so no half-written checkpoint
  is left behind (orbax writes to a temporary name and renames it when complete)."""
  ocp = _orbax()
  quiet_abandoned_reads()  # a failed write's abandoned work reports "Event loop is closed" too
  try:
    with sigint_deferred(), library_logs():
      mngr.save(step, args=ocp.args.StandardSave(state_tree(state)), force=force)
      mngr.wait_until_finished()
  except Exception as e:  # noqa: BLE001  (orbax and tensorstore raise several types)
    root = str(mngr.directory)
    remove_partial(root)  # never leave the half-written save behind
    if _no_space(e):
      raise OSError(errno.ENOSPC, "No space left on device while saving checkpoint "
                    f"{step}", root) from None
    raise
