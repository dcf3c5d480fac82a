"""SynSet artifact: round trip, atomicity, tamper detection."""
import json
import os

import numpy as np
import pytest

from jaxdd import synset
from jaxdd.structs import SynSet


def _syn():
  rng = np.random.default_rng(0)
  return SynSet(rng.normal(size=(4, 5, 5, 3)).astype(np.float32), np.array([0, 0, 1, 1], np.int32))


def test_round_trip_and_manifest(tmp_path):
  path = str(tmp_path / "syn")
  syn = _syn()
  synset.save(path, syn, {"ipc": 2, "method": "dm"}, mean=[0.1, 0.2, 0.3], std=[1, 2, 3])
  loaded, meta = synset.load(path)
  np.testing.assert_array_equal(loaded.images, syn.images)
  np.testing.assert_array_equal(loaded.labels, syn.labels)
  assert meta["ipc"] == 2 and meta["method"] == "dm" and meta["image_shape"] == [5, 5, 3]
  assert meta["mean"] == [0.1, 0.2, 0.3]  # exact: stored as float64 (not float32 numbers)
  manifest = json.load(open(os.path.join(path, "manifest.json")))
  assert manifest["files"]["arrays.npz"] == synset.sha256_file(os.path.join(path, "arrays.npz"))
  assert sorted(os.listdir(tmp_path)) == ["syn"]  # no temporary leftovers
  # overwriting keeps a valid artifact
  synset.save(path, syn, {"ipc": 3}, mean=[0, 0, 0], std=[1, 1, 1])
  assert synset.load(path)[1]["ipc"] == 3


def test_tampered_and_missing_files_are_refused(tmp_path):
  path = str(tmp_path / "syn")
  synset.save(path, _syn(), {"ipc": 2}, mean=[0, 0, 0], std=[1, 1, 1])
  meta_file = os.path.join(path, "meta.json")
  meta = json.load(open(meta_file))
  meta["ipc"] = 50
  json.dump(meta, open(meta_file, "w"))
  with pytest.raises(ValueError, match="sha256"):
    synset.load(path)
  os.remove(os.path.join(path, "arrays.npz"))
  with pytest.raises(FileNotFoundError, match="incomplete"):
    synset.load(path)
  with pytest.raises(FileNotFoundError, match="no SynSet artifact"):
    synset.load(str(tmp_path / "nope"))


def test_bad_input_writes_nothing(tmp_path):
  bad = SynSet(np.full((2, 3, 3, 1), np.nan, np.float32), np.array([0, 1], np.int32))
  with pytest.raises(ValueError, match="NaN"):
    synset.save(str(tmp_path / "s"), bad, {}, mean=[0], std=[1])
  with pytest.raises(ValueError, match="one value per channel"):
    synset.save(str(tmp_path / "s"), _syn(), {}, mean=[0], std=[1])
  assert os.listdir(tmp_path) == []


def _tiny(tmp_path, name="s", **kw):
  syn = SynSet(np.zeros((2, 4, 4, 3), np.float32), np.array([0, 1]))
  return synset.save(str(tmp_path / name), syn, kw.get("meta", {}), mean=[0, 0, 0],
                     std=[1, 1, 1])


def test_save_refuses_what_load_would_refuse(tmp_path):
  with pytest.raises(ValueError, match="'dataset' must be an object"):
    _tiny(tmp_path, meta={"dataset": "cmnist"})
  assert not (tmp_path / "s").exists()
  path = _tiny(tmp_path, meta={"dataset": {"name": "cmnist"}, "anything": [1, "x"]})
  assert synset.load(path)[1]["anything"] == [1, "x"]


def _rewrite_arrays(path, **arrays):
  """Replaces arrays.npz and re-signs the manifest's checksum, as a careless tool would."""
  import hashlib
  import json

  with open(os.path.join(path, "arrays.npz"), "wb") as f:
    np.savez(f, **arrays)
  man = os.path.join(path, "manifest.json")
  m = json.load(open(man))
  m["files"]["arrays.npz"] = hashlib.sha256(open(os.path.join(path, "arrays.npz"), "rb").read()
                                            ).hexdigest()
  json.dump(m, open(man, "w"))


@pytest.mark.parametrize("images,labels,match", [
    (np.zeros((2, 48), np.float32), np.array([0, 1]), r"not \(N, H, W, C\)"),
    (np.zeros((2, 4, 4, 3), np.uint8), np.array([0, 1]), "not floats"),
    (np.full((2, 4, 4, 3), np.nan, np.float32), np.array([0, 1]), "NaN or Inf"),
    (np.zeros((2, 4, 4, 3), np.float32), np.array([0.5, 1.0]), "non-negative integers"),
])
def test_malformed_arrays_are_refused_before_any_model(tmp_path, images, labels, match):
  path = _tiny(tmp_path)
  _rewrite_arrays(path, images=images, labels=labels, mean=np.zeros(3, np.float32),
                  std=np.ones(3, np.float32))
  with pytest.raises(ValueError, match=match) as e:
    synset.load(path)
  assert "\n" not in str(e.value)


def test_unreadable_is_not_missing_and_the_mode_follows_the_umask(tmp_path, monkeypatch):
  old = os.umask(0o022)
  try:
    path = _tiny(tmp_path)
  finally:
    os.umask(old)
  assert os.stat(path).st_mode & 0o777 == 0o755
  real_open = os.open  # the artifact's files are read through os.open (bounded, no FIFO hang)

  def denied(file, *a, **k):
    if str(file).endswith("manifest.json"):
      raise PermissionError(13, "Permission denied")
    return real_open(file, *a, **k)

  monkeypatch.setattr(os, "open", denied)
  with pytest.raises(PermissionError, match="permission denied; ask its owner"):
    synset.load(path)


def _npz_with(path, **arrays):
  """arrays.npz rewritten from raw members (name -> bytes), its manifest fixed."""
  import hashlib
  import io
  import json
  import zipfile
  buf = io.BytesIO()
  with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
    for name, blob in arrays.items():
      z.writestr(name + ".npy", blob)
  data = buf.getvalue()
  with open(os.path.join(path, "arrays.npz"), "wb") as f:
    f.write(data)
  with open(os.path.join(path, "manifest.json")) as f:
    manifest = json.load(f)
  manifest["files"]["arrays.npz"] = hashlib.sha256(data).hexdigest()
  with open(os.path.join(path, "manifest.json"), "w") as f:
    json.dump(manifest, f)


def _npy(a, shape=None) -> bytes:
  """``a`` as .npy bytes, its header declaring ``shape`` (default its own)."""
  import io
  buf = io.BytesIO()
  header = {"descr": np.lib.format.dtype_to_descr(a.dtype), "fortran_order": False,
            "shape": tuple(a.shape if shape is None else shape)}
  np.lib.format.write_array_header_1_0(buf, header)
  buf.write(np.ascontiguousarray(a).tobytes())
  return buf.getvalue()


def test_an_archive_that_lies_is_refused_before_it_is_unpacked(tmp_path, monkeypatch):
  # a header declaring 10^8 images over a few bytes, and an archive of far more images than
  # meta.json says (a zip bomb: zeros compress to almost nothing), are one line each, and
  # nothing is allocated for what they declare
  path = synset.save(str(tmp_path / "syn"), SynSet(np.zeros((4, 4, 4, 3), np.float32),
                                                   np.array([0, 0, 1, 1], np.int32)),
                     {"ipc": 2, "class_names": ["a", "b"]}, mean=np.zeros(3), std=np.ones(3))
  small = dict(labels=_npy(np.array([0, 0, 1, 1], np.int32)),
               mean=_npy(np.zeros(3, np.float32)), std=_npy(np.ones(3, np.float32)))
  _npz_with(path, images=_npy(np.zeros((4, 4, 4, 3), np.float32), shape=(10**8, 4, 4, 3)),
            **small)
  with pytest.raises(ValueError, match=r"images.npy declares shape \(100000000, 4, 4, 3\)"):
    synset.load(path)
  big = np.zeros((4000, 4, 4, 3), np.float32)
  _npz_with(path, images=_npy(big), **small)
  assert os.path.getsize(os.path.join(path, "arrays.npz")) < len(_npy(big)) // 50
  with pytest.raises(ValueError, match="holds 4000 images, but meta.json says 4 "
                                       r"\(IPC 2 x 2 classes\)") as e:
    synset.load(path)
  assert "\n" not in str(e.value)
  monkeypatch.setattr(synset, "MAX_ARTIFACT_BYTES", 100_000)  # above the file, below its content
  with pytest.raises(ValueError, match="unpacks to more than"):
    synset.load(path)


def test_reads_of_a_fifo_or_a_device_are_refused_not_hung(tmp_path):
  path = _tiny(tmp_path)
  os.replace(os.path.join(path, "meta.json"), os.path.join(tmp_path, "meta.bak"))
  os.mkfifo(os.path.join(path, "meta.json"))
  with pytest.raises(ValueError, match="is not a regular file \\(a FIFO\\)"):
    synset.load(path)


def test_save_changes_nothing_without_a_word(tmp_path):
  syn = _syn()
  # float32 numbers as mean/std (a run's channel statistics): stored as float32, as before
  path = str(tmp_path / "a")
  synset.save(path, syn, {}, mean=np.float32([0.1, 0.2, 0.3]).tolist(), std=[1.0, 2.0, 0.5])
  with np.load(os.path.join(path, "arrays.npz")) as z:
    assert z["mean"].dtype == np.float32 and z["std"].dtype == np.float32
    np.testing.assert_array_equal(z["mean"], np.float32([0.1, 0.2, 0.3]))
  # float64 numbers float32 would round: stored exactly
  synset.save(str(tmp_path / "b"), syn, {}, mean=np.array([0.1307] * 3), std=[0.3081] * 3)
  meta = synset.load(str(tmp_path / "b"))[1]
  assert meta["mean"] == [0.1307] * 3 and meta["std"] == [0.3081] * 3
  # float64 images that are float32 numbers, int64 labels in range: exact, stored so
  exact = SynSet(syn.images.astype(np.float64), syn.labels.astype(np.int64))
  loaded = synset.load(synset.save(str(tmp_path / "c"), exact, {}, mean=[0] * 3,
                                   std=[1] * 3))[0]
  assert loaded.images.dtype == np.float32 and loaded.labels.dtype == np.int32
  np.testing.assert_array_equal(loaded.images, syn.images)
  # what float32 / int32 would change is refused in one line, nothing written
  bad = [(SynSet(syn.images.astype(np.float64) + 1e-12, syn.labels), r"syn.images \(float64\)"
          r" change as float32 floats.*astype\(np.float32\)"),
         (SynSet(syn.images, syn.labels.astype(np.int64) + 2**31), r"syn.labels \(int64\) "
          r"change as int32"),
         (SynSet(syn.images, syn.labels + 0.5), "not integers")]
  for s, match in bad:
    with pytest.raises(ValueError, match=match) as err:
      synset.save(str(tmp_path / "d"), s, {}, mean=[0] * 3, std=[1] * 3)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "d").exists()


def test_save_replaces_a_synset_or_an_empty_folder_and_nothing_else(tmp_path):
  syn = SynSet(np.zeros((2, 4, 4, 3), np.float32), np.array([0, 1], np.int32))
  kw = dict(mean=[0.0] * 3, std=[1.0] * 3)
  target = str(tmp_path / "syn")
  synset.save(target, syn, {"ipc": 1}, **kw)
  synset.save(target, syn, {"ipc": 2}, **kw)  # a SynSet: replaced
  assert synset.load(target)[1]["ipc"] == 2
  (tmp_path / "empty").mkdir()
  synset.save(str(tmp_path / "empty"), syn, {"ipc": 1}, **kw)  # an empty folder: filled
  # a user's folder or file: refused, untouched
  mine = tmp_path / "my_results"
  mine.mkdir()
  (mine / "thesis.tex").write_text("x")
  (tmp_path / "notes.txt").write_text("y")
  with pytest.raises(ValueError, match=r"my_results holds thesis.tex, which is not a SynSet"):
    synset.save(str(mine), syn, {"ipc": 1}, **kw)
  with pytest.raises(ValueError, match=r"notes.txt exists and is not a folder"):
    synset.save(str(tmp_path / "notes.txt"), syn, {"ipc": 1}, **kw)
  assert os.listdir(mine) == ["thesis.tex"] and (tmp_path / "notes.txt").read_text() == "y"
  assert sorted(os.listdir(tmp_path)) == ["empty", "my_results", "notes.txt", "syn"]


#: Arrays a SynSet might be given (name -> (images, labels, mean, std)), some that load refuses.
_CANDIDATES = {
    "good": (np.zeros((2, 4, 4, 3), np.float32), np.array([0, 1]), [0.0] * 3, [1.0] * 3),
    "a zero std": (np.zeros((2, 4, 4, 3), np.float32), np.array([0, 1]), [0.0] * 3, [0, 1, 1]),
    "a negative std": (np.zeros((2, 4, 4, 3), np.float32), np.array([0, 1]), [0.0] * 3,
                       [1, -1, 1]),
    "an infinite mean": (np.zeros((2, 4, 4, 3), np.float32), np.array([0, 1]),
                         [0.0, np.inf, 0.0], [1.0] * 3),
    "a negative label": (np.zeros((2, 4, 4, 3), np.float32), np.array([0, -1]), [0.0] * 3,
                         [1.0] * 3),
    "two channels": (np.zeros((2, 4, 4, 2), np.float32), np.array([0, 1]), [0.0] * 2, [1.0] * 2),
    "no image": (np.zeros((0, 4, 4, 3), np.float32), np.zeros(0, np.int32), [0.0] * 3, [1.0] * 3),
}


@pytest.mark.parametrize("case", list(_CANDIDATES))
def test_save_refuses_exactly_the_arrays_load_refuses(case, tmp_path):
  images, labels, mean, std = _CANDIDATES[case]
  # what load says of these arrays, written into a good SynSet as a careless tool would
  probe = _tiny(tmp_path, "probe")
  _rewrite_arrays(probe, images=images, labels=labels, mean=np.asarray(mean, np.float32),
                  std=np.asarray(std, np.float32))
  try:
    synset.load(probe)
    load_takes = True
  except ValueError:
    load_takes = False
  target = str(tmp_path / "syn")
  if load_takes:
    synset.load(synset.save(target, SynSet(images, labels), {}, mean=mean, std=std))
  else:
    with pytest.raises(ValueError, match="which synset.load refuses; pass") as e:
      synset.save(target, SynSet(images, labels), {}, mean=mean, std=std)
    assert "\n" not in str(e.value) and str(e.value).startswith("synset.save: ")
    assert not os.path.exists(target)
  assert (case == "good") == load_takes


def test_save_refuses_a_count_its_meta_contradicts(tmp_path):
  # load refuses a SynSet whose images are not IPC x classes of its meta; so does save
  syn = SynSet(np.zeros((3, 4, 4, 3), np.float32), np.array([0, 1, 1]))
  with pytest.raises(ValueError, match=r"3 images, but meta says 2 \(IPC 1 x 2 classes\)"):
    synset.save(str(tmp_path / "s"), syn, {"ipc": 1, "class_names": ["a", "b"]}, mean=[0] * 3,
                std=[1] * 3)
  assert os.listdir(tmp_path) == []


def test_save_into_the_current_folder_is_refused_and_leaves_nothing(tmp_path, monkeypatch):
  syn = SynSet(np.zeros((2, 4, 4, 3), np.float32), np.array([0, 1], np.int32))
  here = tmp_path / "empty"
  here.mkdir()
  monkeypatch.chdir(here)
  for path, said in ((".", "is the current folder"), ("", "the path is empty"),
                     (str(here), "is the current folder"),
                     ("..", "holds the current folder")):
    with pytest.raises(ValueError, match=said) as e:
      synset.save(path, syn, {}, mean=[0] * 3, std=[1] * 3)
    assert "give a new folder, e.g." in str(e.value) and "\n" not in str(e.value)
  assert os.listdir(tmp_path) == ["empty"] and os.listdir(here) == []
  # the fix it names works
  synset.load(synset.save(os.path.join(".", "synset"), syn, {}, mean=[0] * 3, std=[1] * 3))


def test_a_replace_that_fails_puts_the_old_synset_back(tmp_path, monkeypatch):
  syn = SynSet(np.zeros((2, 4, 4, 3), np.float32), np.array([0, 1], np.int32))
  target = str(tmp_path / "syn")
  synset.save(target, syn, {"ipc": 1}, mean=[0] * 3, std=[1] * 3)
  real_replace, calls = os.replace, []

  def second_fails(src, dst):
    calls.append(dst)
    if len(calls) == 2:  # the new folder into place, after the old one was moved aside
      raise OSError(16, "Device or resource busy", dst)
    return real_replace(src, dst)

  monkeypatch.setattr(os, "replace", second_fails)
  with pytest.raises(OSError):
    synset.save(target, syn, {"ipc": 2}, mean=[0] * 3, std=[1] * 3)
  monkeypatch.setattr(os, "replace", real_replace)
  assert os.listdir(tmp_path) == ["syn"]  # no .old-* nor .tmp-* left
  assert synset.load(target)[1]["ipc"] == 1


def _artifact(path, members: dict, meta: dict, *, method=None) -> None:
  """A SynSet folder of raw .npz ``members`` (name -> bytes, or a callable writing to the
  member) and ``meta``, its manifest's checksums agreeing: as a forger would make one."""
  import hashlib
  import zipfile
  os.makedirs(path)
  with zipfile.ZipFile(os.path.join(path, "arrays.npz"), "w",
                       method or zipfile.ZIP_DEFLATED) as z:
    for name, blob in members.items():
      with z.open(name + ".npy", "w", force_zip64=True) as f:
        blob(f) if callable(blob) else f.write(blob)
  with open(os.path.join(path, "meta.json"), "w") as f:
    json.dump(meta, f)
  digest = lambda n: hashlib.sha256(open(os.path.join(path, n), "rb").read()).hexdigest()  # noqa: E731
  with open(os.path.join(path, "manifest.json"), "w") as f:
    json.dump({"files": {n: digest(n) for n in ("arrays.npz", "meta.json")}}, f)


def _zeros_of(header: bytes, nbytes: int):
  def write(f):
    f.write(header)
    chunk = bytes(2**22)
    for start in range(0, nbytes, len(chunk)):
      f.write(chunk[:min(len(chunk), nbytes - start)])
  return write


def _bomb(path, n: int, meta_n: int | None = None) -> int:
  """A SynSet of ``n`` zero images of 4x4x3 (deflated to almost nothing) whose meta.json says
  ``meta_n`` (default: agrees). Returns the bytes it unpacks to."""
  header = _npy(np.zeros((0, 4, 4, 3), np.float32), shape=(n, 4, 4, 3))
  m = n if meta_n is None else meta_n
  _artifact(path, {"images": _zeros_of(header, n * 192), "labels": _npy(np.zeros(n, np.int32)),
                   "mean": _npy(np.zeros(3, np.float32)), "std": _npy(np.ones(3, np.float32))},
            {"ipc": m // 2, "class_names": ["a", "b"], "num_images": m,
             "image_shape": [4, 4, 3]})
  return n * 196 + 24


@pytest.mark.slow  # 600 MiB unpacked; the fast suite refuses an archive that exceeds its meta
@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux's /proc")
def test_a_zip_bomb_its_meta_agrees_with_is_refused_by_what_the_process_can_hold(tmp_path):
  # 3.2 million zero images (600 MiB unpacked, under a MiB packed) whose meta.json agrees:
  # loaded in a process whose address space has 300 MiB left, it is one refusal line, not a
  # MemoryError (nor, under a container's cap, a kill)
  import subprocess
  import sys
  path = str(tmp_path / "bomb")
  unpacked = _bomb(path, 2 * 1_600_000)
  assert os.path.getsize(os.path.join(path, "arrays.npz")) < unpacked // 300
  script = (
      "import resource, sys\n"
      "from jaxdd import synset\n"
      "size = int(open('/proc/self/statm').read().split()[0]) * resource.getpagesize()\n"
      "resource.setrlimit(resource.RLIMIT_AS, (size + 300 * 2**20, resource.RLIM_INFINITY))\n"
      "try:\n"
      "  synset.load(sys.argv[1])\n"
      "except ValueError as e:\n"
      "  print(e); sys.exit(3)\n")
  done = subprocess.run([sys.executable, "-c", script, path], capture_output=True, text=True,
                        timeout=300)
  assert done.returncode == 3, done.stderr[-2000:]
  line = done.stdout.strip()
  assert "\n" not in line and "more than this machine can hold now" in line, line
  assert "load it where more memory is free" in line
  # where the memory is there, the same artifact loads (its refusal was the machine's)
  from jaxdd._src import memory
  if (memory.available_bytes() or 0) > 4 * unpacked:
    assert synset.load(path)[0].images.shape == (3_200_000, 4, 4, 3)


def test_an_archive_bigger_than_its_meta_or_packed_oddly_is_refused_before_unpacking(tmp_path):
  # meta.json's num_images x image_shape bound every array (without ipc or class names too)
  path = str(tmp_path / "more")
  header = _npy(np.zeros((0, 4, 4, 3), np.float32), shape=(40_000, 4, 4, 3))
  _artifact(path, {"images": _zeros_of(header, 40_000 * 192),
                   "labels": _npy(np.zeros(40_000, np.int32)),
                   "mean": _npy(np.zeros(3, np.float32)), "std": _npy(np.ones(3, np.float32))},
            {"num_images": 4, "image_shape": [4, 4, 3]})
  with pytest.raises(ValueError, match=r"holds images of shape \(40000, 4, 4, 3\).*more than "
                                       r"meta.json's 4 images of shape \(4, 4, 3\) allow"):
    synset.load(path)
  # a method whose decoder runs unbounded (bzip2) is not unpacked at all
  import zipfile
  odd = str(tmp_path / "bz")
  _artifact(odd, {"images": _npy(np.zeros((2, 4, 4, 3), np.float32)),
                  "labels": _npy(np.zeros(2, np.int32)), "mean": _npy(np.zeros(3, np.float32)),
                  "std": _npy(np.ones(3, np.float32))}, {}, method=zipfile.ZIP_BZIP2)
  with pytest.raises(ValueError, match="packed by a method jaxdd does not unpack"):
    synset.load(odd)


def test_a_central_directory_that_understates_a_member_stops_the_unpacking(tmp_path):
  # the directory says 768 bytes of images (and so does the .npy header) while the member
  # inflates to 40 MB: unpacking stops at the 768 bytes said, and the CRC refuses the member
  import hashlib
  import struct
  path = str(tmp_path / "liar")
  header = _npy(np.zeros((0, 4, 4, 3), np.float32), shape=(4, 4, 4, 3))
  big = 40 * 2**20
  _artifact(path, {"images": _zeros_of(header, big), "labels": _npy(np.zeros(4, np.int32)),
                   "mean": _npy(np.zeros(3, np.float32)), "std": _npy(np.ones(3, np.float32))},
            {"ipc": 2, "class_names": ["a", "b"]})
  npz = os.path.join(path, "arrays.npz")
  blob = bytearray(open(npz, "rb").read())
  entry = blob.index(b"PK\x01\x02")  # the first central-directory entry: images.npy
  assert struct.unpack_from("<I", blob, entry + 24)[0] == len(header) + big  # as written
  struct.pack_into("<I", blob, entry + 24, len(header) + 4 * 192)
  with open(npz, "wb") as f:
    f.write(blob)
  manifest = json.load(open(os.path.join(path, "manifest.json")))
  manifest["files"]["arrays.npz"] = hashlib.sha256(bytes(blob)).hexdigest()
  json.dump(manifest, open(os.path.join(path, "manifest.json"), "w"))
  with pytest.raises(ValueError, match="not a readable .npz.*CRC") as e:
    synset.load(path)
  assert "\n" not in str(e.value)
