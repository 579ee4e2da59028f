"""Official L2M-GAN checkpoints (`{step:06d}_nets_ema.ckpt`, `_nets.ckpt`) -> Flax.

Format, keys, shapes and layouts: docs/architecture.md#ckpt-nets-ema. The
file is a `torch.save`d dict of state_dicts:

  generator       required (128 keys at 256 px, w_hpf 1)
  style_encoder   required (57 keys)
  fan             required iff w_hpf > 0 (336 keys; `l2m_jax.convert.fan`)
  vgg             optional (ResNet-18 minus fc, 120 keys)
  discriminator   optional (training `_nets.ckpt` only, 33 keys)

Any other top-level entry is ignored with a logged warning. The model config
(img_size, style_dim, num_domains, max_conv_dim, w_hpf) is inferred from the
tensor shapes unless given. Every key of every module is checked against the
set expected for that config (derived from `jax.eval_shape` of the Flax
networks' init, so the key map is total): missing keys, unexpected keys and
shape mismatches of all modules are raised together as ONE `ConversionError`.
Unused weights (`attention.*` in G and E; `decode.{4,5,6}.conv1x1` when
w_hpf > 0) are kept as parameters so a round trip back to PyTorch is
possible; BatchNorm `num_batches_tracked` is dropped and listed in `ignored`.

The result is written by `save_converted` with format 'l2m_gan' (see
docs/architecture.md); `load_l2m_checkpoint` reads it back and validates it
against the init shapes.
"""

from __future__ import annotations

import logging
import math
import os
import re
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from l2m_jax.convert import torch_to_flax as t2f
from l2m_jax.models import l2m as l2m_models

FORMAT = 'l2m_gan'
REQUIRED = ('generator', 'style_encoder')
KNOWN = ('generator', 'style_encoder', 'fan', 'vgg', 'discriminator')
NBT = 'num_batches_tracked'

_LIST_RE = re.compile(r'^(encode|decode|shared|main|unshared|transform2|'
                      r'to_rgb)_(\d+)$')
_LAYERS_RE = re.compile(r'^layers_(\d+)$')
_RESNET_LAYER_RE = re.compile(r'^layer([1-4])_(\d+)$')
_LEAF = {'kernel': 'weight', 'scale': 'weight', 'bias': 'bias',
         'mean': 'running_mean', 'var': 'running_var'}

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------
# Key maps: Flax template -> {torch_key: (flax_path, torch_shape)}
# ---------------------------------------------------------------------------


def _torch_shape(flax_shape: Sequence[int]) -> tuple:
  s = tuple(int(v) for v in flax_shape)
  if len(s) == 4:  # HWIO -> OIHW
    return (s[3], s[2], s[0], s[1])
  if len(s) == 2:  # (in, out) -> (out, in)
    return (s[1], s[0])
  return s


def _gan_torch_key(parts: Sequence[str]) -> str:
  """Flax path components (without collection) -> torch key, for G, E, D."""
  out = []
  for i, p in enumerate(parts[:-1]):
    m = _LIST_RE.match(p)
    if m:
      out += [m.group(1), m.group(2)]
      continue
    m = _LAYERS_RE.match(p)
    if m:
      # `attention.layers.k`; the MLPs `transform1.k`, `transform2.d.k`.
      if i > 0 and parts[i - 1] == 'attention':
        out += ['layers', m.group(1)]
      else:
        out.append(m.group(1))
      continue
    out.append(p)
  out.append(_LEAF[parts[-1]])
  return '.'.join(out)


def _resnet_torch_key(parts: Sequence[str]) -> str:
  """ResNet18Features path components -> `vgg` (Sequential) torch key."""
  out = []
  for p in parts[:-1]:
    m = _RESNET_LAYER_RE.match(p)
    if p == 'conv1' and not out:
      out.append('0')
    elif p == 'bn1' and not out:
      out.append('1')
    elif m:
      out += [str(int(m.group(1)) + 3), m.group(2)]
    elif p.startswith('downsample_'):
      out += ['downsample', p.split('_')[1]]
    else:
      out.append(p)
  out.append(_LEAF[parts[-1]])
  return '.'.join(out)


def module_key_map(template: Mapping[str, Any], resnet: bool = False
                   ) -> dict[str, tuple[str, tuple]]:
  """{torch_key: (flax_path, torch_shape)} for every leaf of a template.

  Args:
    template: `jax.eval_shape(model.init, ...)` variables of one network
      ({'params': ...[, 'batch_stats': ...]}).
    resnet: use the `vgg` (ResNet-18 Sequential) naming.
  """
  out = {}
  for path, leaf in t2f.flatten(template).items():
    parts = path.split('/')
    key = (_resnet_torch_key if resnet else _gan_torch_key)(parts[1:])
    if key in out:
      raise AssertionError(f'two Flax paths map to {key}')
    out[key] = (path, _torch_shape(leaf.shape))
  return out


def _resnet_template() -> dict[str, Any]:
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from l2m_jax.models import resnet  # pylint: disable=g-import-not-at-top
  return jax.eval_shape(resnet.ResNet18Features().init, jax.random.key(0),
                        jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32))


def _fan_template() -> dict[str, Any]:
  import jax  # pylint: disable=g-import-not-at-top
  from l2m_jax.models import fan  # pylint: disable=g-import-not-at-top
  return jax.eval_shape(fan.init_variables)


def expected_shapes(config: l2m_models.L2MModelConfig, module: str
                    ) -> dict[str, tuple]:
  """torch key -> shape expected in `module` of a checkpoint of `config`.

  `module` is 'generator', 'style_encoder', 'discriminator' or 'vgg'; BatchNorm
  `num_batches_tracked` keys (shape ()) are included for `vgg`.
  """
  if module == 'vgg':
    km = module_key_map(_resnet_template(), resnet=True)
    shapes = {k: s for k, (_, s) in km.items()}
    for k in list(shapes):
      if k.endswith('.running_mean'):
        shapes[k[:-len('running_mean')] + NBT] = ()
    return shapes
  tmpl = l2m_models.init_shapes(config, module == 'discriminator')[module]
  return {k: s for k, (_, s) in module_key_map(tmpl).items()}


def unused_keys(config: l2m_models.L2MModelConfig) -> list[str]:
  """Checkpoint keys that are kept as parameters but never used in forward."""
  keys = []
  for module in ('generator', 'style_encoder'):
    for k in expected_shapes(config, module):
      if k.startswith('attention.'):
        keys.append(f'{module}.{k}')
      elif (module == 'generator' and config.w_hpf > 0
            and re.match(r'^decode\.\d+\.conv1x1\.', k)):
        keys.append(f'{module}.{k}')
  return sorted(keys)


# ---------------------------------------------------------------------------
# Config inference
# ---------------------------------------------------------------------------


def _shape(sd: Mapping[str, Any], key: str) -> Optional[tuple]:
  if key not in sd:
    return None
  value = sd[key]
  return tuple(value.shape) if hasattr(value, 'shape') else np.shape(value)


def _indices(sd: Mapping[str, Any], prefix: str) -> list[int]:
  pat = re.compile(r'^' + re.escape(prefix) + r'\.(\d+)\.')
  return sorted({int(m.group(1)) for k in sd for m in [pat.match(k)] if m})


def infer_config(ckpt: Mapping[str, Any], source: str = 'checkpoint',
                 domains: Optional[Sequence[str]] = None,
                 **overrides: Any) -> l2m_models.L2MModelConfig:
  """Infers the L2MModelConfig of an official checkpoint from tensor shapes.

  img_size = 2^14 / from_rgb channels (or given, with base_dim = from_rgb
  channels when those differ from the official rule); style_dim from the AdaIN fc / the
  unshared heads; num_domains = number of `unshared` heads; max_conv_dim =
  widest encoder block; w_hpf > 0 iff the generator has the extra stage
  (log2(img_size) - 2 encoder blocks instead of log2(img_size) - 3), then 1
  (its value is not observable) unless overridden.

  Args:
    ckpt: the loaded checkpoint dict.
    source: name for error messages.
    domains: domain names (default: 'sad', 'smile' for 2 domains).
    **overrides: config fields that replace inferred values.

  Raises:
    ConversionError: the shapes needed for inference are absent or
      inconsistent and no override supplies the value.
  """
  gen = ckpt.get('generator', {})
  enc = ckpt.get('style_encoder', {})
  problems = []
  cfg = {}
  rgb = _shape(gen, 'from_rgb.weight') or _shape(enc, 'shared.0.weight')
  if 'img_size' in overrides:
    cfg['img_size'] = int(overrides['img_size'])
    # A non-official stem width (our own small models) is kept as base_dim.
    if (overrides.get('base_dim') is None and rgb is not None
        and len(rgb) == 4 and rgb[0] != 2**14 // cfg['img_size']):
      cfg['base_dim'] = int(rgb[0])
    elif overrides.get('base_dim') is not None:
      cfg['base_dim'] = int(overrides['base_dim'])
  elif rgb is None or len(rgb) != 4 or rgb[0] <= 0 or 2**14 % rgb[0]:
    problems.append('cannot infer img_size: generator.from_rgb.weight '
                    f'(expected (2^14/img_size, 3, 3, 3)) is {rgb}')
  else:
    cfg['img_size'] = 2**14 // rgb[0]
  sd_shape = (_shape(enc, 'unshared.0.weight')
              or _shape(gen, 'decode.0.norm1.fc.weight'))
  if 'style_dim' in overrides:
    cfg['style_dim'] = int(overrides['style_dim'])
  elif sd_shape is None:
    problems.append('cannot infer style_dim: neither style_encoder.'
                    'unshared.0.weight nor generator.decode.0.norm1.fc.weight'
                    ' is present')
  else:
    cfg['style_dim'] = (sd_shape[0] if _shape(enc, 'unshared.0.weight')
                        else sd_shape[1])
  heads = _indices(enc, 'unshared')
  if 'num_domains' in overrides:
    cfg['num_domains'] = int(overrides['num_domains'])
  elif not heads:
    problems.append('cannot infer num_domains: no style_encoder.unshared.<d> '
                    'heads')
  else:
    cfg['num_domains'] = len(heads)
  widths = [(_shape(gen, f'encode.{i}.conv2.weight') or (0,))[0]
            for i in _indices(gen, 'encode')]
  widths += [(_shape(enc, f'shared.{i}.conv2.weight') or (0,))[0]
             for i in _indices(enc, 'shared')]
  if 'max_conv_dim' in overrides:
    cfg['max_conv_dim'] = int(overrides['max_conv_dim'])
  elif not widths or max(widths) <= 0:
    problems.append('cannot infer max_conv_dim: no generator.encode.<i>.'
                    'conv2.weight')
  else:
    cfg['max_conv_dim'] = int(max(widths))
  if 'w_hpf' in overrides and overrides['w_hpf'] is not None:
    cfg['w_hpf'] = overrides['w_hpf']
  elif 'img_size' in cfg:
    n_enc = len(_indices(gen, 'encode'))
    base = int(round(math.log2(cfg['img_size']))) - 4 + 2
    if n_enc == base + 1:
      cfg['w_hpf'] = 1
    elif n_enc == base:
      cfg['w_hpf'] = 0
    else:
      problems.append(
          f'cannot infer w_hpf: generator has {n_enc} encode blocks; '
          f'img_size {cfg["img_size"]} implies {base} (w_hpf=0) or '
          f'{base + 1} (w_hpf>0)')
  if problems:
    raise t2f.ConversionError(source, note='\n'.join('  ' + p
                                                     for p in problems))
  n = cfg['num_domains']
  cfg['domains'] = (tuple(domains) if domains
                    else l2m_models.default_domains(n))
  try:
    return l2m_models.L2MModelConfig(**cfg)
  except ValueError as e:
    raise t2f.ConversionError(source, note=f'  {e}') from e


# ---------------------------------------------------------------------------
# Conversion
# ---------------------------------------------------------------------------


def _convert_module(state_dict: Mapping[str, Any],
                    key_map: Mapping[str, tuple[str, tuple]]
                    ) -> dict[str, Any]:
  variables = {}
  for key, (path, _) in key_map.items():
    value = state_dict[key]
    ndim = len(t2f.to_numpy(value).shape)
    if path.endswith('/kernel') and ndim == 4:
      arr = t2f.conv_kernel(value)
    elif path.endswith('/kernel') and ndim == 2:
      arr = t2f.dense_kernel(value)
    else:
      arr = t2f.to_numpy(value)
    t2f.set_path(variables, path, np.asarray(arr, np.float32))
  return variables


def convert_state_dicts(ckpt: Mapping[str, Any], source: str = 'checkpoint',
                        config: Optional[l2m_models.L2MModelConfig] = None,
                        domains: Optional[Sequence[str]] = None,
                        **overrides: Any
                        ) -> tuple[dict[str, Any], dict[str, Any]]:
  """Converts a loaded official checkpoint dict.

  Args:
    ckpt: {'generator': sd, 'style_encoder': sd, 'fan': sd, ['vgg': sd],
      ['discriminator': sd], ...}.
    source: name for messages.
    config: the model config; inferred from shapes when None.
    domains: domain names for the inferred config.
    **overrides: config fields replacing inferred values.

  Returns:
    (variables, meta): variables as in docs/architecture.md (plus
    'discriminator' when present), meta with format, config, key_map,
    ignored and unused (no 'source'; `convert_checkpoint` adds it).

  Raises:
    ConversionError: listing every problem of every module at once.
  """
  if not isinstance(ckpt, Mapping):
    raise t2f.ConversionError(
        source, note='  expected an L2M-GAN checkpoint: a dict of '
        "state_dicts with keys 'generator', 'style_encoder' (and 'fan', "
        f"'vgg'); found {type(ckpt).__name__}")
  missing_top = [k for k in REQUIRED if k not in ckpt]
  bad_type = [k for k in KNOWN if k in ckpt and not isinstance(ckpt[k],
                                                               Mapping)]
  if missing_top or bad_type:
    notes = []
    if missing_top:
      notes.append(f'  missing top-level module(s): {missing_top} (found '
                   f'{sorted(map(str, ckpt))})')
    if bad_type:
      notes.append(f'  top-level entries that are not state_dicts: '
                   f'{bad_type}')
    raise t2f.ConversionError(source, note='\n'.join(notes))
  if config is None:
    config = infer_config(ckpt, source, domains=domains, **overrides)

  ignored = []
  for k in ckpt:
    if k not in KNOWN:
      log.warning('%s: ignoring top-level entry %r (not part of the L2M-GAN '
                  'networks)', source, k)
      ignored.append(str(k))
  if config.w_hpf <= 0 and 'fan' in ckpt:
    log.warning('%s: ignoring top-level entry fan (the model has w_hpf=0 '
                'and uses no masks)', source)
    ignored.append('fan')

  missing, unexpected, mismatched, notes = [], [], [], []

  def collect(module, fn):
    try:
      return fn()
    except t2f.ConversionError as e:
      missing.extend(f'{module}.{k}' for k in e.missing)
      unexpected.extend(f'{module}.{k}' for k in e.unexpected)
      mismatched.extend((f'{module}.{k}', a, b) for k, a, b in e.mismatched)
      if not (e.missing or e.unexpected or e.mismatched):
        notes.append(str(e))
      return None

  templates = l2m_models.init_shapes(config, 'discriminator' in ckpt)
  key_maps = {m: module_key_map(t) for m, t in templates.items()}
  if 'vgg' in ckpt:
    key_maps['vgg'] = module_key_map(_resnet_template(), resnet=True)
  variables, key_map = {}, {}
  for module, km in key_maps.items():
    sd = ckpt[module]
    expected = {k: s for k, (_, s) in km.items()}
    nbt = []
    if module == 'vgg':
      nbt = [k[:-len('running_mean')] + NBT for k in km
             if k.endswith('.running_mean')]
    def check(module=module, sd=sd, expected=expected, nbt=nbt):
      t2f.check_state_dict(f'{source}[{module}]', sd, expected, ignored=nbt)
      return True
    if collect(module, check):
      variables[module] = _convert_module(sd, km)
      key_map.update({f'{module}.{k}': f'{module}/{p}'
                      for k, (p, _) in km.items()})
      ignored += [f'{module}.{k}' for k in nbt if k in sd]

  if config.w_hpf > 0:
    if 'fan' not in ckpt:
      missing.append('fan (top-level module; required because w_hpf > 0)')
    else:
      from l2m_jax.convert import fan as fan_convert  # pylint: disable=g-import-not-at-top
      res = collect('fan', lambda: fan_convert.convert_fan_state_dict(
          ckpt['fan'], f'{source}[fan]'))
      if res is not None:
        variables['fan'], fan_map = res
        key_map.update({f'fan.{k}': f'fan/{p}' for k, p in fan_map.items()})
        ignored += [f'fan.{k}' for k in ckpt['fan'] if k.endswith(NBT)]

  if missing or unexpected or mismatched or notes:
    note = (f'  model config (inferred or given): {config.to_dict()}'
            + ('\n' + '\n'.join(notes) if notes else ''))
    raise t2f.ConversionError(source, missing, unexpected, mismatched,
                              note=note)

  for module in ('generator', 'style_encoder', 'discriminator'):
    if module in variables:
      t2f.check_against_template(f'{source}[{module}]', variables[module],
                                 templates[module])
  meta = {
      'format': FORMAT,
      'config': config.to_dict(),
      'key_map': key_map,
      'ignored': sorted(ignored),
      'unused': unused_keys(config),
  }
  return variables, meta


def convert_checkpoint(path: str | os.PathLike,
                       config: Optional[l2m_models.L2MModelConfig] = None,
                       domains: Optional[Sequence[str]] = None,
                       **overrides: Any
                       ) -> tuple[dict[str, Any], dict[str, Any]]:
  """Loads and converts an official `_nets_ema.ckpt` (or `_nets.ckpt`) file.

  Returns:
    (variables, meta) with meta['source'] = {path, sha256}.

  Raises:
    FileNotFoundError: no such file.
    ConversionError: not a torch checkpoint, or any layout problem (all
      listed at once).
  """
  ckpt = t2f.load_torch_file(path)
  variables, meta = convert_state_dicts(ckpt, str(path), config=config,
                                        domains=domains, **overrides)
  meta['source'] = t2f.source_meta(path, absolute=True)
  return variables, meta


def save_checkpoint(path: str | os.PathLike, out_dir: str | os.PathLike,
                    overwrite: bool = False,
                    domains: Optional[Sequence[str]] = None,
                    **overrides: Any) -> dict[str, Any]:
  """Converts `path` and writes it to `out_dir` (format 'l2m_gan').

  Returns:
    The meta dict written to `<out_dir>/meta.json`.
  """
  return t2f.convert_to_folder(convert_checkpoint, path, out_dir, overwrite,
                               domains=domains, **overrides)


def load_l2m_checkpoint(path: str | os.PathLike
                        ) -> tuple[dict[str, Any], l2m_models.L2MModelConfig]:
  """Loads a converted 'l2m_gan' directory, validated against init shapes.

  Returns:
    (variables {'generator', 'style_encoder'[, 'fan' or 'landmarks']
    [, 'vgg'][, 'discriminator']} of numpy arrays, config).

  Raises:
    FileNotFoundError: not a converted checkpoint directory.
    ValueError: wrong format or config in meta.json.
    ConversionError: variables do not match the config's networks.
  """
  meta = t2f.read_meta(
      path, FORMAT, 'convert with scripts/convert_checkpoint.py --format '
      'nets_ema')
  try:
    config = l2m_models.L2MModelConfig.from_dict(meta.get('config', {}))
  except (TypeError, ValueError) as e:
    raise ValueError(f'{path}: invalid config in meta.json: {e}') from e
  # The networks present, from the key map ('generator.from_rgb.weight').
  present = {k.split('.', 1)[0] for k in meta.get('key_map', {})}
  template = l2m_models.init_shapes(config, 'discriminator' in present)
  if config.w_hpf > 0 and 'landmarks' not in present:
    template['fan'] = _fan_template()
  if 'vgg' in present:
    template['vgg'] = _resnet_template()
  if 'landmarks' not in present:
    variables, _ = t2f.load_converted(path, template)
    return variables, config
  # A LandmarkNet trained on generated faces makes the masks instead of the
  # FAN (l2m_jax.models.landmarks); its width comes from its shapes.
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from l2m_jax.models import landmarks  # pylint: disable=g-import-not-at-top
  variables, _ = t2f.load_converted(path)
  try:
    net = landmarks.model_from_variables(variables.get('landmarks', {}))
  except ValueError as e:
    raise ValueError(f'{path}: landmarks: {e}') from e
  template['landmarks'] = jax.eval_shape(
      net.init, jax.random.key(0),
      jnp.zeros((1, net.input_size, net.input_size, 3), jnp.float32))
  t2f.check_against_template(str(path), variables, template)
  return variables, config

