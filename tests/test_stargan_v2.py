"""Parity of the StarGAN v2 / L2M-GAN generator and discriminator with torch.

Random-weight reference modules (third_party/l2m_torch.py) are saved in the
official checkpoint format, converted with l2m_jax.convert.l2m, and run on
the same inputs as the Flax modules.
"""

import jax
import numpy as np
import pytest
import torch
from torch.nn import functional as F

from l2m_jax.convert import l2m as l2m_convert
from l2m_jax.models import l2m, stargan_v2
from tests import l2m_checkpoints as lc
from third_party import l2m_torch

TOL = 1e-4


def _masks(n, seed):
  rng = np.random.default_rng(seed)
  return tuple(rng.uniform(0, 1, (n, 256, 256, 1)).astype(np.float32)
               for _ in range(2))


def _max_err(a, b):
  return float(np.max(np.abs(np.asarray(a) - np.asarray(b))))


@pytest.mark.parametrize('out_size', [32, 64, 128, 100, 48])
def test_resize_bilinear_matches_torch(out_size):
  x = np.random.default_rng(0).normal(size=(2, 256, 256, 3)).astype(
      np.float32)
  want = F.interpolate(lc.nhwc_to_torch(x), size=out_size, mode='bilinear',
                       align_corners=False)
  got = stargan_v2.resize_bilinear_half_pixel(x, out_size, out_size)
  # Integer factors (the generator's 256 -> 32/64/128) agree to rounding;
  # other ratios differ by torch's float32 source-coordinate arithmetic.
  tol = 1e-6 if 256 % out_size == 0 else 2e-4
  assert _max_err(got, lc.torch_to_nhwc(want)) < tol


def test_highpass_matches_torch():
  x = np.random.default_rng(1).normal(size=(2, 16, 16, 5)).astype(np.float32)
  want = l2m_torch.HighPass(2.0)(lc.nhwc_to_torch(x))
  got = stargan_v2.HighPass(2.0)(x)
  assert _max_err(got, lc.torch_to_nhwc(want)) < 1e-5
  assert not jax.tree_util.tree_leaves(
      stargan_v2.HighPass(1.0).init(jax.random.key(0), x))


def _convert(nets, tmp_path, suffix='nets_ema'):
  path = lc.save_checkpoint(nets, tmp_path, suffix=suffix)
  variables, meta = l2m_convert.convert_checkpoint(path)
  return variables, l2m.L2MModelConfig.from_dict(meta['config'])


def _generator_parity(nets, variables, config, x, masks, apply_fn=None):
  s = np.random.default_rng(2).normal(
      size=(x.shape[0], config.style_dim)).astype(np.float32)
  tmasks = None if masks is None else tuple(lc.nhwc_to_torch(m)
                                            for m in masks)
  with torch.no_grad():
    want = nets.generator(lc.nhwc_to_torch(x), torch.from_numpy(s), tmasks)
  if apply_fn is None:
    apply_fn = jax.jit(l2m.build_models(config)[0].apply)
  got = apply_fn(variables['generator'], x, s, masks)
  want = lc.torch_to_nhwc(want)
  return _max_err(got, want), float(np.max(np.abs(want)))


@pytest.fixture(scope='module')
def masked_256(tmp_path_factory):
  """256 px, w_hpf=1, max_conv_dim 64 (reduced width for the CPU suite)."""
  nets = lc.build_torch_nets(img_size=256, max_conv_dim=64, w_hpf=1, seed=3)
  variables, config = _convert(nets, tmp_path_factory.mktemp('g256'))
  apply_fn = jax.jit(l2m.build_models(config)[0].apply)
  return nets, variables, config, apply_fn


def test_generator_with_masks_256(masked_256):
  nets, variables, config, apply_fn = masked_256
  x = lc.sample_images(1, 256, seed=4)
  err, scale = _generator_parity(nets, variables, config, x, _masks(1, 5),
                                 apply_fn)
  print(f'generator 256/64 w_hpf=1 masked: max abs err {err:.3g} '
        f'(output scale {scale:.3g})')
  assert err <= TOL


def test_generator_with_masks_256_real_face(masked_256, faces_dir):
  nets, variables, config, apply_fn = masked_256
  x = lc.sample_images(1, 256, faces_dir=faces_dir)
  err, _ = _generator_parity(nets, variables, config, x, _masks(1, 6),
                             apply_fn)
  assert err <= TOL


def test_masks_change_output(masked_256):
  """The skip path is live: masks of 0 and random masks differ."""
  _, variables, config, fn = masked_256
  x = lc.sample_images(1, 256, seed=7)
  s = np.ones((1, config.style_dim), np.float32)
  zero = tuple(np.zeros((1, 256, 256, 1), np.float32) for _ in range(2))
  a = fn(variables['generator'], x, s, zero)
  b = fn(variables['generator'], x, s, _masks(1, 8))
  assert _max_err(a, b) > 1e-2


def test_generator_without_masks_w_hpf0_256(tmp_path):
  nets = lc.build_torch_nets(img_size=256, max_conv_dim=32, w_hpf=0, seed=9)
  variables, config = _convert(nets, tmp_path)
  assert config.w_hpf == 0 and 'fan' not in variables
  x = lc.sample_images(2, 256, seed=10)
  err, scale = _generator_parity(nets, variables, config, x, None)
  print(f'generator 256/32 w_hpf=0: max abs err {err:.3g} (scale {scale:.3g})')
  assert err <= TOL


def test_discriminator_256(tmp_path):
  nets = lc.build_torch_nets(img_size=256, max_conv_dim=32, w_hpf=0, seed=11,
                             num_domains=3, with_discriminator=True)
  variables, config = _convert(nets, tmp_path, suffix='nets')
  x = lc.sample_images(3, 256, seed=12)
  y = np.array([2, 0, 1])
  with torch.no_grad():
    want = nets.discriminator(lc.nhwc_to_torch(x), torch.from_numpy(y))
  disc = l2m.build_discriminator(config)
  got = jax.jit(disc.apply)(variables['discriminator'], x, y)
  assert got.shape == (3,)
  err = _max_err(got, want.numpy())
  print(f'discriminator 256/32: max abs err {err:.3g}')
  assert err <= TOL


@pytest.mark.slow
def test_generator_full_width_256(tmp_path):
  """The released configuration: 256 px, max_conv_dim 512, w_hpf 1."""
  nets = lc.build_torch_nets(img_size=256, max_conv_dim=512, w_hpf=1,
                             seed=13)
  variables, config = _convert(nets, tmp_path)
  assert config == l2m.L2MModelConfig()
  x = lc.sample_images(2, 256, seed=14)
  err, scale = _generator_parity(nets, variables, config, x, _masks(2, 15))
  print(f'generator 256/512 masked: max abs err {err:.3g} (scale {scale:.3g})')
  assert err <= TOL
