"""Subprocess environments without the data stack, as on a bare GPU image.

`env_without_data_stack(tmp)` returns environment variables under which
`import tensorflow`, `tensorflow_datasets`, `clu` and `ml_collections` fail
with ImportError: a folder of packages with those names, each raising
ImportError when imported, goes first on PYTHONPATH.
"""

from __future__ import annotations

import os
import pathlib

from tests import conftest

BLOCKED = ('tensorflow', 'tensorflow_datasets', 'clu', 'ml_collections')


def env_without_data_stack(tmp: pathlib.Path) -> dict[str, str]:
  """os.environ plus a PYTHONPATH that blocks the BLOCKED packages."""
  blocker = pathlib.Path(tmp) / 'blocked_site'
  for name in BLOCKED:
    pkg = blocker / name
    pkg.mkdir(parents=True, exist_ok=True)
    (pkg / '__init__.py').write_text(
        f'raise ImportError("{name} is blocked: not on the GPU image")\n')
  env = dict(os.environ)
  env.update(conftest.compilation_env())
  env['PYTHONPATH'] = os.pathsep.join(
      [str(blocker), str(conftest.REPO_ROOT)] +
      ([env['PYTHONPATH']] if env.get('PYTHONPATH') else []))
  env.pop('XLA_FLAGS', None)
  # Test speed only: XLA skips its slow optimisation passes.
  env['JAX_DISABLE_MOST_OPTIMIZATIONS'] = '1'
  return env
