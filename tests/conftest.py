"""Test configuration: 4 virtual CPU devices, so sharding code runs multi-device."""

import os
import pathlib

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

import jax  # pylint: disable=g-import-not-at-top
import pytest  # pylint: disable=g-import-not-at-top

jax.config.update('jax_num_cpu_devices', 4)

# pytorch-fid imports torchvision at import time; make that work on CPU torch.
from third_party.torchvision_compat import register_shim  # pylint: disable=g-import-not-at-top
register_shim()

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / 'shared'
FIXTURES = SHARED / 'fixtures'


@pytest.fixture
def faces_dir():
  """The real face photos in ../shared/fixtures/faces, or a skip when absent."""
  path = FIXTURES / 'faces'
  if not path.is_dir() or not any(path.glob('*.png')):
    pytest.skip(f'real-face fixtures not present at {path}')
  return path
