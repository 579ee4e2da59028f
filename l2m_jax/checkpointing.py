"""Thin orbax wrapper for training checkpoints (house style §8).

One `ocp.CheckpointManager` per run under `<workdir>/checkpoints`, saving
asynchronously every `save_every` steps and keeping `keep`. Each checkpoint
is a Composite of

  state   the whole train state pytree (every optimiser, the EMA params, the
          step and the rng; the step is also the data iterator's position,
          see input_pipeline.py)
  meta    JSON: config, domains and step, for humans and for checks.

Restoring goes into `jax.eval_shape(init)` with the current shardings
attached, so a run saved on N devices resumes on M devices.
"""

from __future__ import annotations

import os
from typing import Any, Callable

from absl import logging
import jax
import orbax.checkpoint as ocp

STATE = 'state'
META = 'meta'


def make_manager(directory: str | os.PathLike, save_every: int, keep: int,
                 async_save: bool = True) -> ocp.CheckpointManager:
  """A CheckpointManager saving every `save_every` steps, keeping `keep`."""
  if save_every < 1 or keep < 1:
    raise ValueError(f'save_every={save_every} and keep_checkpoints={keep} '
                     'must both be >= 1')
  options = ocp.CheckpointManagerOptions(
      max_to_keep=keep, save_interval_steps=save_every, create=True,
      enable_async_checkpointing=async_save)
  return ocp.CheckpointManager(os.fspath(os.path.abspath(directory)),
                               options=options, item_names=(STATE, META))


def save(mngr: ocp.CheckpointManager, step: int, state: Any,
         meta: dict[str, Any], force: bool = False) -> bool:
  """Saves (asynchronously) if `step` is due or `force`; returns whether it did."""
  return mngr.save(step, args=ocp.args.Composite(
      **{STATE: ocp.args.StandardSave(state), META: ocp.args.JsonSave(meta)}),
                   force=force)


def abstract_like(abstract_state: Any, sharding: jax.sharding.Sharding
                  ) -> Any:
  """ShapeDtypeStructs of `abstract_state` with `sharding` attached."""
  return jax.tree.map(
      lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding),
      abstract_state)


def restore(mngr: ocp.CheckpointManager, step: int, abstract_state: Any,
            sharding: jax.sharding.Sharding) -> tuple[Any, dict[str, Any]]:
  """Restores checkpoint `step` into the structure of `abstract_state`."""
  target = abstract_like(abstract_state, sharding)
  out = mngr.restore(step, args=ocp.args.Composite(
      **{STATE: ocp.args.StandardRestore(target),
         META: ocp.args.JsonRestore()}))
  return out[STATE], out[META]


def restore_or_init(mngr: ocp.CheckpointManager, init_fn: Callable[[], Any],
                    sharding: jax.sharding.Sharding
                    ) -> tuple[Any, dict[str, Any] | None]:
  """The latest checkpoint if there is one, else `init_fn()`.

  Returns:
    (state, meta of the restored checkpoint or None when initialised).
  """
  step = mngr.latest_step()
  if step is None:
    return init_fn(), None
  logging.info('Restoring checkpoint of step %d from %s', step,
               mngr.directory)
  state, meta = restore(mngr, step, jax.eval_shape(init_fn), sharding)
  return state, meta


def reached_preemption(mngr: ocp.CheckpointManager, step: int) -> bool:
  """True when the cluster announced a preemption (multi-host sync point)."""
  try:
    return bool(mngr.reached_preemption(step))
  except Exception as e:  # pylint: disable=broad-except
    # The sync service exists only after jax.distributed.initialize().
    logging.log_first_n(logging.INFO,
                        'Preemption check unavailable (%s)', 1, e)
    return False
