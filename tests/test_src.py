"""jaxdd._src: the shared atomic writes, digests, cache root and image check."""
import hashlib
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdd import synset
from jaxdd._src import checks
from jaxdd._src import io as jio


def test_public_aliases_are_the_shared_functions():
  from jaxdd.data import sources
  assert synset.atomic_write_bytes is jio.atomic_write_bytes
  assert synset.atomic_write_json is jio.atomic_write_json
  assert synset.sha256_file is jio.sha256_file
  assert sources.array_sha256 is jio.array_sha256


def test_atomic_write_failure_keeps_old_file_and_leaves_no_temp(tmp_path):
  path = tmp_path / "f.bin"
  jio.atomic_write_bytes(path, b"old")

  def boom(f):
    f.write(b"partial")
    raise RuntimeError("disk full")

  with pytest.raises(RuntimeError, match="disk full"):
    jio.atomic_write_bytes(path, boom, durable=False)
  assert path.read_bytes() == b"old"
  assert os.listdir(tmp_path) == ["f.bin"]
  assert (path.stat().st_mode & 0o777) == 0o644


def test_atomic_directory_replaces_or_keeps(tmp_path):
  target = tmp_path / "d"
  with jio.atomic_directory(target) as tmp:
    (open(os.path.join(tmp, "a"), "w")).write("1")
  with pytest.raises(ValueError):
    with jio.atomic_directory(target) as tmp:
      (open(os.path.join(tmp, "b"), "w")).write("2")
      raise ValueError("stop")
  assert os.listdir(target) == ["a"] and os.listdir(tmp_path) == ["d"]
  with jio.atomic_directory(target) as tmp:
    (open(os.path.join(tmp, "c"), "w")).write("3")
  assert os.listdir(target) == ["c"] and os.listdir(tmp_path) == ["d"]


def test_sha256_file_and_arrays(tmp_path):
  path = tmp_path / "x"
  path.write_bytes(b"abc" * 1000)
  assert jio.sha256_file(path) == hashlib.sha256(b"abc" * 1000).hexdigest()
  h = hashlib.sha256()
  jio.sha256_file(path, into=h)
  jio.sha256_file(path, into=h)
  assert h.hexdigest() == hashlib.sha256(b"abc" * 2000).hexdigest()
  a = np.arange(6, dtype=np.int32).reshape(2, 3)
  ref = hashlib.sha256(f"{a.dtype.str}|{a.shape}|".encode() + a.tobytes()).hexdigest()
  assert jio.array_sha256(a) == ref
  assert jio.array_sha256(a, sep="") != ref


def test_cache_root_reads_env(monkeypatch, tmp_path):
  monkeypatch.setenv("JAXDD_CACHE", str(tmp_path))
  assert jio.cache_root("surrogates") == tmp_path / "surrogates"
  monkeypatch.setenv("JAXDD_CACHE", "")
  assert jio.cache_root() == jio.cache_root().expanduser()
  assert jio.cache_root().parts[-2:] == (".cache", "jaxdd")


def test_check_images_messages_name_the_caller():
  with pytest.raises(ValueError, match=r"^f: images must be an NHWC batch \(N >= 1, H, W, C\)"):
    checks.check_images(np.zeros((0, 2, 2, 1), np.float32), "f", min_count=1)
  with pytest.raises(ValueError, match=r"^f: images must have 3 channels last"):
    checks.check_images(np.zeros((1, 2, 2, 1), np.float32), "f", channels=(3,))
  with pytest.raises(ValueError, match=r"^f: x must be float, got dtype int32; do this"):
    checks.check_images(np.zeros((1, 2, 2, 1), np.int32), "f", what="x", float_fix="do this")
  with pytest.raises(ValueError, match=r"^f: images contain NaN or Inf"):
    checks.check_images(jnp.full((1, 2, 2, 1), jnp.nan), "f")
  checks.check_images(np.zeros((1, 2, 2, 1), jnp.bfloat16), "f")  # bfloat16 is a float
  # Traced: shape and dtype are checked, values are not.
  jax.jit(lambda x: checks.check_images(x, "f") or x)(jnp.full((1, 2, 2, 1), jnp.nan))
  with pytest.raises(ValueError, match="NHWC"):
    jax.jit(lambda x: checks.check_images(x, "f") or x)(jnp.ones((2, 2, 1)))


@pytest.mark.parametrize("text,problem", [
    ('{"a": "b', "is not valid JSON (Unterminated string starting at line 1 column 7)"),
    ('{"a": 1,', "is not valid JSON (Expecting property name enclosed in double quotes at "
                 "line 1 column 9)")])
def test_a_broken_json_file_is_one_line_saying_where(tmp_path, text, problem):
  from jaxdd._src import schema
  path = tmp_path / "x.json"
  path.write_text(text)
  with pytest.raises(schema.FileFormatError) as e:
    schema.read_json(path, schema.ANY, fix="delete it")
  assert str(e.value) == f"{path}: {problem}; delete it"
