"""Where the CPU time of Inception features goes: convolutions, JAX vs torch.

  python3 scripts/profile_cpu_convs.py [--batch-size 8] [--repeats 5]

Records the shape of every convolution of the torchvision Inception-v3 (the
FID network) on a --batch-size batch of 299x299 images, then times each
convolution alone in JAX (`lax.conv_general_dilated`, NHWC/HWIO as the Flax
model runs it, jit-compiled) and in torch (`F.conv2d`, NCHW), alternating the
two and keeping the fastest of --repeats calls of each (the least disturbed
by other jobs). Prints the summed convolution time of each framework, the
whole network's time (the same min-of-repeats rule) and the layers where JAX
loses most. XLA_FLAGS given in the environment apply to the JAX side (e.g.
--xla_cpu_use_onednn=true).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import argparse  # pylint: disable=g-import-not-at-top,wrong-import-position
import bench_util  # pylint: disable=g-import-not-at-top,wrong-import-position


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--batch-size', type=int, default=8)
  p.add_argument('--repeats', type=int, default=5)
  p.add_argument('--top', type=int, default=8)
  args = p.parse_args(argv)
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  import benchmark_fid  # pylint: disable=g-import-not-at-top
  from l2m_jax.convert import inception as convert_inception  # pylint: disable=g-import-not-at-top
  from l2m_jax.models import inception as inception_lib  # pylint: disable=g-import-not-at-top

  model = benchmark_fid.torch_reference('torchvision')
  shapes = []

  def hook(mod, inp, _):
    shapes.append((tuple(inp[0].shape), tuple(mod.weight.shape),
                   mod.stride, mod.padding))

  handles = [m.register_forward_hook(hook) for m in model.modules()
             if isinstance(m, torch.nn.Conv2d)]
  rng = np.random.default_rng(0)
  x = rng.uniform(-1, 1, (args.batch_size, 299, 299, 3)).astype(np.float32)
  xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
  with torch.no_grad():
    benchmark_fid.torch_features(model, xt)
  for h in handles:
    h.remove()

  rows = []
  for (n, c, h, w), (o, _, kh, kw), stride, pad in shapes:
    xa = rng.standard_normal((n, h, w, c)).astype(np.float32)
    ka = rng.standard_normal((kh, kw, c, o)).astype(np.float32)
    xj, kj = jax.device_put(xa), jax.device_put(ka)
    conv = jax.jit(lambda a, k, s=stride, q=pad: jax.lax.conv_general_dilated(
        a, k, s, [(q[0], q[0]), (q[1], q[1])],
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
        precision=jax.lax.Precision.HIGHEST))
    xtt = torch.from_numpy(xa.transpose(0, 3, 1, 2).copy())
    ktt = torch.from_numpy(ka.transpose(3, 2, 0, 1).copy())
    tj = bench_util.best_of(lambda: conv(xj, kj).block_until_ready(),
                            args.repeats, warmup=True)
    with torch.no_grad():
      tt = bench_util.best_of(lambda: torch.nn.functional.conv2d(
          xtt, ktt, stride=stride, padding=pad), args.repeats, warmup=True)
    flops = 2 * n * o * c * kh * kw * (
        (h + 2 * pad[0] - kh) // stride[0] + 1) * (
            (w + 2 * pad[1] - kw) // stride[1] + 1)
    rows.append(((n, h, w, c, o, kh, kw, stride), tj, tt, flops))

  net = inception_lib.InceptionV3(variant='torchvision')
  variables, _ = convert_inception.convert_state_dict(model.state_dict())
  apply = jax.jit(net.apply)
  xj = jax.device_put(x)
  t_net_j = bench_util.best_of(
      lambda: apply(variables, xj).block_until_ready(), args.repeats,
      warmup=True)
  with torch.no_grad():
    t_net_t = bench_util.best_of(
        lambda: benchmark_fid.torch_features(model, xt), args.repeats,
        warmup=True)
  sj = sum(r[1] for r in rows)
  st = sum(r[2] for r in rows)
  total_flops = sum(r[3] for r in rows)
  print(f'jax {jax.__version__}, torch {torch.__version__} '
        f'({torch.get_num_threads()} threads), XLA_FLAGS='
        f'{os.environ.get("XLA_FLAGS", "")!r}, load {os.getloadavg()}')
  print(f'{len(rows)} convolutions, {total_flops / 1e9:.1f} GFLOP at batch '
        f'{args.batch_size}')
  print(f'convolutions alone: jax {sj:.3f} s, torch {st:.3f} s '
        f'(torch/jax {st / sj:.2f}); {total_flops / sj / 1e9:.1f} vs '
        f'{total_flops / st / 1e9:.1f} GFLOP/s')
  print(f'whole network:      jax {t_net_j:.3f} s, torch {t_net_t:.3f} s '
        f'(torch/jax {t_net_t / t_net_j:.2f})')
  print(f'outside the convolutions: jax {t_net_j - sj:.3f} s, torch '
        f'{t_net_t - st:.3f} s')
  print('layers where JAX loses most (shape n,h,w,cin,cout,kh,kw,stride):')
  for shape, tj, tt, fl in sorted(rows, key=lambda r: r[2] - r[1])[:args.top]:
    print(f'  {shape}: jax {tj * 1e3:.1f} ms, torch {tt * 1e3:.1f} ms, '
          f'{fl / 1e9:.2f} GFLOP')
  return 0


if __name__ == '__main__':
  sys.exit(main())
