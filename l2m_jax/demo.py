"""One command: generate faces, train a small L2M-GAN, measure its edits.

  python -m l2m_jax.demo --workdir=runs/demo [--config=configs/demo.py]
      [--verbose]

Stages (one progress line each, an ETA while training):
  1. Writes the generated face data set (l2m_jax/datasets/synthetic_faces.py)
     in the official layout <workdir>/data/{train,val}/<domain>/*.png.
  2. Trains the landmark network that makes the generator's masks in place
     of the FAN (l2m_jax.models.landmarks) on the faces' known landmarks:
     <workdir>/priors/landmarks.
  3. Trains the preservation network that replaces the ImageNet ResNet-18
     (l2m_jax.models.preservation): <workdir>/priors/preservation.
  4. Trains L2M-GAN with `l2m_jax.train_l2m.train_and_evaluate` in
     <workdir>/train (orbax checkpoints, TensorBoard logs, sample grids and
     the EMA export <workdir>/train/ema_export that scripts/edit.py loads).
  5. Edits every validation face towards the other domain at the degrees in
     `config.demo.degrees` (docs/method.md#l2m-edit; degree 0 =
     reconstruction), trains the JAX attribute classifier and identity
     regressor on the generated training faces (the regressor also on their
     counterfactuals, so that it reads the identity and not the attribute)
     and reports (l2m_jax/evaluation/editing_metrics.py): attribute
     accuracy, identity error against the reconstruction's, pixel change
     outside the attribute's region, FID (skipped, loudly, without Inception
     weights), each next to the same metric of the exact counterfactual
     (each face re-rendered with the attribute flipped).
  6. Writes <workdir>/metrics.json, <workdir>/demo_grid.png (rows = sources;
     columns = source, one column per degree, the exact counterfactual), the
     same grid enlarged 4x (nearest-neighbour) as demo_grid_large.png, and
     <workdir>/edits.npz (the quantised edits the metrics were computed on).

On a CPU the command splits the host into `config.demo.cpu_devices` JAX
devices (default 2) and trains data-parallel over them.

Stages 1-3 are reused when <workdir> already holds their output for the same
settings; stage 4 resumes from the latest checkpoint in <workdir>/train (use a
fresh workdir when changing training settings). Library INFO logging
(orbax, clu, TensorFlow, parameter tables) is off unless --verbose.
"""

import functools
import importlib
import json
import os
import pathlib
import sys
import threading
import time

from l2m_jax import host_memory  # imports no JAX  # pylint: disable=g-bad-import-order

# glibc reads its malloc tunables at process start: the CLI re-executes
# itself once with transparent huge pages on (l2m_jax/host_memory.py).
if __name__ == '__main__':
  host_memory.reexec_with_huge_pages()

# TensorFlow's C++ notices are decided at import time.
if '--verbose' not in sys.argv and '--verbose=true' not in sys.argv:
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

from absl import app  # pylint: disable=g-import-not-at-top,wrong-import-position
from absl import flags  # pylint: disable=g-import-not-at-top,wrong-import-position
from absl import logging  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
from ml_collections import config_flags  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

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
_VERBOSE = flags.DEFINE_bool('verbose', False,
                             'Show library INFO logs (orbax, clu, TF).')

NUM_STAGES = 6
GRID_ZOOM = 4  # demo_grid_large.png: nearest-neighbour enlargement
SYNTHETIC_DATA = 'synthetic_faces'


def _say(msg: str) -> None:
  print(f'[demo {time.strftime("%H:%M:%S")}] {msg}', flush=True)


def _fmt_s(seconds: float) -> str:
  seconds = max(0, int(round(seconds)))
  return (f'{seconds // 60}m{seconds % 60:02d}s' if seconds >= 60
          else f'{seconds}s')


class Progress:
  """Prints `label step/total (pct) rate, ETA` about every `every_s` seconds.

  The first call is the first completed step, which includes compilation;
  rates and the ETA are measured from it.
  """

  def __init__(self, label: str, total: int, every_s: float = 20.0,
               start: int = 0):
    self.label, self.total, self.every_s = label, int(total), every_s
    self.start = start
    self.t0 = self.t_last = None
    self.first = None

  def __call__(self, step: int, loss: float | None = None) -> None:
    now = time.time()
    if self.t0 is None:
      self.t0, self.t_last, self.first = now, now, step
      _say(f'    {self.label}: first step done ({step}/{self.total})')
      return
    if now - self.t_last < self.every_s and step < self.total:
      return
    self.t_last = now
    rate = (step - self.first) / max(now - self.t0, 1e-9)
    eta = (self.total - step) / max(rate, 1e-9)
    extra = f', loss {loss:.4f}' if loss is not None else ''
    _say(f'    {self.label}: {step}/{self.total} '
         f'({100 * step / self.total:.0f}%), {rate:.1f} steps/s, '
         f'ETA {_fmt_s(eta)}{extra}')


def _to_float(u8: np.ndarray) -> np.ndarray:
  # The official loader's ToTensor + Normalize(0.5, 0.5) (l2m_jax.image_io).
  return ((u8.astype(np.float32) / 255.0) - 0.5) / 0.5


_FACES: dict = {}  # (num, size, seed, split[, attribute]) -> faces [counterfactuals]
# The metric models' background thread (MetricModelsJob) reads them too: one
# thread renders a set, the other waits for it.
_FACES_LOCK = threading.Lock()


def _faces(config, split: str) -> dict:
  """The demo's generated train or val faces, made once per process.

  The landmark, preservation and metric stages all need the same arrays;
  rendering 2000 faces takes a few seconds each time. The arrays are
  read-only, so that no stage can change what the next one sees.
  """
  d = config.demo
  num = int(d.num_train if split == 'train' else d.num_val)
  return _rendered_faces(num, int(config.img_size), int(d.data_seed), split)


def _rendered_faces(num: int, image_size: int, seed: int, split: str,
                    make=None) -> dict:
  """`synthetic_faces.generate_arrays`, made once per process.

  `make()`, when given, returns those arrays otherwise (stage 1 reads them
  back from the folder it wrote).
  """
  from l2m_jax.datasets import synthetic_faces as sf  # pylint: disable=g-import-not-at-top
  key = (int(num), int(image_size), int(seed), split)
  with _FACES_LOCK:
    if key not in _FACES:
      arrays = make() if make is not None else sf.generate_arrays(*key)
      for a in arrays.values():
        a.setflags(write=False)
      _FACES[key] = arrays
    return _FACES[key]


def _counterfactuals(config, split: str) -> np.ndarray:
  """The exact counterfactuals of `_faces(config, split)` (each face with
  demo.attribute flipped), rendered once per process and read-only: the
  preservation network and the identity regressor learn the train split's,
  the evaluation compares with the val split's."""
  from l2m_jax.datasets import synthetic_faces as sf  # pylint: disable=g-import-not-at-top
  d = config.demo
  num = int(d.num_train if split == 'train' else d.num_val)
  key = (num, int(config.img_size), int(d.data_seed), split, d.attribute)
  with _FACES_LOCK:
    if key not in _FACES:
      cf = sf.generate_counterfactuals(*key)
      cf.setflags(write=False)
      _FACES[key] = cf
    return _FACES[key]


def training_data_tag(config) -> str:
  """The provenance recorded in the EMA export (config.training_data)."""
  d = config.demo
  return (f'{SYNTHETIC_DATA}:{d.attribute}:{int(config.img_size)}px:'
          f'seed{int(d.data_seed)}')


def generate_data(config, workdir: str, meanwhile=None) -> dict:
  """Stage 1: writes <workdir>/data/{train,val}/<domain>/*.png; sets data_dir.

  The faces are rendered and written by a child process
  (`synthetic_faces_folders.ExportProcess`) while this one runs
  `meanwhile()` (the demo imports TensorFlow then); the later stages then
  read the faces back from the folder instead of rendering them again.

  Returns:
    The export info of `synthetic_faces_folders.export_folder_layout`
    ('reused' is True when the folder already held these settings).
  """
  from l2m_jax.datasets import synthetic_faces as sf  # pylint: disable=g-import-not-at-top
  from l2m_jax.datasets import synthetic_faces_folders  # pylint: disable=g-import-not-at-top
  sf.check_attribute(config.demo.attribute, 'config.demo.attribute')
  d = config.demo
  size = int(config.img_size)
  work = pathlib.Path(workdir).resolve()
  work.mkdir(parents=True, exist_ok=True)
  _say(f'1/{NUM_STAGES} data: {d.num_train}+{d.num_val} generated faces at '
       f'{size}px (attribute {d.attribute!r}, seed {d.data_seed})')
  export = synthetic_faces_folders.ExportProcess(
      work / 'data', d.attribute, image_size=size, num_train=d.num_train,
      num_val=d.num_val, seed=d.data_seed, overwrite=True)
  try:
    if meanwhile is not None:
      meanwhile()
    info = export.wait(progress=lambda m: _say(f'    {m}'))
  finally:
    export.kill()
  # The later stages reuse these faces (the files hold the rendered pixels).
  for split in ('train', 'val'):
    num = int(d.num_train if split == 'train' else d.num_val)
    _rendered_faces(num, size, int(d.data_seed), split,
                    make=functools.partial(synthetic_faces_folders.load_arrays,
                                           work / 'data', split))
  config.data_dir = str(work / 'data')
  config.training_data = training_data_tag(config)
  return info


def _prior_settings(config, kind: str) -> dict:
  d = config.demo
  common = {'attribute': d.attribute, 'image_size': int(config.img_size),
            'num_train': int(d.num_train), 'data_seed': int(d.data_seed),
            'seed': int(config.seed)}
  if kind == 'landmarks':
    return {**common, 'steps': int(d.landmark_steps),
            'width': int(d.landmark_width)}
  return {**common, 'steps': int(d.preservation_steps),
          'width': int(d.preservation_width),
          'invariance': float(d.preservation_invariance),
          'norm': bool(d.preservation_norm)}


def _cached_prior(path: pathlib.Path, fmt: str, settings: dict):
  """(variables, meta) of a saved network with these settings, or None."""
  from l2m_jax import face_priors  # pylint: disable=g-import-not-at-top
  meta_file = path / 'meta.json'
  if not meta_file.is_file():
    return None
  try:
    if json.loads(meta_file.read_text()).get('demo_settings') != settings:
      return None
    return face_priors.load(path, fmt)
  except (ValueError, FileNotFoundError, OSError) as e:
    _say(f'    (not reusing {path}: {e})')
    return None


def train_landmarks(config, workdir: str) -> dict:
  """Stage 2: the LandmarkNet; sets config.landmark_checkpoint."""
  from l2m_jax import face_priors  # pylint: disable=g-import-not-at-top
  from l2m_jax.datasets import synthetic_faces as sf  # pylint: disable=g-import-not-at-top
  from l2m_jax.models import landmarks  # pylint: disable=g-import-not-at-top
  d = config.demo
  path = pathlib.Path(workdir).resolve() / 'priors' / 'landmarks'
  settings = _prior_settings(config, 'landmarks')
  if float(config.w_hpf) <= 0:
    _say(f'2/{NUM_STAGES} landmarks: skipped (w_hpf = 0: no masks)')
    config.landmark_checkpoint = ''
    return {}
  config.landmark_checkpoint = str(path)
  cached = _cached_prior(path, landmarks.FORMAT, settings)
  val = _faces(config, 'val')
  val_pts = sf.landmark_arrays(val['identity'], val['smiling'])
  if cached is not None:
    variables, meta = cached
    _say(f'2/{NUM_STAGES} landmarks: reusing {path}')
  else:
    _say(f'2/{NUM_STAGES} landmarks: training the landmark network '
         f'({d.landmark_steps} steps; compiling first)')
    train = _faces(config, 'train')
    pts = sf.landmark_arrays(train['identity'], train['smiling'])
    variables, meta = face_priors.train_landmark_net(
        train['image'], pts, steps=int(d.landmark_steps),
        width=int(d.landmark_width), seed=int(config.seed),
        progress=Progress('landmarks', int(d.landmark_steps)),
        log_every=1)
    err = face_priors.landmark_errors(variables, val['image'], val_pts)
    meta['val_peak_error_px'] = {
        'mean': float(err.mean()), 'p95': float(np.percentile(err, 95)),
        'unit': 'heatmap pixels (64 x 64 grid; image pixels = x S / 64)'}
    meta['demo_settings'] = settings
    face_priors.save(path, variables, meta)
  e = meta['val_peak_error_px']
  _say(f'    landmark heatmap peaks vs the true landmarks (val): mean '
       f'{e["mean"]:.2f}, 95th percentile {e["p95"]:.2f} heatmap px')
  return {'val_peak_error_mean_px': e['mean'],
          'val_peak_error_p95_px': e['p95']}


def train_preservation(config, workdir: str) -> dict:
  """Stage 3: the PreservationNet; sets config.preservation_checkpoint."""
  from l2m_jax import face_priors  # pylint: disable=g-import-not-at-top
  from l2m_jax.datasets import synthetic_faces as sf  # pylint: disable=g-import-not-at-top
  from l2m_jax.models import preservation  # pylint: disable=g-import-not-at-top
  d = config.demo
  if config.preservation != 'synthetic_faces' or float(config.lambda_id) <= 0:
    _say(f'3/{NUM_STAGES} preservation network: skipped (preservation='
         f'{config.preservation!r}, lambda_id={config.lambda_id})')
    return {}
  path = pathlib.Path(workdir).resolve() / 'priors' / 'preservation'
  config.preservation_checkpoint = str(path)
  settings = _prior_settings(config, 'preservation')
  cached = _cached_prior(path, preservation.FORMAT, settings)
  if cached is not None:
    _, meta = cached
    _say(f'3/{NUM_STAGES} preservation network: reusing {path}')
  else:
    _say(f'3/{NUM_STAGES} preservation network: training on the generated '
         f'faces and their counterfactuals ({d.preservation_steps} steps; '
         'compiling first)')
    train = _faces(config, 'train')
    cf = _counterfactuals(config, 'train')
    variables, meta = face_priors.train_preservation_net(
        train['image'], sf.preserved_targets(train, d.attribute), cf,
        steps=int(d.preservation_steps), width=int(d.preservation_width),
        invariance=float(d.preservation_invariance),
        norm=bool(d.preservation_norm), seed=int(config.seed) + 1,
        progress=Progress('preservation', int(d.preservation_steps)),
        log_every=1)
    meta['demo_settings'] = settings
    face_priors.save(path, variables, meta)
  return {'final_loss': meta['train']['final_loss']}


def edit_val_faces(variables, mc, x: np.ndarray, y: np.ndarray,
                   degrees: tuple[float, ...], batch_size: int
                   ) -> np.ndarray:
  """Edits every face to the other domain at every degree (stage 5a).

  Args:
    variables, mc: the loaded EMA export and its model config.
    x: float32 [N, S, S, 3] faces in [-1, 1]; y: int32 [N] their domains.
    degrees: edit strengths.
    batch_size: faces per call, split over every local device
      (`parallel.map_batches`; the last batch is padded so that the edit
      compiles once).

  Returns:
    uint8 [D, N, S, S, 3]: the edits quantised as saved PNGs are
    (image_io.to_uint8), so that metrics see the files' pixels.
  """
  from l2m_jax import editing  # pylint: disable=g-import-not-at-top
  from l2m_jax import image_io  # pylint: disable=g-import-not-at-top
  from l2m_jax import parallel  # pylint: disable=g-import-not-at-top
  degrees = np.asarray(degrees, np.float32)

  def sweep(v, batch):
    images, source, target = batch
    return editing.edit_sweep(v, images, source, target, degrees, config=mc)
  y = np.asarray(y)
  edits = parallel.map_batches(
      sweep, (x, y, 1 - y), batch_size=int(batch_size), args=(variables,),
      out_axis=1)  # [D, N, S, S, 3]
  return image_io.to_uint8(np.clip(edits, -1.0, 1.0))


def metric_seed(config) -> int:
  """The metric models' initialisation seed: demo.metric_seed, or the run's
  seed (config.seed) when it is -1."""
  s = config.demo.get('metric_seed', -1)
  if not isinstance(s, int) or s < -1:
    raise ValueError(f'config.demo.metric_seed={s!r}: expected an integer '
                     '>= 0, or -1 for the run\'s seed (config.seed)')
  return int(config.seed) if s == -1 else s


def _check_metric_settings(config) -> None:
  d = config.demo
  for field in ('metric_steps', 'regressor_steps'):
    v = d.get(field, 1)
    if not isinstance(v, int) or v < 1:
      raise ValueError(f'config.demo.{field}={v!r}: expected an integer >= 1 '
                       '(training steps)')
  v = d.get('regressor_counterfactuals', False)
  if not isinstance(v, bool):
    raise ValueError(f'config.demo.regressor_counterfactuals={v!r}: expected '
                     'True or False')
  metric_seed(config)


def regressor_training_set(config) -> tuple[np.ndarray, np.ndarray]:
  """The identity regressor's training images and identity targets.

  The generated training faces and, with demo.regressor_counterfactuals,
  each of them again rendered with the edited attribute flipped (the exact
  counterfactual) under the same identity target, so that the regressor
  learns to read the identity and not the attribute, as a face-recognition
  network is trained on photos of one person with different hair.
  """
  d = config.demo
  train = _faces(config, 'train')
  if not d.get('regressor_counterfactuals', False):
    return train['image'], train['identity']
  cf = _counterfactuals(config, 'train')
  return (np.concatenate([train['image'], cf]),
          np.concatenate([train['identity'], train['identity']]))


def fit_metric_models(config, val: dict, gate=None):
  """Trains the attribute classifier and the identity regressor.

  Both learn from the generated training faces (config.demo.num_train; the
  regressor also from their counterfactuals with
  demo.regressor_counterfactuals, `regressor_training_set`) and are scored
  on the validation faces `val`. The classifier trains for
  demo.metric_steps, the regressor for demo.regressor_steps; both start from
  `metric_seed(config)`. `gate` is passed to `editing_metrics.train_model`
  (MetricModelsJob pauses there).

  Returns:
    ((c_apply, c_params, c_meta), (r_apply, r_params, r_meta)).
  """
  from l2m_jax.datasets import synthetic_faces as sf  # pylint: disable=g-import-not-at-top
  from l2m_jax.evaluation import editing_metrics as em  # pylint: disable=g-import-not-at-top
  _check_metric_settings(config)
  d = config.demo
  seed = metric_seed(config)
  r_steps = int(d.get('regressor_steps', d.metric_steps))
  train = _faces(config, 'train')
  labels = np.stack([train[a] for a in sf.ATTRIBUTES], axis=1)
  val_labels = np.stack([val[a] for a in sf.ATTRIBUTES], axis=1)
  quiet = not _verbose()
  classifier = em.train_model(
      'classifier', train['image'], labels, val_images=val['image'],
      val_targets=val_labels, steps=int(d.metric_steps),
      width=int(d.metric_width), seed=seed,
      names=sf.ATTRIBUTES, log_every=0 if quiet else int(d.metric_steps) // 4,
      gate=gate)
  r_images, r_targets = regressor_training_set(config)
  regressor = em.train_model(
      'regressor', r_images, r_targets, val_images=val['image'],
      val_targets=val['identity'], steps=r_steps,
      width=int(d.metric_width), seed=seed,
      names=sf.IDENTITY_NAMES, log_every=0 if quiet else r_steps // 4,
      gate=gate)
  regressor[2]['training_set'] = {
      'faces': int(d.num_train),
      'counterfactuals': bool(d.get('regressor_counterfactuals', False)),
      'steps': r_steps, 'seed': seed}
  return classifier, regressor


def save_metric_models(work: pathlib.Path, classifier, regressor) -> None:
  """Saves `fit_metric_models`' models under <work>/metric_models/."""
  from l2m_jax.evaluation import editing_metrics as em  # pylint: disable=g-import-not-at-top
  em.save_model(work / 'metric_models' / 'classifier', *classifier[1:])
  em.save_model(work / 'metric_models' / 'identity_regressor',
                *regressor[1:])


class _Cancelled(Exception):
  """Raised at a MetricModelsJob's gate when the job is cancelled."""


class MetricModelsJob:
  """`fit_metric_models` in a background thread, paused on request.

  The evaluation's attribute classifier and identity regressor depend on
  the generated faces only, not on the GAN, so the demo starts them after
  stage 1. Stages 2 to 4 leave a core idle for long stretches (compiling a
  program is single-threaded) where the models can train; the GAN's steps
  keep both cores busy, so the demo pauses the job at the GAN's first step
  and resumes it when training ends. The trained values are those of
  `fit_metric_models` in the main thread (the same programs on the same
  inputs; tests/test_demo.py).
  """

  def __init__(self, config):
    self._config = config.copy_and_resolve_references()
    self._run = threading.Event()
    self._run.set()
    self._cancelled = False
    self._result = self._error = None
    self.busy_s = 0.0  # seconds from the start to the end of the training
    self._thread = threading.Thread(target=self._main, name='metric-models',
                                    daemon=True)
    self._thread.start()

  def _gate(self) -> None:
    self._run.wait()
    if self._cancelled:
      raise _Cancelled()

  def _main(self) -> None:
    t = time.time()
    try:
      self._result = fit_metric_models(
          self._config, _faces(self._config, 'val'), gate=self._gate)
    except _Cancelled:
      pass
    except BaseException as e:  # pylint: disable=broad-except
      self._error = e  # re-raised by result() in the main thread
    self.busy_s = time.time() - t

  def pause(self, *unused_args) -> None:
    """Stops the job at its next step (a hook: takes and ignores a step)."""
    self._run.clear()

  def resume(self) -> None:
    self._run.set()

  def done(self) -> bool:
    return not self._thread.is_alive()

  def cancel(self) -> None:
    """Ends the job at its next step and waits for the thread."""
    self._cancelled = True
    self._run.set()
    self._thread.join()

  def result(self):
    """Resumes the job, waits for it and returns `fit_metric_models`'."""
    self.resume()
    self._thread.join()
    if self._error is not None:
      raise self._error
    if self._result is None:
      raise RuntimeError('the metric models\' job was cancelled')
    return self._result


def compute_metrics(config, val: dict, sweep: np.ndarray,
                    degrees: tuple[float, ...], exact: np.ndarray,
                    classifier, regressor) -> tuple[dict, dict, dict]:
  """The editing metrics of the sweep and their reference points (stage 5b).

  Args:
    config: the demo config.
    val: the validation faces (`synthetic_faces.generate_arrays`).
    sweep: float32 [D, N, S, S, 3] edits, one per degree in `degrees`.
    exact: float32 [N, S, S, 3] exact counterfactuals of the val faces.
    classifier, regressor: `(apply, params, meta)` of `fit_metric_models`.

  Returns:
    (results, references, factors): `editing_metrics.evaluate_edits` of the
    sweep; what a perfect edit scores (the exact counterfactual, the same
    face re-rendered with the attribute flipped) next to what losing the
    identity scores (the identity distance between two different val
    faces) and, with degree 1 in `degrees`, the identity distance between
    each edit and the exact counterfactual of its source
    ('edit_identity_error_vs_counterfactual'); and the identity error per
    factor (`identity_factor_changes`:
    {'names': the identity vector's names, 'degree=<a>' and
    'exact_counterfactual': the mean |change| of each regressed factor}).
  """
  from l2m_jax.datasets import synthetic_faces as sf  # pylint: disable=g-import-not-at-top
  from l2m_jax.evaluation import editing_metrics as em  # pylint: disable=g-import-not-at-top
  d = config.demo
  c_apply, c_params, _ = classifier
  r_apply, r_params, _ = regressor
  x = _to_float(val['image'])
  y = val[d.attribute].astype(np.int32)
  k = sf.ATTRIBUTES.index(d.attribute)
  masks = sf.region_masks(val['identity'], d.attribute, int(config.img_size))
  results = em.evaluate_edits(
      sources=x, source_labels=y,
      edits={a: sweep[j] for j, a in enumerate(degrees)},
      classifier=(em.output_slice(c_apply, k), c_params),
      identity_model=(r_apply, r_params), region_masks=masks,
      inception_checkpoint=str(config.inception_checkpoint))
  references = {'exact_counterfactual': {
      'attribute_accuracy': em.attribute_accuracy(
          em.output_slice(c_apply, k), c_params, exact, 1 - y),
      **em.identity_error(r_apply, r_params, x, exact),
      'pixel_change_outside': em.pixel_change_outside(x, exact, masks)}}
  references['different_faces_identity_error'] = float(np.mean(
      em.identity_distances(r_apply, r_params, x, np.roll(x, 1, axis=0))))
  if 1.0 in degrees:
    # The edit against the exact counterfactual rather than the source: the
    # regressor reads the attribute alike on both, so what remains is what
    # the edit itself loses.
    edit = sweep[list(degrees).index(1.0)]
    vs_cf = em.identity_distances(r_apply, r_params, exact, edit)
    references['edit_identity_error_vs_counterfactual'] = float(
        np.mean(vs_cf))
    if 0.0 in degrees:
      dist = lambda a: em.identity_distances(r_apply, r_params, x, a)
      references['by_source_domain'] = _by_source_domain(
          y, sf.DOMAINS[d.attribute],
          recon=dist(sweep[list(degrees).index(0.0)]), edit=dist(edit),
          vs_counterfactual=vs_cf)
  per_factor = lambda imgs: [float(v) for v in em.identity_factor_changes(
      r_apply, r_params, x, imgs)]
  factors = {'names': list(sf.IDENTITY_NAMES),
             **{f'degree={a:g}': per_factor(sweep[j])
                for j, a in enumerate(degrees)},
             'exact_counterfactual': per_factor(exact)}
  return results, references, factors


def _by_source_domain(y, domains, *, recon, edit, vs_counterfactual
                      ) -> dict[str, dict[str, float]]:
  """The identity figures of each edit direction, by the source's domain.

  Args:
    y: [N] source labels; `domains`: their names.
    recon, edit, vs_counterfactual: [N] per-face identity distances of the
      reconstruction and of the edit to the source, and of the edit to the
      exact counterfactual.

  Returns:
    {source domain name: {'num_faces', 'reconstruction_identity_error',
    'edit_identity_error', 'identity_error_ratio' (edit / reconstruction),
    'edit_identity_error_vs_counterfactual' and
    'vs_counterfactual_ratio' (that / reconstruction)}}, the means over
    the val faces of that domain (the two directions of the edit).
  """
  out = {}
  for label, name in enumerate(domains):
    m = y == label
    if not m.any():
      continue
    r, e, c = (float(np.mean(v[m])) for v in (recon, edit, vs_counterfactual))
    out[name] = {'num_faces': int(m.sum()),
                 'reconstruction_identity_error': r,
                 'edit_identity_error': e,
                 'identity_error_ratio': e / r,
                 'edit_identity_error_vs_counterfactual': c,
                 'vs_counterfactual_ratio': c / r}
  return out


def grid_order(y: np.ndarray, num: int) -> np.ndarray:
  """The val faces shown in the grid: domains alternate, then the rest."""
  n = min(int(num), len(y))
  order = np.concatenate([np.nonzero(y == 0)[0][:n // 2 + n % 2],
                          np.nonzero(y == 1)[0][:n // 2]])
  return np.concatenate([order, np.setdiff1d(np.arange(len(y)), order)])[:n]


def write_outputs(config, work: pathlib.Path, x: np.ndarray, y: np.ndarray,
                  sweep_u8: np.ndarray, exact_u8: np.ndarray,
                  degrees: tuple[float, ...], results: dict) -> np.ndarray:
  """Stage 6: demo_grid(_large).png, edits.npz and TensorBoard entries.

  Args:
    config: the demo config.
    work: the demo folder.
    x: float32 [N, S, S, 3] sources; y: int32 [N] their domains.
    sweep_u8: uint8 [D, N, S, S, 3] edits; exact_u8: uint8 [N, S, S, 3]
      exact counterfactuals.
    degrees: the edit strengths of `sweep_u8`.
    results: `compute_metrics`' results (scalars for TensorBoard).

  Returns:
    The grid's source indices into the val faces.
  """
  from clu import metric_writers  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from l2m_jax import image_io  # pylint: disable=g-import-not-at-top
  order = grid_order(y, config.demo.grid_sources)
  sweep, exact = _to_float(sweep_u8), _to_float(exact_u8)
  cols = np.concatenate([x[order][None], sweep[:, order], exact[order][None]],
                        axis=0)
  grid = image_io.make_grid(np.transpose(cols, (1, 0, 2, 3, 4)))
  Image.fromarray(grid).save(work / 'demo_grid.png')
  # The same grid enlarged GRID_ZOOM times, nearest-neighbour, so that the
  # 32-px tiles can be seen pixel by pixel (docs/demo.md shows this one).
  big = np.repeat(np.repeat(grid, GRID_ZOOM, axis=0), GRID_ZOOM, axis=1)
  Image.fromarray(big).save(work / 'demo_grid_large.png')
  np.savez_compressed(work / 'edits.npz', edits=sweep_u8,
                      degrees=np.asarray(degrees, np.float32),
                      source_labels=y, counterfactuals=exact_u8,
                      grid_sources=order)
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
  return order


def evaluate(config, workdir: str, checkpoint: str | os.PathLike,
             timings: dict | None = None, extra: dict | None = None,
             metric_models: MetricModelsJob | None = None) -> dict:
  """Stages 5-6: edits, editing metrics, metrics.json, grid, edits.npz.

  Args:
    config: the demo config (`config.demo` and the image/batch sizes).
    workdir: the demo folder; outputs go to <workdir>/metrics.json,
      <workdir>/demo_grid.png, <workdir>/edits.npz, <workdir>/metric_models/
      and TensorBoard scalars/images to <workdir>/train.
    checkpoint: an EMA export (format 'l2m_gan') of the trained model.
    timings: seconds spent in the earlier stages, copied into the JSON.
    extra: more entries for metrics.json (e.g. the landmark network's error).
    metric_models: a MetricModelsJob started earlier for this config (its
      models are awaited and saved); None trains them here.

  Returns:
    The metrics dict (also written to <workdir>/metrics.json).
  """
  # Imports here keep `--help` fast.
  from l2m_jax.convert import l2m as l2m_convert  # pylint: disable=g-import-not-at-top
  from l2m_jax.datasets import synthetic_faces as sf  # pylint: disable=g-import-not-at-top

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

  degrees = tuple(float(a) for a in d.degrees)
  _say(f'5/{NUM_STAGES} evaluation: editing {d.num_val} validation faces '
       f'at degrees {list(degrees)} (compiling the edit first)')
  t = time.time()
  val = _faces(config, 'val')
  x = _to_float(val['image'])
  y = val[d.attribute].astype(np.int32)
  sweep_u8 = edit_val_faces(variables, mc, x, y, degrees,
                            config.val_batch_size)
  timings['edit_s'] = time.time() - t

  cf_note = (' and their counterfactuals'
             if d.get('regressor_counterfactuals', False) else '')
  what = (f'the attribute classifier ({d.metric_steps} steps) and the '
          f'identity regressor ({d.get("regressor_steps", d.metric_steps)} '
          f'steps) on the generated training faces{cf_note}')
  t = time.time()
  if metric_models is None:
    _say(f'    training {what}')
    classifier, regressor = fit_metric_models(config, val)
  else:
    _say('    ' + ('the metric models trained in the background: '
                     if metric_models.done() else
                     'finishing the metric models started in the background: ')
         + what)
    classifier, regressor = metric_models.result()
    timings['metric_models_job_s'] = metric_models.busy_s
  save_metric_models(work, classifier, regressor)
  timings['metric_models_s'] = time.time() - t
  t = time.time()
  exact_u8 = _counterfactuals(config, 'val')
  results, references, factors = compute_metrics(
      config, val, _to_float(sweep_u8), degrees, _to_float(exact_u8),
      classifier, regressor)
  timings['metrics_s'] = time.time() - t

  _say(f'6/{NUM_STAGES} outputs: metrics.json, demo_grid.png (and x'
       f'{GRID_ZOOM} demo_grid_large.png), edits.npz, TensorBoard scalars')
  order = write_outputs(config, work, x, y, sweep_u8, exact_u8, degrees,
                        results)
  timings['evaluate_s'] = time.time() - t_start
  stage_keys = ('data_s', 'landmarks_s', 'preservation_s', 'train_s',
                'evaluate_s')
  if 'train_s' in timings:
    timings['total'] = sum(timings.get(s, 0.0) for s in stage_keys)
  metrics = {
      'attribute': d.attribute,
      'domains': list(mc.domains),
      'image_size': size,
      'train_steps': int(config.total_iters),
      'num_train': int(d.num_train),
      'num_val': int(d.num_val),
      'grid_sources': [int(i) for i in order],
      'classifier_heldout_accuracy': dict(zip(sf.ATTRIBUTES,
                                              classifier[2]['val_accuracy'])),
      'regressor_heldout_rmse': regressor[2]['val_rmse'],
      'regressor_heldout_l2': regressor[2]['val_l2'],
      'regressor_training': regressor[2]['training_set'],
      'edits': results,
      'references': references,
      'identity_factors': factors,
      **(extra or {}),
      'timings_s': timings,
      'device': str(jax.devices()[0].platform),
      'checkpoint': str(checkpoint),
      'training_data': mc.training_data,
  }
  (work / 'metrics.json').write_text(json.dumps(metrics, indent=1))
  return metrics


def summary_lines(metrics: dict, work: pathlib.Path) -> list[str]:
  """The closing summary: key metrics next to the exact counterfactual's."""
  e = metrics['edits']
  d0, d1 = e.get('degree=0', {}), e.get('degree=1', {})
  ref = metrics['references']['exact_counterfactual']
  f = lambda v: 'n/a' if v is None else f'{v:.3f}'
  lines = [
      f'results (degree 1 = the edit; {metrics["num_val"]} val faces; exact '
      'counterfactual in brackets):',
      f'  attribute accuracy      {f(d1.get("attribute_accuracy"))} '
      f'[{f(ref["attribute_accuracy"])}]',
      f'  pixel change outside    {f(d1.get("pixel_change_outside"))} '
      f'[{f(ref["pixel_change_outside"])}]; reconstruction (degree 0) '
      f'{f(d0.get("pixel_change_outside"))}',
      f'  identity error          {f(d1.get("identity_error"))} '
      f'[{f(ref["identity_error"])}]; reconstruction '
      f'{f(d1.get("identity_error_baseline"))} (ratio '
      f'{f(d1.get("identity_error_ratio"))})',
      *_vs_counterfactual_summary(metrics),
      *_direction_summary(metrics),
      *_factor_summary(metrics),
      f'  FID                     {e["fid"].get("status")}',
      '  targets (docs/demo.md):  ' + '; '.join(
          f'{n} {op} {b:g}: {"met" if ok else "NOT met"}'
          for n, _, op, b, ok in target_checks(metrics)),
      f'metrics: {work / "metrics.json"}',
      f'grid:    {work / "demo_grid.png"} (rows: sources; columns: source, '
      'degrees ' + ', '.join(f'{a:g}' for a in sorted(
          float(k.split('=')[1]) for k in e if k.startswith('degree='))) +
      f', exact counterfactual); x{GRID_ZOOM}: '
      f'{work / "demo_grid_large.png"}',
      f'This is a {metrics["image_size"]} px model of the generated cartoon '
      'faces, not of photos; for photos convert the official checkpoint '
      '(docs/editing.md).',
  ]
  return lines


# Locality targets of the demo at degree 1 on the val faces (docs/demo.md):
# (name, metrics.json path under 'edits', '>=' or '<=', bound).
TARGETS = (
    ('attribute accuracy', ('degree=1', 'attribute_accuracy'), '>=', 0.95),
    ('pixel change outside', ('degree=1', 'pixel_change_outside'), '<=', 0.06),
    ('reconstruction pixel change outside',
     ('degree=0', 'pixel_change_outside'), '<=', 0.05),
    ('identity error / reconstruction\'s',
     ('degree=1', 'identity_error_ratio'), '<=', 1.05),
)


def target_checks(metrics: dict) -> list[tuple[str, float, str, float, bool]]:
  """(name, value, op, bound, met) for each of TARGETS."""
  out = []
  for name, (deg, key), op, bound in TARGETS:
    value = float(metrics['edits'][deg][key])
    met = value >= bound if op == '>=' else value <= bound
    out.append((name, value, op, bound, met))
  return out


def report_markdown(runs) -> str:
  """Markdown tables for docs/demo.md from (label, metrics dict) pairs.

  One run: the per-degree table with the exact counterfactual, the targets
  and the stage timings. Several runs (an ablation): one row per run.
  """
  runs = list(runs)
  f3 = lambda v: f'{v:.3f}'
  if len(runs) > 1:
    lines = ['| run | accuracy (d 1) | pixel change outside (d 0 / d 1) | '
             'identity ratio (d 1) | training s | total s |',
             '| --- | --- | --- | --- | --- | --- |']
    for label, m in runs:
      e, t = m['edits'], m['timings_s']
      lines.append(
          f'| {label} | {f3(e["degree=1"]["attribute_accuracy"])} | '
          f'{f3(e["degree=0"]["pixel_change_outside"])} / '
          f'{f3(e["degree=1"]["pixel_change_outside"])} | '
          f'{f3(e["degree=1"]["identity_error_ratio"])} | '
          f'{t.get("train_s", 0):.0f} | {t.get("total", 0):.0f} |')
    return '\n'.join(lines) + '\n'
  label, m = runs[0]
  e, ref = m['edits'], m['references']['exact_counterfactual']
  degrees = sorted(float(k.split('=')[1]) for k in e if k.startswith('degree='))
  lines = [f'Run `{label}`: attribute `{m["attribute"]}`, {m["num_val"]} val '
           f'faces, {m["train_steps"]} training steps.', '',
           '| degree | attribute accuracy | identity error | / reconstruction '
           '| pixel change outside region |', '| --- | --- | --- | --- | --- |']
  for a in degrees:
    r = e[f'degree={a:g}']
    ratio = f3(r['identity_error_ratio']) if a else '1'
    name = '**1 (the edit)**' if a == 1 else (
        '0 (reconstruction)' if a == 0 else f'{a:g}')
    lines.append(f'| {name} | {f3(r["attribute_accuracy"])} | '
                 f'{f3(r["identity_error"])} | {ratio} | '
                 f'{f3(r["pixel_change_outside"])} |')
  base = e['degree=1']['identity_error_baseline']
  lines.append(f'| exact counterfactual | {f3(ref["attribute_accuracy"])} | '
               f'{f3(ref["identity_error"])} | '
               f'{f3(ref["identity_error"] / base)} | '
               f'{ref["pixel_change_outside"]:.4f} |')
  vs_cf = _vs_counterfactual(m)
  if vs_cf is not None:
    lines += ['', f'Identity error of the edit (d 1) measured against the '
              f'exact counterfactual instead of the source: {f3(vs_cf[0])}, '
              f'{f3(vs_cf[1])}x the reconstruction\'s.']
  lines += _direction_lines(m)
  lines += ['', '| target | value | bound | met |', '| --- | --- | --- | --- |']
  for name, value, op, bound, met in target_checks(m):
    lines.append(f'| {name} | {f3(value)} | {op} {bound:g} | '
                 f'{"yes" if met else "**no**"} |')
  lines += _factor_lines(m)
  t = m['timings_s']
  lines += ['', 'Seconds per stage: ' + ', '.join(
      f'{k[:-2] if k.endswith("_s") else k} {v:.0f}' for k, v in t.items())
            + '.']
  return '\n'.join(lines) + '\n'


def _vs_counterfactual(m: dict):
  """(edit vs counterfactual identity error, / reconstruction's) or None."""
  v = m['references'].get('edit_identity_error_vs_counterfactual')
  base = m['edits'].get('degree=1', {}).get('identity_error_baseline')
  if v is None or not base:  # older metrics.json files lack it
    return None
  return v, v / base


def _direction_lines(m: dict) -> list[str]:
  """The identity figures per edit direction (by the source's domain)."""
  by = m['references'].get('by_source_domain')
  if not by:  # older metrics.json files lack it
    return []
  other = {a: b for a, b in zip(m['domains'], m['domains'][::-1])}
  lines = ['', 'Per edit direction (identity error of the val faces of one '
           'source domain):', '',
           '| direction | faces | reconstruction | edit (d 1) | / '
           'reconstruction | edit vs counterfactual | / reconstruction |',
           '| --- | --- | --- | --- | --- | --- | --- |']
  for name, r in by.items():
    lines.append(
        f'| {name} -> {other.get(name, "?")} | {r["num_faces"]} | '
        f'{r["reconstruction_identity_error"]:.3f} | '
        f'{r["edit_identity_error"]:.3f} | {r["identity_error_ratio"]:.3f} | '
        f'{r["edit_identity_error_vs_counterfactual"]:.3f} | '
        f'{r["vs_counterfactual_ratio"]:.3f} |')
  return lines


def _direction_summary(m: dict) -> list[str]:
  by = m['references'].get('by_source_domain')
  if not by:
    return []
  return ['  identity ratio per source domain: ' + '; '.join(
      f'{name} {r["identity_error_ratio"]:.3f} (vs counterfactual '
      f'{r["vs_counterfactual_ratio"]:.3f})' for name, r in by.items())]


def _vs_counterfactual_summary(m: dict) -> list[str]:
  r = _vs_counterfactual(m)
  if r is None:
    return []
  return [f'  identity error of the edit against the exact counterfactual '
          f'{r[0]:.3f} ({r[1]:.3f}x the reconstruction\'s)']


def _factor_rise(m: dict):
  """(names, per-factor identity error at degree 1 minus degree 0) or None."""
  fac = m.get('identity_factors')  # absent from older metrics.json files
  if not fac or 'degree=0' not in fac or 'degree=1' not in fac:
    return None
  return fac['names'], (np.asarray(fac['degree=1']) -
                        np.asarray(fac['degree=0']))


def _factor_summary(m: dict, num: int = 3) -> list[str]:
  rise = _factor_rise(m)
  if rise is None:
    return []
  names, r = rise
  top = np.argsort(-r, kind='stable')[:num]
  return ['  identity factors the edit disturbs most (vs reconstruction): ' +
          ', '.join(f'{names[k]} {r[k]:+.3f}' for k in top)]


def _factor_lines(m: dict, num: int = 6) -> list[str]:
  """The identity factors whose error rises most from degree 0 to 1."""
  r = _factor_rise(m)
  if r is None:
    return []
  fac, rise = m['identity_factors'], r[1]
  lines = ['', f'Identity error per factor (mean |change| of the regressed '
           f'value, [0, 1] units), the {num} that rise most from the '
           'reconstruction to the edit:', '',
           '| factor | reconstruction | edit (d 1) | exact counterfactual |',
           '| --- | --- | --- | --- |']
  for k in np.argsort(-rise, kind='stable')[:num]:
    lines.append(f'| {fac["names"][k]} | {fac["degree=0"][k]:.3f} | '
                 f'{fac["degree=1"][k]:.3f} | '
                 f'{fac["exact_counterfactual"][k]:.3f} |')
  return lines


def _verbose() -> bool:
  try:
    return bool(_VERBOSE.value)
  except flags.UnparsedFlagAccessError:
    return False


def _import_input_pipeline() -> None:
  importlib.import_module('l2m_jax.input_pipeline')


def run_demo(config, workdir: str) -> dict:
  """Runs the whole demo; returns the metrics dict (also written to JSON).

  A training run stopped by SIGTERM (or a preemption notice) after writing
  its checkpoint ends the demo there, with a line saying how to continue,
  and returns {'stopped_at_step', 'total_iters'}; nothing is evaluated.
  """
  from l2m_jax.datasets import synthetic_faces as sf  # pylint: disable=g-import-not-at-top

  t_start = time.time()
  sf.check_attribute(config.demo.attribute, 'config.demo.attribute')
  _check_metric_settings(config)  # before the long stages
  work = pathlib.Path(workdir).resolve()
  work.mkdir(parents=True, exist_ok=True)
  platform = jax.devices()[0].platform
  _say(f'workdir {work}; device {platform} x{jax.device_count()}' +
       (f'; {host_memory.status()}' if platform == 'cpu' else ''))
  timings, extra = {}, {}

  t = time.time()
  # TensorFlow Datasets imports parts of itself under etils'
  # `epy.lazy_imports()`, which swaps `builtins.__import__` for the whole
  # process meanwhile: an import statement run by another thread then fails
  # or yields a stub module. So the input pipeline (TensorFlow, TFDS) is
  # imported before the metric models' thread starts: while a child process
  # writes the data.
  info = generate_data(config, str(work), meanwhile=_import_input_pipeline)
  timings['data_s'] = time.time() - t
  _say(f'    data {"reused" if info.get("reused") else "ready"} in '
       f'{timings["data_s"]:.1f}s (TensorFlow imported meanwhile): '
       f'{info["counts"]}')
  # The metric models need only the data: they train in the background,
  # paused while the GAN's steps run (MetricModelsJob).
  job = MetricModelsJob(config)
  try:
    return _stages_2_to_6(config, work, t_start, timings, extra, job)
  finally:
    job.cancel()  # ends the thread when a stage stopped early or failed


def _stages_2_to_6(config, work: pathlib.Path, t_start: float, timings: dict,
                   extra: dict, job: MetricModelsJob) -> dict:
  """run_demo after stage 1."""
  from l2m_jax import train_l2m  # pylint: disable=g-import-not-at-top
  t = time.time()
  extra['landmark_net'] = train_landmarks(config, str(work))
  timings['landmarks_s'] = time.time() - t
  t = time.time()
  extra['preservation_net'] = train_preservation(config, str(work))
  timings['preservation_s'] = time.time() - t

  total = int(config.total_iters)
  _say(f'4/{NUM_STAGES} training L2M-GAN: {total} steps, batch '
       f'{config.batch_size}; compiling the training step first (a minute '
       f'or two on an idle 2-core CPU); TensorBoard: {work / "train"}')
  t = time.time()
  state = train_l2m.train_and_evaluate(
      config, str(work / 'train'),
      hooks=(Progress('training', total), job.pause))
  job.resume()
  timings['train_s'] = time.time() - t
  reached = int(np.asarray(jax.device_get(state.step)))
  if reached < total:
    # SIGTERM or a preemption notice: the checkpoint is written; the
    # evaluation needs the finished model (exit 0, as l2m_jax.main).
    _say(f'    training stopped at step {reached}/{total} (SIGTERM or '
         f'preemption) after {_fmt_s(timings["train_s"])}; checkpoint in '
         f'{work / "train" / "checkpoints"}. Rerun the same command to '
         'continue; the evaluation runs when training has finished.')
    return {'stopped_at_step': reached, 'total_iters': total}
  _say(f'    training done in {_fmt_s(timings["train_s"])}')
  ckpt = work / 'train' / 'ema_export'

  metrics = evaluate(config, str(work), ckpt, timings, extra, job)
  _say(f'done in {_fmt_s(time.time() - t_start)}')
  for line in summary_lines(metrics, work):
    print(line, flush=True)
  return metrics


def _quiet_libraries() -> None:
  """absl INFO (parameter tables, clu scalars, orbax) off; warnings stay."""
  import logging as py_logging  # pylint: disable=g-import-not-at-top
  logging.set_verbosity(logging.WARNING)
  for name in ('orbax', 'absl', 'tensorflow', 'jax'):
    py_logging.getLogger(name).setLevel(py_logging.WARNING)


def _run_cli(config, workdir: str) -> dict:
  """run_demo after splitting a CPU host into config.demo.cpu_devices."""
  n = config.demo.get('cpu_devices', 0)
  if not isinstance(n, int) or n < 0:
    raise ValueError(f'config.demo.cpu_devices={n!r}: expected an integer '
                     '>= 0 (0 = JAX\'s default device count)')
  if n:  # before any JAX backend starts; GPU runs ignore it
    jax.config.update('jax_num_cpu_devices', n)
  return run_demo(config, workdir)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if not _VERBOSE.value:
    _quiet_libraries()
  # Exit codes: l2m_jax/errors.py (docs/reliability.md).
  cli.run_reporting_errors(_run_cli, _CONFIG.value, _WORKDIR.value,
                           prefix='demo: error', log=False)


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
