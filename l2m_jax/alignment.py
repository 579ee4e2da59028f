"""Face alignment from 5 landmarks, and pasting edited crops back.

Both editors expect an aligned face crop: Latent-To-Latent (a StyleGAN2 FFHQ
W+ editor) an FFHQ-style crop, L2M-GAN a CelebA-HQ-style crop. Both crops are
defined by the same oriented square ("quad") built from the eye centres and
the mouth corners:

  eye_avg = (eye_left + eye_right) / 2      eye_to_eye = eye_right - eye_left
  mouth_avg = (mouth_left + mouth_right) / 2  eye_to_mouth = mouth_avg - eye_avg
  x = eye_to_eye - rot90(eye_to_mouth), normalised, times
      max(2 |eye_to_eye|, 1.8 |eye_to_mouth|)     (half side, pointing right)
  y = rot90(x)                                    (half side, pointing down)
  c = eye_avg + 0.1 eye_to_mouth                  (centre)
  quad = [c - x - y, c - x + y, c + x + y, c + x - y]  (TL, BL, BR, TR)

with rot90(v) = (-v_y, v_x). The image is then shrunk by an integer factor
when the quad is much larger than the output, cropped to the quad plus a
border, reflection-padded (with a blur and a fade to the median colour
towards the padded edge) where the quad leaves the photo, warped to a
`transform_size` square with PIL's bilinear QUAD transform and downsampled
to `output_size` with Lanczos.

* `align_ffhq` follows `recreate_aligned_images` of NVlabs/ffhq-dataset
  (`download_ffhq.py`). FFHQ's eye centres are the means of the six dlib
  eye points and its mouth corners are dlib points 48 and 54; here the eye
  centres are RetinaFace's eye points and the mouth corners its mouth
  corners (see docs/editing.md for what that changes).
* `align_celebahq` follows `create_celebahq` of
  tkarras/progressive_growing_of_gans (`dataset_tool.py`), which used
  CelebA's own 5 landmarks (the same 5 points RetinaFace predicts). It differs
  from FFHQ in three details: eye and mouth centres get +0.5 px, small faces
  are first upsampled by a power of two ("simulate super-resolution"), and
  padding is always enabled. CelebA-HQ additionally applied per-image
  enhancement deltas to its images; those cannot be reproduced on new photos
  and are not part of this crop.

Coordinates: landmarks and quads are in pixel-index coordinates (pixel (i, j)
has its centre at x = j, y = i), as RetinaFace, dlib and CelebA report them;
PIL's transforms use continuous coordinates (pixel centre at index + 0.5),
hence the `quad + 0.5` of the originals.

Every alignment returns an `Alignment` that records the exact affine map from
crop to photo (shrink, crop, pad and super-resolution steps included), so
`paste_back` can warp an edited crop of any size back into the photo. Only
pixels inside the quad whose feathered mask is non-zero change; every other
pixel of the photo is left bit-identical.

Everything here runs on the host (numpy, scipy.ndimage, PIL).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from PIL import Image
import scipy.ndimage

# Indices into RetinaFace's 5 landmarks (image left / right).
EYE_LEFT, EYE_RIGHT, NOSE, MOUTH_LEFT, MOUTH_RIGHT = range(5)
FFHQ_SIZE = 1024
CELEBAHQ_SIZE = 1024
TRANSFORM_SIZE = 4096


@dataclasses.dataclass(frozen=True)
class Alignment:
  """Where an aligned crop lies in its photo.

  Attributes:
    quad: [4, 2] float64, the crop's corners (top-left, bottom-left,
      bottom-right, top-right) in photo pixel-index coordinates, after every
      resampling step of the alignment is accounted for. A crop point at
      continuous coordinates (u, v) in [0, size]^2 (pixel (i, j) spans
      [j, j + 1] x [i, i + 1]) lies at photo index
      quad[0] + u / size (quad[3] - quad[0]) + v / size (quad[1] - quad[0]).
    size: the crop's side in pixels.
    photo_shape: (height, width) of the photo.
    style: 'ffhq' or 'celebahq'.
  """
  quad: np.ndarray
  size: int
  photo_shape: tuple[int, int]
  style: str

  def crop_to_photo(self, points: np.ndarray, size: int | None = None
                    ) -> np.ndarray:
    """Crop pixel-index points [..., 2] (x, y) -> photo pixel-index points.

    Args:
      points: points in a crop of side `size` (default: `self.size`; a
        resized crop, e.g. a 256 px edit of a 1024 px crop, gives its size).
    """
    s = float(self.size if size is None else size)
    uv = (np.asarray(points, np.float64) + 0.5) / s
    q = self.quad
    return q[0] + uv[..., :1] * (q[3] - q[0]) + uv[..., 1:] * (q[1] - q[0])

  def photo_to_crop(self, points: np.ndarray, size: int | None = None
                    ) -> np.ndarray:
    """Photo pixel-index points [..., 2] -> crop pixel-index points."""
    s = float(self.size if size is None else size)
    q = self.quad
    basis = np.stack([q[3] - q[0], q[1] - q[0]], axis=1)  # [[ex, ey]] 2x2
    d = np.asarray(points, np.float64) - q[0]
    uv = np.linalg.solve(basis, d.reshape(-1, 2).T).T.reshape(d.shape)
    return uv * s - 0.5

  def to_json(self) -> dict[str, Any]:
    return {'style': self.style, 'size': int(self.size),
            'quad': np.round(self.quad, 4).tolist(),
            'photo_shape': list(self.photo_shape)}


def _rot90(v: np.ndarray) -> np.ndarray:
  return np.array([-v[1], v[0]])


def _check_inputs(image: np.ndarray, landmarks: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray]:
  image = np.asarray(image)
  if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
    raise ValueError('image must be an RGB uint8 array [H, W, 3], got '
                     f'{image.dtype} {tuple(image.shape)}')
  lm = np.asarray(landmarks, np.float64)
  if lm.shape != (5, 2) or not np.all(np.isfinite(lm)):
    raise ValueError('landmarks must be 5 finite (x, y) points (left eye, '
                     'right eye, nose, left and right mouth corners), got '
                     f'shape {lm.shape}')
  return image, lm


def face_quad(landmarks: np.ndarray, offset: float = 0.0
              ) -> tuple[np.ndarray, float]:
  """The oriented crop square of the 5 landmarks (module docstring).

  Args:
    landmarks: [5, 2] (x, y): left eye, right eye, nose, left mouth corner,
      right mouth corner.
    offset: added to the eye and mouth centres (0 for FFHQ, 0.5 for
      CelebA-HQ).

  Returns:
    (quad [4, 2] TL, BL, BR, TR; qsize = the side length).
  """
  lm = np.asarray(landmarks, np.float64)
  eye_avg = (lm[EYE_LEFT] + lm[EYE_RIGHT]) * 0.5 + offset
  mouth_avg = (lm[MOUTH_LEFT] + lm[MOUTH_RIGHT]) * 0.5 + offset
  eye_to_eye = lm[EYE_RIGHT] - lm[EYE_LEFT]
  eye_to_mouth = mouth_avg - eye_avg
  x = eye_to_eye - _rot90(eye_to_mouth)
  x /= np.hypot(*x)
  x *= max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)
  y = _rot90(x)
  c = eye_avg + eye_to_mouth * 0.1
  quad = np.stack([c - x - y, c - x + y, c + x + y, c + x - y])
  return quad, float(np.hypot(*x) * 2)


class _Tracked:
  """A working image plus the map working-index -> photo-index coordinates.

  photo = scale * work + offset, per axis (x, y).
  """

  def __init__(self, img: Image.Image):
    self.img = img
    self.scale = np.ones(2)
    self.offset = np.zeros(2)

  def resize(self, size: tuple[int, int]):
    """PIL Lanczos resize; pixel centres map as (i + 0.5) * old / new."""
    ratio = np.array(self.img.size, np.float64) / np.array(size, np.float64)
    self.offset = self.offset + self.scale * (0.5 * ratio - 0.5)
    self.scale = self.scale * ratio
    self.img = self.img.resize(size, Image.LANCZOS)

  def shift(self, dx: int, dy: int):
    """The working image now starts at working index (dx, dy) of the old."""
    self.offset = self.offset + self.scale * np.array([dx, dy], np.float64)

  def to_photo(self, pts: np.ndarray) -> np.ndarray:
    return pts * self.scale + self.offset


def _bounds(quad: np.ndarray) -> tuple[int, int, int, int]:
  return (int(np.floor(min(quad[:, 0]))), int(np.floor(min(quad[:, 1]))),
          int(np.ceil(max(quad[:, 0]))), int(np.ceil(max(quad[:, 1]))))


def _align(image: np.ndarray, landmarks: np.ndarray, *, style: str,
           output_size: int, transform_size: int, enable_padding: bool
           ) -> tuple[np.ndarray, Alignment]:
  """The shared FFHQ / CelebA-HQ procedure (see the module docstring)."""
  image, lm = _check_inputs(image, landmarks)
  if output_size < 1 or transform_size < output_size:
    raise ValueError(f'output_size={output_size}, transform_size='
                     f'{transform_size}: need 1 <= output_size <= '
                     'transform_size')
  celebahq = style == 'celebahq'
  if not np.hypot(*(lm[EYE_RIGHT] - lm[EYE_LEFT])) + np.hypot(
      *(lm[MOUTH_LEFT] + lm[MOUTH_RIGHT] - lm[EYE_LEFT] - lm[EYE_RIGHT])) > 0:
    raise ValueError('landmarks are degenerate (zero eye and mouth '
                     'distances)')
  quad, qsize = face_quad(lm, offset=0.5 if celebahq else 0.0)
  if not qsize > 0:
    raise ValueError('landmarks are degenerate (zero eye and mouth '
                     'distances)')
  work = _Tracked(Image.fromarray(image, 'RGB'))
  # In CelebA-HQ's code zoom = 1024 / qsize; written with output_size.
  zoom = output_size / qsize

  # Shrink.
  shrink = int(np.floor(qsize / output_size * 0.5))
  if shrink > 1:
    w, h = work.img.size
    work.resize((int(np.rint(float(w) / shrink)),
                 int(np.rint(float(h) / shrink))))
    quad = quad / shrink
    qsize = qsize / shrink
    zoom *= shrink

  # Crop.
  border = max(int(np.rint(qsize * 0.1)), 3)
  crop = _bounds(quad)
  crop = (max(crop[0] - border, 0), max(crop[1] - border, 0),
          min(crop[2] + border, work.img.size[0]),
          min(crop[3] + border, work.img.size[1]))
  if crop[2] - crop[0] < work.img.size[0] or (
      crop[3] - crop[1] < work.img.size[1]):
    if crop[2] <= crop[0] or crop[3] <= crop[1]:
      raise ValueError('the face quad lies entirely outside the photo')
    work.img = work.img.crop(crop)
    work.shift(crop[0], crop[1])
    quad = quad - crop[0:2]

  # Simulate super-resolution (CelebA-HQ only).
  if celebahq:
    superres = int(np.exp2(np.ceil(np.log2(zoom))))
    if superres > 1:
      w, h = work.img.size
      work.resize((w * superres, h * superres))
      quad = quad * superres
      qsize = qsize * superres
      zoom /= superres

  # Pad.
  pad = _bounds(quad)
  pad = (max(-pad[0] + border, 0), max(-pad[1] + border, 0),
         max(pad[2] - work.img.size[0] + border, 0),
         max(pad[3] - work.img.size[1] + border, 0))
  # CelebA-HQ keeps the pre-super-resolution `border` here and pads
  # unconditionally; its 1024 * 0.3 / zoom and 1024 * 0.02 / zoom equal
  # qsize * 0.3 and qsize * 0.02 in the current (upsampled) pixels.
  do_pad = (celebahq or enable_padding) and max(pad) > border - 4
  min_pad = int(np.rint(qsize * 0.3))
  blur = qsize * 0.02
  if do_pad:
    pad = np.maximum(pad, min_pad)
    img = np.pad(np.float32(work.img), ((pad[1], pad[3]), (pad[0], pad[2]),
                                        (0, 0)), 'reflect')
    h, w, _ = img.shape
    y, x, _ = np.ogrid[:h, :w, :1]
    x, y = np.float32(x), np.float32(y)
    mask = np.maximum(
        1.0 - np.minimum(x / pad[0], np.float32(w - 1 - x) / pad[2]),
        1.0 - np.minimum(y / pad[1], np.float32(h - 1 - y) / pad[3]))
    img += (scipy.ndimage.gaussian_filter(img, [blur, blur, 0]) - img) * (
        np.clip(mask * 3.0 + 1.0, 0.0, 1.0))
    img += (np.median(img, axis=(0, 1)) - img) * np.clip(mask, 0.0, 1.0)
    work.img = Image.fromarray(np.uint8(np.clip(np.rint(img), 0, 255)), 'RGB')
    work.shift(-int(pad[0]), -int(pad[1]))
    quad = quad + pad[:2]

  # Transform.
  out = work.img.transform((transform_size, transform_size), Image.QUAD,
                           tuple((quad + 0.5).flatten()), Image.BILINEAR)
  if output_size < transform_size:
    out = out.resize((output_size, output_size), Image.LANCZOS)
  alignment = Alignment(quad=work.to_photo(quad), size=output_size,
                        photo_shape=tuple(image.shape[:2]), style=style)
  return np.asarray(out), alignment


def align_ffhq(image: np.ndarray, landmarks: np.ndarray,
               output_size: int = FFHQ_SIZE,
               transform_size: int = TRANSFORM_SIZE,
               enable_padding: bool = True) -> tuple[np.ndarray, Alignment]:
  """FFHQ-style aligned crop (for Latent-To-Latent / StyleGAN2 FFHQ).

  NVlabs/ffhq-dataset `recreate_aligned_images` (rotate_level=True, no
  random shift) with the eye centres and mouth corners taken from 5
  landmarks.

  Args:
    image: RGB uint8 [H, W, 3] photo.
    landmarks: [5, 2] (x, y) pixel-index coordinates: left eye, right eye,
      nose, left mouth corner, right mouth corner (RetinaFace order; the
      nose is not used).
    output_size: crop side (1024 for FFHQ; 256 is the Latent-To-Latent
      encoder's input).
    transform_size: side of the intermediate QUAD warp (FFHQ: 4096);
      4 x output_size keeps FFHQ's supersampling ratio at other sizes.
    enable_padding: reflection-pad with blur where the quad leaves the photo
      (FFHQ default); otherwise PIL fills with black.

  Returns:
    (crop uint8 [output_size, output_size, 3], Alignment).

  Raises:
    ValueError: bad image or landmark array, or sizes.
  """
  return _align(image, landmarks, style='ffhq', output_size=output_size,
                transform_size=transform_size, enable_padding=enable_padding)


def align_celebahq(image: np.ndarray, landmarks: np.ndarray,
                   output_size: int = CELEBAHQ_SIZE,
                   transform_size: int = TRANSFORM_SIZE
                   ) -> tuple[np.ndarray, Alignment]:
  """CelebA-HQ-style aligned crop (for L2M-GAN).

  tkarras/progressive_growing_of_gans `create_celebahq` geometry (before its
  per-image enhancement deltas): the FFHQ quad with +0.5 px on the eye and
  mouth centres, power-of-two upsampling of small faces, and padding always
  enabled. The constants written for 1024 px there scale with
  `output_size`; at 1024 they are the original ones. L2M-GAN's loader then
  resizes the 1024 px crop to its img_size (PIL bilinear), as
  `l2m_jax.image_io.load_image` does.

  Args and returns: as `align_ffhq`.
  """
  return _align(image, landmarks, style='celebahq', output_size=output_size,
                transform_size=transform_size, enable_padding=True)


ALIGN_FUNCTIONS = {'ffhq': align_ffhq, 'celebahq': align_celebahq}


def feathered_mask(size: int, feather: float = 0.1) -> np.ndarray:
  """[size, size] float32 mask: 1 inside, linear ramp to 0 at the border.

  Args:
    size: crop side.
    feather: ramp width as a fraction of the side (0 < feather <= 0.5).
      The value at a pixel centre at distance d (px) from the nearest crop
      edge is clip(d / (feather * size), 0, 1).
  """
  if not 0 < feather <= 0.5:
    raise ValueError(f'feather={feather}: must be in (0, 0.5]')
  c = np.arange(size, dtype=np.float64) + 0.5
  d = np.minimum(c, size - c)
  m = np.clip(np.minimum(d[:, None], d[None, :]) / (feather * size), 0, 1)
  return m.astype(np.float32)


def paste_back(photo: np.ndarray, crop: np.ndarray, alignment: Alignment,
               feather: float = 0.1, mask: np.ndarray | None = None
               ) -> np.ndarray:
  """Warps an (edited) aligned crop back into its photo.

  The crop's square is mapped onto `alignment.quad` (the inverse of the
  alignment's affine map). When the face is smaller in the photo than in the
  crop, the crop is first downsampled with Lanczos to about the photo's
  scale, then every photo pixel inside the quad samples it bilinearly. The
  result is blended with `mask` (default: `feathered_mask(feather)`); photo
  pixels where the warped mask is 0 - everything outside the quad and its
  feathered rim - are returned bit-identical.

  Args:
    photo: RGB uint8 [H, W, 3], the photo the crop was aligned from.
    crop: [S, S, 3], uint8 or float in [0, 255]; any S (e.g. a 256 px edit
      of a 1024 px crop).
    alignment: from `align_ffhq` / `align_celebahq` on this photo.
    feather: ramp width of the default mask, as a fraction of the side.
    mask: optional [S, S] weights in [0, 1] (e.g. a face-parts mask) used
      instead of the feathered square.

  Returns:
    A new RGB uint8 [H, W, 3] photo.
  """
  photo = np.asarray(photo)
  if photo.ndim != 3 or photo.shape[-1] != 3 or photo.dtype != np.uint8:
    raise ValueError('photo must be an RGB uint8 array [H, W, 3], got '
                     f'{photo.dtype} {tuple(photo.shape)}')
  if tuple(photo.shape[:2]) != tuple(alignment.photo_shape):
    raise ValueError(f'photo is {photo.shape[:2]}, but the alignment was made '
                     f'on a {tuple(alignment.photo_shape)} photo')
  crop = np.asarray(crop, np.float32)
  if crop.ndim != 3 or crop.shape[-1] != 3 or crop.shape[0] != crop.shape[1]:
    raise ValueError(f'crop must be a square RGB array [S, S, 3], got '
                     f'{tuple(crop.shape)}')
  size = crop.shape[0]
  weights = feathered_mask(size, feather) if mask is None else np.asarray(
      mask, np.float32)
  if weights.shape != (size, size):
    raise ValueError(f'mask must be [{size}, {size}], got {weights.shape}')

  # Downsample the crop (and mask) to about the photo's scale first.
  q = alignment.quad
  side = max(np.hypot(*(q[3] - q[0])), np.hypot(*(q[1] - q[0])))
  target = int(np.ceil(side))
  if target < size:
    target = max(target, 2)
    crop = np.stack([np.asarray(Image.fromarray(crop[..., c], 'F').resize(
        (target, target), Image.LANCZOS)) for c in range(3)], -1)
    weights = np.asarray(Image.fromarray(weights, 'F').resize(
        (target, target), Image.LANCZOS))
    size = target

  # Photo pixels whose centres can fall inside the quad.
  h, w = photo.shape[:2]
  x0, y0, x1, y1 = _bounds(q)
  x0, y0 = max(x0, 0), max(y0, 0)
  x1, y1 = min(x1 + 1, w), min(y1 + 1, h)
  out = photo.copy()
  if x1 <= x0 or y1 <= y0:
    return out
  ys, xs = np.mgrid[y0:y1, x0:x1]
  pts = np.stack([xs, ys], -1).astype(np.float64)
  uv = alignment.photo_to_crop(pts, size=size)  # crop pixel-index coords
  inside = ((uv[..., 0] >= -0.5) & (uv[..., 0] <= size - 0.5)
            & (uv[..., 1] >= -0.5) & (uv[..., 1] <= size - 0.5))
  coords = [uv[..., 1][inside], uv[..., 0][inside]]
  m = np.zeros(inside.shape, np.float32)
  m[inside] = np.clip(scipy.ndimage.map_coordinates(
      weights, coords, order=1, mode='nearest'), 0, 1)
  sel = m > 0
  if not sel.any():
    return out
  warped = np.stack([scipy.ndimage.map_coordinates(
      crop[..., c], [uv[..., 1][sel], uv[..., 0][sel]], order=1,
      mode='nearest') for c in range(3)], -1)
  region = out[y0:y1, x0:x1]
  mm = m[sel][:, None]
  blend = region[sel].astype(np.float32) * (1 - mm) + warped * mm
  region[sel] = np.clip(np.rint(blend), 0, 255).astype(np.uint8)
  return out


def quad_polygon_mask(alignment: Alignment, margin: float = 0.0
                      ) -> np.ndarray:
  """[H, W] bool: photo pixel centres inside the quad grown by `margin` px.

  `paste_back` never changes a pixel outside `quad_polygon_mask(a, 1)`.
  """
  h, w = alignment.photo_shape
  ys, xs = np.mgrid[0:h, 0:w]
  uv = alignment.photo_to_crop(np.stack([xs, ys], -1).astype(np.float64),
                               size=1)  # crop of side 1: uv + 0.5 in [0, 1]
  q = alignment.quad
  side = max(np.hypot(*(q[3] - q[0])), np.hypot(*(q[1] - q[0])))
  tol = margin / side
  u, v = uv[..., 0] + 0.5, uv[..., 1] + 0.5
  return (u >= -tol) & (u <= 1 + tol) & (v >= -tol) & (v <= 1 + tol)
