#!/usr/bin/env bash
# Installs the runtime and test dependencies, then runs the test suite.
# Usage: bash scripts/test.sh [extra pytest args]   (slow tests: bash scripts/test.sh -m slow)
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q -r requirements.txt -r requirements-test.txt
python3 -m pip install -q --no-deps -r requirements-nodeps.txt
set +e
python3 -m pytest -q -m "not slow" "$@"
rc=$?
set -e
# pytest exits 5 when no test was collected (e.g. a -k filter that matches nothing).
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests"
  exit 0
fi
exit "$rc"
