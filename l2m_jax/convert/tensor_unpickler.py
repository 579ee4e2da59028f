"""Loads torch checkpoints that hold non-tensor objects, without running them.

`torch.load(weights_only=True)` refuses any pickled class outside its
allow-list. PyTorch-Lightning checkpoints (the BranchedTiny classifier's
`.ckpt`) may carry such objects next to the weights: hyper-parameter
containers, callback states, optimiser wrappers. `load_torch_checkpoint`
first tries `weights_only=True`; if that fails on a disallowed global, it
reloads with a restricted unpickler that

* builds tensors, storages, `OrderedDict`, dtypes, `torch.Size` and
  `torch.device` as usual, and
* replaces every other global by an inert placeholder class
  (`UnloadedObject`) that only records its arguments and state,

so no function or class named in the file is ever imported or called.
"""

from __future__ import annotations

import collections
import os
import pathlib
import pickle
from typing import Any

from l2m_jax.convert import torch_to_flax as t2f


class UnloadedObject:
  """Stands in for a pickled object of a class that was not loaded."""
  _qualname = '?'

  def __new__(cls, *args, **kwargs):
    # Pickle's NEWOBJ calls __new__ without __init__.
    self = super().__new__(cls)
    self.args = args
    self.kwargs = kwargs
    self.state = None
    self.items = {}  # filled by SETITEMS when the class was a dict subclass
    self.elements = []  # filled by APPENDS when it was a list subclass
    return self

  def __init__(self, *args, **kwargs):
    del args, kwargs  # recorded by __new__

  def __setstate__(self, state):
    self.state = state

  def __setitem__(self, key, value):
    self.items[key] = value

  def append(self, value):
    self.elements.append(value)

  def extend(self, values):
    self.elements.extend(values)

  def __call__(self, *args, **kwargs):
    return type(self)(*args, **kwargs)

  def __repr__(self):
    return f'<unloaded {self._qualname}>'


def _placeholder(module: str, name: str) -> type:
  return type(f'Unloaded_{name}', (UnloadedObject,),
              {'_qualname': f'{module}.{name}'})


def _allowed(module: str, name: str):
  """The real object for an allowed global, else None."""
  import torch  # pylint: disable=g-import-not-at-top
  if module == 'collections' and name == 'OrderedDict':
    return collections.OrderedDict
  if module == 'torch._utils' and name.startswith('_rebuild_') and name in (
      '_rebuild_tensor', '_rebuild_tensor_v2', '_rebuild_parameter',
      '_rebuild_parameter_with_state'):
    return getattr(torch._utils, name)  # pylint: disable=protected-access
  if module == 'torch':
    obj = getattr(torch, name, None)
    if isinstance(obj, torch.dtype) or name in ('Size', 'device'):
      return obj
  return None


class _RestrictedUnpickler(pickle.Unpickler):

  def find_class(self, module, name):  # pylint: disable=g-bad-name
    obj = _allowed(module, name)
    return obj if obj is not None else _placeholder(module, name)


class _RestrictedPickleModule:
  """The `pickle_module` handed to torch.load (only Unpickler is used)."""
  Unpickler = _RestrictedUnpickler
  load = pickle.load  # legacy-format magic numbers; plain data only
  __name__ = 'l2m_jax_restricted_pickle'


def load_torch_checkpoint(path: str | os.PathLike) -> tuple[Any, bool]:
  """Loads a checkpoint file on the CPU without executing pickled code.

  Returns:
    (object, restricted): `restricted` is True when the restricted
    unpickler was needed (some entries are `UnloadedObject`s).

  Raises:
    FileNotFoundError: no such file.
    ConversionError: not a torch checkpoint at all.
  """
  try:
    return t2f.load_torch_file(path), False
  except t2f.ConversionError as first:
    cause = first.__cause__
    if not (isinstance(cause, pickle.UnpicklingError)
            and 'global' in str(cause).lower()):
      raise
  import torch  # pylint: disable=g-import-not-at-top
  try:
    obj = torch.load(pathlib.Path(path), map_location='cpu',
                     weights_only=False, pickle_module=_RestrictedPickleModule)
  except Exception as e:  # pylint: disable=broad-except
    raise t2f.ConversionError(
        path, note=f'  not a loadable torch checkpoint ({type(e).__name__}: '
        f'{str(e).splitlines()[0] if str(e) else ""})') from e
  return obj, True
