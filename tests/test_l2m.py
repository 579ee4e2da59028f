"""L2M style encoder parity (s, s1, s2, s3) with torch, and L2MModelConfig."""

import jax
import numpy as np
import pytest
import torch

from l2m_jax.convert import l2m as l2m_convert
from l2m_jax.models import l2m
from tests import l2m_checkpoints as lc

TOL = 1e-4


def _encoder_errors(nets, variables, config, x, y, y1):
  with torch.no_grad():
    want = nets.style_encoder(lc.nhwc_to_torch(x), torch.from_numpy(y),
                              torch.from_numpy(y1))
  _, enc = l2m.build_models(config)
  got = jax.jit(enc.apply)(variables['style_encoder'], x, y, y1)
  assert len(got) == 4
  errs = [float(np.max(np.abs(np.asarray(g) - w.numpy())))
          for g, w in zip(got, want)]
  scales = [float(np.max(np.abs(w.numpy()))) for w in want]
  return errs, scales, got


@pytest.fixture(scope='module')
def encoder_256(tmp_path_factory):
  nets = lc.build_torch_nets(img_size=256, max_conv_dim=64, w_hpf=0,
                             num_domains=3, seed=21)
  path = lc.save_checkpoint(nets, tmp_path_factory.mktemp('e256'))
  variables, meta = l2m_convert.convert_checkpoint(path)
  return nets, variables, l2m.L2MModelConfig.from_dict(meta['config'])


def test_style_encoder_all_outputs_256(encoder_256):
  nets, variables, config = encoder_256
  x = lc.sample_images(3, 256, seed=22)
  y, y1 = np.array([0, 1, 2]), np.array([2, 0, 1])
  errs, scales, got = _encoder_errors(nets, variables, config, x, y, y1)
  print(f'style encoder 256/64 (s, s1, s2, s3): max abs err {errs}, '
        f'scales {scales}')
  assert max(errs) <= TOL
  s, s1, s2, _ = got
  np.testing.assert_allclose(np.asarray(s1 + s2), np.asarray(s), atol=1e-5)


def test_style_encoder_real_face(encoder_256, faces_dir):
  nets, variables, config = encoder_256
  x = lc.sample_images(1, 256, faces_dir=faces_dir)
  errs, _, _ = _encoder_errors(nets, variables, config, x, np.array([1]),
                               np.array([0]))
  assert max(errs) <= TOL


@pytest.mark.slow
def test_style_encoder_full_width_256(tmp_path):
  nets = lc.build_torch_nets(img_size=256, max_conv_dim=512, w_hpf=0,
                             seed=23)
  path = lc.save_checkpoint(nets, tmp_path)
  variables, meta = l2m_convert.convert_checkpoint(path)
  config = l2m.L2MModelConfig.from_dict(meta['config'])
  x = lc.sample_images(2, 256, seed=24)
  errs, scales, _ = _encoder_errors(nets, variables, config, x,
                                    np.array([0, 1]), np.array([1, 0]))
  print(f'style encoder 256/512: max abs err {errs}, scales {scales}')
  assert max(errs) <= TOL


def test_attention_params_exist_but_unused(encoder_256):
  _, variables, config = encoder_256
  v = variables['style_encoder']
  assert set(v['params']['attention']) == {'layers_0', 'layers_2'}
  _, enc = l2m.build_models(config)
  apply = jax.jit(enc.apply)
  x = lc.sample_images(1, 256, seed=25)
  y = np.array([1])
  out = apply(v, x, y, y)
  zeroed = jax.tree.map(np.zeros_like, v['params']['attention'])
  out2 = apply({'params': {**v['params'], 'attention': zeroed}}, x, y, y)
  for a, b in zip(out, out2):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_config_round_trip_and_domains():
  c = l2m.L2MModelConfig(img_size=128, num_domains=3, w_hpf=0,
                         domains=('a', 'b', 'c'))
  assert l2m.L2MModelConfig.from_dict(c.to_dict()) == c
  assert hash(c) == hash(l2m.L2MModelConfig.from_dict(c.to_dict()))
  assert c.domain_index('b') == 1 and c.domain_index('2') == 2
  with pytest.raises(ValueError, match='unknown domain'):
    c.domain_index('smile')
  with pytest.raises(ValueError, match='out of range'):
    c.domain_index(3)
  assert l2m.L2MModelConfig.from_dict({'num_domains': 2}).domains == (
      'sad', 'smile')
  with pytest.raises(ValueError, match='domain names'):
    l2m.L2MModelConfig(num_domains=3)
  with pytest.raises(ValueError, match='power of 2'):
    l2m.L2MModelConfig(img_size=100)
  with pytest.raises(ValueError, match='unknown field'):
    l2m.L2MModelConfig.from_dict({'img_sz': 256})
