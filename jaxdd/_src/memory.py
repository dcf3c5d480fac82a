"""How much more memory this process may take: the least of what the machine has available,
what its control group still allows and what its address-space limit leaves.

Readers of untrusted files (:func:`jaxdd.synset.load`) size what they would unpack against
:func:`available_bytes` before allocating it, so an archive that unpacks to more than the
machine can hold is refused in one line instead of being killed by the kernel or the
container's memory cap without one.

Example:
  >>> available_bytes() is None or available_bytes() > 0
  True
"""
from __future__ import annotations

import os
import resource


def _read(path: str) -> str | None:
  try:
    with open(path) as f:
      return f.read().strip()
  except (OSError, ValueError):
    return None


def _meminfo_available() -> int | None:
  """``MemAvailable`` of ``/proc/meminfo`` in bytes (Linux), else None."""
  text = _read("/proc/meminfo")
  for line in (text or "").splitlines():
    if line.startswith("MemAvailable:"):
      return int(line.split()[1]) * 1024
  return None


def _cgroup_headroom() -> int | None:
  """What this process's control group (v2, else v1) still allows, in bytes; None when it
  sets no limit or there is none to read."""
  rel = None
  for line in (_read("/proc/self/cgroup") or "").splitlines():
    parts = line.split(":", 2)
    if len(parts) == 3 and parts[0] == "0":  # v2: "0::/path"
      rel = parts[2]
  if rel is not None:
    base = os.path.join("/sys/fs/cgroup", rel.lstrip("/"))
    limit, used = (_read(os.path.join(base, "memory.max")),
                   _read(os.path.join(base, "memory.current")))
  else:
    base = "/sys/fs/cgroup/memory"
    limit, used = (_read(os.path.join(base, "memory.limit_in_bytes")),
                   _read(os.path.join(base, "memory.usage_in_bytes")))
  if not limit or not limit.isdigit() or not used or not used.isdigit():
    return None  # "max", or nothing to read
  if int(limit) >= 2**60:  # v1's "no limit"
    return None
  return max(0, int(limit) - int(used))


def _address_space_headroom() -> int | None:
  """What ``RLIMIT_AS`` (``ulimit -v``) leaves above this process's current size."""
  soft, _ = resource.getrlimit(resource.RLIMIT_AS)
  if soft == resource.RLIM_INFINITY:
    return None
  statm = _read("/proc/self/statm")
  size = int(statm.split()[0]) * resource.getpagesize() if statm else 0
  return max(0, soft - size)


def available_bytes() -> int | None:
  """The most bytes this process can still allocate, as far as the machine says: the least
  of ``MemAvailable``, the control group's headroom and the address-space limit's; None
  where none of them can be read (then nothing is bounded by it)."""
  known = [b for b in (_meminfo_available(), _cgroup_headroom(), _address_space_headroom())
           if b is not None]
  return min(known) if known else None
