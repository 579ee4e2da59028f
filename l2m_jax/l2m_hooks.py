"""Periodic work of an L2M-GAN run: sample grids and the FID.

`sample_edits` edits fixed validation sources over a degree sweep with the
EMA networks (through `l2m_jax.editing`, the one composition of the edit);
`SampleSaver` writes them as `samples/<step>.png` and to TensorBoard;
`maybe_fid` runs the periodic FID of `l2m_jax.evaluation.l2m_eval`.
"""

from __future__ import annotations

import functools
import os
import pathlib
from typing import TYPE_CHECKING, Any, Mapping

from absl import logging
import jax
import numpy as np

from l2m_jax import editing
from l2m_jax import image_io
from l2m_jax import parallel
from l2m_jax import training
from l2m_jax.models import landmarks as landmarks_lib

if TYPE_CHECKING:  # annotations only
  import ml_collections  # pylint: disable=g-bad-import-order
  from l2m_jax.train_l2m import Models  # pylint: disable=g-bad-import-order


def sample_edits(models: Models, ema: Mapping[str, Any],
                 frozen: Mapping[str, Any], x: jax.Array, y: jax.Array,
                 degrees: tuple[float, ...]) -> jax.Array:
  """Edits of x towards the next domain over a degree sweep
  (docs/method.md#l2m-edit).

  s_hat(a) = s + a * (T_y'(s_r) - s_r), y' = (y + 1) mod num_domains.

  Returns:
    [len(degrees), N, S, S, 3] edited images (not clamped).
  """
  y_trg = (y + 1) % models.model_config.num_domains
  masks = (landmarks_lib.masks_from_frozen(frozen, x)
           if models.model_config.w_hpf > 0 else None)
  return editing.sweep_core(
      models.generator, models.style_encoder, {'params': ema['generator']},
      {'params': ema['style_encoder']}, x, y, y_trg, masks, degrees)


def sample_grid(x: np.ndarray, edits: np.ndarray) -> np.ndarray:
  """Rows = sources then one row per degree; uint8 [H, W, 3] grid."""
  rows = np.concatenate([x[None], edits], axis=0)  # [1 + D, N, S, S, 3]
  return image_io.make_grid(np.clip(rows, -1, 1))


class SampleSaver:
  """Writes the degree-sweep grid of the EMA networks (main process only).

  The sources are the first `config.num_sample` validation images, the same
  at every step; the grid has the sources on top and one row per degree of
  `config.sample_degrees`.
  """

  def __init__(self, config: ml_collections.ConfigDict, models: Models,
               frozen_host: Mapping[str, Any], workdir: str, writer: Any):
    from l2m_jax import input_pipeline  # pylint: disable=g-import-not-at-top
    self._fn = jax.jit(functools.partial(
        sample_edits, models, degrees=tuple(float(a) for a in
                                            config.sample_degrees)))
    self._frozen = frozen_host
    self._workdir, self._writer = workdir, writer
    self._x, self._y = input_pipeline.fixed_sources(config,
                                                    int(config.num_sample))

  def __call__(self, step: int, ema: Any) -> None:
    if not parallel.is_main_process():  # the file is the main one's
      return
    edits = self._fn(parallel.unreplicate_to_host(ema), self._frozen,
                     self._x, self._y)
    training.write_sample_grid(self._workdir, self._writer, step,
                               sample_grid(self._x, np.asarray(edits)),
                               'samples/degree_sweep')


def maybe_fid(config, models, state_ema, frozen, step, writer, workdir,
               extractor_cache):
  """Periodic FID (l2m_jax.evaluation.l2m_eval); every process calls it.

  Each process edits and extracts features of its share of every folder;
  the statistics are combined across processes; the main process writes
  the JSON, the edited images and the scalars.
  """
  if not config.eval_fid or not config.inception_checkpoint:
    logging.info('step %d: FID skipped (eval_fid=%s, inception_checkpoint=%r)',
                 step, config.eval_fid, config.inception_checkpoint)
    return
  from l2m_jax.evaluation import fid as fid_lib  # pylint: disable=g-import-not-at-top
  from l2m_jax.evaluation import l2m_eval  # pylint: disable=g-import-not-at-top
  per_process = parallel.per_process_batch(config.val_batch_size)
  if 'extractor' not in extractor_cache:
    extractor_cache['extractor'] = fid_lib.make_extractor(
        'stargan_v2', config.inception_checkpoint, batch_size=per_process)
  variables = {'generator': {'params': state_ema['generator']},
               'style_encoder': {'params': state_ema['style_encoder']}}
  for name in ('fan', 'landmarks'):
    if name in frozen:
      variables[name] = frozen[name]
  data = pathlib.Path(config.data_dir)
  main = parallel.is_main_process()
  result = l2m_eval.evaluate_l2m(
      variables, models.model_config, data / config.val_split,
      data / config.train_split, extractor=extractor_cache['extractor'],
      batch_size=per_process,
      cache_dir=os.path.join(workdir, 'fid_cache'),
      eval_dir=os.path.join(workdir, f'eval_{step:06d}'), progress=False,
      log=logging.info)
  if main:
    l2m_eval.write_results(
        os.path.join(workdir, l2m_eval.results_filename(step)), result)
  # 'FID_reference/sad2smile' -> 'eval/fid/sad2smile'.
  writer.write_scalars(step, {f'eval/fid/{k.split("/")[-1]}': float(v)
                              for k, v in dict(result).items()})
