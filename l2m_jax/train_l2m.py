"""L2M-GAN training: train state, per-device step, the train loop.

Procedure (docs/method.md#l2m-training, docs/method.md#l2m-losses; StarGAN v2
`core/solver.py` `train`, `compute_d_loss`, `compute_g_loss`, `moving_average`,
`he_init`; the L2M-GAN losses of CVPR 2021): per iteration, masks
M = FAN(x) from the real batch, then one discriminator update

  L_D = softplus(-D_y(x)) + softplus(D_y'(G(x, s_hat, M))) + lambda_reg R1(x)

with the fake made without gradient, then one joint update of the generator
and the style encoder (trunk, heads, decomposer `transform1` and transformers
`transform2`) from

  L_G = L_adv + lambda_cyc L_cyc + lambda_sty L_sty + lambda_ort L_ort
        + lambda_id L_id

and an EMA of G and E (beta 0.999). Adam (beta1 0, beta2 0.99, lr 1e-4) with
PyTorch's coupled weight decay (add_decayed_weights before scale_by_adam),
one optimiser state per network. FAN and ResNet-18 are frozen pytrees passed
in as arguments.

`train_step` is written per device and compiled by `parallel.compile_step`
(jit + shard_map by default, pmap with config.parallel == 'pmap'): the
losses, R1 and instance norms are local to each device's batch shard and the
gradients and metrics are averaged with `lax.pmean` over 'data', which is
PyTorch DDP's semantics and makes N devices equal one device on the same
global batch (tested).

The edit G(x, s_u + s_r_hat) of the step is composed by l2m_jax/editing.py;
the frozen networks are loaded by l2m_frozen.py, the EMA export is
l2m_export.py, the sample grids and the periodic FID are l2m_hooks.py, and
the loop shared with Latent-To-Latent is training.py.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import pathlib
from typing import TYPE_CHECKING, Any, Callable, Mapping

from absl import logging
import flax
from flax import struct
from flax.training import train_state as flax_train_state
import jax
import jax.numpy as jnp
import numpy as np
import optax

from l2m_jax import checkpointing
from l2m_jax import editing
from l2m_jax import l2m_export
from l2m_jax import l2m_frozen
from l2m_jax import l2m_hooks
from l2m_jax import losses
from l2m_jax import parallel
from l2m_jax import training
from l2m_jax.models import l2m as l2m_models
from l2m_jax.models import landmarks as landmarks_lib
from l2m_jax.models import preservation as preservation_lib
from l2m_jax.models import resnet

if TYPE_CHECKING:  # annotations only: the step needs no ml_collections
  import ml_collections  # pylint: disable=g-bad-import-order

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


class TrainState(flax_train_state.TrainState):
  """Params and Adam state of one optimised network."""


@struct.dataclass
class L2MTrainState:
  """Everything a checkpoint must hold, as one pytree.

  Attributes:
    step: number of completed iterations (int32 scalar); also the position
      of the data stream.
    rng: raw uint32 key data [2] (typed keys do not checkpoint).
    generator, style_encoder, discriminator: per-network TrainStates.
    ema: {'generator': params, 'style_encoder': params}.
  """
  step: jax.Array
  rng: jax.Array
  generator: TrainState
  style_encoder: TrainState
  discriminator: TrainState
  ema: Any


@dataclasses.dataclass(frozen=True)
class Models:
  """The linen modules of a run (hyperparameters only, no state)."""
  model_config: l2m_models.L2MModelConfig
  generator: Any
  style_encoder: Any
  discriminator: Any
  resnet: Any


# ---------------------------------------------------------------------------
# Models, optimisers, initialisation
# ---------------------------------------------------------------------------


def model_config_from(config: ml_collections.ConfigDict,
                      domains: list[str] | None = None
                      ) -> l2m_models.L2MModelConfig:
  """L2MModelConfig of a training config (domains default to generic names)."""
  return l2m_models.L2MModelConfig(
      img_size=int(config.img_size), style_dim=int(config.style_dim),
      num_domains=int(config.num_domains),
      max_conv_dim=int(config.max_conv_dim), w_hpf=float(config.w_hpf),
      base_dim=int(config.base_dim) if config.base_dim else None,
      training_data=str(config.get('training_data', '')),
      domains=tuple(domains) if domains else l2m_models.default_domains(
          int(config.num_domains)))


def create_models(config: ml_collections.ConfigDict,
                  domains: list[str] | None = None) -> Models:
  """G, E, D (compute dtype from config.dtype) and the ResNet-18 features."""
  if config.dtype not in DTYPES:
    raise ValueError(f'dtype={config.dtype!r}: expected one of '
                     f'{sorted(DTYPES)}')
  dtype = DTYPES[config.dtype]
  mc = model_config_from(config, domains)
  gen, enc = l2m_models.build_models(mc, dtype=dtype)
  disc = l2m_models.build_discriminator(mc, dtype=dtype)
  return Models(mc, gen, enc, disc, resnet.ResNet18Features(dtype=dtype))


def make_optimizer(config: ml_collections.ConfigDict
                   ) -> optax.GradientTransformation:
  """torch.optim.Adam(lr, betas, eps, weight_decay) with coupled L2 decay.

  PyTorch adds weight_decay * param to the gradient before the moments
  (docs/method.md#l2m-training), which is add_decayed_weights before
  scale_by_adam, not adamw.
  """
  return optax.chain(
      optax.add_decayed_weights(float(config.weight_decay)),
      optax.scale_by_adam(b1=float(config.beta1), b2=float(config.beta2),
                          eps=float(config.adam_eps)),
      _scale_by_lr(config))


LR_SCHEDULES = ('constant', 'cosine')


def lr_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
  """The learning rate of G, E and D at each update.

  'constant' (the original): config.lr throughout. 'cosine': config.lr for
  the first config.lr_decay_start * total_iters updates, then a half cosine
  down to 0 at update total_iters (a short run ends on small, averaging
  steps instead of stopping mid-oscillation).
  """
  name = config.get('lr_schedule', 'constant')
  lr = float(config.lr)
  if name == 'constant':
    return optax.constant_schedule(lr)
  if name != 'cosine':
    raise ValueError(f'lr_schedule={name!r}: expected one of {LR_SCHEDULES}')
  total = int(config.total_iters)
  start = float(config.get('lr_decay_start', 0.0))
  if not 0.0 <= start < 1.0 or total < 1:
    raise ValueError(f'lr_decay_start={start!r} must be in [0, 1) and '
                     f'total_iters={total!r} >= 1 for lr_schedule=cosine')
  hold = int(round(start * total))
  return optax.join_schedules(
      [optax.constant_schedule(lr),
       optax.cosine_decay_schedule(lr, max(total - hold, 1))], [hold])


def _scale_by_lr(config: ml_collections.ConfigDict
                 ) -> optax.GradientTransformation:
  if config.get('lr_schedule', 'constant') == 'constant':
    # Keeps the original's optimizer state (no step counter) and resumes
    # checkpoints written before the schedule existed.
    return optax.scale(-float(config.lr))
  schedule = lr_schedule(config)
  return optax.scale_by_schedule(lambda count: -schedule(count))


def he_init(params: Any, rng: jax.Array) -> Any:
  """StarGAN v2 `he_init`: kaiming normal (fan_in, gain sqrt 2), zero biases.

  Applied to every conv and dense kernel; their biases are zeroed. Instance
  norm scales/biases keep their init (1, 0). fan_in = prod(kernel[:-1]),
  i.e. kH*kW*Cin for HWIO convs and Cin for dense kernels.
  """
  flat = flax.traverse_util.flatten_dict(params)
  keys = jax.random.split(rng, len(flat))
  out = {}
  for key, (path, value) in zip(keys, sorted(flat.items())):
    if path[-1] == 'kernel':
      fan_in = int(np.prod(value.shape[:-1]))
      out[path] = (jax.random.normal(key, value.shape, jnp.float32) *
                   np.sqrt(2.0 / fan_in)).astype(value.dtype)
    elif path[-1] == 'bias' and 'kernel' in _siblings(flat, path):
      out[path] = jnp.zeros_like(value)
    else:
      out[path] = value
  return flax.traverse_util.unflatten_dict(out)


def _siblings(flat, path):
  return {p[-1] for p in flat if p[:-1] == path[:-1]}


def create_train_state(config: ml_collections.ConfigDict, models: Models,
                       rng: jax.Array,
                       tx: optax.GradientTransformation | None = None
                       ) -> L2MTrainState:
  """He-initialised G, E, D with fresh Adam states and the EMA copies.

  `tx` defaults to `make_optimizer(config)`. The optimizer is part of the
  state's tree structure (a static field of each TrainState): states that
  share one `tx` object have equal structures, so a step compiled for one
  serves the other without tracing again.

  Deviation from PyTorch: the EMA starts from the He-initialised weights
  (StarGAN v2 copies the nets before `he_init`); the difference decays as
  0.999^step and is gone long before any checkpoint is used.
  """
  s = int(config.img_size)
  x = jnp.zeros((1, s, s, 3), jnp.float32)
  st = jnp.zeros((1, int(config.style_dim)), jnp.float32)
  y = jnp.zeros((1,), jnp.int32)
  k = jax.random.split(rng, 7)
  g = models.generator.init(k[0], x, st)['params']
  e = models.style_encoder.init(k[1], x, y, y)['params']
  d = models.discriminator.init(k[2], x, y)['params']
  g, e, d = he_init(g, k[3]), he_init(e, k[4]), he_init(d, k[5])
  tx = make_optimizer(config) if tx is None else tx
  return L2MTrainState(
      step=jnp.zeros((), jnp.int32),
      rng=jax.random.key_data(k[6]),
      generator=TrainState.create(apply_fn=models.generator.apply, params=g,
                                  tx=tx),
      style_encoder=TrainState.create(apply_fn=models.style_encoder.apply,
                                      params=e, tx=tx),
      discriminator=TrainState.create(apply_fn=models.discriminator.apply,
                                      params=d, tx=tx),
      ema={'generator': g, 'style_encoder': e})


# ---------------------------------------------------------------------------
# The per-device train step
# ---------------------------------------------------------------------------


def _pmean(tree):
  return jax.lax.pmean(tree, parallel.DATA_AXIS)


def discriminator_grads(d_params: Any, step: jax.Array, x: jax.Array,
                        y: jax.Array, x_fake: jax.Array, y_trg: jax.Array, *,
                        disc: Any, config: ml_collections.ConfigDict
                        ) -> tuple[Any, dict[str, jax.Array]]:
  """Gradient of the D objective on this device's shard, and its terms.

  L_D = softplus(-D_y(x)) + softplus(D_y'(x_fake)) + lambda_reg * R1, with
  R1 = 0.5 mean_n |d D_y(x_n) / d x_n|^2 on every step (the original), or,
  with lazy R1 (config.r1_every = N > 1), N * R1 on steps divisible by N and
  no R1 on the others (StyleGAN2's scaling keeps the average penalty).

  Returns:
    (gradient w.r.t. d_params, {'d_loss_real', 'd_loss_fake', 'd_r1',
    'd_loss'}); d_r1 is 0 on steps without R1.
  """
  r1_every = int(config.r1_every)

  def d_loss_fn(params, with_r1):
    logits = lambda img, lab: disc.apply({'params': params}, img, lab)
    if with_r1:
      r1, real_logits = losses.r1_penalty(lambda img: logits(img, y), x)
    else:
      r1, real_logits = jnp.zeros((), jnp.float32), logits(x, y)
    loss_real, loss_fake = losses.d_adversarial_loss(
        real_logits, logits(x_fake, y_trg))
    # Lazy R1 scales the penalty by its interval (StyleGAN2 convention).
    total = loss_real + loss_fake + float(config.lambda_reg) * r1_every * r1
    return total, {'d_loss_real': loss_real, 'd_loss_fake': loss_fake,
                   'd_r1': r1, 'd_loss': total}

  if r1_every <= 1:
    (_, metrics), grads = jax.value_and_grad(
        functools.partial(d_loss_fn, with_r1=True), has_aux=True)(d_params)
  else:
    branches = [jax.value_and_grad(functools.partial(d_loss_fn, with_r1=w),
                                   has_aux=True) for w in (False, True)]
    (_, metrics), grads = jax.lax.cond(
        step % r1_every == 0, branches[1], branches[0], d_params)
  return grads, metrics


def train_step(state: L2MTrainState, batch: Mapping[str, jax.Array],
               frozen: Mapping[str, Any], *, models: Models,
               config: ml_collections.ConfigDict
               ) -> tuple[L2MTrainState, dict[str, jax.Array]]:
  """One D update then one G+E update on this device's batch shard.

  Args:
    state: the replicated train state.
    batch: {'x_src' [b, S, S, 3], 'y_src' [b], 'y_trg' [b]} (local shard).
    frozen: {'fan'?: FAN variables, 'vgg'?: ResNet-18 variables}.
    models: the linen modules.
    config: the training config (static).

  Returns:
    (new state, metrics: scalar means over the global batch).
  """
  x, y, y_trg = batch['x_src'], batch['y_src'], batch['y_trg']
  gen, enc, disc = models.generator, models.style_encoder, models.discriminator
  use_masks = float(config.w_hpf) > 0
  masks_of = ((lambda img: landmarks_lib.masks_from_frozen(frozen, img))
              if use_masks else (lambda img: None))
  # M = FAN(x), once per iteration (docs/method.md#l2m-training)
  masks = masks_of(x)

  def edit(g_params, e_params, img):
    # The training edit s_hat = s_u + s_r_hat (editing.edited_style).
    return editing.edit_core(gen, enc, {'params': g_params},
                             {'params': e_params}, img, y, y_trg, masks)

  # The edit x_fake = G(x, s_hat, M) with the current G and E is the same
  # for both updates (the original recomputes it): its forward pass runs once
  # here, and `edit_vjp` carries the G loss's gradient back through it.
  ge_params = (state.generator.params, state.style_encoder.params)
  edit_out, edit_vjp = jax.vjp(lambda ge: edit(ge[0], ge[1], x), ge_params)

  # ---- discriminator ----
  d_grads, d_metrics = discriminator_grads(
      state.discriminator.params, state.step, x, y,
      jax.lax.stop_gradient(edit_out[0]), y_trg, disc=disc, config=config)
  discriminator = state.discriminator.apply_gradients(grads=_pmean(d_grads))

  # ---- generator + style encoder (with decomposer and transformers) ----
  def g_loss_fn(ge_params, edit_out):
    # The loss given the edit's outputs; the parameters enter it directly
    # through E(x_fake) and the cycle G(x_fake).
    g_params, e_params = ge_params
    x_fake, codes, s_hat = edit_out
    adv = losses.g_adversarial_loss(
        disc.apply({'params': discriminator.params}, x_fake, y_trg))
    s_pred = enc.apply({'params': e_params}, x_fake, y_trg, y_trg)[0]
    sty = losses.style_reconstruction_loss(s_pred, s_hat)
    x_rec = gen.apply({'params': g_params}, x_fake, codes.s, masks_of(x_fake))
    cyc = losses.cycle_loss(x_rec, x)
    ort = losses.orthogonality_loss(codes.s_r, codes.s_u, codes.s_r_hat,
                                    config.orthogonality)
    total = (adv + float(config.lambda_cyc) * cyc +
             float(config.lambda_sty) * sty + float(config.lambda_ort) * ort)
    metrics = {'g_loss_adv': adv, 'g_loss_cyc': cyc, 'g_loss_sty': sty,
               'g_loss_ort': ort}
    if 'vgg' in frozen:
      feats = models.resnet.apply(
          frozen['vgg'], losses.imagenet_normalize(
              jnp.concatenate([x, x_fake], axis=0)))
      ident = losses.perceptual_loss(*jnp.split(feats, 2, axis=0))
      total = total + float(config.lambda_id) * ident
      metrics['g_loss_id'] = ident
    elif 'preservation' in frozen:
      ident = preservation_lib.preservation_loss(
          frozen['preservation'], x, x_fake,
          config.get('preservation_compare', 'features'))
      total = total + float(config.lambda_id) * ident
      metrics['g_loss_id'] = ident
    metrics['g_loss'] = total
    return total, metrics

  (_, g_metrics), (direct, d_edit_out) = jax.value_and_grad(
      g_loss_fn, argnums=(0, 1), has_aux=True)(ge_params, edit_out)
  via_edit, = edit_vjp(d_edit_out)
  g_grads, e_grads = jax.tree.map(jnp.add, direct, via_edit)
  generator = state.generator.apply_gradients(grads=_pmean(g_grads))
  style_encoder = state.style_encoder.apply_gradients(grads=_pmean(e_grads))
  step_size = 1.0 - float(config.ema_beta)
  ema = {
      'generator': optax.incremental_update(
          generator.params, state.ema['generator'], step_size),
      'style_encoder': optax.incremental_update(
          style_encoder.params, state.ema['style_encoder'], step_size),
  }
  new_state = state.replace(step=state.step + 1, generator=generator,
                            style_encoder=style_encoder,
                            discriminator=discriminator, ema=ema)
  return new_state, _pmean({**d_metrics, **g_metrics})


def abstract_state(init_fn: Callable[[], Any], mesh: jax.sharding.Mesh
                   ) -> Any:
  """The train state's shapes and dtypes, replicated over `mesh`.

  Weak types are dropped: a restored state has none, and an initialised
  one is made alike (`parallel.init_replicated`), so that the step compiled
  for these inputs serves both.
  """
  rep = parallel.replicated_sharding(mesh)
  return jax.tree.map(
      lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=rep),
      jax.eval_shape(init_fn))


def abstract_batch(config: ml_collections.ConfigDict,
                   mesh: jax.sharding.Mesh) -> dict[str, Any]:
  """Shapes, dtypes and sharding of the global training batch.

  As `input_pipeline.train_dataset` yields it and `parallel.shard_batch`
  places it.
  """
  size, batch = int(config.img_size), int(config.batch_size)
  data = parallel.data_sharding(mesh)
  label = jax.ShapeDtypeStruct((batch,), jnp.int32, sharding=data)
  return {'x_src': jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32,
                                        sharding=data),
          'y_src': label, 'y_trg': label}


def compile_train_step(config: ml_collections.ConfigDict, models: Models,
                       mesh: jax.sharding.Mesh) -> parallel.CompiledStep:
  """train_step compiled for `mesh` with config.parallel."""
  step = functools.partial(train_step, models=models, config=config)
  return parallel.compile_step(step, mesh, config.parallel, num_args=1)


# ---------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------


NonFiniteError = training.NonFiniteError


# Config fields that change the shapes of the saved arrays (through the
# model config) or the meaning of its labels; a resume must keep them.
STRUCTURAL_FIELDS = ('img_size', 'style_dim', 'num_domains', 'max_conv_dim',
                     'base_dim', 'w_hpf', 'domains')


def _structure(model_config: Mapping[str, Any]) -> dict[str, Any]:
  mc = dict(model_config)
  if mc.get('base_dim') in (None, 0):
    mc['base_dim'] = 2**14 // int(mc['img_size'])  # the official width rule
  # Only whether the masked skips exist changes shapes, not the weight.
  mc['w_hpf'] = 'on (> 0)' if float(mc.get('w_hpf', 0)) > 0 else 'off (0)'
  mc['domains'] = list(mc.get('domains', []))
  return {k: mc.get(k) for k in STRUCTURAL_FIELDS}


def check_resume(saved: Mapping[str, Any], current: Mapping[str, Any],
                 checkpoint: str) -> list[str]:
  """Compares a checkpoint's meta with the run's; returns changed fields.

  Raises:
    checkpointing.CheckpointError: listing every structural field (model
      shapes, domain names and their order) that differs.
  """
  problems = []
  if 'model_config' in saved:
    old, new = _structure(saved['model_config']), _structure(
        current['model_config'])
    problems = [f'  {k}: checkpoint {old[k]!r}, this run {new[k]!r}'
                for k in STRUCTURAL_FIELDS if old[k] != new[k]]
  else:
    logging.warning('%s: the checkpoint records no model config; its shapes '
                    'are checked by the restore only.', checkpoint)
  # A schedule adds a step counter to the optimizer state of each network.
  old_s, new_s = (dict(m.get('config', {})).get('lr_schedule', 'constant')
                  for m in (saved, current))
  if (old_s == 'constant') != (new_s == 'constant'):
    problems.append(f'  lr_schedule: checkpoint {old_s!r}, this run '
                    f'{new_s!r} (constant and scheduled learning rates keep '
                    'different optimizer states)')
  if problems:
    training.refuse_resume(
        checkpoint, problems, 'The domain names are the sorted folder names '
        'of the data (the label order); the other fields fix the array '
        'shapes. Use the original values (or data), or another --workdir.')
  changed = training.changed_settings(saved, current)
  if saved.get('num_devices') != current.get('num_devices'):
    changed.append(f'devices: {saved.get("num_devices")} -> '
                   f'{current.get("num_devices")}')
  return changed


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       hooks: tuple[Callable[[int], Any], ...] = ()
                       ) -> L2MTrainState:
  """Trains L2M-GAN per `config` in `workdir`; resumes from its checkpoints.

  Writes `checkpoints/` (orbax), TensorBoard metrics, `samples/*.png` and
  `ema_export/` (the EMA params in format 'l2m_gan'). Multi-process: every
  process runs this; collectives (saves, exports, FID statistics) are
  reached by all, files are written by the main process. `hooks` are called
  with the step number after every step, after clu's (e.g. a progress
  printer).

  Returns:
    The final train state (replicated global arrays).

  Raises:
    WorkdirLockedError: another live run holds the workdir.
    DatasetError, CheckpointError, ValueError: bad data, checkpoints or
      config values (clear messages; nothing written).
    NonFiniteError: training diverged (nothing non-finite was saved).
  """
  workdir = os.path.abspath(workdir)
  if not config.data_dir:
    raise ValueError('config.data_dir is empty: set it to a folder with '
                     'train/<domain>/*.{jpg,png}')
  if parallel.is_main_process():
    pathlib.Path(workdir).mkdir(parents=True, exist_ok=True)
  parallel.sync('workdir')
  if config.get('compilation_cache_dir'):
    # Restarts (resume, preemption) load the compiled step from here.
    used = parallel.enable_compilation_cache(
        os.path.join(workdir, config.compilation_cache_dir))
    logging.info('Persistent compilation cache: %s', used)
  # SIGTERM is caught from here on (the loop decides when to stop).
  with checkpointing.WorkdirLock(workdir), training.Preemption() as preempt:
    return _train_and_evaluate(config, workdir, preempt, hooks)


def _train_and_evaluate(config, workdir, preempt, hooks=()):
  """train_and_evaluate with the workdir locked."""
  # The input pipeline (tensorflow, tfds) and the logging (clu) are needed
  # by the loop only: the step, the models and the editor import without
  # them (tests/test_imports.py).
  from l2m_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  domain_names = input_pipeline.check_layout(
      config.data_dir, config.train_split, config.val_split,
      num_domains=int(config.num_domains))
  if config.check_files:
    n = input_pipeline.check_files(
        config.data_dir, (config.train_split, config.val_split))
    logging.info('All %d image files (this process\'s share) decode.', n)
  mesh = parallel.make_mesh()
  per_device = parallel.per_device_batch_size(config.batch_size, mesh)
  logging.info('Global batch %d over %d devices (%d processes): %d per '
               'device.', config.batch_size, mesh.devices.size,
               parallel.process_count(), per_device)
  models = create_models(config, domain_names)
  rng = jax.random.key(int(config.seed))
  frozen = l2m_frozen.load_frozen(config, jax.random.fold_in(rng, 1))

  init_fn = functools.partial(create_train_state, config, models,
                              jax.random.fold_in(rng, 0),
                              tx=make_optimizer(config))
  meta_out = {'config': config.to_dict(), 'domains': domain_names,
              'num_devices': int(mesh.devices.size),
              'model_config': models.model_config.to_dict()}
  with training.checkpoint_manager(workdir, config, meta_out,
                                   check_resume) as (mngr, check_meta):
    return _loop(config, workdir, mngr, models, frozen, init_fn, mesh,
                 meta_out, check_meta, preempt, hooks)


def _loop(config, workdir, mngr, models, frozen, init_fn, mesh, meta_out,
          check_meta, preempt, extra_hooks=()):
  """Restore or init, then the train loop with samples, exports and FID."""
  from clu import parameter_overview  # pylint: disable=g-import-not-at-top
  from l2m_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  main = parallel.is_main_process()
  compiled = compile_train_step(config, models, mesh)
  frozen_dev = compiled.put_args(frozen)
  # The step compiles while the state initialises or restores and the
  # input pipeline starts (train_loop's compile_ahead then finds it done).
  background = compiled.compile_in_background(
      abstract_state(init_fn, mesh), abstract_batch(config, mesh), frozen_dev)
  state, meta, start = training.restore_or_init(mngr, init_fn, mesh,
                                                check_meta)
  writer = training.create_writer(workdir, just_logging=not main)
  if meta is None:
    for name in ('generator', 'style_encoder', 'discriminator'):
      logging.info('Parameters of the %s:', name)
      parameter_overview.log_parameter_overview(
          parallel.unreplicate_to_host(getattr(state, name).params))

  frozen_host = parallel.unreplicate_to_host(frozen)
  save_samples = l2m_hooks.SampleSaver(config, models, frozen_host, workdir,
                                       writer)
  total = int(config.total_iters)
  hooks = training.progress_hooks(total, writer, workdir,
                                  bool(config.profile)) if main else []
  extractor_cache = {}  # the Inception extractor, built once per run

  def export(step, st):
    # Every process: save_converted's orbax save is a collective.
    l2m_export.export_ema(os.path.join(workdir, 'ema_export'),
                          parallel.unreplicate_to_host(st.ema), frozen_host,
                          models.model_config, step, workdir)

  def periodic(step, last, state_now):
    if step % int(config.sample_every) == 0 or last:
      save_samples(step, state_now().ema)
    if int(config.eval_every) and (step % int(config.eval_every) == 0):
      l2m_hooks.maybe_fid(config, models, parallel.unreplicate_to_host(
          state_now().ema), frozen, step, writer, workdir, extractor_cache)

  # Device prefetch: the next batches are copied while the step runs.
  batches = parallel.prefetch(input_pipeline.train_iterator(config, start),
                              compiled.put_batch,
                              int(config.get('device_prefetch', 2)))
  background.wait()
  return training.train_loop(
      compiled, state, batches, frozen_dev, start=start, total=total,
      resumed=meta is not None, mngr=mngr, meta=meta_out, writer=writer,
      preempt=preempt, log_every=int(config.log_every),
      save_every=int(config.save_every), hooks=hooks + list(extra_hooks),
      export=export, after_step=periodic)
