"""Bridging jax.random keys to numpy: the one place host-side code gets its randomness; and
typed keys of any implementation brought to JAX's default one (:func:`default_key`).

Host-side steps (dataset noise, corruptions, subset selection, batch plans)
draw from numpy. They derive their ``numpy.random.Generator`` from a typed
jax key here, so a result still depends only on the key: same key, same
stream.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def key_words(key: jax.Array) -> list[int]:
  """The key's bits as a list of Python ints (a ``SeedSequence`` entropy).

  Example:
    >>> key_words(jax.random.key(0))
    [0, 0]
  """
  return np.asarray(jax.random.key_data(key)).ravel().tolist()


def numpy_rng(key: jax.Array) -> np.random.Generator:
  """A numpy Generator seeded with the key's bits (same key, same stream).

  Example:
    >>> a = numpy_rng(jax.random.key(1)).integers(0, 100, 3)
    >>> b = numpy_rng(jax.random.key(1)).integers(0, 100, 3)
    >>> bool((a == b).all())
    True
  """
  return np.random.default_rng(key_words(key))


def default_key(key: jax.Array) -> jax.Array:
  """``key`` as a typed key of JAX's default implementation (``jax_default_prng_impl``), the
  one whose raw data a distillation state keeps: a typed key of another implementation
  (``jax.random.key(0, impl="rbg")``) becomes one by drawing its bits, the same for the same
  key; raw key data of another shape is refused in one line.

  >>> import jax
  >>> default_key(jax.random.key(0, impl="rbg")).dtype == jax.random.key(0).dtype
  True
  """
  default = jax.eval_shape(lambda: jax.random.key(0))
  data_shape = jax.eval_shape(lambda: jax.random.key_data(jax.random.key(0))).shape
  if jax.dtypes.issubdtype(jnp.result_type(key), jax.dtypes.prng_key):
    if jnp.result_type(key) == default.dtype:
      return key
    return jax.random.wrap_key_data(jax.random.bits(key, key.shape + data_shape, jnp.uint32))
  if jnp.shape(key)[-1:] != data_shape[-1:]:
    raise ValueError(f"init got raw key data of shape {jnp.shape(key)}, not JAX's default key "
                     f"implementation's {data_shape}; pass a typed key, jax.random.key(seed)")
  return jax.random.wrap_key_data(jnp.asarray(key, jnp.uint32))
