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
  commit = head_commit(_CHECKOUT) or os.environ.get("JAXDD_COMMIT", "").strip()
  return f"{version}+g{commit[:10]}" if commit else version


def head_commit(checkout: str) -> str | None:
  """The commit checked out in the git work tree ``checkout``, read from its files (no git
  program needed), or None when it is not one: a clone (``.git`` a folder) or a work tree
  that ``git worktree add`` made (``.git`` a file naming its folder, whose branches live in
  the main repository's), the branch's ref loose or packed."""
  dotgit = os.path.join(checkout, ".git")
  try:
    if os.path.isfile(dotgit):
      with open(dotgit) as f:
        gitdir = f.read().strip().removeprefix("gitdir:").strip()
      gitdir = os.path.join(checkout, gitdir)  # an absolute path stays as it is
    else:
      gitdir = dotgit
    with open(os.path.join(gitdir, "HEAD")) as f:
      ref = f.read().strip()
    if not ref.startswith("ref: "):
      return ref or None  # a detached HEAD names its commit
    ref = ref[5:]
    common = gitdir
    if os.path.isfile(os.path.join(gitdir, "commondir")):
      with open(os.path.join(gitdir, "commondir")) as f:
        common = os.path.join(gitdir, f.read().strip())
    for folder in dict.fromkeys((gitdir, common)):
      if os.path.isfile(os.path.join(folder, ref)):
        with open(os.path.join(folder, ref)) as f:
          return f.read().strip() or None
    with open(os.path.join(common, "packed-refs")) as f:
      for line in f:
        parts = line.split()
        if len(parts) == 2 and parts[1] == ref:
          return parts[0]
  except OSError:
    return None
  return None


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
