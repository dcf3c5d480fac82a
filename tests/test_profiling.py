"""A traced chunk of distillation steps ($JAXDD_PROFILE, jaxdd.runs.profiling) and its summary
(benchmarks/trace_summary.py): the trace changes nothing the run computes, is taken once per
folder, never stops a run, and its summary adds up hand-made kernels as counted by hand."""
from __future__ import annotations

import gzip
import importlib.util
import json
import logging
import os
import re

import jax
import numpy as np
import pytest

from jaxdd import augment, distill, models
from jaxdd.runs import driver, profiling

_SPEC = importlib.util.spec_from_file_location(
    "trace_summary", os.path.join(os.path.dirname(__file__), "..", "benchmarks",
                                  "trace_summary.py"))
trace_summary = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(trace_summary)


def _drive(steps: int = 6, k: int = 2) -> np.ndarray:
  """A tiny DM distillation driven ``k`` steps per call; its final images."""
  x = np.random.default_rng(0).normal(size=(40, 8, 8, 3)).astype(np.float32)
  real = distill.real_data(x, np.repeat(np.arange(2), 20), num_classes=2)
  d = distill.dm(num_classes=2, ipc=2, real_per_class=8, lr=1.0,
                 model=models.ConvNet(2, depth=1, width=8))
  state = d.init(jax.random.key(0), real)
  out = {}

  def after(it, n, st, row):
    out["state"] = st
  driver.drive(d, state, real, 0, steps, k, stops=(), after=after, save=lambda step: None)
  return np.asarray(out["state"].syn.images)


def test_a_traced_run_computes_what_an_untraced_one_does_and_says_what_it_traced(
    tmp_path, monkeypatch):
  monkeypatch.delenv(profiling.ENV, raising=False)
  want = _drive()
  folder = tmp_path / "profile"
  monkeypatch.setenv(profiling.ENV, str(folder))
  got = _drive()
  np.testing.assert_array_equal(got, want)
  meta = json.loads((folder / "profile.json").read_text())
  # the second chunk: steps 2 and 3 (the first chunk, steps 0-1, compiles)
  assert meta["first_step"] == 2 and meta["steps"] == 2 and meta["wall_s"] > 0
  assert meta["platform"] == jax.devices()[0].platform
  traces = list(folder.glob("plugins/profile/*/*.trace.json.gz"))
  assert len(traces) == 1
  # beside it, the traced program's compiled HLO, which names the kernels a GPU graph hides
  assert meta["program"] == profiling.PROGRAM and "program_error" not in meta
  with gzip.open(folder / profiling.PROGRAM, "rt") as f:
    text = f.read()
  assert text.startswith("HloModule") and "while" in text  # the loop of steps_loop
  assert trace_summary.hlo_op_paths(text)
  # once per folder: a second run leaves the first trace alone
  assert profiling.folder() is None
  _drive()
  assert list(folder.glob("plugins/profile/*/*.trace.json.gz")) == traces


def test_a_profiler_that_cannot_start_leaves_the_run_untouched_with_one_line(
    tmp_path, monkeypatch, caplog, capsys):
  monkeypatch.delenv(profiling.ENV, raising=False)
  want = _drive()
  monkeypatch.setenv(profiling.ENV, str(tmp_path / "profile"))

  def broken(path):
    raise RuntimeError("no profiler here")
  monkeypatch.setattr(jax.profiler, "start_trace", broken)
  with caplog.at_level(logging.WARNING, logger="jaxdd"):
    got = _drive()
  np.testing.assert_array_equal(got, want)
  lines = [r.getMessage() for r in caplog.records if r.name == "jaxdd"]
  assert lines == ["profile: the trace could not start (RuntimeError: no profiler here); "
                   "the run goes on untraced"]
  # the folder says why it holds no trace, and is not tried again
  meta = json.loads((tmp_path / "profile" / "profile.json").read_text())
  assert meta["error"] == "RuntimeError: no profiler here" and "wall_s" not in meta
  assert not list((tmp_path / "profile").glob("plugins/**/*"))
  assert trace_summary.main([str(tmp_path / "profile")]) == 2
  assert capsys.readouterr().err == ("trace_summary: error: the run could not trace its steps: "
                                     "RuntimeError: no profiler here\n")


def test_writing_the_traced_program_compiles_nothing_again(tmp_path, monkeypatch):
  # the program's HLO comes from jit's cache: a profiled run compiles what an unprofiled one
  # does, no more (on a GPU a second compilation would cost tens of seconds of a loan)
  compiles = []
  jax.monitoring.register_event_duration_secs_listener(
      lambda event, secs, **kw: compiles.append(event) if "backend_compile" in event else None)
  monkeypatch.delenv(profiling.ENV, raising=False)
  jax.clear_caches()
  _drive()
  plain = len(compiles)
  monkeypatch.setenv(profiling.ENV, str(tmp_path / "profile"))
  jax.clear_caches()
  _drive()
  assert plain >= 1 and len(compiles) - plain == plain
  assert (tmp_path / "profile" / profiling.PROGRAM).is_file()


def test_a_program_that_cannot_be_written_leaves_the_trace_with_one_line(tmp_path, monkeypatch,
                                                                         caplog):
  monkeypatch.delenv(profiling.ENV, raising=False)
  want = _drive()
  monkeypatch.setenv(profiling.ENV, str(tmp_path / "profile"))

  class Unlowerable:
    def compile(self):
      raise RuntimeError("no text here")
  real = profiling.traced

  def traced(path, **kw):
    return real(path, **dict(kw, program=Unlowerable))
  monkeypatch.setattr(profiling, "traced", traced)
  with caplog.at_level(logging.WARNING, logger="jaxdd"):
    got = _drive()
  np.testing.assert_array_equal(got, want)
  assert [r.getMessage() for r in caplog.records if r.name == "jaxdd"] == [
      "profile: the program's HLO could not be written (RuntimeError: no text here)"]
  meta = json.loads((tmp_path / "profile" / "profile.json").read_text())
  assert meta["program_error"] == "RuntimeError: no text here" and meta["wall_s"] > 0
  assert not (tmp_path / "profile" / profiling.PROGRAM).exists()
  assert list((tmp_path / "profile").glob("plugins/profile/*/*.trace.json.gz"))


def test_a_single_chunk_is_not_traced(tmp_path, monkeypatch):
  monkeypatch.setenv(profiling.ENV, str(tmp_path / "profile"))
  _drive(steps=2, k=2)
  assert not (tmp_path / "profile").exists()


# ------------------------------------------------------------ the summary of a hand-made trace

def _meta(pid, name, tid=None):
  e = {"ph": "M", "pid": pid, "name": "process_name" if tid is None else "thread_name",
       "args": {"name": name}}
  if tid is not None:
    e["tid"] = tid
  return e


def _x(pid, tid, ts, dur, name, hlo=None, path=None):
  e = {"ph": "X", "pid": pid, "tid": tid, "ts": ts, "dur": dur, "name": name}
  if hlo:
    e["args"] = {"hlo_op": hlo, "tf_op": path or ""}
  return e


# op paths as XLA names them (the compiled HLO's op_name metadata, a trace's tf_op)
CONV0 = "jit(cell_step)/while/body/vmap(jit(step_fn))/jvp(real_embed)/ConvNet/TorchConv_0/conv"
CONV0_BACK = ("jit(cell_step)/while/body/vmap(jit(step_fn))/transpose(jvp(syn_embed))/ConvNet/"
              "TorchConv_0/conv")
AUG = ("jit(cell_step)/while/body/vmap(jit(step_fn))/transpose(jvp(dsa))/while/body/cond/"
       "branch_3_fun/mul")


EVENTS = [
    _meta(1, "/device:GPU:0"), _meta(1, "Stream #13(Compute)", 13), _meta(1, "Stream #14", 14),
    _meta(1, "XLA Ops", 99), _meta(701, "/host:CPU"), _meta(701, "python", 5),
    # stream 13: two convolutions, a fusion, a transpose; stream 14 overlaps 5-8 and 30-34
    _x(1, 13, 0, 10, "sm90_xmma_fprop_implicit_gemm_f32f32", "custom-call.1", CONV0),
    _x(1, 13, 12, 3, "loop_add_fusion", "fusion.2", AUG),
    _x(1, 13, 20, 10, "sm90_xmma_fprop_implicit_gemm_f32f32", "custom-call.1", CONV0),
    _x(1, 13, 40, 2, "transpose_fusion", "fusion.3", CONV0_BACK),
    _x(1, 14, 5, 3, "input_reduce_fusion", "fusion.4", "jit(cell_step)/reduce_sum"),
    _x(1, 14, 30, 4, "memcpy32_post"),
    # derived lines and the host count nothing
    _x(1, 99, 0, 42, "fusion.2"), _x(701, 5, 0, 50, "PjitFunction(run)"),
]
# hand-counted: kernels 10+3+10+2+3+4 = 32 us; busy = [0,10] [12,15] [20,34] [40,42] = 29 us


def test_the_summary_adds_up_the_device_kernels_per_step():
  s = trace_summary.summarise(EVENTS, steps=2, wall_s=50e-6, top=3)
  assert s["on_device"] and s["steps"] == 2 and len(s["devices"]) == 1
  dev = s["devices"][0]
  assert dev["device"] == "/device:GPU:0"
  assert dev["kernel_ms_per_step"] == pytest.approx(32e-3 / 2)
  assert dev["busy_ms_per_step"] == pytest.approx(29e-3 / 2)
  assert dev["idle_ms_per_step"] == pytest.approx((50 - 29) * 1e-3 / 2)
  kinds = {k["kind"]: k["ms_per_step"] for k in dev["kinds"]}
  assert kinds == pytest.approx({"convolution": 10e-3, "other fusion": 1.5e-3,
                                 "copy / transpose": 1e-3, "reduction": 1.5e-3,
                                 "memory copy / set": 2e-3})
  assert sum(k["share"] for k in dev["kinds"]) == pytest.approx(1.0)
  parts = {k["part"]: k["ms_per_step"] for k in dev["parts"]}
  assert parts == pytest.approx({"real TorchConv_0": 10e-3, "synthetic TorchConv_0 backward": 1e-3,
                                 "augmentation backward": 1.5e-3, "other": 1.5e-3,
                                 "unnamed": 2e-3})
  # by HLO op (a kernel without one by its name): hand-counted
  ops = {o["op"]: (o["ms_per_step"], o["kernels_per_step"])
         for o in trace_summary.summarise(EVENTS, steps=2, top=9)["devices"][0]["ops"]}
  assert ops == {"custom-call.1": pytest.approx((10e-3, 1)),
                 "fusion.2": pytest.approx((1.5e-3, 0.5)), "fusion.3": pytest.approx((1e-3, 0.5)),
                 "fusion.4": pytest.approx((1.5e-3, 0.5)),
                 "memcpy32_post": pytest.approx((2e-3, 0.5))}
  # the idle gaps, each by the op of the kernel that ends it: 10-12 (fusion.2), 15-20
  # (custom-call.1), 34-40 (fusion.3): 13 us, the busy 29 us' complement within 0-42
  gaps = {g["before"]: (g["ms_per_step"], g["gaps_per_step"]) for g in dev["gaps"]}
  assert gaps == {"fusion.3": pytest.approx((3e-3, 0.5)),
                  "custom-call.1": pytest.approx((2.5e-3, 0.5)),
                  "fusion.2": pytest.approx((1e-3, 0.5))}
  top = dev["top"]
  assert [t["hlo_op"] for t in top] == ["custom-call.1", "", "fusion.2"]
  assert top[0]["per_step"] == 1.0 and top[0]["ms_per_step"] == pytest.approx(10e-3)


# A GPU replays most kernels inside graphs (command buffers): their events name the kernel and
# the graph, not the op; the program's compiled HLO names the op behind each instruction.
GRAPH = [
    _meta(1, "/device:GPU:0"), _meta(1, "Stream #14(Compute)", 14),
    _x(1, 14, 0, 6, "loop_multiply_fusion_10", "command_buffer_312", "XlaModule:"),
    _x(1, 14, 6, 2, "input_reduce_fusion", "command_buffer_312", "XlaModule:"),
    {"ph": "X", "pid": 1, "tid": 14, "ts": 8, "dur": 4, "name": "sm90_xmma_fprop",
     "args": {"hlo_op": "cudnn-conv.17", "tf_op": "XlaModule:", "name": CONV0_BACK}},
    _x(1, 14, 12, 1, "memset_kernel", "command_buffer_312", "XlaModule:"),
]
HLO = """HloModule jit_loop, entry_computation_layout={()->f32[]}

%command_buffer.312 (p: f32[8]) -> f32[8] {
  %loop_multiply_fusion.10 = f32[8]{0} fusion(f32[8]{0} %p), kind=kLoop, calls=%fused_computation.10, metadata={op_type="mul" op_name="AUG" source_file="x.py" source_line=3}
  ROOT %input_reduce_fusion = f32[] fusion(f32[8]{0} %loop_multiply_fusion.10), kind=kInput, calls=%fused_reduce, metadata={op_type="reduce_sum" op_name="NORM"}
}
""".replace("AUG", AUG).replace(
    "NORM", "jit(cell_step)/while/body/vmap(jit(step_fn))/jvp(syn_embed)/ConvNet/InstanceNorm_0/"
    "reduce_sum")


def test_kernels_inside_a_graph_are_named_from_the_traced_programs_hlo(tmp_path):
  paths = trace_summary.hlo_op_paths(HLO)
  assert paths["loop_multiply_fusion_10"] == AUG
  dev = trace_summary.summarise(GRAPH, steps=1, paths=paths)["devices"][0]
  parts = {k["part"]: k["ms_per_step"] for k in dev["parts"]}
  # hand-attributed: 6 us augmentation backward (the graph's fusion, by its HLO metadata),
  # 2 us synthetic InstanceNorm_0 (the reduction), 4 us synthetic TorchConv_0 backward (the
  # event's own name), 1 us unnamed (a memset no instruction names)
  assert parts == pytest.approx({"augmentation backward": 6e-3,
                                 "synthetic InstanceNorm_0": 2e-3,
                                 "synthetic TorchConv_0 backward": 4e-3, "unnamed": 1e-3})
  # without the program, the graph's kernels are unnamed and the named event still counts
  bare = trace_summary.summarise(GRAPH, steps=1)["devices"][0]
  assert {k["part"]: k["ms_per_step"] for k in bare["parts"]} == pytest.approx(
      {"unnamed": 9e-3, "synthetic TorchConv_0 backward": 4e-3})
  # the script reads the program beside the trace
  folder = tmp_path / "p"
  (folder / "plugins" / "profile" / "t").mkdir(parents=True)
  with gzip.open(folder / "plugins" / "profile" / "t" / "h.trace.json.gz", "wt") as f:
    json.dump({"traceEvents": GRAPH}, f)
  (folder / "profile.json").write_text(json.dumps({"first_step": 2, "steps": 1, "wall_s": 2e-5}))
  with gzip.open(folder / trace_summary.PROGRAM, "wt") as f:
    f.write(HLO)
  assert trace_summary.PROGRAM == profiling.PROGRAM
  assert trace_summary.main([str(folder), "--json"]) == 0


def test_a_trace_without_a_device_says_so(tmp_path, capsys):
  folder = tmp_path / "p"
  (folder / "plugins" / "profile" / "t").mkdir(parents=True)
  host = [e for e in EVENTS if e["pid"] == 701]
  with gzip.open(folder / "plugins" / "profile" / "t" / "h.trace.json.gz", "wt") as f:
    json.dump({"traceEvents": host}, f)
  (folder / "profile.json").write_text(json.dumps(
      {"first_step": 20, "steps": 20, "wall_s": 0.5, "platform": "cpu", "device_kind": "cpu",
       "jax": "x"}))
  assert trace_summary.main([str(folder)]) == 0
  out = capsys.readouterr().out
  assert "steps 21-40" in out and "No device events" in out and "Wall: 25.000 ms a step." in out
  assert trace_summary.main([str(tmp_path / "none")]) == 2
  assert capsys.readouterr().err.count("\n") == 1


def test_a_dm_step_names_the_parts_a_profile_attributes():
  # the named scopes of dm_loss reach the compiled program's op names, which a GPU trace's
  # kernels carry (tf_op); each op lands in its part
  x = np.random.default_rng(0).normal(size=(40, 8, 8, 3)).astype(np.float32)
  real = distill.real_data(x, np.repeat(np.arange(2), 20), num_classes=2)
  d = distill.dm(num_classes=2, ipc=2, real_per_class=8, lr=1.0,
                 model=models.ConvNet(2, depth=1, width=8),
                 augment=augment.dsa("color_crop_cutout_flip_scale_rotate"))
  state = d.init(jax.random.key(0), real)
  text = jax.jit(d.step).lower(state, real).compile().as_text()
  found = {trace_summary.part(p) for p in re.findall(r'op_name="([^"]+)"', text)}
  assert {"augmentation", "augmentation backward", "real TorchConv_0",
          "synthetic TorchConv_0", "synthetic TorchConv_0 backward"} <= found, found


def test_the_kinds_of_common_kernel_names():
  assert trace_summary.kind("cudnn::winograd_nonfused") == "convolution"
  assert trace_summary.kind("nvjet_tst_128x64_gemm") == "matrix product"
  assert trace_summary.kind("loop_multiply_fusion") == "other fusion"
  assert trace_summary.kind("loop_convert_fusion") == "other fusion"  # a dtype cast, no conv
  assert trace_summary.kind("kernel", "convolution.4") == "convolution"
  assert trace_summary.kind("reduce_fusion_3") == "reduction"
  assert trace_summary.kind("whatever") == "other"
