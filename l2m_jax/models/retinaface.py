"""RetinaFace face detector, MobileNet-0.25 configuration, in Flax linen.

Deng et al., "RetinaFace: Single-stage Dense Face Localisation in the Wild"
(CVPR 2020), as implemented by biubug6/Pytorch_Retinaface (`models/net.py`,
`models/retinaface.py`; anchors `layers/functions/prior_box.py`; decoding
`utils/box_utils.py`; configuration `cfg_mnet` in `data/config.py`). Its
released `mobilenet0.25_Final.pth` converts with
`l2m_jax.convert.retinaface`.

Network (input: BGR, 0-255 scale, per-channel mean (104, 117, 123)
subtracted, NHWC; see `preprocess`):

  body    MobileNetV1 x0.25 stages 1-3 -> C1 (stride 8, 64 ch),
          C2 (stride 16, 128 ch), C3 (stride 32, 256 ch)
  fpn     lateral 1x1 conv-BN-LeakyReLU to 64 ch; top-down nearest
          upsampling + add + 3x3 conv-BN-LeakyReLU merges (merge2, merge1)
  ssh1-3  context module per level: [3x3 (32) | 3x3∘3x3 (16) |
          3x3∘3x3∘3x3 (16)] -> concat -> ReLU
  heads   per level 1x1 convs, 2 anchors per cell: ClassHead (2 logits),
          BboxHead (4 offsets), LandmarkHead (10 offsets); outputs are
          flattened cell-major (row, column, anchor) and concatenated over
          the levels, then the class logits go through a softmax.

LeakyReLU slope is 0.1 everywhere (upstream uses 0.1 when out_channel <= 64,
which is the mobile0.25 case). BatchNorm runs in eval mode (running
statistics, eps 1e-5). Convolutions pad explicitly ((1, 1) for 3x3), as
torch does, so odd sizes give ceil(H / 2) outputs like upstream.

Parameter mapping (torch state_dict key -> Flax path; mechanical: a list
index after a named container joins it with `_`, a Sequential index inside a
conv-BN block becomes `layers_<i>`; Conv2d weight -> kernel (OIHW -> HWIO),
BatchNorm weight/bias -> params scale/bias, running_mean/var -> batch_stats
mean/var, num_batches_tracked dropped):

  body.stage1.0.{0,1}.*           body/stage1_0/layers_{0,1}/*   (conv_bn)
  body.stage{s}.{i}.{0,1,3,4}.*   body/stage{s}_{i}/layers_{0,1,3,4}/*
                                  (conv_dw: depthwise 0-1, pointwise 3-4)
  fpn.output{1,2,3}.{0,1}.*       fpn/output{1,2,3}/layers_{0,1}/*
  fpn.merge{1,2}.{0,1}.*          fpn/merge{1,2}/layers_{0,1}/*
  ssh{k}.<branch>.{0,1}.*         ssh{k}/<branch>/layers_{0,1}/*
                                  (branch: conv3X3, conv5X5_1, conv5X5_2,
                                  conv7X7_2, conv7x7_3; upstream's spelling)
  {Class,Bbox,Landmark}Head.{l}.conv1x1.{weight,bias}
                                  {Class,Bbox,Landmark}Head_{l}/conv1x1/
                                  {kernel,bias}

Anchors (`prior_boxes`) and decoding (`decode_boxes`, `decode_landmarks`)
are pure functions; thresholding and NMS run on the host
(`l2m_jax.face_detection`).
"""

from __future__ import annotations

import functools
import itertools
import math
from typing import Any, Sequence

from flax import linen as nn
import jax
import jax.numpy as jnp
import numpy as np

BN_EPS = 1e-5
LEAKY = 0.1
MEAN_BGR = (104.0, 117.0, 123.0)  # subtracted from BGR 0-255 input
MIN_SIZES = ((16, 32), (64, 128), (256, 512))  # anchor sizes per level, px
STEPS = (8, 16, 32)  # level strides, px
VARIANCES = (0.1, 0.2)  # centre / size variances of the box encoding
NUM_ANCHORS = 2  # per cell (one per min size)
IN_CHANNEL = 32  # cfg_mnet['in_channel']: stage channels 64 / 128 / 256
OUT_CHANNEL = 64  # cfg_mnet['out_channel']


class ConvBN(nn.Module):
  """Conv (no bias) `layers_0` -> BatchNorm `layers_1` [-> LeakyReLU].

  Upstream `conv_bn` (3x3), `conv_bn_no_relu` (3x3, no activation) and
  `conv_bn1X1` (1x1).

  Attributes:
    features: output channels.
    kernel: 1 or 3 (3x3 pads 1 on each side).
    stride: conv stride.
    leaky: LeakyReLU slope, or None for no activation.
  """
  features: int
  kernel: int = 3
  stride: int = 1
  leaky: float | None = LEAKY
  dtype: Any = jnp.float32

  def setup(self):
    pad = self.kernel // 2
    self.layers_0 = nn.Conv(self.features, (self.kernel, self.kernel),
                            strides=(self.stride, self.stride),
                            padding=((pad, pad), (pad, pad)), use_bias=False,
                            dtype=self.dtype)
    self.layers_1 = _batch_norm(self.dtype)

  def __call__(self, x):
    x = self.layers_1(self.layers_0(x))
    if self.leaky is not None:
      x = nn.leaky_relu(x, self.leaky)
    return x


class ConvDW(nn.Module):
  """Upstream `conv_dw`: depthwise 3x3 conv-BN-LeakyReLU (`layers_0/1`),
  then pointwise 1x1 conv-BN-LeakyReLU (`layers_3/4`).
  """
  in_features: int
  features: int
  stride: int = 1
  dtype: Any = jnp.float32

  def setup(self):
    s = self.stride
    self.layers_0 = nn.Conv(self.in_features, (3, 3), strides=(s, s),
                            padding=((1, 1), (1, 1)),
                            feature_group_count=self.in_features,
                            use_bias=False, dtype=self.dtype)
    self.layers_1 = _batch_norm(self.dtype)
    self.layers_3 = nn.Conv(self.features, (1, 1), padding='VALID',
                            use_bias=False, dtype=self.dtype)
    self.layers_4 = _batch_norm(self.dtype)

  def __call__(self, x):
    x = nn.leaky_relu(self.layers_1(self.layers_0(x)), LEAKY)
    return nn.leaky_relu(self.layers_4(self.layers_3(x)), LEAKY)


def _batch_norm(dtype: Any) -> nn.BatchNorm:
  # Deviation from PyTorch: eval mode only; the detector is inference-only.
  return nn.BatchNorm(use_running_average=True, momentum=0.9, epsilon=BN_EPS,
                      dtype=dtype)


# (in, out, stride) of the conv_dw blocks; stage1 starts with conv_bn(3, 8, 2).
_STAGES = (
    ('stage1', ((8, 16, 1), (16, 32, 2), (32, 32, 1), (32, 64, 2),
                (64, 64, 1))),
    ('stage2', ((64, 128, 2),) + ((128, 128, 1),) * 5),
    ('stage3', ((128, 256, 2), (256, 256, 1))),
)


class MobileNetV1Body(nn.Module):
  """MobileNetV1 x0.25 stages 1-3; returns [C1, C2, C3] (strides 8/16/32)."""
  dtype: Any = jnp.float32

  def setup(self):
    self.stage1_0 = ConvBN(8, 3, stride=2, dtype=self.dtype)
    for name, blocks in _STAGES:
      offset = 1 if name == 'stage1' else 0
      for i, (cin, cout, stride) in enumerate(blocks):
        setattr(self, f'{name}_{i + offset}',
                ConvDW(cin, cout, stride, dtype=self.dtype))

  def __call__(self, x):
    outs = []
    x = self.stage1_0(x)
    for name, blocks in _STAGES:
      offset = 1 if name == 'stage1' else 0
      for i in range(len(blocks)):
        x = getattr(self, f'{name}_{i + offset}')(x)
      outs.append(x)
    return outs


def nearest_indices(in_size: int, out_size: int) -> np.ndarray:
  """Source indices of torch `F.interpolate(mode='nearest', size=out)`.

  Identity for equal sizes, `d >> 1` for exact doubling, otherwise
  min(floor(float32(d) * float32(in / out)), in - 1) as torch's CPU kernel
  computes it (float32 scale).
  """
  d = np.arange(out_size)
  if out_size == in_size:
    return d
  if out_size == 2 * in_size:
    return d >> 1
  scale = np.float32(in_size) / np.float32(out_size)
  src = np.floor(d.astype(np.float32) * scale).astype(np.int64)
  return np.minimum(src, in_size - 1)


def _upsample_nearest(x, size: tuple[int, int]):
  """[N, h, w, C] -> [N, H, W, C] with torch's nearest rule."""
  rows = nearest_indices(x.shape[1], size[0])
  cols = nearest_indices(x.shape[2], size[1])
  return x[:, rows][:, :, cols]


class _Neck(nn.Module):
  """Fields of the FPN and SSH: width and dtype; upstream's leaky slope."""
  features: int = OUT_CHANNEL
  dtype: Any = jnp.float32

  @property
  def leaky(self) -> float:
    return LEAKY if self.features <= 64 else 0.0


class FPN(_Neck):
  """Feature pyramid: 1x1 laterals `output1-3`, 3x3 merges `merge1-2`."""

  def setup(self):
    f, d, leaky = self.features, self.dtype, self.leaky
    self.output1 = ConvBN(f, 1, leaky=leaky, dtype=d)
    self.output2 = ConvBN(f, 1, leaky=leaky, dtype=d)
    self.output3 = ConvBN(f, 1, leaky=leaky, dtype=d)
    self.merge1 = ConvBN(f, 3, leaky=leaky, dtype=d)
    self.merge2 = ConvBN(f, 3, leaky=leaky, dtype=d)

  def __call__(self, feats):
    p1 = self.output1(feats[0])
    p2 = self.output2(feats[1])
    p3 = self.output3(feats[2])
    p2 = self.merge2(p2 + _upsample_nearest(p3, p2.shape[1:3]))
    p1 = self.merge1(p1 + _upsample_nearest(p2, p1.shape[1:3]))
    return [p1, p2, p3]


class SSH(_Neck):
  """SSH context module (attribute names as upstream, incl. `conv7x7_3`)."""

  def setup(self):
    f, d, leaky = self.features, self.dtype, self.leaky
    self.conv3X3 = ConvBN(f // 2, 3, leaky=None, dtype=d)
    self.conv5X5_1 = ConvBN(f // 4, 3, leaky=leaky, dtype=d)
    self.conv5X5_2 = ConvBN(f // 4, 3, leaky=None, dtype=d)
    self.conv7X7_2 = ConvBN(f // 4, 3, leaky=leaky, dtype=d)
    self.conv7x7_3 = ConvBN(f // 4, 3, leaky=None, dtype=d)

  def __call__(self, x):
    a = self.conv3X3(x)
    b1 = self.conv5X5_1(x)
    b = self.conv5X5_2(b1)
    c = self.conv7x7_3(self.conv7X7_2(b1))
    return nn.relu(jnp.concatenate([a, b, c], axis=-1))


class Head(nn.Module):
  """1x1 conv `conv1x1` to anchors x values, flattened to [N, H*W*A, V]."""
  values: int
  num_anchors: int = NUM_ANCHORS
  dtype: Any = jnp.float32

  def setup(self):
    self.conv1x1 = nn.Conv(self.num_anchors * self.values, (1, 1),
                           padding='VALID', dtype=self.dtype)

  def __call__(self, x):
    y = self.conv1x1(x)  # [N, H, W, A * V], as torch's permute(0, 2, 3, 1)
    return y.reshape(y.shape[0], -1, self.values)


class RetinaFace(nn.Module):
  """RetinaFace mobile0.25, test phase.

  Call: x [N, H, W, 3] preprocessed (BGR, mean-subtracted; `preprocess`) ->
  (loc [N, P, 4], conf [N, P, 2] softmax probabilities (column 1 = face),
  landmarks [N, P, 10]) with P = `num_priors(H, W)`, raw encoded offsets
  (decode with `decode_boxes` / `decode_landmarks`).
  """
  dtype: Any = jnp.float32

  def setup(self):
    d = self.dtype
    self.body = MobileNetV1Body(dtype=d)
    self.fpn = FPN(OUT_CHANNEL, dtype=d)
    self.ssh1 = SSH(OUT_CHANNEL, dtype=d)
    self.ssh2 = SSH(OUT_CHANNEL, dtype=d)
    self.ssh3 = SSH(OUT_CHANNEL, dtype=d)
    for level in range(3):
      setattr(self, f'ClassHead_{level}', Head(2, dtype=d))
      setattr(self, f'BboxHead_{level}', Head(4, dtype=d))
      setattr(self, f'LandmarkHead_{level}', Head(10, dtype=d))

  def __call__(self, x):
    if x.ndim != 4 or x.shape[-1] != 3:
      raise ValueError('RetinaFace expects [N, H, W, 3] preprocessed BGR '
                       f'images, got shape {tuple(x.shape)}')
    feats = self.fpn(self.body(x))
    feats = [self.ssh1(feats[0]), self.ssh2(feats[1]), self.ssh3(feats[2])]

    def heads(name):
      return jnp.concatenate(
          [getattr(self, f'{name}_{k}')(f) for k, f in enumerate(feats)],
          axis=1)

    loc = heads('BboxHead')
    conf = jax.nn.softmax(heads('ClassHead'), axis=-1)
    return loc, conf, heads('LandmarkHead')


def preprocess(images_rgb) -> jax.Array:
  """RGB images, 0-255 scale (uint8 or float) -> the network's input.

  Upstream reads images with OpenCV (BGR) and subtracts (104, 117, 123) from
  the float32 BGR values without further scaling.

  Args:
    images_rgb: [N, H, W, 3] RGB, 0-255.

  Returns:
    float32 [N, H, W, 3] BGR with MEAN_BGR subtracted.
  """
  x = jnp.asarray(images_rgb).astype(jnp.float32)[..., ::-1]
  return x - jnp.asarray(MEAN_BGR, jnp.float32)


def feature_sizes(height: int, width: int) -> list[tuple[int, int]]:
  """(rows, cols) of the three levels: ceil(H / step), ceil(W / step)."""
  return [(math.ceil(height / s), math.ceil(width / s)) for s in STEPS]


def num_priors(height: int, width: int) -> int:
  return sum(h * w * NUM_ANCHORS for h, w in feature_sizes(height, width))


@functools.lru_cache(maxsize=16)
def prior_boxes(height: int, width: int) -> np.ndarray:
  """Anchors [P, 4] (cx, cy, w, h) relative to the image size, float32.

  Level k, cell (i, j), min size s: ((j + 0.5) * step / W,
  (i + 0.5) * step / H, s / W, s / H), cells row-major, anchors innermost;
  computed in float64 and stored as float32 as upstream's `PriorBox` does
  (Python floats -> torch.Tensor). No clipping (cfg_mnet clip=False).
  """
  rows = []
  for (fh, fw), step, sizes in zip(feature_sizes(height, width), STEPS,
                                   MIN_SIZES):
    for i, j in itertools.product(range(fh), range(fw)):
      for s in sizes:
        rows.append(((j + 0.5) * step / width, (i + 0.5) * step / height,
                     s / width, s / height))
  out = np.asarray(rows, np.float64).astype(np.float32)
  out.setflags(write=False)
  return out


def decode_boxes(loc, priors, variances: Sequence[float] = VARIANCES):
  """Offsets [..., P, 4] -> boxes [..., P, 4] (x1, y1, x2, y2), relative.

  centre = prior_c + loc_c * v0 * prior_wh; size = prior_wh * exp(loc_wh *
  v1); corners = centre -/+ size / 2 (upstream `decode`, same operation
  order in float32).
  """
  c = priors[:, :2] + loc[..., :2] * variances[0] * priors[:, 2:]
  wh = priors[:, 2:] * jnp.exp(loc[..., 2:] * variances[1])
  x1y1 = c - wh / 2
  return jnp.concatenate([x1y1, wh + x1y1], axis=-1)


def decode_landmarks(pre, priors, variances: Sequence[float] = VARIANCES):
  """Offsets [..., P, 10] -> landmarks [..., P, 5, 2] (x, y), relative.

  point_k = prior_c + pre_k * v0 * prior_wh (upstream `decode_landm`).
  """
  pre = pre.reshape(pre.shape[:-1] + (5, 2))
  return priors[:, None, :2] + pre * variances[0] * priors[:, None, 2:]


def decode(outputs, height: int, width: int):
  """Network outputs -> pixel boxes, face scores and landmarks.

  Args:
    outputs: (loc, conf, landmarks) of `RetinaFace` for [N, H, W] inputs.
    height, width: the input size (pixels).

  Returns:
    boxes [N, P, 4] (x1, y1, x2, y2) px, scores [N, P] (face probability),
    landmarks [N, P, 5, 2] (x, y) px in upstream order: left eye, right eye,
    nose tip, left mouth corner, right mouth corner (image left/right).
  """
  loc, conf, ldm = outputs
  priors = jnp.asarray(prior_boxes(height, width))
  scale = jnp.asarray([width, height], jnp.float32)
  boxes = decode_boxes(loc, priors) * jnp.tile(scale, 2)
  landmarks = decode_landmarks(ldm, priors) * scale
  return boxes, conf[..., 1], landmarks


def init_variables(rng: jax.Array | None = None, size: int = 32,
                   dtype: Any = jnp.float32):
  """Initial RetinaFace variables (random convs, identity BatchNorm)."""
  rng = jax.random.key(0) if rng is None else rng
  x = jnp.zeros((1, size, size, 3), jnp.float32)
  return jax.jit(RetinaFace(dtype=dtype).init)(rng, x)
