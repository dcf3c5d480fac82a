"""experiments/: seed_table.py's statistics over distillation seeds, bf16_accuracy.py's table."""
import importlib.util
import json
import os

import jax
import numpy as np
import pytest

from jaxdd import elf, models, protocols, runs
from jaxdd.config import get_config

_SPEC = importlib.util.spec_from_file_location(
    "seed_table", os.path.join(os.path.dirname(__file__), "..", "experiments", "seed_table.py"))
seed_table = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(seed_table)


def _run(tmp_path, name, dsa, kde):
  d = tmp_path / name
  d.mkdir()
  row = lambda o: {"mean": {"overall": o, "aligned": 0.9, "conflicting": o - 0.1, "worst_group": 0.0},
                   "std": {m: 0.0 for m in seed_table.METRICS}}
  (d / "comparison.json").write_text(json.dumps({"dsa": row(dsa), "dsa+kde": row(kde)}))
  return str(d)


def test_mean_std_over_seeds_and_paired_difference(tmp_path):
  runs = [_run(tmp_path, "s0", 0.30, 0.40), _run(tmp_path, "s1", 0.20, 0.50)]
  text = seed_table.table(seed_table.load(runs))
  # overall: dsa 30, 20 -> 25.0 ± 7.1 (sample std); kde 40, 50 -> 45.0 ± 7.1;
  # paired differences 10, 30 -> +20.0 ± 14.1
  assert "| dsa | 25.0 ± 7.1 | 90.0 ± 0.0 | 15.0 ± 7.1 | 0.0 ± 0.0 |" in text
  assert "| dsa+kde | 45.0 ± 7.1 |" in text
  assert "| paired difference dsa+kde − dsa | +20.0 ± 14.1 |" in text
  with pytest.raises(FileNotFoundError, match="comparison.json"):
    seed_table.load([str(tmp_path / "missing")])


_SPEC_RT = importlib.util.spec_from_file_location(
    "results_tables",
    os.path.join(os.path.dirname(__file__), "..", "experiments", "results_tables.py"))
results_tables = importlib.util.module_from_spec(_SPEC_RT)
_SPEC_RT.loader.exec_module(results_tables)


def _page(tmp_path):
  """The one documentation page of a test's repository (docs/page.md)."""
  (tmp_path / "docs").mkdir(exist_ok=True)
  return tmp_path / "docs" / "page.md"


PROV = {"date": "2026-01-01", "commit": "abc1234", "machine": "CPU", "command": "make it"}


def _main(tmp_path, argv):
  """results_tables.main, with a provenance record in every results directory of the test."""
  for d in (tmp_path / "results").glob("*"):
    if d.is_dir() and not (d / "provenance.json").exists():
      (d / "provenance.json").write_text(json.dumps(PROV))
  return results_tables.main(argv)


def _table():
  per_seed = {"overall": [0.2, 0.4], "aligned": [1.0, 1.0], "conflicting": [0.1, 0.3],
              "worst_group": [0.0, 0.0]}
  row = {"seeds": [0, 1], "per_seed": per_seed, "per_model": [], "valid_conflicting": [0.2, 0.2],
         "bias_aligned_fraction": [0.9, 1.0]}
  return {"base": {"dataset": "cmnist", "conflict_ratio": 0.05, "ipc": 10, "preset": "cpu",
                   "method": "dm"},
          "protocol": {"name": "cpu300", "num_epochs": 301}, "num_models": 5, "seeds": [0, 1],
          "train_aligned_fraction": 0.95, "rows": {"vanilla": row}, "paired": {}}


def test_results_tables_regenerates_the_marked_blocks(tmp_path):
  (tmp_path / "results" / "x").mkdir(parents=True)
  (tmp_path / "results" / "x" / "table.json").write_text(json.dumps(_table()))
  (tmp_path / "README.md").write_text("intro\n<!-- summary:x -->\nold\n<!-- /summary:x -->\nend\n")
  _page(tmp_path).write_text("<!-- table:x -->\n<!-- /table:x -->\n")
  assert _main(tmp_path, ["--check", "--root", str(tmp_path)]) == 1
  assert _main(tmp_path, ["--root", str(tmp_path)]) == 0
  assert _main(tmp_path, ["--check", "--root", str(tmp_path)]) == 0
  readme = (tmp_path / "README.md").read_text()
  # overall 20, 40 -> 30.0 ± 14.1 (sample std over seeds); bias score 90, 100 -> 95.0 ± 7.1
  assert "| vanilla | 30.0 ± 14.1 | 100.0 ± 0.0 | 20.0 ± 14.1 | 0.0 ± 0.0 | 95.0 ± 7.1 |" in readme
  assert readme.startswith("intro\n") and readme.endswith("end\n") and "old" not in readme
  assert "| *the training set itself (true share)* | | | | | 95.0 |" in readme
  assert "cpu300 (301 epochs)" in _page(tmp_path).read_text()


def test_results_tables_names_the_missing_file(tmp_path):
  (tmp_path / "README.md").write_text("<!-- table:nope -->\n<!-- /table:nope -->\n")
  _page(tmp_path).write_text("")
  with pytest.raises(FileNotFoundError, match="grid.py --cells nope"):
    _main(tmp_path, ["--root", str(tmp_path)])


def test_readme_and_results_tables_match_the_published_result_files():
  """README.md and every documentation page show exactly what the files under results/ hold."""
  assert results_tables.main(["--check"]) == 0


def test_grid_cifar10c_cell_needs_cifar10_and_runs_nothing_without_it(tmp_path, capsys):
  spec = importlib.util.spec_from_file_location(
      "grid", os.path.join(os.path.dirname(__file__), "..", "experiments", "grid.py"))
  grid = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(grid)
  with pytest.raises(SystemExit) as exc:
    grid.main(["--cells", "c-cifar10c", "--root", str(tmp_path / "g")])
  assert exc.value.code == 2 and "--cifar10 PATH" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    grid.main(["--cells", "c-cifar10c", "--cifar10", str(tmp_path / "none.npz"),
               "--root", str(tmp_path / "g")])
  assert "no such file" in capsys.readouterr().err
  assert not (tmp_path / "g").exists()
  # The offline corruption cell is a corruption-biased Fashion-MNIST, named as such.
  assert grid.CELLS["c"]["overrides"]["dataset"] == "corrupted_fmnist"
  assert grid.CELLS["c-cifar10c"]["overrides"]["dataset"] == "cifar10c"
  # Every cell is a valid config; the trajectory-matching cell's own candidates are valid runs
  # and hold both incumbents that its selection compares against.
  for cell in grid.CELLS.values():
    get_config("cpu", **cell["overrides"])
  base = get_config("cpu", **grid.CELLS["f-cmnist"]["overrides"])
  cands = grid.lr_candidates(base, grid.CELLS["f-cmnist"]["lr_grid"])
  assert [c.apply(base).weighting for c in cands] == ["none", "none", "kde", "kde"]
  assert runs.default_setting(base, "none") in cands and runs.default_setting(base, "kde") in cands


def test_bf16_accuracy_table_means_over_seeds_and_pairs_the_dtypes():
  spec = importlib.util.spec_from_file_location(
      "bf16_accuracy", os.path.join(os.path.dirname(__file__), "..", "experiments",
                                    "bf16_accuracy.py"))
  bf16 = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(bf16)
  acc = lambda o, a, c: {"overall": o, "aligned": a, "conflicting": c}
  results = {
      "none": {"float32": {0: acc(0.20, 1.0, 0.10), 1: acc(0.30, 1.0, 0.20)},
               "bfloat16": {0: acc(0.21, 1.0, 0.10), 1: acc(0.33, 1.0, 0.20)}},
      "kde": {"float32": {0: acc(0.70, 0.9, 0.60), 1: acc(0.80, 0.9, 0.80)},
              "bfloat16": {0: acc(0.70, 0.9, 0.60), 1: acc(0.80, 0.9, 0.80)}}}
  text = bf16.table(results)
  # float32 DM overall: mean 25.0, sample std of (20, 30) = 7.1
  assert "| DM | float32 | 25.0 ± 7.1 | 100.0 ± 0.0 | 15.0 ± 7.1 |" in text
  # paired bf16 - fp32, DM overall: differences (+1, +3) points -> +2.0 ± 1.4
  assert ("| DM | bfloat16 real forward, seeds 0, 1 | +2.0 ± 1.4 | +0.0 ± 0.0 | +0.0 ± 0.0 |"
          in text)
  assert ("| DM + KDE | bfloat16 real forward, seeds 0, 1 | +0.0 ± 0.0 | +0.0 ± 0.0 | "
          "+0.0 ± 0.0 |" in text)

  # the results-table record: the same rows, a paired row named by its arm, and the largest
  # single-seed difference (DM overall, seed 1: 33 - 30 = +3.0 points)
  config = get_config("cpu", dataset="cmnist", conflict_ratio=0.05, ipc=10, seed=0)
  rec = bf16.data_record(results, ["float32", "bfloat16"], config,
                         protocols.get_protocol("cpu300"), 3, "python x.py",
                         raw="results/x/table.json")
  assert rec["columns"] == ["method", "arithmetic", "overall", "aligned", "conflicting"]
  assert rec["rows"][0] == ["DM", "float32", "25.0 ± 7.1", "100.0 ± 0.0", "15.0 ± 7.1"]
  assert rec["rows"][4] == ["DM", "bfloat16 real forward − float32, paired", "+2.0 ± 1.4",
                            "+0.0 ± 0.0", "+0.0 ± 0.0"]
  assert len(rec["rows"]) == 6 and rec["command"] == ["python x.py"]
  assert "Largest single-seed difference: +3.0 points (DM, bfloat16 real forward, overall, " \
         "seed 1)" in rec["notes"][0]
  assert "IPC 10, `cpu` preset" in rec["notes"][0]
  assert "float32 against bfloat16 real forward, that is the real images' forward" in rec["notes"][0]
  assert rec["notes"][0].endswith("Raw: `results/x/table.json`.")
  same = {w: {"float32": r["float32"], "bfloat16": r["float32"]} for w, r in results.items()}
  assert "difference: none (every arm equals float32" in bf16.data_record(
      same, ["float32", "bfloat16"], config, protocols.get_protocol("cpu300"), 3, "x")["notes"][0]


def _load(name):
  spec = importlib.util.spec_from_file_location(
      name, os.path.join(os.path.dirname(__file__), "..", "experiments", f"{name}.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def test_fidelity_table_is_mean_and_sample_std_over_seeds():
  fidelity = _load("fidelity")
  res = lambda c, it: {"valid": {"conflicting": c}, "config": {"iterations": it},
                       "test": {"overall": c, "aligned": 0.9, "conflicting": c,
                                "worst_group": 0.0},
                       "bias_start": 0.95, "bias_end": 0.5, "batch_ess": 4.0, "min_share": 0.02,
                       "max_share": 0.3, "distill_s": 10.0, "eval_s": 5.0}
  with_ess = lambda r, a, c: {**r, "ess_in_aligned": a, "ess_in_conflicting": c}
  md = fidelity.table({"kde": [with_ess(res(0.8, 600), 0.001, 0.2),
                               with_ess(res(0.9, 600), 0.003, 0.4)],
                       "selection": [res(0.7, 0), res(0.7, 0)]})
  kde_row = [l for l in md.splitlines() if l.startswith("| DM + KDE (paper")][0]
  # 80, 90 -> 85.0 ± 7.1 (sample std over seeds)
  assert "| no | 85.0 ± 7.1 | 85.0 ± 7.1 | 90.0 ± 0.0 |" in kde_row
  assert "| 4.0 | 0.020 / 0.300 | 0.002 · 0.30 | 15 |" in kde_row
  sel_row = [l for l in md.splitlines() if l.startswith("| selection alone")][0]
  assert "| – | 15 |" in sel_row  # results from before the in-group ESS existed
  # the in-group ESS of the largest (aligned) group and the mean over the others, per class
  groups = [{"counts": {"0": 8, "1": 2, "2": 2}, "group_ess": {"0": 0.1, "1": 0.5, "2": 1.0}},
            {"counts": {"0": 2, "1": 9}, "group_ess": {"0": 0.7, "1": 0.3}}]
  got = fidelity.within_group_ess(groups)
  assert got["ess_in_aligned"] == pytest.approx((0.1 + 0.3) / 2)
  assert got["ess_in_conflicting"] == pytest.approx((0.5 + 1.0 + 0.7) / 3)
  assert fidelity.within_group_ess([{"counts": {"0": 1}}]) == {}
  sel_row = [l for l in md.splitlines() if l.startswith("| selection alone")][0]
  assert "– (not distilled)" in sel_row
  assert fidelity.ARMS["oracle"][2] and not fidelity.ARMS["kde"][2]  # bias labels marked


def test_data_flags_reach_the_config_of_fidelity_and_weight_quality(monkeypatch, tmp_path):
  # --source and --surrogate-preset are shared flags: both scripts must build their runs with
  # them (they were once accepted by weight_quality.py and silently ignored).
  fidelity = _load("fidelity")
  weight_quality = _load("weight_quality")
  args = fidelity.data_parser("").parse_args(["--surrogate-preset", "long-w32", "--source", "full"])
  assert fidelity.data_overrides(args) == {"source": "full", "surrogate_preset": "long-w32"}
  assert fidelity.data_overrides(fidelity.data_parser("").parse_args([])) == {}
  from jaxdd import runs

  class Stop(Exception):
    pass

  def fake_run_data(cfg):
    seen.append(cfg)
    raise Stop
  seen = []
  monkeypatch.setattr(runs, "RunData", fake_run_data)
  with pytest.raises(Stop):
    weight_quality.main(["--preset", "smoke", "--surrogate-preset", "long-w32", "--source",
                         "full", "--out", str(tmp_path / "w.md")])
  assert (seen[0].surrogate_preset, seen[0].source) == ("long-w32", "full")


def test_weight_quality_nearest_neighbour_distance_by_hand():
  import numpy as np
  weight_quality = _load("weight_quality")
  emb = np.array([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0], [10.0, 0.0], [10.0, 2.0]], np.float32)
  labels = np.array([0, 0, 0, 1, 1])
  # class 0: NN squared distances 1, 1, 4; class 1: 4, 4 -> median of [1, 1, 4, 4, 4] = 4
  assert weight_quality.nn_sq_distance(emb, labels, 2) == 4.0


def test_refresh_diagnostics_adds_the_in_group_ess_once(tmp_path, monkeypatch):
  fidelity = _load("fidelity")
  from jaxdd import runs
  cfg = get_config("smoke", weighting="none")
  groups = [{"counts": {"0": 3, "1": 1}, "group_ess": {"0": 0.5, "1": 1.0}}]
  calls = []
  monkeypatch.setattr(runs, "RunData", lambda c: "data")
  monkeypatch.setattr(runs, "weight_diagnostics",
                      lambda c, rd, emb, key: calls.append((c, rd, emb)) or {"groups": groups})
  work = tmp_path / "arm" / "s0"
  work.mkdir(parents=True)
  (work / "result.json").write_text(json.dumps({"config": cfg.to_dict(), "test": {}}))
  out = fidelity.run_arm(cfg, str(work), progress=False, refresh=True)
  assert out["ess_in_aligned"] == 0.5 and out["ess_in_conflicting"] == 1.0
  assert out["ess_recomputed"] and calls == [(cfg, "data", None)]  # vanilla: no embeddings
  assert json.loads((work / "result.json").read_text())["ess_in_aligned"] == 0.5
  fidelity.run_arm(cfg, str(work), progress=False, refresh=True)  # already there: not again
  assert len(calls) == 1


def _cross_arch():
  spec = importlib.util.spec_from_file_location(
      "cross_arch", os.path.join(os.path.dirname(__file__), "..", "experiments", "cross_arch.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_cross_arch_refuses_an_unknown_cell():
  cross_arch = _cross_arch()
  with pytest.raises(ValueError, match="unknown cell"):
    cross_arch.measure("nope", "runs", rows=["vanilla"], model_specs=["mlp"], protocol="cpu",
                       num_models=1, feature_model="convnet", feature_protocol="cpu",
                       with_elf=False, show_progress=False)


def test_cross_arch_reads_a_tuned_cells_own_selection(tmp_path):
  # Cell a tunes: its rows come from <root>/a/selection.json (as grid.run_cell reads them),
  # not from <root>/selection.json. A row the selection lacks is refused before any work.
  cross_arch = _cross_arch()
  (tmp_path / "a").mkdir()
  published = os.path.join(os.path.dirname(__file__), "..", "results", "a", "selection.json")
  (tmp_path / "a" / "selection.json").write_text(open(published).read())
  with pytest.raises(ValueError, match=r"not rows of cell a \(\[.*'vanilla'"):
    cross_arch.measure("a", str(tmp_path), rows=["vanilla", "no such row"], model_specs=["mlp"],
                       protocol="cpu", num_models=1, feature_model="convnet",
                       feature_protocol="cpu", with_elf=False, show_progress=False)
  with pytest.raises(ValueError, match=r"seeds \[7\] are not seeds of cell a"):
    cross_arch.measure("a", str(tmp_path), rows=["vanilla"], model_specs=["mlp"],
                       protocol="cpu", num_models=1, feature_model="convnet",
                       feature_protocol="cpu", with_elf=False, show_progress=False, seeds=[7])


def test_cross_arch_feature_model_is_stored_and_reused(tmp_path):
  # The feature model is trained once per seed and read back from its msgpack file on resume;
  # the restored variables give the same features. A file that does not parse is retrained.
  cross_arch = _cross_arch()
  model = models.get("convnet-d1-w4", num_classes=3)
  x = jax.random.normal(jax.random.key(1), (5, 8, 8, 3))
  variables = model.init(jax.random.key(0), x, train=False)
  calls = []

  def train():
    calls.append(1)
    return variables
  path = str(tmp_path / "feature-s0.msgpack")
  first = cross_arch.feature_variables(path, train)
  again = cross_arch.feature_variables(path, train)
  assert len(calls) == 1
  np.testing.assert_array_equal(model.apply(again, x, train=False),
                                model.apply(first, x, train=False))
  with open(path, "wb") as f:
    f.write(b"\x93 not msgpack")
  cross_arch.feature_variables(path, train)
  assert len(calls) == 2


def test_results_tables_renders_a_published_cross_arch_matrix(tmp_path):
  def cell(acc):
    return {"mean": {"overall": acc, "aligned": 0.9, "conflicting": acc, "worst_group": 0.0},
            "std": {}}
  summary = elf.summarize_seeds({"vanilla": {0: {"mlp": {"plain": cell(0.2), "elf": None}}},
                                 "kde": {0: {"mlp": {"plain": cell(0.6), "elf": None}}}})
  published = {"cell": "x", "models": ["mlp"], "protocol": "cpu", "num_models": 2, "elf": False,
               "feature_model": "convnet-d3-w128", "feature_protocol": "cpu", **summary}
  (tmp_path / "results" / "cross-arch").mkdir(parents=True)
  (tmp_path / "results" / "cross-arch" / "x.json").write_text(json.dumps(published))
  (tmp_path / "README.md").write_text("")
  _page(tmp_path).write_text("<!-- crossarch:x -->\n<!-- /crossarch:x -->\n")
  assert _main(tmp_path, ["--root", str(tmp_path)]) == 0
  text = _page(tmp_path).read_text()
  assert "Cell x's SynSets, each trained on every architecture under `cpu`, 2 networks" in text
  assert "| kde − vanilla | mlp | plain | +40.0 ± 0.0 | +0.0 ± 0.0 | +40.0 ± 0.0 |" in text
  _page(tmp_path).write_text("<!-- crossarch:y -->\n<!-- /crossarch:y -->\n")
  with pytest.raises(FileNotFoundError, match="cross_arch.py --cell y --publish"):
    _main(tmp_path, ["--root", str(tmp_path)])


def test_results_tables_renders_a_series_in_ratio_order(tmp_path):
  # One line per published cell x-<ratio>, sorted by the ratio (not by the folder name);
  # "full" has one seed, so its cell is over networks and a note says so.
  for ratio, shift in ((0.5, 0.0), (0.05, 0.1)):
    t = _table()
    t["base"] = dict(t["base"], conflict_ratio=ratio)
    t["rows"]["vanilla"]["per_seed"]["conflicting"] = [0.1 + shift, 0.3 + shift]
    t["rows"]["full"] = {"seeds": [0], "per_seed": {}, "bias_aligned_fraction": [None],
                         "per_model": [{"conflicting": [0.5, 0.7]}]}
    (tmp_path / "results" / f"x-{ratio:g}").mkdir(parents=True)
    (tmp_path / "results" / f"x-{ratio:g}" / "table.json").write_text(json.dumps(t))
  (tmp_path / "results" / "y-0.1").mkdir()  # another series: not included
  (tmp_path / "README.md").write_text("")
  _page(tmp_path).write_text("<!-- series:x -->\n<!-- /series:x -->\n")
  assert _main(tmp_path, ["--root", str(tmp_path)]) == 0
  lines = _page(tmp_path).read_text().splitlines()
  assert lines[1] == "| conflict ratio | seeds | vanilla | full | bias score: vanilla |"
  # conflicting 20, 40 -> 30.0 ± 14.1; full over its networks (ddof 0): 60.0 ± 10.0
  assert lines[3] == "| 0.05 | 2 | 30.0 ± 14.1 | 60.0 ± 10.0 | 95.0 ± 7.1 |"
  assert lines[4] == "| 0.5 | 2 | 20.0 ± 14.1 | 60.0 ± 10.0 | 95.0 ± 7.1 |"
  assert "full: one seed, mean ± std over its networks" in lines[6]
  _page(tmp_path).write_text("<!-- series:z -->\n<!-- /series:z -->\n")
  with pytest.raises(FileNotFoundError, match="z-<ratio>"):
    _main(tmp_path, ["--root", str(tmp_path)])


def test_results_tables_renders_dotted_cell_names_and_refuses_an_unclosed_marker(tmp_path):
  # Cells like h-cmnistdd-0.95 carry a dot; a marker the pattern cannot read must fail loudly
  # (it was once skipped, leaving its block empty while --check passed).
  (tmp_path / "results" / "x-0.95").mkdir(parents=True)
  (tmp_path / "results" / "x-0.95" / "table.json").write_text(json.dumps(_table()))
  (tmp_path / "README.md").write_text("prose may name `<!-- table:CELL -->` inline\n")
  _page(tmp_path).write_text("<!-- table:x-0.95 -->\n<!-- /table:x-0.95 -->\n")
  assert _main(tmp_path, ["--check", "--root", str(tmp_path)]) == 1
  assert _main(tmp_path, ["--root", str(tmp_path)]) == 0
  assert "| vanilla | 30.0 ± 14.1 |" in _page(tmp_path).read_text()
  _page(tmp_path).write_text("a\n<!-- table:x-0.95 -->\n<!-- /table:x-0.9 -->\n")
  with pytest.raises(ValueError, match=r"docs.page.md: line 2: <!-- table:x-0.95 --> opens no"):
    _main(tmp_path, ["--check", "--root", str(tmp_path)])


def _backdoor_module():
  spec = importlib.util.spec_from_file_location(
      "backdoor", os.path.join(os.path.dirname(__file__), "..", "experiments", "backdoor.py"))
  backdoor = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(backdoor)
  return backdoor


def test_backdoor_dataset_entries_name_a_ratio_or_are_refused(capsys):
  backdoor = _backdoor_module()
  assert backdoor.parse_dataset("bg_fmnist@0.9") == ("bg_fmnist", {"conflict_ratio": 0.9})
  assert backdoor.parse_dataset("cmnist") == ("cmnist", {})
  for bad, message in (("nope@0.5", "unknown dataset 'nope'"), ("cmnist@x", "must be a number")):
    with pytest.raises(SystemExit):  # refused before any key, folder or run is made
      backdoor.main(["--datasets", f"cmnist,{bad}", "--workdir", "/nonexistent/never"])
    assert message in capsys.readouterr().err


def test_results_tables_renders_methods_side_by_side_in_the_given_order(tmp_path):
  # Two cells (DM, CFM); the CFM one has a KDE row with a paired difference; rows other than
  # vanilla and the selected KDE one are left out.
  dm, cfm = _table(), _table()
  cfm["base"] = dict(cfm["base"], method="cfm")
  cfm["num_models"] = 3
  kde = json.loads(json.dumps(cfm["rows"]["vanilla"]))
  kde["per_seed"]["conflicting"] = [0.5, 0.7]
  cfm["rows"]["kde (selected on valid)"] = kde
  cfm["rows"]["random real subset"] = kde
  cfm["paired"] = {"kde (selected on valid)": {"conflicting": [0.4, 0.4]}}
  for name, t in (("dm-x", dm), ("cfm-x", cfm)):
    (tmp_path / "results" / name).mkdir(parents=True)
    (tmp_path / "results" / name / "table.json").write_text(json.dumps(t))
  (tmp_path / "README.md").write_text("")
  _page(tmp_path).write_text("<!-- methods:cfm-x,dm-x -->\n<!-- /methods:cfm-x,dm-x -->\n")
  assert _main(tmp_path, ["--root", str(tmp_path)]) == 0
  lines = _page(tmp_path).read_text().splitlines()
  assert len(lines) == 9  # markers, head, rule, three rows, a blank line, the provenance
  # overall 20, 40 -> 30.0 ± 14.1; conflicting 50, 70 -> 60.0 ± 14.1; paired +40 on both seeds
  assert lines[3] == ("| cmnist 0.05 | CFM | vanilla | 2 × 3 | 30.0 ± 14.1 | 100.0 ± 0.0 | "
                      "20.0 ± 14.1 | 95.0 ± 7.1 |  |")
  assert lines[4] == ("| cmnist 0.05 | CFM | kde (selected on valid) | 2 × 3 | 30.0 ± 14.1 | "
                      "100.0 ± 0.0 | 60.0 ± 14.1 | 95.0 ± 7.1 | +40.0 ± 0.0 |")
  assert lines[5].startswith("| cmnist 0.05 | DM | vanilla | 2 × 5 |")
  _page(tmp_path).write_text("<!-- methods:dm-x,nope -->\n<!-- /methods:dm-x,nope -->\n")
  with pytest.raises(FileNotFoundError, match="--cells nope"):
    _main(tmp_path, ["--root", str(tmp_path)])


def test_backdoor_table_covers_every_finished_cell_and_splits_calibration_seeds(tmp_path, capsys):
  backdoor = _backdoor_module()

  def cell(dataset, seed, variant, asr, kde_flag):
    r = {"dataset": dataset, "seed": seed, "variant": variant, "clean_accuracy": [0.7, 0.9],
         "asr": [asr, asr], "signature": "verified", "target": 0,
         "audit": {"candidate_triggers": {"flag": False, "names": ["a", "b", "c"],
                                          "asr_mean_over_networks": [[0.02, 0.01]] * 3},
                   "reverse_engineering": {"flag": False, "anomaly_index": [0.5, 1.5]},
                   "kde_outliers": {"images": [13] if kde_flag else [], "flag": kde_flag,
                                    "margin": [0.0] * 20},
                   "verdict": "suspicious" if kde_flag else "no backdoor found"}}
    folder = tmp_path / dataset / f"s{seed}" / variant
    folder.mkdir(parents=True)
    (folder / "result.json").write_text(json.dumps(r))

  # written by separate runs of the script, out of order
  for seed, asr in ((4, 0.9), (0, 0.5), (1, 0.7), (3, 0.9), (2, 0.6)):
    cell("cmnist", seed, "posthoc", asr, kde_flag=seed != 3)
  cell("cmnist", 0, "clean", 0.0, kde_flag=False)
  with pytest.raises(SystemExit):
    backdoor.main(["--table-only", "--workdir", str(tmp_path / "none")])
  assert "no finished cell" in capsys.readouterr().err
  assert backdoor.main(["--table-only", "--calibration-seeds", "0,1,2",
                        "--workdir", str(tmp_path)]) == 0
  rows = (tmp_path / "table.md").read_text().splitlines()[2:]
  assert [r.split(" | ")[:3] for r in rows] == [
      ["| cmnist", "clean", "0 (calibration)"], ["| cmnist", "posthoc", "0–2 (calibration)"],
      ["| cmnist", "posthoc", "3, 4 (held out)"]]
  # ASR 50, 70, 60 -> 60.0 ± 10.0; clean accuracy 80 each; KDE flags 3/3, then 1/2 (one
  # outlier over two SynSets: 0.5 per set)
  assert rows[1].split(" | ")[3:5] == ["80.0 ± 0.0", "60.0 ± 10.0"]
  assert "0.5 (1/2)" in rows[2] and "| 1/2 | verified |" in rows[2]
  assert "| 0/2 (0.00) | 0/2 (1.50) |" in rows[2]
  # cells.md: one row per SynSet; the outlier's class read off the layout (IPC 10, 2 classes)
  cells = (tmp_path / "cells.md").read_text().splitlines()[2:]
  assert len(cells) == 6 and cells[1].startswith("| cmnist | 0 | posthoc | calibration | 50.0 |")
  assert "| 1.50 (1) | 1 in 1 **flag** | suspicious (kde) |" in cells[1]
  assert "| none | no backdoor found |" in cells[0]
  assert len(json.loads((tmp_path / "table.json").read_text())) == 6
  # rates.md: held-out cells only (seeds 3, 4); seed 4 is flagged (stored KDE flag) but its one
  # outlier, in class 1, puts no class at the rule's count, so not on target 0. Exact 95 %
  # intervals: 1/2 -> (1 - 0.975^(1/2), 0.975^(1/2)) = (1.3 %, 98.7 %); 0/2 ->
  # (0, 1 - 0.025^(1/2)) = (0, 84.2 %); no clean held-out cell -> none
  rates = (tmp_path / "rates.md").read_text().splitlines()[2:]
  assert rates == ["| cmnist | 1/2 (1–99 %) | 0/2 (0–84 %) | – |"]
  with pytest.raises(SystemExit):
    backdoor.main(["--table-only", "--calibration-seeds", "0-2", "--workdir", str(tmp_path)])
  assert "NAME:SEED" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    backdoor.main(["--table-only", "--calibration-seeds", ":0", "--workdir", str(tmp_path)])
  assert "NAME:SEED" in capsys.readouterr().err
  # NAME:SEED marks one dataset entry's seed: bg_fmnist seed 1 is held out though cmnist's is not
  cell("bg_fmnist", 1, "clean", 0.0, kde_flag=True)
  cell("bg_fmnist", 0, "clean", 0.0, kde_flag=False)
  assert backdoor.main(["--table-only", "--calibration-seeds", "cmnist:0,cmnist:1,cmnist:2,"
                        "bg_fmnist:0", "--workdir", str(tmp_path)]) == 0
  rows = (tmp_path / "table.md").read_text().splitlines()[2:]
  assert [r.split(" | ")[:3] for r in rows] == [
      ["| bg_fmnist", "clean", "0 (calibration)"], ["| bg_fmnist", "clean", "1 (held out)"],
      ["| cmnist", "clean", "0 (calibration)"], ["| cmnist", "posthoc", "0–2 (calibration)"],
      ["| cmnist", "posthoc", "3, 4 (held out)"]]
  # NAME:SEED:VARIANT marks one SynSet: cmnist seed 3's post-hoc set joins the calibration
  assert backdoor.main(["--table-only", "--calibration-seeds", "cmnist:0,cmnist:3:posthoc",
                        "--workdir", str(tmp_path)]) == 0
  rows = (tmp_path / "table.md").read_text().splitlines()[2:]
  assert [r.split(" | ")[2] for r in rows if "posthoc" in r] == [
      "0, 3 (calibration)", "1, 2, 4 (held out)"]
  for bad in ("cmnist:0:poisoned", "cmnist:0:clean:1"):
    with pytest.raises(SystemExit):
      backdoor.main(["--table-only", "--calibration-seeds", bad, "--workdir", str(tmp_path)])
    assert "NAME:SEED:VARIANT" in capsys.readouterr().err


def test_backdoor_cells_are_judged_by_the_current_rules():
  """A stored cell's flags are re-derived from its numbers: the lift rule, Neural Cleanse
  advisory (out of the verdict), the KDE flag as stored."""
  backdoor = _backdoor_module()
  from jaxdd.security import audit

  def judged(asr, anomaly, kde_flag, stored="suspicious"):
    r = {"audit": {"candidate_triggers": {"names": [f"t{i}" for i in range(len(asr))],
                                          "asr_mean_over_networks": asr, "flag": False},
                   "reverse_engineering": {"anomaly_index": anomaly, "flag": True},
                   "kde_outliers": {"flag": kde_flag}, "verdict": stored}}
    return backdoor.apply_rules(r)["audit"]

  quiet = [[0.03, 0.05, 0.02]] * 4
  # Neural Cleanse alone (anomaly 3.7 >= 2): reported, not in the verdict
  a = judged(quiet, [3.7, 0.1, -1.0], kde_flag=False)
  assert a["reverse_engineering"]["flag"] and not a["candidate_triggers"]["flag"]
  assert a["verdict"] == "no backdoor found" and a["verdict_when_audited"] == "suspicious"
  assert "cleanse" not in a["verdict_probes"]
  # lift: 0.19 - median(0.03, 0.03, 0.03, 0.19) = 0.16 >= 0.1, though 0.19 < the ASR threshold
  a = judged([[0.19, 0.05, 0.02]] + quiet[:3], [0.0, 0.1, -1.0], kde_flag=False,
             stored="no backdoor found")
  assert a["candidate_triggers"]["top_lift"] == {"trigger": "t0", "target": 0,
                                                 "lift": pytest.approx(0.16)}
  assert a["candidate_triggers"]["flag"] and a["verdict"] == "suspicious"
  assert "verdict_when_audited" in a
  # a class every candidate reaches (0.3 each) has no lift: confusion, not a trigger
  a = judged([[0.3, 0.05, 0.02]] * 4, [0.0, 0.1, -1.0], kde_flag=False)
  assert a["candidate_triggers"]["top_lift"]["lift"] == pytest.approx(0.0)
  assert not a["candidate_triggers"]["flag"]
  # fewer candidates than the lift needs: the ASR threshold alone
  a = judged([[0.3, 0.0, 0.0], [0.0, 0.0, 0.0]], [0.0, 0.1, -1.0], kde_flag=True)
  assert "top_lift" not in a["candidate_triggers"] and not a["candidate_triggers"]["flag"]
  assert a["verdict"] == "suspicious"  # the KDE flag, kept as stored
  assert audit.LIFT_MIN_TRIGGERS == 3
  # the classes each verdict probe fired on: the lifted pair's target (0, lift 0.16; class 1's
  # 0.05 and class 2's 0.02 have none), and the classes with >= 2 KDE outliers (IPC 4, 3
  # classes: images 0 and 2 in class 0, 5 in class 1, 8 and 11 in class 2)
  cell = {"audit": {"candidate_triggers": {"names": ["t0", "t1", "t2", "t3"],
                                           "asr_mean_over_networks": [[0.19, 0.05, 0.02]]
                                           + quiet[:3]},
                    "reverse_engineering": {"anomaly_index": [0.0, 0.1, -1.0]},
                    "kde_outliers": {"images": [0, 2, 5, 8, 11], "margin": [0.0] * 12}}}
  assert backdoor.fired_classes(cell) == {"triggers": [0], "kde": [0, 2]}
  cell["audit"]["kde_outliers"]["class_count"] = 3  # the count the cell was audited with
  assert backdoor.fired_classes(cell)["kde"] == []


def test_results_tables_data_kind_renders_a_measurement_table_with_its_provenance(tmp_path):
  import doctest
  assert doctest.testmod(results_tables, optionflags=doctest.NORMALIZE_WHITESPACE).failed == 0
  table = {"columns": ["IPC", "ms", "ratio"], "rows": [[10, 12.345, "3.0×"], [50, None, "x"]],
           "formats": [None, ".1f", None], "notes": ["raw: results/bench/x.jsonl"], **PROV}
  (tmp_path / "results" / "speed").mkdir(parents=True)
  (tmp_path / "results" / "speed" / "dm.json").write_text(json.dumps(table))
  (tmp_path / "README.md").write_text("")
  _page(tmp_path).write_text("<!-- data:speed/dm -->\n<!-- /data:speed/dm -->\n")
  assert results_tables.main(["--root", str(tmp_path)]) == 0
  assert _page(tmp_path).read_text().splitlines()[1:] == [
      "| IPC | ms | ratio |", "|---|---|---|", "| 10 | 12.3 | 3.0× |", "| 50 | – | x |", "",
      "raw: results/bench/x.jsonl", "",
      "Measured 2026-01-01 · commit `abc1234` · CPU · `make it`", "<!-- /data:speed/dm -->"]
  # a row of the wrong length and a table without its provenance are refused, naming the file
  for bad, match in (({**table, "rows": [[1, 2]]}, "row 0 does not have 3 cells"),
                     ({k: v for k, v in table.items() if k != "commit"}, "provenance")):
    (tmp_path / "results" / "speed" / "dm.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match=match):
      results_tables.main(["--check", "--root", str(tmp_path)])
