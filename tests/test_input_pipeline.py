"""input_pipeline.py on small generated folder datasets."""

import zlib

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from configs import tiny
from l2m_jax import image_io
from l2m_jax import input_pipeline


def make_folder(root, counts=(('a', 2), ('b', 6)), val=1, size=(40, 36),
                seed=0):
  """train/<domain>/*.png (+ val/) with random RGB images; returns root."""
  rng = np.random.default_rng(seed)
  for split, per in (('train', None), ('val', val)):
    for name, n in counts:
      d = root / split / name
      d.mkdir(parents=True, exist_ok=True)
      for i in range(per or n):
        arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        ext = 'png' if i % 2 == 0 else 'jpg'
        Image.fromarray(arr).save(d / f'{i:03d}.{ext}')
  return root


def _config(root, **kw):
  c = tiny.get_config()
  c.data_dir = str(root)
  c.update(kw)
  return c


def _take(config, n, start=0, **kw):
  it = input_pipeline.train_iterator(config, start, **kw)
  return [next(it) for _ in range(n)]


def test_batches_shapes_ranges_and_labels(tmp_path):
  config = _config(make_folder(tmp_path))
  (b,) = _take(config, 1)
  assert b['x_src'].shape == (4, 32, 32, 3) and b['x_src'].dtype == np.float32
  assert b['x_src'].min() >= -1 and b['x_src'].max() <= 1
  assert set(b['y_src']) <= {0, 1} and set(b['y_trg']) <= {0, 1}
  assert input_pipeline.domains(config.data_dir) == ['a', 'b']


def test_stream_is_a_function_of_the_step(tmp_path):
  """Resuming at step k yields what an uninterrupted stream yields at k."""
  config = _config(make_folder(tmp_path))
  full = _take(config, 4)
  resumed = _take(config, 2, start=2)
  for want, got in zip(full[2:], resumed):
    for k in want:
      np.testing.assert_array_equal(want[k], got[k])
  assert not np.array_equal(full[0]['x_src'], full[1]['x_src'])


def test_sampling_is_class_balanced(tmp_path):
  """WeightedRandomSampler(1/|class|): 2 vs 6 images, each class ~50 %."""
  config = _config(make_folder(tmp_path), batch_size=16, randcrop_prob=0.0)
  batches = _take(config, 8)
  y_src = np.concatenate([b['y_src'] for b in batches])
  y_trg = np.concatenate([b['y_trg'] for b in batches])
  # 128 draws; 5 sigma of a fair coin is +-0.22.
  assert abs(y_src.mean() - 0.5) < 0.22 and abs(y_trg.mean() - 0.5) < 0.22
  assert np.mean(y_src == y_trg) < 0.9  # independent reference draw


def test_no_crop_no_flip_matches_pil_resize(tmp_path):
  """randcrop_prob=0, flip_prob=0 is Resize + normalise (PIL reference)."""
  root = make_folder(tmp_path, counts=(('a', 1), ('b', 1)), size=(64, 64))
  config = _config(root, randcrop_prob=0.0, flip_prob=0.0)
  (b,) = _take(config, 1)
  refs = {}
  for y, name in enumerate(('a', 'b')):
    img = Image.open(root / 'train' / name / '000.png').convert('RGB')
    img = img.resize((32, 32), Image.BILINEAR)
    refs[y] = np.asarray(img, np.float32) / 127.5 - 1
  for x, y in zip(b['x_src'], b['y_src']):
    # PIL and TF antialiased bilinear differ slightly on random noise.
    assert np.abs(x - refs[int(y)]).mean() < 0.03
  config.flip_prob = 1.0
  (bf,) = _take(config, 1)
  np.testing.assert_allclose(bf['x_src'], b['x_src'][:, :, ::-1], atol=1e-6)


def test_random_resized_crop_box_follows_torchvision_constraints():
  scale, ratio = (0.8, 1.0), (0.9, 1.1)
  areas, ratios = [], []
  for i in range(200):
    top, left, h, w = [int(v) for v in input_pipeline._random_resized_crop_box(
        tf.constant([i, 7], tf.int64), 50, 40, scale, ratio)]
    assert 0 <= top <= 50 - h and 0 <= left <= 40 - w and h > 0 and w > 0
    areas.append(h * w / 2000)
    ratios.append(w / h)
  # Rounding to whole pixels widens the ranges by about one pixel.
  assert min(areas) > 0.8 - 0.05 and max(areas) <= 1.0
  assert min(ratios) > 0.9 - 0.05 and max(ratios) < 1.1 + 0.05
  assert np.std(areas) > 0.02  # really random


def test_processes_draw_different_halves(tmp_path):
  config = _config(make_folder(tmp_path))
  (p0,) = _take(config, 1, process_index=0, process_count=2)
  (p1,) = _take(config, 1, process_index=1, process_count=2)
  assert p0['x_src'].shape[0] == 2 == p1['x_src'].shape[0]
  assert not np.array_equal(p0['x_src'], p1['x_src'])


def test_corrupt_files_are_all_reported_before_training(tmp_path):
  root = make_folder(tmp_path)
  bad1 = root / 'train' / 'a' / 'broken.png'
  bad2 = root / 'val' / 'b' / 'truncated.jpg'
  bad1.write_bytes(b'not an image')
  good = (root / 'train' / 'b' / '001.jpg').read_bytes()
  bad2.write_bytes(good[:len(good) // 3])
  with pytest.raises(input_pipeline.DatasetError) as e:
    input_pipeline.check_files(root)
  assert str(bad1) in str(e.value) and str(bad2) in str(e.value)
  assert '2 unreadable' in str(e.value)


def test_missing_folder_and_wrong_domain_count_are_clear(tmp_path):
  with pytest.raises(input_pipeline.DatasetError, match='not a directory'):
    input_pipeline.domains(tmp_path / 'nope')
  config = _config(make_folder(tmp_path), num_domains=3)
  with pytest.raises(input_pipeline.DatasetError, match='num_domains=3'):
    _take(config, 1)


def test_reading_a_folder_leaves_no_temporary_directory(tmp_path,
                                                        monkeypatch):
  """tfds.ImageFolder alone leaves an empty tmp*tfds dir per construction."""
  import tempfile  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  root = make_folder(tmp_path / 'data')
  tmp = tmp_path / 'tmp'
  tmp.mkdir()
  monkeypatch.setattr(tempfile, 'tempdir', str(tmp))
  tfds.ImageFolder(str(root))  # the reference: the library's own builder
  leaked = sorted(p.name for p in tmp.iterdir())
  assert leaked and all(n.endswith('tfds') for n in leaked), leaked
  for p in tmp.iterdir():
    p.rmdir()
  config = _config(root)
  _take(config, 1)
  list(input_pipeline.eval_dataset(config, batch_size=4).as_numpy_iterator())
  assert input_pipeline.domains(root) == ['a', 'b']
  assert input_pipeline.check_files(root, ('train', 'val')) == 10
  # (tf.data's autograph writes its own files there; only tfds's count)
  assert not [p.name for p in tmp.iterdir() if p.name.endswith('tfds')]


def test_pipelines_run_without_autotune_and_yield_the_autotuned_data(
    tmp_path):
  """No autotune model thread (deleting an iterator waited on it for up to
  ~50 s at the end of a training run); the data are what tf.data's
  autotuned pipeline yields."""
  config = _config(make_folder(tmp_path, val=3))
  autotuned = tf.data.Options()
  autotuned.autotune.enabled = True
  pipelines = (input_pipeline.train_dataset(config, 3),
               input_pipeline.eval_dataset(config, batch_size=4))
  for ds in pipelines:
    assert ds.options().autotune.enabled is False
    ref = ds.with_options(autotuned)
    assert ref.options().autotune.enabled is True
    got = list(ds.take(3).as_numpy_iterator())
    want = list(ref.take(3).as_numpy_iterator())
    assert len(got) == len(want) > 0
    for g, w in zip(got, want):
      assert g.keys() == w.keys()
      for k in g:
        np.testing.assert_array_equal(g[k], w[k])


def test_eval_dataset_and_fixed_sources(tmp_path):
  config = _config(make_folder(tmp_path, val=3))
  batches = list(input_pipeline.eval_dataset(config, batch_size=4).as_numpy_iterator())
  assert sum(len(b['label']) for b in batches) == 6
  assert batches[0]['image'].shape[1:] == (32, 32, 3)
  x, y = input_pipeline.fixed_sources(config, 3)
  assert x.shape == (3, 32, 32, 3) and list(y) == [0, 1, 0]


def _mode_file(folder, mode):
  """An image file in an odd mode; returns (path, expected uint8 RGB or None).

  The expectation is written from the file's samples (16-bit: the high byte),
  or None where PIL's own convert('RGB') is the reference.
  """
  rng = np.random.default_rng(zlib.crc32(mode.encode()))
  h, w = 7, 9
  if mode.endswith(';16'):
    channels = {'I;16': 1, 'LA;16': 2, 'RGB;16': 3, 'RGBA;16': 4}[mode]
    src = rng.integers(0, 65536, (h, w, channels), dtype=np.uint16)
    path = folder / f'{mode.replace(";", "_")}.png'
    tf.io.write_file(str(path), tf.io.encode_png(tf.constant(src)))
    high = (src >> 8).astype(np.uint8)
    rgb = high[..., :1].repeat(3, -1) if channels <= 2 else high[..., :3]
    return path, rgb
  rgb8 = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
  img = Image.fromarray(rgb8)
  ext, kwargs = 'png', {}
  if mode == 'P+tRNS':
    img, kwargs = img.convert('P', palette=Image.ADAPTIVE, colors=7), {
        'transparency': 2}
  elif mode == 'P':
    img = img.convert('P', palette=Image.ADAPTIVE, colors=7)
  elif mode in ('L', 'LA', 'RGBA', '1'):
    img = img.convert(mode)
  elif mode.startswith('JPEG '):
    ext, img = 'jpg', img.convert(mode.split()[1])
  path = folder / f'{mode.replace(" ", "_").replace("+", "_")}.{ext}'
  img.save(path, **kwargs)
  return path, None


@pytest.mark.parametrize('mode', [
    'I;16', 'LA;16', 'RGB;16', 'RGBA;16', '1', 'L', 'LA', 'P', 'P+tRNS',
    'RGB', 'RGBA', 'JPEG L', 'JPEG RGB', 'JPEG CMYK'])
def test_one_decoder_rule_for_pil_and_tf_data(tmp_path, mode):
  """image_io (PIL: edit, FID, sample grids) and the tf.data training path
  give the same pixels for every mode; 16-bit keeps the high byte."""
  path, expected = _mode_file(tmp_path, mode)
  pil = np.asarray(image_io.open_rgb(path))
  tfd = input_pipeline.decode(tf.io.read_file(str(path))).numpy()
  assert pil.dtype == tfd.dtype == np.uint8 and pil.shape == (7, 9, 3)
  np.testing.assert_array_equal(pil, tfd)
  if expected is None:  # 8-bit modes: PIL's convert('RGB'), as officially
    with Image.open(path) as im:
      expected = np.asarray(im.convert('RGB'))
  np.testing.assert_array_equal(pil, expected)
  # The loaders built on them agree too.
  np.testing.assert_allclose(image_io.load_image(path),
                             pil.astype(np.float32) / 127.5 - 1, atol=1e-6)
