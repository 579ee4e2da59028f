"""The habits every command-line tool shares (l2m_jax/cli.py), tried as a user.

Flag and config mistakes, files that are not checkpoints, a missing torch,
outputs that already hold something, and the README's test command leaving
the user's own packages alone.
"""

import importlib.util
import os
import pathlib
import stat
import subprocess
import sys
import zipfile

import numpy as np
from PIL import Image
import pytest

from l2m_jax import cli
from l2m_jax.convert import torch_to_flax as t2f

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _script(name):
  spec = importlib.util.spec_from_file_location(
      f'cli_{name}', ROOT / 'scripts' / f'{name}.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _run(*args):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3')
  return subprocess.run([sys.executable, *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300,
                        check=False)


@pytest.mark.parametrize('args, message', [
    (['--config.batch_szie=4'],
     "error: --config.batch_szie: the config has no field 'batch_szie' "
     '(did you mean batch_size?)'),
    (['--config.optimizer.lr=1'],
     "error: --config.optimizer.lr: the config has no field 'optimizer'"),
    (['--config=configs/tinyy.py'],
     'error: --config=configs/tinyy.py: no such config file (did you mean '
     'configs/tiny.py?)'),
    (['--config.batch_size=four'], 'error: flag --config.batch_size=four:'),
    (['--workdri=x'], "error: Unknown command line flag 'workdri'"),
])
def test_main_flag_mistakes_are_one_line_exit_2(tmp_path, args, message):
  base = ['--config=configs/tiny.py', f'--workdir={tmp_path / "w"}']
  if args[0].startswith('--config='):
    base = base[1:]
  r = _run('-m', 'l2m_jax.main', *base, *args)
  assert r.returncode == 2, r.stderr
  lines = [l for l in r.stderr.splitlines() if l.strip()]
  assert len(lines) == 1 and lines[0].startswith(message), r.stderr
  assert not (tmp_path / 'w').exists()


def test_demo_config_typo_is_one_line_exit_2(tmp_path):
  # The demo's --config has a default, so ml_collections parses the
  # overrides while the flag is defined, before absl's parser runs.
  r = _run('-m', 'l2m_jax.demo', f'--workdir={tmp_path}',
           '--config.total_itres=3')
  assert r.returncode == 2, r.stderr
  assert r.stderr.strip() == (
      "error: --config.total_itres: the config has no field 'total_itres' "
      '(did you mean total_iters?)')


def test_demo_bad_cpu_devices_is_one_line_exit_2(tmp_path):
  r = _run('-m', 'l2m_jax.demo', f'--workdir={tmp_path / "w"}',
           '--config.demo.cpu_devices=-2')
  assert r.returncode == 2, r.stderr
  assert r.stderr.strip() == (
      'demo: error: config.demo.cpu_devices=-2: expected an integer >= 0 '
      "(0 = JAX's default device count)"), r.stderr
  assert not (tmp_path / 'w').exists()


def _files(tmp_path):
  png = tmp_path / 'face.png'
  Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(png)
  npz = tmp_path / 'stats.npz'
  np.savez(npz, mu=np.zeros(3))
  truncated = tmp_path / 'truncated.ckpt'
  import torch  # pylint: disable=g-import-not-at-top
  torch.save({'w': torch.zeros(100)}, truncated)
  truncated.write_bytes(truncated.read_bytes()[:200])
  empty = tmp_path / 'empty.ckpt'
  empty.write_bytes(b'')
  text = tmp_path / 'notes.ckpt'
  text.write_bytes(b'hello, this is text')
  plain_zip = tmp_path / 'plain.zip'
  with zipfile.ZipFile(plain_zip, 'w') as z:
    z.writestr('readme.txt', 'x')
  return [(png, 'is a PNG image, not a PyTorch checkpoint'),
          (npz, 'is a numpy .npz archive, not a PyTorch checkpoint'),
          (truncated, 'is a damaged or truncated zip archive'),
          (empty, 'is an empty file'),
          (text, 'is not a PyTorch checkpoint: torch.save writes a zip '
           "archive or a pickle stream, and this file starts with b'hello, t'"),
          (plain_zip, 'is a zip archive, not a PyTorch checkpoint')]


def test_load_torch_file_says_what_a_file_is_not(tmp_path):
  for path, message in _files(tmp_path):
    with pytest.raises(t2f.ConversionError) as e:
      t2f.load_torch_file(path)
    assert str(e.value).startswith(f'{path}: {message}'), str(e.value)
    assert 'KeyError' not in str(e.value)


def test_directory_passed_as_checkpoint_file(tmp_path):
  converted = tmp_path / 'converted'
  converted.mkdir()
  (converted / 'meta.json').write_text('{}')
  with pytest.raises(FileNotFoundError,
                     match='is a directory, expected a PyTorch checkpoint '
                     'file .it is a converted l2m_jax checkpoint'):
    t2f.load_torch_file(converted)
  conv = _script('convert_checkpoint')
  rc = conv.main([str(converted), '--out', str(tmp_path / 'out')])
  assert rc == 2


def test_converter_without_torch_names_the_install_command(
    tmp_path, monkeypatch, capsys):
  import torch  # pylint: disable=g-import-not-at-top
  ckpt = tmp_path / 'x.ckpt'
  torch.save({'w': torch.zeros(2)}, ckpt)
  monkeypatch.setitem(sys.modules, 'torch', None)  # `import torch` fails
  with pytest.raises(t2f.MissingTorchError,
                     match='needs torch, which is not installed. Install it '
                     'with: python3 -m pip install torch=='):
    t2f.load_torch_file(ckpt)
  for name, args in (('convert_checkpoint', [str(ckpt)]),
                     ('convert_latent', ['mapper', str(ckpt)])):
    rc = _script(name).main(args + ['--out', str(tmp_path / f'o_{name}')])
    err = capsys.readouterr().err
    assert rc == 2 and 'python3 -m pip install torch==' in err, err
    assert 'Traceback' not in err


def _non_empty(folder):
  folder.mkdir(parents=True)
  (folder / 'old.png').write_bytes(b'old')
  return folder


def test_check_out_dir_and_file(tmp_path):
  assert cli.check_out_dir(tmp_path / 'new', False) == tmp_path / 'new'
  (tmp_path / 'empty').mkdir()
  cli.check_out_dir(tmp_path / 'empty', False)
  full = _non_empty(tmp_path / 'full')
  with pytest.raises(FileExistsError, match='--out .*full: already exists '
                     'and is not empty; pass --overwrite'):
    cli.check_out_dir(full, False)
  cli.check_out_dir(full, True)
  with pytest.raises(FileExistsError, match='is a file, expected a '
                     'directory'):
    cli.check_out_dir(full / 'old.png', True)
  cli.check_out_file(None, False, '--json')
  cli.check_out_file(tmp_path / 'r.json', False, '--json')
  with pytest.raises(FileExistsError, match='--json .*old.png: already '
                     'exists; pass --overwrite'):
    cli.check_out_file(full / 'old.png', False, '--json')
  cli.check_out_file(full / 'old.png', True, '--json')
  with pytest.raises(FileExistsError, match='is a directory, expected a '
                     'file'):
    cli.check_out_file(full, True, '--json')


def test_every_cli_refuses_a_non_empty_out(tmp_path, capsys):
  """Nothing is read or written before the refusal: the inputs are bogus."""
  full = _non_empty(tmp_path / 'full')
  old = full / 'old.png'
  data = tmp_path / 'data'
  (data / 'train').mkdir(parents=True)
  (data / 'val').mkdir()
  cases = [
      ('edit', ['--checkpoint', 'nowhere', '--input', 'nowhere', '--target',
                '1', '--out', str(full)]),
      ('edit_latent', ['--latents', 'nowhere.npy', '--generator', 'nowhere',
                       '--mapper', 'nowhere', '--out', str(full)]),
      ('convert_checkpoint', ['nowhere.ckpt', '--out', str(full)]),
      ('convert_latent', ['mapper', 'nowhere.pt', '--out', str(full)]),
      ('fid', ['nowhere', '--save-stats', str(old).replace('.png', '.npz'),
               '--weights', 'nowhere']),
      ('fid', ['a', 'b', '--json', str(old), '--weights', 'nowhere']),
      ('evaluate', ['--checkpoint', 'nowhere', '--data', str(data), '--out',
                    str(old)]),
      ('evaluate', ['--checkpoint', 'nowhere', '--data', str(data), '--out',
                    str(tmp_path / 'r.json'), '--eval-dir', str(full)]),
  ]
  (full / 'old.npz').write_bytes(b'old')
  for name, args in cases:
    rc = _script(name).main(args)
    err = capsys.readouterr().err
    assert rc == 2, (name, err)
    assert 'already exists' in err and '--overwrite' in err, (name, err)
  assert sorted(p.name for p in full.iterdir()) == ['old.npz', 'old.png']
  assert old.read_bytes() == b'old'


def test_test_script_keeps_test_only_packages_out_of_user_site(tmp_path):
  """scripts/test.sh, run with a recording python3 in place of the real one.

  The --no-deps references (torchvision, pytorch-fid) must be installed
  with --target into a folder of their own that only the pytest run puts on
  its path; installing them into the user's site-packages breaks the user's
  own `import torchvision` (its compiled operators need a CUDA torch).
  """
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  log = tmp_path / 'calls.log'
  fake = bin_dir / 'python3'
  fake.write_text('#!/usr/bin/env bash\n'
                  f'echo "PYTHONPATH=${{PYTHONPATH:-}} ARGS=$*" >> {log}\n'
                  'exit 0\n')
  fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
  deps = tmp_path / 'deps'
  env = dict(os.environ, PATH=f'{bin_dir}:{os.environ["PATH"]}',
             L2M_TEST_DEPS=str(deps), PYTHONPATH='')
  for _ in range(2):
    r = subprocess.run(['bash', str(ROOT / 'scripts' / 'test.sh'), '-k',
                        'nothing'], env=env, capture_output=True, text=True,
                       timeout=60, check=False)
    assert r.returncode == 0, r.stderr
  calls = log.read_text().splitlines()
  installs = [c for c in calls if ' pip install ' in c]
  nodeps = [c for c in installs if 'requirements-nodeps.txt' in c]
  # Installed once (the second run finds them current), into deps only.
  assert len(nodeps) == 1 and f'--target {deps}' in nodeps[0], calls
  assert '--no-deps' in nodeps[0]
  for c in installs:
    if c not in nodeps:
      assert 'torchvision' not in c and 'nodeps' not in c, c
  runs = [c for c in calls if ' pytest ' in c]
  assert len(runs) == 2
  assert all(c.startswith(f'PYTHONPATH={deps} ') for c in runs), runs
  assert all(not c.startswith(f'PYTHONPATH={deps}') for c in installs)
  requirements = (ROOT / 'requirements-test.txt').read_text()
  assert 'torchvision' not in requirements and 'pytorch-fid' not in (
      requirements)
