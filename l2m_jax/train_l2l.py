"""Latent-To-Latent training: networks, data, per-device step, eval, the loop.

Trains the mapper of Khodadadeh et al., "Latent to Latent: A Learned Mapper
for Identity Preserving Editing of Multiple Face Attributes in
StyleGAN-generated Images" (WACV 2022), in one of two modes
(`config.mode`; docs/latent_to_latent.md):

* legacy: the unofficial 850552586/Latent-To-Latent `training/trainer.py`.
  One attribute; the mapper input is pre-shifted along the attribute's
  InterFaceGAN normal, `w_n = 0.7 w + 0.3 M(w + k d)` (k = 2), and the
  classifier's score of `G(w + k d)` is the attribute target. Losses
  (l2m_jax/l2l_losses.py): 0.5 cycle + 1 attribute + 0.5 zero-edit +
  0.5 neighbourhood; the original's face-identity term has no gradient
  (it detaches the images), so it is left out; a differentiable ArcFace
  term can be added with `lambda_face_id` (0 by default).
* paper: a vector of desired attribute changes `delta` conditions the
  mapper, `w' = w + M(w, delta)`; the attribute regressor's probabilities
  `a = s(R(G(w)))` are pushed to `clip(a + delta, 0, 1)` over all
  attributes, with a differentiable ArcFace identity term, neighbourhood,
  zero-edit and cycle terms.

Only the mapper is trained (Adam, lr 1e-3 as the original). The StyleGAN2
generator, the attribute classifier, the identity network and the boundary
direction are frozen pytrees passed to the step as arguments, with
`stop_gradient`: their gradients are never computed.

Data (`config.data_source`): 'sampled' (z ~ N(0, I) through the mapping
network, drawn on the device from (seed, example index), so a resume needs
no data state), 'inverted' (a folder of photos inverted once with ReStyle-e4e
and cached in the workdir) or 'latents' (an .npy of W+ codes). The latents
sources hold out a seeded eval split. No TensorFlow is needed.

`train_step` is written per device and compiled by `parallel.compile_step`
(jit + shard_map or pmap); gradients and metrics are averaged over 'data'
with `lax.pmean`, so N devices equal one device on the same global batch.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import pathlib
from typing import Any, Mapping

from absl import logging
from flax import struct
from flax.training import train_state as flax_train_state
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from l2m_jax import checkpointing
from l2m_jax import image_io
from l2m_jax import l2l_losses
from l2m_jax import latent_editing
from l2m_jax import parallel
from l2m_jax import training
from l2m_jax.convert import mapper as mapper_convert
from l2m_jax.convert import torch_to_flax as t2f
from l2m_jax.models import arcface
from l2m_jax.models import branched_tiny
from l2m_jax.models import mapper as mapper_lib
from l2m_jax.models import stylegan2
from l2m_jax.models import tiny_frozen

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}
MODES = ('legacy', 'paper')
DATA_SOURCES = ('sampled', 'inverted', 'latents')
INVERTED_CACHE = 'inverted_latents.npy'
EXPORT_DIR = 'mapper_export'
BEST_EXPORT_DIR = 'mapper_best'

# Mapper conditioning order for the 40-attribute classifier: the CelebA
# order of the boundaries file, which scripts/edit_latent.py --delta uses.
CELEBA_ATTRIBUTES = latent_editing.CELEBA_ATTRIBUTES


class TrainState(flax_train_state.TrainState):
  """Params and Adam state of the mapper."""


@struct.dataclass
class L2LTrainState:
  """Everything a checkpoint holds, as one pytree.

  Attributes:
    step: completed iterations (int32); also the data position.
    rng: raw uint32 key data [2] (request and latent sampling keys).
    mapper: the mapper's TrainState.
  """
  step: jax.Array
  rng: jax.Array
  mapper: TrainState


@dataclasses.dataclass(frozen=True)
class Networks:
  """Modules and static facts of a run (hyperparameters only, no arrays).

  Attributes:
    generator: the StyleGAN2 `Generator` (frozen).
    mapper: the `Latent2Latent` being trained.
    classifier: BranchedTiny or TinyAttributeNet module.
    classifier_kind: 'branched_tiny' or 'random'.
    classifier_names: attribute names in the classifier's output order.
    cond_names: attribute names in the mapper's conditioning order (paper).
    cond_perm: classifier output index of each conditioning entry.
    trained: conditioning indices of the trained attributes (paper), or
      the one classifier index of the legacy attribute.
    identity: ArcFace or TinyIdentityNet module, or None.
    identity_kind: 'arcface', 'random' or None.
  """
  generator: Any
  mapper: Any
  classifier: Any
  classifier_kind: str
  classifier_names: tuple[str, ...]
  cond_names: tuple[str, ...]
  cond_perm: tuple[int, ...]
  trained: tuple[int, ...]
  identity: Any
  identity_kind: str | None
  classifier_resize: str = 'nearest'
  noise_mode: str = 'const'
  mode: str = 'paper'

  @property
  def trained_names(self) -> tuple[str, ...]:
    if self.mode == 'legacy':
      return tuple(self.classifier_names[i] for i in self.trained)
    return tuple(self.cond_names[i] for i in self.trained)


# ---------------------------------------------------------------------------
# Config checks and network loading (all before any training)
# ---------------------------------------------------------------------------


def _check_config(config: ml_collections.ConfigDict) -> None:
  if config.mode not in MODES:
    raise ValueError(f'mode={config.mode!r}: expected one of {MODES}')
  if config.data_source not in DATA_SOURCES:
    raise ValueError(f'data_source={config.data_source!r}: expected one of '
                     f'{DATA_SOURCES}')
  if config.dtype not in DTYPES:
    raise ValueError(f'dtype={config.dtype!r}: expected one of '
                     f'{sorted(DTYPES)}')
  if config.noise_mode not in ('const', 'none'):
    raise ValueError(f"noise_mode={config.noise_mode!r}: expected 'const' "
                     "(stored noise, as the original) or 'none'")
  for name in ('lambda_cycle', 'lambda_attr', 'lambda_zero',
               'lambda_neighbour', 'lambda_face_id'):
    if float(config[name]) < 0:
      raise ValueError(f'{name}={config[name]}: must be >= 0')
  for name in ('total_steps', 'log_every', 'save_every', 'keep_checkpoints',
               'eval_batch_size'):
    if int(config[name]) < 1:
      raise ValueError(f'{name}={config[name]}: must be >= 1')
  if int(config.eval_every) < 0:
    raise ValueError(f'eval_every={config.eval_every}: must be >= 0')
  if not 0 < float(config.truncation) <= 1:
    raise ValueError(f'truncation={config.truncation}: must be in (0, 1]')
  if config.mode == 'paper' and not 0 < float(config.delta_prob) <= 1:
    raise ValueError(f'delta_prob={config.delta_prob}: must be in (0, 1]')


def _need(config, field: str, what: str) -> str:
  path = str(config[field] or '')
  if not path:
    raise ValueError(
        f'{field} is empty: {what} is required (or set random_networks=True '
        'for a test run with random networks)')
  if not pathlib.Path(path).exists():
    raise FileNotFoundError(f'{field}={path!r}: no such file or directory '
                            f'({what})')
  return path


def _loud_random(what: str):
  logging.warning('!' * 72)
  logging.warning('!!! %s: RANDOM weights (random_networks=True); results are '
                  'meaningless for anything but testing the code.', what)
  logging.warning('!' * 72)


def load_networks(config: ml_collections.ConfigDict
                  ) -> tuple[Networks, dict[str, Any]]:
  """The modules and the frozen variables of a run, validated.

  Returns:
    (Networks, frozen {'generator', 'classifier', 'identity'?,
    'direction'?: arrays}).

  Raises:
    ValueError / FileNotFoundError: naming the config field: a missing
      frozen network, an attribute the classifier does not have, a
      generator whose W+ does not fit the mapper, a bad value.
  """
  _check_config(config)
  dtype = DTYPES[config.dtype]
  frozen = {}
  rnd = config.random_networks
  if rnd:
    r = config.random_net
    generator = stylegan2.Generator(
        size=int(r.size), style_dim=int(r.style_dim), n_mlp=int(r.n_mlp),
        channel_base=int(r.channel_base), channel_multiplier=1, dtype=dtype)
    _loud_random('generator')
    g_vars = _random_generator_vars(generator.clone(dtype=jnp.float32),
                                    int(config.seed))
  else:
    from l2m_jax.convert import stylegan2 as sg_convert  # pylint: disable=g-import-not-at-top
    path = _need(config, 'generator_checkpoint',
                 'a converted StyleGAN2 (scripts/convert_latent.py stylegan2)')
    generator, g_vars, _ = sg_convert.load_generator(path)
    generator = generator.clone(dtype=dtype)
  frozen['generator'] = g_vars

  # Attribute classifier / regressor.
  if rnd:
    names = tuple(config.random_net.attributes)
    classifier = tiny_frozen.TinyAttributeNet(num_outputs=len(names),
                                              dtype=dtype)
    _loud_random('attribute regressor')
    frozen['classifier'] = _calibrated_regressor(
        classifier.clone(dtype=jnp.float32), generator, g_vars,
        int(config.seed), float(config.random_net.logit_std))
    kind = 'random'
    cond_names = names
  else:
    from l2m_jax.convert import branched_tiny as bt_convert  # pylint: disable=g-import-not-at-top
    path = _need(config, 'classifier_checkpoint',
                 'a converted BranchedTiny (convert_latent.py classifier)')
    classifier, frozen['classifier'], _ = bt_convert.load_classifier(path)
    classifier = classifier.clone(dtype=dtype)
    names = tuple(branched_tiny.ATTRIBUTES)
    kind = 'branched_tiny'
    cond_names = CELEBA_ATTRIBUTES
  cond_perm = tuple(names.index(n) for n in cond_names)

  def index_of(field, name, pool):
    key = str(name).lower()
    if key not in pool:
      raise ValueError(f'{field}={config[field]!r}: unknown attribute '
                       f'{name!r}; the classifier ({kind}) has: '
                       f'{", ".join(pool)}')
    return pool.index(key)

  if config.mode == 'legacy':
    trained = (index_of('attribute', config.attribute, names),)
  else:
    attrs = tuple(config.attributes)
    if attrs == ('all',):
      attrs = cond_names
    trained = tuple(index_of('attributes', a, cond_names) for a in attrs)
    if len(set(trained)) != len(trained):
      raise ValueError(f'attributes={attrs}: names repeat')
    for a in config.sample_attributes:
      index_of('sample_attributes', a, cond_names)

  # Identity network (required by the face-identity term and the eval).
  identity, id_kind = None, None
  need_id = float(config.lambda_face_id) > 0 or config.eval_identity
  if need_id:
    if rnd:
      identity = tiny_frozen.TinyIdentityNet(
          embed_dim=int(config.random_net.embed_dim), dtype=dtype)
      _loud_random('identity network')
      frozen['identity'] = _random_vars(
          identity.clone(dtype=jnp.float32), int(config.seed), 3,
          generator.size)
      id_kind = 'random'
    else:
      from l2m_jax.convert import arcface as af_convert  # pylint: disable=g-import-not-at-top
      why = ('a converted ArcFace IR-SE-50 (convert_latent.py arcface) for '
             'the identity term / eval; set lambda_face_id=0 and '
             'eval_identity=False to train without one')
      path = _need(config, 'arcface_checkpoint', why)
      identity, frozen['identity'], _ = af_convert.load_arcface(path)
      identity = identity.clone(dtype=dtype)
      id_kind = 'arcface'

  # The mapper, checked against the generator's W+.
  bounds = tuple(int(b) for b in config.mapper_bounds)
  if not 0 < bounds[0] < bounds[1] < generator.n_latent:
    raise ValueError(
        f'mapper_bounds={bounds}: the coarse/medium/fine row boundaries must '
        f'satisfy 0 < a < b < {generator.n_latent} (the W+ rows of the '
        f'{generator.size} px generator)')
  cond_dim = len(cond_names) if config.mode == 'paper' else 0
  mcfg = mapper_config(config, generator.n_latent, generator.style_dim,
                       cond_dim)
  mapper = mapper_convert.build_model(mcfg)
  if config.init_mapper:
    init_model, _, _ = _load_init_mapper(config)
    for f in ('n_latent', 'style_dim'):
      if getattr(init_model, f) != getattr(mapper, f):
        raise ValueError(
            f'init_mapper={config.init_mapper!r}: the mapper has {f} '
            f'{getattr(init_model, f)} but the generator '
            f'({generator.size} px) needs {getattr(mapper, f)}: a '
            'generator/mapper size mismatch')

  if config.mode == 'legacy':
    frozen['direction'] = _load_direction(config, generator.style_dim)

  nets = Networks(
      generator=generator, mapper=mapper, classifier=classifier,
      classifier_kind=kind, classifier_names=names, cond_names=cond_names,
      cond_perm=cond_perm, trained=trained, identity=identity,
      identity_kind=id_kind, classifier_resize=str(config.classifier_resize),
      noise_mode=str(config.noise_mode), mode=str(config.mode))
  return nets, frozen


@functools.lru_cache(maxsize=4)
def _random_generator_vars_cached(generator, seed: int):
  rng = jax.random.fold_in(jax.random.key(seed), 1000)
  g_vars = jax.tree.map(np.asarray, stylegan2.init_variables(
      generator, jax.random.fold_in(rng, 0)))
  mean = np.asarray(jax.jit(functools.partial(
      generator.apply, method=generator.mean_latent))(
          g_vars, jax.random.fold_in(rng, 1)))
  g_vars['constants'] = {'latent_avg': np.broadcast_to(
      mean, (generator.n_latent, generator.style_dim)).copy()}
  return g_vars


def _random_generator_vars(generator, seed: int):
  """Random generator variables (latent_avg = its mean w); cached per
  process, as random initialisation compiles slowly on CPUs."""
  return jax.tree.map(np.copy, _random_generator_vars_cached(generator, seed))


@functools.lru_cache(maxsize=8)
def _random_vars_cached(model, seed: int, salt: int, size: int):
  rng = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), 1000),
                           salt)
  return jax.tree.map(np.asarray, tiny_frozen.init_variables(model, rng, size))


def _random_vars(model, seed: int, salt: int, size: int):
  return jax.tree.map(np.copy, _random_vars_cached(model, seed, salt, size))


def _calibrated_regressor(classifier, generator, g_vars, seed: int,
                          logit_std: float):
  """A random TinyAttributeNet whose logits on generated faces are
  standardised to mean 0 and std `logit_std` per output (a raw random head
  gives near-constant probabilities, which no edit could change)."""
  c_vars = _random_vars(classifier, seed, 2, generator.size)
  z = jax.random.normal(jax.random.fold_in(jax.random.key(seed), 1001),
                        (64, generator.style_dim))
  logits = jax.jit(lambda g, c, z: classifier.apply(c, generator.apply(
      g, z, noise_mode='const')))(g_vars, c_vars, z)
  mean = np.asarray(jnp.mean(logits, 0))
  scale = logit_std / np.maximum(np.asarray(jnp.std(logits, 0)), 1e-6)
  head = c_vars['params']['head']
  head['kernel'] = (np.asarray(head['kernel']) * scale).astype(np.float32)
  head['bias'] = ((np.asarray(head['bias']) - mean) * scale).astype(
      np.float32)
  return c_vars


def mapper_config(config, n_latent: int, style_dim: int, cond_dim: int
                  ) -> dict[str, Any]:
  """The converted-mapper config (convert/mapper.py CONFIG_FIELDS)."""
  legacy = config.mode == 'legacy'
  return dict(style_dim=int(style_dim), n_latent=int(n_latent),
              bounds=[int(b) for b in config.mapper_bounds],
              n_layers=int(config.mapper_layers),
              lr_mul=float(config.mapper_lr_mul), cond_dim=int(cond_dim),
              combine='blend' if legacy else 'residual',
              alpha=float(config.alpha), zero_init_last=not legacy,
              preset=str(config.mode))


def _load_init_mapper(config):
  try:
    return mapper_convert.load_mapper(config.init_mapper)
  except (FileNotFoundError, ValueError) as e:
    raise ValueError(f'init_mapper={config.init_mapper!r}: {e}') from None


def _load_direction(config, dim: int) -> np.ndarray:
  """The legacy attribute's unit boundary normal [dim]."""
  if config.random_networks and not config.boundaries:
    _loud_random('boundary direction')
    d = np.random.default_rng(int(config.seed)).standard_normal(dim)
    return (d / np.linalg.norm(d)).astype(np.float32)
  path = _need(config, 'boundaries', 'the InterFaceGAN boundaries file '
               '(.pt or converted) for the legacy pre-shift')
  directions, names = mapper_convert.load_boundaries(path)
  try:
    idx = mapper_convert.find_attribute(names, config.attribute)
  except ValueError:
    raise ValueError(f'attribute={config.attribute!r}: unknown attribute in '
                     f'boundaries={path!r}; it has: {", ".join(names)}'
                     ) from None
  if directions.shape[1] != dim:
    raise ValueError(f'boundaries={path!r}: directions of width '
                     f'{directions.shape[1]}, the generator uses {dim}')
  return directions[idx].astype(np.float32)


# ---------------------------------------------------------------------------
# Frozen-network functions (pure; frozen variables are arguments)
# ---------------------------------------------------------------------------


def render(nets: Networks, g_vars: Any, w: jax.Array) -> jax.Array:
  """G(w) [B, S, S, 3] from W+ [B, n, D] with the stored noise."""
  return nets.generator.apply(g_vars, w, input_is_latent=True,
                              noise_mode=nets.noise_mode).astype(jnp.float32)


def attribute_logits(nets: Networks, c_vars: Any, images: jax.Array
                     ) -> jax.Array:
  """Classifier logits [B, A] in the classifier's output order."""
  if nets.classifier_kind == 'branched_tiny':
    x = branched_tiny.classifier_input(c_vars, images, nets.classifier_resize)
    return nets.classifier.apply(c_vars, x)
  return nets.classifier.apply(c_vars, images)


def identity_embed(nets: Networks, i_vars: Any, images: jax.Array
                   ) -> jax.Array:
  """Unit identity embeddings [B, E] (ArcFace on pSp's identity crop)."""
  if nets.identity_kind == 'arcface':
    return nets.identity.apply(i_vars, arcface.identity_crop(images))
  return nets.identity.apply(i_vars, images)


def sample_latents(nets: Networks, g_vars: Any, key: jax.Array,
                   index: jax.Array, truncation: float) -> jax.Array:
  """W+ [B, n, D] of z ~ N(0, I) drawn from (key, example index)."""
  g = nets.generator
  z = jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(key, i),
                                           (g.style_dim,)))(index)
  w = g.apply(g_vars, z, method=g.mapping).astype(jnp.float32)
  if truncation < 1:
    t = jnp.asarray(g_vars['constants']['latent_avg'], jnp.float32)[0]
    w = t + truncation * (w - t)
  return jnp.broadcast_to(w[:, None], (w.shape[0], g.n_latent, g.style_dim))


def sample_deltas(nets: Networks, key: jax.Array, index: jax.Array,
                  delta_max: float, delta_prob: float) -> jax.Array:
  """Requested changes [B, A] (conditioning order) from (key, index).

  Each trained attribute is requested with probability `delta_prob`, by
  U(-delta_max, delta_max); the other attributes get 0.
  """
  a = len(nets.cond_names)
  trained = np.zeros(a, bool)
  trained[list(nets.trained)] = True

  def one(i):
    k1, k2 = jax.random.split(jax.random.fold_in(key, i))
    on = jax.random.bernoulli(k1, delta_prob, (a,)) & trained
    val = jax.random.uniform(k2, (a,), minval=-delta_max, maxval=delta_max)
    return jnp.where(on, val, 0.0)
  return jax.vmap(one)(index)


# ---------------------------------------------------------------------------
# Losses of one batch
# ---------------------------------------------------------------------------


def _weights(config) -> dict[str, float]:
  return {'cycle': float(config.lambda_cycle),
          'attribute': float(config.lambda_attr),
          'zero_edit': float(config.lambda_zero),
          'neighbourhood': float(config.lambda_neighbour),
          'face_id': float(config.lambda_face_id)}


def legacy_losses(params: Any, frozen: Mapping[str, Any], w: jax.Array, *,
                  nets: Networks, config: ml_collections.ConfigDict,
                  for_eval: bool = False
                  ) -> tuple[jax.Array, dict[str, jax.Array], dict[str, Any]]:
  """The unofficial training objective on one batch (l2l_losses docstring).

  G(w) is rendered only when needed: for the identity term (weight > 0) or
  the eval (`for_eval`, also the unedited scores and the identity metric).

  Returns:
    (total, {term: value, 'loss': total}, aux {'w_edit', 'p_orig',
    'p_edit', 'p_target', 'id_sim'?}).
  """
  m = nets.mapper
  alpha = float(config.alpha)
  k = float(config.shift)
  d = jnp.reshape(frozen['direction'], (1, 1, -1))
  blend = lambda x: (1.0 - alpha) * w + alpha * m.apply({'params': params}, x)
  w_a = w + k * d
  w_n = blend(w_a)
  w_c = blend(w_n - k * d)
  w_0 = blend(w + 0.0 * d)
  wt = _weights(config)
  use_id = nets.identity is not None and (wt['face_id'] > 0 or for_eval)
  with_orig = use_id or for_eval
  b = w.shape[0]
  rows = [w_n, jax.lax.stop_gradient(w_a)] + ([w] if with_orig else [])
  imgs = render(nets, frozen['generator'], jnp.concatenate(rows, 0))
  logits = attribute_logits(nets, frozen['classifier'], imgs)[
      :, nets.trained[0]]
  l_edit, l_target = logits[:b], logits[b:2 * b]
  l_orig = logits[2 * b:] if with_orig else l_target
  terms = {
      'cycle': l2l_losses.cycle_loss(w_c, w),
      'attribute': l2l_losses.legacy_attribute_loss(l_edit, l_target),
      'zero_edit': l2l_losses.zero_edit_loss(w_0, w),
      'neighbourhood': l2l_losses.neighbourhood_loss(w_n, w),
  }
  aux = {'w_edit': w_n, 'p_orig': jax.nn.sigmoid(l_orig),
         'p_edit': jax.nn.sigmoid(l_edit), 'p_target': jax.nn.sigmoid(l_target),
         'zero_disp': jnp.mean(jnp.abs(w_0 - w), axis=(1, 2))}
  if use_id:
    emb = identity_embed(nets, frozen['identity'],
                         jnp.concatenate([imgs[:b], imgs[2 * b:]], 0))
    terms['face_id'] = l2l_losses.face_identity_loss(emb[:b], emb[b:])
    aux['id_sim'] = jnp.sum(emb[:b] * jax.lax.stop_gradient(emb[b:]), -1)
  total = sum(wt[n] * v for n, v in terms.items())
  return total, {**terms, 'loss': total}, aux


def paper_losses(params: Any, frozen: Mapping[str, Any], w: jax.Array,
                 delta: jax.Array, *, nets: Networks,
                 config: ml_collections.ConfigDict, for_eval: bool = False
                 ) -> tuple[jax.Array, dict[str, jax.Array], dict[str, Any]]:
  """The paper-mode objective on one batch (l2l_losses docstring).

  Args:
    delta: requested changes [B, A] in the conditioning order.
    for_eval: also the identity similarity when its weight is 0.

  Returns:
    (total, {term: value, 'loss': total}, aux {'w_edit', 'p_orig',
    'p_edit' (conditioning order), 'zero_disp', 'id_sim'?}).
  """
  m = nets.mapper
  edit = lambda x, dl: x + m.apply({'params': params}, x, dl)
  w_e = edit(w, delta)
  w_c = edit(w_e, -delta)
  w_0 = edit(w, jnp.zeros_like(delta))
  b = w.shape[0]
  imgs = render(nets, frozen['generator'], jnp.concatenate([w_e, w], 0))
  logits = attribute_logits(nets, frozen['classifier'], imgs)
  logits = logits[:, np.asarray(nets.cond_perm)]
  p_orig = jax.lax.stop_gradient(jax.nn.sigmoid(logits[b:]))
  wt = _weights(config)
  terms = {
      'attribute': l2l_losses.paper_attribute_loss(
          logits[:b], p_orig, delta, float(config.attr_changed_weight),
          float(config.attr_kept_weight)),
      'neighbourhood': l2l_losses.neighbourhood_loss(w_e, w),
      'zero_edit': l2l_losses.zero_edit_loss(w_0, w),
      'cycle': l2l_losses.cycle_loss(w_c, w),
  }
  aux = {'w_edit': w_e, 'p_orig': p_orig, 'p_edit': jax.nn.sigmoid(logits[:b]),
         'zero_disp': jnp.mean(jnp.abs(w_0 - w), axis=(1, 2))}
  if nets.identity is not None and (wt['face_id'] > 0 or for_eval):
    emb = identity_embed(nets, frozen['identity'], imgs)
    terms['face_id'] = l2l_losses.face_identity_loss(emb[:b], emb[b:])
    aux['id_sim'] = jnp.sum(emb[:b] * jax.lax.stop_gradient(emb[b:]), -1)
  total = sum(wt[n] * v for n, v in terms.items())
  return total, {**terms, 'loss': total}, aux


# ---------------------------------------------------------------------------
# State, optimiser, per-device step
# ---------------------------------------------------------------------------


def make_optimizer(config) -> optax.GradientTransformation:
  """torch.optim.Adam(lr, betas, eps) (the original: lr 1e-3, defaults)."""
  return optax.adam(float(config.lr), b1=float(config.beta1),
                    b2=float(config.beta2), eps=float(config.adam_eps))


def init_mapper_params(config, nets: Networks, rng: jax.Array) -> Any:
  """Random init (EqualLinear N(0,1)/lr_mul; paper: zero last layer), or
  `config.init_mapper` (a converted mapper; a legacy file in a paper mapper
  gets a zero conditioning block)."""
  m = nets.mapper
  w = jnp.zeros((1, m.n_latent, m.style_dim), jnp.float32)
  delta = jnp.zeros((1, m.cond_dim), jnp.float32) if m.cond_dim else None
  params = m.init(rng, w, delta)['params']
  if config.init_mapper:
    _, variables, _ = _load_init_mapper(config)
    loaded = variables['params']
    flat_new = t2f.flatten(jax.tree.map(np.asarray, params))
    flat_old = t2f.flatten(loaded)
    for key, val in flat_old.items():
      if key in flat_new and np.shape(val) == np.shape(flat_new[key]):
        flat_new[key] = np.asarray(val, np.float32)
    out = {}
    for key, val in flat_new.items():
      t2f.set_path(out, key, val)
    params = out
  return params


def create_train_state(config, nets: Networks, rng: jax.Array
                       ) -> L2LTrainState:
  k1, k2 = jax.random.split(rng)
  params = init_mapper_params(config, nets, k1)
  return L2LTrainState(
      step=jnp.zeros((), jnp.int32), rng=jax.random.key_data(k2),
      mapper=TrainState.create(apply_fn=nets.mapper.apply, params=params,
                               tx=make_optimizer(config)))


def _keys(state_rng: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(latent key, request key) of the run."""
  key = jax.random.wrap_key_data(state_rng)
  return jax.random.fold_in(key, 0), jax.random.fold_in(key, 1)


def batch_latents(nets, config, frozen, batch, latent_key):
  if config.data_source == 'sampled':
    return sample_latents(nets, frozen['generator'], latent_key,
                          batch['index'], float(config.truncation))
  return batch['w']


def train_step(state: L2LTrainState, batch: Mapping[str, jax.Array],
               frozen: Mapping[str, Any], *, nets: Networks,
               config: ml_collections.ConfigDict
               ) -> tuple[L2LTrainState, dict[str, jax.Array]]:
  """One Adam update of the mapper on this device's shard.

  Args:
    state: the replicated train state.
    batch: {'index': [b] int32 global example numbers, 'w'?: [b, n, D]}.
    frozen: {'generator', 'classifier', 'identity'?, 'direction'?}; never
      differentiated.

  Returns:
    (new state, metrics: scalar means over the global batch).
  """
  frozen = jax.lax.stop_gradient(frozen)
  latent_key, delta_key = _keys(state.rng)
  w = jax.lax.stop_gradient(batch_latents(nets, config, frozen, batch,
                                          latent_key))
  if config.mode == 'legacy':
    loss_fn = lambda p: legacy_losses(p, frozen, w, nets=nets,
                                      config=config)[:2]
  else:
    delta = sample_deltas(nets, delta_key, batch['index'],
                          float(config.delta_max), float(config.delta_prob))
    loss_fn = lambda p: paper_losses(p, frozen, w, delta, nets=nets,
                                     config=config)[:2]
  (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.mapper.params)
  grads = jax.lax.pmean(grads, parallel.DATA_AXIS)
  mapper = state.mapper.apply_gradients(grads=grads)
  return (state.replace(step=state.step + 1, mapper=mapper),
          jax.lax.pmean(metrics, parallel.DATA_AXIS))


def compile_train_step(config, nets: Networks, mesh) -> parallel.CompiledStep:
  step = functools.partial(train_step, nets=nets, config=config)
  return parallel.compile_step(step, mesh, config.parallel, num_args=1)


# ---------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------


def _split(n: int, config) -> tuple[np.ndarray, np.ndarray]:
  """(train indices, eval indices) of n latents, seeded (split_seed)."""
  perm = np.random.default_rng(int(config.split_seed)).permutation(n)
  n_eval = int(round(n * float(config.eval_fraction)))
  n_train = int(round(n * float(config.train_fraction)))
  n_train = min(n_train, n - n_eval)
  if n_eval < 1 or n_train < 1:
    raise ValueError(
        f'eval_fraction={config.eval_fraction}, train_fraction='
        f'{config.train_fraction}: {n} latents give {n_eval} eval and '
        f'{n_train} training latents; both must be >= 1')
  return perm[n_eval:n_eval + n_train], perm[:n_eval]


def load_latents_file(path: str, nets: Networks, field: str) -> np.ndarray:
  from l2m_jax import latent_editing as le  # pylint: disable=g-import-not-at-top
  g = nets.generator
  p = pathlib.Path(path)
  if not p.is_file():
    raise FileNotFoundError(f'{field}={path!r}: no such latents file')
  try:
    arr = np.load(p, allow_pickle=False)
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f'{field}={path!r}: not a readable .npy array ({e})'
                     ) from None
  if arr.ndim == 4 and arr.shape[1] == 1:
    arr = arr[:, 0]  # the unofficial code's [B, 1, n, D]
  if arr.ndim != 3 or arr.shape[1:] != (g.n_latent, g.style_dim):
    raise ValueError(
        f'{field}={path!r}: latents of shape {arr.shape}; expected W+ codes '
        f'[N, {g.n_latent}, {g.style_dim}] for the {g.size} px generator')
  return le.normalize_latents(arr, g.n_latent, g.style_dim, source=path)


def invert_photos(config, nets: Networks, workdir: str) -> np.ndarray:
  """W+ codes of config.photos_dir, inverted once and cached in the workdir.

  The cache (`inverted_latents.npy` with `inverted_latents.json`: file
  names, sizes, modification times, n_iters) is reused when it matches the
  folder; every process reads it after the main process writes it.
  """
  folder = _need(config, 'photos_dir', 'a folder of aligned face photos')
  files = image_io.list_images(folder)
  listing = [[p.name, p.stat().st_size, int(p.stat().st_mtime)]
             for p in files]
  cache = pathlib.Path(workdir) / INVERTED_CACHE
  info_file = cache.with_suffix('.json')
  want = {'photos_dir': os.path.abspath(folder), 'files': listing,
          'n_iters': int(config.invert_iters)}
  hit = False
  if cache.is_file() and info_file.is_file():
    try:
      hit = json.loads(info_file.read_text()) == want
    except ValueError:
      hit = False
  if not parallel.all_processes(hit):
    if parallel.is_main_process():
      codes = _invert(config, nets, files)
      np.save(str(cache) + '.tmp.npy', codes)
      os.replace(str(cache) + '.tmp.npy', cache)
      info_file.write_text(json.dumps(want))
    parallel.sync('inverted_cache')
  else:
    logging.info('Reusing the inverted latents cached in %s', cache)
  return load_latents_file(str(cache), nets, 'inverted cache')


def _invert(config, nets, files) -> np.ndarray:
  from l2m_jax import latent_editing as le  # pylint: disable=g-import-not-at-top
  from l2m_jax.convert import restyle as rs_convert  # pylint: disable=g-import-not-at-top
  path = _need(config, 'encoder_checkpoint', 'a converted ReStyle-e4e '
               'encoder (convert_latent.py encoder) to invert photos')
  encoder, enc_vars, generator, g_vars, _ = rs_convert.load_restyle(path)
  g = nets.generator
  if (generator.n_latent, generator.style_dim) != (g.n_latent, g.style_dim):
    raise ValueError(f'encoder_checkpoint={path!r}: its generator uses W+ '
                     f'[{generator.n_latent}, {generator.style_dim}], the '
                     f'training generator [{g.n_latent}, {g.style_dim}]')
  bad = image_io.find_unreadable(files)
  if bad:
    raise image_io.ImageReadError(bad[0][0], bad[0][1] + (
        f' (and {len(bad) - 1} more unreadable)' if len(bad) > 1 else ''))
  inverter = le.Inverter(encoder, enc_vars, generator, g_vars,
                         batch_size=int(config.invert_batch_size),
                         mesh=parallel.local_mesh())
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  codes = []
  chunk = max(1, int(config.invert_batch_size)) * 4
  with tqdm(total=len(files), desc='Inverting photos (ReStyle-e4e)',
            unit='photo') as bar:
    for i in range(0, len(files), chunk):
      imgs = image_io.load_images(files[i:i + chunk], 256)
      codes.append(inverter.invert(imgs, n_iters=int(config.invert_iters)))
      bar.update(len(imgs))
  return np.concatenate(codes, 0).astype(np.float32)


@dataclasses.dataclass
class Data:
  """Training and held-out latents of a run (numpy, host)."""
  train: np.ndarray | None  # [N, n, D]; None for 'sampled'
  eval: np.ndarray  # [N_eval, n, D]


def load_data(config, nets: Networks, frozen, workdir: str) -> Data:
  """The run's latents (validated before training starts)."""
  if config.data_source == 'sampled':
    n = int(config.num_eval)
    if n < 1:
      raise ValueError(f'num_eval={n}: must be >= 1')
    key = jax.random.fold_in(jax.random.key(int(config.split_seed)), 7)
    fn = jax.jit(functools.partial(sample_latents, nets,
                                   truncation=float(config.truncation)))
    w = np.asarray(fn(frozen['generator'], key, jnp.arange(n)))
    return Data(None, w)
  if config.data_source == 'latents':
    w = load_latents_file(
        _need(config, 'latents_file', 'an .npy of W+ codes'), nets,
        'latents_file')
  else:
    w = invert_photos(config, nets, workdir)
  tr, ev = _split(w.shape[0], config)
  logging.info('%d latents: %d for training, %d held out (split_seed %d).',
               w.shape[0], len(tr), len(ev), int(config.split_seed))
  return Data(w[tr], w[ev])


def global_batch_indices(step: int, batch_size: int) -> np.ndarray:
  return np.arange(step * batch_size, (step + 1) * batch_size,
                   dtype=np.int64)


def host_batch(config, data: Data, step: int) -> dict[str, np.ndarray]:
  """This process's share of the global batch of `step` (numpy).

  The position is the step: example j of the run is training latent
  perm_e[j mod N] with perm_e the seeded permutation of epoch e = j // N,
  so a resumed run sees the same data as an uninterrupted one.
  """
  bs = int(config.batch_size)
  index = global_batch_indices(step, bs)
  share = parallel.process_slice(bs)
  index = index[share]
  batch = {'index': (index % (2**31 - 1)).astype(np.int32)}
  if data.train is not None:
    n = data.train.shape[0]
    epochs = index // n
    rows = np.empty(len(index), np.int64)
    for e in np.unique(epochs):
      perm = np.random.default_rng([int(config.seed), int(e)]).permutation(n)
      sel = epochs == e
      rows[sel] = perm[index[sel] % n]
    batch['w'] = data.train[rows]
  return batch


# ---------------------------------------------------------------------------
# Evaluation, samples, export
# ---------------------------------------------------------------------------


def _eval_fn(nets: Networks, config):
  """jit((params, frozen, delta_key, batch) -> per-example eval values)."""

  def one(params, frozen, delta_key, w, index):
    w, index = w[None], index[None]
    if config.mode == 'legacy':
      _, terms, aux = legacy_losses(params, frozen, w, nets=nets,
                                    config=config, for_eval=True)
      req = aux['p_target'] - aux['p_orig']
      out = {'requested': req[:, None], 'achieved':
             (aux['p_edit'] - aux['p_orig'])[:, None],
             'mask': jnp.ones((1, 1), bool)}
    else:
      delta = sample_deltas(nets, delta_key, index, float(config.delta_max),
                            float(config.delta_prob))
      _, terms, aux = paper_losses(params, frozen, w, delta, nets=nets,
                                   config=config, for_eval=True)
      tr = np.asarray(nets.trained)
      target = l2l_losses.attribute_targets(aux['p_orig'], delta)
      out = {'requested': (target - aux['p_orig'])[:, tr],
             'achieved': (aux['p_edit'] - aux['p_orig'])[:, tr],
             'mask': (delta != 0)[:, tr],
             'sq_err': jnp.square(aux['p_edit'] - target)[:, tr]}
    out['zero_disp'] = aux['zero_disp']
    out['edit_disp'] = jnp.mean(jnp.abs(aux['w_edit'] - w), axis=(1, 2))
    if 'id_sim' in aux:
      out['id_sim'] = aux['id_sim']
    out.update({f'loss/{k}': v[None] for k, v in terms.items()})
    return jax.tree.map(lambda x: x[0], out)

  def fn(params, frozen, delta_key, batch):
    w, index = batch
    return jax.vmap(one, in_axes=(None, None, None, 0, 0))(
        params, frozen, delta_key, w, index)
  return jax.jit(fn)


def evaluate_arrays(config, nets: Networks, params, frozen, w_eval,
                    eval_fn=None) -> dict[str, np.ndarray]:
  """Per-example eval values on the held-out latents (this process).

  The requests of the held-out latents are fixed: drawn from the eval key
  (split_seed) and the example number.
  """
  eval_fn = eval_fn or _eval_fn(nets, config)
  key = jax.random.fold_in(jax.random.key(int(config.split_seed)), 11)
  index = np.arange(w_eval.shape[0], dtype=np.int32)
  return parallel.map_batches(
      eval_fn, (np.asarray(w_eval, np.float32), index),
      batch_size=int(config.eval_batch_size),
      args=(params, frozen, key), mesh=parallel.local_mesh())


def pearson(x: np.ndarray, y: np.ndarray) -> float:
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  if x.size < 2 or x.std() == 0 or y.std() == 0:
    return float('nan')
  return float(np.corrcoef(x, y)[0, 1])


def summarize_eval(nets: Networks, arrays: Mapping[str, np.ndarray]
                   ) -> dict[str, float]:
  """Scalar eval metrics (docs/latent_to_latent.md, 'Logged numbers')."""
  out = {'eval/loss': float(np.mean(arrays['loss/loss']))}
  for k, v in arrays.items():
    if k.startswith('loss/') and k != 'loss/loss':
      out[f'eval/{k[5:]}'] = float(np.mean(v))
  if 'id_sim' in arrays:
    out['eval/identity_similarity'] = float(np.mean(arrays['id_sim']))
  out['eval/zero_request_displacement'] = float(np.mean(arrays['zero_disp']))
  out['eval/edit_displacement'] = float(np.mean(arrays['edit_disp']))
  if 'sq_err' in arrays:
    out['eval/attribute_error'] = float(np.mean(arrays['sq_err']))
  for j, name in enumerate(nets.trained_names):
    m = arrays['mask'][:, j]
    req, ach = arrays['requested'][m, j], arrays['achieved'][m, j]
    if req.size == 0:
      continue
    out[f'eval/requested/{name}'] = float(np.mean(req))
    out[f'eval/achieved/{name}'] = float(np.mean(ach))
    if nets.mode == 'paper':
      out[f'eval/pearson/{name}'] = pearson(req, ach)
      out[f'eval/attribute_error/{name}'] = float(np.mean(
          arrays['sq_err'][m, j]))
  return out


def _sample_fn(nets: Networks, config):
  """jit((params, frozen, w [N, n, D]) -> images [N, C, S, S, 3])."""
  strengths = tuple(float(s) for s in config.sample_strengths)

  def fn(params, frozen, w):
    m = nets.mapper
    cols = [w]
    if config.mode == 'legacy':
      d = jnp.reshape(frozen['direction'], (1, 1, -1))
      for k in strengths:
        cols.append((1 - float(config.alpha)) * w + float(config.alpha) *
                    m.apply({'params': params}, w + k * d))
    else:
      for name in config.sample_attributes:
        j = nets.cond_names.index(str(name).lower())
        for s in strengths:
          delta = jnp.zeros((w.shape[0], len(nets.cond_names))).at[:, j].set(s)
          cols.append(w + m.apply({'params': params}, w, delta))
    ws = jnp.stack(cols, 1)  # [N, C, n, D]
    imgs = render(nets, frozen['generator'], ws.reshape((-1,) + w.shape[1:]))
    return imgs.reshape(ws.shape[:2] + imgs.shape[1:])
  return jax.jit(fn)


def export_mapper(out_dir: str, params: Any, nets: Networks, config,
                  step: int, workdir: str, extra: Mapping[str, Any] = ()
                  ) -> None:
  """The mapper in the converted format 'l2l_mapper' (convert/mapper.py).

  scripts/edit_latent.py --mapper and scripts/edit_photo.py load it with
  `convert.mapper.load_mapper`. Every process must call this.
  """
  m = nets.mapper
  mcfg = mapper_config(config, m.n_latent, m.style_dim, m.cond_dim)
  key_map = {}
  for g in mapper_lib.GROUP_NAMES:
    for i in range(m.n_layers):
      for p in ('weight', 'bias'):
        key_map[f'{g}.mapping.{i}.0.{p}'] = f'params/{g}/mapping_{i}/{p}'
    if m.cond_dim:
      key_map[f'{g}.cond.weight'] = f'params/{g}/cond/weight'
  meta = {'format': mapper_convert.FORMAT, 'config': mcfg,
          'attributes': list(nets.cond_names) if m.cond_dim else [],
          'trained_attributes': list(nets.trained_names),
          'source': {'path': str(workdir), 'sha256': None, 'step': int(step),
                     'kind': f'l2m_jax Latent-To-Latent training '
                             f'({config.mode})'},
          'key_map': key_map, 'ignored': [], **dict(extra)}
  t2f.save_converted(out_dir, {'params': parallel.unreplicate_to_host(params)},
                     meta, overwrite=True)


def _best_so_far(workdir: str) -> float:
  try:
    meta = t2f.read_meta(os.path.join(workdir, BEST_EXPORT_DIR))
    return float(meta.get('eval_loss', np.inf))
  except (OSError, ValueError):
    return float('inf')


# ---------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------


STRUCTURAL_FIELDS = ('style_dim', 'n_latent', 'bounds', 'n_layers',
                     'cond_dim', 'combine', 'attributes')


def check_resume(saved: Mapping[str, Any], current: Mapping[str, Any],
                 checkpoint: str) -> list[str]:
  """Structural differences raise CheckpointError; returns other changes."""
  old, new = saved.get('mapper_config', {}), current['mapper_config']
  problems = [f'  {k}: checkpoint {old.get(k)!r}, this run {new.get(k)!r}'
              for k in STRUCTURAL_FIELDS if old.get(k) != new.get(k)]
  if saved.get('mode') != current['mode']:
    problems.append(f'  mode: checkpoint {saved.get("mode")!r}, this run '
                    f'{current["mode"]!r}')
  if problems:
    raise checkpointing.CheckpointError(
        f'{checkpoint}: this run does not fit the checkpoint it would '
        'resume:\n' + '\n'.join(problems) + '\nUse the original settings or '
        'another --workdir. Nothing was written.')
  old_cfg = training.flat_config(saved.get('config', {}))
  new_cfg = training.flat_config(current.get('config', {}))
  return [f'{k}: {old_cfg.get(k)!r} -> {new_cfg.get(k)!r}'
          for k in sorted(set(old_cfg) | set(new_cfg))
          if old_cfg.get(k) != new_cfg.get(k)]


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: str) -> L2LTrainState:
  """Trains the Latent-To-Latent mapper per `config` in `workdir`; resumes.

  Writes `checkpoints/` (orbax), TensorBoard metrics, `samples/*.png`,
  `mapper_export/` (the latest mapper, format 'l2l_mapper') and
  `mapper_best/` (the one with the lowest summed eval loss). Every process
  runs this; files are written by the main process.

  Raises:
    ValueError, FileNotFoundError, CheckpointError: bad config values,
      missing or mismatched networks or latents (before any training).
    WorkdirLockedError: another live run holds the workdir.
    NonFiniteError: training diverged (nothing non-finite was saved).
  """
  workdir = os.path.abspath(workdir)
  nets, frozen = load_networks(config)
  if parallel.is_main_process():
    pathlib.Path(workdir).mkdir(parents=True, exist_ok=True)
  parallel.sync('workdir')
  with checkpointing.WorkdirLock(workdir), training.Preemption() as preempt:
    data = load_data(config, nets, frozen, workdir)
    mesh = parallel.make_mesh()
    parallel.per_device_batch_size(int(config.batch_size), mesh)
    frozen = jax.tree.map(jnp.asarray, frozen)
    ckpt_dir = os.path.join(workdir, 'checkpoints')
    m = nets.mapper
    meta_out = {'config': config.to_dict(), 'mode': str(config.mode),
                'num_devices': int(mesh.devices.size),
                'mapper_config': {**mapper_config(config, m.n_latent,
                                                  m.style_dim, m.cond_dim),
                                  'attributes': list(nets.cond_names)}}

    def check_meta(saved):
      changed = check_resume(saved, meta_out, ckpt_dir)
      if changed:
        logging.warning('Resuming with changed settings (allowed): %s',
                        '; '.join(changed))

    mngr = checkpointing.make_manager(ckpt_dir, int(config.save_every),
                                      int(config.keep_checkpoints))
    try:
      return _loop(config, workdir, mngr, nets, frozen, data, mesh, meta_out,
                   check_meta, preempt)
    finally:
      mngr.wait_until_finished()
      mngr.close()


def _loop(config, workdir, mngr, nets, frozen, data, mesh, meta_out,
          check_meta, preempt):
  main = parallel.is_main_process()
  rep = parallel.replicated_sharding(mesh)
  init_fn = functools.partial(create_train_state, config, nets,
                              jax.random.key(int(config.seed)))
  state, meta = checkpointing.restore_or_init(
      mngr, lambda: parallel.init_replicated(init_fn, mesh), rep, check_meta)
  start = int(parallel.unreplicate_to_host(state.step))
  last_good = start if meta is not None else None
  writer = training.create_writer(workdir, just_logging=not main)
  if meta is None:
    logging.info('Mapper: %d parameters.', sum(
        int(np.prod(x.shape)) for x in jax.tree.leaves(state.mapper.params)))
  else:
    logging.info('Resumed at step %d (saved with %s devices).', start,
                 meta.get('num_devices'))
  compiled = compile_train_step(config, nets, mesh)
  frozen_dev = compiled.put_args(frozen)
  frozen_host = parallel.unreplicate_to_host(frozen)
  eval_fn = _eval_fn(nets, config)
  sample_fn = _sample_fn(nets, config)
  w_fixed = data.eval[:int(config.num_sample)]
  total = int(config.total_steps)
  hooks = training.progress_hooks(total, writer, workdir,
                                  bool(config.profile)) if main else []
  best = _best_so_far(workdir)

  def run_eval(step, st):
    params = parallel.unreplicate_to_host(st.mapper.params)
    arrays = evaluate_arrays(config, nets, params, frozen_host, data.eval,
                             eval_fn)
    scalars = summarize_eval(nets, arrays)
    writer.write_scalars(step, scalars)
    return scalars

  def save_samples(step, st):
    if not main:
      return
    imgs = np.asarray(sample_fn(parallel.unreplicate_to_host(
        st.mapper.params), frozen_host, w_fixed))
    grid = image_io.make_grid(np.clip(imgs, -1, 1))
    out = pathlib.Path(workdir) / 'samples'
    out.mkdir(exist_ok=True)
    from PIL import Image  # pylint: disable=g-import-not-at-top
    Image.fromarray(grid).save(out / f'{step:06d}.png')
    writer.write_images(step, {'samples/attribute_sweep': grid[None]})

  dstate = compiled.put_state(state)
  step = start
  if step == 0 and int(config.eval_every):
    scalars = run_eval(0, state)
    save_samples(0, state)
  first = None
  if step < total:
    first = compiled.put_batch(host_batch(config, data, step))
    compiled = compiled.compile_ahead(dstate, first, frozen_dev)
  while step < total:
    batch = (first if first is not None else
             compiled.put_batch(host_batch(config, data, step)))
    first = None
    dstate, metrics = compiled(dstate, batch, frozen_dev)
    step += 1
    for h in hooks:
      h(step)
    last = step == total
    if step % int(config.log_every) == 0 or last:
      mt = compiled.get_metrics(metrics)
      training.check_finite(mt, step)
      writer.write_scalars(step, {f'train/{k}': float(v)
                                  for k, v in mt.items()})
    stop = preempt.should_stop(step)
    due = step % int(config.save_every) == 0 or last
    evaluate_now = int(config.eval_every) and (
        step % int(config.eval_every) == 0 or last)
    if due or stop or evaluate_now:
      state = compiled.get_state(dstate)
      training.check_state_finite(state, metrics, step, compiled, last_good)
    if due or stop:
      if checkpointing.save(mngr, step, state, {**meta_out, 'step': step},
                            force=last or stop):
        last_good = step
      if due:
        export_mapper(os.path.join(workdir, EXPORT_DIR), state.mapper.params,
                      nets, config, step, workdir)
    if stop:
      logging.warning('Preempted at step %d: checkpoint written, exiting.',
                      step)
      break
    if evaluate_now:
      scalars = run_eval(step, state)
      if scalars['eval/loss'] < best:
        best = scalars['eval/loss']
        export_mapper(os.path.join(workdir, BEST_EXPORT_DIR),
                      state.mapper.params, nets, config, step, workdir,
                      {'eval_loss': best})
    if step % int(config.sample_every) == 0 or last:
      save_samples(step, compiled.get_state(dstate))
  mngr.wait_until_finished()
  writer.flush()
  return compiled.get_state(dstate)
