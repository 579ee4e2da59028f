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

This module is the one place where the edit is composed: `style_codes`,
`edited_style` and the un-jitted `edit_core` / `sweep_core` serve the
jitted `edit` / `edit_sweep` here, the training step (the training edit
s_hat = s_u + s_r_hat, docs/method.md#l2m-training) and the sample grids of
a training run.

`input_warnings` says when images do not look like what a checkpoint was
trained on (scripts/edit.py prints them).
"""

from __future__ import annotations

import functools
import pathlib
from typing import Any, Iterable, Mapping, NamedTuple

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


class StyleCodes(NamedTuple):
  """The four codes of the style encoder (docs/method.md#l2m-style-codes).

  Each [N, style_dim] float32; the upstream names are (s, s1, s2, s3).
  """
  s: jax.Array  # E_y(x), from the head of the source domain y
  s_u: jax.Array  # P(s), the attribute-irrelevant code (`transform1`)
  s_r: jax.Array  # s - s_u, the attribute-relevant code
  s_r_hat: jax.Array  # T_y'(s_r), the edited relevant code (`transform2[y']`)


def style_codes(style_encoder: Any, encoder_variables: Mapping[str, Any],
                images: jax.Array, source_domain: jax.Array,
                target_domain: jax.Array) -> StyleCodes:
  """E(x, y, y'): (s, s_u, s_r, s_r_hat) of `images` (un-jitted)."""
  return StyleCodes(*style_encoder.apply(encoder_variables, images,
                                         source_domain, target_domain))


def edited_style(codes: StyleCodes, degree: Any = None) -> jax.Array:
  """The edited style code s_hat (docs/method.md#l2m-edit).

  Args:
    codes: the style codes of the sources.
    degree: None for the training edit s_hat = s_u + s_r_hat
      (docs/method.md#l2m-training); otherwise the edit strength a (scalar
      or [N, 1]) of s_hat(a) = s + a * (s_r_hat - s_r), the official
      evaluation's edit (a = 1 equals s_u + s_r_hat up to round-off).
  """
  if degree is None:
    return codes.s_u + codes.s_r_hat
  return codes.s + degree * (codes.s_r_hat - codes.s_r)


def edit_core(generator: Any, style_encoder: Any,
              generator_variables: Mapping[str, Any],
              encoder_variables: Mapping[str, Any], images: jax.Array,
              source_domain: jax.Array, target_domain: jax.Array,
              masks: Any, degree: Any = None
              ) -> tuple[jax.Array, StyleCodes, jax.Array]:
  """One edit, un-jitted: the train step and `edit` call it.

  Args:
    generator, style_encoder: the linen modules.
    generator_variables, encoder_variables: their variables.
    images: [N, S, S, 3] in [-1, 1].
    source_domain, target_domain: [N] int labels (y, y').
    masks: the landmark masks of `images` (or None without w_hpf).
    degree: as in `edited_style` (None: the training edit).

  Returns:
    (x_hat [N, S, S, 3] not clamped, the style codes, s_hat).
  """
  codes = style_codes(style_encoder, encoder_variables, images,
                      source_domain, target_domain)
  s_hat = edited_style(codes, degree)
  x_hat = generator.apply(generator_variables, images, s_hat, masks)
  return x_hat, codes, s_hat


def sweep_core(generator: Any, style_encoder: Any,
               generator_variables: Mapping[str, Any],
               encoder_variables: Mapping[str, Any], images: jax.Array,
               source_domain: jax.Array, target_domain: jax.Array,
               masks: Any, degrees: Any) -> jax.Array:
  """Edits at several degrees, un-jitted; the codes are computed once.

  Args:
    degrees: [D] edit strengths.
    (other arguments as in `edit_core`)

  Returns:
    [D, N, S, S, 3]: out[d] is the edit at degrees[d] (not clamped).
  """
  codes = style_codes(style_encoder, encoder_variables, images,
                      source_domain, target_domain)
  delta = codes.s_r_hat - codes.s_r
  # s_hat(a) = s + a * (s_r_hat - s_r) with the difference taken once;
  # `edited_style` is the same formula for one degree.

  def one(a):
    return generator.apply(generator_variables, images, codes.s + a * delta,
                           masks)

  return jax.lax.map(one, jnp.asarray(degrees, jnp.float32).reshape(-1))


def labels_and_masks(variables: Mapping[str, Any], images: jax.Array,
                     source_domain: Any, target_domain: Any, *,
                     config: l2m_models.L2MModelConfig,
                     dtype: Any = jnp.float32):
  """The labels and the masks of a checkpoint edit (checked inputs).

  Returns:
    (y, y', masks): labels [N] int32 and masks (m1, m2) each
    [N, 256, 256, 1], or None when config.w_hpf == 0.
  """
  _check(variables, images, config)
  n = images.shape[0]
  y = _labels(source_domain, n, 'source_domain')
  y_trg = _labels(target_domain, n, 'target_domain')
  masks = None
  if config.w_hpf > 0 and 'landmarks' in variables:
    from l2m_jax.models import landmarks  # pylint: disable=g-import-not-at-top
    masks = landmarks.get_masks(variables['landmarks'], images,
                                config.img_size)
  elif config.w_hpf > 0:
    from l2m_jax.models import fan  # pylint: disable=g-import-not-at-top
    masks = fan.get_masks(variables['fan'], images, dtype=dtype)
  return y, y_trg, masks


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
  y, y_trg, masks = labels_and_masks(variables, images, source_domain,
                                     target_domain, config=config,
                                     dtype=dtype)
  a = jnp.asarray(degree, jnp.float32)
  a = a[:, None] if a.ndim == 1 else a
  gen, enc = l2m_models.build_models(config, dtype)
  return edit_core(gen, enc, variables['generator'],
                   variables['style_encoder'], images, y, y_trg, masks,
                   degree=a)[0]


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
  y, y_trg, masks = labels_and_masks(variables, images, source_domain,
                                     target_domain, config=config,
                                     dtype=dtype)
  gen, enc = l2m_models.build_models(config, dtype)
  return sweep_core(gen, enc, variables['generator'],
                    variables['style_encoder'], images, y, y_trg, masks,
                    degrees)


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
