"""In-house PyTorch reference of the FAN (wing) landmark network and masks.

Written from docs/method.md#l2m-fan-masks, docs/architecture.md#ckpt-nets-ema,
docs/method.md#l2m-numerics
(the 98-landmark FAN used by StarGAN v2 / L2M-GAN as `nets.fan`). Module and
attribute names follow the upstream parameter names, so `FAN().state_dict()`
has exactly the 336 keys of docs/architecture.md#ckpt-nets-ema.

Used only by the parity tests and benchmarks; `l2m_jax` never imports it.

Contents:
  AddCoordsTh   appends constant coordinate channels [xx, yy, rr].
  CoordConvTh   AddCoordsTh followed by a Conv2d named `conv`.
  ConvBlock     the pre-activation three-conv block with concatenated outputs.
  HourGlass     coordconv + a depth-4 recursive hourglass.
  FAN           conv1/bn1/conv2/conv3/conv4/m0/top_m_0/conv_last0/bn_end0/l0.
  preprocess    the mask post-processing of docs/method.md#l2m-fan-masks step 4
  (NCHW, 98 channels).
"""

from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

NUM_LANDMARKS = 98


class AddCoordsTh(nn.Module):
  """Appends [xx, yy, (rr)] channels for a fixed height x width grid.

  xx is the row index mapped to [-1, 1] (varies down the image), yy the
  column index mapped to [-1, 1], rr = sqrt(xx^2 + yy^2) / max (in [0, 1]).
  The grids are plain tensors, not buffers, so they are not in state_dict.
  """

  def __init__(self, height: int, width: int, with_r: bool):
    super().__init__()
    self.height = height
    self.width = width
    self.with_r = with_r

  def coords(self, dtype, device) -> torch.Tensor:
    rows = torch.arange(self.height, dtype=torch.float32, device=device)
    cols = torch.arange(self.width, dtype=torch.float32, device=device)
    xx = rows / (self.height - 1) * 2 - 1
    yy = cols / (self.width - 1) * 2 - 1
    xx = xx[:, None].expand(self.height, self.width)
    yy = yy[None, :].expand(self.height, self.width)
    chans = [xx, yy]
    if self.with_r:
      rr = torch.sqrt(xx * xx + yy * yy)
      chans.append(rr / rr.max())
    return torch.stack(chans, 0).to(dtype)  # [C, H, W]

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    n, _, h, w = x.shape
    if (h, w) != (self.height, self.width):
      raise ValueError(f'AddCoordsTh built for {self.height}x{self.width}, '
                       f'got {h}x{w}')
    c = self.coords(x.dtype, x.device)
    return torch.cat([x, c[None].expand(n, -1, -1, -1)], 1)


class CoordConvTh(nn.Module):
  """AddCoordsTh then Conv2d(in + 2 (+1 with r), ...) named `conv`."""

  def __init__(self, height: int, width: int, with_r: bool, in_channels: int,
               out_channels: int, kernel_size: int, stride: int = 1,
               padding: int = 0):
    super().__init__()
    self.addcoords = AddCoordsTh(height, width, with_r)
    extra = 3 if with_r else 2
    self.conv = nn.Conv2d(in_channels + extra, out_channels, kernel_size,
                          stride=stride, padding=padding, bias=True)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.conv(self.addcoords(x))


def _conv3x3(cin: int, cout: int) -> nn.Conv2d:
  return nn.Conv2d(cin, cout, 3, stride=1, padding=1, bias=False)


class ConvBlock(nn.Module):
  """out = concat(o1, o2, o3) + residual; o_k = conv_k(relu(bn_k(.)))."""

  def __init__(self, in_planes: int, out_planes: int):
    super().__init__()
    self.bn1 = nn.BatchNorm2d(in_planes)
    self.conv1 = _conv3x3(in_planes, out_planes // 2)
    self.bn2 = nn.BatchNorm2d(out_planes // 2)
    self.conv2 = _conv3x3(out_planes // 2, out_planes // 4)
    self.bn3 = nn.BatchNorm2d(out_planes // 4)
    self.conv3 = _conv3x3(out_planes // 4, out_planes // 4)
    self.downsample = None
    if in_planes != out_planes:
      self.downsample = nn.Sequential(
          nn.BatchNorm2d(in_planes), nn.ReLU(True),
          nn.Conv2d(in_planes, out_planes, 1, stride=1, bias=False))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    o1 = self.conv1(F.relu(self.bn1(x)))
    o2 = self.conv2(F.relu(self.bn2(o1)))
    o3 = self.conv3(F.relu(self.bn3(o2)))
    residual = x if self.downsample is None else self.downsample(x)
    return torch.cat([o1, o2, o3], 1) + residual


class HourGlass(nn.Module):
  """coordconv (64x64 grid, with r, 1x1 conv) + recursive hourglass."""

  def __init__(self, depth: int = 4, num_features: int = 256,
               grid: int = 64):
    super().__init__()
    self.depth = depth
    self.coordconv = CoordConvTh(grid, grid, True, num_features, num_features,
                                 kernel_size=1)
    for level in range(depth, 0, -1):
      self.add_module(f'b1_{level}', ConvBlock(num_features, num_features))
      self.add_module(f'b2_{level}', ConvBlock(num_features, num_features))
      if level == 1:
        self.add_module('b2_plus_1', ConvBlock(num_features, num_features))
      self.add_module(f'b3_{level}', ConvBlock(num_features, num_features))

  def _level(self, level: int, z: torch.Tensor) -> torch.Tensor:
    up = getattr(self, f'b1_{level}')(z)
    low = getattr(self, f'b2_{level}')(F.avg_pool2d(z, 2, stride=2))
    if level > 1:
      low = self._level(level - 1, low)
    else:
      low = self.b2_plus_1(low)
    low = getattr(self, f'b3_{level}')(low)
    return up + F.interpolate(low, scale_factor=2, mode='nearest')

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self._level(self.depth, self.coordconv(x))


class FAN(nn.Module):
  """FAN with num_modules=1, end_relu=False, 98 landmarks (+1 boundary)."""

  def __init__(self, num_landmarks: int = NUM_LANDMARKS):
    super().__init__()
    self.num_landmarks = num_landmarks
    self.conv1 = CoordConvTh(256, 256, True, 3, 64, kernel_size=7, stride=2,
                             padding=3)
    self.bn1 = nn.BatchNorm2d(64)
    self.conv2 = ConvBlock(64, 128)
    self.conv3 = ConvBlock(128, 128)
    self.conv4 = ConvBlock(128, 256)
    self.m0 = HourGlass(4, 256, 64)
    self.top_m_0 = ConvBlock(256, 256)
    self.conv_last0 = nn.Conv2d(256, 256, 1, stride=1, padding=0)
    self.bn_end0 = nn.BatchNorm2d(256)
    self.l0 = nn.Conv2d(256, num_landmarks + 1, 1, stride=1, padding=0)

  def forward(self, x01: torch.Tensor) -> torch.Tensor:
    """[N, 3, 256, 256] in [0, 1] -> raw heatmaps [N, 99, 64, 64]."""
    x = F.relu(self.bn1(self.conv1(x01)))
    x = F.avg_pool2d(self.conv2(x), 2, stride=2)
    x = self.conv4(self.conv3(x))
    ll = self.top_m_0(self.m0(x))
    ll = F.relu(self.bn_end0(self.conv_last0(ll)))
    return self.l0(ll)

  @torch.no_grad()
  def get_heatmap(self, x: torch.Tensor, b_preprocess: bool = True):
    """Mask extraction of docs/method.md#l2m-fan-masks.

    Args:
      x: [N, 3, S, S] images in [-1, 1].
      b_preprocess: True -> (M_1, M_2), each [N, 1, 256, 256] (steps 1-4);
        False -> the 98 landmark heatmaps [N, 98, 64, 64] (steps 1-2).
    """
    x = F.interpolate(x, size=(256, 256), mode='bilinear',
                      align_corners=False)
    heat = self(x * 0.5 + 0.5)[:, :self.num_landmarks]
    if not b_preprocess:
      return heat
    heat = F.interpolate(heat, scale_factor=4, mode='bilinear',
                         align_corners=True)
    return preprocess(heat)


def _roll(v: torch.Tensor, k: int) -> torch.Tensor:
  """Circular shift of rows (dim 2) by k; positive k moves content down."""
  return torch.roll(v, shifts=k, dims=2)


def preprocess(heat: torch.Tensor):
  """Heatmaps [N, 98, H, W] (H = 256) -> (M_1, M_2), each [N, 1, H, W].

  Steps a-j of docs/method.md#l2m-fan-masks; channel ranges below are half-open.
  """
  x = heat.clone()
  x[x < 0.1] = 0
  n, c, h, w = x.shape
  flat = x.reshape(n, c, h * w)
  lo = flat.min(dim=2, keepdim=True).values
  hi = flat.max(dim=2, keepdim=True).values
  x = ((flat - lo) / (hi - lo + 1e-6)).reshape(n, c, h, w)

  sw = h // 256  # the helper's width scale; eye shifts are not scaled
  # (first, last + 1, row roll, power); roll(v, k) = helper shift(v, -k).
  parts = [(8, 25, 0, 3),            # chin
           (33, 51, 7 * sw, 2),      # eyebrows
           (55, 60, -8 * sw, 4),     # nostrils
           (77, 82, 8 * sw, 4),      # upper lip
           (83, 88, -8 * sw, 4),     # lower lip
           (88, 96, 2 * sw, 3)]      # inner lip
  for a, b, k, p in parts:
    x[:, a:b] = _roll(x[:, a:b], k) ** p

  for a, b in [(0, 8), (25, 33), (33, 34), (46, 47), (76, 77), (82, 83)]:
    x[:, a:b] = 0

  x[:, 52:55] = _roll(x[:, 52:55], -4 * sw)  # nose; 51..54 ** 1 is a no-op
  eyes = x[:, 60:76].clone()
  x[:, 60:76] = _roll(eyes, 8) ** 3 + _roll(eyes, 24)

  x2 = x.clone()
  x2[:, 8:25] = 0
  x2[:, 76:96] = 0
  x2[:, 33:51] = 0

  m1 = x.sum(1, keepdim=True)
  m2 = x2.sum(1, keepdim=True)
  m1[m1 != m1] = 0  # NaN -> 0 (M_2's NaN cleaning is a no-op upstream)
  return m1.clamp(0, 1), m2.clamp(0, 1)
