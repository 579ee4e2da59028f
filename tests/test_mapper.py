"""Parity of the Flax Latent-To-Latent mapper with the torch reference."""

import jax
import numpy as np
import pytest
import torch

from l2m_jax.convert import mapper as cm
from third_party import l2l_mapper_torch as tm


def _legacy_pair(seed=0):
  torch.manual_seed(seed)
  ref = tm.LevelsMapper().eval()
  with torch.no_grad():  # non-zero biases so they are checked too
    for n, p in ref.named_parameters():
      if n.endswith('bias'):
        p.normal_(0, 30)
  cfg = cm.make_config('legacy')
  variables, _ = cm.convert_state_dict(ref.state_dict(), 'ref', cfg)
  return ref, cm.build_model(cfg), variables


def test_reference_layout_matches_upstream():
  sd = tm.LevelsMapper().state_dict()
  assert len(sd) == 18
  assert sum(v.numel() for v in sd.values()) == 2363904
  assert set(sd) == set(cm.expected_shapes(512, 3, 0))


def test_legacy_mapper_and_edit_parity():
  ref, model, variables = _legacy_pair()
  w = torch.randn(3, 18, 512)
  d = torch.randn(1, 512)
  d = d / d.norm()
  with torch.no_grad():
    m_ref = ref(w).numpy()
    # The unofficial code passes (B, 1, 18, 512): same function.
    m_ref4 = ref(w[:, None]).numpy()[:, 0]
    e_ref = tm.legacy_edit(ref, w, d, factor=2.0, alpha=0.3).numpy()
  m = np.asarray(jax.jit(model.apply)(variables, w.numpy()))
  e = np.asarray(jax.jit(lambda v, w, d: model.apply(
      v, w, direction=d, strength=2.0, method=model.edit))(
          variables, w.numpy(), d.numpy()))
  err_m, err_e = np.abs(m - m_ref).max(), np.abs(e - e_ref).max()
  print(f'mapper max abs err {err_m:.3g}, legacy edit {err_e:.3g}')
  assert err_m <= 1e-5 and err_e <= 1e-5
  np.testing.assert_allclose(m_ref4, m_ref, atol=1e-6)
  # The blend is exactly 0.7 w + 0.3 M(w + 2 d).
  np.testing.assert_allclose(e, 0.7 * w.numpy() + 0.3 * np.asarray(
      model.apply(variables, w.numpy() + 2.0 * d.numpy()[None])), atol=1e-6)


def test_paper_mode_conditioning_parity():
  torch.manual_seed(1)
  ref = tm.LevelsMapper(cond_dim=40).eval()
  with torch.no_grad():
    for g in (ref.course_mapping, ref.medium_mapping, ref.fine_mapping):
      g.cond.weight.normal_(0, 100)
  cfg = cm.make_config('paper')
  variables, _ = cm.convert_state_dict(ref.state_dict(), 'ref', cfg)
  model = cm.build_model(cfg)
  w = torch.randn(2, 18, 512)
  delta = torch.rand(2, 40) * 2 - 1
  with torch.no_grad():
    want = (w + ref(w, delta)).numpy()
  got = np.asarray(jax.jit(lambda v, w, a: model.apply(
      v, w, a, method=model.edit))(variables, w.numpy(), delta.numpy()))
  err = np.abs(got - want).max()
  print(f'paper-mode mapper max abs err {err:.3g}')
  assert err <= 1e-5
  # The conditioning changes the output.
  with torch.no_grad():
    plain = (w + ref(w, torch.zeros_like(delta))).numpy()
  assert np.abs(plain - want).max() > 1e-3


def test_legacy_weights_in_paper_mapper_reproduce_legacy():
  """Split projection: a legacy file in a conditioned mapper, delta = 0 and
  the legacy pre-shift + blend, computes the legacy function
  (docs/method.md#l2l-mapper)."""
  ref, legacy, lv = _legacy_pair(seed=2)
  cfg = cm.make_config('paper', combine='blend')
  pv, _ = cm.convert_state_dict(ref.state_dict(), 'ref', cfg)
  paper = cm.build_model(cfg)
  assert np.all(pv['params']['fine_mapping']['cond']['weight'] == 0)
  w = np.random.default_rng(0).standard_normal((2, 18, 512)).astype(np.float32)
  d = np.random.default_rng(1).standard_normal(512).astype(np.float32)
  a = legacy.apply(lv, w, direction=d, strength=2.0, method=legacy.edit)
  b = paper.apply(pv, w, np.zeros((2, 40), np.float32), d, 2.0,
                  method=paper.edit)
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


def test_paper_preset_starts_at_identity():
  model = cm.build_model(cm.make_config('paper', n_latent=10, style_dim=16,
                                        cond_dim=5))
  w = np.random.default_rng(0).standard_normal((2, 10, 16)).astype(np.float32)
  delta = np.ones((2, 5), np.float32)
  v = model.init(jax.random.key(0), w, delta)
  np.testing.assert_array_equal(
      np.asarray(model.apply(v, w, delta, method=model.edit)), w)


def test_bad_inputs_are_reported():
  model = cm.build_model(cm.make_config('legacy', n_latent=10, style_dim=16))
  w = np.zeros((1, 10, 16), np.float32)
  v = model.init(jax.random.key(0), w)
  with pytest.raises(ValueError, match=r'expected \[B, 10, 16\]'):
    model.apply(v, np.zeros((1, 9, 16), np.float32))
  with pytest.raises(ValueError, match='cond_dim=0'):
    model.apply(v, w, np.zeros((1, 3), np.float32))
