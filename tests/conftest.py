"""Test configuration: 4 virtual CPU devices, so sharding runs multi-device.

Also a persistent compilation cache private to this test session (tests that
train the tiny model compile the same programs; subprocesses share it through
`compilation_env()`), and `tiny_run`: one short training run of the real
model shared by the tests that inspect or resume a run.
"""

import atexit
import contextlib
import os
import pathlib
import shutil
import sys
import tempfile
import types

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

import jax  # pylint: disable=g-import-not-at-top
import pytest  # pylint: disable=g-import-not-at-top

jax.config.update('jax_num_cpu_devices', 4)

# Compiled programs are cached on disk for the session only. With
# pytest-xdist the controller creates the folder and its workers inherit it
# through the environment, so they share compiled programs.
_CACHE_ENV = 'L2M_TEST_XLA_CACHE'
if os.environ.get(_CACHE_ENV):
  COMPILATION_CACHE = os.environ[_CACHE_ENV]
else:
  COMPILATION_CACHE = tempfile.mkdtemp(prefix='l2m_jax_test_xla_cache_')
  os.environ[_CACHE_ENV] = COMPILATION_CACHE
  atexit.register(shutil.rmtree, COMPILATION_CACHE, ignore_errors=True)
MIN_CACHED_COMPILE_SECS = 1.0
jax.config.update('jax_compilation_cache_dir', COMPILATION_CACHE)
jax.config.update('jax_persistent_cache_min_compile_time_secs',
                  MIN_CACHED_COMPILE_SECS)

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]

# The test-only references (torchvision, pytorch-fid) live in a folder of
# their own that scripts/test.sh fills; put it on the path of a direct
# `pytest` run too (and of its subprocesses).
TEST_DEPS = pathlib.Path(os.environ.get('L2M_TEST_DEPS',
                                        REPO_ROOT / '.test_deps'))
if TEST_DEPS.is_dir() and str(TEST_DEPS) not in sys.path:
  sys.path.insert(0, str(TEST_DEPS))
  os.environ['PYTHONPATH'] = os.pathsep.join(
      p for p in (str(TEST_DEPS), os.environ.get('PYTHONPATH')) if p)

# pytorch-fid imports torchvision at import time; make that work on CPU torch.
from third_party.torchvision_compat import register_shim  # pylint: disable=g-import-not-at-top
register_shim()

SHARED = REPO_ROOT.parent / 'shared'
# Optional real-file fixtures; $L2M_FIXTURES points elsewhere (a missing
# folder runs the suite as a checkout without them does).
FIXTURES = pathlib.Path(os.environ.get('L2M_FIXTURES', SHARED / 'fixtures'))


def compilation_env() -> dict[str, str]:
  """Environment for subprocesses that should share the session's cache."""
  return {'JAX_COMPILATION_CACHE_DIR': COMPILATION_CACHE,
          'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS':
              str(MIN_CACHED_COMPILE_SECS),
          'TF_CPP_MIN_LOG_LEVEL': '3'}


@pytest.fixture(scope='session')
def faces_dir(tmp_path_factory):
  """A folder of face images: the real photos of FIXTURES / 'faces' when
  present, else four generated 256 px faces (l2m_jax.datasets.synthetic_faces),
  so that the tests that need a face keep running without the fixtures.
  """
  path = FIXTURES / 'faces'
  if path.is_dir() and any(path.glob('*.png')):
    return path
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from l2m_jax.datasets import synthetic_faces  # pylint: disable=g-import-not-at-top
  folder = tmp_path_factory.mktemp('generated_faces')
  images = synthetic_faces.generate_arrays(4, image_size=256, seed=3)['image']
  for k, image in enumerate(images):
    Image.fromarray(image).save(folder / f'generated_{k}.png')
  return folder


# The settings of the shared run (and of the multi-process runs compared with
# it): 4 steps of configs/tiny.py, a checkpoint and an EMA export every 2
# steps, the sample grid and the L2M FID (random-weight Inception) at step 4.
# Adam's eps = 1 keeps the first updates linear in the gradient, so runs that
# reduce the gradient in another order (other device layouts) stay within
# float round-off of each other instead of flipping lr * sign(g) for
# parameters whose gradient is zero up to round-off.
RUN_OVERRIDES = {'total_iters': 4, 'save_every': 2, 'keep_checkpoints': 2,
                 'sample_every': 4, 'eval_every': 4, 'eval_fid': True,
                 'log_every': 1, 'adam_eps': 1.0, 'lr': 1e-2}


def make_run_inputs(root: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
  """(data folder, random-weight torchvision Inception .pth) under root."""
  import torch  # pylint: disable=g-import-not-at-top
  from tests import test_inception  # pylint: disable=g-import-not-at-top
  from tests.test_input_pipeline import make_folder  # pylint: disable=g-import-not-at-top
  data = make_folder(root / 'data', counts=(('neg', 3), ('pos', 3)), val=2,
                     size=(40, 40))
  weights = root / 'inception_random.pth'
  torch.save(test_inception._torchvision_model(seed=1).state_dict(),  # pylint: disable=protected-access
             weights)
  return data, weights


def run_config(data: pathlib.Path, weights: pathlib.Path, **overrides):
  from configs import tiny  # pylint: disable=g-import-not-at-top
  config = tiny.get_config()
  config.data_dir = str(data)
  config.inception_checkpoint = str(weights)
  config.update(RUN_OVERRIDES)
  config.update(overrides)
  return config


@pytest.fixture(scope='session')
def tiny_run(tmp_path_factory):
  """One 4-step run of the real model in this process (4 devices).

  Tests must not modify its workdir (copy it first).
  """
  from l2m_jax import parallel  # pylint: disable=g-import-not-at-top
  from l2m_jax import train_l2m  # pylint: disable=g-import-not-at-top
  root = tmp_path_factory.mktemp('tiny_run')
  data, weights = make_run_inputs(root)
  config = run_config(data, weights)
  workdir = root / 'run'
  with fast_compile():  # so do the tests that compare runs with it
    state = train_l2m.train_and_evaluate(config, str(workdir))
  return types.SimpleNamespace(
      root=root, data=data, weights=weights, config=config, workdir=workdir,
      state=parallel.unreplicate_to_host(state))


# Modules whose cost is compiling training steps and small training runs,
# and whose assertions compare runs of this process with each other or with
# torch at >= 1e-5: XLA skips its slow optimisation passes there (compile
# time roughly halves; float results move by round-off only). Parity and
# equivalence tests elsewhere compile as users do. Single tests opt in with
# `@pytest.mark.fast_compile`; `tiny_run` and every test that compares a
# training run with it bitwise compile this way (the subprocess runs of
# test_distributed.py set JAX_DISABLE_MOST_OPTIMIZATIONS=1 too).
FAST_COMPILE_MODULES = frozenset({
    'test_demo', 'test_train_l2l', 'test_preservation',
    'test_editing_metrics', 'test_train_fid', 'test_distributed'})


@contextlib.contextmanager
def fast_compile():
  """XLA without its slow optimisation passes inside the block."""
  from jax._src import compiler  # pylint: disable=g-import-not-at-top
  flag = getattr(compiler, '_DISABLE_MOST_OPTIMIZATIONS', None)
  old = bool(flag.value) if flag is not None else False
  jax.config.update('jax_disable_most_optimizations', True)
  try:
    yield
  finally:
    jax.config.update('jax_disable_most_optimizations', old)


@pytest.fixture(autouse=True, scope='module')
def _fast_compile_module(request):
  name = request.module.__name__.rsplit('.', 1)[-1]
  if name not in FAST_COMPILE_MODULES:
    yield
    return
  with fast_compile():
    yield


@pytest.fixture(autouse=True)
def _fast_compile_test(request):
  if request.node.get_closest_marker('fast_compile') is None:
    yield
    return
  with fast_compile():
    yield


# Parallel runs (pytest-xdist, `--dist loadgroup`, as scripts/test.sh runs
# the suite): each test module runs on one worker, so its module fixtures are
# built once; modules that share an expensive session fixture (the tiny
# training run, the converted photo networks) run on the same worker, and the
# heaviest groups are handed out first.
_SHARED_GROUPS = (
    ('tiny_run', lambda module, names: 'tiny_run' in names),
    ('photo_nets', lambda module, names: any(
        getattr(v, '__name__', '') == 'tests.photo_checkpoints'
        for v in vars(module).values())),
)
_FIRST_GROUPS = ('tiny_run', 'photo_nets')


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
  if not config.pluginmanager.hasplugin('xdist'):
    return
  uses = {}
  for item in items:
    module = getattr(item, 'module', None)
    if module is None:
      continue
    names = uses.setdefault(module, set())
    names.update(getattr(item, 'fixturenames', ()))
  group_of = {}
  for module, names in uses.items():
    group_of[module] = next(
        (g for g, used in _SHARED_GROUPS if used(module, names)),
        module.__name__)
  for item in items:
    module = getattr(item, 'module', None)
    if module is not None:
      item.add_marker(pytest.mark.xdist_group(group_of[module]))

  def rank(item):
    g = group_of.get(getattr(item, 'module', None))
    return _FIRST_GROUPS.index(g) if g in _FIRST_GROUPS else len(
        _FIRST_GROUPS)
  items.sort(key=rank)  # stable: the order within a group is kept
