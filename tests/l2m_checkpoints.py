"""Test utility: random-weight PyTorch L2M-GAN networks in the official format.

Builds the in-house reference modules of `third_party/l2m_torch.py` (and the
FAN of `third_party/fan_torch.py`, torchvision's resnet18 for `vgg`) with
seeded random weights, and saves them as the authors' checkpointer does:
`torch.save({'generator': G.state_dict(), 'style_encoder': E.state_dict(),
'fan': FAN.state_dict(), 'vgg': R.state_dict()}, '<step>_nets_ema.ckpt')`.
G, E and D get the official He init (realistic activation scales); norm
affine parameters and BatchNorm running statistics are randomised too,
so a swapped scale/bias or mean/var mapping cannot go unnoticed.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any, Optional

import numpy as np
import torch

from third_party import l2m_torch


@dataclasses.dataclass
class TorchNets:
  generator: Any
  style_encoder: Any
  fan: Optional[Any] = None
  vgg: Optional[Any] = None
  discriminator: Optional[Any] = None

  def state_dicts(self) -> dict[str, Any]:
    out = {}
    for name in ('generator', 'style_encoder', 'fan', 'vgg', 'discriminator'):
      m = getattr(self, name)
      if m is not None:
        out[name] = m.state_dict()
    return out


def randomize_norms_(module: torch.nn.Module, seed: int) -> torch.nn.Module:
  """Random affine weights/biases and running stats for all norm layers."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for m in module.modules():
      if isinstance(m, (torch.nn.InstanceNorm2d, torch.nn.BatchNorm2d)):
        if getattr(m, 'weight', None) is not None:
          m.weight.copy_(1 + 0.2 * torch.randn(m.weight.shape, generator=g))
          m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=g))
        if getattr(m, 'running_mean', None) is not None:
          m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape,
                                                 generator=g))
          m.running_var.copy_(0.5 + torch.rand(m.running_var.shape,
                                               generator=g))
          m.num_batches_tracked.fill_(1234)
  return module


def he_init_(module: torch.nn.Module, seed: int) -> torch.nn.Module:
  """The official training init (docs/method.md#l2m-numerics): kaiming normal
  fan_in, gain sqrt(2),
  for every Conv2d and Linear; biases small random (not 0) so that bias
  mapping errors show. Gives trained-like activation scales."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for m in module.modules():
      if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
        fan_in = m.weight[0].numel()
        m.weight.copy_(torch.randn(m.weight.shape, generator=g)
                       * (2.0 / fan_in) ** 0.5)
        if m.bias is not None:
          m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
  return module


def build_torch_nets(img_size: int = 256, style_dim: int = 64,
                     num_domains: int = 2, max_conv_dim: int = 512,
                     w_hpf: int = 1, seed: int = 0, with_fan: bool | None = None,
                     with_vgg: bool = False,
                     with_discriminator: bool = False,
                     base_dim: int | None = None) -> TorchNets:
  """Seeded random reference networks (eval mode).

  base_dim: first-conv width (None: the official 2**14 // img_size).
  """
  torch.manual_seed(seed)
  kw = {'base_dim': base_dim} if base_dim else {}
  gen = l2m_torch.Generator(img_size, style_dim, max_conv_dim, w_hpf, **kw)
  enc = l2m_torch.StyleEncoder(img_size, style_dim, num_domains, max_conv_dim,
                               **kw)
  nets = TorchNets(randomize_norms_(he_init_(gen, seed + 4), seed + 1),
                   he_init_(enc, seed + 5))
  if with_fan is None:
    with_fan = w_hpf > 0
  if with_fan:
    from third_party import fan_torch  # pylint: disable=g-import-not-at-top
    nets.fan = randomize_norms_(fan_torch.FAN(), seed + 2)
  if with_vgg:
    from third_party.torchvision_compat import import_torchvision  # pylint: disable=g-import-not-at-top
    tv = import_torchvision()
    r = tv.models.resnet18(weights=None)
    nets.vgg = randomize_norms_(
        torch.nn.Sequential(*list(r.children())[:-1]), seed + 3)
  if with_discriminator:
    nets.discriminator = he_init_(
        l2m_torch.Discriminator(img_size, num_domains, max_conv_dim, **kw),
        seed + 6)
  for name in ('generator', 'style_encoder', 'fan', 'vgg', 'discriminator'):
    m = getattr(nets, name)
    if m is not None:
      m.eval()
  return nets


def save_checkpoint(nets: TorchNets, directory: str | pathlib.Path,
                    step: int = 100000, extra: dict | None = None,
                    suffix: str = 'nets_ema') -> pathlib.Path:
  """Writes `{step:06d}_{suffix}.ckpt` like the official checkpointer."""
  directory = pathlib.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  path = directory / f'{step:06d}_{suffix}.ckpt'
  ckpt = nets.state_dicts()
  if extra:
    ckpt.update(extra)
  torch.save(ckpt, path)
  return path


def nhwc_to_torch(x: np.ndarray) -> torch.Tensor:
  return torch.from_numpy(np.ascontiguousarray(
      np.transpose(np.asarray(x, np.float32), (0, 3, 1, 2))))


def torch_to_nhwc(x: torch.Tensor) -> np.ndarray:
  return np.transpose(x.detach().cpu().numpy(), (0, 2, 3, 1))


def sample_images(n: int, size: int, seed: int = 0,
                faces_dir: pathlib.Path | None = None) -> np.ndarray:
  """[n, size, size, 3] in [-1, 1]: real faces first (when given), then noise."""
  from l2m_jax import image_io  # pylint: disable=g-import-not-at-top
  imgs = []
  if faces_dir is not None:
    for p in sorted(pathlib.Path(faces_dir).glob('*.png'))[:n]:
      imgs.append(image_io.load_image(p, size))
  rng = np.random.default_rng(seed)
  while len(imgs) < n:
    imgs.append(rng.uniform(-1, 1, (size, size, 3)).astype(np.float32))
  return np.stack(imgs)
