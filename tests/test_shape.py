"""The shape of the library, measured on its source: module and function sizes, imports, cycles.

The layers themselves are checked by ``lint-imports`` (contracts in pyproject.toml); these
tests measure what it does not: no module over 600 lines, no function body over 80 lines (its
docstring not counted), at most 15 imports inside functions and each one commented, no import
cycle between modules (also inside a layer), how far a run's configuration travels before
the compiled step (at most 5 modules), and its walk through the distillation loop (at most 15
functions hold it, at most 2 of them called back from below; docs/architecture.md).
"""
from __future__ import annotations

import ast
import os
import sys

import pytest

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "jaxdd")


def _modules():
  for folder, _, files in os.walk(ROOT):
    for name in sorted(files):
      if name.endswith(".py"):
        path = os.path.join(folder, name)
        rel = os.path.relpath(path, os.path.dirname(ROOT))[:-3].replace(os.sep, ".")
        yield rel.removesuffix(".__init__"), path


def _source(path):
  with open(path) as f:
    return f.read()


def _body_lines(fn: ast.FunctionDef) -> int:
  body = fn.body
  if (body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
      and isinstance(body[0].value.value, str)):
    body = body[1:]
  if not body:
    return 0
  return body[-1].end_lineno - body[0].lineno + 1


def test_no_module_over_600_lines():
  long = {mod: n for mod, path in _modules() if (n := len(_source(path).splitlines())) > 600}
  assert not long, f"modules over 600 lines: {long}"


def test_no_function_body_over_80_lines():
  long = {}
  for mod, path in _modules():
    for node in ast.walk(ast.parse(_source(path))):
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and _body_lines(node) > 80:
        long[f"{mod}:{node.name}"] = _body_lines(node)
  assert not long, f"function bodies over 80 lines: {long}"


def _function_imports():
  for mod, path in _modules():
    lines = _source(path).splitlines()
    for node in ast.walk(ast.parse(_source(path))):
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        for inner in ast.walk(node):
          if isinstance(inner, (ast.Import, ast.ImportFrom)):
            yield mod, inner.lineno, lines[inner.lineno - 1], lines[inner.lineno - 2]


def test_imports_inside_functions_are_few_and_say_why():
  found = list(_function_imports())
  assert len(found) <= 15, [f"{m}:{n}" for m, n, _, _ in found]
  silent = [f"{m}:{n}" for m, n, line, before in found
            if "#" not in line and not before.strip().startswith("#")]
  assert not silent, f"imports inside functions without a comment saying why: {silent}"


def _import_graph():
  names = {mod for mod, _ in _modules()}
  graph = {}
  for mod, path in _modules():
    package = mod if path.endswith("__init__.py") else mod.rsplit(".", 1)[0]
    deps = set()
    for node in ast.parse(_source(path)).body:  # module level only: what importing runs
      targets = []
      if isinstance(node, ast.Import):
        targets = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
          base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1]
                          + ([base] if base else []))
        targets = [base] + [f"{base}.{a.name}" for a in node.names]
      for t in targets:
        while t and t not in names:
          t = t.rpartition(".")[0]
        if t and t != mod and not mod.startswith(t + "."):  # a package's own parents
          deps.add(t)
    graph[mod] = deps
  return graph


def test_no_import_cycle():
  graph = _import_graph()
  state, cycles = {}, []

  def visit(mod, stack):
    state[mod] = "open"
    for dep in sorted(graph.get(mod, ())):
      if state.get(dep) == "open":
        cycles.append(stack[stack.index(dep):] + [dep])
      elif dep not in state:
        visit(dep, stack + [dep])
    state[mod] = "done"

  for mod in sorted(graph):
    if mod not in state:
      visit(mod, [mod])
  # A package importing its own submodules in __init__ is not a cycle of the code's layers.
  real = [c for c in cycles if not all(m.startswith(c[0]) or c[0].startswith(m) for m in c)]
  assert not real, f"import cycles: {real}"


def _run_traced(argv, profile) -> None:
  """``jaxdd`` with ``argv``, every Python call and return seen by ``profile`` (sys.setprofile)."""
  from jaxdd import cli
  sys.setprofile(profile)
  try:
    assert cli.main(argv) == 0
  finally:
    sys.setprofile(None)


def _smoke_kde(tmp_path) -> list[str]:
  """The traced run: the smoke preset's DM + KDE, quiet."""
  return ["distill", "--preset", "smoke", "--weighting", "kde", "--workdir",
          str(tmp_path / "run"), "--quiet"]


def _config_path(argv) -> list[str]:
  """The jaxdd modules that carry the RunConfig to the method: on every entry into
  ``jaxdd.distill`` (building the distiller, stepping it), the modules of the calling frames
  that hold the RunConfig, the command line and ``jaxdd.config`` itself not counted."""
  from jaxdd.config import RunConfig

  path: list[str] = []

  def profile(frame, event, arg):
    if event != "call" or not frame.f_globals.get("__name__", "").startswith("jaxdd.distill"):
      return
    caller = frame.f_back
    if caller is not None and caller.f_globals.get("__name__", "").startswith("jaxdd.distill"):
      return  # inside the method already
    while caller is not None:
      name = caller.f_globals.get("__name__", "")
      if (name.startswith("jaxdd.") and not name.startswith(("jaxdd.cli", "jaxdd.config"))
          and name not in path
          and any(isinstance(v, RunConfig) for v in caller.f_locals.values())):
        path.append(name)
      caller = caller.f_back

  _run_traced(argv, profile)
  return path


@pytest.mark.slow
def test_run_config_reaches_the_compiled_step_through_at_most_5_modules(tmp_path):
  path = _config_path(_smoke_kde(tmp_path))
  assert path, "the method was never reached"
  assert len(path) <= 5, path


def _config_walk(argv) -> dict[tuple[str, str], str | None]:
  """The stays of a run's configuration: every jaxdd function outside ``jaxdd.config`` called
  from the entry of ``jaxdd.runs.driver.distill_run`` to its return (itself included) with the
  RunConfig among its arguments or the variables it closes over, once per function
  (module, qualified name), each with the module of its nearest jaxdd caller (outside
  ``jaxdd.config``; None: none)."""
  from jaxdd.config import RunConfig
  from jaxdd.runs import driver

  inside, stays = [0], {}

  def counted(name: str) -> bool:
    return name.startswith("jaxdd.") and not name.startswith("jaxdd.config")

  def profile(frame, event, arg):
    if frame.f_code is driver.distill_run.__code__:
      inside[0] += {"call": 1, "return": -1}.get(event, 0)
    name = frame.f_globals.get("__name__", "")
    if event != "call" or not inside[0] or not counted(name):
      return
    if any(isinstance(v, RunConfig) for v in frame.f_locals.values()):
      caller = frame.f_back
      while caller is not None and not counted(caller.f_globals.get("__name__", "")):
        caller = caller.f_back
      stays.setdefault((name, frame.f_code.co_qualname),
                       None if caller is None else caller.f_globals["__name__"])

  _run_traced(argv, profile)
  return stays


def _imported_by(graph, mod: str) -> set[str]:
  """The modules ``mod`` imports, directly or through others (module level)."""
  seen, todo = set(), [mod]
  while todo:
    for dep in graph.get(todo.pop(), ()):
      if dep not in seen:
        seen.add(dep)
        todo.append(dep)
  return seen


@pytest.mark.slow
def test_a_runs_configuration_stays_in_at_most_15_functions_and_climbs_back_at_most_twice(
    tmp_path):
  # A climb: a stay whose nearest caller is in a module that the stay's module imports, so
  # the configuration is handed back up the import graph (a callback).
  stays = _config_walk(_smoke_kde(tmp_path))
  assert ("jaxdd.runs.driver", "distill_run") in stays, "distill_run was never reached"
  graph = _import_graph()
  assert {"jaxdd.runs.weights", "jaxdd.config"} <= _imported_by(graph, "jaxdd.runs.experts")
  climbs = [f"{mod}:{name} <- {caller}" for (mod, name), caller in stays.items()
            if caller is not None and caller in _imported_by(graph, mod)]
  assert len(stays) <= 15, sorted(stays)
  assert len(climbs) <= 2, climbs
