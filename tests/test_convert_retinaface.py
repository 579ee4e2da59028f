"""Tests of l2m_jax.convert.retinaface (RetinaFace mobile0.25 state_dict).

Reference: the state_dict of the in-house torch RetinaFace
(third_party/retinaface_torch.py, upstream key names) and, when present, the
released `mobilenet0.25_Final.pth` (300 entries, 433,343 values).
"""

import importlib.util
import json
import pathlib

import jax
import numpy as np
import pytest
import torch

from l2m_jax.convert import retinaface as convert_rf
from l2m_jax.convert import torch_to_flax as t2f
from l2m_jax.models import retinaface
from tests.conftest import FIXTURES
from third_party import retinaface_torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
WEIGHTS = FIXTURES / 'face_detection' / 'mobilenet0.25_Final.pth'
WEIGHTS_SHA256 = ('5f88f7957d9eaef82b49b9e0202bc56e'
                  '97292e2aede2999209accd34442cc4df')


@pytest.fixture(scope='module')
def state_dict():
  torch.manual_seed(0)
  net = retinaface_torch.RetinaFace()
  with torch.no_grad():
    for m in net.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.running_mean.normal_(0, 0.1)
        m.running_var.uniform_(0.5, 1.5)
        m.num_batches_tracked.fill_(5)
  return net.state_dict()


def test_expected_shapes_match_reference(state_dict):
  expected = convert_rf.expected_shapes()
  assert expected == {k: tuple(v.shape) for k, v in state_dict.items()}
  assert len(expected) == 300
  assert sum(int(np.prod(s)) if s else 1 for s in expected.values()) == (
      433_343)


def test_convert_values_and_layout(state_dict):
  variables, key_map = convert_rf.convert_state_dict(state_dict, 'sd')
  t2f.check_against_template('sd', variables,
                             jax.eval_shape(retinaface.init_variables))
  assert len(key_map) == 300 - 47  # 47 BatchNorm counters dropped
  flat = t2f.flatten(variables)
  assert set(key_map.values()) == set(flat)
  w = state_dict['body.stage1.1.0.weight'].numpy()  # depthwise (8, 1, 3, 3)
  np.testing.assert_array_equal(flat['params/body/stage1_1/layers_0/kernel'],
                                np.transpose(w, (2, 3, 1, 0)))
  np.testing.assert_array_equal(
      flat['batch_stats/ssh2/conv7x7_3/layers_1/var'],
      state_dict['ssh2.conv7x7_3.1.running_var'].numpy())
  np.testing.assert_array_equal(
      flat['params/LandmarkHead_2/conv1x1/bias'],
      state_dict['LandmarkHead.2.conv1x1.bias'].numpy())
  assert key_map['fpn.merge1.1.weight'] == 'params/fpn/merge1/layers_1/scale'


def test_wrapper_and_prefix_accepted(state_dict, tmp_path):
  wrapped = {'state_dict': {f'module.{k}': v for k, v in state_dict.items()}}
  path = tmp_path / 'wrapped.pth'
  torch.save(wrapped, path)
  variables, meta = convert_rf.convert_checkpoint(path)
  ref, _ = convert_rf.convert_state_dict(state_dict, 'sd')
  jax.tree.map(np.testing.assert_array_equal, variables, ref)
  assert meta['format'] == 'retinaface' and len(meta['ignored']) == 47
  # Counters are optional.
  bare = {k: v for k, v in state_dict.items()
          if not k.endswith('num_batches_tracked')}
  convert_rf.convert_state_dict(bare, 'bare')


def test_all_problems_in_one_error(state_dict, tmp_path):
  sd = dict(state_dict)
  del sd['ssh1.conv5X5_2.0.weight']
  sd['ClassHead.3.conv1x1.bias'] = torch.zeros(4)
  sd['BboxHead.0.conv1x1.weight'] = torch.zeros(12, 64, 1, 1)
  with pytest.raises(t2f.ConversionError) as info:
    convert_rf.convert_state_dict(sd, 'bad.pth')
  msg = str(info.value)
  assert 'bad.pth' in msg and 'ssh1.conv5X5_2.0.weight' in msg
  assert 'ClassHead.3.conv1x1.bias' in msg
  assert 'BboxHead.0.conv1x1.weight: expected (8, 64, 1, 1), found ' in msg
  with pytest.raises(t2f.ConversionError, match='RetinaFace state_dict'):
    convert_rf.unwrap_state_dict([1, 2], 'list.pth')
  with pytest.raises(FileNotFoundError, match='no such checkpoint'):
    convert_rf.convert_checkpoint(tmp_path / 'absent.pth')
  junk = tmp_path / 'junk.pth'
  junk.write_bytes(b'not a torch file')
  with pytest.raises(t2f.ConversionError, match='is not a PyTorch checkpoint'):
    convert_rf.convert_checkpoint(junk)


def _load_script(name):
  spec = importlib.util.spec_from_file_location(
      name, ROOT / 'scripts' / f'{name}.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_cli_and_loader(state_dict, tmp_path, capsys):
  src = tmp_path / 'mobilenet0.25_Final.pth'
  torch.save(state_dict, src)
  cli = _load_script('convert_checkpoint')
  out = tmp_path / 'det'
  assert cli.main(['--format', 'retinaface', str(src), '--out',
                   str(out)]) == 0
  assert '253 tensors mapped, 47 ignored' in capsys.readouterr().out
  meta = json.loads((out / 'meta.json').read_text())
  assert meta['source']['sha256'] == t2f.sha256_file(src)
  variables, _ = convert_rf.load_retinaface(out)
  ref, _ = convert_rf.convert_state_dict(state_dict, 'sd')
  jax.tree.map(np.testing.assert_array_equal, variables, ref)
  assert cli.main(['--format', 'retinaface', str(src), '--out',
                   str(tmp_path / 'x'), '--domains', 'a', 'b']) == 2
  assert 'do not apply' in capsys.readouterr().err
  bad = tmp_path / 'bad.pth'
  torch.save({'conv1.weight': torch.zeros(3)}, bad)
  assert cli.main(['--format', 'retinaface', str(bad), '--out',
                   str(tmp_path / 'y')]) == 2
  err = capsys.readouterr().err
  assert 'body.stage1.0.0.weight' in err and 'Traceback' not in err
  # A converted directory of another format is refused by name.
  other = tmp_path / 'other'
  t2f.save_converted(other, {'a': np.zeros(1)}, {'format': 'fan'})
  with pytest.raises(ValueError, match="format is 'fan', expected "
                     "'retinaface'"):
    convert_rf.load_retinaface(other)


def test_released_weights_file():
  if not WEIGHTS.is_file():
    pytest.skip(f'RetinaFace weights not present at {WEIGHTS}')
  assert t2f.sha256_file(WEIGHTS) == WEIGHTS_SHA256
  variables, meta = convert_rf.convert_checkpoint(WEIGHTS)
  assert len(meta['key_map']) == 253 and len(meta['ignored']) == 47
  t2f.check_against_template('real', variables,
                             jax.eval_shape(retinaface.init_variables))
