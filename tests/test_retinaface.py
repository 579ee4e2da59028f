"""Tests of l2m_jax.models.retinaface against the in-house torch reference.

Reference: third_party/retinaface_torch.py (biubug6/Pytorch_Retinaface
mobile0.25, upstream key names). Random-weight parity runs everywhere; the
real released weights (FIXTURES/face_detection of tests/conftest.py) are
used when present, on the real photos of FIXTURES/faces and on composites.
"""

import chex
import jax
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from l2m_jax import face_detection
from l2m_jax.convert import retinaface as convert_rf
from l2m_jax.models import retinaface
from tests import face_composites as fc
from tests.conftest import FIXTURES
from third_party import retinaface_torch

WEIGHTS = FIXTURES / 'face_detection' / 'mobilenet0.25_Final.pth'


def _random_torch_net(seed):
  torch.manual_seed(seed)
  net = retinaface_torch.RetinaFace()
  with torch.no_grad():
    for m in net.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.running_mean.normal_(0, 0.1)
        m.running_var.uniform_(0.5, 1.5)
        m.weight.uniform_(0.5, 1.5)
        m.bias.normal_(0, 0.1)
  return net.eval()


@pytest.fixture(scope='module')
def random_pair():
  net = _random_torch_net(0)
  variables, _ = convert_rf.convert_state_dict(net.state_dict(), 'random')
  return net, variables


@pytest.mark.parametrize('in_size,out_size', [(3, 5), (4, 8), (5, 9),
                                              (7, 13), (6, 6), (4, 7)])
def test_nearest_indices_match_torch(in_size, out_size):
  x = torch.arange(in_size, dtype=torch.float32)[None, None, :, None]
  y = F.interpolate(x, size=[out_size, 1], mode='nearest')[0, 0, :, 0]
  np.testing.assert_array_equal(
      retinaface.nearest_indices(in_size, out_size), y.numpy().astype(int))


@pytest.mark.parametrize('h,w', [(64, 64), (75, 101), (33, 40)])
def test_prior_boxes_match_reference(h, w):
  ref = retinaface_torch.prior_boxes(h, w).numpy()
  ours = retinaface.prior_boxes(h, w)
  assert ours.shape == (retinaface.num_priors(h, w), 4)
  np.testing.assert_array_equal(ours, ref)


def test_decode_matches_reference():
  rng = np.random.default_rng(0)
  priors = retinaface.prior_boxes(75, 101)
  loc = rng.normal(0, 1, (len(priors), 4)).astype(np.float32)
  pre = rng.normal(0, 1, (len(priors), 10)).astype(np.float32)
  tp = torch.from_numpy(priors.copy())
  ref_b = retinaface_torch.decode_boxes(torch.from_numpy(loc), tp, [0.1, 0.2])
  ref_l = retinaface_torch.decode_landmarks(torch.from_numpy(pre), tp,
                                            [0.1, 0.2])
  # Relative units (values ~0.1-1): float32 rounding of exp and products.
  np.testing.assert_allclose(
      retinaface.decode_boxes(loc, priors), ref_b.numpy(), rtol=0, atol=1e-6)
  np.testing.assert_allclose(
      np.asarray(retinaface.decode_landmarks(pre, priors)).reshape(-1, 10),
      ref_l.numpy(), rtol=0, atol=1e-6)


def test_random_weights_parity_odd_size(random_pair):
  """Network + decoding on an odd size (ceil strides, non-doubling nearest
  upsampling: levels 10x13, 5x7, 3x4), batched over a 2-device mesh.

  Batch 2 over 3 images: a full chunk and a padded one.
  """
  net, variables = random_pair
  x = jax.ShapeDtypeStruct((2, 75, 101, 3), np.float32)
  p = retinaface.num_priors(75, 101)
  assert p == 2 * (10 * 13 + 5 * 7 + 3 * 4)
  shapes = jax.eval_shape(retinaface.RetinaFace().apply, variables, x)
  assert [s.shape for s in shapes] == [(2, p, 4), (2, p, 2), (2, p, 10)]
  rng = np.random.default_rng(1)
  imgs = rng.integers(0, 256, (3, 75, 101, 3), dtype=np.uint8)
  boxes, scores, lms = face_detection.detect_raw(variables, imgs,
                                                 batch_size=2)
  assert boxes.shape == (3, p, 4) and lms.shape == (3, p, 5, 2)
  chex.assert_tree_all_finite((boxes, scores, lms))
  for k in range(3):
    rb, rs, rl = retinaface_torch.raw_outputs(net, imgs[k, ..., ::-1])
    np.testing.assert_allclose(boxes[k], rb, rtol=0, atol=1e-3)
    np.testing.assert_allclose(scores[k], rs, rtol=0, atol=1e-5)
    np.testing.assert_allclose(lms[k].reshape(-1, 10), rl, rtol=0, atol=1e-3)
  # The softmax pair sums to one; scores are its face column.
  with torch.no_grad():
    x = imgs[:1, ..., ::-1].astype(np.float32) - np.float32(
        retinaface_torch.MEAN_BGR)
    _, conf, _ = net(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()))
  np.testing.assert_allclose(conf[0, :, 1].numpy(), scores[0], atol=1e-5)


# ---------------------------------------------------------------------------
# The released weights on real photos and composites.
# ---------------------------------------------------------------------------

BOX_ATOL = 0.01  # px
SCORE_ATOL = 1e-5


@pytest.fixture(scope='module')
def real_nets():
  if not WEIGHTS.is_file():
    pytest.skip(f'RetinaFace weights not present at {WEIGHTS}')
  return _load_real_nets()


def _load_real_nets(dtype=torch.float32):
  variables, _ = convert_rf.convert_checkpoint(WEIGHTS)
  sd = torch.load(WEIGHTS, map_location='cpu', weights_only=True)
  net = retinaface_torch.RetinaFace().to(dtype).eval()
  net.load_state_dict(sd)
  return variables, net


def _real_photos(faces_dir):
  from l2m_jax import image_io  # pylint: disable=g-import-not-at-top
  return {n: np.asarray(image_io.open_rgb(faces_dir / f'{n}.png'))
          for n in fc.FACE_NAMES}


def _check_parity(variables, net, image):
  """Raw candidates (score > 0.02) and final detections vs the reference."""
  boxes, scores, lms = face_detection.detect_raw(variables, image[None])
  boxes, scores, lms = boxes[0], scores[0], lms[0].reshape(-1, 10)
  rb, rs, rl = retinaface_torch.raw_outputs(net, image[..., ::-1])
  cand = rs > face_detection.CONFIDENCE_THRESHOLD
  err = {'box': float(np.abs(boxes - rb)[cand].max()),
         'landmark': float(np.abs(lms - rl)[cand].max()),
         'score': float(np.abs(scores - rs).max())}
  assert err['box'] <= BOX_ATOL and err['landmark'] <= BOX_ATOL, err
  assert err['score'] <= SCORE_ATOL, err
  faces = face_detection.postprocess(boxes, scores, lms.reshape(-1, 5, 2),
                                     score_threshold=0.0)
  dets, ref_lms = retinaface_torch.postprocess(rb, rs, rl)
  assert len(faces) == len(dets)
  np.testing.assert_allclose(np.stack([f.box for f in faces]), dets[:, :4],
                             rtol=0, atol=BOX_ATOL)
  np.testing.assert_allclose([f.score for f in faces], dets[:, 4], rtol=0,
                             atol=SCORE_ATOL)
  np.testing.assert_allclose(
      np.stack([f.landmarks.reshape(10) for f in faces]), ref_lms, rtol=0,
      atol=BOX_ATOL)
  return err, faces


def test_real_weights_parity_on_photos(real_nets, faces_dir):
  variables, net = real_nets
  for name, photo in _real_photos(faces_dir).items():
    _, faces = _check_parity(variables, net, photo)
    confident = [f for f in faces if f.score >= 0.6]
    assert len(confident) == 1, (name, [f.score for f in faces])  # one face


def _composites(photos):
  canvas = fc.background(1024, 1024, 7)
  a1 = fc.similarity(0.4, 20, (511.5, 511.5), (300, 360))
  a2 = fc.similarity(0.3 * 1024 / 729, -25, (364, 364), (720, 620))
  two = fc.paste(fc.paste(canvas, photos['ffhq_00809'], a1), photos['ffhq_11'],
                 a2)
  one = fc.paste(canvas, photos['ffhq_04948'],
                 fc.similarity(0.7, -12, (511.5, 511.5), (540, 500)))
  return {'two-face composite': (two, 2), 'one-face composite': (one, 1)}


def test_real_weights_parity_on_composites(real_nets, faces_dir):
  variables, net = real_nets
  for image, expected in _composites(_real_photos(faces_dir)).values():
    _, faces = _check_parity(variables, net, image)
    assert sum(f.score >= 0.6 for f in faces) == expected


if __name__ == '__main__':
  # Parity figures on the released weights (the closing-note table):
  #   python3 -m tests.test_retinaface
  # Max abs differences over the candidates (reference score > 0.02): JAX
  # float32 vs the torch reference in float32 and in float64, and the torch
  # float32 reference's own error against float64.
  variables_, net32_ = _load_real_nets()
  _, net64_ = _load_real_nets(torch.float64)
  photos_ = _real_photos(FIXTURES / 'faces')
  images_ = dict(photos_)
  images_.update({k: v[0] for k, v in _composites(photos_).items()})
  print('| image | candidates | faces | quantity | JAX - torch32 | '
        'JAX - torch64 | torch32 - torch64 |')
  print('| --- | --- | --- | --- | --- | --- | --- |')
  for name_, image_ in images_.items():
    b_, s_, l_ = face_detection.detect_raw(variables_, image_[None])
    b_, s_, l_ = b_[0], s_[0], l_[0].reshape(-1, 10)
    r32_ = retinaface_torch.raw_outputs(net32_, image_[..., ::-1])
    r64_ = retinaface_torch.raw_outputs(net64_, image_[..., ::-1],
                                        dtype=torch.float64)
    cand_ = r32_[1] > face_detection.CONFIDENCE_THRESHOLD
    n_faces_ = sum(f.score >= 0.6 for f in face_detection.postprocess(
        b_, s_, l_.reshape(-1, 5, 2)))
    for q_, (ours_, t32_, t64_) in {
        'box (px)': (b_, r32_[0], r64_[0]),
        'landmarks (px)': (l_, r32_[2], r64_[2]),
        'score': (s_, r32_[1], r64_[1])}.items():
      e_ = [float(np.abs(x - y)[cand_].max()) for x, y in
            ((ours_, t32_), (ours_, t64_), (t32_, t64_))]
      print(f'| {name_} | {int(cand_.sum())} | {n_faces_} | {q_} | '
            + ' | '.join(f'{v:.2e}' for v in e_) + ' |', flush=True)
