"""Latent-To-Latent training: train state, per-device step, the loop.

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

The pieces live in modules of their own: the networks and their pure
functions in l2l_networks.py, the objectives in l2l_objectives.py (terms in
l2l_losses.py), the data in l2l_data.py, the eval and sample grids in
l2l_eval.py, the mapper export in l2l_export.py, and the loop shared with
L2M-GAN in training.py.

`train_step` is written per device and compiled by `parallel.compile_step`
(jit + shard_map or pmap); gradients and metrics are averaged over 'data'
with `lax.pmean`, so N devices equal one device on the same global batch.
"""

from __future__ import annotations

import functools
import itertools
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
from l2m_jax import l2l_data
from l2m_jax import l2l_eval
from l2m_jax import l2l_export
from l2m_jax import l2l_networks
from l2m_jax import l2l_objectives
from l2m_jax import parallel
from l2m_jax import training
from l2m_jax.convert import torch_to_flax as t2f


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


# ---------------------------------------------------------------------------
# State, optimiser, per-device step
# ---------------------------------------------------------------------------


def make_optimizer(config) -> optax.GradientTransformation:
  """torch.optim.Adam(lr, betas, eps) (the original: lr 1e-3, defaults)."""
  return optax.adam(float(config.lr), b1=float(config.beta1),
                    b2=float(config.beta2), eps=float(config.adam_eps))


def init_mapper_params(config, nets: l2l_networks.Networks,
                       rng: jax.Array) -> Any:
  """Random init (EqualLinear N(0,1)/lr_mul; paper: zero last layer), or
  `config.init_mapper` (a converted mapper; a legacy file in a paper mapper
  gets a zero conditioning block)."""
  m = nets.mapper
  w = jnp.zeros((1, m.n_latent, m.style_dim), jnp.float32)
  delta = jnp.zeros((1, m.cond_dim), jnp.float32) if m.cond_dim else None
  params = m.init(rng, w, delta)['params']
  if config.init_mapper:
    _, variables, _ = l2l_networks.load_init_mapper(config)
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


def create_train_state(config, nets: l2l_networks.Networks, rng: jax.Array
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
    return l2l_networks.sample_latents(nets, frozen['generator'], latent_key,
                                       batch['index'],
                                       float(config.truncation))
  return batch['w']


def train_step(state: L2LTrainState, batch: Mapping[str, jax.Array],
               frozen: Mapping[str, Any], *, nets: l2l_networks.Networks,
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
    loss_fn = lambda p: l2l_objectives.legacy_losses(
        p, frozen, w, nets=nets, config=config)[:2]
  else:
    delta = l2l_objectives.sample_deltas(
        nets, delta_key, batch['index'], float(config.delta_max),
        float(config.delta_prob))
    loss_fn = lambda p: l2l_objectives.paper_losses(
        p, frozen, w, delta, nets=nets, config=config)[:2]
  (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.mapper.params)
  grads = jax.lax.pmean(grads, parallel.DATA_AXIS)
  mapper = state.mapper.apply_gradients(grads=grads)
  return (state.replace(step=state.step + 1, mapper=mapper),
          jax.lax.pmean(metrics, parallel.DATA_AXIS))


def compile_train_step(config, nets: l2l_networks.Networks, mesh
                       ) -> parallel.CompiledStep:
  step = functools.partial(train_step, nets=nets, config=config)
  return parallel.compile_step(step, mesh, config.parallel, num_args=1)


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
    training.refuse_resume(checkpoint, problems,
                           'Use the original settings or another --workdir.')
  return training.changed_settings(saved, current)


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
  nets, frozen = l2l_networks.load_networks(config)
  if parallel.is_main_process():
    pathlib.Path(workdir).mkdir(parents=True, exist_ok=True)
  parallel.sync('workdir')
  with checkpointing.WorkdirLock(workdir), training.Preemption() as preempt:
    data = l2l_data.load_data(config, nets, frozen, workdir)
    mesh = parallel.make_mesh()
    parallel.per_device_batch_size(int(config.batch_size), mesh)
    frozen = jax.tree.map(jnp.asarray, frozen)
    m = nets.mapper
    meta_out = {'config': config.to_dict(), 'mode': str(config.mode),
                'num_devices': int(mesh.devices.size),
                'mapper_config': {**l2l_networks.mapper_config(
                    config, m.n_latent, m.style_dim, m.cond_dim),
                                  'attributes': list(nets.cond_names)}}
    with training.checkpoint_manager(workdir, config, meta_out,
                                     check_resume) as (mngr, check_meta):
      return _loop(config, workdir, mngr, nets, frozen, data, mesh, meta_out,
                   check_meta, preempt)


def _loop(config, workdir, mngr, nets, frozen, data, mesh, meta_out,
          check_meta, preempt):
  """Restore or init, an eval at step 0, then the train loop."""
  main = parallel.is_main_process()
  init_fn = functools.partial(create_train_state, config, nets,
                              jax.random.key(int(config.seed)))
  state, meta, start = training.restore_or_init(mngr, init_fn, mesh,
                                                check_meta)
  writer = training.create_writer(workdir, just_logging=not main)
  if meta is None:
    logging.info('Mapper: %d parameters.', sum(
        int(np.prod(x.shape)) for x in jax.tree.leaves(state.mapper.params)))
  compiled = compile_train_step(config, nets, mesh)
  frozen_dev = compiled.put_args(frozen)
  frozen_host = parallel.unreplicate_to_host(frozen)
  eval_fn = l2l_eval.make_eval_fn(nets, config)
  sample_fn = l2l_eval.make_sample_fn(nets, config)
  w_fixed = data.eval[:int(config.num_sample)]
  total = int(config.total_steps)
  hooks = training.progress_hooks(total, writer, workdir,
                                  bool(config.profile)) if main else []
  best = l2l_export.best_so_far(workdir)
  eval_every = int(config.eval_every)

  def run_eval(step, st):
    params = parallel.unreplicate_to_host(st.mapper.params)
    arrays = l2l_eval.evaluate_arrays(config, nets, params, frozen_host,
                                      data.eval, eval_fn)
    scalars = l2l_eval.summarize_eval(nets, arrays)
    writer.write_scalars(step, scalars)
    return scalars

  def save_samples(step, st):
    if not main:
      return
    imgs = np.asarray(sample_fn(parallel.unreplicate_to_host(
        st.mapper.params), frozen_host, w_fixed))
    training.write_sample_grid(workdir, writer, step,
                               image_io.make_grid(np.clip(imgs, -1, 1)),
                               'samples/attribute_sweep')

  def export(step, st):
    l2l_export.export_mapper(os.path.join(workdir, l2l_export.EXPORT_DIR),
                             st.mapper.params, nets, config, step, workdir)

  def evaluate_now(step, last):
    return bool(eval_every) and (step % eval_every == 0 or last)

  def periodic(step, last, state_now):
    nonlocal best
    if evaluate_now(step, last):
      st = state_now()
      scalars = run_eval(step, st)
      if scalars['eval/loss'] < best:
        best = scalars['eval/loss']
        l2l_export.export_mapper(
            os.path.join(workdir, l2l_export.BEST_EXPORT_DIR),
            st.mapper.params, nets, config, step, workdir,
            {'eval_loss': best})
    if step % int(config.sample_every) == 0 or last:
      save_samples(step, state_now())

  if start == 0 and eval_every:
    run_eval(0, state)
    save_samples(0, state)
  batches = (compiled.put_batch(l2l_data.host_batch(config, data, step))
             for step in itertools.count(start))
  return training.train_loop(
      compiled, state, batches, frozen_dev, start=start, total=total,
      resumed=meta is not None, mngr=mngr, meta=meta_out, writer=writer,
      preempt=preempt, log_every=int(config.log_every),
      save_every=int(config.save_every), hooks=hooks, export=export,
      needs_state=evaluate_now, after_step=periodic)
