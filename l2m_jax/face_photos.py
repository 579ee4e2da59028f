"""Ordinary photos -> aligned face crops -> edited photos.

Glue between `l2m_jax.face_detection` (RetinaFace) and `l2m_jax.alignment`
for the photo workflows of the command-line tools:

  faces = extract_faces(detector_variables, [photo], style='celebahq')[0]
  edited_crops = my_editor([f.crop for f in faces])      # any crop size
  result = paste_faces(photo, edited_crops, faces)

`style` picks the crop: 'celebahq' for L2M-GAN, 'ffhq' for Latent-To-Latent
(StyleGAN2 FFHQ). See docs/editing.md.

`PhotoRun` is the photo loop of the command-line tools' `--align` mode
(`scripts/edit.py`, `scripts/edit_photo.py`): it reads photo files, detects
and aligns their faces, reports photos that cannot be read or hold no face,
pastes the caller's edits back, writes the composites, keeps the faces.json
record and shows a progress bar over photos. `add_align_arguments` /
`check_align_arguments` give both tools the same flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import sys
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from l2m_jax import alignment as alignment_lib
from l2m_jax import face_detection
from l2m_jax import image_io


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


# --- The command-line tools' photo loop (--align). ---------------------------


def add_align_arguments(parser: argparse.ArgumentParser | Any,
                        align_help: str) -> None:
  """Adds --align, --detector, --max-faces, --min-score, --detect-max-size
  and --feather (the photo flags shared by the editing tools)."""
  parser.add_argument('--align', action='store_true', help=align_help)
  parser.add_argument(
      '--detector', default=None,
      help='RetinaFace weights: mobilenet0.25_Final.pth or its converted '
      'directory (required with --align)')
  parser.add_argument(
      '--max-faces', type=int, default=None,
      help='edit at most this many faces per photo, highest detection '
      'score first (default: all)')
  parser.add_argument(
      '--min-score', type=float, default=face_detection.SCORE_THRESHOLD,
      help='detection score that counts as a face (default '
      f'{face_detection.SCORE_THRESHOLD}, as RetinaFace detect.py)')
  parser.add_argument(
      '--detect-max-size', type=int, default=None,
      help='detect on a copy whose longer side is at most this many pixels '
      '(default: full size)')
  parser.add_argument(
      '--feather', type=float, default=0.1,
      help='width of the paste-back blend ramp, as a fraction of the crop '
      'side (default 0.1)')


def check_align_arguments(args: argparse.Namespace) -> None:
  """Validates the flags of `add_align_arguments`.

  Raises:
    ValueError: naming the flag and what it needs.
  """
  if not args.align:
    if args.detector is not None or args.max_faces is not None:
      raise ValueError('--detector / --max-faces need --align')
    return
  if args.detector is None:
    raise ValueError('--align needs --detector (mobilenet0.25_Final.pth or '
                     'its converted directory)')
  if args.max_faces is not None and args.max_faces < 1:
    raise ValueError(f'--max-faces must be >= 1, got {args.max_faces}')
  if not 0 < args.feather <= 0.5:
    raise ValueError(f'--feather must be in (0, 0.5], got {args.feather}')
  if not 0 <= args.min_score <= 1:
    raise ValueError(f'--min-score must be in [0, 1], got {args.min_score}')
  if args.detect_max_size is not None and args.detect_max_size < 32:
    raise ValueError('--detect-max-size must be >= 32, got '
                     f'{args.detect_max_size}')


@dataclasses.dataclass
class FacePhoto:
  """A photo with at least one aligned face, as `PhotoRun` yields it.

  Attributes:
    path: the photo file.
    name: its output name, unique in the run (the file stem, or
      `<index>_<stem>` when two inputs share a stem).
    image: RGB uint8 [H, W, 3].
    faces: the aligned faces, highest detection score first.
  """
  path: pathlib.Path
  name: str
  image: np.ndarray
  faces: list[AlignedFace]

  def face_names(self) -> list[str]:
    """`<name>_face<k>`, one per face: the names of per-face outputs."""
    return [f'{self.name}_face{k}' for k in range(len(self.faces))]


def unique_stems(paths: Sequence[os.PathLike]) -> list[str]:
  """File stems, or `<index>_<stem>` for all when two stems clash."""
  stems = [pathlib.Path(p).stem for p in paths]
  if len(set(stems)) != len(stems):
    stems = [f'{i:04d}_{n}' for i, n in enumerate(stems)]
  return stems


class PhotoRun:
  """Photo files -> aligned faces -> (the caller's edits) -> composites.

  Iterating yields a `FacePhoto` for every photo in which a face was found.
  A photo that cannot be read, or holds no face with score >= `min_score`,
  is reported on stderr (`warning: skipping <path>: <reason>`,
  `warning: <path>: no face found ...`), recorded with its reason in
  `records` and `skipped`, and not yielded. The caller edits the yielded
  faces' crops and calls `finish(photo, {path: crops})`, which pastes every
  list of edited crops back into the photo, saves each composite and counts
  the photo as done on the progress bar. Crops may be handed back later
  (e.g. after edits batched over several photos).

    run = PhotoRun(detector, paths, style='ffhq')
    for photo in run:
      edits = [edit(f.crop) for f in photo.faces]
      run.finish(photo, {out / f'{photo.name}.png': edits})
    run.close()
    run.write_json(out / 'faces.json', detector='mobilenet0.25_Final.pth')

  Args:
    detector: RetinaFace variables (`l2m_jax.convert.retinaface`).
    paths: photo files.
    style, output_size: the alignment (`extract_faces`).
    max_faces: at most this many faces per photo, highest score first.
    min_score: detection score that counts as a face.
    detect_max_size: detect on a copy whose longer side is at most this.
    feather: paste-back blend ramp, a fraction of the crop side.
    progress: show a progress bar over photos (stderr).
  """

  def __init__(self, detector: Any, paths: Sequence[os.PathLike], *,
               style: str, output_size: int = 1024,
               max_faces: int | None = None,
               min_score: float = face_detection.SCORE_THRESHOLD,
               detect_max_size: int | None = None, feather: float = 0.1,
               progress: bool = True):
    from tqdm import tqdm  # pylint: disable=g-import-not-at-top
    if style not in alignment_lib.ALIGN_FUNCTIONS:
      raise ValueError(f'style={style!r}: must be one of '
                       f'{sorted(alignment_lib.ALIGN_FUNCTIONS)}')
    self.detector = detector
    self.paths = [pathlib.Path(p) for p in paths]
    self.names = unique_stems(self.paths)
    self.style, self.output_size = style, output_size
    self.max_faces, self.min_score = max_faces, min_score
    self.detect_max_size, self.feather = detect_max_size, feather
    self.records: list[dict[str, Any]] = []
    self.skipped: list[dict[str, str]] = []
    self.edited_photos = 0
    self.edited_faces = 0
    self._write = tqdm.write
    self._bar = tqdm(total=len(self.paths), unit='photo', desc='photos',
                     disable=not progress, file=sys.stderr)

  def _skip(self, record: dict[str, Any], reason: str, message: str):
    record['error'] = reason
    self.skipped.append({'file': record['file'], 'reason': reason})
    self._write(f'warning: {message}', file=sys.stderr)
    self._bar.update(1)

  def __iter__(self) -> Iterator[FacePhoto]:
    for path, name in zip(self.paths, self.names):
      try:
        image = np.asarray(image_io.open_rgb(path))
      except image_io.ImageReadError as e:
        record = {'file': str(path), 'name': name}
        self.records.append(record)
        self._skip(record, e.reason, f'skipping {e.path}: {e.reason}')
        continue
      faces = extract_faces(
          self.detector, [image], style=self.style,
          output_size=self.output_size, max_faces=self.max_faces,
          max_size=self.detect_max_size, score_threshold=self.min_score,
          names=[str(path)])[0]
      record = {'file': str(path), 'name': name,
                'size': [image.shape[1], image.shape[0]],
                'faces': [f.to_json() for f in faces]}
      self.records.append(record)
      if not faces:
        self._skip(record, 'no face found',
                   f'{path}: no face found (no detection with score >= '
                   f'{self.min_score}); photo skipped')
        continue
      yield FacePhoto(path=path, name=name, image=image, faces=faces)

  def finish(self, photo: FacePhoto,
             composites: Mapping[os.PathLike, Sequence[np.ndarray]]
             ) -> None:
    """Pastes each list of edited crops back and saves the composites.

    Args:
      photo: a photo this run yielded.
      composites: output path -> one edited crop per face of `photo` (in
        `photo.faces` order; uint8 or float in [0, 255], any square size).
    """
    for path, crops in composites.items():
      result = paste_faces(photo.image, list(crops), photo.faces,
                           feather=self.feather)
      image_io.save_image(path, result)
    self.edited_photos += 1
    self.edited_faces += len(photo.faces)
    self._bar.update(1)

  def close(self) -> None:
    self._bar.close()

  def write_json(self, path: os.PathLike, **settings) -> None:
    """Writes the faces.json record: settings and, per photo, its file,
    size and faces (box, score, landmarks, alignment quad) or error."""
    report = dict(settings, style=self.style, min_score=self.min_score,
                  max_faces=self.max_faces,
                  detect_max_size=self.detect_max_size, feather=self.feather,
                  photos=self.records)
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, 'w') as f:
      json.dump(report, f, indent=1)
