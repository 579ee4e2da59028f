"""IR-SE backbone units (ArcFace / pSp / ReStyle), Flax linen, NHWC, eval mode.

The improved-residual ResNet of Deng et al., "ArcFace: Additive Angular Margin
Loss for Deep Face Recognition" (CVPR 2019) with the squeeze-and-excitation
blocks of Hu et al. (CVPR 2018), as pSp and ReStyle define it
(eladrich/pixel2style2pixel `models/encoders/helpers.py`: `bottleneck_IR_SE`,
`SEModule`, `get_blocks`). Written once here and used by the ArcFace identity
network (`arcface.py`, 3-channel input, 112 px) and the ReStyle-e4e encoder
(`restyle.py`, 6-channel input, 256 px).

Unit `BottleneckIRSE(in, depth, stride)`: res(x) + shortcut(x), no
activation after the sum.
  shortcut: x[:, ::stride, ::stride] when in == depth (upstream
    `MaxPool2d(1, stride)`), else Conv1x1(stride, no bias) -> BN.
  res: BN(in) -> Conv3x3(in -> depth, pad 1) -> PReLU(depth) ->
    Conv3x3(depth -> depth, stride, pad 1) -> BN(depth) -> SE(depth, 16).
  SE: x * sigmoid(fc2(relu(fc1(mean over H, W of x)))), fc1/fc2 1x1 convs.

The 50-layer body has 3, 4, 14 and 3 units of depth 64, 128, 256 and 512,
the first of each stage with stride 2 (256 px in -> 16 px, 112 -> 7).

BatchNorm runs on its running statistics (eps 1e-5): these networks are used
frozen, as upstream uses them in eval mode.

Parameter names follow the PyTorch Sequential indices (converter rule: the
torch key with each `.<digit>` joined to its module by `_`):

  torch key                          Flax path
  input_layer.0.weight (64,C,3,3)    input_layer_0/kernel (3,3,C,64)
  input_layer.1.* (BN)               input_layer_1/{scale,bias}, batch_stats
                                       input_layer_1/{mean,var}
  input_layer.2.weight (PReLU)       input_layer_2/weight
  body.{u}.res_layer.{0,4}.*         body_{u}/res_layer_{0,4}/... (BN)
  body.{u}.res_layer.{1,3}.weight    body_{u}/res_layer_{1,3}/kernel
  body.{u}.res_layer.2.weight        body_{u}/res_layer_2/weight (PReLU)
  body.{u}.res_layer.5.fc{1,2}.weight  body_{u}/res_layer_5/fc{1,2}/kernel
  body.{u}.shortcut_layer.0.weight   body_{u}/shortcut_layer_0/kernel
  body.{u}.shortcut_layer.1.*        body_{u}/shortcut_layer_1/... (BN)
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from l2m_jax.models import layers

Dtype = Any

# (depth, units) per stage of the 50/100/152-layer bodies (`get_blocks`).
STAGES = {
    50: ((64, 3), (128, 4), (256, 14), (512, 3)),
    100: ((64, 3), (128, 13), (256, 30), (512, 3)),
    152: ((64, 3), (128, 8), (256, 36), (512, 3)),
}


def unit_list(num_layers: int = 50) -> list[tuple[int, int, int]]:
  """(in_channel, depth, stride) of every body unit, in order."""
  if num_layers not in STAGES:
    raise ValueError(f'num_layers={num_layers}: expected one of '
                     f'{sorted(STAGES)}')
  units, cin = [], 64
  for depth, count in STAGES[num_layers]:
    units.append((cin, depth, 2))
    units += [(depth, depth, 1)] * (count - 1)
    cin = depth
  return units


def batch_norm(dtype: Dtype = jnp.float32) -> nn.BatchNorm:
  """Eval-mode BatchNorm with PyTorch's eps (1e-5) and momentum (0.1)."""
  return nn.BatchNorm(use_running_average=True, momentum=0.9, epsilon=1e-5,
                      dtype=dtype)


# A PyTorch-padded convolution, without bias unless asked.
conv = functools.partial(layers.torch_conv, use_bias=False)


class PReLU(nn.Module):
  """Per-channel PReLU, `weight` (C,) initialised to 0.25 as in PyTorch."""
  channels: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    a = self.param('weight', nn.initializers.constant(0.25),
                   (self.channels,)).astype(self.dtype)
    return jnp.where(x >= 0, x, a * x)


class SEModule(nn.Module):
  """Squeeze-and-excitation with 1x1 convs `fc1`, `fc2` (no bias)."""
  channels: int
  reduction: int = 16
  dtype: Dtype = jnp.float32

  def setup(self):
    self.fc1 = conv(self.channels // self.reduction, 1, dtype=self.dtype)
    self.fc2 = conv(self.channels, 1, dtype=self.dtype)

  def __call__(self, x):
    s = jnp.mean(x, axis=(1, 2), keepdims=True)
    s = jax.nn.sigmoid(self.fc2(jax.nn.relu(self.fc1(s))))
    return x * s


class BottleneckIRSE(nn.Module):
  """`bottleneck_IR_SE`: res_layer(x) + shortcut_layer(x)."""
  in_channel: int
  depth: int
  stride: int
  dtype: Dtype = jnp.float32

  def setup(self):
    d = self.dtype
    self.res_layer = [
        batch_norm(d),
        conv(self.depth, 3, 1, 1, dtype=d),
        PReLU(self.depth, dtype=d),
        conv(self.depth, 3, self.stride, 1, dtype=d),
        batch_norm(d),
        SEModule(self.depth, 16, dtype=d),
    ]
    if self.in_channel != self.depth:
      self.shortcut_layer = [conv(self.depth, 1, self.stride, 0, dtype=d),
                             batch_norm(d)]
    else:
      self.shortcut_layer = []

  def __call__(self, x):
    if self.shortcut_layer:
      shortcut = self.shortcut_layer[1](self.shortcut_layer[0](x))
    else:
      shortcut = x[:, ::self.stride, ::self.stride]
    res = x
    for layer in self.res_layer:
      res = layer(res)
    return res + shortcut


def make_input_layer(dtype: Dtype) -> list[nn.Module]:
  """Conv3x3(C -> 64, no bias) -> BN -> PReLU (`input_layer.{0,1,2}`)."""
  return [conv(64, 3, 1, 1, dtype=dtype), batch_norm(dtype),
          PReLU(64, dtype=dtype)]


def make_body(num_layers: int, dtype: Dtype) -> list[BottleneckIRSE]:
  """The body units (`body.{u}`) of a `num_layers` backbone."""
  return [BottleneckIRSE(cin, depth, stride, dtype=dtype)
          for cin, depth, stride in unit_list(num_layers)]


def apply_backbone(name: str, x: jax.Array, want: tuple[int, int, int],
                   what: str, input_layer: Sequence[nn.Module],
                   body: Sequence[nn.Module], dtype: Dtype) -> jax.Array:
  """`input_layer` then `body` on x [B, *want], cast to `dtype`.

  The IR-SE trunk ArcFace and the ReStyle encoder share; a ValueError
  (`<name> expects [B, H, W, C] <what>, got <shape>`) for other shapes.
  """
  if x.ndim != 4 or tuple(x.shape[1:]) != tuple(want):
    raise ValueError(f'{name} expects [B, {want[0]}, {want[1]}, {want[2]}] '
                     f'{what}, got {x.shape}')
  x = x.astype(dtype)
  for layer in (*input_layer, *body):
    x = layer(x)
  return x
