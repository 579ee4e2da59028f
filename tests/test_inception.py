"""Parity of the Flax InceptionV3 with torchvision and pytorch-fid, and the converter."""

import math
import pathlib

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from l2m_jax.convert import inception as convert_inception
from l2m_jax.convert import torch_to_flax as t2f
from l2m_jax.models import inception as inception_lib
from third_party.torchvision_compat import import_torchvision

TOL = 1e-4


def _randomise(model: torch.nn.Module, seed: int) -> torch.nn.Module:
  """He-normal convs and non-trivial BN statistics
  (docs/method.md#fid-inception)."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, torch.nn.Conv2d):
        fan_in = m.weight[0].numel()
        m.weight.copy_(torch.randn(m.weight.shape, generator=gen)
                       * math.sqrt(2.0 / fan_in))
      elif isinstance(m, torch.nn.BatchNorm2d):
        c = m.num_features
        m.running_mean.copy_(torch.rand(c, generator=gen) - 0.5)
        m.running_var.copy_(torch.rand(c, generator=gen) * 1.5 + 0.5)
        m.weight.copy_(torch.rand(c, generator=gen) + 0.5)
        m.bias.copy_((torch.rand(c, generator=gen) - 0.5) * 0.4)
      elif isinstance(m, torch.nn.Linear):
        m.weight.normal_(0, 0.01, generator=gen)
  return model.eval()


def _torchvision_model(num_classes=1000, aux_logits=True, seed=0):
  tv = import_torchvision()
  model = tv.models.inception_v3(weights=None, aux_logits=aux_logits,
                                 init_weights=False, num_classes=num_classes)
  return _randomise(model, seed)


def _tv_features(model, x_nchw):
  """The L2M-GAN / StarGAN v2 `InceptionV3` feature path (submodules only)."""
  m = model
  with torch.no_grad():
    x = m.Conv2d_2b_3x3(m.Conv2d_2a_3x3(m.Conv2d_1a_3x3(x_nchw)))
    x = torch.nn.functional.max_pool2d(x, 3, 2)
    x = m.Conv2d_4a_3x3(m.Conv2d_3b_1x1(x))
    x = torch.nn.functional.max_pool2d(x, 3, 2)
    for name in ('Mixed_5b', 'Mixed_5c', 'Mixed_5d', 'Mixed_6a', 'Mixed_6b',
                 'Mixed_6c', 'Mixed_6d', 'Mixed_6e', 'Mixed_7a', 'Mixed_7b',
                 'Mixed_7c'):
      x = getattr(m, name)(x)
    return torch.nn.functional.adaptive_avg_pool2d(x, 1).flatten(1).numpy()


def _pytorch_fid_model(state_dict, monkeypatch):
  """pytorch-fid's own InceptionV3, with its weight download replaced."""
  import_torchvision()
  from pytorch_fid import inception as pf_inception  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(pf_inception, 'load_state_dict_from_url',
                      lambda *a, **k: state_dict)
  return pf_inception.InceptionV3([3]).eval()


@pytest.fixture(scope='module')
def jitted_apply():
  cache = {}

  def get(variant):
    if variant not in cache:
      model = inception_lib.InceptionV3(variant=variant)
      cache[variant] = jax.jit(model.apply)
    return cache[variant]
  return get


def test_torchvision_variant_parity(jitted_apply):
  model = _torchvision_model()
  variables, info = convert_inception.convert_state_dict(model.state_dict())
  assert info['kind'] == 'torchvision'
  assert len(info['key_map']) == 470
  rng = np.random.default_rng(0)
  # ImageNet-normalised range, as the stargan_v2 protocol feeds it.
  x = rng.uniform(-2.1, 2.6, (2, 299, 299, 3)).astype(np.float32)
  want = _tv_features(model, torch.from_numpy(x.transpose(0, 3, 1, 2)))
  got = np.asarray(jitted_apply('torchvision')(variables, x))
  chex.assert_shape(got, (2, 2048))
  assert want.mean() > 0.1  # non-degenerate features
  err = np.abs(got - want).max()
  print(f'torchvision variant: max abs err {err:.3e}, mean |f| '
        f'{np.abs(want).mean():.3f}')
  assert err <= TOL


def test_fid_variant_parity_with_pytorch_fid(jitted_apply, monkeypatch):
  base = _torchvision_model(num_classes=1008, aux_logits=False, seed=1)
  state_dict = base.state_dict()
  pf_model = _pytorch_fid_model(state_dict, monkeypatch)
  variables, info = convert_inception.convert_state_dict(state_dict)
  assert info['kind'] == 'fid'
  rng = np.random.default_rng(1)
  x01 = rng.uniform(0, 1, (2, 299, 299, 3)).astype(np.float32)
  with torch.no_grad():
    want = pf_model(torch.from_numpy(x01.transpose(0, 3, 1, 2)))[0]
  want = want.flatten(1).numpy()
  got = np.asarray(jitted_apply('fid')(variables, 2 * x01 - 1))
  err = np.abs(got - want).max()
  print(f'fid variant: max abs err {err:.3e}, mean |f| '
        f'{np.abs(want).mean():.3f}')
  assert err <= TOL
  # The pooling rules matter: the torchvision rules on the same weights give
  # clearly different features (docs/method.md#fid-inception).
  other = np.asarray(jitted_apply('torchvision')(variables, 2 * x01 - 1))
  assert np.abs(other - want).mean() > 100 * TOL


def test_converter_reports_all_problems():
  model = _torchvision_model(seed=2)
  sd = dict(model.state_dict())
  del sd['Mixed_5b.branch1x1.conv.weight']
  del sd['Mixed_7c.branch_pool.bn.running_var']
  sd['Mixed_6b.branch7x7_2.conv.weight'] = torch.zeros(128, 128, 7, 1)
  sd['extra.weight'] = torch.zeros(3)
  with pytest.raises(t2f.ConversionError) as exc:
    convert_inception.convert_state_dict(sd, 'bad.pth')
  msg = str(exc.value)
  for part in ('Mixed_5b.branch1x1.conv.weight',
               'Mixed_7c.branch_pool.bn.running_var', 'extra.weight',
               'Mixed_6b.branch7x7_2.conv.weight: expected (128, 128, 1, 7)'):
    assert part in msg
  assert 'bad.pth' in msg


def test_converter_ignores_head_and_accepts_missing_num_batches(tmp_path):
  model = _torchvision_model(seed=3)
  sd = {k: v for k, v in model.state_dict().items()
        if not k.endswith('num_batches_tracked')}
  variables, info = convert_inception.convert_state_dict(sd)
  assert info['kind'] == 'torchvision'
  assert 'fc.weight' in info['ignored']
  assert any(k.startswith('AuxLogits.') for k in info['ignored'])
  # Round trip through a .pth and the converted-checkpoint folder.
  pth = tmp_path / 'weights.pth'
  torch.save(sd, pth)
  out = tmp_path / 'converted'
  meta = convert_inception.convert_file(pth, out)
  assert meta['source']['sha256'] == t2f.sha256_file(pth)
  loaded, meta2 = convert_inception.load_weights(out)
  assert meta2['config']['kind'] == 'torchvision'
  for a, b in zip(jax.tree.leaves(variables), jax.tree.leaves(loaded)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  w = variables['params']['Mixed_6b']['branch7x7_2']['conv']['kernel']
  np.testing.assert_array_equal(
      w, sd['Mixed_6b.branch7x7_2.conv.weight'].numpy().transpose(2, 3, 1, 0))


def test_converter_rejects_bad_hash_name_and_missing_file(tmp_path):
  pth = tmp_path / 'inception_v3_google-00000000.pth'
  torch.save({'a': torch.zeros(1)}, pth)
  with pytest.raises(t2f.ConversionError, match='SHA-256 prefix 00000000'):
    convert_inception.load_weights(pth)
  with pytest.raises(FileNotFoundError, match='never downloaded'):
    convert_inception.load_weights(tmp_path / 'absent.pth')
  with pytest.raises(FileNotFoundError, match='never downloaded'):
    convert_inception.load_weights(None)


def test_small_input_shapes_and_nonnegative():
  model = inception_lib.InceptionV3(variant='fid')
  template = inception_lib.variables_template('fid', size=75)
  rng = np.random.default_rng(0)

  def init(path, s):
    name = jax.tree_util.keystr(path)
    if 'kernel' in name:  # He-normal
      return (rng.standard_normal(s.shape)
              * math.sqrt(2.0 / np.prod(s.shape[:-1]))).astype(np.float32)
    if 'var' in name or 'scale' in name:
      return np.ones(s.shape, np.float32)
    return np.zeros(s.shape, np.float32)
  variables = jax.tree_util.tree_map_with_path(init, template)
  out = jax.jit(model.apply)(variables, jnp.ones((1, 75, 75, 3)))
  chex.assert_shape(out, (1, 2048))
  chex.assert_tree_all_finite(out)
  assert float(out.min()) >= 0.0


class _TouchOnLoad:
  """Unpickling this object creates a file: stands for arbitrary code."""

  def __init__(self, path):
    self.path = pathlib.Path(path)

  def __reduce__(self):
    return (pathlib.Path.touch, (self.path,))


def test_no_file_is_ever_unpickled_with_code(tmp_path, monkeypatch):
  """Even a file whose hash matches a release's never runs pickled code."""
  marker = tmp_path / 'code_ran'
  pth = tmp_path / 'weights.pth'
  torch.save({'fc.weight': _TouchOnLoad(marker)}, pth)
  prefix = t2f.sha256_file(pth)[:8]
  monkeypatch.setitem(convert_inception.KNOWN_FILES, prefix,
                      ('pt_inception-2015-12-05-6726825d.pth', 'fid'))
  with pytest.raises(t2f.ConversionError) as e:
    convert_inception.load_weights(pth)
  assert not marker.exists()
  assert 'weights_only=True' in str(e.value)
  assert 'torch.save({k: v for k, v in sd.items()}' in str(e.value)


def test_legacy_serialised_fid_file_loads_without_unpickling_code(tmp_path):
  """pytorch-fid's release file is in torch's legacy (pre-zip) format."""
  sd = _torchvision_model(num_classes=1008, aux_logits=False, seed=4
                          ).state_dict()
  tmp = tmp_path / 'tmp.pth'
  torch.save(sd, tmp, _use_new_zipfile_serialization=False)
  with open(tmp, 'rb') as f:
    assert f.read(2) == b'\x80\x02'  # a bare pickle stream, not a zip
  pth = tmp_path / f'pt_inception-2015-12-05-{t2f.sha256_file(tmp)[:8]}.pth'
  tmp.rename(pth)
  variables, meta = convert_inception.load_weights(pth)
  assert meta['config']['kind'] == 'fid'
  np.testing.assert_array_equal(
      variables['params']['Conv2d_1a_3x3']['conv']['kernel'],
      sd['Conv2d_1a_3x3.conv.weight'].numpy().transpose(2, 3, 1, 0))


def test_variables_template_has_torch_shapes_and_fresh_containers():
  """The (memoised) template: torchvision's feature-extractor shapes for
  every parameter, and a caller's change does not reach the next caller."""
  torch_model = import_torchvision().models.inception_v3(
      weights=None, init_weights=False)
  want = {k: tuple(v.shape) for k, v in torch_model.state_dict().items()
          if not (k.startswith(('AuxLogits.', 'fc.'))
                  or k.endswith('num_batches_tracked'))}
  first = inception_lib.variables_template('torchvision')
  flat = t2f.flatten(first)
  assert len(flat) == len(want) == 470
  cout, cin, kh, kw = want['Mixed_6b.branch7x7dbl_3.conv.weight']
  assert flat['params/Mixed_6b/branch7x7dbl_3/conv/kernel'].shape == (
      kh, kw, cin, cout)
  first['params'].pop('Mixed_6b')
  first['extra'] = {}
  second = inception_lib.variables_template('torchvision')
  assert set(second) == {'params', 'batch_stats'}
  assert t2f.flatten(second).keys() == flat.keys()
