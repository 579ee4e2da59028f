"""Latent-To-Latent mapper `.pt` and InterFaceGAN boundaries -> Flax / numpy.

Mapper (docs/architecture.md#ckpt-mapper): a flat state_dict of 18 tensors,
`{course,medium,fine}_mapping.mapping.{0,1,2}.0.{weight,bias}`, (512, 512) and
(512,), saved from `latent_model.state_dict()` (a `{"state_dict": ...}`
wrapper and a DataParallel `module.` prefix are accepted too). Linear weights
are transposed to (in, out) and kept raw. Paper-mode files also carry
`{..}_mapping.cond.weight` (512, A); when a legacy file is loaded into a
paper-mode mapper the conditioning block is zero
(docs/architecture.md#ckpt-mapper), which makes paper
mode compute the legacy function when the legacy pre-shift and blend are
used.

Boundaries (docs/method.md#l2l-boundaries): a dict of 40 unit-norm (1, 512)
float32 tensors keyed
`'{NN}_{CelebA name}'`. Converted to a (N, 512) array, in file order, with the
original keys and the normalised names (prefix dropped, lower case, e.g.
`smiling`) in meta.json.
"""

from __future__ import annotations

import pathlib
import re
from typing import Any, Mapping

import numpy as np

from l2m_jax.convert import torch_to_flax as t2f

FORMAT = 'l2l_mapper'
BOUNDARIES_FORMAT = 'boundaries'
CONFIG_FIELDS = ('style_dim', 'n_latent', 'bounds', 'n_layers', 'lr_mul',
                 'cond_dim', 'combine', 'alpha', 'zero_init_last')


def _unwrap(obj: Any, source: str) -> dict[str, Any]:
  if not isinstance(obj, Mapping):
    raise t2f.ConversionError(
        source, note=f'  expected a state_dict (dict of tensors), found '
        f'{type(obj).__name__}')
  if 'state_dict' in obj and isinstance(obj['state_dict'], Mapping):
    obj = obj['state_dict']
  sd = dict(obj)
  if sd and all(str(k).startswith('module.') for k in sd):
    sd = {k[len('module.'):]: v for k, v in sd.items()}
  return sd


def infer_config(sd: Mapping[str, Any], source: str) -> dict[str, Any]:
  """style_dim, n_layers and cond_dim from the tensor shapes."""
  shapes = t2f.state_dict_shapes(sd)
  key0 = 'course_mapping.mapping.0.0.weight'
  if key0 not in shapes or len(shapes[key0]) != 2:
    raise t2f.ConversionError(
        source, missing=[key0] if key0 not in shapes else [],
        note='  not a Latent-To-Latent mapper state_dict (expected keys '
        '{course,medium,fine}_mapping.mapping.{i}.0.{weight,bias}); found '
        + ', '.join(sorted(shapes)[:6]))
  dim = shapes[key0][1]
  n_layers = 0
  while f'course_mapping.mapping.{n_layers}.0.weight' in shapes:
    n_layers += 1
  cond = shapes.get('course_mapping.cond.weight')
  return dict(style_dim=dim, n_layers=n_layers,
              cond_dim=int(cond[1]) if cond and len(cond) == 2 else 0)


def expected_shapes(dim: int, n_layers: int, cond_dim: int
                    ) -> dict[str, tuple]:
  exp = {}
  for g in ('course_mapping', 'medium_mapping', 'fine_mapping'):
    for i in range(n_layers):
      exp[f'{g}.mapping.{i}.0.weight'] = (dim, dim)
      exp[f'{g}.mapping.{i}.0.bias'] = (dim,)
    if cond_dim:
      exp[f'{g}.cond.weight'] = (dim, cond_dim)
  return exp


def convert_state_dict(sd: Mapping[str, Any], source: str,
                       config: Mapping[str, Any]
                       ) -> tuple[dict[str, Any], dict[str, str]]:
  """Mapper state_dict -> ({'params': ...}, key_map) for a mapper `config`.

  `config` holds at least style_dim, n_layers and cond_dim (the target
  model's). A file without `cond` weights loads into a cond_dim > 0 model
  with a zero conditioning block; a file with them must match cond_dim.

  Raises:
    ConversionError: every missing/unexpected/mismatched key at once.
  """
  dim, n_layers = config['style_dim'], config['n_layers']
  cond_dim = config.get('cond_dim', 0)
  file_cond = any(k.endswith('.cond.weight') for k in sd)
  exp = expected_shapes(dim, n_layers, cond_dim if file_cond else 0)
  if file_cond and not cond_dim:
    note = ('  the file has conditioning weights (paper-mode mapper) but the '
            'target mapper has cond_dim=0; use --preset paper')
    extra = [k for k in sd if k.endswith('.cond.weight')]
    raise t2f.ConversionError(source, unexpected=extra, note=note)
  t2f.check_state_dict(source, sd, exp)
  params: dict[str, Any] = {}
  key_map = {}
  for k in exp:
    parts = k.split('.')
    if parts[1] == 'cond':
      path = f'{parts[0]}/cond/weight'
    else:
      path = f'{parts[0]}/mapping_{parts[2]}/{parts[4]}'
    v = t2f.to_numpy(sd[k]).astype(np.float32)
    val = t2f.dense_kernel(v) if parts[-1] == 'weight' else v
    t2f.set_path(params, path, val)
    key_map[k] = 'params/' + path
  if cond_dim and not file_cond:
    for g in ('course_mapping', 'medium_mapping', 'fine_mapping'):
      t2f.set_path(params, f'{g}/cond/weight',
                   np.zeros((cond_dim, dim), np.float32))
  return {'params': params}, key_map


def build_model(config: Mapping[str, Any]):
  from l2m_jax.models.mapper import Latent2Latent  # pylint: disable=g-import-not-at-top
  kw = {k: config[k] for k in CONFIG_FIELDS if k in config}
  if 'bounds' in kw:
    kw['bounds'] = tuple(kw['bounds'])
  return Latent2Latent(**kw)


def variables_template(model) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  w = jnp.zeros((1, model.n_latent, model.style_dim), jnp.float32)
  delta = (jnp.zeros((1, model.cond_dim), jnp.float32) if model.cond_dim
           else None)
  return jax.eval_shape(lambda r: model.init(r, w, delta), jax.random.key(0))


def make_config(preset: str = 'legacy', **overrides) -> dict[str, Any]:
  from l2m_jax.models.mapper import PRESETS  # pylint: disable=g-import-not-at-top
  if preset not in PRESETS:
    raise ValueError(f'preset={preset!r}: expected one of {sorted(PRESETS)}')
  cfg = dict(style_dim=512, n_latent=18, bounds=(4, 8), n_layers=3,
             lr_mul=0.01)
  cfg.update(PRESETS[preset])
  cfg.update({k: v for k, v in overrides.items() if v is not None})
  cfg['preset'] = preset
  return cfg


def convert_file(path: str, out_dir: str | None = None,
                 preset: str = 'legacy', n_latent: int = 18,
                 cond_dim: int | None = None, overwrite: bool = False,
                 log=print) -> tuple[dict[str, Any], dict[str, Any]]:
  """Converts a mapper `.pt` (writes `out_dir` if given): (variables, meta)."""
  obj = t2f.load_torch_file(path)
  sd = _unwrap(obj, str(path))
  inferred = infer_config(sd, str(path))
  cfg = make_config(preset, n_latent=n_latent, style_dim=inferred['style_dim'],
                    n_layers=inferred['n_layers'])
  if inferred['cond_dim']:
    if cond_dim is not None and cond_dim != inferred['cond_dim']:
      raise t2f.ConversionError(
          str(path), mismatched=[('course_mapping.cond.weight',
                                  (cfg['style_dim'], cond_dim),
                                  (cfg['style_dim'], inferred['cond_dim']))],
          note=f'  --cond-dim {cond_dim} disagrees with the file')
    cfg['cond_dim'] = inferred['cond_dim']
  elif cond_dim is not None:
    cfg['cond_dim'] = cond_dim
  log(f'{path}: mapper with {len(sd)} tensors, style_dim '
      f'{cfg["style_dim"]}, {cfg["n_layers"]} layers/group, file cond_dim '
      f'{inferred["cond_dim"]}; preset {preset} (cond_dim {cfg["cond_dim"]})')
  variables, key_map = convert_state_dict(sd, str(path), cfg)
  template = variables_template(build_model(cfg))
  cfg['bounds'] = list(cfg['bounds'])
  return t2f.finish_conversion(
      path, variables, template, fmt=FORMAT, config=cfg, key_map=key_map,
      ignored=[], out_dir=out_dir, overwrite=overwrite, log=log)


def load_mapper(path: str):
  """Loads a converted mapper: (Latent2Latent module, variables, meta)."""
  return t2f.load_model(path, FORMAT,
                        'convert with scripts/convert_latent.py mapper',
                        build_model, variables_template)


# ----------------------------------------------------------------- boundaries

def normalize_name(key: str) -> str:
  """'31_Smiling' -> 'smiling' (drop the NN_ prefix, lower-case;
  docs/method.md#l2l-boundaries)."""
  return re.sub(r'^\d\d_', '', str(key)).lower()


def convert_boundaries(obj: Any, source: str, dim: int | None = None
                       ) -> tuple[np.ndarray, list[str]]:
  """Boundaries dict -> ((N, dim) float32 array, original keys in file order).

  `dim` defaults to the last axis of the first entry (512 for FFHQ).

  Raises:
    ConversionError: not a dict, or entries that are not (1, dim) / (dim,).
  """
  if not isinstance(obj, Mapping) or not obj:
    raise t2f.ConversionError(
        source, note='  expected a non-empty dict of (1, 512) direction '
        f'tensors, found {type(obj).__name__}')
  keys = list(obj)
  if dim is None:
    dim = int(t2f.to_numpy(obj[keys[0]]).shape[-1])
  mismatched = []
  rows = []
  for k in keys:
    v = t2f.to_numpy(obj[k])
    if v.shape not in ((1, dim), (dim,)):
      mismatched.append((str(k), (1, dim), v.shape))
    else:
      rows.append(v.reshape(dim).astype(np.float32))
  if mismatched:
    raise t2f.ConversionError(source, mismatched=mismatched)
  names = [normalize_name(k) for k in keys]
  dup = sorted({n for n in names if names.count(n) > 1})
  if dup:
    raise t2f.ConversionError(
        source, note=f'  normalised attribute names collide: {dup}')
  return np.stack(rows), [str(k) for k in keys]


def convert_boundaries_file(path: str, out_dir: str | None = None,
                            overwrite: bool = False, log=print
                            ) -> tuple[dict[str, Any], dict[str, Any]]:
  obj = t2f.load_torch_file(path)
  directions, keys = convert_boundaries(obj, str(path))
  norms = np.linalg.norm(directions, axis=1)
  log(f'{path}: {len(keys)} directions, norms in [{norms.min():.7f}, '
      f'{norms.max():.7f}]')
  meta = dict(format=BOUNDARIES_FORMAT,
              config=dict(dim=int(directions.shape[1])),
              keys=keys, attributes=[normalize_name(k) for k in keys],
              source=t2f.source_meta(path),
              key_map={k: f'directions[{i}]' for i, k in enumerate(keys)},
              ignored=[])
  variables = {'directions': directions}
  t2f.save_if_asked(out_dir, variables, meta, overwrite=overwrite, log=log)
  return variables, meta


def load_boundaries(path: str) -> tuple[np.ndarray, list[str]]:
  """A boundaries `.pt` or a converted boundaries directory.

  Returns:
    ((N, 512) float32 directions, normalised attribute names).
  """
  p = pathlib.Path(path)
  if p.is_dir():
    t2f.read_meta(p, BOUNDARIES_FORMAT,
                  'convert with scripts/convert_latent.py boundaries')
    variables, meta = t2f.load_converted(p)
    return np.asarray(variables['directions'], np.float32), meta['attributes']
  variables, meta = convert_boundaries_file(str(p), log=lambda *_: None)
  return variables['directions'], meta['attributes']


def find_attribute(names: list[str], attribute: str, source: str = '') -> int:
  """Index of an attribute by normalised name ('Smiling', '31_Smiling' ok)."""
  for want in (str(attribute).lower(), normalize_name(attribute)):
    if want in names:
      return names.index(want)
  raise ValueError(f'{source}: unknown attribute {attribute!r}; available: '
                   + ', '.join(names))
