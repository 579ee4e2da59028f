"""The models, the train step, the editor, the Inception extractor and the
benchmarks import and run without tensorflow, tfds, clu and ml_collections."""

import subprocess
import sys

from tests import conftest
from tests import gpu_image

_SCRIPT = r'''
import importlib.util, sys
for name in %(blocked)r:
  try:
    __import__(name)
  except ImportError:
    pass
  else:
    raise SystemExit(f'{name} was not blocked')
import jax, jax.numpy as jnp, numpy as np
from l2m_jax import checkpointing, editing, errors, losses, parallel, train_l2m
from l2m_jax.evaluation import fid, frechet, inception_features
from l2m_jax.models import fan, inception, l2m, resnet, stargan_v2
from l2m_jax.plain_config import PlainConfig
from configs import l2m_celebahq
for script in ('bench_util', 'benchmark_train', 'benchmark_edit',
               'benchmark_fid', 'bench_report'):
  spec = importlib.util.spec_from_file_location(
      script, f'scripts/{script}.py')
  spec.loader.exec_module(importlib.util.module_from_spec(spec))
# Run: the paper config without ml_collections, the step's models, the
# error classifier and a tiny edit.
c = l2m_celebahq.get_config('res=32', container=PlainConfig)
c.base_dim, c.max_conv_dim, c.style_dim, c.w_hpf = 8, 16, 8, 0.0
assert c.to_dict()['img_size'] == 32 and c.dtype == 'float32'
models = train_l2m.create_models(c)
state = jax.eval_shape(lambda: train_l2m.create_train_state(
    c, models, jax.random.key(0)))
assert state.generator.params['from_rgb']['kernel'].dtype == jnp.float32
assert errors.is_user_error(ValueError('batch_size=3: bad'))
mc = train_l2m.model_config_from(c)
g, e = l2m.build_models(mc)
x = jnp.zeros((1, 32, 32, 3))
v = {'generator': g.init(jax.random.key(1), x, jnp.zeros((1, 8))),
     'style_encoder': e.init(jax.random.key(2), x, jnp.zeros((1,), jnp.int32),
                             jnp.zeros((1,), jnp.int32))}
out = editing.edit(v, x, 0, 1, 1.0, config=mc)
assert out.shape == (1, 32, 32, 3) and np.isfinite(np.asarray(out)).all()
blocked = [m for m in sys.modules if m.split('.')[0] in %(blocked)r
           and sys.modules[m] is not None]
print('OK', blocked)
'''


def test_core_imports_and_runs_without_the_data_stack(tmp_path):
  env = gpu_image.env_without_data_stack(tmp_path)
  proc = subprocess.run(
      [sys.executable, '-c', _SCRIPT % {'blocked': gpu_image.BLOCKED}],
      cwd=conftest.REPO_ROOT, env=env, capture_output=True, text=True,
      timeout=600, check=False)
  assert proc.returncode == 0, proc.stderr[-4000:]
  assert 'OK []' in proc.stdout, proc.stdout
