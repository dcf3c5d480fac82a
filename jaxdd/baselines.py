"""Coreset baselines evaluated under the same protocol as distilled sets.

Every results table should answer "does distillation beat the obvious?"
(USERS.md rows 18 and feature 7), so jaxdd ships the standard answers:

* :func:`random_subset`: ``ipc`` random real images per class.
* :func:`herding`: Welling (2009) herding as used for coresets (iCaRL,
  DC-Bench): per class, greedily add the sample that keeps the mean of the
  selected embeddings closest to the class mean.
* :func:`k_center`: greedy farthest-point (k-center) selection per class,
  started from the sample nearest the class mean (a deterministic start; the
  greedy 2-approximation holds from any start).
* :func:`full_dataset`: the whole (biased) training set as a SynSet, the
  upper reference; :func:`jaxdd.evaluate.evaluate_synset` scans over its many steps
  per epoch inside one compiled program.

Data contract. ``images`` are NHWC float32 (normalised space, as for the
synthetic sets); ``labels`` integer class ids in ``[0, num_classes)``;
``embeddings`` are (n, d) features of the same rows (e.g. from the SupCon
surrogate or a trained evaluation network). Selection functions return *row
indices* laid out class by class (``ipc`` per class, class ``c`` owns rows
``c * ipc ... (c + 1) * ipc - 1`` of the result), so the chosen rows can be
cross-checked against bias annotations; :func:`take` turns them into a
:class:`~jaxdd.structs.SynSet`. Selection runs on the host in float64 numpy.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxdd._src import checks
from jaxdd._src import rng as rng_lib
from jaxdd.structs import SynSet


def _labels(labels, n: int | None = None) -> np.ndarray:
  labels = np.asarray(labels)
  if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"labels must be a 1-D integer array, got {labels.dtype} {labels.shape}")
  if n is not None and len(labels) != n:
    raise ValueError(f"labels has {len(labels)} rows but the data has {n}")
  if len(labels) == 0 or labels.min() < 0:
    raise ValueError("labels must be non-empty and non-negative")
  return labels


def _classes(labels: np.ndarray, num_classes: int | None) -> int:
  c = int(labels.max()) + 1 if num_classes is None else num_classes
  if labels.max() >= c:
    raise ValueError(f"labels reach {int(labels.max())} but num_classes={c}")
  return c


def _check_ipc(ipc) -> int:
  if not isinstance(ipc, (int, np.integer)) or isinstance(ipc, bool) or ipc < 1:
    raise ValueError(f"ipc must be a positive int, got {ipc!r}")
  return int(ipc)


def _class_rows(labels: np.ndarray, c: int, ipc: int) -> np.ndarray:
  rows = np.flatnonzero(labels == c)
  if len(rows) < ipc:
    raise ValueError(f"class {c} has only {len(rows)} samples but ipc={ipc}; lower ipc to at "
                     f"most {len(rows)} (or drop the class)")
  return rows


def _embeddings(embeddings, labels) -> tuple[np.ndarray, np.ndarray]:
  emb = np.asarray(embeddings, np.float64)
  if emb.ndim != 2:
    raise ValueError(f"embeddings must be (n, d), got shape {emb.shape}")
  if not np.isfinite(emb).all():
    raise ValueError("embeddings contain NaN or Inf; recompute them")
  return emb, _labels(labels, emb.shape[0])


def take(images, labels, indices) -> SynSet:
  """Gathers selected rows into a :class:`~jaxdd.structs.SynSet`.

  Args:
    images: (n, H, W, C) images.
    labels: (n,) integer labels.
    indices: row indices (e.g. from :func:`herding`).

  Returns:
    ``SynSet(images[indices], labels[indices])`` as jax arrays.

  Example:
    >>> import numpy as np
    >>> s = take(np.zeros((4, 2, 2, 1), np.float32), np.array([0, 1, 0, 1]), np.array([2, 1]))
    >>> s.labels.tolist()
    [0, 1]
  """
  indices = np.asarray(indices)
  return SynSet(jnp.asarray(np.asarray(images)[indices], jnp.float32),
                jnp.asarray(np.asarray(labels)[indices], jnp.int32))


def random_subset(key: jax.Array, images, labels, *, ipc: int,
                  num_classes: int | None = None) -> SynSet:
  """``ipc`` real images per class drawn uniformly without replacement.

  Args:
    key: typed PRNG key (same key -> same subset).
    images: (n, H, W, C) real images.
    labels: (n,) integer labels.
    ipc: images per class.
    num_classes: number of classes (default ``max(labels) + 1``).

  Returns:
    A class-major :class:`~jaxdd.structs.SynSet` of ``num_classes * ipc`` rows.

  Raises:
    ValueError: a class has fewer than ``ipc`` samples (named in the message).

  Example:
    >>> import jax, numpy as np
    >>> s = random_subset(jax.random.key(0), np.zeros((6, 2, 2, 1), np.float32),
    ...                   np.array([0, 1, 0, 1, 0, 1]), ipc=2)
    >>> s.labels.tolist()
    [0, 0, 1, 1]
  """
  return take(images, labels, random_subset_indices(key, labels, ipc=ipc,
                                                    num_classes=num_classes))


def random_subset_indices(key: jax.Array, labels, *, ipc: int,
                          num_classes: int | None = None) -> np.ndarray:
  """Row indices of :func:`random_subset` (class-major, ``ipc`` per class).

  Args:
    key: typed PRNG key.
    labels: (n,) integer labels.
    ipc: rows per class.
    num_classes: default ``max(labels) + 1``.

  Returns:
    (num_classes * ipc,) row indices.

  Example:
    >>> import jax, numpy as np
    >>> idx = random_subset_indices(jax.random.key(0), np.array([0, 1, 0, 1]), ipc=1)
    >>> np.array([0, 1, 0, 1])[idx].tolist()
    [0, 1]
  """
  labels = _labels(labels)
  ipc = _check_ipc(ipc)
  nc = _classes(labels, num_classes)
  rng = rng_lib.numpy_rng(key)
  return np.concatenate([rng.choice(_class_rows(labels, c, ipc), ipc, replace=False)
                         for c in range(nc)])


def herding(embeddings, labels, *, ipc: int, num_classes: int | None = None) -> np.ndarray:
  """Herding (Welling 2009) per class: greedy matching of the class mean.

  Step ``k`` (1-based) adds the unselected sample ``i`` minimising
  ``|| mu - (sum_selected + e_i) / k ||``, where ``mu`` is the class mean of
  the embeddings; so the first pick is the sample nearest the mean.
  Deterministic; ties go to the lowest row.

  Args:
    embeddings: (n, d) embeddings.
    labels: (n,) integer labels.
    ipc: samples per class.
    num_classes: default ``max(labels) + 1``.

  Returns:
    (num_classes * ipc,) row indices, class-major, in selection order.

  Example:
    >>> import numpy as np
    >>> herding(np.array([[0.], [1.], [5.], [2.]]), np.array([0, 0, 0, 0]), ipc=2).tolist()
    [3, 1]
  """
  emb, labels = _embeddings(embeddings, labels)
  ipc = _check_ipc(ipc)
  out = []
  for c in range(_classes(labels, num_classes)):
    rows = _class_rows(labels, c, ipc)
    e = emb[rows]
    mu = e.mean(0)
    total = np.zeros_like(mu)
    free = np.ones(len(rows), bool)
    for k in range(1, ipc + 1):
      dist = np.linalg.norm(mu[None] - (total[None] + e) / k, axis=1)
      dist[~free] = np.inf
      i = int(np.argmin(dist))
      free[i] = False
      total += e[i]
      out.append(rows[i])
  return np.asarray(out, np.int64)


def k_center(embeddings, labels, *, ipc: int, num_classes: int | None = None) -> np.ndarray:
  """Greedy k-center (farthest-point) selection per class.

  Starts from the sample nearest the class mean (deterministic; the reference
  coreset papers start at random or from the mean), then repeatedly adds the
  sample whose distance to its nearest selected sample is largest. Ties go to
  the lowest row.

  Args:
    embeddings: (n, d) embeddings.
    labels: (n,) integer labels.
    ipc: samples per class.
    num_classes: default ``max(labels) + 1``.

  Returns:
    (num_classes * ipc,) row indices, class-major, in selection order.

  Example:
    >>> import numpy as np
    >>> k_center(np.array([[0.], [1.], [2.], [10.]]), np.array([0, 0, 0, 0]), ipc=2).tolist()
    [2, 3]
  """
  emb, labels = _embeddings(embeddings, labels)
  ipc = _check_ipc(ipc)
  out = []
  for c in range(_classes(labels, num_classes)):
    rows = _class_rows(labels, c, ipc)
    e = emb[rows]
    first = int(np.argmin(np.linalg.norm(e - e.mean(0), axis=1)))
    chosen = [first]
    nearest = np.linalg.norm(e - e[first], axis=1)
    for _ in range(ipc - 1):
      # Selected points have distance 0, so they are never picked again
      # unless every remaining point duplicates one (then any is fine).
      masked = nearest.copy()
      masked[chosen] = -np.inf
      i = int(np.argmax(masked))
      chosen.append(i)
      nearest = np.minimum(nearest, np.linalg.norm(e - e[i], axis=1))
    out.extend(rows[chosen])
  return np.asarray(out, np.int64)


def full_dataset(images, labels) -> SynSet:
  """The whole training set as a SynSet (the upper reference).

  Rows are stably sorted by class, so the class-major layout holds, but class
  sizes differ (no fixed ipc). Train it with :func:`jaxdd.evaluate.evaluate_synset`
  like any synthetic set; each epoch is a ``lax.scan`` over ``n // 256`` full
  batches plus the partial one, so N >> batch costs no Python loop. Its
  protocol is usually ``"cpu"`` or a ``Protocol`` with fewer epochs, because
  one epoch over N images is N / (ipc * classes) times a synthetic epoch.

  Args:
    images: (n, H, W, C) images.
    labels: (n,) integer labels.

  Returns:
    A :class:`~jaxdd.structs.SynSet` of all n rows.

  Example:
    >>> import numpy as np
    >>> full_dataset(np.zeros((3, 2, 2, 1), np.float32), np.array([1, 0, 1])).labels.tolist()
    [0, 1, 1]
  """
  images = np.asarray(images)
  checks.check_images(images, "full_dataset", floating=False, finite=False)
  labels = _labels(labels, images.shape[0])
  return take(images, labels, np.argsort(labels, kind="stable"))
