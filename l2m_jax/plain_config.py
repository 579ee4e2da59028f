"""A minimal attribute-dict config, for code paths without ml_collections.

The training loop reads its config as an `ml_collections.ConfigDict`
(command-line overrides, locking, type checks). The train step, the models
and the benchmarks only read fields, so they also accept this small
stand-in: `configs/l2m_celebahq.py`'s `get_config(arg, container=PlainConfig)`
builds the same fields into it. Machines that carry only jax, flax, optax,
orbax, numpy and torch (e.g. an accelerator host used for benchmarks) can
then build the paper's configuration.
"""

from __future__ import annotations

from typing import Any


class PlainConfig:
  """Fields as attributes; `to_dict`, `get`, `in` and `copy` like ConfigDict."""

  def __init__(self, **fields: Any):
    self.__dict__.update(fields)

  def to_dict(self) -> dict[str, Any]:
    return {k: (v.to_dict() if isinstance(v, PlainConfig) else v)
            for k, v in self.__dict__.items()}

  def get(self, key: str, default: Any = None) -> Any:
    return self.__dict__.get(key, default)

  def copy(self) -> 'PlainConfig':
    return PlainConfig(**self.__dict__)

  def __contains__(self, key: str) -> bool:
    return key in self.__dict__

  def __getattr__(self, name: str) -> Any:
    # Only reached for missing fields: name them, as ConfigDict does.
    raise AttributeError(f'config has no field {name!r} (fields: '
                         f'{sorted(self.__dict__)})')

  def __repr__(self) -> str:
    return f'PlainConfig({self.to_dict()!r})'
