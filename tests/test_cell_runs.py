"""A table cell's DM rows x seeds in one program (``runs.distill_cell``): every run equals the
run ``distill_stage`` makes of its config alone, up to float rounding, and its directory is
written the same way."""
from __future__ import annotations

import os

import numpy as np
import pytest

from jaxdd.config import get_config

ROWS = {
    "vanilla": dict(weighting="none"),
    "kde": dict(weighting="kde"),
    "kde_init": dict(weighting="kde", init="weighted"),
    "kde_floor_init_is": dict(weighting="kde", init="weighted", real_sampling="weighted",
                              kde_floor=0.05),
    "fairdd_pseudo": dict(weighting="fairdd_pseudo", fairdd_clusters=4),
    "fairdd": dict(weighting="fairdd"),
    "oracle": dict(weighting="oracle"),
    "fairdd_batch": dict(weighting="fairdd_batch", fairdd_clusters=4),
}


@pytest.mark.slow
def test_a_cell_in_one_program_equals_each_run_alone(tmp_path):
  from jaxdd import runs
  base = get_config("smoke", iterations=3, checkpoint_every=3)
  seeds = (0, 3)
  configs = [base.replace(seed=s, **ROWS[r]) for s in seeds for r in ROWS]
  workdirs = [str(tmp_path / "cell" / r / f"s{s}") for s in seeds for r in ROWS]
  run_data = runs.RunData(base)
  syns = runs.distill_cell(configs, workdirs, num_rows=len(ROWS), run_data=run_data,
                           progress=False)
  assert len(syns) == len(configs)
  names = list(ROWS)
  # a few runs alone (each takes seconds): one of every kind of weighting and sampling
  for i in (0, names.index("kde") + len(ROWS), names.index("kde_floor_init_is") + len(ROWS),
            names.index("fairdd_pseudo"), names.index("fairdd") + len(ROWS),
            names.index("oracle"), names.index("fairdd_batch") + len(ROWS)):
    alone = runs.distill_stage(configs[i], str(tmp_path / "alone" / str(i)), run_data=run_data,
                               progress=False)
    scale = float(np.abs(alone.images).max())
    np.testing.assert_allclose(syns[i].images, alone.images, atol=2e-5 * scale,
                               err_msg=f"{names[i % len(ROWS)]} seed {configs[i].seed}")
    assert sorted(os.listdir(workdirs[i])) == sorted(os.listdir(tmp_path / "alone" / str(i)))
  # finished: loaded again, nothing distilled
  again = runs.distill_cell(configs, workdirs, num_rows=len(ROWS), run_data=run_data,
                            progress=False)
  np.testing.assert_array_equal(again[5].images, syns[5].images)
  with pytest.raises(ValueError, match="differ in more than their seed and weighting"):
    runs.distill_cell([base, base.replace(ipc=3)], [str(tmp_path / "x"), str(tmp_path / "y")],
                      num_rows=2, run_data=run_data, progress=False)
  with pytest.raises(ValueError, match="seed-major"):
    runs.distill_cell([base, base.replace(seed=1, weighting="kde")],
                      [str(tmp_path / "x"), str(tmp_path / "y")], num_rows=2,
                      run_data=run_data, progress=False)
