"""Combinators of random augmentations and the reference's DSA strategy strings
(:func:`dsa`: one family per call, picked with ``lax.switch`` inside the compiled program).
"""
from __future__ import annotations

import dataclasses

import jax
from jax import lax

from jaxdd.augment.families import (DEFAULT_STRATEGY, FAMILIES, AugmentFn, DSAParams, _validate,
                                    color, crop, cutout, flip, rotate, scale)
from jaxdd.augment.ops import _check_images, one_image_too


# ---------------------------------------------------------------------------
# Combinators
# ---------------------------------------------------------------------------


#: The reference DSA parameters (an immutable NamedTuple, shared as the default).
DEFAULT_PARAMS = DSAParams()

@one_image_too
def identity(key: jax.Array, images: jax.Array) -> jax.Array:
  """The no-op augmentation (strategy ``''`` / ``'none'``).

  Args:
    key: PRNG key (unused).
    images: any batch.

  Returns:
    ``images`` unchanged.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> identity(jax.random.key(0), jnp.ones((1, 2, 2, 1))).shape
    (1, 2, 2, 1)
  """
  del key
  return images


def chain(*augs: AugmentFn) -> AugmentFn:
  """Applies ``augs`` in order, the i-th with ``jax.random.split(key, len(augs))[i]``.

  Args:
    *augs: augmentations ``fn(key, images)``; none gives :func:`identity`.

  Returns:
    The composed augmentation (siamese if every part is).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> aug = chain(crop, flip)
    >>> aug(jax.random.key(0), jnp.ones((2, 8, 8, 3))).shape
    (2, 8, 8, 3)
  """
  augs = tuple(augs)
  if not augs:
    return identity

  def fn(key: jax.Array, images: jax.Array) -> jax.Array:
    for aug, k in zip(augs, jax.random.split(key, len(augs))):
      images = aug(k, images)
    return images

  return fn


def choose(*augs: AugmentFn) -> AugmentFn:
  """Applies ONE of ``augs``, picked uniformly per call (the reference's mode 'S').

  ``k_choice, k_apply = jax.random.split(key)``; the index is
  ``randint(k_choice, (), 0, len(augs))`` and the branch runs through
  ``lax.switch``, so the choice is jittable (no Python branch on a traced value).
  Under ``vmap`` with batched keys, ``lax.switch`` evaluates every branch and
  selects, which is correct but costs all branches.

  Args:
    *augs: at least one augmentation ``fn(key, images)``.

  Returns:
    The choosing augmentation.

  Raises:
    ValueError: no augmentation given.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> aug = choose(crop, cutout)
    >>> aug(jax.random.key(0), jnp.ones((2, 8, 8, 3))).shape
    (2, 8, 8, 3)
  """
  augs = tuple(augs)
  if not augs:
    raise ValueError("choose() needs at least one augmentation; use identity for none")
  if len(augs) == 1:
    only = augs[0]
    return lambda key, images: only(jax.random.split(key)[1], images)

  def fn(key: jax.Array, images: jax.Array) -> jax.Array:
    k_choice, k_apply = jax.random.split(key)
    index = jax.random.randint(k_choice, (), 0, len(augs))
    return lax.switch(index, augs, k_apply, images)

  return fn


def per_sample(aug: AugmentFn) -> AugmentFn:
  """Turns a batch-wide augmentation into one with per-image parameters.

  ``fn(key, images)`` applies ``aug`` to image i with
  ``jax.random.split(key, N)[i]`` (vmap), i.e. the reference's non-siamese
  mode.

  Args:
    aug: an augmentation ``fn(key, images)`` on NHWC batches.

  Returns:
    The per-image augmentation.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> per_sample(crop)(jax.random.key(0), jnp.ones((3, 8, 8, 1))).shape
    (3, 8, 8, 1)
  """

  def fn(key: jax.Array, images: jax.Array) -> jax.Array:
    _check_images(images, "per_sample augmentation")
    keys = jax.random.split(key, images.shape[0])
    return jax.vmap(lambda k, x: aug(k, x[None])[0])(keys, images)

  return fn


# ---------------------------------------------------------------------------
# DSA strategies
# ---------------------------------------------------------------------------


def parse_strategy(strategy: str) -> tuple[str, ...]:
  """Splits a reference strategy string into its families.

  Args:
    strategy: e.g. ``"color_crop_cutout_flip_scale_rotate"``; ``""``,
      ``"none"`` and ``"None"`` mean no augmentation.

  Returns:
    The families in order, e.g. ``("color", "crop")``; ``()`` for none.

  Raises:
    ValueError: an unknown or empty family name.

  Example:
    >>> parse_strategy("color_crop")
    ('color', 'crop')
  """
  if not isinstance(strategy, str):
    raise ValueError(f"strategy must be a string such as {DEFAULT_STRATEGY!r}, got {strategy!r}")
  if strategy.strip().lower() in ("", "none"):
    return ()
  families = tuple(strategy.strip().split("_"))
  for fam in families:
    if fam not in FAMILIES:
      raise ValueError(f"unknown DSA family {fam!r} in strategy {strategy!r}; families are "
                       f"{', '.join(FAMILIES)} joined by '_' (e.g. {DEFAULT_STRATEGY!r}), "
                       "or 'none'")
  return families


def family(name: str, *, params: DSAParams = DEFAULT_PARAMS) -> AugmentFn:
  """The siamese augmentation of one DSA family with the given parameters.

  Args:
    name: one of ``FAMILIES``.
    params: the DSA parameters.

  Returns:
    ``fn(key, images)``.

  Raises:
    ValueError: unknown family or out-of-range parameters.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> family("crop")(jax.random.key(0), jnp.ones((2, 8, 8, 3))).shape
    (2, 8, 8, 3)
  """
  _validate(params)
  p = params
  fns = {
      "color": lambda k, x: color(k, x, brightness=p.brightness, saturation=p.saturation,
                                  contrast=p.contrast),
      "crop": lambda k, x: crop(k, x, ratio=p.ratio_crop_pad),
      "cutout": lambda k, x: cutout(k, x, ratio=p.ratio_cutout),
      "flip": lambda k, x: flip(k, x, prob=p.prob_flip),
      "scale": lambda k, x: scale(k, x, ratio=p.ratio_scale),
      "rotate": lambda k, x: rotate(k, x, degrees=p.ratio_rotate),
  }
  if name not in fns:
    raise ValueError(f"unknown DSA family {name!r}; use one of {', '.join(FAMILIES)}")
  return fns[name]


def dsa(strategy: str = DEFAULT_STRATEGY, *, siamese: bool = True,
        params: DSAParams = DEFAULT_PARAMS, mode: str = "one") -> AugmentFn:
  """The DSA augmentation of a reference strategy string.

  ``fn(key, images)`` first splits ``k_choice, k_apply = jax.random.split(key)``.
  In ``mode="one"`` (the reference's 'S', its default) it draws ONE family with
  ``randint(k_choice, (), 0, n_families)`` and runs it through ``lax.switch``
  with ``k_apply``; with a single family it runs that family with ``k_apply``.
  In ``mode="all"`` (the reference's 'M') it applies every family in order,
  ``chain``-style, with subkeys of ``k_apply``.

  - ``siamese=True`` (DSA distillation): one parameter set for the whole batch,
    so calling ``fn`` with the same key on the real and the synthetic images of
    a class applies the identical transform to both. Use one key per (class,
    step), e.g. ``jax.random.fold_in(k_aug, c)``.
  - ``siamese=False`` (network training: the DSA inner loop and evaluation):
    still one family per batch, but per-image parameters, drawn with
    ``jax.random.split(k_apply, N)`` under ``vmap``.

  Args:
    strategy: families joined by '_' (see :func:`parse_strategy`); 'color'
      means brightness -> saturation -> contrast. ``''``/``'none'`` gives
      :func:`identity`.
    siamese: batch-wide (True) or per-image (False) parameters.
    params: :class:`DSAParams` (reference defaults).
    mode: ``"one"`` (pick one family per call) or ``"all"``.

  Returns:
    A jittable ``fn(key, images) -> images``, a :class:`DSA` (:func:`identity` for no
    family). Equal arguments give equal augmentations (compared by value), so distillers
    built from the same strategy share their compiled programs.

  Raises:
    ValueError: unknown family, bad mode or out-of-range parameters.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> aug = jax.jit(dsa("color_crop_cutout_flip_scale_rotate"))
    >>> k = jax.random.key(0)
    >>> real, syn = jnp.ones((256, 8, 8, 3)), jnp.ones((10, 8, 8, 3))
    >>> bool(jnp.allclose(aug(k, real)[:10], aug(k, syn)))
    True
  """
  families = parse_strategy(strategy)
  _validate(params)
  if mode not in ("one", "all"):
    raise ValueError(f"mode must be 'one' (reference 'S') or 'all' (reference 'M'), got {mode!r}")
  if not families:
    return identity
  return DSA(strategy, bool(siamese), params, mode)


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class DSA:
  """A DSA augmentation (build it with :func:`dsa`, which checks the arguments).

  A value: two equal ones compare and hash equal, so compiled programs keyed on
  an augmentation are shared between them; a static pytree, so it also passes through
  ``jax.jit`` as an argument. Calling it composes the families of
  ``strategy`` (at trace time under ``jit``) and applies them.
  """
  strategy: str
  siamese: bool
  params: DSAParams
  mode: str

  @one_image_too
  def __call__(self, key: jax.Array, images: jax.Array) -> jax.Array:
    branches = [family(name, params=self.params) for name in parse_strategy(self.strategy)]
    if not self.siamese:
      branches = [per_sample(b) for b in branches]
    if self.mode == "all":
      return chain(*branches)(jax.random.split(key)[1], images)
    return choose(*branches)(key, images)


def per_image(aug: AugmentFn | None) -> AugmentFn | None:
  """The per-image (non-siamese) counterpart of an augmentation, for training networks.

  A DSA augmentation (:func:`dsa`) becomes ``dsa(strategy, siamese=False)`` with
  the same parameters and mode (one family per batch, per-image parameters, as
  the reference's network training); any other callable ``f(key, images)`` is
  applied image by image with its own key (:func:`per_sample`); None stays None.

  Example:
    >>> per_image(dsa("crop_flip")) == dsa("crop_flip", siamese=False)
    True
  """
  if aug is None:
    return None
  if isinstance(aug, DSA):
    return dataclasses.replace(aug, siamese=False)
  return per_sample(aug)
