"""Converts an official PyTorch checkpoint into a Flax checkpoint directory.

  python3 scripts/convert_checkpoint.py expr/checkpoints/100000_nets_ema.ckpt \
      --out converted/l2m_smiling
  python3 scripts/convert_checkpoint.py --format wing expr/checkpoints/wing.ckpt \
      --out converted/wing
  python3 scripts/convert_checkpoint.py --format retinaface \
      weights/mobilenet0.25_Final.pth --out converted/retinaface

`--format nets_ema` (default) reads an L2M-GAN `{step:06d}_nets_ema.ckpt`
(or a training `_nets.ckpt`, whose discriminator is converted too), infers
the model config from the tensor shapes, checks every key and shape and
writes `<out>/meta.json` + `<out>/variables/` (format 'l2m_gan').
`--format wing` converts StarGAN v2's FAN `wing.ckpt` (format 'fan').
`--format retinaface` converts the RetinaFace MobileNet-0.25 face detector
`mobilenet0.25_Final.pth` (format 'retinaface'; a `state_dict` wrapper and a
`module.` prefix are accepted), used by `scripts/edit.py --align`.
See docs/editing.md. Exit status: 0 on success, 2 on any problem with the
input (missing file, wrong keys or shapes, non-finite or non-float weights)
or the output folder, with one message naming it (docs/reliability.md).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse  # pylint: disable=g-import-not-at-top,wrong-import-position
import logging  # pylint: disable=g-import-not-at-top,wrong-import-position


def parse_args(argv=None):
  p = argparse.ArgumentParser(
      description='Convert an official L2M-GAN (nets_ema), FAN (wing) or '
      'RetinaFace face-detector PyTorch checkpoint to an l2m_jax checkpoint '
      'directory.')
  p.add_argument('input', help='the .ckpt file')
  p.add_argument('--format', choices=('nets_ema', 'wing', 'retinaface'),
                 default='nets_ema',
                 help='nets_ema: L2M-GAN {step}_nets_ema.ckpt / _nets.ckpt; '
                 'wing: StarGAN v2 FAN wing.ckpt; retinaface: RetinaFace '
                 'mobilenet0.25_Final.pth (default nets_ema)')
  p.add_argument('--out', required=True, help='output directory')
  p.add_argument('--domains', nargs='+', default=None,
                 help='domain names in label order (sorted training '
                 'folders); default sad smile for a 2-domain model')
  p.add_argument('--w-hpf', type=float, default=None,
                 help='override the high-pass weight (inferred > 0 is '
                 'stored as 1, the official value)')
  p.add_argument('--allow-missing', action='store_true',
                 help='wing only: accept a wing.ckpt lacking some FAN keys '
                 '(they keep initial values, as the original loader does)')
  p.add_argument('--overwrite', action='store_true',
                 help='replace an existing non-empty output directory')
  return p.parse_args(argv)


def main(argv=None) -> int:
  args = parse_args(argv)
  logging.basicConfig(level=logging.WARNING, format='%(levelname)s %(message)s')
  from l2m_jax import cli  # pylint: disable=g-import-not-at-top
  return cli.run_script(convert, args)


def convert(args) -> int:
  """The script's body; user errors propagate to `main`."""
  from l2m_jax.convert import torch_to_flax as t2f  # pylint: disable=g-import-not-at-top
  from l2m_jax import cli  # pylint: disable=g-import-not-at-top
  cli.check_out_dir(args.out, args.overwrite)
  print(f'converting {args.input} ({args.format}) ...', flush=True)
  if args.format == 'retinaface':
    if args.domains or args.w_hpf is not None or args.allow_missing:
      return cli.fail('--domains / --w-hpf / --allow-missing do not apply '
                      'to --format retinaface')
    from l2m_jax.convert import retinaface as rf_convert  # pylint: disable=g-import-not-at-top
    variables, meta = rf_convert.convert_checkpoint(args.input)
  elif args.format == 'wing':
    if args.domains or args.w_hpf is not None:
      return cli.fail('--domains / --w-hpf apply only to --format nets_ema')
    from l2m_jax.convert import fan as fan_convert  # pylint: disable=g-import-not-at-top
    variables, meta = fan_convert.convert_wing_checkpoint(
        args.input, allow_missing=args.allow_missing)
  else:
    from l2m_jax.convert import l2m as l2m_convert  # pylint: disable=g-import-not-at-top
    overrides = {}
    if args.w_hpf is not None:
      overrides['w_hpf'] = args.w_hpf
    variables, meta = l2m_convert.convert_checkpoint(
        args.input, domains=args.domains, **overrides)
    print(f"model config: {meta['config']}")
  t2f.save_converted(args.out, variables, meta, overwrite=args.overwrite)
  n = len(meta.get('key_map', {}))
  print(f"wrote {args.out} (format {meta['format']}, {n} tensors mapped, "
        f"{len(meta.get('ignored', []))} ignored)")
  return 0


if __name__ == '__main__':
  sys.exit(main())
