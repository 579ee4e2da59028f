"""Tests of the generated face data set (l2m_jax/datasets/synthetic_faces.py).

The attribute checks measure pixels with rules written independently of the
renderer: they look only at colours and image-relative bands, never at the
renderer's geometry.
"""

import json
import os
import pathlib
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from l2m_jax import image_io
from l2m_jax.datasets import synthetic_faces as sf
from l2m_jax.datasets import synthetic_faces_folders as sff

S = 64  # the rules are calibrated for 64 px


@pytest.fixture(scope='module')
def faces64():
  return sf.generate_arrays(120, S, seed=11, split='val')


def _luma(im):
  im = im.astype(np.float64)
  return 0.299 * im[..., 0] + 0.587 * im[..., 1] + 0.114 * im[..., 2]


def glasses_rule(img):
  """Eyeglasses present: many near-black pixels in the eye band (rows 25-60%)."""
  band = _luma(img)[int(0.25 * S):int(0.60 * S)]
  return int((band < 40).sum() > 35)


def smile_rule(img):
  """Smiling: the lip-red stroke's ends sit above its middle (rows 50-85%)."""
  x = img[int(0.50 * S):int(0.85 * S)].astype(np.int32)
  red = ((x[..., 0] > 110) & (x[..., 0] - x[..., 1] > 80)
         & (x[..., 0] - x[..., 2] > 60))
  ys, xs = np.nonzero(red)
  assert len(xs) > 10, 'no mouth found'
  lo, hi = xs.min(), xs.max()
  w = hi - lo
  ends = (ys[xs <= lo + 0.2 * w].mean() + ys[xs >= hi - 0.2 * w].mean()) / 2
  middle = ys[np.abs(xs - (lo + hi) / 2) <= 0.1 * w].mean()
  return int(middle - ends > 1.0)  # rows grow downwards


def grey_hair_rule(img):
  """Grey hair: the first non-background pixels down the centre are unsaturated."""
  col = img[:, S // 2 - 1:S // 2 + 2].astype(np.int32)
  differs = np.abs(col - img[0, 0].astype(np.int32)).sum(-1).max(1) > 24
  top = int(np.argmax(differs))
  hair = np.median(col[top + 2:top + 4].reshape(-1, 3), axis=0)
  return int(hair.max() - hair.min() < 20)


def test_generation_is_deterministic_per_seed():
  a = sf.generate_arrays(6, 32, seed=3)
  b = sf.generate_arrays(6, 32, seed=3)
  c = sf.generate_arrays(6, 32, seed=4)
  assert a['image'].tobytes() == b['image'].tobytes()
  np.testing.assert_array_equal(a['identity'], b['identity'])
  assert a['image'].tobytes() != c['image'].tobytes()
  # An example does not depend on how many were asked for, or from where.
  tail = sf.generate_arrays(2, 32, seed=3, start=4)
  assert tail['image'].tobytes() == a['image'][4:].tobytes()
  # Train and val are different streams.
  v = sf.generate_arrays(6, 32, seed=3, split='val')
  assert v['image'].tobytes() != a['image'].tobytes()


def test_rendering_is_antialiased_and_in_range(faces64):
  img = faces64['image']
  assert img.shape == (120, S, S, 3) and img.dtype == np.uint8
  # Anti-aliasing: edge pixels take intermediate values, so an image has far
  # more distinct colours than the dozen flat fills it is drawn with.
  assert len(np.unique(img[0].reshape(-1, 3), axis=0)) > 100
  ident = faces64['identity']
  assert ident.min() >= 0 and ident.max() <= 1
  assert ident.shape == (120, sf.IDENTITY_DIM)


@pytest.mark.parametrize('attribute,rule', [
    ('eyeglasses', glasses_rule), ('smiling', smile_rule),
    ('grey_hair', grey_hair_rule)])
def test_rendered_attribute_matches_label(faces64, attribute, rule):
  labels = faces64[attribute]
  assert 20 < labels.sum() < 100  # both values occur
  measured = np.array([rule(im) for im in faces64['image']])
  wrong = np.nonzero(measured != labels)[0]
  assert len(wrong) == 0, f'{attribute}: pixel rule disagrees at {wrong}'


@pytest.mark.parametrize('attribute', sf.ATTRIBUTES)
def test_attribute_flip_changes_only_its_region(attribute):
  for index in range(6):
    ident, attrs = sf.sample_face(2, 'train', index)
    flipped = dict(attrs, **{attribute: 1 - attrs[attribute]})
    a = sf.render_face(ident, attrs, S).astype(np.int32)
    b = sf.render_face(ident, flipped, S).astype(np.int32)
    changed = np.abs(a - b).max(-1) > 2
    mask = sf.attribute_region_mask(ident, attribute, S)
    assert changed.sum() > 15
    assert 0.02 < mask.mean() < 0.5
    # Lanczos ringing reaches about one pixel past the dilated region.
    outside = changed & (image_io_dilate(mask, 1) == 0)
    assert outside.sum() == 0, (attribute, index, outside.sum())


def image_io_dilate(mask, r):
  out = mask.copy()
  for dy in range(-r, r + 1):
    for dx in range(-r, r + 1):
      out = np.maximum(out, np.roll(np.roll(mask, dy, 0), dx, 1))
  return out


def test_renderer_and_export_do_not_import_tensorflow():
  code = ('import sys; '
          'from l2m_jax.datasets import synthetic_faces, '
          'synthetic_faces_folders; '
          'print(sorted(m for m in sys.modules '
          "if m.split('.')[0] in ('tensorflow', 'tensorflow_datasets')))")
  out = subprocess.run([sys.executable, '-c', code], capture_output=True,
                       text=True, check=True,
                       cwd=pathlib.Path(__file__).resolve().parents[1])
  assert out.stdout.strip() == '[]', out.stdout


def test_tfds_builder_matches_arrays(tmp_path):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from l2m_jax.datasets import synthetic_faces_tfds  # pylint: disable=g-import-not-at-top
  assert synthetic_faces_tfds.SyntheticFaces.name == 'synthetic_faces'
  assert str(synthetic_faces_tfds.SyntheticFaces.VERSION) == sf.VERSION
  cfg = synthetic_faces_tfds.make_config(image_size=32, num_train=5,
                                         num_val=3, seed=7)
  builder = synthetic_faces_tfds.SyntheticFaces(config=cfg,
                                                data_dir=str(tmp_path))
  builder.download_and_prepare()
  assert builder.info.splits['train'].num_examples == 5
  assert builder.info.splits['val'].num_examples == 3
  rows = sorted(tfds.as_numpy(builder.as_dataset(split='val')),
                key=lambda r: int(r['index']))
  ref = sf.generate_arrays(3, 32, seed=7, split='val')
  for k, r in enumerate(rows):
    np.testing.assert_array_equal(r['image'], ref['image'][k])
    np.testing.assert_array_equal(r['identity'], ref['identity'][k])
    for a in sf.ATTRIBUTES:
      assert r[a] == ref[a][k]
    # Every rendering parameter is stored by name as well.
    for j, name in enumerate(sf.IDENTITY_NAMES):
      assert r['params'][name] == ref['identity'][k, j]
    assert r['hair_style'] == ref['hair_style'][k]


def test_export_folder_layout(tmp_path):
  root = tmp_path / 'faces'
  info = sff.export_folder_layout(root, 'eyeglasses', image_size=32,
                                  num_train=10, num_val=4, seed=1)
  assert info['domains'] == ['bare_eyes', 'eyeglasses']
  ref = sf.generate_arrays(10, 32, seed=1, split='train')
  for split, n in (('train', 10), ('val', 4)):
    dirs = sorted(p.name for p in (root / split).iterdir())
    assert dirs == ['bare_eyes', 'eyeglasses']
    files = sum((image_io.list_images(root / split / d) for d in dirs
                 if any((root / split / d).iterdir())), [])
    assert len(files) == n
  feats = sff.load_features(root, 'train')
  for k, rel in enumerate(feats['path']):
    domain = rel.split('/')[1]
    assert domain == info['domains'][feats['eyeglasses'][k]]
    np.testing.assert_array_equal(np.asarray(Image.open(root / rel)),
                                  ref['image'][feats['index'][k]])
  # Same settings: reused; other settings: refused without overwrite.
  assert sff.export_folder_layout(root, 'eyeglasses', image_size=32,
                                  num_train=10, num_val=4, seed=1)['reused']
  with pytest.raises(FileExistsError, match='overwrite'):
    sff.export_folder_layout(root, 'smiling', image_size=32, num_train=10,
                             num_val=4, seed=1)


def test_export_cli(tmp_path):
  out = tmp_path / 'cli'
  res = subprocess.run(
      [sys.executable, 'scripts/export_synthetic_faces.py', '--out', str(out),
       '--attribute', 'smiling', '--image_size', '32', '--num_train', '4',
       '--num_val', '2'], capture_output=True, text=True, check=False)
  assert res.returncode == 0, res.stderr
  assert json.loads((out / 'counts.json').read_text())['val']
  bad = subprocess.run(
      [sys.executable, 'scripts/export_synthetic_faces.py', '--out', str(out),
       '--attribute', 'beard'], capture_output=True, text=True, check=False)
  assert bad.returncode != 0 and 'beard' in bad.stderr
  assert 'Traceback' not in bad.stderr


def test_counterfactuals_and_preserved_targets():
  arrays = sf.generate_arrays(3, 16, seed=2, split='val')
  cf = sf.generate_counterfactuals(2, 16, 2, 'val', 'smiling', start=1)
  for j, index in enumerate((1, 2)):
    ident, attrs = sf.sample_face(2, 'val', index)
    attrs = dict(attrs, smiling=1 - attrs['smiling'])
    np.testing.assert_array_equal(cf[j], sf.render_face(ident, attrs, 16))
  targets = sf.preserved_targets(arrays, 'smiling')
  np.testing.assert_array_equal(targets[:, :sf.IDENTITY_DIM],
                                arrays['identity'])
  np.testing.assert_array_equal(
      targets[:, sf.IDENTITY_DIM:],
      np.stack([arrays['eyeglasses'], arrays['grey_hair']], axis=1))
  for fn in (lambda: sf.generate_counterfactuals(1, 16, 0, 'val', 'beard'),
             lambda: sf.preserved_targets(arrays, 'beard')):
    with pytest.raises(ValueError, match="unknown attribute 'beard'"):
      fn()


def test_export_process_and_load_arrays(tmp_path):
  # export_folder_layout in a child process: the same files and result as
  # in this one, progress lines passed on; load_arrays reads back exactly
  # what generate_arrays renders, dtypes included.
  root, ref_root = tmp_path / 'faces', tmp_path / 'ref'
  settings = dict(image_size=32, num_train=10, num_val=4, seed=1)
  seen = []
  info = sff.ExportProcess(root, 'eyeglasses', **settings).wait(
      progress=seen.append)
  ref_info = sff.export_folder_layout(ref_root, 'eyeglasses', **settings)
  assert info == {**ref_info, 'root': str(root)}
  assert [s.split(' to ')[0] for s in seen] == ['train: wrote 10 images',
                                                'val: wrote 4 images']
  written = sorted(p.relative_to(root) for p in root.rglob('*') if p.is_file())
  assert written == sorted(p.relative_to(ref_root) for p in ref_root.rglob('*')
                           if p.is_file())
  for rel in written:
    if rel.suffix == '.png':
      assert (root / rel).read_bytes() == (ref_root / rel).read_bytes(), rel
  for split, num in (('train', 10), ('val', 4)):
    got = sff.load_arrays(root, split)
    ref = sf.generate_arrays(num, 32, seed=1, split=split)
    assert sorted(got) == sorted(ref)
    for k, v in ref.items():
      assert got[k].dtype == v.dtype, k
      np.testing.assert_array_equal(got[k], v, err_msg=k)
  # The child's errors come back with their type and message.
  with pytest.raises(FileExistsError, match='overwrite'):
    sff.ExportProcess(root, 'smiling', **settings).wait()
  with pytest.raises(ValueError, match='moustache'):
    sff.ExportProcess(tmp_path / 'bad', 'moustache', **settings).wait()
  # A damaged image is named.
  victim = root / str(sff.load_features(root, 'val')['path'][0])
  victim.write_bytes(b'not a png')
  with pytest.raises(ValueError, match=victim.name):
    sff.load_arrays(root, 'val')


@pytest.mark.skipif(not sys.platform.startswith('linux'),
                    reason='the parent-death signal is Linux-only')
def test_export_process_ends_with_its_parent(tmp_path):
  # A parent killed outright (SIGKILL: no finally, no handler) takes the
  # export's child process with it, so no writer outlives a stopped demo.
  script = (
      'import os, signal, sys\n'
      'from l2m_jax.datasets import synthetic_faces_folders as sff\n'
      f'p = sff.ExportProcess({str(tmp_path / "faces")!r}, "smiling", '
      'image_size=32, num_train=20000, num_val=10, seed=0)\n'
      'print(p._proc.pid, flush=True)\n'
      'import time; time.sleep(1.0)\n'
      'os.kill(os.getpid(), signal.SIGKILL)\n')
  repo = pathlib.Path(__file__).resolve().parents[1]
  out = subprocess.run([sys.executable, '-c', script], cwd=repo,
                       capture_output=True, text=True, timeout=120,
                       env={**os.environ, 'PYTHONPATH': str(repo)})
  assert out.returncode == -9, out.stderr
  child = int(out.stdout.split()[0])

  def running():
    try:
      state = pathlib.Path(f'/proc/{child}/stat').read_text().split(') ')[1][0]
    except (FileNotFoundError, ProcessLookupError):
      return False
    return state not in 'ZX'

  deadline = time.monotonic() + 10
  while running() and time.monotonic() < deadline:
    time.sleep(0.1)
  assert not running()
  assert not (tmp_path / 'faces' / 'counts.json').exists()
