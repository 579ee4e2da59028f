"""Converter for the two Inception-V3 weight files used by FID.

* torchvision layout, `inception_v3_google-1a9a5a14.pth` (or the re-serialised
  `inception_v3_google-0cc3c7bd.pth`): ImageNet classification weights, 1000
  classes, with `AuxLogits.*`. Used by the L2M-GAN / StarGAN v2 protocol.
* pytorch-fid, `pt_inception-2015-12-05-6726825d.pth`: the TF FID Inception,
  1008 classes, no AuxLogits. Used by the standard (pytorch-fid) protocol.

Both hold the same 94 BasicConv2d prefixes
(docs/architecture.md#ckpt-inception). `fc.*`,
`AuxLogits.*` and `*.num_batches_tracked` are dropped. The remaining keys
must equal the 470 feature-extractor keys exactly, with the shapes the Flax
model expects; otherwise one `ConversionError` lists every problem. The file
kind is detected from `fc.weight` (1000 rows + AuxLogits: torchvision; 1008:
pytorch-fid) and recorded, but the pooling rules are chosen by the protocol,
never guessed from the weights. Weights are never downloaded.

Files are read with `torch.load(weights_only=True)` only, whatever their
name or hash: both release files (pytorch-fid's is in the legacy, pre-zip
serialisation) are plain dicts of tensors, which that loader reads. A file
it refuses gets an error with a one-off torch command to re-save it.

Torch key -> Flax path (module names equal, see `l2m_jax.models.inception`):
  P.conv.weight       [O, I, kH, kW] -> params/P/conv/kernel [kH, kW, I, O]
  P.bn.weight / bias                 -> params/P/bn/scale / bias
  P.bn.running_mean / running_var    -> batch_stats/P/bn/mean / var
"""

from __future__ import annotations

import os
import pathlib
import re
from typing import Any, Mapping

import numpy as np

from l2m_jax.convert import torch_to_flax as t2f
from l2m_jax.models import inception as inception_lib

FORMAT = 'inception'
KIND_TORCHVISION = 'torchvision'
KIND_FID = 'fid'

# The release files. torch-hub file names end in the first 8 hex digits of the
# file's SHA-256 (checked by `check_hub_name`). Informative only: no hash
# makes a file trusted enough to unpickle (`_load_pth`).
KNOWN_FILES = {
    '1a9a5a14': ('inception_v3_google-1a9a5a14.pth', KIND_TORCHVISION),
    '0cc3c7bd': ('inception_v3_google-0cc3c7bd.pth', KIND_TORCHVISION),
    '6726825d': ('pt_inception-2015-12-05-6726825d.pth', KIND_FID),
}
_HUB_NAME = re.compile(r'-([0-9a-f]{8})\.pth$')

NO_DOWNLOAD_HELP = (
    'Inception weights are never downloaded by l2m_jax; pass a local file. '
    'The stargan_v2 / l2m_official protocol needs torchvision\'s '
    'inception_v3_google-1a9a5a14.pth (or -0cc3c7bd.pth); the standard / '
    'pytorch_fid protocol needs pytorch-fid\'s '
    'pt_inception-2015-12-05-6726825d.pth. Either the raw .pth or a folder '
    'written by `python3 scripts/fid.py --weights FILE.pth --convert-to DIR` '
    'is accepted (see docs/fid.md).')


def _flax_conv_prefixes(template: Mapping[str, Any]) -> dict[str, tuple]:
  """Flax conv paths 'Mixed_5b/branch1x1' -> kernel shape, from the template."""
  out = {}
  for path, leaf in t2f.flatten(template['params']).items():
    if path.endswith('/conv/kernel'):
      out[path[:-len('/conv/kernel')]] = tuple(leaf.shape)
  return out


def expected_keys() -> dict[str, tuple]:
  """The 470 torch feature-extractor keys -> shapes
  (docs/architecture.md#ckpt-inception)."""
  template = inception_lib.variables_template('torchvision')
  expected = {}
  for prefix, (kh, kw, cin, cout) in _flax_conv_prefixes(template).items():
    p = prefix.replace('/', '.')
    expected[f'{p}.conv.weight'] = (cout, cin, kh, kw)
    for name in ('weight', 'bias', 'running_mean', 'running_var'):
      expected[f'{p}.bn.{name}'] = (cout,)
  return expected


def _is_ignored(key: str) -> bool:
  return (key.startswith('AuxLogits.') or key.startswith('fc.')
          or key.endswith('.num_batches_tracked'))


def detect_kind(state_dict: Mapping[str, Any]) -> str | None:
  """'torchvision', 'fid' or None (unknown), from fc and AuxLogits."""
  if 'fc.weight' not in state_dict:
    return None
  rows = tuple(t2f.to_numpy(state_dict['fc.weight']).shape)[0]
  has_aux = any(k.startswith('AuxLogits.') for k in state_dict)
  if rows == 1000 and has_aux:
    return KIND_TORCHVISION
  if rows == 1008 and not has_aux:
    return KIND_FID
  return None


def convert_state_dict(state_dict: Mapping[str, Any], source: str = 'state_dict'
                       ) -> tuple[dict[str, Any], dict[str, Any]]:
  """torch state_dict -> ({params, batch_stats}, info).

  Args:
    state_dict: key -> tensor (torch or numpy), as in either weights file.
    source: a name for error messages.

  Returns:
    (variables as nested numpy float32 dicts, info) where info has `kind`,
    `key_map` (torch key -> Flax path) and `ignored` (sorted dropped keys).

  Raises:
    ConversionError: listing all missing, unexpected and mismatched keys.
  """
  if not isinstance(state_dict, Mapping):
    raise t2f.ConversionError(
        source, note=f'  expected a state_dict (a mapping of key -> tensor), '
        f'found {type(state_dict).__name__}')
  expected = expected_keys()
  ignored = sorted(k for k in state_dict if _is_ignored(k))
  t2f.check_state_dict(source, state_dict, expected, ignored=ignored)
  variables: dict[str, Any] = {'params': {}, 'batch_stats': {}}
  key_map = {}
  targets = {
      'conv.weight': ('params', 'conv/kernel'),
      'bn.weight': ('params', 'bn/scale'),
      'bn.bias': ('params', 'bn/bias'),
      'bn.running_mean': ('batch_stats', 'bn/mean'),
      'bn.running_var': ('batch_stats', 'bn/var'),
  }
  for key in expected:
    for suffix, (collection, leaf) in targets.items():
      if key.endswith('.' + suffix):
        prefix = key[:-len(suffix) - 1].replace('.', '/')
        break
    else:  # pragma: no cover - expected_keys only produces these suffixes.
      raise AssertionError(key)
    value = state_dict[key]
    if suffix == 'conv.weight':
      arr = t2f.conv_kernel(value).astype(np.float32)
    else:
      arr = t2f.to_numpy(value).astype(np.float32)
    path = f'{prefix}/{leaf}'
    t2f.set_path(variables[collection], path, arr)
    key_map[key] = f'{collection}/{path}'
  t2f.check_against_template(source, variables,
                             inception_lib.variables_template('torchvision'))
  info = {'kind': detect_kind(state_dict), 'key_map': key_map,
          'ignored': ignored}
  return variables, info


def check_hub_name(path: str | os.PathLike, sha256: str) -> None:
  """Checks the torch-hub hash prefix in a file name (`-<8 hex>.pth`).

  Raises:
    ConversionError: the name's hash prefix does not match the content.
  """
  m = _HUB_NAME.search(pathlib.Path(path).name)
  if m and not sha256.startswith(m.group(1)):
    raise t2f.ConversionError(
        path, note=f'  the file name says SHA-256 prefix {m.group(1)}, but '
        f'the content hashes to {sha256[:8]}...: the file is corrupt or '
        'truncated (download it again)')


SAFE_RESAVE_HELP = (
    'l2m_jax never unpickles code, whatever the file. If a file you trust '
    'cannot be read with weights_only=True, re-save its tensors once with '
    'torch and pass the new file:\n'
    '    python3 -c "import sys, torch; sd = torch.load(sys.argv[1], '
    "map_location='cpu', weights_only=False); torch.save({k: v for k, v in "
    'sd.items()}, sys.argv[2])" IN.pth OUT.pth\n'
    '(this runs whatever the file contains: do it only for a file from a '
    'source you trust; see docs/fid.md).')


def _load_pth(path: pathlib.Path) -> Any:
  """torch.load(weights_only=True) only: no file's hash unlocks unpickling.

  The release files (torchvision's and pytorch-fid's, legacy and zip
  serialisation alike) hold only tensors in a dict and load this way.
  """
  try:
    return t2f.load_torch_file(path)
  except t2f.ConversionError as e:
    raise t2f.ConversionError(path, note=str(e).split('\n', 1)[-1] + '\n  '
                              + SAFE_RESAVE_HELP) from None


def load_pth(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any]]:
  """Reads and converts a raw .pth file; returns (variables, meta)."""
  path = pathlib.Path(path)
  if not path.exists():
    raise FileNotFoundError(f'{path}: no such Inception weights file. '
                            + NO_DOWNLOAD_HELP)
  sha256 = t2f.sha256_file(path)
  check_hub_name(path, sha256)
  state_dict = _load_pth(path)
  if isinstance(state_dict, Mapping) and 'state_dict' in state_dict and (
      isinstance(state_dict['state_dict'], Mapping)):
    state_dict = state_dict['state_dict']
  variables, info = convert_state_dict(state_dict, str(path))
  meta = {
      'format': FORMAT,
      'config': {'kind': info['kind']},
      'source': t2f.source_meta(path.resolve(), sha256=sha256),
      'key_map': info['key_map'],
      'ignored': info['ignored'],
  }
  return variables, meta


def convert_file(path: str | os.PathLike, out_dir: str | os.PathLike,
                 overwrite: bool = False) -> dict[str, Any]:
  """Converts a .pth file to the converted-checkpoint format; returns meta."""
  return t2f.convert_to_folder(load_pth, path, out_dir, overwrite)


def load_weights(path: str | os.PathLike | None
                 ) -> tuple[dict[str, Any], dict[str, Any]]:
  """Loads Inception variables from a raw .pth or a converted folder.

  Args:
    path: a `.pth` weights file or a converted checkpoint directory.

  Returns:
    (variables {params, batch_stats}, meta with `config.kind` and
    `source.sha256`).

  Raises:
    FileNotFoundError: no path given, or it does not exist.
    ConversionError / ValueError: wrong format, keys or shapes.
  """
  if path is None or str(path) == '':
    raise FileNotFoundError('no Inception weights given. ' + NO_DOWNLOAD_HELP)
  path = pathlib.Path(path)
  if not path.exists():
    raise FileNotFoundError(f'{path}: no such file or directory. '
                            + NO_DOWNLOAD_HELP)
  if path.is_dir():
    t2f.read_meta(path, FORMAT, 'Inception weights')
    variables, meta = t2f.load_converted(
        path, template=inception_lib.variables_template('torchvision'))
    return variables, meta
  return load_pth(path)
