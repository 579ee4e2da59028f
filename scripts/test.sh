#!/usr/bin/env bash
# Installs the runtime and test dependencies, then runs the test suite.
# Usage: bash scripts/test.sh [extra pytest args]   (slow tests: bash scripts/test.sh -m slow)
#
# torchvision's model definitions and pytorch-fid serve only as test references and are
# installed without their dependencies (torchvision's PyPI wheel expects a CUDA torch). They go
# to a folder of their own, $L2M_TEST_DEPS (default .test_deps/ in the repository), which only
# the test run puts on its path: the user's own `import torchvision` stays as it was.
set -euo pipefail
cd "$(dirname "$0")/.."
test_deps="${L2M_TEST_DEPS:-$PWD/.test_deps}"
python3 -m pip install -q -r requirements.txt -r requirements-test.txt
if ! cmp -s requirements-nodeps.txt "$test_deps/.installed-requirements"; then
  python3 -m pip install -q --no-deps --upgrade --target "$test_deps" \
    -r requirements-nodeps.txt
  mkdir -p "$test_deps"
  cp requirements-nodeps.txt "$test_deps/.installed-requirements"
fi
export PYTHONPATH="$test_deps${PYTHONPATH:+:$PYTHONPATH}"
# malloc with transparent huge pages (glibc 2.35 or later; older ones ignore the
# name), as the training CLIs run (l2m_jax/host_memory.py); a value already
# given for the tunable is kept.
if [[ ":${GLIBC_TUNABLES:-}" != *":glibc.malloc.hugetlb="* ]]; then
  export GLIBC_TUNABLES="${GLIBC_TUNABLES:+$GLIBC_TUNABLES:}glibc.malloc.hugetlb=1"
fi
set +e
# Two workers (pytest-xdist) keep both cores busy: one compiles while the other
# runs; tests/conftest.py groups the modules that share expensive fixtures.
# L2M_TEST_WORKERS=0 runs everything in this process.
python3 -m pytest -q -m "not slow" -n "${L2M_TEST_WORKERS:-2}" \
  --dist loadgroup --no-loadscope-reorder "$@"
rc=$?
set -e
# pytest exits 5 when no test was collected (e.g. a -k filter that matches nothing).
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests"
  exit 0
fi
exit "$rc"
