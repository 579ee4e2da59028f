"""Tests of l2m_jax.face_detection (host post-processing and batching).

References: the upstream-rule NMS and `detect.py` post-processing of
third_party/retinaface_torch.py, hand-computed IoUs, and PIL for the
downscaled-detection path. Random RetinaFace weights (from the torch
reference) keep these tests independent of the real weights.
"""

import numpy as np
import pytest
import torch
from PIL import Image

from l2m_jax import face_detection
from l2m_jax.convert import retinaface as convert_rf
from third_party import retinaface_torch


def test_nms_matches_reference():
  rng = np.random.default_rng(0)
  xy = rng.uniform(0, 80, (300, 2))
  wh = rng.uniform(5, 40, (300, 2))
  boxes = np.concatenate([xy, xy + wh], 1).astype(np.float32)
  scores = rng.permutation(300).astype(np.float32) / 300  # distinct
  for thresh in (0.3, 0.4, 0.7):
    ref = retinaface_torch.nms(np.hstack([boxes, scores[:, None]]), thresh)
    np.testing.assert_array_equal(face_detection.nms(boxes, scores, thresh),
                                  ref)


def test_postprocess_closed_form():
  # IoU with the +1 pixel rule: a = (0, 0, 9, 9) has area 100.
  boxes = np.array([[0, 0, 9, 9],      # 0.9: kept
                    [0, 2, 9, 11],     # 0.8: IoU 80 / 120 > 0.4, suppressed
                    [0, 0, 9, 3],      # 0.7: IoU 40 / 100 = 0.4, kept (<=)
                    [50, 50, 60, 60],  # 0.5: kept by NMS, below 0.6
                    [80, 80, 90, 90]],  # 0.01: below 0.02, dropped
                   np.float32)
  scores = np.array([0.9, 0.8, 0.7, 0.5, 0.01], np.float32)
  lms = np.arange(50, dtype=np.float32).reshape(5, 5, 2)
  faces = face_detection.postprocess(boxes, scores, lms)
  assert [f.score for f in faces] == pytest.approx([0.9, 0.7])
  np.testing.assert_array_equal(faces[1].landmarks, lms[2])
  everything = face_detection.postprocess(boxes, scores, lms,
                                          score_threshold=0.0)
  assert [f.score for f in everything] == pytest.approx([0.9, 0.7, 0.5])
  top1 = face_detection.postprocess(boxes, scores, lms, keep_top_k=1)
  assert len(top1) == 1
  assert face_detection.postprocess(boxes, scores, lms,
                                    confidence_threshold=0.95) == []
  j = faces[0].to_json()
  assert j['box'] == [0, 0, 9, 9] and len(j['landmarks']) == 5


def test_select_faces():
  f = face_detection.Face
  faces = [f(np.array([0, 0, 10, 10.]), 0.9, np.zeros((5, 2))),
           f(np.array([0, 0, 50, 50.]), 0.7, np.zeros((5, 2))),
           f(np.array([0, 0, 30, 30.]), 0.8, np.zeros((5, 2)))]
  assert [x.score for x in face_detection.select_faces(faces, 2)] == [0.9,
                                                                       0.8]
  assert [x.score for x in face_detection.select_faces(faces, 2, 'area')
          ] == [0.7, 0.8]
  assert len(face_detection.select_faces(faces, None)) == 3
  with pytest.raises(ValueError, match='score'):
    face_detection.select_faces(faces, 1, by='size')


@pytest.fixture(scope='module')
def random_detector():
  torch.manual_seed(3)
  net = retinaface_torch.RetinaFace().eval()
  with torch.no_grad():
    for m in net.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.running_mean.normal_(0, 0.1)
        m.running_var.uniform_(0.5, 1.5)
        m.weight.uniform_(0.5, 1.5)
        m.bias.normal_(0, 0.1)
  variables, _ = convert_rf.convert_state_dict(net.state_dict(), 'random')
  return net, variables


def _as_array(faces):
  return (np.array([np.r_[f.box, f.score] for f in faces]).reshape(-1, 5),
          np.array([f.landmarks.reshape(10) for f in faces]).reshape(-1, 10))


def test_detect_faces_mixed_sizes_and_downscale(random_detector):
  """Sizes are grouped (75x101 twice, one of them downscaled from 150x202;
  40x40 once); results equal the reference on the downscaled copies."""
  net, variables = random_detector
  rng = np.random.default_rng(4)
  imgs = [rng.integers(0, 256, s, dtype=np.uint8)
          for s in ((75, 101, 3), (40, 40, 3), (150, 202, 3))]
  kw = dict(score_threshold=0.0, keep_top_k=8)
  found = face_detection.detect_faces(variables, imgs, max_size=101, **kw)
  assert len(found) == 3
  for img, faces in zip(imgs, found):
    h, w = img.shape[:2]
    r = min(1.0, 101 / max(h, w))
    small = img
    if r < 1:  # the documented downscale: PIL bilinear, coordinates / r
      small = np.asarray(Image.fromarray(img).resize(
          (round(w * r), round(h * r)), Image.BILINEAR))
      assert small.shape == (75, 101, 3)
    dets, lms = retinaface_torch.detect(net, small[..., ::-1], keep_top_k=8)
    ours_d, ours_l = _as_array(faces)
    assert ours_d.shape == dets.shape == (8, 5)
    np.testing.assert_allclose(ours_d[:, :4], dets[:, :4] / r, atol=2e-3)
    np.testing.assert_allclose(ours_d[:, 4], dets[:, 4], atol=1e-5)
    np.testing.assert_allclose(ours_l, lms / r, atol=2e-3)


def test_detect_faces_rejects_bad_images(random_detector):
  _, variables = random_detector
  with pytest.raises(ValueError, match='holiday.jpg: expected an RGB uint8'):
    face_detection.detect_faces(variables, [np.zeros((8, 8), np.uint8)],
                                names=['holiday.jpg'])
  with pytest.raises(ValueError, match='RGB uint8'):
    face_detection.detect_raw(variables, np.zeros((1, 8, 8, 3), np.float32))
