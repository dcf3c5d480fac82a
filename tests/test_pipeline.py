"""End-to-end runs on the embedded CMNIST at smoke scale: artifacts, resume, CLI."""
import json
import os

import numpy as np
import pytest
import run_folders

from jaxdd import cli, diagnostics, distill, runs, synset
from jaxdd.config import get_config, validate
from jaxdd.runs import driver


def _cfg(**kw):
  base = dict(weighting="none", iterations=4, checkpoint_every=2, log_every=1)
  base.update(kw)
  return get_config("smoke", **base)


@pytest.mark.slow
def test_killed_run_resumes_to_the_uninterrupted_result(tmp_path):
  cfg = _cfg()
  full = runs.run(cfg, str(tmp_path / "full"), progress=False)
  # "kill" after 2 steps (a checkpoint exists at step 2), then start again
  stopped = runs.run(cfg, str(tmp_path / "resumed"), progress=False, stop_after=2)
  assert stopped == {"stopped_at": 2}
  assert not os.path.exists(tmp_path / "resumed" / "synset")
  resumed = runs.run(cfg, str(tmp_path / "resumed"), progress=False)
  a, _ = synset.load(str(tmp_path / "full" / "synset"))
  b, meta = synset.load(str(tmp_path / "resumed" / "synset"))
  np.testing.assert_array_equal(a.images, b.images)
  assert resumed["mean"] == full["mean"]
  rows = [json.loads(l) for l in open(tmp_path / "resumed" / "metrics.jsonl")]
  assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4]
  # the bias score rows (step 0 and every 10 % of the iterations), each step once
  assert [r["step"] for r in rows if "bias_aligned_fraction" in r] == [0, 1, 2, 3, 4]
  # the artifact carries what evaluation needs
  assert meta["method"] == "dm" and meta["ipc"] == 2 and meta["dataset"]["name"] == "cmnist"
  assert len(meta["mean"]) == 3 and meta["eval_protocol"] == "smoke"
  ev = json.load(open(tmp_path / "full" / "eval.json"))
  assert ev["result"]["protocol"]["name"] == "smoke"
  for m in ("overall", "aligned", "conflicting", "worst_group"):
    assert 0.0 <= ev["mean"][m] <= 1.0
  assert os.path.getsize(tmp_path / "full" / "plots" / "synset.png") > 1000


@pytest.mark.slow
def test_an_interrupted_run_with_a_linked_synset_is_refused_then_resumes_once_moved(
    tmp_path, capsys):
  work = str(tmp_path / "run")
  assert runs.run(_cfg(), work, progress=False, stop_after=2) == {"stopped_at": 2}
  (tmp_path / "mine").mkdir()
  (tmp_path / "mine" / "notes.txt").write_text("precious")
  os.symlink(tmp_path / "mine", os.path.join(work, "synset"))
  before = sorted(os.listdir(os.path.join(work, "checkpoints")))
  argv = ["distill", "--preset", "smoke", "--weighting", "none", "--iterations", "4",
          "--checkpoint-every", "2", "--log-every", "1", "--quiet", "--workdir", work]
  capsys.readouterr()
  assert cli.main(argv) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "move" in err[0] and "rerun the same command" in err[0], err
  # refused before any step: no checkpoint beyond the interrupted one, the link's folder as it was
  assert sorted(os.listdir(os.path.join(work, "checkpoints"))) == before
  assert os.listdir(tmp_path / "mine") == ["notes.txt"]
  os.rename(os.path.join(work, "synset"), tmp_path / "moved")  # the fix the line names
  assert cli.main(argv) == 0
  assert synset.load(os.path.join(work, "synset"))[1]["ipc"] == 2
  assert os.listdir(tmp_path / "mine") == ["notes.txt"]


@pytest.mark.slow
def test_a_different_config_refuses_the_workdir(tmp_path):
  runs.run(_cfg(iterations=2), str(tmp_path / "r"), progress=False, stop_after=1)
  with pytest.raises(ValueError, match="different config"):
    runs.run(_cfg(iterations=2, ipc=3), str(tmp_path / "r"), progress=False)


def test_bad_config_is_rejected_before_any_work(tmp_path):
  with pytest.raises(ValueError, match="weighting"):
    runs.run(_cfg(weighting="magic"), str(tmp_path / "x"), progress=False)
  with pytest.raises(ValueError, match="unknown preset"):
    get_config("huge")
  with pytest.raises(ValueError, match="unknown RunConfig fields"):
    get_config("smoke", ipcs=3)
  assert not os.path.exists(tmp_path / "x")


@pytest.mark.slow
def test_cli_kde_run_evaluate_and_report(tmp_path, capsys):
  work = str(tmp_path / "kde")
  rc = cli.main(["distill", "--preset", "smoke", "--workdir", work, "--weighting", "kde",
                 "--iterations", "2"])
  assert rc == 0
  report = json.load(open(os.path.join(work, "weights.json")))
  assert "auroc" in json.dumps(report)
  assert run_folders.unlisted(work) == []  # weights.json and plots/weights.png included
  out = str(tmp_path / "ev.json")
  assert cli.main(["evaluate", os.path.join(work, "synset"), "--protocol", "smoke",
                   "--model", "convnet-d2-w8", "--num-models", "2", "--out", out]) == 0
  assert json.load(open(out))["num_models"] == 2
  assert cli.main(["report", str(tmp_path)]) == 0
  assert "dm+kde" in capsys.readouterr().out
  # bad input: a clear error and exit code 2, nothing written
  assert cli.main(["evaluate", str(tmp_path / "missing")]) == 2
  assert "no SynSet artifact" in capsys.readouterr().err


@pytest.mark.slow
def test_baselines_under_the_same_protocol(tmp_path):
  cfg = _cfg(iterations=1)
  runs.run(cfg, str(tmp_path / "dm"), progress=False)
  res = runs.run_baselines(cfg, str(tmp_path / "b"), which=("random", "kcenter", "lff", "selecmix"),
                           vanilla_synset=str(tmp_path / "dm" / "synset"), progress=False)
  assert set(res) == {"random", "kcenter", "lff", "selecmix"}
  for r in res.values():
    assert r["result"]["protocol"]["name"] == "smoke"
    assert all(0.0 <= v <= 1.0 for v in r["mean"].values())
  assert res["lff"]["result"]["method"] == "lff"
  assert res["selecmix"]["result"]["method"] == "selecmix"
  assert 0.0 <= res["random"]["selected_conflicting_fraction"] <= 1.0
  saved = json.load(open(tmp_path / "b" / "baselines.json"))
  assert saved["random"]["mean"] == res["random"]["mean"]
  with pytest.raises(ValueError, match="vanilla_synset"):
    runs.run_baselines(cfg, str(tmp_path / "c"), which=("dfa",))


@pytest.mark.slow
def test_gradient_matching_run_resumes_and_is_recorded(tmp_path):
  cfg = _cfg(method="dsa")
  assert (cfg.method, cfg.lr_img, cfg.outer_loop, cfg.inner_loop) == ("dsa", 0.1, 2, 2)
  full = runs.run(cfg, str(tmp_path / "full"), progress=False)
  assert runs.run(cfg, str(tmp_path / "resumed"), progress=False, stop_after=1) == {
      "stopped_at": 1}
  resumed = runs.run(cfg, str(tmp_path / "resumed"), progress=False)
  a, meta = synset.load(str(tmp_path / "full" / "synset"))
  b, _ = synset.load(str(tmp_path / "resumed" / "synset"))
  np.testing.assert_array_equal(a.images, b.images)
  assert resumed["mean"] == full["mean"]
  assert meta["method"] == "dsa" and meta["config"]["method"] == "dsa"
  saved = json.load(open(tmp_path / "full" / "config.json"))["config"]
  assert saved["method"] == "dsa" and saved["lr_net"] == 0.01


@pytest.mark.slow
def test_method_flag_and_its_errors(tmp_path, capsys):
  assert get_config("paper", method="dsa").iterations == 1000
  assert get_config("paper", method="dc").init == "noise"
  assert get_config("cpu", method="dsa", lr_img=0.5).lr_img == 0.5  # user flag wins
  with pytest.raises(ValueError, match="unknown method"):
    get_config("smoke", method="mcmc")
  with pytest.raises(ValueError, match="outer_loop"):
    validate(get_config("smoke", method="dc", ipc=7, outer_loop=None,
                        inner_loop=None).replace(outer_loop=None))
  with pytest.raises(SystemExit) as exc:  # argparse: --method has choices
    cli.main(["distill", "--preset", "smoke", "--workdir", str(tmp_path / "x"), "--method", "mcmc"])
  assert exc.value.code == 2 and "invalid choice: 'mcmc'" in capsys.readouterr().err
  assert not os.path.exists(tmp_path / "x")
  work = str(tmp_path / "dc")
  assert cli.main(["distill", "--preset", "smoke", "--method", "dc", "--weighting", "kde",
                   "--iterations", "1", "--workdir", work]) == 0
  assert json.load(open(os.path.join(work, "eval.json")))["method"] == "dc+kde"


@pytest.mark.slow
@pytest.mark.gate  # the README's main job, in the 15-minute gate too
def test_reproduce_writes_the_comparison_with_bias_scores(tmp_path):
  cfg = _cfg(iterations=2)
  work = str(tmp_path / "rep")
  results = runs.reproduce(cfg, work, progress=False)
  assert set(results) == {"dm", "dm+kde"}
  table = open(os.path.join(work, "comparison.md")).read()
  assert "bias score (aligned %)" in table and "95.0 % of the training images" in table
  # the column is the bias score of each saved SynSet under the run's classifier
  classifier = runs.bias_classifier(cfg, runs.RunData(cfg))
  for name in ("dm", "dm+kde"):
    # every file the run wrote is one the work-folder guard protects
    assert run_folders.unlisted(os.path.join(work, name.replace("+", "_"))) == []
    syn, _ = synset.load(os.path.join(work, name.replace("+", "_"), "synset"))
    expected = diagnostics.bias_score(classifier, syn.images, syn.labels)["aligned_fraction"]
    assert results[name]["bias_score"]["aligned_fraction"] == expected
    # the DEO columns are those of the run's stored per-network group table
    deo = runs.text.deo_cells(json.load(open(os.path.join(
        work, name.replace("+", "_"), "eval.json")))["result"])
    row = [l for l in table.splitlines() if l.startswith(f"| {name} |")][0]
    assert row.endswith(f"| {deo[0]} | {deo[1]} |")
    assert f"| {100 * expected:.1f} |" in [l for l in table.splitlines()
                                           if l.startswith(f"| {name} |")][0]
    # the second table: the bias score over distillation ends at the SynSet's own score
    drift = [l for l in table.splitlines() if l.startswith(f"| {name} |")][1]
    assert drift.endswith(f"{100 * expected:.1f} (step {cfg.iterations}) |")
  saved = json.load(open(os.path.join(work, "comparison.json")))
  assert saved["dm"]["bias_score"]["aligned_fraction"] == results["dm"]["bias_score"]["aligned_fraction"]
  # the yardstick: the same classifier on the held-out valid images (95 % aligned)
  ref = saved["dm"]["bias_score"]["reference"]
  assert ref["true_aligned_fraction"] == pytest.approx(0.95, abs=0.01)
  assert f"reads held-out real images ({100 * ref['true_aligned_fraction']:.1f} % aligned)" in table


def test_make_distiller_passes_real_dtype_to_dm_only():
  dm_cfg = get_config("smoke")
  assert isinstance(runs.make_distiller(dm_cfg, 10, None, real_dtype="bfloat16"),
                    distill.Distiller)
  with pytest.raises(ValueError, match="real_dtype is a DM option"):
    runs.make_distiller(get_config("smoke", method="dsa"), 10, None,
                        real_dtype="bfloat16")
  with pytest.raises(ValueError, match="real_dtype"):  # distill.dm's own check
    runs.make_distiller(dm_cfg, 10, None, real_dtype="int8")


@pytest.mark.slow
@pytest.mark.parametrize("weighting", ["kde", "fairdd_pseudo"])
def test_seeds_in_one_program_equal_the_runs_one_by_one(tmp_path, weighting):
  # Each seed keeps its own keys, surrogate and weights: run i of the group is the run
  # distill_stage makes of config i, up to float rounding. A group interrupted after a
  # checkpoint resumes as a group to the same SynSets.
  from jaxdd import runs
  from jaxdd.runs import driver
  extra = dict(fairdd_clusters=4) if weighting == "fairdd_pseudo" else {}
  base = get_config("smoke", weighting=weighting, iterations=4, checkpoint_every=2, **extra)
  configs = [base.replace(seed=s) for s in (0, 3)]
  run_data = runs.RunData(base)
  grouped = [str(tmp_path / "g" / f"s{c.seed}") for c in configs]
  syns = runs.distill_seeds(configs, grouped, run_data=run_data, progress=False)
  # the second run of the group (its row 1 of every stacked array) against the run alone
  alone = runs.distill_stage(configs[1], str(tmp_path / "alone"), run_data=run_data,
                             progress=False)
  scale = float(np.abs(alone.images).max())
  np.testing.assert_allclose(syns[1].images, alone.images, atol=1e-5 * scale)
  assert sorted(os.listdir(grouped[1])) == sorted(os.listdir(tmp_path / "alone"))
  if weighting == "fairdd_pseudo":
    from test_fairdd_pseudo import check_pseudo_group_report
    for w in grouped:
      check_pseudo_group_report(w, 4)
  assert not np.allclose(syns[0].images, syns[1].images)
  if weighting != "kde":
    return  # resuming does not depend on the weighting
  # stopped at step 2 (as a time budget stops it), then resumed as a group
  stopped = [str(tmp_path / "h" / f"s{c.seed}") for c in configs]
  real_drive = driver.drive

  def stop_at_2(d, state, data, start, end, k, **kw):
    if start == 0:
      real_drive(d, state, data, 0, 2, k, **kw)
      raise driver.Interrupted(2)
    return real_drive(d, state, data, start, end, k, **kw)
  driver.drive = stop_at_2
  try:
    with pytest.raises(driver.Interrupted):
      runs.distill_seeds(configs, stopped, run_data=run_data, progress=False)
    assert all(os.listdir(os.path.join(w, "checkpoints")) == ["2"] for w in stopped)
    again = runs.distill_seeds(configs, stopped, run_data=run_data, progress=False)
  finally:
    driver.drive = real_drive
  for a, b in zip(again, syns):
    np.testing.assert_allclose(a.images, b.images, atol=1e-5 * float(np.abs(b.images).max()))
  loaded = runs.distill_seeds(configs, stopped, run_data=run_data, progress=False)
  np.testing.assert_array_equal(loaded[1].images, again[1].images)
  with pytest.raises(ValueError, match="share a seed"):
    runs.distill_seeds([base, base], [str(tmp_path / "x"), str(tmp_path / "y")],
                       run_data=run_data, progress=False)
  with pytest.raises(ValueError, match="differ in more"):
    runs.distill_seeds([base, base.replace(seed=1, ipc=3)],
                       [str(tmp_path / "x"), str(tmp_path / "y")], run_data=run_data,
                       progress=False)


@pytest.mark.slow
def test_a_group_of_runs_equals_the_runs_one_by_one(tmp_path):
  from jaxdd import runs
  base = get_config("smoke", weighting="kde", iterations=3, checkpoint_every=2)
  configs = [base, base.replace(lr_img=3.0, kde_temperature=0.5)]
  assert len({runs.group_key(c) for c in configs}) == 1
  assert not runs.groupable(base.replace(kde_scope="class"))
  grouped = [str(tmp_path / "g" / f"r{i}") for i in range(2)]
  run_data = runs.RunData(base)
  syns = runs.distill_group(configs, grouped, run_data=run_data, progress=False)
  for i, c in enumerate(configs):
    alone = runs.distill_stage(c, str(tmp_path / f"alone{i}"), run_data=run_data,
                               progress=False)
    scale = float(np.abs(alone.images).max())
    np.testing.assert_allclose(syns[i].images, alone.images, atol=1e-5 * scale)
    # the directory is a run's own: the same files, metrics rows and checkpoints
    assert sorted(os.listdir(grouped[i])) == sorted(os.listdir(tmp_path / f"alone{i}"))
    rows = [json.loads(line) for line in open(os.path.join(grouped[i], "metrics.jsonl"))]
    ref = [json.loads(line) for line in open(tmp_path / f"alone{i}" / "metrics.jsonl")]
    assert [r["step"] for r in rows] == [r["step"] for r in ref]
    np.testing.assert_allclose([r["loss"] for r in rows if "loss" in r],
                               [r["loss"] for r in ref if "loss" in r], rtol=1e-4)
    assert sorted(os.listdir(os.path.join(grouped[i], "checkpoints"))) == ["2", "3"]
    # distill_stage finds the group's SynSet instead of distilling again
    again = runs.distill_stage(c, grouped[i], run_data=run_data, progress=False)
    np.testing.assert_array_equal(again.images, syns[i].images)
  with pytest.raises(ValueError, match="already holds"):
    runs.distill_group(configs, grouped, run_data=run_data, progress=False)
  with pytest.raises(ValueError, match="differ in more"):
    runs.distill_group([base, base.replace(ipc=3)], [str(tmp_path / "x"), str(tmp_path / "y")],
                       run_data=run_data, progress=False)
  # tune's grouping takes fresh, groupable runs only, and never a group of one
  root = str(tmp_path / "study")
  for c, w in zip(configs, grouped):  # as if tune had distilled them: not fresh
    os.makedirs(os.path.dirname(runs.run_dir(root, c)), exist_ok=True)
    os.symlink(w, runs.run_dir(root, c))
  assert runs.distil_groups(configs + [base.replace(kde_scope="class"),
                                       base.replace(ipc=3)], root, run_data,
                            progress=False) == 0


def test_chunks_end_at_checkpoints_and_bias_scores():
  assert list(driver.chunks(0, 10, 4, (5, 0))) == [(0, 4), (4, 1), (5, 4), (9, 1)]
  assert list(driver.chunks(3, 9, 1, (2,))) == [(i, 1) for i in range(3, 9)]
  assert list(driver.chunks(0, 6, 50, (500, 2))) == [(0, 2), (2, 2), (4, 2)]
  with pytest.raises(ValueError, match="steps_per_call must be 'auto' or a positive count"):
    _cfg(steps_per_call="0")
  assert runs.steps_per_call(_cfg()) == 1  # the cpu policy's
  # not part of the digests: a run may resume with another value
  assert _cfg(steps_per_call="7").digest() == _cfg().digest()


def test_the_chunk_plan_is_made_as_the_loop_asks_for_it():
  # 10^18 steps (or 2^31 - 1, the most --iterations takes) cannot be listed: the first
  # chunks of such a plan come at once, and the plan holds no list of them
  import itertools
  plan = driver.chunks(0, 10**18, 1, (2, 10**17))
  assert list(itertools.islice(plan, 3)) == [(0, 1), (1, 1), (2, 1)]
  assert next(driver.chunks(5, 2**31 - 1, 50, (100, 0))) == (5, 50)
  assert not isinstance(driver.chunks(0, 10, 1, ()), (list, tuple))


@pytest.mark.slow
def test_a_run_of_the_most_iterations_steps_at_once_and_stops_on_ctrl_c(tmp_path):
  # the first step of 2^31 - 1 iterations comes as it does for a short run (the loop does not
  # plan every chunk first), and Ctrl-C then stops it with a checkpoint
  import signal
  import subprocess
  import sys
  import time
  work = tmp_path / "huge"
  proc = subprocess.Popen(
      [sys.executable, "-m", "jaxdd", "distill", "--preset", "smoke", "--weighting", "none",
       "--iterations", str(2**31 - 1), "--log-every", "1", "--checkpoint-every", "1000",
       "--quiet", "--workdir", str(work)], stderr=subprocess.PIPE, text=True)
  try:
    metrics, stepped = work / "metrics.jsonl", False
    for _ in range(600):  # the smoke run's set-up and compilation; never its 2^31 steps
      if metrics.exists() and any('"loss"' in line for line in metrics.read_text().splitlines()):
        stepped = True
        break
      assert proc.poll() is None, proc.stderr.read()
      time.sleep(0.5)
    assert stepped
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
  finally:
    if proc.poll() is None:
      proc.kill()
  assert proc.returncode == 130, err
  assert "checkpoint saved" in err.strip().splitlines()[-1]
  assert os.listdir(work / "checkpoints")


@pytest.mark.slow
def test_several_steps_per_call_give_the_run_of_one_step_per_call(tmp_path):
  # 40 steps: bias scores every 4, checkpoints every 10 -> chunks of 3, 1, 2, 2, 1, 3, ...
  cfg = _cfg(iterations=40, checkpoint_every=10, log_every=3)
  run_data = runs.RunData(cfg)
  one = runs.distill_stage(cfg, str(tmp_path / "one"), run_data=run_data, progress=False)
  many = runs.distill_stage(cfg.replace(steps_per_call="3"), str(tmp_path / "many"),
                            run_data=run_data, progress=False)
  scale = float(np.abs(one.images).max())
  np.testing.assert_allclose(many.images, one.images, atol=1e-5 * scale)
  rows = {w: [json.loads(line) for line in open(tmp_path / w / "metrics.jsonl")]
          for w in ("one", "many")}
  assert [r["step"] for r in rows["many"]] == [r["step"] for r in rows["one"]]
  assert [r["step"] for r in rows["many"] if "loss" in r] == list(range(3, 40, 3)) + [40]
  np.testing.assert_allclose([r["loss"] for r in rows["many"] if "loss" in r],
                             [r["loss"] for r in rows["one"] if "loss" in r], rtol=1e-4)
  assert sorted(os.listdir(tmp_path / "many" / "checkpoints"), key=int) == ["30", "40"]
  # a run stopped mid-way resumes under the other setting to the same result
  runs.distill_stage(cfg.replace(steps_per_call="4"), str(tmp_path / "cut"),
                     run_data=run_data, progress=False, stop_after=13)
  resumed = runs.distill_stage(cfg, str(tmp_path / "cut"), run_data=run_data, progress=False)
  np.testing.assert_allclose(resumed.images, one.images, atol=1e-5 * scale)


def test_short_commit_is_the_commits_first_seven_hex_digits(monkeypatch):
  from jaxdd.runs import version
  monkeypatch.setattr(version, "code_version", lambda: "0.1.0+g472b6e4816")
  assert version.short_commit() == "472b6e4"
  monkeypatch.setattr(version, "code_version", lambda: "0.1.0")  # no git, no JAXDD_COMMIT
  assert version.short_commit() == "0.1.0"


def test_a_checkout_run_in_place_names_the_version_setup_cfg_declares(monkeypatch):
  """A copy of the checkout that was never installed (a lent machine) still records the
  package's version, read from its setup.cfg, not ``unknown``."""
  import re
  from importlib import metadata

  from jaxdd.runs import version

  def not_installed(name):
    raise metadata.PackageNotFoundError(name)
  with open(os.path.join(os.path.dirname(os.path.dirname(__file__)), "setup.cfg")) as f:
    declared = re.search(r"^version\s*=\s*(\S+)", f.read(), re.M).group(1)
  monkeypatch.setattr(metadata, "version", not_installed)
  monkeypatch.setenv("JAXDD_COMMIT", "")
  assert version.code_version.__wrapped__().split("+g")[0] == declared


def test_code_version_is_read_once_per_process(monkeypatch):
  """A long run records the commit of the code it loaded: the version is read on import and
  not again, so a commit made while the run goes on does not change what it records."""
  first = runs.code_version()
  assert first == runs.code_version.__wrapped__()  # the checkout has not moved since import

  def no_reading(*args, **kwargs):
    raise AssertionError("code_version read the checkout again")
  monkeypatch.setattr("builtins.open", no_reading)
  assert runs.code_version() == first


def test_the_commit_is_read_in_a_clone_and_in_a_git_worktree_loose_or_packed(tmp_path):
  """What a run records as its commit, from the files alone, equals git's own answer in a
  clone, in a work tree of ``git worktree add`` (``.git`` a file), on a branch whose ref is
  packed, and on a detached HEAD; a folder that is no checkout has none."""
  import subprocess

  from jaxdd.runs import version

  def git(*args, cwd):
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@t")
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True,
                          text=True).stdout.strip()
  repo, tree = tmp_path / "repo", tmp_path / "tree"
  repo.mkdir()
  git("init", "-q", "-b", "main", cwd=repo)
  (repo / "a").write_text("1")
  git("add", "a", cwd=repo)
  git("commit", "-q", "-m", "one", cwd=repo)
  assert version.head_commit(str(repo)) == git("rev-parse", "HEAD", cwd=repo)
  git("worktree", "add", "-q", "-b", "side", str(tree), cwd=repo)
  (tree / "a").write_text("2")
  git("commit", "-q", "-am", "two", cwd=tree)
  assert (tree / ".git").is_file()
  assert version.head_commit(str(tree)) == git("rev-parse", "HEAD", cwd=tree)
  git("pack-refs", "--all", cwd=repo)  # the branches' refs now only in packed-refs
  assert version.head_commit(str(tree)) == git("rev-parse", "HEAD", cwd=tree)
  assert version.head_commit(str(repo)) == git("rev-parse", "main", cwd=repo)
  git("checkout", "-q", "--detach", "main", cwd=tree)
  assert version.head_commit(str(tree)) == git("rev-parse", "main", cwd=repo)
  assert version.head_commit(str(tmp_path)) is None
