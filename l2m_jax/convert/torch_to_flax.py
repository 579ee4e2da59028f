"""Shared machinery for PyTorch checkpoint -> Flax conversion.

Every converter in `l2m_jax.convert` follows the same contract:

* torch is imported lazily, only here, and files load with `weights_only=True`
  on the CPU (`load_torch_file`).
* Every source key is either mapped to a Flax leaf or listed as intentionally
  ignored. Missing keys, unexpected keys and shape mismatches are collected and
  raised together as one `ConversionError` that lists all of them
  (`check_state_dict`).
* Layout changes happen only here: conv OIHW -> HWIO (`conv_kernel`), Linear
  (out, in) -> Dense (in, out) (`dense_kernel`).
* The result is written as a params-only orbax checkpoint plus `meta.json`
  holding the model config, the source file's sha256 and the key map
  (`save_converted`); `load_converted` reads it back and, given a template
  from `jax.eval_shape(model.init, ...)`, checks every key and shape.

Converted checkpoint directory layout::

  <out>/meta.json    {"format": ..., "config": {...}, "source": {...},
                      "key_map": {torch_key: flax_path}, "ignored": [...]}
  <out>/variables/   orbax PyTree checkpoint of the variables pytree
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
from typing import Any, Iterable, Mapping

import numpy as np

META_FILE = 'meta.json'
VARIABLES_DIR = 'variables'


class ConversionError(ValueError):
  """A checkpoint does not match what a converter expects.

  The message lists every missing key, unexpected key and shape mismatch at
  once, so a user can fix a checkpoint in one pass.
  """

  def __init__(self, source: str, missing: Iterable[str] = (),
               unexpected: Iterable[str] = (),
               mismatched: Iterable[tuple[str, tuple, tuple]] = (),
               note: str = ''):
    self.source = str(source)
    self.missing = sorted(missing)
    self.unexpected = sorted(unexpected)
    self.mismatched = sorted(mismatched)
    lines = [f'{self.source}: checkpoint does not match the expected layout.']
    if note:
      lines.append(note)
    if self.missing:
      lines.append(f'  {len(self.missing)} missing key(s):')
      lines += [f'    - {k}' for k in self.missing]
    if self.unexpected:
      lines.append(f'  {len(self.unexpected)} unexpected key(s):')
      lines += [f'    - {k}' for k in self.unexpected]
    if self.mismatched:
      lines.append(f'  {len(self.mismatched)} shape mismatch(es):')
      lines += [f'    - {k}: expected {tuple(e)}, found {tuple(f)}'
                for k, e, f in self.mismatched]
    super().__init__('\n'.join(lines))


def sha256_file(path: str | os.PathLike) -> str:
  """Hex sha256 of a file, read in 1 MiB chunks."""
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(1 << 20), b''):
      digest.update(chunk)
  return digest.hexdigest()


def load_torch_file(path: str | os.PathLike) -> Any:
  """Loads a `torch.save` file on the CPU with `weights_only=True`.

  Args:
    path: the file.

  Returns:
    The unpickled object (tensors stay torch tensors).

  Raises:
    FileNotFoundError: the path does not exist or is a directory.
    ConversionError: the file is not a loadable torch checkpoint.
  """
  path = pathlib.Path(path)
  if not path.exists():
    raise FileNotFoundError(f'{path}: no such checkpoint file')
  if path.is_dir():
    raise FileNotFoundError(f'{path}: is a directory, expected a torch '
                            'checkpoint file')
  import argparse  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  try:
    # Training checkpoints of several upstream code bases store their CLI
    # arguments as an argparse.Namespace next to the weights (e.g. 'args');
    # it holds plain values, so it is allowed. Nothing else is unpickled.
    with torch.serialization.safe_globals([argparse.Namespace]):
      return torch.load(path, map_location='cpu', weights_only=True)
  except Exception as e:  # pylint: disable=broad-except
    raise ConversionError(
        path, note=f'  not a loadable torch checkpoint '
        f'(torch.load(weights_only=True) failed: {type(e).__name__}: '
        f'{str(e).splitlines()[0] if str(e) else ""})') from e


def to_numpy(value: Any) -> np.ndarray:
  """A torch tensor (or array-like) as a numpy array, float tensors as float32."""
  if hasattr(value, 'detach'):
    value = value.detach().cpu()
    if value.is_floating_point():
      value = value.float()
    value = value.numpy()
  return np.asarray(value)


def state_dict_shapes(state_dict: Mapping[str, Any]) -> dict[str, tuple]:
  return {k: tuple(to_numpy(v).shape) for k, v in state_dict.items()}


def check_state_dict(source: str, state_dict: Mapping[str, Any],
                     expected: Mapping[str, tuple],
                     ignored: Iterable[str] = (),
                     optional: Iterable[str] = ()) -> None:
  """Checks a state_dict's keys and shapes against the expected ones.

  Args:
    source: a name for messages, e.g. 'nets_ema.ckpt[generator]'.
    state_dict: torch key -> tensor.
    expected: torch key -> shape, for every key that is mapped or
      intentionally ignored but still required (e.g. unused weights the
      official strict loader demands).
    ignored: keys that may be present and are dropped silently (e.g.
      `num_batches_tracked`); not required.
    optional: keys of `expected` that may be absent.

  Raises:
    ConversionError: listing every missing key, unexpected key and shape
      mismatch.
  """
  ignored = set(ignored)
  optional = set(optional)
  present = set(state_dict)
  missing = [k for k in expected if k not in present and k not in optional]
  unexpected = [k for k in present if k not in expected and k not in ignored]
  mismatched = []
  for k in present & set(expected):
    shape = tuple(to_numpy(state_dict[k]).shape)
    if shape != tuple(expected[k]):
      mismatched.append((k, tuple(expected[k]), shape))
  if missing or unexpected or mismatched:
    raise ConversionError(source, missing, unexpected, mismatched)


def conv_kernel(weight: Any) -> np.ndarray:
  """PyTorch Conv2d weight (O, I, kH, kW) -> Flax kernel (kH, kW, I, O)."""
  return np.ascontiguousarray(np.transpose(to_numpy(weight), (2, 3, 1, 0)))


def dense_kernel(weight: Any) -> np.ndarray:
  """PyTorch Linear weight (out, in) -> Flax Dense kernel (in, out)."""
  return np.ascontiguousarray(to_numpy(weight).T)


def set_path(tree: dict, path: str, value: Any) -> None:
  """Sets tree[a][b][c] = value for path 'a/b/c', creating dicts on the way."""
  *parents, leaf = path.split('/')
  node = tree
  for p in parents:
    node = node.setdefault(p, {})
  if leaf in node:
    raise KeyError(f'duplicate Flax path {path}')
  node[leaf] = value


def flatten(tree: Mapping[str, Any], prefix: str = '') -> dict[str, Any]:
  """Nested dict -> {'a/b/c': leaf}."""
  out = {}
  for k, v in tree.items():
    key = f'{prefix}/{k}' if prefix else str(k)
    if isinstance(v, Mapping):
      out.update(flatten(v, key))
    else:
      out[key] = v
  return out


def check_against_template(source: str, variables: Mapping[str, Any],
                           template: Mapping[str, Any]) -> None:
  """Checks a converted variables tree against `jax.eval_shape(model.init)`.

  Raises:
    ConversionError: listing every missing/unexpected Flax path and every
      shape mismatch.
  """
  got = {k: tuple(np.shape(v)) for k, v in flatten(variables).items()}
  want = {k: tuple(v.shape) for k, v in flatten(template).items()}
  missing = [k for k in want if k not in got]
  unexpected = [k for k in got if k not in want]
  mismatched = [(k, want[k], got[k]) for k in set(got) & set(want)
                if got[k] != want[k]]
  if missing or unexpected or mismatched:
    raise ConversionError(source, missing, unexpected, mismatched,
                          note='  (Flax paths, after conversion)')


def save_converted(out_dir: str | os.PathLike, variables: Mapping[str, Any],
                   meta: Mapping[str, Any], overwrite: bool = False) -> None:
  """Writes a params-only orbax checkpoint plus meta.json.

  Args:
    out_dir: directory to create.
    variables: pytree of numpy/jax arrays.
    meta: JSON-serialisable metadata; by convention it has `format`,
      `config`, `source` (path, sha256) and `key_map`.
    overwrite: replace an existing directory.
  """
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  out_dir = pathlib.Path(out_dir).resolve()
  if out_dir.exists() and any(out_dir.iterdir()):
    if not overwrite:
      raise FileExistsError(f'{out_dir}: already exists and is not empty '
                            '(pass overwrite / --overwrite to replace it)')
    import shutil  # pylint: disable=g-import-not-at-top
    shutil.rmtree(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  variables = _to_numpy_tree(variables)
  with ocp.PyTreeCheckpointer() as ckptr:
    ckptr.save(out_dir / VARIABLES_DIR, variables)
  with open(out_dir / META_FILE, 'w') as f:
    json.dump(dict(meta), f, indent=1, sort_keys=True)


def read_meta(path: str | os.PathLike, expected_format: str | None = None,
              how_to_convert: str = '') -> dict[str, Any]:
  """Reads meta.json of a converted checkpoint, with a clear error.

  Args:
    path: the checkpoint directory.
    expected_format: when given, meta['format'] must equal it.
    how_to_convert: appended to the wrong-format error, e.g. 'convert with
      scripts/convert_latent.py mapper'.
  """
  path = pathlib.Path(path)
  meta_file = path / META_FILE
  if not path.is_dir():
    raise FileNotFoundError(
        f'{path}: not a converted checkpoint directory (expected a folder '
        f'with {META_FILE} and {VARIABLES_DIR}/, as written by '
        'scripts/convert_checkpoint.py)')
  if not meta_file.is_file():
    raise FileNotFoundError(f'{path}: {META_FILE} is missing; this folder '
                            'is not a converted l2m_jax checkpoint')
  try:
    with open(meta_file) as f:
      meta = json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f'{meta_file}: not valid JSON ({e})') from e
  if expected_format is not None and meta.get('format') != expected_format:
    hint = f' ({how_to_convert})' if how_to_convert else ''
    raise ValueError(f'{path}: meta.json format is {meta.get("format")!r}, '
                     f'expected {expected_format!r}{hint}')
  return meta


def load_converted(path: str | os.PathLike, template: Mapping[str, Any] | None
                   = None) -> tuple[dict[str, Any], dict[str, Any]]:
  """Loads a checkpoint written by `save_converted`.

  Args:
    path: the checkpoint directory.
    template: optional `jax.eval_shape(model.init, ...)` tree; when given,
      keys and shapes are checked against it.

  Returns:
    (variables as nested dicts of numpy arrays, meta dict).
  """
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  path = pathlib.Path(path).resolve()
  meta = read_meta(path)
  vdir = path / VARIABLES_DIR
  if not vdir.is_dir():
    raise FileNotFoundError(f'{path}: {VARIABLES_DIR}/ is missing')
  with ocp.PyTreeCheckpointer() as ckptr:
    metadata = ckptr.metadata(vdir)
    tree = getattr(metadata, 'item_metadata', metadata)
    tree = getattr(tree, 'tree', tree)
    restore_args = _numpy_restore_args(tree)
    variables = ckptr.restore(vdir, restore_args=restore_args)
  if template is not None:
    check_against_template(str(path), variables, template)
  return variables, meta


def _to_numpy_tree(tree: Any) -> Any:
  if isinstance(tree, Mapping):
    return {k: _to_numpy_tree(v) for k, v in tree.items()}
  return np.asarray(tree)


def _numpy_restore_args(tree: Any) -> Any:
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  if isinstance(tree, Mapping):
    return {k: _numpy_restore_args(v) for k, v in tree.items()}
  return ocp.RestoreArgs(restore_type=np.ndarray)
