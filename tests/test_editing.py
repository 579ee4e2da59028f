"""The jit edit function vs the torch pipeline (FAN masks + E + G)."""

import functools

import jax
import numpy as np
import pytest
import torch

from l2m_jax import editing
from l2m_jax.convert import l2m as l2m_convert
from l2m_jax.models import l2m
from tests import l2m_checkpoints as lc

TOL = 1e-4


def _torch_edit(nets, x, y, y1, degree):
  xt = lc.nhwc_to_torch(x)
  with torch.no_grad():
    masks = nets.fan.get_heatmap(xt) if nets.fan is not None else None
    s, _, s2, s3 = nets.style_encoder(xt, torch.from_numpy(y),
                                      torch.from_numpy(y1))
    out = nets.generator(xt, s + degree * (s3 - s2), masks)
  return lc.torch_to_nhwc(out)


@pytest.fixture(scope='module')
def masked(tmp_path_factory):
  nets = lc.build_torch_nets(img_size=256, max_conv_dim=32, w_hpf=1, seed=51)
  path = lc.save_checkpoint(nets, tmp_path_factory.mktemp('edit'))
  variables, meta = l2m_convert.convert_checkpoint(path)
  return nets, variables, l2m.L2MModelConfig.from_dict(meta['config'])


def test_masked_edit_matches_torch_fan_and_generator(masked, faces_dir):
  nets, variables, config = masked
  x = lc.sample_images(2, 256, seed=52, faces_dir=faces_dir)[:2]
  y, y1 = np.array([0, 1]), np.array([1, 0])
  want = _torch_edit(nets, x, y, y1, 1.0)
  got = editing.edit(variables, x, y, y1, 1.0, config=config)
  err = float(np.max(np.abs(np.asarray(got) - want)))
  print(f'masked edit 256/32 with FAN: max abs err {err:.3g} '
        f'(scale {np.max(np.abs(want)):.3g})')
  assert err <= TOL


def test_sweep_matches_torch_and_degree_semantics(tmp_path):
  nets = lc.build_torch_nets(img_size=64, max_conv_dim=16, w_hpf=0, seed=53)
  path = lc.save_checkpoint(nets, tmp_path)
  variables, meta = l2m_convert.convert_checkpoint(path)
  config = l2m.L2MModelConfig.from_dict(meta['config'])
  x = lc.sample_images(2, 64, seed=54)
  degrees = np.array([0.0, 0.5, 1.25], np.float32)
  sweep = np.asarray(editing.edit_sweep(variables, x, 1, 0, degrees,
                                        config=config))
  assert sweep.shape == (3, 2, 64, 64, 3)
  y, y1 = np.array([1, 1]), np.array([0, 0])
  for d, a in enumerate(degrees):
    want = _torch_edit(nets, x, y, y1, float(a))
    assert np.max(np.abs(sweep[d] - want)) <= TOL
  # Degree 0 is G(x, s) with the unedited code s.
  xt = lc.nhwc_to_torch(x)
  with torch.no_grad():
    s = nets.style_encoder(xt, torch.from_numpy(y), torch.from_numpy(y1))[0]
    rec = lc.torch_to_nhwc(nets.generator(xt, s))
  assert np.max(np.abs(sweep[0] - rec)) <= TOL
  # `edit` with per-sample degrees agrees with the sweep.
  per = np.asarray(editing.edit(variables, x, 1, 0, np.array([0.0, 1.25]),
                                config=config))
  np.testing.assert_allclose(per[0], sweep[0, 0], atol=1e-5)
  np.testing.assert_allclose(per[1], sweep[2, 1], atol=1e-5)


def test_edit_input_errors(masked):
  _, variables, config = masked
  with pytest.raises(ValueError, match=r'\[N, 256, 256, 3\]'):
    editing.edit(variables, np.zeros((1, 64, 64, 3), np.float32), 0, 1,
                 config=config)
  with pytest.raises(ValueError, match='fan'):
    editing.edit({k: v for k, v in variables.items() if k != 'fan'},
                 np.zeros((1, 256, 256, 3), np.float32), 0, 1, config=config)
  assert jax.tree_util.tree_leaves(variables['fan'])


# bfloat16 edit vs the float32 edit of the same images (64 px, cap 16,
# measured 4.0e-3 mean and 5.0e-2 largest on the CPU), relative to the float32
# output's largest value: mean and largest absolute difference.
BF16_EDIT_MEAN_RTOL = 0.01
BF16_EDIT_MAX_RTOL = 0.1


def test_bfloat16_edit_tracks_float32(tmp_path):
  nets = lc.build_torch_nets(img_size=64, max_conv_dim=16, w_hpf=0, seed=55)
  path = lc.save_checkpoint(nets, tmp_path)
  variables, meta = l2m_convert.convert_checkpoint(path)
  config = l2m.L2MModelConfig.from_dict(meta['config'])
  x = lc.sample_images(2, 64, seed=56)
  f32 = np.asarray(editing.edit(variables, x, 0, 1, 1.0, config=config))
  bf16 = editing.edit(variables, x, 0, 1, 1.0, config=config,
                      dtype=jax.numpy.bfloat16)
  assert bf16.dtype == np.float32
  diff = np.abs(np.asarray(bf16) - f32)
  scale = float(np.abs(f32).max())
  print(f'bf16 vs f32 edit: mean abs diff {diff.mean() / scale:.2e}, max '
        f'{diff.max() / scale:.2e} (relative to {scale:.3g})')
  assert diff.mean() <= BF16_EDIT_MEAN_RTOL * scale
  assert diff.max() <= BF16_EDIT_MAX_RTOL * scale
  # Not vacuous: bf16 compute does change the result.
  assert diff.max() > 0


def test_training_sample_grid_matches_torch(tmp_path):
  # The training run's sample grid (l2m_hooks.sample_edits: sources of both
  # domains, each edited towards the next domain) is the same edit as the
  # torch pipeline at every degree.
  from l2m_jax import l2m_hooks  # pylint: disable=g-import-not-at-top
  from l2m_jax import train_l2m  # pylint: disable=g-import-not-at-top
  nets = lc.build_torch_nets(img_size=64, max_conv_dim=16, w_hpf=0, seed=57)
  variables, meta = l2m_convert.convert_checkpoint(
      lc.save_checkpoint(nets, tmp_path))
  config = l2m.L2MModelConfig.from_dict(meta['config'])
  gen, enc = l2m.build_models(config)
  models = train_l2m.Models(config, gen, enc, None, None)
  ema = {'generator': variables['generator']['params'],
         'style_encoder': variables['style_encoder']['params']}
  x = lc.sample_images(2, 64, seed=58)
  y = np.array([0, 1], np.int32)
  degrees = (0.0, 1.0, 1.5)
  got = np.asarray(jax.jit(functools.partial(
      l2m_hooks.sample_edits, models, degrees=degrees))(ema, {}, x, y))
  assert got.shape == (3, 2, 64, 64, 3)
  for d, a in enumerate(degrees):
    want = _torch_edit(nets, x, y, (y + 1) % 2, a)
    assert np.max(np.abs(got[d] - want)) <= TOL
