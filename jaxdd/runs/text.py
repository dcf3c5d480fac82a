"""The text a run prints and writes: method names, stored results, the comparison table."""
from __future__ import annotations

import numpy as np

from jaxdd import metrics
from jaxdd.config import RunConfig


def method_name(config: RunConfig) -> str:
  """``dm``, ``dsa`` or ``dc``, with ``+kde`` (or ``+oracle``) for the reweighted variant
  (:func:`method_label` of the run's method and weighting)."""
  return method_label(config.method, config.weighting)


def method_label(method: str, weighting: str) -> str:
  """The name of a method under a weighting: the method, with ``+`` and the weighting unless
  it is ``none``.

  >>> method_label("dm", "kde"), method_label("mtt", "none")
  ('dm+kde', 'mtt')
  """
  return method + ("" if weighting == "none" else f"+{weighting}")


def format_stored(summary: dict) -> str:
  """Mean ± std over networks of a stored ``eval.json``, one metric per line."""
  lines = [f"method {summary.get('method', '?')}"]
  means = summary["mean"]
  no_groups = all(means.get(m) is None or not np.isfinite(means[m])
                  for m in ("aligned", "conflicting"))
  for m, v in means.items():
    name = "worst class" if no_groups and m == "worst_group" else m.replace("_", " ")
    if v is None or not np.isfinite(v):
      lines.append(f"{name:<14}     n/a")
    else:
      lines.append(f"{name:<14}{100 * v:9.2f}{100 * summary['std'][m]:8.2f}")
  return "\n".join(lines)


def format_comparison(results: dict[str, dict], config: RunConfig, *,
                      train_aligned_fraction: float | None = None,
                      reference: dict | None = None) -> str:
  """The markdown table of ``comparison.md``; accuracies are mean ± std over networks.

  The bias score column is the % of a SynSet's images that a bias-attribute
  classifier finds carrying their class's aligned bias
  (:func:`jaxdd.diagnostics.bias_score`); "–" where none was computed.
  ``reference`` (``true_aligned_fraction``, ``bias_aligned_fraction``): what the
  classifier reads on held-out real images of known composition, the score's yardstick.
  """
  data = (f"--data {config.data_spec}" if config.data_spec is not None
          else f"{config.dataset}, conflict ratio {config.conflict_ratio}")
  head = (f"{data}, IPC {config.ipc}, "
          f"preset {config.preset}, seed {config.seed}, eval protocol {config.eval_protocol}, "
          f"{config.num_eval_models} models")
  if train_aligned_fraction is not None:
    head += f"; {100 * train_aligned_fraction:.1f} % of the training images are bias-aligned"
  if reference is not None:
    head += (f"; the bias classifier reads held-out real images "
             f"({100 * reference['true_aligned_fraction']:.1f} % aligned) as "
             f"{100 * reference['bias_aligned_fraction']:.1f} % aligned")
  grouped = any(r["mean"][m] is not None and np.isfinite(r["mean"][m])
                for r in results.values() for m in ("aligned", "conflicting"))
  worst = "worst group" if grouped or not results else "worst class"
  lines = [head, "",
           f"| method | overall | bias-aligned | bias-conflicting | {worst} | "
           "bias score (aligned %) | DEO_M | DEO_A |",
           "|---|---|---|---|---|---|---|---|"]
  for name, r in results.items():
    # "–" where a measure is undefined (no group labels: no aligned / conflicting split)
    cells = [f"{100 * r['mean'][m]:.1f} ± {100 * r['std'][m]:.1f}"
             if r["mean"][m] is not None and np.isfinite(r["mean"][m]) else "–"
             for m in ("overall", "aligned", "conflicting", "worst_group")]
    score = r.get("bias_score")
    cells.append("–" if score is None else f"{100 * score['aligned_fraction']:.1f}")
    cells += deo_cells(r.get("result") or {})
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def deo_cells(result: dict) -> list[str]:
  """DEO_M and DEO_A (:func:`jaxdd.metrics.equalized_odds`, FairDD's form: empty groups count
  as 0), mean ± std over networks in %, from a stored evaluation's per-network group table;
  "–" where it has none or one bias value.

  Example:
    >>> deo_cells({"group_table": [[[1.0, 0.5], [0.8, None]]], "group_counts": [[5, 5], [5, 0]]})
    ['80.0 ± 0.0', '65.0 ± 0.0']
  """
  table, counts = result.get("group_table"), result.get("group_counts")
  if table is None or counts is None or np.ndim(counts) != 2 or np.shape(counts)[1] < 2:
    return ["–", "–"]
  raw = np.array(table, dtype=object)
  table = np.where(raw == None, np.nan, raw).astype(float)  # noqa: E711 (JSON null: no sample)
  out = metrics.equalized_odds(table, np.asarray(counts))
  return [f"{100 * float(np.mean(v)):.1f} ± {100 * float(np.std(v)):.1f}" for v in out]
