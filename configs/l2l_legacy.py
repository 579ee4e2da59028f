"""Latent-To-Latent, legacy mode: the unofficial training, one attribute.

The settings of 850552586/Latent-To-Latent `training/trainer.py` and
`configs.yaml` (docs/latent_to_latent.md): ReStyle-e4e inversions of FFHQ
photos, a 1024 px StyleGAN2, the BranchedTiny classifier, one attribute,
the InterFaceGAN pre-shift k = 2, the fixed 0.7 / 0.3 blend, losses
0.5 cycle + 1 attribute + 0.5 zero-edit + 0.5 neighbourhood, Adam lr 1e-3. Each field's comment
gives its meaning and the original's value.

  python -m l2m_jax.main --config=configs/l2l_legacy.py --workdir=runs/smile \
      --config.generator_checkpoint=converted/stylegan2_ffhq \
      --config.classifier_checkpoint=converted/branched_tiny \
      --config.arcface_checkpoint=converted/arcface \
      --config.encoder_checkpoint=converted/restyle_e4e \
      --config.boundaries=boundaries_anycost-ffhq-config-f.pt \
      --config.photos_dir=data/ffhq_aligned

`get_config('attr=bushy_eyebrows')` picks another attribute.
"""

import ml_collections


def get_config(arg: str = ''):
  """The legacy configuration; arg 'attr=<name>' sets the attribute."""
  c = ml_collections.ConfigDict()
  c.method = 'l2l'  # trainer picked by l2m_jax.main ('l2m' is L2M-GAN)
  c.mode = 'legacy'  # 'legacy' (the original) or 'paper' (conditioned)
  c.seed = 0  # PRNG seed of init, data order and sampling (original: none)

  # Frozen networks (converted with scripts/convert_latent.py).
  c.generator_checkpoint = ''  # StyleGAN2 (original: ReStyle's FFHQ 1024 G)
  c.classifier_checkpoint = ''  # BranchedTiny (original: BranchedTiny.ckpt)
  c.arcface_checkpoint = ''  # ArcFace IR-SE-50 (original: none; eval only)
  c.encoder_checkpoint = ''  # ReStyle-e4e, data_source 'inverted' (original)
  c.boundaries = ''  # InterFaceGAN normals (original: anycost config-f .pt)
  c.random_networks = False  # tests only: random small frozen networks
  c.random_net = ml_collections.ConfigDict()  # their sizes (random_networks)
  c.random_net.size = 16  # generator resolution, px
  c.random_net.style_dim = 32  # latent width
  c.random_net.n_mlp = 2  # mapping layers
  c.random_net.channel_base = 16  # generator channels
  c.random_net.attributes = ('a0', 'a1', 'a2')  # regressor outputs
  c.random_net.embed_dim = 16  # identity embedding width
  c.random_net.logit_std = 2.0  # regressor logit spread on generated faces
  c.dtype = 'float32'  # compute dtype of G, classifier, ArcFace (original fp32)
  c.noise_mode = 'const'  # generator noise: stored buffers (original)
  c.classifier_resize = 'nearest'  # 1024 -> 224 resize (original: nearest)

  # Mapper.
  c.mapper_layers = 3  # EqualLinear layers per group (original 3)
  c.mapper_lr_mul = 0.01  # EqualLinear lr multiplier (original 0.01)
  c.mapper_bounds = (4, 8)  # first medium / fine W+ row (original 4, 8)
  c.alpha = 0.3  # blend w' = (1 - alpha) w + alpha M (original 0.3)
  c.init_mapper = ''  # converted mapper to start from (original: random)

  # Legacy edit.
  c.attribute = 'smiling'  # edited attribute (original: smiling)
  c.shift = 2.0  # pre-shift k of w + k d (original directions_factor 2)
  # Paper-mode fields (unused in legacy mode; see configs/l2l_paper.py).
  c.attributes = ('all',)  # trained attributes (paper)
  c.delta_max = 1.0  # requests drawn from U(-delta_max, delta_max) (paper)
  c.delta_prob = 0.5  # probability an attribute is requested (paper)
  c.attr_changed_weight = 1.0  # weight of requested attributes (paper)
  c.attr_kept_weight = 1.0  # weight of unrequested attributes (paper)

  # Loss weights.
  c.lambda_cycle = 0.5  # cycle L1 (original 0.5)
  c.lambda_attr = 1.0  # attribute MSE (original 1)
  c.lambda_zero = 0.5  # zero-edit L1, upstream 'loss_identity' (original 0.5)
  c.lambda_neighbour = 0.5  # neighbourhood MSE (original 0.5)
  c.lambda_face_id = 0.0  # ArcFace 1 - cos (original: 1 on a no-grad term)

  # Data.
  c.data_source = 'inverted'  # 'sampled', 'inverted' or 'latents' (orig.)
  c.photos_dir = ''  # aligned face photos (original: FFHQ data_path)
  c.latents_file = ''  # .npy W+ codes [N, 18, 512] (data_source 'latents')
  c.invert_iters = 5  # ReStyle iterations (original rsencoder_n_iters 5)
  c.invert_batch_size = 4  # photos per inversion call
  c.train_fraction = 0.5  # share of latents trained on (original 50%)
  c.eval_fraction = 0.1  # held-out share (original 10%; 40% unused)
  c.split_seed = 0  # seed of the split (original: unseeded)
  c.num_eval = 64  # held-out sampled latents (data_source 'sampled')
  c.truncation = 1.0  # psi of sampled latents (original: no sampling)

  # Optimisation.
  c.batch_size = 8  # global batch, latents (original README 8)
  c.lr = 1e-3  # Adam learning rate (original 1e-3)
  c.beta1 = 0.9  # Adam beta1 (original default 0.9)
  c.beta2 = 0.999  # Adam beta2 (original default 0.999)
  c.adam_eps = 1e-8  # Adam eps (original default 1e-8)
  c.total_steps = 43750  # 10 epochs of 35000 latents / 8 (original 10 ep.)
  c.parallel = 'shard_map'  # step compiler: 'shard_map' or 'pmap'

  # Loop.
  c.log_every = 50  # steps between train scalars
  c.eval_every = 1000  # steps between evals (original: every epoch)
  c.eval_batch_size = 8  # latents per eval call
  c.eval_identity = True  # ArcFace similarity in the eval (original: none)
  c.save_every = 1000  # steps between checkpoints (original 1000)
  c.keep_checkpoints = 3  # checkpoints kept
  c.sample_every = 1000  # steps between sample grids
  c.num_sample = 4  # latents in the grid
  c.sample_strengths = (0.0, 1.0, 2.0, 3.0)  # grid pre-shifts k
  c.sample_attributes = ()  # grid attributes (paper)
  c.profile = False  # clu profiler

  for item in filter(None, arg.split(',')):
    key, _, value = item.partition('=')
    if key == 'attr':
      c.attribute = value
    else:
      raise ValueError(f'configs/l2l_legacy.py: unknown argument {key!r} '
                       "(expected 'attr=<name>')")
  return c
