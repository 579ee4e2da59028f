"""checkpointing.py: save/restore of a struct train state across device counts."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from l2m_jax import checkpointing
from l2m_jax import parallel


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


def test_restore_or_init_without_checkpoint_initialises(tmp_path):
  mngr = checkpointing.make_manager(tmp_path / 'empty', save_every=1, keep=1)
  state, meta = checkpointing.restore_or_init(
      mngr, _init, parallel.replicated_sharding(parallel.make_mesh(1)))
  mngr.close()
  assert meta is None and int(state.step) == 0
  assert not checkpointing.reached_preemption(mngr, 0)
