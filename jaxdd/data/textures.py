"""Procedural colour textures and the compositing of ``textured_fmnist``.

A texture *family* is a distribution over images, not one image: every texture draws its own
orientation, scale, phase, colours and noise from its key, so the backgrounds of one family vary
as natural backgrounds do while keeping the family's statistics. The rules, written out in
docs/datasets.md ("Textured backgrounds"):

* **Random numbers.** A texture of side ``S`` (even) reads the words
  ``jax.random.bits(key, (K,), uint32)``, ``K = 42 + S^2`` (``42 + 3 S^2`` for ``granite``).
  Word ``b`` gives the uniform ``(b >> 8) / 2^24`` in [0, 1): words 0-7 are ``u``, words 8-31
  the (4, 6) table ``w``. The other words come in blocks, each turned into as many normals by
  Box-Muller (the block's first half ``a = ((b >> 8) + 1) / 2^24``, its second half ``v`` as
  uniforms; normals ``sqrt(-2 ln a) cos(2 pi v)`` then ``sqrt(-2 ln a) sin(2 pi v)``): words
  32-41 the colour normals (the first 9 used), the next ``S^2`` the fine noise (row-major),
  and for ``granite`` two blocks of ``S^2``, its two fields.
* **Coordinates.** Pixel ``(i, j)`` sits at ``x = j + 0.5 - S / 2``, ``y = i + 0.5 - S / 2``
  (pixels from the centre). Each family maps ``u`` and ``w`` to its parameters (the docstrings
  below; docs/datasets.md tabulates them) and returns two fields in [0, 1]: the pattern ``s``
  and an accent ``t``.
* **Colour.** ``c_k = clip(PALETTES[family, k] + 0.04 e_k, 0, 1)`` for ``k = 0, 1, 2`` with the
  colour normals ``e_k``; the texture is
  ``clip(((1 - s) c0 + s c1)(1 - t) + t c2 + sigma n, 0, 1)`` with one grey fine-noise normal
  ``n`` per pixel (``sigma`` from :data:`NOISE_STD`: 0.03, 0.05 for ``granite``), in float32.
* **Compositing** (:func:`composite`). With ``g = intensity / 255`` of the grey object,
  ``alpha = min(1, 4 g)`` and ``pixel = alpha g + (1 - alpha) texture`` on each channel, rounded
  to 8 bits: ``rint(255 pixel) / 255``. The object is the neutral grey ``g`` itself on all three
  channels, so it carries no bias; where ``g >= 0.25`` (``alpha = 1``) it hides the texture.
* **Keys** (:func:`image_keys`). Image ``i`` of a pool gets ``fold_in(pool_key, i)``; the dataset
  builder's pool key is ``fold_in(key(seed), pool)`` with pool 0 for the source's training pool
  (which ``train`` and ``valid`` share) and 2 for its test pool, so an image's texture depends on
  its index, its family and the seed, not on the split or subset it lands in.

The random words come from a compiled JAX program (one per word count); the fields are numpy
arithmetic on a whole batch of textures of one family, with no loop per image.

Example:
  >>> t = texture(jax.random.key(0), FAMILIES.index("bricks"))
  >>> t.shape, t.dtype
  ((28, 28, 3), dtype('float32'))
"""
from __future__ import annotations

import functools
import math
import numbers

import jax
import jax.numpy as jnp
import numpy as np

from jaxdd.data import sources as _sources
from jaxdd.data.sources import validate_images, validate_labels

__all__ = ["ALPHA_KNEE", "COLOUR_JITTER", "FAMILIES", "NOISE_STD", "PALETTES", "composite",
           "image_keys", "texture", "texture_background", "textures"]

#: The ten texture families, in bias order: family ``c`` is class ``c``'s aligned background.
FAMILIES = ("reeds", "tiles", "pebbles", "foliage", "wood", "zigzag", "weave", "bricks",
            "granite", "water")

#: Each family's three base colours (RGB in [0, 1]): ``c0`` the ground, ``c1`` the pattern,
#: ``c2`` the accent.
PALETTES = np.array([
    [[0.85, 0.78, 0.42], [0.40, 0.52, 0.18], [0.62, 0.66, 0.28]],  # reeds: straw, green
    [[0.75, 0.35, 0.22], [0.93, 0.87, 0.74], [0.55, 0.48, 0.42]],  # tiles: terracotta, cream
    [[0.30, 0.22, 0.15], [0.70, 0.68, 0.62], [0.88, 0.86, 0.80]],  # pebbles: soil, stone
    [[0.12, 0.32, 0.10], [0.30, 0.55, 0.20], [0.70, 0.80, 0.30]],  # foliage: greens
    [[0.66, 0.45, 0.24], [0.40, 0.24, 0.10], [0.78, 0.58, 0.35]],  # wood: browns
    [[0.58, 0.42, 0.60], [0.35, 0.22, 0.38], [0.80, 0.70, 0.78]],  # zigzag: heather
    [[0.46, 0.52, 0.60], [0.18, 0.22, 0.28], [0.08, 0.10, 0.14]],  # weave: slate
    [[0.62, 0.20, 0.14], [0.82, 0.80, 0.75], [0.40, 0.12, 0.08]],  # bricks: brick, mortar
    [[0.72, 0.66, 0.64], [0.15, 0.14, 0.14], [0.96, 0.94, 0.92]],  # granite: pink-grey
    [[0.12, 0.35, 0.55], [0.35, 0.62, 0.75], [0.85, 0.92, 0.95]],  # water: blues, foam
], dtype=np.float32)
PALETTES.setflags(write=False)

#: Standard deviation of each base colour's per-texture jitter (per channel).
COLOUR_JITTER = 0.04
#: The fine grey noise's standard deviation, per family.
NOISE_STD = tuple(0.05 if name == "granite" else 0.03 for name in FAMILIES)
#: ``alpha = min(1, g / ALPHA_KNEE)``: object pixels at least this bright hide the texture.
ALPHA_KNEE = 0.25
#: The most textures whose random words one call of the compiled program draws; a smaller
#: batch is padded to the next power of two from 64, so few programs serve every size.
_CHUNK = 1024

_TAU = 2.0 * math.pi


# ----------------------------------------------------------------------------
# The families: (x, y, u, w, z) -> (s, t), fields in [0, 1] of shape (N, S, S).
# u: (N, 8, 1, 1) and w: (N, 4, 6, 1, 1) uniforms; z: (N, 2, S, S) normals.
# ----------------------------------------------------------------------------


def _sigmoid(v):
  return 1.0 / (1.0 + np.exp(-v))


def _rotate(x, y, theta):
  c, s = np.cos(theta), np.sin(theta)
  return x * c + y * s, y * c - x * s


def _frac(v):
  return v - np.floor(v)


def _edge_distance(v, period):
  """Distance (in pixels) from ``v * period`` to the nearest multiple of ``period``."""
  return (0.5 - np.abs(_frac(v) - 0.5)) * period


def _reeds(x, y, u, w, z):
  """Oriented stripes with a slow wobble: angle pi u0, period 4 + 3 u1 px, phase 2 pi u2,
  sharpness 1.5 + 2 u3, wobble amplitude u4 px over 10 + 10 u5 px, phase 2 pi u6."""
  a, b = _rotate(x, y, math.pi * u[:, 0])
  r = a + u[:, 4] * np.sin(_TAU * b / (10.0 + 10.0 * u[:, 5]) + _TAU * u[:, 6])
  wave = np.sin(_TAU * r / (4.0 + 3.0 * u[:, 1]) + _TAU * u[:, 2])
  s = 0.5 + 0.5 * np.tanh((1.5 + 2.0 * u[:, 3]) * wave)
  return s, np.zeros_like(s)


def _tiles(x, y, u, w, z):
  """A checkerboard: angle (pi / 2) u0, cell 3 + 2.5 u1 px, offsets u2, u3 of a cell; grout
  (the accent) where either sine is near 0."""
  a, b = _rotate(x, y, 0.5 * math.pi * u[:, 0])
  cell = 3.0 + 2.5 * u[:, 1]
  sa, sb = np.sin(math.pi * (a / cell + u[:, 2])), np.sin(math.pi * (b / cell + u[:, 3]))
  s = 0.5 + 0.5 * np.tanh(6.0 * sa * sb)
  t = 0.6 * np.exp(-((np.minimum(np.abs(sa), np.abs(sb)) / 0.2) ** 2))
  return s, t


def _pebbles(x, y, u, w, z):
  """Discs on a staggered lattice: angle (pi / 3) u0, spacing 5 + 3 u1 px, offsets u2, u3,
  radius (0.22 + 0.13 u4) of the spacing; a lighter centre as the accent."""
  a, b = _rotate(x, y, math.pi / 3.0 * u[:, 0])
  step = 5.0 + 3.0 * u[:, 1]
  bb = b / step + u[:, 3]
  aa = a / step + u[:, 2] + 0.5 * np.floor(bb)
  d = np.sqrt(((_frac(aa) - 0.5) * step) ** 2 + ((_frac(bb) - 0.5) * step) ** 2)
  radius = step * (0.22 + 0.13 * u[:, 4])
  s = _sigmoid(2.0 * (radius - d))
  return s, 0.5 * s * np.clip(1.0 - d / radius, 0.0, 1.0)


def _smooth_field(x, y, freq, angle, phase):
  """``sqrt(2 / K) sum_k cos(2 pi f_k (x cos a_k + y sin a_k) + phase_k)``, summed in order of
  ``k``: a smooth random field of unit variance."""
  total = 0.0
  for k in range(freq.shape[1]):
    proj = x * np.cos(angle[:, k]) + y * np.sin(angle[:, k])
    total = total + np.cos(_TAU * freq[:, k] * proj + phase[:, k])
  return math.sqrt(2.0 / freq.shape[1]) * total


def _foliage(x, y, u, w, z):
  """Smooth blobs: six cosines of 1 + 2 w0 cycles per image in directions 2 pi w1, phases
  2 pi w2; accents where a second field (twice the frequencies, directions turned by 1 rad,
  phases 2 pi w3) exceeds 1."""
  freq = (1.0 + 2.0 * w[:, 0]) / x.shape[-1]
  angle = _TAU * w[:, 1]
  s = _sigmoid(2.0 * _smooth_field(x, y, freq, angle, _TAU * w[:, 2]))
  t = _sigmoid(4.0 * (_smooth_field(x, y, 2.0 * freq, angle + 1.0, _TAU * w[:, 3]) - 1.0))
  return s, t


def _wood(x, y, u, w, z):
  """Rings around a centre 8 + 16 u0 px away in direction 2 pi u1: period 2.5 + 2 u2 px,
  phase 2 pi u3, warped by 1.5 u4 px over 8 + 8 u5 px (phase 2 pi u6); dark thin rings."""
  dist = 8.0 + 16.0 * u[:, 0]
  cx, cy = dist * np.cos(_TAU * u[:, 1]), dist * np.sin(_TAU * u[:, 1])
  r = np.sqrt((x - cx) ** 2 + (y - cy) ** 2)
  r = r + 1.5 * u[:, 4] * np.sin(_TAU * (x + y) / (8.0 + 8.0 * u[:, 5]) + _TAU * u[:, 6])
  s = (0.5 + 0.5 * np.sin(_TAU * r / (2.5 + 2.0 * u[:, 2]) + _TAU * u[:, 3])) ** 2
  return s, np.zeros_like(s)


def _zigzag(x, y, u, w, z):
  """Zigzag bands: angle pi u0, band period 5 + 3 u1 px, zigzag length 5 + 4 u2 px and amplitude
  1.5 + 1.5 u3 px, phases 2 pi u4 and u5."""
  a, b = _rotate(x, y, math.pi * u[:, 0])
  tri = 2.0 * np.abs(_frac(a / (5.0 + 4.0 * u[:, 2]) + u[:, 5]) - 0.5)
  r = b + (1.5 + 1.5 * u[:, 3]) * tri
  s = 0.5 + 0.5 * np.tanh(3.0 * np.sin(_TAU * r / (5.0 + 3.0 * u[:, 1]) + _TAU * u[:, 4]))
  return s, np.zeros_like(s)


def _weave(x, y, u, w, z):
  """Two sets of thin lines (a cross-hatch): angles (pi / 2) u0 and that + pi / 2 +
  0.3 (u3 - 0.5), period 5 + 3 u1 px, width 0.6 + 0.5 u2 px, offsets u4, u5; crossings as the
  accent."""
  theta = 0.5 * math.pi * u[:, 0]
  period, width = 5.0 + 3.0 * u[:, 1], 0.6 + 0.5 * u[:, 2]
  a1, _ = _rotate(x, y, theta)
  a2, _ = _rotate(x, y, theta + 0.5 * math.pi + 0.3 * (u[:, 3] - 0.5))
  l1 = np.exp(-0.5 * (_edge_distance(a1 / period + u[:, 4], period) / width) ** 2)
  l2 = np.exp(-0.5 * (_edge_distance(a2 / period + u[:, 5], period) / width) ** 2)
  return np.maximum(l1, l2), l1 * l2


def _bricks(x, y, u, w, z):
  """Courses of bricks near horizontal: angle 0.3 (u0 - 0.5), course 5 + 2 u1 px, brick
  (1.8 + 0.6 u2) courses long, offsets u3, u4, each course shifted half a brick; mortar 0.8 px;
  each brick's shade (the accent) from an integer hash of its row, column and u5."""
  a, b = _rotate(x, y, 0.3 * (u[:, 0] - 0.5))
  course = 5.0 + 2.0 * u[:, 1]
  length = course * (1.8 + 0.6 * u[:, 2])
  bb = b / course + u[:, 4]
  aa = a / length + u[:, 3] + 0.5 * np.floor(bb)
  gap = np.minimum(_edge_distance(aa, length), _edge_distance(bb, course))
  s = _sigmoid(3.0 * (0.8 - gap))
  row = (np.floor(bb) + 1000.0).astype(np.uint64)
  col = (np.floor(aa) + 1000.0).astype(np.uint64)
  salt = (u[:, 5] * 65536.0).astype(np.uint64)
  shade = ((row * np.uint64(73856093)) ^ (col * np.uint64(19349663)) ^ salt) % np.uint64(997)
  return s, 0.6 * (shade.astype(np.float32) / 996.0) * (1.0 - s)


def _granite(x, y, u, w, z):
  """Speckle: dark specks where the first normal field exceeds 0.9 + 0.4 u0, light ones where
  the second exceeds 1.2 + 0.4 u1 (one value per pixel each)."""
  return (_sigmoid(4.0 * (z[:, 0] - 0.9 - 0.4 * u[:, 0])),
          _sigmoid(4.0 * (z[:, 1] - 1.2 - 0.4 * u[:, 1])))


def _water(x, y, u, w, z):
  """Waves: three sines in directions pi u0 + 0.6 (w0k - 0.5), periods 7 + 7 w1k px, phases
  2 pi w2k (k < 3), summed and scaled by 1 / sqrt(1.5); foam (the accent) on crests above 1.1."""
  total = 0.0
  for k in range(3):
    angle = math.pi * u[:, 0] + 0.6 * (w[:, 0, k] - 0.5)
    proj = x * np.cos(angle) + y * np.sin(angle)
    total = total + np.sin(_TAU * proj / (7.0 + 7.0 * w[:, 1, k]) + _TAU * w[:, 2, k])
  field = total / math.sqrt(1.5)
  return 0.5 + 0.5 * np.tanh(field), _sigmoid(6.0 * (field - 1.1))


_FIELDS = (_reeds, _tiles, _pebbles, _foliage, _wood, _zigzag, _weave, _bricks, _granite, _water)


# ----------------------------------------------------------------------------
# Random words and textures.
# ----------------------------------------------------------------------------


def _words(size: int, family: int) -> int:
  """Random words per texture: 8 + 24 uniforms, 10 colour and S^2 noise words, and for
  ``granite`` 2 S^2 more for its fields."""
  return 8 + 24 + 10 + (3 if FAMILIES[family] == "granite" else 1) * size * size


@functools.partial(jax.jit, static_argnames=("words",))
def _key_bits(keys, words: int):
  return jax.vmap(lambda k: jax.random.bits(k, (words,), jnp.uint32))(keys)


@functools.partial(jax.jit, static_argnames=("words",))
def _index_bits(key, index, words: int):
  return jax.vmap(lambda i: jax.random.bits(jax.random.fold_in(key, i), (words,), jnp.uint32))(
      index)


def _padded(n: int) -> int:
  """The batch a call of ``n <= _CHUNK`` textures draws words for: a power of two >= 64."""
  return max(64, 1 << (max(n, 1) - 1).bit_length())


def _draw(fn, batch, words: int) -> np.ndarray:
  """``fn(batch, words)`` in calls of at most ``_CHUNK`` rows, each padded to :func:`_padded`
  rows (integer words: the padding changes no row)."""
  out = []
  for start in range(0, len(batch), _CHUNK):
    part = batch[start:start + _CHUNK]
    rows = np.resize(np.arange(len(part)), _padded(len(part)))
    out.append(np.asarray(fn(part[rows], words))[:len(part)])
  return np.concatenate(out) if out else np.zeros((0, words), np.uint32)


def _uniform(bits: np.ndarray) -> np.ndarray:
  return (bits >> np.uint32(8)).astype(np.float32) * np.float32(2.0**-24)


def _normal(bits: np.ndarray) -> np.ndarray:
  """Box-Muller along the last axis (even length): first half radii, second half angles."""
  half = bits.shape[-1] // 2
  a = ((bits[..., :half] >> np.uint32(8)) + np.uint32(1)).astype(np.float32) * np.float32(2.0**-24)
  radius = np.sqrt(np.float32(-2.0) * np.log(a))
  angle = _TAU * _uniform(bits[..., half:])
  return np.concatenate([radius * np.cos(angle), radius * np.sin(angle)], axis=-1)


def _from_bits(bits: np.ndarray, family: int, size: int) -> np.ndarray:
  """(N, words) random words -> (N, S, S, 3) float32 textures of ``family``."""
  n, area = len(bits), size * size
  u = _uniform(bits[:, :8]).reshape(n, 8, 1, 1)
  w = _uniform(bits[:, 8:32]).reshape(n, 4, 6, 1, 1)
  colour_eps = _normal(bits[:, 32:42])[:, :9].reshape(n, 3, 3)
  noise = _normal(bits[:, 42:42 + area]).reshape(n, size, size, 1)
  z = None  # only granite reads its two normal fields
  if FAMILIES[family] == "granite":
    z = _normal(bits[:, 42 + area:].reshape(n, 2, area)).reshape(n, 2, size, size)
  coord = np.arange(size, dtype=np.float32) + np.float32(0.5 - 0.5 * size)
  y, x = np.meshgrid(coord, coord, indexing="ij")
  s, t = _FIELDS[family](x, y, u, w, z)
  c = np.clip(PALETTES[family] + np.float32(COLOUR_JITTER) * colour_eps, 0.0, 1.0)
  c = c.astype(np.float32)[:, :, None, None, :]
  s, t = s[..., None], t[..., None]
  rgb = c[:, 0] + s * (c[:, 1] - c[:, 0])
  rgb += t * (c[:, 2] - rgb)
  rgb += np.float32(NOISE_STD[family]) * noise
  return np.clip(rgb, 0.0, 1.0, out=rgb)


def _check_family(family) -> int:
  if isinstance(family, bool) or not isinstance(family, numbers.Integral) \
      or not 0 <= family < len(FAMILIES):
    raise ValueError(f"family must be an integer in [0, {len(FAMILIES)}) (an index of "
                     f"FAMILIES: {', '.join(FAMILIES)}), got {family!r}.")
  return int(family)


def _check_size(size) -> int:
  if isinstance(size, bool) or not isinstance(size, numbers.Integral) or size < 2 or size % 2:
    raise ValueError(f"size must be an even integer >= 2 (pixels per side), got {size!r}.")
  return int(size)


def _is_key(key, ndim: int) -> bool:
  return (isinstance(key, jax.Array) and jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
          and key.ndim == ndim)


def textures(keys: jax.Array, family: int, size: int = 28) -> np.ndarray:
  """Textures of one family for a batch of keys: ``textures(keys, f)[i] == texture(keys[i], f)``.

  Args:
    keys: (N,) typed PRNG keys (:func:`image_keys` makes the dataset's).
    family: index into :data:`FAMILIES`.
    size: pixels per side (even).

  Returns:
    (N, size, size, 3) ``float32`` RGB in [0, 1].

  Raises:
    ValueError: not a 1-D array of typed keys, a family outside [0, 10), a bad size.

  Example:
    >>> textures(image_keys(jax.random.key(0), range(4)), 0).shape
    (4, 28, 28, 3)
  """
  if not _is_key(keys, 1):
    raise ValueError("keys must be a 1-D array of typed PRNG keys, e.g. "
                     "image_keys(jax.random.key(0), range(8)).")
  family, size = _check_family(family), _check_size(size)
  return _from_bits(_draw(_key_bits, keys, _words(size, family)), family, size)


def texture(key: jax.Array, family: int, size: int = 28) -> np.ndarray:
  """One texture of a family, drawn from ``key`` (the module docstring gives the rules).

  Args:
    key: a typed PRNG key (``jax.random.key(seed)``); same key, same texture.
    family: index into :data:`FAMILIES`.
    size: pixels per side (even).

  Returns:
    (size, size, 3) ``float32`` RGB in [0, 1].

  Raises:
    ValueError: not one typed key, a family outside [0, 10), a bad size.

  Example:
    >>> t = texture(jax.random.key(3), FAMILIES.index("water"))
    >>> bool((t >= 0).all() and (t <= 1).all())
    True
  """
  if not _is_key(key, 0):
    raise ValueError("key must be one typed PRNG key, e.g. jax.random.key(0).")
  return textures(key[None], family, size)[0]


def _check_index(index) -> np.ndarray:
  idx = np.asarray(index)
  if idx.ndim != 1 or (idx.size and (not np.issubdtype(idx.dtype, np.integer) or idx.min() < 0
                                      or idx.max() >= 2**32)):
    raise ValueError("index must be a 1-D array of integers in [0, 2**32), one per image.")
  return idx.astype(np.uint32)


def image_keys(key: jax.Array, index) -> jax.Array:
  """Each image's key: ``fold_in(key, index[i])``.

  Args:
    key: the pool's typed key (the builder's: ``fold_in(key(seed), 0)`` for the training pool,
      ``fold_in(key(seed), 2)`` for the test pool).
    index: (N,) integers in [0, 2**32), each image's index in its pool.

  Returns:
    (N,) typed keys.

  Example:
    >>> image_keys(jax.random.key(0), [0, 5]).shape
    (2,)
  """
  if not _is_key(key, 0):
    raise ValueError("key must be one typed PRNG key, e.g. jax.random.key(0).")
  return jax.vmap(jax.random.fold_in, (None, 0))(key, jnp.asarray(_check_index(index)))


# ----------------------------------------------------------------------------
# Compositing.
# ----------------------------------------------------------------------------


def composite(images, backgrounds) -> np.ndarray:
  """Puts grey objects on backgrounds: ``alpha = min(1, 4 g)``, ``pixel = alpha g + (1 - alpha)
  background`` per channel, rounded to 8 bits (``rint(255 pixel) / 255``), ``g`` the object's
  intensity in [0, 1].

  Args:
    images: (N, H, W) or (N, H, W, 1) grey objects, uint8 0..255 or float [0, 1].
    backgrounds: (N, H, W, 3) RGB in [0, 1].

  Returns:
    (N, H, W, 3) ``float32``, multiples of 1/255.

  Raises:
    ValueError: bad images, or backgrounds of another shape.

  Example:
    >>> g = np.array([[[0, 32, 64, 255]]], np.uint8)
    >>> (composite(g, np.full((1, 1, 4, 3), 0.5, np.float32))[0, 0, :, 0] * 255).tolist()
    [128.0, 80.0, 64.0, 255.0]
  """
  x = validate_images(images, channels=(1,))
  g = np.divide(x, np.float32(255.0), dtype=np.float32) if x.dtype == np.uint8 else x
  g = g.reshape(g.shape[:3])[..., None]
  bg = np.asarray(backgrounds, np.float32)
  if bg.shape != g.shape[:3] + (3,):
    raise ValueError(f"backgrounds must be (N, H, W, 3) = {g.shape[:3] + (3,)}, got {bg.shape}.")
  alpha = np.minimum(g / np.float32(ALPHA_KNEE), np.float32(1.0))
  pixel = alpha * g + (np.float32(1.0) - alpha) * bg
  return np.divide(np.rint(pixel * np.float32(255.0)), np.float32(255.0), dtype=np.float32)


def texture_background(key: jax.Array, images, families, *, index=None,
                       progress=None) -> np.ndarray:
  """``textured_fmnist``'s injector: each grey object on a texture of its family.

  Image ``i`` gets the texture of key ``fold_in(key, index[i])`` (:func:`image_keys`) and family
  ``families[i]``, composited by :func:`composite`; textures are made a family at a time, in
  chunks of 1,024.

  Args:
    key: the pool's typed PRNG key.
    images: (N, S, S) or (N, S, S, 1) square grey images (S even), uint8 0..255 or float [0, 1].
    families: (N,) family indices in [0, 10).
    index: (N,) each image's index in its pool; None: ``0 .. N - 1``.
    progress: as for :func:`jaxdd.data.colorize_background` (None: a bar from 20,000 images).

  Returns:
    (N, S, S, 3) ``float32`` in [0, 1], multiples of 1/255.

  Raises:
    ValueError: bad images, families or index.

  Example:
    >>> x = np.zeros((2, 8, 8), np.uint8)
    >>> texture_background(jax.random.key(0), x, [0, 9]).shape
    (2, 8, 8, 3)
  """
  if not _is_key(key, 0):
    raise ValueError("key must be one typed PRNG key, e.g. jax.random.key(0).")
  x = validate_images(images, channels=(1,))
  n, h, w = x.shape[:3]
  if h != w:
    raise ValueError(f"textured backgrounds need square images, got {h}x{w}.")
  size = _check_size(h)
  fam = validate_labels(families, n=n, what="families", num_classes=len(FAMILIES))
  idx = np.arange(n, dtype=np.uint32) if index is None else _check_index(index)
  if idx.shape != (n,):
    raise ValueError(f"index must have one entry per image ({n}), got shape {idx.shape}.")
  out = np.empty((n, h, w, 3), np.float32)
  bar, owned = _sources.open_progress(progress, n, "texture_background", kind="colour")
  try:
    for f in np.unique(fam):
      rows = np.flatnonzero(fam == f)
      for start in range(0, len(rows), _CHUNK):
        part = rows[start:start + _CHUNK]
        bits = _draw(functools.partial(_index_bits, key), idx[part], _words(size, int(f)))
        out[part] = composite(x[part], _from_bits(bits[:len(part)], int(f), size))
        bar.update(len(part))
  finally:
    if owned:
      bar.close()
  return out
