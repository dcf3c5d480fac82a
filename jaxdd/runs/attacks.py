"""The post-hoc backdoor attack on a finished SynSet: a red team, for evaluating defences only.

It composes two methods, the attack primitives of :mod:`jaxdd.security.attacks`
(triggers, :func:`~jaxdd.security.attacks.invert_prototypes`) and the
gradient-matching distiller (:func:`jaxdd.distill.dc`); the module docstring of
:mod:`jaxdd.security.attacks` describes the attack.
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxdd import distill
from jaxdd import train as train_lib
from jaxdd._src import checks
from jaxdd.security import attacks
from jaxdd.structs import SynSet


@dataclasses.dataclass(frozen=True)
class PosthocResult:
  """The poisoned SynSet and what went into it."""
  syn: SynSet
  prototypes: np.ndarray          # normalised, before the trigger
  prototype_labels: np.ndarray    # the classes they were inverted for
  triggered: np.ndarray           # normalised, with the trigger (labelled target)
  surrogate_accuracy: float       # the attacker's model on its own prototypes (sanity check)
  loss: np.ndarray                # the matching loss per step


def posthoc_attack(key: jax.Array, syn: SynSet, *, trigger: attacks.Trigger, target: int,
                   mean, std, model: nn.Module, protocol="cpu", per_class: int = 2, steps: int = 20,
                   outer_loop: int = 10, inner_loop: int = 10, lr_img: float = 0.1,
                   inversion_steps: int | None = None, replace: int | None = None,
                   archetypes: str = "synset") -> PosthocResult:
  """Injects a backdoor into a finished SynSet (the attacker has no real data).

  1. Trains ``model`` on ``syn`` under ``protocol`` (:func:`jaxdd.train.train_fresh`).
  2. Takes ``per_class`` archetypes of every class but ``target`` and stamps
     ``trigger`` on them. ``archetypes="inversion"`` inverts them from noise
     (:func:`~jaxdd.security.attacks.invert_prototypes`, ``inversion_steps`` default 300), as Dark
     Distillation describes; ``"synset"`` (default) starts the inversion from
     the SynSet's own first images of the class (``inversion_steps`` default
     0: the distilled images themselves are the attacker's best archetypes).
     Measured on CMNIST (docs/results/security.md, "Backdoors"), archetypes inverted from
     noise carry no backdoor into a network trained on the set.
  3. Replaces the last ``replace`` images of the target class (default: half
     of its images, at least one) by triggered prototypes, taken in turn
     from the other classes.
  4. ``steps`` outer iterations of gradient matching (:func:`jaxdd.distill.dc`,
     ``outer_loop`` x ``inner_loop``, SGD(``lr_img``, 0.5) on the images),
     warm-started from that set, against a target set made of ``syn`` itself
     plus the triggered prototypes labelled ``target``: the benign gradients
     keep the clean behaviour, the triggered ones keep the backdoor, and the
     replaced images blend into the class's matching target.

  Returns:
    :class:`PosthocResult`; ``result.syn`` has the same shape, labels and
    normalisation as ``syn``.
  """
  checks.check_key(key)
  images = np.asarray(syn.images, np.float32)
  labels = np.asarray(syn.labels, np.int32)
  num_classes = int(getattr(model, "num_classes", int(labels.max()) + 1))
  if not 0 <= target < num_classes:
    raise ValueError(f"target must be a class in [0, {num_classes - 1}], got {target!r}")
  counts = np.bincount(labels, minlength=num_classes)
  if counts.min() != counts.max() or not (labels == np.repeat(np.arange(num_classes),
                                                               counts[0])).all():
    raise ValueError("the SynSet must hold the same number of images per class, class by class")
  ipc = int(counts[0])
  k_train, k_inv, k_init = jax.random.split(key, 3)
  variables, _ = train_lib.train_fresh(k_train, SynSet(jnp.asarray(images), jnp.asarray(labels)),
                                       model=model, protocol=protocol)
  sources = [c for c in range(num_classes) if c != target]
  if archetypes not in ("synset", "inversion"):
    raise ValueError(f"archetypes must be 'synset' or 'inversion', got {archetypes!r}")
  if not 1 <= per_class <= (ipc if archetypes == "synset" else per_class):
    raise ValueError(f"per_class must be in [1, {ipc}] (the SynSet's images per class), "
                     f"got {per_class!r}")
  if inversion_steps is None:
    inversion_steps = 300 if archetypes == "inversion" else 0
  init = None
  if archetypes == "synset":
    init = np.concatenate([images[c * ipc: c * ipc + per_class] for c in sources])
  if inversion_steps:
    protos, proto_labels = attacks.invert_prototypes(
        k_inv, model, variables, sources, image_shape=images.shape[1:], mean=mean, std=std,
        per_class=per_class, steps=inversion_steps, init=init)
  else:
    protos, proto_labels = init, np.repeat(np.asarray(sources, np.int32), per_class)
  logits = model.apply(variables, jnp.asarray(protos), train=False)
  surrogate_acc = float(np.mean(np.asarray(jnp.argmax(logits, -1)) == proto_labels))
  triggered = np.asarray(trigger.stamp(protos, mean, std))
  target_images = np.concatenate([images, triggered])
  target_labels = np.concatenate([labels, np.full(len(triggered), target, np.int32)])
  replace = max(1, ipc // 2) if replace is None else replace
  if not 0 <= replace <= min(ipc, len(triggered)):
    raise ValueError(f"replace must be in [0, {min(ipc, len(triggered))}], got {replace!r}")
  start = images.copy()
  # round-robin over the source classes: prototype i of class s sits at row i * |S| + s
  order = np.argsort(np.tile(np.arange(per_class), len(sources)) * len(sources)
                     + np.repeat(np.arange(len(sources)), per_class), kind="stable")
  if replace:
    start[target * ipc + ipc - replace: (target + 1) * ipc] = triggered[order[:replace]]
  real = distill.real_data(target_images, target_labels, num_classes=num_classes)
  per_class_rows = int(np.bincount(target_labels, minlength=num_classes).max())
  d = distill.dc(num_classes=num_classes, ipc=ipc, model=model, outer_loop=outer_loop,
                 inner_loop=inner_loop, real_per_class=per_class_rows, lr=lr_img,
                 net_batch_size=min(256, len(labels)))
  state = d.init(k_init, real, SynSet(start, labels))
  losses = []
  for _ in range(steps):
    state, metrics = d.step(state, real)
    losses.append(float(metrics["loss"]))
  out = SynSet(np.asarray(state.syn.images, np.float32), np.asarray(state.syn.labels, np.int32))
  return PosthocResult(out, protos, proto_labels, triggered, surrogate_acc, np.asarray(losses))
