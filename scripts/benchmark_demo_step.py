"""Where the demo's L2M-GAN training step spends its time, on this machine.

  python3 scripts/benchmark_demo_step.py --workdir runs/demo [--steps 30]

Needs a demo workdir whose helper networks exist (`<workdir>/priors`, written
by `python3 -m l2m_jax.demo --workdir=...`; its first three stages suffice).
Builds the training step of configs/demo.py with those networks and random
G, E, D, then prints:

- the initial state's compile time at XLA's default backend optimisation
  level and at `parallel.INIT_OPTIMIZATION_LEVEL`, and whether the two
  give identical weights;
- the whole step as the demo runs it (global batch 8 over
  `demo.cpu_devices` CPU devices or `--cpu-devices`, compiled as
  `parallel.compile_step` does; XLA_FLAGS from the environment apply):
  compile seconds, steps/s over `--steps` steps after 3 untimed ones, and
  the process CPU time per wall second;
- its parts on one device (the whole host) at the per-device batch (4 over
  2 devices): XLA's FLOP count of
  each compiled part and its fastest time of `--repeats` calls: the whole
  per-device step, the discriminator's gradient with and without R1, the
  edit's forward and forward+backward (E and G), one mask computation (the
  LandmarkNet alone and the FAN post-processing of its heatmaps) and the
  preservation loss's gradient.

The parts overlap (the step runs the masks twice, G forward twice, D on real
and fake images): they say what each costs, not a partition of the step.
Timings move with the machine's state (docs/benchmarks.md); compare rows of
one run only. Needs no tensorflow, tfds or clu (ml_collections: the config).
`--quick` runs the test size of configs/demo.py; `--set FIELD=VALUE` changes a
top-level training field (e.g. `--set base_dim=24`, a narrower G, E and D).
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

import argparse  # pylint: disable=g-import-not-at-top,wrong-import-position
import functools  # pylint: disable=g-import-not-at-top,wrong-import-position
import pathlib  # pylint: disable=g-import-not-at-top,wrong-import-position
import resource  # pylint: disable=g-import-not-at-top,wrong-import-position
import time  # pylint: disable=g-import-not-at-top,wrong-import-position

import bench_util  # pylint: disable=g-import-not-at-top,wrong-import-position


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--workdir', required=True,
                 help='a demo workdir with priors/landmarks and '
                 'priors/preservation')
  p.add_argument('--steps', type=int, default=30, help='timed whole steps')
  p.add_argument('--repeats', type=int, default=10,
                 help='calls of each part (the fastest is kept)')
  p.add_argument('--cpu-devices', type=int, default=None,
                 help='CPU devices to split the host into (default: the '
                 "config's demo.cpu_devices)")
  p.add_argument('--set', action='append', default=[], metavar='FIELD=VALUE',
                 help='override a top-level training field of the config '
                 '(repeatable), e.g. --set base_dim=24; the value is read as '
                 "the field's type")
  p.add_argument('--quick', action='store_true',
                 help="configs/demo.py:quick (the test size; its workdir's "
                 'helper networks must be of that size too)')
  args = p.parse_args(argv)
  priors = pathlib.Path(args.workdir).expanduser() / 'priors'
  missing = [str(priors / n) for n in ('landmarks', 'preservation')
             if not (priors / n).exists()]
  if missing:
    p.error(f'--workdir={args.workdir}: no helper networks at {missing}; '
            'run `python3 -m l2m_jax.demo --workdir=...` first')
  if args.steps < 1 or args.repeats < 1:
    p.error('--steps and --repeats must be >= 1')
  if args.cpu_devices is not None and args.cpu_devices < 1:
    p.error('--cpu-devices must be >= 1')
  for item in args.set:
    field, sep, value = item.partition('=')
    if not sep or not field or not value:
      p.error(f'--set {item!r}: expected FIELD=VALUE')
  args.priors = priors
  return args


def apply_overrides(config, items) -> dict:
  """config[field] = value for each 'FIELD=VALUE' (top-level fields only).

  Returns:
    {field: new value}.

  Raises:
    ValueError: an unknown field, a nested one, or a value that does not
      read as the field's type.
  """
  done = {}
  for item in items:
    field, _, value = item.partition('=')
    if field not in config:  # a dotted (nested) name is not a key either
      raise ValueError(f'--set {item!r}: configs/demo.py has no top-level '
                       f'field {field!r}')
    old = config[field]
    if isinstance(old, (dict, list, tuple)) or hasattr(old, 'keys'):
      raise ValueError(f'--set {item!r}: {field!r} is not a scalar field')
    kind = type(old)
    try:
      if kind is bool:
        if value.lower() not in ('true', 'false', '1', '0'):
          raise ValueError(value)
        new = value.lower() in ('true', '1')
      else:
        new = kind(value)
    except ValueError:
      raise ValueError(f'--set {item!r}: {field!r} expects type '
                       f'{kind.__name__}, got {value!r}') from None
    config[field] = new
    done[field] = new
  return done


def main(argv=None) -> int:
  args = parse_args(argv)
  from configs import demo as demo_config  # pylint: disable=g-import-not-at-top
  config = demo_config.get_config('quick' if args.quick else '')
  try:
    overrides = apply_overrides(config, args.set)
  except ValueError as e:
    print(f'benchmark_demo_step.py: error: {e}', file=sys.stderr)
    return 2
  import jax  # pylint: disable=g-import-not-at-top
  devices = (config.demo.cpu_devices if args.cpu_devices is None
             else args.cpu_devices)
  if devices:
    try:
      jax.config.update('jax_num_cpu_devices', int(devices))
    except RuntimeError:  # JAX already running in this process (a test)
      print(f'JAX was initialised before this script: {jax.device_count()} '
            f'devices, not {devices}', flush=True)
  import numpy as np  # pylint: disable=g-import-not-at-top
  from l2m_jax import editing  # pylint: disable=g-import-not-at-top
  from l2m_jax import host_memory  # pylint: disable=g-import-not-at-top,redefined-outer-name
  from l2m_jax import l2m_frozen  # pylint: disable=g-import-not-at-top
  from l2m_jax import losses  # pylint: disable=g-import-not-at-top
  from l2m_jax import parallel  # pylint: disable=g-import-not-at-top
  from l2m_jax import train_l2m  # pylint: disable=g-import-not-at-top
  from l2m_jax.models import landmarks as landmarks_lib  # pylint: disable=g-import-not-at-top
  from l2m_jax.models import preservation as preservation_lib  # pylint: disable=g-import-not-at-top

  config.landmark_checkpoint = str(args.priors / 'landmarks')
  config.preservation_checkpoint = str(args.priors / 'preservation')
  domains = ['absent', 'present']
  models = train_l2m.create_models(config, domains)
  rng = jax.random.key(int(config.seed))
  frozen = l2m_frozen.load_frozen(config, jax.random.fold_in(rng, 1))
  mesh = parallel.make_mesh()

  # The initial state's program, at XLA's default backend optimisation
  # level and at the one parallel.init_replicated uses.
  init = functools.partial(train_l2m.create_train_state, config, models,
                           jax.random.fold_in(rng, 0))
  lowered = jax.jit(init, out_shardings=parallel.replicated_sharding(
      mesh)).lower()
  t0 = time.perf_counter()
  reference = jax.block_until_ready(lowered.compile()())
  default_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  level = parallel.INIT_OPTIMIZATION_LEVEL
  state = jax.block_until_ready(lowered.compile(compiler_options={
      'xla_backend_optimization_level': level})())
  level_s = time.perf_counter() - t0
  same = all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(
      jax.tree.leaves(reference), jax.tree.leaves(state)))
  print(f'initial state: compile and run {default_s:.1f} s at the default '
        f'XLA level, {level_s:.1f} s at level {level} '
        f'(parallel.init_replicated); identical weights: {same}', flush=True)
  state = jax.device_put(jax.device_get(state), jax.devices()[0])
  size, batch = int(config.img_size), int(config.batch_size)
  r = np.random.RandomState(0)
  host_batch = {
      'x_src': r.uniform(-1, 1, (batch, size, size, 3)).astype(np.float32),
      'y_src': (np.arange(batch) % 2).astype(np.int32),
      'y_trg': (1 - np.arange(batch) % 2).astype(np.int32)}
  print(f'{jax.device_count()} {jax.devices()[0].platform} devices; '
        f'{host_memory.status()}; load {os.getloadavg()}; XLA_FLAGS='
        f'{os.environ.get("XLA_FLAGS", "")!r}; overrides {overrides}',
        flush=True)

  # The whole step, as the demo runs it.
  compiled = train_l2m.compile_train_step(config, models, mesh)
  dstate = compiled.put_state(parallel.init_replicated(lambda: state, mesh))
  frozen_dev = compiled.put_args(frozen)
  t0 = time.perf_counter()
  compiled = compiled.compile_ahead(dstate, compiled.put_batch(host_batch),
                                    frozen_dev)
  compile_s = time.perf_counter() - t0
  for _ in range(3):
    dstate, _ = compiled(dstate, compiled.put_batch(host_batch), frozen_dev)
  jax.block_until_ready(dstate)
  t0, c0 = time.perf_counter(), time.process_time()
  r0 = resource.getrusage(resource.RUSAGE_SELF)
  window = parallel.DispatchWindow()  # as the training loop dispatches
  for _ in range(args.steps):
    dstate, metrics = compiled(dstate, compiled.put_batch(host_batch),
                               frozen_dev)
    window.push(metrics)
  compiled.get_metrics(metrics)
  jax.block_until_ready(dstate)
  wall = time.perf_counter() - t0
  r1 = resource.getrusage(resource.RUSAGE_SELF)
  print(f'whole step, global batch {batch} over {mesh.devices.size} devices: '
        f'compile {compile_s:.1f} s, {args.steps / wall:.2f} steps/s, '
        f'CPU/wall {(time.process_time() - c0) / wall:.2f} (kernel '
        f'{(r1.ru_stime - r0.ru_stime) / wall:.2f}), '
        f'{(r1.ru_minflt - r0.ru_minflt) / args.steps:.0f} page faults/step',
        flush=True)

  # Its parts, on one device at the per-device batch.
  per = batch // mesh.devices.size
  x = jax.numpy.asarray(host_batch['x_src'][:per])
  y = jax.numpy.asarray(host_batch['y_src'][:per])
  y_trg = jax.numpy.asarray(host_batch['y_trg'][:per])
  # The step compiled as the demo compiles it, on one device, without
  # donating the state (each part is called several times on one input).
  one = parallel.compile_step(
      functools.partial(train_l2m.train_step, models=models, config=config),
      parallel.make_mesh(1), config.parallel, num_args=1, donate_state=False)
  shard = {k: v[:per] for k, v in host_batch.items()}
  gen, enc, disc = models.generator, models.style_encoder, models.discriminator
  g_p, e_p = state.generator.params, state.style_encoder.params
  d_p = state.discriminator.params
  masks = landmarks_lib.masks_from_frozen(frozen, x)
  heat = landmarks_lib.model_from_variables(frozen['landmarks']).apply(
      frozen['landmarks'], x)

  def edit(g, e):
    return editing.edit_core(gen, enc, {'params': g}, {'params': e}, x, y,
                             y_trg, masks)

  def d_grad(with_r1):
    def loss(p):
      if with_r1:
        r1, real = losses.r1_penalty(
            lambda im: disc.apply({'params': p}, im, y), x)
      else:
        r1, real = 0.0, disc.apply({'params': p}, x, y)
      real_l, fake_l = losses.d_adversarial_loss(
          real, disc.apply({'params': p}, x[::-1], y_trg))
      return real_l + fake_l + r1
    return jax.grad(loss)

  parts = [
      ('whole per-device step', one.fn,
       (one.put_state(state), one.put_batch(shard), one.put_args(frozen))),
      ('D gradient with R1', d_grad(True), (d_p,)),
      ('D gradient without R1', d_grad(False), (d_p,)),
      ('edit forward (E, G)', edit, (g_p, e_p)),
      ('edit forward+backward', jax.grad(
          lambda g, e: edit(g, e)[0].sum(), argnums=(0, 1)), (g_p, e_p)),
      ('masks (LandmarkNet + post-processing)',
       lambda f, im: landmarks_lib.masks_from_frozen(f, im), (frozen, x)),
      ('LandmarkNet alone', lambda v, im: landmarks_lib.model_from_variables(
          v).apply(v, im), (frozen['landmarks'], x)),
      ('mask post-processing alone',
       lambda h: landmarks_lib.generator_masks(h, size), (heat,)),
      ('preservation loss gradient', jax.grad(
          lambda xf: preservation_lib.preservation_loss(
              frozen['preservation'], x, xf,
              config.get('preservation_compare', 'features'))), (x[::-1],)),
  ]
  for name, fn, fn_args in parts:
    part = jax.jit(fn).lower(*fn_args).compile()
    flops = bench_util.xla_flops(part) or 0.0
    best = bench_util.best_of(
        lambda part=part, fn_args=fn_args: jax.block_until_ready(
            part(*fn_args)), args.repeats, warmup=True)
    print(f'  {name:40s} {flops / 1e9:7.3f} GFLOP {best * 1e3:8.2f} ms '
          f'{flops / best / 1e9:6.1f} GFLOP/s', flush=True)
  return 0


if __name__ == '__main__':
  sys.exit(main())
