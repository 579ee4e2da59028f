"""parallel.py: step compilation with shard_map and pmap on a toy step.

The toy step has what the L2M step needs from the compiler: an optax update
of replicated params from a pmean-averaged gradient, a double-backprop R1
term, a frozen replicated argument and a pmean-averaged metric. The
reference is the same arithmetic on the whole batch in plain numpy-free jax
without any device logic (one call, no mesh).
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from l2m_jax import losses
from l2m_jax import parallel

TX = optax.adam(1e-2, b1=0.0, b2=0.99)


def _loss(params, frozen, batch):
  x, y = batch['x'], batch['y']
  h = jnp.tanh(x @ params['w'] + params['b']) * frozen['scale']
  pred = h.sum(-1)
  mse = jnp.mean((pred - y) ** 2)
  r1, _ = losses.r1_penalty(
      lambda xx: jnp.tanh(xx @ params['w']).sum(-1), x)
  return mse + 0.1 * r1


def _step(state, batch, frozen):
  params, opt_state = state
  loss, grads = jax.value_and_grad(_loss)(params, frozen, batch)
  grads = jax.lax.pmean(grads, parallel.DATA_AXIS)
  loss = jax.lax.pmean(loss, parallel.DATA_AXIS)
  updates, opt_state = TX.update(grads, opt_state, params)
  return (optax.apply_updates(params, updates), opt_state), {'loss': loss}


def _reference_step(state, batch, frozen):
  params, opt_state = state
  loss, grads = jax.value_and_grad(_loss)(params, frozen, batch)
  updates, opt_state = TX.update(grads, opt_state, params)
  return (optax.apply_updates(params, updates), opt_state), {'loss': loss}


def _init():
  rng = np.random.default_rng(0)
  params = {'w': rng.standard_normal((5, 3)).astype(np.float32),
            'b': np.zeros(3, np.float32)}
  return params, TX.init(params)


def _batches(n, batch_size=8):
  rng = np.random.default_rng(1)
  return [{'x': rng.standard_normal((batch_size, 5)).astype(np.float32),
           'y': rng.standard_normal(batch_size).astype(np.float32)}
          for _ in range(n)]


def _run(mode, num_devices, steps=3):
  mesh = parallel.make_mesh(num_devices)
  compiled = parallel.compile_step(_step, mesh, mode, num_args=1)
  state = compiled.put_state(_init())
  frozen = compiled.put_args({'scale': np.float32(0.7)})
  losses_seen = []
  for batch in _batches(steps):
    state, metrics = compiled(state, compiled.put_batch(batch), frozen)
    losses_seen.append(float(compiled.get_metrics(metrics)['loss']))
  return parallel.unreplicate_to_host(compiled.get_state(state)), losses_seen


def _reference(steps=3):
  state = _init()
  losses_seen = []
  step = jax.jit(_reference_step)
  for batch in _batches(steps):
    state, m = step(state, batch, {'scale': np.float32(0.7)})
    losses_seen.append(float(m['loss']))
  return jax.device_get(state), losses_seen


@pytest.mark.parametrize('mode,num_devices', [
    ('shard_map', 4), ('shard_map', 1), ('pmap', 4), ('pmap', 2)])
def test_parallel_step_matches_whole_batch_reference(mode, num_devices):
  want_state, want_losses = _reference()
  got_state, got_losses = _run(mode, num_devices)
  np.testing.assert_allclose(got_losses, want_losses, rtol=1e-5, atol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6),
               got_state, want_state)
  # The update moved the params, so the comparison is not vacuous.
  assert np.abs(got_state[0]['w'] - _init()[0]['w']).max() > 1e-3


def test_pmap_and_shard_map_agree():
  a, la = _run('shard_map', 4)
  b, lb = _run('pmap', 4)
  np.testing.assert_allclose(la, lb, rtol=1e-6)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=1e-6), a, b)


@pytest.mark.parametrize('mode', parallel.PARALLEL_MODES)
def test_frozen_args_are_placed_once_per_device(mode):
  # put_args puts one copy on every device of the mesh; a step on placed
  # inputs then moves nothing between devices or from the host (pmap with
  # in_axes None would copy the frozen tree from one device every call).
  mesh = parallel.make_mesh(4)
  c = parallel.compile_step(_step, mesh, mode, num_args=1)
  frozen = c.put_args({'scale': np.float32(0.7)})
  leaf = frozen['scale']
  assert {s.device for s in leaf.addressable_shards} == set(
      mesh.devices.flat)
  state = c.put_state(_init())
  batch = c.put_batch(_batches(1)[0])
  state, _ = c(state, batch, frozen)  # compile outside the guard
  jax.block_until_ready(state)
  with jax.transfer_guard('disallow'):
    for _ in range(2):
      state, metrics = c(state, batch, frozen)
    jax.block_until_ready((state, metrics))


def test_state_layouts_round_trip():
  mesh = parallel.make_mesh(4)
  state = _init()
  for mode in parallel.PARALLEL_MODES:
    c = parallel.compile_step(_step, mesh, mode, num_args=1)
    placed = c.put_state(state)
    if mode == 'pmap':
      assert placed[0]['w'].shape == (4, 5, 3)
    back = c.get_state(placed)
    assert back[0]['w'].sharding.is_fully_replicated
    np.testing.assert_array_equal(np.asarray(back[0]['w']), state[0]['w'])


def test_batch_size_validation_names_the_field():
  mesh = parallel.make_mesh(4)
  assert parallel.per_device_batch_size(8, mesh) == 2
  with pytest.raises(ValueError, match='batch_size=6'):
    parallel.per_device_batch_size(6, mesh)
  with pytest.raises(ValueError, match='parallel='):
    parallel.compile_step(_step, mesh, 'dp')


def test_map_batches_matches_unbatched_apply():
  """Padding, sharding over 4 devices and unpadding change nothing."""
  rng = np.random.default_rng(3)
  w = rng.standard_normal((5, 3)).astype(np.float32)
  data = {'x': rng.standard_normal((11, 5)).astype(np.float32),
          'k': np.arange(11, dtype=np.float32)}
  fn = jax.jit(lambda w_, b: {'y': jnp.tanh(b['x'] @ w_) * b['k'][:, None],
                              'n': b['k'] + 1})
  seen = []
  out = parallel.map_batches(fn, data, batch_size=6, args=(w,),
                             on_batch=seen.append)
  want = np.tanh(data['x'] @ w) * data['k'][:, None]
  np.testing.assert_allclose(out['y'], want, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(out['n'], data['k'] + 1)
  # 6 rounds up to 8 (4 devices): chunks of 8 and 3 valid rows.
  assert seen == [8, 3]


def test_map_batches_splits_every_batch_over_all_local_devices():
  """Each call gets a 4-device sharded batch; out_axis=1 outputs unpad."""
  rng = np.random.default_rng(4)
  x = rng.standard_normal((7, 3)).astype(np.float32)
  jitted = jax.jit(lambda s, b: jnp.stack([b * s, b + s]))  # [2, B, 3]
  shardings = []

  def fn(s, b):
    shardings.append(b.sharding)
    return jitted(s, b)
  seen = []
  out = parallel.map_batches(fn, x, batch_size=4, args=(np.float32(2.0),),
                             on_batch=seen.append, out_axis=1)
  assert seen == [4, 3]  # a ragged last batch, padded to 4 and unpadded
  assert len(shardings) == 2
  for sharding in shardings:
    assert sharding.device_set == set(jax.local_devices())
    assert sharding.shard_shape((4, 3)) == (1, 3)
  np.testing.assert_array_equal(out, np.stack([x * 2, x + 2]))


def test_map_batches_errors():
  fn = jax.jit(lambda b: b)
  with pytest.raises(ValueError, match='leading sizes'):
    parallel.map_batches(fn, (np.zeros((3, 1)), np.zeros((4, 1))),
                         batch_size=4)
  with pytest.raises(ValueError, match='empty input'):
    parallel.map_batches(fn, np.zeros((0, 2)), batch_size=4)
  with pytest.raises(ValueError, match='batch_size=0'):
    parallel.map_batches(fn, np.zeros((2, 2)), batch_size=0)


def test_process_slices_cover_every_item_once_in_order():
  for n in (0, 1, 5, 8, 13):
    for count in (1, 2, 3, 4):
      shares = [list(range(n))[parallel.process_slice(n, i, count)]
                for i in range(count)]
      assert sum(shares, []) == list(range(n))
      sizes = [len(s) for s in shares]
      assert max(sizes) - min(sizes) <= 1
      assert max(sizes) == parallel.max_share(n, count)


def test_single_process_collectives_are_identities():
  x = np.arange(6, dtype=np.float64).reshape(2, 3) / 7
  (got,) = parallel.gather_stats([x])
  np.testing.assert_array_equal(got[0], x)
  np.testing.assert_array_equal(parallel.broadcast_from_main(x), x)
  np.testing.assert_array_equal(parallel.gather_to_main(x, 1), x[:1])
  assert parallel.any_process(True) and not parallel.any_process(False)
  assert parallel.all_processes(True) and not parallel.all_processes(False)
  assert not parallel.reached_preemption_sync_point(3)
  parallel.sync('noop')


def test_prefetch_places_items_ahead_in_order():
  placed = []

  def put(item):
    placed.append(item)
    return ('on device', item)

  gen = parallel.prefetch(iter(range(5)), put, size=2)
  assert placed == []  # nothing happens before the first item is asked for
  assert next(gen) == ('on device', 0)
  assert placed == [0, 1, 2]  # item 0 handed out, 1 and 2 already placed
  assert [x for _, x in gen] == [1, 2, 3, 4]
  assert placed == [0, 1, 2, 3, 4]
  no_ahead = parallel.prefetch(iter(range(3)), put, size=0)
  placed.clear()
  assert next(no_ahead) == ('on device', 0) and placed == [0]
  with pytest.raises(ValueError, match='size=-1'):
    next(parallel.prefetch(iter(range(3)), put, size=-1))


class _Output:
  """A step output that records when the window waits for it."""

  def __init__(self, index, waited):
    self.index, self._waited = index, waited

  def block_until_ready(self):
    self._waited.append(self.index)
    return self


def test_dispatch_window_waits_for_the_step_size_places_back():
  waited = []
  window = parallel.DispatchWindow(3)
  for i in range(8):
    window.push({'loss': _Output(i, waited)})
    # After step i is dispatched, steps 0 .. i-3 have been waited for, in
    # order, each once; the 3 newest are left running.
    assert waited == list(range(max(0, i - 2)))
  with pytest.raises(ValueError, match='size=0'):
    parallel.DispatchWindow(0)


def _slow_step(w, batch, frozen):
  """Matrix products that take far longer than their dispatch."""
  del frozen
  x = batch['x']
  for _ in range(4):
    x = jnp.tanh(x @ w)
  g = jax.lax.pmean(jnp.mean(x, 0), parallel.DATA_AXIS)
  return w - 1e-3 * g[None, :], {'g': jnp.sum(g)}


def test_dispatch_window_leaves_at_most_size_multi_device_steps_running():
  # Without the window the host would be many steps ahead here (a step
  # computes for milliseconds, its dispatch takes microseconds).
  mesh = parallel.make_mesh()
  compiled = parallel.compile_step(_slow_step, mesh, num_args=1)
  state = compiled.put_state(np.eye(512, dtype=np.float32) * 0.5)
  x = np.random.default_rng(0).standard_normal((256, 512), np.float32)
  batch, frozen = compiled.put_batch({'x': x}), compiled.put_args({})
  window = parallel.DispatchWindow(2)
  seen = []
  for _ in range(30):
    state, metrics = compiled(state, batch, frozen)
    window.push(metrics)
    seen.append(metrics['g'])
    assert all(m.is_ready() for m in seen[:-2])


@pytest.mark.parametrize('mode', ['shard_map', 'pmap'])
def test_train_loop_dispatches_through_the_window(mode, tmp_path,
                                                  monkeypatch):
  """Every step's metrics go through a window of the default size."""
  from l2m_jax import checkpointing  # pylint: disable=g-import-not-at-top
  from l2m_jax import training  # pylint: disable=g-import-not-at-top
  pushed = []

  class Recording(parallel.DispatchWindow):

    def push(self, outputs):
      pushed.append((self.size, outputs))
      super().push(outputs)

  monkeypatch.setattr(parallel, 'DispatchWindow', Recording)
  mesh = parallel.make_mesh()
  compiled = parallel.compile_step(_step, mesh, mode, num_args=1)
  batches = (compiled.put_batch(b) for b in _batches(7))
  mngr = checkpointing.make_manager(str(tmp_path / 'ckpt'), 100, 1)
  writer = training.create_writer(str(tmp_path), just_logging=True)
  final = training.train_loop(
      compiled, parallel.replicate(_init(), mesh), batches,
      compiled.put_args({'scale': np.float32(0.7)}), start=0, total=7,
      resumed=False, mngr=mngr, meta={}, writer=writer,
      preempt=training.Preemption(), log_every=100, save_every=100)
  mngr.close()
  assert [size for size, _ in pushed] == [parallel.MAX_STEPS_IN_FLIGHT] * 7
  want_state, want_losses = _run(mode, 4, steps=7)
  got = [float(compiled.get_metrics(m)['loss']) for _, m in pushed]
  assert got == pytest.approx(want_losses, rel=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6),
               parallel.unreplicate_to_host(final), want_state)


@pytest.mark.parametrize('mode', ['shard_map', 'pmap'])
def test_compile_in_background_then_compile_ahead_traces_once(mode):
  # The step's Python body runs once per trace. A background compilation
  # for abstract inputs (ShapeDtypeStructs with the shardings the layout
  # helpers give) must leave compile_ahead on the concrete inputs nothing to
  # trace; under pmap nothing starts in the background.
  traces = []

  def step(state, batch, scale):
    traces.append(1)
    g = jax.lax.pmean(jnp.mean(batch['x'], axis=0) * scale, parallel.DATA_AXIS)
    return {'w': state['w'] - 0.1 * g}, {'g': jnp.sum(g)}

  mesh = parallel.make_mesh(2)
  compiled = parallel.compile_step(step, mesh, mode, num_args=1)
  state = compiled.put_state(
      parallel.init_replicated(lambda: {'w': jnp.zeros(3)}, mesh))
  batch = compiled.put_batch({'x': np.ones((4, 3), np.float32)})
  scale = compiled.put_args(jnp.float32(2.0))
  rep, data = parallel.replicated_sharding(mesh), parallel.data_sharding(mesh)
  abstract = lambda tree, sharding: jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
      tree)
  compiled.compile_in_background(abstract({'w': jnp.zeros(3)}, rep),
                                 abstract({'x': np.ones((4, 3), np.float32)},
                                          data), scale).wait()
  assert len(traces) == (1 if mode == 'shard_map' else 0)
  ready = compiled.compile_ahead(state, batch, scale)
  assert len(traces) == 1
  new, _ = ready(state, batch, scale)
  np.testing.assert_allclose(
      parallel.unreplicate_to_host(ready.get_state(new))['w'], [-0.2] * 3)
  # What the compilation raises, wait() raises.
  wrong = abstract({'x': np.ones((4, 5), np.float32)}, data)
  background = compiled.compile_in_background(
      abstract({'w': jnp.zeros(3)}, rep), wrong, scale)
  if mode == 'shard_map':
    with pytest.raises(TypeError):
      background.wait()


def test_compilation_cache_is_written_and_reused(tmp_path):
  # In a fresh process (JAX reads the cache setting once): the first run
  # compiles and writes the cache, the second loads it.
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  from tests import conftest  # pylint: disable=g-import-not-at-top
  script = (
      'import sys, jax, jax.numpy as jnp\n'
      'from jax._src import monitoring\n'
      'from l2m_jax import parallel\n'
      'hits = []\n'
      'monitoring.register_event_listener(lambda e, **k: hits.append(e))\n'
      'print(parallel.enable_compilation_cache(sys.argv[1], 0.0))\n'
      'f = jax.jit(lambda x: jnp.sin(x) @ x.T + 1)\n'
      'f(jnp.ones((64, 64))).block_until_ready()\n'
      "print('HIT' if '/jax/compilation_cache/cache_hits' in hits else "
      "'MISS')\n")
  env = {k: v for k, v in os.environ.items()
         if k != 'JAX_COMPILATION_CACHE_DIR'}
  outs = []
  for _ in range(2):
    proc = subprocess.run([sys.executable, '-c', script, str(tmp_path / 'c')],
                          cwd=conftest.REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    outs.append(proc.stdout.split())
  assert outs[0] == [str(tmp_path / 'c'), 'MISS'], outs
  assert outs[1] == [str(tmp_path / 'c'), 'HIT'], outs
  assert any((tmp_path / 'c').iterdir())


def test_check_dispatch_script_runs_a_bounded_loop():
  """scripts/check_dispatch.py, at a small size: a fresh process trains
  through the window and reports it finished."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  proc = subprocess.run(
      [sys.executable, os.path.join(root, 'scripts', 'check_dispatch.py'),
       '--window', '2', '--runs', '1', '--steps', '12', '--width', '64',
       '--batch', '16'], capture_output=True, text=True, timeout=300,
      check=False)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  assert 'finished 12 steps' in proc.stdout
  assert '1 of 1 runs finished' in proc.stdout
  bad = subprocess.run(
      [sys.executable, os.path.join(root, 'scripts', 'check_dispatch.py'),
       '--window', '-1'], capture_output=True, text=True, timeout=60,
      check=False)
  assert bad.returncode == 2 and '--window must be >= 0' in bad.stderr
