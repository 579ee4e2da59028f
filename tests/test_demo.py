"""Tests of the one-command demo (l2m_jax/demo.py, configs/demo.py).

`test_demo_stages_smoke` (default suite) runs every demo stage except the
GAN training loop, on a random-weight EMA export; the full end-to-end run at
the 'quick' size compiles the training step and is marked slow.
"""

import json

import jax
import numpy as np
import pytest
from PIL import Image

from configs import demo as demo_config
from l2m_jax import demo
from l2m_jax import train_l2m
from l2m_jax.convert import l2m as l2m_convert
from l2m_jax.datasets import synthetic_faces as sf


def _check_outputs(tmp_path, config, metrics):
  """Checks metrics.json, the grid and the TensorBoard events of a demo run."""
  attr = config.demo.attribute
  on_disk = json.loads((tmp_path / 'metrics.json').read_text())
  assert on_disk['attribute'] == attr
  assert on_disk['domains'] == list(sf.DOMAINS[attr])
  edits = on_disk['edits']
  for a in config.demo.degrees:
    m = edits[f'degree={a:g}']
    assert 0.0 <= m['attribute_accuracy'] <= 1.0
    assert np.isfinite(m['identity_error'])
    assert m['pixel_change_outside'] >= 0.0
  assert edits['fid']['status'] == 'skipped'  # no Inception weights offline
  assert 0.0 <= on_disk['classifier_heldout_accuracy'][attr] <= 1.0
  assert metrics['edits'] == on_disk['edits']
  # Grid: one row per source, columns = source + one per degree; the source
  # column holds the generated val faces named in metrics.json, in order.
  grid = np.asarray(Image.open(tmp_path / 'demo_grid.png'))
  s, pad = config.img_size, 2
  n_rows = config.demo.grid_sources
  assert grid.shape == (n_rows * (s + pad) + pad,
                        (1 + len(config.demo.degrees)) * (s + pad) + pad, 3)
  val = sf.generate_arrays(config.demo.num_val, s, config.demo.data_seed,
                           'val')
  order = on_disk['grid_sources']
  assert len(order) == n_rows
  labels = val[attr][order]
  assert set(labels.tolist()) == {0, 1}  # both edit directions are shown
  for r, i in enumerate(order):
    y0 = pad + r * (s + pad)
    np.testing.assert_array_equal(grid[y0:y0 + s, pad:pad + s],
                                  val['image'][i])
  assert list((tmp_path / 'train').glob('events.out.tfevents*'))


def test_demo_stages_smoke(tmp_path):
  """Data export, a random-weight EMA export, edits, metrics and outputs."""
  config = demo_config.get_config('quick')
  config.demo.metric_steps = 5
  info = demo.generate_data(config, str(tmp_path))
  attr = config.demo.attribute
  assert config.data_dir == str(tmp_path.resolve() / 'data')
  for split, num in (('train', config.demo.num_train),
                     ('val', config.demo.num_val)):
    files = list((tmp_path / 'data' / split).glob('*/*.png'))
    assert len(files) == num == sum(info['counts'][split].values())
    assert {f.parent.name for f in files} == set(sf.DOMAINS[attr])
  # The val files are the arrays the evaluation regenerates.
  val = sf.generate_arrays(config.demo.num_val, config.img_size,
                           config.demo.data_seed, 'val')
  dom = sf.DOMAINS[attr][val[attr][0]]
  first = sorted((tmp_path / 'data' / 'val' / dom).glob('*.png'))[0]
  np.testing.assert_array_equal(np.asarray(Image.open(first)),
                                val['image'][0])

  # An untrained EMA export in the training's format (no training loop).
  models = train_l2m.create_models(config, list(sf.DOMAINS[attr]))
  state = train_l2m.create_train_state(config, models, jax.random.key(0))
  ckpt = tmp_path / 'train' / 'ema_export'
  train_l2m.export_ema(ckpt, state.ema, {}, models.model_config, 0,
                       str(tmp_path / 'train'))
  metrics = demo.evaluate(config, str(tmp_path), ckpt, {'data_s': 0.0})
  _check_outputs(tmp_path, config, metrics)
  # Degree 0 of an untrained model is not the identity: the metrics must see
  # the edits, not the sources.
  assert metrics['edits']['degree=0']['pixel_change_outside'] > 0.01
  assert (tmp_path / 'metric_models' / 'classifier' / 'meta.json').exists()
  # The exact counterfactual changes only the attribute's region (up to the
  # anti-aliased mask border), unlike any untrained generator.
  ref = metrics['references']
  assert ref['exact_counterfactual']['pixel_change_outside'] < 0.02
  assert ref['exact_counterfactual']['identity_error'] >= 0.0
  assert ref['different_faces_identity_error'] > 0.0

  with pytest.raises(ValueError, match='config.img_size'):
    wrong = demo_config.get_config('quick')
    wrong.img_size = 64
    demo.evaluate(wrong, str(tmp_path), ckpt)


@pytest.mark.slow  # compiles the GAN init and train step: 45-75 s on 2 cores
def test_quick_demo_end_to_end(tmp_path):
  config = demo_config.get_config('quick')
  metrics = demo.run_demo(config, str(tmp_path))
  _check_outputs(tmp_path, config, metrics)
  assert metrics['train_steps'] == config.total_iters
  assert set(metrics['timings_s']) >= {'data_s', 'train_s', 'total'}
  # The EMA export loads as an 'l2m_gan' checkpoint (what scripts/edit.py uses).
  _, mc = l2m_convert.load_l2m_checkpoint(tmp_path / 'train' / 'ema_export')
  assert mc.img_size == config.img_size
  assert list((tmp_path / 'train' / 'samples').glob('*.png'))


def test_demo_config_sizes():
  full = demo_config.get_config()
  quick = demo_config.get_config('quick')
  assert quick.total_iters < full.total_iters
  assert full.demo.attribute == 'grey_hair'
  assert full.demo.attribute in sf.ATTRIBUTES
  # The demo model is the narrow one (base_dim), not the official width rule.
  mc = train_l2m.model_config_from(full)
  assert mc.base_dim == 32 and mc.img_size == 32
  with pytest.raises(ValueError, match='unknown argument'):
    demo_config.get_config('huge')
