"""Writes the generated faces in the official `train/<domain>/` folder layout.

  python3 scripts/export_synthetic_faces.py --out data/faces --attribute smiling \
      --image_size 64 --num_train 2000 --num_val 200 --seed 0

Domains are (attribute absent, attribute present), sorted so that label 0 is
"absent": smiling -> no_smile/smile, eyeglasses -> bare_eyes/eyeglasses,
grey_hair -> dark_hair/grey_hair.
"""

import pathlib
import sys
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import argparse  # pylint: disable=g-import-not-at-top,wrong-import-position
import time  # pylint: disable=g-import-not-at-top,wrong-import-position


def main(argv=None):
  from l2m_jax.datasets import synthetic_faces as sf  # pylint: disable=g-import-not-at-top
  from l2m_jax.datasets import synthetic_faces_folders  # pylint: disable=g-import-not-at-top
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--out', required=True, help='output directory')
  p.add_argument('--attribute', default='smiling', choices=sf.ATTRIBUTES,
                 help='attribute that defines the two domains')
  p.add_argument('--image_size', type=int, default=64, help='pixels')
  p.add_argument('--num_train', type=int, default=2000)
  p.add_argument('--num_val', type=int, default=200)
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--overwrite', action='store_true',
                 help='replace a non-empty output directory')
  args = p.parse_args(argv)
  t0 = time.time()
  try:
    info = synthetic_faces_folders.export_folder_layout(
        args.out, args.attribute, image_size=args.image_size,
        num_train=args.num_train, num_val=args.num_val, seed=args.seed,
        overwrite=args.overwrite, progress=print)
  except (ValueError, FileExistsError) as e:
    p.error(str(e))
  verb = 'reused existing' if info['reused'] else 'wrote'
  print(f'{verb} {info["root"]} in {time.time() - t0:.1f}s: domains '
        f'{info["domains"]}, counts {info["counts"]}')


if __name__ == '__main__':
  main()
