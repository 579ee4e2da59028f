"""L2M-GAN training losses: one pure function per term.

docs/method.md#l2m-losses writes the StarGAN v2 losses (CVPR 2020, `core/solver.py` `compute_d_loss`,
`compute_g_loss`, `adv_loss`, `r1_reg`) and the L2M-GAN terms (CVPR 2021,
"L2M-GAN: Learning to Manipulate Latent Space Semantics for Facial Attribute
Editing", Sec. 3: orthogonality of the attribute-relevant and -irrelevant
codes) in one notation:

  L_D     = softplus(-D_y(x)) + softplus(D_y'(x_hat)) + lambda_reg * R1(x)
  L_adv^G = softplus(-D_y'(x_hat))
  L_cyc   = |G(x_hat, s, M(x_hat)) - x|_1
  L_sty   = |E_y'(x_hat) - s_hat|_1
  L_ort   = orthogonality(s_r, s_u) + orthogonality(s_r_hat, s_u)
  L_id    = preservation between x and x_hat (ResNet-18 features here)

Every function takes arrays of ONE device's batch and returns the batch mean
of that shard; `train_l2m.train_step` averages gradients over devices with
`lax.pmean`, which equals the global-batch mean because per-device batches are
equal. This is the PyTorch DDP semantics: R1, instance norm and per-sample
losses stay local.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from l2m_jax import image_io

ORTHOGONALITY_VARIANTS = ('elementwise', 'inner')



def d_adversarial_loss(real_logits: jax.Array, fake_logits: jax.Array
                       ) -> tuple[jax.Array, jax.Array]:
  """Non-saturating logistic loss of the discriminator,
  docs/method.md#l2m-losses.

  StarGAN v2 writes it as BCE-with-logits against 1 (real) and 0 (fake);
  BCE(l, 1) = softplus(-l) and BCE(l, 0) = softplus(l).

  Args:
    real_logits: D_y(x), [N].
    fake_logits: D_y'(x_hat), [N].

  Returns:
    (loss on reals, loss on fakes), each a batch mean.
  """
  return (jnp.mean(jax.nn.softplus(-real_logits)),
          jnp.mean(jax.nn.softplus(fake_logits)))


def g_adversarial_loss(fake_logits: jax.Array) -> jax.Array:
  """Non-saturating generator loss softplus(-D_y'(x_hat)),
  docs/method.md#l2m-losses."""
  return jnp.mean(jax.nn.softplus(-fake_logits))


def r1_penalty_from_grad(grad: jax.Array) -> jax.Array:
  """R1 from the input gradient: 0.5 * mean_n sum_pixels grad^2,
  docs/method.md#l2m-losses.

  Args:
    grad: d(sum_n D_y(x_n)) / dx, [N, H, W, C].
  """
  per_sample = jnp.sum(jnp.square(grad).reshape(grad.shape[0], -1), axis=1)
  return 0.5 * jnp.mean(per_sample)


def r1_penalty(logits_fn: Callable[[jax.Array], jax.Array], x: jax.Array
               ) -> tuple[jax.Array, jax.Array]:
  """Zero-centred R1 penalty on real images (needs double backprop).

  Args:
    logits_fn: x [N, H, W, C] -> D_y(x) [N], differentiable in x.
    x: real images.

  Returns:
    (r1, logits) so that the caller can reuse D_y(x) for the adversarial term
    (StarGAN v2 computes both from one forward pass).
  """
  def total(xx):
    logits = logits_fn(xx)
    return jnp.sum(logits), logits
  grad, logits = jax.grad(total, has_aux=True)(x)
  return r1_penalty_from_grad(grad), logits


def cycle_loss(x_rec: jax.Array, x: jax.Array) -> jax.Array:
  """L1 cycle consistency mean|G(x_hat, s, M(x_hat)) - x|,
  docs/method.md#l2m-losses."""
  return jnp.mean(jnp.abs(x_rec - x))


def style_reconstruction_loss(s_pred: jax.Array, s_target: jax.Array
                              ) -> jax.Array:
  """L1 style reconstruction mean|E_y'(x_hat) - s_hat|,
  docs/method.md#l2m-losses.

  Neither side is detached, as in the runnable reference
  (docs/method.md#l2m-losses).
  """
  return jnp.mean(jnp.abs(s_pred - s_target))


def orthogonality_term(a: jax.Array, b: jax.Array,
                       variant: str = 'elementwise') -> jax.Array:
  """Non-orthogonality of two [N, D] code batches.

  Args:
    a, b: codes [N, D].
    variant: 'elementwise' = mean over batch and dims of |a * b| (the
      unofficial reimplementation, docs/method.md#l2m-losses, the default);
      'inner' = batch mean of |<a_n, b_n>| (the literal reading,
      docs/method.md#l2m-losses).
  """
  if variant == 'elementwise':
    return jnp.mean(jnp.abs(a * b))
  if variant == 'inner':
    return jnp.mean(jnp.abs(jnp.sum(a * b, axis=-1)))
  raise ValueError(f'orthogonality variant {variant!r}: expected one of '
                   f'{ORTHOGONALITY_VARIANTS}')


def orthogonality_loss(s_r: jax.Array, s_u: jax.Array, s_r_hat: jax.Array,
                       variant: str = 'elementwise') -> jax.Array:
  """L_ort = ort(s_r, s_u) + ort(s_r_hat, s_u), docs/method.md#l2m-losses.

  Args:
    s_r: attribute-relevant code s - P(s), [N, D].
    s_u: attribute-irrelevant code P(s), [N, D].
    s_r_hat: transformed relevant code T_y'(s_r), [N, D].
    variant: see `orthogonality_term`.
  """
  return (orthogonality_term(s_r, s_u, variant) +
          orthogonality_term(s_r_hat, s_u, variant))


def imagenet_normalize(x: jax.Array) -> jax.Array:
  """[-1, 1] images -> ImageNet-normalised input of ResNet-18
  (docs/method.md#l2m-resnet18)."""
  mean = jnp.asarray(image_io.IMAGENET_MEAN, x.dtype)
  std = jnp.asarray(image_io.IMAGENET_STD, x.dtype)
  return ((x + 1.0) * 0.5 - mean) / std


def perceptual_loss(feat_x: jax.Array, feat_x_hat: jax.Array) -> jax.Array:
  """L1 between ResNet-18 features of source and edit, docs/method.md#l2m-losses
  L_per.

  Deviation from PyTorch: the unofficial code compares the 1000-d logits of
  the full torchvision ResNet-18; the official checkpoint's `vgg` has no fc
  (docs/method.md#l2m-resnet18), so the 512-d pooled features are compared
  instead.
  """
  return jnp.mean(jnp.abs(feat_x - feat_x_hat))


def identity_loss(emb_x: jax.Array, emb_x_hat: jax.Array,
                  eps: float = 1e-8) -> jax.Array:
  """1 - cosine similarity of identity embeddings, batch mean
  (docs/method.md#l2m-identity).

  The official CLI's lambda_id points at an ArcFace IR-SE50 identity loss in
  the pSp style; this is that loss on any embedding pair [N, D].
  """
  a = emb_x / (jnp.linalg.norm(emb_x, axis=-1, keepdims=True) + eps)
  b = emb_x_hat / (jnp.linalg.norm(emb_x_hat, axis=-1, keepdims=True) + eps)
  return jnp.mean(1.0 - jnp.sum(a * b, axis=-1))
