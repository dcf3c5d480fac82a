"""The checks of a run that need the library or the machine, made before anything is written.

:class:`jaxdd.config.RunConfig` checks every field itself without importing the library
(its choice lists are literals that ``tests/test_config.py`` compares with the library's
registries); what only the library can say, such as whether ``eval_model`` is a model spec
or a gradient-matching run's loop counts, is checked here, with the library's messages. So is
what only the machine can say: whether the devices of ``--devices`` are there and split the
batch (:func:`mesh_shape`), and whether an output path can be written (:func:`check_writable`).
Every command makes these checks before its first write, so a refused command leaves nothing.
"""
from __future__ import annotations

import os

import jax
import numpy as np

from jaxdd import distill, models
from jaxdd.config import ExecutionConfig, RunConfig


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


def device_count(execution: ExecutionConfig) -> int:
  """The devices ``execution.devices`` names (``execution``: a run's ``config.execution``),
  refused (ValueError naming the fix) when they are not visible or, across processes, not
  every process's; needs no data.

  >>> from jaxdd.config import get_config
  >>> device_count(get_config("smoke").execution)
  1
  """
  available = len(jax.devices())
  n = available if execution.devices == "all" else int(execution.devices)
  if n == 1:
    return 1
  if n > available:
    raise ValueError(f"--devices {n}: only {available} devices are visible; lower it or use "
                     "--devices all")
  if jax.process_count() > 1 and n != available:
    raise ValueError(f"--devices {n}: across {jax.process_count()} processes the mesh takes "
                     f"every process's devices; use --devices all ({available})")
  return n


def mesh_shape(execution: ExecutionConfig, num_classes: int,
               real_per_class: int) -> tuple[int, int] | None:
  """``(class shards, real-batch shards)`` of ``execution.devices`` (a run's
  ``config.execution``); None for one device.

  The class axis takes the largest divisor of the device count that divides the class
  count, the real-batch axis the rest, which must divide ``real_per_class`` (the run's).
  Raises a ValueError naming the fix when the devices are not visible or do not split the
  batch.

  >>> from jaxdd.config import get_config
  >>> config = get_config("smoke")
  >>> mesh_shape(config.execution, 10, config.real_per_class) is None
  True
  """
  n = device_count(execution)
  if n == 1:
    return None
  cls = max(d for d in range(1, n + 1) if n % d == 0 and num_classes % d == 0)
  real = n // cls
  if real_per_class % real:
    raise ValueError(f"--devices {n} splits into {cls} class x {real} real-batch shards, and "
                     f"real_per_class={real_per_class} is not a multiple of {real}; "
                     "change one of them")
  return cls, real


def machine_memory() -> int:
  """Bytes a step's arrays may take: the memory limit of this process's first device where it
  reports one (GPU, TPU), else the host's physical memory. (Only a process's own devices report
  their memory: in a run of several processes, ``jax.devices()[0]`` may be another's.)"""
  stats = jax.local_devices()[0].memory_stats() or {}
  if stats.get("bytes_limit"):
    return int(stats["bytes_limit"])
  return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def real_batch_bytes(num_classes: int, per_class: int, image_shape: tuple[int, ...],
                     width: int) -> int:
  """A lower bound of the memory a step's real batch takes: its float32 images and the first
  ConvNet block's three maps per image (convolution, normalisation, activation: ``width``
  channels at the image's size). The whole step takes more.

  >>> real_batch_bytes(10, 256, (28, 28, 1), 128) // 2**20   # DM's real batch on MNIST: MiB
  2947
  """
  side = int(np.prod(image_shape[:-1]))
  return num_classes * per_class * 4 * side * (image_shape[-1] + 3 * width)


def check_writable(path: str, *, file: bool = False) -> None:
  """Refuses an output path that cannot be written, before any work (reads only).

  ``path`` is a directory to create or write into (``file=True``: a file to create or
  replace). Its nearest existing ancestor must be a directory this process may write;
  the errors are the ones the first write would raise (a file in the way, permission
  denied), so the command line reports them alike.

  >>> check_writable(".")
  """
  path = os.path.abspath(path)
  if os.path.isdir(path):
    if file:
      raise IsADirectoryError(21, "Is a directory", path)
  elif os.path.lexists(path):
    if not file:
      raise FileExistsError(17, "File exists", path)
    path = os.path.dirname(path)
  probe = path if os.path.isdir(path) else os.path.dirname(path)
  while not os.path.lexists(probe) and os.path.dirname(probe) != probe:
    probe = os.path.dirname(probe)
  if not os.path.isdir(probe):
    raise NotADirectoryError(20, "Not a directory", probe)
  if not os.access(probe, os.W_OK | os.X_OK):
    raise PermissionError(13, "Permission denied", probe)
