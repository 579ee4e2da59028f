"""The trained mapper of a Latent-To-Latent run as a converted checkpoint.

`export_mapper` writes the mapper in the converted format 'l2l_mapper'
(docs/architecture.md#ckpt-mapper), which scripts/edit_latent.py --mapper
and scripts/edit_photo.py read; the loop keeps the latest one in
`mapper_export/` and the one with the lowest eval loss in `mapper_best/`.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import numpy as np

from l2m_jax import l2l_networks
from l2m_jax import parallel
from l2m_jax.convert import mapper as mapper_convert
from l2m_jax.convert import torch_to_flax as t2f
from l2m_jax.models import mapper as mapper_lib


EXPORT_DIR = 'mapper_export'  # the latest mapper
BEST_EXPORT_DIR = 'mapper_best'  # the one with the lowest eval loss


def export_mapper(out_dir: str, params: Any, nets: l2l_networks.Networks,
                  config, step: int, workdir: str,
                  extra: Mapping[str, Any] = ()) -> None:
  """The mapper in the converted format 'l2l_mapper' (convert/mapper.py).

  scripts/edit_latent.py --mapper and scripts/edit_photo.py load it with
  `convert.mapper.load_mapper`. Every process must call this.
  """
  m = nets.mapper
  mcfg = l2l_networks.mapper_config(config, m.n_latent, m.style_dim,
                                    m.cond_dim)
  key_map = {}
  for g in mapper_lib.GROUP_NAMES:
    for i in range(m.n_layers):
      for p in ('weight', 'bias'):
        key_map[f'{g}.mapping.{i}.0.{p}'] = f'params/{g}/mapping_{i}/{p}'
    if m.cond_dim:
      key_map[f'{g}.cond.weight'] = f'params/{g}/cond/weight'
  meta = {'format': mapper_convert.FORMAT, 'config': mcfg,
          'attributes': list(nets.cond_names) if m.cond_dim else [],
          'trained_attributes': list(nets.trained_names),
          'source': {'path': str(workdir), 'sha256': None, 'step': int(step),
                     'kind': f'l2m_jax Latent-To-Latent training '
                             f'({config.mode})'},
          'key_map': key_map, 'ignored': [], **dict(extra)}
  t2f.save_converted(out_dir, {'params': parallel.unreplicate_to_host(params)},
                     meta, overwrite=True)


def best_so_far(workdir: str) -> float:
  try:
    meta = t2f.read_meta(os.path.join(workdir, BEST_EXPORT_DIR))
    return float(meta.get('eval_loss', np.inf))
  except (OSError, ValueError):
    return float('inf')
