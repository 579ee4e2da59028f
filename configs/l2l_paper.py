"""Latent-To-Latent, paper mode: one mapper for all 40 classifier attributes.

Overrides configs/l2l_legacy.py. The mapper is conditioned on a vector of
desired attribute changes (40 BranchedTiny attributes in CelebA order),
residual `w' = w + M(w, delta)` with a zero-initialised last layer; the
losses are attribute MSE to clip(a + delta, 0, 1), a differentiable ArcFace
identity term, neighbourhood, zero-edit and cycle. The paper (WACV 2022)
publishes neither its loss weights nor its mapper details, so the values
marked "ours" are our choices; "original" refers to the unofficial code.
Data: latents sampled from the generator (z ~ N(0, I), no photos needed).

  python -m l2m_jax.main --config=configs/l2l_paper.py --workdir=runs/paper \
      --config.generator_checkpoint=converted/stylegan2_ffhq \
      --config.classifier_checkpoint=converted/branched_tiny \
      --config.arcface_checkpoint=converted/arcface
"""

from configs import l2l_legacy


def get_config(arg: str = ''):
  del arg
  c = l2l_legacy.get_config()
  c.mode = 'paper'  # conditioned, residual mapper (original: legacy only)
  c.attributes = ('all',)  # trained attributes: all 40 (ours)
  c.delta_max = 1.0  # requests in U(-1, 1) (ours)
  c.delta_prob = 0.25  # each attribute requested with p 0.25 (ours)
  c.attr_changed_weight = 1.0  # requested attributes (ours)
  c.attr_kept_weight = 1.0  # unrequested attributes must stay (ours)
  c.lambda_attr = 1.0  # attribute MSE (ours; original 1 on one attribute)
  c.lambda_face_id = 1.0  # ArcFace 1 - cos, differentiable (ours)
  c.lambda_neighbour = 0.5  # (ours; original 0.5)
  c.lambda_zero = 0.5  # (ours; original 0.5)
  c.lambda_cycle = 0.5  # (ours; original 0.5)
  c.data_source = 'sampled'  # z ~ N(0, I) -> W+ (original: inverted FFHQ)
  c.truncation = 0.7  # psi of sampled latents (ours)
  c.num_eval = 256  # held-out sampled latents (ours)
  c.total_steps = 100000  # (ours; original 10 epochs of one attribute)
  c.sample_attributes = ('smiling', 'young', 'male')  # grid attributes
  c.sample_strengths = (-1.0, -0.5, 0.5, 1.0)  # grid requests per attribute
  return c
