"""In-house PyTorch reference of the L2M-GAN networks (CVPR 2021).

Written from docs/method.md#l2m-networks, docs/method.md#l2m-numerics and
docs/architecture.md#ckpt-nets-ema, with the parameter names of the authors'
`core/model.py` (rucmlcv/L2M-GAN) key for key,
so that `state_dict()` of these modules has exactly the layout of the official
`{step:06d}_nets_ema.ckpt` (generator, style_encoder) and of a training
`_nets.ckpt` (discriminator). Used only by the parity tests and the edit
benchmark; the `l2m_jax` package never imports this file.

Modules:
  ResBlk, AdaIN, AdainResBlk, HighPass, Attention, Generator,
  StyleEncoder (the L2M version: forward(x, y, y1) -> (s, s1, s2, s3)),
  Discriminator.
"""

import math

import torch
from torch import nn
from torch.nn import functional as F


def _lrelu(x):
  return F.leaky_relu(x, 0.2)


class ResBlk(nn.Module):
  """Pre-activation residual block; (shortcut + residual) / sqrt(2)."""

  def __init__(self, dim_in, dim_out, normalize=False, downsample=False):
    super().__init__()
    self.normalize = normalize
    self.downsample = downsample
    self.learned_sc = dim_in != dim_out
    self.conv1 = nn.Conv2d(dim_in, dim_in, 3, 1, 1)
    self.conv2 = nn.Conv2d(dim_in, dim_out, 3, 1, 1)
    if normalize:
      self.norm1 = nn.InstanceNorm2d(dim_in, affine=True)
      self.norm2 = nn.InstanceNorm2d(dim_in, affine=True)
    if self.learned_sc:
      self.conv1x1 = nn.Conv2d(dim_in, dim_out, 1, 1, 0, bias=False)

  def _shortcut(self, x):
    if self.learned_sc:
      x = self.conv1x1(x)
    if self.downsample:
      x = F.avg_pool2d(x, 2)
    return x

  def _residual(self, x):
    if self.normalize:
      x = self.norm1(x)
    x = self.conv1(_lrelu(x))
    if self.downsample:
      x = F.avg_pool2d(x, 2)
    if self.normalize:
      x = self.norm2(x)
    return self.conv2(_lrelu(x))

  def forward(self, x):
    return (self._shortcut(x) + self._residual(x)) / math.sqrt(2)


class AdaIN(nn.Module):
  """(1 + gamma) * IN(x) + beta with (gamma, beta) = fc(s)."""

  def __init__(self, style_dim, num_features):
    super().__init__()
    self.norm = nn.InstanceNorm2d(num_features, affine=False)
    self.fc = nn.Linear(style_dim, num_features * 2)

  def forward(self, x, s):
    h = self.fc(s)[:, :, None, None]
    gamma, beta = torch.chunk(h, chunks=2, dim=1)
    return (1 + gamma) * self.norm(x) + beta


class AdainResBlk(nn.Module):
  """AdaIN residual block; residual only when w_hpf > 0."""

  def __init__(self, dim_in, dim_out, style_dim=64, w_hpf=0, upsample=False):
    super().__init__()
    self.w_hpf = w_hpf
    self.upsample = upsample
    self.learned_sc = dim_in != dim_out
    self.conv1 = nn.Conv2d(dim_in, dim_out, 3, 1, 1)
    self.conv2 = nn.Conv2d(dim_out, dim_out, 3, 1, 1)
    self.norm1 = AdaIN(style_dim, dim_in)
    self.norm2 = AdaIN(style_dim, dim_out)
    if self.learned_sc:
      self.conv1x1 = nn.Conv2d(dim_in, dim_out, 1, 1, 0, bias=False)

  def _shortcut(self, x):
    if self.upsample:
      x = F.interpolate(x, scale_factor=2, mode='nearest')
    if self.learned_sc:
      x = self.conv1x1(x)
    return x

  def _residual(self, x, s):
    x = _lrelu(self.norm1(x, s))
    if self.upsample:
      x = F.interpolate(x, scale_factor=2, mode='nearest')
    x = self.conv1(x)
    x = _lrelu(self.norm2(x, s))
    return self.conv2(x)

  def forward(self, x, s):
    out = self._residual(x, s)
    if self.w_hpf == 0:
      out = (out + self._shortcut(x)) / math.sqrt(2)
    return out


class HighPass(nn.Module):
  """Depthwise 3x3 Laplacian-like filter / w_hpf; a plain attribute, not a buffer."""

  def __init__(self, w_hpf):
    super().__init__()
    self.filter = torch.tensor([[-1., -1., -1.],
                                [-1., 8., -1.],
                                [-1., -1., -1.]]) / w_hpf

  def forward(self, x):
    c = x.size(1)
    k = self.filter.to(x.device, x.dtype).unsqueeze(0).unsqueeze(1)
    return F.conv2d(x, k.repeat(c, 1, 1, 1), padding=1, groups=c)


class Attention(nn.Module):
  """Linear -> ReLU -> Linear; present in the checkpoint, never called."""

  def __init__(self, style_dim=64):
    super().__init__()
    self.layers = nn.Sequential(nn.Linear(style_dim, style_dim), nn.ReLU(),
                                nn.Linear(style_dim, style_dim))

  def forward(self, s):
    return self.layers(s)


class Generator(nn.Module):
  """StarGAN v2 generator with the masked high-pass skips of L2M-GAN."""

  def __init__(self, img_size=256, style_dim=64, max_conv_dim=512, w_hpf=1,
               base_dim=None):
    super().__init__()
    # base_dim (not upstream): overrides the first width 2^14 // img_size.
    dim_in = base_dim or 2**14 // img_size
    self.img_size = img_size
    self.from_rgb = nn.Conv2d(3, dim_in, 3, 1, 1)
    self.encode = nn.ModuleList()
    self.decode = nn.ModuleList()
    self.to_rgb = nn.Sequential(nn.InstanceNorm2d(dim_in, affine=True),
                                nn.LeakyReLU(0.2), nn.Conv2d(dim_in, 3, 1, 1, 0))
    repeat_num = int(round(math.log2(img_size))) - 4
    if w_hpf > 0:
      repeat_num += 1
    for _ in range(repeat_num):
      dim_out = min(dim_in * 2, max_conv_dim)
      self.encode.append(ResBlk(dim_in, dim_out, normalize=True,
                                downsample=True))
      # The decoder is assembled back to front.
      self.decode.insert(0, AdainResBlk(dim_out, dim_in, style_dim,
                                        w_hpf=w_hpf, upsample=True))
      dim_in = dim_out
    for _ in range(2):
      self.encode.append(ResBlk(dim_out, dim_out, normalize=True))
      self.decode.insert(0, AdainResBlk(dim_out, dim_out, style_dim,
                                        w_hpf=w_hpf))
    if w_hpf > 0:
      self.hpf = HighPass(w_hpf)
    self.attention = Attention(style_dim)

  def forward(self, x, s, masks=None):
    x = self.from_rgb(x)
    cache = {}
    for block in self.encode:
      if masks is not None and x.size(2) in (32, 64, 128):
        cache[x.size(2)] = x
      x = block(x)
    for block in self.decode:
      x = block(x, s)
      size = x.size(2)
      if masks is not None and size in (32, 64, 128):
        mask = masks[0] if size == 32 else masks[1]
        mask = F.interpolate(mask, size=size, mode='bilinear',
                             align_corners=False)
        x = x + self.hpf(mask * cache[size])
    return self.to_rgb(x)


def _mlp(dim):
  return nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim),
                       nn.ReLU(), nn.Linear(dim, dim))


def _trunk(img_size, max_conv_dim, base_dim=None):
  """Shared conv trunk of the style encoder and discriminator (as a list)."""
  dim_in = base_dim or 2**14 // img_size
  layers = [nn.Conv2d(3, dim_in, 3, 1, 1)]
  repeat_num = int(round(math.log2(img_size))) - 2
  dim_out = dim_in
  for _ in range(repeat_num):
    dim_out = min(dim_in * 2, max_conv_dim)
    layers.append(ResBlk(dim_in, dim_out, downsample=True))
    dim_in = dim_out
  layers += [nn.LeakyReLU(0.2), nn.Conv2d(dim_out, dim_out, 4, 1, 0),
             nn.LeakyReLU(0.2)]
  return layers, dim_out


class StyleEncoder(nn.Module):
  """L2M style encoder: shared trunk, per-domain heads, decomposer, transformer."""

  def __init__(self, img_size=256, style_dim=64, num_domains=2,
               max_conv_dim=512, base_dim=None):
    super().__init__()
    layers, dim_out = _trunk(img_size, max_conv_dim, base_dim)
    self.shared = nn.Sequential(*layers)
    self.unshared = nn.ModuleList(
        [nn.Linear(dim_out, style_dim) for _ in range(num_domains)])
    self.transform1 = _mlp(style_dim)
    self.transform2 = nn.ModuleList(
        [_mlp(style_dim) for _ in range(num_domains)])
    self.attention = Attention(style_dim)

  def forward(self, x, y, y1):
    h = self.shared(x).view(x.size(0), -1)
    idx = torch.arange(y.size(0), device=y.device)
    s = torch.stack([head(h) for head in self.unshared], dim=1)[idx, y]
    s1 = self.transform1(s)
    s2 = s - s1
    s3 = torch.stack([t(s2) for t in self.transform2], dim=1)[idx, y1]
    return s, s1, s2, s3


class Discriminator(nn.Module):
  """StarGAN v2 multi-head discriminator: one logit per domain, gathered by y."""

  def __init__(self, img_size=256, num_domains=2, max_conv_dim=512,
               base_dim=None):
    super().__init__()
    layers, dim_out = _trunk(img_size, max_conv_dim, base_dim)
    layers.append(nn.Conv2d(dim_out, num_domains, 1, 1, 0))
    self.main = nn.Sequential(*layers)

  def forward(self, x, y):
    out = self.main(x).view(x.size(0), -1)
    idx = torch.arange(y.size(0), device=y.device)
    return out[idx, y]
