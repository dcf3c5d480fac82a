"""The version of the code a run records (package version and git commit)."""
from __future__ import annotations

import functools
import os
from importlib import metadata

#: The directory above the package: a git checkout when run from one.
_CHECKOUT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@functools.cache
def code_version() -> str:
  """The package version plus the git commit when run from a checkout, read once per process
  (and :mod:`jaxdd.runs` reads it on import), so that a long run records the commit of the
  code it loaded, not one committed while it ran."""
  try:
    version = metadata.version("jaxdd")
  except metadata.PackageNotFoundError:
    version = "unknown"
  head = os.path.join(_CHECKOUT, ".git", "HEAD")
  try:
    with open(head) as f:
      ref = f.read().strip()
    if ref.startswith("ref: "):
      with open(os.path.join(os.path.dirname(head), ref[5:])) as f:
        ref = f.read().strip()
    return f"{version}+g{ref[:10]}"
  except OSError:
    return version


code_version()  # the commit of the code this process loads
