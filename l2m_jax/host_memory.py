"""Transparent huge pages for the host allocator, set before the process starts.

On a CPU, every execution of a compiled XLA program allocates its temporary
buffer with malloc and frees it afterwards. The demo's training step needs
about 80 MB per device per step; glibc serves a block that large with a fresh
`mmap` and returns it with `munmap`, so each step touches its temporary
memory anew in 4 KiB pages: about 40,000 page faults per step on 2 devices,
and about a tenth of the CPU time spent in the kernel. glibc's tunable
`glibc.malloc.hugetlb=1` (glibc 2.35 and later) makes malloc ask for
transparent huge pages (`madvise(MADV_HUGEPAGE)`) for such blocks, so they
fault in 2 MiB at a time (docs/benchmarks.md: the demo's step about 10%
faster on the 2-core CPU on average, the same results bit for bit).

glibc reads its tunables once, when the process starts, so an entry point
that wants them re-executes itself with `GLIBC_TUNABLES` extended:

  if __name__ == '__main__':
    from l2m_jax import host_memory
    host_memory.reexec_with_huge_pages()

before importing anything heavy (no thread has started yet). The process
keeps its PID, arguments and environment. Nothing is done when the kernel's
transparent huge pages are off (`never`), on another C library or an older
glibc, when `GLIBC_TUNABLES` already names `glibc.malloc.hugetlb` (the
user's value is kept), or with `L2M_JAX_HUGE_PAGES=0` in the environment.
This module imports nothing from JAX.
"""

from __future__ import annotations

import os
import sys

TUNABLE = 'glibc.malloc.hugetlb'
ENV_SWITCH = 'L2M_JAX_HUGE_PAGES'  # '0' turns the re-execution off
_MARK = '_L2M_JAX_REEXECUTED'  # set in the re-executed process
THP_MODE_FILE = '/sys/kernel/mm/transparent_hugepage/enabled'
MIN_GLIBC = (2, 35)  # the first glibc with glibc.malloc.hugetlb


def tunables_with_huge_pages(current: str | None) -> str | None:
  """GLIBC_TUNABLES with glibc.malloc.hugetlb=1 added; None: leave it as is.

  None is returned when `current` already sets glibc.malloc.hugetlb (to any
  value: the user's choice is kept). Other tunables are kept in order.
  """
  entries = [e for e in (current or '').split(':') if e]
  if any(e.split('=', 1)[0] == TUNABLE for e in entries):
    return None
  return ':'.join(entries + [f'{TUNABLE}=1'])


def glibc_version() -> tuple[int, ...] | None:
  """The running glibc's version, e.g. (2, 36); None on another C library."""
  try:
    name = os.confstr('CS_GNU_LIBC_VERSION')  # 'glibc 2.36'
  except (AttributeError, ValueError, OSError):
    return None
  if not name or not name.startswith('glibc '):
    return None
  try:
    return tuple(int(p) for p in name.split()[1].split('.')[:2])
  except ValueError:
    return None


def thp_mode(path: str = THP_MODE_FILE) -> str | None:
  """The kernel's transparent huge page mode: 'always', 'madvise', 'never'.

  None when the file is absent or unreadable (not Linux, or no THP).
  """
  try:
    with open(path, encoding='ascii') as f:
      text = f.read()
  except OSError:
    return None
  start, end = text.find('['), text.find(']')
  return text[start + 1:end] if 0 <= start < end else None


def why_not(environ=None) -> str | None:
  """Why huge pages would not be requested here; None when they would be."""
  env = os.environ if environ is None else environ
  if env.get(ENV_SWITCH, '1').strip() == '0':
    return f'{ENV_SWITCH}=0'
  if not sys.platform.startswith('linux'):
    return f'not Linux ({sys.platform})'
  version = glibc_version()
  if version is None:
    return 'not glibc'
  if version < MIN_GLIBC:
    return (f'glibc {".".join(map(str, version))} (the tunable needs '
            f'{".".join(map(str, MIN_GLIBC))})')
  mode = thp_mode()
  if mode in (None, 'never'):
    return f'transparent huge pages are {mode or "unavailable"} in the kernel'
  return None


def status(environ=None) -> str:
  """A few words for a log: whether this process asked for huge pages."""
  env = os.environ if environ is None else environ
  for entry in (env.get('GLIBC_TUNABLES') or '').split(':'):
    name, _, value = entry.partition('=')
    if name == TUNABLE:
      if value.strip() in ('', '0'):
        return f'malloc huge pages off ({entry})'
      reason = why_not({})  # the platform's reasons (the env switch aside)
      return (f'malloc huge pages off ({entry} has no effect: {reason})'
              if reason else 'malloc huge pages on')
  return f'malloc huge pages off ({why_not(env) or "not requested"})'


def reexec_with_huge_pages() -> None:
  """Re-executes this Python process with glibc.malloc.hugetlb=1, if useful.

  Call it first thing in a `__main__` block (no thread may have started).
  Returns without doing anything where `why_not()` gives a reason, where
  GLIBC_TUNABLES already names the tunable, or in the re-executed process.
  """
  if os.environ.get(_MARK) or why_not() is not None:
    return
  tunables = tunables_with_huge_pages(os.environ.get('GLIBC_TUNABLES'))
  if tunables is None:
    return
  argv = list(getattr(sys, 'orig_argv', []))
  if len(argv) < 2 or not sys.executable:
    return  # an embedded or unusual interpreter: keep this process
  env = dict(os.environ, GLIBC_TUNABLES=tunables, **{_MARK: '1'})
  sys.stdout.flush()
  sys.stderr.flush()
  try:
    os.execve(sys.executable, [sys.executable] + argv[1:], env)
  except OSError as e:  # keep running as we are
    print(f'warning: could not re-execute {sys.executable} with '
          f'{TUNABLE}=1 ({e}); continuing without huge pages',
          file=sys.stderr, flush=True)
