"""Trajectory matching (MTT; Cazenavette et al., CVPR 2022): the student unroll, experts, buffers.

The distiller itself is :func:`jaxdd.distill.mtt` (an ``(init, step)`` pair like
:func:`jaxdd.distill.dm`); this module holds what it is built from.

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
import hashlib
import json
import os
import re
import shutil
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from jaxdd import progress as progress_lib
from jaxdd import tasks
from jaxdd import train as train_lib
from jaxdd._src import checks
from jaxdd._src import io as io_lib
from jaxdd._src import schema
from jaxdd._src.bound import bound
from jaxdd.protocols import Protocol

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


def _tesla(apply_fn, unravel, augment):
  """The TESLA loss as a ``custom_vjp`` function of a model/augmentation (built at trace time)."""
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


# ---------------------------------------------------------------------------
# Expert trajectories
# ---------------------------------------------------------------------------


def expert_protocol(*, lr: float = 0.01, batch_size: int = 256,
                    augment: str | None = "color_crop_cutout_flip_scale_rotate"):
  """One epoch of MTT's expert training (``buffer.py``): plain SGD, no momentum or decay."""
  return Protocol("mtt-expert", epochs=0, lr=lr, momentum=0.0, weight_decay=0.0,
                  batch_size=batch_size, decay_at=None, augment=augment)


def weighted_epoch_rows(key: jax.Array, weights, n: int) -> jax.Array:
  """``n`` row numbers drawn with replacement in proportion to ``weights`` (one epoch).

  The KDE-weighted expert sampler: an epoch keeps its ``n`` samples (so its
  number of steps, and the meaning of ``expert_epochs`` and
  ``max_start_epoch``), but rare images are drawn more often.
  """
  w = jnp.asarray(weights, jnp.float32)
  return jax.random.choice(key, w.shape[0], (n,), replace=True, p=w / w.sum()).astype(jnp.int32)


#: How per-image weights enter expert training: 'sample' (each epoch draws its
#: samples with replacement in proportion to the weights) or 'loss' (every epoch
#: is a plain pass; each batch's cross-entropy is the weighted mean).
EXPERT_WEIGHTINGS = ("sample", "loss")


def weighted_ce_task(model):
  """Cross-entropy training where batch ``b`` contributes ``sum w_i CE_i / sum w_i``.

  The weights ride in the task's state as ``{"sample_weight": (N,)}``, indexed
  by the training-set rows of each batch (:class:`jaxdd.tasks.StepBatch`), so
  the trainer needs no new argument. For networks without batch statistics
  (trajectory matching's experts). Equal models give equal tasks (shared programs).
  """
  return tasks.TrainTask("weighted_ce", bound(_weighted_init, model),
                         bound(_weighted_loss, model), bound(_weighted_predict, model),
                         per_sample=False)


def _weighted_init(model, key, images, labels):
  del labels
  params, state = tasks.split_variables(model.init(key, images[:1], train=False))
  if jax.tree.leaves(state):
    raise ValueError("weighted cross-entropy experts need a model without batch statistics; "
                     f"this one carries {sorted(state)}")
  return params, {}


def _weighted_loss(model, params, state, batch):
  logits = model.apply({"params": params}, batch.images, train=True, rngs={"dropout": batch.key})
  w = state["sample_weight"][batch.index]
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch.labels)
  return jnp.sum(w * ce) / jnp.maximum(jnp.sum(w), 1e-30), (state, logits)


def _weighted_predict(model, params, state, images):
  del state
  return model.apply({"params": params}, images, train=False)


def train_experts(key: jax.Array, images, labels, *, model, num_experts: int = 1,
                  epochs: int = 10, lr: float = 0.01, batch_size: int = 256,
                  augment: str | None = "color_crop_cutout_flip_scale_rotate", weights=None,
                  weighting: str = "sample", first: int = 0,
                  progress: bool = False) -> np.ndarray:
  """Expert trajectories: the flat parameters at init and after every epoch.

  Each expert is a fresh ``model`` trained on ``(images, labels)`` by jaxdd's
  trainer (:func:`jaxdd.train.fit_epochs`, one epoch per call) under
  :func:`expert_protocol`. Without ``weights`` an epoch is one pass over a
  fresh permutation. With ``weights`` (e.g. the KDE weights of the real
  images) and ``weighting='sample'``, every epoch draws its ``len(images)``
  samples with replacement in proportion to them (:func:`weighted_epoch_rows`);
  with ``weighting='loss'``, every epoch is a plain pass and each batch's loss
  is the weighted mean cross-entropy (:func:`weighted_ce_task`).

  Expert ``e`` is trained with the key ``fold_in(key, e)``; ``first`` numbers
  the experts from there, so experts ``0..k-1`` and then ``k..n-1`` (a resumed
  build, :func:`build_buffer`) equal experts ``0..n-1`` in one call.

  Returns:
    (num_experts, epochs + 1, P) float32: expert e's parameters before
    training (index 0) and after each epoch (:func:`flatten` order).
  """
  checks.check_key(key)
  for name, v in (("num_experts", num_experts), ("epochs", epochs)):
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
      raise ValueError(f"{name} must be a positive int, got {v!r}")
  if isinstance(first, bool) or not isinstance(first, int) or first < 0:
    raise ValueError(f"first must be a non-negative int, got {first!r}")
  if weighting not in EXPERT_WEIGHTINGS:
    raise ValueError(f"weighting must be one of {list(EXPERT_WEIGHTINGS)}, got {weighting!r}")
  images = jnp.asarray(images, jnp.float32)
  labels = jnp.asarray(labels, jnp.int32)
  n = int(images.shape[0])
  if weights is not None:
    weights = np.asarray(weights, np.float64)
    if weights.shape != (n,) or not np.isfinite(weights).all() or weights.min() < 0 \
        or weights.sum() <= 0:
      raise ValueError(f"weights must be ({n},) finite, non-negative, not all zero")
  by_loss = weights is not None and weighting == "loss"
  task = weighted_ce_task(model) if by_loss else train_lib.standard_task(model)
  protocol = expert_protocol(lr=lr, batch_size=batch_size, augment=augment)
  out = []
  bar = progress_lib.bar(num_experts * epochs, "expert trajectories", unit="epoch") \
      if progress and not progress_lib.is_quiet() else None
  try:
    for e in range(first, first + num_experts):
      k_init, k_run = jax.random.split(jax.random.fold_in(key, e))
      params, state = task.init(k_init, images[:1], labels[:1])
      if jax.tree.leaves(state):
        raise ValueError("trajectory matching needs a model without batch statistics (e.g. "
                         "instance norm, the ConvNet default); this one carries "
                         f"{sorted(state)}")
      if by_loss:
        state = {"sample_weight": jnp.asarray(weights / weights.mean(), jnp.float32)}
      snaps = [np.asarray(flatten(params)[0])]
      for ep in range(epochs):
        k_sample, k_epoch = jax.random.split(jax.random.fold_in(k_run, ep))
        if weights is None or by_loss:
          x, y = images, labels
        else:
          rows = weighted_epoch_rows(k_sample, weights, n)
          x, y = images[rows], labels[rows]
        params, state, _ = next(iter(train_lib.fit_epochs(k_epoch, params, state, x, y,
                                                          task=task, protocol=protocol)))
        snaps.append(np.asarray(flatten(params)[0]))
        if bar is not None:
          bar.update(1)
      out.append(np.stack(snaps))
  finally:
    if bar is not None:
      bar.close()
  return np.stack(out).astype(np.float32)


# ---------------------------------------------------------------------------
# The buffer artifact
# ---------------------------------------------------------------------------

BUFFER_FORMAT = 1
_BUFFER_FILES = ("trajectories.npz", "meta.json")


def buffer_spec(*, data: dict, model: str, weighting: dict, trainer: dict, seed: int) -> dict:
  """What determines a buffer: the data, the network, the weighting, the trainer, the seed.

  ``data`` describes the real training set (e.g. the dataset card's meta with
  its checksums, and the normalisation); ``weighting`` is ``{"kind": "none"}``
  or the KDE settings and the surrogate's digest; ``trainer`` the expert
  settings (epochs, lr, batch size, augmentation, number of experts).
  """
  spec = {"data": data, "model": model, "weighting": weighting, "trainer": trainer,
          "seed": int(seed)}
  return io_lib.jsonable(spec)


def spec_digest(spec: dict) -> str:
  return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def save_buffer(path: str, trajectories, spec: dict) -> str:
  """Writes a buffer artifact atomically: ``trajectories.npz``, ``meta.json``, ``manifest.json``."""
  traj = np.asarray(trajectories, np.float32)
  if traj.ndim != 3 or not np.isfinite(traj).all():
    raise ValueError(f"trajectories must be a finite (experts, epochs + 1, params) array, got "
                     f"{traj.shape}")
  with io_lib.atomic_directory(path, prefix=".tmp-buffer-") as tmp:
    with open(os.path.join(tmp, "trajectories.npz"), "wb") as f:
      np.savez(f, trajectories=traj)
    meta = {"format_version": BUFFER_FORMAT, "spec": spec, "digest": spec_digest(spec),
            "shape": list(traj.shape)}
    with open(os.path.join(tmp, "meta.json"), "w") as f:
      json.dump(meta, f, indent=2, sort_keys=True)
    manifest = {"files": {n: io_lib.sha256_file(os.path.join(tmp, n)) for n in _BUFFER_FILES}}
    with open(os.path.join(tmp, "manifest.json"), "w") as f:
      json.dump(manifest, f, indent=2, sort_keys=True)
  return path


#: What a build leaves in ``<path>.partial/``: its marker, the finished experts, and the
#: temporary files of the atomic writes of both.
_PARTIAL_ENTRY = re.compile(r"^(spec\.json|expert-\d{4}\.npy)$"
                            r"|^\.(spec\.json|expert-\d{4}\.npy)\..+\.tmp$")


def check_buffer_dir(path: str, *, flag: str = "the buffer folder") -> None:
  """Refuses ``path`` for an expert buffer unless building or reading one there destroys
  nothing (reads only): it must be absent, an empty folder, or a buffer (a manifest of
  exactly a buffer's files); and ``<path>.partial``, which a build fills and removes, must be
  absent or hold only what a build writes there.

  Args:
    path: the buffer's folder.
    flag: how the refusal names it (the option a user gave it with).

  Raises:
    ValueError: the one-line refusal, naming what is in the way.
  """
  fix = "give a new or empty folder"
  if os.path.lexists(path):
    if os.path.islink(path) or not os.path.isdir(path):
      raise ValueError(f"{flag} {path} is not a folder; {fix}")
    names = sorted(os.listdir(path))
    if "manifest.json" in names:
      try:
        files = schema.read_json(os.path.join(path, "manifest.json"),
                                 schema.obj({"files": schema.map_of(schema.STR)}), fix="")["files"]
      except (OSError, ValueError):
        files = None
      if files is not None and sorted(files) != sorted(_BUFFER_FILES):
        kind = "a SynSet" if "arrays.npz" in files else "an artifact"
        raise ValueError(f"{flag} {path} holds {kind}, not an expert buffer; {fix}")
      # a buffer (or a damaged one, which load_buffer names): read, never replaced here
    elif names:
      raise ValueError(f"{flag} {path} holds {io_lib.listed(names)}, which is not an expert "
                       f"buffer; {fix}, or move them away")
  partial = os.path.normpath(path) + ".partial"
  if not os.path.lexists(partial):
    return
  if os.path.islink(partial) or not os.path.isdir(partial):
    raise ValueError(f"{partial}, where a build of {path} keeps its finished experts, is not a "
                     "folder; move it away or give another folder")
  others = [n for n in sorted(os.listdir(partial)) if not _PARTIAL_ENTRY.match(n)]
  if others:
    raise ValueError(f"{partial}, where a build of {path} keeps its finished experts, holds "
                     f"{io_lib.listed(others)}, which no build wrote; move it away or give "
                     "another folder")


def load_buffer(path: str, spec: dict | None = None) -> tuple[np.ndarray, dict]:
  """Reads and verifies a buffer; with ``spec``, refuses one made under other settings.

  Raises:
    FileNotFoundError: no buffer there.
    ValueError: a file does not match the manifest, or the buffer's spec differs
      from ``spec`` (the message names the parts that differ).
  """
  manifest_path = os.path.join(path, "manifest.json")
  if not os.path.isfile(manifest_path):
    raise FileNotFoundError(f"no expert buffer at {path} (manifest.json missing); build one with "
                            "jaxdd.distill.experts.train_experts and save_buffer")
  damaged = "the buffer is damaged: delete it and rebuild it"
  expected = schema.read_json(manifest_path, schema.obj({"files": schema.map_of(schema.STR)}),
                              fix=damaged)["files"]
  for name in _BUFFER_FILES:
    file = os.path.join(path, name)
    if not os.path.isfile(file) or io_lib.sha256_file(file) != expected.get(name):
      raise ValueError(f"{file} is missing or does not match its sha256 in manifest.json; the "
                       "buffer is damaged, rebuild it")
  meta = schema.read_json(os.path.join(path, "meta.json"),
                          schema.obj({"digest": schema.STR, "shape": schema.list_of(schema.INT)},
                                     optional={"spec": schema.map_of(schema.ANY)}), fix=damaged)
  if spec is not None and meta.get("digest") != spec_digest(spec):
    differ = sorted(k for k in set(spec) | set(meta.get("spec", {}))
                    if spec.get(k) != meta.get("spec", {}).get(k))
    raise ValueError(f"the buffer at {path} was made with other settings ({', '.join(differ)} "
                     "differ) than this run asks for; use a buffer directory of its own or "
                     "rebuild it")
  with np.load(os.path.join(path, "trajectories.npz"), allow_pickle=False) as d:
    traj = d["trajectories"]
  return traj, meta


def build_buffer(path: str, spec: dict, key: jax.Array, images, labels, *, model,
                 num_experts: int, epochs: int, lr: float = 0.01, batch_size: int = 256,
                 augment: str | None = "color_crop_cutout_flip_scale_rotate", weights=None,
                 weighting: str = "sample", progress: bool = False) -> tuple[np.ndarray, dict]:
  """The buffer at ``path`` for ``spec``: loaded when it is there, else built, resumably.

  The experts are trained one at a time (:func:`train_experts` with ``first``)
  and each finished one is written atomically into ``<path>.partial/``, so a
  killed build resumes at the next expert and gives the same buffer as an
  uninterrupted one. When all are done the artifact is written
  (:func:`save_buffer`) and the partial folder removed. A partial folder left
  by other settings is discarded.

  Returns:
    ``(trajectories, meta)`` as :func:`load_buffer`.

  Raises:
    ValueError: ``path`` holds a buffer made with other settings (nothing is
      overwritten; the message names what differs), or anything else
      :func:`check_buffer_dir` refuses.
  """
  check_buffer_dir(path)
  try:
    return load_buffer(path, spec)
  except FileNotFoundError:
    pass
  partial = os.path.normpath(path) + ".partial"
  digest = spec_digest(spec)
  marker = os.path.join(partial, "spec.json")
  if os.path.isdir(partial):
    try:  # an unreadable marker: the partial folder is discarded
      same = schema.read_json(marker, schema.obj({"digest": schema.STR}),
                              fix="")["digest"] == digest
    except (OSError, ValueError):
      same = False
    if not same:
      shutil.rmtree(partial)
  os.makedirs(partial, exist_ok=True)
  io_lib.atomic_write_bytes(marker, json.dumps({"digest": digest, "spec": spec},
                                               sort_keys=True).encode())
  experts = []
  for e in range(num_experts):
    file = os.path.join(partial, f"expert-{e:04d}.npy")
    if os.path.exists(file):
      try:
        experts.append(np.load(file, allow_pickle=False))
        if experts[-1].shape[0] != epochs + 1 or not np.isfinite(experts[-1]).all():
          raise ValueError("wrong shape or values")
        continue
      except (OSError, ValueError):
        experts = experts[:e]  # unreadable: train it again
    traj = train_experts(key, images, labels, model=model, num_experts=1, epochs=epochs, lr=lr,
                         batch_size=batch_size, augment=augment, weights=weights,
                         weighting=weighting, first=e, progress=progress)[0]
    io_lib.atomic_write_bytes(file, lambda f, t=traj: np.save(f, t, allow_pickle=False))
    experts.append(traj)
  save_buffer(path, np.stack(experts), spec)
  shutil.rmtree(partial, ignore_errors=True)
  return load_buffer(path, spec)
