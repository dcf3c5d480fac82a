"""Value-equal partial application.

A compiled program is keyed on its static arguments, so a function that builds
one must compare and hash by *what* it computes. ``functools.partial`` and
closures compare by identity: two equal calls of a factory would give two
programs. :func:`bound` binds arguments to a module-level function and compares
(and hashes) by the function and the bound values.

Example:
  >>> def scale(a, x, *, offset=0):
  ...   return a * x + offset
  >>> bound(scale, 2) == bound(scale, 2), bound(scale, 2)(3), bound(scale, 2, offset=1)(3)
  (True, 6, 7)
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable


@dataclasses.dataclass(frozen=True)
class Bound:
  """``fn`` with leading positional ``args`` and keyword ``kwargs`` (sorted
  ``(name, value)`` pairs) bound; see :func:`bound`."""
  fn: Callable[..., Any]
  args: tuple = ()
  kwargs: tuple = ()

  def __call__(self, *more, **kwargs):
    return self.fn(*self.args, *more, **dict(self.kwargs), **kwargs)

  def lower(self, *more, **kwargs):
    """For a ``jax.jit`` function: its lowering for the bound and the given arguments."""
    return self.fn.lower(*self.args, *more, **dict(self.kwargs), **kwargs)


def bound(fn: Callable[..., Any], *args, **kwargs) -> Bound:
  """``fn`` with ``args`` (first) and ``kwargs`` bound; equal (and hashing equal) for the
  same ``fn`` and equal bound values, which must be hashable."""
  return Bound(fn, tuple(args), tuple(sorted(kwargs.items())))
