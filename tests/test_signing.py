"""Signed SynSets: ed25519 over the manifest, the trust policy on load, the CLI."""
import base64
import hashlib
import json
import os

import numpy as np
import pytest

import jaxdd
from jaxdd import cli, synset
from jaxdd.security import signing
from jaxdd.structs import SynSet

pytest.importorskip("cryptography")  # in the lock (requirements.txt); the extra jaxdd[sign]
from cryptography.hazmat.primitives import serialization  # noqa: E402


def _save(path, seed=0):
  rng = np.random.default_rng(seed)
  syn = SynSet(rng.normal(size=(4, 6, 6, 3)).astype(np.float32), np.array([0, 0, 1, 1], np.int32))
  return synset.save(str(path), syn, {"ipc": 2, "dataset": {"name": "cmnist"}},
                     mean=[0.1] * 3, std=[0.3] * 3)


@pytest.fixture()
def keys(tmp_path):
  me = signing.new_keys(str(tmp_path / "keys" / "me"))
  other = signing.new_keys(str(tmp_path / "keys" / "other"))
  return me, other


def _rewrite_arrays(path, images_fn):
  """An attacker's edit: change the images and leave the manifest alone."""
  with np.load(os.path.join(path, "arrays.npz")) as d:
    arrays = {k: d[k] for k in d.files}
  arrays["images"] = images_fn(arrays["images"])
  with open(os.path.join(path, "arrays.npz"), "wb") as f:
    np.savez(f, **arrays)


def _rewrite_manifest(path):
  """The stronger attacker: also recompute every sha256 of the manifest."""
  files = {n: synset.sha256_file(os.path.join(path, n)) for n in ("arrays.npz", "meta.json")}
  with open(os.path.join(path, "manifest.json"), "w") as f:
    json.dump({"files": files}, f, indent=2, sort_keys=True)


def test_new_keys_files_mode_id_and_no_overwrite(tmp_path):
  private, public, kid = signing.new_keys(str(tmp_path / "k"))
  assert (os.stat(private).st_mode & 0o777) == 0o600
  pub = serialization.load_pem_public_key(open(public, "rb").read())
  raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
  assert len(raw) == 32 and kid == hashlib.sha256(raw).hexdigest()[:16]
  assert signing.load_public_key(public).key_id == kid
  before = open(private, "rb").read()
  with pytest.raises(ValueError, match="never overwritten"):
    signing.new_keys(str(tmp_path / "k"))
  assert open(private, "rb").read() == before
  # a name that names no file: refused, nothing written (no hidden .key / .pub)
  (tmp_path / "sub").mkdir()
  for stem in ("", "   ", str(tmp_path / "sub") + os.sep, str(tmp_path / "sub")):
    with pytest.raises(ValueError, match="names no file"):
      signing.new_keys(stem)
  assert list((tmp_path / "sub").iterdir()) == [] and not os.path.exists(".key")


def test_encrypted_private_key_needs_its_passphrase(tmp_path):
  private, _, _ = signing.new_keys(str(tmp_path / "k"), passphrase=b"s3cret")
  assert b"ENCRYPTED" in open(private, "rb").read()
  with pytest.raises(ValueError, match="encrypted"):
    signing.load_private_key(private)
  with pytest.raises(ValueError, match="passphrase is wrong"):
    signing.load_private_key(private, passphrase=b"wrong")
  assert signing.load_private_key(private, passphrase=b"s3cret") is not None


def test_valid_signature_verifies_with_an_independent_check(tmp_path, keys):
  (priv, pub, kid), _ = keys
  path = _save(tmp_path / "syn")
  record = signing.sign_synset(path, signing.load_private_key(priv))
  manifest = open(os.path.join(path, "manifest.json"), "rb").read()
  assert record["manifest_sha256"] == hashlib.sha256(manifest).hexdigest()
  # The signature checks out with cryptography used directly on the documented message.
  key = serialization.load_pem_public_key(open(pub, "rb").read())
  key.verify(base64.b64decode(record["signature"]), signing.CONTEXT + manifest)  # raises if not
  _, meta = signing.load_synset(path, trust=[pub])
  assert meta["signature"] == {"status": "verified", "key_id": kid, "trusted_by": pub}
  _, meta = signing.load_synset(path)  # no anchor: loads, reports who signed it
  assert meta["signature"]["status"] == "signed" and meta["signature"]["key_id"] == kid


def test_unsigned_is_flagged_without_anchor_and_refused_with_one(tmp_path, keys):
  (_, pub, _), _ = keys
  path = _save(tmp_path / "syn")
  _, meta = signing.load_synset(path)
  assert meta["signature"]["status"] == "unsigned"
  assert "UNSIGNED" in signing.SignatureStatus(**meta["signature"]).line()
  with pytest.raises(signing.SignatureError, match="not signed"):
    signing.load_synset(path, trust=[pub])
  assert "signature" not in signing.load_synset(path, trust=False)[1]  # skipped on request
  assert "signature" not in synset.load(path)[1]  # the checksums alone, without a verifier


def test_tampered_array_is_refused(tmp_path, keys):
  (priv, pub, _), _ = keys
  path = _save(tmp_path / "syn")
  signing.sign_synset(path, signing.load_private_key(priv))
  _rewrite_arrays(path, lambda x: x + 0.5)
  for trust in (None, [pub]):
    with pytest.raises(ValueError, match="does not match its sha256"):
      signing.load_synset(path, trust=trust)


def test_rewritten_manifest_breaks_the_signature_even_without_anchor(tmp_path, keys):
  (priv, pub, _), _ = keys
  path = _save(tmp_path / "syn")
  signing.sign_synset(path, signing.load_private_key(priv))
  _rewrite_arrays(path, lambda x: x + 0.5)
  _rewrite_manifest(path)  # the checksums alone now pass...
  for trust in (None, [pub]):
    with pytest.raises(signing.SignatureError, match="changed after signing"):
      signing.load_synset(path, trust=trust)


def test_signature_from_another_key(tmp_path, keys):
  (_, pub, _), (other_priv, _, other_id) = keys
  path = _save(tmp_path / "syn")
  _rewrite_arrays(path, lambda x: -x)  # the attacker changes the set, rebuilds the manifest...
  _rewrite_manifest(path)
  signing.sign_synset(path, signing.load_private_key(other_priv))  # ...and signs with own key
  with pytest.raises(signing.SignatureError, match=f"signed by key {other_id}, which is not"):
    signing.load_synset(path, trust=[pub])
  _, meta = signing.load_synset(path)  # without an anchor it loads, and says whose key it is
  assert meta["signature"]["status"] == "signed" and meta["signature"]["key_id"] == other_id


def test_malformed_signature_file_and_swapped_key(tmp_path, keys):
  (priv, pub, _), (other_priv, _, _) = keys
  path = _save(tmp_path / "syn")
  record = signing.sign_synset(path, signing.load_private_key(priv))
  sig = os.path.join(path, signing.SIGNATURE_FILE)
  with open(sig, "w") as f:
    f.write("{not json")
  with pytest.raises(signing.SignatureError, match="not a valid"):
    signing.load_synset(path)
  # The trusted key's bytes pasted over a signature made by another key.
  other = signing.sign_manifest_bytes(open(os.path.join(path, "manifest.json"), "rb").read(),
                                      signing.load_private_key(other_priv))
  other["public_key"] = record["public_key"]
  with open(sig, "w") as f:
    json.dump(other, f)
  with pytest.raises(signing.SignatureError, match="does not match"):
    signing.load_synset(path, trust=[pub])


def test_synset_load_runs_the_verifier_it_is_given(tmp_path, keys):
  (priv, _, kid), _ = keys
  path = _save(tmp_path / "syn")
  signing.sign_synset(path, signing.load_private_key(priv))
  seen = []
  def verify(p, manifest):
    seen.append((p, manifest))
    return {"status": "checked"}
  _, meta = synset.load(path, verify=verify)
  assert meta["signature"] == {"status": "checked"}
  assert seen == [(path, open(os.path.join(path, "manifest.json"), "rb").read())]
  _, meta = synset.load(path, verify=signing.verifier())
  assert meta["signature"]["status"] == "signed" and meta["signature"]["key_id"] == kid
  assert jaxdd.load_synset is signing.load_synset


def test_trust_from_environment_folder(tmp_path, keys, monkeypatch):
  (priv, _, kid), _ = keys
  path = _save(tmp_path / "syn")
  signing.sign_synset(path, signing.load_private_key(priv))
  monkeypatch.setenv(signing.TRUST_ENV, str(tmp_path / "keys"))  # both .pub files trusted
  assert signing.load_synset(path)[1]["signature"]["status"] == "verified"
  empty = tmp_path / "empty"
  empty.mkdir()
  monkeypatch.setenv(signing.TRUST_ENV, str(empty))
  with pytest.raises(FileNotFoundError, match="without \\*.pub"):
    signing.load_synset(path)
  monkeypatch.setenv(signing.TRUST_ENV, "")
  assert signing.load_synset(path)[1]["signature"]["key_id"] == kid


def test_sign_refuses_a_damaged_artifact_and_finds_runs(tmp_path, keys):
  (priv, _, _), _ = keys
  work = tmp_path / "work"
  good, bad = _save(work / "dm" / "synset"), _save(work / "dm_kde" / "synset", seed=1)
  assert signing.find_synsets(str(work)) == [good, bad]
  _rewrite_arrays(bad, lambda x: x * 2)
  rc = cli.main(["sign", str(work), "--key", priv, "--quiet"])
  assert rc == 2
  assert not any(os.path.exists(os.path.join(p, signing.SIGNATURE_FILE)) for p in (good, bad))
  with pytest.raises(FileNotFoundError, match="no SynSet artifact"):
    signing.find_synsets(str(tmp_path / "keys"))


def test_cli_keys_sign_verify_and_evaluate_refusal(tmp_path, capsys):
  stem = str(tmp_path / "team")
  assert cli.main(["keys", "new", stem, "--quiet"]) == 0
  assert cli.main(["keys", "new", stem, "--quiet"]) == 2  # never overwritten
  work = tmp_path / "work"
  a, b = _save(work / "a" / "synset"), _save(work / "b" / "synset", seed=1)
  assert cli.main(["verify", str(work), "--trust", stem + ".pub", "--quiet"]) == 1  # unsigned
  assert cli.main(["sign", str(work), "--key", stem + ".key", "--quiet"]) == 0
  capsys.readouterr()
  assert cli.main(["verify", str(work), "--trust", stem + ".pub", "--quiet"]) == 0
  out = capsys.readouterr().out
  assert out.count("signature: verified") == 2
  _rewrite_arrays(b, lambda x: x + 1)
  _rewrite_manifest(b)
  assert cli.main(["verify", str(work), "--trust", stem + ".pub", "--quiet"]) == 1
  out = capsys.readouterr().out
  assert f"{a}: signature: verified" in out and f"{b}: REFUSED" in out
  # evaluate checks the signature before any work: an untrusted artifact ends it at once
  assert cli.main(["evaluate", b, "--trust", stem + ".pub", "--quiet"]) == 2
  assert "changed after signing" in capsys.readouterr().err
  assert cli.main(["verify", str(work), "--quiet"]) == 2  # verify needs an anchor
  assert "needs a trust anchor" in capsys.readouterr().err


@pytest.mark.parametrize("mode", [0o644, 0o666, 0o640, 0o604, 0o620])
def test_a_private_key_others_may_read_or_write_is_refused_naming_chmod(tmp_path, capsys, mode):
  stem = str(tmp_path / "me")
  assert cli.main(["keys", "new", stem, "--quiet"]) == 0
  key = stem + ".key"
  assert os.stat(key).st_mode & 0o777 == 0o600  # as keys new writes it
  work = tmp_path / "work"
  syn = _save(work / "synset")
  os.chmod(key, mode)
  capsys.readouterr()
  assert cli.main(["sign", str(work), "--key", key, "--quiet"]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and f"run `chmod 600 {key}`" in err[0] and f"{mode:04o}" in err[0], err
  assert not os.path.exists(os.path.join(syn, signing.SIGNATURE_FILE))
  with pytest.raises(ValueError, match="others may read or write"):
    signing.load_private_key(key)
  os.chmod(key, 0o600)  # the fix it names
  assert cli.main(["sign", str(work), "--key", key, "--quiet"]) == 0
  assert os.path.exists(os.path.join(syn, signing.SIGNATURE_FILE))
