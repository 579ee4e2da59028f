"""The training entry point reports user mistakes without a traceback."""

import os
import subprocess
import sys

from tests.conftest import REPO_ROOT


def _run(*args):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3')
  return subprocess.run([sys.executable, '-m', 'l2m_jax.main', *args],
                        cwd=REPO_ROOT, capture_output=True, text=True,
                        timeout=300, env=env)


def test_missing_data_dir_is_a_clean_error(tmp_path):
  out = _run('--config=configs/tiny.py', f'--workdir={tmp_path / "w"}',
             f'--config.data_dir={tmp_path / "absent"}')
  assert out.returncode == 2, out.stderr[-2000:]
  assert f'error: data_dir=\'{tmp_path / "absent"}\'' in out.stderr
  assert 'Traceback' not in out.stderr


def test_is_user_error_classifies():
  from l2m_jax import errors, input_pipeline  # pylint: disable=g-import-not-at-top
  assert errors.is_user_error(input_pipeline.DatasetError('x'))
  assert errors.is_user_error(ValueError('batch_size=3: must be a multiple'))
  assert errors.is_user_error(ValueError('config.data_dir is empty: set it'))
  assert not errors.is_user_error(ValueError('Incompatible shapes (3,) (4,)'))
  assert not errors.is_user_error(RuntimeError('boom'))


def test_a_workdir_held_by_a_live_run_is_refused(tmp_path):
  from l2m_jax import checkpointing  # pylint: disable=g-import-not-at-top
  workdir = tmp_path / 'w'
  with checkpointing.WorkdirLock(workdir):  # this process: a live run
    out = _run('--config=configs/tiny.py', f'--workdir={workdir}',
               f'--config.data_dir={tmp_path / "absent"}')
  assert out.returncode == 2, out.stderr[-2000:]
  assert 'the workdir is in use by another live run' in out.stderr
  assert f'pid {os.getpid()}' in out.stderr
  assert 'Traceback' not in out.stderr
