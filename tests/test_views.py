"""Notebook-facing views: plot functions return Figures (no backend switch), EvalResult HTML."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdd import evaluate, models, plots
from jaxdd.metrics import METRICS
from jaxdd.structs import Batch, SynSet


def test_plot_functions_return_figures_and_keep_the_backend(tmp_path):
  import matplotlib
  backend = matplotlib.get_backend()
  rng = np.random.default_rng(0)
  syn = SynSet(rng.normal(size=(6, 4, 4, 3)).astype(np.float32), np.array([0, 0, 0, 1, 1, 2]))
  fig = plots.plot_synset(syn, [0.5] * 3, [0.25] * 3, class_names=["a", "b", "c"])
  # one image: a row per class, as many columns as the largest class (3), a white pixel
  # between neighbours; each class's images in order, white where a class has fewer
  (ax,) = fig.axes
  grid = np.asarray(ax.images[0].get_array())
  assert grid.shape == (3 * 5 - 1, 3 * 5 - 1, 3)
  shown = np.clip(syn.images * 0.25 + 0.5, 0, 1)
  cells = {(0, 0): 0, (0, 1): 1, (0, 2): 2, (1, 0): 3, (1, 1): 4, (2, 0): 5}
  for r in range(3):
    for j in range(3):
      cell = grid[r * 5:r * 5 + 4, j * 5:j * 5 + 4]
      want = shown[cells[(r, j)]] if (r, j) in cells else np.ones((4, 4, 3))
      np.testing.assert_allclose(cell, want, rtol=1e-6)
  assert (grid[4::5] == 1).all() and (grid[:, 4::5] == 1).all()
  assert [t.get_text() for t in ax.get_yticklabels()] == ["a", "b", "c"]
  assert not os.listdir(tmp_path)  # no path, nothing written
  results = {"dm": {"mean": dict(overall=0.2, aligned=0.9, conflicting=0.1, worst_group=0.05),
                    "std": dict(overall=0.01, aligned=0.0, conflicting=0.02, worst_group=0.0)}}
  path = tmp_path / "acc.png"
  fig = plots.plot_accuracy_bars(results, str(path))
  heights = [p.get_height() for p in fig.axes[0].patches]
  np.testing.assert_allclose(heights, [20, 90, 10, 5])
  assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert matplotlib.get_backend() == backend


def test_eval_result_html_and_dataframe():
  syn = SynSet(jnp.zeros((4, 8, 8, 3)), jnp.array([0, 0, 1, 1]))
  test = Batch(jnp.zeros((6, 8, 8, 3)), jnp.array([0, 1, 0, 1, 0, 1]),
               bias=jnp.array([0, 1, 1, 0, 0, 1]))
  r = evaluate.evaluate_synset(jax.random.key(0), syn, test,
                               model=models.ConvNet(num_classes=2, width=4), protocol="smoke",
                               num_models=2)
  html = r._repr_html_()
  assert f"<td>{100 * r.mean('overall'):.2f}</td>" in html
  # the per-group table: class 0 has two samples with bias 0 and one with bias 1
  counts = np.asarray(r.group_counts)
  np.testing.assert_array_equal(counts, [[2, 1], [1, 2]])
  assert f"[{counts[0, 0]}]</td>" in html
  pd = pytest.importorskip("pandas")
  df = r.to_dataframe()
  assert list(df.index) == list(METRICS)
  np.testing.assert_allclose(df["mean %"].to_numpy(),
                             [100 * r.mean(m) for m in METRICS], equal_nan=True)
  assert isinstance(df, pd.DataFrame)
