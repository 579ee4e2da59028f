"""Inception FID feature throughput: JAX (this package) vs the torch reference.

  python3 scripts/benchmark_fid.py [--batch-size 200] [--iters 5] \
      [--dtypes float32 bfloat16] [--variant torchvision|fid] \
      [--precision highest|default] [--json fid.json]

Both sides run the same random-weight network (torchvision `inception_v3`
with the chosen variant's pooling; weights converted with
`l2m_jax.convert.inception`) on the same float32 299x299 batch, on the
default device of each framework (the first GPU when present). JAX batches
are sharded over all local devices. float32 runs at the chosen precision on
both sides (highest: the FID protocols' setting; torch's TF32 is switched
off to match, on when --precision default); bfloat16 is the module's bf16
compute dtype against torch.autocast. Prints images/s of each and the
ratio after one untimed warm-up call, with XLA's FLOPs of the compiled
program, TFLOP/s, MFU, compile time and memory (scripts/bench_util.py).
`--tiny` uses 75x75 inputs (the smallest the network takes) for tests.
"""

import os, sys  # pylint: disable=g-multiple-import
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # bench_util

import argparse
import platform
import time

import jax
import numpy as np

import bench_util  # pylint: disable=g-import-not-at-top,wrong-import-position


def torch_reference(variant, seed=0):
  """torchvision Inception3 (pytorch-fid's blocks for variant 'fid')."""
  import torch  # pylint: disable=g-import-not-at-top
  from third_party.torchvision_compat import import_torchvision  # pylint: disable=g-import-not-at-top
  tv = import_torchvision()
  if variant == 'fid':
    from pytorch_fid import inception as pf  # pylint: disable=g-import-not-at-top
    model = tv.models.inception_v3(weights=None, aux_logits=False,
                                   init_weights=False, num_classes=1008)
    model.Mixed_5b = pf.FIDInceptionA(192, pool_features=32)
    model.Mixed_5c = pf.FIDInceptionA(256, pool_features=64)
    model.Mixed_5d = pf.FIDInceptionA(288, pool_features=64)
    model.Mixed_6b = pf.FIDInceptionC(768, channels_7x7=128)
    model.Mixed_6c = pf.FIDInceptionC(768, channels_7x7=160)
    model.Mixed_6d = pf.FIDInceptionC(768, channels_7x7=160)
    model.Mixed_6e = pf.FIDInceptionC(768, channels_7x7=192)
    model.Mixed_7b = pf.FIDInceptionE_1(1280)
    model.Mixed_7c = pf.FIDInceptionE_2(2048)
  else:
    model = tv.models.inception_v3(weights=None, aux_logits=True,
                                   init_weights=False)
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():  # He-normal convs, non-trivial BN statistics
    for m in model.modules():
      if isinstance(m, torch.nn.Conv2d):
        m.weight.copy_(torch.randn(m.weight.shape, generator=gen)
                       * (2.0 / m.weight[0].numel()) ** 0.5)
      elif isinstance(m, torch.nn.BatchNorm2d):
        m.running_mean.copy_(torch.rand(m.num_features, generator=gen) - 0.5)
        m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
  return model.eval()


def torch_features(m, x):
  import torch  # pylint: disable=g-import-not-at-top
  f = torch.nn.functional
  x = m.Conv2d_2b_3x3(m.Conv2d_2a_3x3(m.Conv2d_1a_3x3(x)))
  x = f.max_pool2d(x, 3, 2)
  x = f.max_pool2d(m.Conv2d_4a_3x3(m.Conv2d_3b_1x1(x)), 3, 2)
  for name in ('Mixed_5b', 'Mixed_5c', 'Mixed_5d', 'Mixed_6a', 'Mixed_6b',
               'Mixed_6c', 'Mixed_6d', 'Mixed_6e', 'Mixed_7a', 'Mixed_7b',
               'Mixed_7c'):
    x = getattr(m, name)(x)
  return torch.flatten(f.adaptive_avg_pool2d(x, 1), 1)


def timeit(fn, iters):
  fn()  # warm-up / compile
  t0 = time.perf_counter()
  for _ in range(iters):
    fn()
  return (time.perf_counter() - t0) / iters


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--batch-size', type=int, default=8)
  p.add_argument('--iters', type=int, default=5)
  p.add_argument('--dtypes', nargs='+', default=['float32'],
                 choices=('float32', 'bfloat16'))
  p.add_argument('--variant', default='torchvision',
                 choices=('torchvision', 'fid'))
  p.add_argument('--precision', default='highest',
                 choices=('highest', 'default'))
  p.add_argument('--tiny', action='store_true',
                 help='75x75 inputs (test size)')
  p.add_argument('--skip-torch', action='store_true')
  p.add_argument('--peak-tflops', type=float, default=None)
  p.add_argument('--json', default=None, help='append the rows to this JSON')
  args = p.parse_args(argv)
  if args.batch_size <= 0 or args.iters <= 0:
    p.error('--batch-size and --iters must be positive')

  import contextlib  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  from l2m_jax import parallel  # pylint: disable=g-import-not-at-top
  from l2m_jax.convert import inception as convert_inception  # pylint: disable=g-import-not-at-top
  from l2m_jax.models import inception as inception_lib  # pylint: disable=g-import-not-at-top

  model = torch_reference(args.variant)
  tdev = 'cuda' if torch.cuda.is_available() else 'cpu'
  if tdev == 'cuda':
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.allow_tf32 = args.precision == 'default'
    torch.backends.cuda.matmul.allow_tf32 = args.precision == 'default'
  tkind = torch.cuda.get_device_name(0) if tdev == 'cuda' else 'cpu'
  variables, _ = convert_inception.convert_state_dict(model.state_dict())
  model = model.to(tdev)
  side = 75 if args.tiny else 299
  rng = np.random.default_rng(0)
  x = rng.uniform(-1, 1, (args.batch_size, side, side, 3)).astype(np.float32)
  xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).to(tdev)
  sync = torch.cuda.synchronize if tdev == 'cuda' else (lambda: None)

  mesh = parallel.make_mesh()
  ndev = mesh.devices.size
  if args.batch_size % ndev:
    p.error(f'--batch-size={args.batch_size}: must be a multiple of the '
            f'{ndev} JAX devices')
  jdev = jax.devices()[0]
  jvars = parallel.replicate(variables, mesh)
  xj = parallel.shard_batch(x, mesh)
  bs = args.batch_size
  rows = []
  print(f'machine: {platform.node()} '
        f'{platform.processor() or platform.machine()}, {os.cpu_count()} '
        f'CPUs; jax {jax.__version__} on {ndev}x {jdev.device_kind}; torch '
        f'{torch.__version__} on {tkind} ({torch.get_num_threads()} threads)')
  for dtype in args.dtypes:
    bf16 = dtype == 'bfloat16'
    precision = (jax.lax.Precision.HIGHEST
                 if args.precision == 'highest' and not bf16
                 else jax.lax.Precision.DEFAULT)
    net = inception_lib.InceptionV3(
        variant=args.variant, precision=precision,
        dtype=jnp.bfloat16 if bf16 else jnp.float32)
    t_compile = time.perf_counter()
    exe = jax.jit(net.apply).lower(jvars, xj).compile()
    t_compile = time.perf_counter() - t_compile
    run_jax = lambda: exe(jvars, xj).block_until_ready()
    amp = ((lambda: torch.autocast(tdev, dtype=torch.bfloat16)) if bf16
           else contextlib.nullcontext)

    def run_torch():
      with torch.no_grad(), amp():
        out = torch_features(model, xt)
      sync()
      return out

    ours = np.asarray(run_jax(), np.float32)
    err = float('nan')
    if not args.skip_torch:
      err = float(np.abs(ours - run_torch().float().cpu().numpy()).max())
    tj = timeit(run_jax, args.iters)
    flops = bench_util.xla_flops(exe)
    flops = flops * ndev if flops else None
    peak = bench_util.jax_peak_bytes()
    rows.append(bench_util.row(
        'fid', 'jax', dtype=dtype, batch=bs, size=side, step_s=tj,
        compile_s=t_compile, flops=flops,
        peak=bench_util.peak_tflops(jdev.platform, jdev.device_kind, dtype,
                                    args.peak_tflops),
        device=f'{ndev}x {jdev.device_kind}',
        peak_bytes=peak or bench_util.rss_peak_bytes(),
        peak_kind='device (process)' if peak else 'rss (process)',
        xla_memory_bytes=bench_util.xla_memory_bytes(exe),
        precision=args.precision if not bf16 else 'bf16',
        variant=args.variant, max_abs_feature_diff=err))
    bench_util.write_json(args.json, rows[-1:])
    print(f'{dtype}, variant {args.variant}, batch {bs}, {side}x{side}, '
          f'precision {args.precision}, {args.iters} timed iterations')
    print(f'jax:   {bs / tj:8.2f} images/s  ({tj * 1e3:.0f} ms/batch; '
          f'compile {t_compile:.1f} s)')
    if not args.skip_torch:
      if tdev == 'cuda':
        torch.cuda.reset_peak_memory_stats()
      tt = timeit(run_torch, args.iters)
      tpeak = torch.cuda.max_memory_allocated() if tdev == 'cuda' else None
      rows.append(bench_util.row(
          'fid', 'torch', dtype=dtype, batch=bs, size=side, step_s=tt,
          compile_s=None, flops=flops,
          peak=bench_util.peak_tflops(tdev, tkind, dtype, args.peak_tflops),
          device=tkind, peak_bytes=tpeak or bench_util.rss_peak_bytes(),
          peak_kind='device' if tpeak else 'rss (process)',
          counter_flops=bench_util.torch_flops(run_torch),
          flops_source='xla (JAX program of the same batch)',
          precision=args.precision if not bf16 else 'bf16',
          variant=args.variant))
      bench_util.write_json(args.json, rows[-1:])
      print(f'torch: {bs / tt:8.2f} images/s  ({tt * 1e3:.0f} ms/batch)')
      print(f'ratio jax/torch: {tt / tj:.2f}x; max |feature diff| {err:.2e}')
  print()
  print(bench_util.format_table(rows))
  return 0


if __name__ == '__main__':
  sys.exit(main())
