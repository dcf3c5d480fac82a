"""Matplotlib helpers that never touch the global backend.

Figures are built with :class:`matplotlib.figure.Figure` directly (no
``pyplot``, no ``matplotlib.use``), so a notebook keeps its inline backend and
a headless script needs no display. Every plot function of jaxdd returns its
Figure (Jupyter displays it) and writes a PNG only when given a path, atomically.

Example:
  >>> from jaxdd import plots
  >>> fig = plots.new_figure(figsize=(2, 2))
  >>> ax = fig.subplots()
  >>> from matplotlib.figure import Figure
  >>> isinstance(fig, Figure)
  True
"""
from __future__ import annotations

import io
import os
from typing import Any

import numpy as np

from jaxdd._src.io import atomic_write_bytes
from jaxdd.data.ops import denormalize

__all__ = ["new_figure", "save_figure", "png_bytes", "plot_synset", "synset_grid",
           "plot_accuracy_bars", "plot_weight_histogram"]


def new_figure(**kwargs: Any):
  """A :class:`matplotlib.figure.Figure` not registered with ``pyplot``.

  Args:
    **kwargs: forwarded to ``Figure`` (``figsize``, ``dpi``, ...).

  Returns:
    The figure; it is garbage-collected like any object (no ``plt.close``).
  """
  return _figure_class()(**kwargs)


def _figure_class():
  """A Figure subclass that renders itself in Jupyter (``_repr_png_``) even when
  no matplotlib backend was set up there (we never import ``pyplot``)."""
  from matplotlib.figure import Figure  # matplotlib loads on the first plot, not on import

  class JaxddFigure(Figure):
    def _repr_png_(self) -> bytes:
      return png_bytes(self)

  return JaxddFigure


def png_bytes(fig, *, dpi: int = 100) -> bytes:
  """The figure rendered as PNG bytes (Agg, whatever the global backend)."""
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
  return buf.getvalue()


def save_figure(fig, path: str | os.PathLike | None, *, dpi: int = 100):
  """Writes ``fig`` as PNG to ``path`` atomically (parents created); no-op for None.

  Returns:
    ``fig``, so plot functions can ``return save_figure(fig, path)``.
  """
  if path is not None:
    atomic_write_bytes(os.fspath(path), png_bytes(fig, dpi=dpi))
  return fig


def plot_synset(syn, mean, std, path: str | None = None, *, class_names=None,
                max_per_class: int = 10, title: str = ""):
  """Grid of the synthetic images, one row per class (de-normalised, clipped to [0, 1]).

  Works for any labelled image set in the normalised space (e.g. real samples). The grid is
  one image (the first ``max_per_class`` images of each class side by side, one pixel of
  white between them), drawn once: a figure of one axes per image took about a second to
  draw for 100 images. Returns the :class:`matplotlib.figure.Figure` and writes a PNG when
  ``path`` is given; the global matplotlib backend is left alone.
  """
  images = np.clip(np.asarray(denormalize(syn.images, mean, std)), 0, 1)
  labels = np.asarray(syn.labels)
  classes = np.unique(labels)
  cols = min(max_per_class, max(int((labels == c).sum()) for c in classes))
  grid = synset_grid(images, labels, classes, cols)
  fig = new_figure(figsize=(cols * 0.8, len(classes) * 0.8))
  ax = fig.subplots()
  gray = images.shape[-1] == 1
  ax.imshow(grid[..., 0] if gray else grid, cmap="gray" if gray else None, vmin=0.0, vmax=1.0,
            interpolation="nearest")
  ax.set_xticks([])
  h = images.shape[1] + 1
  ax.set_yticks([r * h + (h - 1) / 2 for r in range(len(classes))],
                [] if class_names is None else [str(class_names[c]) for c in classes],
                fontsize=6)
  ax.tick_params(length=0)
  for spine in ax.spines.values():
    spine.set_visible(False)
  if title:
    fig.suptitle(title, fontsize=8)
  return save_figure(fig, path)


def synset_grid(images: np.ndarray, labels: np.ndarray, classes, cols: int) -> np.ndarray:
  """(rows * (H + 1) - 1, cols * (W + 1) - 1, C) image of ``images`` (N, H, W, C): row ``r``
  holds the first ``cols`` images of class ``classes[r]``, in order; white (1) elsewhere.

  Example:
    >>> g = synset_grid(np.zeros((3, 2, 2, 1)), np.array([0, 1, 1]), [0, 1], 2)
    >>> g.shape, g[:, :, 0].tolist()[0], g[:, :, 0].tolist()[3]
    ((5, 5, 1), [0.0, 0.0, 1.0, 1.0, 1.0], [0.0, 0.0, 1.0, 0.0, 0.0])
  """
  n, h, w, ch = images.shape
  grid = np.ones((len(classes) * (h + 1) - 1, cols * (w + 1) - 1, ch), np.float32)
  for r, c in enumerate(classes):
    for j, i in enumerate(np.flatnonzero(labels == c)[:cols]):
      grid[r * (h + 1):r * (h + 1) + h, j * (w + 1):j * (w + 1) + w] = images[i]
  return grid


def plot_accuracy_bars(results: dict[str, dict], path: str | None = None, *, title: str = ""):
  """Bars of overall / aligned / conflicting / worst-group accuracy per method.

  ``results`` maps a method name to a summary (``{"mean": {...}, "std": {...}}``,
  as :func:`jaxdd.runs.run` returns). Returns the Figure; writes a PNG when ``path`` is given.
  """
  metrics = ["overall", "aligned", "conflicting", "worst_group"]
  names = list(results)
  fig = new_figure(figsize=(6, 3))
  ax = fig.subplots()
  width = 0.8 / max(len(names), 1)
  for i, name in enumerate(names):
    means = [100 * results[name]["mean"][m] for m in metrics]
    stds = [100 * results[name]["std"][m] for m in metrics]
    ax.bar(np.arange(len(metrics)) + i * width, means, width, yerr=stds, label=name, capsize=2)
  ax.set_xticks(np.arange(len(metrics)) + width * (len(names) - 1) / 2, metrics)
  ax.set_ylabel("test accuracy (%)")
  ax.set_ylim(0, 100)
  ax.legend(fontsize=7)
  if title:
    ax.set_title(title, fontsize=8)
  return save_figure(fig, path)


def plot_weight_histogram(weights: Any, aligned: Any, path: str | os.PathLike | None = None, *,
                          title: str = "sample weights"):
  """Histogram of the weights of aligned vs conflicting samples (a Figure; PNG if ``path``).

  Log-spaced bins on a log-scale x axis (weights span orders of magnitude);
  each group's histogram is normalised to its own size (fraction of the group
  per bin), since the aligned group is 20-200 times larger. Exact zeros (a
  softmax that underflowed) cannot sit on a log axis; their count is given in
  the legend. Written to a temporary file and renamed, so ``path`` is either
  the old file or the complete new one.

  Args:
    weights: (N,) non-negative finite weights.
    aligned: (N,) bool, True = bias-aligned.
    path: optional output ``.png`` path (parent directories are created).
    title: plot title.

  Returns:
    The :class:`matplotlib.figure.Figure` (the global matplotlib backend is
    left alone; Jupyter displays the figure).

  Example:
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), 'w.png')
    >>> fig = plot_weight_histogram([0.1, 0.2, 0.9], [True, True, False], path)
    >>> os.path.exists(path), len(fig.axes)
    (True, 1)
  """
  import matplotlib.ticker  # matplotlib loads on the first plot, not on import

  w = np.asarray(weights, np.float64)
  aligned = np.asarray(aligned)
  if w.ndim != 1 or aligned.shape != w.shape:
    raise ValueError(f"weights and aligned must be 1-D of equal length, got {w.shape}, {aligned.shape}")
  if aligned.dtype != bool:
    raise ValueError(f"aligned must be boolean, got {aligned.dtype}")
  if not np.all(np.isfinite(w)) or np.any(w < 0):
    raise ValueError("weights must be finite and non-negative")
  positive = w[w > 0]
  if positive.size:
    lo, hi = positive.min(), positive.max()
    if hi <= lo:
      lo, hi = lo / 1.5, hi * 1.5
    bins = np.geomspace(lo, hi, 41)
  else:
    bins = np.geomspace(1e-3, 1.0, 41)
  fig = new_figure(figsize=(6.4, 4.0))
  ax = fig.subplots()
  for name, sel, colour in (("aligned", aligned, "tab:blue"), ("conflicting", ~aligned, "tab:red")):
    g = w[sel]
    if g.size == 0:
      continue
    gp = g[g > 0]
    zeros = g.size - gp.size
    label = f"{name} (n={g.size}, mean={g.mean():.3g}" + (f", {zeros} zeros)" if zeros else ")")
    ax.hist(gp, bins=bins, weights=np.full(gp.size, 1.0 / g.size), histtype="stepfilled",
            alpha=0.45, color=colour, label=label)
  ax.set_xscale("log")
  # Minor-tick labels of a log axis spanning < 1 decade collide; keep majors only.
  ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
  ax.set_xlabel("weight (log scale)")
  ax.set_ylabel("fraction of group")
  ax.set_title(title)
  ax.legend()
  fig.tight_layout()
  return save_figure(fig, path)
