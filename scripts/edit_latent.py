"""Edits W+ latents with a Latent-To-Latent mapper and renders them.

Legacy mapper (unofficial checkpoints), one attribute, a strength sweep:

  python3 scripts/edit_latent.py --latents latents.npy \
      --generator converted/stylegan2_ffhq --mapper converted/l2l_smiling \
      --boundaries boundaries_anycost-ffhq-config-f.pt --attribute smiling \
      --strengths 0 1 2 3 --out edits/

Paper-mode mapper, an attribute-change vector (scaled by each strength):

  python3 scripts/edit_latent.py --latents latents.pt --generator ... \
      --mapper converted/l2l_paper --delta smiling=0.8,young=-0.5 \
      --strengths 0.5 1 --out edits/

Inputs: W+ latents as `.npy` or `.pt` ([B, 18, 512], [18, 512],
[B, 1, 18, 512] or w [B, 512]). Writes `<out>/edited_latents.npy`
[B, S, 18, 512], `<out>/images/<i>_s<strength>.png` and
`<out>/images/<i>_orig.png`, and `<out>/grid.png` (rows = latents, columns =
original | one per strength). The edit and the generator are jit-compiled and
run in batches of --batch-size, split over the local devices. Exit status 0
on success, 2 on user errors. Photos: see scripts/edit_photo.py.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse  # pylint: disable=g-import-not-at-top,wrong-import-position
import json  # pylint: disable=g-import-not-at-top,wrong-import-position
import pathlib  # pylint: disable=g-import-not-at-top,wrong-import-position
import time  # pylint: disable=g-import-not-at-top,wrong-import-position


def parse_args(argv=None):
  p = argparse.ArgumentParser(
      description='Edit W+ latents with a Latent-To-Latent mapper.')
  p.add_argument('--latents', required=True, help='.npy or .pt W+ latents')
  p.add_argument('--generator', required=True,
                 help='converted StyleGAN2 directory (convert_latent.py '
                 'stylegan2)')
  p.add_argument('--mapper', required=True,
                 help='converted mapper directory (convert_latent.py mapper)')
  p.add_argument('--out', required=True, help='output directory')
  p.add_argument('--mode', choices=('auto', 'legacy', 'paper'),
                 default='auto',
                 help='legacy: boundary pre-shift + blend; paper: attribute-'
                 'change vector; auto: legacy when the mapper has no '
                 'conditioning input')
  p.add_argument('--boundaries',
                 help='(legacy) boundaries .pt or converted directory')
  p.add_argument('--attribute', help='(legacy) attribute name, e.g. smiling')
  p.add_argument('--delta',
                 help='(paper) NAME=VALUE,... over the 40 CelebA attributes')
  p.add_argument('--delta-file',
                 help='(paper) .npy attribute-change vector [A] or [B, A]')
  p.add_argument('--strengths', type=float, nargs='+', default=None,
                 help='legacy: pre-shift factors k (default 0 1 2 3; the '
                 'unofficial code uses 2); paper: multipliers of the delta '
                 'vector (default 1)')
  p.add_argument('--batch-size', type=int, default=4,
                 help='latents per compiled call (rounded up to a multiple '
                 'of the device count)')
  p.add_argument('--num-devices', type=int, default=None,
                 help='split each batch over this many local devices (data '
                 'parallel); default: all local devices')
  p.add_argument('--noise', choices=('const', 'random', 'none'),
                 default='const',
                 help='generator noise: stored buffers (default, as the '
                 'unofficial code), random, or none')
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--no-images', action='store_true',
                 help='write the edited latents only')
  p.add_argument('--overwrite', action='store_true')
  return p.parse_args(argv)


def _fmt(s: float) -> str:
  return f'{s:g}'.replace('-', 'm')


def main(argv=None) -> int:
  args = parse_args(argv)
  import numpy as np  # pylint: disable=g-import-not-at-top
  from l2m_jax import cli, image_io  # pylint: disable=g-import-not-at-top
  from l2m_jax import latent_editing as le  # pylint: disable=g-import-not-at-top
  from l2m_jax.convert import mapper as cm  # pylint: disable=g-import-not-at-top
  from l2m_jax.convert import torch_to_flax as t2f  # pylint: disable=g-import-not-at-top

  out = pathlib.Path(args.out)
  try:
    if args.batch_size < 1:
      raise ValueError(f'--batch-size {args.batch_size}: must be >= 1')
    cli.check_out_dir(out, args.overwrite)
    mesh = None
    if args.num_devices is not None:
      from l2m_jax import parallel  # pylint: disable=g-import-not-at-top
      mesh = parallel.make_mesh(args.num_devices)
    t0 = time.time()
    editor, _ = le.load_editor(args.generator, args.mapper,
                               batch_size=args.batch_size,
                               noise_mode=args.noise, seed=args.seed,
                               mesh=mesh)
    mapper = editor.mapper
    mode = args.mode
    if mode == 'auto':
      mode = 'paper' if mapper.cond_dim else 'legacy'
    print(f'loaded generator ({editor.generator.size} px) and mapper '
          f'(cond_dim {mapper.cond_dim}, combine {mapper.combine}) in '
          f'{time.time() - t0:.1f}s; mode {mode}')
    w = le.load_latents(args.latents, mapper.n_latent, mapper.style_dim)
    print(f'{args.latents}: {w.shape[0]} latent(s)')
    settings = dict(mode=mode, latents=args.latents, noise=args.noise)
    if mode == 'legacy':
      if not args.boundaries or not args.attribute:
        raise ValueError('legacy mode needs --boundaries and --attribute')
      if mapper.combine != 'blend':
        print(f'note: mapper combine is {mapper.combine!r}, not the legacy '
              'blend')
      directions, names = cm.load_boundaries(args.boundaries)
      idx = cm.find_attribute(names, args.attribute, args.boundaries)
      if directions.shape[1] != mapper.style_dim:
        raise ValueError(f'{args.boundaries}: directions have width '
                         f'{directions.shape[1]}, the mapper '
                         f'{mapper.style_dim}')
      strengths = args.strengths or [0.0, 1.0, 2.0, 3.0]
      edit_kw = dict(direction=directions[idx])
      settings.update(attribute=names[idx])
    else:
      if not mapper.cond_dim:
        raise ValueError(f'{args.mapper}: this mapper has no conditioning '
                         'input (legacy); use --mode legacy')
      if (args.delta is None) == (args.delta_file is None):
        raise ValueError('paper mode needs exactly one of --delta and '
                         '--delta-file')
      if args.delta is not None:
        names = list(le.CELEBA_ATTRIBUTES)
        if mapper.cond_dim != len(names):
          raise ValueError(f'--delta names the 40 CelebA attributes but the '
                           f'mapper has cond_dim {mapper.cond_dim}; use '
                           '--delta-file')
        delta = le.parse_delta(args.delta, names)
      else:
        try:
          delta = np.load(args.delta_file, allow_pickle=False)
        except (OSError, ValueError) as e:
          raise ValueError(f'{args.delta_file}: cannot read .npy ({e})'
                           ) from None
        delta = np.asarray(delta, np.float32)
        if delta.shape not in ((mapper.cond_dim,),
                               (w.shape[0], mapper.cond_dim)):
          raise ValueError(f'{args.delta_file}: shape {delta.shape}; expected '
                           f'[{mapper.cond_dim}] or [{w.shape[0]}, '
                           f'{mapper.cond_dim}]')
      strengths = args.strengths or [1.0]
      edit_kw = dict(delta=delta)
      settings.update(delta=np.asarray(delta).tolist())
    settings.update(strengths=list(strengths))

    t0 = time.time()
    edited = editor.edit_latents(w, strengths=strengths, **edit_kw)
    print(f'edited {edited.shape[0]} x {edited.shape[1]} latents in '
          f'{time.time() - t0:.2f}s (includes compilation)')
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / 'edited_latents.npy', edited)
    with open(out / 'edit.json', 'w') as f:
      json.dump(settings, f, indent=1)
    if not args.no_images:
      t0 = time.time()
      b, s = edited.shape[:2]
      orig = editor.render(w)
      imgs = editor.render(edited.reshape((b * s,) + edited.shape[2:]))
      imgs = imgs.reshape((b, s) + imgs.shape[1:])
      print(f'rendered {b * (s + 1)} images in {time.time() - t0:.2f}s '
            '(includes compilation)')
      for i in range(b):
        image_io.save_image(out / 'images' / f'{i:04d}_orig.png', orig[i])
        for j, st in enumerate(strengths):
          image_io.save_image(out / 'images' / f'{i:04d}_s{_fmt(st)}.png',
                              imgs[i, j])
      grid = image_io.make_grid(np.concatenate([orig[:, None], imgs], 1))
      image_io.save_image(out / 'grid.png', grid)
    print(f'wrote {out}')
  except (FileNotFoundError, FileExistsError, ValueError,
          t2f.ConversionError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  return 0


if __name__ == '__main__':
  sys.exit(main())
