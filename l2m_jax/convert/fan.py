"""FAN (wing) PyTorch state_dict / `wing.ckpt` -> `l2m_jax.models.fan.FAN`.

Layouts: docs/architecture.md#ckpt-nets-ema (the 336 keys of the `fan` entry
of the L2M-GAN nets_ema checkpoint) and docs/architecture.md#ckpt-wing
(StarGAN v2's `wing.ckpt`).

Mapping: torch `a.b.c` -> Flax `a/b/c` with Conv2d `weight` -> params
`kernel` (OIHW -> HWIO), BatchNorm `weight`/`bias` -> params `scale`/`bias`,
`running_mean`/`running_var` -> batch_stats `mean`/`var`; the ConvBlock
shortcut `downsample.0` / `downsample.2` -> `downsample_0` / `downsample_2`;
`num_batches_tracked` is dropped (eval-mode BatchNorm never reads it).

Two entry points:

* `convert_fan_state_dict`: the strict conversion used for the `fan` entry of
  nets_ema (the released loader is strict): all 336 keys with their exact
  shapes, or one `ConversionError` listing every problem.
* `convert_wing_checkpoint` / `save_wing`: StarGAN v2's `wing.ckpt`, a
  `torch.save`d dict whose 'state_dict' holds the FAN weights. The original
  loader copies only the names it shares with the model and keeps the
  initial values of the rest. Here every expected key that is present is
  converted (shapes must match: the original's `load_state_dict` would fail
  too); expected keys absent from the file are refused unless
  `allow_missing=True`, in which case they keep this port's initial values
  (Flax default initialisers: random conv kernels, zero biases, identity
  BatchNorm)
  and are listed in the returned meta. Missing `num_batches_tracked` entries
  are harmless and never refused. Extra keys are ignored and listed.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import numpy as np

from l2m_jax.convert import torch_to_flax as t2f

FORMAT = 'fan'
CONFIG = {'num_modules': 1, 'end_relu': False, 'num_landmarks': 98,
          'input_size': 256, 'heatmap_size': 64}
_NBT = '.num_batches_tracked'
_HOURGLASS_BLOCKS = ('b1_4', 'b2_4', 'b1_3', 'b2_3', 'b1_2', 'b2_2', 'b1_1',
                     'b2_1', 'b2_plus_1', 'b3_1', 'b3_2', 'b3_3', 'b3_4')


def _bn_shapes(prefix: str, c: int) -> dict[str, tuple]:
  shapes = {f'{prefix}.{n}': (c,) for n in
            ('weight', 'bias', 'running_mean', 'running_var')}
  shapes[prefix + _NBT] = ()
  return shapes


def _conv_block_shapes(prefix: str, cin: int, cout: int) -> dict[str, tuple]:
  h, q = cout // 2, cout // 4
  s = {}
  s.update(_bn_shapes(f'{prefix}.bn1', cin))
  s[f'{prefix}.conv1.weight'] = (h, cin, 3, 3)
  s.update(_bn_shapes(f'{prefix}.bn2', h))
  s[f'{prefix}.conv2.weight'] = (q, h, 3, 3)
  s.update(_bn_shapes(f'{prefix}.bn3', q))
  s[f'{prefix}.conv3.weight'] = (q, q, 3, 3)
  if cin != cout:
    s.update(_bn_shapes(f'{prefix}.downsample.0', cin))
    s[f'{prefix}.downsample.2.weight'] = (cout, cin, 1, 1)
  return s


def fan_expected_shapes() -> dict[str, tuple]:
  """torch key -> shape for all 336 FAN state_dict entries
  (docs/architecture.md#ckpt-nets-ema).

  `num_batches_tracked` entries have shape ().
  """
  s = {'conv1.conv.weight': (64, 6, 7, 7), 'conv1.conv.bias': (64,)}
  s.update(_bn_shapes('bn1', 64))
  s.update(_conv_block_shapes('conv2', 64, 128))
  s.update(_conv_block_shapes('conv3', 128, 128))
  s.update(_conv_block_shapes('conv4', 128, 256))
  s['m0.coordconv.conv.weight'] = (256, 259, 1, 1)
  s['m0.coordconv.conv.bias'] = (256,)
  for b in _HOURGLASS_BLOCKS:
    s.update(_conv_block_shapes(f'm0.{b}', 256, 256))
  s.update(_conv_block_shapes('top_m_0', 256, 256))
  s['conv_last0.weight'] = (256, 256, 1, 1)
  s['conv_last0.bias'] = (256,)
  s.update(_bn_shapes('bn_end0', 256))
  s['l0.weight'] = (99, 256, 1, 1)
  s['l0.bias'] = (99,)
  return s


_EXPECTED = fan_expected_shapes()

_BN_LEAF = {'weight': ('params', 'scale'), 'bias': ('params', 'bias'),
            'running_mean': ('batch_stats', 'mean'),
            'running_var': ('batch_stats', 'var')}


def flax_path(torch_key: str) -> str | None:
  """The Flax variables path of a FAN torch key (None for num_batches_tracked).

  A `weight`/`bias` pair belongs to a conv when the weight is 4-D and to a
  BatchNorm otherwise; the expected shape of the weight decides.
  """
  if torch_key.endswith(_NBT):
    return None
  *mods, leaf = torch_key.replace('downsample.0', 'downsample_0').replace(
      'downsample.2', 'downsample_2').split('.')
  module = '/'.join(mods)
  weight_key = torch_key.rsplit('.', 1)[0] + '.weight'
  if len(_EXPECTED.get(weight_key, ())) == 4:
    return f'params/{module}/{"kernel" if leaf == "weight" else "bias"}'
  collection, name = _BN_LEAF[leaf]
  return f'{collection}/{module}/{name}'


def fan_key_map() -> dict[str, str]:
  """torch key -> Flax path for every converted (non-counter) key."""
  out = {}
  for k in _EXPECTED:
    path = flax_path(k)
    if path is not None:
      out[k] = path
  return out


def _convert_value(torch_key: str, path: str, value: Any) -> np.ndarray:
  arr = t2f.to_numpy(value).astype(np.float32)
  if path.endswith('/kernel'):
    return t2f.conv_kernel(arr)
  return np.ascontiguousarray(arr)


def _convert_present(state_dict: Mapping[str, Any]
                     ) -> tuple[dict[str, Any], dict[str, str]]:
  variables: dict[str, Any] = {}
  key_map = {}
  for k, path in fan_key_map().items():
    if k in state_dict:
      t2f.set_path(variables, path, _convert_value(k, path, state_dict[k]))
      key_map[k] = path
  return variables, key_map


def convert_fan_state_dict(state_dict: Mapping[str, Any], source: str
                           ) -> tuple[dict[str, Any], dict[str, str]]:
  """Strictly converts a FAN state_dict (e.g. nets_ema['fan']).

  Args:
    state_dict: torch key -> tensor, the 336 keys of
    docs/architecture.md#ckpt-nets-ema.
    source: a name for error messages, e.g. 'ckpt.pt[fan]'.

  Returns:
    (variables {'params', 'batch_stats'} of numpy float32 arrays,
     key_map {torch_key: flax_path}); num_batches_tracked is dropped.

  Raises:
    ConversionError: listing every missing key, unexpected key and shape
      mismatch at once.
  """
  if not isinstance(state_dict, Mapping):
    raise t2f.ConversionError(
        source, note=f'  expected a FAN state_dict (a mapping of parameter '
        f'names to tensors), got {type(state_dict).__name__}')
  t2f.check_state_dict(source, state_dict, fan_expected_shapes())
  return _convert_present(state_dict)


def convert_wing_checkpoint(path: str | os.PathLike,
                            allow_missing: bool = False,
                            init_seed: int = 0
                            ) -> tuple[dict[str, Any], dict[str, Any]]:
  """Converts StarGAN v2's `wing.ckpt` ({'state_dict': {...}}).

  Args:
    path: the checkpoint file.
    allow_missing: accept a file lacking some expected FAN keys; those keep
      the FAN's initial values (Flax default initialisers, kernels drawn
      from `init_seed`), as the original non-strict loader keeps its
      module's initial values.
    init_seed: seed of those initial values.

  Returns:
    (variables, meta) where meta has format 'fan', config, source
    {path, sha256}, key_map, ignored (extra keys of the file),
    missing (expected keys absent from the file, num_batches_tracked
    excluded) and initialised (Flax paths that kept initial values).

  Raises:
    FileNotFoundError: no such file.
    ConversionError: not a torch checkpoint, no 'state_dict' dict, shape
      mismatches, or (unless allow_missing) expected keys absent — all
      problems listed at once.
  """
  ckpt = t2f.load_torch_file(path)
  source = str(path)
  if not isinstance(ckpt, Mapping) or 'state_dict' not in ckpt:
    found = (f'a dict with keys {sorted(map(str, ckpt))[:8]}'
             if isinstance(ckpt, Mapping) else type(ckpt).__name__)
    hint = ''
    if isinstance(ckpt, Mapping) and 'conv1.conv.weight' in ckpt:
      hint = (' (this looks like a bare FAN state_dict; wrap it as '
              "{'state_dict': sd} or use convert_fan_state_dict)")
    raise t2f.ConversionError(
        source, note=f"  expected a wing checkpoint: a dict with key "
        f"'state_dict', found {found}{hint}")
  state_dict = ckpt['state_dict']
  if not isinstance(state_dict, Mapping):
    raise t2f.ConversionError(
        source, note="  'state_dict' must map parameter names to tensors, "
        f'found {type(state_dict).__name__}')

  expected = fan_expected_shapes()
  present = set(state_dict)
  missing = sorted(k for k in expected
                   if k not in present and not k.endswith(_NBT))
  ignored = sorted(str(k) for k in present if k not in expected)
  mismatched = []
  for k in sorted(present & set(expected)):
    shape = tuple(t2f.to_numpy(state_dict[k]).shape)
    if shape != expected[k]:
      mismatched.append((k, expected[k], shape))
  if mismatched or (missing and not allow_missing):
    note = ''
    if missing and not allow_missing:
      note = ('  expected FAN keys are absent; the original loader would '
              'silently keep random initial values for them. Pass '
              'allow_missing=True (--allow_missing) to accept that.')
    raise t2f.ConversionError(source, missing if not allow_missing else (),
                              (), mismatched, note=note)

  variables, key_map = _convert_present(state_dict)
  initialised = []
  if missing:
    # Deviation from PyTorch: absent keys get this port's initial values
    # (Flax default initialisers), not torch's kaiming-uniform draws.
    for p, v in sorted(_initial_values(init_seed, set(
        t2f.flatten(variables))).items()):
      t2f.set_path(variables, p, v)
      initialised.append(p)
  meta = {
      'format': FORMAT,
      'config': dict(CONFIG),
      'source': t2f.source_meta(source, absolute=True),
      'key_map': key_map,
      'ignored': ignored,
      'missing': missing,
      'initialised': initialised,
  }
  return variables, meta


def _initial_values(seed: int, skip: set[str]) -> dict[str, np.ndarray]:
  """Initial values of the FAN's variables not in `skip`, leaf by leaf.

  The same rules as `FAN.init` (Flax defaults: lecun-normal conv kernels,
  zero conv biases, BatchNorm scale 1, bias 0, mean 0, var 1) without
  running a forward pass; kernels are drawn from `jax.random.key(seed)`
  folded with the leaf's index.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from flax import linen as nn  # pylint: disable=g-import-not-at-top
  from l2m_jax.models import fan  # pylint: disable=g-import-not-at-top
  template = t2f.flatten(jax.eval_shape(fan.init_variables))
  out = {}
  for i, (path, leaf) in enumerate(sorted(template.items())):
    if path in skip:
      continue
    name = path.rsplit('/', 1)[-1]
    if name == 'kernel':
      key = jax.random.fold_in(jax.random.key(seed), i)
      value = nn.initializers.lecun_normal()(key, leaf.shape, np.float32)
    elif name in ('scale', 'var'):
      value = np.ones(leaf.shape, np.float32)
    else:  # conv / BatchNorm bias, BatchNorm mean
      value = np.zeros(leaf.shape, np.float32)
    out[path] = np.asarray(value, np.float32)
  return out


def save_wing(path: str | os.PathLike, out_dir: str | os.PathLike,
              allow_missing: bool = False, overwrite: bool = False
              ) -> dict[str, Any]:
  """Converts `wing.ckpt` and writes it with `save_converted` (format 'fan').

  Returns:
    The meta dict written to `<out_dir>/meta.json`.
  """
  return t2f.convert_to_folder(convert_wing_checkpoint, path, out_dir,
                               overwrite, allow_missing=allow_missing)


def load_fan(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any]]:
  """Loads a converted 'fan' directory, checked against the FAN's variables."""
  import jax  # pylint: disable=g-import-not-at-top
  from l2m_jax.models import fan  # pylint: disable=g-import-not-at-top
  t2f.read_meta(path, FORMAT,
                'convert with scripts/convert_checkpoint.py --format wing')
  template = jax.eval_shape(fan.init_variables)
  return t2f.load_converted(path, template)
