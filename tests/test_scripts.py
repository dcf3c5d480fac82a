"""Every script under benchmarks/ and experiments/ runs end to end in its tiny mode.

The scripts are not imported by the library, so nothing else notices when a change breaks
one. Each test runs a script's real code path at the smallest sizes (``--tiny``), in this
process where the script allows it (jax is imported once), and checks what it promises:
its JSON lines with their keys, the files it writes. ``test_every_script_has_a_tiny_test``
fails for a script added without one.

The fast suite runs the cheap ones (well under a minute together); the tests marked slow
(whole pipelines: tune, distil, evaluate, audit; or many compiled programs) run in CI's slow
phase.
"""
import glob
import importlib.util
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import run_folders

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
#: Scripts tested elsewhere on their own (tests/test_experiments.py runs results_tables.py).
TESTED_ELSEWHERE = {"experiments/results_tables.py",
                    "benchmarks/trace_summary.py"}  # tests/test_profiling.py: it only reads
#: script (relative to the repository root) -> the test below that runs its tiny mode.
TESTS: dict[str, str] = {}


def covers(*scripts):
  def register(fn):
    for s in scripts:
      TESTS[s] = fn.__name__
    return fn
  return register


def load(script: str):
  """The script as a module (its ``main(argv)`` is called in this process)."""
  name = "script_" + script.replace("/", "_").removesuffix(".py")
  spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, script))
  module = importlib.util.module_from_spec(spec)
  sys.modules[name] = module  # as an import would (dataclasses look their module up there)
  spec.loader.exec_module(module)
  return module


def run(script: str, argv, capfd) -> tuple[list[dict], str]:
  """Runs ``main(argv)``; asserts it succeeded; returns its JSON lines and all its stdout
  (its measuring subprocesses' too: ``capfd`` reads the file descriptor)."""
  code = load(script).main(argv)
  out = capfd.readouterr().out
  assert code in (None, 0), out
  rows = [json.loads(l) for l in out.splitlines() if l.startswith("{")]
  assert not [r for r in rows if "error" in r], out
  return rows, out


def _refused_without_cuda_plugin(script, capfd, argv) -> None:
  """Where JAX's CUDA plugin is not installed, ``--gpu-target`` (the H200's config) is refused
  in one line naming it."""
  target = os.path.join(ROOT, "benchmarks", "gpu_targets", "h200.txtpb")
  try:
    import jax_plugins.xla_cuda13  # noqa: F401
  except ImportError:
    assert script.main([*argv, "--gpu-target", target]) == 1
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and "needs JAX's CUDA plugin" in err


def has(row: dict, *keys) -> bool:
  return all(k in row for k in keys)


def test_every_script_has_a_tiny_test():
  scripts = sorted(os.path.relpath(p, ROOT) for pattern in ("benchmarks/*.py", "experiments/*.py")
                   for p in glob.glob(os.path.join(ROOT, pattern)))
  missing = [s for s in scripts if s not in TESTS and s not in TESTED_ELSEWHERE]
  assert not missing, f"scripts without a tiny-mode test in tests/test_scripts.py: {missing}"
  assert set(TESTS) <= set(scripts)  # no test of a script that is gone
  for s in scripts:
    # these read the files they are given: no sizes to shrink
    if s in TESTS and s not in ("experiments/seed_table.py", "benchmarks/cached_hlo.py",
                                "benchmarks/hlo_traffic.py", "experiments/unit_pairs.py"):
      with open(os.path.join(ROOT, s)) as f:
        assert "--tiny" in f.read(), f"{s} has no --tiny flag"


# ---------------------------------------------------------------------------- benchmarks/

@covers("benchmarks/dm_step.py")
def test_dm_step(capfd):
  rows, _ = run("benchmarks/dm_step.py", ["--tiny"], capfd)  # one measuring subprocess
  (row,) = rows
  assert row["bench"] == "dm_step" and row["ipc"] == 1 and row["n"] == 1
  assert row["step_s_median"] > 0 and row["network_gflop_per_step"] >= 0


@covers("benchmarks/dm_runs.py")
@pytest.mark.slow
def test_dm_runs(capfd):
  rows, _ = run("benchmarks/dm_runs.py", ["--tiny"], capfd)
  assert [(r["num_runs"], r["mode"]) for r in rows] == [
      (1, "single"), (2, "independent-vmap"), (2, "independent-map"), (2, "common")]
  assert all(r["step_s_median"] > 0 for r in rows)


@covers("benchmarks/cell.py")
@pytest.mark.slow
def test_cell_benchmark(capfd):
  rows, _ = run("benchmarks/cell.py", ["--tiny"], capfd)
  (row,) = rows
  assert row["seeds"] == 2 and len(row["rows"]) == 5
  assert row["cell_step_s"] > 0 and row["rows_step_s"] > 0 and row["rows_over_cell"] > 0


@covers("benchmarks/cached_hlo.py")
def test_cached_hlo_reads_a_gpu_programs_hlo_from_the_cache(tmp_path, capfd):
  # one entry of the compiled programs an H200 loan brought back (jaxdd's batched KDE weights)
  import tarfile
  import zlib
  folder = os.path.join(ROOT, "tests", "data", "gpu-xla-cache")
  (entry,) = os.listdir(folder)
  script = load("benchmarks/cached_hlo.py")
  assert script.main([os.path.join(folder, entry)]) == 0
  text = capfd.readouterr().out
  assert text.startswith("HloModule jit__batched_weights, is_scheduled=true")
  assert "ENTRY" in text and "fusion" in text  # the GPU compiler's output, fusions named
  # from a loan's xla-cache.tar.gz, by the program's name, into a gzipped file
  tar_path = tmp_path / "xla-cache.tar.gz"
  with tarfile.open(tar_path, "w:gz") as tar:
    tar.add(os.path.join(folder, entry), arcname=entry)
    tar.add(os.path.join(folder, entry), arcname="jit_other-00-cache")
  assert script.main([str(tar_path)]) == 1
  assert "2 entries match; name one with --name" in capfd.readouterr().err
  out = tmp_path / "program.hlo.txt.gz"
  assert script.main([str(tar_path), "--name", "jit__batched_weights", "--out", str(out)]) == 0
  import gzip
  assert gzip.decompress(out.read_bytes()).decode() == text
  assert script.main([str(tar_path), "--name", "jit__batched_weights", "--out", str(out)]) == 1
  assert "exists; give a new path" in capfd.readouterr().err
  # not an entry; an entry with no Riegeli records (as XLA:CPU writes them): one line each
  for name, data in (("jit_junk-00-cache", b"junk"),
                     ("jit_cpu-00-cache", zlib.compress(b"\0\0\0\1" + b"\x08\x03" * 20))):
    (tmp_path / name).write_bytes(data)
    assert script.main([str(tmp_path / name)]) == 1
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"cached_hlo: {name}: ")
    assert ("not a JAX compilation cache entry" in err) or ("not a GPU executable" in err)


@covers("benchmarks/hlo_traffic.py")
def test_hlo_traffic_counts_the_large_arrays_of_the_h200_step(tmp_path, capfd):
  # the program of the H200 unit's step, kept with its trace
  import tarfile
  with tarfile.open(os.path.join(ROOT, "results", "paper-scale",
                                 "h200-unit-profile.tar.gz")) as tar:
    tar.extract("program.hlo.txt.gz", tmp_path, filter="data")
  hlo = str(tmp_path / "program.hlo.txt.gz")
  rows, _ = run("benchmarks/hlo_traffic.py", [hlo, "--kernels"], capfd)
  kernels = {r["kernel"]: r for r in rows[:-1]}
  assert rows[-1]["kernels"] == len(kernels) == 26
  # ReLU's gradient of the synthetic first block, by hand: it reads the 2,000 pooled
  # gradients (14x14x128 float32) and the normalised maps (4 rows x 500 x 28x28x128), and
  # writes maps of that size
  maps, pooled = 4 * 500 * 28 * 28 * 128 * 4, 2000 * 14 * 14 * 128 * 4
  relu = kernels["loop_select_fusion.6"]
  assert (relu["read"], relu["written"]) == (pooled + maps, maps)
  assert relu["op"].endswith("transpose(jvp(syn_embed))/ConvNet/select_n")
  # the first convolution of the real batch writes its 2,560 maps and reads nothing that large
  conv = kernels["cudnn-conv-bias-activation.23"]
  assert (conv["read"], conv["written"]) == (0, 2560 * 28 * 28 * 128 * 4)
  assert rows[-1]["written_gb"] == round(sum(k["written"] for k in rows[:-1]) / 1e9, 3)
  (tmp_path / "bad.txt").write_text("no module here")
  assert load("benchmarks/hlo_traffic.py").main([str(tmp_path / "bad.txt")]) == 1
  assert "holds no HloModule" in capfd.readouterr().err


#: A hand-made HLO module: an entry with a kernel and two loops, one in the other (trip counts
#: 7 and 3); the outer body holds a kernel and a conditional of 1 or 2 kernels. Arrays: 4 MB
#: (1000x1000 f32) and 1 MB (1000x250 f32).
_LOOPS_HLO = """HloModule loops

%fused (p: f32[1000,1000]) -> f32[1000,1000] {
  %p = f32[1000,1000]{1,0} parameter(0)
  ROOT %n = f32[1000,1000]{1,0} negate(%p)
}

%inner (t: (s32[], f32[1000,1000])) -> (s32[], f32[1000,1000]) {
  %t = (s32[], f32[1000,1000]{1,0}) parameter(0)
  %x = f32[1000,1000]{1,0} get-tuple-element(%t), index=1
  %k = f32[1000,1000]{1,0} fusion(%x), kind=kLoop, calls=%fused, metadata={op_name="a/inner"}
  ROOT %r = (s32[], f32[1000,1000]{1,0}) tuple(%i, %k)
}

%br0 (a: f32[1000,1000]) -> f32[1000,250] {
  %a = f32[1000,1000]{1,0} parameter(0)
  ROOT %s = f32[1000,250]{1,0} fusion(%a), kind=kLoop, calls=%fused, metadata={op_name="a/b0"}
}

%br1 (b: f32[1000,1000]) -> f32[1000,250] {
  %b = f32[1000,1000]{1,0} parameter(0)
  %u = f32[1000,1000]{1,0} copy(%b)
  ROOT %v = f32[1000,250]{1,0} fusion(%u), kind=kLoop, calls=%fused, metadata={op_name="a/b1"}
}

%outer (t: (s32[], f32[1000,1000])) -> (s32[], f32[1000,1000]) {
  %t = (s32[], f32[1000,1000]{1,0}) parameter(0)
  %x = f32[1000,1000]{1,0} get-tuple-element(%t), index=1
  %w = (s32[], f32[1000,1000]{1,0}) while(%t), condition=%c, body=%inner, backend_config={"known_trip_count":{"n":"3"}}
  %y = f32[1000,1000]{1,0} fusion(%x), kind=kLoop, calls=%fused, metadata={op_name="a/outer"}
  %z = f32[1000,250]{1,0} conditional(%i, %y, %y), branch_computations={%br0, %br1}
  ROOT %r = (s32[], f32[1000,1000]{1,0}) tuple(%i, %y)
}

ENTRY %main (p: f32[1000,1000]) -> f32[1000,1000] {
  %p = f32[1000,1000]{1,0} parameter(0)
  %e = f32[1000,1000]{1,0} fusion(%p), kind=kLoop, calls=%fused, metadata={op_name="a/entry"}
  %w = (s32[], f32[1000,1000]{1,0}) while(%t), condition=%c, body=%outer, backend_config={"known_trip_count":{"n":"7"}}
  ROOT %o = f32[1000,1000]{1,0} get-tuple-element(%w), index=1
}
"""


def test_hlo_traffic_follows_loops_and_branches():
  # by hand: the outer loop (the only one the entry runs) launches its own kernel, one
  # iteration of the inner loop's, and the larger branch's two; counting arrays of 2 MB or
  # more, the two loops' kernels and the copy read and write 4 MB each, the branch's fusion
  # reads 4 MB (its 1 MB output is not counted): 16 MB read, 12 MB written
  module = load("benchmarks/hlo_traffic.py").Module(_LOOPS_HLO)
  assert sorted(module.loops()) == [("inner", 3, 1), ("outer", 7, 0)]
  every = module.run_once(0, "outer")
  assert [k["kernel"] for k in every] == ["y", "k", "u", "v"]
  big = module.run_once(2e6, "outer")
  assert [(k["kernel"], k["read"], k["written"]) for k in big] == [
      ("y", 4_000_000, 4_000_000), ("k", 4_000_000, 4_000_000), ("u", 4_000_000, 4_000_000),
      ("v", 4_000_000, 0)]
  assert module.kernels(0, "main")[0]["op"] == "a/entry"


@covers("benchmarks/eval_cost.py")
def test_eval_cost_counts_one_epoch_of_the_evaluations_training(tmp_path, capfd):
  script = load("benchmarks/eval_cost.py")
  hlo = tmp_path / "hlo"
  rows, _ = run("benchmarks/eval_cost.py", ["--tiny", "--hlo-dir", str(hlo)], capfd)
  layers, fused = rows
  assert [r["point"] for r in rows] == ["accelerator", "accelerator+norm_block=fused"]
  # the smoke protocol's 3 epochs run as 4, as the reference's loop does
  assert layers["epochs"] == fused["epochs"] == 4
  assert all(r["epoch_kernels"] >= r["big_kernels"] > 0 for r in rows)
  assert sorted(os.listdir(hlo)) == ["accelerator+norm_block=fused.hlo.txt.gz",
                                     "accelerator.hlo.txt.gz"]
  # a program compiled elsewhere (a GPU's, from its cache) is counted the same way
  (kept,), _ = run("benchmarks/eval_cost.py", ["--tiny", "--count",
                                               str(hlo / "accelerator.hlo.txt.gz")], capfd)
  assert {k: kept[k] for k in ("epochs", "epoch_kernels", "big_kernels", "big_read_gb")} == \
      {k: layers[k] for k in ("epochs", "epoch_kernels", "big_kernels", "big_read_gb")}
  (tmp_path / "other.txt").write_text("no module here")
  assert script.main(["--tiny", "--count", str(tmp_path / "other.txt")]) == 1
  err = capfd.readouterr().err
  assert err.count("\n") == 1 and "0 loops of 4 iterations" in err
  # the epoch loop is found by its iterations: a program without it is refused
  with pytest.raises(ValueError, match="0 loops of 5 iterations"):
    script.epoch_counts(_LOOPS_HLO, 1e6, 5)
  assert script.epoch_counts(_LOOPS_HLO, 2e6, 7) == {
      "epochs": 7, "epoch_kernels": 4, "big_kernels": 4, "big_read_gb": 0.016,
      "big_written_gb": 0.012}
  with pytest.raises(SystemExit):
    script.main(["--tiny", "--policies", "cpu+speed=1"])
  assert "--policies: not a Policy field to change" in capfd.readouterr().err
  _refused_without_cuda_plugin(script, capfd, ["--tiny"])


@covers("benchmarks/unit_programs.py")
def test_unit_programs_counts_what_a_units_command_compiles(tmp_path, capfd):
  script = load("benchmarks/unit_programs.py")
  # the compile log JAX writes, read as a unit's would be
  log = ("WARNING:jax._src.dispatch:Finished XLA compilation of jit(cell_step) in 2.5 sec\n"
         "Finished XLA compilation of jit(add) in 0.05 sec\nunrelated line\n"
         "Finished XLA compilation of jit(add) in 0.25 sec\n")
  assert script.compile_log(log) == {"programs": 3, "compile_s": 2.8,
                                     "by_name": {"cell_step": [1, 2.5], "add": [2, 0.3]}}
  out = tmp_path / "programs.json"
  rows, _ = run("benchmarks/unit_programs.py",
                ["--tiny", "--code", f"here={ROOT}", "--json", str(out)], capfd)
  (one,) = rows
  assert one["code"] == "here" and one["wall_s"] > 0 and one["programs"] >= 0
  table = json.loads(out.read_text())
  assert table["columns"][:3] == ["code", "programs compiled", "compile s"]
  assert table["rows"][0][1] == one["programs"] and table["rows"][0][4] == 1.0
  assert "--next-unit --tiny --plan" in table["command"]
  # refusals: one line each, before anything runs
  for argv, says in ((["--tiny"], "nothing to do"),
                     (["--code", "x"], "give NAME=DIR"),
                     (["--code", f"x={ROOT}"], "flags after --"),
                     (["--code", f"x={ROOT}", "--repeats", "0", "--", "--plan"], "at least 1")):
    with pytest.raises(SystemExit):
      script.main(argv)
    assert says in capfd.readouterr().err
  _refused_without_cuda_plugin(script, capfd, ["--tiny"])


@covers("benchmarks/cell_cost.py")
def test_cell_cost_keeps_its_programs_and_compiles_for_an_absent_gpu(tmp_path, capfd):
  script = load("benchmarks/cell_cost.py")
  hlo = tmp_path / "hlo"
  rows, _ = run("benchmarks/cell_cost.py", ["--tiny", "--time", "0", "--rows", "vanilla",
                                            "--points", "single:float32", "--hlo-dir", str(hlo)],
                capfd)
  assert rows[0]["big_kernels"] == 0 and rows[0]["big_written_gb"] == 0.0  # tiny arrays
  assert os.listdir(hlo) == ["single_float32.hlo.txt.gz"]
  import gzip
  assert gzip.decompress((hlo / "single_float32.hlo.txt.gz").read_bytes()).startswith(b"HloModule")
  with pytest.raises(SystemExit):  # a folder that holds something is refused
    script.main(["--tiny", "--hlo-dir", str(hlo)])
  assert "give a new path or an empty folder" in capfd.readouterr().err
  # an absent GPU: compiled with JAX's CUDA plugin where it is installed, else one line
  target = os.path.join(ROOT, "benchmarks", "gpu_targets", "h200.txtpb")
  args = ["--tiny", "--rows", "vanilla", "--points", "single:float32", "--gpu-target", target]
  try:
    import jax_plugins.xla_cuda13  # noqa: F401
  except ImportError:
    assert script.main(args) == 1
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and "needs JAX's CUDA plugin" in err
  else:
    assert script.main(args) == 0
    (row,) = [json.loads(x) for x in capfd.readouterr().out.splitlines() if x.startswith("{")]
    assert row["backend"] == "cuda (compiled without the GPU)" and "step_s_median" not in row


@covers("benchmarks/cell_cost.py")
@pytest.mark.slow
def test_cell_cost_benchmark(capfd):
  rows, _ = run("benchmarks/cell_cost.py", ["--tiny"], capfd)
  single, split, low = rows
  assert [r["point"] for r in rows] == ["single:float32", "split:float32", "split:bfloat16"]
  assert all(len(r["rows"]) == 8 and r["step_s_median"] > 0 for r in rows)
  # what must hold whatever the backend: the split program embeds one shared real batch (and
  # the sampled row's own) where the single program embeds one batch per row, so it counts
  # fewer operations; bfloat16 halves the bytes of the network's traced operations
  assert split["hlo_flops"] < 0.75 * single["hlo_flops"]
  assert low["hlo_bytes_accessed"] < split["hlo_bytes_accessed"]
  # the first unit's rows, with and without the DSA augmentation: without it the step does
  # less; a malformed point is refused in one line
  # (timed runs leave the CUDA counts out: they do not depend on the machine)
  assert not any("cuda_loops" in r for r in (single, split, low))
  rows, _ = run("benchmarks/cell_cost.py", ["--tiny", "--time", "0", "--rows", "vanilla,kde",
                                            "--points", "single:float32,single:float32:noaug,"
                                            "single:float32:vmapaug,single:float32:fusednorm"],
                 capfd)
  dsa, plain, batched, fused = rows
  assert dsa["rows"] == ["vanilla", "kde"] and plain["point"] == "single:float32:noaug"
  assert plain["hlo_flops"] < dsa["hlo_flops"] and "step_s_median" not in plain
  # the classes augmented all at once: no branch left in the step, every family computed;
  # one after another, three branches (the real batch, the synthetic one and its gradient),
  # each taken once a class, on the DSA family the class draws
  assert dsa["cuda_branches"] == 3 and batched["cuda_branches"] == plain["cuda_branches"] == 0
  assert batched["cuda_loops"] == dsa["cuda_loops"] - 3 >= 0  # lax.map's: real, synthetic, its gradient
  assert batched["hlo_flops"] > dsa["hlo_flops"]
  # the fused norm blocks change the blocks, not the step's loops and branches
  assert fused["point"] == "single:float32:fusednorm"
  assert (fused["cuda_loops"], fused["cuda_branches"]) == (dsa["cuda_loops"], dsa["cuda_branches"])
  # a time budget measures the points in order while they fit (the first always) and names
  # the rest: with no second to spare, the first alone
  script = load("benchmarks/cell_cost.py")
  assert script.main(["--tiny", "--rows", "vanilla", "--points",
                      "split:float32,split:bfloat16:vmapaug+thingrad", "--budget-seconds",
                      "0"]) == 0
  printed = capfd.readouterr()
  rows = [json.loads(line) for line in printed.out.splitlines() if line.startswith("{")]
  assert [r["point"] for r in rows] == ["split:float32"] and rows[0]["step_s_median"] > 0
  assert ("not measured within --budget-seconds 0: split:bfloat16:vmapaug+thingrad"
          in printed.err)
  # the rows in two one-core parts at once: the parts of halves(), each with its own uniform
  # batch, so the cores program embeds one more real batch than split; a one-core program
  # computes what the ordinary one does
  assert script.halves(list(script.ROWS)) == (
      ["vanilla", "kde", "kde_init", "fairdd_pseudo", "fairdd_batch"],
      ["fairdd", "oracle", "kde_floor_init_is"])
  assert script.halves(["vanilla", "kde", "fairdd"]) == (["vanilla", "kde"], ["fairdd"])
  rows, _ = run("benchmarks/cell_cost.py", ["--tiny", "--policy", "cpu", "--points",
                                            "split:float32,split:float32:onecore,cores:float32"],
                capfd)
  split, one, cores = rows
  assert one["flops"] == split["flops"] and cores["point"] == "cores:float32"
  assert cores["hlo_flops"] > split["hlo_flops"] and cores["step_s_median"] > 0
  with pytest.raises(SystemExit):
    script.main(["--tiny", "--points", "cores:float32:onecore"])
  assert "already one core a part" in capfd.readouterr().err
  for bad in ("split:float16", "split:float32:vmapaug+fast", "split:float32:noaug+noaug"):
    with pytest.raises(SystemExit):
      script.main(["--tiny", "--points", bad])
    assert "is not PROGRAM:DTYPE[:OPTION+...]" in capfd.readouterr().err


@covers("benchmarks/cell_whole.py")
@pytest.mark.slow
def test_cell_whole_benchmark(capfd, tmp_path):
  rows, _ = run("benchmarks/cell_whole.py", ["--tiny", "--workdir", str(tmp_path)], capfd)
  (row,) = rows
  assert row["rows"] == ["vanilla", "kde"] and row["seeds"] == ["0", "1"]
  for arm in ("cell", "rows"):
    (phase,) = row["phases"][arm]
    assert 0 < phase["distill_s"] + phase["eval_s"] < row[f"{arm}_wall_s"]
  # The two arms make the same SynSets up to float rounding (the same float32 sums grouped
  # differently, two steps), except where a ReLU's input is within rounding of zero: it can
  # fall on either side in the two arms, which changes the gradient of the pixels that unit
  # sees by more than rounding (1.8e-4 on one such run). At depth 2 a unit sees an 8 x 8
  # patch of one image, 192 of the four runs' 940,800 values (96 differed by more than 1e-5
  # on that run), so a share of 1 % allows about 50 such units and fails arms whose SynSets
  # differ more widely. The test accuracies are the same but for an image whose two largest
  # logits are that close.
  assert 0 <= row["pixels_beyond_rounding_share"] <= 0.01
  assert row["max_pixel_diff"] >= 0 and row["pixels_beyond_rounding"] >= 0
  assert row["max_test_overall_diff"] <= 0.01


@covers("benchmarks/cpu_paths.py")
@pytest.mark.slow
def test_cpu_paths(capfd):
  rows, _ = run("benchmarks/cpu_paths.py", ["--tiny", "--variants", "default,xla-conv"], capfd)
  summary = rows[-1]["summary"]
  assert set(summary) == {"cpu-dm-step", "cpu-eval-epoch"}
  assert all(set(s) == {"default", "xla-conv"} for s in summary.values())
  assert all(s["default"]["vs_default"] == 1.0 for s in summary.values())


@covers("benchmarks/eval_profile.py")
@pytest.mark.slow
def test_eval_profile(capfd, tmp_path):
  rows, out = run("benchmarks/eval_profile.py", ["--tiny", "--table"], capfd)
  assert rows[0]["part"].startswith("step") and all(r["s_per_iter"] > 0 for r in rows)
  assert len(rows) == 4 + 3 * 3 + 2  # step, augment, fwd, fwd+bwd; 3 convs; 2 input gradients
  assert "| part | ms / step |" in out


@covers("benchmarks/evaluate.py")
def test_evaluate(capfd):
  rows, _ = run("benchmarks/evaluate.py", ["--tiny"], capfd)  # a subprocess per mode
  assert [r.get("mode") for r in rows] == ["map", "sequential", None]
  assert all(has(r, "compile_train_s", "train_s", "test_s", "peak_rss_mib", "device")
             for r in rows[:2])
  assert rows[0]["num_models"] == 2 and rows[0]["protocol"] == "smoke"
  assert rows[2]["bench"] == "evaluate.speedup" and rows[2]["map_train_speedup"] > 0
  # a variant of a policy pins that layout in the measured process; a bad one is one line
  rows, _ = run("benchmarks/evaluate.py", ["--tiny", "--modes", "map", "--policy",
                                           "accelerator+norm_block=fused"], capfd)
  assert rows[0]["policy"] == "accelerator+norm_block=fused"
  with pytest.raises(SystemExit):
    load("benchmarks/evaluate.py").main(["--tiny", "--policy", "cpu+speed=1"])
  assert "--policy: not a Policy field to change" in capfd.readouterr().err


@covers("benchmarks/gm_outer.py")
@pytest.mark.slow
def test_gm_outer(capfd):
  rows, _ = run("benchmarks/gm_outer.py", ["--tiny", "--child"], capfd)
  (row,) = rows
  assert row["bench"] == "gm_outer" and row["outer_loop"] == 2 and row["outer_s_median"] > 0


@covers("benchmarks/kde.py", "benchmarks/kde_numpy.py", "benchmarks/kde_sklearn.py")
def test_kde_benchmarks(capfd):
  rows, _ = run("benchmarks/kde_numpy.py", ["--tiny"], capfd)
  assert [r["bench"] for r in rows] == ["kde_numpy.check", "kde_numpy.log_density"]
  assert rows[0]["check_max_abs_diff"] < 1e-3
  rows, _ = run("benchmarks/kde.py", ["--tiny"], capfd)
  assert [r["bench"] for r in rows] == ["kde.check", "kde.log_density", "kde.weights_batch",
                                        "kde.weights_classes"]
  assert rows[0]["check_max_abs_diff"] < 1e-3 and rows[1]["n"] == 200
  pytest.importorskip("sklearn")
  rows, _ = run("benchmarks/kde_sklearn.py", ["--tiny"], capfd)
  assert [r["bench"] for r in rows] == ["kde_sklearn.check", "kde_sklearn.score_samples"]


@covers("benchmarks/mtt_step.py")
@pytest.mark.slow
def test_mtt_step(capfd):
  rows, _ = run("benchmarks/mtt_step.py", ["--tiny", "--one", "tesla", "2"], capfd)
  (row,) = rows
  assert row["mode"] == "tesla" and row["syn_steps"] == 2 and row["loss_finite"]
  assert row["temp_mb"] > 0 and row["step_s_median"] > 0


@covers("benchmarks/pipeline_overhead.py")
def test_pipeline_overhead(capfd):
  rows, _ = run("benchmarks/pipeline_overhead.py", ["--tiny"], capfd)
  assert [r["steps_per_call"] for r in rows] == [1, 2]
  assert all(r["bare_ms"] > 0 and has(r, "pipeline_ms", "overhead") for r in rows)


@covers("benchmarks/scaling.py")
@pytest.mark.slow
def test_scaling(capfd, tmp_path):
  out, report = tmp_path / "points.jsonl", tmp_path / "report"
  rows, _ = run("benchmarks/scaling.py", ["--tiny", "--out", str(out), "--report", str(report)],
                capfd)
  assert [r["sweep"] for r in rows] == ["dm", "kde", "eval"]
  assert rows[0]["bench"] == "dm_step" and rows[1]["n"] == 200 and rows[2]["bench"] == "evaluate"
  assert len(out.read_text().splitlines()) == 3
  assert sorted(os.listdir(report)) == ["dm.png", "eval.png", "kde.png", "scaling.md"]


@covers("benchmarks/side_by_side.py")
@pytest.mark.slow
def test_side_by_side(capfd):
  rows, _ = run("benchmarks/side_by_side.py", ["--tiny"], capfd)
  assert [r.get("checkout") for r in rows[:2]] == ["a", "b"]
  assert set(rows[-1]["ratio_b_over_a"]) == {"step_s", "epoch_s"}


def test_side_by_side_child_in_process(capfd):
  rows, _ = run("benchmarks/side_by_side.py", ["--tiny", "--child"], capfd)
  (row,) = rows
  assert row["step_s"] > 0 and row["epoch_s"] > 0


# ---------------------------------------------------------------------------- experiments/

@pytest.fixture(scope="module")
def grid_root(tmp_path_factory):
  """Cell a of experiments/grid.py in its tiny mode: a selection and a final table."""
  root = tmp_path_factory.mktemp("grid")
  assert load("experiments/grid.py").main(["--cells", "a", "--root", str(root), "--tiny",
                                           "--quiet"]) == 0
  return root


@covers("experiments/grid.py")
@pytest.mark.slow
@pytest.mark.heavy
def test_grid(grid_root):
  cell = grid_root / "a"
  selection = json.loads((cell / "selection.json").read_text())
  assert set(selection["chosen"]) == {"none", "kde"}
  table = json.loads((cell / "table.json").read_text())
  assert table["seeds"] == [0] and table["num_models"] == 1
  assert {"vanilla", "kde (selected on valid)"} <= set(table["rows"])
  assert (cell / "table.md").exists()


@covers("experiments/cross_arch.py")
@pytest.mark.slow
@pytest.mark.heavy
def test_cross_arch(grid_root, capfd):
  _, out = run("experiments/cross_arch.py", ["--cell", "a", "--root", str(grid_root), "--tiny",
                                             "--quiet"], capfd)
  stored = sorted(os.listdir(grid_root / "a" / "cross-arch"))
  assert [s for s in stored if s.endswith(".json")] == ["kde--selected-on-valid-s0.json",
                                                        "vanilla-s0.json"], stored
  assert any(s.startswith("feature-") and s.endswith(".msgpack") for s in stored)
  assert "mlp" in out


@covers("experiments/bf16_accuracy.py")
@pytest.mark.slow
@pytest.mark.heavy
def test_bf16_accuracy(tmp_path, capfd):
  rows, out = run("experiments/bf16_accuracy.py", ["--root", str(tmp_path / "runs"), "--out",
                                                   str(tmp_path / "out"), "--tiny"], capfd)
  assert sorted((r["weighting"], r["real_dtype"], r["seed"]) for r in rows) == sorted(
      (w, dt, s) for w in ("none", "kde") for dt in ("float32", "bfloat16", "bfloat16-all")
      for s in (0, 1))
  assert all(has(r, "overall", "aligned", "conflicting") for r in rows)
  text = (tmp_path / "out" / "table.md").read_text()
  assert "| DM + KDE | bfloat16 real forward |" in text
  assert "| DM + KDE | bfloat16 real and synthetic (compute_dtype), seeds 0, 1 |" in text
  assert set(json.loads((tmp_path / "out" / "table.json").read_text())) == {"none", "kde"}


@covers("experiments/post_distillation.py")
@pytest.mark.slow
@pytest.mark.heavy
def test_post_distillation(tmp_path, capfd):
  argv = ["--tiny", "--workdir", str(tmp_path / "w"), "--out", str(tmp_path / "t.json")]
  _, out = run("experiments/post_distillation.py", argv, capfd)
  table = json.loads((tmp_path / "t.json").read_text())
  assert [r[0] for r in table["rows"]] == [
      "vanilla DM SynSet, no debiasing", "vanilla DM SynSet + LfF", "vanilla DM SynSet + DFA",
      "vanilla DM SynSet + SelecMix"]
  assert all(r[1] == "0,1" for r in table["rows"]) and set(table) >= {"date", "commit", "command"}
  stored = json.loads((tmp_path / "w" / "s1" / "debiased" / "baselines.json").read_text())
  assert {stored[m]["result"]["method"] for m in ("lff", "dfa", "selecmix")} == {
      "lff", "dfa", "selecmix"}
  # a rerun loads every run and method: the same table, no training
  _, again = run("experiments/post_distillation.py", argv, capfd)
  assert json.loads((tmp_path / "t.json").read_text())["rows"] == table["rows"]
  assert "(0 s)" in again or "(1 s)" in again


@covers("experiments/fidelity.py")
@pytest.mark.slow
@pytest.mark.heavy
def test_fidelity(tmp_path, capfd):
  _, out = run("experiments/fidelity.py", ["--workdir", str(tmp_path), "--tiny", "--quiet"],
               capfd)
  table = json.loads((tmp_path / "table.json").read_text())
  assert set(table) == {"vanilla", "kde"} and all(len(r) == 1 for r in table.values())
  assert (tmp_path / "vanilla" / "s0" / "result.json").exists()
  assert (tmp_path / "table.md").read_text().strip() in out


@covers("experiments/paper_table.py")
@pytest.mark.slow
def test_paper_table(tmp_path, capfd):
  work, res = str(tmp_path / "w"), tmp_path / "r"
  script = load("experiments/paper_table.py")
  # A budget spent before the first row: exit 0, one line saying what is left, no result.
  assert script.main(["--tiny", "--quiet", "--workdir", work, "--results", str(res),
                      "--budget-minutes", "0.0002", "--reserve-minutes", "0.0001"]) == 0
  err = capfd.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "time budget is spent" in err[0] and "cmnist5-ipc10" in err[0]
  assert not res.exists()
  _, out = run("experiments/paper_table.py", ["--tiny", "--quiet", "--workdir", work,
                                              "--results", str(res)], capfd)
  # each phase's line says what compiling took of it
  assert re.search(r"runs distilled in one program in \d+ s \(.*; compiling \d+ programs: "
                   r"[0-9.]+ s\)", out), out
  assert re.search(r"SynSets evaluated in one program in \d+ s \(.*; compiling \d+ programs", out)
  data = json.loads((res / "cmnist5-ipc10.json").read_text())
  assert data["columns"][8:10] == ["DEO_M", "DEO_A"]
  assert [r[0] for r in data["rows"]] == [
      "vanilla DM", "DM + KDE (the paper's method)",
      "best label-free, chosen on validation: DM + KDE (the paper's method)"]
  assert all(r[2] == "0,1" for r in data["rows"])
  for key in ("date", "commit", "machine", "command"):
    assert data[key]
  # each seed's evaluation is a file of its run: validation and test, the same networks
  stored = json.loads((tmp_path / "w" / "cmnist5-ipc10" / "kde" / "s1" / "paper-eval.json")
                      .read_text())
  assert set(stored) == {"valid", "test", "eval_s"}
  assert len(stored["test"]["deo_m"]) == len(stored["valid"]["conflicting"])
  assert all(0 <= v <= 1 for v in stored["test"]["deo_m"] + stored["test"]["deo_a"])
  # A rerun skips the finished cell.
  _, out = run("experiments/paper_table.py", ["--tiny", "--quiet", "--workdir", work,
                                              "--results", str(res)], capfd)
  assert "cmnist5-ipc10: finished" in out
  # A damaged result file is said in one line and computed again (from the runs' own stored
  # evaluations: the same rows), never kept.
  whole = (res / "cmnist5-ipc10.json").read_text()
  (res / "cmnist5-ipc10.json").write_text(whole[: len(whole) // 2])
  _, out = run("experiments/paper_table.py", ["--tiny", "--quiet", "--workdir", work,
                                              "--results", str(res)], capfd)
  assert "cmnist5-ipc10: finished" not in out
  assert json.loads((res / "cmnist5-ipc10.json").read_text())["rows"] == data["rows"]
  # A damaged evaluation of one run is evaluated again (that run alone: float rounding may
  # differ from the cell's program, so only its form is checked).
  eval_file = tmp_path / "w" / "cmnist5-ipc10" / "kde" / "s1" / "paper-eval.json"
  eval_file.write_text('{"valid": 3}')
  (res / "cmnist5-ipc10.json").unlink()
  run("experiments/paper_table.py", ["--tiny", "--quiet", "--workdir", work, "--results",
                                     str(res)], capfd)
  assert set(json.loads(eval_file.read_text())) == {"valid", "test", "eval_s"}
  assert len(json.loads((res / "cmnist5-ipc10.json").read_text())["rows"]) == len(data["rows"])


def test_paper_table_set_takes_run_settings_of_their_kind():
  script = load("experiments/paper_table.py")
  assert script.set_overrides(["lr_img=30", "real_per_class=128", "eval_model=convnet-d3-w32"],
                              "proxy") == {"lr_img": 30.0, "real_per_class": 128,
                                           "eval_model": "convnet-d3-w32"}
  for items, words in ((["lr_img"], "not FIELD=VALUE"), (["ipc=10"], "set by the cell"),
                       (["lr_img=1", "lr_img=2"], "given twice"), (["colour=1"], "not a run"),
                       (["iterations=2.5"], "not an int"), (["lr_img=-1"], "positive")):
    with pytest.raises(ValueError, match=words):
      script.set_overrides(items, "proxy")
  assert script.main(["--set", "seed=1", "--next-unit", "--plan"]) == 2


@covers("experiments/calibration.py")
def test_calibration_table_against_hand_computed_distances(tmp_path, capfd):
  import numpy as np
  script = load("experiments/calibration.py")
  ref_dir = os.path.join(ROOT, "results", "paper-scale", "h100-cell-s0")
  ref = script.reference_rows(ref_dir)
  for r in script.ROWS:  # the mean over the networks' records, as numpy gives it
    recs = [json.load(open(p)) for p in sorted(glob.glob(os.path.join(ref_dir, f"{r}-net*.json")))]
    assert ref[r][1] == pytest.approx(100 * np.mean([x["test"]["overall"] for x in recs]))
  # a point 2 points under paper scale on every row except FairDD with labels, 6 under
  work = tmp_path / "w"
  for r in script.ROWS:
    d = work / "cmnist5-ipc50" / r / "s0"
    d.mkdir(parents=True)
    test = (ref[r][1] - (6 if r == "fairdd" else 2)) / 100
    (d / "paper-eval.json").write_text(json.dumps(
        {"valid": {"conflicting": [ref[r][0] / 100] * 2, "num_conflicting": 9},
         "test": {"overall": [test - 0.01, test + 0.01]}, "eval_s": 1.0}))
  out = tmp_path / "grid.json"
  assert script.main(["table", "--reference", ref_dir, "--point", f"p=q={work}",
                      "--out", str(out), "--commit", "abc", "--machine", "m",
                      "--command", "x"]) == 0
  table = json.loads(out.read_text())
  ref_row, row = table["rows"]
  assert ref_row[0] == "paper scale (reference)" and ref_row[-2] == "yes · yes"
  assert row[0] == "p=q"  # the label is everything before the last '='
  assert row[1] == f"{ref['vanilla'][1] - 2:.1f} (-2.0)"
  # FairDD with labels (96.6 - 6) falls under DM + KDE (96.0 - 2): the order breaks
  assert row[-2] == "no · yes" and row[-1] == "6.0 (FairDD, true labels)"
  # a point of vanilla and kde only: the other rows are dashes, no order is claimed
  for r in script.ROWS[1:]:
    if r != "kde":
      shutil.rmtree(work / "cmnist5-ipc50" / r)
  assert script.main(["table", "--reference", ref_dir, "--point", f"two={work}", "--out",
                      str(out)]) == 0
  row = json.loads(out.read_text())["rows"][1]
  assert row[2] == row[3] == row[5] == "–" and row[-2] == "–"
  assert set(table) >= {"columns", "rows", "date", "commit", "machine", "command"}
  capfd.readouterr()
  assert script.main(["table", "--reference", ref_dir, "--point", str(work)]) == 2
  assert "LABEL=WORKDIR" in capfd.readouterr().err
  # the evaluation grid: one point 1 point over paper scale on every row
  grid = tmp_path / "eval.jsonl"
  grid.write_text(json.dumps({"epochs": 9, "width": 8, "networks": 2, "sgd_steps": 20,
                              "eval_s": 3.0, "rows": {
                                  r: {"valid_conflicting": ref[r][0] / 100,
                                      "test_overall": (ref[r][1] + 1) / 100}
                                  for r in script.ROWS}}) + "\n")
  assert script.main(["eval-table", "--reference", ref_dir, "--grid", str(grid), "--out",
                      str(tmp_path / "e.json")]) == 0
  row = json.loads((tmp_path / "e.json").read_text())["rows"][1]
  assert row[:3] == ["10 epochs, width 8, 2 networks", "20", f"{ref['vanilla'][1] + 1:.1f} (+1.0)"]
  assert row[-3:] == ["yes · yes", f"1.0 ({script.LABELS[script.ROWS[0]]})", "3"]
  # beside a cell table of the paper table's format (a row it lacks is a dash)
  from jaxdd.runs import paper
  cell = {"columns": ["row", "bias labels", "seeds", "valid conflicting", "test overall"],
          "rows": [[paper.ROWS[r].label, "no", "0,1", "1.0", f"{ref[r][1] - 3:.1f} ± 0.5"]
                   for r in script.ROWS if r != "fairdd"]}
  (tmp_path / "cell.json").write_text(json.dumps(cell))
  assert script.main(["compare", "--reference", ref_dir, "--table",
                      f"x={tmp_path / 'cell.json'}", "--out", str(tmp_path / "c.json")]) == 0
  rows = json.loads((tmp_path / "c.json").read_text())["rows"]
  assert rows[0][2] == f"{ref['vanilla'][1] - 3:.1f} ± 0.5 (-3.0; seeds 0,1)"
  assert rows[4][2] == "–" and rows[-1] == ["order as paper scale", "yes", "–"]


@pytest.mark.slow
def test_calibration_eval_scores_paper_table_runs_under_a_shorter_protocol(tmp_path, capfd):
  work = tmp_path / "w"
  run("experiments/paper_table.py", ["--tiny", "--quiet", "--seeds", "0", "--workdir",
                                     str(work), "--results", str(tmp_path / "r")], capfd)
  out = tmp_path / "e.jsonl"
  argv = ["eval", "--runs", str(work / "cmnist5-ipc10"), "--rows", "vanilla,kde", "--tiny",
          "--out", str(out)]
  run("experiments/calibration.py", argv, capfd)
  (rec,) = [json.loads(line) for line in out.read_text().splitlines()]
  # the smoke preset's 20 images: one batch an epoch, 2 epochs (the reference's Epoch + 1)
  assert (rec["epochs"], rec["width"], rec["networks"], rec["sgd_steps"]) == (1, 8, 1, 2)
  assert set(rec["rows"]) == {"vanilla", "kde"}
  assert all(0 <= v <= 1 for r in rec["rows"].values() for v in r.values())
  _, again = run("experiments/calibration.py", argv, capfd)  # a done point is skipped
  assert len(out.read_text().splitlines()) == 1 and "epochs 1" not in again


@pytest.mark.slow
def test_paper_table_units_go_on_from_their_records_on_a_fresh_machine(tmp_path, capfd):
  # One unit (a seed of a cell, every row) per command; its record is all that carries over:
  # the second command runs with an empty work folder (a fresh machine with only the
  # repository) and goes on with the next unit.
  import tarfile

  from jaxdd.runs import paper
  from jaxdd.runs.paper import cell_runs
  script = load("experiments/paper_table.py")
  res, out = tmp_path / "r", tmp_path / "out"
  base = ["--tiny", "--next-unit", "--quiet", "--results", str(res)]
  assert script.main(base + ["--workdir", str(tmp_path / "w1"), "--plan"]) == 0
  plan = capfd.readouterr().out
  assert "plan: unit cmnist5-ipc10/s0: rows vanilla, kde; seeds 0" in plan
  assert "no estimate yet" in plan and not res.exists()
  # a unit stopped part-way (Ctrl-C in its distillation) leaves no record
  real_program = cell_runs.cell_program

  def stopped(*a, **k):
    raise KeyboardInterrupt
  cell_runs.cell_program = stopped
  assert script.main(base + ["--workdir", str(tmp_path / "w0")]) == 130
  assert "left no record" in capfd.readouterr().err
  assert not (res / "units").exists() or not list((res / "units").rglob("*.json"))
  cell_runs.cell_program = real_program
  # the first unit through the lent machine's one command, as it runs there (a subprocess)
  env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep
             + os.environ.get("PATH", ""), JAXDD_CACHE=str(tmp_path / "cache"),
             NEXT_UNIT_XLA_CARRY=str(tmp_path / "xla-carry"),
             # the minutes the command has left time the unit's step (here one tiny variant)
             NEXT_UNIT_LIMIT_S="3000", NEXT_UNIT_STEP_POINTS="split:float32",
             NEXT_UNIT_STEP_FLAGS="--tiny")
  proc = subprocess.run(["bash", os.path.join(ROOT, "experiments", "next_unit.sh"), "run",
                         str(out), "--tiny", "--workdir", str(tmp_path / "w1"), "--results",
                         str(res)], env=env, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  assert "unit cmnist5-ipc10/s0 finished" in proc.stdout
  rec = json.loads((res / "units" / "cmnist5-ipc10" / "s0.json").read_text())
  assert set(rec["rows"]) == {"vanilla", "kde"} and rec["unit"] == "cmnist5-ipc10/s0"
  for key in ("commit", "machine", "date", "command"):
    assert rec[key]
  assert set(rec["timings"]) == {"total_s", "distill_s", "eval_s"}
  # the lent machine's scratch folder is not recorded: the command names it OUT
  assert "--out OUT " in rec["command"] and str(out) not in rec["command"]
  for row in ("vanilla", "kde"):  # the unit's runs write only what the work-folder guard lists
    assert run_folders.unlisted(str(tmp_path / "w1" / "cmnist5-ipc10" / row / "s0")) == []
  kde = rec["rows"]["kde"][0]
  assert kde["seed"] == 0 and len(kde["synset_sha256"]) == 64
  assert len(kde["test"]["overall"]) == len(kde["valid"]["conflicting"]) >= 1
  # what a lent machine hands back: the record, the runs and the profiler's trace of one chunk
  # of steps, within the device's limits (no compiled programs: the tests' own XLA cache
  # folder is the caller's, not next_unit.sh's)
  names = sorted(os.listdir(out))
  assert names == ["next-unit.log", "profile.tar.gz", "runs.tar.gz.part0", "step-times.jsonl",
                   "unit-cmnist5-ipc10-s0.json"]
  (timed,) = [json.loads(line) for line in (out / "step-times.jsonl").read_text().splitlines()]
  assert timed["point"] == "split:float32" and sorted(timed["rows"]) == ["kde", "vanilla"]
  assert timed["step_s_median"] > 0
  log = (out / "next-unit.log").read_text()
  assert "unit cmnist5-ipc10/s0 finished" in log
  assert "Profile of 1 distillation step (steps 2-2)" in log  # the summary, in the log
  with tarfile.open(out / "profile.tar.gz") as tar:
    inside = tar.getnames()
  assert "profile.json" in inside and any(n.endswith(".trace.json.gz") for n in inside)
  assert "program.hlo.txt.gz" in inside  # names the kernels a GPU replays inside graphs
  assert all(os.path.getsize(out / n) <= 16 * 2**20 for n in names)
  with tarfile.open(out / "runs.tar.gz.part0") as tar:
    assert "cmnist5-ipc10/kde/s0/synset/arrays.npz" in tar.getnames()
  table = json.loads((res / "cmnist5-ipc10.json").read_text())
  assert [r[2] for r in table["rows"]] == ["0", "0", "0"] and table["complete"] is False
  # back in another checkout, one command takes what the machine left: the record, the runs
  # and the cell's table; and compiled programs, when a machine left them, for the next one
  with tarfile.open(out / "xla-cache.tar.gz", "w:gz") as tar:
    tar.add(out / "next-unit.log", arcname="jit_step-0123-cache")
  res_b, work_b = tmp_path / "rb", tmp_path / "wb"
  take = ["--tiny", "--workdir", str(work_b), "--results", str(res_b), "--handover-dir",
          str(tmp_path / "hb")]
  proc = subprocess.run(["bash", os.path.join(ROOT, "experiments", "next_unit.sh"), "take",
                         str(out), *take], env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  assert "took the record of unit cmnist5-ipc10/s0" in proc.stdout
  record = "units/cmnist5-ipc10/s0.json"
  assert (res_b / record).read_bytes() == (res / record).read_bytes()
  assert (work_b / "cmnist5-ipc10" / "kde" / "s0" / "synset" / "arrays.npz").is_file()
  assert json.loads((res_b / "cmnist5-ipc10.json").read_text())["rows"] == table["rows"]
  assert not (tmp_path / "hb").exists()
  assert "kept the compiled programs in" in proc.stdout
  assert (tmp_path / "xla-carry" / "xla-cache.tar.gz").read_bytes() == \
      (out / "xla-cache.tar.gz").read_bytes()
  # taking it again changes nothing; a record that differs, a run folder that exists and
  # other settings are refused in one line, before anything is written
  before = sorted(str(p) for p in tmp_path.rglob("*"))
  assert script.main(["--next-unit", "--take", str(out)] + take) == 0
  assert "is this record already" in capfd.readouterr().out
  assert sorted(str(p) for p in tmp_path.rglob("*")) == before
  changed = tmp_path / "changed"
  shutil.copytree(out, changed)
  rec_file = changed / "unit-cmnist5-ipc10-s0.json"
  rec_file.write_text(rec_file.read_text().replace(rec["date"], "2000-01-01"))
  assert script.main(["--next-unit", "--take", str(changed)] + take) == 1
  assert "does not match the digest it carries" in capfd.readouterr().err
  edited = json.loads(rec_file.read_text())
  rec_file.write_text(json.dumps(dict(edited, digest=paper.record_digest(edited))))
  assert script.main(["--next-unit", "--take", str(changed)] + take) == 1
  assert "exists and differs" in capfd.readouterr().err
  assert script.main(["--next-unit", "--take", str(out), "--tiny", "--workdir", str(work_b),
                      "--results", str(tmp_path / "rc")]) == 1
  assert "the returned runs would replace it" in capfd.readouterr().err
  assert script.main(["--next-unit", "--take", str(out), "--tiny", "--iterations", "3",
                      "--results", str(tmp_path / "rd"), "--workdir", str(tmp_path / "wd")]) == 1
  assert "give the flags it was run with" in capfd.readouterr().err
  assert not any((tmp_path / d).exists() for d in ("rc", "rd", "wd"))
  # --out into a folder that holds anything is refused before any work
  assert script.main(base + ["--workdir", str(tmp_path / "w2"), "--out", str(out)]) == 1
  assert "new path or an empty folder" in capfd.readouterr().err
  proc = subprocess.run(["bash", os.path.join(ROOT, "experiments", "next_unit.sh"), "run",
                         str(out), "--tiny"], env=env, capture_output=True, text=True)
  assert proc.returncode == 2 and "new path or an empty folder" in proc.stderr
  # a fresh machine: another, empty work folder; the next unit is seed 1
  _, printed = run("experiments/paper_table.py", base + ["--workdir", str(tmp_path / "w2")],
                   capfd)
  assert "unit cmnist5-ipc10/s1 finished" in printed
  assert "from 1 finished units on this machine" in printed  # the estimate
  assert not (tmp_path / "w2" / "cmnist5-ipc10" / "kde" / "s0").exists()
  table = json.loads((res / "cmnist5-ipc10.json").read_text())
  assert [r[2] for r in table["rows"]] == ["0,1"] * 3 and table["complete"] is True
  assert "cmnist5-ipc10/s0:" in table["machine"] and "cmnist5-ipc10/s1:" in table["commit"]
  _, printed = run("experiments/paper_table.py", base + ["--workdir", str(tmp_path / "w3")],
                   capfd)
  assert "every unit of cmnist5-ipc10 is finished" in printed
  # the records of other settings are refused, not mixed
  assert script.main(base + ["--workdir", str(tmp_path / "w3"), "--iterations", "3"]) == 1
  assert "give these settings another --units-dir" in capfd.readouterr().err


@pytest.mark.slow
def test_a_unit_the_budget_stopped_goes_on_elsewhere_from_its_handover(tmp_path, capfd,
                                                                       monkeypatch):
  # A lent machine's time budget stops a unit part-way: with --out it leaves a handover (the
  # run folders with their latest checkpoint and the surrogate's parameters); another
  # machine (a fresh work folder and cache) carries it back with --resume-from, trains no
  # surrogate, and finishes the unit with the SynSets of an uninterrupted run.
  import tarfile

  import numpy as np

  from jaxdd import surrogate
  from jaxdd.runs import driver, paper
  script = load("experiments/paper_table.py")
  base = ["--tiny", "--next-unit", "--quiet", "--seeds", "0", "--iterations", "3"]

  def synsets(out):
    with tarfile.open(fileobj=__import__("io").BytesIO(
        b"".join(p.read_bytes() for p in sorted(out.glob("runs.tar.gz.part*"))))) as tar:
      return {n: np.load(tar.extractfile(f"cmnist5-ipc10/{n}/s0/synset/arrays.npz"))["images"]
              for n in ("vanilla", "kde")}

  monkeypatch.setenv("JAXDD_CACHE", str(tmp_path / "cache-a"))
  run("experiments/paper_table.py", base + ["--workdir", str(tmp_path / "wa"), "--results",
                                            str(tmp_path / "ra"), "--out",
                                            str(tmp_path / "oa")], capfd)
  whole = synsets(tmp_path / "oa")
  # machine 1: the budget passes during the first steps
  monkeypatch.setenv("JAXDD_CACHE", str(tmp_path / "cache-1"))
  res, hand = tmp_path / "r", tmp_path / "hand"
  with monkeypatch.context() as m:
    m.setattr(driver.Deadline, "passed", lambda self: True)
    assert script.main(base + ["--workdir", str(tmp_path / "w1"), "--results", str(res),
                               "--out", str(hand), "--budget-minutes", "60"]) == 0
  err = capfd.readouterr().err
  assert "the unit cmnist5-ipc10/s0 left no record" in err and "--resume-from" in err
  assert not (res / "units").exists()
  names = sorted(os.listdir(hand))
  assert names == ["handover.json", "handover.tar.gz.part0"]
  manifest = json.loads((hand / "handover.json").read_text())
  assert manifest["unit"] == "cmnist5-ipc10/s0" and len(manifest["legs"]) == 1
  assert sorted(manifest["runs"]) == ["cmnist5-ipc10/kde/s0", "cmnist5-ipc10/vanilla/s0"]
  assert 0 < manifest["legs"][0]["step"] < 3 and len(manifest["surrogates"]) == 1
  with tarfile.open(hand / "handover.tar.gz.part0") as tar:
    got = tar.getnames()
  assert any(n.startswith("runs/cmnist5-ipc10/kde/s0/checkpoints/") for n in got)
  assert not any(n.endswith("embeddings.npz") for n in got)
  # back here, `--take` keeps the handover for the next loan (what next_unit.sh carries)
  kept = tmp_path / "kept"
  take = base + ["--workdir", str(tmp_path / "wt"), "--results", str(tmp_path / "rt"),
                 "--handover-dir", str(kept)]
  assert script.main(take + ["--take", str(hand)]) == 0
  assert "kept the handover of unit cmnist5-ipc10/s0 (1 command(s)" in capfd.readouterr().out
  assert sorted(os.listdir(kept)) == names
  assert (kept / "handover.json").read_bytes() == (hand / "handover.json").read_bytes()
  # a damaged part is refused in one line, before anything is written
  bad = tmp_path / "bad"
  bad.mkdir()
  for n in names:
    (bad / n).write_bytes((hand / n).read_bytes())
  with open(bad / "handover.tar.gz.part0", "r+b") as f:
    f.seek(100)
    f.write(b"x")
  assert script.main(base + ["--workdir", str(tmp_path / "w2"), "--results", str(res),
                             "--resume-from", str(bad)]) == 1
  assert "not the part the handover recorded" in capfd.readouterr().err
  assert not (tmp_path / "w2").exists()
  # other flags than the handover was made with: refused, nothing written
  other = [a if a != "3" else "4" for a in base]  # --iterations 4
  assert script.main(other + ["--workdir", str(tmp_path / "w2"), "--results", str(res),
                              "--resume-from", str(hand)]) == 1
  assert "give the flags it was made with" in capfd.readouterr().err
  assert not (tmp_path / "w2").exists()
  # machine 2: a fresh work folder and cache; the surrogate comes from the handover; it
  # finishes the distillation, hands the SynSets over before evaluating, and is killed there
  monkeypatch.setenv("JAXDD_CACHE", str(tmp_path / "cache-2"))
  monkeypatch.setattr(surrogate.cache, "train_surrogate",
                      lambda *a, **k: pytest.fail("the handed-over surrogate was trained again"))
  hand2 = tmp_path / "hand2"

  def killed(*a, **k):
    raise KeyboardInterrupt
  with monkeypatch.context() as m:
    m.setattr(paper.Queue, "evaluate_many", killed)
    assert script.main(base + ["--workdir", str(tmp_path / "w2"), "--results", str(res),
                               "--out", str(hand2), "--resume-from", str(hand),
                               "--budget-minutes", "60"]) == 130
  printed = capfd.readouterr().out
  assert "goes on from the handover" in printed and "handed over before the evaluation" in printed
  manifest2 = json.loads((hand2 / "handover.json").read_text())
  assert len(manifest2["legs"]) == 2 and manifest2["legs"][1]["step"] == 3
  with tarfile.open(hand2 / "handover.tar.gz.part0") as tar:
    got = tar.getnames()
  assert "runs/cmnist5-ipc10/kde/s0/synset/arrays.npz" in got
  assert not any("/checkpoints/" in n for n in got)  # finished runs: their SynSets only
  # the second leg's handover replaces the first one kept here; the first cannot come back
  assert script.main(take + ["--take", str(hand2)]) == 0
  assert json.loads((kept / "handover.json").read_text())["legs"] == manifest2["legs"]
  assert script.main(take + ["--take", str(hand)]) == 1
  assert "does not continue" in capfd.readouterr().err
  assert json.loads((kept / "handover.json").read_text())["legs"] == manifest2["legs"]
  # machine 3: only the evaluation is left
  monkeypatch.setenv("JAXDD_CACHE", str(tmp_path / "cache-3"))
  _, printed = run("experiments/paper_table.py",
                   base + ["--workdir", str(tmp_path / "w3"), "--results", str(res), "--out",
                           str(tmp_path / "o3"), "--resume-from", str(hand2),
                           "--budget-minutes", "60"], capfd)
  assert "unit cmnist5-ipc10/s0 finished" in printed and "runs distilled" not in printed
  assert not any(n.startswith("handover") for n in os.listdir(tmp_path / "o3"))
  rec = json.loads((res / "units" / "cmnist5-ipc10" / "s0.json").read_text())
  assert len(rec["legs"]) == 2
  assert rec["timings"]["total_s"] >= sum(leg["total_s"] for leg in rec["legs"])
  # taking the finished unit's record here removes the handover kept for it
  assert script.main(take + ["--take", str(tmp_path / "o3")]) == 0
  assert f"removed {kept}" in capfd.readouterr().out and not kept.exists()
  assert (tmp_path / "rt" / "units" / "cmnist5-ipc10" / "s0.json").read_bytes() == \
      (res / "units" / "cmnist5-ipc10" / "s0.json").read_bytes()
  resumed = synsets(tmp_path / "o3")
  for n in whole:  # resumed from a checkpoint: equal up to float rounding
    np.testing.assert_allclose(resumed[n], whole[n], atol=1e-5 * np.abs(whole[n]).max())
  # the first handover again: the runs here are these runs, farther on (finished), so they are
  # kept as they are, nothing replaced, and the unit's record is made from them again
  res3 = tmp_path / "r3"
  w3 = tmp_path / "w3"
  files = {p: p.read_bytes() for p in w3.rglob("*") if p.is_file() and "checkpoints" not in p.parts}
  assert script.main(base + ["--workdir", str(w3), "--results", str(res3),
                             "--resume-from", str(hand)]) == 0
  assert all(p.read_bytes() == b for p, b in files.items())
  again = json.loads((res3 / "units" / "cmnist5-ipc10" / "s0.json").read_text())
  assert {n: [r["synset_sha256"] for r in v] for n, v in again["rows"].items()} == {
      n: [r["synset_sha256"] for r in v] for n, v in rec["rows"].items()}


def test_take_refuses_what_it_cannot_take_in_one_line(tmp_path, capfd):
  from jaxdd.runs import paper
  script = load("experiments/paper_table.py")
  kw = ["--tiny", "--workdir", str(tmp_path / "w"), "--results", str(tmp_path / "r")]
  (tmp_path / "empty").mkdir()
  cases = [(["--take", str(tmp_path / "empty")], 2, "go with --next-unit"),
           (["--next-unit", "--take", str(tmp_path / "empty"), "--out", str(tmp_path / "o")], 2,
            "--take runs nothing"),
           (["--next-unit", "--take", str(tmp_path / "nowhere")], 1, "is not a folder"),
           (["--next-unit", "--take", str(tmp_path / "empty")], 1, "holds neither a unit record")]
  for argv, rc, said in cases:
    assert script.main(argv + kw) == rc, argv
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and said in err[0], (argv, err)
  # a record of a unit this queue does not have
  (tmp_path / "odd").mkdir()
  odd = {"unit": "cmnist5-ipc10/s9", "settings": {}, "rows": {}, "timings": {}, "commit": "c",
         "machine": "m", "date": "d", "command": "c"}
  (tmp_path / "odd" / "unit-x-s0.json").write_text(json.dumps(
      dict(odd, digest=paper.record_digest(odd))))
  assert script.main(["--next-unit", "--take", str(tmp_path / "odd")] + kw) == 1
  assert "not one of these --cells, --seeds and --rows" in capfd.readouterr().err
  assert not (tmp_path / "w").exists() and not (tmp_path / "r").exists()


def _bare_checkout(tmp_path):
  """A checkout with only next_unit.sh (a copy) and paper_table.py (a link): its own
  .handover/ and .xla-cache/ stay in tmp_path."""
  root = tmp_path / "checkout"
  (root / "experiments").mkdir(parents=True)
  (root / "experiments" / "next_unit.sh").write_text(
      open(os.path.join(ROOT, "experiments", "next_unit.sh")).read())
  os.symlink(os.path.join(os.path.abspath(ROOT), "experiments", "paper_table.py"),
             root / "experiments" / "paper_table.py")
  return root


def _machine_env(tmp_path, **more):
  """A lent machine's environment for next_unit.sh: this Python first on PATH, the caches in
  tmp_path, JAX's cache folder the script's own ($JAXDD_CACHE/xla)."""
  env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep
             + os.environ.get("PATH", ""), JAXDD_CACHE=str(tmp_path / "cache"), **more)
  env.pop("JAX_COMPILATION_CACHE_DIR", None)
  return env


@pytest.mark.slow
def test_next_unit_times_the_step_and_the_evaluation_on_any_accelerator(tmp_path):
  # a loan's second command (or anyone's GPU): the step's variants, then the evaluation's
  # training with the norm blocks as layers and fused, on random data, within the limit
  out = tmp_path / "out"
  env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep
             + os.environ.get("PATH", ""), NEXT_UNIT_LIMIT_S="3000",
             NEXT_UNIT_STEP_POINTS="split:float32", NEXT_UNIT_STEP_FLAGS="--tiny",
             NEXT_UNIT_EVAL_FLAGS="--tiny")
  script = os.path.join(ROOT, "experiments", "next_unit.sh")
  proc = subprocess.run(["bash", script, "time", str(out), "vanilla"], env=env,
                        capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  assert sorted(os.listdir(out)) == ["eval-times.jsonl", "next-unit.log", "step-times.jsonl"]
  (step,) = [json.loads(x) for x in (out / "step-times.jsonl").read_text().splitlines()]
  assert step["rows"] == ["vanilla"] and step["step_s_median"] > 0
  evals = [json.loads(x) for x in (out / "eval-times.jsonl").read_text().splitlines()]
  assert [e["policy"] for e in evals] == ["accelerator", "accelerator+norm_block=fused"]
  assert all(e["mode"] == "map" and e["train_s"] > 0 for e in evals)
  # OUT must be new or empty; too little time is said, not tried
  proc = subprocess.run(["bash", script, "time", str(out)], env=env, capture_output=True,
                        text=True, timeout=60)
  assert proc.returncode == 2 and "must be a new path or an empty folder" in proc.stderr
  proc = subprocess.run(["bash", script, "time", str(tmp_path / "bad"), "vanilla,fast"],
                        env=env, capture_output=True, text=True, timeout=60)
  assert proc.returncode == 2 and proc.stderr.count("\n") == 1
  assert "ROWS: fast is not a row of the cell" in proc.stderr
  assert not (tmp_path / "bad").exists()
  # the rows it knows (and times by default) are the cell's, as cell_cost.py has them
  import re
  with open(script) as f:
    known = re.search(r'all_rows=" ([a-z_ ]+) "', f.read()).group(1).split()
  assert tuple(known) == load("benchmarks/cell_cost.py").ROWS
  proc = subprocess.run(["bash", script, "time", str(tmp_path / "short")],
                        env=dict(env, NEXT_UNIT_LIMIT_S="70"), capture_output=True,
                        text=True, timeout=60)
  assert proc.returncode == 0
  assert "too few to time the step's variants" in proc.stdout
  assert "too few to time the evaluation" in proc.stdout
  assert os.listdir(tmp_path / "short") == ["next-unit.log"]


def test_next_unit_returns_the_largest_compiled_programs_that_fit(tmp_path):
  # over the size limit, the programs the run compiled come first, then the carried ones,
  # each the largest first, as many as fit; the limit holds
  import tarfile
  root = _bare_checkout(tmp_path)
  rng = random.Random(0)
  (root / ".xla-cache").mkdir()
  with tarfile.open(root / ".xla-cache" / "xla-cache.tar.gz", "w:gz") as tar:
    for name, size in (("jit_big-01-cache", 30_000), ("jit_mid-02-cache", 20_000),
                       ("jit_small-03-cache", 2_000)):
      (tmp_path / name).write_bytes(rng.randbytes(size))  # random: gzip cannot shrink them
      tar.add(tmp_path / name, arcname=name)
  env = _machine_env(tmp_path, NEXT_UNIT_XLA_LIMIT="45000", NEXT_UNIT_PROFILE="0")
  # a bad flag: the run stops at once, having compiled nothing new
  proc = subprocess.run(["bash", str(root / "experiments" / "next_unit.sh"), "run",
                         str(tmp_path / "out"), "--tiny", "--rows", "nosuchrow"], env=env,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode != 0 and "3 compiled programs from .xla-cache/" in proc.stdout
  back = tmp_path / "out" / "xla-cache.tar.gz"
  assert back.stat().st_size <= 45_000
  with tarfile.open(back) as tar:
    names = sorted(os.path.basename(n) for n in tar.getnames() if n.endswith("-cache"))
  # 30,000 + 20,000 random bytes do not fit in 45,000: the largest, then the small one
  assert names == ["jit_big-01-cache", "jit_small-03-cache"], names


def test_next_unit_goes_on_from_a_handover_the_checkout_carries(tmp_path):
  # next_unit.sh adds --resume-from .handover when the checkout holds one, so every loan runs
  # the same command; a handover of another unit is refused in one line, nothing written
  root = _bare_checkout(tmp_path)
  (root / ".handover").mkdir()
  (root / ".handover" / "handover.json").write_text(json.dumps(
      {"unit": "cmnist5-ipc10/s7", "settings": {}, "runs": [], "surrogates": [], "parts": [],
       "legs": []}))
  # compiled programs carried from the machine before go into JAX's cache folder
  import tarfile
  entry = tmp_path / "jit_step-0123-cache"
  entry.write_bytes(b"an executable")
  (root / ".xla-cache").mkdir()
  with tarfile.open(root / ".xla-cache" / "xla-cache.tar.gz", "w:gz") as tar:
    tar.add(entry, arcname=entry.name)
  env = _machine_env(tmp_path)
  proc = subprocess.run(["bash", str(root / "experiments" / "next_unit.sh"), "run",
                         str(tmp_path / "out"), "--tiny", "--workdir", str(tmp_path / "w"),
                         "--results", str(tmp_path / "r")], env=env, capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == 1, proc.stdout + proc.stderr
  assert "going on from the handover in .handover/" in proc.stdout
  assert "hands over the unit cmnist5-ipc10/s7, but the next unit here is cmnist5-ipc10/s0" \
      in proc.stdout  # the log (stdout and stderr together)
  assert not (tmp_path / "w").exists() and not (tmp_path / "r").exists()
  assert "1 compiled programs from .xla-cache/" in proc.stdout
  assert (tmp_path / "cache" / "xla" / entry.name).read_bytes() == b"an executable"
  assert sorted(os.listdir(tmp_path / "out")) == ["next-unit.log", "xla-cache.tar.gz"]
  # a command the machine's time limit killed leaves its files in OUT/unit: take looks there
  killed = tmp_path / "killed"
  (killed / "unit").mkdir(parents=True)
  os.rename(root / ".handover" / "handover.json", killed / "unit" / "handover.json")
  (killed / "next-unit.log").write_text("[paper_table] cmnist5-ipc10\n")
  proc = subprocess.run(["bash", str(root / "experiments" / "next_unit.sh"), "take",
                         str(killed), "--tiny", "--workdir", str(tmp_path / "w"), "--results",
                         str(tmp_path / "r"), "--handover-dir", str(tmp_path / "h")], env=env,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 1, proc.stdout + proc.stderr
  assert f"taking {killed}/unit" in proc.stdout
  assert f"{killed}/unit hands over the unit cmnist5-ipc10/s7" in proc.stderr
  assert not (tmp_path / "h").exists() and not (tmp_path / "r").exists()
  # killed before it left anything: one line that says so
  os.remove(killed / "unit" / "handover.json")
  proc = subprocess.run(["bash", str(root / "experiments" / "next_unit.sh"), "take",
                         str(killed), "--tiny"], env=env, capture_output=True, text=True,
                        timeout=600)
  assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
  assert f"{killed}/unit is empty: the run was stopped before it left a handover" in proc.stderr


def test_paper_table_groups_the_rows_that_share_a_batch_first(tmp_path, capfd):
  # --rows-per-unit 4 on the paper's DM cell: the rows that share the uniform real batch first,
  # the importance-sampled row (a real forward of its own) last, so the first unit holds the
  # paper's two rows and is the cheapest; a record of another grouping is refused, not mixed
  from jaxdd.runs import bundle, paper
  script = load("experiments/paper_table.py")
  assert paper.unit_order(("vanilla", "kde_floor_init_is", "kde", "fairdd")) == (
      "vanilla", "kde", "fairdd", "kde_floor_init_is")
  units = tmp_path / "r" / "units"
  base = ["--preset", "paper", "--next-unit", "--plan", "--rows-per-unit", "4", "--units", "4",
          "--seeds", "0,1,2", "--workdir", str(tmp_path / "w"), "--results", str(tmp_path / "r")]
  assert script.main(base) == 0
  plan = [line for line in capfd.readouterr().out.splitlines() if "plan: unit" in line]
  # the first group of rows for every seed, then the next: the paper's rows get their seeds first
  assert [line.split("plan: unit ")[1].split(":")[0] for line in plan] == [
      "cmnist5-ipc50/s0-rows0", "cmnist5-ipc50/s1-rows0", "cmnist5-ipc50/s2-rows0",
      "cmnist5-ipc50/s0-rows1"]
  assert "rows vanilla, kde, kde_init, fairdd_pseudo; seeds 0" in plan[0]
  assert "rows fairdd_batch, fairdd, oracle, kde_floor_init_is; seeds 0" in plan[3]
  old = ("vanilla", "kde", "kde_init", "kde_floor_init_is")  # rows0 of another grouping
  (units / "cmnist5-ipc50").mkdir(parents=True)
  other = {"unit": "cmnist5-ipc50/s0-rows0", "rows": {n: [] for n in old}, "timings": {},
           "settings": {"preset": "paper", "source": "full", "rows_per_unit": 4}, "commit": "x",
           "machine": "x", "date": "x", "command": "x"}
  (units / "cmnist5-ipc50" / "s0-rows0.json").write_text(json.dumps(
      dict(other, digest=paper.record_digest(other))))
  assert script.main(base) == 1
  err = capfd.readouterr().err
  assert "holds the rows kde, kde_floor_init_is, kde_init, vanilla, but this unit groups " \
      "fairdd_pseudo, kde, kde_init, vanilla" in err and "another --units-dir" in err
  # so is a handover of the other grouping's first unit, before anything is read or written
  (units / "cmnist5-ipc50" / "s0-rows0.json").unlink()
  manifest = {"unit": "cmnist5-ipc50/s0-rows0", "runs": [f"cmnist5-ipc50/{n}/s0" for n in old],
              "settings": {"preset": "paper", "source": "full", "rows_per_unit": 4},
              "surrogates": [], "legs": []}
  bundle.write_handover(str(tmp_path / "h"), manifest, b"runs")
  resume = [a for a in base if a != "--plan"] + ["--resume-from", str(tmp_path / "h")]
  assert script.main(resume) == 1
  assert "holds runs that are not rows of the unit cmnist5-ipc50/s0-rows0 here " \
      "(cmnist5-ipc50/kde_floor_init_is/s0)" in capfd.readouterr().err
  assert not (tmp_path / "w").exists()


@pytest.mark.slow
def test_paper_table_units_of_fewer_rows_make_the_same_table(tmp_path, capfd):
  # --rows-per-unit 1: each seed's rows in units of one row (for a machine where a seed's rows
  # do not fit one command); the cell's table puts the rows of a seed back together
  res = tmp_path / "r"
  base = ["--tiny", "--next-unit", "--quiet", "--results", str(res), "--seeds", "0",
          "--rows-per-unit", "1"]
  _, printed = run("experiments/paper_table.py", base + ["--workdir", str(tmp_path / "w1"),
                                                         "--plan"], capfd)
  assert "plan: unit cmnist5-ipc10/s0-rows0: rows vanilla; seeds 0" in printed
  for w in ("w1", "w2"):
    run("experiments/paper_table.py", base + ["--workdir", str(tmp_path / w)], capfd)
  names = sorted(p.name for p in (res / "units" / "cmnist5-ipc10").glob("*.json"))
  assert names == ["s0-rows0.json", "s0-rows1.json"]
  table = json.loads((res / "cmnist5-ipc10.json").read_text())
  assert [r[:3] for r in table["rows"]] == [
      ["vanilla DM", "no", "0"], ["DM + KDE (the paper's method)", "no", "0"],
      ["best label-free, chosen on validation: DM + KDE (the paper's method)", "no", "0"]]
  assert table["complete"] is True
  script = load("experiments/paper_table.py")
  # the same folder with all rows in one unit is another setting: refused, not mixed
  assert script.main(base[:-2] + ["--workdir", str(tmp_path / "w3")]) == 1
  assert "another --units-dir" in capfd.readouterr().err


def test_paper_table_policy_is_a_layout_not_a_setting_of_the_units(capfd):
  # a policy variant gives the same values up to float rounding: units run under any policy
  # share one units folder; a policy jaxdd cannot resolve is refused in one line
  from jaxdd.runs import paper
  script = load("experiments/paper_table.py")
  args = script._parser().parse_args(["--tiny", "--next-unit", "--rows-per-unit", "2",
                                      "--policy", "cpu+micro_batch=8"])
  plain = script._parser().parse_args(["--tiny", "--next-unit", "--rows-per-unit", "2"])
  q = paper.Queue(args, {"policy": args.policy, "iterations": 2})
  assert paper.unit_settings(q) == paper.unit_settings(paper.Queue(plain, {"iterations": 2}))
  assert script.main(["--tiny", "--next-unit", "--plan", "--policy", "cpu+speed=1"]) == 2
  err = capfd.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "--policy: not a Policy field to change: ['speed']" in err[0]


def test_paper_table_evaluates_under_the_runs_policy(monkeypatch, tmp_path):
  # --policy lays out the evaluation too (the same values up to float rounding, as for the
  # distillation): both evaluation paths are entered under the runs' policy
  import types

  import numpy as np

  from jaxdd import evaluate, policy
  from jaxdd.runs import paper
  from jaxdd.synset import SynSet
  script = load("experiments/paper_table.py")
  args = script._parser().parse_args(["--tiny", "--policy", "cpu+micro_batch=8",
                                      "--workdir", str(tmp_path)])
  q = paper.Queue(args, {"policy": args.policy, "iterations": 2})
  cell = next(c for c in paper.CELLS if c.name == "cmnist5-ipc10")
  config = paper.row_config(q.base(cell), cell, "vanilla", 0)
  seen = []

  class Stop(Exception):
    pass

  def stub(*a, **k):
    seen.append(policy.current().name)
    raise Stop
  data = types.SimpleNamespace(num_classes=10, valid=None, test=None, batch=lambda split: None)
  monkeypatch.setattr(q, "run_data", lambda c: data)
  monkeypatch.setattr(evaluate, "evaluate_synsets", stub)
  monkeypatch.setattr(evaluate, "evaluate_synset", stub)
  syn = SynSet(np.zeros((2, 4, 4, 3), np.float32), np.array([0, 1]))
  w = str(tmp_path / "run")
  with pytest.raises(Stop):
    q.evaluate_many([(config, w, syn, True)])
  with pytest.raises(Stop):
    q.evaluate(config, w, syn, True)
  assert seen == ["cpu+micro_batch=8"] * 2 and policy.current() == policy.resolve("auto")


def test_paper_table_never_replaces_a_table_another_source_built(tmp_path, capfd):
  # a cell's table is rewritten only by its own source: units of another folder or of other
  # settings, and the whole queue, are refused in one line before any work
  script = load("experiments/paper_table.py")
  res = tmp_path / "r"
  res.mkdir()
  table = res / "cmnist5-ipc10.json"
  base = ["--tiny", "--next-unit", "--plan", "--results", str(res)]
  units = str(res / "units")
  # a table from before tables named their units' settings: its notes name the folder
  table.write_text(json.dumps({"rows": [], "notes": [
      f"Built from the unit records in {units} (1 units); each unit's commit and machine "
      "are given."]}))
  assert script.main(base) == 0  # the same folder: its units may rewrite it
  capfd.readouterr()
  assert script.main(base + ["--units-dir", str(tmp_path / "other")]) == 1
  err = capfd.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "give them another --results" in err[0]
  # a table that names its settings: other settings in the same folder are refused too
  settings = {"preset": "smoke", "iterations": 2}  # what --tiny sets
  table.write_text(json.dumps({"rows": [], "units": {"dir": units, "settings": settings}}))
  assert script.main(base) == 0
  capfd.readouterr()
  assert script.main(base + ["--compute-dtype", "bfloat16"]) == 1
  assert "compute_dtype" in capfd.readouterr().err
  # the whole queue does not replace the units' table, nor the units the queue's
  before = table.read_text()
  assert script.main(["--tiny", "--quiet", "--results", str(res), "--workdir",
                      str(tmp_path / "w")]) == 1
  assert "give the queue another --results" in capfd.readouterr().err
  assert table.read_text() == before
  table.write_text(json.dumps({"rows": [], "notes": ["a whole-queue table"]}))
  assert script.main(base) == 1
  assert "the whole queue's table" in capfd.readouterr().err
  assert not (tmp_path / "w").exists()


def test_paper_table_choice_reads_a_candidates_test_split_only_if_chosen(monkeypatch):
  # The cell logic on stub runs: validation scores decide (kde_init beats the paper's row on
  # every seed by far more than the noise of 10,000 samples); the chosen candidate (not a
  # reported row) is evaluated on test afterwards, the one not chosen never is.
  from jaxdd.runs import paper
  from jaxdd.runs.paper import cell_runs, table
  script = load("experiments/paper_table.py")
  calls = []

  def stub_row(q, cell, name, test):
    calls.append((name, test))
    valid = {"kde": [0.5, 0.5], "kde_init": [0.9, 0.9]}.get(name, [0.1, 0.1])
    rec = lambda s, v: {"seed": s, "distill_s": 1.0, "eval_s": 1.0, "bias_start": 0.9,  # noqa: E731
                        "bias_end": 0.5, "valid": {"conflicting": [v] * 2,
                                                   "num_conflicting": 10_000}}
    out = [rec(s, v) for s, v in zip((0, 1), valid)]
    if test:
      for r in out:
        r["test"] = {m: [0.5, 0.5] for m in ("overall", "aligned", "conflicting",
                                             "worst_group", "deo_m", "deo_a")}
    return out
  monkeypatch.setattr(cell_runs, "run_row", stub_row)
  monkeypatch.setattr(cell_runs, "cell_program", lambda q, cell, names: calls.append(tuple(names)))
  args = script._parser().parse_args(["--workdir", "w", "--results", "r", "--seeds", "0,1",
                                      "--rows", "vanilla,kde,kde_init,kde_floor_init_is,ceiling"])
  args.argv = []
  q = paper.Queue(args, {})
  data = paper.run_cell(q, next(c for c in paper.CELLS if c.name == "cmnist5-ipc10"))
  # the DM rows but the ceiling (other data) in one program first, then row by row
  assert calls == [("vanilla", "kde", "kde_init", "kde_floor_init_is"),
                   ("vanilla", True), ("kde", True), ("kde_init", False),
                   ("kde_floor_init_is", False), ("ceiling", True), ("kde_init", True)]
  assert data["rows"][2][0] == "best label-free, chosen on validation: DM + KDE, init ∝ weight"
  assert data["rows"][2][3] == "90.0 ± 0.0" and data["choice"]["chosen"] == "kde_init"
  # a row with one seed has no spread over seeds to give: its value alone, not "± 0.0"
  assert table._pm([0.5]) == "50.0" and table._pm([0.5, None]) == "50.0"


@covers("experiments/score_synsets.py")
@pytest.mark.slow
def test_score_synsets(tmp_path, capfd):
  out = tmp_path / "scores"
  _, printed = run("experiments/score_synsets.py", ["--tiny", "--out", str(out)], capfd)
  names = sorted(p.name for p in out.glob("*-net*.json"))
  assert names == ["kde-net0.json", "kde-net1.json", "vanilla-net0.json", "vanilla-net1.json"]
  table = json.loads((out / "table.json").read_text())
  assert [r[:2] for r in table["rows"]] == [["vanilla", "2"], ["kde", "2"]]
  for key in ("date", "commit", "machine", "command"):
    assert key in table
  # a rerun scores nothing again: every network's record is there
  first = (out / "kde-net1.json").read_text()
  _, printed = run("experiments/score_synsets.py",
                   ["--runs", str(out / "tiny-runs" / "kde" / "s0"), "--networks", "1",
                    "--out", str(out)], capfd)
  assert "network" not in printed and (out / "kde-net1.json").read_text() == first
  script = load("experiments/score_synsets.py")
  assert script.main(["--runs", str(tmp_path), "--out", str(out)]) == 2
  assert "has no config.json" in capfd.readouterr().err


@covers("experiments/weight_quality.py")
def test_weight_quality(tmp_path, capfd):
  out_file = tmp_path / "weights.md"
  _, out = run("experiments/weight_quality.py", ["--out", str(out_file), "--tiny"], capfd)
  rows = [l for l in out_file.read_text().splitlines() if l.startswith("| ")]
  assert len(rows) == 1 + 2  # the header; variance 0.1 and 1 x NN², at T = 1
  assert rows[1].startswith("| 0.1 | 1 |") and "x NN²" in rows[2]


@covers("experiments/dbscan_radius.py")
@pytest.mark.slow  # ~1 min of CPU: the smoke data's surrogate, batches and whole classes
def test_dbscan_radius(tmp_path, capfd):
  out_file = tmp_path / "radius.json"
  run("experiments/dbscan_radius.py", ["--out", str(out_file), "--tiny"], capfd)
  rec = json.loads(out_file.read_text())
  assert all(rec[k] for k in ("date", "commit", "machine", "command"))
  assert len(rec["columns"]) == 3 + 2 * 3 + 1  # batches 16 and 32, the whole class
  rows = {r[1]: r for r in rec["rows"]}
  assert len(rows) == 9 and all(r[0] == "cmnist 0.05" for r in rec["rows"])
  uniform = rows["uniform weights (vanilla DM)"]
  assert uniform[4::2][:3] == ["0.50 ± 0.00"] * 3  # uniform weights rank nothing
  assert rows["true bias groups (FairDD with labels)"][7] == "90.0 ± 0.0"  # 9 of 10 colours
  batch = [r for r in rec["rows"] if r[1].startswith("DBSCAN of each batch")]
  assert all(r[7] == "–" for r in batch)  # no whole-class column for in-batch groups


@covers("experiments/biased_weights.py")
@pytest.mark.slow
def test_biased_weights(tmp_path, capfd):
  out_file = tmp_path / "biased.json"
  rows, _ = run("experiments/biased_weights.py", ["--out", str(out_file), "--tiny"], capfd)
  assert [r["row"] for r in rows] == ["gce", "jtt", "kde", "kde_biased"]
  assert all(0.0 <= r["auroc"] <= 1.0 and abs(r["uniform"] - 0.05) < 0.01 for r in rows)
  rec = json.loads(out_file.read_text())
  assert [r[-1] for r in rec["rows"]] == ["2", "2", "1", "2"]  # classifiers: seeds 0 and 1
  assert all(rec[k] for k in ("date", "commit", "machine", "command"))
  assert " ± " in rec["rows"][0][2] and " ± " not in rec["rows"][2][2]
  # the validation table the classifier's settings were chosen on
  rows, _ = run("experiments/biased_weights.py", ["--select", "--out", str(out_file), "--tiny"],
                capfd)
  assert [r["change"] for r in rows] == [{}, {"lr": 0.005}]
  rec = json.loads(out_file.read_text())
  assert [r[1] for r in rec["rows"]] == ["the defaults", "lr 0.005"]
  assert all(0.0 <= float(r[2]) <= 1.0 for r in rec["rows"])


@covers("experiments/backdoor.py")
@pytest.mark.slow
@pytest.mark.heavy
def test_backdoor(tmp_path, capfd):
  run("experiments/backdoor.py", ["--workdir", str(tmp_path), "--tiny", "--quiet"], capfd)
  results = json.loads((tmp_path / "table.json").read_text())
  assert [(r["dataset"], r["seed"], r["variant"]) for r in results] == [
      ("cmnist", 0, v) for v in ("clean", "badnets", "posthoc")]
  assert all(isinstance(r["audit"]["verdict"], str) and r["asr"] for r in results)
  assert all((tmp_path / f).exists() for f in ("table.md", "cells.md", "rates.md"))


@covers("experiments/seed_table.py")
def test_seed_table(tmp_path, capfd):
  """No sizes to shrink: it tabulates finished runs, two small ones here."""
  dirs = []
  for seed, overall in ((0, 0.3), (1, 0.5)):
    d = tmp_path / f"s{seed}"
    d.mkdir()
    row = {"mean": {"overall": overall, "aligned": 0.9, "conflicting": 0.2, "worst_group": 0.1},
           "std": {m: 0.0 for m in ("overall", "aligned", "conflicting", "worst_group")}}
    (d / "comparison.json").write_text(json.dumps({"dm": row, "dm+kde": row}))
    dirs.append(str(d))
  _, out = run("experiments/seed_table.py", dirs, capfd)
  assert "| dm | 40.0 ± 14.1 |" in out and "paired difference dm+kde − dm" in out


@covers("benchmarks/own_decode.py")
def test_own_decode(tmp_path, capfd):
  out = tmp_path / "decode.json"
  run("benchmarks/own_decode.py", ["--tiny", "--out", str(out)], capfd)
  table = json.loads(out.read_text())
  assert [r[0] for r in table["rows"]] == ["decode", "cached"]
  assert all(float(r[2]) >= 0 and float(r[4]) >= 0 for r in table["rows"])
  assert "200 PNG files" in table["notes"][0]


@covers("experiments/own_data_equivalence.py")
@pytest.mark.slow
def test_own_data_equivalence(tmp_path, capfd):
  out = tmp_path / "eq.json"
  run("experiments/own_data_equivalence.py", ["--tiny", "--out", str(out)], capfd)
  rows = json.loads(out.read_text())["rows"]
  assert [r[1] for r in rows] == ["built-in", "npz", "csv"]
  assert rows[1][3] == "yes" and rows[1][2] == rows[0][2]  # npz: the built-in SynSet exactly
  assert rows[2][4] == "yes"                                 # csv: the first 8-bit layout itself


@covers("benchmarks/tesla_error.py")
@pytest.mark.slow
def test_tesla_error(tmp_path, capfd):
  out = tmp_path / "tesla.json"
  rows, _ = run("benchmarks/tesla_error.py", ["--tiny", "--out", str(out)], capfd)
  by_steps = {r["syn_steps"]: r for r in rows}
  assert by_steps[1]["rel_error"] < 1e-4  # TESLA is exact at one student step
  assert by_steps[2]["rel_error"] > by_steps[1]["rel_error"]
  assert [r[0] for r in json.loads(out.read_text())["rows"]] == ["1", "2"]


def _unit_record(rows: dict, *, settings=None, unit="cmnist5-ipc50/s0", machine="m",
                 commit="0.1.0+gabcdef0123", test=True) -> dict:
  """A unit record as experiments/paper_table.py writes it: ``rows`` maps a row to
  {seed: (test overall, test conflicting, valid conflicting, sha256)} per-network lists
  (``test=False``: a candidate's record, scored on validation only)."""
  def seed_record(seed, overall, conflicting, valid, sha):
    n = len(overall)
    out = {"seed": seed, "distill_s": 1.0, "eval_s": 1.0, "bias_start": 0.9, "bias_end": 0.5,
           "synset_sha256": sha, "valid": {"conflicting": valid, "num_conflicting": 10}}
    if test:
      out["test"] = {"overall": overall, "aligned": [1.0] * n, "conflicting": conflicting,
                     "worst_group": [0.0] * n, "deo_m": [1.0] * n, "deo_a": [0.5] * n}
    return out
  rec = {"unit": unit, "settings": settings or {"preset": "paper"},
         "rows": {row: [seed_record(s, *v) for s, v in seeds.items()]
                  for row, seeds in rows.items()},
         "timings": {"distill_s": 1.0, "eval_s": 1.0, "total_s": 2.0}, "commit": commit,
         "machine": machine, "date": "2026-11-28", "command": "python experiments/..."}
  from jaxdd.runs import paper
  return dict(rec, digest=paper.record_digest(rec))


def _write_units(folder, *records) -> str:
  for rec in records:
    path = folder / "units" / (rec["unit"] + ".json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rec))
  return str(folder)


@pytest.mark.slow
@pytest.mark.parametrize("sig,rc,word", [(signal.SIGTERM, 143, "terminated (SIGTERM)"),
                                         (signal.SIGINT, 130, "interrupted")])
def test_paper_table_stops_on_a_signal_in_one_line_and_releases_its_runs(tmp_path, sig, rc,
                                                                          word):
  # a unit distilling (many steps, so that the signal comes in the middle of them)
  work = tmp_path / "w"
  proc = subprocess.Popen(
      [sys.executable, os.path.join(ROOT, "experiments", "paper_table.py"), "--next-unit",
       "--tiny", "--quiet", "--iterations", "100000", "--seeds", "0", "--workdir", str(work),
       "--results", str(tmp_path / "r")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
  deadline = time.monotonic() + 300
  while not list(work.glob("cmnist5-ipc10/*/s0/checkpoints")) and time.monotonic() < deadline:
    assert proc.poll() is None, proc.communicate()
    time.sleep(0.5)
  time.sleep(2)
  proc.send_signal(sig)
  t0 = time.monotonic()
  out, err = proc.communicate(timeout=120)
  assert proc.returncode == rc, err
  assert time.monotonic() - t0 < 60
  lines = [line for line in err.splitlines() if line.startswith("paper_table")]
  assert len(lines) == 1 and word in lines[0] and "left no record" in lines[0], err
  assert not list(work.rglob(".lock"))  # every run of the unit released
  assert not (tmp_path / "r" / "units").exists()


@pytest.mark.slow
@pytest.mark.gate
def test_paper_table_runs_the_cpu_paper_preset_as_units(tmp_path, capfd):
  # the calibrated CPU preset through the same queue and records, at the smoke preset's sizes
  from jaxdd import presets
  res, work = tmp_path / "r", tmp_path / "w"
  # two rows keep the gate short; the queue and records are those of every row
  argv = ["--preset", "cpu-paper", "--tiny", "--next-unit", "--quiet", "--seeds", "0",
          "--rows", "vanilla,kde", "--results", str(res), "--workdir", str(work)]
  _, out = run("experiments/paper_table.py", argv, capfd)
  assert "unit cmnist5-ipc10/s0 finished" in out
  rec = json.loads((res / "units" / "cmnist5-ipc10" / "s0.json").read_text())
  assert rec["settings"]["preset"] == "cpu-paper" and rec["settings"]["tiny"] is True
  with open(work / "cmnist5-ipc10" / "kde" / "s0" / "config.json") as f:
    config = json.load(f)["config"]
  preset, smoke = presets.RUN["cpu-paper"], presets.RUN["smoke"]
  assert config["preset"] == "cpu-paper" and config["lr_img"] == preset["lr_img"]
  assert (config["width"], config["eval_model"]) == (smoke["width"], smoke["eval_model"])
  assert config["source"] is None and config["iterations"] == 2
  # its units never mix with the preset's own
  assert load("experiments/paper_table.py").main(
      ["--preset", "cpu-paper", "--next-unit", "--plan", "--results", str(res)]) == 1
  assert "give these settings another --units-dir" in capfd.readouterr().err


def test_paper_table_queues_on_one_units_folder_take_different_units(tmp_path, capfd):
  import socket
  script = load("experiments/paper_table.py")
  res = tmp_path / "r"
  base = ["--tiny", "--next-unit", "--plan", "--results", str(res), "--workdir",
          str(tmp_path / "w")]
  claim = res / "units" / ".claims" / "cmnist5-ipc10" / "s0" / ".lock"
  claim.parent.mkdir(parents=True)
  other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
  try:  # another queue, alive on this host, runs seed 0: this one plans seed 1
    claim.write_text(json.dumps({"pid": other.pid, "host": socket.gethostname()}))
    assert script.main(base) == 0
    out = capfd.readouterr().out
    assert f"unit cmnist5-ipc10/s0 is claimed by process {other.pid}" in out
    assert "plan: unit cmnist5-ipc10/s1:" in out
  finally:
    other.kill()
    other.wait()
  # the claim of a queue that has exited holds nothing
  assert script.main(base) == 0
  assert "plan: unit cmnist5-ipc10/s0:" in capfd.readouterr().out


def test_paper_table_refuses_a_unit_record_copied_edited_or_given_twice(tmp_path, capfd):
  from jaxdd.runs import paper
  script = load("experiments/paper_table.py")
  res = tmp_path / "r"
  settings = {"preset": "smoke", "iterations": 2}
  s0 = _unit_record({r: {0: ([0.159, 0.2], [0.1, 0.1], [0.3, 0.3], "a")} for r in ("vanilla",
                                                                                  "kde")},
                    settings=settings, unit="cmnist5-ipc10/s0")
  folder = res / "units" / "cmnist5-ipc10"
  folder.mkdir(parents=True)
  (folder / "s0.json").write_text(json.dumps(s0))
  base = ["--tiny", "--next-unit", "--plan", "--results", str(res), "--workdir",
          str(tmp_path / "w")]
  assert script.main(base) == 0
  assert "plan: unit cmnist5-ipc10/s1:" in capfd.readouterr().out  # s0 is finished
  # a copy under seed 1's name: refused, not counted as seed 1
  shutil.copy(folder / "s0.json", folder / "s1.json")
  assert script.main(base) == 1
  err = capfd.readouterr().err
  assert err.count("\n") == 1 and "is the record of the unit cmnist5-ipc10/s0, not of " \
      "cmnist5-ipc10/s1" in err
  # renamed inside as well, with its digest made again: its seeds still say 0
  renamed = dict(s0, unit="cmnist5-ipc10/s1")
  (folder / "s1.json").write_text(json.dumps(dict(renamed, digest=paper.record_digest(renamed))))
  assert script.main(base) == 1
  assert "gives the row vanilla the seeds 0, but the unit cmnist5-ipc10/s1 is seed(s) 1" in \
      capfd.readouterr().err
  (folder / "s1.json").unlink()
  # a number edited by hand (15.9 % made 55.9 %)
  edited = json.loads(json.dumps(s0))
  edited["rows"]["kde"][0]["test"]["overall"][0] = 0.559
  (folder / "s0.json").write_text(json.dumps(edited))
  assert script.main(base) == 1
  err = capfd.readouterr().err
  assert err.count("\n") == 1 and "s0.json does not match the digest it carries" in err
  assert not (tmp_path / "w").exists()
  # a truncated record is said once (the plan reads it several times) and its unit runs again
  (folder / "s0.json").write_text(json.dumps(s0)[:50])
  assert load("experiments/paper_table.py").main(base) == 0
  out, err = capfd.readouterr()
  assert err.count("s0.json") == 1 and "plan: unit cmnist5-ipc10/s0:" in out


@covers("experiments/unit_pairs.py")
def test_unit_pairs_by_hand(capfd, tmp_path):
  f32 = _write_units(tmp_path / "f32", _unit_record(
      {"vanilla": {0: ([0.5, 0.7], [0.4, 0.6], [0.3, 0.5], "a")},
       "kde": {0: ([0.9, 0.9], [0.8, 0.8], [0.7, 0.9], "b")}}),
      _unit_record({"kde": {1: ([0.8, 0.8], [0.7, 0.7], [0.6, 0.6], "c")}},
                   unit="cmnist5-ipc50/s1"))
  bf16 = _write_units(tmp_path / "bf16", _unit_record(
      {"vanilla": {0: ([0.6, 0.6], [0.4, 0.6], [0.3, 0.5], "a")},
       "kde": {0: ([0.92, 0.94], [0.8, 0.8], [0.7, 0.9], "d"),
               1: ([0.8, 0.78], [0.7, 0.7], [0.6, 0.6], "e")}},
      settings={"preset": "paper", "compute_dtype": "bfloat16"}, machine="gpu"))
  data = tmp_path / "out" / "pairs.json"
  _, out = run("experiments/unit_pairs.py", [f32, bf16, "--data", str(data)], capfd)
  lines = {ln.split(" | ")[1]: ln.split(" | ") for ln in out.splitlines() if "cmnist5" in ln}
  # vanilla, one seed: differences +0.1 and -0.1 -> mean 0, population std 10 points;
  # both sides 60.0 +- 10.0 and 60.0 +- 0.0
  van = lines["vanilla DM"]
  assert van[2:7] == ["0", "2", "60.0 ± 10.0", "60.0 ± 0.0", "+0.0 ± 10.0"]
  assert van[8:] == ["+0.0 ± 0.0", "+0.0 ± 0.0", "+0.0 ± 0.0 |"]
  # kde, seeds 0 and 1: per-seed mean differences +0.03 and -0.01 -> +1.0 +- 2.8 points
  # (sample std of 3 and -1: 2.83); the sides are the seeds' means 90.0/80.0 and 93.0/79.0
  kde = lines["DM + KDE (the paper's method)"]
  assert kde[2:7] == ["0, 1", "2", "85.0 ± 7.1", "86.0 ± 9.9", "+1.0 ± 2.8"]
  rec = json.loads(data.read_text())
  assert rec["rows"][0][:2] == ["cmnist5-ipc50", "vanilla DM"]
  assert rec["commit"] == "float32: abcdef0; bfloat16: abcdef0"
  assert rec["machine"] == "float32: m; bfloat16: gpu"
  assert any("Identical SynSets" in n and "vanilla" in n for n in rec["notes"])
  assert rec["command"] == [f"python experiments/unit_pairs.py {f32} {bf16} --data {data}"]


def test_unit_pairs_takes_a_chosen_candidate_s_test_split(capfd, tmp_path):
  # a label-free candidate is in its seed's unit without a test split and, once chosen, in
  # the cell's chosen-<row> unit with it (read first: its name sorts first)
  folders = []
  for name, overall in (("a", [0.5, 0.5]), ("b", [0.7, 0.5])):
    folders.append(_write_units(
        tmp_path / name,
        _unit_record({"kde_init": {0: (overall, [0.4, 0.4], [0.3, 0.3], name)}}, test=False),
        _unit_record({"kde_init": {0: (overall, [0.4, 0.4], [0.3, 0.3], name)}},
                     unit="cmnist5-ipc50/chosen-kde_init")))
  _, out = run("experiments/unit_pairs.py", folders, capfd)
  (line,) = [ln.split(" | ") for ln in out.splitlines() if "init ∝ weight" in ln]
  assert line[4:7] == ["50.0 ± 0.0", "60.0 ± 10.0", "+10.0 ± 10.0"]


def test_unit_pairs_refusals(capfd, tmp_path):
  script = load("experiments/unit_pairs.py")
  a = _write_units(tmp_path / "a", _unit_record({"vanilla": {0: ([0.5], [0.4], [0.3], "a")}}))
  other = _write_units(tmp_path / "b", _unit_record(
      {"vanilla": {0: ([0.5], [0.4], [0.3], "a")}}, settings={"preset": "proxy"}))
  more = _write_units(tmp_path / "c", _unit_record(
      {"vanilla": {0: ([0.5, 0.6], [0.4, 0.4], [0.3, 0.3], "a")}}))
  none = _write_units(tmp_path / "d", _unit_record(
      {"vanilla": {1: ([0.5], [0.4], [0.3], "a")}}, unit="cmnist5-ipc50/s1"))
  (tmp_path / "empty").mkdir()
  data = tmp_path / "pairs.json"
  for second, says in ((other, "differ in preset: 'paper' against 'proxy'"),
                       (more, "1 networks in the first folder, 2 in the second"),
                       (none, "share no (cell, row, seed)"),
                       (str(tmp_path / "empty"), "no unit records"),
                       (str(tmp_path / "nowhere"), "no such folder")):
    assert script.main([a, second, "--data", str(data)]) == 2
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and says in err, err
  assert not data.exists()
  (tmp_path / "a" / "units" / "cmnist5-ipc50" / "s0.json").write_text("{")
  assert script.main([a, more]) == 2
  err = capfd.readouterr().err
  assert err.count("\n") == 1 and "is not valid JSON" in err
  with pytest.raises(SystemExit):
    script.main([a, more, "--labels", "one"])
  assert "--labels takes two names" in capfd.readouterr().err
