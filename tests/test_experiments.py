"""experiments/seed_table.py: statistics over distillation seeds."""
import importlib.util
import json
import os

import pytest

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
