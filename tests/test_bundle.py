"""What a unit of work hands back from a lent machine (jaxdd.runs.bundle): the records and the
runs, in at most 8 files of at most 16 MiB, that unpack to the run folders as they were."""
import io
import os
import tarfile

import numpy as np
import pytest

from jaxdd.runs import bundle


def _run(root, name, payload: bytes):
  d = os.path.join(root, "cell", name, "s0")
  os.makedirs(os.path.join(d, "synset"))
  for f, data in (("config.json", b"{}"), ("synset/arrays.npz", payload),
                  ("synset/manifest.json", b"{}"), ("checkpoint.npz", b"not packed")):
    with open(os.path.join(d, f), "wb") as fh:
      fh.write(data)
  return d


def test_records_and_runs_round_trip_within_the_limits(tmp_path):
  root = str(tmp_path / "w")
  runs = [_run(root, n, os.urandom(1000)) for n in ("vanilla", "kde")]
  rec = tmp_path / "s0.json"
  rec.write_text('{"unit": "cell/s0"}')
  out = str(tmp_path / "out")
  names = bundle.write_out(out, [("unit-cell-s0.json", str(rec))], root, runs)
  assert names == ["runs.tar.gz.part0", "unit-cell-s0.json"]
  with tarfile.open(os.path.join(out, "runs.tar.gz.part0")) as tar:
    got = sorted(tar.getnames())
    arrays = tar.extractfile("cell/kde/s0/synset/arrays.npz").read()
  assert got == sorted(f"cell/{n}/s0/{f}" for n in ("vanilla", "kde")
                       for f in ("config.json", "synset/arrays.npz", "synset/manifest.json"))
  with open(os.path.join(runs[1], "synset", "arrays.npz"), "rb") as f:
    assert arrays == f.read()
  # the same runs give the same bytes (fixed order, times and owners)
  assert bundle.pack_runs(root, runs) == bundle.pack_runs(root, runs)


def test_large_runs_are_cut_into_parts_that_join_again(tmp_path, monkeypatch):
  monkeypatch.setattr(bundle, "PART_BYTES", 4096)
  root = str(tmp_path / "w")
  runs = [_run(root, "vanilla", np.random.default_rng(0).bytes(10_000))]
  rec = tmp_path / "r.json"
  rec.write_text("{}")
  names = bundle.write_out(str(tmp_path / "o"), [("r.json", str(rec))], root, runs)
  parts = sorted(n for n in names if n.startswith("runs.tar.gz.part"))
  assert len(parts) == 3 and len(names) <= bundle.MAX_FILES
  sizes = [os.path.getsize(tmp_path / "o" / p) for p in parts]
  assert max(sizes) <= 4096
  joined = b"".join((tmp_path / "o" / p).read_bytes() for p in parts)
  with tarfile.open(fileobj=io.BytesIO(joined)) as tar:
    assert "cell/vanilla/s0/synset/arrays.npz" in tar.getnames()
  # runs that need more files than are left: the records alone, said by the names returned
  monkeypatch.setattr(bundle, "PART_BYTES", 1024)
  names = bundle.write_out(str(tmp_path / "o2"), [("r.json", str(rec))], root, runs)
  assert names == ["r.json"]


def test_out_must_be_new_or_empty(tmp_path):
  (tmp_path / "full").mkdir()
  (tmp_path / "full" / "keep.txt").write_text("mine")
  (tmp_path / "file").write_text("mine")
  for bad in ("full", "file"):
    with pytest.raises(ValueError, match="new path or an empty folder"):
      bundle.check_out(str(tmp_path / bad))
  assert (tmp_path / "full" / "keep.txt").read_text() == "mine"
  assert (tmp_path / "file").read_text() == "mine"
  (tmp_path / "empty").mkdir()
  bundle.check_out(str(tmp_path / "empty"))
  bundle.check_out(str(tmp_path / "new"))
