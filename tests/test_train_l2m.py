"""train_l2m.py: optimiser, He init, frozen nets, the real step, end to end.

The real train step compiles in about a minute on 2 shared CPU cores even
with the tiny config, so the device-count / compiler / resume equivalences
with the real networks are marked slow; the toy-step versions in
test_parallel.py run by default.
"""

import json
import pathlib

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from configs import tiny
from l2m_jax import parallel
from l2m_jax import train_l2m
from tests.test_input_pipeline import make_folder


def test_optimizer_matches_torch_adam_with_coupled_weight_decay():
  config = tiny.get_config()
  rng = np.random.default_rng(0)
  p0 = rng.standard_normal((4, 5)).astype(np.float32)
  grads = [rng.standard_normal((4, 5)).astype(np.float32) for _ in range(4)]
  tx = train_l2m.make_optimizer(config)
  params, opt = jnp.asarray(p0), tx.init(jnp.asarray(p0))
  for g in grads:
    upd, opt = tx.update(jnp.asarray(g), opt, params)
    params = params + upd
  tp = torch.nn.Parameter(torch.from_numpy(p0.copy()))
  topt = torch.optim.Adam([tp], lr=config.lr, betas=(config.beta1,
                                                       config.beta2),
                          eps=config.adam_eps,
                          weight_decay=config.weight_decay)
  for g in grads:
    topt.zero_grad()
    tp.grad = torch.from_numpy(g.copy())
    topt.step()
  np.testing.assert_allclose(params, tp.detach().numpy(), atol=1e-7)
  assert np.abs(np.asarray(params) - p0).max() > 1e-4


def test_he_init_matches_torch_kaiming_statistics():
  params = {'conv': {'kernel': jnp.zeros((3, 3, 64, 32)),
                     'bias': jnp.ones(32)},
            'dense': {'kernel': jnp.zeros((256, 64)), 'bias': jnp.ones(64)},
            'norm': {'scale': jnp.full((7,), 1.0), 'bias': jnp.full((7,), .5)}}
  out = train_l2m.he_init(params, jax.random.key(0))
  for name, torch_shape in (('conv', (32, 64, 3, 3)), ('dense', (64, 256))):
    w = torch.empty(torch_shape)
    torch.nn.init.kaiming_normal_(w, mode='fan_in', nonlinearity='relu')
    np.testing.assert_allclose(np.std(out[name]['kernel']), w.std().item(),
                               rtol=0.05)
    assert abs(float(np.mean(out[name]['kernel']))) < 0.01
    np.testing.assert_array_equal(out[name]['bias'], 0)
  # Instance-norm affine parameters keep their init (not conv/dense).
  np.testing.assert_array_equal(out['norm']['bias'], 0.5)
  np.testing.assert_array_equal(out['norm']['scale'], 1.0)


def test_frozen_networks_random_with_loud_warning(monkeypatch):
  config = tiny.get_config()
  assert not train_l2m.load_frozen(config, jax.random.key(0))
  config.preservation = 'resnet18'
  seen = []
  monkeypatch.setattr(logging, 'warning',
                      lambda msg, *a: seen.append(msg % a if a else msg))
  frozen = train_l2m.load_frozen(config, jax.random.key(0))
  assert set(frozen['vgg']) == {'params', 'batch_stats'}
  assert any('ResNet-18' in s and 'RANDOM' not in s for s in seen)
  assert any('RANDOM' in s for s in seen)
  config.preservation = 'arcface'
  with pytest.raises(ValueError, match='preservation='):
    train_l2m.load_frozen(config, jax.random.key(0))


def test_train_and_evaluate_end_to_end(tmp_path):
  """2 steps of configs/tiny.py: checkpoints, metrics, sample grid, export."""
  data = make_folder(tmp_path / 'data', counts=(('neg', 3), ('pos', 3)),
                     size=(40, 40))
  config = tiny.get_config()
  config.data_dir = str(data)
  workdir = tmp_path / 'run'
  state = train_l2m.train_and_evaluate(config, str(workdir))
  assert int(jax.device_get(state.step)) == 2
  steps = sorted(int(p.name) for p in (workdir / 'checkpoints').iterdir()
                 if p.name.isdigit())
  assert steps == [1, 2]
  events = list(workdir.glob('events.out.tfevents.*'))
  assert events and events[0].stat().st_size > 0
  assert (workdir / 'samples' / '000002.png').is_file()
  meta = json.loads((workdir / 'ema_export' / 'meta.json').read_text())
  assert meta['format'] == 'l2m_gan'
  assert meta['config']['domains'] == ['neg', 'pos']
  from l2m_jax.convert import l2m as l2m_convert  # pylint: disable=g-import-not-at-top
  variables, mc = l2m_convert.load_l2m_checkpoint(workdir / 'ema_export')
  assert mc.img_size == 32 and mc.w_hpf == 0
  ema = parallel.unreplicate_to_host(state.ema)
  jax.tree.map(np.testing.assert_array_equal,
               variables['generator']['params'], ema['generator'])
  # EMA moved by (1 - beta) of the step, not onto the params.
  g = parallel.unreplicate_to_host(state.generator.params)
  diff = jax.tree.leaves(jax.tree.map(lambda a, b: np.abs(a - b).max(),
                                      g, ema['generator']))
  assert 0 < max(diff) < 1e-3


# ---------------------------------------------------------------------------
# Slow: the real train step compiled several times.
# ---------------------------------------------------------------------------


def _batch(n=4, size=32, seed=0):
  rng = np.random.default_rng(seed)
  return {'x_src': rng.uniform(-1, 1, (n, size, size, 3)).astype(np.float32),
          'y_src': np.array([0, 1, 1, 0][:n], np.int32),
          'y_trg': np.array([1, 1, 0, 0][:n], np.int32)}


def _run_real(config, mode, num_devices, steps=1):
  models = train_l2m.create_models(config)
  mesh = parallel.make_mesh(num_devices)
  state = parallel.init_replicated(
      lambda: train_l2m.create_train_state(config, models,
                                           jax.random.key(0)), mesh)
  config.parallel = mode
  compiled = train_l2m.compile_train_step(config, models, mesh)
  dstate = compiled.put_state(state)
  frozen = compiled.put_args({})
  for k in range(steps):
    dstate, metrics = compiled(dstate, compiled.put_batch(_batch(seed=k)),
                               frozen)
  return (parallel.unreplicate_to_host(compiled.get_state(dstate)),
          compiled.get_metrics(metrics))


def _max_diff(a, b):
  # Leaves only: TrainState's static apply_fn/tx differ between model objects.
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(la) == len(lb)
  return max(float(np.abs(np.asarray(x, np.float64) -
                          np.asarray(y, np.float64)).max())
             for x, y in zip(la, lb))


@pytest.mark.slow
def test_four_devices_equal_one_device_and_pmap_agrees():
  # Adam's first step is lr * g / (|g| + eps) ~ lr * sign(g): for parameters
  # whose true gradient is zero (conv biases before an instance norm) the
  # float noise of different batch splits flips the sign and moves them by
  # 2 lr. With eps = 1 the update is ~lr * g, linear in the gradient, so the
  # comparison checks the averaged gradients themselves (a sum instead of a
  # mean over 4 devices would differ by 3 lr |g|).
  config = tiny.get_config()
  config.adam_eps = 1.0
  config.lr = 1e-2
  one, m1 = _run_real(config, 'shard_map', 1)
  four, m4 = _run_real(config, 'shard_map', 4)
  pm, mp = _run_real(config, 'pmap', 4)
  for other, m in ((four, m4), (pm, mp)):
    for name in ('generator', 'style_encoder', 'discriminator'):
      err = _max_diff(getattr(one, name).params, getattr(other, name).params)
      print(f'{name} params max abs diff: {err:.2e}')
      assert err <= 1e-5, (name, err)
    assert _max_diff(one.ema, other.ema) <= 1e-5
    for k in m1:
      np.testing.assert_allclose(m[k], m1[k], rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_resume_continues_exactly(tmp_path):
  data = make_folder(tmp_path / 'data', counts=(('neg', 3), ('pos', 3)))
  config = tiny.get_config()
  config.data_dir = str(data)
  config.total_iters = 3
  full = train_l2m.train_and_evaluate(config, str(tmp_path / 'full'))
  config.total_iters = 2
  train_l2m.train_and_evaluate(config, str(tmp_path / 'resumed'))
  config.total_iters = 3
  resumed = train_l2m.train_and_evaluate(config, str(tmp_path / 'resumed'))
  a = parallel.unreplicate_to_host(full)
  b = parallel.unreplicate_to_host(resumed)
  assert int(a.step) == int(b.step) == 3
  err = _max_diff(a, b)
  print(f'resumed vs uninterrupted max abs diff: {err:.2e}')
  assert err <= 1e-6
