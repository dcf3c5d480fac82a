"""Distribution-matching loss (DM), weighted or uniform.

The loss of Zhao & Bilen's DM (REFERENCE-DM-DSA.md §3) with the real side turned
into a *weighted* mean (Cui et al. 2024; SPEC §3):

    L = sum_c || sum_i w_ci psi(A_c(x_ci)) - mean_s psi(A_c(s_cs)) ||^2

``psi`` is the embedding of a (random, frozen) network, ``A_c`` one DSA draw per
class shared by the real and the synthetic images of that class (siamese), and
``w_c`` sums to one over the real batch of class ``c``. Uniform weights
(``1/B``) give the reference's unweighted DM exactly. The real side carries no
gradient (it is a constant target, as in the reference).

Shapes: real images are (C, B, H, W, ch), synthetic images (C, ipc, H, W, ch),
weights (C, B). Images are in the normalised space.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

EmbedFn = Callable[[jax.Array], jax.Array]
AugmentFn = Callable[[jax.Array, jax.Array], jax.Array]


def _flat_apply(fn: EmbedFn, x: jax.Array, chunk: int | None = None) -> jax.Array:
  """Embeds a (C, B, ...) stack as (C*B, ...) images, in one call or in chunks.

  One call (rather than a vmap over classes) keeps the convolutions large and
  matches the reference's BatchNorm semantics, where statistics mix classes.
  With ``chunk``, the images go through ``fn`` ``chunk`` at a time inside a
  ``lax.map``: the same result for per-sample networks, with activations small
  enough to stay in cache (about 2x faster for the gradient-free real side on
  the 2-core CPU; see benchmarks/dm_step.py). ``chunk`` is rounded down to the
  largest divisor of C*B not above it.
  """
  c, b = x.shape[:2]
  flat = x.reshape((c * b,) + x.shape[2:])
  if chunk is None or chunk >= c * b:
    feats = fn(flat)
  else:
    chunk = max(d for d in range(1, chunk + 1) if (c * b) % d == 0)
    feats = jax.lax.map(fn, flat.reshape((c * b // chunk, chunk) + flat.shape[1:]))
    feats = feats.reshape((c * b,) + feats.shape[2:])
  return feats.reshape((c, b) + feats.shape[1:])


def mean_embeddings(embed_fn: EmbedFn, real: jax.Array, syn: jax.Array, weights: jax.Array,
                    *, real_chunk: int | None = None,
                    syn_chunk: int | None = None) -> tuple[jax.Array, jax.Array]:
  """Per-class weighted real mean and plain synthetic mean of the embeddings.

  Args:
    embed_fn: images (n, H, W, ch) -> features (n, d).
    real: (C, B, H, W, ch) real images (already augmented).
    syn: (C, ipc, H, W, ch) synthetic images (already augmented).
    weights: (C, B) non-negative weights, each row summing to one.
    real_chunk: embed the real images this many at a time (None: all at once).
      Only valid for networks without batch statistics.
    syn_chunk: the same for the synthetic images (forward and backward run
      chunk by chunk inside a scan). On CPU only worth it for networks whose
      convolutions are loop-safe (``jaxdd.models.TorchConv``), see
      ``jaxdd.models.loop_safe_conv``.

  Returns:
    ``(real_mean, syn_mean)``, each (C, d). ``real_mean`` is gradient-free.
  """
  real_feats = jax.lax.stop_gradient(_flat_apply(embed_fn, real, real_chunk))
  syn_feats = _flat_apply(embed_fn, syn, syn_chunk)
  real_mean = jnp.einsum("cb,cbd->cd", weights.astype(real_feats.dtype), real_feats)
  return real_mean, syn_feats.mean(axis=1)


def dm_loss(key: jax.Array, syn: jax.Array, real: jax.Array, *, embed_fn: EmbedFn,
            augment: AugmentFn | None = None, weights: jax.Array | None = None,
            real_chunk: int | None = None, syn_chunk: int | None = None,
            map_classes: bool = True) -> jax.Array:
  """Weighted distribution-matching loss, summed over classes.

  Args:
    key: augmentation key; class ``c`` uses ``fold_in(key, c)`` for BOTH its
      real and synthetic batch (siamese DSA, REFERENCE §4).
    syn: (C, ipc, H, W, ch) synthetic images (the variable being learned).
    real: (C, B, H, W, ch) real images.
    embed_fn: images -> embeddings, e.g. a random ConvNet's features.
    augment: ``f(key, images) -> images`` applied per class with the shared
      key, or None for no augmentation.
    weights: (C, B) per-sample weights (rows sum to one), or None for the
      uniform mean (unweighted DM).
    real_chunk, syn_chunk: embed the real / synthetic images this many at a
      time (see :func:`mean_embeddings`); the loss is the same.
    map_classes: augment class by class with ``lax.map`` (default: only the
      DSA family each class draws is computed) or with ``vmap`` (False: a
      batched ``lax.switch`` computes every family and selects, several times
      the work, but it partitions over a class-sharded mesh). Same result.

  Returns:
    The scalar loss sum_c ||weighted real mean - synthetic mean||^2.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> embed = lambda x: x.reshape(x.shape[0], -1)
    >>> real = jnp.ones((2, 4, 2, 2, 1)); syn = jnp.zeros((2, 1, 2, 2, 1))
    >>> float(dm_loss(jax.random.key(0), syn, real, embed_fn=embed))
    8.0
  """
  if real.ndim != 5 or syn.ndim != 5:
    raise ValueError(f"dm_loss expects (C, B, H, W, ch) stacks, got real {real.shape} and syn {syn.shape}")
  if real.shape[0] != syn.shape[0] or real.shape[2:] != syn.shape[2:]:
    raise ValueError(f"real {real.shape} and syn {syn.shape} disagree on classes or image shape")
  num_classes, batch = real.shape[:2]
  if weights is None:
    weights = jnp.full((num_classes, batch), 1.0 / batch, real.dtype)
  elif weights.shape != (num_classes, batch):
    raise ValueError(f"weights must have shape {(num_classes, batch)}, got {weights.shape}")
  if augment is not None:
    class_keys = jax.vmap(lambda c: jax.random.fold_in(key, c))(jnp.arange(num_classes))
    if map_classes:
      # Each class draws its own DSA family; under vmap, lax.switch would run
      # (and differentiate) every family for every class and then select.
      real = jax.lax.map(lambda args: augment(*args), (class_keys, real))
      syn = jax.lax.map(lambda args: augment(*args), (class_keys, syn))
    else:
      real = jax.vmap(augment)(class_keys, real)
      syn = jax.vmap(augment)(class_keys, syn)
  real_mean, syn_mean = mean_embeddings(embed_fn, real, syn, weights, real_chunk=real_chunk,
                                        syn_chunk=syn_chunk)
  return jnp.sum((real_mean - syn_mean) ** 2)
