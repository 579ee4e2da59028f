"""Edit throughput: the JAX editing pipelines vs the torch references.

  python3 scripts/benchmark_edit.py --batch-sizes 1 32 128 \
      --dtypes float32 bfloat16 --repeats 3 --w-hpf 1 --json edit.json

L2M-GAN edit (images/s). Both sides use the same random weights (a random
official-format checkpoint converted with l2m_jax.convert.l2m) at img_size
256 and run on each framework's default device (the first GPU when there is
one). Timed: style encoder, FAN masks (w_hpf > 0), generator, degree 1;
JAX `editing.edit` compiled ahead (compile time reported), torch under
no_grad (bfloat16: torch.autocast; cudnn.benchmark on a GPU). The warm-up
call is excluded; the median of --repeats timed calls is reported, with
XLA's FLOPs of the compiled edit, TFLOP/s and MFU (scripts/bench_util.py).
`--tiny` runs the same code at 32 px with narrow networks (test size).

  python3 scripts/benchmark_edit.py --faces --weights mobilenet0.25_Final.pth \
      --photos photos/ --repeats 3 --batch-sizes 1 4

Photo pipeline (`--faces`, seconds per photo at --size px, default 1024):
RetinaFace detection (network + decoding + host NMS) with the released
weights, JAX (`l2m_jax.face_detection`) vs the in-house torch reference
(third_party/retinaface_torch.py, upstream `detect.py` post-processing),
then the host steps both paths share: CelebA-HQ-style alignment of the best
face (1024 px crop, 4096 px warp) and paste-back of a 256 px edit. Every
photo is resized to size x size first (PIL bicubic); with --composite it is
instead pasted small and tilted into a size x size background. Detection is
also timed on batches of --batch-sizes photos (JAX: one batched call; torch:
one call per photo, as upstream).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # bench_util

import argparse  # pylint: disable=g-import-not-at-top,wrong-import-position
import statistics  # pylint: disable=g-import-not-at-top,wrong-import-position
import time  # pylint: disable=g-import-not-at-top,wrong-import-position

import bench_util  # pylint: disable=g-import-not-at-top,wrong-import-position


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--batch-sizes', type=int, nargs='+', default=[1, 8, 32])
  p.add_argument('--dtypes', nargs='+', default=['float32'],
                 choices=('float32', 'bfloat16'),
                 help='compute dtypes (torch: autocast for bfloat16)')
  p.add_argument('--repeats', type=int, default=3,
                 help='timed calls per batch size (median reported)')
  p.add_argument('--w-hpf', type=int, default=1, choices=(0, 1),
                 help='1: official masked model (FAN included); 0: no masks')
  p.add_argument('--img-size', type=int, default=256)
  p.add_argument('--max-conv-dim', type=int, default=512)
  p.add_argument('--tiny', action='store_true',
                 help='32 px, base_dim 8, cap 16, no masks: test size')
  p.add_argument('--skip-torch', action='store_true')
  p.add_argument('--peak-tflops', type=float, default=None,
                 help='peak TFLOP/s for MFU (default: stated per device)')
  p.add_argument('--json', default=None, help='append the rows to this JSON')
  p.add_argument('--faces', action='store_true',
                 help='benchmark the photo pipeline (detect, align, paste '
                 'back) instead of the L2M-GAN edit')
  p.add_argument('--weights', default=None,
                 help='--faces: RetinaFace mobilenet0.25_Final.pth')
  p.add_argument('--photos', default=None,
                 help='--faces: a folder of photos (.png/.jpg)')
  p.add_argument('--size', type=int, default=1024,
                 help='--faces: photos are resized to size x size')
  p.add_argument('--composite', action='store_true',
                 help='--faces: instead, paste each photo at 0.35 scale, '
                 'rotated 15 degrees, off-centre into a size x size '
                 'background (an ordinary photo: a small, tilted face)')
  args = p.parse_args(argv)
  if args.tiny:
    args.img_size, args.max_conv_dim, args.w_hpf = 32, 16, 0
  return args


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
  if args.faces:
    return _benchmark_faces(args)
  import contextlib  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  from l2m_jax import editing  # pylint: disable=g-import-not-at-top
  from l2m_jax.convert import l2m as l2m_convert  # pylint: disable=g-import-not-at-top
  from l2m_jax.models import l2m  # pylint: disable=g-import-not-at-top
  from tests import l2m_checkpoints as lc  # pylint: disable=g-import-not-at-top

  tdev = 'cuda' if torch.cuda.is_available() else 'cpu'
  if tdev == 'cuda':
    torch.backends.cudnn.benchmark = True
  jdev = jax.devices()[0]
  tkind = torch.cuda.get_device_name(0) if tdev == 'cuda' else 'cpu'
  print(f'jax {jax.__version__} on {jdev.device_kind} '
        f'({jax.default_backend()}); torch {torch.__version__} on {tkind} '
        f'({torch.get_num_threads()} threads)', flush=True)
  base_dim = 8 if args.tiny else None
  nets = lc.build_torch_nets(img_size=args.img_size,
                             max_conv_dim=args.max_conv_dim, w_hpf=args.w_hpf,
                             seed=0, base_dim=base_dim)
  config = l2m.L2MModelConfig(
      img_size=args.img_size, style_dim=64, num_domains=2,
      max_conv_dim=args.max_conv_dim, w_hpf=float(args.w_hpf),
      base_dim=base_dim)
  variables, _ = l2m_convert.convert_state_dicts(
      nets.state_dicts(), 'benchmark nets', config=config)
  variables = jax.device_put(variables)
  for name in ('generator', 'style_encoder', 'fan'):
    if getattr(nets, name) is not None:
      setattr(nets, name, getattr(nets, name).to(tdev))
  print(f'config {config.to_dict()}', flush=True)

  rows = []
  for dtype in args.dtypes:
    jdtype = jnp.bfloat16 if dtype == 'bfloat16' else jnp.float32
    for bs in args.batch_sizes:
      x = lc.sample_images(bs, args.img_size, seed=bs)
      y = np.zeros((bs,), np.int32)
      y1 = np.ones((bs,), np.int32)
      xj, yj, y1j = jax.device_put((x, y, y1))
      t0 = time.perf_counter()
      exe = editing.edit.lower(variables, xj, yj, y1j, 1.0, config=config,
                               dtype=jdtype).compile()
      compile_s = time.perf_counter() - t0
      jax_fn = lambda: exe(variables, xj, yj, y1j, 1.0).block_until_ready()
      t_jax = _time(jax_fn, args.repeats)
      flops = bench_util.xla_flops(exe)
      peak = bench_util.jax_peak_bytes()
      rows.append(bench_util.row(
          'edit', 'jax', dtype=dtype, batch=bs, size=args.img_size,
          step_s=t_jax, compile_s=compile_s, flops=flops,
          peak=bench_util.peak_tflops(jdev.platform, jdev.device_kind, dtype,
                                      args.peak_tflops),
          device=jdev.device_kind,
          peak_bytes=peak or bench_util.rss_peak_bytes(),
          peak_kind='device (process)' if peak else 'rss (process)',
          xla_memory_bytes=bench_util.xla_memory_bytes(exe),
          w_hpf=args.w_hpf))
      bench_util.write_json(args.json, rows[-1:])
      line = f'{dtype} batch {bs}: jax {bs / t_jax:.3f} img/s'
      if not args.skip_torch:
        xt = lc.nhwc_to_torch(x).to(tdev)
        yt, y1t = torch.from_numpy(y).to(tdev), torch.from_numpy(y1).to(tdev)
        amp = ((lambda: torch.autocast(tdev, dtype=torch.bfloat16))
               if dtype == 'bfloat16' else contextlib.nullcontext)
        sync = torch.cuda.synchronize if tdev == 'cuda' else (lambda: None)

        def torch_fn():
          with torch.no_grad(), amp():
            masks = nets.fan.get_heatmap(xt) if args.w_hpf > 0 else None
            s, _, s2, s3 = nets.style_encoder(xt, yt, y1t)
            out = nets.generator(xt, s + (s3 - s2), masks)
          sync()
          return out

        if tdev == 'cuda':
          torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        torch_fn()
        warm_s = time.perf_counter() - t0
        t_torch = _time(torch_fn, args.repeats)
        tpeak = torch.cuda.max_memory_allocated() if tdev == 'cuda' else None
        t_flops = flops
        rows.append(bench_util.row(
            'edit', 'torch', dtype=dtype, batch=bs, size=args.img_size,
            step_s=t_torch, compile_s=warm_s, flops=t_flops,
            peak=bench_util.peak_tflops(tdev, tkind, dtype, args.peak_tflops),
            device=tkind, peak_bytes=tpeak or bench_util.rss_peak_bytes(),
            peak_kind='device' if tpeak else 'rss (process)',
            counter_flops=bench_util.torch_flops(torch_fn),
            flops_source='xla (JAX program of the same edit)',
            w_hpf=args.w_hpf))
        bench_util.write_json(args.json, rows[-1:])
        line += f', torch {bs / t_torch:.3f} img/s'
      print(line, flush=True)

  print()
  print(bench_util.format_table(rows))
  return 0


def _benchmark_faces(args) -> int:
  """--faces: detection (JAX vs torch), alignment and paste-back per photo."""
  if not args.weights or not args.photos:
    print('error: --faces needs --weights and --photos', file=sys.stderr)
    return 2
  if args.size < 32:
    print(f'error: --size must be >= 32, got {args.size}', file=sys.stderr)
    return 2
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  from l2m_jax import alignment, face_detection, image_io  # pylint: disable=g-import-not-at-top
  from l2m_jax.convert import retinaface as rf_convert  # pylint: disable=g-import-not-at-top
  from l2m_jax.convert import torch_to_flax as t2f  # pylint: disable=g-import-not-at-top
  from third_party import retinaface_torch  # pylint: disable=g-import-not-at-top

  try:
    paths = image_io.list_images(args.photos)
    variables, _ = rf_convert.convert_checkpoint(args.weights)
    state_dict = rf_convert.unwrap_state_dict(
        t2f.load_torch_file(args.weights), args.weights)
  except (FileNotFoundError, ValueError, t2f.ConversionError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  net = retinaface_torch.RetinaFace().eval()
  net.load_state_dict(state_dict)
  variables = jax.device_put(variables)
  photos = []
  for k, p in enumerate(paths):
    img = image_io.open_rgb(p)
    if args.composite:
      from tests import face_composites as fc  # pylint: disable=g-import-not-at-top
      n = img.size[0]
      a = fc.similarity(0.35 * args.size / n, 15.0, (n / 2, n / 2),
                        (0.4 * args.size, 0.45 * args.size))
      photos.append(fc.paste(fc.background(args.size, args.size, k),
                             np.asarray(img), a))
      continue
    if img.size != (args.size, args.size):
      img = img.resize((args.size, args.size), Image.BICUBIC)
    photos.append(np.asarray(img))
  print(f'jax {jax.__version__} on {jax.devices()[0].device_kind} '
        f'({jax.default_backend()}, {jax.local_device_count()} device(s)); '
        f'torch {torch.__version__} on CPU with {torch.get_num_threads()} '
        f'threads; {len(photos)} photo(s) at {args.size} px', flush=True)

  def jax_detect(batch):
    return face_detection.detect_faces(variables, batch,
                                       batch_size=len(batch))

  def torch_detect(batch):
    return [retinaface_torch.detect(net, img[..., ::-1]) for img in batch]

  faces = jax_detect(photos)
  rows = []
  for path, photo, found in zip(paths, photos, faces):
    t_jax = _time(lambda: jax_detect([photo]), args.repeats)
    t_torch = float('nan') if args.skip_torch else _time(
        lambda: torch_detect([photo]), args.repeats)
    t_align = t_paste = float('nan')
    if found:
      lm = found[0].landmarks
      t_align = _time(lambda: alignment.align_celebahq(photo, lm),
                      args.repeats)
      _, al = alignment.align_celebahq(photo, lm)
      edit = np.zeros((256, 256, 3), np.uint8)
      t_paste = _time(lambda: alignment.paste_back(photo, edit, al),
                      args.repeats)
    rows.append((path.name, len(found), t_jax, t_torch, t_align, t_paste))
    print(f'{path.name}: {len(found)} face(s); detect jax {t_jax:.3f} s, '
          f'torch {t_torch:.3f} s; align {t_align:.3f} s; paste-back '
          f'{t_paste:.3f} s', flush=True)

  print('\n| photo | faces | detect JAX (s) | detect torch (s) | align (s) | '
        'paste-back (s) | total JAX (s) | total torch (s) |')
  print('| --- | --- | --- | --- | --- | --- | --- | --- |')
  for name, n, tj, tt, ta, tp in rows:
    host = (ta if np.isfinite(ta) else 0) + (tp if np.isfinite(tp) else 0)
    print(f'| {name} | {n} | {tj:.3f} | {tt:.3f} | {ta:.3f} | {tp:.3f} | '
          f'{tj + host:.3f} | {tt + host:.3f} |')

  print('\n| detection batch | JAX photos/s | torch photos/s | JAX / torch |')
  print('| --- | --- | --- | --- |')
  for bs in args.batch_sizes:
    batch = [photos[i % len(photos)] for i in range(bs)]
    tj = _time(lambda: jax_detect(batch), args.repeats)
    tt = float('nan') if args.skip_torch else _time(
        lambda: torch_detect(batch), args.repeats)
    print(f'| {bs} | {bs / tj:.3f} | {bs / tt:.3f} | {tt / tj:.2f} |',
          flush=True)
  return 0


if __name__ == '__main__':
  sys.exit(main())
