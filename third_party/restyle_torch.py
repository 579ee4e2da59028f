"""ReStyle-e4e (`ProgressiveBackboneEncoder`, IR-SE-50) and its refinement loop.

Written in-house with the key names of yuval-alaluf/restyle-encoder
(`models/encoders/restyle_e4e_encoders.py`, `models/encoders/map2style.py`,
`models/e4e.py`, `scripts/inference_iterative.py`); Alaluf et al., "ReStyle:
A Residual-Based StyleGAN Encoder via Iterative Refinement" (ICCV 2021) on
the e4e encoder of Tov et al., "Designing an Encoder for StyleGAN Image
Manipulation" (SIGGRAPH 2021). `E4E.state_dict()` has the `encoder.*` and
`decoder.*` keys of a ReStyle checkpoint; `save_checkpoint` writes the
checkpoint dict (`state_dict`, `opts`, `latent_avg`). Used only by parity
tests and benchmarks.

Encoder: `input_layer` (Conv3x3(6 -> 64, no bias), BN, PReLU), the 24-unit
IR-SE-50 `body` (256 -> 16 px, 512 channels), and `styles.{0..n-1}`, each a
GradualStyleBlock: 4 x [Conv3x3(512 -> 512, stride 2, pad 1, bias),
LeakyReLU(0.01)] (16 -> 1 px) then EqualLinear(512 -> 512, lr_mul 1). Output
row 0 is `w0 = styles[0](f)`, row i is `w0 + styles[i](f)`.

Refinement: iteration 0 encodes cat(image, avg_image) and adds `latent_avg`;
iteration t adds the encoding of cat(image, y_{t-1}) to the previous codes;
each y_t is the generator output (stored noise) average-pooled to 256 px.
"""

import copy
import math

import torch
from torch import nn

from third_party import irse_torch
from third_party import stylegan2_torch


class GradualStyleBlock(nn.Module):
  """Strided 3x3 convs down to 1x1, then an equalized-lr linear layer."""

  def __init__(self, in_c, out_c, spatial):
    super().__init__()
    self.out_c = out_c
    num_pools = int(math.log2(spatial))
    layers = [nn.Conv2d(in_c, out_c, 3, 2, 1), nn.LeakyReLU()]
    for _ in range(num_pools - 1):
      layers += [nn.Conv2d(out_c, out_c, 3, 2, 1), nn.LeakyReLU()]
    self.convs = nn.Sequential(*layers)
    self.linear = stylegan2_torch.EqualLinear(out_c, out_c, lr_mul=1.0)

  def forward(self, x):
    return self.linear(self.convs(x).reshape(-1, self.out_c))


class ProgressiveBackboneEncoder(nn.Module):
  """ReStyle-e4e encoder at its 'Inference' stage (all deltas active)."""

  def __init__(self, n_styles=18, input_nc=6, num_layers=50):
    super().__init__()
    self.input_layer = irse_torch.make_input_layer(input_nc)
    self.body = irse_torch.make_body(num_layers)
    self.styles = nn.ModuleList(
        [GradualStyleBlock(512, 512, 16) for _ in range(n_styles)])
    self.style_count = n_styles

  def forward(self, x):
    feat = self.body(self.input_layer(x))
    w0 = self.styles[0](feat)
    rows = [w0] + [w0 + self.styles[i](feat)
                   for i in range(1, self.style_count)]
    return torch.stack(rows, dim=1)


class E4E(nn.Module):
  """ReStyle's `e4e` network: `encoder`, `decoder` and a 256 px face pool."""

  def __init__(self, decoder, latent_avg, input_nc=6):
    super().__init__()
    self.n_styles = decoder.n_latent
    self.encoder = ProgressiveBackboneEncoder(self.n_styles, input_nc)
    self.decoder = decoder
    self.latent_avg = latent_avg  # not a buffer: kept outside state_dict
    self.face_pool = nn.AdaptiveAvgPool2d((256, 256))

  def forward(self, x, latent=None, resize=True):
    codes = self.encoder(x)
    if latent is not None:
      codes = codes + latent
    else:
      codes = codes + self.latent_avg.reshape(
          1, -1, self.latent_avg.shape[-1]).to(codes.dtype)
    images, _ = self.decoder([codes], input_is_latent=True,
                             randomize_noise=False)
    if resize:
      images = self.face_pool(images)
    return images, codes

  def average_image(self):
    """pool256(G(latent_avg)) with stored noise: (1, 3, 256, 256)."""
    dtype = self.decoder.input.input.dtype
    avg = self.latent_avg.reshape(1, -1, self.latent_avg.shape[-1]).to(dtype)
    avg = avg.expand(1, self.n_styles, avg.shape[-1])
    images, _ = self.decoder([avg], input_is_latent=True,
                             randomize_noise=False)
    return self.face_pool(images)

  def invert(self, images, n_iters, avg_image=None, return_all=False):
    """ReStyle `run_on_batch`: (N, 3, 256, 256) -> codes (N, n_styles, D)."""
    if avg_image is None:
      avg_image = self.average_image()
    y, codes, steps = None, None, []
    for it in range(n_iters):
      prev = avg_image.expand(images.shape[0], -1, -1, -1) if it == 0 else y
      y, codes = self.forward(torch.cat([images, prev], dim=1), latent=codes)
      steps.append(codes)
    return steps if return_all else codes


def make_e4e(size=1024, style_dim=512, n_mlp=8, channel_base=512, seed=0,
             latent_avg_shape='rows', delta_scale=0.25):
  """A random-weight ReStyle-e4e with random BN statistics (tests only).

  `latent_avg_shape`: 'rows' gives (n_styles, D) as ReStyle stores it,
  'vector' gives (D,) (the accepted alternative). `delta_scale` multiplies
  the style blocks' linear weights (the size of each iteration's update).
  """
  torch.manual_seed(seed)
  g = stylegan2_torch.Generator(size, style_dim=style_dim, n_mlp=n_mlp,
                                channel_base=channel_base)
  with torch.no_grad():
    avg = g.mean_latent(2000)[0]
  if latent_avg_shape == 'rows':
    avg = avg[None].repeat(g.n_latent, 1)
  net = E4E(g, avg)
  gen = torch.Generator().manual_seed(seed + 1)
  # Weight variance 1 / fan_in: the codes depend clearly on the input and
  # activations stay O(1) (PyTorch's default init makes the output nearly
  # input-independent; He init makes the 24 residual units chaotic).
  irse_torch.he_init(net.encoder, gen, gain=1.0)
  irse_torch.randomize_batchnorm(net.encoder, gen)
  with torch.no_grad():
    for block in net.encoder.styles:
      block.linear.bias.normal_(0.0, 0.1, generator=gen)
      # Small deltas, so that the refinement stays in a sane W+ range.
      block.linear.weight.mul_(delta_scale)
    # Scale the ToRGB layers (the image is linear in them jointly) so that
    # G(latent_avg) has standard deviation 0.5, like a photo in [-1, 1];
    # random config-f generators otherwise reach magnitudes near 20 and
    # the iterations diverge.
    net.eval()
    std = float(net.average_image().std())
    for name, param in g.named_parameters():
      if name.startswith('to_rgb') and (name.endswith('conv.weight')
                                        or name.endswith('.bias')):
        if not name.endswith('modulation.bias'):
          param.mul_(0.5 / std)
  return net.eval()


def checkpoint_dict(net, output_size=None, **extra_opts):
  """The dict ReStyle's coach saves: state_dict, opts (vars), latent_avg."""
  opts = dict(encoder_type='ProgressiveBackboneEncoder', input_nc=6,
              output_size=output_size or net.decoder.size, n_iters_per_batch=5,
              dataset_type='ffhq_encode', start_from_latent_avg=True,
              checkpoint_path=None, stylegan_weights='stylegan2-ffhq.pt',
              learning_rate=0.0001, batch_size=8, w_discriminator_lambda=0.0)
  opts.update(extra_opts)
  return {'state_dict': net.state_dict(), 'opts': opts,
          'latent_avg': net.latent_avg.clone(), 'global_step': 100000,
          'best_val_loss': 0.1}


def save_checkpoint(net, path, **extra_opts):
  torch.save(checkpoint_dict(net, **extra_opts), path)


def to_double(net):
  """A float64 copy of an E4E (latent_avg is not a buffer: cast it too)."""
  net64 = copy.deepcopy(net).double()
  net64.latent_avg = net.latent_avg.double()
  return net64
