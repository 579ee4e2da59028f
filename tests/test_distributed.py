"""Multi-process runs on CPU (gloo): 2 processes x 2 CPU devices.

Default suite (`test_two_processes_train_share_and_stop_together`, about
20 s): a toy data-parallel step, an inference pass over each process's share
and SIGTERM to one process, in two worker processes started as
docs/training.md starts them.

Slow suite (`bash scripts/test.sh -m slow`; about 2.5 minutes on an idle
2-core machine, twice that beside the rest of the suite): the training entry
point `python3 -m l2m_jax.main` as 2 processes, on the settings of
conftest.RUN_OVERRIDES (4 steps of configs/tiny.py, a checkpoint and an EMA
export every 2 steps, the sample grid and the FID with random-weight
Inception at step 4). Process 1 gets SIGTERM early; both processes must stop
at the same step, save it and exit 0. The rerun resumes and finishes. Its
results are compared with `tiny_run`, the same config run uninterrupted in
one process on 4 devices: the final parameters and the EMA export to float
round-off, the FID JSON to round-off of the statistics.

Subprocesses share the session's compilation cache, are bounded by
timeouts, are killed when the test fails, and their logs are printed on
failure. Loopback only.
"""

import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest

from tests import conftest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN_TIMEOUT = 420  # seconds per group of processes (a 2-core CI machine)


def _free_port():
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


class _Processes:
  """Processes started together; logs to files; all killed on any failure."""

  def __init__(self, commands, envs, log_dir, name):
    self.logs = [pathlib.Path(log_dir) / f'{name}.p{i}.log'
                 for i in range(len(commands))]
    self.procs = []
    for cmd, env, log in zip(commands, envs, self.logs):
      with open(log, 'w') as f:
        self.procs.append(subprocess.Popen(
            cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=REPO))

  def log(self, i):
    return self.logs[i].read_text(errors='replace')

  def dump(self):
    return '\n'.join(f'===== process {i} (rc {p.poll()}) =====\n'
                     + self.log(i)[-6000:] for i, p in enumerate(self.procs))

  def wait_for(self, i, pattern, timeout):
    deadline = time.time() + timeout
    while time.time() < deadline:
      if re.search(pattern, self.log(i)):
        return
      if self.procs[i].poll() is not None:
        break
      time.sleep(0.2)
    self.kill()
    pytest.fail(f'process {i} never logged {pattern!r}\n{self.dump()}')

  def wait(self, timeout):
    deadline = time.time() + timeout
    try:
      for p in self.procs:
        p.wait(timeout=max(1.0, deadline - time.time()))
    except subprocess.TimeoutExpired:
      self.kill()
      pytest.fail(f'timeout after {timeout} s\n{self.dump()}')
    return [p.returncode for p in self.procs]

  def kill(self):
    for p in self.procs:
      if p.poll() is None:
        p.kill()
        p.wait()


def _main_group(workdir, config_flags, log_dir, name, nproc=2, devices=2):
  """`python3 -m l2m_jax.main` as `nproc` processes (docs/training.md)."""
  port = _free_port()
  commands, envs = [], []
  for pid in range(nproc):
    env = dict(os.environ, **conftest.compilation_env())
    env.update(JAX_NUM_CPU_DEVICES=str(devices),
               JAX_CPU_COLLECTIVES_IMPLEMENTATION='gloo',
               # Test speed only: XLA skips its slow optimisation passes.
               JAX_DISABLE_MOST_OPTIMIZATIONS='1')
    if nproc > 1:
      env.update(JAX_COORDINATOR_ADDRESS=f'localhost:{port}',
                 JAX_NUM_PROCESSES=str(nproc), JAX_PROCESS_ID=str(pid))
    commands.append([sys.executable, '-m', 'l2m_jax.main',
                     '--config=configs/tiny.py', f'--workdir={workdir}',
                     *config_flags])
    envs.append(env)
  return _Processes(commands, envs, log_dir, name)


def _flags(data, weights):
  flags = [f'--config.data_dir={data}', f'--config.inception_checkpoint='
           f'{weights}']
  flags += [f'--config.{k}={v}' for k, v in conftest.RUN_OVERRIDES.items()]
  return flags


def _max_diff(a, b):
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(la) == len(lb)
  return max(float(np.max(np.abs(np.asarray(x, np.float64)
                                 - np.asarray(y, np.float64))))
             for x, y in zip(la, lb))


@pytest.fixture(scope='module')
def two_process_run(tiny_run, tmp_path_factory):
  """SIGTERM to process 1 of a 2-process run, then the rerun to the end."""
  root = tmp_path_factory.mktemp('two_process')
  workdir = root / 'run'
  flags = _flags(tiny_run.data, tiny_run.weights)
  t0 = time.time()
  first = _main_group(workdir, flags, root, 'interrupted')
  try:
    # After 'Global batch' both processes are past jax.distributed's
    # start-up (its preemption service catches SIGTERM) and before step 1.
    first.wait_for(1, r'Global batch 4 over 4 devices \(2 processes\)', 300)
    os.kill(first.procs[1].pid, signal.SIGTERM)
    rcs_first = first.wait(RUN_TIMEOUT)
  finally:
    first.kill()
  steps_after_first = sorted(int(p.name) for p in (
      workdir / 'checkpoints').iterdir() if p.name.isdigit())
  t1 = time.time()
  second = _main_group(workdir, flags, root, 'resumed')
  try:
    rcs_second = second.wait(RUN_TIMEOUT)
  finally:
    second.kill()
  t2 = time.time()
  print(f'2-process run: interrupted part {t1 - t0:.0f} s, resumed part '
        f'{t2 - t1:.0f} s')
  return dict(workdir=workdir, first=first, second=second,
              rcs=(rcs_first, rcs_second), seconds=(t1 - t0, t2 - t1),
              steps_after_first=steps_after_first)


@pytest.mark.slow
def test_sigterm_to_one_process_stops_all_at_one_step(two_process_run):
  first = two_process_run['first']
  assert two_process_run['rcs'][0] == [0, 0], first.dump()
  stops = [re.findall(r'Preempted at step (\d+)', first.log(i))
           for i in range(2)]
  assert stops[0] and stops[0] == stops[1], first.dump()
  step = int(stops[0][0])
  assert 1 <= step < conftest.RUN_OVERRIDES['total_iters']
  # Exit status 0, not -SIGTERM: the signalled process caught it and saved.
  assert two_process_run['steps_after_first'] == [step]


@pytest.mark.slow
def test_rerun_resumes_and_finishes(two_process_run):
  second = two_process_run['second']
  assert two_process_run['rcs'][1] == [0, 0], second.dump()
  stop = re.findall(r'Preempted at step (\d+)',
                    two_process_run['first'].log(0))[0]
  for i in range(2):
    assert f'Resumed at step {stop} ' in second.log(i), second.dump()
  workdir = two_process_run['workdir']
  assert (workdir / 'samples' / '000004.png').is_file()
  # Process 1 writes no file: one TensorBoard event file per run, by the
  # main process; the lock names the main process.
  assert len(list(workdir.glob('events.out.tfevents.*'))) == 2


@pytest.mark.slow
def test_checkpoint_restores_and_equals_one_process(two_process_run,
                                                    tiny_run):
  """The final checkpoint restores (here on 2 devices of 1 process) and
  holds the parameters of the uninterrupted 1-process 4-device run.

  The all-reduce sums in another order across processes, and a GAN's
  gradient amplifies round-off over the steps (Adam's first moment, i.e.
  the last gradient with beta1 = 0, differs by up to 6e-4 relative); the
  parameters stay within 1e-5 (a repeated or skipped step would move them
  by ~1e-3) and the EMA within 1e-6.
  """
  from l2m_jax import checkpointing  # pylint: disable=g-import-not-at-top
  from l2m_jax import parallel  # pylint: disable=g-import-not-at-top
  from l2m_jax import train_l2m  # pylint: disable=g-import-not-at-top
  config = tiny_run.config
  models = train_l2m.create_models(config, ['neg', 'pos'])
  abstract = jax.eval_shape(lambda: train_l2m.create_train_state(
      config, models, jax.random.key(0)))
  mngr = checkpointing.make_manager(
      two_process_run['workdir'] / 'checkpoints', 2, 2)
  try:
    state, meta = checkpointing.restore_latest(
        mngr, abstract, parallel.replicated_sharding(parallel.make_mesh(2)))
  finally:
    mngr.close()
  assert meta['step'] == 4 and int(state.step) == 4
  state = parallel.unreplicate_to_host(state)
  params = _max_diff([getattr(state, n).params for n in
                      ('generator', 'style_encoder', 'discriminator')],
                     [getattr(tiny_run.state, n).params for n in
                      ('generator', 'style_encoder', 'discriminator')])
  ema = _max_diff(state.ema, tiny_run.state.ema)
  print(f'2 processes (interrupted, resumed) vs 1 process: max abs diff of '
        f'the parameters {params:.3g}, of the EMA {ema:.3g}')
  assert params <= 1e-5 and ema <= 1e-6


@pytest.mark.slow
def test_ema_export_and_fid_equal_one_process(two_process_run, tiny_run):
  from l2m_jax.convert import l2m as l2m_convert  # pylint: disable=g-import-not-at-top
  workdir = two_process_run['workdir']
  ours, config = l2m_convert.load_l2m_checkpoint(workdir / 'ema_export')
  ref, _ = l2m_convert.load_l2m_checkpoint(tiny_run.workdir / 'ema_export')
  assert list(config.domains) == ['neg', 'pos']
  err = _max_diff(ours, ref)
  print(f'EMA export, 2 processes vs 1 process: max abs diff {err:.3g}')
  assert err <= 1e-6
  # The real-image statistics: each process's share of the files, combined
  # across processes, equal the 1-process statistics up to the round-off of
  # the float32 features (the subprocesses compile with fewer XLA
  # optimisations; a lost or doubled share would move them by ~0.1).
  def real_stats(w):
    out = {}
    for meta in (w / 'fid_cache').glob('*.json'):
      folder = pathlib.Path(json.loads(meta.read_text())['folder']).name
      with np.load(meta.with_suffix('.npz')) as f:
        out[folder] = (f['mu'], f['sigma'])
    return out
  got_stats, want_stats = real_stats(workdir), real_stats(tiny_run.workdir)
  assert sorted(got_stats) == sorted(want_stats) == ['neg', 'pos']
  for d in want_stats:
    for a, b in zip(got_stats[d], want_stats[d]):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  # The edited images, gathered to and written by process 0, equal the
  # 1-process ones up to a flipped quantisation level where the float
  # round-off of the parameters (above) crosses a rounding boundary.
  from PIL import Image  # pylint: disable=g-import-not-at-top
  flips = 0
  for task in ('neg2pos', 'pos2neg'):
    names = sorted(p.name for p in (workdir / 'eval_000004' / task).iterdir())
    assert names == ['000.png', '001.png']
    for n in names:
      a = np.asarray(Image.open(workdir / 'eval_000004' / task / n), int)
      b = np.asarray(Image.open(tiny_run.workdir / 'eval_000004' / task / n),
                     int)
      assert np.abs(a - b).max() <= 1
      flips += int(np.sum(a != b))
  assert flips <= 0.01 * 4 * 32 * 32 * 3
  # So the FIDs agree closely: with 2 edited images in 2048 dimensions one
  # flipped level moves an FID by ~3e-5 (relative), the feature round-off
  # by ~1e-6.
  name = 'FID_00004_reference.json'
  got = json.loads((workdir / name).read_text())
  want = json.loads((tiny_run.workdir / name).read_text())
  assert set(got) == set(want) == {'FID_reference/neg2pos',
                                   'FID_reference/pos2neg',
                                   'FID_reference/mean'}
  print(f'{flips} quantisation flips in the 4 edited images')
  for k in want:
    print(f'{k}: 2 processes {got[k]!r}, 1 process {want[k]!r}')
    np.testing.assert_allclose(got[k], want[k], rtol=1e-5 if not flips
                               else 2e-4)


# ---------------------------------------------------------------------------
# Default suite: the toy step of test_parallel.py over 2 processes, the
# per-process inference share, and SIGTERM to one process.
# ---------------------------------------------------------------------------

_WORKER = textwrap.dedent("""
    import json, sys, time
    sys.path.insert(0, {repo!r})
    import jax
    jax.config.update('jax_num_cpu_devices', 2)
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    pid = int(sys.argv[1])
    jax.distributed.initialize('localhost:{port}', 2, pid)
    import numpy as np
    from l2m_jax import parallel
    from l2m_jax import training
    from tests import test_parallel as tp
    def say(tag, value):
      print(tag + ' ' + json.dumps(value), flush=True)
    mesh = parallel.make_mesh()
    assert jax.device_count() == 4 and jax.process_count() == 2
    # 1. Data-parallel training steps over both processes' devices.
    compiled = parallel.compile_step(tp._step, mesh, 'shard_map', num_args=1)
    state = compiled.put_state(tp._init())
    frozen = compiled.put_args({{'scale': np.float32(0.7)}})
    n = parallel.local_batch_size(8, mesh)
    for batch in tp._batches(3):
      local = {{k: v[pid * n:(pid + 1) * n] for k, v in batch.items()}}
      state, m = compiled(state, compiled.put_batch(local), frozen)
    out = parallel.unreplicate_to_host(compiled.get_state(state))
    say('STEPS', {{'w': out[0]['w'].tolist(),
                  'loss': float(compiled.get_metrics(m)['loss'])}})
    # 2. Inference on this process's share (FID, evaluation, editing):
    # map_batches on the local devices, rows gathered to process 0.
    data = np.arange(23 * 3, dtype=np.float32).reshape(23, 3)
    share = data[parallel.process_slice(len(data))]
    fn = jax.jit(lambda w, x: jax.numpy.tanh(x @ w))
    rows = parallel.map_batches(fn, share, batch_size=4,
                                args=(out[0]['w'][:3],))
    padded = np.zeros((parallel.max_share(len(data)),) + rows.shape[1:],
                      rows.dtype)
    padded[:len(rows)] = rows
    gathered = parallel.gather_to_main(padded, len(rows))
    say('SHARE', {{'rows': len(rows), 'gathered':
                  None if gathered is None else gathered.tolist()}})
    # 3. SIGTERM to one process: every process stops after the same step.
    with training.Preemption() as preempt:
      for step in range(1, 3001):
        state, m = compiled(state, compiled.put_batch(local), frozen)
        jax.block_until_ready(state)
        print(f'STEP {{step}}', flush=True)
        if preempt.should_stop(step):
          say('STOPPED', step)
          break
        time.sleep(0.02)
    jax.distributed.shutdown()
""")


def test_two_processes_train_share_and_stop_together(tmp_path):
  """2 processes x 2 CPU devices (gloo), as docs/training.md starts them.

  The data-parallel step equals the whole-batch reference; each process's
  share of an inference pass, gathered to process 0, equals the pass over
  all rows; SIGTERM to process 1 stops both processes after one and the
  same step, and both exit 0 (JAX's preemption service caught it).
  """
  from tests import test_parallel as tp  # pylint: disable=g-import-not-at-top
  script = tmp_path / 'worker.py'
  script.write_text(_WORKER.format(repo=REPO, port=_free_port()))
  env = dict(os.environ, **conftest.compilation_env())
  env['TF_CPP_MIN_LOG_LEVEL'] = '3'
  group = _Processes([[sys.executable, str(script), str(i)] for i in (0, 1)],
                     [env, env], tmp_path, 'toy')
  try:
    group.wait_for(1, r'STEP 3\b', 240)
    os.kill(group.procs[1].pid, signal.SIGTERM)
    rcs = group.wait(120)
  finally:
    group.kill()
  assert rcs == [0, 0], group.dump()

  def tagged(i, tag):
    return [json.loads(line[len(tag) + 1:]) for line in
            group.log(i).splitlines() if line.startswith(tag + ' ')]
  want_state, want_losses = tp._reference()
  for i in (0, 1):
    (got,) = tagged(i, 'STEPS')
    np.testing.assert_allclose(got['w'], want_state[0]['w'], atol=1e-6)
    np.testing.assert_allclose(got['loss'], want_losses[-1], rtol=1e-5)
  # 23 rows: shares of 12 and 11 rows, padded to the local batch.
  shares = [tagged(i, 'SHARE')[0] for i in (0, 1)]
  assert [s['rows'] for s in shares] == [12, 11]
  assert shares[1]['gathered'] is None
  data = np.arange(23 * 3, dtype=np.float32).reshape(23, 3)
  want = np.tanh(data.astype(np.float64) @ np.asarray(want_state[0]['w'],
                                                      np.float64)[:3])
  np.testing.assert_allclose(shares[0]['gathered'], want, atol=1e-5)
  stops = [tagged(i, 'STOPPED') for i in (0, 1)]
  assert stops[0] and stops[0] == stops[1], group.dump()
  # The signal came after step 3 of process 1; the stop step is later, the
  # same on both, and no process ran past it.
  print(f'SIGTERM to process 1 after its step 3: both stopped after step '
        f'{stops[0][0]}')
  assert stops[0][0] >= 3
  for i in (0, 1):
    steps = re.findall(r'^STEP (\d+)$', group.log(i), re.M)
    assert int(steps[-1]) == stops[0][0]
