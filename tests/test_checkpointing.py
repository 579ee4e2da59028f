"""checkpointing.py: save/restore of a struct train state across device counts."""

import json
import os
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import struct

from l2m_jax import checkpointing
from l2m_jax import parallel
from tests.conftest import REPO_ROOT


@struct.dataclass
class _State:
  step: jax.Array
  rng: jax.Array
  params: dict
  opt_state: optax.OptState


def _init():
  params = {'w': jnp.arange(12, dtype=jnp.float32).reshape(3, 4),
            'b': jnp.ones(4)}
  return _State(step=jnp.zeros((), jnp.int32),
                rng=jax.random.key_data(jax.random.key(3)),
                params=params, opt_state=optax.adam(1e-3).init(params))


def _bump(state, k):
  grads = jax.tree.map(lambda p: jnp.full_like(p, 0.1 * k), state.params)
  updates, opt = optax.adam(1e-3).update(grads, state.opt_state)
  return state.replace(step=state.step + 1,
                       params=optax.apply_updates(state.params, updates),
                       opt_state=opt)


def test_save_keep_and_restore_on_other_device_count(tmp_path):
  mesh4 = parallel.make_mesh(4)
  state = parallel.replicate(_init(), mesh4)
  mngr = checkpointing.make_manager(tmp_path / 'ckpt', save_every=2, keep=2)
  for k in range(1, 7):
    state = _bump(state, k)
    saved = checkpointing.save(mngr, k, state, {'step': k, 'note': 'x'})
    if k > 1:  # orbax always saves the first step it is given
      assert saved == (k % 2 == 0)
  mngr.wait_until_finished()
  assert mngr.all_steps() == [4, 6]
  mngr.close()

  mesh2 = parallel.make_mesh(2)
  mngr = checkpointing.make_manager(tmp_path / 'ckpt', save_every=2, keep=2)
  restored, meta = checkpointing.restore_or_init(
      mngr, _init, parallel.replicated_sharding(mesh2))
  mngr.close()
  assert meta == {'step': 6, 'note': 'x'}
  assert isinstance(restored, _State)
  assert restored.params['w'].sharding.mesh.devices.size == 2
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a),
                                                          np.asarray(b)),
               restored, jax.device_get(state))
  assert int(restored.step) == 6


def test_saving_a_replicated_state_compiles_nothing(tmp_path):
  """Each host writes replicated arrays from one copy: no slicing programs
  (orbax's replica-parallel default compiled one per shape and slice), and
  the checkpoint restores bit for bit."""
  rng = np.random.default_rng(0)
  tree = {f'a{k}': rng.standard_normal(shape).astype(np.float32)
          for k, shape in enumerate([(8, 6), (20,), (3, 3, 4, 12), (12, 28)])}
  mesh = parallel.make_mesh(4)
  state = parallel.replicate(tree, mesh)
  compiles = []

  def listener(event, duration, **_):
    if event == '/jax/core/compile/backend_compile_duration':
      compiles.append(duration)
  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    mngr = checkpointing.make_manager(tmp_path / 'ckpt', 1, 1)
    checkpointing.save(mngr, 1, state, {'step': 1})
    mngr.wait_until_finished()
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  assert not compiles, f'{len(compiles)} programs compiled while saving'
  restored, meta = checkpointing.restore_or_init(
      mngr, lambda: tree, parallel.replicated_sharding(mesh))
  mngr.close()
  assert meta == {'step': 1}
  for k, v in tree.items():
    np.testing.assert_array_equal(np.asarray(restored[k]), v)


def test_restore_or_init_without_checkpoint_initialises(tmp_path):
  mngr = checkpointing.make_manager(tmp_path / 'empty', save_every=1, keep=1)
  state, meta = checkpointing.restore_or_init(
      mngr, _init, parallel.replicated_sharding(parallel.make_mesh(1)))
  mngr.close()
  assert meta is None and int(state.step) == 0
  assert not checkpointing.reached_preemption(mngr, 0)


def test_fingerprint_sees_one_flipped_bit_and_swapped_values():
  state = _init()
  base = checkpointing.fingerprint(state)
  assert set(base) == {'step', 'rng', 'params', 'opt_state'}
  w = np.asarray(state.params['w']).copy()
  flipped = w.view(np.uint32).copy()
  flipped[1, 2] ^= 1 << 7  # one mantissa bit
  changed = checkpointing.fingerprint(state.replace(params={
      **state.params, 'w': jnp.asarray(flipped.view(np.float32))}))
  assert changed['params'] != base['params']
  assert {k: v for k, v in changed.items() if k != 'params'} == {
      k: v for k, v in base.items() if k != 'params'}
  swapped = w.copy()
  swapped[0, [0, 1]] = swapped[0, [1, 0]]
  assert checkpointing.fingerprint(state.replace(params={
      **state.params, 'w': jnp.asarray(swapped)}))['params'] != base['params']
  # The same on any layout (replicated over 4 devices).
  assert checkpointing.fingerprint(
      parallel.replicate(state, parallel.make_mesh(4))) == base


def test_nonfinite_leaves_names_the_arrays():
  state = _init()
  assert checkpointing.nonfinite_leaves(state) == []
  bad = state.replace(params={**state.params,
                              'b': jnp.asarray([0, np.inf, 0, 0], jnp.float32)})
  assert checkpointing.nonfinite_leaves(bad) == ['params/b']


def _saved_steps(tmp_path, steps=(1, 2, 3)):
  mngr = checkpointing.make_manager(tmp_path / 'ckpt', save_every=1, keep=5)
  state = _init()
  for k in steps:
    state = _bump(state, k)
    checkpointing.save(mngr, k, state, {'step': k}, force=True)
  mngr.wait_until_finished()
  return mngr, state


def _corrupt_data_files(step_dir):
  """Flips the second half of every OCDBT data file of a checkpoint.

  Several data files of equal size exist (the per-process store and the
  merged one), and which one restore reads depends on the layout; damaging
  all of them makes the checkpoint damaged whatever orbax reads.
  """
  files = [p for p in step_dir.rglob('*') if p.is_file()
           and '/d/' in p.as_posix()]
  assert files, f'no OCDBT data files under {step_dir}'
  for f in files:
    data = bytearray(f.read_bytes())
    for i in range(len(data) // 2, len(data)):
      data[i] ^= 0x55
    f.write_bytes(bytes(data))


def test_restore_latest_falls_back_past_damaged_checkpoints(tmp_path):
  mngr, _ = _saved_steps(tmp_path)
  mngr.close()
  _corrupt_data_files(tmp_path / 'ckpt' / '3')
  mngr = checkpointing.make_manager(tmp_path / 'ckpt', save_every=1, keep=5)
  rep = parallel.replicated_sharding(parallel.make_mesh(1))
  state, meta = checkpointing.restore_latest(mngr, jax.eval_shape(_init), rep)
  assert meta['step'] == 2 and int(state.step) == 2
  assert mngr.all_steps() == [1, 2]  # step 3 can be saved again
  moved = sorted(p.name for p in (tmp_path / 'ckpt_damaged').iterdir())
  assert moved[0].startswith('3-') and moved[1].endswith('.reason.txt')
  assert 'fingerprint' in (tmp_path / 'ckpt_damaged' / moved[1]).read_text() \
      or 'restore' in (tmp_path / 'ckpt_damaged' / moved[1]).read_text()
  mngr.close()


def test_restore_latest_lets_a_meta_mismatch_through(tmp_path):
  mngr, _ = _saved_steps(tmp_path, steps=(1,))
  rep = parallel.replicated_sharding(parallel.make_mesh(1))

  def check(meta):
    raise checkpointing.CheckpointError(f'does not fit: {meta["step"]}')
  with pytest.raises(checkpointing.CheckpointError, match='does not fit: 1'):
    checkpointing.restore_latest(mngr, jax.eval_shape(_init), rep, check)
  assert mngr.all_steps() == [1]  # nothing moved
  mngr.close()


_HOLDER = '''
import sys, time
from l2m_jax import checkpointing
lock = checkpointing.WorkdirLock(sys.argv[1]).acquire()
print('LOCKED', flush=True)
time.sleep(300)
'''


def test_workdir_lock_refuses_a_live_holder_and_takes_over_a_dead_one(
    tmp_path, monkeypatch):
  from absl import logging  # pylint: disable=g-import-not-at-top
  workdir = tmp_path / 'run'
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3')
  holder = subprocess.Popen([sys.executable, '-c', _HOLDER, str(workdir)],
                            stdout=subprocess.PIPE, text=True, env=env,
                            cwd=REPO_ROOT)
  try:
    assert holder.stdout.readline().strip() == 'LOCKED'
    with pytest.raises(checkpointing.WorkdirLockedError) as e:
      checkpointing.WorkdirLock(workdir).acquire()
    assert f'pid {holder.pid} on host {socket.gethostname()}' in str(e.value)
    holder.kill()  # kill -9: the lock file stays, naming a dead process
    holder.wait()
  finally:
    if holder.poll() is None:
      holder.kill()
      holder.wait()
  seen = []
  monkeypatch.setattr(logging, 'warning',
                      lambda msg, *a: seen.append(msg % a if a else msg))
  with checkpointing.WorkdirLock(workdir):
    assert json.loads((workdir / '.lock').read_text())['pid'] == os.getpid()
    with pytest.raises(checkpointing.WorkdirLockedError):
      checkpointing.WorkdirLock(workdir).acquire()  # held by this run now
  assert any(f'pid {holder.pid}' in s and 'no longer running' in s
             for s in seen), seen
  with checkpointing.WorkdirLock(workdir):  # released: free again, no warning
    pass
