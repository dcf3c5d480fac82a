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


# ------------------------------------------------ eval_profile.py's op table (no timing)

_EP_SPEC = importlib.util.spec_from_file_location(
    "eval_profile", os.path.join(os.path.dirname(__file__), "..", "benchmarks", "eval_profile.py"))
eval_profile = importlib.util.module_from_spec(_EP_SPEC)
_EP_SPEC.loader.exec_module(eval_profile)

_HLO = """HloModule jit_fit

%fused_computation.3 (param_0: f32[4,8,8,16], param_1: f32[3,3,16,16]) -> f32[4,8,8,16] {
  %param_0 = f32[4,8,8,16]{3,2,1,0} parameter(0)
  %param_1 = f32[3,3,16,16]{3,2,1,0} parameter(1)
  ROOT %conv.1 = f32[4,8,8,16]{3,2,1,0} convolution(%param_0, %param_1), window={size=3x3}
}

%fused_computation.7 (param_0.2: f32[4,8,8,16]) -> f32[4,16] {
  %param_0.2 = f32[4,8,8,16]{3,2,1,0} parameter(0)
  %c = f32[] constant(0)
  ROOT %reduce.2 = f32[4,16]{1,0} reduce(%param_0.2, %c), dimensions={1,2}, to_apply=%add
}

ENTRY %main (p: f32[4,8,8,16]) -> f32[4,16] {
  %ynn_fusion.3 = f32[4,8,8,16]{3,2,1,0} fusion(%p, %w), kind=kCustom, \
calls=%fused_computation.3, metadata={op_name="jit(f)/while/body/closed_call/\
transpose(jvp(ConvNet))/TorchConv_1/Conv_0/conv_general_dilated"}
  ROOT %ynn_fusion.7 = f32[4,16]{1,0} fusion(%ynn_fusion.3), kind=kCustom, \
calls=%fused_computation.7, metadata={op_name="jit(f)/while/body/closed_call/\
jvp(ConvNet)/InstanceNorm_0/reduce_sum"}
}
"""


def test_op_table_sums_each_op_over_the_steps_and_names_its_scope():
  events = [{"ph": "X", "name": "ynn_fusion.3", "dur": 3000.0},
            {"ph": "X", "name": "ynn_fusion.3", "dur": 5000.0},
            {"ph": "X", "name": "ynn_fusion.7", "dur": 1000.0},
            {"ph": "X", "name": "ThunkExecutor::Execute", "dur": 99999.0},  # not an HLO op
            {"ph": "i", "name": "ynn_fusion.7"}]  # not a complete event
  rows = eval_profile.op_table(events, _HLO, iters=2)
  assert [r["op"] for r in rows] == ["ynn_fusion.3", "ynn_fusion.7"]
  conv, red = rows
  assert conv["ms_per_step"] == pytest.approx(4.0)  # (3 + 5) ms over 2 steps
  assert red["ms_per_step"] == pytest.approx(0.5)
  assert conv["backward"] and not red["backward"]
  assert conv["scope"] == "transpose(jvp(ConvNet))/TorchConv_1/Conv_0/conv_general_dilated"
  assert conv["contains"] == ["convolution"] and red["contains"] == ["reduce"]
  assert conv["shape"] == "f32[4,8,8,16]" and red["shape"] == "f32[4,16]"
  summary = eval_profile.scope_summary(rows)
  assert summary == [
      {"module": "TorchConv_1", "pass": "backward", "ms_per_step": pytest.approx(4.0)},
      {"module": "InstanceNorm_0", "pass": "forward", "ms_per_step": pytest.approx(0.5)}]
