"""Backdoor attacks on distilled sets -- a red team, for evaluating defences only.

These exist so that :mod:`jaxdd.security.audit` (and any other defence) can be
measured against real attacks; they are not meant for anything else.

* :func:`poison` -- BadNets-style poisoning of the *real* data before
  distillation (Gu et al. 2017; the setting of DOORPING's "naive attack", Liu et
  al., NDSS 2023): a fraction of the training images of other classes get a
  trigger stamped in and are relabelled to the target class. Whoever distils the
  poisoned data may carry the backdoor into the SynSet.
* :func:`jaxdd.runs.attacks.posthoc_attack` (:func:`invert_prototypes` here,
  then the gradient-matching distiller) -- an attack on a *finished* SynSet by
  someone who only intercepts it, in the spirit of Dark Distillation (Yang et al., 2025: train a
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

