"""stylegan2-pytorch StyleGAN2 `g_ema` -> Flax `l2m_jax.models.stylegan2.Generator`.

Accepted inputs (docs/architecture.md#ckpt-stylegan2, docs/method.md#restyle):

* a stylegan2-pytorch checkpoint dict `{"g_ema": ..., "latent_avg": (512,), ...}`
  (converter output or training checkpoint; `g`, `d`, optimiser states and
  `args` are ignored);
* a bare `g_ema` state_dict (keys `style.1.weight`, ...);
* a pSp / e4e / ReStyle checkpoint `{"state_dict": {"decoder.*": ...,
  "encoder.*": ...}, "latent_avg": (18, 512) or (512,), "opts": ...}`: the
  `decoder.` keys are taken, everything else is ignored.

Layout rules (docs/architecture.md#ckpt-stylegan2): modconv weight (1, O, I, k,
k) -> (k, k, I, O) raw (no
extra flip: stylegan2-pytorch files already hold PyTorch-convention kernels);
EqualLinear (out, in) -> (in, out) raw; `input.input` -> (1, 4, 4, C);
`to_rgb*.bias` (1, 3, 1, 1) -> (3,); noise buffers (1, 1, r, r) -> (1, r, r, 1)
in the 'noises' collection; blur/upsample kernels are checked against
make_kernel([1, 3, 3, 1]) * 4 and dropped. `latent_avg` is stored as
(n_latent, 512) in the 'constants' collection; when the file has none it is
estimated as the mean of the mapping network over N(0, I) samples and the
meta records that.

The model config (size, style_dim, n_mlp, channel_multiplier, channel_base)
is inferred from the tensor shapes; a config given by the caller is checked
against the file and every disagreement is reported in one ConversionError.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

from l2m_jax.convert import torch_to_flax as t2f

FORMAT = 'stylegan2'
CONFIG_FIELDS = ('size', 'style_dim', 'n_mlp', 'channel_multiplier',
                 'channel_base', 'lr_mlp')
DEFAULT_CONFIG = dict(size=1024, style_dim=512, n_mlp=8, channel_multiplier=2,
                      channel_base=512, lr_mlp=0.01)


def extract_g_ema(obj: Any, source: str, key: str = 'g_ema'
                  ) -> tuple[dict[str, Any], Any, str]:
  """Finds the generator state_dict in a loaded checkpoint object.

  Returns:
    (state_dict, latent_avg tensor or None, kind) where kind is
    'stylegan2_pytorch', 'state_dict' or 'decoder'.

  Raises:
    ConversionError: no generator weights can be found.
  """
  if not isinstance(obj, Mapping):
    raise t2f.ConversionError(
        source, note=f'  expected a dict, found {type(obj).__name__}')
  if key in obj and isinstance(obj[key], Mapping):
    return dict(obj[key]), obj.get('latent_avg'), 'stylegan2_pytorch'
  if 'style.1.weight' in obj:
    return dict(obj), None, 'state_dict'
  sd = obj.get('state_dict')
  if isinstance(sd, Mapping):
    dec = {k[len('decoder.'):]: v for k, v in sd.items()
           if k.startswith('decoder.')}
    if dec:
      return dec, obj.get('latent_avg'), 'decoder'
  dec = {k[len('decoder.'):]: v for k, v in obj.items()
         if isinstance(k, str) and k.startswith('decoder.')}
  if dec:
    return dec, obj.get('latent_avg'), 'decoder'
  top = ', '.join(sorted(str(k) for k in obj)[:12])
  raise t2f.ConversionError(
      source, note=f'  no StyleGAN2 generator found: expected a "{key}" '
      'entry (stylegan2-pytorch checkpoint), a bare state_dict with "style.1.weight",'
      ' or "decoder.*" keys under "state_dict" (pSp/e4e/ReStyle). Top-level '
      f'keys: {top}')


def infer_config(sd: Mapping[str, Any], source: str) -> dict[str, Any]:
  """size, style_dim, n_mlp, channel_multiplier, channel_base from shapes."""
  shapes = t2f.state_dict_shapes(sd)
  problems = []
  if 'style.1.weight' not in shapes:
    problems.append('style.1.weight')
  if 'input.input' not in shapes:
    problems.append('input.input')
  if problems:
    raise t2f.ConversionError(source, missing=problems,
                              note='  cannot infer the generator config')
  style_dim = shapes['style.1.weight'][1]
  n_mlp = 0
  while f'style.{n_mlp + 1}.weight' in shapes:
    n_mlp += 1
  n_rgbs = 0
  while f'to_rgbs.{n_rgbs}.conv.weight' in shapes:
    n_rgbs += 1
  size = 4 * 2 ** n_rgbs
  base = shapes['input.input'][1]
  cm = 2
  if size >= 64:
    key = f'convs.{2 * 3}.conv.weight'  # first conv at 64 px
    if key in shapes:
      cm = max(1, int(round(shapes[key][1] * 64 / (32 * base))))
  return dict(size=size, style_dim=style_dim, n_mlp=n_mlp,
              channel_multiplier=cm, channel_base=base, lr_mlp=0.01)


def expected_shapes(config: Mapping[str, Any]) -> dict[str, tuple]:
  """torch key -> shape for a stylegan2-pytorch Generator with this config."""
  from l2m_jax.models.stylegan2 import channel_widths  # pylint: disable=g-import-not-at-top
  size, d = config['size'], config['style_dim']
  ch = channel_widths(size, config['channel_multiplier'],
                      config['channel_base'])
  log_size = int(math.log2(size))
  exp = {}
  for i in range(1, config['n_mlp'] + 1):
    exp[f'style.{i}.weight'] = (d, d)
    exp[f'style.{i}.bias'] = (d,)
  exp['input.input'] = (1, ch[4], 4, 4)

  def styled(prefix, cin, cout, up):
    exp[f'{prefix}.conv.weight'] = (1, cout, cin, 3, 3)
    exp[f'{prefix}.conv.modulation.weight'] = (cin, d)
    exp[f'{prefix}.conv.modulation.bias'] = (cin,)
    exp[f'{prefix}.noise.weight'] = (1,)
    exp[f'{prefix}.activate.bias'] = (cout,)
    if up:
      exp[f'{prefix}.conv.blur.kernel'] = (4, 4)

  def torgb(prefix, cin, up):
    exp[f'{prefix}.bias'] = (1, 3, 1, 1)
    exp[f'{prefix}.conv.weight'] = (1, 3, cin, 1, 1)
    exp[f'{prefix}.conv.modulation.weight'] = (cin, d)
    exp[f'{prefix}.conv.modulation.bias'] = (cin,)
    if up:
      exp[f'{prefix}.upsample.kernel'] = (4, 4)

  styled('conv1', ch[4], ch[4], False)
  torgb('to_rgb1', ch[4], False)
  cin = ch[4]
  for j, i in enumerate(range(3, log_size + 1)):
    cout = ch[2 ** i]
    styled(f'convs.{2 * j}', cin, cout, True)
    styled(f'convs.{2 * j + 1}', cout, cout, False)
    torgb(f'to_rgbs.{j}', cout, True)
    cin = cout
  num_layers = (log_size - 2) * 2 + 1
  for n in range(num_layers):
    r = 2 ** ((n + 5) // 2)
    exp[f'noises.noise_{n}'] = (1, 1, r, r)
  return exp


def convert_state_dict(sd: Mapping[str, Any], source: str,
                       config: Mapping[str, Any] | None = None,
                       latent_avg: Any = None
                       ) -> tuple[dict[str, Any], dict[str, Any], dict]:
  """Converts a g_ema state_dict.

  Args:
    sd: torch key -> tensor (stylegan2-pytorch names, no prefix).
    source: name for messages.
    config: optional expected config; inferred from shapes when None.
    latent_avg: optional (D,), (1, D) or (n_latent, D) tensor.

  Returns:
    (variables {'params', 'noises', 'constants'?}, config, key_map).

  Raises:
    ConversionError: listing every missing/unexpected/mismatched key, a
      config disagreement, or wrong blur kernels.
  """
  from l2m_jax.models.stylegan2 import make_kernel  # pylint: disable=g-import-not-at-top
  inferred = infer_config(sd, source)
  if config is not None:
    cfg = dict(DEFAULT_CONFIG)
    cfg.update({k: v for k, v in config.items() if v is not None})
    diffs = [f'{k}: expected {cfg[k]}, file has {inferred[k]}'
             for k in ('size', 'style_dim', 'n_mlp', 'channel_multiplier',
                       'channel_base') if cfg[k] != inferred[k]]
    note = ('  config disagrees with the checkpoint: ' + '; '.join(diffs)
            if diffs else '')
  else:
    cfg, note = inferred, ''
  exp = expected_shapes(cfg)
  try:
    t2f.check_state_dict(source, sd, exp)
  except t2f.ConversionError as e:
    raise t2f.ConversionError(source, e.missing, e.unexpected, e.mismatched,
                              note=note) from None
  if note:
    raise t2f.ConversionError(source, note=note)
  ref_kernel = make_kernel((1, 3, 3, 1)) * 4
  bad = [k for k in exp if k.endswith('.kernel') and
         not np.allclose(t2f.to_numpy(sd[k]), ref_kernel, atol=1e-6)]
  if bad:
    raise t2f.ConversionError(
        source, note='  blur/upsample kernels differ from make_kernel('
        '[1, 3, 3, 1]) * 4 (unsupported blur_kernel): ' + ', '.join(bad))

  variables: dict[str, Any] = {}
  key_map = {}
  for k in exp:
    v = t2f.to_numpy(sd[k]).astype(np.float32)
    if k.endswith('.kernel'):
      continue
    if k.startswith('noises.'):
      path = 'noises/' + k.split('.')[1]
      val = np.transpose(v, (0, 2, 3, 1))
    elif k == 'input.input':
      path = 'params/input/input'
      val = np.transpose(v, (0, 2, 3, 1))
    elif k.endswith('conv.weight'):
      path = 'params/' + t2f.module_path(k)
      val = np.transpose(v[0], (2, 3, 1, 0))
    elif k.startswith('style.') or k.endswith('modulation.weight'):
      path = 'params/' + t2f.module_path(k)
      val = t2f.dense_kernel(v) if k.endswith('weight') else v
    elif k.startswith('to_rgb') and k.endswith('.bias') and v.ndim == 4:
      path = 'params/' + t2f.module_path(k)
      val = v.reshape(3)
    else:
      path = 'params/' + t2f.module_path(k)
      val = v
    t2f.set_path(variables, path, np.ascontiguousarray(val, np.float32))
    key_map[k] = path
  if latent_avg is not None:
    log_size = int(math.log2(cfg['size']))
    n_latent = log_size * 2 - 2
    la = t2f.to_numpy(latent_avg).astype(np.float32)
    d = cfg['style_dim']
    if la.shape in ((d,), (1, d)):
      la = np.broadcast_to(la.reshape(1, d), (n_latent, d))
    elif la.shape != (n_latent, d):
      raise t2f.ConversionError(
          source, mismatched=[('latent_avg', (n_latent, d), la.shape)],
          note=f'  latent_avg must be ({d},), (1, {d}) or ({n_latent}, {d})')
    t2f.set_path(variables, 'constants/latent_avg', np.array(la))
    key_map['latent_avg'] = 'constants/latent_avg'
  return variables, cfg, key_map


def estimate_latent_avg(model, variables, n: int = 10000, seed: int = 0,
                        chunk: int = 2000) -> np.ndarray:
  """Mean of the mapping network over n N(0, I) samples: [n_latent, D].

  `variables` needs 'params' and 'noises' (any 'constants' are ignored); z
  comes from `np.random.default_rng(seed)`.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  variables = dict(variables)
  variables['constants'] = {'latent_avg': np.zeros(
      (model.n_latent, model.style_dim), np.float32)}
  fn = jax.jit(lambda v, z: model.apply(v, z, method=model.mapping).sum(0))
  rng = np.random.default_rng(seed)
  total = np.zeros((model.style_dim,), np.float64)
  done = 0
  while done < n:
    m = min(chunk, n - done)
    z = rng.standard_normal((m, model.style_dim)).astype(np.float32)
    total += np.asarray(fn(variables, jnp.asarray(z)), np.float64)
    done += m
  mean = (total / n).astype(np.float32)
  return np.broadcast_to(mean[None], (model.n_latent, model.style_dim)).copy()


def build_model(config: Mapping[str, Any]):
  from l2m_jax.models.stylegan2 import Generator  # pylint: disable=g-import-not-at-top
  return Generator(**{k: config[k] for k in CONFIG_FIELDS if k in config})


def convert_file(path: str, out_dir: str | None = None,
                 config: Mapping[str, Any] | None = None, key: str = 'g_ema',
                 mean_latent_samples: int = 10000, overwrite: bool = False,
                 log=print) -> tuple[dict[str, Any], dict[str, Any]]:
  """Converts a checkpoint file; writes `out_dir` when given.

  Returns:
    (variables, meta).
  """
  obj = t2f.load_torch_file(path)
  sd, latent_avg, kind = extract_g_ema(obj, str(path), key=key)
  log(f'{path}: found {len(sd)} generator tensors ({kind})')
  variables, cfg, key_map = convert_state_dict(sd, f'{path}[{kind}]', config,
                                               latent_avg)
  model = build_model(cfg)
  if latent_avg is None:
    log(f'{path}: no latent_avg in the file; estimating it from '
        f'{mean_latent_samples} mapping-network samples')
    variables['constants'] = {'latent_avg': estimate_latent_avg(
        model, variables, n=mean_latent_samples)}
    la_source = f'estimated (mean of mapping over {mean_latent_samples} z)'
  else:
    la_source = 'checkpoint'
  from l2m_jax.models.stylegan2 import variables_template  # pylint: disable=g-import-not-at-top
  return t2f.finish_conversion(
      path, variables, variables_template(model), fmt=FORMAT, config=cfg,
      key_map=key_map, ignored=sorted(k for k in sd if k not in key_map),
      source=t2f.source_meta(path, kind=kind), latent_avg=la_source,
      out_dir=out_dir, overwrite=overwrite, log=log,
      detail=f' (config {cfg})')


def load_generator(path: str):
  """Loads a converted generator: (Generator module, variables, meta)."""
  from l2m_jax.models.stylegan2 import variables_template  # pylint: disable=g-import-not-at-top
  return t2f.load_model(path, FORMAT,
                        'convert with scripts/convert_latent.py stylegan2',
                        build_model, variables_template)
