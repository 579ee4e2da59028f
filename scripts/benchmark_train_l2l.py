"""Benchmarks one Latent-To-Latent training step, JAX against torch.

  python3 scripts/benchmark_train_l2l.py                  # 1024 px, batch 2
  python3 scripts/benchmark_train_l2l.py --size 256 --batch 4 --repeats 3
  python3 scripts/benchmark_train_l2l.py --framework jax --dtype bfloat16

One step of the legacy configuration (configs/l2l_legacy.py with the ArcFace
term on, lambda_face_id = 1): the mapper edit, cycle and zero-edit passes,
the StyleGAN2 render of [w_n, w + 2 d, w] (config-f widths at --size), the
BranchedTiny classifier (PyTorch-nearest resize to 224), the ArcFace
IR-SE-50 identity term on pSp's crop, the backward pass into the mapper and
one Adam update. JAX runs `train_l2l.train_step` compiled by
`parallel.compile_step` on one device; torch runs the same computation with
the in-house references (third_party/) and torch.optim.Adam, with the frozen
networks' requires_grad off (the unofficial code leaves it on and computes
gradients it never uses). Both sides have the same random weights (torch
modules converted with l2m_jax.convert) and the same batch; the script
checks that their losses agree.

Each framework runs in its own subprocess so that its peak resident memory
(ru_maxrss) is its own; JAX also reports XLA's temporary buffer size. Rates
are the best of --repeats timed steps after one warm-up (compilation is
reported separately). Prints a markdown row per framework.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import argparse  # pylint: disable=g-import-not-at-top,wrong-import-position
import json  # pylint: disable=g-import-not-at-top,wrong-import-position
import platform  # pylint: disable=g-import-not-at-top,wrong-import-position
import resource  # pylint: disable=g-import-not-at-top,wrong-import-position
import subprocess  # pylint: disable=g-import-not-at-top,wrong-import-position
import time  # pylint: disable=g-import-not-at-top,wrong-import-position

import bench_util  # pylint: disable=g-import-not-at-top,wrong-import-position

K = 2.0  # the legacy pre-shift
ATTRIBUTE = 'smiling'


def parse_args(argv=None):
  p = argparse.ArgumentParser(description='Benchmark one legacy L2L training '
                              'step (JAX vs torch references).')
  p.add_argument('--size', type=int, default=1024,
                 help='generator resolution (the original: 1024)')
  p.add_argument('--batch', type=int, default=2, help='latents per step')
  p.add_argument('--repeats', type=int, default=3)
  p.add_argument('--framework', choices=('both', 'jax', 'torch'),
                 default='both')
  p.add_argument('--dtype', choices=('float32', 'bfloat16'),
                 default='float32',
                 help='JAX compute dtype of generator, classifier, ArcFace')
  p.add_argument('--torch-threads', type=int, default=None)
  p.add_argument('--json', default=None, help='write the results here')
  return p.parse_args(argv)


def _peak_rss_gib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _torch_nets(size):
  """Random torch generator, classifier, ArcFace, mapper; batch inputs."""
  import torch  # pylint: disable=g-import-not-at-top
  from third_party import branched_tiny_torch as tbt  # pylint: disable=g-import-not-at-top
  from third_party import irse_torch  # pylint: disable=g-import-not-at-top
  from third_party import l2l_mapper_torch as tm  # pylint: disable=g-import-not-at-top
  from third_party import stylegan2_torch as ts  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  g = ts.Generator(size).eval()
  c = tbt.randomize(tbt.BranchedTiny(), 0).eval()
  torch.manual_seed(2)
  gen = torch.Generator().manual_seed(3)
  e = irse_torch.Backbone(112, 50, 'ir_se', drop_ratio=0.6)
  irse_torch.he_init(e, gen, gain=1.0)
  irse_torch.randomize_batchnorm(e, gen)
  e.eval()
  torch.manual_seed(4)
  m = tm.LevelsMapper()
  for net in (g, c, e):
    for p in net.parameters():
      p.requires_grad_(False)
  return g, c, e, m


def _batch(n_latent, batch):
  import numpy as np  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(5)
  w = (rng.standard_normal((batch, n_latent, 512)) * 0.5).astype(np.float32)
  d = rng.standard_normal(512).astype(np.float32)
  return w, d / np.linalg.norm(d)


def torch_legacy_loss(g, c, e, m, w, d, attribute_index, *, k=K,
                      alpha=0.3, lambda_face_id=1.0):
  """The legacy objective in torch (the unofficial trainer's terms).

  g: stylegan2_torch.Generator; c: branched_tiny_torch.BranchedTiny (it
  normalises by the CelebA statistics itself); e: irse_torch.Backbone or
  None; m: l2l_mapper_torch.LevelsMapper; w [B, n, D]; d [1, 1, D].
  Images go to the classifier as the unofficial wrapper sends them: x * 0.5
  + 0.5, nearest-resized to 224 when their width is not 224.
  """
  import torch  # pylint: disable=g-import-not-at-top
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top
  from third_party import irse_torch  # pylint: disable=g-import-not-at-top
  b = w.shape[0]
  blend = lambda x: (1 - alpha) * w + alpha * m(x)
  w_a = w + k * d
  w_n = blend(w_a)
  w_c = blend(w_n - k * d)
  w_0 = blend(w + 0 * d)
  use_id = e is not None and lambda_face_id > 0
  rows = [w_n, w_a] + ([w] if use_id else [])
  imgs = g([torch.cat(rows)], input_is_latent=True, randomize_noise=False)[0]
  x = imgs * 0.5 + 0.5
  if x.shape[-1] != 224:
    x = F.interpolate(x, (224, 224), mode='nearest')
  logits = c(x)[:, attribute_index]
  loss = (0.5 * F.l1_loss(w_c, w) +
          F.mse_loss(torch.sigmoid(logits[:b]),
                     torch.sigmoid(logits[b:2 * b]).detach()) +
          0.5 * F.l1_loss(w_0, w) + 0.5 * F.mse_loss(w_n, w))
  if use_id:
    emb = e(irse_torch.identity_crop(torch.cat([imgs[:b], imgs[2 * b:]])))
    loss = loss + lambda_face_id * (
        1 - (emb[:b] * emb[b:].detach()).sum(-1)).mean()
  return loss


def run_torch(args):
  import torch  # pylint: disable=g-import-not-at-top
  from l2m_jax.models import branched_tiny as bt  # pylint: disable=g-import-not-at-top
  if args.torch_threads:
    torch.set_num_threads(args.torch_threads)
  g, c, e, m = _torch_nets(args.size)
  w_np, d_np = _batch(g.n_latent, args.batch)
  w, d = torch.from_numpy(w_np), torch.from_numpy(d_np)[None, None]
  j = bt.ATTRIBUTES.index(ATTRIBUTE)
  opt = torch.optim.Adam(m.parameters(), lr=1e-3)

  def step():
    loss = torch_legacy_loss(g, c, e, m, w, d, j)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return float(loss)

  state = {k: v.clone() for k, v in m.state_dict().items()}
  t = time.perf_counter()
  loss = step()
  first = time.perf_counter() - t
  sec = bench_util.best_of(step, args.repeats)
  m.load_state_dict(state)
  return dict(framework='torch', loss=loss, first_step_s=first, step_s=sec,
              latents_per_s=args.batch / sec, peak_rss_gib=_peak_rss_gib(),
              threads=torch.get_num_threads())


def run_jax(args):
  import functools  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  from configs import l2l_legacy  # pylint: disable=g-import-not-at-top
  from l2m_jax import l2l_networks  # pylint: disable=g-import-not-at-top
  from l2m_jax import parallel  # pylint: disable=g-import-not-at-top
  from l2m_jax import train_l2l  # pylint: disable=g-import-not-at-top
  from l2m_jax.convert import arcface as caf  # pylint: disable=g-import-not-at-top
  from l2m_jax.convert import branched_tiny as cbt  # pylint: disable=g-import-not-at-top
  from l2m_jax.convert import mapper as cm  # pylint: disable=g-import-not-at-top
  from l2m_jax.convert import stylegan2 as cs  # pylint: disable=g-import-not-at-top
  from l2m_jax.models import branched_tiny as bt  # pylint: disable=g-import-not-at-top
  g, c, e, m = _torch_nets(args.size)
  dtype = l2l_networks.DTYPES[args.dtype]
  g_vars, g_cfg, _ = cs.convert_state_dict(g.state_dict(), 'bench',
                                           latent_avg=torch.zeros(512))
  c_vars, _ = cbt.convert_state_dict(c.state_dict(), 'bench')
  e_vars, e_cfg, _ = caf.convert_state_dict(e.state_dict(), 'bench')
  generator = cs.build_model(g_cfg).clone(dtype=dtype)
  config = l2l_legacy.get_config()
  config.lambda_face_id = 1.0
  config.data_source = 'latents'
  config.batch_size = args.batch
  m_cfg = l2l_networks.mapper_config(config, generator.n_latent, 512, 0)
  m_vars, _ = cm.convert_state_dict(m.state_dict(), 'bench', m_cfg)
  names = tuple(bt.ATTRIBUTES)
  nets = l2l_networks.Networks(
      generator=generator, mapper=cm.build_model(m_cfg),
      classifier=cbt.build_model(dtype=dtype), classifier_kind='branched_tiny',
      classifier_names=names, cond_names=l2l_networks.CELEBA_ATTRIBUTES,
      cond_perm=tuple(names.index(n)
                      for n in l2l_networks.CELEBA_ATTRIBUTES),
      trained=(names.index(ATTRIBUTE),), identity=caf.build_model(
          e_cfg, dtype=dtype), identity_kind='arcface', mode='legacy')
  w, d = _batch(generator.n_latent, args.batch)
  frozen = {'generator': g_vars, 'classifier': c_vars, 'identity': e_vars,
            'direction': d}
  mesh = parallel.make_mesh(1)
  compiled = parallel.compile_step(
      functools.partial(train_l2l.train_step, nets=nets, config=config),
      mesh, 'shard_map', num_args=1, donate_state=False)
  state = train_l2l.create_train_state(config, nets, jax.random.key(0))
  state = state.replace(mapper=state.mapper.replace(
      params=jax.tree.map(jnp.asarray, m_vars['params']),
      opt_state=train_l2l.make_optimizer(config).init(
          jax.tree.map(jnp.asarray, m_vars['params']))))
  st, fr = compiled.put_state(state), compiled.put_args(frozen)
  batch = compiled.put_batch({'index': np.arange(args.batch, dtype=np.int32),
                              'w': w})
  t = time.perf_counter()
  lowered = compiled.fn.lower(st, batch, fr)
  exe = lowered.compile()
  compile_s = time.perf_counter() - t
  mem = exe.memory_analysis()
  temp = getattr(mem, 'temp_size_in_bytes', None) if mem else None

  def step():
    out = exe(st, batch, fr)
    jax.block_until_ready(out)
    return out

  t = time.perf_counter()
  _, metrics = step()
  first = time.perf_counter() - t
  sec = bench_util.best_of(step, args.repeats)
  return dict(framework=f'jax ({args.dtype})',
              loss=float(np.asarray(metrics['loss'])), compile_s=compile_s,
              first_step_s=first, step_s=sec,
              latents_per_s=args.batch / sec, peak_rss_gib=_peak_rss_gib(),
              xla_temp_gib=None if temp is None else temp / 2**30,
              device=str(jax.devices()[0]))


def main(argv=None) -> int:
  args = parse_args(argv)
  if args.framework != 'both':
    res = run_jax(args) if args.framework == 'jax' else run_torch(args)
    print('RESULT ' + json.dumps(res))
    return 0
  results = []
  for fw in ('jax', 'torch'):
    cmd = [sys.executable, os.path.abspath(__file__), '--framework', fw,
           '--size', str(args.size), '--batch', str(args.batch),
           '--repeats', str(args.repeats), '--dtype', args.dtype]
    if args.torch_threads:
      cmd += ['--torch-threads', str(args.torch_threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    lines = [l for l in proc.stdout.splitlines() if l.startswith('RESULT ')]
    if proc.returncode or not lines:
      print(proc.stderr[-3000:], file=sys.stderr)
      return 1
    results.append(json.loads(lines[-1][len('RESULT '):]))
  print(f'one legacy training step (mapper + G + BranchedTiny + ArcFace, '
        f'backward, Adam), {args.size} px, batch {args.batch}; '
        f'{platform.processor() or platform.machine()}, '
        f'{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}')
  print('| framework | compile s | step s | latents/s | peak RSS GiB | '
        'XLA temp GiB | loss |')
  print('|---|---|---|---|---|---|---|')
  for r in results:
    temp = r.get('xla_temp_gib')
    print(f"| {r['framework']} | {r.get('compile_s', 0):.1f} | "
          f"{r['step_s']:.2f} | {r['latents_per_s']:.3f} | "
          f"{r['peak_rss_gib']:.2f} | "
          f"{'-' if temp is None else f'{temp:.2f}'} | {r['loss']:.6f} |")
  ratio = results[0]['latents_per_s'] / results[1]['latents_per_s']
  diff = abs(results[0]['loss'] - results[1]['loss'])
  print(f'JAX / torch speed: {ratio:.2f}x; |loss difference| {diff:.2e}')
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(dict(size=args.size, batch=args.batch, results=results,
                     ratio=ratio, loss_diff=diff), f, indent=1)
  if args.dtype == 'float32' and diff > 1e-3 * max(1.0, abs(
      results[1]['loss'])):
    print('error: the two steps disagree', file=sys.stderr)
    return 1
  return 0


if __name__ == '__main__':
  sys.exit(main())
