"""Latent-To-Latent training: step equivalences, resume, learning, bad input.

Everything runs on configs/l2l_tiny.py: random small frozen networks (a
16 px StyleGAN2 with 32-d latents, a calibrated 3-output regressor, a 16-d
identity network), sampled latents, 4 virtual CPU devices.
"""

import functools
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import l2l_tiny
from l2m_jax import checkpointing
from l2m_jax import errors
from l2m_jax import l2l_data
from l2m_jax import l2l_eval
from l2m_jax import l2l_networks
from l2m_jax import parallel
from l2m_jax import train_l2l
from l2m_jax.convert import mapper as cm
from l2m_jax.convert import torch_to_flax as t2f
from tests.conftest import REPO_ROOT, compilation_env

# Adam's eps = 1 keeps the first updates linear in the gradient, so device
# layouts that sum in another order stay within round-off (see conftest).
RUN = dict(adam_eps=1.0, lr=1e-2)


def _config(arg='', **kw):
  c = l2l_tiny.get_config(arg)
  c.update(RUN)
  c.update(kw)
  return c


@pytest.fixture(scope='module')
def paper():
  config = _config()
  nets, frozen = l2l_networks.load_networks(config)
  return config, nets, frozen


def _host(tree):
  return parallel.unreplicate_to_host(tree)


def _max_diff(a, b):
  return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _run_steps(config, nets, frozen, mode, n_dev, steps=2):
  mesh = parallel.make_mesh(n_dev)
  compiled = parallel.compile_step(
      functools.partial(train_l2l.train_step, nets=nets, config=config),
      mesh, mode, num_args=1)
  state = train_l2l.create_train_state(config, nets, jax.random.key(0))
  st, fr = compiled.put_state(state), compiled.put_args(frozen)
  data = l2l_data.Data(None, np.zeros((1,)))
  for s in range(steps):
    st, metrics = compiled(st, compiled.put_batch(
        l2l_data.host_batch(config, data, s)), fr)
  return _host(compiled.get_state(st)), compiled.get_metrics(metrics)


def test_four_devices_equal_one_device_and_pmap_equals_shard_map(paper):
  """The same global batch (8 sampled latents) on 1 and 4 devices."""
  config, nets, frozen = paper
  one, m1 = _run_steps(config, nets, frozen, 'shard_map', 1)
  four, m4 = _run_steps(config, nets, frozen, 'shard_map', 4)
  pm, mp = _run_steps(config, nets, frozen, 'pmap', 4)
  d14 = _max_diff(one.mapper.params, four.mapper.params)
  dpm = _max_diff(four.mapper.params, pm.mapper.params)
  print(f'mapper params after 2 steps: 1 vs 4 devices {d14:.3g}, '
        f'shard_map vs pmap {dpm:.3g}')
  assert d14 <= 1e-5 and dpm <= 1e-5
  # The step changed the mapper (the comparison is not of initial values).
  init = train_l2l.init_mapper_params(config, nets, jax.random.key(0))
  assert _max_diff(one.mapper.params, init) > 1e-3
  for k in m1:
    np.testing.assert_allclose(m4[k], m1[k], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(mp[k], m4[k], rtol=1e-5, atol=1e-7)


def test_frozen_networks_get_no_gradient(paper):
  """The step differentiates the mapper only: d loss / d frozen == 0, and
  the optimiser state holds the mapper's parameters only."""
  config, nets, frozen = paper
  state = train_l2l.create_train_state(config, nets, jax.random.key(0))
  # Non-zero last layers, so the gradient reaches every frozen network.
  state = state.replace(mapper=state.mapper.replace(params=jax.tree.map(
      lambda p: p + 0.05, state.mapper.params)))
  batch = jax.tree.map(lambda x: x[None], l2l_data.host_batch(
      config, l2l_data.Data(None, np.zeros(1)), 0))

  def loss_of(fr):
    step = lambda b, f: train_l2l.train_step(state, b, f, nets=nets,
                                             config=config)[1]['loss']
    return jax.vmap(step, in_axes=(0, None), axis_name='data')(batch, fr)[0]

  grads = jax.jit(jax.grad(loss_of))(frozen)
  for path, g in jax.tree_util.tree_flatten_with_path(grads)[0]:
    assert not np.any(np.asarray(g)), path
  # ... while the same loss does depend on them (the test can fail).
  nudged = jax.tree.map(lambda x: x * 1.01, frozen)
  loss_jit = jax.jit(loss_of)
  assert abs(float(loss_jit(nudged)) - float(loss_jit(frozen))) > 1e-7
  opt_shapes = {tuple(np.shape(x)) for x in
                jax.tree.leaves(state.mapper.opt_state)} - {()}
  param_shapes = {tuple(np.shape(x)) for x in
                  jax.tree.leaves(state.mapper.params)}
  assert opt_shapes == param_shapes


@pytest.fixture(scope='module')
def paper_run(tmp_path_factory):
  """4 steps of the tiny paper config (eval, checkpoint, export every 2)."""
  root = tmp_path_factory.mktemp('l2l_run')
  state = train_l2l.train_and_evaluate(_config(), str(root / 'a'))
  return root, _host(state)


def test_end_to_end_outputs_and_export_load(paper_run):
  root, state = paper_run
  workdir = root / 'a'
  assert int(state.step) == 4
  assert sorted(int(p.name) for p in (workdir / 'checkpoints').iterdir()
                if p.name.isdigit()) == [2, 4]
  assert list(workdir.glob('events.out.tfevents.*'))
  assert (workdir / 'samples' / '000000.png').is_file()
  assert (workdir / 'samples' / '000004.png').is_file()
  model, variables, meta = cm.load_mapper(str(workdir / 'mapper_export'))
  assert meta['format'] == 'l2l_mapper' and meta['source']['step'] == 4
  assert model.cond_dim == 3 and model.combine == 'residual'
  assert meta['attributes'] == ['a0', 'a1', 'a2']
  jax.tree.map(np.testing.assert_array_equal, variables['params'],
               state.mapper.params)
  best = t2f.read_meta(workdir / 'mapper_best')
  assert best['format'] == 'l2l_mapper' and np.isfinite(best['eval_loss'])
  # The export edits through the latent-editing API as a user loads it.
  from l2m_jax import latent_editing as le  # pylint: disable=g-import-not-at-top
  config = _config()
  nets, frozen = l2l_networks.load_networks(config)
  editor = le.LatentEditor(nets.generator, frozen['generator'], model,
                           variables, batch_size=2)
  w = np.random.default_rng(0).standard_normal((2, 6, 32)).astype(np.float32)
  delta = np.asarray([0.5, 0.0, -0.5], np.float32)
  out = editor.edit_latents(w, delta=delta, strengths=(1.0,))[:, 0]
  want = w + model.apply(variables, jnp.asarray(w),
                         jnp.broadcast_to(delta, (2, 3)))
  np.testing.assert_allclose(out, want, atol=1e-6)


def test_resume_continues_exactly(paper_run, tmp_path):
  """Resumed from the step-2 checkpoint to 4 == 4 uninterrupted steps.

  The uninterrupted run's workdir is copied without its step-4 checkpoint
  and exports (the state a run stopped at step 2 leaves), then resumed.
  """
  root, full = paper_run
  workdir = tmp_path / 'b'
  shutil.copytree(root / 'a', workdir)
  shutil.rmtree(workdir / 'checkpoints' / '4')
  for name in ('mapper_export', 'mapper_best', checkpointing.LOCK_FILE):
    if (workdir / name).is_dir():
      shutil.rmtree(workdir / name)
    elif (workdir / name).exists():
      (workdir / name).unlink()
  resumed = _host(train_l2l.train_and_evaluate(_config(), str(workdir)))
  diff = _max_diff(resumed.mapper, full.mapper)
  print(f'resumed vs uninterrupted after 4 steps: max abs diff {diff:.3g}')
  assert diff == 0.0
  # The resumed run's export is the same mapper.
  _, v, _ = cm.load_mapper(str(workdir / 'mapper_export'))
  assert _max_diff(v['params'], full.mapper.params) == 0.0


def _fails_before_training(config, tmp_path, exc, match):
  workdir = tmp_path / 'w'
  with pytest.raises(exc, match=match) as e:
    train_l2l.train_and_evaluate(config, str(workdir))
  assert errors.is_user_error(e.value), str(e.value)
  assert not (workdir / 'checkpoints').exists() or not any(
      p.name.isdigit() for p in (workdir / 'checkpoints').iterdir())
  return str(e.value)


def test_unknown_attribute_is_refused(tmp_path):
  msg = _fails_before_training(_config('legacy', attribute='smile'),
                               tmp_path, ValueError, 'unknown attribute')
  assert msg.startswith("attribute='smile'") and 'a0, a1, a2' in msg
  _fails_before_training(_config(attributes=('a0', 'zz')), tmp_path,
                         ValueError, "unknown attribute 'zz'")


def test_latents_of_the_wrong_shape_are_refused(tmp_path):
  bad = tmp_path / 'latents.npy'
  np.save(bad, np.zeros((10, 5, 32), np.float32))
  msg = _fails_before_training(
      _config(data_source='latents', latents_file=str(bad)), tmp_path,
      ValueError, 'latents_file=')
  assert '(10, 5, 32)' in msg and '[N, 6, 32]' in msg


def test_generator_mapper_size_mismatch_is_refused(tmp_path):
  cfg = cm.make_config('paper', style_dim=32, n_latent=8, bounds=(2, 4),
                       cond_dim=3)
  model = cm.build_model(cfg)
  variables = jax.tree.map(np.asarray, model.init(
      jax.random.key(0), jnp.zeros((1, 8, 32)), jnp.zeros((1, 3))))
  cfg['bounds'] = list(cfg['bounds'])
  t2f.save_converted(tmp_path / 'm8', variables,
                     {'format': 'l2l_mapper', 'config': cfg})
  msg = _fails_before_training(_config(init_mapper=str(tmp_path / 'm8')),
                               tmp_path, ValueError, 'size mismatch')
  assert 'n_latent 8' in msg and 'needs 6' in msg
  _fails_before_training(_config(mapper_bounds=(4, 8)), tmp_path,
                         ValueError, 'mapper_bounds=')


def test_missing_frozen_network_is_refused(tmp_path):
  c = _config(random_networks=False)
  _fails_before_training(c, tmp_path, ValueError,
                         'generator_checkpoint is empty')
  c.generator_checkpoint = str(tmp_path / 'nowhere')
  _fails_before_training(c, tmp_path, FileNotFoundError,
                         'generator_checkpoint=.*no such file')


def test_cli_needs_no_tensorflow_and_exits_2_on_user_error(tmp_path):
  """`python -m l2m_jax.main` with TensorFlow unimportable: the l2l
  method's user error exits with 2 and one message."""
  code = ("import sys, runpy; sys.modules['tensorflow'] = None; "
          "sys.argv = ['main', '--config=configs/l2l_tiny.py', "
          f"'--workdir={tmp_path / 'w'}', "
          "'--config.random_networks=False']; "
          "runpy.run_module('l2m_jax.main', run_name='__main__')")
  proc = subprocess.run([sys.executable, '-c', code], cwd=REPO_ROOT,
                        capture_output=True, text=True, timeout=300,
                        env={**os.environ, **compilation_env()})
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert 'error: generator_checkpoint is empty' in proc.stderr
  assert 'Traceback' not in proc.stderr


@pytest.mark.slow
def test_cli_trains_without_tensorflow(tmp_path):
  code = ("import sys, runpy; sys.modules['tensorflow'] = None; "
          "sys.argv = ['main', '--config=configs/l2l_tiny.py', "
          f"'--workdir={tmp_path / 'w'}', '--config.total_steps=2']; "
          "runpy.run_module('l2m_jax.main', run_name='__main__')")
  proc = subprocess.run([sys.executable, '-c', code], cwd=REPO_ROOT,
                        capture_output=True, text=True, timeout=1200,
                        env={**os.environ, **compilation_env()})
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert (tmp_path / 'w' / 'mapper_export' / 'meta.json').is_file()
  assert list((tmp_path / 'w').glob('events.out.tfevents.*'))


# ---------------------------------------------------------------------------
# Learning.
# ---------------------------------------------------------------------------


def _learn(tmp_path, steps, lr):
  """Trains the tiny paper mapper; held-out figures at step 0 and the end.

  lambda_attr = 10 and lambda_zero = 5: with a random regressor the
  attribute term is small next to the latent terms at the paper weights.
  """
  config = _config(total_steps=steps, lr=lr, adam_eps=1e-8, batch_size=16,
                   eval_every=0, save_every=steps, sample_every=steps,
                   log_every=max(1, steps // 4), num_eval=64,
                   eval_batch_size=64, lambda_attr=10.0, lambda_zero=5.0)
  nets, frozen = l2l_networks.load_networks(config)
  data = l2l_data.load_data(config, nets, frozen, str(tmp_path))
  eval_fn = l2l_eval.make_eval_fn(nets, config)
  p0 = train_l2l.init_mapper_params(config, nets, jax.random.key(0))
  before = l2l_eval.evaluate_arrays(config, nets, p0, frozen, data.eval,
                                    eval_fn)
  state = train_l2l.train_and_evaluate(config, str(tmp_path / 'run'))
  after = l2l_eval.evaluate_arrays(config, nets,
                                   _host(state.mapper.params), frozen,
                                   data.eval, eval_fn)
  err = lambda a: float(np.mean(a['sq_err'][a['mask']]))
  pear = [l2l_eval.pearson(after['requested'][after['mask'][:, j], j],
                           after['achieved'][after['mask'][:, j], j])
          for j in range(len(nets.trained))]
  zero = float(np.mean(after['zero_disp']))
  edit = float(np.mean(after['edit_disp']))
  w_scale = float(np.mean(np.abs(data.eval)))
  print(f'{steps} steps: requested-attribute error {err(before):.4f} -> '
        f'{err(after):.4f}; Pearson {[round(p, 3) for p in pear]}; zero-'
        f'request |dw| {zero:.4f}, edit |dw| {edit:.4f}, |w| {w_scale:.3f}; '
        f'identity similarity {np.mean(after["id_sim"]):.4f}')
  return err(before), err(after), pear, zero, edit, w_scale


@pytest.mark.slow
def test_paper_mode_learns_the_requested_changes(tmp_path):
  """300 steps on held-out latents: error to the targets at most half of
  step 0's, Pearson >= 0.8 per attribute, a zero request nearly no-op."""
  e0, e1, pear, zero, edit, w_scale = _learn(tmp_path, 300, 2e-2)
  assert e1 <= 0.5 * e0
  assert min(pear) >= 0.8
  assert zero <= 0.5 * edit and zero <= 0.05 * w_scale


def test_paper_mode_learns_short(tmp_path):
  """The default-suite variant: 60 steps at a higher learning rate."""
  e0, e1, pear, zero, edit, w_scale = _learn(tmp_path, 60, 5e-2)
  assert e1 <= 0.75 * e0
  assert min(pear) >= 0.5
  assert zero <= 0.75 * edit and zero <= 0.1 * w_scale
