"""Edits face images with a converted L2M-GAN checkpoint.

  python3 scripts/edit.py --checkpoint converted/l2m_smiling \
      --input photos/ --target smile --degrees 0 0.5 1 1.25 --out edits/

For each input image (a file, or every .png/.jpg/.jpeg in a folder; any size,
RGB/RGBA/grayscale; resized to the model's img_size with PIL bilinear as the
official loader does) and each degree a, writes
`<out>/degree_<a>/<stem>.png` = G(x, s + a (T_y'(s_r) - s_r), masks(x)),
clamped and quantised as the official `save_image`, and `<out>/grid.png`
(rows = inputs, columns = input | one column per degree).

The model config comes from the checkpoint's meta.json; there are no model
flags. Unreadable or corrupt images are reported (path and reason) and
skipped; with --strict the run stops before editing anything instead. The
exit status is 0 when every readable image was edited, 1 when some inputs
were skipped, 2 on usage errors (a non-empty --out without --overwrite is
one).

Ordinary photos (`--align`): a face anywhere in the frame, tilted, any size,
several faces.

  python3 scripts/edit.py --checkpoint converted/l2m_smiling --align \
      --detector mobilenet0.25_Final.pth --input photos/ --target smile \
      --degrees 0 1 --out edits/

Every face is detected with RetinaFace (`--detector`: the user's own copy of
the released `mobilenet0.25_Final.pth`, or its conversion by
`scripts/convert_checkpoint.py --format retinaface`; nothing is
downloaded), at most `--max-faces` per photo by score; each is aligned to a
CelebA-HQ-style 1024 px crop (`--align-style ffhq` for the FFHQ crop),
resized to img_size as above, edited, and warped back into the photo with a
feathered mask (`--feather`); pixels outside the faces stay bit-identical.
Writes `<out>/aligned/<stem>_face<k>.png` (the model inputs),
`<out>/degree_<a>/aligned/<stem>_face<k>.png` (the aligned edits),
`<out>/degree_<a>/<stem>.png` (the full photos with every face edited),
`<out>/grid.png` (one row per face) and `<out>/faces.json` (per photo: size
and, per face, box, 5 landmarks, score and the crop's quad in the photo).
A photo without a face is reported by name and skipped (exit status 1).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse  # pylint: disable=g-import-not-at-top,wrong-import-position
import pathlib  # pylint: disable=g-import-not-at-top,wrong-import-position
import time  # pylint: disable=g-import-not-at-top,wrong-import-position


def parse_args(argv=None):
  p = argparse.ArgumentParser(
      description='Edit face images with a converted L2M-GAN checkpoint.')
  p.add_argument('--checkpoint', required=True,
                 help='converted checkpoint directory (meta.json + '
                 'variables/) from scripts/convert_checkpoint.py')
  p.add_argument('--input', required=True,
                 help='an image file or a folder of .png/.jpg/.jpeg images')
  p.add_argument('--target', required=True,
                 help='target domain: name (e.g. smile) or index')
  p.add_argument('--source', default=None,
                 help='source domain of the inputs: name or index (default: '
                 'the other domain of a 2-domain model; required otherwise)')
  p.add_argument('--degrees', type=float, nargs='+', default=[1.0],
                 help='edit strengths a (0 = unedited code, 1 = official '
                 'edit, >1 extrapolates); default 1')
  p.add_argument('--out', required=True, help='output directory')
  p.add_argument('--overwrite', action='store_true',
                 help='write into a non-empty --out (same-name files are '
                 'replaced)')
  p.add_argument('--batch-size', type=int, default=8,
                 help='images per device batch (default 8)')
  p.add_argument('--strict', action='store_true',
                 help='stop (exit 2) if any input image is unreadable '
                 'instead of skipping it')
  g = p.add_argument_group('photos (--align)')
  g.add_argument('--align', action='store_true',
                 help='inputs are ordinary photos: detect every face, '
                 'align, edit, paste the edits back')
  g.add_argument('--detector', default=None,
                 help='RetinaFace weights: mobilenet0.25_Final.pth or its '
                 'converted directory (required with --align)')
  g.add_argument('--max-faces', type=int, default=None,
                 help='edit at most this many faces per photo, highest '
                 'detection score first (default: all)')
  g.add_argument('--align-style', choices=('celebahq', 'ffhq'),
                 default='celebahq',
                 help='crop: celebahq (L2M-GAN training data, default) or '
                 'ffhq')
  g.add_argument('--min-score', type=float, default=0.6,
                 help='detection score that counts as a face (default 0.6, '
                 'as RetinaFace detect.py)')
  g.add_argument('--detect-max-size', type=int, default=None,
                 help='detect on a copy whose longer side is at most this '
                 'many pixels (default: full size)')
  g.add_argument('--feather', type=float, default=0.1,
                 help='width of the paste-back blend ramp, as a fraction of '
                 'the crop side (default 0.1)')
  g.add_argument('--no-progress', action='store_true',
                 help='no progress bar')
  return p.parse_args(argv)


def _fail(msg: str) -> int:
  print(f'error: {msg}', file=sys.stderr)
  return 2


def main(argv=None) -> int:
  args = parse_args(argv)
  import numpy as np  # pylint: disable=g-import-not-at-top
  from l2m_jax import cli, editing, image_io  # pylint: disable=g-import-not-at-top
  from l2m_jax.convert import l2m as l2m_convert  # pylint: disable=g-import-not-at-top
  from l2m_jax.convert import torch_to_flax as t2f  # pylint: disable=g-import-not-at-top

  if args.batch_size < 1:
    return _fail(f'--batch-size must be >= 1, got {args.batch_size}')
  for a in args.degrees:
    if not np.isfinite(a):
      return _fail(f'--degrees must be finite numbers, got {a}')
  if args.align:
    if args.detector is None:
      return _fail('--align needs --detector (mobilenet0.25_Final.pth or '
                   'its converted directory)')
    if args.max_faces is not None and args.max_faces < 1:
      return _fail(f'--max-faces must be >= 1, got {args.max_faces}')
    if not 0 < args.feather <= 0.5:
      return _fail(f'--feather must be in (0, 0.5], got {args.feather}')
    if not 0 <= args.min_score <= 1:
      return _fail(f'--min-score must be in [0, 1], got {args.min_score}')
    if args.detect_max_size is not None and args.detect_max_size < 32:
      return _fail('--detect-max-size must be >= 32, got '
                   f'{args.detect_max_size}')
  elif args.detector is not None or args.max_faces is not None:
    return _fail('--detector / --max-faces need --align')
  try:
    cli.check_out_dir(args.out, args.overwrite)
  except FileExistsError as e:
    return _fail(str(e))

  # Inputs.
  inp = pathlib.Path(args.input)
  if inp.is_dir():
    try:
      paths = image_io.list_images(inp)
    except ValueError as e:
      return _fail(str(e))
  elif inp.is_file():
    paths = [inp]
  else:
    return _fail(f'{inp}: no such file or directory')

  # Model.
  try:
    variables, config = l2m_convert.load_l2m_checkpoint(args.checkpoint)
  except (FileNotFoundError, ValueError, t2f.ConversionError) as e:
    return _fail(str(e))
  try:
    target = config.domain_index(args.target)
    if args.source is None:
      if config.num_domains != 2:
        return _fail(f'--source is required for a {config.num_domains}-'
                     f'domain model (domains {list(config.domains)})')
      source = 1 - target
    else:
      source = config.domain_index(args.source)
  except ValueError as e:
    return _fail(str(e))
  if source == target:
    print(f'warning: source and target are both {config.domains[target]!r}',
          file=sys.stderr)
  print(f'model: img_size {config.img_size}, domains {list(config.domains)}, '
        f'w_hpf {config.w_hpf}; editing {config.domains[source]} -> '
        f'{config.domains[target]} at degrees {args.degrees}', flush=True)
  if args.align:
    return _edit_photos(args, paths, variables, config, source, target)

  # Read images; report unreadable ones.
  images, names, bad = [], [], []
  for p in paths:
    try:
      images.append(image_io.load_image(p, config.img_size))
      names.append(p.stem)
    except image_io.ImageReadError as e:
      bad.append(e)
      print(f'warning: skipping {e.path}: {e.reason}', file=sys.stderr)
  if bad and args.strict:
    return _fail(f'{len(bad)} unreadable image(s) (--strict): '
                 + ', '.join(e.path for e in bad))
  if not images:
    return _fail(f'{inp}: no readable image')
  if len(set(names)) != len(names):
    names = [f'{i:04d}_{n}' for i, n in enumerate(names)]
  x = np.stack(images)

  # Edit in fixed-size batches (the last is padded: one compilation).
  degrees = np.asarray(args.degrees, np.float32)
  bs = min(args.batch_size, len(x))
  outs = []
  t0 = time.time()
  for i in range(0, len(x), bs):
    batch = x[i:i + bs]
    n = len(batch)
    if n < bs:
      batch = np.concatenate([batch, np.repeat(batch[-1:], bs - n, 0)])
    out = editing.edit_sweep(variables, batch, source, target, degrees,
                             config=config)
    outs.append(np.asarray(out)[:, :n])
    print(f'  edited {min(i + bs, len(x))}/{len(x)} images '
          f'({time.time() - t0:.1f}s)', flush=True)
  edited = np.concatenate(outs, axis=1)  # [D, N, S, S, 3]

  out_dir = pathlib.Path(args.out)
  for d, a in enumerate(args.degrees):
    sub = out_dir / f'degree_{a:g}'
    for k, name in enumerate(names):
      image_io.save_image(sub / f'{name}.png', edited[d, k])
  grid = np.concatenate([x[:, None], np.transpose(edited, (1, 0, 2, 3, 4))],
                        axis=1)  # [N, 1 + D, S, S, 3]
  image_io.save_image(out_dir / 'grid.png', image_io.make_grid(grid))
  print(f'wrote {len(names)} x {len(args.degrees)} images and grid.png to '
        f'{out_dir}')
  if bad:
    print(f'{len(bad)} input(s) skipped as unreadable', file=sys.stderr)
    return 1
  return 0


def _edit_photos(args, paths, variables, config, source, target) -> int:
  """`--align`: detect, align, edit and paste back, photo by photo."""
  import json  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  from l2m_jax import editing, face_photos, image_io  # pylint: disable=g-import-not-at-top
  from l2m_jax.convert import retinaface as rf_convert  # pylint: disable=g-import-not-at-top
  from l2m_jax.convert import torch_to_flax as t2f  # pylint: disable=g-import-not-at-top

  try:
    detector, _ = rf_convert.load_retinaface(args.detector)
  except (FileNotFoundError, ValueError, t2f.ConversionError) as e:
    return _fail(f'--detector: {e}')
  if args.strict:
    bad = image_io.find_unreadable(paths)
    if bad:
      return _fail(f'{len(bad)} unreadable image(s) (--strict): '
                   + ', '.join(p for p, _ in bad))
  out_dir = pathlib.Path(args.out)
  degrees = np.asarray(args.degrees, np.float32)
  stems = [p.stem for p in paths]
  if len(set(stems)) != len(stems):
    stems = [f'{i:04d}_{n}' for i, n in enumerate(stems)]
  records, rows, skipped = [], [], 0
  bs = args.batch_size
  bar = tqdm(list(zip(paths, stems)), unit='photo', desc='photos',
             disable=args.no_progress, file=sys.stderr)
  for path, stem in bar:
    try:
      photo = np.asarray(image_io.open_rgb(path))
    except image_io.ImageReadError as e:
      tqdm.write(f'warning: skipping {e.path}: {e.reason}', file=sys.stderr)
      records.append({'file': str(path), 'error': e.reason})
      skipped += 1
      continue
    faces = face_photos.extract_faces(
        detector, [photo], style=args.align_style, max_faces=args.max_faces,
        max_size=args.detect_max_size, score_threshold=args.min_score,
        names=[str(path)])[0]
    record = {'file': str(path), 'size': [photo.shape[1], photo.shape[0]],
              'faces': [f.to_json() for f in faces]}
    records.append(record)
    if not faces:
      msg = (f'{path}: no face found (no detection with score >= '
             f'{args.min_score}); photo skipped')
      tqdm.write(f'warning: {msg}', file=sys.stderr)
      record['error'] = 'no face found'
      skipped += 1
      continue
    x = np.stack([image_io.pil_to_array(Image.fromarray(f.crop),
                                        config.img_size) for f in faces])
    # Batches of a power of two up to --batch-size (the last one padded):
    # a few compilations in all, little wasted work for one or two faces.
    rows_per_call = min(bs, 1 << (len(x) - 1).bit_length())
    edited = []
    for i in range(0, len(x), rows_per_call):
      chunk = x[i:i + rows_per_call]
      n = len(chunk)
      chunk = np.concatenate([chunk, np.repeat(chunk[-1:],
                                               rows_per_call - n, 0)])
      out = editing.edit_sweep(variables, chunk, source, target, degrees,
                               config=config)
      edited.append(np.asarray(out)[:, :n])
    edited = image_io.to_uint8(np.concatenate(edited, axis=1))  # [D, F, ...]
    for k in range(len(faces)):
      name = f'{stem}_face{k}.png'
      image_io.save_image(out_dir / 'aligned' / name, x[k])
      for d, a in enumerate(args.degrees):
        image_io.save_image(out_dir / f'degree_{a:g}' / 'aligned' / name,
                            edited[d, k])
      rows.append(np.concatenate([image_io.to_uint8(x[k])[None],
                                  edited[:, k]]))
    for d, a in enumerate(args.degrees):
      result = face_photos.paste_faces(photo, list(edited[d]), faces,
                                       feather=args.feather)
      image_io.save_image(out_dir / f'degree_{a:g}' / f'{stem}.png', result)
  bar.close()

  out_dir.mkdir(parents=True, exist_ok=True)
  with open(out_dir / 'faces.json', 'w') as f:
    json.dump({'detector': str(args.detector), 'style': args.align_style,
               'min_score': args.min_score, 'degrees': list(args.degrees),
               'photos': records}, f, indent=1)
  if rows:
    image_io.save_image(out_dir / 'grid.png',
                        image_io.make_grid(np.stack(rows)))
  n_faces = len(rows)
  print(f'edited {n_faces} face(s) in {len(paths) - skipped} photo(s); wrote '
        f'{out_dir} (faces.json, grid.png, aligned/, degree_*/)')
  if skipped:
    print(f'{skipped} photo(s) skipped (unreadable or no face)',
          file=sys.stderr)
    return 1
  return 0


if __name__ == '__main__':
  sys.exit(main())
