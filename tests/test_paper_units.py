"""The paper table's units and records as a library part (:mod:`jaxdd.runs.paper`), without
distilling anything: a record's digest, the refusal of a record that is not its unit's own,
the claims of two queues on one units folder, the order of the next units, and a cell's table
from hand-written unit records.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import select
import signal
import socket
import time

import numpy as np
import pytest

from jaxdd.runs import paper, rundir

CELL = next(c for c in paper.CELLS if c.name == "cmnist5-ipc10")  # DM
SETTINGS = {"preset": "smoke", "iterations": 2}
METRICS = ("overall", "aligned", "conflicting", "worst_group", "deo_m", "deo_a")


def _queue(tmp_path, **options) -> paper.Queue:
  """A queue of the smoke preset at 2 iterations (its unit settings are ``SETTINGS``)."""
  options = {"preset": "smoke", "seeds": (0, 1), "rows": ("vanilla", "kde"),
             "workdir": str(tmp_path / "w"), "results": str(tmp_path / "r"), **options}
  return paper.Queue(paper.Options(**options), {"iterations": 2})


def _seed(seed: int, test: list[float] | None, valid: list[float], *, bias=(0.9, 0.5),
          secs=(10.0, 2.0)) -> dict:
  """One seed's record of a row: per-network scores (``test``: every test metric the same
  list; None: a candidate scored on validation only)."""
  out = {"seed": seed, "distill_s": secs[0], "eval_s": secs[1], "bias_start": bias[0],
         "bias_end": bias[1], "synset_sha256": f"{seed:064d}",
         "valid": {"conflicting": valid, "num_conflicting": 10_000}}
  if test is not None:
    out["test"] = {m: test for m in METRICS}
  return out


def _record(unit: paper.Unit, rows: dict, settings=SETTINGS) -> dict:
  rec = {"unit": unit.name, "settings": settings, "rows": rows,
         "timings": {"total_s": 12.0, "distill_s": 10.0, "eval_s": 2.0}, "commit": "0.1.0+gabc1234",
         "machine": "2-core x86_64 CPU", "date": "2026-11-28", "command": "python x"}
  return dict(rec, digest=paper.record_digest(rec))


def _write(q: paper.Queue, unit: paper.Unit, rec: dict) -> str:
  path = unit.path(q.options.units_dir)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    json.dump(rec, f)
  return path


def test_a_records_digest_is_the_sha256_of_its_canonical_json():
  rec = {"unit": "c/s0", "settings": {"preset": "smoke", "iterations": 2},
         "rows": {"kde": [{"seed": 0, "valid": {"conflicting": [0.5, 0.25]}}]},
         "command": "python ± …", "digest": "anything"}
  # written by hand: keys sorted at every level, no spaces, non-ASCII kept as UTF-8
  text = ('{"command":"python ± …","rows":{"kde":[{"seed":0,"valid":{"conflicting":'
          '[0.5,0.25]}}]},"settings":{"iterations":2,"preset":"smoke"},"unit":"c/s0"}')
  assert paper.record_digest(rec) == hashlib.sha256(text.encode("utf-8")).hexdigest()
  # the digest field itself and the order of the keys do not count; any value does
  shuffled = dict(reversed(list(rec.items())), digest="other")
  assert paper.record_digest(shuffled) == paper.record_digest(rec)
  assert paper.record_digest(dict(rec, unit="c/s1")) != paper.record_digest(rec)


def test_check_record_refuses_a_copy_an_edit_and_a_seed_given_twice():
  s0, s1 = (paper.Unit(CELL, "rows", (s,), ("vanilla", "kde")) for s in (0, 1))
  rec = _record(s0, {r: [_seed(0, [0.5, 0.7], [0.3, 0.4])] for r in ("vanilla", "kde")})
  paper.check_record(rec, s0, "s0.json")  # its own unit: taken
  edited = json.loads(json.dumps(rec))
  edited["rows"]["kde"][0]["test"]["overall"][0] = 0.9
  renamed = dict(rec, unit=s1.name)  # a copy under seed 1's name, its digest made again
  renamed["digest"] = paper.record_digest(renamed)
  twice = dict(rec, rows=dict(rec["rows"], vanilla=[_seed(0, [0.5], [0.3])] * 2))
  twice["digest"] = paper.record_digest(twice)
  cases = [(rec, s1, "is the record of the unit cmnist5-ipc10/s0, not of cmnist5-ipc10/s1"),
           (edited, s0, "does not match the digest it carries"),
           (renamed, s1, "gives the row vanilla the seeds 0, but the unit cmnist5-ipc10/s1 "
                         "is seed(s) 1"),
           (twice, s0, "gives the row vanilla the seeds 0,0, but the unit cmnist5-ipc10/s0")]
  for bad, unit, said in cases:
    with pytest.raises(ValueError) as e:
      paper.check_record(bad, unit, "x.json")
    assert said in str(e.value) and "\n" not in str(e.value)


def test_a_record_of_other_settings_is_refused_in_one_line(tmp_path):
  q = _queue(tmp_path)
  s0 = paper.Unit(CELL, "rows", (0,), ("vanilla", "kde"))
  _write(q, s0, _record(s0, {r: [_seed(0, [0.5], [0.3])] for r in ("vanilla", "kde")},
                        settings={"preset": "smoke", "iterations": 3}))
  for check in (lambda: paper.read_unit(q, s0), lambda: paper.check_units_dir(q)):
    with pytest.raises(ValueError, match="give these settings another --units-dir") as e:
      check()
    assert "\n" not in str(e.value)


def _hold_claim(q: paper.Queue, unit: paper.Unit) -> int:
  """Another queue, a process of its own (forked: it needs no imports), holding the claim of
  ``unit`` with :func:`jaxdd.runs.rundir.workdir_lock` until it is killed; its pid."""
  read, write = os.pipe()
  pid = os.fork()
  if pid == 0:  # the other queue: never returns into the test
    try:
      os.close(read)
      with rundir.workdir_lock(paper.claim_dir(q, unit)):
        os.write(write, b"held")
        time.sleep(60)
    finally:
      os._exit(0)
  os.close(write)
  ready, _, _ = select.select([read], [], [], 30)
  assert ready and os.read(read, 4) == b"held"
  os.close(read)
  return pid


@pytest.mark.filterwarnings("ignore:os.fork")  # the forked queue runs no JAX
def test_two_queues_on_one_units_folder_claim_different_units(tmp_path, capsys):
  q = _queue(tmp_path)
  first, second = paper.cell_units(q, CELL)
  assert paper.next_units(q, [CELL], 1) == [first]
  other = _hold_claim(q, first)
  try:
    assert paper.claimed_by(q, first) == f"process {other} on {socket.gethostname()}"
    assert paper.next_units(q, [CELL], 2) == [second]  # the claimed unit is passed over
    assert f"unit {first.name} is claimed by process {other}" in capsys.readouterr().out
    with pytest.raises(ValueError, match=f"in use by process {other}"):
      with rundir.workdir_lock(paper.claim_dir(q, first)):
        pass  # what run_units meets when another queue claimed the unit since the plan
  finally:
    os.kill(other, signal.SIGKILL)  # killed: its lock file stays behind
    os.waitpid(other, 0)
  # a stale claim (its process has exited) holds nothing: the unit is next again, and taken
  assert os.path.exists(os.path.join(paper.claim_dir(q, first), ".lock"))
  assert paper.claimed_by(q, first) is None
  assert paper.next_units(q, [CELL], 1) == [first]
  with rundir.workdir_lock(paper.claim_dir(q, first)):
    assert paper.claimed_by(q, first) is None  # this queue's own claim


def test_next_units_go_in_queue_order(tmp_path):
  # two row groups (the rows that share the uniform batch first), each for every seed, then
  # each seed's ceiling; the next cell after them; finished units are passed over
  rows = ("vanilla", "kde", "kde_floor_init_is", "ceiling")
  q = _queue(tmp_path, rows=rows, rows_per_unit=2)
  other = paper.CELLS[0]
  names = [u.name for u in paper.next_units(q, [CELL, other], 8)]
  assert names == ["cmnist5-ipc10/s0-rows0", "cmnist5-ipc10/s1-rows0",
                   "cmnist5-ipc10/s0-rows1", "cmnist5-ipc10/s1-rows1",
                   "cmnist5-ipc10/s0-ceiling", "cmnist5-ipc10/s1-ceiling",
                   "cmnist5-ipc50/s0-rows0", "cmnist5-ipc50/s1-rows0"]
  units = paper.cell_units(q, CELL)
  assert [u.rows for u in units[:3]] == [("vanilla", "kde"), ("vanilla", "kde"),
                                         ("kde_floor_init_is",)]
  settings = paper.unit_settings(q)
  assert settings == dict(SETTINGS, rows_per_unit=2)
  done = units[0]
  _write(q, done, _record(done, {r: [_seed(0, [0.5], [0.3])] for r in done.rows}, settings))
  assert [u.name for u in paper.next_units(q, [CELL], 2)] == [
      "cmnist5-ipc10/s1-rows0", "cmnist5-ipc10/s0-rows1"]


def test_the_chosen_candidates_unit_comes_once_every_seeds_rows_are_in(tmp_path):
  # kde_init (a candidate, not reported) beats the paper's row on every seed by far more than
  # the noise of 10,000 samples: its test split is one more unit, after every seed's rows
  q = _queue(tmp_path, rows=("vanilla", "kde", "kde_init"))
  s0, s1 = paper.cell_units(q, CELL)
  valid = {"vanilla": [0.1], "kde": [0.5], "kde_init": [0.9]}

  def rows(seed):
    return {r: [_seed(seed, None if r == "kde_init" else [0.5], v)] for r, v in valid.items()}
  _write(q, s0, _record(s0, rows(0)))
  assert paper.chosen_units(q, CELL) == []  # seed 1's rows are not in yet
  assert paper.next_units(q, [CELL], 5) == [s1]
  _write(q, s1, _record(s1, rows(1)))
  (chosen,) = paper.next_units(q, [CELL], 5)
  assert (chosen.name, chosen.seeds, chosen.rows) == ("cmnist5-ipc10/chosen-kde_init", (0, 1),
                                                      ("kde_init",))
  # until it runs, the table shows the choice and says which unit reads its test split
  row = paper.units_table(q, CELL)["rows"][2]
  assert row[0] == "best label-free, chosen on validation: DM + KDE, init ∝ weight"
  assert row[4] == "its test split is read by the unit cmnist5-ipc10/chosen-kde_init"
  # a chosen record of seed 0 alone, left by a queue that asked for one seed: the chosen unit
  # of both seeds still runs (its record will replace that one); a record of another seed
  # set that is not a part of the unit's is refused as before
  old = paper.Unit(CELL, "chosen", (0,), ("kde_init",))
  path = _write(q, old, _record(old, {"kde_init": [_seed(0, [0.9], [0.9])]}))
  assert paper.next_units(q, [CELL], 5) == [chosen]
  assert paper.units_table(q, CELL)["rows"][2][4] == row[4]
  _write(q, old, _record(old, {"kde_init": [_seed(0, [0.9], [0.9])]}, dict(SETTINGS, x=1)))
  with pytest.raises(ValueError, match="move it aside|another --units-dir"):
    paper.next_units(q, [CELL], 5)  # of other settings: refused, not replaced
  other = paper.Unit(CELL, "chosen", (0, 1, 2), ("kde_init",))
  _write(q, other, _record(other, {"kde_init": [_seed(s, [0.9], [0.9]) for s in (0, 1, 2)]}))
  with pytest.raises(ValueError, match="move it aside and the unit runs again"):
    paper.next_units(q, [CELL], 5)
  os.remove(path)


def test_a_cells_table_from_hand_written_unit_records(tmp_path):
  q = _queue(tmp_path)
  nets = {  # row -> seed -> the per-network test overall accuracies (two networks)
      "vanilla": {0: [0.50, 0.60], 1: [0.70, 0.72]},
      "kde": {0: [0.80, 0.84], 1: [0.78, 0.74]}}
  valid = {"vanilla": [0.2, 0.3], "kde": [0.6, 0.6]}
  secs = {0: (10.0, 2.0), 1: (20.0, 3.0)}
  for unit in paper.cell_units(q, CELL):
    (s,) = unit.seeds
    _write(q, unit, _record(unit, {r: [_seed(s, nets[r][s], valid[r], secs=secs[s],
                                             bias=(0.9, 0.4 + 0.2 * s))]
                                   for r in unit.rows}))
  data = paper.units_table(q, CELL)
  by_label = {r[0]: r for r in data["rows"]}
  assert list(by_label) == ["vanilla DM", "DM + KDE (the paper's method)",
                            "best label-free, chosen on validation: DM + KDE (the paper's "
                            "method)"]
  for row, label in (("vanilla", "vanilla DM"), ("kde", "DM + KDE (the paper's method)")):
    per_seed = [np.mean(nets[row][s]) for s in (0, 1)]  # each seed's mean over its networks
    want = f"{100 * np.mean(per_seed):.1f} ± {100 * np.std(per_seed, ddof=1):.1f}"
    got = by_label[label]
    assert got[2] == "0,1" and got[1] == "no"
    assert got[4] == want and got[5:8] == [want] * 3  # every test metric had these scores
    assert got[3] == f"{100 * np.mean(valid[row]):.1f} ± 0.0"  # the same on both seeds
    assert got[10] == "90.0 ± 0.0 → 50.0 ± 14.1"  # bias share: 0.4 and 0.6 at the end
    assert got[11] == f"{np.median([12.0, 23.0]):.0f}"  # distill + eval s, median over seeds
  assert data["choice"]["chosen"] == "kde" and data["complete"] is True
  assert data["units"] == {"dir": q.options.units_dir, "settings": SETTINGS}
  assert data["commit"] == "cmnist5-ipc10/s0: abc1234; cmnist5-ipc10/s1: abc1234"
  assert "2 evaluation networks" in data["notes"][0]
  # one seed only: its value alone, no spread; the table is not complete
  os.remove(paper.cell_units(q, CELL)[1].path(q.options.units_dir))
  row = paper.units_table(q, CELL)["rows"][0]
  assert row[2] == "0" and row[4] == f"{100 * np.mean(nets['vanilla'][0]):.1f}"
  assert paper.units_table(q, CELL)["complete"] is False


def test_options_from_the_commands_flags():
  flags = argparse.Namespace(preset="smoke", seeds="0,2,", rows="vanilla,kde", units_dir=None,
                             results="res", tiny=True, argv=["--tiny", "--out", "/x"],
                             budget_minutes=None, plan=True)
  options = paper.Options.from_flags(flags)
  assert (options.seeds, options.rows) == ((0, 2), ("vanilla", "kde"))
  assert options.units_dir == os.path.join("res", "units") and options.workdir == "runs/paper-table"
  assert paper.recorded_command(options.argv) == "python experiments/paper_table.py --tiny --out OUT"
  assert paper.tiny_preset(options) is False  # --tiny with the smoke preset is smoke itself


def test_the_label_free_table_and_the_goals_check_from_hand_written_records(tmp_path):
  rows = ("vanilla", "kde", "kde_init", "gce", "fairdd")
  q = _queue(tmp_path, rows=rows, test_every_row=True)
  # per seed: test overall on 2 networks, validation conflicting on 2 networks
  test = {"vanilla": ([0.2, 0.3], [0.3, 0.4]), "kde": ([0.80, 0.82], [0.84, 0.86]),
          "kde_init": ([0.70, 0.72], [0.74, 0.76]), "gce": ([0.90, 0.92], [0.94, 0.96]),
          "fairdd": ([0.93, 0.95], [0.95, 0.97])}
  # gce beats the incumbent kde on validation by far on both seeds: it is chosen
  valid = {"vanilla": 0.1, "kde": 0.5, "kde_init": 0.45, "gce": 0.9, "fairdd": 0.95}
  for s in (0, 1):
    unit = paper.Unit(CELL, "rows", (s,), rows)
    recs = {r: [dict(_seed(s, test[r][s], [valid[r]] * 2), weights_auroc=0.5 + 0.1 * s,
                     weights_conflicting_share=0.25)] for r in rows}
    _write(q, unit, _record(unit, recs))
  data = paper.label_free.cell_data(q, CELL)
  by_label = {r[0]: r for r in data["rows"]}
  gce = by_label[paper.ROWS["gce"].label]
  # test overall: the seeds' means 0.91 and 0.95 -> 93.0 ± std(0.91, 0.95) = 2.8 points
  assert gce[4] == "93.0 ± 2.8"
  assert gce[7] == "0.550" and gce[8] == "25.0"  # mean AUROC of 0.5 and 0.6; share 25 %
  # FairDD: (0.94 + 0.96) / 2 = 0.95, so gce is 2.0 points under it
  assert gce[9] == "-2.0"
  auto = data["rows"][-1]
  assert auto[0] == "chosen on validation by auto's rule (gce)" and auto[1:] == gce[1:]
  assert data["goal"]["chosen"] == "gce" and data["goal"]["within"] is True
  assert abs(data["goal"]["auto_overall"] - 0.93) < 1e-12
  assert [r[0] for r in data["rows"]][:2] == [paper.ROWS["vanilla"].label,
                                              paper.ROWS["kde"].label]
  summary = paper.label_free.summary_data([data])
  assert summary["rows"] == [[CELL.name, "0,1", "gce", "93.0", "95.0", "-2.0", "yes"]]
  paths = paper.label_free.write_tables(q, [CELL])
  assert [os.path.basename(p) for p in paths] == [f"{CELL.name}.json", "summary.json"]
