"""API conventions, enforced on every public name."""
import inspect

import jaxdd

# functions whose first argument is a PRNG key
KEYED = {"train_fresh", "evaluate_synset", "train_surrogate", "dm_loss", "gm_loss"}


def test_every_public_name_resolves_and_is_documented():
  for name in jaxdd.__all__:
    obj = getattr(jaxdd, name)
    assert obj.__doc__ and obj.__doc__.strip(), f"jaxdd.{name} has no docstring"


def test_key_first_and_options_keyword_only():
  for name in jaxdd.__all__:
    obj = getattr(jaxdd, name)
    if not inspect.isfunction(obj):
      continue
    params = list(inspect.signature(obj).parameters.values())
    if name in KEYED:
      assert params[0].name == "key", f"jaxdd.{name}: first argument must be `key`"
    for i, p in enumerate(params):
      assert p.name != "rng", f"jaxdd.{name}: use `key`, not `rng`"
      # the subject (first argument, e.g. dsa's strategy string) may have a default
      if i > 0 and p.default is not inspect.Parameter.empty and p.kind == p.POSITIONAL_OR_KEYWORD:
        raise AssertionError(f"jaxdd.{name}: option {p.name!r} must be keyword-only")


def test_unknown_attribute():
  import pytest
  with pytest.raises(AttributeError):
    jaxdd.nope  # noqa: B018  (the attribute access is what raises)


def test_submodule_names_are_modules():
  import types
  from jaxdd import evaluate  # must be the module, not the function
  assert isinstance(evaluate, types.ModuleType) and callable(evaluate.evaluate_synset)
  assert jaxdd.evaluate_synset is evaluate.evaluate_synset
  # the module exports its own entry points only (the trainer's names live in jaxdd.train)
  assert evaluate.__all__ == ["evaluate_synset", "evaluate_task", "predict", "split_validation"]
  assert not hasattr(evaluate, "evaluate") and not hasattr(evaluate, "train_models")
