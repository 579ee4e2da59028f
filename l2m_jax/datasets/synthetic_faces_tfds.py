"""The tensorflow-datasets builder of the generated faces.

`SyntheticFaces` stores the faces rendered by `synthetic_faces` (image,
identity vector and its named parameters, hair style, every binary attribute
and the example index); nothing is downloaded. Registered as
`synthetic_faces` with the configs `32px`, `64px`, `128px` and `256px`
(`tfds.builder('synthetic_faces/64px')`); `make_config` names a custom size
and seed, `load_split` builds and reads one split into numpy arrays.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from l2m_jax.datasets import synthetic_faces as sf


@dataclasses.dataclass(eq=False)
class SyntheticFacesConfig(tfds.core.BuilderConfig):
  """Size and seed of a generated-faces data set."""
  image_size: int = 64   # output side, pixels
  num_train: int = 2000  # examples in the 'train' split
  num_val: int = 200     # examples in the 'val' split
  seed: int = 0          # data set seed; same seed -> identical data


def make_config(image_size: int = 64, num_train: int = 2000,
                num_val: int = 200, seed: int = 0) -> SyntheticFacesConfig:
  """A config whose name encodes all its values (one cache dir per setting)."""
  sf.check_image_size(image_size)
  for name, v in (('num_train', num_train), ('num_val', num_val)):
    if v < 1:
      raise ValueError(f'{name} must be >= 1, got {v}')
  return SyntheticFacesConfig(
      name=f'{image_size}px_{num_train}x{num_val}_seed{seed}',
      description=f'{image_size}px faces, {num_train} train / {num_val} val, '
                  f'seed {seed}',
      image_size=image_size, num_train=num_train, num_val=num_val, seed=seed)


class SyntheticFaces(tfds.core.GeneratorBasedBuilder):
  """Procedurally rendered faces with identity vectors and binary attributes.

  Nothing is downloaded: `_split_generators` returns the generators directly.
  Custom sizes: `SyntheticFaces(config=make_config(32, 500, 100, seed=3),
  data_dir=...)`.
  """

  VERSION = tfds.core.Version(sf.VERSION)
  RELEASE_NOTES = {'1.0.0': 'First release.'}
  BUILDER_CONFIGS = [
      SyntheticFacesConfig(name='64px', description='64 px, 2000/200',
                           image_size=64),
      SyntheticFacesConfig(name='32px', description='32 px, 2000/200',
                           image_size=32),
      SyntheticFacesConfig(name='128px', description='128 px, 4000/400',
                           image_size=128, num_train=4000, num_val=400),
      SyntheticFacesConfig(name='256px', description='256 px, 4000/400',
                           image_size=256, num_train=4000, num_val=400),
  ]

  def _info(self) -> tfds.core.DatasetInfo:
    s = self.builder_config.image_size
    features = {
        'image': tfds.features.Image(shape=(s, s, 3)),
        'identity': tfds.features.Tensor(shape=(sf.IDENTITY_DIM,),
                                         dtype=np.float32),
        'params': tfds.features.FeaturesDict(
            {n: tfds.features.Scalar(dtype=np.float32)
             for n in sf.IDENTITY_NAMES}),
        'hair_style': tfds.features.ClassLabel(names=list(sf.HAIR_STYLES)),
        'index': tfds.features.Scalar(dtype=np.int64),
    }
    for a in sf.ATTRIBUTES:
      features[a] = tfds.features.ClassLabel(names=list(sf.DOMAINS[a]))
    return tfds.core.DatasetInfo(
        builder=self,
        description=sf.__doc__.split('\n\n')[0],
        features=tfds.features.FeaturesDict(features),
        supervised_keys=('image', 'smiling'),
        metadata=tfds.core.MetadataDict(
            identity_names=list(sf.IDENTITY_NAMES),
            seed=self.builder_config.seed,
            domains={a: list(d) for a, d in sf.DOMAINS.items()}),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    cfg = self.builder_config
    return {'train': self._generate_examples('train', cfg.num_train),
            'val': self._generate_examples('val', cfg.num_val)}

  def _generate_examples(self, split: str, num: int):
    cfg = self.builder_config
    for index in range(num):
      identity, attrs = sf.sample_face(cfg.seed, split, index)
      ex = {
          'image': sf.render_face(identity, attrs, cfg.image_size),
          'identity': identity,
          'params': sf.identity_dict(identity),
          'hair_style': sf.hair_style_index(identity),
          'index': index,
      }
      ex.update(attrs)
      yield index, ex


def load_split(data_dir: str, split: str = 'train', image_size: int = 64,
               num_train: int = 2000, num_val: int = 200, seed: int = 0
               ) -> dict[str, np.ndarray]:
  """Builds (if needed) and reads one split into numpy arrays, by index."""
  builder = SyntheticFaces(config=make_config(image_size, num_train, num_val,
                                              seed), data_dir=data_dir)
  builder.download_and_prepare()
  ds = builder.as_dataset(split=split, shuffle_files=False)
  rows = list(tfds.as_numpy(ds))
  rows.sort(key=lambda r: int(r['index']))
  out = {k: np.stack([r[k] for r in rows])
         for k in ('image', 'identity', 'hair_style', 'index') + sf.ATTRIBUTES}
  return out


