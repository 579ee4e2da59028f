"""Thin orbax wrapper for training checkpoints.

One `ocp.CheckpointManager` per run under `<workdir>/checkpoints`, saving
asynchronously every `save_every` steps and keeping `keep`. Each checkpoint
is a Composite of

  state   the whole train state pytree (every optimiser, the EMA params, the
          step and the rng; the step is also the data iterator's position,
          see input_pipeline.py)
  meta    JSON: config, domains and step, for humans and for checks.

Restoring goes into `jax.eval_shape(init)` with the current shardings
attached, so a run saved on N devices resumes on M devices.

Integrity: `save` records a fingerprint of the state (`fingerprint`: per
top-level field, a position-weighted sum of the raw bits) in the meta;
`restore_latest` checks the meta (a caller's check: config and domains),
restores, and compares the fingerprint and the finiteness of the restored
state. A checkpoint that fails to restore
(truncated, altered, half-deleted) is moved to `<checkpoints>_damaged/` and
the next older one is tried, with a loud warning. `WorkdirLock` keeps a
second run off a workdir a live run holds.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import json
import os
import pathlib
import shutil
import socket
from typing import Any, Callable, Sequence

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from l2m_jax import parallel

STATE = 'state'
META = 'meta'
FINGERPRINT = 'fingerprint'


class CheckpointError(ValueError):
  """No checkpoint of the workdir can be resumed, or one does not fit."""


class WorkdirLockedError(RuntimeError):
  """Another live run holds the workdir."""


def _write_from_one_replica() -> None:
  """Each host writes a replicated array from one local copy.

  orbax's default for jax.Array ("replica-parallel") cuts every array that
  is replicated over several local devices into one slice per device and
  writes the slices in parallel. Slicing compiles one small program per
  array shape and slice: for the tiny L2M-GAN state on 4 CPU devices 68
  compilations, 5.4 s for the first save against 1.5 s without them
  (measured). The parallel copy is meant for large states; its effect on
  these train states on GPUs has not been measured, and orbax itself turns
  it off when JAX_PLATFORMS names a GPU. The switch is the registered
  handler's attribute (orbax has no public option for it in 0.12); an orbax
  without it is left as it is.
  """
  handler = ocp.type_handlers.get_type_handler(jax.Array)
  if getattr(handler, '_use_replica_parallel', False):
    handler._use_replica_parallel = False  # pylint: disable=protected-access


def make_manager(directory: str | os.PathLike, save_every: int, keep: int,
                 async_save: bool = True) -> ocp.CheckpointManager:
  """A CheckpointManager saving every `save_every` steps, keeping `keep`."""
  if save_every < 1 or keep < 1:
    raise ValueError(f'save_every={save_every} and keep_checkpoints={keep} '
                     'must both be >= 1')
  _write_from_one_replica()
  options = ocp.CheckpointManagerOptions(
      max_to_keep=keep, save_interval_steps=save_every, create=True,
      enable_async_checkpointing=async_save)
  return ocp.CheckpointManager(os.fspath(os.path.abspath(directory)),
                               options=options, item_names=(STATE, META))


def save(mngr: ocp.CheckpointManager, step: int, state: Any,
         meta: dict[str, Any], force: bool = False) -> bool:
  """Saves (asynchronously) if `step` is due or `force`; returns whether it did.

  The meta gets the state's `fingerprint`, checked at restore.
  """
  meta = dict(meta, **{FINGERPRINT: fingerprint(state)})
  return mngr.save(step, args=ocp.args.Composite(
      **{STATE: ocp.args.StandardSave(state), META: ocp.args.JsonSave(meta)}),
                   force=force)


# ---------------------------------------------------------------------------
# State integrity: fingerprints and finiteness, computed on a host copy.
# ---------------------------------------------------------------------------


def _groups(state: Any) -> dict[str, list[tuple[str, Any]]]:
  """{top-level field: [(path, leaf), ...]} of a pytree, in a fixed order."""
  out: dict[str, list[tuple[str, Any]]] = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
    keys = [str(getattr(k, 'name', getattr(k, 'key', getattr(k, 'idx', k))))
            for k in path]
    out.setdefault(keys[0] if keys else '', []).append(('/'.join(keys), leaf))
  return out


def _bits(x: np.ndarray) -> np.ndarray:
  """The raw bits of x as a flat uint32 vector."""
  x = np.ascontiguousarray(x).reshape(-1)
  size = x.dtype.itemsize
  if size in (4, 8):
    return x.view(np.uint32)
  if size == 2:
    return x.view(np.uint16).astype(np.uint32)
  return x.view(np.uint8).astype(np.uint32)


def _leaf_fingerprint(x: np.ndarray, salt: int) -> int:
  bits = _bits(x)
  # Position weights (odd, so no bit is lost) make swapped or shifted
  # values count; uint32 arithmetic wraps, so the sum is exact.
  weights = (np.arange(bits.shape[0], dtype=np.uint32)
             * np.uint32(2654435761) + np.uint32(salt)) | np.uint32(1)
  return int(np.sum(bits * weights, dtype=np.uint32))


def fingerprint(state: Any) -> dict[str, int]:
  """{top-level field: uint32 digest of its bits}.

  Computed on the host copy of one replica (orbax fetches the same copy to
  save it). Not cryptographic: it detects damaged data (bit flips,
  truncation that orbax does not notice), not tampering.
  """
  out = {}
  for name, leaves in _groups(state).items():
    total = 0
    for i, (_, leaf) in enumerate(leaves):
      total += _leaf_fingerprint(parallel.unreplicate_to_host(leaf), 2 * i + 1)
    out[name] = total % 2**32
  return dict(sorted(out.items()))


def _all_finite(x: Any) -> bool:
  host = np.asarray(parallel.unreplicate_to_host(x))
  # jnp's dtype tree: bfloat16 is not an np.inexact.
  return (not jnp.issubdtype(host.dtype, jnp.inexact)
          or bool(np.all(np.isfinite(host))))


def nonfinite_leaves(state: Any) -> list[str]:
  """Paths of the state's arrays holding NaN or inf.

  Checked on a host copy of one replica (as `fingerprint` reads it), array
  by array: no program to compile, so the first save of a run does not wait
  for one (about 3 s for the demo's state on a CPU).
  """
  named = [item for v in _groups(state).values() for item in v]
  return [path for path, x in named if not _all_finite(x)]


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
                    sharding: jax.sharding.Sharding,
                    check_meta: Callable[[dict[str, Any]], None] | None = None
                    ) -> tuple[Any, dict[str, Any] | None]:
  """The newest checkpoint that restores (see `restore_latest`), else init_fn().

  Returns:
    (state, meta of the restored checkpoint or None when initialised).
  """
  restored = restore_latest(mngr, jax.eval_shape(init_fn), sharding,
                            check_meta)
  if restored is None:
    return init_fn(), None
  return restored


def _first_line(e: BaseException) -> str:
  text = str(e).strip()
  return f'{type(e).__name__}: {text.splitlines()[0] if text else ""}'


def _restore_checked(mngr, step, abstract_state, sharding, check_meta):
  """(state, meta) of one step, or raises _Damaged; check_meta errors pass."""
  try:
    meta = mngr.restore(step, args=ocp.args.Composite(
        **{META: ocp.args.JsonRestore()}))[META]
  except Exception as e:  # pylint: disable=broad-except
    raise _Damaged(f'meta does not restore ({_first_line(e)})') from None
  if not isinstance(meta, dict):
    raise _Damaged('meta is not a JSON object')
  if check_meta is not None:
    check_meta(meta)  # a mismatch is the user's to fix: no fallback
  try:
    state, _ = restore(mngr, step, abstract_state, sharding)
  except Exception as e:  # pylint: disable=broad-except
    raise _Damaged(f'state does not restore ({_first_line(e)})') from None
  bad = nonfinite_leaves(state)
  if bad:
    raise _Damaged(f'{len(bad)} array(s) hold NaN or inf (e.g. {bad[0]})')
  want = meta.get(FINGERPRINT)
  if want is not None:
    got = fingerprint(state)
    diff = sorted(k for k in set(want) | set(got)
                  if int(want.get(k, -1)) != got.get(k, -2))
    if diff:
      raise _Damaged(f'the restored data differ from what was saved '
                     f'(fingerprint mismatch in {diff}): damaged files')
  return state, {k: v for k, v in meta.items() if k != FINGERPRINT}


class _Damaged(Exception):
  pass


def restore_latest(mngr: ocp.CheckpointManager, abstract_state: Any,
                   sharding: jax.sharding.Sharding,
                   check_meta: Callable[[dict[str, Any]], None] | None = None
                   ) -> tuple[Any, dict[str, Any]] | None:
  """The newest checkpoint that restores intact, or None when there is none.

  Newest first: the meta is restored and passed to `check_meta` (which
  raises when the checkpoint does not fit the run: that error propagates,
  nothing falls back), then the state, which must be finite and match the
  saved fingerprint. A checkpoint that fails is moved to
  `<directory>_damaged/<step>` (so that the run can save that step again)
  and the next older one is tried, with a loud warning. In a multi-process
  run every process must call this; they agree on each step's outcome.

  Raises:
    CheckpointError: checkpoints exist but none restores (all listed, with
      the reason; the damaged ones stay in place).
  """
  steps = sorted(mngr.all_steps(), reverse=True)
  failures = []
  for step in steps:
    logging.info('Restoring checkpoint of step %d from %s', step,
                 mngr.directory)
    result, why = None, None
    try:
      result = _restore_checked(mngr, step, abstract_state, sharding,
                                check_meta)
    except _Damaged as e:
      why = str(e)
    if not parallel.all_processes(result is not None):
      failures.append((step, why or 'failed to restore on another process'))
      continue
    if failures:
      _quarantine(mngr, failures)
      logging.warning('!' * 72)
      for bad_step, reason in failures:
        logging.warning('!!! Checkpoint of step %d is damaged: %s', bad_step,
                        reason)
      logging.warning('!!! Resuming from the newest intact checkpoint, step '
                      '%d; the damaged ones were moved to %s_damaged/.',
                      step, mngr.directory)
      logging.warning('!' * 72)
    return result
  if failures:
    lines = '\n'.join(f'  step {s}: {why}' for s, why in failures)
    raise CheckpointError(
        f'{mngr.directory}: no checkpoint restores:\n{lines}\nMove the '
        'checkpoints away to start from scratch, or restore them from a '
        'backup.')
  return None


def _quarantine(mngr: ocp.CheckpointManager,
                failures: Sequence[tuple[int, str]]) -> None:
  """Moves damaged steps out of the manager's directory (main process)."""
  directory = pathlib.Path(str(mngr.directory))
  target = directory.with_name(directory.name + '_damaged')
  if parallel.is_main_process():
    target.mkdir(exist_ok=True)
    stamp = datetime.datetime.now().strftime('%Y%m%d-%H%M%S')
    for step, reason in failures:
      src = directory / str(step)
      if src.exists():
        dst = target / f'{step}-{stamp}'
        shutil.move(str(src), str(dst))
        (target / f'{step}-{stamp}.reason.txt').write_text(reason + '\n')
  parallel.sync('quarantine')
  mngr.reload()


def reached_preemption(mngr: ocp.CheckpointManager, step: int) -> bool:
  """True when the cluster announced a preemption (multi-host sync point)."""
  try:
    return bool(mngr.reached_preemption(step))
  except Exception as e:  # pylint: disable=broad-except
    # The sync service exists only after jax.distributed.initialize().
    logging.log_first_n(logging.INFO,
                        'Preemption check unavailable (%s)', 1, e)
    return False


# ---------------------------------------------------------------------------
# Workdir lock.
# ---------------------------------------------------------------------------


LOCK_FILE = '.lock'


def _process_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


class WorkdirLock:
  """An exclusive lock on a workdir for the lifetime of a run.

  `<workdir>/.lock` is locked with flock(2), which the kernel releases when
  the holder dies (also on kill -9), so a lock left by a dead run is taken
  over (with a warning naming it), never obeyed; a live holder makes
  `acquire` raise WorkdirLockedError naming its host, pid and start time.
  On file systems without flock, the file's host and pid decide: a dead
  pid on this host is taken over; another host's lock is obeyed (delete the
  file if that run is gone). Only the main process locks; all processes
  agree on the outcome. Use as a context manager.
  """

  def __init__(self, workdir: str | os.PathLike):
    self.path = pathlib.Path(workdir) / LOCK_FILE
    self._fd = None

  def _info(self) -> dict[str, Any]:
    return {'host': socket.gethostname(), 'pid': os.getpid(),
            'since': datetime.datetime.now().isoformat(timespec='seconds')}

  def _read(self) -> dict[str, Any]:
    try:
      data = json.loads(self.path.read_text() or '{}')
      return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
      return {}

  def _holder(self, info: dict[str, Any]) -> str:
    return (f'pid {info.get("pid", "?")} on host {info.get("host", "?")}, '
            f'running since {info.get("since", "?")}')

  def _try_lock(self) -> str | None:
    """Locks; returns None, or the reason the lock is held by someone else."""
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      os.close(fd)
      return self._holder(self._read())
    except OSError as e:
      if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS,
                         errno.EINVAL):
        os.close(fd)
        raise
      # No flock here: decide from the recorded holder.
      prev = self._read()
      if prev.get('pid') and prev.get('host') != socket.gethostname():
        os.close(fd)
        return (self._holder(prev) + f' (this file system has no flock; if '
                f'that run is gone, delete {self.path})')
      if prev.get('pid') and _process_alive(int(prev['pid'])) and (
          int(prev['pid']) != os.getpid()):
        os.close(fd)
        return self._holder(prev)
    prev = self._read()
    if prev.get('pid'):
      logging.warning('Taking over the lock of %s: left by %s, which is no '
                      'longer running.', self.path.parent,
                      self._holder(prev))
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps(self._info()).encode())
    os.fsync(fd)
    self._fd = fd
    return None

  def acquire(self) -> 'WorkdirLock':
    held_by = None
    if parallel.is_main_process():
      self.path.parent.mkdir(parents=True, exist_ok=True)
      held_by = self._try_lock()
    if not parallel.all_processes(held_by is None):
      self.release()
      raise WorkdirLockedError(
          f'{self.path.parent}: the workdir is in use by another live run '
          f'({held_by or "see the main process"}); wait for it to finish, '
          'stop it, or choose another --workdir')
    return self

  def release(self) -> None:
    if self._fd is not None:
      try:
        os.ftruncate(self._fd, 0)
        fcntl.flock(self._fd, fcntl.LOCK_UN)
      except OSError:
        pass
      os.close(self._fd)
      self._fd = None

  def __enter__(self) -> 'WorkdirLock':
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()
