"""The entry points' re-execution with glibc's huge-page malloc tunable."""

import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

from l2m_jax import host_memory
from tests.conftest import REPO_ROOT


def test_tunables_keep_the_users_entries():
  assert (host_memory.tunables_with_huge_pages(None) ==
          'glibc.malloc.hugetlb=1')
  assert host_memory.tunables_with_huge_pages('') == 'glibc.malloc.hugetlb=1'
  assert (host_memory.tunables_with_huge_pages('glibc.malloc.arena_max=2') ==
          'glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1')
  # A value the user chose for the tunable itself is left alone.
  for given in ('glibc.malloc.hugetlb=0', 'a.b=1:glibc.malloc.hugetlb=2'):
    assert host_memory.tunables_with_huge_pages(given) is None


def test_thp_mode_and_reasons(tmp_path):
  f = tmp_path / 'enabled'
  for text, mode in (('always [madvise] never\n', 'madvise'),
                     ('[always] madvise never\n', 'always'),
                     ('always madvise [never]\n', 'never')):
    f.write_text(text)
    assert host_memory.thp_mode(str(f)) == mode
  assert host_memory.thp_mode(str(tmp_path / 'absent')) is None
  assert host_memory.why_not({'L2M_JAX_HUGE_PAGES': '0'}) == (
      'L2M_JAX_HUGE_PAGES=0')
  assert host_memory.status({'GLIBC_TUNABLES': 'x=1:glibc.malloc.hugetlb=1'}
                            ) == 'malloc huge pages on'
  assert host_memory.status({'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=0'}) == (
      'malloc huge pages off (glibc.malloc.hugetlb=0)')
  assert host_memory.status({'L2M_JAX_HUGE_PAGES': '0'}) == (
      'malloc huge pages off (L2M_JAX_HUGE_PAGES=0)')


# A script that starts as the CLIs do, then mallocs 64 MiB (not numpy:
# numpy asks for huge pages itself) and reports the huge pages it got.
_CHILD = textwrap.dedent('''
    import os, sys
    sys.path.insert(0, {repo!r})
    print('start', os.getpid(), flush=True)
    if __name__ == '__main__':
      from l2m_jax import host_memory
      host_memory.reexec_with_huge_pages()
    import ctypes

    def huge_kib():
      with open('/proc/self/smaps_rollup') as f:
        return sum(int(l.split()[1]) for l in f
                   if l.startswith('AnonHugePages:'))

    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    before = huge_kib()
    n = 64 << 20
    p = libc.malloc(n)
    ctypes.memset(p, 1, n)
    print('child', os.getpid(), sys.argv[1:], os.environ.get('GLIBC_TUNABLES'),
          huge_kib() - before, flush=True)
''')


def _run_child(tmp_path, **env_changes):
  script = tmp_path / 'child.py'
  script.write_text(_CHILD.format(repo=str(REPO_ROOT)))
  env = {k: v for k, v in os.environ.items()
         if k not in ('GLIBC_TUNABLES', 'L2M_JAX_HUGE_PAGES',
                      '_L2M_JAX_REEXECUTED')}
  env.update(env_changes)
  out = subprocess.run([sys.executable, str(script), 'a', '--b=c d'],
                       capture_output=True, text=True, env=env, timeout=120)
  assert out.returncode == 0, out.stderr
  lines = out.stdout.splitlines()
  starts = [l for l in lines if l.startswith('start ')]
  child = [l for l in lines if l.startswith('child ')]
  assert len(child) == 1, out.stdout
  return starts, child[0]


@pytest.mark.skipif(
    host_memory.why_not({}) is not None or
    not pathlib.Path('/proc/self/smaps_rollup').exists(),
    reason=f'no huge-page malloc here: {host_memory.why_not({})}')
def test_reexecution_gives_malloc_huge_pages_and_keeps_the_process(tmp_path):
  starts, child = _run_child(tmp_path,
                             GLIBC_TUNABLES='glibc.malloc.arena_max=8')
  # Re-executed once, as the same process, with its arguments.
  assert len(starts) == 2 and starts[0] == starts[1], starts
  pid = starts[0].split()[1]
  assert child.startswith(f"child {pid} ['a', '--b=c d'] "
                          'glibc.malloc.arena_max=8:glibc.malloc.hugetlb=1 ')
  assert int(child.split()[-1]) >= 32 * 1024  # KiB of huge pages malloc got

  # Switched off: no re-execution, the block in 4 KiB pages where the kernel
  # gives huge pages only on request.
  starts, child = _run_child(tmp_path, L2M_JAX_HUGE_PAGES='0')
  assert len(starts) == 1 and ' None ' in child
  if host_memory.thp_mode() == 'madvise':
    assert int(child.split()[-1]) < 32 * 1024, child

  # The user's own value of the tunable is kept: no re-execution.
  starts, child = _run_child(tmp_path, GLIBC_TUNABLES='glibc.malloc.hugetlb=0')
  assert len(starts) == 1 and 'glibc.malloc.hugetlb=0' in child
