"""Parity tests: l2m_jax.models.fan vs the in-house torch FAN reference.

References: third_party/fan_torch.py (torch ops: conv, BatchNorm,
F.interpolate, torch.roll), explicit numpy constructions of the roll
convention, and torch's F.interpolate for the interpolation matrices.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import jax
import jax.numpy as jnp

from l2m_jax import image_io
from l2m_jax.convert import fan as convert_fan
from l2m_jax.models import fan
from third_party import fan_torch

ATOL = 1e-4
_masks_fn = jax.jit(fan.heatmaps_to_masks)


def _nchw(x):
  return torch.from_numpy(np.ascontiguousarray(np.transpose(x, (0, 3, 1, 2))))


def _nhwc(t):
  return np.transpose(t.detach().numpy(), (0, 2, 3, 1))


def _random_torch_fan(seed=0):
  """Random-weight torch FAN whose eval BatchNorms are not the identity."""
  torch.manual_seed(seed)
  model = fan_torch.FAN().eval()
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.weight.uniform_(0.5, 1.5)
        m.bias.normal_(0.0, 0.1)
        m.running_mean.normal_(0.0, 0.1)
        m.running_var.uniform_(0.5, 1.5)
  return model


def _make_peaked(model, x_pm1, quantile=0.97, gain=4.0):
  """Rescales `l0` so ~3% of each landmark map of x_pm1 exceeds 0.1.

  Random weights give smooth heatmaps that saturate both masks everywhere;
  with this per-channel gain and offset the truncation, normalisation and
  rolls of the post-processing all matter.
  """
  with torch.no_grad():
    model.l0.weight.mul_(gain)
    model.l0.bias.mul_(gain)
    raw = model(_nchw(x_pm1 * 0.5 + 0.5))  # [N, 99, 64, 64]
    q = torch.quantile(raw.transpose(0, 1).reshape(99, -1), quantile, dim=1)
    model.l0.bias.add_(0.1 - q)
  return model


@pytest.fixture(scope='module')
def inputs():
  """Two smooth-ish random images in [-1, 1], [2, 256, 256, 3]."""
  rng = np.random.RandomState(0)
  coarse = rng.uniform(-1, 1, (2, 3, 32, 32)).astype(np.float32)
  x = F.interpolate(torch.from_numpy(coarse), size=(256, 256), mode='bilinear',
                    align_corners=False)
  x = x + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
  return np.transpose(x.clamp(-1, 1).numpy(), (0, 2, 3, 1)).astype(np.float32)


@pytest.fixture(scope='module')
def nets(inputs):
  """(torch FAN, converted Flax variables) with peaked heatmaps on `inputs`."""
  model = _make_peaked(_random_torch_fan(), inputs)
  variables, _ = convert_fan.convert_fan_state_dict(model.state_dict(),
                                                    'random FAN')
  return model, jax.tree.map(jnp.asarray, variables)


@pytest.fixture(scope='module')
def fan_fn():
  return jax.jit(lambda v, x: fan.FAN().apply(v, x))


def test_heatmaps_match_torch(nets, inputs, fan_fn):
  model, variables = nets
  x01 = inputs * 0.5 + 0.5
  with torch.no_grad():
    want = _nhwc(model(_nchw(x01)))
  got = np.asarray(fan_fn(variables, x01))
  assert got.shape == (2, 64, 64, 99)
  assert np.all(np.isfinite(got))
  err = np.abs(got - want).max()
  print(f'FAN heatmap max abs err {err:.3g} (scale {np.abs(want).max():.3g})')
  assert err <= ATOL


def test_heatmaps_match_torch_real_faces(nets, fan_fn, faces_dir):
  model, variables = nets
  paths = image_io.list_images(faces_dir)[:2]
  x = image_io.load_images(paths, 256)
  if x.shape[0] < 2:
    x = np.concatenate([x, x[:, ::-1]], 0)
  x01 = (x * 0.5 + 0.5).astype(np.float32)
  with torch.no_grad():
    want = _nhwc(model(_nchw(x01)))
  got = np.asarray(fan_fn(variables, x01))
  err = np.abs(got - want).max()
  print(f'FAN heatmap (real faces) max abs err {err:.3g}')
  assert err <= ATOL


def test_fan_rejects_wrong_input_size(nets):
  _, variables = nets
  with pytest.raises(ValueError, match='256, 256, 3'):
    fan.FAN().apply(variables, jnp.zeros((1, 128, 128, 3)))


def test_coord_channels_match_torch():
  for size in (64, 256):
    want = fan_torch.AddCoordsTh(size, size, True).coords(torch.float32,
                                                          'cpu').numpy()
    got = fan.coord_channels(size, size)
    np.testing.assert_allclose(got, np.transpose(want, (1, 2, 0)), atol=1e-6)
    # xx varies down the image, yy across, rr in [0, 1].
    assert got[0, 0, 0] == -1 and got[-1, 0, 0] == 1 and got[0, -1, 0] == -1
    assert got[0, -1, 1] == 1 and abs(got[..., 2].max() - 1) < 1e-6


@pytest.mark.parametrize('in_size,out_size,align_corners', [
    (256, 256, False), (128, 256, False), (300, 256, False),
    (256, 32, False), (256, 128, False), (64, 256, True)])
def test_bilinear_matches_torch_interpolate(in_size, out_size, align_corners):
  x = np.random.RandomState(in_size).randn(1, in_size, in_size, 2).astype(
      np.float32)
  want = _nhwc(F.interpolate(_nchw(x), size=(out_size, out_size),
                             mode='bilinear', align_corners=align_corners))
  got = np.asarray(fan.resize_bilinear(jnp.asarray(x), out_size,
                                       align_corners))
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
  if in_size == out_size and not align_corners:
    np.testing.assert_array_equal(got, x)


def _gaussian_heatmaps(n=2, size=256, seed=0):
  """[n, size, size, 98] Gaussian blobs, amplitude ~1, random centres."""
  rng = np.random.RandomState(seed)
  yy, xx = np.mgrid[:size, :size].astype(np.float32)
  out = np.empty((n, size, size, fan.NUM_LANDMARKS), np.float32)
  for i in range(n):
    for c in range(fan.NUM_LANDMARKS):
      cy, cx = rng.uniform(48, size - 48, 2)
      sigma = rng.uniform(4, 10)
      amp = rng.uniform(0.8, 1.2)
      out[i, ..., c] = amp * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2)
                                    / (2 * sigma ** 2))
  return out + rng.uniform(0, 0.05, out.shape).astype(np.float32)


def test_postprocessing_matches_torch_on_synthetic_heatmaps():
  heat = _gaussian_heatmaps()
  want1, want2 = fan_torch.preprocess(_nchw(heat))
  want1, want2 = _nhwc(want1), _nhwc(want2)
  got1, got2 = _masks_fn(heat)
  got1, got2 = np.asarray(got1), np.asarray(got2)
  assert got1.shape == got2.shape == (2, 256, 256, 1)
  for name, got, want in (('M_1', got1, want1), ('M_2', got2, want2)):
    frac = float(np.mean(want > 0))
    err = np.abs(got - want).max()
    print(f'{name}: max abs err {err:.3g}, non-zero {frac:.1%}')
    assert 0.1 < frac < 0.9, f'{name} trivial ({frac:.1%} non-zero)'
    assert 0.01 < float(np.mean((want > 0) & (want < 1)))  # soft values too
    assert err <= ATOL
  assert np.all(got2 <= got1 + 1e-6)  # M_2's channels are a subset of M_1's


def test_roll_convention_explicit():
  """Row shifts per part, against explicitly placed blocks (no np.roll)."""
  size = 256
  heat = np.zeros((1, size, size, fan.NUM_LANDMARKS), np.float32)
  want1 = np.zeros((size, size), np.float64)
  want2 = np.zeros((size, size), np.float64)
  one = 1.0 / (1.0 + 1e-6)  # a 0/1 map after min-max normalisation
  rows = lambda a, b: [r % size for r in range(a, b)]  # wrap-around rows
  # (channel, first row, column, expected [(row shift, power)], in M_2)
  cases = [
      (10, 50, 0, [(0, 3)], False),             # chin: cube, no shift
      (40, 100, 10, [(7, 2)], False),           # eyebrow: down 7, square
      (57, 3, 20, [(-8, 4)], True),             # nostril: up 8, wraps
      (79, 252, 30, [(8, 4)], False),           # upper lip: down 8, wraps
      (85, 140, 40, [(-8, 4)], False),          # lower lip: up 8
      (90, 160, 50, [(2, 3)], False),           # inner lip: down 2
      (53, 70, 60, [(-4, 1)], True),            # nose: up 4
      (51, 70, 70, [(0, 1)], True),             # nose top: untouched
      (65, 120, 80, [(8, 3), (24, 1)], True),   # eye: two shifted copies
      (97, 90, 90, [(0, 1)], True),             # eye centre: untouched
      (33, 30, 100, [], False),                 # zeroed
      (3, 30, 110, [], False),                  # zeroed (outline)
  ]
  for ch, r0, c0, ops, in_m2 in cases:
    heat[0, r0:r0 + 4, c0:c0 + 4, ch] = 1.0
    for shift, power in ops:
      for r in rows(r0 + shift, r0 + shift + 4):
        want1[r, c0:c0 + 4] += one ** power
        if in_m2:
          want2[r, c0:c0 + 4] += one ** power
  got1, got2 = _masks_fn(heat)
  np.testing.assert_allclose(np.asarray(got1)[0, ..., 0], want1, atol=1e-6)
  np.testing.assert_allclose(np.asarray(got2)[0, ..., 0], want2, atol=1e-6)


def test_truncation_and_normalisation():
  """Values < 0.1 vanish; each channel is min-max normalised on its own."""
  heat = np.zeros((1, 256, 256, fan.NUM_LANDMARKS), np.float32)
  heat[0, 10, 5, 97] = 0.0999  # below the threshold -> 0
  heat[0, 20, 5, 97] = 0.1  # kept
  heat[0, 30, 5, 97] = 0.4  # the channel max -> ~1
  heat[0, 40, 5, 96] = 5.0  # another channel's scale does not matter
  m1, _ = _masks_fn(heat)
  m1 = np.asarray(m1)[0, :, 5, 0]
  np.testing.assert_allclose(m1[[10, 20, 30, 40]],
                             [0.0, 0.1 / (0.4 + 1e-6), 0.4 / (0.4 + 1e-6),
                              5.0 / (5.0 + 1e-6)], rtol=1e-6)


def test_heatmaps_to_masks_rejects_other_sizes():
  with pytest.raises(ValueError, match='256, 256, 98'):
    fan.heatmaps_to_masks(jnp.zeros((1, 64, 64, 98)))


def _near_threshold(model, x_nchw, tol=1e-4):
  """Number of upsampled heatmap values within `tol` of the 0.1 cut."""
  with torch.no_grad():
    heat = model.get_heatmap(x_nchw, b_preprocess=False)
    heat = F.interpolate(heat, scale_factor=4, mode='bilinear',
                         align_corners=True)
  return int(torch.sum(torch.abs(heat - 0.1) <= tol))


def _check_masks(got, want, name, flips_allowed=0):
  """Masks agree to ATOL except at threshold flips, and are non-trivial.

  The heatmaps agree to ~1e-6, so a heatmap value within rounding of the
  0.1 truncation threshold can be cut in one implementation and kept in the
  other. Each such value can move at most one mask pixel, so the pixels off
  by more than ATOL may number at most `flips_allowed`, the count of torch
  heatmap values within 1e-4 of the threshold (and at most 0.01% of all
  pixels); every other pixel agrees to ATOL.
  """
  diff = np.abs(got - want)
  off = int(np.sum(diff > ATOL))
  print(f'{name}: max abs err {diff.max():.3g}, pixels > {ATOL}: {off} '
        f'(near-threshold heatmap values: {flips_allowed}), '
        f'non-zero {np.mean(want > 0):.1%}')
  assert 0.05 < float(np.mean(want > 0)) < 0.95, f'{name} trivial'
  assert off <= min(flips_allowed, diff.size // 10000)
  if off:
    assert np.sort(diff, axis=None)[-off - 1] <= ATOL


def test_get_masks_matches_torch(nets, inputs):
  model, variables = nets
  with torch.no_grad():
    want1, want2 = model.get_heatmap(_nchw(inputs))
  flips = _near_threshold(model, _nchw(inputs))
  got1, got2 = jax.jit(fan.get_masks)(variables, inputs)
  assert got1.shape == got2.shape == (2, 256, 256, 1)
  _check_masks(np.asarray(got1), _nhwc(want1), 'M_1', flips)
  _check_masks(np.asarray(got2), _nhwc(want2), 'M_2', flips)


@pytest.mark.slow
def test_get_masks_matches_torch_at_128px(nets, inputs):
  """Input resize 128 -> 256 (bilinear, align_corners=False) included."""
  model, variables = nets
  x = _nhwc(F.interpolate(_nchw(inputs), size=(128, 128), mode='bilinear',
                          align_corners=False, antialias=True))
  with torch.no_grad():
    want1, want2 = model.get_heatmap(_nchw(x))
  flips = _near_threshold(model, _nchw(x))
  got1, got2 = jax.jit(fan.get_masks)(variables, x)
  _check_masks(np.asarray(got1), _nhwc(want1), 'M_1 (128 px)', flips)
  _check_masks(np.asarray(got2), _nhwc(want2), 'M_2 (128 px)', flips)


@pytest.mark.slow
def test_get_masks_stops_gradients(nets, inputs):
  _, variables = nets

  def loss(x):
    m1, m2 = fan.get_masks(variables, x)
    return jnp.sum(m1) + jnp.sum(m2)

  g = jax.jit(jax.grad(loss))(jnp.asarray(inputs))
  assert float(jnp.abs(g).max()) == 0.0
