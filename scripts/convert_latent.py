"""Converts StyleGAN2, ReStyle-e4e, ArcFace, BranchedTiny, mappers, boundaries.

  python3 scripts/convert_latent.py stylegan2 stylegan2-ffhq-config-f.pt \
      --out converted/stylegan2_ffhq
  python3 scripts/convert_latent.py stylegan2 restyle_e4e_ffhq.pt \
      --out converted/stylegan2_ffhq      # takes the decoder.* keys
  python3 scripts/convert_latent.py mapper smiling.pt --out converted/l2l_smiling
  python3 scripts/convert_latent.py boundaries \
      boundaries_anycost-ffhq-config-f.pt --out converted/boundaries
  python3 scripts/convert_latent.py encoder restyle_e4e_ffhq_encode.pt \
      --out converted/restyle_e4e_ffhq   # and .../restyle_e4e_ffhq/generator
  python3 scripts/convert_latent.py arcface model_ir_se50.pth \
      --out converted/arcface
  python3 scripts/convert_latent.py classifier BranchedTiny.ckpt \
      --out converted/branched_tiny

`stylegan2` accepts a stylegan2-pytorch checkpoint (`g_ema` + `latent_avg`), a bare
g_ema state_dict, or a pSp / e4e / ReStyle checkpoint (`state_dict` with
`decoder.*` keys, `latent_avg`); the config is inferred from the shapes (pass
--size etc. to have it checked). `mapper` reads the unofficial mapper
state_dict (18 tensors); `--preset paper` loads it into a conditioned mapper
with a zero conditioning block. `encoder` reads a ReStyle-e4e checkpoint
(`state_dict` with `encoder.*` / `decoder.*`, `latent_avg`, `opts`) and writes
the encoder and, in `<out>/generator`, its StyleGAN2 generator. `arcface`
reads pSp's `model_ir_se50.pth`, `classifier` the unofficial Latent-To-Latent
`BranchedTiny.ckpt`. Every file loads with `torch.load(weights_only=True)`
(a Lightning `.ckpt` holding other objects falls back to a tensors-only
unpickler that executes nothing). Problems are reported in one message listing
every missing, unexpected and mis-shaped key. Exit status 0 on success, 2 on
user errors. See docs/latent_to_latent.md.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse  # pylint: disable=g-import-not-at-top,wrong-import-position


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  sub = p.add_subparsers(dest='kind', required=True)

  def kind(name, description):
    """A sub-command: the input file, --out and --overwrite."""
    k = sub.add_parser(name, help=description)
    k.add_argument('input')
    k.add_argument('--out', required=True, help='output directory')
    k.add_argument('--overwrite', action='store_true',
                   help='replace an existing non-empty --out')
    return k
  samples_help = 'z samples for latent_avg when the file has none'
  g = kind('stylegan2', 'stylegan2-pytorch g_ema / pSp-e4e-ReStyle decoder')
  g.add_argument('--key', default='g_ema',
                 help='generator entry in a stylegan2-pytorch dict (default '
                 'g_ema)')
  g.add_argument('--size', type=int, help='expected resolution (checked)')
  g.add_argument('--style-dim', type=int, help='expected latent width')
  g.add_argument('--n-mlp', type=int, help='expected mapping depth')
  g.add_argument('--channel-multiplier', type=int,
                 help='expected channel multiplier (2 = config-f)')
  g.add_argument('--mean-latent-samples', type=int, default=10000,
                 help=samples_help)
  m = kind('mapper', 'Latent-To-Latent mapper state_dict')
  m.add_argument('--preset', choices=('legacy', 'paper'), default='legacy')
  m.add_argument('--n-latent', type=int, default=18,
                 help='W+ rows of the generator (18 at 1024 px)')
  m.add_argument('--cond-dim', type=int,
                 help='attributes A of a paper-mode mapper (default 40)')
  kind('boundaries', 'InterFaceGAN boundaries file')
  e = kind('encoder', 'ReStyle-e4e checkpoint (encoder + its generator in '
           '<out>/generator)')
  e.add_argument('--mean-latent-samples', type=int, default=10000,
                 help=samples_help)
  kind('arcface', "pSp's ArcFace model_ir_se50.pth")
  kind('classifier', 'BranchedTiny.ckpt attribute classifier')
  return p.parse_args(argv)


def main(argv=None) -> int:
  from l2m_jax import cli  # pylint: disable=g-import-not-at-top
  return cli.run_script(run, parse_args(argv))


def run(args) -> int:
  """The script's body; user errors propagate to `main`."""
  from l2m_jax.convert import mapper as cm  # pylint: disable=g-import-not-at-top
  from l2m_jax.convert import stylegan2 as cs  # pylint: disable=g-import-not-at-top
  from l2m_jax import cli  # pylint: disable=g-import-not-at-top
  cli.check_out_dir(args.out, args.overwrite)
  if args.kind == 'stylegan2':
    config = None
    given = dict(size=args.size, style_dim=args.style_dim, n_mlp=args.n_mlp,
                 channel_multiplier=args.channel_multiplier)
    if any(v is not None for v in given.values()):
      config = given
    if args.mean_latent_samples < 1:
      raise ValueError('--mean-latent-samples must be >= 1')
    cs.convert_file(args.input, args.out, config=config, key=args.key,
                    mean_latent_samples=args.mean_latent_samples,
                    overwrite=args.overwrite)
  elif args.kind == 'mapper':
    if args.n_latent < 9:
      raise ValueError(f'--n-latent {args.n_latent}: must be >= 9 (coarse '
                       'rows 0-3, medium 4-7, fine 8+)')
    cm.convert_file(args.input, args.out, preset=args.preset,
                    n_latent=args.n_latent, cond_dim=args.cond_dim,
                    overwrite=args.overwrite)
  elif args.kind == 'boundaries':
    cm.convert_boundaries_file(args.input, args.out,
                               overwrite=args.overwrite)
  elif args.kind == 'encoder':
    from l2m_jax.convert import restyle as crs  # pylint: disable=g-import-not-at-top
    if args.mean_latent_samples < 1:
      raise ValueError('--mean-latent-samples must be >= 1')
    crs.convert_file(args.input, args.out,
                     mean_latent_samples=args.mean_latent_samples,
                     overwrite=args.overwrite)
  elif args.kind == 'arcface':
    from l2m_jax.convert import arcface as carc  # pylint: disable=g-import-not-at-top
    carc.convert_file(args.input, args.out, overwrite=args.overwrite)
  else:
    from l2m_jax.convert import branched_tiny as cbt  # pylint: disable=g-import-not-at-top
    cbt.convert_file(args.input, args.out, overwrite=args.overwrite)
  return 0


if __name__ == '__main__':
  sys.exit(main())
