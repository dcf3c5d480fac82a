"""Test configuration: 8 simulated CPU devices, no network, small caches, quick compiles.

XLA_FLAGS must be set before jax is imported anywhere, which is why this sits at
the top of conftest (XLA reads it once, when the CPU backend starts). Flags the
caller already set (e.g. ``--xla_cpu_max_isa=AVX2``, which CI uses to run the
numeric tests on a second instruction set) are kept; the device count is added.

``JAXDD_TOLERANCE_AUDIT=<file>`` records, for every ``np.testing.assert_allclose``
call, how much of its tolerance the comparison used (``max |got - want| / (atol +
rtol |want|)``, so 1.0 fails) as ``path:line ratio`` lines: the comparisons near 1
are the ones another CPU's float rounding could break.
"""
import os

_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
  _flags = (_flags + " --xla_force_host_platform_device_count=8").strip()
# Tests run tiny programs, so their time is mostly XLA compiling them, and most of that is
# LLVM's optimisation of the generated CPU code. Level 0 keeps XLA's own (HLO) passes, fusions
# included, and only skips LLVM's, so the programs compute the same thing with other
# instruction choices: the same class of difference as another CPU's instruction set, which
# every float tolerance here must absorb anyway. Measured on a 2-core CPU: the fast suite's
# wall time fell by 27 % (426 to 310 s). JAXDD_TEST_XLA_OPT=default keeps XLA's default: CI runs
# the numeric tests once more that way under AVX2, and the full run's slow end-to-end runs
# (they spend their time computing, so level 0 does not make them faster), so the default code
# generation is tested too; the gate's slow runs take about as long either way and run with
# the fast suite, and the result digests always distil under XLA's default, in a process of
# their own.
if (os.environ.get("JAXDD_TEST_XLA_OPT", "0") != "default"
    and "xla_backend_optimization_level" not in _flags):
  _flags += " --xla_backend_optimization_level=0"
os.environ["XLA_FLAGS"] = _flags
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Never let TFDS reach the network in tests.
os.environ.setdefault("TFDS_DISABLE_DOWNLOAD", "1")
# CLI tests must not point this process's XLA compilation cache at a test folder.
os.environ.setdefault("JAXDD_COMPILE_CACHE", "0")
# Instead, one persistent XLA compilation cache for the whole test run, in a fresh temporary
# folder: the pytest process creates it before the xdist workers start, and the workers and
# the CLI subprocesses of the end-to-end tests inherit it. Many tests compile the same
# smoke-preset programs (surrogate, distillation step, evaluation), and compiling is most of
# a short run. Programs are keyed by their HLO, the XLA flags and the jax version, so a hit
# is the program a miss would compile. JAXDD_TEST_XLA_CACHE=0 turns it off.
_OWN_XLA_CACHE = None
if ("JAX_COMPILATION_CACHE_DIR" not in os.environ
    and os.environ.get("JAXDD_TEST_XLA_CACHE", "1").lower() not in ("0", "false", "no", "off")):
  import tempfile
  _OWN_XLA_CACHE = tempfile.mkdtemp(prefix="jaxdd-test-xla-")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _OWN_XLA_CACHE
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"

import jax  # noqa: E402
import pytest  # noqa: E402


def _audit_tolerances(path: str) -> None:
  import inspect

  import numpy as np
  original = np.testing.assert_allclose

  def audited(actual, desired, rtol=1e-7, atol=0, *args, **kwargs):
    try:
      a = np.asarray(actual, np.float64)
      d = np.asarray(desired, np.float64)
      a, d = np.broadcast_arrays(a, d)
      finite = np.isfinite(a) & np.isfinite(d)
      used = np.abs(a - d)[finite] / (atol + rtol * np.abs(d)[finite] + 1e-300)
      ratio = float(used.max()) if used.size else 0.0
      frame = inspect.stack()[1]
      where = f"{os.path.relpath(frame.filename)}:{frame.lineno}"
      with open(path, "a") as f:
        f.write(f"{where} {ratio:.4g} rtol={rtol:g} atol={atol:g}\n")
    except Exception:  # noqa: BLE001  (the audit never changes a test's outcome)
      pass
    return original(actual, desired, rtol, atol, *args, **kwargs)

  np.testing.assert_allclose = audited


if os.environ.get("JAXDD_TOLERANCE_AUDIT"):
  _audit_tolerances(os.environ["JAXDD_TOLERANCE_AUDIT"])


@pytest.fixture(autouse=True)
def _jaxdd_cache(tmp_path, monkeypatch):
  """Every test gets its own empty dataset/surrogate cache directory."""
  monkeypatch.setenv("JAXDD_CACHE", str(tmp_path / "cache"))
  yield


@pytest.fixture(autouse=True)
def _jaxdd_logging():
  """Puts jaxdd's global logging state back after every test: a script's ``main`` called in
  the test process (``--quiet``) sets it for the process, as its command line would."""
  from jaxdd import progress
  was = (progress.is_quiet(), progress.logger.level, progress.logger.propagate,
         list(progress.logger.handlers))
  yield
  progress.set_quiet(was[0])
  progress.logger.setLevel(was[1])
  progress.logger.propagate = was[2]
  progress.logger.handlers[:] = was[3]


@pytest.fixture
def getkey():
  """Hands out fresh typed keys: fold_in(key(seed), counter)."""
  seed = 0
  base = jax.random.key(seed)
  counter = [0]

  def next_key():
    counter[0] += 1
    return jax.random.fold_in(base, counter[0])

  return next_key


@pytest.fixture
def bffhq_folder(tmp_path):
  """A 6-image BFFHQ folder (DFA layout, 12x12 PNGs named <i>_<target>_<bias>) at tmp_path/bffhq."""
  import numpy as np
  from PIL import Image
  root = tmp_path / "bffhq"
  rng = np.random.default_rng(0)
  specs = [("0.5pct/align", 0, 0), ("0.5pct/align", 1, 1), ("0.5pct/conflict", 0, 1),
           ("valid", 1, 0), ("test", 0, 1), ("test", 1, 1)]
  for i, (d, t, b) in enumerate(specs):
    (root / d).mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(
        root / d / f"{i:03d}_{t}_{b}.png")
  return root


@pytest.fixture
def run_one_trace():
  """``run(step, state, data, n) -> (state, losses)``: ``n`` steps of a raw (unjitted) step
  under jit, asserting that it is traced once, and the ``loss`` of each step."""
  import chex
  import numpy as np

  def run(step, state, data, n):
    chex.clear_trace_counter()  # another test may have traced the same function
    jitted = jax.jit(chex.assert_max_traces(step, n=1))
    losses = []
    for _ in range(n):
      state, m = jitted(state, data)
      losses.append(float(m["loss"]))
    assert np.isfinite(losses).all() and int(state.step) == n
    return state, losses
  return run


def pytest_unconfigure(config):
  """Removes the test run's compilation cache (only the process that created it)."""
  if _OWN_XLA_CACHE is not None and not os.environ.get("PYTEST_XDIST_WORKER"):
    import shutil
    shutil.rmtree(_OWN_XLA_CACHE, ignore_errors=True)


FULL_RUN_ONLY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "full_run_only.txt")


def full_run_only() -> dict[str, str]:
  """The tests of tests/full_run_only.txt (node id -> its comment): fast-suite tests that
  take the longest, marked slow here so that they run in ``bash .ci/run --full`` and leave
  the 15-minute gate."""
  out = {}
  with open(FULL_RUN_ONLY) as f:
    for line in f:
      node, _, why = line.partition("#")
      if node.strip():
        out[node.strip()] = why.strip()
  return out


@pytest.hookimpl(tryfirst=True)  # before -m deselects by the markers
def pytest_collection_modifyitems(config, items):
  """Marks the tests of tests/full_run_only.txt slow. ``JAXDD_TEST_MARKERS=<file>``: writes
  every collected test's node id and marker names as JSON (tests/test_ci.py checks the CI
  gate and the full run against them)."""
  listed = full_run_only()
  for item in items:
    if item.nodeid in listed:
      item.add_marker(pytest.mark.slow)
  # The gate's slow runs (a minute or more each) first, the longest, the result digests, at
  # the very front: the gate runs them in one pytest run with the fast suite, and xdist hands
  # tests out in this order, so the short tests that follow fill the other worker meanwhile
  # instead of one long run ending alone. A stable sort: every other test keeps its place.
  items.sort(key=lambda item: (item.get_closest_marker("gate") is None,
                               "test_result_digests" not in item.nodeid))
  path = os.environ.get("JAXDD_TEST_MARKERS")
  if path:
    import json
    with open(path, "w") as f:
      json.dump({item.nodeid: sorted({m.name for m in item.iter_markers()}) for item in items}, f)
