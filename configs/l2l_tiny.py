"""Tiny Latent-To-Latent configuration for tests and CPU smoke runs.

Overrides configs/l2l_paper.py ('legacy' as argument: l2l_legacy.py):
random small frozen networks (a 16 px StyleGAN2 with 32-d latents, a
3-output convolutional attribute regressor, a 16-d identity network), no
checkpoints needed, sampled latents, a few steps. The mapper keeps the
original's architecture at width 32; mapper_lr_mul 1 (original 0.01) lets
Adam move it within a few hundred steps at this width.
"""

from configs import l2l_legacy
from configs import l2l_paper


def get_config(arg: str = ''):
  """'legacy' for the legacy mode; the paper mode otherwise."""
  c = (l2l_legacy.get_config() if arg == 'legacy' else
       l2l_paper.get_config())
  c.random_networks = True  # random frozen networks (original: trained)
  c.random_net.size = 16  # generator px (original 1024)
  c.random_net.style_dim = 32  # latent width (original 512)
  c.random_net.attributes = ('a0', 'a1', 'a2')  # regressor outputs (orig. 40)
  c.mapper_bounds = (2, 4)  # group rows of the 6-row W+ (original 4, 8)
  c.mapper_lr_mul = 1.0  # (original 0.01)
  c.attribute = 'a0'  # legacy attribute (original smiling)
  c.attributes = ('all',)  # paper: all 3 outputs
  c.sample_attributes = ('a0',)  # grid attribute
  c.sample_strengths = (-1.0, 1.0) if arg != 'legacy' else (0.0, 2.0)
  c.data_source = 'sampled'  # no data files (original: inverted)
  c.truncation = 1.0  # psi
  c.batch_size = 8  # global batch (original 8)
  c.num_eval = 16  # held-out latents
  c.eval_batch_size = 8  # per eval call
  c.total_steps = 4  # steps
  c.log_every = 1  # steps
  c.eval_every = 2  # steps
  c.save_every = 2  # steps
  c.sample_every = 4  # steps
  c.keep_checkpoints = 2  # checkpoints kept
  c.num_sample = 2  # grid rows
  return c
