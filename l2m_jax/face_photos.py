"""Ordinary photos -> aligned face crops -> edited photos.

Glue between `l2m_jax.face_detection` (RetinaFace) and `l2m_jax.alignment`
for the photo workflows of the command-line tools:

  faces = extract_faces(detector_variables, [photo], style='celebahq')[0]
  edited_crops = my_editor([f.crop for f in faces])      # any crop size
  result = paste_faces(photo, edited_crops, faces)

`style` picks the crop: 'celebahq' for L2M-GAN, 'ffhq' for Latent-To-Latent
(StyleGAN2 FFHQ). See docs/editing.md.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from l2m_jax import alignment as alignment_lib
from l2m_jax import face_detection


@dataclasses.dataclass(frozen=True)
class AlignedFace:
  """A detected face with its aligned crop.

  Attributes:
    face: the detection (box, score, 5 landmarks) in photo pixels.
    crop: RGB uint8 [S, S, 3] aligned crop.
    alignment: the crop -> photo map (`paste_back` needs it).
  """
  face: face_detection.Face
  crop: np.ndarray
  alignment: alignment_lib.Alignment

  def to_json(self) -> dict[str, Any]:
    out = self.face.to_json()
    out['alignment'] = self.alignment.to_json()
    return out


def extract_faces(variables: Any, photos: Sequence[np.ndarray], *,
                  style: str = 'celebahq', output_size: int = 1024,
                  transform_size: int = alignment_lib.TRANSFORM_SIZE,
                  max_faces: int | None = None,
                  **detect_kwargs) -> list[list[AlignedFace]]:
  """Detects faces in photos and aligns each.

  Args:
    variables: RetinaFace variables (`l2m_jax.convert.retinaface`).
    photos: RGB uint8 [H, W, 3] arrays of any sizes.
    style: 'celebahq' (L2M-GAN) or 'ffhq' (Latent-To-Latent).
    output_size, transform_size: of the alignment.
    max_faces: keep at most this many faces per photo (highest score).
    **detect_kwargs: passed to `face_detection.detect_faces` (max_size,
      score_threshold, names, ...).

  Returns:
    Per photo, its faces (highest score first; empty when none was found).
  """
  if style not in alignment_lib.ALIGN_FUNCTIONS:
    raise ValueError(f'style={style!r}: must be one of '
                     f'{sorted(alignment_lib.ALIGN_FUNCTIONS)}')
  if max_faces is not None and max_faces < 1:
    raise ValueError(f'max_faces={max_faces}: must be >= 1')
  align = alignment_lib.ALIGN_FUNCTIONS[style]
  detections = face_detection.detect_faces(variables, photos, **detect_kwargs)
  out = []
  for photo, faces in zip(photos, detections):
    aligned = []
    for f in face_detection.select_faces(faces, max_faces):
      crop, a = align(np.asarray(photo), f.landmarks,
                      output_size=output_size, transform_size=transform_size)
      aligned.append(AlignedFace(face=f, crop=crop, alignment=a))
    out.append(aligned)
  return out


def paste_faces(photo: np.ndarray, crops: Sequence[np.ndarray],
                faces: Sequence[AlignedFace], feather: float = 0.1
                ) -> np.ndarray:
  """Pastes edited crops (one per face, any size) back into the photo.

  Faces are pasted in reverse order, so where two crops overlap the first
  (highest-score) face ends on top.
  """
  if len(crops) != len(faces):
    raise ValueError(f'{len(crops)} crops for {len(faces)} faces')
  out = np.asarray(photo)
  for crop, f in reversed(list(zip(crops, faces))):
    out = alignment_lib.paste_back(out, crop, f.alignment, feather=feather)
  return out
