"""Signed SynSet artifacts: ed25519 signatures over the manifest, checked on load.

A SynSet's ``manifest.json`` holds the sha256 of every file of the artifact
(``arrays.npz``: images, labels, normalisation; ``meta.json``: dataset, config,
preprocessing), so it detects corruption. It does not stop an attacker, who can
rewrite the manifest as well. A signature over the manifest does: whoever holds
the private key vouches for exactly these bytes, and anybody with the public key
can check it.

* ``jaxdd keys new NAME`` writes ``NAME.key`` (private, PKCS#8 PEM, mode 0600,
  optionally encrypted with a passphrase) and ``NAME.pub`` (public, PEM).
* ``jaxdd sign PATH --key NAME.key`` writes ``signature.json`` next to the
  manifest of the SynSet at PATH, or of every SynSet below PATH (a run or a
  work directory).
* Loading (:func:`load_synset`, also ``jaxdd.load_synset``; ``jaxdd evaluate``,
  ``jaxdd audit``) checks the signature. With a trust anchor configured (``--trust KEY.pub`` or
  the environment variable ``JAXDD_TRUSTED_KEYS``, a list of ``.pub`` files or
  folders of them separated by ``os.pathsep``) an unsigned artifact, a signature
  by another key and a signature that does not verify are all refused. Without
  one, the artifact loads and its status (``unsigned``, or signed by key id X
  but not checked against a trusted key) is reported. A signature that does not
  verify against the key it names is refused in either case: the manifest was
  changed after signing.

What is signed: the bytes of ``manifest.json`` after a fixed domain-separation
prefix (:data:`CONTEXT`), so a signature made for something else cannot be
replayed onto a manifest. The key id is the first 16 hex digits of the sha256 of
the raw 32-byte public key. ``cryptography`` provides ed25519 (the optional
extra ``jaxdd[sign]``); only signing, key creation and checking a signature
need it.
"""
from __future__ import annotations

import base64
import dataclasses
import glob
import hashlib
import os
import shlex
from typing import Iterable, Sequence

from jaxdd import synset as synset_lib
from jaxdd._src import io as _io
from jaxdd._src import schema
from jaxdd.structs import SynSet

#: Signature file written next to ``manifest.json``.
SIGNATURE_FILE = "signature.json"
#: The largest key file read (a PEM ed25519 key is a few hundred bytes).
_KEY_BYTES = 64 * 1024
#: Signature format tag.
FORMAT = "jaxdd-signature-v1"
#: Prefix of the signed message (domain separation).
CONTEXT = b"jaxdd SynSet manifest v1\n"
#: Environment variable naming the trusted public keys.
TRUST_ENV = "JAXDD_TRUSTED_KEYS"

_INSTALL = "pip install 'cryptography==50.0.2' (or the extra: pip install 'jaxdd[sign]')"


class SignatureError(ValueError):
  """An artifact whose signature is missing, untrusted or invalid under the trust policy."""


def _crypto():
  # Imported on first use: `cryptography` is an optional dependency (the extra jaxdd[sign]).
  try:
    from cryptography.exceptions import InvalidSignature  # noqa: PLC0415
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import ed25519  # noqa: PLC0415
  except ImportError as e:
    raise ImportError(f"signatures need the `cryptography` package: {_INSTALL}") from e
  return ed25519, serialization, InvalidSignature


def require_crypto() -> None:
  """Raises an ImportError naming the install command when ``cryptography`` is missing
  (signing and keys check it before writing anything)."""
  _crypto()


# ---------------------------------------------------------------------------
# Keys
# ---------------------------------------------------------------------------


def key_id(public_raw: bytes) -> str:
  """The id of a public key: the first 16 hex digits of sha256 of its 32 raw bytes."""
  return hashlib.sha256(public_raw).hexdigest()[:16]


def _raw_public(public_key) -> bytes:
  _, serialization, _ = _crypto()
  return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def new_keys(path_stem: str, *, passphrase: bytes | None = None) -> tuple[str, str, str]:
  """Creates an ed25519 key pair: ``PATH_STEM.key`` (private) and ``PATH_STEM.pub``.

  The private key is PKCS#8 PEM with mode 0600, encrypted when ``passphrase``
  is given; the public key is SubjectPublicKeyInfo PEM. Existing files are never
  overwritten.

  Returns:
    ``(private_path, public_path, key_id)``.
  """
  if not os.path.basename(os.fspath(path_stem)).strip() or os.path.isdir(path_stem):
    raise ValueError(f"key name {path_stem!r} names no file (blank, or a folder); give a name, "
                     "e.g. keys/me for keys/me.key and keys/me.pub")
  ed25519, serialization, _ = _crypto()
  private_path, public_path = path_stem + ".key", path_stem + ".pub"
  for p in (private_path, public_path):
    if os.path.lexists(p):
      raise ValueError(f"{p} already exists; keys are never overwritten: choose another NAME or "
                       "remove the old key pair first")
  key = ed25519.Ed25519PrivateKey.generate()
  encryption = (serialization.BestAvailableEncryption(passphrase) if passphrase
                else serialization.NoEncryption())
  private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  encryption)
  public = key.public_key()
  public_pem = public.public_bytes(serialization.Encoding.PEM,
                                   serialization.PublicFormat.SubjectPublicKeyInfo)
  directory = os.path.dirname(os.path.abspath(private_path))
  os.makedirs(directory, exist_ok=True)
  _io.atomic_write_bytes(public_path, public_pem)
  # The private key: created 0600 from the start, never readable by others.
  tmp = private_path + ".tmp"
  fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(private_pem)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, private_path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    if os.path.exists(public_path):
      os.unlink(public_path)
    raise
  return private_path, public_path, key_id(_raw_public(public))


def load_private_key(path: str, *, passphrase: bytes | None = None):
  """Reads an ed25519 private key written by :func:`new_keys` (clear errors otherwise).

  As ssh does, a key file that others may read or write (any group or other permission, e.g.
  mode 0644 or 0666) is refused, naming ``chmod 600 PATH``: a key others can read signs for
  them too, one they can write is not yours.
  """
  ed25519, serialization, _ = _crypto()
  if not os.path.isfile(path):
    raise FileNotFoundError(f"no private key at {path}; create one with `jaxdd keys new NAME`")
  mode = os.stat(path).st_mode & 0o777
  if os.name == "posix" and mode & 0o077:
    raise ValueError(f"{path} is a private key that others may read or write (mode "
                     f"{mode:04o}); refusing it: "
                     f"run `chmod 600 {shlex.quote(path)}` and sign again (if others could "
                     "copy it, make a new key with `jaxdd keys new NAME`)")
  data = _io.read_bounded(path, _KEY_BYTES, fix="pass the .key file written by `jaxdd keys new`")
  try:
    key = serialization.load_pem_private_key(data, password=passphrase)
  except TypeError as e:
    if passphrase is None:
      raise ValueError(f"{path} is encrypted; pass its passphrase (--passphrase-env VAR names "
                       "the environment variable holding it)") from e
    raise ValueError(f"{path}: {e}") from e
  except ValueError as e:
    raise ValueError(f"{path} is not a readable private key or the passphrase is wrong ({e}); "
                     "use a key written by `jaxdd keys new`") from e
  if not isinstance(key, ed25519.Ed25519PrivateKey):
    raise ValueError(f"{path} holds a {type(key).__name__}, not an ed25519 key; create one with "
                     "`jaxdd keys new NAME`")
  return key


@dataclasses.dataclass(frozen=True)
class PublicKey:
  """A trusted public key: its raw bytes, id and the file it came from."""
  raw: bytes
  key_id: str
  source: str


def load_public_key(path: str) -> PublicKey:
  """Reads an ed25519 public key (``.pub`` PEM written by :func:`new_keys`)."""
  ed25519, serialization, _ = _crypto()
  if not os.path.isfile(path):
    raise FileNotFoundError(f"no public key at {path}; pass the .pub file written by "
                            "`jaxdd keys new`")
  data = _io.read_bounded(path, _KEY_BYTES, fix="pass the .pub file written by `jaxdd keys new`")
  try:
    key = serialization.load_pem_public_key(data)
  except ValueError as e:
    raise ValueError(f"{path} is not a readable public key ({e}); pass the .pub file written by "
                     "`jaxdd keys new`") from e
  if not isinstance(key, ed25519.Ed25519PublicKey):
    raise ValueError(f"{path} holds a {type(key).__name__}, not an ed25519 public key")
  raw = _raw_public(key)
  return PublicKey(raw, key_id(raw), path)


def trusted_keys(trust: Iterable[str] | str | None = None) -> list[PublicKey] | None:
  """The trust anchors: the given ``.pub`` files / folders, else ``$JAXDD_TRUSTED_KEYS``.

  Args:
    trust: paths (a list, or one string separated by ``os.pathsep`` or commas)
      of public keys or of folders whose ``*.pub`` files are trusted; None reads
      the environment variable.

  Returns:
    The keys, or None when no anchor is configured (the artifact is then
    loaded and its signature status only reported).
  """
  if trust is None:
    trust = os.environ.get(TRUST_ENV, "")
    origin = f"${TRUST_ENV}"
  else:
    origin = "--trust"
  if isinstance(trust, str):
    parts = [p for chunk in trust.split(os.pathsep) for p in chunk.split(",")]
  else:
    parts = list(trust)
  parts = [p.strip() for p in parts if p and p.strip()]
  if not parts:
    return None
  keys: list[PublicKey] = []
  for p in parts:
    if os.path.isdir(p):
      files = sorted(glob.glob(os.path.join(p, "*.pub")))
      if not files:
        raise FileNotFoundError(f"{origin} names {p}, a folder without *.pub files; put the "
                                "trusted public keys there")
      keys.extend(load_public_key(f) for f in files)
    else:
      keys.append(load_public_key(p))
  return keys


# ---------------------------------------------------------------------------
# Signing and checking
# ---------------------------------------------------------------------------


def _b64(data: bytes) -> str:
  return base64.b64encode(data).decode("ascii")


def sign_manifest_bytes(manifest: bytes, private_key) -> dict:
  """The signature record of ``manifest`` (the JSON written as ``signature.json``)."""
  raw = _raw_public(private_key.public_key())
  return {"format": FORMAT, "algorithm": "ed25519", "key_id": key_id(raw),
          "public_key": _b64(raw), "manifest_sha256": hashlib.sha256(manifest).hexdigest(),
          "signature": _b64(private_key.sign(CONTEXT + manifest))}


def sign_synset(path: str, private_key) -> dict:
  """Signs the SynSet artifact at ``path`` (writes ``signature.json`` atomically).

  The artifact is verified first (every file against its manifest): a damaged
  artifact is refused, never signed.
  """
  synset_lib.load(path)  # refuses a damaged or incomplete artifact
  manifest = _io.read_bounded(os.path.join(path, "manifest.json"), _io.MAX_JSON_BYTES,
                              fix="re-create the artifact")
  record = sign_manifest_bytes(manifest, private_key)
  _io.atomic_write_json(os.path.join(path, SIGNATURE_FILE), record)
  return record


def find_synsets(path: str) -> list[str]:
  """``path`` itself if it is a SynSet artifact, else every SynSet artifact below it."""
  def is_synset(d):
    return all(os.path.isfile(os.path.join(d, f)) for f in ("manifest.json", "arrays.npz",
                                                               "meta.json"))
  if not os.path.isdir(path):
    raise FileNotFoundError(f"{path} is not a directory; pass a SynSet artifact, a run "
                            "directory or a work directory of runs")
  if is_synset(path):
    return [path]
  found = []
  for root, dirs, _ in os.walk(path):
    dirs[:] = sorted(d for d in dirs if not d.startswith("."))
    if is_synset(root):
      found.append(root)
      dirs[:] = []
  if not found:
    raise FileNotFoundError(f"no SynSet artifact (manifest.json + arrays.npz + meta.json) at "
                            f"or below {path}")
  return found


@dataclasses.dataclass(frozen=True)
class SignatureStatus:
  """What the signature check found.

  ``status`` is ``"verified"`` (signed by a trusted key), ``"signed"`` (a valid
  signature, but no trust anchor was configured to judge the key), or
  ``"unsigned"``; ``"unchecked"`` when a signature is present but the
  ``cryptography`` package is not installed and no trust anchor asks for it.
  """
  status: str
  key_id: str | None = None
  trusted_by: str | None = None

  def line(self) -> str:
    if self.status == "verified":
      return f"signature: verified (key {self.key_id}, trusted via {self.trusted_by})"
    if self.status == "signed":
      return (f"signature: signed by key {self.key_id}, NOT checked against a trusted key "
              f"(pass --trust KEY.pub or set {TRUST_ENV})")
    if self.status == "unchecked":
      return (f"signature: present (key {self.key_id}) but NOT checked: {_INSTALL}")
    return (f"signature: UNSIGNED (anyone could have changed this artifact and its manifest; "
            f"sign with `jaxdd sign`, check with --trust or {TRUST_ENV})")

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)


#: What :func:`check` requires of ``signature.json``.
_RECORD = schema.obj({k: schema.STR for k in ("format", "algorithm", "public_key", "signature")})


def check(path: str, manifest: bytes, trust: Sequence[PublicKey] | None) -> SignatureStatus:
  """Checks the signature of the artifact at ``path`` whose manifest bytes are ``manifest``.

  Raises:
    SignatureError: the signature does not verify (always), or a trust anchor
      is configured and the artifact is unsigned or signed by another key.
  """
  sig_path = os.path.join(path, SIGNATURE_FILE)
  if not os.path.exists(sig_path):
    if trust:
      raise SignatureError(f"{path} is not signed, and trusted keys are configured "
                           f"({', '.join(k.key_id for k in trust)}); refusing it. Ask its author "
                           "to sign it (`jaxdd sign`), or load it without a trust anchor")
    return SignatureStatus("unsigned")
  try:
    record = schema.read_json(sig_path, _RECORD, fix="")
    if record["format"] != FORMAT or record["algorithm"] != "ed25519":
      raise KeyError("format")
    raw = base64.b64decode(record["public_key"], validate=True)
    signature = base64.b64decode(record["signature"], validate=True)
  except (KeyError, ValueError) as e:
    what = e.problem if isinstance(e, schema.FileFormatError) else repr(e)
    raise SignatureError(f"{sig_path} is not a valid {FORMAT} record ({what}); refusing the "
                         "artifact. Re-sign it with `jaxdd sign`") from e
  try:
    ed25519, _, InvalidSignature = _crypto()
  except ImportError:
    if trust:
      raise
    return SignatureStatus("unchecked", hashlib.sha256(raw).hexdigest()[:16])
  try:
    ed25519.Ed25519PublicKey.from_public_bytes(raw).verify(signature, CONTEXT + manifest)
  except (InvalidSignature, ValueError) as e:
    raise SignatureError(f"{path}: the signature does not match manifest.json: the manifest "
                         "was changed after signing (or the signature was forged); refusing "
                         "the artifact") from e
  kid = key_id(raw)
  if trust is None:
    return SignatureStatus("signed", kid)
  for k in trust:
    if k.raw == raw:
      return SignatureStatus("verified", kid, k.source)
  raise SignatureError(f"{path} is signed by key {kid}, which is not among the trusted keys "
                       f"({', '.join(k.key_id for k in trust) or 'none'}); refusing it")


def verifier(trust=None) -> synset_lib.Verifier:
  """The signature check that :func:`jaxdd.synset.load` runs, under a trust policy.

  The trust anchors are read when the check runs (once the artifact's manifest
  is read), so a missing artifact is reported before a misconfigured anchor.

  Args:
    trust: the trusted public keys: :class:`PublicKey` objects, or ``.pub``
      paths or folders (a list, or one string separated by ``os.pathsep`` or
      commas); None reads ``$JAXDD_TRUSTED_KEYS`` (no anchor when unset: the
      artifact loads and its signature status is reported).

  Returns:
    ``verify(path, manifest_bytes)``: raises :class:`SignatureError` under the
    policy of :func:`check`, else returns the :class:`SignatureStatus` as a dict.
  """
  def verify(path: str, manifest: bytes) -> dict:
    anchors = list(trust) if _is_key_list(trust) else trusted_keys(trust)
    return check(path, manifest, anchors).to_dict()
  return verify


def load_synset(path: str, *, trust=None) -> tuple[SynSet, dict]:
  """Loads a SynSet artifact, checking its checksums and its signature.

  :func:`jaxdd.synset.load` with the signature check of :func:`verifier`.

  Args:
    path: the artifact directory.
    trust: the trusted public keys (see :func:`verifier`); None reads
      ``$JAXDD_TRUSTED_KEYS``; False skips the signature check (a run
      re-reading the artifact it wrote itself).

  Returns:
    ``(syn, meta)``; ``meta`` includes ``mean`` and ``std``, and ``signature``
    (the :class:`SignatureStatus` as a dict) unless ``trust`` is False.

  Raises:
    FileNotFoundError: the directory or one of its files is missing.
    ValueError: a file does not match the manifest (corrupted or truncated),
      or the arrays are malformed.
    SignatureError: the signature does not verify, or trust anchors are
      configured and the artifact is unsigned or signed by an untrusted key.
  """
  return synset_lib.load(path, verify=None if trust is False else verifier(trust))


def _is_key_list(trust) -> bool:
  return (isinstance(trust, (list, tuple)) and bool(trust)
          and all(isinstance(k, PublicKey) for k in trust))
