"""train_l2m.py: optimiser, He init, frozen nets, the real step, end to end.

The real train step compiles in about a minute on 2 shared CPU cores even
with the tiny config, so the device-count / compiler / resume equivalences
with the real networks are marked slow; the toy-step versions in
test_parallel.py run by default.
"""

import dataclasses
import functools
import json
import logging as logging_std
import os
import pathlib
import shutil
import signal

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from configs import tiny
from l2m_jax import checkpointing
from l2m_jax import errors
from l2m_jax import input_pipeline
from l2m_jax import l2m_frozen
from l2m_jax import parallel
from l2m_jax import train_l2m
from tests import conftest
from tests.test_input_pipeline import make_folder

# bfloat16 vs float32 compute of the tiny step over 3 steps: relative
# difference of every logged loss, and relative L2 difference of the parameter
# updates of each network. bf16 keeps an 8-bit mantissa (about 0.4 % per
# rounding, compounded over the depth and three steps). Measured on the 2-core
# CPU (2026-12-02, jax 0.10.2): worst loss 6.5e-2, worst update 1.76e-1;
# the bounds are about 1.5x those (the test prints the measured values).
BF16_LOSS_RTOL = 0.1
BF16_UPDATE_RTOL = 0.25


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


def test_cosine_lr_schedule_matches_torch_schedulers():
  # lr_schedule='cosine': constant for lr_decay_start * total_iters updates,
  # then a half cosine to 0 at total_iters; torch's SequentialLR of
  # ConstantLR and CosineAnnealingLR(eta_min=0) is the reference, with Adam
  # and the coupled decay on both sides.
  config = tiny.get_config()
  config.lr, config.total_iters = 0.05, 10
  config.lr_schedule, config.lr_decay_start = 'cosine', 0.3
  rng = np.random.default_rng(0)
  p0 = rng.standard_normal((3, 4)).astype(np.float32)
  grads = [rng.standard_normal((3, 4)).astype(np.float32) for _ in range(10)]
  tx = train_l2m.make_optimizer(config)
  params, opt = jnp.asarray(p0), tx.init(jnp.asarray(p0))
  tp = torch.nn.Parameter(torch.from_numpy(p0.copy()))
  topt = torch.optim.Adam([tp], lr=config.lr, betas=(config.beta1,
                                                       config.beta2),
                          eps=config.adam_eps,
                          weight_decay=config.weight_decay)
  sched = torch.optim.lr_scheduler.SequentialLR(topt, [
      torch.optim.lr_scheduler.ConstantLR(topt, factor=1.0, total_iters=3),
      torch.optim.lr_scheduler.CosineAnnealingLR(topt, T_max=7, eta_min=0.0)
  ], milestones=[3])
  lrs = []
  for g in grads:
    upd, opt = tx.update(jnp.asarray(g), opt, params)
    params = params + upd
    lrs.append(topt.param_groups[0]['lr'])
    topt.zero_grad()
    tp.grad = torch.from_numpy(g.copy())
    topt.step()
    sched.step()
    np.testing.assert_allclose(params, tp.detach().numpy(), atol=1e-6)
  np.testing.assert_allclose(
      [float(train_l2m.lr_schedule(config)(t)) for t in range(11)],
      lrs + [0.0], rtol=1e-5, atol=1e-9)
  assert lrs[:4] == [0.05] * 4 and lrs[4] < 0.05  # held, then decaying
  config.lr_schedule = 'linear'
  with pytest.raises(ValueError, match="lr_schedule='linear'") as e:
    train_l2m.make_optimizer(config)
  assert errors.is_user_error(e.value)  # one line from the CLI, exit 2
  config.lr_schedule, config.lr_decay_start = 'cosine', 1.0
  with pytest.raises(ValueError, match='lr_decay_start=1.0') as e:
    train_l2m.make_optimizer(config)
  assert errors.is_user_error(e.value)


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
  # Kernels of the same shape are independent draws, not copies, and the
  # draw depends on the key.
  twin = train_l2m.he_init({'a': {'kernel': jnp.zeros((3, 3, 8, 8))},
                            'b': {'kernel': jnp.zeros((3, 3, 8, 8))}},
                           jax.random.key(0))
  a, b = (np.asarray(twin[n]['kernel']).ravel() for n in 'ab')
  assert abs(np.corrcoef(a, b)[0, 1]) < 0.1
  other = train_l2m.he_init(params, jax.random.key(1))
  assert not np.array_equal(other['conv']['kernel'], out['conv']['kernel'])


def test_init_replicated_matches_the_default_compile():
  # parallel.init_replicated compiles the initial state at a lower XLA
  # optimisation level; the weights must be exactly those of a default jit.
  config = tiny.get_config()
  models = train_l2m.create_models(config)
  init = functools.partial(train_l2m.create_train_state, config, models,
                           jax.random.key(3))
  mesh = parallel.make_mesh(2)
  state = parallel.init_replicated(init, mesh)
  reference = jax.jit(init)()
  leaves, ref_leaves = jax.tree.leaves(state), jax.tree.leaves(reference)
  assert len(leaves) == len(ref_leaves) > 50
  for a, b in zip(leaves, ref_leaves):
    assert a.sharding.is_fully_replicated and len(a.sharding.device_set) == 2
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.fast_compile
def test_frozen_networks_random_with_loud_warning(monkeypatch):
  config = tiny.get_config()
  assert not l2m_frozen.load_frozen(config, jax.random.key(0))
  config.preservation = 'resnet18'
  seen = []
  monkeypatch.setattr(logging, 'warning',
                      lambda msg, *a: seen.append(msg % a if a else msg))
  frozen = l2m_frozen.load_frozen(config, jax.random.key(0))
  assert set(frozen['vgg']) == {'params', 'batch_stats'}
  assert any('ResNet-18' in s and 'RANDOM' not in s for s in seen)
  assert any('RANDOM' in s for s in seen)
  config.preservation = 'arcface'
  with pytest.raises(ValueError, match='preservation='):
    l2m_frozen.load_frozen(config, jax.random.key(0))
  config.preservation = 'synthetic_faces'
  config.preservation_compare = 'logits'
  with pytest.raises(ValueError, match="preservation_compare='logits'"):
    l2m_frozen.load_frozen(config, jax.random.key(0))


def test_train_and_evaluate_end_to_end(tiny_run):
  """4 steps: checkpoints, metrics, sample grid, EMA export, periodic FID."""
  workdir, state = tiny_run.workdir, tiny_run.state
  assert int(state.step) == 4
  steps = sorted(int(p.name) for p in (workdir / 'checkpoints').iterdir()
                 if p.name.isdigit())
  assert steps == [2, 4]
  events = list(workdir.glob('events.out.tfevents.*'))
  assert events and events[0].stat().st_size > 0
  assert (workdir / 'samples' / '000004.png').is_file()
  meta = json.loads((workdir / 'ema_export' / 'meta.json').read_text())
  assert meta['format'] == 'l2m_gan'
  assert meta['config']['domains'] == ['neg', 'pos']
  assert meta['source']['step'] == 4
  from l2m_jax.convert import l2m as l2m_convert  # pylint: disable=g-import-not-at-top
  variables, mc = l2m_convert.load_l2m_checkpoint(workdir / 'ema_export')
  assert mc.img_size == 32 and mc.w_hpf == 0
  jax.tree.map(np.testing.assert_array_equal,
               variables['generator']['params'], state.ema['generator'])
  # EMA moved by (1 - beta) of the steps, not onto the params.
  diff = jax.tree.leaves(jax.tree.map(lambda a, b: np.abs(a - b).max(),
                                      state.generator.params,
                                      state.ema['generator']))
  assert 0 < max(diff) < 0.1
  # Periodic FID with random-weight Inception: the official per-task JSON
  # and the edited images per task.
  result = json.loads((workdir / 'FID_00004_reference.json').read_text())
  assert set(result) == {'FID_reference/neg2pos', 'FID_reference/pos2neg',
                         'FID_reference/mean'}
  assert all(np.isfinite(v) for v in result.values())
  assert result['FID_reference/mean'] == pytest.approx(
      (result['FID_reference/neg2pos'] + result['FID_reference/pos2neg']) / 2)
  assert sorted(p.name for p in (workdir / 'eval_000004').iterdir()) == [
      'neg2pos', 'pos2neg']


# ---------------------------------------------------------------------------
# Resume, faults and bad input on the real train state (tiny_run's workdir).
# The tests here that train compile as tiny_run does (`fast_compile`,
# tests/conftest.py), so a resumed run can equal it bit for bit and reuses its
# compiled programs.
# ---------------------------------------------------------------------------


def _copy_run(tiny_run, tmp_path):
  workdir = tmp_path / 'run'
  shutil.copytree(tiny_run.workdir, workdir)
  return workdir


def _warnings(monkeypatch):
  seen = []
  monkeypatch.setattr(logging, 'warning',
                      lambda msg, *a: seen.append(msg % a if a else msg))
  return seen


def _snapshot(workdir):
  return {str(p.relative_to(workdir)): (p.stat().st_size, p.stat().st_mtime_ns)
          for p in workdir.rglob('*') if p.name != '.lock'}


@pytest.mark.fast_compile
def test_resume_logs_changed_settings(tiny_run, tmp_path, monkeypatch):
  workdir = _copy_run(tiny_run, tmp_path)
  config = conftest.run_config(tiny_run.data, tiny_run.weights, batch_size=8,
                               lr=2e-2)
  seen = _warnings(monkeypatch)
  state = train_l2m.train_and_evaluate(config, str(workdir))
  assert int(parallel.unreplicate_to_host(state.step)) == 4
  changed = [s for s in seen if 'changed settings' in s]
  assert len(changed) == 1
  assert 'batch_size: 4 -> 8' in changed[0] and 'lr: 0.01 -> 0.02' in changed[0]


@pytest.mark.fast_compile
def test_the_step_compiles_once_in_the_background(tiny_run, tmp_path):
  # train_l2m starts tracing and compiling the step in a thread before the
  # state restores (here) or initialises; train_loop's compile_ahead must
  # then find it in JAX's caches: one trace, one lowering, both in that
  # thread (a mismatch of the abstract inputs would compile again here).
  workdir = _copy_run(tiny_run, tmp_path)
  config = conftest.run_config(tiny_run.data, tiny_run.weights)
  config.total_iters = int(config.total_iters) + 1
  seen = []

  class Handler(logging_std.Handler):

    def emit(self, record):
      message = record.getMessage()
      if ('train_step' in message and
          message.startswith(('Finished tracing', 'Compiling jit'))):
        kind = 'trace' if message.startswith('Finished') else 'lower'
        seen.append((kind, record.threadName))

  handler = Handler()
  logging_std.getLogger('jax').addHandler(handler)
  # The global setting: `jax.log_compiles()` as a context is thread-local.
  jax.config.update('jax_log_compiles', True)
  try:
    state = train_l2m.train_and_evaluate(config, str(workdir))
  finally:
    jax.config.update('jax_log_compiles', False)
    logging_std.getLogger('jax').removeHandler(handler)
  assert int(parallel.unreplicate_to_host(state.step)) == 5
  assert sorted(seen) == [('lower', 'step-compile'),
                          ('trace', 'step-compile')], seen


@pytest.mark.fast_compile
@pytest.mark.parametrize('change', ['domain order', 'width', 'lr schedule'])
def test_resume_refuses_another_model_or_domain_order(tiny_run, tmp_path,
                                                      change):
  workdir = _copy_run(tiny_run, tmp_path)
  data = tiny_run.data
  overrides = {}
  if change == 'domain order':
    # 'neg' renamed 'zneg': same domains, but sorted the other way round, so
    # label 0 would silently become the other domain.
    data = pathlib.Path(shutil.copytree(tiny_run.data, tmp_path / 'data'))
    for split in ('train', 'val'):
      (data / split / 'neg').rename(data / split / 'zneg')
  elif change == 'lr schedule':
    overrides['lr_schedule'] = 'cosine'
  else:
    overrides['max_conv_dim'] = 32
  config = conftest.run_config(data, tiny_run.weights, **overrides)
  before = _snapshot(workdir)
  with pytest.raises(checkpointing.CheckpointError) as e:
    train_l2m.train_and_evaluate(config, str(workdir))
  msg = str(e.value)
  if change == 'domain order':
    assert "domains: checkpoint ['neg', 'pos'], this run ['pos', 'zneg']" in msg
  elif change == 'lr schedule':
    assert "lr_schedule: checkpoint 'constant', this run 'cosine'" in msg
  else:
    assert 'max_conv_dim: checkpoint 16, this run 32' in msg
  assert 'Nothing was written' in msg
  assert errors.is_user_error(e.value)
  assert _snapshot(workdir) == before


def _damage(step_dir, how):
  """Damages a checkpoint's OCDBT data files.

  The per-process store and the merged one can hold files of equal size, and
  which one restore reads depends on the layout, so truncation and flipped
  bytes are applied to every data file.
  """
  files = sorted((p for p in (step_dir / 'state').rglob('*')
                  if p.is_file() and '/d/' in p.as_posix()),
                 key=lambda p: p.stat().st_size)
  assert files, step_dir
  if how == 'half-deleted':
    for p in files[len(files) // 2:]:
      p.unlink()
    return
  for f in files:
    data = bytearray(f.read_bytes())
    if how == 'truncated':
      f.write_bytes(bytes(data[:len(data) // 2]))
    else:  # bit-flipped
      start = len(data) // 4
      for i in range(start, min(len(data), start + 4096)):
        data[i] ^= 0xFF
      f.write_bytes(bytes(data))


@pytest.mark.fast_compile
@pytest.mark.parametrize('how', ['truncated', 'bit-flipped', 'half-deleted'])
def test_damaged_latest_checkpoint_falls_back_to_older(tiny_run, tmp_path,
                                                       monkeypatch, how):
  workdir = _copy_run(tiny_run, tmp_path)
  _damage(workdir / 'checkpoints' / '4', how)
  # total_iters=2: the fallback checkpoint (step 2) is the end of this run.
  config = conftest.run_config(tiny_run.data, tiny_run.weights,
                               total_iters=2)
  seen = _warnings(monkeypatch)
  state = train_l2m.train_and_evaluate(config, str(workdir))
  assert int(parallel.unreplicate_to_host(state.step)) == 2
  assert any('Checkpoint of step 4 is damaged' in s for s in seen), seen
  assert any('Resuming from the newest intact checkpoint, step 2' in s
             for s in seen)
  assert [p.name for p in (workdir / 'checkpoints').iterdir()
          if p.name.isdigit()] == ['2']
  moved = [p.name for p in (workdir / 'checkpoints_damaged').iterdir()]
  assert any(n.startswith('4-') and not n.endswith('.txt') for n in moved)


@pytest.mark.fast_compile
def test_no_intact_checkpoint_is_a_clear_error(tiny_run, tmp_path):
  workdir = _copy_run(tiny_run, tmp_path)
  for step in ('2', '4'):
    _damage(workdir / 'checkpoints' / step, 'truncated')
  config = conftest.run_config(tiny_run.data, tiny_run.weights)
  with pytest.raises(checkpointing.CheckpointError) as e:
    train_l2m.train_and_evaluate(config, str(workdir))
  assert 'no checkpoint restores' in str(e.value)
  assert 'step 4:' in str(e.value) and 'step 2:' in str(e.value)
  assert errors.is_user_error(e.value)


@pytest.mark.fast_compile
def test_real_checkpoint_restores_on_another_device_count(tiny_run):
  """Saved from 4 devices, restored onto 2, leaf for leaf."""
  config = tiny_run.config
  models = train_l2m.create_models(config, ['neg', 'pos'])
  abstract = jax.eval_shape(lambda: train_l2m.create_train_state(
      config, models, jax.random.key(0)))
  mngr = checkpointing.make_manager(tiny_run.workdir / 'checkpoints', 2, 2)
  try:
    for n in (2,):
      mesh = parallel.make_mesh(n)
      state, meta = checkpointing.restore_latest(
          mngr, abstract, parallel.replicated_sharding(mesh))
      assert meta['num_devices'] == 4
      assert state.generator.params['from_rgb']['kernel'].sharding.mesh \
          .devices.size == n
      assert _max_diff(parallel.unreplicate_to_host(state),
                       tiny_run.state) == 0.0
  finally:
    mngr.close()


def _wrap_step(monkeypatch, on_call):
  """Makes the compiled train step call `on_call(k, batch)` first (k: the
  number of the call in this run, from 1)."""
  real = train_l2m.compile_train_step

  def compile_step(*args, **kwargs):
    compiled = real(*args, **kwargs)
    calls = []

    def fn(state, batch, *rest):
      calls.append(1)
      batch = on_call(len(calls), batch)
      return compiled.fn(state, batch, *rest)
    return dataclasses.replace(compiled, fn=fn)
  monkeypatch.setattr(train_l2m, 'compile_train_step', compile_step)


@pytest.mark.fast_compile
def test_sigterm_saves_and_the_rerun_continues_exactly(tiny_run, tmp_path,
                                                       monkeypatch):
  def sigterm_in_step_1(k, batch):
    if k == 1:
      os.kill(os.getpid(), signal.SIGTERM)
    return batch
  _wrap_step(monkeypatch, sigterm_in_step_1)
  workdir = tmp_path / 'run'
  config = conftest.run_config(tiny_run.data, tiny_run.weights, eval_every=0)
  handler = signal.getsignal(signal.SIGTERM)
  state = train_l2m.train_and_evaluate(config, str(workdir))
  assert int(parallel.unreplicate_to_host(state.step)) == 1
  assert [p.name for p in (workdir / 'checkpoints').iterdir()
          if p.name.isdigit()] == ['1']
  assert signal.getsignal(signal.SIGTERM) == handler  # restored
  monkeypatch.undo()
  resumed = train_l2m.train_and_evaluate(config, str(workdir))
  err = _max_diff(parallel.unreplicate_to_host(resumed), tiny_run.state)
  print(f'SIGTERM at step 1, resumed vs uninterrupted: max abs diff {err}')
  assert err == 0.0


@pytest.mark.fast_compile
def test_nonfinite_step_saves_nothing_pmap(tiny_run, tmp_path, monkeypatch):
  """A NaN at step 3 with log_every=5: no NaN checkpoint or export, the last
  good ones stay, the error names the step; the pmap path of the loop."""
  nan_at_call = [3]

  def nan_images_at_step_3(k, batch):
    if k == nan_at_call[0]:
      batch = dict(batch, x_src=batch['x_src'] * np.float32(np.nan))
    return batch
  _wrap_step(monkeypatch, nan_images_at_step_3)
  workdir = tmp_path / 'run'
  config = conftest.run_config(
      tiny_run.data, tiny_run.weights, parallel='pmap', log_every=5,
      save_every=1, keep_checkpoints=2, eval_every=0, sample_every=100)
  for attempt in range(2):  # the rerun resumes at 2 and stops again at 3
    nan_at_call[0] = 3 if attempt == 0 else 1
    with pytest.raises(train_l2m.NonFiniteError) as e:
      train_l2m.train_and_evaluate(config, str(workdir))
    msg = str(e.value)
    assert msg.startswith('step 3: the training state became non-finite')
    assert 'g_loss' in msg and 'the last checkpoint (step 2)' in msg, msg
    assert errors.is_divergence(e.value)
    assert sorted(p.name for p in (workdir / 'checkpoints').iterdir()
                  if p.name.isdigit()) == ['1', '2']
  from l2m_jax.convert import l2m as l2m_convert  # pylint: disable=g-import-not-at-top
  variables, _ = l2m_convert.load_l2m_checkpoint(workdir / 'ema_export')
  meta = json.loads((workdir / 'ema_export' / 'meta.json').read_text())
  assert meta['source']['step'] == 2
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(variables))
  # pmap and jit + shard_map agree on the real step (checkpoint of step 2).
  models = train_l2m.create_models(config, ['neg', 'pos'])
  abstract = jax.eval_shape(lambda: train_l2m.create_train_state(
      config, models, jax.random.key(0)))
  rep = parallel.replicated_sharding(parallel.make_mesh())
  states = []
  for w in (workdir, tiny_run.workdir):
    mngr = checkpointing.make_manager(w / 'checkpoints', 1, 2)
    try:
      states.append(parallel.unreplicate_to_host(checkpointing.restore(
          mngr, 2, abstract, rep)[0]))
    finally:
      mngr.close()
  err = _max_diff(*states)
  print(f'pmap vs shard_map after 2 steps: max abs diff {err:.3g}')
  assert err <= 1e-5


def test_a_live_run_holds_the_workdir(tiny_run, tmp_path):
  workdir = tmp_path / 'run'
  config = conftest.run_config(tiny_run.data, tiny_run.weights)
  with checkpointing.WorkdirLock(workdir):  # another run, alive
    with pytest.raises(checkpointing.WorkdirLockedError,
                       match=f'pid {os.getpid()}'):
      train_l2m.train_and_evaluate(config, str(workdir))
  assert not (workdir / 'checkpoints').exists()


def test_bad_data_layout_fails_before_training(tiny_run, tmp_path):
  """Each layout mistake is a DatasetError naming the folders."""
  def fresh():
    d = tmp_path / f'data{len(list(tmp_path.iterdir()))}'
    return pathlib.Path(shutil.copytree(tiny_run.data, d))

  def expect(data, *needles):
    config = conftest.run_config(data, tiny_run.weights)
    with pytest.raises(input_pipeline.DatasetError) as e:
      train_l2m.train_and_evaluate(config, str(tmp_path / 'w'))
    for n in needles:
      assert n in str(e.value), str(e.value)
    assert not (tmp_path / 'w' / 'checkpoints').exists()

  # train/<domain> empty while val/<domain> is not.
  d = fresh()
  for f in (d / 'train' / 'pos').iterdir():
    f.unlink()
  expect(d, str(d / 'train' / 'pos'), 'hold no image files')
  # An extra empty domain folder.
  d = fresh()
  (d / 'train' / 'other').mkdir()
  expect(d, str(d / 'train' / 'other'))
  # A single domain.
  d = fresh()
  shutil.rmtree(d / 'train' / 'pos')
  shutil.rmtree(d / 'val' / 'pos')
  expect(d, 'found 1 domain folder', "['neg']")
  # train and val domains differ.
  d = fresh()
  (d / 'val' / 'pos').rename(d / 'val' / 'positive')
  expect(d, str(d / 'val' / 'pos'), str(d / 'val' / 'positive'))


def _torch_params_to_flax(module, name, mc):
  from l2m_jax.convert import l2m as l2m_convert  # pylint: disable=g-import-not-at-top
  from l2m_jax.models import l2m as l2m_models  # pylint: disable=g-import-not-at-top
  key_map = l2m_convert.module_key_map(l2m_models.init_shapes(mc, True)[name])
  params = l2m_convert._convert_module(  # pylint: disable=protected-access
      module.state_dict(), key_map)['params']
  return params, key_map


def _worst_relative_grad_error(flax_grads, torch_module, key_map):
  """Worst max-abs error over tensors, each relative to its own max-abs
  gradient, floored at 1e-2 of the module's largest: biases before an
  instance norm have a true gradient of 0 and carry only round-off of the
  cancelling sums (2e-7 measured, against 0.48 for the largest)."""
  from l2m_jax.convert import torch_to_flax as t2f  # pylint: disable=g-import-not-at-top
  flat = t2f.flatten({'params': flax_grads})
  wants = {}
  for tkey, p in torch_module.named_parameters():
    want = p.grad if p.grad is not None else torch.zeros_like(p)  # unused
    wants[tkey] = (t2f.conv_kernel(want) if want.ndim == 4 else
                   t2f.dense_kernel(want) if want.ndim == 2 else
                   want.detach().numpy())
  floor = 1e-2 * max(float(np.abs(w).max()) for w in wants.values())
  return max(float(np.abs(flat[key_map[k][0]] - w).max()) /
             max(float(np.abs(w).max()), floor) for k, w in wants.items())


@pytest.mark.parametrize('r1_every', [1, 3])
def test_discriminator_gradient_and_lazy_r1_match_torch(r1_every):
  """The D objective's gradient against torch autograd on the reference D.

  R1 = 0.5 mean_n |d D_y(x_n)/dx_n|^2 via create_graph double backprop; with
  lazy R1 (r1_every = N > 1) the penalty is N * R1 on steps divisible by N
  and absent on the others.
  """
  from l2m_jax.convert import torch_to_flax as t2f  # pylint: disable=g-import-not-at-top
  from l2m_jax.models import l2m as l2m_models  # pylint: disable=g-import-not-at-top
  from tests import l2m_checkpoints as lc  # pylint: disable=g-import-not-at-top
  from third_party import l2m_torch  # pylint: disable=g-import-not-at-top
  config = tiny.get_config()
  config.r1_every = r1_every
  config.lambda_reg = 0.7
  mc = train_l2m.model_config_from(config)
  torch.manual_seed(0)
  d_torch = lc.he_init_(l2m_torch.Discriminator(
      mc.img_size, mc.num_domains, mc.max_conv_dim, base_dim=mc.base_dim), 3)
  params, key_map = _torch_params_to_flax(d_torch, 'discriminator', mc)
  disc = l2m_models.build_discriminator(mc)
  grads_fn = jax.jit(functools.partial(train_l2m.discriminator_grads,
                                       disc=disc, config=config))
  rng = np.random.default_rng(1)
  x = rng.uniform(-1, 1, (4, 32, 32, 3)).astype(np.float32)
  x_fake = rng.uniform(-1, 1, (4, 32, 32, 3)).astype(np.float32)
  y, y_trg = np.array([0, 1, 1, 0]), np.array([1, 1, 0, 0])
  for step in (0, 1, 3, 4):
    grads, metrics = grads_fn(params, jnp.int32(step), x, y, x_fake, y_trg)
    with_r1 = step % r1_every == 0
    xt = lc.nhwc_to_torch(x).requires_grad_(True)
    real = d_torch(xt, torch.from_numpy(y))
    fake = d_torch(lc.nhwc_to_torch(x_fake), torch.from_numpy(y_trg))
    loss = (torch.nn.functional.softplus(-real).mean()
            + torch.nn.functional.softplus(fake).mean())
    r1 = torch.zeros(())
    if with_r1:
      (g,) = torch.autograd.grad(real.sum(), xt, create_graph=True)
      r1 = 0.5 * g.pow(2).flatten(1).sum(1).mean()
      loss = loss + 0.7 * r1_every * r1
    names = [k for k, _ in d_torch.named_parameters()]
    t_grads = dict(zip(names, torch.autograd.grad(
        loss, list(d_torch.parameters()))))
    np.testing.assert_allclose(metrics['d_r1'], r1.item(), rtol=1e-4,
                               atol=1e-7)
    np.testing.assert_allclose(metrics['d_loss'], loss.item(), rtol=1e-5)
    flat = t2f.flatten({'params': grads})
    worst = 0.0
    for tkey, (path, _) in key_map.items():
      want = t_grads[tkey]
      want = (t2f.conv_kernel(want) if want.ndim == 4 else
              t2f.dense_kernel(want) if want.ndim == 2 else
              want.detach().numpy())
      scale = max(float(np.abs(want).max()), 1e-6)
      worst = max(worst, float(np.abs(flat[path] - want).max()) / scale)
    print(f'r1_every {r1_every} step {step} (R1 {with_r1}): worst relative '
          f'gradient error {worst:.2e}')
    assert worst <= 1e-4


@pytest.mark.slow  # one more compilation of the real step (about a minute)
def test_generator_and_encoder_gradients_match_torch():
  """The G + E objective's gradient against torch autograd on the reference.

  Torch builds the whole objective of docs/method.md#l2m-training in one
  graph (adv against the D of the step, cyc through the fake, sty, ort):
  the step must give the same loss and the same gradients for G (all
  blocks) and E (trunk, heads, decomposer P, transformers T).
  """
  from tests import l2m_checkpoints as lc  # pylint: disable=g-import-not-at-top
  config = tiny.get_config()
  config.lambda_cyc, config.lambda_sty, config.lambda_ort = 3.0, 2.0, 0.5
  mc = train_l2m.model_config_from(config)
  nets = lc.build_torch_nets(mc.img_size, mc.style_dim, mc.num_domains,
                             mc.max_conv_dim, w_hpf=0, seed=3,
                             with_discriminator=True, base_dim=mc.base_dim)
  params, maps = {}, {}
  for name in ('generator', 'style_encoder', 'discriminator'):
    params[name], maps[name] = _torch_params_to_flax(getattr(nets, name),
                                                     name, mc)
  # An "optimiser" whose state is the last gradient and whose update is 0:
  # the step leaves every network as it was (the G loss then sees the same D
  # as torch) and hands back the G and E gradients exactly.
  zeros = lambda tree: jax.tree.map(jnp.zeros_like, tree)
  expose = optax.GradientTransformation(
      zeros, lambda grads, state, params=None: (zeros(grads), grads))
  models = train_l2m.create_models(config)
  state = train_l2m.create_train_state(config, models, jax.random.key(0))
  state = state.replace(**{
      name: getattr(state, name).replace(
          params=params[name], tx=tx, opt_state=tx.init(params[name]))
      for name, tx in (('generator', expose), ('style_encoder', expose),
                       ('discriminator', expose))})
  mesh = parallel.make_mesh(1)
  compiled = train_l2m.compile_train_step(config, models, mesh)
  batch = _batch(seed=5)
  new_state, metrics = compiled(compiled.put_state(state),
                                compiled.put_batch(batch), compiled.put_args({}))
  new_state = parallel.unreplicate_to_host(compiled.get_state(new_state))
  metrics = compiled.get_metrics(metrics)

  gen, enc, disc = nets.generator, nets.style_encoder, nets.discriminator
  x = lc.nhwc_to_torch(batch['x_src'])
  y, y_trg = (torch.from_numpy(batch['y_src']).long(),
              torch.from_numpy(batch['y_trg']).long())
  s, s_u, s_r, s_r_hat = enc(x, y, y_trg)
  s_hat = s_u + s_r_hat
  x_fake = gen(x, s_hat)
  adv = torch.nn.functional.softplus(-disc(x_fake, y_trg)).mean()
  sty = (enc(x_fake, y_trg, y_trg)[0] - s_hat).abs().mean()
  cyc = (gen(x_fake, s) - x).abs().mean()
  ort = (s_r * s_u).abs().mean() + (s_r_hat * s_u).abs().mean()
  total = adv + 3.0 * cyc + 2.0 * sty + 0.5 * ort
  total.backward()
  np.testing.assert_allclose(metrics['g_loss'], total.item(), rtol=1e-5)
  for name, module in (('generator', gen), ('style_encoder', enc)):
    worst = _worst_relative_grad_error(getattr(new_state, name).opt_state,
                                       module, maps[name])
    print(f'{name}: worst relative gradient error {worst:.2e}')
    assert worst <= 1e-4, (name, worst)


def _conv_and_dot_dtypes(lowered_text):
  """Operand element types of every convolution and dot in StableHLO text."""
  import re  # pylint: disable=g-import-not-at-top
  found = {'conv': [], 'dot': []}
  for line in lowered_text.splitlines():
    kind = ('conv' if 'stablehlo.convolution' in line else
            'dot' if 'stablehlo.dot_general' in line else None)
    if kind:
      sig = line.rsplit(':', 1)[-1]  # (tensor<...xbf16>, ...) -> tensor<...>
      found[kind].append(re.findall(r'x(bf16|f32)>', sig.split('->')[0]))
  return found


def test_bfloat16_step_computes_in_bf16():
  # Every convolution and matmul of the bf16 step (forward, backward, R1's
  # double backprop, the ResNet-18 term) takes bf16 operands; parameters,
  # optimiser state and EMA are float32. Lowering only (no compilation).
  config = tiny.get_config()
  config.dtype, config.preservation = 'bfloat16', 'resnet18'
  models = train_l2m.create_models(config)
  step = functools.partial(train_l2m.train_step, models=models,
                           config=config)
  mesh = parallel.make_mesh(1)
  init = jax.eval_shape(lambda: train_l2m.create_train_state(
      config, models, jax.random.key(0)))
  frozen = {'vgg': jax.eval_shape(
      models.resnet.init, jax.random.key(1), jnp.zeros((1, 32, 32, 3)))}
  batch = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype),
                       _batch())
  text = parallel.compile_step(step, mesh, num_args=1).fn.lower(
      init, batch, frozen).as_text()
  ops = _conv_and_dot_dtypes(text)
  print({k: len(v) for k, v in ops.items()}, 'convolutions / dots')
  assert len(ops['conv']) > 50 and ops['dot']
  for kind, operands in ops.items():
    assert all(set(o) == {'bf16'} for o in operands), (kind, operands)
  floats = [leaf.dtype for leaf in jax.tree.leaves(init)
            if jnp.issubdtype(leaf.dtype, jnp.floating)]
  assert floats and set(floats) == {np.dtype(np.float32)}


@pytest.mark.slow
def test_bfloat16_step_tracks_float32():
  # Same weights, same 3 batches, float32 vs bfloat16 compute. Adam eps 1
  # keeps the updates linear in the gradient (see the device-count test), so
  # the parameter changes compare the gradients themselves.
  runs = {}
  for dtype in ('float32', 'bfloat16'):
    config = tiny.get_config()
    config.adam_eps, config.lr, config.dtype = 1.0, 1e-2, dtype
    runs[dtype] = _run_real(config, 'shard_map', 1, steps=3, history=True)
  (s32, h32), (s16, h16) = runs['float32'], runs['bfloat16']
  start = parallel.unreplicate_to_host(train_l2m.create_train_state(
      tiny.get_config(), train_l2m.create_models(tiny.get_config()),
      jax.random.key(0)))
  # Parameters, optimiser state and EMA stay float32.
  for leaf in jax.tree.leaves(s16):
    if np.issubdtype(np.asarray(leaf).dtype, np.floating):
      assert np.asarray(leaf).dtype == np.float32
  worst_loss = 0.0
  for m32, m16 in zip(h32, h16):
    for k in m32:
      scale = max(abs(float(m32[k])), 1e-3)
      worst_loss = max(worst_loss, abs(float(m16[k]) - float(m32[k])) / scale)
  worst_update = 0.0
  for name in ('generator', 'style_encoder', 'discriminator'):
    a = jax.tree.leaves(getattr(s32, name).params)
    b = jax.tree.leaves(getattr(s16, name).params)
    p0 = jax.tree.leaves(getattr(start, name).params)
    d32 = np.concatenate([np.ravel(x - z) for x, z in zip(a, p0)])
    d16 = np.concatenate([np.ravel(x - z) for x, z in zip(b, p0)])
    worst_update = max(worst_update, float(
        np.linalg.norm(d16 - d32) / np.linalg.norm(d32)))
  print(f'bf16 vs f32 over 3 steps: worst relative loss difference '
        f'{worst_loss:.2e}, worst relative update difference '
        f'{worst_update:.2e}')
  assert worst_loss <= BF16_LOSS_RTOL
  assert worst_update <= BF16_UPDATE_RTOL


# ---------------------------------------------------------------------------
# Slow: the real train step compiled several times.
# ---------------------------------------------------------------------------


def _batch(n=4, size=32, seed=0):
  rng = np.random.default_rng(seed)
  return {'x_src': rng.uniform(-1, 1, (n, size, size, 3)).astype(np.float32),
          'y_src': np.array([0, 1, 1, 0][:n], np.int32),
          'y_trg': np.array([1, 1, 0, 0][:n], np.int32)}


def _run_real(config, mode, num_devices, steps=1, history=False):
  models = train_l2m.create_models(config)
  mesh = parallel.make_mesh(num_devices)
  state = parallel.init_replicated(
      lambda: train_l2m.create_train_state(config, models,
                                           jax.random.key(0)), mesh)
  config.parallel = mode
  compiled = train_l2m.compile_train_step(config, models, mesh)
  dstate = compiled.put_state(state)
  frozen = compiled.put_args({})
  seen = []
  for k in range(steps):
    dstate, metrics = compiled(dstate, compiled.put_batch(_batch(seed=k)),
                               frozen)
    seen.append(compiled.get_metrics(metrics))
  return (parallel.unreplicate_to_host(compiled.get_state(dstate)),
          seen if history else seen[-1])


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
