"""Periodic FID inside training, checked against scripts/fid.py.

The shared `tiny_run` (conftest.py) trains 4 steps with the L2M-GAN FID at
step 4 (random-weight torchvision Inception). Training computes it in memory
from the edits of the validation images; scripts/fid.py reads the PNGs that
the evaluation saved and the training folders from disk, through the file
path of the FID module, and must give the same numbers.
"""

import importlib.util
import json
import pathlib

import pytest

from l2m_jax.evaluation import l2m_eval

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _fid_cli():
  spec = importlib.util.spec_from_file_location('train_fid_cli',
                                                ROOT / 'scripts' / 'fid.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_periodic_fid_equals_scripts_fid_on_the_same_images(tiny_run,
                                                           tmp_path):
  step = tiny_run.config.eval_every
  result = json.loads(
      (tiny_run.workdir / l2m_eval.results_filename(step)).read_text())
  assert set(result) == {'FID_reference/neg2pos', 'FID_reference/pos2neg',
                         'FID_reference/mean'}
  eval_dir = tiny_run.workdir / f'eval_{step:06d}'
  # The edited validation images were written per task, as the official
  # evaluation does: one PNG per validation image of the source domain.
  assert sorted(p.name for p in eval_dir.iterdir()) == ['neg2pos', 'pos2neg']
  fid_cli = _fid_cli()
  for task in ('neg2pos', 'pos2neg'):
    src, trg = task.split('2')
    assert ([p.stem for p in sorted((eval_dir / task).glob('*.png'))] ==
            [p.stem for p in sorted((tiny_run.data / 'val' / src).iterdir())])
    out = tmp_path / f'{task}.json'
    # The batch size of the training's extractor (the validation batch):
    # the same compiled Inception program, reused from the cache.
    rc = fid_cli.main([str(eval_dir / task),
                       str(tiny_run.data / 'train' / trg),
                       '--weights', str(tiny_run.weights),
                       '--protocol', 'stargan_v2', '--json', str(out),
                       '--batch-size', str(tiny_run.config.val_batch_size),
                       '--no-progress'])
    assert rc == 0
    reference = json.loads(out.read_text())
    assert reference['num_images'] == [
        len(list((eval_dir / task).iterdir())),
        len(list((tiny_run.data / 'train' / trg).iterdir()))]
    # Same images, same weights, same batch size; the images come from
    # memory in one case and from the PNGs in the other, and the float64
    # statistics accumulate in another order.
    assert result[f'FID_reference/{task}'] == pytest.approx(
        reference['fid'], rel=1e-6, abs=1e-6)
  assert result['FID_reference/mean'] == pytest.approx(
      (result['FID_reference/neg2pos'] + result['FID_reference/pos2neg']) / 2,
      rel=1e-12)
