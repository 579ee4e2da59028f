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

from l2m_jax import face_photos  # pylint: disable=g-import-not-at-top,wrong-import-position


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
                 help='images per call, split over every local device '
                 '(rounded up to a multiple of the device count; default 8)')
  p.add_argument('--strict', action='store_true',
                 help='stop (exit 2) if any input image is unreadable '
                 'instead of skipping it')
  g = p.add_argument_group('photos (--align)')
  face_photos.add_align_arguments(
      g, 'inputs are ordinary photos: detect every face, align, edit, '
      'paste the edits back')
  g.add_argument('--align-style', choices=('celebahq', 'ffhq'),
                 default='celebahq',
                 help='crop: celebahq (L2M-GAN training data, default) or '
                 'ffhq')
  g.add_argument('--no-progress', action='store_true',
                 help='no progress bar')
  return p.parse_args(argv)


def _fail(msg: str) -> int:
  print(f'error: {msg}', file=sys.stderr)
  return 2


def _sweep_fn(source, target, degrees, config):
  """`(variables, images [B, ...]) -> edits [D, B, ...]` for map_batches."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from l2m_jax import editing  # pylint: disable=g-import-not-at-top
  degrees = np.asarray(degrees, np.float32)
  return lambda v, x: editing.edit_sweep(v, x, source, target, degrees,
                                         config=config)


def main(argv=None) -> int:
  args = parse_args(argv)
  import numpy as np  # pylint: disable=g-import-not-at-top
  from l2m_jax import cli, editing, image_io, parallel  # pylint: disable=g-import-not-at-top
  from l2m_jax.convert import l2m as l2m_convert  # pylint: disable=g-import-not-at-top
  from l2m_jax.convert import torch_to_flax as t2f  # pylint: disable=g-import-not-at-top

  if args.batch_size < 1:
    return _fail(f'--batch-size must be >= 1, got {args.batch_size}')
  for a in args.degrees:
    if not np.isfinite(a):
      return _fail(f'--degrees must be finite numbers, got {a}')
  try:
    face_photos.check_align_arguments(args)
    cli.check_out_dir(args.out, args.overwrite)
  except (ValueError, FileExistsError) as e:
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
  # Photos under --align are expected to be large: only the provenance
  # warning applies to them.
  for w in editing.input_warnings(config, () if args.align else paths):
    print(f'warning: {w}', file=sys.stderr)
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

  # Edit in fixed-size batches over every local device (the last batch is
  # padded: one compilation).
  t0 = time.time()
  done = [0]

  def report(valid):
    done[0] += valid
    print(f'  edited {done[0]}/{len(x)} images ({time.time() - t0:.1f}s)',
          flush=True)
  edited = parallel.map_batches(
      _sweep_fn(source, target, args.degrees, config), x,
      batch_size=min(args.batch_size, len(x)), args=(variables,),
      on_batch=report, out_axis=1)  # [D, N, S, S, 3]

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
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from l2m_jax import image_io, parallel  # pylint: disable=g-import-not-at-top
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
  sweep = _sweep_fn(source, target, args.degrees, config)
  rows = []
  bs = args.batch_size
  run = face_photos.PhotoRun(
      detector, paths, style=args.align_style, max_faces=args.max_faces,
      min_score=args.min_score, detect_max_size=args.detect_max_size,
      feather=args.feather, progress=not args.no_progress)
  for photo in run:
    faces = photo.faces
    x = np.stack([image_io.pil_to_array(Image.fromarray(f.crop),
                                        config.img_size) for f in faces])
    # Batches of a power of two up to --batch-size (the last one padded),
    # over as many local devices as they fill: a few compilations in all,
    # little wasted work for one or two faces.
    rows_per_call = min(bs, 1 << (len(x) - 1).bit_length())
    mesh = parallel.local_mesh(min(rows_per_call, jax.local_device_count()))
    edited = image_io.to_uint8(parallel.map_batches(
        sweep, x, batch_size=rows_per_call, args=(variables,), mesh=mesh,
        out_axis=1))  # [D, F, S, S, 3]
    for k, name in enumerate(photo.face_names()):
      image_io.save_image(out_dir / 'aligned' / f'{name}.png', x[k])
      for d, a in enumerate(args.degrees):
        image_io.save_image(
            out_dir / f'degree_{a:g}' / 'aligned' / f'{name}.png',
            edited[d, k])
      rows.append(np.concatenate([image_io.to_uint8(x[k])[None],
                                  edited[:, k]]))
    run.finish(photo, {out_dir / f'degree_{a:g}' / f'{photo.name}.png':
                       edited[d] for d, a in enumerate(args.degrees)})
  run.close()

  run.write_json(out_dir / 'faces.json', detector=str(args.detector),
                 degrees=list(args.degrees))
  if rows:
    image_io.save_image(out_dir / 'grid.png',
                        image_io.make_grid(np.stack(rows)))
  print(f'edited {run.edited_faces} face(s) in {run.edited_photos} '
        f'photo(s); wrote {out_dir} (faces.json, grid.png, aligned/, '
        'degree_*/)')
  if run.skipped:
    print(f'{len(run.skipped)} photo(s) skipped (unreadable or no face)',
          file=sys.stderr)
    return 1
  return 0


if __name__ == '__main__':
  sys.exit(main())
