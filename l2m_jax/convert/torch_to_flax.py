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
* Values are validated on the way in and out: every mapped weight must be
  a finite floating-point tensor (`check_values`; BatchNorm
  `num_batches_tracked` counters excepted), or one `ConversionError` names
  every offending key.
* The result is written as a params-only orbax checkpoint plus `meta.json`
  holding the model config, the source file's sha256, the key map and the
  SHA-256 of every data file (`save_converted`); `load_converted` verifies
  those files before orbax reads them (a missing, emptied or altered file
  is one clear error), then checks the values and, given a template from
  `jax.eval_shape(model.init, ...)`, every key and shape.

Converted checkpoint directory layout::

  <out>/meta.json    {"format": ..., "config": {...}, "source": {...},
                      "key_map": {torch_key: flax_path}, "ignored": [...],
                      "variables_dir": "variables",
                      "checksums": {"variables/<file>": sha256, ...}}
  <out>/variables/   orbax PyTree checkpoint of the variables pytree

Overwriting an existing converted checkpoint is atomic: the new data go to
a fresh `variables.<n>/` and `meta.json` (written to a temporary file and
renamed over the old one) switches to it in one step; the old data are
deleted afterwards. A reader, or a kill at any moment, sees the old
checkpoint or the new one, never a mix. In a multi-process run every
process calls `save_converted` (orbax's save is a collective); only the main
process touches files.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import re
import shutil
from typing import Any, Callable, Iterable, Mapping

import numpy as np

META_FILE = 'meta.json'
VARIABLES_DIR = 'variables'
# meta.json entries about the storage itself, not returned by load_converted.
STORAGE_KEYS = ('variables_dir', 'checksums')


class ConversionError(ValueError):
  """A checkpoint does not match what a converter expects.

  The message lists every missing key, unexpected key and shape mismatch at
  once, so a user can fix a checkpoint in one pass.
  """

  def __init__(self, source: str, missing: Iterable[str] = (),
               unexpected: Iterable[str] = (),
               mismatched: Iterable[tuple[str, tuple, tuple]] = (),
               note: str = '',
               headline: str = 'checkpoint does not match the expected '
               'layout.'):
    self.source = str(source)
    self.missing = sorted(missing)
    self.unexpected = sorted(unexpected)
    self.mismatched = sorted(mismatched)
    lines = [f'{self.source}: {headline}']
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


TORCH_INSTALL_HELP = ('python3 -m pip install torch==2.13.0 (the CPU build '
                      'is enough; or: python3 -m pip install -r '
                      'requirements-test.txt)')


class MissingTorchError(ConversionError):
  """torch, needed only to read PyTorch files, is not installed."""

  def __init__(self, source: str):
    super().__init__(
        source, headline='reading a PyTorch checkpoint needs torch, which is '
        f'not installed. Install it with: {TORCH_INSTALL_HELP}')


# The first bytes of files people pass by mistake, and what they are.
_MAGIC = ((b'\x89PNG', 'a PNG image'), (b'\xff\xd8\xff', 'a JPEG image'),
          (b'GIF8', 'a GIF image'), (b'\x89HDF', 'an HDF5 file'),
          (b'\x93NUMPY', 'a numpy .npy array'), (b'{', 'a JSON/text file'),
          (b'\x1f\x8b', 'a gzip archive (unpack it first)'),
          (b'<', 'an HTML/XML page (a failed download?)'))


def _not_a_checkpoint(path: pathlib.Path) -> str | None:
  """Why `path` cannot be a torch.save file, judged by its bytes; or None.

  torch.save writes a zip archive holding `<name>/data.pkl` (torch >= 1.6)
  or, in the legacy format, a pickle stream (first byte 0x80).
  """
  import zipfile  # pylint: disable=g-import-not-at-top
  with open(path, 'rb') as f:
    head = f.read(16)
  if not head:
    return 'is an empty file'
  if head.startswith(b'PK'):
    try:
      with zipfile.ZipFile(path) as z:
        names = z.namelist()
    except (zipfile.BadZipFile, OSError):
      return ('is a damaged or truncated zip archive (an incomplete '
              'download or copy?)')
    if not any(n.endswith('data.pkl') for n in names):
      what = ('a numpy .npz archive' if any(n.endswith('.npy') for n in names)
              else 'a zip archive')
      return f'is {what}, not a PyTorch checkpoint (it has no data.pkl)'
    return None
  if head[0] == 0x80:
    return None
  for magic, what in _MAGIC:
    if head.startswith(magic):
      return f'is {what}, not a PyTorch checkpoint'
  return (f'is not a PyTorch checkpoint: torch.save writes a zip archive or a '
          f'pickle stream, and this file starts with {head[:8]!r}')


def load_torch_file(path: str | os.PathLike) -> Any:
  """Loads a `torch.save` file on the CPU with `weights_only=True`.

  Args:
    path: the file.

  Returns:
    The unpickled object (tensors stay torch tensors).

  Raises:
    FileNotFoundError: the path does not exist or is a directory (the
      message says which).
    MissingTorchError: torch is not installed.
    ConversionError: the file is not a loadable torch checkpoint; the
      message says what it is instead when its bytes tell.
  """
  path = pathlib.Path(path)
  if not path.exists():
    raise FileNotFoundError(f'{path}: no such checkpoint file')
  if path.is_dir():
    hint = (' (it is a converted l2m_jax checkpoint directory, which needs '
            'no conversion)' if (path / META_FILE).is_file() else '')
    raise FileNotFoundError(f'{path}: is a directory, expected a PyTorch '
                            f'checkpoint file{hint}')
  what = _not_a_checkpoint(path)
  if what is not None:
    raise ConversionError(path, headline=what)
  import argparse  # pylint: disable=g-import-not-at-top
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise MissingTorchError(path) from None
  try:
    # Training checkpoints of several upstream code bases store their CLI
    # arguments as an argparse.Namespace next to the weights (e.g. 'args');
    # it holds plain values, so it is allowed. Nothing else is unpickled.
    with torch.serialization.safe_globals([argparse.Namespace]):
      return torch.load(path, map_location='cpu', weights_only=True)
  except Exception as e:  # pylint: disable=broad-except
    raise ConversionError(
        path, headline='is not a loadable PyTorch checkpoint '
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
  check_values(source, {k: state_dict[k] for k in expected if k in present})


COUNTER_SUFFIX = 'num_batches_tracked'


def _dtype_and_bad_count(value: Any) -> tuple[str, bool, int]:
  """(dtype name, is floating point, number of non-finite entries)."""
  if hasattr(value, 'detach'):  # a torch tensor
    import torch  # pylint: disable=g-import-not-at-top
    t = value.detach()
    floating = t.is_floating_point()
    bad = int((~torch.isfinite(t)).sum()) if floating else 0
    return str(t.dtype).replace('torch.', ''), floating, bad
  a = np.asarray(value)
  floating = np.issubdtype(a.dtype, np.floating) or a.dtype.name == 'bfloat16'
  bad = int(a.size - np.count_nonzero(np.isfinite(a.astype(np.float32)))
            ) if floating else 0
  return a.dtype.name, floating, bad


def check_values(source: str, arrays: Mapping[str, Any]) -> None:
  """Every weight must be floating point and finite.

  Keys ending in `num_batches_tracked` (BatchNorm step counters, integer by
  design and never used in inference) are exempt.

  Raises:
    ConversionError: naming every key with a non-float dtype and every key
      with NaN or inf entries (and how many).
  """
  wrong_dtype, non_finite = [], []
  for k, v in arrays.items():
    if str(k).endswith(COUNTER_SUFFIX):
      continue
    dtype, floating, bad = _dtype_and_bad_count(v)
    if not floating:
      wrong_dtype.append(f'{k}: {dtype}')
    elif bad:
      non_finite.append(f'{k}: {bad} of {int(np.prod(np.shape(v)))} '
                        'entries are NaN or inf')
  if wrong_dtype or non_finite:
    lines = []
    if wrong_dtype:
      lines.append(f'  {len(wrong_dtype)} weight(s) with a non-float dtype '
                   '(expected float32/float16/bfloat16):')
      lines += [f'    - {k}' for k in sorted(wrong_dtype)]
    if non_finite:
      lines.append(f'  {len(non_finite)} weight(s) with non-finite values:')
      lines += [f'    - {k}' for k in sorted(non_finite)]
    raise ConversionError(source, note='\n'.join(lines))


def conv_kernel(weight: Any) -> np.ndarray:
  """PyTorch Conv2d weight (O, I, kH, kW) -> Flax kernel (kH, kW, I, O)."""
  return np.ascontiguousarray(np.transpose(to_numpy(weight), (2, 3, 1, 0)))


def dense_kernel(weight: Any) -> np.ndarray:
  """PyTorch Linear weight (out, in) -> Flax Dense kernel (in, out)."""
  return np.ascontiguousarray(to_numpy(weight).T)


def module_path(torch_key: str) -> str:
  """A torch module path as a Flax one: list indices join their container.

  'body.3.res_layer.5.fc1' -> 'body_3/res_layer_5/fc1'.
  """
  parts = torch_key.split('.')
  out, i = [], 0
  while i < len(parts):
    if i + 1 < len(parts) and parts[i + 1].isdigit():
      out.append(f'{parts[i]}_{parts[i + 1]}')
      i += 2
    else:
      out.append(parts[i])
      i += 1
  return '/'.join(out)


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


def _files_checksums(root: pathlib.Path, sub: str) -> dict[str, str]:
  """{'<sub>/<relative path>': sha256} of every file under root/sub."""
  base = root / sub
  return {f'{sub}/{p.relative_to(base).as_posix()}': sha256_file(p)
          for p in sorted(base.rglob('*')) if p.is_file()}


def _write_json_atomic(path: pathlib.Path, obj: Any) -> None:
  tmp = path.with_name(f'.{path.name}.tmp')
  with open(tmp, 'w') as f:
    json.dump(obj, f, indent=1, sort_keys=True)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)  # atomic on POSIX


_VARIABLES_RE = re.compile(
    r'^variables(\.(\d+))?(\.orbax-checkpoint-tmp.*)?$')


def _next_variables_dir(out_dir: pathlib.Path) -> str:
  numbers = [int(m.group(2) or 0) for p in out_dir.iterdir()
             for m in [_VARIABLES_RE.match(p.name)] if m]
  return f'{VARIABLES_DIR}.{max(numbers, default=0) + 1}'


def _is_main_process() -> bool:
  from l2m_jax import parallel  # pylint: disable=g-import-not-at-top
  return parallel.is_main_process()


def _sync(name: str) -> None:
  from l2m_jax import parallel  # pylint: disable=g-import-not-at-top
  parallel.sync(name)


def save_converted(out_dir: str | os.PathLike, variables: Mapping[str, Any],
                   meta: Mapping[str, Any], overwrite: bool = False) -> None:
  """Writes a params-only orbax checkpoint plus meta.json.

  Overwriting a converted checkpoint is atomic (module docstring); any
  other non-empty folder is refused unless `overwrite`, which then deletes
  it first. Every process of a multi-process run must call this.

  Args:
    out_dir: directory to create.
    variables: pytree of numpy/jax arrays (finite floats).
    meta: JSON-serialisable metadata; by convention it has `format`,
      `config`, `source` (path, sha256) and `key_map`.
    overwrite: replace an existing directory.

  Raises:
    FileExistsError: out_dir is not empty and overwrite is False.
    ConversionError: a variable is not a finite float array.
  """
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  out_dir = pathlib.Path(out_dir).resolve()
  variables = _to_numpy_tree(variables)
  check_values(str(out_dir), flatten(variables))
  previous = None  # the variables dir of the checkpoint being replaced
  if out_dir.exists() and any(out_dir.iterdir()):
    if not overwrite:
      raise FileExistsError(f'{out_dir}: already exists and is not empty '
                            '(pass overwrite / --overwrite to replace it)')
    try:
      previous = read_meta(out_dir).get('variables_dir', VARIABLES_DIR)
    except (OSError, ValueError):
      previous = None
    if previous is None or not (out_dir / previous).is_dir():
      previous = None
      if _is_main_process():
        shutil.rmtree(out_dir)  # not a converted checkpoint: replace it
  sub = VARIABLES_DIR if previous is None else _next_variables_dir(out_dir)
  if _is_main_process():
    out_dir.mkdir(parents=True, exist_ok=True)
    if (out_dir / sub).exists():  # left by an interrupted save
      shutil.rmtree(out_dir / sub)
  _sync('save_converted_start')
  with ocp.PyTreeCheckpointer() as ckptr:
    ckptr.save(out_dir / sub, variables)
  if _is_main_process():
    full = dict(meta, variables_dir=sub,
                checksums=_files_checksums(out_dir, sub))
    _write_json_atomic(out_dir / META_FILE, full)
    # Only now is the new checkpoint in place; remove what it replaced and
    # leftovers of interrupted saves.
    for p in out_dir.iterdir():
      if p.name != sub and _VARIABLES_RE.match(p.name) and p.is_dir():
        shutil.rmtree(p, ignore_errors=True)
  _sync('save_converted_end')


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


def verify_files(path: str | os.PathLike, meta: Mapping[str, Any]) -> None:
  """Checks the data files against meta['checksums'] (when recorded).

  Raises:
    ConversionError: naming every missing file and every file whose content
      changed (truncated, emptied, overwritten, bit-flipped).
  """
  path = pathlib.Path(path)
  sums = meta.get('checksums')
  if not sums:
    return  # written before checksums were recorded
  missing, changed = [], []
  for rel, want in sorted(sums.items()):
    f = path / rel
    if not f.is_file():
      missing.append(rel)
    elif sha256_file(f) != want:
      changed.append(rel)
  if missing or changed:
    lines = ['  the data files do not match the checksums in meta.json: the '
             'checkpoint is damaged (convert or export it again)']
    lines += [f'    - {r}: missing' for r in missing]
    lines += [f'    - {r}: content differs (truncated or altered)'
              for r in changed]
    raise ConversionError(path, note='\n'.join(lines))


def load_converted(path: str | os.PathLike, template: Mapping[str, Any] | None
                   = None) -> tuple[dict[str, Any], dict[str, Any]]:
  """Loads a checkpoint written by `save_converted`.

  Args:
    path: the checkpoint directory.
    template: optional `jax.eval_shape(model.init, ...)` tree; when given,
      keys and shapes are checked against it.

  Returns:
    (variables as nested dicts of numpy arrays, meta dict without the
    storage entries `variables_dir` and `checksums`).

  Raises:
    FileNotFoundError: not a converted checkpoint directory.
    ConversionError: damaged data files, weights that are not finite
      floats, or (with a template) wrong keys or shapes.
  """
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  path = pathlib.Path(path).resolve()
  meta = read_meta(path)
  sub = meta.get('variables_dir', VARIABLES_DIR)
  vdir = path / sub
  if not vdir.is_dir():
    raise FileNotFoundError(f'{path}: {sub}/ is missing')
  verify_files(path, meta)
  try:
    with ocp.PyTreeCheckpointer() as ckptr:
      metadata = ckptr.metadata(vdir)
      tree = getattr(metadata, 'item_metadata', metadata)
      tree = getattr(tree, 'tree', tree)
      restore_args = _numpy_restore_args(tree)
      variables = ckptr.restore(vdir, restore_args=restore_args)
  except Exception as e:  # pylint: disable=broad-except
    first = str(e).strip().splitlines()[0] if str(e).strip() else ''
    raise ConversionError(
        path, note=f'  the data in {sub}/ do not restore ({type(e).__name__}:'
        f' {first}); the checkpoint is damaged (convert or export it '
        'again)') from None
  check_values(str(path), flatten(variables))
  if template is not None:
    check_against_template(str(path), variables, template)
  return variables, {k: v for k, v in meta.items() if k not in STORAGE_KEYS}


def source_meta(path: str | os.PathLike, *, absolute: bool = False,
                sha256: str | None = None, **extra: Any) -> dict[str, Any]:
  """`meta['source']` of a conversion: {path, sha256, **extra}.

  Args:
    path: the converted file.
    absolute: record `os.path.abspath(path)` instead of the path as given.
    sha256: the file's digest when already computed (else read here).
    **extra: more fields (e.g. the generator `kind`).
  """
  return dict(path=os.path.abspath(path) if absolute else str(path),
              sha256=sha256 if sha256 is not None else sha256_file(path),
              **extra)


def save_if_asked(out_dir: str | os.PathLike | None,
                  variables: Mapping[str, Any], meta: Mapping[str, Any], *,
                  overwrite: bool = False,
                  log: Callable[[str], Any] | None = None,
                  detail: str = '') -> None:
  """`save_converted` when `out_dir` is given, then logs `wrote <out_dir>`."""
  if out_dir is None:
    return
  save_converted(out_dir, variables, meta, overwrite=overwrite)
  if log is not None:
    log(f'wrote {out_dir}{detail}')


def finish_conversion(path: str | os.PathLike, variables: dict[str, Any],
                      template: Mapping[str, Any], *, fmt: str, config: Any,
                      key_map: Mapping[str, str], ignored: list[str],
                      source: Mapping[str, Any] | None = None,
                      out_dir: str | os.PathLike | None = None,
                      overwrite: bool = False,
                      log: Callable[[str], Any] | None = None,
                      detail: str = '', **extra: Any
                      ) -> tuple[dict[str, Any], dict[str, Any]]:
  """The common end of a file converter.

  Checks `variables` against `template` (`check_against_template`), builds
  the meta dict {format, config, source, **extra, key_map, ignored}
  (`source` defaults to `source_meta(path)`) and writes both to `out_dir`
  when it is given (`save_if_asked`).

  Returns:
    (variables, meta).
  """
  check_against_template(str(path), variables, template)
  meta = dict(format=fmt, config=config,
              source=source_meta(path) if source is None else source,
              **extra, key_map=key_map, ignored=ignored)
  save_if_asked(out_dir, variables, meta, overwrite=overwrite, log=log,
                detail=detail)
  return variables, meta


def convert_to_folder(convert: Callable[..., tuple[Any, dict[str, Any]]],
                      path: str | os.PathLike, out_dir: str | os.PathLike,
                      overwrite: bool = False, **kwargs: Any
                      ) -> dict[str, Any]:
  """`convert(path, **kwargs) -> (variables, meta)`, written to `out_dir`.

  Returns:
    The meta dict written to `<out_dir>/meta.json`.
  """
  variables, meta = convert(path, **kwargs)
  save_converted(out_dir, variables, meta, overwrite=overwrite)
  return meta


def load_model(path: str | os.PathLike, expected_format: str,
               how_to_convert: str, build_model: Callable[[Any], Any],
               template: Callable[[Any], Mapping[str, Any]]
               ) -> tuple[Any, dict[str, Any], dict[str, Any]]:
  """A converted folder as (module, variables, meta).

  The module is `build_model(meta['config'])`; the variables are checked
  against `template(module)` (its `jax.eval_shape` of init).
  """
  meta = read_meta(path, expected_format, how_to_convert)
  model = build_model(meta['config'])
  variables, meta = load_converted(path, template(model))
  return model, variables, meta


def _to_numpy_tree(tree: Any) -> Any:
  if isinstance(tree, Mapping):
    return {k: _to_numpy_tree(v) for k, v in tree.items()}
  return np.asarray(tree)


def _numpy_restore_args(tree: Any) -> Any:
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  if isinstance(tree, Mapping):
    return {k: _numpy_restore_args(v) for k, v in tree.items()}
  return ocp.RestoreArgs(restore_type=np.ndarray)
