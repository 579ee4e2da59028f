"""Landmarks of the generated faces, the LandmarkNet and its masks.

References: the rendered pixels (landmarks must lie on the drawn features),
the in-house torch FAN post-processing (third_party/fan_torch.py) with
torch's F.interpolate, and a closed form for the heatmap peaks.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import jax
import jax.numpy as jnp

from l2m_jax import face_priors
from l2m_jax.datasets import synthetic_faces as sf
from l2m_jax.models import fan
from l2m_jax.models import landmarks as lm
from l2m_jax.models import stargan_v2
from third_party import fan_torch

SIZE = 128  # render size for the pixel checks


def _faces(n, split='val', seed=0):
  out = []
  for i in range(n):
    ident, attrs = sf.sample_face(seed, split, i)
    out.append((ident, attrs))
  return out


def _pixel(img, pt):
  """Colour of the pixel under a canvas-unit point."""
  x, y = np.clip(np.floor(np.asarray(pt) * img.shape[0]).astype(int), 0,
                 img.shape[0] - 1)
  return img[y, x].astype(np.float64)


def test_landmarks_lie_on_the_drawn_features():
  """Pupils, inner lips, brows and the jaw line, checked on rendered pixels."""
  for ident, attrs in _faces(12):
    img = sf.render_face(ident, attrs, SIZE)
    pts = sf.landmarks(ident, attrs)
    col = sf._colours(ident, attrs)  # pylint: disable=protected-access
    assert pts.shape == (98, 2)
    for k in (96, 97):  # pupil centres: the dark pupil
      assert np.abs(_pixel(img, pts[k]) - sf._PUPIL_RGB).max() < 40, k  # pylint: disable=protected-access
    for k in (89, 90, 91, 93, 94, 95):  # inner lip: on the lip stroke
      assert np.abs(_pixel(img, pts[k]) - sf._LIP_RGB).max() < 40, k  # pylint: disable=protected-access
    # Brows: the midpoint of an upper and the facing lower edge point
    # (glasses' rims can cover the brows).
    for up, low in ((35, 39), (44, 48)) if not attrs['eyeglasses'] else ():
      mid = (pts[up] + pts[low]) / 2
      assert np.abs(_pixel(img, mid) - col['brow']).max() < 40, (up, low)
    # Jaw (chin side): skin just inside the point, not skin just outside
    # (the neck below the chin is 0.9 x the skin colour).
    g_c = np.array([pts[:33, 0].mean(), pts[:, 1].mean()])
    for k in range(10, 23):
      d = pts[k] - g_c
      d = d / np.linalg.norm(d)
      inside = _pixel(img, pts[k] - 0.03 * d)
      outside = _pixel(img, pts[k] + 0.03 * d)
      assert np.abs(inside - col['skin']).max() < 12, k
      assert np.abs(outside - col['skin']).max() > 6, k  # neck: 0.9 skin


def test_mouth_landmarks_follow_smiling():
  ident, attrs = _faces(1)[0]
  flat = sf.landmarks(ident, {**attrs, 'smiling': 0})
  smile = sf.landmarks(ident, {**attrs, 'smiling': 1})
  moved = np.abs(flat - smile).max(axis=1) > 1e-9
  assert set(np.nonzero(moved)[0]) == set(range(76, 96))
  # A smile raises the corners relative to the lower lip's middle.
  assert (smile[85, 1] - smile[76, 1]) > (flat[85, 1] - flat[76, 1]) + 0.02
  glasses = sf.landmarks(ident, {**attrs, 'eyeglasses': 1 - attrs['eyeglasses'],
                                 'grey_hair': 1 - attrs['grey_hair']})
  np.testing.assert_array_equal(glasses, sf.landmarks(ident, attrs))


def test_flip_points_match_the_mirrored_image():
  for ident, attrs in _faces(6):
    img = sf.render_face(ident, attrs, SIZE)[:, ::-1]
    pts = lm.flip_points(sf.landmarks(ident, attrs))
    # The mirrored pupils are still pupils, and the permuted order keeps
    # "image-left" first: 96 left of 97, 60 (outer) left of 64 (inner).
    for k in (96, 97):
      assert np.abs(_pixel(img, pts[k]) - sf._PUPIL_RGB).max() < 40  # pylint: disable=protected-access
    assert pts[96, 0] < pts[97, 0] and pts[60, 0] < pts[64, 0] < pts[68, 0]
    assert pts[0, 0] < pts[16, 0] < pts[32, 0]
  perm = lm.FLIP_PERMUTATION
  np.testing.assert_array_equal(perm[perm], np.arange(98))


def test_heatmap_targets_peak_at_the_landmarks():
  pts = sf.landmark_arrays(np.random.default_rng(0).uniform(0, 1, (3, 18)),
                           np.array([0, 1, 0]))
  want = lm.heatmap_coordinates(pts)
  # Closed form: h = (256 u - 0.5) * 63 / 255.
  np.testing.assert_allclose(want, (pts * 256 - 0.5) * 63 / 255, rtol=1e-6)
  for heat in (lm.heatmap_targets(pts), np.asarray(lm.render_heatmaps(pts))):
    assert heat.shape == (3, 64, 64, 98)
    np.testing.assert_array_equal(lm.heatmap_peaks(heat), np.round(want))
  np.testing.assert_allclose(np.asarray(lm.render_heatmaps(pts)),
                             lm.heatmap_targets(pts), atol=1e-5)


def _peaked_heatmaps(n=3, seed=0):
  """Gaussian blobs at real landmarks, random gains and noise: non-trivial."""
  rng = np.random.default_rng(seed)
  data = sf.generate_arrays(n, 32, seed, 'val')
  pts = sf.landmark_arrays(data['identity'], data['smiling'])
  heat = (lm.heatmap_targets(pts) * rng.uniform(0.3, 1.2, (n, 1, 1, 98)) +
          rng.normal(0, 0.04, (n, 64, 64, 98)))
  return heat.astype(np.float32)


@pytest.mark.parametrize('size', [32, 64])
def test_decimated_masks_equal_the_torch_postprocessing(size):
  """masks_at == torch get_heatmap post-processing, resized as G resizes."""
  heat = _peaked_heatmaps()
  t = torch.from_numpy(np.transpose(heat, (0, 3, 1, 2)))
  up = F.interpolate(t, scale_factor=4, mode='bilinear', align_corners=True)
  want = [F.interpolate(m, size=(size, size), mode='bilinear',
                        align_corners=False)
          for m in fan_torch.preprocess(up)]
  want = [np.transpose(w.numpy(), (0, 2, 3, 1)) for w in want]
  got = jax.jit(lm.masks_at, static_argnums=1)(heat, size)
  for name, g, w in zip(('M_1', 'M_2'), got, want):
    assert g.shape == (3, 2 * size, 2 * size, 1)
    g = np.asarray(stargan_v2.resize_bilinear_half_pixel(g, size, size))
    frac = float(np.mean(w > 0))
    assert 0.05 < frac < 0.95, f'{name} trivial ({frac:.0%} non-zero)'
    np.testing.assert_allclose(g, w, atol=1e-5, err_msg=name)


def test_generator_masks_give_the_generator_the_same_output():
  """A 32-px w_hpf generator: decimated masks == full fan.get_masks masks."""
  heat = jnp.asarray(_peaked_heatmaps(1, seed=1))
  full = jax.jit(lambda h: fan.heatmaps_to_masks(
      fan.resize_bilinear(h, 256, True)))(heat)
  dec = jax.jit(lm.generator_masks, static_argnums=1)(heat, 32)
  gen = stargan_v2.Generator(img_size=32, style_dim=8, max_conv_dim=16,
                             w_hpf=1, base_dim=8)
  x = jax.random.uniform(jax.random.key(0), (1, 32, 32, 3), minval=-1)
  s = jax.random.normal(jax.random.key(1), (1, 8))
  v = jax.jit(gen.init)(jax.random.key(2), x, s, dec)
  apply = jax.jit(gen.apply)
  out_full = apply(v, x, s, full)
  out_dec = apply(v, x, s, dec)
  out_none = apply(v, x, s, tuple(jnp.zeros_like(m) for m in full))
  np.testing.assert_allclose(out_dec, out_full, atol=1e-5)
  assert float(jnp.abs(out_full - out_none).max()) > 1e-2  # masks matter


def test_landmark_net_learns_the_renderer_landmarks(tmp_path):
  """A short training finds the landmarks of unseen faces (heatmap peaks)."""
  train = sf.generate_arrays(256, 32, 0, 'train')
  val = sf.generate_arrays(32, 32, 0, 'val')
  pts = sf.landmark_arrays(train['identity'], train['smiling'])
  val_pts = sf.landmark_arrays(val['identity'], val['smiling'])
  variables, meta = face_priors.train_landmark_net(
      train['image'], pts, steps=300, width=8, seed=0)
  err = face_priors.landmark_errors(variables, val['image'], val_pts)
  # Predicting the mean face is the no-learning baseline.
  mean_err = np.linalg.norm(
      lm.heatmap_coordinates(lm.mean_face())[None] -
      lm.heatmap_coordinates(val_pts), axis=-1)
  print(f'peak error {err.mean():.2f} px (mean face {mean_err.mean():.2f})')
  assert err.mean() < 1.5 and err.mean() < 0.5 * mean_err.mean()
  # Masks from the trained net: on the pupils, off the background corner.
  m1, _ = jax.jit(lm.get_masks)(variables, val['image'] / 127.5 - 1.0)
  m1 = np.asarray(stargan_v2.resize_bilinear_half_pixel(m1, 32, 32))[..., 0]
  pupils = np.floor(val_pts[:, 96] * 32).astype(int)
  assert np.mean(m1[np.arange(32), pupils[:, 1], pupils[:, 0]] > 0.3) > 0.9
  assert np.all(m1[:, 0, 0] == 0)
  # Save / load round trip, with the format checked.
  face_priors.save(tmp_path / 'lm', variables, meta)
  loaded, meta2 = face_priors.load(tmp_path / 'lm', lm.FORMAT)
  assert meta2['config'] == {'width': 8, 'input_size': 32}
  jax.tree.map(np.testing.assert_array_equal, loaded,
               jax.device_get(variables))
  with pytest.raises(ValueError, match='format'):
    face_priors.load(tmp_path / 'lm', 'preservation_net')
  assert lm.model_from_variables(loaded) == lm.LandmarkNet(width=8)
