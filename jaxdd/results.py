"""Evaluation results: :class:`EvalResult` and its serialisation.

An :class:`EvalResult` holds the per-network test accuracies of one
evaluation, stamped with how they were produced (protocol, model spec, keys,
learning-rate selection); :meth:`EvalResult.to_dict` is JSON-serialisable,
:meth:`EvalResult.format_table` prints percentages.
"""
from __future__ import annotations

import dataclasses
import html
import math
import warnings
from typing import Any

import jax
import numpy as np

from jaxdd import models
from jaxdd.metrics import METRICS, equalized_odds
from jaxdd.protocols import Protocol


def model_spec(model) -> str:
  """The architecture spec string stamped on results.

  Args:
    model: a Flax module.

  Returns:
    :func:`jaxdd.models.spec_of` of it, or its class name for modules that
    function does not know.

  Example:
    >>> from jaxdd import models
    >>> model_spec(models.ConvNet(num_classes=10, width=64))
    'convnet-d3-w64-instancenorm-avgpool'
  """
  try:
    return models.spec_of(model)
  except (ValueError, AttributeError):
    return type(model).__name__


def format_pm(values, *, ddof: int = 1, scale: float = 100.0, signed: bool = False) -> str:
  """``"mean ± std"`` of the values that are not None or NaN, times ``scale``, one decimal.

  The one formatter of every results table (study tables, experiments/). ``ddof`` 1
  is the sample std over seeds, 0 the reference's convention over networks; a
  single value gets ± 0.0; no values give "–". NaN is an accuracy over an empty
  group (bias-aligned accuracy on a test split without aligned images), so it
  counts as no value. ``signed`` prints the mean's sign (paired differences).

  Example:
    >>> format_pm([0.5, 0.7]), format_pm([0.02, -0.04], signed=True), format_pm([None])
    ('60.0 ± 14.1', '-1.0 ± 4.2', '–')
    >>> format_pm([float("nan"), float("nan")])
    '–'
  """
  values = np.asarray([v for v in values if v is not None and not np.isnan(v)], float)
  if not values.size:
    return "–"
  std = values.std(ddof=ddof) if values.size > ddof else 0.0
  mean = f"{scale * values.mean():+.1f}" if signed else f"{scale * values.mean():.1f}"
  return f"{mean} ± {scale * std:.1f}"


def data_line(data: dict) -> str:
  """The data of an evaluation in words (:attr:`EvalResult.data`).

  >>> data_line({"name": "folder:pets", "data_sha256": "ab" * 32, "split": "test"})
  'folder:pets (content sha256 abababababab), test split'
  >>> data_line({"name": "cmnist", "conflict_ratio": 0.05, "split": "test"})
  'cmnist, conflict ratio 0.05, test split'
  """
  words = [str(data.get("name"))]
  if data.get("data_sha256"):
    words[0] += f" (content sha256 {str(data['data_sha256'])[:12]})"
  if data.get("conflict_ratio") is not None:
    words.append(f"conflict ratio {data['conflict_ratio']:g}")
  if data.get("split"):
    words.append(f"{data['split']} split")
  return ", ".join(words)


def _json_float(x) -> float | None:
  x = float(x)
  return x if math.isfinite(x) else None


def _json_array(a) -> Any:
  a = np.asarray(a)
  if a.dtype.kind == "f":
    return [_json_array(v) for v in a] if a.ndim else _json_float(a)
  return a.tolist()


@dataclasses.dataclass(frozen=True, eq=False)
class EvalResult:
  """Test accuracies of freshly trained networks, stamped with how they were made.

  Per-model arrays have shape (num_models,); ``group_table`` is (num_models,
  classes, bias values) and ``group_counts`` (classes, bias values). Means and
  standard deviations (numpy's ``std``, ddof 0, as the reference) are over the
  models. Accuracies are fractions.
  """
  protocol: Protocol
  model_spec: str
  method: str
  num_models: int
  key_data: tuple[int, ...]
  lrs: tuple[float, ...]
  selected_lr: float
  selection: str
  select_on: str | None
  valid_scores: np.ndarray | None  # (len(lrs), num_models) on the validation batch
  overall: np.ndarray
  aligned: np.ndarray
  conflicting: np.ndarray
  worst_group: np.ndarray
  group_table: np.ndarray
  group_counts: np.ndarray
  train_loss: np.ndarray  # (num_models, num_epochs) at the selected lr
  train_acc: np.ndarray
  num_train: int
  num_test: int
  num_valid: int
  parallel: str = "vmap"
  hparams: dict = dataclasses.field(default_factory=dict)
  data: dict = dataclasses.field(default_factory=dict)  # the test data, as records name it

  def mean(self, metric: str = "overall") -> float:
    """Mean over models of ``metric`` (one of ``overall``, ``aligned``,
    ``conflicting``, ``worst_group``)."""
    return float(np.mean(getattr(self, metric)))

  def std(self, metric: str = "overall") -> float:
    """Standard deviation (ddof 0) over models of ``metric``."""
    return float(np.std(getattr(self, metric)))

  def equalized_odds(self, *, empty: str = "zero") -> tuple[np.ndarray, np.ndarray]:
    """Per network, DEO_M and DEO_A (:func:`jaxdd.metrics.equalized_odds`), fractions."""
    return equalized_odds(self.group_table, self.group_counts, empty=empty)

  def summary(self) -> dict[str, Any]:
    """``{"mean": {metric: ...}, "std": {metric: ...}, "result": to_dict()}`` over
    the four group metrics: the form run directories store (``eval.json``)."""
    metrics = ("overall", "aligned", "conflicting", "worst_group")
    return {"mean": {m: self.mean(m) for m in metrics},
            "std": {m: self.std(m) for m in metrics}, "result": self.to_dict()}

  def stamp(self) -> dict[str, Any]:
    """How the numbers were produced (protocol fields, model, seeds, method)."""
    return {
        "protocol": self.protocol.to_dict(), "model": self.model_spec, "method": self.method,
        "num_models": self.num_models, "key_data": list(self.key_data), "lrs": list(self.lrs),
        "selected_lr": self.selected_lr, "selection": self.selection,
        "select_on": self.select_on, "num_train": self.num_train, "num_test": self.num_test,
        "num_valid": self.num_valid, "parallel": self.parallel, "hparams": dict(self.hparams),
        "jax_version": jax.__version__,
    } | ({"data": dict(self.data)} if self.data else {})

  def to_dict(self) -> dict[str, Any]:
    """A JSON-serialisable dict: the stamp, mean/std per metric and per-model
    arrays (non-finite values, e.g. an empty subset, become ``None``), so
    ``json.dumps(result.to_dict())`` always works.
    """
    d = self.stamp()
    d["summary"] = {m: {"mean": _json_float(self.mean(m)), "std": _json_float(self.std(m))}
                    for m in METRICS}
    d["per_model"] = {m: _json_array(getattr(self, m)) for m in METRICS}
    d["group_table"] = _json_array(self.group_table)
    d["group_counts"] = _json_array(self.group_counts)
    d["valid_scores"] = None if self.valid_scores is None else _json_array(self.valid_scores)
    d["train_loss_final"] = _json_array(self.train_loss[:, -1])
    d["train_acc_final"] = _json_array(self.train_acc[:, -1])
    return d

  def format_table(self) -> str:
    """A human-readable summary plus the per-(class x bias) accuracy table
    (mean over models, in %, with test counts)."""
    p = self.protocol
    lines = [
        f"protocol {p.name}{'' if p.standard else ' (modified)'}: {p.num_epochs} epochs, "
        f"lr {self.selected_lr:g} (x{p.lr_decay_factor:g} after epoch {p.decay_epoch}), "
        f"batch {p.batch_size}, augment {p.augment or 'none'}",
        f"model {self.model_spec} | method {self.method} | {self.num_models} models | "
        f"train {self.num_train} / test {self.num_test}"
        + (f" | lr chosen on valid ({self.select_on}) from {list(self.lrs)}"
           if self.selection == "valid" else ""),
    ]
    if self.data:
      lines.insert(0, "data: " + data_line(self.data))
    if self.hparams:
      lines.append("hyper-parameters: " + ", ".join(f"{k}={v:g}" if isinstance(v, float)
                                                    else f"{k}={v}"
                                                    for k, v in self.hparams.items()))
    lines.append(f"{'metric':<14}{'mean %':>9}{'std %':>8}")
    # Without group labels the only groups are the classes: no aligned / conflicting split
    no_groups = self.group_counts.shape[1] == 1 and not np.isfinite(self.aligned).any()
    for m in METRICS:
      mean, std = self.mean(m), self.std(m)
      val = "     n/a" if not math.isfinite(mean) else f"{100 * mean:9.2f}{100 * std:8.2f}"
      name = "worst class" if no_groups and m == "worst_group" else m.replace("_", " ")
      lines.append(f"{name:<14}{val}")
    if no_groups:
      lines.append("(the test split has no group labels: group measures need them)")
    if self.group_table.size and self.group_counts.shape[1] > 1:
      # FairDD's equalized-odds differences, empty (class, bias) groups counted as 0 as its
      # code does (jaxdd.metrics.equalized_odds)
      for name, v in zip(("DEO_M", "DEO_A"), self.equalized_odds()):
        lines.append(f"{name:<14}{100 * float(np.mean(v)):9.2f}{100 * float(np.std(v)):8.2f}")
    table = self.group_means() if self.group_table.size else self.group_table
    nb = self.group_counts.shape[1]
    lines.append("per-class accuracy % [test count]" if no_groups else
                 "per-group accuracy % (rows: class, columns: bias value) [test count]")
    lines.append("class " + "".join(f"{b:>13}" for b in range(nb)))
    for c in range(self.group_counts.shape[0]):
      cells = []
      for b in range(nb):
        n = int(self.group_counts[c, b])
        cells.append(f"{'-':>13}" if n == 0 else f"{100 * table[c, b]:6.1f} [{n:>4}]".rjust(13))
      lines.append(f"{c:<6}" + "".join(cells))
    return "\n".join(lines)

  def group_means(self) -> np.ndarray:
    """(classes, bias values) accuracy averaged over models; NaN where the test set has no sample."""
    if not self.group_table.size:
      return np.zeros(self.group_counts.shape)
    with warnings.catch_warnings():  # a group every network got NaN on stays NaN, quietly
      warnings.simplefilter("ignore", RuntimeWarning)
      return np.nanmean(np.where(self.group_counts[None] > 0, self.group_table, np.nan), axis=0)

  def to_dataframe(self):
    """Per-metric mean/std (in %) as a ``pandas.DataFrame`` (needs pandas).

    Rows are ``overall``, ``aligned``, ``conflicting``, ``worst_group``; the
    ``method`` and ``protocol`` columns make frames of several results
    concatenable.
    """
    try:
      import pandas as pd  # noqa: PLC0415  (optional, and slow to import: loaded on first use)
    except ImportError as e:
      raise ImportError("EvalResult.to_dataframe needs pandas (pip install pandas); "
                        "to_dict() and format_table() work without it") from e
    return pd.DataFrame(
        {"mean %": [100 * self.mean(m) for m in METRICS],
         "std %": [100 * self.std(m) for m in METRICS],
         "method": self.method, "protocol": self.protocol.name, "model": self.model_spec},
        index=list(METRICS))

  def _repr_html_(self) -> str:
    """Notebook view: the summary metrics and the per-(class x bias) table."""
    p = self.protocol
    head = html.escape(f"{self.method} | {self.model_spec} | protocol {p.name} "
                       f"({p.num_epochs} epochs) | {self.num_models} models | "
                       f"train {self.num_train} / test {self.num_test}")
    rows = "".join(
        f"<tr><td>{m.replace('_', ' ')}</td><td>{100 * self.mean(m):.2f}</td>"
        f"<td>{100 * self.std(m):.2f}</td></tr>" if math.isfinite(self.mean(m)) else
        f"<tr><td>{m.replace('_', ' ')}</td><td>n/a</td><td>n/a</td></tr>" for m in METRICS)
    table = self.group_means()
    nb = self.group_counts.shape[1]
    cells = []
    for c in range(self.group_counts.shape[0]):
      tds = "".join("<td>-</td>" if self.group_counts[c, b] == 0 else
                    f"<td>{100 * table[c, b]:.1f} [{int(self.group_counts[c, b])}]</td>"
                    for b in range(nb))
      cells.append(f"<tr><th>{c}</th>{tds}</tr>")
    return (f"<div><p>{head}</p><table><tr><th>metric</th><th>mean %</th><th>std %</th></tr>"
            f"{rows}</table><p>per-group accuracy % (rows: class, columns: bias value) "
            f"[test count]</p><table><tr><th>class</th>"
            + "".join(f"<th>{b}</th>" for b in range(nb)) + "</tr>" + "".join(cells)
            + "</table></div>")
