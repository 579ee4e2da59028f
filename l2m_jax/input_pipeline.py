"""Input pipeline: the StarGAN v2 / L2M-GAN folder layout through tfds + tf.data.

Layout (docs/method.md#l2m-data): `<data_dir>/train/<domain>/*`
and `<data_dir>/val/<domain>/*` (.jpg/.jpeg/.png), labels = sorted domain
folder names. Folders are read with `tfds.ImageFolder`, which fixes the file
list, the label names and their order.

Training batches reproduce StarGAN v2's `data_loader.py`
(docs/method.md#l2m-training):

* source (x, y): `WeightedRandomSampler` with per-sample weight 1/|class| and
  replacement, i.e. every image of a batch is an i.i.d. draw with class-
  balanced probabilities;
* target labels y': the labels of an independently drawn balanced reference
  batch (the original `InputFetcher` reads a second loader; L2M-GAN uses
  only its labels), so y' = y about half the time with 2 domains;
* augmentation: with probability `randcrop_prob` (Python `random` in the
  original) `RandomResizedCrop(img_size, scale, ratio)`, then `Resize` to
  img_size (bilinear), `RandomHorizontalFlip(0.5)`, and `(v - 0.5) / 0.5`.

Deviation from PyTorch: all randomness is stateless, seeded by (seed, step)
and the image's row in the global batch, so batch k is a pure function of k:
resuming at step k continues the exact stream of an uninterrupted run (the
data iterator's position is the step, saved with the train state), and no
state needs a checkpoint. PIL's antialiased bilinear resize is approximated by
`tf.image.resize(antialias=True)` (max abs difference a few 1e-2 on [-1, 1]
at strong downscaling; the evaluation path uses l2m_jax.image_io instead).

Multi-host: global batch k is a function of (seed, k) alone; each process
reads and augments only its rows of it (`parallel.process_slice`), and
`parallel.shard_batch` assembles the global batch, so a run is the same on
any number of processes.
Which process this is, and its share of ordered evaluation files, come from
l2m_jax.parallel.

Layout checks (`check_layout`, run before training): the train split has
at least two domain folders, each with at least one image; the val split,
when present, has the same domain folders, each with images; no other
split adds domain names. Each violation is a `DatasetError` naming the
folders.
"""

from __future__ import annotations

import os
import pathlib
from typing import Any, Iterator, Sequence

from absl import logging
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from l2m_jax import image_io
from l2m_jax import parallel

# Number of RandomResizedCrop proposals before torchvision falls back to a
# centre crop (torchvision.transforms.RandomResizedCrop.get_params).
_CROP_ATTEMPTS = 10


class DatasetError(ValueError):
  """A user-facing problem with the image folders."""


class _ImageFolder(tfds.ImageFolder, skip_registration=True):
  """`tfds.ImageFolder` that leaves no empty temporary directory behind.

  A builder whose folder holds no `dataset_info.json` asks the TFDS bucket
  for its metadata (`DatasetInfo.initialize_from_bucket`), which makes a
  `tmp*tfds` directory in the system temp folder first and never removes it,
  one per construction. A local image folder has no metadata there, so the
  lookup is skipped; everything else is tfds.ImageFolder's.
  """
  name = 'image_folder'

  def _info(self):
    info = super()._info()
    info.initialize_from_bucket = lambda: None
    return info


def _builder(data_dir: str | os.PathLike) -> tfds.ImageFolder:
  root = pathlib.Path(data_dir).expanduser()
  if not root.is_dir():
    raise DatasetError(f'data_dir={str(root)!r}: not a directory; expected '
                       'train/<domain>/*.{jpg,png} (and val/<domain>/...)')
  return _ImageFolder(str(root))


def _examples(builder: tfds.ImageFolder, split: str
              ) -> tuple[list[str], np.ndarray]:
  """(paths, int labels) of one split in sorted order, labels by folder name."""
  if split not in builder.info.splits:
    raise DatasetError(
        f'{builder.data_dir}: no "{split}" folder with images; found splits '
        f'{sorted(builder.info.splits.keys())} (expected {split}/<domain>/*)')
  names = builder.info.features['label'].names
  # ImageFolder shuffles its examples with a fixed seed; sort them back so
  # indices are stable and readable.
  # pylint: disable-next=protected-access
  ex = sorted(builder._split_examples[split], key=lambda e: e.image_path)
  paths = [e.image_path for e in ex]
  labels = np.asarray([names.index(e.label) for e in ex], np.int32)
  return paths, labels


def domains(data_dir: str | os.PathLike) -> list[str]:
  """Domain names in label order (sorted folder names over all splits)."""
  return list(_builder(data_dir).info.features['label'].names)


def _domain_folders(split_dir: pathlib.Path) -> dict[str, int]:
  """{domain folder name: number of image files} of one split folder."""
  out = {}
  for d in sorted(p for p in split_dir.iterdir() if p.is_dir()):
    out[d.name] = sum(1 for f in d.iterdir()
                      if f.is_file() and image_io.is_image_file(f))
  return out


def check_layout(data_dir: str | os.PathLike, train_split: str = 'train',
                 val_split: str | None = 'val',
                 num_domains: int | None = None) -> list[str]:
  """Checks the folder layout before training; returns the domain names.

  Raises:
    DatasetError: naming the folders, when the train split is missing, has
      fewer than two domain folders, has a domain folder without images,
      when a val split exists whose domain folders differ from train's or
      one of them has no images, when another split folder adds domain
      names (labels are the sorted names over all splits), or when
      `num_domains` differs from the number of domains.
  """
  root = pathlib.Path(data_dir).expanduser()
  if not root.is_dir():
    raise DatasetError(f'data_dir={str(root)!r}: not a directory; expected '
                       'train/<domain>/*.{jpg,png} (and val/<domain>/...)')
  train = root / train_split
  if not train.is_dir():
    raise DatasetError(f'{train}: no such folder; expected '
                       f'{train_split}/<domain>/*.{{jpg,jpeg,png}} under '
                       f'{root}')
  counts = _domain_folders(train)
  exts = '/'.join(image_io.IMAGE_EXTENSIONS)
  empty = [str(train / d) for d, n in counts.items() if n == 0]
  if empty:
    raise DatasetError(f'{len(empty)} domain folder(s) of the training '
                       f'split hold no image files ({exts}): '
                       + ', '.join(empty) + '; add images or remove the '
                       'folder(s)')
  names = sorted(counts)
  if len(names) < 2:
    raise DatasetError(f'{train}: found {len(names)} domain folder(s) '
                       f'{names}; L2M-GAN translates between domains and '
                       'needs at least 2 (e.g. train/neg and train/pos)')
  if val_split:
    val = root / val_split
    if val.is_dir():
      vcounts = _domain_folders(val)
      missing = [str(val / d) for d in names if d not in vcounts]
      extra = [str(val / d) for d in vcounts if d not in counts]
      vempty = [str(val / d) for d, n in vcounts.items()
                if n == 0 and d in counts]
      if missing or extra or vempty:
        parts = []
        if missing:
          parts.append('missing: ' + ', '.join(missing))
        if extra:
          parts.append('not in the training split: ' + ', '.join(extra))
        if vempty:
          parts.append('without image files: ' + ', '.join(vempty))
        raise DatasetError(
            f'the domain folders of {val} do not match those of {train} '
            f'({names}); ' + '; '.join(parts))
  for other in sorted(p for p in root.iterdir() if p.is_dir()):
    if other.name in (train_split, val_split):
      continue
    extra = [d for d in _domain_folders(other) if d not in counts]
    if extra:
      raise DatasetError(
          f'{other}: folder(s) {extra} are not domains of {train} but would '
          f'become labels (labels are the sorted folder names of every split '
          f'under {root}); remove or rename them')
  if num_domains is not None and int(num_domains) != len(names):
    raise DatasetError(f'num_domains={num_domains} but {train} has '
                       f'{len(names)} domain folders {names}')
  return names


def check_files(data_dir: str | os.PathLike,
                splits: Sequence[str] = ('train', 'val')) -> int:
  """Decodes every image of the given splits once; raises listing bad files.

  Run before training so that a corrupt file fails the run at start, with
  every bad path at once, rather than hours in. In a multi-process run each
  process checks its own share of the files and all processes agree on the
  outcome (every process must call this).

  Returns:
    The number of files checked by this process.
  """
  builder = _builder(data_dir)
  paths = []
  for split in splits:
    if split in builder.info.splits:
      paths += _examples(builder, split)[0]
  paths = paths[parallel.process_slice(len(paths))]
  logging.info('Checking %d image files under %s ...', len(paths), data_dir)
  bad = image_io.find_unreadable(paths)
  everywhere_ok = parallel.all_processes(not bad)
  if bad:
    lines = '\n'.join(f'  {p}: {why}' for p, why in bad)
    raise DatasetError(f'{len(bad)} unreadable image file(s) under '
                       f'{data_dir}; fix or remove them:\n{lines}')
  if not everywhere_ok:
    raise DatasetError(f'unreadable image file(s) under {data_dir}, found '
                       'by another process (its log lists them)')
  return len(paths)


def decode(data: tf.Tensor) -> tf.Tensor:
  """Encoded PNG/JPEG bytes -> uint8 [H, W, 3], by the one decoder rule.

  The same pixels as `image_io.open_rgb` (PIL) for every mode (module
  docstring of l2m_jax.image_io): JPEGs with the accurate integer IDCT
  (tf.io.decode_image would use the fast one, up to 6 levels off), PNGs with
  16-bit samples reduced to their high byte, alpha dropped.
  """
  return tf.cond(
      tf.io.is_jpeg(data),
      lambda: tf.io.decode_jpeg(data, channels=3,
                                dct_method='INTEGER_ACCURATE'),
      lambda: tf.io.decode_png(data, channels=3, dtype=tf.uint8))


def _decode(path: tf.Tensor) -> tf.Tensor:
  img = decode(tf.io.read_file(path))
  return tf.cast(img, tf.float32) / 255.0  # [H, W, 3] in [0, 1]


def _random_resized_crop_box(seed, height, width, scale, ratio):
  """torchvision RandomResizedCrop.get_params with stateless TF ops.

  Returns:
    (top, left, crop_h, crop_w) int32.
  """
  h = tf.cast(height, tf.float32)
  w = tf.cast(width, tf.float32)
  area = h * w
  seeds = tf.random.experimental.stateless_split(seed, 4)
  target = area * tf.random.stateless_uniform(
      [_CROP_ATTEMPTS], seeds[0], scale[0], scale[1])
  log_r = tf.random.stateless_uniform(
      [_CROP_ATTEMPTS], seeds[1], np.log(ratio[0]), np.log(ratio[1]))
  aspect = tf.exp(log_r)
  cw = tf.round(tf.sqrt(target * aspect))
  ch = tf.round(tf.sqrt(target / aspect))
  ok = (cw > 0) & (cw <= w) & (ch > 0) & (ch <= h)
  first = tf.argmax(tf.cast(ok, tf.int32))
  any_ok = tf.reduce_any(ok)
  # Fallback of torchvision: centre crop with the ratio clamped into range.
  in_ratio = w / h
  fb_w = tf.where(in_ratio < ratio[0], w,
                  tf.where(in_ratio > ratio[1], tf.round(h * ratio[1]), w))
  fb_h = tf.where(in_ratio < ratio[0], tf.round(w / ratio[0]), h)
  crop_w = tf.cast(tf.where(any_ok, cw[first], fb_w), tf.int32)
  crop_h = tf.cast(tf.where(any_ok, ch[first], fb_h), tf.int32)
  u = tf.random.stateless_uniform([2], seeds[2])
  top_rand = tf.cast(tf.floor(u[0] * tf.cast(height - crop_h + 1,
                                             tf.float32)), tf.int32)
  left_rand = tf.cast(tf.floor(u[1] * tf.cast(width - crop_w + 1,
                                              tf.float32)), tf.int32)
  top = tf.where(any_ok, top_rand, (height - crop_h) // 2)
  left = tf.where(any_ok, left_rand, (width - crop_w) // 2)
  return top, left, crop_h, crop_w


def augment(img: tf.Tensor, seed: tf.Tensor, img_size: int,
            randcrop_prob: float, crop_scale: Sequence[float],
            crop_ratio: Sequence[float], flip_prob: float) -> tf.Tensor:
  """The original train transform on one [H, W, 3] image in [0, 1].

  Returns:
    [img_size, img_size, 3] float32 in [-1, 1].
  """
  seeds = tf.random.experimental.stateless_split(seed, 3)
  shape = tf.shape(img)
  height, width = shape[0], shape[1]
  top, left, ch, cw = _random_resized_crop_box(
      seeds[0], height, width, crop_scale, crop_ratio)
  do_crop = tf.random.stateless_uniform([], seeds[1]) < randcrop_prob
  top = tf.where(do_crop, top, 0)
  left = tf.where(do_crop, left, 0)
  ch = tf.where(do_crop, ch, height)
  cw = tf.where(do_crop, cw, width)
  img = tf.image.crop_to_bounding_box(img, top, left, ch, cw)
  img = tf.image.resize(img, (img_size, img_size), method='bilinear',
                        antialias=True)
  flip = tf.random.stateless_uniform([], seeds[2]) < flip_prob
  img = tf.cond(flip, lambda: tf.image.flip_left_right(img), lambda: img)
  img = tf.clip_by_value(img, 0.0, 1.0)
  return (img - 0.5) / 0.5


def _balanced_logits(labels: np.ndarray, num_domains: int) -> np.ndarray:
  """Log of WeightedRandomSampler weights 1/|class| per sample."""
  counts = np.bincount(labels, minlength=num_domains).astype(np.float64)
  if np.any(counts[np.unique(labels)] == 0):  # pragma: no cover
    raise DatasetError('empty domain')
  return np.log(1.0 / counts[labels]).astype(np.float32)


def train_dataset(config: Any, start_step: int = 0,
                  process_index: int | None = None,
                  process_count: int | None = None) -> tf.data.Dataset:
  """Infinite tf.data stream of this process's training batches from start_step.

  Each element is {'x_src': [b, S, S, 3] float32 in [-1, 1],
  'y_src': [b] int32, 'y_trg': [b] int32} with b = config.batch_size /
  process_count: this process's rows (`parallel.process_slice`) of global
  batch k, which depends only on (config.seed, k). So the global batches,
  and the training, are the same for any number of processes and devices.
  """
  global_batch = int(config.batch_size)
  try:
    rows = parallel.process_batch(global_batch, process_index, process_count)
  except ValueError as e:
    raise DatasetError(str(e)) from None
  local_batch = rows.stop - rows.start
  builder = _builder(config.data_dir)
  paths, labels = _examples(builder, config.train_split)
  num_domains = len(builder.info.features['label'].names)
  if num_domains != config.num_domains:
    raise DatasetError(
        f'num_domains={config.num_domains} but {config.data_dir}/'
        f'{config.train_split} has {num_domains} domain folders '
        f'{builder.info.features["label"].names}')
  logits = tf.constant(_balanced_logits(labels, num_domains)[None])
  paths_t = tf.constant(paths)
  labels_t = tf.constant(labels)
  seed = int(config.seed)
  aug = dict(img_size=int(config.img_size),
             randcrop_prob=float(config.randcrop_prob),
             crop_scale=tuple(config.crop_scale),
             crop_ratio=tuple(config.crop_ratio),
             flip_prob=float(config.flip_prob))

  def indices(step):
    # The whole global batch is drawn (cheap: indices and seeds only) and
    # this process keeps its rows.
    step_seed = tf.stack([tf.constant(seed, tf.int64) * 1_000_003, step])
    s = tf.random.experimental.stateless_split(step_seed, 3)
    src = tf.random.stateless_categorical(logits, global_batch, s[0])[0]
    ref = tf.random.stateless_categorical(logits, global_batch, s[1])[0]
    img_seeds = tf.random.experimental.stateless_split(s[2], global_batch)
    src, ref = src[rows.start:rows.stop], ref[rows.start:rows.stop]
    img_seeds = img_seeds[rows.start:rows.stop]
    return tf.data.Dataset.from_tensor_slices(
        (tf.gather(paths_t, src), tf.gather(labels_t, src),
         tf.gather(labels_t, ref), img_seeds))

  def load(path, y_src, y_trg, img_seed):
    return {'x_src': augment(_decode(path), img_seed, **aug),
            'y_src': y_src, 'y_trg': y_trg}

  ds = tf.data.Dataset.range(int(start_step), 2**62)
  ds = ds.flat_map(indices)
  ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  ds = ds.batch(local_batch, drop_remainder=True)
  return _without_autotune(ds.prefetch(int(config.prefetch)))


def _without_autotune(ds: tf.data.Dataset) -> tf.data.Dataset:
  """`ds` without tf.data's autotuning (fixed buffers and parallelism).

  Autotuning runs a model thread per iterator, and deleting an iterator
  waits for that thread: at the end of demo trainings that wait was seen to
  take 22 to 27 s (of 40 to 46 s of silence after the last step, with
  nothing left to do). The pipeline's buffers are set explicitly
  (`config.prefetch`), and `num_parallel_calls=AUTOTUNE` without autotuning
  takes tf.data's default parallelism (its thread pool's size, about one
  call per CPU core).
  """
  options = tf.data.Options()
  options.autotune.enabled = False
  return ds.with_options(options)


def train_iterator(config: Any, start_step: int = 0, **kwargs
                   ) -> Iterator[dict[str, np.ndarray]]:
  """Numpy batches of `train_dataset`."""
  return iter(tfds.as_numpy(train_dataset(config, start_step, **kwargs)))


def eval_dataset(config: Any, split: str | None = None,
                 batch_size: int | None = None, shard: bool = True
                 ) -> tf.data.Dataset:
  """Ordered validation images: {'image': [b, S, S, 3] in [-1, 1], 'label'}.

  The split's files in sorted order, this process's contiguous share of
  them (`parallel.process_slice`) when `shard`, decoded by `decode`,
  resized to img_size (bilinear, antialiased), last partial batch kept.
  """
  split = split or config.val_split
  builder = _builder(config.data_dir)
  if split not in builder.info.splits:
    raise DatasetError(f'{config.data_dir}: no "{split}" split for '
                       f'evaluation; found {sorted(builder.info.splits)}')
  paths, labels = _examples(builder, split)
  if shard:
    share = parallel.process_slice(len(paths))
    paths, labels = paths[share], labels[share]
  size = int(config.img_size)

  def prep(path, label):
    img = tf.image.resize(_decode(path), (size, size), 'bilinear',
                          antialias=True)
    return {'image': (tf.clip_by_value(img, 0, 1) - 0.5) / 0.5,
            'label': label}

  bs = batch_size or parallel.per_process_batch(config.val_batch_size)
  ds = tf.data.Dataset.from_tensor_slices((tf.constant(paths, tf.string),
                                           tf.constant(labels, tf.int32)))
  return _without_autotune(
      ds.map(prep, num_parallel_calls=tf.data.AUTOTUNE).batch(bs).prefetch(
          int(config.prefetch)))


def fixed_sources(config: Any, num: int) -> tuple[np.ndarray, np.ndarray]:
  """`num` fixed images for sample grids, alternating over domains.

  Taken from the val split when present, else from train, with the official
  loader conventions (l2m_jax.image_io), so grids are comparable over a run.
  """
  builder = _builder(config.data_dir)
  split = (config.val_split if config.val_split in builder.info.splits
           else config.train_split)
  paths, labels = _examples(builder, split)
  per_domain = [[p for p, l in zip(paths, labels) if l == d]
                for d in range(int(labels.max()) + 1)]
  chosen, ys = [], []
  i = 0
  while len(chosen) < num and any(per_domain):
    d = i % len(per_domain)
    if per_domain[d]:
      chosen.append(per_domain[d].pop(0))
      ys.append(d)
    i += 1
  x = image_io.load_images(chosen, int(config.img_size))
  return x.astype(np.float32), np.asarray(ys, np.int32)
