"""The one-command demo: generated faces, a small L2M-GAN, editing metrics.

Derives from configs/l2m_celebahq.py (the paper settings) and shrinks it to
32-px generated faces and narrow networks. A whole demo (data, the two helper
networks, 1200 GAN steps, metrics) takes under 10 minutes on a quiet 2-core
CPU, more in the machine's slow states (docs/demo.md: 8 min 59 s to 9 min
27 s in six runs at 2.4 to 2.8 steps/s; 15 to 20 minutes in the slow states
of earlier days; the GAN is most of it, 1.3 to 2.8 steps/s over 2 CPU
devices).
Run:

  python3 -m l2m_jax.demo --workdir=runs/demo

`config.demo` holds the data-generation, helper-network and evaluation
settings; every other field is the training config read by
`l2m_jax.train_l2m.train_and_evaluate`. `configs/demo.py:quick` is the test
size (tiny widths, 2 steps; mostly XLA compilation).

The paper's mechanisms are kept: the generator's masked high-pass skips
(w_hpf = 1) with masks made by the FAN post-processing from a landmark
network, and a preservation term. Their pretrained networks (the FAN, the
ImageNet ResNet-18) cannot be downloaded and were trained on photos, so the
demo trains both on the generated faces (l2m_jax/face_priors.py).
"""

import ml_collections

from configs import l2m_celebahq


def get_config(arg: str = ''):
  """Demo config; arg '' (default) or 'quick' (test size)."""
  if arg not in ('', 'quick'):
    raise ValueError(f"configs/demo.py: unknown argument {arg!r}; expected '' "
                     "or 'quick'")
  quick = arg == 'quick'
  c = l2m_celebahq.get_config('res=32,attr=grey_hair')
  c.seed = 0  # PRNG seed (original 777)
  c.data_dir = ''  # set by the demo to <workdir>/data
  c.training_data = ''  # set by the demo to 'synthetic_faces:<attr>:32px:seed<k>'
  c.style_dim = 8 if quick else 64  # style code size (original 64)
  c.base_dim = 8 if quick else 32  # first-conv width of G, E, D (original 2**14 // 32 = 512)
  c.max_conv_dim = 16 if quick else 128  # channel cap (original 512)
  c.w_hpf = 1.0  # masked high-pass skips on (original 1)
  c.orthogonality = 'inner'  # |<s_r, s_u>| per face, the paper's orthogonality (the runnable reference: elementwise)
  c.landmark_checkpoint = ''  # set by the demo: LandmarkNet trained on the faces (original: FAN wing.ckpt)
  c.preservation = 'synthetic_faces'  # PreservationNet trained on the faces (original ImageNet resnet18)
  c.preservation_checkpoint = ''  # set by the demo to <workdir>/priors/preservation
  c.lambda_cyc = 20.0  # cycle weight (original 1; reconstruction must converge in a short run)
  c.lambda_id = 20.0  # preservation weight (original 1; the PreservationNet's features are small)
  c.batch_size = 8  # global batch, images (original 8)
  c.val_batch_size = 16  # global sample batch (original 32)
  c.total_iters = 2 if quick else 1200  # steps (original 100000)
  c.lr = 7e-4  # Adam lr of G, E, D (original 1e-4; higher for a short run)
  c.lr_schedule = 'cosine'  # hold lr, then a half cosine to 0 (original constant)
  c.lr_decay_start = 0.5  # fraction of total_iters at lr before the decay
  c.ema_beta = 0.9 if quick else 0.99  # EMA decay (original 0.999; short run)
  c.randcrop_prob = 0.0  # generated faces are centred (original 0.5)
  c.shuffle_buffer = 512  # tf.data shuffle buffer
  c.check_files = True  # decode every image once before training
  c.log_every = 1 if quick else 10  # scalar interval, steps
  c.sample_every = 2 if quick else 200  # sample-grid interval, steps
  c.save_every = 2 if quick else 400  # checkpoint + EMA-export interval
  c.keep_checkpoints = 2  # checkpoints kept
  c.eval_every = 0  # in-loop FID off; the demo evaluates at the end
  c.num_sample = 4  # grid sources during training
  c.sample_degrees = (0.0, 0.5, 1.0, 1.25)  # grid edit strengths
  c.profile = False  # no profiler trace for the demo

  c.demo = ml_collections.ConfigDict()
  c.demo.attribute = 'grey_hair'  # smiling | eyeglasses | grey_hair
  c.demo.num_train = 64 if quick else 2000  # generated train images
  c.demo.num_val = 16 if quick else 200  # generated val images (edited for metrics)
  c.demo.data_seed = 0  # generation seed
  c.demo.degrees = (0.0, 0.5, 1.0, 1.25)  # evaluated edit strengths
  c.demo.grid_sources = 8  # rows of the final grid
  c.demo.landmark_steps = 20 if quick else 800  # LandmarkNet training steps (batch 32)
  c.demo.landmark_width = 8 if quick else 16  # LandmarkNet first conv width
  c.demo.preservation_steps = 20 if quick else 600  # PreservationNet training steps (batch 32)
  c.demo.preservation_width = 8 if quick else 16  # PreservationNet first conv width
  c.demo.preservation_invariance = 1.0  # weight of its counterfactual feature agreement
  c.demo.preservation_norm = False  # GroupNorm in it (True: a global tint costs it little)
  c.demo.metric_steps = 30 if quick else 400  # attribute classifier steps (batch 64)
  c.demo.regressor_steps = 30 if quick else 2000  # identity regressor steps (batch 64; its held-out error levels off by 2000)
  c.demo.regressor_counterfactuals = True  # the regressor also learns each train face's counterfactual (same identity)
  c.demo.metric_width = 8 if quick else 16  # their first conv width
  c.demo.metric_seed = -1  # their initialisation seed (-1: config.seed)
  # `python3 -m l2m_jax.demo` on a CPU: JAX devices the host is split into
  # (jax_num_cpu_devices), so each step runs data-parallel over 2 threads of
  # work (1.3x the steps/s of 1 device on 2 cores); fixed, not the core
  # count, so that runs on any machine split the batch alike. 0 = JAX's
  # default (1). Ignored on GPU; library callers set devices themselves.
  c.demo.cpu_devices = 2
  return c
