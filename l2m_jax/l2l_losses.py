"""Latent-To-Latent training losses: one pure function per term.

Two loss sets (docs/latent_to_latent.md, "Training"):

legacy, the unofficial training (850552586/Latent-To-Latent
`training/trainer.py`), with `w` the input latent, `d` the attribute's
InterFaceGAN normal, `k` the pre-shift (2), `M` the mapper and the fixed blend
`B(x) = 0.7 w + 0.3 M(x)`:

  w_n  = B(w + k d)                       the edit
  cycle          = |B(w_n - k d) - w|_1              weight 0.5
  attribute      = (s(C(G(w_n))) - s(C(G(w + k d))))^2   weight 1
  zero-edit      = |B(w + 0 d) - w|_1                weight 0.5
  neighbourhood  = (w_n - w)^2                       weight 0.5

with `s` the sigmoid and `C` one logit of the attribute classifier; the
original's face-identity term (`loss_fid`) is computed on detached PIL
images and has no gradient, so it is not part of the objective; our
differentiable ArcFace term can be added (weight 0 by default).

paper, the multi-attribute mapper `w' = w + M(w, delta)`:

  attribute      = mean_j c_j (s(R_j(G(w'))) - clip(a_j + delta_j, 0, 1))^2
  face identity  = 1 - cos(E(G(w')), E(G(w)))
  neighbourhood  = (w' - w)^2
  zero-edit      = |M(w, 0)|_1 = |w'(w, 0) - w|_1
  cycle          = |map(map(w, delta), -delta) - w|_1

with `a = s(R(G(w)))` taken without gradient and `c_j` the weight of
requested (delta_j != 0) or kept (delta_j == 0) attributes.

Every function takes one device's batch and returns the mean over its
elements (the reductions of the original: `nn.L1Loss()` and `nn.MSELoss()`
average over every element); `train_l2l.train_step` averages gradients over
devices with `lax.pmean`. Targets are never differentiated.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def l1(x: jax.Array, target: jax.Array) -> jax.Array:
  """mean |x - target| over every element (torch `nn.L1Loss()`)."""
  return jnp.mean(jnp.abs(x - jax.lax.stop_gradient(target)))


def mse(x: jax.Array, target: jax.Array) -> jax.Array:
  """mean (x - target)^2 over every element (torch `nn.MSELoss()`)."""
  return jnp.mean(jnp.square(x - jax.lax.stop_gradient(target)))


def cycle_loss(w_cycle: jax.Array, w: jax.Array) -> jax.Array:
  """|edit(edit(w), back) - w|_1; legacy `loss_cycle`, paper cycle term.

  Args:
    w_cycle: the latent edited forth and back [B, n, D] (legacy:
      B(w_n - k d); paper: map(map(w, delta), -delta)).
    w: the input latent [B, n, D] (the target, not differentiated).
  """
  return l1(w_cycle, w)


def zero_edit_loss(w_zero: jax.Array, w: jax.Array) -> jax.Array:
  """|edit(w, no change) - w|_1; the legacy `loss_identity` (a latent term).

  Args:
    w_zero: the latent edited with a zero request [B, n, D] (legacy:
      B(w + 0 d); paper: w + M(w, 0)).
    w: the input latent.
  """
  return l1(w_zero, w)


def neighbourhood_loss(w_edit: jax.Array, w: jax.Array) -> jax.Array:
  """mean (w' - w)^2; legacy `loss_neighborhood`, paper neighbourhood term."""
  return mse(w_edit, w)


def legacy_attribute_loss(logit_edit: jax.Array, logit_target: jax.Array
                          ) -> jax.Array:
  """mean (s(C(G(w_n))) - s(C(G(w + k d))))^2; legacy `loss_attributes`.

  Args:
    logit_edit: the classifier's logit of the attribute on the edited
      images [B].
    logit_target: the same logit on the InterFaceGAN-shifted images [B]
      (the target: no gradient, as upstream).
  """
  return mse(jax.nn.sigmoid(logit_edit), jax.nn.sigmoid(logit_target))


def attribute_targets(probs: jax.Array, delta: jax.Array) -> jax.Array:
  """clip(a + delta, 0, 1): the requested attribute values [B, A]."""
  return jnp.clip(probs + delta, 0.0, 1.0)


def paper_attribute_loss(logits_edit: jax.Array, probs_orig: jax.Array,
                         delta: jax.Array, changed_weight: float = 1.0,
                         kept_weight: float = 1.0) -> jax.Array:
  """Weighted MSE of s(R(G(w'))) to clip(a + delta, 0, 1) over all A.

  Args:
    logits_edit: regressor logits of the edited images [B, A].
    probs_orig: a = s(R(G(w))) of the unedited images [B, A] (no gradient).
    delta: the requested changes [B, A].
    changed_weight: weight of the entries with delta != 0.
    kept_weight: weight of the entries with delta == 0 (attributes that
      must stay).

  Returns:
    mean over B and A of weight * (s(logit) - target)^2.
  """
  target = jax.lax.stop_gradient(attribute_targets(probs_orig, delta))
  weight = jnp.where(delta != 0, changed_weight, kept_weight)
  return jnp.mean(weight * jnp.square(jax.nn.sigmoid(logits_edit) - target))


def face_identity_loss(emb_edit: jax.Array, emb_orig: jax.Array) -> jax.Array:
  """mean over the batch of 1 - cos(E(G(w')), E(G(w))).

  Embeddings [B, E] of any norm (ArcFace's are unit); the original's
  embedding is the target (not differentiated), as in pSp's identity loss.
  """
  t = jax.lax.stop_gradient(emb_orig)
  e = emb_edit / jnp.linalg.norm(emb_edit, axis=-1, keepdims=True)
  t = t / jnp.linalg.norm(t, axis=-1, keepdims=True)
  return jnp.mean(1.0 - jnp.sum(e * t, axis=-1))
