"""Benchmarks the L2L mapper, the StyleGAN2 generator and the photo path.

  python3 scripts/benchmark_latent.py                       # 256 and 1024 px
  python3 scripts/benchmark_latent.py --sizes 256 --repeats 5 --json out.json
  python3 scripts/benchmark_latent.py --photo --skip-mapper --sizes \
      --photo-size 1024 --photo-batch 1 --repeats 1     # photo path only

Measures, on random weights shared by both sides (the in-house torch
reference is converted with l2m_jax.convert):

* mapper edits/s: the legacy edit `0.7 w + 0.3 M(w + 2 d)` on [B, 18, 512];
* generator images/s at each size (config-f widths), W+ input, stored
  noise;
* with --photo, photos/s of the whole photo path at --photo-size: ReStyle-e4e
  inversion (--photo-iters iterations, 5 by default: encoder + generator
  each), the legacy mapper edit (k = 2) and the final render, JAX
  (`latent_editing.Inverter` + `LatentEditor`, jit-compiled, one device)
  against the torch references (`third_party/restyle_torch.py`,
  `l2l_mapper_torch.py`) with the same random weights and the same batch of
  generated 256 px faces.

JAX runs jit-compiled (compile time reported separately, excluded from the
rate); torch runs under no_grad in float32 on the CPU. Each rate is the best
of `--repeats` timed runs after one warm-up. Prints a markdown table with the
JAX/torch ratios.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse  # pylint: disable=g-import-not-at-top,wrong-import-position
import json  # pylint: disable=g-import-not-at-top,wrong-import-position
import platform  # pylint: disable=g-import-not-at-top,wrong-import-position
import time  # pylint: disable=g-import-not-at-top,wrong-import-position


def parse_args(argv=None):
  p = argparse.ArgumentParser(description='Benchmark the L2L mapper and the '
                              'StyleGAN2 generator (JAX vs torch reference).')
  p.add_argument('--sizes', type=int, nargs='*', default=[256, 1024],
                 help='generator resolutions (powers of 2 >= 8); none: skip '
                 'the generator benchmark')
  p.add_argument('--gen-batch', type=int, nargs='+', default=None,
                 help='batch per size (default 4 below 1024 px, 1 at 1024)')
  p.add_argument('--mapper-batch', type=int, default=64)
  p.add_argument('--repeats', type=int, default=3)
  p.add_argument('--torch-threads', type=int, default=None,
                 help='torch intra-op threads (default: torch default); on a '
                 'shared, oversubscribed CPU 1 is often fastest')
  p.add_argument('--skip-torch', action='store_true')
  p.add_argument('--skip-mapper', action='store_true')
  p.add_argument('--photo', action='store_true',
                 help='also benchmark the photo path (invert + edit + '
                 'render)')
  p.add_argument('--photo-size', type=int, default=1024,
                 help='generator resolution of the photo path')
  p.add_argument('--photo-batch', type=int, default=1,
                 help='photos per call of the photo path')
  p.add_argument('--photo-iters', type=int, default=5,
                 help='ReStyle iterations of the photo path')
  p.add_argument('--json', help='also write the results here')
  return p.parse_args(argv)


def _best(fn, repeats):
  fn()  # warm-up
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return min(times)


def bench_mapper(batch, repeats, skip_torch):
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  from l2m_jax.convert import mapper as cm  # pylint: disable=g-import-not-at-top
  from third_party import l2l_mapper_torch as tm  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  ref = tm.LevelsMapper().eval()
  cfg = cm.make_config('legacy')
  variables, _ = cm.convert_state_dict(ref.state_dict(), 'bench', cfg)
  model = cm.build_model(cfg)
  w = np.random.default_rng(0).standard_normal((batch, 18, 512)).astype(
      np.float32)
  d = np.random.default_rng(1).standard_normal(512).astype(np.float32)
  d /= np.linalg.norm(d)
  fn = jax.jit(lambda v, w, d: model.apply(v, w, direction=d, strength=2.0,
                                           method=model.edit))
  variables = jax.device_put(variables)
  wj, dj = jax.device_put(w), jax.device_put(d)
  t = time.perf_counter()
  out = fn(variables, wj, dj).block_until_ready()
  compile_s = time.perf_counter() - t
  res = dict(what='mapper legacy edit', batch=batch, compile_s=compile_s)
  res['jax_per_s'] = batch / _best(
      lambda: fn(variables, wj, dj).block_until_ready(), repeats)
  if not skip_torch:
    wt, dt = torch.from_numpy(w), torch.from_numpy(d)[None]
    with torch.no_grad():
      ref_out = tm.legacy_edit(ref, wt, dt).numpy()
      res['torch_per_s'] = batch / _best(
          lambda: tm.legacy_edit(ref, wt, dt), repeats)
    res['max_abs_diff'] = float(np.abs(np.asarray(out) - ref_out).max())
  return res


def bench_generator(size, batch, repeats, skip_torch):
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  from l2m_jax.convert import stylegan2 as cs  # pylint: disable=g-import-not-at-top
  from third_party import stylegan2_torch as ts  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  g = ts.Generator(size).eval()
  variables, cfg, _ = cs.convert_state_dict(g.state_dict(), 'bench',
                                            latent_avg=torch.zeros(512))
  model = cs.build_model(cfg)
  w = np.random.default_rng(0).standard_normal(
      (batch, model.n_latent, 512)).astype(np.float32)
  fn = jax.jit(lambda v, w: model.apply(v, w, input_is_latent=True))
  variables = jax.device_put(variables)
  wj = jax.device_put(w)
  t = time.perf_counter()
  out = fn(variables, wj).block_until_ready()
  compile_s = time.perf_counter() - t
  res = dict(what=f'generator {size} px', batch=batch, compile_s=compile_s)
  res['jax_per_s'] = batch / _best(
      lambda: fn(variables, wj).block_until_ready(), repeats)
  if not skip_torch:
    wt = torch.from_numpy(w)
    with torch.no_grad():
      run = lambda: g([wt], input_is_latent=True, randomize_noise=False)[0]
      ref = run().numpy().transpose(0, 2, 3, 1)
      res['torch_per_s'] = batch / _best(run, repeats)
    res['max_abs_diff'] = float(np.abs(np.asarray(out) - ref).max())
  return res


def bench_photo(size, batch, n_iters, repeats, skip_torch):
  """Invert (ReStyle-e4e) + legacy edit + render, JAX vs torch references."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  from l2m_jax import latent_editing as le  # pylint: disable=g-import-not-at-top
  from l2m_jax import parallel  # pylint: disable=g-import-not-at-top
  from l2m_jax.convert import mapper as cm  # pylint: disable=g-import-not-at-top
  from l2m_jax.convert import restyle as crs  # pylint: disable=g-import-not-at-top
  from l2m_jax.convert import stylegan2 as cs  # pylint: disable=g-import-not-at-top
  from l2m_jax.datasets import synthetic_faces as sf  # pylint: disable=g-import-not-at-top
  from third_party import l2l_mapper_torch as tm  # pylint: disable=g-import-not-at-top
  from third_party import restyle_torch as trs  # pylint: disable=g-import-not-at-top
  net = trs.make_e4e(size=size, seed=0)
  torch.manual_seed(1)
  mapper_t = tm.LevelsMapper().eval()
  enc_vars, meta, g_vars, _ = crs.convert_checkpoint(
      trs.checkpoint_dict(net), 'bench', log=lambda *_: None)
  encoder, generator = crs.build_model(meta['config']), cs.build_model(
      meta['generator_config'])
  m_cfg = cm.make_config('legacy', n_latent=generator.n_latent)
  m_vars, _ = cm.convert_state_dict(mapper_t.state_dict(), 'bench', m_cfg)
  mesh = parallel.make_mesh(1)
  inverter = le.Inverter(encoder, enc_vars, generator, g_vars,
                         batch_size=batch, mesh=mesh)
  editor = le.LatentEditor(generator, g_vars, cm.build_model(m_cfg), m_vars,
                           batch_size=batch, mesh=mesh)
  faces = []
  for i in range(batch):
    ident, attrs = sf.sample_face(0, 'val', i)
    faces.append(sf.render_face(ident, attrs, 256))
  x = np.stack(faces).astype(np.float32) / 127.5 - 1.0
  d = np.random.default_rng(1).standard_normal(512).astype(np.float32)
  d /= np.linalg.norm(d)

  def run_jax():
    codes = inverter.invert(x, n_iters)
    edited = editor.edit_latents(codes, direction=d, strengths=[2.0])
    return editor.render(edited[:, 0])

  t = time.perf_counter()
  out = run_jax()
  compile_s = time.perf_counter() - t
  res = dict(what=f'photo {size} px: invert ({n_iters} it) + edit + render',
             batch=batch, compile_s=compile_s)
  res['jax_per_s'] = batch / _best(run_jax, repeats)
  if not skip_torch:
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    dt = torch.from_numpy(d)[None]

    def run_torch():
      codes = net.invert(xt, n_iters)
      edited = tm.legacy_edit(mapper_t, codes, dt, factor=2.0)
      return net.decoder([edited], input_is_latent=True,
                         randomize_noise=False)[0]

    with torch.no_grad():
      ref = run_torch().numpy().transpose(0, 2, 3, 1)
      res['torch_per_s'] = batch / _best(run_torch, repeats)
    res['max_abs_diff'] = float(np.abs(out - ref).max())
  return res


def main(argv=None) -> int:
  args = parse_args(argv)
  for s in args.sizes:
    if s < 8 or s & (s - 1):
      print(f'error: --sizes {s}: must be a power of 2 >= 8', file=sys.stderr)
      return 2
  if args.gen_batch is not None and len(args.gen_batch) != len(args.sizes):
    print('error: --gen-batch needs one value per --sizes entry',
          file=sys.stderr)
    return 2
  if args.repeats < 1 or args.mapper_batch < 1:
    print('error: --repeats and --mapper-batch must be >= 1', file=sys.stderr)
    return 2
  if args.photo and (args.photo_size < 8 or args.photo_size & (
      args.photo_size - 1) or args.photo_batch < 1 or args.photo_iters < 1):
    print('error: --photo-size must be a power of 2 >= 8, --photo-batch and '
          '--photo-iters >= 1', file=sys.stderr)
    return 2
  import jax  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  if args.torch_threads is not None:
    if args.torch_threads < 1:
      print('error: --torch-threads must be >= 1', file=sys.stderr)
      return 2
    torch.set_num_threads(args.torch_threads)
  info = dict(jax=jax.__version__, backend=jax.default_backend(),
              devices=str(jax.devices()[0]), torch=torch.__version__,
              torch_threads=torch.get_num_threads(),
              cpu_count=os.cpu_count(), machine=platform.processor() or
              platform.machine())
  print('environment:', info)
  results = []
  if not args.skip_mapper:
    print(f'mapper: batch {args.mapper_batch} ...', flush=True)
    results.append(bench_mapper(args.mapper_batch, args.repeats,
                                args.skip_torch))
    print(results[-1], flush=True)
  for i, size in enumerate(args.sizes):
    batch = (args.gen_batch[i] if args.gen_batch else
             (1 if size >= 1024 else 4))
    print(f'generator {size} px: batch {batch} ...', flush=True)
    results.append(bench_generator(size, batch, args.repeats,
                                   args.skip_torch))
    print(results[-1], flush=True)
  if args.photo:
    print(f'photo path {args.photo_size} px: batch {args.photo_batch}, '
          f'{args.photo_iters} ReStyle iterations ...', flush=True)
    results.append(bench_photo(args.photo_size, args.photo_batch,
                               args.photo_iters, args.repeats,
                               args.skip_torch))
    print(results[-1], flush=True)
  print()
  print('| what | batch | JAX /s | torch /s | JAX / torch | JAX compile s | '
        'max abs diff |')
  print('| --- | --- | --- | --- | --- | --- | --- |')
  for r in results:
    tps = r.get('torch_per_s')
    ratio = f'{r["jax_per_s"] / tps:.2f}' if tps else '-'
    unit = {'mapper': 'edits', 'photo': 'photos'}.get(
        r['what'].split()[0], 'images')
    print(f'| {r["what"]} ({unit}/s) | {r["batch"]} | {r["jax_per_s"]:.3g} | '
          f'{tps:.3g} | {ratio} | {r["compile_s"]:.1f} | '
          f'{r.get("max_abs_diff", float("nan")):.2g} |' if tps else
          f'| {r["what"]} ({unit}/s) | {r["batch"]} | {r["jax_per_s"]:.3g} |'
          f' - | - | {r["compile_s"]:.1f} | - |')
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(dict(environment=info, results=results), f, indent=1)
  return 0


if __name__ == '__main__':
  sys.exit(main())
