"""The settings a study compares: weighting knobs and ``lr_img``, and their grids."""
from __future__ import annotations

import dataclasses
from typing import Any

from jaxdd.config import RunConfig
from jaxdd.runs import text

#: Knobs a weighting setting may change (RunConfig fields).
KNOBS = ("weighting", "kde_normalize", "kde_variance", "kde_temperature", "kde_scope", "kde_floor",
         "init", "real_sampling", "lr_img", "expert_weighting")


@dataclasses.dataclass(frozen=True)
class Setting:
  """A named set of RunConfig overrides (the weighting knobs and ``lr_img``)."""
  overrides: tuple[tuple[str, Any], ...]

  @classmethod
  def of(cls, **overrides) -> "Setting":
    unknown = set(overrides) - set(KNOBS)
    if unknown:
      raise ValueError(f"a Setting changes only {KNOBS}; got {sorted(unknown)}")
    return cls(tuple(sorted(overrides.items())))

  def apply(self, base: RunConfig) -> RunConfig:
    return base.replace(**dict(self.overrides))

  def name(self, base: RunConfig) -> str:
    """E.g. ``dm lr=10`` or ``dm+kde power v=0.01 T=0.25 lr=10``."""
    c = self.apply(base)
    name = f"{text.method_name(c)}"
    if c.weighting == "kde":
      name += f" {c.kde_normalize} v={c.kde_variance:g} T={c.kde_temperature:g}"
      if c.kde_scope != "batch":
        name += f" {c.kde_scope}"
      if c.kde_floor:
        name += f" floor={c.kde_floor:g}"
    if c.init != base.init:
      name += f" init={c.init}"
    if c.real_sampling != base.real_sampling:
      name += f" sampling={c.real_sampling}"
    if c.expert_weighting != base.expert_weighting and c.weighting != "none":
      name += f" experts={c.expert_weighting}"
    return name + f" lr={c.lr_img:g}"

  def to_dict(self) -> dict[str, Any]:
    return dict(self.overrides)


def knob_grid(base: RunConfig) -> list[Setting]:
  """The pre-registered candidates of :func:`tune` around ``base``.

  Vanilla: ``lr_img`` in {0.3, 1, 3} x base. KDE: ``power`` weights with
  v in {0.01, 0.1, 1} x T in {0.1, 0.25, 1} at the base lr_img; ``softmax``
  with v = 0.01, T = 1; and the base weighting at lr_img 0.3x and 3x. Where the
  synthetic images start and how real batches are drawn: the base weighting with
  ``init='weighted'``, and with ``init='weighted'``, ``real_sampling='weighted'``
  and a density floor in {0, 0.01, 0.02, 0.05, 0.1} (docs/results/proxy.md,
  "The density floor, chosen on validation"; the
  best floor tracks the share of bias-conflicting images, which a user does not know).
  """
  if base.method == "mtt":
    return _mtt_grid(base)
  lr = base.lr_img
  grid = [Setting.of(weighting="none", lr_img=round(f * lr, 6)) for f in (0.3, 1.0, 3.0)]
  grid += [Setting.of(weighting="kde", kde_normalize="power", kde_variance=v, kde_temperature=t,
                      lr_img=lr) for v in (0.01, 0.1, 1.0) for t in (0.1, 0.25, 1.0)]
  grid.append(Setting.of(weighting="kde", kde_normalize="softmax", kde_variance=0.01,
                         kde_temperature=1.0, lr_img=lr))
  for f in (0.3, 3.0):
    grid.append(Setting.of(weighting="kde", kde_normalize=base.kde_normalize,
                           kde_variance=base.kde_variance, kde_temperature=base.kde_temperature,
                           lr_img=round(f * lr, 6)))
  incumbent = dict(weighting="kde", kde_normalize=base.kde_normalize,
                   kde_variance=base.kde_variance, kde_temperature=base.kde_temperature,
                   lr_img=lr)
  grid.append(Setting.of(**incumbent, init="weighted"))
  grid += [Setting.of(**incumbent, init="weighted", real_sampling="weighted", kde_floor=q)
           for q in (0.0, 0.01, 0.02, 0.05, 0.1)]
  return list(dict.fromkeys(grid))


def _mtt_grid(base: RunConfig) -> list[Setting]:
  """Trajectory matching's candidates: its weighting acts on the experts (each KDE candidate
  trains its own buffer), so the grid is smaller than DM's.

  Vanilla: ``lr_img`` in {0.1, 1, 10} x base (MTT's coarse 10^n grid). KDE over whole
  classes: ``power`` weights with v in {0.01, 0.1} x T in {0.25, 1}; the base weighting at
  lr_img 0.1x and 10x, with weighted cross-entropy instead of the weighted sampler, with
  ``init='weighted'``, and with a density floor in {0.02, 0.05}.
  """
  lr = base.lr_img
  grid = [Setting.of(weighting="none", lr_img=round(f * lr, 6)) for f in (0.1, 1.0, 10.0)]
  grid += [Setting.of(weighting="kde", kde_normalize="power", kde_variance=v,
                      kde_temperature=t, lr_img=lr) for v in (0.01, 0.1) for t in (0.25, 1.0)]
  incumbent = dict(weighting="kde", kde_normalize=base.kde_normalize,
                   kde_variance=base.kde_variance, kde_temperature=base.kde_temperature)
  grid += [Setting.of(**incumbent, lr_img=round(f * lr, 6)) for f in (0.1, 1.0, 10.0)]
  grid.append(Setting.of(**incumbent, lr_img=lr, expert_weighting="loss"))
  grid.append(Setting.of(**incumbent, lr_img=lr, init="weighted"))
  grid += [Setting.of(**incumbent, lr_img=lr, kde_floor=q) for q in (0.02, 0.05)]
  return list(dict.fromkeys(grid))


def literal_setting(base: RunConfig) -> Setting:
  """The paper read literally: w = normalised 1/f (``power`` with T = 1), v = 0.01."""
  return Setting.of(weighting="kde", kde_normalize="power", kde_variance=0.01,
                    kde_temperature=1.0, lr_img=base.lr_img)


def default_setting(base: RunConfig, weighting: str) -> Setting:
  """The library default for ``weighting`` (the incumbent :func:`select` keeps on a tie)."""
  if weighting == "none":
    return Setting.of(weighting="none", lr_img=base.lr_img)
  return Setting.of(weighting="kde", kde_normalize=base.kde_normalize,
                    kde_variance=base.kde_variance, kde_temperature=base.kde_temperature,
                    lr_img=base.lr_img)


def settings_from_selection(selection: dict, base: RunConfig) -> dict[str, Setting]:
  """The rows of :func:`final` from a :func:`tune` result: the chosen vanilla and
  KDE settings, plus the library default and the literal reading when they differ."""
  chosen = {w: Setting.of(**s) for w, s in selection["chosen"].items()}
  out = {}
  if "none" in chosen:
    out["vanilla"] = chosen["none"]
  if "kde" in chosen:
    out["kde (selected on valid)"] = chosen["kde"]
  default = default_setting(base, "kde")
  if default not in out.values():
    out["kde (library default)"] = default
  literal = literal_setting(base)
  if literal not in out.values():
    out["kde literal (power, T = 1)"] = literal
  return out
