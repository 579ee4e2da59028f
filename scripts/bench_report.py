"""Prints the one table of a benchmark JSON (scripts/gpu_benchmarks.sh).

  python3 scripts/bench_report.py gpu_benchmarks.json

Rows pair JAX and torch on the same benchmark, size, batch and dtype; the
environment (machine, load, versions) of each script run is printed first.
Exits with status 1 when the file holds no JAX row.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_util  # pylint: disable=g-import-not-at-top,wrong-import-position


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  if len(argv) != 1:
    print('usage: bench_report.py RESULTS.json', file=sys.stderr)
    return 2
  try:
    with open(argv[0]) as f:
      data = json.load(f)
  except (OSError, ValueError) as e:
    print(f'error: {argv[0]}: {e}', file=sys.stderr)
    return 2
  for env in data.get('environments', []):
    print('environment: ' + ', '.join(f'{k}={v}' for k, v in env.items()))
  rows = data.get('rows', [])
  print(bench_util.format_table(rows))
  peaks = sorted({f'{r["device"]} {r["dtype"]}: {r["peak_tflops"]} TFLOP/s '
                  f'({r["peak_source"]})' for r in rows})
  print('MFU peaks: ' + '; '.join(peaks))
  return 0 if any(r['framework'] == 'jax' for r in rows) else 1


if __name__ == '__main__':
  sys.exit(main())
