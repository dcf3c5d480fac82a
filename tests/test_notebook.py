"""The quickstart notebook runs end to end (smoke scale), so it cannot rot.

Parameters are injected papermill-style: a cell inserted after the one tagged
``parameters`` overrides them; the notebook is executed by nbclient in a
fresh ipykernel."""
import json
import os

import numpy as np
import pytest

from jaxdd import data

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOK = os.path.join(os.path.dirname(__file__), "..", "experiments", "notebooks",
                        "quickstart.ipynb")


def _outputs(cell, kind):
  return [o for o in cell.get("outputs", []) if o.get("output_type") == kind]


@pytest.mark.slow
def test_quickstart_notebook_executes(tmp_path):
  nb = nbformat.read(NOTEBOOK, as_version=4)
  idx = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
  nb.cells.insert(idx + 1, nbformat.v4.new_code_cell(
      f'PRESET = "smoke"\nOVERRIDES = {{"iterations": 2}}\nWORKDIR = {str(tmp_path / "w")!r}'))
  nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                          resources={"metadata": {"path": str(tmp_path)}}).execute()
  text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                 for o in _outputs(c, "stream"))
  line = next(l for l in text.splitlines() if l.startswith("NOTEBOOK_SUMMARY "))
  summary = json.loads(line[len("NOTEBOOK_SUMMARY "):])
  # independent reference: the same splits loaded here
  train = data.load("cmnist", split="train", conflict_ratio=0.05)
  test = data.load("cmnist", split="test", conflict_ratio=0.05)
  assert summary["num_train"] == len(train)
  assert summary["num_conflicting"] == int((~train.aligned).sum())
  assert summary["num_test"] == len(test)
  assert summary["num_synthetic"] == {"DM": 20, "DM+KDE": 20}  # smoke: IPC 2 x 10 classes
  counts = np.asarray(summary["group_counts"])
  expected = np.zeros((10, 10), int)
  np.add.at(expected, (test.labels, test.bias), 1)
  np.testing.assert_array_equal(counts, expected)
  for acc in summary["accuracy"].values():
    assert all(0.0 <= v <= 1.0 for v in acc.values())
  # figures rendered inline (samples, histogram, synthetic sets, bars), result tables as HTML
  pngs = sum(1 for c in nb.cells if c.cell_type == "code"
             for o in c.get("outputs", []) if "image/png" in o.get("data", {}))
  assert pngs >= 4
  htmls = [o["data"]["text/html"] for c in nb.cells if c.cell_type == "code"
           for o in c.get("outputs", []) if "text/html" in o.get("data", {})]
  assert sum("per-group accuracy" in h for h in htmls) == 2
  assert "Dataset card" in text or "conflicting" in text
  # the notebook left the matplotlib backend alone and nothing errored
  assert not any(_outputs(c, "error") for c in nb.cells if c.cell_type == "code")
