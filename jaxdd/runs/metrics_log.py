"""A run's ``metrics.jsonl``: one JSON line per logged step, safe against kills."""
from __future__ import annotations

import json
import os

from jaxdd import synset
from jaxdd._src import io as _io
from jaxdd._src import schema


class MetricsLog:
  """``metrics.jsonl``, appended one complete line per logged step.

  Each row is written with a single ``write`` on an ``O_APPEND`` descriptor
  and flushed, so a killed run leaves every finished line on disk (at most the
  line being written can be torn; :func:`read_metrics` skips it). Opening a
  log for a run resumed at step ``start`` first rewrites the file atomically
  without the rows after ``start`` (they belong to steps that will be redone).
  Optionally mirrors the scalars to TensorBoard (``<workdir>/tensorboard``)
  when ``tensorboardX`` is installed; silently skipped otherwise.
  """

  def __init__(self, workdir: str, start: int, *, tensorboard: bool = True):
    self.path = os.path.join(workdir, "metrics.jsonl")
    self.rows = read_metrics(self.path, start)
    write_metrics(self.path, self.rows)
    self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
    self._tb = None
    if tensorboard:
      try:
        import tensorboardX  # noqa: PLC0415  (optional)
      except ImportError:
        tensorboardX = None
      if tensorboardX is not None:
        self._tb = tensorboardX.SummaryWriter(os.path.join(workdir, "tensorboard"),
                                              purge_step=start + 1)

  def append(self, row: dict) -> None:
    self.rows.append(row)
    os.write(self._fd, (json.dumps(row) + "\n").encode())
    if self._tb is not None:
      for k, v in row.items():
        if k != "step" and isinstance(v, (int, float)):
          self._tb.add_scalar(k, v, row["step"])

  def close(self) -> None:
    if self._fd is not None:
      os.close(self._fd)
      self._fd = None
    if self._tb is not None:
      self._tb.close()
      self._tb = None


#: A row of ``metrics.jsonl``: the fields its readers use.
ROW = schema.obj(optional={"step": schema.INT, "syn_lr": schema.NUM,
                           "bias_aligned_fraction": schema.NUM})


def read_metrics(path: str, upto: int) -> list[dict]:
  """Rows of ``metrics.jsonl`` up to step ``upto``; the last line, if a kill tore it, is
  skipped.

  Raises:
    jaxdd._src.schema.FileFormatError: a line before the last is not JSON (the log was
      edited or damaged: only the last line can be torn), or a line is JSON but not a row
      jaxdd writes, or the file is not a regular file of a log's size.
  """
  if not os.path.exists(path):
    return []
  fix = "delete metrics.jsonl (the run's log) and rerun the same command"
  try:
    data = _io.read_bounded(path, _io.MAX_JSON_BYTES, fix=fix)
  except _io.NotAFileError as e:
    raise schema.FileFormatError(path, str(e).split("; ")[0].removeprefix(f"{path} "), fix,
                                 working=True) from None
  lines = [(n, ln.strip()) for n, ln in enumerate(data.split(b"\n"), 1) if ln.strip()]
  rows = []
  for i, (number, line) in enumerate(lines):
    try:
      row = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
      if i == len(lines) - 1:
        continue  # the last line of a killed run may be incomplete
      raise schema.FileFormatError(f"{path} line {number}", "is not JSON, and only the last "
                                   "line can be torn by a kill", fix, working=True) from None
    schema.check(row, ROW, path=f"{path} line {number}", working=True, fix=fix)
    if row.get("step", 0) <= upto:
      rows.append(row)
  return rows


def write_metrics(path: str, rows: list[dict]) -> None:
  """Rewrites ``metrics.jsonl`` atomically with ``rows``."""
  synset.atomic_write_bytes(path, "".join(json.dumps(r) + "\n" for r in rows).encode())
