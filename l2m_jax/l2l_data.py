"""The latents of a Latent-To-Latent run and the batch of each step.

`config.data_source`: 'sampled' (z ~ N(0, I) through the mapping network,
drawn on the device from (seed, example index) by the train step; here only
the held-out latents), 'latents' (an .npy of W+ codes) or 'inverted' (a
folder of photos inverted once with ReStyle-e4e and cached in the workdir).
The two latents sources hold out a seeded eval split; `host_batch` gives
each process its share of a step's global batch from the step number, so a
resumed run sees the same data as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import pathlib

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from l2m_jax import image_io
from l2m_jax import l2l_networks
from l2m_jax import parallel


INVERTED_CACHE = 'inverted_latents.npy'  # in the workdir ('inverted' source)


def _split(n: int, config) -> tuple[np.ndarray, np.ndarray]:
  """(train indices, eval indices) of n latents, seeded (split_seed)."""
  perm = np.random.default_rng(int(config.split_seed)).permutation(n)
  n_eval = int(round(n * float(config.eval_fraction)))
  n_train = int(round(n * float(config.train_fraction)))
  n_train = min(n_train, n - n_eval)
  if n_eval < 1 or n_train < 1:
    raise ValueError(
        f'eval_fraction={config.eval_fraction}, train_fraction='
        f'{config.train_fraction}: {n} latents give {n_eval} eval and '
        f'{n_train} training latents; both must be >= 1')
  return perm[n_eval:n_eval + n_train], perm[:n_eval]


def load_latents_file(path: str, nets: l2l_networks.Networks, field: str
                      ) -> np.ndarray:
  from l2m_jax import latent_editing as le  # pylint: disable=g-import-not-at-top
  g = nets.generator
  p = pathlib.Path(path)
  if not p.is_file():
    raise FileNotFoundError(f'{field}={path!r}: no such latents file')
  try:
    arr = np.load(p, allow_pickle=False)
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f'{field}={path!r}: not a readable .npy array ({e})'
                     ) from None
  if arr.ndim == 4 and arr.shape[1] == 1:
    arr = arr[:, 0]  # the unofficial code's [B, 1, n, D]
  if arr.ndim != 3 or arr.shape[1:] != (g.n_latent, g.style_dim):
    raise ValueError(
        f'{field}={path!r}: latents of shape {arr.shape}; expected W+ codes '
        f'[N, {g.n_latent}, {g.style_dim}] for the {g.size} px generator')
  return le.normalize_latents(arr, g.n_latent, g.style_dim, source=path)


def invert_photos(config, nets: l2l_networks.Networks, workdir: str
                  ) -> np.ndarray:
  """W+ codes of config.photos_dir, inverted once and cached in the workdir.

  The cache (`inverted_latents.npy` with `inverted_latents.json`: file
  names, sizes, modification times, n_iters) is reused when it matches the
  folder; every process reads it after the main process writes it.
  """
  folder = l2l_networks.need_path(config, 'photos_dir',
                                  'a folder of aligned face photos')
  files = image_io.list_images(folder)
  listing = [[p.name, p.stat().st_size, int(p.stat().st_mtime)]
             for p in files]
  cache = pathlib.Path(workdir) / INVERTED_CACHE
  info_file = cache.with_suffix('.json')
  want = {'photos_dir': os.path.abspath(folder), 'files': listing,
          'n_iters': int(config.invert_iters)}
  hit = False
  if cache.is_file() and info_file.is_file():
    try:
      hit = json.loads(info_file.read_text()) == want
    except ValueError:
      hit = False
  if not parallel.all_processes(hit):
    if parallel.is_main_process():
      codes = _invert(config, nets, files)
      np.save(str(cache) + '.tmp.npy', codes)
      os.replace(str(cache) + '.tmp.npy', cache)
      info_file.write_text(json.dumps(want))
    parallel.sync('inverted_cache')
  else:
    logging.info('Reusing the inverted latents cached in %s', cache)
  return load_latents_file(str(cache), nets, 'inverted cache')


def _invert(config, nets, files) -> np.ndarray:
  from l2m_jax import latent_editing as le  # pylint: disable=g-import-not-at-top
  from l2m_jax.convert import restyle as rs_convert  # pylint: disable=g-import-not-at-top
  path = l2l_networks.need_path(
      config, 'encoder_checkpoint', 'a converted ReStyle-e4e encoder '
      '(convert_latent.py encoder) to invert photos')
  encoder, enc_vars, generator, g_vars, _ = rs_convert.load_restyle(path)
  g = nets.generator
  if (generator.n_latent, generator.style_dim) != (g.n_latent, g.style_dim):
    raise ValueError(f'encoder_checkpoint={path!r}: its generator uses W+ '
                     f'[{generator.n_latent}, {generator.style_dim}], the '
                     f'training generator [{g.n_latent}, {g.style_dim}]')
  bad = image_io.find_unreadable(files)
  if bad:
    raise image_io.ImageReadError(bad[0][0], bad[0][1] + (
        f' (and {len(bad) - 1} more unreadable)' if len(bad) > 1 else ''))
  inverter = le.Inverter(encoder, enc_vars, generator, g_vars,
                         batch_size=int(config.invert_batch_size),
                         mesh=parallel.local_mesh())
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  codes = []
  chunk = max(1, int(config.invert_batch_size)) * 4
  with tqdm(total=len(files), desc='Inverting photos (ReStyle-e4e)',
            unit='photo') as bar:
    for i in range(0, len(files), chunk):
      imgs = image_io.load_images(files[i:i + chunk], 256)
      codes.append(inverter.invert(imgs, n_iters=int(config.invert_iters)))
      bar.update(len(imgs))
  return np.concatenate(codes, 0).astype(np.float32)


@dataclasses.dataclass
class Data:
  """Training and held-out latents of a run (numpy, host)."""
  train: np.ndarray | None  # [N, n, D]; None for 'sampled'
  eval: np.ndarray  # [N_eval, n, D]


def load_data(config, nets: l2l_networks.Networks, frozen, workdir: str
              ) -> Data:
  """The run's latents (validated before training starts)."""
  if config.data_source == 'sampled':
    n = int(config.num_eval)
    if n < 1:
      raise ValueError(f'num_eval={n}: must be >= 1')
    key = jax.random.fold_in(jax.random.key(int(config.split_seed)), 7)
    fn = jax.jit(functools.partial(l2l_networks.sample_latents, nets,
                                   truncation=float(config.truncation)))
    w = np.asarray(fn(frozen['generator'], key, jnp.arange(n)))
    return Data(None, w)
  if config.data_source == 'latents':
    w = load_latents_file(
        l2l_networks.need_path(config, 'latents_file',
                               'an .npy of W+ codes'), nets, 'latents_file')
  else:
    w = invert_photos(config, nets, workdir)
  tr, ev = _split(w.shape[0], config)
  logging.info('%d latents: %d for training, %d held out (split_seed %d).',
               w.shape[0], len(tr), len(ev), int(config.split_seed))
  return Data(w[tr], w[ev])


def global_batch_indices(step: int, batch_size: int) -> np.ndarray:
  return np.arange(step * batch_size, (step + 1) * batch_size,
                   dtype=np.int64)


def host_batch(config, data: Data, step: int) -> dict[str, np.ndarray]:
  """This process's share of the global batch of `step` (numpy).

  The position is the step: example j of the run is training latent
  perm_e[j mod N] with perm_e the seeded permutation of epoch e = j // N,
  so a resumed run sees the same data as an uninterrupted one.
  """
  bs = int(config.batch_size)
  index = global_batch_indices(step, bs)
  share = parallel.process_slice(bs)
  index = index[share]
  batch = {'index': (index % (2**31 - 1)).astype(np.int32)}
  if data.train is not None:
    n = data.train.shape[0]
    epochs = index // n
    rows = np.empty(len(index), np.int64)
    for e in np.unique(epochs):
      perm = np.random.default_rng([int(config.seed), int(e)]).permutation(n)
      sel = epochs == e
      rows[sel] = perm[index[sel] % n]
    batch['w'] = data.train[rows]
  return batch
