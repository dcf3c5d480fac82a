"""Backdoor attacks on distilled sets -- a red team, for evaluating defences only.

These exist so that :mod:`jaxdd.security.audit` (and any other defence) can be
measured against real attacks; they are not meant for anything else.

* :func:`poison` -- BadNets-style poisoning of the *real* data before
  distillation (Gu et al. 2017; the setting of DOORPING's "naive attack", Liu et
  al., NDSS 2023): a fraction of the training images of other classes get a
  trigger stamped in and are relabelled to the target class. Whoever distils the
  poisoned data may carry the backdoor into the SynSet.
* :func:`posthoc_attack` -- an attack on a *finished* SynSet by someone who only
  intercepts it, in the spirit of Dark Distillation (Yang et al., 2025: train a
  model on the distilled set, reconstruct class archetypes from it, stamp the
  trigger on them, and update the set so that it keeps its clean behaviour).
  The public description gives no formulas; jaxdd's reading is: prototypes by
  model inversion (:func:`invert_prototypes`: class logit + total variation +
  an l2 prior), then gradient matching (:func:`jaxdd.distill.dc`) warm-started
  from the SynSet, whose target for each class is the SynSet's own images of
  that class plus, for the target class, the triggered prototypes of the other
  classes labelled as the target. Classes other than the target match
  themselves, so their images barely move; the target class's images absorb
  the backdoor.

Triggers act in pixel space (``[0, 1]``) on normalised images: the image is
de-normalised, stamped (``(1 - mask) * x + mask * pattern``), and normalised
again, so a trigger means the same pixels under any normalisation.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxdd._src import checks
from jaxdd.structs import SynSet

CORNERS = ("top-left", "top-right", "bottom-left", "bottom-right")


@dataclasses.dataclass(frozen=True)
class Trigger:
  """A trigger: ``pattern`` (H, W, C) and ``mask`` (H, W, 1), both in [0, 1] pixel units."""
  pattern: np.ndarray
  mask: np.ndarray
  name: str

  def __post_init__(self):
    p, m = np.asarray(self.pattern), np.asarray(self.mask)
    if p.ndim != 3 or m.shape != p.shape[:2] + (1,):
      raise ValueError(f"trigger {self.name!r}: pattern must be (H, W, C) and mask (H, W, 1), got "
                       f"{p.shape} and {m.shape}")
    if not (np.isfinite(p).all() and np.isfinite(m).all()) or p.min() < 0 or p.max() > 1 \
        or m.min() < 0 or m.max() > 1:
      raise ValueError(f"trigger {self.name!r}: pattern and mask must lie in [0, 1]")

  @property
  def area(self) -> float:
    """The mask's l1 norm in pixels (a 3x3 opaque patch: 9)."""
    return float(np.asarray(self.mask).sum())

  def stamp(self, images, mean, std) -> jax.Array:
    """Stamps the trigger on normalised images (N, H, W, C); returns normalised images."""
    return stamp(images, self.pattern, self.mask, mean, std)


def stamp(images, pattern, mask, mean, std) -> jax.Array:
  """``normalise((1 - mask) * denormalise(images) + mask * pattern)`` (jittable)."""
  mean = jnp.asarray(mean, jnp.float32).reshape(-1)
  std = jnp.asarray(std, jnp.float32).reshape(-1)
  pixels = jnp.asarray(images) * std + mean
  mask = jnp.asarray(mask, jnp.float32)
  out = (1.0 - mask) * pixels + mask * jnp.asarray(pattern, jnp.float32)
  return (out - mean) / std


def patch_trigger(image_shape: Sequence[int], *, size: int = 3, corner: str = "bottom-right",
                  margin: int = 1, pattern: str = "checker", key: jax.Array | None = None,
                  ) -> Trigger:
  """An opaque square patch (BadNets) of ``size`` pixels at a corner.

  Args:
    image_shape: (H, W, C).
    size: side of the square in pixels.
    corner: one of :data:`CORNERS`.
    margin: pixels between the patch and the image border (DOORPING puts its
      2-pixel trigger at ``(im - 1 - size, im - 1)``: margin 1).
    pattern: ``"checker"`` (alternating 1/0, all channels), ``"white"``,
      ``"black"`` or ``"random"`` (uniform values per pixel and channel, from
      ``key``; DOORPING starts from random values).
  """
  h, w, c = (int(v) for v in image_shape)
  if corner not in CORNERS:
    raise ValueError(f"corner must be one of {CORNERS}, got {corner!r}")
  if not isinstance(size, int) or size < 1 or size + margin > min(h, w):
    raise ValueError(f"size must be an int in [1, {min(h, w) - margin}] for {h}x{w} images "
                     f"with margin {margin}, got {size!r}")
  top = margin if corner.startswith("top") else h - margin - size
  left = margin if corner.endswith("left") else w - margin - size
  if pattern == "checker":
    block = ((np.add.outer(np.arange(size), np.arange(size)) % 2) == 0).astype(np.float32)
    block = np.repeat(block[..., None], c, axis=-1)
  elif pattern == "white":
    block = np.ones((size, size, c), np.float32)
  elif pattern == "black":
    block = np.zeros((size, size, c), np.float32)
  elif pattern == "random":
    if key is None:
      raise ValueError("pattern='random' needs key=jax.random.key(...)")
    checks.check_key(key)
    block = np.asarray(jax.random.uniform(key, (size, size, c)), np.float32)
  else:
    raise ValueError(f"pattern must be checker, white, black or random, got {pattern!r}")
  full = np.zeros((h, w, c), np.float32)
  mask = np.zeros((h, w, 1), np.float32)
  full[top:top + size, left:left + size] = block
  mask[top:top + size, left:left + size] = 1.0
  return Trigger(full, mask, f"patch{size}-{corner}-{pattern}")


def blend_trigger(image_shape: Sequence[int], *, alpha: float = 0.1,
                  key: jax.Array) -> Trigger:
  """A whole-image random pattern blended in with weight ``alpha`` (Chen et al. 2017)."""
  if not 0 < alpha <= 1:
    raise ValueError(f"alpha must be in (0, 1], got {alpha!r}")
  checks.check_key(key)
  h, w, c = (int(v) for v in image_shape)
  pattern = np.asarray(jax.random.uniform(key, (h, w, c)), np.float32)
  return Trigger(pattern, np.full((h, w, 1), alpha, np.float32), f"blend{alpha:g}")


@dataclasses.dataclass(frozen=True)
class Poisoned:
  """The output of :func:`poison`: the new arrays and which rows were poisoned."""
  images: np.ndarray
  labels: np.ndarray
  rows: np.ndarray
  original_labels: np.ndarray


def poison(key: jax.Array, images, labels, *, trigger: Trigger, target: int, fraction: float,
           mean, std) -> Poisoned:
  """BadNets: stamp ``trigger`` on ``fraction`` of the set and relabel those rows to ``target``.

  The rows are drawn uniformly, without replacement, among the images whose
  label is not ``target`` (so that every poisoned row teaches the trigger);
  ``round(fraction * N)`` of them, N the whole set (DOORPING's ``portion``).

  Returns:
    :class:`Poisoned` with copies of the arrays (the inputs are not changed).
  """
  images = np.asarray(images, np.float32)
  labels = np.asarray(labels)
  if not 0 < fraction < 1:
    raise ValueError(f"fraction must be in (0, 1), got {fraction!r}")
  if not 0 <= int(target) <= int(labels.max()):
    raise ValueError(f"target must be a class in [0, {int(labels.max())}], got {target!r}")
  candidates = np.flatnonzero(labels != target)
  n = int(round(fraction * len(labels)))
  if n < 1 or n > len(candidates):
    raise ValueError(f"fraction {fraction} of {len(labels)} images is {n} rows; it must be "
                     f"between 1 and the {len(candidates)} images of other classes")
  pick = np.asarray(jax.random.permutation(key, len(candidates)))[:n]
  rows = np.sort(candidates[pick])
  out_images, out_labels = images.copy(), labels.copy()
  out_images[rows] = np.asarray(trigger.stamp(images[rows], mean, std))
  out_labels[rows] = target
  return Poisoned(out_images, out_labels, rows, labels[rows])


def attack_success_rate(predict: Callable[[jax.Array], jax.Array], images, labels, *,
                        trigger: Trigger, target: int, mean, std) -> float:
  """Fraction of images of other classes that ``predict`` puts in ``target`` once stamped.

  Args:
    predict: maps normalised images (n, H, W, C) to predicted classes (n,).
    images, labels: clean held-out images (normalised) and their labels.
  """
  labels = np.asarray(labels)
  keep = labels != target
  if not keep.any():
    raise ValueError("no image outside the target class to measure the attack on")
  stamped = trigger.stamp(np.asarray(images)[keep], mean, std)
  return float(np.mean(np.asarray(predict(stamped)) == target))


# ---------------------------------------------------------------------------
# The post-hoc attack on a finished SynSet
# ---------------------------------------------------------------------------


def _tv(x: jax.Array) -> jax.Array:
  """Anisotropic total variation per image (mean absolute neighbour difference)."""
  dh = jnp.abs(x[:, 1:] - x[:, :-1]).mean(axis=(1, 2, 3))
  dw = jnp.abs(x[:, :, 1:] - x[:, :, :-1]).mean(axis=(1, 2, 3))
  return dh + dw


def invert_prototypes(key: jax.Array, model: nn.Module, variables, classes: Sequence[int], *,
                      image_shape: Sequence[int], mean, std, per_class: int = 2,
                      steps: int = 300, lr: float = 0.05, tv: float = 0.3,
                      l2: float = 0.01, init=None) -> tuple[np.ndarray, np.ndarray]:
  """Class archetypes by model inversion: images the model calls ``c``, with image priors.

  Each prototype is ``sigmoid(z)`` in pixel space, starting from ``z`` ~ N(0,
  0.5), or from ``init`` (normalised images, one per prototype, class by class);
  Adam(``lr``) minimises ``CE(f(x), c) + tv * TV(x) + l2 * ||x - 0.5||²``
  (mean over pixels) for ``steps`` steps, all prototypes in one compiled loop.

  Returns:
    ``(images, labels)``: normalised prototypes (len(classes) * per_class, H, W,
    C) and their classes.
  """
  h, w, c = (int(v) for v in image_shape)
  labels = np.repeat(np.asarray(classes, np.int32), per_class)
  mean = jnp.asarray(mean, jnp.float32).reshape(-1)
  std = jnp.asarray(std, jnp.float32).reshape(-1)
  if init is None:
    z0 = 0.5 * jax.random.normal(key, (len(labels), h, w, c))
  else:
    pixels = np.clip(np.asarray(init, np.float32) * np.asarray(std) + np.asarray(mean), 1e-3,
                     1 - 1e-3)
    if pixels.shape != (len(labels), h, w, c):
      raise ValueError(f"init must be {(len(labels), h, w, c)}, got {pixels.shape}")
    z0 = jnp.asarray(np.log(pixels) - np.log1p(-pixels))
  tx = optax.adam(lr)
  y = jnp.asarray(labels)

  def loss_fn(z):
    pixels = jax.nn.sigmoid(z)
    logits = model.apply(variables, (pixels - mean) / std, train=False)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    prior = tv * _tv(pixels) + l2 * jnp.mean((pixels - 0.5) ** 2, axis=(1, 2, 3))
    return jnp.sum(ce + prior)

  @jax.jit
  def run(z):
    def body(carry, _):
      z, opt = carry
      g = jax.grad(loss_fn)(z)
      upd, opt = tx.update(g, opt, z)
      return (optax.apply_updates(z, upd), opt), None
    (z, _), _ = jax.lax.scan(body, (z, tx.init(z)), None, length=steps)
    return (jax.nn.sigmoid(z) - mean) / std

  return np.asarray(run(z0)), labels


@dataclasses.dataclass(frozen=True)
class PosthocResult:
  """The poisoned SynSet and what went into it."""
  syn: SynSet
  prototypes: np.ndarray          # normalised, before the trigger
  prototype_labels: np.ndarray    # the classes they were inverted for
  triggered: np.ndarray           # normalised, with the trigger (labelled target)
  surrogate_accuracy: float       # the attacker's model on its own prototypes (sanity check)
  loss: np.ndarray                # the matching loss per step


def posthoc_attack(key: jax.Array, syn: SynSet, *, trigger: Trigger, target: int, mean, std,
                   model: nn.Module, protocol="cpu", per_class: int = 2, steps: int = 20,
                   outer_loop: int = 10, inner_loop: int = 10, lr_img: float = 0.1,
                   inversion_steps: int | None = None, replace: int | None = None,
                   archetypes: str = "synset") -> PosthocResult:
  """Injects a backdoor into a finished SynSet (the attacker has no real data).

  1. Trains ``model`` on ``syn`` under ``protocol`` (:func:`jaxdd.train.train_fresh`).
  2. Takes ``per_class`` archetypes of every class but ``target`` and stamps
     ``trigger`` on them. ``archetypes="inversion"`` inverts them from noise
     (:func:`invert_prototypes`, ``inversion_steps`` default 300), as Dark
     Distillation describes; ``"synset"`` (default) starts the inversion from
     the SynSet's own first images of the class (``inversion_steps`` default
     0: the distilled images themselves are the attacker's best archetypes).
     Measured on CMNIST (RESULTS.md, "Backdoors"), archetypes inverted from
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
  from jaxdd import distill  # noqa: PLC0415  (distill imports the training stack)
  from jaxdd import train as train_lib  # noqa: PLC0415
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
    protos, proto_labels = invert_prototypes(k_inv, model, variables, sources,
                                             image_shape=images.shape[1:], mean=mean, std=std,
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
