"""Image resampling with PyTorch's exact index rules, NHWC, differentiable.

Two operations that the Latent-To-Latent pipeline inherits from PyTorch code
and that `jax.image.resize` does not reproduce:

* `adaptive_avg_pool2d`: `torch.nn.AdaptiveAvgPool2d` (also
  `F.interpolate(mode='area')`). Output cell i averages input indices
  floor(i * n_in / n_out) .. ceil((i + 1) * n_in / n_out) - 1, so windows
  overlap when the ratio is not an integer (188 -> 112 in pSp's identity
  crop) and repeat pixels when n_out > n_in. An integer ratio (1024 -> 256)
  is an exact block mean.
* `nearest_resize`: `F.interpolate(mode='nearest')`, whose source index is
  floor(dst * (float32(n_in) / n_out)) evaluated in float32 (PyTorch
  `nearest_idx`); `jax.image.resize(method='nearest')` uses half-pixel
  centres instead and picks different pixels.

Both are linear in the input, so gradients flow to the image.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np


@functools.lru_cache(maxsize=64)
def _pool_matrix(n_in: int, n_out: int) -> np.ndarray:
  """[n_out, n_in] averaging weights of adaptive average pooling."""
  m = np.zeros((n_out, n_in), np.float32)
  for i in range(n_out):
    start = (i * n_in) // n_out
    stop = -(-((i + 1) * n_in) // n_out)
    m[i, start:stop] = 1.0 / (stop - start)
  return m


def adaptive_avg_pool2d(x: jax.Array, size: tuple[int, int]) -> jax.Array:
  """`nn.AdaptiveAvgPool2d(size)` on [B, H, W, C]."""
  b, h, w, c = x.shape
  oh, ow = size
  if (h, w) == (oh, ow):
    return x
  if h % oh == 0 and w % ow == 0:
    return x.reshape(b, oh, h // oh, ow, w // ow, c).mean(axis=(2, 4))
  ph = jnp.asarray(_pool_matrix(h, oh), x.dtype)
  pw = jnp.asarray(_pool_matrix(w, ow), x.dtype)
  return jnp.einsum('ih,bhwc,jw->bijc', ph, x, pw,
                    precision=jax.lax.Precision.HIGHEST)


@functools.lru_cache(maxsize=64)
def nearest_indices(n_in: int, n_out: int) -> np.ndarray:
  """Source indices of PyTorch 'nearest' resizing from n_in to n_out."""
  if n_out == n_in:
    return np.arange(n_out)
  if n_out == 2 * n_in:
    return np.arange(n_out) // 2
  scale = np.float32(n_in) / np.float32(n_out)
  idx = np.floor(np.arange(n_out, dtype=np.float32) * scale).astype(np.int64)
  return np.minimum(idx, n_in - 1)


def nearest_resize(x: jax.Array, size: tuple[int, int]) -> jax.Array:
  """`F.interpolate(x, size, mode='nearest')` on [B, H, W, C]."""
  _, h, w, _ = x.shape
  oh, ow = size
  x = jnp.take(x, jnp.asarray(nearest_indices(h, oh)), axis=1)
  return jnp.take(x, jnp.asarray(nearest_indices(w, ow)), axis=2)
