"""Parity of the Flax StyleGAN2 generator with the in-house torch reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from l2m_jax.convert import stylegan2 as cs
from l2m_jax.models import stylegan2 as sg
from third_party import stylegan2_torch as ts


def _nhwc(x):
  return x.detach().numpy().transpose(0, 2, 3, 1)


def _randomise(g, seed=0):
  """Non-zero noise weights and biases, so every path is exercised."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for n, p in g.named_parameters():
      if (n.endswith('noise.weight') or n.endswith('activate.bias')
          or n.endswith('modulation.bias') or n.endswith('rgb1.bias')
          or (n.startswith('to_rgbs') and n.endswith('.bias'))):
        p.add_(0.3 * torch.randn(p.shape, generator=gen))
  return g


def _pair(size, seed=0, **kw):
  torch.manual_seed(seed)
  g = _randomise(ts.Generator(size, **kw).eval(), seed)
  variables, cfg, _ = cs.convert_state_dict(
      g.state_dict(), 'ref', latent_avg=torch.randn(g.style_dim))
  return g, cs.build_model(cfg), variables


@pytest.mark.parametrize('up,down,pad', [(1, 1, (1, 1)), (2, 1, (2, 1)),
                                         (1, 2, (1, 1)), (2, 2, (0, -1)),
                                         (3, 1, (-1, 2))])
def test_upfirdn2d_matches_torch(up, down, pad):
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 3, 9, 9)).astype(np.float32)
  k = rng.standard_normal((4, 3)).astype(np.float32)  # asymmetric: flip matters
  k = k[:3, :3]
  ref = ts.upfirdn2d(torch.from_numpy(x), torch.from_numpy(k), up, down, pad)
  out = sg.upfirdn2d(jnp.asarray(x.transpose(0, 2, 3, 1)), k, up, down, pad)
  assert out.shape == _nhwc(ref).shape
  np.testing.assert_allclose(np.asarray(out), _nhwc(ref), atol=1e-5)


def test_reference_matches_upstream_counts():
  """stylegan2-pytorch config-f 1024: 171 entries, 30,370,060 params
  (docs/architecture.md#ckpt-stylegan2)."""
  g = ts.Generator(1024)
  assert len(g.state_dict()) == 171
  assert sum(p.numel() for p in g.parameters()) == 30370060
  exp = cs.expected_shapes(cs.DEFAULT_CONFIG)
  assert {k: tuple(v.shape) for k, v in g.state_dict().items()} == exp
  tmpl = sg.variables_template(sg.Generator())
  n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tmpl['params']))
  assert n == 30370060


def test_generator_256_parity_z_truncation_const_noise():
  g, model, variables = _pair(256, style_dim=64, n_mlp=3, channel_base=64)
  z = torch.randn(2, 64)
  t = torch.from_numpy(variables['constants']['latent_avg'][:1])
  with torch.no_grad():
    ref, _ = g([z], randomize_noise=False, truncation=0.7,
               truncation_latent=t)
  fn = jax.jit(lambda v, z: model.apply(v, z, truncation=0.7))
  out = np.asarray(fn(variables, z.numpy()))
  assert out.shape == (2, 256, 256, 3)
  err = np.abs(out - _nhwc(ref)).max()
  print(f'256px z+truncation max abs err {err:.3g} '
        f'(|ref|max {np.abs(_nhwc(ref)).max():.3g})')
  assert err <= 1e-4


def test_generator_256_parity_wplus_given_noise():
  g, model, variables = _pair(256, seed=1, style_dim=64, n_mlp=2,
                              channel_multiplier=1, channel_base=32)
  w = torch.randn(2, g.n_latent, 64)
  noise = [torch.randn(2, 1, 2 ** ((i + 5) // 2), 2 ** ((i + 5) // 2))
           for i in range(g.num_layers)]
  with torch.no_grad():
    ref, lat = g([w], input_is_latent=True, noise=noise, return_latents=True)
  fn = jax.jit(lambda v, w, n: model.apply(v, w, input_is_latent=True,
                                           noise=n, return_latents=True))
  out, lat_j = fn(variables, w.numpy(), [_nhwc(n) for n in noise])
  err = np.abs(np.asarray(out) - _nhwc(ref)).max()
  print(f'256px W+ max abs err {err:.3g}')
  assert err <= 1e-4
  np.testing.assert_allclose(np.asarray(lat_j), lat.numpy(), atol=1e-6)


def test_style_mixing_and_w_input():
  g, model, variables = _pair(32, seed=2, style_dim=32, n_mlp=2,
                              channel_base=16)
  z1, z2 = torch.randn(2, 32), torch.randn(2, 32)
  with torch.no_grad():
    ref, _ = g([z1, z2], inject_index=3, randomize_noise=False)
    w = g.style(z1)
    ref_w, _ = g([w], input_is_latent=True, randomize_noise=False)
  out = jax.jit(lambda v, a, b: model.apply(v, [a, b], inject_index=3))(
      variables, z1.numpy(), z2.numpy())
  np.testing.assert_allclose(np.asarray(out), _nhwc(ref), atol=1e-4)
  out_w = jax.jit(lambda v, w: model.apply(v, w, input_is_latent=True))(
      variables, w.numpy())
  np.testing.assert_allclose(np.asarray(out_w), _nhwc(ref_w), atol=1e-4)


def test_random_noise_uses_rng():
  _, model, v = _pair(16, seed=4, style_dim=16, n_mlp=1, channel_base=8)
  z = jnp.ones((2, 16))
  fn = jax.jit(lambda v, z, r: model.apply(v, z, noise_mode='random',
                                           rngs={'noise': r}))
  a = fn(v, z, jax.random.key(1))
  b = fn(v, z, jax.random.key(1))
  c = fn(v, z, jax.random.key(2))
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert np.abs(np.asarray(a) - np.asarray(c)).max() > 1e-3
  # Two samples of the batch get different noise.
  assert np.abs(np.asarray(a[0]) - np.asarray(a[1])).max() > 1e-3
  assert np.all(np.isfinite(np.asarray(a)))


def test_bad_style_shape_is_reported():
  _, model, v = _pair(16, seed=4, style_dim=16, n_mlp=1, channel_base=8)
  with pytest.raises(ValueError, match='expected'):
    model.apply(v, jnp.ones((1, 5, 16)), input_is_latent=True)


@pytest.mark.slow
def test_generator_1024_config_f_parity():
  g, model, variables = _pair(1024, seed=3)
  w = torch.randn(1, 18, 512)
  with torch.no_grad():
    ref, _ = g([w], input_is_latent=True, randomize_noise=False)
  out = jax.jit(lambda v, w: model.apply(v, w, input_is_latent=True))(
      variables, w.numpy())
  ref = _nhwc(ref)
  err = np.abs(np.asarray(out) - ref).max()
  print(f'1024px config-f max abs err {err:.3g} (|ref|max '
        f'{np.abs(ref).max():.3g})')
  assert err <= 1e-4
