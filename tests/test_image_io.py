"""Tests for l2m_jax.image_io against PIL and torchvision's transforms."""

import numpy as np
import pytest
import torch
from PIL import Image

from l2m_jax import image_io
from third_party.torchvision_compat import import_torchvision


def _write(path, array, mode=None):
  Image.fromarray(array, mode=mode).save(path)
  return path


def test_load_matches_torchvision_transform_chain(tmp_path):
  # The official loader: Resize([S, S]) -> ToTensor -> Normalize(0.5, 0.5).
  tv = import_torchvision()
  t = tv.transforms
  rng = np.random.default_rng(0)
  path = _write(tmp_path / 'a.png',
                rng.integers(0, 256, (77, 61, 3), dtype=np.uint8))
  ref = t.Compose([t.Resize([32, 32]), t.ToTensor(),
                   t.Normalize(mean=[0.5] * 3, std=[0.5] * 3)])(
                       Image.open(path).convert('RGB'))
  ours = image_io.load_image(path, 32)
  np.testing.assert_allclose(ours, ref.permute(1, 2, 0).numpy(), atol=1e-6)


@pytest.mark.parametrize('mode,shape', [('RGBA', (20, 20, 4)),
                                        ('L', (20, 20))])
def test_rgba_and_grayscale_become_rgb(tmp_path, mode, shape):
  rng = np.random.default_rng(1)
  arr = rng.integers(0, 256, shape, dtype=np.uint8)
  path = _write(tmp_path / f'x_{mode}.png', arr, mode)
  ours = image_io.load_image(path)
  assert ours.shape == (20, 20, 3)
  expected = np.asarray(Image.open(path).convert('RGB'), np.float32)
  np.testing.assert_allclose(ours, expected / 127.5 - 1.0, atol=1e-6)
  if mode == 'L':
    np.testing.assert_array_equal(ours[..., 0], ours[..., 2])


def test_to_uint8_matches_save_image_quantisation():
  x = torch.linspace(-1.3, 1.3, 1001)
  # torchvision.utils.save_image after the official denormalize:
  ref = ((x + 1) / 2).clamp(0, 1).mul(255).add_(0.5).clamp_(0, 255).to(
      torch.uint8).numpy()
  np.testing.assert_array_equal(image_io.to_uint8(x.numpy()), ref)


def test_save_then_load_is_quantisation(tmp_path):
  rng = np.random.default_rng(2)
  x = rng.uniform(-1, 1, (8, 9, 3)).astype(np.float32)
  image_io.save_image(tmp_path / 'o.png', x)
  back = image_io.load_image(tmp_path / 'o.png')
  assert np.max(np.abs(back - x)) <= 1.0 / 255 + 1e-6


def test_corrupt_and_missing_files_are_named(tmp_path):
  bad = tmp_path / 'bad.jpg'
  bad.write_bytes(b'\xff\xd8\xff not really a jpeg')
  with pytest.raises(image_io.ImageReadError, match='bad.jpg'):
    image_io.load_image(bad)
  with pytest.raises(image_io.ImageReadError, match='nope.png'):
    image_io.load_image(tmp_path / 'nope.png')
  good = _write(tmp_path / 'good.png', np.zeros((4, 4, 3), np.uint8))
  found = image_io.find_unreadable([good, bad])
  assert [p for p, _ in found] == [str(bad)]


def test_truncated_png_is_reported(tmp_path):
  path = _write(tmp_path / 't.png',
                np.random.default_rng(3).integers(0, 256, (64, 64, 3),
                                                  dtype=np.uint8))
  data = path.read_bytes()
  path.write_bytes(data[:len(data) // 2])
  with pytest.raises(image_io.ImageReadError, match='t.png'):
    image_io.load_image(path)


def test_list_images_errors_and_order(tmp_path):
  with pytest.raises(FileNotFoundError, match='missing'):
    image_io.list_images(tmp_path / 'missing')
  with pytest.raises(ValueError, match='no image files'):
    image_io.list_images(tmp_path)
  for name in ['b.PNG', 'a.jpg', 'c.txt', 'd.jpeg']:
    (tmp_path / name).write_bytes(b'')
  assert [p.name for p in image_io.list_images(tmp_path)] == [
      'a.jpg', 'b.PNG', 'd.jpeg']


def test_make_grid_places_tiles():
  imgs = np.zeros((2, 3, 4, 5, 3), np.uint8)
  imgs[1, 2] = 7
  grid = image_io.make_grid(imgs, padding=1, pad_value=255)
  assert grid.shape == (2 * 5 + 1, 3 * 6 + 1, 3)
  np.testing.assert_array_equal(grid[6:10, 13:18], 7)
  assert grid[0, 0, 0] == 255
  with pytest.raises(ValueError, match='rows, cols'):
    image_io.make_grid(np.zeros((3, 4, 5, 3)))
