"""The training loop shared by train_l2m.py and train_l2l.py.

The checkpoint manager with its resume check, restore-or-init, the loop
itself (`train_loop`: steps, metrics, finite checks, saves, exports and the
trainer's periodic work), the sample-grid writer, the stop decision
(SIGTERM / preemption, one answer on every process), the finiteness checks
that keep NaN out of checkpoints and exports (docs/reliability.md), config
flattening for resume checks, and the metric writer: clu's when TensorFlow
is installed, otherwise a TensorFlow-free TensorBoard event writer with the
same methods (Latent-To-Latent training needs no TensorFlow).
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import signal
import time
from typing import Any, Callable, Iterable, Iterator, Mapping

from absl import logging
import jax
import numpy as np

from l2m_jax import checkpointing
from l2m_jax import parallel


class NonFiniteError(FloatingPointError):
  """Training produced NaN or inf; nothing non-finite was saved."""


class Preemption:
  """The one stop decision of all processes (SIGTERM or a preemption notice).

  One process: a SIGTERM handler sets a flag. Several processes: JAX's
  preemption service (started by jax.distributed.initialize) catches
  SIGTERM on any process and every process learns the same stop step from
  `parallel.reached_preemption_sync_point`, which must be asked at every
  step; a Python handler would hide SIGTERM from that service, so none is
  installed. If the service is disabled, a handler sets a local flag and the
  processes agree on it at every step (`parallel.any_process`).
  """

  def __init__(self):
    self.requested = False
    self._old = None
    self._service = parallel.preemption_service_available()

  def __enter__(self):
    if parallel.process_count() > 1 and not self._service:
      logging.warning('JAX preemption service disabled: agreeing on SIGTERM '
                      'with a collective at every step.')
    if not self._service:
      try:
        self._old = signal.signal(signal.SIGTERM, self._handle)
      except ValueError:  # not the main thread
        self._old = None
    return self

  def _handle(self, signum, frame):
    del signum, frame
    logging.warning('SIGTERM received: saving a checkpoint and exiting.')
    self.requested = True

  def should_stop(self, step: int) -> bool:
    """Whether to stop after `step`; the same answer on every process."""
    if self._service:
      return parallel.reached_preemption_sync_point(step)
    if parallel.process_count() > 1:
      return parallel.any_process(self.requested)
    return self.requested

  def __exit__(self, *exc):
    if self._old is not None:
      signal.signal(signal.SIGTERM, self._old)


def check_finite(metrics: Mapping[str, np.ndarray], step: int):
  bad = {k: float(v) for k, v in metrics.items() if not np.isfinite(v)}
  if bad:
    raise NonFiniteError(f'step {step}: non-finite losses {bad}; nothing was '
                         'saved at or after this step')


def check_state_finite(state: Any, metrics: Any, step: int,
                        compiled: parallel.CompiledStep, last_good: int | None):
  """Raises NonFiniteError naming the step, the losses and the arrays."""
  bad = checkpointing.nonfinite_leaves(state)
  if not bad:
    return
  losses_ = {k: float(v) for k, v in compiled.get_metrics(metrics).items()}
  bad_terms = {k: v for k, v in losses_.items() if not np.isfinite(v)}
  nets = sorted({p.split('/')[0] for p in bad})
  kept = (f'the last checkpoint (step {last_good}) and the export are '
          'untouched' if last_good is not None else 'no checkpoint was saved')
  raise NonFiniteError(
      f'step {step}: the training state became non-finite (NaN/inf in '
      f'{len(bad)} arrays of {nets}, e.g. {bad[0]}); losses of this step: '
      f'{bad_terms or losses_}. Nothing was saved at this step; {kept}. '
      'Rerunning resumes from that checkpoint; lower lr or check the data if '
      'it diverges again.')


def flat_config(d: Mapping[str, Any], prefix: str = '') -> dict[str, Any]:
  out = {}
  for k, v in d.items():
    if isinstance(v, Mapping):
      out.update(flat_config(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = list(v) if isinstance(v, tuple) else v
  return out


# ---------------------------------------------------------------------------
# Metric writing without TensorFlow.
# ---------------------------------------------------------------------------


def tensorflow_available() -> bool:
  try:
    import tensorflow  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    return False
  return True


class EventWriter:
  """TensorBoard scalars and images written without TensorFlow.

  The subset of clu's MetricWriter a training loop uses (`write_scalars`,
  `write_images`, `flush`, `close`), on the `tensorboard` package's event
  file writer; scalars are also logged.
  """

  def __init__(self, logdir: str, just_logging: bool = False):
    self._writer = None
    if not just_logging:
      from tensorboard.summary.writer import event_file_writer  # pylint: disable=g-import-not-at-top
      self._writer = event_file_writer.EventFileWriter(logdir)

  def _add(self, step: int, values: list[Any]) -> None:
    if self._writer is None:
      return
    from tensorboard.compat.proto import event_pb2  # pylint: disable=g-import-not-at-top
    from tensorboard.compat.proto import summary_pb2  # pylint: disable=g-import-not-at-top
    self._writer.add_event(event_pb2.Event(
        wall_time=time.time(), step=int(step),
        summary=summary_pb2.Summary(value=values)))

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    from tensorboard.compat.proto import summary_pb2  # pylint: disable=g-import-not-at-top
    logging.info('[%d] %s', step, ', '.join(
        f'{k}={float(v):.6g}' for k, v in sorted(scalars.items())))
    self._add(step, [summary_pb2.Summary.Value(tag=k, simple_value=float(v))
                     for k, v in scalars.items()])

  def write_images(self, step: int, images: Mapping[str, Any]) -> None:
    """images: {tag: uint8 [N, H, W, 3]}; the first of each is written."""
    import io  # pylint: disable=g-import-not-at-top
    from PIL import Image  # pylint: disable=g-import-not-at-top
    from tensorboard.compat.proto import summary_pb2  # pylint: disable=g-import-not-at-top
    values = []
    for tag, arr in images.items():
      img = np.asarray(arr)[0]
      buf = io.BytesIO()
      Image.fromarray(img).save(buf, format='PNG')
      values.append(summary_pb2.Summary.Value(
          tag=tag, image=summary_pb2.Summary.Image(
              height=img.shape[0], width=img.shape[1],
              colorspace=img.shape[2], encoded_image_string=buf.getvalue())))
    self._add(step, values)

  def flush(self) -> None:
    if self._writer is not None:
      self._writer.flush()

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()
      self._writer = None


def create_writer(workdir: str, just_logging: bool = False):
  """clu's default writer when TensorFlow is installed, else EventWriter."""
  if tensorflow_available():
    from clu import metric_writers  # pylint: disable=g-import-not-at-top
    return metric_writers.create_default_writer(workdir,
                                                just_logging=just_logging)
  logging.info('TensorFlow is not installed: TensorBoard events are written '
               'with the tensorboard package.')
  return EventWriter(os.fspath(workdir), just_logging=just_logging)


class ProgressLogger:
  """Steps per second and time left, every `every_s` seconds (logging)."""

  def __init__(self, total: int, writer: Any, every_s: float = 60.0):
    self.total, self.writer, self.every_s = total, writer, every_s
    self._t0 = self._last = None
    self._step0 = 0

  def __call__(self, step: int) -> None:
    now = time.time()
    if self._t0 is None:
      self._t0 = self._last = now
      self._step0 = step
      return
    if now - self._last < self.every_s and step != self.total:
      return
    self._last = now
    rate = (step - self._step0) / max(now - self._t0, 1e-9)
    left = (self.total - step) / rate if rate > 0 else float('inf')
    logging.info('step %d/%d: %.3g steps/s, %.0f s left', step, self.total,
                 rate, left)
    self.writer.write_scalars(step, {'steps_per_sec': rate})


def progress_hooks(total: int, writer: Any, workdir: str,
                   profile: bool = False) -> list[Any]:
  """clu's ReportProgress (and Profile) with TensorFlow, else ProgressLogger."""
  if not tensorflow_available():
    return [ProgressLogger(total, writer)]
  from clu import periodic_actions  # pylint: disable=g-import-not-at-top
  hooks = [periodic_actions.ReportProgress(num_train_steps=total,
                                           writer=writer)]
  if profile:
    hooks.append(periodic_actions.Profile(
        logdir=workdir, num_profile_steps=5, profile_duration_ms=None))
  return hooks


# ---------------------------------------------------------------------------
# The loop of both trainers: checkpoints, resume, steps, saves.
# ---------------------------------------------------------------------------


@contextlib.contextmanager
def checkpoint_manager(
    workdir: str, config: Any, meta: Mapping[str, Any],
    check_resume: Callable[[Mapping[str, Any], Mapping[str, Any], str],
                           list[str]]):
  """The run's orbax manager of `workdir/checkpoints` and its resume check.

  Args:
    workdir: the run's folder.
    config: with `save_every` and `keep_checkpoints`.
    meta: what this run saves with each checkpoint.
    check_resume: (saved meta, this run's meta, folder) -> changed settings;
      raises CheckpointError when the checkpoint does not fit the run.

  Yields:
    (manager, check_meta): check_meta(saved meta) runs `check_resume` and
    logs the allowed changes. On exit (also on errors) the last
    asynchronous save is finished and the manager closed.
  """
  ckpt_dir = os.path.join(workdir, 'checkpoints')

  def check_meta(saved):
    changed = check_resume(saved, meta, ckpt_dir)
    if changed:
      logging.warning('Resuming with changed settings (allowed): %s',
                      '; '.join(changed))

  mngr = checkpointing.make_manager(ckpt_dir, int(config.save_every),
                                    int(config.keep_checkpoints))
  try:
    yield mngr, check_meta
  finally:
    # Also on errors: finish the last good asynchronous save.
    mngr.wait_until_finished()
    mngr.close()


def restore_or_init(mngr: Any, init_fn: Callable[[], Any],
                    mesh: jax.sharding.Mesh,
                    check_meta: Callable[[Mapping[str, Any]], None]
                    ) -> tuple[Any, Mapping[str, Any] | None, int]:
  """The latest intact checkpoint, or `init_fn()` replicated over `mesh`.

  Returns:
    (state as replicated global arrays, its meta or None for a new run,
    the step to start from).
  """
  state, meta = checkpointing.restore_or_init(
      mngr, lambda: parallel.init_replicated(init_fn, mesh),
      parallel.replicated_sharding(mesh), check_meta)
  start = int(parallel.unreplicate_to_host(state.step))
  if meta is not None:
    logging.info('Resumed at step %d (saved with %s devices).', start,
                 meta.get('num_devices'))
  return state, meta, start


def write_sample_grid(workdir: str, writer: Any, step: int, grid: np.ndarray,
                      tag: str) -> None:
  """uint8 [H, W, 3] grid as `workdir/samples/<step>.png` and to `writer`."""
  out = pathlib.Path(workdir) / 'samples'
  out.mkdir(exist_ok=True)
  from PIL import Image  # pylint: disable=g-import-not-at-top
  Image.fromarray(grid).save(out / f'{step:06d}.png')
  writer.write_images(step, {tag: grid[None]})


def train_loop(compiled: parallel.CompiledStep, state: Any,
               batches: Iterator[Any], frozen: Any, *, start: int,
               total: int, resumed: bool, mngr: Any, meta: Mapping[str, Any],
               writer: Any, preempt: Preemption, log_every: int,
               save_every: int, hooks: Iterable[Callable[[int], Any]] = (),
               export: Callable[[int, Any], None] | None = None,
               needs_state: Callable[[int, bool], bool] | None = None,
               after_step: Callable[[int, bool, Callable[[], Any]], None]
               | None = None) -> Any:
  """Runs the compiled step from `start` to `total`, saving on the way.

  After each step: the `hooks` (with the step), the train metrics every
  `log_every` steps (checked finite), and every `save_every` steps, at the
  last step and on preemption a checkpoint of the state (checked finite:
  NaN is never saved) and `export(step, host state)` (not on a preemption
  stop). Then `after_step(step, last, state_now)` for the periodic work
  (samples, evaluations); `state_now()` gives the host state of the step,
  checked finite when `needs_state(step, last)` asked for it.
  The host runs at most `parallel.MAX_STEPS_IN_FLIGHT` steps ahead of the
  devices (`parallel.DispatchWindow`).

  Args:
    compiled: the step compiled by `parallel.compile_step`.
    state: the replicated state to start from.
    batches: device batches (already put with `compiled.put_batch`).
    frozen: the frozen arguments put with `compiled.put_args`.
    start, total: first and end step numbers.
    resumed: whether `state` was restored (its step is then the last good
      checkpoint).
    mngr, meta: the checkpoint manager and the meta saved with each
      checkpoint (the step is added).
    writer: the metric writer.
    preempt: the run's stop decision.

  Returns:
    The final state (replicated global arrays).
  """
  last_good = start if resumed else None
  dstate = compiled.put_state(state)
  host = None

  def state_now():
    nonlocal host
    if host is None:
      host = compiled.get_state(dstate)
    return host

  step = start
  first = None
  if step < total:
    first = next(batches)
    compiled = compiled.compile_ahead(dstate, first, frozen)
  window = parallel.DispatchWindow()
  while step < total:
    batch = first if first is not None else next(batches)
    first = None
    dstate, metrics = compiled(dstate, batch, frozen)
    window.push(metrics)
    host = None
    step += 1
    for h in hooks:
      h(step)
    last = step == total
    if step % log_every == 0 or last:
      m = compiled.get_metrics(metrics)
      check_finite(m, step)
      writer.write_scalars(step, {f'train/{k}': float(v)
                                  for k, v in m.items()})
    stop = preempt.should_stop(step)
    due = step % save_every == 0 or last
    if due or stop or (needs_state is not None and needs_state(step, last)):
      # Never save, export or evaluate NaN: the last good checkpoint stays.
      check_state_finite(state_now(), metrics, step, compiled, last_good)
    if due or stop:
      if checkpointing.save(mngr, step, host, {**meta, 'step': step},
                            force=last or stop):
        last_good = step
      if due and export is not None:
        export(step, host)
    if stop:
      logging.warning('Preempted at step %d: checkpoint written, exiting.',
                      step)
      break
    if after_step is not None:
      after_step(step, last, state_now)
  mngr.wait_until_finished()
  writer.flush()
  return compiled.get_state(dstate)


def changed_settings(saved: Mapping[str, Any], current: Mapping[str, Any]
                     ) -> list[str]:
  """'field: old -> new' for every config field a resume changes."""
  old_cfg = flat_config(saved.get('config', {}))
  new_cfg = flat_config(current.get('config', {}))
  return [f'{k}: {old_cfg.get(k)!r} -> {new_cfg.get(k)!r}'
          for k in sorted(set(old_cfg) | set(new_cfg))
          if old_cfg.get(k) != new_cfg.get(k)]


def refuse_resume(checkpoint: str, problems: list[str], advice: str):
  """Raises CheckpointError listing the structural `problems`."""
  raise checkpointing.CheckpointError(
      f'{checkpoint}: this run does not fit the checkpoint it would '
      'resume:\n' + '\n'.join(problems) + f'\n{advice} Nothing was written.')
