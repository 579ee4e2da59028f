"""Editing-quality metrics: attribute correctness and irrelevance preservation.

L2M-GAN's two goals (docs/method.md#l2m-gan) are measured here; the paper's own
classifier and identity network are unknown (docs/method.md#l2m-evaluation), so
this module trains
its own small JAX models on the generated faces and accepts any others:

* Attribute correctness: accuracy, on edited images, of an attribute
  classifier with respect to the TARGET labels (`attribute_accuracy`). The
  classifier's own held-out accuracy on real images is reported next to it.
* Irrelevance preservation: the mean L2 distance between the identity vectors
  an identity regressor predicts for the source and the edited image
  (`identity_error`), compared with the same distance for a reconstruction
  baseline (the degree-0 edit, docs/method.md#l2m-edit), and the mean absolute
  pixel change
  outside the attribute's region (`pixel_change_outside`).
* FID, through `l2m_jax.evaluation.fid`, when converted Inception weights are
  given (`fid_or_skip`); none exist offline, which is reported, not hidden.

Every metric takes `apply_fn(params, images) -> outputs` and `params`, so a
CelebA-HQ user can plug in a classifier or identity network of their own.
Images are float32 NHWC in [-1, 1]. Region masks come from the rendering
geometry for generated faces (`synthetic_faces.region_masks`) or from any
user function returning [N, H, W] masks.
"""

from __future__ import annotations

import pathlib
import time
from typing import Any, Callable, Mapping, Sequence

from absl import logging
from flax import linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from l2m_jax import parallel
from l2m_jax.convert import torch_to_flax

ApplyFn = Callable[[Any, jax.Array], jax.Array]

CLASSIFIER_FORMAT = 'attribute_classifier'
REGRESSOR_FORMAT = 'identity_regressor'


class SmallConvNet(nn.Module):
  """Four stride-2 3x3 convs, flatten, one dense layer.

  Inputs must have the size the model was trained at (kept in its meta;
  `predict` callers resize with `resize_images`). Used both as the attribute classifier (outputs = one logit per attribute)
  and as the identity regressor (outputs = identity vector).
  """
  num_outputs: int
  width: int = 32
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):  # x: [N, H, W, 3] in [-1, 1]
    x = x.astype(self.dtype)
    for i, mult in enumerate((1, 2, 4, 4)):
      x = nn.Conv(self.width * mult, (3, 3), strides=(2, 2),
                  padding=((1, 1), (1, 1)), dtype=self.dtype,
                  name=f'conv{i}')(x)
      x = nn.GroupNorm(num_groups=min(8, self.width * mult), dtype=self.dtype,
                       name=f'norm{i}')(x)
      x = nn.leaky_relu(x, 0.2)
    # Flatten the final [H/16, W/16] map: a global average would discard the
    # positions (pose, eye spacing) the identity regressor must read.
    x = x.reshape(x.shape[0], -1)  # [N, H/16 * W/16 * C]
    return nn.Dense(self.num_outputs, dtype=self.dtype, name='head')(x)


def _to_float_images(images) -> np.ndarray:
  """uint8 [0, 255] or float [-1, 1] NHWC -> float32 [-1, 1]."""
  images = np.asarray(images)
  if images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(f'expected images [N, H, W, 3], got shape {images.shape}')
  if images.dtype == np.uint8:
    return images.astype(np.float32) / 127.5 - 1.0
  return images.astype(np.float32)


def predict(apply_fn: ApplyFn, params: Any, images, batch_size: int = 256
            ) -> np.ndarray:
  """Runs `apply_fn(params, images)` in jit-compiled batches; numpy output.

  The batches are split over every local device (`parallel.map_batches`).
  """
  images = _to_float_images(images)
  if not len(images):  # pylint: disable=g-explicit-length-test
    return np.zeros((0,), np.float32)
  return parallel.map_batches(jax.jit(apply_fn), images,
                              batch_size=min(batch_size, len(images)),
                              args=(params,))


def labels_from_outputs(outputs: np.ndarray) -> np.ndarray:
  """Logits [N] (binary, > 0 = present) or [N, C] (argmax) -> int labels."""
  outputs = np.asarray(outputs)
  if outputs.ndim == 1:
    return (outputs > 0).astype(np.int32)
  if outputs.ndim == 2 and outputs.shape[1] == 1:
    return (outputs[:, 0] > 0).astype(np.int32)
  if outputs.ndim == 2:
    return np.argmax(outputs, axis=1).astype(np.int32)
  raise ValueError(f'classifier outputs must be [N] or [N, C], got shape '
                   f'{outputs.shape}')


# ----------------------------------------------------------------------------
# Metric functions (pluggable).


def attribute_accuracy(apply_fn: ApplyFn, params: Any, images,
                       target_labels: Sequence[int],
                       batch_size: int = 256) -> float:
  """Fraction of images the classifier assigns to their target label.

  Args:
    apply_fn: `(params, images [N, H, W, 3] in [-1, 1]) -> logits`, either
      [N] (binary; > 0 means attribute present) or [N, C] (argmax).
    params: the classifier's variables.
    images: edited images, float [-1, 1] or uint8.
    target_labels: [N] the label each image should have after the edit.
    batch_size: evaluation batch.
  """
  target_labels = np.asarray(target_labels).reshape(-1)
  if len(target_labels) != len(images):
    raise ValueError(f'{len(images)} images but {len(target_labels)} labels')
  pred = labels_from_outputs(predict(apply_fn, params, images, batch_size))
  return float(np.mean(pred == target_labels))


def identity_distances(apply_fn: ApplyFn, params: Any, sources, edited,
                       batch_size: int = 256) -> np.ndarray:
  """Per-image L2 distance between regressed identity vectors [N]."""
  a, b = _regressed_pairs(apply_fn, params, sources, edited, batch_size)
  return np.linalg.norm(a - b, axis=1)


def _regressed_pairs(apply_fn: ApplyFn, params: Any, sources, edited,
                     batch_size: int) -> tuple[np.ndarray, np.ndarray]:
  """Regressed vectors [N, D] of the sources and of the edited images."""
  if len(sources) != len(edited):
    raise ValueError(f'{len(sources)} sources but {len(edited)} edited images')
  a = predict(apply_fn, params, sources, batch_size).reshape(len(sources), -1)
  b = predict(apply_fn, params, edited, batch_size).reshape(len(edited), -1)
  return a, b


def identity_error(apply_fn: ApplyFn, params: Any, sources, edited,
                   baseline=None, batch_size: int = 256) -> dict[str, float]:
  """Mean identity-vector distance of source vs edit (and vs a baseline).

  Args:
    apply_fn, params: the identity model, `(params, images) -> [N, D]`.
    sources: source images.
    edited: edited images, same order.
    baseline: optional reconstructions (e.g. the degree-0 edit); their
      distance to the sources is the floor an edit can be compared with.

  Returns:
    {'identity_error': mean distance, and, with a baseline,
     'identity_error_baseline' and 'identity_error_ratio' (edit / baseline)}.
  """
  out = {'identity_error': float(np.mean(identity_distances(
      apply_fn, params, sources, edited, batch_size)))}
  if baseline is not None:
    base = float(np.mean(identity_distances(apply_fn, params, sources,
                                            baseline, batch_size)))
    out['identity_error_baseline'] = base
    out['identity_error_ratio'] = out['identity_error'] / max(base, 1e-12)
  return out


def identity_factor_changes(apply_fn: ApplyFn, params: Any, sources, edited,
                            batch_size: int = 256) -> np.ndarray:
  """Mean |regressed source - regressed edit| per identity output [D].

  `identity_error` averages the L2 norm of this difference over images; the
  per-output means say which identity factors an edit disturbs (e.g. for
  generated faces, `synthetic_faces.IDENTITY_NAMES`: hair shade, skin tone).
  """
  a, b = _regressed_pairs(apply_fn, params, sources, edited, batch_size)
  return np.abs(a - b).mean(axis=0)


def pixel_change_outside(sources, edited, region_masks) -> float:
  """Mean |edited - source| over pixels outside the attribute's region.

  Args:
    sources, edited: [N, H, W, 3] images (float [-1, 1] or uint8; reported in
      [-1, 1] units, so 2.0 is the largest possible change).
    region_masks: [N, H, W] (or [N, H, W, 1]) with 1 inside the attribute's
      region, 0 outside; soft masks weight pixels by 1 - mask.

  Returns:
    The masked mean absolute change over pixels and channels (0 when the
    images are identical outside the region).
  """
  a, b = _to_float_images(sources), _to_float_images(edited)
  if a.shape != b.shape:
    raise ValueError(f'sources {a.shape} and edited {b.shape} differ in shape')
  m = np.asarray(region_masks, np.float32)
  if m.ndim == 4:
    m = m[..., 0]
  if m.shape != a.shape[:3]:
    raise ValueError(f'region masks have shape {m.shape}; expected '
                     f'{a.shape[:3]}')
  w = (1.0 - np.clip(m, 0.0, 1.0))[..., None]
  denom = w.sum() * a.shape[-1]
  if denom == 0:
    raise ValueError('region masks cover every pixel; nothing is outside')
  return float((np.abs(b - a) * w).sum() / denom)


def fid_or_skip(real_images, fake_images, inception_checkpoint: str = '',
                protocol: str = 'stargan_v2', batch_size: int = 50
                ) -> dict[str, Any]:
  """FID through l2m_jax.evaluation.fid, or a loud, explained skip.

  Args:
    real_images, fake_images: [N, H, W, 3] images in [-1, 1] (or uint8);
      quantised and preprocessed as files of the protocol would be.
    inception_checkpoint: Inception weights (.pth or converted folder).
    protocol: 'stargan_v2' or 'standard' (see docs/fid.md).
    batch_size: images per feature batch.

  Returns:
    {'status': 'ok', 'fid': value} or {'status': 'skipped', 'reason': ...}.
  """
  if not inception_checkpoint:
    reason = ('no converted Inception-v3 weights were given (none can be '
              'downloaded offline); pass an Inception .pth file or a folder '
              'converted with scripts/fid.py --weights F.pth --convert-to '
              'DIR (docs/fid.md)')
    # One line on stdout (an absl warning as well printed it twice).
    print(f'WARNING: FID skipped: {reason}', flush=True)
    return {'status': 'skipped', 'reason': reason}
  path = pathlib.Path(inception_checkpoint)
  if not path.exists():
    raise FileNotFoundError(f'{path}: Inception checkpoint not found')
  from l2m_jax.evaluation import fid  # pylint: disable=g-import-not-at-top
  from l2m_jax.evaluation import frechet  # pylint: disable=g-import-not-at-top
  extractor = fid.make_extractor(protocol, path)
  stats = []
  for images in (real_images, fake_images):
    images = np.asarray(images)
    batches = (images[i:i + batch_size]
               for i in range(0, len(images), batch_size))
    stats.append(fid.images_statistics(batches, extractor).result())
  (mu1, s1), (mu2, s2) = stats
  return {'status': 'ok', 'protocol': extractor.protocol.name,
          'fid': float(frechet.frechet_distance(mu1, s1, mu2, s2))}


# ----------------------------------------------------------------------------
# Training the models on generated data.


def _resize(images: np.ndarray, size: int) -> np.ndarray:
  if images.shape[1] == size:
    return images
  return np.asarray(jax.image.resize(
      images, (len(images), size, size, 3), 'linear', antialias=True))


def train_model(kind: str, images, targets, *, val_images=None,
                val_targets=None, steps: int = 400, batch_size: int = 64,
                lr: float = 2e-3, width: int = 16, seed: int = 0,
                noise_std: float = 0.05, log_every: int = 100,
                names: Sequence[str] = (),
                gate: Callable[[], Any] | None = None
                ) -> tuple[ApplyFn, Any, dict]:
  """Trains a SmallConvNet classifier or regressor with optax Adam.

  Args:
    kind: 'classifier' (targets int [N] or [N, K] of 0/1; sigmoid
      cross-entropy per column) or 'regressor' (targets float [N, D]; MSE).
    images: uint8 or [-1, 1] float [N, H, W, 3].
    targets: see `kind`.
    val_images, val_targets: held-out data for the reported metrics.
    steps, batch_size, lr, width, seed: training settings.
    noise_std: Gaussian pixel noise added during training, in [-1, 1] units,
      so the model tolerates a generator's small artefacts.
    log_every: progress interval, steps.
    names: output names stored in the meta (attributes or identity names).
    gate: optional callable run before every step; it may block (a
      background trainer pauses there) or raise to stop the training. With a
      gate each step finishes before the next one is dispatched, so that a
      paused trainer leaves no work queued. The trained values are the same
      with or without it.

  Returns:
    (apply_fn, params, meta) where meta has the config and the held-out
    metrics ('val_accuracy' per output for a classifier, 'val_rmse' and
    'val_l2' for a regressor).
  """
  if kind not in ('classifier', 'regressor'):
    raise ValueError(f"kind must be 'classifier' or 'regressor', got {kind!r}")
  x = _to_float_images(images)
  y = np.asarray(targets, np.float32)
  if y.ndim == 1:
    y = y[:, None]
  if len(y) != len(x):
    raise ValueError(f'{len(x)} images but {len(y)} targets')
  num_outputs = y.shape[1]
  model = SmallConvNet(num_outputs=num_outputs, width=width)
  rng = jax.random.key(seed)
  # Under jit: one compiled program instead of an op-by-op first init (the
  # same values, a few seconds less on a CPU).
  params = jax.jit(model.init)(rng, jnp.zeros((1,) + x.shape[1:],
                                              jnp.float32))
  tx = optax.adam(optax.cosine_decay_schedule(lr, steps, alpha=0.05))
  opt_state = tx.init(params)

  def loss_fn(p, xb, yb):
    out = model.apply(p, xb)
    if kind == 'classifier':
      return optax.sigmoid_binary_cross_entropy(out, yb).mean()
    return jnp.mean((out - yb) ** 2)

  @jax.jit
  def step(p, o, xb, yb, key):
    xb = xb + noise_std * jax.random.normal(key, xb.shape)
    flip = jax.random.bernoulli(jax.random.fold_in(key, 1), 0.5,
                                (xb.shape[0], 1, 1, 1))
    if kind == 'classifier':  # flips keep every attribute; not the identity
      xb = jnp.where(flip, xb[:, :, ::-1], xb)
    loss, g = jax.value_and_grad(loss_fn)(p, xb, yb)
    upd, o = tx.update(g, o, p)
    return optax.apply_updates(p, upd), o, loss

  np_rng = np.random.default_rng(seed)
  t0 = time.time()
  batch_size = min(batch_size, len(x))
  loss = None
  for i in range(steps):
    if gate is not None:
      if loss is not None:
        jax.block_until_ready(loss)
      gate()
    idx = np_rng.choice(len(x), batch_size, replace=False)
    params, opt_state, loss = step(params, opt_state, jnp.asarray(x[idx]),
                                   jnp.asarray(y[idx]),
                                   jax.random.fold_in(rng, i))
    if log_every and ((i + 1) % log_every == 0 or i == 0):
      logging.info('%s step %d/%d loss %.4f (%.1fs)', kind, i + 1, steps,
                   float(loss), time.time() - t0)
      print(f'  {kind} step {i + 1}/{steps} loss {float(loss):.4f} '
            f'({time.time() - t0:.1f}s)', flush=True)
  apply_fn = model.apply
  meta = {'format': CLASSIFIER_FORMAT if kind == 'classifier'
                    else REGRESSOR_FORMAT,
          'config': {'num_outputs': num_outputs, 'width': width,
                     'image_size': int(x.shape[1]), 'names': list(names)},
          'train': {'steps': steps, 'batch_size': batch_size, 'lr': lr,
                    'seed': seed, 'examples': int(len(x))}}
  if val_images is not None:
    vy = np.asarray(val_targets, np.float32)
    vy = vy[:, None] if vy.ndim == 1 else vy
    out = predict(apply_fn, params, val_images).reshape(len(vy), -1)
    if kind == 'classifier':
      acc = ((out > 0) == (vy > 0.5)).mean(axis=0)
      meta['val_accuracy'] = [float(a) for a in acc]
    else:
      meta['val_rmse'] = float(np.sqrt(np.mean((out - vy) ** 2)))
      meta['val_l2'] = float(np.mean(np.linalg.norm(out - vy, axis=1)))
  meta['train_seconds'] = time.time() - t0
  return apply_fn, params, meta


def output_slice(apply_fn: ApplyFn, index: int) -> ApplyFn:
  """Wraps a multi-output classifier so that it returns column `index` [N]."""
  def fn(params, images):
    return apply_fn(params, images)[:, index]
  return fn


def save_model(path, params: Any, meta: Mapping[str, Any],
               overwrite: bool = True) -> None:
  """Saves a trained classifier/regressor (params-only orbax + meta.json)."""
  torch_to_flax.save_converted(path, params, meta, overwrite=overwrite)


def load_model(path, expected_format: str | None = None
               ) -> tuple[ApplyFn, Any, dict]:
  """Loads a model written by `save_model`; returns (apply_fn, params, meta)."""
  meta = torch_to_flax.read_meta(path)
  fmt = meta.get('format')
  if fmt not in (CLASSIFIER_FORMAT, REGRESSOR_FORMAT):
    raise ValueError(f'{path}: meta.json format is {fmt!r}; expected '
                     f'{CLASSIFIER_FORMAT!r} or {REGRESSOR_FORMAT!r}')
  if expected_format is not None and fmt != expected_format:
    raise ValueError(f'{path}: holds a {fmt!r}, expected {expected_format!r}')
  cfg = meta['config']
  model = SmallConvNet(num_outputs=cfg['num_outputs'], width=cfg['width'])
  size = cfg['image_size']
  template = jax.eval_shape(model.init, jax.random.key(0),
                            jnp.zeros((1, size, size, 3), jnp.float32))
  params, meta = torch_to_flax.load_converted(path, template)
  return model.apply, params, meta


# ----------------------------------------------------------------------------
# Putting it together.


def evaluate_edits(*, sources, source_labels, edits: Mapping[float, Any],
                   classifier: tuple[ApplyFn, Any],
                   identity_model: tuple[ApplyFn, Any] | None = None,
                   region_masks=None,
                   mask_fn: Callable[[np.ndarray], np.ndarray] | None = None,
                   real_target_images=None, inception_checkpoint: str = '',
                   batch_size: int = 256) -> dict[str, Any]:
  """All editing metrics for binary edits at several degrees.

  Args:
    sources: [N, H, W, 3] source images.
    source_labels: [N] their attribute labels (0/1); the target is 1 - label.
    edits: {degree alpha: edited images [N, H, W, 3]}; degree 0.0, when
      present, is the reconstruction baseline.
    classifier: (apply_fn, params) returning logits [N] (or [N, C]).
    identity_model: optional (apply_fn, params) returning [N, D].
    region_masks: optional [N, H, W] attribute regions of the sources.
    mask_fn: alternative to region_masks: sources -> [N, H, W] masks.
    real_target_images: real images for FID (all target-domain images).
    inception_checkpoint: converted Inception-v3 for FID ('' skips FID).

  Returns:
    {'degree=<a>': {...metrics}, 'fid': {...}}: per degree the attribute
    accuracy w.r.t. the target labels (the source labels for degree 0),
    identity error (with the degree-0 baseline when present) and the pixel
    change outside the region.
  """
  source_labels = np.asarray(source_labels).astype(np.int32)
  target = 1 - source_labels
  if region_masks is None and mask_fn is not None:
    region_masks = mask_fn(np.asarray(sources))
  baseline = edits.get(0.0)
  out: dict[str, Any] = {}
  c_apply, c_params = classifier
  out['source_accuracy'] = attribute_accuracy(c_apply, c_params, sources,
                                              source_labels, batch_size)
  for degree in sorted(edits):
    x = edits[degree]
    m: dict[str, Any] = {}
    labels = source_labels if degree == 0.0 else target
    m['attribute_accuracy'] = attribute_accuracy(c_apply, c_params, x, labels,
                                                 batch_size)
    if identity_model is not None:
      m.update(identity_error(identity_model[0], identity_model[1], sources, x,
                              None if degree == 0.0 else baseline,
                              batch_size))
    if region_masks is not None:
      m['pixel_change_outside'] = pixel_change_outside(sources, x,
                                                       region_masks)
    out[f'degree={degree:g}'] = m
  if 1.0 in edits and real_target_images is not None:
    out['fid'] = fid_or_skip(real_target_images, edits[1.0],
                             inception_checkpoint)
  else:
    out['fid'] = fid_or_skip(None, None, '') if not inception_checkpoint else {
        'status': 'skipped', 'reason': 'no degree-1 edits or real images'}
  return out
