"""BranchedTiny 40-attribute CelebA classifier, Flax linen, NHWC, eval mode.

The attribute classifier of the unofficial Latent-To-Latent code
(850552586/Latent-To-Latent `models/attribute_classifier/BranchedTiny.py`,
after Vandenhende et al., "Branched Multi-Task Networks: Deciding What Layers
To Share", BMVC 2020, arXiv 1904.02920). Width w = 64 throughout.

  conv unit C = Conv3x3(w, pad 1, bias) -> ReLU -> BatchNorm (after the ReLU)
  M = MaxPool 2x2 / 2
  to_layer_6          [C, C, M, C, C, M, C, C]   224 -> 56 (first conv 3 -> w)
  from_6_to_11.{0,1}  [C, M, C, C, C, M, C]      56 -> 14
  layers12.{0..2}     [C]                        14
  layers13.{0..9}     [C, M]                     14 -> 7, flatten 3136
  layers14.{0..17}    Linear(3136 -> 128) -> ReLU -> BatchNorm1d
  layers15.{0..32}    Linear(128 -> 128) -> ReLU -> BatchNorm1d
  layers16.{0..39}    Linear(128 -> 1): the 40 logits, in `ATTRIBUTES` order

Each branch reads the output of one parent branch of the previous level
(`PARENTS`). The input path of the unofficial wrapper (`BranchedTinyAttr`)
is in `classifier_logits`: [-1, 1] -> [0, 1] by x * 0.5 + 0.5, resize to
224 x 224 with PyTorch 'nearest' when the width is not 224 (the wrapper's
`F.interpolate` default; its config's 'area' is never passed), then
(x - mean) / std with the CelebA statistics stored in the checkpoint.

Parameter names: the PyTorch key with every '.' of the module path replaced
by '_' (`from_6_to_11.0.14.weight` -> `from_6_to_11_0_14/kernel`); BatchNorm
statistics go to 'batch_stats', the stored `celeba_aligned_means` / `_stds`
to the 'constants' collection.

Deviation from PyTorch: the flatten before `layers14` runs over NHWC
activations; the converter permutes the (128, 64*7*7) channel-major weights
to (7*7*64, 128) in (h, w, c) row order. The function is the same.
"""

from __future__ import annotations

import re
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from l2m_jax.models import resize

Dtype = Any
IMAGE_SIZE = 224
WIDTH = 64
CELEBA_MEAN = (0.5061, 0.4254, 0.3828)
CELEBA_STD = (0.2661, 0.2453, 0.2413)

# Output order of the 40 logits (the classifier's own order, not CelebA's).
ATTRIBUTES = (
    'blurry', 'sideburns', 'wearing_earrings', 'bald', 'goatee', 'mustache',
    '5_o_clock_shadow', 'arched_eyebrows', 'no_beard', 'heavy_makeup', 'male',
    'wearing_lipstick', 'black_hair', 'high_cheekbones', 'smiling',
    'mouth_slightly_open', 'oval_face', 'bushy_eyebrows', 'attractive',
    'young', 'gray_hair', 'brown_hair', 'blond_hair', 'pale_skin', 'chubby',
    'double_chin', 'big_nose', 'bags_under_eyes', 'wearing_necklace',
    'wearing_necktie', 'rosy_cheeks', 'bangs', 'wavy_hair', 'straight_hair',
    'wearing_hat', 'big_lips', 'narrow_eyes', 'pointy_nose',
    'receding_hairline', 'eyeglasses')


def _expand(groups):
  """[(parent, count), ...] -> parent index of each child, in order."""
  return tuple(p for p, n in groups for _ in range(n))


# Parent branch (in the previous level) of every branch of levels 11..16.
PARENTS = {
    'from_6_to_11': (None, None),  # both read the trunk
    'layers12': (0, 0, 1),
    'layers13': _expand([(0, 4), (1, 5), (2, 1)]),
    'layers14': _expand([(0, 1), (1, 3), (2, 2), (3, 1), (4, 3), (5, 2),
                         (6, 3), (7, 1), (8, 1), (9, 1)]),
    'layers15': _expand([(0, 1), (1, 1), (2, 2), (3, 4), (4, 2), (5, 1),
                         (6, 1), (7, 3), (8, 2), (9, 3), (10, 2), (11, 3),
                         (12, 1), (13, 2), (14, 1), (15, 1), (16, 2),
                         (17, 1)]),
    'layers16': _expand([(0, 1), (1, 2), (2, 2)] +
                        [(i, 1) for i in range(3, 7)] + [(7, 3), (8, 3)] +
                        [(i, 1) for i in range(9, 29)] + [(29, 2)] +
                        [(i, 1) for i in range(30, 33)]),
}

# Sequential layouts: 'C' conv unit (conv i, BN i + 2), 'M' max pool.
TRUNK = 'CCMCCMCC'
MID = 'CMCCCMC'
LEVEL12 = 'C'
LEVEL13 = 'CM'


def conv_indices(layout: str) -> list[int]:
  """Sequential indices of the convs of a layout (BN at index + 2)."""
  out, i = [], 0
  for c in layout:
    if c == 'C':
      out.append(i)
      i += 3
    else:
      i += 1
  return out


class BranchedTiny(nn.Module):
  """40 attribute logits from normalised 224 x 224 RGB, [B, 224, 224, 3].

  The caller normalises (see `classifier_logits`); the CelebA statistics
  live in the 'constants' collection (`celeba_aligned_means`, `_stds`).
  """
  dtype: Dtype = jnp.float32

  def _stack(self, layout, prefix, x):
    # Children named '<prefix>_<index>' directly under this module.
    i = 0
    for c in layout:
      if c == 'C':
        x = nn.Conv(WIDTH, (3, 3), padding=((1, 1), (1, 1)), dtype=self.dtype,
                    name=f'{prefix}_{i}')(x)
        x = jax.nn.relu(x)
        x = nn.BatchNorm(use_running_average=True, momentum=0.9,
                         epsilon=1e-5, dtype=self.dtype,
                         name=f'{prefix}_{i + 2}')(x)
        i += 3
      else:
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
        i += 1
    return x

  def _fc(self, prefix, x, features, relu_bn):
    x = nn.Dense(features, dtype=self.dtype, name=f'{prefix}_0')(x)
    if relu_bn:
      x = jax.nn.relu(x)
      x = nn.BatchNorm(use_running_average=True, momentum=0.9, epsilon=1e-5,
                       dtype=self.dtype, name=f'{prefix}_2')(x)
    return x

  @nn.compact
  def __call__(self, x):
    if x.ndim != 4 or x.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE, 3):
      raise ValueError(f'BranchedTiny expects [B, {IMAGE_SIZE}, {IMAGE_SIZE}'
                       f', 3] normalised images, got {x.shape}')
    self.variable('constants', 'celeba_aligned_means',
                  lambda: jnp.asarray(CELEBA_MEAN, jnp.float32))
    self.variable('constants', 'celeba_aligned_stds',
                  lambda: jnp.asarray(CELEBA_STD, jnp.float32))
    x = x.astype(self.dtype)
    trunk = self._stack(TRUNK, 'to_layer_6', x)
    y11 = [self._stack(MID, f'from_6_to_11_{b}', trunk) for b in range(2)]
    y12 = [self._stack(LEVEL12, f'layers12_{b}', y11[p])
           for b, p in enumerate(PARENTS['layers12'])]
    y13 = [self._stack(LEVEL13, f'layers13_{b}', y12[p])
           for b, p in enumerate(PARENTS['layers13'])]
    y13 = [y.reshape(y.shape[0], -1) for y in y13]  # NHWC flatten
    y14 = [self._fc(f'layers14_{b}', y13[p], 2 * WIDTH, True)
           for b, p in enumerate(PARENTS['layers14'])]
    y15 = [self._fc(f'layers15_{b}', y14[p], 2 * WIDTH, True)
           for b, p in enumerate(PARENTS['layers15'])]
    y16 = [self._fc(f'layers16_{b}', y15[p], 1, False)
           for b, p in enumerate(PARENTS['layers16'])]
    return jnp.concatenate(y16, axis=-1).astype(jnp.float32)


def classifier_input(variables: Any, images: jax.Array,
                     resize_mode: str = 'nearest') -> jax.Array:
  """[-1, 1] images [B, H, W, 3] -> the normalised [B, 224, 224, 3] input.

  resize_mode: 'nearest' (PyTorch index rule, the unofficial code's path)
  or 'area' (adaptive average pooling, `F.interpolate(mode='area')`).
  As upstream, images are resized only when their width is not 224.
  """
  if images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(f'classifier input must be RGB images [B, H, W, 3], got '
                     f'{images.shape}')
  x = images.astype(jnp.float32) * 0.5 + 0.5
  if x.shape[2] != IMAGE_SIZE:
    if resize_mode == 'nearest':
      x = resize.nearest_resize(x, (IMAGE_SIZE, IMAGE_SIZE))
    elif resize_mode == 'area':
      x = resize.adaptive_avg_pool2d(x, (IMAGE_SIZE, IMAGE_SIZE))
    else:
      raise ValueError(f"resize_mode={resize_mode!r}: expected 'nearest' or "
                       "'area'")
  consts = variables['constants']
  mean = jnp.asarray(consts['celeba_aligned_means'], jnp.float32)
  std = jnp.asarray(consts['celeba_aligned_stds'], jnp.float32)
  return (x - mean) / std


def classifier_logits(variables: Any, images: jax.Array, *,
                      resize_mode: str = 'nearest',
                      dtype: Dtype = jnp.float32) -> jax.Array:
  """The 40 logits [B, 40] of face images [B, H, W, 3] in [-1, 1].

  Pure and differentiable (`sigmoid` gives the attribute probabilities the
  unofficial training compares); for use inside jit.
  """
  x = classifier_input(variables, images, resize_mode)
  return BranchedTiny(dtype=dtype).apply(variables, x)


def attribute_index(name: str) -> int:
  """Index in ATTRIBUTES of 'smiling' (also 'Smiling', '31_Smiling')."""
  key = re.sub(r'^\d\d_', '', str(name)).lower()
  if key not in ATTRIBUTES:
    raise ValueError(f'unknown attribute {name!r}; the classifier has: '
                     + ', '.join(ATTRIBUTES))
  return ATTRIBUTES.index(key)


def init_variables(model: BranchedTiny, rng) -> dict:
  x = jnp.zeros((1, IMAGE_SIZE, IMAGE_SIZE, 3), jnp.float32)
  return jax.jit(model.init)(rng, x)


def variables_template(model: BranchedTiny) -> dict:
  return jax.eval_shape(lambda r: init_variables(model, r), jax.random.key(0))

