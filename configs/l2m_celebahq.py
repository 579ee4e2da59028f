"""L2M-GAN on CelebA-HQ (one attribute, two domains) with the paper's settings.

Values are the defaults of the released L2M-GAN main script
(rucmlcv/L2M-GAN `main.py`) and of the StarGAN v2 procedure it forks
(docs/method.md#l2m-training); loss weights: docs/method.md#l2m-losses. Run:

  python3 -m l2m_jax.main --config=configs/l2m_celebahq.py --workdir=runs/smile \
      --config.data_dir=data/celeba_hq

Small variants take a string argument, e.g. `configs/l2m_celebahq.py:res=128`
or `:res=256,attr=smiling` (attr only sets `config.attribute`, a label used in
logs; the domains are the folders under data_dir/train).

`get_config(arg, container=PlainConfig)` (l2m_jax/plain_config.py) builds the
same fields without ml_collections, for the train step and the benchmarks on
machines that lack it.
"""


def _parse_arg(arg: str) -> dict[str, str]:
  out = {}
  for item in filter(None, (arg or '').split(',')):
    if '=' not in item:
      raise ValueError(f'config argument {item!r}: expected key=value '
                       '(e.g. res=256,attr=smiling)')
    k, v = item.split('=', 1)
    if k not in ('res', 'attr'):
      raise ValueError(f'config argument {k!r}: known keys are res, attr')
    out[k] = v
  return out


def get_config(arg: str = '', container=None):
  """The paper configuration; `arg` may set res=<int> and attr=<name>.

  Args:
    arg: 'res=<int>,attr=<name>' (both optional).
    container: a class whose instances take the fields as attributes;
      `ml_collections.ConfigDict` (the training loop's) when None.
  """
  args = _parse_arg(arg)
  if container is None:
    import ml_collections  # pylint: disable=g-import-not-at-top
    container = ml_collections.ConfigDict
  c = container()

  # --- experiment ---
  c.attribute = args.get('attr', 'smiling')  # label for logs only (original: Smiling model, folders sad/smile)
  c.seed = 777  # global PRNG seed (original --seed 777)

  # --- data (docs/method.md#l2m-data, docs/method.md#l2m-training) ---
  c.data_dir = ''  # folder with train/<domain>/*.{jpg,png} and val/<domain>/... (original data/celeba_hq)
  c.train_split = 'train'  # sub-folder of data_dir used for training (original train_img_dir)
  c.val_split = 'val'  # sub-folder used for samples and FID (original val_img_dir)
  c.randcrop_prob = 0.5  # probability of RandomResizedCrop before the resize (original 0.5)
  c.crop_scale = (0.8, 1.0)  # RandomResizedCrop area fraction range (original [0.8, 1.0])
  c.crop_ratio = (0.9, 1.1)  # RandomResizedCrop aspect-ratio range (original [0.9, 1.1])
  c.flip_prob = 0.5  # horizontal-flip probability (original RandomHorizontalFlip 0.5)
  c.shuffle_buffer = 4096  # tf.data shuffle buffer, images (original: full shuffle by the sampler)
  c.prefetch = 2  # batches prefetched by tf.data (original DataLoader num_workers 4)
  c.device_prefetch = 2  # batches copied to the devices ahead of the step (0 = none)
  c.check_files = True  # decode every image once before training and fail listing bad files

  # --- model (docs/method.md#l2m-networks; L2MModelConfig) ---
  c.img_size = int(args.get('res', 256))  # image side, px (original 256)
  c.style_dim = 64  # style code size (original 64)
  c.num_domains = 2  # domains = sorted folder names (original 2)
  c.max_conv_dim = 512  # channel cap (original 512)
  c.w_hpf = 1.0  # high-pass skip weight; >0 enables FAN masks (original 1)
  c.base_dim = 0  # first-conv width of G, E, D; 0 = the original 2**14 // img_size
  c.dtype = 'float32'  # compute dtype of G/E/D: float32 or bfloat16 (original float32)

  # --- frozen networks: converted checkpoints (docs/architecture.md) ---
  c.l2m_checkpoint = ''  # converted nets_ema (format l2m_gan): its fan/vgg init the frozen nets ('' = none)
  c.fan_checkpoint = ''  # converted wing.ckpt (format fan) for the masks (original --wing_path)
  c.vgg_checkpoint = ''  # converted ResNet-18 features (original: torchvision ImageNet weights)
  c.landmark_checkpoint = ''  # LandmarkNet (l2m_jax.face_priors) making the masks instead of the FAN ('' = FAN)
  c.preservation_checkpoint = ''  # PreservationNet for preservation='synthetic_faces' (not in the original)
  c.training_data = ''  # provenance recorded in the EMA export's config, e.g. 'synthetic_faces:32px' ('' = unknown)

  # --- optimisation (docs/method.md#l2m-losses, docs/method.md#l2m-training)
  # ---
  c.batch_size = 8  # GLOBAL batch over all devices and hosts, images (original 8)
  c.val_batch_size = 32  # global batch for sampling/FID, images (original 32)
  c.total_iters = 100_000  # training iterations = train steps (original 100000)
  c.lr = 1e-4  # Adam learning rate of G, E (with P and T) and D (original 1e-4)
  c.lr_schedule = 'constant'  # 'constant' or 'cosine' (hold, then half cosine to 0) (original constant)
  c.lr_decay_start = 0.0  # cosine only: fraction of total_iters before the decay begins
  c.beta1 = 0.0  # Adam beta1 (original 0.0)
  c.beta2 = 0.99  # Adam beta2 (original 0.99)
  c.adam_eps = 1e-8  # Adam epsilon (original torch default 1e-8)
  c.weight_decay = 1e-4  # coupled L2 added to the gradient before Adam (original 1e-4)
  c.ema_beta = 0.999  # EMA decay of G and E after every G step (original 0.999)
  c.r1_every = 1  # apply R1 every N D steps (lazy R1, scaled by N); 1 = the original every step
  # (N > 1 selects with lax.cond: 2x slower steps on the CPU, docs/training.md)

  # --- loss weights, original names (docs/method.md#l2m-losses) ---
  c.lambda_reg = 1.0  # R1 weight (original 1)
  c.lambda_cyc = 1.0  # cycle-consistency weight (original 1)
  c.lambda_sty = 1.0  # style-reconstruction weight (original 1; unofficial 2)
  c.lambda_ort = 1.0  # orthogonality weight (original 1)
  c.lambda_id = 1.0  # preservation weight (original --lambda_id 1; unofficial lambda_per 2)
  c.orthogonality = 'elementwise'  # 'elementwise' mean|a*b| (runnable reference) or 'inner' |<a,b>|
  c.preservation = 'resnet18'  # 'resnet18' L1 of ResNet-18 features, 'synthetic_faces' (PreservationNet) or 'none' (ArcFace not available)
  c.preservation_compare = 'features'  # PreservationNet layers compared: 'features', 'outputs' (its head) or 'features+outputs'

  # --- parallelism ---
  c.parallel = 'shard_map'  # 'shard_map' (jit + shard_map) or 'pmap'
  c.compilation_cache_dir = 'xla_cache'  # persistent XLA cache, relative to the workdir or absolute ('' = off)

  # --- logging, sampling, checkpoints, evaluation ---
  c.log_every = 10  # scalar-metric interval, steps (original print_every 10)
  c.sample_every = 5000  # sample-grid interval, steps (original sample_every 5000)
  c.save_every = 10_000  # checkpoint interval, steps (original save_every 10000)
  c.keep_checkpoints = 3  # checkpoints kept by the manager (original keeps all)
  c.eval_every = 50_000  # FID interval, steps; 0 disables (original eval_every 50000)
  c.eval_fid = True  # run the L2M FID protocol at eval_every when weights are given
  c.inception_checkpoint = ''  # converted torchvision Inception-v3 for FID ('' = FID skipped)
  c.num_sample = 8  # fixed validation sources in the sample grid (original: val batch)
  c.sample_degrees = (0.0, 0.5, 1.0, 1.25)  # edit strengths alpha in the grid (original degree 1.0, 1.25)
  c.profile = True  # capture a short profile on process 0 (clu Profile)
  return c
