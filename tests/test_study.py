"""Validation-only selection, the final table and the bias score (jaxdd.runs, diagnostics)."""
import json
import os

import numpy as np
import pytest
import run_folders

from jaxdd import cli, data, diagnostics, runs
from jaxdd.config import get_config
from jaxdd.protocols import get_protocol
from jaxdd.runs import driver


# ---------------------------------------------------------------------------- bias score


def test_aligned_bias_values_is_the_majority_bias_of_aligned_samples():
  labels = np.array([0, 0, 0, 1, 1, 2])
  bias = np.array([4, 4, 1, 2, 7, 0])
  aligned = np.array([True, True, False, True, False, True])
  np.testing.assert_array_equal(
      diagnostics.aligned_bias_values(labels, bias, aligned, num_classes=3), [4, 2, 0])
  with pytest.raises(ValueError, match="class 1 has no bias-aligned"):
    diagnostics.aligned_bias_values(labels, bias, aligned & (labels != 1), num_classes=3)


def _coloured(rng, labels, bias):
  """8x8 images: a random grey pattern (class-independent) tinted by the bias value."""
  tints = np.array([[1.0, 0.1, 0.1], [0.1, 1.0, 0.1], [0.1, 0.1, 1.0]], np.float32)
  shape = rng.uniform(0.3, 1.0, (len(labels), 8, 8, 1)).astype(np.float32)
  return shape * tints[bias][:, None, None, :]


def test_bias_score_counts_the_synthetic_images_that_carry_the_aligned_bias(getkey):
  rng = np.random.default_rng(0)
  n = 1500
  labels = rng.integers(0, 3, n)
  aligned = rng.uniform(size=n) < 0.9
  bias = np.where(aligned, labels, (labels + rng.integers(1, 3, n)) % 3)
  images = _coloured(rng, labels, bias)
  # A "synthetic set" whose bias values are known: 7 of 12 aligned.
  syn_labels = np.repeat(np.arange(3), 4)
  syn_aligned = np.array([1, 1, 1, 0, 1, 1, 0, 0, 1, 1, 0, 0], bool)
  syn_bias = np.where(syn_aligned, syn_labels, (syn_labels + 1) % 3)
  syn = _coloured(rng, syn_labels, syn_bias)
  v_labels = rng.integers(0, 3, 60)
  v_bias = rng.integers(0, 3, 60)
  clf = diagnostics.train_bias_classifier(
      getkey(), images, labels, bias, aligned, num_classes=3, width=8, epochs=30,
      valid=(_coloured(rng, v_labels, v_bias), v_labels, v_bias))
  report = diagnostics.bias_score(clf, syn, syn_labels)
  assert report["classifier_valid_accuracy"]["all"] == 1.0
  assert report["aligned_fraction"] == pytest.approx(7 / 12)
  assert report["per_class"] == pytest.approx([3 / 4, 2 / 4, 2 / 4])
  assert report["train_aligned_fraction"] == pytest.approx(aligned.mean())
  json.dumps(report)


def test_bias_score_of_an_anti_biased_training_set_uses_the_declared_aligned_values(getkey):
  # Biased-DD's aligned fraction 0: no class has a bias-aligned training
  # sample, so the aligned values cannot be read off the data; the declared
  # ones (bias c aligned with class c) score a SynSet whose bias is known.
  rng = np.random.default_rng(1)
  n = 1500
  labels = rng.integers(0, 3, n)
  bias = (labels + rng.integers(1, 3, n)) % 3
  aligned = bias == labels
  assert not aligned.any()
  images = _coloured(rng, labels, bias)
  with pytest.raises(ValueError, match="no bias-aligned"):
    diagnostics.train_bias_classifier(getkey(), images, labels, bias, aligned, num_classes=3,
                                      width=8, epochs=1)
  with pytest.raises(ValueError, match="aligned_values must be"):
    diagnostics.train_bias_classifier(getkey(), images, labels, bias, aligned, num_classes=3,
                                      width=8, epochs=1, aligned_values=[0, 1])
  clf = diagnostics.train_bias_classifier(getkey(), images, labels, bias, aligned,
                                          num_classes=3, width=8, epochs=30,
                                          aligned_values=np.arange(3))
  syn_labels = np.repeat(np.arange(3), 4)
  syn_aligned = np.array([1, 0, 0, 0, 1, 1, 0, 0, 1, 1, 1, 0], bool)
  syn = _coloured(rng, syn_labels, np.where(syn_aligned, syn_labels, (syn_labels + 2) % 3))
  report = diagnostics.bias_score(clf, syn, syn_labels)
  assert report["aligned_fraction"] == pytest.approx(6 / 12)
  assert report["per_class"] == pytest.approx([1 / 4, 2 / 4, 3 / 4])
  assert report["train_aligned_fraction"] == 0.0


def test_bias_score_rejects_bad_input(getkey):
  x = np.zeros((4, 8, 8, 3), np.float32)
  labels, bias, aligned = np.array([0, 0, 1, 1]), np.array([0, 0, 1, 1]), np.ones(4, bool)
  with pytest.raises(ValueError, match="epochs"):
    diagnostics.train_bias_classifier(getkey(), x, labels, bias, aligned, num_classes=2, epochs=0)
  clf = diagnostics.train_bias_classifier(getkey(), x, labels, bias, aligned, num_classes=2,
                                          width=4, epochs=1)
  with pytest.raises(ValueError, match="like the classifier's"):
    diagnostics.bias_score(clf, x[:, :4], labels)
  with pytest.raises(ValueError, match="NaN"):
    diagnostics.bias_score(clf, x + np.nan, labels)
  with pytest.raises(ValueError, match="labels must lie"):
    diagnostics.bias_score(clf, x, labels + 5)


# ---------------------------------------------------------------------------- selection rule


def test_select_keeps_the_incumbent_unless_a_candidate_wins_clearly_on_every_seed():
  inc = np.array([[0.50, 0.52], [0.48, 0.50]])  # 2 seeds x 2 networks
  # 3 points ahead on 20 samples per seed: well within the binomial noise
  close = runs.select({"inc": inc, "other": inc + 0.03}, "inc", 20)
  assert close["chosen"] == "inc" and close["best"] == "other"
  assert close["noise"] == pytest.approx(np.hypot(np.sqrt(0.53 * 0.47 / 40),
                                                  np.sqrt(0.50 * 0.50 / 40)))
  # 30 points ahead on every seed: switches
  clear = runs.select({"inc": inc, "other": inc + 0.30}, "inc", 20)
  assert clear["chosen"] == "other" and clear["wins_every_seed"]
  # ahead on average, but behind on one seed: stays
  mixed = runs.select({"inc": inc, "other": inc + np.array([[0.7], [-0.05]])}, "inc", 20)
  assert mixed["chosen"] == "inc" and not mixed["wins_every_seed"]
  # a tie goes to the incumbent
  assert runs.select({"a": inc, "inc": inc}, "inc", 20)["chosen"] == "inc"
  with pytest.raises(ValueError, match="incumbent"):
    runs.select({"a": inc}, "inc", 20)
  with pytest.raises(ValueError, match="no bias-conflicting"):
    runs.select({"inc": inc * np.nan}, "inc", 20)


def test_knob_grid_holds_the_incumbents_and_the_literal_reading():
  base = get_config("cpu")
  grid = runs.knob_grid(base)
  assert len(grid) == len(set(grid))
  assert runs.default_setting(base, "none") in grid
  assert runs.default_setting(base, "kde") in grid
  assert runs.literal_setting(base) in grid
  assert {s.apply(base).weighting for s in grid} == {"none", "kde"}
  assert len({s.name(base) for s in grid}) == len(grid)  # selection rows are keyed by name
  floored = [s.apply(base) for s in grid if s.apply(base).kde_floor > 0]
  assert sorted(c.kde_floor for c in floored) == [0.01, 0.02, 0.05, 0.1]
  assert all(c.init == c.real_sampling == "weighted" for c in floored)
  with pytest.raises(ValueError, match="changes only"):
    runs.Setting.of(ipc=3)


# ---------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_tune_never_reads_the_test_split_and_final_reuses_its_synsets(tmp_path, monkeypatch):
  base = get_config("smoke", iterations=2)
  root = str(tmp_path / "study")
  candidates = [runs.Setting.of(weighting="none", lr_img=1.0),
                runs.Setting.of(weighting="kde", kde_normalize="power", kde_variance=0.01,
                                kde_temperature=0.25, lr_img=1.0)]
  real_load = data.load
  loads = []

  def guarded(name, *, split, **kw):
    loads.append(split)
    if split == "test":
      raise AssertionError("tune read the test split")
    return real_load(name, split=split, **kw)

  monkeypatch.setattr(data, "load", guarded)
  calls = []
  real_distill = driver.distill_run
  monkeypatch.setattr(driver, "distill_run",
                      lambda config, *a, **k: calls.append(config) or real_distill(config, *a, **k))
  sel = runs.tune(base, root, seeds=(0, 1), candidates=candidates, protocol="smoke",
                  num_models=2, progress=False)
  assert "valid" in loads and "test" not in loads
  assert len(calls) == 4  # 2 candidates x 2 seeds
  saved = json.load(open(os.path.join(root, "selection.json")))
  assert saved["chosen"] == sel["chosen"]
  assert set(saved["decisions"]) == {"none", "kde"}
  for row in saved["candidates"].values():
    assert np.asarray(row["criterion"]).shape == (2, 2)
  assert "Validation criterion" in open(os.path.join(root, "selection.md")).read()

  monkeypatch.setattr(data, "load", real_load)
  settings = {"vanilla": candidates[0], "kde": candidates[1]}
  table = runs.final(base, root, settings=settings, seeds=(0, 1), protocol="smoke",
                     num_models=2, full_models=1, progress=False)
  assert len(calls) == 4  # the tune's SynSets were reused, nothing distilled again
  rows = table["rows"]
  assert list(rows) == ["vanilla", "kde", "random real subset", "full biased training set"]
  # each table cell is the mean over networks of the run's own eval file
  run = os.path.join(root, sel and saved["candidates"]["dm lr=1"]["runs"][1])
  ev = json.load(open(os.path.join(run, "eval-test-smoke.json")))
  assert run_folders.unlisted(run) == []  # eval-<split>-<protocol>.json, bias_score.json
  assert rows["vanilla"]["per_seed"]["overall"][1] == pytest.approx(
      np.mean(ev["result"]["per_model"]["overall"]))
  assert np.asarray(ev["result"]["valid_scores"]).shape == (1, 2)
  paired = np.asarray(table["paired"]["kde"]["conflicting"])
  np.testing.assert_allclose(paired, np.subtract(rows["kde"]["per_seed"]["conflicting"],
                                                 rows["vanilla"]["per_seed"]["conflicting"]))
  for name in ("vanilla", "kde", "random real subset"):
    assert all(0.0 <= s <= 1.0 for s in rows[name]["bias_aligned_fraction"])
  assert rows["full biased training set"]["seeds"] == [0]
  md = open(os.path.join(root, "table.md")).read()
  assert "bias score" in md and "kde − vanilla" in md
  ref = table["reference"]  # the classifier on the held-out valid images, per seed
  assert len(ref["bias_aligned_fraction"]) == 2 and all(0 <= f <= 1 for f in ref["bias_aligned_fraction"])
  assert "as the classifier reads them" in md


def test_cli_final_needs_a_selection_and_sane_seeds(tmp_path, capsys):
  rc = cli.main(["final", "--preset", "smoke", "--workdir", str(tmp_path / "s")])
  assert rc == 2 and "jaxdd tune" in capsys.readouterr().err
  rc = cli.main(["tune", "--preset", "smoke", "--workdir", str(tmp_path / "s"), "--seeds", "0,x"])
  assert rc == 2 and "comma-separated integers" in capsys.readouterr().err
  assert not os.path.exists(tmp_path / "s")


def test_distill_digest_ignores_evaluation_fields():
  a = get_config("smoke")
  assert a.distill_digest() == a.replace(eval_protocol="cpu", num_eval_models=3).distill_digest()
  assert a.distill_digest() != a.replace(lr_img=2.0).distill_digest()
  assert a.digest() != a.replace(eval_protocol="cpu").digest()


def test_table_names_what_the_validation_column_measured():
  row = {"per_seed": {m: [0.5, 0.6] for m in ("overall", "aligned", "conflicting", "worst_group")},
         "valid_conflicting": [0.99], "bias_aligned_fraction": [0.9], "seeds": [0, 1]}
  table = {"base": get_config("smoke").to_dict(), "num_models": 1, "seeds": [0],
           "protocol": get_protocol("smoke").to_dict(),
           "train_aligned_fraction": 0.99, "rows": {"vanilla": dict(row)}, "paired": {}}
  assert "| valid conflicting |" in runs.format_table(table)  # tables written before the field
  table["rows"]["vanilla"]["valid_metric"] = "overall"  # e.g. CMNIST 1 %: no conflicting valid image
  md = runs.format_table(table)
  assert "| valid overall |" in md and "holds no bias-conflicting image" in md
  # The bias score's yardstick: held-out real images of known share, read by the classifier.
  table["reference"] = {"bias_aligned_fraction": [0.70, 0.80], "true_aligned_fraction": [0.95, 0.95]}
  assert ("| *held-out real images (95.0 % aligned), as the classifier reads them* | | | | | "
          "75.0 ± 7.1 | |") in runs.format_table(table)
  assert "as the classifier reads them* | | | | | 75.0 ± 7.1 |" in runs.format_summary(table)


def test_table_shows_a_dash_where_the_test_split_has_no_aligned_image():
  # Biased-DD's 0 %-aligned test split: bias-aligned accuracy is NaN (an empty group).
  nan = float("nan")
  per_seed = {"overall": [0.2, 0.4], "aligned": [nan, nan], "conflicting": [0.2, 0.4],
              "worst_group": [0.0, 0.0]}
  row = {"per_seed": per_seed, "valid_conflicting": [0.3, 0.3],
         "bias_aligned_fraction": [0.9, 0.9], "seeds": [0, 1]}
  table = {"base": get_config("smoke").to_dict(), "num_models": 1, "seeds": [0, 1],
           "protocol": get_protocol("smoke").to_dict(),
           "train_aligned_fraction": 0.95, "rows": {"vanilla": row},
           "paired": {"kde": {m: [nan, nan] if m == "aligned" else [0.1, 0.1]
                              for m in per_seed}}}
  md = runs.format_table(table)
  assert "| vanilla | 30.0 ± 14.1 | – | 30.0 ± 14.1 | 0.0 ± 0.0 |" in md
  assert "| kde − vanilla | +10.0 ± 0.0 | – | +10.0 ± 0.0 |" in md
  assert "nan" not in md and "holds no bias-aligned image" in md
  assert md.startswith("cmnist, conflict ratio")
  table["base"] = dict(table["base"], dataset="cmnist_dd", conflict_ratio=0.95)
  assert runs.format_table(table).startswith("cmnist_dd, aligned fraction 0.95,")
  table["rows"]["vanilla"] = dict(row, per_seed=dict(per_seed, aligned=[0.9, 1.0]))
  assert "holds no bias-aligned image" not in runs.format_table(table)
