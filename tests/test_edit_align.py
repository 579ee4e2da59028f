"""scripts/edit.py --align: photos -> faces -> edits pasted back.

The detector is the in-house torch RetinaFace (third_party) saved in the
upstream file format: with a background-biased class head (finds no face)
everywhere, and with the released weights on real-face composites when the
fixtures are present. The editor is a tiny random L2M-GAN checkpoint.
"""

import importlib.util
import json
import pathlib

import numpy as np
import pytest
from PIL import Image

from l2m_jax import alignment
from l2m_jax import face_detection
from l2m_jax.convert import retinaface as convert_rf
from tests import face_composites as fc
from tests import l2m_checkpoints as lc
from tests.conftest import FIXTURES

ROOT = pathlib.Path(__file__).resolve().parents[1]
WEIGHTS = FIXTURES / 'face_detection' / 'mobilenet0.25_Final.pth'
SIZE = 32


def _load_script(name):
  spec = importlib.util.spec_from_file_location(
      name, ROOT / 'scripts' / f'{name}.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope='module')
def model_dir(tmp_path_factory):
  tmp = tmp_path_factory.mktemp('l2m')
  nets = lc.build_torch_nets(img_size=SIZE, max_conv_dim=8, style_dim=8,
                             w_hpf=0, seed=71)
  ckpt = lc.save_checkpoint(nets, tmp / 'src')
  assert _load_script('convert_checkpoint').main(
      [str(ckpt), '--out', str(tmp / 'model')]) == 0
  return tmp / 'model'


@pytest.fixture(scope='module')
def blind_detector(tmp_path_factory):
  """Upstream-format .pth whose class head never says 'face'."""
  return fc.save_blind_detector(tmp_path_factory.mktemp('det') / 'blind.pth')


def test_no_face_photos_are_reported_not_fatal(tmp_path, capsys, model_dir,
                                               blind_detector):
  photos = tmp_path / 'photos'
  photos.mkdir()
  Image.fromarray(fc.background(40, 40, 0)).save(photos / 'beach.png')
  Image.fromarray(fc.background(40, 40, 1)).save(photos / 'wall.jpg')
  (photos / 'broken.png').write_bytes(b'not a png')
  # The converter CLI reads the wrapped, prefixed file too.
  conv = _load_script('convert_checkpoint')
  assert conv.main(['--format', 'retinaface', str(blind_detector), '--out',
                    str(tmp_path / 'det')]) == 0
  edit = _load_script('edit')
  out = tmp_path / 'out'
  rc = edit.main(['--checkpoint', str(model_dir), '--input', str(photos),
                  '--target', 'smile', '--out', str(out), '--align',
                  '--detector', str(tmp_path / 'det'), '--no-progress'])
  err = capsys.readouterr().err
  assert rc == 1
  assert 'beach.png: no face found' in err and 'wall.jpg: no face found' in err
  assert 'skipping' in err and 'broken.png' in err
  report = json.loads((out / 'faces.json').read_text())
  by_name = {pathlib.Path(r['file']).name: r for r in report['photos']}
  assert by_name['beach.png']['faces'] == []
  assert by_name['beach.png']['error'] == 'no face found'
  assert by_name['beach.png']['size'] == [40, 40]
  assert 'error' in by_name['broken.png']
  assert not (out / 'grid.png').exists()


def test_align_usage_errors(tmp_path, capsys, model_dir, blind_detector):
  edit = _load_script('edit')
  img = tmp_path / 'x.png'
  Image.fromarray(fc.background(64, 64, 2)).save(img)
  base = ['--checkpoint', str(model_dir), '--input', str(img), '--target',
          'smile', '--out', str(tmp_path / 'o')]
  cases = [
      (['--align'], '--align needs --detector'),
      (['--align', '--detector', str(tmp_path / 'none.pth')],
       'no such checkpoint file'),
      (['--align', '--detector', str(img)], 'is a PNG image, not a PyTorch'),
      (['--align', '--detector', str(blind_detector), '--max-faces', '0'],
       '--max-faces must be >= 1'),
      (['--align', '--detector', str(blind_detector), '--feather', '0.8'],
       '--feather must be in'),
      (['--detector', str(blind_detector)], 'need --align'),
  ]
  for extra, message in cases:
    assert edit.main(base + extra) == 2, extra
    err = capsys.readouterr().err
    assert message in err and 'Traceback' not in err, (extra, err)


def test_edit_align_on_real_faces(tmp_path, capsys, model_dir):
  if not WEIGHTS.is_file() or not (FIXTURES / 'faces').is_dir():
    pytest.skip('RetinaFace weights or real-face fixtures not present')
  from l2m_jax import image_io  # pylint: disable=g-import-not-at-top
  faces_dir = FIXTURES / 'faces'
  p809 = np.asarray(image_io.open_rgb(faces_dir / 'ffhq_00809.png'))
  p11 = np.asarray(image_io.open_rgb(faces_dir / 'ffhq_11.png'))
  comp = fc.paste(fc.background(1024, 1024, 11), p809,
                  fc.similarity(0.4, 20, (511.5, 511.5), (300, 360)))
  comp = fc.paste(comp, p11, fc.similarity(0.3 * 1024 / 729, -25, (364, 364),
                                           (720, 620)))
  photos = tmp_path / 'photos'
  photos.mkdir()
  Image.fromarray(comp).save(photos / 'group.png')
  out = tmp_path / 'out'
  edit = _load_script('edit')
  rc = edit.main(['--checkpoint', str(model_dir), '--input', str(photos),
                  '--target', 'smile', '--degrees', '0', '1', '--out',
                  str(out), '--align', '--detector', str(WEIGHTS),
                  '--max-faces', '2', '--batch-size', '2'])
  captured = capsys.readouterr()
  assert rc == 0, captured.err
  assert 'photos' in captured.err  # the progress bar
  report = json.loads((out / 'faces.json').read_text())
  faces = report['photos'][0]['faces']
  assert len(faces) == 2 and report['style'] == 'celebahq'

  # The JSON holds the detector's own findings on this photo.
  variables, _ = convert_rf.convert_checkpoint(WEIGHTS)
  found = face_detection.detect_faces(variables, [comp])[0]
  assert len(found) == 2
  for rec, f in zip(faces, found):
    np.testing.assert_allclose(rec['box'], f.box, atol=1e-3)
    np.testing.assert_allclose(rec['landmarks'], f.landmarks, atol=1e-3)
    assert rec['score'] == pytest.approx(f.score, abs=1e-6)
    assert rec['alignment']['size'] == 1024

  for k in range(2):
    for sub in ('aligned', 'degree_0/aligned', 'degree_1/aligned'):
      with Image.open(out / sub / f'group_face{k}.png') as im:
        assert im.size == (SIZE, SIZE)
  with Image.open(out / 'grid.png') as im:
    assert im.size == (3 * (SIZE + 2) + 2, 2 * (SIZE + 2) + 2)

  # Full photos: every pixel outside both faces' quads is the input's.
  untouched = np.ones(comp.shape[:2], bool)
  for rec in faces:
    a = alignment.Alignment(quad=np.array(rec['alignment']['quad']),
                            size=1024, photo_shape=(1024, 1024),
                            style='celebahq')
    untouched &= ~alignment.quad_polygon_mask(a, margin=1.0)
  for deg in ('0', '1'):
    result = np.asarray(Image.open(out / f'degree_{deg}' / 'group.png'))
    assert result.shape == comp.shape
    np.testing.assert_array_equal(result[untouched], comp[untouched])
    assert (result[~untouched] != comp[~untouched]).any()

  # --max-faces 1 keeps the best face only.
  rc = edit.main(['--checkpoint', str(model_dir), '--input',
                  str(photos / 'group.png'), '--target', 'smile', '--out',
                  str(tmp_path / 'one'), '--align', '--detector',
                  str(WEIGHTS), '--max-faces', '1', '--batch-size', '2',
                  '--no-progress'])
  assert rc == 0
  report = json.loads((tmp_path / 'one' / 'faces.json').read_text())
  assert len(report['photos'][0]['faces']) == 1
  assert report['photos'][0]['faces'][0]['score'] == pytest.approx(
      max(f.score for f in found), abs=1e-6)
