"""``jaxdd distill --data`` end to end, every layout: exports of the built-in CMNIST 5 % distil the
same SynSet, bit for bit, and print the same table as the built-in path (npz and TFDS keep the
float images exactly; the 8-bit PNG layouts equal each other), and the Waterbirds, CelebA and
UTKFace layouts distil and evaluate with their groups.

In one process, so the runs of one image shape share their compiled programs
(``experiments/own_data_equivalence.py`` runs the full matrix, a process per run).
"""
from __future__ import annotations

import hashlib

import numpy as np
import pytest

import own_layouts
from jaxdd import data
from jaxdd.cli import app
from jaxdd.data.own import export

pytestmark = pytest.mark.slow

FAST = ["--preset", "smoke", "--iterations", "20", "--quiet"]


def _distill(capsys, workdir, *flags) -> tuple[str, str]:
  capsys.readouterr()
  assert app.main(["distill", *FAST, "--workdir", str(workdir), *flags]) == 0
  out = capsys.readouterr().out
  table = "\n".join(ln for ln in out.splitlines() if not ln.startswith("run directory"))
  return table, hashlib.sha256((workdir / "synset" / "arrays.npz").read_bytes()).hexdigest()


def test_exports_of_the_builtin_split_distil_the_same_synset(tmp_path, capsys, monkeypatch):
  monkeypatch.setenv("JAXDD_CACHE", str(tmp_path / "cache"))
  splits = {s: data.load("cmnist", split=s, conflict_ratio=0.05) for s in ("train", "valid", "test")}
  # vanilla DM: the same data path as the KDE runs below, without a surrogate to train per run
  # (the full matrix with KDE: experiments/own_data_equivalence.py)
  ref = _distill(capsys, tmp_path / "builtin", "--dataset", "cmnist", "--conflict-ratio", "0.05",
                 "--weighting", "none")
  equal = ["--aligned-rule", "equal", "--weighting", "none"]
  npz = export.export_layout(splits, "npz", tmp_path / "c.npz")
  assert _distill(capsys, tmp_path / "npz", "--data", f"npz:{npz}", *equal) == ref
  tfds_ref = data.prepare_tfds("cmnist", conflict_ratio=0.05, data_dir=str(tmp_path / "tfds"))
  assert _distill(capsys, tmp_path / "tfds", "--data", f"tfds:{tfds_ref}", "--data-dir",
                  str(tmp_path / "tfds"), "--group-col", "bias", *equal) == ref
  # 8-bit PNG: a folder without group labels (a group csv for its test split) and a csv
  folder = export.export_layout(splits, "folder", tmp_path / "folder", groups="test")
  got_folder = _distill(capsys, tmp_path / "r-folder", "--data", f"folder:{folder}",
                        "--group-file", str(folder / "groups.csv"), *equal)
  table = export.export_layout(splits, "csv", tmp_path / "csv")
  got_csv = _distill(capsys, tmp_path / "r-csv", "--data", f"csv:{table / 'metadata.csv'}",
                     "--label-col", "y", "--group-col", "group", "--split-col", "split", *equal)
  assert got_folder == got_csv
  u8 = {f"{k}_{s}": v for s, ds in splits.items()
        for k, v in (("x", data.to_uint8(ds.images)), ("y", ds.labels), ("g", ds.bias))}
  np.savez(tmp_path / "u8.npz", **u8)
  assert _distill(capsys, tmp_path / "r-u8", "--data", f"npz:{tmp_path / 'u8.npz'}",
                  *equal) == got_csv


@pytest.mark.parametrize("layout", ["waterbirds", "celeba", "utkface"])
def test_literature_layouts_distil_and_report_their_groups(tmp_path, capsys, monkeypatch,
                                                           layout):
  monkeypatch.setenv("JAXDD_CACHE", str(tmp_path / "cache"))
  root = tmp_path / layout
  getattr(own_layouts, layout)(root, n=160)
  flags = {"waterbirds": ["--data", f"csv:{root / 'metadata.csv'}", "--path-col",
                          "img_filename", "--label-col", "y", "--group-col", "place",
                          "--split-col", "split"],
           "celeba": ["--data", f"celeba:{root}", "--label-col", "Blond_Hair", "--group-col",
                      "Male"],
           "utkface": ["--data", f"pattern:{root}", "--name-fields", "age,gender,race,date",
                       "--label-col", "gender", "--group-col", "race"]}[layout]
  # the paper's KDE weights on one layout (the walk-through of docs/own-data.md runs them too),
  # vanilla DM on the others: the data path is the same, without a surrogate to train
  weighting = ["--weighting", "kde" if layout == "waterbirds" else "none"]
  table, _ = _distill(capsys, tmp_path / "run", *flags, "--ipc", "2", *weighting)
  assert "DEO_M" in table and "worst group" in table and "conflicting" in table
  assert "n/a" not in table.split("worst group")[0].split("overall")[1]
  # the SynSet alone: jaxdd evaluate rebuilds the data from the run's record, same numbers
  capsys.readouterr()
  assert app.main(["evaluate", str(tmp_path / "run" / "synset"), "--quiet"]) == 0
  again = capsys.readouterr().out
  lines = [ln for ln in table.splitlines() if ln.startswith(("overall", "conflicting", "DEO_M"))]
  assert len(lines) == 3 and all(ln in again for ln in lines)
  # the run directory records the spec: the same command shows the finished run, another spec
  # is refused
  argv = ["distill", *FAST, "--workdir", str(tmp_path / "run"), *flags, "--ipc", "2", *weighting]
  assert app.main(argv) == 0
  assert app.main(argv + ["--valid-fraction", "0.2"]) == 2
  assert "holds a run with a different config" in capsys.readouterr().err


def test_reevaluate_on_changed_data_is_refused(tmp_path, capsys, monkeypatch):
  # the finished SynSet came from the data as they were; evaluating it on other data into the
  # same run folder would give eval.json another data digest than config.json and the SynSet
  monkeypatch.setenv("JAXDD_CACHE", str(tmp_path / "cache"))
  own_layouts.class_folders(tmp_path / "f", splits=True)
  flags = ["--data", f"folder:{tmp_path / 'f'}", "--ipc", "2", "--weighting", "none"]
  _distill(capsys, tmp_path / "run", *flags)
  before = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir() if p.is_file()}
  image = sorted((tmp_path / "f" / "train").rglob("*.png"))[0]
  from PIL import Image
  pixels = np.asarray(Image.open(image)).copy()
  pixels[0, 0] ^= 1
  Image.fromarray(pixels).save(image)
  capsys.readouterr()
  assert app.main(["distill", *FAST, "--workdir", str(tmp_path / "run"), *flags,
                   "--reevaluate"]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "was begun on other data" in err[0], err
  assert {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir() if p.is_file()} == before


def test_what_reads_a_users_data_names_it(tmp_path, capsys, monkeypatch):
  # evaluate, cross-arch and reproduce name the data they read: its spec and content digest
  import json
  monkeypatch.setenv("JAXDD_CACHE", str(tmp_path / "cache"))
  own_layouts.class_folders(tmp_path / "f", splits=True)
  spec = f"folder:{tmp_path / 'f'}"
  _distill(capsys, tmp_path / "run", "--data", spec, "--ipc", "2", "--weighting", "none")
  with open(tmp_path / "run" / "config.json") as f:
    digest = json.load(f)["data"]["sha256"]
  named = {"name": spec, "split": "test", "data_sha256": digest}
  line = f"data: {spec} (content sha256 {digest[:12]}), test split"
  syn = str(tmp_path / "run" / "synset")
  capsys.readouterr()
  assert app.main(["evaluate", syn, "--num-models", "1", "--quiet", "--out",
                   str(tmp_path / "ev.json")]) == 0
  assert line in capsys.readouterr().out.splitlines()
  record = json.loads((tmp_path / "ev.json").read_text())
  assert record["data"] == named and record["synset"] == syn
  assert app.main(["cross-arch", syn, "--models", "convnet-d2-w8", "--protocol", "smoke",
                   "--num-models", "1", "--quiet", "--out", str(tmp_path / "xa.json")]) == 0
  out = capsys.readouterr().out
  assert line in out.splitlines() and "nan" not in out and "worst class" in out
  assert json.loads((tmp_path / "xa.json").read_text())["data"] == named
  assert app.main(["reproduce", *FAST, "--workdir", str(tmp_path / "rep"), "--data", spec,
                   "--ipc", "2"]) == 0
  comparison = json.loads((tmp_path / "rep" / "comparison.json").read_text())
  assert {k: v["data"]["sha256"] for k, v in comparison.items()} == {"dm": digest,
                                                                     "dm+kde": digest}
  assert all(v["data"]["spec"] == spec for v in comparison.values())
