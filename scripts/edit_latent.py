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
  from l2m_jax import latent_editing as le  # pylint: disable=g-import-not-at-top
  p = argparse.ArgumentParser(
      description='Edit W+ latents with a Latent-To-Latent mapper.')
  p.add_argument('--latents', required=True, help='.npy or .pt W+ latents')
  p.add_argument('--generator', required=True,
                 help='converted StyleGAN2 directory (convert_latent.py '
                 'stylegan2)')
  p.add_argument('--mapper', required=True,
                 help='converted mapper directory (convert_latent.py mapper)')
  p.add_argument('--out', required=True, help='output directory')
  le.add_edit_arguments(
      p, delta_file_help='(paper) .npy attribute-change vector [A] or '
      '[B, A]', strengths_help='legacy: pre-shift factors k (default 0 1 2 '
      '3; the unofficial code uses 2); paper: multipliers of the delta '
      'vector (default 1)')
  p.add_argument('--batch-size', type=int, default=4,
                 help='latents per compiled call (rounded up to a multiple '
                 'of the device count)')
  p.add_argument('--no-images', action='store_true',
                 help='write the edited latents only')
  p.add_argument('--overwrite', action='store_true')
  return p.parse_args(argv)


def _fmt(s: float) -> str:
  return f'{s:g}'.replace('-', 'm')


def main(argv=None) -> int:
  from l2m_jax import cli  # pylint: disable=g-import-not-at-top
  return cli.run_script(run, parse_args(argv))


def run(args) -> int:
  """The script's body; user errors propagate to `main`."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from l2m_jax import cli, image_io  # pylint: disable=g-import-not-at-top
  from l2m_jax import latent_editing as le  # pylint: disable=g-import-not-at-top

  out = pathlib.Path(args.out)
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
  choice = le.choose_edit(args, mapper, rows=w.shape[0],
                          default_legacy_strengths=[0.0, 1.0, 2.0, 3.0])
  if choice.mode == 'legacy' and mapper.combine != 'blend':
    print(f'note: mapper combine is {mapper.combine!r}, not the legacy '
          'blend')
  strengths, edit_kw = choice.strengths, choice.edit_kw
  settings = dict(mode=mode, latents=args.latents, noise=args.noise,
                  **choice.settings, strengths=strengths)

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
  return 0


if __name__ == '__main__':
  sys.exit(main())
