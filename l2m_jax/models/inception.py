"""InceptionV3 pool-3 feature extractor (2048-d), for FID.

Szegedy et al., "Rethinking the Inception Architecture for Computer Vision",
CVPR 2016. Two variants of one trunk (docs/method.md#fid-inception):

* `variant='torchvision'`: torchvision's ImageNet `inception_v3`
  (`torchvision/models/inception.py`: `Inception3`, `BasicConv2d`,
  `InceptionA`-`E`), as StarGAN v2's and L2M-GAN's `metrics/fid.py` use it
  (submodules called directly, so no `transform_input`). Every 3x3 stride-1
  average pool counts the zero padding (divides by 9).
* `variant='fid'`: pytorch-fid's "FID Inception" (weights ported from TF
  `inception-2015-12-05`; `pytorch_fid/inception.py` `FIDInceptionA/C/E_1/E_2`).
  Average pools exclude the padding (TF 'SAME' semantics) and the pool branch
  of `Mixed_7c` is a max-pool.

Submodule names equal the PyTorch attribute names, so a torch key
`Mixed_6b.branch7x7dbl_3.conv.weight` maps to the Flax path
`params/Mixed_6b/branch7x7dbl_3/conv/kernel` (OIHW -> HWIO), and
`P.bn.{weight,bias}` -> `params/P/bn/{scale,bias}`,
`P.bn.{running_mean,running_var}` -> `batch_stats/P/bn/{mean,var}`.
AuxLogits, dropout and fc are not part of the feature extractor.

Input: NHWC float, already normalised for the protocol (the caller does the
resizing and normalisation, see `l2m_jax.evaluation.inception_features`).
Output: [N, 2048] features after the global average pool; all >= 0
(post-ReLU).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

VARIANTS = ('torchvision', 'fid')
FEATURE_DIM = 2048
BN_EPSILON = 1e-3

Precision = Any


def _pairs(padding: Sequence[int]) -> tuple[tuple[int, int], tuple[int, int]]:
  ph, pw = padding
  return ((ph, ph), (pw, pw))


class BasicConv2d(nn.Module):
  """Conv (no bias) -> BatchNorm (eval, eps 1e-3) -> ReLU."""
  features: int
  kernel_size: tuple[int, int]
  strides: tuple[int, int] = (1, 1)
  padding: tuple[int, int] = (0, 0)
  precision: Precision = jax.lax.Precision.HIGHEST
  dtype: Any = jnp.float32

  def setup(self):
    # Explicit padding pairs: 'SAME' differs from PyTorch's p0 on the
    # stride-2 layers (docs/method.md#fid-inception).
    self.conv = nn.Conv(self.features, tuple(self.kernel_size),
                        strides=tuple(self.strides),
                        padding=_pairs(self.padding), use_bias=False,
                        precision=self.precision, dtype=self.dtype)
    # Deviation from PyTorch: eval-mode only; PyTorch's eps 0.001 is kept
    # (Flax's default is 1e-5).
    self.bn = nn.BatchNorm(use_running_average=True, epsilon=BN_EPSILON,
                           momentum=0.9, dtype=self.dtype)

  def __call__(self, x):
    return nn.relu(self.bn(self.conv(x)))


def _avg_pool_3x3(x, include_pad: bool):
  return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)),
                     count_include_pad=include_pad)


def _max_pool_3x3_s2(x):
  # Floor mode, no padding (PyTorch MaxPool2d(3, stride=2)).
  return nn.max_pool(x, (3, 3), strides=(2, 2), padding='VALID')


class _Block(nn.Module):
  """An Inception block: keyword-only precision and dtype for its convs."""
  precision: Precision = dataclasses.field(
      default=jax.lax.Precision.HIGHEST, kw_only=True)
  dtype: Any = dataclasses.field(default=jnp.float32, kw_only=True)

  def conv_maker(self) -> Callable[..., BasicConv2d]:
    """BasicConv2d with the block's precision and dtype."""
    return functools.partial(BasicConv2d, precision=self.precision,
                             dtype=self.dtype)


class InceptionA(_Block):
  """Mixed_5b/5c/5d: 1x1 | 5x5 | double 3x3 | pool + 1x1."""
  pool_features: int
  pool_include_pad: bool = True

  def setup(self):
    conv = self.conv_maker()
    self.branch1x1 = conv(64, (1, 1))
    self.branch5x5_1 = conv(48, (1, 1))
    self.branch5x5_2 = conv(64, (5, 5), padding=(2, 2))
    self.branch3x3dbl_1 = conv(64, (1, 1))
    self.branch3x3dbl_2 = conv(96, (3, 3), padding=(1, 1))
    self.branch3x3dbl_3 = conv(96, (3, 3), padding=(1, 1))
    self.branch_pool = conv(self.pool_features, (1, 1))

  def __call__(self, x):
    b1 = self.branch1x1(x)
    b5 = self.branch5x5_2(self.branch5x5_1(x))
    b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
    bp = self.branch_pool(_avg_pool_3x3(x, self.pool_include_pad))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(_Block):
  """Mixed_6a: stride-2 3x3 | double 3x3 (stride 2) | max-pool."""

  def setup(self):
    conv = self.conv_maker()
    self.branch3x3 = conv(384, (3, 3), strides=(2, 2))
    self.branch3x3dbl_1 = conv(64, (1, 1))
    self.branch3x3dbl_2 = conv(96, (3, 3), padding=(1, 1))
    self.branch3x3dbl_3 = conv(96, (3, 3), strides=(2, 2))

  def __call__(self, x):
    b3 = self.branch3x3(x)
    bd = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
    return jnp.concatenate([b3, bd, _max_pool_3x3_s2(x)], axis=-1)


class InceptionC(_Block):
  """Mixed_6b..6e: factorised 7x7 convolutions."""
  channels_7x7: int
  pool_include_pad: bool = True

  def setup(self):
    conv = self.conv_maker()
    c7 = self.channels_7x7
    self.branch1x1 = conv(192, (1, 1))
    self.branch7x7_1 = conv(c7, (1, 1))
    self.branch7x7_2 = conv(c7, (1, 7), padding=(0, 3))
    self.branch7x7_3 = conv(192, (7, 1), padding=(3, 0))
    self.branch7x7dbl_1 = conv(c7, (1, 1))
    self.branch7x7dbl_2 = conv(c7, (7, 1), padding=(3, 0))
    self.branch7x7dbl_3 = conv(c7, (1, 7), padding=(0, 3))
    self.branch7x7dbl_4 = conv(c7, (7, 1), padding=(3, 0))
    self.branch7x7dbl_5 = conv(192, (1, 7), padding=(0, 3))
    self.branch_pool = conv(192, (1, 1))

  def __call__(self, x):
    b1 = self.branch1x1(x)
    b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
    bd = self.branch7x7dbl_1(x)
    bd = self.branch7x7dbl_3(self.branch7x7dbl_2(bd))
    bd = self.branch7x7dbl_5(self.branch7x7dbl_4(bd))
    bp = self.branch_pool(_avg_pool_3x3(x, self.pool_include_pad))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(_Block):
  """Mixed_7a: stride-2 reductions | max-pool."""

  def setup(self):
    conv = self.conv_maker()
    self.branch3x3_1 = conv(192, (1, 1))
    self.branch3x3_2 = conv(320, (3, 3), strides=(2, 2))
    self.branch7x7x3_1 = conv(192, (1, 1))
    self.branch7x7x3_2 = conv(192, (1, 7), padding=(0, 3))
    self.branch7x7x3_3 = conv(192, (7, 1), padding=(3, 0))
    self.branch7x7x3_4 = conv(192, (3, 3), strides=(2, 2))

  def __call__(self, x):
    b3 = self.branch3x3_2(self.branch3x3_1(x))
    b7 = self.branch7x7x3_1(x)
    b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(b7)))
    return jnp.concatenate([b3, b7, _max_pool_3x3_s2(x)], axis=-1)


class InceptionE(_Block):
  """Mixed_7b/7c: expanded filter bank.

  `pool` is 'avg_include_pad' (torchvision), 'avg_exclude_pad' (pytorch-fid
  E_1) or 'max' (pytorch-fid E_2).
  """
  pool: str = 'avg_include_pad'

  def setup(self):
    conv = self.conv_maker()
    self.branch1x1 = conv(320, (1, 1))
    self.branch3x3_1 = conv(384, (1, 1))
    self.branch3x3_2a = conv(384, (1, 3), padding=(0, 1))
    self.branch3x3_2b = conv(384, (3, 1), padding=(1, 0))
    self.branch3x3dbl_1 = conv(448, (1, 1))
    self.branch3x3dbl_2 = conv(384, (3, 3), padding=(1, 1))
    self.branch3x3dbl_3a = conv(384, (1, 3), padding=(0, 1))
    self.branch3x3dbl_3b = conv(384, (3, 1), padding=(1, 0))
    self.branch_pool = conv(192, (1, 1))

  def __call__(self, x):
    b1 = self.branch1x1(x)
    b3 = self.branch3x3_1(x)
    b3 = jnp.concatenate([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], -1)
    bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
    bd = jnp.concatenate([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)],
                         -1)
    if self.pool == 'max':
      # Flax pads max-pools with -inf, as PyTorch's implicit padding.
      pooled = nn.max_pool(x, (3, 3), strides=(1, 1),
                           padding=((1, 1), (1, 1)))
    elif self.pool == 'avg_include_pad':
      pooled = _avg_pool_3x3(x, True)
    elif self.pool == 'avg_exclude_pad':
      pooled = _avg_pool_3x3(x, False)
    else:
      raise ValueError(f'InceptionE.pool={self.pool!r}: expected '
                       "'avg_include_pad', 'avg_exclude_pad' or 'max'")
    bp = self.branch_pool(pooled)
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class InceptionV3(nn.Module):
  """InceptionV3 trunk up to the global average pool ("pool_3", 2048-d).

  Attributes:
    variant: 'torchvision' (ImageNet weights, pools count padding) or 'fid'
      (pytorch-fid weights, pools exclude padding, max-pool in Mixed_7c).
    precision: precision of every convolution. HIGHEST by default, so GPUs do
      not use TF32 (docs/method.md#fid-inception).
    dtype: computation dtype.
  """
  variant: str = 'torchvision'
  precision: Precision = jax.lax.Precision.HIGHEST
  dtype: Any = jnp.float32

  def setup(self):
    if self.variant not in VARIANTS:
      raise ValueError(f'InceptionV3.variant={self.variant!r}: expected one '
                       f'of {VARIANTS}')
    fid = self.variant == 'fid'
    kw = dict(precision=self.precision, dtype=self.dtype)
    conv = functools.partial(BasicConv2d, **kw)
    include_pad = not fid
    self.Conv2d_1a_3x3 = conv(32, (3, 3), strides=(2, 2))
    self.Conv2d_2a_3x3 = conv(32, (3, 3))
    self.Conv2d_2b_3x3 = conv(64, (3, 3), padding=(1, 1))
    self.Conv2d_3b_1x1 = conv(80, (1, 1))
    self.Conv2d_4a_3x3 = conv(192, (3, 3))
    self.Mixed_5b = InceptionA(32, include_pad, **kw)
    self.Mixed_5c = InceptionA(64, include_pad, **kw)
    self.Mixed_5d = InceptionA(64, include_pad, **kw)
    self.Mixed_6a = InceptionB(**kw)
    self.Mixed_6b = InceptionC(128, include_pad, **kw)
    self.Mixed_6c = InceptionC(160, include_pad, **kw)
    self.Mixed_6d = InceptionC(160, include_pad, **kw)
    self.Mixed_6e = InceptionC(192, include_pad, **kw)
    self.Mixed_7a = InceptionD(**kw)
    self.Mixed_7b = InceptionE(
        'avg_exclude_pad' if fid else 'avg_include_pad', **kw)
    # pytorch-fid's FIDInceptionE_2 max-pools here, reproducing the TF graph.
    self.Mixed_7c = InceptionE('max' if fid else 'avg_include_pad', **kw)

  def __call__(self, x):
    """x: [N, H, W, 3] normalised images -> [N, 2048] pool features."""
    x = jnp.asarray(x, self.dtype)
    x = self.Conv2d_1a_3x3(x)
    x = self.Conv2d_2a_3x3(x)
    x = self.Conv2d_2b_3x3(x)
    x = _max_pool_3x3_s2(x)
    x = self.Conv2d_3b_1x1(x)
    x = self.Conv2d_4a_3x3(x)
    x = _max_pool_3x3_s2(x)
    for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a,
                  self.Mixed_6b, self.Mixed_6c, self.Mixed_6d, self.Mixed_6e,
                  self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
      x = block(x)
    return jnp.mean(x, axis=(1, 2))  # [N, 2048]


@functools.lru_cache(maxsize=None)
def _variables_template(variant: str, size: int):
  model = InceptionV3(variant=variant)
  return jax.eval_shape(model.init, jax.random.key(0),
                        jnp.zeros((1, size, size, 3), jnp.float32))


def variables_template(variant: str = 'torchvision', size: int = 299):
  """Shapes of the variables ({params, batch_stats}) via jax.eval_shape.

  Traced once per (variant, size) and process (about 2 s on a CPU); each
  call returns fresh containers, so callers may modify what they get.
  """
  return jax.tree.map(lambda leaf: leaf, _variables_template(variant, size))
