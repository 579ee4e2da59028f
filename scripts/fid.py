"""FID between two image folders or .npz statistics files.

  python3 scripts/fid.py PATH_A PATH_B --weights W [--protocol stargan_v2|standard]
      [--save-stats OUT.npz] [--batch-size N] [--json OUT.json]
  python3 scripts/fid.py PATH_A --save-stats OUT.npz --weights W   # stats only
  python3 scripts/fid.py --weights W.pth --convert-to OUT_DIR       # convert

Each PATH is an image folder or an .npz file with `mu` and `sigma` (the
layout pytorch-fid's --save-stats writes). Inception weights are never
downloaded: `--weights` must name a local file (see docs/fid.md). Batches are
jit-compiled and sharded over all local devices.
"""

import os, sys  # pylint: disable=g-multiple-import
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse
import json
import pathlib
import time

from l2m_jax import cli
from l2m_jax.convert import inception as convert_inception
from l2m_jax.evaluation import fid as fid_lib
from l2m_jax.evaluation import frechet
from l2m_jax.evaluation import inception_features as features


def parse_args(argv=None):
  p = argparse.ArgumentParser(
      description=__doc__.split('\n\n', maxsplit=1)[0],
      epilog=convert_inception.NO_DOWNLOAD_HELP)
  p.add_argument('paths', nargs='*', metavar='PATH',
                 help='image folder or .npz statistics file (two for a FID, '
                 'one with --save-stats)')
  p.add_argument('--protocol', default='stargan_v2',
                 choices=features.PROTOCOL_CHOICES,
                 help='stargan_v2 (= l2m_official: torchvision ImageNet '
                 'Inception, PIL resize, ImageNet normalisation; the L2M-GAN '
                 'paper protocol) or standard (= pytorch_fid: FID Inception, '
                 'pytorch-fid preprocessing). Default: %(default)s')
  p.add_argument('--weights', default=os.environ.get('L2M_INCEPTION_WEIGHTS'),
                 help='Inception weights: raw .pth (inception_v3_google-*.pth '
                 'for stargan_v2, pt_inception-2015-12-05-*.pth for standard) '
                 'or a converted folder. Default: $L2M_INCEPTION_WEIGHTS')
  p.add_argument('--save-stats', metavar='OUT.npz',
                 help='write the statistics of the first PATH to OUT.npz')
  p.add_argument('--batch-size', type=int, default=None,
                 help='global batch size (default: 32 for stargan_v2, 50 '
                 'for standard); rounded up to a multiple of the devices')
  p.add_argument('--method', default='eigvals', choices=frechet.METHODS,
                 help='trace-sqrt method (default %(default)s; reference = '
                 'scipy sqrtm as pytorch-fid)')
  p.add_argument('--json', metavar='OUT.json', help='also write the result')
  p.add_argument('--convert-to', metavar='OUT_DIR',
                 help='convert --weights (.pth) to a converted folder and exit')
  p.add_argument('--overwrite', action='store_true',
                 help='replace an existing --save-stats / --json file or '
                 '--convert-to folder')
  p.add_argument('--no-progress', action='store_true')
  return p, p.parse_args(argv)


def run(parser, args):
  if args.convert_to:
    if not args.weights:
      parser.error('--convert-to needs --weights PATH.pth')
    meta = convert_inception.convert_file(args.weights, args.convert_to,
                                          overwrite=args.overwrite)
    print(f'converted {args.weights} ({meta["config"]["kind"]} weights, '
          f'sha256 {meta["source"]["sha256"][:16]}...) -> {args.convert_to}')
    return 0
  if not args.paths or len(args.paths) > 2:
    parser.error('give PATH_A PATH_B (or one PATH with --save-stats)')
  if len(args.paths) == 1 and not args.save_stats:
    parser.error('one PATH given: add a second PATH for a FID, or '
                 '--save-stats OUT.npz to save its statistics')
  if args.batch_size is not None and args.batch_size <= 0:
    parser.error(f'--batch-size={args.batch_size}: must be positive')
  if args.save_stats and not args.save_stats.endswith('.npz'):
    parser.error(f'--save-stats {args.save_stats}: must end in .npz')
  cli.check_out_file(args.save_stats, args.overwrite, '--save-stats')
  cli.check_out_file(args.json, args.overwrite, '--json')
  for path in args.paths:
    if not os.path.exists(path):
      raise FileNotFoundError(f'{path}: no such folder or .npz file')
  proto = features.get_protocol(args.protocol)
  needs_net = any(not str(p).endswith('.npz') for p in args.paths)
  extractor = None
  if needs_net:
    extractor = cli.warnings_printed(
        fid_lib.make_extractor, proto, args.weights,
        batch_size=args.batch_size)
    print(f'protocol {proto.name} ({proto.variant} Inception), weights '
          f'sha256 {extractor.weights_id[:16]}..., batch '
          f'{extractor.batch_size} over {extractor.mesh.devices.size} '
          'device(s)', file=sys.stderr)
  stats = []
  for path in args.paths:
    t0 = time.time()
    mu, sigma, n = fid_lib.path_statistics(path, extractor,
                                           progress=not args.no_progress)
    what = f'{n} images' if n >= 0 else 'loaded statistics'
    print(f'{path}: {what}, {time.time() - t0:.1f} s', file=sys.stderr)
    stats.append((mu, sigma, n))
  if args.save_stats:
    frechet.save_stats(args.save_stats, stats[0][0], stats[0][1])
    print(f'saved statistics of {args.paths[0]} to {args.save_stats}',
          file=sys.stderr)
  if len(stats) < 2:
    return 0
  (mu1, s1, n1), (mu2, s2, n2) = stats
  value = frechet.frechet_distance(mu1, s1, mu2, s2, method=args.method)
  print(f'FID: {value:.6f}')
  if args.json:
    result = {'fid': value, 'protocol': proto.name,
              'weights_sha256': extractor.weights_id if extractor else None,
              'paths': args.paths, 'num_images': [n1, n2],
              'method': args.method}
    pathlib.Path(args.json).write_text(json.dumps(result, indent=1))
  return 0


def main(argv=None):
  return cli.run_script(run, *parse_args(argv))


if __name__ == '__main__':
  sys.exit(main())
