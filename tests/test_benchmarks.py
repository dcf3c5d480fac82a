"""benchmarks/scaling.py's report: tables and plots from its JSON lines (no timing here)."""
import importlib.util
import json
import os

import pytest

_SPEC = importlib.util.spec_from_file_location(
    "scaling", os.path.join(os.path.dirname(__file__), "..", "benchmarks", "scaling.py"))
scaling = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(scaling)


def _dm(ipc, real, s):
  return {"sweep": "dm", "ipc": ipc, "real_per_class": real, "step_s_median": s,
          "step_s_min": s - 0.1, "step_s_max": s + 0.1, "peak_rss_mib": 100 * ipc + real,
          "network_gflop_per_step": 2.0 * real, "gflops_per_s": 2.0 * real / s}


def test_report_writes_one_table_per_sweep_and_a_png_each(tmp_path):
  rows = [_dm(10, 256, 0.8), _dm(1, 256, 0.5), _dm(10, 64, 0.25),
          {"sweep": "kde", "n": 60000, "median_s": 6.0, "first_call_s": 7.0, "pair_gflops": 12.3,
           "input_mib": 29.3, "peak_rss_after_inputs_mib": 300.0, "peak_rss_mib": 450.5},
          {"sweep": "eval", "mode": "map", "num_models": 2, "epochs_trained": 11,
           "compile_train_s": 5.0, "train_s": 4.0, "train_s_per_model": 2.0, "test_s": 0.5,
           "peak_rss_mib": 900.0},
          {"sweep": "eval", "error": "boom"}]
  path = tmp_path / "points.jsonl"
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  out = tmp_path / "report"
  scaling.main(["--out", str(path), "--no-measure", "--report", str(out)])
  text = (out / "scaling.md").read_text()
  assert sorted(os.listdir(out)) == ["dm.png", "eval.png", "kde.png", "scaling.md"]
  # IPC rows sorted by IPC, then the real-batch rows; GFLOP/s as given
  assert text.index("| 1 | 256 | 0.5 |") < text.index("| 10 | 256 | 0.8 |") < text.index(
      "| 10 | 64 | 0.25 |")
  # the KDE table derives the memory above the inputs: 450.5 - 300.0
  assert "| 60,000 | 6.0 | 7.0 | 12.3 | 29.3 | 450.5 | 150.5 |" in text
  assert "| map | 2 | 5.0 | 4.0 | 2.0 | 0.5 | 900.0 |" in text
  assert "Failed point (eval): boom" in text


def test_out_is_required_unless_measuring_a_kde_child(capsys):
  with pytest.raises(SystemExit) as exit_info:
    scaling.main(["--sweeps", "kde"])
  assert exit_info.value.code == 2
  assert "--out is required" in capsys.readouterr().err
