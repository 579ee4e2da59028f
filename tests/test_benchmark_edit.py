"""scripts/benchmark_edit.py --faces runs end to end (timings not checked)."""

import importlib.util
import pathlib
import shutil

import pytest

from tests.conftest import FIXTURES

ROOT = pathlib.Path(__file__).resolve().parents[1]
WEIGHTS = FIXTURES / 'face_detection' / 'mobilenet0.25_Final.pth'


def _load_script(name):
  spec = importlib.util.spec_from_file_location(
      name, ROOT / 'scripts' / f'{name}.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_faces_benchmark_usage_errors(capsys):
  bench = _load_script('benchmark_edit')
  assert bench.main(['--faces']) == 2
  assert '--faces needs --weights and --photos' in capsys.readouterr().err


@pytest.mark.slow
def test_faces_benchmark_runs(tmp_path, capsys):
  photo = FIXTURES / 'faces' / 'ffhq_00809.png'
  if not WEIGHTS.is_file() or not photo.is_file():
    pytest.skip('RetinaFace weights or real-face fixtures not present')
  (tmp_path / 'p').mkdir()
  shutil.copy(photo, tmp_path / 'p' / 'a.png')
  bench = _load_script('benchmark_edit')
  assert bench.main(['--faces', '--weights', str(WEIGHTS), '--photos',
                     str(tmp_path / 'p'), '--size', '512', '--composite',
                     '--repeats', '1', '--batch-sizes', '1']) == 0
  out = capsys.readouterr().out
  assert '| a.png | 1 |' in out  # one face found in the composite
  assert '| detection batch | JAX photos/s | torch photos/s |' in out
