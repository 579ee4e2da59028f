"""Habits shared by every command-line tool (docs/reliability.md#exit-codes).

* A user error is one line `error: ...` on stderr and exit status 2
  (`errors.EXIT_USER_ERROR`), never a traceback.
* An output that already holds something is never mixed with new results:
  `check_out_dir` / `check_out_file` refuse it unless `--overwrite` is given.
* The absl entry points (`l2m_jax.main`, `l2m_jax.demo`) parse their flags
  with `parse_flags`: a typo in a `--config.<field>` override or a wrong
  `--config` path is one line with the closest match, not a traceback from
  inside ml_collections.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
import pathlib
import sys
import warnings
from typing import Any, Callable, Sequence

from l2m_jax import errors


class OutputExistsError(FileExistsError):
  """An output path holds data and `--overwrite` was not given."""


def run_reporting_errors(fn: Callable[..., Any], *args: Any,
                         prefix: str = 'error', log: bool = True) -> Any:
  """Calls fn(*args); a user error or a divergence exits with its code.

  A user error (`errors.is_user_error`) prints `<prefix>: <message>` and
  exits 2, a divergence exits 3 (with `log`, the error also goes to the
  absl log); any other exception is a bug and keeps its traceback.
  """
  try:
    return fn(*args)
  except Exception as e:  # pylint: disable=broad-except
    if errors.is_user_error(e):
      code = errors.EXIT_USER_ERROR
    elif errors.is_divergence(e):
      code = errors.EXIT_DIVERGED
    else:
      raise
    if log:
      from absl import logging  # pylint: disable=g-import-not-at-top
      logging.error('%s: %s', type(e).__name__, e)
    print(f'{prefix}: {e}', file=sys.stderr)
    sys.exit(code)


def fail(message: str) -> int:
  """Prints `error: message` to stderr; returns the user-error exit code."""
  print(f'error: {message}', file=sys.stderr)
  return errors.EXIT_USER_ERROR


def script_errors() -> tuple[type[BaseException], ...]:
  """What `scripts/*.py` report as user errors: bad paths, files, values."""
  from l2m_jax import image_io  # pylint: disable=g-import-not-at-top
  from l2m_jax.convert import torch_to_flax  # pylint: disable=g-import-not-at-top
  return (FileNotFoundError, NotADirectoryError, FileExistsError, ValueError,
          torch_to_flax.ConversionError, image_io.ImageReadError)


def run_script(fn: Callable[..., int], *args: Any) -> int:
  """`fn(*args)`, a script's body, -> its exit status.

  A user error (`script_errors`) prints `error: <message>` (no traceback)
  and gives 2; any other exception is a bug and keeps its traceback.
  """
  try:
    return fn(*args)
  except script_errors() as e:
    return fail(str(e))


def warnings_printed(fn: Callable[..., Any], *args: Any, **kwargs: Any
                     ) -> Any:
  """`fn(*args, **kwargs)`, its warnings printed as `warning: <message>`."""
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    result = fn(*args, **kwargs)
  for w in caught:
    print(f'warning: {w.message}', file=sys.stderr)
  return result


def check_out_dir(path: str | os.PathLike, overwrite: bool,
                  flag: str = '--out') -> pathlib.Path:
  """Refuses a non-empty output directory (or a file) without --overwrite.

  Args:
    path: the output directory; it need not exist.
    overwrite: the value of --overwrite.
    flag: the option's name, for the message.

  Returns:
    The path.

  Raises:
    OutputExistsError: `path` is a file, or a non-empty directory and
      `overwrite` is False.
  """
  path = pathlib.Path(path)
  if path.exists() and not path.is_dir():
    raise OutputExistsError(f'{flag} {path}: is a file, expected a directory')
  if path.is_dir() and any(path.iterdir()) and not overwrite:
    raise OutputExistsError(
        f'{flag} {path}: already exists and is not empty; pass --overwrite '
        'to write into it (files of the same name are replaced)')
  return path


def check_out_file(path: str | os.PathLike | None, overwrite: bool,
                   flag: str) -> None:
  """Refuses an existing output file without --overwrite (None: no output)."""
  if path is None:
    return
  path = pathlib.Path(path)
  if path.is_dir():
    raise OutputExistsError(f'{flag} {path}: is a directory, expected a file')
  if path.exists() and not overwrite:
    raise OutputExistsError(
        f'{flag} {path}: already exists; pass --overwrite to replace it')


def _closest(word: str, choices: Sequence[str]) -> str:
  match = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.5)
  return f' (did you mean {match[0]}?)' if match else ''


def _config_arg(argv: Sequence[str]) -> str | None:
  """The value of --config in argv, if given."""
  for i, a in enumerate(argv):
    if a.startswith('--config='):
      return a.split('=', 1)[1]
    if a == '--config' and i + 1 < len(argv):
      return argv[i + 1]
  return None


def _load_config(value: str):
  """Imports a config file `path[:arg]` and returns get_config(arg)."""
  path, _, arg = value.partition(':')
  module_spec = importlib.util.spec_from_file_location('_l2m_cli_config',
                                                       path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def config_problem(argv: Sequence[str], default: str | None = None
                   ) -> str | None:
  """A one-line description of a bad --config path or override, or None."""
  value = _config_arg(argv) or default
  if value is None:
    return None
  path = pathlib.Path(value.partition(':')[0])
  if path.is_dir():
    return f'--config={value}: is a directory, expected a config .py file'
  if not path.is_file():
    folder = path.parent if str(path.parent) else pathlib.Path('.')
    names = ([p.name for p in folder.iterdir() if p.suffix == '.py']
             if folder.is_dir() else [])
    match = difflib.get_close_matches(path.name, names, n=1, cutoff=0.5)
    hint = f' (did you mean {folder / match[0]}?)' if match else ''
    return f'--config={value}: no such config file{hint}'
  try:
    config = _load_config(value)
  except Exception as e:  # pylint: disable=broad-except
    return (f'--config={value}: the config file fails to load: '
            f'{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""}')
  for a in argv:
    if not a.startswith('--config.'):
      continue
    dotted = a[len('--config.'):].split('=', 1)[0]
    node = config
    for depth, key in enumerate(dotted.split('.')):
      keys = list(node.keys()) if hasattr(node, 'keys') else []
      if key not in keys:
        where = '.'.join(dotted.split('.')[:depth]) or 'the config'
        return (f'--config.{dotted}: {where} has no field {key!r}'
                f'{_closest(key, keys)}')
      node = node[key]
  return None


def parse_flags(argv: list[str], default_config: str | None = None
                ) -> list[str]:
  """absl `flags_parser` for `app.run`: flag mistakes are one line, exit 2.

  Args:
    argv: the command line.
    default_config: the --config default, when the flag has one.

  Returns:
    The remaining (positional) arguments, as absl's parser returns them.
  """
  from absl import flags  # pylint: disable=g-import-not-at-top
  problem = config_problem(argv[1:], default_config)
  if problem is None:
    try:
      rest = flags.FLAGS(argv)
      if 'config' in flags.FLAGS:
        _ = flags.FLAGS.config  # a config that failed to load raises here
      return rest
    except Exception as e:  # pylint: disable=broad-except
      text = str(e).replace('\\n', ' ')
      if len(text) > 1 and text[0] == text[-1] and text[0] in '\'"':
        text = text[1:-1]  # a KeyError's repr
      problem = ' '.join(text.split())
  print(f'error: {problem}', file=sys.stderr)
  sys.exit(errors.EXIT_USER_ERROR)


def exit_on_config_problem(argv: Sequence[str], default_config: str) -> None:
  """For a config flag with a default, whose overrides parse at definition.

  `config_flags.DEFINE_config_file` with a default reads the `--config.*`
  overrides from `sys.argv` when it is defined; call this first so that a
  typo there is one line and exit 2 as well.
  """
  problem = config_problem(argv[1:], default_config)
  if problem is not None:
    sys.exit(fail(problem))
