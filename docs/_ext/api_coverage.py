"""A Sphinx extension: warn (an error under ``-W``) for every public jaxdd name the API misses.

A public name is a function or class defined in a module of the ``jaxdd`` package whose path has
no part starting with an underscore; where a module lists ``__all__``, its public names are
those of ``__all__`` defined in it. Re-exported names are documented where they are defined.
"""
from __future__ import annotations

import importlib
import inspect
import pkgutil

from sphinx.util import logging

logger = logging.getLogger(__name__)


def public_modules(package: str = "jaxdd") -> list[str]:
  """Every importable module of ``package`` whose dotted path has no ``_``-prefixed part."""
  pkg = importlib.import_module(package)
  names = [package]
  for info in pkgutil.walk_packages(pkg.__path__, prefix=package + "."):
    if not any(part.startswith("_") for part in info.name.split(".")):
      names.append(info.name)
  return sorted(names)


def public_names(module_name: str) -> list[str]:
  """The fully qualified public functions and classes defined in one module."""
  mod = importlib.import_module(module_name)
  listed = getattr(mod, "__all__", None)
  names = listed if listed is not None else [n for n in vars(mod) if not n.startswith("_")]
  out = []
  for name in names:
    obj = getattr(mod, name, None)
    if obj is None or not (inspect.isclass(obj) or callable(obj)):
      continue
    if inspect.ismodule(obj) or getattr(obj, "__module__", None) != module_name:
      continue
    out.append(f"{module_name}.{name}")
  return out


def check(app, env) -> None:
  documented = set(env.domains["py"].objects)
  missing = [n for m in public_modules() for n in public_names(m) if n not in documented]
  for name in missing:
    logger.warning("public name missing from the API reference: %s", name)


def write_toplevel(app) -> None:
  """Writes ``api/toplevel.md``: every name ``import jaxdd`` exposes, linked to where it is
  defined (generated at each build from ``jaxdd._API``, so it cannot drift)."""
  import os

  import jaxdd
  rows = []
  for name in sorted(jaxdd._API):
    module, attr = jaxdd._API[name]
    obj = getattr(importlib.import_module(module), attr)
    where = getattr(obj, "__module__", None)
    if inspect.isclass(obj) or inspect.isfunction(obj):
      target = f"{where}.{obj.__qualname__}"
      rows.append(f"| `jaxdd.{name}` | {{py:obj}}`{target}` |")
    else:
      rows.append(f"| `jaxdd.{name}` | `{module}.{attr}` |")
  text = "\n".join([
      "# The top-level names", "",
      "`import jaxdd` is cheap: each name below is imported on first use from the module that",
      "defines it, where it is documented.", "",
      "| name | defined as |", "|---|---|", *rows, ""])
  path = os.path.join(app.srcdir, "api", "toplevel.md")
  old = open(path).read() if os.path.exists(path) else None
  if old != text:
    with open(path, "w") as f:
      f.write(text)


def setup(app):
  app.connect("builder-inited", write_toplevel)
  app.connect("env-check-consistency", check)
  return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
