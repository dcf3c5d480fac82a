"""Backdoor attacks (red team) and the audit's probes, against hand-computed references."""
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdd import models
from jaxdd.protocols import get_protocol
from jaxdd.runs import attacks as run_attacks
from jaxdd.security import attacks, audit
from jaxdd.structs import SynSet

MEAN, STD = [0.2, 0.3, 0.4], [0.5, 0.25, 0.2]


def _naive_stamp(images, pattern, mask, mean, std):
  px = images * np.asarray(std) + np.asarray(mean)
  return ((1 - mask) * px + mask * pattern - np.asarray(mean)) / np.asarray(std)


def test_patch_trigger_places_the_square():
  t = attacks.patch_trigger((8, 8, 3), size=2, corner="bottom-right", margin=1, pattern="checker")
  rows, cols = np.nonzero(t.mask[..., 0])
  assert sorted(set(rows)) == [5, 6] and sorted(set(cols)) == [5, 6] and t.area == 4
  np.testing.assert_array_equal(t.pattern[5:7, 5:7, 0], [[1, 0], [0, 1]])
  t = attacks.patch_trigger((8, 8, 3), size=3, corner="top-left", margin=0, pattern="white")
  assert t.mask[:3, :3].all() and t.mask.sum() == 9 and (t.pattern[:3, :3] == 1).all()
  r1 = attacks.patch_trigger((8, 8, 3), pattern="random", key=jax.random.key(3))
  r2 = attacks.patch_trigger((8, 8, 3), pattern="random", key=jax.random.key(3))
  np.testing.assert_array_equal(r1.pattern, r2.pattern)
  with pytest.raises(ValueError, match="corner"):
    attacks.patch_trigger((8, 8, 3), corner="middle")
  with pytest.raises(ValueError, match="size"):
    attacks.patch_trigger((8, 8, 3), size=8)
  with pytest.raises(ValueError, match="needs key"):
    attacks.patch_trigger((8, 8, 3), pattern="random")
  b = attacks.blend_trigger((8, 8, 3), alpha=0.2, key=jax.random.key(0))
  assert np.allclose(b.mask, 0.2) and 0 <= b.pattern.min() and b.pattern.max() <= 1


def test_stamp_matches_numpy_and_is_exact_in_pixel_space():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(5, 8, 8, 3)).astype(np.float32)
  t = attacks.blend_trigger((8, 8, 3), alpha=0.3, key=jax.random.key(1))
  np.testing.assert_allclose(t.stamp(x, MEAN, STD), _naive_stamp(x, t.pattern, t.mask, MEAN, STD),
                             rtol=1e-5, atol=1e-5)  # float32 round trip through pixel space
  p = attacks.patch_trigger((8, 8, 3), size=2)
  px = np.asarray(p.stamp(x, MEAN, STD)) * np.asarray(STD) + np.asarray(MEAN)
  np.testing.assert_allclose(px[:, 5:7, 5:7], np.broadcast_to(p.pattern[5:7, 5:7], (5, 2, 2, 3)),
                             atol=1e-6)
  outside = p.mask[..., 0] == 0
  np.testing.assert_allclose(np.asarray(p.stamp(x, MEAN, STD))[:, outside], x[:, outside],
                             atol=1e-5)


def test_poison_rows_labels_and_images():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(100, 8, 8, 3)).astype(np.float32)
  y = np.repeat(np.arange(4), 25)
  t = attacks.patch_trigger((8, 8, 3), size=2)
  p = attacks.poison(jax.random.key(0), x, y, trigger=t, target=2, fraction=0.1, mean=MEAN, std=STD)
  assert len(p.rows) == 10 and (y[p.rows] != 2).all() and (p.original_labels == y[p.rows]).all()
  assert (p.labels[p.rows] == 2).all()
  untouched = np.setdiff1d(np.arange(100), p.rows)
  np.testing.assert_array_equal(p.labels[untouched], y[untouched])
  np.testing.assert_array_equal(p.images[untouched], x[untouched])
  np.testing.assert_allclose(p.images[p.rows], _naive_stamp(x[p.rows], t.pattern, t.mask, MEAN, STD),
                             atol=1e-5)
  again = attacks.poison(jax.random.key(0), x, y, trigger=t, target=2, fraction=0.1, mean=MEAN,
                         std=STD)
  np.testing.assert_array_equal(again.rows, p.rows)
  assert (y == np.repeat(np.arange(4), 25)).all()  # the input is not changed
  with pytest.raises(ValueError, match="fraction"):
    attacks.poison(jax.random.key(0), x, y, trigger=t, target=2, fraction=0.0, mean=MEAN, std=STD)
  with pytest.raises(ValueError, match="target"):
    attacks.poison(jax.random.key(0), x, y, trigger=t, target=9, fraction=0.1, mean=MEAN, std=STD)


def test_attack_success_rate_counts_other_classes_only():
  x = np.zeros((6, 8, 8, 3), np.float32)
  y = np.array([0, 0, 1, 1, 2, 2])
  t = attacks.patch_trigger((8, 8, 3), size=2, pattern="white")

  def fires(images):  # "backdoored": predicts 0 when the patch's pixel is white
    px = np.asarray(images)[:, 5, 5, 0] * STD[0] + MEAN[0]
    return np.where(px > 0.9, 0, 1)
  assert attacks.attack_success_rate(fires, x, y, trigger=t, target=0, mean=MEAN, std=STD) == 1.0
  assert attacks.attack_success_rate(fires, x, y, trigger=t, target=1, mean=MEAN, std=STD) == 0.0


def _toy_data(n_per_class=6, num_classes=3, size=8, seed=0):
  """Colour-coded classes: class c has channel c bright (separable, learnable in a few epochs)."""
  rng = np.random.default_rng(seed)
  x = 0.1 * rng.random((n_per_class * num_classes, size, size, 3))
  y = np.repeat(np.arange(num_classes), n_per_class)
  for c in range(num_classes):
    x[y == c, :, :, c] += 0.7
  return ((x - np.asarray(MEAN)) / np.asarray(STD)).astype(np.float32), y.astype(np.int32)


def test_posthoc_attack_replaces_target_images_and_keeps_the_rest():
  x, y = _toy_data()
  model = models.get("convnet-d2-w8", num_classes=3)
  t = attacks.patch_trigger((8, 8, 3), size=2)
  r0 = run_attacks.posthoc_attack(jax.random.key(0), SynSet(x, y), trigger=t, target=0, mean=MEAN,
                                  std=STD, model=model, protocol="smoke", steps=0, replace=3)
  # archetypes: the SynSet's own first images of classes 1 and 2, stamped; round-robin order
  expected = _naive_stamp(x[[6, 12, 7]], t.pattern, t.mask, MEAN, STD)
  np.testing.assert_allclose(r0.syn.images[3:6], expected, atol=1e-5)
  np.testing.assert_array_equal(r0.syn.images[6:], x[6:])
  np.testing.assert_array_equal(r0.syn.labels, y)
  with pytest.raises(ValueError, match="replace"):
    run_attacks.posthoc_attack(jax.random.key(0), SynSet(x, y), trigger=t, target=0, mean=MEAN,
                               std=STD, model=model, protocol="smoke", steps=0, replace=7)
  with pytest.raises(ValueError, match="archetypes"):
    run_attacks.posthoc_attack(jax.random.key(0), SynSet(x, y), trigger=t, target=0, mean=MEAN,
                               std=STD, model=model, protocol="smoke", steps=0, archetypes="x")


@pytest.mark.slow
def test_posthoc_attack_gradient_matching_keeps_other_classes():
  x, y = _toy_data()
  model = models.get("convnet-d2-w8", num_classes=3)
  t = attacks.patch_trigger((8, 8, 3), size=2)
  r = run_attacks.posthoc_attack(jax.random.key(0), SynSet(x, y), trigger=t, target=0, mean=MEAN,
                                 std=STD, model=model, protocol="smoke", steps=2, outer_loop=2,
                                 inner_loop=1, replace=3)
  assert np.isfinite(r.loss).all() and r.loss.shape == (2,)
  # the other classes match themselves (their gradients start equal): they hardly move
  assert np.abs(r.syn.images[6:] - x[6:]).max() < 1e-3
  assert np.abs(r.syn.images[:6] - x[:6]).max() > 0  # the target class was changed


def test_invert_prototypes_are_classified_as_their_class():
  x, y = _toy_data()
  model = models.get("convnet-d2-w8", num_classes=3)
  from jaxdd import train
  variables, _ = train.train_fresh(jax.random.key(0), SynSet(jnp.asarray(x), jnp.asarray(y)),
                                   model=model, protocol="smoke")
  protos, labels = attacks.invert_prototypes(jax.random.key(1), model, variables, [0, 1, 2],
                                             image_shape=(8, 8, 3), mean=MEAN, std=STD,
                                             per_class=2, steps=100, lr=0.1)
  pred = np.asarray(jnp.argmax(model.apply(variables, jnp.asarray(protos), train=False), -1))
  np.testing.assert_array_equal(pred, labels)
  px = protos * np.asarray(STD) + np.asarray(MEAN)
  assert px.min() >= 0 and px.max() <= 1 + 1e-5  # sigmoid parametrisation: valid pixels


class _Shortcut(nn.Module):
  """Classes 0-2 need a whole 2-row band bright; class 3 fires on one pixel (a backdoor)."""

  @nn.compact
  def __call__(self, x, *, train=False):
    px = x[..., 0] * STD[0] + MEAN[0]
    bands = [20.0 * (px[:, 2 * k:2 * k + 2].mean(axis=(1, 2)) - 0.5) for k in range(3)]
    door = 60.0 * (px[:, 7, 7] - 0.5)
    return jnp.stack(bands + [door], axis=-1)


def test_reverse_engineering_finds_a_one_pixel_shortcut():
  rng = np.random.default_rng(0)
  px = 0.05 * rng.random((60, 8, 8, 3))
  y = np.repeat(np.arange(3), 20)
  for k in range(3):
    px[y == k, 2 * k:2 * k + 2] = 0.95
  x = ((px - np.asarray(MEAN)) / np.asarray(STD)).astype(np.float32)
  rev = audit.reverse_engineer(jax.random.key(0), _Shortcut(), {}, x, y, num_classes=4, mean=MEAN,
                               std=STD, steps=200)
  assert int(np.argmin(rev.mask_l1)) == 3 and rev.mask_l1[3] < 3  # about one pixel
  assert rev.mask_l1[:3].min() > 5  # a band needs many pixels
  assert rev.asr[3] > 0.9
  np.testing.assert_allclose(rev.anomaly_index, audit.anomaly_index(rev.mask_l1))
  assert int(np.argmax(rev.anomaly_index)) == 3 and rev.anomaly_index[3] > 2


def test_anomaly_index_by_hand():
  # median 10, |deviations| 0 1 1 0 8 -> MAD 1, scaled 1.4826
  np.testing.assert_allclose(audit.anomaly_index([10, 11, 9, 10, 2]),
                             np.array([0, -1, 1, 0, 8]) / 1.4826)


def test_kde_scores_against_numpy():
  rng = np.random.default_rng(0)
  real = rng.normal(size=(40, 4)).astype(np.float32)
  real /= np.linalg.norm(real, axis=1, keepdims=True)
  real_y = np.repeat([0, 1], 20)
  syn = np.stack([real[0], -real[5], real[25], real[3]]).astype(np.float32)
  syn_y = np.array([0, 0, 1, 1])  # the last one: a class-0 image labelled 1
  v = 0.1
  sc = audit.kde_scores(syn, syn_y, real, real_y, num_classes=2, variance=v)

  def dens(z, support):
    return np.mean(np.exp(-((z[None] - support) ** 2).sum(-1) / (2 * v)))
  for i in range(4):
    for c in range(2):
      np.testing.assert_allclose(np.exp(sc.log_density[i, c]), dens(syn[i], real[real_y == c]),
                                 rtol=1e-4)
    support = real[real_y == syn_y[i]]
    loo = [dens(support[j], np.delete(support, j, axis=0)) for j in range(len(support))]
    assert sc.quantile[i] == pytest.approx(np.mean(np.asarray(loo) < dens(syn[i], support)),
                                           abs=1e-9)
  own = sc.log_density[np.arange(4), syn_y]
  np.testing.assert_allclose(sc.margin, own - sc.log_density[np.arange(4), 1 - syn_y], rtol=1e-6)
  assert sc.margin[3] < 0  # closer to the class it came from
  np.testing.assert_allclose(sc.robust_z, audit.anomaly_index(sc.margin))


def test_kde_flag_needs_a_negative_margin_far_below_the_set():
  margin = np.array([3.0, 2.5, 3.5, 2.0, 3.0, -1.0, -20.0])
  sc = audit.KDEScores(np.zeros((7, 2)), np.zeros(7), margin, audit.anomaly_index(margin))
  # median 2.5; |deviations| 0.5 0 1 0.5 0.5 3.5 22.5 -> MAD 0.5, robust sd 0.7413;
  # z(-1) = 3.5 / 0.7413 = 4.72, z(-20) = 30.4; z(2.0) = 0.67 (and its margin is positive)
  np.testing.assert_array_equal(sc.outliers(3.5), [5, 6])
  np.testing.assert_array_equal(sc.outliers(5.0), [6])
  assert sc.outliers(0.5).tolist() == [5, 6]  # positive margins are never flagged
  # the SynSet flag: a class holding at least `count` outliers
  labels = np.array([0, 0, 1, 1, 2, 2, 2])
  assert sc.crowded_classes(labels, 3.5, 2).tolist() == [2]
  assert sc.crowded_classes(labels, 5.0, 2).tolist() == []
  assert sc.crowded_classes(np.array([0, 0, 1, 1, 2, 1, 2]), 3.5, 2).tolist() == []


def test_trigger_asr_with_fixed_predictions():
  x = np.zeros((4, 8, 8, 3), np.float32)
  y = np.array([0, 1, 2, 2])
  trig = [attacks.patch_trigger((8, 8, 3), size=2)]
  out = audit.trigger_asr(lambda im: np.full((1, len(im)), 2), x, y, trig, num_classes=3,
                          mean=MEAN, std=STD)
  # target 2: both images of classes 0 and 1 land in 2; targets 0, 1: none
  np.testing.assert_allclose(out[0, 0], [0.0, 0.0, 1.0])


def test_audit_flags_a_poisoned_set_and_not_the_clean_one():
  """A SynSet with stamped copies relabelled to class 0 teaches the trigger."""
  x, y = _toy_data(n_per_class=10, num_classes=3)
  t = attacks.patch_trigger((8, 8, 3), size=2, pattern="checker")
  px, py = x.copy(), y.copy()
  # half of class 0's slots: stamped images of classes 1 and 2
  px[5:10] = np.asarray(t.stamp(x[[10, 20, 11, 21, 12]], MEAN, STD))
  clean_x, clean_y = _toy_data(n_per_class=40, num_classes=3, seed=1)
  model = models.get("convnet-d2-w8", num_classes=3)
  protocol = get_protocol("smoke").replace(name="toy", epochs=100)  # no augmentation, 101 epochs
  kwargs = dict(mean=MEAN, std=STD, model=model, protocol=protocol, num_models=1,
                triggers=[t], cleanse=False)
  bad = audit.audit(jax.random.key(0), SynSet(px, py), clean_x, clean_y, **kwargs)
  good = audit.audit(jax.random.key(0), SynSet(x, y), clean_x, clean_y, **kwargs)
  assert bad.asr[0, 0, 0] > 0.9 and bad.trigger_flag and bad.suspicious
  assert good.asr[0, 0, 0] < 0.1 and not good.suspicious
  assert good.clean_accuracy[0] > 0.9 and bad.clean_accuracy[0] > 0.9
  assert "verdict: SUSPICIOUS" in bad.format() and "no backdoor found" in good.format()
  d = bad.to_dict()
  assert d["candidate_triggers"]["top"]["target"] == 0 and d["verdict"] == "suspicious"
  with pytest.raises(ValueError, match="asr_threshold"):
    audit.audit(jax.random.key(0), SynSet(x, y), clean_x, clean_y, **kwargs, asr_threshold=2.0)


def test_trigger_lift_by_hand():
  # 2 networks x 4 triggers x 2 classes; the mean over networks, then the median over triggers
  asr = np.array([[[0.40, 0.0], [0.02, 0.1], [0.04, 0.0], [0.00, 0.0]],
                  [[0.60, 0.0], [0.04, 0.1], [0.02, 0.2], [0.02, 0.0]]])
  # mean: [[.5, 0], [.03, .1], [.03, .1], [.01, 0]]; medians .03 and .05
  np.testing.assert_allclose(audit.trigger_lift(asr),
                             [[0.47, -0.05], [0.0, 0.05], [0.0, 0.05], [-0.02, -0.05]], atol=1e-12)


def _report(asr, anomaly=(0.0, 0.0), **kwargs):
  """An AuditReport built from given probe outputs (no network trained)."""
  asr = np.asarray(asr, np.float64)[None]
  k = asr.shape[-1]
  rev = audit.Reversed(np.ones(k), np.zeros(k), np.asarray(anomaly, np.float64),
                       np.zeros((k, 2, 2, 1)), np.zeros((k, 2, 2, 3)))
  return audit.AuditReport(np.array([0.9]), [f"t{i}" for i in range(asr.shape[1])], asr, rev,
                           None, np.array([0, 1]), audit.ASR_THRESHOLD,
                           audit.ANOMALY_THRESHOLD, audit.OUTLIER_Z, **kwargs)


def test_report_flags_a_trigger_by_its_lift_and_keeps_neural_cleanse_advisory():
  quiet = [[0.02, 0.04]] * 3
  # 0.22 to class 0 against a median of 0.02: lift 0.20 >= 0.1, under the 0.5 ASR threshold
  r = _report([[0.22, 0.04]] + quiet)
  assert r.top_lift == ("t0", 0, pytest.approx(0.20)) and r.trigger_flag and r.suspicious
  assert "lift over the target's median candidate 20.0 points (t0 -> class 0)" in r.format()
  assert r.to_dict()["candidate_triggers"]["top_lift"]["lift"] == pytest.approx(0.20)
  # every candidate sends 0.3 to class 0: no lift, and 0.3 < 0.5
  r = _report([[0.3, 0.04]] * 4)
  assert r.top_lift[2] == pytest.approx(0.0) and not r.trigger_flag
  # a lift under the threshold, or set higher
  assert not _report([[0.10, 0.04]] + quiet).trigger_flag
  assert not _report([[0.22, 0.04]] + quiet, lift_threshold=0.25).trigger_flag
  # two candidates: no median to speak of, the ASR threshold alone
  r = _report([[0.4, 0.0], [0.0, 0.0]])
  assert r.top_lift is None and not r.trigger_flag and "lift" not in r.format()
  # Neural Cleanse over its threshold: reported, in the verdict only when asked
  r = _report(quiet, anomaly=(3.0, -1.0))
  assert r.cleanse_flag and not r.suspicious
  assert "FLAGGED (advisory: not in the verdict)" in r.format()
  assert "verdict: no backdoor found (by triggers + kde;" in r.format()
  assert _report(quiet, anomaly=(3.0, -1.0), verdict_probes=("cleanse",)).suspicious
  assert r.to_dict()["verdict_probes"] == ["triggers", "kde"]
  # which class each probe fired on; the verdict names the classes of its own probes only
  assert r.flagged_classes == {"triggers": [], "cleanse": [0], "kde": []}
  assert r.suspected_targets == [] and r.to_dict()["suspected_targets"] == []
  r = _report([[0.22, 0.04], [0.02, 0.60]] + quiet, anomaly=(-1.0, 3.0))
  assert r.flagged_classes == {"triggers": [0, 1], "cleanse": [1], "kde": []}
  assert "verdict: SUSPICIOUS (suspected target classes 0, 1; by triggers + kde;" in r.format()
  assert r.to_dict()["flagged_classes"]["triggers"] == [0, 1]
  r = _report([[0.22, 0.04]] + quiet)
  assert "(suspected target class 0; by" in r.format()


def test_audit_settings_refuse_a_bad_lift_threshold_or_probe_name():
  base = dict(num_models=1, cleanse_images=8, cleanse_steps=1, asr_threshold=0.5,
              anomaly_threshold=2.0, outlier_z=3.5)
  audit.check_settings(**base, lift_threshold=0.1, verdict_probes="kde")
  with pytest.raises(ValueError, match="lift_threshold"):
    audit.check_settings(**base, lift_threshold=0.0)
  for bad in (("triggers", "nc"), (), ("kde", "kde")):
    with pytest.raises(ValueError, match="verdict_probes"):
      audit.check_settings(**base, verdict_probes=bad)


def test_cli_verdict_probes_flag_is_parsed_and_checked(capsys):
  from jaxdd import cli
  from jaxdd.cli import trust
  assert trust.probe_list("triggers, cleanse,kde") == ("triggers", "cleanse", "kde")
  with pytest.raises(SystemExit):
    cli.main(["audit", "nowhere", "--verdict-probes", "triggers,nc"])
  assert "name distinct probes among triggers,cleanse,kde" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_audit_of_a_smoke_run(tmp_path, capsys):
  import json

  from jaxdd import cli
  work = str(tmp_path / "run")
  assert cli.main(["distill", "--preset", "smoke", "--workdir", work, "--quiet"]) == 0
  syn = f"{work}/synset"
  out = str(tmp_path / "audit.json")
  flags = ["--protocol", "smoke", "--num-models", "1", "--clean-images", "300",
           "--cleanse-images", "64", "--cleanse-steps", "5", "--quiet"]
  assert cli.main(["keys", "new", str(tmp_path / "k"), "--quiet"]) == 0
  # an unsigned SynSet under a trust anchor: refused before any work, nothing written
  assert cli.main(["audit", syn, *flags, "--trust", str(tmp_path / "k.pub"), "--out", out]) == 2
  assert not (tmp_path / "audit.json").exists()
  # too few clean images for the trigger search: refused before the surrogate is trained
  capsys.readouterr()
  assert cli.main(["audit", syn, *flags, "--clean-images", "50", "--out", out]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "50 clean images are too few" in err[0] and "--clean-images" in err[0]
  assert not (tmp_path / "audit.json").exists()
  rc = cli.main(["audit", syn, *flags, "--out", out])
  text = capsys.readouterr().out
  report = json.load(open(out))
  assert rc == (3 if report["verdict"] == "suspicious" else 0)
  assert "signature: UNSIGNED" in text and "verdict:" in text
  from jaxdd import synset
  n = len(synset.load(syn)[0].labels)
  q = np.asarray(report["kde_outliers"]["quantile"])
  assert q.shape == (n,)
  assert ((0 <= q) & (q <= 1)).all()
  assert len(report["reverse_engineering"]["mask_l1"]) == len(report["candidate_triggers"]
                                                                 ["asr_mean_over_networks"][0])


def test_report_warns_when_its_networks_are_too_weak_to_judge():
  """Clean accuracy under a quarter of the way from chance to 100 % (2 classes: 62.5 %)."""
  quiet = [[0.02, 0.04]] * 3
  ok = _report(quiet)  # 90 %
  assert ok.too_weak is None and "WARNING" not in ok.format() and ok.to_dict()["warning"] is None
  weak = dataclasses.replace(ok, clean_accuracy=np.array([0.55, 0.65]))
  assert "60.0 % clean accuracy, below 62.5 % (chance 50 %)" in weak.too_weak
  lines = weak.format().splitlines()
  assert lines[-2].startswith("WARNING: the audit's networks reach 60.0 %")
  assert weak.to_dict()["warning"] == weak.too_weak
  assert dataclasses.replace(ok, clean_accuracy=np.array([0.625])).too_weak is None
