"""The L2M-GAN evaluation protocol: FID per (source, target) domain pair.

rucmlcv/L2M-GAN `metrics/eval.py` `calculate_metrics` (mode 'reference');
docs/method.md#l2m-evaluation and docs/method.md#fid-protocols:

1. Domains are the sorted sub-folders of `val_dir`.
2. For every target domain t and every other domain o, all validation images
   of o (sorted, PIL-bilinear resized to img_size, [-1, 1]) are edited to t
   at the given degree, one output per input.
3. FID of task `o2t`: the edited images (quantised as the PNGs the official
   code writes) against ALL training images of t (`train_dir/t`).
4. Results under `FID_reference/{o}2{t}` and their mean `FID_reference/mean`,
   written by the official code to `FID_{step:05d}_reference.json`.

`evaluate_fid_reference` takes any `edit_fn(images, src, trg) -> images`;
`evaluate_l2m` builds it from a converted (or our own trained) checkpoint's
variables and config, so training can call it directly. Real-image
statistics are cached per folder + protocol + weights hash
(`fid.cached_folder_statistics`). Fake images need not be written to disk;
pass `eval_dir` to also save them as PNGs named after the source files.

Multi-process (periodic FID inside a multi-host training run): every process
edits and extracts features of its own share of each folder
(`parallel.process_slice`) on its own devices; the statistics are combined
across processes before the distance, so every process gets the same
result. Edited images for `eval_dir` are gathered to the main process, the
only one that writes files. Every process must call these functions.
"""

from __future__ import annotations

import json
import os
import pathlib
import sys
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np

from l2m_jax import image_io
from l2m_jax import parallel
from l2m_jax.evaluation import fid as fid_lib
from l2m_jax.evaluation import frechet
from l2m_jax.evaluation import inception_features as features

EditFn = Callable[[np.ndarray, int, int], Any]
KEY_PREFIX = 'FID_reference'


def list_domains(val_dir: str | os.PathLike) -> list[str]:
  """Sorted sub-folder names of `val_dir` (the domain labels' order)."""
  val_dir = pathlib.Path(val_dir)
  if not val_dir.is_dir():
    raise FileNotFoundError(f'{val_dir}: no such validation directory '
                            '(expected val/<domain>/ image folders)')
  domains = sorted(p.name for p in val_dir.iterdir() if p.is_dir())
  if len(domains) < 2:
    raise ValueError(f'{val_dir}: found {len(domains)} domain folder(s) '
                     f'{domains}; the protocol needs at least 2')
  return domains


def results_filename(step: int) -> str:
  """The official result file name, `FID_{step:05d}_reference.json`."""
  return f'FID_{step:05d}_reference.json'


def write_results(path: str | os.PathLike, results: Mapping[str, float]
                  ) -> pathlib.Path:
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(dict(results), indent=4))
  return path


def _batches(files: Sequence[pathlib.Path], size: int):
  for start in range(0, len(files), size):
    yield files[start:start + size]


def evaluate_fid_reference(edit_fn: EditFn, val_dir: str | os.PathLike,
                           train_dir: str | os.PathLike,
                           extractor: features.FeatureExtractor, *,
                           img_size: int = 256, batch_size: int = 32,
                           cache_dir: str | os.PathLike | None = None,
                           eval_dir: str | os.PathLike | None = None,
                           domains: Sequence[str] | None = None,
                           progress: bool = True,
                           log: Callable[[str], None] | None = None
                           ) -> dict[str, float]:
  """Runs the protocol with any edit function.

  Args:
    edit_fn: `(images [B, S, S, 3] float32 in [-1, 1], src: int, trg: int)
      -> edited images [B, S, S, 3]` (not necessarily clamped).
    val_dir: `val/` with one folder per domain (source images).
    train_dir: `train/` with one folder per domain (real images).
    extractor: the FID feature extractor (`fid.make_extractor`).
    img_size: generator resolution; sources are PIL-bilinear resized to it.
    batch_size: edit batch size on each process.
    cache_dir: where real-image statistics are cached (None: no cache).
    eval_dir: when given, edited images are also saved as
      `<eval_dir>/<src>2<trg>/<source stem>.png`.
    domains: domain names in label order; default sorted folders of val_dir.
    progress: show progress bars.
    log: message sink (default: print to stderr).

  Returns:
    {'FID_reference/<src>2<trg>': fid, ..., 'FID_reference/mean': mean}.
  """
  log = log or (lambda m: print(m, file=sys.stderr))
  domains = list(domains) if domains is not None else list_domains(val_dir)
  val_dir, train_dir = pathlib.Path(val_dir), pathlib.Path(train_dir)
  missing = [d for d in domains if not (train_dir / d).is_dir()]
  if missing:
    raise FileNotFoundError(f'{train_dir}: missing training folder(s) for '
                            f'domain(s) {missing}; expected train/<domain>/')
  proto = extractor.protocol
  # Discover and check all files before spending time on the network.
  val_files = {d: features.list_images(val_dir / d, proto) for d in domains}
  results: dict[str, float] = {}
  main = parallel.is_main_process()
  nproc = parallel.process_count()
  for trg_idx, trg in enumerate(domains):
    mu_real, sigma_real, n_real = fid_lib.cached_folder_statistics(
        train_dir / trg, extractor, cache_dir, progress=progress)
    for src_idx, src in enumerate(domains):
      if src == trg:
        continue
      task = f'{src}2{trg}'
      files = val_files[src]
      shares = [files[parallel.process_slice(len(files), p, nproc)]
                for p in range(nproc)]
      mine = shares[parallel.process_index()]
      stats = frechet.StreamingStats(f'{val_dir / src} edited to {trg}')
      bar = fid_lib.progress_bar(len(mine), task, progress and main)
      # The same number of rounds on every process: the gather of the
      # images to write is a collective.
      rounds = -(-parallel.max_share(len(files)) // batch_size)
      for r in range(rounds):
        chunk = mine[r * batch_size:(r + 1) * batch_size]
        u8 = np.zeros((batch_size, img_size, img_size, 3), np.uint8)
        if chunk:
          x = image_io.load_images(chunk, img_size)  # [-1, 1], PIL bilinear
          y = np.asarray(edit_fn(x, src_idx, trg_idx))
          if y.shape[0] != x.shape[0] or y.ndim != 4:
            raise ValueError(f'edit_fn returned shape {y.shape} for a batch '
                             f'of {x.shape}')
          u8 = features.quantize(y)
          fid_lib.images_statistics([u8], extractor, stats)
        if eval_dir is not None:
          if u8.shape[0] < batch_size:
            u8 = np.concatenate([u8, np.zeros(
                (batch_size - u8.shape[0],) + u8.shape[1:], np.uint8)])
          written = parallel.gather_to_main(u8, len(chunk))
          if written is not None:
            names = [f for share in shares
                     for f in share[r * batch_size:(r + 1) * batch_size]]
            for f, im in zip(names, written):
              image_io.save_image(pathlib.Path(eval_dir) / task
                                  / f'{f.stem}.png', im)
        if bar is not None:
          bar.update(len(chunk))
      if bar is not None:
        bar.close()
      stats = stats.combine_processes(extractor.dim)
      value = float('nan')
      if main:  # the O(D^3) distance once, on the main process
        mu_fake, sigma_fake = stats.result()
        value = frechet.frechet_distance(mu_fake, sigma_fake, mu_real,
                                         sigma_real)
        real = f'{n_real} real' if n_real >= 0 else 'cached real'
        log(f'{task}: FID {value:.4f} ({stats.n} edited vs {real} images, '
            f'protocol {proto.name})')
      results[f'{KEY_PREFIX}/{task}'] = value
  # Every process returns the main process's values.
  values = parallel.broadcast_from_main(
      np.asarray(list(results.values()), np.float64))
  results = dict(zip(results, (float(v) for v in values)))
  results[f'{KEY_PREFIX}/mean'] = float(np.mean(values))
  return results


def make_edit_fn(variables: Mapping[str, Any], config: Any, *,
                 degree: float = 1.0, batch_size: int = 32,
                 mesh: jax.sharding.Mesh | None = None) -> EditFn:
  """`edit_fn` from L2M-GAN variables on this process's devices.

  Batches of `batch_size` (rounded up to the local device count) go through
  `parallel.map_batches`: padded, split over the process-local mesh, edited
  by the jitted `editing.edit`, unpadded.
  """
  from l2m_jax import editing  # pylint: disable=g-import-not-at-top
  mesh = mesh if mesh is not None else parallel.local_mesh()
  placed = parallel.replicate_local(variables, mesh)

  def edit_fn(images, src, trg):
    fn = lambda v, x: editing.edit(v, x, src, trg, degree, config=config)  # pylint: disable=unnecessary-lambda-assignment
    return parallel.map_batches(fn, np.asarray(images, np.float32),
                                batch_size=batch_size, args=(placed,),
                                mesh=mesh)
  return edit_fn


def evaluate_l2m(variables: Mapping[str, Any], config: Any,
                 val_dir: str | os.PathLike, train_dir: str | os.PathLike, *,
                 extractor: features.FeatureExtractor | None = None,
                 inception_weights: str | os.PathLike | None = None,
                 protocol: str = 'stargan_v2', degree: float = 1.0,
                 batch_size: int = 32,
                 cache_dir: str | os.PathLike | None = None,
                 eval_dir: str | os.PathLike | None = None,
                 progress: bool = True,
                 log: Callable[[str], None] | None = None
                 ) -> dict[str, float]:
  """The official evaluation for L2M-GAN variables (converted or trained).

  Args:
    variables: {'generator', 'style_encoder'[, 'fan']} (see
      `l2m_jax.convert.l2m.load_l2m_checkpoint` and docs/architecture.md).
    config: its `L2MModelConfig`.
    val_dir, train_dir: the `val/` and `train/` domain folders.
    extractor: a ready FeatureExtractor (reuse one across calls in training);
      otherwise built from `inception_weights` and `protocol`.
    degree: edit strength (official default 1.0).
    (other arguments as in `evaluate_fid_reference`)

  Returns:
    The result dict with the official keys.
  """
  if extractor is None:
    extractor = fid_lib.make_extractor(protocol, inception_weights)
  domains = list_domains(val_dir)
  names = list(getattr(config, 'domains', ()) or ())
  if names and names != domains:
    raise ValueError(f'{val_dir}: domain folders {domains} differ from the '
                     f"checkpoint's domains {names}")
  edit_fn = make_edit_fn(variables, config, degree=degree,
                         batch_size=batch_size)
  return evaluate_fid_reference(
      edit_fn, val_dir, train_dir, extractor, img_size=config.img_size,
      batch_size=batch_size, cache_dir=cache_dir, eval_dir=eval_dir,
      domains=domains, progress=progress, log=log)
