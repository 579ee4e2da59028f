"""Recognises which upstream checkpoint a loaded file holds.

Used by the converters to turn "wrong keys" into "this is a <kind>
checkpoint; convert it with <command>" when a user passes a file to the wrong
converter. Recognition looks at a few characteristic keys only; the
converters still check every key and shape.
"""

from __future__ import annotations

from typing import Any, Mapping

# kind -> (description, scripts/convert_latent.py subcommand)
KINDS = {
    'stylegan2': ('a StyleGAN2 generator (stylegan2-pytorch g_ema)',
                  'stylegan2'),
    'restyle': ('a pSp / e4e / ReStyle checkpoint (encoder.* and decoder.*)',
                'encoder'),
    'arcface': ('an ArcFace IR-SE state_dict (model_ir_se50.pth)', 'arcface'),
    'classifier': ('a BranchedTiny attribute classifier (BranchedTiny.ckpt)',
                   'classifier'),
    'mapper': ('a Latent-To-Latent mapper state_dict', 'mapper'),
    'boundaries': ('an InterFaceGAN boundaries dict', 'boundaries'),
}


def _strip(keys, prefix):
  return {k[len(prefix):] for k in keys if isinstance(k, str)
          and k.startswith(prefix)}


def guess_kind(obj: Any) -> str | None:
  """The `KINDS` key of a loaded checkpoint object, or None if unknown."""
  if not isinstance(obj, Mapping):
    return None
  if isinstance(obj.get('g_ema'), Mapping):
    return 'stylegan2'
  candidates = [obj]
  sd = obj.get('state_dict')
  if isinstance(sd, Mapping):
    candidates.insert(0, sd)
  for d in candidates:
    keys = {k for k in d if isinstance(k, str)}
    for prefix in ('', 'module.', 'model.'):
      ks = _strip(keys, prefix) if prefix else keys
      if any(k.startswith('encoder.') for k in ks):
        return 'restyle'
      if 'to_layer_6.0.weight' in ks:
        return 'classifier'
      if 'input_layer.0.weight' in ks and any(
          k.startswith('output_layer.') for k in ks):
        return 'arcface'
      if 'style.1.weight' in ks or any(k.startswith('decoder.') for k in ks):
        return 'stylegan2'
      if 'course_mapping.mapping.0.0.weight' in ks:
        return 'mapper'
  if obj and all(isinstance(k, str) and k[:2].isdigit() and k[2:3] == '_'
                 and hasattr(v, 'shape') for k, v in obj.items()):
    return 'boundaries'
  return None


def wrong_kind_note(obj: Any, expected: str) -> str:
  """A note for a ConversionError when `obj` is not an `expected` file."""
  kind = guess_kind(obj)
  want = KINDS[expected][0]
  if kind is None or kind == expected:
    top = ', '.join(sorted(str(k) for k in obj)[:10]) if isinstance(
        obj, Mapping) else type(obj).__name__
    return f'  not {want}; top-level entries: {top}'
  desc, cmd = KINDS[kind]
  return (f'  this file holds {desc}, not {want}; convert it with '
          f'`scripts/convert_latent.py {cmd}`')
