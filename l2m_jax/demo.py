"""One command: generate faces, train a small L2M-GAN, measure its edits.

  python -m l2m_jax.demo --workdir=runs/demo [--config=configs/demo.py]

Steps (progress is printed throughout):
  1. Writes the generated face data set (l2m_jax/datasets/synthetic_faces.py)
     in the official layout <workdir>/data/{train,val}/<domain>/*.png.
  2. Trains L2M-GAN with `l2m_jax.train_l2m.train_and_evaluate` in
     <workdir>/train (orbax checkpoints, TensorBoard logs, sample grids and
     the EMA export <workdir>/train/ema_export that scripts/edit.py loads).
  3. Edits every validation face towards the other domain at the degrees in
     `config.demo.degrees` (docs/method.md#l2m-edit; degree 0 = reconstruction).
  4. Trains the JAX attribute classifier and identity regressor on the
     generated training faces and reports (l2m_jax/evaluation/
     editing_metrics.py): attribute accuracy of the edits, identity error vs
     the reconstruction baseline, pixel change outside the attribute's region,
     and FID (skipped, loudly, without Inception weights); as reference
     points, the same metrics for the exact counterfactual (each face
     re-rendered with the attribute flipped) and the identity distance
     between different faces.
  5. Writes <workdir>/metrics.json and <workdir>/demo_grid.png (rows =
     sources; columns = source, then one column per degree).
"""

import json
import os
import pathlib
import sys
import time

from absl import app
from absl import flags
from absl import logging
from clu import metric_writers
import jax
import numpy as np
from ml_collections import config_flags

from l2m_jax import cli

_REPO = pathlib.Path(__file__).resolve().parents[1]
if str(_REPO) not in sys.path:  # configs/ lives next to the package
  sys.path.insert(0, str(_REPO))

if __name__ == '__main__':  # flag mistakes: one line, exit 2
  cli.exit_on_config_problem(sys.argv, str(_REPO / 'configs' / 'demo.py'))
_CONFIG = config_flags.DEFINE_config_file(
    'config', str(_REPO / 'configs' / 'demo.py'),
    'Demo configuration file.', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', 'runs/demo',
                               'Directory for data, checkpoints and results.')


def _say(msg: str) -> None:
  print(f'[demo {time.strftime("%H:%M:%S")}] {msg}', flush=True)
  logging.info(msg)


def _to_float(u8: np.ndarray) -> np.ndarray:
  # The official loader's ToTensor + Normalize(0.5, 0.5) (l2m_jax.image_io).
  return ((u8.astype(np.float32) / 255.0) - 0.5) / 0.5


def generate_data(config, workdir: str) -> dict:
  """Stage 1: writes <workdir>/data/{train,val}/<domain>/*.png; sets data_dir.

  Returns:
    The export info of `synthetic_faces.export_folder_layout`.
  """
  from l2m_jax.datasets import synthetic_faces as sf  # pylint: disable=g-import-not-at-top
  sf.check_attribute(config.demo.attribute, 'config.demo.attribute')
  d = config.demo
  size = int(config.img_size)
  work = pathlib.Path(workdir).resolve()
  work.mkdir(parents=True, exist_ok=True)
  _say(f'1/5 generating {d.num_train}+{d.num_val} faces at {size}px '
       f'(attribute {d.attribute!r}, seed {d.data_seed})')
  info = sf.export_folder_layout(
      work / 'data', d.attribute, image_size=size, num_train=d.num_train,
      num_val=d.num_val, seed=d.data_seed, overwrite=True, progress=_say)
  config.data_dir = str(work / 'data')
  return info


def evaluate(config, workdir: str, checkpoint: str | os.PathLike,
             timings: dict | None = None) -> dict:
  """Stages 3-5: edits, editing metrics, metrics.json, demo_grid.png.

  Args:
    config: the demo config (`config.demo` and the image/batch sizes).
    workdir: the demo folder; outputs go to <workdir>/metrics.json,
      <workdir>/demo_grid.png, <workdir>/metric_models/ and TensorBoard
      scalars/images to <workdir>/train.
    checkpoint: an EMA export (format 'l2m_gan') of the trained model.
    timings: seconds spent in the earlier stages, copied into the JSON.

  Returns:
    The metrics dict (also written to <workdir>/metrics.json).
  """
  # Imports here keep `--help` fast.
  from l2m_jax import editing  # pylint: disable=g-import-not-at-top
  from l2m_jax import image_io  # pylint: disable=g-import-not-at-top
  from l2m_jax.convert import l2m as l2m_convert  # pylint: disable=g-import-not-at-top
  from l2m_jax.datasets import synthetic_faces as sf  # pylint: disable=g-import-not-at-top
  from l2m_jax.evaluation import editing_metrics as em  # pylint: disable=g-import-not-at-top

  sf.check_attribute(config.demo.attribute, 'config.demo.attribute')
  t_start = time.time()
  timings = dict(timings or {})
  d = config.demo
  size = int(config.img_size)
  work = pathlib.Path(workdir).resolve()
  work.mkdir(parents=True, exist_ok=True)
  variables, mc = l2m_convert.load_l2m_checkpoint(checkpoint)
  if mc.img_size != size:
    raise ValueError(f'{checkpoint}: the model is {mc.img_size}px but '
                     f'config.img_size is {size}')

  # 3. Edits of the validation faces.
  _say(f'3/5 editing {d.num_val} validation faces at degrees '
       f'{list(d.degrees)}')
  t = time.time()
  val = sf.generate_arrays(int(d.num_val), size, int(d.data_seed), 'val')
  x = _to_float(val['image'])
  y = val[d.attribute].astype(np.int32)
  degrees = tuple(float(a) for a in d.degrees)
  bs = int(config.val_batch_size)
  chunks = []
  for i in range(0, len(x), bs):
    xb, yb = x[i:i + bs], y[i:i + bs]
    chunks.append(np.asarray(editing.edit_sweep(
        variables, xb, yb, 1 - yb, np.asarray(degrees, np.float32),
        config=mc)))
  sweep = np.clip(np.concatenate(chunks, axis=1), -1.0, 1.0)  # [D, N, S, S, 3]
  # Quantise as saved PNGs are (image_io.to_uint8), so metrics see files' pixels.
  sweep = _to_float(image_io.to_uint8(sweep))
  timings['edit_s'] = time.time() - t

  # 4. Metric models and metrics.
  _say(f'4/5 training the attribute classifier and identity regressor '
       f'({d.metric_steps} steps each) on the generated training faces')
  t = time.time()
  train = sf.generate_arrays(int(d.num_train), size, int(d.data_seed), 'train')
  labels = np.stack([train[a] for a in sf.ATTRIBUTES], axis=1)
  val_labels = np.stack([val[a] for a in sf.ATTRIBUTES], axis=1)
  c_apply, c_params, c_meta = em.train_model(
      'classifier', train['image'], labels, val_images=val['image'],
      val_targets=val_labels, steps=int(d.metric_steps),
      width=int(d.metric_width), seed=int(config.seed),
      names=sf.ATTRIBUTES, log_every=max(1, int(d.metric_steps) // 4))
  r_apply, r_params, r_meta = em.train_model(
      'regressor', train['image'], train['identity'], val_images=val['image'],
      val_targets=val['identity'], steps=int(d.metric_steps),
      width=int(d.metric_width), seed=int(config.seed),
      names=sf.IDENTITY_NAMES, log_every=max(1, int(d.metric_steps) // 4))
  em.save_model(work / 'metric_models' / 'classifier', c_params, c_meta)
  em.save_model(work / 'metric_models' / 'identity_regressor', r_params,
                r_meta)
  timings['metric_models_s'] = time.time() - t
  t = time.time()
  k = sf.ATTRIBUTES.index(d.attribute)
  masks = sf.region_masks(val['identity'], d.attribute, size)
  results = em.evaluate_edits(
      sources=x, source_labels=y,
      edits={a: sweep[j] for j, a in enumerate(degrees)},
      classifier=(em.output_slice(c_apply, k), c_params),
      identity_model=(r_apply, r_params), region_masks=masks,
      inception_checkpoint=str(config.inception_checkpoint))
  # Reference points for reading the numbers: the exact counterfactual (the
  # same face re-rendered with the attribute flipped) is what a perfect edit
  # scores, and the identity distance between two different val faces is
  # what losing the identity scores.
  exact = []
  for i in range(len(x)):
    ident, attrs = sf.sample_face(int(d.data_seed), 'val', i)
    attrs = {**attrs, d.attribute: 1 - attrs[d.attribute]}
    exact.append(sf.render_face(ident, attrs, size))
  exact = _to_float(np.stack(exact))
  references = {'exact_counterfactual': {
      'attribute_accuracy': em.attribute_accuracy(
          em.output_slice(c_apply, k), c_params, exact, 1 - y),
      **em.identity_error(r_apply, r_params, x, exact),
      'pixel_change_outside': em.pixel_change_outside(x, exact, masks)}}
  references['different_faces_identity_error'] = float(np.mean(
      em.identity_distances(r_apply, r_params, x, np.roll(x, 1, axis=0))))
  timings['metrics_s'] = time.time() - t

  head = results.get('degree=1', {})
  _say(f'    edited attribute accuracy (degree 1): '
       f'{head.get("attribute_accuracy")}; identity error '
       f'{head.get("identity_error")} vs reconstruction '
       f'{head.get("identity_error_baseline")}; pixel change outside region '
       f'{head.get("pixel_change_outside")}; FID {results["fid"]["status"]}')
  ref = references['exact_counterfactual']
  _say(f'    exact counterfactual (a perfect edit): accuracy '
       f'{ref["attribute_accuracy"]}, identity error {ref["identity_error"]}; '
       f'identity error between different faces '
       f'{references["different_faces_identity_error"]}')

  # 5. Outputs.
  _say('5/5 writing metrics.json, demo_grid.png and TensorBoard scalars')
  n = min(int(d.grid_sources), len(x))
  # Alternate domains so both edit directions show.
  order = np.concatenate([np.nonzero(y == 0)[0][:n // 2 + n % 2],
                          np.nonzero(y == 1)[0][:n // 2]])
  order = np.concatenate([order, np.setdiff1d(np.arange(len(x)), order)])[:n]
  cols = np.concatenate([x[order][None], sweep[:, order]], axis=0)
  grid = image_io.make_grid(np.transpose(cols, (1, 0, 2, 3, 4)))
  from PIL import Image  # pylint: disable=g-import-not-at-top
  Image.fromarray(grid).save(work / 'demo_grid.png')
  step = int(config.total_iters)
  writer = metric_writers.create_default_writer(
      str(work / 'train'), just_logging=jax.process_index() > 0)
  scalars = {'demo/source_accuracy': results['source_accuracy']}
  for key, m in results.items():
    if key.startswith('degree='):
      for name, v in m.items():
        scalars[f'demo/{key}/{name}'] = float(v)
  writer.write_scalars(step, scalars)
  writer.write_images(step, {'demo/grid': grid[None]})
  writer.flush()
  timings['evaluate_s'] = time.time() - t_start
  if 'train_s' in timings:
    timings['total'] = sum(timings.get(k, 0.0)
                           for k in ('data_s', 'train_s', 'evaluate_s'))
  metrics = {
      'attribute': d.attribute,
      'domains': list(mc.domains),
      'image_size': size,
      'train_steps': step,
      'num_train': int(d.num_train),
      'num_val': int(d.num_val),
      'grid_sources': [int(i) for i in order],
      'classifier_heldout_accuracy': dict(zip(sf.ATTRIBUTES,
                                              c_meta['val_accuracy'])),
      'regressor_heldout_rmse': r_meta['val_rmse'],
      'regressor_heldout_l2': r_meta['val_l2'],
      'edits': results,
      'references': references,
      'timings_s': timings,
      'device': str(jax.devices()[0].platform),
      'checkpoint': str(checkpoint),
  }
  (work / 'metrics.json').write_text(json.dumps(metrics, indent=1))
  return metrics


def run_demo(config, workdir: str) -> dict:
  """Runs the whole demo; returns the metrics dict (also written to JSON)."""
  from l2m_jax import train_l2m  # pylint: disable=g-import-not-at-top
  from l2m_jax.datasets import synthetic_faces as sf  # pylint: disable=g-import-not-at-top

  t_start = time.time()
  sf.check_attribute(config.demo.attribute, 'config.demo.attribute')
  work = pathlib.Path(workdir).resolve()
  work.mkdir(parents=True, exist_ok=True)
  _say(f'workdir {work}; devices: {jax.devices()}')
  timings = {}

  # 1. Data.
  t = time.time()
  info = generate_data(config, str(work))
  timings['data_s'] = time.time() - t
  _say(f'    data ready in {timings["data_s"]:.1f}s: {info["counts"]}')

  # 2. Training.
  _say(f'2/5 training L2M-GAN for {config.total_iters} steps, batch '
       f'{config.batch_size} (progress below; TensorBoard: {work / "train"})')
  t = time.time()
  train_l2m.train_and_evaluate(config, str(work / 'train'))
  timings['train_s'] = time.time() - t
  _say(f'    training done in {timings["train_s"]:.1f}s')
  ckpt = work / 'train' / 'ema_export'

  # 3-5. Edits, metrics, outputs.
  metrics = evaluate(config, str(work), ckpt, timings)
  domains = metrics['domains']
  _say(f'done in {time.time() - t_start:.0f}s. Results: {work / "metrics.json"}'
       f', grid: {work / "demo_grid.png"}. Edit your own images with: '
       f'python scripts/edit.py --checkpoint {ckpt} --input <img or dir> '
       f'--target {domains[1]} --out <dir>')
  return metrics


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  # Exit codes: l2m_jax/errors.py (docs/reliability.md).
  cli.run_reporting_errors(run_demo, _CONFIG.value, _WORKDIR.value,
                           prefix='demo: error', log=False)


if __name__ == '__main__':
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
  app.run(main, flags_parser=cli.parse_flags)
