"""Matching losses: distribution matching (DM) and gradient matching (DC / DSA).

DM (Zhao & Bilen, WACV 2023) with the real side turned into a *weighted* mean
(Cui et al., ICML 2024):

    L = sum_c || sum_i w_ci psi(A_c(x_ci)) - mean_s psi(A_c(s_cs)) ||^2

``psi`` is the embedding of a (random, frozen) network, ``A_c`` one DSA draw per
class shared by the real and the synthetic images of that class (siamese), and
``w_c`` sums to one over the real batch of class ``c``. Uniform weights
(``1/B``) give the unweighted DM exactly. The real side carries no gradient (it
is a constant target, as in the reference code).

Gradient matching (DC: Zhao et al., ICLR 2021; DSA: Zhao & Bilen, ICML 2021)
compares, class by class, the network's parameter gradient on the real batch
(of the weighted cross-entropy ``sum_i w_ci CE_i``) with its gradient on the
synthetic images, with the layer-wise cosine distance of
:func:`gradient_distance`; see :func:`gm_loss`.

Shapes: real images are (C, B, H, W, ch), synthetic images (C, ipc, H, W, ch),
weights (C, B). Images are in the normalised space.
"""
from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

EmbedFn = Callable[[jax.Array], jax.Array]
AugmentFn = Callable[[jax.Array, jax.Array], jax.Array]


def _check_stacks(name: str, syn: jax.Array, real: jax.Array,
                  weights: jax.Array | None) -> jax.Array:
  """Checks (C, ipc, ...) / (C, B, ...) stacks; returns the (C, B) weights (uniform if None)."""
  if real.ndim != 5 or syn.ndim != 5:
    raise ValueError(f"{name} expects (C, B, H, W, ch) stacks, got real {real.shape} and syn {syn.shape}")
  if real.shape[0] != syn.shape[0] or real.shape[2:] != syn.shape[2:]:
    raise ValueError(f"real {real.shape} and syn {syn.shape} disagree on classes or image shape")
  num_classes, batch = real.shape[:2]
  if weights is None:
    return jnp.full((num_classes, batch), 1.0 / batch, real.dtype)
  if weights.shape != (num_classes, batch):
    raise ValueError(f"weights must have shape {(num_classes, batch)}, got {weights.shape}")
  return weights


def _largest_divisor(n: int, at_most: int) -> int:
  """The largest divisor of ``n`` not above ``at_most`` (chunk sizes)."""
  return max(d for d in range(1, min(at_most, n) + 1) if n % d == 0)


def _flat_apply(fn: EmbedFn, x: jax.Array, chunk: int | None = None) -> jax.Array:
  """Embeds a (C, B, ...) stack as (C*B, ...) images, in one call or in chunks.

  One call (rather than a vmap over classes) keeps the convolutions large and
  matches the reference's BatchNorm semantics, where statistics mix classes.
  With ``chunk``, the images go through ``fn`` ``chunk`` at a time inside a
  ``lax.map``: the same result for per-sample networks, with activations small
  enough to stay in cache (faster on CPU; docs/results/speed-distillation.md, "One DM step",
  benchmarks/dm_step.py). ``chunk`` is rounded down to the
  largest divisor of C*B not above it.
  """
  c, b = x.shape[:2]
  flat = x.reshape((c * b,) + x.shape[2:])
  if chunk is None or chunk >= c * b:
    feats = fn(flat)
  else:
    chunk = _largest_divisor(c * b, chunk)
    feats = jax.lax.map(fn, flat.reshape((c * b // chunk, chunk) + flat.shape[1:]))
    feats = feats.reshape((c * b,) + feats.shape[2:])
  return feats.reshape((c, b) + feats.shape[1:])


def mean_embeddings(embed_fn: EmbedFn, real: jax.Array, syn: jax.Array, weights: jax.Array,
                    *, real_chunk: int | None = None, syn_chunk: int | None = None,
                    real_embed_fn: EmbedFn | None = None) -> tuple[jax.Array, jax.Array]:
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
    real_embed_fn: embeds the real images instead of ``embed_fn`` (the same
      network run differently, e.g. in bfloat16: :func:`jaxdd.distill.dm`'s
      ``real_dtype``). Its features are cast to the synthetic features' dtype.

  Returns:
    ``(real_mean, syn_mean)``, each (C, d). ``real_mean`` is gradient-free.
  """
  real_fn = embed_fn if real_embed_fn is None else real_embed_fn
  # named scopes: a profile attributes each side's kernels (benchmarks/trace_summary.py)
  with jax.named_scope("real_embed"):
    real_feats = jax.lax.stop_gradient(_flat_apply(real_fn, real, real_chunk))
  with jax.named_scope("syn_embed"):
    syn_feats = _flat_apply(embed_fn, syn, syn_chunk)
  real_feats = real_feats.astype(syn_feats.dtype)
  real_mean = jnp.einsum("cb,cbd->cd", weights.astype(real_feats.dtype), real_feats)
  return real_mean, syn_feats.mean(axis=1)


def by_class(x, labels, num_classes: int, per_class: int | None = None) -> jax.Array:
  """Flat rows ``(N, ...)`` with labels -> the class-stacked ``(C, B, ...)`` the losses take.

  Row ``[c, i]`` is the ``i``-th row of class ``c`` in the order given. Works on images,
  embeddings or weights alike (call it with the same labels for each). Host-side: ``labels``
  must be concrete (not traced).

  Args:
    x: (N, ...) array.
    labels: (N,) integer labels in ``[0, num_classes)``.
    num_classes: C.
    per_class: B, the rows kept per class (default: the smallest class's count).

  Returns:
    (C, B, ...) array.

  Raises:
    ValueError: labels traced or of the wrong shape, or a class with fewer than B rows.

  Example:
    >>> import jax.numpy as jnp
    >>> by_class(jnp.arange(5), jnp.array([1, 0, 1, 0, 0]), 2).tolist()
    [[1, 3], [0, 2]]
  """
  if isinstance(labels, jax.core.Tracer):
    raise ValueError("by_class arranges rows on the host: pass concrete labels (call it "
                     "outside jit, once per dataset)")
  labels = np.asarray(labels)
  if labels.ndim != 1 or labels.shape[0] != np.shape(x)[0]:
    raise ValueError(f"by_class needs (N,) labels for the {np.shape(x)[0]} rows of x, got "
                     f"shape {labels.shape}")
  rows = [np.flatnonzero(labels == c) for c in range(num_classes)]
  counts = [len(r) for r in rows]
  b = min(counts) if per_class is None else int(per_class)
  short = [c for c, n in enumerate(counts) if n < max(b, 1)]
  if short:
    raise ValueError(f"by_class: class {short[0]} has {counts[short[0]]} rows, fewer than the "
                     f"{max(b, 1)} per class asked; pass a smaller per_class or more data")
  return jnp.asarray(x)[np.stack([r[:b] for r in rows])]


def dm_loss(key: jax.Array, syn: jax.Array, real: jax.Array, *, embed_fn: EmbedFn,
            augment: AugmentFn | None = None, weights: jax.Array | None = None,
            real_chunk: int | None = None, syn_chunk: int | None = None,
            map_classes: bool = True, real_embed_fn: EmbedFn | None = None,
            class_scale: jax.Array | None = None) -> jax.Array:
  """Weighted distribution-matching loss, summed over classes.

  Args:
    key: augmentation key; class ``c`` uses ``fold_in(key, c)`` for BOTH its
      real and synthetic batch (siamese DSA, as the reference code).
    syn: (C, ipc, H, W, ch) synthetic images (the variable being learned).
    real: (C, B, H, W, ch) real images (:func:`by_class` arranges flat images so).
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
    real_embed_fn: optional embedding of the real images in place of
      ``embed_fn`` (see :func:`mean_embeddings`).
    class_scale: optional (C,) factor per class's term (FairDD's synchronized
      matching, :func:`jaxdd.weighting.group_balanced_weights`); None: 1.

  Returns:
    The scalar loss sum_c scale_c ||weighted real mean - synthetic mean||^2.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> embed = lambda x: x.reshape(x.shape[0], -1)
    >>> real = jnp.ones((2, 4, 2, 2, 1)); syn = jnp.zeros((2, 1, 2, 2, 1))
    >>> float(dm_loss(jax.random.key(0), syn, real, embed_fn=embed))
    8.0
  """
  weights = _check_stacks("dm_loss", syn, real, weights)
  num_classes = real.shape[0]
  if augment is not None:
    with jax.named_scope("dsa"):  # for a profile, as the embeddings' scopes
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
                                        syn_chunk=syn_chunk, real_embed_fn=real_embed_fn)
  if class_scale is None:
    return jnp.sum((real_mean - syn_mean) ** 2)
  per_class = jnp.sum((real_mean - syn_mean) ** 2, axis=tuple(range(1, real_mean.ndim)))
  return jnp.sum(per_class * class_scale)


# ---------------------------------------------------------------------------
# Gradient matching (DC / DSA)
# ---------------------------------------------------------------------------

LogitsFn = Callable[[object, jax.Array], jax.Array]


def _safe_norm(x: jax.Array, axis: int) -> jax.Array:
  """Euclidean norm whose gradient at 0 is 0 (as torch.norm's), not NaN."""
  sq = jnp.sum(jnp.square(x), axis=axis)
  pos = sq > 0
  return jnp.where(pos, jnp.sqrt(jnp.where(pos, sq, 1.0)), 0.0)


def gradient_distance(g_real, g_syn, *, eps: float = 1e-6) -> jax.Array:
  """The DC/DSA layer-wise gradient distance (Zhao et al. 2021, ``dis_metric='ours'``).

  For every parameter tensor with at least two axes, the rows are its output
  units (the last axis of a Flax kernel: conv ``(kh, kw, in, out)``, dense
  ``(in, out)``) and the distance adds ``1 - <r, s> / (|r| |s| + eps)`` over
  rows (``eps`` added to the product of the norms, as in the reference). 1-D
  tensors (biases, norm scales and offsets) contribute 0, and so receive no
  gradient.

  Args:
    g_real, g_syn: two pytrees of the same structure (parameter gradients).
    eps: added to the product of the row norms.

  Returns:
    The scalar distance.

  Example:
    >>> import jax.numpy as jnp
    >>> g = {"kernel": jnp.array([[1.0, 0.0], [0.0, 1.0]]), "bias": jnp.ones(2)}
    >>> h = {"kernel": jnp.array([[1.0, 1.0], [0.0, 1.0]]), "bias": jnp.zeros(2)}
    >>> round(float(gradient_distance(g, h)), 4)   # rows: columns of the kernel
    0.2929
  """
  def layer(gr, gs):
    if gr.shape != gs.shape:
      raise ValueError(f"gradient shapes differ: {gr.shape} vs {gs.shape}")
    if gr.ndim < 2:
      return jnp.zeros((), jnp.float32)
    gr = gr.reshape(-1, gr.shape[-1])  # (fan_in, out): a row of the reference is a column here
    gs = gs.reshape(-1, gs.shape[-1])
    cos = jnp.sum(gr * gs, axis=0) / (_safe_norm(gr, 0) * _safe_norm(gs, 0) + eps)
    return jnp.sum(1.0 - cos)

  return sum(jax.tree.leaves(jax.tree.map(layer, g_real, g_syn)), jnp.zeros((), jnp.float32))


def _class_ce_grad(logits_fn: LogitsFn, params, images: jax.Array, label: jax.Array,
                   weights: jax.Array, chunk: int | None):
  """Gradient w.r.t. ``params`` of ``sum_i weights_i CE(logits_fn(params, x_i), label)``."""
  def weighted_ce(p, x, w):
    logits = logits_fn(p, x)
    ce = optax.softmax_cross_entropy_with_integer_labels(
        logits, jnp.broadcast_to(label, logits.shape[:1]))
    return jnp.sum(w.astype(ce.dtype) * ce)

  n = images.shape[0]
  if chunk is None or chunk >= n:
    return jax.grad(weighted_ce)(params, images, weights)
  chunk = _largest_divisor(n, chunk)
  xs = images.reshape((n // chunk, chunk) + images.shape[1:])
  ws = weights.reshape(n // chunk, chunk)

  def body(acc, xw):
    return jax.tree.map(jnp.add, acc, jax.grad(weighted_ce)(params, *xw)), None

  zeros = jax.tree.map(jnp.zeros_like, params)
  return jax.lax.scan(body, zeros, (xs, ws))[0]


def gm_loss(key: jax.Array, syn: jax.Array, real: jax.Array, *, params, logits_fn: LogitsFn,
            augment: AugmentFn | None = None, weights: jax.Array | None = None,
            real_chunk: int | None = None, map_classes: bool = True,
            eps: float = 1e-6, real_logits_fn: LogitsFn | None = None) -> jax.Array:
  """Weighted gradient-matching loss (DC / DSA), summed over classes.

  For class ``c`` with siamese augmentation ``A_c`` (one draw per class,
  ``fold_in(key, c)``, shared by its real and synthetic images):

      g_real = d/dθ sum_i w_ci CE(f_θ(A_c(x_ci)), c)        (a constant)
      g_syn  = d/dθ mean_j CE(f_θ(A_c(s_cj)), c)
      L      = sum_c gradient_distance(g_real, g_syn)

  Uniform weights ``1/B`` give the reference's mean cross-entropy (vanilla DC /
  DSA); KDE weights give Cui et al.'s reweighting. Differentiate with respect
  to ``syn`` (second order through the network).

  Args:
    key: augmentation key.
    syn: (C, ipc, H, W, ch) synthetic images (the variable being learned).
    real: (C, B, H, W, ch) real images.
    params: the network parameters θ (any pytree).
    logits_fn: ``(params, images) -> logits``, e.g. ``lambda p, x:
      model.apply({"params": p}, x)`` for any Flax model.
    augment: siamese ``f(key, images)`` or None (DC).
    weights: (C, B) per-sample weights (rows sum to one) or None (uniform).
    real_chunk: compute the real gradient this many images at a time (sum of
      per-chunk gradients; the same value). Only for per-sample networks.
    map_classes: classes one after another with ``lax.map`` (default) or
      batched with ``vmap`` (for a class-sharded mesh); the same result.
    eps: see :func:`gradient_distance`.
    real_logits_fn: computes the real gradient's logits in place of
      ``logits_fn`` (the same network, e.g. traced with other convolution
      kernels); None: ``logits_fn``.

  Returns:
    The scalar loss.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> logits_fn = lambda p, x: x.reshape(x.shape[0], -1) @ p["w"]
    >>> params = {"w": jnp.eye(4, 2)}
    >>> real = jax.random.normal(jax.random.key(0), (2, 8, 2, 2, 1))
    >>> same = gm_loss(jax.random.key(1), real, real, params=params, logits_fn=logits_fn, eps=0.0)
    >>> fewer = gm_loss(jax.random.key(1), real[:, :2], real, params=params, logits_fn=logits_fn)
    >>> bool(same < 1e-5), bool(fewer > 0.1)   # identical images match exactly
    (True, True)
  """
  weights = _check_stacks("gm_loss", syn, real, weights)
  num_classes = real.shape[0]
  classes = jnp.arange(num_classes)
  class_keys = jax.vmap(lambda c: jax.random.fold_in(key, c))(classes)

  def real_grad(k, x, w, c):
    if augment is not None:
      x = augment(k, x)
    fn = logits_fn if real_logits_fn is None else real_logits_fn
    return jax.lax.stop_gradient(_class_ce_grad(fn, params, x, c, w, real_chunk))

  def syn_distance(k, s, g_real, c):
    if augment is not None:
      s = augment(k, s)
    g_syn = _class_ce_grad(logits_fn, params, s, c, jnp.full(s.shape[:1], 1.0 / s.shape[0]), None)
    return gradient_distance(g_real, g_syn, eps=eps)

  if map_classes:
    g_real = jax.lax.map(lambda a: real_grad(*a), (class_keys, real, weights, classes))
    dists = jax.lax.map(lambda a: syn_distance(*a), (class_keys, syn, g_real, classes))
  else:
    g_real = jax.vmap(real_grad)(class_keys, real, weights, classes)
    dists = jax.vmap(syn_distance)(class_keys, syn, g_real, classes)
  return jnp.sum(dists)


# ---------------------------------------------------------------------------
# Curriculum frequency matching (CFM; UniDD, Bo et al., ICLR 2026)
# ---------------------------------------------------------------------------

#: CFM's filters of a channel covariance: 'high' (F = (cov + beta I)^-1, high-frequency
#: matching) and 'low' (F = cov).
CFM_FILTERS = ("high", "low")
#: Schedules of beta over the iterations: constant, or from beta down to 0 along a cosine
#: (UniDD's ``--cos``, there over IPC slots) or a line.
CFM_SCHEDULES = ("constant", "cos", "linear")
#: What beta's schedule runs over: the run's iterations, or UniDD's IPC slots
#: (:func:`cfm_slot`).
CFM_CURRICULA = ("iterations", "slots")


def conv_inputs(apply_fn: Callable[[jax.Array], object], x: jax.Array) -> list[jax.Array]:
  """The input of every convolution with a kernel larger than 1x1 while ``apply_fn(x)`` runs.

  UniDD hooks the inputs of the teacher's convolutions, skipping the 1x1
  downsampling projections of residual networks; this records the same with a
  Flax method interceptor, so any Flax model built from ``nn.Conv`` works
  (jaxdd's ConvNet: the image, then each pooled block output).

  Returns:
    One (B, H, W, C) array per convolution, in call order.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxdd import models
    >>> net = models.ConvNet(num_classes=2, depth=2, width=4)
    >>> v = net.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
    >>> [f.shape for f in conv_inputs(lambda x: net.apply(v, x), jnp.ones((2, 8, 8, 3)))]
    [(2, 8, 8, 3), (2, 4, 4, 4)]
  """
  seen: list[jax.Array] = []

  def record(next_fun, args, kwargs, context):
    module = context.module
    if (context.method_name == "__call__" and isinstance(module, nn.Conv)
        and tuple(module.kernel_size) != (1, 1)):
      seen.append(args[0])
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    apply_fn(x)
  return seen


def channel_stats(feats: jax.Array, weights: jax.Array | None = None
                  ) -> tuple[jax.Array, jax.Array]:
  """The (weighted) per-channel mean and channel covariance of a feature map.

  Every spatial position of every image is a sample, as UniDD's
  ``cov(correction=0)`` over ``B*H*W`` columns. Image ``b`` carries weight
  ``w_b`` (its positions share it), so with KDE weights

      mu = sum_b w_b mean_p f_bp,   cov = sum_b w_b mean_p (f_bp - mu)(f_bp - mu)^T,

  and uniform weights give the plain statistics.

  Args:
    feats: (B, H, W, C).
    weights: (B,) non-negative, summing to one; None for uniform.

  Returns:
    ``(mu, cov)``: (C,) and (C, C), in float32.
  """
  b = feats.shape[0]
  f = feats.reshape(b, -1, feats.shape[-1]).astype(jnp.float32)
  w = jnp.full((b,), 1.0 / b, jnp.float32) if weights is None else weights.astype(jnp.float32)
  hi = jax.lax.Precision.HIGHEST  # TF32 on GPUs would swamp small eigenvalues
  mu = jnp.einsum("b,bc->c", w, f.mean(axis=1), precision=hi)
  d = f - mu
  cov = jnp.einsum("b,bpc,bpd->cd", w / f.shape[1], d, d, precision=hi)
  return mu, cov


def frequency_filter(cov: jax.Array, beta, kind: str = "high") -> jax.Array:
  """F(cov): ``(cov + beta I)^-1`` (``'high'``, by a Cholesky solve) or ``cov`` (``'low'``)."""
  if kind == "low":
    return cov
  if kind != "high":
    raise ValueError(f"filter must be one of {list(CFM_FILTERS)}, got {kind!r}")
  c = cov.shape[0]
  factor = jax.scipy.linalg.cho_factor(cov + beta * jnp.eye(c, dtype=cov.dtype))
  return jax.scipy.linalg.cho_solve(factor, jnp.eye(c, dtype=cov.dtype))


def cfm_layer_loss(real: tuple[jax.Array, jax.Array], syn: tuple[jax.Array, jax.Array], beta,
                   *, kind: str = "high", normalize: bool = True) -> jax.Array:
  """UniDD's per-layer term ``||F_r - F_s||_F + ||F_r mu_r - F_s mu_s||_2``.

  ``real`` and ``syn`` are ``(mu, cov)`` pairs (:func:`channel_stats`). With
  ``normalize`` each norm is divided by the real side's (``||F_r||_F`` and
  ``||F_r mu_r||``): with the high-frequency filter both scale like ``1 / beta``
  as beta goes to 0, so a schedule towards 0 would otherwise blow the loss up by
  orders of magnitude. This departs from UniDD, whose loss is unnormalised.
  The norms are ``optax.safe_norm``, whose gradient stays finite at 0.
  """
  mu_r, cov_r = real
  mu_s, cov_s = syn
  f_r = jax.lax.stop_gradient(frequency_filter(cov_r, beta, kind))
  f_s = frequency_filter(cov_s, beta, kind)
  hi = jax.lax.Precision.HIGHEST
  v_r = jnp.dot(f_r, mu_r, precision=hi)
  v_s = jnp.dot(f_s, mu_s, precision=hi)
  cov_term = optax.safe_norm(f_r - f_s, 1e-12)
  mean_term = optax.safe_norm(v_r - v_s, 1e-12)
  if normalize:
    cov_term = cov_term / jnp.maximum(jnp.linalg.norm(f_r), 1e-12)
    mean_term = mean_term / jnp.maximum(jnp.linalg.norm(v_r), 1e-12)
  return cov_term + mean_term


def cfm_loss(key: jax.Array, syn: jax.Array, real: jax.Array, *,
             features_fn: Callable[[jax.Array], list[jax.Array]], beta,
             augment: AugmentFn | None = None, weights: jax.Array | None = None,
             syn_weights: jax.Array | None = None, kind: str = "high",
             normalize: bool = True) -> jax.Array:
  """Curriculum frequency matching, class by class, optionally KDE-weighted.

  For each class ``c`` and each hooked layer ``l`` (``features_fn``, e.g.
  :func:`conv_inputs` of a network), :func:`cfm_layer_loss` between the
  (weighted) statistics of the real batch and those of the synthetic images;
  summed over layers and classes. Augmentation is siamese per class as in
  :func:`dm_loss`. The real side carries no gradient.

  Args:
    key: augmentation key (class ``c`` uses ``fold_in(key, c)`` for both sides).
    syn: (C, ipc, H, W, ch) synthetic images.
    real: (C, B, H, W, ch) real images.
    features_fn: images (n, H, W, ch) -> list of (n, h, w, k) feature maps.
    beta: the filter's ridge (a scalar, traced or not).
    augment: ``f(key, images)`` or None.
    weights: (C, B) per-image weights (rows sum to one) or None (uniform).
    syn_weights: (C, ipc) weights of the synthetic images in their statistics
      (rows sum to one; a zero leaves an image out and gives it no gradient),
      or None (uniform). The slot curriculum uses it to match the slots done so
      far (:func:`cfm_slot_weights`).
    kind: ``'high'`` or ``'low'`` (:func:`frequency_filter`).
    normalize: see :func:`cfm_layer_loss`.

  Returns:
    The scalar loss.
  """
  if kind not in CFM_FILTERS:
    raise ValueError(f"filter must be one of {list(CFM_FILTERS)}, got {kind!r}")
  weights = _check_stacks("cfm_loss", syn, real, weights)
  num_classes = real.shape[0]
  if syn_weights is None:
    syn_weights = jnp.full(syn.shape[:2], 1.0 / syn.shape[1], jnp.float32)
  elif syn_weights.shape != syn.shape[:2]:
    raise ValueError(f"cfm_loss: syn_weights must be (C, ipc) = {syn.shape[:2]}, got "
                     f"{syn_weights.shape}")
  if augment is not None:
    class_keys = jax.vmap(lambda c: jax.random.fold_in(key, c))(jnp.arange(num_classes))
    real = jax.lax.map(lambda args: augment(*args), (class_keys, real))
    syn = jax.lax.map(lambda args: augment(*args), (class_keys, syn))

  def one_class(args):
    r, s, w, sw = args
    real_feats = [jax.lax.stop_gradient(f) for f in features_fn(r)]
    syn_feats = features_fn(s)
    total = jnp.zeros((), jnp.float32)
    for fr, fs in zip(real_feats, syn_feats):
      total = total + cfm_layer_loss(channel_stats(fr, w), channel_stats(fs, sw), beta,
                                     kind=kind, normalize=normalize)
    return total

  return jnp.sum(jax.lax.map(one_class, (real, syn, weights, syn_weights)))


def cfm_beta(beta: float, step, total: int, schedule: str = "cos", floor: float = 1e-3):
  """beta at ``step`` of ``total``: constant, or from ``beta`` down to ``floor * beta``.

  ``'cos'``: ``beta (floor + (1 - floor) (1 + cos(pi t / total)) / 2)`` (UniDD's
  ``--cos`` curriculum, there over IPC slots, here over iterations);
  ``'linear'``: the same along a line. The floor keeps ``cov + beta I`` well
  conditioned in float32 when a channel has no variance (a dead ReLU), where
  UniDD's schedule would reach 0.

  Example:
    >>> [round(float(cfm_beta(0.1, t, 4, floor=0.0)), 4) for t in range(5)]
    [0.1, 0.0854, 0.05, 0.0146, 0.0]
  """
  if schedule == "constant":
    return jnp.asarray(beta, jnp.float32)
  frac = jnp.clip(jnp.asarray(step, jnp.float32) / max(total, 1), 0.0, 1.0)
  if schedule == "cos":
    shape = 0.5 * (1.0 + jnp.cos(jnp.pi * frac))
  elif schedule == "linear":
    shape = 1.0 - frac
  else:
    raise ValueError(f"schedule must be one of {list(CFM_SCHEDULES)}, got {schedule!r}")
  return beta * (floor + (1.0 - floor) * shape)


def cfm_slot(step, total: int, ipc: int):
  """The IPC slot that step ``step`` of ``total`` works on in the slot curriculum.

  UniDD synthesises one slot (one image per class) at a time; here the run's
  ``total`` iterations are cut into ``ipc`` equal phases and phase ``k`` moves
  slot ``k`` only.

  Example:
    >>> [int(cfm_slot(t, 10, 3)) for t in range(10)]
    [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]
  """
  k = (jnp.asarray(step, jnp.int32) * ipc) // max(total, 1)
  return jnp.clip(k, 0, ipc - 1)


def cfm_slot_weights(slot, ipc: int) -> jax.Array:
  """(ipc,) weights of the synthetic images in the slot curriculum's statistics:
  uniform over the slots done so far and the current one (``0..slot``), zero on
  the slots not started. So the union of the images synthesised so far is
  matched, as with UniDD's ``--ema`` (which keeps running averages of the
  finished slots' statistics; here one pooled statistic of their images).

  Example:
    >>> cfm_slot_weights(1, 4).tolist()
    [0.5, 0.5, 0.0, 0.0]
  """
  done = (jnp.arange(ipc) <= slot).astype(jnp.float32)
  return done / done.sum()
