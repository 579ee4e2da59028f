"""Layer helpers shared by the ports of PyTorch networks."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from flax import linen as nn


def torch_conv(features: int, kernel: int, stride: int = 1, pad: int = 0,
               use_bias: bool = True, dtype: Any = jnp.float32) -> nn.Conv:
  """PyTorch's `Conv2d(k, stride, padding=pad)`: explicit symmetric padding.

  Flax's 'SAME' pads asymmetrically for even inputs with stride 2, so every
  port pads explicitly as the PyTorch module does.
  """
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                 padding=((pad, pad), (pad, pad)), use_bias=use_bias,
                 dtype=dtype)
