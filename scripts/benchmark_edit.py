"""Edit throughput: the JAX editing pipelines vs the torch references.

  python scripts/benchmark_edit.py --batch-sizes 1 8 32 --repeats 3 --w-hpf 1

L2M-GAN edit (images/s). Both sides use the same random weights (a random
official-format checkpoint converted with l2m_jax.convert.l2m) at img_size
256 and run on this machine's default device (CPU for torch here). Timed:
style encoder, FAN masks (w_hpf > 0), generator, degree 1. The first
(compiling / warm-up) call is excluded; the median of --repeats timed calls
is reported.

  python scripts/benchmark_edit.py --faces --weights mobilenet0.25_Final.pth \
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
  if args.faces:
    return _benchmark_faces(args)
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
