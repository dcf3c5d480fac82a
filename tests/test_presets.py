"""One registry of presets (jaxdd.presets) and configs that validate themselves."""
import dataclasses

import pytest

from jaxdd import presets, protocols, runs, surrogate, weighting
from jaxdd.config import get_config, METHOD_PRESETS, PRESETS, RunConfig
from jaxdd.runs import bias, driver, surrogate_stage
from jaxdd.runs import stage_config


def test_every_registry_is_built_from_the_presets_module():
  for name, fields in presets.RUN.items():
    cfg = PRESETS[name]
    assert cfg.preset == name
    assert all(getattr(cfg, k) == v for k, v in fields.items())
    # The three scales line up: a run preset names an existing surrogate and protocol.
    assert cfg.surrogate_preset in presets.SURROGATE and cfg.eval_protocol in presets.PROTOCOL
  assert METHOD_PRESETS is presets.METHOD
  assert set(protocols.PROTOCOLS) == set(presets.PROTOCOL)
  assert protocols.PROTOCOLS["cpu300"].num_epochs == 301
  assert surrogate.SurrogateConfig.preset("smoke").width == presets.SURROGATE["smoke"]["width"]


def test_run_config_validates_itself_when_built():
  with pytest.raises(ValueError, match="ipc must be >= 1"):
    RunConfig(ipc=0)
  with pytest.raises(ValueError, match="KDEConfig.temperature"):
    get_config("smoke", kde_temperature=0.0)
  with pytest.raises(ValueError, match="conflict_ratio"):
    PRESETS["cpu"].replace(conflict_ratio=1.5)
  with pytest.raises(ValueError, match="surrogate_preset must be one of"):
    get_config("cpu", surrogate_preset="huge")


def test_stage_configs_of_a_run_config():
  cfg = get_config("cpu", kde_temperature=1.0, kde_scope="class")
  assert stage_config.kde_config(cfg) == weighting.KDEConfig(0.01, 1.0, "power", "class")
  assert stage_config.kde_config(cfg.replace(weighting="none")) is None
  assert stage_config.eval_protocol(cfg) is protocols.PROTOCOLS["cpu"]
  assert stage_config.surrogate_config(cfg) == surrogate.SurrogateConfig.preset("cpu")


@pytest.mark.parametrize("bad, match", [
    (dict(variance=-1.0), "variance"), (dict(variance=float("nan")), "variance"),
    (dict(temperature=0), "temperature"), (dict(variance=True), "variance"),
    (dict(normalize="l1"), "normalize must be one of"), (dict(scope="all"), "scope must be one of"),
])
def test_kde_config_rejects_bad_knobs(bad, match):
  with pytest.raises(ValueError, match=match):
    weighting.KDEConfig(**bad)
  with pytest.raises(ValueError, match=match):
    weighting.KDEConfig().replace(**bad)


def test_surrogate_step_budget_becomes_epochs_per_dataset_size():
  cfg = surrogate.SurrogateConfig.preset("cpu")
  assert cfg.steps == 210
  # 3,600 images at batch 256: 14 steps an epoch -> 15 epochs; 54,000: 210 steps -> 1 epoch.
  assert cfg.for_size(3600).epochs == 15 and cfg.for_size(54000).epochs == 1
  assert cfg.for_size(100 * 256).epochs == 2  # round(210 / 100)
  assert cfg.for_size(10 ** 7).epochs == 1    # never 0
  resolved = cfg.for_size(3600)
  assert resolved.steps is None and "steps" not in resolved.to_dict()
  assert resolved.for_size(54000) is resolved  # an epoch count is left alone
  # An explicit epochs replaces the preset's budget.
  assert surrogate.SurrogateConfig.preset("cpu", epochs=5).for_size(54000).epochs == 5
  with pytest.raises(ValueError, match="steps"):
    dataclasses.replace(cfg, steps=0)


def test_run_config_carries_the_policy_and_the_pipeline_pins_it(monkeypatch, tmp_path):
  from jaxdd import cli, policy
  from jaxdd.cli import flags
  cfg = get_config("smoke", policy="accelerator")
  # 'auto' is the default layout and leaves digests as they were before the field existed.
  assert get_config("smoke").digest() != cfg.digest()
  with pytest.raises(ValueError, match="policy: unknown policy 'tpu-pod'"):
    get_config("smoke", policy="tpu-pod")
  # a variant of a named layout, as jaxdd.policy.variant names it; a bad field or value is
  # refused in one line that names the fields
  variant = get_config("smoke", policy="accelerator+class_augment=vmap+input_grad=matmul")
  assert policy.resolve(variant.policy).input_grad == "matmul"
  with pytest.raises(ValueError, match="not a Policy field to change: \\['speed'\\]"):
    get_config("smoke", policy="accelerator+speed=max")
  with pytest.raises(ValueError, match="micro_batch takes a whole number or None"):
    get_config("smoke", policy="cpu+micro_batch=many")
  seen = []

  def fake_distill_run(config, *args, **kwargs):
    seen.append(policy.current().name)
    raise RuntimeError("stop here")

  monkeypatch.setattr(driver, "distill_run", fake_distill_run)
  monkeypatch.setattr(surrogate_stage, "surrogate_embeddings", lambda *a, **k: None)
  monkeypatch.setattr(bias, "bias_classifier", lambda *a, **k: None)  # not under test
  with pytest.raises(RuntimeError, match="stop here"):
    runs.distill_stage(cfg.replace(weighting="none"), str(tmp_path / "w"), progress=False)
  assert seen == ["accelerator"] and policy.current().name == "cpu"  # restored after
  args = cli.build_parser("smoke").parse_args(["distill", "--policy", "cpu", "--workdir", "w"])
  assert flags.run_config(args).policy == "cpu"
