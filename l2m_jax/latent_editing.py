"""Latent-To-Latent editing: W+ latents -> edited latents and images.

Spec latent_to_latent.md §a.2 (legacy inference), §a.3 (paper mode), §d
(generator). Two edit forms, both jit-compiled once and run in fixed-size
batches:

* legacy: one attribute, a sweep of strengths k:
  `w'(k) = 0.7 w + 0.3 M(w + k d_attr)` with `d_attr` the InterFaceGAN normal
  from the boundaries file (the unofficial code uses k = 2).
* paper: an attribute-change vector `delta` [A] (or [B, A]) scaled by each
  strength s: `w'(s) = w + M(w, s * delta)`.

Images are rendered by the StyleGAN2 generator from W+ with the stored noise
buffers by default (the unofficial code's `randomize_noise=False`).
"""

from __future__ import annotations

import pathlib
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from l2m_jax import parallel
from l2m_jax.parallel import pad_to_multiple

# CelebA attribute names, normalised as the boundaries file's keys (§g); the
# order of the paper-mode conditioning vector when A = 40.
CELEBA_ATTRIBUTES = (
    '5_o_clock_shadow', 'arched_eyebrows', 'attractive', 'bags_under_eyes',
    'bald', 'bangs', 'big_lips', 'big_nose', 'black_hair', 'blond_hair',
    'blurry', 'brown_hair', 'bushy_eyebrows', 'chubby', 'double_chin',
    'eyeglasses', 'goatee', 'gray_hair', 'heavy_makeup', 'high_cheekbones',
    'male', 'mouth_slightly_open', 'mustache', 'narrow_eyes', 'no_beard',
    'oval_face', 'pale_skin', 'pointy_nose', 'receding_hairline',
    'rosy_cheeks', 'sideburns', 'smiling', 'straight_hair', 'wavy_hair',
    'wearing_earrings', 'wearing_hat', 'wearing_lipstick',
    'wearing_necklace', 'wearing_necktie', 'young')

_LATENT_KEYS = ('latents', 'latent', 'w', 'codes', 'w_plus')


def normalize_latents(arr: np.ndarray, n_latent: int, dim: int,
                      source: str = 'latents') -> np.ndarray:
  """Any accepted latent shape -> float32 [B, n_latent, dim].

  Accepted: [n_latent, dim] (one W+), [B, n_latent, dim], [B, 1, n_latent,
  dim] (the unofficial code's layout), [B, dim] / [dim] (w, broadcast to all
  rows).

  Raises:
    ValueError: naming the source, the shape found and the shapes accepted.
  """
  arr = np.asarray(arr)
  if not np.issubdtype(arr.dtype, np.floating):
    raise ValueError(f'{source}: latents must be floating point, found '
                     f'{arr.dtype}')
  shape = arr.shape
  if arr.ndim == 4 and shape[1] == 1:
    arr = arr[:, 0]
  if arr.ndim == 2 and shape == (n_latent, dim):
    arr = arr[None]
  elif arr.ndim == 1 and shape == (dim,):
    arr = np.broadcast_to(arr[None, None], (1, n_latent, dim))
  elif arr.ndim == 2 and shape[1] == dim:
    arr = np.broadcast_to(arr[:, None], (shape[0], n_latent, dim))
  if arr.ndim != 3 or arr.shape[1:] != (n_latent, dim) or arr.shape[0] == 0:
    raise ValueError(
        f'{source}: latents have shape {shape}; expected [B, {n_latent}, '
        f'{dim}] (W+), [{n_latent}, {dim}], [B, 1, {n_latent}, {dim}] or '
        f'[B, {dim}] (w)')
  arr = np.ascontiguousarray(arr, np.float32)
  if not np.all(np.isfinite(arr)):
    raise ValueError(f'{source}: latents contain NaN or inf')
  return arr


def load_latents(path: str, n_latent: int = 18, dim: int = 512) -> np.ndarray:
  """Reads W+ latents from `.npy` or `.pt` as float32 [B, n_latent, dim].

  A `.pt` may hold a tensor or a dict with one tensor (or a `latents` / `w`
  entry); it is loaded with `weights_only=True`.
  """
  p = pathlib.Path(path)
  if not p.is_file():
    raise FileNotFoundError(f'{path}: no such latents file')
  suffix = p.suffix.lower()
  if suffix == '.npy':
    try:
      arr = np.load(p, allow_pickle=False)
    except Exception as e:  # pylint: disable=broad-except
      raise ValueError(f'{path}: not a readable .npy array ({e})') from e
  elif suffix in ('.pt', '.pth'):
    from l2m_jax.convert import torch_to_flax as t2f  # pylint: disable=g-import-not-at-top
    obj = t2f.load_torch_file(p)
    if isinstance(obj, dict):
      keys = [k for k in _LATENT_KEYS if k in obj]
      tensors = [k for k, v in obj.items() if hasattr(v, 'shape')]
      if keys:
        obj = obj[keys[0]]
      elif len(tensors) == 1:
        obj = obj[tensors[0]]
      else:
        raise ValueError(f'{path}: a dict with keys {sorted(obj)}; expected '
                         f'one tensor or one of {_LATENT_KEYS}')
    if not hasattr(obj, 'shape'):
      raise ValueError(f'{path}: holds a {type(obj).__name__}, expected a '
                       'latent tensor')
    arr = t2f.to_numpy(obj)
  else:
    raise ValueError(f'{path}: unsupported latents file type {suffix!r} '
                     '(expected .npy or .pt)')
  return normalize_latents(arr, n_latent, dim, source=str(path))


def parse_delta(text: str, names: Sequence[str]) -> np.ndarray:
  """'smiling=0.5,young=-1' -> [A] vector over `names` (others 0)."""
  vec = np.zeros((len(names),), np.float32)
  for item in filter(None, (s.strip() for s in text.split(','))):
    if '=' not in item:
      raise ValueError(f'--delta: {item!r} is not NAME=VALUE')
    name, val = item.split('=', 1)
    key = name.strip().lower()
    if key not in names:
      raise ValueError(f'--delta: unknown attribute {name!r}; available: '
                       + ', '.join(names))
    try:
      vec[list(names).index(key)] = float(val)
    except ValueError:
      raise ValueError(f'--delta: value {val!r} for {name} is not a number'
                       ) from None
  return vec


class LatentEditor:
  """Jit-compiled, batched mapper edit + generator rendering.

  Args:
    generator, g_vars: `stylegan2.Generator` and its variables.
    mapper, m_vars: `mapper.Latent2Latent` and its variables.
    batch_size: rows per compiled call (inputs are padded to it).
    noise_mode: generator noise ('const', 'random', 'none').
    seed: rng seed for noise_mode='random'.
    mesh: optional `parallel.make_mesh(...)`; batches are then split over its
      'data' axis and the variables replicated (batch_size must be a multiple
      of the device count).
  """

  def __init__(self, generator, g_vars, mapper, m_vars, batch_size: int = 4,
               noise_mode: str = 'const', seed: int = 0, mesh=None):
    if mapper.n_latent != generator.n_latent or (
        mapper.style_dim != generator.style_dim):
      raise ValueError(
          f'mapper expects W+ [{mapper.n_latent}, {mapper.style_dim}] but the '
          f'generator ({generator.size} px) uses [{generator.n_latent}, '
          f'{generator.style_dim}]')
    if batch_size < 1:
      raise ValueError(f'batch_size={batch_size}: must be >= 1')
    self.mesh = mesh
    if mesh is not None:
      n = mesh.devices.size
      if batch_size % n:
        raise ValueError(f'batch_size={batch_size}: must be a multiple of '
                         f'the {n} devices of the mesh')
      g_vars = parallel.replicate(g_vars, mesh)
      m_vars = parallel.replicate(m_vars, mesh)
    self.generator, self.g_vars = generator, g_vars
    self.mapper, self.m_vars = mapper, m_vars
    self.batch_size = batch_size
    self.noise_mode = noise_mode
    self.rng = jax.random.key(seed)

    def edit_fn(m_vars, w, delta, direction, strength):
      return mapper.apply(m_vars, w, delta, direction, strength,
                          method=mapper.edit)

    def render_fn(g_vars, w, rng):
      return generator.apply(g_vars, w, input_is_latent=True,
                             noise_mode=noise_mode, rngs={'noise': rng})

    self._edit = jax.jit(edit_fn)
    self._render = jax.jit(render_fn)

  def _batched(self, fn, arrays: Sequence[np.ndarray]) -> np.ndarray:
    n = arrays[0].shape[0]
    outs = []
    for start in range(0, n, self.batch_size):
      chunk = [a[start:start + self.batch_size] for a in arrays]
      padded = [pad_to_multiple(c, self.batch_size)[0] for c in chunk]
      if self.mesh is not None:
        padded = parallel.shard_batch(padded, self.mesh)
      res = np.asarray(fn(*padded))
      outs.append(res[:chunk[0].shape[0]])
    return np.concatenate(outs, axis=0)

  def edit_latents(self, w: np.ndarray, *, direction=None, delta=None,
                   strengths: Sequence[float] = (2.0,)) -> np.ndarray:
    """Edited latents [B, S, n_latent, D] for each strength.

    Legacy (direction given): pre-shift `w + s * direction`. Paper (delta
    given, [A] or [B, A]): `s * delta`.
    """
    w = np.asarray(w, np.float32)
    b, s = w.shape[0], len(strengths)
    ws = np.repeat(w, s, axis=0)  # [B*S, n, D]
    st = np.tile(np.asarray(strengths, np.float32), b)  # [B*S]
    if direction is not None:
      d = jnp.asarray(np.asarray(direction, np.float32).reshape(-1))
      fn = lambda w_, k_: self._edit(self.m_vars, w_, None, d, k_)
      out = self._batched(fn, [ws, st])
    elif delta is not None:
      delta = np.asarray(delta, np.float32)
      if delta.ndim == 1:
        delta = np.broadcast_to(delta[None], (b, delta.shape[0]))
      if delta.shape != (b, self.mapper.cond_dim):
        raise ValueError(f'delta has shape {delta.shape}; expected '
                         f'[{self.mapper.cond_dim}] or [{b}, '
                         f'{self.mapper.cond_dim}]')
      ds = np.repeat(delta, s, axis=0) * st[:, None]
      fn = lambda w_, d_: self._edit(self.m_vars, w_, d_, None, 0.0)
      out = self._batched(fn, [ws, ds])
    else:
      raise ValueError('edit_latents: give a boundary direction (legacy) or '
                       'an attribute-change vector (paper)')
    return out.reshape((b, s) + w.shape[1:])

  def render(self, w: np.ndarray) -> np.ndarray:
    """Images [N, H, W, 3] in about [-1, 1] from W+ [N, n_latent, D]."""
    w = np.asarray(w, np.float32)

    def fn(w_):
      self.rng, sub = jax.random.split(self.rng)
      return self._render(self.g_vars, w_, sub)
    return self._batched(fn, [w])


def load_editor(generator_dir: str, mapper_dir: str, batch_size: int = 4,
                noise_mode: str = 'const', seed: int = 0, mesh=None
                ) -> tuple[LatentEditor, dict[str, Any]]:
  """LatentEditor from converted generator and mapper checkpoints."""
  from l2m_jax.convert import mapper as cm  # pylint: disable=g-import-not-at-top
  from l2m_jax.convert import stylegan2 as cs  # pylint: disable=g-import-not-at-top
  gen, g_vars, g_meta = cs.load_generator(generator_dir)
  mapper, m_vars, m_meta = cm.load_mapper(mapper_dir)
  editor = LatentEditor(gen, g_vars, mapper, m_vars, batch_size=batch_size,
                        noise_mode=noise_mode, seed=seed, mesh=mesh)
  return editor, dict(generator=g_meta, mapper=m_meta)
