"""Devices, meshes, shardings and step compilation: the only module that knows about devices.

One 1-D mesh with axis name 'data' spans every device of every process.
Batches are split along their leading axis over 'data'; parameters and train
states are replicated. Multi-host: each process passes its own slice of the
global batch to `shard_batch`, which assembles the global array with
`jax.make_array_from_process_local_data`.

Train steps are written per device, as pmap code is (the local batch shard
in, gradients and metrics averaged with `jax.lax.pmean(x, DATA_AXIS)`), and
compiled here by `compile_step`, either with `jax.jit(shard_map(...))` over
the mesh (default) or with `jax.pmap` (house style §6).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
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


PARALLEL_MODES = ('shard_map', 'pmap')


def _shard_map():
  """`jax.shard_map` (JAX >= 0.7) or the experimental one on older JAX."""
  fn = getattr(jax, 'shard_map', None)
  if fn is None:  # pragma: no cover - old JAX only
    from jax.experimental.shard_map import shard_map as fn  # pylint: disable=g-import-not-at-top
  return fn


def _no_check_kwargs() -> dict[str, bool]:
  """shard_map's replication-check switch (check_vma, formerly check_rep)."""
  import inspect  # pylint: disable=g-import-not-at-top
  params = inspect.signature(_shard_map()).parameters
  if 'check_vma' in params:
    return {'check_vma': False}
  return {'check_rep': False}  # pragma: no cover - old JAX only


def per_device_batch_size(global_batch_size: int, mesh: jax.sharding.Mesh,
                          name: str = 'batch_size') -> int:
  """Per-device batch for a global batch, validated (see local_batch_size)."""
  local_batch_size(global_batch_size, mesh, name)
  return global_batch_size // mesh.devices.size


def init_replicated(init_fn: Callable[..., Any], mesh: jax.sharding.Mesh,
                    *args) -> Any:
  """Runs `init_fn(*args)` under jit with replicated outputs ([BV] style)."""
  return jax.jit(init_fn, out_shardings=replicated_sharding(mesh))(*args)


def _local_value(x: Any) -> Any:
  """A host copy of one replica of a (possibly multi-host) replicated array."""
  if isinstance(x, jax.Array):
    if x.is_fully_addressable:
      if x.sharding.is_fully_replicated:
        return np.asarray(x.addressable_data(0))
      return np.asarray(x)
    return np.asarray(x.addressable_data(0))
  return np.asarray(x)


def unreplicate_to_host(tree: Any) -> Any:
  """Replicated pytree (any layout of this module) -> numpy on the host."""
  return jax.tree.map(_local_value, tree)


def _first_replica(x: jax.Array) -> np.ndarray:
  """Device 0's copy of a pmap-layout array [n_local, ...] -> [...]."""
  shard = np.asarray(x.addressable_data(0))
  # Pmap outputs keep the device axis in their shards (NamedSharding layout,
  # JAX >= 0.10) or drop it (PmapSharding, older JAX).
  return shard[0] if shard.ndim == x.ndim else shard


@dataclasses.dataclass(frozen=True)
class CompiledStep:
  """A per-device step compiled for one mesh, with its data-layout helpers.

  Attributes:
    mode: 'shard_map' or 'pmap'.
    mesh: the ('data',) mesh.
    fn: (state, batch, *args) -> (state, metrics), in this mode's layout.
    put_state: replicated (global or host) state -> this mode's layout.
    put_batch: process-local numpy batch (pytree) -> this mode's layout.
    put_args: replicated extra arguments (frozen params) -> this layout.
    get_state: this mode's state -> global arrays replicated over the mesh
      (the layout saved by checkpoints, independent of the mode).
    get_metrics: this mode's metrics -> numpy scalars on the host.
  """
  mode: str
  mesh: jax.sharding.Mesh
  fn: Callable[..., Any]
  put_state: Callable[[Any], Any]
  put_batch: Callable[[Any], Any]
  put_args: Callable[[Any], Any]
  get_state: Callable[[Any], Any]
  get_metrics: Callable[[Any], Any]

  def __call__(self, state, batch, *args):
    return self.fn(state, batch, *args)


def compile_step(step_fn: Callable[..., Any], mesh: jax.sharding.Mesh,
                 mode: str = 'shard_map', *, num_args: int = 0,
                 donate_state: bool = True) -> CompiledStep:
  """Compiles a per-device `step_fn(state, batch, *args)` over `mesh`.

  `step_fn` sees the local batch shard and must average whatever crosses
  devices (gradients, metrics) with `jax.lax.pmean(x, DATA_AXIS)`; its
  returned state and metrics must be equal on every device.

  Args:
    step_fn: the per-device step; returns (state, metrics).
    mesh: a ('data',) mesh from `make_mesh`.
    mode: 'shard_map' (jit + shard_map, replicated state as global arrays)
      or 'pmap' (state with a leading local-device axis).
    num_args: number of extra replicated arguments after the batch (frozen
      parameters); they are not donated.
    donate_state: donate the state buffers to the step.

  Returns:
    A CompiledStep.
  """
  if mode not in PARALLEL_MODES:
    raise ValueError(f'parallel={mode!r}: expected one of {PARALLEL_MODES}')
  donate = (0,) if donate_state else ()
  if mode == 'shard_map':
    rep = replicated_sharding(mesh)
    # check_vma=False gives pmap semantics: with replication checking on,
    # the gradient of a loss on the local shard w.r.t. replicated params is
    # already psum-ed over 'data' (the transpose of the implicit pvary), so
    # the step's explicit pmean would see a 4x larger gradient than under
    # pmap. Off, each device differentiates its own shard and the pmean
    # averages, identically in both compilers (tested).
    sharded = _shard_map()(
        step_fn, mesh=mesh,
        in_specs=(P(), P(DATA_AXIS)) + (P(),) * num_args,
        out_specs=(P(), P()), **_no_check_kwargs())
    fn = jax.jit(sharded, donate_argnums=donate)
    put = lambda tree: jax.device_put(tree, rep)
    return CompiledStep(
        mode=mode, mesh=mesh, fn=fn, put_state=put,
        put_batch=lambda b: shard_batch(b, mesh), put_args=put,
        get_state=lambda s: s,
        get_metrics=lambda m: jax.tree.map(np.asarray, jax.device_get(m)))

  # pmap: one program per local device; the mesh order fixes the devices.
  all_devices = list(mesh.devices.flat)
  local = [d for d in all_devices if d.process_index == jax.process_index()]
  n_local = len(local)
  local_mesh = jax.sharding.Mesh(np.asarray(local), (DATA_AXIS,))
  stacked = NamedSharding(local_mesh, P(DATA_AXIS))
  fn = jax.pmap(step_fn, axis_name=DATA_AXIS,
                in_axes=(0, 0) + (None,) * num_args,
                donate_argnums=donate, devices=all_devices)

  def put_state(tree):
    host = unreplicate_to_host(tree)
    return jax.tree.map(
        lambda x: jax.device_put(
            np.broadcast_to(x, (n_local,) + x.shape), stacked), host)

  def put_batch(batch):
    def split(x):
      x = np.asarray(x)
      if x.shape[0] % n_local:
        raise ValueError(f'local batch of {x.shape[0]} does not split over '
                         f'{n_local} local devices')
      x = x.reshape((n_local, x.shape[0] // n_local) + x.shape[1:])
      return jax.device_put(x, stacked)
    return jax.tree.map(split, batch)

  def get_state(state):
    return replicate(jax.tree.map(_first_replica, state), mesh)

  def get_metrics(metrics):
    return jax.tree.map(_first_replica, metrics)

  return CompiledStep(
      mode=mode, mesh=mesh, fn=fn, put_state=put_state, put_batch=put_batch,
      put_args=lambda tree: jax.device_put(
          unreplicate_to_host(tree), local[0]),
      get_state=get_state, get_metrics=get_metrics)
