"""Edit throughput (images/s): the JAX `edit` vs the torch reference pipeline.

  python scripts/benchmark_edit.py --batch-sizes 1 8 32 --repeats 3 --w-hpf 1

Both sides use the same random weights (a random official-format checkpoint
converted with l2m_jax.convert.l2m) at img_size 256 and run on this
machine's default device (CPU for torch here). Timed: style encoder, FAN
masks (w_hpf > 0), generator, degree 1. The first (compiling / warm-up)
call is excluded; the median of --repeats timed calls is reported.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse  # pylint: disable=g-import-not-at-top,wrong-import-position
import statistics  # pylint: disable=g-import-not-at-top,wrong-import-position
import tempfile  # pylint: disable=g-import-not-at-top,wrong-import-position
import time  # pylint: disable=g-import-not-at-top,wrong-import-position


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--batch-sizes', type=int, nargs='+', default=[1, 8, 32])
  p.add_argument('--repeats', type=int, default=3,
                 help='timed calls per batch size (median reported)')
  p.add_argument('--w-hpf', type=int, default=1, choices=(0, 1),
                 help='1: official masked model (FAN included); 0: no masks')
  p.add_argument('--img-size', type=int, default=256)
  p.add_argument('--max-conv-dim', type=int, default=512)
  p.add_argument('--skip-torch', action='store_true')
  return p.parse_args(argv)


def _time(fn, repeats):
  fn()  # warm-up / compilation, excluded
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def main(argv=None) -> int:
  args = parse_args(argv)
  if args.repeats < 1 or min(args.batch_sizes) < 1:
    print('error: --repeats and --batch-sizes must be >= 1', file=sys.stderr)
    return 2
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  from l2m_jax import editing  # pylint: disable=g-import-not-at-top
  from l2m_jax.convert import l2m as l2m_convert  # pylint: disable=g-import-not-at-top
  from l2m_jax.models import l2m  # pylint: disable=g-import-not-at-top
  from tests import l2m_checkpoints as lc  # pylint: disable=g-import-not-at-top

  print(f'jax {jax.__version__} on {jax.devices()[0].device_kind} '
        f'({jax.default_backend()}); torch {torch.__version__} on CPU with '
        f'{torch.get_num_threads()} threads', flush=True)
  nets = lc.build_torch_nets(img_size=args.img_size,
                             max_conv_dim=args.max_conv_dim, w_hpf=args.w_hpf,
                             seed=0)
  with tempfile.TemporaryDirectory() as d:
    path = lc.save_checkpoint(nets, d)
    variables, meta = l2m_convert.convert_checkpoint(path)
  config = l2m.L2MModelConfig.from_dict(meta['config'])
  variables = jax.device_put(variables)
  print(f'config {config.to_dict()}', flush=True)

  rows = []
  for bs in args.batch_sizes:
    x = lc.sample_images(bs, args.img_size, seed=bs)
    y = np.zeros((bs,), np.int32)
    y1 = np.ones((bs,), np.int32)

    def jax_fn():
      editing.edit(variables, x, y, y1, 1.0, config=config).block_until_ready()

    t_jax = _time(jax_fn, args.repeats)
    t_torch = float('nan')
    if not args.skip_torch:
      xt, yt, y1t = lc.nhwc_to_torch(x), torch.from_numpy(y), torch.from_numpy(
          y1)

      def torch_fn():
        with torch.no_grad():
          masks = nets.fan.get_heatmap(xt) if args.w_hpf > 0 else None
          s, _, s2, s3 = nets.style_encoder(xt, yt, y1t)
          nets.generator(xt, s + (s3 - s2), masks)

      t_torch = _time(torch_fn, args.repeats)
    rows.append((bs, bs / t_jax, bs / t_torch))
    print(f'batch {bs}: jax {bs / t_jax:.3f} img/s, torch '
          f'{bs / t_torch:.3f} img/s', flush=True)

  print('\n| batch | JAX img/s | torch img/s | JAX / torch |')
  print('| --- | --- | --- | --- |')
  for bs, j, t in rows:
    print(f'| {bs} | {j:.3f} | {t:.3f} | {j / t:.2f} |')
  return 0


if __name__ == '__main__':
  sys.exit(main())
