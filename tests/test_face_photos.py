"""Detect -> align -> paste back on real faces with known answers.

Each real fixture face (FIXTURES/faces of tests/conftest.py, FFHQ-aligned) is
pasted into a larger background with a known similarity A (scale 0.3-1.5,
rotation up to +-30 degrees, off-centre; tests/face_composites.py). The
composite goes through the full pipeline (RetinaFace with the released
weights, FFHQ alignment) and is compared with the original:

* landmarks: the 5 points found in the composite against A applied to the
  points found in the original photo, as the mean distance over the 5
  points divided by the inter-ocular distance. RetinaFace-mobile0.25 itself
  is not equivariant (its anchors sit on an 8/16/32 px grid and it was
  trained without rotations): moving a face by a sub-stride offset moves its
  landmarks by up to ~5 % of the inter-ocular distance, rotations by more,
  so the bound is 0.15 (0.046-0.136 measured).
* aligned crop: the crop of the composite against the crop of the original
  photo aligned with the same face points mapped back through A (PSNR over
  the crop pixels that come from the pasted photo). A correct pipeline gives
  >= 28 dB (30.7-55.9 dB measured).

The bounds are checked to reject wrong pipelines: one that maps the photo
by a wrong similarity W (it reports the detected points moved by W A^-1 and
aligns there) must fail both, for W with the rotation sign flipped, a 30 %
(landmarks) or 10 % (crop) scale error, or a 20 (landmarks) or 5 (crop)
degree rotation error.

A translation by a multiple of 32 px keeps every anchor on the grid, so
there the detector must reproduce the shifted landmarks exactly.
"""

import numpy as np
import pytest

from l2m_jax import alignment
from l2m_jax import face_detection
from l2m_jax import face_photos
from l2m_jax import image_io
from l2m_jax.convert import retinaface as convert_rf
from tests import face_composites as fc
from tests.conftest import FIXTURES

WEIGHTS = FIXTURES / 'face_detection' / 'mobilenet0.25_Final.pth'
LANDMARK_BOUND = 0.15  # mean point error / inter-ocular distance
CROP_PSNR_BOUND = 28.0  # dB, composite crop vs original crop
CROP = dict(output_size=256, transform_size=1024)  # FFHQ's 4x supersampling

# (face, scale, degrees, centre in the canvas, canvas side); canvases of 1600
# px are detected at max_size=1024.
CASES = [
    ('ffhq_00808', 0.3, 25.0, (700, 300), 1024),
    ('ffhq_00809', 0.6, -30.0, (400, 620), 1024),
    ('ffhq_04948', 1.0, 15.0, (820, 760), 1600),
    ('ffhq_11', 1.5, -20.0, (800, 820), 1600),
]
SLOW_CASES = [(name, s, a, c, n) for name in fc.FACE_NAMES
              for _, s, a, c, n in CASES
              if (name, s) not in {(x[0], x[1]) for x in CASES}]


@pytest.fixture(scope='module')
def real():
  return _load_real()


def _load_real():
  faces_dir = FIXTURES / 'faces'
  if not all((faces_dir / f'{n}.png').is_file() for n in fc.FACE_NAMES):
    pytest.skip(f'real-face fixtures not present at {faces_dir}')
  if not WEIGHTS.is_file():
    pytest.skip(f'RetinaFace weights not present at {WEIGHTS}')
  variables, _ = convert_rf.convert_checkpoint(WEIGHTS)
  photos = {n: np.asarray(image_io.open_rgb(faces_dir / f'{n}.png'))
            for n in fc.FACE_NAMES}
  # One photo per call: every test here then reuses the single-image
  # compilations (1024 and 729 px).
  landmarks = {}
  for name, photo in photos.items():
    faces = face_detection.detect_faces(variables, [photo])[0]
    assert len(faces) == 1, (name, len(faces))
    landmarks[name] = faces[0].landmarks.astype(np.float64)
  return variables, photos, landmarks


def _composite(photo, scale, degrees, center, side, seed):
  n = photo.shape[0]
  a = fc.similarity(scale * 1024 / n, degrees, ((n - 1) / 2, (n - 1) / 2),
                    center)
  return fc.paste(fc.background(side, side, seed), photo, a), a


def _crop_psnr(composite, points, photo, a, reference):
  """PSNR of the composite's crop at `points` against `reference`.

  `reference` is the original photo's crop (see `_reference`); only crop
  pixels that come from the pasted photo (inside the canvas and inside the
  photo) count.
  """
  crop, al = alignment.align_ffhq(composite, points, **CROP)
  s = CROP['output_size']
  ys, xs = np.mgrid[0:s, 0:s]
  cp = al.crop_to_photo(np.stack([xs, ys], -1).astype(np.float64))
  pp = fc.apply(fc.invert(a), cp.reshape(-1, 2)).reshape(s, s, 2)
  h, w = composite.shape[:2]
  n = photo.shape[0]
  valid = ((cp >= 0).all(-1) & (cp[..., 0] <= w - 1) & (cp[..., 1] <= h - 1)
           & (pp >= 0).all(-1) & (pp <= n - 1).all(-1))
  assert valid.mean() > 0.5
  return fc.psnr(crop, reference, valid)


def _reference(photo, a, points):
  """The original photo aligned at `points` (composite coords) mapped by
  A^-1: what the composite's crop at `points` must look like."""
  return alignment.align_ffhq(photo, fc.apply(fc.invert(a), points),
                              **CROP)[0]


def _recover(real, name, scale, degrees, center, side):
  """(landmark error, crop PSNR) of the pipeline and of wrong pipelines.

  A wrong pipeline is simulated as one that maps the photo by a wrong
  similarity W instead of A: it reports the detected points moved by
  W A^-1, and aligns there.
  """
  variables, photos, landmarks = real
  photo = photos[name]
  comp, a = _composite(photo, scale, degrees, center, side,
                       seed=fc.FACE_NAMES.index(name))
  faces = face_detection.detect_faces(variables, [comp], max_size=1024)[0]
  assert len(faces) == 1, [f.score for f in faces]
  found = faces[0].landmarks.astype(np.float64)
  truth = fc.apply(a, landmarks[name])
  err = fc.mean_landmark_error(found, truth)
  reference = _reference(photo, a, found)
  psnr = _crop_psnr(comp, found, photo, a, reference)

  n = photo.shape[0]
  c = ((n - 1) / 2, (n - 1) / 2)
  s = scale * 1024 / n

  def wrong(w):
    return fc.apply(fc.compose(w, fc.invert(a)), found)

  wrong_err = [fc.mean_landmark_error(wrong(w), truth) for w in (
      fc.similarity(s, -degrees, c, center),
      fc.similarity(s * 1.3, degrees, c, center),
      fc.similarity(s, degrees + 20, c, center))]
  wrong_psnr = [_crop_psnr(comp, wrong(w), photo, a, reference) for w in (
      fc.similarity(s, -degrees, c, center),
      fc.similarity(s * 1.1, degrees, c, center),
      fc.similarity(s, degrees + 5, c, center))]
  return err, psnr, wrong_err, wrong_psnr


def _check_recovery(real, case):
  err, psnr, wrong_err, wrong_psnr = _recover(real, *case)
  assert err <= LANDMARK_BOUND, (case, err)
  assert psnr >= CROP_PSNR_BOUND, (case, psnr)
  assert min(wrong_err) > LANDMARK_BOUND, (case, wrong_err)
  assert max(wrong_psnr) < CROP_PSNR_BOUND - 5, (case, wrong_psnr)


@pytest.mark.parametrize('case', CASES, ids=lambda c: f'{c[0]}-s{c[1]}')
def test_recovery_on_composites(real, case):
  _check_recovery(real, case)


@pytest.mark.slow
@pytest.mark.parametrize('case', SLOW_CASES, ids=lambda c: f'{c[0]}-s{c[1]}')
def test_recovery_on_composites_all_cases(real, case):
  _check_recovery(real, case)


def test_grid_aligned_shift_is_exact(real):
  variables, photos, landmarks = real
  photo = photos['ffhq_00808']
  a = np.array([[1.0, 0, -32], [0, 1.0, 64]])  # multiples of 32 px
  comp = fc.paste(fc.background(1024, 1024, 3), photo, a)
  found = face_detection.detect_faces(variables, [comp])[0]
  assert len(found) == 1
  np.testing.assert_allclose(found[0].landmarks,
                             fc.apply(a, landmarks['ffhq_00808']), atol=1e-3)


def test_two_faces_both_found_and_pasted_back(real):
  variables, photos, landmarks = real
  canvas = fc.background(1024, 1024, 11)
  a1 = fc.similarity(0.4, 20, (511.5, 511.5), (300, 360))
  a2 = fc.similarity(0.3 * 1024 / 729, -25, (364, 364), (720, 620))
  comp = fc.paste(fc.paste(canvas, photos['ffhq_00809'], a1),
                  photos['ffhq_11'], a2)
  faces = face_photos.extract_faces(variables, [comp], style='ffhq',
                                    **CROP)[0]
  assert len(faces) == 2
  truths = [fc.apply(a1, landmarks['ffhq_00809']),
            fc.apply(a2, landmarks['ffhq_11'])]
  for truth in truths:  # each true face matched by one detection
    errs = [fc.mean_landmark_error(f.face.landmarks, truth) for f in faces]
    assert min(errs) <= LANDMARK_BOUND and max(errs) > 1.0, errs
  one = face_photos.extract_faces(variables, [comp], max_faces=1, **CROP)[0]
  assert len(one) == 1 and one[0].face.score == max(
      f.face.score for f in faces)

  # Paste edited crops back: a constant colour per face; everything outside
  # both quads is bit-identical, the face centres take the new colour.
  edits = [np.full((64, 64, 3), c, np.uint8) for c in ((255, 0, 0),
                                                       (0, 0, 255))]
  out = face_photos.paste_faces(comp, edits, faces)
  touched = np.zeros(comp.shape[:2], bool)
  for f, e in zip(faces, edits):
    touched |= alignment.quad_polygon_mask(f.alignment, margin=1.0)
    centre = np.rint(f.alignment.crop_to_photo(np.array([127.5, 127.5]))
                     ).astype(int)
    np.testing.assert_array_equal(out[centre[1], centre[0]], e[0, 0])
  np.testing.assert_array_equal(out[~touched], comp[~touched])
  assert (out[touched] != comp[touched]).any(-1).mean() > 0.5


def test_photo_without_face(real):
  variables, photos, _ = real
  ramp = np.linspace(0, 255, 1024)
  gradient = np.stack(np.broadcast_arrays(ramp[None, :], ramp[:, None],
                                          255 - ramp[None, :]), -1)
  gradient = np.rint(gradient).astype(np.uint8)  # [1024, 1024, 3]
  grey = np.full((729, 729, 3), 128, np.uint8)
  for image in (gradient, grey):  # one image per call: cached compilations
    assert face_detection.detect_faces(variables, [image]) == [[]]
    assert face_photos.extract_faces(variables, [image]) == [[]]


if __name__ == '__main__':
  # Prints the recovery figures of every case (the slow test's grid):
  #   python3 -m tests.test_face_photos
  from PIL import Image  # pylint: disable=g-import-not-at-top
  state = _load_real()
  print('| face | scale | degrees | landmark err / IOD | crop PSNR (dB) | '
        'wrong-W landmark err (flip, x1.3, +20 deg) | '
        'wrong-W crop PSNR (flip, x1.1, +5 deg) | crop PSNR vs the '
        'FFHQ-aligned original (dB) |')
  print('| --- | --- | --- | --- | --- | --- | --- | --- |')
  for case in CASES + SLOW_CASES:
    e, p, we, wp = _recover(state, *case)
    # The composite's crop against the original FFHQ-aligned photo itself
    # (resized to the crop size), over the pixels that come from the photo.
    _, photos_, _ = state
    photo_ = photos_[case[0]]
    comp_, a_ = _composite(photo_, *case[1:],
                           seed=fc.FACE_NAMES.index(case[0]))
    f_ = face_detection.detect_faces(state[0], [comp_], max_size=1024)[0]
    crop_, al_ = alignment.align_ffhq(comp_, f_[0].landmarks, **CROP)
    s_ = CROP['output_size']
    orig_ = np.asarray(Image.fromarray(photo_).resize((s_, s_),
                                                      Image.LANCZOS))
    ys_, xs_ = np.mgrid[0:s_, 0:s_]
    pp_ = fc.apply(fc.invert(a_), al_.crop_to_photo(
        np.stack([xs_, ys_], -1).astype(np.float64)))
    n_ = photo_.shape[0]
    ok_ = (pp_ >= 0).all(-1) & (pp_ <= n_ - 1).all(-1)
    print(f'| {case[0]} | {case[1]} | {case[2]:+.0f} | {e:.3f} | {p:.2f} | '
          + ', '.join(f'{x:.3f}' for x in we) + ' | '
          + ', '.join(f'{x:.2f}' for x in wp) + ' | '
          + f'{fc.psnr(crop_, orig_, ok_):.2f} |', flush=True)
