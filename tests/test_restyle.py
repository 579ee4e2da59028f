"""ReStyle-e4e encoder and iterative inversion: parity, converter, API.

The default suite pairs the full IR-SE-50 encoder (256 px input, as upstream
requires) with a 64 px narrow StyleGAN2 (10 W+ rows, so 10 style blocks).
The slow tests run 5 iterations, in float32 and float64, at that size and
with the 1024 px config-f generator and 18 style blocks.
"""

import re

import numpy as np
import pytest
import torch

from l2m_jax import latent_editing as le
from l2m_jax import parallel
from l2m_jax.convert import restyle as crs
from l2m_jax.convert import stylegan2 as cs
from l2m_jax.convert import torch_to_flax as t2f
from l2m_jax.models import restyle
from tests import photo_checkpoints as pc
from third_party import restyle_torch as trs


@pytest.fixture(scope='module')
def nets(tmp_path_factory):
  p = pc.photo_nets(tmp_path_factory)
  pe, metas = p.photo_editor()  # load_photo_editor on the converted folders
  return dict(p=p, inverter=pe.inverter, meta=metas['encoder'],
              enc_vars=pe.inverter.enc_vars,
              image=pc.generated_faces(1, 256, seed=21))


def _torch_steps(net, x, n):
  with torch.no_grad():
    return [c.double().numpy() for c in net.invert(pc.nchw(x), n,
                                                   return_all=True)]


def test_reference_matches_upstream_counts():
  """18 style blocks: 565 encoder entries, 205,585,792 parameters."""
  with torch.device('meta'):
    enc = trs.ProgressiveBackboneEncoder(18)
  sd = enc.state_dict()
  assert len(sd) == 565
  assert sum(p.numel() for p in enc.parameters()) == 205585792
  want = {k: tuple(v.shape) for k, v in sd.items()
          if not k.endswith('num_batches_tracked')}
  cfg = dict(n_styles=18, input_nc=6, num_layers=50)
  assert crs.expected_shapes(cfg) == want
  assert restyle.n_styles_for(1024) == 18 and restyle.n_styles_for(64) == 10


def test_one_and_two_iterations_match_torch(nets):
  """Codes after 1 and 2 ReStyle iterations (one compilation for both)."""
  net, x = nets['p'].e4e, nets['image']
  want = nets['p'].torch_codes(21, 2)
  inv = nets['inverter']
  c1, y1 = inv.invert(x, 1, return_reconstruction=True)
  c2 = inv.invert(x, 2)
  assert inv._fn._cache_size() == 1  # pylint: disable=protected-access
  e1, e2 = np.abs(c1 - want[0]).max(), np.abs(c2 - want[1]).max()
  print(f'ReStyle codes: 1 iteration max abs err {e1:.3g}, 2 iterations '
        f'{e2:.3g} (|codes| up to {np.abs(want[1]).max():.3g}, change '
        f'between iterations {np.abs(want[1] - want[0]).max():.3g})')
  assert e1 <= 1e-4 and e2 <= 1e-4
  assert np.abs(want[1] - want[0]).max() > 0.1  # iteration 2 does something
  # The reconstruction after iteration 1: pool256(G(codes_1)).
  with torch.no_grad():
    img, _ = net.decoder([torch.from_numpy(c1)], input_is_latent=True,
                         randomize_noise=False)
    ref = pc.nhwc(torch.nn.functional.adaptive_avg_pool2d(img, 256))
  assert np.abs(y1 - ref).max() <= 1e-5
  # Iteration 0 uses latent_avg and the average image.
  np.testing.assert_allclose(
      nets['enc_vars']['constants']['latent_avg'],
      net.latent_avg.numpy(), atol=0)


def test_invert_bad_inputs(nets):
  inv, x = nets['inverter'], nets['image']
  with pytest.raises(ValueError, match=r'expected \[N, 256, 256, 3\]'):
    inv.invert(np.zeros((1, 128, 128, 3), np.float32))
  with pytest.raises(ValueError, match='dtype uint8'):
    inv.invert(np.zeros((1, 256, 256, 3), np.uint8))
  with pytest.raises(ValueError, match='n_iters=0'):
    inv.invert(x, 0)
  with pytest.raises(ValueError, match='NaN'):
    inv.invert(np.full((1, 256, 256, 3), np.nan, np.float32))


def test_converted_layout_and_meta(nets):
  meta = nets['meta']
  assert meta['format'] == 'restyle_e4e_encoder'
  assert meta['config'] == dict(n_styles=10, input_nc=6, num_layers=50)
  assert meta['latent_avg'] == 'checkpoint'
  assert meta['opts']['encoder_type'] == 'ProgressiveBackboneEncoder'
  assert {'opts', 'global_step', 'best_val_loss'} <= set(meta['ignored'])
  assert meta['key_map']['encoder.styles.3.linear.weight'] == (
      'params/styles_3/linear/weight')
  g, g_vars, g_meta = cs.load_generator(
      str(nets['p'].dirs['encoder'] / 'generator'))
  assert g.size == 64 and g_meta['source']['kind'] == 'decoder'
  sd = nets['p'].e4e.state_dict()
  np.testing.assert_array_equal(
      g_vars['params']['convs_3']['conv']['weight'],
      sd['decoder.convs.3.conv.weight'][0].numpy().transpose(2, 3, 1, 0))


def _ckpt(nets, **changes):
  """The cached network's checkpoint dict, modified in memory."""
  ck = trs.checkpoint_dict(nets['p'].e4e)
  for k, v in changes.items():
    if v is None:
      ck.pop(k)
    else:
      ck[k] = v
  return ck


def test_latent_avg_forms(nets):
  net = nets['p'].e4e
  vec = net.latent_avg[0].clone()
  np.testing.assert_array_equal(crs.latent_avg_rows(vec, 10, 'v.pt'),
                                np.broadcast_to(vec.numpy(), (10, 512)))
  with pytest.raises(t2f.ConversionError, match=r'latent_avg: expected '
                     r'\(10, 512\), found \(18, 512\)'):
    crs.convert_checkpoint(_ckpt(nets, latent_avg=torch.zeros(18, 512)),
                           'x.pt', log=lambda *_: None)
  # No latent_avg: the mean of the decoder's mapping network, as noted.
  v, meta, g_vars, _ = crs.convert_checkpoint(
      _ckpt(nets, latent_avg=None), 'none.pt', mean_latent_samples=500,
      log=lambda *_: None)
  assert meta['latent_avg'].startswith('estimated')
  z = np.random.default_rng(0).standard_normal((500, 512)).astype(np.float32)
  with torch.no_grad():
    want = net.decoder.style(torch.from_numpy(z)).mean(0).numpy()
  np.testing.assert_allclose(v['constants']['latent_avg'][4], want,
                             atol=1e-4)
  np.testing.assert_array_equal(g_vars['constants']['latent_avg'],
                                v['constants']['latent_avg'])


def test_converter_reports_every_key_problem(nets):
  sd = dict(nets['p'].e4e.state_dict())
  del sd['encoder.body.12.res_layer.4.running_var']
  sd['encoder.styles.2.convs.4.weight'] = torch.zeros(512, 512, 1, 1)
  sd['encoder.latlayer1.weight'] = torch.zeros(512, 256, 1, 1)
  with pytest.raises(t2f.ConversionError) as e:
    crs.convert_checkpoint(_ckpt(nets, state_dict=sd), 'broken.pt',
                           log=lambda *_: None)
  msg = str(e.value)
  for k in ('broken.pt', 'encoder.body.12.res_layer.4.running_var',
            'encoder.styles.2.convs.4.weight: expected (512, 512, 3, 3), '
            'found (512, 512, 1, 1)', 'encoder.latlayer1.weight'):
    assert k in msg, k


@pytest.mark.parametrize('opts,msg', [
    (dict(encoder_type='GradualStyleEncoder'), 'only \'Progressive'),
    (dict(output_size=1024), 'opts.output_size is 1024 px (18 W+ rows)'),
])
def test_converter_checks_opts(nets, opts, msg):
  ck = _ckpt(nets)
  ck['opts'] = dict(ck['opts'], **opts)
  with pytest.raises(t2f.ConversionError, match=re.escape(msg)):
    crs.convert_checkpoint(ck, 'x.pt', log=lambda *_: None)


def test_wrong_kind_and_missing_decoder(nets, tmp_path, capsys):
  from scripts import convert_latent  # pylint: disable=g-import-not-at-top
  torch.save({'input_layer.0.weight': torch.zeros(64, 3, 3, 3),
              'output_layer.3.weight': torch.zeros(512, 25088)},
             tmp_path / 'model_ir_se50.pth')
  rc = convert_latent.main(['encoder', str(tmp_path / 'model_ir_se50.pth'),
                            '--out', str(tmp_path / 'o')])
  assert rc == 2
  assert 'convert it with `scripts/convert_latent.py arcface`' in (
      capsys.readouterr().err)
  sd = {k: v for k, v in nets['p'].e4e.state_dict().items()
        if k.startswith('encoder.')}
  with pytest.raises(t2f.ConversionError, match='generator is missing'):
    crs.convert_checkpoint(_ckpt(nets, state_dict=sd), 'enc_only.pt',
                           log=lambda *_: None)


def _float64_report(net, x, jax_codes, n):
  """Errors of ours and of torch float32 against torch float64."""
  steps32 = _torch_steps(net, x, n)
  ref32 = steps32[-1]
  with torch.no_grad():
    ref64 = trs.to_double(net).invert(pc.nchw(x).double(), n).numpy()
  ours = np.abs(jax_codes - ref64).max()
  theirs = np.abs(ref32 - ref64).max()
  print(f'{n}-iteration codes vs torch float64: ours {ours:.3g}, torch '
        f'float32 {theirs:.3g}; ours vs torch float32 '
        f'{np.abs(jax_codes - ref32).max():.3g} (|codes| up to '
        f'{np.abs(ref64).max():.3g})')
  return ours, theirs, steps32


@pytest.mark.slow
def test_five_iterations_float64_small(nets):
  x = nets['image']
  codes = nets['inverter'].invert(x, 5)
  ours, theirs, _ = _float64_report(nets['p'].e4e, x, codes, 5)
  assert ours <= max(2 * theirs, 1e-5)


@pytest.mark.slow
def test_five_iterations_config_f_1024(tmp_path, faces_dir):
  """Config-f 1024 px generator, 18 styles, a real face, 5 iterations."""
  net = trs.make_e4e(size=1024, seed=3)
  trs.save_checkpoint(net, tmp_path / 'restyle_ffhq.pt')
  crs.convert_file(tmp_path / 'restyle_ffhq.pt', tmp_path / 'E',
                   log=lambda *_: None)
  encoder, enc_vars, generator, g_vars, _ = crs.load_restyle(
      str(tmp_path / 'E'))
  assert encoder.n_styles == 18 and generator.size == 1024
  inv = le.Inverter(encoder, enc_vars, generator, g_vars, batch_size=1,
                    mesh=parallel.make_mesh(1))
  x = pc.real_faces(faces_dir, 256)[:1]
  c1 = inv.invert(x, 1)
  codes = inv.invert(x, 5)
  ours, theirs, ref32 = _float64_report(net, x, codes, 5)
  e1 = np.abs(c1 - ref32[0]).max()
  print(f'config-f 1 iteration: max abs err {e1:.3g}')
  assert e1 <= 1e-4
  assert ours <= max(2 * theirs, 1e-5)
