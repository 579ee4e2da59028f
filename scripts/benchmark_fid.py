"""Inception FID feature throughput: JAX (this package) vs the torch reference.

  python scripts/benchmark_fid.py [--batch-size 8] [--iters 5] \
      [--variant torchvision|fid] [--precision highest|default]

Both sides run the same random-weight network (torchvision `inception_v3`
with the chosen variant's pooling; weights converted with
`l2m_jax.convert.inception`) on the same float32 299x299 batch, on the
default device of each framework (CPU here; the first GPU when present).
JAX batches are sharded over all local devices. Prints images/s of each and
the ratio, after one untimed warm-up (compilation) call.
"""

import os, sys  # pylint: disable=g-multiple-import
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse
import platform
import time

import jax
import numpy as np


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
  p.add_argument('--variant', default='torchvision',
                 choices=('torchvision', 'fid'))
  p.add_argument('--precision', default='highest',
                 choices=('highest', 'default'))
  args = p.parse_args(argv)
  if args.batch_size <= 0 or args.iters <= 0:
    p.error('--batch-size and --iters must be positive')

  import torch  # pylint: disable=g-import-not-at-top
  from l2m_jax import parallel  # pylint: disable=g-import-not-at-top
  from l2m_jax.convert import inception as convert_inception  # pylint: disable=g-import-not-at-top
  from l2m_jax.models import inception as inception_lib  # pylint: disable=g-import-not-at-top

  model = torch_reference(args.variant)
  tdev = 'cuda' if torch.cuda.is_available() else 'cpu'
  variables, _ = convert_inception.convert_state_dict(model.state_dict())
  model = model.to(tdev)
  rng = np.random.default_rng(0)
  x = rng.uniform(-1, 1, (args.batch_size, 299, 299, 3)).astype(np.float32)
  xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).to(tdev)

  def run_torch():
    with torch.no_grad():
      out = torch_features(model, xt)
    if tdev == 'cuda':
      torch.cuda.synchronize()
    return out

  mesh = parallel.make_mesh()
  ndev = mesh.devices.size
  if args.batch_size % ndev:
    p.error(f'--batch-size={args.batch_size}: must be a multiple of the '
            f'{ndev} JAX devices')
  precision = (jax.lax.Precision.HIGHEST if args.precision == 'highest'
               else jax.lax.Precision.DEFAULT)
  net = inception_lib.InceptionV3(variant=args.variant, precision=precision)
  jvars = parallel.replicate(variables, mesh)
  xj = parallel.shard_batch(x, mesh)
  apply = jax.jit(net.apply)

  def run_jax():
    return apply(jvars, xj).block_until_ready()

  t_compile = time.perf_counter()
  ours = np.asarray(run_jax())
  t_compile = time.perf_counter() - t_compile
  err = float(np.abs(ours - run_torch().cpu().numpy()).max())
  tj = timeit(run_jax, args.iters)
  tt = timeit(run_torch, args.iters)
  bs = args.batch_size
  print(f'machine: {platform.node()} {platform.processor() or platform.machine()}'
        f', {os.cpu_count()} CPUs; jax {jax.__version__} on '
        f'{ndev}x {jax.devices()[0].device_kind}; torch {torch.__version__} '
        f'on {tdev} ({torch.get_num_threads()} threads)')
  print(f'variant {args.variant}, batch {bs}, 299x299, precision '
        f'{args.precision}, {args.iters} timed iterations')
  print(f'jax:   {bs / tj:8.2f} images/s  ({tj * 1e3:.0f} ms/batch; first '
        f'call incl. compile {t_compile:.1f} s)')
  print(f'torch: {bs / tt:8.2f} images/s  ({tt * 1e3:.0f} ms/batch)')
  print(f'ratio jax/torch: {tt / tj:.2f}x; max |feature diff| {err:.2e}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
