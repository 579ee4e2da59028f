"""StarGAN v2 building blocks, generator and discriminator (L2M-GAN variant).

Y. Choi et al., "StarGAN v2: Diverse Image Synthesis for Multiple Domains",
CVPR 2020, and G. Yang et al., "L2M-GAN: Learning to Manipulate Latent Space
Semantics for Facial Attribute Editing", CVPR 2021. Mirrors the authors'
`core/model.py` (`ResBlk`, `AdaIN`, `AdainResBlk`, `HighPass`, `Generator`,
`Discriminator`) as described in docs/method.md#l2m-blocks,
docs/method.md#l2m-generator, docs/method.md#l2m-discriminator,
docs/method.md#l2m-numerics.

Layout is NHWC. Parameter names follow the PyTorch modules; lists become
`<name>_<index>` and Sequential indices are kept:

  torch key                              Flax path
  from_rgb.{weight,bias}                 from_rgb/{kernel,bias}
  encode.i.conv{1,2}.{weight,bias}       encode_i/conv{1,2}/{kernel,bias}
  encode.i.norm{1,2}.{weight,bias}       encode_i/norm{1,2}/{scale,bias}
  encode.i.conv1x1.weight                encode_i/conv1x1/kernel
  decode.j.conv{1,2}.{weight,bias}       decode_j/conv{1,2}/{kernel,bias}
  decode.j.norm{1,2}.fc.{weight,bias}    decode_j/norm{1,2}/fc/{kernel,bias}
  decode.j.conv1x1.weight                decode_j/conv1x1/kernel
  to_rgb.0.{weight,bias}                 to_rgb_0/{scale,bias}
  to_rgb.2.{weight,bias}                 to_rgb_2/{kernel,bias}
  attention.layers.{0,2}.{weight,bias}   attention/layers_{0,2}/{kernel,bias}
  main.k.* (discriminator)               main_k/...

Conv weights are transposed OIHW -> HWIO and Linear weights (out, in) ->
(in, out) by the converter (`l2m_jax.convert.l2m`). The HighPass kernel is a
constant, not a parameter (it is not in the official state_dict either).

`dtype` is the compute dtype; parameters stay float32. Instance-norm
statistics are always computed in float32.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Tuple

import jax
import jax.numpy as jnp
from flax import linen as nn
import numpy as np

from l2m_jax.models import layers

Dtype = Any

MASK_SIZES = (32, 64, 128)  # Feature sizes with a masked high-pass skip.


def leaky_relu(x):
  return jax.nn.leaky_relu(x, 0.2)


def instance_norm(x: jax.Array, eps: float = 1e-5) -> jax.Array:
  """Per-sample, per-channel normalisation over H, W with biased variance."""
  dtype = x.dtype
  x = x.astype(jnp.float32)
  mean = jnp.mean(x, axis=(1, 2), keepdims=True)
  var = jnp.mean(jnp.square(x - mean), axis=(1, 2), keepdims=True)
  return ((x - mean) * jax.lax.rsqrt(var + eps)).astype(dtype)


def avg_pool2(x: jax.Array) -> jax.Array:
  """2x2 average pool, stride 2, no padding ([N, H, W, C] -> [N, H/2, W/2, C])."""
  n, h, w, c = x.shape
  return x.reshape(n, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


def upsample_nearest2(x: jax.Array) -> jax.Array:
  """Nearest x2 upsampling by pixel duplication (torch interpolate 'nearest')."""
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


def resize_bilinear_half_pixel(x: jax.Array, out_h: int, out_w: int
                               ) -> jax.Array:
  """Bilinear resize with align_corners=False and no antialiasing.

  Matches `torch.nn.functional.interpolate(mode='bilinear',
  align_corners=False)` (docs/method.md#l2m-numerics): source coordinate (d +
  0.5) * in / out -
  0.5, clamped below at 0, interpolating between floor and floor + 1 (clamped
  to in - 1). `jax.image.resize` antialiases when downsampling and differs.

  Args:
    x: [N, H, W, C].
    out_h: output height.
    out_w: output width.

  Returns:
    [N, out_h, out_w, C].
  """

  def axis_weights(n_in, n_out):
    scale = n_in / n_out
    src = np.maximum((np.arange(n_out) + 0.5) * scale - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int32), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    w1 = (src - i0).astype(np.float32)
    return i0, i1, 1.0 - w1, w1

  h0, h1, wh0, wh1 = axis_weights(x.shape[1], out_h)
  x = (x[:, h0] * wh0[None, :, None, None].astype(x.dtype)
       + x[:, h1] * wh1[None, :, None, None].astype(x.dtype))
  c0, c1, wc0, wc1 = axis_weights(x.shape[2], out_w)
  return (x[:, :, c0] * wc0[None, None, :, None].astype(x.dtype)
          + x[:, :, c1] * wc1[None, None, :, None].astype(x.dtype))


def conv(features: int, kernel: int, padding: int = 0, use_bias: bool = True,
         dtype: Dtype = jnp.float32) -> nn.Conv:
  """Stride-1 conv with explicit symmetric zero padding (PyTorch Conv2d)."""
  return layers.torch_conv(features, kernel, 1, padding, use_bias, dtype)


class InstanceNorm(nn.Module):
  """InstanceNorm2d(affine=True): params `scale` (torch weight) and `bias`."""
  features: int
  eps: float = 1e-5

  @nn.compact
  def __call__(self, x):
    scale = self.param('scale', nn.initializers.ones, (self.features,))
    bias = self.param('bias', nn.initializers.zeros, (self.features,))
    y = instance_norm(x, self.eps)
    return y * scale.astype(y.dtype) + bias.astype(y.dtype)


class ResBlk(nn.Module):
  """Pre-activation residual block, output (shortcut + residual) / sqrt(2).

  Residual: [norm1] -> LReLU -> conv1 -> [avgpool2] -> [norm2] -> LReLU ->
  conv2. Shortcut: [conv1x1 (no bias) if dim_in != dim_out] -> [avgpool2].
  """
  dim_in: int
  dim_out: int
  normalize: bool = False
  downsample: bool = False
  dtype: Dtype = jnp.float32

  def setup(self):
    self.conv1 = conv(self.dim_in, 3, 1, dtype=self.dtype)
    self.conv2 = conv(self.dim_out, 3, 1, dtype=self.dtype)
    if self.normalize:
      self.norm1 = InstanceNorm(self.dim_in)
      self.norm2 = InstanceNorm(self.dim_in)
    if self.dim_in != self.dim_out:
      self.conv1x1 = conv(self.dim_out, 1, 0, use_bias=False, dtype=self.dtype)

  def __call__(self, x):
    sc = x
    if self.dim_in != self.dim_out:
      sc = self.conv1x1(sc)
    if self.downsample:
      sc = avg_pool2(sc)
    h = x
    if self.normalize:
      h = self.norm1(h)
    h = self.conv1(leaky_relu(h))
    if self.downsample:
      h = avg_pool2(h)
    if self.normalize:
      h = self.norm2(h)
    h = self.conv2(leaky_relu(h))
    return (sc + h) / math.sqrt(2.0)


class AdaIN(nn.Module):
  """(1 + gamma) * IN(x) + beta, [gamma, beta] = fc(s) (first / second half)."""
  num_features: int
  dtype: Dtype = jnp.float32

  def setup(self):
    self.fc = nn.Dense(2 * self.num_features, dtype=self.dtype)

  def __call__(self, x, s):
    h = self.fc(s)[:, None, None, :]  # [N, 1, 1, 2C]
    gamma, beta = h[..., :self.num_features], h[..., self.num_features:]
    return (1 + gamma) * instance_norm(x).astype(h.dtype) + beta


class AdainResBlk(nn.Module):
  """AdaIN residual block of the decoder.

  Residual: norm1(x, s) -> LReLU -> [nearest x2] -> conv1 -> norm2(., s) ->
  LReLU -> conv2. With w_hpf == 0 the output is (residual + shortcut) /
  sqrt(2) (shortcut: [nearest x2] -> [conv1x1]); with w_hpf > 0 it is the
  residual alone and `conv1x1` exists only so that the checkpoint round-trips.
  """
  dim_in: int
  dim_out: int
  w_hpf: float = 0
  upsample: bool = False
  dtype: Dtype = jnp.float32

  def setup(self):
    self.conv1 = conv(self.dim_out, 3, 1, dtype=self.dtype)
    self.conv2 = conv(self.dim_out, 3, 1, dtype=self.dtype)
    self.norm1 = AdaIN(self.dim_in, dtype=self.dtype)
    self.norm2 = AdaIN(self.dim_out, dtype=self.dtype)
    if self.dim_in != self.dim_out:
      self.conv1x1 = conv(self.dim_out, 1, 0, use_bias=False, dtype=self.dtype)

  def __call__(self, x, s):
    h = leaky_relu(self.norm1(x, s))
    if self.upsample:
      h = upsample_nearest2(h)
    h = self.conv1(h)
    h = leaky_relu(self.norm2(h, s))
    h = self.conv2(h)
    learned_sc = self.dim_in != self.dim_out
    if self.w_hpf == 0:
      sc = upsample_nearest2(x) if self.upsample else x
      if learned_sc:
        sc = self.conv1x1(sc)
      return (h + sc) / math.sqrt(2.0)
    if learned_sc and self.is_initializing():
      # Deviation from PyTorch: the unused shortcut is touched only at init,
      # so that its parameters exist (the official checkpoint carries them).
      self.conv1x1(x)
    return h


class HighPass(nn.Module):
  """Depthwise 3x3 filter [[-1,-1,-1],[-1,8,-1],[-1,-1,-1]] / w_hpf, zero pad 1.

  The kernel is a constant (no parameter), as in the original, where it is
  a plain attribute and not in the state_dict.
  """
  w_hpf: float = 1.0

  def __call__(self, x):
    c = x.shape[-1]
    k = np.full((3, 3), -1.0, np.float32)
    k[1, 1] = 8.0
    k = jnp.asarray(np.tile((k / self.w_hpf)[:, :, None, None], (1, 1, 1, c)),
                    x.dtype)  # [3, 3, 1, C] HWIO, one filter per channel.
    return jax.lax.conv_general_dilated(
        x, k, window_strides=(1, 1), padding=((1, 1), (1, 1)),
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'), feature_group_count=c,
        precision=jax.lax.Precision.HIGHEST)


class Attention(nn.Module):
  """Linear -> ReLU -> Linear (`attention.layers.{0,2}`); never called in forward."""
  style_dim: int = 64
  dtype: Dtype = jnp.float32

  def setup(self):
    self.layers_0 = nn.Dense(self.style_dim, dtype=self.dtype)
    self.layers_2 = nn.Dense(self.style_dim, dtype=self.dtype)

  def __call__(self, s):
    return self.layers_2(nn.relu(self.layers_0(s)))


def _num_stages(img_size: int, extra: int) -> int:
  n = int(round(math.log2(img_size)))
  if 2**n != img_size:
    raise ValueError(f'img_size must be a power of 2, got {img_size}')
  return n + extra


class Generator(nn.Module):
  """L2M-GAN / StarGAN v2 generator G(x, s, masks)
  (docs/method.md#l2m-generator).

  Attributes:
    img_size: input/output resolution (power of 2).
    style_dim: style code size.
    max_conv_dim: channel cap.
    w_hpf: high-pass weight; > 0 adds one stage, the masked skips and the
      residual-only decoder blocks.
    dtype: compute dtype.
    base_dim: first-conv width; None = the official `2^14 // img_size`.
  """
  img_size: int = 256
  style_dim: int = 64
  max_conv_dim: int = 512
  w_hpf: float = 1
  dtype: Dtype = jnp.float32
  base_dim: Optional[int] = None

  def setup(self):
    dim_in = stem_width(self.img_size, self.base_dim)
    self.from_rgb = conv(dim_in, 3, 1, dtype=self.dtype)
    repeat_num = _num_stages(self.img_size, -4) + (1 if self.w_hpf > 0 else 0)
    encode, decode = [], []
    dim_out = dim_in
    for _ in range(repeat_num):
      dim_out = min(dim_in * 2, self.max_conv_dim)
      encode.append(ResBlk(dim_in, dim_out, normalize=True, downsample=True,
                           dtype=self.dtype))
      decode.insert(0, AdainResBlk(dim_out, dim_in, w_hpf=self.w_hpf,
                                   upsample=True, dtype=self.dtype))
      dim_in = dim_out
    for _ in range(2):
      encode.append(ResBlk(dim_out, dim_out, normalize=True, dtype=self.dtype))
      decode.insert(0, AdainResBlk(dim_out, dim_out, w_hpf=self.w_hpf,
                                   dtype=self.dtype))
    self.encode = encode
    self.decode = decode
    self.to_rgb_0 = InstanceNorm(stem_width(self.img_size, self.base_dim))
    self.to_rgb_2 = conv(3, 1, 0, dtype=self.dtype)
    if self.w_hpf > 0:
      self.hpf = HighPass(self.w_hpf)
    self.attention = Attention(self.style_dim, dtype=self.dtype)

  def __call__(self, x: jax.Array, s: jax.Array,
               masks: Optional[Tuple[jax.Array, jax.Array]] = None
               ) -> jax.Array:
    """Translates x with style s.

    Args:
      x: [N, S, S, 3] images in [-1, 1].
      s: [N, style_dim] style codes.
      masks: None, or (m1, m2) each [N, 256, 256, 1] landmark masks; used
        only when w_hpf > 0.

    Returns:
      [N, S, S, 3] float32, not clamped.
    """
    if self.is_initializing():
      # Deviation from PyTorch: `attention` is never used; call it once at
      # init so its parameters exist as in the official checkpoint.
      self.attention(s)
    if masks is not None and self.w_hpf <= 0:
      raise ValueError('masks were given to a generator with w_hpf == 0')
    x = self.from_rgb(x.astype(self.dtype))
    s = s.astype(self.dtype)
    cache = {}
    for block in self.encode:
      if masks is not None and x.shape[1] in MASK_SIZES:
        cache[x.shape[1]] = x
      x = block(x)
    for block in self.decode:
      x = block(x, s)
      size = x.shape[1]
      if masks is not None and size in MASK_SIZES:
        mask = masks[0] if size == 32 else masks[1]
        mask = resize_bilinear_half_pixel(mask.astype(jnp.float32), size, size)
        x = x + self.hpf(mask.astype(x.dtype) * cache[size])
    x = self.to_rgb_0(x)
    x = self.to_rgb_2(leaky_relu(x))
    return x.astype(jnp.float32)


def stem_width(img_size: int, base_dim: Optional[int] = None) -> int:
  """Channels of the first conv: `2^14 // img_size` officially (64 at 256).

  Deviation from PyTorch: `base_dim` overrides the official rule, which gives
  512 channels at 32 px; small CPU models (the embedded demo) use 16-64.
  """
  if base_dim is None:
    return 2**14 // img_size
  if int(base_dim) <= 0:
    raise ValueError(f'base_dim must be a positive int, got {base_dim}')
  return int(base_dim)


def build_trunk(parent: nn.Module, prefix: str, img_size: int,
                max_conv_dim: int, dtype: Dtype,
                base_dim: Optional[int] = None) -> Tuple[int, int]:
  """Creates the shared conv trunk as `<prefix>_<index>` attributes of `parent`.

  Used by the style encoder (`shared_k`) and the discriminator (`main_k`);
  must be called from `parent.setup()`. Sequential indices as in PyTorch:
  0 conv 3x3; 1..R ResBlk(downsample) with R = log2(img_size) - 2; R+1 LReLU;
  R+2 conv 4x4 valid; R+3 LReLU.

  Returns:
    (output channels, R).
  """
  dim_in = stem_width(img_size, base_dim)
  setattr(parent, f'{prefix}_0', conv(dim_in, 3, 1, dtype=dtype))
  repeat_num = _num_stages(img_size, -2)
  dim_out = dim_in
  for i in range(repeat_num):
    dim_out = min(dim_in * 2, max_conv_dim)
    setattr(parent, f'{prefix}_{i + 1}',
            ResBlk(dim_in, dim_out, downsample=True, dtype=dtype))
    dim_in = dim_out
  setattr(parent, f'{prefix}_{repeat_num + 2}',
          nn.Conv(dim_out, (4, 4), padding=((0, 0), (0, 0)), dtype=dtype))
  return dim_out, repeat_num


def run_trunk(parent: nn.Module, prefix: str, repeat_num: int,
              x: jax.Array) -> jax.Array:
  """Runs the trunk made by `build_trunk`: [N, S, S, 3] -> [N, 1, 1, C]."""
  for i in range(repeat_num + 1):
    x = getattr(parent, f'{prefix}_{i}')(x)
  x = getattr(parent, f'{prefix}_{repeat_num + 2}')(leaky_relu(x))
  return leaky_relu(x)


class Discriminator(nn.Module):
  """StarGAN v2 multi-head discriminator D_y(x)
  (docs/method.md#l2m-discriminator).

  Paths: `main_0` conv, `main_1..R` ResBlk, `main_{R+2}` conv 4x4,
  `main_{R+4}` conv 1x1 -> num_domains (R = log2(img_size) - 2).
  """
  img_size: int = 256
  num_domains: int = 2
  max_conv_dim: int = 512
  dtype: Dtype = jnp.float32
  base_dim: Optional[int] = None

  def setup(self):
    _, self._repeat_num = build_trunk(self, 'main', self.img_size,
                                      self.max_conv_dim, self.dtype,
                                      self.base_dim)
    setattr(self, f'main_{self._repeat_num + 4}',
            conv(self.num_domains, 1, 0, dtype=self.dtype))

  def __call__(self, x: jax.Array, y: jax.Array) -> jax.Array:
    """Logits [N] of domain y[n] for each image x[n] ([N, S, S, 3])."""
    r = self._repeat_num
    h = run_trunk(self, 'main', r, x.astype(self.dtype))
    out = getattr(self, f'main_{r + 4}')(h).reshape(h.shape[0], -1)
    out = jnp.take_along_axis(out, y.astype(jnp.int32)[:, None], axis=1)
    return out[:, 0].astype(jnp.float32)
