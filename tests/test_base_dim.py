"""Small-width models (`base_dim`): parity with the torch references and conversion."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from l2m_jax.convert import l2m as convert_l2m
from l2m_jax.models import l2m as l2m_models
from l2m_jax.models import stargan_v2
from third_party import l2m_torch


def test_stem_width_rule():
  assert stargan_v2.stem_width(256) == 64
  assert stargan_v2.stem_width(32) == 512
  assert stargan_v2.stem_width(32, 16) == 16
  with pytest.raises(ValueError, match='base_dim'):
    stargan_v2.stem_width(32, 0)
  with pytest.raises(ValueError, match='base_dim'):
    l2m_models.L2MModelConfig(img_size=32, base_dim=-4)


def test_small_width_models_match_torch(tmp_path):
  torch.manual_seed(0)
  size, base, cap = 32, 16, 64
  gen = l2m_torch.Generator(size, 64, cap, w_hpf=0, base_dim=base).eval()
  enc = l2m_torch.StyleEncoder(size, 64, 2, cap, base_dim=base).eval()
  disc = l2m_torch.Discriminator(size, 2, cap, base_dim=base).eval()
  path = tmp_path / '000010_nets_ema.ckpt'
  torch.save({'generator': gen.state_dict(),
              'style_encoder': enc.state_dict()}, path)
  # The stem width no longer tells the image size: it is given, and the
  # converter records the non-official width as base_dim.
  variables, meta = convert_l2m.convert_checkpoint(path, img_size=size,
                                                   w_hpf=0)
  config = l2m_models.L2MModelConfig.from_dict(meta['config'])
  assert config.base_dim == base and config.max_conv_dim == cap

  x = torch.rand(2, 3, size, size) * 2 - 1
  y = torch.tensor([0, 1])
  with torch.no_grad():
    s, s1, s2, s3 = enc(x, y, 1 - y)
    ref_img = gen(x, s1 + s3).numpy().transpose(0, 2, 3, 1)
    ref_logit = disc(x, y).numpy()
  xj = jnp.asarray(x.numpy().transpose(0, 2, 3, 1))
  g, e = l2m_models.build_models(config)
  outs = e.apply(variables['style_encoder'], xj, jnp.array([0, 1]),
                 jnp.array([1, 0]))
  for ours, ref in zip(outs, (s, s1, s2, s3)):
    np.testing.assert_allclose(ours, ref.numpy(), atol=1e-5)
  img = g.apply(variables['generator'], xj, jnp.asarray((s1 + s3).numpy()))
  assert np.abs(np.asarray(img) - ref_img).max() <= 1e-4

  d = l2m_models.build_discriminator(config)
  d_vars = convert_l2m.convert_state_dicts(
      {'generator': gen.state_dict(), 'style_encoder': enc.state_dict(),
       'discriminator': disc.state_dict()}, 'nets', img_size=size,
      w_hpf=0)[0]['discriminator']
  logit = d.apply(d_vars, xj, jnp.array([0, 1]))
  assert np.abs(np.asarray(logit) - ref_logit).max() <= 1e-4
  template = jax.eval_shape(lambda: d.init(jax.random.key(0), xj,
                                           jnp.array([0, 1])))
  assert template['params']['main_0']['kernel'].shape == (3, 3, 3, base)
