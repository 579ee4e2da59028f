"""What the Latent-To-Latent mapper minimises on one batch, per mode.

`legacy_losses` (the unofficial training) and `paper_losses` (the paper's
multi-attribute mapper) render the edits with the frozen generator, score
them with the frozen classifier and identity network
(`l2m_jax.l2l_networks`) and weight the terms of `l2m_jax.l2l_losses`
(docs/latent_to_latent.md, "Training"); `sample_deltas` draws the requested
changes of the paper mode. The train step differentiates them; the eval
(`l2m_jax.l2l_eval`) reads their terms and aux values.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from l2m_jax import l2l_losses
from l2m_jax import l2l_networks


def sample_deltas(nets: l2l_networks.Networks, key: jax.Array,
                  index: jax.Array, delta_max: float, delta_prob: float
                  ) -> jax.Array:
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


def _weights(config) -> dict[str, float]:
  return {'cycle': float(config.lambda_cycle),
          'attribute': float(config.lambda_attr),
          'zero_edit': float(config.lambda_zero),
          'neighbourhood': float(config.lambda_neighbour),
          'face_id': float(config.lambda_face_id)}


def legacy_losses(params: Any, frozen: Mapping[str, Any], w: jax.Array, *,
                  nets: l2l_networks.Networks,
                  config: ml_collections.ConfigDict, for_eval: bool = False
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
  imgs = l2l_networks.render(nets, frozen['generator'],
                             jnp.concatenate(rows, 0))
  logits = l2l_networks.attribute_logits(nets, frozen['classifier'], imgs)[
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
    emb = l2l_networks.identity_embed(nets, frozen['identity'],
                         jnp.concatenate([imgs[:b], imgs[2 * b:]], 0))
    terms['face_id'] = l2l_losses.face_identity_loss(emb[:b], emb[b:])
    aux['id_sim'] = jnp.sum(emb[:b] * jax.lax.stop_gradient(emb[b:]), -1)
  total = sum(wt[n] * v for n, v in terms.items())
  return total, {**terms, 'loss': total}, aux


def paper_losses(params: Any, frozen: Mapping[str, Any], w: jax.Array,
                 delta: jax.Array, *, nets: l2l_networks.Networks,
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
  imgs = l2l_networks.render(nets, frozen['generator'],
                             jnp.concatenate([w_e, w], 0))
  logits = l2l_networks.attribute_logits(nets, frozen['classifier'], imgs)
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
    emb = l2l_networks.identity_embed(nets, frozen['identity'], imgs)
    terms['face_id'] = l2l_losses.face_identity_loss(emb[:b], emb[b:])
    aux['id_sim'] = jnp.sum(emb[:b] * jax.lax.stop_gradient(emb[b:]), -1)
  total = sum(wt[n] * v for n, v in terms.items())
  return total, {**terms, 'loss': total}, aux
