"""Tests of l2m_jax.convert.fan (FAN state_dict and StarGAN v2 wing.ckpt).

Reference: the state_dict of the in-house torch FAN (third_party/fan_torch.py)
and the key/shape/parameter counts of docs/architecture.md#ckpt-nets-ema.
"""

import json

import numpy as np
import pytest
import torch

import jax

from l2m_jax.convert import fan as convert_fan
from l2m_jax.convert import torch_to_flax as t2f
from l2m_jax.models import fan
from third_party import fan_torch


@pytest.fixture(scope='module')
def state_dict():
  torch.manual_seed(0)
  model = fan_torch.FAN()
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.running_mean.normal_(0, 0.1)
        m.running_var.uniform_(0.5, 1.5)
        m.weight.uniform_(0.5, 1.5)
        m.bias.normal_(0, 0.1)
        m.num_batches_tracked.fill_(7)
  return model.state_dict()


@pytest.fixture(scope='module')
def template():
  return jax.eval_shape(fan.init_variables)


def test_expected_shapes_match_torch_reference(state_dict):
  expected = convert_fan.fan_expected_shapes()
  assert len(expected) == 336  # docs/architecture.md#ckpt-nets-ema
  assert expected == {k: tuple(v.shape) for k, v in state_dict.items()}
  params = sum(int(np.prod(s)) for k, s in expected.items()
               if not k.endswith(('running_mean', 'running_var',
                                  'num_batches_tracked')))
  assert params == 6_333_603  # docs/architecture.md#ckpt-nets-ema


def test_convert_values_and_layout(state_dict, template):
  variables, key_map = convert_fan.convert_fan_state_dict(state_dict, 'sd')
  t2f.check_against_template('sd', variables, template)
  assert len(key_map) == 336 - 55  # num_batches_tracked of 55 BatchNorms
  flat = t2f.flatten(variables)
  assert set(key_map.values()) == set(flat)
  w = state_dict['conv1.conv.weight'].numpy()  # OIHW -> HWIO
  np.testing.assert_array_equal(flat['params/conv1/conv/kernel'],
                                np.transpose(w, (2, 3, 1, 0)))
  np.testing.assert_array_equal(
      flat['params/conv2/downsample_2/kernel'][0, 0],
      state_dict['conv2.downsample.2.weight'].numpy()[:, :, 0, 0].T)
  np.testing.assert_array_equal(
      flat['batch_stats/m0/b2_plus_1/bn3/var'],
      state_dict['m0.b2_plus_1.bn3.running_var'].numpy())
  np.testing.assert_array_equal(flat['params/bn_end0/scale'],
                                state_dict['bn_end0.weight'].numpy())
  np.testing.assert_array_equal(flat['params/l0/bias'],
                                state_dict['l0.bias'].numpy())
  assert key_map['conv4.downsample.0.running_mean'] == (
      'batch_stats/conv4/downsample_0/mean')


def test_all_problems_in_one_error(state_dict):
  sd = dict(state_dict)
  del sd['m0.b3_2.conv2.weight']
  del sd['bn1.num_batches_tracked']
  sd['l0.extra'] = torch.zeros(3)
  sd['conv_last0.weight'] = torch.zeros(256, 255, 1, 1)
  with pytest.raises(t2f.ConversionError) as info:
    convert_fan.convert_fan_state_dict(sd, 'ckpt[fan]')
  err = info.value
  assert err.missing == ['bn1.num_batches_tracked', 'm0.b3_2.conv2.weight']
  assert err.unexpected == ['l0.extra']
  assert err.mismatched == [('conv_last0.weight', (256, 256, 1, 1),
                             (256, 255, 1, 1))]
  msg = str(err)
  for s in ('ckpt[fan]', 'm0.b3_2.conv2.weight', 'l0.extra',
            'conv_last0.weight'):
    assert s in msg


def test_not_a_state_dict():
  with pytest.raises(t2f.ConversionError, match='expected a FAN state_dict'):
    convert_fan.convert_fan_state_dict([1, 2], 'x')


def test_wing_checkpoint_round_trip(state_dict, template, tmp_path):
  path = tmp_path / 'wing.ckpt'
  torch.save({'state_dict': state_dict}, path)
  variables, meta = convert_fan.convert_wing_checkpoint(path)
  want, _ = convert_fan.convert_fan_state_dict(state_dict, 'sd')
  jax.tree.map(np.testing.assert_array_equal, variables, want)
  assert meta['format'] == 'fan'
  assert meta['missing'] == [] and meta['ignored'] == []
  assert meta['source']['sha256'] == t2f.sha256_file(path)

  out = tmp_path / 'converted'
  convert_fan.save_wing(path, out)
  loaded, meta2 = convert_fan.load_fan(out)
  jax.tree.map(np.testing.assert_array_equal, loaded, want)
  assert json.loads((out / 'meta.json').read_text())['format'] == 'fan'
  assert meta2['key_map'] == meta['key_map']
  t2f.check_against_template('loaded', loaded, template)
  with pytest.raises(FileExistsError):
    convert_fan.save_wing(path, out)


def test_wing_checkpoint_missing_and_extra_keys(state_dict, template,
                                                tmp_path):
  sd = dict(state_dict)
  del sd['l0.weight']
  del sd['m0.b1_1.bn2.running_var']
  for k in [k for k in sd if k.endswith('num_batches_tracked')]:
    del sd[k]  # harmless: never refused
  sd['fc.weight'] = torch.zeros(2, 2)
  path = tmp_path / 'wing.ckpt'
  torch.save({'state_dict': sd, 'optimizer': {}}, path)

  with pytest.raises(t2f.ConversionError) as info:
    convert_fan.convert_wing_checkpoint(path)
  assert info.value.missing == ['l0.weight', 'm0.b1_1.bn2.running_var']
  assert 'allow_missing' in str(info.value)

  variables, meta = convert_fan.convert_wing_checkpoint(path,
                                                        allow_missing=True)
  t2f.check_against_template('wing', variables, template)
  assert meta['missing'] == ['l0.weight', 'm0.b1_1.bn2.running_var']
  assert meta['ignored'] == ['fc.weight']
  assert meta['initialised'] == ['batch_stats/m0/b1_1/bn2/var',
                                 'params/l0/kernel']
  flat = t2f.flatten(variables)
  np.testing.assert_array_equal(flat['batch_stats/m0/b1_1/bn2/var'],
                                np.ones(128))  # BatchNorm's initial var
  kernel = flat['params/l0/kernel']  # lecun-normal: std sqrt(1 / fan_in)
  assert kernel.shape == (1, 1, 256, 99)
  assert abs(kernel.std() * 16.0 - 1.0) < 0.1
  np.testing.assert_array_equal(flat['params/l0/bias'],
                                state_dict['l0.bias'].numpy())


def test_wing_checkpoint_shape_mismatch_refused(state_dict, tmp_path):
  sd = dict(state_dict)
  sd['l0.weight'] = torch.zeros(68, 256, 1, 1)  # a 68-landmark FAN
  del sd['l0.bias']
  path = tmp_path / 'wing.ckpt'
  torch.save({'state_dict': sd}, path)
  with pytest.raises(t2f.ConversionError) as info:
    convert_fan.convert_wing_checkpoint(path, allow_missing=True)
  assert info.value.mismatched == [('l0.weight', (99, 256, 1, 1),
                                    (68, 256, 1, 1))]


def test_wing_checkpoint_file_errors(state_dict, tmp_path):
  with pytest.raises(FileNotFoundError, match='no such checkpoint'):
    convert_fan.convert_wing_checkpoint(tmp_path / 'absent.ckpt')
  garbage = tmp_path / 'garbage.ckpt'
  garbage.write_bytes(b'this is not a torch file')
  with pytest.raises(t2f.ConversionError, match='is not a PyTorch checkpoint'):
    convert_fan.convert_wing_checkpoint(garbage)
  bare = tmp_path / 'bare.ckpt'
  torch.save(dict(state_dict), bare)
  with pytest.raises(t2f.ConversionError, match="key 'state_dict'"):
    convert_fan.convert_wing_checkpoint(bare)
  bad = tmp_path / 'bad.ckpt'
  torch.save({'state_dict': [1, 2, 3]}, bad)
  with pytest.raises(t2f.ConversionError, match='must map parameter names'):
    convert_fan.convert_wing_checkpoint(bad)


def test_load_fan_rejects_other_formats(tmp_path):
  out = tmp_path / 'other'
  t2f.save_converted(out, {'params': {'w': np.zeros(2)}}, {'format': 'l2m_gan'})
  with pytest.raises(ValueError, match="expected 'fan'"):
    convert_fan.load_fan(out)
