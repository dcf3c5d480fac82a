"""Reading a folder of your own images: decode time and peak memory for N generated 64 x 64 PNGs.

Writes N images in class folders (10 classes; smooth random colour fields with noise, so the files
are about the size of natural 64 x 64 PNGs), then, in a fresh process per measurement, reads them
with ``jaxdd.data.own``: the first read decodes every file into the memory-mapped cache, the
second reads the cache. Each process reports its wall time and its peak resident memory
(``ru_maxrss``) before and after the read, so the read's own peak is the difference; the decoded
array is N x 64 x 64 x 3 bytes.

Usage:
  python benchmarks/own_decode.py --images 50000 --repeats 3 --out results/own-data/decode-50k.json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from jaxdd._src import io as _io
from jaxdd.runs import version

HERE = Path(__file__).resolve().parent.parent

_CHILD = r"""
import json, resource, sys, time
from jaxdd.data import own
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
index = own.read_index(own.parse("folder:" + sys.argv[1]))
t1 = time.perf_counter()
images, record = own.decode(index, progress=False)
images.sum(dtype="uint64")  # touch every page of a cached map as a user's first pass would
t2 = time.perf_counter()
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"index_s": t1 - t0, "decode_s": t2 - t1, "status": record["status"],
                  "rss_before_kib": before, "rss_peak_kib": after,
                  "bytes": int(images.nbytes)}))
"""


def _write(root: Path, n: int, seed: int = 0) -> None:
  from PIL import Image  # noqa: PLC0415  (Pillow: the generator's only use)

  rng = np.random.default_rng(seed)
  for i in range(n):
    c = i % 10
    base = rng.integers(0, 256, (4, 4, 3)).astype(np.float32)
    img = np.kron(base, np.ones((16, 16, 1), np.float32)) + rng.normal(0, 8, (64, 64, 3))
    d = root / f"class{c}"
    d.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(d / f"{i:06d}.png")


def _measure(root: Path, env: dict) -> dict:
  r = subprocess.run([sys.executable, "-c", _CHILD, str(root)], capture_output=True, text=True,
                     env=env, cwd=HERE, check=True)
  return json.loads(r.stdout.strip().splitlines()[-1])



def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--images", type=int, default=50_000)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--out", required=True)
  p.add_argument("--tiny", action="store_true", help="check the script: 200 images, 1 repeat")
  args = p.parse_args(argv)
  if args.tiny:
    args.images, args.repeats = 200, 1
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    root = Path(tmp) / "images"
    t0 = time.perf_counter()
    _write(root, args.images)
    write_s = time.perf_counter() - t0
    files = sum(f.stat().st_size for f in root.rglob("*.png"))
    runs = {"decode": [], "cached": []}
    for r in range(args.repeats):  # a fresh cache per repeat: decode, then read the cache
      env = dict(os.environ, JAXDD_CACHE=str(Path(tmp) / f"cache{r}"), JAX_PLATFORMS="cpu")
      runs["decode"].append(_measure(root, env))
      runs["cached"].append(_measure(root, env))
      for kind in ("decode", "cached"):
        print(json.dumps({"read": kind, **runs[kind][-1]}), flush=True)
  nbytes = runs["decode"][0]["bytes"]
  for kind, ms in runs.items():
    peak = [(m["rss_peak_kib"] - m["rss_before_kib"]) * 1024 / nbytes for m in ms]
    rows.append([kind, f"{statistics.median(m['index_s'] for m in ms):.1f}",
                 f"{statistics.median(m['decode_s'] for m in ms):.1f}",
                 ", ".join(f"{m['decode_s']:.1f}" for m in ms),
                 f"{statistics.median(peak):.2f}",
                 f"{statistics.median(m['rss_peak_kib'] for m in ms) / 1024:.0f}"])
  commit = version.short_commit()  # the code this process loaded
  out = {
      "columns": ["read", "listing s", "median s", "each repeat (s)",
                  "peak memory added / decoded array", "process peak MiB"],
      "rows": rows,
      "notes": [f"{args.images} PNG files of 64 x 64 x 3 ({files / 2**20:.0f} MiB on disk, "
                f"written in {write_s:.0f} s), 10 class folders; the decoded array is "
                f"{nbytes / 2**20:.0f} MiB (uint8). 'decode': the first read, every file "
                "decoded with Pillow into the memory-mapped cache; 'cached': the second read, "
                "the map checked (sha256) and every page touched once.",
                "Peak memory added: the process's peak resident memory after the read minus "
                "before it (the interpreter, numpy and JAX already imported), over the decoded "
                "array's size; the written pages of the memory map count in it.",
                f"Medians of {args.repeats} repeats, each in a fresh process with a fresh cache."],
      "date": time.strftime("%Y-%m-%d"), "commit": commit,
      "machine": version.machine(),
      "command": ["python benchmarks/own_decode.py " + " ".join(sys.argv[1:])]}
  _io.atomic_write_json(args.out, out)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
