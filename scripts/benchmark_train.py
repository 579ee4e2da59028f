"""Train-step throughput and peak memory: JAX step vs the torch reference step.

  python scripts/benchmark_train.py --sizes 256,32 --batch 8 --steps 5

For each image size, one subprocess times the JAX train step
(l2m_jax.train_l2m.train_step via jit + shard_map over all devices) and one
times the same iteration written in torch with the in-house reference modules
(third_party/l2m_torch.py, third_party/fan_torch.py, torchvision ResNet-18):
D step with R1 by double backprop, then the joint G+E step with the same loss
terms and weights, Adam with coupled weight decay and the EMA update. Both get
the same batch size. w_hpf = 1 (FAN masks) at 256 px, 0 below (the masks are
defined only at 256). Prints images/s, peak memory and the JAX/torch ratio.

Peak memory: device peak (jax memory_stats / torch.cuda.max_memory_allocated)
on GPU; on CPU the subprocess's peak resident set size (includes the
framework itself).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse  # pylint: disable=g-import-not-at-top,g-bad-import-order
import json
import resource
import subprocess
import time


def _jax_run(size, batch, steps, warmup, dtype, w_hpf, preservation):
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from configs import l2m_celebahq  # pylint: disable=g-import-not-at-top
  from l2m_jax import parallel, train_l2m  # pylint: disable=g-import-not-at-top
  config = l2m_celebahq.get_config(f'res={size}')
  config.batch_size = batch
  config.w_hpf = w_hpf
  config.dtype = dtype
  config.preservation = preservation
  models = train_l2m.create_models(config)
  mesh = parallel.make_mesh()
  parallel.per_device_batch_size(batch, mesh)
  state = parallel.init_replicated(
      lambda: train_l2m.create_train_state(config, models,
                                           jax.random.key(0)), mesh)
  frozen = train_l2m.load_frozen(config, jax.random.key(1))
  compiled = train_l2m.compile_train_step(config, models, mesh)
  dstate = compiled.put_state(state)
  fr = compiled.put_args(frozen)
  rng = np.random.default_rng(0)
  b = {'x_src': rng.uniform(-1, 1, (batch, size, size, 3)).astype(np.float32),
       'y_src': rng.integers(0, 2, batch).astype(np.int32),
       'y_trg': rng.integers(0, 2, batch).astype(np.int32)}
  db = compiled.put_batch(b)
  t0 = time.perf_counter()
  for _ in range(warmup):
    dstate, m = compiled(dstate, db, fr)
  jax.block_until_ready(m)
  compile_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  for _ in range(steps):
    dstate, m = compiled(dstate, db, fr)
  jax.block_until_ready(m)
  dt = time.perf_counter() - t0
  stats = jax.devices()[0].memory_stats() or {}
  peak = stats.get('peak_bytes_in_use')
  return {'images_per_s': batch * steps / dt, 'step_s': dt / steps,
          'warmup_s': compile_s, 'device': str(jax.devices()[0].platform),
          'num_devices': jax.device_count(),
          'peak_bytes': peak, 'peak_kind': 'device' if peak else 'rss'}


def _torch_run(size, batch, steps, warmup, w_hpf, preservation):
  import torch  # pylint: disable=g-import-not-at-top
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top
  from third_party import l2m_torch  # pylint: disable=g-import-not-at-top
  dev = 'cuda' if torch.cuda.is_available() else 'cpu'
  torch.manual_seed(0)
  g = l2m_torch.Generator(size, 64, 512, w_hpf).to(dev)
  e = l2m_torch.StyleEncoder(size, 64, 2, 512).to(dev)
  d = l2m_torch.Discriminator(size, 2, 512).to(dev)
  g_ema = l2m_torch.Generator(size, 64, 512, w_hpf).to(dev)
  e_ema = l2m_torch.StyleEncoder(size, 64, 2, 512).to(dev)
  fan = vgg = None
  if w_hpf > 0:
    from third_party import fan_torch  # pylint: disable=g-import-not-at-top
    fan = fan_torch.FAN().to(dev).eval()
  if preservation == 'resnet18':
    from third_party.torchvision_compat import import_torchvision  # pylint: disable=g-import-not-at-top
    tv = import_torchvision()
    net = tv.models.resnet18()
    vgg = torch.nn.Sequential(*list(net.children())[:-1]).to(dev).eval()
    for p in vgg.parameters():
      p.requires_grad_(False)
  mk = lambda ps: torch.optim.Adam(ps, lr=1e-4, betas=(0.0, 0.99),
                                   weight_decay=1e-4)
  opt_g, opt_e, opt_d = mk(g.parameters()), mk(e.parameters()), mk(
      d.parameters())
  mean = torch.tensor([0.485, 0.456, 0.406], device=dev).view(1, 3, 1, 1)
  std = torch.tensor([0.229, 0.224, 0.225], device=dev).view(1, 3, 1, 1)
  x = torch.rand(batch, 3, size, size, device=dev) * 2 - 1
  y = torch.randint(0, 2, (batch,), device=dev)
  yt = torch.randint(0, 2, (batch,), device=dev)
  masks_of = ((lambda img: fan.get_heatmap(img)) if fan is not None
              else (lambda img: None))

  def step():
    with torch.no_grad():
      masks = masks_of(x)
      _, su, sr, srh = e(x, y, yt)
      fake = g(x, su + srh, masks)
    xr = x.detach().requires_grad_(True)
    out = d(xr, y)
    (grad,) = torch.autograd.grad(out.sum(), xr, create_graph=True)
    r1 = 0.5 * grad.pow(2).reshape(batch, -1).sum(1).mean()
    d_loss = (F.softplus(-out).mean() + F.softplus(d(fake, yt)).mean() + r1)
    opt_d.zero_grad()
    d_loss.backward()
    opt_d.step()
    s, su, sr, srh = e(x, y, yt)
    s_hat = su + srh
    fake = g(x, s_hat, masks)
    adv = F.softplus(-d(fake, yt)).mean()
    sty = (e(fake, yt, yt)[0] - s_hat).abs().mean()
    with torch.no_grad():
      m_fake = masks_of(fake)
    cyc = (g(fake, s, m_fake) - x).abs().mean()
    ort = (sr * su).abs().mean() + (srh * su).abs().mean()
    loss = adv + cyc + sty + ort
    if vgg is not None:
      f = vgg(((torch.cat([x, fake]) + 1) / 2 - mean) / std).flatten(1)
      loss = loss + (f[:batch] - f[batch:]).abs().mean()
    opt_g.zero_grad()
    opt_e.zero_grad()
    loss.backward()
    opt_g.step()
    opt_e.step()
    with torch.no_grad():
      for net, ema in ((g, g_ema), (e, e_ema)):
        for p, q in zip(net.parameters(), ema.parameters()):
          q.lerp_(p, 0.001)
    return loss

  sync = torch.cuda.synchronize if dev == 'cuda' else (lambda: None)
  t0 = time.perf_counter()
  for _ in range(warmup):
    step()
  sync()
  warm = time.perf_counter() - t0
  if dev == 'cuda':
    torch.cuda.reset_peak_memory_stats()
  t0 = time.perf_counter()
  for _ in range(steps):
    step()
  sync()
  dt = time.perf_counter() - t0
  peak = torch.cuda.max_memory_allocated() if dev == 'cuda' else None
  return {'images_per_s': batch * steps / dt, 'step_s': dt / steps,
          'warmup_s': warm, 'device': dev, 'peak_bytes': peak,
          'peak_kind': 'device' if peak else 'rss'}


def _child(args):
  if args.only == 'jax':
    out = _jax_run(args.size, args.batch, args.steps, args.warmup, args.dtype,
                   args.w_hpf, args.preservation)
  else:
    out = _torch_run(args.size, args.batch, args.steps, args.warmup,
                     args.w_hpf, args.preservation)
  if out['peak_bytes'] is None:
    out['peak_bytes'] = resource.getrusage(
        resource.RUSAGE_SELF).ru_maxrss * 1024
  print('RESULT ' + json.dumps(out))


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--sizes', default='256,32',
                 help='comma-separated image sizes (powers of 2 >= 16)')
  p.add_argument('--batch', type=int, default=8, help='global batch size')
  p.add_argument('--steps', type=int, default=5, help='timed steps')
  p.add_argument('--warmup', type=int, default=1,
                 help='untimed steps (the first compiles)')
  p.add_argument('--dtype', default='float32',
                 choices=('float32', 'bfloat16'), help='JAX compute dtype')
  p.add_argument('--preservation', default='resnet18',
                 choices=('resnet18', 'none'))
  p.add_argument('--skip_torch', action='store_true')
  p.add_argument('--only', choices=('jax', 'torch'), help=argparse.SUPPRESS)
  p.add_argument('--size', type=int, help=argparse.SUPPRESS)
  p.add_argument('--w_hpf', type=float, help=argparse.SUPPRESS)
  args = p.parse_args()
  if args.only:
    return _child(args)
  try:
    sizes = [int(s) for s in args.sizes.split(',') if s]
  except ValueError:
    p.error(f'--sizes {args.sizes!r}: expected integers like 256,32')
  for s in sizes:
    if s < 16 or s & (s - 1):
      p.error(f'--sizes: {s} is not a power of 2 >= 16')
  if args.batch < 1 or args.steps < 1 or args.warmup < 1:
    p.error('--batch, --steps and --warmup must be >= 1')
  rows = []
  for size in sizes:
    w_hpf = 1.0 if size == 256 else 0.0
    res = {}
    for fw in ('jax',) + (() if args.skip_torch else ('torch',)):
      print(f'[{fw}] {size} px, batch {args.batch}, w_hpf {w_hpf:g} ...',
            flush=True)
      cmd = [sys.executable, os.path.abspath(__file__), '--only', fw,
             '--size', str(size), '--w_hpf', str(w_hpf), '--batch',
             str(args.batch), '--steps', str(args.steps), '--warmup',
             str(args.warmup), '--dtype', args.dtype, '--preservation',
             args.preservation]
      proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
      line = [l for l in proc.stdout.splitlines() if l.startswith('RESULT ')]
      if proc.returncode or not line:
        print(proc.stdout[-2000:], proc.stderr[-4000:], file=sys.stderr)
        raise SystemExit(f'{fw} benchmark at {size} px failed '
                         f'(exit {proc.returncode})')
      res[fw] = json.loads(line[0][7:])
    rows.append((size, w_hpf, res))
  print()
  print(f'{"size":>5} {"w_hpf":>5} {"JAX img/s":>10} {"torch img/s":>11} '
        f'{"ratio":>6} {"JAX peak MiB":>13} {"torch peak MiB":>15}')
  for size, w_hpf, res in rows:
    j, t = res['jax'], res.get('torch')
    mib = lambda r: f'{r["peak_bytes"] / 2**20:.0f} ({r["peak_kind"]})'
    print(f'{size:>5} {w_hpf:>5g} {j["images_per_s"]:>10.2f} '
          f'{(t["images_per_s"] if t else float("nan")):>11.2f} '
          f'{(j["images_per_s"] / t["images_per_s"] if t else float("nan")):>6.2f} '
          f'{mib(j):>13} {(mib(t) if t else "-"):>15}')
  print(f'JAX: {rows[0][2]["jax"]["num_devices"]} x '
        f'{rows[0][2]["jax"]["device"]}, dtype {args.dtype}; torch: '
        f'{rows[0][2].get("torch", {}).get("device", "-")}')


if __name__ == '__main__':
  main()
