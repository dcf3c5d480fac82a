"""Progress of dataset builds: the slow per-image loops (colouring, corrupting,
reading image files) report through jaxdd.progress, never change an array, and
respect the quiet switch and the auto threshold."""
import logging
import re

import numpy as np
import pytest

from jaxdd import data, progress
from jaxdd.data import biased, corruptions, injectors, sources

LINE = re.compile(r"^(?P<desc>.+): (?P<n>\d+)/(?P<total>\d+) img \(\d+%\), ")


@pytest.fixture
def log_every_update(monkeypatch):
  """Plain log lines (no tty), one per update: JAXDD_LOG_INTERVAL=0."""
  monkeypatch.setattr(progress, "interactive", lambda: False)
  monkeypatch.setenv("JAXDD_LOG_INTERVAL", "0")


def parsed(caplog):
  out = []
  for r in caplog.records:
    m = LINE.match(r.getMessage())
    assert m, r.getMessage()
    assert "\r" not in r.getMessage()
    out.append((m["desc"], int(m["n"]), int(m["total"])))
  return out


def grey_source(n_train=300, n_test=60, shape=(8, 8), channels=None, seed=0):
  rng = np.random.default_rng(seed)
  extra = () if channels is None else (channels,)
  return data.ArraySource(rng.integers(0, 256, (n_train,) + shape + extra, dtype=np.uint8),
                          np.arange(n_train) % 10,
                          rng.integers(0, 256, (n_test,) + shape + extra, dtype=np.uint8),
                          np.arange(n_test) % 10)


def assert_same(a, b):
  assert a.images.tobytes() == b.images.tobytes()
  for f in ("labels", "bias", "aligned"):
    np.testing.assert_array_equal(getattr(a, f), getattr(b, f))


@pytest.mark.parametrize("name", ["cmnist", "bg_fmnist"])
def test_colouring_progress_lines_and_identical_arrays(caplog, monkeypatch, log_every_update, name):
  monkeypatch.setattr(injectors, "_BLOCK", 64)  # several blocks on a tiny split
  src = grey_source()
  kw = dict(split="train", conflict_ratio=0.1, severity=2, seed=3, source=src, cache=False)
  with caplog.at_level(logging.INFO, logger="jaxdd"):
    plain = data.load(name, progress=False, **kw)
    assert not caplog.records
    shown = data.load(name, progress=True, **kw)
  n = len(plain)
  assert n == 270  # 300 minus the 10 % valid hold-out
  # one line per block of 64 images; the last block's line is the closing line (no repeat)
  expected = [(f"{name} train: colouring", k, n) for k in (64, 128, 192, 256, 270)]
  assert parsed(caplog) == expected
  assert "elapsed" in caplog.records[-1].getMessage()  # the closing line
  assert_same(plain, shown)
  # the auto default: a small build shows nothing
  caplog.clear()
  with caplog.at_level(logging.INFO, logger="jaxdd"):
    auto = data.load(name, **kw)
  assert not caplog.records
  assert_same(plain, auto)


def test_quiet_switch_silences_build_progress(caplog, log_every_update):
  src = grey_source(n_train=100, n_test=20)
  kw = dict(split="test", conflict_ratio=0.1, source=src, cache=False)
  progress.set_quiet(True)
  try:
    with caplog.at_level(logging.INFO, logger="jaxdd"):
      quiet = data.load("cmnist", progress=True, **kw)
  finally:
    progress.set_quiet(False)
  assert not caplog.records
  with caplog.at_level(logging.INFO, logger="jaxdd"):
    loud = data.load("cmnist", progress=True, **kw)
  # the last update's line; a closing line at the same count is not written again
  assert parsed(caplog) == [("cmnist test: colouring", 20, 20)]
  assert_same(quiet, loud)


def test_auto_threshold_shows_progress_for_large_builds(caplog, monkeypatch, log_every_update):
  # The auto rule is a size threshold; lower it instead of building 20,000 images.
  monkeypatch.setitem(sources.PROGRESS_MIN_IMAGES, "colour", 40)
  src = grey_source(n_train=100, n_test=40)
  with caplog.at_level(logging.INFO, logger="jaxdd"):
    data.load("cmnist", split="test", conflict_ratio=0.1, source=src, cache=False)  # 40: shown
    data.load("cmnist", split="valid", conflict_ratio=0.1, source=src, cache=False)  # 10: not
  assert parsed(caplog) == [("cmnist test: colouring", 40, 40)]  # once: see above


def test_corruption_progress_counts_every_chunk_and_changes_nothing(caplog, monkeypatch,
                                                                   log_every_update):
  monkeypatch.setattr(corruptions.api, "_CHUNK", 3)
  src = grey_source(n_train=50, n_test=40, shape=(8, 8), channels=3, seed=1)
  kw = dict(split="test", conflict_ratio=0.1, severity=1, seed=0, source=src, cache=False)
  with caplog.at_level(logging.INFO, logger="jaxdd"):
    plain = data.load("cifar10c", progress=False, **kw)
    assert not caplog.records
    shown = data.load("cifar10c", progress=True, **kw)
  assert_same(plain, shown)
  # Independent expectation: bias groups in ascending order, chunks of 3 within each.
  counts, done = [], 0
  for k in np.unique(plain.bias):
    size = int((plain.bias == k).sum())
    for start in range(0, size, 3):
      done += min(3, size - start)
      counts.append(done)
  n = len(plain)
  assert counts[-1] == n == 40
  # the last chunk's line closes the bar: a closing line at the same count is not repeated
  assert parsed(caplog) == [("cifar10c test: corrupting", c, n) for c in counts]


def test_folder_progress_counts_files(caplog, tmp_path, log_every_update, bffhq_folder):
  root = bffhq_folder
  kw = dict(conflict_ratio=0.005, source=root, image_size=8, cache=False)
  with caplog.at_level(logging.INFO, logger="jaxdd"):
    plain = data.load("bffhq", split="train", progress=False, **kw)
    shown = data.load("bffhq", split="train", progress=True, **kw)
    test = data.load("bffhq", split="test", progress=True, **kw)
  assert_same(plain, shown)
  assert len(test) == 1  # the aligned test file is opened (counted) and skipped
  assert parsed(caplog) == [("folder:bffhq train: reading", k, 3) for k in (1, 2, 3)] + \
      [("folder:bffhq test: reading", k, 2) for k in (1, 2)]


def test_injectors_report_to_an_outer_bar_and_reject_bad_progress(getkey):
  class Counter:
    def __init__(self):
      self.n, self.closed = 0, False

    def update(self, k=1):
      self.n += k

    def close(self):
      self.closed = True

  x = np.random.default_rng(0).integers(0, 256, (10, 8, 8), dtype=np.uint8)
  c = Counter()
  key = getkey()
  a = biased.colorize_foreground(key, x, np.arange(10), std=0.1, progress=c)
  b = biased.colorize_background(key, x, np.arange(10), std=0.1, progress=c)
  rgb = np.repeat(x[..., None], 3, -1)
  y = corruptions.corrupt(key, rgb, "contrast", severity=2, progress=c)
  assert c.n == 30 and not c.closed  # a bar passed in is added to, not closed
  np.testing.assert_array_equal(a, biased.colorize_foreground(key, x, np.arange(10), std=0.1))
  np.testing.assert_array_equal(b, biased.colorize_background(key, x, np.arange(10), std=0.1))
  np.testing.assert_array_equal(y, corruptions.corrupt(key, rgb, "contrast", severity=2))
  with pytest.raises(TypeError, match="progress must be"):
    biased.colorize_foreground(key, x, np.arange(10), std=0.1, progress="yes")
  with pytest.raises(TypeError, match="progress must be None"):
    data.load("cmnist", split="test", conflict_ratio=0.1, source=grey_source(), progress="yes")
