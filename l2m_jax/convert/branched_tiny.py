"""`BranchedTiny.ckpt` -> Flax `l2m_jax.models.branched_tiny.BranchedTiny`.

Input: the attribute classifier of the unofficial Latent-To-Latent code
(850552586/Latent-To-Latent `models/attribute_classifier/BranchedTiny.py`),
a PyTorch-Lightning checkpoint whose `["state_dict"]` keys carry a `model.`
prefix (the upstream loader drops the first 6 characters of every key that
contains `model.`). A bare state_dict (with or without the prefix) is
accepted too. 642 entries, 8,830,254 parameters.

Lightning checkpoints may pickle objects besides tensors (hyper-parameter
containers, callback states); when `torch.load(weights_only=True)` refuses
them, the file is read with `convert.tensor_unpickler` (tensors only, other
objects become inert placeholders; nothing in the file is executed). Every
entry outside `state_dict` is ignored and listed in meta.json.

Layout rules: module path `a.b.c` -> `a_b_c`; Conv2d weight -> kernel
(kh, kw, I, O); Linear weight -> kernel (in, out), the `layers14.*.0`
weights (128, 64*7*7) permuted from the channel-major flatten to the NHWC one
((7*7*64, 128)); BatchNorm weight/bias -> scale/bias, running statistics ->
'batch_stats' mean/var, `num_batches_tracked` dropped;
`celeba_aligned_means` / `celeba_aligned_stds` -> the 'constants'
collection (used by the input normalisation).
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from l2m_jax.convert import arcface as carc
from l2m_jax.convert import irse as ci
from l2m_jax.convert import kinds
from l2m_jax.convert import tensor_unpickler
from l2m_jax.convert import torch_to_flax as t2f

FORMAT = 'branched_tiny'
CONSTANTS = ('celeba_aligned_means', 'celeba_aligned_stds')


def extract_state_dict(obj: Any, source: str) -> tuple[dict[str, Any],
                                                       list[str]]:
  """(state_dict without the `model.` prefix, ignored top-level entries)."""
  if not isinstance(obj, Mapping):
    raise t2f.ConversionError(
        source, note=f'  expected a checkpoint dict, found '
        f'{type(obj).__name__}')
  if isinstance(obj.get('state_dict'), Mapping):
    sd, ignored = obj['state_dict'], sorted(str(k) for k in obj
                                            if k != 'state_dict')
  else:
    sd, ignored = obj, []
  # As the upstream loader: keys containing 'model.' lose 6 characters.
  sd = {(k[6:] if 'model.' in k else k): v for k, v in sd.items()
        if isinstance(k, str)}
  if 'to_layer_6.0.weight' not in sd:
    raise t2f.ConversionError(source, note=kinds.wrong_kind_note(
        obj, 'classifier'))
  return sd, ignored


def expected_shapes() -> dict[str, tuple]:
  from l2m_jax.models import branched_tiny as bt  # pylint: disable=g-import-not-at-top
  w = bt.WIDTH
  exp: dict[str, tuple] = {k: (3,) for k in CONSTANTS}

  def convs(prefix, layout, cin):
    for j, i in enumerate(bt.conv_indices(layout)):
      exp[f'{prefix}.{i}.weight'] = (w, cin if j == 0 else w, 3, 3)
      exp[f'{prefix}.{i}.bias'] = (w,)
      ci.bn_shapes(f'{prefix}.{i + 2}', w, exp)

  convs('to_layer_6', bt.TRUNK, 3)
  for name, layout in (('from_6_to_11', bt.MID), ('layers12', bt.LEVEL12),
                       ('layers13', bt.LEVEL13)):
    for b in range(len(bt.PARENTS[name])):
      convs(f'{name}.{b}', layout, w)
  for name, cin, cout in (('layers14', w * 7 * 7, 2 * w),
                          ('layers15', 2 * w, 2 * w), ('layers16', 2 * w, 1)):
    for b in range(len(bt.PARENTS[name])):
      exp[f'{name}.{b}.0.weight'] = (cout, cin)
      exp[f'{name}.{b}.0.bias'] = (cout,)
      if name != 'layers16':
        ci.bn_shapes(f'{name}.{b}.2', cout, exp)
  return exp


def _path(module: str) -> str:
  return module.replace('.', '_')


def convert_state_dict(sd: Mapping[str, Any], source: str
                       ) -> tuple[dict[str, Any], dict]:
  """State_dict (prefix stripped) -> (variables, key_map).

  Raises:
    ConversionError: every missing, unexpected and mis-shaped key at once.
  """
  from l2m_jax.models import branched_tiny as bt  # pylint: disable=g-import-not-at-top
  exp = expected_shapes()
  t2f.check_state_dict(source, sd, exp, ignored=ci.strip_ignored(sd))
  ci.check_no_nonfinite(source, sd, exp)
  linear = [k for k in exp if k.endswith('.0.weight') and len(exp[k]) == 2]
  generic = [k for k in exp if k not in linear and k not in CONSTANTS]
  variables, key_map = ci.convert_generic(sd, generic, ci.bn_module_set(exp),
                                          path_fn=_path)
  for k in linear:
    v = t2f.to_numpy(sd[k]).astype(np.float32)
    if k.startswith('layers14.'):
      val = carc.flatten_kernel(v, bt.WIDTH, 7)
    else:
      val = t2f.dense_kernel(v)
    path = f'params/{_path(k.rsplit(".", 1)[0])}/kernel'
    t2f.set_path(variables, path, val)
    key_map[k] = path
  for k in CONSTANTS:
    t2f.set_path(variables, f'constants/{k}',
                 t2f.to_numpy(sd[k]).astype(np.float32))
    key_map[k] = f'constants/{k}'
  return variables, key_map


def build_model(config: Mapping[str, Any] | None = None, dtype=None):
  from l2m_jax.models.branched_tiny import BranchedTiny  # pylint: disable=g-import-not-at-top
  del config  # the architecture has no free hyper-parameters
  return BranchedTiny() if dtype is None else BranchedTiny(dtype=dtype)


def convert_file(path: str, out_dir: str | None = None,
                 overwrite: bool = False, log=print
                 ) -> tuple[dict[str, Any], dict[str, Any]]:
  """Converts `BranchedTiny.ckpt` (writes `out_dir` when given)."""
  from l2m_jax.models import branched_tiny as bt  # pylint: disable=g-import-not-at-top
  obj, restricted = tensor_unpickler.load_torch_checkpoint(path)
  if restricted:
    log(f'{path}: holds non-tensor objects; read with the tensors-only '
        'unpickler (nothing executed)')
  sd, ignored = extract_state_dict(obj, str(path))
  variables, key_map = convert_state_dict(sd, str(path))
  log(f'{path}: BranchedTiny, {len(key_map)} tensors mapped')
  return t2f.finish_conversion(
      path, variables, bt.variables_template(build_model()), fmt=FORMAT,
      config=dict(attributes=list(bt.ATTRIBUTES)), key_map=key_map,
      ignored=ci.strip_ignored(sd) + ignored,
      source=t2f.source_meta(path, restricted_unpickler=restricted),
      out_dir=out_dir, overwrite=overwrite, log=log)


def load_classifier(path: str):
  """Loads a converted classifier: (BranchedTiny module, variables, meta)."""
  from l2m_jax.models import branched_tiny as bt  # pylint: disable=g-import-not-at-top
  return t2f.load_model(path, FORMAT,
                        'convert with scripts/convert_latent.py classifier',
                        lambda _: build_model(), bt.variables_template)
