"""How often unbounded dispatch deadlocks XLA's CPU client, with and without a window.

Each run is a fresh process with `--devices` virtual CPU devices: a loop of
`--steps` data-parallel steps (`parallel.compile_step`: a few matrix products
per device, then a `pmean`) that reads no result until the end, dispatching
either without limit (`--window 0`) or through `parallel.DispatchWindow`.
A deadlocked run is aborted by XLA (its all-reduce rendezvous times out) and
counted. docs/reliability.md ("Bounded dispatch") has the mechanism and the
measurements.

  python3 scripts/check_dispatch.py --window 0 --runs 5
  python3 scripts/check_dispatch.py --window 4 --runs 5

Exit status: 0 when every run finished, 1 when any aborted or failed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--window', type=int, default=0,
                 help='steps allowed in flight; 0 = no limit')
  p.add_argument('--runs', type=int, default=5, help='fresh processes')
  p.add_argument('--steps', type=int, default=600, help='steps per run')
  p.add_argument('--devices', type=int, default=4,
                 help='virtual CPU devices (a deadlock needs at least as '
                 'many devices as cores)')
  p.add_argument('--width', type=int, default=1024,
                 help='matrix size; the step must compute for longer than '
                 'it takes to dispatch')
  p.add_argument('--batch', type=int, default=256, help='global batch rows')
  p.add_argument('--timeout', type=int, default=600,
                 help='seconds before a run is killed')
  p.add_argument('--child', action='store_true', help=argparse.SUPPRESS)
  return p


def _child(args) -> None:
  sys.path.insert(0, REPO_ROOT)
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  jax.config.update('jax_num_cpu_devices', args.devices)
  from l2m_jax import parallel  # pylint: disable=g-import-not-at-top

  def step(w, batch):
    x = batch['x']
    for _ in range(3):
      x = jnp.tanh(x @ w)
    g = jax.lax.pmean(jnp.mean(x, 0), parallel.DATA_AXIS)
    return w - 1e-3 * g[None, :], {'g': jnp.sum(g)}

  mesh = parallel.make_mesh()
  compiled = parallel.compile_step(step, mesh)
  state = compiled.put_state(np.eye(args.width, dtype=np.float32) * 0.5)
  rng = np.random.default_rng(0)
  window = parallel.DispatchWindow(args.window) if args.window else None
  t0 = time.perf_counter()
  metrics = None
  for _ in range(args.steps):
    x = rng.standard_normal((args.batch, args.width), np.float32)
    state, metrics = compiled(state, compiled.put_batch({'x': x}))
    if window is not None:
      window.push(metrics)
  value = float(compiled.get_metrics(metrics)['g'])
  print(f'finished {args.steps} steps in {time.perf_counter() - t0:.1f} s '
        f'(last metric {value:.6f})', flush=True)


def main(argv=None) -> int:
  args = _parser().parse_args(argv)
  if args.child:
    _child(args)
    return 0
  if args.window < 0 or args.runs < 1 or args.steps < 1 or args.devices < 1:
    print('check_dispatch: --window must be >= 0; --runs, --steps and '
          '--devices >= 1', file=sys.stderr)
    return 2
  child = [sys.executable, os.path.abspath(__file__), '--child',
           '--window', str(args.window), '--steps', str(args.steps),
           '--devices', str(args.devices), '--width', str(args.width),
           '--batch', str(args.batch)]
  env = {**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '3'}
  cores = (len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity')
           else os.cpu_count())
  print(f'{args.runs} runs of {args.steps} steps on {args.devices} CPU '
        f'devices ({cores} cores), window '
        f'{args.window or "none (unbounded dispatch)"}', flush=True)
  failed = 0
  for i in range(args.runs):
    t0 = time.perf_counter()
    try:
      proc = subprocess.run(child, capture_output=True, text=True, env=env,
                            timeout=args.timeout, check=False)
      rc, out = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired:
      rc, out = None, ''
    took = time.perf_counter() - t0
    if rc == 0:
      print(f'  run {i + 1}: {out.strip().splitlines()[-1]}', flush=True)
      continue
    failed += 1
    if rc is None:
      why = f'still running after {args.timeout} s (killed)'
    elif 'Termination timeout' in out:
      why = f'aborted by XLA: all-reduce rendezvous timed out (exit {rc})'
    else:
      why = f'failed (exit {rc}): {out.strip()[-300:]}'
    print(f'  run {i + 1}: {why}, after {took:.0f} s', flush=True)
  print(f'{args.runs - failed} of {args.runs} runs finished', flush=True)
  return 1 if failed else 0


if __name__ == '__main__':
  sys.exit(main())
