"""Imports torchvision's pure-Python model definitions on a CPU-only torch.

torchvision's PyPI wheel is built against CUDA torch; its compiled operators are absent beside
the CPU torch wheel. The model definitions (resnet18, inception_v3) need none of them, but
`import torchvision` first imports `torchvision._meta_registrations`, which registers fake
kernels for those compiled operators and fails without them. Registering an empty module under
that name before the import skips it.
"""

import sys
import types


def register_shim() -> None:
  """Makes a later `import torchvision` (by any library) skip the fake kernels."""
  name = 'torchvision._meta_registrations'
  if name not in sys.modules:
    sys.modules[name] = types.ModuleType(name)


def import_torchvision():
  """Returns the `torchvision` module, importable on a CPU-only torch."""
  register_shim()
  import torchvision  # pylint: disable=g-import-not-at-top
  return torchvision
