"""PyTorch-exact resampling (adaptive average pooling, legacy nearest)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torch.nn import functional as F

from l2m_jax.models import resize


def _pair(shape, seed=0):
  x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
  return x, torch.from_numpy(x.transpose(0, 3, 1, 2).copy())


@pytest.mark.parametrize('hw,out', [((1024, 1024), (256, 256)),
                                    ((188, 188), (112, 112)),
                                    ((64, 64), (256, 256)),
                                    ((300, 256), (224, 224)),
                                    ((729, 729), (256, 256))])
def test_adaptive_avg_pool_matches_torch(hw, out):
  x, xt = _pair((2,) + hw + (3,))
  want = F.adaptive_avg_pool2d(xt, out).numpy().transpose(0, 2, 3, 1)
  got = np.asarray(jax.jit(resize.adaptive_avg_pool2d,
                           static_argnums=1)(x, out))
  np.testing.assert_allclose(got, want, atol=2e-6)


@pytest.mark.parametrize('hw', [(1024, 1024), (256, 256), (300, 300),
                                (100, 100), (112, 112), (225, 230)])
def test_nearest_matches_torch(hw):
  x, xt = _pair((1,) + hw + (3,), seed=1)
  want = F.interpolate(xt, (224, 224), mode='nearest').numpy()
  got = np.asarray(resize.nearest_resize(jnp.asarray(x), (224, 224)))
  np.testing.assert_array_equal(got, want.transpose(0, 2, 3, 1))


def test_nearest_differs_from_half_pixel_rule():
  """jax.image.resize('nearest') picks other pixels: why this op exists."""
  x, _ = _pair((1, 1024, 1024, 1), seed=2)
  ours = np.asarray(resize.nearest_resize(jnp.asarray(x), (224, 224)))
  theirs = np.asarray(jax.image.resize(x, (1, 224, 224, 1), 'nearest'))
  assert np.mean(ours != theirs) > 0.5


def test_gradients_match_torch_autograd():
  x, xt = _pair((1, 188, 150, 2), seed=3)
  c = np.random.default_rng(4).standard_normal((1, 112, 224, 2)).astype(
      np.float32)
  xt.requires_grad_(True)
  ct = torch.from_numpy(c.transpose(0, 3, 1, 2).copy())
  ((F.adaptive_avg_pool2d(xt, (112, 112)) * ct[..., :112]).sum()
   + (F.interpolate(xt, (112, 224), mode='nearest') * ct).sum()).backward()

  def loss(x):
    return (jnp.sum(resize.adaptive_avg_pool2d(x, (112, 112)) * c[:, :, :112])
            + jnp.sum(resize.nearest_resize(x, (112, 224)) * c))
  got = np.asarray(jax.grad(loss)(x))
  np.testing.assert_allclose(got, xt.grad.numpy().transpose(0, 2, 3, 1),
                             atol=1e-5)
