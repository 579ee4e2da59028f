"""The networks of a Latent-To-Latent run, loaded and checked before training.

`load_networks` reads (or, with `random_networks`, makes) the frozen
StyleGAN2 generator, the attribute classifier or regressor, the identity
network and the legacy boundary direction, builds the mapper to be trained
and checks them against each other and the config, naming the field at
fault. `render`, `attribute_logits`, `identity_embed` and `sample_latents`
are the pure functions of the frozen networks (their variables are
arguments) that the objectives, the eval and the data use.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from l2m_jax import latent_editing
from l2m_jax.convert import mapper as mapper_convert
from l2m_jax.models import arcface
from l2m_jax.models import branched_tiny
from l2m_jax.models import stylegan2
from l2m_jax.models import tiny_frozen

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}
MODES = ('legacy', 'paper')
DATA_SOURCES = ('sampled', 'inverted', 'latents')


# Mapper conditioning order for the 40-attribute classifier: the CelebA
# order of the boundaries file, which scripts/edit_latent.py --delta uses.
CELEBA_ATTRIBUTES = latent_editing.CELEBA_ATTRIBUTES


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


def need_path(config, field: str, what: str) -> str:
  """config[field], a path that must exist; errors name the field."""
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
    path = need_path(config, 'generator_checkpoint',
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
    path = need_path(config, 'classifier_checkpoint',
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
      path = need_path(config, 'arcface_checkpoint', why)
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
    init_model, _, _ = load_init_mapper(config)
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


def load_init_mapper(config):
  """(model, variables, meta) of config.init_mapper (a converted mapper)."""
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
  path = need_path(config, 'boundaries', 'the InterFaceGAN boundaries file '
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
