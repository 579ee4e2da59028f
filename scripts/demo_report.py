"""Markdown tables for docs/demo.md from demo runs' metrics.json.

  python3 scripts/demo_report.py runs/demo                  # one run
  python3 scripts/demo_report.py full=/tmp/abl_full nomask=/tmp/abl_nomask ...

An argument is a demo workdir or a metrics.json file, optionally prefixed
with `label=` (default label: the workdir's name). One run prints the
per-degree table with the exact counterfactual, the locality targets
(l2m_jax.demo.TARGETS) and the stage timings; several runs print one
ablation row each. Exit status 2 when a file is missing or not a demo's
metrics.json.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import json  # pylint: disable=g-import-not-at-top,wrong-import-position
import pathlib  # pylint: disable=g-import-not-at-top,wrong-import-position


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else list(argv)
  if not argv or argv[0] in ('-h', '--help'):
    print(__doc__)
    return 0 if argv else 2
  from l2m_jax import demo  # pylint: disable=g-import-not-at-top
  runs = []
  for arg in argv:
    label, _, path = arg.rpartition('=')
    path = pathlib.Path(path)
    file = path / 'metrics.json' if path.is_dir() else path
    label = label or (path.name if path.is_dir() else path.parent.name)
    try:
      metrics = json.loads(file.read_text())
      metrics['edits']['degree=1']['attribute_accuracy']  # pylint: disable=pointless-statement
    except FileNotFoundError:
      print(f'error: {file}: not found (a demo workdir or its metrics.json)',
            file=sys.stderr)
      return 2
    except (ValueError, KeyError, TypeError) as e:
      print(f'error: {file}: not a demo metrics.json ({e!r})',
            file=sys.stderr)
      return 2
    runs.append((label, metrics))
  print(demo.report_markdown(runs), end='')
  return 0


if __name__ == '__main__':
  sys.exit(main())
