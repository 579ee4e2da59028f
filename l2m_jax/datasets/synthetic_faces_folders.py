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
                         overwrite: bool = False, progress=None
                         ) -> dict[str, Any]:
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
    data = sf.generate_arrays(num, image_size, seed, split)
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


def load_arrays(root: str | pathlib.Path, split: str) -> dict[str, np.ndarray]:
  """The `synthetic_faces.generate_arrays` dict of a split in `root`.

  Read back from what `export_folder_layout` wrote: the features file and
  the PNGs (lossless), so the arrays equal those it rendered, dtypes
  included; about a tenth of the time of rendering them again.
  """
  root = pathlib.Path(root)
  feats = load_features(root, split)
  images = []
  for rel in feats['path']:
    try:
      with Image.open(root / str(rel)) as im:
        images.append(np.asarray(im.convert('RGB')))
    except (OSError, ValueError) as e:
      raise ValueError(f'{root / str(rel)}: unreadable image ({e}); '
                       f'rewrite {root} with export_folder_layout') from None
  out = {'image': np.stack(images).astype(np.uint8),
         'identity': feats['identity'].astype(np.float32),
         'hair_style': feats['hair_style'].astype(np.int32),
         'index': feats['index'].astype(np.int64)}
  out.update({a: feats[a].astype(np.int32) for a in sf.ATTRIBUTES})
  return out


# Errors of export_folder_layout that a child process passes back by name.
_CHILD_ERRORS = {'ValueError': ValueError, 'FileExistsError': FileExistsError,
                 'FileNotFoundError': FileNotFoundError,
                 'PermissionError': PermissionError, 'OSError': OSError}


class ExportProcess:
  """`export_folder_layout` running in a child Python process.

  Rendering the faces is Python-bound: in a thread it would hold the
  interpreter lock against whatever the caller does meanwhile (the demo
  imports TensorFlow then, which needs it too). The child imports only
  NumPy, PIL and this package's generator. `wait()` returns the function's
  result; an error in the child is raised again here with its message.
  On Linux the child ends with the thread that started it (killed or not),
  so start and wait in one long-lived thread.
  """

  def __init__(self, root: str | pathlib.Path, attribute: str, *,
               image_size: int, num_train: int, num_val: int, seed: int,
               overwrite: bool = False):
    import os  # pylint: disable=g-import-not-at-top
    import subprocess  # pylint: disable=g-import-not-at-top
    import sys  # pylint: disable=g-import-not-at-top
    self.root = pathlib.Path(root)
    args = dict(root=str(self.root), attribute=attribute,
                image_size=int(image_size), num_train=int(num_train),
                num_val=int(num_val), seed=int(seed),
                overwrite=bool(overwrite), parent_pid=os.getpid())
    package_root = str(pathlib.Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join(
        p for p in (package_root, env.get('PYTHONPATH')) if p)
    self._proc = subprocess.Popen(
        [sys.executable, '-m', __name__, json.dumps(args)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)

  def wait(self, progress=None) -> dict[str, Any]:
    """The export's result; `progress(message)` gets its progress lines."""
    out, err = self._proc.communicate()
    lines = out.splitlines()
    for line in lines:
      if not line.startswith(_RESULT) and progress is not None:
        progress(line)
    results = [l[len(_RESULT):] for l in lines if l.startswith(_RESULT)]
    if self._proc.returncode == 0 and results:
      return json.loads(results[-1])
    last = [l for l in err.strip().splitlines() if l.strip()][-1:] or ['']
    name, _, message = last[0].partition(': ')
    if name in _CHILD_ERRORS:
      raise _CHILD_ERRORS[name](message)
    raise RuntimeError(
        f'{self.root}: writing the generated faces failed in a child '
        f'process (exit {self._proc.returncode}): {err.strip()[-2000:]}')

  def kill(self) -> None:
    """Stops the child if it still runs (the caller stopped early)."""
    if self._proc.poll() is None:
      self._proc.kill()
      self._proc.wait()


_RESULT = 'EXPORT_RESULT '


def _exit_with_parent(parent_pid: int | None) -> None:
  """Ends this child when its parent ends, killed or not (Linux).

  A demo stopped during its first stage must not leave a writer behind
  that a rerun in the same folder would race with.
  """
  import os  # pylint: disable=g-import-not-at-top
  import signal  # pylint: disable=g-import-not-at-top
  try:
    import ctypes  # pylint: disable=g-import-not-at-top
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig,
                                            int(signal.SIGKILL))
  except (OSError, AttributeError):  # not Linux: the parent kills it on errors
    pass
  if parent_pid is not None and os.getppid() != parent_pid:
    os._exit(1)  # the parent ended before the death signal was set


def _child_main(argv: list[str]) -> int:
  import sys  # pylint: disable=g-import-not-at-top
  args = json.loads(argv[0])
  _exit_with_parent(args.pop('parent_pid', None))
  try:
    info = export_folder_layout(**args, progress=lambda m: print(m, flush=True))
  except Exception as e:  # pylint: disable=broad-except
    print(f'{type(e).__name__}: {e}', file=sys.stderr)
    return 1
  print(_RESULT + json.dumps(info), flush=True)
  return 0


if __name__ == '__main__':
  import sys  # pylint: disable=g-import-not-at-top
  sys.exit(_child_main(sys.argv[1:]))
