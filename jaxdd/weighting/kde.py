"""The normalised inverse-density weights of real samples, and their settings.

Data contract:

* :func:`weights` returns ``(n,)`` float weights that sum to 1 within every
  group that has at least one unmasked row; masked rows get weight exactly 0.
  Weights are never NaN or Inf for finite embeddings and any finite ``v > 0``,
  ``T > 0``. Its knobs default to :class:`KDEConfig`'s (``weights(z)`` is
  ``weights(z, config=KDEConfig())``).
* Every check runs on concrete values (inside ``jax.jit`` too, for values closed
  over). A traced ``v`` or ``T`` cannot be checked: one that is not a finite
  number > 0 gives NaN weights on every unmasked row, by design
  (:func:`jaxdd.weighting.kernel.positive_or_nan`).
* The densities are those of :mod:`jaxdd.weighting.density` (the unnormalised
  mean Gaussian kernel value, self included).

Weights (docs/protocols.md §1). With ``f_i`` the mean kernel value over the group of ``i``
(self included) and temperature ``T``:

* ``normalize='softmax'``: ``w = softmax((1/f) / T)`` within the group (the
  paper's "normalized inverse with normalization temperature").
* ``normalize='power'``: ``w = f^(-1/T) / sum f^(-1/T) = softmax(-log f / T)``.

Both are computed from ``log f``, see :func:`weights_from_log_density` for the
overflow-free formulation of the softmax case. :func:`batch_weights` and
:func:`class_weights` are the weights a distillation step applies: over each
sampled real batch, or over every whole class.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from jaxdd._src import checks
from jaxdd._src.checks import is_traced
from jaxdd.weighting import kernel

__all__ = [
    "KDEConfig",
    "SCOPES",
    "batch_weights",
    "class_weights",
    "weights",
    "weights_from_log_density",
]

Normalize = Literal["softmax", "power"]
_NORMALIZE = ("softmax", "power")
SCOPES = ("batch", "class")


@jax.tree_util.register_pytree_node_class
@dataclasses.dataclass(frozen=True)
class KDEConfig:
  """How real samples are weighted (Cui et al. 2024; docs/protocols.md §1).

  Validated when it is built, in Python, so the traced code that uses it
  (``distill``'s steps) needs no checks of its own.

  Attributes:
    variance: kernel variance ``v > 0``.
    temperature: normalisation temperature ``T > 0``.
    normalize: ``'power'`` (``w ∝ f^(-1/T)``) or ``'softmax'`` (``softmax((1/f)/T)``).
    scope: ``'batch'`` (the paper's: the density inside each sampled real
      batch of a class, O(B^2 d) per step) or ``'class'`` (a density
      precomputed once over the whole class,
      :func:`jaxdd.weighting.class_log_density`).

  The defaults were kept by the validation-only selection on CMNIST 5 %
  (``jaxdd tune``, docs/protocols.md §7).

  A pytree: ``variance`` and ``temperature`` are its leaves, ``normalize`` and ``scope``
  static. A config passes through ``jax.jit`` as an argument (a new value does not
  recompile), and configs stacked leaf by leaf ``vmap`` over their knobs::

    jax.jit(lambda z, c: weights(z, config=c))(z, KDEConfig(variance=0.02))
    many = jax.tree.map(lambda *v: jnp.stack(v), KDEConfig(), KDEConfig(variance=0.02))
    jax.vmap(lambda c: weights(z, config=c))(many)   # (2, n)

  Only a config built in Python is validated; one rebuilt from leaves (inside a
  transformation, or stacked) is not: a traced invalid knob gives NaN weights
  (:func:`weights`).

  Example:
    >>> KDEConfig(temperature=1.0).normalize
    'power'
    >>> KDEConfig(variance=0.0)
    Traceback (most recent call last):
    ...
    ValueError: KDEConfig.variance (the kernel variance) must be a finite number > 0, e.g. 0.01; got 0.0
  """
  variance: float = 0.01
  temperature: float = 0.25
  normalize: Normalize = "power"
  scope: Literal["batch", "class"] = "batch"

  def __post_init__(self):
    variance, temperature = _check_knobs(self.variance, self.temperature, self.normalize,
                                        prefix="KDEConfig.")
    object.__setattr__(self, "variance", variance)
    object.__setattr__(self, "temperature", temperature)
    if self.scope not in SCOPES:
      raise ValueError(f"KDEConfig.scope must be one of {list(SCOPES)}, got {self.scope!r}")

  def replace(self, **changes) -> "KDEConfig":
    """A validated copy with some fields changed."""
    return dataclasses.replace(self, **changes)

  def tree_flatten(self):
    """The knobs as leaves, ``normalize`` and ``scope`` as static data."""
    return (self.variance, self.temperature), (self.normalize, self.scope)

  @classmethod
  def tree_unflatten(cls, aux, children) -> "KDEConfig":
    """A config of these leaves (tracers, arrays), not validated: see the class."""
    out = object.__new__(cls)
    for name, value in zip(("variance", "temperature", "normalize", "scope"),
                           (*children, *aux)):
      object.__setattr__(out, name, value)
    return out


# --------------------------------------------------------------------------
# Checks of kde's own arguments (on concrete values only: inside jit they are skipped).
# --------------------------------------------------------------------------

#: The explicit example of a valid value that each knob's message gives.
_EXAMPLES = {"variance": 0.01, "temperature": 0.25}
_WHAT = {"variance": "the kernel variance", "temperature": "the normalisation temperature"}


def _check_positive_knob(name: str, value, *, what: str, example: float) -> float:
  """``value`` as a float if it is a finite real number > 0, else a ValueError naming ``name``.

  For Python (host) numbers, e.g. a :class:`KDEConfig` field or an argument of the
  host-side :mod:`jaxdd.weighting.scopes` functions; arrays go through
  :func:`jaxdd._src.checks.check_positive_scalar`.
  """
  if (isinstance(value, bool) or not isinstance(value, numbers.Real)
      or not math.isfinite(value) or value <= 0):
    raise ValueError(f"{name} ({what}) must be a finite number > 0, e.g. {example}; "
                     f"got {value!r}")
  return float(value)


def _check_knobs(variance, temperature, normalize, *, prefix: str = "") -> tuple[float, float]:
  """Checks the weighting's knobs as Python numbers; returns ``(variance, temperature)``.

  Messages name each knob ``prefix + name`` (``'KDEConfig.variance'`` for the config's
  fields, ``'variance'`` for a function's argument).
  """
  out = tuple(_check_positive_knob(prefix + name, value, what=_WHAT[name],
                                  example=_EXAMPLES[name])
              for name, value in (("variance", variance), ("temperature", temperature)))
  if normalize not in _NORMALIZE:
    raise ValueError(f"{prefix}normalize must be one of {list(_NORMALIZE)}, got {normalize!r}")
  return out


def _check_normalize(normalize: str) -> None:
  if normalize not in _NORMALIZE:
    raise ValueError(
        f"unknown normalize={normalize!r}; use one of {_NORMALIZE}")


#: ``weights``' knobs when neither ``config`` nor the knob is given: KDEConfig's defaults.
_DEFAULTS = KDEConfig()


def _resolve_knobs(config, variance, temperature, normalize):
  """``(variance, temperature, normalize)`` of :func:`weights`: from ``config``, or the
  explicit knobs with :data:`_DEFAULTS` for those left at None; never both."""
  if config is None:
    return (_DEFAULTS.variance if variance is None else variance,
            _DEFAULTS.temperature if temperature is None else temperature,
            _DEFAULTS.normalize if normalize is None else normalize)
  if not isinstance(config, KDEConfig):
    raise ValueError(f"config must be a jaxdd.weighting.KDEConfig or None, got "
                     f"{type(config).__name__}")
  given = [name for name, value in (("variance", variance), ("temperature", temperature),
                                    ("normalize", normalize)) if value is not None]
  if given:
    raise ValueError(
        f"weights got config and {', '.join(n + '=' for n in given)}; pass one or the other, "
        f"not both (config already sets variance, temperature and normalize: for other "
        f"values pass config=config.replace({given[0]}=...))")
  return config.variance, config.temperature, config.normalize


def _as_groups(groups, num_groups, n: int) -> tuple[jax.Array, int]:
  """Checks group labels; infers ``num_groups`` when the labels are concrete."""
  groups = jnp.asarray(groups)
  if groups.shape != (n,):
    raise ValueError(
        f"groups must have shape ({n},) to match the rows, got {groups.shape}")
  if not jnp.issubdtype(groups.dtype, jnp.integer):
    raise ValueError(f"groups must be integer labels, got {groups.dtype}")
  if num_groups is None:
    if is_traced(groups):
      raise ValueError(
          "num_groups is required when groups are traced (inside jit); pass "
          "num_groups=<number of classes> as a static int")
    num_groups = int(checks.host_eval(jnp.max, groups)) + 1 if n else 1
  if isinstance(num_groups, bool) or not isinstance(
      num_groups, (int, np.integer)) or num_groups < 1:
    raise ValueError(f"num_groups must be a positive int, got {num_groups!r}")
  if not is_traced(groups) and n:
    lo, hi = checks.host_eval(lambda g: (jnp.min(g), jnp.max(g)), groups)
    if lo < 0 or hi >= num_groups:
      raise ValueError(
          f"group labels must lie in [0, {num_groups}), got [{lo}, {hi}]; "
          "relabel them or raise num_groups")
  return groups.astype(jnp.int32), int(num_groups)


# --------------------------------------------------------------------------
# Weights
# --------------------------------------------------------------------------

def _prepare_weight_args(n, temperature, normalize, groups, num_groups, mask,
                         dtype):
  _check_normalize(normalize)
  checks.check_positive_scalar("temperature", temperature, "pass temperature > 0")
  if groups is not None:
    groups, num_groups = _as_groups(groups, num_groups, n)
  elif num_groups is not None and num_groups != 1:
    raise ValueError(f"num_groups={num_groups} given without groups; pass "
                     "groups=<labels> or drop num_groups")
  if mask is None:
    mask = jnp.ones((n,), jnp.bool_)
  else:
    mask = checks.as_mask("mask", mask, n)
  temperature = jnp.asarray(temperature, dtype)
  return temperature, groups, (num_groups if groups is not None else None), \
      mask


def _check_singletons(groups, num_groups, mask) -> None:
  if is_traced(mask) or (groups is not None and is_traced(groups)):
    return
  m = np.asarray(jax.device_get(mask))
  g = np.zeros(m.shape, np.int64) if groups is None else np.asarray(
      jax.device_get(groups))
  counts = np.bincount(g[m], minlength=num_groups or 1)
  single = np.flatnonzero(counts == 1)
  if single.size:
    raise ValueError(
        f"group(s) {single.tolist()} have a single sample: its density is "
        "just K(z, z) = 1 and its weight trivially 1. Use more samples per "
        "class/batch, or pass validate=False to accept weight 1.0")


def weights_from_log_density(
    log_f: jax.Array,
    *,
    temperature: float | jax.Array = 0.25,
    normalize: Normalize = "power",
    groups: jax.Array | None = None,
    num_groups: int | None = None,
    mask: jax.Array | None = None,
) -> jax.Array:
  """Normalised inverse-density weights from precomputed log-densities.

  For callers that already hold ``log f`` (the per-class ``scope='class'``
  precomputation, or :func:`log_density` on padded class arrays).

  ``softmax``: ``w = softmax((1/f) / T)`` per group, evaluated without forming
  ``1/f`` (which overflows float32 for isolated points at small variances):
  the softmax only needs differences to the group maximum, and
  ``exp(u_i)/T - exp(M)/T = -exp(M - log T + log(1 - exp(u_i - M)))`` with
  ``u = -log f``, ``M = max u``, which is finite or -inf (weight 0) for every
  finite input. ``power``: ``w = f^(-1/T) / sum f^(-1/T) = softmax(-log f / T)``.

  Args:
    log_f: (n,) log-densities.
    temperature: ``T > 0``.
    normalize: ``'softmax'`` or ``'power'``.
    groups: optional (n,) int labels in ``[0, num_groups)``; weights sum to 1
      within each group. None means one group.
    num_groups: number of groups; must be given (static int) under jit,
      inferred as ``max(groups) + 1`` for concrete labels.
    mask: optional (n,) bool; False rows get weight 0 and do not take part in
      any normalisation.

  Returns:
    (n,) weights, >= 0, summing to 1 over the unmasked rows of every non-empty
    group. Ties share equally; if some ``exp(...)`` overflows, the densest-
    inverse row(s) take all the weight (the exact limit in float arithmetic).

  Checks under ``jax.jit``: they run on concrete values only. A traced
  ``temperature`` that is not a finite number > 0 gives NaN on every unmasked
  row (masked rows stay 0) instead of plausible-looking weights.

  Raises:
    ValueError: NaN in ``log_f``, wrong shapes, ``temperature <= 0``, unknown
      ``normalize``, labels outside ``[0, num_groups)``.

  Example:
    >>> weights_from_log_density(jnp.log(jnp.array([0.5, 0.25, 0.25])),
    ...                          temperature=1.0)  # ∝ 1/f
    Array([0.2, 0.4, 0.4], dtype=float32)
    >>> weights_from_log_density(jnp.log(jnp.array([0.5, 0.25, 0.25])))  # KDEConfig's ∝ f^-4
    Array([0.03030303, 0.4848485 , 0.4848485 ], dtype=float32)
  """
  log_f = jnp.asarray(log_f)
  if log_f.ndim != 1:
    raise ValueError(f"log_f must have shape (n,), got {log_f.shape}")
  if not jnp.issubdtype(log_f.dtype, jnp.floating):
    raise ValueError(f"log_f must be floating point, got {log_f.dtype}")
  log_f = log_f.astype(checks.compute_dtype(log_f))
  if not is_traced(log_f) and bool(
      checks.host_eval(lambda a: jnp.any(jnp.isnan(a)), log_f)):
    raise ValueError("log_f contains NaN; check the embeddings and variance")
  n = log_f.shape[0]
  temperature, groups, num_groups, mask = _prepare_weight_args(
      n, temperature, normalize, groups, num_groups, mask, log_f.dtype)
  if n == 0:
    return jnp.zeros((0,), log_f.dtype)
  return kernel.weights_core(log_f, temperature, groups, mask, normalize=normalize,
                       num_groups=num_groups)


def weights(
    embeddings: jax.Array,
    *,
    variance: float | jax.Array | None = None,
    temperature: float | jax.Array | None = None,
    normalize: Normalize | None = None,
    groups: jax.Array | None = None,
    num_groups: int | None = None,
    mask: jax.Array | None = None,
    block_size: int = 1024,
    validate: bool = False,
    config: KDEConfig | None = None,
) -> jax.Array:
  """Bias-aware sample weights: normalised inverse KDE density per group.

  ``f_i = mean_j K(z_i, z_j)`` over the unmasked rows ``j`` of the group of
  ``i`` (self included, docs/protocols.md §1), then ``w = N_T(1/f)`` within the group, see
  :func:`weights_from_log_density`. Rare (isolated) samples get large weights,
  dense clusters small ones.

  The density is evaluated with the blocked kernel over all ``n x n`` pairs
  with a same-group mask, i.e. O(n^2 d) work: right for one sampled batch
  (``scope='batch'``, n ~ 256 per class, or a few classes at once). For
  ``scope='class'`` on large classes, call :func:`log_density` per class (with
  ``support_mask`` for padded arrays) and then :func:`weights_from_log_density`.

  The knobs come either from ``config`` (a :class:`KDEConfig`) or from
  ``variance``, ``temperature`` and ``normalize``; a knob left at None takes
  :class:`KDEConfig`'s default, so ``weights(z)`` equals
  ``weights(z, config=KDEConfig())`` (power normalisation, ``T = 0.25``,
  ``v = 0.01``).

  A group with a single (unmasked) sample has ``f = 1`` and gets weight 1.0.
  That is well defined but carries no information; ``validate=True`` rejects
  it instead.

  The weights are meant to be used as constants (the method never
  differentiates through them); gradients through the masked/overflow
  branches are not guaranteed finite, so wrap the result in
  ``jax.lax.stop_gradient`` if it sits inside a differentiated function.

  Checks under ``jax.jit``: every check runs on concrete values, including
  Python numbers and arrays closed over by a jitted function. A ``variance``
  or ``temperature`` that is itself traced (an argument of the jitted
  function) cannot be checked; if it is not a finite number > 0, every
  unmasked weight is NaN (masked rows stay 0) instead of plausible-looking
  numbers. Check such a value on the host first, e.g. with
  ``KDEConfig(variance=v, temperature=t)``.

  Args:
    embeddings: (n, d) float embeddings.
    variance: kernel variance ``v > 0``; None: 0.01 (:class:`KDEConfig`'s).
    temperature: normalisation temperature ``T > 0``; None: 0.25.
    normalize: ``'power'`` or ``'softmax'``; None: ``'power'``.
    groups: optional (n,) int labels in ``[0, num_groups)`` (e.g. class
      labels); None means one group.
    num_groups: static number of groups; required under jit when ``groups``
      is given, otherwise inferred.
    mask: optional (n,) bool; False rows (padding) get weight 0 and are left
      out of every density and normalisation.
    block_size: tile size of the blocked kernel.
    validate: also raise ``ValueError`` for groups with exactly one unmasked
      sample (checked on concrete inputs only). Basic checks (NaN, shapes,
      ranges) always run on concrete inputs.
    config: the knobs as a :class:`KDEConfig` (its ``variance``,
      ``temperature`` and ``normalize``; its ``scope`` is not used: the
      density is over the rows given). Exclusive with the three knobs.

  Returns:
    (n,) float weights; each non-empty group sums to 1, masked rows are 0.
    Never NaN or Inf for finite embeddings and valid knobs (a traced invalid
    ``variance`` or ``temperature`` gives NaN, see above).

  Raises:
    ValueError: NaN/Inf embeddings ("check the surrogate"), wrong shapes or
      lengths, ``variance <= 0``, ``temperature <= 0``, unknown
      ``normalize``, bad labels, ``config`` together with an explicit knob,
      or (``validate=True``) singleton groups.

  Example:
    >>> z = jax.random.normal(jax.random.key(0), (8, 4))
    >>> w = weights(z, variance=0.1, groups=jnp.array([0, 0, 0, 0, 1, 1, 1, 1]))
    >>> w.shape
    (8,)
    >>> bool(jnp.array_equal(weights(z), weights(z, config=KDEConfig())))
    True
    >>> weights(z, variance=0.0)
    Traceback (most recent call last):
    ...
    ValueError: variance must be a finite number > 0, got 0.0; pass e.g. variance=0.01
    >>> jax.jit(lambda z, v: weights(z, variance=v))(z, 0.0)[:3]  # traced: unchecked, NaN
    Array([nan, nan, nan], dtype=float32)
  """
  embeddings = checks.as_rows("embeddings", embeddings)
  n = embeddings.shape[0]
  checks.check_finite("embeddings", embeddings,
                "check the surrogate (a diverged SupCon run gives NaN)")
  variance, temperature, normalize = _resolve_knobs(config, variance, temperature, normalize)
  checks.check_positive_scalar("variance", variance, "pass e.g. variance=0.01")
  block = checks.check_positive_int("block_size", block_size)
  dtype = embeddings.dtype
  temperature, groups, num_groups, mask = _prepare_weight_args(
      n, temperature, normalize, groups, num_groups, mask, dtype)
  if validate:
    _check_singletons(groups, num_groups, mask)
  if n == 0:
    return jnp.zeros((0,), dtype)
  variance = jnp.asarray(variance, dtype)
  log_f = kernel.group_log_density_core(embeddings, variance, groups, mask,
                                  num_groups=num_groups, block_q=block,
                                  block_n=block)
  return kernel.weights_core(log_f, temperature, groups, mask, normalize=normalize,
                       num_groups=num_groups)



# --------------------------------------------------------------------------
# The weights a distillation step applies
# --------------------------------------------------------------------------

def batch_weights(rows: jax.Array, mask: jax.Array, config: KDEConfig | None, *,
                  embeddings: jax.Array | None = None,
                  log_density: jax.Array | None = None) -> jax.Array:
  """(C, B) weights of a sampled batch: uniform over valid rows, or KDE-based (jittable).

  Args:
    rows: (C, B) dataset rows of the batch, one row of the array per class.
    mask: (C, B) validity mask.
    config: None (uniform weights over the valid rows) or the weighting (a
      :class:`KDEConfig`, or an object with its fields whose ``variance`` and
      ``temperature`` may be traced values, as a distiller's step passes): scope
      ``'batch'`` weighs each class's rows by their density inside the batch
      (:func:`weights` on ``embeddings[rows]``), scope ``'class'`` by their
      precomputed whole-class density (``log_density[rows]``).
    embeddings: (N, d) surrogate embeddings of the whole dataset (scope 'batch').
    log_density: (N,) whole-class log densities (scope 'class').

  Returns:
    (C, B) weights, each row summing to 1 over its valid entries.

  Example:
    >>> batch_weights(jnp.array([[0, 1, 2]]), jnp.array([[True, True, False]]), None)
    Array([[0.5, 0.5, 0. ]], dtype=float32)
  """
  if config is None:
    uniform = mask.astype(jnp.float32)
    return uniform / uniform.sum(axis=1, keepdims=True)
  if config.scope == "batch":
    if embeddings is None:
      raise ValueError("KDE scope 'batch' needs the surrogate embeddings: pass embeddings= "
                       "(through jaxdd.distill: real_data(..., embeddings=...))")
    emb = embeddings[rows]
    # the knobs one by one: a step passes them as traced values (its hyperparameters)
    return jax.vmap(lambda e, m: weights(e, variance=config.variance,
                                         temperature=config.temperature,
                                         normalize=config.normalize, mask=m))(emb, mask)
  if config.scope == "class":
    if log_density is None:
      raise ValueError("KDE scope 'class' needs the whole-class log densities: pass log_density= "
                       "(see class_log_density; through jaxdd.distill: "
                       "real_data(..., log_density=...))")
    log_f = log_density[rows]
    return jax.vmap(lambda lf, m: weights_from_log_density(
        lf, temperature=config.temperature, normalize=config.normalize, mask=m))(log_f, mask)
  raise ValueError(f"unknown KDE scope {config.scope!r}; use 'batch' or 'class'")


def class_weights(log_density: jax.Array | None, indices: jax.Array, counts: jax.Array,
                  config: KDEConfig) -> jax.Array:
  """(C, M) weights of every row of each class over the WHOLE class (padding gets 0).

  From the per-class log densities (:func:`jaxdd.weighting.class_log_density`),
  normalised with ``config``'s temperature and normalisation, whatever its
  scope: this is the distribution that ``init='weighted'`` and
  ``real_sampling='weighted'`` draw from. Each row sums to 1.

  Args:
    log_density: (N,) whole-class log densities.
    indices: (C, M) dataset rows of each class, padded.
    counts: (C,) number of valid rows of each class.
    config: the weighting (its temperature and normalisation).

  Example:
    >>> w = class_weights(jnp.log(jnp.array([0.5, 0.25, 1.0])), jnp.array([[0, 1], [2, 0]]),
    ...                   jnp.array([2, 1]), KDEConfig(temperature=1.0))
    >>> [[round(float(v), 4) for v in r] for r in w]
    [[0.3333, 0.6667], [1.0, 0.0]]
  """
  if log_density is None:
    raise ValueError("weighted initialisation or sampling needs the whole-class log densities, "
                     "but log_density is None: pass them (see class_log_density; through "
                     "jaxdd.distill: real_data(..., log_density=...))")
  valid = jnp.arange(indices.shape[1])[None, :] < counts[:, None]
  log_f = jnp.asarray(log_density)[indices]
  return jax.vmap(lambda lf, m: weights_from_log_density(
      lf, temperature=config.temperature, normalize=config.normalize, mask=m))(log_f, valid)
