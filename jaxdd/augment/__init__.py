"""Differentiable Siamese Augmentation (DSA) as pure functions on NHWC batches.

Data contract: ``images`` is a float (N, H, W, C) batch (or one (H, W, C) image, which every
augmentation takes as a batch of one and returns as an image, as dm-pix does), usually in the
*normalised* space of the dataset (docs/protocols.md), so "fill with 0"
means "fill with the mean colour". Outputs have the input's shape and dtype and
are never clipped, so ops can be chained. Every op is differentiable with
respect to ``images``; the augmentation parameters are not differentiated.

Two kinds of function (the dm-pix pattern):

- deterministic ops take the parameter explicitly:
  :func:`brightness_with`, :func:`saturation_with`, :func:`contrast_with`,
  :func:`translate`, :func:`cutout_with`, :func:`flip_with`,
  :func:`scale_with`, :func:`rotate_with`, :func:`affine`
  (:func:`affine_grid` + :func:`grid_sample`);
- random ops ``f(key, images, *, <option>=reference default)`` draw their
  parameters ONCE per call, with shape ``()``, and then call the deterministic
  op: :func:`brightness`, :func:`saturation`, :func:`contrast`, :func:`color`,
  :func:`crop`, :func:`cutout`, :func:`flip`, :func:`scale`, :func:`rotate`.

Because the parameters do not depend on the batch size, **the same key gives
the same transform** to a real batch of 256 and a synthetic batch of 10: this is
DSA's siamese mode (docs/protocols.md), without the reference's
wall-clock seeds and ``latestseed`` counter. For per-image parameters (the
reference's non-siamese mode, used when training networks) vmap over per-image
keys: ``jax.vmap(lambda k, x: op(k, x[None])[0])(jax.random.split(key, n),
images)``; :func:`dsa` does this for you with ``siamese=False``.

:func:`dsa` parses the reference's strategy strings
(``"color_crop_cutout_flip_scale_rotate"``) and, like the reference's mode
'S', picks ONE family per call with ``jax.random.randint`` + ``lax.switch``, so
the whole thing stays inside one jitted program.

Per-image crops for contrastive learning: :func:`random_resized_crop` and
:func:`two_views` (the views of the SupCon surrogate, :mod:`jaxdd.surrogate`)
draw their parameters per image, not once per call.

Siamese use in distillation (one transform per class and step, shared by the
real and synthetic images of that class)::

  aug = dsa()                                   # siamese=True
  k_c = jax.random.fold_in(k_aug, c)            # one key per class
  real_c, syn_c = aug(k_c, real_c), aug(k_c, syn_c)

or, for all classes at once, ``jax.vmap(aug)(class_keys, real_by_class)`` and
the same ``class_keys`` for the synthetic images. Under ``vmap`` the family
index is batched, so ``lax.switch`` evaluates every family and selects
(correct, but it costs all six families' compute); a Python loop over classes
inside the jitted step avoids that at the price of a larger program.
Evaluation / network training uses ``dsa(strategy, siamese=False)``: one family
per batch, per-image parameters.

Conventions shared with PyTorch (the reference runs ``F.affine_grid`` and
``F.grid_sample`` with their defaults): bilinear interpolation, zero padding,
``align_corners=False``; the 2x3 matrix ``theta`` maps normalised OUTPUT
coordinates (x along W, y along H, both in [-1, 1]) to normalised INPUT
sampling coordinates, so a scale factor > 1 shrinks the content.

Submodules, one job each (every public name is re-exported here): :mod:`~jaxdd.augment.ops`
(the deterministic ops), :mod:`~jaxdd.augment.families` (the random DSA families and
:class:`DSAParams`), :mod:`~jaxdd.augment.strategy` (combinators, strategy strings,
:func:`dsa`), :mod:`~jaxdd.augment.views` (the surrogate's per-image crops).
"""

from jaxdd.augment.families import (DEFAULT_STRATEGY, FAMILIES, AugmentFn, DSAParams, brightness,
                                     color, contrast, crop, cutout, flip, rotate, saturation,
                                     scale)
from jaxdd.augment.ops import (affine, affine_grid, brightness_with, contrast_with, cutout_with,
                               flip_with, grid_sample, rotate_with, saturation_with, scale_with,
                               translate)
from jaxdd.augment.strategy import (DSA, chain, choose, dsa, family, identity, parse_strategy, per_image,
                                    per_sample)
from jaxdd.augment.views import random_resized_crop, two_views

__all__ = [
    "AugmentFn",
    "DEFAULT_STRATEGY",
    "DSA",
    "DSAParams",
    "FAMILIES",
    "affine",
    "affine_grid",
    "brightness",
    "brightness_with",
    "chain",
    "choose",
    "color",
    "contrast",
    "contrast_with",
    "crop",
    "cutout",
    "cutout_with",
    "dsa",
    "family",
    "flip",
    "flip_with",
    "grid_sample",
    "identity",
    "parse_strategy",
    "per_image",
    "per_sample",
    "random_resized_crop",
    "rotate",
    "rotate_with",
    "saturation",
    "saturation_with",
    "scale",
    "scale_with",
    "translate",
    "two_views",
]
