"""ELF's evaluation track: the loss against a hand computation, the classifier lookup, the CLI."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdd import elf, evaluate, models, tasks
from jaxdd.structs import Batch, SynSet


def _toy(n_per=6, size=8, seed=0):
  rng = np.random.default_rng(seed)
  y = np.repeat(np.arange(3), n_per)
  x = (rng.normal(size=(len(y), size, size, 3)) + y[:, None, None, None]).astype(np.float32)
  return x, y


@pytest.mark.parametrize("spec", ["convnet-d2-w8", "mlp"])
def test_classifier_params_are_the_final_layer(spec):
  model = models.get(spec, num_classes=3)
  x = jnp.asarray(_toy(size=16)[0][:2])
  v = model.init(jax.random.key(0), x, train=False)
  feats, logits = model.apply(v, x, train=False, return_features=True)
  head = elf.classifier_params(v["params"], feats.shape[-1], 3)
  np.testing.assert_allclose(feats @ head["kernel"] + head["bias"], logits,
                             rtol=1e-5, atol=1e-5 * float(jnp.abs(logits).max()))
  with pytest.raises(ValueError, match="final linear layer"):
    elf.classifier_params(v["params"], feats.shape[-1] + 1, 3)


def test_classifier_params_of_a_resnet_by_shapes_only():
  model = models.get("resnet18", num_classes=3)
  x = jnp.zeros((1, 16, 16, 3))
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
  feats = jax.eval_shape(lambda: model.apply(
      jax.tree.map(jnp.zeros_like, shapes), x, train=False, return_features=True)[0])
  head = elf.classifier_params(shapes["params"], feats.shape[-1], 3)
  assert head["kernel"].shape == (feats.shape[-1], 3) and head["bias"].shape == (3,)


@pytest.mark.parametrize("distance", ["l2", "cosine"])
def test_elf_loss_is_front_rear_and_task_terms(distance):
  x, y = _toy()
  model = models.get("convnet-d2-w8", num_classes=3)
  d_e = 2 * 2 * 8
  feats = np.random.default_rng(1).normal(size=(len(y), d_e)).astype(np.float32)
  task = elf.elf_task(model, feats, num_classes=3, lambda_front=0.7, lambda_rear=0.3,
                      distance=distance)
  params, state = task.init(jax.random.key(0), jnp.asarray(x), jnp.asarray(y))
  assert set(params) == {"net"}  # same feature size: no adapters (ELF's ConvNet_L3 split)
  idx = jnp.array([3, 0, 7, 12])
  batch = tasks.StepBatch(jnp.asarray(x)[idx], jnp.asarray(y)[idx], idx, jax.random.key(2),
                          jnp.int32(0), jnp.float32(0))
  got, (_, logits) = task.loss(params, state, batch)
  z, lg = model.apply({"params": params["net"]}, batch.images, train=True, return_features=True)
  z, f = np.asarray(z, np.float64), feats[np.asarray(idx)].astype(np.float64)
  if distance == "l2":
    front = np.mean((z - f) ** 2)
  else:
    front = np.mean(1 - (z * f).sum(1) / (np.linalg.norm(z, axis=1) * np.linalg.norm(f, axis=1)))
  head = elf.classifier_params(params["net"], d_e, 3)
  rear_logits = f @ np.asarray(head["kernel"], np.float64) + np.asarray(head["bias"], np.float64)

  def ce(lgt, lab):
    lgt = lgt - lgt.max(1, keepdims=True)
    return np.mean(np.log(np.exp(lgt).sum(1)) - lgt[np.arange(len(lab)), lab])
  labels = np.asarray(y)[np.asarray(idx)]
  want = 0.7 * front + 0.3 * ce(rear_logits, labels) + ce(np.asarray(lg, np.float64), labels)
  np.testing.assert_allclose(float(got), want, rtol=1e-4)
  # With both ELF weights at 0 the loss is the plain cross-entropy of standard training,
  # from the same initial network.
  plain = elf.elf_task(model, feats, num_classes=3, lambda_front=0.0, lambda_rear=0.0)
  p0, s0 = plain.init(jax.random.key(0), jnp.asarray(x), jnp.asarray(y))
  std = tasks.standard_task(model)
  sp, ss = std.init(jax.random.key(0), jnp.asarray(x), jnp.asarray(y))
  jax.tree.map(np.testing.assert_array_equal, p0["net"], sp)
  np.testing.assert_allclose(float(plain.loss(p0, s0, batch)[0]),
                             float(std.loss(sp, ss, batch)[0]), rtol=1e-6)


def test_evaluate_elf_trains_with_adapters_and_refuses_mismatched_features():
  x, y = _toy()
  fm = models.get("convnet-d2-w4", num_classes=3)
  v = elf.train_feature_model(jax.random.key(0), x, y, model=fm, protocol="smoke")
  feats = elf.distillation_features(fm, v, x)
  assert feats.shape == (len(y), 2 * 2 * 4)
  ev = models.get("convnet-d2-w8", num_classes=3)  # 32 features vs 16: adapters
  params, _ = elf.elf_task(ev, feats, num_classes=3).init(jax.random.key(0), jnp.asarray(x),
                                                          jnp.asarray(y))
  assert params["to_feature"].shape == (32, 16) and params["from_feature"].shape == (16, 32)
  syn = SynSet(jnp.asarray(x), jnp.asarray(y))
  aligned = np.arange(len(y)) % 2 == 0
  test = Batch(jnp.asarray(x), jnp.asarray(y), jnp.asarray(np.where(aligned, y, (y + 1) % 3)),
               jnp.asarray(aligned))
  r = elf.evaluate_elf(jax.random.key(1), syn, test, model=ev, features=feats, protocol="smoke",
                       num_models=1)
  assert r.method == "elf" and r.hparams["track"] == "elf"
  assert 0 <= r.mean("overall") <= 1
  with pytest.raises(ValueError, match="feature rows"):
    elf.evaluate_elf(jax.random.key(1), syn, test, model=ev, features=feats[:5],
                     protocol="smoke", num_models=1)
  with pytest.raises(ValueError, match="distance"):
    elf.elf_task(ev, feats, num_classes=3, distance="kl")
  m = elf.cross_architecture(jax.random.key(1), syn, test, model_specs=["convnet-d2-w8"],
                             num_classes=3, protocol="smoke", num_models=1)
  assert m["convnet-d2-w8"]["elf"] is None  # no features: the plain column only
  m["convnet-d2-w8"]["elf"] = r.summary()
  assert "| convnet-d2-w8 | elf |" in elf.format_matrix(m)
  # the plain cell is the ordinary evaluation with the same key
  plain = evaluate.evaluate_synset(jax.random.key(1), syn, test, model=ev, protocol="smoke",
                                   num_models=1)
  assert m["convnet-d2-w8"]["plain"]["mean"] == plain.summary()["mean"]


def test_cross_arch_cli_refuses_a_model_that_does_not_fit_before_any_work(tmp_path, capsys):
  from jaxdd import cli, synset
  x, y = _toy(size=8)
  path = str(tmp_path / "syn")
  synset.save(path, SynSet(x, y), {"dataset": {"name": "cmnist", "ratio": 0.05}},
              mean=np.zeros(3), std=np.ones(3))
  assert cli.main(["cross-arch", path, "--models", "convnet-d4", "--quiet"]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "convnet" in err[0].lower()
  assert cli.main(["cross-arch", path, "--models", "nonet", "--quiet"]) == 2


def test_summarize_seeds_means_over_seeds_pairs_rows_and_skips_missing_elf():
  def cell(acc):
    return {"mean": {"overall": acc, "aligned": 1.0, "conflicting": acc / 2, "worst_group": 0.0},
            "std": {}}
  results = {"vanilla": {0: {"mlp": {"plain": cell(0.2), "elf": None}},
                         1: {"mlp": {"plain": cell(0.4), "elf": None}}},
             "kde": {0: {"mlp": {"plain": cell(0.5), "elf": cell(0.6)}},
                     1: {"mlp": {"plain": cell(0.7), "elf": cell(0.8)}}}}
  s = elf.summarize_seeds(results)
  assert s["seeds"] == [0, 1] and s["reference"] == "vanilla"
  assert "elf" not in s["table"]["vanilla"]["mlp"]
  assert s["table"]["kde"]["mlp"]["elf"]["overall"] == [0.6, 0.8]
  # paired per seed: kde - vanilla = 0.3 at both seeds; no ELF reference, so no ELF pair
  diff = s["paired"]["kde"]["mlp"]
  assert set(diff) == {"plain"} and "vanilla" not in s["paired"]
  np.testing.assert_allclose(diff["plain"]["overall"], [0.3, 0.3])
  np.testing.assert_allclose(diff["plain"]["conflicting"], [0.15, 0.15])
  text = elf.format_seeds(s)
  # 60, 80 -> 70.0 ± 14.1 (sample std); aligned 100 at both seeds
  assert "| kde | mlp | elf | 70.0 ± 14.1 | 100.0 ± 0.0 | 35.0 ± 7.1 | 0.0 ± 0.0 |" in text
  assert "| kde − vanilla | mlp | plain | +30.0 ± 0.0 | +0.0 ± 0.0 | +15.0 ± 0.0 | +0.0 ± 0.0 |" \
      in text
  assert "Cell" not in text  # no settings given, no sentence about them
  # ELF - plain per seed, only where both ran: kde's 0.6 - 0.5 and 0.8 - 0.7
  assert set(s["elf_effect"]) == {"kde"}
  np.testing.assert_allclose(s["elf_effect"]["kde"]["mlp"]["overall"], [0.1, 0.1])
  assert "| kde | mlp | elf − plain | +10.0 ± 0.0 | +0.0 ± 0.0 | +5.0 ± 0.0 | +0.0 ± 0.0 |" \
      in text


def test_format_seeds_orders_a_json_round_trip_as_published():
  # atomic_write_json sorts keys: "kde" < "vanilla", "elf" < "plain", "convnet" < "mlp".
  # The table shows the reference row first, the published model order, plain before ELF.
  import json

  def cell(acc):
    return {"mean": {c: acc for c in elf.COLUMNS}, "std": {}}
  matrix = {"mlp": {"plain": cell(0.3), "elf": cell(0.4)},
            "convnet": {"plain": cell(0.5), "elf": cell(0.6)}}
  s = elf.summarize_seeds({"vanilla": {0: matrix}, "kde": {0: matrix}})
  s = json.loads(json.dumps(dict(s, models=["mlp", "convnet"]), sort_keys=True))
  lines = [ln for ln in elf.format_seeds(s).splitlines() if ln.startswith("| vanilla")
           or ln.startswith("| kde")]
  assert [ln.split(" | ")[:3] for ln in lines[:5]] == [
      ["| vanilla", "mlp", "plain"], ["| vanilla", "mlp", "elf"], ["| vanilla", "convnet", "plain"],
      ["| vanilla", "convnet", "elf"], ["| kde", "mlp", "plain"]]


def test_a_matrix_without_group_labels_says_so_instead_of_nan():
  nan = float("nan")
  def cell(overall, aligned, conflicting, worst):
    mean = {"overall": overall, "aligned": aligned, "conflicting": conflicting,
            "worst_group": worst}
    return {"mean": mean, "std": {k: 0.0 if v == v else nan for k, v in mean.items()}}
  no_groups = {"convnet": {"plain": cell(0.9, nan, nan, 0.4), "elf": None}}
  text = elf.format_matrix(no_groups)
  assert text.splitlines()[0] == ("| model | training | overall | aligned | conflicting | "
                                  "worst class |")
  assert "| convnet | plain | 90.0 ± 0.0 | n/a | n/a | 40.0 ± 0.0 |" in text
  assert "nan" not in text and "no group labels" in text
  grouped = {"convnet": {"plain": cell(0.9, 0.95, 0.5, 0.4), "elf": None}}
  text = elf.format_matrix(grouped)
  assert "worst_group |" in text.splitlines()[0] and "no group labels" not in text
  assert "| convnet | plain | 90.0 ± 0.0 | 95.0 ± 0.0 | 50.0 ± 0.0 | 40.0 ± 0.0 |" in text
