"""pSp's ArcFace `model_ir_se50.pth` -> Flax `l2m_jax.models.arcface.ArcFace`.

Input: the flat state_dict of `Backbone(112, 50, 'ir_se')` (eladrich/
pixel2style2pixel `models/encoders/model_irse.py`; weights from TreB1eN's
InsightFace_Pytorch): `input_layer.*`, `body.{0..23}.*`,
`output_layer.{0,3,4}.*` (397 entries, 43,797,696 parameters). A `{"state_dict": ...}` wrapper and a
DataParallel `module.` prefix are accepted. `num_batches_tracked` entries are
dropped and may be absent (files from older PyTorch versions lack them).

Layout rules: those of `convert/irse.py`, plus `output_layer.3` (Linear
512*s*s -> 512, s = 7 at 112 px): its (512, 512*s*s) weight is channel-major
(NCHW flatten); it becomes the (s*s*512, 512) kernel of the NHWC flatten,
`W.reshape(512, 512, s, s).transpose(2, 3, 1, 0).reshape(-1, 512)`.
The config (input_size 112/224, num_layers 50/100/152) is inferred from the
shapes.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from l2m_jax.convert import irse as ci
from l2m_jax.convert import kinds
from l2m_jax.convert import torch_to_flax as t2f

FORMAT = 'arcface'


def extract_state_dict(obj: Any, source: str) -> dict[str, Any]:
  if not isinstance(obj, Mapping):
    raise t2f.ConversionError(
        source, note=f'  expected a state_dict (dict of tensors), found '
        f'{type(obj).__name__}')
  sd = obj
  if isinstance(obj.get('state_dict'), Mapping):
    sd = obj['state_dict']
  sd = dict(sd)
  if sd and all(str(k).startswith('module.') for k in sd):
    sd = {k[len('module.'):]: v for k, v in sd.items()}
  if ('input_layer.0.weight' not in sd or 'output_layer.3.weight' not in sd
      or kinds.guess_kind(obj) not in (None, 'arcface')):
    raise t2f.ConversionError(source, note=kinds.wrong_kind_note(obj,
                                                                 'arcface'))
  return sd


def infer_config(sd: Mapping[str, Any], source: str) -> dict[str, Any]:
  num_layers = ci.infer_num_layers(sd, source)
  fc = t2f.state_dict_shapes(sd)['output_layer.3.weight']
  sides = {512 * 7 * 7: 112, 512 * 14 * 14: 224}
  if len(fc) != 2 or fc[1] not in sides:
    raise t2f.ConversionError(
        source, mismatched=[('output_layer.3.weight', (512, 512 * 7 * 7), fc)],
        note='  expected the 112 px (7 x 7) or 224 px (14 x 14) head')
  return dict(input_size=sides[fc[1]], num_layers=num_layers)


def expected_shapes(config: Mapping[str, Any]) -> dict[str, tuple]:
  exp = ci.backbone_shapes(3, config['num_layers'])
  s = config['input_size'] // 16
  ci.bn_shapes('output_layer.0', 512, exp)
  exp['output_layer.3.weight'] = (512, 512 * s * s)
  exp['output_layer.3.bias'] = (512,)
  ci.bn_shapes('output_layer.4', 512, exp)
  return exp


def flatten_kernel(weight: np.ndarray, channels: int, side: int) -> np.ndarray:
  """Channel-major (out, C*s*s) Linear weight -> NHWC-flatten (s*s*C, out)."""
  out = weight.shape[0]
  w = weight.reshape(out, channels, side, side).transpose(2, 3, 1, 0)
  return np.ascontiguousarray(w.reshape(side * side * channels, out))


def convert_state_dict(sd: Mapping[str, Any], source: str
                       ) -> tuple[dict[str, Any], dict[str, Any], dict]:
  """model_ir_se50 state_dict -> (variables, config, key_map).

  Raises:
    ConversionError: every missing, unexpected and mis-shaped key at once.
  """
  cfg = infer_config(sd, source)
  exp = expected_shapes(cfg)
  t2f.check_state_dict(source, sd, exp, ignored=ci.strip_ignored(sd))
  ci.check_no_nonfinite(source, sd, exp)
  linear = ('output_layer.3.weight',)
  variables, key_map = ci.convert_generic(
      sd, [k for k in exp if k not in linear], ci.bn_module_set(exp))
  s = cfg['input_size'] // 16
  w = flatten_kernel(t2f.to_numpy(sd['output_layer.3.weight']).astype(
      np.float32), 512, s)
  t2f.set_path(variables, 'params/output_layer_3/kernel', w)
  key_map['output_layer.3.weight'] = 'params/output_layer_3/kernel'
  return variables, cfg, key_map


def build_model(config: Mapping[str, Any], dtype=None):
  from l2m_jax.models.arcface import ArcFace  # pylint: disable=g-import-not-at-top
  kw = dict(input_size=config['input_size'], num_layers=config['num_layers'])
  if dtype is not None:
    kw['dtype'] = dtype
  return ArcFace(**kw)


def convert_file(path: str, out_dir: str | None = None,
                 overwrite: bool = False, log=print
                 ) -> tuple[dict[str, Any], dict[str, Any]]:
  """Converts `model_ir_se50.pth` (writes `out_dir` when given)."""
  from l2m_jax.models.arcface import variables_template  # pylint: disable=g-import-not-at-top
  obj = t2f.load_torch_file(path)
  sd = extract_state_dict(obj, str(path))
  variables, cfg, key_map = convert_state_dict(sd, str(path))
  log(f'{path}: ArcFace IR-SE-{cfg["num_layers"]}, {cfg["input_size"]} px, '
      f'{len(key_map)} tensors mapped')
  return t2f.finish_conversion(
      path, variables, variables_template(build_model(cfg)), fmt=FORMAT,
      config=cfg, key_map=key_map, ignored=ci.strip_ignored(sd),
      out_dir=out_dir, overwrite=overwrite, log=log)


def load_arcface(path: str):
  """Loads a converted ArcFace: (ArcFace module, variables, meta)."""
  from l2m_jax.models.arcface import variables_template  # pylint: disable=g-import-not-at-top
  return t2f.load_model(path, FORMAT,
                        'convert with scripts/convert_latent.py arcface',
                        build_model, variables_template)
