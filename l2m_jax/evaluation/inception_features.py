"""The Inception feature pipeline of FID: protocols, files, preprocessing.

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

`FeatureExtractor` turns the preprocessed uint8 images into float32 features,
jit-compiled and split over this process's devices (`parallel.map_batches`).
Their statistics and the distance are in `l2m_jax.evaluation.frechet`; the
statistics of folders and in-memory image sets in `l2m_jax.evaluation.fid`.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Any, Callable, Sequence

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
  """uint8 [B, H, W, 3] -> the normalised Inception input [B, 299, 299, 3]."""
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
