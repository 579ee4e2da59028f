"""editing_metrics.fid_or_skip with real (random-weight) Inception weights."""

import numpy as np
import pytest
import torch
from PIL import Image

from l2m_jax.evaluation import editing_metrics
from tests import test_inception


def test_fid_skips_loudly_without_weights(capsys):
  out = editing_metrics.fid_or_skip(np.zeros((2, 8, 8, 3)),
                                    np.zeros((2, 8, 8, 3)))
  assert out['status'] == 'skipped' and 'Inception' in out['reason']
  assert 'FID skipped' in capsys.readouterr().out
  with pytest.raises(FileNotFoundError, match='absent'):
    editing_metrics.fid_or_skip(np.zeros((2, 8, 8, 3)),
                                np.zeros((2, 8, 8, 3)), 'absent')


@pytest.mark.slow
def test_fid_matches_torchvision_features_route(tmp_path):
  from pytorch_fid import fid_score  # pylint: disable=g-import-not-at-top
  model = test_inception._torchvision_model(seed=3)  # pylint: disable=protected-access
  path = tmp_path / 'inception_random.pth'
  torch.save(model.state_dict(), path)
  rng = np.random.default_rng(0)
  real = rng.uniform(-1, 1, (5, 64, 64, 3)).astype(np.float32)
  fake = np.clip(real + rng.normal(0, 0.3, real.shape), -1, 1).astype(
      np.float32)

  def torch_stats(images):
    # Independent route: PNG quantisation, PIL bilinear 299, ImageNet norm.
    u8 = np.floor(np.clip((images + 1) / 2, 0, 1) * 255 + 0.5).astype(
        np.uint8)
    x = np.stack([np.asarray(Image.fromarray(im).resize((299, 299),
                                                        Image.BILINEAR))
                  for im in u8]).astype(np.float32) / 255
    x = (x - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224,
                                                          0.225])
    feats = test_inception._tv_features(  # pylint: disable=protected-access
        model, torch.from_numpy(x.transpose(0, 3, 1, 2)).float())
    return feats.mean(0), np.cov(feats.astype(np.float64), rowvar=False)

  out = editing_metrics.fid_or_skip(real, fake, str(path), batch_size=4)
  assert out['status'] == 'ok'
  ref = fid_score.calculate_frechet_distance(*torch_stats(real),
                                             *torch_stats(fake))
  assert out['fid'] == pytest.approx(ref, rel=1e-3)
  same = editing_metrics.fid_or_skip(real, real, str(path), batch_size=4)
  assert abs(same['fid']) < 1e-3
