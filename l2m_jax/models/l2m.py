"""L2M-GAN style encoder with the decomposer and per-domain transformers.

G. Yang et al., "L2M-GAN: Learning to Manipulate Latent Space Semantics for
Facial Attribute Editing", CVPR 2021. Mirrors `StyleEncoder` of the authors'
`core/model.py` as described in docs/method.md#l2m-style-codes,
docs/method.md#l2m-style-encoder:

  s       = E_y(x)          (`unshared[y]` head on the shared trunk)
  s_u     = P(s)            attribute-irrelevant code (`transform1`)
  s_r     = s - s_u         attribute-relevant code
  s_r_hat = T_{y1}(s_r)     transformed relevant code (`transform2[y1]`)

(upstream names s, s1, s2, s3); the edit of docs/method.md#l2m-edit is
composed in l2m_jax/editing.py.

Parameter names (NHWC; the converter transposes conv/Linear weights):

  torch key                                 Flax path
  shared.0.{weight,bias}                    shared_0/{kernel,bias}
  shared.k.conv{1,2}.{weight,bias}          shared_k/conv{1,2}/{kernel,bias}
  shared.k.conv1x1.weight                   shared_k/conv1x1/kernel
  shared.{R+2}.{weight,bias} (4x4 conv)     shared_{R+2}/{kernel,bias}
  unshared.d.{weight,bias}                  unshared_d/{kernel,bias}
  transform1.{0,2,4}.{weight,bias}          transform1/layers_{0,2,4}/{kernel,bias}
  transform2.d.{0,2,4}.{weight,bias}        transform2_d/layers_{0,2,4}/{kernel,bias}
  attention.layers.{0,2}.{weight,bias}      attention/layers_{0,2}/{kernel,bias}

with R = log2(img_size) - 2 (R = 6 and the 4x4 conv at index 8 for 256 px).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional, Tuple

import jax
import jax.numpy as jnp
from flax import linen as nn

from l2m_jax.models import stargan_v2

Dtype = Any

DEFAULT_DOMAINS_2 = ('sad', 'smile')


@dataclasses.dataclass(frozen=True)
class L2MModelConfig:
  """Hyperparameters of an L2M-GAN model (hashable, usable as a jit static arg).

  Attributes:
    img_size: image resolution (official 256).
    style_dim: style code size (official 64).
    num_domains: number of domains (official 2).
    max_conv_dim: channel cap (official 512).
    w_hpf: high-pass weight; > 0 enables the FAN-masked skips (official 1).
    domains: domain names in label order (sorted folder names).
    base_dim: first-conv width of G, E and D; None (official) means
      2^14 // img_size. Small values make CPU-sized models.
    training_data: what the model was trained on, recorded by the training
      (config.training_data); '' = unknown. 'synthetic_faces...' marks a
      model of the generated faces (`l2m_jax.editing.input_warnings`).
  """
  img_size: int = 256
  style_dim: int = 64
  num_domains: int = 2
  max_conv_dim: int = 512
  w_hpf: float = 1
  domains: Tuple[str, ...] = DEFAULT_DOMAINS_2
  base_dim: Optional[int] = None
  training_data: str = ''

  def __post_init__(self):
    object.__setattr__(self, 'domains', tuple(str(d) for d in self.domains))
    if len(self.domains) != self.num_domains:
      raise ValueError(f'L2MModelConfig: {len(self.domains)} domain names '
                       f'{list(self.domains)} for num_domains='
                       f'{self.num_domains}')
    if len(set(self.domains)) != len(self.domains):
      raise ValueError(f'L2MModelConfig: duplicate domain names '
                       f'{list(self.domains)}')
    size = self.img_size
    if size < 16 or size & (size - 1):
      raise ValueError(f'L2MModelConfig: img_size must be a power of 2 >= 16,'
                       f' got {size}')
    if self.base_dim is not None and (
        isinstance(self.base_dim, bool) or int(self.base_dim) <= 0):
      raise ValueError('L2MModelConfig: base_dim must be a positive int or '
                       f'None, got {self.base_dim!r}')
    if self.w_hpf < 0:
      raise ValueError(f'L2MModelConfig: w_hpf must be >= 0, got {self.w_hpf}')

  def to_dict(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    d['domains'] = list(self.domains)
    return d

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> 'L2MModelConfig':
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - fields)
    if unknown:
      raise ValueError(f'L2MModelConfig: unknown field(s) {unknown}; '
                       f'expected a subset of {sorted(fields)}')
    d = dict(d)
    if 'domains' not in d:
      n = int(d.get('num_domains', 2))
      d['domains'] = default_domains(n)
    return cls(**d)

  def domain_index(self, domain: str | int) -> int:
    """A domain given by name or index -> its index, with a clear error."""
    if isinstance(domain, str) and domain in self.domains:
      return self.domains.index(domain)
    try:
      idx = int(domain)
    except (TypeError, ValueError):
      raise ValueError(f'unknown domain {domain!r}; this model has domains '
                       f'{list(self.domains)} (or indices 0..'
                       f'{self.num_domains - 1})') from None
    if not 0 <= idx < self.num_domains:
      raise ValueError(f'domain index {idx} out of range; this model has '
                       f'{self.num_domains} domains {list(self.domains)}')
    return idx


def default_domains(num_domains: int) -> Tuple[str, ...]:
  """['sad', 'smile'] for the released 2-domain model, else 'domain<i>'."""
  if num_domains == 2:
    return DEFAULT_DOMAINS_2
  return tuple(f'domain{i}' for i in range(num_domains))


class MLP3(nn.Module):
  """Linear -> ReLU -> Linear -> ReLU -> Linear (Sequential indices 0, 2, 4)."""
  features: int = 64
  dtype: Dtype = jnp.float32

  def setup(self):
    self.layers_0 = nn.Dense(self.features, dtype=self.dtype)
    self.layers_2 = nn.Dense(self.features, dtype=self.dtype)
    self.layers_4 = nn.Dense(self.features, dtype=self.dtype)

  def __call__(self, x):
    x = nn.relu(self.layers_0(x))
    x = nn.relu(self.layers_2(x))
    return self.layers_4(x)


class StyleEncoder(nn.Module):
  """L2M style encoder E(x, y, y1) -> (s, s_u, s_r, s_r_hat)
  (docs/method.md#l2m-style-encoder)."""
  img_size: int = 256
  style_dim: int = 64
  num_domains: int = 2
  max_conv_dim: int = 512
  dtype: Dtype = jnp.float32
  base_dim: Optional[int] = None

  def setup(self):
    _, self._repeat_num = stargan_v2.build_trunk(
        self, 'shared', self.img_size, self.max_conv_dim, self.dtype,
        self.base_dim)
    self.unshared = [nn.Dense(self.style_dim, dtype=self.dtype)
                     for _ in range(self.num_domains)]
    self.transform1 = MLP3(self.style_dim, dtype=self.dtype)
    self.transform2 = [MLP3(self.style_dim, dtype=self.dtype)
                       for _ in range(self.num_domains)]
    self.attention = stargan_v2.Attention(self.style_dim, dtype=self.dtype)

  def __call__(self, x: jax.Array, y: jax.Array, y1: jax.Array
               ) -> Tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Encodes x.

    Args:
      x: [N, S, S, 3] images in [-1, 1].
      y: [N] int source-domain labels (selects the `unshared` head).
      y1: [N] int target-domain labels (selects the `transform2` head).

    Returns:
      (s, s_u, s_r, s_r_hat), each [N, style_dim] float32 (upstream: s,
      s1, s2, s3; docs/method.md#l2m-style-codes).
    """
    h = stargan_v2.run_trunk(self, 'shared', self._repeat_num,
                             x.astype(self.dtype))
    h = h.reshape(h.shape[0], -1)  # [N, C]; the map is 1x1.
    s = _gather(jnp.stack([head(h) for head in self.unshared], axis=1), y)
    s_u = self.transform1(s)
    s_r = s - s_u
    s_r_hat = _gather(jnp.stack([t(s_r) for t in self.transform2], axis=1),
                      y1)
    if self.is_initializing():
      # Deviation from PyTorch: `attention` is never used; call it once at
      # init so its parameters exist as in the official checkpoint.
      self.attention(s)
    return tuple(v.astype(jnp.float32) for v in (s, s_u, s_r, s_r_hat))


def _gather(stacked: jax.Array, labels: jax.Array) -> jax.Array:
  """stacked [N, D, C], labels [N] -> stacked[n, labels[n]] ([N, C])."""
  labels = jnp.asarray(labels, jnp.int32).reshape(-1, 1, 1)
  return jnp.take_along_axis(stacked, labels, axis=1)[:, 0]


def build_models(config: L2MModelConfig, dtype: Dtype = jnp.float32
                 ) -> Tuple[stargan_v2.Generator, StyleEncoder]:
  """The generator and style encoder of a config."""
  gen = stargan_v2.Generator(config.img_size, config.style_dim,
                             config.max_conv_dim, config.w_hpf, dtype=dtype,
                             base_dim=config.base_dim)
  enc = StyleEncoder(config.img_size, config.style_dim, config.num_domains,
                     config.max_conv_dim, dtype=dtype,
                     base_dim=config.base_dim)
  return gen, enc


def build_discriminator(config: L2MModelConfig, dtype: Dtype = jnp.float32
                        ) -> stargan_v2.Discriminator:
  return stargan_v2.Discriminator(config.img_size, config.num_domains,
                                  config.max_conv_dim, dtype=dtype,
                                  base_dim=config.base_dim)


def init_shapes(config: L2MModelConfig,
                with_discriminator: bool = False) -> dict[str, Any]:
  """`jax.eval_shape` of the init of every network of a config (no FLOPs).

  Returns:
    {'generator': {'params': ...}, 'style_encoder': {'params': ...}
     [, 'discriminator': {'params': ...}]} of ShapeDtypeStructs.
  """
  gen, enc = build_models(config)
  s = config.img_size
  x = jax.ShapeDtypeStruct((1, s, s, 3), jnp.float32)
  st = jax.ShapeDtypeStruct((1, config.style_dim), jnp.float32)
  y = jax.ShapeDtypeStruct((1,), jnp.int32)
  rng = jax.random.key(0)
  out = {
      'generator': jax.eval_shape(lambda r, a, b: gen.init(r, a, b), rng, x,
                                  st),
      'style_encoder': jax.eval_shape(lambda r, a, b, c: enc.init(r, a, b, c),
                                      rng, x, y, y),
  }
  if with_discriminator:
    disc = build_discriminator(config)
    out['discriminator'] = jax.eval_shape(
        lambda r, a, b: disc.init(r, a, b), rng, x, y)
  return out
