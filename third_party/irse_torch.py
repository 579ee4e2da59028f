"""IR-SE-50 backbone and the ArcFace identity network in PyTorch.

Written in-house, with the parameter names of the pSp / ReStyle code bases
(eladrich/pixel2style2pixel `models/encoders/helpers.py` and
`models/encoders/model_irse.py`, themselves derived from TreB1eN's
InsightFace_Pytorch), so that a `state_dict()` of `Backbone(112, 50, 'ir_se')`
has the key layout of pSp's `model_ir_se50.pth`. Architecture: Hu et al.,
"Squeeze-and-Excitation Networks" (CVPR 2018) units in the improved-residual
(IR) ResNet of Deng et al., "ArcFace" (CVPR 2019). Used only by parity tests
and benchmarks.

Unit `bottleneck_IR_SE(in, depth, stride)`: output = res(x) + shortcut(x),
with no activation after the sum.
  shortcut: `MaxPool2d(1, stride)` (plain subsampling) when in == depth,
    else `shortcut_layer.0` Conv1x1(in -> depth, stride, no bias) and
    `shortcut_layer.1` BatchNorm2d(depth).
  res_layer: 0 BN(in), 1 Conv3x3(in -> depth, pad 1, no bias), 2 PReLU(depth),
    3 Conv3x3(depth -> depth, stride, pad 1, no bias), 4 BN(depth),
    5 SEModule(depth, 16) (`fc1`, `fc2`: 1x1 convs without bias).

`identity_crop` is pSp's identity-loss preprocessing (`criteria/id_loss.py`
`IDLoss.extract_feats`; the e4e / StyleCLIP variant first pools images that
are not 256 px to 256).
"""

import collections

import torch
from torch import nn
from torch.nn import functional as F

Unit = collections.namedtuple('Unit', ['in_channel', 'depth', 'stride'])

# Units per stage (depth, count) of the 50-, 100- and 152-layer backbones.
_STAGES = {
    50: ((64, 3), (128, 4), (256, 14), (512, 3)),
    100: ((64, 3), (128, 13), (256, 30), (512, 3)),
    152: ((64, 3), (128, 8), (256, 36), (512, 3)),
}


def unit_list(num_layers=50):
  """The `Unit(in, depth, stride)` sequence of the backbone body."""
  units = []
  in_channel = 64
  for depth, count in _STAGES[num_layers]:
    units.append(Unit(in_channel, depth, 2))
    units += [Unit(depth, depth, 1) for _ in range(count - 1)]
    in_channel = depth
  return units


class Flatten(nn.Module):

  def forward(self, x):
    return x.reshape(x.shape[0], -1)


def l2_norm(x, axis=1):
  return x / torch.norm(x, 2, axis, True)


class SEModule(nn.Module):
  """Squeeze-and-excitation: x * sigmoid(fc2(relu(fc1(mean_hw(x)))))."""

  def __init__(self, channels, reduction):
    super().__init__()
    self.avg_pool = nn.AdaptiveAvgPool2d(1)
    self.fc1 = nn.Conv2d(channels, channels // reduction, 1, bias=False)
    self.relu = nn.ReLU()
    self.fc2 = nn.Conv2d(channels // reduction, channels, 1, bias=False)
    self.sigmoid = nn.Sigmoid()

  def forward(self, x):
    s = self.sigmoid(self.fc2(self.relu(self.fc1(self.avg_pool(x)))))
    return x * s


class bottleneck_IR_SE(nn.Module):  # pylint: disable=invalid-name
  """Improved-residual unit with squeeze-and-excitation (upstream name)."""

  def __init__(self, in_channel, depth, stride):
    super().__init__()
    if in_channel == depth:
      self.shortcut_layer = nn.MaxPool2d(1, stride)
    else:
      self.shortcut_layer = nn.Sequential(
          nn.Conv2d(in_channel, depth, 1, stride, bias=False),
          nn.BatchNorm2d(depth))
    self.res_layer = nn.Sequential(
        nn.BatchNorm2d(in_channel),
        nn.Conv2d(in_channel, depth, 3, 1, 1, bias=False),
        nn.PReLU(depth),
        nn.Conv2d(depth, depth, 3, stride, 1, bias=False),
        nn.BatchNorm2d(depth),
        SEModule(depth, 16))

  def forward(self, x):
    return self.res_layer(x) + self.shortcut_layer(x)


def make_input_layer(in_channels):
  return nn.Sequential(nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False),
                       nn.BatchNorm2d(64), nn.PReLU(64))


def make_body(num_layers=50):
  return nn.Sequential(*[bottleneck_IR_SE(*u) for u in unit_list(num_layers)])


class Backbone(nn.Module):
  """ArcFace IR-SE network: 112 (or 224) px RGB -> L2-normalised 512-d.

  `output_layer`: 0 BatchNorm2d(512), 1 Dropout(drop_ratio), 2 Flatten
  (channel-major, as the NCHW view), 3 Linear(512*7*7 -> 512),
  4 BatchNorm1d(512, affine).
  """

  def __init__(self, input_size=112, num_layers=50, mode='ir_se',
               drop_ratio=0.6, affine=True):
    super().__init__()
    if mode != 'ir_se':
      raise ValueError('only the ir_se units are defined here')
    if input_size not in (112, 224):
      raise ValueError('input_size must be 112 or 224')
    self.input_layer = make_input_layer(3)
    side = input_size // 16
    self.output_layer = nn.Sequential(
        nn.BatchNorm2d(512), nn.Dropout(drop_ratio), Flatten(),
        nn.Linear(512 * side * side, 512), nn.BatchNorm1d(512, affine=affine))
    self.body = make_body(num_layers)

  def forward(self, x):
    return l2_norm(self.output_layer(self.body(self.input_layer(x))))


def identity_crop(x):
  """pSp identity-loss input: (N, 3, S, S) in [-1, 1] -> (N, 3, 112, 112).

  Pools to 256 first when S != 256 (e4e / StyleCLIP `IDLoss`), then crops
  rows 35:223 and columns 32:220 and adaptive-average-pools to 112.
  """
  if x.shape[2] != 256:
    x = F.adaptive_avg_pool2d(x, (256, 256))
  x = x[:, :, 35:223, 32:220]
  return F.adaptive_avg_pool2d(x, (112, 112))


def he_init(module, generator=None, gain=2.0):
  """Normal weights of variance gain / fan_in for every conv and linear.

  gain 2 is He initialisation; tests use smaller gains.

  PyTorch's default initialisation shrinks the signal at every layer, so a
  deep random network's output hardly depends on its input.
  """
  with torch.no_grad():
    for m in module.modules():
      if isinstance(m, (nn.Conv2d, nn.Linear)):
        fan_in = m.weight[0].numel()
        m.weight.normal_(0.0, (gain / fan_in) ** 0.5, generator=generator)
  return module


def randomize_batchnorm(module, generator=None, scale=0.1):
  """Random affine and running statistics for every BatchNorm (tests only).

  Fresh BatchNorms are the identity; random statistics make the parity
  tests exercise the eval-mode normalisation. Running variances are drawn
  in [0.5, 1.5] and the means small, so deep random nets stay finite.
  """
  with torch.no_grad():
    for m in module.modules():
      if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
        n = m.num_features
        m.running_mean.copy_(scale * torch.randn(n, generator=generator))
        m.running_var.copy_(0.5 + torch.rand(n, generator=generator))
        if m.affine:
          m.weight.copy_(1 + scale * torch.randn(n, generator=generator))
          m.bias.copy_(scale * torch.randn(n, generator=generator))
        m.num_batches_tracked.fill_(1000)
      elif isinstance(m, nn.PReLU):
        m.weight.copy_(0.25 + scale * torch.randn(m.weight.shape,
                                                  generator=generator))
  return module
