"""Edits face photos with Latent-To-Latent: invert, edit, render, measure.

  python3 scripts/edit_photo.py --images photos/ \
      --encoder converted/restyle_e4e_ffhq --mapper converted/l2l_smiling \
      --boundaries boundaries_anycost-ffhq-config-f.pt --attribute smiling \
      --arcface converted/arcface --classifier converted/branched_tiny \
      --strengths 1 2 --out edits/

Without --align, inputs must be aligned, FFHQ-style square face crops
(.png/.jpg/.jpeg). Each photo is resized to 256 x 256 (PIL bilinear, as
ReStyle's transform), inverted into W+ with ReStyle-e4e (--n-iters
refinement steps, default 5), edited with the mapper (legacy: one attribute's
boundary pre-shift, one column per --strengths value; paper: an
attribute-change vector --delta / --delta-file scaled by each strength), and
rendered with the encoder's StyleGAN2 generator (stored noise).

Writes to --out:
  latents.npy          inverted W+ codes [N, n_latent, 512]
  edited_latents.npy   [N, S, n_latent, 512]
  images/<stem>_reconstruction.png, images/<stem>_s<strength>.png
  grid.png             rows = photos (the first --grid-rows); columns =
                       photo | reconstruction | one per strength (cells
                       --grid-size px)
  metrics.json         per photo: ArcFace cosine similarity of the
                       reconstruction and of every edit to the photo (and of
                       every edit to the reconstruction), and the
                       classifier's probabilities of the edited attributes
                       on the photo, the reconstruction and every edit;
                       plus the skipped inputs and the settings.

Ordinary photos (--align): a face anywhere in the frame, tilted, any size,
several faces.

  python3 scripts/edit_photo.py --align \
      --detector mobilenet0.25_Final.pth --images photos/ ... --out edits/

Every face is detected with RetinaFace (--detector: the user's own copy of
the released mobilenet0.25_Final.pth, or its conversion by
scripts/convert_checkpoint.py --format retinaface; nothing is downloaded),
at most --max-faces per photo by score; each is aligned to a 1024 px
FFHQ-style crop (NVlabs/ffhq-dataset procedure), which then goes through the
steps above as an aligned input would; every render is warped back into the
photo with a feathered mask (--feather), pixels outside the faces staying
bit-identical. Everything above is then per face, named <stem>_face<k>
(latents.npy rows, images/, grid rows, metrics.json entries), and also:
  aligned/<stem>_face<k>.png      the aligned 1024 px crops (feeding this
                                  folder to the command without --align
                                  gives the same edits)
  composites/<stem>_reconstruction.png, composites/<stem>_s<strength>.png
                                  the whole photo with every face replaced
                                  by its reconstruction / edit
  faces.json                      per photo: size and, per face, box,
                                  5 landmarks, score and the crop's quad in
                                  the photo
A photo without a face is reported by name and skipped.

--arcface and --classifier are optional; without them the corresponding
metrics are left out. Unreadable or corrupt images (and, without --align,
non-square ones) are reported (path and reason) and skipped; --strict stops
instead. Exit status: 0 when every photo was edited, 1 when some were
skipped, 2 on usage errors.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse  # pylint: disable=g-import-not-at-top,wrong-import-position
import json  # pylint: disable=g-import-not-at-top,wrong-import-position
import pathlib  # pylint: disable=g-import-not-at-top,wrong-import-position
import time  # pylint: disable=g-import-not-at-top,wrong-import-position

from l2m_jax import face_photos  # pylint: disable=g-import-not-at-top,wrong-import-position


def parse_args(argv=None):
  from l2m_jax import latent_editing as le  # pylint: disable=g-import-not-at-top
  p = argparse.ArgumentParser(
      description='Invert aligned face photos with ReStyle-e4e, edit them '
      'with a Latent-To-Latent mapper and measure identity and attributes. '
      'Inputs must be aligned FFHQ-style square face crops, or, with '
      '--align, ordinary photos whose faces are detected and aligned.')
  p.add_argument('--images', required=True,
                 help='an aligned face photo or a folder of them '
                 '(.png/.jpg/.jpeg); any photos with --align')
  p.add_argument('--encoder', required=True,
                 help='converted ReStyle-e4e folder (convert_latent.py '
                 'encoder)')
  p.add_argument('--generator', default=None,
                 help='converted generator (default: <encoder>/generator)')
  p.add_argument('--mapper', required=True, help='converted mapper folder')
  p.add_argument('--arcface', default=None,
                 help='converted ArcFace folder (identity metrics)')
  p.add_argument('--classifier', default=None,
                 help='converted BranchedTiny folder (attribute metrics)')
  p.add_argument('--out', required=True, help='output directory')
  p.add_argument('--n-iters', type=int, default=5,
                 help='ReStyle refinement iterations (default 5, as the '
                 'unofficial Latent-To-Latent code)')
  le.add_edit_arguments(
      p, delta_file_help='(paper) .npy attribute-change vector [A]',
      strengths_help='legacy: pre-shift factors k (default 2, the '
      'unofficial code); paper: multipliers of the delta vector (default 1)')
  p.add_argument('--batch-size', type=int, default=4,
                 help='photos (faces with --align) per compiled call, '
                 'rounded up to a multiple of the device count (default 4)')
  p.add_argument('--grid-size', type=int, default=256,
                 help='cell size of grid.png in pixels (default 256)')
  p.add_argument('--grid-rows', type=int, default=32,
                 help='photos (faces with --align) shown in grid.png, the '
                 'first ones (default 32)')
  p.add_argument('--strict', action='store_true',
                 help='stop (exit 2) if any input is unreadable or (without '
                 '--align) not square instead of skipping it')
  p.add_argument('--no-progress', action='store_true',
                 help='no progress bar')
  p.add_argument('--overwrite', action='store_true')
  g = p.add_argument_group('photos (--align)')
  face_photos.add_align_arguments(
      g, 'inputs are ordinary photos: detect every face, align it '
      'FFHQ-style, edit, paste the renders back')
  return p.parse_args(argv)


class UsageError(ValueError):
  """A user mistake: reported without a traceback, exit status 2."""


def _fmt(s: float) -> str:
  return f'{s:g}'.replace('-', 'm')


def _collect_inputs(path: pathlib.Path, image_io):
  """(image files, ignored non-image files) of a file or folder."""
  if path.is_dir():
    entries = sorted(p for p in path.iterdir() if p.is_file())
    images = [p for p in entries if image_io.is_image_file(p)]
    others = [p for p in entries if not image_io.is_image_file(p)]
    if not images:
      raise UsageError(f'{path}: contains no image files '
                       f'({", ".join(image_io.IMAGE_EXTENSIONS)})')
    return images, others
  if path.is_file():
    return [path], []
  raise FileNotFoundError(f'{path}: no such file or directory')


def _read_photos(paths, image_io, size):
  """Reads square photos at `size`: (arrays, kept paths, names, skipped)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  photos, kept, names, skipped = [], [], [], []
  for p in paths:
    try:
      img = image_io.open_rgb(p)
    except image_io.ImageReadError as e:
      skipped.append(dict(file=str(p), reason=e.reason))
      continue
    w, h = img.size
    if w != h:
      skipped.append(dict(file=str(p), reason=(
          f'not square ({w} x {h}); expected an aligned square face crop')))
      continue
    if w < size:
      print(f'warning: {p} is {w} x {h}, smaller than {size}: upsampled',
            file=sys.stderr)
    photos.append(image_io.pil_to_array(img, size))
    kept.append(p)
    names.append(p.stem)
  if len(set(names)) != len(names):
    names = [f'{i:04d}_{n}' for i, n in enumerate(names)]
  return (np.stack(photos) if photos else None), kept, names, skipped


def _cells(images, size, resize):
  """[N, H, W, 3] -> [N, size, size, 3] for the grid (area pooling)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  return np.asarray(resize.adaptive_avg_pool2d(np.asarray(images),
                                               (size, size)))


class _Editor:
  """Inverts, edits, renders, scores and writes batches of 256 px inputs.

  Collects what goes into latents.npy, edited_latents.npy, grid.png and
  metrics.json over the batches.
  """

  def __init__(self, pe, args, out, strengths, edit_kw, attrs):
    import numpy as np  # pylint: disable=g-import-not-at-top
    from l2m_jax import image_io  # pylint: disable=g-import-not-at-top
    from l2m_jax.models import resize  # pylint: disable=g-import-not-at-top
    self.np, self.image_io, self.resize = np, image_io, resize
    self.pe, self.args, self.out = pe, args, out
    self.strengths, self.edit_kw, self.attrs = strengths, edit_kw, attrs
    self.codes, self.edited, self.grid_rows, self.records = [], [], [], []

  def __call__(self, x, names, records):
    """Edits photos x [m, 256, 256, 3]; returns (recon, edits [m, S, ...]).

    `records` are the metrics.json entries to complete, one per photo.
    """
    np, image_io, pe = self.np, self.image_io, self.pe
    strengths, attrs, out = self.strengths, self.attrs, self.out
    m, s = len(x), len(strengths)
    codes = pe.invert(x, self.args.n_iters)
    edited = pe.edit_latents(codes, strengths=strengths, **self.edit_kw)
    recon = pe.render(codes)
    edits = pe.render(edited.reshape((m * s,) + edited.shape[2:]))
    edits = edits.reshape((m, s) + edits.shape[1:])
    ids = scores = None
    if pe.identity is not None:
      e_photo = pe.identity.embed(x)
      e_rec = pe.identity.embed(recon)
      e_edit = pe.identity.embed(edits.reshape((m * s,) + edits.shape[2:]))
      e_edit = e_edit.reshape(m, s, -1)
      ids = (np.sum(e_photo * e_rec, -1),
             np.einsum('nd,nsd->ns', e_photo, e_edit),
             np.einsum('nd,nsd->ns', e_rec, e_edit))
    if pe.attributes is not None and attrs:
      scores = (pe.attributes.attribute_scores(x, attrs),
                pe.attributes.attribute_scores(recon, attrs),
                pe.attributes.attribute_scores(
                    edits.reshape((m * s,) + edits.shape[2:]),
                    attrs).reshape(m, s, -1))
    for i in range(m):
      name = names[i]
      image_io.save_image(out / 'images' / f'{name}_reconstruction.png',
                          recon[i])
      for j, st in enumerate(strengths):
        image_io.save_image(out / 'images' / f'{name}_s{_fmt(st)}.png',
                            edits[i, j])
      rec = records[i]
      if ids is not None:
        rec['reconstruction'] = dict(identity_to_photo=float(ids[0][i]))
      edits_rec = []
      for j, st in enumerate(strengths):
        e = dict(strength=float(st))
        if ids is not None:
          e['identity_to_photo'] = float(ids[1][i, j])
          e['identity_to_reconstruction'] = float(ids[2][i, j])
        if scores is not None:
          e['attributes'] = {
              a: dict(photo=float(scores[0][i, k]),
                      reconstruction=float(scores[1][i, k]),
                      edit=float(scores[2][i, j, k]))
              for k, a in enumerate(attrs)}
        edits_rec.append(e)
      rec['edits'] = edits_rec
      self.records.append(rec)
    k = min(m, self.args.grid_rows - sum(len(r) for r in self.grid_rows))
    if k > 0:
      gs = self.args.grid_size
      row = np.concatenate([
          _cells(x[:k], gs, self.resize)[:, None],
          _cells(recon[:k], gs, self.resize)[:, None],
          _cells(edits[:k].reshape((k * s,) + edits.shape[2:]), gs,
                 self.resize).reshape((k, s, gs, gs, 3))], axis=1)
      self.grid_rows.append(image_io.to_uint8(row))
    self.codes.append(codes)
    self.edited.append(edited)
    return recon, edits

  def save(self):
    """Writes latents.npy, edited_latents.npy and grid.png (if any edit)."""
    np = self.np
    if not self.codes:
      return
    np.save(self.out / 'latents.npy', np.concatenate(self.codes))
    np.save(self.out / 'edited_latents.npy', np.concatenate(self.edited))
    self.image_io.save_image(
        self.out / 'grid.png',
        self.image_io.make_grid(np.concatenate(self.grid_rows)))


def _edit_aligned(run, editor, out, batch_size):
  """--align: every face of every photo through `editor`, in batches of
  `batch_size` faces across photos; each photo's composites are written
  once all its faces are done."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from l2m_jax import image_io  # pylint: disable=g-import-not-at-top
  from l2m_jax.models import restyle  # pylint: disable=g-import-not-at-top
  pending = []  # (photo, face index, input [256, 256, 3])
  done = {}  # photo name -> [(recon, edits [S, ...]) or None per face]
  strengths = editor.strengths

  def flush():
    recon, edits = editor(
        np.stack([x for _, _, x in pending]),
        [photo.face_names()[k] for photo, k, _ in pending],
        [dict(file=str(photo.path), name=photo.face_names()[k],
              photo=photo.name, face=k) for photo, k, _ in pending])
    for (photo, k, _), r, e in zip(pending, recon, edits):
      slots = done[photo.name]
      slots[k] = (image_io.to_uint8(r), image_io.to_uint8(e))
      if all(v is not None for v in slots):
        composites = {out / 'composites' / f'{photo.name}_reconstruction.png':
                      [v[0] for v in slots]}
        for j, st in enumerate(strengths):
          composites[out / 'composites' / f'{photo.name}_s{_fmt(st)}.png'] = [
              v[1][j] for v in slots]
        run.finish(photo, composites)
        del done[photo.name]
    pending.clear()

  for photo in run:
    done[photo.name] = [None] * len(photo.faces)
    for k, (face, name) in enumerate(zip(photo.faces, photo.face_names())):
      image_io.save_image(out / 'aligned' / f'{name}.png', face.crop)
      pending.append((photo, k, image_io.pil_to_array(
          Image.fromarray(face.crop), restyle.INPUT_SIZE)))
      if len(pending) == batch_size:
        flush()
  if pending:
    flush()
  run.close()


def main(argv=None) -> int:
  from l2m_jax import cli  # pylint: disable=g-import-not-at-top
  return cli.run_script(edit_photos, parse_args(argv))


def edit_photos(args) -> int:
  """The script's body; user errors propagate to `main`."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  from l2m_jax import cli, image_io  # pylint: disable=g-import-not-at-top
  from l2m_jax import latent_editing as le  # pylint: disable=g-import-not-at-top
  from l2m_jax.convert import mapper as cm  # pylint: disable=g-import-not-at-top
  from l2m_jax.convert import retinaface as rf_convert  # pylint: disable=g-import-not-at-top
  from l2m_jax.convert import torch_to_flax as t2f  # pylint: disable=g-import-not-at-top
  from l2m_jax.models import branched_tiny  # pylint: disable=g-import-not-at-top
  from l2m_jax.models import restyle  # pylint: disable=g-import-not-at-top

  out = pathlib.Path(args.out)
  for flag, v, lo in (('--batch-size', args.batch_size, 1),
                      ('--n-iters', args.n_iters, 1),
                      ('--grid-size', args.grid_size, 8),
                      ('--grid-rows', args.grid_rows, 1)):
    if v < lo:
      raise UsageError(f'{flag} {v}: must be >= {lo}')
  if args.strengths and not all(np.isfinite(args.strengths)):
    raise UsageError(f'--strengths must be finite, got {args.strengths}')
  try:
    face_photos.check_align_arguments(args)
  except ValueError as e:
    raise UsageError(str(e)) from None
  cli.check_out_dir(out, args.overwrite)
  paths, others = _collect_inputs(pathlib.Path(args.images), image_io)
  for p in others:
    print(f'note: ignoring {p}: not an image file '
          f'({", ".join(image_io.IMAGE_EXTENSIONS)})', file=sys.stderr)
  if args.align:
    # Photos are read one by one as the run goes; --strict checks them all
    # before anything runs.
    bad = image_io.find_unreadable(paths) if args.strict else []
    if bad:
      raise UsageError(f'{len(bad)} unreadable image(s) (--strict): '
                       + ', '.join(p for p, _ in bad))
    n_inputs = f'{len(paths)} photo(s)'
  else:
    photos, kept, names, skipped = _read_photos(paths, image_io,
                                                restyle.INPUT_SIZE)
    for s in skipped:
      print(f'warning: skipping {s["file"]}: {s["reason"]}',
            file=sys.stderr)
    if skipped and args.strict:
      raise UsageError(f'{len(skipped)} unusable image(s) (--strict): '
                       + ', '.join(s['file'] for s in skipped))
    if photos is None:
      raise UsageError(f'{args.images}: no readable square image')
    n_inputs = f'{len(names)} photo(s)'

  # The edit settings first (the mapper is small): mistakes there are
  # reported before the large networks load.
  mapper, _, _ = cm.load_mapper(args.mapper)
  choice = le.choose_edit(args, mapper, default_legacy_strengths=[2.0])
  mode, edit_kw, strengths = choice.mode, choice.edit_kw, choice.strengths
  settings = choice.settings
  attrs = [a for a in choice.attributes if a in branched_tiny.ATTRIBUTES]
  detector = None
  if args.align:
    try:
      detector, _ = rf_convert.load_retinaface(args.detector)
    except (FileNotFoundError, ValueError, t2f.ConversionError) as e:
      raise UsageError(f'--detector: {e}') from None
  mesh = None
  if args.num_devices is not None:
    from l2m_jax import parallel  # pylint: disable=g-import-not-at-top
    mesh = parallel.make_mesh(args.num_devices)
  t0 = time.time()
  pe, _ = le.load_photo_editor(
      args.encoder, args.mapper, arcface_dir=args.arcface,
      classifier_dir=args.classifier, generator_dir=args.generator,
      batch_size=args.batch_size, noise_mode=args.noise, seed=args.seed,
      mesh=mesh)
  if pe.identity is None:
    print('note: no --arcface: identity metrics are left out',
          file=sys.stderr)
  if pe.attributes is None:
    print('note: no --classifier: attribute metrics are left out',
          file=sys.stderr)
  print(f'loaded encoder, {pe.editor.generator.size} px generator and '
        f'mapper in {time.time() - t0:.1f}s; mode {mode}, strengths '
        f'{strengths}, {n_inputs}, {args.n_iters} ReStyle '
        'iteration(s)', flush=True)

  out.mkdir(parents=True, exist_ok=True)
  editor = _Editor(pe, args, out, strengths, edit_kw, attrs)
  bs = pe.editor.batch_size
  t0 = time.time()
  if args.align:
    run = face_photos.PhotoRun(
        detector, paths, style='ffhq', output_size=1024,
        max_faces=args.max_faces, min_score=args.min_score,
        detect_max_size=args.detect_max_size, feather=args.feather,
        progress=not args.no_progress)
    _edit_aligned(run, editor, out, bs)
    skipped = run.skipped
    run.write_json(out / 'faces.json', detector=str(args.detector))
  else:
    bar = tqdm(total=len(names), unit='photo', desc='photos',
               disable=args.no_progress)
    for start in range(0, len(names), bs):
      x = photos[start:start + bs]
      editor(x, names[start:start + bs],
             [dict(file=str(kept[start + i]), name=names[start + i])
              for i in range(len(x))])
      bar.update(len(x))
    bar.close()
  elapsed = time.time() - t0
  editor.save()
  align_settings = {}
  if args.align:
    align_settings = dict(align=True, detector=str(args.detector),
                          max_faces=args.max_faces,
                          min_score=args.min_score,
                          detect_max_size=args.detect_max_size,
                          feather=args.feather)
  metrics = dict(
      settings=dict(mode=mode, strengths=[float(v) for v in strengths],
                    n_iters=args.n_iters, noise=args.noise,
                    encoder=args.encoder, mapper=args.mapper,
                    arcface=args.arcface, classifier=args.classifier,
                    edited_attributes=attrs, **align_settings, **settings),
      images=editor.records, skipped=skipped,
      ignored=[str(p) for p in others],
      seconds=elapsed)
  with open(out / 'metrics.json', 'w') as f:
    json.dump(metrics, f, indent=1)
  what = (f'{len(editor.records)} face(s) in {run.edited_photos} photo(s)'
          if args.align else f'{len(editor.records)} photo(s)')
  print(f'edited {what} x {len(strengths)} strength(s) in {elapsed:.1f}s '
        f'(includes compilation); wrote {out}')
  if skipped:
    print(f'{len(skipped)} input(s) skipped', file=sys.stderr)
    return 1
  return 0


if __name__ == '__main__':
  sys.exit(main())
