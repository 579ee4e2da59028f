"""The L2M-GAN attribute edit, jit-compiled and batched.

G. Yang et al., "L2M-GAN", CVPR 2021; the official evaluation's edit
(docs/method.md#l2m-edit):

  M = FAN masks of x                            (only when w_hpf > 0)
  (s, s_u, s_r, s_r_hat) = E(x, head y, transformer y')
  s_hat(a) = s + a * (s_r_hat - s_r)            (a = degree; a = 1: s_u + s_r_hat)
  x_hat = G(x, s_hat(a), M)                     (not clamped)

`variables` is the tree of a converted 'l2m_gan' checkpoint
(`l2m_jax.convert.l2m.load_l2m_checkpoint`): {'generator', 'style_encoder'
[, 'fan' or 'landmarks']}; `config` is its `L2MModelConfig` (a static
argument). With 'landmarks' (a `l2m_jax.models.landmarks.LandmarkNet`
trained on generated faces) the masks come from it instead of the FAN.

`input_warnings` says when images do not look like what a checkpoint was
trained on (scripts/edit.py prints them).
"""

from __future__ import annotations

import functools
import pathlib
from typing import Any, Iterable, Mapping

import jax
import jax.numpy as jnp

from l2m_jax.models import l2m as l2m_models


def _labels(value: Any, n: int, name: str) -> jax.Array:
  v = jnp.asarray(value, jnp.int32)
  if v.ndim == 0:
    return jnp.full((n,), v, jnp.int32)
  if v.shape != (n,):
    raise ValueError(f'{name} must be a scalar or have shape ({n},), got '
                     f'{tuple(v.shape)}')
  return v


def _check(variables: Mapping[str, Any], images: jax.Array,
           config: l2m_models.L2MModelConfig) -> None:
  need = ['generator', 'style_encoder']
  if config.w_hpf > 0 and 'landmarks' not in variables:
    need.append('fan')
  absent = [k for k in need if k not in variables]
  if absent:
    raise ValueError(f'edit: variables lack {absent} (have '
                     f'{sorted(variables)}); load them with '
                     'l2m_jax.convert.l2m.load_l2m_checkpoint')
  s = config.img_size
  if images.ndim != 4 or tuple(images.shape[1:]) != (s, s, 3):
    raise ValueError(f'edit: images must be [N, {s}, {s}, 3] in [-1, 1] for '
                     f'this model (img_size {s}), got {tuple(images.shape)}')


def styles_and_masks(variables: Mapping[str, Any], images: jax.Array,
                     source_domain: Any, target_domain: Any, *,
                     config: l2m_models.L2MModelConfig,
                     dtype: Any = jnp.float32):
  """Everything of the edit except the generator pass.

  Returns:
    (s, s_r, s_r_hat, masks): codes [N, style_dim] and masks (m1, m2) each
    [N, 256, 256, 1], or None when config.w_hpf == 0.
  """
  _check(variables, images, config)
  n = images.shape[0]
  y = _labels(source_domain, n, 'source_domain')
  y1 = _labels(target_domain, n, 'target_domain')
  _, enc = l2m_models.build_models(config, dtype)
  s, _, s2, s3 = enc.apply(variables['style_encoder'], images, y, y1)
  masks = None
  if config.w_hpf > 0 and 'landmarks' in variables:
    from l2m_jax.models import landmarks  # pylint: disable=g-import-not-at-top
    masks = landmarks.get_masks(variables['landmarks'], images,
                                config.img_size)
  elif config.w_hpf > 0:
    from l2m_jax.models import fan  # pylint: disable=g-import-not-at-top
    masks = fan.get_masks(variables['fan'], images, dtype=dtype)
  return s, s2, s3, masks


@functools.partial(jax.jit, static_argnames=('config', 'dtype'))
def edit(variables: Mapping[str, Any], images: jax.Array, source_domain: Any,
         target_domain: Any, degree: Any = 1.0, *,
         config: l2m_models.L2MModelConfig,
         dtype: Any = jnp.float32) -> jax.Array:
  """Edits a batch of images from `source_domain` towards `target_domain`.

  Args:
    variables: {'generator', 'style_encoder'[, 'fan']} variables.
    images: [N, S, S, 3] float in [-1, 1], S = config.img_size.
    source_domain: int scalar or [N]: the `unshared` head (domain of x).
    target_domain: int scalar or [N]: the `transform2` head.
    degree: edit strength a, scalar or [N] (0: the unedited code s; 1: the
      official edit; > 1 extrapolates).
    config: model config (static).
    dtype: compute dtype (parameters stay float32).

  Returns:
    [N, S, S, 3] float32 edited images, not clamped.
  """
  images = jnp.asarray(images, jnp.float32)
  s, s2, s3, masks = styles_and_masks(variables, images, source_domain,
                                      target_domain, config=config,
                                      dtype=dtype)
  a = jnp.asarray(degree, jnp.float32)
  a = a[:, None] if a.ndim == 1 else a
  s_hat = s + a * (s3 - s2)  # s_hat(a), docs/method.md#l2m-edit
  gen, _ = l2m_models.build_models(config, dtype)
  return gen.apply(variables['generator'], images, s_hat, masks)


@functools.partial(jax.jit, static_argnames=('config', 'dtype'))
def edit_sweep(variables: Mapping[str, Any], images: jax.Array,
               source_domain: Any, target_domain: Any, degrees: Any, *,
               config: l2m_models.L2MModelConfig,
               dtype: Any = jnp.float32) -> jax.Array:
  """`edit` at several degrees; style codes and masks are computed once.

  Args:
    degrees: [D] edit strengths.
    (other arguments as in `edit`)

  Returns:
    [D, N, S, S, 3] float32: out[d] == edit(..., degrees[d]).
  """
  images = jnp.asarray(images, jnp.float32)
  s, s2, s3, masks = styles_and_masks(variables, images, source_domain,
                                      target_domain, config=config,
                                      dtype=dtype)
  gen, _ = l2m_models.build_models(config, dtype)
  delta = s3 - s2

  def one(a):
    return gen.apply(variables['generator'], images, s + a * delta, masks)

  return jax.lax.map(one, jnp.asarray(degrees, jnp.float32).reshape(-1))


# Inputs more than this many times the model's side are "far larger".
LARGE_INPUT_FACTOR = 4
# config.training_data prefix of models of the generated faces.
SYNTHETIC_DATA = 'synthetic_faces'


def input_warnings(config: l2m_models.L2MModelConfig,
                   image_paths: Iterable[str | pathlib.Path] = ()
                   ) -> list[str]:
  """Warnings when inputs do not look like the checkpoint's training data.

  Args:
    config: the checkpoint's config (its `training_data` and `img_size`).
    image_paths: the input images (only their headers are read).

  Returns:
    Messages: one if the checkpoint was trained on the generated faces
    (`l2m_jax.datasets.synthetic_faces`), one if any input is more than
    LARGE_INPUT_FACTOR times larger than the model's side.
  """
  out = []
  if str(config.training_data).startswith(SYNTHETIC_DATA):
    out.append(
        f'this checkpoint was trained on the generated cartoon faces '
        f'({config.training_data}, {config.img_size} px); it edits those, '
        'not photos: on real faces its output is noise. For photos use a '
        'converted official checkpoint (docs/editing.md).')
  from PIL import Image  # pylint: disable=g-import-not-at-top
  large = []
  for p in image_paths:
    try:
      with Image.open(p) as im:
        w, h = im.size
    except Exception:  # pylint: disable=broad-except
      continue  # unreadable files are reported by the loader
    if max(w, h) > LARGE_INPUT_FACTOR * config.img_size:
      large.append(f'{pathlib.Path(p).name} ({w}x{h})')
  if large:
    shown = ', '.join(large[:3]) + (f' and {len(large) - 3} more'
                                    if len(large) > 3 else '')
    out.append(
        f'{len(large)} input(s) are far larger than the model\'s '
        f'{config.img_size} px ({shown}); they are downscaled to '
        f'{config.img_size} px, and the model only knows images like its '
        'training data at that size.')
  return out
