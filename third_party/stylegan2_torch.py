"""StyleGAN2 generator in PyTorch, stylegan2-pytorch parameter layout, pure-torch ops.

Written in-house from docs/method.md#stylegan2 (Karras et al.,
"Analyzing and Improving the Image Quality of StyleGAN", CVPR 2020) so that a
`state_dict()` of `Generator(1024, 512, 8, channel_multiplier=2)` has exactly
the 171 keys and shapes of a stylegan2-pytorch `g_ema`
(docs/architecture.md#ckpt-stylegan2). `upfirdn2d` and
the fused leaky ReLU are plain torch (no CUDA extension), so the module runs on
a CPU-only torch. Used only by parity tests and benchmarks.

Extra knob (not in the upstream layout, default reproduces it): `channel_base`
sets the width at 4..32 px; widths at 64, 128, ... px are
`channel_base * channel_multiplier / 2, / 4, ...` (512 and 2 give config-f).
"""

import math
import random

import torch
from torch import nn
from torch.nn import functional as F

SQRT2 = math.sqrt(2.0)


def channel_widths(size, channel_multiplier=2, channel_base=512):
  """{resolution: channels}, e.g. config-f: 4..64 -> 512, 128 -> 256, ..."""
  widths = {}
  res = 4
  while res <= size:
    if res <= 32:
      widths[res] = channel_base
    else:
      widths[res] = int(channel_base * channel_multiplier * 32 // res)
    res *= 2
  return widths


def make_kernel(k):
  k = torch.tensor(k, dtype=torch.float32)
  if k.ndim == 1:
    k = k[None, :] * k[:, None]
  return k / k.sum()


def upfirdn2d(x, kernel, up=1, down=1, pad=(0, 0)):
  """Zero-insertion upsample -> pad/crop -> FIR (true conv) -> downsample.

  x: (N, C, H, W); kernel: (kh, kw); the same (pad0, pad1) on both axes.
  """
  n, c, h, w = x.shape
  p0, p1 = pad
  kh, kw = kernel.shape
  x = x.reshape(n * c, 1, h, 1, w, 1)
  x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1])
  x = x.reshape(n * c, 1, h * up, w * up)
  x = F.pad(x, [max(p0, 0), max(p1, 0), max(p0, 0), max(p1, 0)])
  hh, ww = x.shape[2], x.shape[3]
  x = x[:, :, max(-p0, 0):hh - max(-p1, 0), max(-p0, 0):ww - max(-p1, 0)]
  weight = torch.flip(kernel, [0, 1]).reshape(1, 1, kh, kw).to(x.dtype)
  x = F.conv2d(x, weight)
  x = x[:, :, ::down, ::down]
  return x.reshape(n, c, x.shape[2], x.shape[3])


def fused_leaky_relu(x, bias, negative_slope=0.2, scale=SQRT2):
  shape = [1, -1] + [1] * (x.ndim - 2)
  x = x + bias.reshape(shape)
  return F.leaky_relu(x, negative_slope) * scale


class PixelNorm(nn.Module):

  def forward(self, x):
    return x * torch.rsqrt(torch.mean(x * x, dim=1, keepdim=True) + 1e-8)


class FusedLeakyReLU(nn.Module):

  def __init__(self, channels):
    super().__init__()
    self.bias = nn.Parameter(torch.zeros(channels))

  def forward(self, x):
    return fused_leaky_relu(x, self.bias)


class EqualLinear(nn.Module):
  """Linear with runtime scale lr_mul / sqrt(in_dim)
  (docs/method.md#equal-linear)."""

  def __init__(self, in_dim, out_dim, bias=True, bias_init=0.0, lr_mul=1.0,
               activation=None):
    super().__init__()
    self.weight = nn.Parameter(torch.randn(out_dim, in_dim) / lr_mul)
    if bias:
      self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init)))
    else:
      self.bias = None
    self.activation = activation
    self.scale = lr_mul / math.sqrt(in_dim)
    self.lr_mul = lr_mul

  def forward(self, x):
    y = F.linear(x, self.weight * self.scale)
    if self.activation == 'fused_lrelu':
      bias = (self.bias * self.lr_mul if self.bias is not None
              else torch.zeros(y.shape[-1], dtype=y.dtype))
      return F.leaky_relu(y + bias, 0.2) * SQRT2
    if self.bias is not None:
      y = y + self.bias * self.lr_mul
    return y


class Upsample(nn.Module):

  def __init__(self, kernel, factor=2):
    super().__init__()
    self.factor = factor
    self.register_buffer('kernel', make_kernel(kernel) * factor ** 2)
    p = self.kernel.shape[0] - factor
    self.pad = ((p + 1) // 2 + factor - 1, p // 2)

  def forward(self, x):
    return upfirdn2d(x, self.kernel, up=self.factor, pad=self.pad)


class Blur(nn.Module):

  def __init__(self, kernel, pad, upsample_factor=1):
    super().__init__()
    k = make_kernel(kernel)
    if upsample_factor > 1:
      k = k * upsample_factor ** 2
    self.register_buffer('kernel', k)
    self.pad = pad

  def forward(self, x):
    return upfirdn2d(x, self.kernel, pad=self.pad)


class ModulatedConv2d(nn.Module):
  """Per-sample weight `scale * weight * s`, optional demodulation
  (docs/method.md#stylegan2)."""

  def __init__(self, in_channel, out_channel, kernel_size, style_dim,
               demodulate=True, upsample=False, blur_kernel=(1, 3, 3, 1)):
    super().__init__()
    self.in_channel = in_channel
    self.out_channel = out_channel
    self.kernel_size = kernel_size
    self.demodulate = demodulate
    self.upsample = upsample
    if upsample:
      factor = 2
      p = (len(blur_kernel) - factor) - (kernel_size - 1)
      self.blur = Blur(blur_kernel, pad=((p + 1) // 2 + factor - 1, p // 2 + 1),
                       upsample_factor=factor)
    self.scale = 1 / math.sqrt(in_channel * kernel_size ** 2)
    self.padding = kernel_size // 2
    self.weight = nn.Parameter(
        torch.randn(1, out_channel, in_channel, kernel_size, kernel_size))
    self.modulation = EqualLinear(style_dim, in_channel, bias_init=1.0)

  def forward(self, x, style):
    b, c, h, w = x.shape
    s = self.modulation(style).reshape(b, 1, c, 1, 1)
    weight = self.scale * self.weight * s  # (B, out, in, k, k)
    if self.demodulate:
      d = torch.rsqrt(weight.pow(2).sum([2, 3, 4]) + 1e-8)
      weight = weight * d.reshape(b, self.out_channel, 1, 1, 1)
    k = self.kernel_size
    x = x.reshape(1, b * c, h, w)
    if self.upsample:
      weight = weight.transpose(1, 2).reshape(b * c, self.out_channel, k, k)
      out = F.conv_transpose2d(x, weight, padding=0, stride=2, groups=b)
      out = out.reshape(b, self.out_channel, out.shape[2], out.shape[3])
      return self.blur(out)
    weight = weight.reshape(b * self.out_channel, c, k, k)
    out = F.conv2d(x, weight, padding=self.padding, groups=b)
    return out.reshape(b, self.out_channel, out.shape[2], out.shape[3])


class NoiseInjection(nn.Module):

  def __init__(self):
    super().__init__()
    self.weight = nn.Parameter(torch.zeros(1))

  def forward(self, x, noise=None):
    if noise is None:
      b, _, h, w = x.shape
      noise = x.new_empty(b, 1, h, w).normal_()
    return x + self.weight * noise


class ConstantInput(nn.Module):

  def __init__(self, channel, size=4):
    super().__init__()
    self.input = nn.Parameter(torch.randn(1, channel, size, size))

  def forward(self, batch):
    return self.input.repeat(batch, 1, 1, 1)


class StyledConv(nn.Module):

  def __init__(self, in_channel, out_channel, kernel_size, style_dim,
               upsample=False, blur_kernel=(1, 3, 3, 1)):
    super().__init__()
    self.conv = ModulatedConv2d(in_channel, out_channel, kernel_size, style_dim,
                                upsample=upsample, blur_kernel=blur_kernel)
    self.noise = NoiseInjection()
    self.activate = FusedLeakyReLU(out_channel)

  def forward(self, x, style, noise=None):
    return self.activate(self.noise(self.conv(x, style), noise=noise))


class ToRGB(nn.Module):

  def __init__(self, in_channel, style_dim, upsample=True,
               blur_kernel=(1, 3, 3, 1)):
    super().__init__()
    if upsample:
      self.upsample = Upsample(blur_kernel)
    self.conv = ModulatedConv2d(in_channel, 3, 1, style_dim, demodulate=False)
    self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

  def forward(self, x, style, skip=None):
    out = self.conv(x, style) + self.bias
    if skip is not None:
      out = out + self.upsample(skip)
    return out


class Generator(nn.Module):
  """stylegan2-pytorch `Generator`: mapping `style`, synthesis, noise buffers."""

  def __init__(self, size, style_dim=512, n_mlp=8, channel_multiplier=2,
               blur_kernel=(1, 3, 3, 1), lr_mlp=0.01, channel_base=512):
    super().__init__()
    self.size = size
    self.style_dim = style_dim
    layers = [PixelNorm()]
    for _ in range(n_mlp):
      layers.append(EqualLinear(style_dim, style_dim, lr_mul=lr_mlp,
                                activation='fused_lrelu'))
    self.style = nn.Sequential(*layers)
    self.channels = channel_widths(size, channel_multiplier, channel_base)
    self.input = ConstantInput(self.channels[4])
    self.conv1 = StyledConv(self.channels[4], self.channels[4], 3, style_dim,
                            blur_kernel=blur_kernel)
    self.to_rgb1 = ToRGB(self.channels[4], style_dim, upsample=False)
    self.log_size = int(math.log2(size))
    self.num_layers = (self.log_size - 2) * 2 + 1
    self.n_latent = self.log_size * 2 - 2
    self.convs = nn.ModuleList()
    self.to_rgbs = nn.ModuleList()
    self.noises = nn.Module()
    for i in range(self.num_layers):
      res = 2 ** ((i + 5) // 2)
      self.noises.register_buffer(f'noise_{i}', torch.randn(1, 1, res, res))
    in_channel = self.channels[4]
    for i in range(3, self.log_size + 1):
      out_channel = self.channels[2 ** i]
      self.convs.append(StyledConv(in_channel, out_channel, 3, style_dim,
                                   upsample=True, blur_kernel=blur_kernel))
      self.convs.append(StyledConv(out_channel, out_channel, 3, style_dim,
                                   blur_kernel=blur_kernel))
      self.to_rgbs.append(ToRGB(out_channel, style_dim))
      in_channel = out_channel

  @torch.no_grad()
  def mean_latent(self, n_latent):
    z = torch.randn(n_latent, self.style_dim)
    return self.style(z).mean(0, keepdim=True)

  def forward(self, styles, return_latents=False, inject_index=None,
              truncation=1.0, truncation_latent=None, input_is_latent=False,
              noise=None, randomize_noise=True):
    if not input_is_latent:
      styles = [self.style(s) for s in styles]
    if noise is None:
      if randomize_noise:
        noise = [None] * self.num_layers
      else:
        noise = [getattr(self.noises, f'noise_{i}')
                 for i in range(self.num_layers)]
    if truncation < 1:
      styles = [truncation_latent + truncation * (s - truncation_latent)
                for s in styles]
    if len(styles) < 2:
      latent = styles[0]
      if latent.ndim < 3:
        latent = latent.unsqueeze(1).repeat(1, self.n_latent, 1)
    else:
      if inject_index is None:
        inject_index = random.randint(1, self.n_latent - 1)
      latent = torch.cat([
          styles[0].unsqueeze(1).repeat(1, inject_index, 1),
          styles[1].unsqueeze(1).repeat(1, self.n_latent - inject_index, 1)],
                         1)
    out = self.input(latent.shape[0])
    out = self.conv1(out, latent[:, 0], noise=noise[0])
    skip = self.to_rgb1(out, latent[:, 1])
    i = 1
    for j, to_rgb in enumerate(self.to_rgbs):
      conv_up, conv = self.convs[2 * j], self.convs[2 * j + 1]
      out = conv_up(out, latent[:, i], noise=noise[2 * j + 1])
      out = conv(out, latent[:, i + 1], noise=noise[2 * j + 2])
      skip = to_rgb(out, latent[:, i + 2], skip)
      i += 2
    if return_latents:
      return skip, latent
    return skip, None
