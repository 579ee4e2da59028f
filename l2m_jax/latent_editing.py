"""Latent-To-Latent editing: photos and W+ latents -> edited latents and images.

Edit forms (Khodadadeh et al., "Latent to Latent", WACV 2022, and the
unofficial 850552586/Latent-To-Latent code; see docs/latent_to_latent.md):

* legacy: one attribute, a sweep of strengths k:
  `w'(k) = 0.7 w + 0.3 M(w + k d_attr)` with `d_attr` the InterFaceGAN normal
  from the boundaries file (the unofficial code uses k = 2).
* paper: an attribute-change vector `delta` [A] (or [B, A]) scaled by each
  strength s: `w'(s) = w + M(w, s * delta)`.

Images are rendered by the StyleGAN2 generator from W+ with the stored noise
buffers by default (the unofficial code's `randomize_noise=False`).

Photos enter W+ through ReStyle-e4e (`Inverter.invert`); edits are judged by
the ArcFace identity similarity (`IdentityScorer.identity_similarity`) and
the BranchedTiny attribute classifier (`AttributeScorer.attribute_scores`).
`PhotoEditor` bundles the four. Every network runs jit-compiled, in
fixed-size batches sharded over this process's devices, through
`parallel.map_batches`.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
from typing import Any, Sequence

import jax
import numpy as np

from l2m_jax import parallel
from l2m_jax.models import arcface
from l2m_jax.models import branched_tiny
from l2m_jax.models import restyle

# CelebA attribute names, normalised as the boundaries file's keys
# (docs/method.md#l2l-boundaries); the
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


def add_edit_arguments(parser: Any, *, strengths_help: str,
                       delta_file_help: str) -> None:
  """The edit flags of the latent-editing CLIs (see `choose_edit`).

  --mode, --boundaries, --attribute (legacy), --delta, --delta-file
  (paper), --strengths, --num-devices, --noise and --seed.
  """
  parser.add_argument('--mode', choices=('auto', 'legacy', 'paper'),
                      default='auto',
                      help='legacy: boundary pre-shift + blend; paper: '
                      'attribute-change vector; auto: legacy when the mapper '
                      'has no conditioning input')
  parser.add_argument('--boundaries',
                      help='(legacy) boundaries .pt or converted directory')
  parser.add_argument('--attribute',
                      help='(legacy) attribute name, e.g. smiling')
  parser.add_argument('--delta', help='(paper) NAME=VALUE,... over the 40 '
                      'CelebA attributes')
  parser.add_argument('--delta-file', help=delta_file_help)
  parser.add_argument('--strengths', type=float, nargs='+', default=None,
                      help=strengths_help)
  parser.add_argument('--num-devices', type=int, default=None,
                      help='split each batch over this many local devices '
                      '(data parallel); default: all local devices')
  parser.add_argument('--noise', choices=('const', 'random', 'none'),
                      default='const',
                      help='generator noise: the stored buffers (default, as '
                      'the unofficial code), random, or none')
  parser.add_argument('--seed', type=int, default=0)


@dataclasses.dataclass(frozen=True)
class EditChoice:
  """An edit resolved from the CLI flags (`choose_edit`).

  Attributes:
    mode: 'legacy' or 'paper'.
    edit_kw: `direction=` (legacy) or `delta=` (paper) for
      `LatentEditor.edit_latents`.
    strengths: the strengths to edit with.
    attributes: names of the edited attributes (legacy: the boundary's;
      paper: the non-zero entries of a 40-attribute delta).
    settings: {attribute} or {delta} for the run's JSON record.
  """
  mode: str
  edit_kw: dict[str, Any]
  strengths: list[float]
  attributes: list[str]
  settings: dict[str, Any]


def choose_edit(args: Any, mapper: Any, *,
                default_legacy_strengths: Sequence[float],
                rows: int | None = None) -> EditChoice:
  """Resolves the `add_edit_arguments` flags against a loaded mapper.

  Args:
    args: the parsed flags (also `args.mapper`, the mapper's path, for
      messages).
    mapper: the Latent2Latent module (`cond_dim`, `style_dim`).
    default_legacy_strengths: strengths when --strengths is not given in
      legacy mode (paper mode: [1]).
    rows: the number of latents, when a --delta-file may hold one delta per
      latent ([rows, A]); only [A] otherwise.

  Raises:
    ValueError: a missing or contradictory flag, or a file of the wrong
      shape (the message names it).
  """
  from l2m_jax.convert import mapper as cm  # pylint: disable=g-import-not-at-top
  mode = args.mode
  if mode == 'auto':
    mode = 'paper' if mapper.cond_dim else 'legacy'
  if mode == 'legacy':
    if not args.boundaries or not args.attribute:
      raise ValueError('legacy mode needs --boundaries and --attribute')
    directions, names = cm.load_boundaries(args.boundaries)
    idx = cm.find_attribute(names, args.attribute, args.boundaries)
    if directions.shape[1] != mapper.style_dim:
      raise ValueError(f'{args.boundaries}: directions have width '
                       f'{directions.shape[1]}, the mapper '
                       f'{mapper.style_dim}')
    return EditChoice(mode, dict(direction=directions[idx]),
                      list(args.strengths or default_legacy_strengths),
                      [names[idx]], dict(attribute=names[idx]))
  if not mapper.cond_dim:
    raise ValueError(f'{args.mapper}: this mapper has no conditioning input '
                     '(legacy); use --mode legacy')
  if (args.delta is None) == (args.delta_file is None):
    raise ValueError('paper mode needs exactly one of --delta and '
                     '--delta-file')
  names = list(CELEBA_ATTRIBUTES)
  if args.delta is not None:
    if mapper.cond_dim != len(names):
      raise ValueError(f'--delta names the 40 CelebA attributes but the '
                       f'mapper has cond_dim {mapper.cond_dim}; use '
                       '--delta-file')
    delta = parse_delta(args.delta, names)
  else:
    try:
      delta = np.asarray(np.load(args.delta_file, allow_pickle=False),
                         np.float32)
    except (OSError, ValueError) as e:
      raise ValueError(f'{args.delta_file}: cannot read .npy ({e})') from None
    shapes = [(mapper.cond_dim,)] + ([] if rows is None else
                                     [(rows, mapper.cond_dim)])
    if delta.shape not in shapes:
      raise ValueError(f'{args.delta_file}: shape {delta.shape}; expected '
                       + ' or '.join(str(list(s)) for s in shapes))
  edited = ([n for n, v in zip(names, delta) if v != 0]
            if delta.shape == (len(names),) else [])
  return EditChoice(mode, dict(delta=delta), list(args.strengths or [1.0]),
                    edited, dict(delta=delta.tolist()))


def _mesh_and_batch(mesh, batch_size: int):
  """(process-local mesh, batch size rounded up to its device count)."""
  mesh = parallel.local_mesh() if mesh is None else mesh
  return mesh, parallel.round_up_batch(batch_size, mesh)


@functools.lru_cache(maxsize=None)
def _editor_fns(mapper, generator, noise_mode):
  """Jitted edit (direction, delta) and render functions.

  Cached on the (hashable) modules, so every editor built on equal modules
  shares them and each compiles once per batch shape.
  """

  def edit_dir(m_vars, d, batch):
    w, k = batch
    return mapper.apply(m_vars, w, None, d, k, method=mapper.edit)

  def edit_delta(m_vars, batch):
    w, delta = batch
    return mapper.apply(m_vars, w, delta, None, 0.0, method=mapper.edit)

  def render_fn(g_vars, rng, w):
    return generator.apply(g_vars, w, input_is_latent=True,
                           noise_mode=noise_mode, rngs={'noise': rng})

  return jax.jit(edit_dir), jax.jit(edit_delta), jax.jit(render_fn)


class LatentEditor:
  """Jit-compiled, batched mapper edit + generator rendering.

  Args:
    generator, g_vars: `stylegan2.Generator` and its variables.
    mapper, m_vars: `mapper.Latent2Latent` and its variables.
    batch_size: rows per compiled call (inputs are padded to it); rounded up
      to a multiple of the mesh's device count.
    noise_mode: generator noise ('const', 'random', 'none').
    seed: rng seed for noise_mode='random'.
    mesh: a process-local ('data',) mesh (`parallel.local_mesh()`, the
      default, or `parallel.make_mesh(n)` in a single process); batches are
      split over it and the variables replicated.
  """

  def __init__(self, generator, g_vars, mapper, m_vars, batch_size: int = 4,
               noise_mode: str = 'const', seed: int = 0, mesh=None):
    if mapper.n_latent != generator.n_latent or (
        mapper.style_dim != generator.style_dim):
      raise ValueError(
          f'mapper expects W+ [{mapper.n_latent}, {mapper.style_dim}] but the '
          f'generator ({generator.size} px) uses [{generator.n_latent}, '
          f'{generator.style_dim}]')
    self.mesh, self.batch_size = _mesh_and_batch(mesh, batch_size)
    self.generator = generator
    self.g_vars = parallel.replicate_local(g_vars, self.mesh)
    self.mapper = mapper
    self.m_vars = parallel.replicate_local(m_vars, self.mesh)
    self.noise_mode = noise_mode
    self.rng = jax.random.key(seed)

    self._edit_dir, self._edit_delta, self._render = _editor_fns(
        mapper, generator, noise_mode)

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
      d = np.asarray(direction, np.float32).reshape(-1)
      out = parallel.map_batches(self._edit_dir, (ws, st),
                                 batch_size=self.batch_size,
                                 args=(self.m_vars, d), mesh=self.mesh)
    elif delta is not None:
      delta = np.asarray(delta, np.float32)
      if delta.ndim == 1:
        delta = np.broadcast_to(delta[None], (b, delta.shape[0]))
      if delta.shape != (b, self.mapper.cond_dim):
        raise ValueError(f'delta has shape {delta.shape}; expected '
                         f'[{self.mapper.cond_dim}] or [{b}, '
                         f'{self.mapper.cond_dim}]')
      ds = np.repeat(delta, s, axis=0) * st[:, None]
      out = parallel.map_batches(self._edit_delta, (ws, ds),
                                 batch_size=self.batch_size,
                                 args=(self.m_vars,), mesh=self.mesh)
    else:
      raise ValueError('edit_latents: give a boundary direction (legacy) or '
                       'an attribute-change vector (paper)')
    return out.reshape((b, s) + w.shape[1:])

  def render(self, w: np.ndarray) -> np.ndarray:
    """Images [N, H, W, 3] in about [-1, 1] from W+ [N, n_latent, D]."""
    w = np.asarray(w, np.float32)

    def fn(g_vars, w_):
      self.rng, sub = jax.random.split(self.rng)
      return self._render(g_vars, sub, w_)
    return parallel.map_batches(fn, w, batch_size=self.batch_size,
                                args=(self.g_vars,), mesh=self.mesh)


def check_images(images, name: str = 'images', size: int | None = None
                 ) -> np.ndarray:
  """Validates a batch of square RGB images in [-1, 1]: float32 [N, S, S, 3].

  Raises:
    ValueError: naming `name`, what was found and what is expected (a
      non-float dtype such as uint8, a wrong rank, channel count or size).
  """
  arr = np.asarray(images)
  want = f'[N, {size}, {size}, 3]' if size else '[N, S, S, 3]'
  if not np.issubdtype(arr.dtype, np.floating):
    raise ValueError(f'{name}: dtype {arr.dtype}; expected float images in '
                     f'[-1, 1] (uint8 pixels p map to p / 127.5 - 1)')
  if arr.ndim == 3 and arr.shape[-1] == 3:
    arr = arr[None]
  if arr.ndim != 4 or arr.shape[-1] != 3 or arr.shape[0] == 0:
    raise ValueError(f'{name}: shape {arr.shape}; expected RGB images {want}'
                     ' (NHWC)')
  if arr.shape[1] != arr.shape[2] or (size and arr.shape[1] != size):
    raise ValueError(f'{name}: images are {arr.shape[1]} x {arr.shape[2]}; '
                     f'expected {want} (aligned square face crops)')
  arr = np.ascontiguousarray(arr, np.float32)
  if not np.all(np.isfinite(arr)):
    raise ValueError(f'{name}: images contain NaN or inf')
  return arr


@functools.lru_cache(maxsize=None)
def _invert_fn(encoder, generator):
  def fn(enc_vars, g_vars, avg_image, n_iters, x):
    return restyle.restyle_invert(encoder, enc_vars, generator, g_vars, x,
                                  n_iters, avg_image)
  return jax.jit(fn)


@functools.lru_cache(maxsize=None)
def _average_image_fn(generator):
  return jax.jit(functools.partial(restyle.average_image, generator))


class Inverter:
  """ReStyle-e4e inversion of aligned face photos into W+.

  Args:
    encoder, enc_vars: `restyle.ReStyleEncoder` and its variables (with the
      'constants' latent_avg).
    generator, g_vars: the StyleGAN2 generator paired with the encoder.
    batch_size: images per compiled call (rounded up to the device count).
    mesh: process-local mesh (`parallel.local_mesh()` by default).
  """

  def __init__(self, encoder, enc_vars, generator, g_vars,
               batch_size: int = 4, mesh=None):
    if encoder.n_styles != generator.n_latent:
      raise ValueError(f'the encoder predicts {encoder.n_styles} W+ rows but '
                       f'the {generator.size} px generator uses '
                       f'{generator.n_latent}')
    self.mesh, self.batch_size = _mesh_and_batch(mesh, batch_size)
    self.encoder, self.generator = encoder, generator
    self.enc_vars = parallel.replicate_local(enc_vars, self.mesh)
    self.g_vars = parallel.replicate_local(g_vars, self.mesh)
    self.avg_image = _average_image_fn(generator)(
        self.g_vars, self.enc_vars['constants']['latent_avg'])
    self._fn = _invert_fn(encoder, generator)

  def invert(self, images, n_iters: int = 5,
             return_reconstruction: bool = False):
    """W+ codes [N, n_styles, 512] of photos [N, 256, 256, 3] in [-1, 1].

    Args:
      images: aligned FFHQ-style face crops, 256 x 256, in [-1, 1].
      n_iters: ReStyle refinement iterations (>= 1; 5 in the unofficial
        Latent-To-Latent code). One compilation serves every value.
      return_reconstruction: also return the last 256 px reconstruction
        pool256(G(codes)) [N, 256, 256, 3].
    """
    x = check_images(images, 'images', restyle.INPUT_SIZE)
    if isinstance(n_iters, bool) or int(n_iters) != n_iters or n_iters < 1:
      raise ValueError(f'n_iters={n_iters!r}: must be an integer >= 1')
    codes, recon = parallel.map_batches(
        self._fn, x, batch_size=self.batch_size,
        args=(self.enc_vars, self.g_vars, self.avg_image,
              np.int32(n_iters)), mesh=self.mesh)
    return (codes, recon) if return_reconstruction else codes


@functools.lru_cache(maxsize=None)
def _apply_fn(model):
  """jit(model.apply), shared by every scorer of an equal module."""
  return jax.jit(model.apply)


_identity_crop = jax.jit(arcface.identity_crop)


class IdentityScorer:
  """ArcFace IR-SE-50 embeddings and identity similarity (pSp convention).

  Images of any square size in [-1, 1] (256 px or larger: non-256 images are
  average-pooled to 256), cropped to rows 35:223, columns 32:220 and pooled
  to 112 px, as pSp's identity loss does.
  """

  def __init__(self, model, variables, batch_size: int = 8, mesh=None):
    if model.input_size != 112:
      raise ValueError(f'the identity crop feeds 112 px; this ArcFace takes '
                       f'{model.input_size} px')
    self.mesh, self.batch_size = _mesh_and_batch(mesh, batch_size)
    self.model = model
    self.variables = parallel.replicate_local(variables, self.mesh)
    net = _apply_fn(model)
    # Crop and network are compiled apart: the network compiles once per
    # batch size whatever the input resolution.
    self._fn = lambda variables, x: net(variables, _identity_crop(x))

  def embed(self, images, name: str = 'images') -> np.ndarray:
    """Unit embeddings [N, 512] of face images [N, S, S, 3] in [-1, 1]."""
    x = check_images(images, name)
    return parallel.map_batches(self._fn, x, batch_size=self.batch_size,
                                args=(self.variables,), mesh=self.mesh)

  def identity_similarity(self, a, b) -> np.ndarray:
    """Cosine similarity [N] of the ArcFace embeddings of a[i] and b[i].

    1 means the same embedding; pSp's identity loss is 1 - this value.
    `a` and `b` may have different sizes (e.g. 256 px photos against
    1024 px renders).
    """
    ea, eb = self.embed(a, 'a'), self.embed(b, 'b')
    if ea.shape[0] != eb.shape[0]:
      raise ValueError(f'identity_similarity: {ea.shape[0]} images in a but '
                       f'{eb.shape[0]} in b')
    return np.sum(ea * eb, axis=-1)


@functools.lru_cache(maxsize=None)
def _classifier_input_fn(resize_mode):
  return jax.jit(functools.partial(branched_tiny.classifier_input,
                                   resize_mode=resize_mode))


class AttributeScorer:
  """BranchedTiny attribute probabilities sigmoid(logits), 40 attributes.

  Images [N, H, W, 3] in [-1, 1] go through the unofficial code's input
  path: [0, 1], PyTorch-nearest resize to 224 (or 'area'), CelebA
  normalisation.
  """

  def __init__(self, model, variables, batch_size: int = 8, mesh=None,
               resize_mode: str = 'nearest'):
    if resize_mode not in ('nearest', 'area'):
      raise ValueError(f"resize_mode={resize_mode!r}: expected 'nearest' or "
                       "'area'")
    self.mesh, self.batch_size = _mesh_and_batch(mesh, batch_size)
    self.model = model
    self.variables = parallel.replicate_local(variables, self.mesh)
    net, prep = _apply_fn(model), _classifier_input_fn(resize_mode)
    self._fn = lambda variables, x: net(variables, prep(variables, x))

  def logits(self, images) -> np.ndarray:
    """The 40 logits [N, 40], in `branched_tiny.ATTRIBUTES` order."""
    x = check_images(images, 'images')
    return parallel.map_batches(self._fn, x, batch_size=self.batch_size,
                                args=(self.variables,), mesh=self.mesh)

  def attribute_scores(self, images, names: Sequence[str] | None = None
                       ) -> np.ndarray:
    """Probabilities [N, len(names)] (all 40, classifier order, if None).

    Names are matched case-insensitively ('Smiling', '31_Smiling').
    """
    idx = (list(range(len(branched_tiny.ATTRIBUTES))) if names is None else
           [branched_tiny.attribute_index(n) for n in names])
    logits = self.logits(images)[:, idx]
    return 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))


class PhotoEditor:
  """Photo -> W+ -> edit -> images, with identity and attribute metrics.

  Attributes:
    editor: `LatentEditor` (mapper edit + rendering).
    inverter: `Inverter` (ReStyle-e4e).
    identity: `IdentityScorer` or None.
    attributes: `AttributeScorer` or None.
  """

  def __init__(self, editor: LatentEditor, inverter: Inverter,
               identity: IdentityScorer | None = None,
               attributes: AttributeScorer | None = None):
    g, e = editor.generator, inverter.generator
    if (g.size, g.n_latent) != (e.size, e.n_latent):
      raise ValueError(f'the editor renders with a {g.size} px generator but '
                       f'the encoder was paired with a {e.size} px one')
    self.editor, self.inverter = editor, inverter
    self.identity, self.attributes = identity, attributes

  def invert(self, images, n_iters: int = 5, **kwargs):
    return self.inverter.invert(images, n_iters, **kwargs)

  def identity_similarity(self, a, b) -> np.ndarray:
    if self.identity is None:
      raise ValueError('no ArcFace network loaded (pass arcface_dir)')
    return self.identity.identity_similarity(a, b)

  def attribute_scores(self, images, names=None) -> np.ndarray:
    if self.attributes is None:
      raise ValueError('no attribute classifier loaded (pass classifier_dir)')
    return self.attributes.attribute_scores(images, names)

  def edit_latents(self, w, **kwargs) -> np.ndarray:
    return self.editor.edit_latents(w, **kwargs)

  def render(self, w) -> np.ndarray:
    return self.editor.render(w)


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


def load_photo_editor(encoder_dir: str, mapper_dir: str,
                      arcface_dir: str | None = None,
                      classifier_dir: str | None = None,
                      generator_dir: str | None = None, batch_size: int = 4,
                      noise_mode: str = 'const', seed: int = 0, mesh=None
                      ) -> tuple[PhotoEditor, dict[str, Any]]:
  """A PhotoEditor from converted checkpoint folders.

  Args:
    encoder_dir: `scripts/convert_latent.py encoder` output.
    mapper_dir: converted mapper.
    arcface_dir, classifier_dir: optional converted ArcFace / BranchedTiny.
    generator_dir: the generator; default `<encoder_dir>/generator`.
    batch_size, noise_mode, seed, mesh: as `LatentEditor`.

  Returns:
    (PhotoEditor, {name: meta}).
  """
  from l2m_jax.convert import arcface as carc  # pylint: disable=g-import-not-at-top
  from l2m_jax.convert import branched_tiny as cbt  # pylint: disable=g-import-not-at-top
  from l2m_jax.convert import mapper as cm  # pylint: disable=g-import-not-at-top
  from l2m_jax.convert import restyle as crs  # pylint: disable=g-import-not-at-top
  mesh, batch_size = _mesh_and_batch(mesh, batch_size)
  encoder, enc_vars, generator, g_vars, e_meta = crs.load_restyle(
      encoder_dir, generator_dir)
  mapper, m_vars, m_meta = cm.load_mapper(mapper_dir)
  editor = LatentEditor(generator, g_vars, mapper, m_vars,
                        batch_size=batch_size, noise_mode=noise_mode,
                        seed=seed, mesh=mesh)
  inverter = Inverter(encoder, enc_vars, generator, g_vars,
                      batch_size=batch_size, mesh=mesh)
  metas = dict(encoder=e_meta, mapper=m_meta)
  identity = attributes = None
  if arcface_dir is not None:
    model, variables, metas['arcface'] = carc.load_arcface(arcface_dir)
    identity = IdentityScorer(model, variables, batch_size=batch_size,
                              mesh=mesh)
  if classifier_dir is not None:
    model, variables, metas['classifier'] = cbt.load_classifier(
        classifier_dir)
    attributes = AttributeScorer(model, variables, batch_size=batch_size,
                                 mesh=mesh)
  return PhotoEditor(editor, inverter, identity, attributes), metas
