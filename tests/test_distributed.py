"""A 2-process jax.distributed run on CPU (gloo) matches one process.

Each process has 2 CPU devices (4 in all), reads its own half of every
global batch through `parallel.shard_batch`, and runs the toy step of
test_parallel.py compiled by `parallel.compile_step` with jit + shard_map;
the final params must equal the single-process whole-batch reference. The
subprocesses are bounded by a timeout; loopback only.
"""

import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_WORKER = textwrap.dedent('''
    import json, sys
    sys.path.insert(0, {repo!r})
    import jax
    jax.config.update('jax_num_cpu_devices', 2)
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    pid = int(sys.argv[1])
    jax.distributed.initialize('localhost:{port}', 2, pid)
    import numpy as np
    from l2m_jax import parallel
    from tests import test_parallel as tp
    mesh = parallel.make_mesh()
    assert jax.device_count() == 4 and jax.process_count() == 2
    compiled = parallel.compile_step(tp._step, mesh, {mode!r}, num_args=1)
    state = compiled.put_state(tp._init())
    frozen = compiled.put_args({{'scale': np.float32(0.7)}})
    n = parallel.local_batch_size(8, mesh)
    for batch in tp._batches(3):
      local = {{k: v[pid * n:(pid + 1) * n] for k, v in batch.items()}}
      state, m = compiled(state, compiled.put_batch(local), frozen)
    out = parallel.unreplicate_to_host(compiled.get_state(state))
    print('RESULT ' + json.dumps({{'w': out[0]['w'].tolist(),
                                   'loss': float(compiled.get_metrics(m)['loss'])}}))
    jax.distributed.shutdown()
''')


def _free_port():
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize('mode', ['shard_map'])
def test_two_process_run_matches_single_process(tmp_path, mode):
  from tests import test_parallel as tp  # pylint: disable=g-import-not-at-top
  script = tmp_path / 'worker.py'
  script.write_text(_WORKER.format(repo=REPO, port=_free_port(), mode=mode))
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3')
  procs = [subprocess.Popen([sys.executable, str(script), str(i)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, cwd=REPO) for i in range(2)]
  results = []
  try:
    for p in procs:
      out, err = p.communicate(timeout=240)
      assert p.returncode == 0, err[-3000:]
      line = [l for l in out.splitlines() if l.startswith('RESULT ')]
      results.append(json.loads(line[0][7:]))
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  want_state, want_losses = tp._reference()
  for r in results:
    np.testing.assert_allclose(r['w'], want_state[0]['w'], atol=1e-6)
    np.testing.assert_allclose(r['loss'], want_losses[-1], rtol=1e-5)
