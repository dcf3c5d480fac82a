"""What a unit of work hands back from a lent machine (jaxdd.runs.bundle): the records and the
runs, in at most 8 files of at most 16 MiB, that unpack to the run folders as they were."""
import io
import os
import shutil
import tarfile
import tempfile

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


def test_returned_runs_unpack_whole_and_never_replace(tmp_path, monkeypatch):
  monkeypatch.setattr(bundle, "PART_BYTES", 4096)  # several parts
  root = str(tmp_path / "w")
  runs = [_run(root, n, np.random.default_rng(i).bytes(6000))
          for i, n in enumerate(("vanilla", "kde"))]
  out = tmp_path / "o"
  bundle.write_out(str(out), [], root, runs)
  plain, found = bundle.read_runs(str(out))
  assert found == ["cell/kde/s0", "cell/vanilla/s0"]
  there = tmp_path / "there"
  bundle.unpack_runs(plain, found, str(there))
  for d in runs:  # byte for byte, without what is not packed
    rel = os.path.relpath(d, root)
    for f in ("config.json", "synset/arrays.npz", "synset/manifest.json"):
      assert (there / rel / f).read_bytes() == open(os.path.join(d, f), "rb").read()
    assert not (there / rel / "checkpoint.npz").exists()
  assert sorted(os.listdir(there)) == ["cell"]  # no staging folder left behind
  # a run folder that exists is refused before anything is written
  (there / "cell" / "kde" / "s0" / "mine.txt").write_text("mine")
  shutil.rmtree(there / "cell" / "vanilla")
  with pytest.raises(ValueError, match="would replace it"):
    bundle.unpack_runs(plain, found, str(there))
  assert not (there / "cell" / "vanilla").exists()
  # a part missing or cut short, and a folder with no runs
  parts = sorted(out.glob("runs.tar.gz.part*"))
  assert len(parts) >= 3
  (out / "runs.tar.gz.part1").rename(tmp_path / "aside")
  with pytest.raises(ValueError, match="carry every part"):
    bundle.read_runs(str(out))
  (tmp_path / "aside").rename(out / "runs.tar.gz.part1")
  parts[-1].write_bytes(parts[-1].read_bytes()[:-10])  # cut short
  with pytest.raises(ValueError, match="do not unpack"):
    bundle.read_runs(str(out))
  (tmp_path / "empty").mkdir()
  assert bundle.read_runs(str(tmp_path / "empty")) == (b"", [])
  # a member that is not a run's file
  buf = io.BytesIO()
  with tarfile.open(fileobj=buf, mode="w:gz") as tar:
    info = tarfile.TarInfo("cell/kde/s0/../../../evil.sh")
    info.size = 1
    tar.addfile(info, io.BytesIO(b"x"))
  (tmp_path / "evil").mkdir()
  (tmp_path / "evil" / "runs.tar.gz.part0").write_bytes(buf.getvalue())
  with pytest.raises(ValueError, match="not a file of a run"):
    bundle.read_runs(str(tmp_path / "evil"))


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


def _stopped_run(root, name, finished=False):
  d = _run(root, name, os.urandom(500))
  if not finished:  # a run the budget stopped has no SynSet yet
    shutil.rmtree(os.path.join(d, "synset"))
  for step in ("2", "4"):  # orbax keeps two; only the latest is handed over
    os.makedirs(os.path.join(d, "checkpoints", step, "default"))
    with open(os.path.join(d, "checkpoints", step, "default", "data"), "wb") as fh:
      fh.write(step.encode() * 100)
  return d


def _entry(root):
  e = os.path.join(root, "0123abcd")
  os.makedirs(e)
  for f in ("params.npz", "meta.json", "embeddings.npz"):
    with open(os.path.join(e, f), "wb") as fh:
      fh.write(f.encode())
  return e


def test_a_handover_holds_the_latest_checkpoint_and_unpacks_without_replacing(tmp_path,
                                                                              monkeypatch):
  (tmp_path / "tmp").mkdir()
  monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))  # the surrogates' staging
  root = str(tmp_path / "w")
  runs = [_stopped_run(root, n) for n in ("vanilla", "kde")] + [
      _stopped_run(root, "fairdd", finished=True)]
  entry = _entry(str(tmp_path / "cache"))
  packed = bundle.pack_handover(root, runs, [entry])
  assert packed == bundle.pack_handover(root, runs, [entry])  # same runs, same bytes
  with tarfile.open(fileobj=io.BytesIO(packed)) as tar:
    names = tar.getnames()
  assert "runs/cell/kde/s0/checkpoints/4/default/data" in names
  assert not any("/checkpoints/2/" in n for n in names)
  # a finished run: its SynSet, no checkpoint
  assert "runs/cell/fairdd/s0/synset/arrays.npz" in names
  assert not any(n.startswith("runs/cell/fairdd/s0/checkpoints") for n in names)
  assert sorted(n for n in names if n.startswith("surrogates/")) == [
      "surrogates/0123abcd/meta.json", "surrogates/0123abcd/params.npz"]  # no embeddings
  out = str(tmp_path / "out")
  manifest = {"unit": "cell/s0", "settings": {"preset": "paper"},
              "runs": ["cell/vanilla/s0", "cell/kde/s0", "cell/fairdd/s0"],
              "surrogates": ["0123abcd"],
              "legs": [{"step": 4}]}
  assert bundle.write_handover(out, manifest, packed) == ["handover.json",
                                                          "handover.tar.gz.part0"]
  got, data = bundle.read_handover(out)
  assert data == packed and got["unit"] == "cell/s0" and len(got["parts"]) == 1
  staged = bundle.unpack_handover(data, str(tmp_path / "w2"), got["runs"])
  with open(tmp_path / "w2" / "cell" / "kde" / "s0" / "checkpoints" / "4" / "default" / "data",
            "rb") as fh:
    assert fh.read() == b"4" * 100
  assert sorted(os.listdir(os.path.join(staged, "0123abcd"))) == ["meta.json", "params.npz"]
  # unpacked again over the same folder (the same command run again after it failed later):
  # the runs there are these runs as far as the handover or farther, kept as they are
  w2 = tmp_path / "w2"
  kde_ckpt = w2 / "cell" / "kde" / "s0" / "checkpoints"
  os.makedirs(kde_ckpt / "6" / "default")  # it went on to step 6 before it failed
  (kde_ckpt / "6" / "default" / "data").write_bytes(b"6" * 100)
  before = {p: p.read_bytes() for p in w2.rglob("*") if p.is_file()}
  bundle.unpack_handover(data, str(w2), got["runs"])
  assert {p: p.read_bytes() for p in w2.rglob("*") if p.is_file()} == before
  assert sorted(os.listdir(w2)) == ["cell"]  # no staging folder left
  # another run in the folder, or the same run behind the handover: refused, nothing replaced
  for change in ("config", "behind"):
    w4 = tmp_path / f"w4-{change}"
    shutil.copytree(w2, w4)
    run = w4 / "cell" / "vanilla" / "s0"
    if change == "config":
      (run / "config.json").write_text('{"another": "run"}')
    else:
      shutil.rmtree(run / "checkpoints" / "4")
    kept = {p: p.read_bytes() for p in w4.rglob("*") if p.is_file()}
    with pytest.raises(ValueError, match="is not this run as far as the handover took it"):
      bundle.unpack_handover(data, str(w4), got["runs"])
    assert {p: p.read_bytes() for p in w4.rglob("*") if p.is_file()} == kept
  # a folder without the run's config.json is not this run: refused
  (w2 / "cell" / "vanilla" / "s0" / "config.json").unlink()
  with pytest.raises(ValueError, match="is not this run"):
    bundle.unpack_handover(data, str(w2), got["runs"])
  # a member that is no run's file is refused
  with pytest.raises(ValueError, match="not a file of its runs"):
    bundle.unpack_handover(data, str(tmp_path / "w3"), ["cell/kde/s0"])
  assert not (tmp_path / "w3").exists()


def test_a_handover_part_changed_or_missing_is_refused(tmp_path, monkeypatch):
  root = str(tmp_path / "w")
  runs = [_stopped_run(root, "kde")]
  packed = bundle.pack_handover(root, runs, [])
  size = len(packed) // 3 + 1
  monkeypatch.setattr(bundle, "PART_BYTES", size)
  manifest = {"unit": "cell/s0", "settings": {}, "runs": ["cell/kde/s0"], "surrogates": [],
              "legs": []}
  names = bundle.write_handover(str(tmp_path / "o"), manifest, packed)
  parts = [n for n in names if n != "handover.json"]
  assert len(parts) == 3 and all(os.path.getsize(tmp_path / "o" / n) <= size for n in parts)
  assert bundle.read_handover(str(tmp_path / "o"))[1] == packed
  # copied whole into a folder of its own (what is kept for the next loan), replacing the one
  # kept there before as a whole
  (tmp_path / "kept").mkdir()
  (tmp_path / "kept" / "handover.tar.gz.part7").write_bytes(b"an older handover's part")
  assert bundle.copy_handover(str(tmp_path / "o"), str(tmp_path / "kept"))["unit"] == "cell/s0"
  assert sorted(os.listdir(tmp_path / "kept")) == sorted(names)
  assert bundle.read_handover(str(tmp_path / "kept"))[1] == packed
  shutil.rmtree(tmp_path / "kept")
  with open(tmp_path / "o" / parts[-1], "r+b") as fh:
    fh.write(b"changed")
  with pytest.raises(ValueError, match="not the part the handover recorded"):
    bundle.read_handover(str(tmp_path / "o"))
  os.remove(tmp_path / "o" / parts[0])
  with pytest.raises(ValueError, match="is missing"):
    bundle.read_handover(str(tmp_path / "o"))
  with pytest.raises(ValueError, match="is missing"):  # not copied either
    bundle.copy_handover(str(tmp_path / "o"), str(tmp_path / "kept"))
  assert not (tmp_path / "kept").exists()
  with pytest.raises(ValueError, match="holds no handover.json"):
    bundle.read_handover(str(tmp_path))
  # more parts than a lent machine returns: refused, nothing written
  monkeypatch.setattr(bundle, "PART_BYTES", len(packed) // 10)
  with pytest.raises(ValueError, match="fewer --rows-per-unit"):
    bundle.write_handover(str(tmp_path / "o3"), manifest, packed)
  assert not (tmp_path / "o3").exists()
