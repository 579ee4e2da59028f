"""Test utility: random-weight photo-pipeline networks in the upstream formats.

Builds the in-house torch references (`third_party/irse_torch.py`,
`restyle_torch.py`, `branched_tiny_torch.py`, `l2l_mapper_torch.py`) with
seeded random weights, saves them as the upstream code bases do (pSp's flat
`model_ir_se50.pth`, ReStyle's `{'state_dict', 'opts', 'latent_avg', ...}`,
the Lightning `BranchedTiny.ckpt`, the mapper's flat state_dict), converts
them with `scripts/convert_latent.py`, and caches the result for the whole
test session (the ReStyle encoder alone has 128M parameters, so it is built
and converted once and shared by the test modules).

Also renders generated faces (`l2m_jax.datasets.synthetic_faces`) and reads
the real fixture faces.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

import numpy as np
import torch
from PIL import Image

from l2m_jax import image_io
from l2m_jax.datasets import synthetic_faces
from third_party import branched_tiny_torch
from third_party import irse_torch
from third_party import l2l_mapper_torch
from third_party import restyle_torch

# The small ReStyle pairing used by the default suite: the full IR-SE-50
# encoder (256 px input) with a 64 px, narrow StyleGAN2 (style_dim 512 as the
# encoder requires; 10 W+ rows, so 10 style blocks: the mapper needs >= 9).
SMALL_G = dict(size=64, n_mlp=2, channel_base=16)


def make_arcface(seed: int = 0):
  """ArcFace IR-SE-50 with weight variance 1/fan_in and random BN stats."""
  torch.manual_seed(seed)
  gen = torch.Generator().manual_seed(seed + 1)
  net = irse_torch.Backbone(112, 50, 'ir_se', drop_ratio=0.6)
  irse_torch.he_init(net, gen, gain=1.0)
  irse_torch.randomize_batchnorm(net, gen)
  return net.eval()


def make_classifier(seed: int = 0):
  torch.manual_seed(seed)
  return branched_tiny_torch.randomize(branched_tiny_torch.BranchedTiny(),
                                       seed).eval()


def make_mapper(dim: int = 512, seed: int = 0, cond_dim: int = 0):
  torch.manual_seed(seed)
  return l2l_mapper_torch.LevelsMapper(dim=dim, cond_dim=cond_dim).eval()


def generated_faces(n: int, size: int, seed: int = 0) -> np.ndarray:
  """[n, size, size, 3] float32 in [-1, 1] rendered cartoon faces.

  Rendered at min(size, 512) px (the renderer's limit), resized with PIL
  bicubic when larger.
  """
  out = []
  for i in range(n):
    ident, attrs = synthetic_faces.sample_face(seed, 'val', i)
    img = synthetic_faces.render_face(ident, attrs, min(size, 512))
    if size > 512:
      img = np.asarray(Image.fromarray(img).resize((size, size),
                                                   Image.BICUBIC))
    out.append(img.astype(np.float32) / 127.5 - 1.0)
  return np.stack(out)


def real_faces(folder: pathlib.Path, size: int | None = None) -> np.ndarray:
  """The fixture photos as [N, S, S, 3] in [-1, 1] (resized when `size`)."""
  paths = image_io.list_images(folder)
  return np.stack([image_io.load_image(p, size) for p in paths])


def nchw(x: np.ndarray) -> torch.Tensor:
  return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def nhwc(t: torch.Tensor) -> np.ndarray:
  return t.detach().numpy().transpose(0, 2, 3, 1)


@dataclasses.dataclass
class PhotoNets:
  """Torch references and the converted folders of the small pipeline."""
  root: pathlib.Path
  e4e: Any
  arcface: Any
  classifier: Any
  mapper: Any
  direction: np.ndarray  # the boundaries file's 'smiling' row
  dirs: dict[str, pathlib.Path]
  memo: dict[Any, Any] = dataclasses.field(default_factory=dict)

  def torch_codes(self, seed: int, n_iters: int) -> list[np.ndarray]:
    """Torch ReStyle codes of generated face `seed` (256 px), per iteration.

    Memoised: the torch encoder is the slowest part of the default suite.
    """
    have = self.memo.get(('codes', seed), [])
    if len(have) < n_iters:
      x = generated_faces(1, 256, seed=seed)
      with torch.no_grad():
        have = [c.double().numpy() for c in self.e4e.invert(
            nchw(x), n_iters, return_all=True)]
      self.memo[('codes', seed)] = have
    return have[:n_iters]

  def photo_editor(self):
    """The converted pipeline loaded once through `load_photo_editor`.

    Batch 1 on one device, so every test shares its compiled functions.
    Returns (PhotoEditor, metas).
    """
    if 'pe' not in self.memo:
      from l2m_jax import latent_editing  # pylint: disable=g-import-not-at-top
      from l2m_jax import parallel  # pylint: disable=g-import-not-at-top
      self.memo['pe'] = latent_editing.load_photo_editor(
          str(self.dirs['encoder']), str(self.dirs['mapper']),
          arcface_dir=str(self.dirs['arcface']),
          classifier_dir=str(self.dirs['classifier']), batch_size=1,
          mesh=parallel.make_mesh(1))
    return self.memo['pe']


_CACHE: dict[str, PhotoNets] = {}


def photo_nets(tmp_path_factory) -> PhotoNets:
  """Builds, saves and converts every network once per test session."""
  if 'small' in _CACHE:
    return _CACHE['small']
  from scripts import convert_latent  # pylint: disable=g-import-not-at-top
  root = tmp_path_factory.mktemp('photo_nets')
  e4e = restyle_torch.make_e4e(**SMALL_G, seed=0)
  restyle_torch.save_checkpoint(e4e, root / 'restyle.pt')
  arc = make_arcface(1)
  torch.save(arc.state_dict(), root / 'model_ir_se50.pth')
  cls = make_classifier(2)
  torch.save(branched_tiny_torch.lightning_checkpoint(cls),
             root / 'BranchedTiny.ckpt')
  mapper = make_mapper(seed=3)
  torch.save(mapper.state_dict(), root / 'smiling.pt')
  rng = np.random.default_rng(4)
  dirs = {f'{i:02d}_{n}': rng.standard_normal((1, 512)).astype(np.float32)
          for i, n in enumerate(['Male', 'Smiling', 'Young'])}
  dirs = {k: torch.from_numpy(v / np.linalg.norm(v)) for k, v in dirs.items()}
  torch.save(dirs, root / 'boundaries.pt')
  out = dict(encoder=root / 'E', arcface=root / 'A', classifier=root / 'C',
             mapper=root / 'M')
  for argv in (['encoder', str(root / 'restyle.pt'), '--out',
                str(out['encoder'])],
               ['arcface', str(root / 'model_ir_se50.pth'), '--out',
                str(out['arcface'])],
               ['classifier', str(root / 'BranchedTiny.ckpt'), '--out',
                str(out['classifier'])],
               ['mapper', str(root / 'smiling.pt'), '--out',
                str(out['mapper']), '--n-latent', str(e4e.n_styles)]):
    assert convert_latent.main(argv) == 0, argv
  out['boundaries'] = root / 'boundaries.pt'
  nets = PhotoNets(root, e4e, arc, cls, mapper,
                   dirs['01_Smiling'].numpy()[0], out)
  _CACHE['small'] = nets
  return nets
