"""StyleGAN2, mapper and boundaries converters: containers, errors."""

import pathlib

import numpy as np
import pytest
import torch

from l2m_jax.convert import mapper as cm
from l2m_jax.convert import stylegan2 as cs
from l2m_jax.convert import torch_to_flax as t2f
from third_party import l2l_mapper_torch as tm
from third_party import stylegan2_torch as ts

BOUNDARIES = (pathlib.Path(__file__).resolve().parents[2] / 'shared' /
              'fixtures' / 'latent_to_latent' /
              'boundaries_anycost-ffhq-config-f.pt')
KW = dict(style_dim=16, n_mlp=2, channel_base=16)


def _small_g(seed=0):
  torch.manual_seed(seed)
  return ts.Generator(64, **KW)


def _flat(tree):
  return {k: np.asarray(v) for k, v in t2f.flatten(tree).items()}


def test_three_container_forms_agree(tmp_path):
  g = _small_g()
  sd = g.state_dict()
  avg = torch.randn(16)
  torch.save({'g_ema': sd, 'latent_avg': avg, 'g': sd, 'd': {}},
             tmp_path / 'g_ema_dict.pt')
  torch.save({'state_dict': {**{f'decoder.{k}': v for k, v in sd.items()},
                             'encoder.x.weight': torch.zeros(3)},
              'latent_avg': avg[None].repeat(10, 1), 'opts': {'a': 1}},
             tmp_path / 'restyle.pt')
  torch.save(sd, tmp_path / 'bare.pt')
  va, ma = cs.convert_file(tmp_path / 'g_ema_dict.pt', tmp_path / 'out',
                           log=lambda *_: None)
  vb, mb = cs.convert_file(tmp_path / 'restyle.pt', log=lambda *_: None)
  vc, mc = cs.convert_file(tmp_path / 'bare.pt', mean_latent_samples=500,
                           log=lambda *_: None)
  assert ma['source']['kind'] == 'stylegan2_pytorch'
  assert mb['source']['kind'] == 'decoder'
  assert mc['source']['kind'] == 'state_dict'
  assert ma['config'] == dict(size=64, style_dim=16, n_mlp=2,
                              channel_multiplier=2, channel_base=16,
                              lr_mlp=0.01)
  fa, fb, fc = _flat(va), _flat(vb), _flat(vc)
  assert fa.keys() == fb.keys() == fc.keys()
  for k in fa:
    np.testing.assert_array_equal(fa[k], fb[k])
    if k != 'constants/latent_avg':
      np.testing.assert_array_equal(fa[k], fc[k])
  np.testing.assert_array_equal(fa['constants/latent_avg'][3], avg.numpy())
  # Layout rules (docs/architecture.md#ckpt-stylegan2), checked against the
  # torch tensors directly.
  np.testing.assert_array_equal(
      fa['params/convs_2/conv/weight'],
      sd['convs.2.conv.weight'][0].numpy().transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(fa['params/style_2/weight'],
                                sd['style.2.weight'].numpy().T)
  np.testing.assert_array_equal(fa['noises/noise_3'][0, :, :, 0],
                                sd['noises.noise_3'][0, 0].numpy())
  # Estimated latent_avg = mean of the torch mapping over the same z.
  z = np.random.default_rng(0).standard_normal((500, 16)).astype(np.float32)
  with torch.no_grad():
    want = g.style(torch.from_numpy(z)).mean(0).numpy()
  np.testing.assert_allclose(fc['constants/latent_avg'][0], want, atol=1e-4)
  assert mc['latent_avg'].startswith('estimated')
  # Save / load round trip.
  model, loaded, meta = cs.load_generator(tmp_path / 'out')
  assert meta['format'] == 'stylegan2' and model.size == 64
  for k, v in _flat(loaded).items():
    np.testing.assert_array_equal(v, fa[k])


def test_all_problems_reported_at_once():
  sd = dict(_small_g().state_dict())
  del sd['convs.3.noise.weight']
  sd['extra.weight'] = torch.zeros(2)
  sd['to_rgbs.1.conv.weight'] = torch.zeros(1, 3, 5, 1, 1)
  with pytest.raises(t2f.ConversionError) as e:
    cs.convert_state_dict(sd, 'broken.pt')
  msg = str(e.value)
  assert 'convs.3.noise.weight' in msg and 'extra.weight' in msg
  assert 'to_rgbs.1.conv.weight' in msg and 'broken.pt' in msg


def test_config_disagreement_and_bad_kernel():
  sd = dict(_small_g().state_dict())
  with pytest.raises(t2f.ConversionError, match='size: expected 1024'):
    cs.convert_state_dict(sd, 'x.pt', config=dict(size=1024, style_dim=16,
                                                  n_mlp=2, channel_base=16))
  sd['convs.0.conv.blur.kernel'] = torch.ones(4, 4)
  with pytest.raises(t2f.ConversionError, match='convs.0.conv.blur.kernel'):
    cs.convert_state_dict(sd, 'x.pt')


def test_not_a_generator(tmp_path):
  torch.save({'foo': torch.zeros(1)}, tmp_path / 'x.pt')
  with pytest.raises(t2f.ConversionError, match='no StyleGAN2 generator'):
    cs.convert_file(tmp_path / 'x.pt', log=lambda *_: None)
  (tmp_path / 'junk.pt').write_bytes(b'not a checkpoint')
  with pytest.raises(t2f.ConversionError, match='is not a PyTorch checkpoint'):
    cs.convert_file(tmp_path / 'junk.pt', log=lambda *_: None)


def test_mapper_file_round_trip_and_errors(tmp_path):
  torch.manual_seed(0)
  ref = tm.LevelsMapper()
  torch.save(ref.state_dict(), tmp_path / 'smiling.pt')
  cm.convert_file(tmp_path / 'smiling.pt', tmp_path / 'm',
                  log=lambda *_: None)
  model, variables, meta = cm.load_mapper(tmp_path / 'm')
  assert meta['config']['combine'] == 'blend' and model.cond_dim == 0
  w = torch.randn(1, 18, 512)
  with torch.no_grad():
    want = ref(w).numpy()
  np.testing.assert_allclose(np.asarray(model.apply(variables, w.numpy())),
                             want, atol=1e-5)
  # Paper preset from a legacy file: zero conditioning block.
  _, meta_p = cm.convert_file(tmp_path / 'smiling.pt', preset='paper',
                              log=lambda *_: None)
  assert meta_p['config']['cond_dim'] == 40
  # Broken file: every problem at once.
  sd = dict(ref.state_dict())
  del sd['fine_mapping.mapping.2.0.bias']
  sd['medium_mapping.mapping.1.0.weight'] = torch.zeros(512, 500)
  torch.save(sd, tmp_path / 'bad.pt')
  with pytest.raises(t2f.ConversionError) as e:
    cm.convert_file(tmp_path / 'bad.pt', log=lambda *_: None)
  assert 'fine_mapping.mapping.2.0.bias' in str(e.value)
  assert 'medium_mapping.mapping.1.0.weight' in str(e.value)
  # A paper-mode file cannot load into a legacy mapper.
  torch.save(tm.LevelsMapper(cond_dim=4).state_dict(), tmp_path / 'p.pt')
  with pytest.raises(t2f.ConversionError, match='preset paper'):
    cm.convert_state_dict(torch.load(tmp_path / 'p.pt'), 'p.pt',
                          cm.make_config('legacy'))


def test_synthetic_boundaries_and_errors(tmp_path):
  rng = np.random.default_rng(0)
  d = {f'{i:02d}_Name_{i}': torch.from_numpy(
      rng.standard_normal((1, 512)).astype(np.float32)) for i in range(3)}
  torch.save(d, tmp_path / 'b.pt')
  cm.convert_boundaries_file(tmp_path / 'b.pt', tmp_path / 'bd',
                             log=lambda *_: None)
  dirs, names = cm.load_boundaries(tmp_path / 'bd')
  assert names == ['name_0', 'name_1', 'name_2']
  np.testing.assert_array_equal(dirs[1], d['01_Name_1'].numpy()[0])
  d['03_Bad'] = torch.zeros(2, 512)
  torch.save(d, tmp_path / 'bad.pt')
  with pytest.raises(t2f.ConversionError, match='03_Bad'):
    cm.load_boundaries(tmp_path / 'bad.pt')


def test_real_boundaries_file():
  if not BOUNDARIES.is_file():
    pytest.skip(f'boundaries fixture absent: {BOUNDARIES}')
  assert t2f.sha256_file(BOUNDARIES) == (
      '45b4243b6a84eb83683081f6f29346d059435e8e5d46a78a4c4cd1b6d82a5cf8')
  dirs, names = cm.load_boundaries(str(BOUNDARIES))
  assert dirs.shape == (40, 512) and dirs.dtype == np.float32
  np.testing.assert_allclose(np.linalg.norm(dirs, axis=1), 1.0, atol=2e-7)
  from l2m_jax.latent_editing import CELEBA_ATTRIBUTES
  assert tuple(names) == CELEBA_ATTRIBUTES
  # Golden values, docs/method.md#l2l-boundaries.
  golden = {
      '5_o_clock_shadow': ([-3.71063426e-02, 7.64668337e-04, -9.74680763e-03,
                            3.55879851e-02], -0.917062),
      'male': ([-3.21480893e-02, 9.34357103e-03, -4.48195897e-02,
                1.76487714e-02], -0.929578),
      'smiling': ([4.13354719e-03, -4.21947166e-02, -2.39884071e-02,
                   4.98571694e-02], -0.780076),
      'young': ([1.98717508e-02, -3.16575356e-02, -1.51692247e-02,
                 -1.17065362e-03], 0.780971),
      'bushy_eyebrows': ([-6.76773861e-02, -4.06455062e-03, -5.91578297e-02,
                          1.25148306e-02], -2.765336),
  }
  for name, (first4, total) in golden.items():
    v = dirs[cm.find_attribute(names, name)]
    np.testing.assert_allclose(v[:4], first4, rtol=1e-6)
    assert abs(v.sum() - total) < 1e-5
  cos = dirs @ dirs.T
  i, j = names.index('heavy_makeup'), names.index('wearing_lipstick')
  assert abs(cos[i, j] - 0.8867) < 1e-4
  assert cm.find_attribute(names, '31_Smiling') == 31
  with pytest.raises(ValueError, match='unknown attribute'):
    cm.find_attribute(names, 'grin')


def test_convert_cli_reports_errors(tmp_path, capsys):
  from scripts import convert_latent  # pylint: disable=g-import-not-at-top
  sd = dict(_small_g().state_dict())
  del sd['conv1.noise.weight']
  torch.save({'g_ema': sd}, tmp_path / 'g.pt')
  rc = convert_latent.main(['stylegan2', str(tmp_path / 'g.pt'), '--out',
                            str(tmp_path / 'o')])
  err = capsys.readouterr().err
  assert rc == 2 and 'conv1.noise.weight' in err and 'g.pt' in err
  assert not (tmp_path / 'o').exists()
  rc = convert_latent.main(['mapper', str(tmp_path / 'missing.pt'), '--out',
                            str(tmp_path / 'o')])
  assert rc == 2 and 'no such checkpoint' in capsys.readouterr().err
