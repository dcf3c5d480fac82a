"""Every JSON file jaxdd reads back is checked when it is read.

A property test feeds each reader arbitrary JSON values and bytes: it either loads the file or
raises :class:`jaxdd._src.schema.FileFormatError`, whose message is one line naming the file;
never another exception. Then the command line: a damaged file is one line on stderr and an
exit status, and nothing is written.
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jaxdd import cli, synset
from jaxdd._src import schema
from jaxdd.cli import app
from jaxdd.config import get_config
from jaxdd.distill import experts
from jaxdd.runs import artifacts, files, metrics_log, rundir
from jaxdd.security import signing
from jaxdd.structs import SynSet

#: Keys the readers look for, so that generated objects reach past the first level.
_KEYS = (st.sampled_from(["digest", "mean", "std", "overall", "aligned", "conflicting",
                         "worst_group", "result", "per_model", "num_models", "chosen", "config",
                         "files", "step", "format", "algorithm", "public_key", "signature",
                         "dataset", "name", "shape", "groups", "batch_ess", "aligned_fraction",
                         "kde", "lr_img", "synset", "protocol", "matrix", "dm", "\n"])
         | st.text(max_size=4))
_SCALARS = (st.none() | st.booleans() | st.integers(-3, 3) | st.floats(allow_nan=False)
            | st.text(max_size=6))
_VALUES = st.recursive(_SCALARS, lambda inner: st.lists(inner, max_size=4)
                       | st.dictionaries(_KEYS, inner, max_size=5), max_leaves=25)
#: A file's bytes: a JSON value, or bytes that need not be JSON (nor UTF-8).
_CONTENTS = _VALUES.map(lambda v: json.dumps(v).encode()) | st.binary(max_size=40)
_FAST = settings(max_examples=50, deadline=None,
                 suppress_health_check=[HealthCheck.function_scoped_fixture])
_SMOKE = get_config("smoke")


def _assert_refusal(e: BaseException, path: str) -> None:
  assert isinstance(e, schema.FileFormatError), repr(e)
  line = str(e)
  assert "\n" not in line and "\r" not in line and path in line, line
  assert line.splitlines() == [line]


def _syn(path: str) -> str:
  syn = SynSet(np.zeros((2, 4, 4, 3), np.float32), np.array([0, 1], np.int32))
  return synset.save(path, syn, {"config": _SMOKE.to_dict(), "ipc": 1}, mean=np.zeros(3),
                     std=np.ones(3))


def _rewrite(folder: str, name: str, data: bytes) -> str:
  """Replaces ``folder/name`` and fixes its sha256 in the manifest (what an editor would do)."""
  path = os.path.join(folder, name)
  with open(path, "wb") as f:
    f.write(data)
  manifest = os.path.join(folder, "manifest.json")
  with open(manifest) as f:
    m = json.load(f)
  m["files"][name] = synset.sha256_file(path)
  with open(manifest, "w") as f:
    json.dump(m, f)
  return path


def _metrics(path):
  return metrics_log.read_metrics(path, 10 ** 9)


#: name -> (file name, reader of that file). Readers that take a folder get the folder.
READERS = {
    "config.json": ("config.json", lambda p: files.read_run_config(os.path.dirname(p))),
    "eval.json": ("eval.json", files.read_eval),
    "baselines.json": ("baselines.json", files.read_baselines),
    "weights.json": ("weights.json", files.read_weights),
    "buffer.json": ("buffer.json", files.read_buffer_record),
    "eval cache": ("eval-valid-cpu.json", files.read_eval_cache),
    "bias_score.json": ("bias_score.json", files.read_bias_score),
    "table.json": ("table.json", files.read_table),
    "selection.json": ("selection.json", lambda p: files.read_selection(p, _SMOKE)),
    "metrics.jsonl": ("metrics.jsonl", _metrics),
    "report": ("eval.json", lambda p: artifacts.finished_runs(os.path.dirname(p))),
    "comparison.json": ("comparison.json", files.read_comparison),
    "cross-arch --out": ("matrix.json", files.read_cross_arch),
}


@pytest.mark.parametrize("reader", sorted(READERS))
def test_a_reader_loads_its_file_or_refuses_it_in_one_line(tmp_path, reader):
  name, read = READERS[reader]
  path = str(tmp_path / name)

  @_FAST
  @given(_CONTENTS)
  def check(data):
    with open(path, "wb") as f:
      f.write(data)
    try:
      read(path)
    except Exception as e:  # noqa: BLE001  (the property: only the one error type)
      _assert_refusal(e, path)

  check()


def test_a_synset_whose_meta_or_manifest_is_rewritten_loads_or_is_refused(tmp_path):
  folder = _syn(str(tmp_path / "syn"))

  @_FAST
  @given(_CONTENTS)
  def meta(data):
    path = _rewrite(folder, "meta.json", data)
    try:
      synset.load(folder)
    except Exception as e:  # noqa: BLE001
      _assert_refusal(e, path)

  meta()
  manifest = os.path.join(folder, "manifest.json")

  @_FAST
  @given(_CONTENTS)
  def anything(data):
    with open(manifest, "wb") as f:
      f.write(data)
    try:
      synset.load(folder)
    except schema.FileFormatError as e:
      _assert_refusal(e, manifest)
    except ValueError as e:  # a well-formed manifest whose checksums do not match
      assert "does not match its sha256" in str(e) and "\n" not in str(e)

  anything()


def test_an_expert_buffer_or_a_signature_with_another_structure_is_refused(tmp_path):
  buffer = experts.save_buffer(str(tmp_path / "buf"), np.zeros((1, 2, 3)), {"a": 1})
  signing_file = os.path.join(_syn(str(tmp_path / "syn")), signing.SIGNATURE_FILE)

  @_FAST
  @given(_CONTENTS)
  def check(data):
    path = _rewrite(buffer, "meta.json", data)
    try:
      experts.load_buffer(buffer)
    except Exception as e:  # noqa: BLE001
      _assert_refusal(e, path)
    with open(signing_file, "wb") as f:
      f.write(data)
    with pytest.raises(signing.SignatureError) as e:
      signing.check(os.path.dirname(signing_file), b"{}", None)
    assert signing_file in str(e.value) and "\n" not in str(e.value)

  check()


def test_what_jaxdd_writes_loads_and_a_refusal_names_the_file_the_fault_and_the_fix(tmp_path):
  mean = {"overall": 0.5, "aligned": 0.9, "conflicting": 0.4, "worst_group": 0.1}
  path = str(tmp_path / "eval.json")
  synset.atomic_write_json(path, {"mean": mean, "std": mean, "digest": "d",
                                  "result": {"per_model": {"overall": [0.5, None]}}})
  assert files.read_eval(path)["digest"] == "d"
  synset.atomic_write_json(path, {"mean": mean, "std": mean,
                                  "result": {"per_model": {"overall": "0.5"}}})
  with pytest.raises(schema.FileFormatError) as e:
    files.read_eval(path)
  assert str(e.value) == (f"{path}: 'result.per_model.overall' must be a list, got a string; "
                          "delete it, or rerun the run's command with --reevaluate to evaluate "
                          "the run again")
  assert e.value.status == 2 and app.failure(e.value)[0] == 2
  # read back while a command works (reproduce reading its runs' weights): a fault, status 1
  weights = tmp_path / "run" / "weights.json"
  weights.parent.mkdir()
  weights.write_bytes(b"\xff\xfe")
  with pytest.raises(schema.FileFormatError, match="is not UTF-8 text") as e:
    files.read_weights(str(weights))
  assert app.failure(e.value) == (1, f"error: {e.value}")


def _one_line(err: str) -> str:
  lines = [line for line in err.strip().splitlines() if line.startswith("jaxdd ")]
  assert len(lines) == 1 and "Traceback" not in err, err
  return lines[0]


def _snapshot(folder) -> dict:
  return {os.path.join(r, n): os.stat(os.path.join(r, n)).st_mtime_ns
          for r, _, names in os.walk(folder) for n in names}


def test_a_damaged_run_file_refuses_the_command_before_any_work(tmp_path, capsys):
  work = tmp_path / "run"
  work.mkdir()
  (work / "config.json").write_text('["not", "a", "config"]')
  before = _snapshot(work)
  argv = ["distill", "--preset", "smoke", "--iterations", "2", "--workdir", str(work), "--quiet"]
  assert cli.main(argv) == 2
  line = _one_line(capsys.readouterr().err)
  assert str(work / "config.json") in line and "must hold an object, got a list" in line
  assert _snapshot(work) == before
  # the same run, finished, with a damaged eval.json: refused, unless --reevaluate
  (work / "config.json").write_text(json.dumps({"config": _SMOKE.replace(iterations=2).to_dict(),
                                                "digest": _SMOKE.replace(iterations=2).digest()}))
  (work / "eval.json").write_text('{"mean": "high"}')
  before = _snapshot(work)
  assert cli.main(argv) == 2
  line = _one_line(capsys.readouterr().err)
  assert str(work / "eval.json") in line and "'mean' must be an object" in line
  assert "--reevaluate" in line and _snapshot(work) == before
  assert cli.main(["report", str(tmp_path)]) == 2
  assert "'mean' must be an object" in _one_line(capsys.readouterr().err)
  # final's selection.json
  (work / "selection.json").write_text('{"chosen": {"kde": {"kde_variance": [1]}}}')
  before = _snapshot(work)
  assert cli.main(["final", "--preset", "smoke", "--workdir", str(work), "--quiet"]) == 2
  line = _one_line(capsys.readouterr().err)
  assert "'chosen.kde.kde_variance' must be a string or a number, got a list" in line
  assert _snapshot(work) == before


def _tree(folder) -> dict:
  """Every file under ``folder`` with its modification time, and every folder."""
  tree = {os.path.join(r, n): os.stat(os.path.join(r, n)).st_mtime_ns
          for r, _, names in os.walk(folder) for n in names}
  return tree | {r: None for r, _, _ in os.walk(folder)}


def _run_dir(path, config) -> None:
  path.mkdir(parents=True)
  (path / "config.json").write_text(json.dumps({"config": config.to_dict(),
                                                "digest": config.digest()}))


def test_baselines_and_evaluate_refuse_a_run_directory_of_another_setting(tmp_path, capsys):
  run = tmp_path / "x" / "dm"  # a run directory of `jaxdd reproduce --workdir x`
  _run_dir(run, _SMOKE.replace(weighting="none"))
  other = "0.1" if _SMOKE.conflict_ratio != 0.1 else "0.2"
  for work in (run, run.parent):
    before = _tree(tmp_path)
    assert cli.main(["baselines", "--preset", "smoke", "--conflict-ratio", other, "--workdir",
                     str(work), "--quiet"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert f"{run} holds a run of another setting" in line
    assert f"conflict_ratio {_SMOKE.conflict_ratio} there, {other} now" in line
    assert _tree(tmp_path) == before
  # the run's own setting passes (baselines do not take the distillation flags)
  rundir.check_setting(files.run_setting(get_config("smoke", weighting="kde", iterations=9)),
                       str(run.parent), adding="baselines")
  syn = _syn(str(run / "synset"))
  before = _tree(tmp_path)
  out = run / "again.json"
  assert cli.main(["evaluate", syn, "--conflict-ratio", other, "--out", str(out), "--quiet"]) == 2
  assert f"conflict_ratio {_SMOKE.conflict_ratio} there" in _one_line(capsys.readouterr().err)
  assert cli.main(["evaluate", syn, "--num-models", "1", "--out", str(out), "--quiet"]) == 2
  assert f"num_eval_models {_SMOKE.num_eval_models} there, 1 now" in _one_line(
      capsys.readouterr().err)
  assert cli.main(["evaluate", syn, "--out", str(run / "eval.json"), "--quiet"]) == 2
  assert "would replace a file of the run" in _one_line(capsys.readouterr().err)
  assert _tree(tmp_path) == before
  artifacts.check_out(str(out), artifacts.evaluation_setting(synset.load(syn)[1]))  # its own


def test_report_keeps_results_of_different_settings_apart_and_labels_them(tmp_path, capsys):
  mean = {"overall": 0.5, "aligned": 0.9, "conflicting": 0.4, "worst_group": 0.1}
  other = _SMOKE.replace(conflict_ratio=0.1 if _SMOKE.conflict_ratio != 0.1 else 0.2)
  for name, config in (("a", _SMOKE), ("b", other)):
    (tmp_path / name).mkdir()
    (tmp_path / name / "eval.json").write_text(json.dumps(
        {"mean": mean, "std": mean, "method": "dm", "config": config.to_dict()}))
  (tmp_path / "a" / "baselines.json").write_text(json.dumps(
      {"random": {"mean": mean, "std": mean, "config": _SMOKE.replace(weighting="none").to_dict()}}))
  assert cli.main(["report", str(tmp_path / "a")]) == 0  # one setting: no heading
  lines = capsys.readouterr().out.splitlines()
  assert len(lines) == 2 and all(line.startswith(str(tmp_path / "a")) for line in lines)
  assert cli.main(["report", str(tmp_path)]) == 0
  out = capsys.readouterr().out.splitlines()
  assert out[0] == (f"== {_SMOKE.dataset}, conflict ratio {_SMOKE.conflict_ratio}, IPC "
                    f"{_SMOKE.ipc}, seed 0, evaluation {_SMOKE.eval_protocol} x "
                    f"{_SMOKE.num_eval_models} {_SMOKE.eval_model} ==")
  assert "baseline random" in out[1] and str(tmp_path / "a") in out[2]
  assert out[3].startswith(f"== {_SMOKE.dataset}, conflict ratio {other.conflict_ratio},")
  assert str(tmp_path / "b") in out[4] and len(out) == 5


@pytest.mark.parametrize("config", [{"ipc": "three"}, {"ipc": -1}, {"weighting": ["kde"]},
                                    {"kde_variance": None}])
def test_audit_refuses_a_synset_whose_recorded_run_config_is_malformed(tmp_path, capsys, config):
  syn = SynSet(np.zeros((2, 4, 4, 3), np.float32), np.array([0, 1], np.int32))
  path = synset.save(str(tmp_path / "syn"), syn, {"config": {**_SMOKE.to_dict(), **config},
                                                  "dataset": {"name": "cmnist", "ratio": 0.05}},
                     mean=np.zeros(3), std=np.ones(3))
  out = tmp_path / "audit.json"
  before = _tree(tmp_path)
  assert cli.main(["audit", path, "--out", str(out), "--quiet"]) == 2
  line = _one_line(capsys.readouterr().err)
  assert line.startswith(f"jaxdd audit: error: {os.path.join(path, 'meta.json')}: its run "
                         "configuration ('config') is malformed"), line
  assert line.endswith("re-create it with `jaxdd distill`"), line
  assert _tree(tmp_path) == before and not out.exists()


def test_cross_arch_out_refuses_a_file_holding_other_results(tmp_path, capsys):
  syn = _syn(str(tmp_path / "syn"))
  other_syn = _syn(str(tmp_path / "other"))
  argv = ["cross-arch", syn, "--models", "mlp", "--protocol", "smoke", "--num-models", "1",
          "--quiet", "--out"]
  out = tmp_path / "matrix.json"
  mine = artifacts.cross_arch_setting(syn, ["mlp"], protocol="smoke", num_models=1)
  for stored, differs in (
      (artifacts.cross_arch_setting(other_syn, ["mlp"], protocol="smoke", num_models=1),
       f"synset {os.path.abspath(other_syn)!r} there, {os.path.abspath(syn)!r} now"),
      ({**mine, "protocol": "cpu"}, "protocol 'cpu' there, 'smoke' now"),
      ({**mine, "models": ["mlp", "resnet18"]}, "models ['mlp', 'resnet18'] there, ['mlp'] now"),
      ({**mine, "synset_manifest_sha256": "0" * 64}, "synset_manifest_sha256 '000")):
    synset.atomic_write_json(str(out), artifacts.cross_arch_record(stored, {}))
    before = _tree(tmp_path)
    assert cli.main(argv + [str(out)]) == 2
    line = _one_line(capsys.readouterr().err)
    assert line.startswith(f"jaxdd cross-arch: error: --out {out} holds the cross-architecture "
                           "matrix of another setting ("), line
    assert differs in line and line.endswith("use another --out, or delete it to replace it")
    assert _tree(tmp_path) == before
  # other results (an evaluation), or a file of a run: refused too, nothing replaced
  out.write_text(json.dumps({"mean": {}, "std": {}}))
  before = _tree(tmp_path)
  assert cli.main(argv + [str(out)]) == 2
  assert "exists and is not a cross-architecture matrix jaxdd wrote" in _one_line(
      capsys.readouterr().err)
  _run_dir(tmp_path / "run", _SMOKE)
  assert cli.main(argv + [str(tmp_path / "run" / "config.json")]) == 2
  assert "would replace a file of the run" in _one_line(capsys.readouterr().err)
  assert _tree(tmp_path) == before | _tree(tmp_path / "run")
  # the same setting's matrix is replaced (the command run again), an older record too
  synset.atomic_write_json(str(out), artifacts.cross_arch_record(mine, {}))
  artifacts.check_matrix_out(str(out), mine)
  synset.atomic_write_json(str(out), {"synset": syn, "protocol": "smoke", "num_models": 1,
                                      "matrix": {}})
  artifacts.check_matrix_out(str(out), mine)


def test_a_synset_damaged_when_read_back_while_working_is_a_fault_before_work_a_refusal(
    tmp_path, capsys, monkeypatch):
  """`reproduce` reads its runs' SynSets back after its runs are done: a damaged metadata file
  there is a fault (exit 1); the same SynSet read before any work is refused (exit 2)."""
  import types

  from jaxdd.runs import bias, comparison
  # the bias score's classifier and score: not reached (the SynSet read fails first), faster
  monkeypatch.setattr(bias, "bias_classifier",
                      lambda *a: types.SimpleNamespace(train_aligned_fraction=0.9))
  monkeypatch.setattr(comparison.diagnostics, "bias_score",
                      lambda *a, **k: {"aligned_fraction": 0.5})
  work = tmp_path / "rep"
  mean = {"overall": 0.5, "aligned": 0.9, "conflicting": 0.4, "worst_group": 0.1}
  for weighting, name in (("none", "dm"), ("kde", "dm_kde")):
    config = _SMOKE.replace(weighting=weighting)
    _run_dir(work / name, config)
    (work / name / "eval.json").write_text(json.dumps({"mean": mean, "std": mean,
                                                       "digest": config.digest()}))
    _syn(str(work / name / "synset"))
  meta = _rewrite(str(work / "dm" / "synset"), "meta.json", b'{"config": 3}')
  assert cli.main(["reproduce", "--preset", "smoke", "--quiet", "--workdir", str(work)]) == 1
  line = _one_line(capsys.readouterr().err)
  assert line.startswith(f"jaxdd reproduce: error: {meta}: "), line
  assert line.endswith("the artifact is corrupted: re-create it")
  assert not (work / "comparison.json").exists() and not (work / "comparison.md").exists()
  out = tmp_path / "eval.json"
  assert cli.main(["evaluate", str(work / "dm" / "synset"), "--out", str(out), "--quiet"]) == 2
  assert _one_line(capsys.readouterr().err) == line.replace("reproduce", "evaluate")
  assert not out.exists()
