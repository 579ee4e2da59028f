"""RetinaFace (MobileNet-0.25) state_dict -> `l2m_jax.models.retinaface`.

Source: the `mobilenet0.25_Final.pth` file of biubug6/Pytorch_Retinaface
(also shipped inside other projects' face extractors): a bare state_dict of
300 entries (253 tensors converted + 47 BatchNorm `num_batches_tracked`
counters, 433,343 values). As upstream's `load_model` does, a
`{'state_dict': ...}` wrapper and a DataParallel `module.` prefix are
accepted.

Mapping (mechanical; see the table in `l2m_jax.models.retinaface`): the
Flax path is derived from the torch key by joining a list index to the
container before it (`stage1.3` -> `stage1_3`, `ClassHead.0` ->
`ClassHead_0`), naming a Sequential index inside a conv-BN block
`layers_<i>`, and renaming leaves: conv `weight` -> `kernel` (OIHW -> HWIO),
BatchNorm `weight`/`bias` -> params `scale`/`bias`, `running_mean` /
`running_var` -> batch_stats `mean` / `var`. `num_batches_tracked` is
dropped (eval-mode BatchNorm never reads it).

Every expected key must be present with its exact shape; all missing keys,
unexpected keys and shape mismatches are reported together in one
`ConversionError`.
"""

from __future__ import annotations

import os
import pathlib
import re
from typing import Any, Mapping

import numpy as np

from l2m_jax.convert import torch_to_flax as t2f

FORMAT = 'retinaface'
CONFIG = {'name': 'mobilenet0.25', 'min_sizes': [[16, 32], [64, 128],
                                                  [256, 512]],
          'steps': [8, 16, 32], 'variance': [0.1, 0.2], 'in_channel': 32,
          'out_channel': 64}
_NBT = 'num_batches_tracked'
_LISTS = ('stage1', 'stage2', 'stage3', 'ClassHead', 'BboxHead',
          'LandmarkHead')
_LEAF = {('params', 'kernel'): 'weight', ('params', 'bias'): 'bias',
         ('params', 'scale'): 'weight', ('batch_stats', 'mean'):
         'running_mean', ('batch_stats', 'var'): 'running_var'}


def _template() -> dict[str, Any]:
  import jax  # pylint: disable=g-import-not-at-top
  from l2m_jax.models import retinaface  # pylint: disable=g-import-not-at-top
  return jax.eval_shape(retinaface.init_variables)


def torch_key(flax_path: str) -> str:
  """The upstream state_dict key of a Flax variables path."""
  collection, *mods, leaf = flax_path.split('/')
  parts = []
  for m in mods:
    match = re.fullmatch(r'(\w+?)_(\d+)', m)
    if m.startswith('layers_'):
      parts.append(m[len('layers_'):])
    elif match and match.group(1) in _LISTS:
      parts += [match.group(1), match.group(2)]
    else:
      parts.append(m)
  return '.'.join(parts + [_LEAF[(collection, leaf)]])


def _torch_shape(flax_path: str, shape: tuple) -> tuple:
  if flax_path.endswith('/kernel'):  # HWIO -> OIHW
    h, w, i, o = shape
    return (o, i, h, w)
  return tuple(shape)


def key_map() -> dict[str, str]:
  """torch key -> Flax path for the 253 converted tensors."""
  return {torch_key(p): p for p in t2f.flatten(_template())}


def expected_shapes() -> dict[str, tuple]:
  """torch key -> shape for all 300 state_dict entries (counters: ())."""
  shapes = {}
  for path, leaf in t2f.flatten(_template()).items():
    key = torch_key(path)
    shapes[key] = _torch_shape(path, tuple(leaf.shape))
    if path.startswith('batch_stats/') and path.endswith('/mean'):
      shapes[key.rsplit('.', 1)[0] + '.' + _NBT] = ()
  return shapes


def unwrap_state_dict(obj: Any, source: str) -> dict[str, Any]:
  """A bare state_dict from a file's content (wrapper and prefix removed)."""
  if not isinstance(obj, Mapping):
    raise t2f.ConversionError(
        source, note='  expected a RetinaFace state_dict (a mapping of '
        f'parameter names to tensors), found {type(obj).__name__}')
  if 'state_dict' in obj:
    obj = obj['state_dict']
    if not isinstance(obj, Mapping):
      raise t2f.ConversionError(
          source, note="  'state_dict' must map parameter names to tensors, "
          f'found {type(obj).__name__}')
  # Upstream `remove_prefix`: strip a leading 'module.' from every key.
  return {(k[len('module.'):] if str(k).startswith('module.') else str(k)): v
          for k, v in obj.items()}


def convert_state_dict(state_dict: Mapping[str, Any], source: str
                       ) -> tuple[dict[str, Any], dict[str, str]]:
  """Strictly converts a RetinaFace mobile0.25 state_dict.

  Args:
    state_dict: torch key -> tensor (already unwrapped).
    source: a name for error messages.

  Returns:
    (variables {'params', 'batch_stats'} of float32 numpy arrays,
     key_map {torch_key: flax_path}).

  Raises:
    ConversionError: listing every missing key, unexpected key and shape
      mismatch at once (num_batches_tracked counters may be absent).
  """
  expected = expected_shapes()
  optional = [k for k in expected if k.endswith(_NBT)]
  t2f.check_state_dict(source, state_dict, expected, optional=optional)
  variables: dict[str, Any] = {}
  kmap = key_map()
  for key, path in kmap.items():
    arr = t2f.to_numpy(state_dict[key]).astype(np.float32)
    if path.endswith('/kernel'):
      arr = t2f.conv_kernel(arr)
    t2f.set_path(variables, path, np.ascontiguousarray(arr))
  return variables, kmap


def convert_checkpoint(path: str | os.PathLike
                       ) -> tuple[dict[str, Any], dict[str, Any]]:
  """Reads and converts a RetinaFace `.pth` file.

  Returns:
    (variables, meta) with meta = {format, config, source {path, sha256},
    key_map, ignored (the counters dropped)}.

  Raises:
    FileNotFoundError: no such file.
    ConversionError: not a torch file, or keys/shapes do not match.
  """
  source = str(path)
  state_dict = unwrap_state_dict(t2f.load_torch_file(path), source)
  variables, kmap = convert_state_dict(state_dict, source)
  meta = {
      'format': FORMAT,
      'config': dict(CONFIG),
      'source': t2f.source_meta(source, absolute=True),
      'key_map': kmap,
      'ignored': sorted(k for k in state_dict if k not in kmap),
  }
  return variables, meta


def save_retinaface(path: str | os.PathLike, out_dir: str | os.PathLike,
                    overwrite: bool = False) -> dict[str, Any]:
  """Converts a `.pth` file and writes `<out_dir>/meta.json` + variables."""
  return t2f.convert_to_folder(convert_checkpoint, path, out_dir, overwrite)


def load_retinaface(path: str | os.PathLike
                    ) -> tuple[dict[str, Any], dict[str, Any]]:
  """Loads detector variables from a converted directory or a `.pth` file.

  A directory must have been written by `save_retinaface` /
  `scripts/convert_checkpoint.py --format retinaface` (checked key by key
  against the model); a file is converted in memory.

  Returns:
    (variables, meta).
  """
  path = pathlib.Path(path)
  if path.is_dir():
    t2f.read_meta(path, FORMAT, 'convert with scripts/convert_checkpoint.py '
                  '--format retinaface')
    return t2f.load_converted(path, _template())
  return convert_checkpoint(path)
