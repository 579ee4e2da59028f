"""ResNet-18 feature extractor: the `vgg` network of the L2M-GAN checkpoint.

K. He et al., "Deep Residual Learning for Image Recognition", CVPR 2016, as
implemented by torchvision `models/resnet.py` (`resnet18`). L2M-GAN keeps
`nn.Sequential(*list(resnet18.children())[:-1])` (everything but `fc`) under
the name `vgg` in `nets_ema` (docs/method.md#l2m-resnet18,
docs/architecture.md#ckpt-nets-ema). Eval mode only:
BatchNorm uses the running statistics (eps 1e-5).

Input: [N, H, W, 3] already normalised as the caller wants (the official
training normalisation is unknown); output: [N, 512] after global average
pooling.

Parameter names follow torchvision's attribute names; the Sequential index of
the `vgg` state_dict maps as

  torch key (vgg)                        Flax path
  0.weight                               conv1/kernel
  1.{weight,bias}                        bn1/{scale,bias}   (params)
  1.{running_mean,running_var}           bn1/{mean,var}     (batch_stats)
  {4,5,6,7}.b.conv{1,2}.weight           layer{1,2,3,4}_b/conv{1,2}/kernel
  {4,5,6,7}.b.bn{1,2}.*                  layer{1,2,3,4}_b/bn{1,2}/...
  {5,6,7}.0.downsample.0.weight          layer{2,3,4}_0/downsample_0/kernel
  {5,6,7}.0.downsample.1.*               layer{2,3,4}_0/downsample_1/...

`num_batches_tracked` is dropped. Indices 2 (ReLU), 3 (max pool) and 8
(adaptive average pool) have no parameters.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from l2m_jax.models import layers

Dtype = Any


def _bn(dtype):
  return nn.BatchNorm(use_running_average=True, momentum=0.9, epsilon=1e-5,
                      dtype=dtype)


_conv = functools.partial(layers.torch_conv, use_bias=False)


class BasicBlock(nn.Module):
  """torchvision BasicBlock: conv3x3-BN-ReLU-conv3x3-BN + shortcut, ReLU."""
  features: int
  stride: int = 1
  downsample: bool = False
  dtype: Dtype = jnp.float32

  def setup(self):
    self.conv1 = _conv(self.features, 3, self.stride, 1, dtype=self.dtype)
    self.bn1 = _bn(self.dtype)
    self.conv2 = _conv(self.features, 3, 1, 1, dtype=self.dtype)
    self.bn2 = _bn(self.dtype)
    if self.downsample:
      self.downsample_0 = _conv(self.features, 1, self.stride, 0,
                                dtype=self.dtype)
      self.downsample_1 = _bn(self.dtype)

  def __call__(self, x):
    h = nn.relu(self.bn1(self.conv1(x)))
    h = self.bn2(self.conv2(h))
    sc = self.downsample_1(self.downsample_0(x)) if self.downsample else x
    return nn.relu(h + sc)


class ResNet18Features(nn.Module):
  """torchvision resnet18 without `fc`: [N, H, W, 3] -> [N, 512] (eval mode)."""
  dtype: Dtype = jnp.float32

  def setup(self):
    self.conv1 = _conv(64, 7, 2, 3, dtype=self.dtype)
    self.bn1 = _bn(self.dtype)
    widths = (64, 128, 256, 512)
    for i, width in enumerate(widths):
      stride = 1 if i == 0 else 2
      setattr(self, f'layer{i + 1}_0',
              BasicBlock(width, stride, downsample=i > 0, dtype=self.dtype))
      setattr(self, f'layer{i + 1}_1', BasicBlock(width, dtype=self.dtype))

  def __call__(self, x: jax.Array) -> jax.Array:
    x = nn.relu(self.bn1(self.conv1(x.astype(self.dtype))))
    # Max pool 3x3 / 2 with padding 1; the padding value is -inf, as in
    # PyTorch (padded cells never win).
    x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)),
                constant_values=-jnp.inf)
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding='VALID')
    for i in range(4):
      x = getattr(self, f'layer{i + 1}_0')(x)
      x = getattr(self, f'layer{i + 1}_1')(x)
    return jnp.mean(x.astype(jnp.float32), axis=(1, 2))
