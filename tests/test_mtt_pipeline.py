"""Trajectory matching in runs: the config, the expert weights and buffer spec, the CLI."""
import json
import os

import numpy as np
import pytest
import run_folders

from jaxdd import cli, config, runs, synset
from jaxdd.config import get_config


def test_mtt_fields_change_only_mtt_digests_and_bad_values_are_refused():
  dm = get_config("smoke")
  assert dm.replace(syn_steps=7, num_experts=3).digest() == dm.digest()
  mtt = get_config("smoke", method="mtt")
  assert mtt.kde_scope == "class" and mtt.num_experts == 1
  assert mtt.replace(syn_steps=7).digest() != mtt.digest()
  assert mtt.replace(mtt_mode="tesla").distill_digest() != mtt.distill_digest()
  for bad, match in ((dict(syn_steps=0), "syn_steps"), (dict(lr_lr=-1.0), "lr_lr"),
                     (dict(batch_syn=0), "batch_syn"), (dict(mtt_mode="fast"), "mtt_mode"),
                     (dict(real_sampling="weighted", init="weighted"), "real-sampling"),
                     (dict(kde_scope="batch"), "kde-scope class"),
                     (dict(expert_weighting="both"), "expert_weighting")):
    with pytest.raises(ValueError, match=match):
      mtt.replace(**bad)
  # A gradient-matching loop count is not asked of MTT at an IPC without reference loops.
  assert mtt.replace(ipc=7).ipc == 7
  assert "mtt" in config.METHODS


class _Data:
  """The parts of RunData that the expert spec reads."""

  def __init__(self, labels, num_classes=3):
    self.num_classes = num_classes
    self.mean, self.std = np.zeros(3), np.ones(3)
    self.train = type("T", (), {"labels": np.asarray(labels),
                                "meta": {"name": "toy", "seed": 0}})()


def test_expert_weights_keep_class_shares_and_pin_the_buffer_spec():
  labels = np.array([0] * 6 + [1] * 3 + [2] * 1)
  run_data = _Data(labels)
  cfg = get_config("smoke", method="mtt", weighting="kde")
  assert runs.expert_weights(cfg.replace(weighting="none"), run_data, None) is None
  log_f = np.log(np.array([1, 1, 1, 1, 1, 0.01, 2, 2, 0.1, 1.0]))
  w = runs.expert_weights(cfg, run_data, log_f)
  # Each class weighs its size (its share of an epoch is unchanged) ...
  np.testing.assert_allclose(np.bincount(labels, weights=w), [6, 3, 1], rtol=1e-5)
  # ... and inside a class the rarest image weighs most.
  assert np.argmax(w[:6]) == 5 and np.argmax(w[6:9]) == 2
  spec = runs.expert_spec(cfg, run_data, w)
  assert spec["weighting"]["kind"] == "kde" and spec["trainer"]["epochs"] == 2
  # Distillation-only settings share a buffer; the weights, the experts and the seed do not.
  assert runs.expert_spec(cfg.replace(lr_img=1.0, syn_steps=5, mtt_mode="tesla"),
                          run_data, w) == spec
  assert runs.expert_spec(cfg, run_data, w * 2) != spec
  assert runs.expert_spec(cfg.replace(num_experts=2), run_data, w) != spec
  assert runs.expert_spec(cfg.replace(seed=1), run_data, w) != spec
  assert runs.expert_spec(cfg, run_data, None)["weighting"] == {"kind": "none"}


def test_tune_grid_for_mtt_holds_only_valid_candidates():
  base = get_config("smoke", method="mtt")
  grid = runs.knob_grid(base)
  names = [s.name(base) for s in grid]
  assert len(names) == len(set(names)) == len(grid)
  for s in grid:
    s.apply(base)  # every candidate is a valid config
  assert runs.default_setting(base, "kde") in grid
  assert runs.default_setting(base, "none") in grid
  assert any("experts=loss" in n for n in names)


def test_buffers_command_refuses_other_methods_and_prints_its_config(capsys, tmp_path):
  assert cli.main(["buffers", "--preset", "smoke", "--method", "dm"]) == 2
  assert "--method" in capsys.readouterr().err
  assert cli.main(["buffers", "--preset", "smoke", "--buffer-dir", str(tmp_path / "b"),
                   "--print-config"]) == 0
  out = json.loads(capsys.readouterr().out)
  assert out["config"]["distill"]["method"] == "mtt" and out["buffer_dir"] == str(tmp_path / "b")
  assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("command", [["buffers"], ["distill", "--method", "mtt"]])
def test_a_buffer_dir_holding_a_users_files_is_refused_before_any_work(tmp_path, capsys, command):
  folder = tmp_path / "mine"
  (folder / "sub").mkdir(parents=True)
  (folder / "thesis.txt").write_text("mine")
  argv = [*command, "--preset", "smoke", "--weighting", "none", "--buffer-dir", str(folder),
          "--quiet", "--no-compile-cache"]
  if command[0] == "distill":
    argv += ["--workdir", str(tmp_path / "run")]
  assert cli.main(argv) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "not an expert buffer; give a new or empty folder" in err[0], err
  assert sorted(os.listdir(tmp_path)) == ["mine"]
  assert sorted(os.listdir(folder)) == ["sub", "thesis.txt"]


@pytest.mark.slow
def test_mtt_from_the_cli_builds_reuses_and_refuses_buffers(tmp_path, capsys):
  # Vanilla experts keep the test free of surrogate training; the KDE-weighted path differs
  # only in the weights handed to the expert trainer (tests above and in test_mtt.py).
  buf = str(tmp_path / "experts")
  common = ["--preset", "smoke", "--weighting", "none", "--buffer-dir", buf, "--quiet"]
  assert cli.main(["buffers", *common]) == 0
  assert "expert buffer:" in capsys.readouterr().out
  with open(os.path.join(buf, "manifest.json")) as f:
    manifest = f.read()
  stamp = os.stat(os.path.join(buf, "trajectories.npz")).st_mtime_ns
  work = str(tmp_path / "run")
  assert cli.main(["distill", "--method", "mtt", "--mtt-mode", "tesla", *common,
                   "--workdir", work]) == 0
  # The run reused the buffer (unchanged) and its SynSet names it and the learned lr.
  assert os.stat(os.path.join(buf, "trajectories.npz")).st_mtime_ns == stamp
  with open(os.path.join(buf, "manifest.json")) as f:
    assert f.read() == manifest
  syn, meta = synset.load(os.path.join(work, "synset"))
  with open(os.path.join(buf, "meta.json")) as f:
    assert meta["expert_buffer"] == json.load(f)["digest"]
  assert np.isfinite(meta["syn_lr"]) and meta["method"] == "mtt"
  rows = [json.loads(line) for line in open(os.path.join(work, "metrics.jsonl"))]
  assert [r["step"] for r in rows if "syn_lr" in r] == [1, 2, 3, 4]
  assert os.path.exists(os.path.join(work, "eval.json"))
  assert run_folders.unlisted(work) == []  # buffer.json included
  # Experts of other settings are refused in that folder, and nothing is written.
  capsys.readouterr()
  assert cli.main(["buffers", *common, "--num-experts", "2"]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "other settings" in err[0] and "trainer" in err[0]
  with open(os.path.join(buf, "manifest.json")) as f:
    assert f.read() == manifest
  assert not os.path.exists(buf + ".partial")
