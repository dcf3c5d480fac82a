"""The version of the code a run records (package version and git commit), and the machine a
measurement names."""
from __future__ import annotations

import configparser
import functools
import os
import platform
from importlib import metadata

import jax

#: The directory above the package: a git checkout when run from one.
_CHECKOUT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@functools.cache
def code_version() -> str:
  """The package version plus the git commit when run from a checkout, read once per process
  (and :mod:`jaxdd.runs` reads it on import), so that a long run records the commit of the
  code it loaded, not one committed while it ran. A copy of a checkout without its ``.git``
  (a work tree sent to another machine) names its commit in ``$JAXDD_COMMIT``."""
  try:
    version = metadata.version("jaxdd")
  except metadata.PackageNotFoundError:  # a checkout run in place (not installed)
    version = _checkout_version()
  head = os.path.join(_CHECKOUT, ".git", "HEAD")
  try:
    with open(head) as f:
      ref = f.read().strip()
    if ref.startswith("ref: "):
      with open(os.path.join(os.path.dirname(head), ref[5:])) as f:
        ref = f.read().strip()
    return f"{version}+g{ref[:10]}"
  except OSError:
    commit = os.environ.get("JAXDD_COMMIT", "").strip()
    return f"{version}+g{commit[:10]}" if commit else version


def _checkout_version() -> str:
  """The version ``setup.cfg`` of the checkout declares, or ``unknown``."""
  parser = configparser.ConfigParser()
  try:
    parser.read(os.path.join(_CHECKOUT, "setup.cfg"))
    return parser.get("metadata", "version", fallback="unknown")
  except configparser.Error:
    return "unknown"


code_version()  # the commit of the code this process loads


def short_commit() -> str:
  """The commit of :func:`code_version` as the results tables name it, its first 7 hex
  digits (``0.1.0+g472b6e4816`` -> ``472b6e4``); without a commit, the version's first 7
  characters."""
  return code_version().split("+g")[-1][:7]


def machine() -> str:
  """The machine a measurement ran on, as the results tables name it: the accelerator when
  JAX has one (``1 x NVIDIA H100 80GB HBM3``), else the CPU's cores and model and whether it
  has AVX-512 (``2-core AMD EPYC (AVX-512), CPU``)."""
  dev = jax.devices()[0]
  if dev.platform != "cpu":
    return f"{jax.device_count()} x {dev.device_kind}"
  try:
    with open("/proc/cpuinfo") as f:
      info = f.read()
  except OSError:
    return f"{os.cpu_count()}-core {platform.machine()}, CPU"
  name = next((ln.split(":", 1)[1].strip() for ln in info.splitlines()
               if ln.startswith("model name")), platform.machine())
  return f"{os.cpu_count()}-core {name}{' (AVX-512)' if ' avx512f' in info else ''}, CPU"
