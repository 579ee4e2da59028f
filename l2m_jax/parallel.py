"""Devices, meshes and shardings: the only module that knows about devices.

One 1-D mesh with axis name 'data' spans every device of every process.
Batches are split along their leading axis over 'data'; parameters and train
states are replicated. Multi-host: each process passes its own slice of the
global batch to `shard_batch`, which assembles the global array with
`jax.make_array_from_process_local_data`.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = 'data'


def make_mesh(num_devices: int | None = None) -> jax.sharding.Mesh:
  """A ('data',) mesh over all devices (or the first `num_devices`).

  The axis type is passed explicitly as Auto: JAX 0.10 defaults to Explicit,
  under which concatenating a batch-sharded array with a replicated one fails
  with ShardingTypeError (house style §6).
  """
  n = jax.device_count() if num_devices is None else num_devices
  if n < 1 or n > jax.device_count():
    raise ValueError(f'num_devices={n}: must be in [1, {jax.device_count()}]')
  kwargs = {}
  axis_type = getattr(jax.sharding, 'AxisType', None)
  if axis_type is not None:
    kwargs['axis_types'] = (axis_type.Auto,)
  devices = jax.devices()[:n]
  return jax.make_mesh((n,), (DATA_AXIS,), devices=devices, **kwargs)


def replicated_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def data_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def local_batch_size(global_batch_size: int, mesh: jax.sharding.Mesh,
                     name: str = 'batch_size') -> int:
  """Per-process batch size for a global batch size, validated.

  Raises:
    ValueError: naming `name` when the global batch does not divide evenly
      over the devices of the mesh.
  """
  n = mesh.devices.size
  if global_batch_size <= 0 or global_batch_size % n:
    raise ValueError(
        f'{name}={global_batch_size}: the global batch size must be a positive '
        f'multiple of the device count ({n}); per-device batches must be '
        'equal')
  return global_batch_size // jax.process_count()


def shard_batch(batch: Any, mesh: jax.sharding.Mesh) -> Any:
  """Process-local numpy batch (pytree) -> global arrays sharded over 'data'."""
  sharding = data_sharding(mesh)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
      batch)


def replicate(tree: Any, mesh: jax.sharding.Mesh) -> Any:
  """Places a pytree replicated on every device of the mesh."""
  return jax.device_put(tree, replicated_sharding(mesh))


def pad_to_multiple(x: np.ndarray, multiple: int) -> tuple[np.ndarray, int]:
  """Pads the leading axis to a multiple (repeating the last row).

  Returns:
    (padded array, number of valid rows).
  """
  n = x.shape[0]
  rem = (-n) % multiple
  if rem:
    x = np.concatenate([x, np.repeat(x[-1:], rem, axis=0)], axis=0)
  return x, n
