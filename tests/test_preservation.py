"""PreservationNet, its loss and its training on generated faces.

References: the same network written with torch.nn (Conv2d, GroupNorm,
LeakyReLU, Linear) from the Flax weights, and properties of the trained
network (counterfactual invariance against a different face; a global colour
shift costs more than the counterfactual without GroupNorm, not with it).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from l2m_jax import face_priors
from l2m_jax.datasets import synthetic_faces as sf
from l2m_jax.models import preservation


def _torch_features(variables, x_nhwc):
  """PreservationNet features computed by torch.nn with the same weights."""
  torch.set_grad_enabled(False)
  p = jax.tree.map(lambda a: torch.from_numpy(np.asarray(a, np.float64)),
                   variables['params'])
  h = torch.from_numpy(np.asarray(x_nhwc, np.float64)).permute(0, 3, 1, 2)
  feats = []
  for i in range(4):
    k = p[f'conv{i}']['kernel']  # HWIO -> OIHW
    conv = torch.nn.Conv2d(k.shape[2], k.shape[3], 3, stride=2, padding=1
                           ).double()
    conv.weight.data = k.permute(3, 2, 0, 1).contiguous()
    conv.bias.data = p[f'conv{i}']['bias']
    h = conv(h)
    if f'norm{i}' in p:
      c = k.shape[3]
      norm = torch.nn.GroupNorm(min(8, c), c, eps=1e-6).double()
      norm.weight.data = p[f'norm{i}']['scale']
      norm.bias.data = p[f'norm{i}']['bias']
      h = norm(h)
    h = torch.nn.functional.leaky_relu(h, 0.2)
    feats.append(h.permute(0, 2, 3, 1))  # NHWC, as Flax flattens
  fc, head = p['fc'], p['head']
  feats.append(feats[-1].reshape(h.shape[0], -1) @ fc['kernel'] + fc['bias'])
  out = (torch.nn.functional.leaky_relu(feats[-1], 0.2) @ head['kernel'] +
         head['bias'])
  torch.set_grad_enabled(True)
  return [f.numpy() for f in feats], out.numpy()


@pytest.fixture(scope='module', params=[False, True], ids=['plain', 'norm'])
def net(request):
  model = preservation.PreservationNet(num_outputs=5, width=8,
                                       norm=request.param)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  # Non-trivial norm affines, so the reference checks them too.
  rng = np.random.default_rng(0)
  variables = jax.device_get(variables)
  for name, leaves in variables['params'].items():
    if name.startswith('norm'):
      for k in leaves:
        leaves[k] = leaves[k] + rng.normal(0, 0.1, leaves[k].shape).astype(
            np.float32)
  return variables


def test_features_and_loss_match_torch(net):
  rng = np.random.default_rng(0)
  x = rng.uniform(-1, 1, (3, 32, 32, 3)).astype(np.float32)
  x_hat = np.clip(x + rng.normal(0, 0.3, x.shape), -1, 1).astype(np.float32)
  got = preservation.features(net, x)
  want, want_out = _torch_features(net, x)
  assert [g.shape for g in got] == [(3, 16, 16, 8), (3, 8, 8, 16),
                                    (3, 4, 4, 32), (3, 2, 2, 32), (3, 64)]
  for g, w in zip(got, want):
    np.testing.assert_allclose(np.asarray(g), w, atol=1e-4, rtol=1e-4)
  np.testing.assert_allclose(np.asarray(model_out(net, x)), want_out,
                             atol=1e-4, rtol=1e-4)
  (fa, oa), (fb, ob) = _torch_features(net, x), _torch_features(net, x_hat)
  layers = {'features': (fa, fb), 'outputs': ([oa], [ob]),
            'features+outputs': (fa + [oa], fb + [ob])}
  assert set(layers) == set(preservation.COMPARE)
  for compare, (la, lb) in layers.items():
    want_loss = np.mean([np.mean(np.abs(a - b)) for a, b in zip(la, lb)])
    got_loss = float(jax.jit(preservation.preservation_loss,
                             static_argnums=3)(net, x, x_hat, compare))
    np.testing.assert_allclose(got_loss, want_loss, rtol=1e-4,
                               err_msg=compare)
    assert float(preservation.preservation_loss(net, x, x, compare)) == 0.0
  # The default compares the feature maps only.
  np.testing.assert_allclose(
      float(preservation.preservation_loss(net, x, x_hat)),
      np.mean([np.mean(np.abs(a - b)) for a, b in zip(fa, fb)]), rtol=1e-4)
  with pytest.raises(ValueError, match="compare='logits'"):
    preservation.preservation_loss(net, x, x_hat, 'logits')


def model_out(variables, x):
  return preservation.model_from_variables(variables).apply(variables, x)


def test_loss_gradient_flows_into_the_edit_only(net):
  x = jnp.asarray(np.random.default_rng(1).uniform(-1, 1, (2, 32, 32, 3)),
                  jnp.float32)
  x_hat = x * 0.5
  g_edit = jax.grad(lambda e: preservation.preservation_loss(net, x, e))(x_hat)
  g_vars = jax.grad(lambda v: preservation.preservation_loss(v, x, x_hat))(net)
  assert float(jnp.abs(g_edit).max()) > 0
  assert all(float(jnp.abs(a).max()) == 0 for a in jax.tree.leaves(g_vars))


def test_model_from_variables(net):
  assert preservation.model_from_variables(net) == (
      preservation.PreservationNet(num_outputs=5, width=8,
                                   norm='norm0' in net['params']))
  with pytest.raises(ValueError, match='PreservationNet'):
    preservation.model_from_variables({'params': {}})


def test_save_load_round_trip_with_and_without_the_norm_field(net, tmp_path):
  """A meta.json without 'norm' (written before the field) means GroupNorm."""
  has_norm = 'norm0' in net['params']
  config = {'width': 8, 'num_outputs': 5, 'image_size': 32}
  if not has_norm:
    config['norm'] = False
  face_priors.save(tmp_path / 'p', net,
                   {'format': preservation.FORMAT, 'config': config})
  loaded, _ = face_priors.load(tmp_path / 'p', preservation.FORMAT)
  x = np.random.default_rng(2).uniform(-1, 1, (2, 32, 32, 3))
  for a, b in zip(preservation.features(loaded, x),
                  preservation.features(net, x)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_training_makes_features_ignore_the_attribute(tmp_path):
  """After training, a face is closer to its counterfactual than to others,
  and (no GroupNorm) a global colour tint costs more than the counterfactual
  (with GroupNorm, measured: 0.18x the counterfactual at this size)."""
  attr = 'grey_hair'
  train = sf.generate_arrays(192, 32, 0, 'train')
  cf = sf.generate_counterfactuals(192, 32, 0, 'train', attr)
  # The counterfactual renderer flips exactly the attribute.
  ident, attrs = sf.sample_face(0, 'train', 3)
  np.testing.assert_array_equal(
      cf[3], sf.render_face(ident, {**attrs, attr: 1 - attrs[attr]}, 32))
  targets = sf.preserved_targets(train, attr)
  assert targets.shape == (192, sf.IDENTITY_DIM + 2)
  np.testing.assert_array_equal(targets[:, -2], train['smiling'])
  variables, meta = face_priors.train_preservation_net(
      train['image'], targets, cf, steps=150, width=8, seed=0)
  val = sf.generate_arrays(32, 32, 0, 'val')
  val_cf = sf.generate_counterfactuals(32, 32, 0, 'val', attr)
  x, x_cf = val['image'] / 127.5 - 1, val_cf / 127.5 - 1
  loss = jax.jit(preservation.preservation_loss)
  to_cf = float(loss(variables, x, x_cf))
  to_other = float(loss(variables, x, np.roll(x, 1, axis=0)))
  # A uniform tint of half the counterfactual's mean pixel change.
  tint = x + np.array([0.06, -0.03, 0.06])
  to_tint = float(loss(variables, x, tint))
  print(f'counterfactual {to_cf:.4f}, tint {to_tint:.4f}, other face '
        f'{to_other:.4f}; pixels: cf {np.abs(x_cf - x).mean():.3f}, tint '
        f'{np.abs(tint - x).mean():.3f}')
  assert to_cf < 0.25 * to_other
  assert to_tint > to_cf
  face_priors.save(tmp_path / 'p', variables, meta)
  loaded, meta2 = face_priors.load(tmp_path / 'p', preservation.FORMAT)
  assert meta2['config']['num_outputs'] == sf.IDENTITY_DIM + 2
  assert meta2['config']['norm'] is False
  np.testing.assert_allclose(float(loss(loaded, x, x_cf)), to_cf, rtol=1e-6)
