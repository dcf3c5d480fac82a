"""The container of a biased dataset and its card (counts per class x bias, metadata)."""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from jaxdd._src import io as _io

# ----------------------------------------------------------------------------
# Dataset card and container.
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class DatasetCard:
  """Counts per class x bias plus the dataset's metadata.

  Attributes:
    counts: (num_classes, num_bias) ``int64`` sample counts ((num_classes, 1) without groups).
    class_names: target names.
    bias_names: bias-attribute names (empty: the split has no group labels).
    meta: the dataset's ``meta`` dict (name, split, ratio, ...).
    aligned_groups: per class, its aligned group, when that is not ``bias == label``.

  Example:
    >>> print(ds.card)                       # doctest: +SKIP
    >>> ds.card.save("card.json")            # doctest: +SKIP
  """
  counts: np.ndarray
  class_names: tuple[str, ...]
  bias_names: tuple[str, ...]
  meta: Mapping[str, Any]
  aligned_groups: tuple[int, ...] | None = None

  @property
  def has_groups(self) -> bool:
    """Whether the split has group (bias) labels; without them ``counts`` is (classes, 1)."""
    return bool(self.bias_names)

  @property
  def aligned_per_class(self) -> np.ndarray:
    """(num_classes,) counts in each class's aligned group (bias == label, or the group that
    ``aligned_groups`` names for a user's dataset)."""
    if self.aligned_groups is not None:
      return self.counts[np.arange(self.counts.shape[0]), np.asarray(self.aligned_groups)]
    k = min(self.counts.shape)
    out = np.zeros(self.counts.shape[0], np.int64)
    out[:k] = np.diagonal(self.counts)[:k]
    return out

  @property
  def conflicting_per_class(self) -> np.ndarray:
    """(num_classes,) counts with bias != label."""
    return self.counts.sum(1) - self.aligned_per_class

  def to_dict(self) -> dict:
    """JSON-ready dict (inverse of :meth:`from_dict`)."""
    return {
        "counts": self.counts.tolist(),
        "class_names": list(self.class_names),
        "bias_names": list(self.bias_names),
        "aligned": int(self.aligned_per_class.sum()),
        "conflicting": int(self.conflicting_per_class.sum()),
        "meta": _io.jsonable(dict(self.meta)),
        **({} if self.aligned_groups is None else {"aligned_groups": list(self.aligned_groups)}),
    }

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "DatasetCard":
    """Rebuilds a card from :meth:`to_dict` output."""
    groups = d.get("aligned_groups")
    return cls(np.asarray(d["counts"], np.int64), tuple(d["class_names"]),
               tuple(d["bias_names"]), dict(d["meta"]),
               None if groups is None else tuple(int(g) for g in groups))

  def to_json(self) -> str:
    """The card as a JSON string."""
    return json.dumps(self.to_dict(), indent=1, sort_keys=True)

  def save(self, path: str | os.PathLike) -> Path:
    """Writes the card as JSON, atomically.

    Args:
      path: destination file.

    Returns:
      The path written.
    """
    path = Path(path)
    text = self.to_json().encode()
    _io.atomic_write_bytes(path, text, durable=False)
    return path

  def describe(self) -> str:
    """A printable table of counts with totals and the protocol settings."""
    if self.meta.get("kind") == "own":
      return _describe_own(self)
    m = self.meta
    n = int(self.counts.sum())
    al = int(self.aligned_per_class.sum())
    lines = [f"Dataset card: {m.get('name')} [{m.get('split')}]"]
    if m.get("ratio") is not None:
      lines.append(f"  ratio {m['ratio']:g} = {m.get('ratio_semantics')}")
    if m.get("split_aligned_ratio") is not None:
      lines.append(f"  this split: make_attr_labels(aligned_ratio={m['split_aligned_ratio']:g})")
    sev = []
    if m.get("severity") is not None:
      sev.append(f"severity {m['severity']}")
    if m.get("noise_std") is not None:
      sev.append(f"colour-noise std {m['noise_std']:g}")
    if m.get("corruption_level") is not None:
      sev.append(f"{m.get('corruption_type')} corruption level {m['corruption_level']}")
    sev.append(f"seed {m.get('seed')}")
    lines.append("  " + ", ".join(sev))
    lines.append(f"  source {m.get('source')} (sha256 {str(m.get('source_sha256'))[:16]}...)")
    shape = "x".join(map(str, m.get("image_shape", [])))
    lines.append(
        f"  {n} images {shape} float32 in [0, 1]: {al} aligned ({100.0 * al / max(n, 1):.2f} %), "
        f"{n - al} conflicting ({100.0 * (n - al) / max(n, 1):.2f} %)")
    lines.append("")
    cw = max(6, len(str(int(self.counts.max(initial=0)))) + 1)
    nw = max(len(c) for c in self.class_names + ("class", "total"))
    head = f"  {'class':<{nw}}" + "".join(f"{'b' + str(j):>{cw}}" for j in range(len(self.bias_names)))
    head += f"{'total':>8}{'aligned':>9}{'conflict':>9}"
    lines.append(head)
    for i, cname in enumerate(self.class_names):
      row = f"  {cname:<{nw}}" + "".join(f"{int(v):>{cw}}" for v in self.counts[i])
      row += (f"{int(self.counts[i].sum()):>8}{int(self.aligned_per_class[i]):>9}"
              f"{int(self.conflicting_per_class[i]):>9}")
      lines.append(row)
    tot = f"  {'total':<{nw}}" + "".join(f"{int(v):>{cw}}" for v in self.counts.sum(0))
    tot += f"{n:>8}{al:>9}{n - al:>9}"
    lines.append(tot)
    lines.append("  bias: " + ", ".join(f"b{j}={b}" for j, b in enumerate(self.bias_names)))
    return "\n".join(lines)

  def __str__(self) -> str:
    return self.describe()


def _content_digest(meta: dict) -> str:
  """The first 12 hex digits of a user's data's content digest, as the run's log and report
  print it (:func:`jaxdd.data.own.content_sha256`); the image bytes' digest for a card saved
  before it."""
  return str(meta.get("data_sha256") or meta.get("source_sha256"))[:12]


def _describe_own(card: DatasetCard) -> str:
  """The card of a user's dataset: counts per class (and group, when known), size, source."""
  m = card.meta
  n = int(card.counts.sum())
  shape = "x".join(map(str, m.get("image_shape", [])))
  lines = [f"Dataset card: {m.get('name')} [{m.get('split')}]",
           f"  {n} images {shape}, {len(card.class_names)} classes; split from "
           f"{m.get('split_origin')}",
           f"  source {m.get('source')}: content sha256 {_content_digest(m)}"]
  if m.get("mean") is not None:
    lines.append("  normalisation (training split): mean "
                 + ", ".join(f"{v:.4f}" for v in m["mean"]) + "; std "
                 + ", ".join(f"{v:.4f}" for v in m["std"]))
  nw = max(len(c) for c in card.class_names + ("class", "total"))
  if not card.has_groups:
    lines.append("  no group labels: group measures (worst group, conflicting, DEO) need them")
    lines.append("")
    lines.append(f"  {'class':<{nw}}{'images':>9}")
    for name, v in zip(card.class_names, card.counts.sum(1)):
      lines.append(f"  {name:<{nw}}{int(v):>9}")
    lines.append(f"  {'total':<{nw}}{n:>9}")
    return "\n".join(lines)
  al = int(card.aligned_per_class.sum())
  lines.append(f"  groups: {al} in their class's aligned group ({100.0 * al / max(n, 1):.2f} %), "
               f"{n - al} conflicting ({m.get('aligned_rule')} rule)")
  lines.append("")
  cw = max(9, max(len(b) for b in card.bias_names) + 1)
  lines.append(f"  {'class':<{nw}}" + "".join(f"{b:>{cw}}" for b in card.bias_names)
               + f"{'total':>8}{'aligned':>9}")
  for i, name in enumerate(card.class_names):
    lines.append(f"  {name:<{nw}}" + "".join(f"{int(v):>{cw}}" for v in card.counts[i])
                 + f"{int(card.counts[i].sum()):>8}{int(card.aligned_per_class[i]):>9}")
  return "\n".join(lines)


def _counts(labels: np.ndarray, bias: np.ndarray, k: int, b: int) -> np.ndarray:
  return np.bincount(labels.astype(np.int64) * b + bias, minlength=k * b).reshape(k, b)


@dataclasses.dataclass(frozen=True, eq=False)
class BiasedDataset:
  """A biased dataset split with its bias annotations and card.

  Attributes:
    images: (N, H, W, 3) ``float32`` in [0, 1] (a user's dataset: (N, H, W, C), C 1 or 3).
    labels: (N,) ``int32`` targets.
    bias: (N,) ``int32`` bias attributes; None for a user's split without group labels.
    aligned: (N,) ``bool``, ``bias == labels`` (a user's dataset: the sample is in its class's
      aligned group, see :mod:`jaxdd.data.own`); None without group labels.
    class_names: target names.
    bias_names: bias names.
    card: :class:`DatasetCard` (counts per class x bias).
    meta: name, split, ratio, semantics, severity, seed, source, checksums...
    cache_info: where the arrays came from (``status``: ``built``, ``hit``,
      ``rebuilt`` after a corrupt entry, or ``off``; ``path``). Not part of
      ``meta``, so ``meta`` is identical for cached and fresh builds.

  Example:
    >>> ds = load("cmnist", split="train", conflict_ratio=0.05)   # doctest: +SKIP
    >>> print(ds)                                                 # doctest: +SKIP
  """
  images: np.ndarray
  labels: np.ndarray
  bias: np.ndarray | None
  aligned: np.ndarray | None
  class_names: tuple[str, ...]
  bias_names: tuple[str, ...]
  card: DatasetCard
  meta: Mapping[str, Any]
  cache_info: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  def __len__(self) -> int:
    return int(self.labels.shape[0])

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  def describe(self) -> str:
    """The dataset card as text."""
    return self.card.describe()

  def __str__(self) -> str:
    return self.describe()

  def __repr__(self) -> str:
    m = self.meta
    return (f"BiasedDataset({m.get('name')!r}, split={m.get('split')!r}, n={len(self)}, "
            f"ratio={m.get('ratio')}, conflicting="
            f"{'unknown' if self.aligned is None else int((~self.aligned).sum())})")
