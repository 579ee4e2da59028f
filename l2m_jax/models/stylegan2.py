"""StyleGAN2 generator (stylegan2-pytorch layout) in Flax linen, NHWC.

Karras et al., "Analyzing and Improving the Image Quality of StyleGAN" (CVPR
2020): mapping network (Sec. 2 / Fig. 2b), weight modulation and demodulation
(Eq. 1-3), skip generator with ToRGB outputs (Fig. 7). The parameter layout and
numerics follow stylegan2-pytorch `model.py` as specified in
docs/method.md#stylegan2; checkpoints convert with
`l2m_jax.convert.stylegan2`.

Module names (setup attributes) mirror the PyTorch names:

  torch                               flax (params unless stated)
  style.{1..n_mlp}.weight (out, in)   style_{i}/weight (in, out), raw
  input.input (1, C, 4, 4)            input/input (1, 4, 4, C)
  conv1 / convs.{i}                   conv1 / convs_{i}
    .conv.weight (1, O, I, k, k)        .../conv/weight (k, k, I, O), raw
    .conv.modulation.{weight,bias}      .../conv/modulation/{weight,bias}
    .noise.weight (1,)                  .../noise/weight (1,)
    .activate.bias (O,)                 .../activate/bias (O,)
  to_rgb1 / to_rgbs.{j}               to_rgb1 / to_rgbs_{j}
    .bias (1, 3, 1, 1)                  .../bias (3,)
  noises.noise_{n} (1, 1, r, r)       'noises' collection: noise_{n}
                                        (1, r, r, 1)
  (checkpoint `latent_avg`)           'constants' collection: latent_avg
                                        (n_latent, D)

Blur/upsample kernels are buffers upstream; here they are recomputed from
`blur_kernel` (the converter checks the stored ones).

Equalized learning rate: raw parameters are stored; the scales
`lr_mul / sqrt(fan_in)` (EqualLinear) and `1 / sqrt(I k^2)` (modulated conv)
are applied at call time, as upstream.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

SQRT2 = math.sqrt(2.0)
_DN = ('NHWC', 'HWIO', 'NHWC')


def channel_widths(size: int, channel_multiplier: int = 2,
                   channel_base: int = 512) -> dict[int, int]:
  """{resolution: channels}; 512 and 2 give config-f (4..64 px: 512, ...).

  Widths are `channel_base` up to 32 px and `channel_base * channel_multiplier
  * 32 / res` above (stylegan2-pytorch `self.channels`; `channel_base` is an extra
  knob for narrow test models, 512 reproduces upstream).
  """
  widths = {}
  res = 4
  while res <= size:
    widths[res] = (channel_base if res <= 32 else
                   int(channel_base * channel_multiplier * 32 // res))
    res *= 2
  return widths


def make_kernel(k: Sequence[float]) -> np.ndarray:
  """Separable FIR kernel: outer(k, k) / sum (stylegan2-pytorch `make_kernel`)."""
  k = np.asarray(k, np.float32)
  if k.ndim == 1:
    k = np.outer(k, k)
  return (k / k.sum()).astype(np.float32)


def upfirdn2d(x: jax.Array, kernel: np.ndarray, up: int = 1, down: int = 1,
              pad: tuple[int, int] = (0, 0)) -> jax.Array:
  """upfirdn2d on NHWC: zero-insert `up`, pad/crop, true convolution, subsample.

  Same semantics as the CUDA op (docs/method.md#stylegan2): `up - 1` zeros after
  every
  sample, then pad p0 before and p1 after on both spatial axes (negative
  crops), then a depthwise convolution with the flipped kernel (VALID), then
  every `down`-th sample. Output size `(H*up + p0 + p1 - kh) // down + 1`.
  """
  c = x.shape[-1]
  p0, p1 = pad
  # Interior padding inserts the zeros, the high edge adds the trailing ones.
  cfg = [(0, 0, 0), (p0, p1 + up - 1, up - 1), (p0, p1 + up - 1, up - 1),
         (0, 0, 0)]
  x = jax.lax.pad(x, jnp.array(0, x.dtype), cfg)
  k = np.asarray(kernel, np.float32)[::-1, ::-1]
  w = jnp.asarray(np.tile(k[:, :, None, None], (1, 1, 1, c)), x.dtype)
  return jax.lax.conv_general_dilated(
      x, w, window_strides=(down, down), padding='VALID',
      dimension_numbers=_DN, feature_group_count=c)


class EqualLinear(nn.Module):
  """Linear layer with equalized learning rate (docs/method.md#equal-linear).

  `weight` is stored (in, out) raw (init N(0, 1) / lr_mul); the forward uses
  `x @ (weight * lr_mul / sqrt(in)) + bias * lr_mul`, optionally followed by
  leaky ReLU(0.2) * sqrt(2) ('fused_lrelu').
  """
  features: int
  use_bias: bool = True
  bias_init: float = 0.0
  lr_mul: float = 1.0
  activation: str | None = None
  zero_init: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    in_dim = x.shape[-1]
    if self.zero_init:
      w_init = nn.initializers.zeros
    else:
      w_init = lambda k, s: jax.random.normal(k, s) / self.lr_mul
    weight = self.param('weight', w_init, (in_dim, self.features))
    scale = self.lr_mul / math.sqrt(in_dim)
    y = jnp.dot(x.astype(self.dtype), (weight * scale).astype(self.dtype))
    if self.use_bias:
      bias = self.param('bias', nn.initializers.constant(self.bias_init),
                        (self.features,))
      y = y + (bias * self.lr_mul).astype(self.dtype)
    if self.activation == 'fused_lrelu':
      y = jax.nn.leaky_relu(y, 0.2) * SQRT2
    elif self.activation is not None:
      raise ValueError(f'EqualLinear: unknown activation {self.activation!r}')
    return y


class FusedLeakyReLU(nn.Module):
  """bias, leaky ReLU(0.2), * sqrt(2) (stylegan2-pytorch `FusedLeakyReLU`)."""
  channels: int

  @nn.compact
  def __call__(self, x):
    bias = self.param('bias', nn.initializers.zeros, (self.channels,))
    return jax.nn.leaky_relu(x + bias.astype(x.dtype), 0.2) * SQRT2


class ModulatedConv2d(nn.Module):
  """Modulated (and demodulated) convolution, optional fused 2x upsampling.

  Per-sample weight `W_b = scale * weight * s_b` (s = modulation(w)),
  demodulated by `rsqrt(sum_{I,kh,kw} W_b^2 + 1e-8)` (StyleGAN2 Eq. 1-3).

  Deviation from PyTorch: instead of a grouped convolution over per-sample
  weights, the input is scaled by `s_b` and convolved with the shared
  `scale * weight`, and the output is scaled by the demodulation factor
  (computed from `s_b^2 @ sum_{kh,kw} (scale*weight)^2`). This is the same
  linear map (StyleGAN2's "non-fused" form), differing only by float
  rounding, and uses one batched convolution.

  Upsampling: stylegan2-pytorch's conv_transpose2d(stride 2, pad 0) is a correlation
  of the 2x-dilated input, padded (k-1, k-1), with the spatially flipped
  kernel; it gives 2H+1, then Blur with pad (1, 1) gives 2H.
  """
  out_channels: int
  kernel_size: int
  demodulate: bool = True
  upsample: bool = False
  blur_kernel: Sequence[int] = (1, 3, 3, 1)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, style):
    b, h, w, c = x.shape
    k = self.kernel_size
    weight = self.param('weight', nn.initializers.normal(1.0),
                        (k, k, c, self.out_channels))
    s = EqualLinear(c, bias_init=1.0, name='modulation')(style)  # [B, I]
    scale = 1.0 / math.sqrt(c * k * k)
    wk = weight * scale  # [k, k, I, O]
    x = x * s[:, None, None, :].astype(x.dtype)
    kern = wk.astype(self.dtype)
    if self.upsample:
      out = jax.lax.conv_general_dilated(
          x, kern[::-1, ::-1], window_strides=(1, 1),
          padding=((k - 1, k - 1), (k - 1, k - 1)), lhs_dilation=(2, 2),
          dimension_numbers=_DN)
    else:
      p = k // 2
      out = jax.lax.conv_general_dilated(
          x, kern, window_strides=(1, 1), padding=((p, p), (p, p)),
          dimension_numbers=_DN)
    if self.demodulate:
      w2 = jnp.sum(jnp.square(wk), axis=(0, 1))  # [I, O]
      d = jax.lax.rsqrt(jnp.dot(jnp.square(s), w2) + 1e-8)  # [B, O]
      out = out * d[:, None, None, :].astype(out.dtype)
    if self.upsample:
      factor = 2
      p = (len(self.blur_kernel) - factor) - (k - 1)
      pad = ((p + 1) // 2 + factor - 1, p // 2 + 1)
      out = upfirdn2d(out, make_kernel(self.blur_kernel) * factor ** 2,
                      pad=pad)
    return out


class NoiseInjection(nn.Module):
  """x + weight * noise, noise [B or 1, H, W, 1] broadcast over channels."""

  @nn.compact
  def __call__(self, x, noise):
    weight = self.param('weight', nn.initializers.zeros, (1,))
    return x + weight.astype(x.dtype) * noise.astype(x.dtype)


class ConstantInput(nn.Module):
  channels: int
  size: int = 4

  @nn.compact
  def __call__(self, batch):
    const = self.param('input', nn.initializers.normal(1.0),
                       (1, self.size, self.size, self.channels))
    return jnp.broadcast_to(const, (batch,) + const.shape[1:])


class StyledConv(nn.Module):
  """ModulatedConv2d -> NoiseInjection -> FusedLeakyReLU."""
  out_channels: int
  kernel_size: int = 3
  upsample: bool = False
  blur_kernel: Sequence[int] = (1, 3, 3, 1)
  dtype: Any = jnp.float32

  def setup(self):
    self.conv = ModulatedConv2d(self.out_channels, self.kernel_size,
                                upsample=self.upsample,
                                blur_kernel=self.blur_kernel, dtype=self.dtype)
    self.noise = NoiseInjection()
    self.activate = FusedLeakyReLU(self.out_channels)

  def __call__(self, x, style, noise):
    return self.activate(self.noise(self.conv(x, style), noise))


class ToRGB(nn.Module):
  """1x1 modulated conv (no demodulation) + bias + upsampled skip."""
  upsample: bool = True
  blur_kernel: Sequence[int] = (1, 3, 3, 1)
  dtype: Any = jnp.float32

  def setup(self):
    self.conv = ModulatedConv2d(3, 1, demodulate=False, dtype=self.dtype)
    self.bias = self.param('bias', nn.initializers.zeros, (3,))

  def __call__(self, x, style, skip=None):
    out = self.conv(x, style) + self.bias.astype(x.dtype)
    if skip is not None:
      # stylegan2-pytorch `Upsample`: kernel * 4, up 2, pad (2, 1) -> 2H.
      kh = len(self.blur_kernel)
      p = kh - 2
      out = out + upfirdn2d(skip, make_kernel(self.blur_kernel) * 4, up=2,
                            pad=((p + 1) // 2 + 1, p // 2))
    return out


class Generator(nn.Module):
  """StyleGAN2 generator: mapping `style`, synthesis, ToRGB skips.

  Attributes:
    size: output resolution, a power of 2 >= 4.
    style_dim: latent width (512).
    n_mlp: mapping layers (8).
    channel_multiplier: 2 for config-f.
    channel_base: width at 4..32 px (512 upstream; smaller for tests).
    lr_mlp: mapping-network lr_mul (0.01).
    blur_kernel: FIR taps ([1, 3, 3, 1]).
  """
  size: int = 1024
  style_dim: int = 512
  n_mlp: int = 8
  channel_multiplier: int = 2
  channel_base: int = 512
  lr_mlp: float = 0.01
  blur_kernel: Sequence[int] = (1, 3, 3, 1)
  dtype: Any = jnp.float32

  @property
  def log_size(self) -> int:
    return int(math.log2(self.size))

  @property
  def num_layers(self) -> int:
    return (self.log_size - 2) * 2 + 1

  @property
  def n_latent(self) -> int:
    return self.log_size * 2 - 2

  def noise_shapes(self) -> list[tuple[int, int, int, int]]:
    return [(1, 2 ** ((i + 5) // 2), 2 ** ((i + 5) // 2), 1)
            for i in range(self.num_layers)]

  def setup(self):
    if self.size < 4 or 2 ** self.log_size != self.size:
      raise ValueError(f'Generator.size={self.size}: must be a power of 2 >= 4')
    ch = channel_widths(self.size, self.channel_multiplier, self.channel_base)
    self.style = {str(i): EqualLinear(self.style_dim, lr_mul=self.lr_mlp,
                                      activation='fused_lrelu',
                                      dtype=self.dtype)
                  for i in range(1, self.n_mlp + 1)}
    self.input = ConstantInput(ch[4])
    self.conv1 = StyledConv(ch[4], 3, blur_kernel=self.blur_kernel,
                            dtype=self.dtype)
    self.to_rgb1 = ToRGB(upsample=False, dtype=self.dtype)
    convs, to_rgbs = [], []
    for i in range(3, self.log_size + 1):
      out = ch[2 ** i]
      convs.append(StyledConv(out, 3, upsample=True,
                              blur_kernel=self.blur_kernel, dtype=self.dtype))
      convs.append(StyledConv(out, 3, blur_kernel=self.blur_kernel,
                              dtype=self.dtype))
      to_rgbs.append(ToRGB(blur_kernel=self.blur_kernel, dtype=self.dtype))
    self.convs = convs
    self.to_rgbs = to_rgbs
    # stylegan2-pytorch `noises.noise_{i}` buffers and the checkpoint's latent_avg.
    self.noise_buffers = [
        self.variable('noises', f'noise_{i}',
                      lambda s=s: jax.random.normal(self.make_rng('params'), s))
        for i, s in enumerate(self.noise_shapes())]
    self.latent_avg_buffer = self.variable(
        'constants', 'latent_avg',
        lambda: jnp.zeros((self.n_latent, self.style_dim), jnp.float32))

  def mapping(self, z):
    """z [..., D] -> w [..., D]: PixelNorm, n_mlp EqualLinear(fused_lrelu)."""
    x = z * jax.lax.rsqrt(jnp.mean(z * z, axis=-1, keepdims=True) + 1e-8)
    for i in range(1, self.n_mlp + 1):
      x = self.style[str(i)](x)
    return x

  def mean_latent(self, rng, n: int = 4096):
    """Mean of `mapping(z)` over n standard-normal z: [1, D]."""
    z = jax.random.normal(rng, (n, self.style_dim))
    return jnp.mean(self.mapping(z), axis=0, keepdims=True)

  def _stored_noises(self):
    return [v.value for v in self.noise_buffers]

  def latent_avg(self):
    return self.latent_avg_buffer.value

  def __call__(self, styles, *, input_is_latent: bool = False,
               truncation: float = 1.0, truncation_latent=None,
               noise_mode: str = 'const', noise=None, inject_index=None,
               return_latents: bool = False):
    """Synthesises images [B, size, size, 3] (about [-1, 1], not clamped).

    Args:
      styles: one array or a list of one or two arrays. [B, D] is z (or w when
        `input_is_latent`); [B, n_latent, D] is W+ (requires
        `input_is_latent`). Two arrays mix styles at `inject_index`.
      input_is_latent: inputs are w / W+ (skip the mapping network).
      truncation: psi; applied when < 1 as `t + psi * (w - t)`.
      truncation_latent: t, [D] / [1, D] / [n_latent, D]; defaults to the
        stored `latent_avg` (collection 'constants').
      noise_mode: 'const' (stored buffers, collection 'noises', as
        stylegan2-pytorch randomize_noise=False), 'random' (fresh N(0, 1) per sample
        from `self.make_rng('noise')`) or 'none' (zeros).
      noise: optional explicit list of num_layers arrays [B or 1, r, r, 1];
        overrides `noise_mode`.
      inject_index: row where the second style starts (mixing); sampled from
        the 'noise' rng in [1, n_latent - 1] when None.
      return_latents: also return the W+ actually used.

    Returns:
      images, or (images, latent [B, n_latent, D]) with return_latents.
    """
    if not isinstance(styles, (list, tuple)):
      styles = [styles]
    if not 1 <= len(styles) <= 2:
      raise ValueError(f'Generator: expected 1 or 2 style arrays, got '
                       f'{len(styles)}')
    styles = [jnp.asarray(s, self.dtype) for s in styles]
    for s in styles:
      if s.ndim == 3 and not input_is_latent:
        raise ValueError('Generator: a W+ input [B, n_latent, D] needs '
                         'input_is_latent=True')
      if s.shape[-1] != self.style_dim or s.ndim not in (2, 3) or (
          s.ndim == 3 and s.shape[1] != self.n_latent):
        raise ValueError(
            f'Generator: style shape {s.shape}; expected [B, {self.style_dim}]'
            f' or [B, {self.n_latent}, {self.style_dim}]')
    if not input_is_latent:
      styles = [self.mapping(s) for s in styles]
    stored_noises = self._stored_noises()
    avg = self.latent_avg()
    if truncation < 1:
      t = avg if truncation_latent is None else jnp.asarray(truncation_latent)
      t = t.reshape((-1, self.style_dim))
      new = []
      for s in styles:
        tt = t if s.ndim == 3 else t[0]
        new.append(tt + truncation * (s - tt))
      styles = new
    n = self.n_latent
    full = [s if s.ndim == 3 else jnp.broadcast_to(
        s[:, None, :], (s.shape[0], n, self.style_dim)) for s in styles]
    if len(full) == 1:
      latent = full[0]
    else:
      if inject_index is None:
        inject_index = jax.random.randint(self.make_rng('noise'), (), 1, n)
      rows = jnp.arange(n)[None, :, None]
      latent = jnp.where(rows < inject_index, full[0], full[1])
    batch = latent.shape[0]

    if noise is None:
      if noise_mode == 'const':
        noise = stored_noises
      elif noise_mode == 'random':
        noise = [jax.random.normal(self.make_rng('noise'),
                                   (batch,) + sh[1:], self.dtype)
                 for sh in self.noise_shapes()]
      elif noise_mode == 'none':
        noise = [jnp.zeros((1,) + sh[1:], self.dtype)
                 for sh in self.noise_shapes()]
      else:
        raise ValueError(f"noise_mode={noise_mode!r}: expected 'const', "
                         "'random' or 'none'")
    elif len(noise) != self.num_layers:
      raise ValueError(f'Generator: {len(noise)} noise arrays given, '
                       f'expected {self.num_layers}')

    out = self.input(batch).astype(self.dtype)
    out = self.conv1(out, latent[:, 0], noise[0])
    skip = self.to_rgb1(out, latent[:, 1])
    i = 1
    for j, to_rgb in enumerate(self.to_rgbs):
      out = self.convs[2 * j](out, latent[:, i], noise[2 * j + 1])
      out = self.convs[2 * j + 1](out, latent[:, i + 1], noise[2 * j + 2])
      skip = to_rgb(out, latent[:, i + 2], skip)
      i += 2
    image = skip
    if return_latents:
      return image, latent
    return image


def init_variables(model: Generator, rng) -> dict:
  """Random variables (params, noises, constants) for `model`."""
  z = jnp.zeros((1, model.style_dim), jnp.float32)
  return jax.jit(lambda r: model.init({'params': r, 'noise': r}, z))(rng)


def variables_template(model: Generator) -> dict:
  """`jax.eval_shape` of `init_variables`: the converted-checkpoint template."""
  return jax.eval_shape(lambda r: init_variables(model, r), jax.random.key(0))
