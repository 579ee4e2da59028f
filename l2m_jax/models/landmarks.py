"""A small landmark-heatmap network in the FAN's output layout, and its masks.

L2M-GAN gates the generator's high-pass skips with two masks that a frozen
FAN landmark network (`l2m_jax.models.fan`, 98 WFLW landmarks) and a fixed
post-processing (`fan.heatmaps_to_masks`) make from the source image. The FAN
weights of the paper were trained on real photos; for the generated faces
of `l2m_jax.datasets.synthetic_faces`, whose landmarks are known from the
drawing geometry, `LandmarkNet` is trained in place of the FAN and produces
heatmaps in the FAN's layout: [N, 64, 64, 98], channel k = WFLW landmark k
(the FAN's 99th, boundary channel is not produced; `get_masks` drops it).

Target heatmaps are Gaussians (sigma `SIGMA` heatmap pixels, peak 1) centred
where the FAN post-processing's x4 align_corners=True upsampling maps the
landmark onto its 256-px mask pixel, so the masks lie on the features.

`generator_masks` turns heatmaps into the masks the generator reads. It is
the post-processing of `fan.get_masks` (bilinear x4 upsampling, truncation,
per-channel min-max, the per-part row rolls and powers, channel sums,
clamp), evaluated only at the mask pixels that the generator's bilinear
resize reads: at 32 px the decoder reads M_1 through a 256 -> 32 resize, the
mean of rows and columns {8d + 3, 8d + 4}; the decimated 64 x 64 mask of
exactly those pixels resizes to the same 32 x 32 values. This is about 16
times less work than the full 256 x 256 x 98 post-processing (which costs
more than the 32-px generator itself on a CPU) and equals it (tested against
`fan.heatmaps_to_masks`); the per-channel minima and maxima are taken over
the full upsampled grid, at the rows and columns where a bilinear
interpolant's extremes can lie.
"""

from __future__ import annotations

import functools
from typing import Any, Mapping

from flax import linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from l2m_jax.models import fan
from l2m_jax.models import preservation

NUM_LANDMARKS = fan.NUM_LANDMARKS  # 98 (WFLW)
HEATMAP_SIZE = fan.HEATMAP_SIZE  # 64
MASK_SIZE = fan.MASK_SIZE  # 256
SIGMA = 1.5  # target Gaussian std, heatmap pixels
FORMAT = 'landmark_heatmaps'  # meta.json format of a saved LandmarkNet


def _flip_permutation() -> np.ndarray:
  """WFLW index of each landmark's mirror image (left <-> right)."""
  pairs = [(k, 32 - k) for k in range(16)]  # jaw
  pairs += [(33, 46), (34, 45), (35, 44), (36, 43), (37, 42),  # brows
            (38, 50), (39, 49), (40, 48), (41, 47)]
  pairs += [(55, 59), (56, 58)]  # nostrils
  pairs += [(60, 72), (61, 71), (62, 70), (63, 69), (64, 68),  # eyes
            (65, 75), (66, 74), (67, 73)]
  pairs += [(76, 82), (77, 81), (78, 80), (83, 87), (84, 86),  # lips
            (88, 92), (89, 91), (93, 95), (96, 97)]
  perm = np.arange(NUM_LANDMARKS)
  for a, b in pairs:
    perm[a], perm[b] = b, a
  return perm


# Landmarks of a horizontally flipped face: flip_points(p) = (1 - x, y) of
# p[FLIP_PERMUTATION] (the image-left eye becomes the image-right one).
FLIP_PERMUTATION = _flip_permutation()


def flip_points(points: np.ndarray) -> np.ndarray:
  """Landmarks [..., 98, 2] (canvas units) of the mirrored images."""
  p = np.asarray(points)[..., FLIP_PERMUTATION, :].copy()
  p[..., 0] = 1.0 - p[..., 0]
  return p


@functools.lru_cache(maxsize=None)
def mean_face() -> np.ndarray:
  """[98, 2] landmarks (canvas units) of the mean generated face.

  The identity vector 0.5 with a neutral mouth; `LandmarkNet` regresses
  offsets from it.
  """
  from l2m_jax.datasets import synthetic_faces  # pylint: disable=g-import-not-at-top
  return synthetic_faces.landmarks(
      np.full(synthetic_faces.IDENTITY_DIM, 0.5),
      {a: 0 for a in synthetic_faces.ATTRIBUTES}).astype(np.float32)


class LandmarkNet(nn.Module):
  """Landmark regressor with a heatmap output layer: images -> FAN heatmaps.

  Input [N, S, S, 3] in [-1, 1] (bilinearly resized to `input_size` when S
  differs, as the FAN resizes to 256). Like the FAN's CoordConv it appends
  the row/column/radius channels (`fan.coord_channels`) to the input; four
  stride-2 3x3 convs (GroupNorm, ReLU) and two dense layers regress the 98
  landmark positions, and the output layer draws each as a Gaussian (sigma
  `SIGMA`, peak 1) on the 64 x 64 grid: [N, 64, 64, 98] float32, the FAN's
  layout. `points` returns the regressed positions (canvas units) instead.

  Deviation from the FAN: the positions are regressed and then rendered
  (a direct 64 x 64 x 98 heatmap decoder costs ~50 times more per training
  step on a CPU and was less accurate within the same budget).
  """
  width: int = 16
  input_size: int = 32
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, points: bool = False):
    x = jnp.asarray(x, jnp.float32)
    if x.ndim != 4 or x.shape[-1] != 3 or x.shape[1] != x.shape[2]:
      raise ValueError('LandmarkNet expects square RGB images [N, S, S, 3] in '
                       f'[-1, 1], got shape {tuple(x.shape)}')
    s = self.input_size
    if x.shape[1] != s:
      x = fan.resize_bilinear(x, s, align_corners=False)
    coords = jnp.asarray(fan.coord_channels(s, s), x.dtype)
    h = jnp.concatenate(
        [x, jnp.broadcast_to(coords[None], (x.shape[0], s, s, 3))], axis=-1)
    h = preservation.strided_conv_stages(h.astype(self.dtype), self.width,
                                         nn.relu, self.dtype)[-1]
    h = h.reshape(h.shape[0], -1)
    h = nn.relu(nn.Dense(16 * self.width, dtype=self.dtype, name='fc')(h))
    out = nn.Dense(2 * NUM_LANDMARKS, dtype=self.dtype, name='points',
                   kernel_init=nn.initializers.zeros)(h)
    # Offsets from the mean face (canvas units), so training starts there.
    pts = (jnp.asarray(mean_face(), jnp.float32) +
           out.astype(jnp.float32).reshape(-1, NUM_LANDMARKS, 2))
    if points:
      return pts
    return render_heatmaps(pts)


def render_heatmaps(points, sigma: float = SIGMA):
  """Gaussian heatmaps [N, 64, 64, L] (peak 1) of positions [N, L, 2] (canvas).

  The differentiable jnp twin of `heatmap_targets`.
  """
  h = (jnp.asarray(points, jnp.float32) * MASK_SIZE - 0.5) * (
      (HEATMAP_SIZE - 1) / (MASK_SIZE - 1))
  g = jnp.arange(HEATMAP_SIZE, dtype=jnp.float32)
  gx = jnp.exp(-0.5 * ((g[None, None, :] - h[..., 0:1]) / sigma) ** 2)
  gy = jnp.exp(-0.5 * ((g[None, None, :] - h[..., 1:2]) / sigma) ** 2)
  return jnp.einsum('nlh,nlw->nhwl', gy, gx)


def model_from_variables(variables: Mapping[str, Any]) -> LandmarkNet:
  """The LandmarkNet whose parameters these are (sizes from the shapes).

  The width is conv0's output channels; the input size follows from the
  dense layer's input, (input_size / 16)^2 * 4 * width.
  """
  try:
    p = variables['params']
    width = int(p['conv0']['kernel'].shape[-1])
    fc_in = int(p['fc']['kernel'].shape[0])
  except (KeyError, TypeError, AttributeError) as e:
    raise ValueError('not LandmarkNet variables: expected params/conv0 and '
                     f'params/fc (top-level keys {sorted(variables)})') from e
  side = int(round((fc_in / (4 * width)) ** 0.5))
  if side * side * 4 * width != fc_in:
    raise ValueError(f'not LandmarkNet variables: fc input {fc_in} is not '
                     f'(input_size / 16)^2 * {4 * width}')
  return LandmarkNet(width=width, input_size=16 * side)


def heatmap_coordinates(points: np.ndarray) -> np.ndarray:
  """Canvas-unit landmarks [..., 2] -> heatmap-grid positions [..., 2] (x, y).

  A point at canvas unit u lies on 256-px mask pixel m = 256 u - 0.5; the
  post-processing's align_corners=True upsampling puts heatmap pixel h on
  mask pixel 255 h / 63, so h = m * 63 / 255.
  """
  m = np.asarray(points, np.float64) * MASK_SIZE - 0.5
  return m * (HEATMAP_SIZE - 1) / (MASK_SIZE - 1)


def heatmap_targets(points: np.ndarray, sigma: float = SIGMA) -> np.ndarray:
  """Gaussian target heatmaps [N, 64, 64, 98] (peak 1) of points [N, 98, 2]."""
  h = heatmap_coordinates(points)  # [N, L, 2]
  g = np.arange(HEATMAP_SIZE, dtype=np.float64)
  dx = g[None, None, :] - h[..., 0:1]  # [N, L, W]
  dy = g[None, None, :] - h[..., 1:2]  # [N, L, H]
  gx = np.exp(-0.5 * (dx / sigma) ** 2)
  gy = np.exp(-0.5 * (dy / sigma) ** 2)
  out = np.einsum('nlh,nlw->nhwl', gy, gx)
  return out.astype(np.float32)


def heatmap_peaks(heatmaps: np.ndarray) -> np.ndarray:
  """Argmax position (x, y) of every channel: [N, 64, 64, L] -> [N, L, 2]."""
  hm = np.asarray(heatmaps)
  n, _, w, l = hm.shape
  flat = hm.reshape(n, -1, l).argmax(axis=1)  # [N, L]
  return np.stack([flat % w, flat // w], axis=-1).astype(np.float64)


# ---------------------------------------------------------------------------
# Masks: the fan.get_masks post-processing at the pixels the generator reads.
# ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _channel_terms() -> tuple[tuple[tuple[int, int], ...], ...]:
  """Per landmark channel, the (row roll, power) terms it adds to M_1.

  Built from `fan`'s own tables in the order `heatmaps_to_masks` applies
  them (part ops, zeroed channels, nose, eyes); untouched channels add v.
  """
  terms: list[list[tuple[int, int]]] = [[(0, 1)] for _ in range(NUM_LANDMARKS)]
  for a, b, k, p in fan._PART_OPS:  # pylint: disable=protected-access
    for c in range(a, b):
      terms[c] = [(k, p)]
  for a, b in fan._ZEROED:  # pylint: disable=protected-access
    for c in range(a, b):
      terms[c] = []
  a, b, k = fan._NOSE  # pylint: disable=protected-access
  for c in range(a, b):
    terms[c] = [(k, 1)]
  a, b, k1, p, k2 = fan._EYES  # pylint: disable=protected-access
  for c in range(a, b):
    terms[c] = [(k1, p), (k2, 1)]
  return tuple(tuple(t) for t in terms)


@functools.lru_cache(maxsize=None)
def _not_in_m2() -> frozenset[int]:
  return frozenset(c for a, b in fan._NOT_IN_M2 for c in range(a, b))  # pylint: disable=protected-access


@functools.lru_cache(maxsize=None)
def _runs() -> tuple[tuple[int, int, tuple[int, int], bool], ...]:
  """(first, last + 1, (roll, power), in M_2) for runs of alike channels."""
  out = []
  terms = _channel_terms()
  for t in sorted({t for ts in terms for t in ts}):
    chans = [c for c in range(NUM_LANDMARKS) if t in terms[c]]
    for c in chans:
      key = c not in _not_in_m2()
      if out and out[-1][2] == t and out[-1][1] == c and out[-1][3] == key:
        out[-1][1] = c + 1
      else:
        out.append([c, c + 1, t, key])
  return tuple((a, b, t, k) for a, b, t, k in out)


@functools.lru_cache(maxsize=None)
def _extreme_samples(in_size: int, out_size: int) -> np.ndarray:
  """Output indices that hold every interval's extremes after upsampling.

  An align_corners=True linear interpolant is linear between input nodes,
  so over the output samples that fall between two nodes its minimum and
  maximum are at the first or the last of them; a bilinear interpolant's,
  at one of those rows and one of those columns.
  """
  src = np.arange(out_size) * (in_size - 1) / (out_size - 1)
  cell = np.minimum(np.floor(src + 1e-9).astype(np.int64), in_size - 1)
  keep = []
  for c in np.unique(cell):
    idx = np.nonzero(cell == c)[0]
    keep += [idx[0], idx[-1]]
  return np.unique(np.asarray(keep, np.int64))


def _decimated_rows(size: int) -> np.ndarray:
  """256-px mask rows that a 256 -> `size` half-pixel bilinear resize reads.

  Source (d + 0.5) * k - 0.5 with k = 256 / size lies halfway between rows
  k d + (k - 1) / 2 -+ 1 / 2, each weighted 1/2; rows in output order.
  """
  k = MASK_SIZE // size
  d = np.arange(size)
  lo = k * d + (k - 2) // 2
  return np.stack([lo, lo + 1], axis=1).reshape(-1)


@functools.lru_cache(maxsize=None)
def _taps(in_size: int, out_size: int
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """The two taps and weights of each row of `fan.bilinear_matrix(.., True)`."""
  m = fan.bilinear_matrix(in_size, out_size, True)
  i0 = np.argmax(m != 0, axis=1)
  i1 = np.minimum(i0 + 1, in_size - 1)
  w0 = m[np.arange(out_size), i0]
  w1 = np.where(i1 != i0, m[np.arange(out_size), i1], 0.0)
  return i0, i1, w0.astype(np.float32), w1.astype(np.float32)


def _upsampled(heat, rows: np.ndarray, cols: np.ndarray):
  """Values of the x4 align_corners=True upsampled heatmaps at rows x cols.

  The same interpolation as `fan.resize_bilinear` (two taps per axis, the
  weights of `fan.bilinear_matrix`), gathered only where needed.
  """
  # The barriers keep XLA from fusing the gathers into the consumers (a
  # reduction over gathered values runs ~5x slower on the CPU backend).
  barrier = jax.lax.optimization_barrier
  i0, i1, w0, w1 = (a[rows] for a in _taps(HEATMAP_SIZE, MASK_SIZE))
  x = barrier(heat[:, i0] * w0[None, :, None, None] +
              heat[:, i1] * w1[None, :, None, None])
  j0, j1, v0, v1 = (a[cols] for a in _taps(HEATMAP_SIZE, MASK_SIZE))
  return barrier(x[:, :, j0] * v0[None, None, :, None] +
                 x[:, :, j1] * v1[None, None, :, None])


def _min_max(heat):
  """Per-channel min and max of the truncated 256-px heatmaps [N, 1, 1, 98]."""
  ext = _extreme_samples(HEATMAP_SIZE, MASK_SIZE)
  full = _upsampled(heat, ext, ext)
  full = jnp.where(full < fan.TRUNCATE, 0.0, full)
  return (jnp.min(full, axis=(1, 2), keepdims=True),
          jnp.max(full, axis=(1, 2), keepdims=True))


def masks_at(heatmaps, size: int, min_max=None):
  """(M_1, M_2) of `fan.get_masks` at the pixels a 256 -> size resize reads.

  Args:
    heatmaps: [N, 64, 64, 98] landmark heatmaps (FAN layout).
    size: generator feature size the masks are resized to (32, 64 or 128).
    min_max: optional `_min_max(heatmaps)`, when already computed.

  Returns:
    (m1, m2), each [N, 2 size, 2 size, 1] float32: the 256 x 256 masks of
    `fan.heatmaps_to_masks(fan.resize_bilinear(heatmaps, 256, True))` at
    rows and columns `_decimated_rows(size)`. A half-pixel bilinear resize
    to `size` (what the generator does) gives the same values as resizing
    the full 256-px masks.
  """
  heat = jnp.asarray(heatmaps, jnp.float32)
  if heat.ndim != 4 or heat.shape[1:] != (HEATMAP_SIZE, HEATMAP_SIZE,
                                          NUM_LANDMARKS):
    raise ValueError(f'heatmaps must be [N, {HEATMAP_SIZE}, {HEATMAP_SIZE}, '
                     f'{NUM_LANDMARKS}], got shape {tuple(heat.shape)}')
  if size not in (32, 64, 128):
    raise ValueError(f'mask size must be 32, 64 or 128, got {size}')
  # a./b. Truncation and per-channel min-max over the full 256 x 256 grid
  # (all channels: static slices along the channel axis are cheap, gathers
  # along it are not).
  lo, hi = _min_max(heat) if min_max is None else min_max
  rows = _decimated_rows(size)
  m1 = 0.0
  m2 = 0.0
  # c.-f. One evaluation per run of channels with the same (roll, power)
  # term and M_2 membership; rolled rows are (r - k) mod 256.
  for a, b, (k, p), in_m2 in _runs():
    v = _upsampled(heat[..., a:b], (rows - k) % MASK_SIZE, rows)
    v = jnp.where(v < fan.TRUNCATE, 0.0, v)
    v = ((v - lo[..., a:b]) / (hi[..., a:b] - lo[..., a:b] + fan.NORM_EPS)
         ) ** p
    v = jnp.sum(v, axis=-1, keepdims=True)
    m1 = m1 + v
    if in_m2:
      m2 = m2 + v
  m1 = jnp.where(jnp.isnan(m1), 0.0, m1)
  return jnp.clip(m1, 0.0, 1.0), jnp.clip(m2, 0.0, 1.0)


def generator_masks(heatmaps, img_size: int):
  """The (M_1, M_2) pair to pass to a generator of `img_size` px.

  For 32 px the decoder reads only M_1 at 32 px (both masks are returned
  decimated for 32 px) and for 64 px M_1 at 32 and M_2 at 64, so the
  decimated masks of `masks_at` give the generator exactly what the 256-px
  masks would; larger models get the full 256-px masks of
  `fan.heatmaps_to_masks`.
  """
  if img_size <= 64:
    heat = jnp.asarray(heatmaps, jnp.float32)
    min_max = _min_max(heat)
    m1, m2 = masks_at(heat, 32, min_max)
    if img_size == 64:  # M_2 is read at 64 px (at 32 px it is never read)
      _, m2 = masks_at(heat, 64, min_max)
    return m1, m2
  heat = fan.resize_bilinear(jnp.asarray(heatmaps, jnp.float32), MASK_SIZE,
                             align_corners=True)
  return fan.heatmaps_to_masks(heat)


def get_masks(variables: Mapping[str, Any], x, img_size: int | None = None):
  """`fan.get_masks` with a LandmarkNet: images [N, S, S, 3] -> (M_1, M_2).

  Gradients are stopped. `img_size` (default S) selects the mask layout of
  `generator_masks`.
  """
  variables = jax.lax.stop_gradient(variables)
  x = jax.lax.stop_gradient(jnp.asarray(x, jnp.float32))
  heat = model_from_variables(variables).apply(variables, x)
  m1, m2 = generator_masks(heat, int(img_size or x.shape[1]))
  return jax.lax.stop_gradient(m1), jax.lax.stop_gradient(m2)


def masks_from_frozen(frozen: Mapping[str, Any], x, img_size: int | None =
                      None):
  """Masks from whichever landmark network `frozen` holds.

  `frozen['landmarks']` (a LandmarkNet) takes precedence over
  `frozen['fan']` (the FAN of the paper).
  """
  if 'landmarks' in frozen:
    return get_masks(frozen['landmarks'], x, img_size)
  return fan.get_masks(frozen['fan'], x)
