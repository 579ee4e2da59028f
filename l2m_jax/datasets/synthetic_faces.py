"""Procedurally generated faces: the project's embedded, download-free dataset.

L2M-GAN edits one binary facial attribute while keeping identity and the
irrelevant content (docs/method.md#l2m-gan: "attribute correctness" and
"irrelevance preservation"; docs/method.md#l2m-data: one two-domain
`train/<domain>/` folder per
attribute). No face data set can be downloaded here, so this module renders
cartoon faces whose every factor of variation is known:

* an identity vector of `len(IDENTITY_NAMES)` values, each uniform in [0, 1]
  (face shape, skin tone, hair style and shade, eye spacing and size, iris
  colour, eyebrows, nose, mouth width, background, clothing, pose jitter);
* three binary attributes: `smiling` (local: the mouth curve), `eyeglasses`
  (local: dark frames in the eye band) and `grey_hair` (global-ish, age-like:
  the colour of all the hair and the eyebrows).

Faces are drawn with PIL at 4x (2x above 128 px) the output size and
downsampled with a Lanczos filter, which anti-aliases every edge. Each example
is generated from its own `numpy.random.SeedSequence([seed, split, index])`,
so the data set is identical for a given seed whatever the order or the number
of examples asked for.

Entry points:
  sample_face(seed, split, index) -> (identity, attributes)
  render_face(identity, attributes, image_size) -> uint8 [S, S, 3]
  attribute_region_mask(identity, attribute, image_size) -> float32 [S, S]
  generate_arrays(num, image_size, seed, split) -> dict of numpy arrays

The tfds builder (`tfds.builder('synthetic_faces/64px')`) lives in
`synthetic_faces_tfds.py` and the export to the official ImageFolder layout
(`train/<domain>/*.png`, `val/<domain>/*.png`) in `synthetic_faces_folders.py`;
this module imports neither TensorFlow nor tfds.
"""

from __future__ import annotations

import colorsys
import dataclasses
import math
from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

# ----------------------------------------------------------------------------
# Parameters.

# Identity vector layout; every value is drawn uniformly from [0, 1].
IDENTITY_NAMES = (
    'face_width',      # half-width of the face ellipse
    'face_height',     # half-height of the face ellipse
    'skin_tone',       # 0 = light, 1 = dark
    'hair_style',      # quantised to HAIR_STYLES by floor(3 u)
    'hair_shade',      # lightness of the hair within its colour class
    'eye_spacing',     # horizontal eye distance
    'eye_size',        # eye radius
    'iris_hue',        # iris colour, brown to blue
    'brow_thickness',  # eyebrow line width
    'nose_length',
    'nose_width',
    'mouth_width',
    'bg_hue',          # background colour (low saturation)
    'bg_value',        # background brightness
    'shirt_hue',       # clothing colour
    'pose_dx',         # horizontal shift of the whole head
    'pose_dy',         # vertical shift of the whole head
    'pose_angle',      # in-plane rotation, -6 to 6 degrees
)
IDENTITY_DIM = len(IDENTITY_NAMES)
HAIR_STYLES = ('short', 'long', 'side_part')

# Binary attributes and their two domain names, (absent, present). The names
# sort so that label 0 = attribute absent, as the ImageFolder convention
# assigns labels by sorted folder name (docs/architecture.md#ckpt-nets-ema,
# docs/method.md#l2m-data).
ATTRIBUTES = ('smiling', 'eyeglasses', 'grey_hair')
DOMAINS = {
    'smiling': ('no_smile', 'smile'),
    'eyeglasses': ('bare_eyes', 'eyeglasses'),
    'grey_hair': ('dark_hair', 'grey_hair'),
}
for _names in DOMAINS.values():
  assert list(_names) == sorted(_names), _names

SPLITS = ('train', 'val')
# Data set version: the tfds builder's VERSION and the folder export's record.
VERSION = '1.0.0'
_SPLIT_IDS = {'train': 0, 'val': 1}

# Fixed colours (RGB, 0-255).
_LIP_RGB = (176, 38, 52)
_FRAME_RGB = (8, 8, 10)
_EYE_WHITE_RGB = (246, 246, 242)
_PUPIL_RGB = (20, 16, 16)
_SKIN_LIGHT = np.array([245.0, 214.0, 186.0])
_SKIN_DARK = np.array([122.0, 84.0, 62.0])
_HAIR_DARK = np.array([66.0, 46.0, 30.0])   # luma about 50: never near-black
_HAIR_BROWN = np.array([146.0, 100.0, 58.0])


def check_attribute(attribute: str, field: str | None = None) -> None:
  """A ValueError unless `attribute` is one of ATTRIBUTES.

  Args:
    attribute: the attribute name.
    field: the config field it came from (e.g. 'config.demo.attribute'),
      named first in the message.
  """
  if attribute not in ATTRIBUTES:
    where = f'{field}={attribute!r}: ' if field else ''
    raise ValueError(f'{where}unknown attribute {attribute!r}; expected one '
                     f'of {", ".join(ATTRIBUTES)}')


def _check_split(split: str) -> None:
  if split not in _SPLIT_IDS:
    raise ValueError(f'unknown split {split!r}; expected one of '
                     f'{", ".join(SPLITS)}')


def sample_face(seed: int, split: str, index: int
                ) -> tuple[np.ndarray, dict[str, int]]:
  """Draws the identity vector and attributes of one example.

  Args:
    seed: data set seed.
    split: 'train' or 'val' (independent streams).
    index: example index within the split.

  Returns:
    (identity float32 [IDENTITY_DIM] in [0, 1], {attribute: 0 or 1}).
  """
  _check_split(split)
  rng = np.random.default_rng(
      np.random.SeedSequence([int(seed), _SPLIT_IDS[split], int(index)]))
  identity = rng.uniform(0.0, 1.0, IDENTITY_DIM).astype(np.float32)
  bits = rng.integers(0, 2, len(ATTRIBUTES))
  return identity, {a: int(b) for a, b in zip(ATTRIBUTES, bits)}


def identity_dict(identity: Sequence[float]) -> dict[str, float]:
  """Identity vector -> {name: value}."""
  identity = np.asarray(identity, np.float32).reshape(-1)
  if identity.shape[0] != IDENTITY_DIM:
    raise ValueError(f'identity vector has {identity.shape[0]} values; '
                     f'expected {IDENTITY_DIM} ({", ".join(IDENTITY_NAMES)})')
  return {n: float(v) for n, v in zip(IDENTITY_NAMES, identity)}


def hair_style_index(identity: Sequence[float]) -> int:
  u = identity_dict(identity)['hair_style']
  return min(int(u * len(HAIR_STYLES)), len(HAIR_STYLES) - 1)


# ----------------------------------------------------------------------------
# Geometry, in canvas units: (0, 0) top-left, (1, 1) bottom-right, y down.


@dataclasses.dataclass(frozen=True)
class _Geometry:
  """Derived drawing geometry of one face (canvas units, before the pose)."""
  cx: float
  cy: float
  angle: float        # radians
  face_a: float       # face half-width
  face_b: float       # face half-height
  eye_y: float
  eye_dx: float
  eye_rx: float
  eye_ry: float
  brow_w: float
  nose_len: float
  nose_w: float
  mouth_y: float
  mouth_hw: float
  hair_style: int

  def transform(self, pts: np.ndarray) -> np.ndarray:
    """Rotates points [N, 2] about the face centre by the pose angle."""
    c, s = math.cos(self.angle), math.sin(self.angle)
    d = np.asarray(pts, np.float64) - (self.cx, self.cy)
    return np.stack([self.cx + c * d[:, 0] - s * d[:, 1],
                     self.cy + s * d[:, 0] + c * d[:, 1]], axis=1)


def _geometry(identity: Sequence[float]) -> _Geometry:
  p = identity_dict(identity)
  face_a = 0.20 + 0.05 * p['face_width']
  face_b = 0.26 + 0.04 * p['face_height']
  cy = 0.50 + 0.06 * (p['pose_dy'] - 0.5)
  eye_rx = 0.042 + 0.016 * p['eye_size']
  return _Geometry(
      cx=0.5 + 0.06 * (p['pose_dx'] - 0.5),
      cy=cy,
      angle=math.radians(12.0 * (p['pose_angle'] - 0.5)),
      face_a=face_a,
      face_b=face_b,
      eye_y=cy - 0.22 * face_b,
      eye_dx=face_a * (0.40 + 0.12 * p['eye_spacing']),
      eye_rx=eye_rx,
      eye_ry=eye_rx * 0.62,
      brow_w=0.014 + 0.012 * p['brow_thickness'],
      nose_len=0.07 + 0.05 * p['nose_length'],
      nose_w=0.018 + 0.016 * p['nose_width'],
      mouth_y=cy + 0.52 * face_b,
      mouth_hw=face_a * (0.36 + 0.16 * p['mouth_width']),
      hair_style=hair_style_index(identity),
  )


def _ellipse(cx, cy, rx, ry, n=48, start=0.0, stop=2 * math.pi) -> np.ndarray:
  t = np.linspace(start, stop, n)
  return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], axis=1)


def _hsv(h: float, s: float, v: float) -> tuple[int, int, int]:
  r, g, b = colorsys.hsv_to_rgb(h % 1.0, s, v)
  return int(round(255 * r)), int(round(255 * g)), int(round(255 * b))


def _colours(identity, attributes) -> dict[str, tuple[int, int, int]]:
  p = identity_dict(identity)
  skin = (1 - p['skin_tone']) * _SKIN_LIGHT + p['skin_tone'] * _SKIN_DARK
  if attributes['grey_hair']:
    v = 145.0 + 60.0 * p['hair_shade']
    hair = np.array([v, v, v + 4.0])
  else:
    hair = (1 - p['hair_shade']) * _HAIR_DARK + p['hair_shade'] * _HAIR_BROWN
  brow = hair * 0.85
  as_rgb = lambda c: tuple(int(round(float(x))) for x in np.clip(c, 0, 255))
  return {
      'skin': as_rgb(skin),
      'skin_shadow': as_rgb(skin * 0.78),
      'neck': as_rgb(skin * 0.9),
      'hair': as_rgb(hair),
      'brow': as_rgb(brow),
      # Low-saturation background, so the lip-colour rule never fires on it.
      'background': _hsv(p['bg_hue'], 0.17 + 0.10 * p['bg_value'],
                         0.62 + 0.32 * p['bg_value']),
      'shirt': _hsv(p['shirt_hue'], 0.40, 0.55),
      # Iris hues from orange-brown (0.06) to blue (0.62), never red.
      'iris': _hsv(0.06 + 0.56 * p['iris_hue'], 0.55, 0.50),
  }


def _hair_back(g: _Geometry) -> list[np.ndarray]:
  """Hair polygons drawn behind the face."""
  polys = [_ellipse(g.cx, g.cy - 0.05, g.face_a + 0.045, g.face_b + 0.02,
                    start=math.pi, stop=2 * math.pi)]
  # Close the dome down to the ear line.
  polys[0] = np.concatenate(
      [polys[0], [[g.cx + g.face_a + 0.045, g.cy + 0.02],
                  [g.cx - g.face_a - 0.045, g.cy + 0.02]]])
  if g.hair_style == 1:  # long: falls to the shoulders
    x0, x1 = g.cx - g.face_a - 0.05, g.cx + g.face_a + 0.05
    polys.append(np.array([[x0, g.cy - 0.05], [x1, g.cy - 0.05],
                           [x1 + 0.01, g.cy + g.face_b + 0.12],
                           [x0 - 0.01, g.cy + g.face_b + 0.12]]))
  return polys


def _hair_front(g: _Geometry) -> list[np.ndarray]:
  """Fringe polygons drawn over the forehead."""
  if g.hair_style == 2:  # side part: a fringe sloping down to one side
    edge = _ellipse(g.cx, g.cy, g.face_a, g.face_b, n=40,
                    start=math.pi * 1.05, stop=math.pi * 1.95)
    ys = np.linspace(g.cy - 0.55 * g.face_b, g.cy - 0.78 * g.face_b,
                     len(edge))
    lower = np.stack([edge[:, 0], np.maximum(edge[:, 1], ys)], axis=1)
    return [np.concatenate([edge, lower[::-1]])]
  fringe_y = g.cy - (0.62 if g.hair_style == 0 else 0.68) * g.face_b
  arc = _ellipse(g.cx, g.cy, g.face_a + 0.004, g.face_b + 0.004, n=40,
                 start=math.pi, stop=2 * math.pi)
  arc = arc[arc[:, 1] <= fringe_y + 1e-9]
  return [np.concatenate([arc, [[arc[-1, 0], fringe_y],
                                [arc[0, 0], fringe_y]]])]


def _mouth_curve(g: _Geometry, smiling: int, n: int = 24) -> np.ndarray:
  """Centre line of the lips: a U with raised corners when smiling."""
  t = np.linspace(-1.0, 1.0, n)
  # Height of the centre below the corners: 0.05 canvas units for a smile;
  # a neutral mouth sags slightly at the corners instead.
  depth = 0.05 if smiling else -0.006
  y = g.mouth_y + depth * (1.0 - t ** 2) - (depth * 0.5 if smiling else 0.0)
  return np.stack([g.cx + g.mouth_hw * t, y], axis=1)


def _glasses_rims(g: _Geometry) -> tuple[list[np.ndarray], float]:
  r = g.eye_rx * 1.45 + 0.012
  rims = [_ellipse(g.cx + sx * g.eye_dx, g.eye_y, r, r * 0.8)
          for sx in (-1.0, 1.0)]
  return rims, r


def _draw(identity, attributes, size: int, supersample: int,
          region: str | None = None) -> Image.Image:
  """Draws a face (region None) or the white-on-black mask of a region."""
  g = _geometry(identity)
  col = _colours(identity, attributes)
  canvas = size * supersample
  mode = 'RGB' if region is None else 'L'
  img = Image.new(mode, (canvas, canvas),
                  col['background'] if region is None else 0)
  draw = ImageDraw.Draw(img)

  def px(pts):
    return [tuple(p) for p in (g.transform(pts) * canvas).tolist()]

  def poly(pts, fill):
    draw.polygon(px(pts), fill=fill)

  def line(pts, fill, width, closed=False):
    pts = np.asarray(pts)
    if closed:
      pts = np.concatenate([pts, pts[:1]])
    w = max(1, int(round(width * canvas)))
    draw.line(px(pts), fill=fill, width=w, joint='curve')
    # Round caps: PIL lines have square ends.
    for end in (pts[0], pts[-1]):
      c = g.transform(end[None])[0] * canvas
      draw.ellipse([c[0] - w / 2, c[1] - w / 2, c[0] + w / 2, c[1] + w / 2],
                   fill=fill)

  if region is not None:
    if region == 'smiling':
      # Both mouth shapes plus the cheeks they can pull.
      poly(_ellipse(g.cx, g.mouth_y, g.mouth_hw + 0.05, 0.085), 255)
    elif region == 'eyeglasses':
      rims, r = _glasses_rims(g)
      for rim_pts in rims:
        line(rim_pts, 255, 0.028 + 0.03, closed=True)
        poly(rim_pts, 255)
      line([[g.cx - g.eye_dx, g.eye_y], [g.cx + g.eye_dx, g.eye_y]], 255,
           0.06)
      line([[g.cx - g.face_a - 0.01, g.eye_y - 0.01],
            [g.cx + g.face_a + 0.01, g.eye_y - 0.01]], 255, 0.05)
    elif region == 'grey_hair':
      for p_ in _hair_back(g) + _hair_front(g):
        poly(p_, 255)
        line(p_, 255, 0.02, closed=True)
      for sx in (-1.0, 1.0):
        ex = g.cx + sx * g.eye_dx
        line([[ex - g.eye_rx, g.eye_y - g.eye_ry - 0.035],
              [ex + g.eye_rx, g.eye_y - g.eye_ry - 0.035]], 255,
             g.brow_w + 0.03)
    else:
      check_attribute(region)
    return img

  # Clothes and neck.
  poly(np.array([[g.cx - 0.40, 1.05], [g.cx - 0.30, g.cy + g.face_b + 0.10],
                 [g.cx + 0.30, g.cy + g.face_b + 0.10], [g.cx + 0.40, 1.05]]),
       col['shirt'])
  poly(np.array([[g.cx - 0.45 * g.face_a, g.cy + 0.5 * g.face_b],
                 [g.cx + 0.45 * g.face_a, g.cy + 0.5 * g.face_b],
                 [g.cx + 0.5 * g.face_a, g.cy + g.face_b + 0.12],
                 [g.cx - 0.5 * g.face_a, g.cy + g.face_b + 0.12]]),
       col['neck'])
  for p_ in _hair_back(g):
    poly(p_, col['hair'])
  # Ears, then the face.
  for sx in (-1.0, 1.0):
    poly(_ellipse(g.cx + sx * g.face_a, g.cy - 0.02, 0.03, 0.05),
         col['skin_shadow'])
  poly(_ellipse(g.cx, g.cy, g.face_a, g.face_b, n=72), col['skin'])
  for p_ in _hair_front(g):
    poly(p_, col['hair'])
  # Eyes and eyebrows.
  for sx in (-1.0, 1.0):
    ex = g.cx + sx * g.eye_dx
    poly(_ellipse(ex, g.eye_y, g.eye_rx, g.eye_ry), _EYE_WHITE_RGB)
    poly(_ellipse(ex, g.eye_y, g.eye_ry * 0.92, g.eye_ry * 0.92),
         col['iris'])
    poly(_ellipse(ex, g.eye_y, g.eye_ry * 0.35, g.eye_ry * 0.35), _PUPIL_RGB)
    by = g.eye_y - g.eye_ry - 0.035
    line([[ex - g.eye_rx, by + 0.008], [ex, by], [ex + g.eye_rx, by + 0.006]],
         col['brow'], g.brow_w)
  # Nose.
  ny = g.eye_y + 0.03
  line([[g.cx, ny], [g.cx - g.nose_w, ny + g.nose_len],
        [g.cx + g.nose_w * 0.6, ny + g.nose_len]], col['skin_shadow'], 0.013)
  # Mouth.
  line(_mouth_curve(g, attributes['smiling']), _LIP_RGB, 0.03)
  # Eyeglasses: two rims, a bridge and the temples.
  if attributes['eyeglasses']:
    rims, r = _glasses_rims(g)
    for rim_pts in rims:
      line(rim_pts, _FRAME_RGB, 0.028, closed=True)
    line([[g.cx - g.eye_dx + r, g.eye_y - 0.01],
          [g.cx + g.eye_dx - r, g.eye_y - 0.01]], _FRAME_RGB, 0.024)
    for sx in (-1.0, 1.0):
      line([[g.cx + sx * (g.eye_dx + r), g.eye_y - 0.01],
            [g.cx + sx * (g.face_a + 0.005), g.eye_y - 0.02]],
           _FRAME_RGB, 0.022)
  return img


# ----------------------------------------------------------------------------
# Landmarks in the WFLW 98-point layout (the FAN's output channels).

NUM_LANDMARKS = 98
# WFLW index ranges (half-open), image-left first as in WFLW annotations.
LANDMARK_GROUPS = {
    'contour': (0, 33),        # jaw line, image-left ear -> chin (16) -> right
    'left_brow': (33, 42),     # 33-37 upper edge outer -> inner, 38-41 lower
    'right_brow': (42, 51),    # 42-46 upper edge inner -> outer, 47-50 lower
    'nose_bridge': (51, 55),   # top -> tip, along the drawn nose line
    'nostrils': (55, 60),      # the nose's bottom stroke, left -> right
    'left_eye': (60, 68),      # 60 outer corner, 61-63 upper lid, 64 inner
    'right_eye': (68, 76),     # 68 inner corner, 69-71 upper lid, 72 outer
    'outer_lip': (76, 88),     # 76 left corner, 77-81 upper, 82 right corner
    'inner_lip': (88, 96),     # 88 left corner, 89-91 upper, 92 right corner
    'pupils': (96, 98),        # 96 left, 97 right
}


def _polyline_points(pts: np.ndarray, ts: Sequence[float]) -> np.ndarray:
  """Points at fractions `ts` of the arc length of a polyline [K, 2]."""
  pts = np.asarray(pts, np.float64)
  seg = np.linalg.norm(np.diff(pts, axis=0), axis=1)
  cum = np.concatenate([[0.0], np.cumsum(seg)])
  out = []
  for t in ts:
    d = float(t) * cum[-1]
    k = min(int(np.searchsorted(cum, d, side='right')) - 1, len(seg) - 1)
    f = 0.0 if seg[k] == 0 else (d - cum[k]) / seg[k]
    out.append(pts[k] + f * (pts[k + 1] - pts[k]))
  return np.asarray(out)


def landmarks(identity: Sequence[float], attributes: Mapping[str, int]
              ) -> np.ndarray:
  """The 98 WFLW-layout landmarks of a face, from its drawing geometry.

  Points lie on the drawn features (face ellipse, eyebrow strokes, nose
  stroke, eye ellipses, the lip stroke's edges and centre line, pupil
  centres) and follow the pose rotation; only the mouth depends on the
  attributes (`smiling`). Eyeglasses and hair do not move any landmark.

  Returns:
    float64 [98, 2] (x, y) in canvas units: (0, 0) is the top-left corner of
    the image and (1, 1) its bottom-right corner, so pixel-centre coordinates
    at size S are `landmarks * S - 0.5`.
  """
  missing = [a for a in ATTRIBUTES if a not in attributes]
  if missing:
    raise ValueError(f'attributes lack {missing}; expected keys {ATTRIBUTES}')
  g = _geometry(identity)
  pts = np.zeros((NUM_LANDMARKS, 2), np.float64)
  # Jaw: the face ellipse from the left (angle pi) over the chin (pi / 2,
  # y grows downwards) to the right (0).
  t = np.linspace(math.pi, 0.0, 33)
  pts[0:33] = np.stack([g.cx + g.face_a * np.cos(t),
                        g.cy + g.face_b * np.sin(t)], axis=1)
  # Eyebrows: the stroke [outer end, middle, inner end] +- half its width.
  for sx, (a, _) in ((-1.0, LANDMARK_GROUPS['left_brow']),
                     (1.0, LANDMARK_GROUPS['right_brow'])):
    ex = g.cx + sx * g.eye_dx
    by = g.eye_y - g.eye_ry - 0.035
    line = np.array([[ex - g.eye_rx, by + 0.008], [ex, by],
                     [ex + g.eye_rx, by + 0.006]])
    half = np.array([0.0, g.brow_w / 2])
    upper = _polyline_points(line, np.linspace(0, 1, 5)) - half
    lower = _polyline_points(line, np.linspace(0.75, 0.0, 4)[::-1]) + half
    if sx < 0:  # left brow: 33-37 upper outer (left) -> inner (right),
      pts[a:a + 5] = upper  # 38-41 lower inner -> outer
      pts[a + 5:a + 9] = lower[::-1]
    else:  # right brow: 42-46 upper inner (left) -> outer, 47-50 lower
      pts[a:a + 5] = upper  # outer -> inner
      pts[a + 5:a + 9] = _polyline_points(line, np.linspace(1.0, 0.25, 4)
                                          ) + half
  # Nose: the stroke top -> bottom-left corner, then the bottom stroke.
  ny = g.eye_y + 0.03
  pts[51:55] = _polyline_points(
      np.array([[g.cx, ny], [g.cx - g.nose_w, ny + g.nose_len]]),
      np.linspace(0.0, 0.9, 4))
  pts[55:60] = _polyline_points(
      np.array([[g.cx - g.nose_w, ny + g.nose_len],
                [g.cx + g.nose_w * 0.6, ny + g.nose_len]]),
      np.linspace(0.0, 1.0, 5))
  # Eyes: corners and lids on the eye ellipse; same angles for both eyes
  # (first point at the image-left corner, then over the upper lid).
  ang = np.array([1.0, 0.75, 0.5, 0.25, 0.0, -0.25, -0.5, -0.75]) * math.pi
  for sx, a in ((-1.0, 60), (1.0, 68)):
    ex = g.cx + sx * g.eye_dx
    pts[a:a + 8] = np.stack([ex + g.eye_rx * np.cos(ang),
                             g.eye_y - g.eye_ry * np.sin(ang)], axis=1)
    pts[96 if sx < 0 else 97] = (ex, g.eye_y)
  # Lips: the stroke (width 0.03, round caps) of the mouth curve.
  curve = _mouth_curve(g, attributes['smiling'], n=49)
  half_w = 0.015
  def on_curve(u, dy=0.0, dx=0.0):  # u in [-1, 1] along the curve
    p = _polyline_points(curve, [(u + 1.0) / 2.0])[0]
    return p + (dx, dy)
  pts[76] = on_curve(-1.0, dx=-half_w)
  for k, u in enumerate(np.linspace(-2 / 3, 2 / 3, 5)):
    pts[77 + k] = on_curve(u, dy=-half_w)
  pts[82] = on_curve(1.0, dx=half_w)
  for k, u in enumerate(np.linspace(2 / 3, -2 / 3, 5)):
    pts[83 + k] = on_curve(u, dy=half_w)
  pts[88] = on_curve(-0.9)
  for k, u in enumerate((-0.5, 0.0, 0.5)):
    pts[89 + k] = on_curve(u, dy=-0.004)
  pts[92] = on_curve(0.9)
  for k, u in enumerate((0.5, 0.0, -0.5)):
    pts[93 + k] = on_curve(u, dy=0.004)
  return g.transform(pts)


def landmark_arrays(identity: np.ndarray, smiling: np.ndarray) -> np.ndarray:
  """Batched `landmarks`: identity [N, D], smiling [N] -> float32 [N, 98, 2]."""
  out = [landmarks(v, {'smiling': int(s), 'eyeglasses': 0, 'grey_hair': 0})
         for v, s in zip(np.asarray(identity), np.asarray(smiling))]
  return np.asarray(out, np.float32).reshape(-1, NUM_LANDMARKS, 2)


def _supersample(size: int) -> int:
  return 4 if size <= 128 else 2


def check_image_size(image_size: int) -> None:
  """Raises ValueError unless `image_size` is an integer in [16, 512]."""
  if not isinstance(image_size, (int, np.integer)) or not (
      16 <= image_size <= 512):
    raise ValueError(f'image_size must be an integer in [16, 512], got '
                     f'{image_size!r}')


def render_face(identity: Sequence[float], attributes: Mapping[str, int],
                image_size: int = 64) -> np.ndarray:
  """Renders one face.

  Args:
    identity: identity vector [IDENTITY_DIM] in [0, 1].
    attributes: {'smiling', 'eyeglasses', 'grey_hair'} -> 0/1.
    image_size: output side in pixels.

  Returns:
    uint8 [image_size, image_size, 3].
  """
  check_image_size(image_size)
  missing = [a for a in ATTRIBUTES if a not in attributes]
  if missing:
    raise ValueError(f'attributes lack {missing}; expected keys {ATTRIBUTES}')
  img = _draw(identity, attributes, image_size, _supersample(image_size))
  img = img.resize((image_size, image_size), Image.LANCZOS)
  return np.asarray(img, np.uint8)


def attribute_region_mask(identity: Sequence[float], attribute: str,
                          image_size: int = 64,
                          dilate_px: int = 1) -> np.ndarray:
  """Where the attribute may change the image, from the rendering geometry.

  The mask covers the attribute's pixels for both of its values (the mouth for
  `smiling`, the frames and the eye band for `eyeglasses`, all hair and the
  eyebrows for `grey_hair`), dilated by `dilate_px` output pixels.

  Returns:
    float32 [image_size, image_size] in {0, 1}; 1 = inside the region.
  """
  check_image_size(image_size)
  check_attribute(attribute)
  attrs = {a: 0 for a in ATTRIBUTES}
  img = _draw(identity, attrs, image_size, _supersample(image_size),
              region=attribute)
  img = img.resize((image_size, image_size), Image.BOX)
  if dilate_px > 0:
    img = img.filter(ImageFilter.MaxFilter(2 * dilate_px + 1))
  return (np.asarray(img) > 0).astype(np.float32)


def generate_arrays(num: int, image_size: int = 64, seed: int = 0,
                    split: str = 'train', start: int = 0) -> dict[str, Any]:
  """Generates examples [start, start + num) of a split as numpy arrays.

  Returns:
    {'image': uint8 [N, S, S, 3], 'identity': float32 [N, IDENTITY_DIM],
     'hair_style': int32 [N], 'index': int64 [N], and one int32 [N] array per
     attribute}.
  """
  _check_split(split)
  check_image_size(image_size)
  if num < 0:
    raise ValueError(f'num must be >= 0, got {num}')
  images = np.zeros((num, image_size, image_size, 3), np.uint8)
  identity = np.zeros((num, IDENTITY_DIM), np.float32)
  labels = {a: np.zeros((num,), np.int32) for a in ATTRIBUTES}
  styles = np.zeros((num,), np.int32)
  for k in range(num):
    ident, attrs = sample_face(seed, split, start + k)
    images[k] = render_face(ident, attrs, image_size)
    identity[k] = ident
    styles[k] = hair_style_index(ident)
    for a in ATTRIBUTES:
      labels[a][k] = attrs[a]
  out = {'image': images, 'identity': identity, 'hair_style': styles,
         'index': np.arange(start, start + num, dtype=np.int64)}
  out.update(labels)
  return out


def generate_counterfactuals(num: int, image_size: int, seed: int,
                             split: str, attribute: str, start: int = 0
                             ) -> np.ndarray:
  """Examples [start, start + num) re-rendered with `attribute` flipped.

  The exact counterfactual of each face: same identity vector and other
  attributes, the attribute's value inverted. Returns uint8 [N, S, S, 3].
  """
  check_attribute(attribute)
  _check_split(split)
  check_image_size(image_size)
  out = np.zeros((num, image_size, image_size, 3), np.uint8)
  for k in range(num):
    ident, attrs = sample_face(seed, split, start + k)
    attrs = {**attrs, attribute: 1 - attrs[attribute]}
    out[k] = render_face(ident, attrs, image_size)
  return out


def preserved_targets(arrays: Mapping[str, np.ndarray],
                      attribute: str) -> np.ndarray:
  """What an edit of `attribute` must keep: identity and other attributes.

  Args:
    arrays: a `generate_arrays` dict.
    attribute: the edited attribute.

  Returns:
    float32 [N, IDENTITY_DIM + len(ATTRIBUTES) - 1].
  """
  check_attribute(attribute)
  others = [arrays[a] for a in ATTRIBUTES if a != attribute]
  return np.concatenate(
      [np.asarray(arrays['identity'], np.float32),
       np.stack(others, axis=1).astype(np.float32)], axis=1)


def region_masks(identity: np.ndarray, attribute: str, image_size: int,
                 dilate_px: int = 1) -> np.ndarray:
  """Batched `attribute_region_mask`: identity [N, D] -> float32 [N, S, S]."""
  return np.stack([attribute_region_mask(v, attribute, image_size, dilate_px)
                   for v in np.asarray(identity)])
