"""Mesh helpers: the same jitted step runs on one device, a mesh of local
devices, or a mesh that spans several processes.

jaxdd never calls ``pmap`` and never branches on ``device_count()``: the
distillation step is written for one device and partitioned by XLA (GSPMD) from
sharding constraints on its batch axes. These helpers build meshes with *Auto*
axis types (``jax.make_mesh`` defaults to Explicit in jax 0.10, which refuses
the contractions of a backward pass) and place host arrays on a mesh
in a way that also works when the mesh has devices of other processes.

Going from one GPU to a pod:

    >>> import jax
    >>> from jaxdd import parallel
    >>> mesh = parallel.make_mesh({"data": jax.device_count()})
    >>> # distill.dm(..., execution=distill.Execution(mesh=mesh, batch_axis="data"))
    >>> # shards every class's real batch over all devices; class_axis="data" shards
    >>> # the classes instead.

On several hosts call ``jax.distributed.initialize(...)`` first (on CPU also set
``jax.config.update("jax_cpu_collectives_implementation", "gloo")``), then build
the same mesh: ``jax.devices()`` then lists every process's devices.
"""
from __future__ import annotations

from typing import Any, Mapping

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P


def make_mesh(axes: Mapping[str, int], *, devices=None) -> Mesh:
  """A mesh with Auto (GSPMD) axis types over all (global) devices.

  Args:
    axes: ordered mapping axis name -> size; the product must equal the number
      of devices used.
    devices: optional device list (default ``jax.devices()``, every process's).

  Returns:
    A ``jax.sharding.Mesh``.
  """
  devices = list(jax.devices() if devices is None else devices)
  shape = tuple(int(v) for v in axes.values())
  if int(np.prod(shape)) != len(devices):
    raise ValueError(f"mesh shape {dict(axes)} needs {int(np.prod(shape))} devices, "
                     f"but {len(devices)} are available; change the axis sizes")
  return jax.make_mesh(shape, tuple(axes), axis_types=(AxisType.Auto,) * len(shape),
                       devices=devices)


_REPLICATED = P()  # an immutable spec: replicated on every device

def put(x: Any, mesh: Mesh | None, spec: P = _REPLICATED) -> Any:
  """Places a host array (or pytree) on ``mesh`` with ``spec``.

  Works when the mesh spans several processes (each process supplies the
  shards its devices own from its full host copy, which must be identical on
  every process). With ``mesh=None`` this is ``jax.device_put``.
  """
  if mesh is None:
    return jax.device_put(x)
  sharding = NamedSharding(mesh, spec)

  def one(a):
    if isinstance(a, jax.Array) and jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
      data = np.asarray(jax.random.key_data(a))
      impl = jax.random.key_impl(a)
      wrapped = jax.make_array_from_callback(data.shape, NamedSharding(mesh, P()), lambda i: data[i])
      return jax.random.wrap_key_data(wrapped, impl=impl)
    host = np.asarray(a)
    return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])

  return jax.tree.map(one, x)


def host(x: Any) -> Any:
  """A host (numpy) copy of an array or pytree, also when it spans several processes.

  A replicated array is read from a local shard; an array sharded over devices of
  other processes is gathered (``multihost_utils.process_allgather``, a collective:
  every process must call this at the same point). Anything else is ``np.asarray``.
  """
  def one(a):
    if isinstance(a, jax.Array) and not a.is_fully_addressable:
      if a.is_fully_replicated:
        return np.asarray(a.addressable_shards[0].data)
      return np.asarray(multihost_utils.process_allgather(a, tiled=True))
    return np.asarray(a)

  return jax.tree.map(one, x)


def constrain(x: jax.Array, mesh: Mesh | None, spec: P) -> jax.Array:
  """``with_sharding_constraint`` that is a no-op without a mesh."""
  if mesh is None:
    return x
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))
