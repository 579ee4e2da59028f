"""Restart time of a training run with and without the compilation cache.

  python3 scripts/benchmark_restart.py [--config configs/tiny.py] [--workdir DIR]

Makes a small random folder dataset, trains `--steps` steps (the first run
compiles and, with the cache on, writes the compiled step to
`<workdir>/xla_cache`), then resumes the run twice for `--steps` more steps
each: once with `--config.compilation_cache_dir=` (off: the step is compiled
again) and once with the cache (the step is loaded). Prints the wall time of
each process (`python3 -m l2m_jax.main`, start to exit) and of its
compilation as logged. Needs the training stack (tensorflow, tfds, clu,
ml_collections).
"""

import argparse
import os
import pathlib
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]


def _make_data(root: pathlib.Path) -> None:
  import numpy as np  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  for split, n in (('train', 4), ('val', 1)):
    for domain in ('neg', 'pos'):
      d = root / split / domain
      d.mkdir(parents=True, exist_ok=True)
      for i in range(n):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), np.uint8)).save(
            d / f'{i}.png')


def _run(config, workdir, data, total, extra):
  env = {k: v for k, v in os.environ.items()
         if k != 'JAX_COMPILATION_CACHE_DIR'}
  env.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
  cmd = [sys.executable, '-m', 'l2m_jax.main', f'--config={config}',
         f'--workdir={workdir}', f'--config.data_dir={data}',
         f'--config.total_iters={total}', '--config.save_every=1000',
         '--config.sample_every=1000', '--config.check_files=False'] + extra
  t0 = time.perf_counter()
  proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True,
                        text=True, check=False)
  wall = time.perf_counter() - t0
  if proc.returncode:
    print(proc.stderr[-4000:], file=sys.stderr)
    raise SystemExit(f'training run failed (exit {proc.returncode})')
  return wall


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--config', default='configs/tiny.py')
  p.add_argument('--workdir', default=None,
                 help='kept when given (default: a temporary folder)')
  p.add_argument('--steps', type=int, default=2)
  args = p.parse_args(argv)
  with tempfile.TemporaryDirectory() as tmp:
    root = pathlib.Path(args.workdir or tmp)
    data = root / 'data'
    _make_data(data)
    work = root / 'run'
    s = args.steps
    first = _run(args.config, work, data, s, [])
    off = _run(args.config, work, data, 2 * s,
               ['--config.compilation_cache_dir='])
    on = _run(args.config, work, data, 3 * s, [])
    cached = sum(1 for _ in (work / 'xla_cache').iterdir())
  print(f'config {args.config}; {s} steps per run; {cached} cached programs')
  print(f'first run (compiles, fills the cache): {first:7.1f} s')
  print(f'restart, cache off (compiles again):   {off:7.1f} s')
  print(f'restart, cache on (loads the step):    {on:7.1f} s')
  print(f'restart saving: {off - on:.1f} s ({off / on:.2f}x)')
  return 0


if __name__ == '__main__':
  sys.exit(main())
