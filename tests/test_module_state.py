"""The library below the runs layer keeps no module-level mutable state and donates nothing.

Two checks. A static one reads every module of the library layers (everything but
``jaxdd.runs`` and ``jaxdd.cli``): no ``functools`` cache, no ``global`` statement, no
module-level list, dict or set that the module mutates, and no ``donate_argnums`` /
``donate_argnames``. A dynamic one runs the public API (a DM + KDE distillation, the
surrogate, evaluation with progress, the KDE weights, DSA) and checks that no module-level
container of the library changed. The one documented exception is :mod:`jaxdd.progress`,
whose quiet switch and progress bars are host-side display state that no computation reads,
and the data layer's memo of decoded sources (keyed by content checksum: speed only).
"""
from __future__ import annotations

import ast
import dataclasses
import importlib
import pathlib
import pkgutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdd

ROOT = pathlib.Path(jaxdd.__file__).parent
ABOVE_LIBRARY = ("runs", "cli", "__main__")
# (module, name) pairs allowed to change, each with its reason (see the module docstring).
ALLOWED = {("jaxdd.progress", "_SINKS"): "the bars that running programs report epochs to",
           ("jaxdd.progress", "_QUIET"): "the quiet switch (set_quiet)",
           ("jaxdd.data.support", "_POOL_MEMO"):
               "at most 4 decoded source pools keyed by their content's sha256: speed only"}
MUTATORS = {"append", "extend", "insert", "pop", "remove", "clear", "update", "setdefault",
            "add", "discard", "popitem", "sort", "reverse"}
CONTAINERS = (ast.List, ast.Dict, ast.Set, ast.ListComp, ast.DictComp, ast.SetComp)


def _library_files():
  for path in sorted(ROOT.rglob("*.py")):
    rel = path.relative_to(ROOT)
    if rel.parts[0] in ABOVE_LIBRARY or rel.stem in ABOVE_LIBRARY:
      continue
    yield ("jaxdd." + ".".join(rel.with_suffix("").parts)).removesuffix(".__init__"), path


def _module_containers(tree: ast.Module) -> set[str]:
  names = set()
  for node in tree.body:
    targets, value = [], None
    if isinstance(node, ast.Assign):
      targets, value = node.targets, node.value
    elif isinstance(node, ast.AnnAssign) and node.value is not None:
      targets, value = [node.target], node.value
    func = value.func if isinstance(value, ast.Call) else None
    func_name = (func.id if isinstance(func, ast.Name) else
                 func.attr if isinstance(func, ast.Attribute) else None)
    is_container = isinstance(value, CONTAINERS) or func_name in (
        "list", "dict", "set", "defaultdict", "OrderedDict", "deque", "Counter")
    if is_container:
      names.update(t.id for t in targets if isinstance(t, ast.Name))
  return names


def _findings(module: str, tree: ast.Module) -> list[str]:
  out = []
  containers = _module_containers(tree)

  def flag(node, what):
    out.append(f"{module}:{node.lineno}: {what}")

  for node in ast.walk(tree):
    if isinstance(node, ast.Global) and not all((module, n) in ALLOWED for n in node.names):
      flag(node, f"global {', '.join(node.names)}")
    if isinstance(node, ast.Attribute) and node.attr in ("lru_cache", "cache", "cached_property"):
      flag(node, f"functools.{node.attr}")
    if isinstance(node, ast.keyword) and node.arg in ("donate_argnums", "donate_argnames"):
      flag(node, node.arg)
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
        and node.func.attr in MUTATORS and isinstance(node.func.value, ast.Name)
        and node.func.value.id in containers and (module, node.func.value.id) not in ALLOWED):
      flag(node, f"{node.func.value.id}.{node.func.attr}(...) on a module-level container")
    targets = (node.targets if isinstance(node, (ast.Assign, ast.Delete)) else
               [node.target] if isinstance(node, ast.AugAssign) else [])
    for t in targets:
      if (isinstance(t, ast.Subscript) and isinstance(t.value, ast.Name)
          and t.value.id in containers and (module, t.value.id) not in ALLOWED):
        flag(node, f"{t.value.id}[...] written on a module-level container")
  return out


def test_the_checker_finds_each_kind_of_state():
  source = """
import functools
_SEEN = {}
_STACK: list = []
@functools.lru_cache(maxsize=8)
def f(x):
  global _N
  _SEEN[x] = 1
  _STACK.append(x)
  return jax.jit(g, donate_argnums=0)
"""
  found = _findings("jaxdd.example", ast.parse(source))
  kinds = sorted(f.split(": ", 1)[1].split("(")[0].split("[")[0] for f in found)
  assert kinds == ["_SEEN", "_STACK.append", "donate_argnums", "functools.lru_cache",
                   "global _N"], found


def test_no_module_level_state_or_donation_below_the_runs_layer():
  files = list(_library_files())
  assert len(files) > 90 and not any(m.startswith(("jaxdd.runs", "jaxdd.cli")) for m, _ in files)
  found = [f for module, path in files for f in _findings(module, ast.parse(path.read_text()))]
  assert not found, "module-level state in the library layers:\n" + "\n".join(found)


def _snapshot():
  """Every module-level list, dict and set of the imported library modules, copied."""
  snap = {}
  for info in pkgutil.walk_packages(jaxdd.__path__, "jaxdd."):
    if info.name.split(".")[1] in ABOVE_LIBRARY:
      continue
    module = importlib.import_module(info.name)
    for name, value in vars(module).items():
      if type(value) in (list, dict, set) and (info.name, name) not in ALLOWED:
        snap[(info.name, name)] = (value, type(value)(value))
  return snap


def test_the_api_changes_no_module_level_container():
  from jaxdd import augment, distill, models, progress, surrogate, weighting
  from jaxdd.evaluate import evaluate_synset
  from jaxdd.protocols import Protocol
  from jaxdd.structs import Batch

  before = _snapshot()
  rng = np.random.default_rng(0)
  y = np.repeat(np.arange(2), 16)
  x = (rng.normal(size=(32, 8, 8, 3)) + y[:, None, None, None]).astype(np.float32)
  cfg = dataclasses.replace(surrogate.SurrogateConfig.preset("smoke"), epochs=1, batch_size=16)
  params, _ = surrogate.train_surrogate(jax.random.key(0), x, y, config=cfg, progress=False)
  emb = surrogate.embed(params, x, config=cfg)
  weighting.weights(jnp.asarray(emb[:16]), config=weighting.KDEConfig())
  net = models.ConvNet(num_classes=2, width=4, depth=1)
  d = distill.dm(model=net, num_classes=2, ipc=2, real_per_class=8,
                 augment=augment.dsa("crop_flip"), kde_config=distill.KDEConfig(variance=0.5))
  real = distill.real_data(x, y, num_classes=2, embeddings=np.asarray(emb))
  state = d.init(jax.random.key(1), real)
  for _ in range(2):
    state, _ = d.step(state, real)
  syn = state.syn
  quiet = progress.is_quiet()
  progress.set_quiet(False)  # the evaluation reports its epochs through a host callback
  try:
    evaluate_synset(jax.random.key(2), syn, Batch(jnp.asarray(x), jnp.asarray(y)), model=net,
                    num_models=2, protocol=Protocol("tiny", epochs=2, batch_size=4),
                    progress=True)
  finally:
    progress.set_quiet(quiet)
  after = _snapshot()
  changed = [f"{m}.{n}" for (m, n), (value, copy) in after.items()
             if (m, n) in before and (before[(m, n)][0] is not value or value != copy
                                      or value != before[(m, n)][1])]
  assert not changed, f"module-level containers changed: {changed}"
  assert progress._SINKS == []  # every reporting block closed


@pytest.mark.parametrize("factory", ["standard", "lff", "dfa", "selecmix", "weighted_ce",
                                     "supcon", "dsa"])
def test_equal_arguments_give_equal_values_that_share_programs(factory):
  from jaxdd import augment, debias, models, surrogate, tasks
  from jaxdd.distill import experts
  net = lambda: models.ConvNet(num_classes=2, width=4)  # noqa: E731
  make = {"standard": lambda: tasks.standard_task(net()),
          "lff": lambda: debias.lff_task(net(), q=0.5),
          "dfa": lambda: debias.dfa_task(net(), swap_start=0.3),
          "selecmix": lambda: debias.selecmix_task(net(), tau=0.1),
          "weighted_ce": lambda: experts.weighted_ce_task(net()),
          "supcon": lambda: surrogate.supcon_task(surrogate.SurrogateConfig.preset("smoke")),
          "dsa": lambda: augment.dsa("color_crop", siamese=False)}[factory]
  a, b = make(), make()
  assert a is not b and a == b and hash(a) == hash(b)
