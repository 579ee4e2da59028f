"""Tests of l2m_jax.alignment on analytic images with closed-form answers.

The photo is a smooth analytic colour field f(x, y), so the value a crop pixel
must have is f at the photo position its centre maps to (bilinear and Lanczos
resampling of a field with periods >= 150 px change it by well under 2
levels). Landmarks are a canonical upright face moved by a known similarity;
for that face the FFHQ quad is an axis-aligned square in closed form, and the
quad of the moved face must be the moved square.
"""

import numpy as np
import pytest

from l2m_jax import alignment
from tests import face_composites as fc

# Canonical upright face: eyes (+-a, 0), mouth corners (+-b, d), nose (0, n).
A_, B_, D_, N_ = 60.0, 45.0, 110.0, 55.0
CANON = np.array([[-A_, 0], [A_, 0], [0, N_], [-B_, D_], [B_, D_]])
# Closed form: eye_to_eye = (2a, 0), eye_to_mouth = (0, d), so x points along
# +x with length max(4a, 1.8d), y along +y, centre (0, 0.1 d).
HALF = max(4 * A_, 1.8 * D_)
SQUARE = np.array([[-HALF, 0.1 * D_ - HALF], [-HALF, 0.1 * D_ + HALF],
                   [HALF, 0.1 * D_ + HALF], [HALF, 0.1 * D_ - HALF]])


def field(x, y):
  """Smooth RGB field in [0, 255] (periods 150-230 px)."""
  x = np.asarray(x, np.float64)
  y = np.asarray(y, np.float64)
  r = 127.5 + 90 * np.sin(2 * np.pi * x / 173 + 0.3) * np.cos(
      2 * np.pi * y / 151)
  g = 127.5 + 90 * np.cos(2 * np.pi * (x + y) / 229)
  b = 127.5 + 90 * np.sin(2 * np.pi * (x - 0.5 * y) / 199 + 1.0)
  return np.stack([r, g, b], -1)


def field_image(h, w):
  ys, xs = np.mgrid[0:h, 0:w]
  return np.clip(np.rint(field(xs, ys)), 0, 255).astype(np.uint8)


def face(scale, angle, center):
  a = fc.similarity(scale, angle, (0, 0), center)
  return fc.apply(a, CANON), a


def crop_reference(al, size):
  """f at the photo positions of every crop pixel centre."""
  ys, xs = np.mgrid[0:size, 0:size]
  p = al.crop_to_photo(np.stack([xs, ys], -1).astype(np.float64))
  return field(p[..., 0], p[..., 1]), p


@pytest.mark.parametrize('scale,angle', [(1.0, 0.0), (0.7, 23.0),
                                         (1.6, -35.0)])
def test_face_quad_closed_form(scale, angle):
  lm, a = face(scale, angle, (300.0, 250.0))
  quad, qsize = alignment.face_quad(lm)
  np.testing.assert_allclose(quad, fc.apply(a, SQUARE), atol=1e-9)
  assert qsize == pytest.approx(2 * HALF * scale)
  quad_hq, _ = alignment.face_quad(lm, offset=0.5)
  np.testing.assert_allclose(quad_hq, fc.apply(a, SQUARE) + 0.5, atol=1e-9)


@pytest.mark.parametrize(
    'style,scale,angle,out,tsize,case',
    [('ffhq', 0.4, 20.0, 128, 512, 'plain'),
     ('ffhq', 0.75, -30.0, 48, 192, 'shrink'),   # qsize 360: shrink 3
     ('celebahq', 0.35, 12.0, 256, 1024, 'superres'),  # qsize 168 < 256
     ('celebahq', 0.75, -30.0, 48, 192, 'shrink')])
def test_crop_samples_the_photo_where_alignment_says(style, scale, angle, out,
                                                     tsize, case):
  photo = field_image(560, 640)
  lm, a = face(scale, angle, (330.0, 270.0))
  fn = alignment.ALIGN_FUNCTIONS[style]
  crop, al = fn(photo, lm, output_size=out, transform_size=tsize)
  assert crop.shape == (out, out, 3) and crop.dtype == np.uint8
  assert al.size == out and al.photo_shape == (560, 640)
  # The recorded quad is the closed-form one up to the resampling steps'
  # half-pixel bookkeeping (the originals scale the quad by 1 / shrink,
  # which moves the crop by (shrink - 1) / 2 photo px; here shrink = 3),
  # and the crop samples the recorded quad.
  expected = fc.apply(a, SQUARE) + (0.5 if style == 'celebahq' else 0.0)
  tol = {'plain': 1e-6, 'superres': 0.5, 'shrink': 2.0}[case]
  np.testing.assert_allclose(al.quad, expected, atol=tol)
  ref, p = crop_reference(al, out)
  assert p.min() > 0 and p[..., 0].max() < 639 and p[..., 1].max() < 559
  err = np.abs(crop.astype(np.float64) - ref)
  # Upsampling (superres) and shrinking add Lanczos ringing / low-pass.
  assert err.max() <= {'plain': 2.0, 'superres': 3.0, 'shrink': 4.0}[case], (
      err.max())


def test_points_map_back_and_forth():
  lm, _ = face(0.5, 17.0, (200.0, 220.0))
  _, al = alignment.align_ffhq(field_image(400, 420), lm, output_size=64,
                               transform_size=256)
  pts = np.array([[0.0, 0.0], [63.0, 0.0], [31.5, 40.25]])
  np.testing.assert_allclose(al.photo_to_crop(al.crop_to_photo(pts)), pts,
                             atol=1e-9)
  # A 16 px version of the same crop maps to the same photo points.
  np.testing.assert_allclose(al.crop_to_photo((pts + 0.5) / 4 - 0.5, 16),
                             al.crop_to_photo(pts), atol=1e-9)
  # Landmarks land at the same crop position for any similarity (no shrink
  # step: qsize 624 < 4 * 256).
  lm2, _ = face(1.3, -28.0, (260.0, 240.0))
  _, al2 = alignment.align_ffhq(field_image(520, 520), lm2, output_size=256,
                                transform_size=1024)
  np.testing.assert_allclose(al.photo_to_crop(lm, 256),
                             al2.photo_to_crop(lm2), atol=1e-6)


def test_padding_outside_the_photo():
  photo = field_image(300, 300)
  lm, _ = face(0.5, 10.0, (60.0, 150.0))  # quad leaves the photo on the left
  crop, al = alignment.align_ffhq(photo, lm, output_size=64,
                                  transform_size=256)
  ref, p = crop_reference(al, 64)
  inside = ((p[..., 0] > 40) & (p[..., 0] < 259) & (p[..., 1] > 40)
            & (p[..., 1] < 259))  # away from the blurred border band
  outside = p[..., 0] < -20
  assert inside.any() and outside.any()
  assert np.abs(crop.astype(np.float64) - ref)[inside].max() <= 2.0
  black, _ = alignment.align_ffhq(photo, lm, output_size=64,
                                  transform_size=256, enable_padding=False)
  assert (black[outside] == 0).all()  # PIL fills outside with black
  assert crop[outside].mean() > 20  # reflection padding, not black
  np.testing.assert_array_equal(black[inside], crop[inside])


def test_paste_back_round_trip_and_untouched_pixels():
  photo = field_image(400, 460)
  lm, _ = face(0.45, -22.0, (240.0, 200.0))
  crop, al = alignment.align_ffhq(photo, lm, output_size=256,
                                  transform_size=1024)
  poly = alignment.quad_polygon_mask(al, margin=1.0)
  for edited in (crop, crop[::4, ::4]):  # full size and a 64 px "edit"
    out = alignment.paste_back(photo, edited, al)
    assert out.dtype == np.uint8 and out.shape == photo.shape
    np.testing.assert_array_equal(out[~poly], photo[~poly])
    core = alignment.quad_polygon_mask(al, margin=-0.15 * 256 * 0.45)
    tol = 3 if edited.shape[0] == 256 else 8
    assert np.abs(out.astype(int) - photo)[core].max() <= tol
  # A constant edit: exactly that colour where the mask is 1, photo outside.
  red = np.zeros((256, 256, 3), np.uint8)
  red[..., 0] = 255
  out = alignment.paste_back(photo, red, al, feather=0.1)
  ys, xs = np.mgrid[0:400, 0:460]
  uv = al.photo_to_crop(np.stack([xs, ys], -1).astype(np.float64))
  full = ((uv >= 0.1 * 256 + 1) & (uv <= 0.9 * 256 - 2)).all(-1)
  assert full.sum() > 1000
  assert (out[full] == [255, 0, 0]).all()
  np.testing.assert_array_equal(out[~poly], photo[~poly])
  changed = (out != photo).any(-1)
  assert changed.sum() > full.sum()  # the feathered rim blends too


def test_feathered_mask_closed_form():
  m = alignment.feathered_mask(20, 0.25)  # ramp over 5 px
  np.testing.assert_allclose(m[10, :5], [0.1, 0.3, 0.5, 0.7, 0.9], atol=1e-6)
  assert m[10, 5:15].min() == 1.0 and m[0, 0] == pytest.approx(0.1)
  np.testing.assert_array_equal(m, m.T)
  np.testing.assert_array_equal(m, m[::-1, ::-1])


def test_bad_inputs_are_named():
  photo = field_image(100, 100)
  lm, _ = face(0.2, 0.0, (50.0, 50.0))
  with pytest.raises(ValueError, match='landmarks must be 5'):
    alignment.align_ffhq(photo, lm[:4])
  with pytest.raises(ValueError, match='RGB uint8'):
    alignment.align_ffhq(photo.astype(np.float32), lm)
  with pytest.raises(ValueError, match='degenerate'):
    alignment.align_ffhq(photo, np.zeros((5, 2)))
  with pytest.raises(ValueError, match='output_size'):
    alignment.align_ffhq(photo, lm, output_size=64, transform_size=32)
  crop, al = alignment.align_ffhq(photo, lm, output_size=32,
                                  transform_size=64)
  with pytest.raises(ValueError, match='alignment was made'):
    alignment.paste_back(field_image(90, 100), crop, al)
  with pytest.raises(ValueError, match='square RGB'):
    alignment.paste_back(photo, crop[:, :20], al)
  with pytest.raises(ValueError, match='feather'):
    alignment.paste_back(photo, crop, al, feather=0.7)
