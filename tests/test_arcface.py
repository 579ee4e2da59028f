"""ArcFace IR-SE-50: parity with the torch reference, converter, identity API.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from l2m_jax.convert import arcface as carc
from l2m_jax.convert import torch_to_flax as t2f
from l2m_jax.models import arcface
from scripts import convert_latent
from tests import photo_checkpoints as pc
from third_party import branched_tiny_torch
from third_party import irse_torch


@pytest.fixture(scope='module')
def nets(tmp_path_factory):
  p = pc.photo_nets(tmp_path_factory)  # converted by convert_latent.py
  pe, metas = p.photo_editor()  # batch 1, one device, shared compiles
  scorer = pe.identity
  model, variables, meta = scorer.model, scorer.variables, metas['arcface']
  faces = pc.generated_faces(4, 256, seed=1)
  return dict(net=p.arcface, root=p.root, dir=p.dirs['arcface'],
              model=model, variables=variables, meta=meta, scorer=scorer,
              faces=faces, torch_faces=_torch_embed(p.arcface, faces))


def _torch_embed(net, x, dtype=torch.float32):
  with torch.no_grad():
    return net.to(dtype)(irse_torch.identity_crop(pc.nchw(x).to(dtype))
                         ).double().numpy()


def test_reference_matches_upstream_counts():
  """pSp's model_ir_se50.pth: 397 entries, 43,797,696 parameters."""
  with torch.device('meta'):
    net = irse_torch.Backbone(112, 50, 'ir_se')
  assert len(net.state_dict()) == 397
  assert sum(p.numel() for p in net.parameters()) == 43797696
  want = {k: tuple(v.shape) for k, v in net.state_dict().items()
          if not k.endswith('num_batches_tracked')}
  assert carc.expected_shapes(dict(input_size=112, num_layers=50)) == want
  tmpl = arcface.variables_template(arcface.ArcFace())
  assert sum(x.size for x in jax.tree.leaves(tmpl['params'])) == 43797696


@pytest.mark.parametrize('size', [1024, 729, 256])
def test_identity_crop_matches_torch(size):
  """Pool to 256 (exact 4x4 means at 1024), crop 35:223 x 32:220, pool 112."""
  x = np.random.default_rng(size).uniform(-1, 1, (2, size, size, 3)).astype(
      np.float32)
  want = pc.nhwc(irse_torch.identity_crop(pc.nchw(x)))
  got = np.asarray(jax.jit(arcface.identity_crop)(x))
  assert got.shape == (2, 112, 112, 3)
  np.testing.assert_allclose(got, want, atol=2e-6)


def test_parity_generated_faces(nets):
  """Embeddings of rendered faces (<= 1e-5 after normalisation)."""
  got = nets['scorer'].embed(nets['faces'])
  err = np.abs(got - nets['torch_faces']).max()
  print(f'ArcFace generated faces: max abs err {err:.3g}')
  assert err <= 1e-5
  np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)
  # The embedding depends on the face: distinct faces are far from equal.
  cos = got @ got.T
  assert cos[np.triu_indices(4, 1)].max() < 0.99


def test_parity_real_faces(nets, faces_dir):
  """The fixture photos read at 256 px as the photo CLI reads them."""
  x = pc.real_faces(faces_dir, 256)
  assert x.shape[0] == 4
  got = nets['scorer'].embed(x)
  err = np.abs(got - _torch_embed(nets['net'], x)).max()
  print(f'ArcFace real faces: max abs err {err:.3g}')
  assert err <= 1e-5


def test_identity_similarity_api_and_bad_inputs(nets):
  scorer, a = nets['scorer'], nets['faces']
  b = np.concatenate([a[:2], a[3:], a[2:3]])
  sim = scorer.identity_similarity(a, b)
  ea = nets['torch_faces']
  eb = np.concatenate([ea[:2], ea[3:], ea[2:3]])
  np.testing.assert_allclose(sim, np.sum(ea * eb, 1), atol=2e-5)
  np.testing.assert_allclose(sim[:2], 1.0, atol=1e-5)
  assert sim[2:].max() < 0.99
  with pytest.raises(ValueError, match='dtype uint8'):
    scorer.embed(((a + 1) * 127.5).astype(np.uint8))
  with pytest.raises(ValueError, match='expected RGB'):
    scorer.embed(a[..., :1])
  with pytest.raises(ValueError, match='256 x 200'):
    scorer.embed(a[:, :, :200])
  with pytest.raises(ValueError, match='2 images in a but 4 in b'):
    scorer.identity_similarity(a[:2], b)


@pytest.mark.slow
def test_identity_loss_gradient_matches_torch(nets):
  """pSp's id loss on 1024 px images, differentiated w.r.t. the images."""
  x = pc.generated_faces(2, 1024, seed=2)
  y = pc.generated_faces(2, 1024, seed=3)
  xt = pc.nchw(x).requires_grad_(True)
  net = nets['net'].float()
  e = net(irse_torch.identity_crop(xt))
  with torch.no_grad():
    t = net(irse_torch.identity_crop(pc.nchw(y)))
  loss_t = (1 - (e * t).sum(1)).mean()
  loss_t.backward()
  loss, grad = jax.jit(jax.value_and_grad(arcface.identity_loss, argnums=1))(
      nets['variables'], jnp.asarray(x), jnp.asarray(y))
  assert abs(float(loss) - loss_t.item()) <= 1e-5
  want = xt.grad.numpy().transpose(0, 2, 3, 1)
  scale = np.abs(want).max()
  assert scale > 0
  # Round-off in the deep random net's backward pass: 0.2% of the largest
  # gradient (a wrong crop or pooling rule gives O(1) relative errors).
  np.testing.assert_allclose(np.asarray(grad), want, atol=2e-3 * scale)


@pytest.mark.slow
def test_bfloat16_compute_stays_close(nets):
  x = nets['faces']
  bf16 = np.asarray(jax.jit(lambda v, x: arcface.arcface_embed(
      v, x, dtype=jnp.bfloat16))(nets['variables'], x))
  assert bf16.dtype == np.float32
  assert np.sum(nets['torch_faces'] * bf16, axis=1).min() > 0.99


def test_converter_errors(nets, tmp_path):
  sd = dict(nets['net'].state_dict())
  del sd['body.5.res_layer.2.weight']
  sd['body.7.shortcut_layer.0.weight'] = torch.zeros(256, 64, 1, 1)
  sd['output_layer.9.weight'] = torch.zeros(3)
  with pytest.raises(t2f.ConversionError) as e:
    carc.convert_state_dict(sd, 'broken.pth')
  msg = str(e.value)
  for k in ('broken.pth', 'body.5.res_layer.2.weight',
            'body.7.shortcut_layer.0.weight', 'output_layer.9.weight',
            'expected (256, 128, 1, 1)'):
    assert k in msg, k
  # A file without num_batches_tracked (older PyTorch) converts the same.
  sd = {k: v for k, v in nets['net'].state_dict().items()
        if 'num_batches' not in k}
  v, _, _ = carc.convert_state_dict(sd, 'old.pth')
  for a, b in zip(jax.tree.leaves(v), jax.tree.leaves(nets['variables'])):
    np.testing.assert_array_equal(a, b)
  # The wrong kind of checkpoint names what it is.
  torch.save(branched_tiny_torch.lightning_checkpoint(
      branched_tiny_torch.BranchedTiny()), tmp_path / 'cls.ckpt')
  with pytest.raises(t2f.ConversionError, match='convert_latent.py '
                     'classifier'):
    carc.convert_file(tmp_path / 'cls.ckpt', log=lambda *_: None)


def test_cli_exit_codes(nets, tmp_path, capsys):
  sd = dict(nets['net'].state_dict())
  sd['input_layer.0.weight'] = torch.zeros(64, 4, 3, 3)
  torch.save(sd, tmp_path / 'bad.pth')
  rc = convert_latent.main(['arcface', str(tmp_path / 'bad.pth'), '--out',
                            str(tmp_path / 'out')])
  assert rc == 2
  err = capsys.readouterr().err
  assert 'input_layer.0.weight: expected (64, 3, 3, 3)' in err
  assert convert_latent.main(['arcface', str(tmp_path / 'none.pth'), '--out',
                              str(tmp_path / 'out')]) == 2
  # Existing output folder without --overwrite.
  assert convert_latent.main(['arcface', str(nets['root'] /
                                             'model_ir_se50.pth'),
                              '--out', str(nets['dir'])]) == 2
  assert nets['meta']['config'] == dict(input_size=112, num_layers=50)
