"""A preservation network for the generated faces, and its loss.

L2M-GAN's preservation term compares the source and the edited image in the
feature space of a frozen network: an identity network (ArcFace, described but
not released) or the ImageNet ResNet-18 kept in the checkpoint as `vgg`
(`l2m_jax.models.resnet`; the runnable reference compares its outputs with
an L1 loss). For the generated faces of `l2m_jax.datasets.synthetic_faces`
`PreservationNet` is trained in its place: it regresses everything of a face
except the edited attribute (the identity vector and the two other binary
attributes), and its features are trained to agree between a face and the
same face rendered with the attribute flipped (`l2m_jax.face_priors`).

`preservation_loss(variables, x, x_hat, compare)` is the mean over the
compared layers of the mean absolute difference, so each layer counts the
same whatever its size. `compare` picks the layers: 'features' (the four conv
maps and the dense layer), 'outputs' (the head's regressed values, as the
runnable reference compares ResNet-18's logits and an ArcFace loss compares
embeddings) or 'features+outputs' (all six).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from flax import linen as nn
import jax
import jax.numpy as jnp

FORMAT = 'preservation_net'  # meta.json format of a saved PreservationNet
HIDDEN = 64  # size of the dense feature layer


def strided_conv_stages(h: jax.Array, width: int,
                        activation: Callable[[jax.Array], jax.Array],
                        dtype: Any, norm: bool = True) -> list[jax.Array]:
  """Four stride-2 3x3 convs of width x (1, 2, 4, 4), GroupNorm, activation.

  The layers are `conv{i}` and, with `norm`, `norm{i}` (min(8, channels)
  groups) of the calling module: call this from a compact `__call__`.

  Returns:
    The four stage outputs.
  """
  outs = []
  for i, mult in enumerate((1, 2, 4, 4)):
    f = width * mult
    h = nn.Conv(f, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)),
                dtype=dtype, name=f'conv{i}')(h)
    if norm:
      h = nn.GroupNorm(num_groups=min(8, f), dtype=dtype, name=f'norm{i}')(h)
    h = activation(h)
    outs.append(h)
  return outs


class PreservationNet(nn.Module):
  """Four stride-2 3x3 convs (LReLU), a dense layer and a head.

  Call: x [N, S, S, 3] in [-1, 1] -> outputs [N, num_outputs], or with
  `features=True` the list of the five feature maps (four conv outputs and
  the dense layer), which the preservation loss compares, followed by the
  outputs when `with_outputs` is also set.

  `norm=False` (the default) has no normalisation layers, so the features
  see a global colour shift of the input as the paper's ResNet-18 does (its
  BatchNorm statistics are frozen: an affine map of the input). `norm=True`
  puts a GroupNorm after each conv; its per-image statistics remove most of
  a uniform tint, so a preservation term built on it barely penalises one.
  """
  num_outputs: int
  width: int = 16
  norm: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, features: bool = False, with_outputs: bool = False):
    feats = strided_conv_stages(
        jnp.asarray(x, jnp.float32).astype(self.dtype), self.width,
        lambda y: nn.leaky_relu(y, 0.2), self.dtype, norm=self.norm)
    h = feats[-1]
    h = nn.Dense(HIDDEN, dtype=self.dtype, name='fc')(
        h.reshape(h.shape[0], -1))
    feats.append(h)
    if features and not with_outputs:
      return [f.astype(jnp.float32) for f in feats]
    out = nn.Dense(self.num_outputs, dtype=self.dtype, name='head')(
        nn.leaky_relu(h, 0.2))
    if features:
      return [f.astype(jnp.float32) for f in feats + [out]]
    return out.astype(jnp.float32)


def model_from_variables(variables: Mapping[str, Any]) -> PreservationNet:
  """The PreservationNet whose parameters these are (sizes from shapes)."""
  try:
    p = variables['params']
    width = int(p['conv0']['kernel'].shape[-1])
    num_outputs = int(p['head']['kernel'].shape[-1])
  except (KeyError, TypeError) as e:
    raise ValueError('not PreservationNet variables: expected params/conv0 '
                     f'and params/head (top-level keys {sorted(variables)})'
                     ) from e
  return PreservationNet(num_outputs=num_outputs, width=width,
                         norm='norm0' in p)


def features(variables: Mapping[str, Any], x) -> list[jax.Array]:
  """The feature maps that the preservation loss compares."""
  return model_from_variables(variables).apply(variables, x, features=True)


COMPARE = ('features', 'outputs', 'features+outputs')


def check_compare(compare: str, field: str = 'preservation_compare') -> None:
  """Raises ValueError naming `field` unless `compare` is in COMPARE."""
  if compare not in COMPARE:
    raise ValueError(f'{field}={compare!r}: expected one of '
                     + ', '.join(repr(c) for c in COMPARE))


def preservation_loss(variables: Mapping[str, Any], x, x_hat,
                      compare: str = 'features') -> jax.Array:
  """Mean over layers of mean |F_l(x) - F_l(x_hat)|; the network is frozen.

  Args:
    variables: PreservationNet variables (gradients are stopped).
    x: source images [N, S, S, 3] in [-1, 1].
    x_hat: edited images, same shape; the gradient flows into them.
    compare: the layers F_l (COMPARE): 'features' (the five feature maps),
      'outputs' (the head) or 'features+outputs'.
  """
  check_compare(compare, 'compare')
  variables = jax.lax.stop_gradient(variables)
  xx = jnp.concatenate([x, x_hat], axis=0)
  model = model_from_variables(variables)
  if compare == 'outputs':
    both = [model.apply(variables, xx)]
  else:
    both = model.apply(variables, xx, features=True,
                       with_outputs=compare == 'features+outputs')
  n = x.shape[0]
  return jnp.mean(jnp.stack([jnp.mean(jnp.abs(f[:n] - f[n:])) for f in both]))
