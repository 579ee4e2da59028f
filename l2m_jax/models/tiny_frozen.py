"""Small random stand-ins for the frozen networks of Latent-To-Latent training.

For tests and CPU smoke runs only (`config.random_networks`): a tiny
convolutional attribute regressor (A logits, in place of BranchedTiny) and a
tiny identity network (unit embeddings, in place of ArcFace IR-SE-50), both
on [-1, 1] images of any size. Random weights: results are meaningless for
anything but testing the training code.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn


class _TinyFeatures(nn.Module):
  """Two stride-2 3x3 convs with tanh, then the spatial mean: [B, width]."""
  width: int = 16
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = x.astype(self.dtype)
    for i in range(2):
      x = nn.Conv(self.width, (3, 3), strides=(2, 2), dtype=self.dtype,
                  name=f'conv_{i}')(x)
      x = jnp.tanh(x)
    return jnp.mean(x, axis=(1, 2))


def _features_and_head(x: jax.Array, num_outputs: int, width: int,
                       dtype: Any) -> jax.Array:
  """`features` then a dense `head` of the calling module; float32 out."""
  h = _TinyFeatures(width, dtype, name='features')(x)
  return nn.Dense(num_outputs, dtype=dtype, name='head')(h).astype(
      jnp.float32)


class TinyAttributeNet(nn.Module):
  """[B, S, S, 3] in [-1, 1] -> [B, num_outputs] logits."""
  num_outputs: int = 3
  width: int = 16
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    return _features_and_head(x, self.num_outputs, self.width, self.dtype)


class TinyIdentityNet(nn.Module):
  """[B, S, S, 3] in [-1, 1] -> [B, embed_dim] unit embeddings."""
  embed_dim: int = 16
  width: int = 16
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    e = _features_and_head(x, self.embed_dim, self.width, self.dtype)
    return e / jnp.linalg.norm(e, axis=-1, keepdims=True)


def init_variables(model: nn.Module, rng: jax.Array, size: int) -> dict:
  return jax.jit(model.init)(rng, jnp.zeros((1, size, size, 3), jnp.float32))
