"""The EMA networks of an L2M-GAN run as a converted checkpoint.

`export_ema` writes the EMA generator and style encoder (with the frozen
FAN / ResNet-18 / LandmarkNet of the run) in the converted format 'l2m_gan'
(docs/architecture.md#converted-format), which scripts/edit.py and
scripts/evaluate.py read like a converted official checkpoint.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

from absl import logging
import jax

from l2m_jax import parallel
from l2m_jax.convert import torch_to_flax as t2f
from l2m_jax.models import l2m as l2m_models

EXPORT_FORMAT = 'l2m_gan'


def export_ema(out_dir: str | os.PathLike, state_ema: Mapping[str, Any],
               frozen: Mapping[str, Any],
               model_config: l2m_models.L2MModelConfig, step: int,
               workdir: str) -> None:
  """EMA-only params in the converted format 'l2m_gan' (docs/architecture.md).

  scripts/edit.py and scripts/evaluate.py load it with
  `l2m_jax.convert.l2m.load_l2m_checkpoint`.
  """
  variables = {'generator': {'params': state_ema['generator']},
               'style_encoder': {'params': state_ema['style_encoder']}}
  for name in ('fan', 'vgg', 'landmarks'):
    if name in frozen:
      variables[name] = frozen[name]
  key_map = {}
  try:
    from l2m_jax.convert import l2m as l2m_convert  # pylint: disable=g-import-not-at-top
    for name in variables:
      tmpl = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype),
                          variables[name])
      for tkey, (path, _) in l2m_convert.module_key_map(
          tmpl, resnet=name == 'vgg').items():
        key_map[f'{name}.{tkey}'] = f'{name}/{path}'
  except Exception as e:  # pylint: disable=broad-except
    logging.warning('EMA export: no torch key map (%s)', e)
  meta = {'format': EXPORT_FORMAT, 'config': model_config.to_dict(),
          'source': {'path': str(workdir), 'sha256': None, 'step': int(step),
                     'kind': 'l2m_jax training EMA'},
          'key_map': key_map, 'ignored': []}
  t2f.save_converted(out_dir, parallel.unreplicate_to_host(variables), meta,
                     overwrite=True)
