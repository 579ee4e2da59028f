"""Exit codes of the command-line tools, and which errors are the user's.

One convention for every CLI (`python3 -m l2m_jax.main`, `l2m_jax.demo`,
`scripts/*.py`; docs/reliability.md):

  0  success; also a training run stopped by SIGTERM or a preemption notice
     after writing its checkpoint (rerun the command to continue)
  1  an unexpected error (a bug: the traceback is printed), or, for
     scripts/edit.py, some inputs skipped as unreadable
  2  a user error: bad path, data, checkpoint, config value or flag, or a
     workdir held by another live run; one message naming the file, key or
     field, no traceback
  3  training diverged: a non-finite loss or state; nothing non-finite was
     saved and the last good checkpoint and export are intact
"""

import re
import sys

EXIT_OK = 0
EXIT_USER_ERROR = 2
EXIT_DIVERGED = 3


def is_user_error(e: BaseException) -> bool:
  """Errors caused by the user's paths, data, checkpoints or config values."""
  from l2m_jax import checkpointing, image_io  # pylint: disable=g-import-not-at-top
  from l2m_jax.convert import torch_to_flax  # pylint: disable=g-import-not-at-top
  if isinstance(e, (image_io.ImageReadError,
                    torch_to_flax.ConversionError, FileNotFoundError,
                    NotADirectoryError, FileExistsError,
                    checkpointing.CheckpointError,
                    checkpointing.WorkdirLockedError)):
    return True
  # A DatasetError can only come from an imported input pipeline; asking
  # without importing it keeps tensorflow out of the tools that need none.
  pipeline = sys.modules.get('l2m_jax.input_pipeline')
  if pipeline is not None and isinstance(e, pipeline.DatasetError):
    return True
  # Config validation messages start with the field: "batch_size=3: ...",
  # or with the model config's name.
  return isinstance(e, ValueError) and bool(
      re.match(r'^((config\.)?[a-z_][a-z0-9_.]*(=| is | must )|'
               r'L2MModelConfig: )', str(e)))


def is_divergence(e: BaseException) -> bool:
  """Training stopped on NaN/inf (training.NonFiniteError)."""
  from l2m_jax import training  # pylint: disable=g-import-not-at-top
  return isinstance(e, training.NonFiniteError)
