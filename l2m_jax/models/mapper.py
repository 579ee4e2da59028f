"""Latent-To-Latent mapper (Khodadadeh et al., WACV 2022) in Flax linen.

One module family covers the two forms of docs/method.md#l2l:

* legacy (docs/method.md#l2l-mapper): the unofficial checkpoints' layout and
function. W+
  rows split into coarse [0, 4), medium [4, 8) and fine [8, n_latent); each
  group has its own 3-layer MLP of EqualLinear(512 -> 512, lr_mul 0.01) with
  tanh, tanh, none (no PixelNorm), shared over the group's rows. The edit is
  `w' = 0.7 w + 0.3 M(w + k d)` with `d` the InterFaceGAN normal of one
  attribute and `k` the strength (2 in the unofficial code).
* paper (docs/method.md#l2l-mapper): multi-attribute conditioning on a vector of
  desired attribute changes `delta` [B, A]. Each group has an extra
  `cond` EqualLinear(A -> 512, lr_mul 0.01, no bias, zero-initialised) added to
  its first layer's pre-activation (a split projection, so legacy weights keep
  their fan-in scale and load unchanged), and the edit is residual,
  `w' = w + M(w, delta)`, with a zero-initialised last layer so M starts at 0.
  These paper-mode details are our choices; the paper does not publish them.

Names mirror the unofficial PyTorch module:

  torch                                     flax params
  {course,medium,fine}_mapping.mapping.{i}.0.weight (out, in)
                                            {..}_mapping/mapping_{i}/weight
                                            (in, out), raw
  {course,medium,fine}_mapping.mapping.{i}.0.bias
                                            {..}_mapping/mapping_{i}/bias
  (paper mode) {..}_mapping.cond.weight     {..}_mapping/cond/weight (A, 512)
"""

from __future__ import annotations

import functools
from typing import Any

import jax.numpy as jnp
from flax import linen as nn

from l2m_jax.models.stylegan2 import EqualLinear

GROUP_NAMES = ('course_mapping', 'medium_mapping', 'fine_mapping')
COMBINE_MODES = ('blend', 'residual', 'direct')


class GroupMapper(nn.Module):
  """One group's MLP (unofficial `Mapper`), applied to each row."""
  dim: int = 512
  n_layers: int = 3
  lr_mul: float = 0.01
  cond_dim: int = 0
  zero_init_last: bool = False
  dtype: Any = jnp.float32

  def setup(self):
    self.mapping = [
        EqualLinear(self.dim, lr_mul=self.lr_mul, dtype=self.dtype,
                    zero_init=self.zero_init_last and i == self.n_layers - 1)
        for i in range(self.n_layers)]
    if self.cond_dim:
      self.cond = EqualLinear(self.dim, use_bias=False, lr_mul=self.lr_mul,
                              zero_init=True, dtype=self.dtype)

  def __call__(self, x, delta=None):
    """x [B, rows, D]; delta [B, A] or None -> [B, rows, D]."""
    h = self.mapping[0](x)
    if self.cond_dim and delta is not None:
      h = h + self.cond(delta)[:, None, :]
    for layer in self.mapping[1:]:
      h = layer(jnp.tanh(h))
    return h


class Latent2Latent(nn.Module):
  """Three-group latent mapper with the legacy and paper edit forms.

  Attributes:
    style_dim: latent width (512).
    n_latent: W+ rows (18 at 1024 px).
    bounds: first rows of the medium and fine groups ((4, 8), from StyleCLIP).
    n_layers: layers per group MLP (3).
    lr_mul: EqualLinear lr multiplier (0.01).
    cond_dim: A, number of attributes in `delta` (0: legacy, no conditioning).
    combine: 'blend' (legacy: (1 - alpha) w + alpha M), 'residual'
      (w + M) or 'direct' (M).
    alpha: blend weight of M (0.3 in the unofficial code).
    zero_init_last: zero-initialise the last layer (paper mode, so the
      residual edit starts at the identity).
  """
  style_dim: int = 512
  n_latent: int = 18
  bounds: tuple[int, int] = (4, 8)
  n_layers: int = 3
  lr_mul: float = 0.01
  cond_dim: int = 0
  combine: str = 'blend'
  alpha: float = 0.3
  zero_init_last: bool = False
  dtype: Any = jnp.float32

  def setup(self):
    if self.combine not in COMBINE_MODES:
      raise ValueError(f'Latent2Latent.combine={self.combine!r}: expected one '
                       f'of {COMBINE_MODES}')
    a, b = self.bounds
    if not 0 < a < b < self.n_latent:
      raise ValueError(f'Latent2Latent.bounds={self.bounds}: need 0 < a < b < '
                       f'n_latent={self.n_latent}')
    kw = dict(dim=self.style_dim, n_layers=self.n_layers, lr_mul=self.lr_mul,
              cond_dim=self.cond_dim, zero_init_last=self.zero_init_last,
              dtype=self.dtype)
    self.course_mapping = GroupMapper(**kw)
    self.medium_mapping = GroupMapper(**kw)
    self.fine_mapping = GroupMapper(**kw)

  def _check(self, w, delta):
    if w.ndim != 3 or w.shape[1:] != (self.n_latent, self.style_dim):
      raise ValueError(f'Latent2Latent: latents have shape {w.shape}; expected '
                       f'[B, {self.n_latent}, {self.style_dim}]')
    if delta is not None:
      if not self.cond_dim:
        raise ValueError('Latent2Latent: an attribute-change vector was given '
                         'but this mapper has cond_dim=0 (legacy mapper: edit '
                         'with a boundary direction instead)')
      if delta.ndim != 2 or delta.shape != (w.shape[0], self.cond_dim):
        raise ValueError(f'Latent2Latent: delta has shape {delta.shape}; '
                         f'expected [{w.shape[0]}, {self.cond_dim}]')

  def __call__(self, w, delta=None):
    """M(w, delta): w [B, n_latent, D], delta [B, A] or None -> like w."""
    self._check(w, delta)
    w = w.astype(self.dtype)
    if delta is not None:
      delta = delta.astype(self.dtype)
    a, b = self.bounds
    return jnp.concatenate([
        self.course_mapping(w[:, :a], delta),
        self.medium_mapping(w[:, a:b], delta),
        self.fine_mapping(w[:, b:], delta)], axis=1)

  def edit(self, w, delta=None, direction=None, strength=0.0):
    """The edited latent w'.

    Args:
      w: [B, n_latent, D].
      delta: [B, A] desired attribute changes (paper mode) or None.
      direction: [D] or [1, D] boundary normal for the legacy pre-shift
        `w + strength * direction` (broadcast over rows), or None.
      strength: scalar or [B] pre-shift factor k.

    Returns:
      combine='blend': (1 - alpha) w + alpha M(w_a, delta); 'residual':
      w + M(w_a, delta); 'direct': M(w_a, delta); w_a is the pre-shifted w.
    """
    w = jnp.asarray(w, self.dtype)
    w_a = w
    if direction is not None:
      d = jnp.reshape(jnp.asarray(direction, self.dtype), (1, 1, -1))
      k = jnp.reshape(jnp.asarray(strength, self.dtype), (-1, 1, 1))
      w_a = w + k * d
    m = self(w_a, delta)
    if self.combine == 'blend':
      return (1.0 - self.alpha) * w + self.alpha * m
    if self.combine == 'residual':
      return w + m
    return m


# Presets. legacy: the unofficial checkpoints, exactly. paper: our defaults
# for the paper's multi-attribute mapper (A = 40 CelebA attributes).
LegacyMapper = functools.partial(Latent2Latent, cond_dim=0, combine='blend',
                                 alpha=0.3)
PaperMapper = functools.partial(Latent2Latent, cond_dim=40,
                                combine='residual', zero_init_last=True)
L2LMapper = Latent2Latent

PRESETS = {
    'legacy': dict(cond_dim=0, combine='blend', alpha=0.3,
                   zero_init_last=False),
    'paper': dict(cond_dim=40, combine='residual', alpha=0.3,
                  zero_init_last=True),
}
