"""FID statistics and the Fréchet distance, in float64 numpy.

Statistics are streamed in float64 (`StreamingStats`): per image set only n,
a shifted sum and a shifted Gram matrix are kept, never the features
themselves. The distance is computed on the host in float64 numpy
(`frechet_distance`): by default tr sqrt(S1 S2) = sum_i Re sqrt(lambda_i)
with lambda = eigvals(S1 S2), which is the real part of the trace of scipy's
principal square root without its cost. A `reference` method reproduces
pytorch-fid's `calculate_frechet_distance` (scipy sqrtm, eps fallback,
imaginary-part check) for parity tests. No eps is added by default.

Stats files are `.npz` with `mu` [D] and `sigma` [D, D] (float64), the layout
pytorch-fid's `--save-stats` writes and reads. Nothing here knows about
images or networks (see `l2m_jax.evaluation.inception_features`).
"""

from __future__ import annotations

import os
import pathlib
import warnings
from typing import Any

import numpy as np

from l2m_jax import parallel


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
