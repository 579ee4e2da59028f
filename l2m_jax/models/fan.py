"""FAN (wing) 98-landmark network and the L2M-GAN face-part masks.

L2M-GAN (Yang et al., "L2M-GAN: Learning to Manipulate Latent Space Semantics
for Facial Attribute Editing", CVPR 2021) inherits from StarGAN v2 (Choi et
al., CVPR 2020) a frozen FAN landmark network, `nets.fan` (original file
`core/wing.py`), whose heatmaps are turned into two soft masks M_1 / M_2 that
gate the generator's high-pass skip connections. See
docs/method.md#l2m-fan-masks (architecture, `get_heatmap`),
docs/architecture.md#ckpt-nets-ema (parameters), docs/method.md#l2m-numerics
(numerics).

Parameter mapping (PyTorch state_dict key -> Flax path; `converter` =
`l2m_jax.convert.fan`). Every `.` becomes `/`; Conv2d `weight` -> `kernel`
(OIHW -> HWIO), BatchNorm `weight`/`bias` -> params `scale`/`bias`,
`running_mean`/`running_var` -> batch_stats `mean`/`var`,
`num_batches_tracked` is dropped; the ConvBlock shortcut Sequential
`downsample.0` (BN) / `downsample.2` (1x1 conv) become `downsample_0` /
`downsample_2`:

  conv1.conv.{weight,bias}           conv1/conv/{kernel,bias}  (CoordConv 7x7/2)
  bn1.*                              bn1/*
  conv2|conv3|conv4.<block>          conv2|conv3|conv4/<block>  (ConvBlock)
  m0.coordconv.conv.{weight,bias}    m0/coordconv/conv/{kernel,bias}
  m0.b1_4 ... m0.b3_1, m0.b2_plus_1  m0/b1_4 ... m0/b3_1, m0/b2_plus_1
  top_m_0.<block>                    top_m_0/<block>
  conv_last0.{weight,bias}           conv_last0/{kernel,bias}
  bn_end0.*                          bn_end0/*
  l0.{weight,bias}                   l0/{kernel,bias}
  <block> = bn1, conv1, bn2, conv2, bn3, conv3 [, downsample_0, downsample_2]

The CoordConv coordinate channels (xx = row, yy = column, both mapped to
[-1, 1], rr = sqrt(xx^2 + yy^2) / max) are not parameters; they are constants
computed here, on a 256x256 grid for `conv1` and a 64x64 grid for
`m0/coordconv`.

Numerics (docs/method.md#l2m-numerics):

* All convolutions use explicit zero padding: (3, 3) for the 7x7 stride-2
  `conv1` ('SAME' would pad (2, 3) and shift the output by half a pixel),
  (1, 1) for the 3x3 convs, none for 1x1.
* BatchNorm runs in eval mode only: (x - running_mean) / sqrt(running_var +
  1e-5) * weight + bias. There is no training mode; the FAN is frozen.
* Average pooling is 2x2 / stride 2 without padding; the hourglass's
  nearest x2 upsampling is exact pixel duplication (`jnp.repeat`), not a
  generic resize.
* `get_masks` needs two bilinear rules that `jax.image.resize` does not
  provide, so both are applied as separable interpolation matrices
  (`bilinear_matrix`), built in numpy at trace time with float32 source
  coordinates and weights computed as torch computes them:
  - input resize S -> 256: align_corners=False, no antialias (source
    coordinate (d + 0.5) * S / 256 - 0.5, clamped below at 0), as torch's
    `F.interpolate(mode='bilinear')`; at S = 256 the matrix is the identity
    and the step is skipped. `jax.image.resize` antialiases when
    downsampling and would not match.
  - heatmap upsample 64 -> 256: align_corners=True (source d * 63 / 255).
  A matrix product sums the two taps in a different order than torch's
  kernel, so results agree to float32 rounding (~1e-7 relative), not bits.
  Values that land within rounding of the 0.1 truncation threshold can
  therefore flip between the two implementations (see tests/test_fan.py).
* Mask post-processing (`heatmaps_to_masks`) is computed in float32 with
  the row roll `jnp.roll(v, k, axis=1)` (positive k moves content down,
  wrapping around); the original helper's `shift(v, n)` equals
  `roll(v, -n)`.
"""

from __future__ import annotations

import functools
from typing import Any, Mapping

from flax import linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from l2m_jax.models import layers

NUM_LANDMARKS = 98  # WFLW 98-point scheme; plus one boundary map
FAN_SIZE = 256  # the FAN's input resolution
HEATMAP_SIZE = 64  # the FAN's output resolution
MASK_SIZE = 256  # resolution of M_1 / M_2
BN_EPS = 1e-5
# heatmap values below this are zeroed (docs/method.md#l2m-fan-masks)
TRUNCATE = 0.1
NORM_EPS = 1e-6  # min-max denominator epsilon (docs/method.md#l2m-fan-masks)


def coord_channels(height: int, width: int, with_r: bool = True
                   ) -> np.ndarray:
  """CoordConv constant channels [H, W, 2 or 3]: xx (row), yy (col), rr."""
  xx = np.arange(height, dtype=np.float64) / (height - 1) * 2 - 1
  yy = np.arange(width, dtype=np.float64) / (width - 1) * 2 - 1
  xx, yy = np.meshgrid(xx, yy, indexing='ij')
  chans = [xx, yy]
  if with_r:
    rr = np.sqrt(xx * xx + yy * yy)
    chans.append(rr / rr.max())
  return np.stack(chans, -1).astype(np.float32)


def _batch_norm(dtype: Any) -> nn.BatchNorm:
  # Deviation from PyTorch: eval mode only (running statistics); the FAN is
  # frozen in L2M-GAN, so there is no train-mode BatchNorm path.
  return nn.BatchNorm(use_running_average=True, momentum=0.9, epsilon=BN_EPS,
                      dtype=dtype)


_conv = layers.torch_conv


class CoordConv(nn.Module):
  """AddCoords (with r) on a fixed grid, then the conv `conv` (CoordConvTh).

  Attributes:
    grid: the grid size the coordinates are built for (input must match).
    features, kernel, stride, pad: of the conv.
  """
  grid: int
  features: int
  kernel: int
  stride: int = 1
  pad: int = 0
  dtype: Any = jnp.float32

  def setup(self):
    self.conv = _conv(self.features, self.kernel, self.stride, self.pad,
                      use_bias=True, dtype=self.dtype)

  def __call__(self, x):  # [N, g, g, C] -> [N, g', g', features]
    n, h, w, _ = x.shape
    if (h, w) != (self.grid, self.grid):
      raise ValueError(f'CoordConv built for a {self.grid}x{self.grid} input, '
                       f'got {h}x{w}')
    coords = jnp.asarray(coord_channels(h, w), x.dtype)
    coords = jnp.broadcast_to(coords[None], (n, h, w, coords.shape[-1]))
    return self.conv(jnp.concatenate([x, coords], axis=-1))


class ConvBlock(nn.Module):
  """Three bias-free 3x3 convs whose outputs are concatenated, plus shortcut.

  o1 = conv1(relu(bn1(x))) (out/2), o2 = conv2(relu(bn2(o1))) (out/4),
  o3 = conv3(relu(bn3(o2))) (out/4); y = [o1, o2, o3] + shortcut, where the
  shortcut is x, or conv 1x1(relu(BN(x))) when in != out.
  """
  in_planes: int
  out_planes: int
  dtype: Any = jnp.float32

  def setup(self):
    half, quarter = self.out_planes // 2, self.out_planes // 4
    self.bn1 = _batch_norm(self.dtype)
    self.conv1 = _conv(half, 3, pad=1, use_bias=False, dtype=self.dtype)
    self.bn2 = _batch_norm(self.dtype)
    self.conv2 = _conv(quarter, 3, pad=1, use_bias=False, dtype=self.dtype)
    self.bn3 = _batch_norm(self.dtype)
    self.conv3 = _conv(quarter, 3, pad=1, use_bias=False, dtype=self.dtype)
    if self.in_planes != self.out_planes:
      # torch: downsample = Sequential(BN [0], ReLU [1], Conv1x1 [2]).
      self.downsample_0 = _batch_norm(self.dtype)
      self.downsample_2 = _conv(self.out_planes, 1, use_bias=False,
                                dtype=self.dtype)

  def __call__(self, x):
    o1 = self.conv1(nn.relu(self.bn1(x)))
    o2 = self.conv2(nn.relu(self.bn2(o1)))
    o3 = self.conv3(nn.relu(self.bn3(o2)))
    if self.in_planes != self.out_planes:
      x = self.downsample_2(nn.relu(self.downsample_0(x)))
    return jnp.concatenate([o1, o2, o3], axis=-1) + x


def _avg_pool2(x):
  return nn.avg_pool(x, (2, 2), strides=(2, 2), padding='VALID')


def _nearest_up2(x):  # [N, H, W, C] -> [N, 2H, 2W, C], floor(i / 2)
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


class HourGlass(nn.Module):
  """`coordconv` (64x64 grid, 1x1 conv) then a recursive depth-4 hourglass.

  Level L with input z: up = b1_L(z); low = b2_L(avgpool2(z));
  low = level L-1 (L > 1) or b2_plus_1 (L = 1); low = b3_L(low);
  out = up + nearest_x2(low).
  """
  depth: int = 4
  features: int = 256
  grid: int = HEATMAP_SIZE
  dtype: Any = jnp.float32

  def setup(self):
    self.coordconv = CoordConv(self.grid, self.features, 1, dtype=self.dtype)
    block = functools.partial(ConvBlock, self.features, self.features,
                              dtype=self.dtype)
    # One attribute per block, named exactly as in torch (b1_4, ..., b3_4).
    for level in range(self.depth, 0, -1):
      setattr(self, f'b1_{level}', block())
      setattr(self, f'b2_{level}', block())
      if level == 1:
        self.b2_plus_1 = block()
      setattr(self, f'b3_{level}', block())

  def _level(self, level: int, z):
    up = getattr(self, f'b1_{level}')(z)
    low = getattr(self, f'b2_{level}')(_avg_pool2(z))
    if level > 1:
      low = self._level(level - 1, low)
    else:
      low = self.b2_plus_1(low)
    low = getattr(self, f'b3_{level}')(low)
    return up + _nearest_up2(low)

  def __call__(self, x):
    return self._level(self.depth, self.coordconv(x))


class FAN(nn.Module):
  """FAN, num_modules=1, end_relu=False, 98 landmarks (99 output maps).

  Variables: {'params', 'batch_stats'}; BatchNorm is always in eval mode.
  Call: x01 [N, 256, 256, 3] in [0, 1] (not ImageNet-normalised) ->
  heatmaps [N, 64, 64, 99]; channels 0-97 are landmarks, 98 the boundary.
  """
  dtype: Any = jnp.float32

  def setup(self):
    d = self.dtype
    self.conv1 = CoordConv(FAN_SIZE, 64, 7, stride=2, pad=3, dtype=d)
    self.bn1 = _batch_norm(d)
    self.conv2 = ConvBlock(64, 128, dtype=d)
    self.conv3 = ConvBlock(128, 128, dtype=d)
    self.conv4 = ConvBlock(128, 256, dtype=d)
    self.m0 = HourGlass(4, 256, HEATMAP_SIZE, dtype=d)
    self.top_m_0 = ConvBlock(256, 256, dtype=d)
    self.conv_last0 = _conv(256, 1, dtype=d)
    self.bn_end0 = _batch_norm(d)
    self.l0 = _conv(NUM_LANDMARKS + 1, 1, dtype=d)

  def __call__(self, x01):
    if x01.ndim != 4 or x01.shape[1:] != (FAN_SIZE, FAN_SIZE, 3):
      raise ValueError('FAN expects [N, 256, 256, 3] images in [0, 1], got '
                       f'shape {tuple(x01.shape)}')
    x = nn.relu(self.bn1(self.conv1(x01)))  # [N, 128, 128, 64]
    x = _avg_pool2(self.conv2(x))  # [N, 64, 64, 128]
    x = self.conv4(self.conv3(x))  # [N, 64, 64, 256]
    ll = self.top_m_0(self.m0(x))
    ll = nn.relu(self.bn_end0(self.conv_last0(ll)))
    return self.l0(ll)  # [N, 64, 64, 99]; end_relu=False: no final ReLU


def init_variables(rng: jax.Array | None = None, dtype: Any = jnp.float32):
  """Initial FAN variables (random convs; BN scale 1, bias 0, mean 0, var 1)."""
  rng = jax.random.key(0) if rng is None else rng
  x = jnp.zeros((1, FAN_SIZE, FAN_SIZE, 3), jnp.float32)
  return jax.jit(FAN(dtype=dtype).init)(rng, x)


# ---------------------------------------------------------------------------
# Interpolation (torch F.interpolate(mode='bilinear') semantics, no antialias)
# ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def bilinear_matrix(in_size: int, out_size: int, align_corners: bool
                    ) -> np.ndarray:
  """[out, in] float32 matrix of 1-D bilinear interpolation, torch rules.

  align_corners=True: source = d * (in - 1) / (out - 1).
  align_corners=False: source = (d + 0.5) * in / out - 0.5, clamped below at
  0. Taps floor(source) and floor(source) + 1 (clamped to in - 1) with weights
  1 - frac, frac.
  """
  # Source coordinates and weights in float32 arithmetic, as torch's CPU
  # kernel computes them (float scale, float index); float64 would move the
  # weights by up to ~4e-6 at 256 px.
  f32 = np.float32
  d = np.arange(out_size, dtype=f32)
  if align_corners:
    scale = f32(in_size - 1) / f32(out_size - 1) if out_size > 1 else f32(0)
    src = scale * d
  else:
    scale = f32(in_size) / f32(out_size)
    src = np.maximum(scale * (d + f32(0.5)) - f32(0.5), f32(0))
  i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
  i1 = np.minimum(i0 + 1, in_size - 1)
  frac = (src - i0.astype(f32)).astype(f32)
  m = np.zeros((out_size, in_size), np.float64)
  np.add.at(m, (np.arange(out_size), i0), (f32(1) - frac).astype(np.float64))
  np.add.at(m, (np.arange(out_size), i1), frac.astype(np.float64))
  return m.astype(np.float32)


def resize_bilinear(x, size: int, align_corners: bool):
  """Bilinear resize of [N, H, W, C] to [N, size, size, C], torch rules.

  No antialiasing (unlike `jax.image.resize`); identity when the size is
  unchanged and align_corners is False.
  """
  h, w = x.shape[1], x.shape[2]
  if (h, w) == (size, size) and not align_corners:
    return x
  mh = jnp.asarray(bilinear_matrix(h, size, align_corners))
  mw = jnp.asarray(bilinear_matrix(w, size, align_corners))
  hp = jax.lax.Precision.HIGHEST
  x = jnp.einsum('oh,nhwc->nowc', mh, x, precision=hp)
  return jnp.einsum('pw,nowc->nopc', mw, x, precision=hp)


# ---------------------------------------------------------------------------
# Mask post-processing (docs/method.md#l2m-fan-masks step 4)
# ---------------------------------------------------------------------------

# Per-part ops (channel ranges half-open): (first, last + 1, row roll, power).
# roll(v, k) moves content down by k rows; the original helper's
# shift(v, n) is roll(v, -n). All shifts are at sw = 256 // 256 = 1.
_PART_OPS = (
    (8, 25, 0, 3),     # chin
    (33, 51, 7, 2),    # eyebrows
    (55, 60, -8, 4),   # nostrils
    (77, 82, 8, 4),    # upper lip
    (83, 88, -8, 4),   # lower lip
    (88, 96, 2, 3),    # inner lip
)
_ZEROED = ((0, 8), (25, 34), (46, 47), (76, 77), (82, 83))
_NOSE = (52, 55, -4)  # channel 51 untouched; the '** 1' step is a no-op
_EYES = (60, 76, 8, 3, 24)  # v <- roll(v, 8) ** 3 + roll(v, 24)
_NOT_IN_M2 = ((8, 25), (76, 96), (33, 51))


def _roll_rows(v, k: int):
  return v if k == 0 else jnp.roll(v, k, axis=1)


def heatmaps_to_masks(heatmaps):
  """Landmark heatmaps at mask resolution -> (M_1, M_2).

  Args:
    heatmaps: [N, 256, 256, 98], the FAN's landmark channels after the
      align_corners=True x4 upsample.

  Returns:
    (m1, m2), each [N, 256, 256, 1] float32 in [0, 1]: M_1 holds chin, eyebrows,
    nose, nostrils, eyes and lips; M_2 only nose, nostrils and eyes.
  """
  x = jnp.asarray(heatmaps, jnp.float32)
  if x.ndim != 4 or x.shape[1:] != (MASK_SIZE, MASK_SIZE, NUM_LANDMARKS):
    # The row shifts below are the original's at 256 px (width scale 1).
    raise ValueError(f'heatmaps must be [N, {MASK_SIZE}, {MASK_SIZE}, '
                     f'{NUM_LANDMARKS}], got shape {tuple(x.shape)}')
  x = jnp.where(x < TRUNCATE, 0.0, x)  # a. truncate
  lo = jnp.min(x, axis=(1, 2), keepdims=True)  # b. per-channel min-max
  hi = jnp.max(x, axis=(1, 2), keepdims=True)
  x = (x - lo) / (hi - lo + NORM_EPS)
  for a, b, k, p in _PART_OPS:  # c. per-part roll and power
    x = x.at[..., a:b].set(_roll_rows(x[..., a:b], k) ** p)
  for a, b in _ZEROED:  # d. zeroed channels
    x = x.at[..., a:b].set(0.0)
  a, b, k = _NOSE  # e. nose
  x = x.at[..., a:b].set(_roll_rows(x[..., a:b], k))
  a, b, k1, p, k2 = _EYES  # f. eyes, both terms from the same v
  eyes = x[..., a:b]
  x = x.at[..., a:b].set(_roll_rows(eyes, k1) ** p + _roll_rows(eyes, k2))
  x2 = x  # g. second-level copy
  for a, b in _NOT_IN_M2:
    x2 = x2.at[..., a:b].set(0.0)
  m1 = jnp.sum(x, axis=-1, keepdims=True)  # h. sums over the 98 channels
  m2 = jnp.sum(x2, axis=-1, keepdims=True)
  m1 = jnp.where(jnp.isnan(m1), 0.0, m1)  # i. (M_2's cleaning is a no-op)
  return jnp.clip(m1, 0.0, 1.0), jnp.clip(m2, 0.0, 1.0)  # j.


def landmark_heatmaps(fan_variables: Mapping[str, Any], x,
                      dtype: Any = jnp.float32):
  """Steps 1-2 of `get_heatmap`: x [N, S, S, 3] in [-1, 1] -> [N, 64, 64, 98].

  Bilinear (align_corners=False) resize to 256 (identity at 256), then
  x * 0.5 + 0.5 without clamping (the cycle pass feeds generated images that
  may leave [-1, 1]), then the FAN; the boundary channel is dropped.
  """
  x = jnp.asarray(x, jnp.float32)
  if x.ndim != 4 or x.shape[-1] != 3 or x.shape[1] != x.shape[2]:
    raise ValueError('get_masks expects square RGB images [N, S, S, 3] in '
                     f'[-1, 1], got shape {tuple(x.shape)}')
  x = resize_bilinear(x, FAN_SIZE, align_corners=False)
  heat = FAN(dtype=dtype).apply(fan_variables, x * 0.5 + 0.5)
  return heat[..., :NUM_LANDMARKS].astype(jnp.float32)


def get_masks(fan_variables: Mapping[str, Any], x, dtype: Any = jnp.float32):
  """The complete `get_heatmap` of docs/method.md#l2m-fan-masks: images -> (M_1,
  M_2).

  Args:
    fan_variables: {'params', 'batch_stats'} of `FAN`.
    x: [N, S, S, 3] images in [-1, 1] (not clamped).
    dtype: FAN computation dtype; the post-processing is float32.

  Returns:
    (m1, m2), each [N, 256, 256, 1] in [0, 1], gradients stopped. M_1 is used
    by the generator at 32 px, M_2 at 64 and 128 px.
  """
  fan_variables = jax.lax.stop_gradient(fan_variables)
  heat = landmark_heatmaps(fan_variables, jax.lax.stop_gradient(x), dtype)
  heat = resize_bilinear(heat, MASK_SIZE, align_corners=True)  # 64 -> 256
  m1, m2 = heatmaps_to_masks(heat)
  return jax.lax.stop_gradient(m1), jax.lax.stop_gradient(m2)
