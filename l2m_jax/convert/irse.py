"""Key and layout rules shared by the IR-SE converters (ArcFace, ReStyle).

A PyTorch module path maps to a Flax path by joining each numeric index to
the module before it (`body.3.res_layer.5.fc1` -> `body_3/res_layer_5/fc1`);
leaves are renamed by module type:

  module type   torch leaf                 Flax leaf
  Conv2d        weight (O, I, kh, kw)      params .../kernel (kh, kw, I, O)
                bias                       params .../bias
  BatchNorm     weight, bias               params .../scale, .../bias
                running_mean, running_var  batch_stats .../mean, .../var
                num_batches_tracked        dropped (optional in the file)
  PReLU         weight (C,)                params .../weight
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from l2m_jax.convert import torch_to_flax as t2f

BN_LEAVES = {'weight': ('params', 'scale'), 'bias': ('params', 'bias'),
             'running_mean': ('batch_stats', 'mean'),
             'running_var': ('batch_stats', 'var')}


module_path = t2f.module_path  # 'body.3.res_layer.5.fc1' -> 'body_3/...'


def bn_shapes(prefix: str, n: int, exp: dict[str, tuple]) -> None:
  for leaf in ('weight', 'bias', 'running_mean', 'running_var'):
    exp[f'{prefix}.{leaf}'] = (n,)


def backbone_shapes(in_channels: int, num_layers: int = 50,
                    prefix: str = '') -> dict[str, tuple]:
  """torch key -> shape of `input_layer.*` and `body.*` of an IR-SE net."""
  from l2m_jax.models.irse import unit_list  # pylint: disable=g-import-not-at-top
  exp: dict[str, tuple] = {}
  exp[f'{prefix}input_layer.0.weight'] = (64, in_channels, 3, 3)
  bn_shapes(f'{prefix}input_layer.1', 64, exp)
  exp[f'{prefix}input_layer.2.weight'] = (64,)
  for u, (cin, depth, _) in enumerate(unit_list(num_layers)):
    p = f'{prefix}body.{u}'
    bn_shapes(f'{p}.res_layer.0', cin, exp)
    exp[f'{p}.res_layer.1.weight'] = (depth, cin, 3, 3)
    exp[f'{p}.res_layer.2.weight'] = (depth,)
    exp[f'{p}.res_layer.3.weight'] = (depth, depth, 3, 3)
    bn_shapes(f'{p}.res_layer.4', depth, exp)
    exp[f'{p}.res_layer.5.fc1.weight'] = (depth // 16, depth, 1, 1)
    exp[f'{p}.res_layer.5.fc2.weight'] = (depth, depth // 16, 1, 1)
    if cin != depth:
      exp[f'{p}.shortcut_layer.0.weight'] = (depth, cin, 1, 1)
      bn_shapes(f'{p}.shortcut_layer.1', depth, exp)
  return exp


def count_units(keys) -> int:
  """Number of body units in a state_dict (0 if none)."""
  units = {int(k.split('.')[1]) for k in keys
           if k.startswith('body.') and k.split('.')[1].isdigit()}
  return max(units) + 1 if units else 0


# Body units -> num_layers of the 50/100/152-layer IR-SE nets.
UNITS_TO_LAYERS = {24: 50, 49: 100, 50: 152}


def infer_num_layers(keys, source: str) -> int:
  n = count_units(keys)
  if n not in UNITS_TO_LAYERS:
    raise t2f.ConversionError(
        source, note=f'  found {n} IR-SE body units (body.0 .. body.{n - 1});'
        ' expected 24 (IR-SE-50), 49 (100) or 50 (152)')
  return UNITS_TO_LAYERS[n]


def strip_ignored(sd: Mapping[str, Any]) -> list[str]:
  """The `num_batches_tracked` keys (dropped; optional in files)."""
  return sorted(k for k in sd if k.endswith('num_batches_tracked'))


def convert_generic(sd: Mapping[str, Any], keys, bn_modules: set[str],
                    path_fn=module_path) -> tuple[dict[str, Any], dict]:
  """Converts conv / BN / PReLU / bias entries by the module-type rules.

  Args:
    sd: torch key -> tensor.
    keys: the keys to convert (the caller handles Linear weights).
    bn_modules: torch module paths that are BatchNorms.
    path_fn: torch module path -> Flax module path.

  Returns:
    (variables {'params', 'batch_stats'}, key_map torch -> Flax path).
  """
  variables: dict[str, Any] = {}
  key_map = {}
  for k in keys:
    module, leaf = k.rsplit('.', 1)
    v = t2f.to_numpy(sd[k]).astype(np.float32)
    fpath = path_fn(module)
    if module in bn_modules:
      coll, name = BN_LEAVES[leaf]
      val = v
    elif v.ndim == 4 and leaf == 'weight':
      coll, name, val = 'params', 'kernel', t2f.conv_kernel(v)
    else:  # conv bias, PReLU weight
      coll, name, val = 'params', leaf, v
    path = f'{coll}/{fpath}/{name}'
    t2f.set_path(variables, path, np.ascontiguousarray(val, np.float32))
    key_map[k] = path
  return variables, key_map


def bn_module_set(expected: Mapping[str, tuple]) -> set[str]:
  return {k.rsplit('.', 1)[0] for k in expected if k.endswith('running_mean')}


def check_no_nonfinite(source: str, sd: Mapping[str, Any], keys) -> None:
  """Raises if any converted tensor holds NaN or inf (a corrupt file)."""
  bad = [k for k in keys if not np.all(np.isfinite(t2f.to_numpy(sd[k])))]
  if bad:
    raise t2f.ConversionError(
        source, note='  tensors with NaN or inf values: ' + ', '.join(bad[:10])
        + (f' (and {len(bad) - 10} more)' if len(bad) > 10 else ''))


def merge(a: dict, b: dict) -> dict:
  """Deep-merges nested dicts b into a (paths must not collide)."""
  for k, v in b.items():
    if isinstance(v, dict) and isinstance(a.get(k), dict):
      merge(a[k], v)
    elif k in a:
      raise KeyError(f'duplicate path {k}')
    else:
      a[k] = v
  return a
