"""The SynSet artifact: arrays in a safe format, JSON metadata, sha256 manifest.

Layout of an artifact directory::

    synset/
      arrays.npz      images (n, H, W, C) float32 (normalised space), labels (n,) int32,
                      mean (C,), std (C,)  -- numpy .npz, never pickled
      meta.json       dataset + ratio + seed, preprocessing, IPC, method, weights
                      config, architecture spec, evaluation protocol, code version
      manifest.json   {"files": {"arrays.npz": "<sha256>", "meta.json": "<sha256>"}}
      signature.json  optional: an ed25519 signature over manifest.json
                      (``jaxdd sign``; :mod:`jaxdd.security.signing`)

The directory is written under a temporary name and renamed into place, so a
reader never sees half an artifact. :func:`load` re-hashes every file and
detects a corrupted or truncated one (a checksum); the signature, checked
against trusted public keys by the verifier that
:func:`jaxdd.security.signing.load_synset` hands to :func:`load`, detects an
attacker who rewrote the manifest too.

Example:
  >>> import numpy as np, tempfile, os
  >>> from jaxdd import synset
  >>> from jaxdd.structs import SynSet
  >>> s = SynSet(np.zeros((2, 4, 4, 3), np.float32), np.array([0, 1], np.int32))
  >>> d = os.path.join(tempfile.mkdtemp(), "syn")
  >>> synset.save(d, s, {"ipc": 1}, mean=[0.5] * 3, std=[0.25] * 3) == d
  True
  >>> loaded, meta = synset.load(d)
  >>> meta["ipc"], loaded.images.shape
  (1, (2, 4, 4, 3))
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from jaxdd._src import checks
from jaxdd._src import io as _io
from jaxdd._src import memory
from jaxdd._src import schema
from jaxdd.structs import SynSet

FORMAT_VERSION = 1
_FILES = ("arrays.npz", "meta.json")

#: A signature check handed to :func:`load`: ``verify(path, manifest_bytes)``
#: raises to refuse the artifact, or returns the record stored as
#: ``meta["signature"]`` (None: nothing stored).
Verifier = Callable[[str, bytes], "dict | None"]

# The package's atomic writes and file digest (owned by jaxdd._src.io), public
# under these names because run drivers and tests use them.
sha256_file = _io.sha256_file
atomic_write_bytes = _io.atomic_write_bytes
atomic_write_json = _io.atomic_write_json


def _check_replaceable(path: str) -> None:
  """A SynSet replaces only a SynSet (a folder with ``manifest.json`` and ``arrays.npz``) or
  an empty folder: never a file, a link, or a folder of other files."""
  if not os.fspath(path):
    raise ValueError("synset.save: the path is empty; give a new folder, e.g. "
                     "synset")
  if not os.path.lexists(path):
    return
  real, here = os.path.realpath(path), os.path.realpath(os.getcwd())
  if os.path.commonpath([real, here]) == real:
    what = "the current folder" if real == here else "a folder that holds the current folder"
    raise ValueError(f"synset.save: {path} is {what}, and a SynSet replaces its folder whole; "
                     f"give a new folder, e.g. {os.path.join(path, 'synset')}")
  if os.path.islink(path) or not os.path.isdir(path):
    raise ValueError(f"synset.save: {path} exists and is not a folder; give the path of a new "
                     "folder, or of a SynSet to replace")
  names = sorted(os.listdir(path))
  if names and not {"manifest.json", "arrays.npz"} <= set(names):
    raise ValueError(f"synset.save: {path} holds {_io.listed(names)}, which is not a SynSet; "
                     "give a new or empty folder, or a SynSet to replace")


def save(path: str, syn: SynSet, meta: Mapping[str, Any], *, mean: Sequence[float],
         std: Sequence[float]) -> str:
  """Saves a SynSet artifact atomically (see the module docstring).

  Args:
    path: the artifact directory to create; an existing SynSet or empty folder there is
      replaced, anything else refused (a file, a folder of other files).
    syn: the synthetic set (images in the normalised space).
    meta: JSON-able metadata. Keys that jaxdd reads back have a form, checked here:
      ``dataset`` an object (``{"name": "cmnist", "ratio": 0.05, "severity": None, "seed":
      0}``: the dataset's meta, as :func:`jaxdd.data.load` gives it; a user's data add
      ``kind: "own"``, ``spec`` and ``data_sha256``), ``config`` an object (the run's flat
      config), ``method`` a string, ``ipc`` an int, ``eval_protocol`` a string or None,
      ``class_names`` a list of strings; other keys are free.
    mean, std: the per-channel normalisation, so that the set can be
      de-normalised and the test set normalised the same way.

  Returns:
    ``path``.

  Nothing is changed without a word: images are stored as float32 and labels as int32, and
  images or labels those types would change (float64 values that float32 rounds, labels
  that are not integers or exceed int32) are refused in one line; ``mean`` and ``std`` are
  stored exactly (float32 when they are float32 numbers, else float64). What :func:`load`
  would refuse is refused here, before anything is written: malformed images, negative
  labels, a mean or std that is not finite or a std that is not positive, a count that
  ``meta``'s ``ipc`` and ``class_names`` contradict; and so is the current folder (or one
  holding it), which cannot be replaced whole.
  """
  images = _exact(syn.images, np.float32, "syn.images")
  labels = _exact(syn.labels, np.int32, "syn.labels")
  mean, std = _stats(mean, "mean"), _stats(std, "std")
  checks.check_images(images, "synset.save", what="syn.images",
                      finite_fix="refusing to save a broken artifact")
  if labels.shape != (images.shape[0],):
    raise ValueError(f"synset.save: syn.labels must have shape ({images.shape[0]},) to match "
                     f"syn.images {images.shape}, got {labels.shape}")
  if mean.shape != (images.shape[-1],) or std.shape != (images.shape[-1],):
    raise ValueError(f"mean/std need one value per channel ({images.shape[-1]}), "
                     f"got {mean.shape} and {std.shape}")
  refused = _arrays_problem(images, labels, mean, std) or _count_problem(images.shape[0], meta)
  if refused is not None:  # save refuses what load would refuse
    problem, fix = refused
    raise ValueError(f"synset.save: {problem}, which synset.load refuses; {fix}")
  full_meta = dict(meta)
  full_meta.update(format_version=FORMAT_VERSION, num_images=int(images.shape[0]),
                   image_shape=list(images.shape[1:]), mean=mean.tolist(), std=std.tolist())
  try:  # save refuses what load would refuse
    schema.check(json.loads(json.dumps(full_meta, default=_io.json_default)), META,
                 path="synset.save meta", fix="pass those keys in the documented form or "
                 "rename them (other keys are free)")
  except schema.FileFormatError as e:
    raise ValueError(str(e)) from None
  _check_replaceable(path)
  with _io.atomic_directory(path, prefix=".tmp-synset-") as tmp:
    with open(os.path.join(tmp, "arrays.npz"), "wb") as f:
      np.savez(f, images=images, labels=labels, mean=mean, std=std)
    with open(os.path.join(tmp, "meta.json"), "w") as f:
      json.dump(full_meta, f, indent=2, sort_keys=True, default=_io.json_default)
    manifest = {"files": {name: sha256_file(os.path.join(tmp, name)) for name in _FILES}}
    with open(os.path.join(tmp, "manifest.json"), "w") as f:
      json.dump(manifest, f, indent=2, sort_keys=True)
  return path


def _exact(x, dtype, what: str) -> np.ndarray:
  """``x`` as ``dtype``, refused in one line when that changes a value."""
  arr = np.asarray(x)
  if arr.dtype == dtype:
    return arr
  kind = "floats" if np.issubdtype(dtype, np.floating) else "integers"
  if (np.issubdtype(dtype, np.integer) and not (np.issubdtype(arr.dtype, np.integer)
                                                 or arr.dtype == np.bool_)
      and not (np.issubdtype(arr.dtype, np.floating) and np.all(np.mod(arr, 1) == 0))):
    raise ValueError(f"synset.save: {what} are {arr.dtype}, not integers; pass class indices")
  with np.errstate(invalid="ignore", over="ignore"):
    out = arr.astype(dtype)
    changed = ~((out.astype(arr.dtype) == arr) | (np.isnan(arr) if arr.dtype.kind == "f"
                                                   else False))
  if np.any(changed):
    raise ValueError(f"synset.save: {int(changed.sum())} of {what} ({arr.dtype}) change as "
                     f"{np.dtype(dtype).name} {kind}, which a SynSet stores (e.g. "
                     f"{arr[changed].flat[0]!r} -> {out[changed].flat[0]!r}); pass "
                     f"{what}.astype(np.{np.dtype(dtype).name}) to store them so")
  return out


def _stats(x, what: str) -> np.ndarray:
  """Per-channel ``mean``/``std`` as stored: float32 when that is exact, else float64."""
  arr = np.asarray(x, np.float64).reshape(-1)
  f32 = arr.astype(np.float32)
  return f32 if np.array_equal(f32.astype(np.float64), arr) else arr


#: The largest file of an artifact that :func:`load` reads (arrays.npz; JSON files are
#: bounded by :data:`jaxdd._src.io.MAX_JSON_BYTES`).
MAX_ARTIFACT_BYTES = 8 * 2**30


def _read(file: str, limit: int = _io.MAX_JSON_BYTES) -> bytes:
  """A file of the artifact, at most ``limit`` bytes, a regular file only; missing,
  unreadable, not a file and too large are told apart (one line each)."""
  try:
    return _io.read_bounded(file, limit, fix="re-create the artifact")
  except FileNotFoundError:
    raise FileNotFoundError(f"{file} is missing; the artifact is incomplete, re-create it") \
        from None
  except PermissionError:
    raise PermissionError(f"{file}: permission denied; ask its owner for read access or copy "
                          "the artifact with read permission (e.g. cp -r, chmod -R a+rX)") \
        from None


def _size(n: int) -> str:
  return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def _check_memory(need: int, where: str, what: str) -> None:
  """Refuses to hold ``need`` more bytes when the machine says it has less free
  (:func:`jaxdd._src.memory.available_bytes`)."""
  free = memory.available_bytes()
  if free is not None and need > free:
    raise ValueError(f"{where} {what} {_size(need)}, more than this machine can hold now "
                     f"({_size(free)} free); load it where more memory is free, or re-create "
                     "the artifact if it should be smaller")


def _check_declared(blob: bytes, meta: dict, where: str) -> None:
  """Before any array is unpacked: each array's header (shape, dtype) agrees with the bytes
  the archive says it holds for it, no array holds more than ``meta.json`` says
  (``num_images`` and ``image_shape``, and its ``ipc`` times its classes, when it names them),
  and everything unpacks to at most :data:`MAX_ARTIFACT_BYTES` and to what this machine can
  hold (twice over: the arrays and the checks of their values); so a header that lies or an archive that
  unpacks to far more than it says (a zip bomb) is refused in one line, before memory is
  allocated for it. The sizes come from the archive's central directory; unpacking stops at
  them (:mod:`zipfile` cuts a member at its declared size and then fails its CRC), and a
  member packed by any method but stored or deflate (whose decoders are not bounded while
  they run) is refused."""
  try:
    with zipfile.ZipFile(io.BytesIO(blob)) as z:
      infos = z.infolist()
      odd = [i.filename for i in infos
             if i.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)]
      if odd:
        raise ValueError(f"{where}: {odd[0]} is packed by a method jaxdd does not unpack "
                         "(only stored or deflate); it is not a SynSet jaxdd wrote, re-create it")
      total = sum(i.file_size for i in infos)
      if total > MAX_ARTIFACT_BYTES:
        raise ValueError(f"{where} unpacks to more than {MAX_ARTIFACT_BYTES // 2**30} GiB; "
                         "it is not a SynSet jaxdd wrote, re-create it")
      shapes = {}
      for info in infos:
        with z.open(info) as f:
          version = np.lib.format.read_magic(f)
          shape, _, dtype = (np.lib.format.read_array_header_1_0(f) if version == (1, 0)
                             else np.lib.format.read_array_header_2_0(f))
          header = f.tell() if hasattr(f, "tell") else 0
        size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if info.file_size - header != size:
          raise ValueError(f"{where}: {info.filename} declares shape {tuple(shape)} "
                           f"({size} bytes) but holds {info.file_size - header}; it is "
                           "damaged or not a SynSet jaxdd wrote, re-create it")
        shapes[info.filename.removesuffix(".npy")] = (tuple(shape), dtype.itemsize)
  except (zipfile.BadZipFile, OSError, EOFError) as e:
    raise ValueError(f"{where} is not a readable .npz ({e}); re-create the artifact") from e
  except ValueError as e:
    if str(e).startswith(where):
      raise
    raise ValueError(f"{where} holds an array whose header cannot be read ({e}); re-create "
                     "the artifact") from e
  for name in ("images", "labels"):
    got = shapes.get(name, ((), 0))[0]
    if got and _count_problem(got[0], meta) is not None:
      n = meta["ipc"] * len(meta["class_names"])
      raise ValueError(f"{where} holds {got[0]} {name}, but meta.json says {n} (IPC "
                       f"{meta['ipc']} x {len(meta['class_names'])} classes); the artifact "
                       "was altered: re-create it")
  n, image_shape = meta.get("num_images"), meta.get("image_shape")
  if isinstance(n, int) and image_shape:  # no array holds more values than meta.json says
    most = {"images": n * int(np.prod(image_shape, dtype=np.int64)), "labels": n,
            "mean": image_shape[-1], "std": image_shape[-1]}
    for name, (shape, itemsize) in shapes.items():
      count = int(np.prod(shape, dtype=np.int64))
      if name in most and (count > most[name] or itemsize > 8):
        raise ValueError(f"{where} holds {name} of shape {shape} ({itemsize}-byte values), more "
                         f"than meta.json's {n} images of shape {tuple(image_shape)} allow; the "
                         "artifact was altered: re-create it")
  _check_memory(2 * total, where, "unpacks to twice")  # the arrays and the checks of them


def _arrays_problem(images, labels, mean, std) -> tuple[str, str] | None:
  """What every reader of a SynSet assumes of its arrays: None when they hold it, else what
  is wrong and what a caller of :func:`save` passes instead. :func:`load` checks it before any
  model sees the arrays, :func:`save` before it writes (so it writes only what load takes)."""
  if images.ndim != 4 or images.shape[-1] not in (1, 3) or images.shape[0] == 0:
    return (f"images have shape {images.shape}, not (N, H, W, C) with N > 0 and C 1 or 3",
            "pass NHWC images with 1 or 3 channels")
  if not np.issubdtype(images.dtype, np.floating):
    return f"images are {images.dtype}, not floats", "pass float32 images"
  if not np.isfinite(images).all():
    return "images hold NaN or Inf", "pass finite images"
  if labels.shape != (images.shape[0],) or not np.issubdtype(labels.dtype, np.integer) \
      or (labels.size and labels.min() < 0):
    return (f"labels must be {images.shape[0]} non-negative integers, got {labels.dtype} "
            f"{labels.shape}" + (f" down to {labels.min()}" if labels.size and np.issubdtype(
                labels.dtype, np.integer) and labels.min() < 0 else ""),
            "pass class indices 0, 1, ...")
  c = images.shape[-1]
  if mean.shape != (c,) or std.shape != (c,) or not (np.isfinite(mean).all()
                                                     and np.isfinite(std).all() and (std > 0).all()):
    shown = (f"{mean.tolist()} and {std.tolist()}" if mean.size <= 8 and std.size <= 8
             else f"{mean.shape} and {std.shape}")
    return (f"mean/std must be {c} finite values (std > 0), got {shown}",
            "pass the normalisation's per-channel mean and (positive) standard deviation")
  return None


def _count_problem(n: int, meta: Mapping[str, Any]) -> tuple[str, str] | None:
  """Whether ``n`` images agree with the count ``meta`` implies (its ``ipc`` times its
  ``class_names``, when it names both); else what is wrong and a caller's fix."""
  ipc, names = meta.get("ipc"), meta.get("class_names")
  if not (isinstance(ipc, int) and names) or n == ipc * len(names):
    return None
  return (f"{n} images, but meta says {ipc * len(names)} (IPC {ipc} x {len(names)} classes)",
          "pass the meta of this set")


def _check_arrays(images, labels, mean, std, where: str) -> None:
  """:func:`_arrays_problem` for a SynSet read back: one line naming the file."""
  refused = _arrays_problem(images, labels, mean, std)
  if refused is not None:
    raise ValueError(f"{where}: {refused[0]}; it is not a SynSet jaxdd wrote, re-create it")


#: What :func:`load` requires of ``manifest.json``.
MANIFEST = schema.obj({"files": schema.map_of(schema.STR)})
#: What the readers of a SynSet use of ``meta.json`` (other keys are free).
META = schema.obj(optional={
    "dataset": schema.obj(optional={"name": schema.opt(schema.STR),
                                    "ratio": schema.opt(schema.NUM),
                                    "severity": schema.opt(schema.INT), "seed": schema.INT}),
    "config": schema.map_of(schema.ANY), "method": schema.STR, "ipc": schema.INT,
    "eval_protocol": schema.opt(schema.STR), "class_names": schema.list_of(schema.STR),
    "num_images": schema.INT, "image_shape": schema.list_of(schema.INT)})


def load(path: str, *, verify: Verifier | None = None,
         working: bool = False) -> tuple[SynSet, dict]:
  """Loads and verifies a SynSet artifact (checksums, and an optional signature check).

  Every file is hashed and compared with ``manifest.json``; the arrays are
  parsed from the very bytes that were hashed. The signature is checked by
  ``verify`` when one is given: the public loader
  :func:`jaxdd.security.signing.load_synset` (``jaxdd.load_synset``) passes
  the one built from the trust anchors.

  Args:
    path: the artifact directory.
    verify: called as ``verify(path, manifest_bytes)`` once the manifest is
      read and before any other file; it raises when the artifact must be
      refused, and returns a JSON-able record stored as ``meta["signature"]``
      (or None to store nothing). None checks the checksums only (a run
      re-reading the artifact it wrote itself).
    working: True where a command reads the artifact back after it started writing (a
      damaged manifest or metadata is then a fault, exit status 1, not a refusal, 2:
      :class:`jaxdd._src.schema.FileFormatError`).

  Returns:
    ``(syn, meta)``; ``meta`` includes ``mean`` and ``std``, and ``signature``
    when ``verify`` returned a record.

  Raises:
    FileNotFoundError: the directory or one of its files is missing.
    ValueError: a file does not match the manifest (corrupted or truncated),
      or the arrays are malformed.
    Exception: whatever ``verify`` raises (for the signature check,
      :class:`jaxdd.security.signing.SignatureError`).
  """
  if not os.path.isdir(path):
    raise FileNotFoundError(f"no SynSet artifact at {path!r}; pass the directory written by "
                            "`jaxdd distill` (it holds arrays.npz, meta.json, manifest.json)")
  manifest_path = os.path.join(path, "manifest.json")
  manifest_bytes = _read(manifest_path)
  expected = schema.parse_json(manifest_bytes, MANIFEST, path=manifest_path,
                               fix="the artifact is corrupted: re-create it",
                               working=working)["files"]
  status = verify(path, manifest_bytes) if verify is not None else None
  contents = {}
  for name in _FILES:
    file = os.path.join(path, name)
    if name == "arrays.npz" and os.path.isfile(file):  # read whole: it must fit first
      _check_memory(os.path.getsize(file), file, "is")
    contents[name] = _read(file, MAX_ARTIFACT_BYTES if name == "arrays.npz" else
                           _io.MAX_JSON_BYTES)
    digest = hashlib.sha256(contents[name]).hexdigest()
    if digest != expected.get(name):
      raise ValueError(f"{file} does not match its sha256 in manifest.json (expected "
                       f"{expected.get(name)}, got {digest}): the artifact was modified or "
                       "truncated; refusing to load it")
  arrays_path = os.path.join(path, "arrays.npz")
  meta = schema.parse_json(contents["meta.json"], META, path=os.path.join(path, "meta.json"),
                           fix="the artifact is corrupted: re-create it", working=working)
  _check_declared(contents["arrays.npz"], meta, arrays_path)
  try:
    with np.load(io.BytesIO(contents["arrays.npz"]), allow_pickle=False) as data:
      missing = [k for k in ("images", "labels", "mean", "std") if k not in data.files]
      if missing:
        raise ValueError(f"{arrays_path} lacks the array(s) {', '.join(missing)} (it holds "
                         f"{', '.join(data.files) or 'nothing'}); it is not a SynSet, re-create it")
      images, labels = data["images"], data["labels"]
      mean, std = data["mean"], data["std"]
  except (OSError, EOFError, zipfile.BadZipFile) as e:
    raise ValueError(f"{arrays_path} is not a readable .npz ({e}); re-create the artifact") from e
  _check_arrays(images, labels, mean, std, arrays_path)
  meta["mean"], meta["std"] = mean.tolist(), std.tolist()
  if status is not None:
    meta["signature"] = status
  return SynSet(images, labels), meta

