"""Train-step speed, FLOPs, MFU and memory: JAX step vs the torch reference.

  python3 scripts/benchmark_train.py --sizes 256 --batches 8,16,32 \
      --dtypes float32,bfloat16 --json train.json

One full L2M-GAN iteration (FAN masks, D step with R1 by double backprop,
joint G+E step with every loss term incl. the ResNet-18 preservation term,
Adam with coupled weight decay, EMA), at the official widths
(2**14 // img_size first conv, 512 cap) and the GLOBAL batch given:

- JAX: `l2m_jax.train_l2m.train_step` compiled by `parallel.compile_step`
  (jit + shard_map over all devices). All (batch, dtype) programs are lowered
  first and compiled in parallel threads (compile_s is each program's own
  wall time while the others compile too), then timed one after another.
- torch: the same iteration with the in-house reference modules
  (third_party/l2m_torch.py, fan_torch.py, torchvision ResNet-18); bfloat16
  is `torch.autocast(dtype=torch.bfloat16)`; cudnn.benchmark is on.

Both start from the same weights (seeded torch networks, converted to JAX
with `l2m_jax.convert.l2m`) and get the same batch. w_hpf = 1 (FAN masks) at
256 px, 0 below (the masks are defined only at 256). FLOPs: XLA's cost
analysis of each compiled program (scripts/bench_util.py); torch's own count
(FlopCounterMode, convolutions and matrix products) beside it. Memory: XLA's
estimate of each program (arguments + outputs + temporaries), and the peak
of the device (GPU) or of the process (CPU: RSS, includes the runtime).

`--tiny` runs the same code at 32 px with narrow networks (base_dim 8, cap
16) for the test suite. Needs no tensorflow, tfds, clu or ml_collections.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # bench_util

# As the training CLIs: malloc with transparent huge pages on a CPU
# (l2m_jax/host_memory.py; L2M_JAX_HUGE_PAGES=0 measures without).
if __name__ == '__main__':
  from l2m_jax import host_memory  # pylint: disable=g-import-not-at-top
  host_memory.reexec_with_huge_pages()

import argparse  # pylint: disable=g-import-not-at-top,g-bad-import-order,wrong-import-position
import concurrent.futures  # pylint: disable=g-import-not-at-top,wrong-import-position
import time  # pylint: disable=g-import-not-at-top,wrong-import-position

import bench_util  # pylint: disable=g-import-not-at-top,wrong-import-position

NUM_DOMAINS = 2
STYLE_DIM = 64


def _dims(args):
  """(base_dim or None for the official rule, max_conv_dim)."""
  return (8, 16) if args.tiny else (None, 512)


def _config(args, batch, dtype):
  from configs import l2m_celebahq  # pylint: disable=g-import-not-at-top
  from l2m_jax.plain_config import PlainConfig  # pylint: disable=g-import-not-at-top
  base_dim, cap = _dims(args)
  c = l2m_celebahq.get_config(f'res={args.size}', container=PlainConfig)
  c.batch_size = batch
  c.w_hpf = args.w_hpf
  c.dtype = dtype
  c.max_conv_dim = cap
  c.base_dim = base_dim or 0
  c.preservation = args.preservation
  return c


def _torch_nets(args, device):
  """Seeded torch G, E, D, FAN (w_hpf > 0) and ResNet-18 trunk."""
  from tests import l2m_checkpoints as lc  # pylint: disable=g-import-not-at-top
  base_dim, cap = _dims(args)
  nets = lc.build_torch_nets(
      img_size=args.size, style_dim=STYLE_DIM, num_domains=NUM_DOMAINS,
      max_conv_dim=cap, w_hpf=int(args.w_hpf), seed=0,
      with_vgg=args.preservation == 'resnet18', with_discriminator=True,
      base_dim=base_dim)
  for name in ('generator', 'style_encoder', 'discriminator', 'fan', 'vgg'):
    m = getattr(nets, name)
    if m is not None:
      setattr(nets, name, m.to(device))
  return nets


def _batch(args, batch):
  import numpy as np  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(batch)
  return {'x_src': rng.uniform(-1, 1, (batch, args.size, args.size, 3)
                               ).astype(np.float32),
          'y_src': rng.integers(0, NUM_DOMAINS, batch).astype(np.int32),
          'y_trg': rng.integers(0, NUM_DOMAINS, batch).astype(np.int32)}


def _configs(args):
  return [(b, d) for d in args.dtypes for b in args.batches]


# ---------------------------------------------------------------------------
# JAX
# ---------------------------------------------------------------------------


def _jax_state(config, models, variables):
  """A train state holding the converted weights, fresh Adam states."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from l2m_jax import train_l2m  # pylint: disable=g-import-not-at-top
  tx = train_l2m.make_optimizer(config)
  mk = lambda m, name: train_l2m.TrainState.create(
      apply_fn=m.apply, params=variables[name]['params'], tx=tx)
  return train_l2m.L2MTrainState(
      step=jnp.zeros((), jnp.int32),
      rng=jax.random.key_data(jax.random.key(0)),
      generator=mk(models.generator, 'generator'),
      style_encoder=mk(models.style_encoder, 'style_encoder'),
      discriminator=mk(models.discriminator, 'discriminator'),
      ema={'generator': variables['generator']['params'],
           'style_encoder': variables['style_encoder']['params']})


def _jax_child(args):
  import jax  # pylint: disable=g-import-not-at-top
  from l2m_jax import parallel, train_l2m  # pylint: disable=g-import-not-at-top
  from l2m_jax.convert import l2m as l2m_convert  # pylint: disable=g-import-not-at-top
  nets = _torch_nets(args, 'cpu')
  model_config = train_l2m.model_config_from(
      _config(args, args.batches[0], 'float32'))
  variables, _ = l2m_convert.convert_state_dicts(
      nets.state_dicts(), 'benchmark nets', config=model_config)
  frozen = {k: variables[k] for k in ('fan', 'vgg') if k in variables}
  mesh = parallel.make_mesh()
  ndev = mesh.devices.size
  dev = jax.devices()[0]
  jobs = []
  for batch, dtype in _configs(args):
    config = _config(args, batch, dtype)
    parallel.per_device_batch_size(batch, mesh)
    models = train_l2m.create_models(config)
    host_state = _jax_state(config, models, variables)
    compiled = train_l2m.compile_train_step(config, models, mesh)
    state = compiled.put_state(host_state)
    db = compiled.put_batch(_batch(args, batch))
    fr = compiled.put_args(frozen)
    t0 = time.perf_counter()
    lowered = compiled.fn.lower(state, db, fr)
    jobs.append({'batch': batch, 'dtype': dtype, 'host_state': host_state,
                 'compiled': compiled, 'db': db, 'fr': fr,
                 'lowered': lowered, 'lower_s': time.perf_counter() - t0})
    del state

  def compile_job(job):
    t0 = time.perf_counter()
    exe = job['lowered'].compile()
    return exe, time.perf_counter() - t0

  t_all = time.perf_counter()
  with concurrent.futures.ThreadPoolExecutor(len(jobs)) as pool:
    done = list(pool.map(compile_job, jobs))
  compile_wall = time.perf_counter() - t_all
  rows = []
  for job, (exe, compile_s) in zip(jobs, done):
    compiled = job['compiled']
    state = compiled.put_state(job['host_state'])
    box = {'state': state}
    window = parallel.DispatchWindow()  # as the training loop dispatches

    def step():
      box['state'], m = exe(box['state'], job['db'], job['fr'])
      window.push(m)
      return m

    sync = lambda m: jax.block_until_ready((m, box['state']))
    bench_util.timed(step, sync, args.warmup)
    step_s = bench_util.timed(step, sync, args.steps)
    flops = bench_util.xla_flops(exe)
    peak_dev = bench_util.jax_peak_bytes()
    rows.append(bench_util.row(
        'train', 'jax', dtype=job['dtype'], batch=job['batch'],
        size=args.size, step_s=step_s,
        compile_s=job['lower_s'] + compile_s,
        flops=flops * ndev if flops else None,
        peak=bench_util.peak_tflops(dev.platform, dev.device_kind,
                                    job['dtype'], args.peak_tflops),
        device=f'{ndev}x {dev.device_kind}',
        peak_bytes=peak_dev or bench_util.rss_peak_bytes(),
        peak_kind='device (process)' if peak_dev else 'rss (process)',
        xla_memory_bytes=bench_util.xla_memory_bytes(exe),
        compile_wall_all_s=compile_wall, w_hpf=args.w_hpf,
        preservation=args.preservation, tiny=args.tiny))
    del box
  return rows


# ---------------------------------------------------------------------------
# torch
# ---------------------------------------------------------------------------


def _torch_child(args):
  import contextlib  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top
  dev = 'cuda' if torch.cuda.is_available() else 'cpu'
  if dev == 'cuda':
    torch.backends.cudnn.benchmark = True
  nets = _torch_nets(args, dev)
  g, e, d = nets.generator, nets.style_encoder, nets.discriminator
  for m in (g, e, d):
    m.train()
  ema = {'g': [p.detach().clone() for p in g.parameters()],
         'e': [p.detach().clone() for p in e.parameters()]}
  for frozen in (nets.fan, nets.vgg):
    if frozen is not None:
      for p in frozen.parameters():
        p.requires_grad_(False)
  mean = torch.tensor([0.485, 0.456, 0.406], device=dev).view(1, 3, 1, 1)
  std = torch.tensor([0.229, 0.224, 0.225], device=dev).view(1, 3, 1, 1)
  masks_of = ((lambda img: nets.fan.get_heatmap(img)) if nets.fan is not None
              else (lambda img: None))
  sync_dev = torch.cuda.synchronize if dev == 'cuda' else (lambda: None)
  kind = torch.cuda.get_device_name(0) if dev == 'cuda' else 'cpu'
  rows = []
  for batch, dtype in _configs(args):
    mk = lambda ps: torch.optim.Adam(ps, lr=1e-4, betas=(0.0, 0.99),
                                     weight_decay=1e-4)
    opt_g, opt_e, opt_d = mk(g.parameters()), mk(e.parameters()), mk(
        d.parameters())
    b = _batch(args, batch)
    x = torch.from_numpy(b['x_src'].transpose(0, 3, 1, 2).copy()).to(dev)
    y = torch.from_numpy(b['y_src']).long().to(dev)
    yt = torch.from_numpy(b['y_trg']).long().to(dev)
    amp = ((lambda: torch.autocast(dev, dtype=torch.bfloat16))
           if dtype == 'bfloat16' else contextlib.nullcontext)

    def step():
      with amp():
        with torch.no_grad():
          masks = masks_of(x)
          _, su, _, srh = e(x, y, yt)
          fake = g(x, su + srh, masks)
        xr = x.detach().requires_grad_(True)
        out = d(xr, y)
        (grad,) = torch.autograd.grad(out.sum(), xr, create_graph=True)
        r1 = 0.5 * grad.float().pow(2).reshape(batch, -1).sum(1).mean()
        d_loss = (F.softplus(-out.float()).mean() +
                  F.softplus(d(fake, yt).float()).mean() + r1)
      opt_d.zero_grad()
      d_loss.backward()
      opt_d.step()
      with amp():
        s, su, sr, srh = e(x, y, yt)
        s_hat = su + srh
        fake = g(x, s_hat, masks)
        adv = F.softplus(-d(fake, yt).float()).mean()
        sty = (e(fake, yt, yt)[0].float() - s_hat.float()).abs().mean()
        with torch.no_grad():
          m_fake = masks_of(fake)
        cyc = (g(fake, s, m_fake).float() - x).abs().mean()
        ort = ((sr * su).float().abs().mean() +
               (srh * su).float().abs().mean())
        loss = adv + cyc + sty + ort
        if nets.vgg is not None:
          f = nets.vgg(((torch.cat([x, fake]) + 1) / 2 - mean) / std
                       ).flatten(1).float()
          loss = loss + (f[:batch] - f[batch:]).abs().mean()
      opt_g.zero_grad()
      opt_e.zero_grad()
      loss.backward()
      opt_g.step()
      opt_e.step()
      with torch.no_grad():
        for net, key in ((g, 'g'), (e, 'e')):
          for p, q in zip(net.parameters(), ema[key]):
            q.lerp_(p, 0.001)
      return loss

    if dev == 'cuda':
      torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    bench_util.timed(step, lambda _: sync_dev(), args.warmup)
    warm_s = time.perf_counter() - t0
    step_s = bench_util.timed(step, lambda _: sync_dev(), args.steps)
    peak = torch.cuda.max_memory_allocated() if dev == 'cuda' else None
    counted = (bench_util.torch_flops(step) if args.count_torch_flops
               else None)
    rows.append(bench_util.row(
        'train', 'torch', dtype=dtype, batch=batch, size=args.size,
        step_s=step_s, compile_s=warm_s, flops=None,
        peak=bench_util.peak_tflops(dev, kind, dtype, args.peak_tflops),
        device=kind, peak_bytes=peak or bench_util.rss_peak_bytes(),
        peak_kind='device' if peak else 'rss (process)',
        counter_flops=counted, w_hpf=args.w_hpf,
        preservation=args.preservation, tiny=args.tiny))
  return rows


# ---------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------


def _charge_torch(rows):
  """Gives each torch row the FLOPs (and MFU) of its JAX pair."""
  for j, t in bench_util.pair_ratios(rows):
    if t is not None and j['flops_per_step']:
      t['flops_per_step'] = j['flops_per_step']
      t['tflops'] = j['flops_per_step'] / t['step_s'] / 1e12
      t['mfu'] = (t['tflops'] / t['peak_tflops']
                  if t['peak_tflops'] == t['peak_tflops'] else None)
      t['flops_source'] = 'xla (JAX program of the same step)'
  return rows


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--sizes', default='256',
                 help='comma-separated image sizes (powers of 2 >= 16)')
  p.add_argument('--batches', default='8',
                 help='comma-separated GLOBAL batch sizes')
  p.add_argument('--batch', type=int, help='one global batch size '
                 '(same as --batches N)')
  p.add_argument('--dtypes', default='float32',
                 help='comma-separated compute dtypes: float32,bfloat16')
  p.add_argument('--dtype', help='one compute dtype (same as --dtypes)')
  p.add_argument('--steps', type=int, default=5, help='timed steps')
  p.add_argument('--warmup', type=int, default=2,
                 help='untimed steps before timing (torch: cudnn autotuning)')
  p.add_argument('--preservation', default='resnet18',
                 choices=('resnet18', 'none'))
  p.add_argument('--skip-torch', '--skip_torch', action='store_true')
  p.add_argument('--count-torch-flops', action='store_true',
                 help='run one more torch step under FlopCounterMode')
  p.add_argument('--peak-tflops', type=float, default=None,
                 help='peak TFLOP/s for MFU (default: stated per device)')
  p.add_argument('--tiny', action='store_true',
                 help='narrow networks (base_dim 8, cap 16): test size')
  p.add_argument('--json', default=None, help='append the rows to this JSON')
  p.add_argument('--only', choices=('jax', 'torch'), help=argparse.SUPPRESS)
  p.add_argument('--size', type=int, help=argparse.SUPPRESS)
  p.add_argument('--w_hpf', type=float, help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  try:
    args.batches = ([args.batch] if args.batch else
                    [int(b) for b in args.batches.split(',') if b])
    sizes = [int(s) for s in args.sizes.split(',') if s]
  except ValueError:
    p.error('--sizes / --batches: expected integers like 256,32')
  args.dtypes = ([args.dtype] if args.dtype else
                 [d for d in args.dtypes.split(',') if d])
  bad = [d for d in args.dtypes if d not in ('float32', 'bfloat16')]
  if bad:
    p.error(f'--dtypes: {bad} not in float32, bfloat16')
  for s in sizes:
    if s < 16 or s & (s - 1):
      p.error(f'--sizes: {s} is not a power of 2 >= 16')
  if min(args.batches) < 1 or args.steps < 1 or args.warmup < 1:
    p.error('--batches, --steps and --warmup must be >= 1')
  args.size_list = sizes
  return args


def main(argv=None):
  args = parse_args(argv)
  if args.only:
    rows = _jax_child(args) if args.only == 'jax' else _torch_child(args)
    bench_util.emit(rows)
    return 0
  rows = []
  for size in args.size_list:
    w_hpf = 1.0 if size == 256 else 0.0
    for fw in ('jax',) + (() if args.skip_torch else ('torch',)):
      print(f'[{fw}] train step {size} px, w_hpf {w_hpf:g}, batches '
            f'{args.batches}, dtypes {args.dtypes} ...', flush=True)
      cmd = [sys.executable, os.path.abspath(__file__), '--only', fw,
             '--size', str(size), '--w_hpf', str(w_hpf),
             '--batches', ','.join(map(str, args.batches)),
             '--dtypes', ','.join(args.dtypes), '--steps', str(args.steps),
             '--warmup', str(args.warmup), '--preservation',
             args.preservation]
      cmd += ['--tiny'] if args.tiny else []
      cmd += ['--count-torch-flops'] if args.count_torch_flops else []
      if args.peak_tflops:
        cmd += ['--peak-tflops', str(args.peak_tflops)]
      got = bench_util.run_child(cmd, f'{fw} train benchmark at {size} px')
      rows += got
      # Written as each child finishes: a later stage that runs out of
      # time keeps what was measured.
      _charge_torch(rows)
      bench_util.write_json(args.json, got)
  print()
  print(bench_util.format_table(rows))
  return 0


if __name__ == '__main__':
  sys.exit(main())
