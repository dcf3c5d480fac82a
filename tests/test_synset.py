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
  np.testing.assert_allclose(meta["mean"], [0.1, 0.2, 0.3], rtol=1e-6)
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
