"""End-to-end test of the one-command demo (l2m_jax/demo.py) at test size."""

import json

import numpy as np
import pytest
from PIL import Image

from configs import demo as demo_config
from l2m_jax import demo
from l2m_jax.convert import l2m as l2m_convert


@pytest.mark.slow  # compiles the GAN step: minutes on 2 contended CPU cores
def test_quick_demo_end_to_end(tmp_path):
  config = demo_config.get_config('quick')
  metrics = demo.run_demo(config, str(tmp_path))
  on_disk = json.loads((tmp_path / 'metrics.json').read_text())
  assert on_disk['attribute'] == 'smiling'
  assert on_disk['domains'] == ['no_smile', 'smile']
  edits = on_disk['edits']
  for a in config.demo.degrees:
    m = edits[f'degree={a:g}']
    assert 0.0 <= m['attribute_accuracy'] <= 1.0
    assert np.isfinite(m['identity_error'])
    assert m['pixel_change_outside'] >= 0.0
  assert edits['fid']['status'] == 'skipped'  # no Inception weights offline
  assert 0.0 <= on_disk['classifier_heldout_accuracy']['smiling'] <= 1.0
  assert metrics['edits'] == on_disk['edits']
  # Grid: one row per source, columns = source + one per degree.
  grid = np.asarray(Image.open(tmp_path / 'demo_grid.png'))
  s, pad = config.img_size, 2
  assert grid.shape[1] == (1 + len(config.demo.degrees)) * (s + pad) + pad
  assert grid.shape[0] == config.demo.grid_sources * (s + pad) + pad
  # The EMA export loads as an 'l2m_gan' checkpoint (what scripts/edit.py uses).
  _, mc = l2m_convert.load_l2m_checkpoint(tmp_path / 'train' / 'ema_export')
  assert mc.img_size == s
  assert list((tmp_path / 'train').glob('events.out.tfevents*'))


def test_demo_config_sizes():
  full = demo_config.get_config()
  quick = demo_config.get_config('quick')
  assert quick.total_iters < full.total_iters
  assert full.demo.attribute == 'smiling'
  with pytest.raises(ValueError, match='unknown argument'):
    demo_config.get_config('huge')
