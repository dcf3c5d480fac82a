"""metrics.jsonl is appended live (one complete line per logged step) and trimmed on resume."""
import json
import sys
import types

from jaxdd import runs


def _lines(path):
  return [json.loads(l) for l in open(path).read().splitlines()]


def test_rows_survive_a_kill_and_resume_drops_later_rows(tmp_path):
  log = runs.MetricsLog(str(tmp_path), 0, tensorboard=False)
  for step in range(1, 6):
    log.append({"step": step, "loss": 1.0 / step})
    # every row is on disk as soon as it is logged (no close, no checkpoint needed)
    assert [r["step"] for r in _lines(tmp_path / "metrics.jsonl")] == list(range(1, step + 1))
  # a kill in the middle of a write leaves a torn last line
  with open(tmp_path / "metrics.jsonl", "a") as f:
    f.write('{"step": 6, "lo')
  del log  # no close: as after SIGKILL
  resumed = runs.MetricsLog(str(tmp_path), 3, tensorboard=False)  # checkpoint at step 3
  assert [r["step"] for r in _lines(tmp_path / "metrics.jsonl")] == [1, 2, 3]
  resumed.append({"step": 4, "loss": 0.2})
  resumed.close()
  rows = _lines(tmp_path / "metrics.jsonl")
  assert [r["step"] for r in rows] == [1, 2, 3, 4] and rows[-1]["loss"] == 0.2
  assert rows[1]["loss"] == 0.5


def test_tensorboard_mirror_when_installed(tmp_path, monkeypatch):
  calls = []

  class Writer:
    def __init__(self, logdir, purge_step=None):
      calls.append(("init", logdir, purge_step))

    def add_scalar(self, tag, value, step):
      calls.append((tag, value, step))

    def close(self):
      calls.append(("close",))

  monkeypatch.setitem(sys.modules, "tensorboardX", types.SimpleNamespace(SummaryWriter=Writer))
  log = runs.MetricsLog(str(tmp_path), 2)
  log.append({"step": 3, "loss": 0.25, "grad_norm": 2.0})
  log.close()
  assert calls == [("init", str(tmp_path / "tensorboard"), 3), ("loss", 0.25, 3),
                   ("grad_norm", 2.0, 3), ("close",)]
  monkeypatch.setitem(sys.modules, "tensorboardX", None)  # not installed: skipped silently
  runs.MetricsLog(str(tmp_path / "b"), 0).close() if (tmp_path / "b").mkdir() is None else None


def test_a_damaged_line_before_the_last_is_a_fault_not_dropped(tmp_path):
  # only the last line can be torn by a kill; a non-JSON line in the middle means the log was
  # edited or damaged: one line naming it (status 1 on the command line), not a silent skip
  import pytest
  from jaxdd._src import schema
  from jaxdd.runs import metrics_log
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"step": 1}\nnot json\n{"step": 3}\n')
  with pytest.raises(schema.FileFormatError, match=r"metrics.jsonl line 2: is not JSON") as e:
    metrics_log.read_metrics(str(path), 10)
  assert e.value.status == 1 and "\n" not in str(e.value)
  path.write_text('{"step": 1}\n{"step": 2}\n{"step": 3, "lo')
  assert [r["step"] for r in metrics_log.read_metrics(str(path), 10)] == [1, 2]
