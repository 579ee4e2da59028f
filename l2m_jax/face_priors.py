"""Frozen helper networks of L2M-GAN trained on the generated faces.

L2M-GAN trains with two frozen, pretrained networks: the FAN landmark
network, whose heatmaps make the masks of the generator's high-pass skips,
and a preservation network (ArcFace / ImageNet ResNet-18) for the
preservation term. Neither set of weights can be downloaded here, and both
were trained on real photos. The generated faces of
`l2m_jax.datasets.synthetic_faces` know their geometry and their factors,
so both networks can be trained on them instead:

* `train_landmark_net`: `l2m_jax.models.landmarks.LandmarkNet` regresses
  the 98 WFLW landmarks (`synthetic_faces.landmarks`) and outputs them as
  FAN-layout heatmaps; `landmarks.get_masks` post-processes them as the FAN's.
* `train_preservation_net`: `l2m_jax.models.preservation.PreservationNet`
  regresses what an edit of one attribute must keep (the identity vector
  and the other attributes) and its features are pulled together between a
  face and its counterfactual (the same face rendered with the attribute
  flipped), so the preservation loss does not penalise the edit itself.

Both are saved with `save` (params-only orbax + meta.json, formats
`landmarks.FORMAT` / `preservation.FORMAT`) and read back by `load`.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax

from l2m_jax.convert import torch_to_flax as t2f
from l2m_jax.models import landmarks as landmarks_lib
from l2m_jax.models import preservation as preservation_lib

Progress = Callable[[int, float], None]  # (step, loss)


def _to_float(images) -> np.ndarray:
  images = np.asarray(images)
  if images.dtype == np.uint8:
    return images.astype(np.float32) / 127.5 - 1.0
  return images.astype(np.float32)


def _init(model, seed: int, image_shape) -> Any:
  """`model.init` under jit: the values of an op-by-op init, compiled as one
  program (the first init of a process otherwise compiles every op apart:
  about 30 s instead of 13 s for the LandmarkNet on a busy 2-core CPU)."""
  return jax.jit(model.init)(jax.random.key(seed),
                             jnp.zeros((1,) + tuple(image_shape)))


def _fit(loss_fn, params, sample_batch, *, steps: int, lr: float,
         seed: int, progress: Progress | None, log_every: int):
  """Adam with cosine decay; `sample_batch(rng) -> tuple of numpy arrays`."""
  tx = optax.adam(optax.cosine_decay_schedule(lr, steps, alpha=0.05))
  opt = tx.init(params)

  @jax.jit
  def step(p, o, key, *batch):
    loss, grads = jax.value_and_grad(loss_fn)(p, key, *batch)
    updates, o = tx.update(grads, o, p)
    return optax.apply_updates(p, updates), o, loss

  rng = np.random.default_rng(seed)
  key = jax.random.key(seed)
  loss = float('nan')
  for i in range(steps):
    batch = [jnp.asarray(b) for b in sample_batch(rng)]
    params, opt, loss = step(params, opt, jax.random.fold_in(key, i), *batch)
    if progress is not None and ((i + 1) % log_every == 0 or i + 1 == steps):
      progress(i + 1, float(loss))
  return jax.device_get(params), float(loss)


def train_landmark_net(images, points, *, steps: int = 1000, width: int = 16,
                       batch_size: int = 32, lr: float = 2e-3,
                       seed: int = 0, progress: Progress | None = None,
                       log_every: int = 100) -> tuple[Any, dict[str, Any]]:
  """Trains a LandmarkNet on images with known landmarks.

  Args:
    images: [N, S, S, 3] uint8 or [-1, 1] float.
    points: [N, 98, 2] landmarks in canvas units (`synthetic_faces.landmarks`).
    steps, width, batch_size, lr, seed: training settings. Half of every
      batch is mirrored (with `landmarks.flip_points`), as the GAN training
      flips its inputs.
    progress: optional callable(step, loss).

  Returns:
    (variables, meta); the loss is a Huber loss (delta 1) of the position
    error in heatmap pixels.
  """
  x = _to_float(images)
  pts = np.asarray(points, np.float32)
  if pts.shape != (len(x), landmarks_lib.NUM_LANDMARKS, 2):
    raise ValueError(f'points must be [{len(x)}, '
                     f'{landmarks_lib.NUM_LANDMARKS}, 2], got {pts.shape}')
  model = landmarks_lib.LandmarkNet(width=width, input_size=x.shape[1])
  params = _init(model, seed, x.shape[1:])
  batch_size = min(batch_size, len(x))

  def loss_fn(p, key, xb, pb):
    del key
    d = (model.apply(p, xb, points=True) - pb) * landmarks_lib.HEATMAP_SIZE
    return jnp.mean(optax.huber_loss(d, delta=1.0))

  def sample(rng):
    idx = rng.choice(len(x), batch_size, replace=False)
    xb, pb = x[idx], pts[idx]
    flip = rng.random(batch_size) < 0.5
    xb = np.where(flip[:, None, None, None], xb[:, :, ::-1], xb)
    pb = np.where(flip[:, None, None], landmarks_lib.flip_points(pb), pb)
    return xb, pb.astype(np.float32)

  t0 = time.time()
  params, loss = _fit(loss_fn, params, sample, steps=steps, lr=lr, seed=seed,
                      progress=progress, log_every=log_every)
  meta = {'format': landmarks_lib.FORMAT,
          'config': {'width': width, 'input_size': int(x.shape[1])},
          'train': {'steps': steps, 'batch_size': batch_size, 'lr': lr,
                    'seed': seed, 'examples': int(len(x)),
                    'final_loss': loss, 'seconds': time.time() - t0}}
  return params, meta


def landmark_errors(variables, images, points) -> np.ndarray:
  """Distances [N, 98] in heatmap pixels between heatmap peaks and points."""
  x = _to_float(images)
  model = landmarks_lib.model_from_variables(variables)
  heat = np.asarray(jax.jit(model.apply)(variables, jnp.asarray(x)))
  peaks = landmarks_lib.heatmap_peaks(heat)
  true = landmarks_lib.heatmap_coordinates(points)
  return np.linalg.norm(peaks - true, axis=-1)


def train_preservation_net(images, targets, counterfactuals, *,
                           steps: int = 600, width: int = 16,
                           batch_size: int = 32, lr: float = 2e-3,
                           invariance: float = 1.0, noise_std: float = 0.05,
                           norm: bool = False,
                           seed: int = 1, progress: Progress | None = None,
                           log_every: int = 100
                           ) -> tuple[Any, dict[str, Any]]:
  """Trains a PreservationNet: regression plus counterfactual invariance.

  Loss = MSE(outputs(x + noise), targets)
         + invariance * mean over layers of mean |F_l(x) - F_l(x_cf)|.

  Args:
    images: [N, S, S, 3] faces (uint8 or [-1, 1]).
    targets: [N, D] what an edit must keep (identity vector, other
      attributes).
    counterfactuals: [N, S, S, 3] the same faces with the edited attribute
      flipped.
    invariance: weight of the feature agreement term.
    noise_std: Gaussian pixel noise on the regression input ([-1, 1] units).
    norm: GroupNorm after each conv (`PreservationNet.norm`; off by default,
      so the features see a global colour shift).
    (other arguments as in `train_landmark_net`)

  Returns:
    (variables, meta).
  """
  x = _to_float(images)
  x_cf = _to_float(counterfactuals)
  y = np.asarray(targets, np.float32)
  if x_cf.shape != x.shape or len(y) != len(x):
    raise ValueError(f'images {x.shape}, counterfactuals {x_cf.shape} and '
                     f'targets {y.shape} must have the same length/shape')
  model = preservation_lib.PreservationNet(num_outputs=y.shape[1],
                                           width=width, norm=norm)
  params = _init(model, seed, x.shape[1:])
  batch_size = min(batch_size, len(x))

  def loss_fn(p, key, xb, cb, yb):
    noisy = xb + noise_std * jax.random.normal(key, xb.shape)
    reg = jnp.mean((model.apply(p, noisy) - yb) ** 2)
    fa = model.apply(p, xb, features=True)
    fb = model.apply(p, cb, features=True)
    inv = jnp.mean(jnp.stack([jnp.mean(jnp.abs(a - b))
                              for a, b in zip(fa, fb)]))
    return reg + invariance * inv

  def sample(rng):
    idx = rng.choice(len(x), batch_size, replace=False)
    return x[idx], x_cf[idx], y[idx]

  t0 = time.time()
  params, loss = _fit(loss_fn, params, sample, steps=steps, lr=lr, seed=seed,
                      progress=progress, log_every=log_every)
  meta = {'format': preservation_lib.FORMAT,
          'config': {'width': width, 'num_outputs': int(y.shape[1]),
                     'image_size': int(x.shape[1]), 'norm': bool(norm)},
          'train': {'steps': steps, 'batch_size': batch_size, 'lr': lr,
                    'invariance': invariance, 'noise_std': noise_std,
                    'seed': seed, 'examples': int(len(x)),
                    'final_loss': loss, 'seconds': time.time() - t0}}
  return params, meta


# ---------------------------------------------------------------------------
# Saving and loading.
# ---------------------------------------------------------------------------


def save(path, variables: Any, meta: Mapping[str, Any]) -> None:
  """Writes params-only orbax + meta.json (replacing `path`)."""
  t2f.save_converted(path, variables, meta, overwrite=True)


def _template(fmt: str, config: Mapping[str, Any]):
  if fmt == landmarks_lib.FORMAT:
    model = landmarks_lib.LandmarkNet(width=int(config['width']),
                                      input_size=int(config['input_size']))
    size = int(config['input_size'])
  else:
    model = preservation_lib.PreservationNet(
        num_outputs=int(config['num_outputs']), width=int(config['width']),
        # Saved before the field existed: those networks had GroupNorm.
        norm=bool(config.get('norm', True)))
    size = int(config['image_size'])
  return jax.eval_shape(model.init, jax.random.key(0),
                        jnp.zeros((1, size, size, 3), jnp.float32))


def load(path, expected_format: str) -> tuple[Any, dict[str, Any]]:
  """Loads a network written by `save`, checked against its config's shapes.

  Args:
    path: the directory.
    expected_format: `landmarks.FORMAT` or `preservation.FORMAT`.

  Returns:
    (variables as numpy arrays, meta).
  """
  if expected_format not in (landmarks_lib.FORMAT, preservation_lib.FORMAT):
    raise ValueError(f'expected_format={expected_format!r}: expected '
                     f'{landmarks_lib.FORMAT!r} or {preservation_lib.FORMAT!r}')
  meta = t2f.read_meta(path, expected_format,
                       'train it with l2m_jax.face_priors (the demo does)')
  try:
    template = _template(expected_format, meta['config'])
  except (KeyError, TypeError, ValueError) as e:
    raise ValueError(f'{path}: invalid config in meta.json: {e}') from e
  variables, _ = t2f.load_converted(path, template)
  return variables, meta
