"""Which exceptions are the user's mistakes (reported without a traceback)."""

import re


def is_user_error(e: BaseException) -> bool:
  """Errors caused by the user's paths, data, checkpoints or config values."""
  from l2m_jax import image_io, input_pipeline  # pylint: disable=g-import-not-at-top
  from l2m_jax.convert import torch_to_flax  # pylint: disable=g-import-not-at-top
  if isinstance(e, (input_pipeline.DatasetError, image_io.ImageReadError,
                    torch_to_flax.ConversionError, FileNotFoundError,
                    NotADirectoryError, FileExistsError)):
    return True
  # Config validation messages start with the field: "batch_size=3: ...".
  return isinstance(e, ValueError) and bool(
      re.match(r'^(config\.)?[a-z_][a-z0-9_]*(=| is | must )', str(e)))
