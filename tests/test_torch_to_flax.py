"""Tests for the shared converter machinery (l2m_jax.convert.torch_to_flax)."""

import os
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import linen as nn

from l2m_jax.convert import torch_to_flax as t2f
from tests.conftest import REPO_ROOT


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


def test_converters_refuse_nonfinite_and_non_float_weights():
  expected = {'a.weight': (2, 2), 'b.bias': (2,), 'bn.num_batches_tracked': ()}
  good = {'a.weight': torch.ones(2, 2), 'b.bias': torch.zeros(2),
          'bn.num_batches_tracked': torch.tensor(7)}  # int counter: allowed
  t2f.check_state_dict('src', good, expected)
  bad = dict(good, **{'a.weight': torch.tensor([[1.0, float('nan')],
                                                [float('inf'), 0.0]]),
                      'b.bias': torch.zeros(2, dtype=torch.int64)})
  with pytest.raises(t2f.ConversionError) as e:
    t2f.check_state_dict('src', bad, expected)
  msg = str(e.value)
  assert 'a.weight: 2 of 4 entries are NaN or inf' in msg
  assert 'b.bias: int64' in msg


def _variables():
  rng = np.random.default_rng(0)
  return {'conv': {'kernel': rng.standard_normal((3, 3, 4, 64)).astype(
      np.float32), 'bias': np.zeros(64, np.float32)}}


def _data_files(ckpt):
  meta = t2f.read_meta(ckpt)
  return sorted((ckpt / k for k in meta['checksums']),
                key=lambda p: p.stat().st_size)


@pytest.mark.parametrize('damage', ['4 KiB flipped', 'emptied', 'manifest'])
def test_damaged_converted_checkpoint_is_one_clear_error(tmp_path, damage):
  ckpt = tmp_path / 'ck'
  t2f.save_converted(ckpt, _variables(), {'format': 'x'})
  if damage == 'manifest':
    target = ckpt / 'variables' / 'manifest.ocdbt'
    target.unlink()
  else:
    target = _data_files(ckpt)[-1]
    data = bytearray(target.read_bytes())
    if damage == 'emptied':
      data = bytearray()
    else:
      start = len(data) // 4
      for i in range(start, min(len(data), start + 4096)):
        data[i] ^= 0xFF
    target.write_bytes(bytes(data))
  with pytest.raises(t2f.ConversionError) as e:
    t2f.load_converted(ckpt)
  rel = target.relative_to(ckpt).as_posix()
  assert 'damaged' in str(e.value) and rel in str(e.value), str(e.value)


def test_nonfinite_or_integer_weights_in_a_converted_checkpoint(tmp_path):
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  for name, value in (('nan', np.asarray([1.0, np.nan], np.float32)),
                      ('int', np.asarray([1, 2], np.int64))):
    ckpt = tmp_path / name
    ckpt.mkdir()
    with ocp.PyTreeCheckpointer() as c:  # written by hand: no checks
      c.save(ckpt / 'variables', {'w': {'kernel': value}})
    (ckpt / 'meta.json').write_text('{"format": "x"}')
    with pytest.raises(t2f.ConversionError) as e:
      t2f.load_converted(ckpt)
    assert 'w/kernel' in str(e.value)
  with pytest.raises(t2f.ConversionError, match='w/kernel: 1 of 2 entries'):
    t2f.save_converted(tmp_path / 'out', {'w': {'kernel': np.asarray(
        [1.0, np.inf], np.float32)}}, {'format': 'x'})
  assert not (tmp_path / 'out').exists()


def test_overwrite_is_atomic_and_cleans_up(tmp_path, monkeypatch):
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  ckpt = tmp_path / 'ck'
  old = _variables()
  t2f.save_converted(ckpt, old, {'format': 'x', 'n': 1})
  new = jax.tree.map(lambda a: a + 1, old)

  class Killed(Exception):
    pass

  real_save = ocp.PyTreeCheckpointer.save

  def save_then_die(self, directory, *args, **kwargs):
    real_save(self, directory, *args, **kwargs)
    raise Killed  # after the new data are written, before meta.json
  monkeypatch.setattr(ocp.PyTreeCheckpointer, 'save', save_then_die)
  with pytest.raises(Killed):
    t2f.save_converted(ckpt, new, {'format': 'x', 'n': 2}, overwrite=True)
  monkeypatch.undo()
  variables, meta = t2f.load_converted(ckpt)  # still the old one
  assert meta['n'] == 1
  np.testing.assert_array_equal(variables['conv']['kernel'],
                                old['conv']['kernel'])
  t2f.save_converted(ckpt, new, {'format': 'x', 'n': 2}, overwrite=True)
  variables, meta = t2f.load_converted(ckpt)
  assert meta['n'] == 2
  np.testing.assert_array_equal(variables['conv']['kernel'],
                                new['conv']['kernel'])
  # The replaced data and the leftover of the killed save are gone.
  assert sorted(p.name for p in ckpt.iterdir()) == [
      'meta.json', t2f.read_meta(ckpt)['variables_dir']]


_EXPORT_LOOP = '''
import sys
import numpy as np
from l2m_jax.convert import torch_to_flax as t2f
out = sys.argv[1]
for step in range(10**6):
  v = {'w': {'kernel': np.full((64, 64), step, np.float32)}}
  t2f.save_converted(out, v, {'format': 'x', 'step': step}, overwrite=True)
  print(step, flush=True)
'''


def test_a_kill_at_any_moment_leaves_the_old_or_the_new_export(tmp_path):
  """kill -9 during repeated overwrites: always one complete checkpoint."""
  out = tmp_path / 'export'
  rng = np.random.default_rng(0)
  seen_steps = []
  for _ in range(3):
    p = subprocess.Popen([sys.executable, '-c', _EXPORT_LOOP, str(out)],
                         stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT,
                         env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3'))
    try:
      p.stdout.readline()  # one export done
      time.sleep(float(rng.uniform(0.0, 1.0)))
    finally:
      p.kill()
      p.wait()
    variables, meta = t2f.load_converted(out)
    np.testing.assert_array_equal(variables['w']['kernel'], meta['step'])
    seen_steps.append(meta['step'])
  print(f'exports found after kill -9: steps {seen_steps}')
