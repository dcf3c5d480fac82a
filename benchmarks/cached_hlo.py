"""The compiled HLO of a GPU program kept in JAX's persistent compilation cache.

A profile of a GPU run names the kernels a GPU replays inside CUDA graphs only by their fusion
names (``loop_multiply_fusion_10``); the compiled program's HLO says what each one computes.
Profiles save that HLO beside the trace (``program.hlo.txt.gz``), but a trace made before they
did, or a program that was never traced, has only the compiled programs a loan brought back
(``xla-cache.tar.gz``). This script takes the optimised HLO out of such a cache entry and writes
it as ``benchmarks/trace_summary.py`` reads it::

  python benchmarks/cached_hlo.py .xla-cache/xla-cache.tar.gz --name jit_loop \\
      --out PROFILE/program.hlo.txt.gz
  python benchmarks/trace_summary.py PROFILE

An entry (jax's ``compilation_cache``: zlib or zstd, then 4 bytes of compile time) holds the
serialized PJRT executable. A GPU executable keeps its ``GpuExecutableProto`` in Riegeli record
files (https://github.com/google/riegeli, "Riegeli/records file format": 64 KiB blocks with
24-byte headers, chunks with 40-byte headers, simple chunks of records whose sizes and values
are compressed with snappy, zstd or brotli), one nested inside the other; its first field holds
the HLO module. XLA:CPU serializes its executables otherwise: this reads GPU entries only.
Decompressing snappy and brotli needs ``cramjam`` (requirements-dev.txt).
"""
from __future__ import annotations

import argparse
import gzip
import io
import os
import struct
import sys
import tarfile
import tempfile
import zlib

_SIGNATURE = b"\x83\xafp\xd1\r\x88J?"  # the first 8 bytes of every Riegeli file
_BLOCK, _BLOCK_HEADER, _CHUNK_HEADER = 1 << 16, 24, 40


class CacheEntryError(ValueError):
  """Not a GPU executable from JAX's compilation cache, or not one this script can read."""


def _varint(b: bytes, i: int) -> tuple[int, int]:
  value = shift = 0
  while True:
    if i >= len(b):
      raise CacheEntryError("a varint runs past the end of its buffer")
    c = b[i]
    i += 1
    value |= (c & 0x7F) << shift
    shift += 7
    if c < 0x80:
      return value, i


def _decompress(kind: int, data: bytes) -> bytes:
  if kind == 0:
    return data
  size, start = _varint(data, 0)
  try:
    import cramjam
  except ImportError:
    raise CacheEntryError("reading this entry needs cramjam: pip install -r "
                          "requirements-dev.txt") from None
  codec = {ord("s"): cramjam.snappy.decompress_raw, ord("z"): cramjam.zstd.decompress,
           ord("b"): cramjam.brotli.decompress}.get(kind)
  if codec is None:
    raise CacheEntryError(f"unknown Riegeli compression {kind!r}")
  out = bytes(codec(data[start:]))
  if len(out) != size:
    raise CacheEntryError(f"a Riegeli buffer decompressed to {len(out)} bytes, not {size}")
  return out


def riegeli_records(data: bytes) -> list[bytes]:
  """The records of the Riegeli file that starts at ``data``'s first Riegeli signature
  (simple chunks; a transposed chunk is refused)."""
  start = data.find(_SIGNATURE)
  if start < 0:
    raise CacheEntryError("no Riegeli records in it (not a GPU executable)")
  raw = data[start:]
  # the logical stream: the file without the header at the start of each 64 KiB block
  stream = b"".join(raw[k + _BLOCK_HEADER:k + _BLOCK] for k in range(0, len(raw), _BLOCK))
  records, i = [], 0
  while i + _CHUNK_HEADER <= len(stream):
    _, size, _, type_and_count, decoded = struct.unpack("<QQQQQ", stream[i:i + _CHUNK_HEADER])
    kind, count = type_and_count & 0xFF, type_and_count >> 8
    chunk = stream[i + _CHUNK_HEADER:i + _CHUNK_HEADER + size]
    i += _CHUNK_HEADER + size
    if kind == 0:  # past the last chunk (zeros)
      break
    if kind == ord("t"):
      raise CacheEntryError("a transposed Riegeli chunk: not supported")
    if kind != ord("r"):  # signature, file metadata, padding
      continue
    if len(chunk) < size:
      raise CacheEntryError("a Riegeli chunk runs past the end of the entry (truncated?)")
    compression = chunk[0]
    sizes_len, j = _varint(chunk, 1)
    sizes = _decompress(compression, chunk[j:j + sizes_len])
    values = _decompress(compression, chunk[j + sizes_len:])
    if len(values) > decoded:
      raise CacheEntryError("a Riegeli chunk decoded to more than its header says")
    k = pos = 0
    for _ in range(count):
      n, k = _varint(sizes, k)
      records.append(values[pos:pos + n])
      pos += n
  return records


def _fields(b: bytes) -> list[tuple[int, bytes]]:
  """The length-delimited fields of a protobuf message ``b`` (others skipped)."""
  out, i = [], 0
  while i < len(b):
    key, i = _varint(b, i)
    wire = key & 7
    if wire == 0:
      _, i = _varint(b, i)
    elif wire == 1:
      i += 8
    elif wire == 5:
      i += 4
    elif wire == 2:
      n, i = _varint(b, i)
      out.append((key >> 3, b[i:i + n]))
      i += n
    else:
      raise CacheEntryError("not a protobuf message")
  return out


def entry_hlo(entry: bytes) -> str:
  """The optimised HLO text of the GPU executable in one cache entry (its file's bytes)."""
  from jax._src.lib import xla_client
  try:
    payload = zlib.decompress(entry)
  except zlib.error:
    try:
      import cramjam
      payload = bytes(cramjam.zstd.decompress(entry))
    except Exception as e:  # noqa: BLE001 (any failure means: not an entry)
      raise CacheEntryError(f"not a JAX compilation cache entry ({e})") from None
  outer = riegeli_records(payload[4:])
  for record in outer:
    if not record.startswith(_SIGNATURE):
      continue
    for inner in riegeli_records(record):
      try:
        first = dict(_fields(inner)).get(1)
        module = dict(_fields(first)).get(1) if first else None
      except CacheEntryError:
        continue
      if module:
        try:
          return xla_client.hlo.XlaComputation(module).get_hlo_module().to_string()
        except Exception:  # noqa: BLE001, S112 (not a module: try the next record)
          continue
  raise CacheEntryError("no HLO module in it (not a GPU executable)")


def _entries(path: str) -> dict[str, bytes]:
  """Cache entries by file name: a file, a folder of them, or a .tar.gz of them."""
  def read(p):
    with open(p, "rb") as f:
      return f.read()
  if os.path.isdir(path):
    return {n: read(os.path.join(path, n)) for n in sorted(os.listdir(path))
            if n.endswith("-cache")}
  if tarfile.is_tarfile(path):
    with tarfile.open(path) as tar:
      return {os.path.basename(m.name): tar.extractfile(m).read() for m in tar.getmembers()
              if m.isfile() and m.name.endswith("-cache")}
  return {os.path.basename(path): read(path)}


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("path", help="a cache entry (*-cache), a cache folder, or an xla-cache.tar.gz")
  p.add_argument("--name", default=None, help=(
      "the program's name in the cache (the entry's name up to its hash, e.g. jit_loop); "
      "needed when the path holds several"))
  p.add_argument("--out", default=None, help=(
      "write the HLO here (gzipped when the name ends in .gz; a new file) instead of stdout"))
  args = p.parse_args(argv)
  if not os.path.exists(args.path):
    print(f"cached_hlo: {args.path} does not exist; give a cache entry, folder or .tar.gz",
          file=sys.stderr)
    return 1
  if args.out and os.path.exists(args.out):
    print(f"cached_hlo: {args.out} exists; give a new path", file=sys.stderr)
    return 1
  try:
    entries = _entries(args.path)
  except (OSError, tarfile.TarError) as e:
    print(f"cached_hlo: cannot read {args.path} ({e})", file=sys.stderr)
    return 1
  names = sorted({n.rsplit("-", 2)[0] for n in entries})
  chosen = [n for n in entries if args.name is None or n.rsplit("-", 2)[0] == args.name]
  if len(chosen) != 1:
    print(f"cached_hlo: {len(chosen)} entries match; name one with --name (programs: "
          f"{', '.join(names) or 'none'})", file=sys.stderr)
    return 1
  try:
    text = entry_hlo(entries[chosen[0]])
  except CacheEntryError as e:
    print(f"cached_hlo: {chosen[0]}: {e}", file=sys.stderr)
    return 1
  if not args.out:
    sys.stdout.write(text)
    return 0
  data = text.encode()
  if args.out.endswith(".gz"):
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as f:
      f.write(data)
    data = buf.getvalue()
  folder = os.path.dirname(os.path.abspath(args.out))
  fd, tmp = tempfile.mkstemp(dir=folder, prefix=".cached_hlo-")
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
    os.replace(tmp, args.out)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise
  print(f"cached_hlo: wrote the HLO of {chosen[0].rsplit('-', 2)[0]} to {args.out} "
        f"({len(text.splitlines())} lines)", file=sys.stderr)
  return 0


if __name__ == "__main__":
  sys.exit(main())
