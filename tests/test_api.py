"""API conventions, enforced on every public name."""
import inspect

import jax
import jax.numpy as jnp
import pytest

import jaxdd
from jaxdd import augment, evaluate, models, protocols, surrogate
from jaxdd.structs import Batch, SynSet

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
      # the subject (first argument, e.g. dsa_augment's strategy string) may have a default
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
  assert evaluate.__all__ == ["evaluate_synset", "evaluate_synsets", "evaluate_task", "predict",
                              "split_validation"]
  assert not hasattr(evaluate, "evaluate") and not hasattr(evaluate, "train_models")


def test_public_names_are_unambiguous():
  from jaxdd import augment, diagnostics, weighting
  # every public name once, and none of them shadows a submodule
  assert len(jaxdd.__all__) == len(set(jaxdd.__all__))
  assert not set(jaxdd.__all__) & set(jaxdd._SUBMODULES)
  # the augmentation and the distiller of DSA have names of their own at the top level
  assert jaxdd.dsa_augment is augment.dsa and jaxdd.dsa is jaxdd.distill.dsa
  assert jaxdd.dsa is not augment.dsa
  # jaxdd.kde_weights weighs the embeddings it is given; the diagnostics' dataset-wide,
  # scope-dispatching weights have another name
  assert jaxdd.kde_weights is weighting.weights and not hasattr(diagnostics, "kde_weights")
  assert not hasattr(weighting, "kde_weights")


def test_every_method_is_at_the_top_level_with_an_explicit_signature():
  # the distillers a user builds: one name each at the top level, every option a keyword an
  # IDE can show (no **kwargs)
  from jaxdd import distill
  for name in ("dm", "gm", "dc", "dsa", "mtt", "cfm"):
    assert name in jaxdd.__all__ and getattr(jaxdd, name) is getattr(distill, name)
    params = inspect.signature(getattr(jaxdd, name)).parameters.values()
    assert not [p for p in params if p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL)], name
    assert all(p.kind == p.KEYWORD_ONLY for p in params), name


def test_the_recipes_are_static_pytrees_that_pass_through_jit():
  # A protocol, a surrogate config and a DSA augmentation carry shapes and choices, no numbers
  # to trace: no leaves, so jit takes them as arguments, one program per distinct value.
  traces = []

  @jax.jit
  def f(recipe, x):
    traces.append(recipe)
    return x * 2
  for recipe in (protocols.get_protocol("smoke"), surrogate.SurrogateConfig.preset("smoke"),
                 augment.dsa("color_crop")):
    assert jax.tree.leaves(recipe) == []
    assert float(f(recipe, jnp.float32(1.0))) == 2.0 and traces[-1] == recipe
    f(recipe, jnp.float32(3.0))  # the same value: no new trace
  assert len(traces) == 3
  f(protocols.get_protocol("smoke").replace(epochs=5), jnp.float32(1.0))
  assert len(traces) == 4


def test_a_stack_of_synsets_is_sent_to_evaluate_synsets():
  stacked = SynSet(jnp.zeros((3, 4, 8, 8, 3)), jnp.zeros((3, 4), jnp.int32))
  test = Batch(jnp.zeros((4, 8, 8, 3)), jnp.zeros(4, jnp.int32))
  with pytest.raises(ValueError, match=r"a stack of 3 SynSets; evaluate them with "
                                       r"jaxdd.evaluate.evaluate_synsets"):
    evaluate.evaluate_synset(jax.random.key(0), stacked, test, model=models.ConvNet(2, width=4),
                             protocol="smoke", num_models=1)
