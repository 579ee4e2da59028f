"""Export of the generated faces to the official ImageFolder layout.

`export_folder_layout` writes `root/{train,val}/<domain>/<index>.png` for one
attribute (docs/method.md#l2m-data), with the identity vector and every
attribute of each file in `root/features_<split>.npz`; `load_features` reads
them back. The pixels are those of `synthetic_faces.render_face`, the same the
tfds builder (`synthetic_faces_tfds`) stores for the same seed.
"""

from __future__ import annotations

import json
import pathlib
import shutil
from typing import Any

import numpy as np
from PIL import Image

from l2m_jax.datasets import synthetic_faces as sf


def export_folder_layout(root: str | pathlib.Path, attribute: str = 'smiling',
                         image_size: int = 64, num_train: int = 2000,
                         num_val: int = 200, seed: int = 0,
                         overwrite: bool = False, progress=None,
                         generate=None) -> dict[str, Any]:
  """Writes `root/{train,val}/<domain>/<index>.png` for one attribute.

  Domains are DOMAINS[attribute] (sorted, label 0 = attribute absent). Next
  to the split folders, `root/features_<split>.npz` holds, per written file,
  its relative path (`path`), the identity vector and every attribute, so
  metrics can rebuild region masks and identity targets; `root/synthetic_faces.json`
  records the generation settings. The files are the same pixels the tfds
  builder stores for the same seed.

  Args:
    root: output directory (created).
    attribute: which attribute defines the domains.
    image_size, num_train, num_val, seed: generation settings.
    overwrite: replace an existing non-empty `root`.
    progress: optional callable(message) for progress lines.
    generate: optional stand-in for `synthetic_faces.generate_arrays`, called
      as generate(num, image_size, seed, split); it must return that
      function's arrays (a caller that renders the faces anyway passes its
      cache, so that they are rendered once).

  Returns:
    {'root', 'domains', 'counts': {split: {domain: n}}}.
  """
  sf.check_attribute(attribute)
  root = pathlib.Path(root)
  settings = dict(attribute=attribute, image_size=int(image_size),
                  num_train=int(num_train), num_val=int(num_val),
                  seed=int(seed), version=sf.VERSION)
  meta_path = root / 'synthetic_faces.json'
  if root.exists() and any(root.iterdir()):
    if meta_path.is_file() and json.loads(meta_path.read_text()) == settings:
      counts = json.loads((root / 'counts.json').read_text())
      return {'root': str(root), 'domains': list(sf.DOMAINS[attribute]),
              'counts': counts, 'reused': True}
    if not overwrite:
      raise FileExistsError(
          f'{root}: exists, is not empty and was not written with these '
          f'settings ({settings}); pass overwrite=True (--overwrite) to '
          'replace it')
    shutil.rmtree(root)
  counts = {}
  for split, num in (('train', num_train), ('val', num_val)):
    data = (generate or sf.generate_arrays)(num, image_size, seed, split)
    counts[split] = {d: 0 for d in sf.DOMAINS[attribute]}
    files = []
    for d in sf.DOMAINS[attribute]:
      (root / split / d).mkdir(parents=True, exist_ok=True)
    for k in range(num):
      domain = sf.DOMAINS[attribute][data[attribute][k]]
      rel = f'{split}/{domain}/{int(data["index"][k]):06d}.png'
      Image.fromarray(data['image'][k]).save(root / rel)
      files.append(rel)
      counts[split][domain] += 1
    np.savez(root / f'features_{split}.npz', path=np.array(files),
             identity=data['identity'], hair_style=data['hair_style'],
             index=data['index'], **{a: data[a] for a in sf.ATTRIBUTES})
    if progress is not None:
      progress(f'{split}: wrote {num} images to {root / split} '
               f'({counts[split]})')
  (root / 'counts.json').write_text(json.dumps(counts))
  meta_path.write_text(json.dumps(settings))
  return {'root': str(root), 'domains': list(sf.DOMAINS[attribute]),
          'counts': counts, 'reused': False}


def load_features(root: str | pathlib.Path, split: str
                  ) -> dict[str, np.ndarray]:
  """Reads `root/features_<split>.npz` written by `export_folder_layout`."""
  path = pathlib.Path(root) / f'features_{split}.npz'
  if not path.is_file():
    raise FileNotFoundError(f'{path}: no feature file; was {root} written by '
                            'export_folder_layout?')
  with np.load(path) as f:
    return {k: f[k] for k in f.files}
