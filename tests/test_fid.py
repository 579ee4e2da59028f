"""Fréchet distance, streamed statistics, stats files, preprocessing, fid CLI."""

import json
import pathlib
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from PIL import Image
from scipy import linalg

from l2m_jax import image_io
from l2m_jax.evaluation import fid as fid_lib
from l2m_jax.evaluation import frechet
from l2m_jax.evaluation import inception_features as features
from third_party.torchvision_compat import import_torchvision

import_torchvision()
from pytorch_fid import fid_score as pf_fid  # pylint: disable=g-import-not-at-top,wrong-import-position


def _random_stats(rng, d, n):
  x = rng.standard_normal((n, d)) @ rng.standard_normal((d, d)) * 0.3
  x = np.maximum(x + rng.uniform(0, 1, d), 0)  # ReLU-like features
  return x.mean(0), np.cov(x, rowvar=False)


def _scipy_fid(mu1, s1, mu2, s2):
  """The L2M / StarGAN v2 route: scipy sqrtm, real part."""
  covmean = linalg.sqrtm(s1 @ s2)
  if isinstance(covmean, tuple):
    covmean = covmean[0]
  d = mu1 - mu2
  return float(np.real(d @ d + np.trace(s1 + s2 - 2 * covmean)))


# ---------------------------------------------------------------------------
# Fréchet distance.


@pytest.mark.parametrize('n1,n2', [(400, 300), (400, 40)])
def test_frechet_matches_scipy_sqrtm(n1, n2):
  rng = np.random.default_rng(n2)
  d = 64
  mu1, s1 = _random_stats(rng, d, n1)
  mu2, s2 = _random_stats(rng, d, n2)  # n2 = 40 < d: rank-deficient
  want = _scipy_fid(mu1, s1, mu2, s2)
  want_pf = pf_fid.calculate_frechet_distance(mu1, s1, mu2, s2)
  for method in ('eigvals', 'reference'):
    got = frechet.frechet_distance(mu1, s1, mu2, s2, method=method)
    assert abs(got - want) <= 1e-6 * abs(want), (method, got, want)
    assert abs(got - want_pf) <= 1e-6 * abs(want_pf), (method, got, want_pf)
  got = frechet.frechet_distance(mu1, s1, mu2, s2, method='eigh')
  assert abs(got - want) <= 1e-5 * max(1.0, abs(want))
  assert want > 1.0


@pytest.mark.parametrize('method', frechet.METHODS)
def test_frechet_closed_forms(method):
  rng = np.random.default_rng(0)
  d = 32
  mu, sigma = _random_stats(rng, d, 200)
  assert abs(frechet.frechet_distance(mu, sigma, mu, sigma, method)) < 1e-8
  # pytorch-fid's test: equal covariances leave |mu1 - mu2|^2.
  eye = np.eye(d)
  assert frechet.frechet_distance(np.zeros(d), eye, np.ones(d), eye,
                                  method) == pytest.approx(d, rel=1e-12)
  # Commuting covariances: Q diag(a) Q^T, Q diag(b) Q^T.
  a, b = rng.uniform(0.1, 2, d), rng.uniform(0.1, 2, d)
  mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
  want = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
  got = frechet.frechet_distance(mu1, np.diag(a), mu2, np.diag(b), method)
  assert got == pytest.approx(want, rel=1e-9)
  q, _ = np.linalg.qr(rng.standard_normal((d, d)))
  got = frechet.frechet_distance(mu1, q @ np.diag(a) @ q.T, mu2,
                                 q @ np.diag(b) @ q.T, method)
  assert got == pytest.approx(want, rel=1e-8)
  # Scaled covariance: (1 - c)^2 tr S.
  c = 1.7
  got = frechet.frechet_distance(mu, sigma, mu, c * c * sigma, method)
  assert got == pytest.approx((1 - c) ** 2 * np.trace(sigma), rel=1e-6)
  # Symmetry.
  mu2, s2 = _random_stats(rng, d, 150)
  assert frechet.frechet_distance(mu, sigma, mu2, s2, method) == pytest.approx(
      frechet.frechet_distance(mu2, s2, mu, sigma, method), rel=1e-9)


def test_frechet_bad_inputs():
  with pytest.raises(ValueError, match='feature dimensions differ: 3 vs 4'):
    frechet.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
  with pytest.raises(ValueError, match='sigma must be'):
    frechet.frechet_distance(np.zeros(3), np.eye(4), np.zeros(3), np.eye(3))
  with pytest.raises(ValueError, match='method='):
    frechet.frechet_distance(np.zeros(3), np.eye(3), np.zeros(3), np.eye(3),
                             method='bogus')


# ---------------------------------------------------------------------------
# Streaming statistics.


def test_streaming_stats_match_numpy_and_ignore_batching():
  rng = np.random.default_rng(0)
  x = (rng.standard_normal((257, 16)) * 3 + 100).astype(np.float32)
  want_mu, want_cov = x.astype(np.float64).mean(0), np.cov(x.astype(np.float64),
                                                           rowvar=False)
  results = []
  for sizes in ([257], [1, 256], [50] * 5 + [7], [100, 100, 57]):
    s = frechet.StreamingStats()
    start = 0
    for k in sizes:
      s.update(x[start:start + k])
      start += k
    results.append(s.result())
  order = rng.permutation(257)
  s = frechet.StreamingStats()
  s.update(x[order[:100]])
  s.update(x[order[100:]])
  results.append(s.result())
  a, b = frechet.StreamingStats(), frechet.StreamingStats()
  a.update(x[:30])
  b.update(x[30:])
  a.merge(b)
  results.append(a.result())
  for mu, cov in results:
    np.testing.assert_allclose(mu, want_mu, rtol=1e-12)
    np.testing.assert_allclose(cov, want_cov, rtol=1e-9, atol=1e-12)
  with pytest.raises(ValueError, match='feature dimension 3'):
    a.update(np.zeros((2, 3)))
  one = frechet.StreamingStats()
  one.update(x[:1])
  with pytest.raises(ValueError, match='at least 2 images'):
    one.cov()


# ---------------------------------------------------------------------------
# Stats files.


def test_stats_file_round_trip_with_pytorch_fid(tmp_path):
  rng = np.random.default_rng(0)
  mu1, s1 = _random_stats(rng, 24, 100)
  mu2, s2 = _random_stats(rng, 24, 80)
  ours = frechet.save_stats(tmp_path / 'a.npz', mu1, s1)
  theirs = tmp_path / 'b.npz'
  np.savez_compressed(theirs, mu=mu2, sigma=s2)  # pytorch-fid --save-stats
  m, s = pf_fid.compute_statistics_of_path(str(ours), None, 1, 24, 'cpu')
  np.testing.assert_array_equal(m, mu1)
  np.testing.assert_array_equal(s, s1)
  m, s = frechet.load_stats(theirs)
  np.testing.assert_array_equal(m, mu2)
  np.testing.assert_array_equal(s, s2)
  got = frechet.frechet_distance(*frechet.load_stats(ours), m, s)
  assert got == pytest.approx(pf_fid.calculate_frechet_distance(mu1, s1, mu2,
                                                                s2), rel=1e-6)


def test_stats_file_errors(tmp_path):
  bad = tmp_path / 'nokeys.npz'
  np.savez(bad, mean=np.zeros(3))
  with pytest.raises(ValueError, match='missing key.*mu, sigma'):
    frechet.load_stats(bad)
  bad = tmp_path / 'shape.npz'
  np.savez(bad, mu=np.zeros(3), sigma=np.zeros((3, 2)))
  with pytest.raises(ValueError, match=r'sigma must be \[3, 3\]'):
    frechet.load_stats(bad)
  bad = tmp_path / 'garbage.npz'
  bad.write_bytes(b'not a zip')
  with pytest.raises(ValueError, match='garbage.npz'):
    frechet.load_stats(bad)
  with pytest.raises(FileNotFoundError):
    frechet.load_stats(tmp_path / 'absent.npz')
  ok = tmp_path / 'ok.npz'
  np.savez(ok, mu=np.zeros(3), sigma=np.eye(3))
  with pytest.raises(ValueError, match='dimension 3, expected 2048'):
    frechet.load_stats(ok, dim=2048)


# ---------------------------------------------------------------------------
# Preprocessing.


def _write_images(folder: pathlib.Path, rng):
  """PNG/JPG, RGB/RGBA/grayscale/palette, up- and down-sampled sizes."""
  folder.mkdir(parents=True, exist_ok=True)
  specs = [('a.png', 'RGB', (256, 256)), ('b.jpg', 'RGB', (400, 360)),
           ('c.png', 'RGBA', (300, 200)), ('d.png', 'L', (120, 120)),
           ('e.jpeg', 'RGB', (299, 299)), ('f.png', 'P', (64, 80))]
  for name, mode, (w, h) in specs:
    arr = rng.integers(0, 256, (h, w, 4), dtype=np.uint8)
    img = Image.fromarray(arr, 'RGBA')
    img = img.convert(mode) if mode != 'RGBA' else img
    img.save(folder / name)
  return [folder / s[0] for s in specs]


def test_stargan_v2_preprocessing_matches_torchvision(tmp_path):
  tv = import_torchvision()
  t = tv.transforms
  transform = t.Compose([t.Resize([299, 299]), t.Resize([299, 299]),
                         t.ToTensor(),
                         t.Normalize(mean=[0.485, 0.456, 0.406],
                                     std=[0.229, 0.224, 0.225])])
  files = _write_images(tmp_path, np.random.default_rng(0))
  norm = jax.jit(lambda u: features.device_normalize(u, 'stargan_v2'))
  for f in files:
    want = transform(Image.open(f).convert('RGB')).numpy().transpose(1, 2, 0)
    got = np.asarray(norm(features.load_image(f, 'stargan_v2')[None]))[0]
    np.testing.assert_allclose(got, want, atol=1e-6, err_msg=str(f))


def test_standard_preprocessing_matches_pytorch_fid_resize(tmp_path):
  tv = import_torchvision()
  files = _write_images(tmp_path, np.random.default_rng(1))
  for f in files:
    x = tv.transforms.ToTensor()(Image.open(f).convert('RGB'))[None]
    x = torch.nn.functional.interpolate(x, size=(299, 299), mode='bilinear',
                                        align_corners=False)
    want = (2 * x - 1)[0].numpy().transpose(1, 2, 0)
    u8 = features.load_image(f, 'standard')
    got = np.asarray(features.device_normalize(u8[None], 'standard'))[0]
    np.testing.assert_allclose(got, want, atol=2e-6, err_msg=str(f))


def test_in_memory_path_equals_png_path(tmp_path):
  rng = np.random.default_rng(2)
  x = np.clip(rng.standard_normal((3, 256, 256, 3)) * 0.7, -1.2, 1.2)
  x = x.astype(np.float32)
  x[0, 0, :4, 0] = [-1.0, 1.0, 0.5 / 255 * 2 - 1, 0.0]  # rounding edges
  for i, im in enumerate(x):
    image_io.save_image(tmp_path / f'{i}.png', im)
  for proto in ('stargan_v2', 'standard'):
    for i, im in enumerate(features.quantize(x)):
      np.testing.assert_array_equal(
          features.host_preprocess(im, proto),
          features.load_image(tmp_path / f'{i}.png', proto))


def test_file_discovery_rules(tmp_path):
  (tmp_path / 'sub').mkdir()
  for name in ('a.png', 'b.JPG', 'c.PNG', 'sub/d.jpg', 'e.txt', 'f.webp'):
    Image.new('RGB', (4, 4)).save(tmp_path / name,
                                  format='PNG' if 'png' in name.lower()
                                  or name.endswith('.txt') else None)
  names = lambda fs: sorted(str(p.relative_to(tmp_path)) for p in fs)  # pylint: disable=unnecessary-lambda-assignment
  assert names(features.list_images(tmp_path, 'stargan_v2')) == [
      'a.png', 'b.JPG', 'sub/d.jpg']
  assert names(features.list_images(tmp_path, 'pytorch_fid')) == [
      'a.png', 'f.webp']
  with pytest.raises(ValueError, match='protocol='):
    features.get_protocol('tf')


# ---------------------------------------------------------------------------
# Folder statistics against pytorch-fid's pipeline with a stand-in network.


class _TorchStandIn(torch.nn.Module):
  """Resize + 2x - 1 (as pytorch-fid's InceptionV3) + one conv + ReLU."""

  def __init__(self, conv):
    super().__init__()
    self.conv = conv

  def forward(self, x):
    x = torch.nn.functional.interpolate(x, size=(299, 299), mode='bilinear',
                                        align_corners=False)
    return [torch.relu(self.conv(2 * x - 1))]


def _stand_in(seed=0):
  torch.manual_seed(seed)
  conv = torch.nn.Conv2d(3, 8, 5, stride=4, bias=True)
  kernel = jnp.asarray(conv.weight.detach().numpy().transpose(2, 3, 1, 0))
  bias = jnp.asarray(conv.bias.detach().numpy())

  def features_fn(variables, x):
    del variables
    y = jax.lax.conv_general_dilated(
        x, kernel, (4, 4), 'VALID', dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
        precision=jax.lax.Precision.HIGHEST)
    return jnp.mean(jax.nn.relu(y + bias), axis=(1, 2))
  return _TorchStandIn(conv).eval(), features_fn


def test_folder_statistics_match_pytorch_fid_pipeline(tmp_path):
  rng = np.random.default_rng(3)
  folder = tmp_path / 'imgs'
  folder.mkdir()
  for i in range(7):  # pytorch-fid batches need equal sizes
    arr = rng.integers(0, 256, (96, 80, 3), dtype=np.uint8)
    Image.fromarray(arr).save(folder / f'{i}.{"png" if i % 2 else "jpg"}')
  Image.fromarray(rng.integers(0, 256, (96, 80), dtype=np.uint8)).save(
      folder / 'gray.png')
  model, features_fn = _stand_in()
  files = sorted(p for ext in pf_fid.IMAGE_EXTENSIONS
                 for p in folder.glob(f'*.{ext}'))
  with torch.no_grad():
    want_mu, want_sigma = pf_fid.calculate_activation_statistics(
        files, model, batch_size=3, dims=8, device='cpu', num_workers=0)
  ext = features.FeatureExtractor('standard', features_fn=features_fn,
                                 batch_size=3)  # padded to 4 devices
  stats = fid_lib.folder_statistics(folder, ext, progress=False)
  assert stats.n == 8
  mu, sigma = stats.result()
  np.testing.assert_allclose(mu, want_mu, atol=1e-5)
  np.testing.assert_allclose(sigma, want_sigma, atol=1e-5)


def test_pytorch_fid_statistics_example(tmp_path):
  """pytorch-fid's test: images of 0, 127, 255 and a pixel-mean model."""
  for i, v in enumerate((0, 0.5 * 255, 255)):
    Image.fromarray(np.full((4, 4, 3), v, np.uint8)).save(tmp_path / f'{i}.png')

  def pixel_mean(variables, x):
    del variables
    return jnp.mean((x + 1) / 2, axis=(1, 2))
  ext = features.FeatureExtractor('standard', features_fn=pixel_mean,
                                 batch_size=2)
  mu, sigma = fid_lib.folder_statistics(tmp_path, ext,
                                        progress=False).result()
  np.testing.assert_allclose(mu, 0.5, atol=1e-3)
  np.testing.assert_allclose(sigma, 0.25, atol=1e-3)


def test_folder_errors(tmp_path):
  ext = features.FeatureExtractor(
      'stargan_v2', features_fn=lambda v, x: jnp.mean(x, axis=(1, 2)),
      batch_size=4)
  empty = tmp_path / 'empty'
  empty.mkdir()
  with pytest.raises(ValueError, match='no image files'):
    fid_lib.folder_statistics(empty, ext, progress=False)
  bad = tmp_path / 'bad'
  bad.mkdir()
  Image.new('RGB', (8, 8)).save(bad / 'ok.png')
  (bad / 'broken.png').write_bytes(b'\x89PNG\r\n\x1a\n garbage')
  with pytest.raises(image_io.ImageReadError, match='broken.png'):
    fid_lib.folder_statistics(bad, ext, progress=False)
  with pytest.raises(FileNotFoundError):
    fid_lib.folder_statistics(tmp_path / 'absent', ext, progress=False)
  with pytest.raises(ValueError, match='variables'):
    features.FeatureExtractor('standard')


# ---------------------------------------------------------------------------
# CLI (statistics files only; the real-Inception run is in test_l2m_eval.py).


def _cli(argv):
  import importlib.util  # pylint: disable=g-import-not-at-top
  path = pathlib.Path(__file__).resolve().parents[1] / 'scripts' / 'fid.py'
  spec = importlib.util.spec_from_file_location('fid_cli', path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.main(argv)


def test_cli_on_stats_files(tmp_path, capsys):
  rng = np.random.default_rng(4)
  mu1, s1 = _random_stats(rng, 16, 60)
  mu2, s2 = _random_stats(rng, 16, 50)
  np.savez_compressed(tmp_path / 'a.npz', mu=mu1, sigma=s1)
  np.savez_compressed(tmp_path / 'b.npz', mu=mu2, sigma=s2)
  out = tmp_path / 'r.json'
  assert _cli([str(tmp_path / 'a.npz'), str(tmp_path / 'b.npz'), '--json',
               str(out)]) == 0
  printed = float(capsys.readouterr().out.split('FID:')[1])
  want = pf_fid.calculate_frechet_distance(mu1, s1, mu2, s2)
  assert printed == pytest.approx(want, rel=1e-5)
  assert json.loads(out.read_text())['fid'] == pytest.approx(want, rel=1e-6)
  # Clear errors, exit status 2.
  np.savez(tmp_path / 'bad.npz', mu=mu1)
  assert _cli([str(tmp_path / 'a.npz'), str(tmp_path / 'bad.npz')]) == 2
  assert 'missing key(s) sigma' in capsys.readouterr().err
  np.savez(tmp_path / 'd8.npz', mu=mu1[:8], sigma=s1[:8, :8])
  assert _cli([str(tmp_path / 'a.npz'), str(tmp_path / 'd8.npz')]) == 2
  assert 'feature dimensions differ' in capsys.readouterr().err
  assert _cli([str(tmp_path / 'a.npz'), str(tmp_path / 'nope')]) == 2
  assert 'no such folder' in capsys.readouterr().err
  (tmp_path / 'imgs').mkdir()
  Image.new('RGB', (8, 8)).save(tmp_path / 'imgs' / 'x.png')
  assert _cli([str(tmp_path / 'imgs'), str(tmp_path / 'a.npz')]) == 2
  assert 'never downloaded' in capsys.readouterr().err


# ---------------------------------------------------------------------------
# Input checks: covariances, singular statistics, too few images.


def test_sigma_must_be_a_symmetric_psd_matrix(tmp_path):
  rng = np.random.default_rng(7)
  mu, sigma = _random_stats(rng, 16, 60)
  # A valid covariance, also singular (fewer samples than dims) and with
  # float round-off, passes.
  frechet.check_statistics(mu, sigma)
  low_rank = np.cov(rng.standard_normal((5, 16)), rowvar=False)
  assert np.linalg.matrix_rank(low_rank) == 4
  frechet.check_statistics(mu, low_rank - 1e-14 * np.eye(16))
  # Not symmetric.
  skew = sigma.copy()
  skew[0, 1] += 0.01 * np.abs(sigma).max()
  with pytest.raises(ValueError, match='not symmetric'):
    frechet.frechet_distance(mu, skew, mu, sigma)
  # Symmetric but indefinite (one negative eigenvalue): identical statistics
  # gave a negative FID before the check.
  w, v = np.linalg.eigh(sigma)
  w[0] = -0.05 * w[-1]
  indefinite = (v * w) @ v.T
  assert np.linalg.eigvalsh(indefinite)[0] < 0
  with pytest.raises(ValueError, match='not positive semi-definite'):
    frechet.frechet_distance(mu, indefinite, mu, indefinite)
  with pytest.raises(ValueError, match='not positive semi-definite'):
    frechet.frechet_distance(mu, -np.eye(16), mu, -np.eye(16))
  # Stats files are checked the same way, naming the file.
  np.savez(tmp_path / 'neg.npz', mu=mu, sigma=indefinite)
  with pytest.raises(ValueError, match='neg.npz: sigma is not positive'):
    frechet.load_stats(tmp_path / 'neg.npz')


def test_fewer_images_than_dimensions_warns():
  rng = np.random.default_rng(8)
  stats = frechet.StreamingStats('my_folder')
  stats.update(rng.standard_normal((5, 2048)))
  with pytest.warns(frechet.SingularCovarianceWarning,
                    match='my_folder: 5 images for 2048 feature dimensions'):
    stats.cov()
  enough = frechet.StreamingStats('x')
  enough.update(rng.standard_normal((40, 16)))
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    enough.cov()


def test_one_image_is_an_error_naming_the_folder(tmp_path):
  folder = tmp_path / 'only_one'
  folder.mkdir()
  Image.new('RGB', (8, 8)).save(folder / 'a.png')
  ext = features.FeatureExtractor(
      'stargan_v2', features_fn=lambda v, x: jnp.mean(x, axis=(1, 2)),
      batch_size=4)
  with pytest.raises(ValueError) as e:
    fid_lib.path_statistics(folder, ext, progress=False)
  assert str(folder) in str(e.value) and 'at least 2 images' in str(e.value)
