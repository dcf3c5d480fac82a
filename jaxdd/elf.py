"""ELF: evaluation with a distillation feature (Zhao, Zhang, Chao & Ji, arXiv 2312.05598).

An evaluation track kept apart from the ordinary protocols: it uses a feature model
trained on the **real** training set, i.e. knowledge the synthetic set alone does not
carry, so its numbers are not comparable with a plain evaluation and are stamped
``elf``. ELF's "bias" is the architectural inductive bias of the network that
distilled the set, not the spurious correlation that the rest of jaxdd measures.

ELF (facts from the paper and its public code, ``Lirui-Zhao/ELF``):

* a feature model, a wide ConvNet-3 trained on the real training set, gives the
  features ``f(x)`` of every synthetic image, once, on the un-augmented images;
* the evaluation network is split into a front (everything up to its features)
  and a rear (here: its classifier);
* the loss on an augmented batch ``x~`` is
  ``lambda_front D(front(x~), f(x)) + lambda_rear CE(rear(f(x)), y) + CE(rear(front(x~)), y)``;
  the test pass is the plain network.

jaxdd's split point is the zoo models' ``return_features`` output (for ConvNet-3
exactly ELF's ``ConvNet_L3``: three blocks, then the linear classifier). When the
evaluation network's feature size differs from the feature model's (another
architecture, another width), two linear adapters, trained with the network and
dropped at test time, map one onto the other; ELF's reference code has none (its
shapes match by construction on 32x32 images). ``D`` is the mean squared error
(ELF's ``L2`` option) or the cosine distance; ELF's default, a soft-target
cross-entropy over unnormalised channels, is not offered.
"""
from __future__ import annotations

import math
import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxdd import evaluate, models, tasks
from jaxdd import train as train_lib
from jaxdd.results import format_pm
from jaxdd.structs import SynSet

DISTANCES = ("l2", "cosine")


def train_feature_model(key: jax.Array, images, labels, *, model: nn.Module,
                        protocol: Any = "cpu", progress: bool = False) -> dict:
  """The feature model: ``model`` trained on the real training set (its variables).

  ELF trains a ConvNet-3 of width 512 for 200 epochs and keeps epoch 100; the
  ``protocol`` (a :mod:`jaxdd.protocols` recipe) sets the budget here. ``progress``:
  report every trained epoch.
  """
  variables, _ = train_lib.train_fresh(key, SynSet(jnp.asarray(images, jnp.float32),
                                                   jnp.asarray(labels, jnp.int32)),
                                       model=model, protocol=protocol, progress=progress)
  return variables


def distillation_features(model: nn.Module, variables: dict, images, *,
                          block: int = 256) -> np.ndarray:
  """(N, d) features of ``images`` under the feature model (eval mode, no augmentation)."""
  apply = jax.jit(lambda x: model.apply(variables, x, train=False, return_features=True)[0])
  images = jnp.asarray(images, jnp.float32)
  out = [np.asarray(apply(images[i:i + block])) for i in range(0, images.shape[0], block)]
  return np.concatenate(out).reshape(images.shape[0], -1).astype(np.float32)


def classifier_params(params: dict, feature_dim: int, num_classes: int) -> dict:
  """The ``{"kernel", "bias"}`` of a zoo model's final linear layer (its rear).

  Every model of :mod:`jaxdd.models` ends in ``TorchDense(num_classes)`` applied to
  its features; that is the last ``TorchDense_<k>`` whose kernel is
  ``(feature_dim, num_classes)``.
  """
  found = []
  for name, sub in params.items():
    m = re.fullmatch(r"TorchDense_(\d+)", name)
    dense = sub.get("Dense_0", {}) if m else {}
    if m and getattr(dense.get("kernel"), "shape", None) == (feature_dim, num_classes):
      found.append((int(m.group(1)), dense))
  if not found:
    raise ValueError(f"no final linear layer of shape ({feature_dim}, {num_classes}) in the "
                     "model's parameters; ELF needs a jaxdd.models network")
  return max(found, key=lambda t: t[0])[1]


def _distance(a: jax.Array, b: jax.Array, kind: str) -> jax.Array:
  if kind == "l2":
    return jnp.mean((a - b) ** 2)
  na = optax.safe_norm(a, 1e-12, axis=-1)
  nb = optax.safe_norm(b, 1e-12, axis=-1)
  return jnp.mean(1.0 - jnp.sum(a * b, axis=-1) / (na * nb))


def elf_task(model: nn.Module, features, *, num_classes: int, lambda_front: float = 1.0,
             lambda_rear: float = 1.0, distance: str = "l2") -> tasks.TrainTask:
  """The ELF training of ``model`` on a SynSet whose rows have the ``features`` (N, d_f).

  The task's state carries the features (indexed by each batch's rows, so the
  trainer needs nothing new) and the network's own collections; its params are
  the network's and, when the sizes differ, the adapters ``to_feature``
  (d_eval -> d_f, for the front term) and ``from_feature`` (d_f -> d_eval, for
  the rear term). ``predict`` is the plain network.
  """
  if distance not in DISTANCES:
    raise ValueError(f"distance must be one of {list(DISTANCES)}, got {distance!r}")
  for name, v in (("lambda_front", lambda_front), ("lambda_rear", lambda_rear)):
    if not (np.isfinite(v) and v >= 0):
      raise ValueError(f"{name} must be a non-negative number, got {v!r}")
  feats = jnp.asarray(features, jnp.float32)
  if feats.ndim != 2 or not bool(jnp.isfinite(feats).all()):
    raise ValueError(f"features must be a finite (N, d) array, got shape {feats.shape}")
  d_f = feats.shape[1]

  def init(key, images, labels):
    del labels
    # The network starts exactly as standard_task's would (same key); the adapters
    # take keys of their own.
    k_to, k_from = jax.random.fold_in(key, 1), jax.random.fold_in(key, 2)
    params, state = tasks.split_variables(model.init(key, images[:1], train=False))
    d_e = jax.eval_shape(lambda: model.apply({"params": params, **state}, images[:1],
                                             train=False, return_features=True)[0]).shape[-1]
    out = {"net": params}
    if d_e != d_f:
      init_fn = nn.initializers.lecun_normal()
      out["to_feature"] = init_fn(k_to, (d_e, d_f), jnp.float32)
      out["from_feature"] = init_fn(k_from, (d_f, d_e), jnp.float32)
    return out, {"net": state, "elf": feats}

  def loss(params, state, batch: tasks.StepBatch):
    (z, logits), net_state = tasks.apply_train(model, params["net"], state["net"], batch.images,
                                               batch.key, return_features=True)
    z = z.reshape(z.shape[0], -1)
    f = state["elf"][batch.index]
    adapt = "to_feature" in params
    front = _distance(z @ params["to_feature"] if adapt else z, f, distance)
    head = classifier_params(params["net"], z.shape[-1], logits.shape[-1])
    q = f @ params["from_feature"] if adapt else f
    rear_logits = q @ head["kernel"] + head["bias"]
    ce = tasks.cross_entropy(logits, batch.labels).mean()
    rear = tasks.cross_entropy(rear_logits, batch.labels).mean()
    total = lambda_front * front + lambda_rear * rear + ce
    return total, ({"net": net_state, "elf": state["elf"]}, logits)

  def predict(params, state, images):
    return model.apply({"params": params["net"], **state["net"]}, images, train=False)

  return tasks.TrainTask("elf", init, loss, predict, per_sample=False)


def evaluate_elf(key: jax.Array, syn: SynSet, test, *, model: nn.Module, features,
                 protocol: Any = "cpu", num_models: int = 5, lambda_front: float = 1.0,
                 lambda_rear: float = 1.0, distance: str = "l2", progress: bool = False):
  """``num_models`` networks trained on ``syn`` with ELF (:func:`elf_task`); an ``EvalResult``.

  ``features`` are the feature model's (:func:`distillation_features`) of
  ``syn.images``, row for row. Same keys, protocol and test batch as
  :func:`jaxdd.evaluate.evaluate_synset`, so a plain and an ELF evaluation differ only
  in the training loss.
  """
  if np.asarray(features).shape[0] != np.asarray(syn.images).shape[0]:
    raise ValueError(f"{np.asarray(features).shape[0]} feature rows for "
                     f"{np.asarray(syn.images).shape[0]} synthetic images")
  task = elf_task(model, features, num_classes=int(model.num_classes),
                  lambda_front=lambda_front, lambda_rear=lambda_rear, distance=distance)
  return evaluate.evaluate_task(key, syn, test, task=task, model=model, protocol=protocol,
                                num_models=num_models, progress=progress,
                                hparams={"track": "elf", "lambda_front": lambda_front,
                                         "lambda_rear": lambda_rear, "distance": distance})


def cross_architecture(key: jax.Array, syn: SynSet, test, *, model_specs, num_classes: int,
                       protocol: Any = "cpu", num_models: int = 3, features=None,
                       progress: bool = False) -> dict:
  """The cross-architecture matrix: each model trained on ``syn``, plainly and (with
  ``features``) with ELF; per-group accuracies on ``test``.

  Returns:
    ``{spec: {"plain": summary, "elf": summary or None}}`` with each summary an
    ``EvalResult.summary()`` (mean and std over networks of overall, aligned,
    conflicting and worst-group accuracy).
  """
  out = {}
  syn = SynSet(jnp.asarray(syn.images), jnp.asarray(syn.labels))
  for spec in model_specs:
    model = models.get(spec, num_classes=num_classes)
    models.check_fits(model, tuple(syn.images.shape[1:]))
    row = {"plain": evaluate.evaluate_synset(key, syn, test, model=model, protocol=protocol,
                                             num_models=num_models, progress=progress).summary(),
           "elf": None}
    if features is not None:
      row["elf"] = evaluate_elf(key, syn, test, model=model, features=features,
                                protocol=protocol, num_models=num_models,
                                progress=progress).summary()
    out[spec] = row
  return out


def _finite(v) -> bool:
  return v is not None and math.isfinite(v)


def format_matrix(matrix: dict) -> str:
  """The matrix as a markdown table (accuracy %, mean ± std over networks)."""
  cols = ("overall", "aligned", "conflicting", "worst_group")
  cells_of = [(spec, kind, row[kind]) for spec, row in matrix.items() for kind in ("plain", "elf")
              if row.get(kind) is not None]
  # Without group labels the only groups are the classes: no aligned / conflicting split
  no_groups = bool(cells_of) and not any(
      _finite(s["mean"][c]) for _, _, s in cells_of for c in ("aligned", "conflicting"))
  names = [("worst class" if no_groups and c == "worst_group" else c) for c in cols]
  lines = ["| model | training | " + " | ".join(names) + " |", "|---" * (len(cols) + 2) + "|"]
  for spec, kind, s in cells_of:
    cells = [f"{100 * s['mean'][c]:.1f} ± {100 * s['std'][c]:.1f}"
             if _finite(s["mean"][c]) else "n/a" for c in cols]
    lines.append(f"| {spec} | {kind} | " + " | ".join(cells) + " |")
  if no_groups:
    lines.append("(the test split has no group labels: group measures need them)")
  return "\n".join(lines)


#: The per-group accuracies of the matrices over seeds.
COLUMNS = ("overall", "aligned", "conflicting", "worst_group")


def summarize_seeds(results: dict) -> dict:
  """Matrices of several distillation seeds and SynSets, put together.

  Args:
    results: ``{row: {seed: matrix}}``, each matrix a :func:`cross_architecture`
      result for the SynSet ``row`` (e.g. vanilla, DM + KDE) of that seed. The
      first row is the reference.

  Returns:
    ``{"seeds", "reference", "table", "paired", "elf_effect"}``:
    ``table[row][model][training][column]`` lists each seed's mean accuracy (a training
    absent at any seed is left out); ``paired[row][model][training][column]`` lists
    ``row − reference`` at each seed both have: whether debiasing carries over to each
    architecture; ``elf_effect[row][model][column]`` lists ELF − plain for the same SynSet
    and seed.
  """
  rows = list(results)
  ref = results[rows[0]]
  table, paired = {}, {}
  for row, by_seed in results.items():
    seeds = sorted(by_seed)
    for spec in by_seed[seeds[0]]:
      for kind in ("plain", "elf"):
        vals = [by_seed[s][spec][kind] for s in seeds]
        if any(v is None for v in vals):
          continue
        table.setdefault(row, {}).setdefault(spec, {})[kind] = {
            c: [float(v["mean"][c]) for v in vals] for c in COLUMNS}
        common = [s for s in seeds if (ref.get(s) or {}).get(spec, {}).get(kind) is not None]
        if row != rows[0] and common:
          paired.setdefault(row, {}).setdefault(spec, {})[kind] = {
              c: [float(by_seed[s][spec][kind]["mean"][c] - ref[s][spec][kind]["mean"][c])
                  for s in common] for c in COLUMNS}
  elf_effect = {row: {spec: {c: [e - p for e, p in zip(k["elf"][c], k["plain"][c])]
                             for c in COLUMNS}
                      for spec, k in by_model.items() if "elf" in k and "plain" in k}
                for row, by_model in table.items()}
  return {"seeds": sorted({s for r in results.values() for s in r}), "reference": rows[0],
          "table": table, "paired": paired,
          "elf_effect": {r: m for r, m in elf_effect.items() if m}}


def format_seeds(summary: dict) -> str:
  """:func:`summarize_seeds` as markdown (accuracy %, mean ± sample std over seeds). A
  published summary that names its settings (``cell``, ``protocol``, ``num_models``, ``elf``,
  ``feature_model``, ``feature_protocol``) gets a sentence saying them."""
  head = "| SynSet | model | training | " + " | ".join(COLUMNS) + " |"
  rule = "|---" * (len(COLUMNS) + 3) + "|"

  # A JSON round trip sorts the keys: the reference row first, the published model order,
  # plain before ELF.
  ref = summary["reference"]
  order = summary.get("models", [])

  def rows(block, label, signed):
    out = []
    for row in sorted(block, key=lambda r: r != ref):
      by_model = block[row]
      for spec in sorted(by_model, key=lambda m: order.index(m) if m in order else len(order)):
        for kind in ("plain", "elf", "elf − plain"):
          if kind in by_model[spec]:
            cell = by_model[spec][kind]
            out.append(f"| {label(row)} | {spec} | {kind} | "
                       + " | ".join(format_pm(cell[c], signed=signed) for c in COLUMNS) + " |")
    return out
  lines = []
  if "protocol" in summary:
    elf_text = (f"; ELF's feature model {summary['feature_model']} trained on each seed's real "
                f"training split under `{summary['feature_protocol']}`" if summary.get("elf")
                else "")
    lines += [f"Cell {summary['cell']}'s SynSets, each trained on every architecture under "
              f"`{summary['protocol']}`, {summary['num_models']} networks per (SynSet, "
              f"architecture, training){elf_text}.", ""]
  lines += [f"Mean ± sample std over seeds {summary['seeds']} of each seed's mean over its "
            "networks, test accuracy in %.", "", head, rule]
  lines += rows(summary["table"], str, False)
  if summary["paired"]:
    lines += ["", f"Paired differences against `{ref}` (same seed, same evaluation key), mean ± "
              "sample std over seeds, in points:", "", head, rule]
    lines += rows(summary["paired"], lambda r: f"{r} − {ref}", True)
  if summary.get("elf_effect"):
    lines += ["", "ELF − plain training (same SynSet, same seed), mean ± sample std over seeds, "
              "in points:", "", head, rule]
    lines += rows({r: {m: {"elf − plain": c} for m, c in by_model.items()}
                   for r, by_model in summary["elf_effect"].items()}, str, True)
  return "\n".join(lines)
