"""Each loss of l2m_jax/losses.py against an independent torch computation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from l2m_jax import image_io
from l2m_jax import losses

ATOL = 1e-5


def _rand(seed, *shape, scale=1.0):
  return (np.random.default_rng(seed).standard_normal(shape) * scale
          ).astype(np.float32)


def _t(x):
  return torch.from_numpy(np.asarray(x))


def test_adversarial_losses_match_torch_bce():
  real, fake = _rand(0, 8, scale=3), _rand(1, 8, scale=3)
  d_real, d_fake = losses.d_adversarial_loss(real, fake)
  g = losses.g_adversarial_loss(fake)
  # StarGAN v2 adv_loss: BCE with logits against a constant target.
  t_real = F.binary_cross_entropy_with_logits(_t(real), torch.ones(8))
  t_fake = F.binary_cross_entropy_with_logits(_t(fake), torch.zeros(8))
  t_g = F.binary_cross_entropy_with_logits(_t(fake), torch.ones(8))
  np.testing.assert_allclose(d_real, t_real.item(), atol=ATOL)
  np.testing.assert_allclose(d_fake, t_fake.item(), atol=ATOL)
  np.testing.assert_allclose(g, t_g.item(), atol=ATOL)


def test_r1_penalty_and_its_parameter_gradient_match_torch():
  """R1 and d R1 / d w (double backprop) through a small nonlinear critic."""
  x = _rand(2, 4, 6, 6, 3)
  w = _rand(3, 6, 6, 3, scale=0.5)
  v = _rand(4, 3)

  def logits_jax(w_, xx):
    return jnp.sum(jnp.tanh(xx * w_) @ v, axis=(1, 2))

  def r1_jax(w_):
    return losses.r1_penalty(lambda xx: logits_jax(w_, xx), jnp.asarray(x))

  (r1, logits), grad_w = jax.value_and_grad(r1_jax, has_aux=True)(
      jnp.asarray(w))

  tw = _t(w).requires_grad_(True)
  tx = _t(x).requires_grad_(True)
  t_logits = (torch.tanh(tx * tw) @ _t(v)).sum(dim=(1, 2))
  (g,) = torch.autograd.grad(t_logits.sum(), tx, create_graph=True)
  t_r1 = 0.5 * g.pow(2).reshape(4, -1).sum(1).mean()
  (t_grad_w,) = torch.autograd.grad(t_r1, tw)

  np.testing.assert_allclose(r1, t_r1.item(), rtol=1e-5, atol=ATOL)
  np.testing.assert_allclose(logits, t_logits.detach().numpy(), atol=ATOL)
  np.testing.assert_allclose(grad_w, t_grad_w.numpy(), rtol=1e-4, atol=ATOL)
  assert float(r1) > 0


def test_cycle_and_style_losses_match_torch_l1():
  a, b = _rand(5, 2, 8, 8, 3), _rand(6, 2, 8, 8, 3)
  s, t = _rand(7, 4, 64), _rand(8, 4, 64)
  np.testing.assert_allclose(losses.cycle_loss(a, b),
                             F.l1_loss(_t(a), _t(b)).item(), atol=ATOL)
  np.testing.assert_allclose(losses.style_reconstruction_loss(s, t),
                             F.l1_loss(_t(s), _t(t)).item(), atol=ATOL)


@pytest.mark.parametrize('variant', losses.ORTHOGONALITY_VARIANTS)
def test_orthogonality_matches_torch(variant):
  s_r, s_u, s_rh = _rand(9, 4, 64), _rand(10, 4, 64), _rand(11, 4, 64)
  got = losses.orthogonality_loss(s_r, s_u, s_rh, variant)
  tr, tu, th = _t(s_r), _t(s_u), _t(s_rh)
  if variant == 'elementwise':
    want = (tr * tu).abs().mean() + (th * tu).abs().mean()
  else:
    want = (torch.einsum('nd,nd->n', tr, tu).abs().mean() +
            torch.einsum('nd,nd->n', th, tu).abs().mean())
  np.testing.assert_allclose(got, want.item(), rtol=1e-5, atol=ATOL)


def test_orthogonality_is_zero_for_orthogonal_codes_and_rejects_bad_variant():
  a = np.zeros((2, 4), np.float32)
  a[:, :2] = 1
  b = np.zeros((2, 4), np.float32)
  b[:, 2:] = 1
  for variant in losses.ORTHOGONALITY_VARIANTS:
    assert float(losses.orthogonality_loss(a, b, a, variant)) == 0.0
  with pytest.raises(ValueError, match='orthogonality variant'):
    losses.orthogonality_term(a, b, 'cosine')


def test_perceptual_and_identity_losses_match_torch():
  fx, fy = _rand(12, 4, 512), _rand(13, 4, 512)
  np.testing.assert_allclose(losses.perceptual_loss(fx, fy),
                             F.l1_loss(_t(fx), _t(fy)).item(), atol=ATOL)
  want = (1 - F.cosine_similarity(_t(fx), _t(fy), dim=-1)).mean()
  np.testing.assert_allclose(losses.identity_loss(fx, fy), want.item(),
                             atol=ATOL)


def test_imagenet_normalize_matches_torchvision_normalize():
  from third_party.torchvision_compat import import_torchvision  # pylint: disable=g-import-not-at-top
  tv = import_torchvision()
  x = np.clip(_rand(14, 2, 5, 5, 3), -1, 1)
  norm = tv.transforms.Normalize(image_io.IMAGENET_MEAN, image_io.IMAGENET_STD)
  want = norm(_t((x + 1) / 2).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
  np.testing.assert_allclose(losses.imagenet_normalize(x), want.numpy(),
                             atol=ATOL)
