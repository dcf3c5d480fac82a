"""Progress reporting for long phases: tqdm bars on a terminal or in a notebook,
plain periodic ``logging`` lines (with rate and ETA) everywhere else.

A log file or a CI console gets no carriage-return fragments: when stderr is
not a terminal and no notebook kernel is running, :func:`bar` returns a
:class:`LogBar`, which writes one line to the ``jaxdd`` logger at most every
``interval`` seconds (``$JAXDD_LOG_INTERVAL``, default 15) and one at the end::

  2025-01-01 12:00:00 jaxdd: DM+KDE ipc=10: 120/300 step (40%), 2.31 step/s, ETA 78s, loss=0.0123

:func:`set_quiet` (the CLI's ``--quiet``) turns every bar and line off. A compiled
program reports its epochs through a host callback, :func:`report_epoch`, to the
bar of the innermost :func:`reporting` block.

This module holds the library's only process-wide state below the runs layer,
and it is host-side display state that no computation reads: the quiet switch
(as :mod:`logging` holds its handlers) and the bars that running programs report to.

Example:
  >>> from jaxdd import progress
  >>> b = progress.bar(3, "demo", unit="step", disable=True)
  >>> for _ in range(3):
  ...   b.update(1)
  >>> b.close()
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from typing import Any, Iterable, Iterator

__all__ = ["LogBar", "bar", "track", "set_quiet", "is_quiet", "interactive", "setup_logging",
           "logger", "reporting", "report_epoch"]

logger = logging.getLogger("jaxdd")
_QUIET = False


def set_quiet(quiet: bool = True) -> None:
  """Turns all progress bars and progress log lines off (or on again)."""
  global _QUIET
  _QUIET = bool(quiet)


def is_quiet() -> bool:
  """Whether :func:`set_quiet` is in effect."""
  return _QUIET


# The bars that host callbacks of running programs report to, innermost last.
_SINKS: list = []
_SINKS_LOCK = threading.Lock()


@contextlib.contextmanager
def reporting(sink) -> Iterator[Any]:
  """Within the block, :func:`report_epoch` advances ``sink`` (a bar) by one.

  Example:
    >>> b = bar(2, "demo", disable=True)
    >>> with reporting(b):
    ...   report_epoch(0.5)
    >>> b.n
    1
  """
  with _SINKS_LOCK:
    _SINKS.append(sink)
  try:
    yield sink
  finally:
    with _SINKS_LOCK:
      _SINKS.remove(sink)


def report_epoch(*_) -> None:
  """Host side of a compiled program's per-epoch callback: one trained epoch of one
  network, counted on the innermost :func:`reporting` bar (nothing outside one)."""
  with _SINKS_LOCK:
    sinks = _SINKS[-1:]
  for sink in sinks:
    sink.update(1)


def _in_notebook() -> bool:
  ipython = sys.modules.get("IPython")
  if ipython is None or "ipykernel" not in sys.modules:
    return False
  try:
    shell = ipython.get_ipython()
  except Exception:  # pragma: no cover - IPython internals
    return False
  return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def interactive() -> bool:
  """True in a notebook kernel or when stderr is a terminal (bars redraw in place)."""
  if _in_notebook():
    return True
  try:
    return sys.stderr.isatty()
  except (AttributeError, ValueError):
    return False


def _fmt_seconds(s: float) -> str:
  s = int(round(s))
  if s < 60:
    return f"{s}s"
  if s < 3600:
    return f"{s // 60}m{s % 60:02d}s"
  return f"{s // 3600}h{(s % 3600) // 60:02d}m"


class LogBar:
  """A tqdm-like counter that logs plain lines (rate and ETA) instead of redrawing.

  The rate and ETA are measured from the first completed unit on, so the
  compilation that the first unit pays for does not inflate the ETA; before
  that the line says "first unit (compiling)". Thread-safe (evaluation reports
  epochs from XLA's callback thread).
  """

  def __init__(self, total: int | None, desc: str = "", unit: str = "it", *, initial: int = 0,
               interval: float | None = None, log: logging.Logger | None = None):
    self.total, self.desc, self.unit = total, desc, unit
    self.n = self._start = initial
    self.interval = float(os.environ.get("JAXDD_LOG_INTERVAL", 15)) if interval is None \
        else float(interval)
    self.postfix: dict[str, Any] = {}
    self._log = log or logger
    self._t0 = self._last = time.perf_counter()
    self._t_first: float | None = None  # when the first unit finished
    self._n_first = initial
    self._lock = threading.Lock()
    self._closed = False

  def line(self) -> str:
    """The current status line."""
    now = time.perf_counter()
    elapsed = max(now - self._t0, 1e-9)
    parts = [f"{self.desc}: {self.n}" + (f"/{self.total}" if self.total else "") + f" {self.unit}"]
    if self.total:
      parts[0] += f" ({100 * self.n / self.total:.0f}%)"
    done = self.n - self._n_first
    if self._t_first is None or done <= 0 or now <= self._t_first:
      if self.n == self._start:
        parts.append("first unit (compiling)")
      parts.append(f"elapsed {_fmt_seconds(elapsed)}")
    else:
      rate = done / (now - self._t_first)
      parts.append(f"{rate:.3g} {self.unit}/s" if rate >= 0.1 else f"{1 / rate:.3g} s/{self.unit}")
      if self.total and self.n < self.total:
        parts.append(f"ETA {_fmt_seconds((self.total - self.n) / rate)}")
      else:
        parts.append(f"elapsed {_fmt_seconds(elapsed)}")
    parts += [f"{k}={v}" for k, v in self.postfix.items()]
    return ", ".join(parts)

  def update(self, k: int = 1) -> None:
    with self._lock:
      self.n += k
      now = time.perf_counter()
      if self._t_first is None:  # the rate counts from here: compilation is behind us
        self._t_first, self._n_first = now, self.n
      if now - self._last >= self.interval and not self._closed:
        self._last, self._said = now, (self.n, dict(self.postfix))
        self._log.info(self.line())

  def set_postfix(self, **kwargs: Any) -> None:
    with self._lock:
      self.postfix = {k: v for k, v in kwargs.items()}

  def close(self) -> None:
    with self._lock:
      if not self._closed:
        self._closed = True
        # A line at the same count and postfix would only repeat the last one with a
        # rate measured a moment later; whether it reads the same would depend on timing.
        if (self.n, self.postfix) != getattr(self, "_said", None):
          self._log.info(self.line())

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


class _NullBar:
  n = 0

  def update(self, k: int = 1) -> None:
    self.n += k

  def set_postfix(self, **kwargs: Any) -> None:
    pass

  def close(self) -> None:
    pass

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    pass


def bar(total: int | None, desc: str = "", *, unit: str = "it", initial: int = 0,
        disable: bool = False, interval: float | None = None):
  """A progress counter for a phase of ``total`` units (``update``, ``set_postfix``, ``close``).

  Args:
    total: number of units (None if unknown).
    desc: what is running, e.g. ``"surrogate"``.
    unit: unit name, e.g. ``"epoch"``.
    initial: units already done (a resumed run).
    disable: no output at all (also when :func:`set_quiet` is on).
    interval: seconds between log lines when not interactive (default
      ``$JAXDD_LOG_INTERVAL`` or 15).

  Returns:
    A ``tqdm.auto`` bar on a terminal / in a notebook, else a :class:`LogBar`.
  """
  if disable or _QUIET:
    return _NullBar()
  if interactive():
    # tqdm.auto probes for IPython and ipywidgets: loaded when a bar is drawn, not on import
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=desc, unit=unit, initial=initial, dynamic_ncols=True)
  return LogBar(total, desc, unit, initial=initial, interval=interval)


def track(iterable: Iterable, desc: str = "", *, total: int | None = None, unit: str = "it",
          disable: bool = False) -> Iterator:
  """Iterates ``iterable`` with a :func:`bar`."""
  if total is None and hasattr(iterable, "__len__"):
    total = len(iterable)  # type: ignore[arg-type]
  b = bar(total, desc, unit=unit, disable=disable)
  try:
    for item in iterable:
      yield item
      b.update(1)
  finally:
    b.close()


class _StderrHandler(logging.StreamHandler):
  """Writes to whatever ``sys.stderr`` is at the time of each record (it may be replaced,
  e.g. by a notebook or a test's capture, after the handler was installed)."""

  def __init__(self):
    super().__init__(sys.stderr)

  @property
  def stream(self):
    return sys.stderr

  @stream.setter
  def stream(self, value):
    pass


def setup_logging(quiet: bool = False) -> None:
  """For the CLI: ``jaxdd`` log lines to stderr with a timestamp; ``quiet`` silences progress."""
  set_quiet(quiet)
  logger.setLevel(logging.WARNING if quiet else logging.INFO)
  if not any(getattr(h, "_jaxdd", False) for h in logger.handlers):
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s jaxdd: %(message)s", "%Y-%m-%d %H:%M:%S"))
    handler._jaxdd = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
  # Our handler prints the lines; a root handler some library installed (orbax
  # and absl configure one) would print each line a second time.
  logger.propagate = False
