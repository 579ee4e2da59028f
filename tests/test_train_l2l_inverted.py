"""Latent-To-Latent training on inverted photos (data_source='inverted').

A folder of generated 256 px faces is inverted once with a small random
ReStyle-e4e saved in ReStyle's checkpoint format and converted with
`scripts/convert_latent.py` (tests/photo_checkpoints.py); the codes cached in
the workdir must equal the torch reference encoder's, a rerun must reuse
them without inverting again, and a changed folder must be inverted anew.
The trained generator is a random one of the encoder's W+ shape (10 x 512).

Slow suite (about 3 minutes on 2 cores: the 256 px IR-SE-50 encoder and a
64 px, 512-d training step are compiled); the inversion itself is also
covered in the default suite by tests/test_restyle.py and test_edit_photo.py.
"""

import logging
import os

import numpy as np
import pytest
from PIL import Image

from configs import l2l_tiny
from l2m_jax import l2l_data
from l2m_jax import parallel
from l2m_jax import train_l2l
from tests import photo_checkpoints as pc

SEEDS = (21, 22, 23)  # 21 is also inverted by test_restyle (memoised codes)


def _save_face(seed, path):
  x = pc.generated_faces(1, 256, seed=seed)[0]  # uint8 / 127.5 - 1, exactly
  Image.fromarray(np.round((x + 1.0) * 127.5).astype(np.uint8)).save(path)


def _config(photos, encoder, total_steps):
  c = l2l_tiny.get_config()
  c.random_net.size = 64  # W+ of the encoder's generator: 10 rows ...
  c.random_net.style_dim = 512  # ... of 512
  c.random_net.n_mlp = 2
  c.random_net.channel_base = 16
  c.mapper_bounds = (4, 8)
  c.data_source = 'inverted'
  c.photos_dir = str(photos)
  c.encoder_checkpoint = str(encoder)
  c.invert_iters = 1
  c.invert_batch_size = 1
  c.train_fraction = 0.67  # 2 training latents
  c.eval_fraction = 0.34  # 1 held out
  c.batch_size = 4
  c.eval_batch_size = 4
  c.total_steps = total_steps
  c.log_every = c.eval_every = c.save_every = 1
  c.sample_every = 100
  return c


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
  p = pc.photo_nets(tmp_path_factory)
  photos = tmp_path_factory.mktemp('aligned_photos')
  for s in SEEDS:
    _save_face(s, photos / f'face_{s}.png')
  return p, photos, tmp_path_factory.mktemp('l2l_inverted') / 'run'


def _cache(workdir):
  return workdir / l2l_data.INVERTED_CACHE


@pytest.mark.slow
def test_photos_are_inverted_once_and_match_torch(setup, caplog):
  p, photos, workdir = setup
  state = train_l2l.train_and_evaluate(
      _config(photos, p.dirs['encoder'], 1), str(workdir))
  assert int(parallel.unreplicate_to_host(state).step) == 1
  codes = np.load(_cache(workdir))
  assert codes.shape == (len(SEEDS), 10, 512)
  # Sorted file names: face_21, face_22, face_23.
  for i, s in enumerate(SEEDS):
    want = p.torch_codes(s, 1)[0][0]
    err = np.abs(codes[i] - want).max()
    print(f'inverted face {s}: max abs err vs torch ReStyle {err:.3g}')
    assert err <= 1e-4
  assert np.abs(codes[0] - codes[1]).max() > 1e-2  # the codes differ

  # A rerun (resume to step 2) reuses the cache: no second inversion.
  mtime = os.stat(_cache(workdir)).st_mtime_ns
  with caplog.at_level(logging.INFO):
    state = train_l2l.train_and_evaluate(
        _config(photos, p.dirs['encoder'], 2), str(workdir))
  assert int(parallel.unreplicate_to_host(state).step) == 2
  assert 'Reusing the inverted latents' in caplog.text
  assert os.stat(_cache(workdir)).st_mtime_ns == mtime


@pytest.mark.slow
def test_a_changed_folder_is_inverted_again(setup):
  p, photos, workdir = setup
  if not _cache(workdir).is_file():
    pytest.skip('needs the first test\'s run')
  before = np.load(_cache(workdir))
  extra = photos / 'face_24.png'
  _save_face(24, extra)
  try:
    train_l2l.train_and_evaluate(
        _config(photos, p.dirs['encoder'], 3), str(workdir))
    codes = np.load(_cache(workdir))
  finally:
    extra.unlink()
  assert codes.shape == (4, 10, 512)
  np.testing.assert_allclose(codes[:3], before, atol=1e-6)
  assert np.abs(codes[3] - p.torch_codes(24, 1)[0][0]).max() <= 1e-4
