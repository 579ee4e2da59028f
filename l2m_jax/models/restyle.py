"""ReStyle-e4e encoder and ReStyle's iterative inversion, Flax linen, NHWC.

Alaluf et al., "ReStyle: A Residual-Based StyleGAN Encoder via Iterative
Refinement" (ICCV 2021), with the e4e encoder of Tov et al., "Designing an
Encoder for StyleGAN Image Manipulation" (SIGGRAPH 2021), as
yuval-alaluf/restyle-encoder defines it (`models/encoders/
restyle_e4e_encoders.py` `ProgressiveBackboneEncoder`, `models/encoders/
map2style.py` `GradualStyleBlock`, `models/e4e.py`,
`scripts/inference_iterative.py`).

Encoder: a 6-channel 256 x 256 input in [-1, 1] (target image, then the
current reconstruction) -> `input_layer` (Conv3x3(6 -> 64), BN, PReLU) -> the
IR-SE-50 body of `irse.py` (16 x 16 x 512) -> `n_styles` GradualStyleBlocks,
each 4 x [Conv3x3(512 -> 512, stride 2, pad 1, bias) -> LeakyReLU(0.01)]
(16 -> 1) and an EqualLinear(512 -> 512, lr_mul 1). Row 0 of the output is
w0 = styles_0(f); row i is w0 + styles_i(f) (the 'Inference' stage: every
delta active). n_styles = 2 log2(G.size) - 2 (18 at 1024 px).

Inversion (`restyle_invert`): with `latent_avg` the generator's mean latent
and `avg_image` = pool256(G(latent_avg)) (stored noise),

  codes_0 = latent_avg,           y_0 = avg_image
  codes_t = E(cat(x, y_{t-1})) + codes_{t-1},  y_t = pool256(G(codes_t))

for t = 1..N (ReStyle `run_on_batch`; the unofficial Latent-To-Latent code
uses N = 5). pool256 is `AdaptiveAvgPool2d(256)` (an exact 4 x 4 mean at
1024 px). G runs with its stored noise buffers (`randomize_noise=False`).

Parameter names (converter rule as in `irse.py`):

  torch key (encoder.*)                  Flax path
  input_layer.*, body.*                  as irse.py
  styles.{i}.convs.{0,2,4,6}.weight      styles_{i}/convs_{0,2,4,6}/kernel
  styles.{i}.convs.{0,2,4,6}.bias        styles_{i}/convs_{0,2,4,6}/bias
  styles.{i}.linear.weight (out, in)     styles_{i}/linear/weight (in, out), raw
  styles.{i}.linear.bias                 styles_{i}/linear/bias
  (checkpoint latent_avg)                'constants' latent_avg [n_styles, 512]
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from l2m_jax.models import irse
from l2m_jax.models import resize
from l2m_jax.models import stylegan2

Dtype = Any
INPUT_SIZE = 256
STYLE_DIM = 512


def n_styles_for(size: int) -> int:
  """W+ rows of a `size` px StyleGAN2 (ReStyle's `n_styles`)."""
  return int(math.log2(size)) * 2 - 2


class GradualStyleBlock(nn.Module):
  """Strided 3x3 convs (LeakyReLU 0.01) down to 1x1, then EqualLinear."""
  out_c: int = STYLE_DIM
  spatial: int = 16
  dtype: Dtype = jnp.float32

  def setup(self):
    n = int(math.log2(self.spatial))
    # Sequential indices 0, 2, 4, ... (the LeakyReLUs have no parameters).
    self.convs = {str(2 * i): irse.conv(self.out_c, 3, 2, 1, use_bias=True,
                                        dtype=self.dtype) for i in range(n)}
    self.linear = stylegan2.EqualLinear(self.out_c, lr_mul=1.0,
                                        dtype=self.dtype)

  def __call__(self, x):
    for i in range(len(self.convs)):
      x = jax.nn.leaky_relu(self.convs[str(2 * i)](x), 0.01)
    return self.linear(x.reshape(x.shape[0], self.out_c))


class ReStyleEncoder(nn.Module):
  """`ProgressiveBackboneEncoder` (IR-SE-50): [B, 256, 256, 6] -> [B, n, 512].

  Attributes:
    n_styles: output W+ rows (18 for a 1024 px generator).
    input_nc: input channels (6: image and reconstruction).
    num_layers: IR-SE depth (50).
    dtype: compute dtype (codes are returned in float32).
  """
  n_styles: int = 18
  input_nc: int = 6
  num_layers: int = 50
  dtype: Dtype = jnp.float32

  def setup(self):
    d = self.dtype
    self.input_layer = irse.make_input_layer(d)
    self.body = irse.make_body(self.num_layers, d)
    self.styles = [GradualStyleBlock(STYLE_DIM, 16, dtype=d)
                   for _ in range(self.n_styles)]
    self.latent_avg = self.variable(
        'constants', 'latent_avg',
        lambda: jnp.zeros((self.n_styles, STYLE_DIM), jnp.float32))

  def __call__(self, x):
    x = irse.apply_backbone(
        'ReStyleEncoder', x, (INPUT_SIZE, INPUT_SIZE, self.input_nc),
        'inputs', self.input_layer, self.body, self.dtype)
    w0 = self.styles[0](x)
    rows = [w0] + [w0 + s(x) for s in self.styles[1:]]
    return jnp.stack(rows, axis=1).astype(jnp.float32)

  def mean_latent(self):
    """The checkpoint's `latent_avg`, [n_styles, 512]."""
    return self.latent_avg.value


def average_image(generator: stylegan2.Generator, g_vars: Any,
                  latent_avg: jax.Array) -> jax.Array:
  """ReStyle's avg_image pool256(G(latent_avg)), stored noise: [1, 256, 256, 3].
  """
  w = jnp.broadcast_to(jnp.asarray(latent_avg, jnp.float32).reshape(
      1, -1, STYLE_DIM), (1, generator.n_latent, STYLE_DIM))
  img = generator.apply(g_vars, w, input_is_latent=True, noise_mode='const')
  return resize.adaptive_avg_pool2d(img.astype(jnp.float32),
                                    (INPUT_SIZE, INPUT_SIZE))


def restyle_invert(encoder: ReStyleEncoder, enc_vars: Any,
                   generator: stylegan2.Generator, g_vars: Any,
                   images: jax.Array, n_iters, avg_image: jax.Array | None
                   = None) -> tuple[jax.Array, jax.Array]:
  """ReStyle iterative inversion (pure; jit it, `n_iters` may be traced).

  Args:
    encoder, enc_vars: the ReStyle encoder and its variables (with the
      'constants' latent_avg).
    generator, g_vars: the StyleGAN2 generator the encoder was trained with.
    images: [B, 256, 256, 3] in [-1, 1] (aligned faces).
    n_iters: refinement iterations N >= 1 (a Python int or a traced int32:
      one compilation serves every N).
    avg_image: pool256(G(latent_avg)), [1, 256, 256, 3]; computed here when
      None (one extra generator pass per call).

  Returns:
    (codes [B, n_styles, 512] float32, reconstruction y_N [B, 256, 256, 3]).
  """
  if encoder.n_styles != generator.n_latent:
    raise ValueError(f'the encoder predicts {encoder.n_styles} W+ rows but '
                     f'the {generator.size} px generator uses '
                     f'{generator.n_latent}')
  latent_avg = enc_vars['constants']['latent_avg']
  if avg_image is None:
    avg_image = average_image(generator, g_vars, latent_avg)
  b = images.shape[0]
  images = images.astype(jnp.float32)
  codes = jnp.broadcast_to(jnp.asarray(latent_avg, jnp.float32)[None],
                           (b, encoder.n_styles, STYLE_DIM))
  y = jnp.broadcast_to(avg_image.astype(jnp.float32), images.shape)

  def step(_, carry):
    codes, y = carry
    codes = encoder.apply(enc_vars, jnp.concatenate([images, y], -1)) + codes
    img = generator.apply(g_vars, codes, input_is_latent=True,
                          noise_mode='const')
    y = resize.adaptive_avg_pool2d(img.astype(jnp.float32),
                                   (INPUT_SIZE, INPUT_SIZE))
    return codes, y

  return jax.lax.fori_loop(0, n_iters, step, (codes, y))


def init_variables(model: ReStyleEncoder, rng) -> dict:
  x = jnp.zeros((1, INPUT_SIZE, INPUT_SIZE, model.input_nc), jnp.float32)
  return jax.jit(model.init)(rng, x)


def variables_template(model: ReStyleEncoder) -> dict:
  return jax.eval_shape(lambda r: init_variables(model, r), jax.random.key(0))
