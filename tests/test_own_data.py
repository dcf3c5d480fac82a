"""A user's own dataset (jaxdd.data.own): the readers recover what generated files hold, the
splits and groups follow their rules, the cache decodes once, and every bad input is one line
that names the file or row and the fix."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
from PIL import Image

import own_layouts
from jaxdd.data import own
from jaxdd.data.own import export

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
  monkeypatch.setenv("JAXDD_CACHE", str(tmp_path / "cache"))


def _load(spec, split="train", seed=0):
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", own.HeldOutTestWarning)
    return own.load_own(spec, split=split, seed=seed)


def test_class_folders_read_back_exactly(tmp_path):
  truth = own_layouts.class_folders(tmp_path / "fruit", splits=True)
  spec = own.parse(f"folder:{tmp_path / 'fruit'}")
  index = own.read_index(spec)
  assert index.class_names == ("apple", "banana", "cherry")
  assert index.groups is None
  by_path = {p: i for i, p in enumerate(truth["paths"])}
  rows = [by_path[p] for p in index.paths]
  np.testing.assert_array_equal(index.labels, truth["labels"][rows])
  np.testing.assert_array_equal(index.splits, truth["splits"][rows])
  train = _load(spec)
  test = _load(spec, "test")
  train_rows = [r for r, s in zip(rows, index.splits) if s == 0]
  valid = _load(spec, "valid")
  assert len(train) + len(valid) == len(train_rows)  # valid held out of the data's train
  assert valid.meta["split_origin"].startswith("held out")
  assert test.meta["split_origin"] == "the data" and len(test) == (truth["splits"] == 2).sum()
  # PNG is lossless: the float images are exactly the written bytes / 255
  all_train = np.concatenate([train.images, valid.images])
  got = np.sort((all_train * 255).round().astype(np.uint8).reshape(len(all_train), -1), axis=0)
  ref = np.sort(truth["images"][train_rows].reshape(len(train_rows), -1), axis=0)
  np.testing.assert_array_equal(got, ref)
  assert train.bias is None and train.aligned is None
  assert "no group labels" in train.describe()
  m = train.meta
  np.testing.assert_allclose(m["mean"], train.images.reshape(-1, 3).astype(np.float64).mean(0),
                             rtol=1e-6)  # float64 sums on both sides


def test_waterbirds_metadata_csv(tmp_path):
  truth = own_layouts.waterbirds(tmp_path / "wb")
  spec = own.parse(f"csv:{tmp_path / 'wb' / 'metadata.csv'}", path_col="img_filename",
                   label_col="y", group_col="place", split_col="split")
  for split, code in (("train", 0), ("valid", 1), ("test", 2)):
    ds = _load(spec, split)
    sel = truth["splits"] == code
    np.testing.assert_array_equal(ds.labels, truth["labels"][sel])
    np.testing.assert_array_equal(ds.bias, truth["groups"][sel])
    np.testing.assert_array_equal(ds.aligned, truth["groups"][sel] == truth["labels"][sel])
    assert ds.meta["split_origin"] == "the data"
  ds = _load(spec)
  assert ds.class_names == ("not_y", "y") and ds.bias_names == ("not_place", "place")
  # JPEG: the decoded pixels are Pillow's decode of the file
  first = tmp_path / "wb" / "000.Species_0" / "img_0000.jpg"
  np.testing.assert_array_equal((ds.images[0] * 255).round().astype(np.uint8),
                                np.asarray(Image.open(first).convert("RGB")))


def test_celeba_attributes_and_majority_rule(tmp_path):
  truth = own_layouts.celeba(tmp_path / "celeba")
  spec = own.parse(f"celeba:{tmp_path / 'celeba'}", label_col="Blond_Hair", group_col="Male")
  ds = _load(spec)
  sel = truth["splits"] == 0
  np.testing.assert_array_equal(ds.labels, truth["labels"][sel])
  np.testing.assert_array_equal(ds.bias, truth["groups"][sel])
  assert ds.class_names == ("not_Blond_Hair", "Blond_Hair")
  # majority rule: blond's aligned group is female (Male = 0), not-blond's male (1)
  assert ds.card.aligned_groups == (1, 0)
  np.testing.assert_array_equal(ds.aligned, ds.bias == 1 - ds.labels)
  counts = np.zeros((2, 2), int)
  np.add.at(counts, (truth["labels"][sel], truth["groups"][sel]), 1)
  np.testing.assert_array_equal(ds.card.counts, counts)


def test_opened_data_lists_and_checks_once_and_gives_load_owns_splits(tmp_path, monkeypatch):
  own_layouts.utkface(tmp_path / "utk")
  spec = own.parse(f"pattern:{tmp_path / 'utk'}", fields="age,gender,race,date",
                   label_col="gender", group_col="race")
  alone = {s: _load(spec, s, seed=3) for s in ("train", "valid", "test")}
  from jaxdd.data.own import dataset
  calls = {"read_index": 0, "decode": 0}
  for name in calls:
    real = getattr(dataset, name)

    def counted(*a, _real=real, _name=name, **k):
      calls[_name] += 1
      return _real(*a, **k)
    monkeypatch.setattr(dataset, name, counted)
  opened = own.OwnData(spec, seed=3)
  with pytest.warns(own.HeldOutTestWarning) as caught:
    test = opened.split("test")
  assert caught[0].filename == __file__  # the warning points at the caller's line
  got = {"train": opened.split("train"), "valid": opened.split("valid"), "test": test}
  assert calls == {"read_index": 1, "decode": 1}
  for s, ds in got.items():
    np.testing.assert_array_equal(ds.images, alone[s].images)
    np.testing.assert_array_equal(ds.labels, alone[s].labels)
    np.testing.assert_array_equal(ds.bias, alone[s].bias)
    assert ds.meta == alone[s].meta
  with pytest.raises(ValueError, match="split must be one of"):
    opened.split("training")


def test_utkface_pattern_holds_out_valid_and_test(tmp_path):
  truth = own_layouts.utkface(tmp_path / "utk")
  spec = own.parse(f"pattern:{tmp_path / 'utk'}", fields="age,gender,race,date",
                   label_col="gender", group_col="race")
  parts = {}
  with pytest.warns(own.HeldOutTestWarning, match="as biased as the training data"):
    parts["test"] = own.load_own(spec, split="test")
  parts["train"], parts["valid"] = _load(spec), _load(spec, "valid")
  n = {k: len(v) for k, v in parts.items()}
  assert sum(n.values()) == len(truth["labels"])
  per_class = len(truth["labels"]) // 2
  assert n["test"] == 2 * round(per_class * 0.2)  # stratified: round(n_c * 0.2) per class
  assert n["valid"] == 2 * round((per_class - round(per_class * 0.2)) * 0.1)
  assert parts["train"].bias_names == ("race=0", "race=1", "race=2", "race=3")
  # the same seed gives the same split; another seed another
  again = _load(spec, "test")
  np.testing.assert_array_equal(again.images, parts["test"].images)
  other = _load(spec, "test", seed=1)
  assert not np.array_equal(other.images, parts["test"].images)


def test_npz_keeps_float_images_exactly(tmp_path):
  rng = np.random.default_rng(0)
  x = rng.random((40, 8, 8, 3)).astype(np.float32)
  y = np.tile(np.arange(4), 10)
  np.savez(tmp_path / "d.npz", x_train=x[:30], y_train=y[:30], x_test=x[30:], y_test=y[30:],
           g_test=y[30:] % 2)
  spec = own.parse(f"npz:{tmp_path / 'd.npz'}")
  train, test = _load(spec), _load(spec, "test")
  assert train.images.dtype == np.float32 and train.bias is None and test.bias is not None
  both = np.concatenate([train.images, _load(spec, "valid").images])
  np.testing.assert_array_equal(np.sort(both.reshape(30, -1), 0), np.sort(x[:30].reshape(30, -1), 0))
  np.testing.assert_array_equal(test.images, x[30:])


def test_group_file_labels_the_test_split_only(tmp_path):
  own_layouts.class_folders(tmp_path / "f", splits=True)
  ds = {s: _load(own.parse(f"folder:{tmp_path / 'f'}"), s) for s in ("train", "valid", "test")}
  out = export.export_layout(ds, "folder", tmp_path / "exp", groups="test")
  assert not (out / "groups.csv").exists()  # the folder has no groups to export
  spec = own.parse(f"folder:{out}", group_file=str(out / "groups.csv"))
  # the export had no groups to give (the folder has none): build them by hand
  names = export.folder_names(ds["test"].class_names)
  rows = ["path,group"] + [f"test/{names[y]}/{i:06d}.png,{i % 3}"
                           for i, y in enumerate(ds["test"].labels)]
  (out / "groups.csv").write_text("\n".join(rows) + "\n")
  test = _load(spec, "test")
  assert _load(spec).bias is None
  np.testing.assert_array_equal(np.sort(test.bias), np.sort(np.arange(len(test)) % 3))


def test_decoded_once_then_read_from_the_cache(tmp_path):
  own_layouts.class_folders(tmp_path / "f")
  spec = own.parse(f"folder:{tmp_path / 'f'}")
  index = own.read_index(spec)
  a, rec = own.decode(index)
  assert rec["status"] == "built" and isinstance(a, np.memmap)
  b, rec2 = own.decode(index)
  assert rec2["status"] == "hit" and rec2["source_sha256"] == rec["source_sha256"]
  np.testing.assert_array_equal(a, b)
  # a changed file is decoded again; a damaged cache entry is rebuilt, never read
  p = tmp_path / "f" / index.paths[0]
  Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(p)
  os.utime(p, ns=(1, 1))
  c, rec3 = own.decode(own.read_index(spec))
  c = np.array(c)  # a copy: the memory map is damaged below
  assert rec3["status"] == "built" and rec3["source_sha256"] != rec["source_sha256"]
  assert c[0].max() == 0
  npy = next(own.cache_folder().glob("*.npy"))
  for f in own.cache_folder().glob("*.npy"):
    with open(f, "r+b") as h:
      h.seek(-1, 2)
      h.write(b"\x01")
  assert npy.is_file()
  d, rec4 = own.decode(own.read_index(spec))
  assert rec4["status"] == "built"
  np.testing.assert_array_equal(c, d)


def _bad(tmp_path, kind):
  """A broken dataset of each kind: (spec text, options, what the message must name)."""
  root = tmp_path / kind
  truth = own_layouts.class_folders(root)
  first = truth["paths"][0]
  if kind == "unreadable":
    (root / first).write_bytes(b"not an image")
    return f"folder:{root}", {}, first.split("/")[-1]
  if kind == "mixed_channels":
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(root / truth["paths"][5])
    return f"folder:{root}", {}, "mixed channel counts"
  if kind == "mixed_sizes":
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(root / truth["paths"][5])
    return f"folder:{root}", {}, "--image-size"
  rows = ["path,y,g"] + [f"{p},{y},{g}" for p, y, g in
                         zip(truth["paths"], truth["labels"], truth["groups"])]
  if kind == "non_integer_label":
    rows[3] = rows[3].rsplit(",", 2)[0] + ",banana,0"
    fix = "row 4"  # the header is row 1
  elif kind == "missing_column":
    fix = "no column 'label'"
  elif kind == "duplicate_path":
    rows[4] = rows[2]
    fix = "listed twice"
  elif kind == "outside_root":
    rows[2] = "../../etc/passwd,0,0"
    fix = "outside the data root"
  elif kind == "missing_file":
    rows[2] = "nope/none.png,0,0"
    fix = "does not exist"
  (root / "meta.csv").write_text("\n".join(rows) + "\n")
  return f"csv:{root / 'meta.csv'}", {"label_col": "label" if kind == "missing_column" else "y",
                                      "group_col": "g"}, fix


@pytest.mark.parametrize("kind", ["unreadable", "mixed_channels", "mixed_sizes",
                                  "non_integer_label", "missing_column", "duplicate_path",
                                  "outside_root", "missing_file"])
def test_bad_input_is_one_line_naming_the_fix(tmp_path, kind):
  text, opts, must = _bad(tmp_path, kind)
  with pytest.raises((ValueError, FileNotFoundError)) as e:
    _load(own.parse(text, **opts))
  msg = str(e.value)
  assert must in msg and "\n" not in msg, msg
  assert not list(own.cache_folder().glob("*.npy")) if own.cache_folder().exists() else True


def test_empty_split_folder_and_bad_specs(tmp_path):
  own_layouts.class_folders(tmp_path / "f", splits=True)
  (tmp_path / "f" / "valid" / "apple").mkdir(parents=True, exist_ok=True)
  for p in (tmp_path / "f" / "valid").rglob("*.png"):
    p.unlink()
  with pytest.raises(ValueError, match="valid/ holds no images"):
    own.read_index(own.parse(f"folder:{tmp_path / 'f'}"))
  for text, opts, match in (("folder", {}, "KIND:PATH"), ("zip:x", {}, "unknown data kind"),
                            ("csv:x.csv", {}, "--label-col"),
                            ("pattern:x", {"label_col": "a"}, "--fields"),
                            ("pattern:x", {"fields": "a,b", "label_col": "c"}, "not one of"),
                            ("folder:x", {"label_col": "y"}, "takes its labels from its layout"),
                            ("folder:x", {"image_size": 4}, "--image-size")):
    with pytest.raises(ValueError, match=match):
      own.parse(text, **opts)


def test_distill_refuses_bad_data_before_writing(tmp_path):
  """The CLI: exit status 2, one line, and no run directory (nothing partial is written)."""
  own_layouts.class_folders(tmp_path / "f")
  env = dict(os.environ, JAXDD_CACHE=str(tmp_path / "cache"), JAX_PLATFORMS="cpu")
  work = tmp_path / "run"
  for extra, must in ((["--ipc", "100"], "'apple'"),
                      (["--weighting", "fairdd"], "has none")):
    r = subprocess.run([sys.executable, "-m", "jaxdd", "distill", "--preset", "smoke", "--data",
                        f"folder:{tmp_path / 'f'}", "--workdir", str(work), "--quiet", *extra],
                       capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and must in lines[0], r.stderr
    assert not work.exists()


def test_inspect_prints_every_split_and_saves_the_cards(tmp_path):
  own_layouts.waterbirds(tmp_path / "wb")
  env = dict(os.environ, JAXDD_CACHE=str(tmp_path / "cache"), JAX_PLATFORMS="cpu")
  r = subprocess.run([sys.executable, "-m", "jaxdd", "data", "inspect",
                      f"csv:{tmp_path / 'wb' / 'metadata.csv'}", "--path-col", "img_filename",
                      "--label-col", "y", "--group-col", "place", "--split-col", "split",
                      "--save-card", str(tmp_path / "cards.json")],
                     capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
  assert r.returncode == 0, r.stderr
  assert r.stdout.count("Dataset card:") == 3 and "majority rule" in r.stdout
  cards = json.loads((tmp_path / "cards.json").read_text())
  assert sorted(cards) == ["test", "train", "valid"]
  assert sum(np.asarray(c["counts"]).sum() for c in cards.values()) == 120


def test_tables_without_group_labels_say_so():
  """The stored-result lines and the final table of a run on data without groups."""
  from jaxdd.runs import tables, text

  nan = float("nan")
  lines = text.format_stored({"method": "dm", "mean": {"overall": 0.5, "aligned": nan,
                                                       "conflicting": None, "worst_group": 0.25},
                              "std": {"overall": 0.1, "aligned": nan, "conflicting": None,
                                      "worst_group": 0.05}})
  assert "worst class       25.00    5.00" in lines and lines.count("n/a") == 2
  row = {"seeds": [0], "per_model": [{"overall": [0.5], "aligned": [None],
                                      "conflicting": [None], "worst_group": [0.25]}],
         "per_seed": {"overall": [0.5], "aligned": [None], "conflicting": [None],
                      "worst_group": [0.25]},
         "bias_aligned_fraction": [None], "valid_conflicting": [0.4], "valid_metric": "overall"}
  table = {"base": {"dataset": "cmnist", "conflict_ratio": 0.05, "data_spec": "folder:x",
                    "ipc": 2, "preset": "smoke", "method": "dm"},
           "protocol": {"name": "smoke", "num_epochs": 4}, "num_models": 1, "seeds": [0],
           "train_aligned_fraction": None, "reference": {}, "rows": {"vanilla": row},
           "paired": {}}
  out = tables.format_table(table)
  assert out.startswith("--data folder:x, IPC 2") and "has no group labels" in out
  assert "| vanilla | 50.0 ± 0.0 | – | – | 25.0 ± 0.0 | – | 40.0 ± 0.0 |" in out


def test_from_arrays_matches_the_npz_layout(tmp_path):
  rng = np.random.default_rng(1)
  x = rng.integers(0, 256, (60, 8, 8, 3), dtype=np.uint8)
  y, g = np.arange(60) % 3, (np.arange(60) // 3) % 2
  np.savez(tmp_path / "a.npz", x=x, y=y, g=g)
  for split in ("train", "valid", "test"):
    a = _load(own.parse(f"npz:{tmp_path / 'a.npz'}"), split)
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", own.HeldOutTestWarning)
      b = own.from_arrays(x, y, groups=g, split=split)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.bias, b.bias)
    np.testing.assert_array_equal(a.aligned, b.aligned)


def test_models_follow_the_resolution():
  from jaxdd.config import get_config

  for size, depth in ((28, 3), (32, 3), (64, 4), (128, 5)):
    cfg = get_config("cpu", data_spec="folder:x", image_size=size)
    assert cfg.depth == depth
    assert cfg.eval_model == ("convnet" if depth == 3 else f"convnet-d{depth}")
  assert get_config("cpu", data_spec="folder:x", image_size=64, depth=3).depth == 3
  assert get_config("cpu").depth == get_config("cpu", data_spec="folder:x").depth == 3
  with pytest.raises(ValueError, match="--label-col describes your own data"):
    get_config("cpu", label_col="y")


def test_a_grey_folder_stays_one_channel(tmp_path):
  rng = np.random.default_rng(2)
  for c in ("a", "b"):
    (tmp_path / "g" / c).mkdir(parents=True)
    for i in range(6):
      Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(
          tmp_path / "g" / c / f"{i}.png")
  ds = _load(own.parse(f"folder:{tmp_path / 'g'}"))
  assert ds.images.shape[1:] == (8, 8, 1) and len(ds.meta["mean"]) == 1
  first = np.asarray(Image.open(tmp_path / "g" / "a" / "0.png"), np.float32) / 255
  assert any(np.array_equal(img[..., 0], first) for img in ds.images)


def test_sixteen_bit_grey_is_scaled_by_its_range_not_clipped():
  # a 16-bit PNG decoded as 8 bits: value v -> round(255 v / 65535); before, every value
  # above 255 became 255 without a word
  import io as io_lib
  from PIL import Image
  from jaxdd.data.own import decoding
  a = np.array([[0, 257, 32768, 65535]], np.uint16)
  buf = io_lib.BytesIO()
  Image.fromarray(a).save(buf, format="PNG")
  im = Image.open(io_lib.BytesIO(buf.getvalue()))
  im.load()
  assert im.mode.startswith("I;16")
  np.testing.assert_array_equal(np.asarray(decoding._to_8bit(im, "x.png", 1)),
                                [[0, 1, 128, 255]])
  rgb = np.asarray(decoding._to_8bit(im, "x.png", 3))
  assert rgb.shape == (1, 4, 3) and rgb[0, 3].tolist() == [255, 255, 255]
  with pytest.raises(ValueError, match="x.tif is a 32-bit integer image"):
    decoding._to_8bit(Image.fromarray(np.array([[1, 70000]], np.int32)), "x.tif", 1)


def test_a_metadata_table_that_is_not_utf8_names_the_file(tmp_path):
  from jaxdd.data.own import readers
  table = tmp_path / "metadata.csv"
  table.write_bytes("path,label\ncafé.png,1\n".encode("latin-1"))
  with pytest.raises(ValueError, match=r"metadata.csv is not UTF-8 text \(byte 14 is 0xe9\); "
                                       "save it as UTF-8"):
    readers._read_table(table)


def test_an_ipc_larger_than_a_class_is_refused_before_any_image_is_decoded(tmp_path,
                                                                             monkeypatch):
  from jaxdd.config import get_config
  from jaxdd.data.own import dataset as own_dataset
  from jaxdd.runs import rundata
  own_layouts.class_folders(tmp_path / "fruit", n=60)
  monkeypatch.setenv("JAXDD_CACHE", str(tmp_path / "cache"))

  def no_decoding(*a, **k):
    raise AssertionError("decoded before the refusal")
  monkeypatch.setattr(own_dataset, "decode", no_decoding)
  config = get_config("smoke", data_spec=f"folder:{tmp_path / 'fruit'}", ipc=500)
  with pytest.raises(ValueError, match="ipc=500 is larger than class"):
    rundata.RunData(config)
  assert not (tmp_path / "cache").exists()
