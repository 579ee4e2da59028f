"""The nets_ema converter: key sets, config inference, every error path, I/O."""

import importlib.util
import logging
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import torch

from l2m_jax.convert import l2m as l2m_convert
from l2m_jax.convert import torch_to_flax as t2f
from l2m_jax.models import l2m
from tests import l2m_checkpoints as lc
from third_party import l2m_torch
from third_party.torchvision_compat import import_torchvision


def _shapes(module):
  return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def test_expected_keys_match_official_layout():
  """docs/architecture.md#ckpt-nets-ema counts and every shape, against the
  torch definitions."""
  config = l2m.L2MModelConfig()
  with torch.device('meta'):
    gen = l2m_torch.Generator(256, 64, 512, 1)
    enc = l2m_torch.StyleEncoder(256, 64, 2, 512)
    disc = l2m_torch.Discriminator(256, 2, 512)
    r = import_torchvision().models.resnet18(weights=None)
    vgg = torch.nn.Sequential(*list(r.children())[:-1])
  want = {'generator': _shapes(gen), 'style_encoder': _shapes(enc),
          'discriminator': _shapes(disc), 'vgg': _shapes(vgg)}
  counts = {'generator': 128, 'style_encoder': 57, 'discriminator': 33,
            'vgg': 120}
  for module, shapes in want.items():
    got = l2m_convert.expected_shapes(config, module)
    assert len(got) == counts[module], module
    assert got == shapes, module
  assert len(l2m_convert.unused_keys(config)) == 8 + 3  # attention + conv1x1


@pytest.mark.parametrize('kw', [
    dict(img_size=256, style_dim=64, num_domains=2, max_conv_dim=512,
         w_hpf=1),
    dict(img_size=64, style_dim=16, num_domains=3, max_conv_dim=32, w_hpf=0),
    dict(img_size=128, style_dim=32, num_domains=2, max_conv_dim=64, w_hpf=1),
])
def test_infer_config(kw):
  with torch.device('meta'):
    gen = l2m_torch.Generator(kw['img_size'], kw['style_dim'],
                              kw['max_conv_dim'], kw['w_hpf'])
    enc = l2m_torch.StyleEncoder(kw['img_size'], kw['style_dim'],
                                 kw['num_domains'], kw['max_conv_dim'])
  ckpt = {'generator': gen.state_dict(), 'style_encoder': enc.state_dict()}
  config = l2m_convert.infer_config(ckpt)
  assert config == l2m.L2MModelConfig(
      **kw, domains=l2m.default_domains(kw['num_domains']))


@pytest.fixture(scope='module')
def tiny_ckpt(tmp_path_factory):
  nets = lc.build_torch_nets(img_size=64, style_dim=16, max_conv_dim=16,
                             w_hpf=0, seed=41)
  return nets, nets.state_dicts()


def _error(ckpt, **kw):
  with pytest.raises(t2f.ConversionError) as e:
    l2m_convert.convert_state_dicts(ckpt, 'ckpt', **kw)
  return e.value


def test_all_problems_in_one_error(tiny_ckpt):
  _, sds = tiny_ckpt
  gen = dict(sds['generator'])
  enc = dict(sds['style_encoder'])
  del gen['encode.1.conv2.bias']
  del enc['attention.layers.2.weight']
  gen['hpf.filter'] = torch.zeros(1, 1, 3, 3)
  enc['transform1.0.weight'] = torch.zeros(16, 17)
  e = _error({'generator': gen, 'style_encoder': enc})
  assert e.missing == ['generator.encode.1.conv2.bias',
                       'style_encoder.attention.layers.2.weight']
  assert e.unexpected == ['generator.hpf.filter']
  assert e.mismatched == [('style_encoder.transform1.0.weight', (16, 16),
                           (16, 17))]
  msg = str(e)
  for k in ('encode.1.conv2.bias', 'hpf.filter', 'transform1.0.weight',
            'attention.layers.2.weight'):
    assert k in msg


def test_missing_top_level_modules(tiny_ckpt):
  _, sds = tiny_ckpt
  e = _error({'generator': sds['generator']})
  assert 'style_encoder' in str(e) and 'missing top-level' in str(e)
  e = _error({'gen': 1})
  assert "'generator', 'style_encoder'" in str(e)
  e = _error([1, 2])
  assert 'expected an L2M-GAN checkpoint' in str(e)


def test_fan_required_when_w_hpf_positive(tmp_path):
  nets = lc.build_torch_nets(img_size=64, style_dim=16, max_conv_dim=16,
                             w_hpf=1, with_fan=False, seed=42)
  e = _error(nets.state_dicts())
  assert any(k.startswith('fan') for k in e.missing)
  assert 'w_hpf > 0' in str(e)


def test_bad_files(tmp_path):
  with pytest.raises(FileNotFoundError, match='no such checkpoint'):
    l2m_convert.convert_checkpoint(tmp_path / 'absent.ckpt')
  junk = tmp_path / 'junk.ckpt'
  junk.write_bytes(b'this is not a torch checkpoint')
  with pytest.raises(t2f.ConversionError, match='is not a PyTorch checkpoint'):
    l2m_convert.convert_checkpoint(junk)
  tensor_file = tmp_path / 'tensor.ckpt'
  torch.save(torch.zeros(3), tensor_file)
  with pytest.raises(t2f.ConversionError, match='expected an L2M-GAN'):
    l2m_convert.convert_checkpoint(tensor_file)


def test_round_trip_save_load(tiny_ckpt, tmp_path, caplog):
  nets, _ = tiny_ckpt
  path = lc.save_checkpoint(nets, tmp_path / 'src',
                            extra={'optimizer_note': {'lr': torch.ones(1)}})
  with caplog.at_level(logging.WARNING):
    meta = l2m_convert.save_checkpoint(path, tmp_path / 'out',
                                       domains=['neutral', 'smiling'])
  assert 'optimizer_note' in caplog.text
  assert 'optimizer_note' in meta['ignored']
  assert meta['source']['sha256'] == t2f.sha256_file(path)
  variables, config = l2m_convert.load_l2m_checkpoint(tmp_path / 'out')
  assert config.domains == ('neutral', 'smiling') and config.w_hpf == 0
  sd = nets.generator.state_dict()
  np.testing.assert_array_equal(
      variables['generator']['params']['decode_0']['norm1']['fc']['kernel'],
      sd['decode.0.norm1.fc.weight'].numpy().T)
  np.testing.assert_array_equal(
      variables['generator']['params']['from_rgb']['kernel'],
      sd['from_rgb.weight'].numpy().transpose(2, 3, 1, 0))
  assert set(meta['key_map']) == {f'generator.{k}' for k in sd} | {
      f'style_encoder.{k}' for k in nets.style_encoder.state_dict()}
  # A directory whose config no longer matches its variables is refused.
  meta_file = tmp_path / 'out' / 'meta.json'
  meta_file.write_text(meta_file.read_text().replace(
      '"max_conv_dim": 16', '"max_conv_dim": 32'))
  with pytest.raises(t2f.ConversionError):
    l2m_convert.load_l2m_checkpoint(tmp_path / 'out')
  with pytest.raises(FileNotFoundError):
    l2m_convert.load_l2m_checkpoint(tmp_path / 'nothing')


def _load_script(name):
  spec = importlib.util.spec_from_file_location(
      name, pathlib.Path(__file__).parents[1] / 'scripts' / f'{name}.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_convert_cli(tiny_ckpt, tmp_path, capsys):
  nets, _ = tiny_ckpt
  path = lc.save_checkpoint(nets, tmp_path)
  args = [str(path), '--out', str(tmp_path / 'out'), '--domains', 'a', 'b']
  r = subprocess.run([sys.executable, 'scripts/convert_checkpoint.py'] + args,
                     capture_output=True, text=True, check=False)
  assert r.returncode == 0, r.stderr
  assert 'wrote' in r.stdout
  _, config = l2m_convert.load_l2m_checkpoint(tmp_path / 'out')
  assert config.domains == ('a', 'b')
  cli = _load_script('convert_checkpoint')
  capsys.readouterr()
  assert cli.main(args) == 2
  assert '--overwrite' in capsys.readouterr().err
  assert cli.main([str(tmp_path / 'none.ckpt'), '--out',
                   str(tmp_path / 'o2')]) == 2
  assert 'no such checkpoint file' in capsys.readouterr().err
  assert cli.main([str(path), '--out', str(tmp_path / 'o3'), '--domains',
                   'x', 'y', 'z']) == 2
  err = capsys.readouterr().err
  assert 'domain names' in err and 'Traceback' not in err
  # NaN in a used weight, integer weights: refused, keys named, nothing
  # written (exit 2 like every user error).
  sds = nets.state_dicts()
  sds['generator']['to_rgb.2.weight'][0, 0, 0, 0] = float('nan')
  sds['style_encoder']['unshared.1.bias'] = (
      sds['style_encoder']['unshared.1.bias'].to(torch.int64))
  bad = tmp_path / 'bad_nets_ema.ckpt'
  torch.save(sds, bad)
  assert cli.main([str(bad), '--out', str(tmp_path / 'o4')]) == 2
  err = capsys.readouterr().err
  assert '[generator]' in err and 'to_rgb.2.weight: 1 of' in err, err
  assert '[style_encoder]' in err and 'unshared.1.bias: int64' in err
  assert not (tmp_path / 'o4').exists()
