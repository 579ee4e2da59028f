"""Periodic FID inside training, with random-weight Inception weights."""

import json
import math

import pytest
import torch

from configs import tiny
from l2m_jax import train_l2m
from l2m_jax.evaluation import l2m_eval
from tests import test_inception
from tests.test_input_pipeline import make_folder


@pytest.mark.slow
def test_train_and_evaluate_writes_periodic_fid(tmp_path):
  data = make_folder(tmp_path / 'data', counts=(('neg', 3), ('pos', 3)),
                     val=2, size=(40, 40))
  weights = tmp_path / 'inception_random.pth'
  torch.save(test_inception._torchvision_model(seed=1).state_dict(),  # pylint: disable=protected-access
             weights)
  config = tiny.get_config()
  config.data_dir = str(data)
  config.eval_every = 2
  config.eval_fid = True
  config.inception_checkpoint = str(weights)
  workdir = tmp_path / 'run'
  train_l2m.train_and_evaluate(config, str(workdir))
  result = json.loads((workdir / l2m_eval.results_filename(2)).read_text())
  assert set(result) == {'FID_reference/neg2pos', 'FID_reference/pos2neg',
                         'FID_reference/mean'}
  assert all(math.isfinite(v) for v in result.values())
  assert result['FID_reference/mean'] == pytest.approx(
      (result['FID_reference/neg2pos'] + result['FID_reference/pos2neg']) / 2)
  # The edited val images were written per task, as the official eval does.
  assert sorted(p.name for p in (workdir / 'eval_000002').iterdir()) == [
      'neg2pos', 'pos2neg']
