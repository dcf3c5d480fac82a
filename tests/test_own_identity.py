"""A run on a user's own data names its data, never a built-in dataset: the spec and a digest
of the content in the log, ``config.json``, ``--print-config``, the SynSet and ``jaxdd report``;
changed data are refused on resume and warned about on evaluation."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest
from PIL import Image

import own_layouts
from jaxdd.config import RunConfig, get_config
from jaxdd.data import own
from jaxdd.runs import artifacts, rundir

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
  monkeypatch.setenv("JAXDD_CACHE", str(tmp_path / "cache"))


def _opened(spec_text: str, **options) -> own.OwnData:
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", own.HeldOutTestWarning)
    return own.OwnData(own.parse(spec_text, **options))


def _cli(tmp_path, *args, timeout=600):
  env = dict(os.environ, JAXDD_CACHE=str(tmp_path / "cache"), JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", "jaxdd", *args], capture_output=True, text=True,
                        env=env, cwd=REPO, timeout=timeout)


def test_an_own_data_config_has_no_built_in_dataset_fields():
  cfg = get_config("proxy", data_spec="folder:pets")  # the proxy preset sets source="full"
  for name in ("dataset", "conflict_ratio", "severity", "source"):
    assert name not in cfg.to_dict()
  assert cfg.to_tree()["data"] == {"seed": 0}
  assert RunConfig.from_dict(cfg.to_dict()) == cfg
  assert get_config("proxy").to_dict()["source"] == "full"  # built-in runs keep theirs
  with pytest.raises(ValueError, match="--conflict-ratio describes a built-in dataset"):
    get_config("smoke", data_spec="folder:pets", conflict_ratio=0.01)


def test_own_data_runs_begun_before_still_resume():
  """The digests an older jaxdd gave own-data runs (it hashed the unused built-in fields),
  pinned from that release, are accepted as the same run."""
  for preset, size, digest, distill in (
      ("proxy", 64, "d48c5e8a5ce1d6ba", "d2a0b5566644e918"),
      ("smoke", None, "1bc2221c0dfd6a13", "b9a8b4decc9b400a")):
    cfg = get_config(preset, data_spec="folder:x", image_size=size, group_col="g")
    assert cfg.digest(legacy=True) == digest
    assert cfg.distill_digest(legacy=True) == distill
    assert cfg.digest() != digest  # today's digest has no built-in fields


def test_the_content_digest_follows_the_content_not_the_place(tmp_path):
  own_layouts.class_folders(tmp_path / "a")
  shutil.copytree(tmp_path / "a", tmp_path / "b")
  opened = _opened(f"folder:{tmp_path / 'a'}")
  first = opened.identity()
  assert first["sha256"] == _opened(f"folder:{tmp_path / 'b'}").identity()["sha256"]
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", own.HeldOutTestWarning)
    assert first["images"] == {s: len(opened.split(s)) for s in ("train", "valid", "test")}
  assert sum(first["images"].values()) == 120  # every image the folder holds
  assert (first["classes"], first["groups"]) == (3, 0)
  # one pixel of one image changed: another digest
  path = sorted((tmp_path / "b" / "banana").iterdir())[0]
  pixels = np.asarray(Image.open(path)).copy()
  pixels[0, 0, 0] ^= 1
  Image.fromarray(pixels).save(path)
  assert _opened(f"folder:{tmp_path / 'b'}").identity()["sha256"] != first["sha256"]


def test_a_changed_label_changes_the_digest(tmp_path):
  own_layouts.waterbirds(tmp_path / "wb")
  options = dict(path_col="img_filename", label_col="y", group_col="place", split_col="split")
  spec = f"csv:{tmp_path / 'wb' / 'metadata.csv'}"
  before = _opened(spec, **options).identity()
  assert before["groups"] == 2
  table = (tmp_path / "wb" / "metadata.csv").read_text().splitlines()
  row = table[5].split(",")
  row[4] = str(1 - int(row[4]))  # one image's group (place) flipped
  table[5] = ",".join(row)
  (tmp_path / "wb" / "metadata.csv").write_text("\n".join(table) + "\n")
  assert _opened(spec, **options).identity()["sha256"] != before["sha256"]


def test_a_run_on_changed_data_is_refused_and_on_the_same_data_goes_on(tmp_path):
  stored = {"spec": "folder:pets", "sha256": "a" * 64}
  (tmp_path / "config.json").write_text(json.dumps({"digest": "x", "data": stored}))
  rundir.check_data(str(tmp_path), dict(stored))  # the same data: nothing to say
  rundir.check_data(str(tmp_path), None)  # a built-in dataset: not compared
  with pytest.raises(ValueError, match=r"begun on other data: folder:pets has changed since "
                                       r"\(content sha256 aaaaaaaaaaaa then, bbbbbbbbbbbb now\)"):
    rundir.check_data(str(tmp_path), {**stored, "sha256": "b" * 64})


def test_a_synset_evaluated_on_changed_data_is_warned_about(tmp_path):
  own_layouts.class_folders(tmp_path / "f", splits=True)
  spec = own.parse(f"folder:{tmp_path / 'f'}")
  ds = own.load_own(spec, split="train")
  meta = {"dataset": {**ds.meta}}
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    artifacts.artifact_split(meta, "test")  # the same data: no warning
  meta["dataset"]["data_sha256"] = "c" * 64
  with pytest.warns(own.DataChangedWarning, match="has changed since the SynSet was distilled"):
    artifacts.artifact_split(meta, "test")


def _eval_json(folder, config: dict, data: dict | None, grouped: bool):
  os.makedirs(folder)
  nan = float("nan")
  mean = {"overall": 0.9, "aligned": 0.95 if grouped else nan,
          "conflicting": 0.5 if grouped else nan, "worst_group": 0.4}
  record = {"mean": mean, "std": {k: 0.0 for k in mean}, "method": "dm+kde", "config": config}
  if data is not None:
    record["data"] = data
  with open(os.path.join(folder, "eval.json"), "w") as f:
    json.dump(record, f)


def test_report_names_each_users_data_and_never_mixes_two(tmp_path):
  base = get_config("smoke", data_spec="folder:pets").to_dict()
  ident = lambda sha: {"spec": "folder:pets", "sha256": sha}  # noqa: E731
  _eval_json(tmp_path / "a", base, ident("1" * 64), grouped=False)
  _eval_json(tmp_path / "b", base, ident("2" * 64), grouped=False)  # same spec, other content
  _eval_json(tmp_path / "c", {**base, "data_spec": "csv:wb.csv", "group_col": "place"},
             {"spec": "csv:wb.csv", "sha256": "3" * 64}, grouped=True)
  out = [line for lines in artifacts.finished_runs(str(tmp_path)) for line in lines]
  heads = [line for line in out if line.startswith("==")]
  assert heads[0].startswith("== your data folder:pets, sha256 111111111111, IPC")
  assert heads[1].startswith("== your data folder:pets, sha256 222222222222, IPC")
  assert heads[2].startswith("== your data csv:wb.csv, group col place, sha256 333333333333")
  assert not any("cmnist" in line or "conflict ratio" in line for line in out)
  assert out[1].endswith("dm+kde: overall 90.0±0.0, worst class 40.0")  # no groups
  assert out[-1].endswith("conflicting 50.0, worst group 40.0")
  # one run of one user's data is still named
  only = artifacts.finished_runs(str(tmp_path / "a"))
  assert only[0][0].startswith("== your data folder:pets, sha256 111111111111")


def test_print_config_names_the_data_and_a_refusal_is_one_line(tmp_path):
  own_layouts.class_folders(tmp_path / "f")
  spec = f"folder:{tmp_path / 'f'}"
  r = _cli(tmp_path, "distill", "--preset", "smoke", "--data", spec, "--print-config")
  assert r.returncode == 0, r.stderr
  shown = json.loads(r.stdout)
  assert shown["config"]["data"] == {"seed": 0}
  assert "cmnist" not in r.stdout and "conflict_ratio" not in r.stdout
  assert shown["data"]["spec"] == spec
  assert shown["data"]["sha256"] == _opened(spec).identity()["sha256"]
  # without --quiet: the refusal is still the only line (no line about loading first)
  work = tmp_path / "run"
  r = _cli(tmp_path, "distill", "--preset", "smoke", "--data", spec, "--ipc", "100",
           "--workdir", str(work))
  assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
  assert not work.exists()
