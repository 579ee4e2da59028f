"""Tiny L2M-GAN configuration for tests and CPU smoke runs.

Overrides configs/l2m_celebahq.py: 32-px images, narrow channels (base_dim 8,
max_conv_dim 16), no FAN masks (w_hpf = 0), batch 4, a few steps. Point
`data_dir` at a folder with train/<domain>/*.png (and optionally val/).
"""

from configs import l2m_celebahq


def get_config(arg: str = ''):
  """The tiny configuration (arg is accepted for CLI symmetry and ignored)."""
  del arg
  c = l2m_celebahq.get_config('res=32')
  c.attribute = 'tiny'  # label for logs only
  c.seed = 0  # PRNG seed
  c.max_conv_dim = 16  # channel cap (original 512)
  c.base_dim = 8  # first-conv width of G, E, D (original 2**14 // img_size)
  c.w_hpf = 0.0  # no FAN masks (original 1)
  c.style_dim = 8  # style code size (original 64)
  c.batch_size = 4  # global batch, images (original 8)
  c.val_batch_size = 4  # global sample/FID batch (original 32)
  c.total_iters = 2  # steps (original 100000)
  c.shuffle_buffer = 16  # tf.data shuffle buffer
  c.preservation = 'none'  # no ResNet-18 (original: preservation term on)
  c.log_every = 1  # steps
  c.sample_every = 2  # steps
  c.save_every = 1  # steps
  c.keep_checkpoints = 2  # checkpoints kept
  c.eval_every = 0  # FID off
  c.num_sample = 2  # grid sources
  c.sample_degrees = (0.0, 1.0)  # grid edit strengths
  c.profile = False  # no profiler in tests
  return c
