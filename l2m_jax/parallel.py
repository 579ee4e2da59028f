"""Devices, meshes, shardings and step compilation: the only module that knows about devices.

One 1-D mesh with axis name 'data' spans every device of every process.
Batches are split along their leading axis over 'data'; parameters and train
states are replicated. Multi-host: each process passes its own slice of the
global batch to `shard_batch`, which assembles the global array with
`jax.make_array_from_process_local_data`.

Train steps are written per device, as pmap code is (the local batch shard
in, gradients and metrics averaged with `jax.lax.pmean(x, DATA_AXIS)`), and
compiled here by `compile_step`, either with `jax.jit(shard_map(...))` over
the mesh (default) or with `jax.pmap`.

Inference (FID features, edits, latent inversion and rendering) runs per
process on `local_mesh()` through `map_batches`, the one pad -> shard ->
apply -> unpad helper.

Processes: `process_slice` gives each process its share of a list of inputs;
`is_main_process` says which one writes files; `sync` is a barrier every
process must reach; `any_process` / `all_processes` agree on a flag (stop
decisions, cache hits); `gather_stats` collects float64 host arrays from
every process bit-exactly (FID statistics); `gather_to_main` brings host
arrays of every process to the main one (images it writes). Each of these
is a collective when there are several processes: every process must call
it, in the same order.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import os
from typing import Any, Callable, Sequence

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = 'data'


def make_mesh(num_devices: int | None = None) -> jax.sharding.Mesh:
  """A ('data',) mesh over all devices (or the first `num_devices`).

  The axis type is passed explicitly as Auto: JAX 0.10 defaults to Explicit,
  under which concatenating a batch-sharded array with a replicated one fails
  with ShardingTypeError.
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


def local_mesh(num_devices: int | None = None) -> jax.sharding.Mesh:
  """A ('data',) mesh over this process's devices only.

  Inference (FID features, edits, inversion) runs on it: each process works
  on its own share of the inputs with no cross-process collective, so the
  processes need not make the same number of calls.

  Args:
    num_devices: use only the first this many local devices (e.g. one photo
      need not be padded to one copy per device); all when None.
  """
  kwargs = {}
  axis_type = getattr(jax.sharding, 'AxisType', None)
  if axis_type is not None:
    kwargs['axis_types'] = (axis_type.Auto,)
  devices = jax.local_devices()
  if num_devices is not None:
    if not 1 <= num_devices <= len(devices):
      raise ValueError(f'num_devices={num_devices}: must be in '
                       f'[1, {len(devices)}]')
    devices = devices[:num_devices]
  return jax.make_mesh((len(devices),), (DATA_AXIS,), devices=devices,
                       **kwargs)


def _place_replicated(x: Any, sharding: NamedSharding) -> Any:
  if isinstance(x, jax.Array) and x.sharding == sharding:
    return x
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    x = _local_value(x)  # a global replicated array: take this host's copy
  return jax.device_put(x, sharding)


def replicate_local(tree: Any, mesh: jax.sharding.Mesh) -> Any:
  """Places a pytree replicated on a process-local mesh (no-op if placed)."""
  rep = replicated_sharding(mesh)
  return jax.tree.map(lambda x: _place_replicated(x, rep), tree)


def round_up_batch(batch_size: int, mesh: jax.sharding.Mesh,
                   name: str = 'batch_size') -> int:
  """`batch_size` rounded up to a multiple of the mesh's device count."""
  if batch_size < 1:
    raise ValueError(f'{name}={batch_size}: must be >= 1')
  n = mesh.devices.size
  return -(-batch_size // n) * n


def map_batches(fn: Callable[..., Any], data: Any, *, batch_size: int,
                args: Sequence[Any] = (), mesh: jax.sharding.Mesh | None = None,
                on_batch: Callable[[int], None] | None = None,
                out_axis: int = 0) -> Any:
  """Applies `fn(*args, batch)` over the leading axis of `data`, in batches.

  The one inference batching helper: pads each chunk to `batch_size` rows
  (repeating the last row, so one compilation serves every chunk), splits
  it over the mesh's 'data' axis, applies `fn`, and drops the padded rows.
  The next chunk is dispatched before the previous result is fetched, so
  host work overlaps device work.

  Args:
    fn: a jitted function `(*args, batch) -> outputs`; `batch` carries the
      batch on its leading axis, every output leaf on `out_axis`.
    data: a pytree of arrays, all with the same leading size N (this
      process's share in a multi-process run).
    batch_size: rows per call; rounded up to a multiple of the device count.
    args: replicated arguments (parameters), placed once on the mesh.
    mesh: a process-local ('data',) mesh; `local_mesh()` when None.
    on_batch: called with the number of valid rows after each chunk
      (progress bars).
    out_axis: the batch axis of fn's outputs (1 for `editing.edit_sweep`'s
      [degrees, B, ...]).

  Returns:
    The outputs as numpy arrays, size N on `out_axis` (a pytree like fn's
    output).
  """
  mesh = local_mesh() if mesh is None else mesh
  if not all(d.process_index == jax.process_index()
             for d in mesh.devices.flat):
    raise ValueError('map_batches needs a process-local mesh (local_mesh())')
  bs = round_up_batch(batch_size, mesh)
  leaves = jax.tree.leaves(data)
  if not leaves:
    raise ValueError('map_batches: no input arrays')
  n = int(np.shape(leaves[0])[0])
  for leaf in leaves:
    if np.shape(leaf)[0] != n:
      raise ValueError(f'map_batches: inputs have leading sizes '
                       f'{sorted({np.shape(x)[0] for x in leaves})}; '
                       'expected one size')
  if n == 0:
    raise ValueError('map_batches: empty input (leading size 0)')
  placed = [replicate_local(a, mesh) for a in args]
  sharding = data_sharding(mesh)
  outs, pending = [], None

  def collect(item):
    out, valid = item
    rows = (slice(None),) * out_axis + (slice(valid),)
    outs.append(jax.tree.map(lambda y: np.asarray(y)[rows], out))
    if on_batch is not None:
      on_batch(valid)

  for start in range(0, n, bs):
    chunk = jax.tree.map(lambda x: np.asarray(x[start:start + bs]), data)
    valid = min(bs, n - start)
    chunk = jax.tree.map(lambda x: pad_to_multiple(x, bs)[0], chunk)
    out = fn(*placed, jax.device_put(chunk, sharding))
    if pending is not None:
      collect(pending)
    pending = (out, valid)
  if pending is not None:
    collect(pending)
  return jax.tree.map(lambda *ys: np.concatenate(ys, axis=out_axis), *outs)


def prefetch(iterator: Any, put: Callable[[Any], Any], size: int = 2
             ) -> Any:
  """Yields put(item) for each item, with `size` items placed ahead.

  `put` (e.g. `CompiledStep.put_batch`) starts an asynchronous host-to-device
  copy; keeping `size` placed batches queued lets the copies of the next
  batches run while the current step computes, so the step never waits for
  its input (the device prefetch queue of the train loop). size 0 places
  each item only when it is asked for.
  """
  if size < 0:
    raise ValueError(f'prefetch size={size}: must be >= 0')
  queue = collections.deque()
  iterator = iter(iterator)

  def fill(n):
    for item in itertools.islice(iterator, n):
      queue.append(put(item))

  fill(size)
  while True:
    if not queue:
      fill(1)
      if not queue:
        return
    item = queue.popleft()
    fill(1 if size else 0)
    yield item


# Steps a training loop may have dispatched and not yet finished.
MAX_STEPS_IN_FLIGHT = 4


class DispatchWindow:
  """Keeps the host at most `size` dispatched steps ahead of the devices.

  JAX dispatches asynchronously: a loop that reads no result queues steps
  without limit. With several CPU devices that can deadlock XLA's CPU
  client (docs/reliability.md, "Bounded dispatch"): each device admits only
  so many unfinished computations, a step waits for that admission on one
  of the client's worker threads, and those threads are only as many as the
  devices on a host with no more cores than devices. Once the queue is full,
  the next step's launches can hold every worker thread while a device's
  part of the previous step still waits for one, and that step's all-reduce
  never completes. The window keeps the queue short on every backend; the
  devices still have `size` steps queued, so they never idle.

  `push(outputs)` after each dispatch: it returns at once while fewer than
  `size` earlier steps are unfinished, else waits for the oldest one's
  outputs (not donated ones: pass the metrics, not the state).
  """

  def __init__(self, size: int = MAX_STEPS_IN_FLIGHT):
    if size < 1:
      raise ValueError(f'DispatchWindow size={size}: must be >= 1')
    self.size = size
    self._queue = collections.deque()

  def push(self, outputs: Any) -> None:
    self._queue.append(outputs)
    while len(self._queue) > self.size:
      jax.block_until_ready(self._queue.popleft())


def enable_compilation_cache(path: str, min_compile_secs: float = 1.0
                             ) -> str:
  """Turns on JAX's persistent compilation cache in `path`, if none is set.

  Compiled programs that took at least `min_compile_secs` to compile are
  written there and loaded by later runs instead of compiling again (the
  train step of a restarted run). A cache directory configured before
  (JAX_COMPILATION_CACHE_DIR, or an earlier call) is kept: JAX reads the
  setting once per process.

  Returns:
    The cache directory in use.
  """
  current = jax.config.jax_compilation_cache_dir
  if current:
    return current
  os.makedirs(path, exist_ok=True)
  jax.config.update('jax_compilation_cache_dir', path)
  jax.config.update('jax_persistent_cache_min_compile_time_secs',
                    float(min_compile_secs))
  return path


# ---------------------------------------------------------------------------
# Processes: shares, barriers, agreement, gathers.
# ---------------------------------------------------------------------------


def process_index() -> int:
  return jax.process_index()


def process_count() -> int:
  return jax.process_count()


def is_main_process() -> bool:
  """True on the one process that writes files (process 0)."""
  return jax.process_index() == 0


def process_slice(n: int, index: int | None = None,
                  count: int | None = None) -> slice:
  """This process's contiguous share of n items (sizes differ by at most 1).

  Shares are in process order, so concatenating them in process order gives
  the items in their original order.
  """
  index = jax.process_index() if index is None else index
  count = jax.process_count() if count is None else count
  base, extra = divmod(int(n), count)
  start = index * base + min(index, extra)
  return slice(start, start + base + (1 if index < extra else 0))


def process_batch(global_batch: int, index: int | None = None,
                  count: int | None = None) -> slice:
  """This process's rows of every global training batch.

  Raises:
    ValueError: global_batch is not a multiple of the process count (every
      process must feed the same number of rows to the step).
  """
  count = jax.process_count() if count is None else count
  if global_batch % count:
    raise ValueError(f'batch_size={global_batch}: must be a multiple of the '
                     f'process count ({count})')
  return process_slice(global_batch, index, count)


def per_process_batch(global_batch: int) -> int:
  """Per-process batch of an evaluation whose global batch is given."""
  return max(1, int(global_batch) // jax.process_count())


def max_share(n: int, count: int | None = None) -> int:
  """The largest share any process gets of n items (see process_slice)."""
  count = jax.process_count() if count is None else count
  return -(-int(n) // count)


_SYNC_COUNTER = itertools.count()
# Seconds a process waits at a barrier for the others (slow compiles and
# O(D^3) FID work on the main process happen between barriers).
BARRIER_TIMEOUT_S = 3600


def sync(name: str) -> None:
  """A barrier every process must reach (a no-op with one process).

  It waits on the coordination service of jax.distributed (up to
  BARRIER_TIMEOUT_S), not on a device collective: CPU collectives (gloo)
  give up when processes arrive more than 30 s apart, so every collective
  of this module is preceded by such a barrier.
  """
  if jax.process_count() > 1:
    import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
    barrier = ocp.multihost.get_barrier_sync_fn()
    barrier(key=f'l2m_{name}_{next(_SYNC_COUNTER)}',
            timeout_ms=BARRIER_TIMEOUT_S * 1000)


def _allgather(x: np.ndarray) -> np.ndarray:
  """[P, ...]: x of every process, in process order (a collective)."""
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  sync('allgather')
  return np.asarray(multihost_utils.process_allgather(np.asarray(x),
                                                      tiled=False))


def _flags(flag: bool) -> np.ndarray:
  if jax.process_count() == 1:
    return np.asarray([bool(flag)])
  return _allgather(np.asarray([int(bool(flag))], np.int32))[:, 0] > 0


def any_process(flag: bool) -> bool:
  """True on every process when `flag` is True on any (a collective)."""
  return bool(np.any(_flags(flag)))


def all_processes(flag: bool) -> bool:
  """True on every process when `flag` is True on all (a collective)."""
  return bool(np.all(_flags(flag)))


def gather_stats(arrays: Sequence[np.ndarray]) -> list[list[np.ndarray]]:
  """Host arrays of every process, bit-exact, in process order (a collective).

  float64 travels as its raw bytes (JAX computes in float32 unless x64 is
  on), so the result is exactly what each process holds. Every process
  must pass arrays of the same shapes and dtypes.

  Returns:
    [process][i] -> the i-th array of that process.
  """
  arrays = [np.ascontiguousarray(a) for a in arrays]
  if jax.process_count() == 1:
    return [arrays]
  raw = np.concatenate([a.reshape(-1).view(np.uint8) for a in arrays])
  pad = (-raw.size) % 4
  words = np.concatenate([raw, np.zeros(pad, np.uint8)]).view(np.uint32)
  gathered = _allgather(words)  # [P, W] uint32
  out = []
  for row in gathered:
    buf = np.ascontiguousarray(row).view(np.uint8)
    items, offset = [], 0
    for a in arrays:
      items.append(buf[offset:offset + a.nbytes].view(a.dtype).reshape(
          a.shape).copy())
      offset += a.nbytes
    out.append(items)
  return out


def broadcast_from_main(values: np.ndarray) -> np.ndarray:
  """The main process's array on every process, bit-exact (a collective).

  Every process passes an array of the same shape and dtype (the others'
  contents are ignored).
  """
  return gather_stats([np.asarray(values)])[0][0]


def gather_to_main(x: np.ndarray, valid: int) -> np.ndarray | None:
  """Rows of every process's x[:valid], concatenated in process order.

  A collective: every process passes an array of the same shape and dtype
  (pad it) and the number of its valid rows. Returns the rows on the main
  process and None elsewhere.
  """
  x = np.asarray(x)
  if jax.process_count() == 1:
    return x[:valid]
  counts = _allgather(np.asarray([int(valid)], np.int32))[:, 0]
  rows = _allgather(x)
  if not is_main_process():
    return None
  return np.concatenate([r[:int(c)] for r, c in zip(rows, counts)], axis=0)


def preemption_service_available() -> bool:
  """Whether JAX's preemption service runs (multi-process runs, by default)."""
  if jax.process_count() == 1:
    return False
  return bool(getattr(jax.config, 'jax_enable_preemption_service', True))


def reached_preemption_sync_point(step: int) -> bool:
  """True on every process at the same step once any process got SIGTERM.

  Multi-process runs only: JAX's preemption service (started by
  `jax.distributed.initialize`) catches SIGTERM on any process and all
  processes agree on the next step as the stop step. Must be called at every
  step by every process. Always False with one process.
  """
  if jax.process_count() == 1:
    return False
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return bool(multihost_utils.reached_preemption_sync_point(int(step)))


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


# XLA backend optimisation level of the initial state's program. That
# program is nearly all random-number code (a He init per kernel), which the
# heaviest LLVM level does not speed up: level 1 compiled the demo's initial
# state in 13.0 s instead of 21.9 s with bit-identical weights (2-core CPU,
# jax 0.10.2; docs/benchmarks.md), while level 0 changed 121 of 559 arrays in
# their last bits. Exactness is checked by
# tests/test_train_l2m.py::test_init_replicated_matches_the_default_compile.
INIT_OPTIMIZATION_LEVEL = 1


def init_replicated(init_fn: Callable[..., Any], mesh: jax.sharding.Mesh,
                    *args) -> Any:
  """Runs `init_fn(*args)` under jit with replicated outputs ([BV] style).

  Compiled at XLA backend optimisation level `INIT_OPTIMIZATION_LEVEL`.
  The outputs carry no weak types (a counter such as flax's
  `TrainState.step = 0` would), as a restored state carries none: a step
  compiled for one serves the other (`CompiledStep.compile_in_background`).
  """
  def strong(*a):
    def one(x):
      x = jax.numpy.asarray(x)  # Python scalars too
      weak = getattr(getattr(x, 'aval', x), 'weak_type', False)
      return jax.lax.convert_element_type(x, x.dtype) if weak else x
    return jax.tree.map(one, init_fn(*a))

  lowered = jax.jit(strong, out_shardings=replicated_sharding(mesh)).lower(
      *args)
  options = {'xla_backend_optimization_level': INIT_OPTIMIZATION_LEVEL}
  return lowered.compile(compiler_options=options)(*args)


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
    put_args: replicated extra arguments (frozen params) -> this layout,
      one copy per device, placed once (pass the result to every call).
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

  def compile_ahead(self, state, batch, *args) -> 'CompiledStep':
    """This step compiled now for these inputs; then a barrier.

    The first call of a jitted step compiles it, and processes finish
    compiling at different times; CPU collectives (gloo) fail when the
    processes reach the step's first collective more than 30 s apart. So
    the step is compiled ahead of time (the returned CompiledStep runs the
    compiled executable) and every process waits for the others before the
    first step.
    """
    lower = getattr(self.fn, 'lower', None)
    fn = self.fn if lower is None else lower(state, batch, *args).compile()
    sync('step_compiled')
    return dataclasses.replace(self, fn=fn)

  def compile_in_background(self, state, batch, *args) -> 'BackgroundCompile':
    """Starts lowering and compiling the step in a thread, now.

    The inputs may be arrays or `jax.ShapeDtypeStruct`s with their
    shardings. A later `compile_ahead` with inputs of the same shapes,
    dtypes, weak types and shardings finds the executable in JAX's caches
    and compiles nothing; with others it compiles as it would have. So the
    step's tracing and XLA compilation (tens of seconds for a GAN on a CPU)
    overlap whatever the caller does meanwhile: initialising or restoring
    the state, building the input pipeline. Only the jit (shard_map) layout
    has ahead-of-time lowering; for pmap nothing is started.
    """
    return BackgroundCompile(self, state, batch, *args)


class BackgroundCompile:
  """A step's ahead-of-time compilation running in a daemon thread.

  `wait()` joins it and raises what the compilation raised, if anything.
  """

  def __init__(self, step: CompiledStep, state, batch, *args):
    import threading  # pylint: disable=g-import-not-at-top
    self.error: BaseException | None = None
    lower = getattr(step.fn, 'lower', None)
    self._thread = None
    if step.mode != 'shard_map' or lower is None:
      return

    def run():
      try:
        lower(state, batch, *args).compile()
      except BaseException as e:  # pylint: disable=broad-except
        self.error = e

    self._thread = threading.Thread(target=run, name='step-compile',
                                    daemon=True)
    self._thread.start()

  def wait(self) -> None:
    if self._thread is not None:
      self._thread.join()
    if self.error is not None:
      raise self.error


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
  # The extra arguments (frozen networks) are placed once, one copy per
  # local device, like the state (in_axes 0): with in_axes None pmap would
  # copy them from one device to every device at every call.
  fn = jax.pmap(step_fn, axis_name=DATA_AXIS,
                in_axes=(0, 0) + (0,) * num_args,
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
      put_args=put_state, get_state=get_state, get_metrics=get_metrics)
