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

__all__ = ["new_figure", "save_figure", "png_bytes"]


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
