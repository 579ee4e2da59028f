"""ResNet18Features (the checkpoint's `vgg`) vs torchvision resnet18 minus fc."""

import jax
import numpy as np
import torch

from l2m_jax.convert import l2m as l2m_convert
from l2m_jax.models import resnet
from tests import l2m_checkpoints as lc


def test_resnet18_features_match_torchvision(tmp_path):
  nets = lc.build_torch_nets(img_size=32, max_conv_dim=16, w_hpf=0,
                             with_vgg=True, seed=31)
  path = lc.save_checkpoint(nets, tmp_path)
  variables, meta = l2m_convert.convert_checkpoint(path)
  assert sum(k.startswith('vgg.') for k in meta['key_map']) == 100
  assert sum(k.startswith('vgg.') for k in meta['ignored']) == 20
  model = resnet.ResNet18Features()
  fn = jax.jit(model.apply)
  # Odd sizes exercise the explicit stride-2 padding and the -inf max-pool
  # padding (a negative input makes zero padding win where -inf must not).
  for size, shift in ((64, 0.0), (49, -3.0)):
    x = (np.random.default_rng(size).normal(size=(2, size, size, 3))
         + shift).astype(np.float32)
    with torch.no_grad():
      want = nets.vgg(lc.nhwc_to_torch(x)).reshape(2, -1).numpy()
    got = np.asarray(fn(variables['vgg'], x))
    assert got.shape == (2, 512)
    err = float(np.max(np.abs(got - want)))
    print(f'resnet18 {size}px: max abs err {err:.3g} (scale '
          f'{np.max(np.abs(want)):.3g})')
    assert err <= 1e-4 * max(1.0, float(np.max(np.abs(want))))
