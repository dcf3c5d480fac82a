"""Every docstring example of the jaxdd package runs and prints what it shows.

One test per module, with ``doctest`` (``ELLIPSIS | NORMALIZE_WHITESPACE``), so
``python -m pytest -q tests`` stays the one test command. Examples that would
be slow (training runs, downloads) are marked ``# doctest: +SKIP`` in place.
"""
import doctest
import importlib
import pkgutil

import pytest

import jaxdd

# jaxdd.__main__ is ``python -m jaxdd``; it has no examples.
_NOT_IMPORTABLE = {"jaxdd.__main__"}
# Modules that need an optional extra (setup.cfg [options.extras_require]).
_EXTRAS = {"jaxdd.data.tfds_builders": "tensorflow_datasets"}
# Modules whose examples compile many small programs (eager init/apply of every model).
_SLOW = {"jaxdd.augment.families", "jaxdd.augment.ops", "jaxdd.augment.strategy",
         "jaxdd.augment.views", "jaxdd.models", "jaxdd.surrogate.model",
         "jaxdd.surrogate.training", "jaxdd.surrogate.cache", "jaxdd.surrogate.loss"}


def _module_names() -> list[str]:
  names = ["jaxdd"] + sorted(m.name for m in pkgutil.walk_packages(jaxdd.__path__, "jaxdd."))
  return [n for n in names if n not in _NOT_IMPORTABLE]


def _params():
  return [pytest.param(n, marks=pytest.mark.slow) if n in _SLOW else n for n in _module_names()]


def test_every_module_is_collected():
  names = _module_names()
  assert {"jaxdd", "jaxdd._src.io", "jaxdd.surrogate", "jaxdd.data.biased"} <= set(names)


@pytest.mark.parametrize("name", _params())
def test_docstring_examples(name, tmp_path, monkeypatch):
  if name in _EXTRAS:
    pytest.importorskip(_EXTRAS[name])
  module = importlib.import_module(name)
  monkeypatch.chdir(tmp_path)  # an example that writes a relative path writes here
  report: list[str] = []
  runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
  for test in doctest.DocTestFinder().find(module, name):
    runner.run(test, out=report.append)
  assert runner.failures == 0, "".join(report)


#: Documentation pages whose ``>>>`` examples are doctests.
_GUIDES = ["docs/guide-jax.md"]


@pytest.mark.parametrize("page", _GUIDES)
def test_guide_examples(page, tmp_path, monkeypatch):
  import os
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  monkeypatch.chdir(tmp_path)
  failures, tried = doctest.testfile(os.path.join(root, page), module_relative=False,
                                     optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
                                     verbose=False, report=True)
  assert tried > 10 and failures == 0
