"""BranchedTiny 40-attribute CelebA classifier in PyTorch (upstream layout).

Written in-house with the key names of the unofficial Latent-To-Latent code
(850552586/Latent-To-Latent `models/attribute_classifier/BranchedTiny.py`;
Vandenhende et al., "Branched Multi-Task Networks", arXiv 1904.02920), so
that `state_dict()` has the 642 entries of its `BranchedTiny.ckpt` (under a
PyTorch-Lightning `state_dict` with a `model.` prefix, see
`lightning_checkpoint`). `BranchedTinyAttr` is the wrapper the unofficial
training calls: nearest resize to 224 when the width differs. Used only by
parity tests and benchmarks.

Conv unit: Conv3x3(64, pad 1, bias) -> ReLU -> BatchNorm2d (after the ReLU);
M: MaxPool 2x2. Fully connected unit: Linear -> ReLU -> BatchNorm1d, the
last level a bare Linear(128 -> 1).
"""

import torch
from torch import nn
from torch.nn import functional as F

ATTRIBUTES = [
    'blurry', 'sideburns', 'wearing_earrings', 'bald', 'goatee', 'mustache',
    '5_o_clock_shadow', 'arched_eyebrows', 'no_beard', 'heavy_makeup', 'male',
    'wearing_lipstick', 'black_hair', 'high_cheekbones', 'smiling',
    'mouth_slightly_open', 'oval_face', 'bushy_eyebrows', 'attractive',
    'young', 'gray_hair', 'brown_hair', 'blond_hair', 'pale_skin', 'chubby',
    'double_chin', 'big_nose', 'bags_under_eyes', 'wearing_necklace',
    'wearing_necktie', 'rosy_cheeks', 'bangs', 'wavy_hair', 'straight_hair',
    'wearing_hat', 'big_lips', 'narrow_eyes', 'pointy_nose',
    'receding_hairline', 'eyeglasses']

# Which output of the previous level each branch reads, written out per
# branch (level 11 reads the trunk).
WIRING = {
    12: [0, 0, 1],
    13: [0, 0, 0, 0, 1, 1, 1, 1, 1, 2],
    14: [0, 1, 1, 1, 2, 2, 3, 4, 4, 4, 5, 5, 6, 6, 6, 7, 8, 9],
    15: [0, 1, 2, 2, 3, 3, 3, 3, 4, 4, 5, 6, 7, 7, 7, 8, 8, 9, 9, 9, 10, 10,
         11, 11, 11, 12, 13, 13, 14, 15, 16, 16, 17],
    16: [0, 1, 1, 2, 2, 3, 4, 5, 6, 7, 7, 7, 8, 8, 8, 9, 10, 11, 12, 13, 14,
         15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 29, 30,
         31, 32],
}


def _conv_layers(cfg, in_channels, width):
  layers = []
  for v in cfg:
    if v == 'M':
      layers.append(nn.MaxPool2d(2, 2))
    else:
      layers += [nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(),
                 nn.BatchNorm2d(width)]
      in_channels = width
  return nn.Sequential(*layers)


def _fc(cin, cout, relu_bn):
  layers = [nn.Linear(cin, cout)]
  if relu_bn:
    layers += [nn.ReLU(), nn.BatchNorm1d(cout)]
  return nn.Sequential(*layers)


class BranchedTiny(nn.Module):
  """Normalised 224 px RGB (applied inside) -> 40 logits."""

  def __init__(self, width=64):
    super().__init__()
    w = width
    self.attributes = list(ATTRIBUTES)
    self.to_layer_6 = _conv_layers([w, w, 'M', w, w, 'M', w, w], 3, w)
    self.from_6_to_11 = nn.ModuleList(
        [_conv_layers([w, 'M', w, w, w, 'M', w], w, w) for _ in range(2)])
    self.layers12 = nn.ModuleList([_conv_layers([w], w, w) for _ in range(3)])
    self.layers13 = nn.ModuleList(
        [_conv_layers([w, 'M'], w, w) for _ in range(10)])
    flat = w * 7 * 7
    self.layers14 = nn.ModuleList([_fc(flat, 2 * w, True) for _ in range(18)])
    self.layers15 = nn.ModuleList([_fc(2 * w, 2 * w, True)
                                   for _ in range(33)])
    self.layers16 = nn.ModuleList([_fc(2 * w, 1, False) for _ in range(40)])
    self.celeba_aligned_means = nn.Parameter(
        torch.tensor([0.5061, 0.4254, 0.3828]), requires_grad=False)
    self.celeba_aligned_stds = nn.Parameter(
        torch.tensor([0.2661, 0.2453, 0.2413]), requires_grad=False)

  def forward(self, x):
    if x.size(-1) != 224:  # direct calls: bilinear (the wrapper resizes first)
      x = F.interpolate(x, size=(224, 224), mode='bilinear')
    x = ((x - self.celeba_aligned_means[None, :, None, None])
         / self.celeba_aligned_stds[None, :, None, None])
    trunk = self.to_layer_6(x)
    y = [m(trunk) for m in self.from_6_to_11]
    for level, mods in ((12, self.layers12), (13, self.layers13)):
      y = [m(y[p]) for m, p in zip(mods, WIRING[level])]
    y = [t.reshape(t.shape[0], -1) for t in y]
    for level, mods in ((14, self.layers14), (15, self.layers15),
                        (16, self.layers16)):
      y = [m(y[p]) for m, p in zip(mods, WIRING[level])]
    return torch.cat(y, dim=1)


class BranchedTinyAttr(nn.Module):
  """The unofficial wrapper: nearest resize to 224 (width check), all logits."""

  def __init__(self, model, mode='nearest'):
    super().__init__()
    self.model = model
    self.mode = mode

  def forward(self, img):
    if img.size(-1) != 224:
      img = F.interpolate(img, (224, 224), mode=self.mode)
    return self.model(img)


def randomize(model, seed=0, scale=0.1, calibration_batch=4):
  """Random weights whose signal survives the 6 levels (tests only).

  PyTorch's default initialisation shrinks activations at every layer and
  fresh BatchNorms are the identity, which makes the 40 logits nearly
  independent of the input. Here convs and linears get He-normal weights,
  the BatchNorm running statistics are measured on a batch of random
  images (so every normalisation is active and of unit scale), and the
  BatchNorm affine parameters are perturbed.
  """
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, (nn.Conv2d, nn.Linear)):
        fan_in = m.weight[0].numel()
        m.weight.normal_(0.0, (2.0 / fan_in) ** 0.5, generator=gen)
        m.bias.normal_(0.0, scale, generator=gen)
    bns = [m for m in model.modules()
           if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))]
    for m in bns:
      m.reset_running_stats()
      m.momentum = None  # cumulative average over the calibration pass
    model.train()
    model(torch.rand(calibration_batch, 3, 224, 224, generator=gen))
    model.eval()
    for m in bns:
      m.momentum = 0.1
      # Normalise by the root mean square rather than the (batch-of-4)
      # standard deviation, which can be tiny (or 0 for units the ReLU kept
      # off) and blow activations up.
      m.running_var.add_(m.running_mean ** 2).clamp_(min=0.25)
      n = m.num_features
      m.weight.copy_(1 + scale * torch.randn(n, generator=gen))
      m.bias.copy_(scale * torch.randn(n, generator=gen))
  return model


def lightning_checkpoint(model, **extra):
  """A PyTorch-Lightning style checkpoint dict (`model.` key prefix)."""
  ckpt = {'epoch': 9, 'global_step': 12345,
          'pytorch-lightning_version': '1.0.8',
          'state_dict': {f'model.{k}': v
                         for k, v in model.state_dict().items()},
          'optimizer_states': [], 'lr_schedulers': []}
  ckpt.update(extra)
  return ckpt
