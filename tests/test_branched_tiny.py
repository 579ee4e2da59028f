"""BranchedTiny attribute classifier: parity, input path, converter, API."""

import os

import jax
import numpy as np
import pytest
import torch

from l2m_jax import latent_editing as le
from l2m_jax import parallel
from l2m_jax.convert import branched_tiny as cbt
from l2m_jax.convert import torch_to_flax as t2f
from l2m_jax.models import branched_tiny as bt
from scripts import convert_latent
from tests import photo_checkpoints as pc
from third_party import branched_tiny_torch as tbt


class _HParams(dict):
  """A pickled class outside torch's weights_only allow-list."""


class _Payload:
  """Unpickling this would run a shell command: it must never happen."""

  def __init__(self, flag):
    self.flag = flag

  def __reduce__(self):
    return (os.system, (f'touch {self.flag}',))


@pytest.fixture(scope='module')
def nets(tmp_path_factory):
  p = pc.photo_nets(tmp_path_factory)
  tmp = tmp_path_factory.mktemp('classifier')
  # The shared classifier again, in a Lightning checkpoint that also holds
  # objects weights_only refuses (and one that would run a command).
  ckpt = tbt.lightning_checkpoint(
      p.classifier, hyper_parameters=_HParams(lr=0.1, attributes=40),
      callbacks={'payload': _Payload(tmp / 'EXECUTED')})
  torch.save(ckpt, tmp / 'BranchedTiny.ckpt')
  assert convert_latent.main(['classifier', str(tmp / 'BranchedTiny.ckpt'),
                              '--out', str(tmp / 'C')]) == 0
  model, variables, meta = cbt.load_classifier(str(tmp / 'C'))
  # Batch 1 on one device: the compiled network is shared with the other
  # photo-pipeline tests (the resize compiles apart, per input size).
  scorer = le.AttributeScorer(model, variables, batch_size=1,
                              mesh=parallel.make_mesh(1))
  wrapper = tbt.BranchedTinyAttr(p.classifier)
  faces = pc.generated_faces(4, 1024, seed=8)
  return dict(net=p.classifier, tmp=tmp, variables=variables, meta=meta,
              scorer=scorer, wrapper=wrapper, faces=faces,
              torch_faces=_torch_logits(wrapper, faces))


def _torch_logits(wrapper, x):
  with torch.no_grad():
    return wrapper(pc.nchw(x) * 0.5 + 0.5).numpy()


def test_reference_matches_upstream_counts():
  """BranchedTiny.ckpt: 642 entries, 8,830,254 parameters (2 constants)."""
  net = tbt.BranchedTiny()
  sd = net.state_dict()
  assert len(sd) == 642
  assert sum(p.numel() for p in net.parameters()) == 8830254
  want = {k: tuple(v.shape) for k, v in sd.items()
          if not k.endswith('num_batches_tracked')}
  assert cbt.expected_shapes() == want
  tmpl = bt.variables_template(bt.BranchedTiny())
  n = sum(x.size for x in jax.tree.leaves(
      {k: tmpl[k] for k in ('params', 'constants')}))
  assert n == 8830254
  assert tuple(tbt.ATTRIBUTES) == bt.ATTRIBUTES
  assert set(bt.ATTRIBUTES) == set(le.CELEBA_ATTRIBUTES)


def test_checkpoint_with_objects_loads_without_running_them(nets):
  assert not (nets['tmp'] / 'EXECUTED').exists()
  meta = nets['meta']
  assert meta['source']['restricted_unpickler'] is True
  assert 'hyper_parameters' in meta['ignored']
  assert 'callbacks' in meta['ignored']
  np.testing.assert_array_equal(
      nets['variables']['constants']['celeba_aligned_stds'],
      np.float32([0.2661, 0.2453, 0.2413]))


def test_parity_from_1024(nets):
  """[-1, 1] -> [0, 1], torch-nearest 1024 -> 224, normalise, 40 logits."""
  got = nets['scorer'].logits(nets['faces'])
  want = nets['torch_faces']
  err = np.abs(got - want).max()
  print(f'BranchedTiny generated faces 1024 px: max abs err {err:.3g} '
        f'(|logit| up to {np.abs(want).max():.3g})')
  assert err <= 1e-4
  assert want.std(axis=0).mean() > 0.05  # the logits depend on the face


def test_parity_real_faces(nets, faces_dir):
  x = pc.real_faces(faces_dir, 1024)
  got = nets['scorer'].logits(x)
  err = np.abs(got - _torch_logits(nets['wrapper'], x)).max()
  print(f'BranchedTiny real faces 1024 px: max abs err {err:.3g}')
  assert err <= 1e-4


@pytest.mark.parametrize('size,mode', [(256, 'nearest'), (1024, 'nearest'),
                                       (300, 'area'), (224, 'nearest')])
def test_input_path_matches_torch(nets, size, mode):
  """The resize + CelebA normalisation in front of the network."""
  x = np.random.default_rng(size).uniform(-1, 1, (2, size, size, 3)).astype(
      np.float32)
  net = nets['net']
  with torch.no_grad():
    y = pc.nchw(x) * 0.5 + 0.5
    if size != 224:
      y = torch.nn.functional.interpolate(y, (224, 224), mode=mode)
    y = ((y - net.celeba_aligned_means[None, :, None, None])
         / net.celeba_aligned_stds[None, :, None, None])
  got = np.asarray(jax.jit(bt.classifier_input, static_argnums=2)(
      nets['variables'], x, mode))
  np.testing.assert_allclose(got, pc.nhwc(y), atol=2e-6)


def test_attribute_scores(nets):
  x = nets['faces']
  # sigmoid of the named logits, names in any spelling.
  probs = nets['scorer'].attribute_scores(x, ['Smiling', '39_Young'])
  ref = 1 / (1 + np.exp(-nets['torch_faces'][:, [14, 19]]))
  np.testing.assert_allclose(probs, ref, atol=1e-5)
  assert nets['scorer'].attribute_scores(x).shape == (4, 40)
  with pytest.raises(ValueError, match="unknown attribute 'grin'"):
    nets['scorer'].attribute_scores(x, ['grin'])
  with pytest.raises(ValueError, match='expected RGB'):
    nets['scorer'].logits(x[..., 0])
  with pytest.raises(ValueError, match="resize_mode='bilinear'"):
    le.AttributeScorer(bt.BranchedTiny(), nets['variables'],
                       resize_mode='bilinear')


def test_converter_errors(nets, tmp_path, capsys):
  sd = {f'model.{k}': v for k, v in nets['net'].state_dict().items()}
  del sd['model.layers15.20.2.running_var']
  sd['model.layers14.3.0.weight'] = torch.zeros(128, 3000)
  sd['model.extra_head.weight'] = torch.zeros(2)
  torch.save({'state_dict': sd}, tmp_path / 'bad.ckpt')
  rc = convert_latent.main(['classifier', str(tmp_path / 'bad.ckpt'),
                            '--out', str(tmp_path / 'o')])
  assert rc == 2
  err = capsys.readouterr().err
  for k in ('bad.ckpt', 'layers15.20.2.running_var', 'extra_head.weight',
            'layers14.3.0.weight: expected (128, 3136), found (128, 3000)'):
    assert k in err, k
  # A bare state_dict without the prefix is accepted too.
  v, _ = cbt.convert_state_dict(
      cbt.extract_state_dict(nets['net'].state_dict(), 'bare')[0], 'bare')
  for a, b in zip(jax.tree.leaves(v), jax.tree.leaves(nets['variables'])):
    np.testing.assert_array_equal(a, b)
  # Wrong kind: an ArcFace state_dict (its characteristic keys).
  torch.save({'input_layer.0.weight': torch.zeros(64, 3, 3, 3),
              'output_layer.3.weight': torch.zeros(512, 25088)},
             tmp_path / 'arc.pth')
  with pytest.raises(t2f.ConversionError, match='convert_latent.py arcface'):
    cbt.convert_file(tmp_path / 'arc.pth', log=lambda *_: None)
