"""The equalized-odds differences (DEO_M, DEO_A) against a hand-computed confusion table and a
per-sample transcription of FairDD's evaluation loop."""
import numpy as np


def _fairdd_loop(preds, labels, groups, num_classes, num_groups):
  """FairDD's evaluation, transcribed as a per-sample loop: per (group, class), correct
  predictions over count + 1e-8; per class, max minus min over groups; max and mean."""
  true_count = np.zeros((num_groups, num_classes))
  data_count = np.zeros((num_groups, num_classes))
  for p, y, a in zip(preds, labels, groups):
    true_count[a, y] += float(p == y)
    data_count[a, y] += 1.0
  acc = true_count / (data_count + 1e-8)
  spread = acc.max(axis=0) - acc.min(axis=0)
  return spread.max(), spread.mean()


def test_equalized_odds_against_a_hand_computed_confusion_table():
  from jaxdd.metrics import equalized_odds, group_accuracies
  # 2 classes x 3 colour groups. Class 0: group 0 has 4 samples, 3 right (0.75); group 1 has 2,
  # both right (1.0); group 2 has 2, none right (0.0) -> spread 1.0. Class 1: group 0 has 2, 1
  # right (0.5); group 1 has 2, 1 right (0.5); group 2 has 4, 4 right (1.0) -> spread 0.5.
  # DEO_M = max(1.0, 0.5) = 1.0; DEO_A = mean = 0.75.
  labels = np.array([0] * 8 + [1] * 8)
  groups = np.array([0, 0, 0, 0, 1, 1, 2, 2, 0, 0, 1, 1, 2, 2, 2, 2])
  preds = np.array([0, 0, 0, 1, 0, 0, 1, 1, 1, 0, 1, 0, 1, 1, 1, 1])
  r = group_accuracies(preds, labels, groups, 2, 3)
  np.testing.assert_allclose(np.asarray(r.table), [[0.75, 1.0, 0.0], [0.5, 0.5, 1.0]])
  deo_m, deo_a = equalized_odds(np.asarray(r.table), np.asarray(r.counts))
  assert (float(deo_m), float(deo_a)) == (1.0, 0.75)
  ref_m, ref_a = _fairdd_loop(preds, labels, groups, 2, 3)
  np.testing.assert_allclose([deo_m, deo_a], [ref_m, ref_a], atol=1e-6)  # 1e-8 in the count


def test_equalized_odds_empty_cells_count_as_zero_like_fairdd_or_are_skipped():
  from jaxdd.metrics import equalized_odds, group_accuracies
  # Class 1 has no sample in group 2: FairDD's code counts that cell as accuracy 0.
  labels = np.array([0, 0, 0, 1, 1])
  groups = np.array([0, 1, 2, 0, 1])
  preds = np.array([0, 0, 1, 1, 0])
  r = group_accuracies(preds, labels, groups, 2, 3)
  table, counts = np.asarray(r.table), np.asarray(r.counts)
  # class 0: 1, 1, 0 -> spread 1; class 1: 1, 0, (empty) -> zero: spread 1, skip: spread 1
  assert [float(v) for v in equalized_odds(table, counts)] == [1.0, 1.0]
  ref = _fairdd_loop(preds, labels, groups, 2, 3)
  np.testing.assert_allclose(equalized_odds(table, counts), ref, atol=1e-6)
  # class 1 right in group 0 and 1 -> zero: spread 1 (the empty cell is 0); skip: spread 0
  preds2 = np.array([0, 0, 1, 1, 1])
  r2 = group_accuracies(preds2, labels, groups, 2, 3)
  t2, c2 = np.asarray(r2.table), np.asarray(r2.counts)
  assert [float(v) for v in equalized_odds(t2, c2)] == [1.0, 1.0]
  assert [float(v) for v in equalized_odds(t2, c2, empty="skip")] == [1.0, 0.5]
  np.testing.assert_allclose(equalized_odds(t2, c2), _fairdd_loop(preds2, labels, groups, 2, 3),
                             atol=1e-6)
  # per network: a leading axis of networks gives one pair per network
  m, a = equalized_odds(np.stack([table, t2]), counts)
  assert m.shape == (2,) and a.shape == (2,)
