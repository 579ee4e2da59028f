"""Tests for the shared converter machinery (l2m_jax.convert.torch_to_flax)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import linen as nn

from l2m_jax.convert import torch_to_flax as t2f


def test_conv_kernel_matches_torch_conv():
  torch.manual_seed(0)
  conv = torch.nn.Conv2d(3, 5, 3, stride=2, padding=1)
  x = torch.randn(2, 3, 9, 9)
  ref = conv(x).detach().numpy().transpose(0, 2, 3, 1)
  flax_conv = nn.Conv(5, (3, 3), strides=2, padding=((1, 1), (1, 1)))
  params = {'kernel': t2f.conv_kernel(conv.weight),
            'bias': t2f.to_numpy(conv.bias)}
  out = flax_conv.apply({'params': params},
                        jnp.asarray(x.numpy().transpose(0, 2, 3, 1)))
  np.testing.assert_allclose(out, ref, atol=1e-5)


def test_dense_kernel_matches_torch_linear():
  torch.manual_seed(1)
  lin = torch.nn.Linear(7, 4)
  x = torch.randn(3, 7)
  params = {'kernel': t2f.dense_kernel(lin.weight),
            'bias': t2f.to_numpy(lin.bias)}
  out = nn.Dense(4).apply({'params': params}, jnp.asarray(x.numpy()))
  np.testing.assert_allclose(out, lin(x).detach().numpy(), atol=1e-6)


def test_check_state_dict_lists_every_problem():
  sd = {'a': torch.zeros(3), 'b': torch.zeros(2, 2), 'x': torch.zeros(1),
        'y': torch.zeros(1), 'n.num_batches_tracked': torch.tensor(0)}
  expected = {'a': (3,), 'b': (2, 3), 'c': (1,), 'd': (4,), 'e': (5,)}
  with pytest.raises(t2f.ConversionError) as info:
    t2f.check_state_dict('ckpt[gen]', sd, expected,
                         ignored=['n.num_batches_tracked'], optional=['e'])
  err = info.value
  assert err.missing == ['c', 'd']
  assert err.unexpected == ['x', 'y']
  assert err.mismatched == [('b', (2, 3), (2, 2))]
  msg = str(err)
  for needle in ['ckpt[gen]', '- c', '- d', '- x', '- y',
                 'b: expected (2, 3), found (2, 2)']:
    assert needle in msg
  # A matching dict passes.
  t2f.check_state_dict('ok', {'a': torch.zeros(3)}, {'a': (3,)})


def test_save_load_roundtrip_and_template_check(tmp_path):
  model = nn.Dense(3)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 2)))
  variables = jax.tree.map(np.asarray, variables)
  meta = {'format': 'test', 'config': {'features': 3},
          'source': {'sha256': 'abc'}}
  t2f.save_converted(tmp_path / 'ck', variables, meta)
  template = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 2)))
  back, meta_back = t2f.load_converted(tmp_path / 'ck', template)
  assert meta_back == meta
  np.testing.assert_array_equal(back['params']['kernel'],
                                variables['params']['kernel'])
  with pytest.raises(FileExistsError, match='overwrite'):
    t2f.save_converted(tmp_path / 'ck', variables, meta)
  t2f.save_converted(tmp_path / 'ck', variables, meta, overwrite=True)
  wrong = jax.eval_shape(nn.Dense(4).init, jax.random.key(0),
                         jnp.zeros((1, 2)))
  with pytest.raises(t2f.ConversionError, match='params/kernel'):
    t2f.load_converted(tmp_path / 'ck', wrong)


def test_load_errors_name_the_path(tmp_path):
  with pytest.raises(FileNotFoundError, match='nothing.ckpt'):
    t2f.load_torch_file(tmp_path / 'nothing.ckpt')
  with pytest.raises(FileNotFoundError, match='directory'):
    t2f.load_torch_file(tmp_path)
  junk = tmp_path / 'junk.ckpt'
  junk.write_bytes(b'this is not a checkpoint')
  with pytest.raises(t2f.ConversionError, match='junk.ckpt'):
    t2f.load_torch_file(junk)
  with pytest.raises(FileNotFoundError, match='meta.json'):
    t2f.load_converted(tmp_path)
  with pytest.raises(FileNotFoundError, match='not a converted'):
    t2f.load_converted(tmp_path / 'absent')


class _Payload:
  """An arbitrary class: weights_only loading must refuse to build it."""


def test_weights_only_refuses_arbitrary_objects(tmp_path):
  path = tmp_path / 'evil.pt'
  torch.save({'x': _Payload()}, path)
  with pytest.raises(t2f.ConversionError, match='weights_only'):
    t2f.load_torch_file(path)


def test_argparse_namespace_entries_load(tmp_path):
  # e.g. a StyleGAN2 training checkpoint: weights plus the CLI arguments.
  import argparse  # pylint: disable=g-import-not-at-top
  path = tmp_path / 'train.pt'
  torch.save({'g_ema': {'w': torch.ones(2)},
              'args': argparse.Namespace(size=256, lr=0.002)}, path)
  obj = t2f.load_torch_file(path)
  assert obj['args'].size == 256
  np.testing.assert_array_equal(t2f.to_numpy(obj['g_ema']['w']), [1, 1])


def test_read_meta_checks_the_format(tmp_path):
  t2f.save_converted(tmp_path / 'ck', {'x': np.zeros(2)}, {'format': 'fan'})
  assert t2f.read_meta(tmp_path / 'ck', 'fan')['format'] == 'fan'
  with pytest.raises(ValueError, match=r"format is 'fan', expected "
                     r"'l2m_gan' \(convert with X\)"):
    t2f.read_meta(tmp_path / 'ck', 'l2m_gan', 'convert with X')
