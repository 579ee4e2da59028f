"""Fréchet Inception Distance: preprocessing, streamed statistics, distance.

Two protocols (docs/method.md#fid-protocols; the CLI names first, their
aliases after):

* `stargan_v2` (alias `l2m_official`): what L2M-GAN's `metrics/fid.py` and
  `metrics/eval.py` compute. Files found recursively with the case-sensitive
  suffixes png/jpg/jpeg/JPG; PIL open -> RGB -> PIL bilinear resize to
  299x299 (antialiased when downsampling) -> /255 -> ImageNet mean/std; the
  torchvision ImageNet Inception (`variant='torchvision'`), called block by
  block (no `transform_input`).
* `standard` (alias `pytorch_fid`): pytorch-fid's defaults. Files in one
  folder (not recursive) with lower-case suffixes; PIL open -> RGB -> /255 ->
  bilinear resize to 299 inside the model (half-pixel centres, no antialias)
  -> 2x - 1; the FID Inception (`variant='fid'`).

Generated images never need to be written to disk: `quantize` applies the
quantisation torchvision's `save_image` applies before a PNG is written
(round half up of 255 * (x + 1) / 2), and the in-memory path then resizes with
PIL exactly as the file path does.

Statistics are streamed in float64 (`StreamingStats`): per image set only n,
a shifted sum and a shifted Gram matrix are kept, never the features
themselves. The distance is computed on the host in float64 numpy
(`frechet_distance`): by default tr sqrt(S1 S2) = sum_i Re sqrt(lambda_i)
with lambda = eigvals(S1 S2), which is the real part of the trace of scipy's
principal square root without its cost. A `reference` method reproduces
pytorch-fid's `calculate_frechet_distance` (scipy sqrtm, eps fallback,
imaginary-part check) for parity tests. No eps is added by default.

Stats files are `.npz` with `mu` [D] and `sigma` [D, D] (float64), the layout
pytorch-fid's `--save-stats` writes and reads.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import os
import pathlib
import sys
import warnings
from typing import Any, Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from l2m_jax import image_io
from l2m_jax import parallel
from l2m_jax.models import inception as inception_lib

INCEPTION_SIZE = 299


@dataclasses.dataclass(frozen=True)
class Protocol:
  """One FID protocol: file discovery, preprocessing and network variant."""
  name: str
  variant: str           # InceptionV3 variant
  recursive: bool        # file discovery descends into sub-folders
  extensions: tuple      # suffixes without dot, compared case-sensitively
  host_resize: bool      # PIL bilinear resize to 299 on the host
  batch_size: int        # the reference implementation's default batch


PROTOCOLS = {
    'stargan_v2': Protocol(
        name='stargan_v2', variant='torchvision', recursive=True,
        extensions=('png', 'jpg', 'jpeg', 'JPG'), host_resize=True,
        batch_size=32),
    'standard': Protocol(
        name='standard', variant='fid', recursive=False,
        extensions=('bmp', 'jpg', 'jpeg', 'pgm', 'png', 'ppm', 'tif', 'tiff',
                    'webp'), host_resize=False, batch_size=50),
}
ALIASES = {'l2m_official': 'stargan_v2', 'pytorch_fid': 'standard'}
PROTOCOL_CHOICES = tuple(PROTOCOLS) + tuple(ALIASES)


def get_protocol(name: str | Protocol) -> Protocol:
  """Protocol by CLI name or alias; a clear ValueError otherwise."""
  if isinstance(name, Protocol):
    return name
  key = ALIASES.get(name, name)
  if key not in PROTOCOLS:
    raise ValueError(f'protocol={name!r}: expected one of '
                     f'{", ".join(PROTOCOL_CHOICES)}')
  return PROTOCOLS[key]


# ---------------------------------------------------------------------------
# Files and host-side preprocessing.


def list_images(folder: str | os.PathLike, protocol: str | Protocol
                ) -> list[pathlib.Path]:
  """Sorted image files of a folder under a protocol's discovery rules.

  Raises:
    FileNotFoundError / NotADirectoryError: bad folder.
    ValueError: no image file found (names the folder and suffixes).
  """
  proto = get_protocol(protocol)
  folder = pathlib.Path(folder)
  if not folder.exists():
    raise FileNotFoundError(f'{folder}: no such directory')
  if not folder.is_dir():
    raise NotADirectoryError(f'{folder}: expected a directory of images or '
                             'an .npz statistics file')
  it = folder.rglob('*') if proto.recursive else folder.iterdir()
  suffixes = {'.' + e for e in proto.extensions}
  files = sorted(p for p in it if p.suffix in suffixes and p.is_file())
  if not files:
    where = 'under' if proto.recursive else 'directly in'
    raise ValueError(
        f'{folder}: no image files {where} this folder (protocol '
        f'{proto.name} looks for the suffixes '
        f'{", ".join("." + e for e in proto.extensions)})')
  return files


def quantize(images: np.ndarray) -> np.ndarray:
  """[-1, 1] float images -> uint8, exactly as saving them as PNG would."""
  images = np.asarray(images)
  if images.dtype == np.uint8:
    return images
  return image_io.to_uint8(images)


def _pil_resize(u8: np.ndarray) -> np.ndarray:
  if u8.shape[:2] == (INCEPTION_SIZE, INCEPTION_SIZE):
    return u8  # PIL bilinear at scale 1 is the identity.
  img = Image.fromarray(u8).resize((INCEPTION_SIZE, INCEPTION_SIZE),
                                   Image.BILINEAR)
  return np.asarray(img)


def host_preprocess(u8: np.ndarray, protocol: str | Protocol) -> np.ndarray:
  """uint8 [H, W, 3] -> the uint8 array the device step receives."""
  u8 = np.asarray(u8)
  if u8.dtype != np.uint8 or u8.ndim != 3 or u8.shape[-1] != 3:
    raise ValueError(f'expected a uint8 [H, W, 3] image, got dtype '
                     f'{u8.dtype} shape {u8.shape}')
  return _pil_resize(u8) if get_protocol(protocol).host_resize else u8


def load_image(path: str | os.PathLike, protocol: str | Protocol
               ) -> np.ndarray:
  """Reads one file as the protocol's host-side uint8 array.

  Raises:
    image_io.ImageReadError: naming the file, when it cannot be decoded.
  """
  img = image_io.open_rgb(path)  # RGBA, P, L -> RGB as PIL's convert('RGB')
  if get_protocol(protocol).host_resize:
    # torchvision Resize([299, 299]) on a PIL image = PIL bilinear.
    img = img.resize((INCEPTION_SIZE, INCEPTION_SIZE), Image.BILINEAR)
  return np.asarray(img, dtype=np.uint8)


def device_normalize(u8: jax.Array, protocol: str | Protocol) -> jax.Array:
  """uint8 batch [B, H, W, 3] -> the normalised Inception input [B, 299, 299, 3]."""
  proto = get_protocol(protocol)
  x = jnp.asarray(u8).astype(jnp.float32) / 255.0  # ToTensor
  if proto.name == 'stargan_v2':
    mean = jnp.asarray(image_io.IMAGENET_MEAN, jnp.float32)
    std = jnp.asarray(image_io.IMAGENET_STD, jnp.float32)
    return (x - mean) / std
  b, h, w, c = x.shape
  if (h, w) != (INCEPTION_SIZE, INCEPTION_SIZE):
    # F.interpolate(bilinear, align_corners=False): half-pixel centres and no
    # antialiasing, also when downsampling.
    x = jax.image.resize(x, (b, INCEPTION_SIZE, INCEPTION_SIZE, c), 'linear',
                         antialias=False)
  return 2.0 * x - 1.0


# ---------------------------------------------------------------------------
# Feature extraction, jit-compiled and sharded over this process's devices.

FeaturesFn = Callable[[Any, jax.Array], jax.Array]


class FeatureExtractor:
  """uint8 images -> float32 features, batched, jitted, data-parallel.

  Runs on this process's devices only (`parallel.map_batches` on a
  process-local mesh): in a multi-process run each process extracts the
  features of its own share of the images, with no collective.

  Attributes:
    protocol: the `Protocol`.
    weights_id: identifies the weights (SHA-256 of the source file) for
      caching; any string.
    batch_size: images per call on this process (rounded up to a multiple
      of its device count). Every call is padded to it, so one shape is
      compiled per image size; padded rows are dropped from the result.
    mesh: the process-local ('data',) mesh.
  """

  def __init__(self, protocol: str | Protocol, variables: Any = None, *,
               weights_id: str = '', batch_size: int | None = None,
               mesh: jax.sharding.Mesh | None = None,
               features_fn: FeaturesFn | None = None,
               precision: Any = jax.lax.Precision.HIGHEST):
    """Builds the extractor.

    Args:
      protocol: 'stargan_v2' | 'standard' (or their aliases).
      variables: Inception {params, batch_stats}; unused with `features_fn`.
      weights_id: string identifying the weights (cache key).
      batch_size: images per call; the protocol's default when None.
      mesh: a process-local mesh; `parallel.local_mesh()` when None.
      features_fn: optional `(variables, normalised [B,299,299,3]) -> [B, D]`
        replacing the Inception network (tests and custom feature spaces).
      precision: convolution precision of the Inception network.
    """
    self.protocol = get_protocol(protocol)
    self.weights_id = weights_id
    self.mesh = mesh if mesh is not None else parallel.local_mesh()
    bs = batch_size or self.protocol.batch_size
    if bs <= 0:
      raise ValueError(f'batch_size={bs}: must be positive')
    self.batch_size = parallel.round_up_batch(bs, self.mesh)
    if features_fn is None:
      if variables is None:
        raise ValueError('FeatureExtractor needs Inception variables (or a '
                         'features_fn)')
      model = inception_lib.InceptionV3(variant=self.protocol.variant,
                                        precision=precision)
      features_fn = model.apply
    self._variables = parallel.replicate_local(variables, self.mesh)
    proto = self.protocol

    def step(v, u8):
      return features_fn(v, device_normalize(u8, proto)).astype(jnp.float32)
    self._step = jax.jit(step)
    self._dim = None

  @property
  def dim(self) -> int:
    """Feature dimension D (from the shapes alone; nothing is computed)."""
    if self._dim is None:
      size = INCEPTION_SIZE
      out = jax.eval_shape(self._step, self._variables, jax.ShapeDtypeStruct(
          (1, size, size, 3), jnp.uint8))
      self._dim = int(out.shape[-1])
    return self._dim

  def _run(self, u8: np.ndarray) -> np.ndarray:
    return parallel.map_batches(self._step, u8, batch_size=self.batch_size,
                                args=(self._variables,), mesh=self.mesh)

  def __call__(self, images: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
    """Host-preprocessed uint8 images (see `host_preprocess`) -> [N, D].

    Images of different sizes (standard protocol) are grouped by size.
    """
    if isinstance(images, np.ndarray) and images.ndim == 4:
      groups = {images.shape[1:]: (list(range(len(images))), images)}
    else:
      by_shape: dict[tuple, list[int]] = {}
      for i, im in enumerate(images):
        by_shape.setdefault(np.shape(im), []).append(i)
      groups = {s: (idx, np.stack([images[i] for i in idx]))
                for s, idx in by_shape.items()}
    result = None
    for idx, arr in groups.values():
      if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f'expected uint8 images [N, H, W, 3], got dtype '
                         f'{arr.dtype} shape {arr.shape}')
      feats = self._run(arr)
      if result is None:
        result = np.empty((sum(len(g[0]) for g in groups.values()),
                           feats.shape[1]), np.float32)
      result[idx] = feats
    if result is None:
      raise ValueError('no images given')
    return result


def make_extractor(protocol: str | Protocol, weights: str | os.PathLike | None,
                   *, batch_size: int | None = None,
                   mesh: jax.sharding.Mesh | None = None
                   ) -> FeatureExtractor:
  """A FeatureExtractor from a weights file (.pth) or converted folder."""
  from l2m_jax.convert import inception as convert_inception  # pylint: disable=g-import-not-at-top
  proto = get_protocol(protocol)
  variables, meta = convert_inception.load_weights(weights)
  kind = (meta.get('config') or {}).get('kind')
  if kind and kind != proto.variant:
    warnings.warn(
        f'{weights}: these are {kind!r} Inception weights, but protocol '
        f'{proto.name} uses the {proto.variant!r} network; the FID will not '
        'be comparable with published numbers', stacklevel=2)
  sha = (meta.get('source') or {}).get('sha256', '')
  return FeatureExtractor(proto, variables, weights_id=sha,
                          batch_size=batch_size, mesh=mesh)


# ---------------------------------------------------------------------------
# Streaming statistics.


class SingularCovarianceWarning(UserWarning):
  """Fewer images than feature dimensions: the FID is biased."""


class StreamingStats:
  """Mean and covariance (ddof 1) of feature rows, accumulated in float64.

  Keeps n, s' = sum(x - c) and Q' = sum (x - c)(x - c)^T with a fixed shift c
  (the mean of the first batch), so memory is O(D^2) whatever N is, and the
  result does not depend on batch sizes or order beyond round-off
  (docs/method.md#fid-streaming).

  Attributes:
    name: what the rows are (a folder, a task), for messages.
  """

  def __init__(self, name: str = 'features'):
    self.name = str(name)
    self.n = 0
    self.shift = None
    self.sum = None
    self.gram = None

  @property
  def dim(self) -> int | None:
    return None if self.shift is None else self.shift.shape[0]

  def update(self, features: np.ndarray) -> None:
    """Adds rows [B, D] (pass only valid rows: drop padding first)."""
    x = np.asarray(features, np.float64)
    if x.ndim != 2:
      raise ValueError(f'features must be [B, D], got shape {x.shape}')
    if x.shape[0] == 0:
      return
    if self.shift is None:
      self.shift = x.mean(axis=0)
      self.sum = np.zeros_like(self.shift)
      self.gram = np.zeros((x.shape[1], x.shape[1]), np.float64)
    elif x.shape[1] != self.dim:
      raise ValueError(f'feature dimension {x.shape[1]} does not match the '
                       f'earlier batches ({self.dim})')
    d = x - self.shift
    self.n += x.shape[0]
    self.sum += d.sum(axis=0)
    self.gram += d.T @ d

  def merge(self, other: 'StreamingStats') -> None:
    """Adds another accumulator's rows (e.g. from another host or shard)."""
    if other.n == 0:
      return
    if self.n == 0:
      self.n, self.shift = other.n, other.shift.copy()
      self.sum, self.gram = other.sum.copy(), other.gram.copy()
      return
    if other.dim != self.dim:
      raise ValueError(f'cannot merge statistics of dimension {other.dim} '
                       f'into {self.dim}')
    # Re-express the other accumulator around this shift.
    delta = other.shift - self.shift
    self.gram += (other.gram + np.outer(other.sum, delta)
                  + np.outer(delta, other.sum) + other.n * np.outer(delta,
                                                                    delta))
    self.sum += other.sum + other.n * delta
    self.n += other.n

  def combine_processes(self, dim: int) -> 'StreamingStats':
    """The statistics of every process's rows (a collective).

    In a multi-process run each process accumulates its own share of the
    images; this gathers every process's (n, shift, sum, Gram) bit-exactly
    in float64 (`parallel.gather_stats`) and merges them in process order,
    so every process returns the same statistics. One process: self.

    Args:
      dim: the feature dimension D (a process with no rows still has to
        send arrays of the right shape).
    """
    if parallel.process_count() == 1:
      return self
    if self.n == 0:
      shift, total, gram = (np.zeros(dim), np.zeros(dim),
                            np.zeros((dim, dim)))
    else:
      if self.dim != dim:
        raise ValueError(f'{self.name}: feature dimension {self.dim}, '
                         f'expected {dim}')
      shift, total, gram = self.shift, self.sum, self.gram
    parts = parallel.gather_stats([np.asarray([self.n], np.int64), shift,
                                   total, gram])
    out = StreamingStats(self.name)
    for (n, c, t, g) in parts:
      other = StreamingStats(self.name)
      other.n, other.shift, other.sum, other.gram = int(n[0]), c, t, g
      out.merge(other)
    return out

  def mean(self) -> np.ndarray:
    if self.n == 0:
      raise ValueError(f'{self.name}: no images, so no statistics')
    return self.shift + self.sum / self.n

  def cov(self) -> np.ndarray:
    """The covariance; warns when it is singular (n <= D)."""
    if self.n < 2:
      raise ValueError(f'{self.name}: the covariance needs at least 2 '
                       f'images, got {self.n}')
    if self.n <= self.dim:
      warnings.warn(
          f'{self.name}: {self.n} images for {self.dim} feature dimensions: '
          'the covariance is singular (rank <= n - 1 < D) and the FID is '
          'biased; use more images than dimensions for a comparable value',
          SingularCovarianceWarning, stacklevel=2)
    c = (self.gram - np.outer(self.sum, self.sum) / self.n) / (self.n - 1)
    return (c + c.T) / 2

  def result(self) -> tuple[np.ndarray, np.ndarray]:
    return self.mean(), self.cov()


# ---------------------------------------------------------------------------
# Fréchet distance.


# Tolerances of `check_statistics`: symmetry relative to the largest |sigma|
# entry, positive semi-definiteness relative to the trace (the smallest
# eigenvalue must be >= -PSD_RTOL * trace). Covariances from data are
# symmetric and PSD up to float64 round-off, far below these.
SYMMETRY_RTOL = 1e-6
PSD_RTOL = 1e-6


def check_statistics(mu: Any, sigma: Any, name: str = 'statistics'
                     ) -> tuple[np.ndarray, np.ndarray]:
  """float64 (mu [D], sigma [D, D]) or a ValueError naming `name`.

  sigma must be a covariance: finite, symmetric (max |S - S^T| <=
  SYMMETRY_RTOL * max |S|) and positive semi-definite (no eigenvalue below
  -PSD_RTOL * trace S; tested with a Cholesky factorisation of
  S + PSD_RTOL * trace(S) * I, several times cheaper than eigenvalues). A
  sigma that is not gives a meaningless FID (a negative one for identical
  statistics), so it is refused.
  """
  mu = np.asarray(mu, np.float64)
  sigma = np.asarray(sigma, np.float64)
  if mu.ndim != 1:
    raise ValueError(f'{name}: mu must be a vector [D], got shape {mu.shape}')
  d = mu.shape[0]
  if sigma.shape != (d, d):
    raise ValueError(f'{name}: sigma must be [{d}, {d}] to match mu [{d}], '
                     f'got shape {sigma.shape}')
  if not (np.all(np.isfinite(mu)) and np.all(np.isfinite(sigma))):
    raise ValueError(f'{name}: mu/sigma contain NaN or inf')
  if d == 0:
    return mu, sigma
  scale = float(np.max(np.abs(sigma)))
  asym = float(np.max(np.abs(sigma - sigma.T)))
  if asym > SYMMETRY_RTOL * scale:
    raise ValueError(f'{name}: sigma is not symmetric (max |S - S^T| = '
                     f'{asym:.3g}, max |S| = {scale:.3g}); expected a '
                     'covariance matrix')
  sym = (sigma + sigma.T) / 2
  trace = float(np.trace(sym))
  psd = trace >= 0 and float(np.min(np.diag(sym))) >= -PSD_RTOL * trace
  if psd:
    try:
      np.linalg.cholesky(sym + (PSD_RTOL * trace + 1e-300) * np.eye(d))
    except np.linalg.LinAlgError:
      psd = False
  if not psd:
    eig = np.linalg.eigvalsh(sym)
    raise ValueError(f'{name}: sigma is not positive semi-definite '
                     f'(smallest eigenvalue {eig[0]:.3g}, largest '
                     f'{eig[-1]:.3g}, trace {trace:.3g}); expected a '
                     'covariance matrix')
  return mu, sigma


def _trace_sqrt_eigvals(s1, s2):
  lam = np.linalg.eigvals(s1 @ s2).astype(np.complex128)
  return float(np.sum(np.sqrt(lam).real))


def _trace_sqrt_eigh(s1, s2):
  w, v = np.linalg.eigh((s1 + s1.T) / 2)
  root = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
  m = root @ s2 @ root
  m = (m + m.T) / 2
  return float(np.sum(np.sqrt(np.clip(np.linalg.eigvalsh(m), 0, None))))


def _fid_reference(mu1, s1, mu2, s2, eps=1e-6):
  """pytorch-fid's calculate_frechet_distance, scipy sqrtm route."""
  from scipy import linalg  # pylint: disable=g-import-not-at-top
  diff = mu1 - mu2
  covmean = linalg.sqrtm(s1.dot(s2))
  if isinstance(covmean, tuple):  # scipy versions returning (sqrtm, err)
    covmean = covmean[0]
  if not np.isfinite(covmean).all():
    offset = np.eye(s1.shape[0]) * eps
    covmean = linalg.sqrtm((s1 + offset).dot(s2 + offset))
    if isinstance(covmean, tuple):
      covmean = covmean[0]
  if np.iscomplexobj(covmean):
    if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
      m = np.max(np.abs(covmean.imag))
      raise ValueError(f'Imaginary component {m}')
    covmean = covmean.real
  return float(diff.dot(diff) + np.trace(s1) + np.trace(s2)
               - 2 * np.trace(covmean))


METHODS = ('eigvals', 'eigh', 'reference')


def frechet_distance(mu1, sigma1, mu2, sigma2, method: str = 'eigvals'
                     ) -> float:
  """FID = |mu1 - mu2|^2 + tr S1 + tr S2 - 2 tr (S1 S2)^(1/2), float64.

  Args:
    mu1, sigma1, mu2, sigma2: statistics of the two sets.
    method: 'eigvals' (default; sum of Re sqrt of the eigenvalues of S1 S2),
      'eigh' (symmetric eigensolvers only: S1^(1/2) S2 S1^(1/2)), or
      'reference' (scipy sqrtm with pytorch-fid's fallback and checks).

  Raises:
    ValueError: bad shapes, mismatched dimensions, non-finite values.
  """
  mu1, sigma1 = check_statistics(mu1, sigma1, 'first statistics')
  mu2, sigma2 = check_statistics(mu2, sigma2, 'second statistics')
  if mu1.shape != mu2.shape:
    raise ValueError(f'feature dimensions differ: {mu1.shape[0]} vs '
                     f'{mu2.shape[0]} (statistics from different networks '
                     'or layers cannot be compared)')
  if method == 'reference':
    return _fid_reference(mu1, sigma1, mu2, sigma2)
  if method == 'eigvals':
    tr_sqrt = _trace_sqrt_eigvals(sigma1, sigma2)
  elif method == 'eigh':
    tr_sqrt = _trace_sqrt_eigh(sigma1, sigma2)
  else:
    raise ValueError(f'method={method!r}: expected one of {METHODS}')
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2)
               - 2.0 * tr_sqrt)


# ---------------------------------------------------------------------------
# Stats files.


def save_stats(path: str | os.PathLike, mu: np.ndarray, sigma: np.ndarray
               ) -> pathlib.Path:
  """Writes {mu, sigma} as pytorch-fid does (np.savez_compressed)."""
  mu, sigma = check_statistics(mu, sigma, str(path))
  path = pathlib.Path(path)
  if path.suffix != '.npz':
    raise ValueError(f'{path}: statistics files must end in .npz')
  path.parent.mkdir(parents=True, exist_ok=True)
  np.savez_compressed(path, mu=mu, sigma=sigma)
  return path


def load_stats(path: str | os.PathLike, dim: int | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
  """Reads an .npz stats file (pytorch-fid / TTUR layout: mu, sigma).

  Raises:
    FileNotFoundError: missing file.
    ValueError: not an npz archive, missing keys, wrong shapes, or a feature
      dimension other than `dim`.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f'{path}: no such statistics file')
  try:
    archive = np.load(path, allow_pickle=False)
  except (OSError, EOFError, ValueError) as e:
    raise ValueError(f'{path}: not a readable .npz statistics file '
                     f'({type(e).__name__}: {e})') from e
  if not isinstance(archive, np.lib.npyio.NpzFile):
    raise ValueError(f'{path}: expected an .npz archive with mu and sigma, '
                     'found a single .npy array')
  with archive as f:
    keys = set(f.files)
    missing = [k for k in ('mu', 'sigma') if k not in keys]
    if missing:
      raise ValueError(
          f'{path}: statistics file is missing key(s) '
          f'{", ".join(missing)} (found: {", ".join(sorted(keys)) or "none"});'
          ' expected mu [D] and sigma [D, D] as written by --save-stats')
    try:
      mu, sigma = f['mu'][:], f['sigma'][:]
    except (OSError, EOFError, ValueError) as e:
      raise ValueError(f'{path}: cannot read mu/sigma ({e})') from e
  mu, sigma = check_statistics(mu, sigma, str(path))
  if dim is not None and mu.shape[0] != dim:
    raise ValueError(f'{path}: statistics have dimension {mu.shape[0]}, '
                     f'expected {dim}')
  return mu, sigma


# ---------------------------------------------------------------------------
# Statistics of folders and in-memory images.


def _progress(total: int, desc: str, enabled: bool):
  try:
    from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  except ImportError:  # pragma: no cover
    return None
  return tqdm(total=total, desc=desc, unit='img', disable=not enabled,
              file=sys.stderr, dynamic_ncols=True)


def folder_statistics(folder: str | os.PathLike, extractor: FeatureExtractor,
                      *, progress: bool = True, num_workers: int = 4,
                      desc: str | None = None) -> StreamingStats:
  """Streams every image of a folder through the extractor.

  Multi-process: each process reads and extracts its own share of the files
  (`parallel.process_slice`) and the statistics are combined across
  processes (a collective: every process must call this).

  Raises:
    ValueError / FileNotFoundError: empty or missing folder.
    image_io.ImageReadError: an unreadable image (the file is named).
  """
  files = list_images(folder, extractor.protocol)
  share = files[parallel.process_slice(len(files))]
  stats = StreamingStats(str(folder))
  bar = _progress(len(share), desc or str(folder),
                  progress and parallel.is_main_process())
  bs = extractor.batch_size
  load = lambda p: load_image(p, extractor.protocol)  # pylint: disable=unnecessary-lambda-assignment
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
                      extractor: FeatureExtractor,
                      stats: StreamingStats | None = None) -> StreamingStats:
  """In-memory path: batches of [-1, 1] float (or uint8) images [B, H, W, 3].

  Float images are quantised as a PNG save would (`quantize`) and then
  preprocessed exactly as the file path would preprocess the PNGs.
  """
  stats = stats if stats is not None else StreamingStats('images')
  for batch in batches:
    u8 = quantize(np.asarray(batch))
    if u8.ndim != 4:
      raise ValueError(f'expected image batches [B, H, W, 3], got shape '
                       f'{u8.shape}')
    stats.update(extractor([host_preprocess(im, extractor.protocol)
                            for im in u8]))
  return stats


def _folder_fingerprint(files: Sequence[pathlib.Path]) -> str:
  digest = hashlib.sha256()
  for p in files:
    st = p.stat()
    digest.update(f'{p}\0{st.st_size}\0{st.st_mtime_ns}\n'.encode())
  return digest.hexdigest()


def cached_folder_statistics(folder: str | os.PathLike,
                             extractor: FeatureExtractor,
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
  files = list_images(folder, extractor.protocol)
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
      mu, sigma = load_stats(npz)
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
    save_stats(npz, mu, sigma)
    meta.write_text(json.dumps(dict(fields, n=stats.n), indent=1))
  parallel.sync('fid_cache')
  return mu, sigma, stats.n


def path_statistics(path: str | os.PathLike,
                    extractor: FeatureExtractor | None, *,
                    progress: bool = True
                    ) -> tuple[np.ndarray, np.ndarray, int]:
  """(mu, sigma, n) of an image folder or an .npz stats file (n = -1)."""
  path = pathlib.Path(path)
  if path.suffix == '.npz' or path.is_file():
    mu, sigma = load_stats(path)
    return mu, sigma, -1
  if extractor is None:
    raise ValueError(f'{path}: an image folder needs Inception weights')
  stats = folder_statistics(path, extractor, progress=progress)
  mu, sigma = stats.result()
  return mu, sigma, stats.n
