"""scripts/edit_photo.py end to end on the small photo pipeline."""

import contextlib
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from l2m_jax import image_io
from l2m_jax import latent_editing as le
from scripts import convert_latent
from scripts import edit_photo
from tests import photo_checkpoints as pc
from third_party import irse_torch
from third_party import l2l_mapper_torch as tm

FACE_SEED = 21  # also inverted by tests/test_restyle.py (memoised codes)


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  """One legacy-mode run over a folder with good and bad inputs."""
  p = pc.photo_nets(tmp_path_factory)
  tmp = tmp_path_factory.mktemp('edit_photo')
  photos = tmp / 'photos'
  photos.mkdir()
  face = pc.generated_faces(1, 256, seed=FACE_SEED)[0]
  image_io.save_image(photos / 'a_face.png', face)
  Image.fromarray(image_io.to_uint8(pc.generated_faces(
      1, 320, seed=22)[0])).convert('RGBA').save(photos / 'b_rgba.png')
  (photos / 'c_corrupt.png').write_bytes(b'\x89PNG\r\n\x1a\n not a png')
  Image.new('RGB', (300, 200)).save(photos / 'd_wide.jpg')
  (photos / 'notes.txt').write_text('not an image')
  out = tmp / 'out'
  argv = ['--images', str(photos), '--encoder', str(p.dirs['encoder']),
          '--mapper', str(p.dirs['mapper']), '--boundaries',
          str(p.dirs['boundaries']), '--attribute', 'Smiling',
          '--arcface', str(p.dirs['arcface']), '--classifier',
          str(p.dirs['classifier']), '--n-iters', '1', '--strengths', '0',
          '2', '--batch-size', '1', '--num-devices', '1', '--out', str(out)]
  err = io.StringIO()
  with contextlib.redirect_stderr(err):
    rc = edit_photo.main(argv)
  return dict(p=p, tmp=tmp, photos=photos, out=out, argv=argv, face=face,
              rc=rc, err=err.getvalue())


def test_legacy_run_outputs_match_references(run):
  p, out = run['p'], run['out']
  assert run['rc'] == 1, run['err']  # two unusable inputs were skipped
  for frag in ('c_corrupt.png: UnidentifiedImageError',
               'd_wide.jpg: not square (300 x 200)',
               'ignoring', 'notes.txt', 'photos: 100%'):
    assert frag in run['err'], frag
  codes = np.load(out / 'latents.npy')
  assert codes.shape == (2, 10, 512)
  # Photo a: the torch ReStyle reference (1 iteration).
  want = p.torch_codes(FACE_SEED, 1)[0][0]
  assert np.abs(codes[0] - want).max() <= 1e-4
  # Edits: the torch mapper's legacy edit of our codes, k = 0 and 2.
  edited = np.load(out / 'edited_latents.npy')
  assert edited.shape == (2, 2, 10, 512)
  d = torch.from_numpy(p.direction)[None]
  with torch.no_grad():
    for j, k in enumerate((0.0, 2.0)):
      ref = tm.legacy_edit(p.mapper, torch.from_numpy(codes), d,
                           factor=k).numpy()
      assert np.abs(edited[:, j] - ref).max() <= 1e-5
    g = p.e4e.decoder
    render = lambda w: g([torch.from_numpy(w).float()], input_is_latent=True,
                         randomize_noise=False)[0]
    rec_t = render(codes)
    edit_t = render(edited[:, 1])
  rec_png = np.asarray(Image.open(out / 'images' / 'a_face_reconstruction.png'))
  assert rec_png.shape == (64, 64, 3)
  assert np.abs(rec_png.astype(int) - image_io.to_uint8(
      pc.nhwc(rec_t)[0]).astype(int)).max() <= 1
  assert (out / 'images' / 'b_rgba_s2.png').is_file()
  assert (out / 'images' / 'b_rgba_s0.png').is_file()
  grid = np.asarray(Image.open(out / 'grid.png'))
  assert grid.shape == (2 * 258 + 2, 4 * 258 + 2, 3)

  metrics = json.loads((out / 'metrics.json').read_text())
  assert [r['name'] for r in metrics['images']] == ['a_face', 'b_rgba']
  assert metrics['settings']['edited_attributes'] == ['smiling']
  assert {s['file'].rsplit('/', 1)[1] for s in metrics['skipped']} == {
      'c_corrupt.png', 'd_wide.jpg'}
  assert metrics['ignored'][0].endswith('notes.txt')
  # Identity and attribute metrics of photo a against the torch networks.
  photo = run['face'][None]
  with torch.no_grad():
    emb = lambda x: p.arcface(irse_torch.identity_crop(x)).numpy()
    e_photo = emb(pc.nchw(photo))
    e_rec, e_edit = emb(rec_t[:1]), emb(edit_t[:1])
    prob = lambda x: torch.sigmoid(p.classifier(
        torch.nn.functional.interpolate(x * 0.5 + 0.5, (224, 224)))[:, 14]
                                   ).item()
    smile = (prob(pc.nchw(photo)), prob(rec_t[:1]), prob(edit_t[:1]))
  a = metrics['images'][0]
  assert abs(a['reconstruction']['identity_to_photo']
             - (e_photo @ e_rec.T).item()) <= 1e-4
  e2 = a['edits'][1]
  assert e2['strength'] == 2.0
  assert abs(e2['identity_to_photo'] - (e_photo @ e_edit.T).item()) <= 1e-4
  assert abs(e2['identity_to_reconstruction'] - (e_rec @ e_edit.T).item()
             ) <= 1e-4
  got = e2['attributes']['smiling']
  np.testing.assert_allclose([got['photo'], got['reconstruction'],
                              got['edit']], smile, atol=1e-4)


def test_api_matches_cli(run):
  """PhotoEditor.invert on the RGBA photo = the CLI's latents (same read)."""
  pe, metas = run['p'].photo_editor()
  assert set(metas) == {'encoder', 'mapper', 'arcface', 'classifier'}
  x = image_io.load_image(run['photos'] / 'b_rgba.png', 256)[None]
  codes = np.load(run['out'] / 'latents.npy')
  np.testing.assert_allclose(pe.invert(x, 1), codes[1:], atol=1e-5)
  np.testing.assert_allclose(pe.identity_similarity(x, x), 1.0, atol=1e-5)
  scores = pe.attribute_scores(x, ['smiling'])
  metrics = json.loads((run['out'] / 'metrics.json').read_text())
  assert abs(scores[0, 0] - metrics['images'][1]['edits'][0]['attributes'][
      'smiling']['photo']) <= 1e-6
  bare = le.PhotoEditor(pe.editor, pe.inverter)
  with pytest.raises(ValueError, match='no attribute classifier'):
    bare.attribute_scores(x)


def test_paper_mode_single_file(run, tmp_path, capsys):
  p = run['p']
  torch.manual_seed(5)
  mp = tm.LevelsMapper(cond_dim=40).eval()
  with torch.no_grad():
    for grp in (mp.course_mapping, mp.medium_mapping, mp.fine_mapping):
      grp.cond.weight.normal_(0, 100)
  torch.save(mp.state_dict(), tmp_path / 'paper.pt')
  assert convert_latent.main(['mapper', str(tmp_path / 'paper.pt'), '--out',
                              str(tmp_path / 'MP'), '--n-latent', '10',
                              '--preset', 'paper']) == 0
  out = tmp_path / 'out'
  rc = edit_photo.main([
      '--images', str(run['photos'] / 'a_face.png'), '--encoder',
      str(p.dirs['encoder']), '--mapper', str(tmp_path / 'MP'),
      '--classifier', str(p.dirs['classifier']), '--delta',
      'smiling=0.5,young=-1', '--n-iters', '1', '--batch-size', '1',
      '--num-devices', '1', '--no-progress', '--out', str(out)])
  assert rc == 0, capsys.readouterr().err
  metrics = json.loads((out / 'metrics.json').read_text())
  assert metrics['settings']['mode'] == 'paper'
  assert metrics['settings']['edited_attributes'] == ['smiling', 'young']
  e = metrics['images'][0]['edits'][0]
  assert set(e['attributes']) == {'smiling', 'young'}
  assert 'identity_to_photo' not in e  # no --arcface
  codes = np.load(out / 'latents.npy')
  edited = np.load(out / 'edited_latents.npy')
  delta = le.parse_delta('smiling=0.5,young=-1', le.CELEBA_ATTRIBUTES)
  with torch.no_grad():
    want = (torch.from_numpy(codes) + mp(torch.from_numpy(codes),
                                         torch.from_numpy(delta)[None]))
  assert np.abs(edited[:, 0] - want.numpy()).max() <= 1e-5


@pytest.mark.parametrize('change,msg', [
    ({'--images': 'missing_dir'}, 'no such file or directory'),
    ({'--images': 'empty'}, 'contains no image files'),
    ({'--attribute': None}, 'needs --boundaries and --attribute'),
    ({'--attribute': 'grin'}, "unknown attribute 'grin'"),
    ({'--encoder': 'arcface'}, "format is 'arcface', expected "
                               "'restyle_e4e_encoder'"),
    ({'--n-iters': '0'}, '--n-iters 0: must be >= 1'),
    ({'--strict': True}, '2 unusable image(s) (--strict)'),
])
def test_usage_errors(run, tmp_path, capsys, change, msg):
  argv = list(run['argv'])
  argv[argv.index('--out') + 1] = str(tmp_path / 'o')
  (tmp_path / 'empty').mkdir()
  for flag, value in change.items():
    if value is True:
      argv.append(flag)
      continue
    i = argv.index(flag)
    if value is None:
      del argv[i:i + 2]
    elif flag == '--encoder' and value == 'arcface':
      argv[i + 1] = str(run['p'].dirs['arcface'])
    elif flag == '--images':
      argv[i + 1] = str(tmp_path / value)
    else:
      argv[i + 1] = value
  assert edit_photo.main(argv) == 2
  assert msg in capsys.readouterr().err


def test_existing_output_needs_overwrite(run, capsys, tmp_path):
  assert (run['out'] / 'metrics.json').is_file()
  before = sorted(p.relative_to(run['out']) for p in run['out'].rglob('*'))
  assert edit_photo.main(run['argv']) == 2
  err = capsys.readouterr().err
  assert f"--out {run['out']}: already exists and is not empty; pass " \
      '--overwrite' in err, err
  assert sorted(p.relative_to(run['out'])
                for p in run['out'].rglob('*')) == before
  # A file given as --out: refused before anything is read.
  argv = list(run['argv'])
  argv[argv.index('--out') + 1] = str(tmp_path / 'a_file')
  (tmp_path / 'a_file').write_text('keep')
  assert edit_photo.main(argv) == 2
  assert 'is a file, expected a directory' in capsys.readouterr().err
  assert (tmp_path / 'a_file').read_text() == 'keep'
