"""Image files <-> arrays, with the official loaders' conventions.

Conventions (docs/method.md#l2m-numerics, StarGAN v2 `core/data_loader.py`,
`core/utils.py`):

* Reading: PIL open -> RGB (RGBA and grayscale are converted) -> optional
  resize to (size, size) with PIL bilinear (antialiased when downsampling, as
  torchvision's `Resize` on a PIL image) -> [0, 1] by /255 -> (v - 0.5) / 0.5,
  giving float32 [-1, 1] HWC.
* One decoder rule for every path (this PIL path and the tf.data training
  path, `input_pipeline.decode`, give the same uint8 pixels for every PNG
  and JPEG mode, tested per mode): 16-bit samples keep their high byte
  (v >> 8, what libpng and PIL do for 16-bit RGB/RGBA and what TF does for
  all 16-bit PNGs; PIL's own convert('RGB') would clip 16-bit grayscale to
  almost white); alpha is dropped without compositing; palette, 1-bit and
  grayscale images are expanded to RGB; JPEGs are decoded with the accurate
  integer IDCT (libjpeg's default, TF's 'INTEGER_ACCURATE').
* Writing: clamp((x + 1) / 2, 0, 1) -> uint8 = floor(255 v + 0.5) -> PNG, as
  torchvision's `save_image` does after the official `denormalize`.

Unreadable or corrupt files raise `ImageReadError` naming the file.
"""

from __future__ import annotations

import os
import pathlib
from typing import Iterable, Sequence

import numpy as np
from PIL import Image

# torchvision's ImageNet channel statistics (RGB, images in [0, 1]): the input
# normalisation of the ResNet-18 features and of the L2M-GAN FID Inception.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Extensions the official folder loaders accept (case-insensitive).
IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg')


class ImageReadError(ValueError):
  """An image file could not be read or decoded."""

  def __init__(self, path, reason: str):
    self.path = str(path)
    self.reason = reason
    super().__init__(f'{path}: cannot read image ({reason})')


def is_image_file(path: str | os.PathLike) -> bool:
  return pathlib.Path(path).suffix.lower() in IMAGE_EXTENSIONS


def list_images(folder: str | os.PathLike, recursive: bool = False
                ) -> list[pathlib.Path]:
  """Sorted image files (png/jpg/jpeg) in a folder.

  Raises:
    FileNotFoundError: the folder does not exist or is not a directory.
    ValueError: the folder holds no image file.
  """
  folder = pathlib.Path(folder)
  if not folder.exists():
    raise FileNotFoundError(f'{folder}: no such directory')
  if not folder.is_dir():
    raise NotADirectoryError(f'{folder}: expected a directory of images')
  it = folder.rglob('*') if recursive else folder.iterdir()
  files = sorted(p for p in it if p.is_file() and is_image_file(p))
  if not files:
    raise ValueError(f'{folder}: contains no image files '
                     f'({", ".join(IMAGE_EXTENSIONS)})')
  return files


def open_rgb(path: str | os.PathLike) -> Image.Image:
  """Opens and fully decodes an image as RGB, or raises ImageReadError."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise ImageReadError(path, 'no such file')
  try:
    with Image.open(path) as img:
      img.load()
      if img.mode.startswith('I'):
        # 16-bit grayscale PNG ('I;16*', or 'I' from older Pillow): keep the
        # high byte, as for every other 16-bit PNG (see the module docstring).
        high = np.asarray(img).astype(np.int64) >> 8
        img = Image.fromarray(np.clip(high, 0, 255).astype(np.uint8), 'L')
      # RGBA, LA, P and L all go through PIL's convert('RGB'), as the
      # official loader's `Image.open(...).convert('RGB')` (alpha dropped).
      return img.convert('RGB')
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
    raise ImageReadError(path, f'{type(e).__name__}: {e}') from e


def pil_to_array(img: Image.Image, size: int | None = None) -> np.ndarray:
  """PIL RGB image -> float32 [H, W, 3] in [-1, 1], optionally resized."""
  if size is not None and img.size != (size, size):
    img = img.resize((size, size), Image.BILINEAR)
  x = np.asarray(img, dtype=np.float32) / 255.0
  return (x - 0.5) / 0.5


def load_image(path: str | os.PathLike, size: int | None = None) -> np.ndarray:
  """Reads an image file as float32 [size, size, 3] in [-1, 1]."""
  return pil_to_array(open_rgb(path), size)


def load_images(paths: Sequence[str | os.PathLike], size: int) -> np.ndarray:
  """Reads several images as float32 [N, size, size, 3] in [-1, 1]."""
  return np.stack([load_image(p, size) for p in paths])


def find_unreadable(paths: Iterable[str | os.PathLike]
                    ) -> list[tuple[str, str]]:
  """Returns (path, reason) for every file that cannot be decoded."""
  bad = []
  for p in paths:
    try:
      open_rgb(p)
    except ImageReadError as e:
      bad.append((e.path, e.reason))
  return bad


def to_uint8(x: np.ndarray) -> np.ndarray:
  """[-1, 1] float images -> uint8, as the official `denormalize` + save_image."""
  x = np.clip((np.asarray(x, np.float32) + 1.0) / 2.0, 0.0, 1.0)
  return np.clip(np.floor(x * 255.0 + 0.5), 0, 255).astype(np.uint8)


def save_image(path: str | os.PathLike, x: np.ndarray) -> None:
  """Saves one [-1, 1] float image [H, W, 3] (or a uint8 image) as PNG."""
  x = np.asarray(x)
  if x.dtype != np.uint8:
    x = to_uint8(x)
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(x).save(path)


def make_grid(images: np.ndarray, padding: int = 2,
              pad_value: int = 255) -> np.ndarray:
  """Tiles images [rows, cols, H, W, 3] (float [-1, 1] or uint8) into one uint8 image."""
  images = np.asarray(images)
  if images.ndim != 5:
    raise ValueError(f'make_grid expects [rows, cols, H, W, C], got shape '
                     f'{images.shape}')
  if images.dtype != np.uint8:
    images = to_uint8(images)
  rows, cols, h, w, c = images.shape
  grid = np.full((rows * (h + padding) + padding,
                  cols * (w + padding) + padding, c), pad_value, np.uint8)
  for r in range(rows):
    for k in range(cols):
      y0 = padding + r * (h + padding)
      x0 = padding + k * (w + padding)
      grid[y0:y0 + h, x0:x0 + w] = images[r, k]
  return grid
