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

__all__ = ["new_figure", "save_figure", "png_bytes", "plot_synset", "plot_accuracy_bars"]


def new_figure(**kwargs: Any):
  """A :class:`matplotlib.figure.Figure` not registered with ``pyplot``.

  Args:
    **kwargs: forwarded to ``Figure`` (``figsize``, ``dpi``, ...).

  Returns:
    The figure; it is garbage-collected like any object (no ``plt.close``).
  """
  return _figure_class()(**kwargs)


_FIGURE_CLASS = None


def _figure_class():
  """A Figure subclass that renders itself in Jupyter (``_repr_png_``) even when
  no matplotlib backend was set up there (we never import ``pyplot``)."""
  global _FIGURE_CLASS
  if _FIGURE_CLASS is None:
    from matplotlib.figure import Figure

    class JaxddFigure(Figure):
      def _repr_png_(self) -> bytes:
        return png_bytes(self)

    _FIGURE_CLASS = JaxddFigure
  return _FIGURE_CLASS


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
    from jaxdd._src.io import atomic_write_bytes
    atomic_write_bytes(os.fspath(path), png_bytes(fig, dpi=dpi))
  return fig


def plot_synset(syn, mean, std, path: str | None = None, *, class_names=None,
                max_per_class: int = 10, title: str = ""):
  """Grid of the synthetic images, one row per class (de-normalised, clipped).

  Works for any labelled image set in the normalised space (e.g. real samples).
  Returns the :class:`matplotlib.figure.Figure` and writes a PNG when ``path``
  is given; the global matplotlib backend is left alone.
  """
  from jaxdd.data import denormalize
  images = np.clip(np.asarray(denormalize(syn.images, mean, std)), 0, 1)
  labels = np.asarray(syn.labels)
  classes = np.unique(labels)
  cols = min(max_per_class, max(int((labels == c).sum()) for c in classes))
  fig = new_figure(figsize=(cols * 0.8, len(classes) * 0.8))
  axes = fig.subplots(len(classes), cols, squeeze=False)
  for r, c in enumerate(classes):
    rows = np.flatnonzero(labels == c)[:cols]
    for j in range(cols):
      ax = axes[r, j]
      ax.axis("off")
      if j < len(rows):
        img = images[rows[j]]
        ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray" if img.shape[-1] == 1 else None)
    if class_names is not None:
      axes[r, 0].set_title(str(class_names[c]), fontsize=6, loc="left")
  if title:
    fig.suptitle(title, fontsize=8)
  return save_figure(fig, path)


def plot_accuracy_bars(results: dict[str, dict], path: str | None = None, *, title: str = ""):
  """Bars of overall / aligned / conflicting / worst-group accuracy per method.

  ``results`` maps a method name to a summary (``{"mean": {...}, "std": {...}}``,
  as :func:`jaxdd.pipeline.run` returns). Returns the Figure; writes a PNG when ``path`` is given.
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
