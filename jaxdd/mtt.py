"""Trajectory matching (MTT; Cazenavette et al., CVPR 2022) -- the student unroll and its gradients.

MTT distils by matching training trajectories: a student starts from an expert's
parameters at epoch t, takes ``syn_steps`` SGD steps on the synthetic set with a
learned learning rate ``syn_lr``, and should land where the expert was ``M``
epochs later. The loss is the normalised parameter distance

    L = ||theta_N - theta*_{t+M}||^2 / ||theta*_t - theta*_{t+M}||^2,

differentiated with respect to the synthetic images and ``syn_lr`` (MTT's
``distill.py``: plain SGD student steps, no momentum or weight decay, DSA with
per-image parameters, each step on the next chunk of a fresh permutation of the
synthetic set).

Two gradient modes of :func:`trajectory_loss`:

* ``"exact"``: reverse-mode through the whole unroll, ``lax.scan`` over
  ``jax.checkpoint``-ed student steps, so the backward pass keeps one parameter
  vector per step (not each step's activations) and recomputes a step's
  forward pass when it needs it. Second-order terms (Hessian-vector products
  through ``jax.grad``) are exact.
* ``"tesla"``: TESLA's constant-memory approximation (Cui et al., ICML 2023,
  ``justincui03/tesla``): a first pass runs the unroll without gradient
  tracking and sums the student gradients ``G``; a second pass walks the
  same steps again (same batches, same augmentation keys) and, per step,
  takes one vector-Jacobian product of the student gradient ``g_i`` with
  respect to that step's images, with cotangent ``-syn_lr * dL/dtheta_N``. It
  drops the dependence of later parameters on earlier images (``dtheta_j /
  dX_i`` for ``j > i`` through ``theta_{i+1}``), so memory does not grow with
  ``syn_steps``; it equals ``"exact"`` when ``syn_steps == 1``. ``syn_lr``'s
  gradient is ``-dL/dtheta_N . G``. The expert parameters get no gradient.

Precision: on GPUs, JAX's default float32 matmul and convolution precision is
TF32 (10-bit mantissa), and a parameter-distance ratio after a long unroll is
sensitive to it. Run under ``jax.default_matmul_precision("highest")`` when
values must be compared (the tests do); leave the default for speed.
"""
from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

MODES = ("exact", "tesla")


def flatten(params) -> tuple[jax.Array, Callable]:
  """``(flat, unravel)``: the parameters as one float vector, and its inverse."""
  flat, unravel = ravel_pytree(params)
  return flat, unravel


def student_batches(key: jax.Array, n: int, syn_steps: int, batch_syn: int) -> jax.Array:
  """(syn_steps, batch_syn) row indices: successive chunks of fresh permutations of ``n`` rows.

  Like MTT's student loop: take the next ``batch_syn`` rows of a random
  permutation, and start a new permutation when it runs out (here: enough
  permutations are drawn up front and concatenated).

  Example:
    >>> idx = student_batches(jax.random.key(0), 6, syn_steps=4, batch_syn=3)
    >>> idx.shape, sorted(np.asarray(idx[:2]).ravel().tolist())
    ((4, 3), [0, 1, 2, 3, 4, 5])
  """
  if not 1 <= batch_syn <= n:
    raise ValueError(f"batch_syn must be in [1, {n}] (the synthetic set's size), got {batch_syn}")
  per_perm = n // batch_syn  # whole chunks per permutation; a partial last chunk is not used
  perms = -(-syn_steps // per_perm)
  keys = jax.random.split(key, perms)
  chunks = jax.vmap(lambda k: jax.random.permutation(k, n)[:per_perm * batch_syn])(keys)
  return chunks.reshape(-1, batch_syn)[:syn_steps].astype(jnp.int32)


def _student_grad(apply_fn, unravel, augment, theta, images, labels, key):
  """The gradient of the mean cross-entropy at ``theta`` on one (augmented) student batch."""
  if augment is not None:
    images = augment(key, images)

  def ce(th):
    logits = apply_fn(unravel(th), images)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
  return jax.grad(ce)(theta)


def _ratio(theta_n, start, target):
  return jnp.sum((theta_n - target) ** 2) / jnp.sum((start - target) ** 2)


@functools.lru_cache(maxsize=32)
def _tesla(apply_fn, unravel, augment):
  """The TESLA loss as a ``custom_vjp`` function (cached per model/augmentation)."""
  grad_fn = functools.partial(_student_grad, apply_fn, unravel, augment)

  def forward(images, labels, syn_lr, start, idx, keys):
    def body(carry, inp):
      theta, total = carry
      i, k = inp
      g = grad_fn(theta, images[i], labels[i], k)
      return (theta - syn_lr * g, total + g), None
    (theta_n, total), _ = jax.lax.scan(body, (start, jnp.zeros_like(start)), (idx, keys))
    return theta_n, total

  @jax.custom_vjp
  def loss(images, labels, syn_lr, start, target, idx, keys):
    theta_n, _ = forward(images, labels, syn_lr, start, idx, keys)
    return _ratio(theta_n, start, target)

  def fwd(images, labels, syn_lr, start, target, idx, keys):
    theta_n, total = forward(images, labels, syn_lr, start, idx, keys)
    return _ratio(theta_n, start, target), (images, labels, syn_lr, start, target, idx, keys,
                                            theta_n, total)

  def bwd(res, ct):
    images, labels, syn_lr, start, target, idx, keys, theta_n, total = res
    d_theta_n = ct * 2.0 * (theta_n - target) / jnp.sum((start - target) ** 2)
    d_lr = -jnp.vdot(d_theta_n, total)
    cot = -syn_lr * d_theta_n

    def body(carry, inp):
      theta, d_images = carry
      i, k = inp
      g, vjp = jax.vjp(lambda xb: grad_fn(theta, xb, labels[i], k), images[i])
      (d_xb,) = vjp(cot)
      return (theta - syn_lr * g, d_images.at[i].add(d_xb)), None
    (_, d_images), _ = jax.lax.scan(body, (start, jnp.zeros_like(images)), (idx, keys))

    def none(x):
      return np.zeros(np.shape(x), jax.dtypes.float0)
    return (d_images, none(labels), d_lr, jnp.zeros_like(start), jnp.zeros_like(target),
            none(idx), none(keys))

  loss.defvjp(fwd, bwd)
  return loss


def trajectory_loss(images: jax.Array, labels: jax.Array, syn_lr: jax.Array, start: jax.Array,
                    target: jax.Array, key: jax.Array, *, apply_fn: Callable, unravel: Callable,
                    syn_steps: int, batch_syn: int | None = None, augment=None,
                    mode: str = "exact", remat: bool = True) -> jax.Array:
  """MTT's normalised parameter distance after ``syn_steps`` student steps (differentiable).

  Args:
    images, labels: the synthetic set (normalised NHWC images, integer labels).
    syn_lr: the student's learning rate (a scalar array; learned in MTT).
    start, target: flat expert parameters at epochs t and t + M
      (:func:`flatten`).
    key: typed PRNG key of this unroll (the batches and the augmentation).
    apply_fn: ``apply_fn(params, images) -> logits`` with ``params`` an
      unravelled parameter tree (e.g. ``lambda p, x: model.apply({"params": p},
      x, train=True)`` for a model without batch statistics).
    unravel: from :func:`flatten`.
    syn_steps: student steps N.
    batch_syn: images per student step (default: the whole set).
    augment: ``fn(key, images)`` (e.g. ``jaxdd.augment.dsa(strategy,
      siamese=False)``) or None.
    mode: ``"exact"`` or ``"tesla"`` (module docstring).
    remat: checkpoint each student step in ``"exact"`` mode (False: keep every
      step's activations, for comparison).

  Returns:
    The scalar loss.
  """
  if mode not in MODES:
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
  if isinstance(syn_steps, bool) or not isinstance(syn_steps, int) or syn_steps < 1:
    raise ValueError(f"syn_steps must be a positive int, got {syn_steps!r}")
  n = images.shape[0]
  batch_syn = n if batch_syn is None else batch_syn
  k_idx, k_aug = jax.random.split(key)
  idx = student_batches(k_idx, n, syn_steps, batch_syn)
  keys = jax.random.split(k_aug, syn_steps)
  syn_lr = jnp.asarray(syn_lr, jnp.float32)
  if mode == "tesla":
    return _tesla(apply_fn, unravel, augment)(images, labels, syn_lr, start, target, idx, keys)
  grad_fn = functools.partial(_student_grad, apply_fn, unravel, augment)

  def step(theta, inp):
    i, k = inp
    return theta - syn_lr * grad_fn(theta, images[i], labels[i], k), None
  theta_n, _ = jax.lax.scan(jax.checkpoint(step) if remat else step, start, (idx, keys))
  return _ratio(theta_n, start, target)
