"""Tests of l2m_jax/evaluation/editing_metrics.py on known cases."""

import jax.numpy as jnp
import numpy as np
import pytest

from l2m_jax.datasets import synthetic_faces as sf
from l2m_jax.evaluation import editing_metrics as em


def _mean_brightness_classifier(params, x):
  # Logit > 0 when the image is brighter than params['t']: a closed-form
  # classifier, so the expected accuracies are known exactly.
  return x.mean(axis=(1, 2, 3)) - params['t']


@pytest.fixture(scope='module')
def toy():
  rng = np.random.default_rng(0)
  x = rng.uniform(-1, 1, (10, 16, 16, 3)).astype(np.float32)
  x[:5] = np.abs(x[:5])       # bright: label 1
  x[5:] = -np.abs(x[5:])      # dark: label 0
  labels = np.array([1] * 5 + [0] * 5)
  return x, labels


def test_accuracy_perfect_and_flipped(toy):
  x, labels = toy
  params = {'t': jnp.float32(0.0)}
  assert em.attribute_accuracy(_mean_brightness_classifier, params, x,
                               labels) == 1.0
  assert em.attribute_accuracy(_mean_brightness_classifier, params, x,
                               1 - labels) == 0.0
  # Two-column logits use the argmax.
  two = lambda p, v: jnp.stack([-_mean_brightness_classifier(p, v),
                                _mean_brightness_classifier(p, v)], axis=1)
  assert em.attribute_accuracy(two, params, x, labels, batch_size=3) == 1.0


def test_identical_images_give_zero_change(toy):
  x, _ = toy
  w = {'w': jnp.asarray(np.random.default_rng(1).normal(
      size=(16 * 16 * 3, 5)).astype(np.float32))}
  regress = lambda p, v: v.reshape(v.shape[0], -1) @ p['w']
  err = em.identity_error(regress, w, x, x.copy(), baseline=x.copy())
  assert err['identity_error'] == 0.0
  assert err['identity_error_baseline'] == 0.0
  masks = np.zeros(x.shape[:3], np.float32)
  assert em.pixel_change_outside(x, x.copy(), masks) == 0.0


def test_pixel_change_outside_against_closed_form():
  a = np.zeros((2, 8, 8, 3), np.float32)
  b = a.copy()
  b[:, :4] += 0.5  # change only the top half
  masks = np.zeros((2, 8, 8), np.float32)
  masks[:, :4] = 1.0
  assert em.pixel_change_outside(a, b, masks) == 0.0   # all inside
  assert em.pixel_change_outside(a, b, 1 - masks) == pytest.approx(0.5)
  # uint8 inputs are read in [-1, 1] units: 255 vs 0 is a change of 2.
  u0 = np.zeros((1, 4, 4, 3), np.uint8)
  assert em.pixel_change_outside(u0, u0 + 255, np.zeros((1, 4, 4))) == 2.0
  with pytest.raises(ValueError, match='shape'):
    em.pixel_change_outside(a, b, masks[:, :4])


def test_identity_error_against_numpy():
  rng = np.random.default_rng(2)
  a = rng.normal(size=(6, 4, 4, 3)).astype(np.float32)
  b = rng.normal(size=(6, 4, 4, 3)).astype(np.float32)
  w = rng.normal(size=(48, 3)).astype(np.float32)
  f = lambda p, v: v.reshape(v.shape[0], -1) @ p
  want = np.linalg.norm(a.reshape(6, -1) @ w - b.reshape(6, -1) @ w,
                        axis=1).mean()
  got = em.identity_error(f, jnp.asarray(w), a, b)['identity_error']
  assert got == pytest.approx(want, rel=1e-4)
  # Per output: the mean absolute difference of each regressed value.
  per = em.identity_factor_changes(f, jnp.asarray(w), a, b)
  np.testing.assert_allclose(
      per, np.abs(a.reshape(6, -1) @ w - b.reshape(6, -1) @ w).mean(axis=0),
      rtol=1e-4)
  with pytest.raises(ValueError, match='5 edited'):
    em.identity_factor_changes(f, jnp.asarray(w), a, b[:5])


def test_trained_classifier_and_regressor_roundtrip(tmp_path):
  # A small run on generated 32-px faces: the eyeglasses classifier must be
  # near-perfect on held-out faces, the regressor better than the mean.
  tr = sf.generate_arrays(300, 32, seed=0)
  va = sf.generate_arrays(80, 32, seed=0, split="val")
  apply_fn, params, meta = em.train_model(
      'classifier', tr['image'], tr['eyeglasses'], val_images=va['image'],
      val_targets=va['eyeglasses'], steps=60, batch_size=32, log_every=0)
  assert meta['val_accuracy'][0] >= 0.9
  acc = em.attribute_accuracy(apply_fn, params, va['image'], va['eyeglasses'])
  assert acc == pytest.approx(meta['val_accuracy'][0])
  assert em.attribute_accuracy(apply_fn, params, va['image'],
                               1 - va['eyeglasses']) == pytest.approx(1 - acc)
  em.save_model(tmp_path / 'cls', params, meta)
  f2, p2, m2 = em.load_model(tmp_path / 'cls', em.CLASSIFIER_FORMAT)
  np.testing.assert_allclose(em.predict(f2, p2, va['image'][:8]),
                             em.predict(apply_fn, params, va['image'][:8]),
                             atol=1e-5)
  assert m2['val_accuracy'] == meta['val_accuracy']
  with pytest.raises(ValueError, match='expected'):
    em.load_model(tmp_path / 'cls', em.REGRESSOR_FORMAT)

  rf, rp, rmeta = em.train_model(
      'regressor', tr['image'], tr['identity'], val_images=va['image'],
      val_targets=va['identity'], steps=60, batch_size=32, log_every=0)
  # Predicting the mean (0.5) gives RMSE sqrt(1/12) = 0.289 on U[0, 1].
  assert rmeta['val_rmse'] < np.sqrt(1 / 12)


def test_evaluate_edits_structure(toy):
  x, labels = toy
  cls = (_mean_brightness_classifier, {'t': jnp.float32(0.0)})
  flipped = -x  # brightness flipped: every edit reaches its target label
  res = em.evaluate_edits(sources=x, source_labels=labels,
                          edits={0.0: x.copy(), 1.0: flipped},
                          classifier=cls,
                          identity_model=(lambda p, v: v.mean((1, 2)), None),
                          region_masks=np.zeros(x.shape[:3]))
  assert res['source_accuracy'] == 1.0
  assert res['degree=0']['attribute_accuracy'] == 1.0
  assert res['degree=0']['identity_error'] == 0.0
  assert res['degree=0']['pixel_change_outside'] == 0.0
  assert res['degree=1']['attribute_accuracy'] == 1.0
  assert res['degree=1']['identity_error_baseline'] == 0.0
  assert res['degree=1']['pixel_change_outside'] == pytest.approx(
      np.abs(2 * x).mean(), rel=1e-5)
  assert res['fid']['status'] == 'skipped'
