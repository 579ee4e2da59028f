"""In-house PyTorch reference of RetinaFace (MobileNet-0.25) and its decoding.

Mirrors the `mobile0.25` configuration of biubug6/Pytorch_Retinaface
(`models/retinaface.py`, `models/net.py`, `layers/functions/prior_box.py`,
`utils/box_utils.py`, `utils/nms/py_cpu_nms.py`, `data/config.py`,
`detect.py`), written here from a reading of those files. Module and attribute
names follow the upstream parameter names, so `RetinaFace().state_dict()` has
exactly the 300 keys of the released `mobilenet0.25_Final.pth`
(`body.stage{1,2,3}.*`, `fpn.*`, `ssh{1,2,3}.*`,
`{ClassHead,BboxHead,LandmarkHead}.{0,1,2}.conv1x1.*`).

Used only by the parity tests and benchmarks; `l2m_jax` never imports it.

Contents:
  RetinaFace    body (MobileNetV1-0.25 stages 1-3) -> FPN -> 3 x SSH ->
                per-level 1x1 heads; returns (loc, softmax conf, landmarks).
  prior_boxes   anchors [P, 4] (cx, cy, w, h), relative to the image size.
  decode_boxes, decode_landmarks   the SSD-style decoding with variances.
  nms           greedy NMS with the "+1" pixel area convention.
  raw_outputs   network + decoding in pixels for one BGR image.
  postprocess   `detect.py`'s threshold / top-k / NMS / keep-top-k.
  detect        raw_outputs then postprocess.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

# `cfg_mnet` of data/config.py (the entries inference reads).
CFG_MNET = {
    'min_sizes': [[16, 32], [64, 128], [256, 512]],
    'steps': [8, 16, 32],
    'variance': [0.1, 0.2],
    'clip': False,
    'in_channel': 32,
    'out_channel': 64,
}
MEAN_BGR = (104.0, 117.0, 123.0)


def _conv_bn(cin, cout, stride=1, leaky=0.0):
  """3x3 conv (no bias) [0], BatchNorm [1], LeakyReLU [2]."""
  return nn.Sequential(
      nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
      nn.BatchNorm2d(cout),
      nn.LeakyReLU(negative_slope=leaky, inplace=True))


def _conv_bn_no_relu(cin, cout, stride):
  """3x3 conv (no bias) [0], BatchNorm [1]."""
  return nn.Sequential(
      nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
      nn.BatchNorm2d(cout))


def _conv_bn1x1(cin, cout, stride, leaky=0.0):
  """1x1 conv (no bias) [0], BatchNorm [1], LeakyReLU [2]."""
  return nn.Sequential(
      nn.Conv2d(cin, cout, 1, stride, 0, bias=False),
      nn.BatchNorm2d(cout),
      nn.LeakyReLU(negative_slope=leaky, inplace=True))


def _conv_dw(cin, cout, stride, leaky=0.1):
  """Depthwise 3x3 [0-2] then pointwise 1x1 [3-5], each conv-BN-LeakyReLU."""
  return nn.Sequential(
      nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False),
      nn.BatchNorm2d(cin),
      nn.LeakyReLU(negative_slope=leaky, inplace=True),
      nn.Conv2d(cin, cout, 1, 1, 0, bias=False),
      nn.BatchNorm2d(cout),
      nn.LeakyReLU(negative_slope=leaky, inplace=True))


class MobileNetV1Body(nn.Module):
  """MobileNetV1 x0.25, stages 1-3 (strides 8, 16, 32; 64/128/256 channels).

  Upstream wraps a full MobileNetV1 in an IntermediateLayerGetter returning
  stage1..stage3; its avgpool/fc come after stage3 and never run, so they
  are not part of the detector's state_dict and are left out here.
  """

  def __init__(self):
    super().__init__()
    self.stage1 = nn.Sequential(
        _conv_bn(3, 8, 2, leaky=0.1),
        _conv_dw(8, 16, 1),
        _conv_dw(16, 32, 2),
        _conv_dw(32, 32, 1),
        _conv_dw(32, 64, 2),
        _conv_dw(64, 64, 1))
    self.stage2 = nn.Sequential(
        _conv_dw(64, 128, 2),
        *[_conv_dw(128, 128, 1) for _ in range(5)])
    self.stage3 = nn.Sequential(
        _conv_dw(128, 256, 2),
        _conv_dw(256, 256, 1))

  def forward(self, x):
    c1 = self.stage1(x)
    c2 = self.stage2(c1)
    return [c1, c2, self.stage3(c2)]


class FPN(nn.Module):
  """Lateral 1x1 convs, top-down nearest upsampling and 3x3 merges."""

  def __init__(self, in_channels, out_channels):
    super().__init__()
    leaky = 0.1 if out_channels <= 64 else 0.0
    self.output1 = _conv_bn1x1(in_channels[0], out_channels, 1, leaky)
    self.output2 = _conv_bn1x1(in_channels[1], out_channels, 1, leaky)
    self.output3 = _conv_bn1x1(in_channels[2], out_channels, 1, leaky)
    self.merge1 = _conv_bn(out_channels, out_channels, leaky=leaky)
    self.merge2 = _conv_bn(out_channels, out_channels, leaky=leaky)

  def forward(self, feats):
    p1 = self.output1(feats[0])
    p2 = self.output2(feats[1])
    p3 = self.output3(feats[2])
    p2 = self.merge2(p2 + F.interpolate(p3, size=list(p2.shape[2:]),
                                        mode='nearest'))
    p1 = self.merge1(p1 + F.interpolate(p2, size=list(p1.shape[2:]),
                                        mode='nearest'))
    return [p1, p2, p3]


class SSH(nn.Module):
  """Single-stage context module: 3x3 | 5x5 (2 x 3x3) | 7x7 (3 x 3x3)."""

  def __init__(self, cin, cout):
    super().__init__()
    leaky = 0.1 if cout <= 64 else 0.0
    self.conv3X3 = _conv_bn_no_relu(cin, cout // 2, 1)
    self.conv5X5_1 = _conv_bn(cin, cout // 4, 1, leaky=leaky)
    self.conv5X5_2 = _conv_bn_no_relu(cout // 4, cout // 4, 1)
    self.conv7X7_2 = _conv_bn(cout // 4, cout // 4, 1, leaky=leaky)
    self.conv7x7_3 = _conv_bn_no_relu(cout // 4, cout // 4, 1)

  def forward(self, x):
    a = self.conv3X3(x)
    b1 = self.conv5X5_1(x)
    b = self.conv5X5_2(b1)
    c = self.conv7x7_3(self.conv7X7_2(b1))
    return F.relu(torch.cat([a, b, c], dim=1))


class _Head(nn.Module):
  """1x1 conv to anchors x values, NCHW -> [N, H*W*anchors, values]."""

  def __init__(self, cin, num_anchors, values):
    super().__init__()
    self.values = values
    self.conv1x1 = nn.Conv2d(cin, num_anchors * values, 1, 1, 0)

  def forward(self, x):
    out = self.conv1x1(x).permute(0, 2, 3, 1).contiguous()
    return out.view(out.shape[0], -1, self.values)


class RetinaFace(nn.Module):
  """RetinaFace, mobile0.25 configuration, test phase (softmax scores).

  Input: BGR float [N, 3, H, W] with MEAN_BGR subtracted (0-255 scale).
  Output: (loc [N, P, 4], conf [N, P, 2] softmax, landmarks [N, P, 10]).
  """

  def __init__(self, cfg=None):
    super().__init__()
    cfg = CFG_MNET if cfg is None else cfg
    self.body = MobileNetV1Body()
    c = cfg['in_channel']
    out = cfg['out_channel']
    self.fpn = FPN([c * 2, c * 4, c * 8], out)
    self.ssh1 = SSH(out, out)
    self.ssh2 = SSH(out, out)
    self.ssh3 = SSH(out, out)
    self.ClassHead = nn.ModuleList([_Head(out, 2, 2) for _ in range(3)])
    self.BboxHead = nn.ModuleList([_Head(out, 2, 4) for _ in range(3)])
    self.LandmarkHead = nn.ModuleList([_Head(out, 2, 10) for _ in range(3)])

  def forward(self, x):
    feats = self.fpn(self.body(x))
    feats = [self.ssh1(feats[0]), self.ssh2(feats[1]), self.ssh3(feats[2])]
    loc = torch.cat([h(f) for h, f in zip(self.BboxHead, feats)], dim=1)
    conf = torch.cat([h(f) for h, f in zip(self.ClassHead, feats)], dim=1)
    ldm = torch.cat([h(f) for h, f in zip(self.LandmarkHead, feats)], dim=1)
    return loc, F.softmax(conf, dim=-1), ldm


def prior_boxes(height, width, cfg=None):
  """Anchors [P, 4] (cx, cy, w, h) relative to (width, height), float32.

  Level k has ceil(H / step) x ceil(W / step) cells, row-major, each with one
  anchor per min size; values are computed in Python floats, then stored as
  float32 (upstream builds a list and calls torch.Tensor on it).
  """
  cfg = CFG_MNET if cfg is None else cfg
  anchors = []
  for step, sizes in zip(cfg['steps'], cfg['min_sizes']):
    fh, fw = math.ceil(height / step), math.ceil(width / step)
    for i, j in itertools.product(range(fh), range(fw)):
      for s in sizes:
        anchors += [(j + 0.5) * step / width, (i + 0.5) * step / height,
                    s / width, s / height]
  out = torch.tensor(anchors, dtype=torch.float32).view(-1, 4)
  if cfg['clip']:
    out.clamp_(0, 1)
  return out


def decode_boxes(loc, priors, variances):
  """[P, 4] offsets -> [P, 4] (x1, y1, x2, y2), relative units."""
  boxes = torch.cat((
      priors[:, :2] + loc[:, :2] * variances[0] * priors[:, 2:],
      priors[:, 2:] * torch.exp(loc[:, 2:] * variances[1])), 1)
  boxes[:, :2] -= boxes[:, 2:] / 2
  boxes[:, 2:] += boxes[:, :2]
  return boxes


def decode_landmarks(pre, priors, variances):
  """[P, 10] offsets -> [P, 10] (x, y) x 5, relative units."""
  return torch.cat([priors[:, :2] + pre[:, 2 * k:2 * k + 2] * variances[0]
                    * priors[:, 2:] for k in range(5)], dim=1)


def nms(dets, thresh):
  """Greedy NMS over [K, 5] (x1, y1, x2, y2, score); areas use the +1 rule.

  Returns the kept row indices, highest score first.
  """
  x1, y1, x2, y2, scores = (dets[:, i] for i in range(5))
  areas = (x2 - x1 + 1) * (y2 - y1 + 1)
  order = scores.argsort()[::-1]
  keep = []
  while order.size:
    i = order[0]
    keep.append(i)
    rest = order[1:]
    w = np.maximum(0.0, np.minimum(x2[i], x2[rest])
                   - np.maximum(x1[i], x1[rest]) + 1)
    h = np.maximum(0.0, np.minimum(y2[i], y2[rest])
                   - np.maximum(y1[i], y1[rest]) + 1)
    inter = w * h
    iou = inter / (areas[i] + areas[rest] - inter)
    order = rest[iou <= thresh]
  return keep


def raw_outputs(net, image_bgr, cfg=None, dtype=torch.float32):
  """Network + decoding for one image, before thresholding.

  Args:
    net: a RetinaFace in eval mode (its dtype must match `dtype`).
    image_bgr: [H, W, 3] BGR array, 0-255 scale (as cv2.imread gives).
    cfg: the configuration (CFG_MNET when None).
    dtype: torch.float32 (upstream) or torch.float64 (accuracy reference).

  Returns:
    numpy (boxes [P, 4] pixels, scores [P], landmarks [P, 10] pixels).
  """
  cfg = CFG_MNET if cfg is None else cfg
  img = np.asarray(image_bgr, np.float32 if dtype == torch.float32
                   else np.float64)
  h, w, _ = img.shape
  img = img - np.asarray(MEAN_BGR, img.dtype)
  x = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))[None]
  with torch.no_grad():
    loc, conf, ldm = net(x.to(dtype))
    priors = prior_boxes(h, w, cfg).to(dtype)
    boxes = decode_boxes(loc[0], priors, cfg['variance'])
    boxes = boxes * torch.tensor([w, h, w, h], dtype=dtype)
    landms = decode_landmarks(ldm[0], priors, cfg['variance'])
    landms = landms * torch.tensor([w, h] * 5, dtype=dtype)
  return boxes.numpy(), conf[0, :, 1].numpy(), landms.numpy()


def postprocess(boxes, scores, landms, confidence_threshold=0.02,
                nms_threshold=0.4, top_k=5000, keep_top_k=750):
  """`detect.py` post-processing: threshold, top-k, NMS, keep-top-k.

  Returns:
    (dets [K, 5] (x1, y1, x2, y2, score), landmarks [K, 10]), highest score
    first; float32 for float32 inputs (as upstream), float64 otherwise.
  """
  inds = np.where(scores > confidence_threshold)[0]
  boxes, landms, scores = boxes[inds], landms[inds], scores[inds]
  order = scores.argsort()[::-1][:top_k]
  boxes, landms, scores = boxes[order], landms[order], scores[order]
  dets = np.hstack((boxes, scores[:, None])).astype(
      np.float32 if boxes.dtype == np.float32 else np.float64, copy=False)
  keep = nms(dets, nms_threshold)
  return dets[keep][:keep_top_k], landms[keep][:keep_top_k]


def detect(net, image_bgr, cfg=None, dtype=torch.float32, **kwargs):
  """`raw_outputs` then `postprocess` (kwargs: its thresholds)."""
  return postprocess(*raw_outputs(net, image_bgr, cfg, dtype), **kwargs)
