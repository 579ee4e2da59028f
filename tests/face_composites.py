"""Synthetic test photos: real faces pasted into backgrounds with known maps.

A similarity transform is a 2x3 matrix A acting on pixel-index coordinates
(x, y): q = A[:, :2] p + A[:, 2]. `paste` warps a photo into a background so
that photo pixel p lands at composite pixel A p (bilinear; a downscale is
prefiltered with Lanczos first), so every point of the photo - landmarks
included - maps to the composite through `apply(A, p)` exactly.
"""

from __future__ import annotations

import pathlib

import numpy as np
from PIL import Image
import scipy.ndimage

FACE_NAMES = ('ffhq_00808', 'ffhq_00809', 'ffhq_04948', 'ffhq_11')


def similarity(scale: float, angle_deg: float, src_center, dst_center
               ) -> np.ndarray:
  """A that scales by `scale`, rotates by `angle_deg` (clockwise on screen,
  since y points down) about src_center, and moves it to dst_center."""
  a = np.deg2rad(angle_deg)
  r = scale * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
  t = np.asarray(dst_center, np.float64) - r @ np.asarray(src_center,
                                                          np.float64)
  return np.concatenate([r, t[:, None]], axis=1)


def apply(a: np.ndarray, points: np.ndarray) -> np.ndarray:
  return np.asarray(points, np.float64) @ a[:, :2].T + a[:, 2]


def compose(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """The map p -> a(b(p))."""
  return np.concatenate([a[:, :2] @ b[:, :2],
                         (a[:, :2] @ b[:, 2] + a[:, 2])[:, None]], axis=1)


def invert(a: np.ndarray) -> np.ndarray:
  ri = np.linalg.inv(a[:, :2])
  return np.concatenate([ri, (-ri @ a[:, 2])[:, None]], axis=1)


def background(height: int, width: int, seed: int) -> np.ndarray:
  """Smooth random colour field, uint8 [H, W, 3] (no faces in it)."""
  rng = np.random.default_rng(seed)
  small = rng.integers(0, 256, (height // 64 + 2, width // 64 + 2, 3),
                       dtype=np.uint8)
  return np.asarray(Image.fromarray(small).resize((width, height),
                                                  Image.BICUBIC))


def paste(canvas: np.ndarray, photo: np.ndarray, a: np.ndarray
          ) -> np.ndarray:
  """Warps `photo` (uint8 [n, n, 3]) by A onto a copy of `canvas`."""
  n = photo.shape[0]
  src, m = photo, a
  scale = np.hypot(*a[:, 0])
  if scale < 1:
    k = max(1, int(round(n * scale)))
    src = np.asarray(Image.fromarray(photo).resize((k, k), Image.LANCZOS))
    r = n / k  # small index -> photo index: p = (ps + 0.5) r - 0.5
    d = np.array([[r, 0, 0.5 * r - 0.5], [0, r, 0.5 * r - 0.5]])
    m = np.concatenate([a[:, :2] @ d[:, :2],
                        (a[:, :2] @ d[:, 2] + a[:, 2])[:, None]], axis=1)
  h, w = canvas.shape[:2]
  ys, xs = np.mgrid[0:h, 0:w]
  q = np.stack([xs, ys], -1).reshape(-1, 2).astype(np.float64)
  p = apply(invert(m), q)
  k = src.shape[0]
  inside = ((p[:, 0] >= -0.5) & (p[:, 0] <= k - 0.5) & (p[:, 1] >= -0.5)
            & (p[:, 1] <= k - 0.5))
  out = canvas.reshape(-1, 3).copy()
  vals = np.stack([scipy.ndimage.map_coordinates(
      src[..., c].astype(np.float32), [p[inside, 1], p[inside, 0]],
      order=1, mode='nearest') for c in range(3)], -1)
  out[inside] = np.clip(np.rint(vals), 0, 255).astype(np.uint8)
  return out.reshape(h, w, 3)


def psnr(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None
         ) -> float:
  d = (np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2
  if mask is not None:
    d = d[mask]
  return float(10 * np.log10(255.0 ** 2 / max(d.mean(), 1e-12)))


def mean_landmark_error(found: np.ndarray, truth: np.ndarray) -> float:
  """Mean point distance over the 5 landmarks / inter-ocular distance."""
  iod = np.hypot(*(truth[1] - truth[0]))
  return float(np.mean(np.hypot(*(found - truth).T)) / iod)


def save_blind_detector(path: pathlib.Path) -> pathlib.Path:
  """Saves an upstream-format RetinaFace .pth that never finds a face.

  The in-house torch RetinaFace (third_party) with random weights and a
  class head biased to 'background', wrapped as {'state_dict': ...} with a
  `module.` prefix as upstream's training script saves it.
  """
  import torch  # pylint: disable=g-import-not-at-top
  from third_party import retinaface_torch  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  net = retinaface_torch.RetinaFace().eval()
  with torch.no_grad():
    for head in net.ClassHead:
      head.conv1x1.weight.zero_()
      head.conv1x1.bias.copy_(torch.tensor([10.0, -10.0, 10.0, -10.0]))
  torch.save({'state_dict': {f'module.{k}': v for k, v in
                             net.state_dict().items()}}, path)
  return path
