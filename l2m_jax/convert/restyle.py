"""ReStyle-e4e checkpoint -> Flax encoder folder (+ its StyleGAN2 generator).

Input (yuval-alaluf/restyle-encoder `training/coach_restyle_e4e.py` save
dict): `{"state_dict": {"encoder.*": ..., "decoder.*": ...}, "opts": {...},
"latent_avg": (n_styles, 512) or (512,), ...}`; `global_step`, `optimizer`,
`best_val_loss` and the W-discriminator entries are ignored. A bare
`{"encoder.*", "decoder.*"}` dict is accepted too.

* `encoder.*` (565 entries for 18 styles: 205,585,792 parameters) ->
  `l2m_jax.models.restyle.ReStyleEncoder`, by the rules of `convert/irse.py`
  plus `styles.{i}.convs.{0,2,4,6}` (conv kernels and biases) and
  `styles.{i}.linear` (EqualLinear: (out, in) -> (in, out), raw; the
  1/sqrt(512) scale is applied at run time). `num_batches_tracked` dropped.
* `latent_avg` -> 'constants' latent_avg [n_styles, 512] ((512,) is
  broadcast over the rows, as ReStyle's code does). A checkpoint without one
  gets the mean of the generator's mapping network over N(0, I) samples
  (recorded in meta.json).
* `decoder.*` -> the existing StyleGAN2 converter (`convert/stylegan2.py`),
  written to `<out>/generator`.
* `opts`: `encoder_type` must be `ProgressiveBackboneEncoder` (the IR-SE-50
  ReStyle-e4e); `input_nc` and `output_size`, when present, are checked
  against the shapes.

n_styles, input_nc and the IR-SE depth are inferred from the shapes;
n_styles must equal the generator's W+ rows (2 log2(size) - 2).

Converted layout: `<out>/meta.json` + `<out>/variables/` (format
`restyle_e4e_encoder`) and `<out>/generator/` (format `stylegan2`).
"""

from __future__ import annotations

import pathlib
from typing import Any, Mapping

import numpy as np

from l2m_jax.convert import irse as ci
from l2m_jax.convert import kinds
from l2m_jax.convert import stylegan2 as cs
from l2m_jax.convert import torch_to_flax as t2f

FORMAT = 'restyle_e4e_encoder'
GENERATOR_DIR = 'generator'
ENCODER_TYPE = 'ProgressiveBackboneEncoder'
STYLE_DIM = 512


def split_checkpoint(obj: Any, source: str
                     ) -> tuple[dict[str, Any], Any, dict[str, Any]]:
  """(encoder state_dict without prefix, latent_avg or None, opts dict).

  Raises:
    ConversionError: the object is not a pSp/e4e/ReStyle checkpoint.
  """
  if not isinstance(obj, Mapping):
    raise t2f.ConversionError(
        source, note=f'  expected a checkpoint dict, found '
        f'{type(obj).__name__}')
  sd = obj.get('state_dict') if isinstance(obj.get('state_dict'),
                                           Mapping) else obj
  enc = {k[len('encoder.'):]: v for k, v in sd.items()
         if isinstance(k, str) and k.startswith('encoder.')}
  if not enc:
    raise t2f.ConversionError(source, note=kinds.wrong_kind_note(obj,
                                                                 'restyle'))
  opts = obj.get('opts')
  if opts is not None and not isinstance(opts, Mapping):
    opts = dict(vars(opts)) if hasattr(opts, '__dict__') else {}
  return enc, obj.get('latent_avg'), dict(opts or {})


def infer_config(sd: Mapping[str, Any], source: str) -> dict[str, Any]:
  shapes = t2f.state_dict_shapes(sd)
  first = shapes.get('input_layer.0.weight')
  if first is None or len(first) != 4:
    raise t2f.ConversionError(source, missing=['encoder.input_layer.0.weight'],
                              note='  not an IR-SE encoder')
  n_styles = 0
  while f'styles.{n_styles}.linear.weight' in shapes:
    n_styles += 1
  if n_styles == 0:
    raise t2f.ConversionError(
        source, missing=['encoder.styles.0.linear.weight'],
        note='  no GradualStyleBlocks (styles.{i}.*): not a ReStyle-e4e '
        f'{ENCODER_TYPE}')
  return dict(n_styles=n_styles, input_nc=int(first[1]),
              num_layers=ci.infer_num_layers(sd, source))


def expected_shapes(config: Mapping[str, Any]) -> dict[str, tuple]:
  exp = ci.backbone_shapes(config['input_nc'], config['num_layers'])
  for i in range(config['n_styles']):
    for j in (0, 2, 4, 6):
      exp[f'styles.{i}.convs.{j}.weight'] = (STYLE_DIM, STYLE_DIM, 3, 3)
      exp[f'styles.{i}.convs.{j}.bias'] = (STYLE_DIM,)
    exp[f'styles.{i}.linear.weight'] = (STYLE_DIM, STYLE_DIM)
    exp[f'styles.{i}.linear.bias'] = (STYLE_DIM,)
  return exp


def check_opts(opts: Mapping[str, Any], config: Mapping[str, Any],
               source: str, generator_size: int | None = None) -> None:
  problems = []
  enc_type = opts.get('encoder_type')
  if enc_type is not None and enc_type != ENCODER_TYPE:
    problems.append(f'opts.encoder_type is {enc_type!r}; only {ENCODER_TYPE!r}'
                    ' (ReStyle-e4e, IR-SE-50) is supported')
  if 'input_nc' in opts and opts['input_nc'] != config['input_nc']:
    problems.append(f'opts.input_nc is {opts["input_nc"]} but '
                    f'encoder.input_layer.0.weight has {config["input_nc"]} '
                    'input channels')
  from l2m_jax.models.restyle import n_styles_for  # pylint: disable=g-import-not-at-top
  for name, size in (('opts.output_size', opts.get('output_size')),
                     ('the decoder', generator_size)):
    if size is not None and n_styles_for(int(size)) != config['n_styles']:
      problems.append(f'{name} is {size} px ({n_styles_for(int(size))} W+ '
                      f'rows) but the encoder has {config["n_styles"]} '
                      'style blocks')
  if config['input_nc'] != 6:
    problems.append(f'the encoder has {config["input_nc"]} input channels; '
                    'ReStyle iterates on 6 (image + reconstruction)')
  if problems:
    raise t2f.ConversionError(source, note='  ' + '\n  '.join(problems))


def latent_avg_rows(latent_avg: Any, n_styles: int, source: str) -> np.ndarray:
  la = t2f.to_numpy(latent_avg).astype(np.float32)
  if la.shape in ((STYLE_DIM,), (1, STYLE_DIM)):
    la = np.broadcast_to(la.reshape(1, STYLE_DIM), (n_styles, STYLE_DIM))
  elif la.shape != (n_styles, STYLE_DIM):
    raise t2f.ConversionError(
        source, mismatched=[('latent_avg', (n_styles, STYLE_DIM), la.shape)],
        note=f'  latent_avg must be ({STYLE_DIM},) or ({n_styles}, '
        f'{STYLE_DIM})')
  if not np.all(np.isfinite(la)):
    raise t2f.ConversionError(source, note='  latent_avg holds NaN or inf')
  return np.ascontiguousarray(la)


def convert_state_dict(sd: Mapping[str, Any], source: str,
                       latent_avg: Any) -> tuple[dict[str, Any], dict, dict]:
  """Encoder state_dict (no prefix) -> (variables, config, key_map).

  Raises:
    ConversionError: every missing, unexpected and mis-shaped key at once
      (named with the `encoder.` prefix of the file).
  """
  cfg = infer_config(sd, source)
  if latent_avg is not None:
    latent_avg = latent_avg_rows(latent_avg, cfg['n_styles'], source)
  exp = expected_shapes(cfg)
  try:
    t2f.check_state_dict(source, sd, exp, ignored=ci.strip_ignored(sd))
  except t2f.ConversionError as e:
    pre = lambda ks: [f'encoder.{k}' for k in ks]
    raise t2f.ConversionError(
        source, pre(e.missing), pre(e.unexpected),
        [(f'encoder.{k}', a, b) for k, a, b in e.mismatched]) from None
  ci.check_no_nonfinite(source, sd, exp)
  linear = [k for k in exp if '.linear.' in k]
  variables, key_map = ci.convert_generic(
      sd, [k for k in exp if k not in linear], ci.bn_module_set(exp))
  for k in linear:
    v = t2f.to_numpy(sd[k]).astype(np.float32)
    path = 'params/' + ci.module_path(k.rsplit('.', 1)[0]) + '/' + (
        k.rsplit('.', 1)[1])
    val = t2f.dense_kernel(v) if k.endswith('weight') else v
    t2f.set_path(variables, path, np.ascontiguousarray(val))
    key_map[k] = path
  key_map = {f'encoder.{k}': p for k, p in key_map.items()}
  if latent_avg is not None:
    t2f.set_path(variables, 'constants/latent_avg', latent_avg)
    key_map['latent_avg'] = 'constants/latent_avg'
  return variables, cfg, key_map


def build_model(config: Mapping[str, Any], dtype=None):
  from l2m_jax.models.restyle import ReStyleEncoder  # pylint: disable=g-import-not-at-top
  kw = {k: config[k] for k in ('n_styles', 'input_nc', 'num_layers')}
  if dtype is not None:
    kw['dtype'] = dtype
  return ReStyleEncoder(**kw)


def convert_checkpoint(obj: Any, source: str, mean_latent_samples: int = 10000,
                       log=print) -> tuple[dict[str, Any], dict[str, Any],
                                           dict[str, Any], dict[str, Any]]:
  """Converts a loaded ReStyle-e4e checkpoint object.

  Returns:
    (encoder variables, encoder meta, generator variables, generator meta);
    the metas lack the source file's path and hash (see `convert_file`).

  Raises:
    ConversionError: the wrong kind of checkpoint, unsupported opts, or
      every missing, unexpected and mis-shaped key at once.
  """
  from l2m_jax.models.restyle import variables_template  # pylint: disable=g-import-not-at-top
  from l2m_jax.models.stylegan2 import variables_template as g_template  # pylint: disable=g-import-not-at-top
  enc_sd, latent_avg, opts = split_checkpoint(obj, source)
  cfg = infer_config(enc_sd, source)
  sd = obj.get('state_dict') if isinstance(obj.get('state_dict'),
                                           Mapping) else obj
  if not any(isinstance(k, str) and k.startswith('decoder.') for k in sd):
    raise t2f.ConversionError(source, note='  no decoder.* keys next to the '
                              'encoder: the generator is missing')
  dec_sd, _, _ = cs.extract_g_ema(obj, source)
  g_vars, g_cfg, g_map = cs.convert_state_dict(dec_sd, f'{source}[decoder]',
                                               latent_avg=None)
  check_opts(opts, cfg, source, generator_size=g_cfg['size'])
  generator = cs.build_model(g_cfg)
  if latent_avg is None:
    log(f'{source}: no latent_avg in the checkpoint; estimating it from '
        f'{mean_latent_samples} mapping-network samples')
    latent_avg = cs.estimate_latent_avg(generator, g_vars,
                                        n=mean_latent_samples)
    la_source = f'estimated (mean of mapping over {mean_latent_samples} z)'
  else:
    la_source = 'checkpoint'
  variables, cfg, key_map = convert_state_dict(enc_sd, source, latent_avg)
  t2f.check_against_template(source, variables,
                             variables_template(build_model(cfg)))
  g_vars['constants'] = {'latent_avg': variables['constants']['latent_avg']}
  t2f.check_against_template(f'{source}[decoder]', g_vars,
                             g_template(generator))
  top_ignored = sorted(str(k) for k in obj if k not in ('state_dict',
                                                        'latent_avg'))
  meta = dict(format=FORMAT, config=cfg, generator=GENERATOR_DIR,
              generator_config=g_cfg, latent_avg=la_source,
              opts={k: v for k, v in opts.items()
                    if isinstance(v, (str, int, float, bool, type(None)))},
              key_map=key_map,
              ignored=ci.strip_ignored(
                  {f'encoder.{k}': None for k in enc_sd}) + top_ignored)
  g_meta = dict(format=cs.FORMAT, config=g_cfg, latent_avg=la_source,
                key_map={f'decoder.{k}': p for k, p in g_map.items()},
                ignored=sorted(f'decoder.{k}' for k in dec_sd
                               if k not in g_map))
  log(f'{source}: ReStyle-e4e encoder ({cfg["n_styles"]} styles, IR-SE-'
      f'{cfg["num_layers"]}) and a {g_cfg["size"]} px generator')
  return variables, meta, g_vars, g_meta


def convert_file(path: str, out_dir: str | None = None,
                 mean_latent_samples: int = 10000, overwrite: bool = False,
                 log=print) -> tuple[dict[str, Any], dict[str, Any],
                                     dict[str, Any], dict[str, Any]]:
  """Converts a ReStyle-e4e checkpoint file.

  Writes the encoder to `out_dir` and the generator to
  `out_dir/generator` when `out_dir` is given.

  Returns:
    (encoder variables, encoder meta, generator variables, generator meta).
  """
  source = str(path)
  obj = t2f.load_torch_file(path)
  variables, meta, g_vars, g_meta = convert_checkpoint(
      obj, source, mean_latent_samples, log)
  meta['source'] = t2f.source_meta(path)
  g_meta['source'] = dict(meta['source'], kind='decoder')
  if out_dir is not None:
    out = pathlib.Path(out_dir)
    t2f.save_converted(out, variables, meta, overwrite=overwrite)
    t2f.save_converted(out / GENERATOR_DIR, g_vars, g_meta,
                       overwrite=overwrite)
    log(f'wrote {out} and {out / GENERATOR_DIR}')
  return variables, meta, g_vars, g_meta


def load_encoder(path: str):
  """A converted encoder folder: (ReStyleEncoder, variables, meta)."""
  from l2m_jax.models.restyle import variables_template  # pylint: disable=g-import-not-at-top
  return t2f.load_model(path, FORMAT,
                        'convert with scripts/convert_latent.py encoder',
                        build_model, variables_template)


def load_restyle(path: str, generator_dir: str | None = None):
  """Encoder and generator: (encoder, enc_vars, generator, g_vars, meta).

  The generator comes from `generator_dir`, or from the `generator/` folder
  the converter wrote next to the encoder.
  """
  encoder, enc_vars, meta = load_encoder(path)
  gdir = generator_dir or str(pathlib.Path(path) / meta.get(
      'generator', GENERATOR_DIR))
  generator, g_vars, _ = cs.load_generator(gdir)
  if generator.n_latent != encoder.n_styles:
    raise ValueError(f'{path}: the encoder predicts {encoder.n_styles} W+ '
                     f'rows but the generator in {gdir} ({generator.size} px)'
                     f' uses {generator.n_latent}')
  return encoder, enc_vars, generator, g_vars, meta
