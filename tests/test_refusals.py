"""Every check that needs the machine or the data comes before a command's first write.

A command refused for its environment (devices, the device mesh, data sources, an optional
package, an output path it cannot write) exits with one line on stderr and leaves no file:
the work directory does not exist afterwards, or is as it was. The tests run with 8
simulated CPU devices (tests/conftest.py).
"""
from __future__ import annotations

import json
import os
import shutil
import sys

import pytest

from jaxdd import cli
from jaxdd.runs import outputs


def _run(argv, capsys) -> tuple[int, list[str]]:
  """``jaxdd ARGV`` in this process: its exit status and its stderr lines."""
  capsys.readouterr()
  try:
    code = cli.main(argv)
  except SystemExit as e:  # argparse's refusals
    code = e.code
  err = capsys.readouterr().err
  assert "Traceback" not in err
  return code, err.strip().splitlines()


def _tree(path) -> dict:
  """Every file under ``path`` with its bytes (a directory's whole state)."""
  out = {}
  for root, _, files in os.walk(path):
    for name in files:
      full = os.path.join(root, name)
      with open(full, "rb") as f:
        out[os.path.relpath(full, path)] = f.read()
  return out


SMOKE = ["--preset", "smoke", "--quiet", "--no-compile-cache"]

#: (command and its flags, what the one line must say): each needs the machine or its data.
REFUSALS = {
    "distill, more devices than visible": (["distill", "--devices", "16"], "only 8 devices"),
    "distill, a mesh the batch does not split": (["distill", "--devices", "3"],
                                                 "not a multiple of 3"),
    "distill, full MNIST not fetched": (["distill", "--source", "mnist-full"], "data fetch"),
    "reproduce, a mesh the batch does not split": (["reproduce", "--devices", "3"],
                                                   "not a multiple of 3"),
    "reproduce, more devices than visible": (["reproduce", "--devices", "16"], "only 8 devices"),
    "tune, a mesh the batch does not split": (["tune", "--devices", "3", "--seeds", "0"],
                                              "not a multiple of 3"),
    "tune, full MNIST not fetched": (["tune", "--source", "mnist-full", "--seeds", "0"],
                                     "data fetch"),
    "final, more devices than visible": (["final", "--devices", "16", "--seeds", "0"],
                                         "only 8 devices"),
    "baselines, full MNIST not fetched": (["baselines", "--source", "mnist-full",
                                           "--which", "random"], "data fetch"),
    "buffers, full MNIST not fetched": (["buffers", "--source", "mnist-full"], "data fetch"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_an_environment_refusal_writes_nothing(case, tmp_path, capsys, monkeypatch):
  monkeypatch.setenv("JAXDD_CACHE", str(tmp_path / "cache"))  # no fetched MNIST there
  argv, says = REFUSALS[case]
  work = tmp_path / "nested" / "run"
  if argv[0] == "final":  # final reads tune's selection first: give it one, in its own folder
    (tmp_path / "sel.json").write_text(json.dumps({"chosen": {"none": {}}}))
    argv = argv + ["--selection", str(tmp_path / "sel.json")]
  where = "--buffer-dir" if argv[0] == "buffers" else "--workdir"  # buffers writes only there
  code, err = _run(argv + SMOKE + [where, str(work)], capsys)
  assert code == 2, err
  assert len(err) == 1 and says in err[0], err
  assert not (tmp_path / "nested").exists()  # not the run directory, nor its parent
  if "devices" in says:  # found before the data are built into the cache
    assert not (tmp_path / "cache").exists()


def test_an_existing_workdir_is_left_as_it_was(tmp_path, capsys):
  work = tmp_path / "run"
  work.mkdir()
  (work / "notes.txt").write_text("mine")
  before = _tree(work)
  for argv in (["distill", "--devices", "3"], ["reproduce", "--devices", "16"]):
    code, err = _run(argv + SMOKE + ["--workdir", str(work)], capsys)
    assert code == 2 and len(err) == 1, err
    assert _tree(work) == before and sorted(os.listdir(work)) == ["notes.txt"]


def test_unwritable_outputs_are_refused_before_any_work(tmp_path, capsys, monkeypatch):
  # A file where a directory must go stops every user, root included (chmod does not).
  blocker = tmp_path / "blocker"
  blocker.write_text("keep")
  monkeypatch.setenv("JAXDD_CACHE", str(tmp_path / "cache"))
  cases = [["distill"] + SMOKE + ["--workdir", str(blocker / "run")],
           ["reproduce"] + SMOKE + ["--workdir", str(blocker / "run")],
           ["baselines", "--which", "random"] + SMOKE + ["--workdir", str(blocker / "run")],
           ["diagnose", "--preset", "smoke", "--quiet", "--workdir", str(blocker / "d")],
           ["data", "cmnist", "--conflict-ratio", "0.05", "--save-card",
            str(blocker / "card.json")],
           ["evaluate", str(tmp_path / "no-synset"), "--out", str(blocker / "o.json")],
           ["audit", str(tmp_path / "no-synset"), "--out", str(blocker / "o.json")]]
  for argv in cases:
    code, err = _run(argv, capsys)
    # status 1, as for every unwritable path (docs/cli.md), but found before any work
    assert code == 1 and len(err) == 1, (argv, err)
    assert str(blocker) in err[0] and "use another path" in err[0], err
  assert sorted(os.listdir(tmp_path)) == ["blocker"]  # no cache, no surrogate, no dataset
  assert blocker.read_text() == "keep"


def test_a_missing_cryptography_is_refused_before_keys_or_signatures(tmp_path, capsys,
                                                                      monkeypatch):
  for name in [m for m in sys.modules if m == "cryptography" or m.startswith("cryptography.")]:
    monkeypatch.delitem(sys.modules, name)
  monkeypatch.setitem(sys.modules, "cryptography", None)  # `import cryptography` fails
  keys = tmp_path / "keys"
  code, err = _run(["keys", "new", str(keys / "me"), "--quiet"], capsys)
  assert code == 2 and len(err) == 1 and "pip install" in err[0], err
  assert not keys.exists()
  syn = tmp_path / "syn"
  syn.mkdir()
  code, err = _run(["sign", str(syn), "--key", str(tmp_path / "me.key"), "--quiet"], capsys)
  assert code == 2 and len(err) == 1 and "cryptography" in err[0], err
  assert os.listdir(syn) == []


def _finished_run(work, cfg) -> dict:
  """A run directory as a finished run leaves it: its config and its stored evaluation."""
  work.mkdir()
  (work / "config.json").write_text(json.dumps({"config": cfg.to_dict(), "digest": cfg.digest(),
                                                "distill_digest": cfg.distill_digest()}))
  stored = {"method": "dm", "digest": cfg.digest(), "config": cfg.to_dict(),
            "mean": {"overall": 0.8125, "aligned": 0.9375, "conflicting": 0.4375,
                     "worst_group": 0.25},
            "std": {"overall": 0.0125, "aligned": 0.0125, "conflicting": 0.0375,
                    "worst_group": 0.0}}
  (work / "eval.json").write_text(json.dumps(stored))
  return stored


def test_a_finished_run_in_a_read_only_directory_shows_its_results(tmp_path, capsys,
                                                                    monkeypatch):
  from jaxdd.config import get_config
  from jaxdd.runs import rundir
  work = tmp_path / "done"
  _finished_run(work, get_config("smoke", weighting="none"))
  before = _tree(work)

  def no_lock(workdir):
    raise PermissionError(13, "Permission denied", os.path.join(workdir, ".lock"))
  # chmod stops every user but root; the lock that cannot be taken stops root too.
  monkeypatch.setattr(rundir, "workdir_lock", no_lock)
  os.chmod(work, 0o555)
  try:
    code = cli.main(["distill", "--preset", "smoke", "--weighting", "none", "--quiet",
                     "--workdir", str(work)])
  finally:
    os.chmod(work, 0o755)
  out = capsys.readouterr()
  assert code == 0, out.err
  assert "complete (stored in eval.json)" in out.out and "81.25" in out.out and "43.75" in out.out
  assert _tree(work) == before and not (work / ".lock").exists()


def _finished_reproduce(work, base) -> dict:
  """A work directory as a finished `jaxdd reproduce` leaves it: both runs with their stored
  evaluation, and the comparison written from them. Returns the comparison.json."""
  comparison = {}
  for weighting, name in (("none", "dm"), ("kde", "dm+kde")):
    stored = _finished_run(work / name.replace("+", "_"), base.replace(weighting=weighting))
    comparison[name] = {"mean": stored["mean"], "std": stored["std"],
                        "bias_score": {"aligned_fraction": 0.5}}
  (work / "comparison.json").write_text(json.dumps(comparison))
  (work / "comparison.md").write_text("| method | overall |\n|---|---|\n| dm | 81.2 |\n")
  return comparison


def test_a_finished_reproduce_in_a_read_only_directory_shows_its_results(tmp_path, capsys,
                                                                         monkeypatch):
  from jaxdd import runs
  from jaxdd.config import get_config
  from jaxdd.runs import rundir
  work = tmp_path / "done"
  work.mkdir()
  comparison = _finished_reproduce(work, get_config("smoke"))
  before = _tree(work)

  def no_lock(workdir):
    raise PermissionError(13, "Permission denied", os.path.join(workdir, ".lock"))
  monkeypatch.setattr(rundir, "workdir_lock", no_lock)
  for d in (work, work / "dm", work / "dm_kde"):
    os.chmod(d, 0o555)
  try:
    code = cli.main(["reproduce", "--preset", "smoke", "--quiet", "--workdir", str(work)])
  finally:
    for d in (work, work / "dm", work / "dm_kde"):
      os.chmod(d, 0o755)
  out = capsys.readouterr()
  assert code == 0, out.err
  assert f"{work}: complete (stored in comparison.md)\n| method | overall |" in out.out
  assert "| dm | 81.2 |" in out.out and out.err == ""
  assert _tree(work) == before and not (work / ".lock").exists()
  # a comparison written from other numbers than the runs' stored evaluations is not finished
  assert runs.comparison.stored_comparison(get_config("smoke"), str(work))["dm"]["bias_score"] \
      == comparison["dm"]["bias_score"]
  comparison["dm+kde"]["mean"]["overall"] = 0.5
  (work / "comparison.json").write_text(json.dumps(comparison))
  assert runs.comparison.stored_comparison(get_config("smoke"), str(work)) is None


def test_an_output_never_replaces_a_file_jaxdd_or_the_system_owns(tmp_path, capsys):
  # `--out` of evaluate, cross-arch and audit: a SynSet's files, a run's files, its
  # checkpoints and lock, a device, a FIFO, a folder and a link are refused in one line with
  # status 2 before any work (the SynSet does not even need to exist), and nothing changes.
  run = tmp_path / "run"
  (run / "synset").mkdir(parents=True)
  (run / "checkpoints" / "500").mkdir(parents=True)
  (run / "plots").mkdir()
  for rel in ("config.json", "metrics.jsonl", ".lock", "synset/arrays.npz", "synset/meta.json",
              "synset/manifest.json", "checkpoints/500/state.npz", "plots/synset.png"):
    (run / rel).write_bytes(b"keep " + rel.encode())
  fifo = tmp_path / "fifo"
  os.mkfifo(fifo)
  (tmp_path / "link").symlink_to(run / "config.json")
  before = _tree(tmp_path / "run")
  targets = [run / "synset" / "arrays.npz", run / "synset" / "meta.json",
             run / "synset" / "new.json", run / "synset" / "manifest.json",
             run / "metrics.jsonl", run / "config.json", run / ".lock", run / "eval.json",
             run / "checkpoints" / "500" / "state.npz", run / "plots" / "synset.png",
             fifo, run, tmp_path / "link"]
  if os.path.exists("/dev/full"):
    targets.append("/dev/full")
  for command in ("evaluate", "cross-arch", "audit"):
    for target in targets:
      code, err = _run([command, str(run / "synset"), "--out", str(target), "--quiet"], capsys)
      assert code == 2 and len(err) == 1 and str(target) in err[0], (command, target, err)
      assert "give" in err[0], err
  assert _tree(tmp_path / "run") == before
  assert os.path.exists("/dev/full") is False or not os.path.isfile("/dev/full")


#: (command, the entries of a folder jaxdd did not write that the command would replace)
FOREIGN_WORKDIRS = {
    "distill": (["distill"] + SMOKE, ["synset/notes.txt"]),
    "distill, metrics": (["distill"] + SMOKE, ["metrics.jsonl", "notes.txt"]),
    "distill, a plot": (["distill"] + SMOKE, ["plots/synset.png"]),
    "reproduce, a run's folder": (["reproduce"] + SMOKE, ["dm/synset/arrays.npz"]),
    "reproduce, its table": (["reproduce"] + SMOKE, ["comparison.md"]),
    "tune": (["tune", "--seeds", "0"] + SMOKE, ["selection.md"]),
    "diagnose": (["diagnose", "--preset", "smoke", "--quiet"], ["weights_default.png"]),
}


@pytest.mark.parametrize("case", list(FOREIGN_WORKDIRS))
def test_a_workdir_never_loses_a_file_jaxdd_did_not_write(case, tmp_path, capsys,
                                                          monkeypatch):
  # A folder that holds none of the command's record (config.json, comparison.json, ...) but
  # an entry the command writes (a SynSet folder, a plot, a table) would have it replaced:
  # refused in one line with status 2, before the data are read, and nothing changes.
  monkeypatch.setenv("JAXDD_CACHE", str(tmp_path / "cache"))
  argv, entries = FOREIGN_WORKDIRS[case]
  work = tmp_path / "mine"
  for rel in entries:
    (work / rel).parent.mkdir(parents=True, exist_ok=True)
    (work / rel).write_bytes(b"mine " + rel.encode())
  before = _tree(work)
  code, err = _run(argv + ["--workdir", str(work)], capsys)
  assert code == 2 and len(err) == 1, err
  assert "but no" in err[0] and "give a new or empty --workdir" in err[0], err
  assert _tree(work) == before and sorted(os.listdir(tmp_path)) == ["mine"]


@pytest.mark.parametrize("entries,said", [
    ({"report.json": "my report"}, "holds a report.json that is not a diagnosis jaxdd wrote"),
    ({"report.json": '{"surrogate": 1}'}, "holds a report.json that is not a diagnosis"),
    ({"config.json": "{}", "eval.json": "{}"}, "is a run's folder; give diagnose a folder"),
])
def test_diagnose_never_replaces_a_report_or_fills_a_run_folder(entries, said, tmp_path, capsys,
                                                                 monkeypatch):
  monkeypatch.setenv("JAXDD_CACHE", str(tmp_path / "cache"))
  work = tmp_path / "mine"
  work.mkdir()
  for name, text in entries.items():
    (work / name).write_text(text)
  before = _tree(work)
  code, err = _run(["diagnose", "--preset", "smoke", "--quiet", "--no-sweep", "--workdir",
                    str(work)], capsys)
  assert code == 2 and len(err) == 1 and said in err[0], err
  assert _tree(work) == before and sorted(os.listdir(tmp_path)) == ["mine"]


def test_tune_never_fills_a_run_folder(tmp_path, capsys, monkeypatch):
  monkeypatch.setenv("JAXDD_CACHE", str(tmp_path / "cache"))
  run = tmp_path / "run"
  run.mkdir()
  (run / "config.json").write_text("{}")
  code, err = _run(["tune", "--seeds", "0"] + SMOKE + ["--workdir", str(run)], capsys)
  assert code == 2 and len(err) == 1 and "is a run's folder; give tune a folder" in err[0], err
  assert sorted(os.listdir(tmp_path)) == ["run"] and os.listdir(run) == ["config.json"]


def test_final_never_replaces_a_table_it_did_not_write(tmp_path, monkeypatch):
  from jaxdd import config, runs
  from jaxdd.runs import knobs
  monkeypatch.setenv("JAXDD_CACHE", str(tmp_path / "cache"))
  (tmp_path / "root").mkdir()
  (tmp_path / "root" / "table.md").write_text("mine")
  base = config.get_config("smoke")
  with pytest.raises(ValueError, match="holds table.md but no table.json"):
    runs.final(base, str(tmp_path / "root"), seeds=(0,), progress=False,
               settings={"vanilla": knobs.default_setting(base, "none")})
  assert (tmp_path / "root" / "table.md").read_text() == "mine"
  assert sorted(os.listdir(tmp_path)) == ["root"]


def test_a_workdir_inside_a_synset_or_checkpoints_is_refused(tmp_path, capsys, monkeypatch):
  monkeypatch.setenv("JAXDD_CACHE", str(tmp_path / "cache"))
  run = tmp_path / "run"
  (run / "synset").mkdir(parents=True)
  (run / "checkpoints" / "500").mkdir(parents=True)
  for rel in ("config.json", "synset/arrays.npz", "synset/manifest.json",
              "checkpoints/500/state.npz"):
    (run / rel).write_bytes(b"keep " + rel.encode())
  before = _tree(run)
  for work, said in ((run / "synset", "inside the SynSet"),
                     (run / "synset" / "sub", "inside the SynSet"),
                     (run / "checkpoints" / "500", "inside the checkpoints")):
    for argv in (["distill"] + SMOKE, ["reproduce"] + SMOKE,
                 ["diagnose", "--preset", "smoke", "--quiet"],
                 ["baselines", "--which", "random"] + SMOKE):
      code, err = _run(argv + ["--workdir", str(work)], capsys)
      assert code == 2 and len(err) == 1 and said in err[0], (argv, work, err)
  assert _tree(run) == before and sorted(os.listdir(tmp_path)) == ["run"]


def test_a_link_into_a_synset_or_checkpoints_is_refused_as_the_path_it_leads_to(
    tmp_path, capsys, monkeypatch):
  # a symbolic link does not move what a command writes: a path through a link into a run's
  # checkpoints (or to the checkpoints folder itself, or into a SynSet) is refused as that
  # path written out would be, for every flag the guard covers, and nothing is written
  monkeypatch.setenv("JAXDD_CACHE", str(tmp_path / "cache"))
  run = tmp_path / "run"
  (run / "synset").mkdir(parents=True)
  (run / "checkpoints" / "500").mkdir(parents=True)
  for rel in ("config.json", "synset/arrays.npz", "synset/manifest.json",
              "checkpoints/500/state.npz"):
    (run / rel).write_bytes(b"keep " + rel.encode())
  links = tmp_path / "links"
  links.mkdir()
  for name, target in (("ckpt", run / "checkpoints" / "500"), ("root", run / "checkpoints"),
                       ("syn", run / "synset")):
    (links / name).symlink_to(target)
  before = _tree(run)
  cases = []
  for link in ("ckpt", "root", "syn"):
    lp = str(links / link)
    cases += [(link,) + case for case in [(["distill"] + SMOKE + ["--workdir", lp], "--workdir"),
              (["distill"] + SMOKE + ["--workdir", os.path.join(lp, "new")], "--workdir"),
              (["reproduce"] + SMOKE + ["--workdir", lp], "--workdir"),
              (["baselines", "--which", "random"] + SMOKE + ["--workdir", lp], "--workdir"),
              (["evaluate", str(run / "synset"), "--quiet", "--out",
                os.path.join(lp, "eval-new.json")], "--out"),
              (["data", "cmnist", "--conflict-ratio", "0.05", "--quiet", "--save-card",
                os.path.join(lp, "card.json")], "--save-card"),
              (["buffers"] + SMOKE + ["--buffer-dir", os.path.join(lp, "buf")], "--buffer-dir"),
              (["distill", "--method", "mtt"] + SMOKE + ["--workdir", str(tmp_path / "w"),
                                                         "--buffer-dir", os.path.join(lp, "b")],
               "--buffer-dir")]]
  for link, argv, flag in cases:
    code, err = _run(argv, capsys)
    assert code == 2 and len(err) == 1, (argv, err)
    assert f"{flag} " in err[0] and "give a path outside" in err[0], err
    if link != "syn":  # a link to a SynSet is one itself; the others lead into a run's checkpoints
      assert f"symbolic link into the checkpoints of the run in {run};" in err[0], err
  assert _tree(run) == before
  assert sorted(os.listdir(tmp_path)) == ["links", "run"]
  assert sorted(os.listdir(links)) == ["ckpt", "root", "syn"]


def _interrupted_run_record(work) -> None:
  """A run folder as a smoke distillation leaves it before its SynSet: its config.json."""
  from jaxdd.config import get_config
  from jaxdd.runs import version
  cfg = get_config("smoke")
  work.mkdir(parents=True)
  (work / "config.json").write_text(json.dumps({
      "config": cfg.to_dict(), "digest": cfg.digest(), "distill_digest": cfg.distill_digest(),
      "code_version": version.code_version()}))


@pytest.mark.parametrize("entry", ["link", "file", "folder"])
def test_a_synset_the_run_cannot_replace_is_refused_before_any_work(entry, tmp_path, capsys):
  # a run resumed over a synset/ it did not write (a link, a file, someone's folder): refused
  # before the data are built or a step runs, naming a fix that is no flag of distill
  work = tmp_path / "run"
  _interrupted_run_record(work)
  elsewhere = tmp_path / "elsewhere"
  elsewhere.mkdir()
  (elsewhere / "notes.txt").write_text("precious")
  if entry == "link":
    (work / "synset").symlink_to(elsewhere)
  elif entry == "file":
    (work / "synset").write_text("notes")
  else:
    (work / "synset").mkdir()
    (work / "synset" / "notes.txt").write_text("notes")
  before, outside = _tree(work), _tree(elsewhere)
  code, err = _run(["distill"] + SMOKE + ["--workdir", str(work)], capsys)
  assert code == 2 and len(err) == 1, err
  assert f"move {work / 'synset'} away, then rerun the same command" in err[0], err
  assert "synset.save" not in err[0] and " --" not in err[0].split("error: --workdir")[1], err
  assert _tree(work) == before and _tree(elsewhere) == outside
  assert not os.path.exists(tmp_path / "cache")  # no data were built
  # the fix clears the guard: with it moved away the folder is the run's again
  os.rename(work / "synset", tmp_path / "moved")
  outputs.check_run_folder(str(work))


def test_a_card_never_replaces_a_file_jaxdd_owns(tmp_path, capsys):
  run = tmp_path / "run"
  (run / "synset").mkdir(parents=True)
  for rel in ("config.json", "synset/arrays.npz", "synset/manifest.json", "synset/meta.json"):
    (run / rel).write_bytes(b"keep " + rel.encode())
  before = _tree(run)
  for target in ("synset/meta.json", "config.json", "synset/card.json", "metrics.jsonl"):
    code, err = _run(["data", "cmnist", "--conflict-ratio", "0.05", "--quiet", "--save-card",
                      str(run / target)], capsys)
    assert code == 2 and len(err) == 1 and err[0].startswith("jaxdd data: error: --save-card"), \
        (target, err)
  assert _tree(run) == before


@pytest.mark.parametrize("argv", [
    ["evaluate", "missing/synset", "--out"],
    ["cross-arch", "missing/synset", "--out"],
    ["audit", "missing/synset", "--out"],
    ["data", "cmnist", "--conflict-ratio", "0.05", "--save-card"],
    ["data", "inspect", "folder:missing", "--save-card"],
])
def test_an_output_never_replaces_a_users_file(tmp_path, capsys, argv):
  # a file outside any run folder that the command did not write: refused before any work
  notes = tmp_path / "notes.txt"
  notes.write_text("precious")
  code, err = _run(argv + [str(notes), "--quiet"], capsys)
  assert code == 2 and len(err) == 1, err
  assert "exists and is not" in err[0] and "give the path of a new file" in err[0], err
  assert sorted(os.listdir(tmp_path)) == ["notes.txt"] and notes.read_text() == "precious"


def test_an_output_replaces_only_the_same_commands_file():
  from jaxdd.runs import outputs
  import tempfile
  with tempfile.TemporaryDirectory() as d:
    run = os.path.join(d, "run")
    os.makedirs(run)
    with open(os.path.join(run, "config.json"), "w") as f:
      f.write("{}")
    mine, theirs = os.path.join(run, "again.json"), os.path.join(run, "notes.txt")
    with open(mine, "w") as f:
      json.dump({"protocol": {}, "summary": {}, "per_model": {}}, f)
    with open(theirs, "w") as f:
      f.write("my notes")
    owns = lambda p: outputs.json_object_with(p, ("protocol", "summary", "per_model"))  # noqa: E731
    outputs.check_output_file(mine, what="an evaluation", owns=owns)  # the command run again
    outputs.check_output_file(os.path.join(run, "new.json"), what="an evaluation", owns=owns)
    with pytest.raises(ValueError, match="would replace a file of the run in .*notes.txt"):
      outputs.check_output_file(theirs, what="an evaluation", owns=owns)
    # outside jaxdd's folders too: only the same command's output is replaced
    elsewhere, again = os.path.join(d, "elsewhere.txt"), os.path.join(d, "again.json")
    with open(elsewhere, "w") as f:
      f.write("x")
    with pytest.raises(ValueError, match=r"elsewhere.txt exists and is not an evaluation jaxdd "
                                         r"wrote; give the path of a new file"):
      outputs.check_output_file(elsewhere, what="an evaluation", owns=owns)
    shutil.copy(mine, again)
    outputs.check_output_file(again, what="an evaluation", owns=owns)


def test_the_run_folder_check_names_what_the_guard_does_not_list(tmp_path):
  # the run tests assert run_folders.unlisted(...) == []: it must see an entry a run would add
  import run_folders
  for rel in ("config.json", "synset/arrays.npz", "checkpoints/4/x", "eval-test-dm.json",
              "plots/synset.png", "tensorboard/events"):
    (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / rel).write_text("x")
  assert run_folders.unlisted(str(tmp_path)) == []
  for rel in ("notes.json", "plots/loss.png", "eval-test.txt"):
    (tmp_path / rel).write_text("x")
  assert run_folders.unlisted(str(tmp_path)) == ["eval-test.txt", "notes.json", "plots/loss.png"]


def test_report_refuses_a_fifo_or_a_device_instead_of_hanging(tmp_path, capsys):
  # an eval.json that is a FIFO (no writer) or /dev/zero: one line, no hang, no memory blow-up
  run = tmp_path / "run"
  run.mkdir()
  os.mkfifo(run / "eval.json")
  code, err = _run(["report", str(run)], capsys)
  assert code in (1, 2) and len(err) == 1 and "is not a regular file (a FIFO)" in err[0], err
  if os.path.exists("/dev/zero"):
    os.unlink(run / "eval.json")
    os.symlink("/dev/zero", run / "eval.json")
    code, err = _run(["report", str(run)], capsys)
    assert code in (1, 2) and len(err) == 1 and "a device" in err[0], err
