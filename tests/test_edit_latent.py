"""scripts/edit_latent.py and l2m_jax.latent_editing on small models."""

import argparse
import json
import subprocess
import sys
import types

import numpy as np
import pytest
import torch
from PIL import Image

from l2m_jax import image_io
from l2m_jax import latent_editing as le
from scripts import convert_latent
from scripts import edit_latent
from third_party import l2l_mapper_torch as tm
from third_party import stylegan2_torch as ts

D, N_LATENT, SIZE = 32, 10, 64


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
  tmp = tmp_path_factory.mktemp('edit')
  torch.manual_seed(0)
  g = ts.Generator(SIZE, style_dim=D, n_mlp=2, channel_base=16).eval()
  with torch.no_grad():
    for n, p in g.named_parameters():
      if n.endswith('noise.weight'):
        p.fill_(0.5)
  m = tm.LevelsMapper(dim=D).eval()
  mp = tm.LevelsMapper(dim=D, cond_dim=40).eval()
  with torch.no_grad():
    for grp in (mp.course_mapping, mp.medium_mapping, mp.fine_mapping):
      grp.cond.weight.normal_(0, 100)
  rng = np.random.default_rng(0)
  dirs = {f'{i:02d}_{n}': torch.from_numpy(
      rng.standard_normal((1, D)).astype(np.float32))
          for i, n in enumerate(['Male', 'Smiling'])}
  torch.save({'g_ema': g.state_dict(), 'latent_avg': torch.zeros(D)},
             tmp / 'g.pt')
  torch.save(m.state_dict(), tmp / 'm.pt')
  torch.save(mp.state_dict(), tmp / 'mp.pt')
  torch.save(dirs, tmp / 'b.pt')
  for argv in (['stylegan2', str(tmp / 'g.pt'), '--out', str(tmp / 'G')],
               ['mapper', str(tmp / 'm.pt'), '--out', str(tmp / 'M'),
                '--n-latent', str(N_LATENT)],
               ['mapper', str(tmp / 'mp.pt'), '--out', str(tmp / 'MP'),
                '--n-latent', str(N_LATENT), '--preset', 'paper']):
    assert convert_latent.main(argv) == 0
  w = torch.randn(3, N_LATENT, D)
  np.save(tmp / 'w.npy', w.numpy())
  torch.save(w[:, None], tmp / 'w.pt')  # unofficial (B, 1, n, D) layout
  return dict(tmp=tmp, g=g, m=m, mp=mp, dirs=dirs, w=w)


def _render_torch(g, w):
  with torch.no_grad():
    img, _ = g([w], input_is_latent=True, randomize_noise=False)
  return img.numpy().transpose(0, 2, 3, 1)


def test_legacy_sweep_cli(setup, capsys):
  tmp, w = setup['tmp'], setup['w']
  out = tmp / 'out_legacy'
  rc = edit_latent.main([
      '--latents', str(tmp / 'w.pt'), '--generator', str(tmp / 'G'),
      '--mapper', str(tmp / 'M'), '--boundaries', str(tmp / 'b.pt'),
      '--attribute', 'smiling', '--strengths', '0', '2', '--batch-size', '2',
      '--out', str(out)])
  assert rc == 0, capsys.readouterr().err
  edited = np.load(out / 'edited_latents.npy')
  assert edited.shape == (3, 2, N_LATENT, D)
  d = setup['dirs']['01_Smiling']
  for j, k in enumerate((0.0, 2.0)):
    with torch.no_grad():
      want = tm.legacy_edit(setup['m'], w, d, factor=k).numpy()
    np.testing.assert_allclose(edited[:, j], want, atol=1e-5)
  # Images: the torch generator on the same latents, same stored noise.
  want_img = image_io.to_uint8(_render_torch(
      setup['g'], torch.from_numpy(edited[2, 1])[None])[0])
  got = np.asarray(Image.open(out / 'images' / '0002_s2.png'))
  assert np.abs(got.astype(int) - want_img.astype(int)).max() <= 1
  grid = np.asarray(Image.open(out / 'grid.png'))
  assert grid.shape == (3 * (SIZE + 2) + 2, 3 * (SIZE + 2) + 2, 3)
  assert json.loads((out / 'edit.json').read_text())['attribute'] == 'smiling'


def test_paper_delta_api(setup):
  tmp, w = setup['tmp'], setup['w']
  editor, _ = le.load_editor(str(tmp / 'G'), str(tmp / 'MP'), batch_size=4)
  delta = le.parse_delta('smiling=0.5,young=-1', le.CELEBA_ATTRIBUTES)
  assert delta[31] == 0.5 and delta[39] == -1 and delta.sum() == -0.5
  edited = editor.edit_latents(w.numpy(), delta=delta, strengths=[1.0, 2.0])
  for j, s in enumerate((1.0, 2.0)):
    with torch.no_grad():
      dt = torch.from_numpy(np.tile(delta * s, (3, 1)))
      want = (w + setup['mp'](w, dt)).numpy()
    np.testing.assert_allclose(edited[:, j], want, atol=1e-5)


def test_sharded_editor_matches_single_device(setup):
  import jax  # pylint: disable=g-import-not-at-top
  from l2m_jax import parallel  # pylint: disable=g-import-not-at-top
  if jax.device_count() < 2:
    pytest.skip('needs several (virtual) devices')
  tmp, w = setup['tmp'], setup['w'].numpy()
  d = setup['dirs']['00_Male'].numpy()[0]
  single, _ = le.load_editor(str(tmp / 'G'), str(tmp / 'M'), batch_size=4,
                             mesh=parallel.make_mesh(1))
  mesh = parallel.make_mesh(min(4, jax.device_count()))
  # batch_size 3 is rounded up to the device count (one row per device).
  sharded, _ = le.load_editor(str(tmp / 'G'), str(tmp / 'M'), batch_size=3,
                              mesh=mesh)
  assert sharded.batch_size == mesh.devices.size
  a = single.edit_latents(w, direction=d, strengths=[1.0, 3.0])
  b = sharded.edit_latents(w, direction=d, strengths=[1.0, 3.0])
  np.testing.assert_allclose(a, b, atol=1e-6)
  np.testing.assert_allclose(single.render(w[:2]), sharded.render(w[:2]),
                             atol=1e-5)


@pytest.mark.parametrize('extra,msg', [
    (['--attribute', 'grin'], 'unknown attribute'),
    (['--attribute', 'smiling', '--latents-bad'], 'latents have shape'),
    ([], 'needs --boundaries and --attribute'),
])
def test_user_errors(setup, capsys, extra, msg):
  tmp = setup['tmp']
  latents = tmp / 'w.npy'
  if '--latents-bad' in extra:
    extra = [e for e in extra if e != '--latents-bad']
    latents = tmp / 'bad.npy'
    np.save(latents, np.zeros((2, 7, D), np.float32))
  if extra:
    extra = extra + ['--boundaries', str(tmp / 'b.pt')]
  rc = edit_latent.main(['--latents', str(latents), '--generator',
                         str(tmp / 'G'), '--mapper', str(tmp / 'M'),
                         '--out', str(tmp / 'err'), '--overwrite'] + extra)
  assert rc == 2
  assert msg in capsys.readouterr().err


def test_load_latents_shapes(tmp_path):
  w = np.random.default_rng(0).standard_normal((18, 512)).astype(np.float32)
  np.save(tmp_path / 'a.npy', w)
  assert le.load_latents(tmp_path / 'a.npy').shape == (1, 18, 512)
  torch.save({'latents': torch.from_numpy(w[None])}, tmp_path / 'b.pt')
  np.testing.assert_array_equal(le.load_latents(tmp_path / 'b.pt')[0], w)
  got = le.normalize_latents(w[:2, :], 18, 512)  # two w vectors
  np.testing.assert_array_equal(got[1, 17], w[1])
  with pytest.raises(FileNotFoundError):
    le.load_latents(tmp_path / 'none.npy')
  with pytest.raises(ValueError, match='NaN'):
    le.normalize_latents(np.full((18, 512), np.nan, np.float32), 18, 512)


def test_cli_runs_as_script(tmp_path):
  r = subprocess.run([sys.executable, 'scripts/edit_latent.py', '--latents',
                      str(tmp_path / 'x.npy'), '--generator', str(tmp_path),
                      '--mapper', str(tmp_path), '--out', str(tmp_path / 'o')],
                     capture_output=True, text=True, check=False)
  assert r.returncode == 2 and 'error:' in r.stderr
  assert 'Traceback' not in r.stderr


def test_choose_edit_resolves_the_paper_mode_flags(tmp_path):
  """The edit flags shared by edit_latent.py and edit_photo.py."""
  parser = argparse.ArgumentParser()
  le.add_edit_arguments(parser, strengths_help='s', delta_file_help='d')
  parser.add_argument('--mapper', default='m_dir')
  mapper = types.SimpleNamespace(cond_dim=40, style_dim=512)
  names = list(le.CELEBA_ATTRIBUTES)

  args = parser.parse_args(['--delta', 'smiling=0.5,young=-1'])
  choice = le.choose_edit(args, mapper, default_legacy_strengths=[2.0])
  want = np.zeros(40, np.float32)
  want[names.index('smiling')], want[names.index('young')] = 0.5, -1.0
  assert choice.mode == 'paper' and choice.strengths == [1.0]
  np.testing.assert_array_equal(choice.edit_kw['delta'], want)
  assert choice.attributes == [n for n in names if n in ('smiling', 'young')]
  assert choice.settings == {'delta': want.tolist()}

  per_row = tmp_path / 'rows.npy'
  np.save(per_row, np.ones((3, 40), np.float32))
  args = parser.parse_args(['--delta-file', str(per_row), '--strengths', '2'])
  choice = le.choose_edit(args, mapper, default_legacy_strengths=[2.0],
                          rows=3)
  assert choice.edit_kw['delta'].shape == (3, 40) and choice.strengths == [2.0]
  assert choice.attributes == []
  with pytest.raises(ValueError, match=r'shape \(3, 40\); expected \[40\]$'):
    le.choose_edit(args, mapper, default_legacy_strengths=[2.0])
  with pytest.raises(ValueError, match=r'expected \[40\] or \[2, 40\]'):
    le.choose_edit(args, mapper, default_legacy_strengths=[2.0], rows=2)
  with pytest.raises(ValueError, match='exactly one of --delta'):
    le.choose_edit(parser.parse_args([]), mapper,
                   default_legacy_strengths=[2.0])
  with pytest.raises(ValueError, match='m_dir: this mapper has no '
                     'conditioning input'):
    le.choose_edit(parser.parse_args(['--mode', 'paper']),
                   types.SimpleNamespace(cond_dim=0, style_dim=512),
                   default_legacy_strengths=[2.0])
  with pytest.raises(ValueError, match='needs --boundaries and --attribute'):
    le.choose_edit(parser.parse_args(['--mode', 'legacy']), mapper,
                   default_legacy_strengths=[2.0])
