"""The frozen networks of an L2M-GAN run, loaded before training.

The FAN landmark network (masks, when w_hpf > 0), the ResNet-18 of the
perceptual identity term (docs/method.md#l2m-resnet18), or the networks
trained on the generated faces (`l2m_jax.face_priors`: a LandmarkNet in
place of the FAN, a PreservationNet). The train step takes them as
arguments and never differentiates them. A missing checkpoint gives random
weights with a loud warning (code tests only).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from absl import logging
import jax
import jax.numpy as jnp

from l2m_jax.convert import torch_to_flax as t2f
from l2m_jax.models import fan as fan_lib
from l2m_jax.models import landmarks as landmarks_lib
from l2m_jax.models import preservation as preservation_lib
from l2m_jax.models import resnet

if TYPE_CHECKING:  # annotations only
  import ml_collections  # pylint: disable=g-bad-import-order


def _loud_warning(what: str, why: str):
  logging.warning('!' * 72)
  logging.warning('!!! %s: %s', what, why)
  logging.warning('!!! It is RANDOM: results of this run are meaningless for '
                  'anything but testing the code.')
  logging.warning('!' * 72)


def load_frozen(config: ml_collections.ConfigDict, rng: jax.Array
                ) -> dict[str, Any]:
  """The frozen networks: {'fan': variables} if w_hpf > 0, {'vgg': ...} if used.

  Sources, in order: `config.l2m_checkpoint` (a converted nets_ema: its
  `fan` and `vgg` entries), `config.fan_checkpoint` (converted wing.ckpt),
  `config.vgg_checkpoint` (converted ResNet-18: {'params', 'batch_stats'} at
  the top level or under 'vgg'). Missing ones are random, with a loud
  warning. Networks trained on the generated faces (`l2m_jax.face_priors`):
  `config.landmark_checkpoint` gives {'landmarks': ...} in place of the FAN,
  and preservation='synthetic_faces' needs `config.preservation_checkpoint`
  ({'preservation': ...}).
  """
  frozen = {}
  need_fan = float(config.w_hpf) > 0
  need_vgg = config.preservation == 'resnet18' and float(config.lambda_id) > 0
  if config.preservation not in ('resnet18', 'none', 'synthetic_faces'):
    raise ValueError(f"preservation={config.preservation!r}: expected "
                     "'resnet18', 'synthetic_faces' or 'none'")
  preservation_lib.check_compare(config.get('preservation_compare',
                                            'features'))
  if (config.preservation == 'synthetic_faces' and
      float(config.lambda_id) > 0):
    from l2m_jax import face_priors  # pylint: disable=g-import-not-at-top
    if not config.get('preservation_checkpoint'):
      raise ValueError("preservation_checkpoint is empty: preservation="
                       "'synthetic_faces' needs a PreservationNet trained by "
                       'l2m_jax.face_priors')
    frozen['preservation'], _ = face_priors.load(
        config.preservation_checkpoint, preservation_lib.FORMAT)
  if need_fan and config.get('landmark_checkpoint'):
    from l2m_jax import face_priors  # pylint: disable=g-import-not-at-top
    frozen['landmarks'], _ = face_priors.load(config.landmark_checkpoint,
                                              landmarks_lib.FORMAT)
    need_fan = False
  l2m_vars = {}
  if config.l2m_checkpoint:
    from l2m_jax.convert import l2m as l2m_convert  # pylint: disable=g-import-not-at-top
    l2m_vars, _ = l2m_convert.load_l2m_checkpoint(config.l2m_checkpoint)
  if need_fan:
    if 'fan' in l2m_vars:
      frozen['fan'] = l2m_vars['fan']
    elif config.fan_checkpoint:
      from l2m_jax.convert import fan as fan_convert  # pylint: disable=g-import-not-at-top
      frozen['fan'], _ = fan_convert.load_fan(config.fan_checkpoint)
    else:
      _loud_warning('FAN landmark network', 'no fan_checkpoint or '
                    'l2m_checkpoint given; the masks come from random weights')
      frozen['fan'] = fan_lib.init_variables(jax.random.fold_in(rng, 0))
  if need_vgg:
    if 'vgg' in l2m_vars:
      frozen['vgg'] = l2m_vars['vgg']
    elif config.vgg_checkpoint:
      v, _ = t2f.load_converted(config.vgg_checkpoint)
      frozen['vgg'] = v.get('vgg', v)
    else:
      _loud_warning('ResNet-18 preservation network', 'no vgg_checkpoint or '
                    'l2m_checkpoint given')
      frozen['vgg'] = jax.jit(resnet.ResNet18Features().init)(
          jax.random.fold_in(rng, 1), jnp.zeros((1, 32, 32, 3)))
  return jax.tree.map(jnp.asarray, frozen)
