"""Digests of what the ``smoke`` preset produces with each method, to prove a change keeps results.

Run as a script it distils the ``smoke`` preset through the command line (``jaxdd.cli.main``) with
DM, DM + KDE, DSA, MTT and CFM, and prints one JSON object: for each run, the sha256 of its
SynSet's arrays, of its evaluation's per-network accuracies and the run's configuration digest
(which names its run directory). ``tests/test_result_digests.py`` runs it in a subprocess with
fixed XLA flags and compares the output with the digests recorded in
``tests/data/result_digests.json``; ``--record`` rewrites that file on this machine.

Bit-for-bit equality only holds on one kind of CPU (XLA picks instructions by the CPU), so the
file keys the digests by a fingerprint of the CPU. On a CPU with no recorded digests the test
distils with the recorded commit's code too (``git archive``) and compares the two on this
machine.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import platform
import sys
import tempfile

import numpy as np

# name -> extra command-line flags after `jaxdd distill --preset smoke`
RUNS = {
    "dm": ["--method", "dm", "--weighting", "none"],
    "dm_kde": ["--method", "dm", "--weighting", "kde"],
    "dsa_kde": ["--method", "dsa", "--weighting", "kde"],
    "mtt_kde": ["--method", "mtt", "--weighting", "kde"],
    "cfm_kde": ["--method", "cfm", "--weighting", "kde"],
}

# The XLA flags the digests are computed under (the test sets them in a fresh process).
XLA_FLAGS = "--xla_force_host_platform_device_count=1"


def cpu_fingerprint() -> str:
  """The CPU's model name and instruction-set flags, hashed (what XLA's code generation sees)."""
  model, flags = platform.processor(), ""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name") and not model:
          model = line.split(":", 1)[1].strip()
        if line.startswith("flags"):
          flags = " ".join(sorted(line.split(":", 1)[1].split()))
          break
  except OSError:
    pass
  text = f"{platform.machine()}|{model}|{flags}|{os.cpu_count()}"
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def _sha(data: bytes) -> str:
  return hashlib.sha256(data).hexdigest()[:32]


def run_digest(workdir: str) -> dict:
  """The digests of one finished run directory."""
  with np.load(os.path.join(workdir, "synset", "arrays.npz")) as z:
    arrays = {k: z[k] for k in sorted(z.files)}
  synset = _sha(b"".join(k.encode() + str(a.dtype).encode() + str(a.shape).encode() + a.tobytes()
                         for k, a in arrays.items()))
  with open(os.path.join(workdir, "eval.json")) as f:
    summary = json.load(f)
  per_model = summary["result"]["per_model"]
  evaluation = _sha(json.dumps(per_model, sort_keys=True).encode())
  return {"synset": synset, "eval": evaluation, "config_digest": summary["digest"]}


def compute(root: str) -> dict:
  """Distils every run of :data:`RUNS` under ``root`` and returns their digests."""
  from jaxdd.cli import main
  out = {}
  for name, flags in RUNS.items():
    workdir = os.path.join(root, name)
    argv = ["distill", "--preset", "smoke", *flags, "--workdir", workdir, "--quiet"]
    with contextlib.redirect_stdout(io.StringIO()):
      rc = main(argv)
    if rc != 0:
      raise SystemExit(f"jaxdd {' '.join(argv)} exited {rc}")
    out[name] = run_digest(workdir)
  return out


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--record", metavar="FILE", help="add this CPU's digests to FILE")
  args = p.parse_args()
  if os.environ.get("XLA_FLAGS", "") != XLA_FLAGS:
    raise SystemExit(f"run with XLA_FLAGS='{XLA_FLAGS}' (the flags the digests are defined under)")
  with tempfile.TemporaryDirectory(prefix="jaxdd-digests-") as tmp:
    os.environ["JAXDD_CACHE"] = os.path.join(tmp, "cache")
    digests = compute(os.path.join(tmp, "runs"))
  if args.record:
    import subprocess
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                            check=True).stdout.strip()
    try:
      with open(args.record) as f:
        recorded = json.load(f)
    except FileNotFoundError:
      recorded = {}
    if recorded.get("commit") not in (None, commit):
      recorded = {}  # digests of another commit's code are not mixed with these
    recorded["commit"] = commit
    recorded.setdefault("machines", {})[cpu_fingerprint()] = digests
    with open(args.record + ".tmp", "w") as f:
      json.dump(recorded, f, indent=1, sort_keys=True)
      f.write("\n")
    os.replace(args.record + ".tmp", args.record)
  json.dump(digests, sys.stdout, sort_keys=True)
  print()


if __name__ == "__main__":
  main()
