"""Fréchet Inception Distance of image folders and in-memory image sets.

The top of the FID stack: `make_extractor` loads Inception weights into the
feature pipeline (`l2m_jax.evaluation.inception_features`: protocols, file
reading, preprocessing, batched feature extraction), and the functions below
stream the features of a folder or of image batches into float64 statistics
(`l2m_jax.evaluation.frechet`: `StreamingStats`, `frechet_distance`, stats
files), cached per folder, protocol and weights where asked.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import pathlib
import sys
import warnings
from typing import Iterable, Sequence

import jax
import numpy as np

from l2m_jax import parallel
from l2m_jax.evaluation import frechet
from l2m_jax.evaluation import inception_features as features


def make_extractor(protocol: str | features.Protocol,
                   weights: str | os.PathLike | None, *,
                   batch_size: int | None = None,
                   mesh: jax.sharding.Mesh | None = None
                   ) -> features.FeatureExtractor:
  """A FeatureExtractor from a weights file (.pth) or converted folder."""
  from l2m_jax.convert import inception as convert_inception  # pylint: disable=g-import-not-at-top
  proto = features.get_protocol(protocol)
  variables, meta = convert_inception.load_weights(weights)
  kind = (meta.get('config') or {}).get('kind')
  if kind and kind != proto.variant:
    warnings.warn(
        f'{weights}: these are {kind!r} Inception weights, but protocol '
        f'{proto.name} uses the {proto.variant!r} network; the FID will not '
        'be comparable with published numbers', stacklevel=2)
  sha = (meta.get('source') or {}).get('sha256', '')
  return features.FeatureExtractor(proto, variables, weights_id=sha,
                                   batch_size=batch_size, mesh=mesh)


def progress_bar(total: int, desc: str, enabled: bool):
  """A tqdm bar of images on stderr (None without tqdm)."""
  try:
    from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  except ImportError:  # pragma: no cover
    return None
  return tqdm(total=total, desc=desc, unit='img', disable=not enabled,
              file=sys.stderr, dynamic_ncols=True)


def folder_statistics(folder: str | os.PathLike,
                      extractor: features.FeatureExtractor, *,
                      progress: bool = True, num_workers: int = 4,
                      desc: str | None = None) -> frechet.StreamingStats:
  """Streams every image of a folder through the extractor.

  Multi-process: each process reads and extracts its own share of the files
  (`parallel.process_slice`) and the statistics are combined across
  processes (a collective: every process must call this).

  Raises:
    ValueError / FileNotFoundError: empty or missing folder.
    image_io.ImageReadError: an unreadable image (the file is named).
  """
  files = features.list_images(folder, extractor.protocol)
  share = files[parallel.process_slice(len(files))]
  stats = frechet.StreamingStats(str(folder))
  bar = progress_bar(len(share), desc or str(folder),
                  progress and parallel.is_main_process())
  bs = extractor.batch_size
  load = lambda p: features.load_image(p, extractor.protocol)  # pylint: disable=unnecessary-lambda-assignment
  with concurrent.futures.ThreadPoolExecutor(max(1, num_workers)) as pool:
    for start in range(0, len(share), bs):
      batch = list(pool.map(load, share[start:start + bs]))
      stats.update(extractor(batch))
      if bar is not None:
        bar.update(len(batch))
  if bar is not None:
    bar.close()
  return stats.combine_processes(extractor.dim)


def images_statistics(batches: Iterable[np.ndarray],
                      extractor: features.FeatureExtractor,
                      stats: frechet.StreamingStats | None = None
                      ) -> frechet.StreamingStats:
  """In-memory path: batches of [-1, 1] float (or uint8) images [B, H, W, 3].

  Float images are quantised as a PNG save would (`quantize`) and then
  preprocessed exactly as the file path would preprocess the PNGs.
  """
  stats = stats if stats is not None else frechet.StreamingStats('images')
  for batch in batches:
    u8 = features.quantize(np.asarray(batch))
    if u8.ndim != 4:
      raise ValueError(f'expected image batches [B, H, W, 3], got shape '
                       f'{u8.shape}')
    stats.update(extractor([features.host_preprocess(im, extractor.protocol)
                            for im in u8]))
  return stats


def _folder_fingerprint(files: Sequence[pathlib.Path]) -> str:
  digest = hashlib.sha256()
  for p in files:
    st = p.stat()
    digest.update(f'{p}\0{st.st_size}\0{st.st_mtime_ns}\n'.encode())
  return digest.hexdigest()


def cached_folder_statistics(folder: str | os.PathLike,
                             extractor: features.FeatureExtractor,
                             cache_dir: str | os.PathLike | None, *,
                             progress: bool = True
                             ) -> tuple[np.ndarray, np.ndarray, int]:
  """(mu, sigma, n) of a folder, cached per folder + protocol + weights.

  The cache key hashes the protocol, the weights id, the folder's absolute
  path and its file list (names, sizes, mtimes), so editing the folder or
  changing weights recomputes. Files: `<cache_dir>/<key>.npz` (mu, sigma) and
  `<key>.json` (the key's fields and n).
  """
  folder = pathlib.Path(folder).resolve()
  if cache_dir is None:
    mu, sigma = folder_statistics(folder, extractor,
                                  progress=progress).result()
    return mu, sigma, -1
  files = features.list_images(folder, extractor.protocol)
  fields = {'protocol': extractor.protocol.name,
            'weights_sha256': extractor.weights_id,
            'folder': str(folder), 'files_sha256': _folder_fingerprint(files),
            'num_files': len(files)}
  key = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()
                       ).hexdigest()[:24]
  cache_dir = pathlib.Path(cache_dir)
  npz, meta = cache_dir / f'{key}.npz', cache_dir / f'{key}.json'
  cached = None
  if npz.is_file() and meta.is_file():
    try:
      mu, sigma = frechet.load_stats(npz)
      cached = mu, sigma, json.loads(meta.read_text()).get('n', -1)
    except (ValueError, OSError):
      pass  # a damaged cache entry is recomputed
  # Every process must take the same branch (the computation below is a
  # collective), so a hit counts only when all processes read the entry.
  if parallel.all_processes(cached is not None):
    return cached
  stats = folder_statistics(folder, extractor, progress=progress)
  mu, sigma = stats.result()
  if parallel.is_main_process():
    frechet.save_stats(npz, mu, sigma)
    meta.write_text(json.dumps(dict(fields, n=stats.n), indent=1))
  parallel.sync('fid_cache')
  return mu, sigma, stats.n


def path_statistics(path: str | os.PathLike,
                    extractor: features.FeatureExtractor | None, *,
                    progress: bool = True
                    ) -> tuple[np.ndarray, np.ndarray, int]:
  """(mu, sigma, n) of an image folder or an .npz stats file (n = -1)."""
  path = pathlib.Path(path)
  if path.suffix == '.npz' or path.is_file():
    mu, sigma = frechet.load_stats(path)
    return mu, sigma, -1
  if extractor is None:
    raise ValueError(f'{path}: an image folder needs Inception weights')
  stats = folder_statistics(path, extractor, progress=progress)
  mu, sigma = stats.result()
  return mu, sigma, stats.n
