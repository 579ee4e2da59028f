"""Training entry point (as google/flax examples/imagenet/main.py).

  python3 -m l2m_jax.main --config=configs/l2m_celebahq.py --workdir=runs/smile \
      --config.data_dir=data/celeba_hq
  python3 -m l2m_jax.main --config=configs/l2l_paper.py --workdir=runs/l2l

`config.method` picks the trainer: 'l2m' (L2M-GAN, train_l2m.py; the
default) or 'l2l' (Latent-To-Latent, train_l2l.py).

Multi-host: when the environment describes several processes (SLURM,
Cloud TPU, or JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES /
JAX_PROCESS_ID), `jax.distributed.initialize()` is called before any device
is touched. See docs/training.md.

Exit status (l2m_jax/errors.py, docs/reliability.md): 0 done or stopped by
SIGTERM after saving, 2 a user error (one message, no traceback), 3 training
diverged (NaN/inf; nothing non-finite saved), 1 a bug (traceback).
"""

import os
import sys

from l2m_jax import host_memory  # imports no JAX  # pylint: disable=g-bad-import-order

# glibc reads its malloc tunables at process start: the CLI re-executes
# itself once with transparent huge pages on (l2m_jax/host_memory.py).
if __name__ == '__main__':
  host_memory.reexec_with_huge_pages()

from absl import app  # pylint: disable=g-import-not-at-top,wrong-import-position
from absl import flags  # pylint: disable=g-import-not-at-top,wrong-import-position
from absl import logging  # pylint: disable=g-import-not-at-top,wrong-import-position
from ml_collections import config_flags  # pylint: disable=g-import-not-at-top,wrong-import-position

from l2m_jax import cli

FLAGS = flags.FLAGS

flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics, '
                    'samples and the EMA export.')
config_flags.DEFINE_config_file(
    'config', None, 'Training configuration file (ml_collections).',
    lock_config=True)
flags.mark_flags_as_required(['config', 'workdir'])


def _is_multiprocess() -> bool:
  """True when the environment says this run has several processes."""
  env = os.environ
  if int(env.get('JAX_NUM_PROCESSES', '1')) > 1:
    return True
  if int(env.get('SLURM_NTASKS', '1')) > 1 and 'SLURM_JOB_ID' in env:
    return True
  if int(env.get('OMPI_COMM_WORLD_SIZE', '1')) > 1:
    return True
  return 'TPU_WORKER_HOSTNAMES' in env and ',' in env['TPU_WORKER_HOSTNAMES']


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Too many command-line arguments: {argv[1:]}')
  method = FLAGS.config.get('method', 'l2m')
  if method not in ('l2m', 'l2l'):
    print(f"error: method={method!r}: expected 'l2m' (L2M-GAN) or 'l2l' "
          '(Latent-To-Latent)', file=sys.stderr)
    sys.exit(2)
  if method == 'l2m':
    # TF is only the input pipeline: keep it off the accelerators.
    # Latent-To-Latent training needs no TensorFlow.
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    tf.config.experimental.set_visible_devices([], 'GPU')
  import jax  # pylint: disable=g-import-not-at-top
  if _is_multiprocess():
    if 'JAX_COORDINATOR_ADDRESS' in os.environ:
      jax.distributed.initialize(
          os.environ['JAX_COORDINATOR_ADDRESS'],
          int(os.environ['JAX_NUM_PROCESSES']),
          int(os.environ['JAX_PROCESS_ID']))
    else:
      jax.distributed.initialize()  # SLURM / TPU / MPI auto-detection
  logging.info('JAX process %d / %d; local devices %s; %d devices in all; %s',
               jax.process_index(), jax.process_count(), jax.local_devices(),
               jax.device_count(), host_memory.status())
  if method == 'l2l':
    from l2m_jax import train_l2l as trainer  # pylint: disable=g-import-not-at-top
  else:
    from l2m_jax import train_l2m as trainer  # pylint: disable=g-import-not-at-top
  # Exit codes: l2m_jax/errors.py (docs/reliability.md). A user mistake (bad
  # path, data, config value or checkpoint, a locked workdir) is one message
  # naming the file / key / field, no traceback; a bug keeps its traceback.
  cli.run_reporting_errors(trainer.train_and_evaluate, FLAGS.config,
                           FLAGS.workdir)


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
