"""Face detection in photos with RetinaFace: batched network, host NMS.

The network and the box/landmark decoding run in JAX
(`l2m_jax.models.retinaface`), batched over images of one size with
`parallel.map_batches`; thresholding, top-k and non-maximum suppression run
on the host in numpy, as in biubug6/Pytorch_Retinaface `detect.py`:

  1. keep candidates with score > confidence_threshold (0.02),
  2. sort by score, keep the top_k (5000),
  3. greedy NMS at IoU > nms_threshold (0.4) with the "+1" pixel area
     convention of `py_cpu_nms`,
  4. keep the first keep_top_k (750),
  5. report as faces the detections with score >= score_threshold (0.6,
     `detect.py`'s `vis_thres`).

Images are RGB uint8 (any size); they are flipped to BGR and mean-shifted
inside the jitted function as upstream's OpenCV pipeline expects. Boxes and
landmarks are in pixels of the input image. `max_size` optionally detects
on a copy downscaled so its longer side is at most `max_size` (PIL bilinear)
and scales the coordinates back (x / r, as upstream's `resize` option does).

Usage::

  from l2m_jax.convert.retinaface import load_retinaface
  from l2m_jax import face_detection
  variables, _ = load_retinaface('mobilenet0.25_Final.pth')
  faces = face_detection.detect_faces(variables, [photo])[0]
  for f in faces: print(f.box, f.score, f.landmarks)
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Sequence

import jax
import numpy as np
from PIL import Image

from l2m_jax import parallel
from l2m_jax.models import retinaface

CONFIDENCE_THRESHOLD = 0.02  # detect.py --confidence_threshold
NMS_THRESHOLD = 0.4  # detect.py --nms_threshold
TOP_K = 5000  # detect.py --top_k (before NMS)
KEEP_TOP_K = 750  # detect.py --keep_top_k (after NMS)
SCORE_THRESHOLD = 0.6  # detect.py --vis_thres: what counts as a face


@dataclasses.dataclass(frozen=True)
class Face:
  """One detected face.

  Attributes:
    box: [4] float (x1, y1, x2, y2), pixels.
    score: face probability in [0, 1].
    landmarks: [5, 2] float (x, y), pixels: left eye, right eye, nose tip,
      left mouth corner, right mouth corner (image left / right).
  """
  box: np.ndarray
  score: float
  landmarks: np.ndarray

  def to_json(self) -> dict[str, Any]:
    return {'box': [round(float(v), 3) for v in self.box],
            'score': round(float(self.score), 6),
            'landmarks': [[round(float(x), 3), round(float(y), 3)]
                          for x, y in self.landmarks]}


@functools.lru_cache(maxsize=None)
def detect_fn(dtype: Any = None) -> Callable[..., Any]:
  """Jitted `(variables, images [N, H, W, 3] RGB 0-255) -> raw detections`.

  Returns (boxes [N, P, 4], scores [N, P], landmarks [N, P, 5, 2]) for all P
  anchors, in pixels, before thresholding. One compilation per image size.
  """
  model = retinaface.RetinaFace() if dtype is None else (
      retinaface.RetinaFace(dtype=dtype))

  def fn(variables, images):
    out = model.apply(variables, retinaface.preprocess(images))
    return retinaface.decode(out, images.shape[1], images.shape[2])

  return jax.jit(fn)


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float
        ) -> np.ndarray:
  """Greedy non-maximum suppression (host, numpy).

  Visits boxes in order of decreasing score and drops every later box whose
  IoU with a kept box exceeds `threshold`. As Fast R-CNN's `py_cpu_nms`
  used upstream: the order is numpy's `scores.argsort()[::-1]` (so exact
  ties break as upstream's do), and areas and intersections count pixels
  inclusively, (x2 - x1 + 1) * (y2 - y1 + 1).

  Args:
    boxes: [K, 4] (x1, y1, x2, y2).
    scores: [K].
    threshold: IoU above which a box is suppressed.

  Returns:
    int64 indices of the kept boxes, highest score first.
  """
  boxes = np.asarray(boxes)
  order = np.asarray(scores).argsort()[::-1]
  x1, y1, x2, y2 = (boxes[:, k] for k in range(4))
  areas = (x2 - x1 + 1) * (y2 - y1 + 1)
  keep = []
  while order.size:
    i, rest = order[0], order[1:]
    keep.append(i)
    iw = np.maximum(0.0, np.minimum(x2[i], x2[rest])
                    - np.maximum(x1[i], x1[rest]) + 1)
    ih = np.maximum(0.0, np.minimum(y2[i], y2[rest])
                    - np.maximum(y1[i], y1[rest]) + 1)
    inter = iw * ih
    order = rest[inter / (areas[i] + areas[rest] - inter) <= threshold]
  return np.asarray(keep, np.int64)


def postprocess(boxes: np.ndarray, scores: np.ndarray, landmarks: np.ndarray,
                *, confidence_threshold: float = CONFIDENCE_THRESHOLD,
                nms_threshold: float = NMS_THRESHOLD, top_k: int = TOP_K,
                keep_top_k: int = KEEP_TOP_K,
                score_threshold: float = SCORE_THRESHOLD) -> list[Face]:
  """Raw detections of one image -> faces (steps 1-5 of the module doc).

  Args:
    boxes: [P, 4]; scores: [P]; landmarks: [P, 5, 2] (one image).

  Returns:
    Faces with score >= score_threshold, highest score first.
  """
  boxes = np.asarray(boxes, np.float32)
  scores = np.asarray(scores, np.float32)
  landmarks = np.asarray(landmarks, np.float32)
  idx = np.flatnonzero(scores > confidence_threshold)
  idx = idx[scores[idx].argsort()[::-1]][:top_k]
  keep = idx[nms(boxes[idx], scores[idx], nms_threshold)][:keep_top_k]
  return [Face(box=boxes[i].copy(), score=float(scores[i]),
               landmarks=landmarks[i].copy())
          for i in keep if scores[i] >= score_threshold]


def _validate(image: np.ndarray, name: str) -> np.ndarray:
  image = np.asarray(image)
  if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
    raise ValueError(f'{name}: expected an RGB uint8 image [H, W, 3], got '
                     f'{image.dtype} {tuple(image.shape)}')
  if min(image.shape[:2]) < 1:
    raise ValueError(f'{name}: empty image {tuple(image.shape)}')
  return image


def _downscale(image: np.ndarray, max_size: int | None
               ) -> tuple[np.ndarray, float]:
  h, w = image.shape[:2]
  if max_size is None or max(h, w) <= max_size:
    return image, 1.0
  r = max_size / max(h, w)
  size = (max(1, int(round(w * r))), max(1, int(round(h * r))))
  small = Image.fromarray(image).resize(size, Image.BILINEAR)
  return np.asarray(small), r


def detect_raw(variables: Any, images: np.ndarray, batch_size: int = 8,
               mesh: jax.sharding.Mesh | None = None
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Raw detections for a stack of same-size images, batched.

  Args:
    variables: RetinaFace variables (`l2m_jax.convert.retinaface`).
    images: RGB uint8 [N, H, W, 3].
    batch_size: images per call (rounded up to the device count).
    mesh: process-local mesh; by default the first min(N, #devices) local
      devices, so a single photo is not padded to one copy per device.

  Returns:
    numpy (boxes [N, P, 4], scores [N, P], landmarks [N, P, 5, 2]).
  """
  images = np.asarray(images)
  if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
    raise ValueError('images must be RGB uint8 [N, H, W, 3], got '
                     f'{images.dtype} {tuple(images.shape)}')
  # A short stack is not padded up to batch_size (nor to one copy per
  # device): the batch is min(N, batch_size), rounded up to the mesh.
  batch_size = max(1, min(batch_size, len(images)))
  if mesh is None:
    mesh = parallel.local_mesh(min(batch_size, jax.local_device_count()))
  return parallel.map_batches(detect_fn(), images, batch_size=batch_size,
                              args=(variables,), mesh=mesh)


def detect_faces(variables: Any, images: Sequence[np.ndarray], *,
                 max_size: int | None = None, batch_size: int = 8,
                 confidence_threshold: float = CONFIDENCE_THRESHOLD,
                 nms_threshold: float = NMS_THRESHOLD, top_k: int = TOP_K,
                 keep_top_k: int = KEEP_TOP_K,
                 score_threshold: float = SCORE_THRESHOLD,
                 names: Sequence[str] | None = None) -> list[list[Face]]:
  """Detects faces in photos of any sizes.

  Images of the same (possibly downscaled) size are batched together
  through `detect_raw` (one compilation per size); post-processing runs per
  image on the host.

  Args:
    variables: RetinaFace variables.
    images: RGB uint8 [H, W, 3] arrays.
    max_size: if set, detect on a copy whose longer side is at most this.
    batch_size: images per network call.
    confidence_threshold, nms_threshold, top_k, keep_top_k,
      score_threshold: see the module docstring.
    names: per-image names for error messages.

  Returns:
    One list of `Face`s per image (possibly empty), highest score first.
  """
  names = list(names) if names is not None else [
      f'image {i}' for i in range(len(images))]
  prepared, ratios = [], []
  for img, name in zip(images, names):
    small, r = _downscale(_validate(img, name), max_size)
    prepared.append(small)
    ratios.append(r)
  groups: dict[tuple[int, int], list[int]] = {}
  for i, img in enumerate(prepared):
    groups.setdefault(img.shape[:2], []).append(i)
  results: list[list[Face]] = [[] for _ in prepared]
  for idx in groups.values():
    boxes, scores, lms = detect_raw(
        variables, np.stack([prepared[i] for i in idx]),
        batch_size=batch_size)
    for k, i in enumerate(idx):
      faces = postprocess(
          boxes[k], scores[k], lms[k],
          confidence_threshold=confidence_threshold,
          nms_threshold=nms_threshold, top_k=top_k, keep_top_k=keep_top_k,
          score_threshold=score_threshold)
      r = ratios[i]
      if r != 1.0:
        faces = [dataclasses.replace(f, box=f.box / r,
                                     landmarks=f.landmarks / r)
                 for f in faces]
      results[i] = faces
  return results


def select_faces(faces: Sequence[Face], max_faces: int | None,
                 by: str = 'score') -> list[Face]:
  """The `max_faces` best faces, by 'score' or by box 'area'.

  The result keeps the chosen order (best first).
  """
  if by not in ('score', 'area'):
    raise ValueError(f"by={by!r}: must be 'score' or 'area'")
  key = (lambda f: -f.score) if by == 'score' else (
      lambda f: -float((f.box[2] - f.box[0]) * (f.box[3] - f.box[1])))
  chosen = sorted(faces, key=key)
  return chosen if max_faces is None else chosen[:max_faces]
