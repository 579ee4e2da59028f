"""scripts/edit_photo.py --align: photos -> FFHQ crops -> edits pasted back.

The Latent-To-Latent pipeline is the small random-weight one of
`tests/photo_checkpoints.py` (converted once per session, shared with
tests/test_edit_photo.py, batch 1 on one device so the compiled functions
are shared too). The detector is the released RetinaFace on real-face
composites when the fixtures are present, and everywhere an upstream-format
random RetinaFace that finds no face.
"""

import contextlib
import io
import json
import pathlib

import numpy as np
import pytest
from PIL import Image

from l2m_jax import alignment
from l2m_jax import face_detection
from l2m_jax import face_photos
from l2m_jax import image_io
from l2m_jax.convert import retinaface as convert_rf
from scripts import edit_photo
from tests import face_composites as fc
from tests import photo_checkpoints as pc
from tests.conftest import FIXTURES

WEIGHTS = FIXTURES / 'face_detection' / 'mobilenet0.25_Final.pth'
STRENGTHS = ('0', '2')


@pytest.fixture(scope='module')
def nets(tmp_path_factory):
  return pc.photo_nets(tmp_path_factory)


def _argv(nets, images, out, *extra, metrics=True):
  d = nets.dirs
  argv = ['--images', str(images), '--encoder', str(d['encoder']),
          '--mapper', str(d['mapper']), '--boundaries', str(d['boundaries']),
          '--attribute', 'Smiling', '--n-iters', '1', '--strengths',
          *STRENGTHS, '--batch-size', '1', '--num-devices', '1',
          '--grid-size', '32', '--out', str(out), *extra]
  if metrics:
    argv += ['--arcface', str(d['arcface']), '--classifier',
             str(d['classifier'])]
  return argv


def _read(path):
  with Image.open(path) as im:
    return np.asarray(im)


def test_usage_errors(nets, tmp_path, capsys):
  photo = tmp_path / 'p.png'
  Image.fromarray(fc.background(64, 64, 2)).save(photo)
  broken = tmp_path / 'folder'
  broken.mkdir()
  Image.fromarray(fc.background(64, 64, 3)).save(broken / 'ok.png')
  (broken / 'bad.png').write_bytes(b'not a png')
  det = fc.save_blind_detector(tmp_path / 'blind.pth')
  cases = [
      (photo, ['--align'], '--align needs --detector'),
      (photo, ['--detector', str(det)], '--detector / --max-faces need '
       '--align'),
      (photo, ['--align', '--detector', str(det), '--max-faces', '0'],
       '--max-faces must be >= 1'),
      (photo, ['--align', '--detector', str(det), '--feather', '0'],
       '--feather must be in (0, 0.5]'),
      (photo, ['--align', '--detector', str(det), '--min-score', '1.5'],
       '--min-score must be in [0, 1]'),
      (photo, ['--align', '--detector', str(det), '--detect-max-size', '8'],
       '--detect-max-size must be >= 32'),
      (photo, ['--align', '--detector', str(tmp_path / 'none.pth')],
       '--detector: '),
      (photo, ['--align', '--detector', str(photo)],
       'not a PyTorch checkpoint'),
      (broken, ['--align', '--detector', str(det), '--strict'],
       '1 unreadable image(s) (--strict)'),
  ]
  for k, (images, extra, message) in enumerate(cases):
    out = tmp_path / f'o{k}'
    assert edit_photo.main(_argv(nets, images, out, *extra)) == 2, extra
    err = capsys.readouterr().err
    assert message in err and 'Traceback' not in err, (extra, err)
    assert not out.exists() or not any(out.iterdir()), extra


def test_no_face_photos_are_reported_not_fatal(nets, tmp_path, capsys):
  photos = tmp_path / 'photos'
  photos.mkdir()
  # One size: one detector compilation.
  Image.fromarray(fc.background(40, 56, 0)).save(photos / 'beach.png')
  Image.fromarray(fc.background(40, 56, 1)).save(photos / 'wall.jpg')
  (photos / 'broken.png').write_bytes(b'not a png')
  det = fc.save_blind_detector(tmp_path / 'blind.pth')
  out = tmp_path / 'out'
  rc = edit_photo.main(_argv(nets, photos, out, '--align', '--detector',
                             str(det), '--no-progress', metrics=False))
  err = capsys.readouterr().err
  assert rc == 1, err
  assert 'beach.png: no face found' in err and 'wall.jpg: no face found' in err
  assert 'skipping' in err and 'broken.png' in err
  report = json.loads((out / 'faces.json').read_text())
  by_name = {pathlib.Path(r['file']).name: r for r in report['photos']}
  assert by_name['beach.png']['faces'] == []
  assert by_name['beach.png']['error'] == 'no face found'
  assert by_name['beach.png']['size'] == [56, 40]
  assert 'UnidentifiedImageError' in by_name['broken.png']['error']
  assert report['style'] == 'ffhq'
  metrics = json.loads((out / 'metrics.json').read_text())
  assert metrics['images'] == []
  assert sorted(pathlib.Path(s['file']).name for s in metrics['skipped']) == [
      'beach.png', 'broken.png', 'wall.jpg']
  for name in ('latents.npy', 'grid.png', 'composites', 'images'):
    assert not (out / name).exists(), name


def test_batches_span_photos(tmp_path):
  """Faces are batched across photos; each photo's composites get its own
  faces' renders, in face order, once all of them are done."""
  rng = np.random.default_rng(0)

  def photo(name, n):
    faces = [face_photos.AlignedFace(
        face=None, crop=rng.integers(0, 256, (24, 24, 3), np.uint8),
        alignment=None) for _ in range(n)]
    return face_photos.FacePhoto(path=tmp_path / f'{name}.png', name=name,
                                 image=None, faces=faces)

  photos = [photo('a', 1), photo('b', 3), photo('c', 1)]

  class Run:

    def __init__(self):
      self.finished = []

    def __iter__(self):
      yield from photos

    def finish(self, p, composites):
      self.finished.append((p.name, composites))

    def close(self):
      pass

  class Editor:

    def __init__(self):
      self.strengths = [0.0, 2.0]
      self.batches = []

    def __call__(self, x, names, records):
      self.batches.append((list(names), [(r['photo'], r['face'])
                                         for r in records]))
      return x[:, :8, :8] * 0.5, np.stack([x[:, :8, :8], -x[:, :8, :8]], 1)

  run, editor = Run(), Editor()
  edit_photo._edit_aligned(run, editor, tmp_path, 2)  # pylint: disable=protected-access
  assert editor.batches == [
      (['a_face0', 'b_face0'], [('a', 0), ('b', 0)]),
      (['b_face1', 'b_face2'], [('b', 1), ('b', 2)]),
      (['c_face0'], [('c', 0)])]
  assert [name for name, _ in run.finished] == ['a', 'b', 'c']
  for p, (_, composites) in zip(photos, run.finished):
    assert sorted(composites) == [tmp_path / 'composites' / f'{p.name}_{s}.png'
                                  for s in ('reconstruction', 's0', 's2')]
    for k, f in enumerate(p.faces):
      saved = _read(tmp_path / 'aligned' / f'{p.name}_face{k}.png')
      np.testing.assert_array_equal(saved, f.crop)
      x = image_io.pil_to_array(Image.fromarray(f.crop), 256)[:8, :8]
      for suffix, want in (('reconstruction', x * 0.5), ('s0', x),
                           ('s2', -x)):
        got = composites[tmp_path / 'composites' / f'{p.name}_{suffix}.png']
        np.testing.assert_array_equal(got[k], image_io.to_uint8(want))


def _group_photo():
  """Three real faces, tilted, at 0.18-0.3 of their FFHQ size, 1024 x 448."""
  faces = {n: np.asarray(image_io.open_rgb(FIXTURES / 'faces' / f'{n}.png'))
           for n in ('ffhq_00809', 'ffhq_11', 'ffhq_04948')}
  comp = fc.background(448, 1024, 5)
  comp = fc.paste(comp, faces['ffhq_00809'],
                  fc.similarity(0.25, 12, (511.5, 511.5), (180, 224)))
  comp = fc.paste(comp, faces['ffhq_11'],
                  fc.similarity(0.25 * 1024 / 729, -10, (364, 364),
                                (512, 230)))
  return fc.paste(comp, faces['ffhq_04948'],
                  fc.similarity(0.18, 25, (511.5, 511.5), (860, 230)))


@pytest.fixture(scope='module')
def real_run(nets, tmp_path_factory):
  """One --align run, with the metric networks, over a folder holding a
  three-face group photo, a photo without a face and a corrupt file."""
  if not WEIGHTS.is_file() or not (FIXTURES / 'faces').is_dir():
    pytest.skip('RetinaFace weights or real-face fixtures not present')
  tmp = tmp_path_factory.mktemp('edit_photo_align')
  comp = _group_photo()
  photos = tmp / 'photos'
  photos.mkdir()
  Image.fromarray(comp).save(photos / 'group.png')
  Image.fromarray(fc.background(300, 200, 6)).save(photos / 'no_face.png')
  (photos / 'corrupt.jpg').write_bytes(b'\xff\xd8 not a jpeg')
  out = tmp / 'out'
  err = io.StringIO()
  with contextlib.redirect_stderr(err):
    rc = edit_photo.main(_argv(nets, photos, out, '--align', '--detector',
                               str(WEIGHTS), '--max-faces', '2',
                               '--detect-max-size', '512'))
  return dict(comp=comp, photos=photos, out=out, rc=rc, err=err.getvalue(),
              tmp=tmp)


def _expected_faces(comp):
  """The detector's 2 best faces (of 3) and their FFHQ crops, computed
  directly with the library."""
  detector, _ = convert_rf.convert_checkpoint(WEIGHTS)
  found = face_detection.detect_faces(detector, [comp], max_size=512)[0]
  assert len(found) == 3
  faces = []
  for f in face_detection.select_faces(found, 2):
    crop, a = alignment.align_ffhq(comp, f.landmarks, output_size=1024)
    faces.append(face_photos.AlignedFace(face=f, crop=crop, alignment=a))
  return faces


def test_align_on_real_faces(nets, real_run):
  comp, out, photos = real_run['comp'], real_run['out'], real_run['photos']
  err = real_run['err']
  assert real_run['rc'] == 1, err
  assert 'no_face.png: no face found' in err
  assert 'skipping' in err and 'corrupt.jpg' in err
  assert 'photos: 100%' in err  # the progress bar

  # faces.json holds the detector's findings: the 2 best of 3 faces.
  want_faces = _expected_faces(comp)
  report = json.loads((out / 'faces.json').read_text())
  assert report['style'] == 'ffhq' and report['max_faces'] == 2
  group = next(r for r in report['photos'] if r['file'].endswith('group.png'))
  no_face = next(r for r in report['photos']
                 if r['file'].endswith('no_face.png'))
  corrupt = next(r for r in report['photos']
                 if r['file'].endswith('corrupt.jpg'))
  assert group['size'] == [1024, 448] and 'error' not in group
  assert no_face['faces'] == [] and no_face['error'] == 'no face found'
  assert 'error' in corrupt
  assert len(group['faces']) == 2
  for k, (rec, want) in enumerate(zip(group['faces'], want_faces)):
    f, a = want.face, want.alignment
    np.testing.assert_allclose(rec['box'], f.box, atol=1e-3)
    np.testing.assert_allclose(rec['landmarks'], f.landmarks, atol=1e-3)
    assert rec['score'] == pytest.approx(f.score, abs=1e-6)
    # The FFHQ crop of these landmarks, and its quad in the photo.
    np.testing.assert_allclose(rec['alignment']['quad'], a.quad, atol=1e-4)
    assert rec['alignment']['size'] == 1024
    np.testing.assert_array_equal(
        _read(out / 'aligned' / f'group_face{k}.png'), want.crop)

  # Composites: each is the photo with the saved renders pasted back, and
  # bit-identical to the photo outside the faces' quads.
  untouched = np.ones(comp.shape[:2], bool)
  for f in want_faces:
    untouched &= ~alignment.quad_polygon_mask(f.alignment, margin=1.0)
  assert 0.5 < untouched.mean() < 0.9
  for suffix in ('reconstruction', 's0', 's2'):
    result = _read(out / 'composites' / f'group_{suffix}.png')
    assert result.shape == comp.shape
    np.testing.assert_array_equal(result[untouched], comp[untouched])
    assert (result[~untouched] != comp[~untouched]).mean() > 0.5
    renders = [_read(out / 'images' / f'group_face{k}_{suffix}.png')
               for k in range(2)]
    np.testing.assert_array_equal(
        result, face_photos.paste_faces(comp, renders, want_faces))
  assert not list((out / 'composites').glob('no_face*'))

  # Each face is edited as the library edits its aligned crop (resized to
  # 256 px as an aligned input is): inversion, mapper edit and renders.
  pe, _ = nets.photo_editor()  # shared with the other photo tests
  x = np.stack([image_io.pil_to_array(Image.fromarray(f.crop), 256)
                for f in want_faces])
  codes = np.load(out / 'latents.npy')
  edited = np.load(out / 'edited_latents.npy')
  np.testing.assert_allclose(codes, pe.invert(x, 1), rtol=0, atol=1e-5)
  np.testing.assert_allclose(
      edited, pe.edit_latents(codes, direction=nets.direction,
                              strengths=[0.0, 2.0]), rtol=0, atol=1e-5)
  recon = pe.render(codes)
  edits = np.stack([pe.render(edited[:, j]) for j in range(len(STRENGTHS))],
                   1)  # [2 faces, S, ...]
  for k in range(2):
    for name, want in (('reconstruction', recon[k]), ('s0', edits[k, 0]),
                       ('s2', edits[k, 1])):
      np.testing.assert_array_equal(
          _read(out / 'images' / f'group_face{k}_{name}.png'),
          image_io.to_uint8(want), err_msg=f'face {k} {name}')

  # Per face and edit: ArcFace similarities and classifier scores of the
  # aligned crop, its reconstruction and its edits.
  metrics = json.loads((out / 'metrics.json').read_text())
  assert metrics['settings']['align'] is True
  assert metrics['settings']['edited_attributes'] == ['smiling']
  assert sorted(pathlib.Path(s['file']).name for s in metrics['skipped']) == [
      'corrupt.jpg', 'no_face.png']
  assert [(r['name'], r['photo'], r['face']) for r in metrics['images']] == [
      ('group_face0', 'group', 0), ('group_face1', 'group', 1)]
  flat = edits.reshape((-1,) + edits.shape[2:])
  # Unit embeddings: cosine similarity = dot product.
  e_x, e_rec = pe.identity.embed(x), pe.identity.embed(recon)
  e_edit = pe.identity.embed(flat).reshape(2, len(STRENGTHS), -1)
  p_x, p_rec = (pe.attribute_scores(v, ['smiling'])[:, 0] for v in (x, recon))
  p_edit = pe.attribute_scores(flat, ['smiling']).reshape(2, -1)
  for k, rec in enumerate(metrics['images']):
    assert rec['file'] == str(photos / 'group.png')
    assert rec['reconstruction']['identity_to_photo'] == pytest.approx(
        e_x[k] @ e_rec[k], abs=1e-5)
    assert [e['strength'] for e in rec['edits']] == [0.0, 2.0]
    for j, e in enumerate(rec['edits']):
      assert e['identity_to_photo'] == pytest.approx(e_x[k] @ e_edit[k, j],
                                                     abs=1e-5)
      assert e['identity_to_reconstruction'] == pytest.approx(
          e_rec[k] @ e_edit[k, j], abs=1e-5)
      smile = e['attributes']['smiling']
      np.testing.assert_allclose(
          [smile['photo'], smile['reconstruction'], smile['edit']],
          [p_x[k], p_rec[k], p_edit[k, j]], atol=1e-5)


@pytest.mark.slow
def test_aligned_crops_edit_as_plain_inputs(nets, real_run, capsys):
  """The command without --align on the saved aligned crops gives the same
  edits, latents and grid (a second full CLI run: slow)."""
  out = real_run['out']
  plain = real_run['tmp'] / 'plain'
  assert edit_photo.main(_argv(nets, out / 'aligned', plain, '--no-progress',
                               metrics=False)) == 0
  capsys.readouterr()
  for k in range(2):
    for suffix in ('reconstruction', 's0', 's2'):
      name = f'group_face{k}_{suffix}.png'
      np.testing.assert_array_equal(_read(out / 'images' / name),
                                    _read(plain / 'images' / name))
  for name in ('latents.npy', 'edited_latents.npy'):
    np.testing.assert_allclose(np.load(out / name), np.load(plain / name),
                               rtol=0, atol=1e-6)
  np.testing.assert_array_equal(_read(out / 'grid.png'),
                                _read(plain / 'grid.png'))
