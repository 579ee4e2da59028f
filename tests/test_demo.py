"""Tests of the one-command demo (l2m_jax/demo.py, configs/demo.py).

`test_demo_stages_smoke` (default suite) runs every demo stage except the
GAN training loop, on a random-weight EMA export, and recomputes the
reported metrics from the saved edits with independent code (numpy, the
renderer's region masks, the saved metric models). The end-to-end runs at
the 'quick' size (slow) check the log, the outputs and that two runs give
byte-identical metrics and grids.
"""

import functools
import importlib.util
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from PIL import Image

from configs import demo as demo_config
from l2m_jax import demo
from l2m_jax import editing
from l2m_jax import host_memory
from l2m_jax import l2m_export
from l2m_jax import l2m_frozen
from l2m_jax import train_l2m
from l2m_jax.convert import l2m as l2m_convert
from l2m_jax.datasets import synthetic_faces as sf
from l2m_jax.evaluation import editing_metrics as em

REPO = pathlib.Path(__file__).resolve().parents[1]


def _load_script(name):
  spec = importlib.util.spec_from_file_location(
      name, REPO / 'scripts' / f'{name}.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _f(u8):
  return u8.astype(np.float64) / 127.5 - 1.0


def _check_outputs(work, config, metrics):
  """metrics.json against values recomputed from edits.npz; the grid."""
  attr = config.demo.attribute
  on_disk = json.loads((work / 'metrics.json').read_text())
  assert metrics['edits'] == on_disk['edits']
  assert on_disk['attribute'] == attr
  assert on_disk['domains'] == list(sf.DOMAINS[attr])
  assert on_disk['training_data'] == f'synthetic_faces:{attr}:32px:seed0'
  s = config.img_size
  val = sf.generate_arrays(config.demo.num_val, s, config.demo.data_seed,
                           'val')
  x = _f(val['image'])
  y = val[attr]
  saved = np.load(work / 'edits.npz')
  edits, degrees = saved['edits'], saved['degrees']
  np.testing.assert_array_equal(degrees, config.demo.degrees)
  assert edits.shape == (len(degrees), len(x), s, s, 3)
  np.testing.assert_array_equal(saved['source_labels'], y)
  # Pixel change outside the renderer's region masks, in numpy.
  outside = 1.0 - sf.region_masks(val['identity'], attr, s)[..., None]
  def pix(img):
    return float((np.abs(_f(img) - x) * outside).sum() /
                 (outside.sum() * 3))
  # The saved metric models, applied to the saved edits.
  k = sf.ATTRIBUTES.index(attr)
  c_apply, c_params, _ = em.load_model(work / 'metric_models' / 'classifier',
                                       em.CLASSIFIER_FORMAT)
  r_apply, r_params, _ = em.load_model(
      work / 'metric_models' / 'identity_regressor', em.REGRESSOR_FORMAT)
  logits = lambda img: np.asarray(jax.jit(c_apply)(c_params, _f(img)))[:, k]
  ident = lambda img: np.asarray(jax.jit(r_apply)(r_params, img))
  id_src = ident(x)
  id_err = lambda img: float(np.mean(np.linalg.norm(
      ident(_f(img)) - id_src, axis=1)))
  base = id_err(edits[list(degrees).index(0.0)])
  for j, a in enumerate(degrees):
    m = on_disk['edits'][f'degree={a:g}']
    np.testing.assert_allclose(m['pixel_change_outside'], pix(edits[j]),
                               rtol=1e-5, atol=1e-7)
    want = y if a == 0 else 1 - y
    np.testing.assert_allclose(m['attribute_accuracy'],
                               np.mean((logits(edits[j]) > 0) == want))
    np.testing.assert_allclose(m['identity_error'], id_err(edits[j]),
                               rtol=1e-4)
    if a != 0:
      np.testing.assert_allclose(m['identity_error_baseline'], base,
                                 rtol=1e-4)
    # Per identity factor: mean |change| of each regressed value.
    np.testing.assert_allclose(
        on_disk['identity_factors'][f'degree={a:g}'],
        np.abs(ident(_f(edits[j])) - id_src).mean(axis=0), rtol=1e-4,
        atol=1e-6)
  assert on_disk['identity_factors']['names'] == list(sf.IDENTITY_NAMES)
  # The exact counterfactual: the renderer with the attribute flipped.
  cf = saved['counterfactuals']
  ident0, attrs0 = sf.sample_face(config.demo.data_seed, 'val', 0)
  np.testing.assert_array_equal(
      cf[0], sf.render_face(ident0, {**attrs0, attr: 1 - attrs0[attr]}, s))
  ref = on_disk['references']['exact_counterfactual']
  np.testing.assert_allclose(ref['pixel_change_outside'], pix(cf),
                             rtol=1e-5, atol=1e-7)
  # The edit's identity error against the counterfactual, not the source.
  np.testing.assert_allclose(
      on_disk['references']['edit_identity_error_vs_counterfactual'],
      np.mean(np.linalg.norm(ident(_f(edits[list(degrees).index(1.0)])) -
                             ident(_f(cf)), axis=1)), rtol=1e-4)
  # The same figures per edit direction: the faces of one source domain.
  dist = lambda a, b: np.linalg.norm(ident(_f(a)) - ident(b), axis=1)
  rec_d = dist(edits[list(degrees).index(0.0)], x)
  ed_d = dist(edits[list(degrees).index(1.0)], x)
  cf_d = dist(edits[list(degrees).index(1.0)], _f(cf))
  by = on_disk['references']['by_source_domain']
  assert list(by) == list(sf.DOMAINS[attr])  # the val faces hold both
  for k, name in enumerate(sf.DOMAINS[attr]):
    m, r = y == k, by[name]
    assert r['num_faces'] == int(m.sum())
    np.testing.assert_allclose(
        [r['reconstruction_identity_error'], r['edit_identity_error'],
         r['identity_error_ratio'], r['edit_identity_error_vs_counterfactual'],
         r['vs_counterfactual_ratio']],
        [rec_d[m].mean(), ed_d[m].mean(), ed_d[m].mean() / rec_d[m].mean(),
         cf_d[m].mean(), cf_d[m].mean() / rec_d[m].mean()], rtol=1e-4)
  assert pix(cf) < 0.02  # only the region changes (up to anti-aliasing)
  assert edits[:, :, :, :, :].std() > 0
  assert on_disk['edits']['fid']['status'] == 'skipped'  # no Inception here
  # Grid: rows = sources; columns = source, degrees, counterfactual.
  grid = np.asarray(Image.open(work / 'demo_grid.png'))
  big = np.asarray(Image.open(work / 'demo_grid_large.png'))
  z = demo.GRID_ZOOM
  assert z >= 4 and big.shape == (grid.shape[0] * z, grid.shape[1] * z, 3)
  np.testing.assert_array_equal(big[::z, ::z], grid)  # nearest-neighbour:
  np.testing.assert_array_equal(big[z - 1::z, z - 1::z], grid)  # flat blocks
  pad = 2
  n_rows = config.demo.grid_sources
  cols = 2 + len(degrees)
  assert grid.shape == (n_rows * (s + pad) + pad, cols * (s + pad) + pad, 3)
  order = on_disk['grid_sources']
  np.testing.assert_array_equal(saved['grid_sources'], order)
  assert set(y[order].tolist()) == {0, 1}  # both edit directions are shown
  tile = lambda r, c: grid[pad + r * (s + pad):pad + r * (s + pad) + s,
                           pad + c * (s + pad):pad + c * (s + pad) + s]
  for r, i in enumerate(order):
    np.testing.assert_array_equal(tile(r, 0), val['image'][i])
    for j in range(len(degrees)):
      np.testing.assert_array_equal(tile(r, 1 + j), edits[j, i])
    np.testing.assert_array_equal(tile(r, cols - 1), cf[i])
  assert list((work / 'train').glob('events.out.tfevents*'))
  return on_disk


def test_regressor_training_set_and_metric_settings():
  """The identity regressor learns each train face and its counterfactual
  (the renderer with the attribute flipped) under one identity target."""
  config = demo_config.get_config('quick')
  attr, n, size = config.demo.attribute, config.demo.num_train, 32
  images, targets = demo.regressor_training_set(config)
  train = sf.generate_arrays(n, size, config.demo.data_seed, 'train')
  assert images.shape == (2 * n, size, size, 3)
  np.testing.assert_array_equal(images[:n], train['image'])
  np.testing.assert_array_equal(targets[:n], train['identity'])
  np.testing.assert_array_equal(targets[n:], train['identity'])
  for i in (0, n - 1):
    ident, attrs = sf.sample_face(config.demo.data_seed, 'train', i)
    np.testing.assert_array_equal(
        images[n + i], sf.render_face(ident, {**attrs, attr: 1 - attrs[attr]},
                                      size))
  assert not np.array_equal(images[n:], images[:n])
  config.demo.regressor_counterfactuals = False
  images, targets = demo.regressor_training_set(config)
  np.testing.assert_array_equal(images, train['image'])
  # The metric models' seed: the run's unless given.
  config.seed = 3
  assert demo.metric_seed(config) == 3
  config.demo.metric_seed = 0
  assert demo.metric_seed(config) == 0
  for field, value in (('metric_seed', -2), ('regressor_steps', 0),
                       ('metric_steps', -3)):
    bad = demo_config.get_config('quick')
    bad.demo[field] = value
    with pytest.raises(ValueError, match=f'config.demo.{field}='):
      demo.run_demo(bad, '/nonexistent/never-made')


def test_metric_models_job_pauses_and_matches_the_main_thread():
  """The background job trains the same models as the main thread, even
  paused and resumed mid-way while the main thread runs other programs; a
  paused job runs nothing; errors and cancellation reach the caller."""
  config = demo_config.get_config('quick')
  config.demo.metric_steps, config.demo.regressor_steps = 12, 15
  val = demo._faces(config, 'val')  # pylint: disable=protected-access
  ref = demo.fit_metric_models(config, val)

  steps = []
  original = em.train_model

  def counting(kind, *args, gate=None, **kwargs):
    def counted():
      gate()
      steps.append(kind)
    return original(kind, *args, gate=counted, **kwargs)

  em.train_model, saved = counting, em.train_model
  try:
    job = demo.MetricModelsJob(config)
    deadline = time.time() + 120
    while not steps and time.time() < deadline:
      time.sleep(0.01)
    job.pause()
    time.sleep(0.5)  # the step that passed the gate finishes
    paused_at = len(steps)
    # Another program in the main thread meanwhile.
    jax.block_until_ready(jax.jit(lambda v: v @ v.T)(jax.numpy.ones((64, 64))))
    time.sleep(1.0)
    assert len(steps) == paused_at and not job.done()
    assert 0 < paused_at < 27
    got = job.result()
  finally:
    em.train_model = saved
  assert steps == ['classifier'] * 12 + ['regressor'] * 15
  for (_, p_ref, m_ref), (_, p_got, m_got) in zip(ref, got):
    for a, b in zip(jax.tree.leaves(p_ref), jax.tree.leaves(p_got)):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    m_ref, m_got = dict(m_ref), dict(m_got)
    m_ref.pop('train_seconds'), m_got.pop('train_seconds')
    assert m_ref == m_got
  assert job.busy_s > 0

  cancelled = demo.MetricModelsJob(config)
  cancelled.pause()
  cancelled.cancel()
  assert cancelled.done()
  with pytest.raises(RuntimeError, match='cancelled'):
    cancelled.result()
  def failing(kind, *args, **kwargs):
    if kind == 'regressor':
      raise ValueError('regressor failed here')
    return original(kind, *args, **kwargs)

  em.train_model = failing
  try:
    with pytest.raises(ValueError, match='regressor failed here'):
      demo.MetricModelsJob(config).result()
  finally:
    em.train_model = saved


def test_generate_data_renders_in_a_child_process(tmp_path, monkeypatch):
  """Stage 1 renders in a child process while `meanwhile` runs here; the
  later stages get the rendered faces without rendering them again."""
  config = demo_config.get_config('quick')
  render = sf.generate_arrays

  def no_render(*unused_args):
    raise AssertionError('faces rendered in the demo process')

  monkeypatch.setattr(demo, '_FACES', {})
  monkeypatch.setattr(sf, 'generate_arrays', no_render)
  calls = []
  info = demo.generate_data(config, str(tmp_path),
                            meanwhile=lambda: calls.append('meanwhile'))
  assert calls == ['meanwhile'] and not info['reused']
  d = config.demo
  for split, num in (('train', d.num_train), ('val', d.num_val)):
    got = demo._faces(config, split)  # pylint: disable=protected-access
    ref = render(num, int(config.img_size), int(d.data_seed), split)
    assert sorted(got) == sorted(ref)
    for k, v in ref.items():
      assert got[k].dtype == v.dtype, k
      np.testing.assert_array_equal(got[k], v, err_msg=k)
      assert not got[k].flags.writeable
  # A rerun reuses the folder and reads the faces from it.
  monkeypatch.setattr(demo, '_FACES', {})
  assert demo.generate_data(config, str(tmp_path))['reused']
  np.testing.assert_array_equal(
      demo._faces(config, 'val')['image'],  # pylint: disable=protected-access
      render(d.num_val, int(config.img_size), int(d.data_seed), 'val')['image'])


def test_demo_stages_smoke(tmp_path, capsys):
  """Every stage but the GAN training loop; metrics recomputed from files."""
  config = demo_config.get_config('quick')
  config.demo.metric_steps = config.demo.regressor_steps = 5
  info = demo.generate_data(config, str(tmp_path))
  attr = config.demo.attribute
  assert config.data_dir == str(tmp_path.resolve() / 'data')
  for split, num in (('train', config.demo.num_train),
                     ('val', config.demo.num_val)):
    files = list((tmp_path / 'data' / split).glob('*/*.png'))
    assert len(files) == num == sum(info['counts'][split].values())
    assert {f.parent.name for f in files} == set(sf.DOMAINS[attr])
  lm_info = demo.train_landmarks(config, str(tmp_path))
  assert config.landmark_checkpoint == str(
      tmp_path.resolve() / 'priors' / 'landmarks')
  assert lm_info['val_peak_error_mean_px'] > 0
  demo.train_preservation(config, str(tmp_path))
  assert (tmp_path / 'priors' / 'preservation' / 'meta.json').is_file()
  capsys.readouterr()
  # Same settings: both networks are reused, not retrained.
  demo.train_landmarks(config, str(tmp_path))
  demo.train_preservation(config, str(tmp_path))
  out = capsys.readouterr().out
  assert out.count('reusing') == 2, out

  # An untrained EMA export in the training's format (no training loop),
  # with the landmark network as l2m_frozen.load_frozen gives it.
  models = train_l2m.create_models(config, list(sf.DOMAINS[attr]))
  # Jitted as the trainer runs it (eagerly, op by op, it takes 4 s longer).
  state = jax.jit(functools.partial(train_l2m.create_train_state, config,
                                    models))(jax.random.key(0))
  frozen = l2m_frozen.load_frozen(config, jax.random.key(1))
  assert set(frozen) == {'landmarks', 'preservation'}
  ckpt = tmp_path / 'train' / 'ema_export'
  l2m_export.export_ema(ckpt, state.ema, frozen, models.model_config, 0,
                        str(tmp_path / 'train'))
  variables, mc = l2m_convert.load_l2m_checkpoint(ckpt)
  assert 'landmarks' in variables and 'fan' not in variables
  assert mc.training_data == demo.training_data_tag(config)
  assert editing.input_warnings(mc)  # "trained on the generated faces"
  metrics = demo.evaluate(config, str(tmp_path), ckpt, {'data_s': 0.0})
  _check_outputs(tmp_path, config, metrics)
  assert metrics['regressor_training'] == {
      'faces': config.demo.num_train, 'counterfactuals': True, 'steps': 5,
      'seed': config.seed}
  # Degree 0 of an untrained model is not the identity: the metrics must see
  # the edits, not the sources.
  assert metrics['edits']['degree=0']['pixel_change_outside'] > 0.01
  lines = demo.summary_lines(metrics, tmp_path)
  # scripts/demo_report.py: the docs' tables from metrics.json.
  report = _load_script('demo_report')
  assert report.main([str(tmp_path)]) == 0
  out = capsys.readouterr().out
  d1 = metrics['edits']['degree=1']
  assert (f'| **1 (the edit)** | {d1["attribute_accuracy"]:.3f} | '
          f'{d1["identity_error"]:.3f} | {d1["identity_error_ratio"]:.3f} | '
          f'{d1["pixel_change_outside"]:.3f} |') in out
  # The verdicts follow the values and the bounds.
  assert '| attribute accuracy | ' in out and '>= 0.95 |' in out
  met = {n: ok for n, _, _, _, ok in demo.target_checks(metrics)}
  assert met['pixel change outside'] == (d1['pixel_change_outside'] <= 0.06)
  d0 = metrics['edits']['degree=0']['pixel_change_outside']
  assert met['reconstruction pixel change outside'] == (d0 <= 0.05)
  # The factor whose identity error rises most from degree 0 to 1 heads
  # the per-factor table and the summary line.
  fac = metrics['identity_factors']
  rise = [b - a for a, b in zip(fac['degree=0'], fac['degree=1'])]
  k = max(range(len(rise)), key=lambda i: (rise[i], -i))
  table = out[out.index('| factor |'):].splitlines()
  assert table[2] == (f'| {fac["names"][k]} | {fac["degree=0"][k]:.3f} | '
                      f'{fac["degree=1"][k]:.3f} | '
                      f'{fac["exact_counterfactual"][k]:.3f} |')
  assert any(f'most (vs reconstruction): {fac["names"][k]} {rise[k]:+.3f}'
             in l for l in lines)
  # The edit against the counterfactual, over the reconstruction's error.
  v = metrics['references']['edit_identity_error_vs_counterfactual']
  vs_cf = f'{v:.3f} ({v / d1["identity_error_baseline"]:.3f}x'
  assert any(f'against the exact counterfactual {vs_cf}' in l for l in lines)
  assert (f'instead of the source: {v:.3f}, '
          f'{v / d1["identity_error_baseline"]:.3f}x') in out
  for name, r in metrics['references']['by_source_domain'].items():
    assert (f'| {r["num_faces"]} | {r["reconstruction_identity_error"]:.3f} '
            f'| {r["edit_identity_error"]:.3f} | '
            f'{r["identity_error_ratio"]:.3f} |') in out
    assert any(f'{name} {r["identity_error_ratio"]:.3f} (vs counterfactual '
               f'{r["vs_counterfactual_ratio"]:.3f})' in l for l in lines)
  assert report.main([f'x={tmp_path}', f'y={tmp_path / "metrics.json"}']) == 0
  rows = [l for l in capsys.readouterr().out.splitlines()
          if l.startswith(('| x ', '| y '))]
  assert len(rows) == 2 and rows[0][4:] == rows[1][4:]
  assert report.main([str(tmp_path / 'data')]) == 2
  assert 'metrics.json' in capsys.readouterr().err
  assert any(str(tmp_path / 'demo_grid.png') in l for l in lines)
  assert any('docs/editing.md' in l for l in lines)

  with pytest.raises(ValueError, match='config.img_size'):
    wrong = demo_config.get_config('quick')
    wrong.img_size = 64
    demo.evaluate(wrong, str(tmp_path), ckpt)


def _run_quick_demo(workdir, *extra):
  env = dict(os.environ, PYTHONPATH=str(REPO))
  env.pop('XLA_FLAGS', None)  # the CPU devices the CLI sets, as a user runs it
  out = subprocess.run(
      [sys.executable, '-m', 'l2m_jax.demo', '--config=configs/demo.py:quick',
       f'--workdir={workdir}', *extra], cwd=REPO, env=env,
      capture_output=True, text=True, timeout=900)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  return out.stdout + out.stderr


@pytest.mark.slow  # two quick demos (mostly compilation): ~2-3 min on 2 cores
def test_quick_demo_log_outputs_and_determinism(tmp_path):
  log = _run_quick_demo(tmp_path / 'a')
  lines = log.splitlines()
  # Quiet log: each stage once, compile notices, progress, summary; no
  # library INFO (orbax, clu scalars, parameter tables, TF notices).
  for stage in range(1, demo.NUM_STAGES + 1):
    assert sum(l.split('] ', 1)[-1].startswith(f'{stage}/{demo.NUM_STAGES} ')
               for l in lines) == 1, (stage, log)
  assert 'compiling' in log
  # The CLI splits the CPU into config.demo.cpu_devices devices.
  assert f'device cpu x{demo_config.get_config("quick").demo.cpu_devices}' in log
  # ... and runs with malloc huge pages where glibc can (re-executing itself
  # unless the environment already names the tunable).
  given = [e.split('=', 1)[1] for e in
           os.environ.get('GLIBC_TUNABLES', '').split(':')
           if e.startswith('glibc.malloc.hugetlb=')]
  on = given[0] not in ('', '0') if given else host_memory.why_not() is None
  assert ('malloc huge pages on' in log) == on, log
  assert 'training: 2/2 (100%)' in log or 'first step done' in log
  assert len(lines) < 60, log
  for noise in ('INFO', 'orbax', 'parameter', 'I0000', 'cpu_feature_guard'):
    assert noise not in log, noise
  assert str(tmp_path / 'a' / 'demo_grid.png') in log
  config = demo_config.get_config('quick')
  work = tmp_path / 'a'
  metrics = json.loads((work / 'metrics.json').read_text())
  _check_outputs(work, config, metrics)
  assert metrics['train_steps'] == config.total_iters
  assert set(metrics['timings_s']) >= {'data_s', 'landmarks_s', 'train_s',
                                       'total'}
  _, mc = l2m_convert.load_l2m_checkpoint(work / 'train' / 'ema_export')
  assert mc.img_size == config.img_size and mc.w_hpf > 0
  assert list((work / 'train' / 'samples').glob('*.png'))

  # A second fresh run on this machine: identical metrics and grid bytes.
  _run_quick_demo(tmp_path / 'b')
  strip = lambda m: {k: v for k, v in m.items()
                     if k not in ('timings_s', 'checkpoint')}
  b = json.loads((tmp_path / 'b' / 'metrics.json').read_text())
  assert strip(b) == strip(metrics)
  assert ((tmp_path / 'a' / 'demo_grid.png').read_bytes() ==
          (tmp_path / 'b' / 'demo_grid.png').read_bytes())
  # --verbose brings the library logs back.
  verbose = _run_quick_demo(tmp_path / 'a', '--verbose')
  assert 'reusing' in verbose
  # absl's INFO lines: 'I' + month and day (e.g. I1202 06:51:11.262539 ...).
  assert re.search(r'^I\d{4} \d\d:\d\d:\d\d\.\d+ ', verbose, re.M), verbose[-2000:]


def test_demo_config_sizes():
  full = demo_config.get_config()
  quick = demo_config.get_config('quick')
  assert quick.total_iters < full.total_iters
  assert full.demo.attribute == 'grey_hair'
  assert full.w_hpf > 0 and full.preservation == 'synthetic_faces'
  # The demo model is the narrow one (base_dim), not the official width rule.
  mc = train_l2m.model_config_from(full)
  assert mc.base_dim == 32 and mc.img_size == 32
  with pytest.raises(ValueError, match='unknown argument'):
    demo_config.get_config('huge')


def test_demo_stops_without_evaluating_after_a_preempted_training(
    tmp_path, monkeypatch, capsys):
  """Training stopped early (SIGTERM): no evaluation, a line on resuming."""
  config = demo_config.get_config('quick')
  def fake_data(unused_config, unused_workdir, meanwhile=None):
    if meanwhile is not None:
      meanwhile()
    return {'counts': {}}

  monkeypatch.setattr(demo, 'generate_data', fake_data)
  monkeypatch.setattr(demo, 'train_landmarks', lambda c, w: {})
  monkeypatch.setattr(demo, 'train_preservation', lambda c, w: {})

  class _State:
    step = jax.numpy.asarray(1, jax.numpy.int32)

  monkeypatch.setattr(train_l2m, 'train_and_evaluate',
                      lambda c, w, hooks=(): _State())
  def no_eval(*a, **k):
    raise AssertionError('evaluated a model whose training did not finish')
  monkeypatch.setattr(demo, 'evaluate', no_eval)
  out = demo.run_demo(config, str(tmp_path))
  assert out == {'stopped_at_step': 1, 'total_iters': config.total_iters}
  log = capsys.readouterr().out
  assert f'training stopped at step 1/{config.total_iters}' in log
  assert 'Rerun the same command' in log
  assert not (tmp_path / 'metrics.json').exists()


@pytest.mark.slow  # two quick demos, 300 steps: 702 s beside the default suite
def test_quick_demo_sigterm_then_rerun_finishes(tmp_path):
  """SIGTERM during training: exit 0, checkpoint, rerun resumes and ends."""
  args = [sys.executable, '-m', 'l2m_jax.demo', '--config=configs/demo.py:quick',
          f'--workdir={tmp_path}', '--config.total_iters=300',
          '--config.save_every=300', '--config.sample_every=300']
  env = dict(os.environ, PYTHONPATH=str(REPO))
  env.pop('XLA_FLAGS', None)
  proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  lines = []
  for line in proc.stdout:
    lines.append(line)
    if 'training: first step done' in line:
      time.sleep(0.5)
      proc.send_signal(signal.SIGTERM)
      break
  rest, _ = proc.communicate(timeout=600)
  log = ''.join(lines) + rest
  assert proc.returncode == 0, log[-3000:]
  m = re.search(r'training stopped at step (\d+)/300', log)
  assert m, log[-3000:]
  assert 1 <= int(m.group(1)) < 300
  assert not (tmp_path / 'metrics.json').exists()
  assert (tmp_path / 'train' / 'checkpoints' / m.group(1)).is_dir()
  log2 = _run_quick_demo(tmp_path, '--config.total_iters=300',
                         '--config.save_every=300', '--config.sample_every=300')
  assert 'reusing' in log2 and 'training done' in log2, log2[-3000:]
  metrics = json.loads((tmp_path / 'metrics.json').read_text())
  assert metrics['train_steps'] == 300


_IMPORT_ORDER_SCRIPT = r'''
import contextlib, sys, threading
from etils import epy
windows = []
_lazy = epy.lazy_imports


@contextlib.contextmanager
def recording(*args, **kwargs):
  windows.append(threading.current_thread().name)
  with _lazy(*args, **kwargs):
    yield


epy.lazy_imports = recording
from l2m_jax import demo
from configs import demo as demo_config


class Started(Exception):
  pass


class Job:
  def __init__(self, config):
    # Every window in which TFDS swaps builtins.__import__ is over.
    print('windows before the job:', len(windows), flush=True)
    print('tfds imported:', 'tensorflow_datasets' in sys.modules, flush=True)
    raise Started()

  def cancel(self):
    pass


demo.MetricModelsJob = Job
try:
  demo.run_demo(demo_config.get_config('quick'), sys.argv[1])
except Started:
  print('job started', flush=True)
'''


def test_tfds_is_imported_before_the_metric_models_thread(tmp_path):
  # TFDS imports parts of itself under etils' lazy_imports, which replaces
  # builtins.__import__ for every thread meanwhile; a thread importing then
  # failed (seen: PIL and jax imports in the metric models' job). The demo
  # imports the input pipeline before starting the job.
  env = dict(os.environ, PYTHONPATH=str(REPO))
  out = subprocess.run(
      [sys.executable, '-c', _IMPORT_ORDER_SCRIPT, str(tmp_path / 'w')],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  lines = out.stdout.splitlines()
  assert 'job started' in lines, out.stdout
  assert 'tfds imported: True' in lines, out.stdout
  windows = int(next(l for l in lines if l.startswith('windows before'))
                .split(':')[1])
  assert windows > 0, out.stdout  # the swaps happened, and before the job
