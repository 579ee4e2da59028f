"""scripts/gpu_benchmarks.sh at test size on the CPU, as on the GPU image.

The GPU machine has no tensorflow, tfds, clu or ml_collections; they are
blocked here too (tests/gpu_image.py). L2M_BENCH_TINY=1 shrinks every stage
(32 px narrow networks, 75 px Inception input, batch 2); XLA skips its slow
optimisation passes (test speed only). The one command must finish, write
one JSON with JAX and torch rows for every stage, and print one table.

Slow (about 75 to 100 s on 2 cores: three processes, each importing jax and
torch and compiling its stage): run by `bash scripts/test.sh -m slow`, not
by the default suite.
"""

import json
import math
import subprocess

import pytest

from tests import conftest
from tests import gpu_image


@pytest.mark.slow
def test_gpu_benchmarks_script_runs_at_tiny_size(tmp_path):
  env = gpu_image.env_without_data_stack(tmp_path)
  env['L2M_BENCH_TINY'] = '1'
  out = tmp_path / 'bench.json'
  proc = subprocess.run(['bash', 'scripts/gpu_benchmarks.sh', str(out)],
                        cwd=conftest.REPO_ROOT, env=env, capture_output=True,
                        text=True, timeout=1800, check=False)
  print(proc.stdout[-4000:])
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  data = json.loads(out.read_text())
  rows = data['rows']
  want = {('train', 'float32'), ('edit', 'float32'), ('edit', 'bfloat16'),
          ('fid', 'float32'), ('fid', 'bfloat16')}
  for bench, dtype in want:
    for fw in ('jax', 'torch'):
      got = [r for r in rows if (r['bench'], r['dtype'], r['framework']) ==
             (bench, dtype, fw)]
      assert len(got) == 1, (bench, dtype, fw, len(got))
      r = got[0]
      assert r['images_per_s'] > 0 and r['step_s'] > 0
      assert r['flops_per_step'] > 0 and r['mfu'] > 0
      assert math.isclose(r['tflops'],
                          r['flops_per_step'] / r['step_s'] / 1e12)
      assert r['peak_bytes'] > 0
      if fw == 'jax':
        assert r['compile_s'] > 0 and r['xla_memory_bytes'] > 0
      else:
        # XLA's count of the JAX program against torch's own count of the
        # same work (convolutions and matmuls only; XLA adds elementwise
        # FLOPs and drops gradients nobody uses).
        ratio = r['flops_per_step'] / r['counter_flops']
        assert 0.5 < ratio < 2.0, (bench, dtype, ratio)
  assert '| train | 32 | 2 | float32 |' in proc.stdout
  assert 'MFU peaks:' in proc.stdout
  assert 'FAILED' not in proc.stdout
