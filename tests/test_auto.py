"""``--weighting auto``: the label-free weighting chosen on validation data, once per dataset."""
import json
import math
import os
import types

import numpy as np
import pytest

from jaxdd import cli, runs
from jaxdd.config import get_config
from jaxdd.runs import auto, single, study_runs

N_VALID_CONFLICTING = 200


def _cfg(**kw):
  base = dict(weighting="auto", iterations=4, checkpoint_every=2, log_every=1)
  base.update(kw)
  return get_config("smoke", **base)


def _fake_data(with_groups=True):
  aligned = np.array([True] * 800 + [False] * N_VALID_CONFLICTING) if with_groups else None
  return types.SimpleNamespace(valid=types.SimpleNamespace(aligned=aligned), identity=None)


def _name(config):
  """The candidate a config is (the candidates differ in these fields)."""
  fields = ("weighting", "init", "real_sampling", "kde_floor", "fairdd_eps", "kde_features")
  base = {"init": "real", "real_sampling": "uniform", "kde_floor": 0.0, "fairdd_eps": "median",
          "kde_features": "surrogate"}
  for name, over in auto.CANDIDATES.items():
    if all(getattr(config, f) == {**base, **over}.get(f) for f in fields):
      return name
  raise AssertionError(f"not a candidate: {config.weighting}")


@pytest.fixture
def study(monkeypatch):
  """Candidates that 'score' what ``scores`` says (per seed, 3 networks), no distillation."""
  scores, calls = {}, []
  data = _fake_data()
  monkeypatch.setattr(study_runs, "check_study", lambda configs, root, run_data: None)
  monkeypatch.setattr(study_runs, "distil_groups", lambda *a, **k: 0)
  monkeypatch.setattr(auto.rundata, "RunData", lambda config: data)

  def distilled(config, root, run_data, progress):
    calls.append(config)
    return study_runs.run_dir(root, config), None

  def evaluate_cached(config, workdir, run_data, syn, **kw):
    v = scores[_name(config)][config.seed]
    return {"result": {"per_model": {"conflicting": [v] * 3, "overall": [v + 0.1] * 3,
                                     "worst_group": [v - 0.1] * 3}}}

  monkeypatch.setattr(study_runs, "distilled", distilled)
  monkeypatch.setattr(study_runs, "evaluate_cached", evaluate_cached)
  return types.SimpleNamespace(scores=scores, calls=calls, data=data)


def _scores(default, **better):
  out = {n: {0: default, 1: default} for n in auto.CANDIDATES}
  out.update(better)
  return out


def test_the_incumbent_stays_unless_a_candidate_wins_every_seed_beyond_twice_the_noise(study):
  base = _cfg()
  assert base.init == "real" and auto.INCUMBENT == "kde"
  # 200 conflicting validation images per seed, 2 seeds: the noise of a difference of two
  # accuracies near 0.6 is hypot(se, se) with se = sqrt(0.6 * 0.4 / 400)
  noise = math.hypot(*[math.sqrt(0.6 * 0.4 / (2 * N_VALID_CONFLICTING))] * 2)
  small = 1.5 * noise  # ahead, but within 2 x noise
  study.scores.update(_scores(0.6, fairdd_pseudo={0: 0.6 + small, 1: 0.6 + small}))
  choice = auto.choose(base, study.data, progress=False)
  assert choice["chosen"] == "kde" and choice["judged"] and not choice["reused"]
  assert choice["decision"]["best"] == "fairdd_pseudo"
  assert "within 2 x noise" in choice["reason"]
  # every usable candidate at both seeds, and nothing else
  assert len(study.calls) == 2 * len(auto.CANDIDATES)
  # the same data and settings again: read back, nothing distilled
  study.calls.clear()
  again = auto.choose(base.replace(seed=3), study.data, progress=False)
  assert again["reused"] and again["chosen"] == "kde" and study.calls == []


def test_a_candidate_better_on_every_seed_by_more_than_twice_the_noise_is_chosen(study):
  study.scores.update(_scores(0.5, fairdd_batch={0: 0.8, 1: 0.75},
                              kde_init={0: 0.9, 1: 0.4}))  # best mean, but not on every seed
  choice = auto.choose(_cfg(), study.data, progress=False)
  assert choice["chosen"] == "fairdd_batch"
  assert choice["overrides"] == {"weighting": "fairdd_batch"}
  assert choice["reason"].startswith("better on every seed")
  resolved, rec = auto.resolve(_cfg(), study.data, progress=False)
  assert resolved.weighting == "fairdd_batch" and rec["reused"]
  stored = json.load(open(os.path.join(choice["root"], "choice.json")))
  assert stored["candidates"]["fairdd_batch"]["criterion"] == [[0.8] * 3, [0.75] * 3]
  md = open(os.path.join(choice["root"], "choice.md")).read()
  assert "| fairdd_batch | 77.5 | 87.5 | 67.5 |" in md


def test_a_method_without_synchronized_matching_leaves_the_fairdd_candidates_out(study):
  study.scores.update(_scores(0.5))
  choice = auto.choose(_cfg(method="dsa"), study.data, progress=False)
  assert set(choice["left_out"]) == {n for n in auto.CANDIDATES if n.startswith("fairdd")}
  assert choice["usable"] == [n for n in auto.CANDIDATES if not n.startswith("fairdd")]
  assert not any(c.weighting.startswith("fairdd") for c in study.calls)


def test_without_group_labels_nothing_is_distilled_and_the_decision_says_why(study,
                                                                               monkeypatch):
  data = _fake_data(with_groups=False)
  choice = auto.choose(_cfg(), data, progress=False)
  assert study.calls == []
  assert choice["chosen"] == "kde" and not choice["judged"]
  assert "no group labels" in choice["reason"] and "--group-file" in choice["fix"]
  assert "bias-conflicting" in choice["cannot_judge"]


def test_the_choice_is_keyed_by_the_data_and_settings_not_the_seed():
  data = _fake_data()
  from jaxdd import protocols
  p = protocols.get_protocol("smoke")
  k = auto.choice_key(_cfg(), data, p)
  assert auto.choice_key(_cfg(seed=5), data, p) == k
  assert auto.choice_key(_cfg(kde_variance=0.1), data, p) != k  # the candidates inherit it
  assert auto.choice_key(_cfg(lr_img=3.0), data, p) != k
  assert auto.choice_key(_cfg(ipc=3), data, p) != k
  assert auto.choice_key(_cfg(conflict_ratio=0.1), data, p) != k
  assert auto.choice_key(_cfg(), data, protocols.get_protocol("cpu")) != k


def test_a_damaged_or_foreign_choice_is_refused_in_one_line(study):
  study.scores.update(_scores(0.5))
  choice = auto.choose(_cfg(), study.data, progress=False)
  path = os.path.join(choice["root"], "choice.json")
  rec = json.load(open(path))
  rec["overrides"] = {"weighting": "none"}
  json.dump(rec, open(path, "w"))
  with pytest.raises(ValueError, match="another jaxdd version; delete"):
    auto.choose(_cfg(), study.data, progress=False)
  open(path, "w").write("{")
  with pytest.raises(ValueError, match="choose again"):
    auto.choose(_cfg(), study.data, progress=False)


def test_auto_is_resolved_before_a_run_and_refused_where_it_is_not():
  with pytest.raises(ValueError, match="jaxdd.runs.run"):
    single.run(_cfg(), "/nonexistent/never-written", progress=False)
  with pytest.raises(ValueError, match="leave --init, --real-sampling"):
    _cfg(init="weighted")
  cfg = _cfg(weighting="kde")
  assert auto.resolve(cfg) == (cfg, None)
  with pytest.raises(ValueError, match="unknown auto candidate"):
    auto.candidate_config(cfg, "oracle")  # the true bias labels are never a candidate
  assert all(o["weighting"] not in ("oracle", "fairdd", "none")
             for o in auto.CANDIDATES.values())


@pytest.mark.slow
def test_distill_with_auto_from_the_command_line_records_its_choice(tmp_path, capsys):
  work = str(tmp_path / "run")
  argv = ["distill", "--preset", "smoke", "--weighting", "auto", "--iterations", "4",
          "--checkpoint-every", "2", "--quiet", "--workdir", work]
  assert cli.main(argv) == 0
  out = capsys.readouterr().out
  rec = json.load(open(os.path.join(work, "auto.json")))
  assert rec["judged"] and rec["chosen"] in auto.CANDIDATES
  assert f"auto chose **{rec['chosen']}**" in out
  cfg = json.load(open(os.path.join(work, "config.json")))["config"]
  assert {k: cfg[k] for k in rec["overrides"]} == rec["overrides"]
  # every candidate at both seeds in the cache, validation only: no test evaluation
  root = rec["root"]
  evals = sorted(f for d, _, fs in os.walk(root) for f in fs if f.startswith("eval-"))
  assert len(evals) == 2 * len(auto.CANDIDATES)
  assert all(f.startswith("eval-valid-") for f in evals)
  # the same command again: the run is complete and the choice is read, not made again
  assert cli.main(argv) == 0
  assert json.load(open(os.path.join(work, "auto.json")))["reused"]
  # from Python, another seed: the same choice, no candidate distilled again
  summary = runs.run(_cfg(seed=1), str(tmp_path / "py"), progress=False)
  assert 0.0 <= summary["mean"]["overall"] <= 1.0
  assert json.load(open(tmp_path / "py" / "auto.json"))["chosen"] == rec["chosen"]


def test_a_multi_process_run_refuses_auto_in_one_line(tmp_path, capsys):
  argv = ["distill", "--preset", "smoke", "--weighting", "auto", "--workdir",
          str(tmp_path / "r"), "--coordinator", "localhost:1234", "--num-processes", "2",
          "--process-id", "0", "--quiet"]
  assert cli.main(argv) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "without --coordinator first" in err[0]
  assert not os.path.exists(tmp_path / "r")
