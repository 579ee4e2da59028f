"""Evaluation and sample grids of a Latent-To-Latent run.

`evaluate_arrays` computes per-example values on the held-out latents
(requested and achieved attribute changes, displacements, identity
similarity, the loss terms) with fixed requests; `summarize_eval` turns them
into the logged scalars (docs/latent_to_latent.md, 'Logged numbers');
`make_sample_fn` renders the sample grid (fixed latents, one column per
edit).
"""

from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from l2m_jax import l2l_losses
from l2m_jax import l2l_networks
from l2m_jax import l2l_objectives
from l2m_jax import parallel


def make_eval_fn(nets: l2l_networks.Networks, config):
  """jit((params, frozen, delta_key, batch) -> per-example eval values)."""

  def one(params, frozen, delta_key, w, index):
    w, index = w[None], index[None]
    if config.mode == 'legacy':
      _, terms, aux = l2l_objectives.legacy_losses(
          params, frozen, w, nets=nets, config=config, for_eval=True)
      req = aux['p_target'] - aux['p_orig']
      out = {'requested': req[:, None], 'achieved':
             (aux['p_edit'] - aux['p_orig'])[:, None],
             'mask': jnp.ones((1, 1), bool)}
    else:
      delta = l2l_objectives.sample_deltas(
          nets, delta_key, index, float(config.delta_max),
          float(config.delta_prob))
      _, terms, aux = l2l_objectives.paper_losses(
          params, frozen, w, delta, nets=nets, config=config, for_eval=True)
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


def evaluate_arrays(config, nets: l2l_networks.Networks, params, frozen,
                    w_eval, eval_fn=None) -> dict[str, np.ndarray]:
  """Per-example eval values on the held-out latents (this process).

  The requests of the held-out latents are fixed: drawn from the eval key
  (split_seed) and the example number.
  """
  eval_fn = eval_fn or make_eval_fn(nets, config)
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


def summarize_eval(nets: l2l_networks.Networks,
                   arrays: Mapping[str, np.ndarray]) -> dict[str, float]:
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


def make_sample_fn(nets: l2l_networks.Networks, config):
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
    imgs = l2l_networks.render(nets, frozen['generator'],
                               ws.reshape((-1,) + w.shape[1:]))
    return imgs.reshape(ws.shape[:2] + imgs.shape[1:])
  return jax.jit(fn)
