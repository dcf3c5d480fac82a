"""The numeric tests hold on a CPU without AVX-512.

XLA picks the CPU's widest vector instructions, so a float comparison whose tolerance was
tuned on an AVX-512 machine can fail on a user's AVX2 CPU (other reduction orders, other fused
multiply-adds). This test runs the numeric test files once more in a fresh process with XLA's
code generation capped at AVX2 and its default optimisation (the test runs otherwise compile
with LLVM's optimisation off, ``tests/conftest.py``), so such a tolerance fails here. It is one
of the gate's slow runs, so xdist's other worker runs the short tests meanwhile.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: The test files whose float comparisons depend on the instruction set.
NUMERIC_FILES = ("tests/test_kde.py", "tests/test_matching.py", "tests/test_augment.py",
                 "tests/test_models.py")


@pytest.mark.slow
@pytest.mark.gate  # in the 15-minute gate too
def test_the_numeric_tests_pass_with_code_generation_capped_at_avx2():
  env = {k: v for k, v in os.environ.items()
         if not k.startswith(("PYTEST_", "JAXDD_TEST_"))}
  # conftest adds the device count; JAXDD_TEST_XLA_OPT=default keeps XLA's default optimisation
  env.update(XLA_FLAGS="--xla_cpu_max_isa=AVX2", JAXDD_TEST_XLA_OPT="default")
  proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:xdist", "-p",
                         "no:cacheprovider", *NUMERIC_FILES], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=1800)
  assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
  assert " passed" in proc.stdout.splitlines()[-1]
