"""Neural Cleanse (Wang et al., S&P 2019), the audit's trigger reverse-engineering probe.

For every class, the smallest mask and pattern that send clean images of the other classes
to it; a class that needs a much smaller mask than the others has a shortcut, i.e. a
backdoor (:func:`anomaly_index`). :func:`jaxdd.security.audit.audit` runs it on one of the
networks trained on a SynSet; the names are also importable from :mod:`jaxdd.security.audit`.
"""
from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxdd import progress as progress_lib
from jaxdd._src import checks
from jaxdd.security import attacks


def _predict_fn(model: nn.Module, variables):
  @jax.jit
  def predict(x):
    return jnp.argmax(model.apply(variables, x, train=False), axis=-1)
  return predict


@dataclasses.dataclass(frozen=True)
class Reversed:
  """Neural Cleanse's output: per class, the mask's l1 norm (pixels) and its ASR."""
  mask_l1: np.ndarray        # (num_classes,)
  asr: np.ndarray            # (num_classes,) of the reversed trigger on held-out images
  anomaly_index: np.ndarray  # (num_classes,) (median - l1) / (1.4826 MAD); >0: smaller
  masks: np.ndarray          # (num_classes, H, W, 1)
  patterns: np.ndarray       # (num_classes, H, W, C), pixel space


def anomaly_index(values) -> np.ndarray:
  """``(median - v) / (1.4826 * MAD)``: how far below the median each value is, in robust sds.

  Example:
    >>> anomaly_index([10., 11., 9., 10., 2.]).round(2)
    array([ 0.  , -0.67,  0.67,  0.  ,  5.4 ])
  """
  v = np.asarray(values, np.float64)
  med = np.median(v)
  mad = 1.4826 * np.median(np.abs(v - med))
  return (med - v) / max(mad, 1e-12)


def reverse_engineer(key: jax.Array, model: nn.Module, variables, images, labels, *,
                     num_classes: int, mean, std, steps: int = 200, lr: float = 0.1,
                     l1_weight: float = 1e-3, success: float = 0.99, held_out=None,
                     progress: bool = False) -> Reversed:
  """Neural Cleanse: the smallest trigger that sends ``images`` to each class.

  Per class t, ``mask = sigmoid(a)`` (H, W, 1) and ``pattern = sigmoid(b)``
  (H, W, C) minimise ``mean CE(f(stamp(x)), t) + lambda * sum(mask)`` over the
  images of other classes, by Adam(``lr``) for ``steps`` full-batch steps; all
  classes in one compiled program (``vmap``). As in Neural Cleanse, ``lambda``
  adapts: it starts at ``l1_weight`` and grows by 5 % after every step at which
  at least ``success`` of the images reach t, and shrinks by 7 % otherwise; the
  smallest mask that reached ``success`` is kept (the last one if none did).
  ``a`` starts at -2 plus N(0, 0.1) noise (a faint mask), ``b`` at N(0, 1).

  Args:
    images, labels: clean normalised images to optimise on.
    held_out: optional ``(images, labels)`` on which the reversed triggers'
      ASR is measured (default: the optimisation images).
    progress: report the optimisation's steps (all classes advance together), in about
      ten compiled calls instead of one; the result is the same.
  """
  checks.check_key(key)
  images = jnp.asarray(images)
  labels = np.asarray(labels)
  h, w, c = images.shape[1:]
  ka, kb = jax.random.split(key)
  a0 = -2.0 + 0.1 * jax.random.normal(ka, (num_classes, h, w, 1))
  b0 = jax.random.normal(kb, (num_classes, h, w, c))
  # Per class, the images of other classes (weights 0/1 so that one batch serves all classes).
  keep = jnp.asarray(labels[None, :] != np.arange(num_classes)[:, None], jnp.float32)
  tx = optax.adam(lr)

  def loss_fn(ab, lam, t, weight):
    a, b = ab
    x = attacks.stamp(images, jax.nn.sigmoid(b), jax.nn.sigmoid(a), mean, std)
    logits = model.apply(variables, x, train=False)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.full(x.shape[:1], t))
    count = jnp.maximum(weight.sum(), 1.0)
    hit = jnp.sum((jnp.argmax(logits, -1) == t) * weight) / count
    return jnp.sum(ce * weight) / count + lam * jax.nn.sigmoid(a).sum(), hit

  def body(carry, t, weight):
    ab, opt, lam, best = carry
    (_, hit), g = jax.value_and_grad(loss_fn, has_aux=True)(ab, lam, t, weight)
    l1 = jax.nn.sigmoid(ab[0]).sum()  # the mask that reached `hit`
    better = (hit >= success) & (l1 < best[0])
    best = jax.tree.map(lambda new, old: jnp.where(better, new, old),
                        (l1, ab[0], ab[1], jnp.bool_(True)), best)
    lam = jnp.where(hit >= success, lam * 1.05, lam / 1.07)
    upd, opt = tx.update(g, opt, ab)
    return optax.apply_updates(ab, upd), opt, lam, best

  @functools.partial(jax.jit, static_argnums=1)
  def advance(carry, length):  # `length` steps of every class's optimisation
    def one(c, t, weight):
      return jax.lax.scan(lambda c, _: (body(c, t, weight), None), c, None, length=length)[0]
    return jax.vmap(one)(carry, jnp.arange(num_classes), keep)

  carry = jax.vmap(lambda a, b: ((a, b), tx.init((a, b)), jnp.float32(l1_weight),
                                 (jnp.float32(jnp.inf), a, b, jnp.bool_(False))))(a0, b0)
  chunk = max(1, -(-steps // 10) if progress else steps)
  with progress_lib.bar(steps, f"audit: Neural Cleanse ({num_classes} classes)", unit="step",
                        disable=not progress) as bar:
    for start in range(0, steps, chunk):
      carry = jax.block_until_ready(advance(carry, min(chunk, steps - start)))
      bar.update(min(chunk, steps - start))
  masks, patterns = (np.asarray(v) for v in _smallest(carry))
  predict = _predict_fn(model, variables)
  hx, hy = (images, labels) if held_out is None else (jnp.asarray(held_out[0]),
                                                       np.asarray(held_out[1]))
  asr = np.zeros(num_classes)
  for t in range(num_classes):
    other = hy != t
    x = attacks.stamp(hx[np.flatnonzero(other)], patterns[t], masks[t], mean, std)
    asr[t] = float(np.mean(np.asarray(predict(x)) == t))
  l1 = masks.reshape(num_classes, -1).sum(axis=1)
  return Reversed(l1, asr, anomaly_index(l1), masks, patterns)


@jax.jit
def _smallest(carry):
  """Neural Cleanse's result per class: the smallest mask that reached the target (else the
  last one) and its pattern, from the optimisation's carry."""
  def one(ab, best):
    return (jax.nn.sigmoid(jnp.where(best[3], best[1], ab[0])),
            jax.nn.sigmoid(jnp.where(best[3], best[2], ab[1])))
  return jax.vmap(one)(carry[0], carry[3])
