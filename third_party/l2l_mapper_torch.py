"""Latent-To-Latent mapper in PyTorch, unofficial-checkpoint layout.

Written in-house from docs/method.md#l2l-mapper (Khodadadeh et
al., "Latent to Latent", WACV 2022; layout of the unofficial
`850552586/Latent-To-Latent` mapper checkpoints). Three groups of W+ rows
(coarse 0-3 as `course_mapping` [sic], medium 4-7, fine 8-17), each a
3-layer MLP of EqualLinear(512 -> 512, lr_mul 0.01) with tanh, tanh, none;
no PixelNorm; not residual. `state_dict()` has exactly the 18 keys of
docs/architecture.md#ckpt-mapper.

Optional paper-mode conditioning (docs/method.md#l2l-mapper, not in the
unofficial code): with
`cond_dim > 0` each group gets `cond`, an EqualLinear(A -> 512, lr_mul 0.01,
no bias, zero-initialised) added to the first layer's pre-activation.
Used only by parity tests and benchmarks.
"""

import torch
from torch import nn

from third_party.stylegan2_torch import EqualLinear


class Mapper(nn.Module):
  """One group's MLP, applied to every 512-d row independently."""

  def __init__(self, dim=512, n_layers=3, lr_mul=0.01, cond_dim=0):
    super().__init__()
    layers = []
    for i in range(n_layers):
      block = [EqualLinear(dim, dim, lr_mul=lr_mul)]
      if i < n_layers - 1:
        block.append(nn.Tanh())
      layers.append(nn.Sequential(*block))
    self.mapping = nn.Sequential(*layers)
    if cond_dim:
      self.cond = EqualLinear(cond_dim, dim, bias=False, lr_mul=lr_mul)
      with torch.no_grad():
        self.cond.weight.zero_()
    else:
      self.cond = None

  def forward(self, x, delta=None):
    if self.cond is None:
      return self.mapping(x)
    first = self.mapping[0][0](x)
    if delta is not None:
      c = self.cond(delta)  # (B, 512)
      first = first + c.reshape(c.shape[0], *([1] * (x.ndim - 2)), c.shape[-1])
    h = torch.tanh(first)
    for block in list(self.mapping)[1:]:
      h = block(h)
    return h


class LevelsMapper(nn.Module):
  """Coarse / medium / fine mappers over W+ rows [0, 4), [4, 8), [8, n)."""

  def __init__(self, dim=512, n_layers=3, lr_mul=0.01, cond_dim=0,
               bounds=(4, 8)):
    super().__init__()
    self.bounds = bounds
    self.course_mapping = Mapper(dim, n_layers, lr_mul, cond_dim)
    self.medium_mapping = Mapper(dim, n_layers, lr_mul, cond_dim)
    self.fine_mapping = Mapper(dim, n_layers, lr_mul, cond_dim)

  def forward(self, x, delta=None):
    """x: (..., n_latent, 512) (the unofficial code passes (B, 1, 18, 512))."""
    a, b = self.bounds
    parts = [self.course_mapping(x[..., :a, :], delta),
             self.medium_mapping(x[..., a:b, :], delta),
             self.fine_mapping(x[..., b:, :], delta)]
    return torch.cat(parts, dim=-2)


def legacy_edit(mapper, w, direction, factor=2.0, alpha=0.3):
  """Unofficial inference: (1 - alpha) * w + alpha * M(w + factor * d)."""
  return (1 - alpha) * w + alpha * mapper(w + factor * direction)
