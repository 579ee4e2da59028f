"""ArcFace IR-SE-50 identity network and pSp's identity crop, Flax linen, NHWC.

The face-recognition network pSp, e4e and ReStyle use for their identity loss
(eladrich/pixel2style2pixel `models/encoders/model_irse.py` `Backbone(112, 50,
'ir_se', drop_ratio=0.6)`, weights `model_ir_se50.pth` from TreB1eN's
InsightFace_Pytorch; Deng et al., "ArcFace", CVPR 2019): the IR-SE-50 body of
`irse.py` on a 3-channel 112 px input, then

  output_layer.0  BatchNorm2d(512)
  output_layer.1  Dropout(0.6)           (identity: eval mode)
  output_layer.2  Flatten
  output_layer.3  Linear(512*7*7 -> 512)
  output_layer.4  BatchNorm1d(512)
  l2_norm         x / ||x||_2 (no epsilon, as upstream)

Deviation from PyTorch: Flatten here runs over NHWC activations, so the
Flax kernel of `output_layer_3` is (7*7*512, 512) in (h, w, c) row order; the
converter permutes the PyTorch (512, 512*7*7) channel-major weight into it.
The function is the same.

`identity_crop` / `arcface_embed` reproduce pSp's `IDLoss.extract_feats`
(`criteria/id_loss.py`): from an image in [-1, 1] take rows 35:223 and
columns 32:220 of its 256 px version (188 x 188) and adaptive-average-pool
to 112 x 112. Images that are not 256 px are first adaptive-average-pooled to
256, as the e4e and StyleCLIP identity losses do (1024 -> 256 is an exact 4x4
mean). Everything is differentiable.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from l2m_jax.models import irse
from l2m_jax.models import resize

Dtype = Any
EMBED_DIM = 512
CROP_ROWS = (35, 223)
CROP_COLS = (32, 220)


class ArcFace(nn.Module):
  """IR-SE ArcFace: [B, S, S, 3] (S = input_size) -> [B, 512], unit norm.

  Attributes:
    input_size: 112 (pSp) or 224 (the 14 x 14 head of the same code base).
    num_layers: 50 (IR-SE-50); 100 and 152 are the deeper variants.
    dtype: compute dtype (the embedding is normalised in float32).
  """
  input_size: int = 112
  num_layers: int = 50
  dtype: Dtype = jnp.float32

  def setup(self):
    if self.input_size not in (112, 224):
      raise ValueError(f'ArcFace.input_size={self.input_size}: expected 112 '
                       'or 224')
    d = self.dtype
    self.input_layer = irse.make_input_layer(d)
    self.body = irse.make_body(self.num_layers, d)
    self.output_layer_0 = irse.batch_norm(d)
    self.output_layer_3 = nn.Dense(EMBED_DIM, dtype=d)
    self.output_layer_4 = irse.batch_norm(d)

  def __call__(self, x):
    """x: [B, input_size, input_size, 3] in [-1, 1] (already cropped)."""
    x = irse.apply_backbone(
        'ArcFace', x, (self.input_size, self.input_size, 3), 'images',
        self.input_layer, self.body, self.dtype)
    x = self.output_layer_0(x)
    x = x.reshape(x.shape[0], -1)  # NHWC flatten (see the module docstring)
    x = self.output_layer_4(self.output_layer_3(x))
    x = x.astype(jnp.float32)
    return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


def identity_crop(images: jax.Array) -> jax.Array:
  """pSp identity-loss input: [B, S, S, 3] in [-1, 1] -> [B, 112, 112, 3]."""
  if images.ndim != 4 or images.shape[-1] != 3 or (
      images.shape[1] != images.shape[2]):
    raise ValueError(f'identity_crop expects square RGB images [B, S, S, 3], '
                     f'got {images.shape}')
  x = resize.adaptive_avg_pool2d(images, (256, 256))
  x = x[:, CROP_ROWS[0]:CROP_ROWS[1], CROP_COLS[0]:CROP_COLS[1]]
  return resize.adaptive_avg_pool2d(x, (112, 112))


def arcface_embed(variables: Any, images: jax.Array, *,
                  dtype: Dtype = jnp.float32, num_layers: int = 50
                  ) -> jax.Array:
  """Unit ArcFace embeddings [B, 512] of face images [B, S, S, 3] in [-1, 1].

  The identity crop (`identity_crop`) then the 112 px network; pure and
  differentiable in `images` (and `variables`), for use inside jit.
  """
  return ArcFace(num_layers=num_layers, dtype=dtype).apply(
      variables, identity_crop(images))


def identity_loss(variables: Any, images: jax.Array, targets: jax.Array,
                  **kwargs) -> jax.Array:
  """pSp's identity loss: mean over the batch of 1 - <e(images), e(targets)>.

  The target embeddings are not differentiated (upstream detaches them).
  """
  e = arcface_embed(variables, images, **kwargs)
  t = jax.lax.stop_gradient(arcface_embed(variables, targets, **kwargs))
  return jnp.mean(1.0 - jnp.sum(e * t, axis=-1))


def init_variables(model: ArcFace, rng) -> dict:
  x = jnp.zeros((1, model.input_size, model.input_size, 3), jnp.float32)
  return jax.jit(model.init)(rng, x)


def variables_template(model: ArcFace) -> dict:
  return jax.eval_shape(lambda r: init_variables(model, r), jax.random.key(0))
