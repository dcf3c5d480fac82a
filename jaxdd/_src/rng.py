"""Bridging jax.random keys to numpy: the one place host-side code gets its randomness.

Host-side steps (dataset noise, corruptions, subset selection, batch plans)
draw from numpy. They derive their ``numpy.random.Generator`` from a typed
jax key here, so a result still depends only on the key: same key, same
stream.
"""
from __future__ import annotations

import jax
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
