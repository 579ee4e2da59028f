"""L2M-GAN's official evaluation: FID for every (source, target) domain pair.

  python3 scripts/evaluate.py --checkpoint converted/l2m_smiling \
      --data data/celeba_hq --inception-weights inception_v3_google-1a9a5a14.pth \
      --out expr/eval/FID_100000_reference.json [--degree 1.0] [--eval-dir DIR]

For each target domain t and each other domain o, every validation image of o
(`<data>/val/o`) is edited to t and the FID against all training images of t
(`<data>/train/t`) is computed. Writes the per-task and mean FID under the
official keys `FID_reference/<o>2<t>` and `FID_reference/mean`. The checkpoint
is a converted folder (scripts/convert_checkpoint.py) or one exported by our
own training; both use the format of docs/architecture.md. Inception weights
are never downloaded (see docs/fid.md).
"""

import os, sys  # pylint: disable=g-multiple-import
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse
import time

from l2m_jax import cli
from l2m_jax.convert import inception as convert_inception
from l2m_jax.evaluation import fid as fid_lib
from l2m_jax.evaluation import inception_features as features
from l2m_jax.evaluation import l2m_eval


def parse_args(argv=None):
  p = argparse.ArgumentParser(
      description=__doc__.split('\n\n', maxsplit=1)[0],
      epilog=convert_inception.NO_DOWNLOAD_HELP)
  p.add_argument('--checkpoint', required=True,
                 help='converted L2M-GAN checkpoint folder (meta.json + '
                 'variables/)')
  p.add_argument('--data', help='dataset root holding train/ and val/')
  p.add_argument('--val-dir', help='validation folder (default <data>/val)')
  p.add_argument('--train-dir', help='training folder (default <data>/train)')
  p.add_argument('--inception-weights',
                 default=os.environ.get('L2M_INCEPTION_WEIGHTS'),
                 help='Inception weights (.pth or converted folder); default '
                 '$L2M_INCEPTION_WEIGHTS')
  p.add_argument('--protocol', default='stargan_v2',
                 choices=features.PROTOCOL_CHOICES,
                 help='FID protocol (default %(default)s = the official one)')
  p.add_argument('--degree', type=float, default=1.0,
                 help='edit degree (official default %(default)s)')
  p.add_argument('--batch-size', type=int, default=32,
                 help='edit and FID batch size (official val_batch_size 32)')
  p.add_argument('--out', help='result JSON (default: '
                 'FID_<step>_reference.json next to the checkpoint)')
  p.add_argument('--step', type=int, default=0,
                 help='step number for the default output name')
  p.add_argument('--eval-dir',
                 help='also save the edited images as <eval-dir>/<o>2<t>/*.png')
  p.add_argument('--cache-dir',
                 default=os.path.join(os.path.expanduser('~'), '.cache',
                                      'l2m_jax', 'fid_stats'),
                 help='real-image statistics cache (default %(default)s); '
                 "'none' disables it")
  p.add_argument('--overwrite', action='store_true',
                 help='replace an existing --out file and write into a '
                 'non-empty --eval-dir')
  p.add_argument('--no-progress', action='store_true')
  return p, p.parse_args(argv)


def run(parser, args):
  from l2m_jax.convert import l2m as convert_l2m  # pylint: disable=g-import-not-at-top
  val_dir = args.val_dir or (args.data and os.path.join(args.data, 'val'))
  train_dir = args.train_dir or (args.data and os.path.join(args.data,
                                                            'train'))
  if not val_dir or not train_dir:
    parser.error('give --data ROOT (with train/ and val/) or both '
                 '--val-dir and --train-dir')
  if args.batch_size <= 0:
    parser.error(f'--batch-size={args.batch_size}: must be positive')
  for name, d in (('validation', val_dir), ('training', train_dir)):
    if not os.path.isdir(d):
      raise FileNotFoundError(f'{d}: no such {name} directory')
  out = args.out or os.path.join(args.checkpoint,
                                 l2m_eval.results_filename(args.step))
  cli.check_out_file(out, args.overwrite, '--out')
  if args.eval_dir:
    cli.check_out_dir(args.eval_dir, args.overwrite, '--eval-dir')
  variables, config = convert_l2m.load_l2m_checkpoint(args.checkpoint)
  print(f'checkpoint {args.checkpoint}: img_size {config.img_size}, domains '
        f'{list(config.domains)}', file=sys.stderr)
  extractor = cli.warnings_printed(
      fid_lib.make_extractor, args.protocol, args.inception_weights,
      batch_size=args.batch_size)
  cache = None if str(args.cache_dir).lower() == 'none' else args.cache_dir
  t0 = time.time()
  results = l2m_eval.evaluate_l2m(
      variables, config, val_dir, train_dir, extractor=extractor,
      degree=args.degree, batch_size=args.batch_size, cache_dir=cache,
      eval_dir=args.eval_dir, progress=not args.no_progress)
  l2m_eval.write_results(out, results)
  for k, v in results.items():
    print(f'{k}: {v:.4f}')
  print(f'wrote {out} ({time.time() - t0:.0f} s; protocol '
        f'{extractor.protocol.name}, inception sha256 '
        f'{extractor.weights_id[:16]}...)', file=sys.stderr)
  return 0


def main(argv=None):
  return cli.run_script(run, *parse_args(argv))


if __name__ == '__main__':
  sys.exit(main())
