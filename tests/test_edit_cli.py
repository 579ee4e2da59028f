"""End-to-end: convert a tiny official-format checkpoint, run scripts/edit.py."""

import importlib.util
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests import l2m_checkpoints as lc

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _load_script(name):
  spec = importlib.util.spec_from_file_location(
      name, ROOT / 'scripts' / f'{name}.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _converted_model(tmp_path, seed, size=32, w_hpf=0):
  """A tiny official-format checkpoint converted to <tmp_path>/model."""
  nets = lc.build_torch_nets(img_size=size, max_conv_dim=8, style_dim=8,
                             w_hpf=w_hpf, seed=seed)
  ckpt = lc.save_checkpoint(nets, tmp_path / 'src')
  assert _load_script('convert_checkpoint').main(
      [str(ckpt), '--out', str(tmp_path / 'model')]) == 0
  return tmp_path / 'model'


def _inputs(folder):
  folder.mkdir()
  rng = np.random.default_rng(0)
  Image.fromarray(rng.integers(0, 255, (50, 70, 3), np.uint8)).save(
      folder / 'a.png')
  Image.fromarray(rng.integers(0, 255, (40, 40, 4), np.uint8),
                  'RGBA').save(folder / 'b.png')
  Image.fromarray(rng.integers(0, 255, (90, 90), np.uint8), 'L').save(
      folder / 'c.jpg')
  (folder / 'broken.png').write_bytes(b'not a png')
  return folder


@pytest.mark.parametrize(
    'w_hpf', [0, pytest.param(1, marks=pytest.mark.slow)])
def test_edit_cli_end_to_end(tmp_path, capsys, w_hpf):
  size = 32
  _converted_model(tmp_path, seed=61, size=size, w_hpf=w_hpf)
  inputs = _inputs(tmp_path / 'in')
  edit = _load_script('edit')
  out = tmp_path / 'out'
  args = ['--checkpoint', str(tmp_path / 'model'), '--input', str(inputs),
          '--target', 'smile', '--degrees', '0', '1', '1.25', '--out',
          str(out), '--batch-size', '2']
  rc = edit.main(args)
  err = capsys.readouterr().err
  assert rc == 1 and 'broken.png' in err  # reported and skipped
  for deg in ('0', '1', '1.25'):
    for stem in ('a', 'b', 'c'):
      with Image.open(out / f'degree_{deg}' / f'{stem}.png') as im:
        assert im.size == (size, size) and im.mode == 'RGB'
  with Image.open(out / 'grid.png') as im:
    pad = 2
    assert im.size == (4 * (size + pad) + pad, 3 * (size + pad) + pad)
  before = sorted(p.relative_to(out) for p in out.rglob('*'))
  assert edit.main(args) == 2  # never mixes old and new outputs
  assert 'pass --overwrite' in capsys.readouterr().err
  assert sorted(p.relative_to(out) for p in out.rglob('*')) == before
  args += ['--overwrite']
  assert edit.main(args + ['--strict']) == 2
  assert 'unreadable' in capsys.readouterr().err
  assert edit.main(args[:5] + ['happy'] + args[6:]) == 2
  assert 'unknown domain' in capsys.readouterr().err
  assert edit.main(['--checkpoint', str(tmp_path / 'none')] + args[2:]) == 2
  assert 'not a converted checkpoint' in capsys.readouterr().err


def test_edit_script_runs_as_file(tmp_path):
  _converted_model(tmp_path, seed=62)
  img = tmp_path / 'x.png'
  Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(img)
  r = subprocess.run([sys.executable, 'scripts/edit.py', '--checkpoint',
                      str(tmp_path / 'model'), '--input', str(img),
                      '--target', '0', '--out', str(tmp_path / 'o')],
                     cwd=ROOT, capture_output=True, text=True, check=False)
  assert r.returncode == 0, r.stderr
  assert (tmp_path / 'o' / 'degree_1' / 'x.png').is_file()
  # 4 KiB of flipped bytes in the largest data file: one clear error, exit 2,
  # no image written, no traceback or asyncio noise.
  files = sorted((p for p in (tmp_path / 'model').rglob('*') if p.is_file()),
                 key=lambda p: p.stat().st_size)
  data = bytearray(files[-1].read_bytes())
  for i in range(len(data) // 4, min(len(data), len(data) // 4 + 4096)):
    data[i] ^= 0xFF
  files[-1].write_bytes(bytes(data))
  r = subprocess.run([sys.executable, 'scripts/edit.py', '--checkpoint',
                      str(tmp_path / 'model'), '--input', str(img),
                      '--target', '0', '--out', str(tmp_path / 'o2')],
                     cwd=ROOT, capture_output=True, text=True, check=False)
  assert r.returncode == 2, r.stderr
  assert r.stderr.startswith('error: ') and 'damaged' in r.stderr, r.stderr
  assert files[-1].name in r.stderr
  assert 'Traceback' not in r.stderr and 'Event loop' not in r.stderr
  assert not (tmp_path / 'o2').exists()


def test_edit_warns_for_generated_face_models_and_large_inputs(tmp_path,
                                                               capsys):
  """scripts/edit.py says when inputs do not fit what the model knows."""
  _converted_model(tmp_path, seed=63)
  small = tmp_path / 'small'
  small.mkdir()
  Image.fromarray(np.zeros((100, 120, 3), np.uint8)).save(small / 's.png')
  big = tmp_path / 'big'
  big.mkdir()
  Image.fromarray(np.zeros((100, 120, 3), np.uint8)).save(big / 's.png')
  Image.fromarray(np.zeros((256, 200, 3), np.uint8)).save(big / 'photo.jpg')
  edit = _load_script('edit')

  def run(model, inputs):
    rc = edit.main(['--checkpoint', str(model), '--input', str(inputs),
                    '--target', 'smile', '--out', str(tmp_path / 'out'),
                    '--overwrite'])
    assert rc == 0
    return capsys.readouterr().err

  # An official-format conversion of unknown provenance, inputs up to 4x
  # the model's 32 px: no warning.
  assert 'warning' not in run(tmp_path / 'model', small)
  # An input 8x the model's size.
  err = run(tmp_path / 'model', big)
  assert 'warning: 1 input(s) are far larger' in err
  assert 'photo.jpg (200x256)' in err and 's.png' not in err
  # A checkpoint whose meta says it was trained on the generated faces (what
  # the demo's EMA export records).
  meta_file = tmp_path / 'model' / 'meta.json'
  meta = json.loads(meta_file.read_text())
  meta['config']['training_data'] = 'synthetic_faces:smiling:32px:seed0'
  meta_file.write_text(json.dumps(meta))
  err = run(tmp_path / 'model', small)
  assert 'warning: this checkpoint was trained on the generated' in err
  assert 'docs/editing.md' in err


def test_edit_uses_every_local_device_and_matches_the_library(
    tmp_path, monkeypatch, capsys):
  """scripts/edit.py splits each batch over all 4 local devices, and its
  edits equal `editing.edit_sweep` called directly on all images at once."""
  import jax  # pylint: disable=g-import-not-at-top
  from l2m_jax import editing, image_io, parallel  # pylint: disable=g-import-not-at-top
  from l2m_jax.convert import l2m as l2m_convert  # pylint: disable=g-import-not-at-top
  _converted_model(tmp_path, seed=64)
  inputs = tmp_path / 'in'
  inputs.mkdir()
  rng = np.random.default_rng(5)
  for i in range(5):
    Image.fromarray(rng.integers(0, 255, (40, 36, 3), np.uint8)).save(
        inputs / f'f{i}.png')
  calls, results = [], []
  real_map_batches = parallel.map_batches

  def spy(fn, data, **kwargs):
    def recording_fn(*args):
      calls.append((args[-1].shape, args[-1].sharding.device_set))
      return fn(*args)
    out = real_map_batches(recording_fn, data, **kwargs)
    results.append(out)
    return out
  monkeypatch.setattr(parallel, 'map_batches', spy)
  rc = _load_script('edit').main(
      ['--checkpoint', str(tmp_path / 'model'), '--input', str(inputs),
       '--target', 'smile', '--degrees', '0', '1', '--out',
       str(tmp_path / 'out'), '--batch-size', '3'])
  assert rc == 0, capsys.readouterr().err
  # --batch-size 3 rounds up to 4 (4 devices): a full batch, then 1 image
  # padded to 4; every batch is split over every local device.
  assert [shape[0] for shape, _ in calls] == [4, 4]
  assert all(devs == set(jax.local_devices()) for _, devs in calls)
  assert len(jax.local_devices()) == 4
  variables, config = l2m_convert.load_l2m_checkpoint(tmp_path / 'model')
  x = image_io.load_images(image_io.list_images(inputs), 32)
  target = config.domain_index('smile')
  want = np.asarray(editing.edit_sweep(
      variables, x, 1 - target, target, np.asarray([0.0, 1.0], np.float32),
      config=config))
  (edited,) = results
  assert edited.shape == want.shape == (2, 5, 32, 32, 3)
  np.testing.assert_allclose(edited, want, atol=1e-5, rtol=0)
  for d, deg in enumerate(('0', '1')):
    for i in range(5):
      with Image.open(tmp_path / 'out' / f'degree_{deg}' / f'f{i}.png') as im:
        np.testing.assert_array_equal(np.asarray(im),
                                      image_io.to_uint8(edited[d, i]))
