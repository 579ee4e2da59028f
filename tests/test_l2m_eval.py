"""The L2M-GAN evaluation protocol, and real-Inception end-to-end CLI runs."""

import importlib.util
import json
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from PIL import Image

from l2m_jax import image_io
from l2m_jax.evaluation import frechet
from l2m_jax.evaluation import inception_features as features
from l2m_jax.evaluation import l2m_eval
from tests import test_inception
from third_party.torchvision_compat import import_torchvision

import_torchvision()
from pytorch_fid import fid_score as pf_fid  # pylint: disable=g-import-not-at-top,wrong-import-position

REPO = pathlib.Path(__file__).resolve().parents[1]


def _script(name):
  spec = importlib.util.spec_from_file_location(name, REPO / 'scripts'
                                                / f'{name}.py')
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def _make_layout(root: pathlib.Path, rng, counts, size=40):
  """root/{train,val}/{a,b} with PNG and JPEG files of varying sizes."""
  for split, per_domain in counts.items():
    for d, n in per_domain.items():
      folder = root / split / d
      folder.mkdir(parents=True)
      for i in range(n):
        s = size + 8 * (i % 3)
        arr = rng.integers(0, 256, (s, s, 3), dtype=np.uint8)
        ext = 'jpg' if (split == 'train' and i % 2) else 'png'
        Image.fromarray(arr).save(folder / f'{d}_{i:02d}.{ext}')
  return root / 'val', root / 'train'


class _TorchConv(torch.nn.Module):

  def __init__(self, seed=0):
    super().__init__()
    torch.manual_seed(seed)
    self.conv = torch.nn.Conv2d(3, 8, 7, stride=6)

  def forward(self, x):
    return torch.relu(self.conv(x)).mean(dim=(2, 3))


def _jax_features_fn(tmodel):
  kernel = jnp.asarray(tmodel.conv.weight.detach().numpy().transpose(2, 3, 1,
                                                                      0))
  bias = jnp.asarray(tmodel.conv.bias.detach().numpy())

  def features_fn(variables, x):
    del variables
    y = jax.lax.conv_general_dilated(
        x, kernel, (6, 6), 'VALID', dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
        precision=jax.lax.Precision.HIGHEST)
    return jnp.mean(jax.nn.relu(y + bias), axis=(1, 2))
  return features_fn


def _edit(x, src, trg):
  """A fixed, domain-dependent transform standing in for the generator."""
  return -0.8 * x + 0.3 * (trg - src) + 0.05 * np.roll(x, 3, axis=2)


def _torch_stats(files, tmodel):
  tv = import_torchvision()
  t = tv.transforms
  transform = t.Compose([t.Resize([299, 299]), t.Resize([299, 299]),
                         t.ToTensor(),
                         t.Normalize(mean=[0.485, 0.456, 0.406],
                                     std=[0.229, 0.224, 0.225])])
  x = torch.stack([transform(Image.open(f).convert('RGB')) for f in files])
  with torch.no_grad():
    feats = tmodel(x).numpy().astype(np.float64)
  return np.mean(feats, axis=0), np.cov(feats, rowvar=False)


def test_protocol_matches_independent_reference(tmp_path):
  rng = np.random.default_rng(0)
  val_dir, train_dir = _make_layout(
      tmp_path / 'data', rng,
      {'val': {'a': 4, 'b': 3}, 'train': {'a': 5, 'b': 6}})
  tmodel = _TorchConv().eval()
  extractor = features.FeatureExtractor(
      'stargan_v2', features_fn=_jax_features_fn(tmodel), weights_id='w1',
      batch_size=4)
  cache, eval_dir = tmp_path / 'cache', tmp_path / 'eval'
  logs = []
  results = l2m_eval.evaluate_fid_reference(
      _edit, val_dir, train_dir, extractor, img_size=64, batch_size=3,
      cache_dir=cache, eval_dir=eval_dir, progress=False, log=logs.append)
  assert list(results) == ['FID_reference/b2a', 'FID_reference/a2b',
                           'FID_reference/mean']
  # Independent reference: write the edits as the official code does (PNG),
  # read everything back with torchvision transforms, torch features,
  # np.cov and pytorch-fid's distance.
  domains = ['a', 'b']
  for task in ('b2a', 'a2b'):
    src, trg = task.split('2')
    ref_dir = tmp_path / 'ref' / task
    srcs = sorted((val_dir / src).iterdir())
    x = image_io.load_images(srcs, 64)
    y = _edit(x, domains.index(src), domains.index(trg))
    for f, im in zip(srcs, y):
      image_io.save_image(ref_dir / f'{f.stem}.png', im)
    fakes = sorted(ref_dir.iterdir())
    assert [p.name for p in sorted((eval_dir / task).iterdir())] == [
        p.name for p in fakes]
    mu1, s1 = _torch_stats(fakes, tmodel)
    mu2, s2 = _torch_stats(sorted((train_dir / trg).iterdir()), tmodel)
    want = pf_fid.calculate_frechet_distance(mu1, s1, mu2, s2)
    got = results[f'FID_reference/{task}']
    assert got == pytest.approx(want, rel=1e-4, abs=1e-5), task
  assert results['FID_reference/mean'] == pytest.approx(
      (results['FID_reference/a2b'] + results['FID_reference/b2a']) / 2)
  assert any('b2a: FID' in m for m in logs)
  # Real statistics are cached per folder, and reused.
  assert len(list(cache.glob('*.npz'))) == 2
  again = l2m_eval.evaluate_fid_reference(
      _edit, val_dir, train_dir, extractor, img_size=64, batch_size=4,
      cache_dir=cache, progress=False, log=logs.append)
  for k, v in results.items():
    assert again[k] == pytest.approx(v, rel=1e-9)
  # Changing a folder or the weights id invalidates the entry.
  Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(
      train_dir / 'a' / 'new.png')
  l2m_eval.evaluate_fid_reference(_edit, val_dir, train_dir, extractor,
                                  img_size=64, cache_dir=cache,
                                  progress=False, log=logs.append)
  assert len(list(cache.glob('*.npz'))) == 3
  # Identity edit: the FID changes, so the edit is really applied.
  ident = l2m_eval.evaluate_fid_reference(
      lambda x, s, t: x, val_dir, train_dir, extractor, img_size=64,
      progress=False, log=logs.append)
  assert ident['FID_reference/a2b'] != pytest.approx(
      results['FID_reference/a2b'], rel=1e-3)


def test_protocol_errors(tmp_path):
  rng = np.random.default_rng(1)
  val_dir, train_dir = _make_layout(
      tmp_path / 'data', rng, {'val': {'a': 2, 'b': 2}, 'train': {'a': 2}})
  ext = features.FeatureExtractor(
      'stargan_v2', features_fn=lambda v, x: jnp.mean(x, axis=(1, 2)),
      batch_size=4)
  with pytest.raises(FileNotFoundError, match=r"domain\(s\) \['b'\]"):
    l2m_eval.evaluate_fid_reference(lambda x, s, t: x, val_dir, train_dir,
                                    ext, progress=False)
  with pytest.raises(ValueError, match='at least 2'):
    l2m_eval.list_domains(train_dir)
  with pytest.raises(FileNotFoundError, match='no such validation'):
    l2m_eval.list_domains(tmp_path / 'absent')


# ---------------------------------------------------------------------------
# Real Inception (random weights), end to end through the CLIs.


def _random_inception_pth(path: pathlib.Path) -> torch.nn.Module:
  tv = import_torchvision()
  model = tv.models.inception_v3(weights=None, aux_logits=True,
                                 init_weights=False)
  gen = torch.Generator().manual_seed(0)
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, torch.nn.Conv2d):
        m.weight.copy_(torch.randn(m.weight.shape, generator=gen)
                       * math.sqrt(2.0 / m.weight[0].numel()))
      elif isinstance(m, torch.nn.BatchNorm2d):
        c = m.num_features
        m.running_mean.copy_(torch.rand(c, generator=gen) - 0.5)
        m.running_var.copy_(torch.rand(c, generator=gen) * 1.5 + 0.5)
  model.eval()
  torch.save(model.state_dict(), path)
  return model


def _tv_features(m, x):
  # The official feature path, shared with the Inception parity tests.
  return test_inception._tv_features(m, x).astype(np.float64)  # pylint: disable=protected-access


@pytest.fixture(scope='module')
def inception_pth(tmp_path_factory):
  path = tmp_path_factory.mktemp('inception') / 'inception_random.pth'
  model = _random_inception_pth(path)
  return path, model


@pytest.mark.slow
def test_fid_cli_real_inception_end_to_end(inception_pth, tmp_path, capsys):
  pth, model = inception_pth
  rng = np.random.default_rng(5)
  folders = []
  for name, size in (('A', 32), ('B', 48)):
    folder = tmp_path / name
    folder.mkdir()
    for i in range(3):
      Image.fromarray(rng.integers(0, 256, (size, size, 3), np.uint8)).save(
          folder / f'{i}.png')
    folders.append(folder)
  stats_out = tmp_path / 'a_stats.npz'
  rc = _script('fid').main([str(folders[0]), str(folders[1]), '--weights',
                            str(pth), '--batch-size', '4', '--save-stats',
                            str(stats_out), '--no-progress'])
  assert rc == 0
  got = float(capsys.readouterr().out.split('FID:')[1])
  tv = import_torchvision()
  t = tv.transforms
  transform = t.Compose([t.Resize([299, 299]), t.ToTensor(),
                         t.Normalize(mean=[0.485, 0.456, 0.406],
                                     std=[0.229, 0.224, 0.225])])
  stats = []
  for folder in folders:
    x = torch.stack([transform(Image.open(f).convert('RGB'))
                     for f in sorted(folder.iterdir())])
    f = _tv_features(model, x)
    stats.append((f.mean(0), np.cov(f, rowvar=False)))
  want = pf_fid.calculate_frechet_distance(*stats[0], *stats[1])
  print(f'end-to-end fid, jax {got:.6f} torch {want:.6f}')
  assert got == pytest.approx(want, rel=1e-4)
  mu, sigma = frechet.load_stats(stats_out)
  np.testing.assert_allclose(mu, stats[0][0], atol=1e-4)
  # The saved statistics are usable in place of the folder.
  assert _script('fid').main([str(stats_out), str(folders[1]), '--weights',
                              str(pth), '--batch-size', '4',
                              '--no-progress']) == 0
  assert float(capsys.readouterr().out.split('FID:')[1]) == pytest.approx(
      got, rel=1e-9)


@pytest.mark.slow
def test_evaluate_cli_tiny_l2m_checkpoint(inception_pth, tmp_path, capsys):
  """scripts/evaluate.py with a tiny converted L2M-GAN and a real Inception."""
  from l2m_jax.convert import l2m as convert_l2m  # pylint: disable=g-import-not-at-top
  from tests import l2m_checkpoints  # pylint: disable=g-import-not-at-top
  pth, _ = inception_pth
  nets = l2m_checkpoints.build_torch_nets(img_size=32, max_conv_dim=32,
                                          w_hpf=0, seed=0)
  ckpt = l2m_checkpoints.save_checkpoint(nets, tmp_path / 'torch')
  converted = tmp_path / 'converted'
  convert_l2m.save_checkpoint(ckpt, converted, domains=['a', 'b'])
  rng = np.random.default_rng(6)
  val_dir, _ = _make_layout(tmp_path / 'data', rng,
                            {'val': {'a': 2, 'b': 2},
                             'train': {'a': 3, 'b': 3}}, size=32)
  out = tmp_path / 'res.json'
  rc = _script('evaluate').main([
      '--checkpoint', str(converted), '--data', str(val_dir.parent),
      '--inception-weights', str(pth), '--out', str(out), '--batch-size', '4',
      '--cache-dir', str(tmp_path / 'cache'), '--eval-dir',
      str(tmp_path / 'eval'), '--no-progress'])
  assert rc == 0, capsys.readouterr().err
  res = json.loads(out.read_text())
  assert set(res) == {'FID_reference/a2b', 'FID_reference/b2a',
                      'FID_reference/mean'}
  assert all(np.isfinite(v) and v > 0 for v in res.values())
  assert len(list((tmp_path / 'eval' / 'a2b').glob('*.png'))) == 2
  # Bad checkpoint path: a clear error, exit status 2.
  rc = _script('evaluate').main(['--checkpoint', str(tmp_path / 'nope'),
                                 '--data', str(val_dir.parent),
                                 '--inception-weights', str(pth)])
  assert rc == 2
  assert 'nope' in capsys.readouterr().err
